"""Quality over time: every validated dataset version as one MLflow run, and the table back.

    bigdeep validate series ...        # records the version it judged (run by dvc repro / bigdeep run)
    bigdeep quality history series     # the versions of the slot's dataset identity, oldest first
    bigdeep quality record series --report reports/quality/series.json   # validated before this

One MLflow run per (dataset identity, DVC md5 of data/raw/<dataset>) in the experiment
`<mlflow.experiment>-quality`. Params name the dataset, identity, source, md5 and report; the
metrics are the report's figures (`figures`, pure) at step = the version's place in its
identity's history and timestamp = when it was validated, so the MLflow UI's charts draw the
trend. Rejected versions are recorded too (run status FAILED, metric gate_passed 0): a drift
that failed the gate is the point of the trend, and `history` marks it FAILED.

Never in the gate's way: the figures go to a spool file first (.bigdeep/quality-spool/, not a
DVC out), and are sent from there; a store that does not answer leaves them there with one
warning, and the next validate (or `quality history` / `quality record`) sends them. Sending is
idempotent: a version already in the store with the same verdict is left as it is (a rerun of
an accepted version compares it with itself, so its drift would read 0); a changed verdict
(thresholds changed) updates the run's verdict and figures.
"""

from __future__ import annotations

import json
import math
import os
import re
import sqlite3
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from bigdeep.errors import BigdeepError

SUFFIX = "-quality"  # the quality experiment is <mlflow.experiment>-quality
SPOOL = Path(".bigdeep") / "quality-spool"  # relative to the project root (DVC's cwd)
MD5 = re.compile(r"[0-9a-f]{32}(\.dir)?")
# tags of a quality run
T_IDENTITY = "bigdeep.quality.identity"
T_VERSION = "bigdeep.data.version"  # the raw data's DVC md5, as on training runs
T_PASSED = "bigdeep.quality.passed"  # "true" / "false"
T_AT = "bigdeep.quality.validated_at"  # ISO time, UTC: the history's order
T_DATASET = "bigdeep.quality.dataset"


class HistoryError(BigdeepError):
    """No history to show, or a report / version that cannot be recorded: exit 1."""


# --- the figures of one report (pure) ------------------------------------------------------


def figures(report: dict[str, Any]) -> dict[str, float]:
    """The report's per-group figures as MLflow metrics: rows, quarantined (count, fraction),
    gate_passed (1/0), drop_pct and drift (drift_js/<column>, drift_linf/<column>, drift_max)
    when measured against a reference, failed_checks in all and per group (failed_checks/<v>
    for every group in by_v: volume, variety, validity, velocity, and any other)."""
    out = {
        "rows": float(report["rows"]),
        "quarantined": float(report.get("quarantined") or 0),
        "quarantined_fraction": float(report.get("quarantined_fraction") or 0.0),
        "gate_passed": 1.0 if report["passed"] else 0.0,
    }
    drift = report.get("drift") or {}
    if _finite(drift.get("drop_pct")):
        out["drop_pct"] = float(drift["drop_pct"])
    measured = []
    for metric in ("js", "linf"):
        for column, value in (drift.get(metric) or {}).items():
            if _finite(value):
                out[metric_key(f"drift_{metric}/", column)] = float(value)
                measured.append(float(value))
    if measured:
        out["drift_max"] = max(measured)
    by_v = report.get("by_v") or {}
    out["failed_checks"] = float(sum(int(c.get("failed", 0)) for c in by_v.values()))
    for v, counts in by_v.items():
        out[metric_key("failed_checks/", v)] = float(counts.get("failed", 0))
    return out


def metric_key(prefix: str, name: str) -> str:
    """`prefix` + a name from the data made into a valid MLflow key (letters, digits, _ - . : and
    space; anything else, `/` included, becomes _)."""
    return prefix + (re.sub(r"[^\w.\- :]", "_", str(name)).replace("..", "__") or "_")


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class VersionRecord:
    """What is sent for one validated version (also the spool file's content)."""

    dataset: str
    identity: str
    source: str
    raw_md5: str
    report: str
    validated_at: int  # ms since the epoch
    passed: bool
    figures: dict[str, float] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"{self.identity}@{self.raw_md5}"


def version_record(
    report: dict[str, Any], *, source: str, raw_md5: str, report_path: str, validated_at: int
) -> VersionRecord:
    """The record of one report (pure)."""
    return VersionRecord(
        dataset=report["dataset"],
        identity=report.get("identity") or report["dataset"],
        source=source,
        raw_md5=raw_md5,
        report=report_path,
        validated_at=validated_at,
        passed=bool(report["passed"]),
        figures=figures(report),
    )


