"""The metrics of one loop generation (factory.measure.loops) on the digits with the tiny generator: fields,
the real floor, diversity and near-duplicates, the denoising loss, CAS, a bad n; and the run summary."""

import io
import json

import pytest
import torch

from factory.core.errors import FactoryError
from factory.core.sample import real_sample
from factory.core.shards import Dataset, DatasetWriter
from factory.data.ingest import split
from factory.generate.backends.embedded import MODEL_FOLDER
from factory.generate.plans import PlanConfig, build_plan, write_plan
from factory.generate.tasks import GenerateConfig, generate
from factory.measure.loops import (
    LoopMeasureConfig,
    _load_generator,
    denoise_loss,
    measure_generation,
    summarise_rows,
)
from factory.measure.metrics import METRIC_NAMES
from factory.measure.recognition import save_reference_classifier, train_reference_classifier

CFG = LoopMeasureConfig(draws=2, bootstrap=20, cas_steps=8, cas_seeds=(0, 1), cas_batch_size=32,
                        denoise_timesteps=(50, 500))


@pytest.fixture(scope="module")
def real(tmp_path_factory, digits_split):
    """Real train (the reference CNN's), val (the floor) and test; the reference CNN's folder."""
    root = tmp_path_factory.mktemp("loop-real")
    split(digits_split[0], root / "train", root / "val", test_fraction=0.2, seed=0)
    model, info = train_reference_classifier(root / "train", epochs=2, seed=0)
    save_reference_classifier(model, info, root / "reference")
    return {"train": root / "train", "val": root / "val", "test": digits_split[1], "reference": root / "reference"}


@pytest.fixture(scope="module")
def generation(tmp_path_factory, generator_dir, digits_split):
    """A tiny synthetic set: 10 images per class sampled from the tiny generator."""
    root = tmp_path_factory.mktemp("loop-gen")
    plan = build_plan(PlanConfig(images_per_class=10, images_per_prompt=1, templates=("a {class_name}",)),
                      Dataset(digits_split[0]).classes)
    write_plan(plan, root / "plan.jsonl")
    cfg = GenerateConfig(backend="embedded", model=str(generator_dir), steps=4, batch_size=20, shard_size=60)
    generate(root / "plan.jsonl", root / "g1", cfg)
    return root / "g1"


@pytest.fixture(scope="module")
def cache():
    return {}


@pytest.fixture(scope="module")
def measured(generation, generator_dir, real, cache):
    return measure_generation(generation, generator_dir, reference=real["reference"], real_test=real["test"],
                              real_val=real["val"], cfg=CFG, floor_cache=cache)


def test_fields_types_floor_and_json(measured, real):
    m = measured
    assert json.loads(json.dumps(m)) == m  # JSON-ready (string keys, plain numbers)
    assert m["samples"] == 100 and m["n"] == 100  # the smallest of generation (100), val (288), test (359)
    for metric in METRIC_NAMES:
        assert isinstance(m[metric], float) and isinstance(m["floor"][metric], float)
        lo, hi = m[f"{metric}_ci95"]
        assert lo <= hi and len(m["floor"][f"{metric}_ci95"]) == 2
    assert set(m["within_noise"]) == set(METRIC_NAMES) and all(isinstance(v, bool) for v in m["within_noise"].values())
    assert m["floor"]["samples"] == len(Dataset(real["val"])) and m["floor"]["label"] == "real val (floor)"
    assert m["fd"] > m["floor"]["fd"] and not m["within_noise"]["fd"]  # a 15-step generator is far from real
    assert 0.0 <= m["recognition"] <= 1.0 and set(m["recognition_per_class"]) == {str(c) for c in range(10)}
    assert 0.0 <= m["cas"] <= 1.0 and len(m["cas_per_seed"]) == 2 and m["cas_seeds"] == [0, 1]
    assert m["cas_ci95"][0] <= m["cas"] <= m["cas_ci95"][1]
    d = m["diversity"]
    assert d["mean_pairwise_distance"] > 0 and d["real_mean_pairwise_distance"] > 0
    assert 0.0 <= d["near_duplicate_rate"] <= 1.0 and 0.0 <= d["real_near_duplicate_rate"] <= 1.0
    loss = m["denoise_loss"]
    assert set(loss["per_timestep"]) == {"50", "500"} and loss["images"] == len(Dataset(real["test"]))
    assert loss["mean"] == pytest.approx(sum(loss["per_timestep"].values()) / 2) and loss["mean"] > 0
    assert m["seconds"] >= 0


def test_real_images_measure_near_the_floor_and_the_floor_is_cached(measured, generator_dir, real, cache):
    # real val measured as if it were a generation (at n=100: other draws of val than the floor's): within
    # the floor's noise
    m = measure_generation(real["val"], generator_dir, reference=real["reference"], real_test=real["test"],
                           real_val=real["val"], cfg=LoopMeasureConfig(**{**CFG.__dict__, "n": 100}),
                           floor_cache=cache)
    assert m["n"] == 100 and m["floor"] == measured["floor"]  # same n: the cached floor
    assert m["within_noise"]["fd"] and m["fd"] < measured["fd"] / 3
    assert m["recognition"] > measured["recognition"]
    assert m["denoise_loss"] == measured["denoise_loss"]  # the same model: the same loss
    assert m["diversity"]["mean_pairwise_distance"] == pytest.approx(m["diversity"]["real_mean_pairwise_distance"],
                                                                     rel=0.25)


