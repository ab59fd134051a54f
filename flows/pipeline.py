"""The bigdeep pipeline as a Prefect flow whose tasks run the DVC stages.

    bigdeep run                      # or: make run
    python flows/pipeline.py         # same, from a checkout

Each task is `dvc repro --single-item <stage>`, so an unchanged stage is skipped and
every run leaves a dvc.lock. The flow adds what DVC lacks: retries on transient I/O errors
(network, a busy lock, HTTP 5xx; a deterministic error is not retried), run history, a summary
artifact, and a Failed state whose data is a `RunFailed` naming the stage, the dataset and the
fix (exit 3 when a quality gate failed). Stages run one after another: DVC locks the workspace
while it reproduces. `bigdeep run` starts this flow only when something would run
(flows/uptodate.py); the summary is built in flows/summary.py, shared with that check.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.states import Failed

from bigdeep import orchestration
from bigdeep.config import MODELS, stage_files  # paths: from dvc.yaml
from bigdeep.errors import (
    EXIT_CONFIG,
    EXIT_FAILED,
    EXIT_GATE,
    BigdeepError,
    GateFailed,
    RunFailed,
    StageFailed,
    describe,
    printable,
)
from bigdeep.remote import mark_push, push_failed, push_pending
from flows.summary import DatasetSummary, report_notes, summary_text
from flows.uptodate import dvc_changes, stage_names

__all__ = [
    "DatasetSummary",
    "GateFailed",
    "RunFailed",
    "StageFailed",
    "pipeline",
    "report_notes",
    "serve",
    "stage_files",
    "summarize",
]

# What a retry can cure: the network, a lock another process holds, a server's 5xx.
TRANSIENT = re.compile(
    r"is busy|Connection (refused|reset|aborted)|timed out|Temporary failure in name resolution"
    r"|Name or service not known|HTTP (Error )?5\d\d|\b5\d\d (Server Error|Bad Gateway|"
    r"Service Unavailable|Gateway Timeout)",
    re.IGNORECASE,
)
# The one error paragraph `bigdeep <stage>` prints (bigdeep.cli.main), continued by indented lines.
STAGE_ERROR = re.compile(r"^bigdeep [\w-]+: (config error|error): ")
DVC_EXIT = re.compile(r"exited with (-?\d+)")


@dataclass
class StageRun:
    stage: str
    ran: bool  # False when DVC found it unchanged and skipped it
    returncode: int
    output: str = field(repr=False, default="")


def stage_error(output: str) -> str:
    """The failing stage's own error from `dvc repro` output, without DVC's noise around it.

    The last paragraph `bigdeep <stage>` printed (its first line and the indented ones after
    it); else the last line of a Python traceback; else DVC's own last ERROR line.
    """
    lines = output.splitlines()
    starts = [i for i, line in enumerate(lines) if STAGE_ERROR.match(line)]
    if starts:
        block = [STAGE_ERROR.sub("", lines[starts[-1]])]
        for line in lines[starts[-1] + 1 :]:
            if not line.startswith(" "):
                break
            block.append(line)
        return "\n".join(block)
    if "Traceback (most recent call last)" in output:
        for line in reversed(lines):
            if re.match(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)\b", line):
                return line
    errors = [line for line in lines if line.startswith("ERROR:")]
    return (errors[-1] if errors else (lines[-1] if lines else "no output")).strip()


def stage_failure(stage: str, dataset: str | None, run: StageRun) -> StageFailed:
    """A failed `dvc repro` as one StageFailed: its error, exit meaning, transient or not."""
    message = stage_error(run.output)
    exited = DVC_EXIT.findall(run.output)
    code = EXIT_CONFIG if exited and int(exited[-1]) == EXIT_CONFIG else EXIT_FAILED
    transient = bool(TRANSIENT.search(message)) and not STAGE_ERROR.search(run.output)
    return StageFailed(message, stage=stage, dataset=dataset, exit_code=code, transient=transient)


def is_transient(error: BaseException | None) -> bool:
    """Worth a retry: a transient StageFailed, a network error; never a project error."""
    if isinstance(error, StageFailed):
        return error.transient
    if isinstance(error, BigdeepError):
        return False
    return isinstance(error, ConnectionError | TimeoutError)


def _only_transient(task, task_run, state) -> bool:
    """Prefect's retry_condition_fn: retry transient errors only (see is_transient)."""
    error = getattr(state, "data", None)
    error = getattr(error, "result", error)  # a ResultRecord wraps the exception
    return is_transient(error if isinstance(error, BaseException) else None)


