"""The self-consuming loops' visual page (``reports/loop.html``), built from the same blocks as the main
report (:mod:`factory.measure.page`): the loop metrics against generation (one line per run, 95% intervals
as error bars), a contact sheet per run and generation (``data/loop/<run>/g<k>``) and every table of
``reports/loop.md``. Section ids: ``charts``, ``sheets``, ``tables``. One self-contained file."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from factory.core.shards import INDEX_NAME
from factory.measure import charts
from factory.measure.page import chart, document, esc, note, sheet_section, slug
from factory.measure.report import html_body, results_block

METRICS = {"fd": ("FD to real test (reference CNN features)", False), "kid": ("KID", False),
           "precision": ("precision", True), "recall": ("recall", True),
           "recognition": ("recognition rate", True), "cas": ("CAS (real-test top-1)", True)}
SECTIONS = {"charts": "Metrics against generation", "sheets": "Contact sheets", "tables": "Tables"}


def generation_dirs(root: Path | str, run: str) -> list[tuple[int, Path]]:
    """``(k, data/loop/<run>/g<k>)`` for every generation of ``run`` that holds a dataset (an inactive
    generation, past ``loop.generations``, holds none), by ``k``."""
    base = Path(root) / run
    if not base.is_dir():
        return []
    found = [(int(p.name[1:]), p) for p in base.iterdir()
             if p.name[:1] == "g" and p.name[1:].isdigit() and (p / INDEX_NAME).is_file()]
    return sorted(found)


def metric_chart(metric: str, runs: Mapping[str, Mapping[str, Any] | None]) -> str:
    label, percent = METRICS[metric]
    series = {run: [(g["generation"], g[metric], g.get(f"{metric}_ci95")) for g in m.get("generations") or []
                    if g.get("active", True) and isinstance(g.get(metric), (int, float))]
              for run, m in runs.items() if m}
    gens = sorted({p[0] for v in series.values() for p in v})
    fig = charts.lines(series, xlabel="generation", ylabel=label, title=f"{label} by generation",
                       percent=percent, xticks=gens or None)
    return chart(fig, f"chart-{slug(metric)}", f"{label}, one line per run; bars: 95% intervals.",
                 f"{label}: no run has it")


def build_loop_page(runs: Mapping[str, Mapping[str, Any] | None], markdown: str, data_root: Path | str,
                    per_class: int = 6, cell: int = 32, seed: int = 0) -> str:
    """The page: ``runs`` is ``{run: metrics/loop/<run>.json or None}``; generations' datasets are read
    from ``data_root/<run>/g<k>``."""
    charts_html = "".join(metric_chart(m, runs) for m in METRICS)
    sheets_html = []
    for run in runs:
        gens = generation_dirs(data_root, run)
        sheets_html.append(f"<h3>{esc(run)}</h3>")
        if not gens:
            sheets_html.append(note(f"{run}: no generation's dataset under {Path(data_root) / run}"))
        for k, path in gens:
            sheets_html.append(sheet_section(f"{run} g{k}", path, per_class, cell, seed)[0])
    missing = [r for r, m in runs.items() if not m]
    head = note(f"no metrics for {', '.join(missing)} (metrics/loop/<run>.json not there)") if missing else ""
    sections = {"charts": (SECTIONS["charts"], head + charts_html),
                "sheets": (SECTIONS["sheets"], "".join(sheets_html)),
                "tables": (SECTIONS["tables"], html_body(results_block(markdown)))}
    return document("Self-consuming loops", sections)

