"""Measure the embedded scorer: train it on the real digits train split, then zero-shot top-1 and the
right-vs-wrong caption ROC-AUC on the real VAL split (recipes are chosen on val; the test split is for
final numbers only).

    python bench/clip.py --train data/real/train --val data/real/val --out /tmp/clip/model [--steps 300]

The splits are the pipeline's (``dvc repro split``).

Prints one JSON object to stdout (the model folder stays exactly as train_clip wrote it). Records the
load average before and after training, since the machine may be shared with other jobs; on a shared
machine set OMP_WAIT_POLICY=PASSIVE or pass --threads 1 (see ClipTrainConfig.threads).
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--train", default="data/real/train")
    ap.add_argument("--val", default="data/real/val", help="the held-out split the recipe is judged on")
    ap.add_argument("--out", default="/tmp/clip/model")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=JSON",
                    help="override a ClipTrainConfig field, e.g. --set warmup_steps=20")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    ap.add_argument("--eval-only", action="store_true", help="evaluate the model at --out without training")
    args = ap.parse_args()

    import torch

    from factory.core.shards import Dataset
    from factory.curate.scorers import load_scorer
    from factory.curate.scorers.base import (
        class_prompts,
        dataset_class_scores,
        margins,
        mismatch_auc,
        zero_shot_accuracy,
    )
    from factory.train.clip import ClipTrainConfig, train_clip

    if args.threads:
        torch.set_num_threads(args.threads)
    overrides = {k: json.loads(v) for k, v in (s.split("=", 1) for s in args.set)}
    if args.steps is not None:
        overrides["steps"] = args.steps
    overrides.setdefault("seed", args.seed)
    result: dict = {"load_before": os.getloadavg(), "cpus": os.cpu_count(), "threads": torch.get_num_threads(),
                    "overrides": overrides}
    if not args.eval_only:
        cfg = ClipTrainConfig(**overrides)
        t0 = time.perf_counter()
        summary = train_clip(args.train, cfg, args.out)
        result["train_wall_s"] = round(time.perf_counter() - t0, 1)
        result["summary"] = summary
        result["load_after_train"] = os.getloadavg()
    scorer = load_scorer("embedded", args.out)
    test = Dataset(args.val)
    t0 = time.perf_counter()
    acc = zero_shot_accuracy(scorer, test)
    auc = mismatch_auc(scorer, test, seed=0)
    scores, labels = dataset_class_scores(scorer, test)
    n, c = scores.shape
    wrong = (labels + np.random.default_rng(0).integers(1, c, size=n)) % c
    m = margins(scores, labels)
    result.update({
        "zero_shot_top1": round(acc, 4),
        "mismatch_auc": round(auc, 5),
        "right_cos_mean": round(float(scores[np.arange(n), labels].mean()), 4),
        "wrong_cos_mean": round(float(scores[np.arange(n), wrong].mean()), 4),
        "margin_p5": round(float(np.percentile(m, 5)), 4),
        "val_images": int(n),
        "eval_s": round(time.perf_counter() - t0, 1),
        "prompts": class_prompts(scorer, test.classes)[:3],
        "describe": scorer.describe(),
        "load_end": os.getloadavg(),
    })
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
