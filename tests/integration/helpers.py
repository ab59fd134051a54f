"""What the tests and benchmarks that train share: the builtin data ingested and prepared into
a folder, a train stage's paths under one folder, and a fit as the pipeline fits (no MLflow)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from bigdeep.config import Settings
from bigdeep.ingest import ingest_images, ingest_series
from bigdeep.prepare import prepare_images, prepare_series
from bigdeep.train import Paths


def prepared_images(settings: Settings, root: Path) -> Path:
    """The builtin digits ingested into root/raw and prepared into root/data (returned)."""
    ingest_images(settings, root / "raw")
    (root / "q").mkdir(parents=True)
    prepare_images(
        root / "raw",
        root / "q",
        root / "data",
        settings.prepare.images,
        settings.quality.images.classes,
        settings.seed,
    )
    return root / "data"


def prepared_series(settings: Settings, root: Path) -> Path:
    """The builtin demand series ingested into root/raw and prepared into root/data (returned)."""
    ingest_series(settings, root / "raw")
    (root / "q").mkdir(parents=True)
    prepare_series(
        root / "raw", root / "q", root / "data", settings.data.series, settings.prepare.series
    )
    return root / "data"


def run_paths(base: Path, data: Path) -> Paths:
    """A train stage reading `data` and writing everything under `base`."""
    return Paths(
        data=data,
        out=base / "model",
        metrics=base / "metrics.json",
        plots=base / "plots",
        checkpoints=base / "ckpt",
        lock=base / "dvc.lock",
    )


@contextmanager
def tracking(uri: str) -> Iterator[None]:
    """MLflow's store is `uri` inside the block (the variable too, for subprocesses), for a
    fixture wider than a test (the `mlflow_uri` fixture is per test); as it was after."""
    import mlflow

    saved, before = os.environ.get("MLFLOW_TRACKING_URI"), mlflow.get_tracking_uri()
    os.environ["MLFLOW_TRACKING_URI"] = uri
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = saved
        mlflow.set_tracking_uri(before)


def fit(
    settings: Settings,
    build: Callable,
    data: Path,
    checkpoints: Path,
    epochs: int | None = None,
    patience: int | None = None,
    ckpt: str | None = None,
):
    """(job, fitted): the job from the pipeline's builder (`build_image_job`,
    `build_series_job`), fitted and tested by its core on a trainer without a logger, as the
    stage's trainer but for MLflow; `ckpt` resumes from a checkpoint."""
    from bigdeep.training.core import fit_and_test
    from bigdeep.training.plumbing import configure_torch, make_trainer

    configure_torch(settings.train.trainer, settings.seed)
    job = build(settings, data)
    extra = (job.privacy,) if job.privacy else ()
    trainer = make_trainer(
        settings.train.trainer,
        epochs or job.epochs,
        patience or job.patience,
        None,
        checkpoints,
        extra,
    )
    return job, fit_and_test(job, trainer, ckpt)
