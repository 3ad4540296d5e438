"""Where each generation of a loop run lives, and the idle outputs of a generation past ``loop.generations``
(light imports: an idle stage costs no torch import)."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from factory.core.errors import FactoryError
from factory.core.files import atomic_write_bytes, dumps_json, write_json

INACTIVE = "inactive.json"


@dataclass(frozen=True)
class GenerationPaths:
    """Where generation ``k`` of ``run`` lives, relative to the repository root ``root``."""

    run: str
    k: int
    root: Path = Path(".")

    @property
    def dataset(self) -> Path:
        return self.root / "data" / "loop" / self.run / f"g{self.k}"

    @property
    def pool(self) -> Path:
        return self.root / "data" / "loop" / self.run / f"g{self.k}.pool.json"

    @property
    def side(self) -> Path:
        return self.root / "data" / "loop" / self.run / f"g{self.k}.side"

    @property
    def model(self) -> Path:
        return self.root / "models" / "loop" / self.run / f"g{self.k}"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics" / "loop" / self.run / f"g{self.k}.json"

    def of(self, k: int) -> "GenerationPaths":
        return GenerationPaths(self.run, k, self.root)

    def training_set(self, corrected: bool) -> Path:
        """What later generations train on: the corrected copy when the run corrects, else the samples."""
        return self.side / "corrected" if corrected else self.dataset


def write_inactive(run: str, k: int, generations: int, root: Path = Path(".")) -> None:
    """The outputs of a generation past ``loop.generations``: a note in each (DVC needs them to exist)."""
    paths = GenerationPaths(run, k, root)
    note = {"run": run, "generation": k, "active": False,
            "why": f"loop.generations is {generations}: this generation is not part of the loop "
                   f"(dvc exp run -S loop.generations={k} makes it)"}
    for d in (paths.dataset, paths.side, paths.model):
        if d.exists():
            shutil.rmtree(d)
        d.mkdir(parents=True)
        atomic_write_bytes(d / INACTIVE, dumps_json(note))
    atomic_write_bytes(paths.pool, dumps_json(note))
    write_json(paths.metrics, note)


def check_previous(run: str, k: int, root: Path = Path(".")) -> None:
    """Generation ``k`` needs generation k-1 made (not inactive): one line otherwise."""
    prev = GenerationPaths(run, k - 1, root)
    if (prev.dataset / INACTIVE).exists() or not (prev.dataset / "index.json").exists():
        raise FactoryError(f"{prev.dataset}: generation {k - 1} of run {run!r} is not made; generations run in "
                           "order (dvc repro loop/dvc.yaml)")
