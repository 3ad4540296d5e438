"""Stage ``report``: all metrics -> the results page (Markdown and HTML) and the plot data of accuracy
against the share of synthetic images (``report.fraction_pools``).

    python stages/report.py --classifier DIR --contrastive DIR --evaluate FILE --bias FILE --curate FILE
                            --classifier-timings DIR --markdown FILE --html FILE --plot FILE
    # dvc.yaml: python stages/report.py --classifier metrics/classifier --contrastive metrics/contrastive ...
"""

from pathlib import Path

from factory.config import load_params
from factory.core.files import atomic_write_bytes, write_json
from factory.core.stage import run_stage, stage_args
from factory.measure.report import fraction_rows, load_metrics, render, to_html

INPUTS = {"classifier": "folder of the classifiers' metrics", "contrastive": "folder of the encoders' metrics",
          "evaluate": "the evaluation metrics", "bias": "the bias benchmark's metrics",
          "curate": "the curation report", "classifier-timings": "folder of the classifiers' timings"}


def main() -> None:
    args = stage_args(__doc__, *((f"--{name}", what) for name, what in INPUTS.items()),
                      *((f"--{name}", f"the {name} file to write") for name in ("markdown", "html", "plot")))
    params = load_params()
    metrics = load_metrics(list(params.pools), params.contrastive.pools, baselines=params.report.baselines,
                           **{k.replace("-", "_"): getattr(args, k.replace("-", "_")) for k in INPUTS})
    md = render(metrics)
    atomic_write_bytes(Path(args.markdown), md.encode())
    atomic_write_bytes(Path(args.html), to_html(md).encode())
    write_json(args.plot, fraction_rows(metrics["classifier"], params.report.fraction_pools))
    print(md)


if __name__ == "__main__":
    run_stage(main)
