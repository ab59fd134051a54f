"""One clean failure: exit codes with a meaning, one paragraph, no traceback, transient-only
retries, escaped names, a run queue and stale DVC locks. Through the CLI and real DVC."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from bigdeep.errors import EXIT_CONFIG, EXIT_FAILED, BigdeepError, printable
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


def test_lightning_config_errors_are_recognised_without_importing_lightning():
    from lightning_fabric.utilities.exceptions import MisconfigurationException

    from bigdeep.errors import exit_code

    assert exit_code(MisconfigurationException("devices=3 on a 2-core CPU")) == EXIT_CONFIG
    assert exit_code(RuntimeError("a bug")) is None  # a bug keeps its traceback


def test_names_from_the_data_are_printed_escaped():
    assert printable("3/a\nb.png") == "3/a\\nb.png"
    assert printable("\x1b[31mred\x1b[0m\r") == "\\x1b[31mred\\x1b[0m\\r"
    assert printable("été/数字.png") == "été/数字.png"  # printable text is left alone

    from bigdeep.quality.report import failure_lines

    report = {
        "dataset": "images",
        "expectations": [
            {
                "v": "validity",
                "check": "decodable",
                "critical": False,
                "record_level": True,
                "success": False,
                "unexpected_count": 1,
                "first_failure": "images: 3/evil\nimages: PASSED.png cannot be decoded",
            }
        ],
        "failures": [],
    }
    (line,) = failure_lines(report)
    assert "\n" not in line and "3/evil\\nimages: PASSED.png" in line


def test_gate_failures_are_grouped_by_check_most_important_first():
    """25 duplicates of a record-level check do not hide the critical check that failed."""
    expectations = [
        {
            "v": "volume",
            "check": "row_count",
            "critical": True,
            "record_level": False,
            "success": True,
        },
        {
            "v": "validity",
            "check": "not_null",
            "critical": False,
            "record_level": True,
            "success": False,
            "unexpected_count": 25,
            "first_failure": "series: row 3 Demand is NaN",
        },
        {
            "v": "validity",
            "check": "in_range",
            "critical": False,
            "record_level": True,
            "success": False,
            "unexpected_count": 2,
            "first_failure": "series: row 9 Demand is 1e9",
        },
        {
            "v": "variety",
            "check": "column_type",
            "critical": True,
            "record_level": False,
            "success": False,
            "unexpected_count": None,
            "first_failure": "series: column Demand is text, expected numbers",
        },
    ]
    failures = [f"series: row {i} Demand is NaN" for i in range(20)] + [
        "series: column Demand is text, expected numbers",
        "series: 27 of 100 rows quarantined (27.00%), over max_quarantine_fraction=0",
    ]
    from bigdeep.quality.report import failure_groups, failure_lines

    report = {
        "dataset": "series",
        "columns": {},
        "quarantined": 27,
        "expectations": expectations,
        "failures": failures,
    }
    groups = failure_groups(report)
    assert [(g["check"], g["count"]) for g in groups] == [
        ("quarantine_fraction", 27),
        ("column_type", 1),
        ("not_null", 25),
        ("in_range", 2),
    ]
    lines = failure_lines(report)
    assert lines[1] == (
        "variety column_type (fails the gate, 1 row): series: column Demand is text, expected numbers"
    )
    assert lines[2].startswith("validity not_null (quarantined, 25 rows): series: row 3")
    assert len(lines) == 4  # each check once, not 20 copies


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


def test_only_transient_errors_are_retried():
    from prefect.states import Failed

    from bigdeep.data.sources import SourceError
    from flows.pipeline import StageRun, _only_transient, stage_failure

    busy = (
        "ERROR: failed to reproduce 'ingest@images': 'data/raw/images' is busy, it is being "
        "blocked by:\n  (PID 4242): dvc repro\n"
    )
    assert stage_failure("ingest@images", "images", StageRun("s", True, 1, busy)).transient
    http = "ERROR: failed to push data: HTTP Error 503: Service Unavailable\n"
    assert stage_failure("dvc push", None, StageRun("s", True, 1, http)).transient

    def retried(error: BaseException) -> bool:
        return _only_transient(None, None, Failed(data=error))

    assert retried(stage_failure("ingest@images", "images", StageRun("s", True, 1, busy)))
    assert retried(ConnectionRefusedError("127.0.0.1:5000"))
    assert not retried(SourceError("bad.jsonl: line 2 is not valid JSON"))
    assert not retried(ValueError("a bug is not cured by waiting"))


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


def test_every_project_error_is_a_bigdeep_error():
    from bigdeep.config import ConfigError
    from bigdeep.data.sources import SourceError
    from bigdeep.prepare import PrepareError
    from bigdeep.servers import ServerError
    from bigdeep.tracking import TrackingError

    for cls in (SourceError, PrepareError, TrackingError, ServerError):
        assert issubclass(cls, BigdeepError) and cls("x").exit_code == EXIT_FAILED
    assert ConfigError("x").exit_code == EXIT_CONFIG and isinstance(ConfigError("x"), ValueError)


@pytest.mark.slow
def test_bigdeep_validate_lists_each_failed_check_once_with_its_count(
    tmp_path, capsys, monkeypatch
):
    """30 rows with no Demand: one line for the check with its count, not 20 copies of it."""
    import pandas as pd

    from bigdeep.cli import main

    times = pd.date_range("2024-01-01", periods=60, freq="h", tz="UTC")
    frame = pd.DataFrame({"Time": times.strftime("%Y-%m-%dT%H:%M:%SZ"), "Demand": 100.0})
    frame["Temperature"] = 20.0
    frame.loc[10:39, "Demand"] = None
    frame.to_csv(tmp_path / "demand.csv", index=False)
    (tmp_path / "params.yaml").write_text(
        "data:\n  series:\n    source: csv:demand.csv\n    last_days: null\n"
    )
    monkeypatch.chdir(tmp_path)
    assert main(["ingest", "series", "--out", "raw"]) == 0
    code = main(
        [
            "validate",
            "series",
            "--raw",
            "raw",
            "--report",
            "reports/series.json",
            "--quarantine",
            "quarantine",
            "--reference",
            "none",
        ]
    )
    err = capsys.readouterr().err
    assert code == 3
    listed = [line for line in err.splitlines() if line.startswith("  - ")]
    assert listed[0].startswith("  - validity quarantine_fraction (fails the gate, 30 rows): ")
    nan = [line for line in listed if "row 11 " in line]
    assert len(nan) == 1 and "(quarantined, 30 rows)" in nan[0], listed
    assert len(listed) <= 4, listed
