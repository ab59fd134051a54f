"""Serving the champion: a real `mlflow models serve` process started by `bigdeep serve`
answers digits and windows (in the source's units), refuses a wrong shape with a 4xx, and
leaves nothing running when stopped; `bigdeep predict` scores a folder that passes the gate
(the output records version, run id and md5) and refuses one that fails it (no output)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from bigdeep.config import Settings
from bigdeep.servers import free_port, group_members, healthy

pytestmark = pytest.mark.e2e

# Enough training for a CNN that reads most digits (the builtin 500 digits, 8 epochs) and a
# small RNN: minutes on a loaded 2-core machine, once for the module.
TRAINED = {
    "data": {"images": {"per_class": 50}, "series": {"last_days": 20}},
    "train": {
        "cnn": {"epochs": 8, "batch_size": 32, "conv": [8, 16, 16], "dense": 32},
        "rnn": {"epochs": 2, "layers": 1, "hidden": 8, "window": 24, "batch_size": 32},
    },
}
START_LIMIT_S = 600  # a bound on waiting for a server, not a speed target


@dataclass(frozen=True)
class Project:
    root: Path
    params: Path
    uri: str
    images: Path  # processed images: test_x.npy, test_y.npy
    series: pd.DataFrame  # the raw builtin series the RNN trained on (timestamp, Demand, ...)
    settings: Settings


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "bigdeep.cli", *args]


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Iterator[Project]:
    """A tiny CNN and RNN trained and registered in a real MLflow store (SQLite) in tmp; the
    module's in-process MLflow reads that store (`models:/` URIs), its subprocesses
    params.yaml's."""
    from bigdeep.data.sources import read_series
    from bigdeep.train import train_cnn, train_rnn
    from tests.integration.helpers import prepared_images, prepared_series, run_paths, tracking

    root = tmp_path_factory.mktemp("served")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    store = {"mlflow": {"tracking_uri": uri, "artifact_root": str(root / "mlartifacts")}}
    settings = Settings.model_validate({**TRAINED, **store})
    params = root / "params.yaml"
    params.write_text(yaml.safe_dump(settings.model_dump(mode="json"), sort_keys=False))
    with tracking(uri):
        images = prepared_images(settings, root / "images")
        train_cnn(settings, run_paths(root / "cnn", images))
        train_rnn(settings, run_paths(root / "rnn", prepared_series(settings, root / "series")))
        series = read_series(settings.data.series)
        yield Project(root, params, uri, images, series, settings)


@contextmanager
def serving(project: Project, ref: str):
    """`bigdeep serve ref` in the foreground of its own process; (URL, server pid) once it
    answers. Always stopped as Ctrl-C stops it; a server left behind fails the test."""
    port = free_port()
    log = project.root / f"serve-{port}.log"
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}  # params.yaml's
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            cli("--params", str(project.params), "serve", ref, "--port", str(port)),
            cwd=project.root,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    server_pid = None
    try:
        deadline = time.monotonic() + START_LIMIT_S
        while (found := re.search(r"server pid (\d+)", log.read_text())) is None:
            assert proc.poll() is None, (
                f"bigdeep serve exited {proc.returncode}:\n{log.read_text()}"
            )
            assert time.monotonic() < deadline, (
                f"no server after {START_LIMIT_S} s:\n{log.read_text()}"
            )
            time.sleep(1)
        server_pid = int(found.group(1))
        yield f"http://127.0.0.1:{port}", server_pid, log
    finally:
        proc.send_signal(signal.SIGINT)  # what Ctrl-C sends
        try:
            code = proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            code = None
        left = group_members(server_pid) if server_pid else []
        if left:
            os.killpg(server_pid, signal.SIGKILL)
        assert code == 0, f"bigdeep serve ended {code}:\n{log.read_text()}"
        assert left == [], f"processes of the scoring server left running: {left}"
        assert not healthy(f"http://127.0.0.1:{port}/ping")


