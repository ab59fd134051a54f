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
    changes = apply_overrides(
        path, {"train.cnn.epochs": "3", "data.series.features": "[Temperature, Holiday]"}
    )
    assert [(c.key, c.old, c.new) for c in changes] == [
        ("train.cnn.epochs", "10", "3"),
        ("data.series.features", "[Temperature]", "[Temperature, Holiday]"),
    ]
    assert load_settings(path).train.cnn.epochs == 3
    assert load_settings(path).data.series.features == ["Temperature", "Holiday"]
    assert "# cap per class at ingest" in path.read_text()  # comments survive
    assert apply_overrides(path, {"train.cnn.epochs": "3"}) == []  # no change, no write
    before = path.read_text()
    with pytest.raises(ConfigError, match="train.cnn.epochz: unknown key"):
        apply_overrides(path, {"train.cnn.epochz": "3"})
    with pytest.raises(ConfigError, match="trian: unknown key"):
        apply_overrides(path, {"trian.cnn.epochs": "3"})
    with pytest.raises(ConfigError, match=r"train.cnn.epochs: Input should be greater .*got 0"):
        apply_overrides(path, {"train.cnn.epochs": "0"})
    with pytest.raises(ConfigError, match="not a YAML value"):
        apply_overrides(path, {"train.cnn.epochs": "[1"})
    assert path.read_text() == before


def test_overrides_leave_every_other_byte_as_it_was(tmp_path):
    """--set rewrites the value on its key's line and nothing else: null stays null, flow
    lists stay flow lists, comments keep their column, CRLF and a missing final newline stay."""
    from bigdeep.config import apply_overrides

    original = (ROOT / "params.yaml").read_bytes()
    path = tmp_path / "params.yaml"
    path.write_bytes(original)
    changes = apply_overrides(
        path,
        {
            "data.images.per_class": "null",
            "quality.series.max_age": "2d",
            "train.rnn.calendar": "[hour]",
            "train.cnn.lr": "0.001",
        },
    )
    new_lines = path.read_bytes().splitlines(keepends=True)
    old_lines = original.splitlines(keepends=True)
    assert len(new_lines) == len(old_lines)
    changed = {i + 1 for i, (a, b) in enumerate(zip(old_lines, new_lines, strict=True)) if a != b}
    assert changed == {c.line for c in changes} and len(changed) == 4
    by_key = {c.key: c for c in changes}
    line = new_lines[by_key["data.images.per_class"].line - 1].decode()
    old = old_lines[by_key["data.images.per_class"].line - 1].decode()
    assert line.startswith("    per_class: null ") and line.index("#") == old.index("#")
    assert (
        new_lines[by_key["train.rnn.calendar"].line - 1].decode().startswith("    calendar: [hour]")
    )
    assert b"freq: null" in path.read_bytes()  # untouched nulls are not rewritten
    s = load_settings(path)
    assert (s.data.images.per_class, s.quality.series.max_age, s.train.cnn.lr) == (
        None,
        "2d",
        0.001,
    )

    # Windows line endings and no final newline: kept; a key the file lacks is added in its block
    crlf = tmp_path / "crlf.yaml"
    crlf.write_bytes(
        b"seed: 1\r\ntrain:\r\n  cnn:\r\n    epochs: 4   # few\r\nmlflow:\r\n  experiment: x"
    )
    apply_overrides(crlf, {"train.cnn.epochs": "5", "train.cnn.dense": "32"})
    assert crlf.read_bytes() == (
        b"seed: 1\r\ntrain:\r\n  cnn:\r\n    epochs: 5   # few\r\n    dense: 32\r\n"
        b"mlflow:\r\n  experiment: x"
    )
    assert load_settings(crlf).train.cnn.dense == 32
