"""The reference CNN (the default classifier's architecture), and tensors of a small dataset.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from factory.core.errors import FactoryError
from factory.core.images import colour_mode, images_to_tensor
from factory.core.shards import Dataset

EMBED_DIM = 128  # width of the penultimate layer (the feature space of the independent evaluator)


class ReferenceCNN(nn.Module):
    """Two conv-conv-pool stages and a two-layer head (about 0.2M parameters at 16x16)."""

    def __init__(self, in_channels: int, n_classes: int, image_size: int = 16, width: int = 32) -> None:
        super().__init__()
        if image_size % 4:
            raise FactoryError(f"reference classifier image_size must be a multiple of 4; got {image_size}")
        self.in_channels, self.n_classes, self.image_size, self.width = in_channels, n_classes, image_size, width
        w = width
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, w, 3, padding=1), nn.ReLU(),
            nn.Conv2d(w, w, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(w, 2 * w, 3, padding=1), nn.ReLU(),
            nn.Conv2d(2 * w, 2 * w, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.head = nn.Sequential(
            nn.Flatten(), nn.Dropout(0.25), nn.Linear(2 * w * (image_size // 4) ** 2, EMBED_DIM), nn.ReLU(),
            nn.Linear(EMBED_DIM, n_classes),
        )
        self.mode = "L" if in_channels == 1 else "RGB"
        self.classes: list[str] = [str(i) for i in range(n_classes)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The penultimate layer: the ``EMBED_DIM`` activations (after ReLU) that the last linear layer reads."""
        return self.head[:-1](self.features(x))


def load_split(dataset: Dataset | str | Path, image_size: int, mode: str | None = None
               ) -> tuple[torch.Tensor, torch.Tensor, str, list[str]]:
    """All images and labels of a (small) dataset as tensors; ``mode`` None: L unless colour."""
    ds = dataset if isinstance(dataset, Dataset) else Dataset(dataset)
    ims, labels = [], []
    for s in ds:
        ims.append(s.pil())
        labels.append(int(s.label))
    if not ims:
        raise FactoryError(f"{ds.path}: the dataset is empty")
    if mode is None:
        mode = colour_mode(ims)
    return images_to_tensor(ims, mode, image_size), torch.tensor(labels), mode, ds.classes


def _shift(x: torch.Tensor, max_shift: int, gen: torch.Generator) -> torch.Tensor:
    """Shift each image by a random whole number of pixels in [-max_shift, max_shift] (background fill)."""
    if max_shift <= 0:
        return x
    n, _, h, w = x.shape
    pad = nn.functional.pad(x, (max_shift,) * 4, value=-1.0)
    d = torch.randint(0, 2 * max_shift + 1, (n, 2), generator=gen).tolist()
    return torch.stack([pad[i, :, dy:dy + h, dx:dx + w] for i, (dy, dx) in enumerate(d)])


@torch.inference_mode()
def predict(model: ReferenceCNN, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    model.eval()
    if len(x) == 0:
        return torch.empty(0, dtype=torch.long)
    return torch.cat([model(x[i:i + batch_size]).argmax(1) for i in range(0, len(x), batch_size)])
