"""The research door: `dvc exp run` in a fresh repo logs an MLflow run named after the
experiment; `dvc exp show` and `dvc plots show` read the same metrics and curves."""

from __future__ import annotations

import json
import sys

import pytest
from mlflow.tracking import MlflowClient

from tests.e2e.helpers import SMALL, make_project, run

pytestmark = pytest.mark.e2e


def test_dvc_exp_run_tags_the_mlflow_run_with_the_experiment(tmp_path, mlflow_uri, monkeypatch):
    project = make_project(tmp_path / "project", SMALL)
    dvc = [sys.executable, "-m", "dvc"]

    out = run(
        [*dvc, "exp", "run", "-S", "train.cnn.epochs=1", "-n", "one-epoch", "train_cnn"], project
    )
    assert "one-epoch" in out

    client = MlflowClient(mlflow_uri)
    runs = client.search_runs([client.get_experiment_by_name("bigdeep").experiment_id])
    assert [r.data.tags.get("bigdeep.dvc_experiment") for r in runs] == ["one-epoch"]
    assert runs[0].data.params["cnn.epochs"] == "1"

    shown = json.loads(run([*dvc, "exp", "show", "--json"], project, stderr=False))
    exps = [
        e for rev in shown for e in (rev.get("experiments") or []) if e.get("name") == "one-epoch"
    ]
    assert exps, shown
    metrics = exps[0]["revs"][0]["data"]["metrics"]["metrics/cnn.json"]["data"]
    assert metrics["test_acc"] == pytest.approx(runs[0].data.metrics["test_acc"])

    run([*dvc, "plots", "show", "-o", str(tmp_path / "plots")], project)
    html = (tmp_path / "plots" / "index.html").read_text()
    assert "cnn_learning_curve" in html and "val_loss" in html
