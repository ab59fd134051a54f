"""The quality gate: validate a dataset with its suites, quarantine bad records, decide.

    reference = load_reference("data/reference/images/mnist.json", identity="mnist")
    result = gate_images("images", "data/raw/images", settings.quality.images, reference=reference)
    write_report(result, "reports/quality")                     # reports/quality/images.json
    write_quarantine(result, "data/raw/images", "data/quarantine/images")
    if result.passed: write_reference(result.profile, reference.path)   # the new accepted version
    else: stop before training

`gate_images` / `gate_series` stream the raw store chunk by chunk (bounded memory), in this
process or on a Dask cluster's workers (`executor`, bigdeep.compute: the chunks are the same
and are merged here in order, so the outputs are too); `run_gate` validates a table already
in memory (a profile or a series) the same way.
Record-level checks run on every chunk and their results are merged; dataset-level checks
(row count, drop, classes, balance, drift, freshness) run once on small tables built from
what the chunks added up to. The gate fails when the dataset is empty, when a critical
expectation fails (or one could not run), or when the quarantined fraction of records
exceeds max_quarantine_fraction (results.py merges and decides). The `write_*` functions are
the only I/O besides reading the raw store.
"""

from __future__ import annotations

import functools
import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from bigdeep.compute import Executor, InProcess
from bigdeep.config import ImagePrepare, ImageQuality, SeriesData, SeriesQuality
from bigdeep.data.images import conversion_text
from bigdeep.data.store import shard_paths
from bigdeep.quality.drift import ProfileBuilder, Reference, edges_between
from bigdeep.quality.privacy import PRIVACY_RECORD_COLUMNS, Findings, scan_column
from bigdeep.quality.profile import (
    CHUNK_ROWS,
    INTENSITY_BINS,
    MEAN_EDGES,
    ProfileChunk,
    empty_profile,
    iter_image_profiles,
)
from bigdeep.quality.ranges import (
    RobustSample,
    ValueRange,
    add_finite_columns,
    hashes,
    value_ranges,
)
from bigdeep.quality.results import (
    QUARANTINE_COLUMNS,
    Run,
    Table,
    Validated,
    Verdict,
    iso,
    plain,
    run_suite,
)
from bigdeep.quality.suites import (
    CLASS_COLUMNS,
    DRIFT_COLUMNS,
    PRIVACY_COLUMNS,
    STORE_CHECKS,
    SUMMARY_COLUMNS,
    Suite,
    class_count_suite,
    drift_suite,
    image_suite,
    privacy_suite,
    select,
    series_suite,
    summary_suite,
)
from bigdeep.quality.timeline import (
    NAT,
    ZONE_COLUMN,
    Deriver,
    Timeline,
    TimelineBuilder,
    timeline_piece,
)

# Series rows per GX validation: GX costs ~0.2 s a run whatever its size, ~1 us a row after.
SERIES_CHUNK_ROWS = 250_000


@dataclass
class GateResult:
    passed: bool
    report: dict[str, Any]  # JSON-serialisable; see `run_gate`
    quarantine: pd.DataFrame  # QUARANTINE_COLUMNS, one row per (record, failed check)
    key: str = "record_id"  # the column that identifies a record in the raw shards
    profile: dict[str, Any] | None = None  # this version's reference profile (drift.py)
    validation: Any = None  # GX ExpectationSuiteValidationResult of every check (Data Docs)
    # series: the personal data found (PRIVACY_RECORD_COLUMNS, masked), and the types scanned
    # for (the quarantine's copies of rows are masked for the same); None / () when off
    privacy: pd.DataFrame | None = None
    privacy_types: tuple[str, ...] = ()


def class_counts(profile: pd.DataFrame, classes: list[str]) -> pd.DataFrame:
    """Records per class (CLASS_COLUMNS), one row per class in the settings."""
    labels = profile["label"] if "label" in profile else pd.Series(dtype="str")
    return _class_table(Counter(labels.dropna().astype(str)), classes)


