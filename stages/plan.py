"""Stage ``plan``: ``params.yaml``'s ``plan`` + the classes of a real dataset -> a prompt plan (JSON lines).

    python stages/plan.py [--study bias] DATASET OUT
    # dvc.yaml: python stages/plan.py ${plan.dataset} data/prompts/plan.jsonl
"""

import argparse

from factory.config import load_params
from factory.core.shards import Dataset
from factory.core.stage import run_stage
from factory.generate.plans import build_plan, count_table, write_plan


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--study", default=None, help="e.g. bias: read bias.plan instead of plan")
    ap.add_argument("dataset", help="the real dataset whose classes the plan uses")
    ap.add_argument("out", help="the plan file to write")
    args = ap.parse_args()
    params = load_params().study(args.study)
    plan = build_plan(params.plan, Dataset(args.dataset).classes)
    write_plan(plan, args.out)
    print(count_table(plan))


if __name__ == "__main__":
    run_stage(main)
