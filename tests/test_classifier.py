"""Classifier training on pools, tested on real data (CAS when the pool is synthetic-only)."""

import json

import pytest
import torch

from factory.core.errors import FactoryError
from factory.data.pools import Component, PoolSpec, build_pool
from factory.train.classifier import ClassifierConfig, build_classifier, train_classifier, train_classifier_seeds
from factory.train.reference import load_split, predict


class FakeLive:
    def __init__(self):
        self.metrics, self.params, self.steps = [], {}, 0

    def log_metric(self, name, value):
        self.metrics.append((self.steps, name, value))

    def log_param(self, name, value):
        self.params[name] = value

    def next_step(self):
        self.steps += 1


def test_trains_on_a_pool_and_scores_on_real_test(digits_split):
    train, test = digits_split
    pool = build_pool(PoolSpec("real", (Component(str(train)),)))
    live = FakeLive()
    cfg = ClassifierConfig(steps=120, eval_every=60, batch_size=64)
    model, m = train_classifier(pool, test, cfg, live=live)
    assert m["top1"] > 0.85, m  # chance is 0.1; measured ~0.95 after 120 steps
    assert set(m["per_class"]) == {str(i) for i in range(10)} and m["n_test"] == 359
    conf = m["confusion"]  # [true][predicted]: rows sum to the class's test images, the diagonal to the hits
    assert len(conf) == 10 and all(len(r) == 10 for r in conf) and sum(map(sum, conf)) == 359
    assert sum(conf[i][i] for i in range(10)) == round(m["top1"] * 359)
    assert all(conf[i][i] == round(m["per_class"][str(i)] * sum(conf[i])) for i in range(10))
    assert m["pool"] == "real" and m["n_train"] == len(pool["components"][0]["keys"])
    assert [h["step"] for h in m["history"]] == [60, 120] and m["history"][-1]["test_top1"] == m["top1"]
    assert live.steps == 2 and {n for _, n, _ in live.metrics} == {"train/loss", "test/top1"}
    assert live.params["classifier.steps"] == 120
    json.dumps(m)  # JSON-ready


def test_training_is_deterministic(digits_split):
    train, test = digits_split
    pool = build_pool(PoolSpec("small", (Component(str(train), per_class=5),)))
    cfg = ClassifierConfig(steps=15, eval_every=15, batch_size=16)
    _, a = train_classifier(pool, test, cfg)
    _, b = train_classifier(pool, test, cfg)
    assert a["top1"] == b["top1"] and a["history"] == b["history"]


def test_fewer_real_images_score_lower(digits_split):
    """The comparison the pools exist for: 3 real images per class give a weaker classifier."""
    train, test = digits_split
    cfg = ClassifierConfig(steps=80, eval_every=80)
    _, few = train_classifier(build_pool(PoolSpec("few", (Component(str(train), per_class=3),))), test, cfg)
    _, many = train_classifier(build_pool(PoolSpec("many", (Component(str(train)),))), test, cfg)
    assert many["top1"] > few["top1"] + 0.05, (few["top1"], many["top1"])


