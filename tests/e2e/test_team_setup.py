"""The team setup, whole: `bigdeep servers up --postgres URL --artifacts s3://...` (MLflow and
Prefect on PostgreSQL, MLflow artifacts proxied to a real S3 server), the DVC remote on the same
S3, `bigdeep run`; the store stops in the middle of the data push (one clear paragraph, exit 1)
and the next run, with the store back, completes the push; a fresh clone restores the
champion's data from S3 with its md5, and the model loads from its S3 artifact URI."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np
import pytest

from bigdeep.registry import dvc_dir_md5
from bigdeep.servers import free_port, read_state
from tests.e2e.helpers import lock_md5, make_project, run

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

# the images half of the pipeline, small: one training is enough to carry every hop
TEAM = {"data": {"images": {"per_class": 20}}, "train": {"cnn": {"epochs": 2, "batch_size": 32}}}


def bigdeep(*args: str, cwd, env: dict | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "bigdeep.cli", *args]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env)


def test_team_setup_runs_on_postgres_and_s3_survives_a_store_outage_and_restores_a_clone(
    tmp_path, postgres_url, s3_server, monkeypatch
):
    import mlflow
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # the servers' URL, from their state
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    project = make_project(tmp_path / "project", TEAM)
    run([sys.executable, "-m", "dvc", "remote", "add", "-d", "team", "s3://bigdeep/data"], project)
    run(["git", "commit", "-qam", "team remote"], project)  # the URL only: no key, no endpoint
    assert "bigdeep-test" not in (project / ".dvc" / "config").read_text()

    up = bigdeep(
        "servers", "up", "--postgres", postgres_url, "--artifacts", "s3://bigdeep/mlflow",
        "--timeout", "300", f"--mlflow-port={free_port()}", f"--prefect-port={free_port()}",
        cwd=project,
    )  # fmt: skip
    assert up.returncode == 0, up.stdout + up.stderr
    try:
        url = read_state(project / ".bigdeep" / "servers")["mlflow"]["url"]
        # the S3 server stops right after the first data object of the push is stored
        s3_server.stop_after_puts("data/", 1)
        first = bigdeep("run", "--datasets", "images", cwd=project)
        out = first.stdout + first.stderr
        assert first.returncode == 1, out[-3000:]
        assert s3_server.stopped.is_set()
        assert (
            f"bigdeep run: error: dvc push failed: the DVC remote 'team' (s3://bigdeep/data via "
            f"{s3_server.endpoint}) did not take the data: Could not connect to the endpoint URL"
        ) in out, out[-3000:]
        assert "the object store is not answering: start it" in out
        assert "`bigdeep run` again" in out
        assert "Traceback" not in out

        s3_server.start()  # the store is back, with what it had
        assert len(s3_server.keys("data/")) == 1
        started = time.monotonic()
        second = bigdeep("run", "--datasets", "images", cwd=project)
        assert second.returncode == 0, (second.stdout + second.stderr)[-3000:]
        assert time.monotonic() - started < 300
        md5 = lock_md5(project, "data/raw/images")
        assert f"data/files/md5/{md5[:2]}/{md5[2:]}" in s3_server.keys("data/")

        # a fresh clone: no cache, no data; the champion's exact data comes back from S3
        client = MlflowClient(url)
        champion = client.get_model_version_by_alias("bigdeep-cnn", "champion")
        assert client.get_run(champion.run_id).data.tags["bigdeep.data.images.md5"] == md5
        clone = tmp_path / "clone"
        run(["git", "clone", "-q", str(project), str(clone)], tmp_path)
        assert not (clone / "data" / "raw" / "images").exists()
        env = dict(os.environ, MLFLOW_TRACKING_URI=url)
        restored = bigdeep("restore", "bigdeep-cnn@champion", cwd=clone, env=env)
        assert restored.returncode == 0, restored.stdout + restored.stderr
        assert f"restored images {md5} -> data/raw/images" in restored.stdout
        assert dvc_dir_md5(clone / "data" / "raw" / "images") == md5

        # the model's artifacts are in S3 (the server proxied them) and load from there
        location = client.get_model_version_download_uri("bigdeep-cnn", champion.version)
        assert location.startswith("mlflow-artifacts:/"), location
        s3_uri = "s3://bigdeep/mlflow/" + location.removeprefix("mlflow-artifacts:/").lstrip("/")
        prefix = s3_uri.removeprefix("s3://bigdeep/")
        assert f"{prefix}/MLmodel" in s3_server.keys(prefix)
        x = np.load(project / "data" / "processed" / "images" / "test_x.npy")[:20]
        digits = (x[:, None] / 255.0).astype(np.float32)
        from_s3 = np.asarray(mlflow.pyfunc.load_model(s3_uri).predict(digits))
        mlflow.set_tracking_uri(url)
        served = np.asarray(
            mlflow.pyfunc.load_model("models:/bigdeep-cnn@champion").predict(digits)
        )
        assert from_s3.shape == (20, 10)
        np.testing.assert_allclose(from_s3, served, atol=1e-6)
        np.testing.assert_allclose(from_s3.sum(axis=1), 1.0, atol=1e-5)
    finally:
        down = bigdeep("servers", "down", cwd=project)
        assert down.returncode == 0, down.stderr
