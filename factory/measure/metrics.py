"""Quality metrics of a synthetic dataset against a real one, in the feature space of an encoder.

- Fréchet distance (FD) between Gaussians fitted to the two feature sets (FID when the features are
  Inception v3 pool features; with CLIP features it is sometimes called FD_CLIP).
- Kernel distance (KID, Binkowski et al. 2018, "Demystifying MMD GANs", https://arxiv.org/abs/1801.01401):
  the unbiased estimate of the squared MMD with the cubic polynomial kernel ``k(x, y) = (x.y / d + 1)^3``,
  as torch-fidelity's ``mmd2(..., mmd_est="unbiased")`` and clean-fid's ``kernel_distance``.
- Precision, recall, density and coverage (PRDC) of Naeem et al. 2020, "Reliable Fidelity and Diversity
  Metrics for Generative Models" (https://arxiv.org/abs/2002.09797), computed exactly as the reference
  implementation ``clovaai/generative-evaluation-prdc``: k-NN balls whose radius is the distance to the
  k-th nearest neighbour (self excluded) and strict ``<`` comparisons.
- The class balance and the attribute balance of the synthetic dataset (total-variation distance from
  uniform); :func:`realised_balance` reads the attributes from what the images show (measured from
  pixels), with what the prompts asked for beside it.

These compare two feature sets as given; :mod:`factory.measure.matched` compares sets at one sample count
with seeded draws and bootstrap intervals. Features come from :mod:`factory.measure.features`. PRDC and
KID work on row blocks of the distance and kernel matrices, so memory stays bounded for ~10k points per side.

No per-class FD or PRDC: with ~36 images per class in 32-128 dimensions the covariance is singular and
the per-class numbers measure the sample size more than the data (FD's small-sample bias grows with d/n);
per-class fidelity is read from the reference CNN's recognition rate instead.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

from factory.core.errors import FactoryError
from factory.core.shards import Dataset
from factory.curate.audit import UNMEASURED, realised_attributes, realised_report, total_variation
from factory.data.attributes import MEASURED_AXES, Levels

log = logging.getLogger(__name__)


# Every metric of a comparison of two feature sets (:mod:`factory.measure.matched`).
METRIC_NAMES = ("fd", "kid", "precision", "recall", "density", "coverage")


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


def psd_sqrt(s: np.ndarray) -> np.ndarray:
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
    s_a = np.atleast_2d(np.cov(a, rowvar=False))
    s_b = np.atleast_2d(np.cov(b, rowvar=False))
    return frechet_from_moments(a.mean(axis=0), s_a, b.mean(axis=0), s_b)


def frechet_from_moments(mu_a: np.ndarray, s_a: np.ndarray, mu_b: np.ndarray, s_b: np.ndarray,
                         root_a: np.ndarray | None = None) -> float:
    """The Fréchet distance of two Gaussians (means, covariances), as :func:`frechet_distance` computes it;
    ``root_a``: ``S_a^(1/2)`` when the caller has it already."""
    root_a = psd_sqrt(s_a) if root_a is None else root_a
    middle = root_a @ s_b @ root_a
    eig = np.linalg.eigvalsh((middle + middle.T) / 2)
    tr_covmean = float(np.sqrt(np.clip(eig, 0.0, None)).sum())
    diff = mu_a - mu_b
    fd = float(diff @ diff + np.trace(s_a) + np.trace(s_b) - 2.0 * tr_covmean)
    return max(fd, 0.0)


def polynomial_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The cubic polynomial kernel of KID, ``(x @ y.T / d + 1)^3`` (d: the feature dimension)."""
    k = x @ y.T / x.shape[1] + 1.0
    return k * k * k


