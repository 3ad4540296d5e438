"""factory export-hf and the round trip back through ingest hf: real libraries at every edge.

``datasets.load_dataset`` reads the export offline (Image and ClassLabel features), ``huggingface_hub``
parses the card back, ``mlcroissant`` validates croissant.json and reads its records, and ``ingest hf:``
gives back every sample's key, record and image bytes.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image, ImageOps

from factory.cli.main import cli
from factory.core.errors import FactoryError
from factory.core.files import file_sha256
from factory.core.sample import synthetic_sample, with_updates
from factory.core.shards import Dataset, DatasetWriter
from factory.data.ingest import ingest
from factory.data.pools import Component, PoolSpec, build_pool, write_pool
from factory.share.hf_export import export_hf

NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
GENERATOR = {"backend": "embedded", "model": "models/generator", "weights_sha256": "ab" * 32, "scheduler": "dpm",
             "steps": 6, "guidance_scale": 2.0, "negative_guidance": None, "height": 8, "width": 8, "dtype": "float32"}


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture(scope="module")
def real(digits, tmp_path_factory) -> Path:
    """60 real digits, with human class names in the index meta."""
    out = tmp_path_factory.mktemp("real") / "real"
    src = Dataset(digits)
    meta = {"source": "sklearn:digits", "class_names": {c: {"name": n} for c, n in zip(src.classes, NAMES)}}
    with DatasetWriter(out, "digits-small", src.classes, 25, meta) as w:
        for i, s in enumerate(src):
            if i == 60:
                break
            w.write(s)
    return out


@pytest.fixture(scope="module")
def synthetic(real, tmp_path_factory) -> Path:
    """40 curated-like synthetic samples: prompt, seed, generator, scores and decision in every record."""
    root = tmp_path_factory.mktemp("pipeline")
    (root / "dvc.yaml").write_text("stages: {}\n")
    out = root / "data" / "synthetic" / "curated"
    ds = Dataset(real)
    meta = {"plan": {"path": "data/prompts/plan.jsonl", "sha256": "cd" * 32, "rows": 48}, "generator": GENERATOR,
            "parents": [ds.ref()], "generation": 1, "thresholds": {"min_score": 0.5, "min_margin": 0.1},
            "scorer": {"backend": "embedded", "model": "models/clip"}, "class_names": dict(zip(ds.classes, NAMES))}
    (root / "data" / "prompts").mkdir(parents=True)  # the plan's header: the card compares the balance with it
    (root / "data" / "prompts" / "plan.jsonl").write_text(json.dumps({
        "schema": "factory.plan/1", "target": {"images_per_class": 4, "oversample": 1.2,
                                               "attributes": {"thickness": {"thin": 1, "thick": 3}}}}) + "\n")
    with DatasetWriter(out, "digits-synth", ds.classes, 16, meta) as w:
        for i, s in enumerate(ds):
            if i == 40:
                break
            buf = io.BytesIO()
            ImageOps.invert(s.pil().convert("L")).save(buf, format="PNG")
            thick = ("thin", "thick")[i % 2]
            t = synthetic_sample(f"syn-{i:04d}", buf.getvalue(), s.label, s.class_name,
                                 prompt={"text": f"a {thick} handwritten {NAMES[s.label]}", "template": "a {thickness} "
                                         "handwritten {class_name}", "attributes": {"thickness": thick}},
                                 seed=1000 + i, generator=GENERATOR, generation=1, parents=[ds.ref()])
            w.write(with_updates(t, scores={"clip": 0.6 + i / 1000, "clip_margin": 0.2},
                                 decision={"kept": True, "reason": None, "min_score": 0.5, "min_margin": 0.1}))
    (root / "reports").mkdir()
    (root / "reports" / "curate.json").write_text(json.dumps({
        "schema": "factory.curate/1", "dataset": "data/synthetic/raw", "out": "data/synthetic/curated",
        "samples": 48, "kept": 40, "rejected": 8, "reasons": {"kept": 40, "low_clip_score": 5, "over_quota": 3},
        "calibration": {"split": "data/real/val", "n": 20, "percentile": 5.0}}))
    (root / "metrics" / "classifier").mkdir(parents=True)
    (root / "metrics" / "classifier" / "mix.json").write_text(json.dumps({
        "pool": "mix", "synthetic_fraction": 0.4, "n_train": 100, "top1": 0.91, "top1_ci95": [0.88, 0.94]}))
    return out


@pytest.fixture(scope="module")
def pool(real, synthetic, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("pools") / "mix.json"
    write_pool(build_pool(PoolSpec("mix", (Component(dataset=str(real), count=30),
                                           Component(dataset=str(synthetic))), 0)), path)
    return path


def load(out: Path):
    """``load_dataset(OUT_DIR)`` as a user calls it, with a cache of its own: datasets caches a local folder by
    its name and card YAML, so two runs' exports to folders of one name could share cached rows."""
    import datasets

    return datasets.load_dataset(str(out), split="train", cache_dir=str(out.parent / f".{out.name}-cache"))


