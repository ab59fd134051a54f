"""Lightning plumbing for the training stage: how a run is set up, not what it trains.

The epoch-history logger (MLflow, with a spool file for outages), the atomic checkpoint, the
trainer itself, device and precision policy, process tuning and rank detection. Nothing
here knows the CNN or the RNN.
"""

from __future__ import annotations

import copy
import ctypes
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import EarlyStopping, ModelCheckpoint
from pytorch_lightning.loggers import Logger

from bigdeep.config import Trainer
from bigdeep.tracking import TrackingError


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
        recovering = self._down_since is not None
        try:
            for epoch in sorted(self._unsent):
                values = self._unsent[epoch]
                if recovering:  # the request the outage cut may have been recorded: not twice
                    values = {k: v for k, v in values.items() if not self._recorded(k, epoch, v)}
                if values:
                    log_metrics(self.client, self.run_id, values, step=epoch)
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

    def _recorded(self, key: str, step: int, value: float) -> bool:
        """The server holds `key` = `value` at `step` already."""
        history = self.client.get_metric_history(self.run_id, key)
        return any(m.step == step and m.value == value for m in history)

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

    # Lightning 2.6 refreshes last.ckpt only when a best checkpoint was saved at the same step:
    # after an epoch whose val_loss did not improve, a resumed fit would train it again (and
    # send its metrics twice). The resume point is every epoch's, whatever the monitor says.
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self._should_save_on_train_epoch_end(trainer):
            self._save_last_every_time(trainer)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer):
            self._save_last_every_time(trainer)

    def _save_last_every_time(self, trainer: pl.Trainer) -> None:
        if self.save_last and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))


def configure_torch(cfg: Trainer, seed: int) -> None:
    _tune_glibc_malloc()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    pl.seed_everything(seed, workers=True, verbose=False)


def _tune_glibc_malloc() -> None:
    """Keep freed tensor memory mapped instead of returning it to the OS after every step.

    With glibc's defaults a fresh process page-faults on each large allocation (figures:
    tests/benchmarks/README.md). Other C libraries are left alone.
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
    """The configured precision; null: bf16-mixed on a GPU that has it, else 32-true (what
    `fastest_precision` refines when it can measure)."""
    if cfg.precision:
        return cfg.precision
    gpu = cfg.accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()
    if gpu and torch.cuda.is_bf16_supported():
        return "bf16-mixed"
    return "32-true"


def fastest_precision(
    cfg: Trainer,
    model: torch.nn.Module,
    batch: tuple[torch.Tensor, torch.Tensor],
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    device: torch.device | str | None = None,
    steps: int = 20,
) -> tuple[str, dict[str, float]]:
    """`train.trainer.precision: null` resolved by measurement: (precision, ms per step of
    each candidate).

    On one GPU with bf16 a copy of `model` takes `steps` timed training steps (forward,
    loss, backward; after warm-up) on `batch` in fp32 and under bf16 autocast, and the faster
    wins: on a small network each step is bound by kernel launches, where autocast's casts
    cost more than bf16 saves (issue 12: 5.5 vs 6.0 ms a step for the CNN at batch 64).
    The configured precision is kept as it is; on the CPU (bf16 is slower there) and on more
    than one GPU (every process must pick the same) nothing is measured: `precision_for`.
    `device` defaults to the first GPU.
    """
    if cfg.precision:
        return cfg.precision, {}
    if device is None:
        if precision_for(cfg) != "bf16-mixed":
            return precision_for(cfg), {}
        if torch.cuda.device_count() > 1 and cfg.devices not in (1, "1"):
            return precision_for(cfg), {}
        device = "cuda"
    device = torch.device(device)
    net = copy.deepcopy(model).to(device).train()
    x, y = (t.to(device) for t in batch)

    def step(dtype: torch.dtype | None) -> None:
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=bool(dtype)):
            value = loss(net(x), y)
        value.backward()
        net.zero_grad(set_to_none=True)

    timings: dict[str, float] = {}
    for precision, dtype in (("32-true", None), ("bf16-mixed", torch.bfloat16)):
        for _ in range(3):  # warm-up: kernels chosen, memory pooled
            step(dtype)
        _synchronize(device)
        start = time.perf_counter()
        for _ in range(steps):
            step(dtype)
        _synchronize(device)
        timings[precision] = 1000 * (time.perf_counter() - start) / steps
    return min(timings, key=timings.__getitem__), timings


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def pin_memory_for(cfg: Trainer) -> bool:
    """Page-locked batches speed host-to-GPU copies; on the CPU they only cost."""
    if cfg.pin_memory is not None:
        return cfg.pin_memory
    return cfg.accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()


def make_trainer(
    cfg: Trainer,
    epochs: int,
    patience: int,
    history: EpochHistory | None,
    checkpoints: Path,
    extra: tuple[pl.Callback, ...] = (),
    precision: str | None = None,
) -> pl.Trainer:
    """`history` None: no logger (the extra processes of a DDP run); `extra`: more callbacks
    (the job's differential privacy); `precision`: the job's (`Job.precision`, measured)
    instead of `precision_for`."""
    return pl.Trainer(
        max_epochs=epochs,
        accelerator=cfg.accelerator,
        devices=cfg.devices,
        strategy=cfg.strategy,
        num_nodes=cfg.num_nodes,  # torchrun / SLURM give each process its node's rank
        precision=precision or precision_for(cfg),
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
            *extra,
        ],
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(checkpoints),
    )


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


def outage_wait() -> float:
    """Seconds a finished training waits for a tracking server that stopped answering."""
    return float(os.environ.get("BIGDEEP_MLFLOW_OUTAGE_WAIT", "300"))


SPOOL = "unsent_metrics.json"  # epoch metrics the tracking server has not received yet
