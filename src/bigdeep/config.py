"""params.yaml -> typed, strictly validated settings.

Loaded once at the edge (the CLI, the flow) and passed down. An unknown or mistyped
key is an error that names the key and the file.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from bigdeep.errors import EXIT_CONFIG, BigdeepError

DATASETS = ("images", "series")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --- data sources --------------------------------------------------------------------------


class _Identified(Strict):
    """A dataset slot's source and the identity its history belongs to."""

    source: str
    name: str | None = None  # dataset identity; null: derived from the source (dataset_identity)

    @field_validator("name")
    @classmethod
    def _identity(cls, v: str | None) -> str | None:
        return _check_identity(v)

    @property
    def identity(self) -> str:
        return dataset_identity(self.source, self.name)


class ImageData(_Identified):
    source: str = "builtin:mnist"  # builtin:mnist | folder:<dir> | idx:<dir>
    per_class: int | None = Field(500, ge=1)  # cap per class at ingest; null keeps all
    shard_rows: int = Field(2000, ge=1)

    @field_validator("source")
    @classmethod
    def _known_scheme(cls, v: str) -> str:
        return _check_scheme(v, ("builtin", "folder", "idx"))


class SeriesData(_Identified):
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


# A dataset identity names a file (data/reference/<slot>/<identity>.json) and a registered
# model (<prefix>-<model>-<identity>): lower-case letters, digits, - and _ only.
IDENTITY = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")


def _check_identity(v: str | None) -> str | None:
    if v is not None and not IDENTITY.fullmatch(v):
        raise ValueError(
            f"{v!r} is not a dataset name: use 1-64 lower-case letters, digits, - or _ "
            "(e.g. my-digits), or null to derive it from the source"
        )
    return v


def dataset_identity(source: str, name: str | None = None) -> str:
    """What a dataset is, whatever slot it enters by: `name` when given, else a slug of the source.

    builtin:mnist -> mnist, builtin:vic_elec -> vic_elec; any other source -> <scheme>-<last
    path part>-<6 hex of the source>, e.g. folder:data/my digits -> folder-my-digits-1a2b3c
    (the hash keeps two folders called `digits` apart; moving a folder starts a new history
    unless `name` keeps it). Pure.
    """
    if name is not None:
        return name
    scheme, _, rest = source.partition(":")
    if scheme == "builtin":
        return _slug(rest) or scheme
    where = PurePosixPath(rest.replace("\\", "/")).as_posix()  # ./a/b/ and a/b are one source
    digest = hashlib.sha256(f"{scheme}:{where}".encode()).hexdigest()[:6]
    base = _slug(PurePosixPath(where).name)[:40].strip("-_")
    return "-".join(part for part in (scheme, base, digest) if part)


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9_]+", "-", text.lower()).strip("-_")


def default_identity(dataset: str) -> str:
    """The identity of a slot's embedded data (mnist, vic_elec): its models keep the plain
    registered names bigdeep-cnn and bigdeep-rnn."""
    return getattr(DataSettings(), dataset).identity


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
    # with prepare.images.size set: a smaller side cannot be resized into a useful image
    min_side: int = Field(8, ge=1)
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


