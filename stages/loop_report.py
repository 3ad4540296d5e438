"""Stage ``loop_report``: every run's metrics and the SIMS study -> reports/loop.md, and the compact DVC
metrics (a line per run, factory/measure/summary.py) and the headline (the DVC metrics: fd per run).

    python stages/loop_report.py METRICS_DIR --markdown FILE --summary DIR --headline FILE [--html FILE --data DIR]
    # loop/dvc.yaml: python stages/loop_report.py metrics/loop --markdown reports/loop.md --summary metrics/loop/summary
    #   --headline metrics/loop/headline.json --html reports/loop.html --data data/loop

``--html`` gets the visual page (factory/measure/loop_page.py): the metrics against generation, one line per
run, and a contact sheet per run and generation (``--data``/<run>/g<k>), every table of the Markdown page.
"""

import json
from pathlib import Path

from factory.config import load_params
from factory.core.files import atomic_write_bytes, write_json
from factory.core.stage import run_stage, stage_args
from factory.measure.loop_page import build_loop_page
from factory.measure.loop_report import render_loop
from factory.measure.summary import loop_headline, loop_row, write_summary


def main() -> None:
    args = stage_args(__doc__, ("metrics", "the folder of metrics/loop/<run>.json"),
                      ("--markdown", "the page to write"),
                      ("--summary", "the folder of compact metrics to write (one file per run)"),
                      ("--headline", "the headline metrics file to write (dvc exp show)"),
                      ("--html", "the visual page to write", {"default": None}),
                      ("--data", "the folder of the runs' generations (<run>/g<k>)", {"default": "data/loop"}))
    runs = list(load_params().loop.runs)
    root = Path(args.metrics)

    def read(name: str):
        p = root / f"{name}.json"
        return json.loads(p.read_text()) if p.is_file() else None

    md = render_loop({r: read(r) for r in runs}, read("sims_study"), runs)
    atomic_write_bytes(Path(args.markdown), md.encode())
    if args.html:
        page = build_loop_page({r: read(r) for r in runs}, md, args.data, seed=load_params().base.seed)
        atomic_write_bytes(Path(args.html), page.encode())
    rows = {r: loop_row(m) for r in runs if (m := read(r))}
    write_summary(args.summary, rows)
    write_json(args.headline, loop_headline(rows))
    print(md)


if __name__ == "__main__":
    run_stage(main)
