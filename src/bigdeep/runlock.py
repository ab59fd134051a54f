"""One `bigdeep run` at a time per project, and DVC locks left behind by dead processes.

    with hold_run(project, wait=True):   # a second run waits here, saying for whom
        clear_stale_dvc_locks(project)
        ...                              # --set, the flow

The run lock is an OS lock (flock) on `.bigdeep/run.lock`: the kernel drops it when its
process dies, however it dies, so it never goes stale. The file holds the holder's PID, start
time and command, for the message the next run prints.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

from bigdeep.errors import RunBusy

RUN_LOCK = ".bigdeep/run.lock"
DVC_RWLOCK = ".dvc/tmp/rwlock"
_HELD: set[Path] = set()  # the projects this process holds: holding again is a no-op


def _holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
        started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(info["started"]))
        return f"PID {info['pid']}, started {started}: {info['command']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "PID unknown"


@contextlib.contextmanager
def hold_run(project: Path, *, wait: bool = True, out: TextIO | None = None) -> Iterator[None]:
    """Hold the project's run lock for the block; wait for it (saying so) or raise RunBusy.

    Re-entrant within a process: `bigdeep run` holds it, and the flow it runs (which also takes
    it, for runs a Prefect worker starts) goes straight on.
    """
    out = out or sys.stderr
    key = Path(project).resolve()
    if key in _HELD:
        yield
        return
    path = Path(project) / RUN_LOCK
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(path)
            if not wait:
                raise RunBusy(
                    f"another bigdeep run is in progress in {project} ({holder}); "
                    "run again when it is done, or without --no-wait to queue behind it"
                ) from None
            print(
                f"bigdeep run: waiting for the run in progress in {project} ({holder}); "
                "Ctrl-C stops waiting",
                file=out,
                flush=True,
            )
            fcntl.flock(fd, fcntl.LOCK_EX)
            print("bigdeep run: the earlier run finished; starting", file=out, flush=True)
        info = {"pid": os.getpid(), "started": time.time(), "command": " ".join(sys.argv)}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        _HELD.add(key)
        try:
            yield
        finally:
            _HELD.discard(key)
    finally:
        os.close(fd)  # closing drops the flock


def _is_dvc(pid: int) -> bool:
    """True while `pid` is a live DVC process (a reused PID of another program is not)."""
    import psutil

    try:
        cmd = psutil.Process(pid).cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False
    return any(Path(arg).name in ("dvc", "dvc.exe") or arg == "dvc" for arg in cmd) or any(
        arg.startswith("dvc") and cmd[i - 1] == "-m" for i, arg in enumerate(cmd) if i
    )


def clear_stale_dvc_locks(project: Path) -> list[str]:
    """Drop entries of DVC's rwlock whose process is dead or is no longer DVC; say which.

    Call it under `hold_run` (no other bigdeep run is in this project). DVC's own guard
    (rwlock.lock, a kernel lock) is taken while editing, so a DVC starting now waits for us.
    """
    import zc.lockfile

    path = Path(project) / DVC_RWLOCK
    if not path.exists():
        return []
    for attempt in range(50):  # DVC holds its guard only while it edits the file
        try:
            guard = zc.lockfile.LockFile(str(path) + ".lock")
            break
        except zc.lockfile.LockError:
            if attempt == 49:
                return [f"left {DVC_RWLOCK} alone: DVC is editing it"]
            time.sleep(0.1)
    try:
        try:
            lock = json.loads(path.read_text(encoding="utf-8") or "{}")
        except ValueError:
            path.unlink()
            return [f"removed {DVC_RWLOCK}: not valid JSON (DVC would refuse to run)"]
        removed = []
        for mode in ("read", "write"):
            entries = lock.get(mode) or {}
            for out, infos in list(entries.items()):
                kept = []
                for info in infos if isinstance(infos, list) else [infos]:
                    pid = int(info.get("pid", 0))
                    if _is_dvc(pid):
                        kept.append(info)
                    else:
                        removed.append(f"{out} ({mode}, PID {pid}: {info.get('cmd', '?')})")
                if kept:
                    entries[out] = kept if isinstance(infos, list) else kept[0]
                else:
                    del entries[out]
            if mode in lock and not entries:
                del lock[mode]
        if removed:
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text(json.dumps(lock), encoding="utf-8")
            os.replace(tmp, path)
        return [
            f"cleared a stale DVC lock on {r}: that process is gone or is not DVC" for r in removed
        ]
    finally:
        guard.close()
