"""Stage ``train_generator``: ``data/real/train`` -> ``models/generator`` (the embedded diffusion model)."""

import argparse
from pathlib import Path

from tqdm import tqdm

from factory.config import load_params, study_path, train_generator_config
from factory.core.files import write_json
from factory.core.stage import run_stage
from factory.train.generator import train_generator

OUT, METRICS = "models/generator", Path("metrics/train_generator.json")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--study", default=None, help="e.g. bias: read bias.train_generator, write models/bias/generator")
    args = ap.parse_args()
    params = load_params().study(args.study)
    cfg = train_generator_config(params)
    out, metrics = study_path(OUT, args.study), Path(study_path(str(METRICS), args.study))
    with tqdm(total=cfg.steps, desc="train_generator", unit="step", mininterval=5) as bar:
        def progress(step: int, total: int, loss: float) -> None:
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}", refresh=False)

        summary = train_generator(params.plan.dataset, cfg, out, progress=progress)
    write_json(metrics, summary)
    print(f"train_generator: {summary}")


if __name__ == "__main__":
    run_stage(main)
