"""Train-time transforms acting on an ``(image, target)`` pair, pure torch.

A target is torchvision's detection dict: ``boxes (FloatTensor[N, 4])`` in x1, y1, x2, y2 pixels,
``labels (Int64Tensor[N])``, ``masks (UInt8Tensor[N, H, W])`` plus free-form keys that pass
through untouched. Randomness comes from torch's global generator, so DataLoader workers (which
torch seeds per worker) draw different flips.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

Target = dict[str, Any]
Transform = Callable[[torch.Tensor, Target], tuple[torch.Tensor, Target]]

__all__ = ["Compose", "RandomHorizontalFlip", "hflip", "train_transforms"]


def hflip(image: torch.Tensor, target: Target) -> tuple[torch.Tensor, Target]:
    """Mirror ``image (FloatTensor[C, H, W])`` and its boxes and masks left to right."""
    width = image.shape[-1]
    image = image.flip(-1)
    target = dict(target)
    if "boxes" in target and target["boxes"].numel():
        boxes = target["boxes"].clone()
        # x1' = W - x2 and x2' = W - x1 keep x1 <= x2.
        boxes[:, [0, 2]] = width - target["boxes"][:, [2, 0]]
        target["boxes"] = boxes
    if "masks" in target and target["masks"].numel():
        target["masks"] = target["masks"].flip(-1)
    return image, target


class RandomHorizontalFlip:
    """Flip image, boxes and masks horizontally with probability ``p``."""

    def __init__(self, p: float = 0.5) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"flip probability must be in [0, 1], got {p}")
        self.p = p

    def __call__(self, image: torch.Tensor, target: Target) -> tuple[torch.Tensor, Target]:
        if self.p > 0 and torch.rand(()) < self.p:
            return hflip(image, target)
        return image, target

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p})"


class Compose:
    """Apply transforms in order."""

    def __init__(self, transforms: Sequence[Transform]) -> None:
        self.transforms = list(transforms)

    def __call__(self, image: torch.Tensor, target: Target) -> tuple[torch.Tensor, Target]:
        for t in self.transforms:
            image, target = t(image, target)
        return image, target

    def __repr__(self) -> str:
        return f"Compose({self.transforms!r})"


def train_transforms(hflip_prob: float = 0.5) -> Compose:
    """The paper's only augmentation (section 4.2): random horizontal flip."""
    return Compose([RandomHorizontalFlip(hflip_prob)])
