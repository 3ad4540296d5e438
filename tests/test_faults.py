"""Fault injection on the writers: concurrent writers, SIGKILL at every step of a publish, a full disk, a
read-only file system, I/O and permission errors. After each, the previous output is intact (or the new
one complete), the error is one line naming the output, and no staging folder, lock or temporary file is
left behind; the next run succeeds.
"""

import errno
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from factory.cli.main import cli
from factory.core import files
from factory.core.errors import FactoryError
from factory.core.modelfolder import ModelFolder
from factory.core.outputs import output_lock
from factory.core.shards import INDEX_NAME, Dataset, DatasetWriter
from factory.data.inspection import verify

REPO = Path(__file__).resolve().parent.parent
LOCK_LINE = "another factory process is writing it (lock "


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def one_error_line(r) -> str:
    assert r.exit_code == 2, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), r.stderr
    assert "Traceback" not in r.output
    return lines[0]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir()
                  if p.name.startswith(".") and any(t in p.name for t in (".partial", ".old-", ".lock", ".tmp")))


def imagefolder(root: Path, n: int, size: int = 16) -> Path:
    for i in range(n):
        d = root / f"class{i % 3}"
        d.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (size, size), (i * 37 % 256, i * 11 % 256, 90)).save(d / f"img{i:04d}.png")
    return root


def factory_cmd(*args) -> list[str]:
    return [sys.executable, "-m", "factory.cli.main", *[str(a) for a in args]]


def no_exchange_cmd(*args) -> list[str]:
    """The CLI in a process whose OS "cannot" exchange two folders: the two-rename fallback runs."""
    code = ("import sys; import factory.core.files as f; f._exchange = lambda a, b: False; "
            "from factory.cli.main import main; sys.argv = ['factory'] + sys.argv[1:]; main()")
    return [sys.executable, "-c", code, *[str(a) for a in args]]


@pytest.fixture
def old(tmp_path) -> tuple[Path, Path, dict[str, bytes]]:
    """A source folder of 30 images and an existing dataset of it (shard size 50: one shard)."""
    src = imagefolder(tmp_path / "src", 30)
    out = tmp_path / "work" / "out"
    r = run("ingest", src, out, "--shard-size", 50)
    assert r.exit_code == 0, r.output
    return src, out, snapshot(out)


def is_old_or_new(out: Path, before: dict[str, bytes], new_shards: int) -> str:
    """Which complete dataset is under the final name: "old" (byte for byte) or "new" (verified)."""
    if snapshot(out) == before:
        return "old"
    assert len(Dataset(out).shards) == new_shards and verify(out).ok
    return "new"


# -- one writer at a time ----------------------------------------------------------------------------------


def test_a_second_writer_fails_at_once_with_the_lock_line(old):
    src, out, before = old
    with output_lock(out):
        t0 = time.monotonic()
        line = one_error_line(run("ingest", src, out, "--overwrite"))
        assert time.monotonic() - t0 < 5
    assert f"{out}: {LOCK_LINE}{out.parent / '.out.lock'})" in line
    assert snapshot(out) == before
    with DatasetWriter(out, "t", ["a"], overwrite=True) as w:  # a writer holds the lock until it closes
        with pytest.raises(FactoryError, match="another factory process is writing it"):
            DatasetWriter(out, "t", ["a"], overwrite=True)
        w.abort()
    assert snapshot(out) == before and leftovers(out.parent) == []


def test_the_lock_file_goes_on_release_and_is_taken_by_resolved_path(tmp_path):
    out = tmp_path / "out"
    with output_lock(out) as lock:
        assert lock.exists()
    assert not lock.exists()
    with output_lock(out):
        with pytest.raises(FactoryError, match="another factory process"):
            with output_lock(tmp_path / "x" / ".." / "out"):
                pass


