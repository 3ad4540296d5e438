"""SIMS negative guidance in the embedded backend (Alemohammad et al. 2024, https://arxiv.org/abs/2408.16333):
eps = (1 + w) * eps_base - w * eps_aux, each classifier-free guided; provenance and regeneration."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from tiny_models import TINY_GENERATOR

from factory.cli.main import cli
from factory.config import EmbeddedTrainConfig, GenerateConfig, PlanConfig, SamplerConfig
from factory.core.errors import FactoryError
from factory.core.files import file_sha256
from factory.core.sample import synthetic_sample, validate_record
from factory.core.shards import Dataset
from factory.generate.backends.base import GenRequest
from factory.generate.backends.embedded import EmbeddedGenerator
from factory.generate.plans import build_plan, write_plan
from factory.generate.tasks import generate, regenerate
from factory.train.generator import finetune_generator


def sampler(**kw) -> SamplerConfig:
    return SamplerConfig(**{"steps": 3, "batch_size": 4, **kw})


def req(i: int, seed: int | None = None) -> GenRequest:
    return GenRequest(key=f"r{i}", label=i % 10, class_name=str(i % 10), text=str(i % 10),
                      seed=500 + i if seed is None else seed)


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], prog_name="factory")


@pytest.fixture(scope="module")
def aux_dir(tmp_path_factory, generator_dir, digits_split) -> Path:
    """An auxiliary model: the shared tiny generator fine-tuned a few steps at a high learning rate."""
    out = tmp_path_factory.mktemp("sims-aux") / "aux"
    finetune_generator(generator_dir, digits_split[0],
                       EmbeddedTrainConfig(**{**TINY_GENERATOR.to_dict(), "steps": 4, "lr": 1e-2, "warmup_steps": 0}),
                       out)
    return out


@pytest.fixture(scope="module")
def sims_dataset(tmp_path_factory, generator_dir, aux_dir, digits_split) -> Path:
    root = tmp_path_factory.mktemp("sims-gen")
    plan = build_plan(PlanConfig(images_per_class=2, images_per_prompt=2, classes=("3", "7")),
                      Dataset(digits_split[0]).classes)
    out = root / "raw"
    generate(write_plan(plan, root / "plan.jsonl"), out,
             GenerateConfig(backend="embedded", model=str(generator_dir), steps=3, batch_size=2, shard_size=2,
                            negative_model=str(aux_dir), negative_guidance=1.5))
    return out


def test_w0_is_the_plain_sampler_and_w_positive_differs(generator_dir, aux_dir):
    requests = [req(i) for i in range(5)]
    plain = EmbeddedGenerator.load(generator_dir, sampler()).generate(requests)
    off = EmbeddedGenerator.load(generator_dir, sampler(negative_model=str(aux_dir), negative_guidance=0.0))
    assert off.negative is None and off.describe()["negative_guidance"] is None
    assert off.generate(requests) == plain
    sims = EmbeddedGenerator.load(generator_dir, sampler(negative_model=str(aux_dir), negative_guidance=1.0))
    guided = sims.generate(requests)
    assert all(a != b for a, b in zip(guided, plain))


def test_describe_records_the_method_and_the_auxiliary_model(generator_dir, aux_dir):
    gen = EmbeddedGenerator.load(generator_dir, sampler(negative_model=str(aux_dir), negative_guidance=2))
    d = gen.describe()
    assert d["negative_guidance"] == {"method": "sims", "w": 2.0, "model": str(aux_dir),
                                      "weights_sha256": file_sha256(aux_dir / "model.safetensors")}
    assert d["weights_sha256"] == file_sha256(generator_dir / "model.safetensors")
    png = gen.generate([req(0)])[0]
    s = synthetic_sample("k", png, 0, "0", prompt={"text": "0", "template": "{class_name}", "attributes": {}},
                         seed=500, generator=d, generation=1, parents=[])
    assert validate_record(s.provenance)["generator"]["negative_guidance"]["method"] == "sims"


@pytest.mark.parametrize("s", [2.0, 1.0, 0.0])
def test_eps_is_the_sims_combination_with_one_forward_per_model_and_step(generator_dir, aux_dir, s):
    w = 0.75
    gen = EmbeddedGenerator.load(generator_dir, sampler(negative_model=str(aux_dir), negative_guidance=w,
                                                        guidance_scale=s, steps=2, batch_size=3))
    base, aux = gen.model, gen.negative.model
    calls = {"base": [], "aux": []}
    base.unet.register_forward_hook(lambda m, a, o: calls["base"].append(a[0].shape[0]))
    aux.unet.register_forward_hook(lambda m, a, o: calls["aux"].append(a[0].shape[0]))
    seen = []
    step = gen.scheduler.step
    gen.scheduler.step = lambda eps, t, x, **kw: (seen.append((eps.clone(), t, x.clone())), step(eps, t, x, **kw))[1]
    labels, attrs = gen.encode_requests([req(1), req(2), req(3)])
    gen._sample(labels, attrs, [501, 502, 503])
    assert len(seen) == 2
    width = 3 if s in (0.0, 1.0) else 6  # [null; cond] stacked unless s is 0 or 1
    assert calls == {"base": [width, width], "aux": [width, width]}

    def cfg_eps(model, x, t):  # by hand: separate unconditional and conditional forwards
        with torch.no_grad():
            eps_u = model(x, t, model.null_embedding().expand(3, -1))
            eps_c = model(x, t, model.embed(labels, attrs))
        return eps_u + s * (eps_c - eps_u)

    for eps, t, x in seen:
        expected = (1 + w) * cfg_eps(base, x, t) - w * cfg_eps(aux, x, t)
        assert torch.allclose(eps, expected, atol=1e-5)
        assert not torch.allclose(eps, cfg_eps(base, x, t), atol=1e-3)  # the auxiliary term matters


def test_bytes_do_not_depend_on_the_batch(generator_dir, aux_dir):
    gen = EmbeddedGenerator.load(generator_dir, sampler(negative_model=str(aux_dir), negative_guidance=1.0))
    requests = [req(i) for i in range(6)]
    together = gen.generate(requests)
    assert gen.generate([requests[4]]) == [together[4]]
    assert gen.generate(requests[::-1]) == together[::-1]


@pytest.mark.parametrize("field,value", [("classes", [str(i) for i in range(9)] + ["nine"]),
                                         ("attributes", {"color": ["red"]}), ("image_size", 16)])
def test_an_auxiliary_model_that_does_not_match_is_refused(tmp_path, generator_dir, aux_dir, field, value):
    other = tmp_path / "other"
    shutil.copytree(aux_dir, other)
    config = json.loads((other / "config.json").read_text())
    config[field] = value
    (other / "config.json").write_text(json.dumps(config))
    with pytest.raises(FactoryError, match=f"^{other}: negative_model must match the base generator; its {field} "
                                           "differ$"):
        EmbeddedGenerator.load(generator_dir, sampler(negative_model=str(other), negative_guidance=1.0))


def test_settings_are_validated_and_the_diffusers_backend_refuses_sims(tmp_path, aux_dir):
    from factory.generate.backends.diffusers import DiffusersGenerator

    with pytest.raises(FactoryError, match="negative_guidance: needs negative_model"):
        SamplerConfig(negative_guidance=1.0)
    with pytest.raises(FactoryError, match="negative_guidance: must be >= 0"):
        SamplerConfig(negative_guidance=-1.0, negative_model=str(aux_dir))
    with pytest.raises(FactoryError, match="negative_model .*embedded backend only"):
        DiffusersGenerator.load(tmp_path, SamplerConfig(negative_model=str(aux_dir), negative_guidance=1.0))


def test_regenerate_a_sims_sample_checks_both_models(sims_dataset, generator_dir, aux_dir, tmp_path):
    sample = next(iter(Dataset(sims_dataset)))
    g = sample.provenance["generator"]
    assert g["negative_guidance"]["model"] == str(aux_dir) and g["negative_guidance"]["w"] == 1.5
    r = regenerate(sims_dataset, sample.key, tmp_path / "a.png", device="cpu")
    assert r.match and r.weights_match and r.ok
    assert r.actual_negative_weights_sha256 == r.expected_negative_weights_sha256 == \
        file_sha256(aux_dir / "model.safetensors")
    assert (tmp_path / "a.png").read_bytes() == sample.image
    out = run("regenerate", sims_dataset, sample.key, tmp_path / "b.png")
    assert out.exit_code == 0, out.output
    assert out.output.splitlines()[1].startswith("weights match: the generator's sha256 is the recorded "
                                                 "weights_sha256, the negative model's the recorded "
                                                 "negative_guidance.weights_sha256")

    # the same tensors re-saved with other metadata: the same image, but not the recorded weights file
    from safetensors.torch import load_file, save_file

    other = tmp_path / "other-aux"
    shutil.copytree(aux_dir, other)
    save_file(load_file(str(other / "model.safetensors")), str(other / "model.safetensors"),
              metadata={"format": "pt", "note": "re-saved"})
    r = regenerate(sims_dataset, sample.key, tmp_path / "c.png", negative_model=str(other), device="cpu")
    assert r.match and not r.weights_match and not r.ok
    out = run("regenerate", sims_dataset, sample.key, tmp_path / "d.png", "--negative-model", other)
    assert out.exit_code == 1, out.output
    assert out.output.splitlines()[1].startswith("weights DIFFERENT: the negative model's weights differ")
