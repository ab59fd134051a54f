"""Profile the raw store into tables that Great Expectations can validate.

Images are unstructured, so each one is decoded and described by one row of a table.
`iter_image_profiles` streams the store in chunks (bounded memory, decoding on every
core); `profile_images` gathers the chunks into one table for small stores and tests.
Series are validated as they are (the gate reads their shards itself). The only I/O here is
reading the Parquet shards that `bigdeep ingest` wrote.

    for chunk in iter_image_profiles("data/raw/images"):   # chunk.frame: PROFILE_COLUMNS
        ...
    profile = profile_images("data/raw/images")            # one row per image
"""

from __future__ import annotations

import hashlib
import io
import multiprocessing
import os
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from PIL import Image, UnidentifiedImageError

from bigdeep.data.store import shard_paths

if TYPE_CHECKING:
    from bigdeep.compute import Executor

# A header may declare any size; 2**24 pixels (4096 x 4096) is far above any image this
# pipeline trains on and far below what would exhaust memory when decoded.
DEFAULT_MAX_PIXELS = 2**24

# Below this many images, starting worker processes (each imports pandas and Arrow) costs
# about what they save (figures: tests/benchmarks/README.md, "Profiling images").
PARALLEL_MIN_ROWS = 200_000

# Images per chunk handed to validation: large enough that GX's fixed cost per run is small,
# small enough that a chunk's profile stays a few MB.
CHUNK_ROWS = 50_000

# Images per unit of work when the record checks run where the images are decoded (`check`):
# consecutive row groups, so GX's fixed cost per run (~0.07 s) stays under ~10 us an image,
# and a 1M-image store still makes 100 units to spread over the workers.
UNIT_ROWS = 10_000

# Pixel intensities are histogrammed over 0..255 (8-bit images only); per-image means over
# fixed 8-wide bins. Fixed edges make histograms of two versions comparable without a pass
# over the reference.
INTENSITY_BINS = 256
MEAN_EDGES = np.arange(0, 257, 8, dtype=np.float64)  # 32 bins

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


def mode_bands(mode: str) -> tuple[int, int]:
    """(channels, bit depth) of a PIL mode: L -> (1, 8), RGBA -> (4, 8), I;16 -> (1, 16)."""
    from PIL import ImageMode

    return len(ImageMode.getmode(mode).bands), _BIT_DEPTH.get(mode, 8)


# --- one image -----------------------------------------------------------------------------


def describe_image(data: bytes | None, max_pixels: int = DEFAULT_MAX_PIXELS) -> dict[str, Any]:
    """Decode one image's bytes and describe it; never raises for bad bytes."""
    return _describe(data, max_pixels)[0]


def _describe(data: bytes | None, max_pixels: int) -> tuple[dict[str, Any], np.ndarray | None]:
    """(profile row, decoded pixels or None)."""
    row: dict[str, Any] = dict.fromkeys(PROFILE_COLUMNS, None)
    row["decodes"] = False
    if data is None:
        row["error"] = "no image bytes"
        return row, None
    row["sha256"] = hashlib.sha256(data).hexdigest()
    if len(data) == 0:
        row["error"] = "empty file (0 bytes)"
        return row, None
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
            return row, None
        im.load()  # decodes every pixel: a truncated file fails here
        pixels = np.asarray(im)
    except UnidentifiedImageError:
        row["error"] = "cannot identify image file"  # PIL's message names a memory address
        return row, None
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, ... for bad bytes
        row["error"] = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
        return row, None
    row.update(
        decodes=True,
        height=height,
        width=width,
        mode=im.mode,
        channels=len(im.getbands()),
        bit_depth=_BIT_DEPTH.get(im.mode, 8),
    )
    if pixels.size:
        # min/max on the native dtype; the mean in float64 so 16-bit sums cannot overflow
        row.update(
            pixel_min=float(pixels.min()),
            pixel_max=float(pixels.max()),
            pixel_mean=float(pixels.mean(dtype=np.float64)),
        )
    return row, pixels


# --- a store, streamed ---------------------------------------------------------------------


