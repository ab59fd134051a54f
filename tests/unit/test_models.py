"""Unit tests for the CNN and RNN LightningModules: real torch on tiny tensors, CPU only.

Run: python -m pytest tests/unit/test_models.py -q
"""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from torch import nn
from torch.export import Dim, export

from bigdeep.models.cnn import EpochMeans, ImageClassifier, conv_output_size
from bigdeep.models.rnn import SeriesForecaster

torch.set_num_threads(1)  # default threading on a busy 2-core box is far slower


def _overfit(model: pl.LightningModule, batch: tuple[torch.Tensor, torch.Tensor], steps: int):
    """Plain optimiser steps through the shared model_step: (first loss, last loss)."""
    opt = model.configure_optimizers()
    losses = []
    for _ in range(steps):
        loss, _, _ = model.model_step(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses[0], losses[-1]


def test_epoch_means_are_per_sample_and_reset():
    means = EpochMeans()
    means.update("val", 3, {"loss": torch.tensor(1.0), "acc": torch.tensor(2 / 3)})
    means.update("val", 1, {"loss": torch.tensor(5.0), "acc": torch.tensor(0.0)})
    out = means.pop("val", lambda t: t)
    torch.testing.assert_close(out["loss"], torch.tensor(2.0))  # (3*1 + 1*5) / 4, not (1+5)/2
    torch.testing.assert_close(out["acc"], torch.tensor(0.5))  # 2 correct of 4
    assert means.pop("val", lambda t: t) == {}  # reset for the next epoch
    # another process saw 4 samples with loss sum 12: reduce adds [loss sum, acc sum, count]
    means.update("val", 4, {"loss": torch.tensor(1.0), "acc": torch.tensor(1.0)})
    out = means.pop("val", lambda t: t + torch.tensor([12.0, 0.0, 4.0]))
    torch.testing.assert_close(out["loss"], torch.tensor(2.0))  # (4 + 12) / 8
    torch.testing.assert_close(out["acc"], torch.tensor(0.5))


# --- CNN ------------------------------------------------------------------------------------


def test_cnn_keras_shapes_28x28():
    model = ImageClassifier()
    convs = [m for m in model.net if isinstance(m, nn.Conv2d)]
    linears = [m for m in model.net if isinstance(m, nn.Linear)]
    assert [c.out_channels for c in convs] == [32, 64, 64]
    assert linears[0].in_features == 64 * 3 * 3  # 28 -> 26 -> 13 -> 11 -> 5 -> 3
    assert (linears[0].out_features, linears[1].out_features) == (64, 10)
    out = model(torch.rand(5, 1, 28, 28))
    assert out.shape == (5, 10) and out.dtype == torch.float32


def test_cnn_flatten_size_follows_image_size():
    assert conv_output_size((28, 28), 3) == (3, 3)
    assert conv_output_size((32, 40), 3) == (4, 6)  # 30x38 -> 15x19 -> 13x17 -> 6x8 -> 4x6
    model = ImageClassifier(num_classes=3, conv=[8, 16], dense=12, image_size=(32, 40))
    assert model(torch.rand(2, 1, 32, 40)).shape == (2, 3)
    assert model.net[-3].in_features == 16 * 13 * 17  # 30x38 -> 15x19 -> 13x17, no last pool


def test_cnn_too_small_image_is_a_clear_error():
    with pytest.raises(ValueError, match=r"image_size \(6, 6\) is too small"):
        ImageClassifier(image_size=(6, 6))


def test_cnn_overfits_one_batch():
    pl.seed_everything(0)
    model = ImageClassifier(num_classes=4, conv=[8, 16, 16], dense=32, lr=3e-3)
    batch = (torch.rand(16, 1, 28, 28), torch.arange(16) % 4)
    first, last = _overfit(model, batch, steps=60)
    assert last < first / 10, (first, last)
    _, preds, targets = model.model_step(batch)
    assert torch.equal(preds, targets)


def test_cnn_predict_proba_module_is_plain_softmax_of_logits():
    model = ImageClassifier().eval()
    x = torch.rand(4, 1, 28, 28)
    proba_module = model.predict_proba_module()
    assert not isinstance(proba_module, pl.LightningModule)
    proba = proba_module(x)
    assert proba.shape == (4, 10)
    torch.testing.assert_close(proba.sum(dim=1), torch.ones(4))
    torch.testing.assert_close(proba, torch.softmax(model(x), dim=1))
    assert model.net[0].weight.data_ptr() != proba_module[0][0].weight.data_ptr()  # a copy


def test_cnn_exports_with_dynamic_batch():
    module = ImageClassifier().predict_proba_module()
    program = export(module, (torch.rand(2, 1, 28, 28),), dynamic_shapes=({0: Dim("batch")},))
    for batch in (1, 7):
        x = torch.rand(batch, 1, 28, 28)
        torch.testing.assert_close(program.module()(x), module(x))


# --- RNN ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("cell", "kind"), [("lstm", nn.LSTM), ("gru", nn.GRU)])
def test_rnn_cell_switch_and_shapes(cell: str, kind: type[nn.Module]):
    model = SeriesForecaster(n_features=2, cell=cell, layers=3, hidden=16, horizon=4)
    assert type(model.net.rnn) is kind
    assert model.net.rnn.num_layers == 3 and model.net.rnn.hidden_size == 16
    out = model(torch.rand(5, 48, 2))
    assert out.shape == (5, 4)


def test_rnn_bad_cell_names_value_and_allowed():
    with pytest.raises(ValueError, match=r"'transformer'.*\['gru', 'lstm'\]"):
        SeriesForecaster(n_features=2, cell="transformer")


def test_rnn_dropout_between_layers_only():
    assert SeriesForecaster(n_features=1, layers=2, dropout=0.3).net.rnn.dropout == 0.3
    assert SeriesForecaster(n_features=1, layers=1, dropout=0.3).net.rnn.dropout == 0.0


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_rnn_overfits_one_batch(cell: str):
    pl.seed_everything(0)
    model = SeriesForecaster(n_features=2, cell=cell, layers=2, hidden=16, horizon=2, lr=1e-2)
    x = torch.randn(16, 12, 2)
    y = torch.stack([x[:, -1, 0], x[:, -2, 0]], dim=1)  # (16, 2): learnable from the inputs
    first, last = _overfit(model, (x, y), steps=60)
    assert last < first / 10, (first, last)


# torch warns that nn.LSTM's _flat_weights are re-assigned while tracing; outputs still match.
@pytest.mark.filterwarnings("ignore:The tensor attributes self.rnn._flat_weights")
def test_rnn_export_module_exports_with_dynamic_batch():
    model = SeriesForecaster(n_features=2, layers=3, hidden=8, horizon=2)
    module = model.export_module()
    assert not isinstance(module, pl.LightningModule) and not module.training
    program = export(module, (torch.rand(2, 48, 2),), dynamic_shapes=({0: Dim("batch")},))
    for batch in (1, 5):
        x = torch.rand(batch, 48, 2)
        torch.testing.assert_close(program.module()(x), model.eval()(x))
