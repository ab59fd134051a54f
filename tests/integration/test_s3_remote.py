"""A DVC remote on a real S3 server (moto on 127.0.0.1): a fresh clone's cache is filled from it
for `restore`, and a push to a stopped store fails in seconds as one paragraph naming the
remote; once the store is back, the push completes."""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from bigdeep.registry import RestoreError, dvc_dir_md5, restore_dir
from bigdeep.remote import fetch, push_failed, refetch
from tests.e2e.s3server import S3Server

pytestmark = pytest.mark.slow


def sh(*cmd: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)


def dvc(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return sh(sys.executable, "-m", "dvc", *args, cwd=cwd)


@pytest.fixture
def repo(tmp_path, monkeypatch):
    """A git + DVC repo whose default remote is s3://bigdeep/data, with 40 files under d/."""
    server = S3Server().start()
    for key, value in server.env().items():
        monkeypatch.setenv(key, value)
    server.create_bucket()
    path = tmp_path / "repo"
    path.mkdir()
    sh("git", "init", "-q", cwd=path)
    assert dvc("init", "-q", cwd=path).returncode == 0
    (path / "d").mkdir()
    for i in range(40):
        (path / "d" / f"f{i:02}.bin").write_bytes(os.urandom(64) + bytes([i]))
    assert dvc("add", "-q", "d", cwd=path).returncode == 0
    assert dvc("remote", "add", "-d", "team", "s3://bigdeep/data", cwd=path).returncode == 0
    sh("git", "add", "-A", cwd=path)
    sh("git", "-c", "user.name=t", "-c", "user.email=t@x.invalid", "commit", "-qm", "d", cwd=path)
    try:
        yield path, server
    finally:
        server.stop()


def test_a_fresh_clone_restores_a_data_version_from_the_s3_remote(repo, tmp_path):
    from dvc.repo import Repo

    path, server = repo
    assert dvc("push", cwd=path).returncode == 0
    md5 = dvc_dir_md5(path / "d")
    assert len(server.keys("data/files/md5/")) == 41  # 40 files and the .dir manifest
    clone = tmp_path / "clone"
    sh("git", "clone", "-q", str(path), str(clone), cwd=tmp_path)
    with Repo(str(clone)) as r:
        cache = Path(r.cache.local.path).parents[1]
        assert fetch(r, md5) is None
        restore_dir(md5, clone / "d", [cache])
    assert dvc_dir_md5(clone / "d") == md5
    assert (clone / "d" / "f07.bin").read_bytes() == (path / "d" / "f07.bin").read_bytes()

    server.stop()
    with Repo(str(clone)) as r:
        for obj in Path(r.cache.local.path).rglob("*"):
            if obj.is_file():
                obj.unlink()
        problem = fetch(r, md5)
    assert problem.startswith(f"reading {md5} from the DVC remote 'team' (s3://bigdeep/data)")
    assert "Could not connect to the endpoint URL" in problem


def rot(obj: Path) -> bytes:
    """Flip a byte of a cache object as the disk would: same size, same mtime (DVC's state
    database then still takes it for intact). The damaged bytes."""
    stat = obj.stat()
    data = bytearray(obj.read_bytes())
    data[0] ^= 0xFF
    obj.chmod(0o644)
    obj.write_bytes(bytes(data))
    os.utime(obj, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    return bytes(data)


def test_an_object_corrupt_in_the_cache_is_read_again_from_the_s3_remote(repo, tmp_path):
    from dvc.repo import Repo

    path, server = repo
    assert dvc("push", cwd=path).returncode == 0
    md5 = dvc_dir_md5(path / "d")
    clone = tmp_path / "clone"
    sh("git", "clone", "-q", str(path), str(clone), cwd=tmp_path)
    with Repo(str(clone)) as r:
        cache = Path(r.cache.local.path).parents[1]
        assert fetch(r, md5) is None
        good = (path / "d" / "f07.bin").read_bytes()
        f07 = hashlib.md5(good).hexdigest()
        obj = cache / "files" / "md5" / f07[:2] / f07[2:]
        rot(obj)  # the only local copy is damaged; S3 holds an intact one
        assert fetch(r, md5) is None  # DVC's state still vouches for it: nothing fetched
        assert obj.read_bytes() != good

        restored = restore_dir(md5, clone / "d", [cache], cache, lambda m: refetch(r, m))
        assert restored.repaired == 1
        assert restored.fallbacks == [
            f"f07.bin ({f07}) of {md5} is corrupt in {cache}: read it again from the DVC "
            "remote 'team' (s3://bigdeep/data)"
        ]
        assert obj.read_bytes() == good and (clone / "d" / "f07.bin").read_bytes() == good
        assert dvc_dir_md5(clone / "d") == md5

        rotten = rot(obj)
        server.stop()  # no intact copy can be read: a clear error, the corrupt copy kept
        with pytest.raises(RestoreError, match=r"f07.bin .* is corrupt in .* no intact copy"):
            restore_dir(md5, clone / "d", [cache], cache, lambda m: refetch(r, m))
        assert obj.read_bytes() == rotten
    assert dvc_dir_md5(clone / "d") == md5  # the earlier restore stays in place


def test_a_push_to_a_stopped_store_fails_in_seconds_naming_the_remote_and_a_rerun_completes(repo):
    path, server = repo
    server.stop_after_puts("data/", 5)  # the store goes down in the middle of the upload
    started = time.monotonic()
    failed = dvc("push", cwd=path)
    took = time.monotonic() - started
    assert failed.returncode != 0 and server.stopped.is_set()
    assert took < 60, (
        f"a stopped store took {took:.0f} s to notice"
    )  # ~5 s quiet, retries kept short
    error = str(push_failed(path, failed.stdout + failed.stderr))
    assert error.startswith(
        f"the DVC remote 'team' (s3://bigdeep/data via {server.endpoint}) did not take the data: "
    )
    assert "Could not connect to the endpoint URL" in error
    assert "the object store is not answering: start it" in error

    server.start()  # back, with what it had: some objects, not the .dir (DVC sends it last)
    sent = server.keys("data/")
    assert 5 <= len(sent) < 41 and not any(key.endswith(".dir") for key in sent)
    assert dvc("push", cwd=path).returncode == 0
    assert len(server.keys("data/files/md5/")) == 41


def test_a_store_that_hangs_fails_after_the_remote_timeouts_naming_the_remote(repo, monkeypatch):
    """A store that takes connections and never answers (a wedged server, a half-open
    network): with the timeouts README's Team setup gives, the push fails with the same one
    paragraph as a stopped store instead of waiting minutes."""
    path, _ = repo
    hung = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                held.append(hung.accept()[0])  # read nothing, answer nothing
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    endpoint = f"http://127.0.0.1:{hung.getsockname()[1]}"
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    for option, seconds in (("connect_timeout", "2"), ("read_timeout", "2")):
        assert dvc("remote", "modify", "--local", "team", option, seconds, cwd=path).returncode == 0
    try:
        failed = dvc("push", cwd=path)
    finally:
        hung.close()
        for conn in held:
            conn.close()
    assert failed.returncode != 0 and held  # it connected, then waited for an answer
    error = str(push_failed(path, failed.stdout + failed.stderr))
    assert error.startswith(
        f"the DVC remote 'team' (s3://bigdeep/data via {endpoint}) did not take the data: "
    )
    assert "Read timeout on endpoint URL" in error
    assert "the object store is not answering: start it" in error
