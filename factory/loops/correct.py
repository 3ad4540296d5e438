"""The self-correction function of Gillman et al. 2024 ("Self-Correcting Self-Consuming Loops",
arXiv 2402.07087): synthetic images pulled toward real data before a generator trains on them.

Their MNIST code (``exp_scripts/mnist/self_consuming_ddpm_mini.py``) fits, per class, k-means on the real
training images' raw pixels (``KMeans(n_clusters, random_state=0, n_init="auto")``) and replaces every
synthetic image by the rounded centroid of its nearest cluster *of its own class*. Here that is
:class:`KMeansCorrector` (the fit) and :func:`correct_dataset` (the replacement, written as a new dataset),
with one knob more: ``strength`` moves each image only part of the way,
``new = round((1 - strength) * x + strength * c)`` clipped to 0..255; ``strength=1`` is their replacement.

Two details differ from their script, on purpose:

- they round a centroid as ``round(0.5 + c)`` (a half-pixel upward bias, left over from the
  ``x * 255 + 0.5`` then truncate idiom used for the samples); here rounding is plain ``numpy.rint``;
- their line 290 recomputes ``cluster_centers_rounded`` from the *last* class's k-means but never uses
  it (the per-class list is what they index); here only the per-class centroids exist.

Pixels are the images as stored (uint8, their own size and colour mode), flattened; every image of the
fitting set must share one size and mode, and so must every image corrected. The corrected dataset keeps
every provenance field of its input, gets the new image's ``sha256`` and ``phash``, and a ``correction``
field with the evidence (the centroid, its distance, the original image's sha256), so a corrected sample
can be traced back to the one the generator made.
"""

from __future__ import annotations

import io
import logging
import math
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable

import numpy as np
from PIL import Image

from factory.core.errors import FactoryError
from factory.core.sample import Sample, decode_image, phash_hex, sha256_hex, with_updates
from factory.core.shards import Dataset, DatasetWriter, check_output_dir
from factory.curate.hashing import Progress

log = logging.getLogger(__name__)

METHOD = "kmeans"
# Stored modes kept as they are; others are converted once, the same way at fit and at correction.
_KEPT_MODES = ("L", "LA", "RGB", "RGBA")


def _open(data: Dataset | Path | str) -> Dataset:
    return data if isinstance(data, Dataset) else Dataset(data)


def pixels(sample: Sample) -> tuple[np.ndarray, str]:
    """A sample's image as uint8 pixels of its stored size, ``(H, W)`` or ``(H, W, C)``, with its mode.

    Modes L, LA, RGB and RGBA are kept; a bilevel image ("1") becomes L, a palette image ("P") RGB (RGBA
    with transparency), since palette indices are not intensities; other modes (16-bit, float, CMYK) are
    refused: k-means on their raw values would not mean what it does on 8-bit intensities."""
    im = sample.pil()
    if im.mode == "1":
        im = im.convert("L")
    elif im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    if im.mode not in _KEPT_MODES:
        raise FactoryError(f"sample {sample.key!r}: image mode {im.mode!r} is not supported by the corrector; "
                           f"store 8-bit {', '.join(_KEPT_MODES)} images")
    return np.asarray(im, dtype=np.uint8), im.mode


def _model_pixels(sample: Sample, size: int) -> tuple[np.ndarray, str]:
    """A real image as a generator trained on it sees it (:func:`factory.core.images.to_model_pixels`: the
    one conversion of images to model pixels), L unless the image is colour."""
    from factory.core.images import colour_mode, to_model_pixels

    im = sample.pil()
    mode = colour_mode([im])
    px = to_model_pixels(im, mode, size)  # H, W, C uint8
    return (px[:, :, 0] if mode == "L" else px), mode


def _png(px: np.ndarray, mode: str) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(px), mode=mode).save(buf, format="PNG", compress_level=9)
    return buf.getvalue()


def check_strength(strength: Any) -> float:
    """``strength`` as a float in [0, 1], or a one-line FactoryError."""
    ok = isinstance(strength, (int, float)) and not isinstance(strength, bool) and math.isfinite(strength)
    if not ok or not 0.0 <= strength <= 1.0:
        raise FactoryError(f"strength must be a number in [0, 1] (1: replace by the centroid); got {strength!r}")
    return float(strength)


