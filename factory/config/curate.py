"""Configs of the curate phase (``curate``): the mismatch filter, near-duplicate search, the whole step."""

from __future__ import annotations

from typing import ClassVar, Literal, get_args

from pydantic import Field, field_validator, model_validator

from factory.config.base import Bool, Float, Int, Section, Seed, field_error

HashName = Literal["phash", "dhash", "whash"]
HASHES = get_args(HashName)
MIN_HASH_SIZE, MAX_HASH_SIZE = 2, 32
DEFAULT_SEMANTIC_THRESHOLD = 0.95


def default_max_distance(hash_size: int) -> int:
    """The default Hamming radius: 1/8 of the bits up to 8x8 (8 for a 64-bit hash), 3/16 above
    (48 for a 256-bit hash).

    Measured with phash on the 2,000 imagenette-mini train photos (``bench/dedup.py --real``): at 8
    of 64 bits, JPEG-70 and 0.8x-resized copies are all found, 2%-cropped ones 98%, 3%-cropped 80%,
    and 1 of the 2 million pairs of distinct photos matches; 16x16 phashes of distinct photos lie
    further apart (none within 72 of 256 bits), and 48 finds 98.6% of the 2%-crops.
    """
    bits = hash_size * hash_size
    return max(1, bits // 8) if hash_size <= 8 else 3 * bits // 16


class FilterConfig(Section):
    """The semantic-mismatch filter: fixed thresholds, or ones calibrated on real data."""

    where: ClassVar[str] = "filter"

    min_score: Float | None = None  # None: calibrate on real data (the val split), scored as samples are
    min_margin: Float | None = None  # None: calibrate on real data (the val split)
    percentile: Float = Field(5.0, ge=0, lt=100)  # calibration: this percentile of real own-caption scores / margins
    batch_size: Int = Field(256, ge=1)

    @field_validator("min_score", "min_margin")
    @classmethod
    def _cosine(cls, v: float | None) -> float | None:
        if v is not None and not -2.0 <= v <= 2.0:
            raise ValueError("is a cosine (difference) in [-2, 2]")
        return v


class DedupConfig(Section):
    """How near two images must be to count as duplicates."""

    where: ClassVar[str] = "dedup"

    hash: HashName = "phash"
    hash_size: Int = Field(8, ge=MIN_HASH_SIZE, le=MAX_HASH_SIZE)
    max_distance: Int | None = Field(None, ge=0)  # None: default_max_distance(hash_size)
    semantic_threshold: Float = Field(DEFAULT_SEMANTIC_THRESHOLD, ge=-1, le=1)  # used only with an embedder

    @model_validator(mode="after")
    def _check(self) -> "DedupConfig":
        if self.hash == "whash" and self.hash_size & (self.hash_size - 1):
            raise field_error("hash_size", "must be a power of 2 for whash", self.hash_size)
        if self.max_distance is not None and self.max_distance >= self.bits:
            raise field_error("max_distance", f"must be below the {self.bits} bits of a "
                                              f"{self.hash_size}x{self.hash_size} hash", self.max_distance)
        return self

    @property
    def bits(self) -> int:
        return self.hash_size * self.hash_size

    @property
    def distance(self) -> int:
        return default_max_distance(self.hash_size) if self.max_distance is None else self.max_distance


class CurateConfig(FilterConfig, DedupConfig):
    """``curate``: the scorer, the filter's and the dedup's settings (flat, as in params.yaml), and the step's."""

    where: ClassVar[str] = "curate"

    scorer_backend: Literal["embedded", "open_clip"] = "embedded"
    scorer_model: str = "models/clip"  # a folder (embedded) or an open_clip architecture name
    scorer_checkpoint: str | None = None  # open_clip: a local weights file
    scorer_device: str = "cpu"  # cpu | cuda[:N] | auto (cuda when available)
    deduplicate: Bool = True  # False: the semantic-mismatch filter alone (factory filter)
    semantic_dedup: Bool = False  # also pair images whose CLIP embeddings have cosine >= semantic_threshold
    drop_memorized: Bool = False  # matches with real train are reported; true drops them
    rebalance: Bool = True  # subsample survivors to the plan's exact quotas
    seed: Seed = 0

    @property
    def filter(self) -> FilterConfig:
        return FilterConfig(**{k: getattr(self, k) for k in FilterConfig.model_fields})

    @property
    def dedup(self) -> DedupConfig:
        return DedupConfig(**{k: getattr(self, k) for k in DedupConfig.model_fields})
