"""Quality metrics of a synthetic dataset against a real one, in the feature space of an encoder.

- Fréchet distance (FD) between Gaussians fitted to the two feature sets (FID when the features are
  Inception v3 pool features; with CLIP features it is sometimes called FD_CLIP).
- Precision, recall, density and coverage (PRDC) of Naeem et al. 2020, "Reliable Fidelity and Diversity
  Metrics for Generative Models" (https://arxiv.org/abs/2002.09797), computed exactly as the reference
  implementation ``clovaai/generative-evaluation-prdc``: k-NN balls whose radius is the distance to the
  k-th nearest neighbour (self excluded) and strict ``<`` comparisons.
- Both per class (classes matched by name), the class balance and the attribute balance of the synthetic
  dataset (total-variation distance from uniform), and optionally the recognition rate of a reference
  classifier trained on real data (:mod:`factory.recognition`).

Features come from a :class:`FeatureExtractor`: the embedded CLIP image tower (:class:`ClipFeatures`, the
default) or Inception v3 pool features from a LOCAL weights file (:class:`InceptionFeatures`; nothing is
downloaded). Datasets are streamed batch by batch; only the (N, D) feature matrices are held in memory,
and PRDC works on row blocks of the distance matrix, so memory stays bounded for ~10k points per side.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any, Hashable, Iterator, Mapping, Sequence

import numpy as np

from factory.core.errors import FactoryError
from factory.curate.audit import total_variation

log = logging.getLogger(__name__)


METRIC_NAMES = ("fd", "precision", "recall", "density", "coverage")


DEFAULT_K = 5


# Rows of a distance block in PRDC: at most this many float64 entries (16 MB; a few such temporaries live at once).
_BLOCK_ENTRIES = 2_000_000


def _features(x: Any, name: str) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 2:
        raise FactoryError(f"{name} features must be an (N, D) array; got shape {a.shape}")
    if not np.isfinite(a).all():
        raise FactoryError(f"{name} features hold NaN or infinite values")
    return a


def _psd_sqrt(s: np.ndarray) -> np.ndarray:
    """The symmetric square root of a symmetric PSD matrix (eigenvalues below 0 from rounding -> 0)."""
    w, v = np.linalg.eigh(s)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to ``a`` (N, D) and ``b`` (M, D):
    ``||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2))`` with unbiased covariances (as pytorch-fid).

    The trace of the matrix square root is computed in the eigenvalue form
    ``Tr((S_a S_b)^(1/2)) = sum sqrt(eig(S_a^(1/2) S_b S_a^(1/2)))``: the matrix in the middle is symmetric
    PSD, so this is stable where ``scipy.linalg.sqrtm(S_a @ S_b)`` needs pytorch-fid's eps-on-the-diagonal
    fallback (singular covariances: fewer samples than dimensions). Float64 throughout; a result below 0
    from rounding is returned as 0.
    """
    a, b = _features(a, "frechet_distance: first"), _features(b, "frechet_distance: second")
    if a.shape[1] != b.shape[1]:
        raise FactoryError(f"frechet_distance: feature dimensions differ ({a.shape[1]} vs {b.shape[1]})")
    if len(a) < 2 or len(b) < 2:
        raise FactoryError(f"frechet_distance needs at least 2 samples per side; got {len(a)} and {len(b)}")
    mu_a, mu_b = a.mean(axis=0), b.mean(axis=0)
    s_a = np.atleast_2d(np.cov(a, rowvar=False))
    s_b = np.atleast_2d(np.cov(b, rowvar=False))
    root_a = _psd_sqrt(s_a)
    middle = root_a @ s_b @ root_a
    eig = np.linalg.eigvalsh((middle + middle.T) / 2)
    tr_covmean = float(np.sqrt(np.clip(eig, 0.0, None)).sum())
    diff = mu_a - mu_b
    fd = float(diff @ diff + np.trace(s_a) + np.trace(s_b) - 2.0 * tr_covmean)
    return max(fd, 0.0)


def _sq_norms(x: np.ndarray) -> np.ndarray:
    return np.einsum("ij,ij->i", x, x)


