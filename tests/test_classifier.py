"""Classifier training on pools, tested on real data (CAS when the pool is synthetic-only)."""

import json

import pytest
import torch

from factory.core.errors import FactoryError
from factory.data.pools import Component, PoolSpec, build_pool
from factory.train.classifier import ClassifierConfig, build_classifier, train_classifier


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
    train, _ = digits_split
    pool = build_pool(PoolSpec("p", (Component(str(train), per_class=1),)))
    with pytest.raises(FactoryError, match="no such dataset"):
        train_classifier(pool, train.parent / "missing", ClassifierConfig(steps=1))
