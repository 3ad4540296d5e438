"""Stage ``train_classifier@<pool>``: a pool -> its classifiers' metrics (top-1 on the REAL test split), one
classifier per training seed (``classifier.seeds``), the mean with a 95% interval.

    python stages/train_classifier.py POOL TEST --metrics FILE --live DIR --timings FILE
    # dvc.yaml: python stages/train_classifier.py data/pools/${key}.json data/real/test
    #           --metrics metrics/classifier/${key}.json --live dvclive/classifier/${key}
    #           --timings reports/timings/train_classifier/${key}.json
"""


from dvclive import Live
from factory.config import load_params
from factory.core.stage import run_stage, stage_args, write_results
from factory.train.classifier import train_classifier_seeds


def main() -> None:
    args = stage_args(__doc__,
                      ("pool", "the pool file to train on"),
                      ("test", "the real test split"),
                      ("--live", "the dvclive folder of the curves (loss, real-test top-1: mean and per seed)"),
                      results=True)
    cfg = load_params().classifier
    with Live(args.live, dvcyaml=False, save_dvc_exp=False) as live:
        summary = train_classifier_seeds(args.pool, args.test, cfg, live=live)
    metrics, timings = write_results(args, summary)
    ci = metrics["top1_ci95"]
    interval = f" [{ci[0]:.4f}, {ci[1]:.4f}]" if ci is not None else ""
    print(f"train_classifier {metrics['pool']}: real-test top-1 {metrics['top1_mean']:.4f}{interval} over seeds "
          f"{metrics['seeds']} ({metrics['n_train']} training images, "
          f"synthetic fraction {metrics['synthetic_fraction']:.2f}, "
          f"{timings['seconds']:.0f} s)")


if __name__ == "__main__":
    run_stage(main)
