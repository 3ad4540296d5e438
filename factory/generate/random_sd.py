"""Random-weight Stable Diffusion pipelines, built offline from an architecture shipped in the package.

Where no Stable Diffusion folder is on disk (tests, CI, the photo pipeline's default run) the ``diffusers``
backend still has to run for real: these builders make a ``StableDiffusionPipeline`` of a shipped
architecture (``factory/generate/sd_archs/<name>.json``: ``tiny`` for unit tests, ``photo32`` for the photo
pipeline, ``sd15`` the full-size Stable Diffusion 1.5 layout for the GPU benchmark) with seeded random
weights and CLIP's real BPE tokenizer (the vocabulary open_clip bundles), and ``save_pretrained`` it, so it
loads back through the same ``DiffusionPipeline.from_pretrained(path, local_files_only=True)`` call users
take. Nothing is downloaded.

The folder gets a ``random_weights.json`` beside ``model_index.json``: reports read it to label every number
made with such a model as not a result (:func:`factory.core.modelfolder.is_random_weights`). A folder is
assembled next to its destination and moved into place whole: an interrupted build leaves the previous one.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

from factory.core.errors import FactoryError
from factory.core.files import replace_dir, staging_dir, write_json
from factory.core.modelfolder import RANDOM_WEIGHTS_MARKER, is_random_weights

__all__ = ["MARKER", "arch_names", "build_pipeline", "build_sd", "clip_tokenizer", "is_random_weights", "load_arch",
           "write_clip_tokenizer"]
MARKER = RANDOM_WEIGHTS_MARKER

ARCH_DIR = Path(__file__).with_name("sd_archs")
MAX_LENGTH = 77  # CLIP's context length; the pipeline pads every prompt to it
BOS, EOS = "<|startoftext|>", "<|endoftext|>"
CLIP_MERGES = 49152 - 256 - 2  # the merges CLIP uses from its BPE file (open_clip's SimpleTokenizer)


def arch_names() -> list[str]:
    """The architectures shipped with the package."""
    return sorted(p.stem for p in ARCH_DIR.glob("*.json"))


def load_arch(arch: str | Path | dict[str, Any]) -> dict[str, Any]:
    """An architecture: a shipped name, a JSON file of the same layout, or the mapping itself."""
    if isinstance(arch, dict):
        data = arch
    else:
        path = Path(arch) if Path(arch).suffix == ".json" else ARCH_DIR / f"{arch}.json"
        if not path.is_file():
            raise FactoryError(f"Stable Diffusion architecture {str(arch)!r}: not a shipped one "
                               f"({', '.join(arch_names())}) nor a JSON file")
        data = json.loads(path.read_text(encoding="utf-8"))
    missing = [k for k in ("image_size", "unet", "vae", "text_encoder", "scheduler") if k not in data]
    if missing:
        raise FactoryError(f"Stable Diffusion architecture {str(arch)[:80]!r}: missing {', '.join(missing)}")
    return data


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable-character table."""
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


def write_clip_tokenizer(folder: Path | str) -> tuple[Path, Path]:
    """CLIP's tokenizer files (``vocab.json``, ``merges.txt``, 49,408 tokens) from the BPE table that open_clip
    bundles, laid out as Hugging Face's ``CLIPTokenizer`` reads them: the 256 byte characters, the same with
    ``</w>``, one token per merge, then the two special tokens (the order of open_clip's SimpleTokenizer)."""
    from open_clip.tokenizer import default_bpe

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lines = gzip.open(default_bpe()).read().decode("utf-8").split("\n")[1:CLIP_MERGES + 1]
    merges = [tuple(line.split()) for line in lines]
    chars = list(_bytes_to_unicode().values())
    tokens = chars + [c + "</w>" for c in chars] + ["".join(m) for m in merges] + [BOS, EOS]
    vocab = {t: i for i, t in enumerate(tokens)}
    vocab_file, merges_file = folder / "vocab.json", folder / "merges.txt"
    vocab_file.write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    merges_file.write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n", encoding="utf-8")
    return vocab_file, merges_file


def clip_tokenizer(folder: Path | str):
    """A ``CLIPTokenizer`` loaded offline from CLIP's vocabulary written into ``folder``."""
    from transformers import CLIPTokenizer

    write_clip_tokenizer(folder)
    return CLIPTokenizer.from_pretrained(str(folder), model_max_length=MAX_LENGTH, local_files_only=True)


def build_pipeline(arch: str | Path | dict[str, Any] = "tiny", seed: int = 0, tokenizer_dir: Path | str | None = None,
                   device: str = "cpu"):
    """A random-weight ``StableDiffusionPipeline`` of ``arch`` in memory (seeded: the same seed, the same weights
    on one device). ``tokenizer_dir``: where to write the tokenizer files (a temporary folder if None)."""
    import tempfile

    import torch
    from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
    from diffusers import schedulers as sched_mod
    from transformers import CLIPTextConfig, CLIPTextModel

    a = load_arch(arch)
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = clip_tokenizer(tokenizer_dir or tmp)
    sched_cfg = dict(a["scheduler"])
    sched_cls = getattr(sched_mod, sched_cfg.pop("_class_name", "PNDMScheduler"))
    with torch.device(device):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**a["unet"])
        torch.manual_seed(seed + 1)
        vae = AutoencoderKL(**a["vae"])
        torch.manual_seed(seed + 2)
        text_encoder = CLIPTextModel(CLIPTextConfig(
            vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id, **a["text_encoder"]))
    return StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=sched_cls(**sched_cfg), safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)


def build_sd(path: Path | str, arch: str | Path | dict[str, Any] = "tiny", seed: int = 0,
             variant_fp16: bool = False) -> Path:
    """Build a random-weight pipeline of ``arch`` and ``save_pretrained`` it to ``path`` (with
    ``random_weights.json``); ``variant_fp16`` saves half-precision weights (what a GPU run loads). Returns ``path``."""
    import shutil

    import torch

    path = Path(path).absolute()
    a = load_arch(arch)
    pipe = build_pipeline(a, seed)
    if variant_fp16:
        pipe = pipe.to(torch.float16)
    staging = staging_dir(path)
    shutil.rmtree(staging, ignore_errors=True)
    pipe.save_pretrained(staging)
    write_json(staging / RANDOM_WEIGHTS_MARKER, {
        "random_weights": True, "arch": str(arch) if not isinstance(arch, dict) else "custom",
        "image_size": a["image_size"], "seed": seed, "note": "random weights: images from this model are not results"})
    path.parent.mkdir(parents=True, exist_ok=True)
    replace_dir(staging, path)
    return path
