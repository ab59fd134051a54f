"""SeriesForecaster: a stacked LSTM/GRU forecasting `horizon` steps of the target.

    (B, T, F) -> LSTM/GRU x layers -> last time step (B, hidden) -> Linear -> (B, horizon)

Inputs and targets are standardised with train statistics (see `SeriesDataModule`), so the
loss (MSE) and MAE are on scaled values; un-scale with `SeriesDataModule.inverse_target`.
"""

from __future__ import annotations

import copy

import pytorch_lightning as pl
import torch
from torch import nn
from torch.nn import functional as F

from bigdeep.models.cnn import EpochMeans  # shared helper: one metric-logging scheme

CELLS: dict[str, type[nn.RNNBase]] = {"lstm": nn.LSTM, "gru": nn.GRU}


class SeriesNet(nn.Module):
    """The plain network, no Lightning: what gets exported."""

    def __init__(
        self, n_features: int, cell: str, layers: int, hidden: int, dropout: float, horizon: int
    ) -> None:
        super().__init__()
        if cell not in CELLS:
            raise ValueError(f"cell {cell!r} is not supported; use one of {sorted(CELLS)}")
        # nn.LSTM/GRU apply dropout between stacked layers only; with one layer it would warn.
        self.rnn = CELLS[cell](
            input_size=n_features,
            hidden_size=hidden,
            num_layers=layers,
            dropout=dropout if layers > 1 else 0.0,
            batch_first=True,
        )
        self.head = nn.Linear(hidden, horizon)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)  # (B, T, hidden)
        return self.head(out[:, -1])  # (B, horizon)


class SeriesForecaster(pl.LightningModule):
    def __init__(
        self,
        n_features: int,
        cell: str = "lstm",
        layers: int = 3,
        hidden: int = 64,
        dropout: float = 0.0,
        horizon: int = 1,
        lr: float = 1e-3,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = SeriesNet(n_features, cell, layers, hidden, dropout, horizon)
        self.epoch_means = EpochMeans()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # (B, T, F) -> (B, horizon)

    def model_step(
        self, batch: tuple[torch.Tensor, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Shared by train/val/test: (MSE loss, predictions (B, horizon), targets (B, horizon))."""
        x, y = batch
        preds = self(x)
        return F.mse_loss(preds, y), preds, y

    def _step(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str) -> torch.Tensor:
        loss, preds, y = self.model_step(batch)
        mae = (preds.detach() - y).abs().mean()
        self.epoch_means.update(stage, y.shape[0], {"loss": loss, "mae": mae})
        return loss

    def _log_epoch(self, stage: str) -> None:
        # Per-epoch only, once per epoch: see EpochMeans for why not self.log in every step.
        means = self.epoch_means.pop(
            stage, lambda t: self.trainer.strategy.reduce(t, reduce_op="sum")
        )
        metrics = {f"{stage}_{name}": value for name, value in means.items()}
        self.log_dict(metrics, on_step=False, on_epoch=True)

    def training_step(
        self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int
    ) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._step(batch, "test")

    def on_train_epoch_end(self) -> None:
        self._log_epoch("train")

    def on_validation_epoch_end(self) -> None:
        self._log_epoch("val")

    def on_test_epoch_end(self) -> None:
        self._log_epoch("test")

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)

    def export_module(self) -> nn.Module:
        """A plain copy of the network, on CPU, in eval mode: (B, T, F) -> (B, horizon)."""
        return copy.deepcopy(self.net).cpu().eval()
