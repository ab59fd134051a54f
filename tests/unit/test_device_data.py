"""GPU-first training (issue 12), tested on the CPU device: device-resident splits cut by
index tensors, augmentation after the transfer with per-step seeded streams, no host syncs
in the step code, exact epoch metrics, precision measured, opt-in torch.compile.

Run: python -m pytest tests/unit/test_device_data.py -q
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import yaml
from pydantic import ValidationError

from bigdeep.config import Trainer
from bigdeep.data.datamodules import ImageDataModule, SeriesDataModule
from bigdeep.data.datasets import DeviceBatches, RawImages, Windows, shard_rows
from bigdeep.data.transforms import Affine, as_nchw, random_affine, step_generator
from bigdeep.models.cnn import ImageClassifier
from bigdeep.models.metrics import EpochMeans, StagedModule
from bigdeep.models.rnn import SeriesForecaster
from bigdeep.training.plumbing import fastest_precision
from tests.unit.test_datamodules import (
    IMAGE_ROWS,
    NO_AUGMENT,
    _quiet_lightning,  # noqa: F401 - autouse fixture
    _trainer,
    write_images,
    write_series,
)

torch.set_num_threads(1)


def _fills(x: torch.Tensor) -> list[int]:
    """The fill value of each image of a uint8 (B, H, W) or float (B, 1, H, W) batch."""
    x = x if x.dtype == torch.uint8 else (x * 255).round()
    return [int(v) for v in x.reshape(len(x), -1)[:, 0]]


def test_device_batches_cover_each_row_once_reshuffled_per_epoch():
    images = torch.arange(10, dtype=torch.uint8)[:, None, None].expand(10, 2, 2).contiguous()
    data = RawImages(images, torch.arange(10))
    epoch = [0]
    loader = DeviceBatches(data, 4, True, 3, lambda: epoch[0], torch.device("cpu"))
    assert len(loader) == 3
    first = [y.tolist() for _, y in loader]
    assert [len(b) for b in first] == [4, 4, 2]
    assert sorted(sum(first, [])) == list(range(10))
    assert [y.tolist() for _, y in loader] == first  # same epoch, same order
    epoch[0] = 1
    second = sum((y.tolist() for _, y in loader), [])
    assert sorted(second) == list(range(10)) and second != sum(first, [])
    in_order = DeviceBatches(data, 4, False, 3, lambda: 5, torch.device("cpu"))
    assert sum((_fills(x) for x, _ in in_order), []) == list(range(10))


def test_shard_rows_gives_each_process_its_own_equal_share():
    shards = [shard_rows(10, rank, 3) for rank in range(3)]
    assert [len(s) for s in shards] == [4, 4, 4]  # padded to equal steps
    assert sorted(set(sum((s.tolist() for s in shards), []))) == list(range(10))
    assert shard_rows(10, 0, 1).tolist() == list(range(10))


def _cnn_fit(data_dir: Path, seed: int, epochs: int = 1, **dm_kwargs):
    pl.seed_everything(seed, verbose=False)
    dm = ImageDataModule(data_dir, batch_size=8, seed=seed, **dm_kwargs)
    dm.setup("fit")
    model = ImageClassifier(
        num_classes=dm.num_classes, conv=[4, 8, 8], dense=8, input_mean=dm.pixel_mean
    )
    seen: list[tuple[int, torch.Tensor, torch.Tensor]] = []

    class Seen(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            seen.append((trainer.global_step, batch[0].clone(), batch[1].clone()))

    trainer = _trainer(max_epochs=epochs, callbacks=[Seen()])
    trainer.fit(model, datamodule=dm)
    return model, trainer, dm, seen


def test_device_path_trains_on_uint8_rows_and_epoch_metrics_are_exact(tmp_path: Path):
    model, trainer, dm, seen = _cnn_fit(write_images(tmp_path), 0, 2, device_data="on")
    assert dm.on_device == ["train", "val"]
    assert isinstance(trainer.train_dataloader, DeviceBatches)
    assert dm._on_device["train@cpu:0/1"].images.dtype == torch.uint8  # a quarter of float32
    assert trainer.global_step == 2 * 5  # 40 images in batches of 8, twice
    assert all(x.dtype == torch.float32 and x.shape[1:] == (1, 28, 28) for _, x, _ in seen)
    # val (12 images, batches of 8 and 4): the logged value is the exact per-sample mean
    x, y = dm.tensors["val"]
    with torch.no_grad():
        logits = model(x)
    expected_acc = (logits.argmax(1) == y).float().mean()
    expected_loss = torch.nn.functional.cross_entropy(logits, y, label_smoothing=0.1)
    torch.testing.assert_close(trainer.callback_metrics["val_acc"], expected_acc)
    torch.testing.assert_close(trainer.callback_metrics["val_loss"], expected_loss)
    (result,) = trainer.test(model, datamodule=dm, verbose=False)
    assert dm.on_device == ["train", "val", "test"] and set(result) == {"test_loss", "test_acc"}


class Recording(ImageDataModule):
    """The real data module; it also keeps each train batch before and after its hook."""

    def on_after_batch_transfer(self, batch, dataloader_idx):
        out = super().on_after_batch_transfer(batch, dataloader_idx)
        if self.trainer.training:
            self.record.append((self.trainer.global_step, batch[0].clone(), out[0].clone()))
        return out


def test_device_augmentation_is_the_seeded_per_step_affine_of_the_stored_rows(tmp_path: Path):
    pl.seed_everything(5, verbose=False)
    dm = Recording(write_images(tmp_path), batch_size=8, seed=5, device_data="on")
    dm.record = []
    dm.setup("fit")
    model = ImageClassifier(num_classes=3, conv=[4, 8, 8], dense=8)
    _trainer(max_epochs=2).fit(model, datamodule=dm)
    assert [step for step, _, _ in dm.record] == list(range(10))  # a stream per step
    for step, raw, out in dm.record:
        assert raw.dtype == torch.uint8 and raw.shape[1:] == (28, 28)  # as stored
        stream = step_generator(5, step, 0, torch.device("cpu"))
        torch.testing.assert_close(out, random_affine(as_nchw(raw), dm.augment, stream))
        assert not torch.equal(out, as_nchw(raw))  # it did augment


def test_zero_augmentation_is_identity_on_the_device_path(tmp_path: Path):
    _, _, dm, seen = _cnn_fit(write_images(tmp_path), 0, 1, device_data="on", **NO_AUGMENT)
    fills = sorted(sum((_fills(x) for _, x, _ in seen), []))
    assert fills == list(range(IMAGE_ROWS["train"]))  # every stored image, unchanged


def test_a_shift_moves_the_image_by_the_drawn_pixels():
    x = torch.zeros(1, 1, 28, 28)
    x[0, 0, 10:14, 12:16] = 1.0  # a 4 x 4 square, centre (11.5, 13.5)
    ranges = Affine(shift=0.1)
    out = random_affine(x, ranges, step_generator(1, 2, 0, "cpu"))
    # the same draws, in random_affine's order: angle, zoom, tx, ty
    g = step_generator(1, 2, 0, "cpu")
    _, _, u_tx, u_ty = (torch.rand(1, generator=g) for _ in range(4))
    tx, ty = (u_tx * 2 - 1) * 0.2, (u_ty * 2 - 1) * 0.2  # in [-1, 1] grid units
    # affine_grid maps output to input: content moves by -t x (size / 2) pixels
    dx, dy = float(-tx * 14), float(-ty * 14)
    assert abs(dx) > 0.3 or abs(dy) > 0.3  # the check below is not vacuous

    def centre(img: torch.Tensor) -> tuple[float, float]:
        rows, cols = torch.meshgrid(torch.arange(28.0), torch.arange(28.0), indexing="ij")
        mass = img.sum()
        return float((img * rows).sum() / mass), float((img * cols).sum() / mass)

    cy, cx = centre(out[0, 0])
    assert abs(cx - (13.5 + dx)) < 1e-3 and abs(cy - (11.5 + dy)) < 1e-3
    torch.testing.assert_close(out.sum(), x.sum())  # moved, not lost


def test_step_streams_repeat_by_seed_and_differ_by_step_and_rank():
    x = torch.rand(6, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    ranges = Affine(10, 0.07, 0.1)

    def aug(seed, step, rank):
        return random_affine(x, ranges, step_generator(seed, step, rank, torch.device("cpu")))

    assert torch.equal(aug(42, 3, 0), aug(42, 3, 0))
    assert not torch.equal(aug(42, 3, 0), aug(42, 4, 0))
    assert not torch.equal(aug(42, 3, 0), aug(42, 3, 1))
    assert not torch.equal(aug(42, 3, 0), aug(43, 3, 0))


def test_seeded_device_path_fits_are_identical(tmp_path: Path):
    write_images(tmp_path)
    a, *_ = _cnn_fit(tmp_path, 7, device_data="on")
    b, *_ = _cnn_fit(tmp_path, 7, device_data="on")
    c, *_ = _cnn_fit(tmp_path, 8, device_data="on")
    for (name, wa), wb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(wa, wb), name
    assert not torch.equal(a.net[1].weight, c.net[1].weight)


def test_auto_leaves_streamed_splits_on_the_loader_path_and_on_names_them(tmp_path: Path):
    write_images(tmp_path)
    _, trainer, dm, _ = _cnn_fit(tmp_path, 0, device_data="auto", memory_mb=0)
    assert dm.on_device == [] and dm.streamed == ["train", "val", "test"]
    assert trainer.global_step == 5
    with pytest.raises(ValueError, match=r"device_data is 'on' but the 'train' split.*streamed"):
        _cnn_fit(tmp_path, 0, device_data="on", memory_mb=0)


def test_auto_keeps_the_dataloader_path_on_the_cpu_and_on_takes_the_device_path(tmp_path: Path):
    write_images(tmp_path)
    _, trainer, dm, _ = _cnn_fit(tmp_path, 0, device_data="auto")
    assert dm.on_device == [] and not isinstance(trainer.train_dataloader, DeviceBatches)
    _, trainer, dm, _ = _cnn_fit(tmp_path, 0, device_data="on")
    assert dm.on_device == ["train", "val"] and isinstance(trainer.train_dataloader, DeviceBatches)


def test_off_and_no_trainer_keep_the_dataloader_path(tmp_path: Path):
    write_images(tmp_path)
    _, trainer, dm, _ = _cnn_fit(tmp_path, 0, device_data="off")
    assert dm.on_device == [] and not isinstance(trainer.train_dataloader, DeviceBatches)
    loose = ImageDataModule(tmp_path, device_data="on")
    loose.setup("fit")
    x, _ = next(iter(loose.train_dataloader()))  # no trainer: the host loader, float batches
    assert x.dtype == torch.float32


def test_series_device_path_gives_the_loader_path_windows(tmp_path: Path):
    data = write_series(tmp_path)
    dm = SeriesDataModule(data, window=6, horizon=2, batch_size=16, device_data="on")
    dm.setup("fit")
    model = SeriesForecaster(n_features=dm.n_features, layers=1, hidden=4, horizon=2)
    trainer = _trainer()
    trainer.fit(model, datamodule=dm)
    assert dm.on_device == ["train", "val"]
    on_device = dm._on_device["val@cpu:0/1"]
    assert isinstance(on_device, Windows)
    xs, ys = zip(*DeviceBatches(on_device, 16, False, 0, lambda: 0, "cpu"), strict=True)
    lx, ly = zip(*dm.eval_dataloader("val"), strict=True)
    torch.testing.assert_close(torch.cat(xs), torch.cat(lx))
    torch.testing.assert_close(torch.cat(ys), torch.cat(ly))


HOST_SYNC = re.compile(
    r"\.item\(|\.cpu\(|\.tolist\(|\.numpy\(|(?<![.\w])(float|int|bool)\(|\.to\(\"cpu"
)


@pytest.mark.parametrize(
    "function",
    [
        StagedModule._step,
        ImageClassifier.model_step,
        ImageClassifier.step_metrics,
        SeriesForecaster.model_step,
        SeriesForecaster.step_metrics,
        EpochMeans.update,
        DeviceBatches.__iter__,
        DeviceBatches.order,
        RawImages.batch,
        Windows.batch,
        ImageDataModule.on_after_batch_transfer,
        random_affine,
        step_generator,
    ],
    ids=lambda f: f.__qualname__,
)
def test_no_host_sync_in_the_step_code(function):
    body = inspect.getsource(function).split('"""')[-1]  # the code after the docstring
    assert not HOST_SYNC.findall(body), f"{function.__qualname__} syncs with the host"


