"""Optimiser and learning-rate schedule shared by the CNN and the RNN.

    schedule "none"      Adam (AdamW when weight_decay > 0) at `lr` throughout: the seed models
    schedule "onecycle"  warm up to `lr` over the first 30% of the steps, then anneal to ~0
    schedule "cosine"    start at `lr`, cosine-anneal to 0 by the last step

Schedules step once per optimiser step (`interval: step`) and need the run's total number of
steps, which Lightning knows before the first step (`trainer.estimated_stepping_batches`:
epochs x batches, with limit_train_batches applied). On the builtin data, 10 epochs with
OneCycle beat a constant learning rate for both models (tests/benchmarks/bench_model_quality.py).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

SCHEDULES = ("none", "onecycle", "cosine")


def check_schedule(schedule: str) -> str:
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule {schedule!r} is not supported; use one of {list(SCHEDULES)}")
    return schedule


def make_optimizer(
    params: Iterable[torch.nn.Parameter], lr: float, weight_decay: float
) -> torch.optim.Optimizer:
    # AdamW decouples the decay from the adaptive step; with 0 it is Adam, kept as Adam so the
    # seed setting is exactly the seed optimiser.
    if weight_decay > 0:
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    return torch.optim.Adam(params, lr=lr)


def make_scheduler(
    optimizer: torch.optim.Optimizer, schedule: str, lr: float, total_steps: int
) -> torch.optim.lr_scheduler.LRScheduler | None:
    check_schedule(schedule)
    if schedule == "none":
        return None
    total_steps = max(int(total_steps), 1)
    if schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=total_steps)
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)


def configure(
    module: Any, lr: float, weight_decay: float, schedule: str
) -> torch.optim.Optimizer | dict[str, Any]:
    """What a LightningModule's `configure_optimizers` returns for these settings."""
    optimizer = make_optimizer(module.parameters(), lr, weight_decay)
    if schedule == "none":
        return optimizer
    scheduler = make_scheduler(optimizer, schedule, lr, module.trainer.estimated_stepping_batches)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
