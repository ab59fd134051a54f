"""Great Expectations results, merged over chunks, turned into the gate's verdict.

A `Run` holds every check of one dataset. `Run.validate(suite, Table(frame, key))` runs GX
on one table (a chunk of records, or a small dataset-level table) and folds each
expectation's result into its `_Merged`: success, counts, the first examples, failure
sentences (its row's `says`, formatted from the fields in `suites.py`), quarantine rows.
`Run.verdict` merges them and decides:

    run = Run("images", [summary, records, classes, drift])
    for chunk in chunks:
        run.validate(records, Table(chunk, "record_id"))
    verdict = run.verdict(rows, max_quarantine_fraction, "records")

`Run.validate` is `run_suite` (GX, where the table is: a cluster's worker for a chunk of a
series) then `Run.absorb` (here, in chunk order); what passes between them is small and
pickles: GX's results and the few rows the sentences read (`Validated`).
"""

from __future__ import annotations

import difflib
import functools
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from bigdeep.quality.ranges import FINITE
from bigdeep.quality.suites import VS, Check, Suite, gx_context
from bigdeep.quality.timeline import DERIVED, ZONE_COLUMN, duration_text

QUARANTINE_COLUMNS = ["record", "check", "observed"]
EXAMPLES = 10  # offending records listed per expectation in the report
SENTENCES_PER_CHECK = 20  # failure sentences per expectation before "... and N more"


@dataclass
class Verdict:
    passed: bool
    quarantined: int  # distinct records
    fraction: float  # quarantined / rows
    by_v: dict[str, dict[str, int]]  # {v: {passed, failed}}
    entries: list[dict[str, Any]]  # one per expectation, in suite order
    failures: list[str]  # sentences for people
    quarantine: pd.DataFrame  # QUARANTINE_COLUMNS, one row per (record, failed check)
    validation: Any  # GX ExpectationSuiteValidationResult of every check (Data Docs)


# --- validating tables, merging chunks ----------------------------------------------------------------------------


@functools.cache
def _batch_definition() -> Any:
    """A pandas asset that takes any frame, on the process's one GX context."""
    asset = gx_context().data_sources.add_pandas("bigdeep").add_dataframe_asset("table")
    return asset.add_batch_definition_whole_dataframe("whole")


@dataclass
class Table:
    """A table to validate and how to name its records in sentences."""

    frame: pd.DataFrame
    key: str
    timestamp: str | None = None  # series: shown next to the row number
    noun: str = "records"
    expected: list[str] | None = None  # required columns (a missing one may have been renamed)

    @functools.cached_property
    def by_key(self) -> pd.DataFrame:
        return self.frame.drop_duplicates(self.key).set_index(self.key)


@dataclass
class _Outcome:
    entry: dict[str, Any]  # the report's line for this expectation
    blocks: bool  # fails the gate by itself
    sentences: list[str]
    quarantine: list[tuple[str, str, str]]  # (record, check, observed)
    gx_result: Any = None  # an ExpectationValidationResult summarising every chunk


_UNSET: Any = object()
_FIRST: Any = object()


@dataclass
class _Rec:
    """A row of a small table as text, for sentences that read `{rec[column]}`; looked up
    only then. The table's first row unless a key is given."""

    table: Table
    key: Any = _FIRST

    def __getitem__(self, column: str) -> str:
        table = self.table
        key = table.frame[table.key].iloc[0] if self.key is _FIRST else self.key
        return _record(table, key)[column]


