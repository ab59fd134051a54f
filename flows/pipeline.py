"""The bigdeep pipeline as a Prefect flow whose tasks run the DVC stages.

    bigdeep run                      # or: make run
    python flows/pipeline.py         # same, from a checkout

Each task is `dvc repro --single-item <stage>`, so an unchanged stage is skipped and
every run leaves a dvc.lock. The flow adds what DVC lacks: retries on I/O, run history,
a summary artifact, and a Failed state when a quality gate fails. Stages run one after
another: DVC locks the workspace while it reproduces.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from bigdeep import orchestration

MODELS = {"images": "cnn", "series": "rnn"}


class GateFailed(RuntimeError):
    """A dataset failed its quality gate: nothing was trained or registered on it."""


class StageFailed(RuntimeError):
    """`dvc repro` of a stage failed for a reason other than the gate."""


@dataclass
class StageRun:
    stage: str
    ran: bool  # False when DVC found it unchanged and skipped it
    returncode: int
    output: str = field(repr=False, default="")


@dataclass
class DatasetSummary:
    dataset: str
    gate_passed: bool | None = None
    by_v: dict = field(default_factory=dict)
    rows: int | None = None
    quarantined: int | None = None
    failures: list[str] = field(default_factory=list)
    version: str | None = None
    model: str | None = None
    metrics: dict = field(default_factory=dict)
    run: dict = field(default_factory=dict)  # MLflow run id, model URI, registry decision
    stages: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class StageFiles:
    """The files the flow reads, taken from dvc.yaml: one fact in one place."""

    fingerprint: str  # ingest's first dependency: data/sources/<dataset>.json
    raw: str  # ingest's output: data/raw/<dataset>
    report: str  # validate's metric: reports/quality/<dataset>.json
    metrics: str  # train's metric: metrics/<model>.json
    model_dir: str  # train's first output: models/<model> (run.json inside)


def stage_files(project: Path, dataset: str) -> StageFiles:
    import yaml

    stages = yaml.safe_load((project / "dvc.yaml").read_text())["stages"]

    def body(name: str) -> dict:
        return stages[name].get("do") or stages[name]  # a foreach stage keeps its body in `do`

    def path(entry) -> str:
        return (next(iter(entry)) if isinstance(entry, dict) else entry).replace("${item}", dataset)

    train = body(f"train_{MODELS[dataset]}")
    return StageFiles(
        fingerprint=path(body("ingest")["deps"][0]),
        raw=path(body("ingest")["outs"][0]),
        report=path(body("validate")["metrics"][0]),
        metrics=path(train["metrics"][0]),
        model_dir=path(train["outs"][0]),
    )


def _dvc(project: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    # `bigdeep` (the stages' cmd) lives beside this interpreter, in the project's venv.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    try:
        from prefect.runtime import flow_run

        if flow_run.id:
            env["BIGDEEP_FLOW_RUN_ID"] = str(flow_run.id)
    except Exception:  # noqa: BLE001 - outside a flow run there is simply no id
        pass
    proc = subprocess.run(
        [sys.executable, "-m", "dvc", *args], cwd=project, env=env, capture_output=True, text=True
    )
    orchestration.mark(f"dvc {' '.join(args)}")
    return proc


def fresh_stages(project: Path) -> set[str]:
    """The stages `dvc status` finds up to date: one DVC call instead of a `repro` per stage.

    Valid until a stage runs: a stage that ran changes what its downstream stages depend on.
    """
    import yaml

    proc = _dvc(project, "status", "--json")
    if proc.returncode != 0:
        return set()  # let each `dvc repro` decide (and report the problem)
    changed = json.loads(proc.stdout or "{}")
    stages = yaml.safe_load((project / "dvc.yaml").read_text())["stages"]
    names = set()
    for name, body in stages.items():
        items = body.get("foreach") if isinstance(body, dict) else None
        names |= {f"{name}@{item}" for item in items} if isinstance(items, list) else {name}
    return names - set(changed)


@task(name="reproduce")
def reproduce(project_dir: str, stage: str, fresh: bool = False) -> StageRun:
    """`dvc repro -s <stage>`: run it when its deps, params or code changed, else skip.

    fresh: `dvc status` found it up to date at the start of the run, and nothing ran before it.
    """
    logger = get_run_logger()
    if fresh:
        logger.info("%s: unchanged, skipped", stage)
        return StageRun(stage, False, 0, "up to date (dvc status)")
    proc = _dvc(Path(project_dir), "repro", "--single-item", stage)
    output = proc.stdout + proc.stderr
    ran = bool(re.search(rf"Running stage '{re.escape(stage)}'", output))
    logger.info("%s: %s", stage, "ran" if ran else "unchanged, skipped")
    if proc.returncode != 0:
        logger.error("%s failed (exit %d):\n%s", stage, proc.returncode, output[-4000:])
    return StageRun(stage, ran, proc.returncode, output)


@task(name="check-tracking")
def check_tracking(project_dir: str) -> str:
    """Fail at the start, not after training, when the MLflow server is down."""
    from bigdeep.config import load_settings
    from bigdeep.tracking import check_reachable

    return check_reachable(load_settings(Path(project_dir) / "params.yaml").mlflow)


@task(name="push-data", retries=2, retry_delay_seconds=5)
def push_data(project_dir: str) -> str:
    """`dvc push` accepted data to the default remote, so `bigdeep restore` works elsewhere."""
    if not _dvc(Path(project_dir), "remote", "list").stdout.strip():
        get_run_logger().warning("no DVC remote configured: data not pushed")
        return "no remote"
    proc = _dvc(Path(project_dir), "push")
    if proc.returncode != 0:
        raise StageFailed(f"dvc push failed:\n{(proc.stdout + proc.stderr)[-2000:]}")
    return proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""


@task(name="apply-params")
def apply_params(project_dir: str, overrides: dict[str, str]) -> bool:
    """Write the run's parameter overrides into params.yaml (validated; comments kept)."""
    from bigdeep.config import apply_overrides

    changed = apply_overrides(Path(project_dir) / "params.yaml", overrides)
    get_run_logger().info(
        "params overrides %s: %s", overrides, "applied" if changed else "already in place"
    )
    return changed