class SeriesPrivacy(Strict):
    # quarantine: found values are masked in every output and listed (masked) in the
    # quarantine's privacy.parquet; the rows' other columns still train. fail: the gate fails.
    # off: text columns are not scanned
    policy: Literal["quarantine", "fail", "off"] = "quarantine"
    # what to look for in string/object columns (quality/privacy.py)
    types: list[Literal["email", "phone", "card", "iban"]] = ["email", "phone", "card", "iban"]

    @field_validator("types")
    @classmethod
    def _types(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError(f"{v}: a type is listed twice")
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
    # outlier: further than this many robust deviations (MAD, as a sigma) from the median of
    # the last accepted version (of this data when there is none); null: not checked
    max_robust_z: float | None = Field(20.0, gt=0)
    # hard bounds per value column, [low, high] (null: open), e.g. {Demand: [0, null]}
    bounds: dict[str, tuple[float | None, float | None]] = {}
    # velocity
    max_gap: str | None = "1h"  # longest step between rows; null: one step of freq
    max_age: str | None = None  # newest row at most this old (e.g. 2d); null: not checked
    # A hole in a series cannot be windowed without imputation, so by default any bad row fails.
    max_quarantine_fraction: float = Field(0.0, ge=0, le=1)
    # privacy: personal data in text columns (not counted in max_quarantine_fraction)
    privacy: SeriesPrivacy = SeriesPrivacy()

    @field_validator("bounds")
    @classmethod
    def _bounds(
        cls, v: dict[str, tuple[float | None, float | None]]
    ) -> dict[str, tuple[float | None, float | None]]:
        for column, (low, high) in v.items():
            if low is None and high is None:
                raise ValueError(f"{column}: [null, null] bounds nothing; give a low or a high")
            if any(b is not None and b != b for b in (low, high)):  # NaN compares false
                raise ValueError(f"{column}: a bound must be a number or null")
            if low is not None and high is not None and low > high:
                raise ValueError(f"{column}: low {low:g} is above high {high:g}")
        return v

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
    # Conversion of every image to one shape (e.g. a folder of photos of mixed sizes and
    # modes). Both null: none, images must already be quality.images.height x width, and
    # are stored grey (the MNIST default). size: [height, width] after resizing;
    # mode: L (grey) or RGB; resize: how the aspect ratio is kept (crop: scale to cover,
    # centre crop; pad: scale to fit, pad with black; stretch: ignore it).
    size: tuple[int, int] | None = None
    mode: Literal["L", "RGB"] | None = None
    resize: Literal["crop", "pad", "stretch"] = "crop"

    @field_validator("size", mode="before")
    @classmethod
    def _two_sides(cls, v: object) -> object:
        if v is not None and not (isinstance(v, list | tuple) and len(v) == 2):
            raise ValueError("must be [height, width], e.g. [64, 64]")
        return v

    @field_validator("size")
    @classmethod
    def _sane_size(cls, v: tuple[int, int] | None) -> tuple[int, int] | None:
        if v is not None and not all(1 <= side <= 4096 for side in v):
            raise ValueError(f"{list(v)} must be [height, width], each 1 to 4096 pixels")
        return v

    @property
    def converts(self) -> bool:
        """True when images are converted (resized or re-moded) before training."""
        return self.size is not None or self.mode is not None


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
    num_nodes: int = Field(1, ge=1)  # machines in one DDP run (torchrun / SLURM: docs/multinode.md)
    precision: str | None = None  # null: bf16-mixed on a GPU that supports it, else 32-true
    threads: int | None = Field(1, ge=1)  # torch CPU threads; see README (2-core machines)
    num_workers: int = Field(0, ge=0)
    pin_memory: bool | None = None  # null: on when training on a GPU
    memory_mb: float = Field(4096, ge=0)  # larger image splits (as float32) stream from disk
    limit_train_batches: float | int = 1.0
    deterministic: bool = True
    # GPU-first training (README "GPU training"): splits held on the training device
    device_data: Literal["auto", "on", "off"] = "auto"
    device_budget_fraction: float = Field(0.5, gt=0, le=0.9)  # of a GPU's memory
    compile: Literal[False, "default", "reduce-overhead", "max-autotune"] = False

    @field_validator("device_data", mode="before")
    @classmethod
    def _yaml_on_off(cls, value: object) -> object:
        # YAML reads a bare on / off as true / false
        return {True: "on", False: "off"}.get(value, value) if isinstance(value, bool) else value

    @model_validator(mode="after")
    def _nodes_need_a_distributed_strategy(self) -> Trainer:
        single = ("single_device", "dp")  # and their variants (single_device_..., dp_...)
        if self.num_nodes > 1 and self.strategy.startswith(single):
            raise ValueError(
                f"train.trainer.num_nodes is {self.num_nodes} but strategy is "
                f"{self.strategy!r}, which runs on one machine: set strategy: ddp (or auto, "
                "which picks DDP), or num_nodes: 1"
            )
        return self


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
    # cyclic inputs from the timestamps, see bigdeep.data.transforms.calendar_features
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


class ExplainParams(Strict):
    """Attributions of each tested model (bigdeep.explain): what they cost is these samples."""

    enabled: bool = True  # false: <plots>/explain holds only a README.txt saying so
    per_class: int = Field(8, ge=1)  # CNN: seeded test images per class -> the class mean maps
    wrong: int = Field(16, ge=0)  # CNN: the most confidently wrong test images shown
    windows: int = Field(64, ge=1)  # RNN: seeded test windows -> the (step, column) heat map
    steps: int = Field(32, ge=2)  # Integrated Gradients steps per input (see bigdeep.explain)


class Privacy(Strict):
    """Differentially private training (Opacus) of the CNN and the RNN; bigdeep.training.privacy."""

    enabled: bool = False
    epsilon: float = Field(3.0, gt=0)  # target privacy budget over the configured epochs
    # null: 1 / (10 x train samples); at training time it must be < 1 / train samples
    delta: float | None = Field(None, gt=0, lt=1)
    max_grad_norm: float = Field(1.0, gt=0)  # per-sample gradient clipping norm


class TrainSettings(Strict):
    trainer: Trainer = Trainer()
    cnn: CNNParams = CNNParams()
    rnn: RNNParams = RNNParams()
    explain: ExplainParams = ExplainParams()

    privacy: Privacy = Privacy()


class MlflowSettings(Strict):
    tracking_uri: str = "sqlite:///mlflow.db"  # MLFLOW_TRACKING_URI overrides
    artifact_root: str = "mlartifacts"
    experiment: str = "bigdeep"


class RegistrySettings(Strict):
    prefix: str = "bigdeep"  # registered models are <prefix>-cnn and <prefix>-rnn
    cnn_margin: float = Field(0.0, ge=0)  # test accuracy a new CNN must gain over the champion
    rnn_margin: float = Field(0.0, ge=0)  # test MAE a new RNN must cut below the champion's
    # Sanity floor, the first model included: below it a model is registered but never champion.
    cnn_floor_margin: float = Field(0.0, ge=0, lt=1)  # test accuracy > majority-class rate + this
    rnn_floor_ratio: float = Field(1.0, gt=0)  # test MAE < this x the naive forecast's MAE


_LOCAL = re.compile(r"local:(\d+)")
_ADDRESS = re.compile(r"(tcp|tls|inproc)://\S+")


class ComputeSettings(Strict):
    """Where ingest, validate and prepare run their shards: bigdeep.compute."""

    # null: in this process; N or "local:N": a local Dask cluster of N worker processes;
    # "tcp://host:8786": a running Dask scheduler
    cluster: int | str | None = None
    connect_timeout: float = Field(10.0, gt=0)  # seconds a scheduler address has to answer
    # more tries of a shard whose task raised (e.g. a flaky shared filesystem); a worker that
    # dies is Dask's own business: its tasks are rescheduled on the others
    retries: int = Field(0, ge=0)

    @field_validator("cluster")
    @classmethod
    def _known_cluster(cls, v: int | str | None) -> int | str | None:
        if v is None:
            return v
        if isinstance(v, int):
            if v < 1:
                raise ValueError(f"{v}: a local cluster needs at least 1 worker")
            return v
        if (m := _LOCAL.fullmatch(v)) and int(m.group(1)) >= 1:
            return v
        if _ADDRESS.fullmatch(v):
            return v
        raise ValueError(
            f"{v!r}: expected null (in this process), a number of local workers (2 or "
            "'local:2') or a scheduler address ('tcp://host:8786')"
        )

    @property
    def local_workers(self) -> int | None:
        """Workers of the local cluster to start; None for in-process or an address."""
        if isinstance(self.cluster, int):
            return self.cluster
        if isinstance(self.cluster, str) and (m := _LOCAL.fullmatch(self.cluster)):
            return int(m.group(1))
        return None


class Settings(Strict):
    seed: int = 42
    data: DataSettings = DataSettings()
    quality: QualitySettings = QualitySettings()
    prepare: PrepareSettings = PrepareSettings()
    train: TrainSettings = TrainSettings()
    mlflow: MlflowSettings = MlflowSettings()
    registry: RegistrySettings = RegistrySettings()
    compute: ComputeSettings = ComputeSettings()

    @model_validator(mode="after")
    def _bounds_name_value_columns(self) -> Settings:
        series = self.data.series
        values = [series.target, *series.features]
        for column in self.quality.series.bounds:
            if column not in values:
                raise ValueError(
                    f"quality.series.bounds.{column}: {column!r} is not the series target or a "
                    f"feature ({', '.join(values)}); bounds apply to those columns"
                )
        return self

    @model_validator(mode="after")
    def _cnn_fits_image_size(self) -> Settings:
        size = self.prepare.images.size
        if size is not None:
            from bigdeep.models.shapes import conv_output_size

            try:
                conv_output_size(size, len(self.train.cnn.conv))
            except ValueError as e:
                raise ValueError(
                    f"prepare.images.size {list(size)}: {e}; use a larger size or fewer "
                    "train.cnn.conv layers"
                ) from None
        return self


class ConfigError(BigdeepError, ValueError):
    """params.yaml is missing, unreadable or has a wrong key or value."""

    exit_code = EXIT_CONFIG


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


# --- paths: dvc.yaml is their one home ------------------------------------------------------

MODELS = {"images": "cnn", "series": "rnn"}  # each dataset's model: dvc.yaml's train_<model>


def dvc_stage(stage: str, item: str | None = None, project: Path = Path(".")) -> dict:
    """One stage of the project's dvc.yaml (a foreach stage's `do` body, `${item}` filled in).

    The project's dvc.yaml; outside a project (a stage command run by hand in another folder),
    the dvc.yaml of the checkout this code is installed from, whose paths are relative too.
    """
    path = Path(project) / "dvc.yaml"
    if not path.is_file():
        path = Path(__file__).resolve().parents[2] / "dvc.yaml"
    try:
        stages = _parse_stages(path.read_text(encoding="utf-8"))
        body = stages[stage].get("do") or stages[stage]
    except (OSError, yaml.YAMLError, KeyError, TypeError, AttributeError):
        raise ConfigError(
            f"{Path(project) / 'dvc.yaml'}: no stage {stage!r} to take its paths from "
            "(run from the project root, or pass the paths as options)"
        ) from None
    return _fill(body, "${item}", item) if item is not None else body


def dvc_stages(project: Path) -> dict:
    """dvc.yaml's `stages` (not to be modified: one parse is shared while the file is the same)."""
    return _parse_stages((Path(project) / "dvc.yaml").read_text(encoding="utf-8"))


@functools.lru_cache(maxsize=4)
def _parse_stages(text: str) -> dict:
    # libyaml's parser where PyYAML has it: the same safe_load result, ~10x faster
    return yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))["stages"]


