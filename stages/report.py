"""Stage ``report``: all metrics -> ``reports/results.md``, ``reports/index.html`` and
``plots/synthetic_fraction.json`` (accuracy against the share of synthetic images)."""

from pathlib import Path

from factory.config import load_params
from factory.core.files import atomic_write_bytes, write_json
from factory.core.stage import run_stage
from factory.measure.report import fraction_rows, load_metrics, render, to_html


def main() -> None:
    params = load_params()
    metrics = load_metrics(".", list(params.pools), params.contrastive.pools)
    md = render(metrics)
    atomic_write_bytes(Path("reports/results.md"), md.encode())
    atomic_write_bytes(Path("reports/index.html"), to_html(md).encode())
    rows = fraction_rows(metrics["classifier"], params.report.fraction_pools)
    write_json("plots/synthetic_fraction.json", rows)
    print(md)


if __name__ == "__main__":
    run_stage(main)
