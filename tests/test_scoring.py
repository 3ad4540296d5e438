"""The scorer: config, tokenizer, the embedded CLIP (train, save/load, determinism, attribute captions),
the production open_clip path with a tiny random-weight model, and the score helpers.

The accuracy targets of the real embedded recipe are measured by bench/clip.py, not asserted here:
these models are trained for a handful of steps.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import hashlib  # noqa: E402
import itertools  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from factory.core.errors import FactoryError  # noqa: E402
from factory.core.shards import Dataset, DatasetWriter  # noqa: E402
from factory.curate.scorers import load_scorer
from factory.curate.scorers.base import class_prompts, dataset_class_scores, margins, mismatch_auc, zero_shot_accuracy
from factory.curate.scorers.embedded import (
    MANIFEST_NAME,
    VOCAB_NAME,
    WEIGHTS_NAME,
    CaptionTokenizer,
    EmbeddedScorer,
    resolve_class_words,
)
from factory.curate.scorers.openclip import OpenClipScorer, _production_preprocess
from factory.train.clip import ClipTrainConfig, learning_rate, shift_images, train_clip

# A tiny CLIP (about 25k parameters plus the vocabulary): trains for a few steps in about a second.
TINY = ClipTrainConfig(vision_width=32, vision_layers=1, vision_head_width=16, embed_dim=16, text_width=32,
                       text_layers=1, text_heads=2, steps=4, batch_size=32)


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def subset(src, out: Path, n: int) -> Path:
    """The first ``n`` samples of ``src`` (a Dataset or an iterable of samples) as a new dataset."""
    classes = src.classes
    with DatasetWriter(out, "subset", classes, shard_size=64) as w:
        w.write_all(itertools.islice(iter(src), n))
    return out


@pytest.fixture(scope="module")
def small(tmp_path_factory, digits) -> Path:
    return subset(Dataset(digits), tmp_path_factory.mktemp("clip-small") / "digits", 200)


@pytest.fixture(scope="module")
def colored(tmp_path_factory) -> Path:
    from factory.data.sources import colored_digits_source

    return subset(colored_digits_source(bias=0.9), tmp_path_factory.mktemp("clip-colored") / "colored", 120)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, small) -> Path:
    out = tmp_path_factory.mktemp("clip-model") / "clip"
    train_clip(small, TINY, out)
    return out


@pytest.fixture(scope="module")
def scorer(model_dir) -> EmbeddedScorer:
    return load_scorer("embedded", str(model_dir))


def images_of(path: Path, n: int) -> tuple[list[Image.Image], list[int]]:
    samples = list(itertools.islice(iter(Dataset(path)), n))
    return [s.pil() for s in samples], [s.label for s in samples]


# -- config -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("field,value", [
    ("steps", 0), ("steps", 1.5), ("batch_size", 1), ("lr", 0.0), ("lr", float("nan")), ("weight_decay", -1),
    ("image_size", 18), ("vision_width", 100), ("text_width", 130), ("context_length", 2), ("mlp_ratio", 0),
    ("warmup_steps", -1), ("max_logit_scale", 1.0), ("attribute_caption_prob", 1.5), ("templates", ()),
    ("templates", "a {word}"), ("class_words", "words"), ("class_words", {"3": ""}), ("mean", (0.5, 0.5)),
    ("std", (0.5, 0.0, 0.5)), ("interpolation", "lanczos"), ("seed", -1), ("max_seconds", 0), ("steps", True),
    ("shift", 8), ("shift", -1), ("lr_schedule", "linear"), ("threads", 0),
])
def test_config_rejects_bad_values_naming_the_field(field, value):
    with pytest.raises(FactoryError, match=rf"^train_clip\.{field}: "):
        ClipTrainConfig(**{field: value})


@pytest.mark.parametrize("field,template,match", [
    ("templates", "a photo of {animal}", "unknown|uses field"),
    ("templates", "a {} digit", "uses field"),
    ("templates", "a {word", "bad template"),
    ("attribute_templates", "a digit {word}", "must contain {attributes}"),
])
def test_config_checks_templates(field, template, match):
    with pytest.raises(FactoryError, match=rf"train_clip\.{field}.*({match})"):
        ClipTrainConfig(**{field: (template,)})


def test_config_round_trip_and_unknown_keys():
    cfg = ClipTrainConfig(**{"steps": 7, "templates": ["a {word}"], "class_words": {"0": "nought"}})
    assert cfg.templates == ("a {word}",) and cfg.class_words == (("0", "nought"),)
    assert ClipTrainConfig(**cfg.to_dict()) == cfg
    json.dumps(cfg.to_dict())  # plain JSON, for the model folder
    with pytest.raises(FactoryError, match="^train_clip.stepz: unknown parameter; allowed: image_size, "):
        ClipTrainConfig(stepz=3)


def test_learning_rate_schedule():
    cfg = ClipTrainConfig(steps=100, warmup_steps=10, lr=1e-3, lr_schedule="cosine")
    assert learning_rate(cfg, 5) == pytest.approx(5e-4) and learning_rate(cfg, 10) == pytest.approx(1e-3)
    assert learning_rate(cfg, 55) == pytest.approx(5e-4) and learning_rate(cfg, 100) == pytest.approx(0.0)
    assert learning_rate(ClipTrainConfig(steps=100, warmup_steps=0, lr_schedule="constant"), 1) == 1e-3


def test_shift_augmentation_crops_from_the_padded_images():
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).reshape(2, 3, 4, 4)
    padded = torch.nn.functional.pad(x, (1,) * 4, mode="replicate")
    gen = torch.Generator().manual_seed(0)
    out = shift_images(padded, torch.tensor([1, 0, 1]), 1, 4, gen)
    assert out.shape == (3, 3, 4, 4)
    offsets = torch.randint(0, 3, (3, 2), generator=torch.Generator().manual_seed(0)).tolist()
    for row, (i, (dy, dx)) in enumerate(zip([1, 0, 1], offsets)):
        torch.testing.assert_close(out[row], padded[i, :, dy:dy + 4, dx:dx + 4])
    assert torch.equal(padded[0, :, 1:5, 1:5], x[0])  # offset (1, 1) is the image itself


def test_class_words():
    assert resolve_class_words("auto", ["0", "3"]) == {"0": "zero", "3": "three"}
    assert resolve_class_words("auto", ["cat", "dog"]) == {"cat": "cat", "dog": "dog"}
    assert resolve_class_words("names", ["0"]) == {"0": "0"}
    assert resolve_class_words((("a", "apple"), ("b", "bee")), ["a", "b"]) == {"a": "apple", "b": "bee"}
    with pytest.raises(FactoryError, match="'numbers'.*cat"):
        resolve_class_words("numbers", ["1", "cat"])
    with pytest.raises(FactoryError, match="no word for class.*'b'"):
        resolve_class_words((("a", "apple"),), ["a", "b"])


# -- tokenizer --------------------------------------------------------------------------------------


def test_tokenizer_remaps_ids_in_order_and_keeps_end_of_text_largest():
    tok = CaptionTokenizer.build(["a photo of the digit three", "a handwritten 3"], context_length=16)
    assert tok.bpe_ids == sorted(tok.bpe_ids) and tok.bpe_ids[0] == 0
    assert tok.eot == tok.vocab_size - 1 and tok.sot == tok.vocab_size - 2
    ids = tok(["a handwritten 3", "a photo of the digit three"])
    assert ids.shape == (2, 16) and ids.dtype == torch.long
    assert ids[0, 0] == tok.sot and ids[0, 4] == tok.eot and (ids[0, 5:] == 0).all()
    assert int(ids[1].argmax()) == 7  # open_clip pools here: the end-of-text token
    assert CaptionTokenizer.from_json(json.loads(json.dumps(tok.to_json()))).bpe_ids == tok.bpe_ids
    with pytest.raises(FactoryError, match="'seven'.*not in the embedded scorer's vocabulary"):
        tok(["a photo of the digit seven"])


def test_tokenizer_rejects_captions_longer_than_the_context():
    with pytest.raises(FactoryError, match="at most context_length - 2"):
        CaptionTokenizer.build(["one two three four five six"], context_length=5)


# -- the embedded scorer ----------------------------------------------------------------------------


def test_train_writes_a_complete_folder(model_dir, small):
    names = sorted(p.name for p in model_dir.iterdir())
    assert WEIGHTS_NAME in names and MANIFEST_NAME in names and VOCAB_NAME in names
    manifest = json.loads((model_dir / MANIFEST_NAME).read_text())
    arch = json.loads((model_dir / manifest["arch_file"]).read_text())
    assert arch["vision_cfg"]["image_size"] == 16 and arch["text_cfg"]["context_length"] == 16
    assert arch["text_cfg"]["vocab_size"] == len(json.loads((model_dir / VOCAB_NAME).read_text())["bpe_ids"])
    assert manifest["classes"] == [str(i) for i in range(10)]
    assert manifest["class_words"]["3"] == "three"
    assert manifest["templates"][0] == "a photo of the digit {word}"
    assert manifest["parents"] == [Dataset(small).ref()]
    assert manifest["summary"]["steps"] == TINY.steps and manifest["train"]["steps"] == TINY.steps
    assert "seconds" not in manifest["summary"], "a model folder holds no wall-clock time (same seed, same bytes)"
    assert not list(model_dir.parent.glob(".*partial*"))


def test_default_architecture_is_about_0_7m_parameters():
    import open_clip

    arch = ClipTrainConfig().arch(vocab_size=40)
    model = open_clip.model.CLIP(**arch)
    assert 0.65e6 < sum(p.numel() for p in model.parameters()) < 0.75e6


def test_load_round_trip(scorer, model_dir):
    d = scorer.describe()
    assert d["backend"] == "embedded" and d["model"] == str(model_dir)
    assert d["weights_sha256"] == sha256(model_dir / WEIGHTS_NAME)
    assert d["preprocess"]["size"] == [16, 16] and d["preprocess"]["mean"] == [0.5, 0.5, 0.5]
    again = load_scorer("embedded", model_dir)
    texts = class_prompts(scorer, scorer.classes)
    np.testing.assert_array_equal(scorer.embed_texts(texts), again.embed_texts(texts))
    from safetensors.torch import load_file

    saved = load_file(str(model_dir / WEIGHTS_NAME))
    for k, v in scorer.model.state_dict().items():
        torch.testing.assert_close(v, saved[k], rtol=0, atol=0)


def test_embeddings_are_normalised_float32_and_batch_independent(scorer, small):
    ims, _ = images_of(small, 20)
    e = scorer.embed_images(ims)
    assert e.shape == (20, scorer.embed_dim) and e.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-5)
    t = scorer.embed_texts(class_prompts(scorer, scorer.classes))
    assert t.shape == (10, scorer.embed_dim) and t.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(t, axis=1), 1.0, atol=1e-5)
    small_batches = load_scorer("embedded", scorer.model_dir, batch_size=7)
    np.testing.assert_allclose(small_batches.embed_images(ims), e, atol=1e-5)
    assert scorer.embed_images([]).shape == (0, scorer.embed_dim)
    assert scorer.embed_texts([]).shape == (0, scorer.embed_dim)


def test_grayscale_is_repeated_to_rgb(scorer, small):
    ims, _ = images_of(small, 4)
    assert ims[0].mode == "L"
    np.testing.assert_allclose(scorer.embed_images(ims), scorer.embed_images([im.convert("RGB") for im in ims]),
                               atol=1e-6)


def test_scores_agree(scorer, small):
    ims, labels = images_of(small, 12)
    prompts = class_prompts(scorer, scorer.classes)
    assert prompts[3] == "a photo of the digit three"
    s = scorer.class_scores(ims, prompts)
    assert s.shape == (12, 10) and s.dtype == np.float32 and np.all(np.abs(s) <= 1.0 + 1e-5)
    own = scorer.score(ims, [prompts[y] for y in labels])
    np.testing.assert_allclose(own, s[np.arange(12), labels], atol=1e-5)
    m = margins(s, labels)
    other = s.copy()
    other[np.arange(12), labels] = -np.inf
    np.testing.assert_allclose(m, own - other.max(axis=1), atol=1e-5)
    with pytest.raises(FactoryError, match="one text per image"):
        scorer.score(ims, prompts[:2])


def test_unknown_words_and_classes_are_errors(scorer):
    with pytest.raises(FactoryError, match="'dog'.*vocabulary"):
        scorer.embed_texts(["a photo of the dog"])
    with pytest.raises(FactoryError, match="class 'cat' is unknown"):
        class_prompts(scorer, ["cat"])
    with pytest.raises(FactoryError, match="list of texts"):
        scorer.embed_texts("a photo of the digit three")


def test_metrics_run_and_are_in_range(scorer, small):
    acc = zero_shot_accuracy(scorer, small)
    auc = mismatch_auc(scorer, small, seed=0)
    assert 0.0 <= acc <= 1.0 and 0.0 <= auc <= 1.0
    assert mismatch_auc(scorer, small, seed=0) == auc
    scores, labels = dataset_class_scores(scorer, Dataset(small))
    assert scores.shape == (200, 10) and labels.shape == (200,)
    assert acc == pytest.approx(float(np.mean(scores.argmax(1) == labels)))


def test_training_is_deterministic(tmp_path, small, model_dir):
    train_clip(small, TINY, tmp_path / "a")
    assert sha256(tmp_path / "a" / WEIGHTS_NAME) == sha256(model_dir / WEIGHTS_NAME)
    assert (tmp_path / "a" / VOCAB_NAME).read_bytes() == (model_dir / VOCAB_NAME).read_bytes()
    train_clip(small, ClipTrainConfig(**{**TINY.to_dict(), "seed": 1}), tmp_path / "b")
    assert sha256(tmp_path / "b" / WEIGHTS_NAME) != sha256(model_dir / WEIGHTS_NAME)


def test_training_with_augmentation_and_schedule_is_deterministic(tmp_path, small):
    cfg = ClipTrainConfig(**{**TINY.to_dict(), "steps": 3, "shift": 1, "warmup_steps": 1, "lr_schedule": "cosine"})
    train_clip(small, cfg, tmp_path / "a")
    train_clip(small, cfg, tmp_path / "b")
    assert sha256(tmp_path / "a" / WEIGHTS_NAME) == sha256(tmp_path / "b" / WEIGHTS_NAME)
    assert json.loads((tmp_path / "a" / MANIFEST_NAME).read_text())["train"]["shift"] == 1


def test_train_progress_and_overwrite_rules(tmp_path, small):
    calls = []
    cfg = ClipTrainConfig(**{**TINY.to_dict(), "steps": 2})
    out = tmp_path / "clip"
    summary = train_clip(small, cfg, out, progress=lambda s, t, loss: calls.append((s, t, loss)))
    assert [c[:2] for c in calls] == [(1, 2), (2, 2)] and all(np.isfinite(c[2]) for c in calls)
    assert summary["steps"] == 2 and summary["parameters"] > 0 and summary["logit_scale"] <= 100.0 + 1e-3
    threads = torch.get_num_threads()
    assert train_clip(small, ClipTrainConfig(**{**cfg.to_dict(), "threads": 1}), out)["torch_threads"] == 1
    assert torch.get_num_threads() == threads  # the caller's setting is restored
    train_clip(small, cfg, out)  # a scorer folder may be replaced
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(FactoryError, match="not a scorer folder"):
        train_clip(small, cfg, other)
    assert (other / "notes.txt").read_text() == "mine"


def test_attribute_captions(tmp_path, colored):
    out = tmp_path / "clip"
    train_clip(colored, TINY, out)
    sc = load_scorer("embedded", out)
    assert "red" in sc.attributes["color"]
    tokens = json.loads((out / VOCAB_NAME).read_text())["tokens"]
    assert "red</w>" in tokens
    assert class_prompts(sc, ["3"], {"color": "red"}) == ["a red digit three"]
    assert class_prompts(sc, ["3"]) == ["a photo of the digit three"]
    colours = [class_prompts(sc, ["3"], {"color": c})[0] for c in sc.attributes["color"]]
    ims, _ = images_of(colored, 5)
    assert ims[0].mode == "RGB"
    assert sc.class_scores(ims, colours).shape == (5, len(colours))


def test_load_errors(tmp_path, model_dir):
    with pytest.raises(FactoryError, match="no such scorer folder"):
        load_scorer("embedded", tmp_path / "nope")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / MANIFEST_NAME).write_text((model_dir / MANIFEST_NAME).read_text())
    (broken / VOCAB_NAME).write_text((model_dir / VOCAB_NAME).read_text())
    with pytest.raises(FactoryError, match=rf"{WEIGHTS_NAME}: missing"):
        load_scorer("embedded", broken)
    with pytest.raises(FactoryError, match="checkpoint must be null"):
        load_scorer("embedded", model_dir, "weights.pt")
    with pytest.raises(FactoryError, match="backend must be one of embedded, open_clip"):
        load_scorer("clip", model_dir)


def test_margins_helper():
    s = np.array([[0.9, 0.1, 0.3], [0.2, 0.5, 0.6]], np.float32)
    np.testing.assert_allclose(margins(s, [0, 1]), [0.6, -0.1], atol=1e-6)
    with pytest.raises(FactoryError, match="C >= 2"):
        margins(s[:, :1], [0, 0])
    with pytest.raises(FactoryError, match="labels must be in 0..2"):
        margins(s, [0, 3])
    with pytest.raises(FactoryError, match="one label per row"):
        margins(s, [0])


# -- the production backend: a tiny random-weight open_clip model ------------------------------------

TINY_ARCH = {"embed_dim": 16,
             "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 32, "layers": 1, "head_width": 16},
             "text_cfg": {"context_length": 20, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
TINY_PREPROCESS = {"size": 32, "mean": [0.25, 0.5, 0.75], "std": [0.2, 0.3, 0.4], "interpolation": "bilinear",
                   "resize_mode": "squash"}


def register(tmp_path: Path, name: str, arch: dict) -> str:
    import open_clip

    cfg_dir = tmp_path / "configs"
    cfg_dir.mkdir(exist_ok=True)
    (cfg_dir / f"{name}.json").write_text(json.dumps(arch))
    open_clip.add_model_config(cfg_dir / f"{name}.json")
    return name


@pytest.fixture
def tiny_checkpoint(tmp_path) -> tuple[str, Path]:
    """A registered tiny architecture and its random weights saved with torch.save, with the HF-hub style
    ``open_clip_config.json`` beside them."""
    import open_clip

    name = register(tmp_path, "factory-test-tiny-clip", TINY_ARCH)
    torch.manual_seed(0)
    model = open_clip.create_model(name)
    ckpt = tmp_path / "weights" / "tiny.pt"
    ckpt.parent.mkdir()
    torch.save(model.state_dict(), ckpt)
    (ckpt.parent / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_ARCH,
                                                                   "preprocess_cfg": TINY_PREPROCESS}))
    return name, ckpt


def test_an_unregistered_architecture_loads_from_its_checkpoints_sidecar(tmp_path):
    """A checkpoint folder that carries its model_cfg (open_clip_config.json, as on the Hub) loads by name with
    no add_model_config call: what a pipeline's own small model needs."""
    import open_clip

    name = "factory-test-sidecar-clip"
    assert open_clip.get_model_config(name) is None
    torch.manual_seed(1)
    model = open_clip.CLIP(**TINY_ARCH)
    ckpt = tmp_path / "clip" / "weights.pt"
    ckpt.parent.mkdir()
    torch.save(model.state_dict(), ckpt)
    (ckpt.parent / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_ARCH,
                                                                   "preprocess_cfg": TINY_PREPROCESS}))
    sc = load_scorer("open_clip", name, str(ckpt))
    assert sc.describe()["weights_sha256"] == sha256(ckpt) and sc.embed_dim == 16
    assert sc.class_prompts(["tench"]) and sc.open_vocabulary
    (ckpt.parent / "open_clip_config.json").unlink()
    other = tmp_path / "other" / "weights.pt"
    other.parent.mkdir()
    torch.save(model.state_dict(), other)
    with pytest.raises(FactoryError, match="not an open_clip architecture"):
        load_scorer("open_clip", "factory-test-no-such-clip", str(other))


