"""What a report was made from: the code's git revision (and whether the tree had changes), the params file's
hash, the date, the machine, and how long each stage took (``reports/timings/**.json``)."""

from __future__ import annotations

import datetime as _dt
import hashlib
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

from factory import __version__
from factory.core.files import read_json


def _git(root: Path, *args: str) -> str | None:
    try:
        done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


CODE_SUFFIXES = (".py", ".yaml", ".yml", ".toml", ".cfg", ".txt", ".json")


def is_code(path: str) -> bool:
    """Whether a changed tracked file is code or configuration (what decides the results), not a run output:
    ``dvc.lock`` files and what lies under ``metrics/``, ``reports/``, ``plots/``, ``dvclive/`` or ``docs/``
    (at any depth: the photo pipeline's too) are outputs."""
    parts = Path(path).parts
    if Path(path).name == "dvc.lock" or {"metrics", "reports", "plots", "dvclive", "docs"} & set(parts[:-1]):
        return False
    return Path(path).suffix in CODE_SUFFIXES or Path(path).name == "Makefile"


def git_state(root: Path | str = ".") -> dict[str, Any]:
    """``{"revision": <sha> or None, "dirty": bool or None, "changed": [paths]}``: None where ``root`` is not in a
    git work tree (e.g. an exported copy). Dirty: tracked code or configuration files (:func:`is_code`) differ
    from the revision; the run's own outputs, which a run rewrites before its report, and untracked files do
    not count."""
    root = Path(root)
    revision = _git(root, "rev-parse", "HEAD")
    status = _git(root, "status", "--porcelain", "--untracked-files=no") if revision else None
    if status is None:
        return {"revision": revision, "dirty": None, "changed": []}
    changed = sorted(p for line in status.splitlines() if (p := line[3:].split(" -> ")[-1].strip('"')) and is_code(p))
    return {"revision": revision, "dirty": bool(changed), "changed": changed}


def file_hash(path: Path | str | None) -> str | None:
    """The sha256 of a file (the params file), None when no file is given or it is not there."""
    if path is None or not Path(path).is_file():
        return None
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def stage_timings(folder: Path | str | None) -> dict[str, float]:
    """``{stage: seconds}`` from every ``*.json`` under ``folder`` that has ``seconds`` (a stage of a
    ``foreach`` is named ``<folder>@<file>``: ``train_classifier@real``), sorted by name."""
    if folder is None or not Path(folder).is_dir():
        return {}
    root, out = Path(folder), {}
    for path in sorted(root.rglob("*.json")):
        data = read_json(path, what="timings file")
        if isinstance(data, dict) and isinstance(data.get("seconds"), (int, float)):
            rel = path.relative_to(root).with_suffix("")
            out["@".join(rel.parts)] = float(data["seconds"])
    return out


def machine() -> dict[str, Any]:
    """The platform, CPU count and library versions the report ran with."""
    import torch

    return {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
            "torch": torch.__version__, "cuda": torch.cuda.is_available(), "factory": __version__}


def run_info(root: Path | str = ".", params: Path | str | None = None,
             timings: Path | str | None = None) -> dict[str, Any]:
    """Everything the page's "run" section shows."""
    return {"git": git_state(root), "params": str(params) if params else None, "params_sha256": file_hash(params),
            "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
            "machine": machine(), "timings": stage_timings(timings)}
