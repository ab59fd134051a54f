"""Train/test leakage: the same image content (sha256 of its bytes) in two splits.

`prepare` writes each split's `ids` (the sha256 of every image) to
data/processed/images/<split>_ids.npy (`bigdeep.data.prepared`). The gate already quarantines
exact duplicates, so a leak means a duplicate got past it; this check proves there is none
after the split:

    if (error := leakage_error("data/processed/images")): raise PrepareError(error)
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np

from bigdeep.data.prepared import SPLITS, split_file

SHOWN = 5  # leaked ids named in the message


def find_leaks(ids_by_split: dict[str, Iterable[str]]) -> dict[str, list[str]]:
    """Every id found in more than one split -> those splits, in split order. Pure."""
    where: dict[str, list[str]] = {}
    for split, ids in ids_by_split.items():
        for i in dict.fromkeys(str(x) for x in ids):  # each split counted once per id
            where.setdefault(i, []).append(split)
    return {i: splits for i, splits in where.items() if len(splits) > 1}


def leakage_error(processed_dir: str | Path) -> str | None:
    """A sentence naming the leaked ids and their splits, or None when no id is in two splits."""
    folder = Path(processed_dir)
    ids = {}
    for split in SPLITS:
        path = split_file(folder, split, "ids")
        if path.exists():
            ids[split] = np.load(path, allow_pickle=False).tolist()
    leaks = find_leaks(ids)
    if not leaks:
        return None
    shown = "; ".join(f"{i[:12]}... in {' and '.join(s)}" for i, s in list(leaks.items())[:SHOWN])
    more = f" (and {len(leaks) - SHOWN} more)" if len(leaks) > SHOWN else ""
    return (
        f"{folder}: {len(leaks)} image(s) with the same content (sha256) in two splits: "
        f"{shown}{more}; the quality gate's duplicate check should have quarantined them"
    )
