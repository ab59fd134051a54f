"""Unit tests for ImageDataModule and SeriesDataModule on tiny files written in tmp_path,
plus one-epoch Lightning fits of both models on them (CPU, no logger).

Run: python -m pytest tests/unit/test_datamodules.py -q
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import pytorch_lightning as pl
import torch
from pydantic import ValidationError

from bigdeep.config import RNNParams
from bigdeep.data.datamodules import ImageDataModule, SeriesDataModule
from bigdeep.data.prepared import write_image_split
from bigdeep.data.transforms import Affine, calendar_features, random_affine
from bigdeep.models.cnn import ImageClassifier
from bigdeep.models.rnn import SeriesForecaster

torch.set_num_threads(1)  # default threading on a busy 2-core box is far slower

CLASSES = ["zero", "one", "two"]
IMAGE_ROWS = {"train": 40, "val": 12, "test": 9}
SERIES_ROWS = {"train": 60, "val": 20, "test": 20}  # rows 0..59, 60..79, 80..99
NO_AUGMENT = {"augment_rotate": 0.0, "augment_shift": 0.0, "augment_scale": 0.0}


def write_images(data_dir: Path, size: tuple[int, int] = (28, 28)) -> Path:
    """Image i of a split is filled with the value (offset + i) and labelled i % 3."""
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / "classes.json").write_text(json.dumps(CLASSES))
    offset = 0
    for split, n in IMAGE_ROWS.items():
        values = np.arange(offset, offset + n, dtype=np.uint8)
        x = np.broadcast_to(values[:, None, None], (n, *size)).copy()  # (N, H, W)
        y = np.arange(n, dtype=np.int64) % len(CLASSES)
        ids = np.array([f"{split}-{i:04d}" for i in range(n)])
        write_image_split(data_dir, split, x, y, ids)
        offset += n
    return data_dir


def write_series(data_dir: Path, rows: dict[str, int] = SERIES_ROWS) -> Path:
    """target = row index and Temperature = -10 * row index, so every window is known."""
    data_dir.mkdir(parents=True, exist_ok=True)
    n = sum(rows.values())
    frame = pd.DataFrame(
        {
            "timestamp": pd.date_range("2024-01-01", periods=n, freq="1h", tz="UTC"),
            "Demand": np.arange(n, dtype=np.float64),
            "Temperature": -10.0 * np.arange(n),
            "split": np.repeat(list(rows), list(rows.values())),
        }
    )
    frame.to_parquet(data_dir / "series.parquet", index=False)
    meta = {
        "target": "Demand",
        "features": ["Temperature"],
        "scaler": {"Demand": {"mean": 100.0, "std": 10.0}, "Temperature": {"mean": 0, "std": 1}},
        "freq": "1h",
    }
    (data_dir / "meta.json").write_text(json.dumps(meta))
    return data_dir


def _all(loader) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*loader, strict=True)
    return torch.cat(xs), torch.cat(ys)


def _trainer(max_epochs: int = 1, **kwargs) -> pl.Trainer:
    return pl.Trainer(
        max_epochs=max_epochs,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        deterministic=True,
        **kwargs,
    )


@pytest.fixture(autouse=True)
def _quiet_lightning():
    with warnings.catch_warnings():
        # "does not have many workers": num_workers=0 is the right choice for in-memory data.
        warnings.filterwarnings("ignore", ".*does not have many workers.*")
        yield


# --- images ---------------------------------------------------------------------------------


def test_images_load_as_scaled_float_tensors(tmp_path: Path):
    dm = ImageDataModule(write_images(tmp_path, size=(28, 20)), batch_size=8)
    dm.setup("fit")
    assert dm.classes == CLASSES and dm.num_classes == 3 and dm.image_size == (28, 20)
    x, y = _all(dm.val_dataloader())  # val is not shuffled: row order
    assert x.shape == (12, 1, 28, 20) and x.dtype == torch.float32
    assert y.dtype == torch.int64 and y.tolist() == [i % 3 for i in range(12)]
    # val image i was filled with 40 + i (train took values 0..39)
    torch.testing.assert_close(x[:, 0, 5, 7], (40 + torch.arange(12)) / 255.0)
    assert list(dm.ids["test"][:2]) == ["test-0000", "test-0001"]


def test_images_train_is_shuffled_by_seed_and_covers_each_image_once(tmp_path: Path):
    write_images(tmp_path)

    def train_order(seed: int) -> list[int]:
        dm = ImageDataModule(tmp_path, batch_size=16, seed=seed, **NO_AUGMENT)
        dm.setup("fit")
        x, _ = _all(dm.train_dataloader())
        return (x[:, 0, 0, 0] * 255).round().int().tolist()  # the image's fill value = row

    order = train_order(seed=1)
    assert sorted(order) == list(range(40))  # every train image once, nothing else
    assert order != list(range(40))  # shuffled
    assert train_order(seed=1) == order  # same seed, same order
    assert train_order(seed=2) != order


def _fills(x: torch.Tensor) -> list[int]:
    return (x[:, 0, 0, 0] * 255).round().int().tolist()  # an image's fill value = its row


def _streamed(data_dir: Path, block_rows: int = 16, **kwargs) -> ImageDataModule:
    """A data module over the tiny files that streams every split (memory_mb=0)."""
    block_mb = block_rows * 28 * 28 / 2**20  # block_rows rows of 28 x 28 uint8
    dm = ImageDataModule(data_dir, memory_mb=0, block_mb=block_mb, **kwargs)
    dm.setup("fit")
    return dm


def test_images_over_the_memory_limit_stream_every_image_once_per_epoch(tmp_path: Path):
    write_images(tmp_path)
    dm = _streamed(tmp_path, batch_size=6, seed=1, **NO_AUGMENT)
    assert dm.streamed == ["train", "val", "test"] and dm.tensors == {}
    loader = dm.train_dataloader()
    epochs = []
    for _ in range(2):
        x, y = _all(loader)
        assert sorted(_fills(x)) == list(range(40))  # every train image once, nothing else
        assert y.tolist() == [f % 3 for f in _fills(x)]  # labels stay with their images
        epochs.append(_fills(x))
    assert epochs[0] != list(range(40)) and epochs[1] != epochs[0]  # reshuffled each epoch
    # blocks of 16 rows: batches never mix blocks, so no batch is bigger than 6
    assert len(loader) == 3 + 3 + 2 and max(len(b[1]) for b in loader) == 6
    assert _fills(_all(_streamed(tmp_path, batch_size=6, seed=1).train_dataloader())[0]) != (
        _fills(_all(_streamed(tmp_path, batch_size=6, seed=2).train_dataloader())[0])
    )
    x, y = _all(dm.val_dataloader())  # val: file order, never augmented
    assert _fills(x) == list(range(40, 52)) and y.tolist() == [i % 3 for i in range(12)]


def test_streamed_and_in_memory_images_agree(tmp_path: Path):
    write_images(tmp_path)
    loaded = ImageDataModule(tmp_path)
    loaded.setup("fit")
    streamed = _streamed(tmp_path)
    assert (streamed.pixel_mean, streamed.pixel_std) == (loaded.pixel_mean, loaded.pixel_std)
    for split in ("val", "test"):
        x, y = _all(getattr(streamed, f"{split}_dataloader")())
        assert torch.equal(x, loaded.tensors[split][0]) and torch.equal(y, loaded.tensors[split][1])


def test_streamed_batches_are_dealt_evenly_to_processes_and_workers(tmp_path: Path, monkeypatch):
    from bigdeep.data.datasets import StreamedImages

    write_images(tmp_path)
    # 40 rows in blocks of 16 and batches of 6: 3 + 3 + 2 = 8 batches per epoch
    seen = {}
    for rank in (0, 1, 2):  # three distributed processes: 8 batches wrap to 9, 3 each
        monkeypatch.setattr(StreamedImages, "_world", lambda self, r=rank: (r, 3))
        dm = _streamed(tmp_path, batch_size=6, **NO_AUGMENT)
        loader = dm.train_dataloader()
        assert len(loader) == 3
        seen[rank] = [_fills(x) for x, _ in loader]
        assert len(seen[rank]) == 3
    rows = [f for batches in seen.values() for b in batches for f in b]
    assert sorted(set(rows)) == list(range(40))  # every image in some process
    assert len(rows) - len(set(rows)) == len(seen[0][0])  # the first batch again, on rank 2
    assert seen[2][-1] == seen[0][0]
    monkeypatch.undo()

    one = _all(_streamed(tmp_path, batch_size=6, **NO_AUGMENT).train_dataloader())
    dm = _streamed(tmp_path, batch_size=6, num_workers=2, **NO_AUGMENT)
    two = _all(dm.train_dataloader())  # the loader takes a batch from each worker in turn
    assert torch.equal(one[0], two[0]) and torch.equal(one[1], two[1])


def test_streamed_train_images_are_augmented_val_never(tmp_path: Path):
    write_images(tmp_path)
    dm = _streamed(tmp_path, batch_size=8, augment_rotate=20.0, augment_shift=0.2)
    x, y = _all(dm.train_dataloader())
    centre = (x[:, 0, 14, 14] * 255).round().int()  # inside the uniform fill after any move
    assert sorted(centre.tolist()) == list(range(40)) and y.tolist() == (centre % 3).tolist()
    moved = (x.flatten(1) != x[:, :, 14, 14]).any(dim=1)  # some pixel is not the fill
    assert moved[centre > 0].float().mean() > 0.9
    loaded = ImageDataModule(tmp_path)
    loaded.setup("fit")
    assert torch.equal(_all(dm.val_dataloader())[0], loaded.tensors["val"][0])


def test_images_batches_keep_image_and_label_together(tmp_path: Path):
    dm = ImageDataModule(write_images(tmp_path), batch_size=16, **NO_AUGMENT)
    dm.setup("fit")
    sizes = []
    for x, y in dm.train_dataloader():
        rows = (x[:, 0, 0, 0] * 255).round().long()
        assert torch.equal(y, rows % 3)  # label of train row i is i % 3
        sizes.append(len(y))
    assert sizes == [16, 16, 8]


def test_images_augmentation_is_train_only_seeded_and_keeps_labels(tmp_path: Path):
    write_images(tmp_path)

    def train_batches(seed: int) -> tuple[ImageDataModule, torch.Tensor, torch.Tensor]:
        dm = ImageDataModule(tmp_path, batch_size=16, seed=seed)  # default augmentation
        dm.setup("fit")
        return dm, *_all(dm.train_dataloader())

    dm, x, y = train_batches(seed=1)
    rows = (x[:, 0, 14, 14] * 255).round().long()  # the centre of a flat image keeps its value
    assert sorted(rows.tolist()) == list(range(40)) and torch.equal(y, rows % 3)
    moved = (x != dm.tensors["train"][0][rows]).flatten(1).any(dim=1)  # (40,)
    assert moved[rows > 0].all()  # every image but the all-black one lost some border pixels
    assert x.min() >= 0 and x.max() <= 1
    assert torch.equal(train_batches(seed=1)[1], x)  # same seed, same augmentations
    assert not torch.equal(train_batches(seed=2)[1], x)
    assert torch.equal(_all(dm.train_dataloader())[0], x)  # a new loader replays the stream
    for split in ("val", "test"):  # never augmented
        xs, ys = _all(getattr(dm, f"{split}_dataloader")())
        assert torch.equal(xs, dm.tensors[split][0]) and torch.equal(ys, dm.tensors[split][1])


def test_random_affine_stays_within_its_ranges():
    x = torch.zeros(64, 1, 21, 21)
    x[:, 0, 10, 10] = 1.0  # one bright pixel at the centre
    g = torch.Generator().manual_seed(0)
    torch.testing.assert_close(random_affine(x, Affine(), g), x)  # zero ranges: identity
    shifted = random_affine(x, Affine(shift=0.1), g)  # up to 2.1 px each way, no rotation
    grid = torch.arange(21.0)
    mass = shifted[:, 0].sum(dim=(1, 2))
    row = (shifted[:, 0].sum(dim=2) * grid).sum(dim=1) / mass  # (64,) centroids
    col = (shifted[:, 0].sum(dim=1) * grid).sum(dim=1) / mass
    torch.testing.assert_close(mass, torch.ones(64))  # moved, not lost
    assert (row - 10).abs().max() <= 2.1 and (col - 10).abs().max() <= 2.1
    assert (row - 10).abs().max() > 1 and (col - 10).abs().max() > 1  # and it does move
    with pytest.raises(ValueError, match=r"shift 1\.5"):
        Affine(shift=1.5)


def test_images_pixel_statistics_come_from_train(tmp_path: Path):
    dm = ImageDataModule(write_images(tmp_path))
    dm.setup("fit")
    fills = np.arange(40) / 255.0  # train image i is filled with i
    assert dm.pixel_mean == pytest.approx(fills.mean())
    assert dm.pixel_std == pytest.approx(fills.std(), rel=1e-3)  # over all 40 x 784 pixels


def test_images_missing_file_is_named(tmp_path: Path):
    write_images(tmp_path)
    (tmp_path / "val_y.npy").unlink()
    with pytest.raises(FileNotFoundError, match=r"val_y\.npy: not found"):
        ImageDataModule(tmp_path).setup("fit")


def test_images_corrupt_file_is_named(tmp_path: Path):
    write_images(tmp_path)
    (tmp_path / "test_x.npy").write_bytes(b"\x93NUMPY not really an array")
    with pytest.raises(ValueError, match=r"test_x\.npy: unreadable or corrupt"):
        ImageDataModule(tmp_path).setup("fit")


def test_images_label_outside_classes_is_named(tmp_path: Path):
    write_images(tmp_path)
    x = np.zeros((2, 28, 28), np.uint8)
    write_image_split(tmp_path, "train", x, np.array([0, 3]), np.array(["a", "b"]))
    with pytest.raises(ValueError, match=r"train_y\.npy: label 3 at row 1 is outside 0\.\.2"):
        ImageDataModule(tmp_path).setup("fit")


# --- series ---------------------------------------------------------------------------------


def test_series_windows_and_labels_align_with_rows(tmp_path: Path):
    dm = SeriesDataModule(write_series(tmp_path), window=5, horizon=2, batch_size=7, calendar=())
    dm.setup("fit")
    assert (dm.target, dm.features, dm.n_features) == ("Demand", ["Temperature"], 2)
    x, y = _all(dm.val_dataloader())
    # val rows 60..79: first target row 60 (inputs reach back into train), last 78 (78, 79)
    assert x.shape == (19, 5, 2) and y.shape == (19, 2)
    t = 60 + torch.arange(19, dtype=torch.float32)
    expected_inputs = t[:, None] + torch.arange(-5, 0)  # (19, 5): rows t-5 .. t-1
    torch.testing.assert_close(x[:, :, 0], expected_inputs)
    torch.testing.assert_close(x[:, :, 1], -10 * expected_inputs)
    torch.testing.assert_close(y, torch.stack([t, t + 1], dim=1))


def test_calendar_features_known_times_and_zone():
    # 2024-01-01 is a Monday; Melbourne is UTC+11 in January (daylight saving), +10 in July
    ts = pd.DatetimeIndex(
        ["2024-01-01 00:00", "2024-01-01 06:00", "2024-01-04 12:00", "2024-07-01 00:00"], tz="UTC"
    )
    values, columns = calendar_features(ts, ["hour", "weekday"])
    assert columns == ["hour_sin", "hour_cos", "weekday_sin", "weekday_cos"]
    assert values.dtype == np.float32 and values.shape == (4, 4)
    hour = np.array([0, 6, 12, 0]) / 24
    week = (np.array([0, 0, 3, 0]) + hour) / 7  # Thursday noon is 3.5 days into the week
    expected = np.stack([np.sin(2 * np.pi * hour), np.cos(2 * np.pi * hour)], axis=1)
    np.testing.assert_allclose(values[:, :2], expected, atol=1e-6)
    np.testing.assert_allclose(values[:, 2], np.sin(2 * np.pi * week), atol=1e-6)
    local, _ = calendar_features(ts, ["hour"], tz="Australia/Melbourne")
    local_hour = np.array([11, 17, 23, 10]) / 24
    np.testing.assert_allclose(local[:, 0], np.sin(2 * np.pi * local_hour), atol=1e-6)
    year, _ = calendar_features(ts[[0]], ["yearday"])
    np.testing.assert_allclose(year[0], [0.0, 1.0], atol=1e-6)  # 1 January, midnight


def test_calendar_feature_errors_are_named():
    with pytest.raises(ValueError, match=r"\['month'\] unknown; use any of"):
        calendar_features(pd.DatetimeIndex([], tz="UTC"), ["hour", "month"])
    with pytest.raises(ValueError, match=r"calendar_tz 'UTC' needs time-zone-aware"):
        calendar_features(pd.DatetimeIndex(["2024-01-01"]), ["hour"], tz="UTC")
    with pytest.raises(ValueError, match=r"\['month'\] unknown"):
        SeriesDataModule("unused", calendar=["month"])  # at construction, before any data
    with pytest.raises(ValidationError, match=r"'Mars/Olympus' is not a time zone"):
        RNNParams(calendar_tz="Mars/Olympus")  # params.yaml is checked before any training


def test_series_calendar_columns_follow_target_and_features(tmp_path: Path):
    dm = SeriesDataModule(write_series(tmp_path), window=5, batch_size=7, calendar=["hour"])
    dm.setup("fit")
    assert dm.n_features == 4
    assert dm.input_columns == ["Demand", "Temperature", "hour_sin", "hour_cos"]
    x, y = _all(dm.val_dataloader())  # val target rows 60..79, hourly from 2024-01-01 00:00
    t = 60 + torch.arange(20, dtype=torch.float32)
    torch.testing.assert_close(x[:, :, 0], t[:, None] + torch.arange(-5, 0))  # unchanged
    input_hours = (t[:, None] + torch.arange(-5, 0)) % 24  # row r is r hours after midnight
    angle = 2 * torch.pi * input_hours / 24
    torch.testing.assert_close(x[:, :, 2], torch.sin(angle), atol=1e-5, rtol=0)
    torch.testing.assert_close(x[:, :, 3], torch.cos(angle), atol=1e-5, rtol=0)
    torch.testing.assert_close(y[:, 0], t)  # labels are still the target


def test_series_sample_counts_per_split(tmp_path: Path):
    dm = SeriesDataModule(write_series(tmp_path), window=5, horizon=2)
    dm.setup("fit")
    # train t in 5..58 (needs 5 past rows; labels t, t+1 <= 59), val 60..78, test 80..98
    assert dm.rows["train"][[0, -1]].tolist() == [5, 58]
    assert dm.rows["val"][[0, -1]].tolist() == [60, 78]
    assert dm.rows["test"][[0, -1]].tolist() == [80, 98]
    assert [len(dm.rows[s]) for s in ("train", "val", "test")] == [54, 19, 19]


def test_series_no_label_from_another_split(tmp_path: Path):  # data leak
    dm = SeriesDataModule(write_series(tmp_path), window=5, horizon=3, batch_size=8)
    dm.setup("fit")
    bounds = {"train": (0, 59), "val": (60, 79), "test": (80, 99)}
    for split, loader in [("train", dm.train_dataloader()), ("val", dm.val_dataloader())]:
        _, y = _all(loader)  # label values are row indices
        low, high = bounds[split]
        assert y.min().item() >= low and y.max().item() <= high, split


def test_series_train_is_shuffled_val_is_not(tmp_path: Path):
    dm = SeriesDataModule(write_series(tmp_path), window=5, batch_size=8, seed=3)
    dm.setup("fit")
    _, y_train = _all(dm.train_dataloader())
    assert sorted(y_train[:, 0].tolist()) == list(range(5, 60))
    assert y_train[:, 0].tolist() != list(range(5, 60))
    _, y_val = _all(dm.val_dataloader())
    assert y_val[:, 0].tolist() == list(range(60, 80))


def test_series_split_frame_matches_loader(tmp_path: Path):
    dm = SeriesDataModule(write_series(tmp_path), window=5, horizon=2, batch_size=4)
    dm.setup("test")
    frame = dm.split_frame("test")
    _, y = _all(dm.test_dataloader())
    np.testing.assert_array_equal(frame.y_true, y.numpy())
    assert frame.rows.tolist() == list(range(80, 99))
    assert frame.timestamps[0] == pd.Timestamp("2024-01-01", tz="UTC") + pd.Timedelta(hours=80)
    # naive baseline (last seen value) is target[row - 1] = row - 1 here
    np.testing.assert_array_equal(dm.target_values[frame.rows - 1], frame.rows - 1)


def test_series_inverse_target_uses_meta_scaler(tmp_path: Path):
    dm = SeriesDataModule(write_series(tmp_path))
    dm.setup("fit")
    np.testing.assert_allclose(dm.inverse_target(np.array([0.0, 1.0, -2.0])), [100, 110, 80])
    torch.testing.assert_close(dm.inverse_target(torch.tensor([0.5])), torch.tensor([105.0]))


def test_series_split_too_short_names_split_and_numbers(tmp_path: Path):
    write_series(tmp_path, rows={"train": 60, "val": 2, "test": 20})
    with pytest.raises(ValueError, match=r"split 'val' has 2 rows.*window=5, horizon=3"):
        SeriesDataModule(tmp_path, window=5, horizon=3).setup("fit")


def test_series_splits_out_of_time_order_is_an_error(tmp_path: Path):
    write_series(tmp_path, rows={"train": 30, "val": 10, "test": 10})
    frame = pd.read_parquet(tmp_path / "series.parquet")
    frame.loc[45, "split"] = "val"  # test rows are 40..49
    frame.to_parquet(tmp_path / "series.parquet", index=False)
    with pytest.raises(ValueError, match=r"not in time order.*row 45 is 'val' after 'test'"):
        SeriesDataModule(tmp_path, window=5).setup("fit")


def test_series_nan_is_named_with_row_and_column(tmp_path: Path):
    write_series(tmp_path)
    frame = pd.read_parquet(tmp_path / "series.parquet")
    frame.loc[42, "Temperature"] = np.nan
    frame.to_parquet(tmp_path / "series.parquet", index=False)
    with pytest.raises(ValueError, match=r"'Temperature' is nan at row 42"):
        SeriesDataModule(tmp_path).setup("fit")


def test_series_missing_meta_is_named(tmp_path: Path):
    write_series(tmp_path)
    (tmp_path / "meta.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"meta\.json: not found"):
        SeriesDataModule(tmp_path).setup("fit")


# --- Lightning fits on the data modules -----------------------------------------------------


def _cnn_fit(
    data_dir: Path, seed: int, epochs: int = 1, **dm_kwargs
) -> tuple[ImageClassifier, pl.Trainer]:
    pl.seed_everything(seed, verbose=False)
    dm = ImageDataModule(data_dir, batch_size=8, seed=seed, **dm_kwargs)
    dm.setup("fit")
    model = ImageClassifier(
        num_classes=dm.num_classes,
        conv=[4, 8, 8],
        dense=8,
        input_mean=dm.pixel_mean,
        input_std=dm.pixel_std,
    )
    trainer = _trainer(max_epochs=epochs)
    trainer.fit(model, datamodule=dm)
    return model, trainer


def test_cnn_fit_logs_epoch_metrics_and_exact_val_accuracy(tmp_path: Path):
    model, trainer = _cnn_fit(write_images(tmp_path), seed=0)
    metrics = trainer.callback_metrics
    assert {"train_loss", "train_acc", "val_loss", "val_acc"} <= set(metrics)
    assert not any(k.endswith("_step") for k in metrics)  # per-epoch logging only
    # val has 12 images in batches of 8 and 4: the logged value must be the per-sample mean.
    dm = ImageDataModule(tmp_path)
    dm.setup("test")
    x, y = dm.tensors["val"]
    with torch.no_grad():
        expected = (model(x).argmax(1) == y).float().mean()
    torch.testing.assert_close(metrics["val_acc"], expected)
    (result,) = trainer.test(model, datamodule=dm, verbose=False)
    assert set(result) == {"test_loss", "test_acc"}


def test_cnn_fits_on_streamed_splits(tmp_path: Path):
    # memory_mb=0: every split streams; OneCycle needs the loader's length up front
    model, trainer = _cnn_fit(write_images(tmp_path), seed=0, epochs=2, memory_mb=0)
    assert trainer.datamodule.streamed == ["train", "val", "test"]
    assert trainer.global_step == 2 * 5  # 40 train images in batches of 8, twice
    assert trainer.lr_scheduler_configs[0].scheduler.last_epoch == 10  # stepped every batch
    loaded = ImageDataModule(tmp_path)
    loaded.setup("test")
    x, y = loaded.tensors["val"]
    with torch.no_grad():
        expected = (model(x).argmax(1) == y).float().mean()
    torch.testing.assert_close(trainer.callback_metrics["val_acc"], expected)


def test_cnn_checkpoint_loads_with_weights_only(tmp_path: Path):
    model, trainer = _cnn_fit(write_images(tmp_path / "data"), seed=0)
    trainer.save_checkpoint(tmp_path / "last.ckpt")
    loaded = ImageClassifier.load_from_checkpoint(tmp_path / "last.ckpt", weights_only=True)
    assert loaded.hparams.conv == model.hparams.conv and loaded.hparams.dense == 8
    x = torch.rand(3, 1, 28, 28)
    torch.testing.assert_close(loaded.eval()(x), model.eval()(x))


def test_rnn_fit_logs_epoch_metrics(tmp_path: Path):
    pl.seed_everything(0, verbose=False)
    dm = SeriesDataModule(write_series(tmp_path), window=6, horizon=2, batch_size=16)
    dm.setup("fit")
    model = SeriesForecaster(n_features=dm.n_features, layers=2, hidden=8, horizon=2)
    before = model.net.head.weight.detach().clone()
    trainer = _trainer()
    trainer.fit(model, datamodule=dm)
    assert {"train_loss", "train_mae", "val_loss", "val_mae"} <= set(trainer.callback_metrics)
    assert not torch.equal(before, model.net.head.weight)  # it trained
    (result,) = trainer.test(model, datamodule=dm, verbose=False)
    assert set(result) == {"test_loss", "test_mae"} and result["test_loss"] > 0


def test_seeded_fits_are_identical(tmp_path: Path):  # augmentation and schedule included
    write_images(tmp_path)
    a, _ = _cnn_fit(tmp_path, seed=7)
    b, _ = _cnn_fit(tmp_path, seed=7)
    c, _ = _cnn_fit(tmp_path, seed=8)
    for (name, wa), wb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(wa, wb), name
    assert not torch.equal(a.net[1].weight, c.net[1].weight)  # the seed matters
