"""The training core: fit and test one job on a given trainer. No registry, no MLflow, no files.

What the trainer writes or sends while it fits (checkpoints, the epoch curves) is plugged into
it by the shell (`bigdeep.train`) as callbacks and a logger; this module only drives the
trainer and collects the results.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl

from bigdeep.registry import Floor
from bigdeep.training.plumbing import EpochHistory

Arrays = dict[str, np.ndarray]


@dataclass
class Job:
    """What differs between the CNN and the RNN; `fit_and_test` and the shell do the rest."""

    name: str  # cnn | rnn
    dataset: str  # images | series
    datamodule: pl.LightningDataModule  # set up
    model: pl.LightningModule
    epochs: int
    patience: int
    params: dict[str, Any]  # logged once, beside the common trainer params
    history_keys: tuple[str, ...]  # the per-epoch curves
    predict: Callable[[], Arrays]  # every test sample, in this process -> prediction arrays
    test_metrics: Callable[[Arrays], dict[str, float]]  # predictions -> test metrics (pure)
    write_report: Callable[[Arrays, Path], None]  # predictions, folder -> evaluation files
    metric: str  # the registry compares models on it
    higher_is_better: bool
    margin: float  # by how much a new model must beat the champion
    score: Callable[[np.ndarray, np.ndarray], float]  # (model output, truth) -> `metric`
    floor: Callable[[dict[str, float]], Floor]  # test metrics -> the sanity floor to clear
    # folder -> (attributions of a test sample, figures), files written there (bigdeep.explain);
    # None: this job has no explanations
    explain: Callable[[Path], tuple[Any, dict[str, float]]] | None = None

    # training.privacy.DifferentialPrivacy (a callback) when train.privacy is on
    privacy: Any = None

    # test-split inputs (as the data module gives them) -> what the exported model takes
    served_inputs: Callable[[np.ndarray], np.ndarray] = lambda x: x

    # the trainer's precision (train.trainer.precision, or measured when null); None: as set
    precision: str | None = None


@dataclass(frozen=True)
class Fitted:
    model: pl.LightningModule
    history: list[dict[str, float]]  # one row per epoch: {"epoch": e, **history_keys}
    predictions: Arrays  # on the whole test split
    metrics: dict[str, float]  # test metrics, trained_epochs, trained_steps


def fit_and_test(
    job: Job,
    trainer: pl.Trainer,
    ckpt: str | None,
    after_fit: Callable[[], None] = lambda: None,
) -> Fitted:
    """Fit `job.model` (from `ckpt` when resuming), test it and predict the whole test split.

    `after_fit` runs between fit and test: the shell sends the epoch curves there.
    """
    trainer.fit(job.model, datamodule=job.datamodule, ckpt_path=ckpt, weights_only=True)
    after_fit()
    tested = trainer.test(job.model, datamodule=job.datamodule, verbose=False)[0]
    # every test sample in this process (under DDP the trainer's test loader gives each
    # process a part, padded to equal sizes): the metrics are exact on any strategy
    predictions = job.predict()
    metrics = {
        "test_loss": float(tested["test_loss"]),
        **job.test_metrics(predictions),
        "trained_epochs": float(trainer.current_epoch),
        "trained_steps": float(trainer.global_step),
    }
    if job.privacy is not None:
        metrics["dp_epsilon"] = job.privacy.epsilon  # spent by every step, resumed ones too
    history = next((lg.rows for lg in trainer.loggers if isinstance(lg, EpochHistory)), [])
    return Fitted(job.model, history, predictions, metrics)


def test_split_arrays(dm) -> tuple[np.ndarray, np.ndarray]:
    """The whole test split of a set-up DataModule as (float32 inputs, targets)."""
    xs, ys = zip(*((x.numpy(), y.numpy()) for x, y in dm.eval_dataloader("test")), strict=True)
    return np.concatenate(xs).astype(np.float32), np.concatenate(ys)


def exported(job: Job) -> tuple[Any, np.ndarray]:
    """The plain network to serve and an input example of two test samples, as it takes them."""
    x, _ = next(iter(job.datamodule.eval_dataloader("test")))
    return job.model.export_module(), job.served_inputs(x[:2].float().numpy())


def served_test_split(job: Job) -> tuple[np.ndarray, np.ndarray]:
    """The whole test split as the served model takes it (`served_inputs`), and its targets:
    what the registry scores a candidate and the champion on, alike."""
    x, y = test_split_arrays(job.datamodule)
    return job.served_inputs(x), y