def test_production_path_loads_weights_with_the_models_own_preprocessing(tiny_checkpoint):
    import open_clip

    name, ckpt = tiny_checkpoint
    sc = load_scorer("open_clip", name, str(ckpt))
    assert isinstance(sc, OpenClipScorer)
    d = sc.describe()
    assert d["backend"] == "open_clip" and d["model"] == name and d["checkpoint"] == str(ckpt)
    assert d["weights_sha256"] == sha256(ckpt)
    assert d["preprocess_source"].endswith("open_clip_config.json")
    assert d["preprocess"]["size"] == [32, 32] and d["preprocess"]["mean"] == [0.25, 0.5, 0.75]
    assert d["preprocess"]["std"] == [0.2, 0.3, 0.4] and d["preprocess"]["resize_mode"] == "squash"
    norm = [t for t in sc.preprocess.transforms if type(t).__name__ == "Normalize"]
    assert len(norm) == 1 and list(norm[0].mean) == [0.25, 0.5, 0.75]
    x = sc.preprocess(Image.new("L", (8, 8), 255))
    assert x.shape == (3, 32, 32)
    torch.testing.assert_close(x[:, 0, 0], torch.tensor([(1 - 0.25) / 0.2, (1 - 0.5) / 0.3, (1 - 0.75) / 0.4]))
    saved = torch.load(ckpt)
    for k, v in sc.model.state_dict().items():
        torch.testing.assert_close(v, saved[k], rtol=0, atol=0)
    # its own tokenizer (open_clip's SimpleTokenizer at the model's context length of 20)
    ref = open_clip.get_tokenizer(name)(["a photo of a 3."])
    assert ref.shape == (1, 20)
    with torch.no_grad():
        want = torch.nn.functional.normalize(sc.model.encode_text(ref), dim=-1).numpy()
    np.testing.assert_allclose(sc.embed_texts(["a photo of a 3."]), want, atol=1e-6)
    e = sc.embed_images([Image.new("RGB", (40, 30), (200, 10, 10)), Image.new("L", (8, 8), 90)])
    assert e.shape == (2, 16) and e.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-5)
    assert class_prompts(sc, ["3"]) == ["a photo of a 3."]
    assert class_prompts(sc, ["3"], {"color": "red"}) == ["a photo of a red 3."]


