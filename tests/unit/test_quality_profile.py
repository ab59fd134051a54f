"""Profiling the raw store: one row per image, bad bytes described, never raised."""

from __future__ import annotations

import hashlib
import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from bigdeep.data.store import read_all, shard_paths
from bigdeep.quality.profile import (
    PROFILE_COLUMNS,
    describe_image,
    profile_images,
)

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

RAW_SCHEMA = pa.schema(
    [
        ("record_id", pa.string()),
        ("source", pa.string()),
        ("label", pa.string()),
        ("image", pa.binary()),
    ]
)


def png(pixels: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels, mode=mode).save(buf, format="PNG")
    return buf.getvalue()


def digit(seed: int, size: tuple[int, int] = (28, 28)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=size, dtype=np.uint8)


def write_shard(path: Path, records: list[tuple[str, str, bytes | None]]) -> None:
    """records: (record_id, label, image bytes) in the canonical raw-store format."""
    table = pa.table(
        {
            "record_id": [r for r, _, _ in records],
            "source": [f"folder:{r}" for r, _, _ in records],
            "label": [label for _, label, _ in records],
            "image": [data for _, _, data in records],
        },
        schema=RAW_SCHEMA,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)


def with_declared_size(data: bytes, width: int, height: int) -> bytes:
    """A PNG whose header (IHDR) claims another size, with a valid CRC."""
    ihdr = bytearray(data[16:29])  # the IHDR chunk's 13 data bytes
    ihdr[0:8] = struct.pack(">II", width, height)
    crc = struct.pack(">I", zlib.crc32(b"IHDR" + bytes(ihdr)))
    return data[:16] + bytes(ihdr) + crc + data[33:]


# --- one image -----------------------------------------------------------------------------


def test_describe_good_grey_image():
    pixels = digit(1)
    data = png(pixels)
    row = describe_image(data)
    assert row["decodes"] is True and row["error"] is None
    assert (row["height"], row["width"], row["mode"]) == (28, 28, "L")
    assert (row["channels"], row["bit_depth"]) == (1, 8)
    assert row["pixel_min"] == pixels.min() and row["pixel_max"] == pixels.max()
    assert row["pixel_mean"] == pytest.approx(pixels.mean())
    assert row["sha256"] == hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (png(digit(2))[:60], "truncated"),
        (b"", "empty file (0 bytes)"),
        (b"7,0,0,0\nnot a png at all\n", "cannot identify image file"),
        (None, "no image bytes"),
    ],
    ids=["truncated", "zero-byte", "text", "null"],
)
def test_describe_bad_bytes_gives_error_not_exception(data, error):
    row = describe_image(data)
    assert row["decodes"] is False
    assert error in row["error"]
    assert row["height"] is None and row["pixel_max"] is None


def test_describe_rgba_and_16_bit():
    rgba = describe_image(png(np.zeros((28, 28, 4), dtype=np.uint8)))
    assert (rgba["mode"], rgba["channels"], rgba["bit_depth"]) == ("RGBA", 4, 8)
    deep = describe_image(png(np.full((28, 28), 40_000, dtype=np.uint16)))
    assert deep["mode"].startswith("I") and deep["bit_depth"] == 16
    assert deep["pixel_max"] == 40_000


def test_header_declaring_a_huge_image_is_refused_before_decoding():
    # over our limit (2**24 pixels) but under PIL's own: refused by the profile's check
    row = describe_image(with_declared_size(png(digit(3)), 5_000, 5_000))
    assert row["decodes"] is False
    assert "5000x5000" in row["error"] and "over the limit" in row["error"]
    # far over PIL's limit: PIL refuses it when opening, and that too is a row, not a raise
    row = describe_image(with_declared_size(png(digit(3)), 100_000, 100_000))
    assert row["decodes"] is False and "DecompressionBomb" in row["error"]
    # the limit is a parameter: an ordinary image over a tiny limit is refused the same way
    assert describe_image(png(digit(3)), max_pixels=100)["decodes"] is False


# --- a store -------------------------------------------------------------------------------


@pytest.fixture
def store(tmp_path: Path) -> Path:
    first = png(digit(10))
    write_shard(
        tmp_path / "raw" / "part-00000.parquet",
        [("0/a.png", "0", first), ("1/b.png", "1", png(digit(11))), ("0/bad.png", "0", b"")],
    )
    write_shard(
        tmp_path / "raw" / "part-00001.parquet",
        [("1/c.png", "1", png(digit(12))), ("0/copy.png", "0", first)],
    )
    return tmp_path / "raw"


