"""Training stage on tiny real data: deterministic, resumable after SIGKILL into one MLflow run,
evaluation artifacts written, config errors named."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from bigdeep.config import Settings
from bigdeep.train import train_cnn
from tests.integration.helpers import fit, prepared_images, run_paths, tracking

TINY = {
    "data": {"images": {"per_class": 8}},
    "train": {"cnn": {"epochs": 2, "batch_size": 16, "conv": [4, 8, 8], "dense": 16}},
}


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    return prepared_images(Settings.model_validate(TINY), tmp_path_factory.mktemp("images"))


def train_cmd(images: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "bigdeep.cli",
        "train",
        "cnn",
        "--data",
        str(images),
        "--out",
        "model",
        "--metrics",
        "metrics.json",
        "--plots",
        "plots",
        "--checkpoints",
        "ckpt",
    ]


def test_the_core_fits_and_tests_with_no_tracking_and_no_files(images, tmp_path):
    """fit_and_test on a trainer without a logger: metrics from its own predictions."""
    from bigdeep.training.jobs import build_image_job

    s = Settings.model_validate(TINY)
    job, fitted = fit(s, build_image_job, images, tmp_path / "ckpt", epochs=1, patience=1)
    true, pred = fitted.predictions["true"], fitted.predictions["pred"]
    assert len(true) == len(pred) == 20  # every test image
    assert fitted.metrics["test_acc"] == pytest.approx((true == pred).mean())
    assert (fitted.metrics["trained_epochs"], fitted.history) == (1.0, [])
    assert fitted.model is job.model
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["best.ckpt", "last.ckpt"]


def test_same_data_params_seed_give_identical_metrics(images, tmp_path, mlflow_uri):
    # a floor no model can clear (accuracy over the majority-class rate + 0.9)
    s = Settings.model_validate({**TINY, "registry": {"cnn_floor_margin": 0.9}})
    a = train_cnn(s, run_paths(tmp_path / "a", images))
    b = train_cnn(s, run_paths(tmp_path / "b", images))
    assert a.run_id != b.run_id
    assert a.metrics == b.metrics
    client = MlflowClient(mlflow_uri)
    # under the sanity floor, the first model included: registered, never champion
    versions = client.search_model_versions("name='bigdeep-cnn'")
    assert sorted(str(v.version) for v in versions) == ["1", "2"]
    assert all(not v.aliases for v in versions)
    rate = a.metrics["test_majority_rate"]
    assert 0.1 <= rate < 1 and a.decision.floor_score == pytest.approx(rate + 0.9)
    tags = client.get_run(a.run_id).data.tags
    assert tags["bigdeep.registry.decision"] == "bigdeep-cnn v1 -> no alias"
    assert tags["bigdeep.registry.floor"] == "failed"
    assert tags["bigdeep.registry.reason"].startswith(
        f"test_acc {a.metrics['test_acc']:.4g} does not beat the sanity floor"
    )
    assert tags["bigdeep.data.identity"] == "mnist"


@pytest.fixture(scope="module")
def trained(images, tmp_path_factory):
    """TINY trained once by the stage into its own MLflow store, for the tests that only read
    it: (result, paths, client)."""
    root = tmp_path_factory.mktemp("trained")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    p = run_paths(root, images)
    with tracking(uri):
        result = train_cnn(Settings.model_validate(TINY), p)
    return result, p, MlflowClient(uri)


def test_evaluation_artifacts(trained):
    result, p, client = trained
    confusion = (p.plots / "confusion.csv").read_text().splitlines()
    assert confusion[0] == "actual,predicted" and len(confusion) - 1 == 20  # one row per test image
    correct = sum(a == b for a, b in (line.split(",") for line in confusion[1:]))
    assert correct / 20 == pytest.approx(result.metrics["test_acc"])
    history = (p.plots / "history.csv").read_text().splitlines()
    assert history[0].split(",")[:2] == ["epoch", "train_acc"] and len(history) == 3  # 2 epochs
    artifacts = {a.path for a in client.list_artifacts(result.run_id, "plots")}
    assert {
        "plots/confusion_matrix.png",
        "plots/learning_curve.png",
        "plots/per_class.csv",
    } <= artifacts
    run = json.loads((p.out / "run.json").read_text())
    assert run["run_id"] == result.run_id and run["registry"]["model"] == "bigdeep-cnn"
    # champion, unless 2 epochs on 80 images did not beat the majority-class rate
    above = result.metrics["test_acc"] > result.metrics["test_majority_rate"]
    assert run["registry"]["above_floor"] is above
    assert run["registry"]["alias"] == ("champion" if above else None)


def test_a_split_over_the_memory_limit_trains_streamed_and_says_so(
    trained, images, tmp_path, mlflow_uri
):
    loaded, _, loaded_client = trained
    streamed_settings = yaml.safe_load(yaml.safe_dump(TINY))
    streamed_settings["train"]["trainer"] = {"memory_mb": 0}  # every split streams from disk
    streamed = train_cnn(
        Settings.model_validate(streamed_settings), run_paths(tmp_path / "streamed", images)
    )
    client = MlflowClient(mlflow_uri)
    assert loaded_client.get_run(loaded.run_id).data.params["data.streamed"] == "none"
    assert client.get_run(streamed.run_id).data.params["data.streamed"] == "train,val,test"
    # the same number of optimiser steps, and a test set read in full (20 images)
    assert streamed.metrics["trained_steps"] == loaded.metrics["trained_steps"]
    confusion = (tmp_path / "streamed" / "plots" / "confusion.csv").read_text().splitlines()
    assert len(confusion) - 1 == 20


def test_sigkill_then_resume_finishes_the_same_run(images, tmp_path, mlflow_uri):
    params = yaml.safe_load(yaml.safe_dump(TINY))
    params["train"]["cnn"].update(epochs=12, patience=12)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    cmd = train_cmd(images)
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = tmp_path / "ckpt" / "last.ckpt"
    deadline = time.monotonic() + 300
    while not last.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    state = json.loads((tmp_path / "ckpt" / "state.json").read_text())
    assert state["complete"] is False, "the run finished before it could be killed"
    client = MlflowClient(mlflow_uri)
    assert client.get_run(state["run_id"]).info.status == "RUNNING"  # died mid-run

    resumed = subprocess.run([*cmd, "--resume"], cwd=tmp_path, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    runs = client.search_runs([client.get_experiment_by_name("bigdeep").experiment_id])
    assert [r.info.run_id for r in runs] == [state["run_id"]]  # one run, continued
    run = runs[0]
    assert run.info.status == "FINISHED" and run.data.tags["bigdeep.resumed_from"].endswith(
        "last.ckpt"
    )
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_loss")] == list(
        range(12)
    )

    # an uninterrupted run of the same job ends at the same epoch and step
    reference = train_cnn(
        Settings.model_validate(params), run_paths(tmp_path / "reference", images)
    )
    assert run.data.metrics["trained_epochs"] == reference.metrics["trained_epochs"] == 12
    assert run.data.metrics["trained_steps"] == reference.metrics["trained_steps"]
    assert os.path.exists(tmp_path / "model" / "model.pt")


def test_resume_without_a_checkpoint_is_a_clear_error(images, tmp_path, mlflow_uri, monkeypatch):
    from bigdeep.cli import main

    (tmp_path / "params.yaml").write_text(yaml.safe_dump(TINY))
    monkeypatch.chdir(tmp_path)
    code = main(
        ["train", "cnn", "--data", str(images), "--out", "m", "--metrics", "m.json", "--resume"]
    )
    assert code == 1
    assert not (tmp_path / "m" / "model.pt").exists()


@pytest.mark.parametrize("memory_mb", [4096, 0], ids=["in-memory", "streamed"])
def test_ddp_on_two_processes_is_one_run_one_model(images, tmp_path, mlflow_uri, memory_mb):
    """strategy ddp, devices 2 on the CPU (gloo): the command Lightning launches again for
    rank 1 trains and tests beside rank 0 but logs, writes and registers nothing."""
    params = yaml.safe_load(yaml.safe_dump(TINY))
    params["train"]["trainer"] = {
        "accelerator": "cpu",
        "devices": 2,
        "strategy": "ddp",
        "memory_mb": memory_mb,
    }
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    done = subprocess.run(
        train_cmd(images), cwd=tmp_path, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("train cnn:") == 1  # only rank zero reports

    client = MlflowClient(mlflow_uri)
    runs = client.search_runs([client.get_experiment_by_name("bigdeep").experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    run = runs[0].data
    assert (run.params["trainer.strategy"], run.params["trainer.devices"]) == ("ddp", "2")
    versions = client.search_model_versions("name='bigdeep-cnn'")
    assert [v.run_id for v in versions] == [runs[0].info.run_id]
    # 50 train images, 25 per process in batches of 16: 2 steps per epoch, not 4
    assert run.metrics["trained_steps"] == 2 * 2 and run.metrics["trained_epochs"] == 2
    # rank zero scored every test image itself, none twice
    confusion = (tmp_path / "plots" / "confusion.csv").read_text().splitlines()[1:]
    assert len(confusion) == 20
    correct = sum(a == b for a, b in (line.split(",") for line in confusion))
    assert run.metrics["test_acc"] == pytest.approx(correct / 20)
    assert [m.step for m in client.get_metric_history(runs[0].info.run_id, "val_loss")] == [0, 1]