def _class_table(labels: Counter[str], classes: list[str]) -> pd.DataFrame:
    records = [int(labels.get(c, 0)) for c in classes]
    largest = max(records, default=0)
    # how many times fewer records than the largest class; null for an empty class
    imbalance = [largest / n if n else None for n in records]
    return pd.DataFrame(
        {
            "class": pd.array(list(classes), dtype="str"),
            "records": np.array(records, dtype=np.int64),
            "imbalance": pd.array(imbalance, dtype="float64"),
        },
        columns=CLASS_COLUMNS,
    )


# --- entry points --------------------------------------------------------------------------


def run_gate(
    name: str,
    table: pd.DataFrame,
    settings: ImageQuality | SeriesQuality,
    data: SeriesData | None = None,
    *,
    reference: Reference | None = None,
    now: pd.Timestamp | None = None,
    conversion: ImagePrepare | None = None,
) -> GateResult:
    """Validate `table` in memory: an image profile (ImageQuality; its `.attrs["intensity"]`,
    when present, feeds the pixel-intensity drift; `conversion`: what prepare will do to the
    images, see `image_suite`), or a raw series (SeriesQuality, with `data` naming its
    timestamp, target and feature columns).

    report: dataset, passed, rows, quarantined, quarantined_fraction, max_quarantine_fraction,
    by_v ({v: {passed, failed}}), drift (identity, first_version, note, reference,
    reference_rows, drop_pct, js {measure: value}, linf {measure: value}: null values when
    there is no reference), columns (series:
    expected, missing, extra), expectations (one entry per expectation, in suite order: v,
    check, expectation, column, critical, record_level, success, observed, unexpected_count,
    examples, notes) and failures (sentences for people). Images also get shapes (the sizes
    and modes seen, and the conversion that applies: `_shapes_report`).
    """
    if isinstance(settings, ImageQuality):
        intensity = table.attrs.get("intensity")
        chunk = ProfileChunk(table, None if intensity is None else np.asarray(intensity))
        return _gate_images(name, [chunk], settings, reference, conversion)
    if isinstance(settings, SeriesQuality):
        if data is None:
            raise TypeError("run_gate: a series needs data=SeriesData(...) to name its columns")
        chunks = [SeriesChunk(0, frame=table)]
        return _gate_series(name, chunks, settings, data, reference, now, None)
    raise TypeError(f"run_gate: settings must be ImageQuality or SeriesQuality, got {settings!r}")


def gate_images(
    name: str,
    shards_dir: str | Path,
    settings: ImageQuality,
    *,
    reference: Reference | None = None,
    workers: int | None = None,
    chunk_rows: int = CHUNK_ROWS,
    conversion: ImagePrepare | None = None,
    executor: Executor | None = None,
) -> GateResult:
    """Profile and validate the raw image store chunk by chunk (bounded memory, every core, or
    a Dask cluster's workers: `executor`, bigdeep.compute).
    `conversion` (prepare.images): with a size or mode set, images need only be convertible."""
    conversion = conversion or ImagePrepare()
    chunks = iter_image_profiles(
        shards_dir,
        max_pixels=settings.max_pixels,
        workers=workers,
        chunk_rows=chunk_rows,
        executor=executor,
        check=_UnitChecks(name, settings.model_dump_json(), conversion.model_dump_json()),
    )
    return _gate_images(name, chunks, settings, reference, conversion)


def gate_series(
    name: str,
    shards_dir: str | Path,
    settings: SeriesQuality,
    data: SeriesData,
    *,
    reference: Reference | None = None,
    now: pd.Timestamp | None = None,
    chunk_rows: int = SERIES_CHUNK_ROWS,
    executor: Executor | None = None,
) -> GateResult:
    """Validate the raw series store chunk by chunk: one pass over its timestamps (8 bytes per
    row), then one over its rows, about `chunk_rows` at a time (shards are split or joined:
    `plan_series`). Each chunk is read and checked in this process, or on a Dask cluster's
    workers (`executor`, bigdeep.compute); the chunks are the same either way, and are merged
    here in order, so the outputs are too."""
    chunks = plan_series(shard_paths(shards_dir, empty_ok=True), chunk_rows)
    return _gate_series(name, chunks, settings, data, reference, now, executor)


@dataclass(frozen=True)
class SeriesChunk:
    """Rows start .. start + rows - 1 of a series, validated by one GX run: slices
    (path, first row, end row) of its shards, read and joined; or a table already in memory."""

    start: int
    slices: tuple[tuple[str, int, int], ...] = ()
    frame: pd.DataFrame | None = None


