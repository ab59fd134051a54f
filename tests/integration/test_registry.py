"""Registry logic on a real MLflow store and real DVC hashing, with tiny stand-in models."""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from bigdeep.registry import (
    CHALLENGER,
    CHAMPION,
    Floor,
    RestoreError,
    Scorer,
    current_champion,
    decide,
    decision_for,
    dvc_dir_md5,
    is_better,
    lineage,
    record,
    register,
    restore_dir,
)
from tests.e2e.helpers import run

ROOT = Path(__file__).resolve().parents[2]


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


X = np.ones((2, 3), dtype=np.float32)  # what the toy models score on
SCORE = Scorer(X, X, lambda out, _: float(out.mean()))  # the mean output = k


def _log_and_register(client, k: float, tags: dict, floor: Floor | None = None):
    """Log Scale(k) in a new run and register it as `m`, as the training shell does."""
    import mlflow

    with mlflow.start_run() as r:
        info = mlflow.pytorch.log_model(
            Scale(k), name="model", input_example=X, pip_requirements=["torch"]
        )
    run_id = r.info.run_id
    candidate, champion = SCORE(info.model_uri), current_champion(client, "m", SCORE)
    decision = decision_for(
        name="m",
        version=register(client, "m", run_id, info.model_uri, info.model_id, tags),
        metric="k",
        candidate_score=candidate,
        higher_is_better=True,
        margin=0.0,
        champion=champion,
        floor=floor,
        data_version="d",
        identity=tags.get("bigdeep.data.identity"),
    )
    record(client, run_id, decision, floor)
    assert client.get_model_version("m", decision.version).run_id == run_id
    return run_id, decision


def test_first_model_is_champion_then_worse_is_challenger_better_takes_over(mlflow_uri):
    import mlflow
    from mlflow.tracking import MlflowClient

    mlflow.set_tracking_uri(mlflow_uri)
    mlflow.set_experiment("registry-test")  # not whatever experiment an earlier test left active
    client = MlflowClient(mlflow_uri)
    # the score of a model = its output on ones = its k: a real pyfunc round trip
    decisions = [_log_and_register(client, k, {"t": "1"})[1] for k in (0.5, 0.4, 0.8)]
    assert [d.alias for d in decisions] == [CHAMPION, CHALLENGER, CHAMPION]
    assert decisions[1].champion_score == pytest.approx(0.5) and decisions[
        1
    ].candidate_score == pytest.approx(0.4)
    assert str(client.get_model_version_by_alias("m", CHAMPION).version) == "3"
    assert str(client.get_model_version_by_alias("m", CHALLENGER).version) == "2"
    shown = lineage(client, "m@champion")
    assert shown["model"] == "m v3" and shown["run_id"] == client.get_model_version("m", "3").run_id


MAJORITY = Floor.majority_class(rate=0.3, margin=0.05)  # test_acc must beat 0.35
NAIVE = Floor.naive_forecast(mae=140.0, ratio=0.9)  # test_mae must beat 126


@pytest.mark.parametrize(
    ("metric", "score", "higher", "floor", "champion", "alias", "says"),
    [
        # the first model too: under the floor it is no champion
        ("test_acc", 0.34, True, MAJORITY, None, None, "does not beat the sanity floor 0.35"),
        ("test_acc", 0.36, True, MAJORITY, None, CHAMPION, "first model: no champion yet"),
        ("test_acc", 0.36, True, MAJORITY, 0.5, CHALLENGER, "does not beat champion v1 0.5"),
        ("test_acc", 0.6, True, MAJORITY, 0.5, CHAMPION, "beats champion v1 0.5"),
        # better than a (poor) champion, still under the floor: never champion
        ("test_acc", 0.3, True, MAJORITY, 0.2, None, "(majority-class rate 0.3,"),
        ("test_mae", 1779.0, False, NAIVE, None, None, "naive forecast MAE 140"),
        ("test_mae", 127.0, False, NAIVE, None, None, "registry.rnn_floor_ratio=0.9"),
        (
            "test_mae",
            120.0,
            False,
            NAIVE,
            None,
            CHAMPION,
            "test_mae 120 beats the sanity floor 126",
        ),
        ("test_mae", 120.0, False, NAIVE, 110.0, CHALLENGER, "does not beat champion v1 110"),
    ],
)
def test_decide(metric, score, higher, floor, champion, alias, says):
    got, reason, above = decide(
        metric=metric,
        candidate_score=score,
        higher_is_better=higher,
        floor=floor,
        margin=0.0,
        champion_version=None if champion is None else "1",
        champion_score=champion,
    )
    assert (got, above) == (alias, alias is not None)
    assert says in reason, reason
    assert reason.endswith(": never champion") is (alias is None)


