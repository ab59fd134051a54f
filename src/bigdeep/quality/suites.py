"""Great Expectations suites, built from the settings, grouped by the V each check guards.

Every expectation carries `meta`:
  v             volume | variety | validity | velocity
  critical      a failure fails the gate on its own
  record_level  a failure names records; they are quarantined, and the gate fails when too
                many are (the fraction, not the expectation, decides)
  check         short name, unique in its suite; the `check` column of the quarantine
  says          the failure sentence, formatted by the gate with: key (record id / row /
                class / measure), ts (the row's timestamp), column, value, value_repr (quoted
                if text), rec (the failing row of a small table, e.g. {rec[records]}), dtype,
                columns (seen), missing (columns), hint (a likely rename), start (of a gap)
  observed_column  (optional) the column whose value explains a record's failure
  observe       (optional) the column whose (first) value is the check's observed value
  format        (optional) "duration": the value is seconds, shown as 1h30min

Each dataset is validated as several tables, each with its suite:
  images  the profile (one row per image, validated chunk by chunk), the per-class counts,
          a one-row summary (rows, drop) and the drift table (one row per measure);
  series  the raw rows plus columns derived from the whole timeline (chunk by chunk), the
          summary (rows, drop, age of the newest row) and the drift table.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from bigdeep.config import ImagePrepare, ImageQuality, SeriesData, SeriesQuality
from bigdeep.quality.profile import PROFILE_COLUMNS, mode_bands
from bigdeep.quality.ranges import ValueRange, finite_column
from bigdeep.quality.timeline import Timeline

if TYPE_CHECKING:
    import great_expectations as gx

V = Literal["volume", "variety", "validity", "velocity"]
VS: tuple[V, ...] = ("volume", "variety", "validity", "velocity")

# The pandas dtypes GX's type-list check accepts as numbers.
NUMERIC_TYPES = [
    "float64",
    "float32",
    "int64",
    "int32",
    "int16",
    "int8",
    "uint64",
    "uint32",
    "uint16",
    "uint8",
    "Float64Dtype",
    "Int64Dtype",
]

# Text that parses as a finite number. GX matches a numeric column on its text form, so
# this rejects inf, -inf and words in one check; missing values are left to `<column>_present`.
FINITE_NUMBER = r"^\s*[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?\s*$"
FLOAT_MAX = float(np.finfo(np.float64).max)

# The profile's numeric columns and the type GX sees for each. (GX 1.24 cannot match
# pandas' `str` dtype by name, so text columns are checked for presence only.)
_PROFILE_TYPES = {
    "decodes": ["bool"],
    "height": ["Int64Dtype"],
    "width": ["Int64Dtype"],
    "channels": ["Int64Dtype"],
    "bit_depth": ["Int64Dtype"],
    "pixel_min": ["float64"],
    "pixel_max": ["float64"],
    "pixel_mean": ["float64"],
}

# The columns of the small tables the gate builds (and what identifies their rows).
CLASS_COLUMNS = ["class", "records", "imbalance"]  # key: class
# key: dataset
SUMMARY_COLUMNS = [
    "dataset",
    "rows",
    "reference_rows",
    "drop_pct",
    "newest",
    "age_s",
    "extra_columns",
]
DRIFT_COLUMNS = ["measure", "js", "linf"]  # key: measure


def _expect(
    kind: type,
    *,
    v: V,
    check: str,
    critical: bool,
    record_level: bool,
    notes: str,
    says: str,
    observed_column: str | None = None,
    observe: str | None = None,
    format: str | None = None,
    **kwargs: Any,
) -> Any:
    meta: dict[str, Any] = {
        "v": v,
        "critical": critical,
        "record_level": record_level,
        "check": check,
        "says": says,
    }
    for key, value in (
        ("observed_column", observed_column),
        ("observe", observe),
        ("format", format),
    ):
        if value:
            meta[key] = value
    return kind(meta=meta, notes=notes, **kwargs)


@functools.cache
def gx_context() -> Any:
    """The process's one ephemeral GX context (in memory; suites need one to exist)."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    return context


