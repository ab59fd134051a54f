"""One clean failure through the CLI and real DVC processes: exit codes with a meaning, one
paragraph, no traceback; a stage's own error line; a run queue and stale DVC locks."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from bigdeep.errors import EXIT_CONFIG, EXIT_FAILED
from bigdeep.runlock import RUN_LOCK, clear_stale_dvc_locks, hold_run

ROOT = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "bigdeep.cli"]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{ROOT}"}


def _bigdeep(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], cwd=cwd, env=_env(), capture_output=True, text=True)


def _bad_jsonl(folder: Path) -> Path:
    (folder / "bad.jsonl").write_text(
        '{"Time": "2024-01-01T00:00:00Z", "Demand": 1}\n{"Time": oops\n'
    )
    (folder / "params.yaml").write_text("data:\n  series:\n    source: jsonl:bad.jsonl\n")
    return folder / "bad.jsonl"


@pytest.mark.slow
def test_project_errors_print_one_paragraph_with_their_exit_code(tmp_path):
    # a configuration error: 2, naming the file and the fix
    proc = _bigdeep("--params", "nope.yaml", "scan", "images", "--out", "s.json", cwd=tmp_path)
    assert proc.returncode == EXIT_CONFIG
    assert proc.stderr.strip() == (
        "bigdeep scan: config error: nope.yaml: not found (run from the project root or pass --params)"
    )
    # a bad source: 1, naming the file and the line
    _bad_jsonl(tmp_path)
    proc = _bigdeep("ingest", "series", "--out", "raw", cwd=tmp_path)
    assert proc.returncode == EXIT_FAILED
    assert "bad.jsonl: line 2 is not valid JSON" in proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    # --debug shows the trace for whoever wants it
    proc = _bigdeep("--debug", "ingest", "series", "--out", "raw", cwd=tmp_path)
    assert proc.returncode != 0 and "Traceback" in proc.stderr and "SourceError" in proc.stderr


def test_a_bad_set_value_exits_2_before_anything_starts(tmp_path):
    """Validated before the lock, the servers and the flow: nothing heavy is even imported."""
    params = tmp_path / "params.yaml"
    params.write_text((ROOT / "params.yaml").read_text())
    code = textwrap.dedent(
        f"""
        import sys
        from bigdeep.cli import main
        rc = main(["run", "--project", {str(tmp_path)!r}, "--set", "train.cnn.epochs=0"])
        heavy = sorted({{m.split(".")[0] for m in sys.modules}} & {{"prefect", "torch", "lightning_fabric", "mlflow", "dvc"}})
        print(rc, heavy)
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], env=_env(), capture_output=True, text=True)
    assert proc.stdout.strip() == "2 []", proc.stderr
    assert "train.cnn.epochs: Input should be greater than or equal to 1 (got 0)" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert params.read_text() == (ROOT / "params.yaml").read_text()  # nothing written
    assert not (tmp_path / ".bigdeep").exists()  # no lock taken, no log started
    proc = _bigdeep("run", "--project", str(tmp_path), "--set", "train.cnn.epochs", cwd=tmp_path)
    assert proc.returncode == EXIT_CONFIG and "expected KEY=VALUE" in proc.stderr


@pytest.mark.slow
def test_the_console_command_says_only_the_config_error_for_a_bad_set_value(tmp_path):
    """`bigdeep run` (the console path, which ends through orchestration.finish) used to add
    "the Prefect server stopped answering during the run. The work is done..." to a --set
    error: no server was used and no work was done."""
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    proc = _bigdeep(
        "run", "--project", str(tmp_path), "--set", "train.cnn.epochs=abc", cwd=tmp_path
    )
    assert proc.returncode == EXIT_CONFIG
    assert proc.stderr.splitlines() == [
        f"bigdeep run: config error: {tmp_path / 'params.yaml'}: 1 invalid setting(s) after --set",
        "  train.cnn.epochs: Input should be a valid integer, unable to parse string as an "
        "integer (got 'abc')",
    ]


@pytest.mark.slow
def test_stage_error_is_the_stages_own_line_from_real_dvc_output(tmp_path, monkeypatch):
    """A real `dvc repro` of a failing bigdeep stage: the flow carries its one error up."""
    from flows.pipeline import StageRun, _dvc, is_transient, stage_failure

    _bad_jsonl(tmp_path)
    (tmp_path / "dvc.yaml").write_text(
        "stages:\n  ingest:\n"
        f"    cmd: {sys.executable} -m bigdeep.cli ingest series --out raw\n"
        "    deps: [bad.jsonl]\n    outs: [raw]\n"
    )
    subprocess.run(
        [sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], cwd=tmp_path, check=True
    )
    monkeypatch.setenv("PYTHONPATH", _env()["PYTHONPATH"])  # the stage imports this checkout
    proc = _dvc(tmp_path, "repro", "--single-item", "ingest")
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "ERROR" in output  # DVC's noise is there...
    failure = stage_failure("ingest@series", "series", StageRun("ingest", True, 1, output))
    assert str(failure) == "bad.jsonl: line 2 is not valid JSON: Expecting value (column 10)"
    assert (failure.exit_code, failure.transient) == (EXIT_FAILED, False)
    assert not is_transient(failure)  # a deterministic error is not retried


