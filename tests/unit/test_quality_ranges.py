"""Series values far outside their range: the robust outlier check and the bounds in params.yaml.

The gate's own functions on tiny frames, and `bigdeep ingest` + `bigdeep validate` through
`bigdeep.cli.main` in a tmp project: a CSV with a spike, with and without an accepted
reference, and the builtin Victoria demand (no false positives).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from bigdeep.cli import main
from bigdeep.config import SeriesData, SeriesQuality
from bigdeep.quality.gate import GateResult, run_gate
from bigdeep.quality.ranges import RobustSample, accepted_range, hashes, value_ranges

COLUMNS = SeriesData(timestamp="Time", target="Demand", features=["Temperature"])
ROWS = 48  # hourly, 2024-01-01T00:00Z .. 2024-01-02T23:00Z; row k is at (k - 1) h


def series(n: int = ROWS) -> pd.DataFrame:
    """Demand with a daily cycle and noise around ~4600, temperature around 15."""
    rng = np.random.default_rng(0)
    hours = np.arange(n)
    return pd.DataFrame(
        {
            "row": hours + 1,
            "Time": pd.date_range("2024-01-01", periods=n, freq="h", tz="UTC"),
            "Demand": (4600 + 800 * np.sin(hours * 2 * np.pi / 24) + rng.normal(0, 50, n)).round(1),
            "Temperature": (15 + 5 * np.sin(hours * 2 * np.pi / 24) + rng.normal(0, 1, n)).round(2),
        }
    )


def gate(frame: pd.DataFrame, **settings) -> GateResult:
    return run_gate("series", frame, SeriesQuality(min_rows=10, **settings), COLUMNS)


def reasons(result: GateResult) -> list[tuple[str, str, str]]:
    return sorted(result.quarantine.itertuples(index=False, name=None))


# --- the robust range --------------------------------------------------------------------


def test_sample_is_the_same_whatever_the_chunks_and_close_to_exact():
    rng = np.random.default_rng(1)
    values = rng.lognormal(8, 0.3, 100_000)
    values[::97] = np.nan  # skipped, not counted

    def sampled(chunk: int) -> dict:
        s = RobustSample(size=4_000)  # 100k values: the sample halves several times
        for start in range(0, len(values), chunk):
            part = values[start : start + chunk]
            s.add(part, hashes(start, len(part)))
        return s.stats()

    def merged(chunk: int, order) -> dict:
        """Each chunk sampled on its own (a Dask worker), the samples merged in `order`."""
        parts = []
        for start in range(0, len(values), chunk):
            part = values[start : start + chunk]
            parts.append(RobustSample(size=4_000))
            parts[-1].add(part, hashes(start, len(part)))
        total = RobustSample(size=4_000)
        for sample in order(parts):
            total.merge(sample)
        return total.stats()

    one, many = sampled(len(values)), sampled(7_919)
    assert one == many
    assert merged(7_919, list) == one
    assert merged(20_011, reversed) == one
    assert 4_000 <= one["sampled"] <= 8_000
    finite = values[np.isfinite(values)]
    assert one["count"] == len(finite)
    assert (one["min"], one["max"]) == (finite.min(), finite.max())  # every row, not the sample
    exact = np.median(finite)
    assert abs(one["median"] - exact) / exact < 0.01
    # a right-skewed column: more spread above the median than below
    assert one["high_scale"] > one["low_scale"] > 0


def test_accepted_range_sides_and_a_side_without_spread():
    assert accepted_range({"median": 10.0, "low_scale": 1.0, "high_scale": 2.0}, 5) == (5.0, 20.0)
    # 99% of the values are 0 (a rare-event column): the upper side has no spread, so it is
    # bounded by the largest value seen, never by the median itself
    s = RobustSample()
    v = np.zeros(1000)
    v[:3] = 1.0
    s.add(v, hashes(0, len(v)))
    stats = s.stats()
    assert stats["median"] == 0 and stats["high_scale"] == 0
    assert accepted_range(stats, 20) == (0.0, 1.0)


def test_reference_stats_win_and_bounds_replace_their_side():
    own = {"Demand": {"median": 5.0, "low_scale": 1.0, "high_scale": 1.0, "min": 0, "max": 9}}
    reference = {"robust": {"Demand": {**own["Demand"], "median": 100.0}}}
    r = value_ranges(["Demand", "Temperature"], own, reference, 10, {"Demand": (0.0, None)})
    assert (r["Demand"].low, r["Demand"].high, r["Demand"].median) == (None, 110.0, 100.0)
    assert (r["Demand"].bound_low, r["Demand"].bound_high) == (0.0, None)
    assert r["Demand"].source == "the last accepted version"
    assert not r["Temperature"].robust and not r["Temperature"].bounded  # no values: no check
    assert not value_ranges(["Demand"], own, None, None, {})["Demand"].robust  # k null: off


# --- the gate ------------------------------------------------------------------------------


def test_spike_1000x_the_median_is_named_by_row_and_timestamp():
    frame = series()
    median = float(frame["Demand"].median())
    frame.loc[16, "Demand"] = round(median * 1000)  # row 17, 2024-01-01T16:00Z
    result = gate(frame)
    assert not result.passed  # max_quarantine_fraction 0: one row fails the series
    assert reasons(result) == [("17", "Demand_outlier", str(round(median * 1000)))]
    sentence = result.report["failures"][0]
    assert sentence.startswith(
        f"series: row 17 (2024-01-01T16:00Z) Demand is {round(median * 1000)}, far outside "
        "the accepted range "
    )
    measured = float(frame["Demand"].median())  # of this data, the spike included: robust
    assert abs(measured - median) < 100
    assert f"median {measured:.6g} of this data +- 20 robust deviations" in sentence
    assert "set quality.series.bounds.Demand: [low, high] in params.yaml" in sentence
    assert result.report["failures"][1] == (
        "series: 1 of 48 rows quarantined (2.08%), over max_quarantine_fraction=0"
    )
    low, high = result.report["columns"]["ranges"]["Demand"]["outlier"]
    assert low < frame["Demand"].drop(16).min() and frame["Demand"].drop(16).max() < high
    entry = next(e for e in result.report["expectations"] if e["check"] == "Demand_outlier")
    assert entry["v"] == "validity" and entry["record_level"] and not entry["critical"]
    assert entry["examples"] == [17] and entry["unexpected_count"] == 1


def test_clean_series_passes_and_the_reference_keeps_its_median_and_spread():
    result = gate(series())
    assert result.passed, result.report["failures"]
    robust = result.profile["robust"]
    assert set(robust) == {"Demand", "Temperature"}
    assert robust["Demand"]["median"] == pytest.approx(series()["Demand"].median())
    assert robust["Demand"]["count"] == ROWS


def test_inf_and_nan_are_named_by_their_own_checks_only():
    frame = series()
    frame.loc[16, "Temperature"] = -np.inf
    frame.loc[17, "Demand"] = np.nan
    result = gate(frame)
    assert reasons(result) == [
        ("17", "Temperature_finite", "-inf"),
        ("18", "Demand_present", "NaN"),
    ]


def test_bounds_from_params_name_the_key_and_replace_the_robust_side():
    frame = series()
    frame.loc[4, "Demand"] = -3.0  # row 5
    frame.loc[16, "Demand"] = 4_600_000.0  # row 17: under the bound set below, so accepted
    result = gate(frame, bounds={"Demand": (0.0, 1e7)})
    assert reasons(result) == [("5", "Demand_bounds", "-3")]
    assert result.report["failures"][0] == (
        "series: row 5 (2024-01-01T04:00Z) Demand is -3, outside quality.series.bounds.Demand "
        "= [0, 1e+07]: correct the row at the source, or change the bound in params.yaml"
    )
    checks = [e["check"] for e in result.report["expectations"]]
    assert "Demand_outlier" not in checks  # both sides bounded by params.yaml
    assert "Temperature_outlier" in checks

    # a bound on one side only: the robust check keeps the other
    one_side = gate(frame, bounds={"Demand": (0.0, None)})
    assert reasons(one_side) == [("17", "Demand_outlier", "4600000"), ("5", "Demand_bounds", "-3")]


def test_max_robust_z_null_turns_the_outlier_check_off():
    frame = series()
    frame.loc[16, "Demand"] = 4_600_000.0
    result = gate(frame, max_robust_z=None)
    assert result.passed
    assert not [e for e in result.report["expectations"] if e["check"].endswith("_outlier")]


def test_a_column_without_numbers_gets_no_range_check_and_does_not_crash():
    frame = series()
    frame["Demand"] = np.nan
    result = gate(frame)
    assert not result.passed
    assert {c for _, c, _ in reasons(result)} == {"Demand_present"}
    assert result.report["columns"]["ranges"]["Demand"]["outlier"] == [None, None]


# --- through the CLI -----------------------------------------------------------------------


class Project:
    def __init__(self, root: Path, capsys: pytest.CaptureFixture[str]) -> None:
        self.root, self.capsys = root, capsys

    def params(self, quality: dict | None = None, source: str = "csv:src/series.csv") -> None:
        data = {"series": {"source": source, "last_days": None}}
        text = yaml.safe_dump({"data": data, "quality": {"series": quality or {}}})
        (self.root / "params.yaml").write_text(text)

    def write(self, frame: pd.DataFrame) -> None:
        (self.root / "src").mkdir(exist_ok=True)
        out = frame.drop(columns=["row"]).assign(Time=frame["Time"].dt.strftime("%Y-%m-%dT%H:%MZ"))
        out.to_csv(self.root / "src" / "series.csv", index=False)

    def run(self, *validate: str) -> tuple[int, str, dict | None]:
        self.capsys.readouterr()
        code = main(["ingest", "series", "--out", "data/raw/series"])
        if code == 0:
            args = ["--raw", "data/raw/series", "--report", "reports/quality/series.json"]
            code = main(["validate", "series", *args, "--quarantine", "q", *validate])
        captured = self.capsys.readouterr()
        path = self.root / "reports" / "quality" / "series.json"
        return code, captured.err, json.loads(path.read_text()) if path.exists() else None

    def reference(self) -> Path:
        """Where the gate keeps the accepted profile of this source's dataset identity."""
        from bigdeep.config import load_settings

        identity = load_settings(self.root / "params.yaml").data.series.identity
        return self.root / "data" / "reference" / "series" / f"{identity}.json"

    def quarantined(self) -> tuple[list[tuple[str, ...]], pd.DataFrame]:
        reasons = pd.read_parquet(self.root / "q" / "reasons.parquet")
        return sorted(reasons.itertuples(index=False, name=None)), pd.read_parquet(
            self.root / "q" / "records.parquet"
        )


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> Project:
    monkeypatch.chdir(tmp_path)
    p = Project(tmp_path, capsys)
    p.params()
    return p


