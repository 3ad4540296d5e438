"""Contrastive encoders: the losses against hand computations, the augmentation, training each method on
300 real digits for 40 steps, and the linear probe."""

import math

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from factory.core.errors import FactoryError
from factory.data.augment import augment
from factory.measure.probes import linear_probe
from factory.train.contrastive import (
    METHODS,
    ContrastiveConfig,
    ContrastiveEncoder,
    clip_loss,
    load_encoder,
    multi_positive_loss,
    save_encoder,
    simclr_loss,
    train_contrastive,
)
from factory.train.reference import images_to_tensor

WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
N_TRAIN = 300  # images the encoders see
N_PROBE = 100  # real labelled images the probe is fitted on (few: the representation must do the work)
N_TEST = 500  # real images the probe is scored on
# 40 steps of 64 images (SimCLR: 128 views), width 16: 1.3-2 s per method on a loaded 2-core machine
FAST = dict(steps=40, batch_size=64, width=16)


def unit(rows) -> torch.Tensor:
    return F.normalize(torch.tensor(rows, dtype=torch.float32), dim=1)


# --------------------------------------------------------------------------------------------------
# Losses
# --------------------------------------------------------------------------------------------------


def test_multi_positive_loss_matches_hand_computation():
    z = unit([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [-0.6, 0.8]])
    groups = [0, 0, 1, 1]
    t = 0.5
    s = (z @ z.T).tolist()
    expected = 0.0
    for i in range(4):
        others = [j for j in range(4) if j != i]  # the row's softmax leaves out the sample itself
        log_den = math.log(sum(math.exp(s[i][j] / t) for j in others))
        pos = [j for j in others if groups[j] == groups[i]]
        expected += sum(-(s[i][j] / t - log_den) / len(pos) for j in pos) / 4
    assert float(multi_positive_loss(z, groups, t)) == pytest.approx(expected, rel=1e-5)
    # string labels work the same as integers
    assert float(multi_positive_loss(z, ["a", "a", "b", "b"], t)) == pytest.approx(expected, rel=1e-5)


def test_multi_positive_loss_ignores_self_similarity():
    # two samples, one group: the only candidate of each is the other, so the loss is exactly 0 whatever
    # the angle (were the sample its own candidate, the loss would be log(1 + e^((1 - cos) / T)) > 0)
    z = unit([[1.0, 0.0], [0.0, 1.0]])
    assert float(multi_positive_loss(z, [7, 7], 0.1)) == pytest.approx(0.0, abs=1e-6)


def test_multi_positive_loss_is_lower_when_groups_are_aligned():
    gen = torch.Generator().manual_seed(0)
    groups = torch.arange(8).repeat_interleave(4)
    centres = F.normalize(torch.randn(8, 16, generator=gen), dim=1)
    aligned = F.normalize(centres[groups] + 0.05 * torch.randn(32, 16, generator=gen), dim=1)
    scattered = F.normalize(torch.randn(32, 16, generator=gen), dim=1)
    assert float(multi_positive_loss(aligned, groups, 0.1)) < 0.5 * float(multi_positive_loss(scattered, groups, 0.1))


def test_multi_positive_loss_rows_without_positives():
    z = unit([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [-0.6, 0.8], [-1.0, 0.1]])
    with pytest.raises(FactoryError, match="several images"):
        multi_positive_loss(z, [0, 1, 2, 3, 4], 0.1)
    # a singleton is a negative for the others but not an anchor: the loss is the mean over rows 0-3
    logits = (z @ z.T / 0.1).masked_fill(torch.eye(5, dtype=torch.bool), float("-inf"))
    log_p = F.log_softmax(logits, dim=1)
    expected = -(log_p[0, 1] + log_p[1, 0] + log_p[2, 3] + log_p[3, 2]) / 4
    assert float(multi_positive_loss(z, [0, 0, 1, 1, 2], 0.1)) == pytest.approx(float(expected), rel=1e-5)


def test_simclr_loss_is_multi_positive_loss_with_one_group_per_image():
    gen = torch.Generator().manual_seed(1)
    z1 = F.normalize(torch.randn(6, 8, generator=gen), dim=1)
    z2 = F.normalize(z1 + 0.3 * torch.randn(6, 8, generator=gen), dim=1)
    groups = torch.arange(6).repeat(2)
    a = float(simclr_loss(z1, z2, 0.2))
    assert a == pytest.approx(float(multi_positive_loss(torch.cat([z1, z2]), groups, 0.2)), rel=1e-5)
    assert a < float(simclr_loss(z1, z2.roll(1, dims=0), 0.2))


def test_clip_loss_one_text_per_image():
    gen = torch.Generator().manual_seed(2)
    txt = F.normalize(torch.randn(5, 8, generator=gen), dim=1)
    img = F.normalize(txt + 0.1 * torch.randn(5, 8, generator=gen), dim=1)
    matched = float(clip_loss(img, txt, 10.0))
    logits = 10.0 * img @ txt.T
    expected = (F.cross_entropy(logits, torch.arange(5)) + F.cross_entropy(logits.T, torch.arange(5))) / 2
    assert matched == pytest.approx(float(expected), rel=1e-5)
    assert matched < 0.5 * float(clip_loss(img, txt[torch.tensor([1, 2, 3, 4, 0])], 10.0))


