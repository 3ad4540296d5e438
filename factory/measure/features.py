"""Feature extractors for distribution metrics: the penultimate layer of the reference CNN trained on real
train images only (:class:`ReferenceFeatures`, the independent evaluator), the embedded CLIP's image tower,
or Inception v3 pool features from a LOCAL weights file; and :func:`extract`, features of a whole dataset
shard by shard (:func:`extract_views`: several feature spaces in one pass).
"""

from __future__ import annotations

import abc
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from PIL import Image

from factory.core.errors import FactoryError
from factory.core.files import file_sha256
from factory.core.images import images_to_tensor
from factory.core.sample import sample_attributes
from factory.core.shards import Dataset
from factory.curate.scorers import load_scorer
from factory.curate.scorers.base import Scorer
from factory.train.reference import EMBED_DIM, ReferenceCNN

EXTRACTOR_KINDS = ("clip", "inception")


DEFAULT_BATCH_SIZE = 256


INCEPTION_SIZE = 299


IMAGENET_MEAN = (0.485, 0.456, 0.406)


IMAGENET_STD = (0.229, 0.224, 0.225)


class FeatureExtractor(abc.ABC):
    """Images in, one float32 feature row per image out."""

    name: str = ""

    @abc.abstractmethod
    def describe(self) -> dict[str, Any]:
        """What produced the features (goes into the metrics): kind, model, weights hash."""

    @abc.abstractmethod
    def __call__(self, images: Sequence[Image.Image]) -> np.ndarray:
        """(N, D) float32 features of ``images``."""


class ClipFeatures(FeatureExtractor):
    """The image tower of a scorer (the embedded CLIP by default): L2-normalised embeddings."""

    name = "clip"

    def __init__(self, scorer: Scorer) -> None:
        self.scorer = scorer

    def describe(self) -> dict[str, Any]:
        return {"kind": self.name, **self.scorer.describe()}

    def __call__(self, images: Sequence[Image.Image]) -> np.ndarray:
        return self.scorer.embed_images(list(images))


class ReferenceFeatures(FeatureExtractor):
    """The penultimate layer (``EMBED_DIM`` activations after ReLU) of a :class:`ReferenceCNN` trained on
    REAL train images only: a feature space that took no part in curation (the LeNet-FID practice of the
    MNIST literature; Gillman et al. use LeNet features). Images are seen exactly as the classifier sees
    them (its mode and size, pixels in [-1, 1]). ``trained_on``: what the CNN was trained on (for
    :meth:`describe`)."""

    name = "reference_cnn"

    def __init__(self, model: ReferenceCNN, trained_on: dict[str, Any] | None = None, batch_size: int = 512) -> None:
        self.model = model.eval()
        self.trained_on = trained_on
        self.batch_size = int(batch_size)

    def describe(self) -> dict[str, Any]:
        return {"kind": self.name, "model": "ReferenceCNN penultimate layer", "embed_dim": EMBED_DIM,
                "image_size": self.model.image_size, "mode": self.model.mode, "trained_on": self.trained_on}

    @torch.inference_mode()
    def __call__(self, images: Sequence[Image.Image]) -> np.ndarray:
        x = images_to_tensor(list(images), self.model.mode, self.model.image_size)
        out = [np.zeros((0, EMBED_DIM), np.float32)]
        out += [self.model.embed(x[i:i + self.batch_size]).float().numpy() for i in range(0, len(x), self.batch_size)]
        return np.concatenate(out)


def _load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch and safetensors raise many types for a bad file
        raise FactoryError(f"{path}: not a readable weights file ({str(exc).strip().splitlines()[0]})") from None
    if not isinstance(state, dict):
        raise FactoryError(f"{path}: holds a {type(state).__name__}, not a state dict")
    return state