@dataclass
class _Merged:
    """One expectation's results, merged over every chunk it ran on."""

    check: Check
    config: Any  # its GX ExpectationConfiguration
    runs: int = 0
    success: bool = True
    error: str | None = None
    missing_column: bool = False
    element_count: int = 0
    unexpected_count: int | None = None
    observed: Any = _UNSET
    table_sentence: str | None = None
    sentences: list[str] = field(default_factory=list)  # the first failing keys'
    failed_keys: int = 0
    examples: list[Any] = field(default_factory=list)
    example_values: list[Any] = field(default_factory=list)
    quarantine: list[tuple[str, str, str]] = field(default_factory=list)

    def absorb(self, r: Any, table: Table) -> None:
        check, column = self.check, self.check.column
        self.runs += 1
        error = _exception(r.exception_info)
        if error:
            self.success = False
            self.error = self.error or error
            self.missing_column |= column is not None and column not in table.frame
            return
        result = r.result
        self.element_count += int(result.get("element_count") or 0)
        if result.get("unexpected_count") is not None:
            self.unexpected_count = (self.unexpected_count or 0) + int(result["unexpected_count"])
        first_failure = not r.success and self.success
        self.success &= bool(r.success)
        if check.observe and check.observe in table.frame and len(table.frame):
            observed = plain(table.frame[check.observe].iloc[0])
        elif "observed_value" in result:
            observed = plain(result["observed_value"])
        else:
            observed = _UNSET
        if observed is not _UNSET and (self.observed is _UNSET or first_failure):
            self.observed = observed
        if r.success:
            return

        found = result.get("unexpected_index_list") or []
        keys = [plain(u[table.key]) for u in found]
        if check.record_level and not keys:
            self.error = self.error or "GX reported a failure without naming records"
            return
        context = _context(table, column, result)
        if check.once:  # a fact about the whole table: one sentence
            if self.table_sentence is None:
                value = observed if observed is not _UNSET else None
                self.table_sentence = self._say(value, context, _Rec(table))
            return

        values = [u.get(column) for u in found]  # raw: NaN and inf stay floats until shown
        source = check.observed_column
        if source and source in table.frame and keys:
            values = list(table.by_key[source].reindex(keys))
        room = SENTENCES_PER_CHECK - len(self.sentences)
        for k, v in zip(keys[:room], values[:room], strict=False):
            ts = _timestamp(table, k)
            self.sentences.append(self._say(v, context, _Rec(table, k), key=k, ts=ts))
        self.failed_keys += len(keys)
        room = EXAMPLES - len(self.examples)
        self.examples += keys[:room]
        self.example_values += values[:room]
        if check.record_level:
            self.quarantine += [
                (str(k), check.name, as_text(v)) for k, v in zip(keys, values, strict=True)
            ]

    def _say(
        self, value: Any, context: dict[str, Any], rec: _Rec, key: Any = None, ts: Any = None
    ) -> str:
        """The check's sentence, formatted from every field (see `suites.py`)."""
        duration = self.check.duration
        start = None
        if duration and ts is not None and _finite(value):
            try:
                start = iso(pd.Timestamp(ts) - pd.Timedelta(seconds=float(value)))
            except ValueError:  # "no timestamp"
                start = "?"
        shown = _shown(value, duration)
        return self.check.says.format(key=key, ts=ts, rec=rec, start=start, **context, **shown)

    def outcome(self, name: str) -> _Outcome:
        check = self.check
        if self.observed is not _UNSET:
            observed = self.observed
        elif self.error:
            observed = f"could not run: {self.error}"
        else:
            observed = plain(self.example_values) if check.record_level else None
        entry = {
            "v": check.v,
            "check": check.name,
            "expectation": self.config.type,
            "column": check.column,
            "critical": check.critical,
            "record_level": check.record_level,
            "success": self.success,
            "observed": observed,
            "unexpected_count": self.unexpected_count,
            "examples": list(self.examples),
            "notes": check.notes,
        }
        gx_result = self._gx_result()
        if self.success:
            return _Outcome(entry, False, [], [], gx_result)
        if self.error:
            # A check that could not run proves nothing, so it fails the gate. A missing column
            # is reported by its own check; don't repeat it for every check on that column.
            sentences = (
                [] if self.missing_column else [f"{name}: {check.name} could not run: {self.error}"]
            )
            return _Outcome(entry, True, sentences, [], gx_result)
        blocks = check.critical
        if self.table_sentence is not None:
            return _Outcome(entry, blocks, [f"{name}: {self.table_sentence}"], [], gx_result)
        sentences = [f"{name}: {s}" for s in self.sentences]
        if self.failed_keys > len(self.sentences):
            sentences.append(
                f"{name}: ... and {self.failed_keys - len(self.sentences)} more fail {check.name} "
                f"(see {'the quarantine' if check.record_level else 'the report'})"
            )
        return _Outcome(entry, blocks, sentences, self.quarantine, gx_result)

    def _gx_result(self) -> Any:
        """What Data Docs shows: the merged counts and the first offending values."""
        from great_expectations.core import ExpectationValidationResult

        result: dict[str, Any] = {}
        if self.runs and (self.element_count or self.unexpected_count is not None):
            result["element_count"] = self.element_count
            result["unexpected_count"] = self.unexpected_count or 0
            result["unexpected_percent"] = (
                100 * (self.unexpected_count or 0) / self.element_count
                if self.element_count
                else 0.0
            )
            result["partial_unexpected_list"] = plain(self.example_values)
        if self.observed is not _UNSET:
            result["observed_value"] = self.observed
        exception = {
            "raised_exception": False,
            "exception_message": None,
            "exception_traceback": None,
        }
        if self.error:  # GX's renderer shows the traceback text: ours is the message
            exception = {
                "raised_exception": True,
                "exception_message": self.error,
                "exception_traceback": self.error,
            }
        return ExpectationValidationResult(
            success=self.success,
            expectation_config=self.config,
            result=result,
            exception_info=exception,
        )


