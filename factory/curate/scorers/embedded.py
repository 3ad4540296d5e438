"""The scorer for curation: one interface (:class:`Scorer`), two backends.

- ``embedded``: a small CLIP trained by the pipeline on the real train images and captions made from
  templates (:func:`train_clip`). The network is an open_clip ``CLIP`` built by
  ``open_clip.create_model_and_transforms`` from a custom architecture config (a JSON file in the model
  folder, registered with ``open_clip.add_model_config``): a ViT on 16x16 inputs and a 2-layer text
  transformer (about 0.7M parameters with the defaults). Text goes through open_clip's bundled BPE
  ``SimpleTokenizer`` (no download), whose ids are remapped to the few the captions use (see
  :class:`CaptionTokenizer`).
- ``open_clip``: any open_clip architecture name plus a local checkpoint file, loaded with its own
  preprocessing and tokenizer (:class:`OpenClipScorer`). Nothing is downloaded: a missing checkpoint, or a
  tokenizer that would have to come from the Hugging Face Hub and is not in the local cache, is a
  :class:`~factory.errors.FactoryError`.

Both give L2-normalised float32 embeddings, so every score is a cosine in [-1, 1]:
:meth:`Scorer.score` (image i with text i), :meth:`Scorer.class_scores` (N x C), :func:`margins` (own
class minus best other class), and the metrics :func:`zero_shot_accuracy` and :func:`mismatch_auc`.

Files of an embedded scorer folder (written by :func:`train_clip`):

- ``model.safetensors``: the open_clip state dict;
- ``factory-clip-<hash>.json``: the open_clip architecture config (the file registered with
  ``add_model_config``; its name is a hash of its content, so two folders never register different
  architectures under one name);
- ``vocab.json``: the tokenizer's id map (``bpe_ids[i]`` is the BPE id that model id ``i`` stands for) and
  the matching token strings;
- ``scorer.json``: everything else: the preprocessing, classes and their caption words, caption templates,
  attribute values seen, the datasets it was trained on (``parents``), the training config and summary.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch

from factory.core.errors import FactoryError
from factory.core.files import file_sha256, read_json
from factory.core.modelfolder import ModelFolder, TrainedModel
from factory.curate.scorers.base import (
    DEFAULT_BATCH_SIZE,
    Scorer,
    _create,
    _device,
    _first_line,
    attribute_phrase,
)

log = logging.getLogger(__name__)


MODEL_SCHEMA = "factory.embedded-scorer/1"


WEIGHTS_NAME = "model.safetensors"


MANIFEST_NAME = "scorer.json"


MANIFEST_KEYS = ("arch", "arch_file", "preprocess", "classes", "class_words", "templates", "attribute_templates",
                 "attributes")


VOCAB_NAME = "vocab.json"


# The folder's files besides the architecture JSON (whose name is a hash of its content); one safetensors
# metadata key only, so the weights' bytes do not depend on hash-map order.
MODEL_FOLDER = ModelFolder(kind="embedded scorer", schema=MODEL_SCHEMA, weights=WEIGHTS_NAME, config=MANIFEST_NAME,
                           files=(VOCAB_NAME,), keys=MANIFEST_KEYS, metadata={"format": "pt"}, short="scorer",
                           hint="train it first: train_clip")


ARCH_PREFIX = "factory-clip-"


NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
                "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen",
                "nineteen", "twenty")


# The caption templates (DEFAULT_TEMPLATES, DEFAULT_ATTRIBUTE_TEMPLATES) are ClipTrainConfig's defaults, in
# factory.config; the ones a model was trained with are in its manifest.


def resolve_class_words(class_words: Any, classes: Sequence[str]) -> dict[str, str]:
    """The caption word of every class (see :class:`ClipTrainConfig`)."""
    def number_word(name: str) -> str | None:
        return NUMBER_WORDS[int(name)] if name.isdigit() and int(name) < len(NUMBER_WORDS) else None

    if class_words == "names":
        return {c: c for c in classes}
    if class_words in ("auto", "numbers"):
        words = {c: number_word(c) for c in classes}
        if all(words.values()):
            return {c: str(w) for c, w in words.items()}
        if class_words == "numbers":
            bad = [c for c, w in words.items() if w is None]
            raise FactoryError(f"train_clip.class_words is 'numbers' but class(es) {bad[:5]} are not numbers "
                               f"0..{len(NUMBER_WORDS) - 1}; use 'names' or a mapping")
        return {c: c for c in classes}
    mapping = dict(class_words)
    missing = [c for c in classes if c not in mapping]
    if missing:
        raise FactoryError(f"train_clip.class_words has no word for class(es) {missing[:10]}")
    return {c: mapping[c] for c in classes}


@functools.lru_cache(maxsize=1)
def _bpe():
    """open_clip's bundled BPE tokenizer (vocabulary file inside the package: no download)."""
    from open_clip.tokenizer import SimpleTokenizer

    return SimpleTokenizer()


