"""Stage ``report``: all metrics -> the results page (Markdown and HTML) and the plot data of accuracy
against the share of synthetic images (``report.fraction_pools``).

    python stages/report.py [--classifier DIR] [--contrastive DIR] [--evaluate FILE] [--bias FILE]
                            [--curate FILE] [--classifier-timings DIR] --markdown FILE --html FILE --plot FILE
                            --summary DIR --headline FILE [--sheet NAME=DIR ...] [--rejected DIR]
                            [--matched DIR ...] [--guidance FILE] [--dvclive DIR] [--timings DIR] [--params FILE]
                            [--cas-pool POOL] [--loop-page FILE] [--figures DIR]
    # dvc.yaml: python stages/report.py --classifier metrics/classifier --contrastive metrics/contrastive ...

The whole step is :func:`factory.measure.results.make_report` (``factory report`` calls it too). An input not
given leaves its table out (the photo pipeline has no contrastive or bias study); a random-weight generator or
scorer (``random_models``) puts a notice on the pages. ``--summary`` gets the compact metrics (a line per
pool, method, dataset: factory/measure/summary.py), ``--headline`` the few of them ``report.headline`` names,
the only DVC metrics file; the inputs are plain outputs of their stages. ``--html`` gets the visual report
(factory/measure/page.py: run metadata, contact sheets, rejected samples with their evidence, score
histograms, charts, every table), one self-contained file; ``--figures`` the README's pictures (PNG).
"""

from factory.config import load_params
from factory.core.stage import run_stage, stage_args
from factory.measure.results import make_report

INPUTS = {"classifier": "folder of the classifiers' metrics", "contrastive": "folder of the encoders' metrics",
          "evaluate": "the evaluation metrics", "bias": "the bias benchmark's metrics",
          "curate": "the curation report", "classifier-timings": "folder of the classifiers' timings"}
MANY = {"action": "append"}
PAGE = (("--sheet", "NAME=DIR: a contact sheet on the page (repeat; DIR may hold datasets)", MANY),
        ("--rejected", "the curation's rejected dataset"), ("--matched", "a dataset rejects may match (repeat)", MANY),
        ("--guidance", "plots/guidance.json"), ("--dvclive", "the classifiers' dvclive folder"),
        ("--timings", "the folder of the stages' timings"), ("--params", "the params file the page hashes"),
        ("--cas-pool", "the synthetic-only pool (confusion matrix, per-class bars)"),
        ("--loop-page", "the loops' page, linked if it exists"), ("--figures", "the folder of README figures to write"))


def main() -> None:
    args = stage_args(__doc__, *((f"--{name}", what, {"default": None}) for name, what in INPUTS.items()),
                      *((f"--{name}", f"the {name} file to write") for name in ("markdown", "html", "plot")),
                      ("--summary", "the folder of compact metrics to write (dvc metrics show metrics/summary)"),
                      ("--headline", "the headline metrics file to write (report.headline; dvc exp show)"),
                      *((name, what, {"default": None, **(extra[0] if extra else {})}) for name, what, *extra in PAGE))
    md = make_report(load_params(), markdown=args.markdown, html=args.html, plot=args.plot, summary=args.summary,
                     headline_file=args.headline, sheets=args.sheet or [], matched=args.matched or [],
                     cas_pool=args.cas_pool or "synthetic", params_file=args.params,
                     **{k.replace("-", "_"): getattr(args, k.replace("-", "_"))
                        for k in (*INPUTS, "rejected", "guidance", "dvclive", "timings", "loop-page", "figures")})
    print(md)


if __name__ == "__main__":
    run_stage(main)
