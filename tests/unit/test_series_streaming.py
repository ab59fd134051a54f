"""Series stages read shard by shard and give what reading everything at once gives.

`prepare_series` reduces each raw shard to sums and counts per step; `ingest`'s shards do not
depend on how the source was chunked. Real Parquet stores in tmp_path, values compared exactly.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bigdeep.config import SeriesData, SeriesPrepare
from bigdeep.data.store import read_all, write_shards
from bigdeep.ingest import rebatch
from bigdeep.prepare import prepare_series, prepare_series_frame


def raw_series(rows: int) -> pd.DataFrame:
    """Half-hourly canonical rows (row, timestamp, timestamp_zone, Demand, Temperature)."""
    rng = np.random.default_rng(3)
    return pd.DataFrame(
        {
            "row": np.arange(1, rows + 1, dtype=np.int64),
            "timestamp": pd.date_range("2024-01-01T13:00Z", periods=rows, freq="30min"),
            "timestamp_zone": "Z",
            "Demand": 4000 + 300 * rng.standard_normal(rows),
            "Temperature": 15 + 5 * rng.standard_normal(rows),
        }
    )


@pytest.mark.parametrize("resample", ["1h", "2h", None])
def test_prepare_series_by_shard_equals_the_whole_frame(tmp_path: Path, resample):
    frame = raw_series(301)
    # shards of 37 rows cut hours in two; one shard arrives out of time order
    cuts = [frame.iloc[i : i + 37] for i in range(0, len(frame), 37)]
    cuts[2], cuts[5] = cuts[5], cuts[2]
    write_shards(cuts, tmp_path / "raw")
    quarantine = tmp_path / "quarantine"
    quarantine.mkdir()
    pd.DataFrame({"record": ["40"], "check": ["Demand_finite"]}).to_parquet(
        quarantine / "reasons.parquet"
    )  # row 40 set aside: its hour has one value left
    data, cfg = SeriesData(), SeriesPrepare(resample=resample)

    counts = prepare_series(tmp_path / "raw", quarantine, tmp_path / "out", data, cfg)

    accepted = read_all(tmp_path / "raw")
    accepted = accepted[accepted["row"] != 40]
    expected, meta = prepare_series_frame(accepted, data, cfg)
    got = pd.read_parquet(tmp_path / "out" / "series.parquet")
    # Exact, but for a step of more than two values cut between shards (2h here): its sum is
    # added in two parts, which can differ from one sum in the last bit.
    exact = resample != "2h"
    pd.testing.assert_frame_equal(got, expected, check_exact=exact, rtol=1e-12, atol=1e-12)
    got_meta = json.loads((tmp_path / "out" / "meta.json").read_text())
    assert got_meta == meta if exact else got_meta.keys() == meta.keys()
    steps = {"1h": 151, "2h": 76, None: 300}[resample]  # 301 half-hours from 13:00, one dropped
    assert len(got) == sum(counts.values()) == steps


def test_rebatch_cuts_exact_shards_whatever_the_chunks():
    frame = raw_series(23)
    chunks = [frame.iloc[:5], frame.iloc[5:5], frame.iloc[5:17], frame.iloc[17:]]
    shards = list(rebatch(chunks, 10))
    assert [len(s) for s in shards] == [10, 10, 3]
    pd.testing.assert_frame_equal(pd.concat(shards, ignore_index=True), frame)
    empty = list(rebatch([frame.iloc[:0]], 10))  # no rows: one empty shard keeps the columns
    assert len(empty) == 1 and len(empty[0]) == 0 and list(empty[0].columns) == list(frame.columns)
