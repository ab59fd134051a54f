"""Profile the raw store into tables that Great Expectations can validate.

Images are unstructured, so each one is decoded and described by one row of a table
(`profile_images`); series are validated as they are, so `read_series` only reads them.
The only I/O here is reading the Parquet shards that `bigdeep ingest` wrote.

    profile = profile_images("data/raw/images")   # one row per image, PROFILE_COLUMNS
"""

from __future__ import annotations

import hashlib
import io
import multiprocessing
import os
import warnings
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from PIL import Image, UnidentifiedImageError

# A header may declare any size; 2**24 pixels (4096 x 4096) is far above any image this
# pipeline trains on and far below what would exhaust memory when decoded.
DEFAULT_MAX_PIXELS = 2**24

# Below this many images, spawning workers (each imports pandas and Arrow, ~1 s) costs
# about what it saves on two cores: measured 2.0 s serial vs 1.6-3.7 s with 2 workers at 50k.
PARALLEL_MIN_ROWS = 200_000

# One row per image; the dtypes are nullable where an image that does not decode has no value.
PROFILE_COLUMNS: dict[str, str] = {
    "record_id": "str",
    "source": "str",
    "label": "str",
    "decodes": "bool",
    "error": "str",  # why it did not decode; null when it did
    "height": "Int64",
    "width": "Int64",
    "mode": "str",  # PIL mode: L, RGB, RGBA, I;16, ...
    "channels": "Int64",
    "bit_depth": "Int64",
    "pixel_min": "float64",
    "pixel_max": "float64",
    "pixel_mean": "float64",
    "sha256": "str",  # of the raw bytes
    "duplicate_of": "str",  # record_id of the first record with the same bytes; null if none
}

_RAW_IMAGE_COLUMNS = ["record_id", "source", "label", "image"]

_BIT_DEPTH = {"1": 1, "I;16": 16, "I;16B": 16, "I;16L": 16, "I;16N": 16, "I": 32, "F": 32}


def shard_paths(shards_dir: str | Path) -> list[Path]:
    """The `part-*.parquet` shards of a raw store, in name order."""
    shards_dir = Path(shards_dir)
    if not shards_dir.is_dir():
        raise FileNotFoundError(f"{shards_dir}: no such directory (run `bigdeep ingest` first)")
    return sorted(shards_dir.glob("part-*.parquet"))


def describe_image(data: bytes | None, max_pixels: int = DEFAULT_MAX_PIXELS) -> dict[str, Any]:
    """Decode one image's bytes and describe it; never raises for bad bytes."""
    row: dict[str, Any] = dict.fromkeys(PROFILE_COLUMNS, None)
    row["decodes"] = False
    if data is None:
        row["error"] = "no image bytes"
        return row
    row["sha256"] = hashlib.sha256(data).hexdigest()
    if len(data) == 0:
        row["error"] = "empty file (0 bytes)"
        return row
    try:
        with warnings.catch_warnings():
            # We apply our own, lower limit below, before any pixel is decoded.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
        width, height = im.size
        if width * height > max_pixels:
            row["error"] = (
                f"header declares {width}x{height} pixels, over the limit of {max_pixels}"
            )
            return row
        im.load()  # decodes every pixel: a truncated file fails here
        pixels = np.asarray(im)
    except UnidentifiedImageError:
        row["error"] = "cannot identify image file"  # PIL's message names a memory address
        return row
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, ... for bad bytes
        row["error"] = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
        return row
    row.update(
        decodes=True,
        height=height,
        width=width,
        mode=im.mode,
        channels=len(im.getbands()),
        bit_depth=_BIT_DEPTH.get(im.mode, 8),
    )
    if pixels.size:
        pixels = pixels.astype(np.float64, copy=False)
        row.update(
            pixel_min=float(pixels.min()),
            pixel_max=float(pixels.max()),
            pixel_mean=float(pixels.mean()),
        )
    return row


def _profile_shard(path: Path, max_pixels: int, batch_rows: int = 1024) -> pd.DataFrame:
    """Profile one shard, reading `batch_rows` images at a time to bound memory."""
    rows: list[dict[str, Any]] = []
    for batch in pq.ParquetFile(path).iter_batches(
        batch_size=batch_rows, columns=_RAW_IMAGE_COLUMNS
    ):
        cols = batch.to_pydict()
        for record_id, source, label, data in zip(
            cols["record_id"], cols["source"], cols["label"], cols["image"], strict=True
        ):
            row = describe_image(data, max_pixels)
            row.update(record_id=record_id, source=source, label=label)
            rows.append(row)
    return _typed(pd.DataFrame(rows, columns=list(PROFILE_COLUMNS)))


def _typed(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.astype(PROFILE_COLUMNS)


def _mark_duplicates(profile: pd.DataFrame) -> pd.DataFrame:
    """Fill `duplicate_of`: every later copy of the same bytes points at the first one."""
    hashed = profile["sha256"].notna()
    first = profile[hashed].drop_duplicates("sha256").set_index("sha256")["record_id"]
    later = hashed & profile["sha256"].duplicated(keep="first")
    profile["duplicate_of"] = profile["sha256"].map(first).where(later)
    return _typed(profile)


def profile_images(
    shards_dir: str | Path,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    workers: int | None = None,
) -> pd.DataFrame:
    """One row per image of the raw store (PROFILE_COLUMNS), in shard order.

    workers: processes decoding shards in parallel; None uses every core once the store
    holds at least PARALLEL_MIN_ROWS images, and one process below that.
    """
    paths = shard_paths(shards_dir)
    if workers is None:
        rows = sum(pq.ParquetFile(p).metadata.num_rows for p in paths)
        workers = (os.cpu_count() or 1) if rows >= PARALLEL_MIN_ROWS else 1
    workers = max(1, min(workers, len(paths)))
    parts = list(_profile_shards(paths, max_pixels, workers))
    if not parts:
        return _typed(pd.DataFrame(columns=list(PROFILE_COLUMNS)))
    return _mark_duplicates(pd.concat(parts, ignore_index=True))


def _profile_shards(paths: list[Path], max_pixels: int, workers: int) -> Iterator[pd.DataFrame]:
    if workers == 1:
        for path in paths:
            yield _profile_shard(path, max_pixels)
        return
    # Processes, because decoding holds the GIL; spawned, because forking a process that
    # runs Arrow's threads can deadlock. Results come back in shard order.
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=spawn) as pool:
        yield from pool.map(_profile_shard, paths, [max_pixels] * len(paths))


def read_series(shards_dir: str | Path) -> pd.DataFrame:
    """The raw series, all shards concatenated in name order (a column that is text in one
    shard and numbers in another comes back as object, for validation to flag)."""
    frames = [pd.read_parquet(p) for p in shard_paths(shards_dir)]
    if not frames:
        return pd.DataFrame({"row": pd.Series(dtype="int64")})
    return pd.concat(frames, ignore_index=True)
