"""Stage ``train_contrastive@<pool>``: SimCLR, StableRep and StableRep+ encoders trained on a pool, each
scored by a linear probe (fit on all of REAL train, and on 10 real images per class; tested on REAL test) -> ``metrics/contrastive/<pool>.json``."""

import argparse
from pathlib import Path

from factory.config import load_params
from factory.core.errors import FactoryError
from factory.core.files import write_json
from factory.core.stage import run_stage
from factory.data.loader import load_pool_tensors
from factory.data.pools import read_pool
from factory.measure.probes import few_shot_indices, linear_probe
from factory.train.classifier import detect_mode
from factory.train.contrastive import ContrastiveConfig, train_contrastive
from factory.train.reference import load_split

TRAIN, TEST = "data/real/train", "data/real/test"
PER_CLASS = 10  # the few-shot probe: 10 real labelled images per class


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("pool", help="a pool name from params.yaml pools")
    args = ap.parse_args()
    params = load_params()
    if args.pool not in params.pools:
        raise FactoryError(f"pool {args.pool!r} is not in params.yaml pools ({', '.join(params.pools)})")
    pool = read_pool(f"data/pools/{args.pool}.json")
    section = dict(params.contrastive.train)
    section.setdefault("seed", params.base.seed)
    base = ContrastiveConfig.from_dict(section)
    mode = detect_mode(pool)
    x, _, groups, texts, _ = load_pool_tensors(pool, image_size=base.image_size, mode=mode)
    train_x, train_y, _, classes = load_split(TRAIN, base.image_size, mode)
    test_x, test_y, _, _ = load_split(TEST, base.image_size, mode)
    shots = few_shot_indices(train_y, PER_CLASS, base.seed)
    multi = len(set(groups)) < len(groups)
    results = {"pool": args.pool, "n_train": len(x), "synthetic_fraction": pool["synthetic_fraction"],
               "config": base.to_dict(), "methods": {}}
    for method in params.contrastive.methods:
        if method != "simclr" and not multi:
            results["methods"][method] = {"skipped": "no prompt group has two images in this pool"}
            print(f"train_contrastive {args.pool} {method}: skipped (no multi-image prompt groups)")
            continue
        cfg = ContrastiveConfig.from_dict(base.to_dict() | {"method": method})
        encoder, info = train_contrastive(x, groups, texts, cfg)
        probe = linear_probe(encoder, train_x, train_y, test_x, test_y, classes, C=cfg.probe_C)
        few = linear_probe(encoder, train_x[shots], train_y[shots], test_x, test_y, classes, C=cfg.probe_C)
        results["methods"][method] = {"top1": round(probe["top1"], 6), "per_class": probe["per_class"],
                                      f"top1_{PER_CLASS}shot": round(few["top1"], 6),
                                      "final_loss": info.get("final_loss"), "seconds": info.get("seconds")}
        print(f"train_contrastive {args.pool} {method}: linear-probe top-1 {probe['top1']:.4f}, "
              f"{PER_CLASS}-shot {few['top1']:.4f} ({info.get('seconds')} s)")
    out = Path(f"metrics/contrastive/{args.pool}.json")
    write_json(out, results)


if __name__ == "__main__":
    run_stage(main)