def test_real_export_loads_with_image_and_classlabel(real, tmp_path):
    import datasets

    s = export_hf(real, tmp_path / "hf", shard_rows=25, results=None)
    assert s.samples == 60 and s.sources == {"real": 60}
    assert s.files == [f"data/train-0000{i}-of-00003.parquet" for i in range(3)]
    assert sorted(p.name for p in (tmp_path / "hf").iterdir()) == ["README.md", "croissant.json", "data"]
    hf = load(tmp_path / "hf")
    assert isinstance(hf.features["image"], datasets.Image)
    assert isinstance(hf.features["label"], datasets.ClassLabel)
    assert hf.features["label"].names == Dataset(real).classes
    originals = list(Dataset(real))
    rows = list(hf.cast_column("image", datasets.Image(decode=False)))
    assert [r["key"] for r in rows] == [o.key for o in originals]
    for r, o in zip(rows, originals):
        assert r["image"]["bytes"] == o.image and r["label"] == o.label
        assert json.loads(r["record"]) == o.provenance
        assert r["class_name"] == NAMES[o.label] and r["class_id"] == o.class_name
        assert r["source"] == "real" and r["generation"] == 0 and r["seed"] is None and r["clip_score"] is None
    assert hf[0]["image"].size == (8, 8)  # decodes as a PIL image


def test_synthetic_export_card_and_croissant(synthetic, tmp_path):
    import mlcroissant as mlc
    from huggingface_hub import DatasetCard

    s = export_hf(synthetic, tmp_path / "hf", license="cc-by-4.0", repo_id="me/digits-synth")
    assert s.results == ["curate", "classifier"]  # found by the dvc.yaml above the dataset
    row = load(tmp_path / "hf")[0]
    assert row["source"] == "synthetic" and row["generation"] == 1 and row["seed"] == 1000
    assert row["prompt"].startswith("a thin handwritten") and row["guidance_scale"] == 2.0
    assert row["clip_score"] == 0.6 and row["parents"] == ["digits-small"]
    assert json.loads(row["attributes"]) == {"thickness": "thin"}

    card = DatasetCard.load(tmp_path / "hf" / "README.md")
    d = card.data.to_dict()
    assert d["license"] == "cc-by-4.0" and "synthetic" in d["tags"] and d["size_categories"] == ["n<1K"]
    assert d["annotations_creators"] == ["machine-generated"] and d["source_datasets"] == ["digits-small"]
    assert d["task_categories"] == ["image-classification"]
    assert d["configs"] == [{"config_name": "default", "data_files": [{"split": "train", "path": "data/train-*"}]}]
    text = card.text
    for expected in ("| embedded | models/generator |", "low_clip_score | 5 |", "over_quota | 3 |",
                     "| mix | 0.4000 | 100 | 0.9100 [0.8800, 0.9400] |", "| 1 | 1 | one |",
                     "factory regenerate data/pulled syn-0000", "load_dataset(\"me/digits-synth\"",
                     "thickness | thick | 20 | 0.500 | 0.7500", "x1.2 so that", "@inproceedings{ho2020ddpm",
                     "@inproceedings{radford2021clip"):
        assert expected in text, expected

    doc = json.loads((tmp_path / "hf" / "croissant.json").read_text())
    assert doc["conformsTo"] == "http://mlcommons.org/croissant/1.0" and doc["isLiveDataset"] is False
    for rai in ("rai:dataCollection", "rai:dataBiases", "rai:dataLimitations", "rai:personalSensitiveInformation",
                "rai:dataCollectionType"):
        assert doc[rai], rai
    assert doc["url"] == "https://huggingface.co/datasets/me/digits-synth"
    cr = mlc.Dataset(jsonld=str(tmp_path / "hf" / "croissant.json"))  # validates, or raises
    records = list(cr.records("samples"))
    assert len(records) == 40 and records[0]["samples/key"] == b"syn-0000"
    assert records[0]["samples/image"].size == (8, 8) and records[0]["samples/seed"] == 1000
    assert json.loads(records[0]["samples/record"])["prompt"]["attributes"] == {"thickness": "thin"}
    classes = sorted((r["classes/label"], r["classes/name"]) for r in cr.records("classes"))
    assert classes[:2] == [(0, "zero"), (1, "one")]