@dataclass
class ProfileChunk:
    """Consecutive images of the store, profiled."""

    frame: pd.DataFrame  # PROFILE_COLUMNS, duplicate_of filled across the whole store so far
    intensity: np.ndarray  # (INTENSITY_BINS,) int64: pixel values of the chunk's 8-bit images
    # what `check` returned for each unit of the chunk, in order, computed where the unit was
    # decoded (before duplicates were marked); None when no check was given
    checked: list[Any] | None = None


@dataclass(frozen=True)
class _Part:
    """One row group of one shard: the unit of work of a decoding process."""

    path: Path
    row_group: int
    start: int  # position of its first record in the store
    rows: int


def _parts(paths: list[Path]) -> list[_Part]:
    parts, start = [], 0
    for path in (p.resolve() for p in paths):  # absolute: a Dask worker may run elsewhere
        meta = pq.ParquetFile(path).metadata
        for g in range(meta.num_row_groups):
            n = meta.row_group(g).num_rows
            parts.append(_Part(path, g, start, n))
            start += n
    return parts


def _profile_part(part: _Part, max_pixels: int) -> ProfileChunk:
    """Profile one row group, `batch_rows` images at a time (runs in a worker process)."""
    rows: list[dict[str, Any]] = []
    intensity = np.zeros(INTENSITY_BINS, dtype=np.int64)
    table = pq.ParquetFile(part.path).read_row_group(part.row_group, columns=_RAW_IMAGE_COLUMNS)
    for batch in table.to_batches(max_chunksize=1024):
        cols = batch.to_pydict()
        for record_id, source, label, data in zip(
            cols["record_id"], cols["source"], cols["label"], cols["image"], strict=True
        ):
            row, pixels = _describe(data, max_pixels)
            row.update(record_id=record_id, source=source, label=label)
            rows.append(row)
            if pixels is not None and pixels.dtype == np.uint8:
                intensity += np.bincount(pixels.ravel(), minlength=INTENSITY_BINS)
    return ProfileChunk(_typed(pd.DataFrame(rows, columns=list(PROFILE_COLUMNS))), intensity)


def _profile_unit(parts: list[_Part], max_pixels: int, check: Callable[[pd.DataFrame], Any]):
    """Profile consecutive row groups and run `check` on their profile (in a worker)."""
    chunk = _join([_profile_part(part, max_pixels) for part in parts])
    chunk.checked = [check(chunk.frame)]
    return chunk


def _units(parts: list[_Part], rows: int) -> list[list[_Part]]:
    """Consecutive row groups, at least `rows` images a unit (the last may hold fewer)."""
    units: list[list[_Part]] = [[]]
    for part in parts:
        if sum(p.rows for p in units[-1]) >= rows:
            units.append([])
        units[-1].append(part)
    return units if units[0] else []