class Run:
    """Every check of one dataset, in suite order, merged over chunks."""

    def __init__(self, name: str, suites: list[Suite]) -> None:
        self.name = name
        self.checks: dict[str, _Merged] = {}
        for suite in suites:
            for check, e in zip(suite.checks, suite.gx.expectations, strict=True):
                self.checks[check.name] = _Merged(check, e.configuration)

    def ran(self, suite: Suite) -> bool:
        return any(self.checks[c.name].runs for c in suite.checks)

    def validate(self, suite: Suite, table: Table) -> None:
        self.absorb(run_suite(self.name, suite, table))

    def absorb(self, validated: Validated) -> None:
        """Fold one table's results into the checks (tables in order: the first examples and
        sentences are the first table's)."""
        for r in validated.results:
            self.checks[r.expectation_config.meta["check"]].absorb(r, validated.table)

    def cannot_run(self, checks: list[str], why: str) -> None:
        for check in checks:
            c = self.checks[check]
            c.success, c.error = False, why

    def verdict(
        self, rows: int, max_fraction: float, noun: str, header_only: bool = False
    ) -> Verdict:
        """Merge every check; decide. header_only: no rows, but the source had columns."""
        name = self.name
        outcomes = [c.outcome(name) for c in self.checks.values()]
        for o in outcomes:  # the report groups failures by check: its first sentence
            o.entry["first_failure"] = o.sentences[0] if o.sentences else None
        quarantine = _quarantine(outcomes)
        quarantined = int(quarantine["record"].nunique())
        fraction = quarantined / rows if rows else 0.0

        if rows == 0:
            # Types and checks of an empty column say nothing; the missing rows and columns do.
            kept = [
                s
                for o in outcomes
                if o.entry["check"] == "row_count" or o.entry["check"].startswith("column_")
                for s in o.sentences
            ]
            why = (
                "the source has a header but no data rows"
                if header_only
                else "the dataset is empty"
            )
            failures = [f"{name}: no {noun} ({why})", *kept]
        else:
            failures = [s for o in outcomes for s in o.sentences]
        over = fraction > max_fraction
        if over:
            failures.append(
                f"{name}: {quarantined} of {rows} {noun} quarantined ({fraction:.2%}), "
                f"over max_quarantine_fraction={max_fraction:g}"
            )
        passed = rows > 0 and not over and not any(o.blocks for o in outcomes)
        by_v = {v: {"passed": 0, "failed": 0} for v in VS}  # then privacy, where it ran
        for o in outcomes:
            counts = by_v.setdefault(o.entry["v"], {"passed": 0, "failed": 0})
            counts["passed" if o.entry["success"] else "failed"] += 1
        return Verdict(
            passed=passed,
            quarantined=quarantined,
            fraction=fraction,
            by_v=by_v,
            entries=[o.entry for o in outcomes],
            failures=failures,
            quarantine=quarantine,
            validation=_suite_result(name, passed, outcomes),
        )


@dataclass
class Validated:
    """One table's GX results (less what `_Merged.absorb` does not read: `_UNREAD`, and the
    rows a table-wide check names) and the rows of the table that it reads: the first (a
    table-wide sentence's `rec`, `observe`) and every row GX named (by key: sentences, values,
    timestamps). Every column, and so every dtype, is kept."""

    results: list[Any]  # GX ExpectationValidationResult, one per expectation, in suite order
    table: Table


# What GX's COMPLETE format lists that absorb does not read (each failing value, up to three
# times more): left out of what goes back to the driver.
_UNREAD = ["unexpected_list", "unexpected_index_query", "partial_unexpected_list"]
_UNREAD += ["partial_unexpected_index_list", "partial_unexpected_counts"]


