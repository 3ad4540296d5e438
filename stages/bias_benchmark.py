"""Stage ``bias_benchmark``: train on each ``bias.pools`` pool, test on the colour-randomised real test
split -> ``metrics/bias.json`` (accuracy, colour-consistent vs colour-flipped accuracy, and the gap)."""

from pathlib import Path

from dvclive import Live

from factory.config import classifier_config, load_params
from factory.core.files import write_json
from factory.core.shards import Dataset
from factory.core.stage import run_stage
from factory.measure.bias import attribute_correlation, consistency_mask, majority_attribute, split_accuracy
from factory.train.classifier import train_classifier
from factory.train.reference import load_split, predict

TRAIN, TEST, POOLS, OUT = "data/bias/real/train", "data/bias/real/test", "data/bias/pools", "metrics/bias.json"


def main() -> None:
    params = load_params().study("bias")
    cfg = classifier_config(params)
    test = Dataset(TEST)
    own = majority_attribute(TRAIN, "color")
    consistent = consistency_mask(test, own, "color")
    results = {"train_correlation": round(attribute_correlation(TRAIN, "color"), 6),
               "test_correlation": round(attribute_correlation(TEST, "color", TRAIN), 6), "pools": {}}
    for name in params.pools:
        with Live(f"dvclive/bias/{name}", dvcyaml=False, save_dvc_exp=False) as live:
            model, metrics = train_classifier(Path(POOLS) / f"{name}.json", test, cfg, live=live)
        x, y, _, _ = load_split(test, cfg.image_size, metrics["mode"])
        model.eval()
        row = split_accuracy(predict(model, x), y, consistent)
        row.update(n_train=metrics["n_train"], synthetic_fraction=metrics["synthetic_fraction"])
        results["pools"][name] = row
        print(f"bias_benchmark {name}: top-1 {row['top1']:.4f}, colour-consistent {row['consistent_top1']:.4f}, "
              f"colour-flipped {row['flipped_top1']:.4f} (gap {row['gap']:+.4f})")
    write_json(OUT, results)


if __name__ == "__main__":
    run_stage(main)
