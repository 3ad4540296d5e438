"""Stage ``report``: all metrics -> the results page (Markdown and HTML) and the plot data of accuracy
against the share of synthetic images (``report.fraction_pools``).

    python stages/report.py [--classifier DIR] [--contrastive DIR] [--evaluate FILE] [--bias FILE]
                            [--curate FILE] [--classifier-timings DIR] --markdown FILE --html FILE --plot FILE
                            --summary DIR
    # dvc.yaml: python stages/report.py --classifier metrics/classifier --contrastive metrics/contrastive ...

An input not given leaves its table out (the photo pipeline has no contrastive or bias study). When the
generator (``generate.model``) or the scorer (``curate.scorer_checkpoint``) holds random weights (a
``random_weights.json`` marker, written by the ``random_models`` stage), the page opens with a notice that
its numbers test the pipeline and are not results. ``--summary`` gets the compact DVC metrics (a line per
pool, method, dataset: factory/measure/summary.py); the inputs are plain outputs of their stages.
"""

from pathlib import Path

from factory.config import load_params
from factory.core.files import atomic_write_bytes, write_json
from factory.core.modelfolder import is_random_weights
from factory.core.stage import run_stage, stage_args
from factory.measure.report import fraction_rows, load_metrics, render, to_html
from factory.measure.summary import summary_files, write_summary

INPUTS = {"classifier": "folder of the classifiers' metrics", "contrastive": "folder of the encoders' metrics",
          "evaluate": "the evaluation metrics", "bias": "the bias benchmark's metrics",
          "curate": "the curation report", "classifier-timings": "folder of the classifiers' timings"}


def main() -> None:
    args = stage_args(__doc__, *((f"--{name}", what, {"default": None}) for name, what in INPUTS.items()),
                      *((f"--{name}", f"the {name} file to write") for name in ("markdown", "html", "plot")),
                      ("--summary", "the folder of compact metrics to write (dvc metrics show)"))
    params = load_params()
    metrics = load_metrics(list(params.pools), params.contrastive.pools, baselines=params.report.baselines,
                           **{k.replace("-", "_"): getattr(args, k.replace("-", "_")) for k in INPUTS})
    random = [m for m in (params.generate.model, params.curate.scorer_checkpoint) if m and is_random_weights(m)]
    md = render(metrics)
    if random:
        head, _, body = md.partition("\n\n")
        md = head + "\n\n" + (f"> **Random weights.** {' and '.join(random)} hold random-weight stand-in models (the "
              f"`random_models` stage): every number below tests the pipeline end to end and is not a result. "
              f"Point `generate.model` and `curate.scorer_checkpoint` at real weights for results.\n\n") + body
    atomic_write_bytes(Path(args.markdown), md.encode())
    atomic_write_bytes(Path(args.html), to_html(md).encode())
    write_json(args.plot, fraction_rows(metrics["classifier"], params.report.fraction_pools))
    write_summary(args.summary, summary_files(metrics))
    print(md)


if __name__ == "__main__":
    run_stage(main)
