"""Datasets read from ``s3://`` URLs and a DVC remote on S3, both against moto's S3 server on loopback
(``tests/s3_server.py``), never the internet."""

import json
import os
import shutil
import subprocess
import sys
from itertools import islice
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from s3_server import moto_endpoint, s3, s3_env  # noqa: F401  (fixtures, found by name)

from factory.cli.main import cli
from factory.core.errors import DatasetError
from factory.core.remote import RemotePath
from factory.core.shards import Dataset, DatasetWriter
from factory.data.inspection import summarize, verify
from factory.data.loader import PoolStream, load_pool_tensors, make_loader
from factory.data.pools import Component, PoolSpec, build_pool, read_pool, write_pool

BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def small(tmp_path_factory, digits) -> Path:
    """The first 120 digits in three shards of 50, 50 and 20 samples."""
    out = tmp_path_factory.mktemp("small") / "small"
    src = Dataset(digits)
    with DatasetWriter(out, "small", src.classes, shard_size=50) as w:
        w.write_all(islice(src, 120))
    return out


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def as_tuple(s):
    return s.key, s.image, s.label, s.provenance, s.ext


# ---------------------------------------------------------------- s3:// reads


def test_dataset_at_an_s3_url_reads_the_same_samples(s3, small):
    url = s3.upload_dir(small, "sets", "small")
    local, remote = Dataset(small), Dataset(url)
    assert isinstance(remote.path, RemotePath) and str(remote.path) == url
    assert remote.index == local.index and remote.index_sha256 == local.index_sha256
    assert remote.urls() == [f"{url}/shard-00000{i}.tar" for i in range(3)]
    assert [as_tuple(s) for s in remote] == [as_tuple(s) for s in local]
    assert [as_tuple(s) for s in remote.iter_checked()] == [as_tuple(s) for s in local]
    assert remote.ref() == {**local.ref(), "path": url}
    assert Dataset(url + "/").path == remote.path  # a trailing slash names the same folder


def test_verify_and_inspect_cli_on_s3(s3, small):
    url = s3.upload_dir(small, "small")
    r = run("verify", url)
    assert r.exit_code == 0, r.output
    assert r.output == f"OK   {url}: 120 samples in 3 shards\n"
    r = run("inspect", url, "--json")
    assert r.exit_code == 0, r.output
    remote, local = json.loads(r.output), summarize(small)
    assert remote.pop("path") == url and local.pop("path") == str(small)
    assert remote == local
    r = run("show", url, local_key := next(iter(Dataset(small))).key)
    assert r.exit_code == 0 and json.loads(r.output)["key"] == local_key


def test_real_subprocess_reads_s3_with_fsspec_config(s3, small, tmp_path):
    """Real ``factory`` processes; the endpoint given the fsspec way (``FSSPEC_S3_ENDPOINT_URL``) this time."""
    url = s3.upload_dir(small, "small")
    env = {**os.environ, **s3_env(s3.endpoint, tmp_path)}
    env["FSSPEC_S3_ENDPOINT_URL"] = env.pop("AWS_ENDPOINT_URL")
    p = subprocess.run([BIN / "factory", "verify", url, small, "--json"], capture_output=True, text=True,
                       env=env, timeout=120)
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert [(r["dataset"], r["ok"], r["samples"]) for r in out] == [(url, True, 120), (str(small), True, 120)]
    assert p.stderr == ""
    p = subprocess.run([BIN / "factory", "inspect", url, "--json"], capture_output=True, text=True, env=env,
                       timeout=120)
    assert p.returncode == 0, p.stderr
    assert {**json.loads(p.stdout), "path": str(small)} == summarize(small)


