"""Stage ``train_classifier@<pool>``: a pool -> its classifier's metrics (top-1 on the REAL test split).

    python stages/train_classifier.py POOL TEST --metrics FILE --live DIR --timings FILE
    # dvc.yaml: python stages/train_classifier.py data/pools/${key}.json data/real/test
    #           --metrics metrics/classifier/${key}.json --live dvclive/classifier/${key}
    #           --timings reports/timings/train_classifier/${key}.json
"""


from dvclive import Live

from factory.config import load_params
from factory.core.stage import run_stage, stage_args, write_results
from factory.train.classifier import train_classifier


def main() -> None:
    args = stage_args(__doc__,
                      ("pool", "the pool file to train on"),
                      ("test", "the real test split"),
                      ("--live", "the dvclive folder of the curves (loss, real-test top-1)"), results=True)
    cfg = load_params().classifier
    with Live(args.live, dvcyaml=False, save_dvc_exp=False) as live:
        _, summary = train_classifier(args.pool, args.test, cfg, live=live)
    metrics, timings = write_results(args, summary)
    print(f"train_classifier {metrics['pool']}: real-test top-1 {metrics['top1']:.4f} "
          f"({metrics['n_train']} training images, synthetic fraction {metrics['synthetic_fraction']:.2f}, "
          f"{timings['seconds']:.0f} s)")


if __name__ == "__main__":
    run_stage(main)