def test_trainer_settings_for_gpu_first_training_are_validated():
    assert Trainer().device_data == "auto" and Trainer().compile is False
    assert Trainer(compile="reduce-overhead").compile == "reduce-overhead"
    on_off = yaml.safe_load("{a: on, b: off}")  # YAML's booleans, as params.yaml gives them
    assert (
        Trainer(device_data=on_off["a"]).device_data,
        Trainer(device_data=on_off["b"]).device_data,
    ) == ("on", "off")
    for bad in ({"device_data": "gpu"}, {"device_budget_fraction": 0}, {"compile": "fast"}):
        with pytest.raises(ValidationError):
            Trainer(**bad)
    with pytest.raises(ValueError, match="device_data must be one of"):
        ImageDataModule("x", device_data="always")


def test_precision_is_measured_where_asked_and_kept_where_set():
    model = ImageClassifier(conv=[4, 8, 8], dense=8)
    batch = (torch.rand(16, 1, 28, 28), torch.randint(0, 10, (16,)))
    loss = torch.nn.functional.cross_entropy
    chosen, timings = fastest_precision(Trainer(), model, batch, loss, "cpu", steps=2)
    assert set(timings) == {"32-true", "bf16-mixed"} and all(t > 0 for t in timings.values())
    assert chosen == min(timings, key=timings.__getitem__)
    assert fastest_precision(Trainer(precision="16-mixed"), model, batch, loss) == ("16-mixed", {})
    if not torch.cuda.is_available():  # nothing to measure on: today's choice, no cost
        assert fastest_precision(Trainer(), model, batch, loss) == ("32-true", {})
    assert all(p.grad is None for p in model.parameters())  # measured on a copy