def _fill(value, key: str, item: str):
    if isinstance(value, str):
        return value.replace(key, item)
    if isinstance(value, list):
        return [_fill(v, key, item) for v in value]
    if isinstance(value, dict):
        return {_fill(k, key, item): _fill(v, key, item) for k, v in value.items()}
    return value


def stage_option(
    stage: str, option: str, item: str | None = None, project: Path = Path(".")
) -> str:
    """The value a stage's cmd in dvc.yaml gives `option`, e.g. train_cnn's `--plots`."""
    import shlex

    args = shlex.split(dvc_stage(stage, item, project)["cmd"])
    if option not in args[:-1]:
        raise ConfigError(
            f"{Path(project) / 'dvc.yaml'}: stage {stage!r} has no {option} in its cmd; "
            f"pass {option} explicitly"
        )
    return args[args.index(option) + 1]


@dataclass(frozen=True)
class StageFiles:
    """The files the flow reads, taken from dvc.yaml: one fact in one place."""

    fingerprint: str  # ingest's first dependency: data/sources/<dataset>.json
    raw: str  # ingest's output: data/raw/<dataset>
    report: str  # validate's metric: reports/quality/<dataset>.json
    metrics: str  # train's metric: metrics/<model>.json
    model_dir: str  # train's first output: models/<model> (run.json inside)


