"""The pool loader mixes sources and classes in every batch, from the first one, even when the shards are
sorted by class and the pool's components are read one after the other."""

from collections import Counter

import pytest
from scipy.stats import binom

from factory.core.shards import Dataset, DatasetWriter
from factory.data.loader import PoolStream, make_loader
from factory.data.pools import Component, PoolSpec, build_pool

BATCH = 64
TAIL = 1e-6  # per batch and bound: with ~25 batches x 11 bounds, a mixed loader fails about once in 3,000 runs


@pytest.fixture(scope="module")
def sorted_pool(tmp_path_factory, digits):
    """Two datasets made from the digits, each written in class order (shards of 50 samples, so a shard holds
    one or two classes), drawn whole into one pool: 1,000 of the first, 500 of the second."""
    root = tmp_path_factory.mktemp("sorted")
    samples = sorted(Dataset(digits), key=lambda s: (s.label, s.key))
    parts = {"a": samples[0::3] + samples[1::3], "b": samples[2::3]}
    classes = Dataset(digits).classes
    paths = {}
    for name, part in parts.items():
        part = sorted(part, key=lambda s: (s.label, s.key))
        keep = {"a": 1000, "b": 500}[name]
        # an even draw over the classes, still written in class order
        per_class = keep // len(classes)
        chosen = [s for c in range(len(classes)) for s in [t for t in part if t.label == c][:per_class]]
        with DatasetWriter(root / name, name, classes, shard_size=50) as w:
            w.write_all(chosen)
            w.close()
        paths[name] = root / name
    pool = build_pool(PoolSpec("sorted", (Component(str(paths["a"])), Component(str(paths["b"]))), 0))
    source = {k: i for i, c in enumerate(pool["components"]) for k in c["keys"]}
    return pool, source


def batches(stream, workers=0):
    for _, yb, meta in make_loader(stream, BATCH, workers):
        yield yb.tolist(), meta["key"]


def binomial_range(p, n=BATCH, tail=TAIL):
    """The counts a batch of ``n`` uniform draws holds with probability ``1 - 2 * tail`` (exact binomial
    quantiles: the normal approximation is too narrow in the upper tail of a 10% class)."""
    return binom.ppf(tail, n, p), binom.isf(tail, n, p)


def check_mixed(pool, source, stream, workers=0, min_classes=8, class_bound=True):
    """Every full batch: the second component's count (and, with ``class_bound``, each class's count) within
    the binomial range of their shares of the pool, and at least ``min_classes`` classes."""
    n = pool["samples"]
    p_b = sum(1 for s in source.values() if s == 1) / n
    lo_b, hi_b = binomial_range(p_b)
    hi_c = {pool["classes"].index(c): binomial_range(k / n)[1] for c, k in pool["per_class"].items()}
    seen, full = Counter(), 0
    for i, (labels, keys) in enumerate(batches(stream, workers)):
        seen.update(keys)
        if len(labels) < BATCH:
            continue
        full += 1
        n_b = sum(source[k] for k in keys)
        assert lo_b <= n_b <= hi_b, f"batch {i}: {n_b}/{BATCH} from the second source, pool share {p_b:.2f}"
        counts = Counter(labels)
        assert len(counts) >= min_classes, f"batch {i}: only classes {sorted(counts)}"
        for c, k in counts.items():
            assert not class_bound or k <= hi_c[c], f"batch {i}: class {c} is {k}/{BATCH}, above {hi_c[c]:.0f}"
    assert full >= n // BATCH - workers and seen == Counter(list(source))  # the whole pool, once


def test_the_pool_is_sorted_so_reading_in_order_would_not_mix(sorted_pool):
    """The premise: read in order, the first batch is one source and one or two classes."""
    pool, source = sorted_pool
    labels, keys = next(batches(PoolStream(pool, shuffle_buffer=0, with_meta=True)))
    assert {source[k] for k in keys} == {0} and len(set(labels)) <= 2


@pytest.mark.parametrize("epoch", [0, 1])
def test_every_batch_mixes_sources_and_classes_in_memory(sorted_pool, epoch):
    pool, source = sorted_pool
    stream = PoolStream(pool, shuffle_buffer=1000, with_meta=True, seed=5)
    assert stream.in_memory
    stream.set_epoch(epoch)
    check_mixed(pool, source, stream)


def test_every_batch_mixes_with_workers(sorted_pool):
    pool, source = sorted_pool
    check_mixed(pool, source, PoolStream(pool, shuffle_buffer=1000, with_meta=True, seed=1), workers=2)


def test_every_batch_mixes_sources_when_streamed(sorted_pool):
    """A pool too large for memory: shuffled shard order, several shards at once, components interleaved in
    proportion, then the buffer. Sources are in proportion in every batch; classes come from several shards
    (each holds one or two classes here)."""
    pool, source = sorted_pool
    stream = PoolStream(pool, shuffle_buffer=300, with_meta=True, seed=2, memory_bytes=0)
    assert not stream.in_memory
    check_mixed(pool, source, stream, min_classes=6, class_bound=False)


def test_mixed_order_is_a_function_of_seed_and_epoch(sorted_pool):
    pool, _ = sorted_pool
    for memory in (0, 1 << 30):
        def order(seed, epoch):
            s = PoolStream(pool, shuffle_buffer=300, with_meta=True, seed=seed, memory_bytes=memory)
            s.set_epoch(epoch)
            return [m["key"] for _, _, m in s]
        first = order(3, 0)
        assert order(3, 0) == first and order(3, 1) != first and order(4, 0) != first
        assert sorted(first) == sorted(k for c in pool["components"] for k in c["keys"])


def test_cache_in_memory_decodes_once(sorted_pool):
    pool, _ = sorted_pool
    stream = PoolStream(pool, shuffle_buffer=1000, with_meta=True, cache=True)
    first = {m["key"]: x for x, _, m in stream}
    stream._raw = [{**s, "png": b"not a png"} for s in stream._raw]  # a second decode would fail
    stream.set_epoch(1)
    again = {m["key"]: x for x, _, m in stream}
    assert again.keys() == first.keys() and all((again[k] == first[k]).all() for k in first)


@pytest.mark.parametrize("memory", [0, 1 << 30])
def test_both_ways_read_through_the_checked_reader(sorted_pool, tmp_path, memory):
    """In memory or streamed, every sample comes through the checked tar reader: a broken shard is one
    DatasetError naming it."""
    import shutil

    from factory.core.errors import DatasetError

    pool, _ = sorted_pool
    copy = tmp_path / "b"
    shutil.copytree(pool["components"][1]["dataset"]["path"], copy)
    (copy / "shard-000003.tar").write_bytes(b"not a tar" * 100)
    broken = {**pool, "components": [pool["components"][0], {**pool["components"][1],
                                                             "dataset": {**pool["components"][1]["dataset"],
                                                                         "path": str(copy)}}]}
    stream = PoolStream(broken, shuffle_buffer=300, memory_bytes=memory)
    assert stream.in_memory == bool(memory)
    with pytest.raises(DatasetError, match=r"shard-000003\.tar: unreadable tar"):
        list(stream)
