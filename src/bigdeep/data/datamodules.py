"""Lightning data modules over the prepared data in `data/processed/` (`bigdeep.data.prepared`).

Images: the model sees float32 (B, C, H, W) in [0, 1]. A split that fits (`memory_mb`,
counted as the float32 tensors it becomes) is held in memory; a larger one is streamed from
its file (`bigdeep.data.datasets`). The series stay in memory: a float32 row of a few columns
is tiny (ten million hourly rows are about 200 MB).

Training choices that belong to the data: random affine augmentation of the train images
and calendar inputs for the series (`bigdeep.data.transforms`).

Device-resident data (`device_data`): when the trainer is attached, a split held in memory
that fits `device_budget_fraction` of the training device's memory is moved there once
(images as uint8) and the trainer's loaders cut batches there (`DeviceBatches`); images are
converted and augmented on the device after the transfer (`on_after_batch_transfer`), with
a random stream seeded per step. `auto` does so on an accelerator only: on the CPU the
DataLoader path measured about as fast (tests/benchmarks/README.md, "GPU-first training") and keeps
the batch order and augmentation draws, hence the metrics, of earlier versions; `on` takes
the device path on the CPU too (the "device" is then the host). Other splits (streamed,
over the budget, `off`, or differential privacy, which needs its own Poisson-sampled loader)
take the DataLoader path. `eval_dataloader`
always takes the DataLoader path: float32 batches on the host, in order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from bigdeep.data.datasets import (
    AugmentedImages,
    Batched,
    DeviceBatches,
    Images,
    RawImages,
    StreamedImages,
    Windows,
    shard_rows,
    stacked,
)
from bigdeep.data.prepared import (
    SPLITS,
    read_classes,
    read_image_split,
    read_meta,
    read_series_parquet,
    split_file,
)
from bigdeep.data.transforms import (
    Affine,
    as_nchw,
    calendar_features,
    pixel_stats,
    random_affine,
    step_generator,
)

DEVICE_DATA = ("auto", "on", "off")


class SplitDataModule(pl.LightningDataModule):
    """One dataset per split (in memory or streamed) and the loaders over them; the loader
    plumbing shared by both data modules."""

    def __init__(
        self,
        batch_size: int,
        num_workers: int,
        pin_memory: bool,
        seed: int,
        device_data: str = "off",
        device_budget_fraction: float = 0.5,
    ) -> None:
        super().__init__()
        if device_data not in DEVICE_DATA or not 0 < device_budget_fraction <= 1:
            raise ValueError(
                f"device_data must be one of {DEVICE_DATA} and device_budget_fraction in "
                f"(0, 1], got {device_data!r} and {device_budget_fraction}"
            )
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.seed = seed
        self.device_data, self.device_budget_fraction = device_data, device_budget_fraction
        self._datasets: dict[str, Batched | StreamedImages] = {}
        # "split@device:rank/world" -> this process's shard of the split, on the device
        self._on_device: dict[str, Batched] = {}
        self.on_device: list[str] = []  # the splits the trainer's loaders cut on the device

    # --- device-resident splits ---

    def _device_source(self, split: str) -> Batched | None:
        """The split as it would live on the device (on the host still); None: it cannot."""
        dataset = self._datasets.get(split)
        return dataset if isinstance(dataset, Batched) else None

    def _to_device(self, source: Batched, rows: np.ndarray, device: torch.device) -> Batched:
        raise NotImplementedError

    def _device_bytes(self, source: Batched, rows: np.ndarray) -> int:
        raise NotImplementedError

    def device_budget(self, device: torch.device) -> float:
        """Bytes the device-resident splits may take on `device`: `device_budget_fraction`
        of a GPU's memory; unbounded on the CPU, where they are the host copies already
        held (`memory_mb` decides which splits are held)."""
        if device.type == "cuda":
            total = torch.cuda.get_device_properties(device).total_memory
            return total * self.device_budget_fraction
        return float("inf")

    def _device_loader(self, split: str, shuffle: bool) -> DeviceBatches | None:
        """The trainer's loader for a split held on its device; None: the DataLoader path."""
        trainer = self.trainer
        if self.device_data == "off" or trainer is None:
            return None
        device = trainer.strategy.root_device
        if self.device_data == "auto" and device.type == "cpu":
            return None  # on the CPU, `auto` keeps the DataLoader path (module docstring)
        key = f"{split}@{device}:{trainer.global_rank}/{trainer.world_size}"
        if key not in self._on_device:
            source = self._device_source(split)
            need, rows = 0, np.arange(0)
            if source is not None:
                rows = shard_rows(len(source), trainer.global_rank, trainer.world_size)
                need = self._device_bytes(source, rows)
            used = sum(self._device_bytes(d, np.arange(len(d))) for d in self._on_device.values())
            budget = self.device_budget(device)
            if source is None or used + need > budget:
                if self.device_data == "on":
                    why = (
                        "it is streamed from disk (over train.trainer.memory_mb)"
                        if source is None
                        else f"it needs {need / 2**20:,.0f} MiB on {device} beside "
                        f"{used / 2**20:,.0f} MiB, over the budget of {budget / 2**20:,.0f} MiB"
                    )
                    raise ValueError(
                        f"train.trainer.device_data is 'on' but the {split!r} split cannot be "
                        f"held on the device: {why}. Fix: set device_data to auto (such a "
                        "split is then streamed) or raise train.trainer.device_budget_fraction "
                        "/ memory_mb"
                    )
                return None
            self._on_device[key] = self._to_device(source, rows, device)
            self.on_device += [split] if split not in self.on_device else []
        return DeviceBatches(
            self._on_device[key],
            self.batch_size,
            shuffle,
            self.seed,
            lambda: self.trainer.current_epoch if self.trainer is not None else 0,
            device,
        )

    def _loader(self, split: str, shuffle: bool, shard: bool = True) -> DataLoader:
        if split not in self._datasets:
            raise RuntimeError(f"call setup() before asking for the {split!r} loader")
        dataset = self._datasets[split]
        if isinstance(dataset, StreamedImages):  # yields whole batches, shuffles itself
            start_epoch = self.trainer.current_epoch if self.trainer else 0
            dataset = dataset.for_loader(start_epoch, shard)  # its own epoch count
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
            collate_fn=stacked,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader | DeviceBatches:
        on_device = self._device_loader("train", shuffle=True)
        if on_device is not None:
            return on_device
        train = self._datasets.get("train")
        if isinstance(train, AugmentedImages):
            train.restart()  # like the shuffling: the same stream for every loader
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader | DeviceBatches:
        return self._device_loader("val", shuffle=False) or self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader | DeviceBatches:
        return self._device_loader("test", shuffle=False) or self._loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def eval_dataloader(self, split: str = "test") -> DataLoader:
        """Every sample of `split`, in order, whatever the strategy: for evaluation code
        that runs in one process (under DDP the trainer's loaders give each process a part)."""
        return self._loader(split, shuffle=False, shard=False)