def plan_series(paths: list[Path], chunk_rows: int) -> list[SeriesChunk]:
    """The chunks of a store, from its Parquet metadata: each shard cut every `chunk_rows`
    rows, consecutive pieces joined until they hold `chunk_rows` (a header-only shard is a
    piece of no rows: it keeps its columns)."""
    chunks, pending, start, rows = [], [], 0, 0
    for path in paths:
        n = pq.read_metadata(path).num_rows
        for first in range(0, max(n, 1), chunk_rows):
            pending.append((str(path), first, min(n, first + chunk_rows)))
            rows += min(n, first + chunk_rows) - first
            if rows >= chunk_rows:
                chunks.append(SeriesChunk(start, tuple(pending)))
                pending, start, rows = [], start + rows, 0
    if pending:
        chunks.append(SeriesChunk(start, tuple(pending)))
    return chunks


def read_chunk(chunk: SeriesChunk, columns: list[str] | None) -> pd.DataFrame:
    """A chunk's rows: `columns` of them (those its shards have; None: all); a table in memory
    as it is."""
    if chunk.frame is not None:
        return chunk.frame
    return _join_frames([_read_slice(*piece, columns) for piece in chunk.slices])


def _read_slice(path: str, first: int, end: int, columns: list[str] | None) -> pd.DataFrame:
    names = pq.read_schema(path).names
    # the zone has a few distinct values: read as a category, not as 8 bytes of text a row
    file = pq.ParquetFile(path, read_dictionary=[c for c in [ZONE_COLUMN] if c in names])
    wanted = None if columns is None else [c for c in columns if c in names]
    groups, at, offset = [], 0, 0  # the row groups holding the slice; its start in the first
    for i in range(file.metadata.num_row_groups):
        n = file.metadata.row_group(i).num_rows
        if at < end and at + n > first:
            offset = offset if groups else first - at
            groups.append(i)
        at += n
    if not groups:  # no rows: keeps a header-only shard's columns
        return file.read(columns=wanted).to_pandas()
    return file.read_row_groups(groups, columns=wanted).slice(offset, end - first).to_pandas()


def _join_frames(frames: list[pd.DataFrame]) -> pd.DataFrame:
    if len(frames) == 1:
        return frames[0]
    # A column that is text in one shard and numbers in another becomes object: still flagged.
    return pd.concat(frames, ignore_index=True)


# --- images --------------------------------------------------------------------------------


