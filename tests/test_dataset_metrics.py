"""Dataset metrics: FD against closed forms, PRDC against a brute-force copy of the reference implementation,
balance numbers on hand-made cases, the feature extractors (a random-weight Inception v3 saved
to a temporary file), and evaluate_dataset end to end on the digits with a tiny CLIP trained in the test."""

import io
import itertools

import numpy as np
import pytest
import scipy.linalg
import torch
from PIL import Image

import factory.measure.metrics as dm
from factory.core.errors import FactoryError
from factory.core.sample import synthetic_sample
from factory.core.shards import Dataset, DatasetWriter
from factory.measure.dataset_eval import evaluate_dataset
from factory.measure.features import ClipFeatures, InceptionFeatures, extract, feature_extractor
from factory.measure.metrics import (
    attribute_balance,
    class_balance,
    frechet_distance,
    knn_radii,
    prdc,
)

GEN = {"backend": "embedded", "model": "m", "weights_sha256": "0" * 64, "scheduler": "ddim", "steps": 20,
       "guidance_scale": 2.0, "negative_guidance": None, "height": 8, "width": 8, "dtype": "float32"}


def with_moments(rng, n, mean, cov):
    """``n`` points whose sample mean and (unbiased) covariance are exactly ``mean`` and ``cov``."""
    z = rng.standard_normal((n, len(mean)))
    z -= z.mean(axis=0)
    z = z @ np.linalg.inv(np.linalg.cholesky(np.cov(z, rowvar=False))).T  # sample covariance: identity
    return z @ np.linalg.cholesky(cov).T + mean


def closed_form_fd(mu1, s1, mu2, s2):
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * covmean))


def random_spd(rng, d):
    a = rng.standard_normal((d, d))
    return a @ a.T / d + 0.1 * np.eye(d)


# -- Fréchet distance -------------------------------------------------------------------------------


def test_fd_equals_closed_form_for_exact_moments():
    rng = np.random.default_rng(0)
    d = 6
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    s1, s2 = random_spd(rng, d), random_spd(rng, d)  # they do not commute: the general case
    a, b = with_moments(rng, 500, mu1, s1), with_moments(rng, 300, mu2, s2)
    assert frechet_distance(a, b) == pytest.approx(closed_form_fd(mu1, s1, mu2, s2), rel=1e-8)


def test_fd_of_large_gaussian_samples_matches_the_diagonal_closed_form():
    rng = np.random.default_rng(1)
    mu1, mu2 = np.array([0.0, 1.0, -1.0]), np.array([0.5, 1.0, 0.0])
    v1, v2 = np.array([1.0, 4.0, 0.25]), np.array([2.0, 1.0, 0.25])
    a = rng.normal(mu1, np.sqrt(v1), size=(40_000, 3))
    b = rng.normal(mu2, np.sqrt(v2), size=(40_000, 3))
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(v1) - np.sqrt(v2)) ** 2)  # commuting covariances
    assert frechet_distance(a, b) == pytest.approx(expected, rel=0.03)


def test_fd_is_zero_on_itself_symmetric_and_fine_with_singular_covariances():
    rng = np.random.default_rng(2)
    a, b = rng.standard_normal((50, 8)), rng.standard_normal((40, 8)) + 0.3
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-9)
    assert frechet_distance(a, b) == pytest.approx(frechet_distance(b, a), rel=1e-9)
    wide_a, wide_b = rng.standard_normal((5, 64)), rng.standard_normal((7, 64))  # fewer samples than dimensions
    fd = frechet_distance(wide_a, wide_b)
    assert np.isfinite(fd) and fd > 0
    assert frechet_distance(wide_a, wide_a) == pytest.approx(0.0, abs=1e-8)


@pytest.mark.parametrize("a,b,match", [
    (np.zeros((1, 3)), np.zeros((5, 3)), "at least 2 samples"),
    (np.zeros((5, 3)), np.zeros((5, 4)), "dimensions differ"),
    (np.zeros(5), np.zeros((5, 1)), r"\(N, D\) array"),
    (np.full((5, 2), np.nan), np.zeros((5, 2)), "NaN"),
])
def test_fd_rejects_bad_inputs(a, b, match):
    with pytest.raises(FactoryError, match=match):
        frechet_distance(a, b)


