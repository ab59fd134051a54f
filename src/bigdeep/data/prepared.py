"""The files `bigdeep prepare` writes in `data/processed/` and how to read them back.

Images: three plain .npy files per split, `<dir>/<split>_x.npy` (uint8 (N, H, W) grey or
(N, H, W, C) colour), `<split>_y.npy` (int64 (N,)) and `<split>_ids.npy` (str (N,): the sha256
of each image), row i of each the same image, and `<dir>/classes.json`. Plain .npy files so a
split too large for memory is memory-mapped (`np.load(mmap_mode="r")`) and streamed.
Series: `<dir>/series.parquet` (timestamp, target, features, split) and `<dir>/meta.json`
(target, features, scaler, freq).

Every reader checks what it read; its errors name the file and say to re-run prepare.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

SPLITS = ("train", "val", "test")  # in time order for the series


def split_file(folder: Path, split: str, array: str) -> Path:
    """`<folder>/<split>_<array>.npy`, array x, y or ids: where an image split's array lives."""
    return Path(folder) / f"{split}_{array}.npy"


def write_image_split(
    folder: Path, split: str, x: np.ndarray, y: np.ndarray, ids: np.ndarray
) -> None:
    """Save a split's three arrays whole (small data and tests; prepare writes x in place)."""
    for name, array in (("x", x), ("y", y), ("ids", ids)):
        np.save(split_file(folder, split, name), np.asanyarray(array), allow_pickle=False)


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


def read_image_split(
    folder: Path, split: str, num_classes: int | None = None, mmap: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(x uint8 (N, H, W) or (N, H, W, C), y int (N,), ids (N,)), checked; errors name the file.

    `mmap`: x and ids are memory-mapped (`np.load(mmap_mode="r")`), not read; y is read.
    `num_classes`: labels must lie in 0..num_classes-1.
    """
    arrays = []
    for name in ("x", "y", "ids"):
        path = split_file(folder, split, name)
        mode = "r" if mmap and name != "y" else None
        try:
            arrays.append(np.load(path, mmap_mode=mode, allow_pickle=False))
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: not found (run `bigdeep prepare` first)") from None
        except (ValueError, EOFError, OSError) as e:
            raise ValueError(
                f"{path}: unreadable or corrupt .npy ({e}); re-run `bigdeep prepare`"
            ) from None
    x, y, ids = arrays
    x_path, y_path = split_file(folder, split, "x"), split_file(folder, split, "y")
    if x.dtype != np.uint8 or not (x.ndim == 3 or (x.ndim == 4 and x.shape[3] in (1, 3, 4))):
        raise ValueError(
            f"{x_path}: x must be uint8 (N, H, W) or (N, H, W, C) with C 1, 3 or 4, "
            f"got {x.dtype} {x.shape}; re-run `bigdeep prepare`"
        )
    if not np.issubdtype(y.dtype, np.integer) or y.shape != (len(x),) or ids.shape != (len(x),):
        raise ValueError(
            f"{Path(folder) / split}_{{y,ids}}.npy: y must be integer (N,) and ids (N,) with "
            f"N={len(x)} as in x, got y {y.dtype} {y.shape}, ids {ids.shape}"
        )
    if len(x) == 0:
        raise ValueError(f"{x_path}: no images")
    if num_classes is not None and ((y < 0) | (y >= num_classes)).any():
        row = int(np.argmax((y < 0) | (y >= num_classes)))
        raise ValueError(
            f"{y_path}: label {int(y[row])} at row {row} is outside 0..{num_classes - 1} "
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
