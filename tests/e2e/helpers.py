"""Helpers for end-to-end tests: a real git + DVC project made from this repo's pipeline."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


# the local PostgreSQL the tests create their uniquely named databases on (trust auth)
POSTGRES = os.environ.get("BIGDEEP_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")


def drop_databases(name: str) -> None:
    """Drop the `<name>_mlflow` and `<name>_prefect` databases `bigdeep servers up` created."""
    import psycopg2

    conn = psycopg2.connect(POSTGRES)
    conn.autocommit = True
    with conn.cursor() as cur:
        for suffix in ("mlflow", "prefect"):
            cur.execute(f'DROP DATABASE IF EXISTS "{name}_{suffix}" WITH (FORCE)')
    conn.close()


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


def run(cmd: list[str], cwd: Path, stderr: bool = True) -> str:
    """Run a command that must succeed; its stdout (and stderr, unless told not to)."""
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout + (proc.stderr if stderr else "")


def lock_md5(project: Path, out: str) -> str:
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    for stage in lock["stages"].values():
        for o in stage.get("outs", []):
            if o["path"] == out:
                return o["md5"]
    raise AssertionError(f"{out} not in dvc.lock")


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
    for name in (".dvc/config", ".dvcignore"):  # the default local remote, ignore rules
        shutil.copy(ROOT / name, path / name)
    shutil.copytree(ROOT / "data" / "sources", path / "data" / "sources")
    run(["git", "add", "-A"], path)
    run(["git", "commit", "-q", "-m", "project"], path)
    return path
