"""The DVC pipeline, run for real with ``dvc repro`` in a temporary copy of the repository."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from factory.core.shards import Dataset
from factory.data.inspection import verify

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def copy_repo(dest: Path) -> Path:
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, check=True,
                           capture_output=True, text=True).stdout.split()
    for f in files:
        if (REPO / f).is_file():
            (dest / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / f, dest / f)
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True)
    subprocess.run(["git", "add", "-A"], cwd=dest, check=True)
    subprocess.run(["git", "commit", "-qm", "copy"], cwd=dest, check=True, env=env)
    return dest


def dvc(repo: Path, *args: str) -> subprocess.CompletedProcess:
    bindir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": bindir + os.pathsep + os.environ["PATH"], "PYTHONPATH": str(repo),
           "DVC_NO_ANALYTICS": "1"}
    return subprocess.run([os.path.join(bindir, "dvc"), *args], cwd=repo, capture_output=True, text=True, env=env)


TINY = """
train_generator:
  image_size: 8
  block_out_channels: [8, 16]
  norm_num_groups: 4
  steps: 10
  batch_size: 32
  warmup_steps: 2
train_clip:
  vision_width: 32
  vision_layers: 1
  vision_head_width: 16
  embed_dim: 16
  text_width: 32
  text_layers: 1
  text_heads: 2
  steps: 4
  batch_size: 32
