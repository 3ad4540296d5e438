"""Stage ``generate``: ``data/prompts/plan.jsonl`` + the generator -> ``data/synthetic/raw`` (resumable)."""

import argparse

from tqdm import tqdm

from factory.config import generate_config, load_params, study_path
from factory.core.stage import run_stage
from factory.generate.tasks import generate

PLAN, OUT = "data/prompts/plan.jsonl", "data/synthetic/raw"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--study", default=None, help="e.g. bias: read bias.generate, write data/bias/synthetic/raw")
    ap.add_argument("--guidance-scale", type=float, default=None,
                    help="override generate.guidance_scale (the guidance sweep)")
    ap.add_argument("--out", default=None, help="output dataset folder (default data/synthetic/raw)")
    args = ap.parse_args()
    params = load_params().study(args.study)
    if args.guidance_scale is not None:
        params = params.model_copy(update={"generate": params.generate.model_copy(
            update={"guidance_scale": args.guidance_scale})})
    cfg = generate_config(params)
    plan, out = study_path(PLAN, args.study), args.out or study_path(OUT, args.study)
    bars = []

    def progress(total: int, done: int):
        bars.append(tqdm(total=total, initial=done, desc="generate", unit="img", mininterval=2))
        return bars[-1].update

    try:
        summary = generate(plan, out, cfg, progress=progress)
    finally:
        for bar in bars:
            bar.close()
    print(f"generate: {summary.samples} samples in {summary.shards} shards -> {out} "
          f"({summary.generated_shards} generated at {summary.images_per_second:.1f} images/s, "
          f"{summary.resumed_shards} resumed)")


if __name__ == "__main__":
    run_stage(main)
