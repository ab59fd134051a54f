"""Stages `train_cnn` / `train_rnn`: the shell around the training core.

    bigdeep train cnn --data data/processed/images --out models/cnn --metrics metrics/cnn.json
    bigdeep train rnn --data data/processed/series --out models/rnn --metrics metrics/rnn.json

The shell opens (or resumes) the MLflow run, has the core fit and test the job
(`training.core.fit_and_test`), then publishes through one explicit `MlflowClient` and run id:
test metrics, evaluation files, the model (`pt2`, with signature and input example), the
registry decision (under its identity's name: champion, challenger or, under the sanity
floor, no alias), the explanations (`bigdeep.explain`: attributions of a test sample, after
the model is safe; a failure there only warns), the quality report and the DVC outputs. The run has to be open before
`fit`, not only for publishing: the per-epoch curves go to it while training runs, and a
resumed training continues it. This is a separation of concerns, not a reordering.

Checkpoints (last and best, written atomically) go to `checkpoints/<model>/`. A run that
died (SIGKILL, a lost machine) is resumed from its last checkpoint into the same MLflow
run when the same command runs again with the same params and data (`--resume` insists).
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import torch

from bigdeep import evaluate, explain
from bigdeep.config import Settings, default_identity
from bigdeep.errors import BigdeepError
from bigdeep.registry import (
    IDENTITY_TAG,
    Decision,
    Scorer,
    current_champion,
    decision_for,
    params_hash,
    record,
    register,
    registered_name,
)
from bigdeep.tracking import (
    DataVersion,
    check_reachable,
    data_version,
    git_state,
    log_data_input,
    start_run,
    tracking_uri,
)
from bigdeep.training import privacy_record
from bigdeep.training.core import Fitted, Job, exported, fit_and_test, served_test_split
from bigdeep.training.jobs import build_image_job, build_series_job
from bigdeep.training.plumbing import (
    SPOOL,
    EpochHistory,
    configure_torch,
    launched_as_rank_zero,
    log_metrics,
    make_trainer,
    outage_wait,
)

# Installed into the model's environment by whoever serves it; pinned like ours.
MODEL_REQUIREMENTS = [f"torch=={torch.__version__.split('+')[0]}", "numpy", "mlflow"]

# auto: continue an unfinished run when params and data match (the default); require: the
# same, and an error when there is none (--resume); never: always a new run (--no-resume)
Resume = Literal["auto", "require", "never"]


class ResumeError(BigdeepError, RuntimeError):
    """--resume was asked for but there is nothing matching to resume."""


@dataclass(frozen=True)
class TrainResult:
    model: str
    run_id: str
    metrics: dict[str, float]
    data_version: str
    decision: Decision | None = None  # the registry's, with its reason


@dataclass(frozen=True)
class Paths:
    data: Path  # data/processed/<dataset>
    out: Path  # models/<model>: model.pt, run.json
    metrics: Path  # metrics/<model>.json (DVC metric)
    plots: Path  # reports/train/<model>: curves, evaluation tables and figures
    checkpoints: Path  # checkpoints/<model>: last.ckpt, best.ckpt, state.json
    report: Path | None = None  # the quality report to attach
    lock: Path = Path("dvc.lock")


def train_cnn(settings: Settings, paths: Paths, resume: Resume = "auto") -> TrainResult | None:
    check_reachable(settings.mlflow)  # fail now, not after training
    configure_torch(settings.train.trainer, settings.seed)
    return run_job(settings, build_image_job(settings, paths.data), paths, resume)


def train_rnn(settings: Settings, paths: Paths, resume: Resume = "auto") -> TrainResult | None:
    check_reachable(settings.mlflow)  # fail now, not after training
    configure_torch(settings.train.trainer, settings.seed)
    return run_job(settings, build_series_job(settings, paths.data), paths, resume)


def run_job(
    settings: Settings, job: Job, paths: Paths, resume: Resume = "auto"
) -> TrainResult | None:
    """Open or resume the run, fit and test `job`, publish; None in a DDP run's extra processes."""
    if resume not in get_args(Resume):
        raise ValueError(f"resume must be one of {get_args(Resume)}, got {resume!r}")
    version = data_version(paths.lock, paths.data, raw_name=job.dataset)
    fingerprint = _fingerprint(settings, version)
    if not launched_as_rank_zero():
        return _fit_as_peer(settings, job, paths, fingerprint)
    previous = _run_to_continue(paths.checkpoints, fingerprint, resume)
    tags = run_tags(settings, job.name, version, job.dataset)
    run_id = previous["run_id"] if previous else None
    with start_run(settings.mlflow, run_name=f"train_{job.name}", tags=tags, run_id=run_id) as (
        run,
        client,
    ):
        run_id = run.info.run_id
        if previous is None:
            log_params(client, run_id, {**_common_params(settings), **job.params})
            log_data_input(client, run_id, version, name=job.dataset, context="training")
        _write_state(paths.checkpoints, run_id, fingerprint, complete=False)
        history = EpochHistory(
            client,
            run_id,
            job.history_keys,
            rows=_history_so_far(client, run_id, job.history_keys),
            spool=paths.checkpoints / SPOOL,
            uri=tracking_uri(settings.mlflow),
        )
        trainer = make_trainer(
            settings.train.trainer,
            job.epochs,
            job.patience,
            history,
            paths.checkpoints,
            extra=(job.privacy,) if job.privacy else (),  # train.privacy: Opacus, its accountant
            precision=job.precision,
        )
        ckpt = str(paths.checkpoints / "last.ckpt") if previous else None

        def after_fit() -> None:  # the curves reach the server (or fail) before testing
            history.drain(outage_wait(), paths.checkpoints / "last.ckpt")
            if ckpt:
                client.set_tag(run_id, "bigdeep.resumed_from", ckpt)

        fitted = fit_and_test(job, trainer, ckpt, after_fit)
        decision = publish(client, run_id, settings, job, paths, version, fitted)
        _write_state(paths.checkpoints, run_id, fingerprint, complete=True)
        return TrainResult(job.name, run_id, fitted.metrics, version.raw_md5, decision)


