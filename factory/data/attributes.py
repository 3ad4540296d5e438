"""Attributes measured from pixels: stroke colour, thickness and slant of a digit.

What a sample's provenance says was *asked* (``attributes`` of a plan row) is not always what came out;
these measures read what an image *shows*, so that attribute balance, the bias audit and StableRep's
style groups can rest on the realised values.

- **ink**: the stroke map, the per-pixel maximum over channels scaled to [0, 1] (strokes are bright on
  a dark background, as in the sklearn digits and their coloured variant), measured at
  :data:`MEASURE_SIZE` x :data:`MEASURE_SIZE` (bilinear) so 8x8 real digits and 16x16 samples compare.
- **thickness**: ``2 * sum(ink) / sum(|grad ink|)``. A stroke of width ``w`` and length ``L`` has ink
  ``w * L`` and two edges of length ``L`` (total variation ``2 L``), so the ratio is ``w`` in pixels,
  whatever the stroke's brightness or length.
- **slant**: the shear of the ink's second moments, ``-mu11 / mu02`` (the deskewing measure of the MNIST
  literature): positive when the top of the digit leans right, in pixels of x per pixel of y.
- **colour**: the ink-weighted mean colour of the stroke pixels (``ink**2`` weights: the stroke's
  centre), normalised by its largest channel, mapped to the nearest colour of the coloured digits'
  palette (:data:`factory.data.sources.PALETTE`, normalised the same way).

Thickness and slant are quantised into named levels by :class:`Levels`: the tertiles of a reference
set (the real train split), per class, so each level holds a third of a class's real train images.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
from PIL import Image

from factory.core.errors import FactoryError
from factory.data.sources import PALETTE

MEASURE_SIZE = 16

# axis -> its level names, low to high
STYLE_LEVELS: dict[str, tuple[str, ...]] = {
    "thickness": ("thin", "medium", "thick"),
    "slant": ("left", "upright", "right"),
}
STYLE_AXES = tuple(STYLE_LEVELS)
COLOR_AXIS = "color"
MEASURED_AXES = (*STYLE_AXES, COLOR_AXIS)

_EPS = 1e-6


def _pixels(im: Image.Image) -> np.ndarray:
    """RGB float pixels in [0, 1], ``MEASURE_SIZE`` square, ``(H, W, 3)``."""
    if im.mode != "RGB":
        im = im.convert("RGB")
    if im.size != (MEASURE_SIZE, MEASURE_SIZE):
        im = im.resize((MEASURE_SIZE, MEASURE_SIZE), Image.Resampling.BILINEAR)
    return np.asarray(im, dtype=np.float64) / 255.0


def ink(im: Image.Image) -> np.ndarray:
    """The stroke map of ``im``: max over channels, ``(H, W)`` in [0, 1]."""
    return _pixels(im).max(axis=2)


def thickness(a: np.ndarray) -> float:
    """Stroke width in pixels of the ink map ``a`` (0.0 for an empty image)."""
    mass = float(a.sum())
    if mass < _EPS:
        return 0.0
    tv = float(np.abs(np.diff(a, axis=0)).sum() + np.abs(np.diff(a, axis=1)).sum())
    return 2.0 * mass / max(tv, _EPS)


def slant(a: np.ndarray) -> float:
    """The shear ``-mu11 / mu02`` of the ink map ``a``: > 0 when the top leans right (0.0 when empty)."""
    mass = float(a.sum())
    if mass < _EPS:
        return 0.0
    ys, xs = np.mgrid[0:a.shape[0], 0:a.shape[1]].astype(np.float64)
    cy, cx = float((a * ys).sum() / mass), float((a * xs).sum() / mass)
    mu11 = float((a * (xs - cx) * (ys - cy)).sum() / mass)
    mu02 = float((a * (ys - cy) ** 2).sum() / mass)
    return -mu11 / max(mu02, _EPS)  # image y grows downwards: a top leaning right has x falling with y


def _unit_colour(rgb: np.ndarray) -> np.ndarray:
    return rgb / max(float(rgb.max()), _EPS)


_PALETTE_UNIT = np.stack([_unit_colour(np.asarray(rgb, np.float64)) for _, rgb in PALETTE])
PALETTE_NAMES = tuple(name for name, _ in PALETTE)


def stroke_colour(im: Image.Image) -> str | None:
    """The palette colour nearest to the stroke's mean colour (``None`` for an empty or grey image)."""
    px = _pixels(im)
    a = px.max(axis=2)
    w = a ** 2
    if float(w.sum()) < _EPS:
        return None
    mean = (px * w[..., None]).sum(axis=(0, 1)) / float(w.sum())
    unit = _unit_colour(mean)
    if float(unit.max() - unit.min()) < 0.05:  # grey: no colour to name
        return None
    return PALETTE_NAMES[int(np.argmin(((_PALETTE_UNIT - unit) ** 2).sum(axis=1)))]


