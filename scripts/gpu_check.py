"""GPU check: train the CNN and the RNN for a few epochs on CUDA with synthetic data, or
(`--pipeline`) the pipeline's own training path on real data beside a bare loop.

    scripts/gpu_check.sh                     # on a machine with CUDA (exits 0 if there is none)
    scripts/gpu_check.sh --cpu               # tiny smoke version on the CPU
    PYTHONPATH=src python scripts/gpu_check.py [--epochs 5 ...]   # the same without the wrapper
    scripts/gpu_check.sh --pipeline --mnist DIR [--series FILE.csv] [--set KEY=VALUE ...]
    scripts/gpu_check.sh --export-series FILE.csv   # where the project is installed: the
                                             # builtin series as a CSV to carry to the GPU box

`--pipeline` (see `pipeline_main`) needs the same packages: it refuses to import MLflow,
Prefect, DVC, Great Expectations and Opacus, so a pass here shows the GPU box needs none.

Needs only torch and pytorch_lightning: bigdeep's models come from the installed package or,
where bigdeep is not installed, from `src/` (the wrapper puts it on PYTHONPATH; no
mlflow/prefect/dvc). Data are synthetic, MNIST-shaped images (1x28x28, 10 classes) and
series windows (48 steps x 2 features), built so that the loss can fall. Prints samples/s,
peak GPU memory and the final training loss per model; exits 1 if a loss is not finite.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import time
import warnings

import pytorch_lightning as pl
import torch
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, TensorDataset

from bigdeep.models.cnn import ImageClassifier
from bigdeep.models.rnn import SeriesForecaster

WINDOW, N_FEATURES = 48, 2


def synthetic_images(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, 1, 28, 28) in [0, 1]: one of 10 fixed random templates plus noise; label = template."""
    templates = torch.rand(10, 1, 28, 28, generator=generator)
    y = torch.randint(0, 10, (n,), generator=generator)
    x = (templates[y] + 0.5 * torch.rand(n, 1, 28, 28, generator=generator)).clamp_(0, 1)
    return x, y


def synthetic_windows(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, 48, 2) windows of a noisy daily cycle and a covariate; label: next value (n, 1)."""
    steps = torch.arange(n + WINDOW + 1, dtype=torch.float32)
    covariate = torch.cos(2 * math.pi * steps / 24)
    noise = 0.1 * torch.randn(len(steps), generator=generator)
    target = torch.sin(2 * math.pi * steps / 24) + 0.5 * covariate + noise
    values = torch.stack([target, covariate], dim=1)  # (rows, 2)
    x = values.unfold(0, WINDOW, 1)[:n].transpose(1, 2).contiguous()  # (n, 48, 2)
    y = target[WINDOW : WINDOW + n, None]  # (n, 1): the row after each window
    return x, y


def loader(x: torch.Tensor, y: torch.Tensor, batch_size: int, seed: int, pin: bool) -> DataLoader:
    """Whole batches cut from in-memory tensors (one index op per batch, as the pipeline does)."""
    sampler = RandomSampler(range(len(y)), generator=torch.Generator().manual_seed(seed))
    return DataLoader(
        TensorDataset(x, y),
        sampler=BatchSampler(sampler, batch_size, drop_last=False),
        batch_size=None,  # the sampler yields index lists; TensorDataset[list] is a batch
        pin_memory=pin,
    )


class EpochTimer(pl.Callback):
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.current_epoch == 0:
            self.start = time.perf_counter()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.seconds = time.perf_counter() - self.start


def check(name: str, model: pl.LightningModule, data, args, device: str, precision: str) -> bool:
    x, y = data
    n_val = len(y) // 10  # the last tenth validates, so the val loop runs too
    pin = device == "cuda"
    train = loader(x[n_val:], y[n_val:], args.batch_size, args.seed, pin)
    val = loader(x[:n_val], y[:n_val], args.batch_size, args.seed, pin)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    timer = EpochTimer()
    trainer = pl.Trainer(
        accelerator="gpu" if device == "cuda" else "cpu",
        devices=1,
        precision=precision,
        max_epochs=args.epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=[timer],
    )
    trainer.fit(model, train_dataloaders=train, val_dataloaders=val)
    loss = float(trainer.callback_metrics["train_loss"])
    val_loss = float(trainer.callback_metrics["val_loss"])
    # Timed from the first epoch's start to the last one's end: includes the val passes.
    rate = (len(y) - n_val) * args.epochs / timer.seconds
    peak = f"{torch.cuda.max_memory_allocated() / 2**20:,.1f} MiB" if device == "cuda" else "n/a"
    print(
        f"{name:<5} {rate:>10,.0f} train samples/s  peak GPU memory {peak}  "
        f"final train_loss {loss:.4f}  val_loss {val_loss:.4f}",
        flush=True,
    )
    return math.isfinite(loss) and math.isfinite(val_loss)


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    if "--pipeline" in argv or "--export-series" in argv:
        from gpu_pipeline import pipeline_main

        return pipeline_main(argv)
    parser = argparse.ArgumentParser(description="Train the CNN and RNN briefly on CUDA.")
    parser.add_argument("--cpu", action="store_true", help="tiny smoke run on the CPU instead")
    parser.add_argument("--epochs", type=int, default=None, help="default 3 (CUDA), 1 (--cpu)")
    parser.add_argument("--samples", type=int, default=None, help="default 60000 / 512")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args(argv)

    print(
        f"torch {torch.__version__} (CUDA build: {torch.version.cuda}), lightning {pl.__version__}"
    )
    if args.cpu:
        device, precision = "cpu", "32-true"
        torch.set_num_threads(1)  # small model: more threads only contend on a busy box
    elif torch.cuda.is_available():
        device = "cuda"
        precision = "bf16-mixed" if torch.cuda.is_bf16_supported() else "32-true"
        print(f"device: {torch.cuda.get_device_name(0)}, precision {precision}")
    else:
        print("CUDA is not available here: nothing to check (use --cpu for a CPU smoke run).")
        return 0
    args.epochs = args.epochs or (1 if args.cpu else 3)
    args.samples = args.samples or (512 if args.cpu else 60_000)

    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    for name in ("pytorch_lightning", "lightning_fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    generator = torch.Generator().manual_seed(args.seed)
    pl.seed_everything(args.seed, verbose=False)
    cnn_ok = check(
        "cnn", ImageClassifier(), synthetic_images(args.samples, generator), args, device, precision
    )
    rnn = SeriesForecaster(n_features=N_FEATURES, cell="lstm", layers=3, hidden=64)
    rnn_ok = check("lstm", rnn, synthetic_windows(args.samples, generator), args, device, precision)
    if not (cnn_ok and rnn_ok):
        print("FAILED: a final loss is not finite")
        return 1
    print("OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