def stage_files(project: Path, dataset: str) -> StageFiles:
    def path(entry) -> str:  # an out with options is a one-key mapping
        return next(iter(entry)) if isinstance(entry, dict) else entry

    ingest = dvc_stage("ingest", dataset, project)
    train = dvc_stage(f"train_{MODELS[dataset]}", None, project)
    return StageFiles(
        fingerprint=path(ingest["deps"][0]),
        raw=path(ingest["outs"][0]),
        report=path(dvc_stage("validate", dataset, project)["outs"][0]),
        metrics=path(train["metrics"][0]),
        model_dir=path(train["outs"][0]),
    )


def _describe(path: Path, e: ValidationError) -> str:
    lines = [f"{path}: {e.error_count()} invalid setting(s)"]
    for err in e.errors():
        key = ".".join(str(p) for p in err["loc"])
        if not key:  # a check across sections names its keys itself
            lines.append(f"  {err['msg'].removeprefix('Value error, ')}")
        elif err["type"] == "extra_forbidden":
            lines.append(f"  {key}: unknown key")
        else:
            lines.append(f"  {key}: {err['msg']} (got {err.get('input')!r})")
    return "\n".join(lines)


@dataclass(frozen=True)
class ParamChange:
    """One `--set` as it lands in params.yaml: the key, its old and new text, its line (1-based)."""

    key: str
    old: str | None  # the value as it was written; None: the key was not in the file
    new: str
    line: int