# --- images --------------------------------------------------------------------------------


class ImageDataModule(SplitDataModule):
    """Images as float32 (N, C, H, W) in [0, 1] with int64 labels (N,); C and (H, W) are
    the prepared data's (`channels`, `image_size`): 1 for grey, 3 for RGB.

    Train batches are augmented by `random_affine` within `augment_rotate` (degrees),
    `augment_shift` (fraction of the image) and `augment_scale` (relative); all 0 turns it
    off. Val and test images are never changed. `pixel_mean` / `pixel_std`: statistics of the
    train images, for the model's input standardisation.

    A split whose float32 tensors would take more than `memory_mb` is streamed from its
    file (`StreamedImages`, blocks of `block_mb` of uint8 rows) instead of loaded;
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
        device_data: str = "off",
        device_budget_fraction: float = 0.5,
    ) -> None:
        super().__init__(
            batch_size, num_workers, pin_memory, seed, device_data, device_budget_fraction
        )
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
        self._stored: dict[str, torch.Tensor] = {}  # split -> uint8 rows as stored, in memory

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def setup(self, stage: str | None = None) -> None:
        if self._datasets:  # loaded once, whatever the stage
            return
        self.classes = read_classes(self.data_dir / "classes.json")
        for split in SPLITS:
            path = split_file(self.data_dir, split, "x")
            x, y, ids = read_image_split(self.data_dir, split, self.num_classes, mmap=True)
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
                train_rows = x  # uint8 (N, H, W[, C]), mapped: for the pixel statistics
            augment = self.augment if split == "train" and self.augment.active else None
            too_big = x.size * 4 > self.memory_mb * 2**20  # as float32 tensors
            if too_big:
                block_rows = int(self.block_mb * 2**20) // (size[0] * size[1] * channels)
                self._datasets[split] = StreamedImages(
                    path, labels, self.batch_size, block_rows, split == "train", self.seed, augment
                )
                self.streamed.append(split)
                continue
            self._stored[split] = torch.from_numpy(np.array(x))  # uint8 (N, H, W[, C])
            images = as_nchw(self._stored[split])
            self.tensors[split] = (images, labels)  # (N, C, H, W), (N,)
            self.ids[split] = np.array(ids)
            if augment is not None:
                self._datasets[split] = AugmentedImages(images, labels, augment, self.seed)
            else:
                self._datasets[split] = Images(images, labels)
        self.pixel_mean, self.pixel_std = pixel_stats(train_rows)

    def _device_source(self, split: str) -> Batched | None:
        if split not in self._stored:
            return None  # streamed
        return RawImages(self._stored[split], self.tensors[split][1])

    def _to_device(self, source: Batched, rows: np.ndarray, device: torch.device) -> Batched:
        assert isinstance(source, RawImages)
        if len(rows) == len(source) and (rows == np.arange(len(rows))).all():
            return RawImages(source.images.to(device), source.labels.to(device))
        index = torch.from_numpy(rows)
        return RawImages(source.images[index].to(device), source.labels[index].to(device))

    def _device_bytes(self, source: Batched, rows: np.ndarray) -> int:
        assert isinstance(source, RawImages)
        per_row = source.images[0].numel() + 8  # uint8 pixels and an int64 label
        return len(rows) * per_row

    def on_after_batch_transfer(
        self, batch: tuple[torch.Tensor, torch.Tensor], dataloader_idx: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """A device-resident batch (uint8, as stored) -> float32 (B, C, H, W) in [0, 1], and
        in training augmented where it lies, with a stream seeded by (seed, step, rank).
        Batches from the DataLoader path arrive converted (and augmented) already."""
        x, y = batch
        if x.dtype != torch.uint8:
            return batch
        x = as_nchw(x)
        trainer = self.trainer
        if self.augment.active and trainer is not None and trainer.training:
            stream = step_generator(self.seed, trainer.global_step, trainer.global_rank, x.device)
            x = random_affine(x, self.augment, stream)
        return x, y


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


class SeriesDataModule(SplitDataModule):
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
        device_data: str = "off",
        device_budget_fraction: float = 0.5,
    ) -> None:
        super().__init__(
            batch_size, num_workers, pin_memory, seed, device_data, device_budget_fraction
        )
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

    @property
    def input_scaler(self) -> tuple[list[float], list[float]]:
        """(mean, std) of each input column, in `input_columns` order (after setup()): the
        train statistics the values were scaled with; calendar columns are left as they are
        (mean 0, std 1). raw = scaled * std + mean."""
        values = [self.scaler[c] for c in [self.target, *self.features]]
        plain = [0.0] * len(self.calendar_columns)
        return [v["mean"] for v in values] + plain, [v["std"] for v in values] + [1.0] * len(plain)

    def unscale_inputs(self, x: np.ndarray) -> np.ndarray:
        """Scaled windows (N, T, F) -> the same windows in the source's units, float32."""
        mean, std = (np.asarray(v, dtype=np.float64) for v in self.input_scaler)
        return (np.asarray(x, dtype=np.float64) * std + mean).astype(np.float32)

    def setup(self, stage: str | None = None) -> None:
        if self.rows:
            return
        meta = read_meta(self.data_dir / "meta.json")
        self.target, self.features = meta["target"], list(meta["features"])
        self.scaler, self.freq = meta["scaler"], meta.get("freq")
        frame = read_series_parquet(self.data_dir / "series.parquet", [self.target, *self.features])

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
            self._datasets[split] = Windows(inputs, self.rows[split], self.window, self.horizon)

    def _to_device(self, source: Batched, rows: np.ndarray, device: torch.device) -> Batched:
        assert isinstance(source, Windows)
        return source.on(device, rows)

    def _device_bytes(self, source: Batched, rows: np.ndarray) -> int:
        assert isinstance(source, Windows)  # the whole series (each split's copy) and its rows
        return source.values.numel() * source.values.element_size() + 8 * len(rows)

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
