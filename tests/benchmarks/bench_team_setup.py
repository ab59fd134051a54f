"""Wall-clock of a full `bigdeep run`: SQLite + local folders against PostgreSQL + S3.

    python -m tests.benchmarks.bench_team_setup [--datasets images series] [--root /tmp/x]

Two fresh projects (the e2e tests' SMALL slice), each with its own `bigdeep servers up`, run one
after the other on the same machine:
- local: MLflow on the project's SQLite store and artifact folder, the DVC remote a folder;
- team: MLflow and Prefect on PostgreSQL (127.0.0.1:5432, BIGDEEP_TEST_POSTGRES; a uniquely
  named database, dropped after), MLflow artifacts and the DVC remote on a real S3 server
  (moto, on 127.0.0.1 in this process: the store's own speed is not what this measures).
For each: `servers up`, the full run (trains), a rerun with nothing changed, and `bigdeep
restore` of the champion's data in a fresh clone (from the remote: S3 or the folder).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import yaml

from tests.benchmarks.bench_cli import _env
from tests.e2e.helpers import POSTGRES, drop_databases

ROOT = Path(__file__).resolve().parents[2]


def _timed(cmd: list[str], cwd: Path, env: dict[str, str]) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{cmd} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr}")
    return time.perf_counter() - start


def _case(name: str, root: Path, env: dict[str, str], datasets: list[str], team: dict | None):
    from tests.e2e.helpers import SMALL, make_project, run

    project = make_project(root / name, yaml.safe_load(yaml.safe_dump(SMALL)))
    bigdeep = [sys.executable, "-m", "bigdeep.cli"]
    up = [*bigdeep, "servers", "up", "--timeout", "300", "--mlflow-port=0", "--prefect-port=0"]
    if team:
        run([sys.executable, "-m", "dvc", "remote", "add", "-d", "team", team["data"]], project)
        up += ["--postgres", team["postgres"], "--artifacts", team["artifacts"]]
        run(["git", "commit", "-qam", "remote"], project)
    times = {"servers up": _timed(up, project, env)}
    try:
        times["full run"] = _timed([*bigdeep, "run", "--datasets", *datasets], project, env)
        times["rerun, nothing new"] = _timed(
            [*bigdeep, "run", "--datasets", *datasets], project, env
        )
        url = yaml.safe_load((project / ".bigdeep/servers/servers.json").read_text())["mlflow"][
            "url"
        ]
        clone = root / f"{name}-clone"
        run(["git", "clone", "-q", str(project), str(clone)], root)
        if not team:  # the folder remote lies inside the project (.dvc-remote): share it
            shutil.copytree(project / ".dvc-remote", clone / ".dvc-remote")
        restore = [
            *bigdeep,
            "restore",
            f"bigdeep-{'cnn' if 'images' in datasets else 'rnn'}@champion",
        ]
        times["restore in a clone"] = _timed(restore, clone, dict(env, MLFLOW_TRACKING_URI=url))
    finally:
        subprocess.run([*bigdeep, "servers", "down"], cwd=project, env=env, capture_output=True)
    return times


def main() -> None:
    from tests.e2e.s3server import S3Server

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--root", type=Path, default=Path("/tmp/bigdeep-bench-team"))
    ap.add_argument("--datasets", nargs="+", default=["images", "series"])
    args = ap.parse_args()
    shutil.rmtree(args.root, ignore_errors=True)
    args.root.mkdir(parents=True)
    env = _env((ROOT / "src").resolve())
    for key in ("MLFLOW_TRACKING_URI", "PREFECT_API_URL"):
        env.pop(key, None)

    s3 = S3Server().start()
    env.update(s3.env())
    os.environ.update(s3.env())
    s3.create_bucket()
    db = f"bigdeep_bench_{uuid.uuid4().hex[:8]}"
    team = {
        "postgres": f"{POSTGRES.rsplit('/', 1)[0]}/{db}",
        "artifacts": "s3://bigdeep/mlflow",
        "data": "s3://bigdeep/data",
    }
    results = {}
    try:
        results["SQLite + folders"] = _case("local", args.root / "local", env, args.datasets, None)
        results["PostgreSQL + S3"] = _case("team", args.root / "team", env, args.datasets, team)
    finally:
        s3.stop()
        drop_databases(db)
    steps = list(next(iter(results.values())))
    print(f"datasets {' '.join(args.datasets)}, SMALL slice, seconds (one run each)")
    print(f"{'step':<22}" + "".join(f"{name:>20}" for name in results) + f"{'ratio':>8}")
    for step in steps:
        a, b = (results[name][step] for name in results)
        print(f"{step:<22}{a:>20.1f}{b:>20.1f}{b / a:>8.2f}")


if __name__ == "__main__":
    main()
