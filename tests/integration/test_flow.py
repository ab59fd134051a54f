"""The flow's view of DVC, through a real `dvc` process: the order of `dvc metrics show`."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_dvc_metrics_lead_with_the_models_then_the_quality_reports(tmp_path):
    for name in ("dvc.yaml", "params.yaml", "metrics", "reports/quality"):
        source, target = ROOT / name, tmp_path / name
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("docs"))
        else:
            shutil.copy(source, target)
    dvc = [sys.executable, "-m", "dvc"]
    subprocess.run([*dvc, "init", "--no-scm", "-q"], cwd=tmp_path, check=True)
    shown = subprocess.run(
        [*dvc, "metrics", "show", "--json"], cwd=tmp_path, capture_output=True, text=True
    )
    files = list(json.loads(shown.stdout)[""]["data"])
    assert files == [
        "metrics/cnn.json",
        "metrics/rnn.json",
        "reports/quality/images.json",
        "reports/quality/series.json",
    ]
