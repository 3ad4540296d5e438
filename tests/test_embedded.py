"""The embedded generator: training, save/load, sampling, batch invariance; and the recognition rate."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import hashlib  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
from PIL import Image  # noqa: E402
from tiny_models import TINY_GENERATOR  # noqa: E402

from factory.core.errors import FactoryError  # noqa: E402
from factory.core.sample import GENERATOR_FIELDS, synthetic_sample  # noqa: E402
from factory.core.shards import Dataset  # noqa: E402
from factory.core.timings import split_timings
from factory.generate.backends.base import GenRequest, SamplerConfig  # noqa: E402
from factory.generate.backends.embedded import EmbeddedGenerator
from factory.train.generator import EmbeddedTrainConfig, train_generator

# A tiny 3-level UNet (68k parameters) at the default 16x16: a few seconds to train on 2 cores.
TINY = EmbeddedTrainConfig(block_out_channels=(8, 16, 16), norm_num_groups=4, steps=12, batch_size=32,
                           warmup_steps=3)


def sampler(**kw) -> SamplerConfig:
    kw.setdefault("steps", 4)
    kw.setdefault("batch_size", 8)
    return SamplerConfig(**kw)


def req(i: int, label: int | None = None, seed: int | None = None, **attrs: str) -> GenRequest:
    label = i % 10 if label is None else label
    return GenRequest(key=f"r{i}", label=label, class_name=str(label), text=f"a {label}",
                      seed=1000 + i if seed is None else seed, attributes=attrs)


@pytest.fixture(scope="module")
def digits_ds(digits_split) -> Path:
    """The real data the shared ``generator_dir`` (conftest.py) is trained on."""
    return digits_split[0]


@pytest.fixture(scope="module")
def colored_ds(tmp_path_factory) -> Path:
    from factory.data.ingest import ingest

    out = tmp_path_factory.mktemp("emb-colored") / "colored"
    ingest("sklearn:digits-colored?bias=0.9", out, overwrite=True)
    return out


@pytest.fixture(scope="module")
def model_dir(generator_dir) -> Path:
    """``tiny_models.TINY_GENERATOR`` (8x8) trained on ``digits_ds``, once per session."""
    return generator_dir


@pytest.fixture(scope="module")
def colored_model_dir(tmp_path_factory, colored_ds) -> Path:
    out = tmp_path_factory.mktemp("emb-cmodel") / "generator"
    train_generator(Dataset(colored_ds), TINY, out)
    return out


# -- config -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("field,value", [
    ("image_size", 10), ("image_size", 0), ("block_out_channels", ()), ("block_out_channels", (8, 12)),
    ("block_out_channels", "32"), ("layers_per_block", 0), ("steps", 0), ("batch_size", 0), ("lr", 0.0),
    ("warmup_steps", -1), ("label_dropout", 1.0), ("label_dropout", -0.1), ("ema_max_decay", 1.0),
    ("num_train_timesteps", 1), ("beta_schedule", "cosine"), ("seed", -1), ("max_seconds", 0),
    ("steps", 1.5), ("norm_num_groups", 0),
])
def test_config_validation_names_the_field(field, value):
    with pytest.raises(FactoryError, match=rf"^train_generator\.{field}: "):
        EmbeddedTrainConfig(**{field: value})


def test_config_defaults_and_unknown_keys():
    cfg = EmbeddedTrainConfig()
    assert (cfg.image_size, cfg.block_out_channels, cfg.steps, cfg.batch_size, cfg.lr, cfg.warmup_steps,
            cfg.label_dropout, cfg.ema_max_decay, cfg.num_train_timesteps, cfg.beta_schedule, cfg.seed,
            cfg.max_seconds) == (16, (32, 64, 64), 750, 128, 1e-3, 100, 0.1, 0.999, 1000, "squaredcos_cap_v2", 0, None)
    assert EmbeddedTrainConfig(**{"block_out_channels": [16, 32], "steps": 5}).block_out_channels == (16, 32)
    assert EmbeddedTrainConfig(block_out_channels=[16, 32]).to_dict()["block_out_channels"] == [16, 32]
    with pytest.raises(FactoryError, match="^train_generator.stepz: unknown parameter; allowed: image_size, "):
        EmbeddedTrainConfig(stepz=5)


# -- training, saving, loading ----------------------------------------------------------------------


def test_train_writes_model_folder(model_dir, digits_ds):
    cfg = json.loads((model_dir / "config.json").read_text())
    assert cfg["classes"] == [str(i) for i in range(10)]
    assert cfg["attributes"] == {} and cfg["channels"] == 1 and cfg["image_size"] == 8
    assert cfg["parents"] == [Dataset(digits_ds).ref()] and cfg["generation"] == 1
    assert cfg["train"]["steps"] == 15 and cfg["train"]["block_out_channels"] == [8, 16]
    assert cfg["train_scheduler"]["beta_schedule"] == "squaredcos_cap_v2"
    assert cfg["final_loss"] > 0 and "train_seconds" not in cfg
    assert not split_timings(cfg)[1], "a model folder holds no wall-clock time (same seed, same bytes)"
    assert sorted(p.name for p in model_dir.iterdir()) == ["config.json", "model.safetensors"]


def test_round_trip_and_properties(model_dir, digits_ds):
    gen = EmbeddedGenerator.load(model_dir, sampler())
    assert gen.classes == [str(i) for i in range(10)] and gen.attributes == {}
    assert gen.weights_sha256 == hashlib.sha256((model_dir / "model.safetensors").read_bytes()).hexdigest()
    assert gen.parents == [Dataset(digits_ds).ref()] and gen.generation == 1
    # the loaded weights are the saved ones: saving them again gives the same tensors
    from safetensors.torch import load_file

    saved = load_file(str(model_dir / "model.safetensors"))
    live = gen.model.state_dict()
    assert saved.keys() == live.keys() and all(saved[k].equal(live[k]) for k in saved)
    png = gen.generate([req(0)])[0]
    im = Image.open(io.BytesIO(png))
    assert im.format == "PNG" and im.mode == "L" and im.size == (8, 8)


def test_training_is_deterministic(tmp_path, digits_ds, model_dir):
    train_generator(digits_ds, TINY_GENERATOR, tmp_path / "again")
    assert (tmp_path / "again" / "model.safetensors").read_bytes() == (model_dir / "model.safetensors").read_bytes()
    train_generator(digits_ds, EmbeddedTrainConfig(**{**TINY_GENERATOR.to_dict(), "seed": 1, "steps": 2}),
                    tmp_path / "other")
    assert (tmp_path / "other" / "model.safetensors").read_bytes() != (model_dir / "model.safetensors").read_bytes()


def test_train_refuses_foreign_folder_and_reports_progress(tmp_path, digits_ds):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(FactoryError, match="foreign"):
        train_generator(digits_ds, TINY, foreign)
    seen = []
    summary = train_generator(digits_ds, EmbeddedTrainConfig(**{**TINY.to_dict(), "steps": 3}), tmp_path / "g",
                              progress=lambda step, total, loss: seen.append((step, total)))
    assert seen == [(1, 3), (2, 3), (3, 3)]
    assert summary["steps"] == 3 and summary["parameters"] > 0 and summary["final_loss"] > 0


def test_missing_model_folder_and_files(tmp_path, model_dir):
    with pytest.raises(FactoryError, match="nope"):
        EmbeddedGenerator.load(tmp_path / "nope", sampler())
    partial = tmp_path / "partial"
    partial.mkdir()
    shutil.copy(model_dir / "config.json", partial / "config.json")
    with pytest.raises(FactoryError, match="model.safetensors"):
        EmbeddedGenerator.load(partial, sampler())


# -- sampling -----------------------------------------------------------------------------------------


def test_describe_is_a_valid_provenance_generator(model_dir):
    gen = EmbeddedGenerator.load(str(model_dir), sampler(guidance_scale=3.0, scheduler="dpm"))
    d = gen.describe()
    assert all(k in d for k in GENERATOR_FIELDS)
    assert d["backend"] == "embedded" and d["model"] == str(model_dir) and d["weights_sha256"] == gen.weights_sha256
    assert (d["scheduler"], d["steps"], d["guidance_scale"], d["negative_guidance"]) == ("dpm", 4, 3.0, None)
    assert (d["height"], d["width"], d["dtype"], d["channels"], d["batch_size"]) == (8, 8, "float32", 1, 8)
    png = gen.generate([req(3)])[0]
    s = synthetic_sample("k", png, 3, "3", prompt={"text": "a 3", "template": "a {}", "attributes": {}},
                         seed=1003, generator=d, generation=gen.generation, parents=gen.parents)
    assert s.provenance["generator"]["channels"] == 1


def test_same_seed_same_bytes(model_dir):
    a = EmbeddedGenerator.load(model_dir, sampler()).generate([req(1), req(2)])
    b = EmbeddedGenerator.load(model_dir, sampler()).generate([req(1), req(2)])
    assert a == b
    c = EmbeddedGenerator.load(model_dir, sampler()).generate([req(1, seed=5), req(2, label=7)])
    assert c[0] != a[0] and c[1] != a[1]


@pytest.mark.parametrize("scheduler,w", [("ddim", 2.0), ("dpm", 2.0), ("ddim", 1.0), ("ddim", 0.0)])
def test_bytes_do_not_depend_on_batching(model_dir, scheduler, w):
    gen = EmbeddedGenerator.load(model_dir, sampler(scheduler=scheduler, guidance_scale=w))
    requests = [req(i) for i in range(40)]
    together = gen.generate(requests)  # 5 micro-batches of 8
    assert len(together) == 40 and len(set(together)) == 40
    for i in (0, 7, 8, 21, 39):  # first, last and middle positions of micro-batches, each alone
        assert gen.generate([requests[i]]) == [together[i]], f"request {i} alone differs"
    assert gen.generate(requests[::-1]) == together[::-1]  # every request at another position
    others = [req(100 + i, seed=7 + i) for i in range(9)]
    mixed = [x for pair in zip(others, requests[10:19]) for x in pair]  # interleaved, 18 = 8 + 8 + 2
    out = gen.generate(mixed)
    assert out[1::2] == together[10:19]
    assert gen.generate(requests[3:6]) == together[3:6]


def test_guidance_scale_changes_the_image(model_dir):
    images = [EmbeddedGenerator.load(model_dir, sampler(guidance_scale=w)).generate([req(4)])[0]
              for w in (0.0, 1.0, 2.0)]
    assert len(set(images)) == 3


def test_bad_requests_and_sampler_settings(model_dir):
    gen = EmbeddedGenerator.load(model_dir, sampler())
    with pytest.raises(FactoryError, match="r5.*label 10"):
        gen.generate([req(0), req(5, label=10)])
    with pytest.raises(FactoryError, match="attribute 'color'"):
        gen.generate([req(1, color="red")])
    with pytest.raises(FactoryError, match="seed"):
        gen.generate([req(1, seed=-1)])
    assert gen.generate([]) == []
    for kw, word in (({"scheduler": "euler"}, "euler"), ({"height": 32}, "height"),
                     ({"negative_prompt": "blurry"}, "negative_prompt"), ({"dtype": "float16"}, "dtype")):
        with pytest.raises(FactoryError, match=word):
            EmbeddedGenerator.load(model_dir, sampler(**kw))


def test_attribute_conditioning_with_colour_data(colored_model_dir, colored_ds):
    cfg = json.loads((colored_model_dir / "config.json").read_text())
    palette = sorted(["red", "green", "yellow", "blue", "orange", "purple", "cyan", "magenta", "lime", "pink"])
    assert cfg["channels"] == 3 and cfg["attributes"] == {"color": palette}
    gen = EmbeddedGenerator.load(colored_model_dir, sampler())
    assert gen.attributes == {"color": palette} and gen.describe()["channels"] == 3
    requests = [req(0, color="red"), req(1, color="blue"), req(2), req(3, color="red")]
    out = gen.generate(requests)
    for png in out:
        im = Image.open(io.BytesIO(png))
        assert im.mode == "RGB" and im.size == (16, 16)
    assert gen.generate([requests[1]]) == [out[1]]
    # the attribute is part of the conditioning: same seed and class, other colour, other image
    assert gen.generate([req(0, color="blue")]) != [out[0]]
    with pytest.raises(FactoryError, match="mauve"):
        gen.generate([req(0, color="mauve")])
    with pytest.raises(FactoryError, match="'size'"):
        gen.generate([req(0, size="big")])


# -- recognition --------------------------------------------------------------------------------------


def test_recognition_of_real_images_matches_accuracy(digits_ds, tmp_path):
    from factory.measure.recognition import (
        accuracy,
        load_reference_classifier,
        recognition,
        save_reference_classifier,
        train_reference_classifier,
    )

    model, info = train_reference_classifier(digits_ds, epochs=2, seed=0)
    assert info["mode"] == "L" and info["steps"] > 0 and 0 <= info["train_accuracy"] <= 1
    ds = Dataset(digits_ds)
    samples = [s for _, s in zip(range(200), ds)]
    r = recognition(model, [s.pil() for s in samples], [s.label for s in samples], ds.classes)
    assert r["n"] == 200 and set(r["per_class"]) <= set(ds.classes) and sum(r["counts"].values()) == 200
    assert r["overall"] > 0.5
    save_reference_classifier(model, info, tmp_path / "clf")
    again, _ = load_reference_classifier(tmp_path / "clf")
    assert recognition(again, [s.pil() for s in samples], [s.label for s in samples]) == r
    assert accuracy(again, digits_ds) >= r["overall"] - 0.2
    with pytest.raises(FactoryError, match="labels"):
        recognition(model, [samples[0].pil()], [0, 1])


def test_model_config_json_does_not_depend_on_the_hash_seed():
    """diffusers keeps ``_use_default_values`` in a set; its order must not reach config.json's bytes."""
    from factory.train.generator import _jsonable

    assert _jsonable({"s": {"zeta", "beta", "alpha"}, "t": (1, 2)}) == {"s": ["alpha", "beta", "zeta"], "t": [1, 2]}
    assert _jsonable({"_use_default_values": ["b", "c", "a"]}) == {"_use_default_values": ["a", "b", "c"]}
