"""Evaluation on the test split: numbers (pure functions) and the files a person reviews.

CNN: confusion matrix and per-class precision / recall. RNN: MAE / RMSE / MAPE beside naive
and seasonal-naive forecasts, forecast-vs-actual on the test window, error by hour of day.
Every table is written as CSV (DVC plots read them) and drawn as PNG (logged to MLflow).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pandas as pd
import torch


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """(n_classes, n_classes) counts, rows = actual, columns = predicted."""
    cm = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(cm, (y_true, y_pred), 1)
    return cm


def majority_rate(y_true: np.ndarray) -> float:
    """Accuracy of always answering the most common class of `y_true` (class indices)."""
    y = np.asarray(y_true, dtype=np.int64)
    return float(np.bincount(y).max() / len(y)) if len(y) else 0.0


def per_class_precision_recall(cm: np.ndarray, classes: list[str]) -> list[dict]:
    rows = []
    for i, name in enumerate(classes):
        tp, predicted, actual = cm[i, i], cm[:, i].sum(), cm[i, :].sum()
        rows.append(
            {
                "class": name,
                "precision": float(tp / predicted) if predicted else 0.0,
                "recall": float(tp / actual) if actual else 0.0,
                "support": int(actual),
            }
        )
    return rows


def error_metrics(pred: np.ndarray, true: np.ndarray) -> dict[str, float]:
    err = pred - true
    return {
        "mae": float(np.mean(np.abs(err))),
        "rmse": float(np.sqrt(np.mean(err**2))),
        "mape": float(100 * np.mean(np.abs(err) / np.maximum(np.abs(true), 1e-9))),
    }


def error_by_hour(timestamps: pd.DatetimeIndex, abs_error: np.ndarray) -> pd.DataFrame:
    frame = pd.DataFrame({"hour": timestamps.hour, "abs_error": abs_error})
    return frame.groupby("hour", as_index=False)["abs_error"].mean()


# --- collecting predictions ------------------------------------------------------------------


@torch.no_grad()
def predict_classes(model: torch.nn.Module, loader) -> tuple[np.ndarray, np.ndarray]:
    model.eval()
    preds, trues = [], []
    for x, y in loader:  # x (B, C, H, W), y (B,)
        preds.append(model(x.to(model.device)).argmax(dim=1).cpu())
        trues.append(y)
    return torch.cat(trues).numpy(), torch.cat(preds).numpy()


@torch.no_grad()
def predict_series(model: torch.nn.Module, loader, seasonal_period: int) -> dict[str, np.ndarray]:
    """Scaled (N, H) arrays: truth, model, naive (last input), seasonal-naive (period ago).

    Inputs are [target, *features] per step, so the naive forecast is the last input's target
    and the seasonal-naive one the target `seasonal_period` steps before each forecast step.
    """
    model.eval()
    out: dict[str, list] = {"true": [], "model": [], "naive": [], "seasonal_naive": []}
    for x, y in loader:  # x (B, T, F), y (B, H)
        window, horizon = x.shape[1], y.shape[1]
        out["true"].append(y.float())
        out["model"].append(model(x.to(model.device)).float().cpu())
        out["naive"].append(x[:, -1:, 0].expand(-1, horizon))
        if window >= seasonal_period >= horizon:
            start = window - seasonal_period
            out["seasonal_naive"].append(x[:, start : start + horizon, 0])
    return {k: torch.cat(v).numpy() for k, v in out.items() if v}


def forecast_metrics(arrays: dict[str, np.ndarray], unscale) -> dict[str, float]:
    """test_{mae,rmse,mape} for the model and test_{naive,seasonal_naive}_* in target units."""
    true = unscale(arrays["true"])
    metrics: dict[str, float] = {}
    for name in ("model", "naive", "seasonal_naive"):
        if name not in arrays:
            continue
        prefix = "test_" if name == "model" else f"test_{name}_"
        for k, v in error_metrics(unscale(arrays[name]), true).items():
            metrics[prefix + k] = v
    if "test_naive_mae" in metrics:
        metrics["test_mae_vs_naive"] = metrics["test_mae"] / metrics["test_naive_mae"]
    if "test_seasonal_naive_mae" in metrics:
        metrics["test_mae_vs_seasonal_naive"] = (
            metrics["test_mae"] / metrics["test_seasonal_naive_mae"]
        )
    return metrics


# --- files -----------------------------------------------------------------------------------


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def write_csv(rows: list[dict], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["empty"])
        writer.writeheader()
        writer.writerows(rows)


def classifier_metrics(y_true, y_pred, classes: list[str]) -> dict[str, float]:
    """test_acc, the majority-class rate (the sanity floor's baseline), recall per class."""
    cm = confusion_matrix(y_true, y_pred, len(classes))
    return {
        "test_acc": float(np.mean(np.asarray(y_true) == np.asarray(y_pred))),
        "test_majority_rate": majority_rate(y_true),
        **{
            f"test_recall_{r['class']}": r["recall"]
            for r in per_class_precision_recall(cm, classes)
        },
    }


def write_classifier_report(y_true, y_pred, classes: list[str], out_dir: Path) -> None:
    """confusion.csv (one row per test image), per_class.csv and confusion_matrix.png."""
    cm = confusion_matrix(y_true, y_pred, len(classes))
    # one row per test image: DVC's confusion template counts (actual, predicted) pairs
    write_csv(
        [
            {"actual": classes[a], "predicted": classes[p]}
            for a, p in zip(y_true, y_pred, strict=True)
        ],
        out_dir / "confusion.csv",
    )
    pr = per_class_precision_recall(cm, classes)
    write_csv(pr, out_dir / "per_class.csv")
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 5))
    ax.imshow(cm, cmap="Blues")
    ax.set(
        xticks=range(len(classes)), yticks=range(len(classes)), xlabel="predicted", ylabel="actual"
    )
    ax.set_xticklabels(classes)
    ax.set_yticklabels(classes)
    for (i, j), n in np.ndenumerate(cm):
        ax.text(
            j,
            i,
            str(n),
            ha="center",
            va="center",
            fontsize=7,
            color="white" if n > cm.max() / 2 else "black",
        )
    ax.set_title("confusion matrix (test)")
    fig.tight_layout()
    fig.savefig(out_dir / "confusion_matrix.png", dpi=100)
    plt.close(fig)


