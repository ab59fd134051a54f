"""Lightning data modules over the prepared data in `data/processed/`.

Images: `<dir>/{train,val,test}.npz` (x uint8 (N, H, W) grey or (N, H, W, C) colour, y int64
(N,), ids str (N,)) and `<dir>/classes.json`; the model sees float32 (B, C, H, W) in [0, 1].
Series: `<dir>/series.parquet` (timestamp, target, features, split) and `<dir>/meta.json`
(target, features, scaler, freq).

A split that fits (`memory_mb`, counted as the float32 tensors it becomes) is held in memory
and batches are cut with one tensor index per batch (`_Batched.__getitems__`), not one
Python `__getitem__` per sample: on a CPU that per-sample loop, not the model, would
otherwise bound the throughput at small batch sizes. A larger image split is streamed
(`_StreamedImages`): its npz is memory-mapped, never loaded whole, and read in blocks of
rows, block order and rows within a block shuffled per epoch; prepare stores rows in a
seeded random order, so every block holds every class. The series stay in memory: a
float32 row of a few columns is tiny (ten million hourly rows are about 200 MB).

Training choices that belong to the data: random affine augmentation of the train images
(`random_affine`, one vectorised op per batch) and calendar inputs for the series
(`calendar_features`, computed from the timestamps).
"""

from __future__ import annotations

import copy
import json
import math
import struct
import warnings
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytorch_lightning as pl
import torch
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset, IterableDataset, get_worker_info

SPLITS = ("train", "val", "test")

# Lightning warns that a sized IterableDataset may repeat data across workers; a streamed
# split deals each worker its own batches, so its length is exact (tests/unit/test_datamodules).
warnings.filterwarnings("ignore", message="Your `IterableDataset` has `__len__` defined")


class _Batched(Dataset):
    """Map-style dataset that cuts a whole batch with one tensor index.

    `DataLoader` calls `__getitems__(indices)` once per batch (torch >= 2.2), so a batch is
    one advanced-indexing op; `_stacked` (the collate_fn) passes it through unchanged.
    """

    def batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.batch(torch.tensor([i]))
        return x[0], y[0]

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.batch(torch.as_tensor(indices))


def as_nchw(x: torch.Tensor) -> torch.Tensor:
    """uint8 images (N, H, W) or (N, H, W, C) -> float32 (N, C, H, W) in [0, 1].

    A colour batch keeps the NHWC layout in memory (a channels_last tensor), which is the
    layout the CNN computes in anyway.
    """
    x = x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2)
    return x.float().div_(255.0)


class _Images(_Batched):
    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images, self.labels = images, labels  # (N, C, H, W) float32, (N,) int64

    def __len__(self) -> int:
        return len(self.labels)

    def batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[idx], self.labels[idx]


@dataclass(frozen=True)
class Affine:
    """Ranges of a random affine transform, each drawn uniformly in [-range, +range]."""

    rotate: float = 0.0  # degrees
    shift: float = 0.0  # fraction of the image's height / width
    scale: float = 0.0  # relative: 0.1 scales by 0.9 .. 1.1

    def __post_init__(self) -> None:
        if not (0 <= self.rotate <= 180 and 0 <= self.shift < 1 and 0 <= self.scale < 1):
            raise ValueError(
                f"augmentation ranges out of bounds: rotate {self.rotate} (0..180 degrees), "
                f"shift {self.shift} (0..<1 of the image), scale {self.scale} (0..<1)"
            )

    @property
    def active(self) -> bool:
        return bool(self.rotate or self.shift or self.scale)


def random_affine(x: torch.Tensor, ranges: Affine, generator: torch.Generator) -> torch.Tensor:
    """Each image of (B, C, H, W) rotated, shifted and scaled at random about its centre.

    One `affine_grid` + `grid_sample` for the whole batch (bilinear, zeros outside), so the
    cost is a fraction of a training step. Values stay in the input's range.
    """
    n = x.shape[0]

    def uniform(limit: float) -> torch.Tensor:  # (B,) in [-limit, limit]
        return (torch.rand(n, generator=generator) * 2 - 1) * limit

    angle = uniform(math.radians(ranges.rotate))
    zoom = 1 + uniform(ranges.scale)
    # affine_grid maps output to input coordinates in [-1, 1]: a shift of f of the image
    # is 2f there, and the inverse of a zoom by s is a zoom by 1/s.
    tx, ty = uniform(2 * ranges.shift), uniform(2 * ranges.shift)
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)  # (B, H, W, 2)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


