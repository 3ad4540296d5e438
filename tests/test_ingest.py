import hashlib
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from factory.core.errors import FactoryError
from factory.core.shards import Dataset
from factory.data.ingest import ingest, split, stratified_test_keys
from factory.data.inspection import verify


def test_sklearn_digits(digits):
    ds = Dataset(digits)
    assert len(ds) == 1797 and ds.classes == [str(i) for i in range(10)]
    samples = list(ds)
    assert len({s.key for s in samples}) == 1797
    im = samples[0].pil()
    assert im.mode == "L" and im.size == (8, 8) and samples[0].ext == "png"
    assert max(np.asarray(s.pil()).max() for s in samples[:50]) == 255
    assert samples[0].provenance["origin"] == {"dataset": "sklearn:digits", "index": 0}
    assert verify(digits).ok


def test_imagenette_folder_keeps_original_bytes(imagenette, tmp_path):
    summary = ingest(str(imagenette / "train"), tmp_path / "inet", shard_size=300)
    assert summary.samples == 2000 and set(summary.classes.values()) == {200} and len(summary.classes) == 10
    ds = Dataset(tmp_path / "inet")
    assert ds.classes == sorted(p.name for p in (imagenette / "train").iterdir())
    assert len(ds.shards) == 7
    for s in ds:
        original = (imagenette / "train" / s.provenance["origin"]["path"]).read_bytes()
        assert s.image == original and s.ext == "jpg"
        assert s.provenance["sha256"] == hashlib.sha256(original).hexdigest()
        assert ds.classes[s.label] == s.provenance["origin"]["path"].split("/")[0]
    assert verify(tmp_path / "inet").ok


def write_image(path: Path, mode: str, fmt: str, size=(12, 10)):
    path.parent.mkdir(parents=True, exist_ok=True)
    color = {"L": 100, "RGB": (1, 2, 3), "RGBA": (10, 20, 30, 40), "CMYK": (1, 2, 3, 4), "P": 5}[mode]
    Image.new(mode, size, color).save(path, format=fmt)


def test_folder_with_mixed_modes(tmp_path):
    write_image(tmp_path / "src" / "cats" / "gray.png", "L", "PNG")
    write_image(tmp_path / "src" / "cats" / "cmyk.jpg", "CMYK", "JPEG")
    write_image(tmp_path / "src" / "dogs" / "rgba.png", "RGBA", "PNG")
    write_image(tmp_path / "src" / "dogs" / "pal.png", "P", "PNG")
    write_image(tmp_path / "src" / "dogs" / "x.webp", "RGB", "WEBP")
    summary = ingest(str(tmp_path / "src"), tmp_path / "out")
    assert summary.classes == {"cats": 2, "dogs": 3}
    by_key = {s.key: s for s in Dataset(tmp_path / "out")}
    assert set(by_key) == {"cats_cmyk", "cats_gray", "dogs_pal", "dogs_rgba", "dogs_x"}
    assert by_key["cats_cmyk"].pil().mode == "CMYK" and by_key["dogs_rgba"].pil().mode == "RGBA"
    assert by_key["dogs_x"].ext == "webp"
    assert by_key["cats_gray"].image == (tmp_path / "src" / "cats" / "gray.png").read_bytes()


def test_key_collisions_get_suffixes(tmp_path):
    write_image(tmp_path / "src" / "a" / "x.png", "L", "PNG")
    write_image(tmp_path / "src" / "a" / "x.jpg", "RGB", "JPEG")
    ingest(str(tmp_path / "src"), tmp_path / "out")
    # both colliding files get "-" + sha256(relative path)[:10] (issue 10: order never decides a key)
    import hashlib

    expected = sorted(f"a_x-{hashlib.sha256(p.encode()).hexdigest()[:10]}" for p in ("a/x.png", "a/x.jpg"))
    assert sorted(s.key for s in Dataset(tmp_path / "out")) == expected


