"""`bigdeep run` against a real Prefect server on 127.0.0.1: a run reuses the server that
answers, a SIGKILLed run is marked CRASHED by the next one, and a server killed mid-run costs
only a warning (the summary prints, the process exits, the work is kept)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from bigdeep.servers import free_port
from tests.e2e.helpers import SMALL, deep_update, make_project, run

pytestmark = pytest.mark.e2e


def _client(url: str):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: url}):
        return get_client(sync_client=True)


def _runs(url: str, tag: str) -> list:
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags

    with _client(url) as client:
        return client.read_flow_runs(
            flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[tag]))
        )


# A run of the same project in its own process: claims its flow run (PID tag), reaps dead ones,
# says so on stdout, then either works on (sleeps) or ends.
CLAIMING_FLOW = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from prefect import flow
    from prefect.runtime import flow_run
    from bigdeep.orchestration import claim_and_reap

    @flow(name="bigdeep-pipeline")
    def pipeline(project: str, sleep: float) -> None:
        crashed = claim_and_reap(Path(project), flow_run.id)
        print("claimed", flow_run.id, "crashed", ",".join(crashed), flush=True)
        time.sleep(sleep)

    pipeline(sys.argv[1], float(sys.argv[2]))
    """
)


def _start_run(project: Path, url: str, sleep: float) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", CLAIMING_FLOW, str(project), str(sleep)],
        env=dict(os.environ, PREFECT_API_URL=url),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    for line in proc.stdout:
        if line.startswith("claimed"):
            return proc, line
    raise AssertionError(f"the run exited ({proc.wait()}) before claiming its flow run")


def test_a_killed_run_is_marked_crashed_by_the_next_run(prefect_api, tmp_path):
    from prefect.client.schemas.objects import StateType

    from bigdeep.orchestration import project_tag

    url, _ = prefect_api
    project = tmp_path / "project"
    project.mkdir()
    killed, line = _start_run(project, url, sleep=600)
    killed_id = line.split()[1]
    alive, _ = _start_run(project, url, sleep=600)  # a run still at work: left alone
    try:
        os.killpg(killed.pid, signal.SIGKILL)
        killed.wait()
        states = {str(r.id): r.state.type for r in _runs(url, project_tag(project))}
        assert states[killed_id] == StateType.RUNNING  # what Prefect believes without help

        nxt, line = _start_run(project, url, sleep=0)
        assert nxt.wait(timeout=300) == 0
        assert line.split()[3:] == [killed_id], line  # "claimed <id> crashed <ids>"

        runs = {str(r.id): r for r in _runs(url, project_tag(project))}
        assert runs[killed_id].state.type == StateType.CRASHED
        assert f"PID {killed.pid}" in runs[killed_id].state.message
        others = [r for i, r in runs.items() if i != killed_id]
        assert sorted(r.state.type for r in others) == sorted(
            [StateType.RUNNING, StateType.COMPLETED]  # the live run, the reaping run
        )
    finally:
        os.killpg(alive.pid, signal.SIGKILL)
        alive.wait()


def test_run_reuses_the_recorded_server_and_passes_over_a_dead_one(
    prefect_api, tmp_path, monkeypatch
):
    from bigdeep import cli, orchestration

    url, _ = prefect_api
    state = tmp_path / ".bigdeep" / "servers"
    state.mkdir(parents=True)
    (state / "servers.json").write_text(
        f'{{"prefect": {{"url": "{url}", "pid": 1, "health": "{url}/health"}}}}'
    )
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cli._use_servers(state)
    assert orchestration.connect(None) == f"Prefect: server at {url}"
    assert os.environ["PREFECT_API_URL"] == url

    dead = f"http://127.0.0.1:{free_port()}/api"
    monkeypatch.setenv("PREFECT_API_URL", dead)  # as if recorded by `servers up`, now down
    said = orchestration.connect(None)
    assert said.startswith("Prefect: temporary server") and dead in said
    assert "PREFECT_API_URL" not in os.environ
    assert os.environ[orchestration.STARTUP_TIMEOUT_ENV] == "120"

    monkeypatch.setenv("PREFECT_API_URL", dead)  # the user's own choice: not silently replaced
    with pytest.raises(orchestration.PrefectUnavailable, match="does not answer"):
        orchestration.connect(dead)


@pytest.mark.slow
def test_prefect_server_killed_mid_run_costs_a_warning(prefect_api, tmp_path, mlflow_uri):
    from prefect.client.schemas.objects import StateType

    from bigdeep.orchestration import project_tag

    url, server = prefect_api
    project = make_project(
        tmp_path / "project", deep_update(yaml.safe_load(yaml.safe_dump(SMALL)), {})
    )
    env = dict(os.environ, PREFECT_API_URL=url)
    bigdeep = [sys.executable, "-m", "bigdeep.cli", "run", "--datasets", "series"]
    proc = subprocess.Popen(
        bigdeep, cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 300
    while not _runs(url, project_tag(project)):  # the flow run is claimed: the work starts
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.5)
    (flow_run,) = _runs(url, project_tag(project))
    assert flow_run.state.type == StateType.RUNNING
    os.killpg(server.pid, signal.SIGKILL)
    server.wait()

    out, err = proc.communicate(timeout=900)  # hung for over 5 min before
    assert proc.returncode == 0, out + err
    said = out + err  # the summary goes through Prefect's logger (log_prints): stderr
    assert "## series: gate PASSED" in said and "train_rnn ran" in said, said
    assert "warning: Prefect API unavailable, the summary artifact not recorded" in err, err
    assert "the Prefect server stopped answering during the run" in err, err
    assert "Traceback" not in said, said
    assert (project / "metrics" / "rnn.json").exists()
    status = run([sys.executable, "-m", "dvc", "status", "train_rnn"], project)
    assert "up to date" in status, status
