"""How `bigdeep run` talks to Prefect: which server, runs that died, calls that must not sink a run.

- `connect`: the local server when one answers (PREFECT_API_URL, or the one `bigdeep servers up`
  recorded), else Prefect's temporary server with a start-up limit that holds on a busy machine.
- `claim_and_reap`: tag the current flow run with this project and this process (PID and start
  time), and mark this project's RUNNING flow runs whose process is gone CRASHED.
- `best_effort`: a Prefect API call made after the work (artifacts, state) warns, never fails.
- `mark`: `BIGDEEP_PROFILE=1` prints where a run's time goes (`profile:` lines on stderr).

Nothing here imports Prefect at module level: `bigdeep` commands that need no Prefect stay fast.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from bigdeep.errors import BigdeepError

STARTUP_TIMEOUT_ENV = "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"
DEFAULT_STARTUP_TIMEOUT_S = 120  # Prefect's 20 s is too short on a loaded 2-core machine
# Prefect retries a call to a server it reached before 5 times, waiting 2, 4, .. 32 s: a minute
# per call when the server is gone. 3 retries (14 s) still ride out a server restart.
CLIENT_RETRIES = 3
DRAIN_TIMEOUT_S = 10.0
_STARTED = time.perf_counter()
_OUTCOME: dict[str, bool | None] = {}


class PrefectUnavailable(BigdeepError):
    """No Prefect server could be reached or started; the message says what to do."""


def mark(label: str) -> None:
    """`profile: <seconds since start> <label>` on stderr when BIGDEEP_PROFILE is set."""
    if os.environ.get("BIGDEEP_PROFILE"):
        print(
            f"profile: {time.perf_counter() - _STARTED:7.2f} s  {label}",
            file=sys.stderr,
            flush=True,
        )


def _answers(api_url: str) -> bool:
    from bigdeep.servers import healthy

    return healthy(api_url.rstrip("/") + "/health")


def connect(user_url: str | None) -> str:
    """Point this process at a Prefect server; returns a line saying which.

    user_url: PREFECT_API_URL as the user set it (before the recorded servers were applied).
    A URL the user gave must answer; a recorded server that is down is passed over.
    """
    os.environ.setdefault("PREFECT_CLIENT_MAX_RETRIES", str(CLIENT_RETRIES))
    url = os.environ.get("PREFECT_API_URL")
    if url and _answers(url):
        return f"Prefect: server at {url}"
    if url and url == user_url:
        raise PrefectUnavailable(
            f"the Prefect server at PREFECT_API_URL={url} does not answer. Start it "
            "(`bigdeep servers up`), or unset PREFECT_API_URL to let the run start a temporary one."
        )
    note = f" (the recorded server at {url} does not answer)" if url else ""
    os.environ.pop("PREFECT_API_URL", None)
    os.environ.setdefault(STARTUP_TIMEOUT_ENV, str(DEFAULT_STARTUP_TIMEOUT_S))
    return f"Prefect: temporary server{note}; `bigdeep servers up` once makes runs start faster"


def startup_failure(error: BaseException) -> PrefectUnavailable | None:
    """The plain message for Prefect's temporary server failing to start; None for other errors."""
    if "ephemeral Prefect API server" not in str(error):
        return None
    limit = os.environ.get(STARTUP_TIMEOUT_ENV, DEFAULT_STARTUP_TIMEOUT_S)
    return PrefectUnavailable(
        f"Prefect's temporary server did not start within {limit} s (a busy machine, or a "
        "broken Prefect database in PREFECT_HOME). Nothing ran. Either start a lasting server "
        "once with `bigdeep servers up` (every later run reuses it and starts in seconds), or "
        f"allow more time: `{STARTUP_TIMEOUT_ENV}=300 bigdeep run`."
    )


# --- flow runs whose process died ---------------------------------------------------------------


def project_tag(project: Path) -> str:
    """One tag per checkout on this host: the runs a later run of the same project may reap."""
    where = f"{socket.gethostname()}:{Path(project).resolve()}"
    return "bigdeep-project:" + hashlib.sha256(where.encode()).hexdigest()[:12]


