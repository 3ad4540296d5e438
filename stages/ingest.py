"""Stage ``ingest``: the real source named in ``params.yaml`` (``ingest.source``, or with ``--test``
``ingest.test_source``) -> a dataset folder, its classes named by ``ingest.class_names``.

    python stages/ingest.py [--test] OUT   # dvc.yaml: python stages/ingest.py data/real/full
"""


from factory.config import load_params
from factory.core.errors import FactoryError
from factory.core.stage import run_stage, stage_args
from factory.data.ingest import ingest


def main() -> None:
    args = stage_args(__doc__,
                      ("--test", "ingest ingest.test_source (a real test set of its own)",
                       {"action": "store_true", "default": False}),
                      ("out", "the dataset folder to write"))
    params = load_params().ingest
    source = params.test_source if args.test else params.source
    if source is None:
        raise FactoryError("ingest.test_source: not set; --test ingests a real test set of its own")
    summary = ingest(source, args.out, shard_size=params.shard_size, overwrite=True, class_names=params.class_names)
    print(f"ingest: {summary.samples} samples in {summary.shards} shards -> {args.out}")
    if summary.names:
        print("ingest: classes " + ", ".join(f"{c} ({n})" for c, n in summary.names.items()))


if __name__ == "__main__":
    run_stage(main)
