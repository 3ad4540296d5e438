"""Pools (mixes by reference) and the loader that streams them from the shards."""

import json
from collections import Counter

import pytest
import torch
import webdataset as wds

from factory.config import PoolsConfig
from factory.core.errors import FactoryError
from factory.core.shards import Dataset
from factory.data.loader import PoolStream, load_pool_tensors, make_loader
from factory.data.pools import Component, PoolSpec, build_pool, read_pool, write_pool


def pool_of(name, *components, seed=0):
    return build_pool(PoolSpec(name, tuple(components), seed))


def test_pool_draws_stratified_counts_by_reference(digits_split):
    train, test = digits_split
    pool = pool_of("mix", Component(str(train), count=300), Component(str(test), fraction=0.5))
    assert pool["schema"] == "factory.pool/1" and pool["samples"] == 300 + round(0.5 * len(Dataset(test)))
    a, b = pool["components"]
    assert a["dataset"] == Dataset(train).ref() and len(a["keys"]) == 300 == len(set(a["keys"]))
    # stratified: every class gets its share of the draw (largest remainder), not a random number
    labels = {r["key"]: r["class_name"] for r in Dataset(train).records()}
    per_class = Counter(labels[k] for k in a["keys"])
    full = Counter(labels.values())
    for c, n in per_class.items():
        assert abs(n - 300 * full[c] / len(labels)) < 1
    # keys are listed in dataset order (streaming reads shards in turn)
    order = [r["key"] for r in Dataset(train).records()]
    assert a["keys"] == [k for k in order if k in set(a["keys"])]
    assert pool["sources"] == {"real": pool["samples"], "synthetic": 0} and pool["synthetic_fraction"] == 0.0


def test_pool_is_deterministic_and_independent_per_pool(digits_split):
    train, _ = digits_split
    a1 = pool_of("a", Component(str(train), per_class=5))
    a2 = pool_of("a", Component(str(train), per_class=5))
    b = pool_of("b", Component(str(train), per_class=5))
    other_seed = pool_of("a", Component(str(train), per_class=5), seed=1)
    assert a1 == a2
    assert a1["components"][0]["keys"] != b["components"][0]["keys"]
    assert a1["components"][0]["keys"] != other_seed["components"][0]["keys"]
    assert set(a1["per_class"].values()) == {5}


def test_pool_spec_errors_name_the_problem(digits_split, tmp_path):
    train, _ = digits_split
    with pytest.raises(FactoryError, match="at most one of count, fraction"):
        Component(str(train), count=3, fraction=0.5)
    with pytest.raises(FactoryError, match=r"count: must be > 0 \(got 0\)"):
        Component(str(train), count=0)
    with pytest.raises(FactoryError, match=r"fraction: must be in \(0, 1\]"):
        Component(str(train), fraction=1.5)
    with pytest.raises(FactoryError, match=r"^pools.p\[0\].size: unknown parameter; allowed: dataset, count, "):
        PoolsConfig(p=[{"dataset": str(train), "size": 3}])
    with pytest.raises(FactoryError, match="pool name 'a/b' must be a plain file name"):
        PoolSpec("a/b", (Component(str(train)),))
    with pytest.raises(FactoryError, match="more than the dataset"):
        pool_of("p", Component(str(train), count=10**6))
    with pytest.raises(FactoryError, match="per_class 1000"):
        pool_of("p", Component(str(train), per_class=1000))
    with pytest.raises(FactoryError, match="no such dataset"):
        pool_of("p", Component(str(tmp_path / "nope")))
    with pytest.raises(FactoryError, match="listed twice"):
        PoolSpec("p", (Component(str(train)), Component(str(train))))


def test_read_pool_refuses_a_changed_dataset(digits_split, tmp_path):
    import shutil

    train, _ = digits_split
    copy = tmp_path / "train"
    shutil.copytree(train, copy)
    write_pool(pool_of("p", Component(str(copy), per_class=2)), tmp_path / "p.json")
    assert read_pool(tmp_path / "p.json")["samples"] == 20
    index = json.loads((copy / "index.json").read_text())
    index["name"] = "changed"
    (copy / "index.json").write_text(json.dumps(index))
    with pytest.raises(FactoryError, match="changed since the pool was drawn"):
        read_pool(tmp_path / "p.json")