def _gate_images(
    name: str,
    chunks: Iterable[ProfileChunk],
    settings: ImageQuality,
    reference: Reference | None,
    conversion: ImagePrepare | None = None,
) -> GateResult:
    s, conversion = settings, conversion or ImagePrepare()
    ref = reference.profile if reference else None
    records, classes = image_suite(s, conversion), class_count_suite(s)
    store_checks = select(records, STORE_CHECKS)
    store_columns = ["record_id", *(c.column for c in store_checks.checks if c.column)]
    summary = summary_suite(name, s.min_rows, s.max_rows, s.max_drop_pct, "records")
    drift = drift_suite(name, s.max_drift_js, s.max_drift_linf)
    run = Run(name, [summary, records, classes, drift])

    builder: ProfileBuilder | None = None
    labels: Counter[str] = Counter()
    sizes: Counter[tuple[int, int]] = Counter()  # (height, width) -> images
    modes: Counter[str] = Counter()
    rows = 0
    for chunk in chunks:
        frame = chunk.frame
        _count_shapes(frame, sizes, modes)
        if builder is None:
            edges = {"pixel_mean": MEAN_EDGES}
            if chunk.intensity is not None:
                edges["pixel_intensity"] = np.arange(INTENSITY_BINS + 1, dtype=np.float64)
            builder = ProfileBuilder(name, edges, ref)
        if chunk.checked is None:  # a profile in memory (`run_gate`)
            run.validate(records, Table(frame, "record_id"))
        else:  # checked where it was decoded, but for the checks that need the whole store
            for validated in chunk.checked:
                run.absorb(validated)
            # only the columns those checks read: GX on a whole profile chunk costs ~3x more
            run.validate(store_checks, Table(frame[store_columns], "record_id"))
        rows += len(frame)
        if "label" in frame:
            labels.update(frame["label"].dropna().astype(str).value_counts().to_dict())
            builder.add_categories("label", frame["label"], limit=None)
        if "pixel_mean" in frame:
            builder.add_numeric("pixel_mean", frame["pixel_mean"].to_numpy(np.float64))
        if chunk.intensity is not None:
            builder.add_counts("pixel_intensity", chunk.intensity)
    if builder is None:  # an empty store: the record checks still run, on no records
        run.validate(records, Table(empty_profile(), "record_id"))
        edges = {"pixel_mean": MEAN_EDGES, "pixel_intensity": np.arange(INTENSITY_BINS + 1.0)}
        builder = ProfileBuilder(name, edges, ref)
    builder.rows = rows

    run.validate(classes, Table(_class_table(labels, s.classes), "class"))
    run.validate(summary, Table(_summary_table(name, rows, ref), "dataset"))
    drift_rows = builder.drift(ref)
    run.validate(drift, Table(pd.DataFrame(drift_rows, columns=DRIFT_COLUMNS), "measure"))
    if reference is not None and reference.error:
        run.cannot_run(["row_drop", "drift_js", "drift_linf"], reference.error)
    report_drift = _drift_report(reference, rows, drift_rows, s.max_drift_js, s.max_drift_linf)
    verdict = run.verdict(rows, s.max_quarantine_fraction, "records")
    result = _result(
        name, rows, s.max_quarantine_fraction, verdict, report_drift, None, "record_id", builder
    )
    shapes = _shapes_report(sizes, modes, conversion_text(conversion, s))
    report = result.report
    at = list(report).index("drift") + 1  # the report's keys keep a fixed order
    result.report = dict(
        [*list(report.items())[:at], ("shapes", shapes), *list(report.items())[at:]]
    )
    return result


@dataclass(frozen=True)
class _UnitChecks:
    """The image record checks a unit's own rows decide (all but STORE_CHECKS), run on its
    profile where it is decoded: a Dask worker, a decoding process, or here. Settings travel
    as JSON; each process builds the GX suite once."""

    name: str
    settings: str  # ImageQuality, as JSON
    conversion: str  # ImagePrepare, as JSON

    def __call__(self, frame: pd.DataFrame) -> Validated:
        suite = _unit_suite(self.settings, self.conversion)
        return run_suite(self.name, suite, Table(frame, "record_id"))


@functools.cache
def _unit_suite(settings: str, conversion: str) -> Suite:
    full = image_suite(
        ImageQuality.model_validate_json(settings), ImagePrepare.model_validate_json(conversion)
    )
    return select(full, STORE_CHECKS, keep=False)


# How many of the most common sizes the report lists (the rest are counted together).
TOP_SIZES = 10


def _count_shapes(frame: pd.DataFrame, sizes: Counter, modes: Counter) -> None:
    """Add a profile chunk's decoded images to the (height, width) and mode counts."""
    if not {"height", "width", "mode"} <= set(frame.columns):
        return
    decoded = frame.dropna(subset=["height", "width"])
    # counted in order of first appearance, as the report lists sizes of equal counts
    pairs = decoded.groupby(["height", "width"], sort=False).size()
    sizes.update({(int(h), int(w)): int(n) for (h, w), n in pairs.items()})
    modes.update(frame["mode"].dropna().astype(str).value_counts().to_dict())


def _shapes_report(sizes: Counter, modes: Counter, conversion: str) -> dict[str, Any]:
    """The sizes and modes the decoded images have, and what prepare does to them.

    sizes: the TOP_SIZES most common, "HxW" (height x width) with their counts; other_sizes:
    how many more sizes, other_records: the images they hold. Lists, so DVC shows no column
    per size.
    """
    top = sizes.most_common(TOP_SIZES)
    heights = [h for h, _ in sizes]
    widths = [w for _, w in sizes]
    return {
        "conversion": conversion,
        "sizes": [{"size": f"{h}x{w}", "records": n} for (h, w), n in top],
        "other_sizes": max(0, len(sizes) - len(top)),
        "other_records": sum(sizes.values()) - sum(n for _, n in top),
        "height_range": [min(heights), max(heights)] if heights else None,
        "width_range": [min(widths), max(widths)] if widths else None,
        "modes": [{"mode": m, "records": n} for m, n in modes.most_common()],
    }


