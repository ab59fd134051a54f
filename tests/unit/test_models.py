"""Unit tests for the CNN and RNN LightningModules: real torch on tiny tensors, CPU only.

Run: python -m pytest tests/unit/test_models.py -q
"""

from __future__ import annotations

import warnings

import pytest
import pytorch_lightning as pl
import torch
from torch import nn
from torch.export import Dim, export
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from bigdeep.models.cnn import ImageClassifier, Standardize, conv_output_size
from bigdeep.models.metrics import EpochMeans
from bigdeep.models.optim import make_scheduler
from bigdeep.models.rnn import SeriesForecaster

torch.set_num_threads(1)  # default threading on a busy 2-core box is far slower


def _overfit(model: pl.LightningModule, batch: tuple[torch.Tensor, torch.Tensor], steps: int):
    """Plain Adam steps through the shared model_step: (first loss, last loss)."""
    opt = torch.optim.Adam(model.parameters(), lr=model.hparams.lr)
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


def _fit_tiny(
    model: pl.LightningModule,
    x: torch.Tensor,
    y: torch.Tensor,
    epochs: int,
    callbacks: list[pl.Callback] = (),
) -> pl.Trainer:
    """A real Trainer fit on in-memory tensors, batches of 4, no validation."""
    loader = DataLoader(TensorDataset(x, y), batch_size=4)
    trainer = pl.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        callbacks=list(callbacks),
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*does not have many workers.*")
        warnings.filterwarnings("ignore", ".*no `val_dataloader`.*")
        trainer.fit(model, train_dataloaders=loader)
    return trainer


# --- optimiser and schedule -----------------------------------------------------------------


class LearningRates(pl.Callback):
    """The learning rate each training step ran with."""

    def __init__(self) -> None:
        self.lrs: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])


@pytest.mark.parametrize("schedule", ["onecycle", "cosine"])
def test_schedule_spans_the_whole_fit_and_anneals(schedule: str):
    pl.seed_everything(0, verbose=False)
    model = ImageClassifier(num_classes=3, conv=[4, 8], dense=8, lr=0.01, schedule=schedule)
    seen = LearningRates()
    trainer = _fit_tiny(model, torch.rand(12, 1, 28, 28), torch.arange(12) % 3, 2, [seen])
    (config,) = trainer.lr_scheduler_configs
    assert config.interval == "step"  # stepped per batch, not per epoch
    assert len(seen.lrs) == trainer.global_step == 6  # 2 epochs x 3 batches
    assert max(seen.lrs) == pytest.approx(0.01, rel=0.01)  # lr is the peak
    assert seen.lrs[-1] < 0.01 / 10  # annealed by the last step of the fit, not before
    assert all(a > b for a, b in zip(seen.lrs[2:], seen.lrs[3:], strict=False))  # falling
    if schedule == "onecycle":
        assert seen.lrs[0] < 0.01 / 10  # warm-up from a low rate
        assert config.scheduler.total_steps == 6  # = trainer.estimated_stepping_batches


def test_no_schedule_is_plain_adam_at_lr():
    model = SeriesForecaster(n_features=2, hidden=4, lr=0.02, schedule="none")
    optimizer = model.configure_optimizers()  # no trainer needed without a schedule
    assert type(optimizer) is torch.optim.Adam and optimizer.param_groups[0]["lr"] == 0.02
    decayed = SeriesForecaster(n_features=2, hidden=4, schedule="none", weight_decay=1e-4)
    optimizer = decayed.configure_optimizers()
    assert type(optimizer) is torch.optim.AdamW
    assert optimizer.param_groups[0]["weight_decay"] == 1e-4
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    assert make_scheduler(opt, "none", 1.0, 10) is None


def test_unknown_schedule_is_named():
    with pytest.raises(ValueError, match=r"schedule 'linear'.*\['none', 'onecycle', 'cosine'\]"):
        ImageClassifier(schedule="linear")
    with pytest.raises(ValueError, match=r"schedule 'step'"):
        SeriesForecaster(n_features=1, schedule="step")


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
    model = ImageClassifier(num_classes=4, conv=[8, 16, 16], dense=32, lr=3e-3, label_smoothing=0)
    batch = (torch.rand(16, 1, 28, 28), torch.arange(16) % 4)
    first, last = _overfit(model, batch, steps=60)
    assert last < first / 10, (first, last)
    _, preds, targets = model.model_step(batch)
    assert torch.equal(preds, targets)


