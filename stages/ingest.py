"""Stage ``ingest``: the real source named in ``params.yaml`` -> ``data/real/full``."""

from factory.config import load_params
from factory.core.stage import run_stage
from factory.data.ingest import ingest

OUT = "data/real/full"


def main() -> None:
    params = load_params().ingest
    summary = ingest(params.source, OUT, shard_size=params.shard_size, overwrite=True)
    print(f"ingest: {summary.samples} samples in {summary.shards} shards -> {OUT}")


if __name__ == "__main__":
    run_stage(main)
