"""Training throughput: Lightning (as the pipeline runs it) vs a bare PyTorch loop.

    python tests/benchmarks/bench_train.py                     # all cases, 7 repeats
    python tests/benchmarks/bench_train.py --case cnn-b32 --repeats 3
    python tests/benchmarks/bench_train.py --variant per-step-log   # the first design

Same model, same synthetic data, same batch size, one CPU thread, deterministic algorithms,
glibc's heap kept (see `keep_heap`).
Lightning runs on the pipeline's data modules (files written to a temp dir, loaded into
memory) with the pipeline's logging: epoch means (`EpochMeans`) sent to MLflow by its
`EpochHistory` logger, into a SQLite store in the temp dir (`--no-mlflow` for no logger);
no progress bar, no checkpointing. The bare loop
slices the same tensors, pre-built, with a random permutation (the fastest hand-written loop)
and does the same work by hand: the same `training_step` (forward, loss, epoch metric sums),
backward, the model's optimiser and per-step schedule (`bigdeep.models.optim`), the RNN's
gradient clipping, and the CNN data module's augmentation of each train batch.
Models and data modules run with their defaults, which are params.yaml's training choices.
Runs alternate (bare, lightning, bare, ...) and medians are reported.

Ratios lightning/bare (targets from the issue: >= 0.95 at batch 32, >= 0.98 at batch 256):
  step   median time of one training step, batch start to next batch start: the per-step
         overhead, robust to bursts of load from other processes on a shared machine;
  epoch  wall time of the training epochs (median over runs);
  cpu    the same in process CPU time;
  fit    the whole `trainer.fit` call (adds Lightning's fixed start-up) vs bare epochs.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import logging
import statistics
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pytorch_lightning as pl
import torch

from bigdeep.data.datamodules import ImageDataModule, SeriesDataModule
from bigdeep.data.prepared import write_image_split
from bigdeep.data.transforms import random_affine
from bigdeep.models.cnn import ImageClassifier
from bigdeep.models.optim import make_optimizer, make_scheduler
from bigdeep.models.rnn import SeriesForecaster
from bigdeep.train import EpochHistory


@dataclass(frozen=True)
class Case:
    name: str
    kind: str  # "cnn" | "lstm"
    batch_size: int


CASES = [Case("cnn-b32", "cnn", 32), Case("cnn-b256", "cnn", 256), Case("lstm-b64", "lstm", 64)]
WINDOW = 48


# --- synthetic data in the prepared-data format ---------------------------------------------


def write_image_data(data_dir: Path, n: int) -> None:
    rng = np.random.default_rng(0)
    (data_dir / "classes.json").write_text(json.dumps([str(d) for d in range(10)]))
    for split, rows in [("train", n), ("val", 64), ("test", 64)]:
        x = rng.integers(0, 256, size=(rows, 28, 28), dtype=np.uint8)
        y = rng.integers(0, 10, size=rows).astype(np.int64)
        write_image_split(data_dir, split, x, y, np.array([str(i) for i in range(rows)]))


def write_series_data(data_dir: Path, n: int) -> None:
    rng = np.random.default_rng(0)
    rows = WINDOW + n + 2 * 64  # n train samples, 64 val and 64 test target rows
    split = ["train"] * (WINDOW + n) + ["val"] * 64 + ["test"] * 64
    frame = pd.DataFrame(
        {
            "timestamp": pd.date_range("2024-01-01", periods=rows, freq="1h", tz="UTC"),
            "Demand": rng.standard_normal(rows),
            "Temperature": rng.standard_normal(rows),
            "split": split,
        }
    )
    frame.to_parquet(data_dir / "series.parquet", index=False)
    scaler = {c: {"mean": 0.0, "std": 1.0} for c in ("Demand", "Temperature")}
    meta = {"target": "Demand", "features": ["Temperature"], "scaler": scaler, "freq": "1h"}
    (data_dir / "meta.json").write_text(json.dumps(meta))


def make_datamodule(
    case: Case, data_dir: Path, memory_mb: float = 4096, device_data: str = "off"
) -> pl.LightningDataModule:
    if case.kind == "cnn":
        dm = ImageDataModule(
            data_dir / "images",
            batch_size=case.batch_size,
            memory_mb=memory_mb,
            device_data=device_data,
        )
    else:
        dm = SeriesDataModule(
            data_dir / "series", window=WINDOW, batch_size=case.batch_size, device_data=device_data
        )
    dm.setup("fit")
    return dm


def train_tensors(dm: pl.LightningDataModule) -> tuple[torch.Tensor, torch.Tensor]:
    """The train split as two plain tensors (images un-augmented), built outside the timing."""
    if isinstance(dm, ImageDataModule):
        return dm.tensors["train"]  # (N, 1, H, W), (N,)
    dataset = dm.train_dataloader().dataset
    return dataset.batch(torch.arange(len(dataset)))  # (N, T, F) inputs, (N, horizon) targets


# --- the two contenders ---------------------------------------------------------------------


PHASES = ("data", "forward", "backward", "optimizer")


@dataclass
class Timing:
    wall: float  # seconds over the training epochs
    cpu: float  # this process's CPU seconds over the same span
    steps: list[float]  # seconds between consecutive batch starts within an epoch
    # `--phases`: seconds per step in each of PHASES (what the step time is made of)
    phases: dict[str, list[float]] = field(default_factory=dict)


def _step_times(stamps: list[float]) -> list[float]:
    return [b - a for a, b in zip(stamps, stamps[1:], strict=False)]


class LogEveryStep:
    """`--variant per-step-log`: the first design, `self.log(on_epoch=True)` in every step.

    Stands in for the model's `EpochMeans`, so the models' code is otherwise unchanged.
    """

    def __init__(self, module: pl.LightningModule) -> None:
        self.module = module

    def update(self, stage: str, n: int, batch_means: dict[str, torch.Tensor]) -> None:
        metrics = {f"{stage}_{k}": v for k, v in batch_means.items()}
        self.module.log_dict(metrics, on_step=False, on_epoch=True, batch_size=n)

    def pop(self, stage: str, reduce) -> dict[str, torch.Tensor]:
        return {}


def make_model(case: Case, dm: pl.LightningDataModule, variant: str) -> pl.LightningModule:
    if case.kind == "cnn":
        model = ImageClassifier(input_mean=dm.pixel_mean, input_std=dm.pixel_std)
    else:
        model = SeriesForecaster(n_features=dm.n_features, cell="lstm", layers=3, hidden=64)
    if variant == "per-step-log":
        model.epoch_means = LogEveryStep(model)
    return model


def run_bare(
    case: Case,
    dm: pl.LightningDataModule,
    epochs: int,
    seed: int,
    variant: str,
    phases: bool = False,
) -> Timing:
    """A hand-written loop over in-memory tensors doing the model's work: its training_step
    (forward, loss, step metrics; `self.log` is a no-op without a trainer), backward, the
    RNN's clipping, the optimiser and its per-step schedule, and the images' augmentation."""
    pl.seed_everything(seed, verbose=False)
    model = make_model(case, dm, variant).train()
    h = model.hparams
    x, y = train_tensors(dm)
    steps_per_epoch = -(-len(y) // case.batch_size)
    opt = make_optimizer(model.parameters(), h.lr, h.weight_decay)
    schedule = make_scheduler(opt, h.schedule, h.lr, epochs * steps_per_epoch)
    clip = h.get("grad_clip", 0.0)
    augment = dm.augment if isinstance(dm, ImageDataModule) and dm.augment.active else None
    augment_generator = torch.Generator().manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    steps: list[float] = []
    split: dict[str, list[float]] = {p: [] for p in PHASES}
    clock = time.perf_counter
    wall, cpu = clock(), time.process_time()
    for _ in range(epochs):
        order = torch.randperm(len(y), generator=generator)
        stamps = []
        for i in range(0, len(y), case.batch_size):
            stamps.append(clock())
            idx = order[i : i + case.batch_size]
            xb = x[idx] if augment is None else random_affine(x[idx], augment, augment_generator)
            t_data = clock() if phases else 0.0
            loss = model.training_step((xb, y[idx]), i)
            opt.zero_grad()
            t_forward = clock() if phases else 0.0
            loss.backward()
            t_backward = clock() if phases else 0.0
            if clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            opt.step()
            if schedule is not None:
                schedule.step()
            if phases:
                marks = (stamps[-1], t_data, t_forward, t_backward, clock())
                for name, a, b in zip(PHASES, marks, marks[1:], strict=False):
                    split[name].append(b - a)
        model.epoch_means.pop("train", lambda t: t)
        steps += _step_times(stamps)
    return Timing(clock() - wall, time.process_time() - cpu, steps, split if phases else {})


class StepTimer(pl.Callback):
    """Epoch span (first epoch start to last epoch end) and batch-start time stamps."""

    def __init__(self) -> None:
        self.steps: list[float] = []

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch == 0:
            self.wall, self.cpu = time.perf_counter(), time.process_time()
        self.stamps: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        self.stamps.append(time.perf_counter())

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.steps += _step_times(self.stamps)
        self.timing = Timing(
            time.perf_counter() - self.wall, time.process_time() - self.cpu, self.steps
        )


class PhaseTimer(StepTimer):
    """`--phases`: also splits each step at Lightning's hooks, like `run_bare` splits its own.

    data       previous batch end -> batch start: fetching (and augmenting) the next batch
    forward    batch start -> before backward: training_step, zero_grad, loop bookkeeping
    backward   the backward pass
    optimizer  after backward -> batch end: clipping, optimiser step, schedule, bookkeeping
    The extra hooks cost Lightning a few microseconds per step.
    """

    def __init__(self) -> None:
        super().__init__()
        self.split: dict[str, list[float]] = {p: [] for p in PHASES}
        self._end: float | None = None

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_epoch_start(trainer, pl_module)
        self._end = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        super().on_train_batch_start(trainer, pl_module, batch, batch_idx)
        if self._end is not None:
            self.split["data"].append(self.stamps[-1] - self._end)

    def on_before_backward(self, trainer, pl_module, loss) -> None:
        self._before = time.perf_counter()
        self.split["forward"].append(self._before - self.stamps[-1])

    def on_after_backward(self, trainer, pl_module) -> None:
        self._after = time.perf_counter()
        self.split["backward"].append(self._after - self._before)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        self._end = time.perf_counter()
        self.split["optimizer"].append(self._end - self._after)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        self.timing.phases = self.split


def mlflow_history(case: Case, store: Path) -> EpochHistory:
    """The pipeline's logger (`bigdeep.train.EpochHistory`) on a fresh run in `store`."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{store / 'mlflow.db'}")
    name = "bench_train"
    experiment = client.get_experiment_by_name(name)
    experiment_id = (
        experiment.experiment_id
        if experiment
        else client.create_experiment(name, artifact_location=(store / "artifacts").as_uri())
    )
    run = client.create_run(experiment_id, run_name=case.name)
    metric = "acc" if case.kind == "cnn" else "mae"
    return EpochHistory(client, run.info.run_id, ("train_loss", f"train_{metric}"))


