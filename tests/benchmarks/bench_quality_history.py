"""What recording the quality history costs the validate stage: before vs after, side by side.

    python -m tests.benchmarks.bench_quality_history                 # series and images, 3 repeats
    python -m tests.benchmarks.bench_quality_history --datasets series --repeats 5

A project is made in a temp folder (tests/e2e/helpers.make_project: the real dvc.yaml, the
builtin data, 365 days of series, 500 digits per class) and ingested once with `dvc repro`.
Then, interleaved, each repeat runs `bigdeep validate <dataset>` as dvc.yaml's command does, in
its own process:
  before    the code this branch started from (`git archive` of --base, default main)
  after     this checkout, a new version each time (its run is deleted between repeats)
  rerun     this checkout, the version already recorded (a `dvc repro -f`)
  outage    this checkout, MLFLOW_TRACKING_URI at a port nothing listens on (spooled)
and, in one process with Great Expectations already imported (as the stage has it), the hook
alone: `record_validation` on the report just written (new version), cold (first in the
process: imports mlflow, opens the store) and warm. Prints seconds (median) and after/before.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

HOOK = """
import json, sys, time
from pathlib import Path
import great_expectations  # noqa: F401 - the stage has it loaded when the hook runs
from bigdeep.config import load_settings
from bigdeep.history import record_validation
from mlflow.tracking import MlflowClient  # noqa: E402 - only to delete the run between calls

dataset = sys.argv[1]
settings = load_settings("params.yaml")
report = json.loads(Path(f"reports/quality/{dataset}.json").read_text())
client = MlflowClient()
exp = client.get_experiment_by_name("bigdeep-quality")
for run in client.search_runs([exp.experiment_id]):  # each call records a new version
    client.delete_run(run.info.run_id)
times = []
for _ in range(3):
    t = time.perf_counter()
    sent = record_validation(settings, report, Path(f"reports/quality/{dataset}.json"),
                             Path(f"data/raw/{dataset}"))
    times.append(time.perf_counter() - t)
    assert "recorded (run" in sent.lines[-1], sent
    run_id = sent.lines[-1].split("(run ")[1].split(",")[0]
    client.delete_run(run_id)
print(json.dumps(times))
"""


def sh(cmd: list[str], cwd: Path, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)


def validate_cmd(dataset: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "bigdeep.cli",
        "validate",
        dataset,
        "--raw",
        f"data/raw/{dataset}",
        "--report",
        f"reports/quality/{dataset}.json",
        "--quarantine",
        f"data/quarantine/{dataset}",
        "--reference",
        f"data/reference/{dataset}",
    ]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--datasets", nargs="+", default=["series", "images"])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--base", default="main", help="git revision measured as `before`")
    args = p.parse_args()

    sys.path.insert(0, str(ROOT))
    from bigdeep.servers import free_port
    from tests.e2e.helpers import make_project

    work = Path(tempfile.mkdtemp(prefix="bench-history-"))
    before_src = work / "before"
    before_src.mkdir()
    archive = subprocess.run(
        ["git", "archive", args.base, "src"], cwd=ROOT, capture_output=True, check=True
    )
    subprocess.run(["tar", "-x", "-C", str(before_src)], input=archive.stdout, check=True)
    project = make_project(
        work / "project", {"data": {"series": {"last_days": 365}, "images": {"per_class": 500}}}
    )
    base_env = dict(
        os.environ,
        DO_NOT_TRACK="true",
        MLFLOW_DISABLE_TELEMETRY="true",
        DVC_NO_ANALYTICS="1",
        MLFLOW_TRACKING_URI=f"sqlite:///{work / 'mlflow.db'}",
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    )
    env = {
        "before": dict(base_env, PYTHONPATH=f"{before_src / 'src'}{os.pathsep}{project}"),
        "after": dict(base_env, PYTHONPATH=f"{ROOT / 'src'}{os.pathsep}{project}"),
    }
    env["outage"] = dict(env["after"], MLFLOW_TRACKING_URI=f"http://127.0.0.1:{free_port()}")
    for dataset in args.datasets:  # ingest, validate once (creates the store and experiment)
        for stage in (f"ingest@{dataset}", f"validate@{dataset}"):
            proc = sh([sys.executable, "-m", "dvc", "repro", "-s", stage], project, env["after"])
            assert proc.returncode == 0, proc.stdout + proc.stderr

    from mlflow.tracking import MlflowClient

    client = MlflowClient(base_env["MLFLOW_TRACKING_URI"])
    print(f"project {project}; load average {os.getloadavg()[0]:.1f}; {args.repeats} repeats")
    print(f"{'dataset':<8} {'case':<7} {'median s':>9} {'vs before':>10}  each")
    for dataset in args.datasets:
        times: dict[str, list[float]] = {k: [] for k in ("before", "after", "rerun", "outage")}
        for _ in range(args.repeats):
            for case in times:
                if case == "after":  # a new version each time: forget the recorded run
                    exp = client.get_experiment_by_name("bigdeep-quality")
                    for run in client.search_runs([exp.experiment_id]):
                        client.delete_run(run.info.run_id)
                t = time.perf_counter()
                proc = sh(validate_cmd(dataset), project, env.get(case, env["after"]))
                times[case].append(time.perf_counter() - t)
                assert proc.returncode == 0, proc.stdout + proc.stderr
                if case == "after":
                    assert "recorded (run" in proc.stdout, proc.stdout
                if case == "outage":
                    assert "warning: quality history not recorded" in proc.stderr
                    for spooled in (project / ".bigdeep" / "quality-spool").glob("*.json"):
                        spooled.unlink()
        base = statistics.median(times["before"])
        for case, values in times.items():
            m = statistics.median(values)
            each = " ".join(f"{v:.1f}" for v in values)
            print(f"{dataset:<8} {case:<7} {m:9.2f} {m / base:9.2f}x  {each}")
        hook = sh([sys.executable, "-c", HOOK, dataset], project, env["after"])
        assert hook.returncode == 0, hook.stderr
        cold, *warm = (float(x) for x in hook.stdout.strip().splitlines()[-1][1:-1].split(","))
        print(
            f"{dataset:<8} hook    cold {cold:.2f} s (imports mlflow, opens the store), "
            f"warm {statistics.median(warm):.3f} s"
        )


if __name__ == "__main__":
    main()
