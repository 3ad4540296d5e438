"""Stage ``evaluate``: every dataset of ``evaluate.datasets`` against ``evaluate.reference`` -> the metrics
(FD, precision/recall, density/coverage, recognition, CAS, balance), the guidance trade-off plot data
and the timings.

    python stages/evaluate.py --metrics FILE --plot FILE --timings FILE
    # dvc.yaml: python stages/evaluate.py --metrics metrics/evaluate.json --plot plots/guidance.json
    #           --timings reports/timings/evaluate.json
"""


from factory.config import load_params
from factory.core.files import write_json
from factory.core.stage import run_stage, stage_args, write_results
from factory.measure.evaluation import evaluate_datasets, guidance_rows


def main() -> None:
    args = stage_args(__doc__,
                      ("--plot", "the guidance trade-off rows (JSON) to write"), results=True)
    cfg = load_params().evaluate
    result, _ = write_results(args, evaluate_datasets(cfg))
    write_json(args.plot, guidance_rows(result, list(cfg.guidance) or None))
    for name, d in result["datasets"].items():
        cas = f", CAS {d['cas']:.4f}" if "cas" in d else ""
        print(f"evaluate {name} (guidance {d['guidance_scale']}): FD {d['fd']:.4g}, precision {d['precision']:.3f}, "
              f"recall {d['recall']:.3f}, recognition {d['recognition']:.4f}{cas}")


if __name__ == "__main__":
    run_stage(main)