def test_under_the_floor_a_model_is_registered_without_alias_and_the_run_says_why(mlflow_uri):
    import mlflow
    from mlflow.tracking import MlflowClient

    mlflow.set_tracking_uri(mlflow_uri)
    mlflow.set_experiment("floor-test")
    client = MlflowClient(mlflow_uri)
    floor = Floor.majority_class(rate=0.6, margin=0.0)

    tags = {"bigdeep.data.identity": "digits"}
    # under the floor (first model), over it, under it again
    runs, decisions = zip(
        *(_log_and_register(client, k, tags, floor=floor) for k in (0.5, 0.8, 0.55)), strict=True
    )
    assert [d.alias for d in decisions] == [None, CHAMPION, None]
    assert [d.version for d in decisions] == ["1", "2", "3"]  # registered all the same
    assert decisions[0].identity == "digits" and decisions[0].floor_score == pytest.approx(0.6)
    assert str(client.get_model_version_by_alias("m", CHAMPION).version) == "2"
    assert not client.get_model_version("m", "3").aliases  # not even challenger
    with pytest.raises(Exception, match="challenger"):
        client.get_model_version_by_alias("m", CHALLENGER)

    first = client.get_run(runs[0])
    assert first.data.tags["bigdeep.registry.decision"] == "m v1 -> no alias"
    assert first.data.tags["bigdeep.registry.floor"] == "failed"
    assert first.data.tags["bigdeep.registry.reason"] == (
        "k 0.5 does not beat the sanity floor 0.6 (majority-class rate 0.6, "
        "registry.cnn_floor_margin=0; > is better): never champion"
    )
    assert first.data.metrics["registry.floor"] == pytest.approx(0.6)
    assert client.get_model_version("m", "1").tags["bigdeep.registry.floor"] == "failed"
    assert decisions[0].summary.startswith("m v1 -> no alias: k 0.5 does not beat")
    assert client.get_run(runs[1]).data.tags["bigdeep.registry.decision"] == "m v2 -> champion"


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


def test_a_reference_to_nothing_says_what_exists_without_a_traceback(mlflow_uri, tmp_path):
    """`bigdeep lineage bigdeep-rnn@champion` when the only RNN stayed under the floor was an
    MlflowException traceback; it now names the versions and their aliases (exit 1), and a
    malformed reference is a usage error (exit 2)."""
    import subprocess

    from mlflow.tracking import MlflowClient

    from bigdeep.errors import BigdeepError, UsageError

    client = MlflowClient(mlflow_uri)
    run_id = client.create_run(client.create_experiment("refs")).info.run_id
    client.create_registered_model("m")
    for _ in range(2):
        client.create_model_version("m", source=f"runs:/{run_id}/model", run_id=run_id)
    client.set_registered_model_alias("m", CHAMPION, "1")

    assert lineage(client, "m@champion")["model"] == "m v1"
    with pytest.raises(BigdeepError) as alias:
        lineage(client, "m@challenger")
    assert str(alias.value).startswith(
        "m has no version with the alias 'challenger' (it has v1 (champion), v2 (no alias))."
    )
    with pytest.raises(BigdeepError, match=r"^m has no version 7 \(it has v1 \(champion\), v2"):
        lineage(client, "m@7")
    with pytest.raises(BigdeepError, match=r"^no registered model named 'nope' .*registered: m\)"):
        lineage(client, "nope@champion")
    with pytest.raises(UsageError, match="expected <model>@<alias|version>"):
        lineage(client, "m@")

    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{ROOT}"}
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    cli = [sys.executable, "-m", "bigdeep.cli", "lineage"]
    proc = subprocess.run(
        [*cli, "m@challenger"], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "bigdeep lineage: error: m has no version with the alias 'challenger'" in proc.stderr
    proc = subprocess.run([*cli, "m"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
