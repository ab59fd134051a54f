"""The accepted range of a series' value columns: what counts as far outside.

A value is an outlier when it lies more than k robust deviations from the median. The
deviation is measured on each side of the median separately (the "double MAD": the median
distance to the median of the values below it, and of those above it, scaled to a normal
sigma), because a series is often skewed: electricity demand has a long upper tail. The
builtin demand and temperature lie within 6 such deviations of their median; a value 1000x
the median lies thousands away.

The median and deviations come from the last accepted version (stored in its reference
profile, `robust`), or, with no reference yet, from the data itself. They are measured on a
sample of at most 2 x SAMPLE values per column, the same whatever the chunking: a row is in
the sample when a hash of its position has its low bits zero, and when the sample fills up,
one more bit must be zero (half the sample goes, evenly). So the bits end as the fewest that
leave at most 2 x SAMPLE of all the rows, and samples of chunks taken apart (on the workers
of a cluster) merge into the same sample. Bounds set in params.yaml (`quality.series.bounds`)
replace the robust bound on their side.

    sample = RobustSample()
    sample.add(values, hashes(start, len(values)))   # chunk by chunk, in row order
    sample.merge(other)         # or: another chunk's sample, taken where that chunk was read
    stats = sample.stats()      # {"median": 4596.3, "low_scale": 970.1, "high_scale": 834.9, ...}
    accepted_range(stats, 20)   # (-14806, 21294): median - 20 low_scale, median + 20 high_scale
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

FINITE = " (finite)"  # suffix of the copy of a value column that the range checks read
SAMPLE = 2**19  # values kept per column: between SAMPLE and 2 x SAMPLE (16 bytes each)
MAD_TO_SIGMA = 1.4826  # a normal distribution's sigma is 1.4826 x its median absolute deviation
Q99_TO_SIGMA = 2.3263  # ... and its 99th percentile lies 2.3263 sigma above its median


def finite_column(column: str) -> str:
    return column + FINITE


def add_finite_columns(frame: pd.DataFrame, columns: list[str]) -> None:
    """Add `<column> (finite)`: the column's numbers with inf and -inf as null. The range
    checks read it, so an infinite value is named once, by `<column>_finite`. (A GX
    row_condition would do the same at ~40% of the series gate's time.)"""
    for c in columns:
        v = frame[c].to_numpy(dtype=np.float64, na_value=np.nan)
        frame[finite_column(c)] = np.where(np.isinf(v), np.nan, v)


def hashes(start: int, n: int) -> np.ndarray:
    """A well-mixed 64-bit hash of row positions start .. start + n - 1 (splitmix64)."""
    z = np.arange(start, start + n, dtype=np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)  # wraps, as intended
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


class RobustSample:
    """The finite values of one column: every row's min and max, an even sample of the rest."""

    def __init__(self, size: int = SAMPLE) -> None:
        self.size = size
        self.mask = np.uint64(0)  # a row is kept when hash & mask == 0
        self.keys: list[np.ndarray] = []
        self.values: list[np.ndarray] = []
        self.kept = 0
        self.count = 0  # finite values seen
        self.low = np.inf
        self.high = -np.inf

    def add(self, values: np.ndarray, row_hashes: np.ndarray) -> None:
        finite = np.isfinite(values)
        if not finite.any():
            return
        self.count += int(finite.sum())
        self.low = min(self.low, float(values[finite].min()))
        self.high = max(self.high, float(values[finite].max()))
        keep = finite & ((row_hashes & self.mask) == 0)
        self.keys.append(row_hashes[keep])
        self.values.append(values[keep])
        self.kept += int(keep.sum())
        self._shrink()

    def merge(self, other: RobustSample) -> None:
        """Add the sample of other rows (the same size, their own hashes): the sample `add`
        makes of both sets of rows, in any order."""
        if not other.count:
            return
        self.count += other.count
        self.low, self.high = min(self.low, other.low), max(self.high, other.high)
        self.mask = max(self.mask, other.mask)
        keys = np.concatenate([*self.keys, *other.keys])
        values = np.concatenate([*self.values, *other.values])
        keep = (keys & self.mask) == 0
        self.keys, self.values, self.kept = [keys[keep]], [values[keep]], int(keep.sum())
        self._shrink()

    def _shrink(self) -> None:
        """One more bit must be zero while the sample holds over 2 x size values."""
        while self.kept > 2 * self.size:
            keys, values = np.concatenate(self.keys), np.concatenate(self.values)
            self.mask = (self.mask << np.uint64(1)) | np.uint64(1)
            keep = (keys & self.mask) == 0
            self.keys, self.values, self.kept = [keys[keep]], [values[keep]], int(keep.sum())

    def stats(self) -> dict[str, Any] | None:
        """median, low_scale and high_scale (robust sigmas below / above it), min, max, count,
        sampled; None when the column has no finite value."""
        if not self.kept:
            return None
        v = np.concatenate(self.values)
        median = float(np.median(v))
        below, above = median - v[v <= median], v[v >= median] - median
        low = MAD_TO_SIGMA * float(np.median(below))
        high = MAD_TO_SIGMA * float(np.median(above))
        # More than half the values on one side equal the median: the 1st / 99th percentile's
        # distance from it, as a sigma, if that is not zero too.
        if low == 0:
            low = (median - float(np.quantile(v, 0.01))) / Q99_TO_SIGMA
        if high == 0:
            high = (float(np.quantile(v, 0.99)) - median) / Q99_TO_SIGMA
        return {
            "median": median,
            "low_scale": low,
            "high_scale": high,
            "min": self.low,
            "max": self.high,
            "count": self.count,
            "sampled": len(v),
        }


def accepted_range(stats: dict[str, Any], k: float) -> tuple[float, float]:
    """median - k low_scale .. median + k high_scale. A side with no spread (at least 99% of
    the values equal the median there) is bounded by the extreme value seen on that side."""
    median = float(stats["median"])
    low = median - k * stats["low_scale"] if stats["low_scale"] > 0 else float(stats["min"])
    high = median + k * stats["high_scale"] if stats["high_scale"] > 0 else float(stats["max"])
    return low, high


@dataclass(frozen=True)
class ValueRange:
    """What a column's values are checked against: the robust range (`<column>_outlier`) and
    the bounds from params.yaml (`<column>_bounds`); None: that side is not checked."""

    column: str
    low: float | None = None  # robust
    high: float | None = None
    median: float | None = None  # of `source`
    source: str = "this data"  # "this data" | "the last accepted version"
    bound_low: float | None = None  # quality.series.bounds
    bound_high: float | None = None

    @property
    def robust(self) -> bool:
        return self.low is not None or self.high is not None

    @property
    def bounded(self) -> bool:
        return self.bound_low is not None or self.bound_high is not None

    @property
    def checked(self) -> bool:
        return self.robust or self.bounded

    def to_json(self) -> dict[str, Any]:
        return {
            "outlier": [self.low, self.high],
            "median": self.median,
            "from": self.source if self.robust else None,
            "bounds": [self.bound_low, self.bound_high],
        }


def value_ranges(
    columns: list[str],
    own: dict[str, dict[str, Any] | None],
    reference: dict[str, Any] | None,
    k: float | None,
    bounds: dict[str, tuple[float | None, float | None]],
) -> dict[str, ValueRange]:
    """Per column: the robust range from the reference's stats when it has them, else from
    this data's (k None: not checked); a side that params.yaml bounds is not checked twice."""
    ref_stats = (reference or {}).get("robust", {})
    ranges = {}
    for c in columns:
        stats, source = ref_stats.get(c), "the last accepted version"
        if stats is None:
            stats, source = own.get(c), "this data"
        b_low, b_high = bounds.get(c, (None, None))
        low = high = median = None
        if stats is not None and k is not None:
            low, high = accepted_range(stats, k)
            median = float(stats["median"])
            low = None if b_low is not None else low
            high = None if b_high is not None else high
        ranges[c] = ValueRange(c, low, high, median, source, b_low, b_high)
    return ranges
