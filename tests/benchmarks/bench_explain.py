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
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # tests.integration.helpers

from bigdeep.config import Settings, load_settings  # noqa: E402
from bigdeep.env import apply_quiet_env  # noqa: E402
from bigdeep.train import train_cnn, train_rnn  # noqa: E402
from tests.integration.helpers import prepared_images, prepared_series, run_paths  # noqa: E402


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
            prepare = {"cnn": prepared_images, "rnn": prepared_series}[model]
            data = prepare(base, root / f"data-{model}")
            train = {"cnn": train_cnn, "rnn": train_rnn}[model]
            times: dict[bool, list[float]] = {False: [], True: []}
            explain_seconds = []
            for i in range(args.repeats):
                for enabled in (False, True):
                    run = root / f"{model}-{i}-{'on' if enabled else 'off'}"
                    paths = run_paths(run, data)
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
