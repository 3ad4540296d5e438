"""Generation: the stage's engine with real (tiny) models; kill-and-resume; Ray; regenerate."""

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from factory.cli.main import cli
from factory.core.errors import FactoryError
from factory.core.shards import Dataset
from factory.data.inspection import verify
from factory.generate.plans import AttributeAxis, PlanConfig, build_plan, write_plan
from factory.generate.tasks import GenerateConfig, GeneratorSpec, generate


@pytest.fixture(scope="module")
def tiny_generator(generator_dir):
    """The shared tiny generator (conftest.py), trained on the digits train split."""
    return generator_dir


@pytest.fixture(scope="module")
def plan_file(tmp_path_factory, digits_split):
    plan = build_plan(PlanConfig(images_per_class=6, images_per_prompt=2, classes=("1", "4", "7"),
                                 templates=("a photo of a {class_name}",)), Dataset(digits_split[0]).classes)
    return write_plan(plan, tmp_path_factory.mktemp("plan") / "plan.jsonl")


def config(model, **kw) -> GenerateConfig:
    kw = {"guidance_scale": 2.0, "shard_size": 5, **kw}
    return GenerateConfig(backend="embedded", model=str(model), steps=4, batch_size=4, **kw)


def shard_bytes(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(path.iterdir())}


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_generator, plan_file):
    out = tmp_path_factory.mktemp("ref") / "raw"
    summary = generate(plan_file, out, config(tiny_generator))
    assert summary.samples == 18 and summary.shards == 4 and summary.resumed_shards == 0
    return out


def test_generated_dataset_and_provenance(reference, tiny_generator, digits_split):
    assert verify(reference).ok
    ds = Dataset(reference)
    assert ds.index["counts"] == {"0": 0, "1": 6, "2": 0, "3": 0, "4": 6, "5": 0, "6": 0, "7": 6, "8": 0, "9": 0}
    s = next(iter(ds))
    rec = s.provenance
    assert rec["source"] == "synthetic" and rec["generation"] == 1
    assert rec["parents"][0]["index_sha256"] == Dataset(digits_split[0]).index_sha256
    assert rec["prompt"]["text"] == "a photo of a 1" and rec["group"].startswith("1-g")
    g = rec["generator"]
    assert g["backend"] == "embedded" and g["steps"] == 4 and g["guidance_scale"] == 2.0
    assert g["weights_sha256"] == __import__("hashlib").sha256(
        (tiny_generator / "model.safetensors").read_bytes()).hexdigest()
    assert s.pil().size == (8, 8)
    assert not list(reference.parent.glob(".*partial"))


def test_same_inputs_same_bytes(reference, tiny_generator, plan_file, tmp_path):
    generate(plan_file, tmp_path / "again", config(tiny_generator))
    assert shard_bytes(tmp_path / "again") == shard_bytes(reference)


