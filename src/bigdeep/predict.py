"""Batch predictions from a registered model, behind the same quality gate as training data.

    bigdeep predict bigdeep-cnn@champion --input photos/ --output predictions.csv
    bigdeep predict bigdeep-rnn@3 --input demand.csv --output forecast.csv

The steps (each a task of `flows/predict.py`):

1. `resolve`: the reference -> one model version (its run says CNN or RNN and what it takes).
2. `stage` + `check`: the input is read into a canonical store in a scratch folder (images:
   a folder of images or one image; series: a CSV / Parquet / JSON-lines file named by its
   suffix, columns as `data.series` in params.yaml) and validated by the same gate as training
   data (`quality/gate.py`), with the same settings, less what a batch to score cannot have:
   labels (the images are unlabelled, so class presence, balance and label drift do not apply)
   and a history (no drop or drift against the accepted version: a batch is not a new version
   of the dataset). A batch that fails is refused: `GateFailed` (exit 3) names the report,
   nothing is scored, no output is written (and an earlier output of that name is removed,
   so it cannot pass for this input).
3. `score`: images are converted as `prepare.images` says (the model's dataset settings) and
   scored; a series is resampled as `prepare.series` says, given the calendar columns the model
   was trained with, and cut into every window of the model's length.
4. `write`: `<output>` (CSV) and `<output>.json`. Every row carries the model name, version,
   run id and the input's md5 (columns, so any CSV reader sees them); the JSON sidecar holds
   the same, the gate report's path and the records the gate set aside.

The input's md5: a file's md5, or DVC's md5 of a folder (`registry.dvc_dir_md5`: what
`dvc add` would record for it).
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bigdeep.config import Settings
from bigdeep.errors import BigdeepError, GateFailed, printable

UNLABELLED = "unlabelled"  # the one "class" of a batch to score: label checks hold trivially
SERIES_SUFFIXES = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet", ".jsonl": "jsonl"}
SCORE_BATCH = 256  # rows per call to the model


class PredictError(BigdeepError, ValueError):
    """The input cannot be scored by this model; the message names the file and the fix."""


@dataclass(frozen=True)
class Model:
    """The model version to score with, and what its run says it takes."""

    ref: str
    name: str
    version: str
    run_id: str
    model_uri: str
    kind: str  # cnn | rnn
    params: dict[str, str] = field(repr=False)


@dataclass(frozen=True)
class Checked:
    """An input that passed the gate, staged in `store`."""

    kind: str  # images | series
    input: str
    md5: str
    store: str
    report: str
    quarantined: list[str]  # records the gate set aside (not scored)


@dataclass(frozen=True)
class Predicted:
    output: str
    sidecar: str
    rows: int
    summary: str


# --- 1. the model ---------------------------------------------------------------------------


def resolve(ref: str, tracking: str) -> Model:
    from mlflow.tracking import MlflowClient

    from bigdeep.registry import resolve as resolve_ref

    mv, run = resolve_ref(MlflowClient(tracking), ref)
    kind = run.data.tags.get("bigdeep.model")
    if kind not in ("cnn", "rnn"):
        raise PredictError(
            f"{ref}: its run {mv.run_id} has no bigdeep.model tag (cnn or rnn); it was not "
            "trained by `bigdeep train`, so bigdeep cannot tell what input it takes"
        )
    return Model(
        ref, mv.name, str(mv.version), mv.run_id, f"models:/{mv.name}/{mv.version}", kind,
        dict(run.data.params),
    )  # fmt: skip


# --- 2. stage and gate ---------------------------------------------------------------------


def input_md5(path: Path) -> str:
    """md5 of a file's bytes, or DVC's md5 of a folder."""
    if path.is_dir():
        from bigdeep.registry import dvc_dir_md5

        return dvc_dir_md5(path)
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def image_files(path: Path) -> list[Path]:
    """The images to score: `path` itself, or every file under the folder, sorted.

    A folder with nothing in it, or a file whose suffix is not an image's, is refused by name.
    """
    from bigdeep.data.sources import IMAGE_SUFFIXES

    if path.is_file():
        files = [path]
    else:
        files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
        if not files:
            raise PredictError(
                f"{printable(path)}: the folder holds no files; put the images to score in it "
                f"({', '.join(sorted(IMAGE_SUFFIXES))})"
            )
    others = [p for p in files if p.suffix.lower() not in IMAGE_SUFFIXES]
    if others:
        listed = ", ".join(printable(p) for p in others[:5])
        more = f" and {len(others) - 5} more" if len(others) > 5 else ""
        raise PredictError(
            f"{listed}{more}: not an image file (suffix not one of "
            f"{', '.join(sorted(IMAGE_SUFFIXES))}); remove it from the input, or convert it to PNG"
        )
    return files


def stage_images(path: Path, store: Path) -> int:
    """The images as a canonical image store: record_id = the file's path under the input."""
    import pyarrow as pa

    from bigdeep.data.sources import MAX_FILE_BYTES
    from bigdeep.data.store import IMAGE_SCHEMA, write_shards

    rows = []
    for f in image_files(path):
        if f.stat().st_size > MAX_FILE_BYTES:
            raise PredictError(f"{printable(f)}: larger than {MAX_FILE_BYTES} bytes; not an image")
        name = f.name if path.is_file() else f.relative_to(path).as_posix()
        rows.append((name, str(f), UNLABELLED, f.read_bytes()))
    frame = pd.DataFrame(rows, columns=["record_id", "source", "label", "image"])
    table = pa.Table.from_pandas(frame, schema=IMAGE_SCHEMA, preserve_index=False)
    return write_shards([table], store)


