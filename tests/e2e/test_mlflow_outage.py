"""A real `mlflow server` on 127.0.0.1 killed mid-training: the checkpoint is on disk, the
outage is reported at once, and the epoch metrics reach the store when the server is back
(in the same process, or in the rerun that resumes it). `lineage` names the store it reads."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from bigdeep import servers
from tests.integration.test_train import TINY, images, train_cmd  # noqa: F401 - `images` is a fixture

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


class MlflowServer:
    """`mlflow server` as `bigdeep servers up` runs it on a project store: SQLite + a folder."""

    def __init__(self, root: Path) -> None:
        self.backend = f"sqlite:///{root / 'mlflow.db'}"
        self.cmd = servers.mlflow_command(
            self.backend, servers.artifact_args(str(root / "mlartifacts"), root)
        )
        self.port, self.log, self.pid = servers.free_port(), root / "mlflow.log", None
        self.url = f"http://{servers.HOST}:{self.port}"

    def start(self) -> None:
        env = dict(os.environ, MLFLOW_DISABLE_TELEMETRY="true")
        env.pop("MLFLOW_TRACKING_URI", None)
        with open(self.log, "ab") as out:
            proc = subprocess.Popen(
                [*self.cmd, str(self.port)], stdout=out, stderr=out, env=env, start_new_session=True
            )
        self.pid = proc.pid
        deadline = time.monotonic() + 300
        while not servers.healthy(self.url + "/health"):
            assert proc.poll() is None, self.log.read_text()[-3000:]
            assert time.monotonic() < deadline, "mlflow server did not start"
            time.sleep(0.5)

    def kill(self) -> None:
        os.killpg(self.pid, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while servers.group_members(self.pid) and time.monotonic() < deadline:
            servers._alive(self.pid)  # reap our child
            time.sleep(0.1)
        assert servers.group_members(self.pid) == []


@pytest.fixture
def mlflow_server(tmp_path):
    server = MlflowServer(tmp_path)
    server.start()
    yield server
    servers.stop_group(server.pid)


class Training:
    """`bigdeep train cnn` in a subprocess; stderr read line by line with the time it came."""

    def __init__(self, data: Path, cwd: Path, url: str, wait: float) -> None:
        env = dict(os.environ, MLFLOW_TRACKING_URI=url, BIGDEEP_MLFLOW_OUTAGE_WAIT=str(wait))
        self.proc = subprocess.Popen(
            train_cmd(data),
            cwd=cwd,
            env=env,
            stdout=open(cwd / "stdout.log", "w"),  # noqa: SIM115 - closed with the process
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[tuple[float, str]] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.lines.append((time.monotonic(), line.rstrip("\n")))

    def wait_for_line(self, text: str, timeout: float = 300) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for at, line in self.lines:
                if text in line:
                    return at
            assert self.proc.poll() is None or self._reader.is_alive(), self.stderr()
            time.sleep(0.05)
        raise AssertionError(f"{text!r} never printed:\n{self.stderr()}")

    def finish(self) -> int:
        code = self.proc.wait(timeout=600)
        self._reader.join(timeout=30)
        return code

    def stderr(self) -> str:
        return "\n".join(line for _, line in self.lines)[-4000:]


def kill_server_after_first_checkpoint(training: Training, server: MlflowServer, ckpt: Path):
    """Freeze training when epoch 0's checkpoint lands, kill the server, let training go on."""
    deadline = time.monotonic() + 300
    while not (ckpt / "last.ckpt").exists() and training.proc.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    training.proc.send_signal(signal.SIGSTOP)
    server.kill()
    killed = time.monotonic()
    training.proc.send_signal(signal.SIGCONT)
    return killed


def setup_project(tmp_path: Path) -> Path:
    params = yaml.safe_load(yaml.safe_dump(TINY))
    params["train"]["cnn"].update(epochs=3, patience=3)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    return tmp_path / "ckpt"


def epochs_logged(client: MlflowClient, run_id: str, key: str = "train_loss") -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, key))


def test_server_killed_then_rerun_resumes_and_sends_the_metrics(images, tmp_path, mlflow_server):  # noqa: F811
    ckpt = setup_project(tmp_path)
    training = Training(images, tmp_path, mlflow_server.url, wait=3)
    killed = kill_server_after_first_checkpoint(training, mlflow_server, ckpt)
    noticed = training.wait_for_line("is not answering")
    assert training.finish() == 1
    # noticed at the first request after the kill, not after MLflow's 8-minute retries
    assert noticed - killed < 60, training.stderr()
    last = training.lines[-1][1]
    assert last.startswith("bigdeep train: error: MLflow tracking server")
    assert "run the same command" in last and "Traceback" not in training.stderr()
    assert (ckpt / "last.ckpt").exists()
    state = json.loads((ckpt / "state.json").read_text())
    spooled = json.loads((ckpt / "unsent_metrics.json").read_text())
    assert spooled["run_id"] == state["run_id"] and state["complete"] is False
    assert "2" in spooled["epochs"]  # the epochs trained while the server was gone

    mlflow_server.start()  # the same port and store
    rerun = Training(images, tmp_path, mlflow_server.url, wait=3)
    assert rerun.finish() == 0, rerun.stderr()
    first = (tmp_path / "stdout.log").read_text().splitlines()[0]
    assert first == f"MLflow store: {mlflow_server.url} (MLFLOW_TRACKING_URI)"
    client = MlflowClient(mlflow_server.url)
    run = client.get_run(state["run_id"])
    assert run.info.status == "FINISHED" and run.data.metrics["trained_epochs"] == 3
    for key in ("train_loss", "val_loss"):
        assert epochs_logged(client, run.info.run_id, key) == [0, 1, 2]
    assert not (ckpt / "unsent_metrics.json").exists()
    # registered once the server was back (champion or not: the sanity floor decides)
    (version,) = client.search_model_versions(f"run_id = '{run.info.run_id}'")
    assert version.name == "bigdeep-cnn"

    # one store: read without the server, through params.yaml's sqlite:///mlflow.db in this
    # folder, lineage names that store and shows the same model the server registered
    mlflow_server.kill()
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    shown = subprocess.run(
        [*train_cmd(images)[:3], "lineage", f"bigdeep-cnn@{version.version}"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert shown.returncode == 0, shown.stderr[-3000:]
    assert shown.stderr.splitlines()[0] == (
        f"MLflow store: sqlite:///{tmp_path / 'mlflow.db'} (params.yaml mlflow.tracking_uri)"
    )
    assert json.loads(shown.stdout)["run_id"] == run.info.run_id


def test_server_back_during_training_gets_the_metrics_in_the_same_process(
    images,  # noqa: F811
    tmp_path,
    mlflow_server,
):
    ckpt = setup_project(tmp_path)
    training = Training(images, tmp_path, mlflow_server.url, wait=300)
    kill_server_after_first_checkpoint(training, mlflow_server, ckpt)
    training.wait_for_line("is not answering")
    mlflow_server.start()
    assert training.finish() == 0, training.stderr()
    assert any("is back" in line for _, line in training.lines), training.stderr()
    client = MlflowClient(mlflow_server.url)
    state = json.loads((ckpt / "state.json").read_text())
    run = client.get_run(state["run_id"])
    assert run.info.status == "FINISHED" and state["complete"] is True
    for key in ("train_loss", "val_loss"):
        assert epochs_logged(client, run.info.run_id, key) == [0, 1, 2]
    history = (tmp_path / "plots" / "history.csv").read_text().splitlines()
    assert len(history) == 1 + 3
