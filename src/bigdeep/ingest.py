"""Stage `ingest`: read a source, write it to the canonical store `data/raw/<dataset>/`.

    bigdeep ingest images     # params: data.images
    bigdeep ingest series     # params: data.series

The output is a pure function of the source's content and the params, so an unchanged
source gives byte-identical shards and DVC skips everything downstream. Both datasets are
streamed: memory holds one shard (`shard_rows`), whatever the size of the source. Images:
this process only plans the shards (lists a folder, decodes IDX files, caps per class);
each shard's files are read, or its pixels PNG-encoded, where it is written: on the Dask
workers with `compute.cluster` set (bigdeep.compute), else here, by the same function, so
the shards are the same bytes. Series: this process parses the source; workers write.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pyarrow as pa

from bigdeep.compute import open_executor
from bigdeep.config import Settings
from bigdeep.data.sources import (
    ImageShard,
    arrow_safe,
    image_rows,
    iter_series,
    open_series,
    plan_image_shards,
)
from bigdeep.data.store import IMAGE_SCHEMA, write_shards


@dataclass(frozen=True)
class IngestResult:
    dataset: str
    rows: int
    out_dir: Path
    notes: list[str] = field(default_factory=list)  # read, but left for the gate to judge


def ingest_images(settings: Settings, out_dir: Path, root: Path = Path(".")) -> IngestResult:
    shards = plan_image_shards(settings.data.images, root)  # lists, caps: no image bytes yet
    with open_executor(settings.compute) as executor:  # reads, encodes, writes: compute.cluster
        rows = write_shards(shards, out_dir, executor, build=image_table)
    return IngestResult("images", rows, out_dir)


def image_table(shard: ImageShard) -> pa.Table:
    """A planned shard's rows as a store table: its files read or pixels encoded where it runs."""
    return pa.Table.from_pandas(image_rows(shard), schema=IMAGE_SCHEMA, preserve_index=False)


def ingest_series(settings: Settings, out_dir: Path, root: Path = Path(".")) -> IngestResult:
    cfg = settings.data.series
    source = open_series(cfg, root)
    shards = (arrow_safe(s) for s in rebatch(iter_series(cfg, root, source), cfg.shard_rows))
    with open_executor(settings.compute) as executor:
        rows = write_shards(shards, out_dir, executor)
    return IngestResult("series", rows, out_dir, source.notes)


def rebatch(frames: Iterable[pd.DataFrame], size: int) -> Iterator[pd.DataFrame]:
    """Frames of exactly `size` rows (the last one fewer), whatever sizes come in.

    Shards do not depend on how the source was chunked (rows dropped by `last_days` included).
    With no rows at all, one empty frame keeps the columns, so the gate can say "no rows".
    """
    pending: list[pd.DataFrame] = []
    count, empty, emitted = 0, None, False
    for frame in frames:
        empty = frame.iloc[:0] if empty is None else empty
        while len(frame):
            part = frame.iloc[: size - count]
            frame = frame.iloc[len(part) :]
            pending.append(part)
            count += len(part)
            if count == size:
                yield _joined(pending)
                pending, count, emitted = [], 0, True
    if pending:
        yield _joined(pending)
    elif not emitted and empty is not None:
        yield empty


def _joined(parts: list[pd.DataFrame]) -> pd.DataFrame:
    return parts[0] if len(parts) == 1 else pd.concat(parts, ignore_index=True)


INGEST = {"images": ingest_images, "series": ingest_series}
