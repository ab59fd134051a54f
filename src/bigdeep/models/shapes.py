"""Shape arithmetic of the CNN, without torch (params.yaml is checked with it at load time)."""

from __future__ import annotations


def conv_output_size(image_size: tuple[int, int], n_conv: int) -> tuple[int, int]:
    """(H, W) after `n_conv` 3x3 'valid' convs with a 2x2 max-pool between consecutive ones."""
    h, w = image_size
    for i in range(n_conv):
        h, w = h - 2, w - 2  # 3x3 conv, no padding
        if h < 1 or w < 1:
            raise ValueError(
                f"image_size {tuple(image_size)} is too small for {n_conv} conv layers "
                f"(feature map vanishes after conv {i + 1})"
            )
        if i < n_conv - 1:
            h, w = h // 2, w // 2  # max-pool 2, floor like Keras
    return h, w
