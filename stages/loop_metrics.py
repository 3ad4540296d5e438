"""Stage ``loop_metrics@<run>``: one run's per-generation metrics -> metrics/loop/<run>.json and its plot rows.

    python stages/loop_metrics.py RUN ROWS_DIR --metrics FILE --plot FILE
    # loop/dvc.yaml: python stages/loop_metrics.py ${key} metrics/loop/${key}
    #                --metrics metrics/loop/${key}.json --plot plots/loop/${key}.json
"""

import json
from pathlib import Path

from factory.core.errors import FactoryError
from factory.core.files import write_json
from factory.core.stage import run_stage, stage_args

PLOTTED = ("fd", "kid", "precision", "recall", "recognition", "cas")


def main() -> None:
    args = stage_args(__doc__, ("run", "the run's name"), ("rows", "the folder of its g<k>.json rows"),
                      ("--metrics", "the run's metrics file to write"), ("--plot", "the plot rows to write"))
    from factory.config import load_params
    from factory.measure.loop_rows import summarise_rows

    rows = []
    for k in range(1, load_params().loop.max_generations + 1):  # the files loop/dvc.yaml declares, no stale one
        path = Path(args.rows) / f"g{k}.json"
        if not path.is_file():
            continue
        row = json.loads(path.read_text())
        if row.get("active"):
            rows.append(row)
    if not rows:
        raise FactoryError(f"{args.rows}: no generation of run {args.run!r} has metrics")
    ks = [r["generation"] for r in rows]
    if ks != list(range(1, len(ks) + 1)):
        raise FactoryError(f"{args.rows}: generations {ks} of run {args.run!r} are not 1..{len(ks)}")
    summary = {"run": args.run, "policy": rows[0]["policy"], "sampler": rows[0]["sampler"],
               "corrector": rows[0]["corrector"], **summarise_rows(rows)}
    write_json(args.metrics, summary)
    write_json(args.plot, [{"generation": r["generation"], **{m: r.get(m) for m in PLOTTED},
                            "diversity": r["diversity"]["mean_pairwise_distance"],
                            "near_duplicate_rate": r["diversity"]["near_duplicate_rate"],
                            "denoise_loss": r["denoise_loss"]["mean"]} for r in rows])
    last = rows[-1]
    print(f"loop_metrics {args.run}: {len(rows)} generation(s); last: fd {last['fd']:.3f}, cas {last['cas']:.3f}")


if __name__ == "__main__":
    run_stage(main)
