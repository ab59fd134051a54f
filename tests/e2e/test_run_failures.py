"""`bigdeep run` as a user runs it: a bad source and a failed gate each end in one paragraph,
the exit code of what failed, no traceback, nothing trained or registered."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]


def _png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buf, format="PNG")
    return buf.getvalue()


def _run(project: Path, *args: str) -> subprocess.CompletedProcess:
    from prefect.settings import PREFECT_API_URL

    env = {
        **os.environ,
        "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{ROOT}",
        "PREFECT_API_URL": PREFECT_API_URL.value(),  # the session's test server: no new one
    }
    return subprocess.run(
        [sys.executable, "-m", "bigdeep.cli", "run", "--project", str(project), *args],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
    )


def test_bad_source_exits_1_and_failed_gate_exits_3_in_one_paragraph(
    project_factory, mlflow_uri, tmp_path
):
    from mlflow.tracking import MlflowClient

    source = tmp_path / "source"
    (source / "digits").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for label in range(10):
        (source / "digits" / str(label)).mkdir()
        for i in range(3):
            (source / "digits" / str(label) / f"{i}.png").write_bytes(
                _png(rng.integers(0, 256, (28, 28), dtype=np.uint8))
            )
    good = _png(rng.integers(0, 256, (28, 28), dtype=np.uint8))
    (source / "digits" / "3" / "evil\nname.png").write_bytes(good[: len(good) // 2])  # truncated
    (source / "bad.jsonl").write_text(
        '{"Time": "2024-01-01T00:00:00Z", "Demand": 1}\n{"Time": oops\n'
    )
    project = project_factory(
        {
            "data": {
                "images": {"source": f"folder:{source / 'digits'}", "per_class": None},
                "series": {"source": f"jsonl:{source / 'bad.jsonl'}", "last_days": None},
            }
        }
    )
    # the previous run's passed report, which must not outlive a failed ingest
    report = project / "reports" / "quality" / "series.json"
    report.parent.mkdir(parents=True)
    report.write_text(json.dumps({"dataset": "series", "passed": True}))
    params_before = (project / "params.yaml").read_text().splitlines()

    proc = _run(project, "--datasets", "series", "--set", "train.rnn.epochs=1")
    seen = proc.stdout + proc.stderr
    assert proc.returncode == 1, seen
    assert "Traceback" not in seen
    paragraph = proc.stderr.strip().splitlines()[-1]
    assert paragraph.startswith(
        "bigdeep run: error: ingest@series failed (dataset series): "
        f"{source / 'bad.jsonl'}: line 2 is not valid JSON"
    ), paragraph
    assert "Nothing was trained or registered on series." in paragraph
    assert not report.exists() and "passed report reports/quality/series.json was removed" in seen
    # the full output is in the run's log; the deterministic error ran once, not thrice
    log = Path(paragraph.rsplit("Full output: ", 1)[1].rstrip("."))
    assert log.read_text().count("----- ingest@series: dvc repro output -----") == 1
    # --set was applied after the preflight checks, on its line only, and says how to undo it
    params_after = (project / "params.yaml").read_text().splitlines()
    changed = [
        i for i, (a, b) in enumerate(zip(params_before, params_after, strict=True)) if a != b
    ]
    assert len(changed) == 1 and params_after[changed[0]].strip() == "epochs: 1"
    assert f"params.yaml line {changed[0] + 1}: train.rnn.epochs: 2 -> 1" in seen
    assert "undo: bigdeep run --set train.rnn.epochs=2" in seen

    proc = _run(project, "--datasets", "images")
    seen = proc.stdout + proc.stderr
    assert proc.returncode == 3, seen
    assert "Traceback" not in seen
    assert "bigdeep run: error: validate@images: the quality gate failed for images" in seen
    assert "(fails the gate" in seen  # grouped by check, what fails the gate first
    assert "evil\\nname.png" in seen and "evil\nname.png" not in seen  # escaped
    # nothing prepared, trained or registered
    assert not (project / "data" / "processed").exists()
    client = MlflowClient(mlflow_uri)
    exp = client.get_experiment_by_name("bigdeep")
    assert exp is None or client.search_runs([exp.experiment_id]) == []
    assert client.search_registered_models() == []