def write_forecast_report(
    timestamps: pd.DatetimeIndex, true: np.ndarray, pred: np.ndarray, out_dir: Path, target: str
) -> None:
    """First-step forecasts over the test window, in target units: (N,) arrays."""
    out_dir.mkdir(parents=True, exist_ok=True)
    write_csv(
        [
            {"timestamp": t.isoformat(), "actual": float(a), "forecast": float(p)}
            for t, a, p in zip(timestamps, true, pred, strict=True)
        ],
        out_dir / "forecast.csv",
    )
    by_hour = error_by_hour(timestamps, np.abs(pred - true))
    write_csv(by_hour.to_dict("records"), out_dir / "error_by_hour.csv")
    plt = _plt()
    fig, ax = plt.subplots(figsize=(10, 4))
    ax.plot(timestamps, true, label="actual", linewidth=1)
    ax.plot(timestamps, pred, label="forecast", linewidth=1)
    ax.set(title=f"{target}: forecast vs actual (test window)", ylabel=target)
    ax.legend()
    fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(out_dir / "forecast_vs_actual.png", dpi=100)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.bar(by_hour["hour"], by_hour["abs_error"])
    ax.set(
        title="mean absolute error by hour of day (UTC)",
        xlabel="hour",
        ylabel=f"|error| ({target})",
    )
    fig.tight_layout()
    fig.savefig(out_dir / "error_by_hour.png", dpi=100)
    plt.close(fig)


def write_history(rows: list[dict[str, float]], path: Path) -> None:
    keys = ["epoch"] + sorted({k for r in rows for k in r} - {"epoch"})
    write_csv([{k: r.get(k, "") for k in keys} for r in rows], path)


def plot_history(rows: list[dict[str, float]], path: Path, title: str) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    epochs = [r["epoch"] for r in rows]
    for key in ("train_loss", "val_loss"):
        ax.plot(epochs, [r.get(key, np.nan) for r in rows], marker="o", label=key)
    ax.set(xlabel="epoch", ylabel="loss", title=title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
