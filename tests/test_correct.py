"""The k-means self-correction of Gillman et al. 2024 (factory.loops.correct), on the sklearn digits:
fit on real train, correct real test (and a synthetic-looking set), check pixels against the centroids."""

import io
import json

import numpy as np
import pytest
from PIL import Image

from factory.core.errors import FactoryError
from factory.core.sample import real_sample, synthetic_sample
from factory.core.shards import Dataset, DatasetWriter
from factory.loops.correct import KMeansCorrector, correct_dataset

GEN = {"backend": "embedded", "model": "m", "weights_sha256": "0" * 64, "scheduler": "dpm", "steps": 4,
       "guidance_scale": 2.0, "negative_guidance": None, "height": 8, "width": 8, "dtype": "float32"}
CHANGED = {"sha256", "phash", "correction"}


def px(sample) -> np.ndarray:
    return np.asarray(sample.pil(), dtype=np.uint8)


def originals(path) -> dict:
    return {s.key: s for s in Dataset(path)}


def verified(path) -> list:
    """Every sample of the dataset at ``path`` through the full checks of ``factory verify`` (shard hashes,
    image decodes, record sha256 and phash are the image's, counts match the index)."""
    return list(Dataset(path).iter_checked())


@pytest.fixture(scope="module")
def corrector(digits_split):
    return KMeansCorrector.fit(digits_split[0], clusters=4, seed=0)


@pytest.fixture(scope="module")
def corrected(tmp_path_factory, corrector, digits_split):
    """The test split corrected at strength 0, 0.5 and 1: strength -> (summary, dataset path)."""
    root = tmp_path_factory.mktemp("corrected")
    return {s: (correct_dataset(corrector, digits_split[1], root / f"s{s}", strength=s), root / f"s{s}")
            for s in (0.0, 0.5, 1.0)}


def test_fit_describes_itself(corrector, digits_split):
    train = Dataset(digits_split[0])
    d = corrector.describe()
    json.dumps(d)
    assert d["method"] == "kmeans" and d["clusters"] == 4 and d["seed"] == 0
    assert d["fit_on"] == train.ref()
    assert d["mode"] == "L" and d["shape"] == [8, 8]
    assert d["per_class"] == {c: 4 for c in train.classes}
    assert sum(d["images"].values()) == len(train)
    assert all(c.shape == (4, 64) and c.dtype == np.float64 for c in corrector.centroids.values())
    again = KMeansCorrector.fit(train, clusters=4, seed=0)  # deterministic
    assert all(np.array_equal(again.centroids[c], corrector.centroids[c]) for c in train.classes)


def test_strength_one_replaces_by_the_rounded_centroid(corrected, corrector, digits_split):
    summary, out = corrected[1.0]
    src = originals(digits_split[1])
    samples = verified(out)
    assert summary["samples"] == len(samples) == len(src)
    assert sum(summary["per_class"].values()) == len(src) and summary["strength"] == 1.0
    distances = []
    for s in samples:
        c = corrector.centroids[s.class_name]
        rounded = np.clip(np.rint(c), 0, 255).astype(np.uint8).reshape(-1, 8, 8)
        i = s.provenance["correction"]["centroid"]
        assert np.array_equal(px(s), rounded[i])
        assert any(np.array_equal(px(s), r) for r in rounded)  # a centroid of its own class
        assert s.ext == "png" and s.pil().mode == "L" and s.pil().size == (8, 8)
        distances.append(s.provenance["correction"]["distance"])
    assert summary["mean_distance"] == pytest.approx(np.mean(distances), abs=1e-4)


def test_strength_zero_keeps_the_pixels(corrected, digits_split):
    _, out = corrected[0.0]
    src = originals(digits_split[1])
    for s in verified(out):
        assert np.array_equal(px(s), px(src[s.key]))
        assert s.provenance["correction"]["original_sha256"] == src[s.key].provenance["sha256"]


def test_strength_half_lies_between(corrected, corrector, digits_split):
    _, out = corrected[0.5]
    src = originals(digits_split[1])
    moved = 0
    for s in verified(out):
        x = px(src[s.key]).astype(np.float64).reshape(-1)
        c = corrector.centroids[s.class_name][s.provenance["correction"]["centroid"]]
        new = px(s).astype(np.float64).reshape(-1)
        assert np.array_equal(new, np.rint(0.5 * x + 0.5 * c))
        assert np.all(new >= np.minimum(x, c) - 0.5) and np.all(new <= np.maximum(x, c) + 0.5)
        moved += not np.array_equal(new, x)
    assert moved > 0.9 * len(src)


