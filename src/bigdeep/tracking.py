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

from bigdeep.config import MlflowSettings, stage_files
from bigdeep.errors import BigdeepError


class TrackingError(BigdeepError, RuntimeError):
    """The MLflow store cannot be reached or used."""


# MLflow's own defaults (7 retries with exponential backoff, 120 s per request) keep a process
# silent for ~8 minutes when a tracking server dies. These notice a dead server in ~30 s at most
# (3 attempts x 8 s, 2 s of backoff); a user's own setting wins.
HTTP_BOUNDS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "8",
}


def bound_http_requests() -> None:
    for key, value in HTTP_BOUNDS.items():
        os.environ.setdefault(key, value)


def tracking_uri(cfg: MlflowSettings) -> str:
    """MLFLOW_TRACKING_URI wins over params.yaml (so tests and servers can redirect runs)."""
    bound_http_requests()
    return os.environ.get("MLFLOW_TRACKING_URI") or cfg.tracking_uri


def absolute_store(uri: str, base: Path | None = None) -> str:
    """`sqlite:///mlflow.db` (relative to the project) as an absolute URI: one file from any folder."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri[len(prefix) :].startswith("/"):
        return prefix + str((Path(base or ".") / uri[len(prefix) :]).resolve())
    return uri


def describe_store(cfg: MlflowSettings, servers_state: Path = Path(".bigdeep/servers")) -> str:
    """One line naming the MLflow store a command uses and why that one."""
    import json

    uri = tracking_uri(cfg)
    if not os.environ.get("MLFLOW_TRACKING_URI"):
        return f"MLflow store: {absolute_store(uri)} (params.yaml mlflow.tracking_uri)"
    try:
        server = json.loads((servers_state / "servers.json").read_text()).get("mlflow") or {}
    except (OSError, ValueError):
        server = {}
    if server.get("url", "").rstrip("/") == uri.rstrip("/"):
        return f"MLflow store: {uri} (bigdeep servers, serving {server['backend']})"
    return f"MLflow store: {absolute_store(uri)} (MLFLOW_TRACKING_URI)"


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
        run = mlflow.start_run(run_id=run_id)
        mlflow.set_tags(extra)  # the flow run that finishes it, not the one that died
    else:
        run = mlflow.start_run(experiment_id=exp_id, run_name=run_name, tags={**tags, **extra})
    try:
        yield run, client
    except BaseException as e:
        # closing the run must not replace the real error (a dead server would raise here)
        with contextlib.suppress(Exception):
            mlflow.end_run("KILLED" if isinstance(e, KeyboardInterrupt) else "FAILED")
        if _store_failure(e):
            raise TrackingError(
                f"MLflow tracking store {tracking_uri(cfg)} failed during run "
                f"{run.info.run_id} ({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}); "
                "the checkpoints keep the training. Fix: once the store answers (`bigdeep "
                "servers up`), run the same command again: it resumes and publishes."
            ) from None
        raise
    try:
        mlflow.end_run()
    except Exception as e:  # noqa: BLE001 - the store stopped answering at the very end
        raise TrackingError(
            f"MLflow run {run.info.run_id}: the work is done but {tracking_uri(cfg)} did not "
            f"record its end ({type(e).__name__}); run the same command again once it answers"
        ) from None


def _store_failure(e: BaseException) -> bool:
    """An error of the tracking store (MLflow's, or the HTTP connection to its server)."""
    from mlflow.exceptions import MlflowException
    from requests.exceptions import RequestException

    return isinstance(e, (MlflowException, RequestException))


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
    raw = stage_files(Path(lock_path).parent, raw_name).raw  # dvc.yaml beside dvc.lock
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


def log_data_input(client, run_id: str, version: DataVersion, name: str, context: str) -> None:
    """Record the dataset as the run's input, digest = the DVC md5 (not MLflow's 10k-row hash)."""
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.entities import DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    with warnings.catch_warnings():  # MLflow registers the local source type twice
        warnings.simplefilter("ignore", UserWarning)
        source = resolve_dataset_source(Path(version.raw_path).resolve().as_uri())
    dataset = MetaDataset(source=source, name=name, digest=version.raw_md5[:36])
    tags = [InputTag("dvc_md5", version.raw_md5), InputTag(MLFLOW_DATASET_CONTEXT, context)]
    client.log_inputs(run_id, datasets=[DatasetInput(dataset._to_mlflow_entity(), tags)])


# What a run's code is: these paths as committed. Pipeline outputs (dvc.lock, data/, metrics/,
# reports/, models/) are rewritten by every run, so changes there do not make a run dirty.
SOURCE_PATHS = ("src", "flows", "scripts", "params.yaml", "dvc.yaml", "pyproject.toml", "Makefile")


def git_state(cwd: Path = Path(".")) -> dict[str, str]:
    """The commit and whether the source (SOURCE_PATHS, untracked files too) differs from it.

    MLflow tags are strings: `bigdeep.git.dirty` is "true" or "false", read back as a bool
    by `registry.lineage`.
    """

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
    changed = git("status", "--porcelain", "--untracked-files=all", "--", *SOURCE_PATHS)
    dirty = changed is None or bool(changed)  # unknown counts as dirty, never as clean
    return {"bigdeep.git.commit": commit, "bigdeep.git.dirty": "true" if dirty else "false"}
