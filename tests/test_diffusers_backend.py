"""The production generator backend, on a tiny random-weight Stable Diffusion pipeline.

The pipeline is built in the test (``factory.generate.random_sd``, architecture ``tiny``), saved to a temporary
folder and loaded
back through ``DiffusionPipeline.from_pretrained(path, local_files_only=True)``: no downloads.
"""

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # before any Hugging Face import

import io  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

from factory.core.errors import FactoryError  # noqa: E402
from factory.core.sample import GENERATOR_FIELDS, synthetic_sample  # noqa: E402
from factory.generate.backends.base import SCHEDULERS, GenRequest, SamplerConfig  # noqa: E402
from factory.generate.backends.diffusers import DiffusersGenerator, resolve_pipeline_folder, weights_sha256
from factory.generate.random_sd import build_sd  # noqa: E402

FAST = SamplerConfig(steps=2, scheduler="ddim", guidance_scale=3.0, batch_size=4, device="cpu")
PROMPTS = ["a photo of the digit 3", "a photo of a tench", "a drawing of the digit 7",
           "a blurry photo of a dog", "a red fish on a white background"]


def req(i: int, seed: int | None = None, text: str | None = None) -> GenRequest:
    return GenRequest(key=f"s{i:04d}", label=i % 3, class_name=f"c{i % 3}",
                      text=text if text is not None else PROMPTS[i % len(PROMPTS)],
                      seed=1000 + i if seed is None else seed)


def pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.int16)


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py: tiny models run faster on one thread


@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory) -> Path:
    return build_sd(tmp_path_factory.mktemp("models") / "tiny-sd", "tiny", seed=0)


@pytest.fixture(scope="module")
def gen(tiny_sd) -> DiffusersGenerator:
    return DiffusersGenerator.load(tiny_sd, FAST)


# --- the helper itself --------------------------------------------------------------------------

