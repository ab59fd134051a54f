"""Epoch-level metrics shared by the CNN and the RNN: one logging scheme for both."""

from __future__ import annotations

from collections.abc import Callable

import torch


class EpochMeans:
    """Per-sample means of step metrics over one epoch, to log once at the epoch's end.

    Why not `self.log(..., on_epoch=True)` in every step: on CPU that costs ~0.55 ms per
    step for two metrics (Lightning moves its bookkeeping to the value's device on each
    call), 6% of a CNN step at batch 32 (tests/benchmarks/bench_train.py). Here the sums
    stay on the device (no host sync per step) and the sample count on the host. Shared by
    the CNN and the RNN.
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