@dataclass
class KMeansCorrector:
    """Per-class k-means centroids of real images' pixels (Gillman et al.'s correction function).

    ``centroids`` maps a class name to a ``(k, H*W*C)`` float64 array; ``shape`` is the pixel array's
    shape ``(H, W)`` or ``(H, W, C)`` and ``mode`` its PIL mode, shared by every image fitted and corrected.
    Make one with :meth:`fit`.
    """

    clusters: int
    seed: int
    fit_on: dict[str, Any]
    mode: str
    shape: tuple[int, ...]
    centroids: dict[str, np.ndarray] = field(repr=False)
    images: dict[str, int] = field(default_factory=dict)

    @classmethod
    def fit(cls, real: Dataset | Path | str, clusters: int = 16, seed: int = 0,
            progress: Progress | None = None, size: int | None = None) -> "KMeansCorrector":
        """Fit ``clusters`` k-means centroids per class on the pixels of ``real`` (every image read through
        the full checks of ``factory verify``). A class with fewer distinct images than ``clusters`` gets
        one cluster per distinct image (its centroids are then its images); a class without images gets
        none, and correcting a sample of it fails. Images of mixed sizes or modes are refused.

        ``size``: fit in a generator's pixel space instead of the stored one: every real image converted
        exactly as the generator's training converts it (:func:`factory.core.images.images_to_tensor`,
        e.g. the 8x8 digits to the embedded model's 16x16), so the centroids live where its samples do."""
        from sklearn.cluster import KMeans  # imported lazily: it is slow to import

        if not isinstance(clusters, int) or isinstance(clusters, bool) or clusters < 1:
            raise FactoryError(f"clusters must be an integer >= 1; got {clusters!r}")
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise FactoryError(f"seed must be an integer; got {seed!r}")
        ds = _open(real)
        by_class: dict[str, list[np.ndarray]] = {}
        mode: str | None = None
        shape: tuple[int, ...] | None = None
        samples: Iterable[Sample] = ds.iter_checked()
        if progress is not None:
            samples = progress(samples, f"fit k-means on {ds.path.name}", len(ds))
        for s in samples:
            px, m = pixels(s) if size is None else _model_pixels(s, size)
            if shape is None:
                mode, shape = m, px.shape
            elif (m, px.shape) != (mode, shape):
                raise FactoryError(f"{ds.path}: sample {s.key!r} is {_shown(m, px.shape)} but earlier images are "
                                   f"{_shown(mode, shape)}; the corrector needs one size and mode")
            by_class.setdefault(s.class_name, []).append(px.reshape(-1))
        if mode is None or shape is None:
            raise FactoryError(f"{ds.path}: no images to fit the corrector on")
        centroids: dict[str, np.ndarray] = {}
        images: dict[str, int] = {}
        for name in sorted(by_class, key=ds.classes.index):
            x = np.stack(by_class.pop(name)).astype(np.float64)
            images[name] = len(x)
            k = min(clusters, len(np.unique(x, axis=0)))  # more clusters than points: sklearn refuses
            km = KMeans(n_clusters=k, random_state=seed, n_init="auto").fit(x)
            centroids[name] = np.asarray(km.cluster_centers_, dtype=np.float64)
            log.debug("corrector: class %r, %d images, %d clusters", name, len(x), k)
        return cls(clusters=clusters, seed=seed, fit_on=ds.ref(), mode=mode, shape=tuple(shape),
                   centroids=centroids, images=images)

    def describe(self) -> dict[str, Any]:
        """What the corrector is, as JSON: method, requested clusters, seed, the dataset it was fit on
        (``Dataset.ref()``: id, path, index_sha256), the pixel format, clusters and images per class."""
        return {
            "method": METHOD,
            "clusters": self.clusters,
            "seed": self.seed,
            "fit_on": dict(self.fit_on),
            "mode": self.mode,
            "shape": list(self.shape),
            "per_class": {name: int(c.shape[0]) for name, c in self.centroids.items()},
            "images": dict(self.images),
        }

    def nearest(self, class_name: str, x: np.ndarray, key: str = "?") -> tuple[int, float]:
        """The index of the centroid of ``class_name`` nearest to the flat pixels ``x`` (Euclidean; the first
        on a tie) and its distance in pixel units."""
        c = self.centroids.get(class_name)
        if c is None:
            raise FactoryError(f"sample {key!r}: class {class_name!r} has no centroids (the corrector was fit "
                               f"on {self.fit_on.get('path')}, classes {', '.join(map(repr, self.centroids))})")
        d2 = ((c - x.astype(np.float64)) ** 2).sum(axis=1)
        i = int(np.argmin(d2))
        return i, float(math.sqrt(d2[i]))

    def correct(self, sample: Sample, strength: float = 1.0) -> tuple[np.ndarray, int, float]:
        """The corrected pixels of ``sample`` (same shape and mode as fitted), the centroid index and the
        distance of the original to it."""
        px, mode = pixels(sample)
        if (mode, px.shape) != (self.mode, self.shape):
            raise FactoryError(f"sample {sample.key!r} is {_shown(mode, px.shape)}; the corrector was fit on "
                               f"{_shown(self.mode, self.shape)} images")
        x = px.reshape(-1).astype(np.float64)
        i, dist = self.nearest(sample.class_name, x, sample.key)
        c = self.centroids[sample.class_name][i]
        new = np.clip(np.rint((1.0 - strength) * x + strength * c), 0, 255).astype(np.uint8)
        return new.reshape(self.shape), i, dist