class InceptionFeatures(FeatureExtractor):
    """Inception v3 pool features (2048-d), the feature space of FID.

    The network is torchvision's ``inception_v3(weights=None, aux_logits=True, init_weights=False)`` with
    the state dict of the LOCAL file ``weights_path`` (``.pth``/``.pt`` via ``torch.load(weights_only=True)``
    or ``.safetensors``), e.g. torchvision's ImageNet weights ``inception_v3_google-0cc3c7bd.pth``; nothing
    is downloaded. ``fc`` is replaced by the identity. Images are converted to RGB, resized to 299 x 299
    (bilinear) and ImageNet-normalised; ``transform_input=True`` (torchvision's setting for its ImageNet
    weights) then maps them to the [-1, 1] scaling the Google weights were trained with.

    These are torchvision's weights, not the TF-ported ones of pytorch-fid, so the numbers are comparable
    with each other, not with published FID values.
    """

    name = "inception"

    def __init__(self, weights_path: Path | str, device: str = "cpu", batch_size: int = 32,
                 transform_input: bool = True) -> None:
        from torchvision.models import inception_v3

        path = Path(weights_path)
        if not path.is_file():
            raise FactoryError(f"{path}: Inception v3 weights file not found (weights are never downloaded; "
                               "pass a local state dict file)")
        if batch_size < 1:
            raise FactoryError(f"inception batch_size must be >= 1; got {batch_size}")
        model = inception_v3(weights=None, aux_logits=True, init_weights=False, transform_input=transform_input)
        try:
            model.load_state_dict(_load_state_dict(path))
        except RuntimeError as exc:
            raise FactoryError(f"{path}: not an Inception v3 state dict "
                               f"({str(exc).strip().splitlines()[0]})") from None
        model.fc = torch.nn.Identity()
        self.device = torch.device(device)
        self.model = model.eval().requires_grad_(False).to(self.device)
        self.weights_path = path
        self.weights_sha256 = file_sha256(path)
        self.batch_size = int(batch_size)
        self.transform_input = bool(transform_input)
        self._mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        self._std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)

    def describe(self) -> dict[str, Any]:
        return {"kind": self.name, "model": "torchvision inception_v3 pool3", "weights": str(self.weights_path),
                "weights_sha256": self.weights_sha256, "image_size": INCEPTION_SIZE,
                "transform_input": self.transform_input, "embed_dim": 2048}

    def _tensor(self, images: Sequence[Image.Image]) -> torch.Tensor:
        px = np.stack([np.asarray(im.convert("RGB").resize((INCEPTION_SIZE, INCEPTION_SIZE), Image.BILINEAR))
                       for im in images])
        x = torch.from_numpy(px).permute(0, 3, 1, 2).float().div(255.0)
        return (x - self._mean) / self._std

    @torch.inference_mode()
    def __call__(self, images: Sequence[Image.Image]) -> np.ndarray:
        out = [np.zeros((0, 2048), np.float32)]
        for start in range(0, len(images), self.batch_size):
            x = self._tensor(images[start:start + self.batch_size]).to(self.device)
            out.append(self.model(x).float().cpu().numpy())
        return np.concatenate(out)


def feature_extractor(kind: str, path: Path | str, device: str = "cpu", checkpoint: Path | str | None = None
                      ) -> FeatureExtractor:
    """``"clip"``: the embedded scorer folder at ``path`` or, with ``checkpoint``, the open_clip architecture
    ``path`` with those weights; ``"inception"``: Inception v3 weights file ``path``."""
    if kind == "clip":
        if checkpoint is not None:
            return ClipFeatures(load_scorer("open_clip", str(path), checkpoint, device=device))
        return ClipFeatures(load_scorer("embedded", path, device=device))
    if kind == "inception":
        return InceptionFeatures(path, device=device)
    raise FactoryError(f"feature extractor must be one of {', '.join(EXTRACTOR_KINDS)}; got {kind!r}")


def _open(dataset: Dataset | str | Path) -> Dataset:
    return dataset if isinstance(dataset, Dataset) else Dataset(dataset)


def _extract_views(ds: Dataset, extractors: Mapping[str, FeatureExtractor], batch_size: int,
                   each_batch: Callable[[list[Image.Image], list[int]], None] | None = None
                   ) -> tuple[dict[str, np.ndarray], np.ndarray, list[dict[str, str]]]:
    if batch_size < 1:
        raise FactoryError(f"batch_size must be >= 1; got {batch_size}")
    feats: dict[str, list[np.ndarray]] = {v: [] for v in extractors}
    labels: list[int] = []
    attrs: list[dict[str, str]] = []
    images: list[Image.Image] = []
    batch_labels: list[int] = []

    def flush() -> None:
        if images:
            for view, extractor in extractors.items():
                feats[view].append(np.asarray(extractor(images), dtype=np.float32))
            if each_batch is not None:
                each_batch(images, batch_labels)
            labels.extend(batch_labels)
            images.clear()
            batch_labels.clear()

    for s in ds:
        if not 0 <= s.label < len(ds.classes):
            raise FactoryError(f"{ds.path}: sample {s.key!r} has label {s.label} outside 0..{len(ds.classes) - 1}")
        images.append(s.pil())
        batch_labels.append(int(s.label))
        attrs.append(sample_attributes(s.provenance))
        if len(images) == batch_size:
            flush()
    flush()
    features = {v: np.concatenate(f) if f else np.zeros((0, 0), np.float32) for v, f in feats.items()}
    return features, np.asarray(labels, dtype=np.int64), attrs


def extract_views(dataset: Dataset | str | Path, extractors: Mapping[str, FeatureExtractor],
                  batch_size: int = DEFAULT_BATCH_SIZE,
                  each_batch: Callable[[list[Image.Image], list[int]], None] | None = None
                  ) -> tuple[dict[str, np.ndarray], np.ndarray, list[dict[str, str]]]:
    """:func:`extract` in several feature spaces at once (one pass over the dataset): features per view
    name of ``extractors``, labels, attributes. ``each_batch(images, labels)`` sees every batch too."""
    return _extract_views(_open(dataset), extractors, batch_size, each_batch)


def extract(dataset: Dataset | str | Path, extractor: FeatureExtractor, batch_size: int = DEFAULT_BATCH_SIZE
            ) -> tuple[np.ndarray, np.ndarray, list[dict[str, str]]]:
    """Features (N, D) float32, labels (N,) int64 and attributes (one mapping per sample, from provenance
    ``attributes`` or ``prompt.attributes``) of every sample, streaming the dataset ``batch_size`` images
    at a time. An empty dataset gives a (0, 0) feature array."""
    feats, labels, attrs = _extract_views(_open(dataset), {"x": extractor}, batch_size)
    return feats["x"], labels, attrs
