"""Stages `train_cnn` / `train_rnn`: fit with Lightning, evaluate, record everything in MLflow.

    bigdeep train cnn --data data/processed/images --out models/cnn --metrics metrics/cnn.json
    bigdeep train rnn --data data/processed/series --out models/rnn --metrics metrics/rnn.json

Each run logs params, per-epoch train/val curves (one MLflow call per epoch: per-step
logging to SQLite costs more than the step), test metrics, the model (`pt2` format, with
signature and input example), the quality report and the exact data version (DVC md5).
"""

from __future__ import annotations

import csv
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import Logger

from bigdeep.config import Settings, Trainer
from bigdeep.registry import (
    Decision,
    image_accuracy_scorer,
    params_hash,
    register_and_promote,
    series_mae_scorer,
)
from bigdeep.tracking import (
    DataVersion,
    check_reachable,
    data_version,
    git_state,
    log_data_input,
    start_run,
)

# Installed into the model's environment by whoever serves it; pinned like ours.
MODEL_REQUIREMENTS = [f"torch=={torch.__version__.split('+')[0]}", "numpy", "mlflow"]


@dataclass(frozen=True)
class TrainResult:
    model: str
    run_id: str
    metrics: dict[str, float]
    data_version: str


# --- Lightning plumbing ----------------------------------------------------------------------


def log_metrics(client, run_id: str, values: dict[str, float], step: int) -> None:
    """All values in one request: each MLflow call to SQLite costs milliseconds."""
    from mlflow.entities import Metric

    ts = int(1000 * time.time())
    client.log_batch(run_id, metrics=[Metric(k, v, ts, step) for k, v in values.items()])


class EpochHistory(Logger):
    """A Lightning logger that sends each epoch's metrics to MLflow in one request.

    Lightning hands a logger the epoch-level values after it has reduced them (a callback's
    on_train_epoch_end runs before the train metrics are reduced, so it would see the
    previous epoch's). Values arrive in several calls per epoch (train, then validation):
    they are buffered and flushed when the epoch changes and at the end.
    """

    def __init__(self, mlflow_client, run_id: str, keys: tuple[str, ...]) -> None:
        super().__init__()
        self.client, self.run_id, self.keys = mlflow_client, run_id, keys
        self.rows: list[dict[str, float]] = []
        self._pending: dict[str, float] = {}
        self._epoch: int | None = None

    @property
    def name(self) -> str:
        return "bigdeep-mlflow"

    @property
    def version(self) -> str:
        return self.run_id

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass  # params are logged once by the stage, from the validated settings

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        epoch = int(metrics.get("epoch", self._epoch or 0))
        if self._epoch is not None and epoch != self._epoch:
            self._flush()
        self._epoch = epoch
        self._pending.update({k: float(v) for k, v in metrics.items() if k in self.keys})

    def finalize(self, status: str) -> None:
        self._flush()

    def _flush(self) -> None:
        if self._epoch is None or not self._pending:
            return
        self.rows.append({"epoch": self._epoch, **self._pending})
        log_metrics(self.client, self.run_id, self._pending, step=self._epoch)
        self._pending = {}


def configure_torch(cfg: Trainer, seed: int) -> None:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    pl.seed_everything(seed, workers=True, verbose=False)


def precision_for(cfg: Trainer) -> str:
    if cfg.precision:
        return cfg.precision
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16-mixed"
    return "32-true"


def make_trainer(cfg: Trainer, epochs: int, history: EpochHistory, out_dir: Path) -> pl.Trainer:
    return pl.Trainer(
        max_epochs=epochs,
        accelerator=cfg.accelerator,
        devices=cfg.devices,
        strategy=cfg.strategy,
        precision=precision_for(cfg),
        deterministic=cfg.deterministic,
        limit_train_batches=cfg.limit_train_batches,
        logger=history,
        log_every_n_steps=1_000_000,  # step-level values are never logged: epochs only
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(out_dir),
    )


def write_history(rows: list[dict[str, float]], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    keys = ["epoch"] + sorted({k for r in rows for k in r} - {"epoch"})
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)


