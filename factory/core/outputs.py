"""Claiming outputs: what a command may write, and one writer at a time per output folder.

Every command that writes checks its outputs before it does any work:

- paths are resolved first (``..`` and symlinks), so ``ds/../ds`` and a link to ``ds`` are ``ds``;
- an output must not be, contain, or lie inside any input of the same command, nor overlap another
  output of it (``filter DS DS``, ``--rejected`` equal to the output, ``dedup --report DS/index.json``);
- an output folder must not be the current directory or one of its parents;
- an existing, non-empty output folder is replaced only if it is one of ours, as the caller's
  ``replaceable`` check says (a factory dataset checked by its index and shards, a model folder checked
  by its config): never because a file happens to be called ``index.json``.

- an output folder must not lie inside a factory dataset or model folder, nor inside a folder another
  factory process is writing (its lock is held), so nested writers never delete each other's work.

A writer holds ``<parent>/.<name>.lock`` (an exclusive ``flock``) from its claim to its publish, so a
second writer of the same folder fails at once with one line. Under the lock it first repairs what a
crash may have left, touching only what is recognisably ours: a ``.<name>.old-<pid>`` that passes the
caller's ``replaceable`` check is put back if ``<name>`` is missing (see
:func:`factory.core.files.replace_dir`) and removed otherwise; a stale ``.<name>.partial`` holding only
our writers' files is the caller's to discard or resume. Anything else under those names is refused
with one line and left alone.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterable, Iterator

from factory.core.errors import FactoryError
from factory.core.files import os_reason, remove_quietly, replace_dir, staging_dir, trash_dirs, writing
from factory.core.integrity import DATASET_SCHEMA, INDEX_NAME, load_json, read_limited

log = logging.getLogger(__name__)

# What is wrong with an existing, non-empty folder that keeps it from being replaced (None: replaceable).
Replaceable = Callable[[Path], "str | None"]

PathLike = Path | str


def resolved(path: PathLike) -> Path:
    """``path`` made absolute with ``..`` and symlinks resolved (it need not exist)."""
    return Path(path).expanduser().resolve()


def _relation(out: Path, other: Path) -> str | None:
    if out == other:
        return "is"
    if other in out.parents:
        return "lies inside"
    if out in other.parents:
        return "contains"
    return None


def check_apart(out: PathLike, *, inputs: Iterable[PathLike | None] = (),
                others: Iterable[PathLike | None] = ()) -> Path:
    """``out`` resolved, after checking that it neither is, contains nor lies inside any of ``inputs``
    and does not overlap any of ``others`` (the other outputs of the same command)."""
    path = resolved(out)
    for i in inputs:
        if i is None:
            continue
        rel = _relation(path, resolved(i))
        if rel is not None:
            raise FactoryError(f"{out}: {rel} the input {i}; an output must never be, contain or lie inside "
                               f"an input")
    for o in others:
        if o is None:
            continue
        rel = _relation(path, resolved(o))
        if rel is not None:
            raise FactoryError(f"{out}: {rel} another output of this command ({o}); outputs must be separate")
    return path


def lock_path(out: Path) -> Path:
    return out.parent / f".{out.name}.lock"


def _lock_held(lock: Path) -> bool:
    """Whether another open file holds a ``flock`` on ``lock`` (which is not created if absent)."""
    try:
        fd = os.open(lock, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:  # absent (nobody writes there) or unreadable (cannot tell: the writer's own lock decides)
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        os.close(fd)  # closing releases a shared lock we got
    return False


_PARTIAL_NAME = re.compile(r"\.(.+)\.partial")


def _check_not_being_written(path: Path, shown: PathLike) -> None:
    """Refuse ``path`` if one of its ancestors (or the folder an ancestor stages) is locked by a writer."""
    for a in path.parents:
        if not a.name:
            continue
        names = [a]
        staged = _PARTIAL_NAME.fullmatch(a.name)
        if staged:
            names.append(a.parent / staged.group(1))
        for folder in names:
            if _lock_held(lock_path(folder)):
                raise FactoryError(f"{shown}: lies inside {folder}, which another factory process is writing")


def _factory_folder_kind(folder: Path) -> str | None:
    """"a factory dataset" or "a factory model folder" if ``folder`` looks like one (cheap: an
    ``index.json`` with the dataset schema, or weights next to a JSON config with a ``factory.`` schema)."""
    def schema(p: Path) -> object:
        try:
            if p.stat().st_size > 1 << 20:
                return None
            obj = json.loads(p.read_bytes())
        except (OSError, ValueError, RecursionError):
            return None
        return obj.get("schema") if isinstance(obj, dict) else None

    if schema(folder / INDEX_NAME) == DATASET_SCHEMA:
        return "a factory dataset"
    try:
        with os.scandir(folder) as it:
            names = [e.name for e in it if e.is_file()]
    except OSError:
        return None
    if any(n.endswith(".safetensors") for n in names):
        for n in names:
            s = schema(folder / n) if n.endswith(".json") and not n.startswith(".") else None
            if isinstance(s, str) and s.startswith("factory."):
                return "a factory model folder"
    return None


def _check_not_inside_ours(path: Path, shown: PathLike) -> None:
    for a in path.parents:
        kind = _factory_folder_kind(a) if a.name else None
        if kind is not None:
            raise FactoryError(f"{shown}: lies inside {a}, {kind}; write the output outside it")


class OutputLock:
    """An exclusive, non-blocking ``flock`` on ``<parent>/.<name>.lock`` for the resolved folder ``out``.

    The lock file is removed on release while still locked; a process that opened the old file before
    the removal notices (the path no longer names the inode it locked) and tries again on a fresh file.
    """

    def __init__(self, out: Path, shown: PathLike | None = None) -> None:
        self.out = out
        self.shown = shown if shown is not None else out
        self.path = lock_path(out)
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        with writing(f"{self.shown}: lock file {self.path}"):
            self.out.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(100):
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            except OSError as exc:
                raise FactoryError(f"{self.shown}: cannot create the lock file {self.path} "
                                   f"({os_reason(exc)})") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise FactoryError(f"{self.shown}: another factory process is writing it "
                                   f"(lock {self.path})") from None
            except OSError as exc:
                os.close(fd)
                raise FactoryError(f"{self.shown}: cannot lock {self.path} ({os_reason(exc)})") from None
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                self._fd = fd
                return
            os.close(fd)  # released and removed by its holder between our open and our lock: retry
        raise FactoryError(f"{self.shown}: cannot take the lock {self.path} (it keeps being replaced)")

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.unlink(self.path)
        except OSError as exc:
            log.warning("could not remove the lock file %s (%s)", self.path, os_reason(exc))
        finally:
            os.close(fd)


@contextmanager
def output_lock(path: PathLike) -> Iterator[Path]:
    """Hold the lock of the output folder ``path`` for the block; yields the lock file's path."""
    lock = OutputLock(resolved(path), path)
    lock.acquire()
    try:
        yield lock.path
    finally:
        lock.release()


