"""Great Expectations suites as tables: one row (`Check`) per expectation, built from the settings.

A row says what one check is, in the order the tables below give it:
  name    unique in its suite; the `check` column of the quarantine and of the report
  v       the V it guards: volume | variety | validity | velocity, or privacy (personal data)
  scope   record: a failure names records, which are quarantined; the gate fails when too many
          are (max_quarantine_fraction decides, not the check). dataset: a failure fails the
          gate on its own. noted: a failure is reported and acted on outside the record
          quarantine (privacy: the values are masked and listed), and does not fail the gate
  expect  the GX expectation (`Expect` + this), its column and its other arguments
  says    the failure sentence, formatted by results.py from the fields: key (record id / row /
          class / measure), ts (the row's timestamp), column, value, value_repr (quoted if
          text), rec (the failing row of a small table, e.g. {rec[records]}), dtype, columns
          (seen), missing (columns), hint (a likely rename), start (of a gap)
  notes   what passing means, for the report
and, where they apply: once (a fact about the whole table: one sentence, not one per failing
key), observe (the column whose first value is the observed value), observed_column (the
column whose value explains a record's failure), duration (the value is seconds: 1h30min).

`expectation` makes a row the GX expectation, with the row in its `meta` (v, critical,
record_level, check, says, ...: what Data Docs shows and validation results carry back).
Adding a check: a row in the builder of its table, and a test that makes it fail.

Each dataset is validated as several tables, each with its suite:
  images  the profile (one row per image, validated chunk by chunk), the per-class counts,
          a one-row summary (rows, drop) and the drift table (one row per measure);
  series  the raw rows plus columns derived from the whole timeline (chunk by chunk), the
          summary (rows, drop, age of the newest row), the drift table and the privacy table
          (one row per text column: what privacy.py found in it).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from bigdeep.config import ImagePrepare, ImageQuality, SeriesData, SeriesPrivacy, SeriesQuality
from bigdeep.quality.privacy import NAMES, TYPES
from bigdeep.quality.profile import PROFILE_COLUMNS, mode_bands
from bigdeep.quality.ranges import ValueRange, finite_column
from bigdeep.quality.timeline import ZONE_COLUMN, Timeline, duration_text

V = Literal["volume", "variety", "validity", "velocity", "privacy"]
VS: tuple[V, ...] = ("volume", "variety", "validity", "velocity")  # every dataset has these
Scope = Literal["record", "dataset", "noted"]
RECORD: Scope = "record"
DATASET: Scope = "dataset"
NOTED: Scope = "noted"

# The pandas dtypes GX's type-list check accepts as numbers.
NUMERIC_TYPES = ["float64", "float32", "int64", "int32", "int16", "int8"]
NUMERIC_TYPES += ["uint64", "uint32", "uint16", "uint8", "Float64Dtype", "Int64Dtype"]

# Text that parses as a finite number. GX matches a numeric column on its text form, so
# this rejects inf, -inf and words in one check; missing values are left to `<column>_present`.
FINITE_NUMBER = r"^\s*[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?\s*$"
FLOAT_MAX = float(np.finfo(np.float64).max)

# The profile's numeric columns and the type GX sees for each. (GX 1.24 cannot match
# pandas' `str` dtype by name, so text columns are checked for presence only.)
_PROFILE_TYPES = {"decodes": "bool", "height": "Int64Dtype", "width": "Int64Dtype",
                  "channels": "Int64Dtype", "bit_depth": "Int64Dtype", "pixel_min": "float64",
                  "pixel_max": "float64", "pixel_mean": "float64"}  # fmt: skip

# The columns of the small tables the gate builds (and what identifies their rows).
CLASS_COLUMNS = ["class", "records", "imbalance"]  # key: class
SUMMARY_COLUMNS = ["dataset", "rows", "reference_rows", "drop_pct", "newest", "age_s"]
SUMMARY_COLUMNS += ["extra_columns"]  # key: dataset
DRIFT_COLUMNS = ["measure", "js", "linf"]  # key: measure
# key: column; per type: rows holding one, the first rows (text), the first one masked
PRIVACY_COLUMNS = ["column"] + [f"{t}{part}" for t in TYPES for part in ("", "_rows", "_example")]


@dataclass(frozen=True)
class Check:
    """One expectation as a row (see the module docstring)."""

    name: str
    v: V
    scope: Scope
    expect: str
    column: str | None
    args: dict[str, Any]
    says: str
    notes: str
    once: bool = False
    observe: str | None = None
    observed_column: str | None = None
    duration: bool = False

    @property
    def critical(self) -> bool:
        return self.scope == DATASET

    @property
    def record_level(self) -> bool:
        return self.scope == RECORD


def expectation(check: Check) -> Any:
    """The GX expectation of a row, the row's fields in its meta."""
    import great_expectations.expectations as gxe

    c = check
    meta = {"v": c.v, "critical": c.critical, "record_level": c.record_level, "check": c.name}
    meta["says"] = c.says
    optional = [("observed_column", c.observed_column), ("observe", c.observe)]
    optional.append(("format", "duration" if c.duration else None))
    meta |= {key: value for key, value in optional if value}
    column = {} if c.column is None else {"column": c.column}
    return getattr(gxe, "Expect" + c.expect)(meta=meta, notes=c.notes, **column, **c.args)


