"""Stage `ingest`: read a source, write it to the canonical store `data/raw/<dataset>/`.

    bigdeep ingest images     # params: data.images
    bigdeep ingest series     # params: data.series

The output is a pure function of the source's content and the params, so an unchanged
source gives byte-identical shards and DVC skips everything downstream.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bigdeep.config import Settings
from bigdeep.data.sources import iter_image_batches, read_series
from bigdeep.data.store import IMAGE_SCHEMA, write_shards


@dataclass(frozen=True)
class IngestResult:
    dataset: str
    rows: int
    out_dir: Path


def ingest_images(settings: Settings, out_dir: Path, root: Path = Path(".")) -> IngestResult:
    import pyarrow as pa

    batches = (
        pa.Table.from_pandas(b, schema=IMAGE_SCHEMA, preserve_index=False)
        for b in iter_image_batches(settings.data.images, root)
    )
    rows = write_shards(batches, out_dir)
    return IngestResult("images", rows, out_dir)


def ingest_series(settings: Settings, out_dir: Path, root: Path = Path(".")) -> IngestResult:
    cfg = settings.data.series
    frame = read_series(cfg, root)
    frame.attrs = {}  # keep pandas metadata out of the shard so bytes depend on data only
    shards = (
        frame.iloc[i : i + cfg.shard_rows] for i in range(0, max(len(frame), 1), cfg.shard_rows)
    )
    rows = write_shards(shards, out_dir)
    return IngestResult("series", rows, out_dir)


INGEST = {"images": ingest_images, "series": ingest_series}
