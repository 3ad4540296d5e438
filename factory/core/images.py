"""Pixel helpers: colour-mode detection and the one conversion of an image to model pixels and
tensors (``(C, H, W)`` float in [-1, 1], the embedded models' view).
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
import torch
from PIL import Image, ImageOps

COLOUR_MODES = ("RGB", "RGBA", "CMYK", "P")


def colour_mode(images: Iterable[Image.Image]) -> str:
    """"RGB" when any image is in a colour mode (:data:`COLOUR_MODES`), else "L" (grayscale)."""
    return "RGB" if {im.mode for im in images} & set(COLOUR_MODES) else "L"


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


def _unit(px: torch.Tensor) -> torch.Tensor:
    """uint8 pixels -> float32 in [-1, 1]."""
    return px.float().div(127.5).sub(1.0)


def image_to_tensor(im: Image.Image, mode: str, size: int) -> torch.Tensor:
    """One image -> ``(C, size, size)`` float tensor in [-1, 1] (a channels-last view of its pixels)."""
    return _unit(torch.from_numpy(np.array(to_model_pixels(im, mode, size))).permute(2, 0, 1))


def images_to_tensor(images: Sequence[Image.Image], mode: str, size: int) -> torch.Tensor:
    """Images -> contiguous ``(N, C, size, size)`` float tensor in [-1, 1]."""
    if not images:
        return torch.empty(0, 1 if mode == "L" else 3, size, size)
    px = np.stack([to_model_pixels(im, mode, size) for im in images])
    return _unit(torch.from_numpy(px).permute(0, 3, 1, 2)).contiguous()
