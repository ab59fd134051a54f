"""The quality gate with real Great Expectations suites on tiny data made here."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bigdeep.config import ImageQuality, SeriesData, SeriesQuality
from bigdeep.quality.gate import (
    QUARANTINE_COLUMNS,
    GateResult,
    run_gate,
    write_quarantine,
    write_report,
)
from bigdeep.quality.profile import profile_images
from tests.unit.images import digit, png

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

CLASSES = ["0", "1", "2"]
# 12 clean images, 4 per class: one bad record is 1/13 = 7.7% of the data.
IMAGES = ImageQuality(classes=CLASSES, min_rows=3, max_quarantine_fraction=0.01)
SERIES = SeriesQuality(min_rows=10)
COLUMNS = SeriesData(timestamp="Time", target="Demand", features=["Temperature"])


# --- tiny raw stores -----------------------------------------------------------------------


def clean_images() -> list[tuple[str, str, bytes]]:
    return [(f"{i % 3}/{i:02d}.png", str(i % 3), png(digit(i))) for i in range(12)]


def write_images(root: Path, records: list[tuple[str, str, bytes]]) -> Path:
    """The canonical raw image store, in two shards."""
    root.mkdir(parents=True, exist_ok=True)
    half = len(records) // 2
    for i, part in enumerate([records[:half], records[half:]]):
        table = pa.table(
            {
                "record_id": [r for r, _, _ in part],
                "source": [f"folder:{r}" for r, _, _ in part],
                "label": [label for _, label, _ in part],
                "image": [data for _, _, data in part],
            },
            schema=pa.schema(
                [
                    ("record_id", pa.string()),
                    ("source", pa.string()),
                    ("label", pa.string()),
                    ("image", pa.binary()),
                ]
            ),
        )
        pq.write_table(table, root / f"part-{i:05d}.parquet")
    return root


def gate_images(
    tmp_path: Path, records: list[tuple[str, str, bytes]], settings: ImageQuality = IMAGES
) -> GateResult:
    return run_gate("images", profile_images(write_images(tmp_path / "raw", records)), settings)


def clean_series(n: int = 24) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "row": np.arange(1, n + 1, dtype="int64"),
            "Time": pd.date_range("2014-01-01", periods=n, freq="30min", tz="UTC"),
            "Demand": np.linspace(4000.0, 5000.0, n),
            "Temperature": np.linspace(10.0, 20.0, n),
        }
    )


def checks_of(result: GateResult, record: str) -> set[str]:
    q = result.quarantine
    return set(q.loc[q["record"] == record, "check"])


def entry(result: GateResult, check: str) -> dict:
    return next(e for e in result.report["expectations"] if e["check"] == check)


# --- images --------------------------------------------------------------------------------


def test_clean_images_pass(tmp_path: Path):
    result = gate_images(tmp_path, clean_images())
    assert result.passed and result.report["passed"]
    assert result.report["rows"] == 12
    assert result.report["quarantined"] == 0 and len(result.quarantine) == 0
    assert result.report["failures"] == []
    assert all(e["success"] for e in result.report["expectations"])
    by_v = result.report["by_v"]
    assert set(by_v) == {"volume", "variety", "validity", "velocity"}
    assert by_v["volume"]["passed"] >= 2 and by_v["validity"]["passed"] >= 5
    assert entry(result, "row_count")["observed"] == 12


BAD_IMAGES = {
    "truncated": (png(digit(99))[:60], {"decodes"}, "does not decode"),
    "zero-byte": (b"", {"decodes"}, "does not decode (empty file (0 bytes))"),
    "text": (b"hello, I am not a PNG\n", {"decodes"}, "cannot identify image file"),
    "rgba": (png(digit(99, (28, 28, 4))), {"mode", "channels"}, "has 4 channel(s), expected 1"),
    "16-bit": (
        png(digit(99, dtype=np.uint16) | 0x8000),  # every pixel > 255
        {"mode", "bit_depth", "pixel_max"},
        "is 16-bit, expected 8-bit",
    ),
    "wrong-size": (png(digit(99, (32, 30))), {"height", "width"}, "is 32 pixels high, expected 28"),
}


@pytest.mark.parametrize("kind", list(BAD_IMAGES))
def test_bad_image_is_named_and_quarantined(tmp_path: Path, kind: str):
    data, checks, says = BAD_IMAGES[kind]
    result = gate_images(tmp_path, [*clean_images(), ("0/bad.png", "0", data)])
    assert checks_of(result, "0/bad.png") == checks
    assert result.report["quarantined"] == 1  # only the bad one
    assert any(
        f.startswith('images: record "0/bad.png" ') and says in f for f in result.report["failures"]
    )
    for check in checks:
        assert "0/bad.png" in entry(result, check)["examples"]
    assert not result.passed  # 1 of 13 is over the 1% allowed


def test_decode_error_is_the_observed_value(tmp_path: Path):
    result = gate_images(tmp_path, [*clean_images(), ("0/bad.png", "0", b"")])
    assert list(result.quarantine["observed"]) == ["empty file (0 bytes)"]


def test_label_outside_classes_is_quarantined(tmp_path: Path):
    result = gate_images(tmp_path, [*clean_images(), ("cat/x.png", "cat", png(digit(50)))])
    q = result.quarantine
    assert list(q["record"]) == ["cat/x.png"]
    assert list(q["check"]) == ["label_in_classes"] and list(q["observed"]) == ["cat"]
    assert any('record "cat/x.png" has label "cat"' in f for f in result.report["failures"])


def test_missing_class_fails_the_gate_at_dataset_level(tmp_path: Path):
    records = [r for r in clean_images() if r[1] != "2"]
    result = gate_images(tmp_path, records)
    assert not result.passed
    assert len(result.quarantine) == 0  # nothing is wrong with any one record
    assert entry(result, "class_present")["examples"] == ["2"]
    assert (
        'images: class "2" has no records (every class must be present)'
        in result.report["failures"]
    )


def test_class_under_min_per_class_fails(tmp_path: Path):
    settings = IMAGES.model_copy(update={"min_per_class": 5})
    records = [*clean_images(), ("0/x.png", "0", png(digit(60)))]  # 5, 4, 4
    result = gate_images(tmp_path, records, settings)
    assert not result.passed
    assert entry(result, "class_count")["examples"] == ["1", "2"]
    assert (
        'images: class "1" has 4 records, fewer than min_per_class=5' in result.report["failures"]
    )


def test_empty_dataset_fails(tmp_path: Path):
    (tmp_path / "raw").mkdir()
    result = run_gate("images", profile_images(tmp_path / "raw"), IMAGES)
    assert not result.passed
    assert result.report["rows"] == 0 and result.report["quarantined_fraction"] == 0.0
    assert result.report["failures"][0] == "images: no records (the dataset is empty)"
    assert entry(result, "row_count")["success"] is False


def test_exact_duplicate_quarantines_the_later_copy_only(tmp_path: Path):
    records = clean_images()
    records.append(("2/copy.png", "2", records[0][2]))
    result = gate_images(tmp_path, records)
    q = result.quarantine
    assert list(zip(q["record"], q["check"], q["observed"], strict=True)) == [
        ("2/copy.png", "duplicate", records[0][0])
    ]
    assert any(
        'record "2/copy.png" is an exact duplicate of "0/00.png"' in f
        for f in result.report["failures"]
    )


@pytest.mark.parametrize(("allowed", "passes"), [(0.05, False), (0.10, True)])
def test_quarantine_fraction_decides(tmp_path: Path, allowed: float, passes: bool):
    settings = IMAGES.model_copy(update={"max_quarantine_fraction": allowed})
    result = gate_images(tmp_path, [*clean_images(), ("0/bad.png", "0", b"")], settings)
    assert result.report["quarantined_fraction"] == pytest.approx(1 / 13)
    assert result.passed is passes
    over = [f for f in result.report["failures"] if "max_quarantine_fraction" in f]
    assert bool(over) is not passes


def test_missing_profile_column_fails_and_is_named(tmp_path: Path):
    profile = profile_images(write_images(tmp_path / "raw", clean_images()))
    result = run_gate("images", profile.drop(columns=["mode"]), IMAGES)
    assert not result.passed
    assert result.report["failures"][0].startswith("images: profile columns missing: mode")
    assert not any("could not run" in f for f in result.report["failures"])


def test_write_report_is_stable_json(tmp_path: Path):
    result = gate_images(tmp_path, [*clean_images(), ("0/bad.png", "0", b"")])
    path = write_report(result, tmp_path / "reports")
    assert path == tmp_path / "reports" / "images.json"
    first = path.read_bytes()
    assert json.loads(first) == result.report
    assert list(json.loads(first))[:4] == ["dataset", "identity", "passed", "rows"]
    write_report(result, tmp_path / "reports")
    assert path.read_bytes() == first


def test_write_quarantine_copies_bad_records_and_leaves_raw_alone(tmp_path: Path):
    records = [*clean_images(), ("0/bad.png", "0", b"not an image")]
    raw = write_images(tmp_path / "raw", records)
    before = {p.name: p.read_bytes() for p in raw.iterdir()}
    result = run_gate("images", profile_images(raw), IMAGES)
    reasons_path, records_path = write_quarantine(result, raw, tmp_path / "quarantine")

    reasons = pd.read_parquet(reasons_path)
    assert list(reasons.columns) == QUARANTINE_COLUMNS
    assert list(reasons["record"]) == ["0/bad.png"]
    copied = pq.read_table(records_path).to_pylist()
    assert [(r["record_id"], r["image"]) for r in copied] == [("0/bad.png", b"not an image")]
    assert {p.name: p.read_bytes() for p in raw.iterdir()} == before


def test_write_quarantine_writes_empty_files_when_nothing_is_quarantined(tmp_path: Path):
    raw = write_images(tmp_path / "raw", clean_images())
    result = run_gate("images", profile_images(raw), IMAGES)
    write_quarantine(result, raw, tmp_path / "quarantine")
    reasons = pq.read_table(tmp_path / "quarantine" / "reasons.parquet")
    records = pq.read_table(tmp_path / "quarantine" / "records.parquet")
    assert reasons.num_rows == 0 and reasons.column_names == QUARANTINE_COLUMNS
    assert records.num_rows == 0 and records.column_names == [
        "record_id",
        "source",
        "label",
        "image",
    ]


# --- series --------------------------------------------------------------------------------


def gate_series(frame: pd.DataFrame) -> GateResult:
    return run_gate("series", frame, SERIES, COLUMNS)


def test_clean_series_passes():
    result = gate_series(clean_series())
    assert result.passed
    assert result.report["failures"] == [] and len(result.quarantine) == 0
    assert result.report["by_v"]["validity"]["failed"] == 0
    assert entry(result, "row_count")["observed"] == 24


def _nan(f: pd.DataFrame) -> None:
    f.loc[16, "Demand"] = np.nan


def _inf(f: pd.DataFrame) -> None:
    f.loc[16, "Temperature"] = -np.inf


def _duplicate(f: pd.DataFrame) -> None:
    f.loc[16, "Time"] = f.loc[15, "Time"]


def _out_of_order(f: pd.DataFrame) -> None:
    f.loc[[15, 16], "Time"] = f.loc[[16, 15], "Time"].to_numpy()  # rows 16 and 17 swapped


def _unparsed(f: pd.DataFrame) -> None:
    f.loc[16, "Time"] = pd.NaT


def _text(f: pd.DataFrame) -> None:
    f["Temperature"] = f["Temperature"].astype(object)
    f.loc[16, "Temperature"] = "n/a"


BAD_ROWS = {
    # kind: (spoil, checks failed by row 17, a failure sentence, rows quarantined)
    # row 17 is index 16; its timestamp is 2014-01-01T08:00Z
    "nan": (_nan, {"Demand_present"}, "series: row 17 (2014-01-01T08:00Z) Demand is NaN", 1),
    "inf": (
        _inf,
        {"Temperature_finite"},
        "series: row 17 (2014-01-01T08:00Z) Temperature is -inf, not a finite number",
        1,
    ),
    "duplicate": (  # both rows that share the timestamp are flagged
        _duplicate,
        {"timestamp_unique", "timestamp_increasing"},
        "series: row 17 (2014-01-01T07:30Z) Time is not after the row before it",
        2,
    ),
    "out-of-order": (  # only the row that goes back in time; no gap: every time is there
        _out_of_order,
        {"timestamp_increasing"},
        "series: row 17 (2014-01-01T07:30Z) Time is not after the row before it",
        1,
    ),
    "unparsed": (
        _unparsed,
        {"timestamp_present"},
        "series: row 17 Time is missing or did not parse",
        1,
    ),
    "text": (
        _text,
        {"Temperature_finite"},
        'series: row 17 (2014-01-01T08:00Z) Temperature is "n/a", not a finite number',
        1,
    ),
}


@pytest.mark.parametrize("kind", list(BAD_ROWS))
def test_bad_row_fails_and_is_named(kind: str):
    spoil, checks, sentence, quarantined = BAD_ROWS[kind]
    frame = clean_series()
    spoil(frame)
    result = gate_series(frame)
    assert not result.passed  # max_quarantine_fraction is 0 for series
    assert checks_of(result, "17") == checks
    assert sentence in result.report["failures"]
    assert result.report["quarantined"] == quarantined
    assert f"series: {quarantined} of 24 rows quarantined" in result.report["failures"][-1]


def test_duplicate_timestamp_flags_both_rows():
    frame = clean_series()
    _duplicate(frame)
    result = gate_series(frame)
    assert entry(result, "timestamp_unique")["examples"] == [16, 17]
    assert result.report["quarantined"] == 2


def test_text_in_numeric_column_is_also_a_type_failure():
    frame = clean_series()
    _text(frame)
    result = gate_series(frame)
    assert 'series: column "Temperature" has type object, not numeric' in result.report["failures"]
    assert entry(result, "type_Temperature")["critical"] is True


def test_missing_column_is_named_once():
    result = gate_series(clean_series().drop(columns=["Temperature"]))
    assert not result.passed
    assert result.report["failures"] == [
        'series: column "Temperature" missing (columns seen: row, Time, Demand)'
    ]


def test_series_quarantine_copies_rows(tmp_path: Path):
    frame = clean_series()
    _nan(frame)
    raw = tmp_path / "raw"
    raw.mkdir()
    frame.iloc[:12].to_parquet(raw / "part-00000.parquet")
    frame.iloc[12:].to_parquet(raw / "part-00001.parquet")
    result = gate_series(frame)
    _, records_path = write_quarantine(result, raw, tmp_path / "quarantine")
    copied = pd.read_parquet(records_path)
    assert list(copied["row"]) == [17]
    assert copied["Demand"].isna().all()


# --- streaming: chunk by chunk gives what one pass over everything gives --------------------


def test_images_streamed_in_chunks_equal_one_pass(tmp_path: Path):
    records = [
        *clean_images(),
        ("0/bad.png", "0", b""),
        ("2/copy.png", "2", clean_images()[1][2]),  # a copy of 1/01.png, 12 records later
        ("cat/x.png", "cat", png(digit(77))),
    ]
    raw = write_images(tmp_path / "raw", records)
    whole = run_gate("images", profile_images(raw), IMAGES)
    streamed = gate_images_streamed(raw, chunk_rows=4)  # 4 chunks: the copy is in another one
    assert streamed.report == whole.report
    pd.testing.assert_frame_equal(streamed.quarantine, whole.quarantine)
    assert dict(zip(whole.quarantine["record"], whole.quarantine["check"], strict=True)) == {
        "0/bad.png": "decodes",
        "2/copy.png": "duplicate",
        "cat/x.png": "label_in_classes",
    }
    assert streamed.profile == whole.profile
    assert streamed.profile["rows"] == 15
    assert (
        sum(streamed.profile["numeric"]["pixel_intensity"]["counts"]) == 14 * 28 * 28
    )  # every image that decodes, the copy too


def gate_images_streamed(raw: Path, chunk_rows: int) -> GateResult:
    from bigdeep.quality.gate import gate_images

    return gate_images("images", raw, IMAGES, workers=1, chunk_rows=chunk_rows)


@pytest.mark.slow
def test_series_streamed_in_chunks_equal_one_pass(tmp_path: Path):
    from bigdeep.quality.gate import gate_series, plan_series

    frame = clean_series(40)
    frame.loc[9, "Time"] = frame.loc[10, "Time"]  # rows 10 and 11 share a time
    frame = frame.drop(index=[20, 21, 22]).reset_index(
        drop=True
    )  # rows 21-23 go: a 2 h hole before row 24
    frame.loc[30, "Demand"] = np.nan
    # rows 14 and 15 swapped: row 15, the first of a chunk, is not after the row before it
    frame.loc[[13, 14], "Time"] = frame.loc[[14, 13], "Time"].to_numpy()
    frame["note"] = "ok"  # e-mail addresses in two chunks: found in both, masked
    frame.loc[[2, 20], "note"] = ["mail a.b@example.org", "c@example.net"]
    raw = tmp_path / "raw"
    raw.mkdir()
    frame.iloc[:8].to_parquet(raw / "part-00000.parquet")
    frame.iloc[8:].to_parquet(raw / "part-00001.parquet")
    settings = SeriesQuality(min_rows=10, max_gap="1h")
    # 3 rows a chunk, cut from the shards of 8 and 29 rows: the 2 left of the first join the
    # second's first 3
    starts = [c.start for c in plan_series(sorted(raw.iterdir()), 3)]
    assert starts[:5] == [0, 3, 6, 11, 14]

    whole = run_gate("series", frame, settings, COLUMNS)
    streamed = gate_series("series", raw, settings, COLUMNS, chunk_rows=3)
    assert streamed.report == whole.report
    assert streamed.profile == whole.profile  # histograms, categories, robust stats
    assert sum(whole.profile["numeric"]["Demand"]["counts"]) == 36  # 37 rows, one NaN
    notes = {"c***@e***.net": 1, "mail a***@e***.org": 1, "ok": 35}  # counted masked
    assert whole.profile["categorical"]["note"] == notes
    pd.testing.assert_frame_equal(streamed.quarantine, whole.quarantine)
    pd.testing.assert_frame_equal(streamed.privacy, whole.privacy)
    assert whole.report["privacy"]["found"]["email"]["note"]["first_rows"] == [3, 24]
    assert entry(whole, "timestamp_unique")["examples"] == [10, 11]
    assert entry(whole, "timestamp_increasing")["examples"] == [11, 15]
    assert (
        "series: gap of 2h from 2014-01-01T09:30Z to 2014-01-01T11:30Z (before row 24), "
        "over max_gap=1h" in whole.report["failures"]
    )
    assert whole.report["columns"]["freq"] == "30min"


def test_gx_results_absorbed_after_a_trip_through_pickle_say_the_same():
    """Run.validate = run_suite where the chunk is (a Dask worker: the results and the rows
    they name are pickled back) + Run.absorb here; failing rows that are not the first."""
    from bigdeep.quality.results import Run, Table, run_suite
    from bigdeep.quality.suites import series_suite
    from bigdeep.quality.timeline import Deriver, TimelineBuilder, timeline_piece

    frame = clean_series(40)
    frame.loc[25, "Demand"] = np.nan
    frame.loc[31, "Time"] = frame.loc[30, "Time"]
    frame["Temperature"] = frame["Temperature"].astype(object)
    frame.loc[35, "Temperature"] = "n/a"  # a text column: its own type sentence (the dtype)
    builder = TimelineBuilder()
    builder.add(timeline_piece(frame["Time"], None))
    timeline = builder.build()
    required = ["row", "Time", "Demand", "Temperature"]
    table = Table(Deriver(timeline, "Time").derive(frame), "row", "Time", "rows", required)
    suite = series_suite(COLUMNS, SERIES, timeline, frozenset({"Demand"}))

    whole, split = Run("series", [suite]), Run("series", [suite])
    whole.validate(suite, table)
    validated = pickle.loads(pickle.dumps(run_suite("series", suite, table)))
    split.absorb(validated)
    # the first row and the rows GX named: 26 (NaN), 31 and 32 (one time), 33 (after the
    # hole the repeat left), 36 (text); not every row, as the text column's type check does
    assert validated.table.frame["row"].tolist() == [1, 26, 31, 32, 33, 36]
    assert list(validated.table.frame.columns) == list(table.frame.columns)
    a, b = whole.verdict(40, 1.0, "rows"), split.verdict(40, 1.0, "rows")
    assert b.entries == a.entries
    assert b.failures == a.failures
    pd.testing.assert_frame_equal(b.quarantine, a.quarantine)
    assert "series: row 26 (2014-01-01T12:30Z) Demand is NaN" in b.failures
    assert "series: row 32 (2014-01-01T15:00Z) Time is duplicated (2 rows share it)" in b.failures
    assert 'series: column "Temperature" has type object, not numeric' in b.failures
    assert sorted(b.quarantine["record"].astype(int).unique()) == [26, 31, 32, 36]


def test_timestamps_outside_the_nanosecond_range_are_checked_not_crashed():
    frame = clean_series()
    frame["Time"] = pd.date_range("2300-01-01", periods=24, freq="30min", tz="UTC").as_unit("s")
    frame.loc[16, "Time"] = frame.loc[15, "Time"]
    result = gate_series(frame)
    assert entry(result, "timestamp_unique")["examples"] == [16, 17]
    assert (
        "series: row 17 (2300-01-01T07:30Z) Time is duplicated (2 rows share it)"
        in (result.report["failures"])
    )


def test_record_checks_run_per_unit_give_the_report_of_one_validation(tmp_path, monkeypatch):
    """gate_images runs the record checks on each unit of UNIT_ROWS images where it is
    decoded (a Dask worker, a decoding process) and the duplicate check, which needs the whole
    store, here; the report and quarantine are those of one validation of the whole profile."""
    import bigdeep.quality.gate as gate
    import bigdeep.quality.profile as profile

    monkeypatch.setattr(profile, "UNIT_ROWS", 5)
    ran: list[str] = []
    run_suite = gate.run_suite
    monkeypatch.setattr(gate, "run_suite", lambda *a: ran.append(a[1].name) or run_suite(*a))
    clean = clean_images() * 3  # 36 images, each content three times: 24 duplicates
    records = [(f"{i % 3}/{i:02d}.png", label, data) for i, (_, label, data) in enumerate(clean)]
    for i in (7, 13, 20):  # one that does not decode in each of three units of one chunk
        records[i] = (f"{i % 3}/{i:02d}.png", str(i % 3), b"")
    records[29] = ("2/29.png", "7", png(digit(29)))  # a label outside the classes
    raw = tmp_path / "raw"
    for k in range(6):  # twelve shards of 3 images: a unit of 5+ images is two shards
        write_images(tmp_path / f"s{k}", records[6 * k : 6 * k + 6])
        for j, shard in enumerate(sorted((tmp_path / f"s{k}").glob("part-*.parquet"))):
            raw.mkdir(exist_ok=True)
            shard.rename(raw / f"part-{2 * k + j:05d}.parquet")

    settings = IMAGES.model_copy(update={"max_quarantine_fraction": 1.0})
    streamed = gate.gate_images("images", raw, settings, chunk_rows=14)
    assert ran.count("images") == 6  # the unit checks ran once per unit, not per chunk
    whole = run_gate("images", profile_images(raw), settings)
    assert streamed.report == whole.report
    pd.testing.assert_frame_equal(streamed.quarantine, whole.quarantine)
    # later copies in every unit (over 10: the examples are cut), three that do not decode
    assert sorted(whole.quarantine["check"].value_counts().items()) == [
        ("decodes", 3),
        ("duplicate", 22),  # with two copies of the empty file
        ("label_in_classes", 1),
    ]
    assert entry(whole, "decodes")["examples"] == ["1/07.png", "1/13.png", "2/20.png"]