@dataclass(frozen=True)
class Suite:
    """A table's checks: the rows, and the GX suite built from them."""

    name: str
    checks: tuple[Check, ...]
    gx: Any  # great_expectations.ExpectationSuite


def suite(name: str, checks: list[Check]) -> Suite:
    import great_expectations as gx

    gx_context()
    names = [c.name for c in checks]
    if len(names) != len(set(names)):  # e.g. the target also listed as a feature
        raise ValueError(f"suite {name}: a column is checked twice ({', '.join(names)})")
    built = gx.ExpectationSuite(name=name)
    for check in checks:
        built.add_expectation(expectation(check))
    if len(built.expectations) != len(checks):  # GX silently merged two equal ones
        raise ValueError(f"suite {name}: two checks are the same expectation ({', '.join(names)})")
    return Suite(name, tuple(checks), built)


@functools.cache
def gx_context() -> Any:
    """The process's one ephemeral GX context (in memory; suites need one to exist)."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    return context


def _column_exists(c: str) -> Check:
    return Check(f"column_{c}", "variety", DATASET, "ColumnToExist", c, {},
                 'column "{column}" missing (columns seen: {columns}){hint}',
                 f"column {c!r} is present", once=True)  # fmt: skip


def _type(c: str, types: list[str], wanted: str, notes: str) -> Check:
    return Check(f"type_{c}", "variety", DATASET, "ColumnValuesToBeInTypeList", c,
                 {"type_list": types}, f'column "{{column}}" has type {{dtype}}, {wanted}',
                 notes, once=True)  # fmt: skip


# --- every dataset: the one-row summary and the drift table ---------------------------------


def summary_suite(
    name: str,
    min_rows: int,
    max_rows: int,
    max_drop_pct: float,
    noun: str,
    max_age_s: float | None = None,
    forbid_extra_columns: bool = False,
) -> Suite:
    """Dataset-level volume (and freshness, extra columns) checks on the one-row summary."""
    lo, hi, drop, age = min_rows, max_rows, f"{max_drop_pct:g}", _duration(max_age_s)
    # fmt: off
    checks = [
        Check("row_count", "volume", DATASET, "ColumnMaxToBeBetween", "rows",
              {"min_value": lo, "max_value": hi},
              f"{{value}} {noun}, expected between {lo} and {hi}",
              f"between {lo} and {hi} {noun}; an empty or header-only dataset fails", once=True),
        Check("row_drop", "volume", DATASET, "ColumnValuesToBeBetween", "drop_pct",
              {"max_value": max_drop_pct},
              f"{{rec[rows]}} {noun}, {{value}}% fewer than the {{rec[reference_rows]}} of the "
              f"last accepted version (max_drop_pct={drop})",
              f"at most {drop}% fewer {noun} than the last accepted version",
              once=True, observe="drop_pct"),
    ]
    if forbid_extra_columns:
        checks.append(
            Check("columns_extra", "variety", DATASET, "ColumnValuesToBeNull", "extra_columns", {},
                  "extra columns: {value} (allow_extra_columns is false; renamed?)",
                  "no columns besides the timestamp, target and features",
                  once=True, observe="extra_columns"))
    if max_age_s is not None:
        checks.append(
            Check("freshness", "velocity", DATASET, "ColumnValuesToBeBetween", "age_s",
                  {"max_value": max_age_s},
                  f"the newest row ({{rec[newest]}}) is {{value}} old, over max_age={age}",
                  f"the newest row is at most {age} old",
                  once=True, observe="age_s", duration=True))
    # fmt: on
    return suite(f"{name}_summary", checks)


def drift_suite(name: str, max_js: float, max_linf: float) -> Suite:
    """Distribution drift against the last accepted version, one row per measure."""
    than = "vs the last accepted version"
    # fmt: off
    return suite(f"{name}_drift", [
        Check("drift_js", "variety", DATASET, "ColumnValuesToBeBetween", "js", {"max_value": max_js},
              f'"{{key}}" drifted: Jensen-Shannon divergence {{value}} {than}, over '
              f"max_drift_js={max_js:g}",
              f"Jensen-Shannon divergence (base 2) of each numeric measure's histogram {than} "
              f"at most {max_js:g}"),
        Check("drift_linf", "variety", DATASET, "ColumnValuesToBeBetween", "linf",
              {"max_value": max_linf},
              f'"{{key}}" frequencies drifted: L-infinity {{value}} {than}, over '
              f"max_drift_linf={max_linf:g}",
              f"L-infinity distance of each categorical measure's frequencies {than} at most "
              f"{max_linf:g}"),
    ])
    # fmt: on


def privacy_suite(name: str, settings: SeriesPrivacy) -> Suite:
    """Personal data in the text columns (the privacy table, PRIVACY_COLUMNS), one check per
    type. policy fail: a find fails the gate; quarantine: it is noted (masked and listed)."""
    fail = settings.policy == "fail"
    if fail:
        action = (
            "quality.series.privacy.policy is fail: remove it at the source, or set the "
            "policy to quarantine to mask it and train on the other columns"
        )
    else:
        action = "masked in every output, listed in the quarantine's privacy.parquet"
    checks = [
        Check(f"privacy_{t}", "privacy", DATASET if fail else NOTED, "ColumnValuesToBeBetween",
              t, {"max_value": 0},
              f'column "{{key}}": {{value}} row(s) hold {NAMES[t]}, e.g. {{rec[{t}_example]}} '
              f"(rows {{rec[{t}_rows]}}); {action}",
              f"no {NAMES[t]} in any text column (policy {settings.policy})")
        for t in settings.types
    ]  # fmt: skip
    return suite(f"{name}_privacy", checks)


def select(s: Suite, names: set[str], keep: bool = True) -> Suite:
    """The suite of `s`'s checks named in `names` (keep) or of the others (not keep), in
    suite order; `Run` folds its results into `s`'s checks of the same names."""
    return suite(s.name, [c for c in s.checks if (c.name in names) == keep])


