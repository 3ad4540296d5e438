"""Loops' pools from provenance (factory.loops.lineage), their schedule and their pipeline file."""

from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from factory.cli.main import cli
from factory.config import Params, load_params
from factory.core.errors import FactoryError
from factory.core.sample import synthetic_sample
from factory.core.shards import Dataset, DatasetWriter
from factory.loops.lineage import (
    check_known,
    check_policy,
    components_for,
    generation_pool,
    provenance_problem,
    real_pool,
)
from factory.loops.pipeline import render
from factory.loops.schedule import entries, write_schedule

ROOT = Path(__file__).resolve().parents[1]


def fake_generation(src: Path, out: Path, g: int, parents: list[dict], n: int | None = None,
                    weights: str = "ab" * 32) -> Path:
    """Real images re-recorded as generation-``g`` synthetic samples (what a loop's dataset looks like)."""
    ds = Dataset(src)
    with DatasetWriter(out, out.name, ds.classes, shard_size=100) as w:
        for i, s in enumerate(ds):
            if n is not None and i >= n:
                break
            w.write(synthetic_sample(
                f"g{g}-{s.key}", s.image, s.label, s.class_name,
                prompt={"text": "a handwritten " + s.class_name, "template": "a handwritten {class_name}",
                        "attributes": {}},
                seed=i, generator={"backend": "embedded", "model": "m", "weights_sha256": weights, "scheduler": "dpm",
                                   "steps": 6, "guidance_scale": 1.0, "negative_guidance": None, "height": 8,
                                   "width": 8, "dtype": "float32"},
                generation=g, parents=parents))
    return out


@pytest.fixture(scope="module")
def gens(digits_split, tmp_path_factory):
    """real train and two generations: S1 (parents: real train) and S2 (parents: S1)."""
    train, test = digits_split
    root = tmp_path_factory.mktemp("lineage")
    s1 = fake_generation(test, root / "s1", 1, [Dataset(train).ref()])
    s2 = fake_generation(test, root / "s2", 2, [Dataset(s1).ref()])
    return train, s1, s2, root


def test_policies_pool_what_the_papers_train_on(gens):
    train, s1, s2, _ = gens
    n_real = len(Dataset(train))
    # replace: the last generation only; its samples are generation k-1
    pool = generation_pool("r", "replace", 3, train, [s1, s2])
    assert [c["dataset"]["path"] for c in pool["components"]] == [str(s2)]
    assert pool["loop"]["generations"] == {"2": len(Dataset(s2))} and pool["synthetic_fraction"] == 1.0
    # accumulate: real train and every earlier generation, whole
    pool = generation_pool("a", "accumulate", 3, train, [s1, s2])
    assert [c["dataset"]["path"] for c in pool["components"]] == [str(train), str(s1), str(s2)]
    assert pool["loop"]["generations"] == {"0": n_real, "1": len(Dataset(s1)), "2": len(Dataset(s2))}
    assert pool["samples"] == n_real + len(Dataset(s1)) + len(Dataset(s2))
    # accumulate_subsample: the same sources, |real train| in all, in proportion
    pool = generation_pool("s", "accumulate_subsample", 3, train, [s1, s2])
    assert pool["samples"] == n_real and set(pool["loop"]["generations"]) == {"0", "1", "2"}
    shares = [c["samples"] / n_real for c in pool["components"]]
    total = n_real + 2 * len(Dataset(s1))
    assert shares[0] == pytest.approx(n_real / total, abs=0.01)
    # fresh: real train and the latest generation only
    pool = generation_pool("f", "fresh", 3, train, [s1, s2])
    assert pool["loop"]["generations"] == {"0": n_real, "2": len(Dataset(s2))}
    assert pool["loop"]["run"] == "f" and pool["loop"]["generation"] == 3 and pool["name"] == "loop-f-g3"
    # real (the control): real train only, whatever the generation
    pool = generation_pool("c", "real", 3, train, [s1, s2])
    assert [c["dataset"]["path"] for c in pool["components"]] == [str(train)]
    assert pool["loop"]["generations"] == {"0": n_real} and pool["synthetic_fraction"] == 0.0
    with pytest.raises(FactoryError, match=r"policy real at generation 3 must hold generations \[0\]"):
        check_policy(generation_pool("f", "fresh", 3, train, [s1, s2]), "real", 3, train)


def test_generation_one_pool_is_real_train(gens):
    train = gens[0]
    pool = real_pool("r", train)
    assert pool["loop"]["generations"] == {"0": len(Dataset(train))} and pool["synthetic_fraction"] == 0.0