# -- PRDC -------------------------------------------------------------------------------------------


def reference_prdc(real, fake, k):
    """clovaai/generative-evaluation-prdc's compute_prdc, brute force on the full distance matrices."""
    def dist(x, y):
        return np.linalg.norm(x[:, None, :] - y[None, :, :], axis=-1)

    def radii(x):
        return np.sort(dist(x, x), axis=1)[:, k]  # the (k+1)-th smallest: the first is 0, to itself

    r_real, r_fake, d = radii(real), radii(fake), dist(real, fake)
    return {
        "precision": (d < r_real[:, None]).any(axis=0).mean(),
        "recall": (d < r_fake[None, :]).any(axis=1).mean(),
        "density": (d < r_real[:, None]).sum(axis=0).mean() / k,
        "coverage": (d.min(axis=1) < r_real).mean(),
    }


@pytest.mark.parametrize("k", [1, 3, 5])
def test_prdc_matches_a_brute_force_reference(k, monkeypatch):
    rng = np.random.default_rng(k)
    real = rng.standard_normal((80, 5))
    fake = rng.standard_normal((60, 5)) * 1.3 + 0.4
    expected = reference_prdc(real, fake, k)
    assert prdc(real, fake, k) == pytest.approx(expected, abs=1e-12)
    monkeypatch.setattr(dm, "_BLOCK_ENTRIES", 7 * 80)  # blocks of a few rows: the streaming path
    assert prdc(real, fake, k) == pytest.approx(expected, abs=1e-12)
    assert prdc(fake, real, k) == pytest.approx(reference_prdc(fake, real, k), abs=1e-12)


def test_knn_radii_excludes_self():
    x = np.array([[0.0], [1.0], [3.0], [7.0]])
    assert knn_radii(x, 1).tolist() == [1.0, 1.0, 2.0, 4.0]
    assert knn_radii(x, 2).tolist() == [3.0, 2.0, 3.0, 6.0]


def test_prdc_of_identical_sets_is_perfect():
    x = np.random.default_rng(0).standard_normal((200, 8))
    r = prdc(x, x.copy(), k=5)
    assert r["precision"] == r["recall"] == r["coverage"] == 1.0
    assert r["density"] == pytest.approx(1.0)


def test_prdc_of_a_far_away_fake_set_is_zero():
    rng = np.random.default_rng(1)
    r = prdc(rng.standard_normal((100, 4)), rng.standard_normal((100, 4)) + 100.0, k=5)
    assert r == {"precision": 0.0, "recall": 0.0, "density": 0.0, "coverage": 0.0}


def test_prdc_sees_mode_collapse():
    rng = np.random.default_rng(2)
    real = rng.standard_normal((300, 4))
    modes = real[rng.choice(len(real), 5, replace=False)]
    fake = np.repeat(modes, 40, axis=0) + 1e-3 * rng.standard_normal((200, 4))  # every fake is one of 5 reals
    r = prdc(real, fake, k=5)
    assert r["precision"] == 1.0  # faithful...
    # ...but not diverse: only the 5 modes, and the reals whose balls hold one (about k per mode), are covered
    assert r["recall"] < 0.05 and r["coverage"] < 0.2
    assert r["density"] > 1.0  # piled up where few real balls are: each sits in about k of them plus its own


@pytest.mark.parametrize("k,match", [(5, "more than k"), (10, "more than k"), (0, ">= 1"), (2.5, ">= 1")])
def test_prdc_rejects_bad_k(k, match):
    with pytest.raises(FactoryError, match=match):
        prdc(np.zeros((10, 2)), np.ones((5, 2)), k=k)


def test_prdc_rejects_mismatched_dimensions():
    with pytest.raises(FactoryError, match="dimensions differ"):
        prdc(np.zeros((10, 2)), np.zeros((10, 3)))


# -- balance --------------------------------------------------------------------------------------


