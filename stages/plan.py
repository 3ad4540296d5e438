"""Stage ``plan``: ``params.yaml`` plan + the real train classes -> ``data/prompts/plan.jsonl``."""

import argparse

from factory.config import load_params, plan_config, study_path
from factory.core.shards import Dataset
from factory.core.stage import run_stage
from factory.generate.plans import build_plan, count_table, write_plan

OUT = "data/prompts/plan.jsonl"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--study", default=None, help="e.g. bias: read bias.plan, write data/bias/prompts/plan.jsonl")
    args = ap.parse_args()
    params = load_params().study(args.study)
    plan = build_plan(plan_config(params), Dataset(params.plan.dataset).classes)
    write_plan(plan, study_path(OUT, args.study))
    print(count_table(plan))


if __name__ == "__main__":
    run_stage(main)
