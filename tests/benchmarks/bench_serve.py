"""Serving latency: one digit and a batch of 256 digits against a running `bigdeep serve`,
beside the same model called in-process (`mlflow.pyfunc`, no HTTP), interleaved.

    .venv/bin/python -m tests.benchmarks.bench_serve http://127.0.0.1:5001 bigdeep-cnn@champion
    .venv/bin/python -m tests.benchmarks.bench_serve URL REF --requests 50 --params params.yaml

Prints median and p90 over `--requests` requests for each size, and the ratio served /
in-process (what HTTP, JSON and MLflow's schema check add). The digits are the processed
test split (data/processed/images), as the model takes them: float32 (N, 1, 28, 28) in [0, 1].
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import urllib.request
from pathlib import Path

import numpy as np


def post(url: str, body: bytes) -> None:
    req = urllib.request.Request(
        url.rstrip("/") + "/invocations", data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=300) as resp:
        assert resp.status == 200
        resp.read()


def figures(seconds: list[float]) -> tuple[float, float]:
    ms = sorted(1000 * s for s in seconds)
    return statistics.median(ms), ms[int(round(0.9 * (len(ms) - 1)))]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("url", help="the server `bigdeep serve` printed, e.g. http://127.0.0.1:5001")
    p.add_argument("ref", help="the model it serves, for the in-process baseline")
    p.add_argument("--requests", type=int, default=50)
    p.add_argument("--images", default="data/processed/images", help="processed images folder")
    p.add_argument("--params", default="params.yaml")
    args = p.parse_args()

    import mlflow
    from mlflow.tracking import MlflowClient

    from bigdeep.config import load_settings
    from bigdeep.registry import resolve
    from bigdeep.tracking import absolute_store, tracking_uri

    uri = absolute_store(tracking_uri(load_settings(args.params).mlflow))
    mv, _ = resolve(MlflowClient(uri), args.ref)
    mlflow.set_tracking_uri(uri)
    local = mlflow.pyfunc.load_model(f"models:/{mv.name}/{mv.version}")
    x = np.load(Path(args.images) / "test_x.npy", mmap_mode="r")
    digits = (np.asarray(x[:256])[:, None] / 255.0).astype(np.float32)  # (256, 1, 28, 28)
    print(f"{args.ref} = {mv.name} v{mv.version} at {args.url}; {args.requests} requests each")
    print(
        f"{'batch':>5}  {'served median':>13}  {'p90':>8}  {'in-process median':>17}  {'p90':>8}  ratio"
    )
    for n in (1, 256):
        batch = digits[:n]
        body = json.dumps({"inputs": batch.tolist()}).encode()
        post(args.url, body)  # warm: the first request loads lazily
        local.predict(batch)
        served, inproc = [], []
        for _ in range(args.requests):  # interleaved: both see the same machine load
            t = time.perf_counter()
            post(args.url, body)
            served.append(time.perf_counter() - t)
            t = time.perf_counter()
            local.predict(batch)
            inproc.append(time.perf_counter() - t)
        (sm, s90), (im, i90) = figures(served), figures(inproc)
        print(
            f"{n:>5}  {sm:>10.1f} ms  {s90:>5.1f} ms  {im:>14.1f} ms  {i90:>5.1f} ms  {sm / im:5.1f}x"
        )


if __name__ == "__main__":
    main()
