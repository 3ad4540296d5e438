"""Stage ``train_contrastive@<pool>``: SimCLR, StableRep and StableRep+ encoders trained on a pool, each
scored by a linear probe (fit on all of REAL train, and on 10 real images per class; tested on REAL test).

    python stages/train_contrastive.py POOL TRAIN TEST --metrics FILE --timings FILE
    # dvc.yaml: python stages/train_contrastive.py data/pools/${item}.json data/real/train data/real/test
    #           --metrics metrics/contrastive/${item}.json --timings reports/timings/train_contrastive/${item}.json
"""


from factory.config import load_params
from factory.core.stage import run_stage, stage_args, write_results
from factory.measure.probes import FEW_SHOT, contrastive_benchmark


def main() -> None:
    args = stage_args(__doc__,
                      ("pool", "the pool file to train the encoders on"),
                      ("train", "the real train split (the probes' training data)"),
                      ("test", "the real test split"), results=True)
    c = load_params().contrastive
    metrics, timings = write_results(args, contrastive_benchmark(args.pool, args.train, args.test, c.train, c.methods))
    for method, m in metrics["methods"].items():
        result = f"skipped ({m['skipped']})" if "skipped" in m else (
            f"linear-probe top-1 {m['top1']:.4f}, {FEW_SHOT}-shot {m[f'top1_{FEW_SHOT}shot']:.4f} "
            f"({timings['methods'][method]['seconds']} s)")
        print(f"train_contrastive {metrics['pool']} {method}: {result}")


if __name__ == "__main__":
    run_stage(main)
