"""evaluate_datasets end to end on the digits: the reference CNN's penultimate layer as the default feature
space, CLIP as a labelled second view, every set at one n with a real floor, KID and intervals, the report."""

import itertools

import numpy as np
import pytest
import torch

from factory.config import EvaluationConfig
from factory.core.errors import FactoryError
from factory.core.sample import synthetic_sample
from factory.core.shards import Dataset, DatasetWriter
from factory.measure.evaluation import FLOOR, evaluate_datasets, guidance_rows
from factory.measure.features import ReferenceFeatures
from factory.measure.matched import overlaps
from factory.measure.recognition import train_reference_classifier
from factory.measure.report import evaluation_section, render
from factory.train.reference import EMBED_DIM, load_split

GEN = {"backend": "embedded", "model": "m", "weights_sha256": "0" * 64, "scheduler": "ddim", "steps": 20,
       "guidance_scale": 2.0, "negative_guidance": None, "height": 8, "width": 8, "dtype": "float32"}


def write_synthetic(out, source, count, noise, guidance, seed, shift=0):
    """``count`` train digits shifted by ``shift`` pixels (wrapping) with Gaussian pixel noise, as synthetic
    samples made at ``guidance``."""
    import io

    from PIL import Image

    rng = np.random.default_rng(seed)
    with DatasetWriter(out, out.name, source.classes, shard_size=100) as w:
        for i, s in enumerate(itertools.islice(source, count)):
            px = np.roll(np.asarray(s.pil(), dtype=np.float64), (shift, shift), axis=(0, 1))
            px = np.clip(px + rng.normal(0, noise, (8, 8)), 0, 255)
            buf = io.BytesIO()
            Image.fromarray(px.astype(np.uint8), mode="L").save(buf, format="PNG")
            w.write(synthetic_sample(f"s{i:04d}", buf.getvalue(), s.label, source.classes[s.label],
                                     prompt={"text": "t", "template": "t", "attributes": {}}, seed=i,
                                     generator={**GEN, "guidance_scale": guidance}, generation=1, parents=[]))
    return out


@pytest.fixture(scope="module")
def synthetic_sets(tmp_path_factory, digits_split):
    root = tmp_path_factory.mktemp("synthetic")
    train = Dataset(digits_split[0])
    return {"mild": write_synthetic(root / "mild", train, 150, 5, 2.0, 0),
            "degraded": write_synthetic(root / "degraded", train, 120, 60, 4.0, 1, shift=2)}


@pytest.mark.slow  # trains the CNN for an epoch: ~15 s on a loaded machine
def test_reference_features_are_the_cnns_penultimate_layer(digits_split):
    model, _ = train_reference_classifier(digits_split[0], epochs=1, seed=0)
    ext = ReferenceFeatures(model, trained_on={"id": "train"})
    ims = [s.pil() for s in itertools.islice(Dataset(digits_split[1]), 10)]
    f = ext(ims)
    assert f.shape == (10, EMBED_DIM) and f.dtype == np.float32 and (f >= 0).all()  # after the ReLU
    x, _, _, _ = load_split(digits_split[1], model.image_size, model.mode)
    with torch.inference_mode():
        logits = model(x[:10])
        np.testing.assert_allclose(model.head[-1](torch.from_numpy(f)).numpy(), logits.numpy(), atol=1e-4)
    np.testing.assert_allclose(ext(ims[:3]), f[:3], atol=1e-5)  # batch size moves only the rounding
    assert ext.describe()["kind"] == "reference_cnn" and ext.describe()["trained_on"] == {"id": "train"}


@pytest.fixture(scope="module")
def evaluation(digits_split, clip_dir, synthetic_sets):
    train, test = digits_split
    cfg = EvaluationConfig(reference=str(test), train=str(train), floor=str(train), encoder_path=str(clip_dir),
                           reference_epochs=2, k=3, draws=2, bootstrap=20,
                           datasets={k: str(v) for k, v in synthetic_sets.items()}, guidance=["mild", "degraded"])
    return evaluate_datasets(cfg)


@pytest.mark.slow  # with the session's CLIP training: about a minute on a loaded 2-core machine
def test_evaluate_datasets_at_one_n_with_a_floor(evaluation, digits_split):
    ev = evaluation
    assert ev["n"] == 120 and ev["draws"] == 2 and ev["bootstrap"] == 20  # the smallest set decides n
    assert ev["encoder"]["kind"] == "reference_cnn"  # the independent evaluator is the default space
    assert ev["views"]["reference_cnn"]["independent"] is True
    assert ev["views"]["clip"]["independent"] is False
    assert ev["views"]["clip"]["label"] == "CLIP (the curation filter's space: not independent)"
    floor = ev["floor"]
    assert floor["label"] == FLOOR and floor["samples"] == len(Dataset(digits_split[0]))
    assert "within_noise" not in floor and set(floor["views"]) == {"clip"}
    mild, degraded = ev["datasets"]["mild"], ev["datasets"]["degraded"]
    for row in (floor, mild, degraded):
        for view in (row, row["views"]["clip"]):
            for m in ("fd", "kid", "precision", "recall", "density", "coverage"):
                lo, hi = view[f"{m}_ci95"]
                assert lo <= view[m] <= hi and len(view["per_draw"][m]) == 2
    # shifted, noised digits are far from real in the CNN's space, out of the floor's noise
    assert degraded["fd"] > mild["fd"] and degraded["kid"] > mild["kid"]
    assert degraded["within_noise"]["fd"] is False and degraded["fd_ci95"][0] > floor["fd_ci95"][1]
    assert mild["within_noise"] == {m: overlaps(mild[f"{m}_ci95"], floor[f"{m}_ci95"]) for m in mild["within_noise"]}
    assert degraded["recognition"] < mild["recognition"] and mild["recognition"] > 0.6
    assert "per_class" not in mild and mild["guidance_scale"] == 2.0
    rows = guidance_rows(ev)
    assert [r["dataset"] for r in rows] == ["mild", "degraded"] and rows[1]["kid"] == degraded["kid"]


@pytest.mark.slow
def test_report_shows_the_floor_kid_intervals_and_encoder(evaluation):
    md = "\n".join(evaluation_section(evaluation))
    assert "n = 120 images per side" in md and "over 2 seeded draws" in md
    assert "reference CNN (trained on real train only: independent of curation)" in md
    assert "CLIP (the curation filter's space: not independent)" in md
    assert "| real (floor) | 1438 |" in md and "| KID |" in md and "within noise of the floor" in md
    floor_fd = evaluation["floor"]["fd_ci95"]
    assert f"[{floor_fd[0]:.4f}, {floor_fd[1]:.4f}]" in md
    assert render({"classifier": {}, "contrastive": {}, "evaluate": evaluation, "bias": None, "curate": None}
                  ).count("| real (floor) |") == 2  # one row per feature space


def test_evaluate_refuses_a_floor_that_is_the_reference_and_a_too_large_n(digits_split, clip_dir, synthetic_sets):
    train, test = digits_split
    base = dict(reference=str(test), train=str(train), encoder_path=str(clip_dir), reference_epochs=1,
                datasets={"mild": str(synthetic_sets["mild"])})
    with pytest.raises(FactoryError, match="evaluate.floor: .* is the reference dataset itself"):
        evaluate_datasets(EvaluationConfig(**base, floor=str(test)))
    with pytest.raises(FactoryError, match=r"evaluate.n=200 .*mild \(150 samples\)"):
        evaluate_datasets(EvaluationConfig(**base, floor=str(train), n=200))
