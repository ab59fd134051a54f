"""Where scheduled runs execute: a Prefect process work pool, the pipeline deployed on it, workers.

    bigdeep servers up                                   # a lasting Prefect server
    bigdeep schedule --pool local --cron "0 3 * * *"     # the deployment (returns at once)
    bigdeep worker --pool local                          # on each machine that may run it

The deployment reads the flow from the project folder itself (`flow.from_source(<project>)`:
no image, no git clone), so a worker runs the checkout the deployment was made from. Its runs
are one at a time: a deployment concurrency limit of 1 with the ENQUEUE strategy, so a run
triggered while another is in progress waits (AwaitingConcurrencySlot) instead of overlapping,
whichever worker picks it up; the project's run lock (bigdeep.runlock) stays as the second line.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from uuid import UUID

from bigdeep.errors import BigdeepError, UsageError

POOL_TYPE = "process"
ENTRYPOINT = "flows/pipeline.py:pipeline"


class PoolError(BigdeepError):
    """A work pool that cannot take the pipeline (another type); the message says what to do."""


def require_server() -> str:
    """PREFECT_API_URL, which must answer: a work pool lives on a lasting Prefect server."""
    from bigdeep.orchestration import PrefectUnavailable
    from bigdeep.servers import healthy

    url = os.environ.get("PREFECT_API_URL")
    if not url:
        raise PrefectUnavailable(
            "no Prefect server: a work pool and its workers need a lasting one. Start it with "
            "`bigdeep servers up` in the project, or set PREFECT_API_URL to a running server."
        )
    if not healthy(url.rstrip("/") + "/health"):
        raise PrefectUnavailable(
            f"the Prefect server at PREFECT_API_URL={url} does not answer. Start it "
            "(`bigdeep servers up`) or point PREFECT_API_URL at a running server."
        )
    return url


def ensure_pool(name: str) -> bool:
    """Create the process work pool `name` unless it exists; True when it was created."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound
    from prefect.workers.process import ProcessWorker

    with get_client(sync_client=True) as client:
        try:
            pool = client.read_work_pool(name)
        except ObjectNotFound:
            template = ProcessWorker.get_default_base_job_template()
            client.create_work_pool(
                WorkPoolCreate(name=name, type=POOL_TYPE, base_job_template=template)
            )
            return True
    if pool.type != POOL_TYPE:
        raise PoolError(
            f"work pool {name!r} exists with type {pool.type!r}; the pipeline runs on a "
            f"{POOL_TYPE!r} pool (a worker on a machine with the project). Choose another "
            f"--pool name, or delete it: prefect work-pool delete {name}"
        )
    return False


def deploy(
    project: Path,
    pool: str,
    name: str,
    cron: str | None,
    datasets: list[str],
    overrides: dict[str, str] | None = None,
) -> UUID:
    """The pipeline as deployment `name` on `pool`, code from `project`; at most one run at a
    time (the rest queue). Idempotent: deploying again updates the same deployment."""
    from prefect import flow
    from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy

    project = Path(project).resolve()
    if not (project / ENTRYPOINT.split(":")[0]).is_file():
        raise UsageError(
            f"{project}: no {ENTRYPOINT.split(':')[0]}; run `bigdeep schedule` in the project "
            "folder or pass --project"
        )
    ensure_pool(pool)
    source = flow.from_source(source=str(project), entrypoint=ENTRYPOINT)
    return source.deploy(
        name=name,
        work_pool_name=pool,
        cron=cron,
        parameters={
            "project_dir": str(project),
            "datasets": datasets,
            "overrides": overrides or {},
        },
        concurrency_limit=ConcurrencyLimitConfig(
            limit=1, collision_strategy=ConcurrencyLimitStrategy.ENQUEUE
        ),
        job_variables={"working_dir": str(project)},
        tags=["bigdeep"],
        print_next_steps=False,
    )


def worker_command(pool: str, name: str | None = None) -> list[str]:
    """`prefect worker start` for a process worker on `pool`, with this interpreter."""
    cmd = [sys.executable, "-m", "prefect", "worker", "start", "--pool", pool]
    cmd += ["--type", POOL_TYPE]
    return cmd + (["--name", name] if name else [])


def run_worker(pool: str, name: str | None = None) -> int:
    """Run a worker in its own process group until it ends or Ctrl-C; then stop the whole group
    (the worker and the flow runs it started). Returns the worker's exit status (130 on Ctrl-C).
    """
    from bigdeep.env import apply_quiet_env
    from bigdeep.servers import interruptible

    env = apply_quiet_env(dict(os.environ))
    proc = subprocess.Popen(worker_command(pool, name), env=env, start_new_session=True)

    def stop() -> None:
        if proc.poll() is None:  # never leave the worker behind
            stop_worker(proc)

    with interruptible(stop):  # Ctrl-C and SIGTERM (a supervisor, `kill`) end the wait
        try:
            return proc.wait()
        except KeyboardInterrupt:
            return 130


def stop_worker(proc: subprocess.Popen, timeout: float = 20.0) -> None:
    """SIGTERM the worker's process group, SIGKILL what stays; then the flow runs it started in
    sessions of their own (Prefect isolates them): the next run marks those CRASHED."""
    import psutil

    from bigdeep.servers import stop_group

    try:
        children = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        children = []
    stop_group(proc.pid, timeout)
    proc.wait()
    for child in children:
        try:
            child.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(children, timeout=10)
    for child in alive:
        try:
            child.kill()
        except psutil.NoSuchProcess:
            pass
