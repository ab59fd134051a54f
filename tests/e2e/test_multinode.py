"""One training over two "nodes" on this machine, launched as docs/multinode.md says: two
checkouts that share no path, the second one's data pulled from an S3 object store (moto),
`torchrun --nnodes 2` started in each. One MLflow run, made by node 0, records num_nodes 2;
node 1 trains but writes no outputs."""

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

from bigdeep.servers import free_port, healthy
from tests.e2e.helpers import SMALL, deep_update, make_project, run

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

TWO_NODES = {
    "train": {
        "trainer": {"accelerator": "cpu", "devices": 1, "num_nodes": 2, "strategy": "ddp"},
        "rnn": {"epochs": 1},
    }
}
TRAIN = (
    "bigdeep.cli train rnn --data data/processed/series --out models/rnn --metrics "
    "metrics/rnn.json --plots reports/train/rnn --checkpoints checkpoints/rnn "
    "--report reports/quality/series.json"
).split()


@pytest.fixture
def s3(tmp_path, monkeypatch):
    """An S3 service (moto) on 127.0.0.1 with one bucket; its URL. Stopped after."""
    port = free_port()
    for key, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(key, value)
    with open(tmp_path / "moto.log", "wb") as log:
        proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while not healthy(url + "/moto-api/"):
            assert proc.poll() is None, (tmp_path / "moto.log").read_text()
            assert time.monotonic() < deadline, "moto did not start in 120 s"
            time.sleep(0.5)
        import boto3

        boto3.client("s3", endpoint_url=url).create_bucket(Bucket="bigdeep")
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def test_two_nodes_train_one_model_with_data_from_the_object_store(s3, tmp_path, mlflow_uri):
    from mlflow.tracking import MlflowClient

    dvc = [sys.executable, "-m", "dvc"]
    node0 = make_project(
        tmp_path / "node0", deep_update(yaml.safe_load(yaml.safe_dump(SMALL)), TWO_NODES)
    )
    run([*dvc, "remote", "add", "-d", "store", "s3://bigdeep/dvc"], node0)
    run([*dvc, "remote", "modify", "store", "endpointurl", s3], node0)
    run([*dvc, "repro", "prepare@series"], node0)
    run([*dvc, "push", "data/processed/series"], node0)
    run(["git", "add", "-A"], node0)
    run(["git", "commit", "-q", "-m", "series data, S3 remote"], node0)

    node1 = tmp_path / "node1"  # its own checkout and cache: only git and the store in common
    run(["git", "clone", "-q", str(node0), str(node1)], tmp_path)
    assert not (node1 / "data" / "processed" / "series").exists()
    said = run([*dvc, "pull", "data/processed/series"], node1)
    assert "A\tdata/processed/series" in said or "added" in said, said
    assert (node1 / "data" / "processed" / "series").is_dir()

    port = free_port()
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2"]
    torchrun += ["--nproc-per-node", "1", "--master-addr", "127.0.0.1", "--master-port", str(port)]
    procs = [
        subprocess.Popen(
            [*torchrun, "--node-rank", str(rank), "-m", *TRAIN],
            cwd=node,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        for rank, node in enumerate((node0, node1))
    ]
    try:
        outs = [p.communicate(timeout=900)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
    assert [p.returncode for p in procs] == [0, 0], "\n\n".join(outs)
    # one process group of two, node 0's process is global rank 0
    assert "GLOBAL_RANK: 0, MEMBER: 1/2" in outs[0], outs[0]
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in outs[1], outs[1]

    assert json.loads((node0 / "metrics" / "rnn.json").read_text())["test_mae"] > 0
    assert not (node1 / "metrics" / "rnn.json").exists()  # a peer trains, it writes nothing
    assert not (node1 / "models" / "rnn").exists()
    client = MlflowClient(mlflow_uri)
    exp = client.get_experiment_by_name("bigdeep")
    (only,) = client.search_runs([exp.experiment_id])
    assert only.info.status == "FINISHED"
    assert only.data.params["trainer.num_nodes"] == "2"
    assert only.data.params["trainer.strategy"] == "ddp"
