"""Stage ``loop_first``: generation 1 of every loop run (the main generator's samples, their metrics).

    python stages/loop_first.py RUN [RUN ...] --schedule DIR --reference DIR --test DIR --val DIR

One process for every run (loop/dvc.yaml lists them): runs whose first generation samples the same plan with
the same model are measured once (their rows say ``measured_as``). Reads each run's settings from its
schedule entry only (factory/loops/schedule.py).
"""

from pathlib import Path

from factory.core.stage import run_stage, stage_args


def main() -> None:
    args = stage_args(__doc__, ("runs", "the runs' names (loop.runs)", {"nargs": "+"}),
                      ("--schedule", "the schedule folder (loop_schedule's output)"),
                      ("--reference", "the reference CNN folder (loop_reference's output)"),
                      ("--test", "real test"), ("--val", "real val"))
    from factory.loops.generation import run_first
    from factory.loops.schedule import read_entry

    entries = {run: read_entry(args.schedule, run, 1) for run in args.runs}
    rows = run_first(entries, reference=Path(args.reference), real_test=Path(args.test), real_val=Path(args.val))
    for run, row in rows.items():
        shared = f" (measured as {row['measured_as']['run']})" if row.get("measured_as") else ""
        print(f"loop {run} g1: fd {row['fd']:.3f}, kid {row['kid']:.4f}, recognition {row['recognition']}, "
              f"cas {row['cas']:.3f}{shared}; timings {row['timings']}")


if __name__ == "__main__":
    run_stage(main)