def test_cnn_export_module_is_plain_softmax_of_logits():
    model = ImageClassifier(input_mean=0.13, input_std=0.31).eval()
    x = torch.rand(4, 1, 28, 28)  # [0, 1], what the registry and serving feed
    proba_module = model.export_module()
    assert not isinstance(proba_module, pl.LightningModule)
    proba = proba_module(x)
    assert proba.shape == (4, 10)
    torch.testing.assert_close(proba.sum(dim=1), torch.ones(4))
    torch.testing.assert_close(proba, torch.softmax(model(x), dim=1))
    assert model.net[1].weight.data_ptr() != proba_module[0][1].weight.data_ptr()  # a copy


def test_cnn_standardises_inputs_inside_the_network_and_export():
    pl.seed_everything(0, verbose=False)
    model = ImageClassifier(input_mean=0.13, input_std=0.31).eval()
    assert isinstance(model.net[0], Standardize)
    plain = ImageClassifier().eval()  # identity standardisation, same weights otherwise
    plain.net.load_state_dict(
        {k: v for k, v in model.net.state_dict().items() if not k.startswith("0.")}, strict=False
    )
    x = torch.rand(3, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(model(x), plain((x - 0.13) / 0.31))
        program = export(model.export_module(), (x,))  # the mean and std travel along
        torch.testing.assert_close(program.module()(x), torch.softmax(model(x), dim=1))
    with pytest.raises(ValueError, match=r"std must be > 0, got 0"):
        ImageClassifier(input_std=0.0)


def test_cnn_channels_last_is_a_layout_not_a_different_function():
    pl.seed_everything(0, verbose=False)
    fast = ImageClassifier(channels_last=True).eval()
    slow = ImageClassifier(channels_last=False).eval()
    slow.load_state_dict(fast.state_dict())
    assert fast.net[1].weight.is_contiguous(memory_format=torch.channels_last)
    x = torch.rand(5, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), slow(x), rtol=1e-4, atol=1e-5)


def test_cnn_label_smoothing_is_in_the_loss():
    x, y = torch.rand(6, 1, 28, 28), torch.arange(6) % 10
    smooth = ImageClassifier(label_smoothing=0.1)
    sharp = ImageClassifier(label_smoothing=0.0)
    sharp.load_state_dict(smooth.state_dict())
    logits = smooth(x)
    loss, _, _ = smooth.model_step((x, y))
    torch.testing.assert_close(loss, F.cross_entropy(logits, y, label_smoothing=0.1))
    assert not torch.allclose(loss, sharp.model_step((x, y))[0])


def test_cnn_exports_with_dynamic_batch():
    module = ImageClassifier().export_module()
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


def test_rnn_clips_the_gradient_norm_to_grad_clip():
    model = SeriesForecaster(n_features=2, layers=1, hidden=8, grad_clip=0.5)
    model.trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(8, 6, 2)
    loss, _, _ = model.model_step((x, torch.full((8, 1), 1000.0)))  # a huge error
    loss.backward()
    before = nn.utils.get_total_norm([p.grad for p in model.parameters()])
    model.configure_gradient_clipping(optimizer)  # what Lightning calls before each step
    after = nn.utils.get_total_norm([p.grad for p in model.parameters()])
    assert before > 100 and after == pytest.approx(0.5, rel=1e-4)
    with pytest.raises(ValueError, match=r"grad_clip must be >= 0"):
        SeriesForecaster(n_features=2, grad_clip=-1.0)


# torch warns that nn.LSTM's _flat_weights are re-assigned while tracing; outputs still match.
@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:The tensor attributes self.rnn._flat_weights")
def test_rnn_export_module_exports_with_dynamic_batch():
    model = SeriesForecaster(n_features=2, layers=3, hidden=8, horizon=2)
    module = model.export_module()
    assert not isinstance(module, pl.LightningModule) and not module.training
    program = export(module, (torch.rand(2, 48, 2),), dynamic_shapes=({0: Dim("batch")},))
    for batch in (1, 5):
        x = torch.rand(batch, 48, 2)
        torch.testing.assert_close(program.module()(x), model.eval()(x))
