"""What a series' timestamps say as a whole, and the per-row columns derived from it.

Uniqueness, regular frequency and one timezone are facts about the whole series, but the
gate validates it chunk by chunk. So a first pass reads only the timestamps (8 bytes per
row) and their zones into a `Timeline` (`timeline_piece` where a chunk is read, then
`TimelineBuilder.add` in row order); a `Deriver` then adds to each chunk the per-row columns
that Great Expectations checks. The Timeline names rows by their position in the series, so
a chunk is derived on its own, wherever it is, given its first row's position and the
timestamp of the row before it:

    ts_repeats          rows sharing this row's timestamp (1 when unique)
    ts_after_previous_s seconds after the previous row (<= 0: not increasing)
    ts_gap_s            on the first row after a hole in time longer than the gap limit
                        (max_gap, else one step): the hole's length in seconds; else null
    ts_on_grid          on the series' grid: a whole number of steps from the common phase
    ts_zone_offset      True when the source gave a UTC offset (or Z), False when naive
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

ZONE_COLUMN = "timestamp_zone"  # written by ingest: the zone as the source wrote it
DERIVED = ["ts_repeats", "ts_after_previous_s", "ts_gap_s", "ts_on_grid", "ts_zone_offset"]
NAT = np.iinfo(np.int64).min  # a missing or unparsable timestamp, in `micros`
SAMPLE = 1_000_000  # timestamps sampled (evenly) to find the most common step and phase


@dataclass
class Timeline:
    rows: int = 0
    freq_us: int | None = None  # the expected step
    freq_inferred: bool = True  # False when it came from quality.series.freq
    phase_us: int | None = None  # the most common (timestamp mod freq)
    zone_kind: str | None = None  # the most common zone kind
    zones: dict[str, int] = field(default_factory=dict)  # zone as written -> rows
    # rows whose timestamp another row shares: their positions (sorted) and how many share it
    repeat_at: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    repeat_n: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    newest_us: int | None = None
    gap_limit_us: int | None = None  # holes longer than this are gaps
    # gaps between the sorted distinct timestamps: the position of the first row at each
    # gap's end (sorted), and the gap's length
    gap_at: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    gap_us: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))

    @property
    def freq(self) -> str | None:
        return None if self.freq_us is None else duration_text(self.freq_us / 1e6)


def timeline_piece(
    timestamps: pd.Series, zones: pd.Series | None
) -> tuple[np.ndarray, Counter[str]]:
    """What one chunk adds to the timeline: its timestamps (`micros`, 8 bytes a row) and its
    rows per zone as written (runs where the chunk is read)."""
    counts: Counter[str] = Counter()
    if zones is not None:
        counts.update({str(k): int(v) for k, v in zones.value_counts().items() if v})
    elif isinstance(timestamps.dtype, pd.DatetimeTZDtype):
        counts[str(timestamps.dt.tz)] += int(timestamps.notna().sum())
    else:
        counts["naive"] += int(timestamps.notna().sum())
    return micros(timestamps), counts


class TimelineBuilder:
    """Collects timestamps chunk by chunk (8 bytes per row), then makes the Timeline."""

    def __init__(self, freq: str | None = None, max_gap: str | None = None) -> None:
        self.freq = freq
        self.max_gap = max_gap
        self.parts: list[np.ndarray] = []
        self.zones: Counter[str] = Counter()

    def add(self, piece: tuple[np.ndarray, Counter[str]]) -> None:
        """Add the next chunk's `timeline_piece`, in row order."""
        timestamps, zones = piece
        self.parts.append(timestamps)
        self.zones.update(zones)

    def build(self) -> Timeline:
        """Duplicates, the frequency and its phase, gaps. Peak memory ~3 x 8 bytes a row."""
        ts = np.concatenate(self.parts) if self.parts else np.empty(0, dtype=np.int64)
        self.parts = []
        valid = ts != NAT
        good = ts[valid]
        good.sort()  # (valid rows,) in time order: repeats are neighbours, steps are gaps
        timeline = Timeline(rows=len(ts), zones=dict(self.zones))
        if len(good):
            timeline.newest_us = int(good[-1])

        # rows that share a timestamp: their positions, and how many share it
        shared = np.unique(good[1:][good[1:] == good[:-1]])
        if len(shared):
            at = np.searchsorted(shared, ts).clip(max=len(shared) - 1)
            timeline.repeat_at = np.flatnonzero(valid & (shared[at] == ts))
            n = np.searchsorted(good, shared, "right") - np.searchsorted(good, shared, "left")
            timeline.repeat_n = n[at[timeline.repeat_at]]
            del at

        steps = np.diff(good)  # (valid rows - 1,) between time-ordered timestamps
        # The frequency and phase are modes; a strided sample of at most ~1M finds them.
        if self.freq is not None:
            timeline.freq_us, timeline.freq_inferred = _us(self.freq), False
        else:
            sample = steps[:: max(1, len(steps) // SAMPLE)]
            timeline.freq_us = _mode(sample[sample > 0])
        if timeline.freq_us and len(good):
            timeline.phase_us = _mode(good[:: max(1, len(good) // SAMPLE)] % timeline.freq_us)
        # Gaps are holes in time, whatever the row order: between time-ordered timestamps.
        limit = _us(self.max_gap) if self.max_gap else timeline.freq_us
        if limit:
            timeline.gap_limit_us = int(limit)
            over = np.flatnonzero(steps > limit)
            # the first row at a gap's end carries it (a gap is named once, whatever repeats)
            at = _first_rows(ts, good[over + 1])
            order = np.argsort(at)
            timeline.gap_at, timeline.gap_us = at[order], steps[over][order]
        del ts, valid
        kinds: Counter[str] = Counter()
        for zone, n in self.zones.items():
            kinds[zone_kind(zone)] += n
        if kinds:
            timeline.zone_kind = kinds.most_common(1)[0][0]
        return timeline


def _first_rows(ts: np.ndarray, values: np.ndarray) -> np.ndarray:
    """The position of the first row of `ts` holding each of `values` (sorted, distinct, each
    held by some row), read SAMPLE rows at a time (no second array as long as `ts`)."""
    first = np.full(len(values), -1, dtype=np.int64)
    if not len(values):
        return first
    for start in range(0, len(ts), SAMPLE):
        block = ts[start : start + SAMPLE]
        at = np.searchsorted(values, block).clip(max=len(values) - 1)
        hit = np.flatnonzero(values[at] == block)
        found, where = np.unique(at[hit], return_index=True)  # the first hit of each value
        new = first[found] < 0
        first[found[new]] = start + hit[where[new]]
    return first


def _mode(values: np.ndarray) -> int | None:
    if not len(values):
        return None
    distinct, counts = np.unique(values, return_counts=True)
    return int(distinct[np.argmax(counts)])


def zone_kind(zone: str | None) -> str | None:
    if zone is None or zone != zone:  # None or NaN
        return None
    return "naive" if zone == "naive" else "offset"


def micros(timestamps: pd.Series) -> np.ndarray:
    """Timestamps as int64 microseconds since the epoch (UTC); NaT and junk as int64 min.
    (Microseconds, not nanoseconds: they reach years far outside 1677-2262.)"""
    if not (
        pd.api.types.is_datetime64_any_dtype(timestamps.dtype)
        or isinstance(timestamps.dtype, pd.DatetimeTZDtype)
    ):
        timestamps = pd.to_datetime(timestamps, utc=True, errors="coerce", format="mixed")
    values = timestamps.dt.as_unit("us").to_numpy(dtype="datetime64[us]").view(np.int64)
    return values.copy()


class Deriver:
    """Adds the DERIVED columns to a chunk of one series, or to consecutive chunks: `start` is
    the position of the first row, `previous` the timestamp of the row before it (`micros`;
    the Timeline's first pass knows both for every chunk)."""

    def __init__(
        self, timeline: Timeline, timestamp: str, start: int = 0, previous: int = NAT
    ) -> None:
        self.t = timeline
        self.timestamp = timestamp
        self.position = start  # the next row's position
        self.previous = previous  # the previous row's timestamp

    def derive(self, frame: pd.DataFrame) -> pd.DataFrame:
        n = len(frame)
        frame = frame.copy()
        if self.timestamp not in frame:  # reported by the column check; nothing to derive
            self.position += n
            return frame
        ts = micros(frame[self.timestamp])
        valid = ts != NAT
        start = self.position

        repeats = pd.array(np.ones(n, dtype=np.int64), dtype="Int64")
        lo, hi = np.searchsorted(self.t.repeat_at, [start, start + n])
        repeats[self.t.repeat_at[lo:hi] - start] = self.t.repeat_n[lo:hi]
        repeats[~valid] = pd.NA
        frame["ts_repeats"] = repeats

        previous = np.concatenate([[self.previous], ts[:-1]])  # (n,) each row's predecessor
        after = (ts - previous) / 1e6
        after[~valid | (previous == NAT)] = np.nan
        frame["ts_after_previous_s"] = after

        gap = np.full(n, np.nan)
        lo, hi = np.searchsorted(self.t.gap_at, [start, start + n])
        gap[self.t.gap_at[lo:hi] - start] = self.t.gap_us[lo:hi] / 1e6
        frame["ts_gap_s"] = gap

        if self.t.freq_us and self.t.phase_us is not None:
            on_grid = pd.array((ts - self.t.phase_us) % self.t.freq_us == 0, dtype="boolean")
            on_grid[~valid] = pd.NA
        else:
            on_grid = pd.array([pd.NA] * n, dtype="boolean")
        frame["ts_on_grid"] = on_grid

        # a boolean, not the text "offset" / "naive": text columns cost GX ~1 us a row more
        if ZONE_COLUMN in frame:
            zone = frame[ZONE_COLUMN]
            offset = pd.array((zone != "naive").to_numpy(bool), dtype="boolean")
            offset[(zone.isna().to_numpy()) | ~valid] = pd.NA
        else:
            aware = isinstance(frame[self.timestamp].dtype, pd.DatetimeTZDtype)
            offset = pd.array(np.full(n, aware), dtype="boolean")
            offset[~valid] = pd.NA
        frame["ts_zone_offset"] = offset

        self.previous = int(ts[-1]) if n else self.previous
        self.position += n
        return frame


def _us(duration: str) -> int:
    return int(pd.Timedelta(duration).value // 1000)


def duration_text(seconds: float) -> str:
    """3 d 4 h 30 min -> '3d4h30min'; 90 s -> '1min30s'."""
    if seconds != seconds:  # NaN
        return "NaN"
    whole = int(round(seconds))
    parts = []
    for unit, size in (("d", 86_400), ("h", 3_600), ("min", 60), ("s", 1)):
        if whole >= size:
            parts.append(f"{whole // size}{unit}")
            whole %= size
    return "".join(parts) or f"{seconds:g}s"
