from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch

from factory.core.errors import FactoryError
from factory.core.files import file_sha256, read_json
from factory.curate.scorers.base import (
    DEFAULT_BATCH_SIZE,
    Scorer,
    _create,
    _device,
    _first_line,
    attribute_phrase,
)

log = logging.getLogger(__name__)


# The HF-hub layout of an open_clip model: a config with ``model_cfg`` and ``preprocess_cfg`` beside the weights.
SIDECAR_NAME = "open_clip_config.json"


PREPROCESS_KEYS = ("mean", "std", "interpolation", "resize_mode")


RESIZE_MODES = ("shortest", "longest", "squash")


# The production backend's prompts (a generic CLIP prompt; set ``OpenClipScorer.templates`` to change).
OPEN_CLIP_TEMPLATE = "a photo of a {class_name}."


OPEN_CLIP_ATTRIBUTE_TEMPLATE = "a photo of a {attributes} {class_name}."


class OpenClipScorer(Scorer):
    """Any open_clip architecture with a local checkpoint file.

    Preprocessing is the model's own: ``create_model_and_transforms`` builds the validation transform
    from the architecture's image size and, for mean/std/interpolation/resize mode, from (first match):

    1. ``open_clip_config.json`` beside the checkpoint (the layout of open_clip models on the Hugging Face
       Hub: ``{"model_cfg": ..., "preprocess_cfg": ...}``);
    2. open_clip's pretrained registry for this architecture: the ``tag`` given, or the settings all its
       tags share (when they disagree, ``tag`` must say which one the checkpoint is);
    3. open_clip's defaults (OpenAI mean/std, bicubic, shortest side) when the architecture has no
       pretrained tags (a custom config): logged as a warning and recorded in :meth:`describe`.

    The tokenizer is ``open_clip.get_tokenizer(name)``. For architectures whose text tower uses a
    Hugging Face tokenizer (``hf_tokenizer_name`` in the config) that reads the Hugging Face cache and
    would download when it is missing; offline (``HF_HUB_OFFLINE=1``) a missing tokenizer is a
    FactoryError naming it. Nothing else is ever fetched.
    """

    backend = "open_clip"
    templates = (OPEN_CLIP_TEMPLATE,)
    attribute_templates = (OPEN_CLIP_ATTRIBUTE_TEMPLATE,)

    def __init__(self, name: str, checkpoint: Path, model: torch.nn.Module, preprocess: Callable, tokenizer: Callable,
                 device: torch.device, weights_sha256: str, preprocess_source: str, embed_dim: int,
                 batch_size: int = DEFAULT_BATCH_SIZE) -> None:
        super().__init__(model, preprocess, tokenizer, device, weights_sha256, embed_dim, batch_size)
        self.name = name
        self.checkpoint = Path(checkpoint)
        self.preprocess_source = preprocess_source

    @classmethod
    def load(cls, name: str, checkpoint: Path | str | None, device: str | torch.device = "cpu",
             tag: str | None = None, batch_size: int = DEFAULT_BATCH_SIZE) -> "OpenClipScorer":
        import open_clip

        if not isinstance(name, str) or not name:
            raise FactoryError("the open_clip backend needs a model (an open_clip architecture name)")
        if name.startswith(("hf-hub:", "local-dir:")):
            raise FactoryError(f"model {name!r}: give an open_clip architecture name and a local checkpoint file, "
                               f"not a hub or folder reference")
        if checkpoint is None or str(checkpoint) == "":
            raise FactoryError(f"model {name!r}: the open_clip backend needs a local checkpoint file (weights are "
                               f"never downloaded)")
        ckpt = Path(checkpoint)
        if not ckpt.is_file():
            raise FactoryError(f"{ckpt}: checkpoint file not found (the open_clip backend never downloads weights)")
        model_cfg = open_clip.get_model_config(name) or _register_sidecar(name, ckpt)
        if model_cfg is None:
            raise FactoryError(f"model {name!r}: not an open_clip architecture; choose one of open_clip.list_models(), "
                               f"register a config with open_clip.add_model_config, or put its model_cfg in "
                               f"{SIDECAR_NAME} beside the checkpoint")
        dev = _device(device)
        text_cfg = model_cfg.get("text_cfg", {})
        hf_name = text_cfg.get("hf_tokenizer_name") or text_cfg.get("hf_model_name")
        try:
            tokenizer = open_clip.get_tokenizer(name)
        except Exception as exc:  # HF raises OSError, ValueError, its own errors...
            which = f"its tokenizer {hf_name}" if hf_name else "its tokenizer"
            raise FactoryError(f"model {name!r}: {which} could not be loaded offline "
                               f"({_first_line(exc)}); put it in the Hugging Face cache (HF_HOME) first") from None
        preprocess_cfg, source = _production_preprocess(name, ckpt, tag)
        try:
            model, val = _create(name, str(ckpt), dev, preprocess_cfg)
        except Exception as exc:  # open_clip raises RuntimeError/KeyError; torch.load its own pickling errors
            hint = f" (its text tower {hf_name!r} must be in the Hugging Face cache)" if hf_name else ""
            raise FactoryError(f"{ckpt}: could not be loaded as open_clip model {name!r}{hint} "
                               f"({_first_line(exc)})") from None
        if source == "open_clip defaults":
            log.warning("open_clip model %s: no preprocessing settings beside %s and no pretrained tag; using "
                        "open_clip's defaults %s", name, ckpt, {k: model.visual.preprocess_cfg.get(k)
                                                               for k in PREPROCESS_KEYS})
        return cls(name, ckpt, model, val, tokenizer, dev, file_sha256(ckpt), source, int(model_cfg["embed_dim"]),
                   batch_size)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "model": self.name, "checkpoint": str(self.checkpoint),
                "preprocess_source": self.preprocess_source}

    def class_prompts(self, classes: Sequence[str], attributes: Mapping[str, str] | None = None) -> list[str]:
        if attributes:
            return [self.attribute_templates[0].format(class_name=c, word=c, attributes=attribute_phrase(attributes))
                    for c in classes]
        return [self.templates[0].format(class_name=c, word=c) for c in classes]


