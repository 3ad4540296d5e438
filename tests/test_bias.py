"""The bias benchmark's data and its accuracy split (colour-consistent vs colour-flipped)."""

import pytest
import torch

from factory.core.shards import Dataset
from factory.measure.bias import (
    attribute_correlation,
    consistency_mask,
    majority_attribute,
    make_bias_splits,
    split_accuracy,
)


def test_bias_splits_tie_colour_to_class_in_train_only(tmp_path):
    counts = make_bias_splits("sklearn:digits-colored?bias=0.95&seed=0", "sklearn:digits-colored?bias=0.1&seed=1",
                              tmp_path / "train", tmp_path / "test", test_fraction=0.2, seed=0)
    train, test = Dataset(tmp_path / "train"), Dataset(tmp_path / "test")
    assert counts == {"train": len(train), "test": len(test)} and len(train) + len(test) == 1797
    assert not {r["key"] for r in train.records()} & {r["key"] for r in test.records()}
    assert 0.93 < attribute_correlation(train, "color") < 0.97
    own = majority_attribute(train, "color")
    assert len(set(own.values())) == 10  # every class has its own colour
    consistent = consistency_mask(test, own, "color")
    assert 0.03 < consistent.float().mean() < 0.2  # test colour is independent of class (1 in 10)
    assert attribute_correlation(test, "color", train) == pytest.approx(float(consistent.float().mean()))


def test_split_accuracy_reports_the_gap():
    y = torch.tensor([0, 1, 2, 3])
    pred = torch.tensor([0, 1, 0, 3])
    consistent = torch.tensor([True, True, False, False])
    r = split_accuracy(pred, y, consistent)
    assert r["top1"] == 0.75 and r["consistent_top1"] == 1.0 and r["flipped_top1"] == 0.5
    assert r["gap"] == 0.5 and r["n_consistent"] == 2 and r["n_flipped"] == 2
    none = split_accuracy(pred, y, torch.ones(4, dtype=torch.bool))
    assert none["flipped_top1"] is None and none["gap"] is None
