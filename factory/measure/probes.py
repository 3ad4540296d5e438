"""Linear probes of a frozen encoder: features, a logistic-regression probe on real data, few-shot subsets.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from factory.core.errors import FactoryError
from factory.train.contrastive import ContrastiveEncoder


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
