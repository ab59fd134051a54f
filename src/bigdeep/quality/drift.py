"""Reference profiles of accepted data, and drift against them.

When a dataset passes the gate, a compact profile of it is saved (`write_reference`):
row count, histograms with fixed bin edges for numeric measures (pixel intensities,
per-image means, series columns) and value counts for categorical ones (labels). The next
validation compares the new data to it: Jensen-Shannon divergence (base 2, in [0, 1]) for
histograms, L-infinity distance (largest change of any value's share) for frequencies.

    reference = load_reference("data/reference/images/mnist.json", identity="mnist")  # profile None at first
    js_divergence([10, 0], [5, 5])                              # 0.311...
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

FORMAT = 1
SERIES_BINS = 32  # equal-width bins between the reference's min and max
MAX_CATEGORIES = 20  # a text column with more distinct values is not a category


@dataclass
class Reference:
    """The last accepted version's profile, as read from `path`."""

    path: str
    profile: dict[str, Any] | None = None  # None: no accepted version yet
    error: str | None = None  # why the file could not be used
    identity: str | None = None  # the dataset identity whose history this is


def load_reference(path: str | Path, identity: str | None = None) -> Reference:
    """Read a reference profile; a missing file is no reference, a broken one says why."""
    path = Path(path)
    if not path.exists():
        return Reference(str(path), identity=identity)
    try:
        profile = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        return Reference(
            str(path),
            error=f"{path} is not readable JSON ({e}); delete it to start afresh",
            identity=identity,
        )
    if not isinstance(profile, dict) or profile.get("format") != FORMAT:
        return Reference(
            str(path),
            error=f"{path} is not a bigdeep reference profile (format {FORMAT}); delete it",
            identity=identity,
        )
    return Reference(str(path), profile=profile, identity=identity)


def write_reference(profile: dict[str, Any], path: str | Path) -> Path:
    """Write atomically: a crash never leaves a half-written reference."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(profile, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


# --- distances -----------------------------------------------------------------------------


def js_divergence(p: Any, q: Any) -> float:
    """Jensen-Shannon divergence of two histograms (counts or shares), base 2: 0 = same, 1 = disjoint."""
    p, q = np.asarray(p, dtype=np.float64), np.asarray(q, dtype=np.float64)
    if p.shape != q.shape:
        raise ValueError(f"histograms differ in length: {p.shape} vs {q.shape}")
    if p.sum() == 0 or q.sum() == 0:
        return 0.0 if p.sum() == q.sum() else 1.0
    p, q = p / p.sum(), q / q.sum()
    m = (p + q) / 2

    def kl(a: np.ndarray) -> float:
        nz = a > 0
        return float(np.sum(a[nz] * np.log2(a[nz] / m[nz])))

    return min(1.0, max(0.0, (kl(p) + kl(q)) / 2))


def linf_distance(p: dict[str, int], q: dict[str, int]) -> float:
    """Largest absolute change of any value's share between two frequency tables."""
    tp, tq = sum(p.values()), sum(q.values())
    if tp == 0 or tq == 0:
        return 0.0 if tp == tq else 1.0
    return max(abs(p.get(k, 0) / tp - q.get(k, 0) / tq) for k in set(p) | set(q))


# --- accumulating a profile over chunks ----------------------------------------------------


@dataclass
class Histogram:
    """Counts over fixed edges; values outside them land in the end bins."""

    edges: np.ndarray
    counts: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.edges = np.asarray(self.edges, dtype=np.float64)
        self.counts = np.zeros(len(self.edges) - 1, dtype=np.int64)

    def add(self, values: Any) -> None:
        v = np.asarray(values, dtype=np.float64)
        v = v[np.isfinite(v)]
        if len(v):
            self.counts += np.histogram(v.clip(self.edges[0], self.edges[-1]), self.edges)[0]

    def to_json(self) -> dict[str, list]:
        return {"edges": [float(e) for e in self.edges], "counts": [int(c) for c in self.counts]}


def edges_between(low: float | None, high: float | None, bins: int = SERIES_BINS) -> np.ndarray:
    """Equal-width edges from low to high (one unit-wide bin when they are equal or absent)."""
    if low is None or high is None or not math.isfinite(low) or not math.isfinite(high):
        return np.array([0.0, 1.0])
    if high <= low:
        return np.array([low - 0.5, low + 0.5])
    return np.linspace(low, high, bins + 1)


