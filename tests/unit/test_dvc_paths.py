"""Default paths come from dvc.yaml: move a path there and every command follows."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from bigdeep.config import ConfigError, dvc_stage, stage_files, stage_option
from bigdeep.tracking import data_version
from bigdeep.validate import default_references

ROOT = Path(__file__).resolve().parents[2]


def _moved(tmp_path: Path) -> Path:
    """This checkout's dvc.yaml with the raw, reference and plot folders moved."""
    text = (ROOT / "dvc.yaml").read_text()
    text = text.replace("data/raw/", "elsewhere/raw/").replace("data/reference/", "refs/")
    text = text.replace("--plots reports/train/cnn", "--plots figures/cnn")
    (tmp_path / "dvc.yaml").write_text(text)
    return tmp_path


def test_the_checkouts_paths():
    assert stage_option("train_cnn", "--plots", project=ROOT) == "reports/train/cnn"
    assert stage_option("train_rnn", "--checkpoints", project=ROOT) == "checkpoints/rnn"
    assert stage_option("validate", "--reference", "series", ROOT) == "data/reference/series"
    assert stage_files(ROOT, "images").raw == "data/raw/images"
    assert dvc_stage("prepare", "images", ROOT)["outs"] == ["data/processed/images"]


def test_moved_in_dvc_yaml_moved_everywhere(tmp_path, monkeypatch):
    project = _moved(tmp_path)
    assert stage_option("train_cnn", "--plots", project=project) == "figures/cnn"
    assert stage_files(project, "series").raw == "elsewhere/raw/series"
    lock = {"stages": {"ingest@series": {"outs": [{"path": "elsewhere/raw/series", "md5": "r"}]}}}
    (project / "dvc.lock").write_text(yaml.safe_dump(lock))
    (project / "processed").mkdir()
    version = data_version(project / "dvc.lock", project / "processed", "series")
    assert (version.raw_path, version.raw_md5) == ("elsewhere/raw/series", "r")
    monkeypatch.chdir(project)  # the stage commands run from the project root
    assert default_references("images") == Path("refs/images")


def test_outside_a_project_the_checkouts_dvc_yaml(tmp_path):
    """A stage run by hand in a folder without dvc.yaml: the paths this code ships with."""
    assert stage_option("train_cnn", "--plots", project=tmp_path) == "reports/train/cnn"
    version = data_version(tmp_path / "dvc.lock", tmp_path, "images")
    assert version.raw_path == "data/raw/images" and version.raw_md5.startswith("unversioned:")


def test_a_stage_without_the_path_says_what_to_pass(tmp_path):
    spec = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    spec["stages"]["train_cnn"]["cmd"] = "bigdeep train cnn --data d --out o --metrics m"
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump(spec))
    with pytest.raises(ConfigError, match="train_cnn' has no --plots in its cmd; pass --plots"):
        stage_option("train_cnn", "--plots", project=tmp_path)
    with pytest.raises(ConfigError, match="no stage 'train_gpt'"):
        dvc_stage("train_gpt", project=tmp_path)
