"""Random-weight Stable Diffusion pipelines (factory/generate/random_sd.py) and the shipped architectures.

``sd15`` is checked on the ``meta`` device (no memory, no time) against Stable Diffusion 1.5's published
parameter counts; the builders are exercised on ``tiny``.
"""

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # before any Hugging Face import

import json  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from factory.core.errors import FactoryError  # noqa: E402
from factory.generate.backends.diffusers import weights_sha256  # noqa: E402
from factory.generate.random_sd import (  # noqa: E402
    ARCH_DIR,
    MARKER,
    arch_names,
    build_sd,
    clip_tokenizer,
    is_random_weights,
    load_arch,
)

# Stable Diffusion v1.5's components (runwayml/stable-diffusion-v1-5), as published
SD15_PARAMETERS = {"unet": 859_520_964, "vae": 83_653_863, "text_encoder": 123_060_480}
CLIP_VOCAB = 49_408


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py: tiny models run faster on one thread


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    return build_sd(tmp_path_factory.mktemp("sd") / "tiny", "tiny", seed=0)


def test_sd15_is_stable_diffusion_1_5_exactly():
    from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    a = load_arch("sd15")
    with torch.device("meta"):  # shapes only: nothing is allocated or initialised
        parts = {"unet": UNet2DConditionModel(**a["unet"]), "vae": AutoencoderKL(**a["vae"]),
                 "text_encoder": CLIPTextModel(CLIPTextConfig(vocab_size=CLIP_VOCAB, **a["text_encoder"]))}
    assert {k: sum(p.numel() for p in m.parameters()) for k, m in parts.items()} == SD15_PARAMETERS
    scale = 2 ** (len(a["vae"]["block_out_channels"]) - 1)
    assert a["unet"]["sample_size"] * scale == a["vae"]["sample_size"] == a["image_size"] == 512
    sched = dict(a["scheduler"])
    cls = sched.pop("_class_name")
    assert cls == "PNDMScheduler"
    s = PNDMScheduler(**sched).config
    assert (s.beta_start, s.beta_end, s.beta_schedule, s.steps_offset) == (0.00085, 0.012, "scaled_linear", 1)
    assert s.skip_prk_steps and not s.set_alpha_to_one


def test_every_shipped_arch_loads():
    assert {"tiny", "photo32", "sd15"} <= set(arch_names())
    for name in arch_names():
        a = load_arch(name)
        assert load_arch(ARCH_DIR / f"{name}.json") == a  # by path too
        assert a["unet"]["cross_attention_dim"] == a["text_encoder"]["hidden_size"]


def test_bad_arch_names_the_shipped_ones(tmp_path):
    with pytest.raises(FactoryError, match=r"'sd99': not a shipped one \(photo32, sd15, tiny\)"):
        load_arch("sd99")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"image_size": 8, "unet": {}}))
    with pytest.raises(FactoryError, match="missing vae, text_encoder, scheduler"):
        load_arch(bad)
    with pytest.raises(FactoryError, match="not a shipped one"):
        build_sd(tmp_path / "x", "sd99")
    assert not (tmp_path / "x").exists()


def test_clip_tokenizer_gives_open_clip_token_ids(tmp_path):
    import open_clip

    tok = clip_tokenizer(tmp_path / "tok")
    assert len(tok) == CLIP_VOCAB and tok.model_max_length == 77
    reference = open_clip.get_tokenizer("ViT-B-32")
    for prompt in ["a photo of a tench", "A RED fish, on a white background!", "golf-ball & church's 1234 spires",
                   "café naïve <b>bold</b>", "  two   spaces\tand a tab "]:
        ids = reference([prompt])[0].tolist()
        assert tok(prompt).input_ids == ids[:ids.index(tok.eos_token_id) + 1], prompt


def test_build_sd_saves_a_pipeline_that_loads_offline(tiny_folder):
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(str(tiny_folder), local_files_only=True)
    assert type(pipe).__name__ == "StableDiffusionPipeline"
    assert len(pipe.tokenizer) == CLIP_VOCAB and pipe.text_encoder.config.vocab_size == CLIP_VOCAB
    assert pipe.unet.config.sample_size * pipe.vae_scale_factor == load_arch("tiny")["image_size"]
    marker = json.loads((tiny_folder / MARKER).read_text())
    assert marker["random_weights"] is True and marker["arch"] == "tiny"


def test_same_seed_same_weight_bytes(tiny_folder, tmp_path):
    again = build_sd(tmp_path / "again", "tiny", seed=0)
    for f in sorted(tiny_folder.rglob("*.safetensors")):
        assert (again / f.relative_to(tiny_folder)).read_bytes() == f.read_bytes(), f.name
    assert weights_sha256(build_sd(tmp_path / "other", "tiny", seed=1)) != weights_sha256(tiny_folder)


def test_fp16_variant(tmp_path):
    from safetensors import safe_open

    folder = build_sd(tmp_path / "half", "tiny", variant_fp16=True)
    with safe_open(str(folder / "unet" / "diffusion_pytorch_model.safetensors"), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float16}


def test_is_random_weights(tiny_folder, tmp_path):
    assert is_random_weights(tiny_folder)
    assert is_random_weights(tiny_folder / "unet")  # a component folder of it
    (tmp_path / "real").mkdir()
    assert not is_random_weights(tmp_path / "real")
