import pytest
from pydantic import ValidationError

from factory.config import (
    ClassifierConfig,
    ClipTrainConfig,
    ContrastiveConfig,
    CurateConfig,
    EmbeddedTrainConfig,
    EvaluationConfig,
    GenerateConfig,
    Params,
    PlanConfig,
    PoolsConfig,
    load_params,
)
from factory.core.errors import FactoryError


def write(tmp_path, text: str):
    f = tmp_path / "params.yaml"
    f.write_text(text)
    return f


def errors_of(tmp_path, text: str) -> list[str]:
    with pytest.raises(FactoryError) as info:
        load_params(write(tmp_path, text))
    return str(info.value).splitlines()


def test_repo_params_load():
    p = load_params("params.yaml")
    assert isinstance(p, Params) and p.ingest.source == "sklearn:digits"
    # every section is the library's own config object: stages pass them on as they are
    for section, cls in (("plan", PlanConfig), ("train_generator", EmbeddedTrainConfig), ("generate", GenerateConfig),
                         ("train_clip", ClipTrainConfig), ("curate", CurateConfig), ("pools", PoolsConfig),
                         ("classifier", ClassifierConfig), ("evaluate", EvaluationConfig)):
        assert isinstance(getattr(p, section), cls), section
    assert isinstance(p.contrastive.train, ContrastiveConfig)
    assert isinstance(p.bias.train_generator, EmbeddedTrainConfig) and isinstance(p.bias.pools, PoolsConfig)


@pytest.mark.parametrize("text, match", [
    ("split:\n  test_fraction: 1.5\n", r"params.yaml: split.test_fraction: must be < 1 \(got 1.5\)$"),
    ("split:\n  test_fractoin: 0.2\n", "params.yaml: split.test_fractoin: unknown parameter; allowed: test_fraction, "
                                       "val_fraction, style, shard_size$"),
    ("ingest:\n  shard_size: 0\n", r"params.yaml: ingest.shard_size: must be >= 1 \(got 0\)$"),
    ("bogus: 1\n", "params.yaml: bogus: unknown parameter; allowed: base, ingest, "),
    ("split: [1, 2\n", "not valid YAML"),
    ("classifier:\n  arch: x\n", r"params.yaml: classifier.arch: must be one of cnn, resnet18, resnet34, resnet50 "
                                   r"\(got 'x'\)$"),
    ("classifier:\n  steps: 2.5\n", r"classifier.steps: must be an integer \(got 2.5\)$"),
    ("classifier:\n  augment: 1\n", r"classifier.augment: must be true or false \(got 1\)$"),
    ("train_generator:\n  block_out_channels: [8, 12]\n",
     r"train_generator.block_out_channels: must all be divisible by norm_num_groups \(8\) \(got \[8, 12\]\)$"),
    ("train_clip:\n  class_words: words\n", "train_clip.class_words: must be one of auto, names, numbers or a mapping"),
    ("contrastive:\n  train:\n    method: byol\n", "contrastive.train.method: must be one of simclr, stablerep, "
                                                  "stablerep_plus"),
    ("contrastive:\n  train:\n    batch_size: 6\n",
     r"contrastive.train.batch_size: must hold at least 2 groups of images_per_group \(4\), for method stablerep"),
    ("plan:\n  attributes:\n    color: {values: [red], wieghts: [1]}\n", "plan.attributes.color: must be a list of "
                                                                        "values or {values"),
    ("generate:\n  height: 12\n", r"generate.height: must be a multiple of 8 \(got 12\)$"),
    ("generate:\n  ray:\n    num_cpu: 2\n", "generate.ray.num_cpu: unknown parameter; allowed: address, num_cpus, "),
    ("curate:\n  hash: md5\n", r"curate.hash: must be one of phash, dhash, whash \(got 'md5'\)$"),
    ("curate:\n  max_distance: 64\n", "curate.max_distance: must be below the 64 bits of a 8x8 hash"),
    ("pools:\n  p: [{dataset: x, size: 3}]\n", "pools.p\\[0\\].size: unknown parameter; allowed: dataset, count, "
                                               "fraction, per_class$"),
    ("pools:\n  p: [{dataset: x, count: 3, fraction: 0.5}]\n", "pools.p\\[0\\]: give at most one of count, fraction"),
    ("pools:\n  p: []\n", "pools.p: needs at least one dataset"),
    ("bias:\n  train_generator:\n    beta_schedule: cosine\n", "bias.train_generator.beta_schedule: must be one of "),
    ("base:\n  seed: -1\n", r"base.seed: must be >= 0 \(got -1\)$"),
])
def test_bad_params_fail_with_the_parameter_name(tmp_path, text, match):
    with pytest.raises(FactoryError, match=match):
        load_params(write(tmp_path, text))


