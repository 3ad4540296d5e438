"""Stage ``generate``: a prompt plan + the generator of ``generate.model`` -> a synthetic dataset (resumable).

    python stages/generate.py [--study bias] [--guidance-scale W] PLAN OUT
    # dvc.yaml: python stages/generate.py data/prompts/plan.jsonl data/synthetic/raw
"""

import argparse
from contextlib import ExitStack

from tqdm import tqdm

from factory.config import load_params
from factory.core.stage import run_stage
from factory.generate.tasks import generate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--study", default=None, help="e.g. bias: read bias.generate instead of generate")
    ap.add_argument("--guidance-scale", type=float, default=None,
                    help="override generate.guidance_scale (the guidance sweep)")
    ap.add_argument("plan", help="the prompt plan (JSON lines) to make")
    ap.add_argument("out", help="the dataset folder to write (or resume)")
    args = ap.parse_args()
    cfg = load_params().study(args.study).generate
    if args.guidance_scale is not None:
        cfg = cfg.replace(guidance_scale=args.guidance_scale)
    with ExitStack() as bars:  # one progress bar per run of shard tasks, all closed at the end
        summary = generate(args.plan, args.out, cfg, progress=lambda total, done: bars.enter_context(
            tqdm(total=total, initial=done, desc="generate", unit="img", mininterval=2)).update)
    print(f"generate: {summary.samples} samples in {summary.shards} shards -> {args.out} "
          f"({summary.generated_shards} generated at {summary.images_per_second:.1f} images/s, "
          f"{summary.resumed_shards} resumed)")


if __name__ == "__main__":
    run_stage(main)
