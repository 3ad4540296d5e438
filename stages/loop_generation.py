"""Stage ``loop_generation@<run>-<k>``: generation k of a loop run (its pool, generator, samples, metrics).

    python stages/loop_generation.py RUN K --schedule DIR --reference DIR --test DIR --val DIR
    # loop/dvc.yaml: python stages/loop_generation.py ${item.run} ${item.gen.k} --schedule data/loop/schedule ...

Reads its settings from its schedule entry only (factory/loops/schedule.py). A generation past
``loop.generations`` writes a note into each output and does nothing else.
"""

from pathlib import Path

from factory.core.errors import FactoryError
from factory.core.stage import run_stage, stage_args


def main() -> None:
    args = stage_args(__doc__, ("run", "the run's name (loop.runs)"), ("k", "the generation (1, 2, ...)"),
                      ("--schedule", "the schedule folder (loop_schedule's output)"),
                      ("--reference", "the reference CNN folder (loop_reference's output)"),
                      ("--test", "real test"), ("--val", "real val"))
    from factory.loops.paths import check_previous, write_inactive
    from factory.loops.schedule import read_entry

    try:
        k = int(args.k)
    except ValueError:
        raise FactoryError(f"generation must be an integer; got {args.k!r}") from None
    entry = read_entry(args.schedule, args.run, k)
    if not entry["active"]:
        write_inactive(args.run, k, _generations(args.schedule, args.run))
        print(f"loop {args.run} g{k}: inactive (past loop.generations)")
        return
    if k > 1:
        check_previous(args.run, k)
    from factory.loops.generation import run_generation

    row = run_generation(args.run, k, entry, reference=Path(args.reference), real_test=Path(args.test),
                         real_val=Path(args.val))
    print(f"loop {args.run} g{k}: fd {row['fd']:.3f}, kid {row['kid']:.4f}, recognition {row['recognition']}, "
          f"cas {row['cas']:.3f}, diversity {row['diversity']['mean_pairwise_distance']:.3f}, "
          f"denoise loss {row['denoise_loss']['mean']:.4f}; timings {row['timings']}")


def _generations(schedule: str, run: str) -> int:
    return sum(1 for p in Path(schedule).glob(f"{run}-g*.json") if '"active":true' in p.read_text())


if __name__ == "__main__":
    run_stage(main)