def test_production_without_preprocessing_settings_uses_open_clip_defaults_loudly(tiny_checkpoint, tmp_path, caplog):
    from open_clip.constants import OPENAI_DATASET_MEAN

    name, ckpt = tiny_checkpoint
    bare = tmp_path / "bare.pt"
    bare.write_bytes(ckpt.read_bytes())
    with caplog.at_level(logging.WARNING, logger="factory.curate.scorers.openclip"):
        sc = load_scorer("open_clip", name, bare)
    assert "open_clip's defaults" in caplog.text
    d = sc.describe()
    assert d["preprocess_source"] == "open_clip defaults"
    assert d["preprocess"]["size"] == [32, 32]
    assert d["preprocess"]["mean"] == pytest.approx(list(OPENAI_DATASET_MEAN))


def test_production_checkpoint_errors(tiny_checkpoint, tmp_path):
    name, ckpt = tiny_checkpoint
    missing = tmp_path / "nowhere" / "model.pt"
    with pytest.raises(FactoryError, match=rf"{missing}: checkpoint file not found"):
        load_scorer("open_clip", name, str(missing))
    with pytest.raises(FactoryError, match="needs a local checkpoint file"):
        load_scorer("open_clip", name, None)
    bare = tmp_path / "bare" / "model.pt"  # no open_clip_config.json beside it to take the architecture from
    bare.parent.mkdir()
    bare.write_bytes(ckpt.read_bytes())
    with pytest.raises(FactoryError, match="not an open_clip architecture"):
        load_scorer("open_clip", "no-such-arch-xyz", bare)
    with pytest.raises(FactoryError, match="not a hub or folder reference"):
        load_scorer("open_clip", "hf-hub:org/model", ckpt)
    other = register(tmp_path, "factory-test-tiny-clip-wide", {**TINY_ARCH, "embed_dim": 24})
    wrong = tmp_path / "wrong" / "w.pt"
    wrong.parent.mkdir()
    wrong.write_bytes(ckpt.read_bytes())
    with pytest.raises(FactoryError, match=rf"{wrong}: could not be loaded as open_clip model '{other}'"):
        load_scorer("open_clip", other, wrong)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(FactoryError, match="could not be loaded"):
        load_scorer("open_clip", name, garbage)


