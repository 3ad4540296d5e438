"""Stage ``split``: a real dataset -> its train and test splits (stratified, ``split.test_fraction``).

    python stages/split.py FULL TRAIN TEST
    # dvc.yaml: python stages/split.py data/real/full data/real/train data/real/test
"""

import argparse

from factory.config import load_params
from factory.core.stage import run_stage
from factory.data.ingest import split


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("full", help="the dataset to split")
    ap.add_argument("train", help="the train split to write")
    ap.add_argument("test", help="the test split to write")
    args = ap.parse_args()
    params = load_params()
    counts = split(args.full, args.train, args.test, test_fraction=params.split.test_fraction, seed=params.base.seed,
                   shard_size=params.split.shard_size, overwrite=True)
    print(f"split: train {counts['train']}, test {counts['test']}")


if __name__ == "__main__":
    run_stage(main)
