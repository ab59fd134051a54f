"""One clean failure, in-process: exit codes of project errors, escaped names, failed checks
grouped, transient-only retries (the CLI and DVC processes: tests/integration)."""

from __future__ import annotations

import pytest

from bigdeep.errors import EXIT_CONFIG, EXIT_FAILED, BigdeepError, printable


def test_lightning_config_errors_are_recognised_without_importing_lightning():
    from lightning_fabric.utilities.exceptions import MisconfigurationException

    from bigdeep.errors import exit_code

    assert exit_code(MisconfigurationException("devices=3 on a 2-core CPU")) == EXIT_CONFIG
    assert exit_code(RuntimeError("a bug")) is None  # a bug keeps its traceback


def test_names_from_the_data_are_printed_escaped():
    assert printable("3/a\nb.png") == "3/a\\nb.png"
    assert printable("\x1b[31mred\x1b[0m\r") == "\\x1b[31mred\\x1b[0m\\r"
    assert printable("été/数字.png") == "été/数字.png"  # printable text is left alone

    from bigdeep.quality.report import failure_lines

    report = {
        "dataset": "images",
        "expectations": [
            {
                "v": "validity",
                "check": "decodable",
                "critical": False,
                "record_level": True,
                "success": False,
                "unexpected_count": 1,
                "first_failure": "images: 3/evil\nimages: PASSED.png cannot be decoded",
            }
        ],
        "failures": [],
    }
    (line,) = failure_lines(report)
    assert "\n" not in line and "3/evil\\nimages: PASSED.png" in line


def test_gate_failures_are_grouped_by_check_most_important_first():
    """25 duplicates of a record-level check do not hide the critical check that failed."""
    expectations = [
        {
            "v": "volume",
            "check": "row_count",
            "critical": True,
            "record_level": False,
            "success": True,
        },
        {
            "v": "validity",
            "check": "not_null",
            "critical": False,
            "record_level": True,
            "success": False,
            "unexpected_count": 25,
            "first_failure": "series: row 3 Demand is NaN",
        },
        {
            "v": "validity",
            "check": "in_range",
            "critical": False,
            "record_level": True,
            "success": False,
            "unexpected_count": 2,
            "first_failure": "series: row 9 Demand is 1e9",
        },
        {
            "v": "variety",
            "check": "column_type",
            "critical": True,
            "record_level": False,
            "success": False,
            "unexpected_count": None,
            "first_failure": "series: column Demand is text, expected numbers",
        },
    ]
    failures = [f"series: row {i} Demand is NaN" for i in range(20)] + [
        "series: column Demand is text, expected numbers",
        "series: 27 of 100 rows quarantined (27.00%), over max_quarantine_fraction=0",
    ]
    from bigdeep.quality.report import failure_groups, failure_lines

    report = {
        "dataset": "series",
        "columns": {},
        "quarantined": 27,
        "expectations": expectations,
        "failures": failures,
    }
    groups = failure_groups(report)
    assert [(g["check"], g["count"]) for g in groups] == [
        ("quarantine_fraction", 27),
        ("column_type", 1),
        ("not_null", 25),
        ("in_range", 2),
    ]
    lines = failure_lines(report)
    assert lines[1] == (
        "variety column_type (fails the gate, 1 row): series: column Demand is text, expected numbers"
    )
    assert lines[2].startswith("validity not_null (quarantined, 25 rows): series: row 3")
    assert len(lines) == 4  # each check once, not 20 copies


def test_only_transient_errors_are_retried():
    from prefect.states import Failed

    from bigdeep.data.sources import SourceError
    from flows.pipeline import StageRun, _only_transient, stage_failure

    busy = (
        "ERROR: failed to reproduce 'ingest@images': 'data/raw/images' is busy, it is being "
        "blocked by:\n  (PID 4242): dvc repro\n"
    )
    assert stage_failure("ingest@images", "images", StageRun("s", True, 1, busy)).transient
    http = "ERROR: failed to push data: HTTP Error 503: Service Unavailable\n"
    assert stage_failure("dvc push", None, StageRun("s", True, 1, http)).transient

    def retried(error: BaseException) -> bool:
        return _only_transient(None, None, Failed(data=error))

    assert retried(stage_failure("ingest@images", "images", StageRun("s", True, 1, busy)))
    assert retried(ConnectionRefusedError("127.0.0.1:5000"))
    assert not retried(SourceError("bad.jsonl: line 2 is not valid JSON"))
    assert not retried(ValueError("a bug is not cured by waiting"))


def test_every_project_error_is_a_bigdeep_error():
    from bigdeep.config import ConfigError
    from bigdeep.data.sources import SourceError
    from bigdeep.prepare import PrepareError
    from bigdeep.servers import ServerError
    from bigdeep.tracking import TrackingError

    for cls in (SourceError, PrepareError, TrackingError, ServerError):
        assert issubclass(cls, BigdeepError) and cls("x").exit_code == EXIT_FAILED
    assert ConfigError("x").exit_code == EXIT_CONFIG and isinstance(ConfigError("x"), ValueError)


@pytest.mark.slow
def test_bigdeep_validate_lists_each_failed_check_once_with_its_count(
    tmp_path, capsys, monkeypatch
):
    """30 rows with no Demand: one line for the check with its count, not 20 copies of it."""
    import pandas as pd

    from bigdeep.cli import main

    times = pd.date_range("2024-01-01", periods=60, freq="h", tz="UTC")
    frame = pd.DataFrame({"Time": times.strftime("%Y-%m-%dT%H:%M:%SZ"), "Demand": 100.0})
    frame["Temperature"] = 20.0
    frame.loc[10:39, "Demand"] = None
    frame.to_csv(tmp_path / "demand.csv", index=False)
    (tmp_path / "params.yaml").write_text(
        "data:\n  series:\n    source: csv:demand.csv\n    last_days: null\n"
    )
    monkeypatch.chdir(tmp_path)
    assert main(["ingest", "series", "--out", "raw"]) == 0
    code = main(
        [
            "validate",
            "series",
            "--raw",
            "raw",
            "--report",
            "reports/series.json",
            "--quarantine",
            "quarantine",
            "--reference",
            "none",
        ]
    )
    err = capsys.readouterr().err
    assert code == 3
    listed = [line for line in err.splitlines() if line.startswith("  - ")]
    assert listed[0].startswith("  - validity quarantine_fraction (fails the gate, 30 rows): ")
    nan = [line for line in listed if "row 11 " in line]
    assert len(nan) == 1 and "(quarantined, 30 rows)" in nan[0], listed
    assert len(listed) <= 4, listed
