"""Linear probes of a frozen encoder: features, a logistic-regression probe on real data, few-shot subsets;
and the contrastive benchmark of a pool (each method's encoder trained on it once per seed, then probed
on real data: fit on real train, scored on real test; the probe's ``C`` is a fixed setting, not tuned).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from factory.config import ContrastiveConfig
from factory.core.errors import FactoryError
from factory.core.shards import Dataset
from factory.core.stats import seed_summary
from factory.data.loader import load_pool_tensors
from factory.data.pools import read_pool
from factory.train.classifier import detect_mode
from factory.train.contrastive import GROUPED, ContrastiveEncoder, train_contrastive
from factory.train.loop import Progress
from factory.train.reference import load_split

log = logging.getLogger(__name__)

FEW_SHOT = 10  # the few-shot probe: 10 real labelled images per class


@torch.inference_mode()
def encode_features(encoder: ContrastiveEncoder, x: torch.Tensor, batch_size: int = 512) -> np.ndarray:
    """``encoder.features`` of ``x`` in eval mode, batched; the encoder's train/eval mode is restored."""
    was_training = encoder.training
    encoder.eval()
    try:
        if len(x) == 0:
            return np.empty((0, encoder.feature_dim), dtype=np.float32)
        return torch.cat([encoder.features(x[i:i + batch_size].float())
                          for i in range(0, len(x), batch_size)]).numpy()
    finally:
        encoder.train(was_training)


