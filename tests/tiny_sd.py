"""A tiny random-weight Stable Diffusion pipeline, built offline and saved to a folder.

Tests of the production (``diffusers``) generator backend load it back through the same
``DiffusionPipeline.from_pretrained(path, local_files_only=True)`` call users take, so the whole
load path is exercised without any download. Modelled on ``get_dummy_components`` in diffusers'
``tests/pipelines/stable_diffusion/test_stable_diffusion.py``, made smaller still.

The pipeline's native image size is 16 x 16 (UNet ``sample_size`` 8 latents, VAE scale factor 2);
any height/width that is a multiple of 8 works. Everything is seeded: the same ``seed`` gives the
same weights, hence the same files.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

# Words the hand-written tokenizer knows as whole tokens. Any other text still tokenizes: the
# vocabulary holds every single byte (with and without the end-of-word marker), so unknown words
# fall back to characters and nothing maps to <unk>.
WORDS = (
    "a", "an", "the", "of", "photo", "picture", "drawing", "digit", "number", "tench", "fish",
    "dog", "cat", "blurry", "low", "quality", "bright", "dark", "red", "blue", "green",
    "handwritten", "small", "large", "on", "in", "with", "background", "white", "black",
)
MAX_LENGTH = 77  # CLIP's context length; the pipeline pads every prompt to it
VOCAB_SIZE = 1000
BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable-character table (used by ByteLevel pre-tokenizers)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def write_tiny_clip_vocab(folder: Path) -> tuple[Path, Path]:
    """Write a small CLIP BPE ``vocab.json`` and ``merges.txt`` into ``folder``.

    Layout follows CLIP's own vocabulary: the 256 byte characters, the same with ``</w>`` (end of
    word), then one token per merge, then the two special tokens. Merges build each word in
    :data:`WORDS` left to right, so e.g. ``photo`` -> ``ph``, ``pho``, ``phot``, ``photo</w>``.
    """
    folder.mkdir(parents=True, exist_ok=True)
    chars = list(_bytes_to_unicode().values())
    vocab: dict[str, int] = {}
    for tok in chars + [c + "</w>" for c in chars]:
        vocab.setdefault(tok, len(vocab))
    merges: list[str] = []
    for word in WORDS:
        parts = list(word[:-1]) + [word[-1] + "</w>"]
        left = parts[0]
        for right in parts[1:]:
            merged = left + right
            if merged not in vocab:
                merges.append(f"{left} {right}")
                vocab[merged] = len(vocab)
            left = merged
    for tok in (BOS, EOS):
        vocab[tok] = len(vocab)
    assert len(vocab) <= VOCAB_SIZE, len(vocab)
    vocab_file, merges_file = folder / "vocab.json", folder / "merges.txt"
    vocab_file.write_text(json.dumps(vocab, ensure_ascii=False, sort_keys=False), encoding="utf-8")
    merges_file.write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    return vocab_file, merges_file


def build_tiny_tokenizer(folder: Path):
    """A ``CLIPTokenizer`` loaded offline from the hand-written files in ``folder``."""
    from transformers import CLIPTokenizer

    write_tiny_clip_vocab(folder)
    return CLIPTokenizer.from_pretrained(str(folder), model_max_length=MAX_LENGTH, local_files_only=True)


def build_tiny_sd(path: Path, seed: int = 0, scheduler: str = "pndm") -> Path:
    """Build a tiny random-weight ``StableDiffusionPipeline`` and ``save_pretrained`` it to ``path``.

    ``scheduler`` is the pipeline's own scheduler (``"pndm"`` as in SD 1.x, or ``"ddim"``);
    the backend swaps it for the one its sampler config asks for anyway. Returns ``path``.
    """
    from diffusers import AutoencoderKL, DDIMScheduler, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    path = Path(path)
    # The hand-written vocabulary goes where the saved pipeline keeps its tokenizer anyway;
    # save_pretrained below rewrites that folder in its own format.
    tokenizer = build_tiny_tokenizer(path / "tokenizer")

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(4, 8),  # each a multiple of norm_num_groups
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,  # = text encoder hidden size
        attention_head_dim=2,
        norm_num_groups=2,
    )
    torch.manual_seed(seed + 1)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=(4, 8),  # two blocks: vae_scale_factor 2
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        norm_num_groups=2,
        sample_size=16,
    )
    torch.manual_seed(seed + 2)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=MAX_LENGTH,
        layer_norm_eps=1e-5,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    ))
    sched_kwargs = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                        set_alpha_to_one=False, steps_offset=1)
    if scheduler == "pndm":
        sched = PNDMScheduler(skip_prk_steps=True, **sched_kwargs)
    elif scheduler == "ddim":
        sched = DDIMScheduler(clip_sample=False, **sched_kwargs)
    else:
        raise ValueError(f"scheduler must be one of pndm, ddim; got {scheduler!r}")

    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=sched,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.save_pretrained(path)
    return path
