"""Stage ``train_generator``: a real dataset -> the embedded diffusion model, its summary and its timings.

    python stages/train_generator.py [--study bias] DATASET OUT --metrics FILE --timings FILE
    # dvc.yaml: python stages/train_generator.py ${plan.dataset} models/generator
    #           --metrics metrics/train_generator.json --timings reports/timings/train_generator.json
"""

import argparse

from tqdm import tqdm

from factory.config import load_params
from factory.core.files import write_json
from factory.core.stage import run_stage
from factory.core.timings import split_timings
from factory.train.generator import train_generator


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--study", default=None, help="e.g. bias: read bias.train_generator instead of train_generator")
    ap.add_argument("dataset", help="the real dataset to train on")
    ap.add_argument("out", help="the model folder to write")
    ap.add_argument("--metrics", required=True, help="the training summary (JSON) to write")
    ap.add_argument("--timings", required=True, help="the wall-clock timings (JSON) to write")
    args = ap.parse_args()
    cfg = load_params().study(args.study).train_generator
    with tqdm(total=cfg.steps, desc="train_generator", unit="step", mininterval=5) as bar:
        def progress(step: int, total: int, loss: float) -> None:
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}", refresh=False)

        metrics, timings = split_timings(train_generator(args.dataset, cfg, args.out, progress=progress))
    write_json(args.metrics, metrics)
    write_json(args.timings, timings)
    print(f"train_generator: {metrics | timings}")


if __name__ == "__main__":
    run_stage(main)