def _suite(name: str, expectations: list[Any]) -> gx.ExpectationSuite:
    import great_expectations as gx

    gx_context()

    checks = [e.meta["check"] for e in expectations]
    if len(checks) != len(set(checks)):  # e.g. the target also listed as a feature
        raise ValueError(f"suite {name}: a column is checked twice ({', '.join(checks)})")
    suite = gx.ExpectationSuite(name=name)
    for expectation in expectations:
        suite.add_expectation(expectation)
    if len(suite.expectations) != len(expectations):  # GX silently merged two equal ones
        raise ValueError(f"suite {name}: two checks are the same expectation ({', '.join(checks)})")
    return suite


def _columns_exist(columns: list[str], v: V = "variety") -> list[Any]:
    import great_expectations.expectations as gxe

    return [
        _expect(
            gxe.ExpectColumnToExist,
            v=v,
            check=f"column_{c}",
            critical=True,
            record_level=False,
            notes=f"column {c!r} is present",
            says='column "{column}" missing (columns seen: {columns}){hint}',
            column=c,
        )
        for c in columns
    ]


# --- every dataset: the one-row summary and the drift table ---------------------------------


def summary_suite(
    name: str,
    min_rows: int,
    max_rows: int,
    max_drop_pct: float,
    noun: str,
    max_age_s: float | None = None,
    forbid_extra_columns: bool = False,
) -> gx.ExpectationSuite:
    """Dataset-level volume (and freshness, extra columns) checks on the one-row summary."""
    import great_expectations.expectations as gxe

    checks = [
        _expect(
            gxe.ExpectColumnMaxToBeBetween,
            v="volume",
            check="row_count",
            critical=True,
            record_level=False,
            notes=f"between {min_rows} and {max_rows} {noun}; an empty or header-only dataset fails",
            says=f"{{value}} {noun}, expected between {min_rows} and {max_rows}",
            column="rows",
            min_value=min_rows,
            max_value=max_rows,
        ),
        _expect(
            gxe.ExpectColumnValuesToBeBetween,
            v="volume",
            check="row_drop",
            critical=True,
            record_level=False,
            notes=f"at most {max_drop_pct:g}% fewer {noun} than the last accepted version",
            says=(
                f"{{rec[rows]}} {noun}, {{value}}% fewer than the {{rec[reference_rows]}} of the "
                f"last accepted version (max_drop_pct={max_drop_pct:g})"
            ),
            observe="drop_pct",
            column="drop_pct",
            max_value=max_drop_pct,
        ),
    ]
    if forbid_extra_columns:
        checks.append(
            _expect(
                gxe.ExpectColumnValuesToBeNull,
                v="variety",
                check="columns_extra",
                critical=True,
                record_level=False,
                notes="no columns besides the timestamp, target and features",
                says="extra columns: {value} (allow_extra_columns is false; renamed?)",
                observe="extra_columns",
                column="extra_columns",
            )
        )
    if max_age_s is not None:
        checks.append(
            _expect(
                gxe.ExpectColumnValuesToBeBetween,
                v="velocity",
                check="freshness",
                critical=True,
                record_level=False,
                notes=f"the newest row is at most {_duration(max_age_s)} old",
                says=(
                    f"the newest row ({{rec[newest]}}) is {{value}} old, over "
                    f"max_age={_duration(max_age_s)}"
                ),
                observe="age_s",
                format="duration",
                column="age_s",
                max_value=max_age_s,
            )
        )
    return _suite(f"{name}_summary", checks)


