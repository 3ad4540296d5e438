"""Stage ``plan``: ``params.yaml`` plan + the real train classes -> ``data/prompts/plan.jsonl``."""

from factory.config import load_params, plan_config
from factory.prompts import build_plan, count_table, write_plan
from factory.shards import Dataset
from factory.stage import run_stage

OUT = "data/prompts/plan.jsonl"


def main() -> None:
    params = load_params()
    plan = build_plan(plan_config(params), Dataset(params.plan.dataset).classes)
    write_plan(plan, OUT)
    print(count_table(plan))


if __name__ == "__main__":
    run_stage(main)
