"""Positive groups of the contrastive methods, and the batches drawn from them.

Every method but SimCLR trains with one multi-positive loss (:func:`factory.train.contrastive.multi_positive_loss`);
the methods differ only in which images are positives of one another, a *unit*:

- ``stablerep`` / ``stablerep_plus``: the images of one prompt (the plan's ``group`` id, not its text:
  two prompts with the same words are two units);
- ``random_groups`` (control): the same images in random units of the same sizes as the prompt groups,
  so prompt identity is gone and only group-size structure is left;
- ``supcon`` (label-supervised control): the images of one class (Khosla et al. 2020).

A unit of one image (a real image of a mixed pool, or a synthetic image whose prompt-mates curation
dropped) enters a batch as two augmented views of that image, so it is trained on (as in SimCLR) rather
than dropped. :class:`GroupBatches` draws a batch as whole units in random order until the views fill
``batch_size``, at most ``images_per_group`` images of a unit, and counts which images it drew: the
share of synthetic images among them is the pool's *effective* synthetic share.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

from factory.core.errors import FactoryError


def group_ids(groups: Sequence[Any] | torch.Tensor, n: int, where: str) -> torch.Tensor:
    """Group labels of any hashable kind -> ``(n,)`` long tensor of ids (equal labels, equal ids)."""
    if isinstance(groups, torch.Tensor):
        if groups.ndim != 1 or groups.is_floating_point() or groups.is_complex():
            raise FactoryError(f"{where}: groups must be a 1-D integer tensor; "
                               f"got {groups.dtype} of shape {tuple(groups.shape)}")
        g = groups.long()
    else:
        ids: dict[Any, int] = {}
        g = torch.tensor([ids.setdefault(v, len(ids)) for v in groups], dtype=torch.long)
    if len(g) != n:
        raise FactoryError(f"{where}: {n} embeddings/images but {len(g)} group labels")
    return g


def units_of(labels: Sequence[Any] | torch.Tensor, n: int, where: str = "train_contrastive") -> list[torch.Tensor]:
    """The image indices of each distinct label (a prompt group, a class), in order of the label ids."""
    g = group_ids(labels, n, where)
    _, inverse, counts = torch.unique(g, return_inverse=True, return_counts=True)
    order = torch.argsort(inverse, stable=True)
    return list(torch.split(order, counts.tolist()))


def random_units(units: Sequence[torch.Tensor], gen: torch.Generator) -> list[torch.Tensor]:
    """The images of the multi-image ``units`` dealt at random into units of the same sizes (the
    ``random_groups`` control); single-image units stay as they are."""
    multi = [u for u in units if len(u) > 1]
    if not multi:
        return list(units)
    pooled = torch.cat(multi)
    shuffled = pooled[torch.randperm(len(pooled), generator=gen)]
    dealt = list(torch.split(shuffled, [len(u) for u in multi]))
    return dealt + [u for u in units if len(u) == 1]


@dataclass
class Batch:
    """One batch: ``images`` (the image index of each view), ``unit`` (the position in ``units`` of each
    view's unit: the positives' id), ``units`` (the unit indices drawn)."""

    images: torch.Tensor
    unit: torch.Tensor
    units: list[int]


class GroupBatches:
    """Batches of whole units: views = ``min(len, images_per_group)`` images of a multi-image unit (a
    random subset, one view each), two views of a single image; units in random order until the next
    would pass ``batch_size`` views (at least two units). ``synthetic`` (one flag per image) feeds
    :attr:`synthetic_share`, the share of synthetic images among those drawn so far."""

    def __init__(self, units: Sequence[torch.Tensor], images_per_group: int, batch_size: int,
                 gen: torch.Generator, synthetic: Sequence[bool] | torch.Tensor | None = None) -> None:
        if len(units) < 2:
            raise FactoryError(f"contrastive batches need at least 2 groups (the others are the negatives); "
                               f"got {len(units)}")
        if images_per_group < 2:
            raise FactoryError(f"contrastive batches: images_per_group must be >= 2; got {images_per_group}")
        self.units = list(units)
        self.images_per_group, self.batch_size, self.gen = images_per_group, batch_size, gen
        self.views = torch.tensor([2 if len(u) == 1 else min(len(u), images_per_group) for u in self.units])
        n = max(int(u.max()) for u in self.units) + 1
        self.synthetic = (torch.zeros(n, dtype=torch.bool) if synthetic is None
                          else torch.as_tensor(list(synthetic) if not isinstance(synthetic, torch.Tensor)
                                               else synthetic, dtype=torch.bool))
        self.drawn = 0
        self.drawn_synthetic = 0

    def draw(self) -> Batch:
        perm = torch.randperm(len(self.units), generator=self.gen)
        k = max(2, int((torch.cumsum(self.views[perm], 0) <= self.batch_size).sum()))
        picked = perm[:k].tolist()
        parts, unit = [], []
        for pos, u in enumerate(picked):
            m = self.units[u]
            if len(m) == 1:
                part = m.repeat(2)
                self.drawn += 1
                self.drawn_synthetic += int(self.synthetic[m[0]])
            else:
                part = m[torch.randperm(len(m), generator=self.gen)[:self.images_per_group]]
                self.drawn += len(part)
                self.drawn_synthetic += int(self.synthetic[part].sum())
            parts.append(part)
            unit.append(torch.full((len(part),), pos, dtype=torch.long))
        return Batch(torch.cat(parts), torch.cat(unit), picked)

    @property
    def synthetic_share(self) -> float | None:
        """Synthetic images / images drawn so far (an image drawn twice counts twice; its two views once)."""
        return self.drawn_synthetic / self.drawn if self.drawn else None


def caption_targets(batch: Batch, captions: Sequence[str]) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    """StableRep+'s image-text targets of ``batch``, by caption id (the unit), never by string: the
    captions of the batch's units that have one (``captions[u]`` non-empty; a real image has none),
    one text row per unit even when two units' texts are equal; ``views`` (bool per view: it has a
    caption) and ``text_index`` (per captioned view, its unit's text row)."""
    rows = {pos: i for i, pos in enumerate(p for p, u in enumerate(batch.units) if captions[u])}
    texts = [captions[u] for u in batch.units if captions[u]]
    views = torch.tensor([int(p) in rows for p in batch.unit.tolist()], dtype=torch.bool)
    text_index = torch.tensor([rows[int(p)] for p in batch.unit[views].tolist()], dtype=torch.long)
    return texts, views, text_index