def drift_suite(name: str, max_js: float, max_linf: float) -> gx.ExpectationSuite:
    """Distribution drift against the last accepted version, one row per measure."""
    import great_expectations.expectations as gxe

    return _suite(
        f"{name}_drift",
        [
            _expect(
                gxe.ExpectColumnValuesToBeBetween,
                v="variety",
                check="drift_js",
                critical=True,
                record_level=False,
                notes=(
                    f"Jensen-Shannon divergence (base 2) of each numeric measure's histogram vs "
                    f"the last accepted version at most {max_js:g}"
                ),
                says=(
                    f'"{{key}}" drifted: Jensen-Shannon divergence {{value}} vs the last accepted '
                    f"version, over max_drift_js={max_js:g}"
                ),
                column="js",
                max_value=max_js,
            ),
            _expect(
                gxe.ExpectColumnValuesToBeBetween,
                v="variety",
                check="drift_linf",
                critical=True,
                record_level=False,
                notes=(
                    f"L-infinity distance of each categorical measure's frequencies vs the last "
                    f"accepted version at most {max_linf:g}"
                ),
                says=(
                    f'"{{key}}" frequencies drifted: L-infinity {{value}} vs the last accepted '
                    f"version, over max_drift_linf={max_linf:g}"
                ),
                column="linf",
                max_value=max_linf,
            ),
        ],
    )


# --- images: the profile table (one row per image) ------------------------------------------


def image_suite(
    settings: ImageQuality, conversion: ImagePrepare | None = None
) -> gx.ExpectationSuite:
    """Expectations on the image profile (`profile.profile_images`), keyed by record_id.

    With a conversion (`prepare.images.size` / `.mode`), the shape checks it covers ask that
    an image can be converted, not that it has the target shape already.
    """
    c = conversion or ImagePrepare()
    return _suite(
        "images",
        _image_variety(settings, c) + _image_validity(settings, c),
    )


def _image_variety(s: ImageQuality, c: ImagePrepare) -> list[Any]:
    import great_expectations.expectations as gxe

    shape = [_shape_check(*args) for args in _shape_checks(s, c)]
    return (
        [
            _expect(
                gxe.ExpectTableColumnsToMatchSet,
                v="variety",
                check="columns",
                critical=True,
                record_level=False,
                notes="the profile has every column of profile.PROFILE_COLUMNS",
                says="profile columns missing: {missing} (columns seen: {columns})",
                column_set=list(PROFILE_COLUMNS),
                exact_match=False,
            )
        ]
        + [
            _expect(
                gxe.ExpectColumnValuesToBeInTypeList,
                v="variety",
                check=f"type_{column}",
                critical=True,
                record_level=False,
                notes=f"column {column!r} has type {types[0]}",
                says=f'column "{{column}}" has type {{dtype}}, expected {types[0]}',
                column=column,
                type_list=types,
            )
            for column, types in _PROFILE_TYPES.items()
        ]
        + shape
    )


def _shape_check(check: str, column: str, expected: Any, notes: str, says: str) -> Any:
    """A record-level variety check: `expected` is a value, a list of values or a
    (min, max) range (a tuple; None for no bound)."""
    import great_expectations.expectations as gxe

    common = dict(v="variety", check=check, critical=False, record_level=True, column=column)
    if isinstance(expected, tuple):
        low, high = expected
        return _expect(
            gxe.ExpectColumnValuesToBeBetween,
            notes=notes,
            says=says,
            min_value=low,
            max_value=high,
            **common,
        )
    values = expected if isinstance(expected, list) else [expected]
    return _expect(
        gxe.ExpectColumnValuesToBeInSet, notes=notes, says=says, value_set=values, **common
    )


