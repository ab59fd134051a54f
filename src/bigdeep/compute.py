"""Where the data stages run their shards: in this process, or on a Dask cluster.

    with open_executor(settings.compute) as ex:     # None when compute.cluster is null
        for result in (ex or InProcess()).map_ordered(fn, parts, arg):   # in `parts` order
            ...

`compute.cluster` null runs every shard in this process (the default, and today's behaviour);
an int N or "local:N" starts a `dask.distributed` LocalCluster of N worker processes (one
thread each) for the stage and closes it after; "tcp://host:8786" connects to a running
scheduler (`dask scheduler`, `dask worker tcp://host:8786`). A stage merges results in shard
order whatever the executor, so its outputs are byte-identical.

Dask is imported only when a cluster is configured: the CLI's start-up does not pay for it.
A task on a worker that dies is rescheduled by Dask on another one (`compute.retries` more
times on errors); a cluster that is gone, or a scheduler that does not answer within
`compute.connect_timeout` seconds, is a `ComputeError` naming `compute.cluster`. A task's
own error (e.g. an unreadable file) is raised here as itself, and the command reports it once:
the workers of a LocalCluster, which share this terminal, do not log it again.
"""

from __future__ import annotations

import logging
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, Protocol, TypeVar

from bigdeep.config import ComputeSettings
from bigdeep.errors import BigdeepError

T = TypeVar("T")
R = TypeVar("R")

# Results a Dask executor lets pile up per worker before it waits for the oldest one: enough
# to keep every worker busy while the stage merges, few enough that memory stays bounded.
IN_FLIGHT_PER_WORKER = 4

# Times a map sends its arguments again after a dead worker took their last copy along.
ARGUMENT_RESENDS = 3


class ComputeError(BigdeepError):
    """The Dask cluster named by compute.cluster cannot be reached or was lost mid-stage."""


class Executor(Protocol):
    """What a stage needs from where it runs: a worker count and an ordered map."""

    @property
    def workers(self) -> int: ...

    def map_ordered(
        self, fn: Callable[..., R], items: Iterable[Any], *args: Any
    ) -> Iterator[R]: ...


class InProcess:
    """Runs every item here, one after the other (compute.cluster: null)."""

    workers = 1

    def map_ordered(self, fn: Callable[..., R], items: Iterable[Any], *args: Any) -> Iterator[R]:
        for item in items:
            yield fn(item, *args)


class DaskExecutor:
    """Runs items as tasks on a `distributed.Client`, yielding results in input order."""

    def __init__(self, client: Any, cluster: str, retries: int) -> None:
        self.client, self.cluster, self.retries = client, cluster, retries

    @property
    def workers(self) -> int:
        return max(1, len(self.client.scheduler_info(n_workers=-1)["workers"]))

    def map_ordered(self, fn: Callable[..., R], items: Iterable[Any], *args: Any) -> Iterator[R]:
        """fn(item, *args) for each item, in order, at most IN_FLIGHT_PER_WORKER x workers
        in flight (so results cannot pile up faster than the stage merges them).

        The arguments are sent to every worker once. A worker that dies holding the last
        copy of them takes its tasks' inputs along, and Dask cancels those tasks ("already
        forgotten"): the arguments are then sent again and the tasks resubmitted, up to
        ARGUMENT_RESENDS times a map."""
        window = IN_FLIGHT_PER_WORKER * self.workers
        flight: deque[list[Any]] = deque()  # [item, its future], in input order
        sent = self._scatter(args)
        resends = 0

        def first() -> R:
            nonlocal sent, resends
            from concurrent.futures import CancelledError

            while True:
                try:
                    result = self._result(flight[0][1])
                except CancelledError as e:
                    if resends == ARGUMENT_RESENDS:
                        raise self._lost(e) from None
                    resends += 1
                    sent = self._scatter(args)
                    for entry in flight:
                        if entry[1].cancelled():
                            entry[1] = self._submit(fn, entry[0], sent)
                    continue
                flight.popleft()
                return result

        try:
            for item in items:
                flight.append([item, self._submit(fn, item, sent)])
                if len(flight) >= window:
                    yield first()
            while flight:
                yield first()
        finally:
            for _, future in flight:  # a stage that stopped early (an error) leaves nothing
                future.cancel()

    def _scatter(self, args: tuple[Any, ...]) -> list[Any]:
        """Each argument on every worker ([a]: one object, even a list or a set)."""
        try:
            return [self.client.scatter([a], broadcast=True, hash=False)[0] for a in args]
        except Exception as e:
            raise self._lost(e) from None

    def _submit(self, fn: Callable[..., R], item: Any, args: list[Any]) -> Any:
        try:
            return self.client.submit(fn, item, *args, pure=False, retries=self.retries)
        except Exception as e:
            raise self._lost(e) from None

    def _result(self, future: Any) -> Any:
        """The task's result; its own error raised as itself, a cancelled task's
        CancelledError as is (map_ordered resends), a lost cluster as a ComputeError."""
        from distributed.comm.core import CommClosedError
        from distributed.scheduler import KilledWorker

        try:
            return future.result()
        except (KilledWorker, CommClosedError, TimeoutError) as e:
            raise self._lost(e) from None

    def _lost(self, e: BaseException) -> ComputeError:
        return ComputeError(
            f"compute.cluster {self.cluster!r}: the Dask cluster failed mid-stage "
            f"({type(e).__name__}: {e}); nothing was written. Check that the scheduler and "
            "its workers are running (`dask scheduler`, `dask worker <address>`) and have "
            "the memory a shard needs, or set compute.cluster: null to run in this process, "
            "then run the stage again."
        )


