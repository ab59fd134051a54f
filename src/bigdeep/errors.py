"""The errors bigdeep raises itself, and what the command line makes of them.

Every project error derives from `BigdeepError`: it carries the exit status the CLI returns
(1 failed, 2 bad configuration or usage, 3 a quality gate failed) and a message that already
names what, where and the fix. `bigdeep` prints that message as one paragraph, without a
Python traceback (the trace goes to the run's log file, or to the console with --debug).

This module imports nothing heavy: `bigdeep.cli.main` catches these errors for every command,
including the small ones that must start in a fraction of a second.
"""

from __future__ import annotations

EXIT_FAILED, EXIT_CONFIG, EXIT_GATE = 1, 2, 3


class BigdeepError(Exception):
    """An error the project detected: its message is for people, its exit_code for scripts."""

    exit_code: int = EXIT_FAILED

    def __init__(self, *args: object, exit_code: int | None = None) -> None:
        super().__init__(*args)
        if exit_code is not None:
            self.exit_code = exit_code


class UsageError(BigdeepError):
    """A wrong command line (e.g. a malformed --set): exit 2."""

    exit_code = EXIT_CONFIG


class RunBusy(BigdeepError):
    """Another `bigdeep run` holds this project (with --no-wait): exit 1."""


class GateFailed(BigdeepError):
    """A dataset failed its quality gate: nothing was trained or registered on it (exit 3)."""

    exit_code = EXIT_GATE


class StageFailed(BigdeepError):
    """A pipeline stage failed for a reason other than the gate; `transient` ones are retried.

    stage: the DVC stage (e.g. ingest@series); dataset: the dataset it belongs to, if any.
    """

    def __init__(
        self,
        message: str,
        *,
        stage: str = "",
        dataset: str | None = None,
        exit_code: int | None = None,
        transient: bool = False,
    ) -> None:
        super().__init__(message, exit_code=exit_code)
        self.stage, self.dataset, self.transient = stage, dataset, transient
        self.notes = ""  # what the flow did about it (e.g. a stale report removed)


# Lightning's configuration errors come from training (bad trainer settings): exit 2, but
# recognised by name so that catching them does not import Lightning.
_CONFIG_ERROR_NAMES = {"MisconfigurationException"}


def exit_code(error: BaseException) -> int | None:
    """The exit status for an error the project knows, None for anything else (a bug)."""
    if isinstance(error, BigdeepError):
        return error.exit_code
    if any(cls.__name__ in _CONFIG_ERROR_NAMES for cls in type(error).__mro__):
        return EXIT_CONFIG
    if isinstance(error, FileNotFoundError | PermissionError | IsADirectoryError):
        return EXIT_FAILED
    return None


def printable(text: object) -> str:
    """`text` with control characters escaped (\\n, \\t, \\x1b...), for names from the data.

    A file called "a\\nb.png" must not break a console line or forge one; printable
    characters, non-ASCII letters included, are kept as they are.
    """
    s = str(text)
    if s.isprintable():
        return s
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in s)


class RunFailed(BigdeepError):
    """The pipeline ended with failures: one paragraph each; exit 3 when only gates failed."""


def describe(error: BaseException) -> str:
    """The error's message for a console: each line with control characters escaped."""
    text = "\n".join(printable(line) for line in str(error).splitlines())
    return text or type(error).__name__
