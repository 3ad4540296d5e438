"""What every real-data source is: a named, ordered stream of samples (:class:`Source`), the error of an
image that cannot be used (:class:`BadImage`) and the one check of an image's bytes. :mod:`factory.data.sources`
(sklearn digits, ImageFolder, datasets) and :mod:`factory.data.hf` (``hf:``) build on it."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from PIL import Image

from factory.core.errors import FactoryError
from factory.core.sample import Sample, decode_image

log = logging.getLogger("factory.data.sources")


class BadImage(FactoryError):
    """An image that cannot be decoded; ``--skip-bad`` turns it into a counted skip."""


@dataclass
class Source:
    """A named, ordered stream of real samples with a fixed class list."""

    name: str
    classes: list[str]
    spec: str
    _iter: Callable[["Source"], Iterator[Sample]]
    meta: dict[str, Any] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    skip_bad: bool = False
    _count: Callable[["Source"], int] | None = None  # how many items (files, rows) it reads, known beforehand

    def __iter__(self) -> Iterator[Sample]:
        return self._iter(self)

    def total(self) -> int | None:
        """How many items the source reads (bad ones too), for a progress bar's total; None if unknown."""
        return self._count(self) if self._count is not None else None

    def bad(self, what: str, exc: Exception, reason: str = "unreadable image") -> None:
        """An input that cannot be used: an error naming it, or with ``skip_bad`` a counted skip."""
        detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        msg = f"{what}: {reason} ({detail})"
        if not self.skip_bad:
            raise BadImage(msg)
        log.warning("skipping %s", msg)
        self.skipped.append(what)


def _check_image(data: bytes) -> Image.Image:
    im = decode_image(data)
    if im.format not in ("PNG", "JPEG", "WEBP"):
        raise ValueError(f"format {im.format} is not stored as is (PNG, JPEG or WebP only)")
    return im
