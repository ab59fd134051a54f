"""Registry logic on a real MLflow store and real DVC hashing, with tiny stand-in models."""

from __future__ import annotations

import hashlib
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from bigdeep.registry import (
    CHALLENGER,
    CHAMPION,
    RestoreError,
    dvc_dir_md5,
    is_better,
    lineage,
    register_and_promote,
    restore_dir,
)
from tests.e2e.helpers import run


@pytest.mark.parametrize(
    ("candidate", "champion", "margin", "higher", "expected"),
    [
        (0.91, 0.90, 0.0, True, True),
        (0.90, 0.90, 0.0, True, False),  # a tie keeps the champion
        (0.905, 0.90, 0.01, True, False),  # not by the margin
        (95.0, 100.0, 1.0, False, True),  # MAE: lower is better
        (99.5, 100.0, 1.0, False, False),
    ],
)
def test_is_better(candidate, champion, margin, higher, expected):
    assert is_better(candidate, champion, margin, higher) is expected


class Scale(torch.nn.Module):
    def __init__(self, k: float) -> None:
        super().__init__()
        self.k = torch.nn.Parameter(torch.tensor(k))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.k


def test_first_model_is_champion_then_worse_is_challenger_better_takes_over(mlflow_uri):
    import mlflow
    from mlflow.tracking import MlflowClient

    mlflow.set_tracking_uri(mlflow_uri)
    mlflow.set_experiment("registry-test")  # not whatever experiment an earlier test left active
    client = MlflowClient(mlflow_uri)
    x = np.ones((2, 3), dtype=np.float32)
    # the score of a model = its output on ones = its k: a real pyfunc round trip
    score = lambda uri: float(np.asarray(mlflow.pyfunc.load_model(uri).predict(x)).mean())  # noqa: E731

    decisions = []
    for k in (0.5, 0.4, 0.8):
        with mlflow.start_run() as r:
            info = mlflow.pytorch.log_model(
                Scale(k), name="model", input_example=x, pip_requirements=["torch"]
            )
            decisions.append(
                register_and_promote(
                    client=client,
                    name="m",
                    run_id=r.info.run_id,
                    model_uri=info.model_uri,
                    score=score,
                    metric="k",
                    higher_is_better=True,
                    margin=0.0,
                    data_version="d",
                    tags={"t": "1"},
                )
            )
    assert [d.alias for d in decisions] == [CHAMPION, CHALLENGER, CHAMPION]
    assert decisions[1].champion_score == pytest.approx(0.5) and decisions[
        1
    ].candidate_score == pytest.approx(0.4)
    assert str(client.get_model_version_by_alias("m", CHAMPION).version) == "3"
    assert str(client.get_model_version_by_alias("m", CHALLENGER).version) == "2"
    shown = lineage(client, "m@champion")
    assert shown["model"] == "m v3" and shown["run_id"] == client.get_model_version("m", "3").run_id


def test_dvc_dir_md5_matches_dvc_and_restore_rebuilds_it(tmp_path):
    repo = tmp_path / "repo"
    (repo / "data" / "d" / "sub").mkdir(parents=True)
    (repo / "data" / "d" / "a.bin").write_bytes(b"alpha")
    (repo / "data" / "d" / "sub" / "b.bin").write_bytes(bytes(range(256)))
    run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], repo)
    run([sys.executable, "-m", "dvc", "add", "-q", "data/d"], repo)
    dvc_md5 = next(
        line.split()[-1]
        for line in (repo / "data" / "d.dvc").read_text().splitlines()
        if "md5:" in line
    )
    assert dvc_dir_md5(repo / "data" / "d") == dvc_md5

    (repo / "data" / "d" / "a.bin").write_bytes(b"changed")
    restore_dir(dvc_md5, repo / "data" / "d", [repo / ".dvc" / "cache"])
    assert (repo / "data" / "d" / "a.bin").read_bytes() == b"alpha"
    assert dvc_dir_md5(repo / "data" / "d") == dvc_md5
    with pytest.raises(FileNotFoundError, match="0123.dir is in none of"):
        restore_dir("0123.dir", repo / "data" / "d", [repo / ".dvc" / "cache"])


def _dvc_repo_with_remote(repo):
    """A real DVC repo whose data/d (two files) is cached and pushed to a local remote."""
    (repo / "data" / "d").mkdir(parents=True)
    (repo / "data" / "d" / "a.bin").write_bytes(b"alpha")
    (repo / "data" / "d" / "b.bin").write_bytes(b"beta")
    dvc = [sys.executable, "-m", "dvc"]
    run([*dvc, "init", "--no-scm", "-q"], repo)
    run([*dvc, "add", "-q", "data/d"], repo)
    run([*dvc, "remote", "add", "-d", "r", str(repo.parent / "remote")], repo)
    run([*dvc, "push", "-q"], repo)
    md5 = next(
        line.split()[-1]
        for line in (repo / "data" / "d.dvc").read_text().splitlines()
        if "md5:" in line
    )
    return md5, repo / ".dvc" / "cache", repo.parent / "remote"


def _corrupt(store, content: bytes) -> Path:
    obj = store / "files" / "md5" / hashlib.md5(content).hexdigest()[:2]
    obj = obj / hashlib.md5(content).hexdigest()[2:]
    obj.chmod(0o644)  # DVC keeps cache objects read-only
    obj.write_bytes(b"bit rot")
    return obj


@pytest.mark.slow  # four DVC subprocesses
def test_restore_falls_back_to_the_remote_and_repairs_a_corrupt_cache_object(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    md5, cache, remote = _dvc_repo_with_remote(repo)
    bad = _corrupt(cache, b"alpha")
    shutil.rmtree(repo / "data" / "d")

    restored = restore_dir(md5, repo / "data" / "d", [cache, remote], repair=cache)
    assert (repo / "data" / "d" / "a.bin").read_bytes() == b"alpha"
    assert dvc_dir_md5(repo / "data" / "d") == md5
    assert restored.repaired == 1 and len(restored.fallbacks) == 1
    assert restored.fallbacks[0].startswith("a.bin (")
    assert f"corrupt in {cache}: read it from {remote}" in restored.fallbacks[0]
    assert bad.read_bytes() == b"alpha"  # the cache holds the intact copy again


@pytest.mark.slow  # four DVC subprocesses
def test_restore_without_any_intact_copy_says_so_and_leaves_the_data(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    md5, cache, remote = _dvc_repo_with_remote(repo)
    _corrupt(cache, b"beta")
    _corrupt(remote, b"beta")
    with pytest.raises(RestoreError, match=r"b.bin \(.*\) of .* is corrupt in .*no intact copy"):
        restore_dir(md5, repo / "data" / "d", [cache, remote], repair=cache)
    assert (repo / "data" / "d" / "b.bin").read_bytes() == b"beta"  # untouched
    assert not (repo / "data" / "d.restore.tmp").exists()