def _ours(folder: Path, replaceable: Replaceable | None) -> bool:
    """Whether the leftover ``folder`` looks like a previous output of this kind (empty, or passing the
    caller's ``replaceable`` check)."""
    try:
        if not any(folder.iterdir()):
            return True
    except OSError:
        return False
    return replaceable is not None and replaceable(folder) is None


def recover(out: Path, shown: PathLike | None = None, replaceable: Replaceable | None = None) -> None:
    """Repair what a crash in the two-rename swap left (call with the lock held): the previous folder
    renamed aside with no ``out`` is put back; with ``out`` present, such a leftover is old data. Only a
    ``.<name>.old-<digits>`` that looks like ours (see :func:`_ours`) is touched; another is refused."""
    shown = shown if shown is not None else out
    trash = trash_dirs(out)
    if not trash:
        return
    strange = [t for t in trash if not _ours(t, replaceable)]
    if strange:
        raise FactoryError(f"{strange[0]}: not a previous version of {shown} left by an interrupted run; "
                           f"move it away")
    if os.path.lexists(out):
        for t in trash:
            log.info("removing %s, left by an interrupted replacement of %s", t, shown)
            remove_quietly(t)
        return
    if len(trash) > 1:
        raise FactoryError(f"{shown}: missing, and earlier versions of it lie in "
                           f"{', '.join(str(t) for t in trash)}; move the one to keep back to {out}")
    with writing(f"{shown}: restoring it from {trash[0]}"):
        os.rename(trash[0], out)
    log.info("%s: restored the previous content from %s (an earlier run was interrupted)", shown, trash[0])


_STAGED_NAME = re.compile(r"shard-\d{6,}\.tar|[^.][^/]*\.(json|safetensors)|\..+\.tmp(-\d+)?")


