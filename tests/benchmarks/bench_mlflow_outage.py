"""How long a client takes to notice a dead or hung MLflow tracking server, with bigdeep's
request bounds (bigdeep.tracking.HTTP_BOUNDS) and, with --mlflow-defaults, MLflow's own.

    python tests/benchmarks/bench_mlflow_outage.py [--mlflow-defaults]

Starts a real `mlflow server` on 127.0.0.1 (store in a temp dir), then times one
`log_batch` against it killed (connection refused) and stopped (SIGSTOP: accepts nothing).
Also prints how many processes the server's process group holds (what `servers down` stops).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bigdeep import servers
from bigdeep.tracking import HTTP_BOUNDS


def start(root: Path, port: int) -> int:
    cmd = servers.mlflow_command(
        f"sqlite:///{root / 'mlflow.db'}", servers.artifact_args(str(root / "art"), root)
    )
    with open(root / "mlflow.log", "ab") as out:
        pid = subprocess.Popen(
            [*cmd, str(port)], stdout=out, stderr=out, start_new_session=True
        ).pid
    while not servers.healthy(f"http://127.0.0.1:{port}/health"):
        time.sleep(0.5)
    return pid


def time_failure(client, run_id: str) -> float:
    from mlflow.entities import Metric

    t0 = time.monotonic()
    try:
        client.log_batch(run_id, metrics=[Metric("x", 1.0, 0, 0)])
    except Exception:  # noqa: BLE001 - the failure is what is timed
        return time.monotonic() - t0
    raise SystemExit("the request did not fail")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mlflow-defaults", action="store_true")
    args = ap.parse_args()
    if not args.mlflow_defaults:
        os.environ.update(HTTP_BOUNDS)
    from mlflow.tracking import MlflowClient

    root = Path(tempfile.mkdtemp())
    port = servers.free_port()
    pid = start(root, port)
    print(f"mlflow server process group: {len(servers.group_members(pid))} processes")
    client = MlflowClient(f"http://127.0.0.1:{port}")
    run_id = client.create_run(client.create_experiment("outage")).info.run_id
    os.killpg(pid, signal.SIGSTOP)
    print(f"hung server (SIGSTOP): request failed after {time_failure(client, run_id):.1f} s")
    os.killpg(pid, signal.SIGCONT)
    servers.stop_group(pid)
    print(f"killed server: request failed after {time_failure(client, run_id):.1f} s")
    print("bounds:", "MLflow defaults" if args.mlflow_defaults else HTTP_BOUNDS, file=sys.stderr)


if __name__ == "__main__":
    main()
