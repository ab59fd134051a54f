"""Quality over time through real `dvc repro validate@series` runs: each data version is one
MLflow run in <experiment>-quality, `bigdeep quality history` shows them; a rerun adds nothing,
a store outage leaves the gate's verdict alone and the figures are sent by the next run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from bigdeep import servers
from bigdeep.cli import main
from bigdeep.history import read_history
from tests.e2e.helpers import make_project

# five validate stages through DVC (each a DVC and a bigdeep process): a few minutes here
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]


def repro(project: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "dvc", "repro", *args, "validate@series"],
        cwd=project,
        capture_output=True,
        text=True,
        env=env,
    )


def set_days(project: Path, days: int) -> None:
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["data"]["series"]["last_days"] = days
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def history(capsys) -> list[dict]:
    capsys.readouterr()
    assert main(["quality", "history", "series", "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def report(project: Path) -> dict:
    return json.loads((project / "reports" / "quality" / "series.json").read_text())


def drift_max(rep: dict) -> float | None:
    values = [v for m in ("js", "linf") for v in rep["drift"][m].values() if v is not None]
    return max(values) if values else None


def test_two_versions_a_rerun_an_outage_and_a_rejected_version(
    tmp_path, mlflow_uri, monkeypatch, capsys
):
    project = make_project(tmp_path / "project", {"data": {"series": {"last_days": 40}}})
    monkeypatch.chdir(project)

    # nothing validated yet: the message names the commands that record a version
    capsys.readouterr()
    assert main(["quality", "history", "series"]) == 1
    assert "no quality history for series (vic_elec)" in capsys.readouterr().err

    first = repro(project)
    assert first.returncode == 0, first.stderr
    assert "quality history: vic_elec " in first.stdout and "(passed) recorded" in first.stdout
    v1 = report(project)
    set_days(project, 35)  # 12.5% fewer rows: within max_drop_pct, some drift
    second = repro(project)
    assert second.returncode == 0, second.stderr
    v2 = report(project)

    rows = history(capsys)
    assert [r["rows"] for r in rows] == [v1["rows"], v2["rows"]] == [40 * 48, 35 * 48]
    assert rows[0]["drift_max"] is None  # the first version has nothing to drift from
    assert rows[1]["drift_max"] == pytest.approx(drift_max(v2)) and rows[1]["drift_max"] > 0
    assert rows[1]["drop_pct"] == pytest.approx(v2["drift"]["drop_pct"]) == pytest.approx(12.5)
    assert [r["passed"] for r in rows] == [True, True]
    assert rows[0]["raw_md5"] != rows[1]["raw_md5"]
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    assert rows[1]["raw_md5"] == lock["stages"]["ingest@series"]["outs"][0]["md5"]

    # a forced rerun of the same version compares it with itself (drift 0): no new run, and
    # the recorded figures stay those of its first validation
    rerun = repro(project, "-f", "--single-item")
    assert rerun.returncode == 0, rerun.stderr
    assert drift_max(report(project)) == 0
    assert "already recorded" in rerun.stdout
    assert history(capsys) == rows

    # the tracking server is down: the gate's verdict stands, the figures wait in the spool
    set_days(project, 30)
    down = dict(os.environ, MLFLOW_TRACKING_URI=f"http://127.0.0.1:{servers.free_port()}")
    outage = repro(project, env=down)
    assert outage.returncode == 0, outage.stderr
    assert "warning: quality history not recorded in http://127.0.0.1:" in outage.stderr
    spool = list((project / ".bigdeep" / "quality-spool").glob("*.json"))
    assert len(spool) == 1
    v3 = report(project)
    assert len(read_history(mlflow_uri, "bigdeep-quality", "vic_elec")) == 2  # nothing sent

    # the store answers again: the next run (a forced rerun, drift 0 against itself) sends
    # the waiting figures, those of the first validation (drift against 35 days)
    back = repro(project, "-f", "--single-item")
    assert back.returncode == 0, back.stderr
    sent = [line for line in back.stdout.splitlines() if line.startswith("quality history:")]
    assert len(sent) == 1 and "(passed) recorded" in sent[0], back.stdout  # the waiting one
    assert not list((project / ".bigdeep" / "quality-spool").glob("*.json"))
    rows = history(capsys)
    assert [r["rows"] for r in rows] == [40 * 48, 35 * 48, 30 * 48]
    assert rows[2]["drift_max"] == pytest.approx(drift_max(v3)) and rows[2]["drift_max"] > 0

    # a rejected version is in the trend too, marked FAILED with its failed group
    set_days(project, 10)  # 67% fewer rows than the last accepted version
    rejected = repro(project)
    assert rejected.returncode != 0
    assert "(FAILED) recorded" in rejected.stdout
    rows = history(capsys)
    assert [r["passed"] for r in rows] == [True, True, True, False]
    assert rows[3]["failed_checks"]["volume"] == report(project)["by_v"]["volume"]["failed"] >= 1
    capsys.readouterr()
    assert main(["quality", "history", "series", "--limit", "2"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[1] == "series (vic_elec): 2 version(s), MLflow experiment bigdeep-quality"
    assert table[-1].endswith("FAILED") and "volume 1" in table[-1]
    assert table[-2].endswith("passed") and str(30 * 48) in table[-2]