# --- series --------------------------------------------------------------------------------


def _gate_series(
    name: str,
    chunks: list[SeriesChunk],
    settings: SeriesQuality,
    data: SeriesData,
    reference: Reference | None,
    now: pd.Timestamp | None,
    executor: Executor | None,
) -> GateResult:
    s, ts = settings, data.timestamp
    ex = executor or InProcess()
    values = [data.target, *data.features]
    ref = reference.profile if reference else None

    # pass 1: the timeline (timestamps and zones) and the value ranges, chunk by chunk
    timeline_builder = TimelineBuilder(s.freq, s.max_gap)
    samples = {c: RobustSample() for c in values}  # min, max, median and spread of each
    before: list[int] = []  # per chunk: the timestamp of the row before its first (micros)
    last = NAT
    for part in ex.map_ordered(_series_timeline, chunks, ts, values):
        before.append(last)
        if part.timeline is not None:
            timeline_builder.add(part.timeline)
            last = int(part.timeline[0][-1]) if len(part.timeline[0]) else last
        for c, sample in part.samples.items():
            samples[c].merge(sample)
    timeline = timeline_builder.build()
    edges = {c: edges_between(samples[c].low, samples[c].high) for c in values}
    own = {c: samples[c].stats() for c in values}
    del samples
    ranges = value_ranges(values, own, ref, s.max_robust_z, dict(s.bounds))

    records = series_suite(data, s, timeline, ranges=ranges)
    max_age_s = None if s.max_age is None else pd.Timedelta(s.max_age).total_seconds()
    summary = summary_suite(
        name, s.min_rows, s.max_rows, s.max_drop_pct, "rows", max_age_s, not s.allow_extra_columns
    )
    drift = drift_suite(name, s.max_drift_js, s.max_drift_linf)
    # privacy: text columns are scanned, and masked before anything else reads them
    findings = None
    if s.privacy.policy != "off":
        findings = Findings(s.privacy.types, skip=[ts, ZONE_COLUMN], key="row")
    privacy = privacy_suite(name, s.privacy) if findings else None
    run = Run(name, [summary, records, drift, *([privacy] if privacy else [])])
    builder = ProfileBuilder(name, edges, ref)
    builder.robust = {c: stats for c, stats in own.items() if stats is not None}
    required = ["row", ts, *values]

    # pass 2: every row, checked where its chunk is read; merged here in chunk order
    check = _SeriesCheck(name, s, data, timeline, ranges, edges, ref)
    seen: list[str] = []
    rows = 0
    for part in ex.map_ordered(_series_rows, list(zip(chunks, before, strict=True)), check):
        seen += [c for c in part.columns if c not in seen]
        if findings is not None and part.findings is not None:
            findings.merge(part.findings)
        run.absorb(part.validated)
        builder.merge(part.profile)
        rows += part.rows
    if rows == 0 and not run.ran(records):
        run.validate(records, Table(pd.DataFrame({"row": pd.Series(dtype="int64")}), "row"))
    builder.rows = rows

    extra = [c for c in seen if c not in required and c != ZONE_COLUMN]
    newest = (
        None
        if timeline.newest_us is None
        else pd.Timestamp(timeline.newest_us, unit="us", tz="UTC")
    )
    age = None
    if newest is not None:
        age = ((now or pd.Timestamp.now(tz="UTC")) - newest).total_seconds()
    summary_table = _summary_table(name, rows, ref, newest=newest, age_s=age, extra=extra)
    run.validate(summary, Table(summary_table, "dataset"))
    drift_rows = builder.drift(ref)
    run.validate(drift, Table(pd.DataFrame(drift_rows, columns=DRIFT_COLUMNS), "measure"))
    if reference is not None and reference.error:
        run.cannot_run(["row_drop", "drift_js", "drift_linf"], reference.error)
    if privacy is not None and findings is not None:
        run.validate(privacy, Table(_privacy_table(findings), "column"))
    columns = {
        "expected": required,
        "missing": [c for c in required if c not in seen],
        "extra": extra,
        "freq": timeline.freq,
        "zones": timeline.zones,
        "ranges": {c: r.to_json() for c, r in ranges.items()},
    }
    report_drift = _drift_report(reference, rows, drift_rows, s.max_drift_js, s.max_drift_linf)
    header_only = rows == 0 and len(seen) > 1
    verdict = run.verdict(rows, s.max_quarantine_fraction, "rows", header_only)
    result = _result(
        name, rows, s.max_quarantine_fraction, verdict, report_drift, columns, "row", builder
    )
    section = (
        findings.report(s.privacy.policy)
        if findings
        else {"policy": "off", "types": [], "columns_scanned": [], "found": {}}
    )
    report = result.report
    at = list(report).index("columns") + 1  # the report's keys keep a fixed order
    result.report = dict(
        [*list(report.items())[:at], ("privacy", section), *list(report.items())[at:]]
    )
    if findings is not None:
        result.privacy, result.privacy_types = findings.records(), tuple(findings.types)
    return result