def test_class_balance():
    r = class_balance(["a", "a", "a", "b"], ["a", "b"])
    assert r == {"counts": {"a": 3, "b": 1}, "outside": {}, "total": 4, "tv_from_uniform": pytest.approx(0.25)}
    r = class_balance(["a", "a", "c"], ["a", "b"])  # c is not a real class: all of its mass is off target
    assert r["counts"] == {"a": 2, "b": 0} and r["outside"] == {"c": 1}
    assert r["tv_from_uniform"] == pytest.approx(0.5 * (abs(2 / 3 - 0.5) + 0.5 + 1 / 3))
    assert class_balance(["a", "b"], ["a", "b"])["tv_from_uniform"] == 0.0
    assert class_balance([], ["a"])["tv_from_uniform"] is None


def test_attribute_balance():
    attrs = [{"color": "red", "stroke": "thin"}, {"color": "red"}, {"color": "blue"}, {}]
    r = attribute_balance(attrs)
    assert r["color"] == {"counts": {"blue": 1, "red": 2}, "missing": 1, "tv_from_uniform": pytest.approx(1 / 6)}
    assert r["stroke"] == {"counts": {"thin": 1}, "missing": 3, "tv_from_uniform": 0.0}
    r = attribute_balance(attrs, {"color": ["red", "green", "blue"], "size": ["s", "l"]})
    assert r["color"]["counts"] == {"red": 2, "green": 0, "blue": 1}  # the expected values, in their order
    assert r["color"]["tv_from_uniform"] == pytest.approx(1 / 3)
    assert r["size"] == {"counts": {"s": 0, "l": 0}, "missing": 4, "tv_from_uniform": None}
    assert attribute_balance([{}, {}]) == {}


# -- feature extractors -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def inception_weights(tmp_path_factory):
    """A random-weight Inception v3 state dict (about 100 MB) in a temporary file."""
    from torchvision.models import inception_v3

    path = tmp_path_factory.mktemp("inception") / "inception.pth"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        torch.save(inception_v3(weights=None, aux_logits=True, init_weights=False).state_dict(), path)
    return path


def test_inception_features_from_a_local_file(inception_weights):
    # Measured on the loaded 2-core machine: about 2 s to load and 1.3 s for these 3 images.
    ext = feature_extractor("inception", inception_weights)
    assert isinstance(ext, InceptionFeatures) and ext.name == "inception"
    rng = np.random.default_rng(0)
    ims = [Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8), "L"),
           Image.fromarray(rng.integers(0, 256, (20, 12, 3), dtype=np.uint8), "RGB")]
    f = ext(ims)
    assert f.shape == (2, 2048) and f.dtype == np.float32 and np.isfinite(f).all()
    np.testing.assert_array_equal(ext(ims[:1]), f[:1])
    desc = ext.describe()
    assert desc["kind"] == "inception" and len(desc["weights_sha256"]) == 64 and desc["embed_dim"] == 2048