@task(name="scan", retries=2, retry_delay_seconds=5)
def scan(project_dir: str, dataset: str) -> bool:
    """Fingerprint the source (new files in a folder?); True when it changed since last run."""
    from bigdeep.config import load_settings
    from bigdeep.data.sources import write_fingerprint

    project = Path(project_dir)
    source = getattr(load_settings(project / "params.yaml").data, dataset).source
    changed = write_fingerprint(
        source, project / stage_files(project, dataset).fingerprint, root=project
    )
    get_run_logger().info(
        "%s: source %s %s", dataset, source, "changed" if changed else "unchanged"
    )
    return changed


@task(name="ingest", retries=2, retry_delay_seconds=5)
def ingest(project_dir: str, dataset: str, fresh: bool = False) -> StageRun:
    """Reading the source is the one I/O-bound stage that may fail transiently: retried."""
    result = reproduce.fn(project_dir, f"ingest@{dataset}", fresh)
    if result.returncode != 0:
        raise StageFailed(f"ingest@{dataset} failed:\n{result.output[-2000:]}")
    return result


@task(name="gate")
def gate(project_dir: str, dataset: str, fresh: bool = False) -> tuple[StageRun, dict]:
    """Run `validate@<dataset>` and read its report; a failed gate stops this dataset."""
    result = reproduce.fn(project_dir, f"validate@{dataset}", fresh)
    report_path = Path(project_dir) / stage_files(Path(project_dir), dataset).report
    report = json.loads(report_path.read_text()) if report_path.exists() else {}
    if report:
        from prefect.artifacts import create_table_artifact

        from bigdeep.quality.report import report_table

        orchestration.best_effort(
            f"the {dataset} quality table",
            create_table_artifact,
            table=report_table(report),
            key=f"quality-{dataset}",
            description=f"quality gate: {dataset}",
        )
    if result.returncode != 0 and report.get("passed") is not False:
        raise StageFailed(f"validate@{dataset} failed:\n{result.output[-2000:]}")
    return result, report


@task(name="summarize")
def summarize(project_dir: str, summaries: list[DatasetSummary]) -> str:
    from bigdeep.tracking import lock_outs

    outs = lock_outs(Path(project_dir) / "dvc.lock")
    lines = ["# bigdeep pipeline", ""]
    for s in summaries:
        s.version = outs.get(stage_files(Path(project_dir), s.dataset).raw)
        gate_word = {True: "PASSED", False: "FAILED", None: "not run"}[s.gate_passed]
        lines.append(f"## {s.dataset}: gate {gate_word}, version {s.version or '-'}")
        lines.append("")
        if s.rows is not None:
            lines.append(f"- rows {s.rows}, quarantined {s.quarantined}")
        for v, c in s.by_v.items():
            lines.append(f"- {v}: {c['passed']} passed, {c['failed']} failed")
        for failure in s.failures[:10]:
            lines.append(f"- failure: {failure}")
        if s.model:
            shown = ", ".join(
                f"{k} {v:.4g}"
                for k, v in sorted(s.metrics.items())
                if isinstance(v, float)
                and not k.startswith("test_recall_")  # per class: in the report
            )
            lines.append(f"- model {s.model}: {shown}; MLflow run {s.run.get('run_id', '-')}")
            reg = s.run.get("registry") or {}
            if reg:
                lines.append(
                    f"- registry: {reg['model']} v{reg['version']} is {reg['alias']} ({reg['reason']})"
                )
        lines.append("- stages: " + ", ".join(f"{k} {v}" for k, v in s.stages.items()))
        lines.append("")
    return "\n".join(lines)


