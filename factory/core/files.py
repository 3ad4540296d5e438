"""File helpers: atomic writes, one JSON writer, checksums, staging folders that replace a folder whole.

Every output of the factory is written under a temporary name and renamed into place, so a crash at any
moment leaves either the previous state or the complete new file or folder. A folder is swapped with its
replacement in one step where the OS allows it (Linux ``renameat2(RENAME_EXCHANGE)``); elsewhere the old
folder is first renamed aside to ``.<name>.old-<pid>`` (see :func:`trash_dirs`), which the next writer of
that output puts back if a crash came between the two renames. An ``OSError`` while writing (disk full,
read-only file system, I/O or permission error) becomes a :class:`FactoryError` naming the file, and the
temporary file is removed.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from factory.core.errors import FactoryError

log = logging.getLogger(__name__)

KILL_ENV = "FACTORY_TEST_KILL_AT"


def kill_point(name: str) -> None:
    """Fault-injection hook for the crash-safety tests: ``FACTORY_TEST_KILL_AT=<name>`` makes this process
    SIGKILL itself here (names: ``shard:<i>``, ``index``, ``swap``, ``swapped``, ``renamed``)."""
    if os.environ.get(KILL_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)


def os_reason(exc: OSError) -> str:
    return exc.strerror or str(exc) or type(exc).__name__


@contextmanager
def writing(what: Path | str) -> Iterator[None]:
    """Turn an ``OSError`` raised in the block into ``FactoryError("<what>: cannot write (<reason>)")``."""
    try:
        yield
    except OSError as exc:
        raise FactoryError(f"{what}: cannot write ({os_reason(exc)})") from None


def remove_quietly(path: Path) -> None:
    """Clean-up after a failure that is already being raised: remove ``path`` (file or folder); if even
    that fails, log where the leftover is (at INFO: the error being raised is the one line a user sees
    on stderr). Nothing is said about a path that does not exist (e.g. a temporary file never created)."""
    if not os.path.lexists(path):
        return
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    except OSError as exc:
        log.info("could not remove %s (%s); delete it by hand", path, os_reason(exc))


def parse_json(raw: bytes | str, path: Path | str, *, error: type[FactoryError] = FactoryError) -> Any:
    """Parse JSON text read from ``path``; bad JSON raises ``error("<path>: not valid JSON (<reason>)")``."""
    try:
        return json.loads(raw)
    except RecursionError:
        raise error(f"{path}: not valid JSON (nested too deeply)") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, a number with over 4300 digits
        raise error(f"{path}: not valid JSON ({exc})") from None


def read_json(path: Path | str, *, what: str = "file", error: type[FactoryError] = FactoryError) -> Any:
    """The one JSON file reader: a missing file raises ``error("<path>: no such <what>")``, bad JSON
    ``error("<path>: not valid JSON (<reason>)")``; ``error`` is FactoryError or a subclass."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{path}: no such {what}")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise error(f"{path}: unreadable {what} ({exc.strerror or exc})") from None
    return parse_json(raw, path, error=error)


def dumps_json(obj: Any) -> bytes:
    """Canonical JSON bytes: sorted keys, so the same record always gives the same bytes."""
    return json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode()


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    """Make a rename in ``path`` durable. Best effort: some file systems cannot fsync a folder (EINVAL),
    and the rename itself has already succeeded."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as exc:
        log.debug("cannot open %s to fsync it (%s)", path, os_reason(exc))
        return
    try:
        os.fsync(fd)
    except OSError as exc:
        log.debug("cannot fsync %s (%s)", path, os_reason(exc))
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes, *, where: Path | str | None = None) -> None:
    """Write ``data`` to ``path`` via a temporary file and a rename: never a half-written file. An
    ``OSError`` raises FactoryError naming ``where`` (default: ``path``); the previous file stays and no
    temporary is left."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with writing(path if where is None else where):
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            remove_quietly(tmp)
            raise
    _fsync_dir(path.parent)


def write_json(path: Path | str, obj: Any) -> None:
    """A metrics or report file: indented, sorted JSON, written atomically (parents created)."""
    atomic_write_bytes(Path(path), (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())


def staging_dir(out_dir: Path) -> Path:
    """Where a dataset is assembled before it is moved to ``out_dir`` (hidden, next to it)."""
    return out_dir.parent / f".{out_dir.name}.partial"


def trash_dirs(out_dir: Path) -> list[Path]:
    """Folders ``.<name>.old-<pid>`` (digits only): the previous ``out_dir``, renamed aside by the
    two-rename swap. A user's ``.<name>.old-backup`` is never one of them; whether a match really is ours
    is the caller's to check (:func:`factory.core.outputs.recover`)."""
    pattern = re.compile(rf"\.{re.escape(out_dir.name)}\.old-\d+")
    try:
        entries = list(out_dir.parent.iterdir())
    except OSError:  # no parent (nothing to repair) or unreadable (the claim's own checks say so)
        return []
    return sorted(p for p in entries if pattern.fullmatch(p.name) and p.is_dir() and not p.is_symlink())


_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def _exchange(a: Path, b: Path) -> bool:
    """Swap the folders ``a`` and ``b`` in one atomic step (Linux ``renameat2(RENAME_EXCHANGE)``).
    False where the OS, the C library or the file system cannot; another failure raises OSError."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):  # no glibc >= 2.28 (musl, old systems): fall back
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    renameat2.restype = ctypes.c_int
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def replace_dir(staging: Path, out_dir: Path) -> None:
    """Move the complete folder ``staging`` to ``out_dir``, replacing what was there: until the final
    rename, ``out_dir`` keeps its previous content (datasets and model folders alike). Both paths must be
    resolved (no ``..``, no symlinks). A failure raises FactoryError and leaves ``out_dir`` as it was."""
    parent = out_dir.parent
    with writing(out_dir):
        if not os.path.lexists(out_dir):
            os.rename(staging, out_dir)
            _fsync_dir(parent)
            return
        kill_point("swap")
        if _exchange(staging, out_dir):  # staging now holds the previous content
            _fsync_dir(parent)
            kill_point("swapped")
            remove_quietly(staging)
            return
        trash = parent / f".{out_dir.name}.old-{os.getpid()}"
        os.rename(out_dir, trash)
        kill_point("renamed")
        try:
            os.rename(staging, out_dir)
        except OSError:
            try:
                os.rename(trash, out_dir)
            except OSError as exc:
                raise FactoryError(f"{out_dir}: cannot put the previous content back ({os_reason(exc)}); "
                                   f"it is in {trash}") from None
            raise
        _fsync_dir(parent)
        kill_point("swapped")
    remove_quietly(trash)
