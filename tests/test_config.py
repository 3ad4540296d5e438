import pytest

from factory.config import Params, load_params
from factory.core.errors import FactoryError


def test_repo_params_load():
    p = load_params("params.yaml")
    assert isinstance(p, Params) and p.ingest.source == "sklearn:digits"


@pytest.mark.parametrize("text, match", [
    ("split:\n  test_fraction: 1.5\n", r"split.test_fraction: Input should be less than 1 \(got 1.5\)"),
    ("split:\n  test_fractoin: 0.2\n", "unknown parameter 'split.test_fractoin'"),
    ("ingest:\n  shard_size: 0\n", "ingest.shard_size"),
    ("bogus: 1\n", "unknown parameter 'bogus'"),
    ("split: [1, 2\n", "not valid YAML"),
])
def test_bad_params_fail_with_the_parameter_name(tmp_path, text, match):
    f = tmp_path / "params.yaml"
    f.write_text(text)
    with pytest.raises(FactoryError, match=match):
        load_params(f)


def test_missing_params_file(tmp_path):
    with pytest.raises(FactoryError, match="no such params file"):
        load_params(tmp_path / "nope.yaml")


def test_config_is_frozen():
    p = load_params("params.yaml")
    with pytest.raises(Exception):
        p.split.test_fraction = 0.5


def test_proof_sections_of_the_repo_params():
    from factory.config import classifier_config, evaluation_config, pools_config

    params = load_params("params.yaml")
    specs = {s.name: s for s in pools_config(params).specs}
    assert {"real", "synthetic", "real_synthetic", "frac0", "frac100"} <= set(specs)
    assert set(params.contrastive.pools) <= set(specs) and set(params.report.fraction_pools) <= set(specs)
    assert classifier_config(params).seed == params.base.seed
    ev = evaluation_config(params)
    sweep = [f"w{g}" for g in params.sweep.guidance_scales]
    assert set(sweep) <= set(ev.datasets) and set(sweep) <= set(ev.cas) and set(sweep) <= set(ev.guidance)
    assert ev.datasets["w1"] == "data/synthetic/guidance/w1"  # named as dvc.yaml renders w${item}
    bias = params.study("bias")
    assert bias.plan.dataset == "data/bias/real/train" and "color" in bias.plan.attributes
    assert bias.generate.model == "models/bias/generator" and set(bias.pools) == set(params.bias.pools)


def test_evaluation_and_pool_params_errors(tmp_path):
    from factory.config import evaluation_config, pools_config

    p = tmp_path / "params.yaml"
    p.write_text("evaluate:\n  datasets: {raw: data/synthetic/raw}\n  cas: [nope]\n")
    with pytest.raises(FactoryError, match=r"evaluate.cas: \['nope'\]"):
        evaluation_config(load_params(p))
    p.write_text("pools:\n  bad: data/real/train\n")
    with pytest.raises(FactoryError, match="pools.bad: must be a list"):
        pools_config(load_params(p))
    p.write_text("sweep:\n  guidance_scales: [1, -2]\n")
    with pytest.raises(FactoryError, match="sweep.guidance_scales"):
        load_params(p)
    with pytest.raises(FactoryError, match="unknown study"):
        load_params("params.yaml").study("nope")
