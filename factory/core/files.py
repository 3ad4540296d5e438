"""File helpers: atomic writes, one JSON writer, checksums, staging folders that replace a folder whole.

Every output of the factory is written under a temporary name and renamed into place, so a crash at any
moment leaves either the previous state or the complete new file or folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

from factory.core.errors import FactoryError


def parse_json(raw: bytes | str, path: Path | str, *, error: type[FactoryError] = FactoryError) -> Any:
    """Parse JSON text read from ``path``; bad JSON raises ``error("<path>: not valid JSON (<reason>)")``."""
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
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
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file and a rename: never a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def write_json(path: Path | str, obj: Any) -> None:
    """A metrics or report file: indented, sorted JSON, written atomically (parents created)."""
    atomic_write_bytes(Path(path), (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode())


def staging_dir(out_dir: Path) -> Path:
    """Where a dataset is assembled before it is moved to ``out_dir`` (hidden, next to it)."""
    return out_dir.parent / f".{out_dir.name}.partial"


def replace_dir(staging: Path, out_dir: Path) -> None:
    """Move the complete folder ``staging`` to ``out_dir``, replacing what was there: until the final
    rename, ``out_dir`` keeps its previous content (datasets and model folders alike)."""
    trash = None
    if out_dir.exists():
        trash = out_dir.parent / f".{out_dir.name}.old-{os.getpid()}"
        os.replace(out_dir, trash)
    os.replace(staging, out_dir)
    _fsync_dir(out_dir.parent)
    if trash is not None:
        shutil.rmtree(trash, ignore_errors=True)