def _shape_checks(s: ImageQuality, c: ImagePrepare) -> list[tuple[str, str, Any, str, str]]:
    """(check, column, expected, notes, says) of the height, width, mode, channels and
    bit-depth checks: the target shape, or what can be converted to it."""
    from bigdeep.data.images import CONVERTIBLE_MODES

    channels, bit_depth = mode_bands(s.mode)
    out = []
    if c.size is None:
        out += [
            (
                "height",
                "height",
                s.height,
                f"every image is {s.height} pixels high",
                f'record "{{key}}" is {{value}} pixels high, expected {s.height}',
            ),
            (
                "width",
                "width",
                s.width,
                f"every image is {s.width} pixels wide",
                f'record "{{key}}" is {{value}} pixels wide, expected {s.width}',
            ),
        ]
    else:
        target = f"{c.size[0]}x{c.size[1]}"
        out += [
            (
                side,
                side,
                (s.min_side, None),
                f"every image is at least min_side={s.min_side} pixels {word} (resized to {target})",
                f'record "{{key}}" is {{value}} pixels {word}, below min_side={s.min_side}: '
                f"too small to resize to {target}",
            )
            for side, word in (("height", "high"), ("width", "wide"))
        ]
    if c.mode is None:
        out += [
            (
                "mode",
                "mode",
                s.mode,
                f"every image has PIL mode {s.mode!r}",
                f'record "{{key}}" has mode "{{value}}", expected "{s.mode}"',
            ),
            (
                "channels",
                "channels",
                channels,
                f"every image has {channels} channel(s) (mode {s.mode})",
                f'record "{{key}}" has {{value}} channel(s), expected {channels}',
            ),
            (
                "bit_depth",
                "bit_depth",
                bit_depth,
                f"every image has {bit_depth}-bit samples (mode {s.mode})",
                f'record "{{key}}" is {{value}}-bit, expected {bit_depth}-bit',
            ),
        ]
    else:
        modes = ", ".join(CONVERTIBLE_MODES)
        out += [
            (
                "mode",
                "mode",
                list(CONVERTIBLE_MODES),
                f"every image has a mode that converts to {c.mode} ({modes})",
                f'record "{{key}}" has mode "{{value}}", which does not convert to {c.mode} '
                f"faithfully (convertible: {modes})",
            ),
            (
                "channels",
                "channels",
                (1, 4),
                f"every image has 1 to 4 channels (converted to {c.mode})",
                'record "{key}" has {value} channel(s), expected 1 to 4',
            ),
            (
                "bit_depth",
                "bit_depth",
                [1, 8],
                f"every image has 1- or 8-bit samples (converted to {c.mode})",
                'record "{key}" is {value}-bit, expected 1- or 8-bit',
            ),
        ]
    return out


def _image_validity(s: ImageQuality, c: ImagePrepare) -> list[Any]:
    import great_expectations.expectations as gxe

    classes = ", ".join(s.classes)
    top = 255 if c.mode else 2 ** mode_bands(s.mode)[1] - 1  # converted modes are 8-bit
    return [
        _expect(
            gxe.ExpectColumnValuesToBeInSet,
            v="validity",
            check="decodes",
            critical=False,
            record_level=True,
            notes="every image decodes with PIL (the profile's `error` says why not)",
            says='record "{key}" does not decode ({value})',
            observed_column="error",
            column="decodes",
            value_set=[True],
        ),
        _expect(
            gxe.ExpectColumnValuesToNotBeNull,
            v="validity",
            check="label_present",
            critical=False,
            record_level=True,
            notes="every image has a label",
            says='record "{key}" has no label',
            column="label",
        ),
        _expect(
            gxe.ExpectColumnValuesToBeInSet,
            v="validity",
            check="label_in_classes",
            critical=False,
            record_level=True,
            notes=f"every label is one of the classes: {classes}",
            says=f'record "{{key}}" has label {{value_repr}}, not one of the classes {classes} '
            "(a folder source's labels are its subfolder names: if this is a class, list it in "
            "quality.images.classes in params.yaml)",
            column="label",
            value_set=list(s.classes),
        ),
        _expect(
            gxe.ExpectColumnValuesToBeBetween,
            v="validity",
            check="pixel_min",
            critical=False,
            record_level=True,
            notes="no pixel below 0",
            says='record "{key}" has pixel values below 0 (min {value})',
            column="pixel_min",
            min_value=0,
        ),
        _expect(
            gxe.ExpectColumnValuesToBeBetween,
            v="validity",
            check="pixel_max",
            critical=False,
            record_level=True,
            notes=f"no pixel above {top} (mode {c.mode or s.mode})",
            says=f'record "{{key}}" has pixel values above {top} (max {{value}})',
            column="pixel_max",
            max_value=top,
        ),
        _expect(
            gxe.ExpectColumnValuesToBeNull,
            v="validity",
            check="duplicate",
            critical=False,
            record_level=True,
            notes="no exact duplicates: each later copy of the same bytes (sha256) is flagged",
            says='record "{key}" is an exact duplicate of "{value}" (same sha256)',
            column="duplicate_of",
        ),
    ]