def test_every_error_is_listed_one_per_line(tmp_path):
    lines = errors_of(tmp_path, "classifier:\n  arch: vgg\n  steps: 0\n  epochz: 3\n"
                                "train_clip:\n  stepz: 3\n"
                                "contrastive:\n  train:\n    temperature: 0\n"
                                "train_generator:\n  lr: -1\n"
                                "bias:\n  pools:\n    b: data/bias/real/train\n"
                                "split:\n  test_fraction: 2\n")
    names = [line.split(": ")[1] for line in lines]
    assert names == ["split.test_fraction", "train_generator.lr", "train_clip.stepz", "classifier.arch",
                     "classifier.steps", "classifier.epochz", "contrastive.train.temperature", "bias.pools.b"], lines
    assert all(line.startswith(f"{tmp_path / 'params.yaml'}: ") for line in lines)
    assert "(and 1 more)" not in "\n".join(lines)


def test_unknown_keys_are_named_with_the_allowed_ones(tmp_path):
    [line] = errors_of(tmp_path, "train_clip:\n  stepz: 3\n")
    assert line.endswith("train_clip.stepz: unknown parameter; allowed: " + ", ".join(ClipTrainConfig.model_fields))
    [line] = errors_of(tmp_path, "contrastive:\n  train:\n    epochs: 3\n")
    assert "contrastive.train.epochs: unknown parameter; allowed: method, steps, " in line


def test_every_section_is_validated_up_front(tmp_path):
    """Sections that only one stage reads fail in load_params, before any stage runs."""
    for text, name in (("train_generator:\n  steps: 0\n", "train_generator.steps"),
                       ("train_clip:\n  shift: 8\n", "train_clip.shift"),
                       ("classifier:\n  lr: 0\n", "classifier.lr"),
                       ("contrastive:\n  train:\n    steps: 0\n", "contrastive.train.steps"),
                       ("pools:\n  p: [{dataset: x, count: 0}]\n", "pools.p[0].count"),
                       ("bias:\n  train_generator:\n    image_size: 10\n", "bias.train_generator.image_size"),
                       ("bias:\n  pools:\n    p: [{dataset: x}, {dataset: x}]\n", "bias.pools.p"),
                       ("evaluate:\n  guidance: [nope]\n", "evaluate.guidance")):
        [line] = errors_of(tmp_path, text)
        assert line.split(": ")[1] == name, line


def test_seeds_default_to_base_seed(tmp_path):
    p = load_params(write(tmp_path, "base:\n  seed: 7\nclassifier:\n  steps: 5\ntrain_clip:\n  seed: 3\n"))
    assert p.classifier.seed == 7 and p.train_clip.seed == 3  # a section's own seed wins
    for section in (p.plan, p.train_generator, p.curate, p.pools, p.contrastive.train, p.evaluate,
                    p.evaluate.classifier, p.bias.plan, p.bias.train_generator, p.bias.pools):
        assert section.seed == 7, section
    assert all(spec.seed == 7 for spec in p.pools.specs)
    bias = p.study("bias")
    assert bias.plan.seed == bias.train_generator.seed == bias.pools.seed == 7
    assert bias.plan.dataset == "data/bias/real/train"  # the study's own default, not the main plan's
    assert load_params(write(tmp_path, "base:\n  seed: 0\n")).classifier.seed == 0


def test_numbers_keep_their_type(tmp_path):
    """PyYAML reads ``2e-3`` as a string: it becomes a float; an int given for a float stays an int (it is
    written into model folders and metrics as given)."""
    p = load_params(write(tmp_path, "classifier:\n  lr: 2e-3\n  weight_decay: 0\ntrain_generator:\n  lr: 1\n"
                                    "curate:\n  percentile: 5\nsweep:\n  guidance_scales: [1, 2.5]\n"))
    assert p.classifier.lr == 0.002 and type(p.classifier.lr) is float
    assert type(p.classifier.weight_decay) is int and type(p.train_generator.lr) is int
    assert type(p.curate.percentile) is float  # as it always was for curate
    assert list(p.sweep.datasets()) == ["w1", "w2.5"]


