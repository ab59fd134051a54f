"""The two training jobs as params.yaml describes them: data module, model, evaluation, registry.

A new model is a new builder here returning a `Job`; `bigdeep.train` runs any job.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn
from torch.nn import functional as F

from bigdeep import evaluate, explain
from bigdeep.config import Settings
from bigdeep.models.metrics import StagedModule
from bigdeep.registry import Floor
from bigdeep.training.core import Arrays, Job
from bigdeep.training.plumbing import fastest_precision, pin_memory_for, precision_for
from bigdeep.training.privacy import private


def _loader_args(settings: Settings, batch_size: int, seed: int | None) -> dict[str, Any]:
    """What both data modules take from params.yaml for their loaders. Differential privacy
    keeps the DataLoader path: Opacus draws its own Poisson-sampled batches from it."""
    tcfg = settings.train.trainer
    return {
        "batch_size": batch_size,
        "num_workers": tcfg.num_workers,
        "pin_memory": pin_memory_for(tcfg),
        "seed": settings.seed if seed is None else seed,
        "device_data": "off" if settings.train.privacy.enabled else tcfg.device_data,
        "device_budget_fraction": tcfg.device_budget_fraction,
    }


def _gpu_first(settings: Settings, dm, model: StagedModule, loss) -> tuple[str, dict[str, Any]]:
    """Compile and precision for the job (README "GPU training"): (precision, params to log).

    `train.trainer.compile` applies (not under differential privacy: Opacus hooks the eager
    modules); `precision: null` is measured on a train batch (`fastest_precision`)."""
    tcfg = settings.train.trainer
    compile_mode = False if settings.train.privacy.enabled else tcfg.compile
    model.use_compile(compile_mode)
    precision, timings = precision_for(tcfg), {}
    if tcfg.precision is None and precision == "bf16-mixed":  # a GPU that has bf16: measure
        batch = next(iter(dm.eval_dataloader("train")))
        precision, timings = fastest_precision(tcfg, model, batch, loss)
    params: dict[str, Any] = {"trainer.precision": precision, "trainer.compile": compile_mode}
    params |= {f"trainer.precision_ms.{k}": round(v, 3) for k, v in timings.items()}
    return precision, params


def cpu_copy(net: nn.Module) -> nn.Module:
    """A frozen copy of `net` on the CPU in eval mode: attributions never touch the model."""
    net = copy.deepcopy(net).cpu().eval()
    return net.requires_grad_(False)  # IG needs gradients of the inputs only


def accuracy(probs: np.ndarray, y: np.ndarray) -> float:
    """Share of rows whose most probable class is the label: (N, classes), (N,)."""
    return float((np.asarray(probs).argmax(axis=1) == y).mean())


def build_image_job(settings: Settings, data_dir: Path, seed: int | None = None) -> Job:
    """The CNN job: ImageDataModule (set up) and ImageClassifier as params.yaml describes them."""
    from bigdeep.data.datamodules import ImageDataModule
    from bigdeep.models.cnn import ImageClassifier

    cfg, reg = settings.train.cnn, settings.registry
    dm = ImageDataModule(
        data_dir,
        **_loader_args(settings, cfg.batch_size, seed),
        memory_mb=settings.train.trainer.memory_mb,
        augment_rotate=cfg.augment_rotate,
        augment_shift=cfg.augment_shift,
        augment_scale=cfg.augment_scale,
    )
    dm.setup("fit")
    model = ImageClassifier(
        num_classes=dm.num_classes,
        in_channels=dm.channels,  # and image_size: the prepared data's, 1 x 28 x 28 for MNIST
        conv=list(cfg.conv),
        dense=cfg.dense,
        lr=cfg.lr,
        image_size=dm.image_size,
        input_mean=dm.pixel_mean,  # from the train split; travels inside the exported model
        input_std=dm.pixel_std,
        schedule=cfg.schedule,
        weight_decay=cfg.weight_decay,
        label_smoothing=cfg.label_smoothing,
        channels_last=cfg.channels_last,
    )
    classes = list(dm.classes)
    precision, trainer_params = _gpu_first(settings, dm, model, F.cross_entropy)

    def predict() -> Arrays:
        y_true, y_pred = evaluate.predict_classes(model, dm.eval_dataloader("test"))
        return {"true": y_true, "pred": y_pred}  # (N,) class indices each

    def explain_(folder: Path) -> tuple[explain.ImageExplanation, dict[str, float]]:
        x = settings.train.explain
        e = explain.explain_images(
            cpu_copy(model.net),  # logits: attributions add up to the class score's change
            dm.eval_dataloader("test"),
            per_class=x.per_class,
            wrong=x.wrong,
            steps=x.steps,
            seed=settings.seed if seed is None else seed,
        )
        return e, explain.write_image_explanation(e, classes, folder)

    job = Job(
        name="cnn",
        dataset="images",
        datamodule=dm,
        model=model,
        epochs=cfg.epochs,
        patience=cfg.patience,
        params={f"cnn.{k}": v for k, v in cfg.model_dump().items()}
        # splits over train.trainer.memory_mb, read from disk in blocks (none: all in memory)
        | {"data.streamed": ",".join(dm.streamed) or "none"}
        # what a served model expects: (B, C, H, W) float32 in [0, 1]
        | {"data.input_shape": "x".join(map(str, (dm.channels, *dm.image_size)))}
        | trainer_params,
        history_keys=("train_loss", "train_acc", "val_loss", "val_acc"),
        predict=predict,
        test_metrics=lambda p: evaluate.classifier_metrics(p["true"], p["pred"], classes),
        write_report=lambda p, folder: evaluate.write_classifier_report(
            p["true"], p["pred"], classes, folder
        ),
        metric="test_acc",
        higher_is_better=True,
        margin=reg.cnn_margin,
        score=accuracy,
        floor=lambda m: Floor.majority_class(m["test_majority_rate"], reg.cnn_floor_margin),
        explain=explain_,
        precision=precision,
    )
    return private(job, settings)  # the same job unless train.privacy is on


def build_series_job(settings: Settings, data_dir: Path, seed: int | None = None) -> Job:
    """The RNN job: SeriesDataModule (set up) and SeriesForecaster as params.yaml describes them."""
    from bigdeep.data.datamodules import SeriesDataModule
    from bigdeep.models.rnn import SeriesForecaster

    cfg, reg = settings.train.rnn, settings.registry
    dm = SeriesDataModule(
        data_dir,
        window=cfg.window,
        horizon=cfg.horizon,
        **_loader_args(settings, cfg.batch_size, seed),
        calendar=list(cfg.calendar),
        calendar_tz=cfg.calendar_tz,
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
        schedule=cfg.schedule,
        weight_decay=cfg.weight_decay,
        # under DP each sample's gradient is clipped (train.privacy.max_grad_norm) instead
        grad_clip=0.0 if settings.train.privacy.enabled else cfg.grad_clip,
        # the exported model takes and gives the source's units (`SourceUnits`)
        input_mean=dm.input_scaler[0],
        input_std=dm.input_scaler[1],
        target_mean=dm.scaler[dm.target]["mean"],
        target_std=dm.scaler[dm.target]["std"],
    )
    unscale = dm.inverse_target
    precision, trainer_params = _gpu_first(settings, dm, model, F.mse_loss)

    def write_report(arrays: Arrays, folder: Path) -> None:
        frame = dm.split_frame("test")  # test loader is unshuffled: same order as `arrays`
        # the first forecast step of each window, in target units
        true, pred = unscale(arrays["true"][:, 0]), unscale(arrays["model"][:, 0])
        evaluate.write_forecast_report(frame.timestamps, true, pred, folder, dm.target)

    def explain_(folder: Path) -> tuple[explain.WindowExplanation, dict[str, float]]:
        x = settings.train.explain
        e = explain.explain_windows(
            cpu_copy(model.net),
            dm.eval_dataloader("test"),
            dm.input_columns,
            windows=x.windows,
            steps=x.steps,
            seed=settings.seed if seed is None else seed,
        )
        return e, explain.write_window_explanation(e, folder, dm.freq)

    job = Job(
        name="rnn",
        dataset="series",
        datamodule=dm,
        model=model,
        epochs=cfg.epochs,
        patience=cfg.patience,
        params={
            **{f"rnn.{k}": v for k, v in cfg.model_dump().items()},
            # what a served model expects: (B, window, F) in the source's units, these columns
            "rnn.input_columns": ",".join(dm.input_columns),
            "rnn.input_units": "source",
            **trainer_params,
        },
        history_keys=("train_loss", "train_mae", "val_loss", "val_mae"),
        predict=lambda: evaluate.predict_series(
            model, dm.eval_dataloader("test"), cfg.seasonal_period
        ),
        test_metrics=lambda arrays: evaluate.forecast_metrics(arrays, unscale),
        write_report=write_report,
        metric="test_mae",
        higher_is_better=False,
        margin=reg.rnn_margin,
        # in the target's units: (N, horizon) served output (target units) and scaled truth
        score=lambda pred, y: float(np.mean(np.abs(pred - unscale(y)))),
        floor=lambda m: Floor.naive_forecast(m["test_naive_mae"], reg.rnn_floor_ratio),
        explain=explain_,
        served_inputs=dm.unscale_inputs,  # the served model takes windows in source units
        precision=precision,
    )
    return private(job, settings)  # the same job unless train.privacy is on
