"""`bigdeep`: one command per pipeline stage, plus run / ui.

    bigdeep scan images --out data/sources/images.json
    bigdeep ingest images --out data/raw/images
    bigdeep validate images --raw data/raw/images --report reports/quality/images.json --quarantine data/quarantine/images
    bigdeep prepare images --raw data/raw/images --quarantine data/quarantine/images --out data/processed/images
    bigdeep train cnn --data data/processed/images --out models/cnn --metrics metrics/cnn.json
    bigdeep run            # the whole pipeline as a Prefect flow, through DVC
    bigdeep ui             # the MLflow UI on 127.0.0.1
    bigdeep servers up     # Prefect + MLflow servers (SQLite, or --postgres URL)
    bigdeep schedule --cron "0 3 * * *"
    bigdeep lineage bigdeep-cnn@champion ; bigdeep restore bigdeep-cnn@champion

Paths come from dvc.yaml (the stage's cmd); parameters from params.yaml. Exit status:
0 done, 1 failed, 2 bad config or usage, 3 the quality gate failed.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

# Quiet and offline unless the user says otherwise (MLflow reads "true", not "1").
QUIET_ENV = {
    "DO_NOT_TRACK": "true",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DVC_NO_ANALYTICS": "1",
    "GX_ANALYTICS_ENABLED": "false",
}

EXIT_FAILED, EXIT_CONFIG, EXIT_GATE = 1, 2, 3


def _settings(args: argparse.Namespace):
    from bigdeep.config import load_settings

    return load_settings(args.params)


def cmd_ingest(args: argparse.Namespace) -> int:
    from bigdeep.ingest import INGEST

    result = INGEST[args.dataset](_settings(args), Path(args.out))
    print(f"ingest {result.dataset}: {result.rows} rows -> {result.out_dir}")
    return 0


def cmd_scan(args: argparse.Namespace) -> int:
    from bigdeep.data.sources import write_fingerprint

    source = getattr(_settings(args).data, args.dataset).source
    changed = write_fingerprint(source, Path(args.out))
    print(f"scan {args.dataset}: {source} {'changed' if changed else 'unchanged'} -> {args.out}")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from bigdeep.quality.report import summary_lines
    from bigdeep.validate import validate

    reference = Path(args.reference) if args.reference else None
    result = validate(
        args.dataset,
        _settings(args),
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
    print(summary_lines(report)[-1])  # drift against the last accepted version, every run
    for line in report["failures"][:20]:
        print(f"  - {line}", file=sys.stderr)
    return 0 if result.passed else EXIT_GATE


def cmd_prepare(args: argparse.Namespace) -> int:
    from bigdeep.prepare import prepare_images, prepare_series

    s = _settings(args)
    if args.dataset == "images":
        counts = prepare_images(
            Path(args.raw),
            Path(args.quarantine),
            Path(args.out),
            s.prepare.images,
            s.quality.images.classes,
            s.seed,
        )
    else:
        counts = prepare_series(
            Path(args.raw), Path(args.quarantine), Path(args.out), s.data.series, s.prepare.series
        )
    print(f"prepare {args.dataset}: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from bigdeep.train import Paths, train_cnn, train_rnn

    fit = {"cnn": train_cnn, "rnn": train_rnn}[args.model]
    paths = Paths(
        data=Path(args.data),
        out=Path(args.out),
        metrics=Path(args.metrics),
        plots=Path(args.plots or f"reports/train/{args.model}"),
        checkpoints=Path(args.checkpoints or f"checkpoints/{args.model}"),
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
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from bigdeep import orchestration

    user_url = os.environ.get("PREFECT_API_URL")
    _use_servers(Path(args.project) / ".bigdeep" / "servers")
    try:
        print(orchestration.connect(user_url), flush=True)
    except orchestration.PrefectUnavailable as e:
        print(f"bigdeep run: error: {e}", file=sys.stderr)
        return EXIT_FAILED
    # flows/ sits beside src/ in the checkout bigdeep is installed from (editable install).
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from flows.pipeline import pipeline

    orchestration.mark("flow module imported (prefect, yaml)")
    orchestration.quiet_outage_tracebacks()
    try:
        state = pipeline(
            project_dir=str(Path(args.project).resolve()),
            datasets=args.datasets,
            overrides=_overrides(args.set),
            return_state=True,
        )
        code = 0 if state.is_completed() else EXIT_FAILED
    except Exception as e:
        failure = orchestration.startup_failure(e)
        if failure is not None:
            print(f"bigdeep run: error: {failure}", file=sys.stderr)
            return EXIT_FAILED
        if orchestration.work_outcome() is None:
            raise
        code = 0 if orchestration.work_outcome() else EXIT_FAILED
    orchestration.finish(code)  # ends the process: no teardown of the modules the flow loaded


def _overrides(pairs: list[str]) -> dict[str, str]:
    from bigdeep.config import ConfigError

    out = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {pair!r}: expected KEY=VALUE, e.g. train.cnn.epochs=3")
        out[key.strip()] = value.strip()
    return out


def _use_servers(state_dir: Path) -> None:
    """When `bigdeep servers up` ran here, log through those servers (unless told otherwise)."""
    from bigdeep.servers import client_env

    for key, value in client_env(state_dir).items():
        os.environ.setdefault(key, value)


def cmd_servers(args: argparse.Namespace) -> int:
    from bigdeep import servers

    state = Path(args.state)
    if args.action == "up":
        started = servers.up(
            state,
            postgres=args.postgres or os.environ.get("BIGDEEP_POSTGRES_URL"),
            prefect_port=args.prefect_port,
            mlflow_port=args.mlflow_port,
        )
        for s in started.values():
            print(f"{s.name:<8} {s.url}  pid {s.pid}  backend {s.backend}  log {s.log}")
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
            )
        return 0 if all(i["healthy"] for i in st.values()) else 1
    return 0


def cmd_lineage(args: argparse.Namespace) -> int:
    import json

    from mlflow.tracking import MlflowClient

    from bigdeep.registry import lineage
    from bigdeep.tracking import tracking_uri

    _use_servers(Path(".bigdeep/servers"))
    client = MlflowClient(tracking_uri(_settings(args).mlflow))
    print(json.dumps(lineage(client, args.ref), indent=2, sort_keys=True))
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    from mlflow.tracking import MlflowClient

    from bigdeep.registry import lineage, restore_dir
    from bigdeep.tracking import tracking_uri

    _use_servers(Path(".bigdeep/servers"))
    info = lineage(MlflowClient(tracking_uri(_settings(args).mlflow)), args.ref)
    from dvc.repo import Repo

    with Repo(".") as repo:  # the workspace cache first, then every local remote
        stores = [Path(repo.cache.local.path).parents[1]]
        stores += [Path(r["url"]) for r in repo.config["remote"].values() if "://" not in r["url"]]
    for key, md5 in info["data"].items():
        dataset, _, field = key.partition(".")
        if field != "md5":
            continue
        if md5.startswith("unversioned:"):
            raise FileNotFoundError(
                f"{args.ref}: its {dataset} data was not versioned by DVC ({md5})"
            )
        dest = Path(info["data"][f"{dataset}.path"])
        restore_dir(md5, dest, stores)
        print(f"restored {dataset} {md5} -> {dest}")
    return 0


def cmd_schedule(args: argparse.Namespace) -> int:
    _use_servers(Path(args.project) / ".bigdeep" / "servers")
    if not os.environ.get("PREFECT_API_URL"):
        print(
            "bigdeep schedule: no Prefect server: run `bigdeep servers up` or set PREFECT_API_URL",
            file=sys.stderr,
        )
        return EXIT_FAILED
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from flows.pipeline import serve

    serve(
        project_dir=str(Path(args.project).resolve()),
        cron=args.cron,
        datasets=args.datasets,
        name=args.name,
    )
    return 0


def cmd_ui(args: argparse.Namespace) -> int:
    from bigdeep.config import load_settings
    from bigdeep.tracking import tracking_uri

    uri = tracking_uri(load_settings(args.params).mlflow)
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
        help="profile of the last accepted version, for drift (default: data/reference/<dataset>.json)",
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
        "--plots", help="folder for curves and evaluation plots (default reports/train/<model>)"
    )
    s.add_argument(
        "--checkpoints", help="folder for last/best checkpoints (default checkpoints/<model>)"
    )
    g = s.add_mutually_exclusive_group()
    g.add_argument(
        "--resume",
        action="store_true",
        default=None,
        help="continue the unfinished run (default: automatically when params and data match)",
    )
    g.add_argument(
        "--no-resume", dest="resume", action="store_false", help="always start a new run"
    )
    s.set_defaults(func=cmd_train)

    s = sub.add_parser("run", help="run the whole pipeline (Prefect flow over DVC stages)")
    s.add_argument("--project", default=".", help="project folder holding dvc.yaml and params.yaml")
    s.add_argument("--datasets", nargs="+", choices=["images", "series"], default=None)
    s.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="set a params.yaml key first (repeatable)",
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
    s.set_defaults(func=cmd_servers)

    s = sub.add_parser("schedule", help="serve the flow as a cron deployment on the Prefect server")
    s.add_argument("--cron", default="0 3 * * *")
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
    s.set_defaults(func=cmd_schedule)

    s = sub.add_parser("lineage", help="print the data, code and params behind a registered model")
    s.add_argument("ref", help="<model>@<alias|version>, e.g. bigdeep-cnn@champion")
    s.set_defaults(func=cmd_lineage)

    s = sub.add_parser("restore", help="bring back the exact raw data of a registered model")
    s.add_argument("ref", help="<model>@<alias|version>")
    s.set_defaults(func=cmd_restore)

    s = sub.add_parser("ui", help="start the MLflow UI")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=5000)
    s.set_defaults(func=cmd_ui)
    return p


def main(argv: list[str] | None = None) -> int:
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    args = build_parser().parse_args(argv)
    from lightning_fabric.utilities.exceptions import MisconfigurationException

    from bigdeep.config import ConfigError
    from bigdeep.data.sources import SourceError
    from bigdeep.prepare import PrepareError
    from bigdeep.servers import ServerError
    from bigdeep.tracking import TrackingError
    from bigdeep.train import ResumeError

    try:
        return args.func(args)
    except (ConfigError, MisconfigurationException) as e:
        print(f"bigdeep {args.command}: config error: {e}", file=sys.stderr)
        return EXIT_CONFIG
    except (
        SourceError,
        PrepareError,
        TrackingError,
        ServerError,
        ResumeError,
        FileNotFoundError,
    ) as e:
        print(f"bigdeep {args.command}: error: {e}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
