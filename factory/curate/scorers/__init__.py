"""CLIP scorers for curation: one interface (:class:`~factory.curate.scorers.base.Scorer`), two backends.

- ``embedded``: a small open_clip CLIP trained by the pipeline (:mod:`factory.curate.scorers.embedded`,
  trained by :func:`factory.train.clip.train_clip`);
- ``open_clip``: any open_clip architecture with a local checkpoint (:mod:`factory.curate.scorers.openclip`).
"""

from __future__ import annotations

from pathlib import Path

from factory.core.errors import FactoryError
from factory.curate.scorers.base import BACKENDS, DEFAULT_BATCH_SIZE, Scorer
from factory.curate.scorers.embedded import EmbeddedScorer
from factory.curate.scorers.openclip import OpenClipScorer

__all__ = ["Scorer", "EmbeddedScorer", "OpenClipScorer", "load_scorer"]


def load_scorer(backend: str, model: str | Path, checkpoint: str | Path | None = None, device: str = "cpu", *,
                tag: str | None = None, batch_size: int = DEFAULT_BATCH_SIZE) -> Scorer:
    """The scorer of ``backend``: ``"embedded"`` (``model``: a folder written by :func:`train_clip`;
    ``checkpoint`` must be None) or ``"open_clip"`` (``model``: an architecture name, ``checkpoint``: a
    local weights file; ``tag``: the pretrained tag it was released as, only to choose its preprocessing)."""
    if backend == "embedded":
        if checkpoint is not None:
            raise FactoryError("scorer checkpoint must be null for the embedded backend (its weights are in the "
                               "model folder)")
        if tag is not None:
            raise FactoryError("scorer tag applies only to the open_clip backend")
        return EmbeddedScorer.load(model, device, batch_size=batch_size)
    if backend == "open_clip":
        return OpenClipScorer.load(str(model), checkpoint, device, tag=tag, batch_size=batch_size)
    raise FactoryError(f"scorer backend must be one of {', '.join(BACKENDS)}; got {backend!r}")
