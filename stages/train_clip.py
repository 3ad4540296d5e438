"""Stage ``train_clip``: a real dataset -> the embedded open_clip scorer, its summary and its timings.

    python stages/train_clip.py DATASET OUT --metrics FILE --timings FILE
    # dvc.yaml: python stages/train_clip.py ${plan.dataset} models/clip
    #           --metrics metrics/train_clip.json --timings reports/timings/train_clip.json
"""


from tqdm import tqdm

from factory.config import load_params
from factory.core.stage import run_stage, stage_args, write_results
from factory.train.clip import train_clip


def main() -> None:
    args = stage_args(__doc__,
                      ("dataset", "the real dataset (images and captions) to train on"),
                      ("out", "the model folder to write"), results=True)
    params = load_params()
    cfg = params.train_clip
    with tqdm(total=cfg.steps, desc="train_clip", unit="step", mininterval=5) as bar:
        summary = train_clip(args.dataset, cfg, args.out, progress=lambda step, total, loss: bar.update(1))
    write_results(args, summary)
    print(f"train_clip: {summary}")


if __name__ == "__main__":
    run_stage(main)
