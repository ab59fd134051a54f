"""What explanations cost: the train stage with `train.explain` on vs off, side by side.

    python tests/benchmarks/bench_explain.py                       # both models, 1 pair each
    python tests/benchmarks/bench_explain.py --model cnn --repeats 2
    python tests/benchmarks/bench_explain.py --keep /tmp/explain    # keep the files to look at

The builtin data (5,000 MNIST digits, a year of Victoria's demand) is ingested and prepared
into a temp dir once; then `train_cnn` / `train_rnn` run as the stage runs them (params.yaml's
settings, an MLflow SQLite store in the temp dir), alternating off, on, off, on, ... in this
process. Printed per model: median stage wall time off and on, their ratio, and
`explain_seconds` (the attributions alone, as logged to the run) as a share of the stage.
Target (issue 14): explanations cost under 10 % of a train stage at the default sample sizes.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from bigdeep.config import Settings, load_settings
from bigdeep.env import apply_quiet_env
from bigdeep.ingest import ingest_images, ingest_series
from bigdeep.prepare import prepare_images, prepare_series
from bigdeep.train import Paths, train_cnn, train_rnn


def prepared(settings: Settings, root: Path, model: str) -> Path:
    """The builtin dataset of `model`, ingested and prepared under `root`."""
    raw, q, out = root / f"raw-{model}", root / f"q-{model}", root / f"data-{model}"
    q.mkdir(parents=True)
    if model == "cnn":
        ingest_images(settings, raw)
        prepare_images(
            raw, q, out, settings.prepare.images, settings.quality.images.classes, settings.seed
        )
    else:
        ingest_series(settings, raw)
        prepare_series(raw, q, out, settings.data.series, settings.prepare.series)
    return out


def with_explain(settings: Settings, enabled: bool) -> Settings:
    params = settings.model_dump()
    params["train"]["explain"]["enabled"] = enabled
    return Settings.model_validate(params)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["cnn", "rnn"], action="append")
    parser.add_argument("--repeats", type=int, default=1, help="pairs (off, on) per model")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--keep", type=Path, help="copy the last explain folder of each here")
    args = parser.parse_args()
    apply_quiet_env()
    base = load_settings(args.params)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{root / 'mlflow.db'}"
        for model in args.model or ["cnn", "rnn"]:
            data = prepared(base, root, model)
            train = {"cnn": train_cnn, "rnn": train_rnn}[model]
            times: dict[bool, list[float]] = {False: [], True: []}
            explain_seconds = []
            for i in range(args.repeats):
                for enabled in (False, True):
                    run = root / f"{model}-{i}-{'on' if enabled else 'off'}"
                    paths = Paths(
                        data=data,
                        out=run / "model",
                        metrics=run / "metrics.json",
                        plots=run / "plots",
                        checkpoints=run / "ckpt",
                        lock=run / "dvc.lock",
                    )
                    start = time.perf_counter()
                    result = train(with_explain(base, enabled), paths, resume="never")
                    times[enabled].append(time.perf_counter() - start)
                    if enabled:
                        explain_seconds.append(_explain_seconds(result.run_id))
                        if args.keep:
                            _keep(paths.plots / "explain", args.keep / model)
                    print(
                        f"{model} explain {'on ' if enabled else 'off'}: {times[enabled][-1]:.1f} s"
                    )
            off, on = statistics.median(times[False]), statistics.median(times[True])
            alone = statistics.median(explain_seconds)
            rows.append((model, off, on, on / off, alone, alone / on))
    print()
    print("| model | stage, explain off | stage, explain on | on / off | explain_seconds | share |")
    print("|---|---:|---:|---:|---:|---:|")
    for model, off, on, ratio, alone, share in rows:
        print(f"| {model} | {off:.1f} s | {on:.1f} s | {ratio:.3f} | {alone:.1f} s | {share:.1%} |")


def _explain_seconds(run_id: str) -> float:
    from mlflow.tracking import MlflowClient

    return MlflowClient().get_run(run_id).data.metrics["explain_seconds"]


def _keep(folder: Path, dest: Path) -> None:
    import shutil

    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(folder, dest)


if __name__ == "__main__":
    main()
