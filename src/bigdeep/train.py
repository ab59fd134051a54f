"""Stages `train_cnn` / `train_rnn`: fit with Lightning, evaluate, record everything in MLflow.

    bigdeep train cnn --data data/processed/images --out models/cnn --metrics metrics/cnn.json
    bigdeep train rnn --data data/processed/series --out models/rnn --metrics metrics/rnn.json

Each run logs params, per-epoch train/val curves (one MLflow call per epoch: per-step
logging to SQLite costs more than the step), test metrics, evaluation plots, the model
(`pt2` format, with signature and input example), the quality report and the exact data
version (DVC md5) and the dataset identity; then the model is registered under its identity's
name (registry.registered_name) as champion, challenger or, under the sanity floor, no alias.

Checkpoints (last and best, written atomically) go to `checkpoints/<model>/`. A run that
died (SIGKILL, a lost machine) is resumed from its last checkpoint into the same MLflow
run when the same command runs again with the same params and data (`--resume` insists).
"""

from __future__ import annotations

import ctypes
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import EarlyStopping, ModelCheckpoint
from pytorch_lightning.loggers import Logger

from bigdeep import evaluate
from bigdeep.config import Settings, Trainer, default_identity
from bigdeep.errors import BigdeepError
from bigdeep.registry import (
    IDENTITY_TAG,
    Decision,
    Floor,
    image_accuracy_scorer,
    params_hash,
    register_and_promote,
    registered_name,
    series_mae_scorer,
)
from bigdeep.tracking import (
    DataVersion,
    TrackingError,
    check_reachable,
    data_version,
    git_state,
    log_data_input,
    start_run,
    tracking_uri,
)

# Installed into the model's environment by whoever serves it; pinned like ours.
MODEL_REQUIREMENTS = [f"torch=={torch.__version__.split('+')[0]}", "numpy", "mlflow"]


class ResumeError(BigdeepError, RuntimeError):
    """--resume was asked for but there is nothing matching to resume."""


@dataclass(frozen=True)
class TrainResult:
    model: str
    run_id: str
    metrics: dict[str, float]
    data_version: str
    decision: Decision | None = None  # the registry's, with its reason


@dataclass(frozen=True)
class Paths:
    data: Path  # data/processed/<dataset>
    out: Path  # models/<model>: model.pt, run.json
    metrics: Path  # metrics/<model>.json (DVC metric)
    plots: Path  # reports/train/<model>: curves, evaluation tables and figures
    checkpoints: Path  # checkpoints/<model>: last.ckpt, best.ckpt, state.json
    report: Path | None = None  # the quality report to attach
    lock: Path = Path("dvc.lock")


# --- Lightning plumbing ----------------------------------------------------------------------


def log_metrics(client, run_id: str, values: dict[str, float], step: int) -> None:
    """All values in one request: each MLflow call to SQLite costs milliseconds."""
    from mlflow.entities import Metric

    ts = int(1000 * time.time())
    client.log_batch(run_id, metrics=[Metric(k, v, ts, step) for k, v in values.items()])


