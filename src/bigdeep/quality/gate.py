"""The quality gate: validate a table with its suite, quarantine bad records, decide.

    result = run_gate("images", profile_images("data/raw/images"), settings.quality.images)
    write_report(result, "reports/quality")                     # reports/quality/images.json
    write_quarantine(result, "data/raw/images", "data/quarantine/images")
    if not result.passed: stop before training

The gate fails when the table is empty, when a critical expectation fails (or one could
not run), or when the quarantined fraction of records exceeds max_quarantine_fraction.
`run_gate` is pure; the `write_*` functions are the only I/O.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from bigdeep.config import ImageQuality, SeriesData, SeriesQuality
from bigdeep.quality.profile import shard_paths
from bigdeep.quality.suites import VS, class_count_suite, gx_context, image_suite, series_suite

QUARANTINE_COLUMNS = ["record", "check", "observed"]
EXAMPLES = 10  # offending records listed per expectation in the report
SENTENCES_PER_CHECK = 20  # failure sentences per expectation before "... and N more"


@dataclass
class GateResult:
    passed: bool
    report: dict[str, Any]  # JSON-serialisable; see `run_gate`
    quarantine: pd.DataFrame  # QUARANTINE_COLUMNS, one row per (record, failed check)
    key: str = "record_id"  # the column that identifies a record in the raw shards


@dataclass
class _Table:
    """A table to validate and how to name its records in sentences."""

    frame: pd.DataFrame
    key: str
    timestamp: str | None = None  # series: shown next to the row number
    noun: str = "records"

    @functools.cached_property
    def by_key(self) -> pd.DataFrame:
        return self.frame.drop_duplicates(self.key).set_index(self.key)


def class_counts(profile: pd.DataFrame, classes: list[str]) -> pd.DataFrame:
    """Records per class (columns class, records), one row per class in the settings."""
    labels = profile["label"] if "label" in profile else pd.Series(dtype="str")
    counts = labels.value_counts()
    return pd.DataFrame(
        {"class": list(classes), "records": [int(counts.get(c, 0)) for c in classes]}
    )


def run_gate(
    name: str,
    table: pd.DataFrame,
    settings: ImageQuality | SeriesQuality,
    data: SeriesData | None = None,
) -> GateResult:
    """Validate `table`: an image profile (ImageQuality), or a raw series (SeriesQuality, with
    `data` naming its timestamp, target and feature columns).

    report: dataset, passed, rows, quarantined, quarantined_fraction, max_quarantine_fraction,
    by_v ({v: {passed, failed}}), expectations (one entry per expectation, in suite order:
    v, check, expectation, column, critical, record_level, success, observed,
    unexpected_count, examples, notes) and failures (sentences for people).
    """
    if isinstance(settings, ImageQuality):
        main = _Table(table, "record_id")
        validations = [
            (image_suite(settings), main),
            (class_count_suite(settings), _Table(class_counts(table, settings.classes), "class")),
        ]
    elif isinstance(settings, SeriesQuality):
        if data is None:
            raise TypeError("run_gate: a series needs data=SeriesData(...) to name its columns")
        main = _Table(table, "row", timestamp=data.timestamp, noun="rows")
        validations = [(series_suite(data, settings), main)]
    else:
        raise TypeError(
            f"run_gate: settings must be ImageQuality or SeriesQuality, got {settings!r}"
        )
    if main.key not in table.columns:
        raise ValueError(
            f"{name}: table has no {main.key!r} column to name its records "
            f"(columns: {', '.join(map(str, table.columns))})"
        )

    outcomes = [o for suite, t in validations for o in _validate(name, suite, t)]
    quarantine = _quarantine(outcomes)
    rows = len(table)
    quarantined = int(quarantine["record"].nunique())
    fraction = quarantined / rows if rows else 0.0

    failures = [s for o in outcomes for s in o.sentences]
    if rows == 0:
        failures.insert(0, f"{name}: no records (the dataset is empty)")
    over = fraction > settings.max_quarantine_fraction
    if over:
        failures.append(
            f"{name}: {quarantined} of {rows} {main.noun} quarantined ({fraction:.2%}), "
            f"over max_quarantine_fraction={settings.max_quarantine_fraction:g}"
        )
    passed = rows > 0 and not over and not any(o.blocks for o in outcomes)

    by_v = {v: {"passed": 0, "failed": 0} for v in VS}
    for o in outcomes:
        by_v[o.entry["v"]]["passed" if o.entry["success"] else "failed"] += 1
    report = {
        "dataset": name,
        "passed": passed,
        "rows": rows,
        "quarantined": quarantined,
        "quarantined_fraction": fraction,
        "max_quarantine_fraction": settings.max_quarantine_fraction,
        "by_v": by_v,
        "expectations": [o.entry for o in outcomes],
        "failures": failures,
    }
    return GateResult(passed=passed, report=report, quarantine=quarantine, key=main.key)


# --- validation ----------------------------------------------------------------------------


@functools.cache
def _batch_definition() -> Any:
    """A pandas asset that takes any frame, on the process's one GX context."""
    asset = gx_context().data_sources.add_pandas("bigdeep").add_dataframe_asset("table")
    return asset.add_batch_definition_whole_dataframe("whole")