def test_profile_images_one_typed_row_per_image_in_shard_order(store: Path):
    profile = profile_images(store)
    assert list(profile.columns) == list(PROFILE_COLUMNS)
    assert {c: str(t) for c, t in profile.dtypes.items()} == PROFILE_COLUMNS
    assert list(profile["record_id"]) == [
        "0/a.png",
        "1/b.png",
        "0/bad.png",
        "1/c.png",
        "0/copy.png",
    ]
    assert list(profile["decodes"]) == [True, True, False, True, True]
    assert profile.loc[2, "error"] == "empty file (0 bytes)"
    assert pd.isna(profile.loc[2, "height"])
    assert profile["source"].iloc[0] == "folder:0/a.png"


def test_profile_marks_later_copies_as_duplicates_across_shards(store: Path):
    profile = profile_images(store).set_index("record_id")
    assert profile.loc["0/copy.png", "duplicate_of"] == "0/a.png"
    assert profile["duplicate_of"].notna().sum() == 1  # the first copy is not a duplicate


@pytest.mark.slow
def test_profile_in_two_processes_equals_one(store: Path):
    pd.testing.assert_frame_equal(
        profile_images(store, workers=2), profile_images(store, workers=1)
    )


def test_profile_of_empty_store_is_empty_with_schema(tmp_path: Path):
    (tmp_path / "raw").mkdir()
    profile = profile_images(tmp_path / "raw")
    assert len(profile) == 0
    assert {c: str(t) for c, t in profile.dtypes.items()} == PROFILE_COLUMNS


def test_profile_of_missing_store_says_what_to_do(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="bigdeep ingest"):
        profile_images(tmp_path / "nowhere")


def test_a_series_store_reads_back_with_its_shards_in_order(tmp_path: Path):
    for i, rows in enumerate([[1, 2], [3]]):
        frame = pd.DataFrame({"row": rows, "Demand": [float(r) * 10 for r in rows]})
        frame.to_parquet(tmp_path / f"part-{i:05d}.parquet")
    series = read_all(tmp_path)
    assert list(series["row"]) == [1, 2, 3]
    assert list(series["Demand"]) == [10.0, 20.0, 30.0]


def test_shard_paths_on_an_empty_or_missing_store(tmp_path: Path):
    (tmp_path / "part-00001.parquet").touch()
    (tmp_path / "part-00000.parquet").touch()
    (tmp_path / "notes.txt").touch()
    assert [p.name for p in shard_paths(tmp_path, empty_ok=False)] == [
        "part-00000.parquet",
        "part-00001.parquet",
    ]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert shard_paths(empty, empty_ok=True) == []  # the gate validates it and says "empty"
    with pytest.raises(FileNotFoundError, match=r"empty: no part-\*\.parquet shards"):
        shard_paths(empty, empty_ok=False)  # a reader needs data
    for empty_ok, says in ((True, "no such directory"), (False, r"no part-\*\.parquet shards")):
        with pytest.raises(FileNotFoundError, match=f"nowhere: {says} .run `bigdeep ingest`"):
            shard_paths(tmp_path / "nowhere", empty_ok=empty_ok)


def test_hash_prefixes_are_the_first_8_bytes_of_each_digest():
    from bigdeep.quality.profile import _prefixes

    digests = [hashlib.sha256(bytes([i])).hexdigest() for i in range(200)]
    digests += ["f" * 16 + "0" * 48, "0" * 64]  # the largest and the smallest prefix
    expected = np.array([int(d[:16], 16) for d in digests], dtype=np.uint64)
    np.testing.assert_array_equal(_prefixes(np.array(digests, dtype=object)), expected)
    assert _prefixes(np.array([], dtype=object)).shape == (0,)


def test_sorted_runs_find_every_key_added_and_stay_few():
    from bigdeep.quality.profile import _SortedRuns

    rng = np.random.default_rng(0)
    keys = np.unique(rng.integers(0, 2**64 - 1, size=20_500, dtype=np.uint64))[:20_000]
    keys = keys[rng.permutation(len(keys))]
    held: dict[int, int] = {}
    runs = _SortedRuns()
    for start in range(0, 19_000, 1000):  # chunks of 1,000, as the gate adds them
        chunk = keys[start : start + 1000]
        runs.add(chunk, np.arange(start, start + len(chunk), dtype=np.int64))
        held.update({int(k): start + i for i, k in enumerate(chunk)})
        assert len(runs.runs) <= 6  # about log2 of the chunks added, not one run per chunk
    probe = keys[rng.permutation(len(keys))]  # the last 1,000 were never added
    expected = [held.get(int(k), -1) for k in probe]
    np.testing.assert_array_equal(runs.find(probe), expected)
