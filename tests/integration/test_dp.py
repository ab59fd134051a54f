"""Differentially private training (train.privacy) on tiny real data: the CNN and the RNN train
under Opacus, the epsilon spent is logged, tagged and shown; the served model is the plain
network; an impossible budget is refused before anything is trained or registered; a resumed
DP fit counts the epsilon of the steps before the break."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

from bigdeep.config import Settings
from bigdeep.train import Paths, train_cnn, train_rnn
from bigdeep.training import privacy_record
from tests.integration.helpers import fit, prepared_images, prepared_series, run_paths

pytestmark = pytest.mark.slow  # real trainings with per-sample gradients: seconds each

TOLERANCE = 0.05  # Opacus's noise search stops within 0.01 below the target

CNN = {
    "data": {"images": {"per_class": 8}},
    "train": {
        "cnn": {"epochs": 2, "batch_size": 16, "conv": [4, 8, 8], "dense": 16},
        "privacy": {"enabled": True, "epsilon": 8.0},
    },
}
RNN = {
    "data": {"series": {"last_days": 20}},  # 480 hourly rows of the builtin demand
    "train": {
        "rnn": {"epochs": 2, "layers": 2, "hidden": 8, "window": 24, "batch_size": 32},
        "privacy": {"enabled": True, "epsilon": 3.0, "max_grad_norm": 0.5},
    },
}


def settings(base: dict, **privacy) -> Settings:
    raw = json.loads(json.dumps(base))
    raw["train"]["privacy"].update(privacy)
    return Settings.model_validate(raw)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    return prepared_images(Settings.model_validate(CNN), tmp_path_factory.mktemp("images"))


@pytest.fixture(scope="module")
def series(tmp_path_factory) -> Path:
    return prepared_series(Settings.model_validate(RNN), tmp_path_factory.mktemp("series"))


def check_recorded(client: MlflowClient, result, p: Paths, target: float, n_train: int) -> dict:
    """The spent epsilon: metric, params, run and model-version tags, run.json, all agreeing."""
    eps = result.metrics["dp_epsilon"]
    assert 0 < eps <= target + TOLERANCE
    run = client.get_run(result.run_id)
    assert run.data.metrics["dp_epsilon"] == pytest.approx(eps)
    delta = 1 / (10 * n_train)  # delta: null
    params = run.data.params
    assert float(params["dp.target_epsilon"]) == target
    assert float(params["dp.delta"]) == pytest.approx(delta)
    assert float(params["dp.noise_multiplier"]) > 0
    version = client.get_model_version(result.decision.model, result.decision.version)
    for tags in (run.data.tags, version.tags):  # the registry marks the version as DP
        assert privacy_record.from_tags(tags) == pytest.approx(
            {"epsilon": eps, "target_epsilon": target, "delta": delta}
        )
    record = json.loads((p.out / "run.json").read_text())["privacy"]
    assert record == pytest.approx({"epsilon": eps, "target_epsilon": target, "delta": delta})
    return record


def served_output(model_uri: str, x: np.ndarray) -> np.ndarray:
    return np.asarray(mlflow.pyfunc.load_model(model_uri).predict(x))


def test_cnn_with_dp_logs_the_epsilon_and_serves_the_plain_network(images, tmp_path, mlflow_uri):
    from bigdeep.training.jobs import build_image_job

    n_train = len(build_image_job(settings(CNN), images).datamodule.train_dataloader().dataset)
    p = run_paths(tmp_path / "a", images)
    result = train_cnn(settings(CNN), p)
    check_recorded(MlflowClient(mlflow_uri), result, p, 8.0, n_train)
    # the epsilon of the steps taken: 2 epochs of 4 Poisson batches, noise planned for them
    assert result.metrics["dp_epsilon"] > 8.0 - 0.5
    uri = json.loads((p.out / "run.json").read_text())["model_uri"]
    x = np.random.default_rng(0).random((3, 1, 28, 28), dtype=np.float32)
    probs = served_output(uri, x)
    assert probs.shape == (3, 10) and np.allclose(probs.sum(axis=1), 1, atol=1e-5)


def test_rnn_with_dp_swaps_the_lstm_and_exports_a_plain_one(series, tmp_path, mlflow_uri):
    from bigdeep.models.rnn import SeriesNet, SourceUnits
    from bigdeep.training.jobs import build_series_job

    s = settings(RNN)
    job = build_series_job(s, series)
    assert type(job.model.net.rnn).__name__ == "DPLSTM"  # Opacus's per-sample-gradient LSTM
    assert job.model.hparams.grad_clip == 0  # per-sample clipping replaces it
    p = run_paths(tmp_path / "a", series)
    result = train_rnn(s, p)
    n_train = len(job.datamodule.train_dataloader().dataset)
    check_recorded(MlflowClient(mlflow_uri), result, p, 3.0, n_train)
    # the served model is a plain nn.LSTM network: the same weights give the same forecast
    uri = json.loads((p.out / "run.json").read_text())["model_uri"]
    n_features = job.datamodule.n_features
    x = np.random.default_rng(0).standard_normal((4, 24, n_features)).astype(np.float32)
    state = torch.load(p.out / "model.pt", weights_only=True)
    plain = SeriesNet(n_features, "lstm", 2, 8, 0.0, 1)
    plain.load_state_dict({k.removeprefix("net."): v for k, v in state.items()})
    # the served model takes and gives the source's units (SourceUnits, the train scaler)
    h = job.model.hparams
    served = SourceUnits(plain, h.input_mean, h.input_std, h.target_mean, h.target_std)
    with torch.no_grad():
        expected = served.eval()(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(served_output(uri, x), expected, rtol=1e-4, atol=1e-5)


def test_an_impossible_target_is_refused_before_anything_is_trained(images, tmp_path):
    """Through the CLI: one paragraph naming train.privacy.epsilon, exit 2, nothing registered."""
    raw = json.loads(json.dumps(CNN))
    raw["train"]["privacy"]["epsilon"] = 1e-6
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cmd = [sys.executable, "-m", "bigdeep.cli", "train", "cnn", "--data", str(images)]
    cmd += ["--out", "model", "--metrics", "m.json", "--plots", "plots", "--checkpoints", "ckpt"]
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 2, done.stderr
    assert "train.privacy.epsilon = 1e-06 cannot be reached" in done.stderr
    assert "Fix: raise train.privacy.epsilon" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "model").exists() and not (tmp_path / "ckpt" / "last.ckpt").exists()
    if (tmp_path / "mlflow.db").exists():
        client = MlflowClient(uri)
        assert client.search_registered_models() == []
        assert client.search_runs([e.experiment_id for e in client.search_experiments()]) == []


def test_a_resumed_dp_fit_counts_the_steps_before_the_break(images, tmp_path, mlflow_uri):
    """Epoch 1 trained, the process gone; the resumed fit's epsilon is the unbroken fit's."""
    from bigdeep.training.jobs import build_image_job

    raw = json.loads(json.dumps(CNN))
    raw["train"]["cnn"]["schedule"] = "none"  # a 1-epoch fit's OneCycle would not stretch to 2
    s = Settings.model_validate(raw)

    def fitted(epochs: int, ckpt: str | None, folder: Path):
        return fit(s, build_image_job, images, folder, epochs, patience=5, ckpt=ckpt)[1]

    whole = fitted(2, None, tmp_path / "whole")
    first = fitted(1, None, tmp_path / "broken")
    resumed = fitted(2, str(tmp_path / "broken" / "last.ckpt"), tmp_path / "broken")
    assert first.metrics["dp_epsilon"] < resumed.metrics["dp_epsilon"]
    assert resumed.metrics["dp_epsilon"] == pytest.approx(whole.metrics["dp_epsilon"])
    saved = torch.load(tmp_path / "broken" / "last.ckpt", weights_only=True)["callbacks"]
    (state,) = [v for k, v in saved.items() if "DifferentialPrivacy" in k]
    assert sum(steps for _, _, steps in state["history"]) == 8  # 2 epochs x 4 batches
