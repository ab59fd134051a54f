"""Great Expectations Data Docs for a gate result, as one HTML page that reads offline.

    write_docs(result, "reports/quality/docs")   # reports/quality/docs/images.html

GX renders the page (the same renderer as its Data Docs sites); its stylesheets and scripts
come from CDNs, so they are replaced by a small inline stylesheet, and the pass/fail icons
(Font Awesome, also from a CDN) by text marks: the page is complete without a network, and the
same result always gives the same bytes.
"""

from __future__ import annotations

import html
import re
from pathlib import Path
from typing import Any

# Enough of Bootstrap for GX's markup: tables, cards, badges, hidden helpers.
OFFLINE_CSS = """
body { font-family: system-ui, sans-serif; margin: 0 1.5rem 2rem; color: #212529; }
.bigdeep-banner { padding: .75rem 1rem; margin: 1rem 0; border-radius: .3rem; font-weight: 600; }
.bigdeep-passed { background: #d4edda; } .bigdeep-failed { background: #f8d7da; }
table { border-collapse: collapse; margin: .5rem 0; width: 100%; }
th, td { border: 1px solid #dee2e6; padding: .3rem .5rem; vertical-align: top; text-align: left; }
.card { border: 1px solid #dee2e6; border-radius: .3rem; margin: 1rem 0; padding: .5rem 1rem; }
.text-danger, .fa-times { color: #dc3545; } .text-success, .fa-check-circle { color: #28a745; }
.text-warning, .fa-exclamation-triangle { color: #b8860b; }
.bigdeep-mark { font-style: normal; font-weight: 600; white-space: nowrap; }
.d-none, .modal, .ge-walkthrough-modal, nav, .sticky, #section-1-content-block-2, .btn, button,
.cooltip .top, .hide-succeeded-validations-column-section-target-child:empty { display: none; }
code, pre { background: #f6f8fa; padding: 0 .2rem; white-space: pre-wrap; }
ul { margin: .2rem 0; }
"""

_EXTERNAL = [
    re.compile(r"<link\b[^>]*>", re.I),  # CDN stylesheets and the favicon
    re.compile(r"<script\b[^>]*>.*?</script>", re.I | re.S),  # CDN scripts and inline jQuery
    re.compile(r"<img\b[^>]*\bsrc=\"https?://[^>]*>", re.I),  # logos from S3
    re.compile(r"url\(['\"]?https?://[^)]*\)", re.I),  # the same, in inline styles
    re.compile(r"<p>Stay current on everything GX.*?</p>", re.S),  # a newsletter footer
]


# GX draws pass / fail / warning as empty <i> elements styled by the Font Awesome icon font.
MARKS = {
    "check-circle": "\u2714 pass",
    "times": "\u2718 fail",
    "exclamation-triangle": "\u26a0 warn",
}
_ICON = re.compile(
    r'<i class="([^"]*\bfa-(check-circle|times|exclamation-triangle)\b[^"]*)"([^>]*)></i>'
)


def _text_marks(page: str) -> str:
    """Font Awesome's empty icon elements -> the same elements holding a text mark."""
    return _ICON.sub(
        lambda m: f'<i class="{m.group(1)} bigdeep-mark"{m.group(3)}>{MARKS[m.group(2)]}</i>', page
    )


_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def render_docs(result: Any) -> str:
    """The Data Docs page of a GateResult (its `validation`), with no external resources."""
    from great_expectations.render.renderer import ValidationResultsPageRenderer
    from great_expectations.render.view import DefaultJinjaPageView

    document = ValidationResultsPageRenderer().render(result.validation)
    page = DefaultJinjaPageView().render(document)
    for pattern in _EXTERNAL:
        page = pattern.sub("", page)
    page = _stable_ids(_text_marks(page))
    report = result.report
    word = "PASSED" if report["passed"] else "FAILED"
    lines = "".join(f"<li>{html.escape(f)}</li>" for f in report["failures"][:50])
    banner = (
        f'<div class="bigdeep-banner bigdeep-{word.lower()}">bigdeep quality gate: '
        f"{html.escape(report['dataset'])} {word} ({report['rows']} rows, "
        f"{report['quarantined']} quarantined)</div>" + (f"<ul>{lines}</ul>" if lines else "")
    )
    page = page.replace("</head>", f"<style>{OFFLINE_CSS}</style></head>", 1)
    return re.sub(r"(<body[^>]*>)", lambda m: m.group(1) + banner, page, count=1)


def _stable_ids(page: str) -> str:
    """GX names collapsible blocks with random UUIDs; number them in order instead."""
    ids: dict[str, str] = {}
    return _UUID.sub(lambda m: ids.setdefault(m.group(0), f"block-{len(ids) + 1}"), page)


def write_docs(result: Any, docs_dir: str | Path) -> Path:
    """Write `docs_dir/<dataset>.html`."""
    path = Path(docs_dir) / f"{result.report['dataset']}.html"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_docs(result), encoding="utf-8")
    return path
