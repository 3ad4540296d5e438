"""The loops' results page (``reports/loop.md``): each run generation by generation, then the SIMS study.

Every number comes from the run's metrics files (``metrics/loop/<run>.json``, ``metrics/loop/sims_study.json``);
the text around them only says what each column is. A metric's interval overlapping the real floor's is
"within noise"; across generations the report compares the last generation with the first by their intervals.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from factory.core.stats import overlaps
from factory.measure.report import _fmt, _pct, _pct_ci, _with_ci, table


def _trend(first: Mapping[str, Any], last: Mapping[str, Any], metric: str) -> str:
    """``up``/``down`` from the first generation to the last when their intervals do not overlap, else
    ``within noise``."""
    a, b = first.get(metric), last.get(metric)
    if a is None or b is None:
        return "n/a"
    ca, cb = first.get(f"{metric}_ci95"), last.get(f"{metric}_ci95")
    if ca and cb and overlaps(ca, cb):
        return "within noise"
    return "up" if b > a else "down"


def run_section(name: str, summary: Mapping[str, Any]) -> list[str]:
    """One run: a row per generation."""
    rows = [r for r in summary["generations"] if r.get("active", True)]
    if not rows:
        return []
    spec = f"policy {summary.get('policy')}, sampler {summary.get('sampler')}" + (
        f", corrector {summary['corrector']}" if summary.get("corrector") else "")
    floor = rows[0].get("floor") or {}
    out = [f"### {name} ({spec})", ""]
    body = []
    for r in rows:
        pool = r.get("pool") or {}
        gens = ", ".join(f"g{g}: {n}" for g, n in (pool.get("generations") or {}).items())
        div = r.get("diversity") or {}
        body.append([r["generation"], f"{pool.get('samples', '')} ({gens})", _with_ci(r, "fd"), _with_ci(r, "kid"),
                     _fmt(r.get("precision")), _fmt(r.get("recall")), _pct(r.get("recognition")),
                     _pct_ci(r, "cas"), _fmt(div.get("mean_pairwise_distance")),
                     _pct(div.get("near_duplicate_rate")), _fmt((r.get("denoise_loss") or {}).get("mean"), 4)])
    out.append(table(["gen", "trained on (samples by generation)", "FD", "KID", "precision", "recall",
                      "recognition", "CAS [95% CI]", "diversity", "near-dup", "denoise loss"], body))
    first, last = rows[0], rows[-1]
    if len(rows) > 1:
        out += ["", f"From generation 1 to {last['generation']}: FD {_trend(first, last, 'fd')}, KID "
                f"{_trend(first, last, 'kid')}, CAS {_trend(_cas(first), _cas(last), 'cas')}; "
                f"real floor FD {_with_ci(floor, 'fd')}, real diversity "
                f"{_fmt((first.get('diversity') or {}).get('real_mean_pairwise_distance'))}."]
    return [*out, ""]


def _cas(row: Mapping[str, Any]) -> dict[str, Any]:
    return {"cas": row.get("cas"), "cas_ci95": row.get("cas_ci95")}


def study_section(study: Mapping[str, Any]) -> list[str]:
    """The SIMS study: a row per (w, budget), against real val."""
    out = ["## SIMS negative guidance at generation 1 (against real VAL)", "",
           f"n = {study['n']} images per side, {study['draws']} draws, {study['bootstrap']} bootstrap resamples, "
           f"in the {study['encoder']} space. Floor: {study['floor']['label']}, FD "
           f"{_with_ci(study['floor'], 'fd')}.", ""]
    body = [[_fmt(r["w"], 1), r["steps"] if r["steps"] is not None else "base", _with_ci(r, "fd"),
             _with_ci(r, "kid"), _fmt(r.get("precision")), _fmt(r.get("recall")), _pct(r.get("recognition")),
             ", ".join(f"{m} {v}" for m, v in r["vs_w0"].items()) if r["steps"] is not None else ""]
            for r in study["rows"]]
    out.append(table(["w", "auxiliary steps B", "FD", "KID", "precision", "recall", "recognition",
                      "against w = 0"], body))
    best = study["best_fd"]
    out += ["", f"Lowest FD: w = {_fmt(best['w'], 1)} at B = {best['steps']} "
            f"({', '.join(f'{m} {v}' for m, v in best['vs_w0'].items())} against w = 0).", ""]
    return out


def render_loop(runs: Mapping[str, Mapping[str, Any] | None], study: Mapping[str, Any] | None,
                order: Sequence[str] | None = None) -> str:
    """The Markdown page: every run (in ``order``), then the study."""
    out = ["# Self-consuming loops", "",
           "Per generation, against the real test split in the reference CNN's space (trained on real train "
           "only): FD and KID with bootstrap 95% intervals, precision and recall, the recognition rate, CAS "
           "(mean of classifier seeds, 95% interval), diversity (mean feature distance of random pairs) and the "
           "share of near-duplicates (perceptual hash), and the generator's denoising loss on real test images "
           "at fixed timesteps and noises.", ""]
    for name in order or list(runs):
        summary = runs.get(name)
        if summary:
            out += run_section(name, summary)
    if study:
        out += study_section(study)
    return "\n".join(out)
