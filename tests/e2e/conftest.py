"""End-to-end fixtures: a real git + DVC project in tmp_path, a real Prefect test server."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.e2e.helpers import SMALL, deep_update, make_project


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
