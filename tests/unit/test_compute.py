"""compute.cluster: what each value means, and the in-process default that starts nothing."""

from __future__ import annotations

import sys

import pytest

from bigdeep.compute import InProcess, open_executor
from bigdeep.config import ComputeSettings, ConfigError, Settings, load_settings


@pytest.mark.parametrize(
    ("cluster", "local"),
    [(None, None), (2, 2), ("local:3", 3), ("tcp://10.0.0.5:8786", None)],
)
def test_cluster_values(cluster, local):
    assert ComputeSettings(cluster=cluster).local_workers == local


@pytest.mark.parametrize("cluster", [0, "local:0", "four", "10.0.0.5:8786"])
def test_a_wrong_cluster_is_refused_by_name(tmp_path, cluster):
    path = tmp_path / "params.yaml"
    path.write_text(
        f"compute:\n  cluster: {cluster!r}\n"
        if isinstance(cluster, str)
        else f"compute:\n  cluster: {cluster}\n"
    )
    with pytest.raises(ConfigError, match=r"compute\.cluster"):
        load_settings(path)


def test_in_process_is_the_default_and_imports_no_dask():
    sys.modules.pop("distributed", None)
    with open_executor(Settings().compute) as executor:
        assert executor is None
    assert "distributed" not in sys.modules
    assert list(InProcess().map_ordered(divmod, [7, 9, 11], 4)) == [(1, 3), (2, 1), (2, 3)]


def test_workers_drop_only_their_logs_of_a_task_error_the_stage_reports():
    import logging

    from bigdeep.compute import _not_a_task_error

    def record(message: str) -> logging.LogRecord:
        return logging.LogRecord("distributed.worker", logging.WARNING, "", 0, message, None, None)

    assert not _not_a_task_error(record("Compute Failed\nKey: _write_shard-1\n..."))
    cancelled = "Async instruction for <Task cancelled name=\"execute('_write_shard-2')\"> ended"
    assert not _not_a_task_error(record(cancelled + " with CancelledError"))
    assert _not_a_task_error(record("Worker is at 85% memory usage. Pausing worker."))
    assert _not_a_task_error(record(cancelled + " with OSError"))
