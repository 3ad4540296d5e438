"""Stage ``train_generator``: a real dataset -> the embedded diffusion model, its summary and its timings.

    python stages/train_generator.py [--study bias] DATASET OUT --metrics FILE --timings FILE
    # dvc.yaml: python stages/train_generator.py ${plan.dataset} models/generator
    #           --metrics metrics/train_generator.json --timings reports/timings/train_generator.json
"""


from tqdm import tqdm

from factory.config import load_params
from factory.core.stage import run_stage, stage_args, write_results
from factory.train.generator import train_generator


def main() -> None:
    args = stage_args(__doc__,
                      ("dataset", "the real dataset to train on"),
                      ("out", "the model folder to write"), study=True, results=True)
    cfg = load_params().study(args.study).train_generator
    with tqdm(total=cfg.steps, desc="train_generator", unit="step", mininterval=5) as bar:
        def progress(step: int, total: int, loss: float) -> None:
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}", refresh=False)

        metrics, timings = write_results(args, train_generator(args.dataset, cfg, args.out, progress=progress))
    print(f"train_generator: {metrics | timings}")


if __name__ == "__main__":
    run_stage(main)