def series_settings(settings: Settings, path: Path):
    """data.series with the input file as its source (the scheme from the suffix), every row."""
    scheme = SERIES_SUFFIXES.get(path.suffix.lower())
    if scheme is None or not path.is_file():
        raise PredictError(
            f"{printable(path)}: a series model scores one file, CSV, Parquet or JSON lines "
            f"(suffix {', '.join(sorted(SERIES_SUFFIXES))}), with the columns params.yaml names "
            "in data.series (timestamp, target, features)"
        )
    return settings.data.series.model_copy(
        update={"source": f"{scheme}:{path.resolve()}", "last_days": None}
    )


def batch_quality(settings: Settings, kind: str):
    """The dataset's quality settings, less what a batch to score cannot have (module doc)."""
    history = {"max_drop_pct": 100.0, "max_drift_js": 1.0, "max_drift_linf": 1.0}
    if kind == "series":
        return settings.quality.series.model_copy(update=history)
    unlabelled = {"classes": [UNLABELLED], "min_per_class": 0, "min_rows": 1}
    return settings.quality.images.model_copy(update=history | unlabelled)


def check(settings: Settings, model: Model, input_path: Path, scratch: Path, reports: Path):
    """Stage the input and run the gate on it; GateFailed (exit 3) names the report."""
    from bigdeep.quality.drift import load_reference
    from bigdeep.quality.gate import gate_images, gate_series, write_quarantine, write_report

    if not input_path.exists():
        raise PredictError(f"{printable(input_path)}: no such file or folder")
    kind = "images" if model.kind == "cnn" else "series"
    store, quarantine = scratch / "raw", scratch / "quarantine"
    md5 = input_md5(input_path)
    no_history = load_reference(scratch / "no-reference.json", identity="batch")
    if kind == "images":
        stage_images(input_path, store)
        result = gate_images(
            "images",
            store,
            batch_quality(settings, kind),
            reference=no_history,
            conversion=settings.prepare.images,
            workers=1,
        )
    else:
        from bigdeep.ingest import ingest_series

        data = series_settings(settings, input_path)
        ingest_series(settings.model_copy(update={"data": settings.data.model_copy(
            update={"series": data})}), store)  # fmt: skip
        names = data.model_copy(update={"timestamp": "timestamp"})
        result = gate_series(
            "series", store, batch_quality(settings, kind), names, reference=no_history
        )
    report = write_report(result, reports)
    write_quarantine(result, store, quarantine)
    if not result.passed:
        from bigdeep.quality.report import failure_lines

        failures = "; ".join(failure_lines(result.report)[:5])
        raise GateFailed(
            f"{printable(input_path)} failed the {kind} quality gate, so {model.name} "
            f"v{model.version} scored nothing and no output was written: {failures}. "
            f"Report: {report}"
        )
    quarantined = sorted(set(result.quarantine["record"].astype(str)))
    return Checked(kind, str(input_path), md5, str(store), str(report), quarantined)