def run_suite(name: str, suite: Suite, table: Table) -> Validated:
    """Validate `table` with GX (this process's context, `_batch_definition`)."""
    if table.key not in table.frame.columns:
        raise ValueError(
            f"{name}: table has no {table.key!r} column to name its records "
            f"(columns: {', '.join(map(str, table.frame.columns))})"
        )
    batch = _batch_definition().get_batch(batch_parameters={"dataframe": table.frame})
    result = batch.validate(
        suite.gx,
        result_format={
            "result_format": "COMPLETE",
            "unexpected_index_column_names": [table.key],
        },
    )
    once = {c.name for c in suite.checks if c.once}
    for r in result.results:
        for unread in _UNREAD:
            r.result.pop(unread, None)
        if r.expectation_config.meta["check"] in once:  # its sentence reads the first row
            r.result.pop("unexpected_index_list", None)
    named = {
        u[table.key]
        for r in result.results
        if not r.success
        for u in (r.result.get("unexpected_index_list") or [])
    }
    keys = table.frame[table.key]
    wanted = keys.isin(named).to_numpy() | (np.arange(len(keys)) == 0)
    small = Table(table.frame[wanted], table.key, table.timestamp, table.noun, table.expected)
    return Validated(list(result.results), small)


def _suite_result(name: str, passed: bool, outcomes: list[_Outcome]) -> Any:
    from great_expectations.core import ExpectationSuiteValidationResult

    results = [o.gx_result for o in outcomes]
    ok = sum(1 for r in results if r.success)
    return ExpectationSuiteValidationResult(
        success=passed,
        results=results,
        suite_name=name,
        statistics={
            "evaluated_expectations": len(results),
            "successful_expectations": ok,
            "unsuccessful_expectations": len(results) - ok,
            "success_percent": 100 * ok / len(results) if results else 100.0,
        },
        meta={"active_batch_definition": {"data_asset_name": name}},
    )


def _context(table: Table, column: str | None, result: dict[str, Any]) -> dict[str, Any]:
    columns = [  # the source's own
        str(c) for c in table.frame.columns if c not in DERIVED and not str(c).endswith(FINITE)
    ]
    hint = ""
    if column is not None and column not in table.frame and table.expected:
        others = [c for c in columns if c not in table.expected and c != ZONE_COLUMN]
        missing = [c for c in table.expected if c not in table.frame]
        lowered = {c.lower().replace(" ", "_"): c for c in others}
        match = lowered.get(column.lower().replace(" ", "_"))
        close = [match] if match else difflib.get_close_matches(column, others, n=1, cutoff=0.6)
        if not close and len(missing) == 1 and len(others) == 1:
            close = others  # one column gone, one new: most likely the same, renamed
        if close:
            hint = f'; renamed to "{close[0]}"?'
    return {
        "column": column,
        "columns": ", ".join(columns),
        "dtype": str(table.frame[column].dtype) if column in table.frame else None,
        "missing": ", ".join(result.get("details", {}).get("mismatched", {}).get("missing", [])),
        "hint": hint,
    }


def _record(table: Table, key: Any) -> dict[str, str]:
    """The row of a small table, as text for a sentence."""
    try:
        row = table.by_key.loc[key]
    except KeyError:
        return {}
    return {str(k): as_text(v) for k, v in row.items()}


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


def _timestamp(table: Table, key: Any) -> str | None:
    if table.timestamp is None or table.timestamp not in table.frame:
        return None
    return iso(table.by_key[table.timestamp].get(key))


def iso(t: Any) -> str:
    if t is None or t is pd.NaT or (isinstance(t, float) and math.isnan(t)):
        return "no timestamp"
    if not isinstance(t, pd.Timestamp):
        return str(t)
    if t.tzinfo is not None:
        t = t.tz_convert("UTC")
    text = t.strftime("%Y-%m-%dT%H:%M:%S" if t.second or t.microsecond else "%Y-%m-%dT%H:%M")
    return text + ("Z" if t.tzinfo is not None else "")


# --- values for JSON and for people --------------------------------------------------------


def plain(value: Any) -> Any:
    """numpy / pandas scalars and containers -> JSON-serialisable Python values."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | np.ndarray):
        return [plain(v) for v in value]
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


def _finite(value: Any) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def as_text(value: Any) -> str:
    """How a raw value reads in the quarantine's `observed` column (exact)."""
    if value is None or value is pd.NA or value is pd.NaT:
        return "null"
    if isinstance(value, pd.Timestamp):
        return iso(value)
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        return str(int(value)) if value.is_integer() else repr(value)  # inf stays "inf"
    return str(value)


def _shown(value: Any, duration: bool = False) -> dict[str, str]:
    """Format fields for a value in a sentence: as is, and quoted when it is text."""
    if duration and _finite(value):
        text = duration_text(float(value))
    elif (
        isinstance(value, float | np.floating) and _finite(value) and not float(value).is_integer()
    ):
        text = f"{float(value):.4g}"
    else:
        text = as_text(value)
    return {"value": text, "value_repr": f'"{text}"' if isinstance(value, str) else text}
