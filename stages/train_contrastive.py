"""Stage ``train_contrastive@<pool>``: SimCLR, StableRep and StableRep+ encoders trained on a pool, each
scored by a linear probe (fit on all of REAL train, and on 10 real images per class; tested on REAL test).

    python stages/train_contrastive.py POOL TRAIN TEST --metrics FILE --timings FILE
    # dvc.yaml: python stages/train_contrastive.py data/pools/${item}.json data/real/train data/real/test
    #           --metrics metrics/contrastive/${item}.json --timings reports/timings/train_contrastive/${item}.json
"""

import argparse

from factory.config import load_params
from factory.core.files import write_json
from factory.core.stage import run_stage
from factory.core.timings import split_timings
from factory.measure.probes import FEW_SHOT, contrastive_benchmark


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("pool", help="the pool file to train the encoders on")
    ap.add_argument("train", help="the real train split (the probes' training data)")
    ap.add_argument("test", help="the real test split")
    ap.add_argument("--metrics", required=True, help="the metrics (JSON) to write")
    ap.add_argument("--timings", required=True, help="the wall-clock timings (JSON) to write")
    args = ap.parse_args()
    c = load_params().contrastive
    metrics, timings = split_timings(contrastive_benchmark(args.pool, args.train, args.test, c.train, c.methods))
    write_json(args.metrics, metrics)
    write_json(args.timings, timings)
    for method, m in metrics["methods"].items():
        result = f"skipped ({m['skipped']})" if "skipped" in m else (
            f"linear-probe top-1 {m['top1']:.4f}, {FEW_SHOT}-shot {m[f'top1_{FEW_SHOT}shot']:.4f} "
            f"({timings['methods'][method]['seconds']} s)")
        print(f"train_contrastive {metrics['pool']} {method}: {result}")


if __name__ == "__main__":
    run_stage(main)
