"""Training the embedded generator on pools, and fine-tuning it from an earlier model (self-consuming loops)."""

import io
import json
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from tiny_models import TINY_GENERATOR

from factory.config import EmbeddedTrainConfig, GenerateConfig, PlanConfig, PoolSpec
from factory.core.errors import FactoryError
from factory.core.files import file_sha256
from factory.core.sample import real_sample
from factory.core.shards import Dataset, DatasetWriter
from factory.data.pools import build_pool, write_pool
from factory.generate.backends.base import GenRequest, SamplerConfig
from factory.generate.backends.embedded import ConditionalUNet, EmbeddedGenerator
from factory.generate.plans import build_plan, write_plan
from factory.generate.tasks import generate
from factory.train.generator import finetune_generator, load_training_data, train_generator


def cfg(**kw) -> EmbeddedTrainConfig:
    """TINY_GENERATOR's recipe with few steps (fine-tuning takes its architecture from the init model)."""
    return EmbeddedTrainConfig(**{**TINY_GENERATOR.to_dict(), "steps": 3, **kw})


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def config(folder: Path) -> dict:
    return json.loads((folder / "config.json").read_text())


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory, generator_dir, digits_split) -> Path:
    """20 generation-1 samples of the shared tiny generator (2 per class)."""
    root = tmp_path_factory.mktemp("ft-syn")
    plan = build_plan(PlanConfig(images_per_class=2, images_per_prompt=2), Dataset(digits_split[0]).classes)
    out = root / "syn"
    generate(write_plan(plan, root / "plan.jsonl"), out,
             GenerateConfig(backend="embedded", model=str(generator_dir), steps=2, batch_size=10, shard_size=20))
    return out


@pytest.fixture(scope="module")
def pool(tmp_path_factory, digits_split, synthetic) -> Path:
    """5 real images per class plus all 20 synthetic ones."""
    spec = PoolSpec(name="mix", components=({"dataset": str(digits_split[0]), "per_class": 5},
                                            {"dataset": str(synthetic)}))
    path = tmp_path_factory.mktemp("ft-pool") / "mix.json"
    write_pool(build_pool(spec), path)
    return path


