"""Peak memory of `bigdeep ingest series` and `bigdeep prepare series` on large CSV files.

    python tests/benchmarks/bench_ingest_memory.py                        # 1M and 5M rows
    python tests/benchmarks/bench_ingest_memory.py --rows 200000 1000000  # any sizes, smallest first
    PYTHONPATH=/path/to/other/checkout/src python tests/benchmarks/bench_ingest_memory.py  # another version

Each CSV has a timestamp (1-minute grid, UTC, ISO 8601), a target and one feature; it is written
once under --data and reused. Each stage runs as the user runs it, `bigdeep <stage>` in its own
process from a tmp project whose params.yaml points at the file (`last_days: null`, so every
row is kept; `prepare.series.resample: 1h`, the default). Its peak resident memory is the child's
ru_maxrss. Target (issue 9): the peak at the largest size within 1.2x of the peak at the
smallest, for both stages (memory bounded by the shard size, not the file).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

CHUNK = 1_000_000  # rows generated at a time, so making the file is bounded too


def make_csv(path: Path, rows: int) -> Path:
    if path.exists():
        return path
    tmp = path.with_suffix(".tmp")
    rng = np.random.default_rng(0)
    start = pd.Timestamp("2010-01-01", tz="UTC")
    with open(tmp, "w") as f:
        f.write("Time,Demand,Temperature\n")
        for first in range(0, rows, CHUNK):
            n = min(CHUNK, rows - first)
            times = pd.date_range(start + pd.Timedelta(minutes=first), periods=n, freq="min")
            frame = pd.DataFrame(
                {
                    "Time": times.strftime("%Y-%m-%dT%H:%M:%SZ"),
                    "Demand": (4500 + 800 * rng.standard_normal(n)).round(2),
                    "Temperature": (18 + 6 * rng.standard_normal(n)).round(2),
                }
            )
            frame.to_csv(f, header=False, index=False)
    tmp.rename(path)
    return path


def peak_of(cmd: list[str], cwd: Path) -> tuple[float, float]:
    """(peak RSS in MB, seconds) of `cmd` run in its own process."""
    probe = (
        "import resource, subprocess, sys; "
        "subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL); "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
    )
    t = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-c", probe, *cmd], cwd=cwd, check=True, capture_output=True, text=True
    )
    return int(out.stdout.split()[-1]) / 1024, time.perf_counter() - t


def measure(csv: Path, work: Path) -> dict[str, tuple[float, float]]:
    project = work / csv.stem
    shutil.rmtree(project, ignore_errors=True)
    project.mkdir(parents=True)
    params = {"data": {"series": {"source": f"csv:{csv}", "last_days": None}}}
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    bigdeep = shutil.which("bigdeep") or "bigdeep"
    ingest = peak_of([bigdeep, "ingest", "series", "--out", "raw"], project)
    prepare = peak_of(
        [bigdeep, "prepare", "series", "--raw", "raw", "--quarantine", "q", "--out", "processed"],
        project,
    )
    shutil.rmtree(project, ignore_errors=True)
    return {"ingest": ingest, "prepare": prepare}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 5_000_000])
    p.add_argument("--data", type=Path, default=Path(tempfile.gettempdir()) / "bigdeep-bench-csv")
    args = p.parse_args()
    args.data.mkdir(parents=True, exist_ok=True)
    results = {}
    for rows in args.rows:
        csv = make_csv(args.data / f"series-{rows}.csv", rows)
        results[rows] = measure(csv, args.data / "work")
        mb = csv.stat().st_size / 2**20
        for stage, (peak, seconds) in results[rows].items():
            print(
                f"{rows:>10,} rows ({mb:6.0f} MB csv)  {stage:8} peak {peak:7.0f} MB  {seconds:6.1f} s"
            )
    small, large = args.rows[0], args.rows[-1]
    for stage in ("ingest", "prepare"):
        ratio = results[large][stage][0] / results[small][stage][0]
        verdict = "ok" if ratio <= 1.2 else "over the 1.2 target"
        print(f"{stage:8} peak {large:,} / {small:,} rows: {ratio:.2f}x ({verdict})")


if __name__ == "__main__":
    main()