def test_clip_loss_shared_texts():
    # images 0, 1 have text 0; image 2 has text 1
    img = unit([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])
    txt = unit([[1.0, 0.2], [0.1, 1.0]])
    scale = 5.0
    s = (scale * img @ txt.T).tolist()
    i2t = -sum(s[i][k] - math.log(sum(math.exp(v) for v in s[i])) for i, k in ((0, 0), (1, 0), (2, 1))) / 3
    col = [[s[i][k] for i in range(3)] for k in range(2)]  # text k's logits over the images
    lse = [math.log(sum(math.exp(v) for v in c)) for c in col]
    t2i = (-((col[0][0] - lse[0]) + (col[0][1] - lse[0])) / 2 - (col[1][2] - lse[1])) / 2
    got = clip_loss(img, txt, torch.tensor(scale), torch.tensor([0, 0, 1]))
    assert float(got) == pytest.approx((i2t + t2i) / 2, rel=1e-5)
    with pytest.raises(FactoryError, match="text_index"):
        clip_loss(img, txt, scale, torch.tensor([0, 2, 1]))


# --------------------------------------------------------------------------------------------------
# Augmentation
# --------------------------------------------------------------------------------------------------


def test_augment_is_seeded_per_sample_and_keeps_shape_and_range():
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(8, 1, 16, 16, generator=gen) * 2 - 1
    x[1:] = x[0]  # eight copies of one image
    a = augment(x, torch.Generator().manual_seed(3))
    b = augment(x, torch.Generator().manual_seed(3))
    c = augment(x, torch.Generator().manual_seed(4))
    assert a.shape == x.shape and a.dtype == x.dtype
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert float(a.min()) >= -1.0 and float(a.max()) <= 1.0
    assert all(not torch.allclose(a[0], a[i]) for i in range(1, 8))  # each copy augmented its own way
    assert torch.equal(x[0], x[1])  # the input is untouched


def test_augment_keeps_hues():
    # every pixel has channel offsets (+0.2, 0, -0.2) on a shared grey pattern: a hue-preserving change
    # may scale those differences but must keep them equal to each other and of the same sign
    gen = torch.Generator().manual_seed(5)
    pattern = torch.rand(16, 1, 16, 16, generator=gen) * 0.6 - 0.3
    x = pattern + torch.tensor([0.2, 0.0, -0.2]).view(1, 3, 1, 1)
    out = augment(x, torch.Generator().manual_seed(6))
    rg, gb = out[:, 0] - out[:, 1], out[:, 1] - out[:, 2]
    assert torch.allclose(rg, gb, atol=1e-5)
    per_image = rg.flatten(1)
    assert float(per_image.min()) > 0
    assert torch.allclose(per_image, per_image[:, :1].expand_as(per_image), atol=1e-5)


# --------------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------------


def test_config_round_trip_and_errors():
    cfg = ContrastiveConfig(**{"method": "stablerep", "steps": 10})
    assert ContrastiveConfig(**cfg.to_dict()) == cfg and cfg.replace(method="simclr").method == "simclr"
    with pytest.raises(FactoryError, match="^contrastive.train.epochs: unknown parameter; allowed: method, "):
        ContrastiveConfig(epochs=3)
    with pytest.raises(FactoryError, match="method: must be one of simclr, stablerep, stablerep_plus"):
        ContrastiveConfig(method="byol")
    for key, bad in (("steps", 0), ("temperature", 0.0), ("lr", -1.0), ("batch_size", 1), ("steps", 2.5),
                     ("noise", float("nan")), ("steps", True)):
        with pytest.raises(FactoryError, match=f"^contrastive.train.{key}: "):
            ContrastiveConfig(**{key: bad})
    with pytest.raises(FactoryError, match="batch_size: must hold at least 2 groups"):
        ContrastiveConfig(method="stablerep", batch_size=6, images_per_group=4)
    with pytest.raises(FactoryError, match="batch_size: must hold at least 2 groups"):
        cfg.replace(batch_size=6)


