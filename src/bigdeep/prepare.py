"""Stage `prepare`: accepted raw data -> seeded train/val/test splits in `data/processed/<dataset>/`.

    bigdeep prepare images --raw data/raw/images --quarantine data/quarantine/images --out data/processed/images
    bigdeep prepare series --raw data/raw/series --quarantine data/quarantine/series --out data/processed/series

Images: decoded to uint8 arrays ((H, W) grey, or (H, W, 3) when `prepare.images.mode` is
RGB; resized when `prepare.images.size` is set: `bigdeep.data.images`), split stratified
by class with a seeded generator, rows
stored in a seeded random order; a test set the source ships (MNIST's t10k IDX files) stays the test split (`prepare.images.source_test`).
Series: resampled, split in time order (train, then val, then test); the scaler is fitted
on the train rows only, so nothing about the future leaks into training.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from bigdeep.compute import Executor, InProcess
from bigdeep.config import ImagePrepare, SeriesData, SeriesPrepare
from bigdeep.data.images import to_array
from bigdeep.data.prepared import SPLITS, split_file
from bigdeep.data.sources import source_split
from bigdeep.data.store import shard_paths
from bigdeep.errors import BigdeepError
from bigdeep.quality.leakage import leakage_error


class PrepareError(BigdeepError, ValueError):
    """The accepted data cannot be split as asked."""


def quarantined_records(quarantine_dir: Path) -> set[str]:
    path = Path(quarantine_dir) / "reasons.parquet"
    if not path.exists():
        return set()
    return set(pd.read_parquet(path, columns=["record"])["record"].astype(str))


# --- images ----------------------------------------------------------------------------------


def stratified_split(
    labels: np.ndarray, val_fraction: float, test_fraction: float, seed: int
) -> dict[str, np.ndarray]:
    """Indices per split; each class is cut in the same proportions. Pure and seeded.

    `test_fraction` 0 leaves the test split empty (the caller has one already).
    """
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {split: [] for split in SPLITS}
    for cls in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == cls))
        n_test = int(round(len(idx) * test_fraction))
        n_val = int(round(len(idx) * val_fraction))
        parts["test"].append(idx[:n_test])
        parts["val"].append(idx[n_test : n_test + n_val])
        parts["train"].append(idx[n_test + n_val :])
    out = {k: np.sort(np.concatenate(v)) for k, v in parts.items()}
    for name, idx in out.items():
        if len(idx) == 0 and not (name == "test" and test_fraction == 0):
            raise PrepareError(
                f"split {name!r} is empty: {len(labels)} images are too few for these fractions"
            )
    return out


def image_splits(
    labels: np.ndarray, in_source_test: np.ndarray, cfg: ImagePrepare, seed: int
) -> tuple[dict[str, np.ndarray], str]:
    """(indices per split, where the test split came from: "source" or "random").

    `in_source_test`: bool (N,), the records the source put in its own test set. With
    `cfg.source_test` and any such record, those records are the test split and val is
    drawn (stratified) from the rest; otherwise all three splits are drawn with
    `cfg.val_fraction` / `cfg.test_fraction`.
    """
    if not (cfg.source_test and in_source_test.any()):
        return stratified_split(labels, cfg.val_fraction, cfg.test_fraction, seed), "random"
    rest = np.flatnonzero(~in_source_test)
    if len(rest) == 0:
        raise PrepareError("every record is in the source's test set: nothing left to train on")
    inner = stratified_split(labels[rest], cfg.val_fraction, 0.0, seed)
    splits = {"train": rest[inner["train"]], "val": rest[inner["val"]]}
    return splits | {"test": np.flatnonzero(in_source_test)}, "source"


def _kept(shard: pd.DataFrame, quarantined: set[str]) -> pd.DataFrame:
    return shard[~shard["record_id"].isin(quarantined)]


def prepare_images(
    raw_dir: Path,
    quarantine_dir: Path,
    out_dir: Path,
    cfg: ImagePrepare,
    classes: list[str],
    seed: int,
    executor: Executor | None = None,
) -> dict[str, int | str]:
    """Split the accepted images and write each split's x, y and ids and `classes.json`
    (the format: `bigdeep.data.prepared`).

    x is uint8 (N, H, W), or (N, H, W, 3) for RGB; `cfg` says how images are converted.

    Memory holds one raw shard at a time plus about 60 bytes per image (label, sha256, split
    and row), never the decoded dataset: a first pass over the shards reads labels and content
    ids, the splits are drawn, and a second pass decodes each image straight into its row
    of the split's x on disk (a memory-mapped .npy). executor: a Dask cluster
    (bigdeep.compute) reads and decodes the shards; results are merged here in shard order.
    """
    quarantined = quarantined_records(quarantine_dir)
    ex = executor or InProcess()
    paths = [p.resolve() for p in shard_paths(raw_dir, empty_ok=False)]
    labels, digests, in_test, unknown, first = [], [], [], set(), None
    for scan in ex.map_ordered(_scan_shard, paths, quarantined, classes, cfg):
        first = scan.first if first is None else first  # its shape is every image's
        unknown |= scan.unknown
        labels.append(scan.labels)
        digests.append(scan.digests)
        in_test.append(scan.in_test)
    if unknown:
        raise PrepareError(
            f"{raw_dir}: labels {sorted(unknown)} not in quality.images.classes and not quarantined"
        )
    y = np.concatenate(labels)
    if len(y) == 0:
        raise PrepareError(f"{raw_dir}: no images left after the quarantine")
    splits, test_from = image_splits(y, np.concatenate(in_test), cfg, seed)
    digests = np.concatenate(digests)

    # Rows in a seeded random order: a data module that streams a split in blocks of
    # consecutive rows (too big for memory) then finds every class in every block,
    # whatever order the source listed them in (a folder source lists class by class).
    rng = np.random.default_rng([seed, 1])
    order = {name: rng.permutation(idx) for name, idx in splits.items()}
    split_of = np.empty(len(y), np.int8)  # image -> its split (position in `order`)
    row_of = np.empty(len(y), np.int64)  # image -> its row in that split
    for s, idx in enumerate(order.values()):
        split_of[idx], row_of[idx] = s, np.arange(len(idx))

    # Built in a folder beside `out_dir` and swapped in when complete (as the raw store is):
    # a crash never leaves a half-written split, and no file of an older run stays behind.
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        _write_x(ex, paths, quarantined, cfg, first, tmp, order, split_of, row_of, raw_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # nothing half-written stays behind
        raise
    for name, idx in order.items():
        np.save(split_file(tmp, name, "y"), y[idx], allow_pickle=False)
        np.save(split_file(tmp, name, "ids"), _hex(digests[idx]), allow_pickle=False)
    (tmp / "classes.json").write_text(json.dumps(classes) + "\n")
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)
    if error := leakage_error(out_dir):  # the same image in two splits
        raise PrepareError(error)
    return {name: len(idx) for name, idx in splits.items()} | {"test_from": test_from}


@dataclass
class _Scan:
    """What the first pass needs of one shard's accepted images."""

    labels: np.ndarray  # (n,) int64: position in classes, -1 for an unknown label
    digests: np.ndarray  # (n, 32) uint8: sha256 of the bytes
    in_test: np.ndarray  # (n,) bool: in the source's own test set
    unknown: set[str]  # labels not in classes
    first: np.ndarray | None  # the first image, converted (its shape is every image's)


