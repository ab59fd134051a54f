"""MLflow and lineage plumbing: where runs go, and which data and code they came from."""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import yaml

from bigdeep.config import MlflowSettings


class TrackingError(RuntimeError):
    """The MLflow store cannot be reached or used."""


def tracking_uri(cfg: MlflowSettings) -> str:
    """MLFLOW_TRACKING_URI wins over params.yaml (so tests and servers can redirect runs)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or cfg.tracking_uri


def check_reachable(cfg: MlflowSettings, timeout: float = 5.0) -> str:
    """Fail fast, before any work, when the tracking server does not answer; returns the URI."""
    import urllib.error
    import urllib.request

    uri = tracking_uri(cfg)
    if uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as resp:
                if resp.status != 200:
                    raise TrackingError(
                        f"MLflow tracking server {uri} answered {resp.status} on /health"
                    )
        except (urllib.error.URLError, OSError) as e:
            raise TrackingError(
                f"MLflow tracking server {uri} is not reachable ({e}); start it with "
                f"`bigdeep servers up` or unset MLFLOW_TRACKING_URI"
            ) from None
    return uri


def ensure_experiment(cfg: MlflowSettings):
    """Point MLflow at the store and return (client, experiment id); fail fast naming the URI."""
    import mlflow
    from mlflow.tracking import MlflowClient

    uri = tracking_uri(cfg)
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    try:
        exp = client.get_experiment_by_name(cfg.experiment)
        if exp is None:
            # Artifacts next to the project (git-ignored), not wherever the process started.
            remote = uri.startswith(("http://", "https://", "databricks"))
            location = None if remote else Path(cfg.artifact_root).resolve().as_uri()
            # "custom_model_development": the UI opens on the runs table, not the GenAI views
            exp_id = client.create_experiment(
                cfg.experiment,
                artifact_location=location,
                tags={"mlflow.experimentKind": "custom_model_development"},
            )
        else:
            exp_id = exp.experiment_id
    except Exception as e:  # noqa: BLE001 - any failure here means "the store is unusable"
        raise TrackingError(
            f"MLflow tracking store {uri} is not usable: {type(e).__name__}: {e}"
        ) from None
    mlflow.set_experiment(experiment_id=exp_id)
    return client, exp_id


@contextlib.contextmanager
def start_run(
    cfg: MlflowSettings, run_name: str, tags: dict[str, str], run_id: str | None = None
) -> Iterator[tuple]:
    """A new run, or (run_id given) the same run continued after a crash."""
    import mlflow

    client, exp_id = ensure_experiment(cfg)
    extra = {}
    if os.environ.get("BIGDEEP_FLOW_RUN_ID"):  # set by flows/pipeline.py for its DVC stages
        extra["bigdeep.prefect_flow_run_id"] = os.environ["BIGDEEP_FLOW_RUN_ID"]
    if os.environ.get("DVC_EXP_NAME"):
        extra["bigdeep.dvc_experiment"] = os.environ["DVC_EXP_NAME"]
    if run_id is not None:
        with mlflow.start_run(run_id=run_id) as run:
            mlflow.set_tags(extra)  # the flow run that finishes it, not the one that died
            yield run, client
        return
    with mlflow.start_run(experiment_id=exp_id, run_name=run_name, tags={**tags, **extra}) as run:
        yield run, client


# --- lineage ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class DataVersion:
    dataset: str
    raw_path: str
    raw_md5: str  # DVC md5 of data/raw/<dataset> (the dataset version), or "unversioned:<sha>"
    processed_path: str
    processed_md5: str

    def tags(self) -> dict[str, str]:
        return {
            f"bigdeep.data.{self.dataset}.md5": self.raw_md5,
            f"bigdeep.data.{self.dataset}.path": self.raw_path,
            f"bigdeep.data.{self.dataset}.processed_md5": self.processed_md5,
            "bigdeep.data.version": self.raw_md5,
        }


def lock_outs(lock_path: Path) -> dict[str, str]:
    """{out path: md5} for every stage output recorded in dvc.lock."""
    if not Path(lock_path).exists():
        return {}
    lock = yaml.safe_load(Path(lock_path).read_text()) or {}
    found = {}
    for stage in (lock.get("stages") or {}).values():
        for out in stage.get("outs") or []:
            if "md5" in out:
                found[out["path"]] = out["md5"]
    return found


def data_version(lock_path: Path, processed_dir: Path, raw_name: str) -> DataVersion:
    """The DVC md5s of the raw and processed data behind a training run.

    Read from dvc.lock (the pipeline's record of what it produced). Run outside DVC, the
    data has no DVC version: say so, with a content hash so runs stay comparable.
    """
    outs = lock_outs(lock_path)
    raw = f"data/raw/{raw_name}"
    processed = Path(processed_dir).as_posix()
    fallback = "unversioned:" + dir_sha256(Path(processed_dir))[:16]
    return DataVersion(
        raw_name, raw, outs.get(raw, fallback), processed, outs.get(processed, fallback)
    )


def dir_sha256(folder: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
        h.update(path.relative_to(folder).as_posix().encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def log_data_input(version: DataVersion, name: str, context: str) -> None:
    """Record the dataset as the run's input, digest = the DVC md5 (not MLflow's 10k-row hash)."""
    import mlflow
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    with warnings.catch_warnings():  # MLflow registers the local source type twice
        warnings.simplefilter("ignore", UserWarning)
        source = resolve_dataset_source(Path(version.raw_path).resolve().as_uri())
    dataset = MetaDataset(source=source, name=name, digest=version.raw_md5[:36])
    mlflow.log_input(dataset, context=context, tags={"dvc_md5": version.raw_md5})


def git_state(cwd: Path = Path(".")) -> dict[str, str]:
    def git(*args: str) -> str | None:
        try:
            return subprocess.run(
                ["git", *args], cwd=cwd, capture_output=True, text=True, check=True, timeout=10
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return {"bigdeep.git.commit": "none"}
    dirty = git("status", "--porcelain", "--untracked-files=no")
    return {"bigdeep.git.commit": commit, "bigdeep.git.dirty": str(bool(dirty)).lower()}
