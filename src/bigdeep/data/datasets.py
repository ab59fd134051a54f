"""The datasets behind the data modules: one per split, each yielding whole batches.

A split held in memory is a map-style dataset whose batches are cut with one tensor index
per batch (`Batched.__getitems__`), not one Python `__getitem__` per sample: on a CPU that
per-sample loop, not the model, would otherwise bound the throughput at small batch sizes.
An image split too large for memory is streamed from its file (`StreamedImages`) in blocks
of rows, block order and rows within a block shuffled per epoch; prepare stores rows in a
seeded random order, so every block holds every class.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from bigdeep.data.transforms import Affine, as_nchw, random_affine

# Lightning warns that a sized IterableDataset may repeat data across workers; a streamed
# split deals each worker its own batches, so its length is exact (tests/unit/test_datamodules).
warnings.filterwarnings("ignore", message="Your `IterableDataset` has `__len__` defined")


class Batched(Dataset):
    """Map-style dataset that cuts a whole batch with one tensor index.

    `DataLoader` calls `__getitems__(indices)` once per batch (torch >= 2.2), so a batch is
    one advanced-indexing op; `stacked` (the collate_fn) passes it through unchanged.
    """

    def batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.batch(torch.tensor([i]))
        return x[0], y[0]

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.batch(torch.as_tensor(indices))


class Images(Batched):
    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images, self.labels = images, labels  # (N, C, H, W) float32, (N,) int64

    def __len__(self) -> int:
        return len(self.labels)

    def batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[idx], self.labels[idx]


class AugmentedImages(Images):
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


class RawImages(Batched):
    """Images kept as stored, uint8 (N, H, W[, C]), with int64 labels (N,), on any device:
    a batch is cut there and converted (`as_nchw`, augmentation) after the transfer, by the
    data module's `on_after_batch_transfer`. A quarter of float32's memory."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.images[idx], self.labels[idx]


class DeviceBatches:
    """A loader over a split held on the training device: batches cut there by index.

    No worker, no collate, no copy per batch: each epoch is one seeded permutation on the
    device (train; the split's order for val/test) sliced into index tensors, and
    `dataset.batch` gathers each batch where the data lives. The permutation is a function
    of (`seed`, `epoch()`) only, so a resumed fit continues the same sequence.

    `dataset` holds this process's shard only (`shard_rows`): under DDP each process keeps
    and shuffles its own rows, so no process holds the others' data.
    """

    def __init__(
        self,
        dataset: Batched,
        batch_size: int,
        shuffle: bool,
        seed: int,
        epoch: Callable[[], int],
        device: torch.device,
    ) -> None:
        self.dataset, self.batch_size, self.shuffle = dataset, batch_size, shuffle
        self.seed, self.epoch, self.device = seed, epoch, torch.device(device)

    def __len__(self) -> int:
        return -(-len(self.dataset) // self.batch_size)

    def order(self, epoch: int) -> torch.Tensor:
        """The epoch's sample order, an int64 tensor on the device."""
        n = len(self.dataset)
        if not self.shuffle:
            return torch.arange(n, device=self.device)
        generator = torch.Generator(device=self.device).manual_seed(self.seed * 1_009 + epoch)
        return torch.randperm(n, generator=generator, device=self.device)

    def __iter__(self):
        order = self.order(self.epoch())
        for i in range(0, len(order), self.batch_size):
            yield self.dataset.batch(order[i : i + self.batch_size])


def shard_rows(n: int, rank: int, world: int) -> np.ndarray:
    """This process's rows of 0..n-1 under DDP: every world-th row from `rank`, the list
    wrapped to a multiple of `world` (like torch's DistributedSampler: every process steps
    equally often; up to world - 1 rows are seen twice). All rows when world is 1."""
    total = -(-n // world) * world
    return (np.arange(total) % n)[rank::world]


class StreamedImages(IterableDataset):
    """An image split streamed from its x .npy in blocks of rows; yields whole batches.

    Each pass is one epoch. Its batches are the same list in every process: the blocks
    (`block_rows` consecutive rows each) in a random order, and within a block the rows in
    a random order, cut into batches (train; in file order for val/test). Batch j goes to
    distributed process j % world (the list wraps around to a multiple of world, so every
    process steps the same number of times, as DDP needs; like torch's DistributedSampler,
    up to world - 1 batches are seen twice) and within a process to loader worker
    j // world % workers; the loader takes one batch from each worker in turn, so a
    process sees its batches in list order. Memory: one block (uint8) per worker.

    The epoch number comes from `start_epoch` (the trainer's epoch when the loader was
    made, so a resumed fit continues the sequence) plus the passes made since: each loader
    takes its own copy (`for_loader`).
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
        self.path, self.labels = Path(path), labels  # x's .npy; labels (N,) int64, in memory
        self.batch_size, self.block_rows = batch_size, max(int(block_rows), batch_size)
        self.shuffle, self.seed, self.augment = shuffle, seed, augment
        self.start_epoch, self._passes = 0, 0
        self.shard = True  # deal batches to distributed processes (False: this one reads all)
        self._x: np.ndarray | None = None

    def for_loader(self, start_epoch: int, shard: bool) -> StreamedImages:
        """A copy for one loader: its passes counted from `start_epoch`; `shard` False reads
        every batch in this process (evaluation outside the trainer)."""
        mine = copy.copy(self)
        mine.start_epoch, mine._passes, mine.shard = start_epoch, 0, shard
        return mine

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
            self._x = np.load(self.path, mmap_mode="r")  # mapped in the process that reads it
        return self._x

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_x": None}  # workers map the file themselves


class Windows(Batched):
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

    def on(self, device: torch.device, samples: np.ndarray) -> Windows:
        """The samples `samples` (indices into `rows`) with the whole series on `device`."""
        mine = Windows(
            self.values.to(device), self.rows.numpy()[samples], self.window, self.horizon
        )
        mine.rows = mine.rows.to(device)
        return mine

    def batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t = self.rows[idx]  # (B,)
        x = self._inputs[t - self.window].transpose(1, 2).contiguous()  # (B, window, F)
        return x, self._labels[t]  # (B, window, F), (B, horizon)


def stacked(batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    return batch  # already a batch: see Batched.__getitems__
