"""The unit tier stays in-process: a unit test that starts a program (the CLI, DVC, git, a
server) fails, saying where such a test belongs. Spawned worker processes of the code under
test (`multiprocessing`) are not programs and are left alone."""

from __future__ import annotations

import platform
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

# The standard library runs `uname -p` once, the first time the processor is asked for
# (MLflow's import asks): asked here, before any test, the answer is cached and no test is
# blamed for it.
platform.processor()


@contextmanager
def _no_subprocess(nodeid: str) -> Iterator[None]:
    def refuse(self, args, *more, **kwargs):
        raise AssertionError(
            f"{nodeid} started a subprocess ({args!r}): tests/unit runs in-process only; "
            "a test that needs a real CLI, DVC or git process belongs in tests/integration"
        )

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(subprocess.Popen, "__init__", refuse)
        yield


# setup too: a fixture of any scope set up for a unit test is under the same rule
@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item):
    with _no_subprocess(item.nodeid):
        return (yield)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item):
    with _no_subprocess(item.nodeid):
        return (yield)
