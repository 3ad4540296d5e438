"""The interface every generator backend implements; the sampling settings they share are
:class:`factory.config.SamplerConfig`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, Sequence

from factory.config import SCHEDULERS as SCHEDULERS  # re-exported with the config: one list
from factory.config import SamplerConfig


@dataclass(frozen=True)
class GenRequest:
    """One image to make: what to show and the seed that makes it reproducible."""

    key: str
    label: int
    class_name: str
    text: str
    seed: int
    attributes: dict[str, str] = field(default_factory=dict)


class Generator(Protocol):
    """A backend. ``generate`` returns encoded PNG bytes, one per request, in request order.

    The bytes of one request depend only on the request (label, text, attributes, seed) and the
    generator's settings, never on the other requests in the batch: this is what makes a killed
    run resumable byte for byte and lets ``factory regenerate`` rebuild one sample alone.
    """

    sampler: SamplerConfig

    @property
    def classes(self) -> list[str] | None:
        """The class names it was trained on (index = label), or None when it takes any class (text)."""
        ...

    @property
    def attributes(self) -> dict[str, list[str]] | None:
        """The attribute values it was trained on, per axis, or None when it takes any (text)."""
        ...

    @property
    def parents(self) -> list[dict[str, Any]]:
        """The datasets it was trained on (provenance ``parents``); empty when not known."""
        ...

    @property
    def generation(self) -> int:
        """1 for a model trained on real data; k + 1 for one trained on generation-k samples."""
        ...

    def describe(self) -> dict[str, Any]:
        """The provenance ``generator`` record: backend, model, weights_sha256, scheduler, steps,
        guidance_scale, negative_guidance, height, width, dtype (plus backend extras)."""
        ...

    def generate(self, requests: Sequence[GenRequest]) -> list[bytes]:
        ...
