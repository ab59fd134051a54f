"""The image and series stages on a real local Dask cluster (2 worker processes) give the same
bytes as in-process; ingest reads the image files on the workers, and a file it cannot read
there is named as in-process; a worker killed mid-stage changes nothing; a lost cluster fails
cleanly.

Shards, report, quarantine and prepared splits are compared byte for byte: the merge in
shard (chunk) order is what makes `dvc.lock` independent of compute.cluster.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from bigdeep import ingest
from bigdeep.cli import main
from bigdeep.compute import ComputeError, DaskExecutor, open_executor
from bigdeep.config import ComputeSettings, Settings
from bigdeep.data import sources
from bigdeep.data.store import IMAGE_SCHEMA, write_shards
from bigdeep.ingest import ingest_images, ingest_series
from bigdeep.prepare import prepare_images, prepare_series
from bigdeep.quality.gate import gate_series, write_quarantine, write_report
from bigdeep.quality.profile import iter_image_profiles, profile_images
from bigdeep.validate import validate
from tests.unit.images import digit, png

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster() -> Iterator[tuple[str, object]]:
    """(scheduler address, client) of a LocalCluster of 2 single-threaded worker processes."""
    from distributed import Client, LocalCluster

    with (
        LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address="127.0.0.1:0",
        ) as local,
        Client(local) as client,
    ):
        yield local.scheduler_address, client


def run_stages(settings: Settings, root: Path) -> dict[str, bytes]:
    """ingest, validate and prepare the images into `root`; every output file's bytes."""
    raw, quarantine = root / "raw", root / "quarantine"
    ingest_images(settings, raw)
    result = validate(
        "images", settings, raw, root / "reports/images.json", quarantine, root / "reference"
    )
    assert result.passed, result.report["failures"]
    with open_executor(settings.compute) as executor:
        prepare_images(
            raw,
            quarantine,
            root / "processed",
            settings.prepare.images,
            settings.quality.images.classes,
            settings.seed,
            executor,
        )
    return outputs(root, ["raw", "quarantine", "processed", "reports/images.json", "reference"])


def outputs(root: Path, names: list[str]) -> dict[str, bytes]:
    """Every file's bytes under `names` (files or folders in `root`), by path."""
    return {
        str(p.relative_to(root)): p.read_bytes()
        for out in names
        for p in sorted([root / out] if (root / out).is_file() else (root / out).rglob("*"))
        if p.is_file()
    }


def on(address: str, **params) -> tuple[Settings, Settings]:
    """(in-process settings, the same on the cluster at `address`)."""
    base = Settings.model_validate(params)
    return base, base.model_copy(update={"compute": ComputeSettings(cluster=address)})


def assert_same(a: dict[str, bytes], b: dict[str, bytes]) -> None:
    assert sorted(a) == sorted(b)
    assert [name for name in a if a[name] != b[name]] == []


def test_builtin_data_gives_the_same_bytes_on_the_cluster(cluster, tmp_path):
    local, remote = on(
        cluster[0],
        data={"images": {"per_class": 12, "shard_rows": 25}},  # 120 images, 5 shards
    )
    here = run_stages(local, tmp_path / "here")
    there = run_stages(remote, tmp_path / "there")
    assert sum(name.startswith("raw/part-") for name in here) == 5
    assert {"processed/train_x.npy", "quarantine/reasons.parquet"} <= set(here)
    assert_same(here, there)


def image_folder(root: Path) -> Path:
    """3 classes x 8 digits, plus a truncated PNG, an empty file and an exact duplicate."""
    for k, label in enumerate("012"):
        (root / label).mkdir(parents=True)
        for i in range(8):
            (root / label / f"{i:02d}.png").write_bytes(png(digit(10 * k + i)))
    (root / "1" / "broken.png").write_bytes(png(digit(99))[:40])
    (root / "2" / "empty.png").write_bytes(b"")
    (root / "0" / "copy.png").write_bytes((root / "1" / "03.png").read_bytes())
    return root


def test_image_folder_with_bad_files_gives_the_same_quarantine(cluster, tmp_path):
    folder = image_folder(tmp_path / "src")
    local, remote = on(
        cluster[0],
        data={"images": {"source": f"folder:{folder}", "per_class": None, "shard_rows": 4}},
        quality={"images": {"classes": ["0", "1", "2"], "max_quarantine_fraction": 0.2}},
    )
    here = run_stages(local, tmp_path / "here")
    there = run_stages(remote, tmp_path / "there")
    reasons = pd.read_parquet(tmp_path / "there/quarantine/reasons.parquet")
    # the bad files, from different shards, merged into one quarantine; 1/03.png is a copy of
    # 0/copy.png, in an earlier shard (duplicates are found across shards)
    assert set(reasons["record"]) == {"1/broken.png", "2/empty.png", "1/03.png"}
    assert_same(here, there)


