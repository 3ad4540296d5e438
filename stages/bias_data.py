"""Stage ``bias_data``: ``bias.source`` (colour tied to class) -> ``data/bias/real/train``;
the held-out digits from ``bias.test_source`` (colour independent of class) -> ``data/bias/real/test``."""

from factory.config import load_params
from factory.core.stage import run_stage
from factory.measure.bias import attribute_correlation, make_bias_splits

TRAIN, TEST = "data/bias/real/train", "data/bias/real/test"


def main() -> None:
    params = load_params()
    b = params.bias
    counts = make_bias_splits(b.source, b.test_source, TRAIN, TEST, test_fraction=b.test_fraction,
                              seed=params.base.seed, shard_size=b.shard_size, overwrite=True)
    print(f"bias_data: train {counts['train']} (colour = class colour for "
          f"{attribute_correlation(TRAIN, 'color'):.1%}), test {counts['test']} "
          f"(colour = class colour for {attribute_correlation(TEST, 'color', TRAIN):.1%})")


if __name__ == "__main__":
    run_stage(main)