def publish(
    client,
    run_id: str,
    settings: Settings,
    job: Job,
    paths: Paths,
    version: DataVersion,
    fitted: Fitted,
) -> Decision:
    """Evaluation files, metrics, model, registry decision, artifacts, then the DVC outputs."""
    paths.plots.mkdir(parents=True, exist_ok=True)
    job.write_report(fitted.predictions, paths.plots)
    log_metrics(client, run_id, fitted.metrics, step=0)
    privacy = job.privacy.record() if job.privacy else None  # epsilon spent, target, delta
    if privacy:  # before registering: the model version takes the run's tags
        for key, value in privacy_record.tags(privacy).items():
            client.set_tag(run_id, key, value)
    paths.out.mkdir(parents=True, exist_ok=True)
    torch.save(job.model.state_dict(), paths.out / "model.pt")
    model_uri, model_id = log_model(client, run_id, *exported(job))
    decision = _register(client, run_id, settings, job, fitted, model_uri, model_id, version)
    evaluate.write_history(fitted.history, paths.plots / "history.csv")
    evaluate.plot_history(
        fitted.history, paths.plots / "learning_curve.png", f"{job.name}: learning curve"
    )
    # after the model is saved and registered, so a failure there cannot lose it
    explain_model(client, run_id, job, paths.plots / "explain", settings.train.explain.enabled)
    client.log_artifacts(run_id, str(paths.plots), artifact_path="plots")
    if paths.report is not None and paths.report.exists():
        client.log_artifact(run_id, str(paths.report), artifact_path="quality")
    _write_outputs(paths, run_id, fitted.metrics, model_uri, version.raw_md5, decision, privacy)
    return decision