@pytest.mark.slow
def test_kill_and_resume_gives_identical_dataset(reference, tiny_generator, plan_file, tmp_path):
    out = tmp_path / "raw"
    script = textwrap.dedent(f"""
        from factory.generate.tasks import GenerateConfig, generate
        import time, factory.generate.tasks as g
        original = g.run_task
        def slow(*a, **k):
            info = original(*a, **k)
            time.sleep(0.5)
            return info
        g.run_task = slow
        cfg = GenerateConfig(backend="embedded", model={str(tiny_generator)!r}, guidance_scale=2.0, steps=4,
                             batch_size=4, shard_size=5)
        generate({str(plan_file)!r}, {str(out)!r}, cfg)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script])
    staging = tmp_path / ".raw.partial"
    deadline = time.time() + 120
    while time.time() < deadline and len(list(staging.glob("shard-*.tar"))) < 2:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = sorted(p.name for p in staging.glob("shard-*.tar"))
    assert 2 <= len(done) < 4, done
    assert not out.exists()
    before = {n: (staging / n).stat().st_mtime_ns for n in done}
    summary = generate(plan_file, out, config(tiny_generator))
    assert summary.resumed_shards == len(done) and summary.generated_shards == 4 - len(done)
    assert shard_bytes(out) == shard_bytes(reference)
    for n, mtime in before.items():  # a finished shard is never redone
        assert (out / n).stat().st_mtime_ns == mtime


def test_stale_work_for_other_inputs_is_discarded(reference, tiny_generator, plan_file, tmp_path):
    out = tmp_path / "raw"
    staging = tmp_path / ".raw.partial"
    staging.mkdir()
    (staging / "run.json").write_text(json.dumps({"plan_sha256": "something else"}))
    (staging / "shard-000000.tar").write_bytes(b"stale")
    generate(plan_file, out, config(tiny_generator))
    assert shard_bytes(out) == shard_bytes(reference)


@pytest.mark.slow
def test_ray_executor_equals_local(reference, tiny_generator, plan_file, tmp_path, capfd):
    pytest.importorskip("ray")
    from factory.config import RayConfig

    cfg = config(tiny_generator, executor="ray", ray=RayConfig(num_cpus=2))
    capfd.readouterr()
    generate(plan_file, tmp_path / "ray", cfg)
    assert shard_bytes(tmp_path / "ray") == shard_bytes(reference)
    err = capfd.readouterr().err  # Ray's start-up banner would cut through the progress bar
    assert "Ray instance" not in err and "Token authentication" not in err, err


def test_regenerate_matches_and_detects_changes(reference, tiny_generator, tmp_path):
    key = list(Dataset(reference))[7].key
    r = CliRunner().invoke(cli, ["regenerate", str(reference), key, str(tmp_path / "x.png")])
    assert r.exit_code == 0, r.output
    assert "match" in r.output
    assert (tmp_path / "x.png").read_bytes() == Dataset(reference).find(key).image
    # a generator with different weights cannot rebuild it: exit 1, and the reason is named
    other = tmp_path / "other"
    shutil.copytree(tiny_generator, other)
    from safetensors.torch import load_file, save_file

    state = load_file(str(other / "model.safetensors"))
    name = sorted(state)[0]
    state[name] = state[name] + 0.5
    save_file(state, str(other / "model.safetensors"))
    r = CliRunner().invoke(cli, ["regenerate", str(reference), key, str(tmp_path / "y.png"), "--model", str(other)])
    assert r.exit_code == 1 and "weights differ" in r.output
    r = CliRunner().invoke(cli, ["regenerate", str(reference), "nope", str(tmp_path / "z.png")])
    assert r.exit_code == 2 and "nope" in r.stderr


def test_bad_inputs_fail_before_generating(tiny_generator, plan_file, tmp_path, digits_split):
    with pytest.raises(FactoryError, match="no such generator folder"):
        generate(plan_file, tmp_path / "o", config(tmp_path / "missing"))
    with pytest.raises(FactoryError, match=r"^generate.guidance_scale: must be >= 0 \(got -1\)$"):
        config(tiny_generator, guidance_scale=-1)
    with pytest.raises(FactoryError, match="backend"):
        GeneratorSpec("dalle", "x")
    colour_plan = build_plan(PlanConfig(images_per_class=2, attributes=(AttributeAxis.make("color", ["red"]),)),
                             Dataset(digits_split[0]).classes)
    write_plan(colour_plan, tmp_path / "colour.jsonl")
    with pytest.raises(FactoryError, match="attribute 'color' is unknown"):
        generate(tmp_path / "colour.jsonl", tmp_path / "o", config(tiny_generator))
    letters = build_plan(PlanConfig(images_per_class=2), ["a", "b"])
    write_plan(letters, tmp_path / "letters.jsonl")
    with pytest.raises(FactoryError, match="plan class 'a'"):
        generate(tmp_path / "letters.jsonl", tmp_path / "o", config(tiny_generator))
    assert not (tmp_path / "o").exists() and not (tmp_path / ".o.partial").exists()


def test_diffusers_backend_through_generate_and_regenerate(tmp_path, digits_split):
    """The production path end to end: a tiny random SD pipeline saved to a folder, loaded back."""
    import torch

    from factory.generate.random_sd import build_sd

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = build_sd(tmp_path / "sd", "tiny")
        plan = build_plan(PlanConfig(images_per_class=3, images_per_prompt=3, classes=("2", "5"),
                                     templates=("a photo of the digit {class_name}",)),
                          Dataset(digits_split[0]).classes)
        write_plan(plan, tmp_path / "plan.jsonl")
        cfg = GenerateConfig(backend="diffusers", model=str(model), guidance_scale=3.0, steps=2, batch_size=4,
                             scheduler="dpm", negative_prompt="blurry", shard_size=4,
                             parents=({"id": "laion-subset", "index_sha256": None},))
        summary = generate(tmp_path / "plan.jsonl", tmp_path / "raw", cfg)
        assert summary.samples == 6 and verify(tmp_path / "raw").ok
        samples = list(Dataset(tmp_path / "raw"))
        rec = samples[4].provenance
        assert rec["generator"]["backend"] == "diffusers" and rec["generator"]["negative_guidance"] == "blurry"
        assert rec["generator"]["scheduler"] == "dpm" and rec["parents"] == [{"id": "laion-subset", "index_sha256": None}]
        assert rec["prompt"]["text"] == "a photo of the digit 5" and samples[4].pil().size == (16, 16)
        assert len({s.image for s in samples}) == 6  # one seed per image: all different
        r = CliRunner().invoke(cli, ["regenerate", str(tmp_path / "raw"), samples[4].key, str(tmp_path / "x.png")])
        assert r.exit_code == 0, r.output
    finally:
        torch.set_num_threads(threads)
