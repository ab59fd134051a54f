"""`bigdeep lineage` without importing MLflow: a read-only look into a SQLite MLflow store.

`registry.lineage(MlflowClient(uri), ref)` costs seconds before it reads a row (the `mlflow`
import, then SQLAlchemy and the schema check of the store). For the default store, a SQLite
file, the same answer is a handful of SELECTs. `read_lineage` returns exactly what
`registry.lineage` returns (tests/unit/test_store_reader.py compares them on one store), or
None whenever it cannot be sure: a server or another database, a schema revision it was not
checked against, workspaces, a reference that names nothing (MLflow's own path then gives the
error message with what does exist), artifacts that are not local files. The caller then
asks MlflowClient.
"""

from __future__ import annotations

import os
import sqlite3
import urllib.parse
import urllib.request
from pathlib import Path

from bigdeep.training import privacy_record  # standard library only, like this module

# Alembic revisions of MLflow's SQL schema whose tables this reader was checked against
# (the head of the pinned mlflow 3.17). Another revision: MlflowClient answers instead.
KNOWN_SCHEMAS = frozenset({"dc11669786a5"})
WORKSPACE = "default"  # MLflow's only workspace unless MLFLOW_ENABLE_WORKSPACES is set
DELETED = "Deleted_Internal"  # model_versions.current_stage of a deleted version
TEMP_ARTIFACT = ".artifact.uploading."  # a file MLflow is still writing; never listed
# Variables that make MlflowClient read somewhere else than the tracking URI's own tables.
REDIRECTS = ("MLFLOW_REGISTRY_URI", "MLFLOW_ENABLE_WORKSPACES", "MLFLOW_WORKSPACE")


def sqlite_path(uri: str) -> Path | None:
    """The database file of a `sqlite:///` URI (relative to the working folder, as MLflow
    reads it), or None for any other store."""
    prefix = "sqlite:///"
    if not uri.startswith(prefix) or "?" in uri:
        return None
    return Path(uri[len(prefix) :])


def read_lineage(uri: str, ref: str) -> dict | None:
    """`registry.lineage(MlflowClient(uri), ref)`, read with sqlite3; None: ask MLflow."""
    path = sqlite_path(uri)
    if path is None or not path.is_file() or any(os.environ.get(k) for k in REDIRECTS):
        return None
    name, sep, which = ref.replace("/", "@").partition("@")
    if not sep or not name or not which or which.lower() == "latest":
        return None  # a malformed ref (MLflow's path raises the usage error), or MLflow's alias
    try:
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    except sqlite3.Error:
        return None
    try:
        return _lineage(db, name, which)
    except sqlite3.Error:  # a table or column this reader does not know: MLflow decides
        return None
    finally:
        db.close()


def _lineage(db: sqlite3.Connection, name: str, which: str) -> dict | None:
    revisions = {r for (r,) in db.execute("SELECT version_num FROM alembic_version")}
    if len(revisions) != 1 or not revisions <= KNOWN_SCHEMAS:
        return None
    if which.isdigit():
        version = int(which)
    else:
        row = db.execute(
            "SELECT version FROM registered_model_aliases"
            " WHERE workspace = ? AND name = ? AND alias = ?",
            (WORKSPACE, name, which),
        ).fetchone()
        if row is None:
            return None
        version = row[0]
    row = db.execute(
        "SELECT run_id FROM model_versions"
        " WHERE workspace = ? AND name = ? AND version = ? AND current_stage != ?",
        (WORKSPACE, name, version, DELETED),
    ).fetchall()
    if len(row) != 1 or not row[0][0]:
        return None
    run_id = row[0][0]
    # as MLflow fills ModelVersion.aliases: the model's aliases in the table's order
    aliases = [
        alias
        for alias, v in db.execute(
            "SELECT alias, version FROM registered_model_aliases WHERE workspace = ? AND name = ?",
            (WORKSPACE, name),
        )
        if v == version
    ]
    run = db.execute(
        "SELECT artifact_uri, experiment_id FROM runs WHERE run_uuid = ?", (run_id,)
    ).fetchall()
    if len(run) != 1:
        return None
    artifact_uri, experiment_id = run[0]
    tags = dict(db.execute("SELECT key, value FROM tags WHERE run_uuid = ?", (run_id,)))
    metrics = {
        key: float("nan") if is_nan else value
        for key, value, is_nan in db.execute(
            "SELECT key, value, is_nan FROM latest_metrics WHERE run_uuid = ?", (run_id,)
        )
    }
    # MlflowClient.list_artifacts(run, "quality") also lists a logged model named "quality"
    if db.execute(
        "SELECT 1 FROM logged_models WHERE experiment_id = ? AND name = ? AND source_run_id = ?",
        (experiment_id, "quality", run_id),
    ).fetchone():
        return None
    quality = _list_local_artifacts(artifact_uri, "quality")
    if quality is None:
        return None
    return {
        "model": f"{name} v{version}",
        "aliases": aliases,
        "run_id": run_id,
        "git_commit": tags.get("bigdeep.git.commit"),
        "git_dirty": {"true": True, "false": False}.get(tags.get("bigdeep.git.dirty", "")),
        "params_hash": tags.get("bigdeep.params_hash"),
        "data": {
            k.removeprefix("bigdeep.data."): v
            for k, v in tags.items()
            if k.startswith("bigdeep.data.")
        },
        "prefect_flow_run_id": tags.get("bigdeep.prefect_flow_run_id"),
        "dvc_experiment": tags.get("bigdeep.dvc_experiment"),
        "quality_report": quality,
        "metrics": {k: v for k, v in metrics.items() if k.startswith("test_")},
        "privacy": privacy_record.text(privacy_record.from_tags(tags)),
    }


def _list_local_artifacts(artifact_uri: str, sub: str) -> list[str] | None:
    """The artifact paths directly under `sub`, sorted, as MLflow's local repository lists
    them; None for artifacts that are not local files (a server's, S3)."""
    if artifact_uri.startswith("file:"):
        root = Path(urllib.request.url2pathname(urllib.parse.urlparse(artifact_uri).path))
    elif artifact_uri.startswith("/"):
        root = Path(artifact_uri)
    else:
        return None
    folder = root / sub
    if not folder.is_dir():
        return []
    return sorted(
        f"{sub}/{entry}" for entry in os.listdir(folder) if not entry.startswith(TEMP_ARTIFACT)
    )