HOLD = """
import sys, time
from pathlib import Path
from bigdeep.runlock import hold_run
with hold_run(Path(sys.argv[1])):
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
    (Path(sys.argv[1]) / "first-done").touch()  # the last thing before letting go
"""


def _holder(project: Path, seconds: float) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(project), str(seconds)],
        env=_env(),
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_run_with_no_wait_exits_1_naming_the_first(tmp_path):
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    first = _holder(tmp_path, 60)
    try:
        proc = _bigdeep(
            "run",
            "--no-wait",
            "--project",
            str(tmp_path),
            "--set",
            "train.cnn.epochs=2",
            cwd=tmp_path,
        )
    finally:
        first.kill()
        first.wait()
    assert proc.returncode == EXIT_FAILED
    assert f"another bigdeep run is in progress in {tmp_path} (PID {first.pid}, started " in (
        proc.stderr
    )
    assert "Traceback" not in proc.stderr
    # its --set was not applied: the first run's params are not overwritten
    assert (tmp_path / "params.yaml").read_text() == (ROOT / "params.yaml").read_text()


def test_a_second_run_waits_for_the_first_saying_for_whom(tmp_path):
    first = _holder(tmp_path, 3)
    out = io.StringIO()
    with hold_run(tmp_path, wait=True, out=out):
        assert (tmp_path / "first-done").exists()  # it got the lock once the first let go
        holder = json.loads((tmp_path / RUN_LOCK).read_text())
        assert holder["pid"] == os.getpid()
    first.wait()
    said = out.getvalue()
    assert f"waiting for the run in progress in {tmp_path} (PID {first.pid}, started " in said
    assert "the earlier run finished; starting" in said
    # a lock left by a killed run is no lock: the kernel dropped it with the process
    killed = _holder(tmp_path, 60)
    killed.kill()
    killed.wait()
    with hold_run(tmp_path, wait=False):
        pass


@pytest.mark.slow
def test_stale_dvc_locks_are_cleared_only_when_their_process_is_not_dvc(tmp_path):
    """A real DVC repo whose rwlock names a dead PID and a PID reused by another program:
    DVC refuses to run ("is busy"); after clearing, it runs. A live DVC process is kept."""
    subprocess.run(
        [sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], cwd=tmp_path, check=True
    )
    (tmp_path / "in.txt").write_text("x\n")
    (tmp_path / "dvc.yaml").write_text(
        "stages:\n  copy:\n    cmd: cp in.txt out.txt\n    deps: [in.txt]\n    outs: [out.txt]\n"
    )
    dead = subprocess.Popen(["true"])
    dead.wait()
    other = subprocess.Popen(["sleep", "60"])  # alive, but not DVC (a reused PID)
    dvc_like = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "dvc"])
    out = str(tmp_path / "out.txt")
    lock = {
        "write": {out: {"pid": other.pid, "cmd": "dvc repro"}},
        "read": {
            str(tmp_path / "in.txt"): [{"pid": dead.pid, "cmd": "dvc repro"}],
            str(tmp_path / "elsewhere"): [{"pid": dvc_like.pid, "cmd": "dvc pull"}],
        },
    }
    rwlock = tmp_path / ".dvc" / "tmp" / "rwlock"
    rwlock.parent.mkdir(parents=True, exist_ok=True)
    rwlock.write_text(json.dumps(lock))
    try:
        repro = [sys.executable, "-m", "dvc", "repro"]
        proc = subprocess.run(repro, cwd=tmp_path, capture_output=True, text=True)
        assert proc.returncode != 0 and "is busy" in proc.stderr
        said = clear_stale_dvc_locks(tmp_path)
        assert len(said) == 2 and any(f"PID {other.pid}" in s for s in said)
        assert json.loads(rwlock.read_text()) == {
            "read": {str(tmp_path / "elsewhere"): [{"pid": dvc_like.pid, "cmd": "dvc pull"}]}
        }
        proc = subprocess.run(repro, cwd=tmp_path, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        assert (tmp_path / "out.txt").read_text() == "x\n"
    finally:
        for p in (other, dvc_like):
            p.kill()
            p.wait()