def expected_shards(folder: Path, per_class: int, shard_rows: int) -> list[bytes]:
    """The store main wrote for a folder source, from the files themselves: sorted classes,
    sorted .png files under each (others skipped), the first `per_class` of each class,
    `shard_rows` per shard, every file's bytes as they are (broken ones included)."""
    rows = []
    for class_dir in sorted(folder.iterdir()):
        files = sorted(p for p in class_dir.rglob("*.png") if not p.name.startswith("."))
        rel = [(p.relative_to(folder).as_posix(), p) for p in files[:per_class]]
        rows += [(r, str(p), class_dir.name, p.read_bytes()) for r, p in rel]
    shards = []
    for i in range(0, len(rows), shard_rows):
        frame = pd.DataFrame(rows[i : i + shard_rows], columns=IMAGE_SCHEMA.names)
        out = pa.BufferOutputStream()
        pq.write_table(pa.Table.from_pandas(frame, schema=IMAGE_SCHEMA, preserve_index=False), out)
        shards.append(out.getvalue().to_pybytes())
    return shards


def test_an_image_folder_is_read_on_the_workers_into_the_same_bytes(cluster, tmp_path, monkeypatch):
    folder = image_folder(tmp_path / "src")
    (folder / "1" / "0-cut.png").write_bytes(png(digit(98))[:50])  # bad: kept for the gate
    (folder / "2" / "0-sub").mkdir()
    (folder / "2" / "0-sub" / "deep.png").write_bytes(png(digit(77)))
    (folder / "0" / "notes.txt").write_text("not an image")
    # 9 per class: 1/broken.png and 2/empty.png, last in their classes, are left out
    images = {"source": f"folder:{folder}", "per_class": 9, "shard_rows": 4}
    local, remote = on(cluster[0], data={"images": images})
    ingest_images(local, tmp_path / "here")

    def driver_reads(*args):
        raise AssertionError("the driver read or encoded an image")

    with monkeypatch.context() as m:  # this process only: the workers import their own
        m.setattr(sources, "_read_bytes", driver_reads)
        m.setattr(sources, "encode_png", driver_reads)
        result = ingest_images(remote, tmp_path / "there")
    here = sorted((tmp_path / "here").iterdir())
    there = sorted((tmp_path / "there").iterdir())
    expected = expected_shards(folder, per_class=9, shard_rows=4)
    assert result.rows == 27 and len(expected) == 7
    assert (
        [p.name for p in here]
        == [p.name for p in there]
        == [f"part-{i:05d}.parquet" for i in range(7)]
    )
    assert [p.read_bytes() for p in here] == expected
    assert [p.read_bytes() for p in there] == expected
    ids = set(pd.read_parquet(tmp_path / "there")["record_id"])
    assert {"1/0-cut.png", "2/0-sub/deep.png", "0/copy.png"} <= ids
    assert not {"1/broken.png", "2/empty.png", "0/notes.txt"} & ids


def refused(project: Path, capfd) -> str:
    """`bigdeep ingest images` exits 1 with one line, no traceback, no store; that line.
    (capfd: what worker processes started here write to the terminal counts too.)"""
    capfd.readouterr()
    code = main(["ingest", "images", "--out", "data/raw/images"])
    err = capfd.readouterr().err
    assert code == 1, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert not (project / "data" / "raw" / "images").exists()
    return err.strip()


def image_project(root: Path, cluster: str | None) -> Path:
    """A project of 3 classes x 8 digits whose params name `cluster` (None: in-process)."""
    image_folder(root / "src" / "digits")
    data = {"images": {"source": "folder:src/digits", "per_class": None, "shard_rows": 5}}
    (root / "params.yaml").write_text(
        yaml.safe_dump({"data": data, "compute": {"cluster": cluster}})
    )
    return root


# in this process; on the module's cluster; on a LocalCluster the stage starts (its workers
# write to this terminal)
WHERE = ["in-process", "cluster", "local:1"]


def cluster_for(where: str, cluster: tuple[str, object]) -> str | None:
    return {"in-process": None, "cluster": cluster[0]}.get(where, where)


