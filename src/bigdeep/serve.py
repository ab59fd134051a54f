"""Serve a registered model with MLflow's own scoring server, on 127.0.0.1, in the foreground.

    bigdeep serve bigdeep-cnn@champion [--port 5001]
    curl -s http://127.0.0.1:5001/invocations -H 'Content-Type: application/json' \
         -d '{"inputs": [[[[0.0, ...]]]]}'

`mlflow models serve --env-manager local` runs in this Python environment against the
project's store (params.yaml `mlflow`, or MLFLOW_TRACKING_URI). The reference is resolved to
one version first (an alias can move while the server runs), so what is printed is what is
served. MLflow checks each request against the model's signature (shape and dtype of the
tensor) and answers 400 with the shapes when they differ. The server is its own process group
(uvicorn and its workers): Ctrl-C, SIGTERM or a failed start stop the whole group.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from bigdeep.errors import BigdeepError
from bigdeep.servers import HOST, _alive, _tail, healthy, interruptible, stop_group

DEFAULT_PORT = 5001  # 5000 is the MLflow UI's (`bigdeep ui`, `bigdeep servers up`)
DEFAULT_TIMEOUT_S = 180.0  # loading a pt2 model and starting uvicorn: ~15 s idle, more when busy
LOG_DIR = Path(".bigdeep/serve")


class ServeError(BigdeepError, RuntimeError):
    """The model could not be served; the message names the model, the port and the fix."""


@dataclass(frozen=True)
class Served:
    """A resolved model reference: exactly the version that is served."""

    ref: str  # as the user wrote it
    name: str
    version: str
    run_id: str
    aliases: list[str]
    model_uri: str  # models:/<name>/<version>
    signature: str  # the input tensor, e.g. float32 (-1, 1, 28, 28)
    input_columns: str | None  # RNN: the F columns of a window, in order
    input_units: str | None  # RNN: "source" (target's units out) or None (scaled, older models)


def resolve_model(client, ref: str) -> Served:
    """`name@alias|version` -> the version to serve and what it takes. Errors list what exists."""
    from mlflow.models import get_model_info

    from bigdeep.registry import resolve

    mv, run = resolve(client, ref)
    model_uri = f"models:/{mv.name}/{mv.version}"
    try:
        inputs = get_model_info(model_uri).signature.inputs.to_dict()
        spec = inputs[0]
        signature = f"{spec['tensor-spec']['dtype']} {tuple(spec['tensor-spec']['shape'])}"
    except Exception:  # noqa: BLE001 - only for the printed line
        signature = "see the model's MLmodel file"
    params = run.data.params
    return Served(
        ref=ref,
        name=mv.name,
        version=str(mv.version),
        run_id=mv.run_id,
        aliases=sorted(mv.aliases),
        model_uri=model_uri,
        signature=signature,
        input_columns=params.get("rnn.input_columns"),
        input_units=params.get("rnn.input_units"),
    )


def check_port_free(port: int, ref: str) -> None:
    with socket.socket() as s:
        try:
            s.bind((HOST, port))
        except OSError as e:
            raise ServeError(
                f"cannot serve {ref}: port {port} on {HOST} is taken ({e.strerror}). Stop what "
                f"uses it, or choose another port: `bigdeep serve {ref} --port {port + 1}`"
            ) from None


def server_env(tracking: str) -> dict[str, str]:
    """This environment, the store named, and this venv's bin first on PATH: MLflow starts
    `uvicorn` by name, which must be the one beside this Python."""
    from bigdeep.env import apply_quiet_env

    env = apply_quiet_env(dict(os.environ), override=True)
    env["MLFLOW_TRACKING_URI"] = tracking
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["PYTHONUNBUFFERED"] = "1"
    return env


def start(served: Served, tracking: str, port: int, log: Path) -> subprocess.Popen:
    """The scoring server in its own process group, its output in `log`."""
    cmd = [
        *(sys.executable, "-m", "mlflow", "models", "serve", "-m", served.model_uri),
        "--env-manager",
        "local",
        "-h",
        HOST,
        "-p",
        str(port),
        "-w",
        "1",
    ]
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as out:
        return subprocess.Popen(
            cmd,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=server_env(tracking),
            start_new_session=True,  # its own group: uvicorn's workers stop with it
        )


def wait_ready(proc: subprocess.Popen, served: Served, port: int, log: Path, timeout: float):
    """Until /ping answers 200; a server that exits or stays silent is stopped and named."""
    url = f"http://{HOST}:{port}/ping"
    deadline = time.monotonic() + timeout
    while not healthy(url, timeout=2.0):
        if not _alive(proc.pid):
            stop_group(proc.pid)
            raise ServeError(
                f"the scoring server for {served.name} v{served.version} exited during start "
                f"(exit {proc.poll()}); its output ({log}) ends:\n{_tail(str(log), 12)}"
            )
        if time.monotonic() > deadline:
            stop_group(proc.pid)
            raise ServeError(
                f"the scoring server for {served.name} v{served.version} did not answer {url} "
                f"within {timeout:.0f} s (stopped; its output: {log}). On a loaded machine give "
                f"it longer: `bigdeep serve {served.ref} --port {port} --timeout {int(timeout * 2)}`"
            )
        time.sleep(0.5)


def example_request(served: Served, tracking: str, folder: Path) -> Path | None:
    """The model's own serving example (MLflow writes it at logging time), copied locally."""
    import mlflow

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    try:
        path = mlflow.artifacts.download_artifacts(
            f"{served.model_uri}/serving_input_example.json",
            dst_path=str(folder),
            tracking_uri=tracking,
        )
    except Exception:  # noqa: BLE001 - only for the printed example
        return None
    return Path(path).resolve()


