"""Wall-clock of `bigdeep run` with nothing changed, against the flow path, side by side.

    python -m tests.benchmarks.bench_rerun              # quiet machine
    python -m tests.benchmarks.bench_rerun --load 2     # with two CPU-burning loops
    python -m tests.benchmarks.bench_rerun --server     # the flow path through `bigdeep servers up`

A small project (the e2e tests' SMALL slice) is made once under --project and run once; then,
each --repeats times in a fresh process, the median printed:
- `bigdeep run`: nothing changed, so the up-to-date check prints the summary, no Prefect;
- `bigdeep run --set train.cnn.epochs=<its value>`: a --set always runs the flow (Prefect's
  temporary server, or the running one with --server); every stage is skipped, nothing changes.
The difference is what the check saves. Target: the rerun <= 10 s, quiet and with --load 2.
`BIGDEEP_PROFILE=1` is set: the last run of each prints where its time went.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

from tests.benchmarks.bench_cli import _burn, _env, _project, _time

ROOT = Path(__file__).resolve().parents[2]


def main() -> None:
    import multiprocessing

    import yaml

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--project", type=Path, default=Path("/tmp/bigdeep-bench-rerun"))
    ap.add_argument("--src", type=Path, default=ROOT / "src", help="the bigdeep code to time")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--load", type=int, default=0, help="CPU-burning loops during the timings")
    ap.add_argument("--server", action="store_true", help="start `bigdeep servers up` first")
    args = ap.parse_args()

    env = _env(args.src.resolve())
    env.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{args.project / 'mlflow.db'}")
    project = _project(args.project, env)
    epochs = yaml.safe_load((project / "params.yaml").read_text())["train"]["cnn"]["epochs"]
    bigdeep = [sys.executable, "-m", "bigdeep.cli"]
    if args.server:
        _time([*bigdeep, "servers", "up"], project, env)
    cases = {
        "rerun, nothing changed": [*bigdeep, "run"],
        "flow path (--set, same value)": [*bigdeep, "run", "--set", f"train.cnn.epochs={epochs}"],
    }
    burners = [
        multiprocessing.Process(target=_burn, args=(i,), daemon=True) for i in range(args.load)
    ]
    for b in burners:
        b.start()
    try:
        print(f"code {args.src}, load {args.load} loops, {args.repeats} repeats, median s")
        medians = {}
        for name, cmd in cases.items():
            runs = [
                _time(cmd, project, {**env, "BIGDEEP_PROFILE": "1"}) for _ in range(args.repeats)
            ]
            medians[name] = statistics.median(t for t, _ in runs)
            each = ", ".join(f"{t:.1f}" for t, _ in runs)
            print(f"  {name:<30} {medians[name]:6.1f}   (each: {each})")
            out = runs[-1][1]
            if name.startswith("rerun") and "no flow run was needed" not in out:
                print("      (the flow ran: code without the up-to-date check)")
            profile = [ln.split("profile:", 1)[1] for ln in out.splitlines() if "profile:" in ln]
            print("\n".join(f"      {ln.strip()}" for ln in profile) or "      (no profile)")
        rerun, flow = medians.values()
        print(f"  rerun / flow path: {rerun / flow:.2f}")
    finally:
        for b in burners:
            b.kill()
        if args.server:
            _time([*bigdeep, "servers", "down"], project, env)


if __name__ == "__main__":
    main()
