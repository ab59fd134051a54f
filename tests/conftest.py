"""Shared test setup: quiet, offline, one torch thread, every store in tmp_path."""

from __future__ import annotations

import pytest

from bigdeep.env import apply_quiet_env

apply_quiet_env(override=True)


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