@dataclass
class _TimelinePart:
    """What pass 1 takes from one chunk: its `timeline_piece` (None without the timestamp
    column) and a sample of each value column's numbers."""

    timeline: tuple[np.ndarray, Counter[str]] | None
    samples: dict[str, RobustSample]


def _series_timeline(chunk: SeriesChunk, ts: str, values: list[str]) -> _TimelinePart:
    """Pass 1 on one chunk (runs where it is read: a worker of a cluster)."""
    frame = read_chunk(chunk, [ts, ZONE_COLUMN, *values, "row"])
    piece = None
    if ts in frame:
        piece = timeline_piece(frame[ts], frame[ZONE_COLUMN] if ZONE_COLUMN in frame else None)
    row_hashes = hashes(chunk.start, len(frame))  # the sample is the same however it is cut
    samples = {}
    for c in values:
        if c in frame:
            samples[c] = RobustSample()
            samples[c].add(
                pd.to_numeric(frame[c], errors="coerce").to_numpy(np.float64), row_hashes
            )
    return _TimelinePart(piece, samples)


@dataclass
class _SeriesCheck:
    """What pass 2 needs of pass 1, sent to every worker once."""

    name: str
    settings: SeriesQuality
    data: SeriesData
    timeline: Timeline
    ranges: dict[str, ValueRange]
    edges: dict[str, np.ndarray]
    reference: dict | None


@dataclass
class _RowsPart:
    """What pass 2 takes from one chunk, to merge in chunk order."""

    rows: int
    columns: list[str]
    findings: Findings | None  # the personal data found in it (privacy on)
    validated: Validated  # its GX results (results.py)
    profile: ProfileBuilder  # its histograms and category counts


def _series_rows(item: tuple[SeriesChunk, int], job: _SeriesCheck) -> _RowsPart:
    """Pass 2 on one chunk (runs where it is read): the privacy scan, the derived timeline
    columns, Great Expectations, the drift counts. A value column that is text in the chunk
    gets the regex finite check (its own suite)."""
    chunk, before = item
    s, data, ts = job.settings, job.data, job.data.timestamp
    values = [data.target, *data.features]
    required = ["row", ts, *values]
    frame = read_chunk(chunk, None)
    columns = list(frame.columns)
    if "row" not in frame.columns:
        raise ValueError(
            f"{job.name}: table has no 'row' column to name its records "
            f"(columns: {', '.join(map(str, frame.columns))})"
        )
    findings = None
    if s.privacy.policy != "off":
        findings = Findings(s.privacy.types, skip=[ts, ZONE_COLUMN], key="row")
        frame = findings.scan(frame)
    numeric = frozenset(c for c in values if c in frame and _numeric(frame[c]))
    table = Deriver(job.timeline, ts, chunk.start, before).derive(frame)
    add_finite_columns(table, [c for c in numeric if job.ranges[c].checked])
    suite = series_suite(data, s, job.timeline, numeric, job.ranges)
    validated = run_suite(job.name, suite, Table(table, "row", ts, "rows", required))
    builder = ProfileBuilder(job.name, job.edges, job.reference)
    for c in values:
        if c in frame:
            builder.add_numeric(c, pd.to_numeric(frame[c], errors="coerce").to_numpy(np.float64))
    for c in frame.columns:
        if c not in required and c != ZONE_COLUMN and _categorical(frame[c]):
            builder.add_categories(c, frame[c])
    return _RowsPart(len(frame), columns, findings, validated, builder)