def linear_probe(encoder: ContrastiveEncoder, train_x: torch.Tensor, train_y: Sequence[int] | torch.Tensor,
                 test_x: torch.Tensor, test_y: Sequence[int] | torch.Tensor, classes: Sequence[str] | None = None,
                 C: float = 1.0) -> dict[str, Any]:
    """Linear-probe accuracy of the frozen ``encoder``: its features of ``train_x`` (standardised with
    the train mean and std) fit a logistic regression (sklearn, L2 of strength ``1 / C``), scored on
    ``test_x``. Returns ``top1``, ``per_class`` (class name -> accuracy, classes without test images left
    out), ``n_train`` and ``n_test``. ``classes`` names the labels 0..K-1 (None: the labels as text)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    ytr = np.asarray(train_y.tolist() if isinstance(train_y, torch.Tensor) else list(train_y), dtype=np.int64)
    yte = np.asarray(test_y.tolist() if isinstance(test_y, torch.Tensor) else list(test_y), dtype=np.int64)
    if len(ytr) != len(train_x) or len(yte) != len(test_x):
        raise FactoryError(f"linear_probe: {len(train_x)}/{len(test_x)} train/test images but "
                           f"{len(ytr)}/{len(yte)} labels")
    if len(yte) == 0:
        raise FactoryError("linear_probe: no test images")
    if len(np.unique(ytr)) < 2:
        raise FactoryError("linear_probe: the train images must cover at least 2 classes")
    if not (isinstance(C, (int, float)) and C > 0):
        raise FactoryError(f"linear_probe: C must be a number > 0; got {C!r}")
    n_classes = int(max(ytr.max(), yte.max())) + 1
    names = [str(c) for c in range(n_classes)] if classes is None else [str(c) for c in classes]
    if len(names) < n_classes or min(ytr.min(), yte.min()) < 0:
        raise FactoryError(f"linear_probe: labels must be in 0..{len(names) - 1} (the classes given)")
    ftr = encode_features(encoder, train_x)
    scaler = StandardScaler().fit(ftr)
    ftr, fte = scaler.transform(ftr), scaler.transform(encode_features(encoder, test_x))
    clf = LogisticRegression(C=C, max_iter=1000).fit(ftr, ytr)
    hit = clf.predict(fte) == yte
    per_class = {names[c]: round(float(hit[yte == c].mean()), 5) for c in range(len(names)) if (yte == c).any()}
    return {"top1": round(float(hit.mean()), 5), "per_class": per_class, "n_train": int(len(ytr)),
            "n_test": int(len(yte))}


def few_shot_indices(labels: Sequence[int] | torch.Tensor, per_class: int, seed: int = 0) -> torch.Tensor:
    """``per_class`` indices of every class (all of a class that has fewer), drawn with a seeded
    generator: the small labelled set of a few-shot probe, where encoders differ more than with all
    labels (a linear probe on every real digit is near its ceiling even for an untrained encoder)."""
    if not isinstance(per_class, int) or per_class < 1:
        raise FactoryError(f"few-shot probe: per_class must be an integer >= 1; got {per_class!r}")
    y = torch.as_tensor(labels if isinstance(labels, torch.Tensor) else list(labels))
    gen = torch.Generator().manual_seed(seed)
    picks = []
    for c in torch.unique(y).tolist():
        idx = torch.nonzero(y == c).flatten()
        picks.append(idx[torch.randperm(len(idx), generator=gen)[:per_class]])
    return torch.sort(torch.cat(picks)).values


def contrastive_benchmark(pool: Mapping[str, Any] | str | Path, train: Dataset | str | Path,
                          test: Dataset | str | Path, base: ContrastiveConfig, methods: Sequence[str],
                          seeds: Sequence[int] = (0,), per_class: int = FEW_SHOT,
                          progress: Progress | None = None) -> dict[str, Any]:
    """An encoder of each of ``methods`` trained on ``pool`` with ``base`` once per seed of ``seeds``,
    scored by a linear probe fit on all of the REAL ``train`` split and one fit on ``per_class`` real
    images per class (drawn with the run's seed), both tested on the REAL ``test`` split.

    Per method: ``top1`` and ``top1_<k>shot`` (the means over seeds) with ``_mean``, ``_ci95`` and
    ``_per_seed`` (:func:`factory.core.stats.seed_summary`), ``per_class`` (means), ``synthetic_share``
    (the share of synthetic images among those drawn into batches, mean over seeds; a pool sample with a
    prompt text is synthetic). The grouped methods are skipped (with the reason) when no prompt group of
    the pool has two images. JSON-ready; ``seconds`` is wall-clock time (all seeds). ``progress(step, steps,
    loss)`` is called after every training step of every run."""
    if not seeds:
        raise FactoryError("contrastive benchmark: no seeds")
    pool = read_pool(pool) if isinstance(pool, (str, Path)) else dict(pool)
    mode = detect_mode(pool)
    x, labels, groups, texts, _ = load_pool_tensors(pool, image_size=base.image_size, mode=mode)
    synthetic = [bool(t) for t in texts]  # the loader gives a real sample the text ""
    train_x, train_y, _, classes = load_split(train, base.image_size, mode)
    test_x, test_y, _, _ = load_split(test, base.image_size, mode)
    multi = len(set(groups)) < len(groups)
    shot = f"top1_{per_class}shot"
    results = {"pool": pool["name"], "n_train": len(x), "synthetic_fraction": pool["synthetic_fraction"],
               "seeds": list(seeds), "config": base.to_dict(), "methods": {}}
    for method in methods:
        if method in GROUPED and not multi:
            results["methods"][method] = {"skipped": "no prompt group has two images in this pool"}
            log.info("contrastive %s %s: skipped (no multi-image prompt groups)", pool["name"], method)
            continue
        runs = []
        for seed in seeds:
            cfg = base.replace(method=method, seed=seed)
            encoder, info = train_contrastive(x, groups, texts, cfg, progress, labels=labels, synthetic=synthetic)
            shots = few_shot_indices(train_y, per_class, seed)
            probe = linear_probe(encoder, train_x, train_y, test_x, test_y, classes, C=cfg.probe_C)
            few = linear_probe(encoder, train_x[shots], train_y[shots], test_x, test_y, classes, C=cfg.probe_C)
            runs.append((info, probe, few))
            log.info("contrastive %s %s seed %d: linear-probe top-1 %.4f, %d-shot %.4f (%.1f s)", pool["name"],
                     method, seed, probe["top1"], per_class, few["top1"], info["seconds"])
        top1 = seed_summary("top1", [p["top1"] for _, p, _ in runs], seeds)
        top1_few = seed_summary(shot, [f["top1"] for _, _, f in runs], seeds)
        per_cls = {c: round(float(np.mean([p["per_class"][c] for _, p, _ in runs])), 6)
                   for c in runs[0][1]["per_class"]}
        shares = [i["synthetic_share"] for i, _, _ in runs if i["synthetic_share"] is not None]
        info = runs[0][0]
        results["methods"][method] = {
            "seeds": list(seeds), "top1": top1["top1_mean"], shot: top1_few[f"{shot}_mean"], **top1, **top1_few,
            "per_class": per_cls,
            "synthetic_share": round(float(np.mean(shares)), 6) if shares else None,
            "groups": info["groups"], "single_image_groups": info["single_image_groups"],
            "final_loss_per_seed": [i["final_loss"] for i, _, _ in runs],
            "seconds": round(sum(i["seconds"] for i, _, _ in runs), 2),
            "seconds_per_step": round(float(np.mean([i["seconds_per_step"] for i, _, _ in runs])), 4),
        }
    return results
