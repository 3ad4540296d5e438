"""The bias benchmark's data (train / val / test, disjoint), its control plan, its accuracy split
(colour-consistent vs colour-flipped) and its seed intervals."""

import io

import pytest
import torch
from PIL import Image

from factory.config import ClassifierConfig, Component, PlanConfig, PoolSpec, load_params
from factory.core.errors import FactoryError
from factory.core.sample import synthetic_sample
from factory.core.shards import Dataset, DatasetWriter
from factory.data.ingest import stratified_test_keys
from factory.data.pools import build_pool, write_pool
from factory.data.sources import PALETTE
from factory.generate.plans import build_plan
from factory.measure.bias import (
    attribute_correlation,
    bias_benchmark,
    bias_split_keys,
    consistency_mask,
    control_plan,
    majority_attribute,
    make_bias_splits,
    split_accuracy,
)

COLOURS = [name for name, _ in PALETTE]


@pytest.fixture(scope="module")
def splits(tmp_path_factory):
    root = tmp_path_factory.mktemp("bias")
    counts = make_bias_splits("sklearn:digits-colored?bias=0.95&seed=0", "sklearn:digits-colored?bias=0.1&seed=1",
                              root / "train", root / "val", root / "test", val_fraction=0.15, test_fraction=0.2,
                              seed=0)
    return root, counts


def keys(ds):
    return {r["key"] for r in ds.records()}


def test_bias_splits_are_disjoint_and_tie_colour_to_class_in_train_only(splits):
    root, counts = splits
    train, val, test = (Dataset(root / s) for s in ("train", "val", "test"))
    assert counts == {"train": len(train), "val": len(val), "test": len(test)}
    assert len(train) + len(val) + len(test) == 1797
    assert len(test) == 359 and 260 <= len(val) <= 280  # 20% and 15% of each class
    assert not keys(train) & keys(val) and not keys(train) & keys(test) and not keys(val) & keys(test)
    # test holds the digits a two-way split holds out: val comes out of train, never out of test
    labels = {r["key"]: r["label"] for ds in (train, val, test) for r in ds.records()}
    assert keys(test) == stratified_test_keys(labels.items(), 0.2, 0)
    assert 0.93 < attribute_correlation(train, "color") < 0.97
    own = majority_attribute(train, "color")
    assert len(set(own.values())) == 10  # every class has its own colour
    for split in (val, test):  # colour independent of class (1 in 10)
        consistent = consistency_mask(split, own, "color")
        assert 0.03 < consistent.float().mean() < 0.2
        assert attribute_correlation(split, "color", train) == pytest.approx(float(consistent.float().mean()))
    for split in (train, val, test):  # every class on every side
        assert {r["class_name"] for r in split.records()} == set(train.classes)


def test_bias_split_keys_are_stratified_and_refuse_bad_fractions():
    labels = {f"k{i:03d}": i % 2 for i in range(100)}
    val, test = bias_split_keys(labels, val_fraction=0.1, test_fraction=0.2, seed=3)
    assert len(test) == 20 and len(val) == 10 and not val & test
    assert sum(labels[k] for k in val) == 5  # stratified: half of each class
    assert bias_split_keys(labels, val_fraction=0.1, test_fraction=0.2, seed=3) == (val, test)
    with pytest.raises(FactoryError, match="below 1"):
        bias_split_keys(labels, val_fraction=0.85, test_fraction=0.2, seed=3)


