"""What a command may write: only something new or one of ours, never an input, one path per output.

Each attack of issue 10's "data loss" class goes through the command line (CliRunner, a few as real
subprocesses) and checks that nothing was lost: the victim folder or file is byte for byte as before.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from factory.cli.main import cli
from factory.core import files
from factory.core.errors import FactoryError
from factory.core.modelfolder import ModelFolder
from factory.core.outputs import OutputDir, claim_output_dir, claim_output_file, output_lock
from factory.core.shards import INDEX_NAME, Dataset, check_output_dir, dataset_problem
from factory.data.inspection import verify

REPO = Path(__file__).resolve().parent.parent


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def one_error_line(r) -> str:
    assert r.exit_code == 2, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), r.stderr
    assert "Traceback" not in r.output
    return lines[0]


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (relative name -> bytes)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def leftovers(parent: Path) -> list[str]:
    """Hidden staging folders, renamed-aside old folders, lock and temporary files in ``parent``."""
    return sorted(p.name for p in parent.iterdir()
                  if p.name.startswith(".") and any(t in p.name for t in (".partial", ".old-", ".lock", ".tmp")))


@pytest.fixture
def ds(digits, tmp_path) -> Path:
    """A private copy of the digits dataset (4 shards of 500)."""
    out = tmp_path / "ds"
    shutil.copytree(digits, out)
    return out


# -- 1. an existing folder is replaced only if it is ours --------------------------------------------------


def test_stray_index_json_does_not_make_a_project_folder_replaceable(tmp_path):
    proj = tmp_path / "proj"
    (proj / "src").mkdir(parents=True)
    (proj / INDEX_NAME).write_text(json.dumps({"name": "my-web-app"}))
    (proj / "src" / "app.py").write_text("print('hello')\n")
    before = snapshot(proj)
    line = one_error_line(run("ingest", "sklearn:digits", proj, "--overwrite"))
    assert f"{proj}: is not a factory dataset; refusing to overwrite it" in line
    assert snapshot(proj) == before
    assert leftovers(tmp_path) == []


def test_stray_index_json_as_a_real_subprocess(tmp_path):
    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / INDEX_NAME).write_text(json.dumps({"name": "my-web-app"}))
    (proj / "package.json").write_text("{}")
    before = snapshot(proj)
    p = subprocess.run([sys.executable, "-m", "factory.cli.main", "ingest", "sklearn:digits", str(proj),
                        "--overwrite"], capture_output=True, text=True, cwd=REPO)
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "not a factory dataset" in p.stderr, p.stderr
    assert snapshot(proj) == before


@pytest.mark.parametrize("damage, why", [
    (lambda d: (d / "README.md").write_text("my notes"), "dataset; refusing to overwrite it (it also holds README.md)"),
    (lambda d: (d / "sub").mkdir(), "(it also holds sub)"),
    (lambda d: (d / "shard-000003.tar").unlink(), "shard shard-000003.tar listed in index.json is missing"),
    (lambda d: (d / INDEX_NAME).write_text("{not json"), "index.json unreadable"),
    (lambda d: (d / INDEX_NAME).write_text(json.dumps({"schema": "other/1", "shards": []})), "no schema"),
    (lambda d: (d / INDEX_NAME).write_text(json.dumps(
        {"schema": "factory.dataset/1", "shards": [{"name": "../victim/shard-000000.tar"}]})), "plain shard names"),
    (lambda d: (d / INDEX_NAME).write_text(json.dumps({"schema": "factory.dataset/1", "shards": "x"})),
     "plain shard names"),
])
def test_only_a_checked_factory_dataset_is_replaced(ds, tmp_path, damage, why):
    damage(ds)
    before = snapshot(ds)
    line = one_error_line(run("ingest", "sklearn:digits", ds, "--overwrite"))
    assert "refusing to overwrite it" in line and why in line
    assert snapshot(ds) == before
    assert leftovers(tmp_path) == []


def test_a_complete_dataset_is_replaced_and_hidden_temp_files_are_ours(ds, tmp_path):
    (ds / ".shard-000009.tar.tmp-4242").write_bytes(b"partial")  # left by a killed shard writer
    assert dataset_problem(ds) is None
    r = run("ingest", "sklearn:digits", ds, "--overwrite", "--shard-size", 900)
    assert r.exit_code == 0, r.output
    assert len(Dataset(ds).shards) == 2 and verify(ds).ok
    assert sorted(p.name for p in ds.iterdir()) == [INDEX_NAME, "shard-000000.tar", "shard-000001.tar"]
    assert leftovers(tmp_path) == []


TINY = ModelFolder(kind="tiny model", schema="factory.tiny/1", weights="tiny.safetensors", config="tiny.json",
                   short="tiny")
OTHER = ModelFolder(kind="other model", schema="factory.other/1", weights="tiny.safetensors", config="tiny.json")


def test_model_folders_are_checked_by_their_config(tmp_path):
    out = tmp_path / "m"
    TINY.save(out, torch.nn.Linear(2, 2), {"schema": TINY.schema, "arch": "arch.json"}, files={"arch.json": b"{}"})
    TINY.save(out, torch.nn.Linear(2, 3), {"schema": TINY.schema, "arch": "arch.json"}, files={"arch.json": b"{}"})
    assert TINY.read(out)["arch"] == "arch.json"  # a folder of the kind, with a file its config names
    before = snapshot(out)
    with pytest.raises(FactoryError, match=r"is not a other model folder; refusing .*factory.other/1"):
        OTHER.save(out, torch.nn.Linear(2, 2), {"schema": OTHER.schema})  # same file names, other kind
    (out / "notes.txt").write_text("mine")
    with pytest.raises(FactoryError, match=r"refusing to overwrite it \(it also holds notes.txt\)"):
        TINY.save(out, torch.nn.Linear(2, 2), {"schema": TINY.schema})
    assert snapshot(out) == before | {"notes.txt": b"mine"}
    with pytest.raises(FactoryError, match="lies inside the input"):
        TINY.check_target(tmp_path / "data" / "m", inputs=[tmp_path / "data"])
    assert leftovers(tmp_path) == []


def test_generate_refuses_an_output_that_is_not_a_dataset_before_any_work(tmp_path):
    from factory.config import GenerateConfig
    from factory.generate.tasks import generate

    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / INDEX_NAME).write_text("{}")
    (victim / "thesis.tex").write_text("years of work")
    before = snapshot(victim)
    # The plan does not even exist: the output is refused first.
    with pytest.raises(FactoryError, match="victim: is not a factory dataset; refusing"):
        generate(tmp_path / "no-plan.jsonl", victim, GenerateConfig(model=str(tmp_path / "no-model")))
    plan = tmp_path / "plan.jsonl"
    plan.write_text("{}\n")
    with pytest.raises(FactoryError, match="is the input"):
        generate(plan, plan, GenerateConfig(model=str(tmp_path / "no-model")))
    assert snapshot(victim) == before and plan.read_text() == "{}\n"


# -- 2. an output is never an input, inside one, around one, nor another output ----------------------------


def test_filter_into_its_own_input_is_refused_before_the_scorer_loads(ds):
    before = snapshot(ds)
    line = one_error_line(run("filter", ds, ds, "--overwrite", "--scorer", "embedded:/no/such/scorer"))
    assert f"{ds}: is the input {ds}" in line
    assert snapshot(ds) == before and verify(ds).ok


def test_filter_rejected_equal_to_output_or_report_inside_it_is_refused(ds, tmp_path):
    out = tmp_path / "kept"
    line = one_error_line(run("filter", ds, out, "--rejected", out, "--scorer", "embedded:/no/such/scorer"))
    assert "is another output of this command" in line
    line = one_error_line(run("filter", ds, out, "--report", out / "report.json",
                              "--scorer", "embedded:/no/such/scorer"))
    assert "contains another output of this command" in line
    line = one_error_line(run("filter", ds, out, "--report", ds / "r.json", "--scorer", "embedded:/x"))
    assert "lies inside the input" in line
    assert not out.exists() and verify(ds).ok


def test_regenerate_into_a_shard_of_its_dataset_is_refused(ds):
    shard = ds / "shard-000000.tar"
    before = snapshot(ds)
    key = next(iter(Dataset(ds))).key
    line = one_error_line(run("regenerate", ds, key, shard))
    assert f"{shard}: lies inside the input {ds}" in line
    assert snapshot(ds) == before


def test_dedup_report_onto_the_index_is_refused(ds, tmp_path):
    before = snapshot(ds)
    line = one_error_line(run("dedup", ds, "--report", ds / INDEX_NAME))
    assert f"{ds / INDEX_NAME}: lies inside the input {ds}" in line
    line = one_error_line(run("dedup", ds, "--out", tmp_path / "clean", "--report", tmp_path / "clean" / "r.json"))
    assert "another output of this command" in line
    other = tmp_path / "other"
    shutil.copytree(ds, other)
    line = one_error_line(run("dedup", ds, "--against", other, "--report", other / "r.json"))
    assert "lies inside the input" in line
    assert snapshot(ds) == before and not (tmp_path / "clean").exists()


def test_ingest_never_writes_into_around_or_over_its_source(ds, tmp_path):
    before = snapshot(ds)
    link = tmp_path / "link"
    link.symlink_to(ds)
    assert f"{link}: is the input" in one_error_line(run("ingest", ds, link, "--overwrite"))
    assert "is the input" in one_error_line(run("ingest", ds, tmp_path / "x" / ".." / "ds", "--overwrite"))
    assert "lies inside the input" in one_error_line(run("ingest", ds, ds / "sub"))
    assert "contains the input" in one_error_line(run("ingest", ds, tmp_path, "--overwrite"))
    assert snapshot(ds) == before
    assert not (ds / "sub").exists()


def test_split_grid_and_prompts_build_keep_outputs_apart(ds, tmp_path):
    before = snapshot(ds)
    line = one_error_line(run("split", ds, tmp_path / "a", tmp_path / "a", "--test-fraction", "0.2"))
    assert "is another output of this command" in line
    assert "is the input" in one_error_line(run("split", ds, ds, tmp_path / "b", "--test-fraction", "0.2",
                                                "--overwrite"))
    assert "lies inside the input" in one_error_line(run("grid", ds, ds / "grid.png"))
    params = tmp_path / "params.yaml"
    shutil.copy(REPO / "params.yaml", params)
    params_before = params.read_bytes()
    line = one_error_line(run("prompts", "build", params, params, "--dataset", ds))
    assert f"{params}: is the input {params}" in line
    assert "lies inside the input" in one_error_line(run("prompts", "build", params, ds / "plan.jsonl",
                                                         "--dataset", ds))
    assert params.read_bytes() == params_before and snapshot(ds) == before
    assert not (tmp_path / "a").exists()


def test_claim_helpers_resolve_paths_and_name_the_culprit(tmp_path):
    (tmp_path / "in").mkdir()
    with pytest.raises(FactoryError, match=r"in/\.\./in: is the input"):
        claim_output_dir(tmp_path / "in" / ".." / "in", inputs=[tmp_path / "in"])
    assert claim_output_dir(tmp_path / "new" / "out", inputs=[tmp_path / "in"]) == (tmp_path / "new" / "out").resolve()
    assert not (tmp_path / "new").exists()  # a check creates nothing
    with pytest.raises(FactoryError, match="is a directory"):
        claim_output_file(tmp_path / "in")
    with pytest.raises(FactoryError, match="is another output"):
        claim_output_file(tmp_path / "r.json", others=[tmp_path / "r.json"])
    assert claim_output_file(tmp_path / "r.json", inputs=[None, tmp_path / "in"], others=[None]).name == "r.json"


# -- 4. resolved paths, the working directory, crash leftovers ----------------------------------------------


def test_overwrite_through_dotdot_replaces_whole_and_leaves_nothing(ds, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = run("ingest", "sklearn:digits", "ds/../ds", "--overwrite", "--shard-size", 1000)
    assert r.exit_code == 0, r.output
    assert len(Dataset(ds).shards) == 2 and verify(ds).ok
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("target", [".", "..", "./", "sub/.."])
def test_the_working_directory_and_its_parents_are_never_an_output(tmp_path, monkeypatch, target):
    (tmp_path / "sub").mkdir()
    (tmp_path / "keep.txt").write_text("keep")
    monkeypatch.chdir(tmp_path)
    line = one_error_line(run("ingest", "sklearn:digits", target, "--overwrite"))
    assert "is the current directory or one of its parents" in line
    assert (tmp_path / "keep.txt").read_text() == "keep" and leftovers(tmp_path) == []


def test_working_directory_refusal_as_a_real_subprocess(tmp_path):
    p = subprocess.run([sys.executable, "-m", "factory.cli.main", "ingest", "sklearn:digits", "."],
                       capture_output=True, text=True, cwd=tmp_path,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
    assert p.returncode == 2 and p.stderr.strip().splitlines() == [
        "Error: .: is the current directory or one of its parents; write the output to a new folder instead"]
    assert list(tmp_path.iterdir()) == []


def test_a_folder_renamed_aside_by_a_crash_is_put_back(ds, tmp_path):
    """The two-rename swap was killed between its renames: only ``.ds.old-<pid>`` holds the data."""
    before = snapshot(ds)
    aside = tmp_path / ".ds.old-4242"
    ds.rename(aside)
    line = one_error_line(run("ingest", "sklearn:digits", ds))  # restored first, then refused as usual
    assert "already exists and is not empty (pass --overwrite" in line
    assert snapshot(ds) == before and not aside.exists()
    ds.rename(aside)
    shutil.copytree(aside, tmp_path / ".ds.old-4343")
    line = one_error_line(run("ingest", "sklearn:digits", ds, "--overwrite"))
    assert f"{ds}: missing, and earlier versions of it lie in {aside}, {tmp_path / '.ds.old-4343'}" in line
    assert snapshot(aside) == before
    shutil.rmtree(tmp_path / ".ds.old-4343")
    aside.rename(ds)
    shutil.copytree(ds, aside)  # killed after the swap: the old copy is garbage, the new one is complete
    r = run("ingest", "sklearn:digits", ds, "--overwrite", "--shard-size", 1000)
    assert r.exit_code == 0 and len(Dataset(ds).shards) == 2 and leftovers(tmp_path) == []


def test_two_rename_fallback_when_the_os_cannot_exchange(ds, tmp_path, monkeypatch):
    monkeypatch.setattr(files, "_exchange", lambda a, b: False)
    r = run("ingest", "sklearn:digits", ds, "--overwrite", "--shard-size", 1000)
    assert r.exit_code == 0, r.output
    assert len(Dataset(ds).shards) == 2 and verify(ds).ok and leftovers(tmp_path) == []


def test_exchange_swaps_folders_atomically(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "x").write_text("new")
    (b / "y").write_text("old")
    if not files._exchange(a, b):
        pytest.skip("renameat2(RENAME_EXCHANGE) is not available here")
    assert (b / "x").read_text() == "new" and (a / "y").read_text() == "old"


def test_output_dir_staging_lock_and_publish(tmp_path):
    out = tmp_path / "out"
    with OutputDir(out) as o:
        assert (tmp_path / ".out.lock").exists() and o.staging == tmp_path / ".out.partial"
        (o.staging / "f").write_text("1")
    assert (out / "f").read_text() == "1" and leftovers(tmp_path) == []
    with pytest.raises(RuntimeError):
        with OutputDir(out, overwrite=True, replaceable=lambda p: None) as o:
            (o.staging / "f").write_text("2")
            raise RuntimeError("boom")
    assert (out / "f").read_text() == "1" and leftovers(tmp_path) == []
    with pytest.raises(FactoryError, match="out: is not empty; refusing to overwrite it"):
        OutputDir(out, overwrite=True)  # no replaceable check: only absent or empty folders
    with output_lock(out) as lock:
        assert lock == tmp_path / ".out.lock"
        with pytest.raises(FactoryError, match=r"out: another factory process is writing it \(lock .*\.out\.lock\)"):
            check_output_dir(out, True)
    assert leftovers(tmp_path) == []


def test_write_helpers_turn_os_errors_into_one_line(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(FactoryError, match=r"file/r\.json: cannot write \((File exists|Not a directory)\)$"):
        files.atomic_write_bytes(tmp_path / "file" / "r.json", b"{}")
    assert leftovers(tmp_path) == []


def test_the_pools_stage_replaces_only_a_folder_of_pool_files(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("pools_stage", REPO / "stages" / "pools.py")
    stage = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(stage)
    pools = tmp_path / "pools"
    pools.mkdir()
    (pools / "real.json").write_text(json.dumps({"schema": "factory.pool/1", "name": "real"}))
    assert stage.pools_problem(pools) is None
    (pools / "notes.md").write_text("mine")
    assert "notes.md is not a factory.pool/1 file" in stage.pools_problem(pools)
    with pytest.raises(FactoryError, match="pools: is not a folder of pool files; refusing to overwrite it"):
        OutputDir(pools, overwrite=True, replaceable=stage.pools_problem)
    assert (pools / "notes.md").read_text() == "mine" and leftovers(tmp_path) == []


# -- 5. nested writers, and crash clean-up that touches only what is ours ----------------------------------

def test_an_output_inside_a_dataset_or_model_folder_is_refused(ds, tmp_path):
    before = snapshot(ds)
    line = one_error_line(run("ingest", "sklearn:digits", ds / "y"))
    assert line == f"Error: {ds / 'y'}: lies inside {ds}, a factory dataset; write the output outside it"
    assert snapshot(ds) == before and not (ds / "y").exists() and leftovers(ds) == []
    model = tmp_path / "model"
    model.mkdir()
    (model / "w.safetensors").write_bytes(b"x")
    (model / "w.json").write_text(json.dumps({"schema": "factory.some-model/1"}))
    with pytest.raises(FactoryError, match=r"lies inside .*model, a factory model folder"):
        OutputDir(model / "sub" / "out")
    assert sorted(p.name for p in model.iterdir()) == ["w.json", "w.safetensors"]


def test_an_output_inside_a_folder_being_written_is_refused(tmp_path):
    """``ingest A x --overwrite`` runs; ``ingest B x/y`` must not report success for data A then deletes."""
    outer = tmp_path / "x"
    with output_lock(outer):
        p = subprocess.run([sys.executable, "-m", "factory.cli.main", "ingest", "sklearn:digits", str(outer / "y")],
                           capture_output=True, text=True, cwd=REPO)
        assert p.returncode == 2 and p.stderr.strip().splitlines() == [
            f"Error: {outer / 'y'}: lies inside {outer}, which another factory process is writing"], p.stderr
        with pytest.raises(FactoryError, match=r"x/a/b: lies inside .*/x, which another factory process is"):
            claim_output_dir(outer / "a" / "b")
        with pytest.raises(FactoryError, match="which another factory process is writing"):  # its staging too
            OutputDir(tmp_path / ".x.partial" / "z")
    assert not outer.exists() and sorted(p.name for p in tmp_path.iterdir()) == []  # no lock made for x


def test_a_writer_of_the_outer_folder_is_refused_while_an_inner_one_runs(ds, tmp_path):
    (tmp_path / "x").mkdir()
    with OutputDir(tmp_path / "x" / "y"):  # the reverse order: x now holds .y.lock and .y.partial
        with pytest.raises(FactoryError, match="x: is not empty; refusing to overwrite it"):
            OutputDir(tmp_path / "x", overwrite=True)
        with pytest.raises(FactoryError, match=r"x: is not a factory dataset; refusing"):
            check_output_dir(tmp_path / "x", True)
    before = snapshot(ds)
    with output_lock(ds / "y"):  # a dataset someone writes into (begun before it was one) is not replaced
        line = one_error_line(run("ingest", "sklearn:digits", ds, "--overwrite"))
        assert "holds more than a factory dataset; refusing to overwrite it (it also holds .y.lock)" in line
    assert snapshot(ds) == before


def test_crash_cleanup_never_touches_a_users_folders(ds, tmp_path):
    before = snapshot(ds)
    backup = tmp_path / ".ds.old-backup"  # not ours by name: never globbed, deleted nor restored
    backup.mkdir()
    (backup / "thesis.txt").write_text("x")
    line = one_error_line(run("ingest", "sklearn:digits", ds))
    assert "already exists" in line and (backup / "thesis.txt").read_text() == "x"
    ds.rename(tmp_path / "elsewhere")
    assert claim_output_dir(ds, replaceable=dataset_problem) == ds  # ds missing: the backup is not put back
    assert not ds.exists() and (backup / "thesis.txt").read_text() == "x"
    (tmp_path / "elsewhere").rename(ds)
    shutil.rmtree(backup)
    mine = tmp_path / ".ds.old-4242"  # ours by name, not by content: refused, left alone
    mine.mkdir()
    (mine / "thesis.txt").write_text("x")
    for present in (True, False):  # ds present: not removed; ds missing: not restored
        line = one_error_line(run("ingest", "sklearn:digits", ds, "--overwrite"))
        assert line == f"Error: {mine}: not a previous version of {ds} left by an interrupted run; move it away"
        assert (mine / "thesis.txt").read_text() == "x"
        if present:
            assert snapshot(ds) == before
            ds.rename(tmp_path / "elsewhere")
    assert not ds.exists()


def test_a_stale_staging_folder_is_removed_only_if_it_holds_our_files(tmp_path):
    staging = tmp_path / ".newds.partial"
    staging.mkdir()
    (staging / "keep.txt").write_text("x")
    line = one_error_line(run("ingest", "sklearn:digits", tmp_path / "newds"))
    assert line == f"Error: {staging}: not a factory staging folder; move it away"
    assert (staging / "keep.txt").read_text() == "x" and not (tmp_path / "newds").exists()
    (staging / "keep.txt").unlink()
    (staging / "sub").mkdir()
    with pytest.raises(FactoryError, match="not a factory staging folder"):
        OutputDir(tmp_path / "newds")
    (staging / "sub").rmdir()
    for name in ("shard-000000.tar", ".shard-000001.tar.tmp-77", "index.json", "run.json", "m.safetensors"):
        (staging / name).write_bytes(b"partial")
    with OutputDir(tmp_path / "newds") as o:
        assert list(o.staging.iterdir()) == []  # ours: discarded
        (o.staging / "f").write_text("1")
    assert leftovers(tmp_path) == []


def test_a_restore_then_an_error_prints_one_stderr_line(ds, tmp_path):
    aside = tmp_path / ".ds.old-4242"
    ds.rename(aside)
    p = subprocess.run([sys.executable, "-m", "factory.cli.main", "ingest", "sklearn:digits", str(ds)],
                       capture_output=True, text=True, cwd=REPO)
    assert p.returncode == 2 and p.stderr.strip().splitlines() == [
        f"Error: {ds}: already exists and is not empty (pass --overwrite to replace it)"], p.stderr
    assert ds.is_dir() and not aside.exists()


def test_no_warning_about_a_temp_file_that_was_never_made(tmp_path, monkeypatch, caplog):
    """Read-only file system: open() fails, and so does unlink() even of a missing file (EROFS)."""
    def erofs(*a, **k):
        raise OSError(30, os.strerror(30))

    monkeypatch.setattr(files, "open", erofs, raising=False)
    monkeypatch.setattr(Path, "unlink", erofs)
    with caplog.at_level("INFO"):
        with pytest.raises(FactoryError, match=r"g\.png: cannot write \(Read-only file system\)$"):
            files.atomic_write_bytes(tmp_path / "g.png", b"png")
    assert not [r for r in caplog.records if "could not remove" in r.getMessage()]