def _log_stage_output(stage: str, output: str) -> None:
    """The full output of a stage goes to the run's log file, not to the console."""
    path = os.environ.get("BIGDEEP_RUN_LOG")
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(f"\n----- {stage}: dvc repro output -----\n{output}\n")


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
    changed = dvc_changes(project)
    if changed is None:
        return set()  # let each `dvc repro` decide (and report the problem)
    return stage_names(project) - set(changed)


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
    _log_stage_output(stage, output)
    if proc.returncode != 0:
        logger.error("%s failed: %s", stage, printable(stage_error(output)))
    return StageRun(stage, ran, proc.returncode, output)


@task(name="check-tracking")
def check_tracking(project_dir: str) -> str:
    """Fail at the start, not after training, when the MLflow server is down."""
    from bigdeep.config import load_settings
    from bigdeep.tracking import check_reachable

    return check_reachable(load_settings(Path(project_dir) / "params.yaml").mlflow)


@task(name="push-data", retries=2, retry_delay_seconds=5, retry_condition_fn=_only_transient)
def push_data(project_dir: str) -> str:
    """`dvc push` accepted data to the default remote, so `bigdeep restore` works elsewhere."""
    if not _dvc(Path(project_dir), "remote", "list").stdout.strip():
        get_run_logger().warning("no DVC remote configured: data not pushed")
        return "no remote"
    proc = _dvc(Path(project_dir), "push")
    mark_push(Path(project_dir), proc.returncode == 0)
    if proc.returncode != 0:
        output = proc.stdout + proc.stderr
        _log_stage_output("dvc push", output)
        failure = stage_failure(
            "dvc push", None, StageRun("dvc push", True, proc.returncode, output)
        )
        # which remote, why, what to do; a lock or a 5xx is retried by Prefect
        raise push_failed(Path(project_dir), output, transient=failure.transient)
    return proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""


@task(name="apply-params")
def apply_params(project_dir: str, overrides: dict[str, str]) -> list[str]:
    """Write the run's --set values into params.yaml, after the preflight checks; say what
    changed and how to undo it. Only the value on each key's line changes (bigdeep.config)."""
    from bigdeep.config import apply_overrides

    changes = apply_overrides(Path(project_dir) / "params.yaml", overrides)
    lines = [
        f"params.yaml line {c.line}: {c.key}: {c.old if c.old is not None else '(not set)'} -> {c.new}"
        for c in changes
    ]
    undo = [shlex.quote(f"{c.key}={c.old}") for c in changes if c.old is not None]
    if undo:
        lines.append(
            "this stays in params.yaml for later runs; undo: bigdeep run "
            + " ".join(f"--set {u}" for u in undo)
            + " (or git checkout params.yaml)"
        )
    elif changes:
        lines.append("this stays in params.yaml for later runs; undo: git checkout params.yaml")
    for line in lines or [f"params.yaml already has {', '.join(overrides)} as asked"]:
        print(line)
    return lines


@task(name="scan", retries=2, retry_delay_seconds=5, retry_condition_fn=_only_transient)
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


@task(name="ingest", retries=2, retry_delay_seconds=5, retry_condition_fn=_only_transient)
def ingest(project_dir: str, dataset: str, fresh: bool = False) -> StageRun:
    """Reading the source is the one I/O-bound stage that may fail transiently: retried then
    (a busy lock, the network); a deterministic failure is returned to the flow at once."""
    result = reproduce.fn(project_dir, f"ingest@{dataset}", fresh)
    if result.returncode != 0:
        failure = stage_failure(f"ingest@{dataset}", dataset, result)
        if failure.transient:
            raise failure
    return result