@dataclass
class _Outcome:
    entry: dict[str, Any]  # the report's line for this expectation
    blocks: bool  # fails the gate by itself
    sentences: list[str]
    quarantine: list[tuple[str, str, str]]  # (record, check, observed)


def _validate(name: str, suite: Any, table: _Table) -> list[_Outcome]:
    batch = _batch_definition().get_batch(batch_parameters={"dataframe": table.frame})
    result = batch.validate(
        suite,
        result_format={
            "result_format": "COMPLETE",
            "unexpected_index_column_names": [table.key],
        },
    )
    order = {e.meta["check"]: i for i, e in enumerate(suite.expectations)}
    results = sorted(result.results, key=lambda r: order[r.expectation_config.meta["check"]])
    return [_outcome(name, r, table) for r in results]


def _outcome(name: str, r: Any, table: _Table) -> _Outcome:
    config = r.expectation_config
    meta, column = config.meta, config.kwargs.get("column")
    error = _exception(r.exception_info)
    found = r.result.get("unexpected_index_list") or []
    keys = [_plain(u[table.key]) for u in found]
    values = [u.get(column) for u in found]  # raw: NaN and inf stay floats until shown
    if meta.get("observed_column") and keys:
        values = list(table.by_key[meta["observed_column"]].reindex(keys))
    if "observed_value" in r.result:
        observed: Any = _plain(r.result["observed_value"])
    elif error:
        observed = f"could not run: {error}"
    else:
        observed = _plain(values[:EXAMPLES]) if meta["record_level"] else None

    entry = {
        "v": meta["v"],
        "check": meta["check"],
        "expectation": config.type,
        "column": column,
        "critical": bool(meta["critical"]),
        "record_level": bool(meta["record_level"]),
        "success": bool(r.success),
        "observed": observed,
        "unexpected_count": _plain(r.result.get("unexpected_count")),
        "examples": keys[:EXAMPLES],
        "notes": config.notes,
    }
    if r.success:
        return _Outcome(entry, blocks=False, sentences=[], quarantine=[])

    if error or (meta["record_level"] and not keys):
        # A check that could not run proves nothing, so it fails the gate. A missing column
        # is reported by its own check; don't repeat it for every check on that column.
        missing_column = column is not None and column not in table.frame
        why = error or "GX reported a failure without naming records"
        sentences = [] if missing_column else [f"{name}: {meta['check']} could not run: {why}"]
        return _Outcome(entry, blocks=True, sentences=sentences, quarantine=[])

    context = {
        "column": column,
        "columns": ", ".join(map(str, table.frame.columns)),
        "dtype": str(table.frame[column].dtype) if column in table.frame else None,
        "missing": ", ".join(r.result.get("details", {}).get("mismatched", {}).get("missing", [])),
    }
    says, blocks = meta["says"], bool(meta["critical"])
    if "{key}" not in says:  # a fact about the whole table: one sentence
        sentence = says.format(
            **context, key=None, ts=None, **_shown(r.result.get("observed_value"))
        )
        return _Outcome(entry, blocks, sentences=[f"{name}: {sentence}"], quarantine=[])

    shown = keys[:SENTENCES_PER_CHECK]
    sentences = [
        f"{name}: " + says.format(**context, key=k, ts=t, **_shown(v))
        for k, v, t in zip(shown, values, _timestamps(table, shown), strict=False)
    ]
    if len(keys) > len(shown):
        sentences.append(
            f"{name}: ... and {len(keys) - len(shown)} more fail {meta['check']} "
            f"(see {'the quarantine' if meta['record_level'] else 'the report'})"
        )
    quarantine = (
        [(str(k), meta["check"], _text(v)) for k, v in zip(keys, values, strict=True)]
        if meta["record_level"]
        else []
    )
    return _Outcome(entry, blocks, sentences=sentences, quarantine=quarantine)


