"""End-to-end fixtures: a real git + DVC project in tmp_path, a real Prefect test server,
a fresh PostgreSQL database, a real S3-compatible server."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml

from bigdeep.servers import free_port, healthy
from tests.e2e.helpers import POSTGRES, SMALL, deep_update, drop_databases, make_project
from tests.e2e.s3server import S3Server


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory):
    """A temporary Prefect server and database for the whole session (`prefect_test_harness`)."""
    import os

    os.environ["PREFECT_HOME"] = str(tmp_path_factory.mktemp("prefect_home"))
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture
def project_factory(tmp_path, mlflow_uri, prefect_server):
    def factory(overrides: dict | None = None, name: str = "project") -> Path:
        return make_project(
            tmp_path / name, deep_update(yaml.safe_load(yaml.safe_dump(SMALL)), overrides or {})
        )

    return factory


@pytest.fixture
def prefect_api(tmp_path):
    """`prefect server start` on a free port, its database in tmp_path; killed after."""
    port = free_port()
    env = dict(
        os.environ,
        PREFECT_HOME=str(tmp_path / "prefect_home"),
        PREFECT_UI_ENABLED="false",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
    )
    env.pop("PREFECT_API_URL", None)
    cmd = [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1"]
    with open(tmp_path / "prefect.log", "wb") as log:
        proc = subprocess.Popen(
            [*cmd, "--port", str(port)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}/api"
    deadline = time.monotonic() + 300  # a loaded 2-core machine takes over a minute
    while not healthy(url + "/health"):
        assert proc.poll() is None, (tmp_path / "prefect.log").read_text()
        assert time.monotonic() < deadline, "the Prefect server did not start in 300 s"
        time.sleep(1)
    yield url, proc
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.fixture
def postgres_url():
    """A fresh, uniquely named database prefix on the local PostgreSQL; dropped after."""
    name = f"bigdeep_test_{uuid.uuid4().hex[:8]}"
    base = POSTGRES.rsplit("/", 1)[0]
    yield f"{base}/{name}"
    drop_databases(name)


@pytest.fixture
def s3_server(monkeypatch):
    """moto's S3 on 127.0.0.1 with an empty bucket `bigdeep`; its keys and endpoint are in the
    environment of this process and of everything it starts (never in a file)."""
    server = S3Server().start()
    for key, value in server.env().items():
        monkeypatch.setenv(key, value)
    server.create_bucket()
    try:
        yield server
    finally:
        server.stop()
