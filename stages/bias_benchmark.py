"""Stage ``bias_benchmark``: train on each ``bias.pools`` pool, test on the colour-randomised real test
split -> the metrics (accuracy, colour-consistent vs colour-flipped accuracy, and the gap).

    python stages/bias_benchmark.py TRAIN TEST POOLS --metrics FILE --live DIR
    # dvc.yaml: python stages/bias_benchmark.py data/bias/real/train data/bias/real/test data/bias/pools
    #           --metrics metrics/bias.json --live dvclive/bias
"""

import argparse
from pathlib import Path

from dvclive import Live

from factory.config import load_params
from factory.core.files import write_json
from factory.core.stage import run_stage
from factory.measure.bias import bias_benchmark


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("train", help="the biased real train split")
    ap.add_argument("test", help="the colour-randomised real test split")
    ap.add_argument("pools", help="the folder of bias.pools' pool files")
    ap.add_argument("--metrics", required=True, help="the metrics (JSON) to write")
    ap.add_argument("--live", required=True, help="the folder of each pool's dvclive training curves")
    args = ap.parse_args()
    params = load_params().study("bias")
    results = bias_benchmark(args.train, args.test, {name: Path(args.pools) / f"{name}.json" for name in params.pools},
                             params.classifier, live=lambda name: Live(f"{args.live}/{name}", dvcyaml=False,
                                                                       save_dvc_exp=False))
    write_json(args.metrics, results)
    for name, row in results["pools"].items():
        print(f"bias_benchmark {name}: top-1 {row['top1']:.4f}, colour-consistent {row['consistent_top1']:.4f}, "
              f"colour-flipped {row['flipped_top1']:.4f} (gap {row['gap']:+.4f})")


if __name__ == "__main__":
    run_stage(main)