@contextmanager
def open_executor(cfg: ComputeSettings) -> Iterator[DaskExecutor | None]:
    """The Dask executor compute.cluster names, opened for one stage and closed after it;
    None when it is null (the stage runs its shards in this process, as it always did)."""
    if cfg.cluster is None:
        yield None
        return
    import dask
    from distributed import Client, LocalCluster

    # Dask logs every worker start and stop at INFO: the stage's own lines are enough.
    for name in ("distributed", "distributed.worker", "distributed.scheduler"):
        logging.getLogger(name).setLevel(logging.WARNING)
    n = cfg.local_workers
    if n is not None:
        import dask

        # Dask's nanny starts workers with MALLOC_TRIM_THRESHOLD_=65536, so glibc hands freed
        # memory back to the OS at once and faults it in afresh: PNG encoding then costs ~2x
        # its CPU, decoding ~15 % more, a series chunk (pandas and GX allocate arrays of its
        # length all along) ~2x (tests/benchmarks/README.md, "Dask"). A stage's cluster lives
        # for one stage, so its workers keep glibc's own threshold: memory stays at its peak.
        # The nanny also leaves its variables in this process's environment, which workers
        # inherit: a cluster started here earlier would hand its value on.
        environ = dask.config.get("distributed.nanny.pre-spawn-environ")
        environ = {k: v for k, v in environ.items() if k != "MALLOC_TRIM_THRESHOLD_"}
        inherited = os.environ.pop("MALLOC_TRIM_THRESHOLD_", None)
        try:
            with dask.config.set({"distributed.nanny.pre-spawn-environ": environ}):
                local = LocalCluster(
                    n_workers=n,
                    threads_per_worker=1,  # decoding holds the GIL: one process per core
                    processes=True,
                    host="127.0.0.1",
                    dashboard_address="127.0.0.1:0",
                )
        finally:
            if inherited is not None:
                os.environ["MALLOC_TRIM_THRESHOLD_"] = inherited
        client = Client(local)
        try:
            client.register_plugin(_quiet_task_errors(), name="bigdeep-quiet-task-errors")
            yield DaskExecutor(client, str(cfg.cluster), cfg.retries)
        finally:
            client.close()
            local.close()
        return
    address = str(cfg.cluster)
    try:
        client = Client(address, timeout=cfg.connect_timeout)
    except (OSError, TimeoutError) as e:
        raise ComputeError(
            f"compute.cluster {address!r}: no Dask scheduler answered within "
            f"{cfg.connect_timeout:g} s ({type(e).__name__}). Start one there (`dask scheduler`, "
            "then `dask worker " + address + "` on each machine), fix the address, or set "
            "compute.cluster: null to run in this process."
        ) from None
    try:
        yield DaskExecutor(client, address, cfg.retries)
    finally:
        client.close()


def _quiet_task_errors() -> Any:
    """A worker plugin that drops the worker's own logs of a task's error: its "Compute
    Failed" (with the traceback), and the warning for each task still running that the stage
    then cancels ("Async instruction ... ended with CancelledError").

    map_ordered re-raises that error here and the command reports it once, without a
    traceback; the workers of a LocalCluster write to this terminal, where their copies would
    print it again. (A remote cluster's workers keep theirs.)
    """
    from distributed import WorkerPlugin

    class QuietTaskErrors(WorkerPlugin):
        idempotent = True

        def setup(self, worker: Any) -> None:
            for name in ("distributed.worker", "distributed.worker.state_machine"):
                logging.getLogger(name).addFilter(_not_a_task_error)

    return QuietTaskErrors()


def _not_a_task_error(record: logging.LogRecord) -> bool:
    message = str(record.msg)
    return not (
        message.startswith("Compute Failed")
        or (message.startswith("Async instruction") and "CancelledError" in message)
    )
