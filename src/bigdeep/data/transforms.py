"""Transforms that belong to the data: image layout and augmentation, calendar inputs.

`as_nchw` turns stored uint8 images into the model's float32 (B, C, H, W) in [0, 1];
`random_affine` augments a train batch in one vectorised op; `pixel_stats` gives the train
images' mean and std for the model's input standardisation; `calendar_features` computes
cyclic calendar inputs for the series from their timestamps.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch.nn import functional as F


def as_nchw(x: torch.Tensor) -> torch.Tensor:
    """uint8 images (N, H, W) or (N, H, W, C) -> float32 (N, C, H, W) in [0, 1].

    A colour batch keeps the NHWC layout in memory (a channels_last tensor), which is the
    layout the CNN computes in anyway.
    """
    x = x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2)
    return x.float().div_(255.0)


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
    cost is a fraction of a training step. Values stay in the input's range. The parameters
    are drawn on `generator`'s device: a generator on the batch's device (`step_generator`)
    augments a batch already on a GPU without a host round trip.
    """
    n = x.shape[0]

    def uniform(limit: float) -> torch.Tensor:  # (B,) in [-limit, limit], on the stream's device
        return (torch.rand(n, generator=generator, device=generator.device) * 2 - 1) * limit

    angle = uniform(math.radians(ranges.rotate))
    zoom = 1 + uniform(ranges.scale)
    # affine_grid maps output to input coordinates in [-1, 1]: a shift of f of the image
    # is 2f there, and the inverse of a zoom by s is a zoom by 1/s.
    tx, ty = uniform(2 * ranges.shift), uniform(2 * ranges.shift)
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)
    theta = theta.to(x.device)  # a no-op when the stream is on the batch's device
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)  # (B, H, W, 2)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def step_generator(seed: int, step: int, rank: int, device: torch.device) -> torch.Generator:
    """A random stream on `device` for one training step: a function of (seed, step, rank)
    only, so a fit's augmentations are the same run to run and after a resume (the step
    count is restored with the checkpoint), and DDP processes draw different ones.

    Seeding a generator is a host-side operation: no device sync.
    """
    mixed = (seed * 1_000_003 + step * 7_919 + rank * 104_729 + 1) % (2**63 - 1)
    return torch.Generator(device=device).manual_seed(mixed)


def pixel_stats(x: np.ndarray, chunk_rows: int | None = None) -> tuple[float, float]:
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
