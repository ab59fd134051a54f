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
    source: str = "builtin:vic_elec"  # builtin:vic_elec | csv:<file> | parquet:<file> | jsonl:<file>
    timestamp: str = "Time"
    target: str = "Demand"
    features: list[str] = ["Temperature"]
    last_days: int | None = Field(365, ge=1)  # keep the newest N days at ingest; null keeps all
    shard_rows: int = Field(100_000, ge=1)

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
    min_rows: int = Field(10, ge=1)
    max_rows: int = Field(50_000_000, ge=1)
    min_per_class: int = Field(1, ge=0)
    height: int = Field(28, ge=1)
    width: int = Field(28, ge=1)
    mode: str = "L"  # PIL mode: L = 8-bit grey
    max_pixels: int = Field(2**24, ge=1)  # larger declared sizes are refused before decoding
    max_quarantine_fraction: float = Field(0.01, ge=0, le=1)


class SeriesQuality(Strict):
    min_rows: int = Field(10, ge=1)
    max_rows: int = Field(500_000_000, ge=1)
    # A hole in a series cannot be windowed without imputation, so by default any bad row fails.
    max_quarantine_fraction: float = Field(0.0, ge=0, le=1)


class QualitySettings(Strict):
    images: ImageQuality = ImageQuality()
    series: SeriesQuality = SeriesQuality()


# --- prepare -------------------------------------------------------------------------------


class ImagePrepare(Strict):
    val_fraction: float = Field(0.1, gt=0, lt=1)
    test_fraction: float = Field(0.2, gt=0, lt=1)


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
    limit_train_batches: float | int = 1.0
    deterministic: bool = True


class CNNParams(Strict):
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(1e-3, gt=0)
    conv: list[int] = [32, 64, 64]
    dense: int = Field(64, ge=1)


class RNNParams(Strict):
    cell: Literal["lstm", "gru"] = "lstm"
    layers: int = Field(3, ge=1)
    hidden: int = Field(64, ge=1)
    dropout: float = Field(0.0, ge=0, lt=1)
    window: int = Field(48, ge=1)  # past steps seen by the model
    horizon: int = Field(1, ge=1)  # steps ahead predicted
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(1e-3, gt=0)
    seasonal_period: int = Field(24, ge=1)  # for the seasonal-naive baseline


class TrainSettings(Strict):
    trainer: Trainer = Trainer()
    cnn: CNNParams = CNNParams()
    rnn: RNNParams = RNNParams()


class MlflowSettings(Strict):
    tracking_uri: str = "sqlite:///mlflow.db"  # MLFLOW_TRACKING_URI overrides
    artifact_root: str = "mlartifacts"
    experiment: str = "bigdeep"


class Settings(Strict):
    seed: int = 42
    data: DataSettings = DataSettings()
    quality: QualitySettings = QualitySettings()
    prepare: PrepareSettings = PrepareSettings()
    train: TrainSettings = TrainSettings()
    mlflow: MlflowSettings = MlflowSettings()


class ConfigError(ValueError):
    """params.yaml is missing, unreadable or has a wrong key or value."""


def load_settings(path: str | Path = "params.yaml") -> Settings:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise ConfigError(f"{path}: not found (run from the project root or pass --params)") from None
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