class _AugmentedImages(_Images):
    """The train images, each batch transformed by `random_affine`.

    The random stream restarts from `seed` whenever a train loader is made (`restart`), so a
    fit's augmentations depend on the seed only. In a worker process the stream is seeded
    with (seed, worker id): workers never repeat each other's draws.
    """

    def __init__(
        self, images: torch.Tensor, labels: torch.Tensor, ranges: Affine, seed: int
    ) -> None:
        super().__init__(images, labels)
        self.ranges, self.seed = ranges, seed
        self.restart()

    def restart(self) -> None:
        self._generator = torch.Generator().manual_seed(self.seed)
        self._worker: int | None = None

    def _stream(self) -> torch.Generator:
        info = get_worker_info()
        if info is not None and self._worker != info.id:
            self._generator = torch.Generator().manual_seed(self.seed * 1000 + info.id + 1)
            self._worker = info.id
        return self._generator

    def batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = super().batch(idx)
        return random_affine(x, self.ranges, self._stream()), y


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


class _StreamedImages(IterableDataset):
    """An image split streamed from its npz in blocks of rows; yields whole batches.

    Each pass is one epoch. Its batches are the same list in every process: the blocks
    (`block_rows` consecutive rows each) in a random order, and within a block the rows in
    a random order, cut into batches (train; in file order for val/test). Batch j goes to
    distributed process j % world (the list wraps around to a multiple of world, so every
    process steps the same number of times, as DDP needs; like torch's DistributedSampler,
    up to world - 1 batches are seen twice) and within a process to loader worker
    j // world % workers; the loader takes one batch from each worker in turn, so a
    process sees its batches in list order. Memory: one block (uint8) per worker.

    The epoch number comes from `start_epoch` (the trainer's epoch when the loader was
    made, so a resumed fit continues the sequence) plus the passes made since.
    """

    def __init__(
        self,
        path: Path,
        labels: torch.Tensor,
        batch_size: int,
        block_rows: int,
        shuffle: bool,
        seed: int,
        augment: Affine | None = None,
    ) -> None:
        self.path, self.labels = Path(path), labels  # labels (N,) int64, in memory
        self.batch_size, self.block_rows = batch_size, max(int(block_rows), batch_size)
        self.shuffle, self.seed, self.augment = shuffle, seed, augment
        self.start_epoch, self._passes = 0, 0
        self.shard = True  # deal batches to distributed processes (False: this one reads all)
        self._x: np.ndarray | None = None

    def _world(self) -> tuple[int, int]:
        if self.shard and torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_rank(), torch.distributed.get_world_size()
        return 0, 1

    def batches(self, epoch: int) -> list[tuple[int, np.ndarray]]:
        """The epoch's batches, for all processes: (block start row, row offsets in it)."""
        n = len(self.labels)
        starts = np.arange(0, n, self.block_rows)
        rng = np.random.default_rng([self.seed, epoch])
        if self.shuffle:
            starts = rng.permutation(starts)
        out = []
        for start in starts:
            rows = min(self.block_rows, n - int(start))
            order = rng.permutation(rows) if self.shuffle else np.arange(rows)
            for i in range(0, rows, self.batch_size):
                out.append((int(start), np.sort(order[i : i + self.batch_size])))
        return out

    def __len__(self) -> int:
        """Batches per epoch in this process (the same in every epoch)."""
        n_blocks, tail = divmod(len(self.labels), self.block_rows)
        per_block = math.ceil(self.block_rows / self.batch_size)
        total = n_blocks * per_block + math.ceil(tail / self.batch_size)
        return -(-total // self._world()[1])  # ceil: the list is padded, see __iter__

    def __iter__(self):
        epoch = self.start_epoch + self._passes
        self._passes += 1
        rank, world = self._world()
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        rows = self._memmap()  # (N, H, W) or (N, H, W, C) uint8, on disk
        batches = self.batches(epoch)
        batches += batches[: len(self) * world - len(batches)]  # wrap, like DistributedSampler
        mine = batches[rank::world][worker::workers]
        generator = torch.Generator().manual_seed(self.seed * 1000 + 7 * epoch + worker + 1)
        block_start, block = -1, None
        for start, offsets in mine:
            if start != block_start:  # one contiguous read per block
                block_start = start
                block = torch.from_numpy(np.array(rows[start : start + self.block_rows]))
            x = as_nchw(block[torch.from_numpy(offsets)])
            y = self.labels[torch.from_numpy(start + offsets)]
            if self.augment is not None:
                x = random_affine(x, self.augment, generator)
            yield x, y  # (B, C, H, W) float32 in [0, 1], (B,) int64

    def _memmap(self) -> np.ndarray:
        if self._x is None:
            self._x = npz_memmap(self.path, "x")  # mapped in the process that reads it
        return self._x

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_x": None}  # workers map the file themselves


class _Windows(_Batched):
    """Sample i: inputs values[rows[i] - window : rows[i]], label target[rows[i] : + horizon]."""

    def __init__(self, values: torch.Tensor, rows: np.ndarray, window: int, horizon: int) -> None:
        self.values = values  # (N_rows, F), column 0 is the target
        self.rows = torch.from_numpy(rows)  # (N,) first target row of each sample
        self.window, self.horizon = window, horizon
        # Views, no copy: _inputs[s] = rows [s, s+window) as (F, window);
        # _labels[t] = target rows [t, t+horizon).
        self._inputs = values.unfold(0, window, 1)
        self._labels = values[:, 0].unfold(0, horizon, 1)

    def __len__(self) -> int:
        return len(self.rows)

    def batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t = self.rows[idx]  # (B,)
        x = self._inputs[t - self.window].transpose(1, 2).contiguous()  # (B, window, F)
        return x, self._labels[t]  # (B, window, F), (B, horizon)


def _stacked(batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    return batch  # already a batch: see _Batched.__getitems__


class _InMemoryDataModule(pl.LightningDataModule):
    """Loader plumbing shared by both data modules."""

    def __init__(self, batch_size: int, num_workers: int, pin_memory: bool, seed: int) -> None:
        super().__init__()
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.seed = seed
        self._datasets: dict[str, _Batched | _StreamedImages] = {}

    def _loader(self, split: str, shuffle: bool, shard: bool = True) -> DataLoader:
        if split not in self._datasets:
            raise RuntimeError(f"call setup() before asking for the {split!r} loader")
        dataset = self._datasets[split]
        if isinstance(dataset, _StreamedImages):  # yields whole batches, shuffles itself
            dataset = copy.copy(dataset)  # this loader's own epoch count and sharding
            dataset.start_epoch = self.trainer.current_epoch if self.trainer else 0
            dataset._passes, dataset.shard = 0, shard
            return DataLoader(
                dataset,
                batch_size=None,
                num_workers=self.num_workers,
                pin_memory=self.pin_memory,
                persistent_workers=self.num_workers > 0,
            )
        # A fresh seeded generator per loader: the shuffling order depends only on `seed`
        # (and the epoch), not on what else consumed random numbers before.
        generator = torch.Generator().manual_seed(self.seed) if shuffle else None
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            shuffle=shuffle,
            generator=generator,
            collate_fn=_stacked,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        train = self._datasets.get("train")
        if isinstance(train, _AugmentedImages):
            train.restart()  # like the shuffling: the same stream for every loader
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def eval_dataloader(self, split: str = "test") -> DataLoader:
        """Every sample of `split`, in order, whatever the strategy: for evaluation code
        that runs in one process (under DDP the trainer's loaders give each process a part)."""
        return self._loader(split, shuffle=False, shard=False)


# --- images --------------------------------------------------------------------------------


class ImageDataModule(_InMemoryDataModule):
    """Images as float32 (N, C, H, W) in [0, 1] with int64 labels (N,); C and (H, W) are
    the prepared data's (`channels`, `image_size`): 1 for grey, 3 for RGB.

    Train batches are augmented by `random_affine` within `augment_rotate` (degrees),
    `augment_shift` (fraction of the image) and `augment_scale` (relative); all 0 turns it
    off. Val and test images are never changed. `pixel_mean` / `pixel_std`: statistics of the
    train images, for the model's input standardisation.

    A split whose float32 tensors would take more than `memory_mb` is streamed from its
    file (`_StreamedImages`, blocks of `block_mb` of uint8 rows) instead of loaded;
    `streamed` names those splits. `tensors` and `ids` hold the splits kept in memory.
    """

    def __init__(
        self,
        data_dir: str | Path,
        batch_size: int = 64,
        num_workers: int = 0,
        pin_memory: bool = False,
        seed: int = 42,
        augment_rotate: float = 10.0,
        augment_shift: float = 0.07,
        augment_scale: float = 0.1,
        memory_mb: float = 4096,
        block_mb: float = 256,
    ) -> None:
        super().__init__(batch_size, num_workers, pin_memory, seed)
        if not (memory_mb >= 0 and block_mb > 0):
            raise ValueError(
                f"memory_mb must be >= 0 and block_mb > 0, got {memory_mb}, {block_mb}"
            )
        self.data_dir = Path(data_dir)
        self.augment = Affine(augment_rotate, augment_shift, augment_scale)
        self.memory_mb, self.block_mb = memory_mb, block_mb
        self.streamed: list[str] = []
        self.classes: list[str] = []
        self.image_size: tuple[int, int] = (0, 0)
        self.channels = 0
        self.pixel_mean, self.pixel_std = 0.0, 1.0
        self.ids: dict[str, np.ndarray] = {}  # split -> sha256 of each image, in row order
        self.tensors: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # never augmented

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def setup(self, stage: str | None = None) -> None:
        if self._datasets:  # loaded once, whatever the stage
            return
        self.classes = _read_classes(self.data_dir / "classes.json")
        for split in SPLITS:
            path = self.data_dir / f"{split}.npz"
            x, y, ids = _read_npz(path, self.num_classes, mmap=True)
            size, channels = (x.shape[1], x.shape[2]), (x.shape[3] if x.ndim == 4 else 1)
            if split == "train":
                self.image_size, self.channels = size, channels
            elif (size, channels) != (self.image_size, self.channels):
                raise ValueError(
                    f"{path}: images are {size} with {channels} channel(s), train images "
                    f"{self.image_size} with {self.channels}; re-run `bigdeep prepare`"
                )
            labels = torch.from_numpy(y.astype(np.int64))  # (N,)
            if split == "train":
                train_rows = x  # uint8 (N, H, W[, C]), mapped or read: for the pixel statistics
            augment = self.augment if split == "train" and self.augment.active else None
            too_big = x.size * 4 > self.memory_mb * 2**20  # as float32 tensors
            if too_big and isinstance(x, np.memmap):
                block_rows = int(self.block_mb * 2**20) // (size[0] * size[1] * channels)
                self._datasets[split] = _StreamedImages(
                    path, labels, self.batch_size, block_rows, split == "train", self.seed, augment
                )
                self.streamed.append(split)
                continue
            images = as_nchw(torch.from_numpy(np.array(x)))
            self.tensors[split] = (images, labels)  # (N, C, H, W), (N,)
            self.ids[split] = np.array(ids)
            if augment is not None:
                self._datasets[split] = _AugmentedImages(images, labels, augment, self.seed)
            else:
                self._datasets[split] = _Images(images, labels)
        self.pixel_mean, self.pixel_std = _pixel_stats(train_rows)


def _pixel_stats(x: np.ndarray, chunk_rows: int | None = None) -> tuple[float, float]:
    """Mean and (unbiased) std of uint8 images (N, H, W[, C]) in [0, 1] units, over every
    pixel and channel (the model standardises all channels alike).

    Read `chunk_rows` at a time (a streamed split is never loaded whole) with exact integer
    sums, so the figures do not depend on the chunking, nor on whether the split streams.
    """
    total, squares, count = 0, 0, x.size
    if chunk_rows is None:  # about 2**24 values (128 MB as int64) a chunk, whatever the size
        chunk_rows = max(1, 2**24 // max(1, math.prod(x.shape[1:])))
    for i in range(0, len(x), chunk_rows):
        chunk = np.asarray(x[i : i + chunk_rows], dtype=np.int64)
        total += int(chunk.sum())
        squares += int((chunk * chunk).sum())
    mean = total / count
    var = max(squares - count * mean * mean, 0.0) / max(count - 1, 1)
    return mean / 255.0, (math.sqrt(var) / 255.0) or 1.0


def _read_classes(path: Path) -> list[str]:
    try:
        classes = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: not found (run `bigdeep prepare` first)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e}); re-run `bigdeep prepare`") from None
    if not isinstance(classes, list) or not classes:
        raise ValueError(f"{path}: must be a non-empty JSON list of class names")
    return [str(c) for c in classes]


def _read_npz(
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


# --- series --------------------------------------------------------------------------------


@dataclass(frozen=True)
class SplitFrame:
    """The samples of one split, for evaluation and baselines (all on scaled values).

    `rows[i]` is the row of the first target of sample i in `series.parquet`; so the naive
    baseline for sample i is `target[rows[i] - 1]` and the seasonal one
    `target[rows[i] + h - period]` for step h (`target`: `SeriesDataModule.target_values`).
    """

    timestamps: pd.DatetimeIndex  # (N,) timestamp of the first target row
    y_true: np.ndarray  # (N, horizon) float32
    rows: np.ndarray  # (N,) int64


CALENDAR = ("hour", "weekday", "yearday")


def calendar_features(
    timestamps: pd.DatetimeIndex, names: Sequence[str], tz: str | None = None
) -> tuple[np.ndarray, list[str]]:
    """Cyclic calendar inputs: a (sin, cos) pair per name, float32 (N, 2 * len(names)).

    hour     position in the day, (hour + minute / 60) / 24
    weekday  position in the week, Monday 00:00 = 0, (day + hour / 24) / 7
    yearday  position in the year, (day of year - 1 + hour / 24) / 365.25

    Computed in `tz` (e.g. Australia/Melbourne, where demand follows local clocks, daylight
    saving included), else in the timestamps' own zone. Sin and cos together make 23:00 and
    00:00 neighbours, and every value lies in [-1, 1], the scale of the standardised inputs.
    """
    unknown = [n for n in names if n not in CALENDAR]
    if unknown:
        raise ValueError(f"calendar feature(s) {unknown} unknown; use any of {list(CALENDAR)}")
    ts = pd.DatetimeIndex(timestamps)
    if tz is not None:
        if ts.tz is None:
            raise ValueError(f"calendar_tz {tz!r} needs time-zone-aware timestamps")
        ts = ts.tz_convert(tz)
    day = (ts.hour.to_numpy() + ts.minute.to_numpy() / 60) / 24  # (N,) in [0, 1)
    phases = {
        "hour": day,
        "weekday": (ts.day_of_week.to_numpy() + day) / 7,
        "yearday": (ts.day_of_year.to_numpy() - 1 + day) / 365.25,
    }
    columns, out = [], []
    for name in names:
        angle = 2 * np.pi * phases[name]
        out += [np.sin(angle), np.cos(angle)]
        columns += [f"{name}_sin", f"{name}_cos"]
    values = np.stack(out, axis=1) if out else np.empty((len(ts), 0))
    return values.astype(np.float32), columns


class SeriesDataModule(_InMemoryDataModule):
    """Sliding windows over a standardised series.

    Sample for target row t: inputs are rows [t - window, t) of [target] + features +
    calendar columns, shape (window, n_features); the label is the target at rows
    [t, t + horizon). Column 0 is always the scaled target (the naive baselines read it).
    The sample belongs to the split of row t, and all its label rows must be in that split
    (no label is ever taken from the next split). Inputs may reach back into the previous
    split: that is the past, so val and test have samples from their first row on.

    `calendar` names cyclic inputs computed from each row's timestamp (`calendar_features`),
    in `calendar_tz` if given; they follow the target and the features.
    """

    def __init__(
        self,
        data_dir: str | Path,
        window: int = 48,
        horizon: int = 1,
        batch_size: int = 64,
        num_workers: int = 0,
        pin_memory: bool = False,
        seed: int = 42,
        calendar: Sequence[str] = ("hour", "weekday"),
        calendar_tz: str | None = None,
    ) -> None:
        super().__init__(batch_size, num_workers, pin_memory, seed)
        if window < 1 or horizon < 1:
            raise ValueError(f"window and horizon must be >= 1, got {window} and {horizon}")
        calendar_features(pd.DatetimeIndex([], tz="UTC"), calendar, calendar_tz)  # names, zone
        self.data_dir = Path(data_dir)
        self.window = window
        self.horizon = horizon
        self.calendar, self.calendar_tz = list(calendar), calendar_tz
        self.target = ""
        self.features: list[str] = []
        self.calendar_columns: list[str] = []  # e.g. hour_sin, hour_cos, after setup()
        self.scaler: dict[str, dict[str, float]] = {}
        self.freq: str | None = None
        self.timestamps = pd.DatetimeIndex([])
        self.target_values = np.empty(0, dtype=np.float32)  # (N_rows,) scaled target
        self.rows: dict[str, np.ndarray] = {}  # split -> first target row of each sample

    @property
    def n_features(self) -> int:
        return 1 + len(self.features) + 2 * len(self.calendar)

    @property
    def input_columns(self) -> list[str]:
        """The names of the F input columns, in order (after setup())."""
        return [self.target, *self.features, *self.calendar_columns]

    def setup(self, stage: str | None = None) -> None:
        if self.rows:
            return
        meta = _read_meta(self.data_dir / "meta.json")
        self.target, self.features = meta["target"], list(meta["features"])
        self.scaler, self.freq = meta["scaler"], meta.get("freq")
        frame = _read_series(self.data_dir / "series.parquet", [self.target, *self.features])

        values = frame[[self.target, *self.features]].to_numpy(dtype=np.float32, copy=True)
        bad = ~np.isfinite(values)
        if bad.any():
            row, col = (int(i) for i in np.argwhere(bad)[0])
            raise ValueError(
                f"{self.data_dir / 'series.parquet'}: {[self.target, *self.features][col]!r} is "
                f"{values[row, col].item()} at row {row}; the quality gate should have stopped it"
            )
        self.timestamps = pd.DatetimeIndex(frame["timestamp"])
        calendar, self.calendar_columns = calendar_features(
            self.timestamps, self.calendar, self.calendar_tz
        )
        # (N_rows, F): target, features, calendar columns
        inputs = torch.from_numpy(np.concatenate([values, calendar], axis=1))
        self.target_values = values[:, 0]
        split_of_row = frame["split"].to_numpy()
        for split in SPLITS:
            self.rows[split] = _sample_rows(split_of_row, split, self.window, self.horizon)
            self._datasets[split] = _Windows(inputs, self.rows[split], self.window, self.horizon)

    def split_frame(self, split: str) -> SplitFrame:
        if split not in self.rows:
            raise ValueError(f"split {split!r}: expected one of {SPLITS}, after setup()")
        rows = self.rows[split]
        offsets = np.arange(self.horizon)
        y_true = self.target_values[rows[:, None] + offsets]  # (N, horizon)
        return SplitFrame(self.timestamps[rows], y_true, rows)

    def inverse_target(self, values: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
        """Scaled target values -> original units (e.g. MW), any shape."""
        s = self.scaler[self.target]
        return values * s["std"] + s["mean"]


def _sample_rows(split_of_row: np.ndarray, split: str, window: int, horizon: int) -> np.ndarray:
    """Target rows t of `split` with t >= window and rows t..t+horizon-1 all in `split`."""
    in_split = np.flatnonzero(split_of_row == split)
    if len(in_split) == 0:
        raise ValueError(f"series split {split!r} has no rows")
    first, last = int(in_split[0]), int(in_split[-1])
    rows = np.arange(max(first, window), last - horizon + 2, dtype=np.int64)
    if len(rows) == 0:
        raise ValueError(
            f"series split {split!r} has {len(in_split)} rows (rows {first}..{last}), too few "
            f"for one sample with window={window}, horizon={horizon}: it needs {horizon} rows "
            f"and {window} rows before its first target"
        )
    return rows


def _read_meta(path: Path) -> dict:
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


def _read_series(path: Path, value_columns: list[str]) -> pd.DataFrame:
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
