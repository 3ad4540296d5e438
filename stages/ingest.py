"""Stage ``ingest``: the real source named in ``params.yaml`` (``ingest.source``) -> a dataset folder.

    python stages/ingest.py OUT        # dvc.yaml: python stages/ingest.py data/real/full
"""


from factory.config import load_params
from factory.core.stage import run_stage, stage_args
from factory.data.ingest import ingest


def main() -> None:
    args = stage_args(__doc__,
                      ("out", "the dataset folder to write"))
    params = load_params().ingest
    summary = ingest(params.source, args.out, shard_size=params.shard_size, overwrite=True)
    print(f"ingest: {summary.samples} samples in {summary.shards} shards -> {args.out}")


if __name__ == "__main__":
    run_stage(main)
