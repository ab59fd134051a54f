"""params.yaml -> strict settings: the real file loads, and wrong keys are named."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from bigdeep.config import ConfigError, load_settings

ROOT = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_project_params_load_and_match_the_file():
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    s = load_settings(ROOT / "params.yaml")
    assert s.train.cnn.conv == raw["train"]["cnn"]["conv"]
    assert s.data.series.features == raw["data"]["series"]["features"]
    assert s.quality.images.classes == raw["quality"]["images"]["classes"]


def test_unknown_key_is_named(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_settings(write(tmp_path, {"train": {"cnn": {"epochz": 3}}}))
    assert "train.cnn.epochz: unknown key" in str(e.value)
    assert str(tmp_path / "params.yaml") in str(e.value)


def test_mistyped_value_is_named(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_settings(write(tmp_path, {"train": {"rnn": {"cell": "transformer", "epochs": "ten"}}}))
    message = str(e.value)
    assert "train.rnn.cell" in message and "transformer" in message
    assert "train.rnn.epochs" in message


def test_bad_source_scheme_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"data.images.source.*'s3:bucket'"):
        load_settings(write(tmp_path, {"data": {"images": {"source": "s3:bucket"}}}))


def test_broken_yaml_and_missing_file(tmp_path):
    (tmp_path / "params.yaml").write_text("seed: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_settings(tmp_path / "params.yaml")
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "nope.yaml")


def test_overrides_keep_comments_validate_and_report_change(tmp_path):
    from bigdeep.config import apply_overrides

    path = tmp_path / "params.yaml"
    path.write_text((ROOT / "params.yaml").read_text())
    assert (
        apply_overrides(path, {"train.cnn.epochs": "3", "data.series.features": "[Temperature]"})
        is True
    )
    assert load_settings(path).train.cnn.epochs == 3
    assert "# cap per class at ingest" in path.read_text()  # comments survive
    assert apply_overrides(path, {"train.cnn.epochs": "3"}) is False  # no change, no write
    before = path.read_text()
    with pytest.raises(ConfigError, match="train.cnn.epochz: unknown key"):
        apply_overrides(path, {"train.cnn.epochz": "3"})
    with pytest.raises(ConfigError, match="unknown key 'trian'"):
        apply_overrides(path, {"trian.cnn.epochs": "3"})
    assert path.read_text() == before