def test_pool_round_trip_gives_back_records_and_bytes(pool, real, synthetic, tmp_path):
    s = export_hf(pool, tmp_path / "hf", results=None)
    assert s.sources == {"real": 30, "synthetic": 40}
    hf = load(tmp_path / "hf")
    assert sorted(set(hf["source"])) == ["real", "synthetic"] and sorted(set(hf["dataset"])) == ["digits-small",
                                                                                                 "digits-synth"]
    summary = ingest(f"hf:{tmp_path / 'hf'}", tmp_path / "back", shard_size=30)
    assert summary.samples == 70
    back = {b.key: b for b in Dataset(tmp_path / "back")}
    originals = {o.key: o for ds in (real, synthetic) for o in Dataset(ds) if o.key in back}
    assert back.keys() == originals.keys()
    for key, o in originals.items():
        assert back[key].provenance == o.provenance and back[key].image == o.image and back[key].label == o.label
    syn = back["syn-0003"].provenance
    assert syn["source"] == "synthetic" and syn["generation"] == 1 and syn["parents"][0]["id"] == "digits-small"
    assert Dataset(tmp_path / "back").meta["class_names"]["1"] == "one"


def test_dataset_round_trip_gives_identical_shards(synthetic, tmp_path):
    export_hf(synthetic, tmp_path / "hf", results=None)
    ingest(f"hf:{tmp_path / 'hf'}:train", tmp_path / "back", shard_size=16)
    assert [file_sha256(p) for p in Dataset(tmp_path / "back").shard_paths()] == [
        file_sha256(p) for p in Dataset(synthetic).shard_paths()]


