"""`bigdeep worker` / `schedule --pool` without a server say so; the run lock is re-entrant in
one process (the flow under `bigdeep run`) and still excludes every other process."""

from __future__ import annotations

import fcntl
import os

import pytest

from bigdeep.cli import main
from bigdeep.runlock import RUN_LOCK, hold_run
from bigdeep.servers import free_port
from bigdeep.workpool import worker_command


def _locked_by_someone(project) -> bool:
    fd = os.open(project / RUN_LOCK, os.O_RDWR)  # another open file: as another process
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def test_the_run_lock_is_re_entrant_and_held_until_the_outer_block_ends(tmp_path):
    with hold_run(tmp_path, wait=False):
        with hold_run(tmp_path, wait=False):  # the flow inside `bigdeep run`: no deadlock
            assert _locked_by_someone(tmp_path)
        assert _locked_by_someone(tmp_path)  # the inner block did not release it
    assert not _locked_by_someone(tmp_path)


@pytest.mark.parametrize("command", [["worker", "--pool", "p"], ["schedule", "--pool", "p"]])
def test_no_server_is_one_paragraph(command, tmp_path, monkeypatch, capsys):
    dead = f"http://127.0.0.1:{free_port()}/api"
    monkeypatch.setenv("PREFECT_API_URL", dead)
    assert main([*command, "--project", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert f"the Prefect server at PREFECT_API_URL={dead} does not answer" in err, err
    assert "bigdeep servers up" in err and "Traceback" not in err

    monkeypatch.delenv("PREFECT_API_URL")
    assert main(["worker", "--pool", "p", "--project", str(tmp_path)]) == 1
    assert "no Prefect server" in capsys.readouterr().err


def test_the_worker_is_a_process_worker_on_the_pool():
    cmd = worker_command("nightly", "w1")
    assert cmd[1:] == [
        "-m", "prefect", "worker", "start", "--pool", "nightly", "--type", "process",
        "--name", "w1",
    ]  # fmt: skip