# --- images: the profile table (one row per image) ------------------------------------------

# The image record checks that need the whole store, not a unit's own rows: run where the
# store is merged (the gate's driver), the others where the images are decoded.
STORE_CHECKS = {"duplicate"}


def image_suite(settings: ImageQuality, conversion: ImagePrepare | None = None) -> Suite:
    """Expectations on the image profile (`profile.profile_images`), keyed by record_id.

    With a conversion (`prepare.images.size` / `.mode`), the shape checks it covers ask that
    an image can be converted, not that it has the target shape already.
    """
    s, c = settings, conversion or ImagePrepare()
    classes = ", ".join(s.classes)
    top = 255 if c.mode else 2 ** mode_bands(s.mode)[1] - 1  # converted modes are 8-bit
    # fmt: off
    columns = Check("columns", "variety", DATASET, "TableColumnsToMatchSet", None,
                    {"column_set": list(PROFILE_COLUMNS), "exact_match": False},
                    "profile columns missing: {missing} (columns seen: {columns})",
                    "the profile has every column of profile.PROFILE_COLUMNS", once=True)
    types = [_type(column, [t], f"expected {t}", f"column {column!r} has type {t}")
             for column, t in _PROFILE_TYPES.items()]
    validity = [
        Check("decodes", "validity", RECORD, "ColumnValuesToBeInSet", "decodes", {"value_set": [True]},
              'record "{key}" does not decode ({value})',
              "every image decodes with PIL (the profile's `error` says why not)",
              observed_column="error"),
        Check("label_present", "validity", RECORD, "ColumnValuesToNotBeNull", "label", {},
              'record "{key}" has no label', "every image has a label"),
        Check("label_in_classes", "validity", RECORD, "ColumnValuesToBeInSet", "label",
              {"value_set": list(s.classes)},
              f'record "{{key}}" has label {{value_repr}}, not one of the classes {classes} (a '
              "folder source's labels are its subfolder names: if this is a class, list it in "
              "quality.images.classes in params.yaml)",
              f"every label is one of the classes: {classes}"),
        Check("pixel_min", "validity", RECORD, "ColumnValuesToBeBetween", "pixel_min", {"min_value": 0},
              'record "{key}" has pixel values below 0 (min {value})', "no pixel below 0"),
        Check("pixel_max", "validity", RECORD, "ColumnValuesToBeBetween", "pixel_max",
              {"max_value": top},
              f'record "{{key}}" has pixel values above {top} (max {{value}})',
              f"no pixel above {top} (mode {c.mode or s.mode})"),
        Check("duplicate", "validity", RECORD, "ColumnValuesToBeNull", "duplicate_of", {},
              'record "{key}" is an exact duplicate of "{value}" (same sha256)',
              "no exact duplicates: each later copy of the same bytes (sha256) is flagged"),
    ]
    # fmt: on
    return suite("images", [columns, *types, *_shape_checks(s, c), *validity])


