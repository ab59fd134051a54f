"""The attribution functions on arrays whose answer is known, the files they write, and the
shell's off switch (bigdeep.explain, bigdeep.train.explain_model)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import matplotlib.image as mpimg
import numpy as np
import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient
from torch import nn

from bigdeep import explain as X
from bigdeep.config import ConfigError, Settings, load_settings
from bigdeep.train import explain_model


def test_region_share_of_a_mask_and_of_a_column():
    a = np.zeros((2, 1, 4, 4))
    a[:, 0, :2, :2] = 3.0  # inside the top-left quarter
    a[:, 0, 3, 3] = -1.0  # outside: counted by its magnitude
    mask = np.zeros((4, 4), dtype=bool)
    mask[:2, :2] = True
    assert X.region_share(a, mask) == pytest.approx(12 / 13)  # per image: 4 pixels x 3 in, 1 out
    assert X.region_share(a, ~mask) == pytest.approx(1 / 13)
    windows = np.zeros((3, 5, 4))  # (N, T, F)
    windows[..., 1] = -2.0
    windows[..., 3] = 1.0
    assert X.region_share(windows, 1) == pytest.approx(2 / 3)
    assert X.region_share(windows, np.int64(3)) == pytest.approx(1 / 3)
    assert X.region_share(np.zeros((1, 4, 4)), mask) == 0.0  # nothing attributed: no share
    with pytest.raises(ValueError, match="mask shape"):
        X.region_share(a, np.ones((3, 3), dtype=bool))


def test_centre_mask_is_a_quarter_and_top_share_measures_concentration():
    mask = X.centre_mask(28, 28)
    assert mask.sum() == 14 * 14 and mask[7:21, 7:21].all()
    spread = np.ones((1, 1, 10, 10))
    peaked = np.zeros((1, 1, 10, 10))
    peaked[0, 0, 0, :10] = 1.0  # all of it in 10 pixels = the top 10 %
    assert X.top_share(spread) == pytest.approx(0.1)
    assert X.top_share(peaked) == pytest.approx(1.0)


def test_class_sample_is_seeded_per_class_and_capped():
    labels = np.array([0] * 10 + [1] * 3 + [2] * 6)
    a = X.class_sample(labels, 4, seed=7)
    assert [int((labels[a] == c).sum()) for c in range(3)] == [4, 3, 4]  # class 1 has only 3
    assert np.array_equal(a, X.class_sample(labels, 4, seed=7))
    assert not np.array_equal(a, X.class_sample(labels, 4, seed=8))
    assert list(labels[a]) == sorted(labels[a])  # grouped by class


def test_confidently_wrong_orders_by_the_predicted_probability():
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.05, 0.95], [0.3, 0.7]])
    labels = np.array([0, 0, 1, 1, 0])  # rows 1, 2 and 4 are wrong
    assert list(X.confidently_wrong(probs, labels, 5)) == [1, 4, 2]
    assert list(X.confidently_wrong(probs, labels, 2)) == [1, 4]
    assert len(X.confidently_wrong(probs, np.array([0, 1, 0, 1, 1]), 3)) == 0


def test_integrated_gradients_of_a_linear_model_are_input_times_weight():
    """For F(x) = w.x + b and a zero baseline, IG is exactly x * w: completeness holds."""
    net = nn.Linear(6, 2)
    x = np.random.default_rng(0).standard_normal((5, 6)).astype(np.float32)
    target = np.array([0, 1, 1, 0, 1])
    attributions, error = X.integrated_gradients(net.eval(), x, target, steps=4)
    w = net.weight.detach().numpy()
    assert np.allclose(attributions, x * w[target], atol=1e-5)
    assert error < 1e-5
    # chunked (a tiny chunk budget) gives the same
    before = X.CHUNK_ELEMENTS
    try:
        X.CHUNK_ELEMENTS = 1
        chunked, _ = X.integrated_gradients(net, x, target, steps=4)
    finally:
        X.CHUNK_ELEMENTS = before
    assert np.allclose(chunked, attributions, atol=1e-6)


def test_gather_takes_rows_in_the_order_asked_across_batches():
    x = torch.arange(10, dtype=torch.float32)[:, None]
    loader = [(x[i : i + 3], torch.zeros(len(x[i : i + 3]))) for i in range(0, 10, 3)]
    assert X.gather(loader, np.array([7, 0, 3])).ravel().tolist() == [7.0, 0.0, 3.0]
    with pytest.raises(ValueError, match="not in the loader's 10 samples"):
        X.gather(loader, np.array([10]))


def image_explanation(n_per_class: int = 3, wrong: int = 2) -> X.ImageExplanation:
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1], n_per_class)
    attributions = rng.standard_normal((len(labels), 1, 8, 8))
    attributions[labels == 1, :, 2:6, 2:6] *= 10  # class 1: concentrated in the centre
    return X.ImageExplanation(
        inputs=rng.random((len(labels), 1, 8, 8)),
        attributions=attributions,
        labels=labels,
        wrong_inputs=rng.random((wrong, 1, 8, 8)),
        wrong_attributions=rng.standard_normal((wrong, 1, 8, 8)),
        wrong_true=np.array([0, 1][:wrong]),
        wrong_pred=np.array([1, 0][:wrong]),
        wrong_confidence=np.array([0.9, 0.8][:wrong]),
        test_wrong=5,
        ig_error=0.01,
    )


def test_image_files_hold_the_computed_figures(tmp_path):
    e = image_explanation()
    figures = X.write_image_explanation(e, ["zero", "one"], tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "class_mean.png",
        "class_share.csv",
        "confident_wrong.png",
        "summary.json",
    ]
    shares = pd.read_csv(tmp_path / "class_share.csv").set_index("class")
    centre = X.centre_mask(8, 8)
    for c, name in enumerate(["zero", "one"]):
        mine = e.attributions[e.labels == c]
        assert shares.loc[name, "centre_share"] == pytest.approx(
            X.region_share(mine, centre), abs=1e-4
        )
        assert shares.loc[name, "images"] == 3
    # class one: 16 centre pixels x 10 against 48 outside x 1 (~0.77); class zero ~0.25
    assert shares.loc["one", "centre_share"] > 0.7 > 0.4 > shares.loc["zero", "centre_share"]
    assert figures["explain_centre_share"] == pytest.approx(X.region_share(e.attributions, centre))
    assert json.loads((tmp_path / "summary.json").read_text())["explain_images"] == 6
    # two classes: one row of 2 pairs = 4 panels, 2.6 in wide per pair at 100 dpi
    height, width, _ = mpimg.imread(tmp_path / "class_mean.png").shape
    assert (width, height) == (520, 210)


def test_no_wrong_image_still_writes_a_figure_saying_so(tmp_path):
    X.write_image_explanation(image_explanation(wrong=0), ["zero", "one"], tmp_path)
    assert mpimg.imread(tmp_path / "confident_wrong.png").shape[0] > 0


def test_window_files_sum_to_one_and_name_steps_back(tmp_path):
    rng = np.random.default_rng(0)
    attributions = rng.standard_normal((4, 6, 3)) * 0.01  # (N, T, F)
    attributions[:, -1, 1] = 5.0  # the most recent step of column "b"
    e = X.WindowExplanation(rng.standard_normal((4, 6, 3)), attributions, ["a", "b", "c"], 0.02)
    figures = X.write_window_explanation(e, tmp_path, "1h")
    window = pd.read_csv(tmp_path / "window.csv")
    assert list(window.columns) == ["steps_back", "column", "share"] and len(window) == 18
    assert window["share"].sum() == pytest.approx(1.0, abs=1e-4)
    top = window.loc[window["share"].idxmax()]
    assert (top["column"], top["steps_back"]) == ("b", 1)
    by_column = pd.read_csv(tmp_path / "by_column.csv").set_index("column")["share"]
    assert by_column["b"] == pytest.approx(X.region_share(attributions, 1), abs=1e-5)
    by_step = pd.read_csv(tmp_path / "by_step.csv")
    assert list(by_step["steps_back"]) == [1, 2, 3, 4, 5, 6]
    assert by_step["share"].iloc[0] == pytest.approx(figures["explain_last_step_share"], abs=1e-5)
    assert figures["explain_top_column_share"] == pytest.approx(by_column["b"], abs=1e-5)
    assert figures["explain_share.b"] == pytest.approx(by_column["b"], abs=1e-5)
    assert json.loads((tmp_path / "summary.json").read_text())["top_column"] == "b"
    assert mpimg.imread(tmp_path / "window.png").shape[0] > 0


@pytest.fixture
def run(mlflow_uri):
    client = MlflowClient(mlflow_uri)
    experiment = client.create_experiment("explain")
    return client, client.create_run(experiment).info.run_id


def test_off_switch_writes_only_a_note_and_never_explains(tmp_path, run):
    client, run_id = run
    folder = tmp_path / "explain"
    folder.mkdir()
    (folder / "class_mean.png").write_bytes(b"a previous model's")

    def never(folder):
        raise AssertionError("explained although off")

    explain_model(client, run_id, SimpleNamespace(name="cnn", explain=never), folder, False)
    assert [p.name for p in folder.iterdir()] == ["README.txt"]
    assert "train.explain.enabled: false" in (folder / "README.txt").read_text()
    data = client.get_run(run_id).data
    assert data.tags["bigdeep.explain"] == "off" and data.metrics == {}


def test_on_logs_the_figures_and_the_time_they_took(tmp_path, run):
    client, run_id = run
    folder = tmp_path / "explain"

    def explain(folder):
        (folder / "class_mean.png").write_bytes(b"png")
        return None, {"explain_centre_share": 0.75}

    explain_model(client, run_id, SimpleNamespace(name="cnn", explain=explain), folder, True)
    assert [p.name for p in folder.iterdir()] == ["class_mean.png"]
    data = client.get_run(run_id).data
    assert data.tags["bigdeep.explain"] == "ok"
    assert data.metrics["explain_centre_share"] == 0.75 and data.metrics["explain_seconds"] >= 0


def test_params_are_strict(tmp_path):
    """params.yaml's block is read as written; an unknown or out-of-range key is named."""
    assert load_settings("params.yaml").train.explain == Settings().train.explain
    assert Settings().train.explain.model_dump() == {
        "enabled": True,
        "per_class": 8,
        "wrong": 16,
        "windows": 64,
        "steps": 32,
    }
    path = tmp_path / "params.yaml"
    path.write_text("train:\n  explain:\n    sample: 3\n")
    with pytest.raises(ConfigError, match="train.explain.sample: unknown key"):
        load_settings(path)
    path.write_text("train:\n  explain:\n    steps: 1\n")
    with pytest.raises(ConfigError, match="train.explain.steps: Input should be greater"):
        load_settings(path)
