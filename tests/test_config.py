import pytest

from factory.config import Params, load_params
from factory.errors import FactoryError


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