def _shown(mode: str | None, shape: tuple[int, ...] | None) -> str:
    if shape is None:
        return "?"
    return f"{shape[1]}x{shape[0]} {mode}"


def correct_dataset(corrector: KMeansCorrector, src: Dataset | Path | str, out_dir: Path | str,
                    strength: float = 1.0, name: str | None = None, *, overwrite: bool = False,
                    progress: Progress | None = None) -> dict[str, Any]:
    """Write a new dataset at ``out_dir``: every sample of ``src`` moved ``strength`` of the way to the
    nearest centroid of its own class, re-encoded as PNG.

    Samples are read through the full checks and written shard by shard (same shard size as ``src``);
    the records keep every field and get the new ``sha256`` and ``phash`` and a ``correction`` field
    (method, strength, clusters, fit_on {path, index_sha256}, centroid, distance, original_sha256). The
    index's ``meta`` is ``src``'s plus ``correction``: the corrector's :meth:`~KMeansCorrector.describe`,
    the strength and ``src``'s reference. Returns a summary: samples, mean distance, counts per class.
    """
    start = time.perf_counter()
    strength = check_strength(strength)
    ds = _open(src)
    fit_path = corrector.fit_on.get("path")
    inputs = [ds.path] + ([Path(fit_path)] if fit_path else [])
    check_output_dir(out_dir, overwrite, inputs=inputs)
    evidence = {"method": METHOD, "strength": strength, "clusters": corrector.clusters,
                "fit_on": {"path": fit_path, "index_sha256": corrector.fit_on.get("index_sha256")}}
    meta = {**ds.meta, "correction": {**corrector.describe(), "strength": strength, "source": ds.ref()}}
    shard_size = max((int(s["samples"]) for s in ds.shards), default=1) or 1
    counts: Counter[str] = Counter()
    total = 0.0

    def corrected(s: Sample) -> Sample:
        nonlocal total
        px, i, dist = corrector.correct(s, strength)
        data = _png(px, corrector.mode)
        out = with_updates(s, sha256=sha256_hex(data), phash=phash_hex(decode_image(data)),
                           correction={**evidence, "centroid": i, "distance": round(dist, 6),
                                       "original_sha256": s.provenance["sha256"]})
        counts[s.class_name] += 1
        total += dist
        return replace(out, image=data, ext="png")

    samples: Iterable[Sample] = ds.iter_checked()
    if progress is not None:
        samples = progress(samples, f"correct {Path(out_dir).name}", len(ds))
    with DatasetWriter(out_dir, name or f"{ds.name}-corrected", ds.classes, shard_size=shard_size, meta=meta,
                       overwrite=overwrite, inputs=inputs) as writer:
        writer.write_all(corrected(s) for s in samples)
        writer.close()
    n = sum(counts.values())
    summary = {"samples": n, "strength": strength, "clusters": corrector.clusters,
               "mean_distance": round(total / n, 6) if n else None,
               "per_class": {c: counts[c] for c in ds.classes if counts[c]},
               "seconds": round(time.perf_counter() - start, 2)}
    log.info("corrected %s into %s: %s", ds.path, out_dir, summary)
    return summary
