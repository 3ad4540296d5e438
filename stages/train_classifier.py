"""Stage ``train_classifier@<pool>``: a pool -> ``metrics/classifier/<pool>.json`` (top-1 on REAL test).

Per-epoch loss and real-test accuracy go to dvclive (``dvclive/classifier/<pool>/``).
"""

import argparse
from pathlib import Path

from dvclive import Live

from factory.config import classifier_config, load_params, study_path
from factory.core.errors import FactoryError
from factory.core.files import write_json
from factory.core.stage import run_stage
from factory.train.classifier import train_classifier


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("pool", help="a pool name from params.yaml pools")
    ap.add_argument("--study", default=None)
    args = ap.parse_args()
    params = load_params().study(args.study)
    if args.pool not in params.pools:
        raise FactoryError(f"pool {args.pool!r} is not in params.yaml pools ({', '.join(params.pools)})")
    cfg = classifier_config(params)
    pool_file = study_path(f"data/pools/{args.pool}.json", args.study)
    test = study_path("data/real/test", args.study)
    with Live(study_path(f"dvclive/classifier/{args.pool}", args.study), dvcyaml=False,
              save_dvc_exp=False) as live:
        _, metrics = train_classifier(pool_file, test, cfg, live=live)
    out = Path(study_path(f"metrics/classifier/{args.pool}.json", args.study))
    write_json(out, metrics)
    print(f"train_classifier {args.pool}: real-test top-1 {metrics['top1']:.4f} "
          f"({metrics['n_train']} training images, synthetic fraction {metrics['synthetic_fraction']:.2f}, "
          f"{metrics['seconds']:.0f} s)")


if __name__ == "__main__":
    run_stage(main)