# --- images: the per-class count table (columns class, records, imbalance) ------------------


def class_count_suite(settings: ImageQuality) -> gx.ExpectationSuite:
    """Expectations on the per-class counts (`gate.class_counts`), keyed by class."""
    import great_expectations.expectations as gxe

    s = settings
    return _suite(
        "images_classes",
        [
            # A different expectation from class_count: GX drops an expectation that is
            # equal to one already in the suite, as this would be when min_per_class = 1.
            _expect(
                gxe.ExpectColumnValuesToNotBeInSet,
                v="variety",
                check="class_present",
                critical=True,
                record_level=False,
                notes="every class in the settings has at least one record",
                says='class "{key}" has no records (every class must be present)',
                column="records",
                value_set=[0],
            ),
            _expect(
                gxe.ExpectColumnValuesToBeBetween,
                v="volume",
                check="class_count",
                critical=True,
                record_level=False,
                notes=f"every class has at least min_per_class={s.min_per_class} records",
                says=f'class "{{key}}" has {{value}} records, fewer than min_per_class={s.min_per_class}',
                column="records",
                min_value=s.min_per_class,
            ),
            _expect(
                gxe.ExpectColumnValuesToBeBetween,
                v="variety",
                check="class_balance",
                critical=True,
                record_level=False,
                notes=(
                    f"the largest class has at most max_imbalance_ratio={s.max_imbalance_ratio:g} "
                    "times the records of any other"
                ),
                says=(
                    'class "{key}" has {rec[records]} records, {value} times fewer than the '
                    f"largest class (max_imbalance_ratio={s.max_imbalance_ratio:g})"
                ),
                column="imbalance",
                max_value=s.max_imbalance_ratio,
            ),
        ],
    )


# --- series: the raw rows plus the columns derived from the timeline ------------------------


def series_suite(
    data: SeriesData,
    settings: SeriesQuality,
    timeline: Timeline | None = None,
    numeric: frozenset[str] | None = None,
    ranges: dict[str, ValueRange] | None = None,
) -> gx.ExpectationSuite:
    """Expectations on the raw series rows (with `timeline.DERIVED` columns), keyed by `row`.

    numeric: the value columns that hold numbers in the chunk to validate (their finite
    check is a range check; only they get the bounds and outlier checks); None: all of them.
    ranges: per value column, its bounds from params.yaml and its robust range (ranges.py)."""
    timeline = timeline or Timeline()
    if numeric is None:
        numeric = frozenset([data.target, *data.features])
    return _suite(
        "series",
        _series_variety(data)
        + _series_validity(data, settings, timeline, numeric, ranges or {})
        + _series_velocity(data, settings, timeline),
    )


def _series_variety(d: SeriesData) -> list[Any]:
    import great_expectations.expectations as gxe

    values = [d.target, *d.features]
    return (
        _columns_exist(["row", d.timestamp, *values])
        + [
            _expect(
                gxe.ExpectColumnValuesToBeOfType,
                v="variety",
                check="type_timestamp",
                critical=True,
                record_level=False,
                notes="the timestamp column holds timezone-aware timestamps (UTC at ingest)",
                says='column "{column}" has type {dtype}, expected UTC timestamps',
                column=d.timestamp,
                type_="Timestamp",  # the scalar type of datetime64[*, UTC]
            )
        ]
        + [
            _expect(
                gxe.ExpectColumnValuesToBeInTypeList,
                v="variety",
                check=f"type_{c}",
                critical=True,
                record_level=False,
                notes=f"column {c!r} is numeric",
                says='column "{column}" has type {dtype}, not numeric',
                column=c,
                type_list=NUMERIC_TYPES,
            )
            for c in values
        ]
    )