@flow(name="bigdeep-pipeline", log_prints=True)
def pipeline(
    project_dir: str = ".",
    datasets: list[str] | None = None,
    overrides: dict[str, str] | None = None,
) -> list[dict]:
    """ingest -> validate (gate) -> prepare -> train, per dataset; Failed if any gate fails.

    overrides: dotted params.yaml keys to set first, e.g. {"train.cnn.epochs": "3"}.
    """
    project = str(Path(project_dir).resolve())
    _claim_and_reap(project)
    if overrides:
        apply_params(project, overrides)
    check_tracking(project)
    summaries = []
    failed_gates, errors = [], []
    for dataset in datasets or list(MODELS):
        scan(project, dataset)
    up_to_date = fresh_stages(Path(project))
    for dataset in datasets or list(MODELS):
        fresh = up_to_date  # emptied once a stage of this dataset runs
        s = DatasetSummary(dataset)
        summaries.append(s)
        try:
            stage = ingest(project, dataset, f"ingest@{dataset}" in fresh)
            s.stages["ingest"] = _word(stage)
            fresh = set() if stage.ran else fresh
            run, report = gate(project, dataset, f"validate@{dataset}" in fresh)
            fresh = set() if run.ran else fresh
            s.stages["validate"] = _word(run)
            s.gate_passed = bool(report.get("passed"))
            s.by_v, s.rows = report.get("by_v", {}), report.get("rows")
            s.quarantined, s.failures = report.get("quarantined"), report.get("failures", [])
            if not s.gate_passed:
                failed_gates.append(dataset)
                continue  # nothing is prepared, trained or registered on data that failed
            model = MODELS[dataset]
            for stage, key in (
                (f"prepare@{dataset}", "prepare"),
                (f"train_{model}", f"train_{model}"),
            ):
                result = reproduce(project, stage, stage in fresh)
                s.stages[key] = _word(result)
                fresh = set() if result.ran else fresh
                if result.returncode != 0:
                    raise StageFailed(f"{stage} failed:\n{result.output[-2000:]}")
            s.model = model
            files = stage_files(Path(project), dataset)
            s.metrics = json.loads((Path(project) / files.metrics).read_text())
            s.run = json.loads((Path(project) / files.model_dir / "run.json").read_text())
        except StageFailed as e:
            errors.append(str(e))
    if any(s.model and "ran" in s.stages.values() for s in summaries):  # something new to push
        push_data(project)
    text = summarize(project, summaries)
    print(text)
    orchestration.work_done(not failed_gates and not errors)
    orchestration.best_effort(
        "the summary artifact",
        create_markdown_artifact,
        markdown=text,
        key="bigdeep-summary",
        description="bigdeep pipeline summary",
    )
    if failed_gates:
        raise GateFailed(
            f"quality gate failed for {', '.join(failed_gates)}: see the reports above"
        )
    if errors:
        raise StageFailed("\n".join(errors))
    return [asdict(s) for s in summaries]


def serve(
    project_dir: str,
    cron: str,
    datasets: list[str],
    overrides: dict[str, str] | None = None,
    name: str = "scheduled",
) -> None:
    """Serve the flow as a deployment on the Prefect server (blocks, like a worker).

    global_limit=1: two runs never interleave; a second waits until the first is done.
    """
    pipeline.serve(
        name=name,
        cron=cron,
        parameters={"project_dir": project_dir, "datasets": datasets, "overrides": overrides or {}},
        global_limit=1,
    )


def _claim_and_reap(project: str) -> None:
    """Tag this flow run with its project and PID; mark the project's dead runs CRASHED."""
    from prefect.runtime import flow_run

    orchestration.work_done(None)
    crashed = orchestration.best_effort(
        "this run's PID tag", orchestration.claim_and_reap, Path(project), flow_run.id
    )
    if crashed:
        get_run_logger().warning(
            "marked %d flow run(s) CRASHED, their process is gone: %s",
            len(crashed),
            ", ".join(crashed),
        )
    orchestration.mark("flow run tagged, dead runs reaped")


def _word(run: StageRun) -> str:
    return "failed" if run.returncode else ("ran" if run.ran else "skipped")


if __name__ == "__main__":
    state = pipeline(project_dir=".", return_state=True)
    sys.exit(0 if state.is_completed() else 1)
