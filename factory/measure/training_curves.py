"""Training curves as the classifier stages log them with dvclive, read back for the report's chart.

Layout (``stages/train_classifier.py``): ``<root>/<pool>/plots/metrics/{train/loss,test/top1}.tsv`` hold
the mean over training seeds, ``.../seed<s>/{train/loss,test/top1}.tsv`` each seed; a ``.tsv`` has a header
line (``step`` and the metric) and one tab-separated row per logged step.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

from factory.core.errors import FactoryError

METRICS = {"train/loss": "train loss", "test/top1": "real-test top-1"}
Curve = tuple[list[float], list[float], list[float], list[float]]  # steps, mean, lowest seed, highest seed


def read_tsv(path: Path) -> tuple[list[float], list[float]]:
    """``(steps, values)`` of one dvclive ``.tsv``."""
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise FactoryError(f"{path}: cannot read ({exc.strerror or exc})") from None
    steps, values = [], []
    for n, line in enumerate(lines[1:], start=2):
        cells = line.split("\t")
        try:
            steps.append(float(cells[0]))
            values.append(float(cells[1]))
        except (IndexError, ValueError):
            raise FactoryError(f"{path}, line {n}: expected '<step>\\t<value>'; got {line[:60]!r}") from None
    return steps, values


def read_curves(root: Path | str, steps_of: Mapping[str, Sequence[float]] | None = None
                ) -> dict[str, dict[str, Curve]]:
    """``{metric label: {pool: (steps, mean, low, high)}}`` for every pool folder under ``root`` (sorted);
    the band is the lowest and highest seed at each step (the mean alone when no seed's curve is there).
    dvclive counts evaluations (0, 1, ...); ``steps_of[pool]`` (the training steps of the pool's metrics
    ``history``) replaces them when it has one per evaluation."""
    out: dict[str, dict[str, Curve]] = {label: {} for label in METRICS.values()}
    root = Path(root)
    if not root.is_dir():
        return {}
    for pool in sorted(p for p in root.iterdir() if p.is_dir()):
        base = pool / "plots" / "metrics"
        for metric, label in METRICS.items():
            mean_file = base / f"{metric}.tsv"
            if not mean_file.is_file():
                continue
            steps, mean = read_tsv(mean_file)
            known = list((steps_of or {}).get(pool.name) or [])
            steps = [float(x) for x in known] if len(known) == len(steps) else steps
            seeds = [read_tsv(f)[1] for f in sorted(base.glob(f"seed*/{metric}.tsv"))]
            seeds = [s for s in seeds if len(s) == len(mean)] or [mean]
            out[label][pool.name] = (steps, mean, [min(v) for v in zip(*seeds)], [max(v) for v in zip(*seeds)])
    return {k: v for k, v in out.items() if v}
