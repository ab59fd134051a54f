"""The fast lineage reader gives exactly what MlflowClient gives, on one real SQLite store,
and declines (None: MLflow answers) whatever it cannot be sure of."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from bigdeep.registry import lineage
from bigdeep.store_reader import read_lineage
from bigdeep.training import privacy_record

pytestmark = pytest.mark.slow  # a real MLflow store: its creation takes seconds

NAME = "bigdeep-cnn"


def _run(client: MlflowClient, exp: str, tmp_path: Path, tags: dict, reports: list[str]) -> str:
    run_id = client.create_run(exp, tags=tags).info.run_id
    client.log_param(run_id, "lr", "0.1")
    client.log_metric(run_id, "test_acc", 0.5, step=0)
    client.log_metric(run_id, "test_acc", 0.75, step=1)  # the latest value is the run's
    client.log_metric(run_id, "test_loss", float("nan"))
    client.log_metric(run_id, "val_loss", 1.25)  # not a test_ metric: not shown
    folder = tmp_path / f"reports-{run_id}"
    (folder / "docs").mkdir(parents=True)
    (folder / "docs" / "images.html").write_text("<p>")
    for name in reports:
        (folder / name).write_text("{}")
    if reports:
        client.log_artifacts(run_id, str(folder), "quality")
    client.log_artifact(run_id, str(folder / "docs" / "images.html"))  # outside quality/
    client.set_terminated(run_id)
    return run_id


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    """Two versions of one model (v1 with two aliases set out of order), a third deleted."""
    tmp_path = tmp_path_factory.mktemp("store")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("e", artifact_location=(tmp_path / "artifacts").as_uri())
    tags = {
        "bigdeep.git.commit": "abc",
        "bigdeep.git.dirty": "false",
        "bigdeep.params_hash": "0123",
        "bigdeep.data.images.md5": "m.dir",
        "bigdeep.data.images.path": "data/raw/images",
        "bigdeep.data.identity": "mnist",
        "bigdeep.prefect_flow_run_id": "f-1",
    }
    first = _run(client, exp, tmp_path, tags, ["series.json", "images.json"])
    dp = privacy_record.tags({"epsilon": 2.9713, "target_epsilon": 3.0, "delta": 2.5e-5})
    second = _run(client, exp, tmp_path, {"bigdeep.git.dirty": "true", **dp}, [])
    client.create_registered_model(NAME)
    for run_id in (first, second, second):
        client.create_model_version(NAME, (tmp_path / "artifacts").as_uri(), run_id)
    client.set_registered_model_alias(NAME, "zz-last", "1")
    client.set_registered_model_alias(NAME, "champion", "1")
    client.set_registered_model_alias(NAME, "challenger", "2")
    client.delete_model_version(NAME, "3")
    return uri


@pytest.mark.parametrize(
    "ref", [f"{NAME}@champion", f"{NAME}@zz-last", f"{NAME}@challenger", f"{NAME}@1", f"{NAME}/2"]
)
def test_same_answer_as_mlflow_client(store, ref):
    fast = read_lineage(store, ref)
    assert fast is not None  # the reader answered (its schema check knows this store)
    # as JSON: the CLI's output, and NaN compares equal to itself there
    assert json.dumps(fast, sort_keys=True) == json.dumps(
        lineage(MlflowClient(store), ref), sort_keys=True
    )


def test_the_answer_holds_the_runs_values(store):
    info = read_lineage(store, f"{NAME}@champion")
    assert info["model"] == f"{NAME} v1" and info["aliases"] == ["champion", "zz-last"]
    assert info["quality_report"] == ["quality/docs", "quality/images.json", "quality/series.json"]
    assert info["metrics"]["test_acc"] == 0.75 and "val_loss" not in info["metrics"]
    assert info["git_dirty"] is False and info["data"]["identity"] == "mnist"
    assert read_lineage(store, f"{NAME}@2")["quality_report"] == []
    # the privacy line, the same through both readers (test_same_answer_as_mlflow_client)
    assert info["privacy"] == "off"
    assert read_lineage(store, f"{NAME}@2")["privacy"] == "ε=2.97 (target 3.0, δ=2.5e-5)"


@pytest.mark.parametrize(
    "ref",
    [f"{NAME}@nope", f"{NAME}@9", f"{NAME}@3", "other@champion", f"{NAME}@latest", NAME, "@1"],
)
def test_declines_what_mlflow_must_answer(store, ref):
    """Names nothing (MLflow's error lists what exists), deleted, MLflow's own alias, malformed."""
    assert read_lineage(store, ref) is None


def test_declines_other_stores_and_schemas(store, tmp_path, monkeypatch):
    ref = f"{NAME}@champion"
    assert read_lineage("http://127.0.0.1:5000", ref) is None
    assert read_lineage(f"sqlite:///{tmp_path / 'missing.db'}", ref) is None
    copy = tmp_path / "other.db"
    shutil.copy(store.removeprefix("sqlite:///"), copy)
    with sqlite3.connect(copy) as db:
        db.execute("UPDATE alembic_version SET version_num = 'f00'")
    assert read_lineage(f"sqlite:///{copy}", ref) is None
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", "http://127.0.0.1:5000")
    assert read_lineage(store, ref) is None
