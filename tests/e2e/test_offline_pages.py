"""The pages a user opens read offline: `dvc plots show` and the Data Docs, in headless Chromium
with every network request blocked."""

from __future__ import annotations

import sys

import pytest

from tests.e2e.helpers import ROOT, run

pytestmark = pytest.mark.e2e
TEMPLATE = ROOT / ".bigdeep" / "vendor" / "plots.html"  # made by `make setup`


def test_dvc_plots_page_draws_the_curves_without_network(tmp_path):
    assert TEMPLATE.is_file(), f"{TEMPLATE} is missing: run `make setup` (scripts/offline_plots.sh)"
    (tmp_path / "reports").mkdir()
    rows = "\n".join(f"{e},{1.0 / (e + 1):.3f},{1.2 / (e + 1):.3f}" for e in range(5))
    (tmp_path / "reports" / "history.csv").write_text(f"epoch,train_loss,val_loss\n{rows}\n")
    (tmp_path / "dvc.yaml").write_text(
        "plots:\n  - learning_curve:\n      x: epoch\n"
        "      y:\n        reports/history.csv: [train_loss, val_loss]\n"
    )
    dvc = [sys.executable, "-m", "dvc"]
    run([*dvc, "init", "--no-scm", "-q"], tmp_path)
    run([*dvc, "config", "--local", "plots.html_template", str(TEMPLATE)], tmp_path)
    run([*dvc, "plots", "show"], tmp_path)
    page = tmp_path / "dvc_plots" / "index.html"
    assert "cdn.jsdelivr" not in page.read_text()

    from tests.e2e.browser import open_offline

    seen, blocked = open_offline(page, "g.mark-line path", tmp_path / "plots.png")
    assert blocked == []
    assert seen["lines"] == 2  # train_loss and val_loss, drawn as two distinct SVG paths
    assert "learning_curve" in seen["titles"]


def test_data_docs_show_pass_and_fail_without_network(tmp_path):
    from bigdeep.quality.docs import write_docs
    from tests.e2e.browser import open_offline
    from tests.unit.test_quality_report import failing_series

    result = failing_series()
    page = write_docs(result, tmp_path)
    seen, blocked = open_offline(page, ".bigdeep-mark", tmp_path / "docs.png")
    assert blocked == []
    passed = sum(r.success for r in result.validation.results)
    # drawn with a width, as text: one mark per expectation, plus the page's status
    assert seen["marks"].count("\u2714 pass") == passed
    assert seen["marks"].count("\u2718 fail") == len(result.validation.results) - passed + 1
    assert "series FAILED" in seen["text"]
