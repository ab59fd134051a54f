"""Dataset identity: what a dataset is, whatever slot it enters by (pure functions, strict config)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bigdeep.config import ConfigError, dataset_identity, default_identity, load_settings
from bigdeep.errors import UsageError
from bigdeep.registry import registered_name
from bigdeep.validate import reference_path


def test_builtin_sources_keep_their_plain_names():
    assert dataset_identity("builtin:mnist") == default_identity("images") == "mnist"
    assert dataset_identity("builtin:vic_elec") == default_identity("series") == "vic_elec"
    # so the embedded defaults keep bigdeep-cnn / bigdeep-rnn, any other identity gets its own
    assert registered_name("bigdeep", "cnn", "mnist", "mnist") == "bigdeep-cnn"
    assert registered_name("bigdeep", "rnn", "vic_elec", "vic_elec") == "bigdeep-rnn"
    assert registered_name("bigdeep", "cnn", "digits", "mnist") == "bigdeep-cnn-digits"


def test_other_sources_get_a_slug_of_their_last_part_and_a_hash_of_the_whole():
    mine = dataset_identity("folder:data/My Digits/")
    assert mine.startswith("folder-my-digits-") and len(mine) == len("folder-my-digits-") + 6
    assert dataset_identity("folder:./data/My Digits") == mine  # the same folder, written twice
    # two folders with the same last part are two datasets
    assert dataset_identity("folder:other/My Digits") != mine
    assert dataset_identity("csv:/srv/demand.csv").startswith("csv-demand-csv-")
    assert dataset_identity("csv:/srv/demand.csv", name="demand") == "demand"  # a name wins


def test_a_bad_name_is_a_config_error_naming_the_key(tmp_path: Path):
    params = tmp_path / "params.yaml"
    params.write_text("data:\n  images:\n    name: My Digits\n")
    with pytest.raises(ConfigError, match=r"data\.images\.name: .*not a dataset name"):
        load_settings(params)
    params.write_text("data:\n  series:\n    name: demand_2024\n")
    assert load_settings(params).data.series.identity == "demand_2024"


def test_the_reference_is_one_file_per_identity_in_the_slots_folder(tmp_path: Path):
    folder = tmp_path / "reference" / "images"
    assert reference_path(folder, "mnist") == folder / "mnist.json"
    with pytest.raises(UsageError, match="expected the folder of reference profiles"):
        reference_path(tmp_path / "reference" / "images.json", "mnist")  # the old layout
