"""The data stages on Dask: in-process vs a local cluster of 1 and 2 workers (issue 13).

    python tests/benchmarks/bench_dask.py                                 # 1M images, 10M rows
    python tests/benchmarks/bench_dask.py --images 200000 --rows 2000000  # a quick run
    python tests/benchmarks/bench_dask.py --images 0 --rows 1000000       # series only

images  ingest of the same generated digits from a folder source (one PNG file each: the
        workers read the files) and from an IDX source (decoded pixels: the workers
        PNG-encode them); validate (profile + Great Expectations gate, quarantine written)
        and prepare of a raw store of generated digits (bench_quality.make_images: 2,000-image
        shards);
series  ingest of a CSV source (5 columns, 1-minute grid, bench_quality.make_series),
        validate of what it wrote (100,000-row shards; quarantine written) and prepare
        (resampled to 1 h, split, scaled).

Each (dataset, cluster) runs in its own process, so the driver's peak memory (ru_maxrss) is
its own; a worker's peak is read on the worker (`client.run`) before the cluster closes.
CPU s/shard: CPU seconds of the driver and of all workers together (ru_utime + ru_stime,
the cluster's start included), per shard: what the projection in docs/scaling.md scales up.
Cluster start-up is timed apart (`start s`): a stage pays it once. `none` is today's path
(compute.cluster null): the image gate then decodes in a process pool of every core from
200,000 images on (quality/profile.py PARALLEL_MIN_ROWS), one process below.
Target: image gate throughput on 2 workers >= 1.7x that on 1 worker, on two free cores.
Data are written once under --data and reused.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]

CLUSTERS = ["none", "local:1", "local:2"]


def make_csv(root: Path, rows: int) -> Path:
    """A CSV source of `rows` rows (Time, Demand, Temperature, Holiday)."""
    import pandas as pd

    from tests.benchmarks.bench_quality import make_series

    out = root / f"series-{rows}.csv"
    if out.exists():
        return out
    frame = pd.concat(
        pd.read_parquet(p) for p in sorted(make_series(root, rows).glob("part-*.parquet"))
    )
    frame = frame.rename(columns={"timestamp": "Time"})[["Time", "Demand", "Temperature"]]
    frame.to_csv(out.with_suffix(".tmp"), index=False)
    out.with_suffix(".tmp").rename(out)
    return out


def _settings(cluster: str, csv: Path | None = None):
    from bigdeep.config import Settings

    params: dict = {"compute": {"cluster": None if cluster == "none" else cluster}}
    if csv is not None:
        params["data"] = {"series": {"source": f"csv:{csv}", "last_days": None}}
    return Settings.model_validate(params)


def usage() -> tuple[float, float]:
    """(peak resident MB, CPU seconds) of this process: the driver's, or a worker's through
    `client.run` (cloudpickle sends this function by value)."""
    import resource

    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_maxrss / 1024, r.ru_utime + r.ru_stime


def _workers(ex) -> list[tuple[float, float]]:
    return sorted(ex.client.run(usage).values()) if ex else []


def _usage_fields(workers: list[tuple[float, float]], shards: int) -> dict:
    import resource

    driver_mb, driver_cpu = usage()
    if not workers:  # in-process: the image gate's decoding processes are this one's children
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        driver_cpu += children.ru_utime + children.ru_stime
    return {
        "driver_mb": driver_mb,
        "worker_mb": [mb for mb, _ in workers],
        "driver_cpu_s": driver_cpu,
        "worker_cpu_s": sum(cpu for _, cpu in workers),
        "shards": shards,
    }


def measure_images(store: Path, cluster: str, work: Path) -> dict:
    from bigdeep.compute import open_executor
    from bigdeep.prepare import prepare_images
    from bigdeep.quality.gate import gate_images, write_quarantine

    s = _settings(cluster)
    t0 = time.perf_counter()
    with open_executor(s.compute) as ex:
        t1 = time.perf_counter()
        result = gate_images("images", store, s.quality.images, executor=ex)
        write_quarantine(result, store, work / "quarantine")
        t2 = time.perf_counter()
        prepare_images(
            store,
            work / "quarantine",
            work / "processed",
            s.prepare.images,
            s.quality.images.classes,
            s.seed,
            ex,
        )
        t3 = time.perf_counter()
        workers = _workers(ex)
    rows = result.report["rows"]
    return {
        "rows": rows,
        "start_s": t1 - t0,
        "validate_s": t2 - t1,
        "prepare_s": t3 - t2,
        "validate_per_s": rows / (t2 - t1),
        "prepare_per_s": rows / (t3 - t2),
        "passed": result.passed,
    } | _usage_fields(workers, len(list(store.glob("part-*.parquet"))))


def make_image_sources(store: Path) -> tuple[Path, Path]:
    """The digits of `store` as a folder source (<label>/<n>.png: the stored PNG bytes) and
    an IDX source (train-images/-labels, the decoded pixels, uncompressed); made once, a
    shard at a time (the children's ru_maxrss starts from this process's peak)."""
    import io

    import numpy as np
    import pyarrow.parquet as pq
    from PIL import Image

    folder, idx = store.with_name(store.name + "-folder"), store.with_name(store.name + "-idx")
    if (folder / "DONE").exists() and (idx / "DONE").exists():
        return folder, idx
    idx.mkdir(parents=True, exist_ok=True)
    shards = sorted(store.glob("part-*.parquet"))
    n = sum(pq.ParquetFile(p).metadata.num_rows for p in shards)
    labels = []
    with open(idx / "train-images-idx3-ubyte", "wb") as images:
        images.write(bytes([0, 0, 0x08, 3]) + b"".join(d.to_bytes(4, "big") for d in (n, 28, 28)))
        for shard in shards:
            table = pq.read_table(shard, columns=["record_id", "label", "image"]).to_pydict()
            for rid, label, image in zip(*table.values(), strict=True):
                (folder / label).mkdir(parents=True, exist_ok=True)
                (folder / label / f"{rid.rsplit('/', 1)[1]}.png").write_bytes(image)
                images.write(np.asarray(Image.open(io.BytesIO(image)), np.uint8).tobytes())
                labels.append(int(label))
    header = bytes([0, 0, 0x08, 1]) + n.to_bytes(4, "big")
    (idx / "train-labels-idx1-ubyte").write_bytes(header + bytes(labels))
    (folder / "DONE").write_text(str(n))
    (idx / "DONE").write_text(str(n))
    return folder, idx


def measure_ingest(source: str, cluster: str, work: Path) -> dict:
    """Image ingest of `source` (folder:<dir> or idx:<dir>), every image, into work/raw."""
    from bigdeep.compute import open_executor
    from bigdeep.data.sources import plan_image_shards
    from bigdeep.data.store import write_shards
    from bigdeep.ingest import image_table

    s = _settings(cluster)
    cfg = s.data.images.model_copy(update={"source": source, "per_class": None})
    raw = work / "raw"
    t0 = time.perf_counter()
    with open_executor(s.compute) as ex:
        t1 = time.perf_counter()
        shards = plan_image_shards(cfg, ROOT)
        rows = write_shards(shards, raw, ex, build=image_table)  # what ingest_images does
        t2 = time.perf_counter()
        workers = _workers(ex)
    return {
        "rows": rows,
        "start_s": t1 - t0,
        "ingest_s": t2 - t1,
        "ingest_per_s": rows / (t2 - t1),
    } | _usage_fields(workers, len(list(raw.glob("part-*.parquet"))))


def measure_series(csv: Path, cluster: str, work: Path) -> dict:
    from bigdeep.compute import open_executor
    from bigdeep.data.sources import arrow_safe, iter_series, open_series
    from bigdeep.data.store import write_shards
    from bigdeep.ingest import rebatch
    from bigdeep.prepare import prepare_series
    from bigdeep.quality.gate import gate_series, write_quarantine

    s = _settings(cluster, csv)
    cfg = s.data.series
    raw = work / "raw"
    t0 = time.perf_counter()
    with open_executor(s.compute) as ex:
        t1 = time.perf_counter()
        source = open_series(cfg, ROOT)
        shards = (arrow_safe(f) for f in rebatch(iter_series(cfg, ROOT, source), cfg.shard_rows))
        rows = write_shards(shards, raw, ex)  # what ingest_series does
        t2 = time.perf_counter()
        names = cfg.model_copy(update={"timestamp": "timestamp"})
        result = gate_series("series", raw, s.quality.series, names, executor=ex)
        write_quarantine(result, raw, work / "quarantine")
        t3 = time.perf_counter()
        prepare_series(raw, work / "quarantine", work / "processed", cfg, s.prepare.series, ex)
        t4 = time.perf_counter()
        workers = _workers(ex)
    return {
        "rows": rows,
        "start_s": t1 - t0,
        "ingest_s": t2 - t1,
        "validate_s": t3 - t2,
        "prepare_s": t4 - t3,
        "ingest_per_s": rows / (t2 - t1),
        "validate_per_s": rows / (t3 - t2),
        "prepare_per_s": rows / (t4 - t3),
        "passed": result.passed,
    } | _usage_fields(workers, len(list(raw.glob("part-*.parquet"))))


def _child(kind: str, data: Path, cluster: str, work: Path) -> dict:
    """One measurement in a fresh process (its own peak memory)."""
    out = subprocess.run(
        [sys.executable, __file__, "--one", kind, str(data), cluster, str(work)],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": f"{ROOT / 'src'}:{ROOT}"},
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def _table(kind: str, results: dict[str, dict], steps: list[str]) -> None:
    print(f"\n{kind}: {results['none']['rows']:,} rows")
    head = "".join(f"{step + ' /s':>14}" for step in steps)
    print(
        f"{'cluster':<9}{'start s':>9}{head}{'driver MB':>11}{'CPU s/shard':>13}"
        f"{'(driver':>9}{'workers)':>10}  worker peak MB"
    )
    for cluster, r in results.items():
        rates = "".join(f"{r[step + '_per_s']:>14,.0f}" for step in steps)
        workers = ", ".join(f"{m:.0f}" for m in r["worker_mb"]) or "-"
        shards = max(r["shards"], 1)
        cpu = (r["driver_cpu_s"] + r["worker_cpu_s"]) / shards
        print(
            f"{cluster:<9}{r['start_s']:>9.1f}{rates}{r['driver_mb']:>11.0f}{cpu:>13.3f}"
            f"{r['driver_cpu_s'] / shards:>9.3f}{r['worker_cpu_s'] / shards:>10.3f}  {workers}"
        )
    one, two = results["local:1"], results["local:2"]
    ratios = ", ".join(
        f"{step} {two[step + '_per_s'] / one[step + '_per_s']:.2f}x" for step in steps
    )
    print(f"2 workers / 1 worker: {ratios}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=1_000_000)
    p.add_argument("--rows", type=int, default=10_000_000)
    p.add_argument("--data", type=Path, default=Path("/tmp/bigdeep-bench-dask"))
    p.add_argument("--clusters", nargs="+", default=CLUSTERS)
    p.add_argument(
        "--no-image-ingest",
        action="store_true",
        help="images: validate + prepare only (the issue's benchmark; ingest writes a folder "
        "of one file per image, minutes at 1M)",
    )
    p.add_argument("--one", nargs=4, help=argparse.SUPPRESS)  # kind data cluster work
    args = p.parse_args()
    if args.one:
        kind, data, cluster, work = args.one
        if kind in ("folder", "idx"):  # image ingest from that source
            print(json.dumps(measure_ingest(f"{kind}:{data}", cluster, Path(work))))
            return
        measure = measure_images if kind == "images" else measure_series
        print(json.dumps(measure(Path(data), cluster, Path(work))))
        return
    from tests.benchmarks.bench_quality import make_images

    args.data.mkdir(parents=True, exist_ok=True)
    print(f"load before: {os.getloadavg()[0]:.2f} (1 min), {os.cpu_count()} cores")
    if args.images:
        store = make_images(args.data, args.images)
        if not args.no_image_ingest:
            for kind, source in zip(("folder", "idx"), make_image_sources(store), strict=True):
                work = args.data / f"work-ingest-{kind}"
                res = {c: _child(kind, source, c, work / c) for c in args.clusters}
                _table(f"images (ingest from {kind}:)", res, ["ingest"])
        res = {c: _child("images", store, c, args.data / f"work-images-{c}") for c in args.clusters}
        _table("images (validate + prepare)", res, ["validate", "prepare"])
    if args.rows:
        csv = make_csv(args.data, args.rows)
        res = {c: _child("series", csv, c, args.data / f"work-series-{c}") for c in args.clusters}
        _table("series (ingest + validate + prepare)", res, ["ingest", "validate", "prepare"])
    print(f"\nload after: {os.getloadavg()[0]:.2f} (1 min)")


if __name__ == "__main__":
    main()
