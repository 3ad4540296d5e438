"""Stage ``split``: ``data/real/full`` -> ``data/real/train`` and ``data/real/test`` (stratified)."""

from factory.config import load_params
from factory.core.stage import run_stage
from factory.data.ingest import split


def main() -> None:
    params = load_params()
    counts = split("data/real/full", "data/real/train", "data/real/test",
                   test_fraction=params.split.test_fraction, seed=params.base.seed,
                   shard_size=params.split.shard_size, overwrite=True)
    print(f"split: train {counts['train']}, test {counts['test']}")


if __name__ == "__main__":
    run_stage(main)