def test_stream_yields_exactly_the_pool_once_per_epoch_shuffled(digits_split):
    train, test = digits_split
    pool = pool_of("mix", Component(str(train), count=400), Component(str(test), per_class=3))
    wanted = [k for c in pool["components"] for k in c["keys"]]
    stream = PoolStream(pool, shuffle_buffer=200, with_meta=True, seed=3)
    keys0 = [m["key"] for _, _, m in stream]
    assert sorted(keys0) == sorted(wanted) and len(keys0) == len(stream) == pool["samples"]
    assert keys0 != wanted  # the shuffle buffer mixes the order
    assert [m["key"] for _, _, m in stream] == keys0  # same epoch: same order
    stream.set_epoch(1)
    assert [m["key"] for _, _, m in stream] != keys0
    x, y, meta = next(iter(stream))
    assert x.shape == (1, 16, 16) and x.dtype == torch.float32 and -1 <= x.min() and x.max() <= 1
    assert meta["group"] == meta["key"] and meta["text"] == ""  # real samples: own group, no prompt


def test_workers_split_the_pool_without_duplicates(digits_split):
    train, _ = digits_split
    pool = pool_of("p", Component(str(train), count=300))
    stream = PoolStream(pool, shuffle_buffer=50)
    seen = []
    for xb, yb in make_loader(stream, batch_size=32, num_workers=2):
        seen.extend(yb.tolist())
        assert xb.shape[1:] == (1, 16, 16)
    assert len(seen) == 300
    base = Counter(y for _, y in PoolStream(pool, shuffle_buffer=0))
    assert Counter(seen) == base


def test_load_pool_tensors_and_augmentation(digits_split):
    from factory.data.loader import standard_augmentation

    train, _ = digits_split
    pool = pool_of("p", Component(str(train), per_class=2))
    x, y, groups, texts, keys = load_pool_tensors(pool)
    assert x.shape == (20, 1, 16, 16) and sorted(Counter(y.tolist()).values()) == [2] * 10
    assert keys == pool["components"][0]["keys"] and groups == keys and set(texts) == {""}
    torch.manual_seed(0)
    aug = [a for a, _ in PoolStream(pool, shuffle_buffer=0, transform=standard_augmentation(seed=1))]
    assert all(a.shape == (1, 16, 16) for a in aug)
    assert not all(torch.equal(a, b) for a, b in zip(aug, x))


def test_pool_shards_also_read_by_plain_webdataset(digits_split):
    """The pool points at ordinary webdataset shards: plain WebDataset reads the same samples."""
    train, _ = digits_split
    pool = pool_of("p", Component(str(train), per_class=1))
    keys = set(pool["components"][0]["keys"])
    got = [s["__key__"] for s in wds.WebDataset(Dataset(train).urls(), shardshuffle=False) if s["__key__"] in keys]
    assert sorted(got) == sorted(keys)


def test_cache_serves_later_epochs_from_memory(digits_split, tmp_path):
    import shutil

    train, _ = digits_split
    copy = tmp_path / "train"
    shutil.copytree(train, copy)
    pool = pool_of("p", Component(str(copy), per_class=4))
    stream = PoolStream(pool, shuffle_buffer=10, with_meta=True, cache=True)
    first = [m["key"] for _, _, m in stream]
    for shard in copy.glob("shard-*.tar"):
        shard.unlink()  # later epochs must not touch the shards
    stream.set_epoch(1)
    second = [(x, y, m["key"]) for x, y, m in stream]
    assert sorted(k for *_, k in second) == sorted(first) and [k for *_, k in second] != first
    stream.set_epoch(1)
    assert [m["key"] for *_, m in stream] == [k for *_, k in second]  # seeded by the epoch
    fresh = PoolStream(pool, shuffle_buffer=10, with_meta=True)  # no cache: needs the shards
    with pytest.raises(FileNotFoundError, match=r"shard-\d{6}\.tar"):
        list(fresh)