class CaptionTokenizer:
    """open_clip's ``SimpleTokenizer`` with its 49,408 ids remapped to the few the captions use.

    ``bpe_ids`` is the sorted list of BPE ids kept; model id ``i`` stands for ``bpe_ids[i]``. The order is
    kept, so the end-of-text token (the largest BPE id) stays the largest model id: open_clip's text tower
    pools at the argmax of the token ids. Id 0 (open_clip's padding) is always kept, so padding stays 0.
    Texts are laid out as open_clip does: start token, the BPE ids (truncated to ``context_length - 2``),
    end token, zeros. A word outside the vocabulary is an error, never a silent substitution.
    """

    def __init__(self, bpe_ids: Sequence[int], context_length: int) -> None:
        ids = [int(i) for i in bpe_ids]
        if ids != sorted(set(ids)):
            raise FactoryError("tokenizer bpe_ids must be sorted and unique")
        bpe = _bpe()
        for required in (0, bpe.sot_token_id, bpe.eot_token_id):
            if required not in ids:
                raise FactoryError(f"tokenizer bpe_ids must contain id {required} (padding, start and end of text)")
        self.bpe_ids = ids
        self.context_length = int(context_length)
        self._map = {b: i for i, b in enumerate(ids)}
        self.sot = self._map[bpe.sot_token_id]
        self.eot = self._map[bpe.eot_token_id]

    @classmethod
    def build(cls, texts: Iterable[str], context_length: int) -> "CaptionTokenizer":
        """The tokenizer for exactly the BPE ids of ``texts``; a text longer than the context is an error."""
        bpe = _bpe()
        used = {0, bpe.sot_token_id, bpe.eot_token_id}
        for t in texts:
            ids = bpe.encode(t)
            if len(ids) > context_length - 2:
                raise FactoryError(f"caption {t!r} has {len(ids)} tokens; at most context_length - 2 = "
                                   f"{context_length - 2} fit")
            used.update(ids)
        return cls(sorted(used), context_length)

    @property
    def vocab_size(self) -> int:
        return len(self.bpe_ids)

    def encode(self, text: str) -> list[int]:
        bpe = _bpe()
        ids = bpe.encode(text)
        unknown = [i for i in ids if i not in self._map]
        if unknown:
            words = sorted({bpe.decode([i]).strip() for i in unknown})
            raise FactoryError(f"text {text!r}: {', '.join(repr(w) for w in words)} not in the embedded scorer's "
                               f"vocabulary ({self.vocab_size} tokens, from its caption templates)")
        return [self._map[i] for i in ids]

    def __call__(self, texts: Sequence[str]) -> torch.Tensor:
        out = torch.zeros(len(texts), self.context_length, dtype=torch.long)
        for row, text in enumerate(texts):
            ids = self.encode(text)[: self.context_length - 2]
            out[row, : len(ids) + 2] = torch.tensor([self.sot, *ids, self.eot])
        return out

    def to_json(self) -> dict[str, Any]:
        bpe = _bpe()
        return {"tokenizer": "open_clip.tokenizer.SimpleTokenizer (bundled bpe_simple_vocab_16e6), ids remapped",
                "context_length": self.context_length, "bpe_ids": self.bpe_ids,
                "tokens": [bpe.decoder[i] for i in self.bpe_ids]}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "CaptionTokenizer":
        tok = cls(d["bpe_ids"], d["context_length"])
        bpe = _bpe()
        if "tokens" in d and list(d["tokens"]) != [bpe.decoder[i] for i in tok.bpe_ids]:
            raise FactoryError("vocab.json: its tokens do not match open_clip's bundled BPE vocabulary "
                               "(a different open_clip version?)")
        return tok


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def arch_name(arch: Mapping[str, Any]) -> str:
    """The registry name of an architecture config: a hash of its content."""
    return ARCH_PREFIX + hashlib.sha256(_canonical(arch)).hexdigest()[:12]