def _series_validity(
    d: SeriesData,
    s: SeriesQuality,
    t: Timeline,
    numeric: frozenset[str],
    ranges: dict[str, ValueRange],
) -> list[Any]:
    import great_expectations.expectations as gxe

    ts = d.timestamp
    freq = t.freq or "?"
    how = "the most common step" if t.freq_inferred else "quality.series.freq"
    timestamps = [
        _expect(
            gxe.ExpectColumnValuesToNotBeNull,
            v="validity",
            check="timestamp_present",
            critical=False,
            record_level=True,
            notes="every row has a timestamp (null when ingest could not parse it)",
            says="row {key} {column} is missing or did not parse",
            column=ts,
        ),
        _expect(
            gxe.ExpectColumnValuesToBeInSet,
            v="validity",
            check="timestamp_unique",
            critical=False,
            record_level=True,
            notes="no two rows share a timestamp",
            says=f"row {{key}} ({{ts}}) {ts} is duplicated ({{value}} rows share it)",
            column="ts_repeats",
            value_set=[1],
        ),
        _expect(
            gxe.ExpectColumnValuesToBeBetween,
            v="validity",
            check="timestamp_increasing",
            critical=False,
            record_level=True,
            notes="timestamps strictly increase from row to row",
            says=f"row {{key}} ({{ts}}) {ts} is not after the row before it",
            column="ts_after_previous_s",
            min_value=0,
            strict_min=True,
        ),
        _expect(
            gxe.ExpectColumnValuesToBeInSet,
            v="validity",
            check="timestamp_zone",
            critical=False,
            record_level=True,
            notes=(
                "one timezone convention: every timestamp carries a UTC offset, or none does "
                f"(most rows: {t.zone_kind or '?'}; zones seen: {_zones(t)})"
            ),
            says=(
                f'row {{key}} ({{ts}}) {ts} is written "{{value}}", unlike most rows '
                f"({t.zone_kind or '?'}; zones seen: {_zones(t)})"
            ),
            observed_column="timestamp_zone",
            column="ts_zone_offset",
            value_set=[t.zone_kind != "naive"],
        ),
        _expect(
            gxe.ExpectColumnValuesToBeInSet,
            v="validity",
            check="timestamp_regular",
            critical=False,
            record_level=True,
            notes=f"every timestamp is a whole number of {freq} steps ({how}) from the others",
            says=f"row {{key}} ({{ts}}) {ts} is off the regular {freq} grid ({how})",
            column="ts_on_grid",
            value_set=[True],
        ),
    ]
    values = []
    for c in [d.target, *d.features]:
        values += [
            _expect(
                gxe.ExpectColumnValuesToNotBeNull,
                v="validity",
                check=f"{c}_present",
                critical=False,
                record_level=True,
                notes=f"no missing {c} (NaN or empty)",
                says="row {key} ({ts}) {column} is NaN",
                column=c,
            ),
            _finite(c, c in numeric),
        ]
        if c in numeric and c in ranges:  # a text chunk fails its type check instead
            values += _in_range(ranges[c], s)
    return timestamps + values


def _finite(c: str, numeric: bool) -> Any:
    """`<c>_finite`: on a numeric column a range check (inf and -inf are outside it); on any
    other a regex on the text, which also rejects words. The same check either way: the
    regex costs ~2 us a row (GX matches the text of every value), the range check ~0."""
    import great_expectations.expectations as gxe

    kind, kwargs = (
        (gxe.ExpectColumnValuesToBeBetween, {"min_value": -FLOAT_MAX, "max_value": FLOAT_MAX})
        if numeric
        else (gxe.ExpectColumnValuesToMatchRegex, {"regex": FINITE_NUMBER})
    )
    return _expect(
        kind,
        v="validity",
        check=f"{c}_finite",
        critical=False,
        record_level=True,
        notes=f"every {c} is a finite number (no inf, -inf or text)",
        says="row {key} ({ts}) {column} is {value_repr}, not a finite number",
        column=c,
        **kwargs,
    )