def test_corrupt_image_fails_cleanly_or_is_skipped(tmp_path, imagenette):
    src = tmp_path / "src"
    for cls in ["n01440764", "n02102040"]:
        for f in sorted((imagenette / "train" / cls).iterdir())[:3]:
            (src / cls).mkdir(parents=True, exist_ok=True)
            (src / cls / f.name).write_bytes(f.read_bytes())
    bad = src / "n02102040" / "broken.JPEG"
    bad.write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    with pytest.raises(FactoryError, match="broken.JPEG"):
        ingest(str(src), tmp_path / "out", shard_size=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]
    summary = ingest(str(src), tmp_path / "out", shard_size=2, skip_bad=True)
    assert summary.samples == 6 and len(summary.skipped) == 1 and "broken.JPEG" in summary.skipped[0]
    # a truncated JPEG (valid header, cut body) is caught too
    good = sorted((src / "n01440764").iterdir())[0]
    (src / "n01440764" / "trunc.JPEG").write_bytes(good.read_bytes()[:400])
    with pytest.raises(FactoryError, match="trunc.JPEG"):
        ingest(str(src), tmp_path / "out2")


def test_hf_source_from_disk(tmp_path, imagenette):
    import datasets

    files, labels = [], []
    classes = sorted(p.name for p in (imagenette / "test").iterdir())[:3]
    for label, cls in enumerate(classes):
        for f in sorted((imagenette / "test" / cls).iterdir())[:4]:
            files.append(str(f))
            labels.append(label)
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=classes)})
    dset = datasets.Dataset.from_dict({"image": files, "label": labels}, features=features)
    datasets.DatasetDict({"train": dset, "validation": dset.select(range(2))}).save_to_disk(tmp_path / "hfd")
    summary = ingest(f"hf:{tmp_path / 'hfd'}:train", tmp_path / "out")
    assert summary.samples == 12 and summary.classes == {c: 4 for c in classes}
    samples = list(Dataset(tmp_path / "out"))
    assert samples[5].image == Path(files[5]).read_bytes()
    assert samples[5].provenance["origin"]["dataset"].endswith("hfd:train")
    with pytest.raises(FactoryError, match="has splits"):
        ingest(f"hf:{tmp_path / 'hfd'}", tmp_path / "out2")
    with pytest.raises(FactoryError, match="no split 'nope'"):
        ingest(f"hf:{tmp_path / 'hfd'}:nope", tmp_path / "out2")
    dset.save_to_disk(tmp_path / "single")
    assert ingest(f"hf:{tmp_path / 'single'}", tmp_path / "out3").samples == 12


def test_reshard_keeps_samples(digits, tmp_path):
    summary = ingest(str(digits), tmp_path / "re", shard_size=700, name="digits-700")
    assert summary.samples == 1797 and summary.shards == 3
    old = {s.key: (s.image, s.provenance) for s in Dataset(digits)}
    new = {s.key: (s.image, s.provenance) for s in Dataset(tmp_path / "re")}
    assert old == new
    assert Dataset(tmp_path / "re").meta["resharded_from"]["index_sha256"] == Dataset(digits).index_sha256