def test_corrupted_missing_and_extra_shards_on_s3(s3, small):
    url = s3.upload_dir(small, "small")
    key = f"{s3.bucket}/small/shard-000001.tar"
    data = bytearray(s3.fs.cat_file(key))
    data[len(data) // 2] ^= 0xFF  # same size: only the hash can tell
    s3.fs.pipe_file(key, bytes(data))
    r = run("verify", url)
    assert r.exit_code == 1
    head, line = r.output.splitlines()  # one problem, one line naming the shard
    assert head == f"BAD  {url}: 1 problem(s)"
    assert line.startswith("  shard-000001.tar: sha256 mismatch (index "), line
    # the checked reader yields nothing of the bad shard; the cheap one is not asked to hash
    with pytest.raises(DatasetError, match=r"/small/shard-000001\.tar: sha256 mismatch"):
        [s.key for s in Dataset(url).iter_checked()]
    kept = [s.key for s in Dataset(url).iter_checked(skip_bad=True)]
    assert len(kept) == 70 and kept == [s.key for s in Dataset(small) if s.key in set(kept)]

    s3.fs.put_file(str(small / "shard-000001.tar"), key)  # repaired; now one shard gone, one stray
    s3.fs.rm_file(f"{s3.bucket}/small/shard-000002.tar")
    s3.fs.pipe_file(f"{s3.bucket}/small/shard-000009.tar", b"stray")
    result = verify(url)
    assert result.problems == ["shard-000002.tar: missing", "shard-000009.tar: not listed in index.json"]
    with pytest.raises(DatasetError, match="shard-000002.tar: shard listed in index.json is missing"):
        list(Dataset(url))


def test_bad_urls_are_one_line_errors(s3, small, tmp_path):
    r = run("inspect", s3.url("nothing"))
    assert r.exit_code == 2
    assert r.stderr == f"Error: {s3.url('nothing')}: not a factory dataset (no index.json)\n"
    r = run("verify", s3.url("nothing"))
    assert r.exit_code == 2 and "no index.json" in r.stderr and r.stderr.count("\n") == 1
    s3.fs.pipe_file(f"{s3.bucket}/broken/index.json", b"{not json")
    r = run("verify", s3.url("broken"))  # a dataset that is there but broken: a failed check
    assert r.exit_code == 1 and "index.json: not valid JSON" in r.output
    r = run("grid", s3.url("nothing"), tmp_path / "g.png")
    assert r.exit_code == 2 and "no index.json" in r.stderr
    # a command that takes local folders only says so when given a URL
    with pytest.raises(DatasetError, match="URLs are for verify, inspect"):
        Dataset(Path("s3://bucket/set"))


def test_grid_draws_an_s3_dataset(s3, small, tmp_path):
    url = s3.upload_dir(small, "small")
    r = run("grid", url, tmp_path / "remote.png", "--per-class", 3)
    assert r.exit_code == 0, r.output
    assert run("grid", small, tmp_path / "local.png", "--per-class", 3).exit_code == 0
    assert (tmp_path / "remote.png").read_bytes() == (tmp_path / "local.png").read_bytes()


def test_loader_streams_a_pool_of_an_s3_dataset(s3, small, tmp_path):
    url = s3.upload_dir(small, "small")
    spec = lambda path: PoolSpec("p", (Component(dataset=path, count=60),), 3)  # noqa: E731
    remote, local = build_pool(spec(url)), build_pool(spec(str(small)))
    assert remote["components"][0]["dataset"]["path"] == url
    assert remote["components"][0]["keys"] == local["components"][0]["keys"]
    write_pool(remote, tmp_path / "p.json")
    assert read_pool(tmp_path / "p.json") == remote  # checks the index hash on S3
    x_remote, y_remote, *rest_remote = load_pool_tensors(tmp_path / "p.json")
    x_local, y_local, *rest_local = load_pool_tensors(local)
    assert torch.equal(x_remote, x_local) and torch.equal(y_remote, y_local) and rest_remote == rest_local
    for memory_bytes in (1 << 30, 0):  # mixed in memory, then streamed shard by shard with a shuffle buffer
        streams = [PoolStream(p, shuffle_buffer=16, seed=1, memory_bytes=memory_bytes) for p in (remote, local)]
        assert streams[0].in_memory == streams[1].in_memory == bool(memory_bytes)
        a, b = ([(x, y) for x, y in s] for s in streams)
        assert len(a) == len(b) == 60
        assert all(torch.equal(xa, xb) and ya == yb for (xa, ya), (xb, yb) in zip(a, b))
    # streamed by two DataLoader workers: each opens the shards on S3 in its own process
    stream = PoolStream(remote, shuffle_buffer=16, seed=1, memory_bytes=0)
    labels = [y for _, yb in make_loader(stream, 16, num_workers=2) for y in yb.tolist()]
    assert sorted(labels) == sorted(y_local.tolist())


# ---------------------------------------------------------------- a DVC remote on S3

DVC_YAML = """\
stages:
  ingest:
    cmd: factory ingest ${ingest.source} data/digits --shard-size ${ingest.shard_size}
    outs:
      - data/digits
"""
PARAMS = "ingest:\n  source: sklearn:digits\n  shard_size: 600\n"
GIT_ID = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}


