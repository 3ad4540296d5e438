"""The photo pipeline (examples/imagenette), run for real with ``dvc repro`` in a temporary copy of the
repository: real JPEGs of imagenette-mini in (a few per class), random-weight stand-in models built by its
``random_models`` stage, the diffusers generator, the open_clip scorer, ResNet-18 pools, evaluation, report."""

import io
import json
import shutil
import sys
from pathlib import Path

import pytest
from PIL import Image

from factory.core.shards import Dataset
from factory.data.inspection import verify

sys.path.insert(0, str(Path(__file__).parent))
from test_pipeline import copy_repo, dvc  # noqa: E402

PHOTOS = Path(__file__).resolve().parents[2] / "shared" / "data" / "imagenette-mini"
pytestmark = [pytest.mark.slow, pytest.mark.skipif(not PHOTOS.is_dir(), reason="../shared/data/imagenette-mini")]
TRAIN_PER_CLASS, TEST_PER_CLASS = 8, 4


def photo_subset(dest: Path) -> tuple[Path, Path]:
    """The first files of each class folder of imagenette-mini's train and test (byte-identical copies)."""
    for split, n in (("train", TRAIN_PER_CLASS), ("test", TEST_PER_CLASS)):
        for folder in sorted((PHOTOS / split).iterdir()):
            (dest / split / folder.name).mkdir(parents=True)
            for f in sorted(folder.iterdir())[:n]:
                shutil.copy2(f, dest / split / folder.name / f.name)
    return dest / "train", dest / "test"


def shrink(params_file: Path, train: Path, test: Path) -> None:
    import yaml

    p = yaml.safe_load(params_file.read_text())
    p["ingest"].update(source=str(train), test_source=str(test))
    p["split"]["val_fraction"] = 0.25
    p["plan"].update(images_per_class=4, images_per_prompt=2, oversample=1.5)
    p["generate"].update(steps=2, batch_size=6, shard_size=30)
    p["classifier"].update(steps=2, batch_size=16, eval_every=2, shuffle_buffer=16)
    p["evaluate"].update(k=2, draws=1, bootstrap=10, reference_epochs=1)
    params_file.write_text(yaml.safe_dump(p, sort_keys=False))


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    repo = copy_repo(tmp_path_factory.mktemp("repo"))
    train, test = photo_subset(tmp_path_factory.mktemp("imagenette"))
    shrink(repo / "examples/imagenette/params.yaml", train, test)
    p = dvc(repo, "repro", "examples/imagenette/dvc.yaml")
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return repo / "examples/imagenette", p.stdout


def test_photos_are_ingested_with_their_class_names(photos):
    root, out = photos
    full, test = Dataset(root / "data/real/full"), Dataset(root / "data/real/test")
    assert len(full) == 10 * TRAIN_PER_CLASS and len(test) == 10 * TEST_PER_CLASS
    assert full.classes[0] == "n01440764" and full.meta["class_names"]["n01440764"]["name"] == "tench"
    assert "n01440764 (tench)" in out  # the ingest stage shows the names
    s = next(iter(test))
    src = PHOTOS / "test" / s.provenance["class_name"]
    assert any(f.read_bytes() == s.image for f in src.iterdir())  # the JPEG bytes, untouched
    train, val = Dataset(root / "data/real/train"), Dataset(root / "data/real/val")
    assert len(train) + len(val) == len(full) and len(val) == 10 * 2  # val from train; test ingested apart
    assert not {x.key for x in train} & {x.key for x in val}
    for d in (full, test, train, val):
        assert verify(d.path).ok


def test_the_plan_prompts_with_names_and_varied_templates(photos):
    root, _ = photos
    lines = (root / "data/prompts/plan.jsonl").read_text().splitlines()
    header, rows = json.loads(lines[0]), [json.loads(x) for x in lines[1:]]
    assert header["negative_prompt"].startswith("text, watermark")
    assert len(rows) == 10 * 6
    assert not any("n0" in r["text"] for r in rows)  # no WordNet id reaches a prompt
    tench = [r["text"] for r in rows if r["class_name"] == "n01440764"]
    assert len({r["template"] for r in rows if r["class_name"] == "n01440764"}) >= 3
    assert any("tench" in t or "Tinca tinca" in t for t in tench)


def test_synthetic_photos_carry_provenance_from_the_diffusers_backend(photos):
    root, _ = photos
    raw = Dataset(root / "data/synthetic/raw")
    assert len(raw) == 60 and verify(raw.path).ok
    sd = json.loads((root / "models/sd/random_weights.json").read_text())
    assert sd["random_weights"] and sd["arch"] == "photo32"
    for s in raw:
        g = s.provenance["generator"]
        assert g["backend"] == "diffusers" and g["pipeline"] == "StableDiffusionPipeline"
        # the provenance contract's negative_guidance: a diffusers negative prompt is its string
        assert g["negative_guidance"].startswith("text, watermark") and g["weights_sha256"]
        assert Image.open(io.BytesIO(s.image)).size == (32, 32)
        assert s.provenance["parents"] == []  # a pretrained generator was not trained on any dataset of ours
        assert s.provenance["prompt"]["text"] and "{" not in s.provenance["prompt"]["text"]
    # the shards read back with webdataset, as any consumer reads them
    import webdataset as wds

    shards = sorted(str(p) for p in (root / "data/synthetic/raw").glob("*.tar"))
    first = next(iter(wds.WebDataset(shards, shardshuffle=False)))
    assert {"png", "json"} <= set(first)


def test_curation_uses_the_open_clip_scorer_and_its_own_preprocessing(photos):
    root, _ = photos
    report = json.loads((root / "reports/curate.json").read_text())
    scorer = report["scorer"]
    assert scorer["backend"] == "open_clip" and scorer["model"] == "factory-photo32"
    assert scorer["preprocess_source"].endswith("open_clip_config.json") and scorer["preprocess"]["size"] == [32, 32]
    cal = report["calibration"]  # prompt-only attributes (background...): real val scored with its best caption
    assert cal["split"] == "data/real/val" and cal["n"] == 20 and set(cal["captions"]["attributes"]) == {
        "background", "lighting", "viewpoint"}
    curated = Dataset(root / "data/synthetic/curated")
    assert report["kept"] == len(curated) and len(curated) > 0


def test_pools_mix_photos_and_synthetic_images_and_the_report_says_random_weights(photos):
    root, _ = photos
    pool = json.loads((root / "data/pools/real_synthetic.json").read_text())
    assert 0 < pool["synthetic_fraction"] < 1
    for name in ("real", "synthetic", "real_synthetic"):
        m = json.loads((root / f"metrics/classifier/{name}.json").read_text())
        assert m["arch"] == "resnet18" and m["n_test"] == 40 and 0 <= m["top1"] <= 1
    ev = json.loads((root / "metrics/evaluate.json").read_text())
    assert set(ev["datasets"]) == {"raw", "curated"} and ev["views"]["clip"]["backend"] == "open_clip"
    md = (root / "reports/results.md").read_text()
    assert md.splitlines()[2].startswith("> **Random weights.**")
    assert "| real_synthetic |" in md
    html = (root / "reports/index.html").read_text()
    assert "Random weights." in html
    rows = {f.stem for f in (root / "metrics/summary/classifier").glob("*.json")}
    assert rows == {"real", "synthetic", "real_synthetic"}  # the compact DVC metrics
    assert json.loads((root / "metrics/summary/evaluate/floor.json").read_text())["fd"] >= 0
    p = dvc(root.parent.parent, "status", "examples/imagenette/dvc.yaml")
    assert p.returncode == 0 and "up to date" in p.stdout, p.stdout
