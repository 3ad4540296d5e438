"""Stage ``generate``: ``data/prompts/plan.jsonl`` + the generator -> ``data/synthetic/raw`` (resumable)."""

from tqdm import tqdm

from factory.config import generate_config, load_params
from factory.generate import generate
from factory.stage import run_stage

PLAN, OUT = "data/prompts/plan.jsonl", "data/synthetic/raw"


def main() -> None:
    cfg = generate_config(load_params())
    bars = []

    def progress(total: int, done: int):
        bars.append(tqdm(total=total, initial=done, desc="generate", unit="img", mininterval=2))
        return bars[-1].update

    try:
        summary = generate(PLAN, OUT, cfg, progress=progress)
    finally:
        for bar in bars:
            bar.close()
    print(f"generate: {summary.samples} samples in {summary.shards} shards -> {OUT} "
          f"({summary.generated_shards} generated at {summary.images_per_second:.1f} images/s, "
          f"{summary.resumed_shards} resumed)")


if __name__ == "__main__":
    run_stage(main)