def _shape(column: str, expected: Any, says: str, notes: str) -> Check:
    """A record-level variety check: `expected` is a value, a list of values or a
    (min, max) range (a tuple; None for no bound)."""
    if isinstance(expected, tuple):
        kind, args = "ColumnValuesToBeBetween", {"min_value": expected[0], "max_value": expected[1]}
    else:
        values = expected if isinstance(expected, list) else [expected]
        kind, args = "ColumnValuesToBeInSet", {"value_set": values}
    return Check(column, "variety", RECORD, kind, column, args, says, notes)


def _shape_checks(s: ImageQuality, c: ImagePrepare) -> list[Check]:
    """The height, width, mode, channels and bit-depth checks: the target shape, or what can
    be converted to it."""
    from bigdeep.data.images import CONVERTIBLE_MODES

    channels, bits = mode_bands(s.mode)
    sides = [("height", "high", s.height), ("width", "wide", s.width)]
    if c.size is None:
        out = [_shape(side, n, f'record "{{key}}" is {{value}} pixels {word}, expected {n}',
                      f"every image is {n} pixels {word}")
               for side, word, n in sides]  # fmt: skip
    else:
        size, least = f"{c.size[0]}x{c.size[1]}", f"min_side={s.min_side}"
        out = [_shape(side, (s.min_side, None),
                      f'record "{{key}}" is {{value}} pixels {word}, below {least}: too small '
                      f"to resize to {size}",
                      f"every image is at least {least} pixels {word} (resized to {size})")
               for side, word, _ in sides]  # fmt: skip
    # fmt: off
    if c.mode is None:
        return out + [
            _shape("mode", s.mode, f'record "{{key}}" has mode "{{value}}", expected "{s.mode}"',
                   f"every image has PIL mode {s.mode!r}"),
            _shape("channels", channels,
                   f'record "{{key}}" has {{value}} channel(s), expected {channels}',
                   f"every image has {channels} channel(s) (mode {s.mode})"),
            _shape("bit_depth", bits, f'record "{{key}}" is {{value}}-bit, expected {bits}-bit',
                   f"every image has {bits}-bit samples (mode {s.mode})"),
        ]
    modes = ", ".join(CONVERTIBLE_MODES)
    return out + [
        _shape("mode", list(CONVERTIBLE_MODES),
               f'record "{{key}}" has mode "{{value}}", which does not convert to {c.mode} '
               f"faithfully (convertible: {modes})",
               f"every image has a mode that converts to {c.mode} ({modes})"),
        _shape("channels", (1, 4), 'record "{key}" has {value} channel(s), expected 1 to 4',
               f"every image has 1 to 4 channels (converted to {c.mode})"),
        _shape("bit_depth", [1, 8], 'record "{key}" is {value}-bit, expected 1- or 8-bit',
               f"every image has 1- or 8-bit samples (converted to {c.mode})"),
    ]
    # fmt: on


# --- images: the per-class count table (columns class, records, imbalance) ------------------


