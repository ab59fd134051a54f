"""params.yaml -> typed, strictly validated settings.

Loaded once at the edge (the CLI, the flow) and passed down. An unknown or mistyped
key is an error that names the key and the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

DATASETS = ("images", "series")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --- data sources --------------------------------------------------------------------------


class ImageData(Strict):
    source: str = "builtin:mnist"  # builtin:mnist | folder:<dir> | idx:<dir>
    per_class: int | None = Field(500, ge=1)  # cap per class at ingest; null keeps all
    shard_rows: int = Field(2000, ge=1)

    @field_validator("source")
    @classmethod
    def _known_scheme(cls, v: str) -> str:
        return _check_scheme(v, ("builtin", "folder", "idx"))


class SeriesData(Strict):
    source: str = (
        "builtin:vic_elec"  # builtin:vic_elec | csv:<file> | parquet:<file> | jsonl:<file>
    )
    timestamp: str = "Time"
    target: str = "Demand"
    features: list[str] = ["Temperature"]
    last_days: int | None = Field(365, ge=1)  # keep the newest N days at ingest; null keeps all
    shard_rows: int = Field(100_000, ge=1)
    # Refused before parsing, with the file and line: a longer line (a CSV header included)
    # or a JSON record nested deeper (json would hit Python's recursion limit near 1000).
    max_line_bytes: int = Field(1_048_576, ge=64)
    max_depth: int = Field(64, ge=1, le=512)

    @field_validator("source")
    @classmethod
    def _known_scheme(cls, v: str) -> str:
        return _check_scheme(v, ("builtin", "csv", "parquet", "jsonl"))


def _check_scheme(v: str, schemes: tuple[str, ...]) -> str:
    scheme, sep, rest = v.partition(":")
    if not sep or scheme not in schemes or not rest:
        raise ValueError(f"source {v!r} must be one of {', '.join(s + ':<...>' for s in schemes)}")
    return v


class DataSettings(Strict):
    images: ImageData = ImageData()
    series: SeriesData = SeriesData()


# --- quality gate --------------------------------------------------------------------------


class ImageQuality(Strict):
    classes: list[str] = [str(d) for d in range(10)]
    # volume
    min_rows: int = Field(10, ge=1)
    max_rows: int = Field(50_000_000, ge=1)
    min_per_class: int = Field(1, ge=0)
    max_drop_pct: float = Field(25.0, ge=0, le=100)  # fewer records than the last accepted version
    # variety
    height: int = Field(28, ge=1)
    width: int = Field(28, ge=1)
    mode: str = "L"  # PIL mode: L = 8-bit grey; channels and bit depth follow from it
    max_imbalance_ratio: float = Field(10.0, ge=1)  # largest class / smallest class
    max_drift_js: float = Field(0.1, ge=0, le=1)  # Jensen-Shannon (base 2) on pixel statistics
    max_drift_linf: float = Field(0.1, ge=0, le=1)  # L-infinity on label frequencies
    # validity / hardening
    max_pixels: int = Field(2**24, ge=1)  # larger declared sizes are refused before decoding
    max_quarantine_fraction: float = Field(0.01, ge=0, le=1)

    @field_validator("mode")
    @classmethod
    def _known_mode(cls, v: str) -> str:
        from PIL import ImageMode

        try:
            ImageMode.getmode(v)
        except KeyError:
            raise ValueError(f"{v!r} is not a PIL image mode (e.g. L, RGB, RGBA, I;16)") from None
        return v


class SeriesQuality(Strict):
    # volume
    min_rows: int = Field(10, ge=1)
    max_rows: int = Field(500_000_000, ge=1)
    max_drop_pct: float = Field(25.0, ge=0, le=100)  # fewer rows than the last accepted version
    # variety
    allow_extra_columns: bool = True  # source columns besides timestamp, target and features
    max_drift_js: float = Field(0.1, ge=0, le=1)  # Jensen-Shannon (base 2) on numeric columns
    max_drift_linf: float = Field(0.1, ge=0, le=1)  # L-infinity on categorical frequencies
    # validity
    freq: str | None = None  # expected step (pandas Timedelta, e.g. 30min); null: the most common
    # velocity
    max_gap: str | None = "1h"  # longest step between rows; null: one step of freq
    max_age: str | None = None  # newest row at most this old (e.g. 2d); null: not checked
    # A hole in a series cannot be windowed without imputation, so by default any bad row fails.
    max_quarantine_fraction: float = Field(0.0, ge=0, le=1)

    @field_validator("freq", "max_gap", "max_age")
    @classmethod
    def _duration(cls, v: str | None) -> str | None:
        if v is None:
            return v
        import pandas as pd

        try:
            step = pd.Timedelta(v)
        except ValueError:
            raise ValueError(f"{v!r} is not a duration (e.g. 30min, 1h, 2d)") from None
        if step <= pd.Timedelta(0):
            raise ValueError(f"{v!r} must be longer than zero")
        return v


class QualitySettings(Strict):
    images: ImageQuality = ImageQuality()
    series: SeriesQuality = SeriesQuality()


# --- prepare -------------------------------------------------------------------------------


class ImagePrepare(Strict):
    val_fraction: float = Field(0.1, gt=0, lt=1)
    test_fraction: float = Field(0.2, gt=0, lt=1)
    # Keep the test set a source ships (MNIST's t10k IDX files) as the test split, so test
    # accuracy is comparable with published figures; test_fraction applies to other sources.
    source_test: bool = True


class SeriesPrepare(Strict):
    resample: str | None = "1h"  # pandas offset alias; null keeps the source frequency
    train_fraction: float = Field(0.7, gt=0, lt=1)
    val_fraction: float = Field(0.15, gt=0, lt=1)


class PrepareSettings(Strict):
    images: ImagePrepare = ImagePrepare()
    series: SeriesPrepare = SeriesPrepare()


# --- train ---------------------------------------------------------------------------------


class Trainer(Strict):
    accelerator: str = "auto"
    devices: int | str = "auto"
    strategy: str = "auto"
    precision: str | None = None  # null: bf16-mixed on a GPU that supports it, else 32-true
    threads: int | None = Field(1, ge=1)  # torch CPU threads; see README (2-core machines)
    num_workers: int = Field(0, ge=0)
    pin_memory: bool | None = None  # null: on when training on a GPU
    memory_mb: float = Field(4096, ge=0)  # larger image splits (as float32) stream from disk
    limit_train_batches: float | int = 1.0
    deterministic: bool = True


class CNNParams(Strict):
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(3e-3, gt=0)  # peak learning rate under onecycle
    schedule: Literal["none", "onecycle", "cosine"] = "onecycle"  # bigdeep.models.optim
    weight_decay: float = Field(0.0, ge=0)  # > 0: AdamW with this decay
    label_smoothing: float = Field(0.1, ge=0, lt=1)
    augment_rotate: float = Field(10.0, ge=0, le=180)  # train images: degrees, +-
    augment_shift: float = Field(0.07, ge=0, lt=1)  # fraction of the image, +-
    augment_scale: float = Field(0.1, ge=0, lt=1)  # relative zoom, +-
    channels_last: bool = True
    conv: list[int] = [32, 64, 64]
    dense: int = Field(64, ge=1)
    patience: int = Field(3, ge=1)  # early stopping: epochs without a better val_loss


class RNNParams(Strict):
    cell: Literal["lstm", "gru"] = "lstm"
    layers: int = Field(3, ge=1)
    hidden: int = Field(64, ge=1)
    dropout: float = Field(0.0, ge=0, lt=1)
    window: int = Field(48, ge=1)  # past steps seen by the model
    horizon: int = Field(1, ge=1)  # steps ahead predicted
    # cyclic inputs from the timestamps, see bigdeep.data.modules.calendar_features
    calendar: list[Literal["hour", "weekday", "yearday"]] = ["hour", "weekday"]
    calendar_tz: str | None = None  # zone of the calendar inputs; null: the timestamps' own
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(3e-3, gt=0)  # peak learning rate under onecycle
    schedule: Literal["none", "onecycle", "cosine"] = "onecycle"  # bigdeep.models.optim
    weight_decay: float = Field(0.0, ge=0)  # > 0: AdamW with this decay
    grad_clip: float = Field(1.0, ge=0)  # largest gradient norm per step; 0: no clipping
    seasonal_period: int = Field(24, ge=1)  # for the seasonal-naive baseline
    patience: int = Field(3, ge=1)  # early stopping: epochs without a better val_loss

    @field_validator("calendar_tz")
    @classmethod
    def _known_zone(cls, v: str | None) -> str | None:
        if v is None:
            return v
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"{v!r} is not a time zone (e.g. UTC, Australia/Melbourne)") from None
        return v


class TrainSettings(Strict):
    trainer: Trainer = Trainer()
    cnn: CNNParams = CNNParams()
    rnn: RNNParams = RNNParams()


class MlflowSettings(Strict):
    tracking_uri: str = "sqlite:///mlflow.db"  # MLFLOW_TRACKING_URI overrides
    artifact_root: str = "mlartifacts"
    experiment: str = "bigdeep"


class RegistrySettings(Strict):
    prefix: str = "bigdeep"  # registered models are <prefix>-cnn and <prefix>-rnn
    cnn_margin: float = Field(0.0, ge=0)  # test accuracy a new CNN must gain over the champion
    rnn_margin: float = Field(0.0, ge=0)  # test MAE a new RNN must cut below the champion's


class Settings(Strict):
    seed: int = 42
    data: DataSettings = DataSettings()
    quality: QualitySettings = QualitySettings()
    prepare: PrepareSettings = PrepareSettings()
    train: TrainSettings = TrainSettings()
    mlflow: MlflowSettings = MlflowSettings()
    registry: RegistrySettings = RegistrySettings()


class ConfigError(ValueError):
    """params.yaml is missing, unreadable or has a wrong key or value."""


def load_settings(path: str | Path = "params.yaml") -> Settings:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise ConfigError(
            f"{path}: not found (run from the project root or pass --params)"
        ) from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(raw).__name__}")
    try:
        return Settings.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(_describe(path, e)) from None


def _describe(path: Path, e: ValidationError) -> str:
    lines = [f"{path}: {e.error_count()} invalid setting(s)"]
    for err in e.errors():
        key = ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            lines.append(f"  {key}: unknown key")
        else:
            lines.append(f"  {key}: {err['msg']} (got {err.get('input')!r})")
    return "\n".join(lines)


def apply_overrides(path: str | Path, overrides: dict[str, str]) -> bool:
    """Set dotted keys in params.yaml (like `dvc exp run -S key=value`), keeping its comments.

    Values are read as YAML (`3` is a number, `[1, 2]` a list). The result is validated
    before anything is written, so a wrong key fails naming it and leaves the file alone.
    Returns True when the file changed (an unchanged file keeps DVC's stages skipped).
    """
    from ruamel.yaml import YAML

    if not overrides:
        return False
    path = Path(path)
    rt = YAML()
    doc = rt.load(path.read_text(encoding="utf-8"))
    for key, text in overrides.items():
        node, *parents = key.split(".")[::-1]
        target = doc
        for part in reversed(parents):
            if part not in target:
                raise ConfigError(f"{path}: override {key}: unknown key {part!r}")
            target = target[part]
        target[node] = yaml.safe_load(str(text))
    try:
        Settings.model_validate(yaml.safe_load(_dump(rt, doc)))
    except ValidationError as e:
        raise ConfigError(_describe(path, e)) from None
    new = _dump(rt, doc)
    if new == path.read_text(encoding="utf-8"):
        return False
    path.write_text(new, encoding="utf-8")
    return True


def _dump(rt, doc) -> str:
    import io

    buf = io.StringIO()
    rt.dump(doc, buf)
    return buf.getvalue()