def test_inception_refuses_missing_or_wrong_weights(tmp_path):
    with pytest.raises(FactoryError, match="nope.pth.*not found"):
        InceptionFeatures(tmp_path / "nope.pth")
    torch.save({"fc.weight": torch.zeros(3, 3)}, tmp_path / "other.pth")
    with pytest.raises(FactoryError, match="other.pth: not an Inception v3 state dict"):
        InceptionFeatures(tmp_path / "other.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(FactoryError, match="junk.pth: not a readable weights file"):
        InceptionFeatures(tmp_path / "junk.pth")


def test_feature_extractor_kinds(tmp_path):
    with pytest.raises(FactoryError, match="must be one of clip, inception; got 'dino'"):
        feature_extractor("dino", tmp_path)
    with pytest.raises(FactoryError):
        feature_extractor("clip", tmp_path / "none")


# -- end to end on the digits -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def clip_features(clip_dir):  # clip_dir: conftest.py
    from factory.curate.scorers import load_scorer

    return ClipFeatures(load_scorer("embedded", clip_dir))


def degraded(sample, rng) -> bytes:
    """The digit shifted by 2 pixels (wrapping) with strong noise."""
    px = np.roll(np.asarray(sample.pil(), dtype=np.float64), (2, 2), axis=(0, 1))
    px = np.clip(px + rng.normal(0, 60, px.shape), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(px, mode="L").save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def bad_synthetic(tmp_path_factory, digits_split):
    """300 degraded train digits as synthetic samples, with an unbalanced attribute axis."""
    train = Dataset(digits_split[0])
    rng = np.random.default_rng(0)
    out = tmp_path_factory.mktemp("bad") / "bad"
    with DatasetWriter(out, "bad", train.classes, shard_size=100) as w:
        for i, s in enumerate(itertools.islice(train, 300)):
            stroke = "thin" if i % 4 else "bold"
            w.write(synthetic_sample(f"b{i:04d}", degraded(s, rng), s.label, train.classes[s.label],
                                     prompt={"text": "t", "template": "t", "attributes": {"stroke": stroke}},
                                     seed=i, generator=GEN, generation=1, parents=[]))
    return out


def test_extract_streams_features_labels_and_attributes(clip_features, bad_synthetic):
    f, y, attrs = extract(bad_synthetic, clip_features, batch_size=64)
    ds = Dataset(bad_synthetic)
    assert f.shape == (300, 32) and f.dtype == np.float32
    assert y.tolist() == [s.label for s in ds]
    assert attrs[0] == {"stroke": "bold"} and attrs[1] == {"stroke": "thin"}
    np.testing.assert_allclose(np.linalg.norm(f, axis=1), 1.0, atol=1e-5)  # CLIP embeddings: unit length
    f_all, _, _ = extract(ds, clip_features, batch_size=1000)
    np.testing.assert_allclose(f_all, f, atol=1e-6)  # batching does not change the features


def test_evaluate_dataset_real_vs_degraded(clip_features, digits_split, bad_synthetic):
    from factory.measure.recognition import train_reference_classifier

    train, test = digits_split
    clf, _ = train_reference_classifier(train, epochs=3, seed=0)
    good = evaluate_dataset(train, test, clip_features, k=5, classifier=clf, draws=2, bootstrap=20)
    bad = evaluate_dataset(bad_synthetic, test, clip_features, k=5, classifier=clf, draws=2, bootstrap=20)
    g, b = good["overall"], bad["overall"]
    # both at one n: the smaller side (the 359 test images; the 300 degraded ones)
    assert good["n"] == len(Dataset(test)) and bad["n"] == 300
    # real train against real test: one distribution
    assert g["precision"] > 0.7 and g["recall"] > 0.7 and g["coverage"] > 0.7 and 0.6 < g["density"] < 1.5
    # shifted and noised digits: further away, less faithful
    assert b["fd"] > 3 * g["fd"] and b["kid"] > 3 * g["kid"]
    assert b["precision"] < g["precision"] - 0.1 and b["density"] < g["density"] - 0.3
    assert b["coverage"] < g["coverage"]
    assert g["fd_ci95"][0] <= g["fd"] <= g["fd_ci95"][1] and len(g["per_draw"]["kid"]) == 2
    assert b["kid_ci95"][0] > g["kid_ci95"][1]  # the degraded set is out of the real set's noise
    assert "per_class" not in good  # per-class FD is dropped (singular covariances at ~36 per class)
    assert good["n_real"] == len(Dataset(test)) and good["extractor"]["kind"] == "clip"
    assert good["class_balance"]["total"] == len(Dataset(train)) and good["class_balance"]["tv_from_uniform"] < 0.05
    assert good["attribute_balance"] == {}
    stroke = bad["attribute_balance"]["stroke"]
    assert stroke["counts"] == {"bold": 75, "thin": 225} and stroke["tv_from_uniform"] == pytest.approx(0.25)
    assert good["recognition"]["overall"] > 0.85 and good["recognition"]["n"] == len(Dataset(train))
    assert bad["recognition"]["overall"] < good["recognition"]["overall"]
    assert set(bad["recognition"]["per_class"]) <= set(Dataset(test).classes)
