"""Attributions that can be wrong: on generated data whose label is decided by one region of
the image (one input column of the series), a model trained by the pipeline's own jobs puts
most of its attribution there, and the same model trained on shuffled labels does not.
Explaining never changes the model, and a failure in explaining does not lose it."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient

from bigdeep.config import Settings
from bigdeep.data.prepared import SPLITS, write_image_split
from bigdeep.explain import region_share
from bigdeep.train import run_job
from bigdeep.training.jobs import build_image_job, build_series_job
from tests.integration.helpers import fit, run_paths

SIDE = 28
QUADRANT = np.zeros((SIDE, SIDE), dtype=bool)
QUADRANT[: SIDE // 2, : SIDE // 2] = True  # the top-left quarter: 25 % of the pixels

# The stated thresholds. The region is a quarter of the image, so a model that looks
# everywhere alike puts ~0.25 there; the signal column is one of five inputs (~0.2).
IMAGE_TRAINED, IMAGE_SHUFFLED = 0.5, 0.45
SERIES_TRAINED, SERIES_SHUFFLED = 0.8, 0.65
SIGNAL = 1  # input columns: target, signal, noise, hour_sin, hour_cos

IMAGES = {
    "train": {
        "cnn": {
            "epochs": 10,
            "batch_size": 32,
            "conv": [8, 16, 16],
            "dense": 32,
            # Strong (decoupled, AdamW) decay shrinks the weights the label never needed: without
            # it the random initial weights on the noise pixels stay as they were, and IG, which
            # explains the network as it is, shows them (region share 0.57 at 0, 0.68 at 5).
            "weight_decay": 5.0,
            "augment_rotate": 0,  # augmentation would move the region
            "augment_shift": 0,
            "augment_scale": 0,
        },
        "explain": {"per_class": 32, "wrong": 4, "steps": 32},
    }
}
SERIES = {
    "train": {
        "rnn": {
            "layers": 1,
            "hidden": 16,
            "window": 12,
            "calendar": ["hour"],
            "epochs": 6,
            "batch_size": 64,
            "lr": 0.01,
        },
        "explain": {"windows": 64, "steps": 32},
    }
}


def quadrant_images(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Noise everywhere; the top-left quarter holds stripes, horizontal (class 0) or vertical
    (class 1). Both classes are as bright there as elsewhere (mean 127.5): only the stripes'
    direction tells them apart, so no region wins by brightness against the black baseline."""
    x = rng.integers(0, 256, size=(n, SIDE, SIDE), dtype=np.uint8)
    y = rng.integers(0, 2, size=n)
    stripes = (np.arange(SIDE // 2) % 2 * 255).astype(np.uint8)  # 0, 255, 0, ...
    horizontal = np.repeat(stripes[:, None], SIDE // 2, axis=1)
    x[:, : SIDE // 2, : SIDE // 2] = np.where(y[:, None, None] == 0, horizontal, horizontal.T)
    return x, y


def write_images(folder: Path, shuffled: bool) -> Path:
    """The prepared layout (`bigdeep.data.prepared`): <split>_{x,y,ids}.npy and classes.json."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    for split, n in zip(SPLITS, (480, 120, 160), strict=True):
        x, y = quadrant_images(n, rng)
        if shuffled:
            y = rng.permutation(y)
        ids = np.array([f"{split}-{i}" for i in range(n)])
        write_image_split(folder, split, x, y, ids)
    (folder / "classes.json").write_text(json.dumps(["horizontal", "vertical"]))
    return folder


def write_series(folder: Path, shuffled: bool) -> Path:
    """series.parquet + meta.json as prepare writes them (scaled values, a split column): the
    target is the `signal` column one hour earlier; `noise` and the calendar are irrelevant."""
    rng = np.random.default_rng(0)
    n = 3000
    signal, noise = rng.standard_normal(n), rng.standard_normal(n)
    target = np.r_[0.0, signal[:-1]] + 0.05 * rng.standard_normal(n)
    if shuffled:
        target = rng.permutation(target)
    split = np.array(["train"] * 2100 + ["val"] * 450 + ["test"] * 450)
    frame = pd.DataFrame(
        {
            "timestamp": pd.date_range("2024-01-01", periods=n, freq="1h", tz="UTC"),
            "demand": target.astype(np.float32),
            "signal": signal.astype(np.float32),
            "noise": noise.astype(np.float32),
            "split": split,
        }
    )
    folder.mkdir(parents=True)
    frame.to_parquet(folder / "series.parquet", index=False)
    unit = {"mean": 0.0, "std": 1.0}
    meta = {
        "target": "demand",
        "features": ["signal", "noise"],
        "scaler": {"demand": unit, "signal": unit, "noise": unit},
        "freq": "1h",
    }
    (folder / "meta.json").write_text(json.dumps(meta))
    return folder


@dataclasses.dataclass(frozen=True)
class Case:
    """One half of the pair: the data whose label one region decides, how it is trained, where
    the region is and the stated shares (trained above `trained_share`, shuffled below)."""

    write: Callable[[Path, bool], Path]
    build: Callable
    params: dict
    region: np.ndarray | int
    trained_share: float
    shuffled_share: float


CASES = {
    "images": Case(write_images, build_image_job, IMAGES, QUADRANT, IMAGE_TRAINED, IMAGE_SHUFFLED),
    "series": Case(write_series, build_series_job, SERIES, SIGNAL, SERIES_TRAINED, SERIES_SHUFFLED),
}


def explained(case: Case, tmp_path_factory) -> dict[str, dict]:
    """The model trained on the rule and on shuffled labels, each explained once."""
    out = {}
    for kind in ("trained", "shuffled"):
        tmp = tmp_path_factory.mktemp(f"{case.write.__name__}-{kind}")
        data = case.write(tmp / "data", kind == "shuffled")
        settings = Settings.model_validate(case.params)
        job, fitted = fit(settings, case.build, data, tmp / "ckpt")
        before = {k: v.clone() for k, v in job.model.state_dict().items()}
        explanation, figures = job.explain(tmp / "explain")
        out[kind] = {
            "job": job,
            "metrics": fitted.metrics,
            "before": before,
            "explanation": explanation,
            "figures": figures,
            "folder": tmp / "explain",
            "share": region_share(explanation.attributions, case.region),
        }
    return out


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict[str, dict]:
    return explained(CASES["images"], tmp_path_factory)


@pytest.fixture(scope="module")
def series(tmp_path_factory) -> dict[str, dict]:
    return explained(CASES["series"], tmp_path_factory)


@pytest.mark.parametrize("name", CASES)
def test_attributions_concentrate_where_the_label_is_decided(name, request):
    """Trained on the rule, most attribution is in the deciding region (image quarter, series
    column); trained on shuffled labels, it is not."""
    case, runs = CASES[name], request.getfixturevalue(name)
    trained, shuffled = runs["trained"], runs["shuffled"]
    print(
        f"\n{name} region share: trained {trained['share']:.3f}, shuffled {shuffled['share']:.3f}"
    )
    if name == "images":
        assert trained["metrics"]["test_acc"] > 0.9  # it learned the rule
        assert shuffled["metrics"]["test_acc"] < 0.7  # there was no rule to learn
    else:
        assert trained["metrics"]["test_mae_vs_naive"] < 0.5  # it learned the rule
    assert trained["share"] > case.trained_share
    assert shuffled["share"] < case.shuffled_share


def test_series_files_show_what_was_computed(series):
    """by_column.csv's row for the signal is its share; the last step weighs most of all."""
    run = series["trained"]
    e = run["explanation"]
    assert e.columns[SIGNAL] == "signal" and len(e.columns) == 5
    by_column = pd.read_csv(run["folder"] / "by_column.csv")
    assert by_column.set_index("column")["share"]["signal"] == pytest.approx(run["share"], abs=1e-4)
    window = pd.read_csv(run["folder"] / "window.csv")
    top = window.loc[window["share"].idxmax()]
    assert (top["column"], top["steps_back"]) == ("signal", 1)


def test_explaining_leaves_the_model_as_it_was(images):
    run = images["trained"]
    model = run["job"].model
    after = model.state_dict()
    assert all(torch.equal(run["before"][k], after[k]) for k in after)
    assert all(p.requires_grad for p in model.parameters())  # the copy was frozen, not it


def test_image_files_show_what_was_computed(images):
    run = images["trained"]
    folder, e = run["folder"], run["explanation"]
    assert sorted(p.name for p in folder.iterdir()) == [
        "class_mean.png",
        "class_share.csv",
        "confident_wrong.png",
        "summary.json",
    ]
    shares = pd.read_csv(folder / "class_share.csv")
    assert list(shares["class"]) == ["horizontal", "vertical"]
    assert list(shares["images"]) == [32, 32]
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["explain_images"] == 64
    # completeness: IG's attributions add up to the logit's change, within a few per cent
    assert summary["explain_ig_error"] < 0.05
    assert len(e.wrong_inputs) == min(4, e.test_wrong)
    assert (e.wrong_true != e.wrong_pred).all()
    assert (np.diff(e.wrong_confidence) <= 0).all()  # most confident first


def test_a_failure_in_explaining_keeps_the_trained_model(tmp_path, mlflow_uri, capsys):
    """The stage finishes: the model is saved, logged and registered, the run says why there
    are no explanations, and the warning names the error and the way out."""
    data = write_images(tmp_path / "data", shuffled=False)
    settings = Settings.model_validate({"train": {"cnn": {**IMAGES["train"]["cnn"], "epochs": 1}}})
    job = build_image_job(settings, data)

    def broken(folder: Path):
        raise RuntimeError("attribution exploded")

    paths = run_paths(tmp_path, data)
    result = run_job(settings, dataclasses.replace(job, explain=broken), paths)
    assert (paths.out / "model.pt").exists() and paths.metrics.exists()
    client = MlflowClient(mlflow_uri)
    assert [v.run_id for v in client.search_model_versions("name='bigdeep-cnn'")] == [result.run_id]
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags["bigdeep.explain"] == "failed: RuntimeError: attribution exploded"
    assert not any(k.startswith("explain_") for k in run.data.metrics)
    err = capsys.readouterr().err
    assert "explaining the cnn model failed (RuntimeError: attribution exploded)" in err
    assert "train.explain.enabled: false" in err
    note = (paths.plots / "explain" / "README.txt").read_text()
    assert "attribution exploded" in note
    assert [p.name for p in (paths.plots / "explain").iterdir()] == ["README.txt"]