def test_cli_spike_without_a_reference_fails_naming_row_and_fix(project: Project):
    frame = series()
    frame.loc[16, "Demand"] = 4_600_000.0
    project.write(frame)
    code, err, report = project.run()
    assert code == 3
    assert "series: row 17 (2024-01-01T16:00Z) Demand is 4600000, far outside" in err
    assert "of this data" in err and "quality.series.bounds.Demand" in err
    assert report["passed"] is False and report["quarantined"] == 1
    reasons, records = project.quarantined()
    assert reasons == [("17", "Demand_outlier", "4600000")]
    assert records["row"].tolist() == [17] and records["Demand"].tolist() == [4_600_000.0]
    assert not (project.reference()).exists()  # not accepted


def test_cli_spike_against_the_accepted_reference(project: Project):
    project.write(series())
    assert project.run()[0] == 0
    reference = project.reference()
    accepted = json.loads(reference.read_text())
    assert accepted["robust"]["Demand"]["median"] == pytest.approx(series()["Demand"].median())

    # the next version: 40% of the rows are 1000x. Half the data is no longer a safe baseline
    # for itself, the accepted version is: every bad row is named.
    frame = series()
    bad = frame.index[frame.index % 5 < 2]
    frame.loc[bad, "Demand"] *= 1000
    project.write(frame)
    before = reference.read_bytes()
    code, err, report = project.run()
    assert code == 3
    assert report["columns"]["ranges"]["Demand"]["from"] == "the last accepted version"
    reasons, _ = project.quarantined()
    assert [r for r, c, _ in reasons if c == "Demand_outlier"] == sorted(str(i + 1) for i in bad)
    assert "of the last accepted version +- 20 robust deviations" in err
    assert reference.read_bytes() == before  # a rejected version never becomes the reference