def apply_overrides(path: str | Path, overrides: dict[str, str]) -> list[ParamChange]:
    """Set dotted keys in params.yaml (like `dvc exp run -S key=value`); returns what changed.

    Values are read as YAML (`3` is a number, `[1, 2]` a list, `null` None). Only the value
    on each key's own line is rewritten: every other byte of the file (comments, spacing,
    `null`, flow lists) stays as it was. The result is validated before anything is written,
    so a wrong key or value fails naming it and leaves the file alone. An empty list means
    nothing changed (and DVC's stages stay skipped).
    """
    path = Path(path)
    text, changes = plan_overrides(path, overrides)
    if changes:
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_bytes(text.encode("utf-8"))
        os.chmod(tmp, path.stat().st_mode & 0o7777)
        os.replace(tmp, path)  # atomic: a reader sees the old file or the new one
    return changes


def plan_overrides(path: str | Path, overrides: dict[str, str]) -> tuple[str, list[ParamChange]]:
    """The text params.yaml would have with `overrides` set, and the changes; writes nothing."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"{path}: not found (run from the project root or pass --params)"
        ) from None
    load_settings(path)  # the file as it is must be valid before it is edited
    changes: list[ParamChange] = []
    wanted: dict[str, object] = {}
    for key, raw in overrides.items():
        value_text = _value_text(path, key, raw)
        wanted[key] = yaml.safe_load(value_text)
        text, change = _set_line(path, text, key, value_text)
        if change is not None:
            changes = [c for c in changes if c.key != key] + [change]
    try:
        doc = yaml.safe_load(text) or {}
        Settings.model_validate(doc)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: the --set values do not make valid YAML: {e}") from None
    except ValidationError as e:
        raise ConfigError(
            _describe(path, e).replace("invalid setting(s)", "invalid setting(s) after --set")
        ) from None
    for key, value in wanted.items():  # what YAML reads back is what was asked for
        node = doc
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if node != value:
            raise ConfigError(
                f"--set {key}: {value!r} does not read back from {path} (got {node!r})"
            )
    return text, changes


def _value_text(path: Path, key: str, raw: str) -> str:
    """The one-line YAML text to write for `raw`: as the user wrote it when that reads back."""
    raw = str(raw).strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--set {key}={raw}: the key must be dotted names, e.g. train.cnn.epochs")
    try:
        value = yaml.safe_load(raw) if raw else None
    except yaml.YAMLError as e:
        raise ConfigError(f"--set {key}={raw}: not a YAML value ({e})") from None
    if raw and "\n" not in raw and "\r" not in raw:
        try:
            if yaml.safe_load(f"k: {raw}") == {"k": value}:
                return raw
        except yaml.YAMLError:
            pass
    return "null" if value is None else json.dumps(value)


def _set_line(path: Path, text: str, key: str, value: str) -> tuple[str, ParamChange | None]:
    """Rewrite the value on `key`'s line (adding the key when the file lacks it)."""
    lines = text.splitlines(keepends=True)
    parts = key.split(".")
    start, end, indent = 0, len(lines), 0  # the block being searched: [start, end)
    for depth, part in enumerate(parts):
        found = _find_key(lines, start, end, part)
        if found is None:
            return _insert(lines, end, indent, parts[depth:], value, key)
        i, indent_here = found
        head, rest = _split_key_line(lines[i], indent_here, part)
        value_part, comment = _split_comment(rest)
        if depth == len(parts) - 1:
            if not value_part.strip():
                raise ConfigError(
                    f"{path}:{i + 1}: --set {key}: the value spans several lines; "
                    "--set replaces one-line values only (edit the file)"
                )
            old = value_part.strip()
            if old == value:
                return text, None
            lead = value_part[: len(value_part) - len(value_part.lstrip())] or " "
            tail = ""
            if comment:
                # keep the comment where it was when the new value fits, else one space
                gap = len(value_part) - len(lead) - len(value)
                tail = " " * max(gap, 1) + comment
            eol = lines[i][len(lines[i].rstrip("\r\n")) :]
            lines[i] = head + lead + value + tail + eol
            return "".join(lines), ParamChange(key, old, value, i + 1)
        if value_part.strip():
            raise ConfigError(
                f"{path}:{i + 1}: --set {key}: {'.'.join(parts[: depth + 1])} is not a mapping"
            )
        start, end = i + 1, _block_end(lines, i + 1, indent_here)
        indent = indent_here + 2
        child = _first_indent(lines, start, end)
        if child is not None:
            indent = child
    raise AssertionError("unreachable")