def explain_model(client, run_id: str, job: Job, folder: Path, enabled: bool) -> None:
    """Attributions of the tested model into `folder` (logged with the plots), figures and the
    time they took as metrics, tag `bigdeep.explain` ok | off | failed.

    Explaining is an extra: an error here is a warning paragraph and a README.txt in `folder`,
    and the stage goes on (the model is already saved and registered).
    """
    if not enabled or job.explain is None:
        explain.reset_folder(folder, explain.OFF_NOTE)
        client.set_tag(run_id, "bigdeep.explain", "off")
        return
    explain.reset_folder(folder)
    start = time.perf_counter()
    try:
        _, figures = job.explain(folder)
    except Exception as e:  # noqa: BLE001 - any failure: the trained model must not be lost
        reason = f"{type(e).__name__}: {e}"
        message = (
            f"bigdeep: explaining the {job.name} model failed ({reason}). The model was "
            f"trained, tested, saved and registered as usual; {folder} holds only a README.txt "
            "saying so. Re-run the stage to try again, or set train.explain.enabled: false in "
            "params.yaml to skip explanations."
        )
        explain.reset_folder(folder, message + "\n")
        print(message, file=sys.stderr, flush=True)
        client.set_tag(run_id, "bigdeep.explain", f"failed: {reason}"[:5000])
        return
    seconds = time.perf_counter() - start
    log_metrics(client, run_id, {**figures, "explain_seconds": seconds}, step=0)
    client.set_tag(run_id, "bigdeep.explain", "ok")


def _register(
    client,
    run_id: str,
    settings: Settings,
    job: Job,
    fitted: Fitted,
    model_uri: str,
    model_id: str,
    version: DataVersion,
) -> Decision:
    """Score the model and the champion on the same test split, register it, record why."""
    identity = getattr(settings.data, job.dataset).identity
    name = registered_name(
        settings.registry.prefix, job.name, identity, default_identity(job.dataset)
    )
    score = Scorer(*served_test_split(job), job.score)  # both on the same inputs
    candidate_score = score(model_uri)
    champion = current_champion(client, name, score)
    tags = client.get_run(run_id).data.tags
    floor = job.floor(fitted.metrics)
    decision = decision_for(
        name=name,
        version=register(client, name, run_id, model_uri, model_id, tags),
        metric=job.metric,
        candidate_score=candidate_score,
        higher_is_better=job.higher_is_better,
        margin=job.margin,
        champion=champion,
        floor=floor,
        data_version=version.processed_md5,
        identity=tags.get(IDENTITY_TAG),
    )
    record(client, run_id, decision, floor)
    return decision


# --- resume ----------------------------------------------------------------------------------


def _fingerprint(settings: Settings, version: DataVersion) -> str:
    return f"{params_hash(settings.model_dump())}:{version.processed_md5}"


def resumable(checkpoints: Path, fingerprint: str) -> dict | None:
    """The unfinished run to continue, if its params and data are the ones of this run."""
    state_path, last = checkpoints / "state.json", checkpoints / "last.ckpt"
    if not (state_path.exists() and last.exists()):
        return None
    state = json.loads(state_path.read_text())
    if state.get("complete") or state.get("fingerprint") != fingerprint:
        return None
    return state


def _run_to_continue(checkpoints: Path, fingerprint: str, resume: Resume) -> dict | None:
    """The state of the run to continue, or None after clearing another run's checkpoints."""
    previous = resumable(checkpoints, fingerprint)
    if resume == "require" and previous is None:
        raise ResumeError(
            f"--resume: no unfinished run with these params and data in {checkpoints}"
        )
    if previous is None or resume == "never":
        for stale in [*checkpoints.glob("*.ckpt"), checkpoints / SPOOL]:
            stale.unlink(missing_ok=True)  # another run's: never continue from it
        return None
    return previous


