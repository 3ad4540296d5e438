"""The report step, whole: a run's metrics files -> ``results.md``, the visual page (``index.html``, with the
README figures), the plot data of accuracy against the synthetic share, the compact metrics and the headline.

What ``stages/report.py`` and ``factory report`` call, so the two write the same files from the same inputs.
An input not given leaves its table or section out; an output not given is not written. When the generator
(``generate.model``) or the scorer (``curate.scorer_checkpoint``) holds random weights (a
``random_weights.json`` marker, written by the ``random_models`` stage), the pages open with a notice that
their numbers test the pipeline and are not results.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

from factory.config import Params
from factory.core.files import atomic_write_bytes, write_json
from factory.core.modelfolder import is_random_weights
from factory.measure.page import write_report
from factory.measure.report import fraction_rows, load_metrics, render
from factory.measure.summary import headline, summary_files, write_summary

PathLike = Path | str | None


def random_weight_models(params: Params) -> list[str]:
    """The model folders of ``params`` (generator, scorer) that hold random-weight stand-ins."""
    return [m for m in (params.generate.model, params.curate.scorer_checkpoint) if m and is_random_weights(m)]


def results_markdown(metrics: dict[str, Any], random: Sequence[str] = ()) -> str:
    """``results.md`` of ``metrics`` (:func:`factory.measure.report.load_metrics`), with the random-weights
    notice under its title when ``random`` names a model folder."""
    md = render(metrics)
    if random:
        head, _, body = md.partition("\n\n")
        md = head + "\n\n" + (f"> **Random weights.** {' and '.join(random)} hold random-weight stand-in models (the "
              f"`random_models` stage): every number below tests the pipeline end to end and is not a result. "
              f"Point `generate.model` and `curate.scorer_checkpoint` at real weights for results.\n\n") + body
    return md


def make_report(params: Params, *, pools: Sequence[str] | None = None, contrastive_pools: Sequence[str] | None = None,
                classifier: PathLike = None, contrastive: PathLike = None, evaluate: PathLike = None,
                bias: PathLike = None, curate: PathLike = None, classifier_timings: PathLike = None,
                markdown: PathLike = None, html: PathLike = None, plot: PathLike = None, summary: PathLike = None,
                headline_file: PathLike = None, sheets: Sequence[str] = (), rejected: PathLike = None,
                matched: Sequence[Path | str] = (), guidance: PathLike = None, dvclive: PathLike = None,
                timings: PathLike = None, params_file: PathLike = None, cas_pool: str = "synthetic",
                loop_page: PathLike = None, figures: PathLike = None,
                progress: Callable[[str], None] | None = None) -> str:
    """Write the report's outputs that are given; returns the Markdown. ``pools`` and ``contrastive_pools``
    default to ``params``' (``pools``, ``contrastive.pools``); ``sheets`` are ``NAME=DIR`` (a folder of datasets
    gives one sheet each); ``progress`` is called with each output's path once it is written."""
    done = progress or (lambda path: None)
    metrics = load_metrics(list(params.pools) if pools is None else list(pools),
                           list(params.contrastive.pools) if contrastive_pools is None else list(contrastive_pools),
                           baselines=params.report.baselines, classifier=classifier, contrastive=contrastive,
                           evaluate=evaluate, bias=bias, curate=curate, classifier_timings=classifier_timings)
    md = results_markdown(metrics, random_weight_models(params))
    if markdown is not None:
        atomic_write_bytes(Path(markdown), md.encode())
        done(str(markdown))
    if html is not None:
        write_report(metrics, md, html, sheets=sheets, rejected=rejected, matched=matched, guidance=guidance,
                     dvclive=dvclive, timings=timings, params=params_file,
                     fraction_pools=params.report.fraction_pools, cas_pool=cas_pool, loop_page=loop_page,
                     figures=figures, seed=params.base.seed)
        done(str(html))
    if plot is not None:
        write_json(plot, fraction_rows(metrics["classifier"], params.report.fraction_pools))
        done(str(plot))
    files = summary_files(metrics)
    if summary is not None:
        write_summary(summary, files)
        done(str(summary))
    if headline_file is not None:
        write_json(headline_file, headline(files, params.report.headline))
        done(str(headline_file))
    return md