def test_tiny_sd_is_a_saved_pipeline(tiny_sd):
    index = json.loads((tiny_sd / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    assert index["safety_checker"] == [None, None]
    for part in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        assert (tiny_sd / part).is_dir()


# --- loading ------------------------------------------------------------------------------------

def test_load_sets_up_the_pipeline(gen, tiny_sd):
    assert gen.pipe.scheduler.__class__.__name__ == "DDIMScheduler"
    assert gen.device == "cpu" and gen.dtype == "float32"
    assert str(gen.pipe.unet.dtype) == "torch.float32"
    assert getattr(gen.pipe, "safety_checker", None) is None
    assert gen.pipe._progress_bar_config == {"disable": True}
    assert (gen.height, gen.width) == (16, 16)  # unet sample_size 8 x vae_scale_factor 2


def test_load_is_quiet(tiny_sd, capfd):
    import diffusers.utils.logging as dlog
    import huggingface_hub.utils as hub_utils
    import transformers.utils.logging as tlog

    before = (dlog.is_progress_bar_enabled(), tlog.is_progress_bar_enabled(),
              hub_utils.are_progress_bars_disabled())
    g = DiffusersGenerator.load(tiny_sd, FAST)
    g.generate([req(0)])
    err = capfd.readouterr().err
    assert "Loading" not in err and "it/s" not in err, err
    # Other code's progress bars are left as they were.
    assert (dlog.is_progress_bar_enabled(), tlog.is_progress_bar_enabled(),
            hub_utils.are_progress_bars_disabled()) == before


def test_missing_folder_is_a_factory_error(tmp_path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(FactoryError) as info:
        DiffusersGenerator.load(missing, FAST)
    msg = str(info.value)
    assert str(missing) in msg and "\n" not in msg and "Traceback" not in msg


def test_uncached_hub_id_is_a_factory_error():
    with pytest.raises(FactoryError, match="no-such-org/no-such-model"):
        DiffusersGenerator.load("no-such-org/no-such-model", FAST)


@pytest.mark.parametrize("content", ["empty", "file", "junk-index", "missing-unet"])
def test_not_a_pipeline_is_a_factory_error(tmp_path, tiny_sd, content):
    target = tmp_path / "bad"
    if content == "empty":
        target.mkdir()
        (target / "weights.safetensors").write_bytes(b"x")
    elif content == "file":
        target.write_text("not a folder")
    elif content == "junk-index":
        target.mkdir()
        (target / "model_index.json").write_text('{"hello": 1}')
    else:  # a real pipeline folder with a component missing
        shutil.copytree(tiny_sd, target)
        shutil.rmtree(target / "unet")
    with pytest.raises(FactoryError) as info:
        DiffusersGenerator.load(target, FAST)
    msg = str(info.value)
    assert str(target) in msg and "\n" not in msg


def test_hub_id_resolves_from_the_cache_only(tmp_path, tiny_sd, monkeypatch):
    # Lay the pipeline out as the HF cache does (models--org--name/snapshots/<commit> + refs/main).
    import huggingface_hub.constants as hub_constants

    cache = tmp_path / "hub"
    repo = cache / "models--tiny-org--tiny-sd"
    commit = "0" * 40
    shutil.copytree(tiny_sd, repo / "snapshots" / commit)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(cache))

    assert resolve_pipeline_folder("tiny-org/tiny-sd") == repo / "snapshots" / commit
    g = DiffusersGenerator.load("tiny-org/tiny-sd", FAST)
    assert g.describe()["model"] == "tiny-org/tiny-sd"
    assert g.describe()["weights_sha256"] == weights_sha256(tiny_sd)
    assert g.generate([req(0)]) == DiffusersGenerator.load(tiny_sd, FAST).generate([req(0)])


def test_negative_prompt_without_guidance_is_refused(tiny_sd):
    with pytest.raises(FactoryError, match="guidance_scale"):
        DiffusersGenerator.load(tiny_sd, FAST.replace(negative_prompt="blurry", guidance_scale=1.0))


# --- generating ---------------------------------------------------------------------------------

def test_generates_pngs_of_the_requested_size_in_order(tiny_sd):
    g = DiffusersGenerator.load(tiny_sd, FAST.replace(height=16, width=24))
    out = g.generate([req(i) for i in range(5)])  # one full batch of 4, one padded batch
    assert len(out) == 5
    for png in out:
        with Image.open(io.BytesIO(png)) as im:
            assert im.format == "PNG" and im.size == (24, 16) and im.mode == "RGB"
            assert not im.info.keys() - {"dpi", "gamma"}  # no text chunks, no timestamps
    assert out == [g.generate([req(i)])[0] for i in range(5)]  # request order
    assert g.generate([]) == []


def test_default_size_is_the_models_native_size(gen):
    with Image.open(io.BytesIO(gen.generate([req(0)])[0])) as im:
        assert im.size == (16, 16)


def test_same_seeds_same_bytes_across_loads(tiny_sd, gen):
    requests = [req(i) for i in range(3)]
    again = DiffusersGenerator.load(tiny_sd, FAST)
    assert gen.generate(requests) == again.generate(requests)


def test_different_seeds_different_images(gen):
    a, b = gen.generate([req(0, seed=1), req(0, seed=2)])
    assert a != b
    assert np.abs(pixels(a) - pixels(b)).max() > 0


def test_bytes_do_not_depend_on_the_rest_of_the_batch(gen):
    """One request's bytes, alone or among others and at any position: bit for bit the same
    (CPU, float32, one thread: the module fixture; two threads was checked by hand).

    Without the fixed-shape padding this fails here: with the tiny model, 1 of these 32
    requests (seed 1129) decodes to different PNG bytes alone than in a batch of 4 (oneDNN runs a
    batch-of-one convolution differently; ~1e-7 apart, enough to flip a rounded pixel).
    """
    targets = [req(100 + i) for i in range(32)]
    batched = gen.generate(targets)
    assert [gen.generate([t])[0] for t in targets] == batched
    target, alone = targets[29], batched[29]
    others = [req(i) for i in range(7)]
    for pos in range(4):
        batch = others[:pos] + [target] + others[pos:]  # each position of the first batch of 4
        assert gen.generate(batch)[pos] == alone
    assert gen.generate(others[:5] + [target])[5] == alone  # in the padded tail batch
    assert gen.generate([req(7), target, target])[1:] == [alone, alone]


def test_every_pipeline_call_has_the_same_shape(tiny_sd, monkeypatch):
    g = DiffusersGenerator.load(tiny_sd, FAST.replace(batch_size=3))
    calls = []
    real_call = type(g.pipe).__call__

    def spy(pipe, **kwargs):
        calls.append((len(kwargs["prompt"]), len(kwargs["generator"])))
        return real_call(pipe, **kwargs)

    monkeypatch.setattr(type(g.pipe), "__call__", spy)
    assert len(g.generate([req(i) for i in range(7)])) == 7
    assert len(g.generate([req(0)])) == 1
    assert calls == [(3, 3)] * 4


@pytest.mark.parametrize("scheduler", SCHEDULERS)
def test_every_scheduler_works(tiny_sd, scheduler):
    expected = {"ddim": "DDIMScheduler", "dpm": "DPMSolverMultistepScheduler",
                "euler": "EulerDiscreteScheduler", "ddpm": "DDPMScheduler", "pndm": "PNDMScheduler"}
    g = DiffusersGenerator.load(tiny_sd, FAST.replace(scheduler=scheduler, batch_size=2))
    assert type(g.pipe.scheduler).__name__ == expected[scheduler]
    assert g.pipe.scheduler.config.beta_schedule == "scaled_linear"  # the model's own config kept
    out = g.generate([req(0), req(1), req(0)])
    assert len(out) == 3 and out[0] == out[2] != out[1]  # stochastic ones too: noise is per seed
    assert g.describe()["scheduler"] == scheduler


def test_negative_prompt_is_applied(tiny_sd, gen):
    requests = [req(i) for i in range(2)]
    negative = DiffusersGenerator.load(tiny_sd, FAST.replace(negative_prompt="blurry low quality"))
    plain, neg = gen.generate(requests), negative.generate(requests)
    assert all(a != b for a, b in zip(plain, neg))
    assert negative.describe()["negative_guidance"] == "blurry low quality"


# --- provenance ---------------------------------------------------------------------------------

def test_describe(gen, tiny_sd):
    d = gen.describe()
    assert set(GENERATOR_FIELDS) <= set(d)
    assert d == {
        "backend": "diffusers", "model": str(tiny_sd), "weights_sha256": weights_sha256(tiny_sd),
        "scheduler": "ddim", "steps": 2, "guidance_scale": 3.0, "negative_guidance": None,
        "height": 16, "width": 16, "dtype": "float32", "pipeline": "StableDiffusionPipeline",
        "batch_size": 4,
    }
    json.dumps(d)  # goes into every sample's JSON record
    png = gen.generate([req(3)])[0]
    sample = synthetic_sample("s0003", png, 0, "c0", prompt={"text": req(3).text, "template": None,
                              "attributes": {}}, seed=req(3).seed, generator=d, generation=1, parents=[])
    assert sample.provenance["generator"]["weights_sha256"] == d["weights_sha256"]


def test_weights_sha256_is_stable_and_tracks_the_weights(tmp_path, tiny_sd, gen):
    digest = gen.describe()["weights_sha256"]
    assert len(digest) == 64 and digest == weights_sha256(tiny_sd)
    assert DiffusersGenerator.load(tiny_sd, FAST.replace(scheduler="euler")).weights_sha256 == digest
    copy = shutil.copytree(tiny_sd, tmp_path / "copy")
    assert weights_sha256(copy) == digest  # content and relative paths, not location
    (copy / "unet" / "config.json").write_text("{}")
    assert weights_sha256(copy) == digest  # configs are not weights
    rebuilt = build_sd(tmp_path / "rebuilt", "tiny", seed=0)
    assert weights_sha256(rebuilt) == digest  # same seed, same weights, same files
    other = build_sd(tmp_path / "other", "tiny", seed=1)
    assert weights_sha256(other) != digest


# --- torch.compile (generate.compile) -----------------------------------------------------------

def test_compile_is_a_strict_setting_off_by_default():
    from factory.config import GenerateConfig

    assert SamplerConfig().compile is False
    cfg = GenerateConfig(backend="diffusers", compile=True)
    assert cfg.sampler.compile is True and cfg.generator.sampler.compile is True  # reaches the backend (and Ray)
    with pytest.raises(FactoryError, match=r"generate.compile: must be true or false \(got 'yes'\)"):
        SamplerConfig(compile="yes")
    with pytest.raises(FactoryError, match="generate.compile: is for the diffusers backend only"):
        GenerateConfig(backend="embedded", compile=True)


def test_compile_is_refused_on_the_cpu(tiny_sd):
    with pytest.raises(FactoryError, match=r"^compile \(torch.compile of the UNet\) is for CUDA devices only; "
                                           r"the device is 'cpu': set generate.compile to false$"):
        DiffusersGenerator.load(tiny_sd, FAST.replace(compile=True))


def test_compile_is_recorded_only_when_on(gen):
    assert "compile" not in gen.describe()  # records made without it are unchanged
    compiled = DiffusersGenerator(gen.pipe, FAST.replace(compile=True), model=gen.model,
                                  weights_sha256=gen.weights_sha256, device="cuda", dtype="float16",
                                  height=16, width=16)
    assert compiled.describe()["compile"] == "reduce-overhead"
