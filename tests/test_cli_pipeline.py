"""A command for every pipeline step (factory generate, curate, pool, train-classifier, train-contrastive,
evaluate) on tiny inputs: what each writes is what the library writes, settings from --config (a params.yaml or
one section) under --set under the options, one-line errors with exit code 2, a real subprocess."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from factory.cli.main import cli
from factory.config import GenerateConfig, PlanConfig, load_section
from factory.core.errors import FactoryError
from factory.core.shards import Dataset, DatasetWriter
from factory.data.inspection import verify
from factory.data.pools import read_pool
from factory.generate.plans import build_plan, write_plan
from factory.generate.tasks import generate

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def run(*args):
    r = CliRunner().invoke(cli, [str(a) for a in args])
    assert r.exception is None or isinstance(r.exception, SystemExit), r.output
    return r


def ok_json(*args):
    r = run(*args, "--json")
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def shard_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def write_yaml(path: Path, data) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory, digits_split, generator_dir):
    """The inputs: real train and test, a small real val (200 train images), a plan (10 classes x 3 images)."""
    root = tmp_path_factory.mktemp("cli_pipeline")
    train, test = digits_split
    source = Dataset(train)
    with DatasetWriter(root / "val", "val", source.classes, shard_size=100) as w:
        for i, s in enumerate(source):
            if i == 200:
                break
            w.write(s)
    plan = build_plan(PlanConfig(images_per_class=3, images_per_prompt=3,
                                 templates=("a photo of the digit {class_name}",)), source.classes)
    return {"root": root, "train": train, "test": test, "val": root / "val", "generator": generator_dir,
            "plan": write_plan(plan, root / "plan.jsonl")}


@pytest.fixture(scope="module")
def raw(files):
    """factory generate with a whole params file, --set over it and an option over both."""
    root = files["root"]
    params = write_yaml(root / "params.yaml", {"base": {"seed": 0}, "generate": {
        "steps": 3, "guidance_scale": 1.5, "scheduler": "ddim", "batch_size": 8, "shard_size": 16}})
    summary = ok_json("generate", files["plan"], files["generator"], root / "raw", "--config", params,
                      "--set", "steps=2", "--set", "guidance_scale=9", "--guidance-scale", 2.5)
    return root / "raw", summary


def test_generate_writes_what_the_library_writes_with_config_set_and_option(raw, files, tmp_path):
    out, summary = raw
    assert summary["samples"] == 30 and summary["shards"] == 2 and summary["resumed_shards"] == 0
    assert verify(out).ok
    rec = next(iter(Dataset(out))).provenance
    # steps: --set over the file; guidance: the option over --set; scheduler: the file's (not the default dpm)
    assert (rec["generator"]["steps"], rec["generator"]["guidance_scale"], rec["generator"]["scheduler"]) == (
        2, 2.5, "ddim")
    cfg = GenerateConfig(model=str(files["generator"]), steps=2, guidance_scale=2.5, scheduler="ddim", batch_size=8,
                         shard_size=16)
    generate(files["plan"], tmp_path / "lib", cfg)
    assert shard_bytes(out) == shard_bytes(tmp_path / "lib")


def test_generate_shows_a_bar_with_a_total_on_a_terminal(files, monkeypatch, tmp_path):
    monkeypatch.setattr("factory.cli.pipeline.on_terminal", lambda: True)
    r = run("generate", files["plan"], files["generator"], tmp_path / "o", "--steps", 1, "--batch-size", 16)
    assert r.exit_code == 0, r.output
    assert "generate" in r.stderr and "30/30" in r.stderr  # a total, so tqdm shows the ETA
    assert "generated 30 samples in 1 shard -> " in r.stdout


@pytest.fixture(scope="module")
def curated(files, raw, clip_dir):
    """factory curate with a file holding only the curate section, an option over it."""
    root = files["root"]
    section = write_yaml(root / "curate.yaml", {"max_distance": 2, "percentile": 10})
    summary = ok_json("curate", raw[0], root / "curated", "--config", section, "--percentile", 20,
                      "--scorer", f"embedded:{clip_dir}", "--calibrate-on", files["val"],
                      "--against", files["test"], "--report-against", files["train"], "--plan", files["plan"],
                      "--rejected", root / "rejected", "--report", root / "curate.json")
    return root / "curated", summary


def test_curate_writes_the_curated_and_rejected_sets_and_the_report(curated, files):
    out, summary = curated
    report = json.loads((files["root"] / "curate.json").read_text())
    assert summary["samples"] == 30 == summary["kept"] + summary["rejected"]
    assert summary["kept"] == report["kept"] == len(Dataset(out)) and summary["reasons"] == report["reasons"]
    assert len(Dataset(files["root"] / "rejected")) == summary["rejected"]
    assert verify(out).ok
    assert report["calibration"]["percentile"] == 20  # the option over the file's 10
    assert report["dedup"]["config"]["max_distance"] == 2  # the file's
    assert report["memorization_rate"] is not None  # --report-against was checked
    rec = next(iter(Dataset(out))).provenance
    assert rec["decision"]["kept"] is True and set(rec["scores"]) >= {"clip", "clip_margin"}


def test_pool_from_options_and_from_a_params_file(curated, files, tmp_path):
    summary = ok_json("pool", "mix", tmp_path / "mix.json", "--dataset", f"{files['train']},per_class=5",
                      "--dataset", curated[0])
    pool = read_pool(tmp_path / "mix.json")
    kept = curated[1]["kept"]
    assert summary["samples"] == pool["samples"] == 50 + kept
    assert pool["sources"] == summary["sources"] == {"real": 50, "synthetic": kept}
    params = write_yaml(tmp_path / "params.yaml", {"base": {"seed": 3}, "pools": {
        "small": [{"dataset": str(files["train"]), "count": 20}]}})
    r = run("pool", "small", tmp_path / "small.json", "--config", params)
    assert r.exit_code == 0 and "pool small: 20 samples (20 real, 0 synthetic" in r.stdout
    assert read_pool(tmp_path / "small.json")["seed"] == 3  # base.seed, as the stage reads it


@pytest.fixture(scope="module")
def pool_file(files, curated):
    out = files["root"] / "pool.json"
    assert run("pool", "mix", out, "--dataset", f"{files['train']},per_class=8", "--dataset", curated[0]).exit_code == 0
    return out


def test_train_classifier_on_a_pool_and_on_a_dataset_folder(pool_file, curated, files, tmp_path):
    from factory.core.timings import split_timings
    from factory.data.pools import dataset_pool
    from factory.train.classifier import train_classifier_seeds

    summary = ok_json("train-classifier", pool_file, "--test", files["test"], "--out", tmp_path / "m.json",
                      "--timings", tmp_path / "t.json", "--seeds", "0,1", "--set", "steps=4", "--set", "eval_every=2")
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert summary["pool"] == metrics["pool"] == "mix" and metrics["seeds"] == [0, 1]
    assert len(metrics["top1_per_seed"]) == 2 and all(0 <= t <= 1 for t in metrics["top1_per_seed"])
    assert 0 <= metrics["top1_mean"] <= 1 and metrics["steps"] == 4 and "seconds" not in metrics
    assert json.loads((tmp_path / "t.json").read_text())["seconds"] > 0

    r = run("train-classifier", curated[0], "--test", files["test"], "--out", tmp_path / "d.json", "--seeds", "0",
            "--steps", 3)
    assert r.exit_code == 0 and r.stdout.startswith(f"curated: top-1 on {files['test']} "), r.output
    cfg = load_section("classifier", None, {"steps": 3, "seeds": [0]})
    lib = split_timings(train_classifier_seeds(dataset_pool(curated[0]), files["test"], cfg))[0]
    assert json.loads((tmp_path / "d.json").read_text()) == json.loads(json.dumps(lib))
    assert lib["synthetic_fraction"] == 1.0


def test_train_contrastive_on_a_dataset_folder(raw, files, tmp_path):
    summary = ok_json("train-contrastive", raw[0], "--train", files["val"], "--test", files["test"],
                      "--out", tmp_path / "c.json", "--method", "simclr", "--method", "stablerep", "--seeds", "0",
                      "--steps", 2, "--set", "train.batch_size=32", "--set", "train.width=8",
                      "--set", "train.embed_dim=16")
    metrics = json.loads((tmp_path / "c.json").read_text())
    assert set(summary["methods"]) == set(metrics["methods"]) == {"simclr", "stablerep"}
    assert metrics["config"]["steps"] == 2 and metrics["config"]["width"] == 8 and metrics["seeds"] == [0]
    simclr = metrics["methods"]["simclr"]
    assert 0 <= simclr["top1"] <= 1 and 0 <= simclr["top1_10shot"] <= 1 and "seconds" not in simclr
    stablerep = metrics["methods"]["stablerep"]  # the plan makes 3 images per prompt: 10 groups
    assert 0 <= stablerep["top1"] <= 1 and stablerep["groups"] == 10
    assert metrics["pool"] == "raw" and metrics["synthetic_fraction"] == 1.0


def test_evaluate(raw, files, clip_dir, tmp_path):
    summary = ok_json("evaluate", "--dataset", f"raw={raw[0]}", "--cas", "raw", "--reference", files["test"],
                      "--train", files["train"], "--floor", files["val"], "--encoder-path", clip_dir,
                      "--draws", 1, "--bootstrap", 0, "--set", "k=3", "--set", "reference_epochs=1",
                      "--set", "classifier.steps=3", "--set", "classifier.seeds=[0]",
                      "--out", tmp_path / "e.json", "--plot", tmp_path / "p.json")
    metrics = json.loads((tmp_path / "e.json").read_text())
    assert list(metrics["datasets"]) == list(summary["datasets"]) == ["raw"] and metrics["n"] == 30
    d = metrics["datasets"]["raw"]
    assert d["fd"] >= 0 and 0 <= d["recognition"] <= 1 and 0 <= d["cas"] <= 1 and d["cas_seeds"] == [0]
    assert summary["datasets"]["raw"]["cas"] == d["cas"] and "seconds" not in metrics
    rows = json.loads((tmp_path / "p.json").read_text())
    assert [(r["dataset"], r["guidance_scale"]) for r in rows] == [("raw", 2.5)]


@pytest.mark.parametrize("args, culprit", [
    (["generate", "{plan}", "{model}", "{tmp}/o", "--config", "{tmp}/bad.yaml"], "generate.stepz: unknown parameter"),
    (["generate", "{plan}", "{model}", "{tmp}/o", "--set", "stepz=3"], "--set: generate.stepz: unknown parameter"),
    (["generate", "{plan}", "{model}", "{tmp}/o", "--steps", "0"], "generate.steps: must be >= 1"),
    (["generate", "{plan}", "{model}", "{tmp}/o", "--config", "{tmp}/none.yaml"], "none.yaml: no such params file"),
    (["generate", "{tmp}/nope.jsonl", "{model}", "{tmp}/o"], "nope.jsonl"),
    (["curate", "{tmp}/raw", "{tmp}/o"], "give --calibrate-on"),
    (["pool", "p", "{tmp}/p.json", "--dataset", "{tmp}/d,counts=3"], "must be one of count, fraction, per_class"),
    (["pool", "p", "{tmp}/p.json"], "pool 'p': give --dataset"),
    (["train-classifier", "{tmp}/nope.json", "--test", "{tmp}/t", "--out", "{tmp}/m.json"], "no such pool file"),
    (["train-classifier", "{tmp}/nope.json", "--test", "{tmp}/t", "--out", "{tmp}/m.json", "--seeds", "a"], "--seeds"),
    (["train-contrastive", "{tmp}/p.json", "--train", "{tmp}/a", "--test", "{tmp}/t", "--out", "{tmp}/m.json",
      "--method", "byol"], "contrastive.methods"),
    (["evaluate", "--dataset", "raw", "--out", "{tmp}/e.json"], "use NAME=DIR"),
    (["evaluate", "--dataset", "a={tmp}", "--cas", "b", "--out", "{tmp}/e.json"], "evaluate.cas"),
])
def test_bad_input_is_one_line_and_exit_2(args, culprit, files, tmp_path):
    write_yaml(tmp_path / "bad.yaml", {"generate": {"steps": 3, "stepz": 4}})
    args = [a.format(tmp=tmp_path, plan=files["plan"], model=files["generator"]) for a in args]
    r = run(*args)
    assert r.exit_code == 2, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and culprit in lines[0], r.stderr
    assert "Traceback" not in r.output


def test_a_section_file_or_a_whole_params_file():
    assert load_section("contrastive", None).pools == []
    with pytest.raises(FactoryError, match="--set steps.x: generate.steps is not a mapping"):
        load_section("generate", None, {"steps": 3, "steps.x": 1})


def test_section_file_detection(tmp_path):
    # an evaluate section may hold just a classifier key, a contrastive one a pools key: still sections
    ev = load_section("evaluate", write_yaml(tmp_path / "e.yaml", {"classifier": {"steps": 7}}))
    assert ev.classifier.steps == 7
    co = load_section("contrastive", write_yaml(tmp_path / "c.yaml", {"pools": ["real"], "methods": ["simclr"]}))
    assert co.pools == ["real"]
    whole = load_section("contrastive", write_yaml(tmp_path / "w.yaml", {"base": {"seed": 5}, "classifier": {}}))
    assert whole.train.seed == 5  # a whole params file without the section: its defaults, seeded by base.seed


def test_help_of_every_step_has_an_example():
    names = ["generate", "curate", "pool", "train-classifier", "train-contrastive", "evaluate"]
    listed = run("--help").stdout
    for name in names:
        assert f"  {name} " in listed
        r = run(name, "--help")
        assert r.exit_code == 0 and "Example" in r.stdout and "--config" in r.stdout and "--set" in r.stdout


def test_real_subprocess(curated, files, tmp_path):
    exe = Path(sys.executable).parent / "factory"
    p = subprocess.run([exe, "pool", "syn", tmp_path / "syn.json", "--dataset", curated[0], "--json"],
                       capture_output=True, text=True, env=dict(os.environ))
    assert p.returncode == 0 and p.stderr == "", p.stderr  # quiet when not on a terminal
    assert json.loads(p.stdout)["synthetic_fraction"] == 1.0
    p = subprocess.run([exe, "generate", files["plan"], files["generator"], tmp_path / "o", "--set", "steps=-1"],
                       capture_output=True, text=True, env=dict(os.environ))
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "generate.steps: must be >= 1" in p.stderr