@pytest.mark.parametrize("where", WHERE)
def test_a_file_gone_between_listing_and_reading_is_named(
    where, cluster, tmp_path, monkeypatch, capfd
):
    project = image_project(tmp_path, cluster_for(where, cluster))
    monkeypatch.chdir(project)
    plan = ingest.plan_image_shards

    def listed_then_removed(*args):
        shards = list(plan(*args))  # every file listed, none read yet
        (project / "src" / "digits" / "1" / "05.png").unlink()
        return iter(shards)

    monkeypatch.setattr(ingest, "plan_image_shards", listed_then_removed)
    assert refused(project, capfd) == (
        "bigdeep ingest: error: src/digits/1/05.png: cannot be read (No such file or directory)"
    )


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a mode-000 file")
@pytest.mark.parametrize("where", WHERE)
def test_an_unreadable_file_is_named_with_the_fix(where, cluster, tmp_path, monkeypatch, capfd):
    project = image_project(tmp_path, cluster_for(where, cluster))
    monkeypatch.chdir(project)
    (project / "src" / "digits" / "2" / "03.png").chmod(0)
    assert refused(project, capfd) == (
        "bigdeep ingest: error: src/digits/2/03.png: permission denied (bigdeep runs as uid "
        f"{os.geteuid()}): make it readable (chmod a+r src/digits/2/03.png) or copy it "
        "somewhere readable"
    )


def kill_one_worker(client) -> int:
    """SIGKILL one worker process (its nanny starts a new one); its pid."""
    pid = sorted(client.run(os.getpid).values())[0]
    os.kill(pid, signal.SIGKILL)
    return pid


def _slow_len(i: int, values: list[int]) -> int:
    time.sleep(0.05)
    return len(values) + i


def test_arguments_lost_with_every_worker_are_sent_again(cluster):
    """Every worker holding a map's arguments dies: Dask cancels the tasks that needed them
    ("already forgotten"); map_ordered sends the arguments again and the map completes."""
    address, client = cluster
    before = set(client.run(os.getpid).values())
    results = DaskExecutor(client, address, retries=0).map_ordered(_slow_len, range(24), [0] * 99)
    first = next(results)
    for pid in before:
        os.kill(pid, signal.SIGKILL)
    assert [first, *results] == [99 + i for i in range(24)]
    deadline = time.monotonic() + 60  # the nanny has started two new workers for the next test
    while len(set(client.run(os.getpid, on_error="ignore").values()) - before) < 2:
        assert time.monotonic() < deadline, "the nanny did not restart the workers"
        time.sleep(0.2)


def test_a_worker_killed_mid_stage_changes_nothing(cluster, tmp_path):
    address, client = cluster
    batches = [pd.DataFrame({"row": range(i * 10, i * 10 + 10)}) for i in range(12)]

    def killing_after(n: int) -> Iterator[pd.DataFrame]:
        for i, batch in enumerate(batches):
            if i == n:
                kill_one_worker(client)
            yield batch

    write_shards(iter(batches), tmp_path / "here")
    with open_executor(ComputeSettings(cluster=address)) as executor:
        rows = write_shards(killing_after(3), tmp_path / "there", executor)
        assert rows == 120
        # the gate's profiling, with a worker killed after its first chunk
        ingest_images(
            Settings.model_validate({"data": {"images": {"per_class": 12, "shard_rows": 4}}}),
            tmp_path / "images",
        )  # 30 row groups: most still to run when the worker dies
        chunks = iter_image_profiles(tmp_path / "images", chunk_rows=4, executor=executor)
        first = next(chunks)
        killed = kill_one_worker(client)
        profile = pd.concat([first.frame, *(c.frame for c in chunks)], ignore_index=True)
    pd.testing.assert_frame_equal(profile, profile_images(tmp_path / "images", workers=1))
    here = sorted((tmp_path / "here").iterdir())
    there = sorted((tmp_path / "there").iterdir())
    assert [p.name for p in here] == [p.name for p in there]
    assert all(a.read_bytes() == b.read_bytes() for a, b in zip(here, there, strict=True))
    _wait_for_workers(client, 2)  # the nanny started a new worker
    assert killed not in client.run(os.getpid).values()


