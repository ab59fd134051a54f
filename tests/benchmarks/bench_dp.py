"""CNN test accuracy and time per epoch on the builtin digits at epsilon 1, 3, 8 and without
differential privacy, all in one process, side by side.

    python tests/benchmarks/bench_dp.py                       # params.yaml's train.cnn, seed 42
    python tests/benchmarks/bench_dp.py --set train.cnn.lr=0.01 --set train.cnn.epochs=5

Data: the builtin 5,000 MNIST digits (data.images per_class 500), ingested and prepared with
params.yaml's settings into a temporary directory. Each contender is fitted as the pipeline
fits it (`build_image_job` -> `fit_and_test` on `make_trainer`; one torch thread, deterministic,
early stopping on val_loss), no MLflow. `--set` applies to every contender (params.yaml keys).
Time per epoch: fit wall time / epochs trained (noisy on a shared machine); ratios against the
run without privacy.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--set", action="append", default=[], help="KEY=VALUE, as bigdeep run --set")
    ap.add_argument("--epsilons", type=float, nargs="+", default=[1.0, 3.0, 8.0])
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)

    import yaml

    sys.path.insert(0, str(ROOT))  # tests.integration.helpers, run as a script
    from bigdeep.config import Settings, load_settings
    from bigdeep.training.jobs import build_image_job
    from tests.integration.helpers import fit, prepared_images

    raw = load_settings(args.params).model_dump()
    for pair in args.set:  # KEY=VALUE, the value read as YAML
        key, _, value = pair.partition("=")
        *parents, last = key.split(".")
        node = raw
        for part in parents:
            node = node[part]
        node[last] = yaml.safe_load(value)
    base = Settings.model_validate(raw)
    tmp = Path(tempfile.mkdtemp(prefix="bench_dp-"))
    data = prepared_images(base, tmp)
    rows = []
    for eps in [None, *args.epsilons]:
        privacy = {"enabled": eps is not None, "epsilon": eps or 3.0}
        raw = base.model_dump()
        raw["train"]["privacy"].update(privacy)
        start = time.perf_counter()
        _, fitted = fit(Settings.model_validate(raw), build_image_job, data, tmp / "ckpt")
        seconds = time.perf_counter() - start  # build, fit, test and the test-split prediction
        m = fitted.metrics
        epochs = max(m["trained_epochs"], 1.0)
        rows.append((eps, m.get("dp_epsilon"), m["test_acc"], seconds / epochs, epochs))
        for f in (tmp / "ckpt").glob("*.ckpt"):
            f.unlink()
        print(f"done: target {eps}: acc {m['test_acc']:.4f}", flush=True)

    base_acc, base_time = rows[0][2], rows[0][3]
    print("\n| target ε | ε spent | test accuracy | vs no DP | s / epoch | x no DP | epochs |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for eps, spent, acc, per_epoch, epochs in rows:
        print(
            f"| {'off' if eps is None else eps} | {'-' if spent is None else f'{spent:.3g}'} "
            f"| {acc:.4f} | {acc - base_acc:+.4f} | {per_epoch:.1f} | "
            f"{per_epoch / base_time:.2f} | {epochs:.0f} |"
        )


if __name__ == "__main__":
    main()
