"""The files `bigdeep prepare` writes in `data/processed/` and how to read them back.

Images: `<dir>/{train,val,test}.npz` (x uint8 (N, H, W) grey or (N, H, W, C) colour, y int64
(N,), ids str (N,): the sha256 of each image) and `<dir>/classes.json`.
Series: `<dir>/series.parquet` (timestamp, target, features, split) and `<dir>/meta.json`
(target, features, scaler, freq).

Every reader checks what it read; its errors name the file and say to re-run prepare.
"""

from __future__ import annotations

import json
import struct
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd

SPLITS = ("train", "val", "test")  # in time order for the series


class NotMappable(ValueError):
    """An npz array that cannot be memory-mapped (compressed, or of Python objects)."""


def npz_memmap(path: Path, name: str) -> np.ndarray:
    """Array `name` of an uncompressed npz (np.savez), memory-mapped: nothing is read yet.

    An npz is a zip of .npy files; a stored (uncompressed) member is a plain .npy at some
    offset in the zip: after the zip's local header, the .npy header, then the raw array.
    """
    try:
        with zipfile.ZipFile(path) as zf:
            info = zf.getinfo(f"{name}.npy")
    except KeyError:
        raise ValueError(f"{path}: no array {name!r}; re-run `bigdeep prepare`") from None
    except (zipfile.BadZipFile, OSError) as e:
        raise ValueError(f"{path}: unreadable npz ({e}); re-run `bigdeep prepare`") from None
    if info.compress_type != zipfile.ZIP_STORED:
        raise NotMappable(
            f"{path}: array {name!r} is compressed and cannot be streamed; "
            "write it with np.savez (bigdeep prepare does)"
        )
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        local = f.read(30)  # zip local file header; name and extra field lengths at 26..30
        if local[:4] != b"PK\x03\x04":
            raise ValueError(f"{path}: bad zip local header for {name!r}")
        name_len, extra_len = struct.unpack("<HH", local[26:30])
        f.seek(info.header_offset + 30 + name_len + extra_len)
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        else:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        offset = f.tell()
    if dtype.hasobject:
        raise NotMappable(f"{path}: array {name!r} holds Python objects; cannot be streamed")
    order = "F" if fortran else "C"
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape, order=order)


def read_classes(path: Path) -> list[str]:
    try:
        classes = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: not found (run `bigdeep prepare` first)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e}); re-run `bigdeep prepare`") from None
    if not isinstance(classes, list) or not classes:
        raise ValueError(f"{path}: must be a non-empty JSON list of class names")
    return [str(c) for c in classes]


def read_npz(
    path: Path, num_classes: int, mmap: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(x uint8 (N, H, W) or (N, H, W, C), y int (N,), ids (N,)), checked; errors name the file.

    `mmap`: x and ids are memory-mapped (see `npz_memmap`), not read; y is read.
    """
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = {"x", "y", "ids"} - set(z.files)
            if missing:
                raise ValueError(f"{path}: missing array(s) {sorted(missing)}; has {z.files}")
            y = z["y"]
            try:
                if not mmap:
                    raise NotMappable("not asked to")
                x, ids = npz_memmap(path, "x"), npz_memmap(path, "ids")
            except NotMappable:  # e.g. np.savez_compressed: read it (it cannot stream)
                x, ids = z["x"], z["ids"]
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: not found (run `bigdeep prepare` first)") from None
    except (zipfile.BadZipFile, EOFError, OSError) as e:
        raise ValueError(
            f"{path}: unreadable or corrupt npz ({e}); re-run `bigdeep prepare`"
        ) from None
    if x.dtype != np.uint8 or not (x.ndim == 3 or (x.ndim == 4 and x.shape[3] in (1, 3, 4))):
        raise ValueError(
            f"{path}: x must be uint8 (N, H, W) or (N, H, W, C) with C 1, 3 or 4, "
            f"got {x.dtype} {x.shape}; re-run `bigdeep prepare`"
        )
    if not np.issubdtype(y.dtype, np.integer) or y.shape != (len(x),) or ids.shape != (len(x),):
        raise ValueError(
            f"{path}: y must be integer (N,) and ids (N,) with N={len(x)}, "
            f"got y {y.dtype} {y.shape}, ids {ids.shape}"
        )
    if len(x) == 0:
        raise ValueError(f"{path}: no images")
    bad = (y < 0) | (y >= num_classes)
    if bad.any():
        row = int(np.argmax(bad))
        raise ValueError(
            f"{path}: label {int(y[row])} at row {row} is outside 0..{num_classes - 1} "
            f"(classes.json lists {num_classes} classes)"
        )
    return x, y, ids


def read_meta(path: Path) -> dict:
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: not found (run `bigdeep prepare` first)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e}); re-run `bigdeep prepare`") from None
    for key in ("target", "features", "scaler"):
        if key not in meta:
            raise ValueError(f"{path}: missing key {key!r}")
    if meta["target"] not in meta["scaler"]:
        raise ValueError(f"{path}: scaler has no entry for the target {meta['target']!r}")
    return meta


def read_series_parquet(path: Path, value_columns: list[str]) -> pd.DataFrame:
    try:
        frame = pd.read_parquet(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: not found (run `bigdeep prepare` first)") from None
    except Exception as e:  # pyarrow raises several types for a damaged file
        raise ValueError(f"{path}: unreadable parquet ({e}); re-run `bigdeep prepare`") from None
    missing = [c for c in ["timestamp", *value_columns, "split"] if c not in frame.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; has {list(frame.columns)}")
    if not frame["timestamp"].is_monotonic_increasing:
        row = int(np.flatnonzero(frame["timestamp"].diff() < pd.Timedelta(0))[0])
        raise ValueError(f"{path}: timestamps go back in time at row {row}")
    unknown = set(frame["split"].unique()) - set(SPLITS)
    if unknown:
        raise ValueError(f"{path}: column 'split' has unknown value(s) {sorted(unknown)}")
    # Time order train -> val -> test is what makes "inputs from the previous split" the past.
    order = frame["split"].map({s: i for i, s in enumerate(SPLITS)}).to_numpy()
    if (np.diff(order) < 0).any():
        row = int(np.flatnonzero(np.diff(order) < 0)[0]) + 1
        raise ValueError(
            f"{path}: splits are not in time order train, val, test "
            f"(row {row} is {frame['split'].iloc[row]!r} after {frame['split'].iloc[row - 1]!r})"
        )
    return frame
