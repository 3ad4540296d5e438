"""Resource limits for reading data the factory did not write itself.

A shard member is refused when its tar header declares more than :func:`max_member_bytes` (before a byte
of it is read), and an image when its header declares more than :func:`max_image_pixels` (before its
pixels are allocated). Both can be raised for unusual data through the environment. This module sits
below :mod:`factory.core.sample` so that the one image decoder can apply the pixel limit;
:mod:`factory.core.integrity` re-exports both limits.
"""

from __future__ import annotations

import os

from factory.core.errors import FactoryError

MEMBER_BYTES_ENV = "FACTORY_MAX_MEMBER_BYTES"
IMAGE_PIXELS_ENV = "FACTORY_MAX_IMAGE_PIXELS"
DEFAULT_MAX_MEMBER_BYTES = 64 << 20  # 64 MiB: far above any PNG, JPEG or WebP the factory stores
DEFAULT_MAX_IMAGE_PIXELS = 8192 * 8192  # below PIL's own bomb warning (about 89 Mpx)


def _env_limit(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise FactoryError(f"{name} must be a positive integer; got {raw[:40]!r}")
    return value


def max_member_bytes() -> int:
    """The largest shard member (or ``index.json``) a reader accepts: ``FACTORY_MAX_MEMBER_BYTES``
    or 64 MiB."""
    return _env_limit(MEMBER_BYTES_ENV, DEFAULT_MAX_MEMBER_BYTES)


def max_image_pixels() -> int:
    """The largest image (width x height) a reader decodes: ``FACTORY_MAX_IMAGE_PIXELS`` or 8192 x 8192."""
    return _env_limit(IMAGE_PIXELS_ENV, DEFAULT_MAX_IMAGE_PIXELS)


def check_pixels(width: int, height: int) -> None:
    """Refuse an image whose header declares more than :func:`max_image_pixels` pixels."""
    limit = max_image_pixels()
    if width * height > limit:
        raise FactoryError(f"image of {width}x{height} pixels is over the limit of {limit:,} pixels "
                           f"(raise {IMAGE_PIXELS_ENV} to allow it)")
