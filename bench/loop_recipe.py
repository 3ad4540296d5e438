"""Choose the loop's fine-tuning recipe on the real VAL split, with the real-only control.

    python bench/loop_recipe.py [--generations 5] [--recipe NAME:lr=5e-4,steps=30,warmup=0,ema=restart ...]
                                [--out /tmp/loop_recipe]

Run in a repository where the main pipeline and the loop's reference stage have run (it needs
``models/generator``, ``data/real/train``, ``data/real/val`` and ``models/loop/reference``; ``make loop``
makes them all). For every recipe, a chain of the control policy (``real``): generation k >= 2 fine-tunes
generation k-1 on real train only, as the loop stages do (same seeds, batch, sampler). Generation k's model
samples |real val| images (the loop's plan: class proportions of real train) and the set is compared with
REAL VAL in the reference CNN's space (FD, KID with bootstrap intervals at one n, recognition), beside the
real-vs-real floor (real train against real val). Test takes no part: this chooses a default.

What a good recipe does: on real data alone, fine-tuning must not move the model away from the real
distribution (every generation's FD within noise of generation 1's), so that what a loop run shows comes
from its data and not from the optimiser. Among the recipes that pass, the one that changes the weights the
most (``weight_change``: ||theta_k - theta_1|| / ||theta_1||) is the most plastic. Prints one JSON object
and a table.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

DEFAULT_RECIPES = (
    "restart_5e-4_30:lr=5e-4,steps=30,warmup=0,ema=restart",
    "continue_5e-4_30:lr=5e-4,steps=30,warmup=0,ema=continue",
    "continue_5e-4_20:lr=5e-4,steps=20,warmup=0,ema=continue",
    "continue_1e-3_20:lr=1e-3,steps=20,warmup=0,ema=continue",
    "restart_3e-4_20:lr=3e-4,steps=20,warmup=0,ema=restart",
    "restart_2e-4_30:lr=2e-4,steps=30,warmup=0,ema=restart",
    "restart_2e-4_20:lr=2e-4,steps=20,warmup=0,ema=restart",
    "restart_1e-4_30:lr=1e-4,steps=30,warmup=0,ema=restart",
)


def parse_recipe(text: str) -> tuple[str, dict[str, object]]:
    """``NAME:key=value,...`` (keys: lr, steps, warmup, ema) as (name, settings of loop.train)."""
    name, _, body = text.partition(":")
    out: dict[str, object] = {}
    for item in filter(None, body.split(",")):
        key, _, value = item.partition("=")
        if key == "lr":
            out["lr"] = float(value)
        elif key in ("steps", "warmup"):
            out["steps" if key == "steps" else "warmup_steps"] = int(value)
        elif key == "ema":
            out["ema"] = value
        else:
            raise SystemExit(f"recipe {text!r}: unknown key {key!r} (lr, steps, warmup, ema)")
    if not name or not out:
        raise SystemExit(f"recipe {text!r}: NAME:key=value,... (keys: lr, steps, warmup, ema)")
    return name, out


def weight_change(a: Path, b: Path) -> float:
    """||theta_b - theta_a|| / ||theta_a|| over every tensor of two model folders."""
    import torch
    from safetensors.torch import load_file

    from factory.generate.backends.embedded import WEIGHTS_NAME

    wa, wb = load_file(str(a / WEIGHTS_NAME)), load_file(str(b / WEIGHTS_NAME))
    diff = sum(float(torch.sum((wb[k].float() - wa[k].float()) ** 2)) for k in wa)
    norm = sum(float(torch.sum(wa[k].float() ** 2)) for k in wa)
    return (diff / norm) ** 0.5


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--generations", type=int, default=5)
    ap.add_argument("--recipe", action="append", help="NAME:lr=..,steps=..,warmup=..,ema=restart|continue")
    ap.add_argument("--out", default="/tmp/loop_recipe")
    ap.add_argument("--reference", default="models/loop/reference")
    args = ap.parse_args()

    from factory.config import EmbeddedTrainConfig, load_params
    from factory.core.shards import Dataset
    from factory.core.stats import overlaps
    from factory.data.pools import write_pool
    from factory.loops.generation import _sample, _train_cfg, class_counts, loop_plan
    from factory.loops.lineage import real_pool
    from factory.measure.dataset_eval import dataset_features
    from factory.measure.features import ReferenceFeatures
    from factory.measure.matched import compare_matched, matched_size
    from factory.measure.recognition import load_reference_classifier
    from factory.train.generator import finetune_generator

    params = load_params()
    lp0 = params.loop
    base = params.train_generator
    out = Path(args.out)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    real, val = Dataset(lp0.real), Dataset("data/real/val")
    pool = out / "real.pool.json"
    write_pool(real_pool("control", real.path, seed=lp0.seed), pool)
    recipes = [parse_recipe(r) for r in (args.recipe or DEFAULT_RECIPES)]

    start = time.perf_counter()
    sets: dict[str, Path] = {}
    models: dict[str, Path] = {}

    def sample(tag: str, model: Path, k: int, lp) -> None:
        plan = loop_plan(real.classes, class_counts(real), len(val), k, lp.seed, prefix="bench-")
        sets[tag] = out / "data" / tag
        _sample(plan, out / "plans" / f"{tag}.jsonl", model, sets[tag], lp, f"bench-{tag}")

    g1 = Path(lp0.generator)
    models["g1"] = g1
    sample("g1", g1, 1, lp0)
    seconds: dict[str, float] = {}
    for name, settings in recipes:
        lp = lp0.model_copy(update={"train": lp0.train.model_copy(update=settings)})
        prev = g1
        t = time.perf_counter()
        for k in range(2, args.generations + 1):
            cfg = _train_cfg(lp, EmbeddedTrainConfig.model_validate(base.model_dump()), k)
            dst = out / "models" / name / f"g{k}"
            finetune_generator(prev, pool, cfg, dst, ema=lp.train.ema)
            models[f"{name}/g{k}"] = dst
            sample(f"{name}/g{k}", dst, k, lp)
            prev = dst
        seconds[name] = round(time.perf_counter() - t, 1)

    model, _ = load_reference_classifier(Path(args.reference))
    views = {"reference_cnn": ReferenceFeatures(model, trained_on=real.ref())}
    ref = dataset_features(val, views)
    feats = {tag: dataset_features(Dataset(p), views, classifier=model) for tag, p in sets.items()}
    floor = dataset_features(real, views)
    m = lp0.measure
    n = matched_size({"val": len(val), **{k: len(f) for k, f in feats.items()}}, m.n, k=m.k)
    compared = compare_matched(ref.features["reference_cnn"],
                               {"floor": floor.features["reference_cnn"],
                                **{k: f.features["reference_cnn"] for k, f in feats.items()}},
                               n=n, draws=m.draws, bootstrap=m.bootstrap, k=m.k, seed=lp0.seed)

    def row(tag: str) -> dict[str, object]:
        c = compared[tag]
        return {"fd": round(c["fd"], 2), "fd_ci95": [round(x, 2) for x in c["fd_ci95"]],
                "kid": round(c["kid"], 2), "kid_ci95": [round(x, 2) for x in c["kid_ci95"]],
                "recognition": (feats[tag].recognition or {}).get("overall")}

    g1_row = row("g1")
    result: dict[str, object] = {
        "reference": "real val", "n": n, "draws": m.draws, "bootstrap": m.bootstrap,
        "floor": {"label": "real train vs real val", **{k: compared["floor"][k] for k in ("fd", "fd_ci95")}},
        "g1": g1_row, "recipes": {}}
    for name, settings in recipes:
        rows = []
        for k in range(2, args.generations + 1):
            tag = f"{name}/g{k}"
            r = {"generation": k, **row(tag), "weight_change": round(weight_change(g1, models[tag]), 5)}
            r["vs_g1"] = "within noise" if overlaps(r["fd_ci95"], g1_row["fd_ci95"]) else (
                "lower" if r["fd"] < g1_row["fd"] else "higher")
            rows.append(r)
        result["recipes"][name] = {"settings": settings, "rows": rows, "seconds": seconds[name],
                                   "stable": all(r["vs_g1"] != "higher" for r in rows)}
    stable = {k: v for k, v in result["recipes"].items() if v["stable"]}
    result["chosen"] = (max(stable, key=lambda k: stable[k]["rows"][-1]["weight_change"]) if stable else None)
    result["seconds"] = round(time.perf_counter() - start, 1)
    print(json.dumps(result, indent=1))
    print(f"\nfloor (real train vs val) FD {compared['floor']['fd']:.1f}; generation 1 FD {g1_row['fd']} "
          f"{g1_row['fd_ci95']}, recognition {g1_row['recognition']}")
    print(f"{'recipe':<22} {'k':>2} {'FD':>8} {'FD 95% CI':>18} {'recog':>6} {'dW':>8}  vs g1")
    for name, rec in result["recipes"].items():
        for r in rec["rows"]:
            print(f"{name:<22} {r['generation']:>2} {r['fd']:>8.1f} {str(r['fd_ci95']):>18} "
                  f"{r['recognition']:>6} {r['weight_change']:>8.4f}  {r['vs_g1']}")
    print(f"chosen (stable, largest weight change at the last generation): {result['chosen']}")


if __name__ == "__main__":
    main()
