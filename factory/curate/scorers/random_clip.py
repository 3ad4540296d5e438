"""Random-weight open_clip checkpoints, built offline, for pipelines that have no CLIP weights on disk.

:func:`build_open_clip` writes what a released open_clip model on the Hugging Face Hub holds: the weights
(``open_clip_model.pt``, a ``state_dict``) and ``open_clip_config.json`` (``model_cfg`` and
``preprocess_cfg``) beside them, so the ``open_clip`` scorer loads it by name through the same code path as
a real checkpoint (:class:`~factory.curate.scorers.openclip.OpenClipScorer`, which registers the sidecar's
architecture). A ``random_weights.json`` marker says that scores from it are not results.

Architectures: the shipped ``photo32`` (a small ViT for the photo pipeline's 32 px images) or any name
open_clip knows (``ViT-B-32``: the full-size model, for throughput).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from factory.core.errors import FactoryError
from factory.core.files import replace_dir, staging_dir, write_json
from factory.core.modelfolder import RANDOM_WEIGHTS_MARKER

WEIGHTS_NAME = "open_clip_model.pt"

# CLIP's own normalisation (open_clip.constants.OPENAI_DATASET_MEAN/STD)
_MEAN, _STD = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]

ARCHS: dict[str, dict[str, Any]] = {
    # about 1.7 M parameters: a 2-layer ViT on 8x8 patches of 32 px images, CLIP's tokenizer (49,408 tokens)
    "photo32": {
        "model_cfg": {"embed_dim": 32,
                      "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 64, "layers": 2, "head_width": 32},
                      "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2}},
        "preprocess_cfg": {"size": 32, "mean": _MEAN, "std": _STD, "interpolation": "bicubic",
                           "resize_mode": "shortest"},
    },
}


def model_name(arch: str) -> str:
    """The open_clip name the scorer loads a built ``arch`` by (``factory-<arch>`` for shipped ones)."""
    return f"factory-{arch}" if arch in ARCHS else arch


def build_open_clip(folder: Path | str, arch: str = "photo32", seed: int = 0) -> Path:
    """Seeded random weights of ``arch`` in ``folder`` (weights, sidecar, marker); returns the weights file.

    The same seed gives the same weights. The scorer loads it as
    ``load_scorer("open_clip", model_name(arch), folder / WEIGHTS_NAME)``.
    """
    import open_clip
    import torch

    from factory.curate.scorers.base import quiet_open_clip

    quiet_open_clip()
    folder = Path(folder)
    if arch in ARCHS:
        model_cfg, preprocess_cfg = ARCHS[arch]["model_cfg"], ARCHS[arch]["preprocess_cfg"]
    else:
        model_cfg = open_clip.get_model_config(arch)
        if model_cfg is None:
            raise FactoryError(f"open_clip architecture {arch!r}: not a shipped one ({', '.join(ARCHS)}) nor one "
                               f"open_clip knows (open_clip.list_models())")
        size = model_cfg["vision_cfg"]["image_size"]
        preprocess_cfg = {"size": size, "mean": _MEAN, "std": _STD, "interpolation": "bicubic",
                          "resize_mode": "shortest"}
    torch.manual_seed(seed)
    model = open_clip.CLIP(**model_cfg)
    folder = folder.absolute()
    staging = staging_dir(folder)
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    torch.save(model.state_dict(), staging / WEIGHTS_NAME)
    write_json(staging / "open_clip_config.json", {"model_cfg": model_cfg, "preprocess_cfg": preprocess_cfg})
    write_json(staging / RANDOM_WEIGHTS_MARKER, {
        "random_weights": True, "arch": arch, "model": model_name(arch), "seed": seed,
        "note": "random weights: scores from this model are not results"})
    replace_dir(staging, folder)
    return folder / WEIGHTS_NAME