def _write_state(checkpoints: Path, run_id: str, fingerprint: str, complete: bool) -> None:
    checkpoints.mkdir(parents=True, exist_ok=True)
    tmp = checkpoints / "state.json.tmp"
    state = {"run_id": run_id, "fingerprint": fingerprint, "complete": complete}
    tmp.write_text(json.dumps(state, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, checkpoints / "state.json")


def _fit_as_peer(settings: Settings, job: Job, paths: Paths, fingerprint: str) -> None:
    """Rank > 0 of a DDP run: the same fit and test as rank zero, no logger, no outputs.

    Rank zero decided before launching this process whether to resume (and wrote
    state.json); reading the same state gives the same checkpoint here.
    """
    previous = resumable(paths.checkpoints, fingerprint)
    trainer = make_trainer(
        settings.train.trainer,
        job.epochs,
        job.patience,
        None,
        paths.checkpoints,
        precision=job.precision,
    )
    ckpt = str(paths.checkpoints / "last.ckpt") if previous else None
    trainer.fit(job.model, datamodule=job.datamodule, ckpt_path=ckpt, weights_only=True)
    trainer.test(job.model, datamodule=job.datamodule, verbose=False)  # its collectives too
    return None


def _history_so_far(client, run_id: str, keys: tuple[str, ...]) -> list[dict[str, float]]:
    """The curves a resumed run already logged, so history.csv covers every epoch."""
    rows: dict[int, dict[str, float]] = {}
    for key in keys:
        for m in client.get_metric_history(run_id, key):
            rows.setdefault(m.step, {"epoch": m.step})[key] = m.value
    return [rows[e] for e in sorted(rows)]


# --- what the run records --------------------------------------------------------------------


def _write_outputs(
    paths: Paths,
    run_id,
    metrics,
    model_uri,
    data_version_: str,
    decision: Decision,
    privacy: dict | None = None,
) -> None:
    paths.metrics.parent.mkdir(parents=True, exist_ok=True)
    # the DVC metric holds numbers only; where they came from sits beside the model
    paths.metrics.write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    run_info = {
        "run_id": run_id,
        "model_uri": model_uri,
        "data_version": data_version_,
        "registry": asdict(decision),
        "privacy": privacy,  # train.privacy: epsilon spent, target, delta; null: trained without DP
    }
    (paths.out / "run.json").write_text(json.dumps(run_info, indent=2, sort_keys=True) + "\n")


def run_tags(settings: Settings, model: str, version: DataVersion, dataset: str) -> dict[str, str]:
    """Lineage: which data (identity, DVC md5s), code (git) and params (hash) a run came from."""
    return {
        "bigdeep.model": model,
        IDENTITY_TAG: getattr(settings.data, dataset).identity,
        "bigdeep.params_hash": params_hash(settings.model_dump()),
        **version.tags(),
        **git_state(),
    }


def _common_params(settings: Settings) -> dict[str, Any]:
    """The trainer's settings every job logs; what a job resolves itself (the precision,
    measured when null; compile, off under differential privacy) comes with the job
    (`jobs._gpu_first`)."""
    t = settings.train.trainer
    return {
        "seed": settings.seed,
        "trainer.accelerator": t.accelerator,
        "trainer.devices": t.devices,
        "trainer.strategy": t.strategy,
        "trainer.num_nodes": t.num_nodes,
        "trainer.threads": t.threads,
        "trainer.limit_train_batches": t.limit_train_batches,
        "trainer.device_data": t.device_data,
        "trainer.deterministic": t.deterministic,
    }


def log_params(client, run_id: str, params: dict[str, Any]) -> None:
    """All params in one request, as strings (what MLflow stores)."""
    from mlflow.entities import Param

    client.log_batch(run_id, params=[Param(k, str(v)) for k, v in params.items()])


def log_model(client, run_id: str, module: torch.nn.Module, example) -> tuple[str, str]:
    """Log in MLflow's `pt2` format (torch.export, no pickle), batch dimension dynamic.

    (model URI, logged model id). MLflow's model flavours log only into the active run (no
    run id argument): the run `start_run` opened, which is `run_id`.
    """
    import mlflow
    from mlflow.models import infer_signature

    module = module.cpu().eval()
    with torch.no_grad():
        out = module(torch.from_numpy(example)).numpy()
    info = mlflow.pytorch.log_model(
        module,
        name="model",
        signature=infer_signature(example, out),
        input_example=example,
        serialization_format="pt2",
        pip_requirements=MODEL_REQUIREMENTS,
    )
    client.set_tag(run_id, "bigdeep.model_uri", info.model_uri)
    return info.model_uri, info.model_id