def test_missing_params_file(tmp_path):
    with pytest.raises(FactoryError, match="no such params file"):
        load_params(tmp_path / "nope.yaml")


def test_config_is_frozen():
    p = load_params("params.yaml")
    with pytest.raises(ValidationError, match="frozen"):
        p.split.test_fraction = 0.5
    with pytest.raises(ValidationError, match="frozen"):
        p.classifier.steps = 1


def test_proof_sections_of_the_repo_params():
    params = load_params("params.yaml")
    specs = {s.name: s for s in params.pools.specs}
    assert {"real", "synthetic", "real_synthetic", "frac0", "frac100"} <= set(specs) == set(params.pools)
    assert set(params.contrastive.pools) <= set(specs) and set(params.report.fraction_pools) <= set(specs)
    assert params.classifier.seed == params.base.seed and params.evaluate.classifier == params.classifier
    ev = params.evaluate
    sweep = [f"w{g}" for g in params.sweep.guidance_scales]
    assert set(sweep) <= set(ev.datasets) and set(sweep) <= set(ev.cas) and set(sweep) <= set(ev.guidance)
    assert ev.datasets["w1"] == "data/synthetic/guidance/w1"  # named as dvc.yaml renders w${item}
    bias = params.study("bias")
    assert bias.plan.dataset == "data/bias/real/train" and [a.name for a in bias.plan.attributes] == ["color"]
    assert bias.generate.model == "models/bias/generator" and set(bias.pools) == set(params.bias.pools)


def test_evaluation_and_pool_params_errors(tmp_path):
    p = tmp_path / "params.yaml"
    p.write_text("evaluate:\n  datasets: {raw: data/synthetic/raw}\n  cas: [nope]\n")
    with pytest.raises(FactoryError, match=r"evaluate.cas: \['nope'\] are not in evaluate.datasets or the sweep"):
        load_params(p)
    p.write_text("evaluate:\n  cas: [w3]\nsweep:\n  guidance_scales: [3]\n")  # a sweep output may be named
    assert load_params(p).evaluate.cas == ("w3",)
    p.write_text("pools:\n  bad: data/real/train\n")
    with pytest.raises(FactoryError, match="pools.bad: must be a list"):
        load_params(p)
    p.write_text("sweep:\n  guidance_scales: [1, -2]\n")
    with pytest.raises(FactoryError, match="sweep.guidance_scales"):
        load_params(p)
    with pytest.raises(FactoryError, match="unknown study"):
        load_params("params.yaml").study("nope")


# -- issue 10: YAML aliases are bounded (a recursive or "billion laughs" alias hung the reader) --

LAUGHS = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{n}: &{n} [{', '.join(['*' + p] * 9)}]\n" for p, n in zip("abcdefgh", "bcdefghi"))
RECURSIVE = "is inside the node it names (a recursive structure)"


@pytest.mark.timeout(20)
@pytest.mark.parametrize("text, line, what", [
    ("a: &a [*a]\n", 1, f"*a {RECURSIVE}"),
    ("base: &a {seed: 0, x: *a}\n", 1, f"*a {RECURSIVE}"),
    ("x: &a {y: [1, {z: *a}]}\n", 1, f"*a {RECURSIVE}"),
    (LAUGHS, 5, "*d is more than 32 aliases in one file"),
])
def test_recursive_and_exponential_yaml_aliases_are_refused(tmp_path, text, line, what):
    assert errors_of(tmp_path, text) == [f"{tmp_path / 'params.yaml'}:{line}: YAML alias {what}"]


def test_plain_anchors_and_aliases_load(tmp_path):
    """``yaml.dump`` writes an anchor and an alias for an object used twice: such a file loads."""
    (tmp_path / "params.yaml").write_text("plan:\n  templates: &t ['a {class_name}']\n"
                                          "bias:\n  plan:\n    templates: *t\n")
    params = load_params(tmp_path / "params.yaml")
    assert params.plan.templates == params.bias.plan.templates