def staging_problem(staging: Path) -> str | None:
    """Why the existing folder ``staging`` is not a staging folder of our writers, or None. Ours hold only
    plain files they write: shards, ``index.json``, generate's ``run.json``, model-folder files (JSON and
    safetensors) and hidden temporary files."""
    if staging.is_symlink() or not staging.is_dir():
        return "is not a folder"
    try:
        entries = list(staging.iterdir())
    except OSError as exc:
        return f"cannot be read ({os_reason(exc)})"
    for p in entries:
        if not _STAGED_NAME.fullmatch(p.name) or p.is_symlink() or not p.is_file():
            return f"holds {p.name}"
    return None


def _check_staging(staging: Path) -> None:
    if not os.path.lexists(staging):
        return
    if staging_problem(staging) is not None:
        raise FactoryError(f"{staging}: not a factory staging folder; move it away")


_SHARD_NAME = re.compile(r"shard-\d{6,}\.tar")
_TEMP_NAME = re.compile(r"\.(shard-\d{6,}\.tar|index\.json)\.tmp(-\d+)?")


def dataset_problem(folder: Path) -> str | None:
    """What keeps the existing folder ``folder`` from being replaced as a factory dataset, or None.

    A factory dataset: ``index.json`` parses, has schema ``factory.dataset/1`` and a list of shards
    with plain ``shard-NNNNNN.tar`` names that all exist, and the folder holds nothing else but
    hidden temporary files of our writers. A stray ``index.json`` does not make a folder ours.
    """
    index_path = folder / INDEX_NAME
    if not index_path.is_file():
        return f"is not a factory dataset (no {INDEX_NAME})"
    try:
        index = load_json(read_limited(index_path), index_path)
    except FactoryError as exc:
        return f"is not a factory dataset ({INDEX_NAME} unreadable: {str(exc).removeprefix(f'{index_path}: ')})"
    if not isinstance(index, dict) or index.get("schema") != DATASET_SCHEMA:
        return f"is not a factory dataset ({INDEX_NAME} has no schema {DATASET_SCHEMA!r})"
    shards = index.get("shards")
    names = [s.get("name") for s in shards if isinstance(s, dict)] if isinstance(shards, list) else None
    if names is None or len(names) != len(shards) or not all(
            isinstance(n, str) and _SHARD_NAME.fullmatch(n) for n in names):
        return f"is not a factory dataset ({INDEX_NAME} does not list plain shard names)"
    missing = [n for n in names if not (folder / n).is_file()]
    if missing:
        return f"is not a complete factory dataset (shard {missing[0]} listed in {INDEX_NAME} is missing)"
    known = {INDEX_NAME, *names}
    extra = sorted(p.name for p in folder.iterdir() if p.name not in known and not _TEMP_NAME.fullmatch(p.name))
    if extra:
        return f"holds more than a factory dataset (it also holds {', '.join(extra[:3])}{', ...' * (len(extra) > 3)})"
    return None


def _check_existing(out: Path, shown: PathLike, overwrite: bool, replaceable: Replaceable | None) -> None:
    if os.path.lexists(out) and not out.is_dir():
        raise FactoryError(f"{shown}: exists and is not a directory")
    if not out.is_dir():
        return
    try:
        empty = not any(out.iterdir())
    except OSError as exc:
        raise FactoryError(f"{shown}: cannot read the folder ({os_reason(exc)})") from None
    if empty:
        return
    problem = replaceable(out) if replaceable is not None else "is not empty"
    if problem is not None:  # "what (detail)" -> "<out>: what; refusing to overwrite it (detail)"
        what, _, detail = problem.partition(" (")
        raise FactoryError(f"{shown}: {what}; refusing to overwrite it" + (f" ({detail}" if detail else ""))
    if not overwrite:
        raise FactoryError(f"{shown}: already exists and is not empty (pass --overwrite to replace it)")


def _check_dir_path(out: PathLike, inputs: Iterable[PathLike | None], others: Iterable[PathLike | None]) -> Path:
    path = check_apart(out, inputs=inputs, others=others)
    cwd = Path.cwd().resolve()
    if path == cwd or path in cwd.parents:
        raise FactoryError(f"{out}: is the current directory or one of its parents; "
                           f"write the output to a new folder instead")
    # Before the lock (whose taking creates the parent folders): never write inside one of our folders
    # or a folder being written. Checked again once our lock file exists, so that of two nested writers
    # starting together one always sees the other (the outer one sees our lock file in its folder).
    _check_not_inside_ours(path, out)
    _check_not_being_written(path, out)
    return path