def test_seeds_give_a_mean_an_interval_and_each_seed(digits_split):
    """One classifier per training seed on the same pool draw; top-1 is the mean, with a 95% interval."""
    train, test = digits_split
    pool = build_pool(PoolSpec("small", (Component(str(train), per_class=10),)))
    cfg = ClassifierConfig(steps=30, eval_every=15, batch_size=32, seed=4, seeds=[0, 1, 2])
    live = FakeLive()
    x_test, y_test, _, _ = load_split(test, cfg.image_size, "L")
    half = torch.arange(len(y_test)) < len(y_test) // 2

    def first_half(seed, model, metrics):
        model.eval()
        return {"first_half": float((predict(model, x_test[half]) == y_test[half]).float().mean()), "none": None}

    m = train_classifier_seeds(pool, test, cfg, live=live, on_model=first_half)
    assert m["seeds"] == [4, 5, 6] and len(m["top1_per_seed"]) == 3
    assert len(set(m["top1_per_seed"])) > 1, m["top1_per_seed"]  # init, order and augmentation differ
    assert m["top1"] == m["top1_mean"] == pytest.approx(sum(m["top1_per_seed"]) / 3, abs=1e-6)
    lo, hi = m["top1_ci95"]
    assert 0 <= lo < m["top1_mean"] < hi <= 1
    # each seed is the single-seed training with that seed, on the same pool
    _, one = train_classifier(pool, test, cfg.model_copy(update={"seed": 5}))
    assert m["top1_per_seed"][1] == one["top1"]
    assert set(m["per_class"]) == {str(i) for i in range(10)}
    assert sum(map(sum, m["confusion"])) == 3 * m["n_test"]
    assert "summed over the 3 training seeds" in m["confusion_note"]
    assert all(0 <= v <= 1 for v in m["per_class"].values())
    assert all(c is None or c[0] <= m["per_class"][k] <= c[1] for k, c in m["per_class_ci95"].items())
    assert len(m["first_half_per_seed"]) == 3 and m["first_half_ci95"][0] <= m["first_half_mean"]
    assert m["none_mean"] is None and m["none_per_seed"] == [None] * 3
    assert [h["step"] for h in m["history"]] == [15, 30]
    assert m["history"][-1]["test_top1_per_seed"] == m["top1_per_seed"]
    assert live.steps == 2 and live.params["classifier.seeds"] == [0, 1, 2]
    names = {n for _, n, _ in live.metrics}
    curves = ("train/loss", "test/top1")
    assert names == set(curves) | {f"seed{s}/{k}" for s in (4, 5, 6) for k in curves}
    assert m["seconds"] > 0 and m["images_per_second"] > 0
    json.dumps(m)


def test_one_seed_has_no_interval(digits_split):
    train, test = digits_split
    pool = build_pool(PoolSpec("small", (Component(str(train), per_class=3),)))
    m = train_classifier_seeds(pool, test, ClassifierConfig(steps=5, eval_every=5, seeds=[0]))
    assert m["seeds"] == [0] and m["top1_ci95"] is None and m["top1_per_seed"] == [m["top1"]]
    with pytest.raises(FactoryError, match="training seeds must be distinct"):
        train_classifier_seeds(pool, test, ClassifierConfig(steps=5), seeds=[1, 1])


@pytest.mark.parametrize("arch", ["cnn", "resnet18"])
def test_architectures_take_small_inputs(arch):
    model = build_classifier(arch, 3, 10, image_size=16)
    assert model(torch.zeros(2, 3, 16, 16)).shape == (2, 10)


def test_config_errors_name_the_parameter(digits_split):
    with pytest.raises(FactoryError, match=r"^classifier.arch: must be one of cnn, resnet18, resnet34, resnet50 "
                                           r"\(got 'vgg'\)$"):
        ClassifierConfig(arch="vgg")
    with pytest.raises(FactoryError, match=r"^classifier.steps: must be > 0 \(got 0\)$"):
        ClassifierConfig(steps=0)
    with pytest.raises(FactoryError, match=r"^classifier.image_size: must be a multiple of 4 for the cnn \(got 10\)$"):
        ClassifierConfig(image_size=10)
    with pytest.raises(FactoryError, match="^classifier.epochz: unknown parameter; allowed: arch, width, steps, "):
        ClassifierConfig(epochz=3)
    with pytest.raises(FactoryError, match=r"^classifier.seeds: must be distinct \(got \[1, 1\]\)$"):
        ClassifierConfig(seeds=[1, 1])
    with pytest.raises(FactoryError, match=r"^classifier.seeds: must hold at least one seed"):
        ClassifierConfig(seeds=[])
    with pytest.raises(FactoryError, match=r"^classifier.seeds\[0\]: must be >= 0 \(got -1\)$"):
        ClassifierConfig(seeds=[-1])
    with pytest.raises(FactoryError, match=r"^classifier.seeds: seed \+ offset must be < 4294967296"):
        ClassifierConfig(seed=2**32 - 1, seeds=[0, 1])
    assert ClassifierConfig(seed=7, seeds=[0, 2]).training_seeds() == [7, 9]
    train, _ = digits_split
    pool = build_pool(PoolSpec("p", (Component(str(train), per_class=1),)))
    with pytest.raises(FactoryError, match="no such dataset"):
        train_classifier(pool, train.parent / "missing", ClassifierConfig(steps=1))
