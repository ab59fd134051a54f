"""Shared test setup: quiet, offline, one torch thread, every store in tmp_path; under
pytest-xdist (`make test`: -n 2 --dist loadfile) the long files first."""

from __future__ import annotations

import os
import sys

import pytest

from bigdeep.env import apply_quiet_env

apply_quiet_env(override=True)
# DVC stages, Prefect workers and torchrun call `bigdeep` by name: the venv that runs the tests
# is first on PATH also when pytest is started as .venv/bin/python without activating it.
os.environ["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), os.environ.get("PATH", "")])


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    import torch

    torch.set_num_threads(1)  # a busy 2-core box is far slower with oversubscribed threads


@pytest.fixture
def mlflow_uri(tmp_path, monkeypatch) -> str:
    """A real MLflow store (SQLite) in tmp_path, also seen by subprocesses."""
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    # mlflow.set_tracking_uri() from an earlier test would win over the variable in-process
    mlflow.set_tracking_uri(uri)
    return uri


# Under xdist the e2e tier is handed out first, the many short unit files last to fill the
# workers' ends (`make test` keeps this order: --no-loadscope-reorder).
TIERS = ("tests/e2e/", "tests/integration/", "tests/unit/")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """On an xdist worker: the tiers in the order above (a stable sort: a file's tests stay
    together and in order; --dist loadfile keeps each file on one worker, so a module fixture,
    a trained model or a served project, is built once)."""
    if "PYTEST_XDIST_WORKER" not in os.environ:
        return

    def tier(item: pytest.Item) -> int:
        return next((i for i, t in enumerate(TIERS) if item.nodeid.startswith(t)), len(TIERS))

    items.sort(key=tier)