@task(name="gate")
def gate(project_dir: str, dataset: str, fresh: bool = False) -> tuple[StageRun, dict]:
    """Run `validate@<dataset>` and read its report; a failed gate stops this dataset."""
    result = reproduce.fn(project_dir, f"validate@{dataset}", fresh)
    for line in result.output.splitlines():  # the store did not take the quality history
        if line.startswith("warning: quality history"):
            get_run_logger().warning("validate@%s: %s", dataset, line.removeprefix("warning: "))
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
        raise stage_failure(f"validate@{dataset}", dataset, result)
    return result, report


@task(name="summarize")
def summarize(project_dir: str, summaries: list[DatasetSummary]) -> str:
    """The summary for the console and the Prefect artifact (flows.summary.summary_text)."""
    return summary_text(project_dir, summaries)


@flow(name="bigdeep-pipeline", log_prints=True)
def pipeline(
    project_dir: str = ".",
    datasets: list[str] | None = None,
    overrides: dict[str, str] | None = None,
):
    """ingest -> validate (gate) -> prepare -> train, per dataset; Failed if any stage fails.

    overrides: dotted params.yaml keys to set once the preflight checks passed, e.g.
    {"train.cnn.epochs": "3"}. A failed run ends in a Failed state whose data is a RunFailed
    (one paragraph per failure; exit_code 3 when only quality gates failed).
    """
    project = str(Path(project_dir).resolve())
    from bigdeep.runlock import clear_stale_dvc_locks, hold_run

    # `bigdeep run` holds the lock already (re-entrant); a worker's run takes it here, the second
    # line after the deployment's concurrency limit
    with hold_run(Path(project), wait=True):
        for line in clear_stale_dvc_locks(Path(project)):
            get_run_logger().warning(line)
        return _pipeline(project, datasets, overrides)


def _pipeline(project: str, datasets: list[str] | None, overrides: dict[str, str] | None):
    _claim_and_reap(project)
    try:
        check_tracking(project)
        if overrides:  # after the preflight checks: a run that cannot start changes nothing
            apply_params(project, overrides)
    except BigdeepError as e:
        orchestration.work_done(False)
        return _failed([f"preflight failed: {describe(e)}"], e.exit_code)
    summaries = [DatasetSummary(dataset) for dataset in datasets or list(MODELS)]
    failures: list[StageFailed] = []
    scanned = []
    for s in summaries:  # every fingerprint first: `dvc status` then sees the new sources
        try:
            _scan(project, s.dataset)
            scanned.append(s)
        except StageFailed as e:
            _record(project, s, e, failures)
    up_to_date = fresh_stages(Path(project))
    for s in scanned:
        try:
            _run_dataset(project, s, set(up_to_date))
        except StageFailed as e:
            _record(project, s, e, failures)
    # something new to push, or the last run's push failed (the object store was down)
    if any(s.model and "ran" in s.stages.values() for s in summaries) or push_pending(
        Path(project)
    ):
        try:
            push_data(project)
        except StageFailed as e:
            failures.append(e)
    text = summarize(project, summaries)
    print(text)
    gates = [s for s in summaries if s.gate_passed is False]
    orchestration.work_done(not failures and not gates)
    orchestration.best_effort(
        "the summary artifact",
        create_markdown_artifact,
        markdown=text,
        key="bigdeep-summary",
        description="bigdeep pipeline summary",
    )
    if failures or gates:
        paragraphs = [_stage_paragraph(e) for e in failures]
        paragraphs += [_gate_paragraph(project, s) for s in gates]
        codes = {e.exit_code for e in failures}
        code = EXIT_CONFIG if EXIT_CONFIG in codes else EXIT_FAILED if codes else EXIT_GATE
        return _failed(paragraphs, code)
    return [asdict(s) for s in summaries]