def small_dataset(out: Path, source: Path, classes: list[str], attrs, rgb: bool = False) -> Path:
    """The first images of ``source`` with labels in ``classes``, re-recorded with ``attrs(i)`` as attributes
    (``rgb``: tinted red, as colour PNGs)."""
    with DatasetWriter(out, "small", classes) as w:
        for i, s in enumerate(x for x in Dataset(source) if x.label < len(classes)):
            if i == 12:
                break
            data = s.image
            if rgb:
                grey = s.pil().convert("L")
                im = Image.merge("RGB", (grey, grey.point(lambda v: v // 2), grey.point(lambda v: v // 2)))
                buf = io.BytesIO()
                im.save(buf, format="PNG")
                data = buf.getvalue()
            w.write(real_sample(f"s{i}", data, s.label, classes[s.label], {"dataset": "test", "index": i},
                                attributes=attrs(i)))
    return out


def test_finetune_starts_from_the_init_weights_and_records_its_lineage(tmp_path, generator_dir, digits_split):
    # architecture fields of cfg are ignored: the init model's are kept
    out = tmp_path / "ft"
    summary = finetune_generator(generator_dir, digits_split[0],
                                 cfg(lr=1e-12, steps=1, warmup_steps=0, block_out_channels=(16, 32)), out)
    init, tuned = weights(generator_dir), weights(out)
    assert init.keys() == tuned.keys()
    assert max(float((init[k] - tuned[k]).abs().max()) for k in init) < 1e-6  # lr ~ 0: still the init weights
    with torch.random.fork_rng():
        torch.manual_seed(123)
        fresh = ConditionalUNet(config(generator_dir)["unet"], 10, []).state_dict()
    assert max(float((init[k] - fresh[k]).abs().max()) for k in init) > 1e-2  # a fresh model is far from them
    assert summary["steps"] == 1 and summary["images"] == len(Dataset(digits_split[0]))

    c, ic = config(out), config(generator_dir)
    init_sha = file_sha256(generator_dir / "model.safetensors")
    assert c["init"] == {"model": str(generator_dir), "weights_sha256": init_sha, "ema": "restart"}
    assert c["ema_steps"] == 1  # a restarted EMA has averaged this fine-tune's update only
    assert c["parents"] == [Dataset(digits_split[0]).ref()] and c["generation"] == 1
    for k in ("unet", "classes", "attributes", "channels", "image_size", "train_scheduler", "image_mode"):
        assert c[k] == ic[k], k
    assert c["train"]["block_out_channels"] == ic["train"]["block_out_channels"] and c["train"]["lr"] == 1e-12
    gen = EmbeddedGenerator.load(out, SamplerConfig(steps=2, batch_size=2))
    assert len(gen.generate([GenRequest("a", 3, "3", "3", 7)])) == 1


def test_finetune_moves_the_weights_and_is_deterministic(tmp_path, generator_dir, digits_split):
    finetune_generator(generator_dir, digits_split[0], cfg(), tmp_path / "a")
    finetune_generator(generator_dir, digits_split[0], cfg(), tmp_path / "b")
    finetune_generator(generator_dir, digits_split[0], cfg(seed=1), tmp_path / "c")
    a, b, c = (file_sha256(tmp_path / n / "model.safetensors") for n in "abc")
    assert a == b != c != file_sha256(generator_dir / "model.safetensors")
    assert (tmp_path / "a" / "config.json").read_bytes() == (tmp_path / "b" / "config.json").read_bytes()


def test_continued_ema_stays_nearer_the_init_and_counts_its_updates(tmp_path, generator_dir, digits_split):
    """ema=continue goes on with the init model's EMA schedule (decay ~0.98 after hundreds of updates): the
    saved weights move less from the init than a restarted EMA's (which follow the raw weights), with the
    same optimisation; ema_steps adds up over fine-tunes."""
    from factory.train.generator import ema_steps

    init_steps = ema_steps(config(generator_dir))
    assert init_steps == config(generator_dir)["summary"]["steps"] > 0
    finetune_generator(generator_dir, digits_split[0], cfg(steps=4), tmp_path / "restart")
    finetune_generator(generator_dir, digits_split[0], cfg(steps=4), tmp_path / "cont", ema="continue")
    init = weights(generator_dir)

    def moved(d):
        w = weights(d)
        return sum(float(((w[k] - init[k]) ** 2).sum()) for k in init) ** 0.5

    # the tiny generator has 15 updates behind it (decay ~0.63 where a restarted EMA's is 0.1-0.3)
    assert 0 < moved(tmp_path / "cont") < 0.8 * moved(tmp_path / "restart")
    assert config(tmp_path / "cont")["ema_steps"] == init_steps + 4
    assert config(tmp_path / "cont")["init"]["ema"] == "continue"
    finetune_generator(tmp_path / "cont", digits_split[0], cfg(steps=2), tmp_path / "cont2", ema="continue")
    assert config(tmp_path / "cont2")["ema_steps"] == init_steps + 6
    with pytest.raises(FactoryError, match="ema 'sometimes': restart or continue"):
        finetune_generator(generator_dir, digits_split[0], cfg(), tmp_path / "x", ema="sometimes")


def test_pool_of_two_datasets_trains_from_scratch_and_fine_tuned(tmp_path, generator_dir, pool, synthetic,
                                                                  digits_split):
    record = json.loads(pool.read_text())
    refs = [c["dataset"] for c in record["components"]]
    summary = finetune_generator(generator_dir, pool, cfg(), tmp_path / "ft")
    assert summary["images"] == record["samples"] == 70
    c = config(tmp_path / "ft")
    assert c["parents"] == refs and c["generation"] == 2  # synthetic samples are generation 1
    scratch = train_generator(record, cfg(steps=2), tmp_path / "scratch")  # a pool record, from scratch
    assert scratch["images"] == 70 and config(tmp_path / "scratch")["parents"] == refs
    assert config(tmp_path / "scratch")["generation"] == 2 and "init" not in config(tmp_path / "scratch")
    # a dataset of the pool changed since the draw: refused
    changed = dict(record, components=[dict(record["components"][0], dataset={**refs[0], "index_sha256": "0" * 64})])
    with pytest.raises(FactoryError, match="changed since the pool was drawn"):
        finetune_generator(generator_dir, changed, cfg(), tmp_path / "x")


def test_mismatched_classes_and_overlapping_output_are_refused(tmp_path, generator_dir, digits_split):
    two = small_dataset(tmp_path / "two", digits_split[0], ["0", "1"], lambda i: None)
    with pytest.raises(FactoryError, match=r"two: classes \['0', '1'\] differ from the classes of the model") as e:
        finetune_generator(generator_dir, two, cfg(), tmp_path / "out")
    assert "\n" not in str(e.value)
    colour = small_dataset(tmp_path / "colour", digits_split[0], [str(i) for i in range(10)], lambda i: None, rgb=True)
    with pytest.raises(FactoryError, match="colour images for a grayscale"):
        finetune_generator(generator_dir, colour, cfg(), tmp_path / "out")
    init = tmp_path / "init"
    shutil.copytree(generator_dir, init)
    with pytest.raises(FactoryError):
        finetune_generator(init, digits_split[0], cfg(), init)  # would replace the folder it starts from


def test_fixed_vocabulary_maps_unknown_values_to_null(tmp_path, digits_split):
    ds = small_dataset(tmp_path / "attrs", digits_split[0], [str(i) for i in range(10)],
                       lambda i: {"color": ["red", "green", "blue"][i % 3], "thick": "yes"})
    free = load_training_data(Dataset(ds), 8)
    assert free.attributes == {"color": ["blue", "green", "red"], "thick": ["yes"]}
    fixed = load_training_data(Dataset(ds), 8, attributes={"color": ["red", "teal"], "slant": ["left"]}, mode="RGB")
    assert fixed.attributes == {"color": ["red", "teal"], "slant": ["left"]}
    assert fixed.attrs[:3].tolist() == [[0, 1], [2, 1], [2, 1]]  # green, blue unknown -> null 2; no slant -> null 1
    assert fixed.images.shape[1] == 3 and fixed.mode == "RGB"  # grey data for a colour model: converted
