"""Tiny test images shared by the quality-gate tests, and photos of mixed sizes and modes."""

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


# Photos: one colour and shape per class on a noisy background, sizes and modes mixed, so
# a CNN can learn the classes once they are converted to one shape.
PHOTO_COLOURS = [(220, 40, 40), (40, 200, 60), (50, 70, 230), (230, 200, 40)]


def photo(
    cls: int, seed: int, size: tuple[int, int], fmt: str = "JPEG", mode: str = "RGB"
) -> bytes:
    """An encoded photo of class `cls` (0..3): its colour's disc (0, 2) or square (1, 3),
    size (height, width), on noise. fmt JPEG or PNG; mode RGB, RGBA, L, ..."""
    from PIL import ImageDraw

    rng = np.random.default_rng(seed)
    height, width = size
    noise = rng.integers(60, 140, size=(height, width, 3), dtype=np.uint8)
    im = Image.fromarray(noise, "RGB")
    side = int(min(height, width) * rng.uniform(0.5, 0.8))
    top, left = (height - side) // 2, (width - side) // 2
    box = (left, top, left + side, top + side)
    draw = ImageDraw.Draw(im)
    (draw.ellipse if cls % 2 == 0 else draw.rectangle)(box, fill=PHOTO_COLOURS[cls])
    buf = io.BytesIO()
    im.convert(mode).save(buf, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buf.getvalue()


def photo_folder(root, classes: int = 3, per_class: int = 6, seed: int = 0) -> list[str]:
    """`root/<class>/<n>.jpg|png`: mixed sizes (~60 to ~400 px a side), every fourth a PNG,
    every fifth PNG in mode RGBA and every seventh a grey JPEG. Returns the class names."""
    from pathlib import Path

    rng = np.random.default_rng(seed)
    names = [f"c{k}" for k in range(classes)]
    for k, name in enumerate(names):
        folder = Path(root) / name
        folder.mkdir(parents=True, exist_ok=True)
        for n in range(per_class):
            size = (int(rng.integers(60, 400)), int(rng.integers(60, 400)))
            fmt, mode = ("PNG", "RGB") if n % 4 == 0 else ("JPEG", "RGB")
            if n % 5 == 0:
                fmt, mode = "PNG", "RGBA"
            elif n % 7 == 0:
                fmt, mode = "JPEG", "L"
            data = photo(k, int(rng.integers(2**31)), size, fmt, mode)
            (folder / f"{n}.{'png' if fmt == 'PNG' else 'jpg'}").write_bytes(data)
    return names