def class_count_suite(settings: ImageQuality) -> Suite:
    """Expectations on the per-class counts (`gate.class_counts`), keyed by class."""
    least, ratio = settings.min_per_class, f"max_imbalance_ratio={settings.max_imbalance_ratio:g}"
    # fmt: off
    return suite("images_classes", [
        # A different expectation from class_count: GX drops an expectation that is
        # equal to one already in the suite, as this would be when min_per_class = 1.
        Check("class_present", "variety", DATASET, "ColumnValuesToNotBeInSet", "records",
              {"value_set": [0]}, 'class "{key}" has no records (every class must be present)',
              "every class in the settings has at least one record"),
        Check("class_count", "volume", DATASET, "ColumnValuesToBeBetween", "records",
              {"min_value": least},
              f'class "{{key}}" has {{value}} records, fewer than min_per_class={least}',
              f"every class has at least min_per_class={least} records"),
        Check("class_balance", "variety", DATASET, "ColumnValuesToBeBetween", "imbalance",
              {"max_value": settings.max_imbalance_ratio},
              f'class "{{key}}" has {{rec[records]}} records, {{value}} times fewer than the '
              f"largest class ({ratio})",
              f"the largest class has at most {ratio} times the records of any other"),
    ])
    # fmt: on


# --- series: the raw rows plus the columns derived from the timeline ------------------------


def series_suite(
    data: SeriesData,
    settings: SeriesQuality,
    timeline: Timeline | None = None,
    numeric: frozenset[str] | None = None,
    ranges: dict[str, ValueRange] | None = None,
) -> Suite:
    """Expectations on the raw series rows (with `timeline.DERIVED` columns), keyed by `row`.

    numeric: the value columns that hold numbers in the chunk to validate (their finite
    check is a range check; only they get the bounds and outlier checks); None: all of them.
    ranges: per value column, its bounds from params.yaml and its robust range (ranges.py)."""
    timeline = timeline or Timeline()
    if numeric is None:
        numeric = frozenset([data.target, *data.features])
    return suite(
        "series",
        _series_variety(data)
        + _series_validity(data, settings, timeline, numeric, ranges or {})
        + _series_velocity(settings, timeline),
    )


def _series_variety(d: SeriesData) -> list[Check]:
    values = [d.target, *d.features]
    # fmt: off
    timestamp = Check("type_timestamp", "variety", DATASET, "ColumnValuesToBeOfType", d.timestamp,
                      {"type_": "Timestamp"},  # the scalar type of datetime64[*, UTC]
                      'column "{column}" has type {dtype}, expected UTC timestamps',
                      "the timestamp column holds timezone-aware timestamps (UTC at ingest)",
                      once=True)
    # fmt: on
    return (
        [_column_exists(c) for c in ["row", d.timestamp, *values]]
        + [timestamp]
        + [_type(c, NUMERIC_TYPES, "not numeric", f"column {c!r} is numeric") for c in values]
    )


def _series_validity(
    d: SeriesData,
    s: SeriesQuality,
    t: Timeline,
    numeric: frozenset[str],
    ranges: dict[str, ValueRange],
) -> list[Check]:
    ts, row = d.timestamp, "row {key} ({ts})"
    freq = t.freq or "?"
    how = "the most common step" if t.freq_inferred else "quality.series.freq"
    zones = f"{t.zone_kind or '?'}; zones seen: {_zones(t)}"
    # fmt: off
    checks = [
        Check("timestamp_present", "validity", RECORD, "ColumnValuesToNotBeNull", ts, {},
              "row {key} {column} is missing or did not parse",
              "every row has a timestamp (null when ingest could not parse it)"),
        Check("timestamp_unique", "validity", RECORD, "ColumnValuesToBeInSet", "ts_repeats",
              {"value_set": [1]}, f"{row} {ts} is duplicated ({{value}} rows share it)",
              "no two rows share a timestamp"),
        Check("timestamp_increasing", "validity", RECORD, "ColumnValuesToBeBetween",
              "ts_after_previous_s", {"min_value": 0, "strict_min": True},
              f"{row} {ts} is not after the row before it",
              "timestamps strictly increase from row to row"),
        Check("timestamp_zone", "validity", RECORD, "ColumnValuesToBeInSet", "ts_zone_offset",
              {"value_set": [t.zone_kind != "naive"]},
              f'{row} {ts} is written "{{value}}", unlike most rows ({zones})',
              "one timezone convention: every timestamp carries a UTC offset, or none does "
              f"(most rows: {zones})", observed_column=ZONE_COLUMN),
        Check("timestamp_regular", "validity", RECORD, "ColumnValuesToBeInSet", "ts_on_grid",
              {"value_set": [True]}, f"{row} {ts} is off the regular {freq} grid ({how})",
              f"every timestamp is a whole number of {freq} steps ({how}) from the others"),
    ]
    for c in [d.target, *d.features]:
        checks += [
            Check(f"{c}_present", "validity", RECORD, "ColumnValuesToNotBeNull", c, {},
                  "row {key} ({ts}) {column} is NaN", f"no missing {c} (NaN or empty)"),
            _finite(c, c in numeric),
        ]
        if c in numeric and c in ranges:  # a text chunk fails its type check instead
            checks += _in_range(ranges[c], s)
    # fmt: on
    return checks


