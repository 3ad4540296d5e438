"""Pixel helpers: colour-mode detection and the one conversion of an image to model pixels.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageOps

COLOUR_MODES = ("RGB", "RGBA", "CMYK", "P")


def _image_mode(modes: set[str]) -> str:
    """"RGB" when any image is in a colour mode, else "L" (grayscale)."""
    return "RGB" if modes & set(COLOUR_MODES) else "L"


def to_model_pixels(im: Image.Image, mode: str, size: int) -> np.ndarray:
    """An image as the model sees it: ``mode`` ("L" or "RGB"), ``size`` x ``size``, uint8 HWC.

    Non-square images are centre-cropped to a square first (``ImageOps.fit``); resizing is bilinear
    (PIL's bilinear filter is antialiased when shrinking; for the 8x8 digits it upsamples to 16x16).
    """
    if im.mode != mode:
        im = im.convert(mode)  # RGBA -> RGB drops alpha; P -> RGB applies the palette
    if im.size != (size, size):
        im = ImageOps.fit(im, (size, size), method=Image.Resampling.BILINEAR)
    arr = np.asarray(im, dtype=np.uint8)
    return arr[:, :, None] if arr.ndim == 2 else arr
