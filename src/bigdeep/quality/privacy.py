"""Personal data in text columns: e-mail addresses, phone numbers, payment cards, IBANs.

    found = scan_column(frame["note"], ("email", "phone", "card", "iban"))
    found.redacted        # the column with every match masked (the rows without one unchanged)
    found.rows["email"]   # positions (0-based) of the rows holding an e-mail address
    mask_text("write to jane.doe@example.org")   # 'write to j***@e***.org'

Each detector is a regular expression that finds candidates in free text and a check that
keeps only real ones: a card number needs an issuer prefix and a valid Luhn digit, an IBAN
its country's length and a mod-97 remainder of 1, a phone number a phone's shape (a leading
`+` or `00` and a country code, a national trunk `0` with groups, or the North American
3-3-4 groups) and 8 to 15 digits; dates, times, decimals, coordinates, IP addresses and
plain runs of digits are not phones. Masks keep the shape and a few characters, never the
value: `j***@e***.org`, `**** **** **** 1234`, `DE** **** **** **** **34 56`,
`+61 *** *** 678`.

Why standard-library `re` and checksums, not a library: none is in the environment (the
maintained ones are `phonenumbers` for phones, `python-stdnum`/`schwifty` for cards and
IBANs, Presidio on top of spaCy for all of them) and none may be added; the checks that
matter here are small and exact (Luhn, ISO 13616 mod-97 and lengths), and a phone number's
*shape* is what separates it from a timestamp or a decimal in a data column, which is what
these patterns test. `phonenumbers` would validate numbering plans per country; without it a
well-formed number from an unallocated range is still called a phone (masked, never missed).

Speed: a column is first narrowed with one cheap regular expression per kind, run by
pandas' string methods (Arrow's RE2 engine on Arrow-backed text), so only rows that hold an
`@`, a run of 7+ digits or two letters and two digits reach the Python patterns.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import pandas as pd

TYPES = ("email", "phone", "card", "iban")
NAMES = {"email": "an e-mail address", "phone": "a phone number",
         "card": "a payment card number", "iban": "an IBAN"}  # fmt: skip

# --- e-mail ----------------------------------------------------------------------------------

_EMAIL = re.compile(
    r"(?<![\w.%+-])([A-Za-z0-9][A-Za-z0-9._%+-]{0,63})@"
    r"((?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,24})(?![\w-])"
)


def mask_email(text: str) -> str:
    local, _, domain = text.partition("@")
    labels = domain.split(".")
    return f"{local[:1]}***@{labels[0][:1]}***.{labels[-1]}"


# --- payment cards ---------------------------------------------------------------------------

# 13-19 digits: in one block, in groups of four (the last shorter), or 4-6-5 / 4-6-4
# (American Express, Diners), split by one space or dash throughout.
_CARD = re.compile(
    r"(?<![\w.+-])(?:\d{13,19}|\d{4}([ -])\d{4}\1\d{4}\1\d{1,4}(?:\1\d{1,3})?"
    r"|\d{4}([ -])\d{6}\2\d{4,5})(?![\w]|[.,-]\d)"
)
_CARD_PREFILTER = r"\d{13}|\d{4}[ -]\d{4}[ -]\d{4}[ -]\d|\d{4}[ -]\d{6}[ -]\d{4}"


def luhn_ok(digits: str) -> bool:
    """The Luhn (mod 10) check digit of a card number is right."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def card_issuer(digits: str) -> str | None:
    """The card network the number's prefix and length belong to (None: no network)."""
    n, p2, p4, p6 = len(digits), int(digits[:2]), int(digits[:4]), int(digits[:6])
    if digits[0] == "4" and n in (13, 16, 19):
        return "visa"
    if (51 <= p2 <= 55 or 2221 <= p4 <= 2720) and n == 16:
        return "mastercard"
    if p2 in (34, 37) and n == 15:
        return "amex"
    if (p4 == 6011 or 644 <= p4 // 10 <= 649 or p2 == 65) and 16 <= n <= 19:
        return "discover"
    if 3528 <= p4 <= 3589 and 16 <= n <= 19:
        return "jcb"
    if (p2 in (36, 38, 39) or 300 <= p4 // 10 <= 305) and 14 <= n <= 19:
        return "diners"
    if p2 == 62 and 16 <= n <= 19:
        return "unionpay"
    if (p2 == 50 or 56 <= p2 <= 69 or 622126 <= p6 <= 622925) and 12 <= n <= 19:
        return "maestro"
    return None


def _card_ok(text: str) -> bool:
    digits = re.sub(r"\D", "", text)
    return 13 <= len(digits) <= 19 and card_issuer(digits) is not None and luhn_ok(digits)


def mask_card(text: str) -> str:
    """Every digit but the last four masked, in groups of four from the right."""
    digits = re.sub(r"\D", "", text)
    shown = "*" * (len(digits) - 4) + digits[-4:]
    groups = [shown[max(0, i - 4) : i] for i in range(len(shown), 0, -4)]
    return " ".join(reversed(groups))


# --- IBAN ------------------------------------------------------------------------------------

# ISO 13616 lengths (SWIFT IBAN registry).
IBAN_LENGTHS = dict(
    AD=24, AE=23, AL=28, AT=20, AZ=28, BA=20, BE=16, BG=22, BH=22, BI=27, BR=29, BY=28, CH=21,
    CR=22, CY=28, CZ=24, DE=22, DJ=27, DK=18, DO=28, EE=20, EG=29, ES=24, FI=18, FK=18, FO=18,
    FR=27, GB=22, GE=22, GI=23, GL=18, GR=27, GT=28, HR=21, HU=28, IE=22, IL=23, IQ=23, IS=26,
    IT=27, JO=30, KW=30, KZ=20, LB=28, LC=32, LI=21, LT=20, LU=20, LV=21, LY=25, MC=27, MD=24,
    ME=22, MK=19, MN=20, MR=27, MT=31, MU=30, NI=28, NL=18, NO=15, OM=23, PK=24, PL=28, PS=29,
    QA=29, RO=24, RU=33, SA=24, SC=31, SD=18, SE=24, SI=19, SK=24, SM=27, SO=23, ST=25, SV=28,
    TL=23, TN=24, TR=26, UA=29, VA=22, VG=24, XK=20, YE=30,
)  # fmt: skip

# Country, check digits, then the account in groups of up to four split by single spaces.
_IBAN = re.compile(r"(?<![A-Za-z0-9])([A-Z]{2})(\d{2})((?: ?[A-Z0-9]){10,30})(?![a-z0-9])")


def iban_ok(text: str) -> bool:
    """`text` (spaces allowed) is an IBAN: a known country, its length, mod 97 = 1."""
    code = text.replace(" ", "").upper()
    if IBAN_LENGTHS.get(code[:2]) != len(code) or not code.isalnum():
        return False
    moved = code[4:] + code[:4]
    return int("".join(str(int(ch, 36)) for ch in moved)) % 97 == 1


def _iban_span(m: re.Match[str]) -> tuple[int, int] | None:
    """The IBAN at the start of a match (the pattern may run on into a following word)."""
    length = IBAN_LENGTHS.get(m.group(1))
    if length is None:
        return None
    start, seen = m.start(), 0
    for end in range(m.start(), m.end()):
        if m.string[end] != " ":
            seen += 1
        if seen == length:
            text = m.string[start : end + 1]
            after = m.string[end + 1 : end + 2]
            if iban_ok(text) and not (after.isalnum()):
                return start, end + 1
            return None
    return None


def mask_iban(text: str) -> str:
    """Country kept, the last four characters shown, in groups of four from the left."""
    code = text.replace(" ", "").upper()
    shown = code[:2] + "*" * (len(code) - 6) + code[-4:]
    return " ".join(shown[i : i + 4] for i in range(0, len(shown), 4))


# --- phone numbers ---------------------------------------------------------------------------

_SEP = r"(?:[ .\-]|[ ]?\([0-9]{1,4}\)[ ]?)"  # one separator, or a parenthesised group
_PHONE = re.compile(
    r"(?<![\w.+\-/:])"
    r"(?:"
    r"(?:\+|00)[1-9]\d{0,3}(?:" + _SEP + r"?\d{1,14}){1,7}"  # international: + or 00, country
    r"|\(0\d{1,4}\)[ ]?\d{2,5}(?:[ .\-]?\d{2,5}){0,3}"  # national, (0x) area code
    r"|0\d{1,4}(?:[ .\-]\d{2,5}){1,4}"  # national, trunk 0 then groups
    r"|\(?[2-9]\d{2}\)?[ .\-]?[2-9]\d{2}[ .\-]\d{4}"  # North American 3-3-4
    r")"
    r"(?![\w:/]|[.,\-]\d)"
)
# What every phone the pattern takes starts with: +, 00 or a trunk 0 (not inside a number or
# a date), or North American 3-3-4 groups.
_PHONE_PREFILTER = (
    r"\+\d|(?:^|[^\w.+\-/:])(?:00[1-9]|\(?0\d{1,4}\)?[ .\-]?\d{2})"
    r"|(?:^|[^\w.+\-/:])\(?[2-9]\d{2}\)?[ .\-]?[2-9]\d{2}[ .\-]\d{4}(?:$|[^\w:/.,\-]|[.,\-](?:$|\D))"
)
_DATE = re.compile(
    r"(?<!\d)(?:\d{4}[-/.]\d{1,2}[-/.]\d{1,2}|\d{1,2}[-/.]\d{1,2}[-/.]\d{2,4})(?!\d)"
)
_DECIMAL = re.compile(r"[+]?\d+[.,]\d+")
_IP = re.compile(r"\d{1,3}(?:\.\d{1,3}){3}")


def _phone_ok(text: str) -> bool:
    digits = re.sub(r"\D", "", text)
    if text.startswith("00"):
        digits = digits[2:]
    international = text.startswith(("+", "00"))
    low = 8 if international else 9
    if not low <= len(digits) <= 15 or len(set(digits)) < 3:
        return False
    if _DECIMAL.fullmatch(text) or _IP.fullmatch(text) or _DATE.search(text):
        return False
    return not (text.startswith("00") and text.isdigit())  # 00 and bare digits: an identifier


def mask_phone(text: str) -> str:
    """The `+` and country code kept (the first group, or two digits), the last three digits
    shown, every other digit masked; separators kept."""
    keep = 0
    if text.startswith("+"):
        m = re.match(r"\+\d{1,3}(?=\D)", text)
        keep = m.end() if m else 3
    digits_at = [i for i, ch in enumerate(text) if ch.isdigit()]
    last = set(digits_at[-3:])
    return "".join(
        ch if (i < keep or not ch.isdigit() or i in last) else "*" for i, ch in enumerate(text)
    )


# --- finding and masking ---------------------------------------------------------------------


@dataclass(frozen=True)
class _Detector:
    pattern: re.Pattern[str]
    prefilter: str  # a cheap regex (RE2 syntax) that every value holding one matches
    span: Callable[[re.Match[str]], tuple[int, int] | None]
    mask: Callable[[str], str]


def _checked(ok: Callable[[str], bool]) -> Callable[[re.Match[str]], tuple[int, int] | None]:
    return lambda m: m.span() if ok(m.group(0)) else None


# In priority order: an e-mail address may hold digits, an IBAN a card-like run.
DETECTORS: dict[str, _Detector] = {
    "email": _Detector(_EMAIL, "@", lambda m: m.span(), mask_email),
    "iban": _Detector(_IBAN, r"[A-Z]{2}\d{2}", _iban_span, mask_iban),
    "card": _Detector(_CARD, _CARD_PREFILTER, _checked(_card_ok), mask_card),
    "phone": _Detector(_PHONE, _PHONE_PREFILTER, _checked(_phone_ok), mask_phone),
}


def find(text: str, types: Iterable[str] = TYPES) -> list[tuple[str, int, int]]:
    """The personal data in `text`: (type, start, end) spans, in order, none overlapping."""
    spans: list[tuple[str, int, int]] = []
    # IBAN-shaped text with a wrong checksum is not an IBAN, nor a phone or card inside one
    taken = [("", *m.span()) for m in _IBAN.finditer(text)]
    for kind in (t for t in DETECTORS if t in set(types)):
        d = DETECTORS[kind]
        for m in d.pattern.finditer(text):
            span = d.span(m)
            if span is None or any(s < span[1] and span[0] < e for _, s, e in spans):
                continue
            if kind != "iban" and any(s <= span[0] and span[1] <= e for _, s, e in taken):
                continue
            spans.append((kind, *span))
    return sorted(spans, key=lambda s: s[1])


def mask_text(text: str, types: Iterable[str] = TYPES) -> str:
    """`text` with every piece of personal data in it masked."""
    return _masked(text, find(text, types))


def _masked(text: str, spans: list[tuple[str, int, int]]) -> str:
    out, at = [], 0
    for kind, start, end in spans:
        out += [text[at:start], DETECTORS[kind].mask(text[start:end])]
        at = end
    return "".join(out) + text[at:]


@dataclass
class ColumnScan:
    """What `scan_column` found in one column."""

    redacted: pd.Series  # the column, every match masked
    rows: dict[str, list[int]] = field(default_factory=dict)  # type -> row positions (0-based)
    examples: dict[str, str] = field(default_factory=dict)  # type -> its first match, masked

    @property
    def found(self) -> bool:
        return any(self.rows.values())


def scan_column(values: pd.Series, types: Iterable[str] = TYPES) -> ColumnScan:
    """Find and mask personal data in a text (or object) column; non-text values are kept
    and read as their text. One prefilter pass picks the candidate rows; each distinct
    candidate value is then searched once in Python."""
    types = [t for t in DETECTORS if t in set(types)]
    scan = ColumnScan(values, {t: [] for t in types})
    if not types or not len(values):
        return scan
    text = values if _is_text(values) else values.astype("str")
    prefilter = "|".join(f"(?:{DETECTORS[t].prefilter})" for t in types)
    candidates = text.str.contains(prefilter, regex=True, na=False).to_numpy(bool)
    candidates = candidates & values.notna().to_numpy()
    positions = candidates.nonzero()[0]
    if not len(positions):
        return scan
    codes, distinct = pd.factorize(text.iloc[positions])
    spans = [find(v, types) for v in distinct]
    hits = pd.Series([bool(s) for s in spans])[codes].to_numpy()
    changed: dict[int, str] = {}
    for i, code in zip(positions[hits], codes[hits], strict=True):
        value, found = distinct[code], spans[code]
        for kind in dict.fromkeys(k for k, _, _ in found):
            scan.rows[kind].append(int(i))
        for kind, start, end in found:
            scan.examples.setdefault(kind, DETECTORS[kind].mask(value[start:end]))
        changed[int(i)] = _masked(value, found)
    if changed:
        redacted = values.astype("object")  # a copy: the caller's column is left as it was
        redacted.iloc[list(changed)] = list(changed.values())
        scan.redacted = redacted.astype(values.dtype) if _is_text(values) else redacted
    return scan


def _is_text(values: pd.Series) -> bool:
    return pd.api.types.is_string_dtype(values.dtype) and values.dtype != object


def text_columns(frame: pd.DataFrame, skip: Iterable[str] = ()) -> list[str]:
    """The columns that hold text (string or object dtype), those in `skip` left out."""
    skipped = set(skip)
    return [
        c
        for c in frame.columns
        if c not in skipped
        and (pd.api.types.is_string_dtype(frame[c].dtype) or frame[c].dtype == object)
    ]


# --- over a whole dataset, chunk by chunk ----------------------------------------------------

ROWS_LISTED = 20  # row numbers listed per (type, column) in the report; all are in the quarantine
PRIVACY_RECORD_COLUMNS = ["record", "check", "column", "observed"]  # privacy.parquet


@dataclass
class _Found:
    rows: int = 0
    listed: list[int] = field(default_factory=list)
    example: str | None = None


class Findings:
    """What the scan found over every chunk of one dataset: counts, the first row numbers and
    a masked example per (type, column), and one record per (row, type, column).

        findings = Findings(["email", "phone"], skip=["row", "timestamp"])
        for frame in chunks:
            frame = findings.scan(frame)   # text columns masked; use this frame from here on
        findings.merge(later)              # or: a Findings that scanned later chunks elsewhere
    """

    def __init__(self, types: Iterable[str], skip: Iterable[str] = (), key: str = "row") -> None:
        self.types = [t for t in TYPES if t in set(types)]
        self.skip, self.key = set(skip) | {key}, key
        self.columns: list[str] = []  # the text columns scanned, in the order first seen
        self.found: dict[tuple[str, str], _Found] = {}
        self._records: list[pd.DataFrame] = []

    def scan(self, frame: pd.DataFrame) -> pd.DataFrame:
        """`frame` with its text columns' personal data masked (a copy when any is found)."""
        out = frame
        for c in text_columns(frame, self.skip):
            if c not in self.columns:
                self.columns.append(c)
            scan = scan_column(frame[c], self.types)
            if not scan.found:
                continue
            if out is frame:
                out = frame.copy()
            out[c] = scan.redacted
            keys = frame[self.key].to_numpy() if self.key in frame else None
            for kind, positions in scan.rows.items():
                if not positions:
                    continue
                rows = keys[positions] if keys is not None else positions
                f = self.found.setdefault((kind, str(c)), _Found())
                f.rows += len(positions)
                f.listed += [int(r) for r in rows[: ROWS_LISTED - len(f.listed)]]
                f.example = f.example or scan.examples.get(kind)
                self._records.append(
                    pd.DataFrame(
                        {
                            "record": pd.array([str(r) for r in rows], dtype="str"),
                            "check": f"privacy_{kind}",
                            "column": str(c),
                            "observed": scan.redacted.iloc[positions].astype("str").to_numpy(),
                        }
                    )
                )
        return out

    def merge(self, other: Findings) -> None:
        """Add what `other` (the same types) found in the chunks after this one's (scanned on
        a cluster's worker), as if this one had scanned them."""
        self.columns += [c for c in other.columns if c not in self.columns]
        for key, theirs in other.found.items():
            f = self.found.setdefault(key, _Found())
            f.rows += theirs.rows
            f.listed += theirs.listed[: ROWS_LISTED - len(f.listed)]
            f.example = f.example or theirs.example
        self._records += other._records

    def rows(self, kind: str, column: str) -> int:
        f = self.found.get((kind, column))
        return f.rows if f else 0

    def example(self, kind: str, column: str) -> str | None:
        f = self.found.get((kind, column))
        return f.example if f else None

    def records(self) -> pd.DataFrame:
        """One row per (record, type, column), PRIVACY_RECORD_COLUMNS, the values masked."""
        if not self._records:
            return pd.DataFrame({c: pd.Series(dtype="str") for c in PRIVACY_RECORD_COLUMNS})
        return pd.concat(self._records, ignore_index=True).astype("str")

    def listed(self, kind: str, column: str) -> str:
        """The first row numbers, as text for a sentence."""
        f = self.found.get((kind, column))
        if f is None:
            return ""
        text = ", ".join(map(str, f.listed))
        return text if f.rows <= len(f.listed) else f"{text}, ... {f.rows - len(f.listed)} more"

    def report(self, policy: str) -> dict:
        """The report's privacy section: per type, per column, rows and the first ones."""
        found: dict[str, dict[str, dict]] = {}
        for (kind, column), f in self.found.items():
            found.setdefault(kind, {})[column] = {
                "rows": f.rows,
                "first_rows": f.listed,
                "example": f.example,
            }
        return {
            "policy": policy,
            "types": list(self.types),
            "columns_scanned": list(self.columns),
            "found": {k: dict(sorted(found[k].items())) for k in self.types if k in found},
            "rows_listed": ROWS_LISTED,
        }
