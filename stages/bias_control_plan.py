"""Stage ``bias_control_plan``: ``bias.plan`` with each class's images split over the colour cells as in
the biased real train split -> the control plan (same size as the balanced plan, biased like real train).

    python stages/bias_control_plan.py TRAIN OUT
    # dvc.yaml: python stages/bias_control_plan.py data/bias/real/train data/bias/prompts/control.jsonl
"""


from factory.config import load_params
from factory.core.stage import run_stage, stage_args
from factory.generate.plans import count_table, write_plan
from factory.measure.bias import control_plan


def main() -> None:
    args = stage_args(__doc__,
                      ("train", "the biased real train split whose class x colour counts the plan copies"),
                      ("out", "the plan file to write"))
    plan = control_plan(load_params().study("bias").plan, args.train)
    write_plan(plan, args.out)
    print(count_table(plan))


if __name__ == "__main__":
    run_stage(main)
