"""What `bigdeep run` prints at its end, and the files it reads that from (no Prefect here).

Shared by the flow (flows/pipeline.py) and by a rerun with nothing to do (flows/uptodate.py),
which prints the same summary without starting Prefect.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from bigdeep.config import MODELS, stage_files
from bigdeep.errors import BigdeepError, printable
from bigdeep.training import privacy_record


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
    failed_checks: list[str] = field(default_factory=list)  # grouped, most important first
    notes: list[str] = field(default_factory=list)  # the report's shapes and drift lines

    def take_report(self, report: dict) -> None:
        """The gate's verdict and figures from a quality report ({} when the gate did not run)."""
        self.gate_passed = bool(report.get("passed"))
        self.by_v, self.rows = report.get("by_v", {}), report.get("rows")
        self.quarantined, self.failures = report.get("quarantined"), report.get("failures", [])
        self.notes = report_notes(report)
        if not self.gate_passed:
            from bigdeep.quality.report import failure_lines

            self.failed_checks = failure_lines(report, limit=8)

    def take_model(self, project: Path) -> None:
        """The trained model's metrics and run record (run id, registry decision)."""
        self.model = MODELS[self.dataset]
        files = stage_files(project, self.dataset)
        self.metrics = json.loads((project / files.metrics).read_text())
        self.run = json.loads((project / files.model_dir / "run.json").read_text())


# The few metrics a person reads first, per model; every metric is in the table below them.
HEADLINE = {"cnn": ("test_acc", "test_loss"), "rnn": ("test_mae", "test_mae_vs_naive", "test_rmse")}


def summary_text(project_dir: str, summaries: list[DatasetSummary]) -> str:
    """Markdown for the console and the Prefect artifact: per dataset the gate, the failed
    checks grouped, the model's headline metrics, where its run is, the registry decision
    (or "unchanged" when training was skipped), then the full metrics as a table."""
    from bigdeep.tracking import lock_outs

    outs = lock_outs(Path(project_dir) / "dvc.lock")
    store = _tracking_store(project_dir)
    lines = ["# bigdeep pipeline", ""]
    for s in summaries:
        s.version = outs.get(stage_files(Path(project_dir), s.dataset).raw)
        if "failed" in (s.stages.get("scan"), s.stages.get("ingest")):  # dvc.lock: the last data's
            s.version = None
        gate_word = {True: "PASSED", False: "FAILED", None: "not run"}[s.gate_passed]
        lines += [f"## {s.dataset}: gate {gate_word}, version {s.version or '-'}", ""]
        if s.rows is not None:
            lines.append(f"- rows {s.rows}, quarantined {s.quarantined}")
        for v, c in s.by_v.items():
            if c["passed"] or c["failed"]:  # a V with no check for this dataset says nothing
                lines.append(f"- {v}: {c['passed']} passed, {c['failed']} failed")
        lines += [f"- {note}" for note in s.notes]
        lines += [f"- failed check: {line}" for line in s.failed_checks]
        if not s.failed_checks:  # a report without per-check data
            lines += [f"- failure: {printable(f)}" for f in s.failures[:10]]
        if s.model:
            lines += _model_lines(s, store)
        lines.append("- stages: " + ", ".join(f"{k} {v}" for k, v in s.stages.items()))
        lines.append("")
        if s.model and s.metrics:
            lines += _metrics_table(s.model, s.metrics)
    return "\n".join(lines)


def report_notes(report: dict) -> list[str]:
    """From a quality report, as `bigdeep validate` prints them: the sizes and modes seen and the
    conversion (images), and drift against the last accepted version, or "first version of
    <identity>: no drift or drop checks yet" when the source starts a new history."""
    from bigdeep.quality.report import shapes_line, summary_lines

    if "by_v" not in report:  # no report (the gate did not run)
        return []
    lines = [shapes_line(report), summary_lines(report)[-1]]
    return [": ".join(line.split(None, 1)) for line in lines if line]


def _model_lines(s: DatasetSummary, store: str) -> list[str]:
    trained = s.stages.get(f"train_{s.model}") == "ran"
    numbers = {k: v for k, v in s.metrics.items() if isinstance(v, int | float)}
    shown = ", ".join(f"{k} {numbers[k]:.4g}" for k in HEADLINE.get(s.model, ()) if k in numbers)
    run_id = s.run.get("run_id", "-")
    when = "trained now" if trained else "unchanged (trained by an earlier run)"
    lines = [
        f"- model {s.model}, {when}: {shown or 'no metrics'}",
        f"- MLflow: {_run_link(store, run_id)}",
        f"- privacy: {privacy_record.text(s.run.get('privacy'))}",  # train.privacy; run.json
    ]
    reg = s.run.get("registry") or {}
    if reg and trained:
        lines.append(
            f"- registry: {reg['model']} v{reg['version']} is {reg['alias'] or 'not promoted'} ({reg['reason']})"
        )
    elif reg:
        lines.append(
            f"- registry: unchanged ({reg['model']} v{reg['version']}, {reg['alias'] or 'not promoted'} when it "
            "was trained; see `bigdeep lineage` for the current aliases)"
        )
    return lines


def _metrics_table(model: str, metrics: dict) -> list[str]:
    rows = [(k, v) for k, v in sorted(metrics.items()) if isinstance(v, int | float)]
    if not rows:
        return []
    out = [f"| {model} metric | value |", "|---|---:|"]
    out += [f"| {k} | {v:.4g} |" for k, v in rows]
    return [*out, ""]


def _tracking_store(project_dir: str) -> str:
    from bigdeep.config import load_settings
    from bigdeep.tracking import tracking_uri

    try:
        return tracking_uri(load_settings(Path(project_dir) / "params.yaml").mlflow)
    except BigdeepError:
        return os.environ.get("MLFLOW_TRACKING_URI", "?")


def _run_link(store: str, run_id: str) -> str:
    """The run's page on a tracking server; else its id and the store it is in.

    One REST call with a short timeout: importing the MLflow client takes seconds, and it
    retries for minutes against a server that is gone.
    """
    if not store.startswith(("http://", "https://")) or run_id == "-":
        return f"run {run_id} in {store}"
    import urllib.parse
    import urllib.request

    url = f"{store.rstrip('/')}/api/2.0/mlflow/runs/get?" + urllib.parse.urlencode(
        {"run_id": run_id}
    )
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            experiment = json.load(resp)["run"]["info"]["experiment_id"]
    except Exception:  # noqa: BLE001 - a link is a convenience: the id is enough
        return f"run {run_id} on {store}"
    return f"{store.rstrip('/')}/#/experiments/{experiment}/runs/{run_id}"