# --------------------------------------------------------------------------------------------------
# Training and probing on real digits
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def data():
    """sklearn's real digits as the factory sees them (8-bit grayscale, bilinear to 16x16, [-1, 1]), in a
    fixed random order: 300 training images in pseudo-prompt groups of 4 same-class images (as a synthetic
    pool with images_per_prompt=4 would have) with a class prompt each; then 100 images to fit the probe
    and 500 held out to score it."""
    from PIL import Image
    from sklearn.datasets import load_digits

    d = load_digits()
    pixels = np.clip(np.rint(d.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)  # as sklearn:digits ingests
    order = np.random.default_rng(0).permutation(len(pixels))[:N_TRAIN + N_PROBE + N_TEST]
    x = images_to_tensor([Image.fromarray(pixels[i], "L") for i in order], "L", 16)
    y = torch.from_numpy(d.target[order]).long()
    xs, ys = x[:N_TRAIN], y[:N_TRAIN]
    rank = torch.tensor([int((ys[:i] == ys[i]).sum()) for i in range(N_TRAIN)])  # index within its class
    groups = ys * 1000 + rank // 4  # 4 images of one class per group (the last of a class may be smaller)
    texts = [f"a photo of the digit {WORDS[int(c)]}" for c in ys]
    probe = (x[N_TRAIN:N_TRAIN + N_PROBE], y[N_TRAIN:N_TRAIN + N_PROBE], x[N_TRAIN + N_PROBE:],
             y[N_TRAIN + N_PROBE:], [str(c) for c in range(10)])
    return xs, groups, texts, probe


@pytest.fixture(scope="module")
def untrained_top1(data):
    """The probe on a randomly initialised encoder (the init train_contrastive starts from): 0.67-0.74
    over seeds 0-2 (0.672 at seed 0); random conv features are not useless on digits, so the bar is
    relative."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        encoder = ContrastiveEncoder(1, FAST["width"], 64)
    return linear_probe(encoder, *data[3])["top1"]


@pytest.mark.parametrize("method", METHODS)
def test_train_contrastive_learns_a_representation(data, untrained_top1, method):
    # measured (seeds 0-2, 40 steps): probe top-1 simclr 0.842-0.852, stablerep 0.858-0.886, stablerep_plus
    # 0.844-0.884; untrained 0.672-0.736; trained minus untrained (same seed) at least 0.116. Final/first
    # loss 0.49-0.63.
    x, groups, texts, probe = data
    seen = []
    cfg = ContrastiveConfig(method=method, **FAST)
    encoder, info = train_contrastive(x, groups, texts, cfg, progress=lambda s, n, loss: seen.append(s))
    assert seen == list(range(1, cfg.steps + 1))
    assert info["method"] == method and info["steps"] == 40 and info["parameters"] > 0
    # the last group of a class may hold a single image: StableRep leaves it out
    assert info["unused_images"] == (0 if method == "simclr" else int((torch.bincount(groups) == 1).sum()))
    assert info["final_loss"] < 0.8 * info["first_loss"]
    result = linear_probe(encoder, *probe)
    assert result["n_train"] == N_PROBE and result["n_test"] == len(probe[3])
    assert set(result["per_class"]) == set(probe[4])
    assert result["top1"] > 0.75
    assert result["top1"] > untrained_top1 + 0.08, (result["top1"], untrained_top1)


def test_train_contrastive_is_deterministic_and_saves(data, tmp_path):
    x, groups, texts, _ = data
    cfg = ContrastiveConfig(method="stablerep_plus", steps=3, batch_size=32, width=8, embed_dim=16)
    state = torch.get_rng_state()
    a, info = train_contrastive(x, groups, texts, cfg)
    assert torch.equal(state, torch.get_rng_state())  # the caller's global RNG is left alone
    b, _ = train_contrastive(x, groups, texts, cfg)
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
    c, _ = train_contrastive(x, groups, texts, ContrastiveConfig(**{**cfg.to_dict(), "seed": 1}))
    assert not torch.equal(a.state_dict()["head.3.weight"], c.state_dict()["head.3.weight"])

    save_encoder(a, info, tmp_path / "enc")
    loaded, loaded_info = load_encoder(tmp_path / "enc")
    assert loaded_info == info
    assert torch.allclose(loaded.features(x[:8]), a.features(x[:8]))
    assert torch.allclose(loaded(x[:8]).norm(dim=1), torch.ones(8))


def test_train_contrastive_input_errors(data):
    x, groups, texts, _ = data
    cfg = ContrastiveConfig(method="stablerep", steps=1, batch_size=16)
    with pytest.raises(FactoryError, match="images_per_prompt > 1"):
        train_contrastive(x, torch.arange(len(x)), None, cfg)
    with pytest.raises(FactoryError, match="needs a text"):
        train_contrastive(x, groups, None, ContrastiveConfig(method="stablerep_plus", steps=1, batch_size=16))
    with pytest.raises(FactoryError, match="group label"):
        train_contrastive(x, None, None, cfg)
    with pytest.raises(FactoryError, match="image_size is 16"):
        train_contrastive(x[:, :, :8, :8], groups, None, cfg)
    with pytest.raises(FactoryError, match="300 embeddings/images but 3 group labels"):
        train_contrastive(x, [0, 0, 1], None, cfg)
    # SimCLR needs no groups
    encoder, info = train_contrastive(x[:16], None, None, ContrastiveConfig(steps=1, batch_size=8, width=8))
    assert info["groups"] is None and np.isfinite(info["final_loss"])


def test_few_shot_indices_are_stratified_and_seeded():
    from factory.measure.probes import few_shot_indices

    y = torch.tensor([0] * 20 + [1] * 5 + [2] * 30)
    idx = few_shot_indices(y, 10, seed=0)
    assert torch.bincount(y[idx]).tolist() == [10, 5, 10] and len(set(idx.tolist())) == 25
    assert torch.equal(idx, few_shot_indices(y, 10, seed=0))
    assert not torch.equal(idx, few_shot_indices(y, 10, seed=1))
    with pytest.raises(FactoryError, match="per_class"):
        few_shot_indices(y, 0)