def _scan_shard(path: Path, quarantined: set[str], classes: list[str], cfg: ImagePrepare) -> _Scan:
    """Labels and content ids of one shard's accepted images (runs on a worker)."""
    shard = _kept(
        pq.read_table(path, columns=["record_id", "label", "image"]).to_pandas(), quarantined
    )
    index = {c: i for i, c in enumerate(classes)}
    raw = b"".join(hashlib.sha256(b).digest() for b in shard["image"])
    return _Scan(
        labels=shard["label"].map(index).fillna(-1).to_numpy(np.int64),
        digests=np.frombuffer(raw, np.uint8).reshape(-1, 32),  # not "S32": it drops \0
        in_test=np.array([source_split(r) == "test" for r in shard["record_id"]], bool),
        unknown=set(shard["label"]) - set(classes),
        first=to_array(shard["image"].iloc[0], cfg) if len(shard) else None,
    )


def _decode_shard(
    path: Path, quarantined: set[str], cfg: ImagePrepare, shape: tuple[int, ...], raw_dir: Path
) -> np.ndarray:
    """One shard's accepted images converted, uint8 (n, *shape), in order (runs on a worker:
    one array goes back, not n small ones)."""
    shard = _kept(pq.read_table(path, columns=["record_id", "image"]).to_pandas(), quarantined)
    out = np.empty((len(shard), *shape), np.uint8)
    for k, (record, data) in enumerate(zip(shard["record_id"], shard["image"], strict=True)):
        pixels = to_array(data, cfg)
        if pixels.shape != shape:
            raise PrepareError(
                f"{raw_dir}: record {record} is {pixels.shape[0]}x{pixels.shape[1]}, the "
                f"others {shape[0]}x{shape[1]}; the gate checks height and width"
            )
        out[k] = pixels
    return out


