"""Stage ``bias_benchmark``: train on each ``bias.pools`` pool, test on the colour-randomised real test
split -> the metrics (accuracy, colour-consistent vs colour-flipped accuracy, and the gap).

    python stages/bias_benchmark.py TRAIN TEST POOLS --metrics FILE --live DIR
    # dvc.yaml: python stages/bias_benchmark.py data/bias/real/train data/bias/real/test data/bias/pools
    #           --metrics metrics/bias.json --live dvclive/bias
"""

from pathlib import Path

from dvclive import Live

from factory.config import load_params
from factory.core.files import write_json
from factory.core.stage import run_stage, stage_args
from factory.measure.bias import bias_benchmark


def main() -> None:
    args = stage_args(__doc__,
                      ("train", "the biased real train split"),
                      ("test", "the colour-randomised real test split"),
                      ("pools", "the folder of bias.pools' pool files"),
                      ("--metrics", "the metrics (JSON) to write"),
                      ("--live", "the folder of each pool's dvclive training curves"))
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
