"""Tiny test images shared by the quality-gate tests."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def digit(seed: int, shape: tuple[int, ...] = (28, 28), dtype: type = np.uint8) -> np.ndarray:
    high = 256 if dtype == np.uint8 else 65_536
    return np.random.default_rng(seed).integers(0, high, size=shape, dtype=dtype)
