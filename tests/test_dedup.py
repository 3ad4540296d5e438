import io
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from factory.cli.common import FactoryGroup
from factory.cli.curate import dedup_command
from factory.core.errors import FactoryError
from factory.core.sample import Sample, real_sample
from factory.core.shards import Dataset, DatasetWriter
from factory.curate.dedup import DedupConfig, default_max_distance, find_duplicates
from factory.curate.hashing import (
    Pairs,
    hamming,
    hamming_pairs,
    hamming_pairs_bruteforce,
    hex_from_words,
    image_hash_hex,
    plan_blocks,
    semantic_pairs,
    words_from_hex,
)

# ---------------------------------------------------------------------------------------------
# The Hamming search equals brute force


def planted_hashes(rng, n: int, d: int, nbits: int = 64) -> np.ndarray:
    """Random hashes plus copies of some of them with 0 .. d+1 bits flipped, plus tight clusters."""
    w = (nbits + 63) // 64
    h = rng.integers(0, 2**64, (n, w), dtype=np.uint64)
    copies = h[rng.integers(0, n, n // 4)].copy()
    centres = h[rng.integers(0, n, 5)]
    cluster = centres[rng.integers(0, 5, n // 10)].copy()
    for arr, p in ((copies, None), (cluster, 0.03)):
        for r in range(len(arr)):
            flips = rng.choice(nbits, rng.integers(0, d + 2), replace=False) if p is None else \
                np.flatnonzero(rng.random(nbits) < p)
            for b in flips:
                arr[r, b // 64] ^= np.uint64(1 << int(b % 64))
    out = np.concatenate([h, copies, cluster])
    if nbits % 64:
        out[:, -1] &= np.uint64((1 << (nbits % 64)) - 1)
    return out[rng.permutation(len(out))]


@pytest.mark.parametrize("nbits, d", [(64, 0), (64, 1), (64, 4), (64, 8), (64, 12), (256, 0), (256, 8), (256, 32)])
def test_search_equals_bruteforce(nbits, d):
    rng = np.random.default_rng([nbits, d])
    a = planted_hashes(rng, 1200, d, nbits)
    b = np.concatenate([planted_hashes(rng, 300, d, nbits), a[rng.integers(0, len(a), 100)]])
    want_within = hamming_pairs_bruteforce(a, None, d)
    want_cross = hamming_pairs_bruteforce(a, b, d)
    assert len(want_within) > 0 and len(want_cross) > 0
    lowest = -(-nbits // 22)
    for blocks in (None, lowest, max(lowest, d + 1), max(lowest, d + 3)):  # chosen, fewest, pigeonhole, too many
        got = hamming_pairs(a, None, d, nbits=nbits, blocks=blocks, max_chunk=777)
        assert got.tolist() == want_within.tolist(), blocks
        got = hamming_pairs(a, b, d, nbits=nbits, blocks=blocks, max_chunk=777)
        assert got.tolist() == want_cross.tolist(), blocks
    pairs = want_within.tolist()
    assert all(i < j for i, j, _ in pairs) and pairs == sorted(pairs)


def test_search_on_1d_uint64_and_edge_cases():
    rng = np.random.default_rng(0)
    h = rng.integers(0, 2**64, 500, dtype=np.uint64)
    h = np.concatenate([h, h[:50] ^ np.uint64(0b101)])  # 50 planted pairs at distance 2
    got = hamming_pairs(h, None, 2)
    assert got.tolist() == hamming_pairs_bruteforce(h, None, 2).tolist()
    assert [(i, j, v) for i, j, v in got.tolist()] == [(k, 500 + k, 2) for k in range(50)]
    assert len(hamming_pairs(h[:1], None, 8)) == 0 and len(hamming_pairs(h[:0], h, 8)) == 0
    same = np.zeros(40, dtype=np.uint64)  # one bucket holding everything
    assert len(hamming_pairs(same, None, 0, max_chunk=7)) == 40 * 39 // 2
    with pytest.raises(FactoryError, match="max distance must be >= 0"):
        hamming_pairs(h, None, -1)
    with pytest.raises(FactoryError, match="different lengths"):
        hamming_pairs(h, np.zeros((3, 4), np.uint64), 2)


def test_plan_scales_blocks_with_size():
    small = plan_blocks(64, 8, 10_000, 10_000)
    large = plan_blocks(64, 8, 1_000_000, 1_000_000)
    assert max(b.width for b in large) > max(b.width for b in small)
    # pigeonhole: a pair no probed block finds differs in >= radius+1 bits in each, so in > d bits
    for nbits, d, n in ((64, 8, 10_000), (64, 8, 10**6), (256, 48, 5000), (64, 0, 10), (64, 3, 10**5)):
        plan = plan_blocks(nbits, d, n, n)
        assert sum(b.radius + 1 for b in plan) == d + 1
        assert all(b.width <= 22 for b in plan) and sum(b.width for b in plan) <= nbits


def test_hex_words_roundtrip_and_imagehash_agree(imagenette):
    import imagehash

    files = sorted((imagenette / "train" / "n01440764").glob("*.JPEG"))[:6]
    for method, size in (("phash", 8), ("dhash", 16), ("whash", 8), ("phash", 12)):
        hexes = [image_hash_hex(Image.open(f), method, size) for f in files]
        words = words_from_hex(hexes, size * size)
        assert words.shape == (6, (size * size + 63) // 64)
        assert hex_from_words(words, size * size) == hexes
        objs = [imagehash.hex_to_hash(h) for h in hexes] if size != 12 else None
        for k in range(1, 6):
            d = int(hamming(words[:1], words[k:k + 1])[0])
            if objs is not None:
                assert d == objs[0] - objs[k]
    with pytest.raises(FactoryError, match="hex digits"):
        words_from_hex(["abc"], 64)


# ---------------------------------------------------------------------------------------------
# Real photos with planted near-duplicates, leaks and memorised copies


def encode(im: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def crop(im: Image.Image, f: float) -> Image.Image:
    dx, dy = round(im.width * f), round(im.height * f)
    return im.crop((dx, dy, im.width - dx, im.height - dy))


TRANSFORMS = {
    "jpeg70": lambda im: encode(im, "JPEG", quality=70),
    "resize": lambda im: encode(im.resize((round(im.width * 0.8), round(im.height * 0.8)),
                                          Image.Resampling.BICUBIC)),
    "crop2": lambda im: encode(crop(im, 0.02)),
    "crop3": lambda im: encode(crop(im, 0.03)),
}
CLASSES = ["n01440764", "n02102040", "n02979186"]


def write_dataset(path: Path, items: list[tuple[str, bytes, int]]) -> Path:
    with DatasetWriter(path, path.name, CLASSES, shard_size=7) as w:
        for key, data, label in items:
            w.write(real_sample(key, data, label, CLASSES[label], {"dataset": "test", "index": key}))
    return path


@pytest.fixture(scope="module")
def sets(imagenette, tmp_path_factory):
    """syn: 12 originals, their 4 kinds of near-copies (of originals 0-3), a flipped copy (of 5),
    a leak (JPEG copy of test image 0) and a memorised copy (resized train image 20).
    test: 10 test photos. train: 10 other train photos (indices 12-21)."""
    root = tmp_path_factory.mktemp("dedup")
    train = [(f, c) for c, wnid in enumerate(CLASSES)
             for f in sorted((imagenette / "train" / wnid).glob("*.JPEG"))[:8]]
    test = [(f, c) for c, wnid in enumerate(CLASSES)
            for f in sorted((imagenette / "test" / wnid).glob("*.JPEG"))[:4]][:10]
    rgb = lambda f: Image.open(f).convert("RGB")  # noqa: E731
    syn = [(f"a-{k:02d}", f.read_bytes(), c) for k, (f, c) in enumerate(train[:12])]
    for k, (name, fn) in enumerate(TRANSFORMS.items()):
        syn.append((f"b-{name}-of-a-{k:02d}", fn(rgb(train[k][0])), train[k][1]))
    syn.append(("c-flip-of-a-05", encode(rgb(train[5][0]).transpose(Image.Transpose.FLIP_LEFT_RIGHT)), train[5][1]))
    syn.append(("d-leak", TRANSFORMS["jpeg70"](rgb(test[0][0])), test[0][1]))
    syn.append(("e-memorised", TRANSFORMS["resize"](rgb(train[20][0])), train[20][1]))
    return {
        "syn": write_dataset(root / "syn", syn),
        "test": write_dataset(root / "test", [(f"t-{k:02d}", f.read_bytes(), c) for k, (f, c) in enumerate(test)]),
        "train": write_dataset(root / "train", [(f"r-{k:02d}", f.read_bytes(), c)
                                                for k, (f, c) in enumerate(train[12:22], start=12)]),
        "root": root,
    }


def test_planted_near_duplicates_found_within_and_across(sets):
    rep = find_duplicates(sets["syn"], against=[sets["test"]], report_against=[sets["train"]])
    syn, test, train = (str(sets[k]) for k in ("syn", "test", "train"))
    within = sorted((p["a"], p["b"]) for p in rep.pairs if p["b_dataset"] == syn)
    assert within == [(f"a-{k:02d}", f"b-{name}-of-a-{k:02d}") for k, name in enumerate(TRANSFORMS)]
    assert all(p["distance"] <= 8 and p["method"] == "hash" for p in rep.pairs)
    assert [(p["a"], p["b"]) for p in rep.pairs if p["b_dataset"] == test] == [("d-leak", "t-00")]
    assert [(p["a"], p["b"]) for p in rep.pairs if p["b_dataset"] == train] == [("e-memorised", "r-20")]
    # one kept per cluster (the first by key), every leak removed, memorisation only reported
    assert rep.clusters == [{"keep": f"a-{k:02d}", "members": [f"a-{k:02d}", f"b-{n}-of-a-{k:02d}"]}
                            for k, n in enumerate(TRANSFORMS)]
    assert rep.removed == sorted([f"b-{n}-of-a-{k:02d}" for k, n in enumerate(TRANSFORMS)] + ["d-leak"])
    assert rep.reasons["d-leak"].startswith("matches t-00 in") and "near-duplicate of a-00" in rep.reasons["b-jpeg70-of-a-00"]
    s = rep.summary
    assert s["samples"] == 19 and s["removed"] == 5 and s["kept"] == 14
    assert s["within"] == {"pairs": 4, "clusters": 4, "samples_in_clusters": 8, "removed": 4}
    assert [(c["role"], c["pairs"], c["matched"], c["removed"]) for c in s["cross"]] == [
        ("against", 1, 1, 1), ("report", 1, 1, 0)]
    assert s["memorization_rate"] == pytest.approx(1 / 19, abs=1e-6)
    assert s["leak_rate"] == pytest.approx(1 / 19, abs=1e-6)
    assert s["hashes_from_provenance"] == 19  # phash 8x8 was read from the records


def test_leak_decides_which_cluster_member_is_kept(sets, tmp_path):
    """If the first key of a cluster is itself a leak, it goes and the next member is kept."""
    items = [(s.key, s.image, s.label) for s in Dataset(sets["syn"])]
    test_img = next(iter(Dataset(sets["test"]))).image
    items.append(("d-leak-copy", encode(Image.open(io.BytesIO(test_img)).convert("RGB")), 0))  # near d-leak
    syn = write_dataset(tmp_path / "syn2", items)
    rep = find_duplicates(syn, against=[sets["test"]])
    assert {"keep": None, "members": ["d-leak", "d-leak-copy"]} in rep.clusters
    assert {"d-leak", "d-leak-copy"} <= set(rep.removed)


def test_reuses_provenance_phash_without_decoding(sets, monkeypatch):
    want = find_duplicates(sets["syn"]).pairs

    def no_decode(self):
        raise AssertionError("image decoded")

    monkeypatch.setattr(Sample, "pil", no_decode)
    rep = find_duplicates(sets["syn"], against=[sets["test"]])
    assert [p for p in rep.pairs if p["b_dataset"] == str(sets["syn"])] == want
    with pytest.raises(FactoryError, match="sample 'a-00': image does not decode"):  # dhash must decode
        find_duplicates(sets["syn"], config=DedupConfig(hash="dhash"))


@pytest.mark.parametrize("config", [DedupConfig("dhash"), DedupConfig("whash"), DedupConfig("phash", 16)])
def test_other_hashes_find_the_easy_copies(sets, config):
    rep = find_duplicates(sets["syn"], config=config)
    found = {(p["a"], p["b"]) for p in rep.pairs}
    assert {("a-00", "b-jpeg70-of-a-00"), ("a-01", "b-resize-of-a-01")} <= found
    assert rep.summary["hashes_from_provenance"] == 0


def toy_embed(images: list[Image.Image]) -> np.ndarray:
    """A flip-invariant stand-in for CLIP: a centred, mirrored 16x16 grey thumbnail."""
    out = []
    for im in images:
        x = np.asarray(im.convert("L").resize((16, 16), Image.Resampling.BILINEAR), dtype=np.float32)
        x = x + x[:, ::-1]
        out.append((x - x.mean()).ravel())
    return np.stack(out)


def test_semantic_pass_finds_what_hashes_miss(sets):
    plain = find_duplicates(sets["syn"])
    assert not any(p["b"] == "c-flip-of-a-05" for p in plain.pairs)
    rep = find_duplicates(sets["syn"], config=DedupConfig(semantic_threshold=0.98), embed=toy_embed)
    flip = [p for p in rep.pairs if p["b"] == "c-flip-of-a-05"]
    assert len(flip) == 1 and flip[0]["a"] == "a-05" and flip[0]["method"] == "semantic"
    assert flip[0]["distance"] > 8 and flip[0]["similarity"] >= 0.98
    assert all("similarity" in p for p in rep.pairs)
    assert "c-flip-of-a-05" in rep.removed and rep.to_json()["semantic_threshold"] == 0.98
    assert rep.evidence["c-flip-of-a-05"] == {"matched_key": "a-05", "matched_dataset": str(sets["syn"]),
                                              "distance": flip[0]["distance"], "method": "semantic",
                                              "similarity": flip[0]["similarity"]}


def test_semantic_pairs_equal_dense_search():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(700, 32)).astype(np.float32)
    a = np.concatenate([a, a[:60] + rng.normal(scale=0.15, size=(60, 32)).astype(np.float32)])
    a /= np.linalg.norm(a, axis=1, keepdims=True)
    b = a[rng.integers(0, len(a), 90)] + rng.normal(scale=0.1, size=(90, 32)).astype(np.float32)
    b /= np.linalg.norm(b, axis=1, keepdims=True)
    for t in (0.9, 0.97):
        sim = a @ a.T
        ii, jj = np.nonzero(np.triu(sim >= t, k=1))
        got = semantic_pairs(a, None, t, block=64)
        assert list(zip(got.i.tolist(), got.j.tolist())) == list(zip(ii.tolist(), jj.tolist()))
        assert len(got) >= 50
        np.testing.assert_allclose(got.value, sim[ii, jj], rtol=1e-5)
        ii, jj = np.nonzero(a @ b.T >= t)
        got = semantic_pairs(a, b, t, block=50)
        assert list(zip(got.i.tolist(), got.j.tolist())) == list(zip(ii.tolist(), jj.tolist()))
    with pytest.raises(FactoryError, match="L2-normalised"):
        semantic_pairs(a * 2, None, 0.9)
    with pytest.raises(FactoryError, match="different widths"):
        semantic_pairs(a, b[:, :8] / np.linalg.norm(b[:, :8], axis=1, keepdims=True), 0.9)


def test_config_defaults_and_errors():
    assert DedupConfig().distance == 8 == default_max_distance(8)
    assert DedupConfig(hash_size=16).distance == 48 and DedupConfig(max_distance=0).distance == 0
    for kwargs, msg in [({"hash": "md5"}, r"^dedup.hash: must be one of phash, dhash, whash \(got 'md5'\)$"),
                        ({"max_distance": -1}, r"^dedup.max_distance: must be >= 0 \(got -1\)$"),
                        ({"max_distance": 64}, "dedup.max_distance: must be below the 64 bits"),
                        ({"hash_size": 1}, r"dedup.hash_size: must be >= 2 \(got 1\)"),
                        ({"hash_size": 33}, r"dedup.hash_size: must be <= 32 \(got 33\)"),
                        ({"hash_size": 8.0}, r"dedup.hash_size: must be an integer \(got 8.0\)"),
                        ({"hash": "whash", "hash_size": 12}, "dedup.hash_size: must be a power of 2 for whash")]:
        with pytest.raises(FactoryError, match=msg):
            DedupConfig(**kwargs)


# ---------------------------------------------------------------------------------------------
# The command line


def run(*args):
    group = FactoryGroup(name="factory", commands={"dedup": dedup_command})
    return CliRunner().invoke(group, ["dedup", *map(str, args)])


def test_cli_report_and_clean_output(sets, tmp_path):
    report, out = tmp_path / "r" / "dedup.json", tmp_path / "clean"
    r = run(sets["syn"], "--against", sets["test"], "--report-against", sets["train"],
            "--report", report, "--out", out)
    assert r.exit_code == 0, r.output
    assert "within: 4 pairs in 4 clusters -> 4 removed" in r.output
    assert "memorisation rate: 5.26%" in r.output and "removed 5, kept 14" in r.output
    rep = json.loads(report.read_text())
    assert rep["schema"] == "factory.dedup/1" and rep["hash"] == "phash" and rep["max_distance"] == 8
    for p in rep["pairs"]:
        assert {"a", "b", "b_dataset", "distance"} <= set(p)
        assert isinstance(p["distance"], int) and p["a"] in {s.key for s in Dataset(sets["syn"])}
    assert {p["b_dataset"] for p in rep["pairs"]} == {str(sets["syn"]), str(sets["test"]), str(sets["train"])}
    assert "d-leak" in rep["removed"] and "e-memorised" not in rep["removed"]
    # every removed sample with its evidence: the pair that removed it (a near-duplicate: the member kept)
    pair = {(p["a"], p["b"], p["b_dataset"]): p for p in rep["pairs"]}
    assert set(rep["evidence"]) == set(rep["removed"])
    leak = pair[("d-leak", "t-00", str(sets["test"]))]
    assert rep["evidence"]["d-leak"] == {"matched_key": "t-00", "matched_dataset": str(sets["test"]),
                                         "distance": leak["distance"], "method": "hash"}
    for k, name in enumerate(TRANSFORMS):
        p = pair[(f"a-{k:02d}", f"b-{name}-of-a-{k:02d}", str(sets["syn"]))]
        assert rep["evidence"][p["b"]] == {"matched_key": p["a"], "matched_dataset": str(sets["syn"]),
                                           "distance": p["distance"], "method": "hash"}
    assert rep["summary"]["cross"][0]["dataset"] == str(sets["test"])
    clean = Dataset(out)
    keys = [s.key for s in clean]
    assert len(clean) == 14 and keys == sorted(keys) and "d-leak" not in keys and "e-memorised" in keys
    assert set(keys) == {s.key for s in Dataset(sets["syn"])} - set(rep["removed"])
    assert clean.meta["dedup"]["removed"] == 5 and clean.classes == CLASSES
    r = run(sets["syn"], "--out", out)  # never replaces a dataset silently
    assert r.exit_code == 2 and "already exists" in r.stderr


def test_cli_fail_on_duplicates(sets):
    r = run(sets["syn"], "--fail-on-duplicates")
    assert r.exit_code == 1 and "within: 4 pairs" in r.output
    assert r.stderr.strip().splitlines() == ["dedup: 4 near-duplicate pairs found (--fail-on-duplicates)"]
    r = run(sets["syn"], "--against", sets["test"], "--report-against", sets["train"], "--fail-on-duplicates")
    assert r.exit_code == 1 and r.stderr.strip().splitlines() == [
        "dedup: 4 near-duplicate pairs, 1 leak and 1 memorised sample found (--fail-on-duplicates)"]
    assert run(sets["syn"]).exit_code == 0
    r = run(sets["test"], "--fail-on-duplicates", "--json")
    assert r.exit_code == 0 and json.loads(r.output)["within"]["pairs"] == 0
    r = run(sets["test"], "--against", sets["syn"], "--fail-on-duplicates")  # the leak, seen from the test side
    assert r.exit_code == 1


@pytest.mark.parametrize("args, culprit", [
    (["{tmp}/missing"], "missing: no such dataset directory"),
    (["{syn}", "--against", "{tmp}/nope"], "nope: no such dataset directory"),
    (["{syn}", "--hash", "md5"], "dedup.hash: must be one of phash, dhash, whash (got 'md5')"),
    (["{syn}", "--max-distance", "-1"], "dedup.max_distance: must be >= 0 (got -1)"),
    (["{syn}", "--hash-size", "1"], "dedup.hash_size: must be >= 2 (got 1)"),
    (["{syn}", "--hash", "whash", "--hash-size", "12"], "power of 2"),
    (["{syn}", "--against", "{syn}"], "already given as DATASET"),
    (["{syn}", "--out", "{syn}"], "must differ from DATASET"),
])
def test_cli_bad_input_exits_2_with_one_line(sets, tmp_path, args, culprit):
    r = run(*[a.format(tmp=tmp_path, syn=sets["syn"]) for a in args])
    assert r.exit_code == 2, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and culprit in lines[0]
    assert "Traceback" not in r.output


def test_pairs_type():
    p = Pairs.build([np.array([2, 0])], [np.array([3, 1])], [np.array([5, 1])], np.int32)
    assert p.tolist() == [(0, 1, 1), (2, 3, 5)] and len(p) == 2