def _content(line: str) -> bool:
    s = line.strip()
    return bool(s) and not s.startswith("#")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _first_indent(lines: list[str], start: int, end: int) -> int | None:
    return next((_indent(lines[j]) for j in range(start, end) if _content(lines[j])), None)


def _block_end(lines: list[str], start: int, parent_indent: int) -> int:
    j = start
    for k in range(start, len(lines)):
        if _content(lines[k]):
            if _indent(lines[k]) <= parent_indent:
                break
            j = k + 1
    return j


def _find_key(lines: list[str], start: int, end: int, part: str) -> tuple[int, int] | None:
    indent = _first_indent(lines, start, end)
    if indent is None:
        return None
    for j in range(start, end):
        line = lines[j]
        if _content(line) and _indent(line) == indent:
            name = line[indent:].split(":", 1)[0].strip().strip("'\"")
            if name == part and ":" in line:
                return j, indent
    return None


def _split_key_line(line: str, indent: int, part: str) -> tuple[str, str]:
    colon = line.index(":", indent) + 1
    return line[:colon], line[colon:].rstrip("\r\n")


def _split_comment(rest: str) -> tuple[str, str]:
    """`  10   # note` -> ("  10   ", "# note"); a # inside quotes or brackets is kept."""
    quote, depth = "", 0
    for j, c in enumerate(rest):
        if quote:
            quote = "" if c == quote else quote
        elif c in "'\"":
            quote = c
        elif c in "[{":
            depth += 1
        elif c in "]}":
            depth -= 1
        elif c == "#" and depth == 0 and (j == 0 or rest[j - 1] in " \t"):
            return rest[:j], rest[j:]
    return rest, ""


def _insert(
    lines: list[str], at: int, indent: int, parts: list[str], value: str, key: str
) -> tuple[str, ParamChange]:
    """Add the missing tail of `key` at the end of its parent's block."""
    eol = "\r\n" if lines and lines[0].endswith("\r\n") else "\n"  # the file's own
    if lines and not lines[-1].endswith("\n") and at == len(lines):
        lines[-1] += eol
    new = []
    for depth, part in enumerate(parts):
        pad = " " * (indent + 2 * depth)
        new.append(
            f"{pad}{part}: {value}{eol}" if depth == len(parts) - 1 else f"{pad}{part}:{eol}"
        )
    lines[at:at] = new
    return "".join(lines), ParamChange(key, None, value, at + len(new))
