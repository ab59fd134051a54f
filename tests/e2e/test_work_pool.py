"""A process work pool with two workers on this machine: `bigdeep schedule --pool` deploys the
pipeline, two runs triggered together execute one after the other (whichever worker takes
them), both Completed, and the MLflow store holds exactly the two trainings they asked for."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml

from tests.e2e.helpers import SMALL, deep_update, make_project

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

POOL, DEPLOYMENT = "bigdeep-test-pool", "bigdeep-pipeline/twice"


def _start_worker(project: Path, env: dict, name: str, log: Path) -> subprocess.Popen:
    with open(log, "wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "bigdeep.cli", "worker", "--pool", POOL, "--name", name],
            cwd=project,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _kill_tree(proc: subprocess.Popen) -> None:
    try:
        tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for p in tree:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(tree, timeout=10)


def test_two_triggered_runs_on_a_pool_with_two_workers_run_one_after_the_other(
    prefect_api, tmp_path, mlflow_uri
):
    from mlflow.tracking import MlflowClient
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.objects import StateType
    from prefect.settings import PREFECT_API_URL, temporary_settings

    url, _ = prefect_api
    project = make_project(
        tmp_path / "project", deep_update(yaml.safe_load(yaml.safe_dump(SMALL)), {})
    )
    env = dict(os.environ, PREFECT_API_URL=url, PREFECT_WORKER_QUERY_SECONDS="2")
    bigdeep = [sys.executable, "-m", "bigdeep.cli"]
    for _ in range(2):  # deploying again updates the same deployment
        proc = subprocess.run(
            [*bigdeep, "schedule", "--pool", POOL, "--name", "twice", "--cron", "none"]
            + ["--datasets", "series"],
            cwd=project,
            env=env,
            capture_output=True,
            text=True,
        )
        said = proc.stdout + proc.stderr
        assert proc.returncode == 0, said
        assert f"on work pool '{POOL}'" in said and "one run at a time" in said, said

    workers = [_start_worker(project, env, f"w{i}", tmp_path / f"w{i}.log") for i in (1, 2)]
    try:
        with temporary_settings({PREFECT_API_URL: url}), get_client(sync_client=True) as client:
            assert [d.name for d in client.read_deployments()] == ["twice"]
            deployment = client.read_deployment_by_name(DEPLOYMENT)
            assert deployment.global_concurrency_limit.limit == 1
            assert deployment.concurrency_options.collision_strategy == "ENQUEUE"
            ids = [  # each run its own epochs: both train, and MLflow tells them apart
                client.create_flow_run_from_deployment(
                    deployment.id, parameters={"overrides": {"train.rnn.epochs": epochs}}
                ).id
                for epochs in ("1", "2")
            ]
            deadline = time.monotonic() + 900
            while True:
                runs = [client.read_flow_run(i) for i in ids]
                if all(r.state.is_final() for r in runs):
                    break
                for w in workers:
                    assert w.poll() is None, (tmp_path / "w1.log").read_text()
                assert time.monotonic() < deadline, [r.state for r in runs]
                time.sleep(2)
            histories = {i: [s.name for s in client.read_flow_run_states(i)] for i in ids}
        logs = "".join((tmp_path / f"w{i}.log").read_text() for i in (1, 2))
        assert [r.state.type for r in runs] == [StateType.COMPLETED] * 2, logs
        first, second = sorted(runs, key=lambda r: r.start_time)
        assert first.end_time <= second.start_time, (first, second)  # never both running
        # the later one was held back by the deployment's limit, not only by the run lock
        assert "AwaitingConcurrencySlot" in histories[second.id], histories

        # exactly: one training per flow run, with its own epochs; one quality record (the
        # data was validated once, by the first run; the second found it unchanged)
        client = MlflowClient(mlflow_uri)
        runs_by_experiment = {
            e.name: client.search_runs([e.experiment_id]) for e in client.search_experiments()
        }
        trained = {
            r.data.tags["bigdeep.prefect_flow_run_id"]: (r.data.params["rnn.epochs"], r.info.status)
            for r in runs_by_experiment.pop("bigdeep")
        }
        assert trained == {str(ids[0]): ("1", "FINISHED"), str(ids[1]): ("2", "FINISHED")}
        quality = runs_by_experiment.pop("bigdeep-quality")
        assert [r.data.tags["bigdeep.prefect_flow_run_id"] for r in quality] == [str(first.id)]
        assert not any(runs_by_experiment.values()), runs_by_experiment

        for w in workers:  # Ctrl-C: the worker and everything it started stop
            children = psutil.Process(w.pid).children(recursive=True)
            assert children, "the worker process did not start `prefect worker`"
            w.send_signal(signal.SIGINT)
            assert w.wait(timeout=60) == 130
            assert not [c for c in children if c.is_running() and c.status() != "zombie"]
    finally:
        for w in workers:
            _kill_tree(w)
