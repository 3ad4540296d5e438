"""Stage ``train_classifier@<pool>``: a pool -> its classifier's metrics (top-1 on the REAL test split).

    python stages/train_classifier.py POOL TEST --metrics FILE --live DIR --timings FILE
    # dvc.yaml: python stages/train_classifier.py data/pools/${key}.json data/real/test
    #           --metrics metrics/classifier/${key}.json --live dvclive/classifier/${key}
    #           --timings reports/timings/train_classifier/${key}.json
"""

import argparse

from dvclive import Live

from factory.config import load_params
from factory.core.files import write_json
from factory.core.stage import run_stage
from factory.core.timings import split_timings
from factory.train.classifier import train_classifier


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("pool", help="the pool file to train on")
    ap.add_argument("test", help="the real test split")
    ap.add_argument("--metrics", required=True, help="the metrics (JSON) to write")
    ap.add_argument("--live", required=True, help="the dvclive folder of the curves (loss, real-test top-1)")
    ap.add_argument("--timings", required=True, help="the wall-clock timings (JSON) to write")
    args = ap.parse_args()
    cfg = load_params().classifier
    with Live(args.live, dvcyaml=False, save_dvc_exp=False) as live:
        _, summary = train_classifier(args.pool, args.test, cfg, live=live)
    metrics, timings = split_timings(summary)
    write_json(args.metrics, metrics)
    write_json(args.timings, timings)
    print(f"train_classifier {metrics['pool']}: real-test top-1 {metrics['top1']:.4f} "
          f"({metrics['n_train']} training images, synthetic fraction {metrics['synthetic_fraction']:.2f}, "
          f"{timings['seconds']:.0f} s)")


if __name__ == "__main__":
    run_stage(main)