def _race(src: Path, out: Path, trials: int, shard_size: int) -> None:
    for trial in range(trials):
        if out.exists():
            shutil.rmtree(out)
        procs = [subprocess.Popen(factory_cmd("ingest", src, out, "--shard-size", shard_size), cwd=REPO,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
        results = [(p.returncode, *out_err) for p in procs for out_err in [p.communicate(timeout=300)]]
        codes = sorted(rc for rc, _, _ in results)
        assert codes == [0, 2], (trial, results)
        loser = next(err for rc, _, err in results if rc == 2)
        assert loser.count("\n") == 1 and (LOCK_LINE in loser or "already exists" in loser), loser
        assert verify(out).ok, trial
        assert leftovers(out.parent) == []


def test_two_ingests_into_one_folder_at_once(tmp_path):
    _race(imagefolder(tmp_path / "src", 60), tmp_path / "out", trials=1, shard_size=7)


@pytest.mark.slow
def test_two_ingests_of_imagenette_into_one_folder_at_once_two_trials(imagenette, tmp_path):
    _race(imagenette / "train", tmp_path / "inet", trials=2, shard_size=100)


# -- SIGKILL: the final name holds the old or the new complete dataset; the next run succeeds -------------


@pytest.mark.parametrize("point, exchange, expect", [
    ("shard:0", True, "old"),
    ("shard:3", True, "old"),
    ("index", True, "old"),
    ("swap", True, "old"),
    ("swapped", True, "new"),
    ("swapped", False, "new"),
    ("renamed", False, "aside"),
])
def test_sigkill_at_each_step_of_a_publish(old, point, exchange, expect):
    src, out, before = old
    cmd = (factory_cmd if exchange else no_exchange_cmd)("ingest", src, out, "--overwrite", "--shard-size", 5)
    p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True,
                       env={**os.environ, files.KILL_ENV: point})
    assert p.returncode == -signal.SIGKILL, p.stderr
    if expect == "aside":  # between the two renames: the old data waits beside the final name
        assert not out.exists()
        (aside,) = out.parent.glob(".out.old-*")
        assert snapshot(aside) == before
        line = one_error_line(run("ingest", src, out))  # the next writer puts it back first
        assert "already exists" in line and snapshot(out) == before
    else:
        assert is_old_or_new(out, before, new_shards=6) == expect
    r = run("ingest", src, out, "--overwrite", "--shard-size", 5)
    assert r.exit_code == 0, r.output
    assert is_old_or_new(out, before, new_shards=6) == "new"
    assert leftovers(out.parent) == []


@pytest.mark.slow
def test_sigkill_at_increasing_delays(tmp_path):
    src = imagefolder(tmp_path / "src", 400, size=24)
    out = tmp_path / "work" / "out"
    assert run("ingest", src, out, "--shard-size", 500).exit_code == 0
    before = snapshot(out)
    seen = []
    for delay in (0.0, 0.2, 0.5, 1.0, 2.0):
        proc = subprocess.Popen(factory_cmd("ingest", src, out, "--overwrite", "--shard-size", 10), cwd=REPO,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while not (out.parent / ".out.partial").exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        seen.append(is_old_or_new(out, before, new_shards=40))
        if seen[-1] == "new":
            break
    r = run("ingest", src, out, "--overwrite", "--shard-size", 10)
    assert r.exit_code == 0 and is_old_or_new(out, before, new_shards=40) == "new"
    assert leftovers(out.parent) == [] and "old" in seen


# -- disk full, read-only, I/O and permission errors ------------------------------------------------------


def fail_nth_file_fsync(monkeypatch, n: int, err: int) -> None:
    """``os.fsync`` of the ``n``-th regular file fails with ``err`` (a disk that fills up mid-write)."""
    real, calls = os.fsync, []

    def fsync(fd):
        if stat.S_ISREG(os.fstat(fd).st_mode):
            calls.append(fd)
            if len(calls) >= n:
                raise OSError(err, os.strerror(err))
        return real(fd)

    monkeypatch.setattr(os, "fsync", fsync)


def test_disk_full_mid_ingest_keeps_the_old_dataset(old, monkeypatch):
    src, out, before = old
    fail_nth_file_fsync(monkeypatch, 3, errno.ENOSPC)
    line = one_error_line(run("ingest", src, out, "--overwrite", "--shard-size", 5))
    assert f"{out}: shard shard-000002.tar: cannot write (No space left on device)" in line
    assert snapshot(out) == before and leftovers(out.parent) == []
    monkeypatch.undo()
    assert run("ingest", src, out, "--overwrite", "--shard-size", 5).exit_code == 0


def test_disk_full_on_the_index_keeps_the_old_dataset(old, monkeypatch):
    src, out, before = old
    fail_nth_file_fsync(monkeypatch, 7, errno.ENOSPC)  # 6 shards, then index.json
    line = one_error_line(run("ingest", src, out, "--overwrite", "--shard-size", 5))
    assert f"{out}: index.json: cannot write (No space left on device)" in line
    assert snapshot(out) == before and leftovers(out.parent) == []


def test_io_error_at_the_swap_keeps_the_old_dataset(old, monkeypatch):
    src, out, before = old

    def eio(a, b):
        raise OSError(errno.EIO, os.strerror(errno.EIO), str(b))

    monkeypatch.setattr(files, "_exchange", eio)
    line = one_error_line(run("ingest", src, out, "--overwrite", "--shard-size", 5))
    assert line == f"Error: {out}: cannot write (Input/output error)"
    assert snapshot(out) == before and leftovers(out.parent) == []


def test_io_error_between_the_two_renames_puts_the_old_folder_back(old, monkeypatch):
    src, out, before = old
    real = os.rename

    def rename(a, b):
        if str(a).endswith(".partial"):
            raise OSError(errno.EIO, os.strerror(errno.EIO), str(a))
        return real(a, b)

    monkeypatch.setattr(files, "_exchange", lambda a, b: False)
    monkeypatch.setattr(os, "rename", rename)
    line = one_error_line(run("ingest", src, out, "--overwrite", "--shard-size", 5))
    assert "Input/output error" in line
    assert snapshot(out) == before and leftovers(out.parent) == []


def test_permission_denied_on_a_shard_keeps_the_old_dataset(old, monkeypatch):
    src, out, before = old
    real = os.replace

    def replace(a, b):
        if ".tar.tmp-" in str(a):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(b))
        return real(a, b)

    monkeypatch.setattr(os, "replace", replace)
    line = one_error_line(run("ingest", src, out, "--overwrite", "--shard-size", 5))
    assert f"{out}: shard shard-000000.tar: cannot write (Permission denied)" in line
    assert snapshot(out) == before and leftovers(out.parent) == []


def test_read_only_file_system_simulated(old, monkeypatch):
    src, out, before = old
    real = os.open

    def ro_open(path, flags, *args, **kwargs):
        if flags & os.O_CREAT:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", ro_open)
    line = one_error_line(run("ingest", src, out, "--overwrite"))
    assert f"{out}: cannot create the lock file {out.parent / '.out.lock'} (Read-only file system)" in line
    assert snapshot(out) == before


def test_disk_full_on_a_report_keeps_the_previous_report(tmp_path, digits, monkeypatch):
    report = tmp_path / "r.json"
    report.write_text('{"previous": true}')
    fail_nth_file_fsync(monkeypatch, 1, errno.ENOSPC)
    line = one_error_line(run("dedup", digits, "--report", report))
    assert line == f"Error: {report}: cannot write (No space left on device)"
    assert json.loads(report.read_text()) == {"previous": True} and leftovers(tmp_path) == []


def test_disk_full_while_saving_a_model_keeps_the_previous_folder(tmp_path, monkeypatch):
    kind = ModelFolder(kind="tiny model", schema="factory.tiny/1", weights="w.safetensors", config="c.json")
    out = tmp_path / "m"
    kind.save(out, torch.nn.Linear(2, 2), {"schema": kind.schema})
    before = snapshot(out)
    fail_nth_file_fsync(monkeypatch, 1, errno.ENOSPC)
    with pytest.raises(FactoryError, match=r"c\.json: cannot write \(No space left on device\)"):
        kind.save(out, torch.nn.Linear(2, 3), {"schema": kind.schema})
    assert snapshot(out) == before and leftovers(tmp_path) == []


@pytest.fixture
def small_tmpfs(tmp_path):
    """A real 2 MiB tmpfs (needs root and a kernel that lets this container mount; skipped otherwise)."""
    mnt = tmp_path / f"tmpfs-{uuid.uuid4().hex[:6]}"
    mnt.mkdir()
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], capture_output=True)
    if p.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({p.stderr.decode().strip()})")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_real_disk_full_on_a_small_tmpfs(small_tmpfs, tmp_path):
    src = imagefolder(tmp_path / "src", 12)
    out = small_tmpfs / "out"
    assert run("ingest", src, out).exit_code == 0
    before = snapshot(out)
    p = subprocess.run(factory_cmd("ingest", "sklearn:digits", out, "--overwrite", "--shard-size", 100),
                       cwd=REPO, capture_output=True, text=True)
    assert p.returncode == 2 and len(p.stderr.splitlines()) == 1, p.stderr  # one line, no "Exception ignored"
    assert p.stderr.startswith(f"Error: {out}: shard shard-0000") and "No space left on device" in p.stderr
    assert snapshot(out) == before and leftovers(small_tmpfs) == []
    assert shutil.disk_usage(small_tmpfs).used < 512 * 1024  # nothing of the failed run stays


def test_real_read_only_file_system(small_tmpfs, tmp_path):
    src = imagefolder(tmp_path / "src", 12)
    out = small_tmpfs / "out"
    assert run("ingest", src, out).exit_code == 0
    before = snapshot(out)
    if subprocess.run(["mount", "-o", "remount,ro", str(small_tmpfs)], capture_output=True).returncode != 0:
        pytest.skip("cannot remount read-only here")
    line = one_error_line(run("ingest", src, out, "--overwrite", "--shard-size", 5))
    assert "Read-only file system" in line and str(out) in line
    assert snapshot(out) == before and INDEX_NAME in before