def _process_start(pid: int) -> str:
    """The process's start time in clock ticks since boot (Linux), "" where unknown.

    With the PID it names one process: a PID reused by a later process has another start time.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rsplit(")", 1)[1].split()[19]  # field 22 of proc(5), counted after "(comm)"


def pid_tag(pid: int) -> str:
    return f"bigdeep-pid:{socket.gethostname()}:{pid}:{_process_start(pid)}"


def _process_alive(tag: str) -> bool:
    host, pid, started = tag.removeprefix("bigdeep-pid:").rsplit(":", 2)
    if host != socket.gethostname():
        return True  # another machine's process: not ours to judge
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return not started or _process_start(int(pid)) in ("", started)


def claim_and_reap(project: Path, flow_run_id: str) -> list[str]:
    """Tag `flow_run_id` with this project and process; mark dead runs CRASHED. Their ids."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
        FlowRunFilterTags,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.states import Crashed

    tag = project_tag(project)
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(flow_run_id)
        client.update_flow_run(run.id, tags=sorted({*run.tags, tag, pid_tag(os.getpid())}))
        live = FlowRunFilterStateType(any_=[StateType.RUNNING, StateType.PENDING])
        others = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                tags=FlowRunFilterTags(all_=[tag]), state=FlowRunFilterState(type=live)
            )
        )
        crashed = []
        for other in others:
            pids = [t for t in other.tags if t.startswith("bigdeep-pid:")]
            if other.id == run.id or not pids or _process_alive(pids[0]):
                continue
            pid = pids[0].split(":")[2]
            client.set_flow_run_state(
                other.id,
                Crashed(
                    message=f"its process (PID {pid}) ended without reporting: killed, "
                    f"or its machine stopped; marked by flow run {run.name}"
                ),
                force=True,
            )
            crashed.append(str(other.id))
    return crashed


# --- Prefect API calls that must not sink a finished run ----------------------------------------


def work_done(ok: bool | None) -> None:
    """The flow calls this once its work is done and its summary printed (None: at its start)."""
    _OUTCOME["ok"] = ok


def work_outcome() -> bool | None:
    """True / False once the flow's work is done (succeeded or not); None before."""
    return _OUTCOME.get("ok")


class _NoOutageTraceback(logging.Filter):
    """Prefect logs a lost server as a 40-line httpx traceback: keep its one-line message."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if error is not None and "Connect" in type(error).__name__:  # httpx.ConnectError & co
            record.exc_info, record.exc_text = None, None
        return True


def quiet_outage_tracebacks() -> None:
    """Flow-run messages about a Prefect server that stopped answering: one line, no traceback."""
    logging.getLogger("prefect.flow_runs").addFilter(_NoOutageTraceback())


def best_effort(what: str, call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run a Prefect API call; when the API fails, warn (what was lost, why) and return None."""
    try:
        if not api_reachable():  # a dead server would cost a minute of retries per call
            raise ConnectionError("the server does not answer")
        return call(*args, **kwargs)
    except Exception as e:  # noqa: BLE001 - an outage must not undo work that is done
        reason = str(e).splitlines()[0] if str(e) else ""
        print(
            f"warning: Prefect API unavailable, {what} not recorded ({type(e).__name__}: {reason})",
            file=sys.stderr,
            flush=True,
        )
        return None


def api_reachable() -> bool:
    """Whether the Prefect API this process uses still answers (the temporary one counts)."""
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    if not url:
        servers = [s for s in _temporary_servers() if s.running]
        return bool(servers) and _answers(servers[0].api_url)
    return _answers(url)


def _temporary_servers() -> list:
    """Prefect's temporary servers started by this process (none unless its module is loaded:
    importing it, the whole Prefect server, takes seconds)."""
    module = sys.modules.get("prefect.server.api.server")
    return list(module.SubprocessASGIServer._instances.values()) if module else []


def release_temporary_server() -> None:
    """Deliver what Prefect still holds (logs, events), then stop this process's temporary
    server: a command that ran a flow in-process and goes on (`bigdeep predict`)."""
    if "prefect" not in sys.modules:
        return
    if _temporary_servers() and api_reachable():
        from prefect.events.worker import EventsWorker
        from prefect.logging.handlers import APILogWorker

        for worker in (APILogWorker, EventsWorker):
            best_effort("the last logs and events", worker.drain_all, timeout=DRAIN_TIMEOUT_S)
    for server in _temporary_servers():
        server.stop()  # never left behind


def finish(code: int) -> NoReturn:
    """End `bigdeep run` with `code` as soon as what Prefect still holds is delivered.

    Prefect's log and event queues are drained (at most DRAIN_TIMEOUT_S), the temporary server
    stopped, stdout flushed; then the process ends without the interpreter's teardown, which
    took 13-60 s on a loaded machine after the flow's work (thousands of modules to unload).
    With the server gone there is nothing to deliver: a warning says what was not recorded.
    """
    mark("command returned")
    # nothing was sent to Prefect when it was never imported (a --set or lock error before the
    # flow), and a lost server only matters to say so once the flow's work is done
    reachable = "prefect" in sys.modules and api_reachable()
    if not reachable and work_outcome() is not None:
        print(
            "warning: the Prefect server stopped answering during the run. The work is done and "
            "the summary above is complete; the flow run's final state was not recorded in Prefect "
            "(the next `bigdeep run` marks it CRASHED). Check the server "
            "(`bigdeep servers status`).",
            file=sys.stderr,
            flush=True,
        )
    elif reachable:
        from prefect.events.worker import EventsWorker
        from prefect.logging.handlers import APILogWorker

        for worker in (APILogWorker, EventsWorker):
            best_effort("the last logs and events", worker.drain_all, timeout=DRAIN_TIMEOUT_S)
            mark(f"{worker.__name__} drained")
    for server in _temporary_servers():
        server.stop()  # never left behind
    mark("exit")
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
