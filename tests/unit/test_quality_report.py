"""What people read: the Prefect table, terminal lines, offline Data Docs; and leakage."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from bigdeep.config import SeriesData, SeriesQuality
from bigdeep.quality.docs import write_docs
from bigdeep.quality.gate import run_gate
from bigdeep.quality.leakage import find_leaks, leakage_error
from bigdeep.quality.report import report_table, summary_lines

COLUMNS = SeriesData(timestamp="Time", target="Demand", features=["Temperature"])


def series(n: int = 24) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "row": np.arange(1, n + 1, dtype="int64"),
            "Time": pd.date_range("2024-01-01", periods=n, freq="h", tz="UTC"),
            "Demand": np.linspace(1.0, 2.0, n),
            "Temperature": np.linspace(10.0, 20.0, n),
        }
    )


def failing_series():
    frame = series()
    frame.loc[4, "Demand"] = np.nan  # row 5
    return run_gate("series", frame, SeriesQuality(), COLUMNS)


def test_report_table_has_one_row_per_expectation_and_per_drift_value():
    result = failing_series()
    rows = report_table(result.report)
    expectations = result.report["expectations"]
    assert [r["check"] for r in rows[: len(expectations)]] == [e["check"] for e in expectations]
    assert [r["check"] for r in rows[len(expectations) :]] == [
        "drift_js:Demand",
        "drift_js:Temperature",
    ]
    demand = next(r for r in rows if r["check"] == "Demand_present")
    assert demand == {
        "dataset": "series",
        "v": "validity",
        "check": "Demand_present",
        "column": "Demand",
        "critical": False,
        "passed": False,
        "observed": '["nan"]',  # the first offending values
        "unexpected": 1,
    }
    assert all(set(r) == set(demand) for r in rows)


def test_summary_lines_one_per_v():
    lines = summary_lines(failing_series().report)
    assert lines[0] == "series: FAILED (24 rows, 1 quarantined)"
    assert [line.split()[0] for line in lines[1:5]] == ["volume", "variety", "validity", "velocity"]
    assert lines[3] == "  validity  10 passed, 1 failed"  # with Demand_outlier, Temperature_outlier
    # series: the privacy group (on by default), what it found in the text columns, then drift
    assert lines[5] == "  privacy   4 passed, 0 failed"  # email, phone, card, iban: no text column
    assert lines[6] == "  privacy   nothing found in 0 text column(s)"
    assert lines[7] == "  drift     no reference yet (first accepted version)"


def test_data_docs_are_one_offline_page_naming_the_failures(tmp_path: Path):
    result = failing_series()
    path = write_docs(result, tmp_path / "docs")
    assert path == tmp_path / "docs" / "series.html"
    page = path.read_text()
    # nothing to fetch: no stylesheet, script or image from the network
    assert not re.search(r"<(link|script)\b[^>]*(href|src)=\"https?://", page)
    assert not re.search(r"<img\b[^>]*src=\"https?://", page)
    assert "url(http" not in page.replace("'", "").replace('"', "")
    assert "series: row 5 (2024-01-01T04:00Z) Demand is NaN" in page
    assert "bigdeep quality gate: series FAILED" in page
    assert "values must never be null" in page  # GX's own rendering of the expectation
    # pass/fail marks are text, not an icon font: one per expectation, plus the page status
    results = result.validation.results
    assert page.count("\u2714 pass") == sum(r.success for r in results) == len(results) - 1
    assert page.count("\u2718 fail") == 1 + 1
    assert "fa-times text-danger bigdeep-mark" in page
    write_docs(result, tmp_path / "docs")
    assert path.read_text() == page  # the same result gives the same bytes


def test_find_leaks_names_each_id_and_its_splits():
    ids = {"train": ["a", "b", "b"], "val": ["c"], "test": ["b", "c", "d"]}
    assert find_leaks(ids) == {"b": ["train", "test"], "c": ["val", "test"]}
    assert (
        find_leaks({"train": ["a", "a"], "test": ["b"]}) == {}
    )  # a repeat within a split is not a leak


def test_leakage_error_reads_the_prepared_splits(tmp_path: Path):
    def save(split: str, ids: list[str]) -> None:
        np.save(tmp_path / f"{split}_ids.npy", np.array(ids))

    save("train", ["1" * 64, "2" * 64])
    save("val", ["3" * 64])
    save("test", ["4" * 64])
    assert leakage_error(tmp_path) is None
    save("test", ["4" * 64, "2" * 64])
    error = leakage_error(tmp_path)
    assert error.startswith(f"{tmp_path}: 1 image(s) with the same content (sha256) in two splits")
    assert "222222222222... in train and test" in error
