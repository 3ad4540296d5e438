"""Stage ``train_contrastive@<pool>``: the contrastive methods that ``contrastive.methods`` names for the
pool (SimCLR, StableRep, StableRep+ and the SupCon and random-groups controls), each trained once per seed
of ``contrastive.seeds`` and scored by a linear probe (fit on all of REAL train, and on 10 real images per
class; tested on REAL test): mean, 95% interval and per-seed values.

    python stages/train_contrastive.py POOL TRAIN TEST --metrics FILE --timings FILE
    # dvc.yaml: python stages/train_contrastive.py data/pools/${item}.json data/real/train data/real/test
    #           --metrics metrics/contrastive/${item}.json --timings reports/timings/train_contrastive/${item}.json
"""


from factory.config import load_params
from factory.core.errors import FactoryError
from factory.core.stage import run_stage, stage_args, write_results
from factory.data.pools import read_pool
from factory.measure.probes import FEW_SHOT, contrastive_benchmark


def main() -> None:
    args = stage_args(__doc__,
                      ("pool", "the pool file to train the encoders on"),
                      ("train", "the real train split (the probes' training data)"),
                      ("test", "the real test split"), results=True)
    c = load_params().contrastive
    pool = read_pool(args.pool)
    methods = c.methods_for(pool["name"])
    if not methods:
        raise FactoryError(f"contrastive.methods names no methods for pool {pool['name']!r}")
    metrics, timings = write_results(args, contrastive_benchmark(pool, args.train, args.test, c.train, methods,
                                                                 c.seeds))
    shot = f"top1_{FEW_SHOT}shot"
    for method, m in metrics["methods"].items():
        ci = m.get("top1_ci95")
        result = f"skipped ({m['skipped']})" if "skipped" in m else (
            f"linear-probe top-1 {m['top1']:.4f} (95% CI {ci}), {FEW_SHOT}-shot {m[shot]:.4f} over seeds "
            f"{m['seeds']} ({timings['methods'][method]['seconds']} s)")
        print(f"train_contrastive {metrics['pool']} {method}: {result}")


if __name__ == "__main__":
    run_stage(main)