# --- 3. score ------------------------------------------------------------------------------


def _model_input(model_uri: str) -> tuple[int, ...]:
    from mlflow.models import get_model_info

    spec = get_model_info(model_uri).signature.inputs.to_dict()[0]["tensor-spec"]
    return tuple(spec["shape"])


def _predict(model_uri: str, x: np.ndarray) -> np.ndarray:
    import mlflow

    loaded = mlflow.pyfunc.load_model(model_uri)
    parts = [
        np.asarray(loaded.predict(x[i : i + SCORE_BATCH])) for i in range(0, len(x), SCORE_BATCH)
    ]
    return np.concatenate(parts) if parts else np.empty((0,))


def score_images(settings: Settings, model: Model, checked: Checked) -> pd.DataFrame:
    """One row per image: file, predicted class, a probability per class."""
    import torch

    from bigdeep.data.images import to_array
    from bigdeep.data.store import read_all
    from bigdeep.data.transforms import as_nchw

    frame = read_all(Path(checked.store), ["record_id", "image"])
    frame = frame[~frame["record_id"].isin(checked.quarantined)]
    pixels = np.stack([to_array(b, settings.prepare.images) for b in frame["image"]])
    x = as_nchw(torch.from_numpy(pixels)).contiguous().numpy()  # (N, C, H, W) in [0, 1]
    wanted = _model_input(model.model_uri)
    if tuple(x.shape[1:]) != tuple(wanted[1:]):
        raise PredictError(
            f"{model.name} v{model.version} takes images {'x'.join(map(str, wanted[1:]))} "
            f"(channels x height x width); {printable(checked.input)} becomes "
            f"{'x'.join(map(str, x.shape[1:]))} with this params.yaml (prepare.images size and "
            f"mode). Set prepare.images to the settings the model was trained with"
        )
    probs = _predict(model.model_uri, x)  # (N, classes)
    classes = settings.quality.images.classes
    if len(classes) != probs.shape[1]:
        classes = [str(i) for i in range(probs.shape[1])]
    out = pd.DataFrame({"file": frame["record_id"].to_numpy()})
    out["predicted"] = [classes[i] for i in probs.argmax(axis=1)]
    for i, c in enumerate(classes):
        out[f"p_{c}"] = probs[:, i]
    return out


def series_windows(
    settings: Settings, model: Model, checked: Checked
) -> tuple[np.ndarray, pd.DatetimeIndex, pd.Timedelta]:
    """Every window of the model's length, in the source's units: (N, T, F) float32, the
    timestamp of each window's first forecast step, and the step."""
    from bigdeep.data.transforms import calendar_features
    from bigdeep.prepare import read_accepted_series

    p = model.params
    if p.get("rnn.input_units") != "source":
        raise PredictError(
            f"{model.name} v{model.version} takes scaled windows (it was trained before models "
            "were served in the source's units); train it again (`bigdeep run`) and use the new version"
        )
    data = settings.data.series
    series = read_accepted_series(
        Path(checked.store),
        Path(checked.store).parent / "quarantine",
        data,
        settings.prepare.series,
    )
    holes = series[series.isna().any(axis=1)]
    if len(holes):
        raise PredictError(
            f"{printable(checked.input)}: after resampling to {settings.prepare.series.resample}, "
            f"{len(holes)} step(s) have no data, first at {holes.index[0].isoformat()}: fill the gap"
        )
    window = int(p["rnn.window"])
    calendar = ast.literal_eval(p.get("rnn.calendar", "[]"))
    tz = None if p.get("rnn.calendar_tz") in (None, "None") else p["rnn.calendar_tz"]
    extra, names = calendar_features(series.index, calendar, tz)
    columns = [data.target, *data.features, *names]
    if columns != p["rnn.input_columns"].split(","):
        raise PredictError(
            f"{model.name} v{model.version} takes the columns {p['rnn.input_columns']}; with this "
            f"params.yaml (data.series target and features) the input gives {','.join(columns)}"
        )
    if len(series) < window:
        raise PredictError(
            f"{printable(checked.input)}: {len(series)} step(s) after resampling, fewer than one "
            f"window of {window} steps the model needs; give at least {window} steps"
        )
    rows = np.concatenate([series.to_numpy(np.float64), extra], axis=1).astype(np.float32)
    starts = np.arange(len(rows) - window + 1)
    x = np.stack([rows[s : s + window] for s in starts])  # (N, T, F)
    step = series.index[1] - series.index[0] if len(series) > 1 else pd.Timedelta(0)
    first = series.index[window - 1 :] + step  # the step after each window
    return x, first, step