def _wait_for_workers(client, n: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while len(client.scheduler_info(n_workers=-1)["workers"]) < n:
        assert time.monotonic() < deadline, "the nanny did not restart the killed worker"
        time.sleep(0.2)


def test_a_lost_cluster_fails_cleanly_and_leaves_the_old_store(tmp_path):
    from distributed import LocalCluster

    out = tmp_path / "raw"
    write_shards([pd.DataFrame({"row": [1, 2]})], out)  # the store of an earlier run
    before = (out / "part-00000.parquet").read_bytes()
    local = LocalCluster(
        n_workers=1,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address="127.0.0.1:0",
    )
    batches = (pd.DataFrame({"row": range(i, i + 5)}) for i in range(0, 50, 5))

    def losing_the_cluster() -> Iterator[pd.DataFrame]:
        for i, batch in enumerate(batches):
            if i == 3:
                local.close()  # scheduler and worker gone mid-stage
            yield batch

    with pytest.raises(ComputeError, match=r"compute.cluster 'tcp://127\.0\.0\.1:\d+'"):
        with open_executor(ComputeSettings(cluster=local.scheduler_address)) as executor:
            write_shards(losing_the_cluster(), out, executor)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw"]  # no raw.tmp left
    assert [p.name for p in out.iterdir()] == ["part-00000.parquet"]
    assert (out / "part-00000.parquet").read_bytes() == before


def test_a_scheduler_that_does_not_answer_is_a_clear_error_within_seconds():
    from bigdeep.servers import free_port

    address = f"tcp://127.0.0.1:{free_port()}"
    start = time.monotonic()
    with pytest.raises(ComputeError, match=r"compute.cluster .*no Dask scheduler answered"):
        with open_executor(ComputeSettings(cluster=address, connect_timeout=2)):
            pass
    assert time.monotonic() - start < 10


def test_a_local_cluster_is_started_and_closed_by_the_stage(monkeypatch):
    # what a cluster started earlier in this process leaves in its environment (Dask's nanny)
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "65536")
    with open_executor(ComputeSettings(cluster="local:2")) as executor:
        assert executor is not None and executor.workers == 2
        squares = list(executor.map_ordered(pow, range(20), 2))
        # os.getenv runs on the worker (os.environ.get would pickle this process's environ)
        environ = list(executor.map_ordered(os.getenv, ["MALLOC_TRIM_THRESHOLD_"] * 2))
        client = executor.client
    assert squares == [i * i for i in range(20)]
    assert client.status == "closed"
    assert environ == [None, None]  # glibc's own trim threshold: Dask's doubles PNG encoding
    assert os.environ["MALLOC_TRIM_THRESHOLD_"] == "65536"  # this process's is left as it was


# --- series ----------------------------------------------------------------------------------

NOW = pd.Timestamp("2026-01-01", tz="UTC")  # the report's age of the newest row: fixed


def run_series(
    settings: Settings, root: Path, chunk_rows: int | None = None, executor=None
) -> dict[str, bytes]:
    """ingest, validate and prepare the series into `root`; every output file's bytes.
    chunk_rows None: the gate as `bigdeep validate` runs it; else the gate in chunks of
    `chunk_rows` rows (shards joined and split), on `executor` when one is given."""
    raw, quarantine = root / "raw", root / "quarantine"
    ingest_series(settings, raw)
    with open_executor(settings.compute) as opened:
        executor = executor or opened
        if chunk_rows is None:
            validate(
                "series", settings, raw, root / "reports/series.json", quarantine,
                root / "reference", now=NOW,
            )  # fmt: skip
        else:
            names = settings.data.series.model_copy(update={"timestamp": "timestamp"})
            result = gate_series(
                "series", raw, settings.quality.series, names, now=NOW,
                chunk_rows=chunk_rows, executor=executor,
            )  # fmt: skip
            write_report(result, root / "reports")
            write_quarantine(result, raw, quarantine)
        prepare_series(
            raw, quarantine, root / "processed", settings.data.series, settings.prepare.series,
            executor,
        )  # fmt: skip
    return outputs(root, ["raw", "quarantine", "processed", "reports/series.json", "reference"])


def test_builtin_series_gives_the_same_bytes_on_the_cluster(cluster, tmp_path):
    local, remote = on(cluster[0], data={"series": {"shard_rows": 5_000}})  # 17,520 rows
    here = run_series(local, tmp_path / "here")
    there = run_series(remote, tmp_path / "there")
    assert sum(name.startswith("raw/part-") for name in here) == 4
    assert {"processed/series.parquet", "processed/meta.json", "reports/series.json"} <= set(here)
    assert any(name.startswith("reference/") for name in here)  # it passed: a new reference
    assert_same(here, there)
    # in chunks that split and join the shards (7 chunks, 3,000 rows or fewer)
    here = run_series(local, tmp_path / "here-chunks", chunk_rows=3_000)
    there = run_series(remote, tmp_path / "there-chunks", chunk_rows=3_000)
    assert_same(here, there)


