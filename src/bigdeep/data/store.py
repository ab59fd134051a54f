"""The canonical store: a folder of Parquet shards, written atomically.

Images are rows of (record_id, source, label, image bytes), many per shard, never one
file per image (DVC is slow with millions of small files). Series are rows of
(row, timestamp, value columns...).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

if TYPE_CHECKING:
    from bigdeep.compute import Executor

IMAGE_SCHEMA = pa.schema(
    [
        ("record_id", pa.string()),
        ("source", pa.string()),
        ("label", pa.string()),
        ("image", pa.binary()),
    ]
)


def write_shards(
    batches: Iterable[Any],
    out_dir: Path,
    executor: Executor | None = None,
    build: Callable[[Any], pd.DataFrame | pa.Table] | None = None,
) -> int:
    """Write each batch as one shard `part-NNNNN.parquet`; replace `out_dir` atomically.

    Returns the number of rows written. The new folder is built beside the old one and
    swapped in only when complete, so a crash never leaves a half-written dataset (a failed
    write removes it). build: what turns a batch into its rows where the shard is written
    (e.g. reading the files an image shard lists); None: batches are the rows. executor: a
    Dask cluster (bigdeep.compute) builds, encodes and writes the shards, which then must see
    the same folder; batches are taken here, in order.
    """
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(out_dir.name + ".tmp").resolve()
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        if executor is None:
            rows = sum(_write_shard(item, tmp, build) for item in enumerate(batches))
        else:
            # Arrow tables travel as their buffers; a DataFrame of text is pickled row by row
            items = batches if build else (_as_table(b) for b in batches)
            rows = sum(executor.map_ordered(_write_shard, enumerate(items), tmp, build))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)
    return rows


def _write_shard(
    item: tuple[int, Any], folder: Path, build: Callable[[Any], pd.DataFrame | pa.Table] | None
) -> int:
    """Write batch i, through `build` if given, as folder/part-{i:05d}.parquet; its row count
    (runs on a worker)."""
    i, batch = item
    table = _as_table(batch if build is None else build(batch))
    pq.write_table(table, folder / f"part-{i:05d}.parquet")
    return table.num_rows


def _as_table(batch: pd.DataFrame | pa.Table) -> pa.Table:
    return (
        batch if isinstance(batch, pa.Table) else pa.Table.from_pandas(batch, preserve_index=False)
    )


def shard_paths(shards_dir: str | Path, *, empty_ok: bool) -> list[Path]:
    """The `part-*.parquet` shards of a store, in name order.

    `empty_ok`: an existing folder without shards gives [] (the gate validates an empty store,
    and its volume checks say it is empty); otherwise no shards is an error, as readers of the
    data need some. A missing folder is always an error.
    """
    shards_dir = Path(shards_dir)
    if empty_ok and not shards_dir.is_dir():
        raise FileNotFoundError(f"{shards_dir}: no such directory (run `bigdeep ingest` first)")
    paths = sorted(shards_dir.glob("part-*.parquet"))
    if not paths and not empty_ok:
        raise FileNotFoundError(
            f"{shards_dir}: no part-*.parquet shards (run `bigdeep ingest` first)"
        )
    return paths


def iter_shards(shards_dir: Path, columns: list[str] | None = None) -> Iterator[pd.DataFrame]:
    """Yield one DataFrame per shard: memory stays bounded by the shard size."""
    for path in shard_paths(shards_dir, empty_ok=False):
        yield pq.read_table(path, columns=columns).to_pandas()


def read_all(shards_dir: Path, columns: list[str] | None = None) -> pd.DataFrame:
    return pd.concat(list(iter_shards(shards_dir, columns)), ignore_index=True)
