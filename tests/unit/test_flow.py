"""Flow logic through `.fn()` (no server): paths come from dvc.yaml, the summary says what happened."""

from __future__ import annotations

from pathlib import Path

import yaml

from flows.pipeline import DatasetSummary, stage_files, summarize

ROOT = Path(__file__).resolve().parents[2]


def test_stage_files_follow_dvc_yaml(tmp_path):
    files = stage_files(ROOT, "series")
    assert (files.report, files.metrics, files.model_dir) == (
        "reports/quality/series.json",
        "metrics/rnn.json",
        "models/rnn",
    )
    # moved in dvc.yaml -> moved for the flow too
    spec = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    spec["stages"]["train_cnn"]["metrics"] = [{"elsewhere/cnn.json": {"cache": False}}]
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump(spec))
    assert stage_files(tmp_path, "images").metrics == "elsewhere/cnn.json"


def test_summary_shows_gate_per_v_version_metrics_and_decision(tmp_path):
    (tmp_path / "dvc.yaml").write_text((ROOT / "dvc.yaml").read_text())
    (tmp_path / "dvc.lock").write_text(
        yaml.safe_dump(
            {
                "schema": "2.0",
                "stages": {
                    "ingest@images": {"outs": [{"path": "data/raw/images", "md5": "abc.dir"}]}
                },
            }
        )
    )
    ok = DatasetSummary(
        "images",
        gate_passed=True,
        rows=30,
        quarantined=0,
        by_v={"volume": {"passed": 3, "failed": 0}, "validity": {"passed": 5, "failed": 1}},
        model="cnn",
        metrics={"test_acc": 0.975},
        stages={"ingest": "ran", "train_cnn": "skipped"},
        run={
            "run_id": "r1",
            "registry": {
                "model": "bigdeep-cnn",
                "version": "2",
                "alias": "challenger",
                "reason": "worse",
            },
        },
    )
    bad = DatasetSummary("series", gate_passed=False, failures=["series: row 17 Demand is NaN"])
    text = summarize.fn(str(tmp_path), [ok, bad])
    assert "## images: gate PASSED, version abc.dir" in text
    assert "- validity: 5 passed, 1 failed" in text
    assert "test_acc 0.975" in text and "MLflow run r1" in text
    assert "bigdeep-cnn v2 is challenger (worse)" in text
    assert "## series: gate FAILED, version -" in text and "row 17 Demand is NaN" in text


def test_dvc_metrics_lead_with_the_models_then_the_quality_reports(tmp_path):
    import json
    import shutil
    import subprocess
    import sys

    for name in ("dvc.yaml", "params.yaml", "metrics", "reports/quality"):
        source, target = ROOT / name, tmp_path / name
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("docs"))
        else:
            shutil.copy(source, target)
    dvc = [sys.executable, "-m", "dvc"]
    subprocess.run([*dvc, "init", "--no-scm", "-q"], cwd=tmp_path, check=True)
    shown = subprocess.run(
        [*dvc, "metrics", "show", "--json"], cwd=tmp_path, capture_output=True, text=True
    )
    files = list(json.loads(shown.stdout)[""]["data"])
    assert files == [
        "metrics/cnn.json",
        "metrics/rnn.json",
        "reports/quality/images.json",
        "reports/quality/series.json",
    ]
