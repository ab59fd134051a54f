"""Images to training arrays: the one place an image's bytes become uint8 pixels.

    pixels = to_array(data, settings.prepare.images)   # (H, W) grey, or (H, W, 3) RGB

Without a conversion (`prepare.images.size` and `.mode` both null, the MNIST default) an
image is decoded and made grey as it always was, and the gate has already checked that
it is quality.images.height x width. With one, every image is turned upright (its EXIF
orientation), converted to the mode (transparency composited onto black), and resized to
`size` as `resize` says. The gate checks only that an image can be converted (it decodes,
its mode is one of CONVERTIBLE_MODES, no side below quality.images.min_side).
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageOps

from bigdeep.config import ImagePrepare, ImageQuality

# 8-bit modes PIL converts to L and RGB faithfully. 16/32-bit and float modes (I;16, I, F)
# would be clipped to 0..255, not scaled: they are refused by the gate instead.
CONVERTIBLE_MODES = ("1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr")

RESAMPLE = Image.Resampling.LANCZOS  # downscaling photos: the sharpest of PIL's filters


def decode_grey(data: bytes) -> np.ndarray:
    """PNG (or any PIL format) bytes -> (H, W) uint8: no conversion configured."""
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("L"), dtype=np.uint8)


def to_array(data: bytes, cfg: ImagePrepare) -> np.ndarray:
    """Image bytes -> uint8 (H, W) for mode L, (H, W, 3) for RGB, shaped as `cfg` says."""
    if not cfg.converts:
        return decode_grey(data)
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(convert(im, cfg), dtype=np.uint8)


def convert(im: Image.Image, cfg: ImagePrepare) -> Image.Image:
    """The configured conversion of one decoded image (pure)."""
    if cfg.size is not None:
        im = ImageOps.exif_transpose(im)  # a phone's portrait photo, stored on its side
    im = _flatten(im, cfg.mode or "L")
    if cfg.size is None:
        return im
    height, width = cfg.size
    if cfg.resize == "crop":  # scale to cover the target, cut the centre
        return ImageOps.fit(im, (width, height), method=RESAMPLE)
    if cfg.resize == "pad":  # scale to fit inside the target, black bars
        return ImageOps.pad(im, (width, height), method=RESAMPLE, color=0)
    return im.resize((width, height), RESAMPLE)


def _flatten(im: Image.Image, mode: str) -> Image.Image:
    """`im` in `mode`; transparent pixels become black rather than their hidden colour."""
    if im.mode in ("LA", "PA", "RGBA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        im = Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba)
    return im.convert(mode)


def conversion_text(cfg: ImagePrepare, quality: ImageQuality) -> str:
    """What prepare does to the images, in words, for the quality report."""
    if not cfg.converts:
        return (
            f"none: every image must already be {quality.height}x{quality.width} "
            f"(height x width) mode {quality.mode}; stored grey (L)"
        )
    mode = cfg.mode or "L"
    if cfg.size is None:
        return (
            f"converted to mode {mode}; every image must already be "
            f"{quality.height}x{quality.width} (height x width)"
        )
    height, width = cfg.size
    return (
        f"resized to {height}x{width} (height x width, {cfg.resize}) and converted to mode "
        f"{mode}; accepted: modes {', '.join(CONVERTIBLE_MODES)}, no side below "
        f"{quality.min_side} px, at most {quality.max_pixels} pixels"
    )
