"""Real Prefect + MLflow servers on 127.0.0.1 (SQLite, then PostgreSQL): a served deployment
runs the pipeline, registers a champion with lineage to dvc.lock, registers nothing when
nothing changed, keeps a worse model as challenger, and serializes concurrent runs."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.e2e.helpers import lock_md5, make_project

pytestmark = pytest.mark.e2e

DEPLOYMENT = "bigdeep-pipeline/scheduled"
# the images half of the pipeline is enough to exercise the registry; it keeps the test short
SERVED = {"data": {"images": {"per_class": 30}}, "train": {"cnn": {"epochs": 3, "batch_size": 32}}}


@pytest.fixture
def servers(tmp_path, request):
    from bigdeep import servers as srv

    postgres = request.getfixturevalue("postgres_url") if request.param == "postgres" else None
    state = tmp_path / "servers"
    started = srv.up(state, postgres=postgres)
    try:
        yield started
    finally:
        srv.down(state)
        assert srv.status(state) == {}


def serve(project: Path, servers) -> subprocess.Popen:
    env = dict(
        os.environ,
        PREFECT_API_URL=servers["prefect"].url,
        MLFLOW_TRACKING_URI=servers["mlflow"].url,
    )
    cmd = [
        sys.executable,
        "-m",
        "bigdeep.cli",
        "schedule",
        "--cron",
        "0 3 * * *",
        "--datasets",
        "images",
        "--project",
        str(project),
    ]
    log = open(project.parent / "serve.log", "wb")  # noqa: SIM115 - a pipe nobody reads would fill and block it
    return subprocess.Popen(
        cmd, cwd=project, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )


def trigger(servers, wait: bool = True, timeout: float = 600, parameters: dict | None = None):
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: servers["prefect"].url}):
        deadline = time.monotonic() + 60
        while True:  # the served process registers the deployment a moment after it starts
            try:
                return run_deployment(
                    DEPLOYMENT,
                    timeout=timeout if wait else 0,
                    as_subflow=False,
                    parameters=parameters,
                )
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(1)


def wait_final(servers, flow_run_id, timeout: float = 600):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with (
        temporary_settings({PREFECT_API_URL: servers["prefect"].url}),
        get_client(sync_client=True) as client,
    ):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            run = client.read_flow_run(flow_run_id)
            if run.state and run.state.is_final():
                return run
            time.sleep(2)
    raise AssertionError(f"flow run {flow_run_id} not finished in {timeout} s")


def versions(client, name: str) -> list:
    return sorted(client.search_model_versions(f"name='{name}'"), key=lambda v: int(v.version))


@pytest.mark.parametrize("servers", ["sqlite", "postgres"], indirect=True)
def test_scheduled_deployment_registers_champion_with_lineage(servers, tmp_path):
    from mlflow.tracking import MlflowClient

    project = make_project(tmp_path / "project", SERVED)
    worker = serve(project, servers)
    try:
        first = trigger(servers)
        assert first.state.is_completed(), first.state
        client = MlflowClient(servers["mlflow"].url)
        champion = client.get_model_version_by_alias("bigdeep-cnn", "champion")
        run = client.get_run(champion.run_id)
        assert run.data.tags["bigdeep.data.images.md5"] == lock_md5(project, "data/raw/images")
        assert run.data.tags["bigdeep.data.images.processed_md5"] == lock_md5(
            project, "data/processed/images"
        )
        assert run.data.tags["bigdeep.prefect_flow_run_id"] == str(first.id)
        assert run.data.tags["bigdeep.git.commit"] != "none"

        # nothing new: every stage skipped, nothing registered
        second = trigger(servers)
        assert second.state.is_completed(), second.state
        assert len(versions(client, "bigdeep-cnn")) == 1

        # a deliberately worse model (one epoch, one batch of 32 of 210 images) stays challenger
        # (no alias at all if it is under the sanity floor, ~0.1 accuracy on 10 classes);
        # the run's parameter overrides go through the deployment into params.yaml
        worse = {"train.cnn.epochs": "1", "train.trainer.limit_train_batches": "1"}
        third = trigger(servers, parameters={"overrides": worse})
        assert third.state.is_completed(), third.state
        vs = versions(client, "bigdeep-cnn")
        assert len(vs) == 2
        assert (
            client.get_model_version_by_alias("bigdeep-cnn", "champion").version == champion.version
        )
        challenger_run = client.get_run(vs[-1].run_id)
        if challenger_run.data.tags["bigdeep.registry.floor"] == "passed":
            challenger = client.get_model_version_by_alias("bigdeep-cnn", "challenger")
            assert challenger.version == vs[-1].version
        else:
            assert not vs[-1].aliases
        assert (
            challenger_run.data.metrics["registry.candidate_score"]
            <= challenger_run.data.metrics["registry.champion_score"]
        )

        if servers["mlflow"].backend.startswith("sqlite"):
            # what a person sees: the experiment, the run's metric chart, the champion alias
            from tests.e2e.browser import check_mlflow_ui

            exp = client.get_experiment_by_name("bigdeep")
            seen = check_mlflow_ui(
                servers["mlflow"].url, exp.experiment_id, "train_cnn", "bigdeep-cnn", tmp_path
            )
            assert seen["run"].endswith("/model-metrics")
            assert seen["alias"].replace("\xa0", " ") == "@ champion"

        if servers["mlflow"].backend.startswith("postgresql"):
            # two runs at once: the deployment's limit serializes them; one trains, one skips
            params = yaml.safe_load((project / "params.yaml").read_text())
            assert params["train"]["cnn"]["epochs"] == 1  # the override landed in the file
            params["train"]["cnn"]["epochs"] = 2
            (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
            a, b = trigger(servers, wait=False), trigger(servers, wait=False)
            a, b = wait_final(servers, a.id), wait_final(servers, b.id)
            assert a.state.is_completed() and b.state.is_completed(), (a.state, b.state)
            spans = sorted([(a.start_time, a.end_time), (b.start_time, b.end_time)])
            assert spans[0][1] <= spans[1][0], f"runs overlapped: {spans}"
            assert len(versions(client, "bigdeep-cnn")) == 3
            exp = client.get_experiment_by_name("bigdeep")
            runs = client.search_runs([exp.experiment_id])
            assert len(runs) == 3 and all(r.info.status == "FINISHED" for r in runs)
    finally:
        os.killpg(worker.pid, 15)
        worker.wait(timeout=30)


@pytest.mark.slow
def test_up_restarts_only_what_is_down_on_the_project_store_and_down_leaves_no_process(
    tmp_path, monkeypatch
):
    """MLflow killed (its whole group): `servers up` from the CLI starts it again on the
    project's own store (params.yaml's sqlite:///mlflow.db) and leaves the healthy Prefect
    alone; `servers down` leaves no process of either group."""
    import signal

    from bigdeep import servers as srv
    from bigdeep.config import MlflowSettings
    from bigdeep.tracking import describe_store

    (tmp_path / "params.yaml").write_text("seed: 0\n")  # the default mlflow section
    state = tmp_path / "servers"
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    first = srv.up(state, backend_store_uri=store, artifacts=str(tmp_path / "mlartifacts"))
    groups = {name: s.pid for name, s in first.items()}
    try:
        assert first["mlflow"].backend == store and not first["mlflow"].reused
        os.killpg(groups["mlflow"], signal.SIGKILL)
        while srv.group_members(groups["mlflow"]):
            srv._alive(groups["mlflow"])  # reap our child
            time.sleep(0.1)
        assert srv.status(state)["mlflow"]["healthy"] is False

        ports = [f"--{n}-port={s.port}" for n, s in first.items()]
        up = [sys.executable, "-m", "bigdeep.cli", "servers", "up", "--state", str(state)]
        shown = subprocess.run(
            [*up, *ports, "--timeout", "300"], cwd=tmp_path, capture_output=True, text=True
        )
        assert shown.returncode == 0, shown.stderr[-3000:]
        lines = {line.split()[0]: line for line in shown.stdout.splitlines()}
        assert f"pid {groups['prefect']}  already up" in lines["prefect"]
        assert "started" in lines["mlflow"] and f"backend {store}  " in lines["mlflow"]
        second = srv.status(state)
        assert second["prefect"]["pid"] == groups["prefect"]
        assert second["mlflow"]["pid"] != groups["mlflow"] and second["mlflow"]["healthy"]
        groups["mlflow-restarted"] = second["mlflow"]["pid"]

        monkeypatch.setenv("MLFLOW_TRACKING_URI", second["mlflow"]["url"])
        assert describe_store(MlflowSettings(), state) == (
            f"MLflow store: {second['mlflow']['url']} (bigdeep servers, serving {store})"
        )
    finally:
        stopped = srv.down(state)
    assert sorted(stopped) == ["mlflow", "prefect"]
    assert {name: srv.group_members(pid) for name, pid in groups.items()} == {
        name: [] for name in groups
    }