def _in_range(r: ValueRange, s: SeriesQuality) -> list[Any]:
    """`<c>_bounds`: within quality.series.bounds; `<c>_outlier`: within the robust range.
    Record-level: a row outside is quarantined, and max_quarantine_fraction decides."""
    import great_expectations.expectations as gxe

    c, checks = r.column, []
    key = f"quality.series.bounds.{c}"
    name = c.replace("{", "{{").replace("}", "}}")  # in a sentence the gate formats
    key_said = f"quality.series.bounds.{name}"
    # They read `<c> (finite)`: inf and -inf are `<c>_finite`'s to name, NaN `<c>_present`'s.
    finite = finite_column(c)
    if r.bounded:
        bounds = f"[{_number(r.bound_low)}, {_number(r.bound_high)}]"
        checks.append(
            _expect(
                gxe.ExpectColumnValuesToBeBetween,
                v="validity",
                check=f"{c}_bounds",
                critical=False,
                record_level=True,
                notes=f"every {c} is within {bounds} ({key} in params.yaml)",
                says=(
                    f"row {{key}} ({{ts}}) {name} is {{value}}, outside {key_said} = {bounds}: "
                    f"correct the row at the source, or change the bound in params.yaml"
                ),
                column=finite,
                min_value=r.bound_low,
                max_value=r.bound_high,
            )
        )
    if r.robust:
        accepted = f"{_number(r.low, '-inf')} .. {_number(r.high, 'inf')}"
        how = (
            f"median {_number(r.median)} of {r.source} +- {s.max_robust_z:g} robust deviations, "
            "quality.series.max_robust_z"
        )
        checks.append(
            _expect(
                gxe.ExpectColumnValuesToBeBetween,
                v="validity",
                check=f"{c}_outlier",
                critical=False,
                record_level=True,
                notes=f"every {c} is within {accepted} ({how})",
                says=(
                    f"row {{key}} ({{ts}}) {name} is {{value}}, far outside the accepted range "
                    f"{accepted} ({how}): "
                    f"correct the row at the source; if the value is real, set {key_said}: [low, high] "
                    "in params.yaml (it replaces this range) or raise max_robust_z"
                ),
                column=finite,
                min_value=r.low,
                max_value=r.high,
            )
        )
    return checks


def _number(value: float | None, none: str = "null") -> str:
    return none if value is None else f"{value:.6g}"


def _series_velocity(d: SeriesData, s: SeriesQuality, t: Timeline) -> list[Any]:
    import great_expectations.expectations as gxe

    if t.gap_limit_us is None:  # fewer than two timestamps and no max_gap: no step to judge
        return []
    limit = t.gap_limit_us / 1e6
    why = f"max_gap={s.max_gap}" if s.max_gap else f"one {t.freq} step"
    return [
        _expect(
            gxe.ExpectColumnValuesToBeBetween,
            v="velocity",
            check="gap",
            critical=True,
            record_level=False,  # the rows are missing, not bad: nothing to quarantine
            notes=f"no stretch of time without rows longer than {why}",
            says=f"gap of {{value}} from {{start}} to {{ts}} (before row {{key}}), over {why}",
            format="duration",
            column="ts_gap_s",
            max_value=limit,
        )
    ]


def _zones(t: Timeline) -> str:
    shown = sorted(t.zones.items(), key=lambda kv: -kv[1])[:5]
    return ", ".join(f"{z} ({n})" for z, n in shown) or "none"


def _duration(seconds: float) -> str:
    from bigdeep.quality.timeline import duration_text

    return duration_text(seconds)