# --- the data version: dvc.lock's entry for data/raw/<dataset> -------------------------------


def raw_version(project: Path, raw: Path) -> tuple[str | None, str]:
    """(md5, "") of the raw data folder `raw` (relative to the project, as dvc.yaml names it)
    as the project's dvc.lock records it (ingest's out), or (None, why not).

    The entry is believed only when the folder still has its recorded file count and size
    (a stat per file): data changed outside DVC has no version to file figures under."""
    lock_path, name = project / "dvc.lock", raw.as_posix()
    try:
        lock = yaml.safe_load(lock_path.read_text()) or {}
    except OSError:
        return None, f"no dvc.lock in {project}: {name} is not a DVC version"
    for stage in (lock.get("stages") or {}).values():
        for out in stage.get("outs") or []:
            if out.get("path") != name or "md5" not in out:
                continue
            files = [p for p in (project / raw).rglob("*") if p.is_file()]
            size = sum(p.stat().st_size for p in files)
            if (out.get("nfiles"), out.get("size")) not in ((len(files), size), (None, None)):
                return None, f"{name} differs from its dvc.lock entry (changed outside DVC)"
            return out["md5"], ""
    return None, f"{name} has no entry in dvc.lock: it is not a DVC version"


# --- spool and send ------------------------------------------------------------------------


def spool_put(spool: Path, record: VersionRecord) -> None:
    """Keep the record until it is sent. A waiting record of the same version with the same
    verdict wins (the first validation is the one compared with the previous version)."""
    path = spool / f"{record.key.replace(':', '_')}.json"
    if path.exists():
        try:
            if json.loads(path.read_text())["passed"] == record.passed:
                return
        except (OSError, ValueError, KeyError):
            pass  # unreadable: replaced
    spool.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(record), indent=1, sort_keys=True))
    os.replace(tmp, path)


def spooled(spool: Path) -> list[tuple[Path, VersionRecord]]:
    """The waiting records, oldest validation first (unreadable files are skipped)."""
    found = []
    for path in sorted(spool.glob("*.json")) if spool.is_dir() else []:
        try:
            found.append((path, VersionRecord(**json.loads(path.read_text()))))
        except (OSError, ValueError, TypeError):
            continue
    return sorted(found, key=lambda item: item[1].validated_at)


@dataclass
class Sent:
    lines: list[str]  # one per version sent (stdout)
    warning: str | None = None  # the store did not take them (stderr)


def flush(cfg, spool: Path = SPOOL, add: VersionRecord | None = None) -> Sent:
    """Spool `add`, then send every waiting record (oldest first) to the quality experiment.
    Never raises: an unreachable or unusable store leaves the spool in place with a warning."""
    if add is not None:
        spool_put(spool, add)
    pending = spooled(spool)
    sent = Sent([])
    if not pending:
        return sent
    from bigdeep.tracking import check_reachable, tracking_uri

    uri = tracking_uri(cfg)
    try:
        check_reachable(cfg, timeout=3.0)
        client, exp_id = quality_experiment(cfg)
        for path, record in pending:
            sent.lines.append(send(client, exp_id, record))
            path.unlink(missing_ok=True)
    except Exception as e:  # noqa: BLE001 - the verdict stands whatever the store does
        left = len(spooled(spool))
        reason = str(e).splitlines()[0][:300] if str(e) else type(e).__name__
        sent.warning = (
            f"warning: quality history not recorded in {uri} ({reason}); the figures of "
            f"{left} version(s) wait in {spool}/ and are sent by the next `bigdeep validate` "
            f"or `bigdeep quality history`"
        )
    return sent


def quality_experiment(cfg):
    """(client, id) of <mlflow.experiment>-quality, created when missing."""
    from bigdeep.tracking import ensure_experiment

    return ensure_experiment(cfg.model_copy(update={"experiment": cfg.experiment + SUFFIX}))


