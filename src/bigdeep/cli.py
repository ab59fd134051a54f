"""`bigdeep`: one command per pipeline stage, plus run / ui.

    bigdeep scan images --out data/sources/images.json
    bigdeep ingest images --out data/raw/images
    bigdeep validate images --raw data/raw/images --report reports/quality/images.json --quarantine data/quarantine/images
    bigdeep prepare images --raw data/raw/images --quarantine data/quarantine/images --out data/processed/images
    bigdeep train cnn --data data/processed/images --out models/cnn --metrics metrics/cnn.json
    bigdeep run            # the whole pipeline as a Prefect flow, through DVC
    bigdeep ui             # the MLflow UI on 127.0.0.1
    bigdeep servers up     # Prefect + MLflow servers (SQLite, or --postgres URL)
    bigdeep schedule --cron "0 3 * * *"   # or --pool local: a deployment on a work pool
    bigdeep worker --pool local           # a process worker that runs the pool's runs
    bigdeep lineage bigdeep-cnn@champion ; bigdeep restore bigdeep-cnn@champion
    bigdeep quality history series         # each validated version's figures (MLflow)
    bigdeep serve bigdeep-cnn@champion --port 5001
    bigdeep predict bigdeep-cnn@champion --input photos/ --output predictions.csv

Paths come from dvc.yaml (the stage's cmd); parameters from params.yaml. Exit status:
0 done, 1 failed, 2 bad config or usage, 3 the quality gate failed. An error bigdeep detects
prints one paragraph (what, where, the fix) and no traceback; `bigdeep --debug ...` shows it.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

EXIT_FAILED, EXIT_CONFIG, EXIT_GATE = 1, 2, 3  # as in bigdeep.errors (kept light: no import)


def _settings(args: argparse.Namespace):
    from bigdeep.config import load_settings

    return load_settings(args.params)


def cmd_ingest(args: argparse.Namespace) -> int:
    from bigdeep.ingest import INGEST

    result = INGEST[args.dataset](_settings(args), Path(args.out))
    print(f"ingest {result.dataset}: {result.rows} rows -> {result.out_dir}")
    for note in result.notes:  # e.g. a JSON field whose type changes: the gate will judge it
        print(f"  note: {note}")
    return 0


def cmd_scan(args: argparse.Namespace) -> int:
    from bigdeep.data.sources import write_fingerprint

    source = getattr(_settings(args).data, args.dataset).source
    changed = write_fingerprint(source, Path(args.out))
    print(f"scan {args.dataset}: {source} {'changed' if changed else 'unchanged'} -> {args.out}")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from bigdeep.quality.report import failure_lines, privacy_line, shapes_line, summary_lines
    from bigdeep.validate import validate

    reference = Path(args.reference) if args.reference else None
    settings = _settings(args)
    result = validate(
        args.dataset,
        settings,
        Path(args.raw),
        Path(args.report),
        Path(args.quarantine),
        reference,
    )
    report = result.report
    print(
        f"validate {args.dataset}: {'PASSED' if result.passed else 'FAILED'} "
        f"({report['rows']} rows, {report['quarantined']} quarantined) -> {args.report}"
    )
    for v, counts in report["by_v"].items():
        print(f"  {v:<9} {counts['passed']} passed, {counts['failed']} failed")
    if shapes := shapes_line(report):  # images: sizes and modes seen, the conversion
        print(shapes)
    if privacy := privacy_line(report):  # series: personal data found (masked), per column
        print(privacy)
    print(summary_lines(report)[-1])  # drift against the last accepted version, every run
    for line in failure_lines(report):  # grouped by check, most important first
        print(f"  - {line}", file=sys.stderr)
    _record_quality(settings, report, Path(args.report), Path(args.raw))
    return 0 if result.passed else EXIT_GATE


def _record_quality(settings, report: dict, report_path: Path, raw: Path) -> None:
    """The version's figures to the quality history (never changes the gate's verdict)."""
    from bigdeep.history import record_validation

    sent = record_validation(settings, report, report_path, raw)
    for line in sent.lines:
        print(line)
    if sent.warning:
        print(sent.warning, file=sys.stderr)


def cmd_quality(args: argparse.Namespace) -> int:
    """`quality history` (a table of the versions, oldest first) and `quality record`."""
    import json

    from bigdeep import history
    from bigdeep.config import DATASETS, IDENTITY
    from bigdeep.errors import UsageError
    from bigdeep.tracking import tracking_uri

    settings = _settings(args)
    slot = args.dataset if args.dataset in DATASETS else None
    identity = getattr(settings.data, slot).identity if slot else args.dataset
    if not IDENTITY.fullmatch(identity):
        raise UsageError(
            f"quality history {args.dataset!r}: name a dataset (images, series) or a dataset "
            "identity (lower-case letters, digits, - and _, e.g. vic_elec)"
        )
    _use_servers(Path(".bigdeep/servers"))
    out = sys.stderr if getattr(args, "json", False) else sys.stdout
    _print_store(settings, file=out)  # --json: stdout stays JSON
    if args.action == "record":
        sent = history.record_report(
            settings, args.dataset, Path(args.report), args.md5 and args.md5.strip()
        )
        for line in sent.lines:
            print(line)
        if sent.warning:
            print(sent.warning, file=sys.stderr)
            return EXIT_FAILED
        return 0
    waiting = history.flush(settings.mlflow)  # figures a store outage left behind, first
    if waiting.warning:
        print(waiting.warning, file=sys.stderr)
    uri = tracking_uri(settings.mlflow)
    experiment = settings.mlflow.experiment + history.SUFFIX
    rows = history.read_history(uri, experiment, identity)
    if rows is None:
        rows = history.client_history(uri, experiment, identity)
    rows = rows[-args.limit :] if args.limit else rows
    if args.json:
        print(json.dumps(rows, indent=2))
    if not rows:
        name = f"{args.dataset} ({identity})" if slot else identity
        print(
            f"bigdeep quality history: no quality history for {name} in MLflow experiment "
            f"{experiment} yet: `bigdeep run` / `dvc repro validate@{slot or '<dataset>'}` "
            f"records each version it validates; `bigdeep quality record {slot or '<dataset>'} "
            f"--report reports/quality/{slot or '<dataset>'}.json` records one validated before",
            file=sys.stderr,
        )
        return EXIT_FAILED
    if not args.json:
        name = f"{args.dataset} ({identity})" if slot else identity
        print(f"{name}: {len(rows)} version(s), MLflow experiment {experiment}")
        print(history.history_table(rows))
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    from bigdeep.compute import open_executor
    from bigdeep.prepare import prepare_images, prepare_series

    s = _settings(args)
    raw, quarantine, out = Path(args.raw), Path(args.quarantine), Path(args.out)
    with open_executor(s.compute) as executor:  # reads the shards: compute.cluster
        if args.dataset == "images":
            counts = prepare_images(
                raw, quarantine, out, s.prepare.images, s.quality.images.classes, s.seed, executor
            )
        else:
            counts = prepare_series(raw, quarantine, out, s.data.series, s.prepare.series, executor)
    print(f"prepare {args.dataset}: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from bigdeep.config import stage_option
    from bigdeep.train import Paths, train_cnn, train_rnn

    fit = {"cnn": train_cnn, "rnn": train_rnn}[args.model]
    _print_store(_settings(args))
    paths = Paths(
        data=Path(args.data),
        out=Path(args.out),
        metrics=Path(args.metrics),
        plots=Path(args.plots or stage_option(f"train_{args.model}", "--plots")),
        checkpoints=Path(args.checkpoints or stage_option(f"train_{args.model}", "--checkpoints")),
        report=Path(args.report) if args.report else None,
    )
    result = fit(_settings(args), paths, resume=args.resume)
    if result is None:  # an extra process of a DDP run: rank zero reports
        return 0
    shown = ", ".join(
        f"{k}={v:.4g}"
        for k, v in sorted(result.metrics.items())
        if not k.startswith("test_recall_")
    )
    print(f"train {args.model}: {shown} (MLflow run {result.run_id})")
    if result.decision is not None:
        print(f"  registry: {result.decision.summary}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from bigdeep import orchestration
    from bigdeep.errors import BigdeepError, RunFailed
    from bigdeep.runlock import clear_stale_dvc_locks, hold_run

    project = Path(args.project).resolve()
    overrides = _overrides(args.set)
    if overrides:  # checked now (exit 2 before anything starts); written after the preflight
        from bigdeep.config import plan_overrides

        plan_overrides(project / "params.yaml", overrides)
    with hold_run(project, wait=not args.no_wait):  # one run at a time in a project
        for line in clear_stale_dvc_locks(project):
            print(f"bigdeep run: {line}", file=sys.stderr)
        user_url = os.environ.get("PREFECT_API_URL")
        _use_servers(Path(args.project) / ".bigdeep" / "servers")
        _print_store(_settings(args), Path(args.project) / ".bigdeep" / "servers")
        from bigdeep.remote import push_pending
        from flows.uptodate import report_if_current  # flows/ is installed with bigdeep

        # nothing would run: no Prefect server, no flow run (unless the last push failed)
        if (
            not overrides
            and not push_pending(project)
            and report_if_current(project, args.datasets)
        ):
            return 0
        log = _run_log(project)
        print(orchestration.connect(user_url), flush=True)  # PrefectUnavailable: one paragraph
        from flows.pipeline import pipeline

        orchestration.mark("flow module imported (prefect, yaml)")
        orchestration.quiet_outage_tracebacks()
        handler = _log_to_file(log, debug=args.debug)
        try:
            state = pipeline(
                project_dir=str(project),
                datasets=args.datasets,
                overrides=overrides,
                return_state=True,
            )
        except Exception as e:
            failure = orchestration.startup_failure(e)
            if failure is not None:
                raise failure from None
            if orchestration.work_outcome() is None:
                raise
            # the work is done; only Prefect's bookkeeping failed (a warning follows at exit)
            return 0 if orchestration.work_outcome() else EXIT_FAILED
        finally:
            logging.getLogger().removeHandler(handler)
            handler.close()
    if state.is_completed():
        return 0
    error = state.result(raise_on_failure=False)
    if isinstance(error, BigdeepError):
        raise error  # main() prints its paragraph and exits with its meaning
    raise RunFailed(
        f"the flow ended {state.name}: {state.message or error!r}. Full output: {log}"
    ) from error if isinstance(error, BaseException) else None


def _run_log(project: Path) -> Path:
    """.bigdeep/logs/<UTC time>.log: the flow's log and every stage's full output."""
    import time

    logs = project / ".bigdeep" / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    path = logs / time.strftime("%Y%m%dT%H%M%SZ.log", time.gmtime())
    path.touch()
    os.environ["BIGDEEP_RUN_LOG"] = str(path)
    return path


def _log_to_file(path: Path, debug: bool) -> logging.Handler:
    """Every log record (tracebacks included) to the run's log file; the console keeps the
    lines but not the tracebacks, unless --debug."""
    root = logging.getLogger()
    if not debug:
        for handler in root.handlers:
            _without_traceback(handler)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    return handler


def _without_traceback(handler: logging.Handler) -> None:
    if getattr(handler, "_bigdeep_no_traceback", False):
        return
    handler._bigdeep_no_traceback = True
    plain = handler.format

    def format(record):  # noqa: A001 - replaces the handler's own format
        saved = record.exc_info, record.exc_text, record.stack_info
        record.exc_info = record.exc_text = record.stack_info = None
        try:
            return plain(record)
        finally:
            record.exc_info, record.exc_text, record.stack_info = saved

    handler.format = format


def _overrides(pairs: list[str]) -> dict[str, str]:
    from bigdeep.errors import UsageError

    out = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--set {pair!r}: expected KEY=VALUE, e.g. train.cnn.epochs=3")
        out[key.strip()] = value.strip()
    return out


def _use_servers(state_dir: Path) -> None:
    """When `bigdeep servers up` ran here, log through those servers (unless told otherwise)."""
    from bigdeep.servers import client_env

    for key, value in client_env(state_dir).items():
        os.environ.setdefault(key, value)


def _print_store(settings, servers_state: Path = Path(".bigdeep/servers"), **kw) -> None:
    """First line of every command that reads MLflow: which store, and why that one."""
    from bigdeep.tracking import describe_store

    print(describe_store(settings.mlflow, servers_state), flush=True, **kw)


def _project_store(args: argparse.Namespace) -> tuple[str | None, str | None]:
    """(backend store URI, artifacts) for `servers up`: the project's own unless told otherwise."""
    from bigdeep.tracking import absolute_store

    if args.backend_store_uri or args.postgres or os.environ.get("BIGDEEP_POSTGRES_URL"):
        return args.backend_store_uri, args.artifacts
    cfg = _settings(args).mlflow  # params.yaml, not MLFLOW_TRACKING_URI (that may be the server)
    if cfg.tracking_uri.startswith(("http://", "https://")):
        return None, args.artifacts  # a remote store: the local server keeps its own
    return absolute_store(cfg.tracking_uri), args.artifacts or cfg.artifact_root