def test_one_image_repeated_has_no_diversity_and_only_duplicates(tmp_path, generator_dir, real, cache):
    test = Dataset(real["test"])
    first = next(iter(test))
    buf = io.BytesIO()
    first.pil().save(buf, format="PNG")
    with DatasetWriter(tmp_path / "same", "same", test.classes, 100) as w:
        for i in range(20):
            w.write(real_sample(f"s{i:03d}", buf.getvalue(), first.label, test.classes[first.label],
                                {"dataset": "test", "index": i}))
    m = measure_generation(tmp_path / "same", generator_dir, reference=real["reference"], real_test=real["test"],
                           real_val=real["val"], cfg=LoopMeasureConfig(**{**CFG.__dict__, "n": 20}), floor_cache=cache)
    assert m["diversity"]["mean_pairwise_distance"] == 0.0 and m["diversity"]["near_duplicate_rate"] == 1.0
    assert m["diversity"]["real_near_duplicate_rate"] < 0.5 and m["n"] == 20 and m["fd"] > m["floor"]["fd"]


def test_denoise_loss_is_deterministic_and_tells_models_apart(generator_dir, real, tmp_path):
    a = denoise_loss(generator_dir, real["test"], (50, 500), seed=0, images=50)
    assert denoise_loss(generator_dir, real["test"], (50, 500), seed=0, images=50) == a
    model, config = _load_generator(generator_dir)
    with torch.no_grad():
        gen = torch.Generator().manual_seed(0)
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    MODEL_FOLDER.save(tmp_path / "perturbed", model, config)
    b = denoise_loss(tmp_path / "perturbed", real["test"], (50, 500), seed=0, images=50)
    assert b["images"] == 50 and all(b["per_timestep"][t] != a["per_timestep"][t] for t in a["per_timestep"])
    with pytest.raises(FactoryError, match="denoise_timesteps"):
        denoise_loss(generator_dir, real["test"], (5000,))


def test_too_large_n_is_one_line_before_any_work(generation, generator_dir, real):
    with pytest.raises(FactoryError) as exc:
        measure_generation(generation, generator_dir, reference=real["reference"], real_test=real["test"],
                           real_val=real["val"], cfg=LoopMeasureConfig(n=500))
    assert "loop.measure.n=500" in str(exc.value) and "\n" not in str(exc.value)
    with pytest.raises(FactoryError, match="floor is real test itself"):
        measure_generation(generation, generator_dir, reference=real["reference"], real_test=real["test"],
                           real_val=real["test"], cfg=CFG)


def test_summarise_rows_first_last_change():
    def row(k, fd, div, loss):
        return {"generation": k, "fd": fd, "kid": 0.1 * k, "precision": 0.5, "recall": 0.4, "recognition": 0.9,
                "cas": 0.8, "diversity": {"mean_pairwise_distance": div}, "denoise_loss": {"mean": loss}}

    rows = [row(3, 9.0, 1.0, 0.5), row(1, 2.0, 3.0, 0.2), {"generation": 4, "active": False}, row(2, 5.0, 2.0, 0.3)]
    s = summarise_rows(rows)
    assert [r["generation"] for r in s["generations"]] == [1, 2, 3, 4]
    assert s["first"]["generation"] == 1 and s["last"]["generation"] == 3
    assert s["change"]["fd"] == 7.0 and s["change"]["diversity.mean_pairwise_distance"] == -2.0
    assert s["change"]["denoise_loss.mean"] == pytest.approx(0.3) and s["change"]["precision"] == 0.0
    with pytest.raises(FactoryError):
        summarise_rows([{"fd": 1.0}])


def test_first_generations_that_sample_the_same_plan_are_measured_once(tmp_path, generator_dir, real, monkeypatch):
    """loop_first makes generation 1 of every run in one process: runs that sample the same plan with the same
    model (replace and accumulate) are measured once and say so; a run with another plan (fresh) is measured;
    each keeps its own outputs and provenance."""
    import factory.measure.loops as measure_loops
    from factory.config import load_params
    from factory.loops.generation import run_first
    from factory.loops.schedule import entries

    calls = []

    def counting(dataset, *args, **kwargs):
        calls.append(str(dataset))
        return measure_generation(dataset, *args, **kwargs)

    monkeypatch.setattr(measure_loops, "measure_generation", counting)
    params = load_params()
    loop = {"generations": 1, "max_generations": 1, "real": str(real["train"]), "generator": str(generator_dir),
            "images": 0.05, "fresh_images": 0.03, "sampler": {"steps": 2, "batch_size": 16},
            "measure": {"draws": 1, "bootstrap": 5, "k": 2, "cas_steps": 2, "cas_seeds": [0],
                        "denoise_timesteps": [500]},
            "runs": {"replace": {"policy": "replace"}, "accumulate": {"policy": "accumulate"},
                     "fresh": {"policy": "fresh"}}}
    params = params.model_validate({**params.model_dump(mode="json"), "loop": loop})
    firsts = {name.split("-g")[0]: e for name, e in entries(params).items()}
    rows = run_first(firsts, root=tmp_path, reference=real["reference"], real_test=real["test"], real_val=real["val"])
    assert calls == [str(tmp_path / "data/loop/replace/g1"), str(tmp_path / "data/loop/fresh/g1")]
    assert rows["accumulate"]["measured_as"] == {"run": "replace", "why": "same model weights and samples"}
    assert "measured_as" not in rows["replace"] and "measured_as" not in rows["fresh"]
    assert rows["accumulate"]["fd"] == rows["replace"]["fd"] and rows["accumulate"]["run"] == "accumulate"
    saved = json.loads((tmp_path / "metrics/loop/accumulate/g1.json").read_text())
    assert saved["measured_as"]["run"] == "replace" and saved["cas"] == rows["replace"]["cas"]
    rec = next(Dataset(tmp_path / "data/loop/accumulate/g1").records())
    assert rec["generator"]["model"] == str(tmp_path / "models/loop/accumulate/g1")