def claim_output_dir(out: PathLike, *, inputs: Iterable[PathLike | None] = (), overwrite: bool = False,
                     others: Iterable[PathLike | None] = (), replaceable: Replaceable | None = None) -> Path:
    """Check, before any work, that the folder ``out`` may be written; returns it resolved.

    ``replaceable(folder)`` says what keeps an existing, non-empty folder from being replaced (None:
    nothing); without it only an absent or empty folder may be claimed. The check briefly takes the
    folder's lock, so a folder another process is writing fails here at once.
    """
    path = _check_dir_path(out, inputs, others)
    if not path.parent.is_dir():  # nothing there yet: nothing to check, and no folder made for a check
        return path
    lock = OutputLock(path, out)
    lock.acquire()
    try:
        _check_not_being_written(path, out)  # again under our lock: a writer of an ancestor then sees it
        recover(path, out, replaceable)
        _check_staging(staging_dir(path))
        _check_existing(path, out, overwrite, replaceable)
    finally:
        lock.release()
    return path


def claim_output_file(out: PathLike, *, inputs: Iterable[PathLike | None] = (),
                      others: Iterable[PathLike | None] = ()) -> Path:
    """Check, before any work, that the file ``out`` (a report, an image, a plan) may be written;
    returns it resolved. It must not be a folder nor overlap an input or another output."""
    path = check_apart(out, inputs=inputs, others=others)
    if path.is_dir():
        raise FactoryError(f"{out}: is a directory; give a file name")
    if os.path.lexists(path) and not path.is_file():  # a device, FIFO or socket: a rename would replace it
        raise FactoryError(f"{out}: exists and is not a regular file; refusing to replace it")
    if path.parent.exists() and not path.parent.is_dir():
        raise FactoryError(f"{out}: {path.parent} is not a directory")
    return path


class OutputDir:
    """An output folder held for writing: locked, checked, with a staging folder to fill.

    ``OutputDir(out, ...)`` resolves and checks ``out`` (as :func:`claim_output_dir`), takes its lock,
    repairs crash leftovers and prepares ``staging`` (fresh, or kept as it is with ``resume``).
    :meth:`publish` moves the staging folder into place and releases the lock; :meth:`abort` removes it
    (a resumable writer keeps it, with its finished work) and releases the lock. Use it as a context manager or call
    one of the two.
    """

    def __init__(self, out: PathLike, *, inputs: Iterable[PathLike | None] = (), overwrite: bool = False,
                 others: Iterable[PathLike | None] = (), replaceable: Replaceable | None = None,
                 resume: bool = False) -> None:
        self.shown = out
        self.path = _check_dir_path(out, inputs, others)
        self.staging = staging_dir(self.path)
        self.resume = resume
        self._lock = OutputLock(self.path, out)
        self._lock.acquire()
        try:
            _check_not_being_written(self.path, out)  # again under our lock (see _check_dir_path)
            recover(self.path, out, replaceable)
            _check_staging(self.staging)
            _check_existing(self.path, out, overwrite, replaceable)
            with writing(f"{out}: staging folder {self.staging}"):
                if self.staging.exists() and not resume:  # left by a crashed run: never a final output
                    remove_quietly(self.staging)
                self.staging.mkdir(exist_ok=resume)
        except BaseException:
            self._lock.release()
            raise

    @property
    def held(self) -> bool:
        return self._lock.held

    def publish(self) -> None:
        """Move the complete staging folder to the output, replacing what was there."""
        if not self.held:
            raise FactoryError(f"{self.shown}: not held for writing (already published or aborted)")
        try:
            replace_dir(self.staging, self.path)
        except BaseException:
            self.abort()
            raise
        self._lock.release()

    def abort(self, keep_staging: bool | None = None) -> None:
        """Give the output up: the previous content stays; the staging folder goes (unless kept: by
        default a resumable writer keeps it)."""
        if not self.held:
            return
        try:
            if not (self.resume if keep_staging is None else keep_staging):
                remove_quietly(self.staging)
        finally:
            self._lock.release()

    def __enter__(self) -> "OutputDir":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()
        elif self.held:
            self.publish()