def send(client, exp_id: str, record: VersionRecord) -> str:
    """Log one version as one run (create, one log_batch, end); idempotent by identity + md5."""
    from mlflow.entities import Metric, Param, RunTag

    runs = client.search_runs(
        [exp_id], filter_string=f"tags.`{T_IDENTITY}` = '{record.identity}'", max_results=50000
    )
    same = [r for r in runs if r.data.tags.get(T_VERSION) == record.raw_md5]
    verdict = "passed" if record.passed else "FAILED"
    tags = {T_PASSED: str(record.passed).lower()}
    label = f"{record.identity} {record.raw_md5[:8]} ({verdict})"
    if same:
        run = same[0]
        complete = run.info.status != "RUNNING"  # a send that died between create and end
        if complete and run.data.tags.get(T_PASSED) == tags[T_PASSED]:
            return f"quality history: {label} already recorded (run {run.info.run_id})"
        run_id, step = run.info.run_id, int(run.data.tags.get("bigdeep.quality.step", 0))
        what = "updated" if complete else "recorded"
    else:
        step = len(runs) + 1  # the version's place in this identity's history
        tags |= {
            T_IDENTITY: record.identity,
            T_VERSION: record.raw_md5,
            T_DATASET: record.dataset,
            T_AT: _iso(record.validated_at),
            "bigdeep.quality.step": str(step),
            "mlflow.runName": f"{record.identity}@{record.raw_md5[:8]}",
        }
        if os.environ.get("BIGDEEP_FLOW_RUN_ID"):
            tags["bigdeep.prefect_flow_run_id"] = os.environ["BIGDEEP_FLOW_RUN_ID"]
        run_id = client.create_run(exp_id, start_time=record.validated_at, tags=tags).info.run_id
        what, complete = "recorded", False
    # params are written once (MLflow refuses to change one): by the send that creates the run,
    # or again, unchanged, by the one that finishes a run a dead send left RUNNING
    params = [] if same and complete else [Param(k, str(v)) for k, v in _params(record)]
    metrics = [Metric(k, v, record.validated_at, step) for k, v in sorted(record.figures.items())]
    client.log_batch(
        run_id, metrics=metrics, params=params, tags=[RunTag(k, v) for k, v in tags.items()]
    )
    status = "FINISHED" if record.passed else "FAILED"
    client.set_terminated(run_id, status, end_time=record.validated_at)
    return f"quality history: {label} {what} (run {run_id}, version {step})"


def _params(record: VersionRecord) -> list[tuple[str, str]]:
    return [
        ("dataset", record.dataset),
        ("identity", record.identity),
        ("source", record.source),
        ("raw_md5", record.raw_md5),
        ("report", record.report),
    ]


# --- the validate stage's hook ---------------------------------------------------------------


def record_validation(
    settings, report: dict[str, Any], report_path: Path, raw_dir: Path, project: Path = Path(".")
) -> Sent:
    """After the gate: file this report under its DVC version and send it (never raises)."""
    try:
        md5, why = raw_version(project, raw_dir)
    except Exception as e:  # noqa: BLE001 - a broken dvc.lock is DVC's to report, not ours
        md5, why = None, f"dvc.lock unreadable ({type(e).__name__})"
    if md5 is None:
        return Sent([f"quality history: not recorded: {why}"])
    slot = getattr(settings.data, report["dataset"])
    record = version_record(
        {**report, "identity": report.get("identity") or slot.identity},
        source=slot.source,
        raw_md5=md5,
        report_path=report_path.as_posix(),
        validated_at=int(time.time() * 1000),
    )
    try:
        return flush(settings.mlflow, project / SPOOL, add=record)
    except OSError as e:  # the spool itself cannot be written (a full disk): say so, go on
        return Sent([], f"warning: quality history not recorded: {e}")


def record_report(settings, dataset: str, report_path: Path, md5: str | None) -> Sent:
    """`bigdeep quality record`: (re)send a report by hand; the version is --md5, else the raw
    data's in dvc.lock (the workspace's current version), the time the report's mtime."""
    try:
        report = json.loads(report_path.read_text())
        for key in ("dataset", "rows", "passed", "by_v"):
            report[key]  # noqa: B018 - a quality report has these
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise HistoryError(
            f"quality record: {report_path} is not a bigdeep quality report ({type(e).__name__}: "
            f"{e}); pass the JSON that `bigdeep validate` writes, e.g. reports/quality/{dataset}.json"
        ) from None
    if report["dataset"] != dataset:
        raise HistoryError(
            f"quality record: {report_path} is the report of {report['dataset']}, not {dataset}"
        )
    if md5 is None:
        from bigdeep.config import stage_files

        md5, why = raw_version(Path("."), Path(stage_files(Path("."), dataset).raw))
        if md5 is None:
            raise HistoryError(
                f"quality record: no data version for {report_path}: {why}; pass the raw data's "
                "DVC md5 with --md5 (dvc.lock of the commit that validated it, data/raw/"
                f"{dataset})"
            )
    elif not MD5.fullmatch(md5):
        raise HistoryError(f"quality record: --md5 {md5!r} is not a DVC md5 (32 hex, maybe .dir)")
    slot = getattr(settings.data, dataset)
    identity = report.get("identity") or slot.identity
    record = version_record(
        {**report, "identity": identity},
        source=slot.source if identity == slot.identity else "",
        raw_md5=md5,
        report_path=report_path.as_posix(),
        validated_at=int(report_path.stat().st_mtime * 1000),
    )
    return flush(settings.mlflow, SPOOL, add=record)


