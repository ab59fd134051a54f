"""Local Prefect and MLflow servers for scheduled runs and the UIs: up, status, down.

    bigdeep servers up [--postgres postgresql://user@127.0.0.1:5432/bigdeep]
    bigdeep servers status
    bigdeep servers down

Both bind to 127.0.0.1. PIDs, ports and logs live in a state folder (default .bigdeep/servers).
Backend: SQLite files in the state folder, or, given a PostgreSQL URL, two databases on that
server (<name>_mlflow and <name>_prefect: each tool migrates its own schema), created if missing.
Each server runs in its own process group, so `down` stops it and every worker it forked.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

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
    env = dict(os.environ)
    env.update(
        DO_NOT_TRACK="true",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        MLFLOW_DISABLE_TELEMETRY="true",
        PYTHONUNBUFFERED="1",
    )
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
) -> dict[str, Server]:
    state_dir = Path(state_dir).resolve()
    running = status(state_dir)
    if running and all(s["healthy"] for s in running.values()):
        return {
            name: Server(**{k: v for k, v in s.items() if k != "healthy"})
            for name, s in running.items()
        }
    down(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    if postgres:
        mlflow_backend, prefect_db = ensure_postgres_databases(postgres)
    else:
        mlflow_backend = f"sqlite:///{state_dir / 'mlflow.db'}"
        prefect_db = f"sqlite+aiosqlite:///{state_dir / 'prefect.db'}"
    prefect_port, mlflow_port = prefect_port or free_port(), mlflow_port or free_port()

    env = _env()
    env.update(
        PREFECT_HOME=str(state_dir / "prefect_home"), PREFECT_API_DATABASE_CONNECTION_URL=prefect_db
    )
    env.pop("PREFECT_API_URL", None)
    prefect = Server(
        "prefect",
        _spawn(
            [
                sys.executable,
                "-m",
                "prefect",
                "server",
                "start",
                "--host",
                HOST,
                "--port",
                str(prefect_port),
            ],
            state_dir / "prefect.log",
            env,
        ),
        prefect_port,
        f"http://{HOST}:{prefect_port}/api",
        f"http://{HOST}:{prefect_port}/api/health",
        str(state_dir / "prefect.log"),
        _redact(prefect_db),
    )
    mlflow = Server(
        "mlflow",
        _spawn(
            [
                sys.executable,
                "-m",
                "mlflow",
                "server",
                "--backend-store-uri",
                mlflow_backend,
                "--artifacts-destination",
                str(state_dir / "mlartifacts"),
                "--host",
                HOST,
                "--port",
                str(mlflow_port),
                "--workers",
                "1",
            ],
            state_dir / "mlflow.log",
            _env(),
        ),
        mlflow_port,
        f"http://{HOST}:{mlflow_port}",
        f"http://{HOST}:{mlflow_port}/health",
        str(state_dir / "mlflow.log"),
        _redact(mlflow_backend),
    )
    servers = {"prefect": prefect, "mlflow": mlflow}
    (state_dir / "servers.json").write_text(
        json.dumps({k: asdict(v) for k, v in servers.items()}, indent=2) + "\n"
    )
    deadline = time.monotonic() + timeout
    for server in servers.values():
        while not healthy(server.health):
            if not _alive(server.pid):
                down(state_dir)
                raise ServerError(
                    f"{server.name} server exited during start; see {server.log}:\n{_tail(server.log)}"
                )
            if time.monotonic() > deadline:
                down(state_dir)
                raise ServerError(
                    f"{server.name} did not answer {server.health} in {timeout:.0f} s; see {server.log}"
                )
            time.sleep(0.5)
    return servers


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


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
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


def status(state_dir: Path = DEFAULT_STATE) -> dict[str, dict]:
    return {
        name: {**info, "healthy": _alive(info["pid"]) and healthy(info["health"])}
        for name, info in read_state(state_dir).items()
    }


def down(state_dir: Path = DEFAULT_STATE, timeout: float = 20.0) -> list[str]:
    """Stop every server recorded in the state folder: SIGTERM the group, then SIGKILL."""
    stopped = []
    for name, info in read_state(state_dir).items():
        pid = info["pid"]
        try:
            os.killpg(pid, signal.SIGTERM)
        except ProcessLookupError:
            continue
        deadline = time.monotonic() + timeout
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if _alive(pid):
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        stopped.append(name)
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
