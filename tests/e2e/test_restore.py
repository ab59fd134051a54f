"""`bigdeep restore` from a damaged DVC cache: a real DVC repo, a local remote, a real MLflow
registry; what the user sees (exit code, message) and what is left (data, cache)."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from tests.e2e.helpers import ROOT
from tests.integration.test_registry import _corrupt, _dvc_repo_with_remote

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def test_restore_reads_a_corrupt_cache_object_from_the_remote_or_says_none_is_left(
    tmp_path, mlflow_uri
):
    from mlflow.tracking import MlflowClient

    repo = tmp_path / "repo"
    repo.mkdir()
    md5, cache, remote = _dvc_repo_with_remote(repo)
    shutil.copy(ROOT / "params.yaml", repo / "params.yaml")
    client = MlflowClient(mlflow_uri)
    run = client.create_run(
        client.create_experiment("e"),
        tags={"bigdeep.data.d.md5": md5, "bigdeep.data.d.path": "data/d"},
    )
    client.set_terminated(run.info.run_id)
    client.create_registered_model("m")
    client.create_model_version("m", f"runs:/{run.info.run_id}/model", run.info.run_id)
    client.set_registered_model_alias("m", "champion", "1")
    restore = [sys.executable, "-m", "bigdeep.cli", "restore", "m@champion"]

    bad = _corrupt(cache, b"alpha")
    shutil.rmtree(repo / "data" / "d")
    done = subprocess.run(restore, cwd=repo, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "d: 1 corrupt object(s), intact copies used:" in done.stdout
    assert f"is corrupt in {cache}: read it from {remote}" in done.stdout
    assert f"repaired 1 object(s) in the cache {cache}" in done.stdout
    assert f"restored d {md5} -> data/d" in done.stdout
    assert (repo / "data" / "d" / "a.bin").read_bytes() == b"alpha"
    assert bad.read_bytes() == b"alpha"

    _corrupt(cache, b"beta")
    _corrupt(remote, b"beta")
    failed = subprocess.run(restore, cwd=repo, capture_output=True, text=True)
    assert failed.returncode == 1
    assert "bigdeep restore: m@champion: d data: b.bin (" in failed.stderr
    assert "no intact copy left here" in failed.stderr
    assert "Traceback" not in failed.stderr
    assert (repo / "data" / "d" / "b.bin").read_bytes() == b"beta"  # left as it was
