"""Does SIMS negative guidance improve the base model here, and at which w? (Alemohammad et al. 2024)

At generation 1 (the main generator), for every auxiliary budget B of ``loop.sims_study.steps``: fine-tune
the base on its own samples for B steps (the auxiliary model), then sample the same plan with
eps = (1 + w) eps_base - w eps_aux for every w of ``loop.sims_study.w`` (w = 0: the base alone, made once),
and compare each set with REAL VAL (a design choice: the loop's default w is read from this table, so test
takes no part) in the independent reference CNN's space: FD and KID with bootstrap intervals at one n, and
the recognition rate. The floor is real train against real val (the reference CNN's own training images:
a lower floor than held-out data would give; it sets the scale of noise, not a target).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from factory.config import EmbeddedTrainConfig, LoopParams
from factory.core.shards import Dataset
from factory.core.stats import overlaps
from factory.loops.generation import _sample, class_counts, loop_plan, make_auxiliary

log = logging.getLogger(__name__)


def _w_name(w: float) -> str:
    return f"w{w:g}".replace(".", "p")


def sims_study(lp: LoopParams, base: EmbeddedTrainConfig, out_root: Path, *, reference: Path, real_val: Path,
               real_train: Path) -> dict[str, Any]:
    """Run the study; samples under ``out_root/data``, auxiliary models under ``out_root/models``."""
    from factory.measure.dataset_eval import dataset_features
    from factory.measure.features import ReferenceFeatures
    from factory.measure.matched import compare_matched, matched_size
    from factory.measure.recognition import load_reference_classifier

    start = time.perf_counter()
    st = lp.sims_study
    generator = Path(lp.generator)
    real_ds, val_ds = Dataset(real_train), Dataset(real_val)
    n_images = st.images or len(val_ds)
    plan = loop_plan(real_ds.classes, class_counts(real_ds), n_images, 1, lp.seed, prefix="study-")
    sets: dict[str, Path] = {}
    setting: dict[str, dict[str, Any]] = {}
    data, models = out_root / "data", out_root / "models"
    data.mkdir(parents=True, exist_ok=True)
    models.mkdir(parents=True, exist_ok=True)
    sets["w0"] = data / "w0"
    _sample(plan, data / "plan.jsonl", generator, sets["w0"], lp, "sims-study-w0")
    setting["w0"] = {"w": 0.0, "steps": None}
    aux_info = {}
    for b in st.steps:
        aux = models / f"aux-b{b}"
        aux_info[b] = make_auxiliary(generator, data / f"aux-samples-b{b}", aux, data / f"aux-plan-b{b}.jsonl",
                                     real_ds, 1, lp, base, b)
        for w in st.w:
            if w == 0:
                continue
            name = f"{_w_name(w)}-b{b}"
            sets[name] = data / name
            _sample(plan, data / f"plan-{name}.jsonl", generator, sets[name], lp, f"sims-study-{name}", (aux, w))
            setting[name] = {"w": float(w), "steps": b}
    model, _ = load_reference_classifier(reference)
    views = {"reference_cnn": ReferenceFeatures(model, trained_on=real_ds.ref())}
    ref = dataset_features(val_ds, views)
    feats = {name: dataset_features(Dataset(p), views, classifier=model) for name, p in sets.items()}
    floor = dataset_features(real_ds, views)
    m = lp.measure
    n = matched_size({"val": len(val_ds), "train": len(real_ds), **{k: len(f) for k, f in feats.items()}}, m.n, k=m.k)
    compared = compare_matched(ref.features["reference_cnn"],
                               {"floor": floor.features["reference_cnn"],
                                **{k: f.features["reference_cnn"] for k, f in feats.items()}},
                               n=n, draws=m.draws, bootstrap=m.bootstrap, k=m.k, seed=lp.seed)
    base_row = compared["w0"]
    rows = []
    for name in sets:
        c = compared[name]
        rows.append({"set": name, **setting[name], "fd": c["fd"], "fd_ci95": c["fd_ci95"], "kid": c["kid"],
                     "kid_ci95": c["kid_ci95"], "precision": c["precision"], "recall": c["recall"],
                     "recognition": (feats[name].recognition or {}).get("overall"),
                     "vs_w0": {mm: ("within noise" if overlaps(c[f"{mm}_ci95"], base_row[f"{mm}_ci95"]) else
                                    ("lower" if c[mm] < base_row[mm] else "higher")) for mm in ("fd", "kid")}})
    best = min(rows, key=lambda r: r["fd"])
    out = {"reference": "real val", "encoder": "reference CNN (trained on real train only)", "n": n,
           "draws": m.draws, "bootstrap": m.bootstrap, "images": n_images,
           "floor": {"label": "real train vs real val (the reference CNN's training images: a low floor)",
                     **{k: compared["floor"][k] for k in ("fd", "fd_ci95", "kid", "kid_ci95")}},
           "auxiliary": {str(b): v for b, v in aux_info.items()}, "rows": rows,
           "best_fd": {"set": best["set"], "w": best["w"], "steps": best["steps"],
                       "vs_w0": best["vs_w0"]},
           "seconds": round(time.perf_counter() - start, 1)}
    log.info("SIMS study: %s", [(r["set"], round(r["fd"], 3), r["vs_w0"]) for r in rows])
    return out