def _typed(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.astype(PROFILE_COLUMNS)


def empty_profile() -> pd.DataFrame:
    return _typed(pd.DataFrame(columns=list(PROFILE_COLUMNS)))


def iter_image_profiles(
    shards_dir: str | Path,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    workers: int | None = None,
    chunk_rows: int = CHUNK_ROWS,
    executor: Executor | None = None,
    check: Callable[[pd.DataFrame], Any] | None = None,
) -> Iterator[ProfileChunk]:
    """Profile the store in chunks of about `chunk_rows` images, in store order.

    Memory is bounded by a few chunks plus 16 bytes per image (the hashes that find exact
    duplicates across the whole store). executor: a Dask cluster (bigdeep.compute) decodes
    the row groups; without one, `workers` decoding processes here: None uses every core
    once the store holds at least PARALLEL_MIN_ROWS images, and one process below that.
    Duplicates are marked here, in store order, so the result does not depend on either.
    check: run on the profile of each unit of UNIT_ROWS images where it is decoded (a
    picklable callable: the gate's record checks), its results in `chunk.checked`.
    """
    parts = _parts(shard_paths(shards_dir, empty_ok=True))
    if check is None:
        fn, items, args = _profile_part, parts, (max_pixels,)
    else:
        fn, items, args = _profile_unit, _units(parts, UNIT_ROWS), (max_pixels, check)
    if executor is not None:
        profiled = executor.map_ordered(fn, items, *args)
    else:
        if workers is None:
            total = sum(p.rows for p in parts)
            workers = (os.cpu_count() or 1) if total >= PARALLEL_MIN_ROWS else 1
        workers = max(1, min(workers, len(items) or 1))
        profiled = _ordered_map(fn, items, args, workers)
    duplicates = _Duplicates(parts)
    pending: list[ProfileChunk] = []
    for part in profiled:
        pending.append(part)
        if sum(len(p.frame) for p in pending) >= chunk_rows:
            yield duplicates.mark(_join(pending))
            pending = []
    if pending:
        yield duplicates.mark(_join(pending))


def profile_images(
    shards_dir: str | Path,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    workers: int | None = None,
) -> pd.DataFrame:
    """One row per image of the raw store (PROFILE_COLUMNS), in shard order; the summed
    intensity histogram of its 8-bit images is in `.attrs["intensity"]` (a list of 256 ints).
    Holds the whole profile in memory: for large stores use `iter_image_profiles`."""
    chunks = list(iter_image_profiles(shards_dir, max_pixels=max_pixels, workers=workers))
    chunk = _join(chunks) if chunks else ProfileChunk(empty_profile(), _no_intensity())
    profile = chunk.frame
    profile.attrs["intensity"] = chunk.intensity.tolist()
    return profile


def _no_intensity() -> np.ndarray:
    return np.zeros(INTENSITY_BINS, dtype=np.int64)


def _join(chunks: list[ProfileChunk]) -> ProfileChunk:
    frame = pd.concat([c.frame for c in chunks], ignore_index=True) if chunks else empty_profile()
    intensity = sum((c.intensity for c in chunks), _no_intensity())
    checked = None
    if chunks and all(c.checked is not None for c in chunks):
        checked = [result for c in chunks for result in c.checked or []]
    return ProfileChunk(_typed(frame), intensity, checked)


def _ordered_map(
    fn: Callable[..., ProfileChunk], items: list[Any], args: tuple[Any, ...], workers: int
) -> Iterator[ProfileChunk]:
    """fn(item, *args) over items, results in order, at most 2 x workers items in flight
    (so results cannot pile up faster than validation consumes them)."""
    if workers == 1:
        for item in items:
            yield fn(item, *args)
        return
    # Processes, because decoding holds the GIL; spawned, because forking a process that
    # runs Arrow's threads can deadlock.
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=spawn) as pool:
        todo: Iterator[Any] = iter(items)
        flight: deque[Future[ProfileChunk]] = deque()
        for item in _take(todo, 2 * workers):
            flight.append(pool.submit(fn, item, *args))
        while flight:
            result = flight.popleft().result()
            for item in _take(todo, 1):
                flight.append(pool.submit(fn, item, *args))
            yield result


def _take(items: Iterator[Any], n: int) -> Iterable[Any]:
    for _ in range(n):
        item = next(items, None)
        if item is None:
            return
        yield item


# hex digit (ASCII code) -> its value; sha256 hex digests are lower case
_HEX = np.zeros(256, dtype=np.uint64)
_HEX[np.frombuffer(b"0123456789abcdef", np.uint8)] = np.arange(16, dtype=np.uint64)
_NIBBLE_SHIFTS = np.arange(60, -4, -4, dtype=np.uint64)  # 16 hex digits -> one uint64


def _prefixes(digests: np.ndarray) -> np.ndarray:
    """The first 8 bytes of each hex sha256 digest as a uint64: int(d[:16], 16) for each d,
    without a Python step per image (the driver does this for every image of the store)."""
    digits = np.frombuffer(digests.astype("S16").tobytes(), np.uint8).reshape(-1, 16)
    return np.bitwise_or.reduce(_HEX[digits] << _NIBBLE_SHIFTS, axis=1)