def register_arch(path: Path) -> str:
    """Register an architecture JSON with open_clip (once) and return its name (the file's stem)."""
    import open_clip

    path = Path(path)
    arch = read_json(path, what="open_clip model config")
    name = path.stem
    if open_clip.get_model_config(name) != arch:
        open_clip.add_model_config(path)
        if open_clip.get_model_config(name) != arch:
            raise FactoryError(f"{path}: open_clip did not register it as {name!r} (needs embed_dim, vision_cfg "
                               f"and text_cfg)")
    return name


class EmbeddedScorer(TrainedModel, Scorer):
    """A scorer folder written by :func:`train_clip` (``classes``, ``attributes`` and ``parents`` come
    from its manifest)."""

    backend = "embedded"

    def __init__(self, model_dir: Path, manifest: dict[str, Any], model: torch.nn.Module, preprocess: Callable,
                 tokenizer: CaptionTokenizer, device: torch.device, weights_sha256: str,
                 batch_size: int = DEFAULT_BATCH_SIZE) -> None:
        embed_dim = json.loads((Path(model_dir) / manifest["arch_file"]).read_text())["embed_dim"]
        super().__init__(model, preprocess, tokenizer, device, weights_sha256, embed_dim, batch_size)
        self.model_dir = Path(model_dir)
        self.manifest = manifest

    @classmethod
    def load(cls, model_dir: Path | str, device: str | torch.device = "cpu",
             batch_size: int = DEFAULT_BATCH_SIZE) -> "EmbeddedScorer":
        """Load a folder written by :func:`train_clip`. Missing or inconsistent files raise FactoryError."""
        path = Path(model_dir)
        manifest = MODEL_FOLDER.read(path)
        vocab_path, weights_path = path / VOCAB_NAME, path / WEIGHTS_NAME
        arch_path = path / manifest["arch_file"]
        if not arch_path.is_file():
            raise FactoryError(f"{arch_path}: missing; {path} is not a complete embedded scorer folder")
        name = register_arch(arch_path)
        tokenizer = CaptionTokenizer.from_json(read_json(vocab_path))
        dev = _device(device)
        try:
            model, preprocess = _create(name, str(weights_path), dev, manifest["preprocess"])
        except Exception as exc:  # open_clip raises RuntimeError/KeyError, safetensors its own error type
            raise FactoryError(f"{weights_path}: could not be loaded into {arch_path.name} ({_first_line(exc)})") from None
        if model.vocab_size != tokenizer.vocab_size:
            raise FactoryError(f"{vocab_path}: {tokenizer.vocab_size} tokens, but the model has {model.vocab_size}")
        return cls(path, manifest, model, preprocess, tokenizer, dev, file_sha256(weights_path), batch_size)

    def _model_config(self) -> dict[str, Any]:
        return self.manifest

    @property
    def class_words(self) -> dict[str, str]:
        return dict(self.manifest["class_words"])

    @property
    def templates(self) -> list[str]:
        return list(self.manifest["templates"])

    @property
    def attribute_templates(self) -> list[str]:
        return list(self.manifest["attribute_templates"])

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "model": str(self.model_dir), "arch": self.manifest["arch"]}

    def caption(self, class_name: str, attributes: Mapping[str, str] | None = None, template: int = 0) -> str:
        """A caption as in training: ``templates[template]``, or with ``attributes`` the attribute
        template of that index (e.g. "a red digit three")."""
        words = self.class_words
        if class_name not in words:
            raise FactoryError(f"class {class_name!r} is unknown to the embedded scorer {self.model_dir}; "
                               f"it knows {', '.join(self.classes)}")
        if attributes:
            if not self.attribute_templates:
                raise FactoryError(f"the embedded scorer {self.model_dir} has no attribute templates")
            return self.attribute_templates[template].format(
                word=words[class_name], class_name=class_name, attributes=attribute_phrase(attributes))
        return self.templates[template].format(word=words[class_name], class_name=class_name)

    open_vocabulary = False  # its captions' words come from the class ids it was trained on

    def class_prompts(self, classes: Sequence[str], attributes: Mapping[str, str] | None = None) -> list[str]:
        return [self.caption(c, attributes) for c in classes]

    def prompt_text(self, class_name: str, text: str | None = None,
                    attributes: Mapping[str, Any] | None = None) -> str:
        """The scorer knows only the vocabulary of its caption templates: it renders the class and the
        attributes it was trained on its way, ignoring the prompt text and unknown attribute values."""
        known = self.attributes
        attrs = {a: v for a, v in (attributes or {}).items() if str(v) in known.get(a, ())} or None
        return self.caption(class_name, attrs)
