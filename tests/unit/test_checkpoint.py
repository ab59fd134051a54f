"""The resume point: last.ckpt is every epoch's, also after an epoch whose val_loss got worse."""

from __future__ import annotations

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from bigdeep.config import Trainer
from bigdeep.training.plumbing import make_trainer


class Worsening(pl.LightningModule):
    """val_loss grows every epoch: only epoch 0's checkpoint is ever the best."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))

    def training_step(self, batch, batch_idx):
        return (self.w - 1).pow(2).sum()

    def validation_step(self, batch, batch_idx):
        self.log("val_loss", float(self.current_epoch), on_epoch=True)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def loader() -> DataLoader:
    return DataLoader(TensorDataset(torch.zeros(4, 1)), batch_size=2)


def test_last_checkpoint_is_the_last_epoch_even_when_val_loss_got_worse(tmp_path):
    cfg = Trainer(accelerator="cpu", devices=1, deterministic=False)
    trainer = make_trainer(cfg, epochs=3, patience=10, history=None, checkpoints=tmp_path)
    trainer.fit(Worsening(), loader(), loader())
    last = torch.load(tmp_path / "last.ckpt", weights_only=True)
    best = torch.load(tmp_path / "best.ckpt", weights_only=True)
    assert (last["epoch"], last["global_step"]) == (2, 6)  # Lightning alone left (0, 2) here
    assert best["epoch"] == 0

    # a resumed fit from it trains nothing again
    steps = []
    resumed = make_trainer(cfg, epochs=3, patience=10, history=None, checkpoints=tmp_path / "r")
    resumed.callbacks.append(
        pl.callbacks.LambdaCallback(on_train_batch_end=lambda *a: steps.append(1))
    )
    resumed.fit(
        Worsening(), loader(), loader(), ckpt_path=str(tmp_path / "last.ckpt"), weights_only=True
    )
    assert steps == []
