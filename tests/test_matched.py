"""Metrics at one sample count: KID against a direct numpy implementation, seeded equal-n draws, the bootstrap
(weighted resamples equal the plain metrics at unit weights; copies are one point; intervals hold the estimate
and narrow with n)."""

import numpy as np
import pytest

import factory.measure.matched as mt
import factory.measure.metrics as dm
from factory.core.errors import FactoryError
from factory.measure.matched import (
    Side,
    _distances,
    compare_matched,
    draw_rows,
    interval,
    matched_size,
    overlaps,
    point_metrics,
    weighted_metrics,
)
from factory.measure.metrics import METRIC_NAMES, frechet_distance, kid, polynomial_kernel, prdc


def direct_kid(x, y):
    """Unbiased MMD^2 with k(a, b) = (a.b/d + 1)^3, written out on the full kernel matrices."""
    d = x.shape[1]
    kxx, kyy, kxy = (x @ x.T / d + 1) ** 3, (y @ y.T / d + 1) ** 3, (x @ y.T / d + 1) ** 3
    m, n = len(x), len(y)
    return ((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
            - 2 * kxy.sum() / (m * n))


def cleanfid_one_subset(x, y):
    """clean-fid's kernel_distance for one subset holding all of two equal-size sets."""
    n, m = x.shape[1], len(x)
    a = (x @ x.T / n + 1) ** 3 + (y @ y.T / n + 1) ** 3
    b = (x @ y.T / n + 1) ** 3
    return ((a.sum() - np.diag(a).sum()) / (m - 1) - b.sum() * 2 / m) / m


# -- KID ---------------------------------------------------------------------------------------------


def test_kid_matches_a_direct_numpy_implementation(monkeypatch):
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((40, 6)), rng.standard_normal((25, 6)) * 1.2 + 0.3
    assert kid(x, y) == pytest.approx(direct_kid(x, y), rel=1e-10)
    z = rng.standard_normal((40, 6)) + 0.1
    assert kid(x, z) == pytest.approx(cleanfid_one_subset(z, x), rel=1e-10)
    monkeypatch.setattr(dm, "_BLOCK_ENTRIES", 3 * 40)  # row blocks of 3: the streaming path
    assert kid(x, y) == pytest.approx(direct_kid(x, y), rel=1e-10)
    assert kid(y, x) == pytest.approx(kid(x, y), rel=1e-10)
    np.testing.assert_allclose(polynomial_kernel(x, y), (x @ y.T / 6 + 1) ** 3, rtol=1e-12)


def test_kid_near_zero_for_one_distribution_and_larger_for_a_shifted_one():
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((300, 8)), rng.standard_normal((300, 8))
    shifted = rng.standard_normal((300, 8)) + 0.5
    same, apart = kid(a, b), kid(a, shifted)
    assert abs(same) < 0.02 * apart and apart > 0.05
    assert frechet_distance(a, b) < 0.2 * frechet_distance(a, shifted)
    with pytest.raises(FactoryError, match="at least 2 samples"):
        kid(a[:1], b)
    with pytest.raises(FactoryError, match="dimensions differ"):
        kid(a, b[:, :3])


# -- draws at one n ----------------------------------------------------------------------------------


def test_draw_rows_are_seeded_distinct_and_independent_per_stream():
    rows = draw_rows(100, 30, seed=0, draw=0, stream="raw")
    assert len(set(rows.tolist())) == 30 and rows.min() >= 0 and rows.max() < 100
    assert rows.tolist() == draw_rows(100, 30, 0, 0, "raw").tolist()  # deterministic
    assert rows.tolist() != draw_rows(100, 30, 0, 1, "raw").tolist()  # another draw
    assert rows.tolist() != draw_rows(100, 30, 1, 0, "raw").tolist()  # another seed
    assert rows.tolist() != draw_rows(100, 30, 0, 0, "curated").tolist()  # another set
    assert draw_rows(30, 30, 0, 3, "x").tolist() == list(range(30))  # a set of exactly n: whole


def test_matched_size():
    assert matched_size({"test": 359, "train": 1438, "curated": 996}) == 359
    assert matched_size({"a": 5000, "b": 4000}) == mt.DEFAULT_MAX_N
    assert matched_size({"a": 50, "b": 40}, 30) == 30
    with pytest.raises(FactoryError, match=r"evaluate.n=45 .*b \(40 samples\)"):
        matched_size({"a": 50, "b": 40}, 45)
    with pytest.raises(FactoryError, match="evaluate.n=5 must be more than k=5"):
        matched_size({"a": 5, "b": 40})


def test_compare_matched_uses_equal_counts_and_is_deterministic(monkeypatch):
    rng = np.random.default_rng(2)
    ref, a, b = rng.standard_normal((150, 4)), rng.standard_normal((300, 4)), rng.standard_normal((60, 4)) + 1
    seen = []

    def recording_prdc(real, fake, k):
        seen.append((len(real), len(fake)))
        return prdc(real, fake, k)

    monkeypatch.setattr(mt, "prdc", recording_prdc)
    out = compare_matched(ref, {"a": a, "b": b}, n=60, draws=3, bootstrap=12, k=3, seed=7)
    assert seen == [(60, 60)] * 6  # PRDC with n real against n fake, every draw, every set
    for name in ("a", "b"):
        r = out[name]
        assert set(METRIC_NAMES) <= set(r) and all(len(r["per_draw"][m]) == 3 for m in METRIC_NAMES)
        assert r["fd"] == pytest.approx(np.mean(r["per_draw"]["fd"]))  # the reported value: the mean of the draws
    assert len(set(out["a"]["per_draw"]["fd"])) == 3  # a (300 rows) differs between draws
    # b holds exactly n rows: the same rows every draw, so only the reference rows move its numbers
    assert out == compare_matched(ref, {"a": a, "b": b}, n=60, draws=3, bootstrap=12, k=3, seed=7)
    alone = compare_matched(ref, {"a": a}, n=60, draws=3, bootstrap=12, k=3, seed=7)
    assert alone["a"]["per_draw"] == out["a"]["per_draw"]  # another set does not change a's draws
    other_seed = compare_matched(ref, {"a": a}, n=60, draws=3, bootstrap=12, k=3, seed=8)
    assert other_seed["a"]["per_draw"] != out["a"]["per_draw"]
    assert out["b"]["kid"] > 10 * abs(out["a"]["kid"]) and out["b"]["fd"] > out["a"]["fd"]
    with pytest.raises(FactoryError, match="evaluate.n=100"):
        compare_matched(ref, {"a": a, "b": b}, n=100)
    with pytest.raises(FactoryError, match="evaluate.draws"):
        compare_matched(ref, {"a": a}, n=60, draws=0)


# -- the bootstrap -----------------------------------------------------------------------------------


def test_weighted_metrics_at_unit_weights_are_the_plain_metrics():
    rng = np.random.default_rng(3)
    real, fake = rng.standard_normal((70, 5)), rng.standard_normal((70, 5)) * 1.3 + 0.2
    ones = np.ones(70, dtype=np.int64)
    got = weighted_metrics(Side.of(real).stats(ones, 4), Side.of(fake).stats(ones, 4),
                           _distances(real, fake), polynomial_kernel(real, fake), 4)
    assert got == pytest.approx(point_metrics(real, fake, 4), rel=1e-9, abs=1e-12)


def test_copies_of_a_row_are_one_point():
    side = Side.of(np.array([[0.0], [1.0], [3.0], [7.0]]))
    assert side.radii(np.ones(4, dtype=np.int64), 2).tolist() == [3.0, 2.0, 3.0, 6.0]  # as knn_radii
    # row 0 drawn twice: its copies are not each other's neighbours, but weigh 2 for the others
    assert side.radii(np.array([2, 1, 1, 1]), 2).tolist() == [3.0, 1.0, 3.0, 6.0]
    # KID's within-set mean: over pairs of copies of DIFFERENT rows only
    x = np.random.default_rng(4).standard_normal((6, 3))
    w = np.array([3, 0, 1, 2, 0, 0])
    rows = np.repeat(np.arange(6), w)
    k = polynomial_kernel(x, x)
    pairs = [(i, j) for i in rows for j in rows if i != j]
    assert Side.of(x).within_kernel(w) == pytest.approx(np.mean([k[i, j] for i, j in pairs]), rel=1e-12)
    mu, cov = Side.of(x).moments(w)
    np.testing.assert_allclose(cov, np.cov(x[rows], rowvar=False), atol=1e-12)  # FD sees the copies
    np.testing.assert_allclose(mu, x[rows].mean(axis=0), atol=1e-12)


def width(ci):
    return ci[1] - ci[0]


def test_bootstrap_intervals_hold_the_estimate_and_narrow_with_n():
    rng = np.random.default_rng(5)
    ref, same = rng.standard_normal((400, 6)), rng.standard_normal((400, 6))
    small = compare_matched(ref, {"s": same}, n=60, draws=2, bootstrap=60, k=3, seed=0)["s"]
    large = compare_matched(ref, {"s": same}, n=400, draws=2, bootstrap=60, k=3, seed=0)["s"]
    for r in (small, large):
        for m in METRIC_NAMES:
            lo, hi = r[f"{m}_ci95"]
            assert lo <= r[m] <= hi, (m, r[m], lo, hi)
        assert 0 <= r["coverage_ci95"][0] and r["coverage_ci95"][1] <= 1  # clipped to the metric's range
    for m in ("fd", "kid", "precision", "recall", "coverage"):
        assert width(large[f"{m}_ci95"]) < width(small[f"{m}_ci95"]), m
    none = compare_matched(ref, {"s": same}, n=60, draws=2, bootstrap=0, k=3)["s"]
    assert none["fd_ci95"] is None and none["fd"] == small["fd"]  # intervals do not move the estimate


def test_interval_and_overlap():
    assert interval([]) is None
    assert interval(np.arange(101.0)) == pytest.approx([2.5, 97.5])
    assert interval([0.9, 1.1, 1.2], (0.0, 1.0))[1] == 1.0
    assert overlaps([0, 1], [1, 2]) is True and overlaps([0, 1], [1.5, 2]) is False
    assert overlaps(None, [0, 1]) is None