def test_export_is_deterministic_atomic_and_never_replaces_a_foreign_folder(synthetic, tmp_path):
    export_hf(synthetic, tmp_path / "a", shard_rows=16, results=None)
    export_hf(synthetic, tmp_path / "b", shard_rows=16, results=None)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert len(files) == 5 and all((tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes()
                                   for f in files)
    with pytest.raises(FactoryError, match="pass --overwrite"):
        export_hf(synthetic, tmp_path / "a", results=None)
    export_hf(synthetic, tmp_path / "a", overwrite=True, results=None)  # one of ours: replaced
    assert [p.name for p in (tmp_path / "a" / "data").iterdir()] == ["train-00000-of-00001.parquet"]
    foreign = tmp_path / "notes"
    foreign.mkdir()
    (foreign / "README.md").write_text("my notes\n")
    with pytest.raises(FactoryError, match="is not a factory Hugging Face export; refusing to overwrite"):
        export_hf(synthetic, foreign, overwrite=True, results=None)
    with pytest.raises(FactoryError, match="lies inside"):
        export_hf(synthetic, synthetic / "hf", results=None)
    # a staging folder left by a killed export is cleaned up by the next one
    stale = tmp_path / ".c.partial" / "data"
    stale.mkdir(parents=True)
    (stale / ".train-00000.parquet.part").write_bytes(b"half")
    export_hf(synthetic, tmp_path / "c", results=None)
    assert not (tmp_path / ".c.partial").exists() and sorted(p.name for p in tmp_path.iterdir()) == [
        "a", "b", "c", "notes"]


def test_cli_export_json_and_errors(synthetic, tmp_path):
    r = run("export-hf", synthetic, tmp_path / "hf", "--json", "--results", "none", "--shard-rows", "25")
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert out["samples"] == 40 and out["files"] == ["data/train-00000-of-00002.parquet",
                                                     "data/train-00001-of-00002.parquet"]
    r = run("export-hf", tmp_path / "nope", tmp_path / "hf2")
    assert r.exit_code == 2 and r.output.count("\n") == 1 and "no such dataset folder or pool file" in r.output
    r = run("export-hf", synthetic, tmp_path / "hf3", "--license", "my license")
    assert r.exit_code == 2 and "--license" in r.output
    assert "Example: factory export-hf" in run("export-hf", "--help").output


def test_unknown_hf_name_fails_at_once_in_one_line(tmp_path):
    t0 = time.monotonic()
    with pytest.raises(FactoryError, match="not in the Hugging Face cache"):
        ingest("hf:nobody/no-such-dataset", tmp_path / "out")
    assert time.monotonic() - t0 < 5
    # the command line, with the network allowed (no HF_HUB_OFFLINE): still no network call, one line, exit 2
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")}
    env["HF_HOME"] = str(tmp_path / "hf-home")
    t0 = time.monotonic()
    p = subprocess.run([sys.executable, "-m", "factory.cli.main", "ingest", "hf:nobody/no-such-dataset",
                        str(tmp_path / "out")], capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 2 and p.stdout == "" and p.stderr.count("\n") == 1, p.stderr
    assert "not in the Hugging Face cache" in p.stderr and time.monotonic() - t0 < 20
    assert not (tmp_path / "out").exists()


def test_column_options_for_plain_hub_datasets(tmp_path):
    import datasets

    pngs = []
    for v in (0, 80, 160, 240):
        buf = io.BytesIO()
        Image.new("L", (8, 8), v).save(buf, format="PNG")
        pngs.append(buf.getvalue())
    dset = datasets.Dataset.from_dict({"picture": pngs * 2, "digit": [3, 7, 3, 9, 7, 3, 9, 9],
                                       "kind": ["cat", "dog"] * 4, "other": ["x"] * 8})
    dset.save_to_disk(tmp_path / "plain")
    spec = f"hf:{tmp_path / 'plain'}"
    with pytest.raises(FactoryError, match="no Image column .* name one with --image-column"):
        ingest(spec, tmp_path / "o0")
    with pytest.raises(FactoryError, match="no ClassLabel column .* name one with --label-column"):
        ingest(spec, tmp_path / "o0", image_column="picture")
    with pytest.raises(FactoryError, match="--label-column 'nope': no such column"):
        ingest(spec, tmp_path / "o0", image_column="picture", label_column="nope")
    with pytest.raises(FactoryError, match="is not an image column"):
        ingest(spec, tmp_path / "o0", image_column="digit", label_column="kind")
    with pytest.raises(FactoryError, match="applies to hf: sources only"):
        ingest("sklearn:digits", tmp_path / "o0", label_column="digit")
    s = ingest(spec, tmp_path / "o1", image_column="picture", label_column="digit")
    assert s.classes == {"3": 3, "7": 2, "9": 3}
    out = list(Dataset(tmp_path / "o1"))
    assert [o.label for o in out] == [0, 1, 0, 2, 1, 0, 2, 2] and out[1].image == pngs[1]
    r = run("ingest", spec, tmp_path / "o2", "--image-column", "picture", "--label-column", "kind")
    assert r.exit_code == 0, r.output
    assert Dataset(tmp_path / "o2").classes == ["cat", "dog"]


def test_tampered_export_fails_naming_the_row(synthetic, tmp_path):
    import datasets

    export_hf(synthetic, tmp_path / "hf", results=None)
    hf = load(tmp_path / "hf").cast_column("image", datasets.Image(decode=False))
    bad = hf.map(lambda r, i: {"image": {"bytes": pngs_flip(r["image"]["bytes"]), "path": r["image"]["path"]}}
                 if i == 2 else {}, with_indices=True)
    bad.save_to_disk(tmp_path / "bad")
    with pytest.raises(FactoryError, match=r"row 2 \(syn-0002\): image bytes do not match the record's sha256"):
        ingest(f"hf:{tmp_path / 'bad'}", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    s = ingest(f"hf:{tmp_path / 'bad'}", tmp_path / "out", skip_bad=True)
    assert s.samples == 39 and "row 2" in s.skipped[0]


def pngs_flip(data: bytes) -> bytes:
    im = Image.open(io.BytesIO(data))
    buf = io.BytesIO()
    ImageOps.invert(im.convert("L")).save(buf, format="PNG")
    return buf.getvalue()


def test_hub_name_in_the_cache_round_trips(synthetic, tmp_path, monkeypatch):
    """hf:OWNER/NAME of an export pushed to the Hub and downloaded into the hub cache: read from its snapshot,
    offline, every sample as it was."""
    import shutil

    from huggingface_hub import constants

    export_hf(synthetic, tmp_path / "hf", results=None)
    cache = tmp_path / "hub"
    repo = cache / "datasets--me--digits-synth"
    commit = hashlib.sha1(str(tmp_path).encode()).hexdigest()  # a commit names its content (datasets caches by it)
    shutil.copytree(tmp_path / "hf", repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    summary = ingest("hf:me/digits-synth:train", tmp_path / "back")
    assert summary.samples == 40
    back, original = list(Dataset(tmp_path / "back")), list(Dataset(synthetic))
    assert [b.provenance for b in back] == [o.provenance for o in original]
    assert [b.image for b in back] == [o.image for o in original]
    assert Dataset(tmp_path / "back").meta["source"] == "hf:me/digits-synth:train"
