"""``factory report``: a run's metrics files -> the results page (Markdown and the visual HTML report), the
README figures, the compact metrics and the headline; the dvc.yaml stage ``report`` without DVC
(:func:`factory.measure.results.make_report`, the call the stage makes)."""

from __future__ import annotations

from pathlib import Path

import click

from factory.cli.common import echo, echo_json, escape
from factory.cli.pipeline import claim_files, counter
from factory.core.text import plural

P = click.Path(path_type=Path)


def _stems(folder: Path | None) -> list[str]:
    return sorted(p.stem for p in folder.glob("*.json")) if folder is not None and folder.is_dir() else []


@click.command("report")
@click.option("--config", "config_file", type=P, default=None,
              help="The params.yaml of the run: its pools, contrastive.pools and report sections (and the page shows "
                   "its sha256) [default: the library's defaults; the pools are the files in --classifier].")
@click.option("--classifier", type=P, default=None, help="The folder of the classifiers' metrics (<pool>.json).")
@click.option("--contrastive", type=P, default=None, help="The folder of the encoders' metrics (<pool>.json).")
@click.option("--evaluate", type=P, default=None, help="The evaluation metrics (factory evaluate --out).")
@click.option("--bias", type=P, default=None, help="The bias benchmark's metrics.")
@click.option("--curate", type=P, default=None, help="The curation report (factory curate --report).")
@click.option("--classifier-timings", type=P, default=None, help="The folder of the classifiers' timings.")
@click.option("--sheet", "sheets", multiple=True, metavar="NAME=DIR",
              help="A contact sheet on the page: a dataset, or a folder of datasets (one sheet each). Repeatable.")
@click.option("--rejected", type=P, default=None,
              help="The curation's rejected dataset: rejects by reason, with evidence.")
@click.option("--matched", multiple=True, type=P,
              help="A dataset a reject may match (real test, real train): its image is shown beside. Repeatable.")
@click.option("--guidance", type=P, default=None, help="The guidance trade-off rows (factory evaluate --plot).")
@click.option("--dvclive", type=P, default=None, help="The classifiers' dvclive folder (training curves).")
@click.option("--timings", type=P, default=None, help="A folder of stage timings (*.json) for the run metadata.")
@click.option("--cas-pool", default="synthetic", show_default=True,
              help="The synthetic-only pool: its confusion matrix and per-class bars.")
@click.option("--loop-page", type=P, default=None, help="The loops' page (reports/loop.html), linked if it exists.")
@click.option("--html", type=P, default=None, help="The visual report to write (one self-contained file).")
@click.option("--markdown", type=P, default=None, help="The results tables to write (Markdown).")
@click.option("--figures", type=P, default=None, help="A folder to write the README figures (PNG) into.")
@click.option("--plot", type=P, default=None, help="The accuracy-against-synthetic-share rows to write (JSON).")
@click.option("--summary", type=P, default=None, help="A folder to write the compact metrics into.")
@click.option("--headline", type=P, default=None, help="The headline metrics file to write (report.headline).")
@click.option("--json", "as_json", is_flag=True, help="Print what was written as JSON.")
def report_cmd(config_file: Path | None, classifier: Path | None, contrastive: Path | None, evaluate: Path | None,
               bias: Path | None, curate: Path | None, classifier_timings: Path | None, sheets: tuple[str, ...],
               rejected: Path | None, matched: tuple[Path, ...], guidance: Path | None, dvclive: Path | None,
               timings: Path | None, cas_pool: str, loop_page: Path | None, html: Path | None,
               markdown: Path | None, figures: Path | None, plot: Path | None, summary: Path | None,
               headline: Path | None, as_json: bool) -> None:
    """Write the results page of a run from its metrics files: tables (Markdown), the visual report (HTML:
    run metadata, contact sheets, rejected samples with their evidence, score histograms, charts), the
    README figures, the compact metrics and the headline. Nothing is recomputed; an input not given leaves
    its section out.

    The dvc.yaml stage report, without DVC.

    \b
    Example:
      factory report --config params.yaml --classifier metrics/classifier --evaluate metrics/evaluate.json \\
        --curate reports/curate.json --sheet curated=data/synthetic/curated \\
        --rejected data/synthetic/rejected --matched data/real/test --html reports/index.html
    """
    from factory.config import Params, load_params
    from factory.measure.results import make_report

    outputs = {"markdown": markdown, "html": html, "plot": plot, "headline": headline}
    if html is None and markdown is None:
        raise click.UsageError("nothing to write: give --html and/or --markdown")
    params = load_params(config_file) if config_file is not None else Params()
    pools = None if config_file is not None else _stems(classifier)
    contrastive_pools = None if config_file is not None else _stems(contrastive)
    inputs = [classifier, contrastive, evaluate, bias, curate, classifier_timings, rejected, guidance, dvclive,
              timings, config_file, *matched, *(s.partition("=")[2] for s in sheets)]
    claim_files(list(outputs.values()), inputs=inputs, folders=[figures, summary])
    written: list[str] = []
    with counter("report", sum(o is not None for o in (*outputs.values(), summary)), "file") as bar:
        def done(path: str) -> None:
            written.append(path)
            bar.update(1)

        make_report(params, pools=pools, contrastive_pools=contrastive_pools, classifier=classifier,
                    contrastive=contrastive, evaluate=evaluate, bias=bias, curate=curate,
                    classifier_timings=classifier_timings, markdown=markdown, html=html, plot=plot, summary=summary,
                    headline_file=headline, sheets=sheets, rejected=rejected, matched=matched, guidance=guidance,
                    dvclive=dvclive, timings=timings, params_file=config_file, cas_pool=cas_pool,
                    loop_page=loop_page, figures=figures, progress=done)
    figs = sorted(str(p) for p in figures.glob("*.png")) if figures is not None and figures.is_dir() else []
    if as_json:
        echo_json({"written": written, "figures": figs})
        return
    for path in written:
        echo(f"wrote {escape(path)}")
    if figs:
        echo(f"wrote {plural(len(figs), 'figure')} into {escape(figures)}")