class EpochHistory(Logger):
    """A Lightning logger that sends each epoch's metrics to MLflow, one request at a time.

    Lightning hands a logger the epoch-level values after it has reduced them (a callback's
    on_train_epoch_end runs before the train metrics are reduced, so it would see the
    previous epoch's). Values arrive in two calls per epoch (validation, then train): they
    are sent as soon as the epoch has all of them, when the epoch changes, after every
    checkpoint, and at the end.

    A tracking server that stops answering does not stop training: the values wait in
    `spool` (a JSON file beside the checkpoints, written before anything is sent) and go out
    when the server answers again, in this process or in the run that resumes it.
    """

    def __init__(
        self,
        mlflow_client,
        run_id: str,
        keys: tuple[str, ...],
        rows: list | None = None,
        spool: Path | None = None,
        uri: str = "",
    ) -> None:
        super().__init__()
        self.client, self.run_id, self.keys = mlflow_client, run_id, keys
        self.spool, self.uri = spool, uri
        self._rows: dict[int, dict[str, float]] = {int(r["epoch"]): dict(r) for r in rows or []}
        self._pending: dict[str, float] = {}
        self._epoch: int | None = None
        self._unsent: dict[int, dict[str, float]] = self._read_spool()
        for epoch, values in self._unsent.items():
            self._rows.setdefault(epoch, {"epoch": epoch}).update(values)
        self._down_since: tuple[float, int] | None = None  # (monotonic time, epoch)

    @property
    def rows(self) -> list[dict[str, float]]:
        return [self._rows[e] for e in sorted(self._rows)]

    @property
    def unsent(self) -> list[int]:
        """Epochs whose values the server has not received yet."""
        return sorted(self._unsent)

    @property
    def name(self) -> str:
        return "bigdeep-mlflow"

    @property
    def version(self) -> str:
        return self.run_id

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass  # params are logged once by the stage, from the validated settings

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        epoch = int(metrics.get("epoch", self._epoch or 0))
        if self._epoch is not None and epoch != self._epoch:
            self.flush()
        self._epoch = epoch
        self._pending.update({k: float(v) for k, v in metrics.items() if k in self.keys})
        if set(self.keys) <= set(self._pending) | set(self._rows.get(epoch, {})):
            self.flush()

    def finalize(self, status: str) -> None:
        self.flush()

    def flush(self) -> None:
        self.keep()
        self.send()

    def keep(self) -> None:
        """Move the values received so far into the history and the spool file (no network)."""
        if self._epoch is None or not self._pending:
            return
        self._rows.setdefault(self._epoch, {"epoch": self._epoch}).update(self._pending)
        self._unsent.setdefault(self._epoch, {}).update(self._pending)
        self._pending = {}
        self._write_spool()

    def send(self) -> bool:
        """Send every kept epoch; False (values kept for later) when the server does not answer."""
        if not self._unsent:
            return True
        if self._down_since is not None and not self._answers():
            return False  # a cheap probe instead of a request that would sit in retries
        try:
            for epoch in sorted(self._unsent):
                log_metrics(self.client, self.run_id, self._unsent[epoch], step=epoch)
                del self._unsent[epoch]
        except Exception as e:  # noqa: BLE001 - any failure to record: keep the values
            self._write_spool()
            if self._down_since is None:
                self._down_since = (time.monotonic(), min(self._unsent))
                print(
                    f"bigdeep: MLflow tracking server {self.uri} is not answering "
                    f"({_short(e)}); training goes on, epoch metrics wait in {self.spool} "
                    "and are sent when it is back",
                    file=sys.stderr,
                    flush=True,
                )
            return False
        self._write_spool()
        if self._down_since is not None:
            since = time.monotonic() - self._down_since[0]
            print(
                f"bigdeep: MLflow tracking server {self.uri} is back after {since:.0f} s; "
                "the waiting epoch metrics are sent",
                file=sys.stderr,
                flush=True,
            )
            self._down_since = None
        return True

    def drain(self, wait: float, checkpoint: Path) -> None:
        """After fit: send what waits, giving the server `wait` seconds to come back."""
        self.flush()
        if not self._unsent:
            return
        print(
            f"bigdeep: training is done; waiting up to {wait:.0f} s for MLflow tracking server "
            f"{self.uri} to record it (BIGDEEP_MLFLOW_OUTAGE_WAIT sets how long)",
            file=sys.stderr,
            flush=True,
        )
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            time.sleep(min(2.0, max(0.0, deadline - time.monotonic())))
            if self.send():
                return
        raise TrackingError(
            f"MLflow tracking server {self.uri} is not answering (since epoch "
            f"{self.unsent[0]}); training is done and saved in {checkpoint}, the epoch metrics "
            f"in {self.spool}. Fix: start the server again (`bigdeep servers up`), then run the "
            "same command: it resumes from the checkpoint, sends the metrics and publishes."
        )

    def _answers(self) -> bool:
        if not self.uri.startswith(("http://", "https://")):
            return True  # a database store: just try
        from bigdeep.servers import healthy

        return healthy(self.uri.rstrip("/") + "/health", timeout=2.0)

    def _read_spool(self) -> dict[int, dict[str, float]]:
        if self.spool is None or not self.spool.exists():
            return {}
        saved = json.loads(self.spool.read_text())
        if saved.get("run_id") != self.run_id:
            return {}  # another run's: never sent into this one
        return {int(e): v for e, v in saved["epochs"].items()}

    def _write_spool(self) -> None:
        if self.spool is None:
            return
        if not self._unsent:
            self.spool.unlink(missing_ok=True)
            return
        self.spool.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.spool.with_suffix(".tmp")
        body = {"run_id": self.run_id, "epochs": {str(e): v for e, v in self._unsent.items()}}
        tmp.write_text(json.dumps(body, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, self.spool)


def _short(e: BaseException) -> str:
    text = str(e).splitlines()[0] if str(e) else ""
    return f"{type(e).__name__}: {text[:200]}" if text else type(e).__name__


class AtomicCheckpoint(ModelCheckpoint):
    """Write to a temporary file, then rename: a crash never leaves a torn checkpoint.

    The checkpoint lands before anything talks to a server: the epoch's values go to the
    history's spool file first, then the checkpoint, then the tracking server.
    """

    def _save_checkpoint(self, trainer: pl.Trainer, filepath: str) -> None:
        histories = [lg for lg in trainer.loggers if isinstance(lg, EpochHistory)]
        for history in histories:
            history.keep()
        tmp = f"{filepath}.tmp"
        trainer.save_checkpoint(tmp, self.save_weights_only)
        if trainer.is_global_zero:
            os.replace(tmp, filepath)
        self._last_global_step_saved = trainer.global_step
        self._last_checkpoint_saved = filepath
        for history in histories:
            history.send()


def configure_torch(cfg: Trainer, seed: int) -> None:
    _tune_glibc_malloc()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    pl.seed_everything(seed, workers=True, verbose=False)


def _tune_glibc_malloc() -> None:
    """Keep freed tensor memory mapped instead of returning it to the OS after every step.

    With glibc's defaults a fresh process page-faults on each large allocation; measured here
    (tests/benchmarks/bench_train.py --glibc-default) a bare LSTM loop ran 2x slower and the
    CNN at batch 256 1.4x slower. Other C libraries are left alone.
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    libc.mallopt(-3, 256 * 2**20)  # M_MMAP_THRESHOLD
    libc.mallopt(-1, 2**30)  # M_TRIM_THRESHOLD


def precision_for(cfg: Trainer) -> str:
    if cfg.precision:
        return cfg.precision
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16-mixed"
    return "32-true"


def pin_memory_for(cfg: Trainer) -> bool:
    """Page-locked batches speed host-to-GPU copies; on the CPU they only cost."""
    if cfg.pin_memory is not None:
        return cfg.pin_memory
    return cfg.accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()


def make_trainer(
    cfg: Trainer, epochs: int, patience: int, history: EpochHistory | None, checkpoints: Path
) -> pl.Trainer:
    """`history` None: no logger (the extra processes of a DDP run)."""
    return pl.Trainer(
        max_epochs=epochs,
        accelerator=cfg.accelerator,
        devices=cfg.devices,
        strategy=cfg.strategy,
        precision=precision_for(cfg),
        deterministic=cfg.deterministic,
        limit_train_batches=cfg.limit_train_batches,
        logger=history or False,
        log_every_n_steps=1_000_000,  # step-level values are never logged: epochs only
        callbacks=[
            AtomicCheckpoint(
                dirpath=checkpoints,
                filename="best",
                monitor="val_loss",
                save_last=True,
                save_top_k=1,
            ),
            EarlyStopping(monitor="val_loss", patience=patience),
        ],
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(checkpoints),
    )


# --- resume ----------------------------------------------------------------------------------


def _fingerprint(settings: Settings, version: DataVersion) -> str:
    return f"{params_hash(settings.model_dump())}:{version.processed_md5}"


def resumable(checkpoints: Path, fingerprint: str) -> dict | None:
    """The unfinished run to continue, if its params and data are the ones of this run."""
    state_path, last = checkpoints / "state.json", checkpoints / "last.ckpt"
    if not (state_path.exists() and last.exists()):
        return None
    state = json.loads(state_path.read_text())
    if state.get("complete") or state.get("fingerprint") != fingerprint:
        return None
    return state


def _write_state(checkpoints: Path, state: dict) -> None:
    checkpoints.mkdir(parents=True, exist_ok=True)
    tmp = checkpoints / "state.json.tmp"
    tmp.write_text(json.dumps(state, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, checkpoints / "state.json")


# --- one training job, whatever the model ---------------------------------------------------


@dataclass
class Job:
    """What differs between the CNN and the RNN; `fit_and_log` does the rest."""

    name: str  # cnn | rnn
    dataset: str  # images | series
    datamodule: pl.LightningDataModule
    model: pl.LightningModule
    epochs: int
    patience: int
    params: dict[str, Any]
    history_keys: tuple[str, ...]
    # (trainer.test's metrics, plots folder) -> test metrics; writes the plots
    evaluate: Callable[[dict[str, float], Path], dict[str, float]]
    export: Callable[[], tuple[torch.nn.Module, np.ndarray]]  # plain module + input example
    score: Callable[[str], float]  # model URI -> metric on the pinned test split
    metric: str
    higher_is_better: bool
    margin: float
    floor: Callable[[dict[str, float]], Floor]  # test metrics -> the sanity floor to clear


def fit_and_log(
    settings: Settings, job: Job, paths: Paths, resume: bool | None = None
) -> TrainResult | None:
    """Fit, test, log, export and register `job`; None in the extra processes of a DDP run."""
    import mlflow

    version = data_version(paths.lock, paths.data, raw_name=job.dataset)
    fingerprint = _fingerprint(settings, version)
    if not launched_as_rank_zero():
        return _fit_as_peer(settings, job, paths, fingerprint)
    previous = resumable(paths.checkpoints, fingerprint)
    if resume and previous is None:
        raise ResumeError(
            f"--resume: no unfinished run with these params and data in {paths.checkpoints}"
        )
    if previous is None or resume is False:
        previous = None
        for stale in [*paths.checkpoints.glob("*.ckpt"), paths.checkpoints / SPOOL]:
            stale.unlink(missing_ok=True)  # another run's: never continue from it
    tags = run_tags(settings, job.name, version, job.dataset)
    run_id = previous["run_id"] if previous else None
    with start_run(settings.mlflow, run_name=f"train_{job.name}", tags=tags, run_id=run_id) as (
        run,
        client,
    ):
        if previous is None:
            mlflow.log_params({**_common_params(settings), **job.params})
            log_data_input(version, name=job.dataset, context="training")
        _write_state(
            paths.checkpoints,
            {"run_id": run.info.run_id, "fingerprint": fingerprint, "complete": False},
        )
        history = EpochHistory(
            client,
            run.info.run_id,
            job.history_keys,
            rows=_history_so_far(client, run.info.run_id, job.history_keys),
            spool=paths.checkpoints / SPOOL,
            uri=tracking_uri(settings.mlflow),
        )
        trainer = make_trainer(
            settings.train.trainer, job.epochs, job.patience, history, paths.checkpoints
        )
        ckpt = str(paths.checkpoints / "last.ckpt") if previous else None
        trainer.fit(job.model, datamodule=job.datamodule, ckpt_path=ckpt, weights_only=True)
        history.drain(outage_wait(), paths.checkpoints / "last.ckpt")
        if previous:
            mlflow.set_tag("bigdeep.resumed_from", ckpt)

        tested = trainer.test(job.model, datamodule=job.datamodule, verbose=False)[0]
        paths.plots.mkdir(parents=True, exist_ok=True)
        metrics = job.evaluate(tested, paths.plots)
        metrics |= {
            "trained_epochs": float(trainer.current_epoch),
            "trained_steps": float(trainer.global_step),
        }
        log_metrics(client, run.info.run_id, metrics, step=0)
        paths.out.mkdir(parents=True, exist_ok=True)
        torch.save(job.model.state_dict(), paths.out / "model.pt")
        module, example = job.export()
        model_uri = log_model(module, example, name="model")
        identity = getattr(settings.data, job.dataset).identity
        decision = register_and_promote(
            client=client,
            name=registered_name(
                settings.registry.prefix, job.name, identity, default_identity(job.dataset)
            ),
            run_id=run.info.run_id,
            model_uri=model_uri,
            score=job.score,
            metric=job.metric,
            higher_is_better=job.higher_is_better,
            margin=job.margin,
            data_version=version.processed_md5,
            tags=client.get_run(run.info.run_id).data.tags,
            floor=job.floor(metrics),
        )
        evaluate.write_history(history.rows, paths.plots / "history.csv")
        evaluate.plot_history(
            history.rows, paths.plots / "learning_curve.png", f"{job.name}: learning curve"
        )
        mlflow.log_artifacts(str(paths.plots), artifact_path="plots")
        if paths.report is not None and paths.report.exists():
            mlflow.log_artifact(str(paths.report), artifact_path="quality")
        _write_outputs(paths, run.info.run_id, metrics, model_uri, version.raw_md5, decision)
        _write_state(
            paths.checkpoints,
            {"run_id": run.info.run_id, "fingerprint": fingerprint, "complete": True},
        )
        return TrainResult(job.name, run.info.run_id, metrics, version.raw_md5, decision)


def outage_wait() -> float:
    """Seconds a finished training waits for a tracking server that stopped answering."""
    return float(os.environ.get("BIGDEEP_MLFLOW_OUTAGE_WAIT", "300"))


SPOOL = "unsent_metrics.json"  # epoch metrics the tracking server has not received yet


def launched_as_rank_zero() -> bool:
    """False in the extra processes of a multi-process run (DDP), before the group exists.

    Lightning's launcher starts them by running the same command again with the rank in the
    environment (LOCAL_RANK, NODE_RANK; torchrun and SLURM set RANK / SLURM_PROCID). Only
    rank zero talks to MLflow, writes outputs and registers; the others train and test.
    """
    env = os.environ
    for key in ("RANK", "SLURM_PROCID"):  # a global rank, where a launcher gives one
        if key in env:
            return int(env[key]) == 0
    return int(env.get("NODE_RANK", 0)) == 0 and int(env.get("LOCAL_RANK", 0)) == 0


def _fit_as_peer(settings: Settings, job: Job, paths: Paths, fingerprint: str) -> None:
    """Rank > 0 of a DDP run: the same fit and test as rank zero, no logger, no outputs.

    Rank zero decided before launching this process whether to resume (and wrote
    state.json); reading the same state gives the same checkpoint here.
    """
    previous = resumable(paths.checkpoints, fingerprint)
    trainer = make_trainer(
        settings.train.trainer, job.epochs, job.patience, None, paths.checkpoints
    )
    ckpt = str(paths.checkpoints / "last.ckpt") if previous else None
    trainer.fit(job.model, datamodule=job.datamodule, ckpt_path=ckpt, weights_only=True)
    trainer.test(job.model, datamodule=job.datamodule, verbose=False)  # its collectives too
    return None


def _history_so_far(client, run_id: str, keys: tuple[str, ...]) -> list[dict[str, float]]:
    """The curves a resumed run already logged, so history.csv covers every epoch."""
    rows: dict[int, dict[str, float]] = {}
    for key in keys:
        for m in client.get_metric_history(run_id, key):
            rows.setdefault(m.step, {"epoch": m.step})[key] = m.value
    return [rows[e] for e in sorted(rows)]


def _write_outputs(
    paths: Paths, run_id, metrics, model_uri, data_version_: str, decision: Decision
) -> None:
    paths.metrics.parent.mkdir(parents=True, exist_ok=True)
    # the DVC metric holds numbers only; where they came from sits beside the model
    paths.metrics.write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    run_info = {
        "run_id": run_id,
        "model_uri": model_uri,
        "data_version": data_version_,
        "registry": asdict(decision),
    }
    (paths.out / "run.json").write_text(json.dumps(run_info, indent=2, sort_keys=True) + "\n")


def run_tags(settings: Settings, model: str, version: DataVersion, dataset: str) -> dict[str, str]:
    """Lineage: which data (identity, DVC md5s), code (git) and params (hash) a run came from."""
    return {
        "bigdeep.model": model,
        IDENTITY_TAG: getattr(settings.data, dataset).identity,
        "bigdeep.params_hash": params_hash(settings.model_dump()),
        **version.tags(),
        **git_state(),
    }


def _common_params(settings: Settings) -> dict[str, Any]:
    t = settings.train.trainer
    return {
        "seed": settings.seed,
        "trainer.accelerator": t.accelerator,
        "trainer.devices": t.devices,
        "trainer.strategy": t.strategy,
        "trainer.precision": precision_for(t),
        "trainer.threads": t.threads,
        "trainer.limit_train_batches": t.limit_train_batches,
    }


# --- the two stages --------------------------------------------------------------------------


def _loader_args(settings: Settings, batch_size: int, seed: int | None) -> dict[str, Any]:
    """What both data modules take from params.yaml for their loaders."""
    tcfg = settings.train.trainer
    return {
        "batch_size": batch_size,
        "num_workers": tcfg.num_workers,
        "pin_memory": pin_memory_for(tcfg),
        "seed": settings.seed if seed is None else seed,
    }


def build_image_job(settings: Settings, data_dir: Path, seed: int | None = None):
    """(ImageDataModule set up, ImageClassifier) as params.yaml describes them."""
    from bigdeep.data.datamodules import ImageDataModule
    from bigdeep.models.cnn import ImageClassifier

    cfg = settings.train.cnn
    dm = ImageDataModule(
        data_dir,
        **_loader_args(settings, cfg.batch_size, seed),
        memory_mb=settings.train.trainer.memory_mb,
        augment_rotate=cfg.augment_rotate,
        augment_shift=cfg.augment_shift,
        augment_scale=cfg.augment_scale,
    )
    dm.setup("fit")
    model = ImageClassifier(
        num_classes=dm.num_classes,
        in_channels=dm.channels,  # and image_size: the prepared data's, 1 x 28 x 28 for MNIST
        conv=list(cfg.conv),
        dense=cfg.dense,
        lr=cfg.lr,
        image_size=dm.image_size,
        input_mean=dm.pixel_mean,  # from the train split; travels inside the exported model
        input_std=dm.pixel_std,
        schedule=cfg.schedule,
        weight_decay=cfg.weight_decay,
        label_smoothing=cfg.label_smoothing,
        channels_last=cfg.channels_last,
    )
    return dm, model


def build_series_job(settings: Settings, data_dir: Path, seed: int | None = None):
    """(SeriesDataModule set up, SeriesForecaster) as params.yaml describes them."""
    from bigdeep.data.datamodules import SeriesDataModule
    from bigdeep.models.rnn import SeriesForecaster

    cfg = settings.train.rnn
    dm = SeriesDataModule(
        data_dir,
        window=cfg.window,
        horizon=cfg.horizon,
        **_loader_args(settings, cfg.batch_size, seed),
        calendar=list(cfg.calendar),
        calendar_tz=cfg.calendar_tz,
    )
    dm.setup("fit")
    model = SeriesForecaster(
        n_features=dm.n_features,
        cell=cfg.cell,
        layers=cfg.layers,
        hidden=cfg.hidden,
        dropout=cfg.dropout,
        horizon=cfg.horizon,
        lr=cfg.lr,
        schedule=cfg.schedule,
        weight_decay=cfg.weight_decay,
        grad_clip=cfg.grad_clip,
    )
    return dm, model


def train_cnn(settings: Settings, paths: Paths, resume: bool | None = None) -> TrainResult | None:
    check_reachable(settings.mlflow)  # fail now, not after training
    cfg, tcfg = settings.train.cnn, settings.train.trainer
    configure_torch(tcfg, settings.seed)
    dm, model = build_image_job(settings, paths.data)

    def evaluate_cnn(tested: dict[str, float], plots: Path) -> dict[str, float]:
        # every test image in this process (under DDP the trainer's test loader gives each
        # process a part, padded to equal sizes): the accuracy is exact on any strategy
        y_true, y_pred = evaluate.predict_classes(model, dm.eval_dataloader("test"))
        recalls = evaluate.write_classifier_report(y_true, y_pred, list(dm.classes), plots)
        return {
            "test_loss": float(tested["test_loss"]),
            "test_acc": float(np.mean(np.asarray(y_true) == np.asarray(y_pred))),
            "test_majority_rate": evaluate.majority_rate(y_true),  # the sanity floor's baseline
            **recalls,
        }

    def export() -> tuple[torch.nn.Module, np.ndarray]:
        x, _ = next(iter(dm.eval_dataloader("test")))
        return model.predict_proba_module(), x[:2].float().numpy()  # (2, C, H, W) in [0, 1]

    job = Job(
        name="cnn",
        dataset="images",
        datamodule=dm,
        model=model,
        epochs=cfg.epochs,
        patience=cfg.patience,
        params={f"cnn.{k}": v for k, v in cfg.model_dump().items()}
        # splits over train.trainer.memory_mb, read from disk in blocks (none: all in memory)
        | {"data.streamed": ",".join(dm.streamed) or "none"}
        # what a served model expects: (B, C, H, W) float32 in [0, 1]
        | {"data.input_shape": "x".join(map(str, (dm.channels, *dm.image_size)))},
        history_keys=("train_loss", "train_acc", "val_loss", "val_acc"),
        evaluate=evaluate_cnn,
        export=export,
        score=image_accuracy_scorer(paths.data),
        metric="test_acc",
        higher_is_better=True,
        margin=settings.registry.cnn_margin,
        floor=lambda m: Floor.majority_class(
            m["test_majority_rate"], settings.registry.cnn_floor_margin
        ),
    )
    return fit_and_log(settings, job, paths, resume)


def train_rnn(settings: Settings, paths: Paths, resume: bool | None = None) -> TrainResult | None:
    check_reachable(settings.mlflow)  # fail now, not after training
    cfg, tcfg = settings.train.rnn, settings.train.trainer
    configure_torch(tcfg, settings.seed)
    dm, model = build_series_job(settings, paths.data)

    def evaluate_rnn(tested: dict[str, float], plots: Path) -> dict[str, float]:
        arrays = evaluate.predict_series(model, dm.eval_dataloader("test"), cfg.seasonal_period)
        metrics = evaluate.forecast_metrics(arrays, dm.inverse_target)
        frame = dm.split_frame("test")  # test loader is unshuffled: same order as `arrays`
        evaluate.write_forecast_report(
            frame.timestamps,
            dm.inverse_target(arrays["true"][:, 0]),
            dm.inverse_target(arrays["model"][:, 0]),
            plots,
            dm.target,
        )
        return {"test_loss": float(tested["test_loss"]), **metrics}

    def export() -> tuple[torch.nn.Module, np.ndarray]:
        x, _ = next(iter(dm.eval_dataloader("test")))
        return model.export_module(), x[:2].float().numpy()  # (2, window, n_features)

    job = Job(
        name="rnn",
        dataset="series",
        datamodule=dm,
        model=model,
        epochs=cfg.epochs,
        patience=cfg.patience,
        params={
            **{f"rnn.{k}": v for k, v in cfg.model_dump().items()},
            "rnn.input_columns": ",".join(dm.input_columns),  # what a served model expects
        },
        history_keys=("train_loss", "train_mae", "val_loss", "val_mae"),
        evaluate=evaluate_rnn,
        export=export,
        score=series_mae_scorer(dm),
        metric="test_mae",
        higher_is_better=False,
        margin=settings.registry.rnn_margin,
        floor=lambda m: Floor.naive_forecast(
            m["test_naive_mae"], settings.registry.rnn_floor_ratio
        ),
    )
    return fit_and_log(settings, job, paths, resume)


def log_model(module: torch.nn.Module, example: np.ndarray, name: str) -> str:
    """Log in MLflow's `pt2` format (torch.export, no pickle), batch dimension dynamic."""
    import mlflow
    from mlflow.models import infer_signature

    module = module.cpu().eval()
    with torch.no_grad():
        out = module(torch.from_numpy(example)).numpy()
    info = mlflow.pytorch.log_model(
        module,
        name=name,
        signature=infer_signature(example, out),
        input_example=example,
        serialization_format="pt2",
        pip_requirements=MODEL_REQUIREMENTS,
    )
    mlflow.set_tag("bigdeep.model_uri", info.model_uri)
    return info.model_uri
