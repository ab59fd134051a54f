"""`bigdeep.git.dirty`: source changes only, on a real git repository."""

from __future__ import annotations

from pathlib import Path

from bigdeep.tracking import git_state
from tests.e2e.helpers import run


def _repo(path: Path) -> Path:
    for name, text in {
        "src/bigdeep/x.py": "X = 1\n",
        "params.yaml": "seed: 1\n",
        "dvc.yaml": "stages: {}\n",
        "dvc.lock": "schema: '2.0'\n",
        "metrics/cnn.json": "{}\n",
        "reports/quality/images.json": "{}\n",
    }.items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_text(text)
    run(["git", "init", "-q", "-b", "main"], path)
    run(["git", "-c", "user.email=t@bigdeep.invalid", "-c", "user.name=t", "add", "-A"], path)
    run(
        ["git", "-c", "user.email=t@bigdeep.invalid", "-c", "user.name=t", "commit", "-qm", "c"],
        path,
    )
    return path


def test_pipeline_outputs_do_not_make_a_run_dirty_source_changes_do(tmp_path):
    repo = _repo(tmp_path)
    head = run(["git", "rev-parse", "HEAD"], repo, stderr=False).strip()
    assert git_state(repo) == {"bigdeep.git.commit": head, "bigdeep.git.dirty": "false"}

    # what every run rewrites: the lock, metrics, reports, new generated folders
    (repo / "dvc.lock").write_text("schema: '2.0'\nstages: {}\n")
    (repo / "metrics/cnn.json").write_text('{"test_acc": 0.9}\n')
    (repo / "reports/quality/images.json").write_text('{"passed": true}\n')
    (repo / "dvc_plots").mkdir()
    (repo / "dvc_plots/index.html").write_text("<html></html>")
    assert git_state(repo)["bigdeep.git.dirty"] == "false"

    (repo / "src/bigdeep/x.py").write_text("X = 2\n")  # an edited module
    assert git_state(repo)["bigdeep.git.dirty"] == "true"
    run(["git", "checkout", "--", "src"], repo)
    (repo / "src/bigdeep/new.py").write_text("Y = 1\n")  # a new, uncommitted module
    assert git_state(repo)["bigdeep.git.dirty"] == "true"
    (repo / "src/bigdeep/new.py").unlink()
    (repo / "params.yaml").write_text("seed: 2\n")
    assert git_state(repo)["bigdeep.git.dirty"] == "true"


def test_no_git_repository_records_no_commit(tmp_path):
    assert git_state(tmp_path) == {"bigdeep.git.commit": "none"}
