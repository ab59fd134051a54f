"""Flow logic through `.fn()` (no server): paths come from dvc.yaml, the summary says what happened."""

from __future__ import annotations

from pathlib import Path

import yaml

from bigdeep.config import stage_files
from flows.pipeline import DatasetSummary, summarize

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


def test_summary_shows_gate_per_v_version_metrics_and_decision(tmp_path, mlflow_uri):
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
    assert "velocity" not in text  # no check of that V ran: no "0 passed, 0 failed" line
    # training was skipped: its metrics and registry decision are an earlier run's
    assert "- model cnn, unchanged (trained by an earlier run): test_acc 0.975" in text
    assert "bigdeep-cnn v2 is challenger" not in text
    assert "- registry: unchanged (bigdeep-cnn v2, challenger when it was trained" in text
    assert f"- MLflow: run r1 in {mlflow_uri}" in text  # no server: the run id and its store
    assert "| test_acc | 0.975 |" in text
    assert "## series: gate FAILED, version -" in text and "row 17 Demand is NaN" in text


def test_summary_headline_per_model_and_table_of_every_metric(tmp_path):
    (tmp_path / "dvc.yaml").write_text((ROOT / "dvc.yaml").read_text())
    (tmp_path / "dvc.lock").write_text(yaml.safe_dump({"schema": "2.0", "stages": {}}))
    metrics = {
        "test_mae": 57.5,
        "test_mae_vs_naive": 0.336,
        "test_rmse": 74.46,
        "test_naive_mae": 171.1,
        "test_mape": 1.36,
        "trained_epochs": 10.0,
    }
    s = DatasetSummary(
        "series",
        gate_passed=True,
        model="rnn",
        metrics=metrics,
        stages={"ingest": "ran", "train_rnn": "ran"},
        run={
            "run_id": "r9",
            "registry": {
                "model": "bigdeep-rnn",
                "version": "3",
                "alias": "champion",
                "reason": "better",
            },
        },
    )
    text = summarize.fn(str(tmp_path), [s])
    headline = next(line for line in text.splitlines() if line.startswith("- model rnn"))
    assert (
        headline
        == "- model rnn, trained now: test_mae 57.5, test_mae_vs_naive 0.336, test_rmse 74.46"
    )
    assert "- registry: bigdeep-rnn v3 is champion (better)" in text  # decided by this run
    assert "- privacy: off" in text  # no privacy record in run.json
    s.run["privacy"] = {"epsilon": 0.99712, "target_epsilon": 1.0, "delta": 1e-5}
    assert "- privacy: ε=0.997 (target 1.0, δ=1e-5)" in summarize.fn(str(tmp_path), [s])
    rows = [line for line in text.splitlines() if line.startswith("| ")]
    assert rows[0] == "| rnn metric | value |" and len(rows) == 1 + len(metrics)
    assert "| test_naive_mae | 171.1 |" in rows


def test_summary_says_first_version_and_shapes_as_validate_does(tmp_path):
    """`bigdeep run` printed neither "first version of <identity>" nor the sizes and modes seen
    (only the stage's log held them); the summary now carries the report's lines."""
    from flows.pipeline import report_notes

    (tmp_path / "dvc.yaml").write_text((ROOT / "dvc.yaml").read_text())
    (tmp_path / "dvc.lock").write_text(yaml.safe_dump({"schema": "2.0", "stages": {}}))
    report = {
        "dataset": "images",
        "passed": True,
        "rows": 45,
        "quarantined": 0,
        "by_v": {"volume": {"passed": 3, "failed": 0}},
        "drift": {"note": "first version of folder-photos-e5acf4: no drift or drop checks yet"},
        "shapes": {
            "sizes": [{"size": "220x234", "records": 2}],
            "other_sizes": 1,
            "other_records": 1,
            "height_range": [85, 301],
            "width_range": [86, 397],
            "modes": [{"mode": "RGB", "records": 3}],
            "conversion": "resized to 64x64 (height x width, crop) and converted to mode RGB",
        },
    }
    notes = report_notes(report)
    assert notes == [
        "shapes: 2 size(s), height 85..301, width 86..397 (most common 220x234: 2); mode(s) RGB 3; "
        "conversion: resized to 64x64 (height x width, crop) and converted to mode RGB",
        "drift: first version of folder-photos-e5acf4: no drift or drop checks yet",
    ]
    assert report_notes({}) == []  # the gate did not run: no report
    text = summarize.fn(str(tmp_path), [DatasetSummary("images", gate_passed=True, notes=notes)])
    assert "\n- drift: first version of folder-photos-e5acf4: no drift or drop checks yet\n" in text
    assert "\n- shapes: 2 size(s), height 85..301" in text


def test_a_failed_ingest_shows_no_version_rather_than_the_last_good_datas(tmp_path):
    """After `ingest@images` failed, the summary said "gate not run, version <md5>": the md5
    dvc.lock still held, of the previous source's data, not of anything this run read."""
    (tmp_path / "dvc.yaml").write_text((ROOT / "dvc.yaml").read_text())
    (tmp_path / "dvc.lock").write_text(
        yaml.safe_dump(
            {
                "schema": "2.0",
                "stages": {
                    "ingest@images": {"outs": [{"path": "data/raw/images", "md5": "old.dir"}]}
                },
            }
        )
    )
    for stages in ({"ingest": "failed"}, {"scan": "failed"}):
        failed = DatasetSummary("images", stages=stages)
        assert "## images: gate not run, version -\n" in summarize.fn(str(tmp_path), [failed])
    skipped = DatasetSummary("images", gate_passed=True, stages={"ingest": "skipped"})
    assert "## images: gate PASSED, version old.dir\n" in summarize.fn(str(tmp_path), [skipped])