def score_series(settings: Settings, model: Model, checked: Checked) -> pd.DataFrame:
    """One row per window: the timestamp of its first forecast step, the forecast(s)."""
    x, first, step = series_windows(settings, model, checked)
    forecast = _predict(model.model_uri, x)  # (N, horizon), the target's units
    out = pd.DataFrame({"timestamp": first.strftime("%Y-%m-%dT%H:%M:%SZ")})
    if forecast.shape[1] == 1:
        out["forecast"] = forecast[:, 0]
    for h in range(forecast.shape[1] if forecast.shape[1] > 1 else 0):
        out[f"forecast_t+{h + 1}"] = forecast[:, h]
    return out


# --- 4. write -----------------------------------------------------------------------------


def provenance(model: Model, checked: Checked) -> dict[str, Any]:
    return {
        "model": model.name,
        "model_version": model.version,
        "run_id": model.run_id,
        "model_uri": model.model_uri,
        "ref": model.ref,
        "input": checked.input,
        "input_md5": checked.md5,
        "quality_report": checked.report,
        "quarantined": checked.quarantined,
    }


def write(frame: pd.DataFrame, model: Model, checked: Checked, output: Path) -> Predicted:
    """`output` (CSV, provenance columns first) and `<output>.json`, each written atomically."""
    info = provenance(model, checked)
    stamped = frame.copy()
    for i, key in enumerate(("model", "model_version", "run_id", "input_md5")):
        stamped.insert(i, key, info[key])
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(output.name + ".tmp")
    stamped.to_csv(tmp, index=False)
    os.replace(tmp, output)
    sidecar = sidecar_path(output)
    info |= {"output": str(output), "rows": len(frame), "columns": list(stamped.columns)}
    tmp = sidecar.with_name(sidecar.name + ".tmp")
    tmp.write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, sidecar)
    skipped = f", {len(checked.quarantined)} set aside by the gate" if checked.quarantined else ""
    summary = (
        f"predict: {len(frame)} prediction(s) from {model.name} v{model.version} "
        f"(run {model.run_id}) on {printable(checked.input)} (md5 {checked.md5}){skipped} "
        f"-> {output} (+ {sidecar.name})"
    )
    return Predicted(str(output), str(sidecar), len(frame), summary)


def sidecar_path(output: Path) -> Path:
    return output.with_name(output.name + ".json")


def clear_output(output: Path) -> list[str]:
    """Remove an earlier output of that name (and its sidecar): it cannot pass for this input."""
    removed = []
    for path in (output, sidecar_path(output)):
        if path.exists():
            path.unlink()
            removed.append(str(path))
    return removed


def reports_dir(output: Path) -> Path:
    """Where the gate's report for this output goes: `<output>.quality/` beside it."""
    return output.with_name(output.name + ".quality")


def predict(settings: Settings, ref: str, input_path: Path, output: Path, tracking: str):
    """The whole batch in one process, without Prefect (the flow runs the same steps)."""
    model = resolve(ref, tracking)
    clear_output(output)
    with tempfile.TemporaryDirectory(prefix="bigdeep-predict-") as scratch:
        checked = check(settings, model, input_path, Path(scratch), reports_dir(output))
        score = score_images if checked.kind == "images" else score_series
        return write(score(settings, model, checked), model, checked, output)
