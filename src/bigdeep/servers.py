"""Local Prefect and MLflow servers for scheduled runs and the UIs: up, status, down.

    bigdeep servers up [--postgres postgresql://user@127.0.0.1:5432/bigdeep] [--timeout 120]
    bigdeep servers up --postgres URL --artifacts s3://bucket/prefix    # the team setup
    bigdeep servers status
    bigdeep servers down

Both bind to 127.0.0.1. PIDs, ports and logs live in a state folder (default .bigdeep/servers).
MLflow serves the project's own store (params.yaml `mlflow`: the one local runs write) unless
given another; Prefect keeps SQLite in the state folder. Given a PostgreSQL URL, both use
databases on that server (<name>_mlflow and <name>_prefect: each tool migrates its own
schema), created if missing. Given an s3:// artifacts URL, MLflow proxies every artifact to the
object store with the keys in the environment of `servers up` (AWS_ACCESS_KEY_ID, ...,
AWS_ENDPOINT_URL): clients need none. `up` starts only what is not answering. Each server
runs in its own process group, so `down` stops it and every worker it forked, and checks none
is left.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from bigdeep.env import apply_quiet_env
from bigdeep.errors import BigdeepError

DEFAULT_STATE = Path(".bigdeep/servers")
HOST = "127.0.0.1"


class ServerError(BigdeepError, RuntimeError):
    """A server did not start, or is not answering."""


@dataclass
class Server:
    name: str
    pid: int
    port: int
    url: str  # what clients use (MLFLOW_TRACKING_URI / PREFECT_API_URL)
    health: str  # the URL that answers 200 when the server is ready
    log: str
    backend: str
    reused: bool = False  # already up and healthy: left running by `up`


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _with_database(url: str, database: str, driver: str | None = None) -> str:
    parts = urlsplit(url)
    scheme = f"postgresql+{driver}" if driver else "postgresql"
    return urlunsplit((scheme, parts.netloc, f"/{database}", parts.query, ""))


def ensure_postgres_databases(url: str) -> tuple[str, str]:
    """postgresql://…/<name> -> (mlflow URI, prefect URL) on databases <name>_mlflow/_prefect."""
    import psycopg2

    base = urlsplit(url).path.lstrip("/") or "bigdeep"
    names = (f"{base}_mlflow", f"{base}_prefect")
    try:
        conn = psycopg2.connect(_with_database(url, "postgres"))
    except psycopg2.Error as e:
        raise ServerError(f"PostgreSQL at {url} is not reachable: {e}".strip()) from None
    conn.autocommit = True  # CREATE DATABASE cannot run inside a transaction
    try:
        with conn.cursor() as cur:
            for name in names:
                cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
                if cur.fetchone() is None:
                    cur.execute(f'CREATE DATABASE "{name}"')
    finally:
        conn.close()
    # name the drivers: SQLAlchemy 2.1's default PostgreSQL driver is psycopg 3, not installed
    return _with_database(url, names[0], "psycopg2"), _with_database(url, names[1], "asyncpg")


def _env() -> dict[str, str]:
    env = apply_quiet_env(dict(os.environ), override=True)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _spawn(cmd: list[str], log: Path, env: dict[str, str]) -> int:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            cmd,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
    return proc.pid


