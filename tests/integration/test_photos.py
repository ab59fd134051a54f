"""A folder of real photos trains end to end: ingest -> validate -> prepare -> train through the
CLI with the resize settings, the exported model's signature checked against the real input
shape, and the registry's scorer on the colour test split."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from bigdeep.cli import main
from bigdeep.training.jobs import build_image_job
from tests.unit.images import photo_folder
from tests.unit.test_photos import _ingest_and_validate


@pytest.mark.slow
def test_a_folder_of_photos_trains_end_to_end(tmp_path, monkeypatch, capsys, mlflow_uri):
    """ingest -> validate -> prepare -> train through the CLI, with the resize settings."""
    import mlflow

    from bigdeep.config import load_settings
    from bigdeep.registry import Scorer
    from bigdeep.training.core import test_split_arrays

    monkeypatch.chdir(tmp_path)
    classes = photo_folder(tmp_path / "src", classes=3, per_class=20, seed=6)
    params = {
        "data": {"images": {"source": f"folder:{tmp_path / 'src'}", "per_class": None}},
        "quality": {"images": {"classes": classes}},
        "prepare": {"images": {"size": [64, 64], "mode": "RGB", "resize": "pad"}},
        "train": {"cnn": {"epochs": 2, "batch_size": 8, "conv": [8, 16, 16], "dense": 16}},
        "registry": {"prefix": "photos"},
    }
    Path("params.yaml").write_text(yaml.safe_dump(params))
    code, out, report, reasons = _ingest_and_validate(capsys)
    assert code == 0 and report["passed"] and len(reasons) == 0
    assert "resized to 64x64 (height x width, pad)" in out
    assert main(["prepare", "images", "--raw", "data/raw/images", "--quarantine",
                 "data/quarantine/images", "--out", "data/processed/images"]) == 0  # fmt: skip
    assert np.load("data/processed/images/test_x.npy").shape[1:] == (64, 64, 3)
    argv = ["train", "cnn", "--data", "data/processed/images", "--out", "models/cnn",
            "--metrics", "metrics/cnn.json", "--plots", "plots", "--checkpoints", "ckpt"]  # fmt: skip
    assert main(argv) == 0
    metrics = json.loads(Path("metrics/cnn.json").read_text())
    assert metrics["test_acc"] > 0.5  # 3 classes: chance is 1/3; colour and shape tell them

    model_uri = json.loads(Path("models/cnn/run.json").read_text())["model_uri"]
    info = mlflow.models.get_model_info(model_uri)
    (spec,) = info.signature.inputs.inputs
    assert tuple(spec.shape) == (-1, 3, 64, 64)  # the real input shape, batch dynamic
    run = mlflow.get_run(json.loads(Path("models/cnn/run.json").read_text())["run_id"])
    assert run.data.params["data.input_shape"] == "3x64x64"
    served = mlflow.pyfunc.load_model(model_uri)
    example = np.asarray(served.input_example)
    assert example.shape == (2, 3, 64, 64)
    assert np.asarray(served.predict(example.astype(np.float32))).shape == (2, 3)
    # the registry scores a colour model on its test split (N, H, W, 3) -> (N, 3, H, W)
    job = build_image_job(load_settings(Path("params.yaml")), Path("data/processed/images"))
    accuracy = Scorer(*test_split_arrays(job.datamodule), job.score)(model_uri)
    assert accuracy == pytest.approx(metrics["test_acc"], abs=1e-6)
