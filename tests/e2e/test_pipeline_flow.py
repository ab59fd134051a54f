"""The whole pipeline, for real: Prefect flow -> DVC stages -> GX gate -> Lightning -> MLflow."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from tests.e2e.helpers import SMALL, lock_md5, make_project, run

pytestmark = pytest.mark.e2e


# --- one project, three runs: trains and logs; skips; new data; restore ---------------------
# Each run is a module-scoped fixture that builds on the one before and keeps what its tests
# read, so each test asserts one behaviour whatever runs later in the same project.


@dataclass
class Project:
    path: Path
    mlflow_uri: str


@dataclass
class FirstRun:
    summaries: dict  # dataset -> the flow's summary of it
    runs: dict  # run name -> MLflow run
    experiment_id: str
    images_md5: str  # dvc.lock's, after this run
    series_md5: str
    sample: np.ndarray  # (5, 1, 28, 28) float32 test images of this run's data
    dvc_status: str


@pytest.fixture(scope="module")
def project(tmp_path_factory, prefect_server) -> Iterator[Project]:
    """A git + DVC project and its MLflow store (SQLite), seen by the flow and by DVC's stages."""
    import mlflow

    root = tmp_path_factory.mktemp("reruns")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        mlflow.set_tracking_uri(uri)
        overrides = yaml.safe_load(yaml.safe_dump(SMALL))
        yield Project(make_project(root / "project", overrides), uri)


@pytest.fixture
def tracking(project, monkeypatch) -> str:
    """The project's store for this test's in-process MLflow calls (another test may have
    pointed MLflow elsewhere since the module began)."""
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", project.mlflow_uri)
    mlflow.set_tracking_uri(project.mlflow_uri)
    return project.mlflow_uri


def _pipeline(project: Project, **kwargs):
    import mlflow

    from flows.pipeline import pipeline

    mlflow.set_tracking_uri(project.mlflow_uri)
    state = pipeline(project_dir=str(project.path), return_state=True, **kwargs)
    assert state.is_completed(), state.message
    return state


@pytest.fixture(scope="module")
def first_run(project) -> FirstRun:
    from mlflow.tracking import MlflowClient

    state = _pipeline(project)
    client = MlflowClient(project.mlflow_uri)
    exp = client.get_experiment_by_name("bigdeep")
    test_x = np.load(project.path / "data/processed/images/test_x.npy")
    return FirstRun(
        summaries={s["dataset"]: s for s in state.result()},
        runs={r.info.run_name: r for r in client.search_runs([exp.experiment_id])},
        experiment_id=exp.experiment_id,
        images_md5=lock_md5(project.path, "data/raw/images"),
        series_md5=lock_md5(project.path, "data/raw/series"),
        sample=test_x[:5, None].astype(np.float32) / 255.0,
        dvc_status=run([sys.executable, "-m", "dvc", "status"], project.path),
    )


def test_first_run_passes_the_gate_and_runs_every_stage(first_run):
    first = first_run.summaries
    assert first["images"]["gate_passed"] and first["series"]["gate_passed"]
    assert set(first["images"]["stages"].values()) == {"ran"}


def test_first_run_logs_metrics_curves_and_the_data_version(first_run, project):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(project.mlflow_uri)
    runs = first_run.runs
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
    images_md5 = first_run.images_md5
    assert cnn.data.tags["bigdeep.data.images.md5"] == images_md5
    assert cnn.inputs.dataset_inputs[0].dataset.digest == images_md5[:36]
    assert rnn.data.tags["bigdeep.data.series.md5"] == first_run.series_md5
    assert cnn.data.params["cnn.epochs"] == "2"


def test_the_logged_cnn_loads_through_pyfunc_and_predicts_10_probabilities(first_run, tracking):
    import mlflow

    cnn = first_run.runs["train_cnn"]
    model = mlflow.pyfunc.load_model(cnn.data.tags["bigdeep.model_uri"])
    probs = np.asarray(model.predict(first_run.sample))
    assert probs.shape == (5, 10)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


def test_after_the_first_run_dvc_is_up_to_date(first_run):
    assert "up to date" in first_run.dvc_status, first_run.dvc_status


@pytest.fixture(scope="module")
def second_run(first_run, project) -> tuple[dict, int]:
    """Nothing changed: the summaries, and the number of MLflow runs after it."""
    from mlflow.tracking import MlflowClient

    state = _pipeline(project)
    runs = MlflowClient(project.mlflow_uri).search_runs([first_run.experiment_id])
    return {s["dataset"]: s for s in state.result()}, len(runs)


def test_nothing_changed_skips_every_stage_and_logs_no_run(second_run):
    second, runs = second_run
    for dataset in ("images", "series"):
        assert set(second[dataset]["stages"].values()) == {"skipped"}, second[dataset]["stages"]
    assert runs == 2


@pytest.fixture(scope="module")
def third_run(second_run, project) -> tuple[str, str, int]:
    """New images arrive (more per class): the first champion's data md5, dvc.lock's after
    this run, and the number of registered CNN versions."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(project.mlflow_uri)
    first_md5 = client.get_model_version("bigdeep-cnn", "1")
    first_md5 = client.get_run(first_md5.run_id).data.tags["bigdeep.data.images.md5"]
    params = yaml.safe_load((project.path / "params.yaml").read_text())
    params["data"]["images"]["per_class"] = 15
    (project.path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    _pipeline(project, datasets=["images"])
    versions = client.search_model_versions("name='bigdeep-cnn'")
    return first_md5, lock_md5(project.path, "data/raw/images"), len(versions)


def test_new_data_trains_and_registers_a_second_cnn(third_run):
    first_md5, images_md5, versions = third_run
    assert images_md5 != first_md5
    assert versions == 2


@pytest.fixture(scope="module")
def restored(third_run, project) -> str:
    """`bigdeep restore bigdeep-cnn@1` with the local cache removed: what it said."""
    shutil.rmtree(project.path / ".dvc" / "cache")
    return run([sys.executable, "-m", "bigdeep.cli", "restore", "bigdeep-cnn@1"], project.path)


def test_restore_brings_back_the_first_champions_data_from_the_remote(restored, third_run, project):
    from bigdeep.registry import dvc_dir_md5

    first_md5 = third_run[0]
    assert "restored images" in restored
    assert dvc_dir_md5(project.path / "data/raw/images") == first_md5


def test_lineage_names_the_champions_data_commit_and_dirty_state(
    restored, third_run, first_run, project
):
    first_md5 = third_run[0]
    cli = [sys.executable, "-m", "bigdeep.cli"]
    shown = json.loads(run([*cli, "lineage", "bigdeep-cnn@champion"], project.path, stderr=False))
    assert shown["data"]["images.md5"] in {first_md5, lock_md5(project.path, "data/raw/images")}
    assert shown["git_commit"] == run(["git", "rev-parse", "HEAD"], project.path).strip()
    # the second CNN ran after params.yaml was edited (uncommitted): that run is dirty
    assert shown["git_dirty"] is (shown["run_id"] != first_run.runs["train_cnn"].info.run_id)


# --- the gate, a tracking server that is down -----------------------------------------------


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
