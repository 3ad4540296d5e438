"""Stage ``loop_report``: every run's metrics and the SIMS study -> reports/loop.md, and the compact DVC
metrics (a line per run, factory/measure/summary.py).

    python stages/loop_report.py METRICS_DIR --markdown FILE --summary DIR
    # loop/dvc.yaml: python stages/loop_report.py metrics/loop --markdown reports/loop.md --summary metrics/loop/summary
"""

import json
from pathlib import Path

from factory.config import load_params
from factory.core.files import atomic_write_bytes
from factory.core.stage import run_stage, stage_args
from factory.measure.loop_report import render_loop
from factory.measure.summary import loop_row, write_summary


def main() -> None:
    args = stage_args(__doc__, ("metrics", "the folder of metrics/loop/<run>.json"),
                      ("--markdown", "the page to write"),
                      ("--summary", "the folder of compact metrics to write (one file per run)"))
    runs = list(load_params().loop.runs)
    root = Path(args.metrics)

    def read(name: str):
        p = root / f"{name}.json"
        return json.loads(p.read_text()) if p.is_file() else None

    md = render_loop({r: read(r) for r in runs}, read("sims_study"), runs)
    atomic_write_bytes(Path(args.markdown), md.encode())
    write_summary(args.summary, {r: loop_row(m) for r in runs if (m := read(r))})
    print(md)


if __name__ == "__main__":
    run_stage(main)