def sh(cwd: Path, env: dict, *args: str) -> str:
    p = subprocess.run(list(args), cwd=cwd, env=env, capture_output=True, text=True, timeout=240)
    assert p.returncode == 0, f"{' '.join(args)}: {p.stdout}\n{p.stderr}"
    return p.stdout


@pytest.mark.timeout(300)
def test_dvc_remote_on_s3_push_clone_pull_verify(s3, tmp_path):
    """``dvc repro`` + ``dvc push`` to an S3 remote (credentials in ``.dvc/config.local`` only), then a fresh
    ``git clone``: ``dvc pull`` (credentials from the environment this time), ``dvc status`` clean,
    ``factory verify`` passing and every file byte-identical."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "FSSPEC_", "DVC_"))}
    cfg = tmp_path / "dvc-config"
    base.update(GIT_ID, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}", DVC_NO_ANALYTICS="1",
                DVC_GLOBAL_CONFIG_DIR=str(cfg / "global"), DVC_SYSTEM_CONFIG_DIR=str(cfg / "system"),
                DVC_SITE_CACHE_DIR=str(cfg / "site"), AWS_EC2_METADATA_DISABLED="true",
                AWS_CONFIG_FILE=str(cfg / "aws-config"), AWS_SHARED_CREDENTIALS_FILE=str(cfg / "aws-creds"))
    # 1. a project with a one-stage pipeline and an S3 remote; the endpoint is committed, the keys are not
    repo = tmp_path / "project"
    repo.mkdir()
    (repo / "dvc.yaml").write_text(DVC_YAML)
    (repo / "params.yaml").write_text(PARAMS)
    sh(repo, base, "git", "init", "-q")
    sh(repo, base, "dvc", "init", "-q")
    remote = s3.url("dvcstore")
    sh(repo, base, "dvc", "remote", "add", "-d", "storage", remote)
    sh(repo, base, "dvc", "remote", "modify", "storage", "endpointurl", s3.endpoint)
    sh(repo, base, "dvc", "remote", "modify", "--local", "storage", "access_key_id", "testing")
    sh(repo, base, "dvc", "remote", "modify", "--local", "storage", "secret_access_key", "testing")
    config = (repo / ".dvc" / "config").read_text()
    assert f"url = {remote}" in config and f"endpointurl = {s3.endpoint}" in config
    assert "testing" not in config and "secret" not in config
    # 2. run, commit, push
    sh(repo, base, "dvc", "repro", "-q")
    sh(repo, base, "git", "add", "-A")
    tracked = sh(repo, base, "git", "ls-files").split()
    assert ".dvc/config" in tracked and ".dvc/config.local" not in tracked and "dvc.lock" in tracked
    assert [t for t in tracked if t.startswith("data/")] == ["data/.gitignore"]  # DVC's, naming data/digits
    sh(repo, base, "git", "commit", "-qm", "pipeline")
    sh(repo, base, "dvc", "push", "-q")
    assert s3.fs.find(f"{s3.bucket}/dvcstore")  # the objects are in the bucket
    shutil.rmtree(repo / ".dvc" / "cache")  # the only copy of the data is now on S3 (and in repo/data)
    # 3. a fresh clone, with credentials from the environment (no config.local there)
    clone = tmp_path / "clone"
    sh(tmp_path, base, "git", "clone", "-q", str(repo), str(clone))
    assert not (clone / ".dvc" / "config.local").exists() and not (clone / "data" / "digits").exists()
    env = {**base, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
    sh(clone, env, "dvc", "pull", "-q")
    assert "up to date" in sh(clone, env, "dvc", "status")
    assert "in sync" in sh(clone, env, "dvc", "status", "--cloud")
    # 4. the pulled dataset is the pushed one, and passes verify
    out = sh(clone, env, "factory", "verify", "data/digits")
    assert out == "OK   data/digits: 1797 samples in 3 shards\n"
    names = sorted(p.name for p in (repo / "data" / "digits").iterdir())
    assert names == sorted(p.name for p in (clone / "data" / "digits").iterdir())
    assert names == ["index.json", "shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]
    for name in names:
        assert (clone / "data" / "digits" / name).read_bytes() == (repo / "data" / "digits" / name).read_bytes()
