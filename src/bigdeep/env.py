"""The quiet, offline process environment: no usage reporting, no display needed.

Used by the CLI, by the servers it starts and by the tests (the Makefile keeps its own copy,
for the tools it runs before bigdeep). Imports nothing: the small commands stay fast.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

# MLflow reads "true", not "1"; DVC any non-empty value.
QUIET_ENV = {
    "DO_NOT_TRACK": "true",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DVC_NO_ANALYTICS": "1",
    "GX_ANALYTICS_ENABLED": "false",
    "MPLBACKEND": "Agg",
}

# An object store (S3, MinIO) that is down is noticed in seconds, not after botocore's and
# s3fs's retries have slept for half a minute: DVC (dvc-s3) and MLflow (boto3) both read these.
# Always a default: a value the user set wins, even in tests and servers.
FAIL_FAST_ENV = {
    "AWS_MAX_ATTEMPTS": "3",
    "AWS_RETRY_MODE": "standard",
}


def apply_quiet_env(
    env: MutableMapping[str, str] | None = None, override: bool = False
) -> MutableMapping[str, str]:
    """Set QUIET_ENV in `env` (default: this process's environment) and return it.

    override=False keeps a value the user set; True (tests, servers) forces ours.
    """
    env = os.environ if env is None else env
    for key, value in QUIET_ENV.items():
        if override:
            env[key] = value
        else:
            env.setdefault(key, value)
    for key, value in FAIL_FAST_ENV.items():
        env.setdefault(key, value)
    return env
