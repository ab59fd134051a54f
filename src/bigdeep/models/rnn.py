"""SeriesForecaster: a stacked LSTM/GRU forecasting `horizon` steps of the target.

    (B, T, F) -> LSTM/GRU x layers -> last time step (B, hidden) -> Linear -> (B, horizon)

Inputs and targets are standardised with train statistics (see `SeriesDataModule`), so the
loss (MSE) and MAE are on scaled values; un-scale with `SeriesDataModule.inverse_target`.
The exported model (`export_module`) carries those statistics (`SourceUnits`): it takes a
window in the source's units and answers in the target's, so whoever serves it needs no scaler.

The seed architecture is unchanged; its error comes down through training choices (OneCycle
learning rate, gradient-norm clipping) and calendar inputs from the data module (hour of day,
day of week). Figures: tests/benchmarks/README.md.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from bigdeep.models.metrics import EpochMeans, StagedModule
from bigdeep.models.optim import check_schedule

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


class SourceUnits(nn.Module):
    """The network between the source's units: (B, T, F) raw window -> (B, horizon) forecast.

    Each input column is standardised with its train mean and std (buffers, exported with the
    weights: the calendar columns, already in [-1, 1], have mean 0 and std 1), and the output
    is mapped back to the target's units.
    """

    def __init__(
        self,
        net: nn.Module,
        mean: Sequence[float],
        std: Sequence[float],
        target_mean: float,
        target_std: float,
    ) -> None:
        super().__init__()
        if len(mean) != len(std) or not all(v > 0 for v in std) or not target_std > 0:
            raise ValueError(f"scaler: one mean and one std > 0 per column, got {mean}, {std}")
        self.net = net
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32))  # (F,)
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32))  # (F,)
        self.register_buffer("target_mean", torch.tensor(float(target_mean)))
        self.register_buffer("target_std", torch.tensor(float(target_std)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scaled = (x - self.mean) / self.std  # (B, T, F)
        return self.net(scaled) * self.target_std + self.target_mean  # (B, horizon)


class SeriesForecaster(StagedModule):
    """`lr` is the peak learning rate under "onecycle"; `grad_clip` the largest total gradient
    norm per step (0: none), which keeps the LSTM stable at OneCycle's peak learning rate.
    `input_mean` / `input_std` (one per input column) and `target_mean` / `target_std`: the
    train statistics the data module scaled with; the exported model un-does them (None: it
    takes and gives scaled values)."""

    def __init__(
        self,
        n_features: int,
        cell: str = "lstm",
        layers: int = 3,
        hidden: int = 64,
        dropout: float = 0.0,
        horizon: int = 1,
        lr: float = 3e-3,
        schedule: str = "onecycle",
        weight_decay: float = 0.0,
        grad_clip: float = 1.0,
        input_mean: Sequence[float] | None = None,
        input_std: Sequence[float] | None = None,
        target_mean: float = 0.0,
        target_std: float = 1.0,
    ) -> None:
        super().__init__()
        check_schedule(schedule)
        if grad_clip < 0:
            raise ValueError(f"grad_clip must be >= 0 (0: no clipping), got {grad_clip}")
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
        preds = self.network()(x)
        return F.mse_loss(preds, y), preds, y

    def step_metrics(self, preds: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"mae": (preds.detach() - y).abs().mean()}

    def configure_gradient_clipping(
        self,
        optimizer: torch.optim.Optimizer,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        # The model's own setting, unless the Trainer was given one (Lightning refuses both).
        if gradient_clip_val is None and self.hparams.grad_clip > 0:
            gradient_clip_val, gradient_clip_algorithm = self.hparams.grad_clip, "norm"
        self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def export_module(self) -> nn.Module:
        """A plain copy of the network, on CPU, in eval mode: (B, T, F) -> (B, horizon), in
        the source's units when the model knows the scaler (`SourceUnits`), else scaled."""
        net = copy.deepcopy(self.net).cpu()
        h = self.hparams
        if h.input_mean is None:
            return net.eval()
        return SourceUnits(net, h.input_mean, h.input_std, h.target_mean, h.target_std).eval()