def _finite(c: str, numeric: bool) -> Check:
    """`<c>_finite`: on a numeric column a range check (inf and -inf are outside it); on any
    other a regex on the text, which also rejects words. The same check either way: the
    regex costs ~2 us a row (GX matches the text of every value), the range check ~0."""
    kind, args = (
        ("ColumnValuesToBeBetween", {"min_value": -FLOAT_MAX, "max_value": FLOAT_MAX})
        if numeric
        else ("ColumnValuesToMatchRegex", {"regex": FINITE_NUMBER})
    )
    return Check(f"{c}_finite", "validity", RECORD, kind, c, args,
                 "row {key} ({ts}) {column} is {value_repr}, not a finite number",
                 f"every {c} is a finite number (no inf, -inf or text)")  # fmt: skip


def _in_range(r: ValueRange, s: SeriesQuality) -> list[Check]:
    """`<c>_bounds`: within quality.series.bounds; `<c>_outlier`: within the robust range.
    Record-level: a row outside is quarantined, and max_quarantine_fraction decides.
    Both read `<c> (finite)`: inf and -inf are `<c>_finite`'s to name, NaN `<c>_present`'s."""
    c, checks = r.column, []
    name = c.replace("{", "{{").replace("}", "}}")  # in a sentence the gate formats
    key, key_said = f"quality.series.bounds.{c}", f"quality.series.bounds.{name}"
    said = f"row {{key}} ({{ts}}) {name} is {{value}}"
    # fmt: off
    if r.bounded:
        bounds = f"[{_number(r.bound_low)}, {_number(r.bound_high)}]"
        checks.append(
            Check(f"{c}_bounds", "validity", RECORD, "ColumnValuesToBeBetween", finite_column(c),
                  {"min_value": r.bound_low, "max_value": r.bound_high},
                  f"{said}, outside {key_said} = {bounds}: correct the row at the source, or "
                  "change the bound in params.yaml",
                  f"every {c} is within {bounds} ({key} in params.yaml)"))
    if r.robust:
        accepted = f"{_number(r.low, '-inf')} .. {_number(r.high, 'inf')}"
        how = (f"median {_number(r.median)} of {r.source} +- {s.max_robust_z:g} robust "
               "deviations, quality.series.max_robust_z")
        checks.append(
            Check(f"{c}_outlier", "validity", RECORD, "ColumnValuesToBeBetween", finite_column(c),
                  {"min_value": r.low, "max_value": r.high},
                  f"{said}, far outside the accepted range {accepted} ({how}): correct the row "
                  f"at the source; if the value is real, set {key_said}: [low, high] in "
                  "params.yaml (it replaces this range) or raise max_robust_z",
                  f"every {c} is within {accepted} ({how})"))
    # fmt: on
    return checks


def _series_velocity(s: SeriesQuality, t: Timeline) -> list[Check]:
    if t.gap_limit_us is None:  # fewer than two timestamps and no max_gap: no step to judge
        return []
    why = f"max_gap={s.max_gap}" if s.max_gap else f"one {t.freq} step"
    # A dataset check: the rows are missing, not bad, so there is nothing to quarantine.
    return [Check("gap", "velocity", DATASET, "ColumnValuesToBeBetween", "ts_gap_s",
                  {"max_value": t.gap_limit_us / 1e6},
                  f"gap of {{value}} from {{start}} to {{ts}} (before row {{key}}), over {why}",
                  f"no stretch of time without rows longer than {why}", duration=True)]  # fmt: skip


def _number(value: float | None, none: str = "null") -> str:
    return none if value is None else f"{value:.6g}"


def _zones(t: Timeline) -> str:
    shown = sorted(t.zones.items(), key=lambda kv: -kv[1])[:5]
    return ", ".join(f"{z} ({n})" for z, n in shown) or "none"


def _duration(seconds: float | None) -> str | None:
    return None if seconds is None else duration_text(seconds)