@pytest.mark.parametrize("spec, match", [
    ("s3:bucket/x", "unknown source scheme 's3'"),
    ("sklearn:iris", "unknown sklearn source"),
    ("/no/such/folder", "no such file or folder"),
    ("sklearn:digits-colored?bias=2", "bias must be in"),
    ("sklearn:digits-colored?colour=1", "unknown option"),
])
def test_bad_sources(spec, match, tmp_path):
    with pytest.raises(FactoryError, match=match):
        ingest(spec, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_colored_digits_bias(tmp_path):
    ingest("sklearn:digits-colored?bias=0.8&seed=1", tmp_path / "c")
    ds = Dataset(tmp_path / "c")
    from factory.data.sources import PALETTE

    agree = Counter()
    for s in ds:
        color = s.provenance["attributes"]["color"]
        agree[color == PALETTE[s.label][0]] += 1
        assert s.pil().mode == "RGB"
    rate = agree[True] / len(ds)
    assert 0.76 < rate < 0.84, rate
    assert ds.meta["attributes"]["color"][0] == "red"


def test_split_is_stratified_deterministic_and_disjoint(digits, tmp_path):
    counts = split(digits, tmp_path / "tr", tmp_path / "te", test_fraction=0.25, seed=3)
    tr, te = Dataset(tmp_path / "tr"), Dataset(tmp_path / "te")
    assert counts == {"train": len(tr), "test": len(te)} and len(tr) + len(te) == 1797
    train_keys, test_keys = {s.key for s in tr}, {s.key for s in te}
    assert not train_keys & test_keys
    full = Counter(s.label for s in Dataset(digits))
    test_counts = Counter(s.label for s in te)
    for label, n in full.items():
        assert test_counts[label] == round(n * 0.25)
    split(digits, tmp_path / "tr2", tmp_path / "te2", test_fraction=0.25, seed=3)
    assert (tmp_path / "te" / "shard-000000.tar").read_bytes() == (tmp_path / "te2" / "shard-000000.tar").read_bytes()
    split(digits, tmp_path / "tr3", tmp_path / "te3", test_fraction=0.25, seed=4)
    assert {s.key for s in Dataset(tmp_path / "te3")} != test_keys
    assert te.meta["split_of"]["index_sha256"] == Dataset(digits).index_sha256


def test_split_without_test_draws_only_val(digits, tmp_path):
    """Data with a test set of its own (ingested apart): split draws val alone and writes no test."""
    counts = split(digits, tmp_path / "tr", None, val_out=tmp_path / "va", test_fraction=0.2, val_fraction=0.25,
                   seed=3)
    tr, va = Dataset(tmp_path / "tr"), Dataset(tmp_path / "va")
    assert counts == {"train": len(tr), "val": len(va)} and len(tr) + len(va) == 1797
    assert not {s.key for s in tr} & {s.key for s in va} and not (tmp_path / "te").exists()
    full = Counter(s.label for s in Dataset(digits))
    val_counts = Counter(s.label for s in va)
    assert all(val_counts[label] == round(n * 0.25) for label, n in full.items())
    assert va.meta["test_fraction"] == 0 and va.meta["split"] == "val"


def test_stratified_keys_ignore_input_order():
    pairs = [(f"k{i}", i % 3) for i in range(30)]
    assert stratified_test_keys(pairs, 0.3, 0) == stratified_test_keys(pairs[::-1], 0.3, 0)
    with pytest.raises(FactoryError, match="test fraction"):
        stratified_test_keys(pairs, 1.0, 0)


# -- three splits: train, val, test ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def three_way(digits, tmp_path_factory):
    """digits split three ways with both style axes (as the pipeline does), and the two-way split beside it."""
    root = tmp_path_factory.mktemp("three_way")
    counts = split(digits, root / "train", root / "test", val_out=root / "val", test_fraction=0.2, val_fraction=0.25,
                   seed=5, style=("thickness", "slant"))
    split(digits, root / "train2", root / "test2", test_fraction=0.2, seed=5)
    return root, counts


def test_three_way_split_is_stratified_disjoint_and_keeps_the_test_draw(three_way, digits):
    root, counts = three_way
    tr, va, te = (Dataset(root / n) for n in ("train", "val", "test"))
    assert counts == {"train": len(tr), "val": len(va), "test": len(te)}
    keys = {n: {s.key for s in d} for n, d in (("train", tr), ("val", va), ("test", te))}
    assert not keys["train"] & keys["val"] and not keys["train"] & keys["test"] and not keys["val"] & keys["test"]
    assert sum(map(len, keys.values())) == 1797
    # the test draw is the two-way split's, key for key; val is carved from its train part
    assert keys["test"] == {s.key for s in Dataset(root / "test2")}
    assert keys["train"] | keys["val"] == {s.key for s in Dataset(root / "train2")}
    rest = Counter(s.label for s in Dataset(root / "train2"))
    val_counts = Counter(s.label for s in va)
    for label, n in rest.items():  # stratified: a quarter of each class of the train part
        assert val_counts[label] == round(n * 0.25)
    assert va.meta["split"] == "val" and va.meta["val_fraction"] == 0.25 and tr.meta["split"] == "train"


def test_val_draw_is_deterministic_seeded_and_apart_from_the_test_stream(three_way, digits, tmp_path):
    root, _ = three_way
    split(digits, tmp_path / "tr", tmp_path / "te", val_out=tmp_path / "va", test_fraction=0.2, val_fraction=0.25,
          seed=5, style=("thickness", "slant"))
    for name, again in (("train", "tr"), ("val", "va"), ("test", "te")):  # byte for byte
        assert (root / name / "shard-000000.tar").read_bytes() == (tmp_path / again / "shard-000000.tar").read_bytes()
    val_keys = {s.key for s in Dataset(root / "val")}
    split(digits, tmp_path / "tr6", tmp_path / "te6", val_out=tmp_path / "va6", test_fraction=0.2, seed=6)
    assert {s.key for s in Dataset(tmp_path / "va6")} != val_keys
    # with val_fraction == test_fraction on the same keys, the val stream does not repeat the test draw
    from factory.data.ingest import stratified_val_keys

    pairs = [(f"k{i:03d}", i % 4) for i in range(200)]
    assert stratified_val_keys(pairs, 0.3, 0) != stratified_test_keys(pairs, 0.3, 0)
    assert stratified_val_keys(pairs, 0.3, 0) == stratified_val_keys(pairs[::-1], 0.3, 0)
    tiny = [("a", 0), ("b", 0), ("c", 1)]  # at least one per class on each side where a class has two
    assert len(stratified_val_keys(tiny, 0.01, 0)) == 1 and "c" not in stratified_val_keys(tiny, 0.99, 0)
    with pytest.raises(FactoryError, match="val fraction"):
        stratified_val_keys(pairs, 0.0, 0)


def test_style_levels_on_every_split_fit_on_train_per_class(three_way):
    root, _ = three_way
    levels = {"thickness": {"thin", "medium", "thick"}, "slant": {"left", "upright", "right"}}
    for name in ("train", "val", "test"):
        ds = Dataset(root / name)
        assert ds.meta["style_levels"]["fit_on"] == "train" and ds.meta["style_levels"]["axes"] == ["thickness", "slant"]
        assert ds.meta["attributes"] == {"thickness": ["thin", "medium", "thick"], "slant": ["left", "upright", "right"]}
        for s in ds:
            attrs = s.provenance["attributes"]
            assert set(attrs) == set(levels) and all(attrs[a] in levels[a] for a in levels)
    # each level holds about a third of each class's TRAIN images (tertiles per class)
    cells = Counter((s.class_name, s.provenance["attributes"]["thickness"]) for s in Dataset(root / "train"))
    per_class = Counter(s.class_name for s in Dataset(root / "train"))
    for (cls, _), n in cells.items():
        assert abs(n / per_class[cls] - 1 / 3) < 0.05, (cls, n, per_class[cls])
    edges = Dataset(root / "train").meta["style_levels"]["edges"]
    assert set(edges) == {"*", *per_class} and edges["1"] != edges["0"]


def _thickened(png: bytes) -> bytes:
    """The digit with every stroke grown by a pixel (a max filter): thicker, same class."""
    import io

    a = np.asarray(Image.open(io.BytesIO(png)).convert("L"), dtype=np.uint8)
    grown = a.copy()
    grown[1:], grown[:, 1:] = np.maximum(grown[1:], a[:-1]), np.maximum(grown[:, 1:], grown[:, :-1])
    buf = io.BytesIO()
    Image.fromarray(grown, mode="L").save(buf, format="PNG")
    return buf.getvalue()


def test_style_levels_ignore_val_and_test_images(three_way, digits, tmp_path):
    """Thicken every val and test image: train's edges, records and bytes stay the same; val/test levels move."""
    from factory.core.sample import real_sample
    from factory.core.shards import DatasetWriter

    root, _ = three_way
    held_out = {s.key for n in ("val", "test") for s in Dataset(root / n)}
    full = Dataset(digits)
    with DatasetWriter(tmp_path / "full", full.name, full.classes, 500, full.meta) as w:
        for s in full:
            if s.key in held_out:
                s = real_sample(s.key, _thickened(s.image), s.label, s.class_name, s.provenance["origin"])
            w.write(s)
    split(tmp_path / "full", tmp_path / "train", tmp_path / "test", val_out=tmp_path / "val", test_fraction=0.2,
          val_fraction=0.25, seed=5, style=("thickness", "slant"))
    old, new = Dataset(root / "train"), Dataset(tmp_path / "train")
    assert new.meta["style_levels"] == old.meta["style_levels"]
    assert [s.provenance["attributes"] for s in new] == [s.provenance["attributes"] for s in old]
    before = Counter(s.provenance["attributes"]["thickness"] for s in Dataset(root / "val"))
    after = Counter(s.provenance["attributes"]["thickness"] for s in Dataset(tmp_path / "val"))
    assert after["thick"] > before["thick"] + 0.2 * len(Dataset(root / "val"))  # the change reached val ...
    assert {s.key for s in Dataset(tmp_path / "test")} == {s.key for s in Dataset(root / "test")}  # ... same keys


def test_style_keeps_existing_attributes_and_checks_axes(tmp_path):
    ingest("sklearn:digits-colored?bias=0.5&seed=1", tmp_path / "c")
    split(tmp_path / "c", tmp_path / "tr", tmp_path / "te", val_out=tmp_path / "va", test_fraction=0.2, seed=0,
          style=("slant",))
    s = next(iter(Dataset(tmp_path / "va")))
    assert set(s.provenance["attributes"]) == {"color", "slant"}
    assert set(Dataset(tmp_path / "tr").meta["attributes"]) == {"color", "slant"}
    with pytest.raises(FactoryError, match="style axes"):
        split(tmp_path / "c", tmp_path / "a", tmp_path / "b", test_fraction=0.2, seed=0, style=("boldness",))
    assert not (tmp_path / "a").exists()


def test_split_params():
    from factory.config import SplitParams

    p = SplitParams(style=["thickness", "slant"])
    assert p.val_fraction == 0.2 and p.style == ("thickness", "slant") and SplitParams().style == ()
    for bad, match in (({"val_fraction": 1.0}, "split.val_fraction"), ({"style": ["boldness"]}, "split.style"),
                       ({"style": ["slant", "slant"]}, "unique")):
        with pytest.raises(FactoryError, match=match):
            SplitParams(**bad)


def test_cli_names_an_unreadable_file_and_the_bar_has_a_total(tmp_path, monkeypatch):
    """A corrupt .png in an ImageFolder: one line naming its path (never PIL's ``<_io.BytesIO object ...>``),
    exit 2; with --skip-bad the count and the skip name it. The progress bar gets the number of files."""
    from click.testing import CliRunner

    import factory.cli.data as cli_data
    from factory.cli.main import cli

    for cls, value in (("a", 10), ("b", 200)):
        (tmp_path / "src" / cls).mkdir(parents=True)
        Image.new("L", (8, 8), value).save(tmp_path / "src" / cls / "x.png")
    bad = tmp_path / "src" / "b" / "bad.png"
    bad.write_bytes(b"not an image at all")
    r = CliRunner().invoke(cli, ["ingest", str(tmp_path / "src"), str(tmp_path / "out")])
    assert r.exit_code == 2 and r.stderr.strip().splitlines() == [
        f"Error: {bad}: unreadable image (not an image format PIL knows)"]
    totals = []
    monkeypatch.setattr(cli_data, "progress", lambda items, desc, total=None: totals.append((desc, total)) or items)
    r = CliRunner().invoke(cli, ["ingest", str(tmp_path / "src"), str(tmp_path / "out"), "--skip-bad"])
    assert r.exit_code == 0, r.output
    assert "wrote 2 samples in 1 shard (2 classes)" in r.output and "skipped 1 unreadable image\n" in r.output
    assert f"skipped: {bad}" in r.output and "BytesIO" not in r.output + r.stderr
    assert totals == [("ingest", 3)]
    totals.clear()
    r = CliRunner().invoke(cli, ["ingest", "sklearn:digits", str(tmp_path / "digits")])
    assert r.exit_code == 0 and totals == [("ingest", 1797)]
