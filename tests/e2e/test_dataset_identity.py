"""Dataset identity through real DVC stages: a new source starts its own history and its own
registered model; the builtin data's reference and champion are never touched."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from bigdeep.cli import main
from bigdeep.config import dataset_identity
from bigdeep.registry import lineage
from tests.e2e.helpers import make_project, run
from tests.unit.images import digit, png

# two trainings through DVC: minutes on a loaded 2-core machine
pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(1800)]

TINY_CNN = {  # learns the marked digits below in a few steps; no augmentation to unlearn
    "epochs": 3,
    "batch_size": 32,
    "conv": [8, 16],
    "dense": 16,
    "augment_rotate": 0,
    "augment_shift": 0,
    "augment_scale": 0,
}


def marked_digits(folder: Path, per_class: int) -> None:
    """28x28 grey PNGs: faint noise with a bright 8x8 block whose place is the label."""
    for label in range(10):
        (folder / str(label)).mkdir(parents=True)
        row, col = divmod(label, 5)
        for i in range(per_class):
            pixels = digit(label * 1000 + i) // 4
            pixels[2 + 13 * row : 10 + 13 * row, 1 + 5 * col : 9 + 5 * col] = 255
            (folder / str(label) / f"{i:03d}.png").write_bytes(png(pixels))


def set_images(project: Path, **values) -> None:
    """Change data.images in params.yaml and fingerprint the source, as `bigdeep run` does."""
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["data"]["images"].update(values)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    scan = [sys.executable, "-m", "bigdeep.cli", "scan", "images"]
    run([*scan, "--out", "data/sources/images.json"], project)


def test_a_new_folder_source_starts_its_own_history_and_model(tmp_path, mlflow_uri, monkeypatch):
    dvc = [sys.executable, "-m", "dvc"]
    project = make_project(
        tmp_path / "project",
        {"data": {"images": {"per_class": 80}}, "train": {"cnn": TINY_CNN}},
    )
    run([*dvc, "repro", "train_cnn"], project)  # the builtin digits: 800 images
    client = MlflowClient(mlflow_uri)
    builtin = client.get_model_version_by_alias("bigdeep-cnn", "champion")
    references = project / "data" / "reference" / "images"
    accepted_mnist = (references / "mnist.json").read_bytes()
    assert json.loads(accepted_mnist)["rows"] == 800

    folder = tmp_path / "my digits"
    marked_digits(folder, per_class=40)  # 400 images, nothing like MNIST
    source = f"folder:{folder}"

    # Claimed as the builtin's identity, it is judged against that history, and fails (the
    # same stage commands as dvc.yaml's, in-process: two fewer interpreters to start)
    set_images(project, source=source, per_class=None, name="mnist")
    monkeypatch.chdir(project)
    assert main(["ingest", "images", "--out", "data/raw/images"]) == 0
    validate = ["validate", "images", "--raw", "data/raw/images", "--report"]
    validate += ["reports/quality/images.json", "--quarantine", "data/quarantine/images"]
    assert main([*validate, "--reference", "data/reference/images"]) == 3
    report = json.loads((project / "reports/quality/images.json").read_text())
    assert report["identity"] == "mnist" and report["passed"] is False
    assert report["drift"]["drop_pct"] == 50.0
    failures = "\n".join(report["failures"])
    assert "400 records, 50% fewer than the 800 of the last accepted version" in failures
    assert '"pixel_intensity" drifted' in failures

    # Under its own identity (the default, from the source) it is its own first version
    set_images(project, name=None)
    identity = dataset_identity(source)
    out = run([*dvc, "repro", "train_cnn"], project)
    report = json.loads((project / "reports/quality/images.json").read_text())
    assert report["passed"] is True and report["identity"] == identity
    assert report["drift"]["first_version"] is True and report["drift"]["drop_pct"] is None
    assert f"first version of {identity}: no drift or drop checks yet" in out
    name = f"bigdeep-cnn-{identity}"
    assert f"registry: {name} v1 -> champion" in out  # printed by the train stage

    # the builtin champion and its reference are untouched; each identity has its own file
    assert client.get_model_version_by_alias("bigdeep-cnn", "champion").run_id == builtin.run_id
    assert len(client.search_model_versions("name='bigdeep-cnn'")) == 1
    assert (references / "mnist.json").read_bytes() == accepted_mnist
    assert json.loads((references / f"{identity}.json").read_text())["rows"] == 400
    mine = client.get_model_version_by_alias(name, "champion")
    assert mine.tags["bigdeep.data.identity"] == identity
    assert client.get_run(mine.run_id).data.tags["bigdeep.registry.floor"] == "passed"
    assert lineage(client, f"{name}@champion")["data"]["identity"] == identity
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    assert [o["path"] for o in lock["stages"]["validate@images"]["outs"]][1] == (
        "data/reference/images"
    )
