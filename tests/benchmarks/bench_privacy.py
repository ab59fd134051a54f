"""What the privacy scan costs the series gate: `gate_series` with privacy off vs quarantine,
side by side in one process, on a generated store with a free-text column.

    python tests/benchmarks/bench_privacy.py                       # 1M rows, 2 repeats
    python tests/benchmarks/bench_privacy.py --rows 200000 --repeats 1

The store: a 1-minute UTC series (Demand, Temperature) in 100,000-row shards, plus a `note`
column of text: mostly words, order numbers, timestamps and decimals (lookalikes the
prefilter or the checks must reject), and every --every-th row a distinct e-mail address,
phone number, card number (valid Luhn) or IBAN (valid mod 97), in turn. Prints each run's
seconds, the ratio quarantine / off (medians), and how many planted values were found.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from bigdeep.config import SeriesData, SeriesPrivacy, SeriesQuality
from bigdeep.quality.gate import gate_series

SHARD = 100_000
WORDS = np.array(["ok", "paid", "late delivery", "refund issued", "n/a", "ORD-2024-000123",
                  "2014-01-01 00:30:00", "4123.456789", "-37.8136, 144.9631", "192.168.1.1"])  # fmt: skip


def _luhn_digit(body: str) -> str:
    total = 0
    for i, ch in enumerate(reversed(body)):
        d = int(ch)
        if i % 2 == 0:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return str(-total % 10)


def _iban(account: int) -> str:
    bban = f"37040044{account:010d}"
    check = 98 - int("".join(str(int(c, 36)) for c in bban + "DE00")) % 97
    code = f"DE{check:02d}{bban}"
    return " ".join(code[i : i + 4] for i in range(0, len(code), 4))


def planted(i: int) -> str:
    """The i-th planted value, distinct for every i."""
    kind = i % 4
    if kind == 0:
        return f"mail user{i}@example.org"
    if kind == 1:
        n = f"{i:08d}"[-8:]
        return f"call +61 4{n[:2]} {n[2:5]} {n[5:]}"
    if kind == 2:
        body = f"4{i:014d}"[-15:]
        number = body + _luhn_digit(body)
        return "card " + " ".join(number[j : j + 4] for j in range(0, 16, 4))
    return "iban " + _iban(i)


def make_store(root: Path, rows: int, every: int) -> int:
    rng = np.random.default_rng(0)
    start = pd.Timestamp("2000-01-01", tz="UTC")
    count = 0
    for shard, lo in enumerate(range(0, rows, SHARD)):
        idx = np.arange(lo, min(rows, lo + SHARD))
        note = WORDS[rng.integers(0, len(WORDS), len(idx))].astype(object)
        hits = idx[idx % every == every - 1]
        for j in hits:
            note[j - lo] = planted(int(j // every))
        count += len(hits)
        pd.DataFrame(
            {
                "row": idx + 1,
                "timestamp": start + pd.to_timedelta(idx, unit="min"),
                "timestamp_zone": "Z",
                "Demand": 4000 + 500 * np.sin(idx / 720) + rng.normal(0, 10, len(idx)),
                "Temperature": 15 + 5 * np.sin(idx / 1440) + rng.normal(0, 0.5, len(idx)),
                "note": pd.array(note, dtype="str"),
            }
        ).to_parquet(root / f"part-{shard:05d}.parquet", index=False)
    return count


def run(store: Path, policy: str) -> tuple[float, int]:
    settings = SeriesQuality(max_gap="1h", privacy=SeriesPrivacy(policy=policy))
    data = SeriesData(timestamp="timestamp")
    t = time.perf_counter()
    result = gate_series("series", store, settings, data)
    seconds = time.perf_counter() - t
    assert result.passed, result.report["failures"][:3]
    found = sum(f["rows"] for c in result.report["privacy"]["found"].values() for f in c.values())
    return seconds, found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--every", type=int, default=1_000, help="one planted value per N rows")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp)
        n = make_store(store, args.rows, args.every)
        print(f"{args.rows:,} rows, {n:,} planted values (one per {args.every} rows)")
        run(store, "off")  # warm: imports, GX context
        times: dict[str, list[float]] = {"off": [], "quarantine": []}
        for _ in range(args.repeats):
            for policy in times:  # side by side, alternating
                seconds, found = run(store, policy)
                times[policy].append(seconds)
                print(f"  {policy:<10} {seconds:7.1f} s  found {found:,}")
        off, on = statistics.median(times["off"]), statistics.median(times["quarantine"])
        print(f"quarantine / off: {on / off:.2f}x  ({on:.1f} s vs {off:.1f} s, medians)")
        print(f"planted values found: {found:,} of {n:,}")


if __name__ == "__main__":
    main()