def test_provenance_keeps_everything_and_records_the_correction(corrected, corrector, digits_split):
    summary, out = corrected[1.0]
    src = originals(digits_split[1])
    test_ref = Dataset(digits_split[1]).ref()
    for s in verified(out)[:50]:
        before, after = src[s.key].provenance, s.provenance
        assert {k: v for k, v in after.items() if k not in CHANGED} == {k: v for k, v in before.items()
                                                                     if k not in CHANGED}
        corr = after["correction"]
        assert set(corr) == {"method", "strength", "clusters", "fit_on", "centroid", "distance", "original_sha256"}
        assert corr["method"] == "kmeans" and corr["strength"] == 1.0 and corr["clusters"] == 4
        assert corr["fit_on"] == {"path": corrector.fit_on["path"], "index_sha256": corrector.fit_on["index_sha256"]}
        assert corr["original_sha256"] == before["sha256"]
        assert isinstance(corr["centroid"], int) and isinstance(corr["distance"], float)
    meta = Dataset(out).meta["correction"]
    assert meta == {**corrector.describe(), "strength": 1.0, "source": test_ref}
    assert Dataset(out).name == f"{Dataset(digits_split[1]).name}-corrected"


def test_nearest_centroid_is_the_true_nearest(corrected, corrector, digits_split):
    _, out = corrected[1.0]
    src = originals(digits_split[1])
    for s in verified(out)[::37]:
        x = px(src[s.key]).astype(np.float64).reshape(-1)
        c = corrector.centroids[s.class_name]
        d = np.array([np.sqrt(((x - row) ** 2).sum()) for row in c])  # brute force, one centroid at a time
        corr = s.provenance["correction"]
        assert corr["centroid"] == int(np.argmin(d))
        assert corr["distance"] == pytest.approx(d.min(), abs=1e-5)


def test_synthetic_provenance_survives(tmp_path, corrector, digits_split):
    """A synthetic set (generation 2, with parents): prompt, seed, generator, generation, parents stay."""
    parents = [Dataset(digits_split[0]).ref()]
    classes = Dataset(digits_split[1]).classes
    src = tmp_path / "synthetic"
    with DatasetWriter(src, "syn", classes, shard_size=7) as w:
        for i, s in zip(range(20), Dataset(digits_split[1])):
            w.write(synthetic_sample(f"g{i:03d}", s.image, s.label, classes[s.label],
                                     prompt={"text": "a handwritten digit", "template": "t", "attributes": {}},
                                     seed=100 + i, generator=GEN, generation=2, parents=parents, group="a"))
    summary = correct_dataset(corrector, src, tmp_path / "out", strength=1.0, name="syn-fixed")
    out = Dataset(tmp_path / "out")
    assert out.name == "syn-fixed" and summary["samples"] == 20 and len(out.shards) == 3
    before = originals(src)
    for s in out.iter_checked():
        b, a = before[s.key].provenance, s.provenance
        for k in ("source", "generation", "parents", "prompt", "seed", "generator", "group", "created"):
            assert a[k] == b[k]
        assert a["source"] == "synthetic" and a["generation"] == 2 and a["parents"] == parents
        assert a["sha256"] != b["sha256"] or np.array_equal(px(s), px(before[s.key]))


def test_more_clusters_than_images(tmp_path, digits_split):
    """A class with fewer images than ``clusters`` gets one cluster per image: its centroids are its images,
    so correcting the fitting set itself at strength 1 changes nothing."""
    train = Dataset(digits_split[0])
    small = tmp_path / "small"
    with DatasetWriter(small, "small", train.classes) as w:
        per: dict = {}
        for s in train:
            if per.get(s.label, 0) < 3 + s.label % 2:  # 3 or 4 images per class
                per[s.label] = per.get(s.label, 0) + 1
                w.write(s)
    corr = KMeansCorrector.fit(small, clusters=16, seed=0)
    assert corr.describe()["per_class"] == {c: 3 + i % 2 for i, c in enumerate(train.classes)}
    correct_dataset(corr, small, tmp_path / "out", strength=1.0)
    src = originals(small)
    for s in verified(tmp_path / "out"):
        assert np.array_equal(px(s), px(src[s.key]))
        assert s.provenance["correction"]["distance"] == 0.0