def _write_x(
    ex: Executor,
    paths: list[Path],
    quarantined: set[str],
    cfg: ImagePrepare,
    first: np.ndarray,
    tmp: Path,
    order: dict[str, np.ndarray],
    split_of: np.ndarray,
    row_of: np.ndarray,
    raw_dir: Path,
) -> None:
    """Decode every accepted image into its row of its split's x (memory-mapped .npy)."""
    x = [
        np.lib.format.open_memmap(
            split_file(tmp, name, "x"), mode="w+", dtype=np.uint8, shape=(len(idx), *first.shape)
        )
        for name, idx in order.items()
    ]
    i = 0
    for pixels in ex.map_ordered(_decode_shard, paths, quarantined, cfg, first.shape, raw_dir):
        at = slice(i, i + len(pixels))
        for s, rows in enumerate(x):  # each split's rows of this shard, at once
            mine = split_of[at] == s
            rows[row_of[at][mine]] = pixels[mine]
        i += len(pixels)
    for rows in x:
        rows.flush()
    del x, rows  # unmapped before the folder is swapped in


def _hex(digests: np.ndarray) -> np.ndarray:
    """sha256 digests, uint8 (N, 32) -> their hex strings '<U64' (N,)."""
    text = digests.tobytes().hex()
    return np.array([text[i : i + 64] for i in range(0, len(text), 64)], dtype="<U64")


# --- series ----------------------------------------------------------------------------------


def prepare_series_frame(
    frame: pd.DataFrame, data: SeriesData, cfg: SeriesPrepare
) -> tuple[pd.DataFrame, dict]:
    """Raw canonical series -> (scaled frame with a `split` column, meta). Pure."""
    columns = [data.target, *data.features]
    series = frame.set_index("timestamp")[columns].sort_index().astype("float64")
    if cfg.resample:
        series = series.resample(cfg.resample).mean()
    return split_and_scale(series, data, cfg)


def split_and_scale(
    series: pd.DataFrame, data: SeriesData, cfg: SeriesPrepare
) -> tuple[pd.DataFrame, dict]:
    """A sorted (resampled) series -> (scaled frame with a `split` column, meta). Pure."""
    columns = [data.target, *data.features]
    freq = cfg.resample
    if freq:
        holes = series[series.isna().any(axis=1)]
        if len(holes):
            raise PrepareError(
                f"after resampling to {freq}, {len(holes)} step(s) have no data, first at "
                f"{holes.index[0].isoformat()}: fill the gap in the source or set prepare.series.resample"
            )
    n = len(series)
    n_train, n_val = int(n * cfg.train_fraction), int(n * cfg.val_fraction)
    if n_train == 0 or n_val == 0 or n - n_train - n_val <= 0:
        raise PrepareError(
            f"{n} rows are too few for train/val/test fractions {cfg.train_fraction}/{cfg.val_fraction}"
        )
    split = np.array(["train"] * n_train + ["val"] * n_val + ["test"] * (n - n_train - n_val))
    train = series.iloc[:n_train]
    scaler = {
        c: {"mean": float(train[c].mean()), "std": float(train[c].std(ddof=0) or 1.0)}
        for c in columns
    }
    scaled = series.copy()
    for c in columns:
        scaled[c] = (series[c] - scaler[c]["mean"]) / scaler[c]["std"]
    scaled = scaled.reset_index()
    scaled["split"] = split
    meta = {"target": data.target, "features": list(data.features), "scaler": scaler, "freq": freq}
    return scaled, meta


