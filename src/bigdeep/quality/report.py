"""The quality report, reshaped for people: a table for the Prefect UI, lines for a terminal.

    report = json.loads(Path("reports/quality/images.json").read_text())
    create_table_artifact(table=report_table(report), key="quality-images")
    print("\n".join(summary_lines(report)))

Both are pure functions of the report that `gate.run_gate` builds.
"""

from __future__ import annotations

import json
from typing import Any

from bigdeep.quality.suites import VS

OBSERVED_CHARS = 80  # longer observed values are cut in the table


def report_table(report: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per expectation, then one per drift value; columns: dataset, v, check, column,
    critical, passed, observed, unexpected. Drift rows are `drift_js:<measure>` /
    `drift_linf:<measure>` with the measured value (null without a reference)."""
    name = report.get("dataset", "")
    rows = [
        {
            "dataset": name,
            "v": e["v"],
            "check": e["check"],
            "column": e.get("column") or "",
            "critical": bool(e.get("critical")),
            "passed": bool(e["success"]),
            "observed": _short(e.get("observed")),
            "unexpected": e.get("unexpected_count"),
        }
        for e in report.get("expectations", [])
    ]
    drift = report.get("drift") or {}
    for metric, limit in (("js", drift.get("max_js")), ("linf", drift.get("max_linf"))):
        for measure, value in (drift.get(metric) or {}).items():
            rows.append(
                {
                    "dataset": name,
                    "v": "variety",
                    "check": f"drift_{metric}:{measure}",
                    "column": measure,
                    "critical": True,
                    "passed": value is None or limit is None or value <= limit,
                    "observed": value,
                    "unexpected": None,
                }
            )
    return rows


def summary_lines(report: dict[str, Any]) -> list[str]:
    """A few lines for a terminal: the verdict, one line per V, drift and quarantine."""
    word = "PASSED" if report["passed"] else "FAILED"
    lines = [
        f"{report['dataset']}: {word} ({report['rows']} rows, {report['quarantined']} quarantined)"
    ]
    for v in [*VS, *(["privacy"] if "privacy" in report["by_v"] else [])]:
        c = report["by_v"].get(v, {"passed": 0, "failed": 0})
        lines.append(f"  {v:<9} {c['passed']} passed, {c['failed']} failed")
    if shapes := shapes_line(report):
        lines.append(shapes)
    if privacy := privacy_line(report):
        lines.append(privacy)
    drift = report.get("drift") or {}
    if drift.get("note"):
        lines.append(f"  drift     {drift['note']}")
    elif drift.get("reference") is None:
        lines.append("  drift     no reference yet (first accepted version)")
    else:
        values = [f"{m} js={v:.4g}" for m, v in drift["js"].items() if v is not None]
        values += [f"{m} linf={v:.4g}" for m, v in drift["linf"].items() if v is not None]
        lines.append(f"  drift     {', '.join(values)}; rows -{drift.get('drop_pct') or 0:.4g}%")
    return lines


def shapes_line(report: dict[str, Any]) -> str | None:
    """Images: the sizes and modes seen and the conversion, in one line (None for series)."""
    shapes = report.get("shapes")
    if not shapes:
        return None
    n_sizes = len(shapes["sizes"]) + shapes["other_sizes"]
    if n_sizes == 0:
        seen = "no image decoded"
    else:
        top = shapes["sizes"][0]
        (h0, h1), (w0, w1) = shapes["height_range"], shapes["width_range"]
        modes = ", ".join(f"{m['mode']} {m['records']}" for m in shapes["modes"])
        seen = (
            f"{n_sizes} size(s), height {h0}..{h1}, width {w0}..{w1} "
            f"(most common {top['size']}: {top['records']}); mode(s) {modes}"
        )
    return f"  shapes    {seen}; conversion: {shapes['conversion']}"


def privacy_line(report: dict[str, Any]) -> str | None:
    """Series: the personal data found, per type and column with the first rows, in one line;
    values are never in the report, only counts, row numbers and masked examples."""
    privacy = report.get("privacy")
    if not privacy:
        return None
    if privacy["policy"] == "off":
        return "  privacy   off (quality.series.privacy.policy): text columns not scanned"
    parts = []
    for kind, columns in privacy["found"].items():
        for column, f in columns.items():
            rows = ", ".join(map(str, f["first_rows"][:5]))
            more = ", ..." if f["rows"] > min(5, len(f["first_rows"])) else ""
            parts.append(f"{kind} in {column}: {f['rows']} (rows {rows}{more})")
    scanned = len(privacy["columns_scanned"])
    if not parts:
        return f"  privacy   nothing found in {scanned} text column(s)"
    action = "the gate fails" if privacy["policy"] == "fail" else "masked, rows kept"
    return f"  privacy   {'; '.join(parts)}; {action} (policy {privacy['policy']})"


def _short(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float):
        return value
    text = value if isinstance(value, str) else json.dumps(value)
    return text if len(text) <= OBSERVED_CHARS else text[: OBSERVED_CHARS - 3] + "..."


def failure_groups(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The failed checks, most important first, each once with its count and first sentence.

    Order: what fails the gate by itself (a critical check, one that could not run, too many
    quarantined) before what only quarantines records; then the larger count first. Each group:
    check, v, critical, count (records or rows that failed; 1 for a dataset-level fact),
    first (its first failure sentence). Without per-check data (an older report) the failure
    sentences are grouped as they are.
    """
    entries = [e for e in report.get("expectations", []) if not e.get("success", True)]
    groups = []
    for order, e in enumerate(entries):
        could_not_run = isinstance(e.get("observed"), str) and e["observed"].startswith(
            "could not run"
        )
        count = int(e.get("unexpected_count") or 1) if e.get("record_level") else 1
        if e["v"] == "privacy":  # rows holding that type, over every column
            found = (report.get("privacy") or {}).get("found", {})
            count = sum(
                f["rows"] for f in found.get(e["check"].removeprefix("privacy_"), {}).values()
            )
        groups.append(
            {
                "check": e["check"],
                "v": e["v"],
                "critical": bool(e.get("critical")) or could_not_run,
                "count": count,
                "first": e.get("first_failure") or e.get("notes") or "",
                "order": order,
            }
        )
    firsts = {g["first"] for g in groups}
    for sentence in report.get("failures", []):
        if "max_quarantine_fraction" in sentence and sentence not in firsts:
            groups.append(
                {
                    "check": "quarantine_fraction",
                    "v": "validity",
                    "critical": True,
                    "count": int(report.get("quarantined") or 0),
                    "first": sentence,
                    "order": -1,
                }
            )
    if not entries and report.get("failures"):  # no per-check data: one group per sentence
        groups += [
            {"check": "", "v": "", "critical": True, "count": 1, "first": s, "order": i}
            for i, s in enumerate(report["failures"])
        ]
    # what fails the gate first, the quarantine overflow (order -1) leading; then larger counts
    groups.sort(key=lambda g: (not g["critical"], g["order"] >= 0, -g["count"], g["order"]))
    for g in groups:
        del g["order"]
    return groups


def failure_lines(report: dict[str, Any], limit: int = 8) -> list[str]:
    """One line per failed check (see failure_groups), names from the data escaped."""
    from bigdeep.errors import printable

    groups = failure_groups(report)
    unit = "rows" if "columns" in report else "records"
    lines = []
    for g in groups[:limit]:
        label = f"{g['v']} {g['check']}".strip() or "failure"
        kind = "fails the gate" if g["critical"] else "quarantined"
        if g["v"] == "privacy" and not g["critical"]:
            kind = "masked"
        count = f"{g['count']} {unit}" if g["count"] > 1 else f"1 {unit[:-1]}"
        lines.append(f"{label} ({kind}, {count}): {printable(g['first'])}")
    if len(groups) > limit:
        lines.append(f"... and {len(groups) - limit} more failed checks (see the report)")
    return lines
