"""Drift: distances computed by hand, reference profiles written and read back."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bigdeep.quality.drift import (
    MAX_CATEGORIES,
    Histogram,
    ProfileBuilder,
    edges_between,
    js_divergence,
    linf_distance,
    load_reference,
    write_reference,
)


def test_js_divergence_known_values():
    assert js_divergence([5, 5], [50, 50]) == 0.0  # shares, not counts, are compared
    assert js_divergence([1, 0], [0, 1]) == 1.0  # disjoint
    # p = (1, 0), q = (1/2, 1/2): m = (3/4, 1/4);
    # JS = 1/2 [log2(4/3)] + 1/2 [1/2 log2(2/3) + 1/2 log2(2)] = 0.3113
    expected = 0.5 * math.log2(4 / 3) + 0.5 * (0.5 * math.log2(2 / 3) + 0.5)
    assert js_divergence([10, 0], [5, 5]) == pytest.approx(expected)
    assert js_divergence([0, 0], [0, 0]) == 0.0 and js_divergence([0, 0], [1, 0]) == 1.0
    with pytest.raises(ValueError, match="differ in length"):
        js_divergence([1, 2], [1, 2, 3])


def test_linf_is_the_largest_change_of_a_share():
    assert linf_distance({"a": 5, "b": 5}, {"a": 50, "b": 50}) == 0.0
    # a: 0.5 -> 0.2, b: 0.5 -> 0.2, c: 0 -> 0.6
    assert linf_distance({"a": 1, "b": 1}, {"a": 1, "b": 1, "c": 3}) == pytest.approx(0.6)
    assert linf_distance({}, {"a": 1}) == 1.0


def test_histogram_puts_outliers_in_the_end_bins_and_skips_non_finite():
    h = Histogram(np.array([0.0, 1.0, 2.0]))
    h.add([-5.0, 0.5, 1.5, 99.0, np.nan, np.inf])
    assert h.counts.tolist() == [2, 2]
    assert edges_between(3.0, 3.0).tolist() == [2.5, 3.5]
    assert len(edges_between(0.0, 1.0)) == 33


def test_builder_measures_drift_on_the_references_edges():
    first = ProfileBuilder("s", {"x": edges_between(0.0, 10.0)}, None)
    first.add_numeric("x", np.linspace(0, 10, 1000))
    first.add_categories("kind", pd.Series(["a", "b"] * 50))
    first.rows = 1000
    reference = first.profile()
    # no reference: nothing to compare, the measures are listed with no value
    assert [(r["measure"], r["js"], r["linf"]) for r in first.drift(None)] == [
        ("x", None, None),
        ("kind", None, None),
    ]

    same = ProfileBuilder("s", {"x": edges_between(0.0, 10.0)}, reference)
    same.add_numeric("x", np.linspace(0, 10, 1000))
    same.add_categories("kind", pd.Series(["a", "b"] * 50))
    assert same.drift(reference) == [
        {"measure": "x", "kind": "numeric", "js": 0.0, "linf": None},
        {"measure": "kind", "kind": "categorical", "js": None, "linf": 0.0},
    ]

    # shifted by 20 (outside the reference's range): every value lands in its last bin
    shifted = ProfileBuilder("s", {"x": edges_between(20.0, 30.0)}, reference)
    shifted.add_numeric("x", np.linspace(20, 30, 1000))
    shifted.add_categories("kind", pd.Series(["a"] * 100))
    rows = {r["measure"]: r for r in shifted.drift(reference)}
    last_bin = np.zeros(32)
    last_bin[-1] = 1
    assert rows["x"]["js"] == pytest.approx(
        js_divergence(reference["numeric"]["x"]["counts"], last_bin)
    )
    assert rows["x"]["js"] > 0.8
    assert rows["kind"]["linf"] == pytest.approx(0.5)
    # its own profile keeps its own edges, for the next comparison
    assert shifted.profile()["numeric"]["x"]["edges"][0] == 20.0


def test_a_text_column_with_many_values_is_not_a_category():
    builder = ProfileBuilder("s", {}, None)
    builder.add_categories("date", pd.Series([f"2024-01-{d:02d}" for d in range(1, 31)]))
    builder.add_categories("flag", pd.Series([True, False]))
    assert MAX_CATEGORIES < 30
    assert set(builder.profile()["categorical"]) == {"flag"}
    builder.add_categories("label", pd.Series([str(i) for i in range(100)]), limit=None)
    assert len(builder.profile()["categorical"]["label"]) == 100


def test_reference_round_trip_and_broken_files(tmp_path: Path):
    assert load_reference(tmp_path / "none.json").profile is None
    profile = {"format": 1, "dataset": "images", "rows": 3, "numeric": {}, "categorical": {}}
    path = write_reference(profile, tmp_path / "ref" / "images.json")
    assert load_reference(path).profile == profile
    assert not (tmp_path / "ref" / "images.json.tmp").exists()

    path.write_text("{oops")
    broken = load_reference(path)
    assert broken.profile is None and "is not readable JSON" in broken.error
    path.write_text(json.dumps({"format": 99}))
    assert "not a bigdeep reference profile" in load_reference(path).error
