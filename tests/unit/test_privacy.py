"""The personal-data detectors and masks of quality/privacy.py, on values written here."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from bigdeep.quality.privacy import (
    Findings,
    card_issuer,
    find,
    iban_ok,
    luhn_ok,
    mask_card,
    mask_email,
    mask_iban,
    mask_phone,
    mask_text,
    scan_column,
)


def kinds(text: str) -> list[str]:
    return [kind for kind, _, _ in find(text)]


# --- true positives, in their usual formats --------------------------------------------------

FOUND = [
    ("jane.doe@example.org", "email"),
    ("write to J.Smith+news@mail.example.co.uk.", "email"),
    ("x_1@sub-domain.example.museum", "email"),
    ("+61 412 345 678", "phone"),
    ("+61412345678", "phone"),
    ("+44 (0)20 7946 0958", "phone"),
    ("+1-212-555-0123", "phone"),
    ("+33 1 23 45 67 89", "phone"),
    ("0044 20 7946 0958", "phone"),
    ("(212) 555-0123", "phone"),
    ("212.555.0123", "phone"),
    ("0412 345 678", "phone"),
    ("(03) 9876 5432", "phone"),
    ("020 7946 0958", "phone"),
    ("call 0412-345-678, thanks", "phone"),
    ("4111 1111 1111 1111", "card"),  # Visa
    ("4111-1111-1111-1111", "card"),
    ("4111111111111111", "card"),
    ("5555 5555 5555 4444", "card"),  # Mastercard
    ("2223 0031 2200 3222", "card"),  # Mastercard 2-series
    ("378282246310005", "card"),  # American Express
    ("3782 822463 10005", "card"),
    ("6011 1111 1111 1117", "card"),  # Discover
    ("3530111333300000", "card"),  # JCB
    ("DE89 3704 0044 0532 0130 00", "iban"),
    ("DE89370400440532013000", "iban"),
    ("GB82 WEST 1234 5698 7654 32", "iban"),
    ("FR14 2004 1010 0505 0001 3M02 606", "iban"),
    ("NO93 8601 1117 947", "iban"),  # the shortest, 15
    ("pay to GB82WEST12345698765432 today", "iban"),
]


@pytest.mark.parametrize(("text", "kind"), FOUND)
def test_personal_data_is_found(text: str, kind: str):
    assert kinds(text) == [kind]


def test_several_in_one_text_each_once_in_order():
    text = "ann@example.org, +61 412 345 678, 4111 1111 1111 1111 and DE89 3704 0044 0532 0130 00"
    assert kinds(text) == ["email", "phone", "card", "iban"]
    assert find(text, ["phone"]) == [("phone", 17, 32)]  # only the types asked for


# --- true negatives: numbers in data columns that are not personal data ----------------------

NOT_FOUND = [
    "2014-01-01 00:30:00",  # timestamp
    "2014-01-01T00:30:00+10:00",  # ISO timestamp with an offset
    "2014-01-01 00:30:00.000000+1000",
    "2014-01-01",  # ISO date
    "01/02/2014",
    "01.02.2014 12:30",
    "12:30:45.123456",
    "20140101 003000",
    "4123.456789",  # decimals
    "3.14159265358979",
    "1,234,567.89",
    "1e10",
    "-37.8136, 144.9631",  # coordinates
    "+37.813612, +144.963112",
    "lat -37.81, lon 144.96",
    "192.168.1.1",  # IP addresses
    "010.001.001.001",
    "12345678901",  # plain long integers
    "00123456789",
    "1388534400000",  # epoch milliseconds
    "1388534400000000000",  # epoch nanoseconds
    "ORD-2024-000123",  # order and invoice numbers
    "INV 2024 0001 2345",
    "ID 0000123456",
    "1234-5678-9012",
    "+10:00",
    "v1.2.3",
    "4111 1111 1111 1112",  # a card's shape, wrong Luhn digit
    "1234 5678 9012 3452",  # Luhn right, no issuer starts with 1
    "4111 1111-1111 1111",  # mixed separators
    "DE89 3704 0044 0532 0130 01",  # an IBAN's shape, wrong mod-97 (nor a phone inside it)
    "DE89 3704 0044 0532 0130",  # too short for DE
    "XX89 3704 0044 0532 0130 00",  # no such country
    "user at example dot org",
    "Holiday",
]


@pytest.mark.parametrize("text", NOT_FOUND)
def test_lookalikes_are_not_personal_data(text: str):
    assert find(text) == []


# --- checksums -------------------------------------------------------------------------------


def test_luhn():
    assert luhn_ok("4111111111111111") and luhn_ok("79927398713")
    assert not luhn_ok("4111111111111112") and not luhn_ok("79927398710")
    # every single-digit change of a valid number breaks the check
    number = "5555555555554444"
    for i in range(len(number)):
        for d in "0123456789":
            if d != number[i]:
                assert not luhn_ok(number[:i] + d + number[i + 1 :])


def test_card_issuer_by_prefix_and_length():
    assert card_issuer("4111111111111111") == "visa"
    assert card_issuer("5555555555554444") == "mastercard"
    assert card_issuer("378282246310005") == "amex"
    assert card_issuer("37828224631000") is None  # amex is 15 digits
    assert card_issuer("1234567890123452") is None


def test_iban_mod_97_and_country_length():
    assert iban_ok("DE89 3704 0044 0532 0130 00") and iban_ok("gb82west12345698765432")
    assert not iban_ok("DE88 3704 0044 0532 0130 00")  # check digits
    assert not iban_ok("DE89 3704 0044 0532 0130 000")  # length for DE is 22
    assert not iban_ok("ZZ89 3704 0044 0532 0130 00")


# --- masks -----------------------------------------------------------------------------------


def test_masks_keep_the_shape_never_the_value():
    assert mask_email("jane.doe@example.org") == "j***@e***.org"
    assert mask_email("j.smith@mail.example.co.uk") == "j***@m***.uk"
    assert mask_card("4111 1111 1111 1234") == "**** **** **** 1234"
    assert mask_card("4111111111111234") == "**** **** **** 1234"
    assert mask_card("378282246310005") == "*** **** **** 0005"
    assert mask_iban("DE89 3704 0044 0532 0134 56") == "DE** **** **** **** **34 56"
    assert mask_phone("+61 412 345 678") == "+61 *** *** 678"
    assert mask_phone("(03) 9876 5432") == "(**) **** *432"
    assert mask_phone("+61412345678") == "+61******678"


def test_mask_text_masks_every_find_and_keeps_the_rest():
    text = "ann@example.org rang from +61 412 345 678 about order ORD-2024-000123"
    assert mask_text(text) == "a***@e***.org rang from +61 *** *** 678 about order ORD-2024-000123"
    assert mask_text("nothing here 2014-01-01") == "nothing here 2014-01-01"


# --- columns and datasets --------------------------------------------------------------------


def test_scan_column_finds_rows_masks_and_leaves_the_input_alone():
    values = ["ok", None, "ann@example.org", "+61 412 345 678", "ann@example.org", "2014-01-01"]
    column = pd.Series(values, dtype="str")
    scan = scan_column(column)
    assert scan.rows == {"email": [2, 4], "iban": [], "card": [], "phone": [3]}
    assert scan.examples == {"email": "a***@e***.org", "phone": "+61 *** *** 678"}
    assert scan.redacted.tolist()[2:] == [
        "a***@e***.org",
        "+61 *** *** 678",
        "a***@e***.org",
        "2014-01-01",
    ]
    assert pd.isna(scan.redacted.iloc[1]) and scan.redacted.dtype == column.dtype
    assert column.iloc[2] == "ann@example.org"  # the input is not changed


def test_scan_column_reads_objects_as_text():
    column = pd.Series([12, "x@y.org", None, 2.5, "4111111111111111"], dtype=object)
    scan = scan_column(column)
    assert scan.rows["email"] == [1] and scan.rows["card"] == [4]
    assert scan.redacted.tolist()[:2] == [12, "x***@y***.org"]


def test_findings_over_chunks_count_list_and_cap_rows():
    findings = Findings(["email"], skip=["timestamp"])
    for start in (1, 101):  # two chunks of 100 rows, row numbers from the source
        n = 100
        note = np.where(np.arange(n) % 4 == 0, "mail ann@example.org", "ok")
        frame = pd.DataFrame({"row": np.arange(start, start + n), "note": note})
        out = findings.scan(frame)
        assert not out["note"].str.contains("ann@example.org").any()
        assert frame["note"].str.contains("ann@example.org").any()  # a copy was masked
    assert findings.rows("email", "note") == 50
    section = findings.report("quarantine")["found"]["email"]["note"]
    assert section["first_rows"] == list(range(1, 80, 4))  # the first 20, source row numbers
    assert findings.listed("email", "note").endswith("77, ... 30 more")
    records = findings.records()
    assert len(records) == 50 and set(records["observed"]) == {"mail a***@e***.org"}
    assert records["record"].tolist()[-1] == "197"


def test_a_column_of_a_million_rows_is_scanned_without_python_per_row():
    """Speed is the benchmark's (tests/benchmarks/bench_privacy.py); here: the prefilter
    leaves the rows with nothing like personal data alone, so the result is right at scale."""
    rng = np.random.default_rng(0)
    words = np.array(["ok", "late", "ORD-2024-000123", "2014-01-01 00:30", "3.25"])
    column = pd.Series(words[rng.integers(0, len(words), 1_000_000)], dtype="str")
    column.iloc[::100_000] = "card 4111 1111 1111 1111"
    scan = scan_column(column)
    assert scan.rows["card"] == list(range(0, 1_000_000, 100_000))
    assert not scan.redacted.str.contains("4111 1111 1111 1111").any()