def post(url: str, body: dict) -> tuple[int, dict]:
    req = urllib.request.Request(
        url + "/invocations",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_served_cnn_reads_digits_refuses_a_wrong_shape_and_stops_clean(project):
    import mlflow

    x = np.load(project.images / "test_x.npy")[:50]  # uint8 (N, 28, 28)
    y = np.load(project.images / "test_y.npy")[:50]
    digits = (x[:, None] / 255.0).astype(np.float32)  # (N, 1, 28, 28) in [0, 1]
    local = np.asarray(mlflow.pyfunc.load_model("models:/bigdeep-cnn/1").predict(digits))

    with serving(project, "bigdeep-cnn@champion") as (url, server_pid, log):
        assert "serving bigdeep-cnn v1" in log.read_text()
        status, body = post(url, {"inputs": digits[:1].tolist()})  # one digit
        assert status == 200
        assert np.argmax(body["predictions"][0]) == np.argmax(local[0])
        status, body = post(url, {"inputs": digits.tolist()})
        served = np.asarray(body["predictions"])  # (N, 10) probabilities
        assert status == 200 and served.shape == (50, 10)
        np.testing.assert_allclose(served, local, atol=1e-5)
        assert (served.argmax(1) == y).mean() > 0.6  # the right classes (chance: 0.1)

        status, body = post(url, {"inputs": np.zeros((2, 28, 28), np.float32).tolist()})
        assert status == 400, body
        assert "does not match expected shape (-1, 1, 28, 28)" in body["message"]
        status, body = post(url, {"inputs": [[["seven"] * 28] * 28]})
        assert status == 400 and "could not convert string to float" in body["message"]
    # `serving` checked on the way out: exit 0, no process of the group left, port silent


def test_served_rnn_takes_a_window_in_the_source_units(project):
    """The window is the raw demand (MW) and temperature (degC) resampled as prepare does,
    with the calendar columns the model names; the answer is MW."""
    import mlflow

    from bigdeep.data.transforms import calendar_features

    hourly = project.series.set_index("timestamp")[["Demand", "Temperature"]].resample("1h").mean()
    window = hourly.iloc[-24:]  # the model's window: 24 hours
    rnn = project.settings.train.rnn
    calendar, names = calendar_features(window.index, rnn.calendar, rnn.calendar_tz)
    x = np.concatenate([window.to_numpy(), calendar], axis=1)[None].astype(np.float32)
    local = np.asarray(mlflow.pyfunc.load_model("models:/bigdeep-rnn/1").predict(x))

    with serving(project, "bigdeep-rnn@1") as (url, _, log):
        assert "window columns (last axis): Demand,Temperature,hour_sin" in log.read_text()
        status, body = post(url, {"inputs": x.tolist()})
        assert status == 200
        forecast = float(np.asarray(body["predictions"])[0, 0])
        assert forecast == pytest.approx(float(local[0, 0]), rel=1e-5)
        low, high = hourly["Demand"].min(), hourly["Demand"].max()
        assert 0.5 * low < forecast < 1.5 * high  # megawatts, not a standardised value
        status, body = post(url, {"inputs": x[:, :, :2].tolist()})  # calendar columns missing
        assert status == 400 and "does not match expected shape (-1, 24, 6)" in body["message"]


def test_serve_names_what_exists_when_the_reference_names_nothing(project):
    proc = subprocess.run(
        cli("--params", str(project.params), "serve", "bigdeep-cnn@7"),
        cwd=project.root,
        capture_output=True,
        text=True,
        env={k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"},
    )
    assert proc.returncode == 1
    assert "bigdeep-cnn has no version 7 (it has v1 (champion))" in proc.stderr
    assert "Traceback" not in proc.stderr


def predict(project: Project, ref: str, source: Path, output: Path):
    env = {
        k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "PREFECT_API_URL")
    }
    home = project.root / "prefect_home"  # its temporary server's database
    home.mkdir(exist_ok=True)
    env["PREFECT_HOME"] = str(home)
    return subprocess.run(
        cli("--params", str(project.params), "predict", ref, "--input", str(source),
            "--output", str(output)),
        cwd=project.root, capture_output=True, text=True, env=env,
    )  # fmt: skip


def test_predict_scores_a_folder_that_passes_the_gate_and_refuses_one_that_fails(project, tmp_path):
    from bigdeep.registry import dvc_dir_md5

    x = np.load(project.images / "test_x.npy")[:12]
    y = np.load(project.images / "test_y.npy")[:12]
    good = tmp_path / "digits"
    good.mkdir()
    for i, pixels in enumerate(x):
        Image.fromarray(pixels).save(good / f"digit{i:02d}.png")
    output = tmp_path / "out" / "predictions.csv"

    proc = predict(project, "bigdeep-cnn@champion", good, output)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    table = pd.read_csv(output, dtype={"run_id": str, "predicted": str})
    run_id = json.loads((project.root / "cnn" / "model" / "run.json").read_text())["run_id"]
    md5 = dvc_dir_md5(good)
    assert list(table["file"]) == [f"digit{i:02d}.png" for i in range(12)]
    assert set(table["model_version"]) == {1} and set(table["run_id"]) == {run_id}
    assert set(table["input_md5"]) == {md5}
    probs = table[[f"p_{c}" for c in range(10)]].to_numpy()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert (table["predicted"].astype(int).to_numpy() == y).mean() > 0.5
    sidecar = json.loads(output.with_name("predictions.csv.json").read_text())
    assert (sidecar["model"], sidecar["model_version"]) == ("bigdeep-cnn", "1")
    assert (sidecar["run_id"], sidecar["input_md5"], sidecar["rows"]) == (run_id, md5, 12)

    bad = tmp_path / "batch"
    bad.mkdir()
    for i in range(3):
        Image.fromarray(x[i]).save(bad / f"ok{i}.png")
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(bad / "photo.png")  # not 28x28 grey
    proc = predict(project, "bigdeep-cnn@champion", bad, output)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    report = output.with_name("predictions.csv.quality") / "images.json"
    assert f"Report: {report}" in proc.stderr
    assert 'record "photo.png" is 40 pixels high, expected 28' in proc.stderr
    assert "Traceback" not in proc.stderr
    assert json.loads(report.read_text())["passed"] is False
    # nothing scored, and the earlier output cannot pass for this batch
    assert not output.exists() and not output.with_name("predictions.csv.json").exists()


def test_predict_forecasts_a_series_file_in_the_target_units(project, tmp_path):
    source = tmp_path / "demand.csv"
    raw = project.series[["timestamp", "Demand", "Temperature"]].tail(96)  # 48 hours, half-hourly
    raw.rename(columns={"timestamp": "Time"}).to_csv(source, index=False)
    output = tmp_path / "forecast.csv"
    proc = predict(project, "bigdeep-rnn@1", source, output)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    table = pd.read_csv(output)
    assert len(table) == 48 - 24 + 1  # every 24-hour window of 48 hourly steps
    last = pd.Timestamp(raw["timestamp"].iloc[-1]).floor("1h")
    assert table["timestamp"].iloc[-1] == (last + pd.Timedelta("1h")).strftime("%Y-%m-%dT%H:%M:%SZ")
    demand = raw["Demand"]
    assert table["forecast"].between(0.5 * demand.min(), 1.5 * demand.max()).all()  # MW
    import hashlib

    assert set(table["input_md5"]) == {hashlib.md5(source.read_bytes()).hexdigest()}
