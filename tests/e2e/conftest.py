"""End-to-end fixtures: a real git + DVC project in tmp_path, a real Prefect test server."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory):
    """A temporary Prefect server and database for the whole session (`prefect_test_harness`)."""
    import os

    os.environ["PREFECT_HOME"] = str(tmp_path_factory.mktemp("prefect_home"))
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def deep_update(base: dict, overrides: dict) -> dict:
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            deep_update(base[key], value)
        else:
            base[key] = value
    return base


# A small slice of both builtin datasets and short training: the path is the real one.
SMALL = {
    "data": {"images": {"per_class": 20}, "series": {"last_days": 30}},
    "train": {
        "cnn": {"epochs": 2, "batch_size": 32},
        "rnn": {"epochs": 2, "hidden": 16, "layers": 2, "window": 48, "batch_size": 32},
    },
}


def run(cmd: list[str], cwd: Path) -> str:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout + proc.stderr


def make_project(path: Path, overrides: dict) -> Path:
    """Copy the pipeline definition (dvc.yaml, params, code) into a fresh git + DVC repo."""
    path.mkdir(parents=True, exist_ok=True)
    for name in ("src", "flows"):
        shutil.copytree(ROOT / name, path / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "dvc.yaml", path / "dvc.yaml")
    params = deep_update(yaml.safe_load((ROOT / "params.yaml").read_text()), overrides)
    (path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (path / ".gitignore").write_text((ROOT / ".gitignore").read_text())
    run(["git", "init", "-q", "-b", "main"], path)
    run(["git", "config", "user.email", "test@bigdeep.invalid"], path)
    run(["git", "config", "user.name", "bigdeep test"], path)
    run([sys.executable, "-m", "dvc", "init", "-q"], path)
    run(["git", "add", "-A"], path)
    run(["git", "commit", "-q", "-m", "project"], path)
    return path


@pytest.fixture
def project_factory(tmp_path, mlflow_uri, prefect_server):
    def factory(overrides: dict | None = None, name: str = "project") -> Path:
        return make_project(tmp_path / name, deep_update(yaml.safe_load(yaml.safe_dump(SMALL)), overrides or {}))

    return factory