def _scan(project: str, dataset: str) -> None:
    try:
        scan(project, dataset)
    except BigdeepError as e:  # the source cannot be read: named by the error
        raise StageFailed(describe(e), stage=f"scan@{dataset}", dataset=dataset) from None


def _record(project: str, s: DatasetSummary, e: StageFailed, failures: list) -> None:
    if e.stage.startswith(("scan", "ingest")):
        e.notes = _drop_stale_report(project, s.dataset)
    failures.append(e)
    s.stages.setdefault(e.stage.split("@")[0], "failed")


def _run_dataset(project: str, s: DatasetSummary, fresh: set[str]) -> None:
    """One dataset through its stages; a StageFailed names the stage that stopped it.

    fresh: the stages `dvc status` found up to date; emptied once a stage of this dataset runs.
    """
    dataset = s.dataset
    run = ingest(project, dataset, f"ingest@{dataset}" in fresh)
    s.stages["ingest"] = _word(run)
    if run.returncode != 0:
        raise stage_failure(f"ingest@{dataset}", dataset, run)
    fresh = set() if run.ran else fresh
    run, report = gate(project, dataset, f"validate@{dataset}" in fresh)
    fresh = set() if run.ran else fresh
    s.stages["validate"] = _word(run)
    s.take_report(report)
    if not s.gate_passed:
        return  # nothing is prepared, trained or registered on data that failed
    model = MODELS[dataset]
    for stage, key in ((f"prepare@{dataset}", "prepare"), (f"train_{model}", f"train_{model}")):
        result = reproduce(project, stage, stage in fresh)
        s.stages[key] = _word(result)
        fresh = set() if result.ran else fresh
        if result.returncode != 0:
            raise stage_failure(stage, dataset, result)
    s.take_model(Path(project))


def _drop_stale_report(project: str, dataset: str) -> str:
    """After a failed ingest, the last run's *passed* report is not about this data: remove it."""
    path = Path(project) / stage_files(Path(project), dataset).report
    try:
        passed = json.loads(path.read_text()).get("passed")
    except (OSError, ValueError):
        return ""
    if passed is not True:
        return ""
    path.unlink()
    return (
        f"The previous run's passed report {path.relative_to(project)} was removed: "
        "it described data this run could not read."
    )


def _log_hint() -> str:
    log = os.environ.get("BIGDEEP_RUN_LOG")
    return f" Full output: {log}." if log else ""


def _stage_paragraph(e: StageFailed) -> str:
    head = f"{e.stage} failed" + (f" (dataset {e.dataset})" if e.dataset else "")
    tail = ""
    if e.dataset and not e.stage.startswith("train"):
        tail = f" Nothing was trained or registered on {e.dataset}."
    notes = f" {e.notes}" if getattr(e, "notes", "") else ""
    return f"{head}: {_sentence(describe(e))}{tail}{notes}{_log_hint()}"


def _sentence(text: str) -> str:
    return text if text.endswith((".", "!", "?")) else text + "."


def _gate_paragraph(project: str, s: DatasetSummary) -> str:
    report = stage_files(Path(project), s.dataset).report
    checks = "".join(f"\n  - {line}" for line in s.failed_checks[:5])
    return (
        f"validate@{s.dataset}: the quality gate failed for {s.dataset} ({s.rows} rows, "
        f"{s.quarantined} quarantined); failed checks, most important first:{checks}\n"
        f"Report: {report}. Fix the source, or change quality.{s.dataset}.* in params.yaml if "
        f"the data is right. Nothing was prepared, trained or registered on {s.dataset}."
    )


def _failed(paragraphs: list[str], exit_code: int):
    failure = RunFailed("\n\n".join(paragraphs), exit_code=exit_code)
    return Failed(message=str(failure), data=failure)


def serve(
    project_dir: str,
    cron: str | None,
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
    from bigdeep.cli import main

    sys.exit(main(["run", *sys.argv[1:]]))
