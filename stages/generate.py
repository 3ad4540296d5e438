"""Stage ``generate``: a prompt plan + the generator of ``generate.model`` -> a synthetic dataset (resumable).

    python stages/generate.py [--study bias] [--guidance-scale W] PLAN OUT
    # dvc.yaml: python stages/generate.py data/prompts/plan.jsonl data/synthetic/raw
"""

from contextlib import ExitStack

from tqdm import tqdm

from factory.config import load_params
from factory.core.stage import run_stage, stage_args
from factory.generate.tasks import generate


def main() -> None:
    args = stage_args(__doc__,
                      ("--guidance-scale", "override generate.guidance_scale (the guidance sweep)",
                       {"type": float, "default": None}),
                      ("plan", "the prompt plan (JSON lines) to make"),
                      ("out", "the dataset folder to write (or resume)"), study=True)
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
