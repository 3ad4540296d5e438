"""Stage ``loop_schedule``: params.yaml's ``loop`` section -> one schedule entry per run and generation.

    python stages/loop_schedule.py OUT_DIR
    # loop/dvc.yaml: python stages/loop_schedule.py data/loop/schedule

The generation stages read their settings from these entries, not from params.yaml: an inactive
generation's entry says only that, so raising ``loop.generations`` reruns the new generations alone
(see factory/loops/schedule.py).
"""

from factory.config import load_params
from factory.core.stage import run_stage, stage_args
from factory.loops.schedule import write_schedule


def main() -> None:
    args = stage_args(__doc__, ("out", "the schedule folder to write"))
    params = load_params()
    active = write_schedule(params, args.out)
    print(f"loop_schedule: {len(active)} active generation(s) over {len(params.loop.runs)} run(s): "
          f"{', '.join(a.removesuffix('.json') for a in active)}")


if __name__ == "__main__":
    run_stage(main)
