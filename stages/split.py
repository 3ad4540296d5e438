"""Stage ``split``: a real dataset -> its train and test splits (stratified, ``split.test_fraction``).

    python stages/split.py FULL TRAIN TEST
    # dvc.yaml: python stages/split.py data/real/full data/real/train data/real/test
"""


from factory.config import load_params
from factory.core.stage import run_stage, stage_args
from factory.data.ingest import split


def main() -> None:
    args = stage_args(__doc__,
                      ("full", "the dataset to split"),
                      ("train", "the train split to write"),
                      ("test", "the test split to write"))
    params = load_params()
    counts = split(args.full, args.train, args.test, test_fraction=params.split.test_fraction, seed=params.base.seed,
                   shard_size=params.split.shard_size, overwrite=True)
    print(f"split: train {counts['train']}, test {counts['test']}")


if __name__ == "__main__":
    run_stage(main)