def cmd_servers(args: argparse.Namespace) -> int:
    from bigdeep import servers

    state = Path(args.state)
    if args.action == "up":
        backend, artifacts = _project_store(args)
        started = servers.up(
            state,
            postgres=args.postgres or os.environ.get("BIGDEEP_POSTGRES_URL"),
            prefect_port=args.prefect_port,
            mlflow_port=args.mlflow_port,
            timeout=args.timeout,
            backend_store_uri=backend,
            artifacts=artifacts,
        )
        for s in started.values():
            was = "already up" if s.reused else "started"
            print(f"{s.name:<8} {s.url}  pid {s.pid}  {was}  backend {s.backend}  log {s.log}")
        print(
            f"export MLFLOW_TRACKING_URI={started['mlflow'].url} PREFECT_API_URL={started['prefect'].url}"
        )
    elif args.action == "down":
        print("stopped: " + (", ".join(servers.down(state)) or "nothing was running"))
    else:
        st = servers.status(state)
        if not st:
            print("no servers recorded in " + str(state))
            return 1
        for name, info in st.items():
            print(
                f"{name:<8} {info['url']}  pid {info['pid']}  {'up' if info['healthy'] else 'DOWN'}"
                f"  backend {info['backend']}"
            )
        return 0 if all(i["healthy"] for i in st.values()) else 1
    return 0


