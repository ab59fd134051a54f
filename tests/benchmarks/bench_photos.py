"""A folder of real photos through the stages, timed: ingest, validate, prepare, train.

    python -m tests.benchmarks.bench_photos              # 3 classes x 40 photos, 64x64 RGB
    python -m tests.benchmarks.bench_photos --classes 3 --per-class 40 --size 64 --epochs 2

Each stage is the real CLI (`bigdeep <stage>`, a fresh process, as DVC runs it) in a temp
project with its own SQLite MLflow store; the photos are JPEG and PNG, RGB, RGBA and grey,
60 to 400 px a side (tests/unit/images.py `photo_folder`), converted by
prepare.images.size / .mode. Prints each stage's wall and CPU seconds (most of a small
run is each process's start-up: imports), their sums and the test accuracy. One torch
thread (params.yaml's default).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from tests.unit.images import photo_folder  # run from the checkout's root: python -m

ROOT = Path(__file__).resolve().parents[2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--classes", type=int, default=3)
    ap.add_argument("--per-class", type=int, default=40)
    ap.add_argument("--size", type=int, default=64, help="side of the square target size")
    ap.add_argument("--epochs", type=int, default=2)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        classes = photo_folder(root / "src", args.classes, args.per_class, seed=0)
        params = {
            "data": {"images": {"source": f"folder:{root / 'src'}", "per_class": None}},
            "quality": {"images": {"classes": classes}},
            "prepare": {"images": {"size": [args.size, args.size], "mode": "RGB"}},
            "train": {"cnn": {"epochs": args.epochs}},
        }
        (root / "params.yaml").write_text(yaml.safe_dump(params))
        env = {
            **os.environ,
            "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}",
            "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
        }
        raw, q, out = "data/raw/images", "data/quarantine/images", "data/processed/images"
        stages = {
            "ingest": ["ingest", "images", "--out", raw],
            "validate": [
                "validate",
                "images",
                "--raw",
                raw,
                "--report",
                "reports/quality/images.json",
                "--quarantine",
                q,
            ],  # fmt: skip
            "prepare": ["prepare", "images", "--raw", raw, "--quarantine", q, "--out", out],
            "train": [
                "train",
                "cnn",
                "--data",
                out,
                "--out",
                "models/cnn",
                "--metrics",
                "metrics/cnn.json",
                "--plots",
                "plots",
                "--checkpoints",
                "ckpt",
            ],  # fmt: skip
        }
        seconds, cpu = {}, {}
        for name, argv in stages.items():
            start, used = time.perf_counter(), _children_cpu()
            subprocess.run(
                [sys.executable, "-m", "bigdeep.cli", *argv], cwd=root, env=env, check=True
            )
            seconds[name] = time.perf_counter() - start
            cpu[name] = _children_cpu() - used
        accuracy = json.loads((root / "metrics/cnn.json").read_text())["test_acc"]

    n = args.classes * args.per_class
    print(f"\n{n} photos ({args.classes} classes x {args.per_class}) -> {args.size}x{args.size} RGB, "
          f"{args.epochs} epochs")  # fmt: skip
    print(f"  {'stage':<9} {'wall':>7} {'cpu':>7}")
    for name, s in seconds.items():
        print(f"  {name:<9} {s:6.1f}s {cpu[name]:6.1f}s")
    total, total_cpu = sum(seconds.values()), sum(cpu.values())
    print(f"  {'total':<9} {total:6.1f}s {total_cpu:6.1f}s   test_acc {accuracy:.3f}")


def _children_cpu() -> float:
    """CPU seconds (user + system) of the finished child processes: less sensitive than wall
    time to other work on a shared machine."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


if __name__ == "__main__":
    main()
