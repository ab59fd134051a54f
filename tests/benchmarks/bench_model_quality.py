"""Model quality on the builtin data: the seed models as bare PyTorch loops vs bigdeep's.

    python tests/benchmarks/bench_model_quality.py                  # builds the data, seed 42
    python tests/benchmarks/bench_model_quality.py --seeds 42 1 2   # several seeds, and means
    python tests/benchmarks/bench_model_quality.py --data data/processed --only rnn
    python tests/benchmarks/bench_model_quality.py --only cnn \
        --set data.images.source=idx:<dir of MNIST IDX files> --set data.images.per_class=null

Data: the builtin sources (5,000 MNIST digits; the newest 365 days of Victoria's electricity
demand), ingested and prepared with params.yaml's settings into a temporary directory (the
quality gate is skipped: nothing is quarantined), or `--data` with `images/` and `series/`
already prepared, or other sources given with `--set` (params.yaml keys, as in `bigdeep run
--set`). Both contenders see the same splits and the same seed. With MNIST's IDX files
(`idx:`), the 10,000 t10k images are the test split (`prepare.images.source_test`), so test
accuracy is comparable with published figures.

  seed     the issue's baselines, hand-written: Adam at 1e-3, constant rate, no augmentation,
           no input standardisation, no calendar inputs, no clipping; 10 epochs, batch 64,
           shuffled with a generator seeded like the data modules'.
  bigdeep  the LightningModules and data modules with params.yaml's `train.cnn` / `train.rnn`,
           fitted as the pipeline fits them (deterministic, one thread, validation every epoch,
           early stopping on val_loss), evaluated with `trainer.test` and `evaluate`.

Targets (issue 4): CNN test accuracy >= 98.0% on the builtin digits, >= 99.3% on full MNIST; LSTM test MAE <= 0.40 x the naive (last
hour) forecast's; each model trains in under ~60 s on this 2-core machine. Wall times are
the training loops only (fit, not data loading or evaluation) and are noisy when the machine
is shared.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import EarlyStopping
from torch import nn
from torch.nn import functional as F

from bigdeep import evaluate
from bigdeep.config import Settings, apply_overrides, load_settings
from bigdeep.data.datamodules import ImageDataModule, SeriesDataModule
from bigdeep.ingest import ingest_images, ingest_series
from bigdeep.models.cnn import build_cnn
from bigdeep.models.rnn import SeriesNet
from bigdeep.prepare import prepare_images, prepare_series
from bigdeep.training.jobs import build_image_job, build_series_job

SEED_LR, SEED_EPOCHS, SEED_BATCH = 1e-3, 10, 64


# --- data ------------------------------------------------------------------------------------


def build_builtin_data(settings: Settings, root: Path) -> Path:
    """Ingest and prepare both builtin datasets under `root`; returns `root / processed`."""
    ingest_images(settings, root / "raw" / "images")
    ingest_series(settings, root / "raw" / "series")
    for dataset in ("images", "series"):
        (root / "quarantine" / dataset).mkdir(parents=True)  # empty: nothing set aside
    prepare_images(
        root / "raw" / "images",
        root / "quarantine" / "images",
        root / "processed" / "images",
        settings.prepare.images,
        settings.quality.images.classes,
        settings.seed,
    )
    prepare_series(
        root / "raw" / "series",
        root / "quarantine" / "series",
        root / "processed" / "series",
        settings.data.series,
        settings.prepare.series,
    )
    return root / "processed"


# --- the seed models, bare -------------------------------------------------------------------


def bare_fit(
    net: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn, seed: int
) -> tuple[nn.Module, float]:
    """The seed loop: Adam 1e-3, 10 epochs, batch 64, seeded shuffling. (net, wall seconds)."""
    optimizer = torch.optim.Adam(net.parameters(), lr=SEED_LR)
    generator = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    net.train()
    for _ in range(SEED_EPOCHS):
        order = torch.randperm(len(y), generator=generator)
        for i in range(0, len(y), SEED_BATCH):
            idx = order[i : i + SEED_BATCH]
            loss = loss_fn(net(x[idx]), y[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return net.eval(), time.perf_counter() - start


def seed_cnn(data: Path, seed: int) -> dict[str, float]:
    dm = ImageDataModule(data / "images", augment_rotate=0, augment_shift=0, augment_scale=0)
    dm.setup("fit")
    pl.seed_everything(seed, verbose=False)
    net = build_cnn(dm.num_classes, 1, [32, 64, 64], 64, dm.image_size)  # no standardisation
    net, wall = bare_fit(net, *dm.tensors["train"], F.cross_entropy, seed)
    x, y = dm.tensors["test"]
    with torch.no_grad():
        acc = (net(x).argmax(dim=1) == y).float().mean().item()
    return {"test_acc": acc, "wall_s": wall}


def _windows(dm: SeriesDataModule, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    dataset = dm._datasets[split]  # the data module's own windows, as one batch
    return dataset.batch(torch.arange(len(dataset)))  # (N, T, F), (N, horizon)


def seed_lstm(data: Path, settings: Settings, seed: int) -> dict[str, float]:
    cfg = settings.train.rnn
    dm = SeriesDataModule(data / "series", window=cfg.window, horizon=cfg.horizon, calendar=())
    dm.setup("fit")
    pl.seed_everything(seed, verbose=False)
    net = SeriesNet(dm.n_features, "lstm", 3, 64, 0.0, cfg.horizon)
    net, wall = bare_fit(net, *_windows(dm, "train"), F.mse_loss, seed)
    return {**_forecast_metrics(net, dm, cfg.seasonal_period), "wall_s": wall}


def _forecast_metrics(model: nn.Module, dm: SeriesDataModule, period: int) -> dict[str, float]:
    if not isinstance(model, pl.LightningModule):
        model.device = torch.device("cpu")  # what evaluate.predict_series reads
    arrays = evaluate.predict_series(model, dm.test_dataloader(), period)
    m = evaluate.forecast_metrics(arrays, dm.inverse_target)
    return {k: m[k] for k in ("test_mae", "test_naive_mae", "test_seasonal_naive_mae")} | {
        "vs_naive": m["test_mae_vs_naive"],
        "vs_seasonal": m["test_mae_vs_seasonal_naive"],
    }


# --- bigdeep, as the pipeline runs it ---------------------------------------------------------


def lightning_fit(model: pl.LightningModule, dm: pl.LightningDataModule, epochs: int, patience):
    """Fit like `bigdeep.training.plumbing.make_trainer` (no MLflow logger, no checkpoints): (trainer, s)."""
    trainer = pl.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        devices=1,
        deterministic=True,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[EarlyStopping(monitor="val_loss", patience=patience)],
    )
    start = time.perf_counter()
    trainer.fit(model, datamodule=dm)
    return trainer, time.perf_counter() - start


def bigdeep_cnn(data: Path, settings: Settings, seed: int) -> dict[str, float]:
    cfg = settings.train.cnn
    pl.seed_everything(seed, verbose=False)
    job = build_image_job(settings, data / "images", seed=seed)
    dm, model = job.datamodule, job.model
    trainer, wall = lightning_fit(model, dm, cfg.epochs, cfg.patience)
    (tested,) = trainer.test(model, datamodule=dm, verbose=False)
    return {"test_acc": tested["test_acc"], "wall_s": wall, "epochs": trainer.current_epoch}


def bigdeep_lstm(data: Path, settings: Settings, seed: int) -> dict[str, float]:
    cfg = settings.train.rnn
    pl.seed_everything(seed, verbose=False)
    job = build_series_job(settings, data / "series", seed=seed)
    dm, model = job.datamodule, job.model
    trainer, wall = lightning_fit(model, dm, cfg.epochs, cfg.patience)
    metrics = _forecast_metrics(model, dm, cfg.seasonal_period)
    return {**metrics, "wall_s": wall, "epochs": trainer.current_epoch}


# --- driver ------------------------------------------------------------------------------------


def _row(name: str, seed: int | str, m: dict[str, float]) -> str:
    epochs = f"{m.get('epochs', SEED_EPOCHS):>7.0f}"
    if "test_acc" in m:
        return f"{name:<8} {seed!s:>5} {100 * m['test_acc']:>8.2f}% {m['wall_s']:>7.1f} {epochs}"
    return (
        f"{name:<8} {seed!s:>5} {m['test_mae']:>8.1f} {m['test_naive_mae']:>8.1f} "
        f"{m['test_seasonal_naive_mae']:>8.1f} {m['vs_naive']:>8.3f} {m['vs_seasonal']:>8.3f} "
        f"{m['wall_s']:>7.1f} {epochs}"
    )


def _mean(runs: list[dict[str, float]]) -> dict[str, float]:
    return {k: statistics.mean(r[k] for r in runs) for k in runs[0]}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--data", type=Path, help="prepared data with images/ and series/")
    parser.add_argument("--seeds", type=int, nargs="+", help="default: params.yaml's seed")
    parser.add_argument("--only", choices=["cnn", "rnn"])
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a params.yaml key for this run (the file itself is left alone)",
    )
    args = parser.parse_args(argv)

    settings = _settings(args.params, args.set)
    seeds = args.seeds or [settings.seed]
    torch.set_num_threads(settings.train.trainer.threads or 1)  # the pipeline's setting
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*LeafSpec.*is deprecated.*")  # Lightning vs torch 2.13
    for name in ("pytorch_lightning", "lightning_fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)

    with tempfile.TemporaryDirectory() as tmp:
        data = args.data or build_builtin_data(settings, Path(tmp))
        print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), data {data}")
        if args.only != "cnn":
            _compare_lstm(data, settings, seeds)
        if args.only != "rnn":
            _compare_cnn(data, settings, seeds)


def _settings(params: Path, overrides: list[str]) -> Settings:
    if not overrides:
        return load_settings(params)
    pairs = dict(o.split("=", 1) for o in overrides)
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "params.yaml"
        shutil.copyfile(params, copy)
        apply_overrides(copy, pairs)  # validated: a wrong key fails, naming it
        return load_settings(copy)


def _compare_cnn(data: Path, settings: Settings, seeds: list[int]) -> None:
    print(f"\nCNN, test accuracy on {len(np.load(data / 'images' / 'test_y.npy'))} images")
    print(f"{'model':<8} {'seed':>5} {'test acc':>9} {'wall s':>7} {'epochs':>7}")
    runs: dict[str, list[dict[str, float]]] = {"seed": [], "bigdeep": []}
    for seed in seeds:
        for name, fit in (("seed", seed_cnn), ("bigdeep", bigdeep_cnn)):
            m = fit(data, seed) if name == "seed" else fit(data, settings, seed)
            runs[name].append(m)
            print(_row(name, seed, m), flush=True)
    if len(seeds) > 1:
        for name, r in runs.items():
            print(_row(name, "mean", _mean(r)))
    print("target: bigdeep >= 98.00% (builtin digits) / >= 99.30% (full MNIST, t10k test set)")


def _compare_lstm(data: Path, settings: Settings, seeds: list[int]) -> None:
    print("\nLSTM, test MAE in the target's units (MW) and ratios to the baselines")
    print(
        f"{'model':<8} {'seed':>5} {'MAE':>8} {'naive':>8} {'seas.':>8} {'/naive':>8} "
        f"{'/seas.':>8} {'wall s':>7} {'epochs':>7}"
    )
    runs: dict[str, list[dict[str, float]]] = {"seed": [], "bigdeep": []}
    for seed in seeds:
        for name, fit in (("seed", seed_lstm), ("bigdeep", bigdeep_lstm)):
            m = fit(data, settings, seed)
            runs[name].append(m)
            print(_row(name, seed, m), flush=True)
    if len(seeds) > 1:
        for name, r in runs.items():
            print(_row(name, "mean", _mean(r)))
    print("target: bigdeep /naive <= 0.40, wall < ~60 s")


if __name__ == "__main__":
    main()