def plot_history(rows: list[dict[str, float]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    epochs = [r["epoch"] for r in rows]
    for key in ("train_loss", "val_loss"):
        ax.plot(epochs, [r.get(key, np.nan) for r in rows], marker="o", label=key)
    ax.set(xlabel="epoch", ylabel="loss", title=title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# --- the two stages --------------------------------------------------------------------------


def run_tags(settings: Settings, model: str, version: DataVersion) -> dict[str, str]:
    """Lineage: which data (DVC md5s), code (git) and params (hash) a run came from."""
    return {
        "bigdeep.model": model,
        "bigdeep.params_hash": params_hash(settings.model_dump()),
        **version.tags(),
        **git_state(),
    }


def _common_params(settings: Settings) -> dict[str, Any]:
    t = settings.train.trainer
    return {
        "seed": settings.seed,
        "trainer.accelerator": t.accelerator,
        "trainer.devices": t.devices,
        "trainer.precision": precision_for(t),
        "trainer.threads": t.threads,
        "trainer.limit_train_batches": t.limit_train_batches,
    }


def _finish(
    *,
    name: str,
    run,
    client,
    history: EpochHistory,
    metrics: dict[str, float],
    out_dir: Path,
    plots_dir: Path,
    metrics_path: Path,
    report_path: Path | None,
    version: str,
    model_uri: str,
    decision: Decision,
) -> TrainResult:
    import mlflow

    log_metrics(client, run.info.run_id, metrics, step=0)
    plots_dir.mkdir(parents=True, exist_ok=True)
    write_history(history.rows, plots_dir / "history.csv")
    plot_history(history.rows, plots_dir / "learning_curve.png", f"{name}: learning curve")
    mlflow.log_artifacts(str(plots_dir), artifact_path="plots")
    if report_path is not None and report_path.exists():
        mlflow.log_artifact(str(report_path), artifact_path="quality")
    result = TrainResult(name, run.info.run_id, metrics, version)
    metrics_path.parent.mkdir(parents=True, exist_ok=True)
    # the DVC metric holds numbers only; where they came from sits beside the model
    metrics_path.write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    run_info = {
        "run_id": run.info.run_id,
        "model_uri": model_uri,
        "data_version": version,
        "registry": asdict(decision),
    }
    (out_dir / "run.json").write_text(json.dumps(run_info, indent=2, sort_keys=True) + "\n")
    return result


def train_cnn(
    settings: Settings,
    data_dir: Path,
    out_dir: Path,
    metrics_path: Path,
    plots_dir: Path,
    report_path: Path | None = None,
    lock_path: Path = Path("dvc.lock"),
) -> TrainResult:
    import mlflow

    from bigdeep.data.modules import ImageDataModule
    from bigdeep.models.cnn import ImageClassifier

    check_reachable(settings.mlflow)  # fail now, not after training
    cfg, tcfg = settings.train.cnn, settings.train.trainer
    configure_torch(tcfg, settings.seed)
    dm = ImageDataModule(
        data_dir, batch_size=cfg.batch_size, num_workers=tcfg.num_workers, seed=settings.seed
    )
    dm.setup("fit")
    model = ImageClassifier(
        num_classes=dm.num_classes,
        conv=list(cfg.conv),
        dense=cfg.dense,
        lr=cfg.lr,
        image_size=dm.image_size,
    )
    version = data_version(lock_path, data_dir, raw_name="images")
    out_dir.mkdir(parents=True, exist_ok=True)
    with start_run(
        settings.mlflow, run_name="train_cnn", tags=run_tags(settings, "cnn", version)
    ) as (run, client):
        mlflow.log_params(
            {**_common_params(settings), **{f"cnn.{k}": v for k, v in cfg.model_dump().items()}}
        )
        log_data_input(version, name="images", context="training")
        history = EpochHistory(
            client, run.info.run_id, ("train_loss", "train_acc", "val_loss", "val_acc")
        )
        trainer = make_trainer(tcfg, cfg.epochs, history, out_dir)
        trainer.fit(model, datamodule=dm)
        tested = trainer.test(model, datamodule=dm, verbose=False)[0]
        metrics = {"test_loss": float(tested["test_loss"]), "test_acc": float(tested["test_acc"])}
        torch.save(model.state_dict(), out_dir / "model.pt")
        model_uri = log_model(
            model.predict_proba_module(), example=_image_example(dm), name="model"
        )
        decision = register_and_promote(
            client=client,
            name=f"{settings.registry.prefix}-cnn",
            run_id=run.info.run_id,
            model_uri=model_uri,
            score=image_accuracy_scorer(data_dir),
            metric="test_acc",
            higher_is_better=True,
            margin=settings.registry.cnn_margin,
            data_version=version.processed_md5,
            tags=client.get_run(run.info.run_id).data.tags,
        )
        return _finish(
            name="cnn",
            run=run,
            client=client,
            history=history,
            metrics=metrics,
            out_dir=out_dir,
            plots_dir=plots_dir,
            metrics_path=metrics_path,
            report_path=report_path,
            version=version.raw_md5,
            model_uri=model_uri,
            decision=decision,
        )


def _image_example(dm) -> np.ndarray:
    x, _ = next(iter(dm.test_dataloader()))
    return x[:2].float().numpy()  # (2, C, H, W) float32 in [0, 1]


def train_rnn(
    settings: Settings,
    data_dir: Path,
    out_dir: Path,
    metrics_path: Path,
    plots_dir: Path,
    report_path: Path | None = None,
    lock_path: Path = Path("dvc.lock"),
) -> TrainResult:
    import mlflow

    from bigdeep.data.modules import SeriesDataModule
    from bigdeep.models.rnn import SeriesForecaster

    check_reachable(settings.mlflow)  # fail now, not after training
    cfg, tcfg = settings.train.rnn, settings.train.trainer
    configure_torch(tcfg, settings.seed)
    dm = SeriesDataModule(
        data_dir,
        window=cfg.window,
        horizon=cfg.horizon,
        batch_size=cfg.batch_size,
        num_workers=tcfg.num_workers,
        seed=settings.seed,
    )
    dm.setup("fit")
    model = SeriesForecaster(
        n_features=dm.n_features,
        cell=cfg.cell,
        layers=cfg.layers,
        hidden=cfg.hidden,
        dropout=cfg.dropout,
        horizon=cfg.horizon,
        lr=cfg.lr,
    )
    version = data_version(lock_path, data_dir, raw_name="series")
    out_dir.mkdir(parents=True, exist_ok=True)
    with start_run(
        settings.mlflow, run_name="train_rnn", tags=run_tags(settings, "rnn", version)
    ) as (run, client):
        mlflow.log_params(
            {**_common_params(settings), **{f"rnn.{k}": v for k, v in cfg.model_dump().items()}}
        )
        log_data_input(version, name="series", context="training")
        history = EpochHistory(
            client, run.info.run_id, ("train_loss", "train_mae", "val_loss", "val_mae")
        )
        trainer = make_trainer(tcfg, cfg.epochs, history, out_dir)
        trainer.fit(model, datamodule=dm)
        tested = trainer.test(model, datamodule=dm, verbose=False)[0]
        metrics = {
            "test_loss": float(tested["test_loss"]),
            **forecast_metrics(model, dm, cfg.seasonal_period),
        }
        torch.save(model.state_dict(), out_dir / "model.pt")
        model_uri = log_model(model.export_module(), example=_series_example(dm), name="model")
        decision = register_and_promote(
            client=client,
            name=f"{settings.registry.prefix}-rnn",
            run_id=run.info.run_id,
            model_uri=model_uri,
            score=series_mae_scorer(dm),
            metric="test_mae",
            higher_is_better=False,
            margin=settings.registry.rnn_margin,
            data_version=version.processed_md5,
            tags=client.get_run(run.info.run_id).data.tags,
        )
        return _finish(
            name="rnn",
            run=run,
            client=client,
            history=history,
            metrics=metrics,
            out_dir=out_dir,
            plots_dir=plots_dir,
            metrics_path=metrics_path,
            report_path=report_path,
            version=version.raw_md5,
            model_uri=model_uri,
            decision=decision,
        )


def _series_example(dm) -> np.ndarray:
    x, _ = next(iter(dm.test_dataloader()))
    return x[:2].float().numpy()  # (2, window, n_features)


@torch.no_grad()
def forecast_metrics(model: pl.LightningModule, dm, seasonal_period: int) -> dict[str, float]:
    """Test MAE / RMSE / MAPE in the target's units, beside naive and seasonal-naive forecasts.

    Inputs are [target, *features] per step, so the naive forecast is the last input's target
    and the seasonal-naive one is the target `seasonal_period` steps before each forecast step.
    """
    model.eval()
    preds, trues, naive, seasonal = [], [], [], []
    for x, y in dm.test_dataloader():  # x (B, T, F), y (B, H)
        x = x.to(model.device)
        preds.append(model(x).float().cpu())
        trues.append(y.float())
        window, horizon = x.shape[1], y.shape[1]
        naive.append(x[:, -1:, 0].cpu().expand(-1, horizon))
        if window >= seasonal_period >= horizon:
            seasonal.append(
                x[:, window - seasonal_period : window - seasonal_period + horizon, 0].cpu()
            )
    unscale = dm.inverse_target
    y_true = unscale(torch.cat(trues).numpy())
    out: dict[str, float] = {}
    candidates = {"": preds, "naive_": naive, "seasonal_naive_": seasonal}
    for prefix, values in candidates.items():
        if not values:
            continue
        err = unscale(torch.cat(values).numpy()) - y_true
        out[f"test_{prefix}mae"] = float(np.mean(np.abs(err)))
        out[f"test_{prefix}rmse"] = float(np.sqrt(np.mean(err**2)))
        out[f"test_{prefix}mape"] = float(
            100 * np.mean(np.abs(err) / np.maximum(np.abs(y_true), 1e-9))
        )
    if "test_naive_mae" in out:
        out["test_mae_vs_naive"] = out["test_mae"] / out["test_naive_mae"]
    return out


def log_model(module: torch.nn.Module, example: np.ndarray, name: str) -> str:
    """Log in MLflow's `pt2` format (torch.export, no pickle), batch dimension dynamic."""
    import mlflow
    from mlflow.models import infer_signature

    module = module.cpu().eval()
    with torch.no_grad():
        out = module(torch.from_numpy(example)).numpy()
    signature = infer_signature(example, out)
    info = mlflow.pytorch.log_model(
        module,
        name=name,
        signature=signature,
        input_example=example,
        serialization_format="pt2",
        pip_requirements=MODEL_REQUIREMENTS,
    )
    mlflow.set_tag("bigdeep.model_uri", info.model_uri)
    return info.model_uri
