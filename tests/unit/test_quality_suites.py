"""The suites declared as rows build the same Great Expectations suites as before.

tests/unit/data/suites.json holds the expectation configurations (type, kwargs, meta, notes)
that the expectation literals of suites.py built before they became rows (commit 97ea3ce),
for settings that reach every branch. The rows must build them exactly, in the same order.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from bigdeep.config import ImagePrepare, ImageQuality, SeriesData, SeriesQuality
from bigdeep.quality.ranges import ValueRange
from bigdeep.quality.results import Run, Table
from bigdeep.quality.suites import (
    DATASET,
    NUMERIC_TYPES,
    RECORD,
    Check,
    class_count_suite,
    drift_suite,
    image_suite,
    series_suite,
    suite,
    summary_suite,
)
from bigdeep.quality.timeline import Timeline

GOLDEN = Path(__file__).parent / "data" / "suites.json"
HOUR_US = 3_600_000_000


def _suites() -> dict[str, Any]:
    """Every suite builder, with settings that reach each of its branches."""
    grey, rgb = ImageQuality(), ImageQuality(mode="RGB", classes=["cat", "dog"], min_per_class=5)
    wide = ImageQuality(mode="I;16", height=32, width=48, max_imbalance_ratio=2.5)
    data = SeriesData(timestamp="Time", target="Demand", features=["Temperature", "Temp {C}"])
    strict = SeriesQuality(
        freq="30min", max_gap=None, max_age="2d", bounds={"Demand": (0, None)}, max_robust_z=7.5
    )
    utc = Timeline(
        freq_us=HOUR_US // 2,
        freq_inferred=False,
        zone_kind="utc",
        zones={"+00:00": 90, "Z": 5, "+01:00": 3, "-05:00": 2, "+09:00": 1, "+10:00": 1},
        gap_limit_us=HOUR_US // 2,
    )
    naive = Timeline(freq_us=HOUR_US, zone_kind="naive", zones={"naive": 4}, gap_limit_us=HOUR_US)
    ranges = {
        "Demand": ValueRange("Demand", 1.5, 9e3, 4321.123456, "the last accepted version", 0.0),
        "Temperature": ValueRange("Temperature", None, 45.25, 20.0),
        "Temp {C}": ValueRange("Temp {C}", bound_low=-50.0, bound_high=60.0),
    }
    return {
        "images": image_suite(grey),
        "images_rgb_converted": image_suite(rgb, ImagePrepare(size=(64, 64), mode="RGB")),
        "images_resized": image_suite(grey, ImagePrepare(size=(32, 16))),
        "images_to_grey": image_suite(rgb, ImagePrepare(mode="L")),
        "images_16bit": image_suite(wide),
        "images_classes": class_count_suite(grey),
        "images_classes_rgb": class_count_suite(rgb),
        "images_classes_wide": class_count_suite(wide),
        "images_summary": summary_suite("images", 10, 50_000_000, 25.0, "records"),
        "series_summary": summary_suite("power", 3, 900, 12.5, "rows", 172_800.0, True),
        "images_drift": drift_suite("images", 0.1, 0.25),
        "series": series_suite(SeriesData(), SeriesQuality()),
        "series_naive": series_suite(SeriesData(), SeriesQuality(), naive),
        "series_ranges": series_suite(
            data, strict, utc, frozenset(["Demand", "Temperature", "Temp {C}"]), ranges
        ),
        "series_text": series_suite(data, SeriesQuality(), naive, frozenset(), ranges),
    }


def expectations(suite: Any) -> dict[str, Any]:
    """A suite as JSON: its name and each expectation's type, kwargs, meta and notes."""
    return json.loads(
        json.dumps(
            {
                "name": suite.name,
                "expectations": [
                    {
                        "type": e.expectation_type,
                        "kwargs": e.configuration.kwargs,
                        "meta": e.meta,
                        "notes": e.notes,
                    }
                    for e in suite.expectations
                ],
            },
            default=_json,
        )
    )


def _text(expectation: dict[str, Any]) -> str:
    return json.dumps(expectation, sort_keys=True)


