"""The DVC remote: where a run pushes accepted data and `bigdeep restore` reads it back.

The project's default remote is a folder beside it (`.dvc/config`, `../.dvc-remote`); a team
points it at an S3-compatible object store (S3, MinIO) with DVC's own commands:

    dvc remote add -d team s3://bucket/prefix     # committed: names no credential

Credentials and the endpoint come from the environment only (`AWS_ACCESS_KEY_ID`,
`AWS_SECRET_ACCESS_KEY`, `AWS_ENDPOINT_URL` for a store other than AWS), or from
`.dvc/config.local` (`dvc remote modify --local`), which git ignores. `bigdeep.env` keeps
botocore's retries short, so a store that is down fails a push in seconds.
"""

from __future__ import annotations

from pathlib import Path

from bigdeep.errors import StageFailed

# what botocore/s3fs print when the store does not answer, and when it refuses the keys
_UNREACHABLE = (
    "Could not connect to the endpoint URL",
    "Connection refused",
    "timed out",
    "timeout on endpoint URL",  # botocore: "Read timeout on endpoint URL" (a store that hangs)
)
_DENIED = (
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "AccessDenied",
    "Unable to locate credentials",
)


def default_remote(repo) -> tuple[str, str] | None:
    """(name, url) of a DVC repo's default remote, None when it has none."""
    name = repo.config["core"].get("remote")
    if not name or name not in repo.config["remote"]:
        return None
    return name, repo.config["remote"][name]["url"]


def describe(project: Path) -> str:
    """`the DVC remote 'team' (s3://bucket/prefix via http://host:9000)`, for messages."""
    import os

    from dvc.repo import Repo

    with Repo(str(project)) as repo:
        found = default_remote(repo)
        config = repo.config["remote"].get(found[0], {}) if found else {}
    if found is None:
        return "the default DVC remote (none configured)"
    name, url = found
    endpoint = config.get("endpointurl") or os.environ.get("AWS_ENDPOINT_URL")
    via = f" via {endpoint}" if endpoint and "://" in url and not url.startswith("file:") else ""
    return f"the DVC remote '{name}' ({url}{via})"


def push_failed(project: Path, output: str, transient: bool = False) -> StageFailed:
    """A failed `dvc push` as one paragraph: which remote, DVC's own reason, what to do."""
    lines = [line.strip() for line in output.splitlines() if line.startswith("ERROR:")]
    reasons = [line.removeprefix("ERROR:").strip() for line in lines]
    detail = next((r for r in reasons if "failed to transfer" in r), reasons[0] if reasons else "")
    summary = next((r for r in reasons if r.startswith("failed to push")), "")
    why = "; ".join(x for x in (summary, detail.split(" - ", 1)[-1]) if x) or "no output"
    if any(marker in output for marker in _DENIED):
        fix = (
            "the store refused the credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
            "(in the environment, never in a committed file)"
        )
    elif any(marker in output for marker in _UNREACHABLE):
        fix = (
            "the object store is not answering: start it (or check AWS_ENDPOINT_URL and the "
            "network)"
        )
    else:
        fix = "fix what DVC names above"
    return StageFailed(
        f"{describe(project)} did not take the data: {why}. The data is safe in this "
        f"project's DVC cache and objects already sent stay valid; {fix}, then run `dvc push` "
        "here or `bigdeep run` again (unchanged stages are skipped and the push sends what is "
        "missing).",
        stage="dvc push",
        transient=transient,
    )


def fetch(repo, md5: str) -> str | None:
    """Copy data version `md5` (its `.dir` manifest and every file) from each non-local remote
    into the repo's cache, the objects the cache lacks. None when done, else why not."""
    from dvc_data.hashfile.hash_info import HashInfo
    from dvc_data.hashfile.transfer import find_tree_by_obj_id

    for name, config in repo.config["remote"].items():
        url = config["url"]
        if "://" not in url or url.startswith("file:"):
            continue  # a local remote is read in place by `restore_dir`
        try:
            # the .dir manifest (from the cache, else the remote) names the files to fetch
            odb = repo.cloud.get_remote_odb(name, "fetch")
            tree = find_tree_by_obj_id([repo.cache.local, odb], HashInfo("md5", md5))
            if tree is None:
                continue  # not on this remote: `restore_dir` says where it looked
            wanted = {tree.hash_info} | {oid for _, _, oid in tree}
            result = repo.cloud.pull(wanted, remote=name)
        except Exception as e:  # noqa: BLE001 - botocore/s3fs raise many kinds: name it
            return (
                f"reading {md5} from the DVC remote '{name}' ({url}) failed: {e}. Check that "
                "the object store answers and that AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY "
                "(and AWS_ENDPOINT_URL for MinIO or another S3-compatible store) are set, "
                "then run `bigdeep restore` again"
            )
        if result.failed:
            return (
                f"{len(result.failed)} object(s) of {md5} could not be read from the DVC remote "
                f"'{name}' ({url}); run `bigdeep restore` again once it answers, or push the "
                "data from a machine that has it (`dvc push`)"
            )
    return None


def refetch(repo, md5: str) -> str | None:
    """Read object `md5` (a file or a `.dir` manifest) again from an object-store remote into
    the repo's cache, replacing a corrupt copy there (DVC's pull skips an object the cache
    already holds, intact or not). Where it came from, for messages; None when no such remote
    holds it (the corrupt copy is then left as it was)."""
    from dvc_data.hashfile.hash_info import HashInfo

    cache = Path(repo.cache.local.path)
    obj = cache / md5[:2] / md5[2:]
    for name, config in repo.config["remote"].items():
        url = config["url"]
        if "://" not in url or url.startswith("file:"):
            continue  # a local remote is a store `restore_dir` reads in place
        aside = obj.with_name(obj.name + ".corrupt")
        if obj.exists():
            obj.replace(aside)
        try:
            result = repo.cloud.pull({HashInfo("md5", md5)}, remote=name)
        except Exception:  # noqa: BLE001 - unreachable or refused: try the next remote
            result = None
        if result is not None and not result.failed and obj.exists():
            aside.unlink(missing_ok=True)
            return f"the DVC remote '{name}' ({url})"
        if aside.exists():
            aside.replace(obj)
    return None


def _pending_marker(project: Path) -> Path:
    return Path(project) / ".bigdeep" / "push-pending"


def push_pending(project: Path) -> bool:
    """A run's push failed and none succeeded since: the next run pushes even if no stage ran."""
    return _pending_marker(project).exists()


def mark_push(project: Path, pushed: bool) -> None:
    marker = _pending_marker(project)
    if pushed:
        marker.unlink(missing_ok=True)
    else:
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text("the last `dvc push` failed; the next `bigdeep run` pushes again\n")
