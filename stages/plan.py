"""Stage ``plan``: ``params.yaml``'s ``plan`` + the classes of a real dataset -> a prompt plan (JSON lines).

    python stages/plan.py [--study bias] DATASET OUT
    # dvc.yaml: python stages/plan.py ${plan.dataset} data/prompts/plan.jsonl
"""


from factory.config import load_params
from factory.core.stage import run_stage, stage_args
from factory.generate.plans import count_table, plan_for, write_plan


def main() -> None:
    args = stage_args(__doc__,
                      ("dataset", "the real dataset whose classes the plan uses"),
                      ("out", "the plan file to write"), study=True)
    params = load_params().study(args.study)
    plan = plan_for(params.plan, args.dataset)
    write_plan(plan, args.out)
    print(count_table(plan))


if __name__ == "__main__":
    run_stage(main)
