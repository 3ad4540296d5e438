"""``factory push-hf`` against a Hub-like server on loopback (``tests/hub_server.py``): huggingface_hub's own
create_repo / create_branch / list_repo_tree / create_commit (preupload, regular and LFS uploads, NDJSON
commits) run for real over HTTP; only the far end is ours. Covers: byte-identical arrival, private repos and
branches, resumed pushes, stale shards, dry runs (no request at all) and where the token goes (only the
Authorization header of the Hub's own API; never stdout, stderr, logs, written files or uploaded files)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from hub_server import HubServer, HubState

from factory.cli.main import cli
from factory.core.errors import FactoryError
from factory.share.push import LocalFile, export_files, plan_commits, push_hf

TOKEN = "hf_" + "Zq7x" * 9  # looks like a real token (so redact() knows it too)
REPO = "tester/digits-push"
CARD = """---
license: cc-by-4.0
configs:
- config_name: default
  data_files:
  - split: train
    path: data/train-*
---
# digits-push

Synthetic digits made by the factory.
"""


def make_export(root: Path, shards: int = 3, rows: int = 4, salt: str = "") -> Path:
    """An export folder by hand: ``data/train-*.parquet`` (pyarrow), ``README.md`` with a YAML header and
    ``croissant.json``."""
    (root / "data").mkdir(parents=True)
    for i in range(shards):
        table = pa.table({"label": list(range(rows)),
                          "image": [{"bytes": f"{salt}png-{i}-{j}".encode() * 50, "path": None} for j in range(rows)]})
        pq.write_table(table, root / "data" / f"train-{i:05d}-of-{shards:05d}.parquet")
    (root / "README.md").write_text(CARD + salt)
    (root / "croissant.json").write_text(json.dumps({"@type": "sc:Dataset", "name": "digits-push"}))
    return root


def local_files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def no_token_anywhere(state: HubState, *texts: str, folders: tuple[Path, ...] = ()) -> None:
    """The token went only as ``Authorization: Bearer`` to the Hub's API: in no other header, path or body,
    never to the LFS upload URL, and in none of ``texts`` nor any file under ``folders``."""
    assert state.requests
    for r in state.requests:
        assert TOKEN not in r.path and TOKEN.encode() not in r.body, r.path
        for name, value in r.headers.items():
            if name == "authorization" and not r.path.startswith("/lfs-upload/"):
                assert value == f"Bearer {TOKEN}"
            else:
                assert TOKEN not in value, (r.path, name)
        if r.path.startswith("/lfs-upload/"):
            assert "authorization" not in r.headers  # a presigned upload URL gets no token
    for text in texts:
        assert TOKEN not in text
    for folder in folders:
        for p in folder.rglob("*"):
            if p.is_file():
                assert TOKEN.encode() not in p.read_bytes(), p


@pytest.fixture
def hub(monkeypatch, tmp_path):
    """A loopback Hub; huggingface_hub pointed at it through ``HF_ENDPOINT``, online, with ``HF_TOKEN`` set
    and no saved login."""
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # conftest makes tests offline; this server is local
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)  # LFS files go the LFS way (no Xet CAS here)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "hf-home" / "token"))
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    state = HubState(TOKEN)
    with HubServer(state) as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        yield state


def run(*args: object):
    return CliRunner().invoke(cli, [str(a) for a in args])


# ------------------------------------------------------------------------------------------------ the push

def test_push_arrives_byte_identical_private_on_a_branch(hub, tmp_path):
    export = make_export(tmp_path / "export")
    result = push_hf(export, REPO, private=True, revision="v1", commit_every=2)
    assert hub.repo(REPO).private is True
    assert hub.files(REPO, "v1") == {".gitattributes": hub.files(REPO, "main")[".gitattributes"],
                                      **local_files(export)}
    assert set(hub.files(REPO, "main")) == {".gitattributes"}  # the branch only
    # 3 shards in commits of 2, then the card and croissant.json: the card arrives last
    assert len(result.commits) == 3 and len(hub.calls("commit")) == 3
    last = hub.repo(REPO).resolve("v1")
    before = hub.repo(REPO).commits[last.parent]
    assert "README.md" in last.files and "README.md" not in before.files
    assert result.uploaded == [f.path for f in result.files] and result.skipped == []
    assert result.url == f"{hub.url}/datasets/{REPO}/tree/v1" and result.private is True
    no_token_anywhere(hub, folders=(tmp_path,))


def test_lfs_uploads_skip_on_resume_and_never_carry_the_token(monkeypatch, hub, tmp_path):
    hub.lfs_suffixes = (".parquet",)  # as the Hub does: Parquet goes to LFS storage
    export = make_export(tmp_path / "export")
    push_hf(export, REPO)
    stored = hub.repo(REPO).resolve("main").files
    assert all(stored[p].lfs for p in stored if p.endswith(".parquet"))
    assert {p: b.data for p, b in stored.items() if p != ".gitattributes"} == local_files(export)
    assert len(hub.calls("lfs-upload")) == 3
    calls = len(hub.requests)
    again = push_hf(export, REPO)  # everything is there: compared by sha256, nothing sent
    assert again.uploaded == [] and again.commits == [] and len(again.skipped) == 5
    assert not any(r.method != "GET" and _is_write(r.path) for r in hub.requests[calls:])
    no_token_anywhere(hub, folders=(tmp_path,))


def _is_write(path: str) -> bool:
    return any(k in path for k in ("/commit/", "/preupload/", "lfs", "validate-yaml"))


def test_an_interrupted_push_resumes_where_it_stopped(hub, tmp_path):
    export = make_export(tmp_path / "export", shards=5)
    hub.fail("commit", 503, "the Hub is busy", after=1)  # the second commit fails
    with pytest.raises(FactoryError, match=r"commit 2/4 .* 503: the Hub is busy"):
        push_hf(export, REPO, commit_every=2)
    assert set(hub.files(REPO)) == {".gitattributes", "data/train-00000-of-00005.parquet",
                                    "data/train-00001-of-00005.parquet"}
    result = push_hf(export, REPO, commit_every=2)
    assert result.skipped == ["data/train-00000-of-00005.parquet", "data/train-00001-of-00005.parquet"]
    assert len(result.uploaded) == 5 and len(result.commits) == 3
    assert {p: d for p, d in hub.files(REPO).items() if p != ".gitattributes"} == local_files(export)
    # a file that changed is sent again, the others are not
    (export / "croissant.json").write_text('{"name": "changed"}')
    result = push_hf(export, REPO, commit_every=2)
    assert result.uploaded == ["croissant.json"] and len(result.skipped) == 6
    assert hub.files(REPO)["croissant.json"] == b'{"name": "changed"}'


def test_stale_shards_of_an_older_export_are_removed_with_the_card(hub, tmp_path):
    push_hf(make_export(tmp_path / "old", shards=3), REPO)
    new = make_export(tmp_path / "new", shards=2, salt="v2")
    result = push_hf(new, REPO)
    assert result.deleted == [f"data/train-{i:05d}-of-00003.parquet" for i in range(3)]
    assert {p: d for p, d in hub.files(REPO).items() if p != ".gitattributes"} == local_files(new)
    last = hub.repo(REPO).resolve("main")
    assert "removed" in last.summary and last.files["README.md"].data == (CARD + "v2").encode()


def test_private_on_an_existing_public_repo_is_refused(hub, tmp_path):
    export = make_export(tmp_path / "export")
    push_hf(export, REPO)
    assert hub.repo(REPO).private is False
    commits = len(hub.calls("commit"))
    with pytest.raises(FactoryError, match="already exists and is public"):
        push_hf(export, REPO, private=True)
    assert len(hub.calls("commit")) == commits


def test_repo_without_namespace_goes_to_the_token_owner(hub, tmp_path):
    result = push_hf(make_export(tmp_path / "export"), "solo")
    assert result.repo_id == "tester/solo" and "README.md" in hub.files("tester/solo")


def test_the_saved_login_is_used_without_hf_token(monkeypatch, hub, tmp_path):
    import huggingface_hub.constants as constants

    monkeypatch.delenv("HF_TOKEN")
    Path(constants.HF_TOKEN_PATH).parent.mkdir(parents=True)
    Path(constants.HF_TOKEN_PATH).write_text(TOKEN + "\n")
    result = push_hf(make_export(tmp_path / "export"), REPO)
    assert result.token_source == "saved login" and "README.md" in hub.files(REPO)
    no_token_anywhere(hub)


def test_plan_commits_bounds_files_and_bytes_and_puts_the_card_last():
    def f(path: str, size: int) -> LocalFile:
        return LocalFile(path, Path(path), size, "0" * 64)

    files = [f(f"data/{i}.parquet", 40) for i in range(5)] + [f("croissant.json", 1), f("README.md", 1)]
    assert [[x.path for x in c] for c in plan_commits(files, commit_every=2)][-1] == ["croissant.json", "README.md"]
    assert [len(c) for c in plan_commits(files, commit_every=2)] == [2, 2, 1, 2]
    assert [len(c) for c in plan_commits(files, commit_every=10, commit_bytes=100)] == [2, 2, 1, 2]
    assert [len(c) for c in plan_commits(files, commit_every=10, commit_bytes=10)] == [1, 1, 1, 1, 1, 2]
    with pytest.raises(FactoryError, match="at least 1"):
        plan_commits(files, commit_every=0)


def test_export_files_leave_out_hidden_and_refuse_links_and_secrets(tmp_path):
    export = make_export(tmp_path / "export")
    (export / ".cache").mkdir()
    (export / ".cache" / "lock").write_text("x")
    assert [f.path for f in export_files(export)][-2:] == ["croissant.json", "README.md"]
    assert not any(f.path.startswith(".") for f in export_files(export))
    (export / "data" / "link.parquet").symlink_to(export / "data" / "train-00000-of-00003.parquet")
    with pytest.raises(FactoryError, match="link.parquet: a link"):
        export_files(export)
    (export / "data" / "link.parquet").unlink()
    (export / "notes.txt").write_text("aws AKIAABCDEFGHIJKLMNOP")
    with pytest.raises(FactoryError, match="notes.txt: looks like an AWS access key"):
        export_files(export)


# ------------------------------------------------------------------------------------------------ the CLI

def test_dry_run_sends_nothing_and_prints_files_and_card(monkeypatch, hub, tmp_path):
    export = make_export(tmp_path / "export")
    r = run("push-hf", export, REPO, "--dry-run", "--private", "--revision", "v1")
    assert r.exit_code == 0, r.output
    assert hub.requests == []
    out = r.stdout
    assert "dry run: nothing was sent" in out and "to dataset tester/digits-push, branch v1 (private" in out
    assert "token: from HF_TOKEN" in out
    for f in export_files(export):
        assert f"  {f.path}" in out and f"{f.size:,} bytes" in out
    assert "--- README.md (the dataset card) ---" in out and "Synthetic digits made by the factory." in out
    assert "license: cc-by-4.0" in out
    monkeypatch.delenv("HF_TOKEN")  # a dry run needs no token, and works offline
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    r = run("push-hf", export, REPO, "--dry-run", "--json")
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert data["dry_run"] and data["token_source"] is None and data["card"] == CARD
    assert [f["path"] for f in data["files"]][-1] == "README.md" and hub.requests == []


def test_cli_push_keeps_the_token_out_of_output_and_logs(monkeypatch, hub, tmp_path, caplog, capfd):
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_DEBUG", True)  # huggingface_hub logs every request as curl
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="huggingface_hub")
    hub.lfs_suffixes = (".parquet",)
    export = make_export(tmp_path / "export")
    r = run("-v", "push-hf", export, REPO, "--private", "--revision", "v1")
    assert r.exit_code == 0, r.output
    assert "pushed tester/digits-push@v1 (private): 5 files uploaded in 2 commit(s), 0 already there" in r.stdout
    assert f"{hub.url}/datasets/{REPO}/tree/v1" in r.stdout
    assert "Send: curl" in caplog.text  # the debug log did run
    captured = capfd.readouterr()
    no_token_anywhere(hub, r.stdout, r.stderr, caplog.text, captured.out, captured.err, folders=(tmp_path,))
    assert {p: d for p, d in hub.files(REPO, "v1").items() if p != ".gitattributes"} == local_files(export)


def test_missing_token_is_one_line_and_no_request(monkeypatch, hub, tmp_path):
    monkeypatch.delenv("HF_TOKEN")
    r = run("push-hf", make_export(tmp_path / "export"), REPO)
    assert r.exit_code == 2 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and "no Hugging Face token: set HF_TOKEN" in r.stderr
    assert hub.requests == []


def test_server_error_is_one_line_with_the_token_scrubbed(monkeypatch, hub, tmp_path):
    export = make_export(tmp_path / "export")
    hub.fail("create", 500, "database down while serving Authorization: {auth}")  # echoes what it got
    r = run("push-hf", export, REPO)
    assert r.exit_code == 2 and r.stderr.count("\n") == 1
    line = r.stderr
    assert line.startswith("Error: push-hf: create tester/digits-push: the Hub answered 500: database down")
    assert "Bearer <token>" in line and TOKEN not in line
    # a token that does not look like one (a private Hub's) is scrubbed all the same
    other = "plain-secret-42"
    hub.token = other
    monkeypatch.setenv("HF_TOKEN", other)
    hub.fail("whoami", 502, "proxy error for {auth}")
    r = run("push-hf", export, REPO)
    assert r.exit_code == 2 and other not in r.stderr and "Bearer <token>" in r.stderr
    # a wrong token: 401, with what to check
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    r = run("push-hf", export, REPO)
    assert r.exit_code == 2 and r.stderr.count("\n") == 1
    assert "answered 401" in r.stderr and "check HF_TOKEN" in r.stderr and TOKEN not in r.stderr


def test_offline_mode_and_a_bad_source_or_repo_id_are_one_line(monkeypatch, hub, tmp_path):
    import huggingface_hub.constants as constants

    export = make_export(tmp_path / "export")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    r = run("push-hf", export, REPO)
    assert r.exit_code == 2 and "HF_HUB_OFFLINE is set" in r.stderr and r.stderr.count("\n") == 1
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    (tmp_path / "empty").mkdir()
    r = run("push-hf", tmp_path / "empty", REPO)
    assert r.exit_code == 2 and "empty: is not an export folder" in r.stderr and r.stderr.count("\n") == 1
    r = run("push-hf", export, "a/b/c")
    assert r.exit_code == 2 and "REPO_ID 'a/b/c'" in r.stderr and r.stderr.count("\n") == 1
    (export / "README.md").write_text(CARD + f"\ncontact token: {TOKEN}\n")  # a card holding the token
    r = run("push-hf", export, REPO)
    assert r.exit_code == 2 and "README.md: holds the Hugging Face token" in r.stderr and TOKEN not in r.stderr
    assert hub.requests == []


def test_an_unreachable_hub_is_one_line(monkeypatch, hub, tmp_path):
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    r = run("push-hf", make_export(tmp_path / "export"), REPO)
    assert r.exit_code == 2 and r.stderr.count("\n") == 1
    assert f"check the token: cannot reach http://127.0.0.1:{port}" in r.stderr and TOKEN not in r.stderr


def test_real_subprocess_with_hf_endpoint(hub, tmp_path):
    export = make_export(tmp_path / "export")
    home = tmp_path / "home"
    env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_TOKEN": TOKEN, "HF_HUB_OFFLINE": "0",
           "HF_HUB_DISABLE_XET": "1", "HF_HOME": str(home), "HF_DEBUG": "1", "HOME": str(home)}
    exe = Path(sys.executable).parent / "factory"
    p = subprocess.run([exe, "-v", "push-hf", export, REPO, "--revision", "dev"], capture_output=True, text=True,
                       env=env, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "pushed tester/digits-push@dev" in p.stdout and "Send: curl" in p.stderr
    assert {k: v for k, v in hub.files(REPO, "dev").items() if k != ".gitattributes"} == local_files(export)
    hub.fail("commit", 500, "cannot commit for {auth}")
    (export / "croissant.json").write_text("{}")
    env.pop("HF_DEBUG")
    p = subprocess.run([exe, "push-hf", export, REPO, "--revision", "dev"], capture_output=True, text=True,
                       env=env, timeout=120)
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "Bearer <token>" in p.stderr
    no_token_anywhere(hub, p.stdout, p.stderr, folders=(tmp_path,))


# ------------------------------------------------------------------------------------------------ with export_hf

def test_a_dataset_folder_is_exported_then_pushed(monkeypatch, hub, tmp_path):
    from PIL import Image

    from factory.data.ingest import ingest
    from factory.share.hf_export import export_hf

    for k in range(6):  # a tiny ImageFolder: 2 classes, 3 images each
        (tmp_path / "images" / f"c{k % 2}").mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8), (40 * k, 0, 255 - 40 * k)).save(tmp_path / "images" / f"c{k % 2}" / f"{k}.png")
    ingest(str(tmp_path / "images"), tmp_path / "ds", shard_size=4)
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    result = push_hf(tmp_path / "ds", REPO)
    files = hub.files(REPO)
    assert any(p.startswith("data/") and p.endswith(".parquet") for p in files)
    assert REPO in files["README.md"].decode()  # the card names where it lives
    export_hf(tmp_path / "ds", tmp_path / "export", repo_id=REPO)  # the same export, made again, arrived
    assert {p: d for p, d in files.items() if p != ".gitattributes"} == local_files(tmp_path / "export")
    again = push_hf(tmp_path / "ds", REPO)  # exports are deterministic: a re-push sends nothing
    assert again.uploaded == [] and len(again.skipped) == len(result.files)
    assert list((tmp_path / "tmp").iterdir()) == []  # the temporary export is gone
