"""Personal data in a series source, through the real CLI in-process (`bigdeep ingest`,
`validate`, `prepare`): found per type and column with its row numbers, acted on by
`quality.series.privacy.policy`, and never written in clear by anything the pipeline makes.

The source (a CSV or JSON lines file made here) and its raw copy (data/raw) hold the values
in clear by design: they are what the user gave. Every other file, and stdout, stderr and a
DEBUG log, is searched for each planted value, as written and as bare digits.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from bigdeep.cli import main

ROWS = 48  # half-hourly, one day
# (row, column, type, value): rows are the CSV's data rows, 1-based
PLANTED = [
    (3, "note", "email", "jane.doe@example.org"),
    (5, "note", "phone", "+61 412 345 678"),
    (8, "note", "card", "4111 1111 1111 1111"),
    (12, "note", "iban", "DE89 3704 0044 0532 0130 00"),
    (20, "customer", "email", "bob.smith@mail.example.com"),
    (21, "customer", "phone", "(03) 9876 5432"),
    (30, "note", "email", "carol@example.net"),  # and row 30's Demand is not a number
]
# text that looks like numbers but is not personal data: none of it may be found
DISTRACTORS = ["2014-01-01 00:30:00", "4123.456789", "-37.8136, 144.9631", "192.168.1.1",
               "ORD-2024-000123", "12345678901", "2014-01-01T00:30:00+10:00", "4111 1111 1111 1112",
               "DE89 3704 0044 0532 0130 01", "ok"]  # fmt: skip


def source_frame() -> pd.DataFrame:
    frame = pd.DataFrame(
        {
            "Time": pd.date_range("2024-01-01", periods=ROWS, freq="30min").strftime(
                "%Y-%m-%dT%H:%M:%SZ"
            ),
            "Demand": np.linspace(4000.0, 5000.0, ROWS).round(1).astype(str),
            "Temperature": np.linspace(10.0, 20.0, ROWS).round(2),
            "note": [DISTRACTORS[i % len(DISTRACTORS)] for i in range(ROWS)],
            "customer": ["n/a"] * ROWS,
        }
    )
    for row, column, _, value in PLANTED:
        frame.loc[row - 1, column] = f"contact {value} please"
    frame.loc[30 - 1, "Demand"] = "n/a"  # quarantined by validity: its copy must be masked
    return frame


def clear_forms() -> list[str]:
    """Each planted value as written, and its digits (and letters) without separators."""
    forms = []
    for _, _, kind, value in PLANTED:
        forms.append(value)
        if kind != "email":
            forms.append(re.sub(r"[^0-9A-Z]", "", value))
    return forms


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "src").mkdir()
    source_frame().to_csv(tmp_path / "src" / "series.csv", index=False)
    return tmp_path


def params(root: Path, policy: str, source: str = "csv:src/series.csv") -> None:
    data = {"series": {"source": source, "last_days": None}}
    quality = {
        "series": {
            "max_quarantine_fraction": 0.05,  # row 30's bad Demand
            "max_gap": "1h",
            "privacy": {"policy": policy, "types": ["email", "phone", "card", "iban"]},
        }
    }
    (root / "params.yaml").write_text(yaml.safe_dump({"data": data, "quality": quality}))


def run(
    args: list[str], capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> tuple[int, str]:
    """A CLI command with every logger at DEBUG; its stdout + stderr + log."""
    capsys.readouterr()
    with caplog.at_level(logging.DEBUG):
        code = main(args)
    captured = capsys.readouterr()
    return code, captured.out + captured.err + caplog.text


def validate(capsys, caplog) -> tuple[int, str]:
    return run(
        ["validate", "series", "--raw", "data/raw/series", "--report", "reports/series.json"]
        + ["--quarantine", "data/quarantine/series", "--reference", "data/reference/series"],
        capsys,
        caplog,
    )


def ingest_and_validate(root: Path, policy: str, capsys, caplog) -> tuple[int, str]:
    params(root, policy)
    code, ingest_out = run(["ingest", "series", "--out", "data/raw/series"], capsys, caplog)
    assert code == 0, ingest_out
    code, out = validate(capsys, caplog)
    return code, ingest_out + out


def file_text(path: Path) -> str:
    if path.suffix == ".parquet":
        return pd.read_parquet(path).to_csv(index=False)
    return path.read_bytes().decode("utf-8", errors="replace")


def clear_values(root: Path, printed: str) -> list[str]:
    """'<where>: <value>' for every planted value found in clear outside the source and raw."""
    found = []
    places = {"stdout/stderr/log": printed}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if path.is_file() and rel.parts[0] != "src" and rel.parts[:2] != ("data", "raw"):
            places[str(rel)] = file_text(path)
    for where, text in places.items():
        found += [f"{where}: {v}" for v in clear_forms() if v in text]
    return found


def report(root: Path) -> dict:
    return json.loads((root / "reports/series.json").read_text())


# --- the policies ----------------------------------------------------------------------------


def test_quarantine_masks_lists_and_trains_on_every_row(project, capsys, caplog):
    code, printed = ingest_and_validate(project, "quarantine", capsys, caplog)
    assert code == 0, printed
    r = report(project)
    privacy = r["privacy"]
    assert privacy["policy"] == "quarantine"
    assert privacy["columns_scanned"] == ["note", "customer"]  # Demand is text here too: no
    found = {
        (kind, column, tuple(f["first_rows"]), f["rows"])
        for kind, columns in privacy["found"].items()
        for column, f in columns.items()
    }
    assert found == {
        ("email", "note", (3, 30), 2),
        ("phone", "note", (5,), 1),
        ("card", "note", (8,), 1),
        ("iban", "note", (12,), 1),
        ("email", "customer", (20,), 1),
        ("phone", "customer", (21,), 1),
    }  # none of the distractors (dates, decimals, IPs, coordinates, bad checksums) counted
    assert privacy["found"]["iban"]["note"]["example"] == "DE** **** **** **** **30 00"
    assert privacy["found"]["card"]["note"]["example"] == "**** **** **** 1111"
    assert r["by_v"]["privacy"] == {"passed": 0, "failed": 4}
    assert r["passed"] and r["quarantined"] == 1  # only row 30 (its Demand), not the others
    assert "email in note: 2 (rows 3, 30)" in printed and "privacy   email in customer" in printed

    quarantine = project / "data/quarantine/series"
    listed = pd.read_parquet(quarantine / "privacy.parquet")
    rows = zip(listed["record"].astype(int), listed["check"], listed["column"], strict=True)
    assert sorted(rows) == sorted((r, f"privacy_{kind}", c) for r, c, kind, _ in PLANTED)
    assert "contact j***@e***.org please" in set(listed["observed"])
    copies = pd.read_parquet(quarantine / "records.parquet")
    assert list(copies["row"]) == [30] and list(copies["note"]) == ["contact c***@e***.net please"]

    # the personal data never reaches data/processed; every row still trains (no hole)
    code, out = run(
        ["prepare", "series", "--raw", "data/raw/series", "--quarantine", str(quarantine)]
        + ["--out", "data/processed/series"],
        capsys,
        caplog,
    )
    assert code == 0, out
    processed = pd.read_parquet(project / "data/processed/series/series.parquet")
    assert len(processed) == ROWS // 2  # resampled to 1h: every hour present
    assert clear_values(project, printed + out) == []


def test_fail_fails_the_gate_and_names_type_column_rows(project, capsys, caplog):
    code, printed = ingest_and_validate(project, "fail", capsys, caplog)
    assert code == 3
    r = report(project)
    assert not r["passed"]
    sentences = [s for s in r["failures"] if "privacy.policy is fail" in s]
    assert len(sentences) == 6  # one per type and column: email and phone in two columns
    assert (
        'series: column "note": 2 row(s) hold an e-mail address, e.g. j***@e***.org (rows 3, 30)'
        in sentences[0]
    )
    assert "privacy privacy_email (fails the gate, 3 rows)" in printed
    assert not (project / "data/reference/series").exists() or not any(
        (project / "data/reference/series").iterdir()
    )  # nothing accepted
    assert clear_values(project, printed) == []


def test_off_passes_and_scans_nothing(project, capsys, caplog):
    code, printed = ingest_and_validate(project, "off", capsys, caplog)
    assert code == 0, printed
    r = report(project)
    assert r["privacy"] == {"policy": "off", "types": [], "columns_scanned": [], "found": {}}
    assert "privacy" not in r["by_v"]
    assert not (project / "data/quarantine/series/privacy.parquet").exists()
    assert "privacy   off" in printed
    # unscanned, values land as they are in the reference profile (a few-valued text column is
    # a category) and in the quarantine's copy of row 30: what the searches above would catch
    leaks = clear_values(project, printed)
    assert "data/quarantine/series/records.parquet: carol@example.net" in leaks, leaks
    assert any(
        w.startswith("data/reference/series/") and w.endswith(": bob.smith@mail.example.com")
        for w in leaks
    ), leaks


def test_a_jsonl_source_nested_field_is_scanned(project, capsys, caplog):
    lines = [
        {"Time": f"2024-01-01T{h:02d}:00Z", "Demand": 4000.0 + h, "Temperature": 10.0,
         "customer": {"email": "ann@example.org" if h == 4 else None, "tags": ["a"]}}
        for h in range(24)
    ]  # fmt: skip
    lines[7]["customer"]["tags"] = ["call +44 20 7946 0958"]  # a list: kept as JSON text
    (project / "src" / "series.jsonl").write_text("\n".join(json.dumps(x) for x in lines))
    params(project, "quarantine", source="jsonl:src/series.jsonl")
    code, printed = run(["ingest", "series", "--out", "data/raw/series"], capsys, caplog)
    assert code == 0, printed
    code, out = validate(capsys, caplog)
    assert code == 0, out
    found = report(project)["privacy"]["found"]
    assert found["email"]["customer.email"]["first_rows"] == [5]  # line 5
    assert found["phone"]["customer.tags"]["first_rows"] == [8]
    text = "".join(file_text(p) for p in (project / "reports").rglob("*") if p.is_file())
    assert "ann@example.org" not in text and "7946 0958" not in text + out + printed


def test_the_builtin_series_passes_with_privacy_on(tmp_path, monkeypatch, capsys, caplog):
    monkeypatch.chdir(tmp_path)
    data = {"series": {"source": "builtin:vic_elec", "last_days": 30}}
    quality = {"series": {"privacy": {"policy": "fail"}}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"data": data, "quality": quality}))
    code, out = run(["ingest", "series", "--out", "data/raw/series"], capsys, caplog)
    assert code == 0, out
    code, out = validate(capsys, caplog)
    assert code == 0, out
    privacy = report(tmp_path)["privacy"]
    assert privacy["policy"] == "fail" and privacy["found"] == {}
