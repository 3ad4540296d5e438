"""Stage ``bias_data``: ``bias.source`` (colour tied to class) -> a biased train split; held-out digits
from ``bias.test_source`` (colour independent of class) -> a val split (every design choice of the bias
study is made on it) and a test split (reported only). Train, val and test are disjoint digits.

    python stages/bias_data.py TRAIN VAL TEST
    # dvc.yaml: python stages/bias_data.py data/bias/real/train data/bias/real/val data/bias/real/test
"""


from factory.config import load_params
from factory.core.stage import run_stage, stage_args
from factory.measure.bias import attribute_correlation, make_bias_splits


def main() -> None:
    args = stage_args(__doc__,
                      ("train", "the biased train split to write"),
                      ("val", "the colour-randomised val split to write"),
                      ("test", "the colour-randomised test split to write"))
    params = load_params()
    b = params.bias
    counts = make_bias_splits(b.source, b.test_source, args.train, args.val, args.test, val_fraction=b.val_fraction,
                              test_fraction=b.test_fraction, seed=params.base.seed, shard_size=b.shard_size,
                              overwrite=True)
    print(f"bias_data: train {counts['train']} (colour = class colour for "
          f"{attribute_correlation(args.train, 'color'):.1%}), val {counts['val']} "
          f"({attribute_correlation(args.val, 'color', args.train):.1%}), test {counts['test']} "
          f"({attribute_correlation(args.test, 'color', args.train):.1%})")


if __name__ == "__main__":
    run_stage(main)