def style_values(im: Image.Image) -> dict[str, float]:
    """The raw style measures of one image: ``{"thickness": px, "slant": shear}``."""
    a = ink(im)
    return {"thickness": thickness(a), "slant": slant(a)}


ALL = "*"  # the key of edges fit on every class together


@dataclass(frozen=True)
class Levels:
    """Tertile edges per class and style axis, fit on a reference set; ``level`` names a value's third.

    Edges are per class by default (a "thick 1" is thick for a one: every class x level cell then
    holds a third of the class's reference images, so a generator conditioned on the levels sees
    every cell); ``edges[ALL]`` holds edges fit on all classes together, for unknown classes.
    """

    edges: Mapping[str, Mapping[str, tuple[float, float]]]  # class (or ALL) -> axis -> (lo, hi)

    @property
    def axes(self) -> tuple[str, ...]:
        return tuple(self.edges[ALL])

    @classmethod
    def fit(cls, values: Iterable[Mapping[str, float]], axes: Sequence[str] = STYLE_AXES,
            classes: Sequence[str] | None = None, *, min_per_class: int = 3) -> "Levels":
        """Tertiles of ``values`` per axis: over all rows, and per class of ``classes`` (one class name
        per row; classes with fewer than ``min_per_class`` rows use the overall edges)."""
        rows = list(values)
        unknown = [a for a in axes if a not in STYLE_LEVELS]
        if unknown:
            raise FactoryError(f"style axes {unknown} are not measured; choose from {list(STYLE_LEVELS)}")
        if not axes:
            raise FactoryError("style levels need at least one axis")
        if len(rows) < 3:
            raise FactoryError(f"style levels need at least 3 reference images; got {len(rows)}")
        if classes is not None and len(classes) != len(rows):
            raise FactoryError(f"style levels: {len(rows)} images but {len(classes)} class names")

        def tertiles(sel: list[Mapping[str, float]]) -> dict[str, tuple[float, float]]:
            out = {}
            for axis in axes:
                lo, hi = np.quantile(np.asarray([r[axis] for r in sel], np.float64), [1 / 3, 2 / 3])
                out[axis] = (float(lo), float(hi))
            return out

        edges = {ALL: tertiles(rows)}
        if classes is not None:
            for c in sorted(set(classes)):
                sel = [r for r, k in zip(rows, classes) if k == c]
                if len(sel) >= min_per_class:
                    edges[str(c)] = tertiles(sel)
        return cls(edges)

    def level(self, axis: str, value: float, class_name: str | None = None) -> str:
        lo, hi = self.edges.get(class_name, self.edges[ALL])[axis] if class_name is not None else self.edges[ALL][axis]
        names = STYLE_LEVELS[axis]
        return names[0] if value < lo else names[1] if value < hi else names[2]

    def levels(self, values: Mapping[str, float], class_name: str | None = None) -> dict[str, str]:
        return {axis: self.level(axis, values[axis], class_name) for axis in self.axes}

    def to_dict(self) -> dict[str, Any]:
        return {c: {axis: [round(lo, 6), round(hi, 6)] for axis, (lo, hi) in e.items()}
                for c, e in self.edges.items()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Mapping[str, Sequence[float]]]) -> "Levels":
        if ALL not in d:
            raise FactoryError(f"style levels: no {ALL!r} entry")
        return cls({c: {axis: (float(v[0]), float(v[1])) for axis, v in e.items()} for c, e in d.items()})


def fit_levels(images: Iterable[Image.Image], axes: Sequence[str] = STYLE_AXES,
               classes: Sequence[str] | None = None) -> Levels:
    """Tertile :class:`Levels` of ``images`` (the reference set, e.g. the real train split), per class
    when ``classes`` (one name per image) is given."""
    return Levels.fit([style_values(im) for im in images], axes, classes)


def measure(im: Image.Image, axes: Sequence[str], levels: Levels | None = None,
            class_name: str | None = None) -> dict[str, str | None]:
    """The realised value of each axis of ``axes`` in ``im``: ``color`` (a palette name or None), and the
    style axes as levels (``levels`` required for those; ``class_name`` picks the class's edges)."""
    out: dict[str, str | None] = {}
    style = [a for a in axes if a in STYLE_LEVELS]
    if style:
        if levels is None or any(a not in levels.axes for a in style):
            raise FactoryError(f"measuring {style} needs style levels fit on a reference set")
        values = style_values(im)
        out.update({a: levels.level(a, values[a], class_name) for a in style})
    for a in axes:
        if a == COLOR_AXIS:
            out[a] = stroke_colour(im)
        elif a not in STYLE_LEVELS:
            raise FactoryError(f"attribute {a!r} cannot be measured from pixels; measurable: {list(MEASURED_AXES)}")
    return {a: out[a] for a in axes}