def _register_sidecar(name: str, checkpoint: Path) -> dict[str, Any] | None:
    """Register architecture ``name`` from the ``model_cfg`` of the checkpoint's sidecar
    (``open_clip_config.json``, as Hugging Face Hub checkpoints carry it), so a custom or small model loads
    by name from its own folder; None when there is no such sidecar."""
    import tempfile

    import open_clip

    sidecar = checkpoint.parent / SIDECAR_NAME
    if not sidecar.is_file():
        return None
    data = read_json(sidecar)
    cfg = data.get("model_cfg") if isinstance(data, dict) else None
    if not isinstance(cfg, dict) or not {"embed_dim", "vision_cfg", "text_cfg"} <= set(cfg):
        return None
    # open_clip rescans every registered path when another config is added: the file must stay for the
    # process's life (a temporary folder of its own, a few hundred bytes)
    path = Path(tempfile.mkdtemp(prefix="factory-open-clip-")) / f"{name}.json"
    path.write_text(json.dumps(cfg))
    open_clip.add_model_config(path)
    return open_clip.get_model_config(name)


def _production_preprocess(name: str, checkpoint: Path, tag: str | None) -> tuple[dict[str, Any], str]:
    """The mean/std/interpolation/resize mode for a checkpoint, and where they came from."""
    from open_clip.pretrained import get_pretrained_cfg, list_pretrained_tags_by_model

    sidecar = checkpoint.parent / SIDECAR_NAME
    if sidecar.is_file():
        data = read_json(sidecar)
        pp = data.get("preprocess_cfg") if isinstance(data, dict) else None
        if not isinstance(pp, dict):
            raise FactoryError(f"{sidecar}: has no preprocess_cfg mapping")
        size = pp.get("size")
        model_size = _arch_image_size(name)
        if size is not None and model_size is not None and _pair(size) != _pair(model_size):
            raise FactoryError(f"{sidecar}: preprocess_cfg.size {size} does not match model {name!r} "
                               f"(image_size {model_size})")
        return {k: pp.get(k) for k in PREPROCESS_KEYS}, str(sidecar)
    tags = list_pretrained_tags_by_model(name)
    if tag is not None:
        if tag not in tags:
            raise FactoryError(f"tag {tag!r} is not a pretrained tag of {name!r}; choose one of "
                               f"{', '.join(tags) or '(none)'}")
        cfg = get_pretrained_cfg(name, tag)
        return {k: cfg.get(k) for k in PREPROCESS_KEYS}, f"open_clip pretrained tag {tag}"
    if tags:
        settings = {json.dumps({k: get_pretrained_cfg(name, t).get(k) for k in PREPROCESS_KEYS}, default=list)
                    for t in tags}
        if len(settings) > 1:
            raise FactoryError(f"model {name!r}: its pretrained tags use different preprocessing; say which one "
                               f"{checkpoint.name} is (tag: one of {', '.join(tags)}) or put {SIDECAR_NAME} "
                               f"beside it")
        cfg = get_pretrained_cfg(name, tags[0])
        return {k: cfg.get(k) for k in PREPROCESS_KEYS}, f"open_clip pretrained tags of {name}"
    return {}, "open_clip defaults"


def _arch_image_size(name: str) -> Any:
    import open_clip

    cfg = open_clip.get_model_config(name) or {}
    return cfg.get("vision_cfg", {}).get("image_size")


def _pair(v: Any) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, (int, float)) else (int(v[0]), int(v[1]))
