"""Stage ``split``: a real dataset -> its train, val and test splits (stratified: ``split.test_fraction`` of
each class to test, then ``split.val_fraction`` of the rest to val), with the style levels of
``split.style`` fit on train and written into every split's records.

    python stages/split.py FULL TRAIN VAL [TEST]    # no TEST: the data's test set was ingested apart
    # dvc.yaml: python stages/split.py data/real/full data/real/train data/real/val data/real/test
"""


from factory.config import load_params
from factory.core.stage import run_stage, stage_args
from factory.data.ingest import split


def main() -> None:
    args = stage_args(__doc__,
                      ("full", "the dataset to split"),
                      ("train", "the train split to write"),
                      ("val", "the val split to write (carved from the train part; choices are made on it)"),
                      ("test", "the test split to write (none: the data has a test set of its own, "
                               "ingest.test_source; only val is drawn)", {"nargs": "?", "default": None}))
    params = load_params()
    p = params.split
    counts = split(args.full, args.train, args.test, val_out=args.val, test_fraction=p.test_fraction,
                   val_fraction=p.val_fraction, style=p.style, seed=params.base.seed, shard_size=p.shard_size,
                   overwrite=True)
    print(f"split: train {counts['train']}, val {counts['val']}, "
          + (f"test {counts['test']}" if "test" in counts else "test: none drawn (ingested apart)")
          + (f"; style levels ({', '.join(p.style)}) fit on train" if p.style else ""))


if __name__ == "__main__":
    run_stage(main)
