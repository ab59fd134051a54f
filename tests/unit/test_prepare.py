"""prepare: seeded stratified image splits; time-ordered series splits scaled on train only."""

from __future__ import annotations

import hashlib
import json
import tracemalloc
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bigdeep.config import ImagePrepare, SeriesData, SeriesPrepare, Settings
from bigdeep.data.prepared import read_image_split
from bigdeep.data.sources import encode_png
from bigdeep.data.store import read_all, write_shards
from bigdeep.ingest import ingest_images
from bigdeep.prepare import PrepareError, prepare_images, prepare_series_frame, stratified_split
from tests.unit.test_ingest import write_idx


def test_stratified_split_is_seeded_disjoint_and_proportional():
    labels = np.repeat(np.arange(4), 50)
    a = stratified_split(labels, 0.1, 0.2, seed=1)
    b = stratified_split(labels, 0.1, 0.2, seed=1)
    c = stratified_split(labels, 0.1, 0.2, seed=2)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["test"], c["test"])
    everything = np.concatenate(list(a.values()))
    assert len(everything) == len(set(everything)) == 200  # disjoint and complete
    for cls in range(4):
        assert (labels[a["test"]] == cls).sum() == 10 and (labels[a["val"]] == cls).sum() == 5


def test_stratified_split_refuses_an_empty_split():
    with pytest.raises(PrepareError, match="'val' is empty"):
        stratified_split(np.array([0, 1]), 0.1, 0.2, seed=0)


def _arrays(folder: Path, split: str) -> dict[str, np.ndarray]:
    return dict(zip(("x", "y", "ids"), read_image_split(folder, split), strict=True))


@pytest.mark.slow
def test_prepare_images_drops_quarantined_records(tmp_path):
    ingest_images(
        Settings.model_validate({"data": {"images": {"per_class": 10}}}), tmp_path / "raw"
    )
    quarantine = tmp_path / "q"
    quarantine.mkdir()
    pd.DataFrame({"record": ["builtin:mnist/00000"], "check": ["x"], "observed": ["y"]}).to_parquet(
        quarantine / "reasons.parquet"
    )
    classes = [str(d) for d in range(10)]
    counts = prepare_images(
        tmp_path / "raw", quarantine, tmp_path / "out", ImagePrepare(), classes, seed=0
    )
    assert counts["train"] + counts["val"] + counts["test"] == 99
    assert counts["test_from"] == "random"  # the builtin digits ship no test set
    splits = {k: _arrays(tmp_path / "out", k) for k in ("train", "val", "test")}
    assert splits["train"]["x"].shape[1:] == (28, 28) and splits["train"]["x"].dtype == np.uint8
    ids = np.concatenate([s["ids"] for s in splits.values()])
    assert len(set(ids)) == 99  # no image in two splits
    assert json.loads((tmp_path / "out" / "classes.json").read_text()) == classes


def idx_source(folder, rng) -> dict[str, np.ndarray]:
    """MNIST-style IDX files: 60 train and 20 t10k images, every image distinct."""
    labels = {}
    for split, n in (("train", 60), ("t10k", 20)):
        images = rng.integers(0, 256, size=(n, 28, 28))
        labels[split] = np.arange(n) % 10
        write_idx(folder / f"{split}-images-idx3-ubyte.gz", images)
        write_idx(folder / f"{split}-labels-idx1-ubyte.gz", labels[split])
    return labels


@pytest.mark.parametrize("source_test", [True, False])
def test_a_test_set_the_source_ships_stays_the_test_split(tmp_path, source_test):
    src = tmp_path / "mnist"
    src.mkdir()
    labels = idx_source(src, np.random.default_rng(0))
    settings = Settings.model_validate(
        {"data": {"images": {"source": f"idx:{src}", "per_class": None}}}
    )
    ingest_images(settings, tmp_path / "raw")
    (tmp_path / "q").mkdir()
    cfg = ImagePrepare(val_fraction=0.1, test_fraction=0.2, source_test=source_test)
    classes = [str(d) for d in range(10)]
    counts = prepare_images(tmp_path / "raw", tmp_path / "q", tmp_path / "out", cfg, classes, 0)

    test = _arrays(tmp_path / "out", "test")
    t10k = read_all(tmp_path / "raw")
    t10k = t10k[t10k["record_id"].str.startswith("idx:test/")]
    t10k_ids = {hashlib.sha256(b).hexdigest() for b in t10k["image"]}
    if source_test:
        assert counts["test_from"] == "source"
        assert set(test["ids"]) == t10k_ids  # exactly the t10k images, none of train's
        np.testing.assert_array_equal(np.sort(test["y"]), np.sort(labels["t10k"]))
        assert (counts["train"], counts["val"]) == (50, 10)  # val: round(10% x 6) per class
    else:
        assert counts["test_from"] == "random"
        assert counts["test"] == 20  # round(20% x 8) per class, drawn from all 80
        assert set(test["ids"]) != t10k_ids


