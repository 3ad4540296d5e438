"""Issue 10: ``factory regenerate --model`` reports both verdicts, bytes and weights, and equal bytes from
weights other than the recorded ones are no match (exit 1)."""

import shutil

import pytest
from click.testing import CliRunner

from factory.cli.main import cli
from factory.config import GenerateConfig, PlanConfig
from factory.core.shards import Dataset
from factory.generate.plans import build_plan, write_plan
from factory.generate.tasks import generate


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], prog_name="factory")


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory, generator_dir, digits_split):
    root = tmp_path_factory.mktemp("regen")
    plan = build_plan(PlanConfig(images_per_class=2, images_per_prompt=2, classes=("3",)),
                      Dataset(digits_split[0]).classes)
    out = root / "raw"
    generate(write_plan(plan, root / "plan.jsonl"), out,
             GenerateConfig(backend="embedded", model=str(generator_dir), steps=3, batch_size=2, shard_size=2))
    return out


def test_same_bytes_from_other_weights_is_no_match(synthetic, generator_dir, tmp_path):
    from safetensors.torch import load_file, save_file

    key = next(iter(Dataset(synthetic))).key
    r = run("regenerate", synthetic, key, tmp_path / "a.png")
    assert r.exit_code == 0, r.output
    lines = r.output.strip().splitlines()
    assert lines[0].startswith(f"match: {key} rebuilt byte for byte") and lines[1].startswith("weights match")

    # the same tensors saved with other metadata: other file bytes (other sha256), the same images
    other = tmp_path / "other"
    shutil.copytree(generator_dir, other)
    state = load_file(str(other / "model.safetensors"))
    save_file(state, str(other / "model.safetensors"), metadata={"format": "pt", "note": "re-saved"})
    r = run("regenerate", synthetic, key, tmp_path / "b.png", "--model", other)
    assert r.exit_code == 1, r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith(f"match: {key} rebuilt byte for byte")
    assert lines[1].startswith("weights DIFFERENT: the generator weights differ from the recorded weights_sha256")
    assert (tmp_path / "b.png").read_bytes() == (tmp_path / "a.png").read_bytes()


def test_no_recorded_weights_is_unverified(synthetic, tmp_path, monkeypatch):
    import factory.core.shards as shards

    key = next(iter(Dataset(synthetic))).key
    sample = Dataset(synthetic).find(key)
    sample.provenance["generator"]["weights_sha256"] = None
    monkeypatch.setattr(shards.Dataset, "find", lambda self, k: sample)
    r = run("regenerate", synthetic, key, tmp_path / "c.png")
    assert r.exit_code == 1, r.output
    assert "match: " in r.output and "weights UNVERIFIED: the record has no weights_sha256" in r.output
