"""Stage ``pools``: ``params.yaml``'s pools -> ``OUT/<name>.json`` (mixes by reference, no copies).

    python stages/pools.py [--study bias] OUT        # dvc.yaml: python stages/pools.py data/pools

OUT is replaced as a whole, and only if it is new, empty or a folder of pool files (never inside or
around a dataset a pool draws from); its lock is held while it is written.
"""

import json
from pathlib import Path

from factory.config import load_params
from factory.core.outputs import OutputDir
from factory.core.stage import run_stage, stage_args
from factory.data.pools import POOL_SCHEMA, build_pool, write_pool


def pools_problem(folder: Path) -> str | None:
    """What keeps ``folder`` from being replaced as a folder of pool files, or None."""
    for p in sorted(folder.iterdir()):
        if p.name.startswith(".") and ".tmp" in p.name:
            continue
        try:
            ok = p.suffix == ".json" and p.is_file() and json.loads(p.read_bytes()).get("schema") == POOL_SCHEMA
        except (OSError, ValueError, AttributeError):
            ok = False
        if not ok:
            return f"is not a folder of pool files ({p.name} is not a {POOL_SCHEMA} file)"
    return None


def main() -> None:
    args = stage_args(__doc__,
                      ("out", "the folder of pool files to write (replaced as a whole)"), study=True)
    params = load_params().study(args.study)
    datasets = [c.dataset for spec in params.pools.specs for c in spec.components]
    with OutputDir(args.out, inputs=datasets, overwrite=True, replaceable=pools_problem) as out:
        for spec in params.pools.specs:
            pool = build_pool(spec)
            write_pool(pool, out.staging / f"{spec.name}.json")
            print(f"pool {spec.name}: {pool['samples']} samples ({pool['sources']}, "
                  f"synthetic fraction {pool['synthetic_fraction']:.2f})")


if __name__ == "__main__":
    run_stage(main)
