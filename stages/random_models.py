"""Stage ``random_models``: random-weight stand-ins for a pipeline that has no weights on disk (the photo
pipeline's default run): a Stable Diffusion folder of ``random_models.generator``'s architecture and an
open_clip checkpoint of ``random_models.scorer``'s, seeded, built offline. Both carry a
``random_weights.json`` marker: the report labels every number made with them as not a result.

    python stages/random_models.py GENERATOR_DIR SCORER_DIR
    # examples/imagenette/dvc.yaml: python ../../stages/random_models.py models/sd models/clip
"""

from pathlib import Path

from factory.config import load_params
from factory.core.stage import run_stage, stage_args
from factory.curate.scorers.random_clip import build_open_clip, model_name
from factory.generate.random_sd import build_sd


def main() -> None:
    args = stage_args(__doc__,
                      ("generator", "the Stable Diffusion folder to write"),
                      ("scorer", "the open_clip checkpoint folder to write"))
    p = load_params().random_models
    build_sd(Path(args.generator), p.generator, seed=p.seed)
    weights = build_open_clip(Path(args.scorer), p.scorer, seed=p.seed)
    print(f"random_models: Stable Diffusion {p.generator} -> {args.generator}; open_clip {model_name(p.scorer)} -> "
          f"{weights} (random weights, seed {p.seed}: these models test the pipeline, their outputs are not results)")


if __name__ == "__main__":
    run_stage(main)