def banner(served: Served, port: int, example: Path | None, log: Path, pid: int) -> str:
    url = f"http://{HOST}:{port}"
    alias = f", alias {', '.join(served.aliases)}" if served.aliases else ""
    lines = [
        f"serving {served.name} v{served.version} (run {served.run_id}{alias}) at {url}",
        f'  input: {served.signature}, JSON {{"inputs": [...]}}; answers {{"predictions": [...]}}',
    ]
    if served.input_columns:
        units = (
            "in the source's units; forecast in the target's units"
            if served.input_units == "source"
            else "scaled with the train split's statistics (a model from before serving in "
            "source units); forecast scaled too"
        )
        lines.append(f"  window columns (last axis): {served.input_columns}, {units}")
    body = f"@{example}" if example else "'{\"inputs\": [...]}'"
    lines += [
        f"  try:  curl -s {url}/invocations -H 'Content-Type: application/json' -d {body}",
        f"  health: {url}/ping   log: {log}   server pid {pid}   Ctrl-C stops it",
    ]
    return "\n".join(lines)


def serve(ref: str, tracking: str, port: int = DEFAULT_PORT, timeout: float = DEFAULT_TIMEOUT_S):
    """Resolve `ref`, start the scoring server, wait for it, hold the foreground until Ctrl-C
    (or SIGTERM); the server's whole process group is stopped on the way out."""
    from mlflow.tracking import MlflowClient

    served = resolve_model(MlflowClient(tracking), ref)  # names what exists when it fails
    check_port_free(port, ref)
    safe = f"{served.name}-v{served.version}".replace("/", "_")
    log = LOG_DIR / f"{safe}.log"
    proc = start(served, tracking, port, log)

    def stop() -> None:
        stop_group(proc.pid)  # the server and every worker it forked; waits until none is left
        print(
            f"stopped {served.name} v{served.version} (process group {proc.pid})", file=sys.stderr
        )

    with interruptible(stop):  # Ctrl-C and SIGTERM end the wait below and stop the server
        try:
            wait_ready(proc, served, port, log, timeout)
            example = example_request(served, tracking, LOG_DIR / safe)
            print(banner(served, port, example, log, proc.pid), flush=True)
            while proc.poll() is None:
                time.sleep(0.5)
            raise ServeError(
                f"the scoring server for {served.name} v{served.version} stopped by itself "
                f"(exit {proc.returncode}); its output ({log}) ends:\n{_tail(str(log), 12)}"
            )
        except KeyboardInterrupt:
            print(f"stopping {served.name} v{served.version} ...", file=sys.stderr, flush=True)
            return 0


def request_body(x) -> str:
    """The JSON body MLflow's scoring server takes for a tensor input."""
    import numpy as np

    return json.dumps({"inputs": np.asarray(x).tolist()})