def test_cli_bounds_from_params(project: Project):
    frame = series()
    frame.loc[4, "Demand"] = -3.0
    project.write(frame)
    project.params({"bounds": {"Demand": [0, None]}})
    code, err, report = project.run()
    assert code == 3
    assert "series: row 5 (2024-01-01T04:00Z) Demand is -3, outside " in err
    assert "quality.series.bounds.Demand = [0, null]" in err
    assert project.quarantined()[0] == [("5", "Demand_bounds", "-3")]
    assert report["columns"]["ranges"]["Demand"]["bounds"] == [0.0, None]

    project.params({"bounds": {"Demand": [-10, None]}})  # the fix the message names
    assert project.run()[0] == 0


def test_cli_bounds_on_a_column_that_is_not_checked_is_a_config_error(project: Project):
    project.write(series())
    project.params({"bounds": {"Demnd": [0, None]}})
    code, err, _ = project.run()
    assert code == 2
    assert "quality.series.bounds.Demnd: 'Demnd' is not the series target or a feature" in err
    assert "Traceback" not in err


@pytest.mark.slow
def test_builtin_series_passes_with_no_false_positives(project: Project):
    """The whole builtin Victoria demand (52,608 half-hours), as ingested, against itself."""
    project.params(source="builtin:vic_elec")
    code, err, report = project.run()
    assert code == 0, err
    assert report["rows"] == 52_608 and report["quarantined"] == 0
    ranges = report["columns"]["ranges"]
    assert ranges["Demand"]["from"] == "this data"
    low, high = ranges["Demand"]["outlier"]
    assert low < 2857.9 and 9345.1 < high  # the builtin minimum and maximum
    # a second run: measured against the reference the first one wrote
    code, err, report = project.run()
    assert code == 0, err
    assert report["columns"]["ranges"]["Demand"]["from"] == "the last accepted version"
