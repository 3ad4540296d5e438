"""Choose the default sampler on the real VAL split: DDIM at 20 steps against DPM-Solver++ at 6 steps.

    python bench/sampler.py [--plan data/prompts/plan.jsonl] [--out /tmp/sampler] [--val data/real/val]
                            [--sheets docs]

Run in a repository where ``dvc repro`` has run (it needs the plan, ``models/generator``, the real train and
val splits and ``models/clip``). Both samplers make the whole plan with the same generator, guidance and
seeds, side by side in one run: images/s of each and their ratio; then both datasets are evaluated against
REAL VAL (never test: this chooses a default) exactly as the ``evaluate`` stage evaluates against test: the
reference CNN's features, FD, KID, precision/recall, density/coverage at one n with bootstrap intervals, the
recognition rate and the CAS over ``classifier.seeds``. Prints one JSON object. ``--sheets DIR`` also writes
each sampler's contact sheet, ``DIR/sampler-<name>.png`` (the README's pictures: same plan, same seeds, the
first 12 per class by a seeded hash of their keys, as the report's sheets choose them).
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

SAMPLERS = {"ddim20": ("ddim", 20), "dpm6": ("dpm", 6)}
KEYS = ("recognition", "cas", "cas_ci95", "fd", "fd_ci95", "kid", "kid_ci95", "precision", "precision_ci95",
        "recall", "recall_ci95", "density", "density_ci95", "coverage", "coverage_ci95")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--plan", default="data/prompts/plan.jsonl")
    ap.add_argument("--out", default="/tmp/sampler")
    ap.add_argument("--val", default="data/real/val")
    ap.add_argument("--floor", default="data/real/train",
                    help="the real-vs-real floor (must differ from --val; real train is what the CNN saw)")
    ap.add_argument("--sheets", default=None, help="a folder for each sampler's contact sheet (sampler-<name>.png)")
    args = ap.parse_args()

    from factory.config import load_params
    from factory.generate.tasks import generate
    from factory.measure.evaluation import evaluate_datasets

    params = load_params()
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    result: dict = {"samplers": {}}
    for name, (scheduler, steps) in SAMPLERS.items():
        cfg = params.generate.replace(scheduler=scheduler, steps=steps)
        start = time.perf_counter()
        summary = generate(args.plan, out / name, cfg)
        seconds = time.perf_counter() - start
        result["samplers"][name] = {"scheduler": scheduler, "steps": steps, "images": summary.samples,
                                    "seconds": round(seconds, 1), "images_per_second": round(summary.samples / seconds, 2)}
    s = result["samplers"]
    result["speed_ratio_dpm6_over_ddim20"] = round(s["dpm6"]["images_per_second"] / s["ddim20"]["images_per_second"], 3)
    ev_cfg = params.evaluate.replace(reference=args.val, floor=args.floor,
                                     datasets={n: str(out / n) for n in SAMPLERS}, cas=tuple(SAMPLERS), guidance=())
    ev = evaluate_datasets(ev_cfg)
    result["evaluated_against"] = args.val
    result["n"] = ev["n"]
    result["floor"] = {k: ev["floor"].get(k) for k in KEYS if k in ev["floor"]}
    for name in SAMPLERS:
        d = ev["datasets"][name]
        result["samplers"][name].update({k: d.get(k) for k in KEYS},
                                        within_noise_of_floor=d.get("within_noise"))
    if args.sheets:
        from factory.core.files import atomic_write_bytes
        from factory.measure import sheets

        for name in SAMPLERS:
            labelled = [(r.name, [sheets.tile(x, 32) for x in r.samples]) for r in sheets.rows(out / name, 12)]
            atomic_write_bytes(Path(args.sheets) / f"sampler-{name}.png",
                               sheets.png(sheets.sheet(labelled, 32, f"{name}: {out / name}")))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
