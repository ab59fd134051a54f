"""Small commands import only what they need: none of the heavy modules for `--help` and
`servers status`; for `lineage` on a SQLite store (read with sqlite3) none but pandas (it
checks params.yaml's durations); MLflow, and no torch, Prefect or DVC, for a `lineage` the
fast reader leaves to MlflowClient."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

HEAVY = ("torch", "lightning", "lightning_fabric", "mlflow", "prefect", "dvc", "pandas")

# Runs one command's function (what main() dispatches to) and lists the heavy modules loaded.
PROBE = f"""
import sys
from bigdeep.cli import build_parser
args = build_parser().parse_args(sys.argv[1:])
try:
    args.func(args)
except Exception as e:  # lineage of a model that does not exist: the imports are done by then
    print("raised:", type(e).__name__)
print("heavy:", ",".join(sorted(m for m in {HEAVY!r} if m in sys.modules)))
"""


def _heavy(cwd, *argv: str) -> list[str]:
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, *argv], cwd=cwd, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("heavy:"))
    return [m for m in line.removeprefix("heavy:").strip().split(",") if m]


def test_servers_status_imports_nothing_heavy(tmp_path):
    assert _heavy(tmp_path, "servers", "status", "--state", str(tmp_path / "none")) == []


def test_lineage_from_sqlite_imports_nothing_heavy(tmp_path, mlflow_uri):
    from mlflow.tracking import MlflowClient

    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    client = MlflowClient(mlflow_uri)
    run_id = client.create_run(client.create_experiment("e")).info.run_id
    client.create_registered_model("bigdeep-cnn")
    client.create_model_version("bigdeep-cnn", tmp_path.as_uri(), run_id)
    client.set_registered_model_alias("bigdeep-cnn", "champion", "1")
    probe = PROBE.replace("args.func(args)", "print('run_id', args.func(args))")
    proc = subprocess.run(
        [sys.executable, "-c", probe, "lineage", "bigdeep-cnn@champion"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert f'"run_id": "{run_id}"' in proc.stdout and "run_id 0" in proc.stdout, proc.stderr
    heavy = proc.stdout.rsplit("heavy:", 1)[1].strip().split(",")
    assert heavy in ([""], ["pandas"]), heavy  # no mlflow (pandas: params.yaml's durations)


def test_lineage_through_mlflow_imports_mlflow_only(tmp_path, mlflow_uri):
    """A store the fast reader declines (here: no such file yet) goes through MlflowClient."""
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    heavy = _heavy(tmp_path, "lineage", "bigdeep-cnn@champion")
    assert "mlflow" in heavy  # (mlflow itself loads pandas)
    assert not set(heavy) & {"torch", "lightning", "lightning_fabric", "prefect", "dvc"}, heavy


def test_help_imports_nothing_heavy(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "bigdeep.cli", "--help"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0 and "servers" in proc.stdout
    loaded = {ln.rsplit("|", 1)[-1].strip() for ln in proc.stderr.splitlines() if "|" in ln}
    assert loaded and not loaded & set(HEAVY)
