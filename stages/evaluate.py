"""Stage ``evaluate``: every dataset of ``evaluate.datasets``, and the real floor ``evaluate.floor``, against
``evaluate.reference`` at one sample count -> the metrics (FD, KID, precision/recall, density/coverage with
95% intervals, in the reference CNN's space and the CLIP's; recognition, CAS, balance), the guidance
trade-off plot data and the timings.

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
    print(f"evaluate at n={result['n']} ({result['draws']} draws), {result['encoder']['kind']} features: "
          f"{result['floor']['label']}: FD {result['floor']['fd']:.4g}, KID {result['floor']['kid']:.3g}")
    for name, d in result["datasets"].items():
        cas = f", CAS {d['cas']:.4f}" if "cas" in d else ""
        print(f"evaluate {name} (guidance {d['guidance_scale']}): FD {d['fd']:.4g}, KID {d['kid']:.3g}, "
              f"precision {d['precision']:.3f}, recall {d['recall']:.3f}, recognition {d['recognition']:.4f}{cas}")


if __name__ == "__main__":
    run_stage(main)