def _privacy_table(findings: Findings) -> pd.DataFrame:
    """One row per text column scanned (PRIVACY_COLUMNS): per type, the rows holding one, the
    first row numbers and a masked example."""
    data: dict[str, Any] = {"column": pd.array(findings.columns, dtype="str")}
    for t in findings.types:
        data[t] = np.array([findings.rows(t, c) for c in findings.columns], dtype=np.int64)
        data[f"{t}_rows"] = pd.array([findings.listed(t, c) for c in findings.columns], "str")
        data[f"{t}_example"] = pd.array([findings.example(t, c) for c in findings.columns], "str")
    return pd.DataFrame(data, columns=[c for c in PRIVACY_COLUMNS if c in data])


def _result(
    name: str,
    rows: int,
    max_fraction: float,
    v: Verdict,
    drift: dict[str, Any],
    columns: dict[str, Any] | None,
    key: str,
    builder: ProfileBuilder,
) -> GateResult:
    report: dict[str, Any] = {
        "dataset": name,
        "identity": drift["identity"],
        "passed": v.passed,
        "rows": rows,
        "quarantined": v.quarantined,
        "quarantined_fraction": v.fraction,
        "max_quarantine_fraction": max_fraction,
        "by_v": v.by_v,
        "drift": drift,
    }
    if columns is not None:
        report["columns"] = plain(columns)
    report["expectations"] = v.entries
    report["failures"] = v.failures
    return GateResult(
        passed=v.passed,
        report=report,
        quarantine=v.quarantine,
        key=key,
        profile=builder.profile(),
        validation=v.validation,
    )


def _numeric(column: pd.Series) -> bool:
    return pd.api.types.is_numeric_dtype(column.dtype) and not pd.api.types.is_bool_dtype(
        column.dtype
    )


def _categorical(column: pd.Series) -> bool:
    return pd.api.types.is_bool_dtype(column.dtype) or pd.api.types.is_string_dtype(column.dtype)


# --- the small dataset-level tables --------------------------------------------------------


def _summary_table(
    name: str,
    rows: int,
    ref: dict | None,
    newest: pd.Timestamp | None = None,
    age_s: float | None = None,
    extra: list[str] | None = None,
) -> pd.DataFrame:
    ref_rows = None if ref is None else int(ref.get("rows", 0))
    drop = None
    if ref_rows:
        drop = max(0.0, (ref_rows - rows) / ref_rows * 100)
    table = pd.DataFrame(
        {
            "dataset": pd.array([name], dtype="str"),
            "rows": np.array([rows], dtype=np.int64),
            "reference_rows": pd.array([ref_rows], dtype="Int64"),
            "drop_pct": pd.array([None if drop is None else round(drop, 4)], dtype="float64"),
            "newest": pd.array([None if newest is None else iso(newest)], dtype="str"),
            "age_s": pd.array([age_s], dtype="float64"),
            "extra_columns": pd.array([", ".join(extra) if extra else None], dtype="str"),
        },
        columns=SUMMARY_COLUMNS,
    )
    return table


