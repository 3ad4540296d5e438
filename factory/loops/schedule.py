"""The schedule of the loops: one small JSON file per run and generation, the only input a generation stage
reads its settings from.

``loop/dvc.yaml`` declares a stage for every run and every generation up to ``loop.max_generations``; a
stage past ``loop.generations`` does no work. What makes that cheap to change is this file: an active
generation's entry holds every setting that shapes it (the run, the loop's shared settings and the sections
of params.yaml it uses) and an inactive one holds only that it is inactive, so ``dvc exp run -S
loop.generations=8`` changes the entries of generations 6-8 alone, and DVC reruns those stages and no
finished one. A changed training budget changes every active entry, and with it every generation.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from factory.config import Params
from factory.core.errors import FactoryError
from factory.core.files import atomic_write_bytes, dumps_json, read_json

SCHEDULE_SCHEMA = "factory.loop-schedule/1"


def entry_name(run: str, k: int) -> str:
    return f"{run}-g{k}.json"


def entries(params: Params) -> dict[str, dict[str, Any]]:
    """Every schedule entry (file name -> content) of ``params``: all runs, generations 1..max_generations."""
    lp = params.loop
    shared = lp.model_dump(mode="json", exclude={"generations", "max_generations", "runs"})
    out = {}
    for run, spec in lp.runs.items():
        for k in range(1, lp.max_generations + 1):
            entry: dict[str, Any] = {"schema": SCHEDULE_SCHEMA, "run": run, "generation": k,
                                     "active": k <= lp.generations}
            if entry["active"]:
                entry["spec"] = spec.model_dump(mode="json")
                entry["loop"] = shared
                entry["train_generator"] = params.train_generator.model_dump(mode="json")
                entry["classifier"] = params.classifier.model_dump(mode="json")
            out[entry_name(run, k)] = entry
    return out


def write_schedule(params: Params, out_dir: Path | str) -> list[str]:
    """Write every entry into ``out_dir`` (a file whose content is unchanged keeps its bytes); returns the
    names of the active ones."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    active = []
    wanted = entries(params)
    for stale in out_dir.glob("*.json"):
        if stale.name not in wanted:
            stale.unlink()
    for name, entry in wanted.items():
        atomic_write_bytes(out_dir / name, dumps_json(entry))
        if entry["active"]:
            active.append(name)
    return active


def read_entry(schedule_dir: Path | str, run: str, k: int) -> dict[str, Any]:
    """The entry of ``run`` generation ``k`` (a missing one names the stage that writes it)."""
    path = Path(schedule_dir) / entry_name(run, k)
    if not path.is_file():
        raise FactoryError(f"{path}: no schedule entry for run {run!r} generation {k}; run the loop_schedule "
                           "stage (dvc repro loop/dvc.yaml), and `factory loop stages` after adding a run")
    entry = read_json(path, what="loop schedule entry")
    if not isinstance(entry, dict) or entry.get("schema") != SCHEDULE_SCHEMA:
        raise FactoryError(f"{path}: not a loop schedule entry (schema {SCHEDULE_SCHEMA!r})")
    return entry
