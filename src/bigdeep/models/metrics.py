"""Epoch-level metrics shared by the CNN and the RNN: one logging scheme for both."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytorch_lightning as pl
import torch

from bigdeep.models.optim import configure


class EpochMeans:
    """Per-sample means of step metrics over one epoch, to log once at the epoch's end.

    Why not `self.log(..., on_epoch=True)` in every step: Lightning moves its bookkeeping to
    the value's device on each call, a cost per step (figures: tests/benchmarks/README.md).
    Here the sums stay on the device (no host sync per step) and the sample count on the
    host. Shared by the CNN and the RNN.
    """

    def __init__(self) -> None:
        self._sums: dict[str, torch.Tensor] = {}  # stage -> (n_metrics,) sum of value * n
        self._counts: dict[str, int] = {}
        self._names: dict[str, list[str]] = {}

    def update(self, stage: str, n: int, batch_means: dict[str, torch.Tensor]) -> None:
        with torch.no_grad():
            sums = torch.stack(list(batch_means.values())).float() * n  # (n_metrics,)
        self._sums[stage] = self._sums[stage] + sums if stage in self._sums else sums
        self._counts[stage] = self._counts.get(stage, 0) + n
        self._names[stage] = list(batch_means)

    def pop(
        self, stage: str, reduce: Callable[[torch.Tensor], torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """The epoch's means (empty if no step ran) and a fresh start for the next epoch.

        `reduce` sums a tensor over processes (the strategy's; identity on one device), so
        under DDP the means are over all samples of all processes.
        """
        if stage not in self._sums:
            return {}
        sums, count = self._sums.pop(stage), self._counts.pop(stage)
        totals = reduce(torch.cat([sums, sums.new_tensor([count])]))  # (n_metrics + 1,)
        return dict(zip(self._names.pop(stage), totals[:-1] / totals[-1], strict=True))


class StagedModule(pl.LightningModule):
    """One shared step for train / val / test, with metrics logged once per epoch.

    A subclass defines `model_step(batch) -> (loss, preds, targets)`, `step_metrics` (the
    per-batch means besides the loss) and `export_module` (what gets served), sets
    `self.epoch_means = EpochMeans()`, and has `lr`, `weight_decay` and `schedule` among its
    hyperparameters.
    """

    epoch_means: EpochMeans

    def use_compile(self, mode: str | bool) -> None:
        """`train.trainer.compile`: False (eager) or a `torch.compile` mode (default |
        reduce-overhead, which replays CUDA graphs on a GPU | max-autotune) for the train,
        val and test steps. The compiled callable is kept outside the module's submodules:
        checkpoints, resume and export (`export_module`, a copy of the eager `net`) see the
        same weights under the same names as without it."""
        self.__dict__["_compile_mode"] = mode
        self.__dict__.pop("_compiled", None)

    def network(self) -> Callable[[torch.Tensor], torch.Tensor]:
        """What the steps call: `forward`, compiled (once, lazily) when `use_compile` says."""
        mode = self.__dict__.get("_compile_mode", False)
        if not mode:
            return self
        if "_compiled" not in self.__dict__:
            self.__dict__["_compiled"] = torch.compile(self.forward, mode=mode)
        return self.__dict__["_compiled"]

    def __getstate__(self) -> dict[str, Any]:
        return {k: v for k, v in super().__getstate__().items() if k != "_compiled"}

    def step_metrics(self, preds: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def export_module(self) -> torch.nn.Module:
        """The plain network to serve (no Lightning), on CPU, in eval mode, for `torch.export`."""
        raise NotImplementedError

    def _step(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str) -> torch.Tensor:
        loss, preds, y = self.model_step(batch)
        self.epoch_means.update(stage, y.shape[0], {"loss": loss, **self.step_metrics(preds, y)})
        return loss

    def _log_epoch(self, stage: str) -> None:
        # Per-epoch only, once per epoch: per-step logging is costly with MLflow on SQLite.
        means = self.epoch_means.pop(
            stage, lambda t: self.trainer.strategy.reduce(t, reduce_op="sum")
        )
        self.log_dict(
            {f"{stage}_{name}": value for name, value in means.items()},
            on_step=False,
            on_epoch=True,
        )

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

    def configure_optimizers(self) -> torch.optim.Optimizer | dict[str, Any]:
        h = self.hparams
        return configure(self, h.lr, h.weight_decay, h.schedule)