def up(
    state_dir: Path = DEFAULT_STATE,
    postgres: str | None = None,
    prefect_port: int | None = None,
    mlflow_port: int | None = None,
    timeout: float = 120.0,
    backend_store_uri: str | None = None,
    artifacts: str | None = None,
) -> dict[str, Server]:
    """Start whichever of the two servers is not answering; a healthy one is left alone.

    MLflow's store: `backend_store_uri` (the CLI passes the project's own, params.yaml's
    `mlflow.tracking_uri`), else PostgreSQL, else a SQLite file in the state folder.
    `artifacts`: a local folder is written to directly by clients and the server (the same
    place local runs write); a URL (s3://...) is proxied by the server. `timeout` is each
    server's own start-up limit, in seconds.
    """
    state_dir = Path(state_dir).resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    # a busy server can be slow to answer: give it time before calling it down and restarting it
    running = status(state_dir, patience=10.0)
    if postgres:
        pg_mlflow, prefect_db = ensure_postgres_databases(postgres)
        mlflow_backend = backend_store_uri or pg_mlflow
    else:
        mlflow_backend = backend_store_uri or f"sqlite:///{state_dir / 'mlflow.db'}"
        prefect_db = f"sqlite+aiosqlite:///{state_dir / 'prefect.db'}"
    mlflow_artifacts = artifact_args(artifacts, state_dir)

    wanted: dict[str, tuple[list[str], dict[str, str], int | None, str]] = {}
    env = _env()
    env.update(
        PREFECT_HOME=str(state_dir / "prefect_home"), PREFECT_API_DATABASE_CONNECTION_URL=prefect_db
    )
    env.pop("PREFECT_API_URL", None)
    wanted["prefect"] = (
        [sys.executable, "-m", "prefect", "server", "start", "--host", HOST, "--port"],
        env,
        prefect_port,
        prefect_db,
    )
    wanted["mlflow"] = (
        mlflow_command(mlflow_backend, mlflow_artifacts),
        _env(),
        mlflow_port,
        mlflow_backend,
    )

    servers: dict[str, Server] = {}
    started: list[tuple[Server, float]] = []
    for name, (cmd, env_, port, backend) in wanted.items():
        info = running.get(name)
        same = info is not None and info["backend"] == _redact(backend)
        same = same and (port is None or port == info["port"])
        if info is not None and info["healthy"] and same:
            kept = {k: v for k, v in info.items() if k != "healthy"}
            servers[name] = Server(**kept, reused=True)
            continue
        if info is not None:  # down, or serving another store / port: stop what is left of it
            stop_group(info["pid"])
        port = port or (info["port"] if info is not None else None) or free_port()
        log = state_dir / f"{name}.log"
        health = f"http://{HOST}:{port}" + ("/api/health" if name == "prefect" else "/health")
        url = f"http://{HOST}:{port}" + ("/api" if name == "prefect" else "")
        pid = _spawn([*cmd, str(port)], log, env_)
        servers[name] = Server(name, pid, port, url, health, str(log), _redact(backend))
        started.append((servers[name], time.monotonic()))
    _write_state(state_dir, servers)

    for server, since in started:  # each has its own limit, counted from its own start
        deadline = since + timeout
        while not healthy(server.health):
            if not _alive(server.pid):
                _forget(state_dir, server)
                raise ServerError(
                    f"{server.name} server exited during start; see {server.log}:\n{_tail(server.log)}"
                )
            if time.monotonic() > deadline:
                _forget(state_dir, server)
                raise ServerError(
                    f"{server.name} did not answer {server.health} in {timeout:.0f} s; see "
                    f"{server.log}. On a loaded machine give it longer: "
                    f"`bigdeep servers up --timeout {int(timeout * 2)}`"
                )
            time.sleep(0.5)
    return servers


def mlflow_command(backend: str, artifacts: list[str]) -> list[str]:
    """`mlflow server` on 127.0.0.1 with one worker; the port goes last."""
    return [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        backend,
        *artifacts,
        "--host",
        HOST,
        "--workers",
        "1",
        "--port",
    ]


def artifact_args(artifacts: str | None, state_dir: Path) -> list[str]:
    if artifacts is None:
        return ["--artifacts-destination", str(state_dir / "mlartifacts")]
    if "://" in artifacts and not artifacts.startswith("file://"):
        return ["--artifacts-destination", artifacts]
    # a local folder: clients write there directly, as local runs do, so one experiment
    # works with and without the server (a proxied `mlflow-artifacts:` root would not)
    folder = Path(artifacts.removeprefix("file://")).resolve()
    return ["--default-artifact-root", folder.as_uri(), "--no-serve-artifacts"]


