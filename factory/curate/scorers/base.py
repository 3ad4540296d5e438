"""The scorer interface (:class:`Scorer`): L2-normalised CLIP embeddings of images and texts, and the
scores built on them (cosine scores, class scores, margins, zero-shot accuracy, mismatch AUC).
"""

from __future__ import annotations

import abc
import json
import logging
import os
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import torch
from PIL import Image

from factory.core.errors import FactoryError
from factory.core.shards import Dataset

BACKENDS = ("embedded", "open_clip")


DEFAULT_BATCH_SIZE = 256


def _device(device: str | torch.device) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise FactoryError(f"scorer device must be cpu, cuda[:N] or auto; got {device!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise FactoryError(f"scorer device {device!r}: CUDA is not available on this machine")
    return dev


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


class _QuietOpenClip(logging.Filter):
    """Drops open_clip's INFO and DEBUG records ("Loaded built-in ... model config", "Loading full pretrained
    weights from ...") and passes everything else. open_clip logs with ``logging.info`` on the ROOT logger, so
    a stage's INFO logging would print its chatter; a filter on the root logger sees only records logged on
    the root logger itself, so the user's and factory's own loggers are untouched, and open_clip's warnings pass."""

    _where = f"{os.sep}open_clip{os.sep}"

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or self._where not in record.pathname


def quiet_open_clip() -> None:
    """Silence open_clip's INFO records (:class:`_QuietOpenClip`), once per process."""
    root = logging.getLogger()
    if not any(isinstance(f, _QuietOpenClip) for f in root.filters):
        root.addFilter(_QuietOpenClip())


quiet_open_clip()  # every scorer module imports this one before it calls open_clip


def _create(name: str, checkpoint: str | None, device: torch.device, preprocess: Mapping[str, Any]):
    """``open_clip.create_model_and_transforms`` with explicit preprocessing; returns (model, val transform)."""
    import open_clip

    model, _, val = open_clip.create_model_and_transforms(
        name, pretrained=checkpoint, device=device,
        image_mean=tuple(preprocess["mean"]) if preprocess.get("mean") else None,
        image_std=tuple(preprocess["std"]) if preprocess.get("std") else None,
        image_interpolation=preprocess.get("interpolation"),
        image_resize_mode=preprocess.get("resize_mode"))
    return model, val


class Scorer(abc.ABC):
    """An open_clip model with its own preprocessing and tokenizer. Subclasses say where they come from.

    Every embedding is L2-normalised float32; every score is a cosine similarity. Images are any PIL
    images: the model's own preprocessing resizes them and converts them to RGB (grayscale is repeated
    to 3 channels). Work is done in batches of ``batch_size``.
    """

    backend: str = ""

    def __init__(self, model: torch.nn.Module, preprocess: Callable[[Image.Image], torch.Tensor],
                 tokenizer: Callable[[Sequence[str]], torch.Tensor], device: torch.device,
                 weights_sha256: str, embed_dim: int, batch_size: int = DEFAULT_BATCH_SIZE) -> None:
        self.model = model.eval().requires_grad_(False).to(device)
        self.embed_dim = int(embed_dim)
        self.preprocess = preprocess
        self.tokenizer = tokenizer
        self.device = device
        self.weights_sha256 = weights_sha256
        if batch_size < 1:
            raise FactoryError(f"scorer batch_size must be >= 1; got {batch_size}")
        self.batch_size = int(batch_size)

    @property
    def preprocess_cfg(self) -> dict[str, Any]:
        cfg = dict(getattr(self.model.visual, "preprocess_cfg", {}))
        return json.loads(json.dumps(cfg, default=list))

    def describe(self) -> dict[str, Any]:
        """What produced the scores (goes into provenance): backend, model, weights_sha256, preprocessing."""
        return {"backend": self.backend, "model": "", "weights_sha256": self.weights_sha256,
                "preprocess": self.preprocess_cfg, "embed_dim": self.embed_dim}

    @abc.abstractmethod
    def class_prompts(self, classes: Sequence[str], attributes: Mapping[str, str] | None = None) -> list[str]:
        """One prompt per class, in the scorer's own words (with ``attributes`` when given)."""

    # True: any text can be scored, so classes are captioned by their names (open_clip); False: a closed
    # vocabulary that knows the classes by id (the embedded scorer)
    open_vocabulary: bool = True

    def prompt_text(self, class_name: str, text: str | None = None,
                    attributes: Mapping[str, Any] | None = None) -> str:
        """The text an image made from a prompt is scored against: the prompt ``text`` itself, or
        without one the class prompt with ``attributes``. Scorers with a closed vocabulary override it."""
        return text or self.class_prompts([class_name], attributes)[0]

    # -- embeddings ------------------------------------------------------------------------------

    @torch.inference_mode()
    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """(N, D) float32, each row of unit length."""
        out = [np.zeros((0, self.embed_dim), np.float32)]
        for start in range(0, len(images), self.batch_size):
            batch = torch.stack([self.preprocess(im) for im in images[start:start + self.batch_size]])
            feats = self.model.encode_image(batch.to(self.device), normalize=True)
            out.append(feats.float().cpu().numpy())
        return np.concatenate(out).astype(np.float32, copy=False)

    @torch.inference_mode()
    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """(N, D) float32, each row of unit length."""
        if isinstance(texts, str):
            raise FactoryError("embed_texts takes a list of texts, not one string")
        out = [np.zeros((0, self.embed_dim), np.float32)]
        for start in range(0, len(texts), self.batch_size):
            tokens = self.tokenizer(list(texts[start:start + self.batch_size]))
            feats = self.model.encode_text(tokens.to(self.device), normalize=True)
            out.append(feats.float().cpu().numpy())
        return np.concatenate(out).astype(np.float32, copy=False)

    # -- scores ----------------------------------------------------------------------------------

    def score(self, images: Sequence[Image.Image], texts: Sequence[str]) -> np.ndarray:
        """(N,) cosine of image i with text i."""
        if len(images) != len(texts):
            raise FactoryError(f"score needs one text per image; got {len(images)} images and {len(texts)} texts")
        return np.sum(self.embed_images(images) * self.embed_texts(texts), axis=1, dtype=np.float32)

    def class_scores(self, images: Sequence[Image.Image], class_prompts: Sequence[str]) -> np.ndarray:
        """(N, C) cosine of every image with every class prompt."""
        if not class_prompts:
            raise FactoryError("class_scores needs at least one class prompt")
        return self.embed_images(images) @ self.embed_texts(class_prompts).T


def attribute_phrase(attributes: Mapping[str, Any]) -> str:
    """Attribute values in axis-name order, space-separated: {"color": "red"} -> "red"."""
    return " ".join(str(attributes[k]) for k in sorted(attributes))


def class_prompts(scorer: Scorer, classes: Sequence[str], attributes: Mapping[str, str] | None = None,
                  names: Sequence[str] | None = None) -> list[str]:
    """One prompt per class: for the embedded scorer the first caption template it was trained with
    ("a photo of the digit three"); with ``attributes``, its first attribute template ("a red digit three").
    ``names`` (one per class: what the class ids are called) are what an open-vocabulary scorer (open_clip)
    reads; a closed-vocabulary one (the embedded scorer) knows its classes by id."""
    return scorer.class_prompts(list(class_words(scorer, classes, names)), attributes)


def class_words(scorer: Scorer, classes: Sequence[str], names: Sequence[str] | None) -> list[str]:
    """What ``scorer`` calls each class: the names for an open-vocabulary scorer, else the ids."""
    if names is None or not scorer.open_vocabulary:
        return list(classes)
    if len(names) != len(classes):
        raise FactoryError(f"class names: {len(names)} names for {len(classes)} classes")
    return list(names)


def margins(scores: np.ndarray, labels: Sequence[int] | np.ndarray) -> np.ndarray:
    """Own-class score minus the best other class's score, per row of an (N, C) score matrix."""
    s = np.asarray(scores, dtype=np.float32)
    y = np.asarray(labels, dtype=np.int64)
    if s.ndim != 2 or s.shape[1] < 2:
        raise FactoryError(f"margins needs an (N, C) score matrix with C >= 2; got shape {s.shape}")
    if y.shape != (s.shape[0],):
        raise FactoryError(f"margins needs one label per row; got {y.shape[0] if y.ndim else 0} labels for "
                           f"{s.shape[0]} rows")
    if len(y) and (y.min() < 0 or y.max() >= s.shape[1]):
        raise FactoryError(f"margins: labels must be in 0..{s.shape[1] - 1}")
    rows = np.arange(len(y))
    own = s[rows, y]
    other = s.copy()
    other[rows, y] = -np.inf
    return (own - other.max(axis=1)).astype(np.float32)


def _batches(dataset: Dataset, size: int) -> Iterator[tuple[list[Image.Image], list[int]]]:
    images: list[Image.Image] = []
    labels: list[int] = []
    for s in dataset:
        images.append(s.pil())
        labels.append(int(s.label))
        if len(images) == size:
            yield images, labels
            images, labels = [], []
    if images:
        yield images, labels


def dataset_class_scores(scorer: Scorer, dataset: Dataset | str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(N, C) cosines of every image of ``dataset`` with its class prompts, and the (N,) labels.
    Streams the dataset batch by batch; the class prompts are embedded once."""
    ds = dataset if isinstance(dataset, Dataset) else Dataset(dataset)
    text = scorer.embed_texts(class_prompts(scorer, ds.classes))
    scores = [np.zeros((0, len(ds.classes)), np.float32)]
    labels: list[int] = []
    for ims, ys in _batches(ds, scorer.batch_size):
        scores.append(scorer.embed_images(ims) @ text.T)
        labels.extend(ys)
    return np.concatenate(scores), np.asarray(labels, dtype=np.int64)


def zero_shot_accuracy(scorer: Scorer, dataset: Dataset | str | Path) -> float:
    """Top-1 accuracy of picking the class whose prompt scores highest."""
    scores, labels = dataset_class_scores(scorer, dataset)
    if not len(labels):
        raise FactoryError("zero_shot_accuracy: the dataset is empty")
    return float(np.mean(scores.argmax(axis=1) == labels))


def mismatch_auc(scorer: Scorer, dataset: Dataset | str | Path, seed: int = 0) -> float:
    """ROC-AUC of telling each image's own class prompt from a random other class's prompt
    (one wrong class per image, drawn uniformly with ``numpy.random.default_rng(seed)``)."""
    from sklearn.metrics import roc_auc_score

    scores, labels = dataset_class_scores(scorer, dataset)
    n, c = scores.shape
    if n == 0 or c < 2:
        raise FactoryError("mismatch_auc needs a non-empty dataset with at least 2 classes")
    rng = np.random.default_rng(seed)
    wrong = (labels + rng.integers(1, c, size=n)) % c  # uniform over the other classes
    right_s = scores[np.arange(n), labels]
    wrong_s = scores[np.arange(n), wrong]
    return float(roc_auc_score(np.r_[np.ones(n), np.zeros(n)], np.r_[right_s, wrong_s]))
