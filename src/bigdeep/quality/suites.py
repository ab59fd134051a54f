"""Great Expectations suites, built from the settings, grouped by the V each check guards.

Every expectation carries `meta`:
  v             volume | variety | validity | velocity
  critical      a failure fails the gate on its own
  record_level  a failure names records; they are quarantined, and the gate fails when too
                many are (the fraction, not the expectation, decides)
  check         short name, unique in its suite; the `check` column of the quarantine
  says          the failure sentence, formatted by the gate with: key (record id / row),
                ts (the row's timestamp), column, value, value_repr (quoted if text),
                dtype, columns (seen), missing (columns)
  observed_column  (optional) the column whose value explains a record's failure

The suites are plain functions of the settings: build one, validate it with `gate.run_gate`.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any, Literal

from bigdeep.config import ImageQuality, SeriesData, SeriesQuality
from bigdeep.quality.profile import PROFILE_COLUMNS

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
    **kwargs: Any,
) -> Any:
    meta: dict[str, Any] = {
        "v": v,
        "critical": critical,
        "record_level": record_level,
        "check": check,
        "says": says,
    }
    if observed_column:
        meta["observed_column"] = observed_column
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
            says='column "{column}" missing (columns seen: {columns})',
            column=c,
        )
        for c in columns
    ]


def _row_count(min_rows: int, max_rows: int, noun: str) -> Any:
    import great_expectations.expectations as gxe

    return _expect(
        gxe.ExpectTableRowCountToBeBetween,
        v="volume",
        check="row_count",
        critical=True,
        record_level=False,
        notes=f"between {min_rows} and {max_rows} {noun}; an empty dataset fails",
        says=f"{{value}} {noun}, expected between {min_rows} and {max_rows}",
        min_value=min_rows,
        max_value=max_rows,
    )


# --- images: the profile table (one row per image) ------------------------------------------


def image_suite(settings: ImageQuality) -> gx.ExpectationSuite:
    """Expectations on the image profile (`profile.profile_images`), keyed by record_id."""
    return _suite(
        "images",
        _image_volume(settings)
        + _image_variety(settings)
        + _image_validity(settings)
        + _image_velocity(settings),
    )


def _image_volume(s: ImageQuality) -> list[Any]:
    return [_row_count(s.min_rows, s.max_rows, "records")]


def _image_variety(s: ImageQuality) -> list[Any]:
    import great_expectations.expectations as gxe

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
                check=f"type_{c}",
                critical=True,
                record_level=False,
                notes=f"column {c!r} has type {types[0]}",
                says=f'column "{{column}}" has type {{dtype}}, expected {types[0]}',
                column=c,
                type_list=types,
            )
            for c, types in _PROFILE_TYPES.items()
        ]
        + [
            _expect(
                gxe.ExpectColumnValuesToBeInSet,
                v="variety",
                check="height",
                critical=False,
                record_level=True,
                notes=f"every image is {s.height} pixels high",
                says=f'record "{{key}}" is {{value}} pixels high, expected {s.height}',
                column="height",
                value_set=[s.height],
            ),
            _expect(
                gxe.ExpectColumnValuesToBeInSet,
                v="variety",
                check="width",
                critical=False,
                record_level=True,
                notes=f"every image is {s.width} pixels wide",
                says=f'record "{{key}}" is {{value}} pixels wide, expected {s.width}',
                column="width",
                value_set=[s.width],
            ),
            _expect(
                gxe.ExpectColumnValuesToBeInSet,
                v="variety",
                check="mode",
                critical=False,
                record_level=True,
                notes=f"every image has PIL mode {s.mode!r}",
                says=f'record "{{key}}" has mode "{{value}}", expected "{s.mode}"',
                column="mode",
                value_set=[s.mode],
            ),
        ]
    )


def _image_validity(s: ImageQuality) -> list[Any]:
    import great_expectations.expectations as gxe

    classes = ", ".join(s.classes)
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
            says=f'record "{{key}}" has label {{value_repr}}, not one of the classes {classes}',
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
            notes="no pixel above 255 (8-bit)",
            says='record "{key}" has pixel values above 255 (max {value})',
            column="pixel_max",
            max_value=255,
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


def _image_velocity(s: ImageQuality) -> list[Any]:
    return []  # freshness and arrival rate come with issue 3


# --- images: the per-class count table (columns class, records) -----------------------------


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
        ],
    )


# --- series: the raw frame (row, timestamp, value columns) ----------------------------------


def series_suite(data: SeriesData, settings: SeriesQuality) -> gx.ExpectationSuite:
    """Expectations on the raw series frame, keyed by its 1-based `row`."""
    return _suite(
        "series",
        _series_volume(settings)
        + _series_variety(data)
        + _series_validity(data)
        + _series_velocity(data, settings),
    )


def _series_volume(s: SeriesQuality) -> list[Any]:
    return [_row_count(s.min_rows, s.max_rows, "rows")]


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


def _series_validity(d: SeriesData) -> list[Any]:
    import great_expectations.expectations as gxe

    ts = d.timestamp
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
            gxe.ExpectColumnValuesToBeUnique,
            v="validity",
            check="timestamp_unique",
            critical=False,
            record_level=True,
            notes="no two rows share a timestamp",
            says="row {key} ({ts}) {column} is duplicated",
            column=ts,
        ),
        _expect(
            gxe.ExpectColumnValuesToBeIncreasing,
            v="validity",
            check="timestamp_increasing",
            critical=False,
            record_level=True,
            notes="timestamps strictly increase from row to row",
            says="row {key} ({ts}) {column} is not after the row before it",
            column=ts,
            strictly=True,
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
            _expect(
                gxe.ExpectColumnValuesToMatchRegex,
                v="validity",
                check=f"{c}_finite",
                critical=False,
                record_level=True,
                notes=f"every {c} is a finite number (no inf, -inf or text)",
                says="row {key} ({ts}) {column} is {value_repr}, not a finite number",
                column=c,
                regex=FINITE_NUMBER,
            ),
        ]
    return timestamps + values


def _series_velocity(d: SeriesData, s: SeriesQuality) -> list[Any]:
    return []  # freshness of the newest row and gaps come with issue 3