ROWS = 96  # half-hourly, two days


def bad_csv(path: Path) -> Path:
    """A series with text and a NaN in Demand, a duplicated timestamp, a gap and an e-mail
    address in a text column (rows are 0-based here)."""
    frame = pd.DataFrame(
        {
            "Time": pd.date_range("2024-01-01", periods=ROWS, freq="30min").strftime(
                "%Y-%m-%dT%H:%M:%SZ"
            ),
            "Demand": [f"{4000 + 10 * i}.5" for i in range(ROWS)],
            "Temperature": [round(10 + i / 10, 2) for i in range(ROWS)],
            "note": ["ok"] * ROWS,
        }
    )
    frame.loc[10, "Demand"] = "high"
    frame.loc[20, "Demand"] = ""  # NaN
    frame.loc[40, "note"] = "write to jane.doe@example.org"
    frame.loc[50, "Time"] = frame.loc[49, "Time"]
    frame = frame.drop(index=70)  # a 1 h step
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False)
    return path


def test_series_with_bad_rows_gives_the_same_quarantine_on_the_cluster(cluster, tmp_path):
    csv = bad_csv(tmp_path / "src/series.csv")
    local, remote = on(
        cluster[0],
        data={"series": {"source": f"csv:{csv}", "last_days": None, "shard_rows": 10}},
        quality={"series": {"max_gap": "30min", "max_quarantine_fraction": 0.1}},
    )
    here = run_series(local, tmp_path / "here", chunk_rows=7)  # 14 chunks of 10 shards
    there = run_series(remote, tmp_path / "there", chunk_rows=7)
    assert_same(here, there)
    report = json.loads(here["reports/series.json"])
    failed = {e["check"]: e["examples"] for e in report["expectations"] if not e["success"]}
    # rows are numbered from 1 at ingest: the CSV's row k (0-based) is row k + 1
    assert failed == {
        "Demand_present": [21],
        "Demand_finite": [11],
        "timestamp_unique": [50, 51],
        "timestamp_increasing": [51],
        "gap": [52, 71],  # the duplicate left a 1 h hole too
        "privacy_email": ["note"],
        "type_Demand": [],  # text in the chunks holding row 11
    }
    assert report["privacy"]["found"]["email"]["note"]["first_rows"] == [41]
    privacy = pd.read_parquet(tmp_path / "there/quarantine/privacy.parquet")
    assert privacy["observed"].tolist() == ["write to j***@e***.org"]
    reasons = pd.read_parquet(tmp_path / "there/quarantine/reasons.parquet")
    assert sorted(set(reasons["record"].astype(int))) == [11, 21, 50, 51]


class KillingExecutor:
    """A Dask executor that SIGKILLs one worker once each map has given its first result."""

    def __init__(self, executor: DaskExecutor) -> None:
        self.executor = executor
        self.killed: list[int] = []

    @property
    def workers(self) -> int:
        return self.executor.workers

    def map_ordered(self, fn, items, *args):
        self.wait_for_two()  # every worker gets the arguments: one can die
        results = self.executor.map_ordered(fn, items, *args)
        yield next(results)
        self.killed.append(kill_one_worker(self.executor.client))
        yield from results

    def wait_for_two(self, timeout: float = 60) -> None:
        """Until 2 workers answer, neither of them one killed here (the scheduler may not
        have seen the last one go yet)."""
        deadline = time.monotonic() + timeout
        while True:
            pids = self.executor.client.run(os.getpid, on_error="ignore").values()
            if len(set(pids) - set(self.killed)) >= 2:
                return
            assert time.monotonic() < deadline, "the nanny did not restart the killed worker"
            time.sleep(0.2)


def test_a_worker_killed_during_the_series_gate_changes_nothing(cluster, tmp_path):
    local, remote = on(cluster[0], data={"series": {"shard_rows": 2_000}})
    here = run_series(local, tmp_path / "here", chunk_rows=1_500)  # 12 chunks
    with open_executor(remote.compute) as executor:
        killing = KillingExecutor(executor)
        there = run_series(remote, tmp_path / "there", chunk_rows=1_500, executor=killing)
        assert len(killing.killed) == 4  # in both passes of the gate and of prepare
        killing.wait_for_two()  # the nanny started new workers
    assert_same(here, there)
