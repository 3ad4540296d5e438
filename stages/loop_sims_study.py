"""Stage ``loop_sims_study``: SIMS negative guidance at generation 1, against real val, for every w and budget.

    python stages/loop_sims_study.py OUT_ROOT --reference DIR --train DIR --val DIR --metrics FILE --plot FILE
    # loop/dvc.yaml: python stages/loop_sims_study.py data/loop/sims_study --reference models/loop/reference ...
"""

from pathlib import Path

from factory.config import load_params
from factory.core.files import write_json
from factory.core.stage import run_stage, stage_args


def main() -> None:
    args = stage_args(__doc__, ("out", "the study's folder (samples, auxiliary models)"),
                      ("--reference", "the reference CNN folder"), ("--train", "real train"), ("--val", "real val"),
                      ("--metrics", "the study's table (JSON)"), ("--plot", "its plot rows (JSON)"))
    from factory.loops.sims_study import sims_study

    params = load_params()
    result = sims_study(params.loop, params.train_generator, Path(args.out), reference=Path(args.reference),
                        real_val=Path(args.val), real_train=Path(args.train))
    result.pop("seconds", None)
    write_json(args.metrics, result)
    write_json(args.plot, [{"w": r["w"], "steps": r["steps"] if r["steps"] is not None else 0,
                            "budget": f"B={r['steps']}" if r["steps"] else "base", "fd": r["fd"], "kid": r["kid"],
                            "recognition": r["recognition"]} for r in result["rows"]])
    best = result["best_fd"]
    print(f"loop_sims_study: lowest FD at w={best['w']} (B={best['steps']}): {best['vs_w0']} against w=0")


if __name__ == "__main__":
    run_stage(main)