def _distance_blocks(x: np.ndarray, y: np.ndarray) -> Iterator[tuple[slice, np.ndarray]]:
    """Euclidean distances from row blocks of ``x`` to all of ``y``: ``(rows, (len(rows), len(y)))``."""
    yy = _sq_norms(y)
    step = max(1, _BLOCK_ENTRIES // max(len(y), 1))
    for start in range(0, len(x), step):
        rows = slice(start, min(start + step, len(x)))
        xb = x[rows]
        d2 = _sq_norms(xb)[:, None] + yy[None, :] - 2.0 * (xb @ y.T)
        yield rows, np.sqrt(np.maximum(d2, 0.0))


def knn_radii(x: np.ndarray, k: int) -> np.ndarray:
    """Distance of every row of ``x`` to its k-th nearest neighbour in ``x``, itself excluded
    (the (k+1)-th smallest distance of its row, the first being its distance 0 to itself)."""
    out = np.empty(len(x))
    for rows, d in _distance_blocks(x, x):
        out[rows] = np.partition(d, k, axis=1)[:, k]
    return out


def _check_k(k: int, n_real: int, n_fake: int) -> None:
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
        raise FactoryError(f"prdc: k must be an integer >= 1; got {k!r}")
    if k >= n_real or k >= n_fake:
        raise FactoryError(f"prdc: k={k} needs more than k points per side; got {n_real} real and {n_fake} fake")


def prdc(real: np.ndarray, fake: np.ndarray, k: int = DEFAULT_K) -> dict[str, float]:
    """Precision, recall, density and coverage of ``fake`` (M, D) against ``real`` (N, D), as
    ``clovaai/generative-evaluation-prdc``'s ``compute_prdc(real, fake, nearest_k=k)``:

    - precision: share of fake points inside the k-NN ball of some real point;
    - recall: share of real points inside the k-NN ball of some fake point;
    - density: ``1/(k M) * sum_j #{i: fake_j in ball(real_i)}`` (1 when fake is distributed like real; can exceed 1);
    - coverage: share of real points whose nearest fake point lies inside their own ball.

    Distances are computed in float64 on row blocks of the real set (memory ``O(block x M)``).
    """
    real, fake = _features(real, "prdc: real"), _features(fake, "prdc: fake")
    if real.shape[1] != fake.shape[1]:
        raise FactoryError(f"prdc: feature dimensions differ ({real.shape[1]} vs {fake.shape[1]})")
    _check_k(k, len(real), len(fake))
    r_real = knn_radii(real, k)
    r_fake = knn_radii(fake, k)
    in_real_balls = np.zeros(len(fake), dtype=np.int64)  # per fake point: how many real balls hold it
    recalled = np.zeros(len(real), dtype=bool)
    covered = np.zeros(len(real), dtype=bool)
    for rows, d in _distance_blocks(real, fake):  # d: (block of real, all fake)
        in_real_balls += (d < r_real[rows, None]).sum(axis=0)
        recalled[rows] = (d < r_fake[None, :]).any(axis=1)
        covered[rows] = d.min(axis=1) < r_real[rows]
    return {
        "precision": float((in_real_balls > 0).mean()),
        "recall": float(recalled.mean()),
        "density": float(in_real_balls.sum() / (k * len(fake))),
        "coverage": float(covered.mean()),
    }


def feature_metrics(real: np.ndarray, fake: np.ndarray, k: int = DEFAULT_K) -> dict[str, float]:
    """FD and PRDC of ``fake`` against ``real``: ``{fd, precision, recall, density, coverage}``."""
    return {"fd": frechet_distance(real, fake), **prdc(real, fake, k)}


def class_metrics(real: np.ndarray, real_labels: Sequence[Hashable], fake: np.ndarray,
                  fake_labels: Sequence[Hashable], *, k: int = DEFAULT_K,
                  classes: Sequence[Hashable] | None = None) -> dict[str, Any]:
    """FD and PRDC overall (all real against all fake) and per class (real of a class against fake of the
    same class). Labels are class names (or any hashable); ``classes`` (default: the sorted real labels)
    says which classes get an entry, keyed by ``str(class)``.

    Every class entry holds ``n_real`` and ``n_fake``. A class with too few samples is kept and marked,
    not dropped: ``fd`` is None unless both sides have at least 2 samples, the four PRDC numbers are None
    unless both sides have more than ``k`` samples, and ``skipped`` then says why.
    """
    real, fake = _features(real, "class_metrics: real"), _features(fake, "class_metrics: fake")
    real_labels, fake_labels = list(real_labels), list(fake_labels)
    if len(real_labels) != len(real) or len(fake_labels) != len(fake):
        raise FactoryError(f"class_metrics: {len(real)} real and {len(fake)} fake features but "
                           f"{len(real_labels)} and {len(fake_labels)} labels")
    if classes is None:
        classes = sorted(set(real_labels), key=str)
    overall = feature_metrics(real, fake, k)
    r_lab, f_lab = np.asarray(real_labels, dtype=object), np.asarray(fake_labels, dtype=object)
    per_class: dict[str, dict[str, Any]] = {}
    for c in classes:
        r, f = real[r_lab == c], fake[f_lab == c]
        entry: dict[str, Any] = {"n_real": int(len(r)), "n_fake": int(len(f))}
        entry.update(dict.fromkeys(METRIC_NAMES))
        skipped = []
        if min(len(r), len(f)) >= 2:
            entry["fd"] = frechet_distance(r, f)
        else:
            skipped.append("fd needs >= 2 samples per side")
        if min(len(r), len(f)) > k:
            entry.update(prdc(r, f, k))
        else:
            skipped.append(f"prdc needs > k={k} samples per side")
        if skipped:
            entry["skipped"] = "; ".join(skipped)
        per_class[str(c)] = entry
    return {"overall": overall, "per_class": per_class}


def _uniform(values: Sequence[str]) -> dict[str, float]:
    return {v: 1.0 / len(values) for v in values}


def class_balance(class_names: Sequence[str], classes: Sequence[str]) -> dict[str, Any]:
    """Counts per class of a dataset (``class_names``: one per sample) and the total-variation distance
    of its class distribution from uniform over ``classes`` (the real dataset's classes; samples of other
    classes are counted under ``outside`` and are mass outside the target)."""
    if not classes:
        raise FactoryError("class_balance needs at least one class")
    counts = Counter(class_names)
    n = sum(counts.values())
    known = set(classes)
    outside = {c: counts[c] for c in sorted(counts) if c not in known}
    p = {c: m / n for c, m in counts.items()} if n else {}
    return {
        "counts": {c: int(counts.get(c, 0)) for c in classes},
        "outside": outside,
        "total": int(n),
        "tv_from_uniform": float(total_variation(p, _uniform(list(classes)))) if n else None,
    }


def attribute_balance(attributes: Sequence[Mapping[str, str]],
                      values: Mapping[str, Sequence[str]] | None = None) -> dict[str, Any]:
    """Per attribute axis found in ``attributes`` (one mapping per sample) or named in ``values``: counts
    per value, ``missing`` (samples without that axis) and the total-variation distance of the value
    distribution (over samples that have the axis) from uniform over the axis's values (those in
    ``values`` followed by any others seen)."""
    values = {str(a): [str(v) for v in vs] for a, vs in (values or {}).items()}
    seen: dict[str, Counter[str]] = {a: Counter() for a in values}
    for attrs in attributes:
        for axis, v in attrs.items():
            seen.setdefault(str(axis), Counter())[str(v)] += 1
    out: dict[str, Any] = {}
    for axis in sorted(seen):
        counts = seen[axis]
        axis_values = list(values.get(axis, [])) + sorted(set(counts) - set(values.get(axis, [])))
        n = sum(counts.values())
        out[axis] = {
            "counts": {v: int(counts.get(v, 0)) for v in axis_values},
            "missing": int(len(attributes) - n),
            "tv_from_uniform": (float(total_variation({v: m / n for v, m in counts.items()}, _uniform(axis_values)))
                                if n else None),
        }
    return out
