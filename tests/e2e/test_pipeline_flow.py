"""The whole pipeline, for real: Prefect flow -> DVC stages -> GX gate -> Lightning -> MLflow."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from tests.e2e.helpers import lock_md5, run

pytestmark = pytest.mark.e2e


def test_flow_trains_logs_skips_and_restores(project_factory, mlflow_uri):
    import mlflow
    from mlflow.tracking import MlflowClient

    from flows.pipeline import pipeline

    project = project_factory()
    state = pipeline(project_dir=str(project), return_state=True)
    assert state.is_completed(), state.message
    first = {s["dataset"]: s for s in state.result()}
    assert first["images"]["gate_passed"] and first["series"]["gate_passed"]
    assert set(first["images"]["stages"].values()) == {"ran"}

    client = MlflowClient(mlflow_uri)
    exp = client.get_experiment_by_name("bigdeep")
    runs = {r.info.run_name: r for r in client.search_runs([exp.experiment_id])}
    assert set(runs) == {"train_cnn", "train_rnn"}
    cnn, rnn = runs["train_cnn"], runs["train_rnn"]
    # a fresh clone's run is clean: the pipeline's own outputs do not count as source changes
    assert cnn.data.tags["bigdeep.git.dirty"] == rnn.data.tags["bigdeep.git.dirty"] == "false"
    assert 0.0 <= cnn.data.metrics["test_acc"] <= 1.0
    for key in ("test_mae", "test_naive_mae", "test_seasonal_naive_mae"):
        assert rnn.data.metrics[key] > 0
    # per-epoch curves, one point per epoch
    assert [m.step for m in client.get_metric_history(cnn.info.run_id, "val_loss")] == [0, 1]
    assert len(client.get_metric_history(rnn.info.run_id, "val_mae")) == 2
    # the data version is the DVC md5 of the raw dataset, as a tag and as the input's digest
    images_md5 = lock_md5(project, "data/raw/images")
    assert cnn.data.tags["bigdeep.data.images.md5"] == images_md5
    assert cnn.inputs.dataset_inputs[0].dataset.digest == images_md5[:36]
    assert rnn.data.tags["bigdeep.data.series.md5"] == lock_md5(project, "data/raw/series")
    assert cnn.data.params["cnn.epochs"] == "2"

    # the logged CNN loads through pyfunc and predicts 10 class probabilities
    test_x = np.load(project / "data/processed/images/test_x.npy")
    sample = test_x[:5, None].astype(np.float32) / 255.0  # (5, 1, 28, 28)
    model = mlflow.pyfunc.load_model(cnn.data.tags["bigdeep.model_uri"])
    probs = np.asarray(model.predict(sample))
    assert probs.shape == (5, 10)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)

    status = run([sys.executable, "-m", "dvc", "status"], project)
    assert "up to date" in status, status

    # nothing changed: every stage is skipped and no new run appears
    state = pipeline(project_dir=str(project), return_state=True)
    assert state.is_completed(), state.message
    second = {s["dataset"]: s for s in state.result()}
    for dataset in ("images", "series"):
        assert set(second[dataset]["stages"].values()) == {"skipped"}, second[dataset]["stages"]
    assert len(client.search_runs([exp.experiment_id])) == 2

    # new data arrives: the pipeline runs again; then restore the first champion's exact data
    # from the DVC remote the flow pushed to (the local cache is removed to prove it)
    first_md5 = client.get_model_version("bigdeep-cnn", "1")
    first_md5 = client.get_run(first_md5.run_id).data.tags["bigdeep.data.images.md5"]
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["data"]["images"]["per_class"] = 15
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    state = pipeline(project_dir=str(project), return_state=True, datasets=["images"])
    assert state.is_completed(), state.message
    assert lock_md5(project, "data/raw/images") != first_md5
    assert len(client.search_model_versions("name='bigdeep-cnn'")) == 2

    from bigdeep.registry import dvc_dir_md5

    shutil.rmtree(project / ".dvc" / "cache")
    cli = [sys.executable, "-m", "bigdeep.cli"]
    assert "restored images" in run([*cli, "restore", "bigdeep-cnn@1"], project)
    assert dvc_dir_md5(project / "data/raw/images") == first_md5
    shown = json.loads(run([*cli, "lineage", "bigdeep-cnn@champion"], project, stderr=False))
    assert shown["data"]["images.md5"] in {first_md5, lock_md5(project, "data/raw/images")}
    assert shown["git_commit"] == run(["git", "rev-parse", "HEAD"], project).strip()
    # the second CNN ran after params.yaml was edited (uncommitted): that run is dirty
    assert shown["git_dirty"] is (shown["run_id"] != cnn.info.run_id)


def _png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buf, format="PNG")
    return buf.getvalue()


def _tree_digest(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(p.as_posix().encode() + p.read_bytes())
    return h.hexdigest()


def test_gate_failure_stops_the_flow_and_names_the_bad_records(
    project_factory, mlflow_uri, tmp_path
):
    from mlflow.tracking import MlflowClient

    from flows.pipeline import pipeline

    rng = np.random.default_rng(0)
    images = tmp_path / "source" / "digits"
    for label in range(10):
        (images / str(label)).mkdir(parents=True)
        for i in range(3):
            (images / str(label) / f"{i}.png").write_bytes(
                _png(rng.integers(0, 256, (28, 28), dtype=np.uint8))
            )
    good = _png(rng.integers(0, 256, (28, 28), dtype=np.uint8))
    (images / "3" / "broken.png").write_bytes(good[: len(good) // 2])  # truncated PNG

    series = tmp_path / "source" / "demand.csv"
    times = pd.date_range("2024-01-01", periods=200, freq="h", tz="UTC")
    frame = pd.DataFrame(
        {
            "Time": times.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "Demand": rng.normal(100, 5, 200),
            "Temperature": 20.0,
        }
    )
    frame.loc[16, "Demand"] = np.nan  # data row 17
    frame.to_csv(series, index=False)
    before = _tree_digest(tmp_path / "source")

    project = project_factory(
        {
            "data": {
                "images": {"source": f"folder:{images}", "per_class": None},
                "series": {"source": f"csv:{series}", "last_days": None},
            }
        },
        name="gated",
    )
    state = pipeline(project_dir=str(project), return_state=True)
    assert state.is_failed()

    images_report = json.loads((project / "reports/quality/images.json").read_text())
    assert images_report["passed"] is False
    assert any("3/broken.png" in f for f in images_report["failures"]), images_report["failures"]
    quarantined = pd.read_parquet(project / "data/quarantine/images/reasons.parquet")
    assert "3/broken.png" in set(quarantined["record"])

    series_report = json.loads((project / "reports/quality/series.json").read_text())
    assert series_report["passed"] is False
    assert any("row 17" in f and "Demand" in f for f in series_report["failures"]), series_report[
        "failures"
    ]

    # nothing trained, logged or registered; the source is untouched
    assert not (project / "data/processed").exists()
    client = MlflowClient(mlflow_uri)
    exp = client.get_experiment_by_name("bigdeep")
    assert exp is None or client.search_runs([exp.experiment_id]) == []
    assert client.search_registered_models() == []
    assert _tree_digest(tmp_path / "source") == before


def test_flow_fails_fast_naming_the_uri_when_the_tracking_server_is_down(
    project_factory, monkeypatch
):
    from bigdeep.servers import free_port
    from flows.pipeline import pipeline

    project = project_factory(name="no_server")
    uri = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    state = pipeline(project_dir=str(project), return_state=True)
    assert state.is_failed()
    assert uri in state.message
    assert not (project / "data" / "raw").exists()  # failed before any stage ran
