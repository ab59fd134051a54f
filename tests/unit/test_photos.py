"""Real photos (JPEG and PNG, ~60 to ~400 px, RGB / RGBA / grey) through the image stages.

The conversion (`prepare.images.size` / `.mode` / `.resize`) as a pure function; the gate
through the CLI with and without it (without: today's strict 28x28 L checks quarantine
every photo; with: only images that cannot be converted); the data module and CNN on
3-channel data. Training on photos through the CLI: tests/integration/test_photos.py.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from PIL import Image

from bigdeep.cli import main
from bigdeep.config import ImagePrepare, Settings
from bigdeep.data.datamodules import ImageDataModule
from bigdeep.data.images import to_array
from bigdeep.data.transforms import random_affine
from bigdeep.prepare import prepare_images
from bigdeep.train import build_image_job
from tests.unit.images import PHOTO_COLOURS, digit, photo, photo_folder, png

SIZE = [40, 48]  # height, width: not square, so a swapped axis shows
RED = np.array(PHOTO_COLOURS[0])


def converted(data: bytes, **cfg) -> np.ndarray:
    return to_array(data, ImagePrepare(**cfg))


# --- the conversion, pure --------------------------------------------------------------------


def test_each_resize_policy_gives_the_target_shape_and_keeps_the_subject():
    wide = photo(0, seed=1, size=(120, 300), fmt="PNG")  # a red disc in the middle
    out = {r: converted(wide, size=SIZE, mode="RGB", resize=r) for r in ("crop", "pad", "stretch")}
    for resize, a in out.items():
        assert a.shape == (40, 48, 3) and a.dtype == np.uint8, resize
        assert np.abs(a[20, 24].astype(int) - RED).max() < 40, resize  # the disc, centred
    # pad: 120x300 scaled by 0.16 is 19x48, so black bars above and below; the others fill
    assert out["pad"][:8].max() == 0 and out["pad"][-8:].max() == 0
    assert out["crop"][:8].min() > 0 and out["stretch"][:8].min() > 0
    assert converted(wide, size=SIZE, mode="L").shape == (40, 48)
    assert converted(wide, mode="RGB").shape == (120, 300, 3)  # mode only: size kept


def test_transparent_pixels_become_black_not_their_hidden_colour():
    im = Image.new("RGBA", (30, 20), (255, 255, 255, 0))  # invisible white
    im.paste((0, 255, 0, 255), (0, 0, 15, 20))  # left half opaque green
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    a = converted(buf.getvalue(), mode="RGB")
    assert a.shape == (20, 30, 3)
    assert (a[:, :15] == [0, 255, 0]).all() and (a[:, 15:] == 0).all()


def test_a_photo_stored_on_its_side_is_turned_upright():
    stored = np.zeros((60, 100, 3), np.uint8)  # 100 wide: left half red, right half blue
    stored[:, :50], stored[:, 50:] = (255, 0, 0), (0, 0, 255)
    im = Image.fromarray(stored)
    exif = im.getexif()
    exif[0x0112] = 6  # Orientation: shown rotated 90 degrees clockwise, as a phone stores it
    buf = io.BytesIO()
    im.save(buf, format="JPEG", exif=exif, quality=95)
    a = converted(buf.getvalue(), size=[20, 20], mode="RGB", resize="stretch")
    assert a[3, 10, 0] > 200 and a[3, 10, 2] < 60  # top: red
    assert a[16, 10, 2] > 200 and a[16, 10, 0] < 60  # bottom: blue


def test_no_conversion_is_todays_grey_decoding():
    pixels = digit(3)
    data = png(pixels)
    assert not ImagePrepare().converts
    assert np.array_equal(to_array(data, ImagePrepare()), pixels)


def test_params_are_validated_strictly():
    good = Settings.model_validate({"prepare": {"images": {"size": [64, 64], "mode": "RGB"}}})
    assert good.prepare.images.size == (64, 64) and good.prepare.images.converts
    bad = [
        ({"size": [64]}, "prepare.images.size"),
        ({"size": [0, 64]}, "prepare.images.size"),
        ({"size": [10, 10]}, "too small for 3 conv layers"),  # the CNN's feature map vanishes
        ({"mode": "CMYK"}, "prepare.images.mode"),
        ({"resize": "zoom"}, "prepare.images.resize"),
        ({"sise": [64, 64]}, "prepare.images.sise"),
    ]
    for images, named in bad:
        with pytest.raises(ValueError, match=named.replace(".", r"\.")):
            Settings.model_validate({"prepare": {"images": images}})


# --- the gate, through the CLI -------------------------------------------------------------


def _project(root: Path, prepare: dict | None = None, **quality) -> list[str]:
    """A tmp project: 3 classes x 6 photos, plus a 5x5 photo and a 16-bit grey PNG in c0."""
    classes = photo_folder(root / "src", classes=3, per_class=6, seed=4)
    (root / "src" / "c0" / "tiny.png").write_bytes(photo(0, 9, (5, 5), "PNG"))
    deep = np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 15
    (root / "src" / "c0" / "deep.png").write_bytes(png(deep))
    params = {
        "data": {"images": {"source": f"folder:{root / 'src'}", "per_class": None}},
        "quality": {"images": {"classes": classes, "min_rows": 3, **quality}},
        "prepare": {"images": prepare or {}},
        "train": {"cnn": {"epochs": 2, "batch_size": 16, "conv": [8, 16], "dense": 16}},
    }
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    return classes


def _ingest_and_validate(capsys) -> tuple[int, str, dict, pd.DataFrame]:
    assert main(["ingest", "images", "--out", "data/raw/images"]) == 0
    capsys.readouterr()
    code = main(
        [
            "validate",
            "images",
            "--raw",
            "data/raw/images",
            "--report",
            "reports/quality/images.json",
            "--quarantine",
            "data/quarantine/images",
            "--reference",
            "data/reference/images",
        ]
    )
    report = json.loads(Path("reports/quality/images.json").read_text())
    reasons = pd.read_parquet("data/quarantine/images/reasons.parquet")
    return code, capsys.readouterr().out, report, reasons


def _checks_by_record(reasons: pd.DataFrame) -> dict[str, set[str]]:
    return reasons.groupby("record")["check"].agg(set).to_dict()


def test_without_a_conversion_the_gate_still_quarantines_every_photo(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    _project(tmp_path)
    code, out, report, reasons = _ingest_and_validate(capsys)
    assert code == 3 and not report["passed"]
    flagged = _checks_by_record(reasons)
    assert report["rows"] == 20 and len(flagged) == 20  # none is 28x28
    assert all({"height", "width"} <= checks for checks in flagged.values())
    assert report["shapes"]["conversion"].startswith("none: every image must already be 28x28")
    assert "conversion: none" in out


def test_with_a_conversion_the_gate_checks_only_that_photos_convert(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    _project(tmp_path, {"size": [64, 64], "mode": "RGB"}, max_quarantine_fraction=0.15)
    code, out, report, reasons = _ingest_and_validate(capsys)
    assert code == 0 and report["passed"], report["failures"]
    flagged = _checks_by_record(reasons)
    tiny = next(r for r in flagged if r.endswith("tiny.png"))
    deep = next(r for r in flagged if r.endswith("deep.png"))
    assert flagged == {tiny: {"height", "width"}, deep: {"mode", "bit_depth", "pixel_max"}}
    assert any("5 pixels high, below min_side=8" in f for f in report["failures"])

    shapes = report["shapes"]
    # per class: n = 0, 5 RGBA PNG; 1, 2, 3 RGB JPEG; 4 RGB PNG; plus tiny (RGB) and deep
    modes = {m["mode"]: m["records"] for m in shapes["modes"]}
    assert modes == {"RGB": 13, "RGBA": 6, "I;16": 1}
    counted = sum(s["records"] for s in shapes["sizes"]) + shapes["other_records"]
    assert counted == 20  # every decoded image, once
    assert shapes["height_range"][0] == 5 and shapes["height_range"][1] >= 60
    assert len(shapes["sizes"]) == 10 and shapes["other_sizes"] == 10  # 20 distinct sizes
    assert shapes["conversion"].startswith("resized to 64x64 (height x width, crop)")
    assert "shapes    20 size(s)" in out and "resized to 64x64" in out


# --- prepared colour data, the data module and the CNN --------------------------------------


@pytest.fixture(scope="module")
def colour_data(tmp_path_factory) -> tuple[Path, Settings]:
    """Photos converted to 40x48 RGB and split (no gate: every photo here converts)."""
    from bigdeep.ingest import ingest_images

    root = tmp_path_factory.mktemp("photos")
    classes = photo_folder(root / "src", classes=3, per_class=10, seed=5)
    s = Settings.model_validate(
        {
            "data": {"images": {"source": f"folder:{root / 'src'}", "per_class": None}},
            "quality": {"images": {"classes": classes}},
            "prepare": {"images": {"size": SIZE, "mode": "RGB"}},
            "train": {"cnn": {"batch_size": 8, "conv": [4, 8], "dense": 8}},
        }
    )
    ingest_images(s, root / "raw")
    (root / "q").mkdir()
    prepare_images(root / "raw", root / "q", root / "out", s.prepare.images, classes, s.seed)
    return root / "out", s


def test_prepare_stores_the_converted_colour_images(colour_data):
    out, _ = colour_data
    x = np.load(out / "train_x.npy")
    assert x.shape[1:] == (40, 48, 3) and x.dtype == np.uint8
    assert x.std(axis=3).mean() > 10  # colour, not grey copied into 3 channels


def test_data_module_and_cnn_take_channels_and_size_from_the_data(colour_data):
    out, s = colour_data
    job = build_image_job(s, out)
    dm, model = job.datamodule, job.model
    assert (dm.channels, dm.image_size) == (3, (40, 48))
    assert model.net[1].in_channels == 3 and model.hparams.image_size == (40, 48)
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (8, 3, 40, 48) and x.dtype == torch.float32
    stored = torch.from_numpy(np.load(out / "val_x.npy")).permute(0, 3, 1, 2).float() / 255
    assert torch.equal(dm.tensors["val"][0], stored)
    assert model(x).shape == (8, 3)


def test_a_streamed_colour_split_gives_the_same_batches(colour_data):
    out, _ = colour_data
    dm = ImageDataModule(out, batch_size=8, memory_mb=0)  # every split streams from disk
    dm.setup("fit")
    assert dm.streamed == ["train", "val", "test"] and dm.channels == 3
    val = torch.cat([x for x, _ in dm.val_dataloader()])  # file order, never augmented
    stored = torch.from_numpy(np.load(out / "val_x.npy")).permute(0, 3, 1, 2).float() / 255
    assert torch.equal(val, stored)
    x, _ = next(iter(dm.train_dataloader()))
    assert x.shape == (8, 3, 40, 48)


def test_augmentation_moves_every_channel_alike():
    x = torch.zeros(2, 3, 20, 20)
    x[:, 0, 5:15, 5:15], x[:, 1, 5:15, 5:15], x[:, 2, 5:15, 5:15] = 1.0, 0.5, 0.25
    from bigdeep.data.transforms import Affine

    moved = random_affine(x, Affine(rotate=30, shift=0.1), torch.Generator().manual_seed(0))
    assert moved.shape == x.shape and not torch.equal(moved, x)
    # one transform per image, applied to every channel: the channels stay proportional
    torch.testing.assert_close(moved[:, 1], moved[:, 0] * 0.5)
    torch.testing.assert_close(moved[:, 2], moved[:, 0] * 0.25)


def test_sizes_of_equal_counts_are_listed_in_order_of_first_appearance():
    from collections import Counter

    from bigdeep.quality.gate import _count_shapes

    frame = pd.DataFrame(
        {
            "height": pd.array([30, 10, None, 20, 10, 30], dtype="Int64"),
            "width": pd.array([3, 1, None, 2, 1, 3], dtype="Int64"),
            "mode": pd.array(["L", "L", None, "RGB", "L", "L"], dtype="str"),
        }
    )
    sizes: Counter = Counter()
    modes: Counter = Counter()
    _count_shapes(frame, sizes, modes)
    _count_shapes(frame.iloc[3:4], sizes, modes)  # a second chunk adds to the counts
    assert sizes.most_common() == [((30, 3), 2), ((10, 1), 2), ((20, 2), 2)]
    assert modes == Counter({"L": 4, "RGB": 2})