def write_raw_images(raw: Path, sizes: list[tuple[int, int]], shard_rows: int) -> None:
    """Canonical raw shards of distinct images of the given sizes, labelled i % 10."""

    def rows(start: int, stop: int) -> pd.DataFrame:
        records = []
        for i in range(start, stop):
            pixels = np.zeros(sizes[i], np.uint8)
            pixels.flat[:4] = np.frombuffer(i.to_bytes(4, "big"), np.uint8)  # distinct
            records.append((f"t:{i:06d}", f"img{i}", str(i % 10), encode_png(pixels)))
        return pd.DataFrame(records, columns=["record_id", "source", "label", "image"])

    write_shards(
        (rows(i, min(i + shard_rows, len(sizes))) for i in range(0, len(sizes), shard_rows)), raw
    )


@pytest.mark.slow
def test_prepare_never_holds_the_decoded_images_in_memory(tmp_path):
    n, side = 4000, 128  # 64 MiB of pixels once decoded
    write_raw_images(tmp_path / "raw", [(side, side)] * n, shard_rows=250)
    (tmp_path / "q").mkdir()
    classes = [str(d) for d in range(10)]
    tracemalloc.start()
    try:
        counts = prepare_images(
            tmp_path / "raw", tmp_path / "q", tmp_path / "out", ImagePrepare(), classes, 0
        )
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert counts["train"] + counts["val"] + counts["test"] == n
    train = _arrays(tmp_path / "out", "train")
    assert train["x"].shape == (counts["train"], side, side)
    first = int.from_bytes(train["x"][0].flat[:4].tobytes(), "big")  # which image it is
    assert train["y"][0] == first % 10
    assert peak < 0.4 * n * side * side  # one shard and per-image ids, not 64 MiB
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "classes.json",
        *(f"{split}_{a}.npy" for split in ("test", "train", "val") for a in ("ids", "x", "y")),
    ]  # no temporary file left behind
    assert not (tmp_path / "out.tmp").exists()


def test_images_of_different_sizes_are_named(tmp_path):
    write_raw_images(tmp_path / "raw", [(28, 28)] * 30 + [(20, 28)] + [(28, 28)] * 69, 16)
    (tmp_path / "q").mkdir()
    with pytest.raises(PrepareError, match="record t:000030 is 20x28, the others 28x28"):
        prepare_images(
            tmp_path / "raw",
            tmp_path / "q",
            tmp_path / "out",
            ImagePrepare(),
            list("0123456789"),
            0,
        )


def series_frame(n: int) -> pd.DataFrame:
    ts = pd.date_range("2024-01-01", periods=n, freq="30min", tz="UTC")
    return pd.DataFrame(
        {
            "row": np.arange(1, n + 1),
            "timestamp": ts,
            "Demand": np.arange(n, dtype=float),
            "Temperature": 20.0,
        }
    )


def test_series_split_is_time_ordered_and_scaled_on_train_only():
    scaled, meta = prepare_series_frame(
        series_frame(200), SeriesData(), SeriesPrepare(resample="1h")
    )
    assert len(scaled) == 100  # half-hourly -> hourly
    assert list(scaled["split"]) == ["train"] * 70 + ["val"] * 15 + ["test"] * 15
    train = scaled[scaled["split"] == "train"]
    assert abs(train["Demand"].mean()) < 1e-9 and abs(train["Demand"].std(ddof=0) - 1) < 1e-9
    # hourly mean of raw values 0..139 (train rows) -> mean 69.5: fitted on train alone
    assert meta["scaler"]["Demand"]["mean"] == pytest.approx(69.5)
    assert scaled[scaled["split"] == "test"]["Demand"].min() > train["Demand"].max()


def test_series_gap_after_resampling_is_named():
    frame = series_frame(200).drop(index=range(50, 60))
    with pytest.raises(PrepareError, match="first at 2024-01-02T01:00:00"):
        prepare_series_frame(frame, SeriesData(), SeriesPrepare(resample="1h"))
