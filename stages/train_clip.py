"""Stage ``train_clip``: a real dataset -> the embedded open_clip scorer, its summary and its timings.

    python stages/train_clip.py DATASET OUT --metrics FILE --timings FILE
    # dvc.yaml: python stages/train_clip.py ${plan.dataset} models/clip
    #           --metrics metrics/train_clip.json --timings reports/timings/train_clip.json
"""

import argparse

from tqdm import tqdm

from factory.config import load_params
from factory.core.files import write_json
from factory.core.stage import run_stage
from factory.core.timings import split_timings
from factory.train.clip import train_clip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dataset", help="the real dataset (images and captions) to train on")
    ap.add_argument("out", help="the model folder to write")
    ap.add_argument("--metrics", required=True, help="the training summary (JSON) to write")
    ap.add_argument("--timings", required=True, help="the wall-clock timings (JSON) to write")
    args = ap.parse_args()
    params = load_params()
    cfg = params.train_clip
    with tqdm(total=cfg.steps, desc="train_clip", unit="step", mininterval=5) as bar:
        summary = train_clip(args.dataset, cfg, args.out, progress=lambda step, total, loss: bar.update(1))
    metrics, timings = split_timings(summary)
    write_json(args.metrics, metrics)
    write_json(args.timings, timings)
    print(f"train_clip: {summary}")


if __name__ == "__main__":
    run_stage(main)