def _kernel_sum(x: np.ndarray, y: np.ndarray) -> float:
    """Sum of ``polynomial_kernel(x, y)`` over all pairs, on row blocks (memory ``O(block x len(y))``)."""
    step = max(1, _BLOCK_ENTRIES // max(len(y), 1))
    return float(sum(polynomial_kernel(x[i:i + step], y).sum() for i in range(0, len(x), step)))


def kid(a: np.ndarray, b: np.ndarray) -> float:
    """Kernel distance of ``a`` (M, D) and ``b`` (N, D): the unbiased estimate of MMD^2 with the cubic
    polynomial kernel,

        sum_{i != j} k(a_i, a_j) / (M (M-1)) + sum_{i != j} k(b_i, b_j) / (N (N-1)) - 2 sum_{i,j} k(a_i, b_j) / (M N).

    With M = N this is torch-fidelity's ``mmd2(K_XX, K_XY, K_YY, mmd_est="unbiased")`` and one subset of
    clean-fid's ``kernel_distance``. Unlike both, it is computed on the whole of ``a`` and ``b``, not as a
    mean over random subsets of 1,000: the subset scheme here is :mod:`factory.measure.matched`'s seeded
    draws of n samples per side. Unbiased, so it can be slightly negative when the two sets come from
    one distribution; it is returned as is (not clipped at 0). Float64, kernel sums on row blocks.
    """
    a, b = _features(a, "kid: first"), _features(b, "kid: second")
    if a.shape[1] != b.shape[1]:
        raise FactoryError(f"kid: feature dimensions differ ({a.shape[1]} vs {b.shape[1]})")
    if len(a) < 2 or len(b) < 2:
        raise FactoryError(f"kid needs at least 2 samples per side; got {len(a)} and {len(b)}")
    m, n = len(a), len(b)

    def within(x: np.ndarray) -> float:
        diag = float((((_sq_norms(x) / x.shape[1]) + 1.0) ** 3).sum())
        return (_kernel_sum(x, x) - diag) / (len(x) * (len(x) - 1))

    return float(within(a) + within(b) - 2.0 * _kernel_sum(a, b) / (m * n))


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


def _balance(counts: Mapping[str, int], per_class: Mapping[str, Mapping[str, int]], values: Sequence[str]
             ) -> dict[str, Any]:
    """Counts over ``values``, the TV distance of their distribution from uniform, and the mean over
    classes of each class's TV from uniform (0 for a set whose values are independent of class and even)."""
    def tv(c: Mapping[str, int]) -> float | None:
        n = sum(c.values())
        return float(total_variation({v: m / n for v, m in c.items()}, _uniform(list(values)))) if n else None

    tvs = [t for t in (tv(c) for c in per_class.values()) if t is not None]
    return {"counts": {v: int(counts.get(v, 0)) for v in values}, "tv_from_uniform": tv(counts),
            "tv_mean_per_class": float(np.mean(tvs)) if tvs else None}


def realised_balance(dataset: Dataset | Path | str, axes: Sequence[str],
                     values: Mapping[str, Sequence[str]] | None = None, levels: Levels | None = None
                     ) -> dict[str, Any]:
    """Attribute balance of a synthetic dataset from what its images SHOW, beside what was asked for.

    Per axis of ``axes`` (measurable from pixels: colour, thickness, slant; style axes need ``levels``
    fit on real train): ``realised`` and ``requested`` each with counts, TV from uniform over the axis's
    values and mean per-class TV from uniform; ``agreement`` (share of samples showing the requested
    value), per class, ``confusion`` (requested -> realised -> count) and ``unmeasured`` (images that
    show no value, e.g. no colour)."""
    bad = [a for a in axes if a not in MEASURED_AXES]
    if bad:
        raise FactoryError(f"realised balance: {bad} cannot be measured from pixels; measurable: {list(MEASURED_AXES)}")
    rows = realised_attributes(dataset, axes, levels)
    report = realised_report(rows, axes, values)
    out: dict[str, Any] = {}
    for axis in axes:
        r = report[axis]
        vals = [v for v in r["values"] if v != UNMEASURED]
        req = {c: pc["requested_counts"] for c, pc in r["per_class"].items()}
        got = {c: {v: n for v, n in pc["realised_counts"].items() if v != UNMEASURED}
               for c, pc in r["per_class"].items()}
        out[axis] = {
            "realised": _balance(sum((Counter(c) for c in got.values()), Counter()), got, vals),
            "requested": _balance(sum((Counter(c) for c in req.values()), Counter()), req, vals),
            "agreement": r["agreement"],
            "per_class_agreement": {c: pc["agreement"] for c, pc in r["per_class"].items()},
            "confusion": r["confusion"],
            "unmeasured": int(sum(pc["realised_counts"].get(UNMEASURED, 0) for pc in r["per_class"].values())),
            "samples": len(rows),
        }
    return out


def balance_fields(dataset: Dataset | Path | str, requested: Mapping[str, Mapping[str, Any]],
                   levels: Levels | None = None) -> dict[str, Any]:
    """An evaluation row's attribute-balance fields, from :func:`attribute_balance` of the requested
    attributes (``requested``: axis -> its result): ``attribute_balance`` (axis -> TV from uniform of
    the REALISED values, measured from pixels; None for an axis pixels cannot measure),
    ``attribute_balance_requested`` (axis -> TV of the requested values) and ``attribute_agreement``
    (axis -> share of images showing the requested value)."""
    measurable = [a for a in requested if a in MEASURED_AXES]
    realised = realised_balance(dataset, measurable, levels=levels) if measurable else {}
    return {"attribute_balance": {a: realised[a]["realised"]["tv_from_uniform"] if a in realised else None
                                  for a in requested},
            "attribute_balance_requested": {a: v["tv_from_uniform"] for a, v in requested.items()},
            "attribute_agreement": {a: realised[a]["agreement"] if a in realised else None for a in requested}}
