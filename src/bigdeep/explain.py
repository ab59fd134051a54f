"""Attributions of a tested model: which pixels made the CNN's class, which hours and inputs the
RNN's forecast. Captum's Integrated Gradients (IG), on a CPU copy of the network.

Files written into the explain folder (`<plots>/explain`, logged to the MLflow run):

    CNN  class_mean.png        per class: mean test image beside its mean attribution map
         confident_wrong.png   the most confidently wrong test images, attributed to the
                               predicted class: what the model saw that was not there
         class_share.csv       per class: images, share of |attribution| in the image centre
                               (the middle half of each side, a quarter of the pixels) and in
                               the top 10 % of pixels (how concentrated the evidence is)
    RNN  window.png            mean |attribution| per (steps back, input column), a heat map
         window.csv            the same, long: steps_back, column, share (all sum to 1)
         by_column.csv         per input column (target lags, features, calendar sin/cos)
         by_step.csv           per step back
    both summary.json          the figures also logged as MLflow metrics (`explain_*`)

Why IG: it satisfies completeness (a sample's attributions add up to F(input) - F(baseline),
so shares of |attribution| are shares of the output's change) and needs only gradients, so it
works unchanged on the CNN and the LSTM/GRU. Baseline: all zeros, which is a black image for
the CNN (inputs in [0, 1]; the network standardises inside) and, for the series, every
standardised input at its train mean with the calendar sin/cos at the circle's centre (no time
of day favoured): "nothing" for the images, "an average hour" for the series.

The functions here are pure (arrays and loaders in, arrays out) or write files; the training
jobs wire them to a model (`bigdeep.training.jobs`), the shell (`bigdeep.train`) times, logs and
guards them.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from bigdeep.evaluate import _plt, write_csv

# Elements (input size x IG steps x rows) per forward pass: bounds the memory of a chunk of
# attributions (about 100 MB of activations for the default CNN) whatever the image size.
CHUNK_ELEMENTS = 2**20
TOP_FRACTION = 0.1  # class_share.csv's top10_share: the share in the top 10 % of pixels

OFF_NOTE = (
    "Explanations are off (params.yaml train.explain.enabled: false), so this folder holds no "
    "attributions. Set it to true and re-run the train stage to get them here and in the "
    "MLflow run (README, section Explanations).\n"
)


@dataclass(frozen=True)
class ImageExplanation:
    """IG attributions of a seeded sample per class and of the most confidently wrong images."""

    inputs: np.ndarray  # (N, C, H, W) the per-class sample, in [0, 1]
    attributions: np.ndarray  # (N, C, H, W) towards each image's true class
    labels: np.ndarray  # (N,) true class of each
    wrong_inputs: np.ndarray  # (W, C, H, W), most confident first
    wrong_attributions: np.ndarray  # (W, C, H, W) towards the predicted class
    wrong_true: np.ndarray  # (W,)
    wrong_pred: np.ndarray  # (W,)
    wrong_confidence: np.ndarray  # (W,) probability of the predicted class
    test_wrong: int  # misclassified test images in all
    ig_error: float  # completeness error: sum |delta| / sum |F(x) - F(0)|


@dataclass(frozen=True)
class WindowExplanation:
    """IG attributions of a seeded sample of test windows, towards the first forecast step."""

    inputs: np.ndarray  # (N, T, F) scaled
    attributions: np.ndarray  # (N, T, F)
    columns: list[str]  # the F input columns' names
    ig_error: float


# --- computing -------------------------------------------------------------------------------


def integrated_gradients(
    net: nn.Module, x: np.ndarray, target: np.ndarray, steps: int
) -> tuple[np.ndarray, float]:
    """IG of output column `target[i]` of row i, from the all-zero baseline: (attributions like
    `x`, relative completeness error). `net` must be in eval mode; it is not changed."""
    from captum.attr import IntegratedGradients

    ig = IntegratedGradients(net)
    rows = max(1, CHUNK_ELEMENTS // (steps * max(1, x[0].size)))  # rows per chunk
    attributions, deltas, totals = [], [], []
    for start in range(0, len(x), rows):
        xs = torch.from_numpy(np.ascontiguousarray(x[start : start + rows], dtype=np.float32))
        ts = torch.from_numpy(np.asarray(target[start : start + rows], dtype=np.int64))
        attr, delta = ig.attribute(
            xs,
            baselines=torch.zeros_like(xs),
            target=ts,
            n_steps=steps,  # Gauss-Legendre nodes, captum's default method
            return_convergence_delta=True,
        )
        attr = attr.detach()
        attributions.append(attr.numpy())
        deltas.append(delta.detach().abs().numpy())
        # delta = sum(attr) - (F(x) - F(0)), so F(x) - F(0) = sum(attr) - delta
        totals.append((attr.flatten(1).sum(1) - delta.detach()).abs().numpy())
    error = float(np.concatenate(deltas).sum() / max(np.concatenate(totals).sum(), 1e-12))
    return np.concatenate(attributions), error


def region_share(attributions: np.ndarray, region: np.ndarray | int) -> float:
    """Share of the total |attribution| that falls in `region`.

    `region`: a boolean mask over the trailing axes (an image's (H, W), broadcast over samples
    and channels), or an int: that column (last axis) of series windows (N, T, F).
    """
    a = np.abs(np.asarray(attributions, dtype=np.float64))
    total = a.sum()
    if total == 0:
        return 0.0
    if isinstance(region, (int, np.integer)):
        return float(a[..., int(region)].sum() / total)
    mask = np.asarray(region, dtype=bool)
    if mask.shape != a.shape[a.ndim - mask.ndim :]:
        raise ValueError(f"mask shape {mask.shape} does not match attributions {a.shape}")
    return float((a * mask).sum() / total)


def centre_mask(height: int, width: int) -> np.ndarray:
    """(H, W) True in the middle half of each side: a quarter of the pixels."""
    mask = np.zeros((height, width), dtype=bool)
    mask[height // 4 : height - height // 4, width // 4 : width - width // 4] = True
    return mask


def top_share(attributions: np.ndarray, fraction: float = TOP_FRACTION) -> float:
    """Mean over images (N, C, H, W) of the share of |attribution| in their top pixels."""
    pixels = np.abs(attributions).sum(axis=1).reshape(len(attributions), -1)  # (N, H*W)
    k = max(1, int(round(fraction * pixels.shape[1])))
    top = -np.sort(-pixels, axis=1)[:, :k].sum(axis=1)
    totals = pixels.sum(axis=1)
    return float(np.mean(np.divide(top, totals, out=np.zeros_like(top), where=totals > 0)))


def class_sample(labels: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """Row indices: up to `per_class` of each class, drawn with `seed`; grouped by class."""
    rng = np.random.default_rng(seed)
    picks = []
    for c in np.unique(labels):
        rows = np.flatnonzero(labels == c)
        picks.append(np.sort(rng.choice(rows, size=min(per_class, len(rows)), replace=False)))
    return np.concatenate(picks) if picks else np.empty(0, dtype=np.int64)


def confidently_wrong(probs: np.ndarray, labels: np.ndarray, n: int) -> np.ndarray:
    """Row indices of up to `n` misclassified rows, the highest predicted probability first."""
    pred = probs.argmax(axis=1)
    wrong = np.flatnonzero(pred != labels)
    confidence = probs[wrong, pred[wrong]]
    return wrong[np.argsort(-confidence, kind="stable")][:n]


@torch.no_grad()
def class_probabilities(net: nn.Module, loader: Iterable) -> tuple[np.ndarray, np.ndarray]:
    """Softmax of `net` over every batch of `loader`: (probs (N, K), labels (N,))."""
    probs, labels = [], []
    for x, y in loader:
        probs.append(torch.softmax(net(x.float()), dim=1).numpy())
        labels.append(y.numpy())
    return np.concatenate(probs), np.concatenate(labels)


def gather(loader: Iterable, indices: np.ndarray) -> np.ndarray:
    """The inputs at `indices` (in that order) from one pass over `loader`: (len(indices), ...)."""
    wanted = np.asarray(indices, dtype=np.int64)
    found: dict[int, np.ndarray] = {}
    start = 0
    for x, _ in loader:
        end = start + len(x)
        for i in wanted[(wanted >= start) & (wanted < end)]:
            found[int(i)] = x[int(i) - start].float().numpy()
        start = end
    missing = sorted(set(wanted.tolist()) - set(found))
    if missing:
        raise ValueError(f"rows {missing[:5]} are not in the loader's {start} samples")
    return np.stack([found[int(i)] for i in wanted]) if len(wanted) else np.empty(0)


def explain_images(
    net: nn.Module, loader: Iterable, per_class: int, wrong: int, steps: int, seed: int
) -> ImageExplanation:
    """IG of a trained classifier (`net`: (B, C, H, W) in [0, 1] -> logits) over the test split
    `loader` (in a fixed order): a seeded sample per true class, and the `wrong` most
    confidently misclassified images."""
    probs, labels = class_probabilities(net, loader)
    sample = class_sample(labels, per_class, seed)
    wrong_rows = confidently_wrong(probs, labels, wrong)
    x = gather(loader, np.concatenate([sample, wrong_rows]))
    pred = probs.argmax(axis=1)
    targets = np.concatenate([labels[sample], pred[wrong_rows]])
    attributions, error = integrated_gradients(net, x, targets, steps)
    n = len(sample)
    return ImageExplanation(
        inputs=x[:n],
        attributions=attributions[:n],
        labels=labels[sample],
        wrong_inputs=x[n:],
        wrong_attributions=attributions[n:],
        wrong_true=labels[wrong_rows],
        wrong_pred=pred[wrong_rows],
        wrong_confidence=probs[wrong_rows, pred[wrong_rows]],
        test_wrong=int((pred != labels).sum()),
        ig_error=error,
    )


def explain_windows(
    net: nn.Module, loader: Iterable, columns: Sequence[str], windows: int, steps: int, seed: int
) -> WindowExplanation:
    """IG of a forecaster (`net`: (B, T, F) -> (B, horizon)) towards its first forecast step,
    for a seeded sample of `windows` test windows from `loader`."""
    n = sum(len(y) for _, y in loader)
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(n, size=min(windows, n), replace=False))
    x = gather(loader, rows)  # (N, T, F)
    if x.shape[2] != len(columns):
        raise ValueError(f"windows have {x.shape[2]} input columns, names given for {columns}")
    attributions, error = integrated_gradients(net, x, np.zeros(len(x), dtype=np.int64), steps)
    return WindowExplanation(x, attributions, list(columns), error)


def window_shares(attributions: np.ndarray) -> np.ndarray:
    """(N, T, F) -> (T, F): mean |attribution| per time step and input column, summing to 1."""
    mean = np.abs(attributions).mean(axis=0)
    total = mean.sum()
    return mean / total if total > 0 else mean


# --- writing ---------------------------------------------------------------------------------


def reset_folder(folder: Path, note: str | None = None) -> None:
    """An empty `folder` (the previous model's explanations removed), with README.txt = `note`."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True, exist_ok=True)
    if note is not None:
        (folder / "README.txt").write_text(note)


def metric_key(name: str) -> str:
    """A column name as an MLflow metric key (letters, digits, _ - . / and space)."""
    return re.sub(r"[^\w\-./ ]", "_", name)


def write_image_explanation(e: ImageExplanation, classes: Sequence[str], folder: Path) -> dict:
    """class_mean.png, confident_wrong.png, class_share.csv, summary.json -> the figures."""
    folder.mkdir(parents=True, exist_ok=True)
    centre = centre_mask(*e.inputs.shape[2:]) if len(e.inputs) else None
    rows, pairs = [], []
    for c in np.unique(e.labels):
        mine = e.labels == c
        rows.append(
            {
                "class": classes[c],
                "images": int(mine.sum()),
                "centre_share": round(region_share(e.attributions[mine], centre), 4),
                "top10_share": round(top_share(e.attributions[mine]), 4),
            }
        )
        pairs.append(
            (
                e.inputs[mine].mean(axis=0),
                e.attributions[mine].mean(axis=0),
                f"{classes[c]}: mean of {int(mine.sum())}",
                f"attribution to {classes[c]}",
            )
        )
    write_csv(rows, folder / "class_share.csv")
    write_pairs(
        pairs,
        folder / "class_mean.png",
        "Integrated Gradients per class (test images): red is evidence for the class, "
        "blue against; each map on its own symmetric scale",
    )
    wrong = [
        (
            e.wrong_inputs[i],
            e.wrong_attributions[i],
            f"true {classes[e.wrong_true[i]]}",
            f"said {classes[e.wrong_pred[i]]} ({e.wrong_confidence[i]:.0%})",
        )
        for i in range(len(e.wrong_inputs))
    ]
    write_pairs(
        wrong,
        folder / "confident_wrong.png",
        f"the {len(wrong)} most confidently wrong of {e.test_wrong} misclassified test images: "
        "attribution to the predicted class",
        empty="no misclassified test image",
    )
    figures = {
        "explain_images": float(len(e.inputs)),
        "explain_wrong_shown": float(len(e.wrong_inputs)),
        "explain_centre_share": region_share(e.attributions, centre) if len(e.inputs) else 0.0,
        "explain_top10_share": top_share(e.attributions) if len(e.inputs) else 0.0,
        "explain_ig_error": e.ig_error,
    }
    _write_summary(figures, folder)
    return figures


def write_window_explanation(e: WindowExplanation, folder: Path, freq: str | None) -> dict:
    """window.png, window.csv, by_column.csv, by_step.csv, summary.json -> the figures."""
    folder.mkdir(parents=True, exist_ok=True)
    shares = window_shares(e.attributions)  # (T, F), oldest step first
    t = shares.shape[0]
    back = np.arange(t, 0, -1)  # steps back of each row of `shares`: T .. 1
    write_csv(
        [
            {"steps_back": int(back[i]), "column": col, "share": round(float(shares[i, j]), 6)}
            for j, col in enumerate(e.columns)
            for i in reversed(range(t))
        ],
        folder / "window.csv",
    )
    by_column = shares.sum(axis=0)
    write_csv(
        [
            {"column": c, "share": round(float(s), 6)}
            for c, s in zip(e.columns, by_column, strict=True)
        ],
        folder / "by_column.csv",
    )
    by_step = shares.sum(axis=1)
    write_csv(
        [{"steps_back": int(back[i]), "share": round(float(by_step[i]), 6)} for i in range(t)][
            ::-1
        ],
        folder / "by_step.csv",
    )
    plot_window(shares, e.columns, folder / "window.png", freq, len(e.inputs))
    top = int(np.argmax(by_column))
    figures = {
        "explain_windows": float(len(e.inputs)),
        "explain_top_column_share": float(by_column[top]),
        "explain_last_step_share": float(by_step[-1]),
        "explain_ig_error": e.ig_error,
        **{
            f"explain_share.{metric_key(c)}": float(s)
            for c, s in zip(e.columns, by_column, strict=True)
        },
    }
    _write_summary({**figures, "top_column": e.columns[top]}, folder)
    return figures


def _write_summary(figures: dict, folder: Path) -> None:
    rounded = {k: round(v, 6) if isinstance(v, float) else v for k, v in figures.items()}
    (folder / "summary.json").write_text(json.dumps(rounded, indent=2, sort_keys=True) + "\n")


def _as_picture(image: np.ndarray) -> tuple[np.ndarray, str | None]:
    """(C, H, W) in [0, 1] -> what imshow takes: (H, W) grey or (H, W, 3) colour, and a cmap."""
    if image.shape[0] == 1:
        return image[0], "gray"
    return np.clip(np.moveaxis(image[:3], 0, -1), 0, 1), None


def write_pairs(
    pairs: Sequence[tuple[np.ndarray, np.ndarray, str, str]],
    path: Path,
    title: str,
    cols: int = 5,
    empty: str = "nothing to show",
) -> None:
    """A grid of (input, attribution map) pairs side by side, `cols` pairs a row.

    Each pair: input (C, H, W) in [0, 1], attribution (C, H, W) summed over channels and drawn
    with a diverging colormap centred at 0 (red +, blue -), and a title for each half.
    """
    from matplotlib.colors import TwoSlopeNorm

    plt = _plt()
    cols = max(1, min(cols, len(pairs)))
    nrows = max(1, -(-len(pairs) // cols))
    fig, axes = plt.subplots(
        nrows, 2 * cols, figsize=(2.6 * cols, 1.5 * nrows + 0.6), squeeze=False
    )
    for ax in axes.flat:
        ax.axis("off")
    for k, (image, attribution, left, right) in enumerate(pairs):
        r, c = divmod(k, cols)
        picture, cmap = _as_picture(image)
        axes[r, 2 * c].imshow(picture, cmap=cmap, vmin=0, vmax=1)
        axes[r, 2 * c].set_title(left, fontsize=7)
        heat = attribution.sum(axis=0)  # (H, W) signed
        scale = float(np.abs(heat).max()) or 1.0
        norm = TwoSlopeNorm(vcenter=0.0, vmin=-scale, vmax=scale)
        axes[r, 2 * c + 1].imshow(heat, cmap="RdBu_r", norm=norm)
        axes[r, 2 * c + 1].set_title(right, fontsize=7)
    if not pairs:
        axes[0, 0].text(0.5, 0.5, empty, ha="center", va="center", fontsize=9)
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_window(
    shares: np.ndarray, columns: Sequence[str], path: Path, freq: str | None, n: int
) -> None:
    """Heat map of (T, F) shares: x steps back (oldest left, most recent right), y columns."""
    plt = _plt()
    t, f = shares.shape
    fig, ax = plt.subplots(figsize=(min(14, 4 + 0.15 * t), 1.2 + 0.45 * f))
    image = ax.imshow(shares.T, aspect="auto", cmap="magma_r", vmin=0, interpolation="nearest")
    ticks = np.unique(np.linspace(0, t - 1, min(t, 12)).round().astype(int))
    ax.set_xticks(ticks, [str(t - i) for i in ticks])
    by_column = shares.sum(axis=0)
    ax.set_yticks(
        range(f), [f"{c} ({s:.0%})" for c, s in zip(columns, by_column, strict=True)], fontsize=8
    )
    step = f" ({freq} each)" if freq else ""
    ax.set_xlabel(f"steps back{step}; 1 = the most recent input")
    ax.set_title(
        f"share of mean |attribution| over {n} test windows (first forecast step)", fontsize=9
    )
    fig.colorbar(image, ax=ax, label="share")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