def test_val_fraction_is_checked_in_params(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text("bias:\n  val_fraction: 0.9\n")
    with pytest.raises(FactoryError, match="bias.val_fraction"):
        load_params()


def test_control_plan_copies_real_joint_counts_at_the_balanced_plans_size(splits):
    root, _ = splits
    train = Dataset(root / "train")
    cfg = PlanConfig.model_validate({"dataset": str(root / "train"), "images_per_class": 60, "images_per_prompt": 4,
                                     "templates": ["a {color} digit {class_name}"], "attributes": {"color": COLOURS}})
    balanced, control = build_plan(cfg, train.classes), control_plan(cfg, train)
    assert len(control.rows) == len(balanced.rows) == 600
    per_class = lambda plan, c: [r for r in plan.rows if r.class_name == c]  # noqa: E731
    for c in train.classes:
        assert len(per_class(control, c)) == len(per_class(balanced, c)) == 60
        own = PALETTE[int(c)][0]
        # about 95% of each class's control images ask for the class's own colour, as in real train
        share = sum(r.attributes["color"] == own for r in per_class(control, c)) / 60
        real = sum(r["attributes"]["color"] == own for r in train.records() if r["class_name"] == c) / sum(
            1 for r in train.records() if r["class_name"] == c)
        assert abs(share - real) <= 1 / 60 and share > 0.9
        assert sum(r.attributes["color"] == own for r in per_class(balanced, c)) == 6
    assert 0.9 < sum(r.attributes["color"] == PALETTE[int(r.class_name)][0] for r in control.rows) / 600
    assert control.header["target"]["cell_weights"]["3"][3] > 100  # blue threes, counted in real train
    assert control_plan(cfg, train).rows == control.rows  # deterministic
    with pytest.raises(FactoryError, match="needs plan attributes"):
        control_plan(cfg.replace(attributes={}, templates=["a digit {class_name}"]), train)


def test_params_control_pool_is_the_size_of_the_balanced_mix():
    p = load_params("params.yaml").bias
    pools = {s.name: s for s in p.pools.specs}
    control, balanced = pools["biased_real_biased_synthetic"], pools["biased_real_balanced_synthetic"]
    assert [c.dataset for c in control.components][0] == [c.dataset for c in balanced.components][0] == p.plan.dataset
    assert control.components[1].dataset == "data/bias/synthetic/control"
    assert all(c.count is None and c.fraction is None and c.per_class is None
               for c in (*control.components, *balanced.components))  # all of each: equal when the plans are


def test_split_accuracy_reports_the_gap():
    y = torch.tensor([0, 1, 2, 3])
    pred = torch.tensor([0, 1, 0, 3])
    consistent = torch.tensor([True, True, False, False])
    r = split_accuracy(pred, y, consistent)
    assert r["top1"] == 0.75 and r["consistent_top1"] == 1.0 and r["flipped_top1"] == 0.5
    assert r["gap"] == 0.5 and r["n_consistent"] == 2 and r["n_flipped"] == 2
    none = split_accuracy(pred, y, torch.ones(4, dtype=torch.bool))
    assert none["flipped_top1"] is None and none["gap"] is None


GEN = {"backend": "embedded", "model": "m", "weights_sha256": "0" * 64, "scheduler": "ddim", "steps": 20,
       "guidance_scale": 2.0, "negative_guidance": None, "height": 8, "width": 8, "dtype": "float32"}


def test_benchmark_reports_val_and_test_with_seed_intervals_and_realised_colour(splits, tmp_path):
    root, _ = splits
    train = Dataset(root / "train")
    # a "synthetic" set: real train digits recoloured, asking for red; every third one shows blue instead
    with DatasetWriter(tmp_path / "syn", "syn", train.classes, 100) as w:
        for i, s in enumerate(train):
            if i == 60:
                break
            px = s.pil().convert("L")
            want, show = "red", "blue" if i % 3 == 0 else "red"
            im = Image.merge("RGB", [px.point(lambda v, k=k: v * dict(PALETTE)[show][k] // 255) for k in range(3)])
            buf = io.BytesIO()
            im.save(buf, format="PNG")
            w.write(synthetic_sample(f"s{i:03d}", buf.getvalue(), s.label, s.provenance["class_name"],
                                     prompt={"text": "t", "template": "t", "attributes": {"color": want}},
                                     seed=i, generator=GEN, generation=1, parents=[]))
    pools = {}
    for name, comps in {"real": [Component(dataset=str(root / "train"), per_class=5)],
                        "mix": [Component(dataset=str(root / "train"), per_class=5),
                                Component(dataset=str(tmp_path / "syn"))]}.items():
        write_pool(build_pool(PoolSpec(name=name, components=tuple(comps), seed=0)), tmp_path / f"{name}.json")
        pools[name] = tmp_path / f"{name}.json"
    cfg = ClassifierConfig(steps=3, batch_size=16, shuffle_buffer=16, eval_every=3, seeds=(0, 1))
    r = bias_benchmark(root / "train", root / "val", root / "test", pools, cfg, synthetic={"syn": tmp_path / "syn"},
                       values=COLOURS)
    assert r["seeds"] == [0, 1] and r["chosen_on"] == "val" and r["val_correlation"] < 0.2
    assert r["pools"]["mix"]["n_train"] == 50 + 60 and r["pools"]["mix"]["synthetic_fraction"] > 0.5
    for pool in r["pools"].values():
        for split in ("val", "test"):
            row = pool[split]
            for m in ("top1", "consistent_top1", "flipped_top1", "gap"):
                assert len(row[f"{m}_per_seed"]) == 2
                lo, hi = row[f"{m}_ci95"]
                assert lo <= row[f"{m}_mean"] <= hi
                assert row[f"{m}_mean"] == pytest.approx(sum(row[f"{m}_per_seed"]) / 2, abs=1e-6)
            assert row["n_consistent"] + row["n_flipped"] == len(Dataset(root / split))
    syn = r["synthetic"]["syn"]
    assert syn["agreement"] == pytest.approx(40 / 60)  # what the images show, not what was asked
    assert syn["requested"]["counts"]["red"] == 60
    assert syn["realised"]["counts"] == {**{c: 0 for c in COLOURS}, "red": 40, "blue": 20}
    assert syn["confusion"] == {"red": {"red": 40, "blue": 20}}
    assert syn["realised"]["tv_from_uniform"] < syn["requested"]["tv_from_uniform"] == pytest.approx(0.9)


def test_plan_cell_weights_are_checked():
    cfg = PlanConfig.model_validate({"images_per_class": 4, "templates": ["a {color} {class_name}"],
                                     "attributes": {"color": ["red", "blue"]}})
    plan = build_plan(cfg, ["a", "b"], cell_weights={"a": [3, 1], "b": [0, 1]})
    assert [(r.class_name, r.attributes["color"]) for r in plan.rows].count(("a", "red")) == 3
    assert [r.attributes["color"] for r in plan.rows if r.class_name == "b"] == ["blue"] * 4
    with pytest.raises(FactoryError, match="cell weights of class 'b'"):
        build_plan(cfg, ["a", "b"], cell_weights={"a": [3, 1]})
    with pytest.raises(FactoryError, match="cell weights of class 'a'"):
        build_plan(cfg, ["a", "b"], cell_weights={"a": [0, 0], "b": [1, 1]})
