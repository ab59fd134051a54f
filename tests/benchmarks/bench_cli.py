"""Wall-clock of the small commands and of a rerun with nothing changed (issue 10, items 1-2).

    python -m tests.benchmarks.bench_cli                       # quiet machine
    python -m tests.benchmarks.bench_cli --load 2              # with two CPU-burning loops
    python -m tests.benchmarks.bench_cli --src <other checkout>/src  # another checkout's code, side by side
    python -m tests.benchmarks.bench_cli --server              # reruns through a running Prefect server

A small project (the e2e tests' SMALL slice) is made once under --project and run once;
then every command is timed --repeats times in a fresh process, and the median printed:
`bigdeep --help`, `servers status`, `lineage bigdeep-cnn@champion`, and `bigdeep run`
(nothing changed: every stage skipped). Targets: small commands <= 3 s, the rerun <= 10 s.
`lineage` is also timed the old way, through MlflowClient (what it does for a server), with
the ratio and a check that both print the same. `--only lineage` times just those two.
`BIGDEEP_PROFILE=1` makes `bigdeep run` print where its time went (stderr, `profile:` lines).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


# `bigdeep lineage` before the SQLite reader: the MLflow import and the SQLAlchemy store.
OLD_LINEAGE = """
import json, sys
from mlflow.tracking import MlflowClient
from bigdeep.config import load_settings
from bigdeep.registry import lineage
from bigdeep.tracking import describe_store, tracking_uri
s = load_settings()
print(describe_store(s.mlflow), file=sys.stderr)
print(json.dumps(lineage(MlflowClient(tracking_uri(s.mlflow)), sys.argv[1]), indent=2, sort_keys=True))
"""


def _burn(_: int) -> None:
    while True:
        pass


def _env(src: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = f"{src}{os.pathsep}{src.parent}"
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def _time(cmd: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, str]:
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    took = time.perf_counter() - start
    if proc.returncode not in (0, 1):  # `servers status` with no servers recorded exits 1
        raise SystemExit(f"{cmd} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return took, proc.stdout + proc.stderr


def _project(path: Path, env: dict[str, str]) -> Path:
    if (path / "dvc.lock").exists():
        return path
    import yaml

    from tests.e2e.helpers import SMALL, make_project

    make_project(path, yaml.safe_load(yaml.safe_dump(SMALL)))
    print(f"first run in {path} (trains both models) ...", flush=True)
    took, out = _time([sys.executable, "-m", "bigdeep.cli", "run"], path, env)
    print(f"  first run: {took:.1f} s")
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--project", type=Path, default=Path("/tmp/bigdeep-bench-cli"))
    ap.add_argument("--src", type=Path, default=ROOT / "src", help="the bigdeep code to time")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--load", type=int, default=0, help="CPU-burning loops during the timings")
    ap.add_argument("--server", action="store_true", help="start `bigdeep servers up` first")
    ap.add_argument("--only", nargs="+", help="time only the cases whose name starts so")
    args = ap.parse_args()

    env = _env(args.src.resolve())
    env.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{args.project / 'mlflow.db'}")
    project = _project(args.project, env)
    bigdeep = [sys.executable, "-m", "bigdeep.cli"]
    if args.server:
        _time([*bigdeep, "servers", "up"], project, env)
    cases = {
        "--help": [*bigdeep, "--help"],
        "servers status": [*bigdeep, "servers", "status"],
        "lineage": [*bigdeep, "lineage", "bigdeep-cnn@champion"],
        "lineage via MlflowClient": [sys.executable, "-c", OLD_LINEAGE, "bigdeep-cnn@champion"],
        "run (nothing changed)": [*bigdeep, "run"],
    }
    if args.only:
        cases = {k: v for k, v in cases.items() if k.startswith(tuple(args.only))}
    medians, outputs = {}, {}
    burners = [
        multiprocessing.Process(target=_burn, args=(i,), daemon=True) for i in range(args.load)
    ]
    for b in burners:
        b.start()
    try:
        print(f"code {args.src}, load {args.load} loops, {args.repeats} repeats, median s")
        for name, cmd in cases.items():
            runs = [
                _time(cmd, project, {**env, "BIGDEEP_PROFILE": "1"}) for _ in range(args.repeats)
            ]
            took = medians[name] = statistics.median(t for t, _ in runs)
            outputs[name] = runs[-1][1]
            print(f"  {name:<24} {took:6.1f}   (each: {', '.join(f'{t:.1f}' for t, _ in runs)})")
            if name.startswith("run"):
                profile = [ln for ln in runs[-1][1].splitlines() if "profile:" in ln]
                print("\n".join(f"      {ln.strip()}" for ln in profile) or "      (no profile)")
        if "lineage" in medians and "lineage via MlflowClient" in medians:
            same = outputs["lineage"] == outputs["lineage via MlflowClient"]
            print(
                f"  lineage / via MlflowClient: {medians['lineage'] / medians['lineage via MlflowClient']:.2f}"
                f"  (same output: {'yes' if same else 'NO'})"
            )
    finally:
        for b in burners:
            b.kill()
        if args.server:
            _time([*bigdeep, "servers", "down"], project, env)


if __name__ == "__main__":
    main()