def _lineage(args: argparse.Namespace) -> dict:
    """registry.lineage of args.ref: read straight from a SQLite store (no MLflow import,
    seconds faster), else through MlflowClient (a server, or what the fast reader declines)."""
    from bigdeep.store_reader import read_lineage
    from bigdeep.tracking import tracking_uri

    uri = tracking_uri(_settings(args).mlflow)
    info = read_lineage(uri, args.ref)
    if info is None:
        from mlflow.tracking import MlflowClient

        from bigdeep.registry import lineage

        info = lineage(MlflowClient(uri), args.ref)
    return info


def cmd_lineage(args: argparse.Namespace) -> int:
    import json

    _use_servers(Path(".bigdeep/servers"))
    _print_store(_settings(args), file=sys.stderr)  # stdout stays JSON
    print(json.dumps(_lineage(args), indent=2, sort_keys=True))
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    from bigdeep.registry import RestoreError, restore_dir

    _use_servers(Path(".bigdeep/servers"))
    _print_store(_settings(args))
    info = _lineage(args)
    from dvc.repo import Repo

    from bigdeep.remote import fetch, refetch

    with Repo(".") as repo:  # the workspace cache first, then every local remote
        cache = Path(repo.cache.local.path).parents[1]
        stores = [cache]
        stores += [Path(r["url"]) for r in repo.config["remote"].values() if "://" not in r["url"]]
        for key, md5 in info["data"].items():
            dataset, _, field = key.partition(".")
            if field != "md5":
                continue
            if md5.startswith("unversioned:"):
                raise FileNotFoundError(
                    f"{args.ref}: its {dataset} data was not versioned by DVC ({md5})"
                )
            # an object store remote (S3, MinIO): what the cache lacks comes into it first
            problem = fetch(repo, md5)
            if problem:
                print(f"bigdeep restore: {args.ref}: {dataset} data: {problem}", file=sys.stderr)
                return EXIT_FAILED
            dest = Path(info["data"][f"{dataset}.path"])
            try:
                restored = restore_dir(
                    md5, dest, stores, repair=cache, refetch=lambda m: refetch(repo, m)
                )
            except RestoreError as e:
                print(f"bigdeep restore: {args.ref}: {dataset} data: {e}", file=sys.stderr)
                return EXIT_FAILED
            if restored.fallbacks:  # a damaged cache: say what came from where
                print(
                    f"{dataset}: {len(restored.fallbacks)} corrupt object(s), intact copies used:"
                )
                for line in restored.fallbacks[:5]:
                    print(f"  {line}")
                if len(restored.fallbacks) > 5:
                    print(f"  ... and {len(restored.fallbacks) - 5} more")
                if restored.repaired:
                    print(f"  repaired {restored.repaired} object(s) in the cache {cache}")
            print(f"restored {dataset} {md5} -> {dest}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from bigdeep.serve import serve
    from bigdeep.tracking import absolute_store, tracking_uri

    _use_servers(Path(".bigdeep/servers"))
    settings = _settings(args)
    _print_store(settings)
    return serve(args.ref, absolute_store(tracking_uri(settings.mlflow)), args.port, args.timeout)


def cmd_predict(args: argparse.Namespace) -> int:
    from bigdeep import orchestration
    from bigdeep.tracking import absolute_store, tracking_uri

    _use_servers(Path(".bigdeep/servers"))
    settings = _settings(args)
    _print_store(settings)
    print(orchestration.connect(os.environ.get("PREFECT_API_URL")), flush=True)
    from flows.predict import predict_flow

    orchestration.quiet_outage_tracebacks()
    if not args.debug:  # the refusal prints as one paragraph; Prefect's log lines stay
        for handler in [*logging.getLogger().handlers, *logging.getLogger("prefect").handlers]:
            _without_traceback(handler)
    try:
        result = predict_flow(
            ref=args.ref,
            input_path=args.input,
            output=args.output,
            params=args.params,
            tracking=absolute_store(tracking_uri(settings.mlflow)),
        )
    except Exception as e:
        if failure := orchestration.startup_failure(e):
            raise failure from None
        raise
    finally:
        orchestration.release_temporary_server()  # its last logs delivered, then stopped
    print(result.summary)
    return 0


def cmd_schedule(args: argparse.Namespace) -> int:
    _use_servers(Path(args.project) / ".bigdeep" / "servers")
    if not os.environ.get("PREFECT_API_URL"):
        print(
            "bigdeep schedule: no Prefect server: run `bigdeep servers up` or set PREFECT_API_URL",
            file=sys.stderr,
        )
        return EXIT_FAILED
    overrides = _overrides(args.set)
    if overrides:  # a wrong key fails now, not at 3 a.m.
        from bigdeep.config import plan_overrides

        plan_overrides(Path(args.project) / "params.yaml", overrides)
    if args.pool:  # a deployment on a work pool: workers run it (`bigdeep worker`)
        from bigdeep import workpool

        workpool.require_server()
        deployment = workpool.deploy(
            Path(args.project),
            args.pool,
            args.name,
            _cron(args.cron),
            args.datasets,
            overrides,
        )
        print(
            f"deployment bigdeep-pipeline/{args.name} ({deployment}) on work pool {args.pool!r}, "
            f"cron {args.cron!r}, one run at a time; start a worker: bigdeep worker --pool "
            f"{args.pool}; run it now: prefect deployment run bigdeep-pipeline/{args.name}"
        )
        return 0
    from flows.pipeline import serve

    serve(
        project_dir=str(Path(args.project).resolve()),
        cron=_cron(args.cron),
        datasets=args.datasets,
        overrides=overrides,
        name=args.name,
    )
    return 0


def _cron(value: str) -> str | None:
    return None if value.strip().lower() == "none" else value


def cmd_worker(args: argparse.Namespace) -> int:
    from bigdeep import workpool

    _use_servers(Path(args.project) / ".bigdeep" / "servers")
    url = workpool.require_server()
    print(f"worker on pool {args.pool!r} at {url} (Ctrl-C stops it)", flush=True)
    return workpool.run_worker(args.pool, args.name)


def cmd_ui(args: argparse.Namespace) -> int:
    from bigdeep.config import load_settings
    from bigdeep.tracking import tracking_uri

    settings = load_settings(args.params)
    uri = tracking_uri(settings.mlflow)
    _print_store(settings)
    print(f"MLflow UI for {uri} at http://{args.host}:{args.port}  (Ctrl-C stops it)", flush=True)
    os.execvp(
        sys.executable,
        [
            sys.executable,
            "-m",
            "mlflow",
            "ui",
            "--backend-store-uri",
            uri,
            "--host",
            args.host,
            "--port",
            str(args.port),
            "--workers",
            "1",
        ],
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bigdeep", description=__doc__.split("\n")[0])
    p.add_argument("--params", default="params.yaml", help="parameters file (default: params.yaml)")
    p.add_argument(
        "--debug", action="store_true", help="show Python tracebacks (default: one paragraph)"
    )
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("scan", help="fingerprint a source; ingest re-runs only when it changed")
    s.add_argument("dataset", choices=["images", "series"])
    s.add_argument("--out", required=True)
    s.set_defaults(func=cmd_scan)

    s = sub.add_parser("ingest", help="read a source into data/raw/<dataset>")
    s.add_argument("dataset", choices=["images", "series"])
    s.add_argument("--out", required=True)
    s.set_defaults(func=cmd_ingest)

    s = sub.add_parser("validate", help="profile + Great Expectations gate; exit 3 when it fails")
    s.add_argument("dataset", choices=["images", "series"])
    s.add_argument("--raw", required=True)
    s.add_argument("--report", required=True)
    s.add_argument("--quarantine", required=True)
    s.add_argument(
        "--reference",
        help="folder of the accepted reference profiles, one <identity>.json per dataset "
        "identity, for drift and volume drop (default: dvc.yaml's, data/reference/<dataset>)",
    )
    s.set_defaults(func=cmd_validate)

    s = sub.add_parser("prepare", help="seeded train/val/test splits")
    s.add_argument("dataset", choices=["images", "series"])
    s.add_argument("--raw", required=True)
    s.add_argument("--quarantine", required=True)
    s.add_argument("--out", required=True)
    s.set_defaults(func=cmd_prepare)

    s = sub.add_parser("train", help="fit, evaluate and log a model to MLflow")
    s.add_argument("model", choices=["cnn", "rnn"])
    s.add_argument("--data", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--metrics", required=True)
    s.add_argument("--report", help="the quality report to attach to the run")
    s.add_argument(
        "--plots",
        help="folder for curves and evaluation plots (default: dvc.yaml's, reports/train/<model>)",
    )
    s.add_argument(
        "--checkpoints",
        help="folder for last/best checkpoints (default: dvc.yaml's, checkpoints/<model>)",
    )
    g = s.add_mutually_exclusive_group()
    g.add_argument(
        "--resume",
        action="store_const",
        const="require",
        default="auto",
        help="continue the unfinished run (default: automatically when params and data match)",
    )
    g.add_argument(
        "--no-resume",
        dest="resume",
        action="store_const",
        const="never",
        help="always start a new run",
    )
    s.set_defaults(func=cmd_train)

    s = sub.add_parser("run", help="run the whole pipeline (Prefect flow over DVC stages)")
    s.add_argument("--project", default=".", help="project folder holding dvc.yaml and params.yaml")
    s.add_argument("--datasets", nargs="+", choices=["images", "series"], default=None)
    s.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="set a params.yaml key once the preflight checks pass (repeatable; it stays in "
        "params.yaml and the run prints how to undo it)",
    )
    s.add_argument(
        "--no-wait",
        action="store_true",
        help="exit 1 at once when another run is in progress here (default: wait for it)",
    )
    s.set_defaults(func=cmd_run)

    s = sub.add_parser("servers", help="Prefect + MLflow servers on 127.0.0.1: up | down | status")
    s.add_argument("action", choices=["up", "down", "status"])
    s.add_argument(
        "--state", default=".bigdeep/servers", help="folder for PIDs, logs and SQLite files"
    )
    s.add_argument(
        "--postgres", help="PostgreSQL URL for both servers' state (or BIGDEEP_POSTGRES_URL)"
    )
    s.add_argument("--prefect-port", type=int, default=4200)
    s.add_argument("--mlflow-port", type=int, default=5000)
    s.add_argument(
        "--timeout",
        type=float,
        default=120.0,
        help="seconds each server may take to answer after it starts (default 120)",
    )
    s.add_argument(
        "--backend-store-uri",
        help="MLflow store to serve (default: the project's, params.yaml mlflow.tracking_uri)",
    )
    s.add_argument(
        "--artifacts",
        help="MLflow artifact folder or URL (default: params.yaml mlflow.artifact_root)",
    )
    s.set_defaults(func=cmd_servers)

    s = sub.add_parser("schedule", help="serve the flow as a cron deployment on the Prefect server")
    s.add_argument(
        "--cron",
        default="0 3 * * *",
        help="when to run (cron, UTC; default 0 3 * * *); none: only runs triggered by hand",
    )
    s.add_argument(
        "--datasets", nargs="+", choices=["images", "series"], default=["images", "series"]
    )
    s.add_argument("--name", default="scheduled")
    s.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="params.yaml key for every run (repeatable)",
    )
    s.add_argument("--project", default=".")
    s.add_argument(
        "--pool",
        help="deploy on this Prefect process work pool (created if missing) and return; "
        "`bigdeep worker --pool NAME` runs it (default: serve in this process)",
    )
    s.set_defaults(func=cmd_schedule)

    s = sub.add_parser("worker", help="a Prefect process worker: runs the pool's scheduled runs")
    s.add_argument("--pool", required=True, help="the work pool `bigdeep schedule --pool` made")
    s.add_argument("--name", help="worker name (default: Prefect's)")
    s.add_argument("--project", default=".", help="where `bigdeep servers up` ran (its server)")
    s.set_defaults(func=cmd_worker)

    s = sub.add_parser("lineage", help="print the data, code and params behind a registered model")
    s.add_argument("ref", help="<model>@<alias|version>, e.g. bigdeep-cnn@champion")
    s.set_defaults(func=cmd_lineage)

    s = sub.add_parser("restore", help="bring back the exact raw data of a registered model")
    s.add_argument("ref", help="<model>@<alias|version>")
    s.set_defaults(func=cmd_restore)

    s = sub.add_parser("quality", help="quality over time: history | record")
    q = s.add_subparsers(dest="action", required=True)
    h = q.add_parser("history", help="each validated version's figures, oldest first")
    h.add_argument("dataset", help="images | series (the slot's identity), or an identity")
    h.add_argument("--limit", type=int, default=20, help="newest N versions (0: all; default 20)")
    h.add_argument("--json", action="store_true", help="print JSON (the store line on stderr)")
    h.set_defaults(func=cmd_quality)
    r = q.add_parser("record", help="(re)send a quality report, e.g. one validated before")
    r.add_argument("dataset", choices=["images", "series"])
    r.add_argument("--report", required=True, help="the report, e.g. reports/quality/series.json")
    r.add_argument(
        "--md5", help="the raw data's DVC md5 (default: data/raw/<dataset>'s in dvc.lock)"
    )
    r.set_defaults(func=cmd_quality)

    s = sub.add_parser("serve", help="serve a registered model with MLflow's scoring server")
    s.add_argument("ref", help="<model>@<alias|version>, e.g. bigdeep-cnn@champion")
    s.add_argument("--port", type=int, default=5001, help="port on 127.0.0.1 (default 5001)")
    s.add_argument(
        "--timeout",
        type=float,
        default=180.0,
        help="seconds the server may take to answer /ping after it starts (default 180)",
    )
    s.set_defaults(func=cmd_serve)

    s = sub.add_parser("predict", help="score a batch that passes the quality gate (Prefect flow)")
    s.add_argument("ref", help="<model>@<alias|version>, e.g. bigdeep-cnn@champion")
    s.add_argument(
        "--input", required=True, help="images: a folder or one image; series: CSV/Parquet/JSONL"
    )
    s.add_argument("--output", required=True, help="predictions CSV (+ <output>.json beside it)")
    s.set_defaults(func=cmd_predict)

    s = sub.add_parser("ui", help="start the MLflow UI")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=5000)
    s.set_defaults(func=cmd_ui)
    return p


def main(argv: list[str] | None = None) -> int:
    from bigdeep.env import apply_quiet_env

    apply_quiet_env()  # quiet and offline unless the user says otherwise
    args = build_parser().parse_args(argv)
    code = _call(args)
    if args.command == "run" and argv is None and "bigdeep.orchestration" in sys.modules:
        # the console command: end as soon as Prefect has its last logs (no slow teardown of
        # the modules the flow loaded); an in-process call (tests) returns the code instead
        from bigdeep import orchestration

        orchestration.finish(code)
    return code


def _call(args: argparse.Namespace) -> int:
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print(f"bigdeep {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        # bigdeep.errors is light: small commands stay fast (nothing heavy imported to catch)
        from bigdeep.errors import describe, exit_code

        code = exit_code(e)
        if code is None or args.debug:
            raise  # a bug, or asked for: the traceback is what helps
        label = "config error" if code == EXIT_CONFIG else "error"
        print(f"bigdeep {args.command}: {label}: {describe(e)}", file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main())