def test_production_sidecar_size_must_match(tiny_checkpoint):
    name, ckpt = tiny_checkpoint
    sidecar = ckpt.parent / "open_clip_config.json"
    sidecar.write_text(json.dumps({"preprocess_cfg": {**TINY_PREPROCESS, "size": 224}}))
    with pytest.raises(FactoryError, match="size 224 does not match"):
        load_scorer("open_clip", name, ckpt)


def test_production_hf_tokenizer_offline_is_a_clear_error(tmp_path, tiny_checkpoint):
    _, ckpt = tiny_checkpoint
    arch = json.loads(json.dumps(TINY_ARCH))
    arch["text_cfg"]["hf_tokenizer_name"] = "factory-test/no-such-tokenizer"
    name = register(tmp_path, "factory-test-tiny-clip-hftok", arch)
    with pytest.raises(FactoryError, match="tokenizer factory-test/no-such-tokenizer could not be loaded offline"):
        load_scorer("open_clip", name, ckpt)


def test_production_preprocessing_from_open_clip_pretrained_tags(tmp_path):
    ckpt = tmp_path / "w.pt"  # not read: only where a sidecar would be looked for
    cfg, source = _production_preprocess("ViT-B-32", ckpt, None)
    assert source == "open_clip pretrained tags of ViT-B-32" and cfg["interpolation"] == "bicubic"
    with pytest.raises(FactoryError, match="different preprocessing.*tag: one of"):
        _production_preprocess("ViT-L-14", ckpt, None)
    assert _production_preprocess("ViT-L-14", ckpt, "openai")[1] == "open_clip pretrained tag openai"
    with pytest.raises(FactoryError, match="not a pretrained tag"):
        _production_preprocess("ViT-B-32", ckpt, "nope")