def _write_state(state_dir: Path, servers: dict[str, Server]) -> None:
    records = {k: {f: v for f, v in asdict(s).items() if f != "reused"} for k, s in servers.items()}
    tmp = state_dir / "servers.json.tmp"
    tmp.write_text(json.dumps(records, indent=2) + "\n")
    os.replace(tmp, state_dir / "servers.json")


def _forget(state_dir: Path, server: Server) -> None:
    """A server that failed to start: stop its group and drop it from the state file."""
    stop_group(server.pid)
    state = read_state(state_dir)
    state.pop(server.name, None)
    others = {k: Server(**v) for k, v in state.items()}
    _write_state(state_dir, others)


def _redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return urlunsplit(parts._replace(netloc=netloc))
    return url


def _tail(path: str, lines: int = 20) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def healthy(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie child still "exists": reap it if it is ours
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == 0
    except ChildProcessError:
        return True


def read_state(state_dir: Path = DEFAULT_STATE) -> dict[str, dict]:
    path = Path(state_dir) / "servers.json"
    if not path.exists():
        return {}
    return json.loads(path.read_text())


def status(state_dir: Path = DEFAULT_STATE, patience: float = 2.0) -> dict[str, dict]:
    """Each recorded server with `healthy`: its process lives and its health URL answers 200
    within `patience` seconds."""
    return {
        name: {**info, "healthy": _alive(info["pid"]) and healthy(info["health"], patience)}
        for name, info in read_state(state_dir).items()
    }


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes in process group `pgid`, from /proc."""
    proc = Path("/proc")
    if not proc.is_dir():  # not Linux: ask the kernel whether the group still exists
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return []
        except PermissionError:
            pass
        return [pgid]
    members = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid pgrp ...: comm may hold spaces and parentheses
        fields = stat[stat.rindex(")") + 2 :].split()
        if fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(entry.name))
    return members


@contextlib.contextmanager
def interruptible(stop: Callable[[], object]) -> Iterator[None]:
    """A foreground wait (`bigdeep serve`, `bigdeep worker`): in the block SIGINT and SIGTERM
    (a supervisor, `kill`) raise KeyboardInterrupt as Ctrl-C does; on the way out `stop` runs
    with both ignored, so a second Ctrl-C cannot cut the stopping short; then the previous
    handlers come back. Installed explicitly, as a shell that starts a command in the
    background leaves SIGINT ignored."""
    signals = (signal.SIGINT, signal.SIGTERM)
    previous = {sig: signal.signal(sig, _raise_interrupt) for sig in signals}
    try:
        yield
    finally:
        for sig in signals:
            signal.signal(sig, signal.SIG_IGN)
        try:
            stop()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def _raise_interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def stop_group(pgid: int, timeout: float = 20.0) -> bool:
    """SIGTERM the whole group (the server and every worker it forked), SIGKILL what stays.

    Returns whether anything was running. Waits until no process of the group is left.
    """
    _alive(pgid)  # reap the leader if it is our child and already gone
    if not group_members(pgid):
        return False
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return True
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            _alive(pgid)
            if not group_members(pgid):
                return True
            time.sleep(0.2)
    left = group_members(pgid)
    if left:
        raise ServerError(f"process group {pgid} did not stop: pids {left} still running")
    return True


def down(state_dir: Path = DEFAULT_STATE, timeout: float = 20.0) -> list[str]:
    """Stop every server recorded in the state folder: its whole process group."""
    stopped = [
        name for name, info in read_state(state_dir).items() if stop_group(info["pid"], timeout)
    ]
    (Path(state_dir) / "servers.json").unlink(missing_ok=True)
    return stopped


def client_env(state_dir: Path = DEFAULT_STATE) -> dict[str, str]:
    """MLFLOW_TRACKING_URI / PREFECT_API_URL for the recorded servers (empty when none)."""
    state = read_state(state_dir)
    env = {}
    if "mlflow" in state:
        env["MLFLOW_TRACKING_URI"] = state["mlflow"]["url"]
    if "prefect" in state:
        env["PREFECT_API_URL"] = state["prefect"]["url"]
    return env