class _SortedRuns:
    """Distinct uint64 keys, each with an int64 value, kept in sorted runs whose sizes at
    least double from the newest to the oldest (as the digits of a binary counter): adding a
    chunk's keys merges only runs no larger than it, so a store of N keys costs
    O(N log N) in all. One sorted array re-sorted per chunk costs O(N) per chunk: quadratic,
    hours of driver time at 100M images."""

    def __init__(self) -> None:
        self.runs: list[tuple[np.ndarray, np.ndarray]] = []  # (sorted keys, values), oldest first

    def find(self, keys: np.ndarray) -> np.ndarray:
        """The value of each key, -1 for a key not held."""
        found = np.full(len(keys), -1, dtype=np.int64)
        for run_keys, run_values in self.runs:
            at = np.searchsorted(run_keys, keys).clip(max=len(run_keys) - 1)
            hit = run_keys[at] == keys
            found[hit] = run_values[at[hit]]
        return found

    def add(self, keys: np.ndarray, values: np.ndarray) -> None:
        """Hold `keys` (distinct, none held yet) with their `values`."""
        order = np.argsort(keys, kind="stable")
        run = keys[order], values[order]
        while self.runs and len(self.runs[-1][0]) <= 2 * len(run[0]):
            old_keys, old_values = self.runs.pop()
            merged = np.concatenate([old_keys, run[0]])
            order = np.argsort(merged, kind="stable")
            run = merged[order], np.concatenate([old_values, run[1]])[order]
        self.runs.append(run)


class _Duplicates:
    """Finds exact duplicates (same sha256) across the whole store, streamed.

    Keeps the first 8 bytes of each distinct hash and the store position of its first copy
    (16 bytes per distinct image, `_SortedRuns`); a candidate is confirmed on the full sha256, and the
    first copy's record_id is read back from its shard only when a duplicate is found.
    """

    def __init__(self, parts: list[_Part]) -> None:
        self.parts = parts
        self.starts = np.array([p.start for p in parts], dtype=np.int64)
        self.seen = _SortedRuns()  # hash prefix -> store position of its first copy
        self.done = 0  # records marked so far
        self._cache: tuple[int, pd.DataFrame] | None = None

    def mark(self, chunk: ProfileChunk) -> ProfileChunk:
        frame = chunk.frame
        n = len(frame)
        sha = frame["sha256"]
        hashed = sha.notna().to_numpy()
        prefix = np.zeros(n, dtype=np.uint64)
        prefix[hashed] = _prefixes(sha[hashed].to_numpy(dtype=object))
        positions = self.done + np.arange(n, dtype=np.int64)
        duplicate_of = np.full(n, None, dtype=object)

        # copies of records in earlier chunks
        first = self.seen.find(prefix)
        earlier = hashed & (first >= 0)
        for i in np.flatnonzero(earlier):
            record_id, first_sha = self._record(int(first[i]))
            if first_sha == sha.iloc[i]:
                duplicate_of[i] = record_id

        # copies of records earlier in this chunk
        fresh = hashed & ~earlier
        idx = np.flatnonzero(fresh)
        if len(idx):
            values, first_local, inverse = np.unique(
                prefix[idx], return_index=True, return_inverse=True
            )
            firsts = idx[first_local[inverse]]  # the chunk row of each one's first copy
            ids = frame["record_id"].to_numpy()
            for i, f in zip(idx, firsts, strict=True):
                if i != f and sha.iloc[i] == sha.iloc[f]:
                    duplicate_of[i] = ids[f]
            self.seen.add(values, positions[idx[first_local]])

        frame["duplicate_of"] = pd.array(duplicate_of, dtype="str")
        self.done += n
        return ProfileChunk(frame, chunk.intensity, chunk.checked)

    def _record(self, position: int) -> tuple[str, str]:
        """(record_id, sha256) of the record at a store position, read from its shard."""
        k = int(np.searchsorted(self.starts, position, side="right") - 1)
        if self._cache is None or self._cache[0] != k:
            part = self.parts[k]
            table = pq.ParquetFile(part.path).read_row_group(
                part.row_group, columns=["record_id", "image"]
            )
            frame = pd.DataFrame(
                {
                    "record_id": table["record_id"].to_pylist(),
                    "sha256": [
                        None if b is None else hashlib.sha256(b).hexdigest()
                        for b in table["image"].to_pylist()
                    ],
                }
            )
            self._cache = (k, frame)
        row = self._cache[1].iloc[position - self.parts[k].start]
        return row["record_id"], row["sha256"]
