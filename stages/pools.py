"""Stage ``pools``: ``params.yaml``'s pools -> ``OUT/<name>.json`` (mixes by reference, no copies).

    python stages/pools.py [--study bias] OUT        # dvc.yaml: python stages/pools.py data/pools
"""

import shutil
from pathlib import Path

from factory.config import load_params
from factory.core.files import replace_dir, staging_dir
from factory.core.stage import run_stage, stage_args
from factory.data.pools import build_pool, write_pool


def main() -> None:
    args = stage_args(__doc__,
                      ("out", "the folder of pool files to write (replaced as a whole)"), study=True)
    params = load_params().study(args.study)
    out = Path(args.out)
    stage = staging_dir(out)
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    for spec in params.pools.specs:
        pool = build_pool(spec)
        write_pool(pool, stage / f"{spec.name}.json")
        print(f"pool {spec.name}: {pool['samples']} samples ({pool['sources']}, "
              f"synthetic fraction {pool['synthetic_fraction']:.2f})")
    replace_dir(stage, out)


if __name__ == "__main__":
    run_stage(main)
