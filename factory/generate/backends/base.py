"""The interface every generator backend implements, and the sampling settings they share."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, Sequence

from factory.core.errors import FactoryError

SCHEDULERS = ("ddim", "dpm", "euler", "ddpm", "pndm")


@dataclass(frozen=True)
class SamplerConfig:
    """How to sample. Recorded in every synthetic sample's provenance (``generator``)."""

    guidance_scale: float = 2.0
    steps: int = 20
    scheduler: str = "ddim"
    negative_prompt: str | None = None
    height: int | None = None  # None: the model's native size
    width: int | None = None
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"  # auto: fp16 on CUDA, fp32 on CPU
    device: str = "auto"  # auto: cuda if available, else cpu
    batch_size: int = 64

    def __post_init__(self) -> None:
        if self.guidance_scale < 0:
            raise FactoryError(f"guidance_scale must be >= 0; got {self.guidance_scale}")
        if self.steps < 1:
            raise FactoryError(f"steps must be >= 1; got {self.steps}")
        if self.scheduler not in SCHEDULERS:
            raise FactoryError(f"scheduler must be one of {', '.join(SCHEDULERS)}; got {self.scheduler!r}")
        if self.batch_size < 1:
            raise FactoryError(f"batch_size must be >= 1; got {self.batch_size}")
        for name in ("height", "width"):
            v = getattr(self, name)
            if v is not None and (v < 8 or v % 8):
                raise FactoryError(f"{name} must be a multiple of 8 and >= 8; got {v}")


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

    def describe(self) -> dict[str, Any]:
        """The provenance ``generator`` record: backend, model, weights_sha256, scheduler, steps,
        guidance_scale, negative_guidance, height, width, dtype (plus backend extras)."""
        ...

    def generate(self, requests: Sequence[GenRequest]) -> list[bytes]:
        ...
