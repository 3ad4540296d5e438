"""Stage ``evaluate``: every dataset of ``evaluate.datasets`` against ``evaluate.reference`` -> the metrics
(FD, precision/recall, density/coverage, recognition, CAS, balance), the guidance trade-off plot data
and the timings.

    python stages/evaluate.py --metrics FILE --plot FILE --timings FILE
    # dvc.yaml: python stages/evaluate.py --metrics metrics/evaluate.json --plot plots/guidance.json
    #           --timings reports/timings/evaluate.json
"""

import argparse

from factory.config import load_params
from factory.core.files import write_json
from factory.core.stage import run_stage
from factory.core.timings import split_timings
from factory.measure.evaluation import evaluate_datasets, guidance_rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--metrics", required=True, help="the metrics (JSON) to write")
    ap.add_argument("--plot", required=True, help="the guidance trade-off rows (JSON) to write")
    ap.add_argument("--timings", required=True, help="the wall-clock timings (JSON) to write")
    args = ap.parse_args()
    cfg = load_params().evaluate
    result, timings = split_timings(evaluate_datasets(cfg))
    write_json(args.metrics, result)
    write_json(args.plot, guidance_rows(result, list(cfg.guidance) or None))
    write_json(args.timings, timings)
    for name, d in result["datasets"].items():
        cas = f", CAS {d['cas']:.4f}" if "cas" in d else ""
        print(f"evaluate {name} (guidance {d['guidance_scale']}): FD {d['fd']:.4g}, precision {d['precision']:.3f}, "
              f"recall {d['recall']:.3f}, recognition {d['recognition']:.4f}{cas}")


if __name__ == "__main__":
    run_stage(main)
