"""Stage-level evaluation of synthetic datasets: quality metrics, recognition rate and CAS, side by side.

Every named synthetic dataset, and a real-vs-real floor, is compared with the real reference (the test
split) at ONE sample count n, over seeded draws, with bootstrap 95% intervals (:mod:`factory.measure.matched`):
FD, KID, precision, recall, density and coverage. The default feature space is one that took no part in
curation: the penultimate layer of the reference CNN trained on real train only (the same model that
measures the recognition rate, trained once). The CLIP scorer's space (the curation filter's: not
independent) is a second, labelled view, and Inception v3 a third when its weights file is on disk.
A dataset's metric is "within noise" when its interval overlaps the floor's. Also: class and attribute
balance, and optionally the Classification Accuracy Score (a classifier trained on the dataset alone,
tested on real). The guidance scale each dataset was made with is read from its provenance, so the
guidance trade-off (fidelity against usefulness for training) is one table and one plot.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Mapping

from factory.config import EvaluationConfig
from factory.core.errors import FactoryError
from factory.core.shards import Dataset
from factory.core.stats import overlaps
from factory.curate.audit import reference_levels
from factory.data.attributes import STYLE_AXES, Levels
from factory.data.pools import dataset_pool
from factory.measure.dataset_eval import DatasetFeatures, dataset_features
from factory.measure.features import FeatureExtractor, InceptionFeatures, ReferenceFeatures, feature_extractor
from factory.measure.matched import compare_matched, matched_size
from factory.measure.metrics import METRIC_NAMES, balance_fields
from factory.measure.recognition import train_reference_classifier
from factory.train.classifier import train_classifier_seeds

log = logging.getLogger(__name__)


FLOOR = "real (floor)"


PRIMARY = "reference_cnn"  # the view whose numbers are each row's top-level fields


LABELS = {
    "reference_cnn": "reference CNN (trained on real train only: independent of curation)",
    "clip": "CLIP (the curation filter's space: not independent)",
    "inception": "Inception v3 (ImageNet weights: independent)",
}


def floor_note(floor: Dataset, train: Dataset) -> str:
    """What the floor is: held-out real data, or (a weaker floor) the reference CNN's own training images."""
    if floor.path.resolve() == train.path.resolve() or floor.index_sha256 == train.index_sha256:
        return ("real train: in the reference CNN's space these are the images it was trained on, so the floor "
                "there is larger than a held-out one would be")
    return "held-out real images (no model of the pipeline was trained on them), against the real test split"


def generator_settings(dataset: Dataset) -> dict[str, Any]:
    """Guidance scale, steps and scheduler of a synthetic dataset (from its first sample's provenance)."""
    for rec in dataset.records():
        g = rec.get("generator") or {}
        return {"guidance_scale": g.get("guidance_scale"), "steps": g.get("steps"), "scheduler": g.get("scheduler"),
                "source": rec.get("source")}
    raise FactoryError(f"{dataset.path}: the dataset is empty")


def feature_views(cfg: EvaluationConfig, reference_cnn: ReferenceFeatures
                  ) -> tuple[dict[str, FeatureExtractor], dict[str, str]]:
    """The feature spaces of an evaluation (view name -> extractor; the reference CNN's first) and the views
    left out with the reason (an Inception weights file that is not on disk)."""
    views: dict[str, FeatureExtractor] = {PRIMARY: reference_cnn,
                                          cfg.encoder: feature_extractor(cfg.encoder, cfg.encoder_path,
                                                                         checkpoint=cfg.encoder_checkpoint)}
    skipped = {}
    if cfg.inception_path and "inception" not in views:
        if Path(cfg.inception_path).is_file():
            views["inception"] = InceptionFeatures(cfg.inception_path)
        else:
            skipped["inception"] = f"{cfg.inception_path}: not on disk"
            log.warning("evaluate: no Inception view (%s is not on disk)", cfg.inception_path)
    return views, skipped


def _check_floor(floor: Dataset, reference: Dataset) -> None:
    if floor.path.resolve() == reference.path.resolve() or floor.index_sha256 == reference.index_sha256:
        raise FactoryError(f"evaluate.floor: {floor.path} is the reference dataset itself; the floor must be "
                           "real data disjoint from it (real val)")


def _metrics(row: Mapping[str, Any], floor: Mapping[str, Any] | None) -> dict[str, Any]:
    """The six metrics, their intervals, per-draw values and (against ``floor``) ``within_noise``."""
    out = {m: row[m] for m in METRIC_NAMES}
    out.update({f"{m}_ci95": row[f"{m}_ci95"] for m in METRIC_NAMES})
    if floor is not None:
        out["within_noise"] = {m: overlaps(row[f"{m}_ci95"], floor[f"{m}_ci95"]) for m in METRIC_NAMES}
    out["per_draw"] = row["per_draw"]
    return out


def _row(name: str, feats: DatasetFeatures, compared: Mapping[str, Mapping[str, Any]], floor: bool) -> dict[str, Any]:
    """One row of evaluate.json: the primary view's metrics at the top, the other views under ``views``."""
    def metrics(view: str) -> dict[str, Any]:
        return _metrics(compared[view][name], None if floor else compared[view][FLOOR])

    return {"path": str(feats.dataset.path), "samples": len(feats), **metrics(PRIMARY),
            "views": {v: metrics(v) for v in compared if v != PRIMARY}}