def run_lightning(
    case: Case,
    dm: pl.LightningDataModule,
    epochs: int,
    seed: int,
    variant: str,
    store: Path | None = None,
    phases: bool = False,
) -> tuple[Timing, float]:
    """(the training epochs, wall seconds of the whole fit) as the pipeline runs it.

    `store`: a folder for the MLflow store the pipeline's logger writes to; None: no logger.
    """
    pl.seed_everything(seed, verbose=False)
    model = make_model(case, dm, variant)
    timer = PhaseTimer() if phases else StepTimer()
    history = mlflow_history(case, store) if store is not None else None
    trainer = pl.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        devices=1,
        logger=history or False,
        log_every_n_steps=1_000_000,  # as bigdeep.train.make_trainer: epoch values only
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        deterministic=True,
        limit_val_batches=0,  # the bare loop does not validate either
        num_sanity_val_steps=0,
        callbacks=[timer],
    )
    start = time.perf_counter()
    trainer.fit(model, datamodule=dm)
    return timer.timing, time.perf_counter() - start


# --- driver ---------------------------------------------------------------------------------


def bench(case: Case, data_dir: Path, args: argparse.Namespace) -> dict[str, float]:
    dm = make_datamodule(case, data_dir)
    # --stream: Lightning reads the images from disk in blocks; the bare loop stays in memory
    if args.stream or args.device_data != "off":
        memory_mb = 0 if args.stream else 4096
        light_dm = make_datamodule(case, data_dir, memory_mb, args.device_data)
    else:
        light_dm = dm
    n = args.samples * args.epochs
    store = None if args.no_mlflow else data_dir / "mlruns"
    run_bare(case, dm, 1, 0, args.variant)  # warm-up: allocator, kernels, lazy imports
    run_lightning(case, light_dm, 1, 0, args.variant, store)
    runs: dict[str, list[float]] = {
        k: [] for k in ("bare", "light", "bare_cpu", "light_cpu", "fit")
    }
    bare_steps: list[float] = []
    light_steps: list[float] = []
    phases: dict[str, dict[str, list[float]]] = {
        side: {p: [] for p in PHASES} for side in ("bare", "light")
    }
    for r in range(args.repeats):  # alternating, so drifting machine load hits both alike
        bare = run_bare(case, dm, args.epochs, r, args.variant, args.phases)
        light, fit = run_lightning(case, light_dm, args.epochs, r, args.variant, store, args.phases)
        for side, timing in (("bare", bare), ("light", light)):
            for p, values in timing.phases.items():
                phases[side][p] += values
        runs["bare"].append(n / bare.wall)
        runs["light"].append(n / light.wall)
        runs["bare_cpu"].append(n / bare.cpu)
        runs["light_cpu"].append(n / light.cpu)
        runs["fit"].append(n / fit)
        bare_steps += bare.steps
        light_steps += light.steps
    m = {k: statistics.median(v) for k, v in runs.items()}
    m["bare_step"] = case.batch_size / statistics.median(bare_steps)  # samples/s
    m["light_step"] = case.batch_size / statistics.median(light_steps)
    m["spread"] = (max(runs["bare"]) - min(runs["bare"])) / m["bare"]
    if args.phases:
        for side, split in phases.items():
            for p, values in split.items():
                m[f"{side}_{p}_ms"] = 1000 * statistics.median(values)
    return m


