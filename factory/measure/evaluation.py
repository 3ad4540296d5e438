"""Stage-level evaluation of synthetic datasets: quality metrics, recognition rate and CAS, side by side.

For each named synthetic dataset: Frechet distance, precision/recall and density/coverage against the
real test split in an encoder's feature space (:mod:`factory.dataset_metrics`), the recognition rate by
a reference CNN trained on REAL train images, class and attribute balance, and optionally the
Classification Accuracy Score (a classifier trained on the dataset alone, tested on real). The
guidance scale each dataset was made with is read from its provenance, so the guidance trade-off
(fidelity against usefulness for training) is one table and one plot.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Mapping

from factory.config import Component, EvaluationConfig, PoolSpec
from factory.core.errors import FactoryError
from factory.core.shards import Dataset
from factory.data.pools import build_pool
from factory.measure.dataset_eval import evaluate_dataset
from factory.measure.features import feature_extractor
from factory.measure.recognition import train_reference_classifier
from factory.train.classifier import train_classifier

log = logging.getLogger(__name__)


def generator_settings(dataset: Dataset) -> dict[str, Any]:
    """Guidance scale, steps and scheduler of a synthetic dataset (from its first sample's provenance)."""
    for rec in dataset.records():
        g = rec.get("generator") or {}
        return {"guidance_scale": g.get("guidance_scale"), "steps": g.get("steps"), "scheduler": g.get("scheduler"),
                "source": rec.get("source")}
    raise FactoryError(f"{dataset.path}: the dataset is empty")


def evaluate_datasets(cfg: EvaluationConfig, progress=None) -> dict[str, Any]:
    """Every dataset of ``cfg.datasets`` against ``cfg.reference``; JSON-ready."""
    if not cfg.datasets:
        raise FactoryError("evaluate.datasets is empty: name at least one synthetic dataset")
    start = time.perf_counter()
    ref_model, ref_info = train_reference_classifier(cfg.train, epochs=cfg.reference_epochs, seed=cfg.seed,
                                                   test=cfg.reference)
    extractor = feature_extractor(cfg.encoder, cfg.encoder_path)
    out: dict[str, Any] = {
        "reference": Dataset(cfg.reference).ref(),
        "encoder": extractor.describe(),
        "reference_classifier": {"test_accuracy": ref_info.get("test_accuracy"), "images": ref_info["images"],
                                 "epochs": ref_info["epochs"]},
        "datasets": {},
    }
    for name, path in cfg.datasets.items():
        ds = Dataset(path)
        metrics = evaluate_dataset(ds, cfg.reference, extractor, k=cfg.k, classifier=ref_model)
        row: dict[str, Any] = {"path": str(path), "samples": len(ds), **generator_settings(ds),
                               **{m: metrics["overall"][m] for m in ("fd", "precision", "recall", "density",
                                                                     "coverage")},
                               "recognition": (metrics.get("recognition") or {}).get("overall"),
                               "class_balance_tv": metrics["class_balance"]["tv_from_uniform"],
                               "attribute_balance": {a: v["tv_from_uniform"]
                                                     for a, v in metrics["attribute_balance"].items()},
                               "per_class": metrics["per_class"],
                               "recognition_per_class": (metrics.get("recognition") or {}).get("per_class")}
        if name in cfg.cas:
            pool = build_pool(PoolSpec(name=f"cas-{name}", components=(Component(dataset=str(path)),), seed=cfg.seed))
            _, cas = train_classifier(pool, cfg.reference, cfg.classifier)
            row["cas"] = cas["top1"]
            row["cas_per_class"] = cas["per_class"]
        out["datasets"][name] = row
        log.info("evaluate %s: %s", name, {k: v for k, v in row.items() if not isinstance(v, dict)})
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
                     **{k: d.get(k) for k in ("cas", "recognition", "fd", "precision", "recall", "density",
                                              "coverage")}})
    return sorted(rows, key=lambda r: (r["guidance_scale"], r["dataset"]))