@pytest.mark.parametrize("strength", [-0.1, 1.5, float("nan"), True, "1"])
def test_bad_strength_is_refused(tmp_path, corrector, digits_split, strength):
    with pytest.raises(FactoryError, match="strength must be a number in") as e:
        correct_dataset(corrector, digits_split[1], tmp_path / "out", strength=strength)
    assert "\n" not in str(e.value)
    assert not (tmp_path / "out").exists()


def test_unseen_class_is_refused(tmp_path, digits_split):
    train = Dataset(digits_split[0])
    only = tmp_path / "only01"
    with DatasetWriter(only, "only01", train.classes) as w:
        w.write_all(s for s in train if s.label in (0, 1))
    corr = KMeansCorrector.fit(only, clusters=2)
    assert set(corr.centroids) == {train.classes[0], train.classes[1]}
    with pytest.raises(FactoryError, match=r"sample '.+': class '.+' has no centroids") as e:
        correct_dataset(corr, digits_split[1], tmp_path / "out")
    assert "\n" not in str(e.value)
    assert not (tmp_path / "out").exists()


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr, mode="L").save(buf, format="PNG")
    return buf.getvalue()


def test_mixed_sizes_are_refused(tmp_path, corrector):
    mixed = tmp_path / "mixed"
    with DatasetWriter(mixed, "mixed", ["a"]) as w:
        for i, n in enumerate((8, 8, 9)):
            w.write(real_sample(f"k{i}", _png(np.full((n, n), 10 * i, np.uint8)), 0, "a", {"dataset": "t"}))
    with pytest.raises(FactoryError, match="'k2' is 9x9 L but earlier images are 8x8 L") as e:
        KMeansCorrector.fit(mixed, clusters=2)
    assert "\n" not in str(e.value)
    # and a set of another size than the corrector's is refused too, naming the key
    with pytest.raises(FactoryError, match="sample 'k2' is 9x9 L; the corrector was fit on 8x8 L"):
        correct_dataset(_with_class(corrector, "a"), mixed, tmp_path / "out")


def _with_class(corrector: KMeansCorrector, name: str) -> KMeansCorrector:
    """The corrector with an extra class ``name`` (the centroids of its first class), for the size check."""
    first = next(iter(corrector.centroids.values()))
    return KMeansCorrector(corrector.clusters, corrector.seed, corrector.fit_on, corrector.mode, corrector.shape,
                           {**corrector.centroids, name: first})


def test_output_may_not_be_the_input(corrector, digits_split):
    with pytest.raises(FactoryError):
        correct_dataset(corrector, digits_split[1], digits_split[1])


def test_fit_in_a_generators_pixel_space(digits_split, tmp_path):
    """Real 8x8 digits, samples at the generator's 16x16: the centroids are fit on the real images as the
    generator's training sees them, so a 16x16 sample is corrected to a 16x16 centroid."""
    from factory.core.images import to_model_pixels
    from factory.loops.correct import KMeansCorrector, correct_dataset

    train, test = digits_split
    c = KMeansCorrector.fit(train, clusters=4, seed=0, size=16)
    assert c.shape == (16, 16) and c.mode == "L"
    # a 16x16 "synthetic" set: the test images upsampled as the generator sees them
    import io

    from PIL import Image

    from factory.core.sample import real_sample
    from factory.core.shards import Dataset, DatasetWriter

    src = Dataset(test)
    up = tmp_path / "up"
    with DatasetWriter(up, "up", src.classes, shard_size=100) as w:
        for i, s in enumerate(src):
            if i >= 30:
                break
            buf = io.BytesIO()
            Image.fromarray(to_model_pixels(s.pil(), "L", 16)[:, :, 0], mode="L").save(buf, format="PNG")
            w.write(real_sample(s.key, buf.getvalue(), s.label, s.class_name, {"dataset": "t", "index": i}))
    correct_dataset(c, up, tmp_path / "out", strength=1.0)
    for s in Dataset(tmp_path / "out"):
        assert s.pil().size == (16, 16)
        px = np.asarray(s.pil(), dtype=np.float64).reshape(-1)
        assert min(np.abs(px - np.rint(cent)).max() for cent in c.centroids[s.class_name]) == 0
