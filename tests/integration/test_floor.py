"""The sanity floor on a real training: an RNN trained for one step is no better than repeating
the last value, so it is registered but never champion, and the run says why."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from bigdeep.config import Settings
from bigdeep.ingest import ingest_series
from bigdeep.prepare import prepare_series
from bigdeep.train import Paths, train_rnn

ONE_STEP = {
    "data": {"series": {"last_days": 20}},  # 480 hourly rows of the builtin demand
    "train": {
        "trainer": {"limit_train_batches": 1},
        "rnn": {"epochs": 1, "layers": 1, "hidden": 8, "window": 24, "batch_size": 32},
    },
}


@pytest.mark.slow
def test_an_rnn_under_the_naive_forecast_is_never_champion(tmp_path: Path, mlflow_uri):
    s = Settings.model_validate(ONE_STEP)
    ingest_series(s, tmp_path / "raw")
    (tmp_path / "q").mkdir()
    prepare_series(
        tmp_path / "raw", tmp_path / "q", tmp_path / "data", s.data.series, s.prepare.series
    )
    paths = Paths(
        data=tmp_path / "data",
        out=tmp_path / "model",
        metrics=tmp_path / "metrics.json",
        plots=tmp_path / "plots",
        checkpoints=tmp_path / "ckpt",
        lock=tmp_path / "dvc.lock",
    )
    result = train_rnn(s, paths)
    mae, naive = result.metrics["test_mae"], result.metrics["test_naive_mae"]
    assert mae > naive  # one step of training: worse than repeating the last hour
    d = result.decision
    assert (d.model, d.version, d.alias, d.above_floor) == ("bigdeep-rnn", "1", None, False)
    assert d.floor_score == pytest.approx(naive) and d.candidate_score == pytest.approx(
        mae, rel=1e-4
    )

    client = MlflowClient(mlflow_uri)
    assert not client.get_model_version("bigdeep-rnn", "1").aliases  # the first model, no alias
    tags = client.get_run(result.run_id).data.tags
    assert tags["bigdeep.registry.decision"] == "bigdeep-rnn v1 -> no alias"
    assert tags["bigdeep.registry.reason"] == (
        f"test_mae {d.candidate_score:.4g} does not beat the sanity floor {naive:.4g} "
        f"(naive forecast MAE {naive:.4g}, registry.rnn_floor_ratio=1; < is better): never champion"
    )
    assert tags["bigdeep.data.identity"] == "vic_elec"