"""


def shrink_params(repo: Path) -> None:
    """The real pipeline, with a tiny generator and a small plan so the test takes seconds."""
    import yaml

    params = yaml.safe_load((repo / "params.yaml").read_text())
    tiny = yaml.safe_load(TINY)
    params["train_generator"] = tiny["train_generator"]
    params["train_clip"] = tiny["train_clip"]
    params["plan"]["images_per_class"] = 4
    params["generate"].update(steps=3, batch_size=8, shard_size=16)
    params["sweep"]["guidance_scales"] = [1]
    params["pools"] = {
        "real": [{"dataset": "data/real/train", "per_class": 3}],
        "synthetic": [{"dataset": "data/synthetic/curated"}],
        "mix": [{"dataset": "data/real/train", "count": 20}, {"dataset": "data/synthetic/curated", "count": 20}],
    }
    params["classifier"].update(steps=4, batch_size=16, shuffle_buffer=16)
    params["contrastive"]["pools"] = ["real", "synthetic"]
    params["contrastive"]["train"] = {"steps": 3, "batch_size": 16, "images_per_group": 2, "width": 8,
                                      "embed_dim": 16}
    params["evaluate"].update(k=2)
    params["bias"]["plan"].update(images_per_class=10, images_per_prompt=2)
    params["bias"]["train_generator"] = tiny["train_generator"]
    params["bias"]["generate"].update(steps=3, batch_size=8, shard_size=50)
    params["report"]["fraction_pools"] = ["real", "mix", "synthetic"]
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    repo = copy_repo(tmp_path_factory.mktemp("repo"))
    shrink_params(repo)
    p = dvc(repo, "repro")
    assert p.returncode == 0, p.stdout + p.stderr
    return repo


def test_repro_builds_real_splits(repo):
    train, test = Dataset(repo / "data/real/train"), Dataset(repo / "data/real/test")
    assert len(train) + len(test) == 1797 and len(test) == 359
    assert verify(repo / "data/real/train").ok and verify(repo / "data/real/test").ok
    p = dvc(repo, "status")
    assert p.returncode == 0 and "up to date" in p.stdout, p.stdout


def test_repro_generates_the_synthetic_dataset(repo):
    raw = Dataset(repo / "data/synthetic/raw")
    assert len(raw) == 40 and verify(raw.path).ok
    assert (repo / "models/generator/model.safetensors").is_file()
    s = next(iter(raw))
    assert s.provenance["generator"]["guidance_scale"] == 2.0
    assert s.provenance["parents"][0]["index_sha256"] == Dataset(repo / "data/real/train").index_sha256


def test_repro_curates(repo):
    import json

    report = json.loads((repo / "reports/curate.json").read_text())
    curated, rejected = Dataset(repo / "data/synthetic/curated"), Dataset(repo / "data/synthetic/rejected")
    assert report["samples"] == 40 and report["kept"] == len(curated) and report["rejected"] == len(rejected)
    assert len(curated) + len(rejected) == 40
    for s in curated:
        assert s.provenance["decision"]["kept"] is True and "clip" in s.provenance["scores"]
    p = dvc(repo, "metrics", "show")
    assert p.returncode == 0 and "reports/curate.json" in p.stdout


def test_repro_proves_the_pools(repo):
    import json

    for pool in ("real", "synthetic", "mix"):
        m = json.loads((repo / f"metrics/classifier/{pool}.json").read_text())
        assert 0 <= m["top1"] <= 1 and m["pool"] == pool and m["n_test"] == 359
        assert (repo / f"dvclive/classifier/{pool}/plots/metrics/test/top1.tsv").is_file()
    mix = json.loads((repo / "data/pools/mix.json").read_text())
    assert mix["samples"] == 40 and mix["synthetic_fraction"] == 0.5
    con = json.loads((repo / "metrics/contrastive/synthetic.json").read_text())
    assert set(con["methods"]) == {"simclr", "stablerep", "stablerep_plus"}
    assert all("top1" in v for v in con["methods"].values())
    real = json.loads((repo / "metrics/contrastive/real.json").read_text())
    assert "skipped" in real["methods"]["stablerep"]  # real images have no prompt groups
    ev = json.loads((repo / "metrics/evaluate.json").read_text())
    assert set(ev["datasets"]) == {"w1", "raw", "curated"} and "cas" in ev["datasets"]["w1"]
    rows = json.loads((repo / "plots/guidance.json").read_text())
    assert [r["guidance_scale"] for r in rows] == [1.0, 2.0]
    bias = json.loads((repo / "metrics/bias.json").read_text())
    assert set(bias["pools"]) == {"biased_real", "biased_real_balanced_synthetic"}
    assert bias["train_correlation"] > 0.9
    assert "## Bias benchmark" in (repo / "reports/results.md").read_text()
    p = dvc(repo, "metrics", "show")
    assert p.returncode == 0, p.stderr
    for name in ("metrics/classifier/mix.json", "metrics/contrastive/synthetic.json", "metrics/bias.json",
                 "metrics/evaluate.json"):
        assert name in p.stdout, p.stdout
    p = dvc(repo, "plots", "show", "--json")
    assert p.returncode == 0 and "plots/guidance.json" in p.stdout, p.stderr


def test_exp_run_guidance_reruns_only_generate(repo):
    p = dvc(repo, "exp", "run", "-S", "generate.guidance_scale=1")
    assert p.returncode == 0, p.stdout + p.stderr
    ran = {line.split("'")[1] for line in p.stdout.splitlines() if line.startswith("Running stage")}
    assert {"generate", "curate"} <= ran, p.stdout
    upstream = {"ingest", "split", "plan", "train_generator", "train_clip", "sweep@1"}
    assert not ran & upstream, p.stdout  # nothing upstream, and not the sweep (it sets its own guidance)
    assert not {r for r in ran if r.startswith("bias")}, p.stdout
    s = next(iter(Dataset(repo / "data/synthetic/raw")))
    assert s.provenance["generator"]["guidance_scale"] == 1.0


def test_param_change_reruns_only_the_split(repo):
    before = (repo / "data/real/full/index.json").read_bytes()
    params = (repo / "params.yaml").read_text().replace("test_fraction: 0.2", "test_fraction: 0.3")
    (repo / "params.yaml").write_text(params)
    p = dvc(repo, "repro", "split")
    assert p.returncode == 0, p.stderr
    assert "Stage 'ingest' didn't change" in p.stdout and "Running stage 'split'" in p.stdout
    assert (repo / "data/real/full/index.json").read_bytes() == before
    assert len(Dataset(repo / "data/real/test")) == 539