# --- reading the history back ----------------------------------------------------------------


def history_row(tags: dict, params: dict, metrics: dict, status: str, run_id: str) -> dict:
    """One version as `history` shows it, from a quality run's tags, params and metrics."""
    failed = {
        k.removeprefix("failed_checks/"): int(v)
        for k, v in metrics.items()
        if k.startswith("failed_checks/")
    }
    return {
        "validated_at": tags.get(T_AT, ""),
        "raw_md5": tags.get(T_VERSION) or params.get("raw_md5", ""),
        "rows": int(metrics["rows"]) if "rows" in metrics else None,
        "quarantined": int(metrics.get("quarantined", 0)),
        "quarantined_pct": 100.0 * metrics.get("quarantined_fraction", 0.0),
        "drift_max": metrics.get("drift_max"),
        "drop_pct": metrics.get("drop_pct"),
        "failed_checks": failed,
        "passed": tags.get(T_PASSED) == "true",
        "complete": status != "RUNNING",
        "source": params.get("source", ""),
        "report": params.get("report", ""),
        "run_id": run_id,
    }


def read_history(uri: str, experiment: str, identity: str) -> list[dict] | None:
    """The identity's versions, read with sqlite3 from a SQLite store (as store_reader reads
    lineage); [] when the experiment or identity has none; None: ask MlflowClient."""
    from bigdeep.store_reader import KNOWN_SCHEMAS, REDIRECTS, WORKSPACE, sqlite_path

    path = sqlite_path(uri)
    if path is None or any(os.environ.get(k) for k in REDIRECTS):
        return None
    if not path.is_file():
        return []
    try:
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    except sqlite3.Error:
        return None
    try:
        revisions = {r for (r,) in db.execute("SELECT version_num FROM alembic_version")}
        if len(revisions) != 1 or not revisions <= KNOWN_SCHEMAS:
            return None
        exp = db.execute(
            "SELECT experiment_id FROM experiments"
            " WHERE workspace = ? AND name = ? AND lifecycle_stage = 'active'",
            (WORKSPACE, experiment),
        ).fetchone()
        if exp is None:
            return []
        runs = db.execute(
            "SELECT r.run_uuid, r.status FROM runs r JOIN tags t ON t.run_uuid = r.run_uuid"
            " WHERE r.experiment_id = ? AND r.lifecycle_stage = 'active'"
            " AND t.key = ? AND t.value = ?",
            (exp[0], T_IDENTITY, identity),
        ).fetchall()
        rows = []
        for run_id, status in runs:
            tags = dict(db.execute("SELECT key, value FROM tags WHERE run_uuid = ?", (run_id,)))
            params = dict(db.execute("SELECT key, value FROM params WHERE run_uuid = ?", (run_id,)))
            metrics = {
                k: float("nan") if is_nan else v
                for k, v, is_nan in db.execute(
                    "SELECT key, value, is_nan FROM latest_metrics WHERE run_uuid = ?", (run_id,)
                )
            }
            rows.append(history_row(tags, params, metrics, status, run_id))
    except sqlite3.Error:  # a table or column this reader does not know: MLflow decides
        return None
    finally:
        db.close()
    return sorted(rows, key=lambda r: r["validated_at"])


def client_history(uri: str, experiment: str, identity: str) -> list[dict]:
    """read_history through MlflowClient (a server, or a store the fast path declines)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return []
    runs = client.search_runs(
        [exp.experiment_id], filter_string=f"tags.`{T_IDENTITY}` = '{identity}'", max_results=50000
    )
    rows = [
        history_row(r.data.tags, r.data.params, r.data.metrics, r.info.status, r.info.run_id)
        for r in runs
    ]
    return sorted(rows, key=lambda r: r["validated_at"])


def history_table(rows: list[dict]) -> str:
    """The versions as a text table, oldest first (pure)."""
    header = (
        "validated (UTC)",
        "raw md5",
        "rows",
        "quarantined",
        "max drift",
        "failed checks",
        "gate",
    )
    lines = [header]
    for r in rows:
        failed = ", ".join(f"{v} {n}" for v, n in r["failed_checks"].items() if n) or "-"
        drift = r["drift_max"]
        lines.append(
            (
                r["validated_at"].replace("T", " ")[:19],
                r["raw_md5"][:8],
                "-" if r["rows"] is None else str(r["rows"]),
                f"{r['quarantined_pct']:.2f}%",
                "-" if drift is None else f"{drift:.4g}",
                failed,
                ("passed" if r["passed"] else "FAILED")
                + ("" if r["complete"] else " (incomplete)"),
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