def test_open_clip_info_lines_stay_out_of_the_output(tmp_path, caplog):
    """open_clip logs its model loading at INFO on the root logger ("Loaded built-in ... model config"): a stage
    logging at INFO must not print it; factory's own warnings and the user's root INFO lines still come out."""
    from factory.curate.scorers.random_clip import WEIGHTS_NAME as OC_WEIGHTS
    from factory.curate.scorers.random_clip import build_open_clip, model_name

    with caplog.at_level(logging.INFO):
        build_open_clip(tmp_path / "oc", "photo32")
        sc = load_scorer("open_clip", model_name("photo32"), tmp_path / "oc" / OC_WEIGHTS)
        sc.score([Image.new("RGB", (32, 32))], ["a photo of a dog"])
        logging.getLogger("factory.curate.filter").warning("a factory warning")
        logging.info("a user's own info line")
        import open_clip

        open_clip.get_tokenizer(model_name("photo32"))  # logs "Parsing tokenizer identifier" at INFO
    from_open_clip = [r for r in caplog.records if f"{os.sep}open_clip{os.sep}" in r.pathname]
    assert [r.getMessage() for r in from_open_clip if r.levelno < logging.WARNING] == []
    messages = [r.getMessage() for r in caplog.records]
    assert "a factory warning" in messages and "a user's own info line" in messages
    # ... and without the filter the same calls do log at INFO: the check above can fail
    from factory.curate.scorers.base import _QuietOpenClip

    root = logging.getLogger()
    quiet = [f for f in root.filters if isinstance(f, _QuietOpenClip)]
    for f in quiet:
        root.removeFilter(f)
    try:
        caplog.clear()
        with caplog.at_level(logging.INFO):
            open_clip.get_tokenizer(model_name("photo32"))
        assert any(f"{os.sep}open_clip{os.sep}" in r.pathname for r in caplog.records)
    finally:
        for f in quiet:
            root.addFilter(f)
