"""Quality over time: the figures of real gate reports, the DVC version they are filed under,
the spool, and sending to a real MLflow store in tmp_path (idempotent, outage-proof)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from bigdeep import history
from bigdeep.config import MlflowSettings, SeriesData, SeriesQuality
from bigdeep.quality.drift import load_reference, write_reference
from bigdeep.quality.gate import run_gate
from bigdeep.servers import free_port

COLUMNS = SeriesData(timestamp="Time", target="Demand", features=["Temperature"])


def series(n: int, shift: float = 0.0) -> pd.DataFrame:
    rng = np.random.default_rng(n)
    return pd.DataFrame(
        {
            "row": np.arange(1, n + 1, dtype="int64"),
            "Time": pd.date_range("2024-01-01", periods=n, freq="h", tz="UTC"),
            "Demand": rng.normal(100.0 + shift, 10.0, n),
            "Temperature": rng.normal(15.0, 3.0, n),
        }
    )


@pytest.fixture
def reports(tmp_path) -> tuple[dict, dict]:
    """Two real reports: a first version, then one with 20% fewer rows and shifted demand."""
    first = run_gate("series", series(200), SeriesQuality(), COLUMNS)
    write_reference(first.profile, tmp_path / "ref.json")
    reference = load_reference(tmp_path / "ref.json", identity="series")
    loose = SeriesQuality(max_drift_js=0.5)  # 160 rows in 32 bins: noise alone reads ~0.04
    second = run_gate("series", series(160, 8.0), loose, COLUMNS, reference=reference)
    assert second.report["passed"]
    return first.report, second.report


def test_figures_of_a_first_version_and_of_one_that_drifted(reports):
    first, second = reports
    f1 = history.figures(first)
    assert f1 == {
        "rows": 200.0,
        "quarantined": 0.0,
        "quarantined_fraction": 0.0,
        "gate_passed": 1.0,
        "failed_checks": 0.0,
        **{f"failed_checks/{v}": 0.0 for v in first["by_v"]},
    }  # no reference: no drift, no drop
    f2 = history.figures(second)
    js = second["drift"]["js"]
    assert f2["rows"] == 160 and f2["drop_pct"] == pytest.approx(20.0)
    assert f2["drift_js/Demand"] == js["Demand"] > f2["drift_js/Temperature"] == js["Temperature"]
    assert f2["drift_max"] == max(js.values())
    assert f2["gate_passed"] == float(second["passed"])


def test_figures_count_failures_per_group_any_group_and_name_odd_columns(reports):
    _, second = reports
    report = json.loads(json.dumps(second))
    report["passed"], report["quarantined"], report["quarantined_fraction"] = False, 3, 0.02
    report["by_v"] = {v: {"passed": 1, "failed": 0} for v in report["by_v"]}
    report["by_v"]["volume"]["failed"] = 1
    report["by_v"]["privacy"] = {"passed": 2, "failed": 4}  # a group added beside the four Vs
    report["drift"]["js"] = {"Demand (MW)": 0.25, "a/b": None, "bad": float("nan")}
    report["drift"]["linf"] = {"Holiday": 0.5}
    f = history.figures(report)
    assert f["gate_passed"] == 0 and f["quarantined"] == 3 and f["quarantined_fraction"] == 0.02
    assert f["failed_checks/volume"] == 1 and f["failed_checks/privacy"] == 4
    assert f["failed_checks"] == 5
    assert f["drift_js/Demand _MW_"] == 0.25 and f["drift_linf/Holiday"] == 0.5
    assert f["drift_max"] == 0.5
    assert not any(k.startswith("drift_js/a") or k == "drift_js/bad" for k in f)  # no value


def test_the_version_is_dvc_locks_entry_while_the_folder_matches_it(tmp_path):
    raw = tmp_path / "data" / "raw" / "series"
    raw.mkdir(parents=True)
    (raw / "part-0.parquet").write_bytes(b"x" * 10)
    (raw / "part-1.parquet").write_bytes(b"y" * 5)
    out = {"path": "data/raw/series", "hash": "md5", "md5": "0" * 32 + ".dir"}
    lock = {"schema": "2.0", "stages": {"ingest@series": {"outs": [out]}}}
    (tmp_path / "dvc.lock").write_text(yaml.safe_dump(lock))
    rel = Path("data/raw/series")
    assert history.raw_version(tmp_path, rel) == ("0" * 32 + ".dir", "")  # no size: believed
    out |= {"size": 15, "nfiles": 2}
    (tmp_path / "dvc.lock").write_text(yaml.safe_dump(lock))
    assert history.raw_version(tmp_path, rel) == ("0" * 32 + ".dir", "")
    (raw / "part-1.parquet").write_bytes(b"changed outside DVC")
    md5, why = history.raw_version(tmp_path, rel)
    assert md5 is None and "differs from its dvc.lock entry" in why
    md5, why = history.raw_version(tmp_path, Path("data/raw/images"))
    assert md5 is None and "no entry in dvc.lock" in why
    md5, why = history.raw_version(tmp_path / "data", rel)
    assert md5 is None and "no dvc.lock" in why


def record(report: dict, md5: str, at: int) -> history.VersionRecord:
    return history.version_record(
        report, source="builtin:test", raw_md5=md5, report_path="r.json", validated_at=at
    )


def test_a_spooled_version_keeps_its_first_figures_until_the_verdict_changes(tmp_path, reports):
    first, second = reports
    spool = tmp_path / "spool"
    history.spool_put(spool, record(second, "a" * 32, 2000))
    history.spool_put(spool, record(first, "a" * 32, 3000))  # a rerun, same verdict: kept
    [(_, kept)] = history.spooled(spool)
    assert kept.validated_at == 2000 and kept.figures == history.figures(second)
    failed = {**second, "passed": False}
    history.spool_put(spool, record(failed, "a" * 32, 4000))  # the verdict changed: replaced
    history.spool_put(spool, record(first, "b" * 32, 1000))
    assert [(r.raw_md5[0], r.validated_at, r.passed) for _, r in history.spooled(spool)] == [
        ("b", 1000, True),
        ("a", 4000, False),
    ]


def test_send_is_idempotent_and_both_readers_agree(tmp_path, mlflow_uri, reports):
    first, second = reports
    cfg = MlflowSettings(tracking_uri=mlflow_uri, artifact_root=str(tmp_path / "art"))
    spool = tmp_path / "spool"
    sent = history.flush(cfg, spool, add=record(first, "1" * 32, 1_000_000))
    assert sent.warning is None and "(passed) recorded" in sent.lines[0]
    sent = history.flush(cfg, spool, add=record(second, "2" * 32, 2_000_000))
    assert "version 2" in sent.lines[0] and not list(spool.glob("*.json"))
    again = history.flush(cfg, spool, add=record(second, "2" * 32, 3_000_000))
    assert "already recorded" in again.lines[0]

    rows = history.read_history(mlflow_uri, "bigdeep-quality", "series")
    assert rows == history.client_history(mlflow_uri, "bigdeep-quality", "series")
    assert [(r["raw_md5"][0], r["rows"], r["passed"]) for r in rows] == [
        ("1", 200, True),
        ("2", 160, True),
    ]
    assert rows[1]["drift_max"] == max(second["drift"]["js"].values())
    assert rows[1]["validated_at"] == "1970-01-01T00:33:20Z"  # 2,000,000 ms
    assert history.read_history(mlflow_uri, "bigdeep-quality", "other") == []

    # thresholds changed and the same version now fails: its verdict is updated, no new run
    updated = history.flush(
        cfg, spool, add=record({**second, "passed": False}, "2" * 32, 4_000_000)
    )
    assert "(FAILED) updated" in updated.lines[0]
    rows = history.read_history(mlflow_uri, "bigdeep-quality", "series")
    assert [r["passed"] for r in rows] == [True, False]
    from mlflow.tracking import MlflowClient

    run = MlflowClient(mlflow_uri).get_run(rows[1]["run_id"])
    assert run.info.status == "FAILED" and run.data.params["raw_md5"] == "2" * 32
    assert run.data.metrics["gate_passed"] == 0.0
    table = history.history_table(rows).splitlines()
    assert table[0].split()[:3] == ["validated", "(UTC)", "raw"]
    assert table[2].startswith("1970-01-01 00:33:20  22222222  160")
    assert table[2].endswith("FAILED")


def test_an_unreachable_server_keeps_the_figures_for_the_next_send(
    tmp_path, mlflow_uri, reports, monkeypatch
):
    first, _ = reports
    spool = tmp_path / "spool"
    down = MlflowSettings(tracking_uri=f"http://127.0.0.1:{free_port()}")  # nothing listens
    with monkeypatch.context() as env:
        env.delenv("MLFLOW_TRACKING_URI")  # params.yaml's URI, the dead server, is used
        sent = history.flush(down, spool, add=record(first, "3" * 32, 1000))
    assert sent.lines == [] and "is not reachable" in sent.warning
    assert "figures of 1 version(s) wait in" in sent.warning
    assert len(history.spooled(spool)) == 1
    sent = history.flush(MlflowSettings(tracking_uri=mlflow_uri), spool)  # the store is back
    assert sent.warning is None and "recorded" in sent.lines[0]
    assert history.spooled(spool) == []
    [row] = history.read_history(mlflow_uri, "bigdeep-quality", "series")
    assert row["raw_md5"] == "3" * 32 and row["rows"] == 200


def test_history_table_shows_failed_groups_and_missing_drift():
    row = history.history_row(
        {
            history.T_AT: "2026-12-01T00:10:00Z",
            history.T_VERSION: "abcdef0123" + "0" * 22,
            history.T_PASSED: "false",
        },
        {"source": "builtin:vic_elec"},
        {"rows": 480.0, "quarantined_fraction": 0.125, "failed_checks/volume": 1.0},
        "FAILED",
        "r1",
    )
    assert re.split(r"\s{2,}", history.history_table([row]).splitlines()[1]) == [
        "2026-12-01 00:10:00",
        "abcdef01",
        "480",
        "12.50%",
        "-",
        "volume 1",
        "FAILED",
    ]