def print_phases(case: Case, m: dict[str, float]) -> None:
    """Median milliseconds per step in each phase, both loops, and Lightning's extra."""
    cells = [
        f"{p} {m[f'bare_{p}_ms']:.2f}/{m[f'light_{p}_ms']:.2f} "
        f"(+{m[f'light_{p}_ms'] - m[f'bare_{p}_ms']:.2f})"
        for p in PHASES
    ]
    print(f"{'':<9} ms per step, bare/lightning (+extra): " + ", ".join(cells), flush=True)


def keep_heap() -> bool:
    """Let glibc keep and reuse freed memory instead of unmapping it and mapping fresh pages.

    Measured here (getrusage): with glibc's defaults, in a fresh process, a bare loop of the
    3x64 LSTM at batch 64 spends over 40% of its wall time in page faults (1.0-1.3 s per 32
    steps, 0.51 s with this), and the CNN at batch 256 about 30%. How much each loop pays
    depends on the allocation history of the process (glibc adapts its thresholds), not on
    Lightning, and would swamp Lightning's per-step cost; so both loops run with it
    (`--glibc-default` to leave glibc alone).
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False  # not glibc
    m_trim_threshold, m_mmap_threshold = -1, -3  # from malloc.h
    ok = libc.mallopt(m_mmap_threshold, 256 * 2**20)  # below 256 MiB: from the heap, reused
    ok &= libc.mallopt(m_trim_threshold, 2**30)  # keep up to 1 GiB of free heap top
    return bool(ok)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--samples", type=int, default=2048, help="train samples per epoch")
    parser.add_argument("--case", choices=[c.name for c in CASES], action="append")
    parser.add_argument(
        "--glibc-default",
        action="store_true",
        help="leave glibc's malloc as it is (default: keep_heap(), see there)",
    )
    parser.add_argument(
        "--variant",
        choices=["epoch-log", "per-step-log"],
        default="epoch-log",
        help="epoch-log: the models as shipped; per-step-log: the first design, for comparison",
    )
    parser.add_argument(
        "--no-mlflow",
        action="store_true",
        help="Lightning without the pipeline's MLflow logger (default: with it)",
    )
    parser.add_argument(
        "--stream",
        action="store_true",
        help="Lightning streams the train images from disk (as a split over "
        "train.trainer.memory_mb does); the bare loop keeps them in memory",
    )
    parser.add_argument(
        "--device-data",
        choices=["off", "on"],
        default="off",
        help="Lightning's data module with train.trainer.device_data (off: the DataLoader "
        "path, as before issue 12; on: batches cut where the split lives, on the CPU here)",
    )
    parser.add_argument(
        "--phases",
        action="store_true",
        help="also print where a step's time goes (data, forward, backward, optimizer)",
    )
    args = parser.parse_args(argv)

    heap = "glibc malloc default" if args.glibc_default else "heap kept"
    if not args.glibc_default and not keep_heap():
        heap = "heap NOT kept (mallopt unavailable)"
    torch.set_num_threads(1)  # the pipeline's default (Trainer.threads); 2-core boxes thrash
    torch.use_deterministic_algorithms(True)  # Lightning sets it (deterministic=True): both
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*reference is not registered on the model yet.*")
    for name in ("pytorch_lightning", "lightning_fabric"):  # "GPU available: ..." per fit
        logging.getLogger(name).setLevel(logging.WARNING)
    cases = [c for c in CASES if not args.case or c.name in args.case]
    if args.samples < 2 * max(c.batch_size for c in cases):
        parser.error("--samples must give at least two batches per epoch (step times)")

    print(
        f"torch {torch.__version__}, lightning {pl.__version__}, 1 thread, variant {args.variant}, "
        f"{heap}, {'no logger' if args.no_mlflow else 'MLflow logger (SQLite)'}, "
        f"{'images streamed from disk, ' if args.stream else ''}"
        f"device_data {args.device_data}, "
        f"{args.samples} samples x {args.epochs} epochs, {args.repeats} runs each"
    )
    print(
        f"{'case':<9} {'bare/s':>8} {'light/s':>8} {'step':>6} {'epoch':>6} {'cpu':>6} {'fit':>6}"
        f" {'spread':>7}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp)
        (data_dir / "images").mkdir()
        (data_dir / "series").mkdir()
        write_image_data(data_dir / "images", args.samples)
        write_series_data(data_dir / "series", args.samples)
        for case in cases:
            m = bench(case, data_dir, args)
            print(
                f"{case.name:<9} {m['bare_step']:>8,.0f} {m['light_step']:>8,.0f} "
                f"{m['light_step'] / m['bare_step']:>6.3f} {m['light'] / m['bare']:>6.3f} "
                f"{m['light_cpu'] / m['bare_cpu']:>6.3f} {m['fit'] / m['bare']:>6.3f} "
                f"{m['spread']:>7.1%}",
                flush=True,
            )
            if args.phases:
                print_phases(case, m)
    print(
        "bare/s, light/s: samples/s from the median step time; step, epoch, cpu, fit: "
        "lightning/bare ratios (see the module docstring);\nspread: (max-min)/median of the "
        "bare epoch throughputs, a gauge of machine noise. Targets: step >= 0.95 at batch 32, "
        ">= 0.98 at 256."
    )


if __name__ == "__main__":
    main()