def _drift_report(
    reference: Reference | None,
    rows: int,
    drift_rows: list[dict[str, Any]],
    max_js: float,
    max_linf: float,
) -> dict[str, Any]:
    ref = reference.profile if reference else None
    ref_rows = None if ref is None else int(ref.get("rows", 0))
    drop = None if not ref_rows else round(max(0.0, (ref_rows - rows) / ref_rows * 100), 4)
    identity = reference.identity if reference else None
    first = reference is not None and ref is None and reference.error is None
    return {
        "identity": identity,  # whose history the reference is (config.dataset_identity)
        # no accepted version of this identity yet: this one becomes its baseline if it passes
        "first_version": first,
        "note": f"first version of {identity or 'this dataset'}: no drift or drop checks yet"
        if first
        else None,
        "reference": None if reference is None or ref is None else reference.path,
        "reference_rows": ref_rows,
        "drop_pct": drop,
        "js": {r["measure"]: _round(r["js"]) for r in drift_rows if r["kind"] == "numeric"},
        "linf": {r["measure"]: _round(r["linf"]) for r in drift_rows if r["kind"] == "categorical"},
        "max_js": max_js,
        "max_linf": max_linf,
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(float(value), 6)


# --- I/O -----------------------------------------------------------------------------------


def write_report(result: GateResult, reports_dir: str | Path) -> Path:
    """Write `reports_dir/<dataset>.json` (keys in a fixed order, indent 2)."""
    path = Path(reports_dir) / f"{result.report['dataset']}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result.report, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    return path


def write_quarantine(
    result: GateResult, shards_dir: str | Path, quarantine_dir: str | Path
) -> tuple[Path, Path]:
    """Write `reasons.parquet` (QUARANTINE_COLUMNS) and `records.parquet` (copies of the
    quarantined rows from the raw shards, raw schema). Both are written even when empty;
    the raw shards are only read, one at a time. A series scanned for personal data also
    gets `privacy.parquet` (PRIVACY_RECORD_COLUMNS, masked), and its copied rows are masked
    the same way: a value of personal data is never copied in clear."""
    out = Path(quarantine_dir)
    out.mkdir(parents=True, exist_ok=True)
    reasons_path, records_path = out / "reasons.parquet", out / "records.parquet"
    reasons = pa.Table.from_pandas(result.quarantine, preserve_index=False).cast(
        pa.schema([(c, pa.string()) for c in QUARANTINE_COLUMNS])
    )
    pq.write_table(reasons, reasons_path)

    wanted = pa.array(sorted(set(result.quarantine["record"])), type=pa.string())
    paths = shard_paths(shards_dir, empty_ok=True)
    parts = []
    for path in paths:  # the key column first: only shards holding a bad record are read whole
        keys = pc.cast(pq.read_table(path, columns=[result.key])[result.key], pa.string())
        hit = pc.is_in(keys, value_set=wanted)
        if len(wanted) and pc.any(hit).as_py():
            parts.append(pq.read_table(path).filter(hit))
    if parts:
        records = _concat(parts)
    elif paths:
        records = pq.read_schema(paths[0]).remove_metadata().empty_table()
    else:
        records = pa.table({result.key: pa.array([], pa.string())})
    if result.privacy_types:
        records = _masked_table(records, result.privacy_types)
    pq.write_table(records, records_path)
    privacy_path = out / "privacy.parquet"
    if result.privacy is not None:
        privacy = pa.Table.from_pandas(result.privacy, preserve_index=False).cast(
            pa.schema([(c, pa.string()) for c in PRIVACY_RECORD_COLUMNS])
        )
        pq.write_table(privacy, privacy_path)
    elif privacy_path.exists():  # policy off now: no list from an earlier run is left behind
        privacy_path.unlink()
    return reasons_path, records_path


def _masked_table(table: pa.Table, types: tuple[str, ...]) -> pa.Table:
    """`table` with the personal data in its text columns masked."""
    for i, field in enumerate(table.schema):
        if pa.types.is_string(field.type) or pa.types.is_large_string(field.type):
            column = table[field.name].to_pandas()
            masked = scan_column(column, types).redacted
            table = table.set_column(i, field, pa.array(masked, type=field.type, from_pandas=True))
    return table


def _concat(parts: list[pa.Table]) -> pa.Table:
    """Shards whose column types differ (text in one, numbers in another) still concatenate:
    such a column is kept as text."""
    try:
        return pa.concat_tables(parts, promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        types: dict[str, set[pa.DataType]] = {}
        for part in parts:
            for f in part.schema:
                types.setdefault(f.name, set()).add(f.type)
        mixed = {n for n, t in types.items() if len(t) > 1}
        parts = [_as_text(part, mixed) for part in parts]
        return pa.concat_tables(parts, promote_options="permissive")


def _as_text(table: pa.Table, columns: set[str]) -> pa.Table:
    for i, name in enumerate(table.column_names):
        if name in columns:
            table = table.set_column(i, name, pc.cast(table[name], pa.string()))
    return table