class ProfileBuilder:
    """Builds this version's profile chunk by chunk, and the histograms on the reference's
    edges that drift is measured with."""

    def __init__(self, dataset: str, edges: dict[str, np.ndarray], reference: dict | None) -> None:
        self.dataset = dataset
        self.rows = 0
        self.own = {m: Histogram(e) for m, e in edges.items()}
        ref_numeric = (reference or {}).get("numeric", {})
        self.on_ref = {m: Histogram(h["edges"]) for m, h in ref_numeric.items()}
        self.categorical: dict[str, Counter[str]] = {}
        self.too_many: set[str] = set()  # columns that turned out not to be categories
        self.robust: dict[str, dict[str, Any]] = {}  # series: median and spread (ranges.py)

    def add_numeric(self, measure: str, values: Any) -> None:
        if measure in self.own:
            self.own[measure].add(values)
        if measure in self.on_ref:
            self.on_ref[measure].add(values)

    def add_counts(self, measure: str, measure_counts: np.ndarray) -> None:
        """Add counts that are already binned on the measure's fixed edges (pixel intensities)."""
        for hist in (self.own.get(measure), self.on_ref.get(measure)):
            if hist is not None and len(hist.counts) == len(measure_counts):
                hist.counts += np.asarray(measure_counts, dtype=np.int64)

    def add_categories(
        self, measure: str, values: pd.Series, limit: int | None = MAX_CATEGORIES
    ) -> None:
        """Count values; a column with more than `limit` distinct ones is dropped (None: keep)."""
        if measure in self.too_many:
            return
        counts = self.categorical.setdefault(measure, Counter())
        for value, n in values.dropna().astype(str).value_counts().items():
            counts[str(value)] += int(n)
        if limit is not None and len(counts) > limit:
            self.too_many.add(measure)
            del self.categorical[measure]

    def merge(self, other: ProfileBuilder, limit: int | None = MAX_CATEGORIES) -> None:
        """Add what a builder on the same edges and reference counted of other chunks (on a
        cluster's worker): the counts `add_numeric` and `add_categories` would have made of
        them here. `rows` is left to the caller."""
        for mine, theirs in ((self.own, other.own), (self.on_ref, other.on_ref)):
            for measure, hist in theirs.items():
                mine[measure].counts += hist.counts
        for measure in other.too_many:
            self.too_many.add(measure)
            self.categorical.pop(measure, None)
        for measure, counts in other.categorical.items():
            if measure in self.too_many:
                continue
            mine = self.categorical.setdefault(measure, Counter())
            mine.update(counts)
            if limit is not None and len(mine) > limit:
                self.too_many.add(measure)
                del self.categorical[measure]

    def profile(self) -> dict[str, Any]:
        """The reference profile to save if this version is accepted."""
        profile = {
            "format": FORMAT,
            "dataset": self.dataset,
            "rows": self.rows,
            "numeric": {m: h.to_json() for m, h in sorted(self.own.items())},
            "categorical": {
                m: dict(sorted(c.items())) for m, c in sorted(self.categorical.items())
            },
        }
        if self.robust:
            profile["robust"] = dict(sorted(self.robust.items()))
        return profile

    def drift(self, reference: dict | None) -> list[dict[str, Any]]:
        """One row per measure: measure, kind (numeric | categorical), js (histograms) or linf
        (frequencies); the value is
        None when there is no reference or the measure is missing from one side."""
        rows: list[dict[str, Any]] = []
        ref_numeric = (reference or {}).get("numeric", {})
        for m in sorted(set(self.own) | set(ref_numeric)):
            value = None
            if reference is not None and m in self.on_ref and m in self.own:
                value = js_divergence(ref_numeric[m]["counts"], self.on_ref[m].counts)
            rows.append({"measure": m, "kind": "numeric", "js": value, "linf": None})
        ref_cat = (reference or {}).get("categorical", {})
        for m in sorted(set(self.categorical) | set(ref_cat)):
            value = None
            if reference is not None and m in ref_cat and m in self.categorical:
                value = linf_distance(ref_cat[m], self.categorical[m])
            rows.append({"measure": m, "kind": "categorical", "js": None, "linf": value})
        return rows