def _quarantine(outcomes: list[_Outcome]) -> pd.DataFrame:
    rows = [q for o in outcomes for q in o.quarantine]
    frame = pd.DataFrame(rows, columns=QUARANTINE_COLUMNS)
    return frame.astype(dict.fromkeys(QUARANTINE_COLUMNS, "str"))


def _exception(info: dict[str, Any]) -> str | None:
    """GX reports an error either flat or per metric; return the first message."""
    if info.get("raised_exception"):
        return str(info.get("exception_message"))
    for value in info.values():
        if isinstance(value, dict) and value.get("raised_exception"):
            return str(value.get("exception_message"))
    return None


def _timestamps(table: _Table, keys: list[Any]) -> list[str | None]:
    if table.timestamp is None or table.timestamp not in table.frame:
        return [None] * len(keys)
    return [_iso(t) for t in table.by_key[table.timestamp].reindex(keys)]


def _iso(t: Any) -> str:
    if t is None or t is pd.NaT or (isinstance(t, float) and math.isnan(t)):
        return "no timestamp"
    if not isinstance(t, pd.Timestamp):
        return str(t)
    if t.tzinfo is not None:
        t = t.tz_convert("UTC")
    text = t.strftime("%Y-%m-%dT%H:%M:%S" if t.second or t.microsecond else "%Y-%m-%dT%H:%M")
    return text + ("Z" if t.tzinfo is not None else "")


# --- values for JSON and for people --------------------------------------------------------


def _plain(value: Any) -> Any:
    """numpy / pandas scalars and containers -> JSON-serialisable Python values."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | np.ndarray):
        return [_plain(v) for v in value]
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, pd.Timestamp):
        return value.isoformat()
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN / inf: "nan", "inf", "-inf"
    if isinstance(value, str | int | float | bool):
        return value
    return str(value)


def _text(value: Any) -> str:
    """How a raw value reads in a sentence or the quarantine's `observed` column."""
    if value is None or value is pd.NA or value is pd.NaT:
        return "null"
    if isinstance(value, pd.Timestamp):
        return _iso(value)
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        return str(int(value)) if value.is_integer() else repr(value)  # inf stays "inf"
    return str(value)


def _shown(value: Any) -> dict[str, str]:
    """Format fields for a value: as is, and quoted when it is text."""
    text = _text(value)
    return {"value": text, "value_repr": f'"{text}"' if isinstance(value, str) else text}


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
    the raw shards are only read."""
    out = Path(quarantine_dir)
    out.mkdir(parents=True, exist_ok=True)
    reasons_path, records_path = out / "reasons.parquet", out / "records.parquet"
    reasons = pa.Table.from_pandas(result.quarantine, preserve_index=False).cast(
        pa.schema([(c, pa.string()) for c in QUARANTINE_COLUMNS])
    )
    pq.write_table(reasons, reasons_path)

    wanted = pa.array(sorted(set(result.quarantine["record"])), type=pa.string())
    paths = shard_paths(shards_dir)
    parts = []
    for path in paths:
        shard = pq.read_table(path)
        keys = pc.cast(shard[result.key], pa.string())
        parts.append(shard.filter(pc.is_in(keys, value_set=wanted)))
    records = _concat(parts) if parts else pa.table({result.key: pa.array([], pa.string())})
    pq.write_table(records, records_path)
    return reasons_path, records_path


def _concat(parts: list[pa.Table]) -> pa.Table:
    """Shards whose column types differ (text in one, numbers in another) still concatenate:
    such a column is kept as text."""
    try:
        return pa.concat_tables(parts, promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        types: dict[str, set[pa.DataType]] = {}
        for part in parts:
            for field in part.schema:
                types.setdefault(field.name, set()).add(field.type)
        mixed = {n for n, t in types.items() if len(t) > 1}
        parts = [_as_text(part, mixed) for part in parts]
        return pa.concat_tables(parts, promote_options="permissive")


def _as_text(table: pa.Table, columns: set[str]) -> pa.Table:
    for i, name in enumerate(table.column_names):
        if name in columns:
            table = table.set_column(i, name, pc.cast(table[name], pa.string()))
    return table