def evaluate_datasets(cfg: EvaluationConfig, progress=None) -> dict[str, Any]:
    """Every dataset of ``cfg.datasets``, and the floor ``cfg.floor``, against ``cfg.reference``; JSON-ready."""
    if not cfg.datasets:
        raise FactoryError("evaluate.datasets is empty: name at least one synthetic dataset")
    start = time.perf_counter()
    reference, floor_ds = Dataset(cfg.reference), Dataset(cfg.floor)
    _check_floor(floor_ds, reference)
    compared_sets = {FLOOR: floor_ds, **{name: Dataset(path) for name, path in cfg.datasets.items()}}
    n = matched_size({str(reference.path): len(reference), **{str(d.path): len(d) for d in compared_sets.values()}},
                     cfg.n, k=cfg.k)  # before any training: a bad n fails at once
    # 1. the reference CNN, trained once on real train: recognition rate and the independent feature space
    ref_model, ref_info = train_reference_classifier(cfg.train, epochs=cfg.reference_epochs, seed=cfg.seed,
                                                     test=reference)
    views, skipped = feature_views(cfg, ReferenceFeatures(ref_model, trained_on=Dataset(cfg.train).ref()))
    # 2. features of every set in every view (one pass each; recognition on the synthetic ones)
    ref = dataset_features(reference, views)
    sets = {name: dataset_features(ds, views, classifier=None if name == FLOOR else ref_model)
            for name, ds in compared_sets.items()}
    # 3. every set against the reference at one n, in every view
    compared = {v: compare_matched(ref.features[v], {s: f.features[v] for s, f in sets.items()}, n=n,
                                   draws=cfg.draws, bootstrap=cfg.bootstrap, k=cfg.k, seed=cfg.seed)
                for v in views}
    out: dict[str, Any] = {
        "reference": reference.ref(),
        "encoder": views[PRIMARY].describe(),
        "views": {v: {"label": LABELS[v], "independent": v != "clip", **e.describe()} for v, e in views.items()},
        "views_skipped": skipped,
        "n": n, "draws": cfg.draws, "bootstrap": cfg.bootstrap, "k": cfg.k, "seed": cfg.seed,
        "reference_classifier": {"test_accuracy": ref_info.get("test_accuracy"), "images": ref_info["images"],
                                 "epochs": ref_info["epochs"]},
        "floor": {"label": FLOOR, **_row(FLOOR, sets[FLOOR], compared, floor=True),
                  "note": floor_note(floor_ds, Dataset(cfg.train))},
        "datasets": {},
    }
    levels: list[Levels] = []

    def style_levels(axes: Mapping[str, Any]) -> Levels | None:
        """Per-class thickness/slant tertiles of real train, fit once, when a dataset requests style axes."""
        if not any(a in STYLE_AXES for a in axes):
            return None
        if not levels:
            levels.append(reference_levels(cfg.train))
        return levels[0]

    for name, path in cfg.datasets.items():
        feats = sets[name]
        summary = feats.summary(reference.classes)
        rec = summary.get("recognition") or {}
        row: dict[str, Any] = {**_row(name, feats, compared, floor=False), **generator_settings(feats.dataset),
                               "recognition": rec.get("overall"),
                               "class_balance_tv": summary["class_balance"]["tv_from_uniform"],
                               **balance_fields(feats.dataset, summary["attribute_balance"],
                                                style_levels(summary["attribute_balance"])),
                               "recognition_per_class": rec.get("per_class")}
        if name in cfg.cas:
            pool = dataset_pool(path, f"cas-{name}", cfg.seed)
            cas = train_classifier_seeds(pool, cfg.reference, cfg.classifier)  # classifier.seeds: mean, CI
            row.update(cas=cas["top1_mean"], cas_ci95=cas["top1_ci95"], cas_per_seed=cas["top1_per_seed"],
                       cas_seeds=cas["seeds"], cas_per_class=cas["per_class"])
        out["datasets"][name] = row
        log.info("evaluate %s at n=%d: %s", name, n, {k: v for k, v in row.items() if not isinstance(v, (dict, list))})
        if progress is not None:
            progress(name)
    out["seconds"] = round(time.perf_counter() - start, 1)
    return out


def guidance_rows(evaluation: Mapping[str, Any], names: list[str] | None = None) -> list[dict[str, Any]]:
    """One row per evaluated dataset with a guidance scale (``names``: only these), sorted by scale:
    the data of the guidance trade-off plot."""
    rows = []
    for name, d in evaluation["datasets"].items():
        if d.get("guidance_scale") is None or (names is not None and name not in names):
            continue
        rows.append({"dataset": name, "guidance_scale": d["guidance_scale"],
                     **{k: d.get(k) for k in ("cas", "recognition", "fd", "kid", "precision", "recall",
                                              "density", "coverage")}})
    return sorted(rows, key=lambda r: (r["guidance_scale"], r["dataset"]))