def read_accepted_series(
    raw_dir: Path,
    quarantine_dir: Path,
    data: SeriesData,
    cfg: SeriesPrepare,
    executor: Executor | None = None,
) -> pd.DataFrame:
    """The accepted rows' values by timestamp, sorted, resampled: what `prepare_series_frame`
    makes of the whole raw store, read one shard at a time (in this process, or on a Dask
    cluster's workers: `executor`, bigdeep.compute; merged here in shard order).

    With `resample`, each shard is reduced to a sum and a count per step (a step cut between
    two shards adds up), and only the steps are held: memory grows with the number of steps,
    not of raw rows. Each mean is the sum / count pandas' mean computes, bit for bit, except for
    a step of more than two values cut between two shards (its sum is added in two parts: the
    last bit can differ). Without it,
    the timestamp and value columns (8 bytes each per row) are held.
    """
    ex = executor or InProcess()
    bad = {int(r) for r in quarantined_records(quarantine_dir)}
    columns = [data.target, *data.features]
    paths = [p.resolve() for p in shard_paths(raw_dir, empty_ok=False)]
    freq = cfg.resample
    origin = None  # resample's default origin ("start_day"): midnight of the first accepted day
    if freq:
        for first in ex.map_ordered(_first_accepted, paths, bad):
            if first is not None:
                origin = first if origin is None else min(origin, first)
        origin = origin.floor("D") if origin is not None else "start_day"
    sums, counts = [], []
    for part in ex.map_ordered(_shard_steps, paths, bad, columns, freq, origin):
        sums.append(part[0])
        counts.append(part[1])
    series = sums[0] if len(sums) == 1 else pd.concat(sums).sort_index()
    if not freq:
        return series
    count = counts[0] if len(counts) == 1 else pd.concat(counts).sort_index()
    # One row per step from the first to the last (steps with no data: 0 / 0 = NaN)
    return series.resample(freq, origin=origin).sum() / count.resample(freq, origin=origin).sum()


def _first_accepted(path: Path, bad: set[int]) -> pd.Timestamp | None:
    """The earliest timestamp of one shard's accepted rows (runs on a worker)."""
    shard = pq.read_table(path, columns=["row", "timestamp"]).to_pandas()
    ts = shard.loc[~shard["row"].isin(bad), "timestamp"]
    return ts.min() if len(ts) and ts.notna().any() else None


def _shard_steps(
    path: Path, bad: set[int], columns: list[str], freq: str | None, origin: pd.Timestamp | str
) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """One shard's accepted values by timestamp, sorted; with `freq`, reduced to (sums,
    counts) per step (runs on a worker)."""
    shard = pq.read_table(path, columns=["row", "timestamp", *columns]).to_pandas()
    shard = shard[~shard["row"].isin(bad)]
    values = shard.set_index("timestamp")[columns].sort_index().astype("float64")
    if not freq:
        return values, None
    steps = values.resample(freq, origin=origin)
    return steps.sum(), steps.count()


def prepare_series(
    raw_dir: Path,
    quarantine_dir: Path,
    out_dir: Path,
    data: SeriesData,
    cfg: SeriesPrepare,
    executor: Executor | None = None,
) -> dict[str, int]:
    """Resample, split in time order and scale the accepted series; write `series.parquet` and
    `meta.json`. Reads the raw store shard by shard (see `read_accepted_series`)."""
    series = read_accepted_series(raw_dir, quarantine_dir, data, cfg, executor)
    scaled, meta = split_and_scale(series, data, cfg)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    scaled.to_parquet(out_dir / "series.parquet", index=False)
    (out_dir / "meta.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
    return scaled["split"].value_counts().to_dict()