def _json(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON: {value!r}")


def built() -> dict[str, Any]:
    return {case: expectations(suite.gx) for case, suite in _suites().items()}


@pytest.fixture(scope="module")
def golden() -> dict[str, Any]:
    return json.loads(GOLDEN.read_text(encoding="utf-8"))


def test_rows_build_the_suites_the_literals_built(golden):
    now = built()
    assert sorted(now) == sorted(golden)
    for case, frozen in golden.items():
        assert now[case]["name"] == frozen["name"], case
        checks = [e["meta"]["check"] for e in now[case]["expectations"]]
        assert checks == [e["meta"]["check"] for e in frozen["expectations"]], case
        for mine, theirs in zip(now[case]["expectations"], frozen["expectations"], strict=True):
            # as text: 0 and 0.0 are equal numbers, but not the same kwarg
            assert _text(mine) == _text(theirs), (case, theirs["meta"]["check"])


def test_golden_cases_reach_every_branch(golden):
    """The frozen cases hold every check name the builders make, and both finite variants."""
    checks = {e["meta"]["check"] for s in golden.values() for e in s["expectations"]}
    for name in ["columns_extra", "freshness", "gap", "Demand_bounds", "Demand_outlier"]:
        assert name in checks
    assert {"Temp {C}_bounds", "Temperature_outlier", "column_Temp {C}"} <= checks
    finite = {
        e["type"]
        for s in golden.values()
        for e in s["expectations"]
        if e["meta"]["check"].endswith("_finite")
    }
    assert finite == {"expect_column_values_to_be_between", "expect_column_values_to_match_regex"}


# --- a row, end to end: built, validated on a tiny table, said --------------------------------


def test_scope_decides_critical_and_record_level_in_the_meta():
    record = Check("x_max", "validity", RECORD, "ColumnValuesToBeBetween", "x", {"max_value": 5},
                   'record "{key}" has x {value}', "every x is at most 5", observed_column="why")  # fmt: skip
    dataset = Check("gap", "velocity", DATASET, "ColumnValuesToBeBetween", "s", {"max_value": 60},
                    "gap of {value}", "no gap over 1min", duration=True)  # fmt: skip
    built = suite("toy", [record, dataset]).gx.expectations
    assert [e.meta for e in built] == [
        {"v": "validity", "critical": False, "record_level": True, "check": "x_max",
         "says": 'record "{key}" has x {value}', "observed_column": "why"},
        {"v": "velocity", "critical": True, "record_level": False, "check": "gap",
         "says": "gap of {value}", "format": "duration"},
    ]  # fmt: skip
    assert [e.expectation_type for e in built] == ["expect_column_values_to_be_between"] * 2
    assert built[0].configuration.kwargs == {"column": "x", "max_value": 5}
    assert built[1].notes == "no gap over 1min"


def test_a_suite_refuses_two_rows_of_one_name():
    row = Check("x_max", "validity", RECORD, "ColumnValuesToBeBetween", "x", {"max_value": 5},
                "x", "x")  # fmt: skip
    with pytest.raises(ValueError, match="a column is checked twice"):
        suite("toy", [row, row])


def test_sentences_come_from_the_row_fields():
    """A record check says one sentence per failing key (its row read through {rec[...]}), is
    quarantined and counts towards the fraction; a `once` check says one sentence for the
    table even when GX names every failing row (a type check on a mixed column does)."""
    rows = [
        Check("x_max", "validity", RECORD, "ColumnValuesToBeBetween", "x", {"max_value": 5},
              'record "{key}" has x {value} ({rec[note]})', "every x is at most 5"),
        Check("y_type", "variety", DATASET, "ColumnValuesToBeInTypeList", "y",
              {"type_list": NUMERIC_TYPES}, 'column "{column}" has type {dtype}, not numeric',
              "y is numeric", once=True),
    ]  # fmt: skip
    frame = pd.DataFrame(
        {
            "id": ["a", "b", "c"],
            "x": [1.0, 7.0, 9.5],
            "y": pd.array([1.0, "seven", None], dtype=object),
            "note": ["fine", "typo", "sensor"],
        }
    )
    toy = suite("toy", rows)
    run = Run("toy", [toy])
    run.validate(toy, Table(frame, "id"))
    verdict = run.verdict(3, 0.5, "records")

    assert verdict.failures == [
        'toy: record "b" has x 7 (typo)',
        'toy: record "c" has x 9.5 (sensor)',
        'toy: column "y" has type object, not numeric',
        "toy: 2 of 3 records quarantined (66.67%), over max_quarantine_fraction=0.5",
    ]
    assert verdict.quarantine.values.tolist() == [["b", "x_max", "7"], ["c", "x_max", "9.5"]]
    x, y = verdict.entries
    assert (x["critical"], x["record_level"], x["examples"]) == (False, True, ["b", "c"])
    assert (y["critical"], y["record_level"], y["examples"]) == (True, False, [])
    assert not verdict.passed
