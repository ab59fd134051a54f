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
import pytest

from bigdeep.config import ImagePrepare, ImageQuality, SeriesData, SeriesQuality
from bigdeep.quality.ranges import ValueRange
from bigdeep.quality.suites import (
    class_count_suite,
    drift_suite,
    image_suite,
    series_suite,
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
    return {case: expectations(suite) for case, suite in _suites().items()}


@pytest.fixture(scope="module")
def golden() -> dict[str, Any]:
    return json.loads(GOLDEN.read_text(encoding="utf-8"))


def test_rows_build_the_suites_the_literals_built(golden):
    now = built()
    assert sorted(now) == sorted(golden)
    for case, suite in golden.items():
        assert now[case]["name"] == suite["name"], case
        checks = [e["meta"]["check"] for e in now[case]["expectations"]]
        assert checks == [e["meta"]["check"] for e in suite["expectations"]], case
        for mine, theirs in zip(now[case]["expectations"], suite["expectations"], strict=True):
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