def test_check_policy_refuses_a_pool_that_breaks_the_policy(gens):
    train, s1, s2, _ = gens
    accumulate = generation_pool("a", "accumulate", 3, train, [s1, s2])
    with pytest.raises(FactoryError,
                       match=r"policy replace at generation 3 must hold generations \[2\]; it holds \[0, 1, 2\]"):
        check_policy(accumulate, "replace", 3, train)
    replace = generation_pool("r", "replace", 3, train, [s1, s2])
    with pytest.raises(FactoryError, match=r"policy accumulate at generation 3 must hold generations \[0, 1, 2\]"):
        check_policy(replace, "accumulate", 3, train)
    with pytest.raises(FactoryError, match="needs the training sets of generations 1..2"):
        components_for("replace", 3, train, [s1])
    with pytest.raises(FactoryError, match="only generations >= 2 train on a pool"):
        components_for("replace", 1, train, [])


def test_unknown_provenance_is_refused_unless_allowed(gens, digits_split):
    train, s1, _, root = gens
    orphan = fake_generation(digits_split[1], root / "orphan", 1, [], n=20)  # no parents recorded
    rec = next(Dataset(orphan).records())
    assert "parents" in provenance_problem(rec)
    with pytest.raises(FactoryError, match=r"orphan: 20 sample\(s\) of unknown provenance .*loop.allow_unknown: true"):
        generation_pool("f", "fresh", 2, train, [s1], extra=[orphan])
    pool = generation_pool("f", "fresh", 2, train, [s1], extra=[orphan], allow_unknown=True)
    assert pool["loop"]["unknown"] == 20 and pool["samples"] == len(Dataset(train)) + len(Dataset(s1)) + 20
    unweighted = fake_generation(digits_split[1], root / "unweighted", 1, [Dataset(train).ref()], n=5, weights="")
    assert "weights" in provenance_problem(next(Dataset(unweighted).records()))
    assert check_known(s1) == {"generations": {"1": len(Dataset(s1))}, "unknown": 0}
    assert provenance_problem(next(Dataset(train).records())) is None


def test_schedule_changes_only_what_a_param_change_touches(tmp_path):
    p5 = load_params(ROOT / "params.yaml")
    p8 = Params.model_validate({**p5.model_dump(), "loop": {**p5.loop.model_dump(), "generations": 8}})
    a, b = tmp_path / "a", tmp_path / "b"
    write_schedule(p5, a)
    write_schedule(p8, b)
    changed = sorted(p.name for p in a.iterdir() if p.read_bytes() != (b / p.name).read_bytes())
    runs = list(p5.loop.runs)
    assert len(list(a.iterdir())) == len(runs) * p5.loop.max_generations == len(runs) * 8
    assert changed == sorted(f"{r}-g{k}.json" for r in runs for k in (6, 7, 8))
    # a training budget change reaches every active generation, and no inactive one
    budget = Params.model_validate({**p5.model_dump(), "loop": {**p5.loop.model_dump(),
                                                                 "train": {**p5.loop.train.model_dump(), "steps": 7}}})
    e5, eb = entries(p5), entries(budget)
    assert {n for n in e5 if e5[n] != eb[n]} == {f"{r}-g{k}.json" for r in runs for k in range(1, 6)}
    bad = tmp_path / "params.yaml"
    bad.write_text("loop:\n  generations: 9\n")
    with pytest.raises(FactoryError,
                       match=r"params.yaml: loop.generations: must be at most loop.max_generations \(8: "):
        load_params(bad)


def test_loop_dvc_yaml_is_what_params_give_and_has_a_stage_per_run_and_generation(tmp_path):
    params = load_params(ROOT / "params.yaml")
    text = (ROOT / "loop" / "dvc.yaml").read_text()
    assert text == render(params, ROOT), "loop/dvc.yaml is stale: run `factory loop stages`"
    doc = yaml.safe_load(text)
    gens = doc["vars"][0]["loop_generations"]
    assert set(gens) == {f"{r}-g{k}" for r in params.loop.runs for k in range(2, params.loop.max_generations + 1)}
    assert all(g["prev"] == g["k"] - 1 for g in gens.values())
    do = doc["stages"]["loop_generation"]["do"]
    assert "data/loop/${item.run}/g${item.prev}" in do["deps"] and "models/loop/${item.run}/g${item.prev}" in do["deps"]
    assert "data/loop/schedule/${item.run}-g${item.k}.json" in do["deps"]
    assert not any(str(d).startswith("params") for d in do.get("params", []))  # settings come from the schedule
    # the CLI's check passes on the committed file and fails on a stale one
    r = CliRunner().invoke(cli, ["loop", "stages", "--check", "--params", str(ROOT / "params.yaml"),
                                 "--out", str(ROOT / "loop" / "dvc.yaml")])
    assert r.exit_code == 0, r.output
    stale = tmp_path / "dvc.yaml"
    stale.write_text(text.replace("replace-g2", "replace-g9"))
    r = CliRunner().invoke(cli, ["loop", "stages", "--check", "--params", str(ROOT / "params.yaml"),
                                 "--out", str(stale)])
    assert r.exit_code == 1 and "not what" in r.output
