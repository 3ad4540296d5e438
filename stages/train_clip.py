"""Stage ``train_clip``: ``data/real/train`` -> ``models/clip`` (the embedded open_clip scorer)."""

from pathlib import Path

from tqdm import tqdm

from factory.config import load_params, train_clip_config
from factory.core.files import write_json
from factory.core.stage import run_stage
from factory.train.clip import train_clip

OUT, METRICS = "models/clip", Path("metrics/train_clip.json")


def main() -> None:
    params = load_params()
    cfg = train_clip_config(params)
    with tqdm(total=cfg.steps, desc="train_clip", unit="step", mininterval=5) as bar:
        summary = train_clip(params.plan.dataset, cfg, OUT, progress=lambda step, total, loss: bar.update(1))
    write_json(METRICS, summary)
    print(f"train_clip: {summary}")


if __name__ == "__main__":
    run_stage(main)
