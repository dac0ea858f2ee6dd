"""Box and mask heads with dropout that can stay on at inference (MC dropout).

``DropoutTwoMLPHead`` is torchvision's ``TwoMLPHead`` with dropout after each FC layer;
``DropoutMaskRCNNHeads`` is ``MaskRCNNHeads`` with dropout after each conv block. Parameter
names are unchanged (torchvision weights load into them). Dropout follows ``module.training``
like ``nn.Dropout``, unless :func:`mc_dropout` forces it on: then the heads sample a fresh mask
on every call while the rest of the model (batch norm, RPN) stays in eval mode, which is
Monte Carlo dropout (Gal & Ghahramani, ICML 2016).

Built by :func:`tsp_model.nn.model.build_model` only when ``model.dropout > 0``; with the default
0 the model holds torchvision's own heads.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection.faster_rcnn import TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads

__all__ = ["DropoutTwoMLPHead", "DropoutMaskRCNNHeads", "mc_dropout", "has_mc_dropout"]


class _MCDropoutMixin:
    """``p`` and the ``mc_forced`` switch shared by both heads (no parameters, no buffers)."""

    p: float
    mc_forced: bool
    training: bool

    def _drop(self, x: torch.Tensor) -> torch.Tensor:
        if self.p <= 0:
            return x
        return F.dropout(x, self.p, training=self.training or self.mc_forced)


class DropoutTwoMLPHead(_MCDropoutMixin, TwoMLPHead):
    """fc6 -> ReLU -> dropout -> fc7 -> ReLU -> dropout.

    Input FloatTensor[R, C, 7, 7] (pooled RoIs); output FloatTensor[R, representation_size].
    """

    def __init__(self, in_channels: int, representation_size: int, p: float = 0.0) -> None:
        super().__init__(in_channels, representation_size)
        self.p = float(p)
        self.mc_forced = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mc_suffix(self.mc_prefix(x))

    def mc_prefix(self, x: torch.Tensor) -> torch.Tensor:
        """The part before the first dropout (deterministic): shared by every MC pass."""
        return F.relu(self.fc6(x.flatten(start_dim=1)))

    def mc_suffix(self, x: torch.Tensor) -> torch.Tensor:
        """From the first dropout on: ``forward(x) == mc_suffix(mc_prefix(x))``."""
        x = self._drop(x)
        return self._drop(F.relu(self.fc7(x)))


class DropoutMaskRCNNHeads(_MCDropoutMixin, MaskRCNNHeads):
    """``MaskRCNNHeads`` (conv3x3 + ReLU blocks) with dropout after each block.

    Input FloatTensor[R, C, 14, 14]; output FloatTensor[R, layers[-1], 14, 14]. Dropout is
    element-wise, applied functionally so the ``nn.Sequential`` keeps torchvision's children.
    """

    def __init__(self, in_channels: int, layers: list[int], dilation: int, p: float = 0.0, norm_layer=None) -> None:
        super().__init__(in_channels, layers, dilation, norm_layer=norm_layer)
        self.p = float(p)
        self.mc_forced = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mc_suffix(self.mc_prefix(x))

    def mc_prefix(self, x: torch.Tensor) -> torch.Tensor:
        """The first block, before any dropout (deterministic): shared by every MC pass."""
        return self[0](x)

    def mc_suffix(self, x: torch.Tensor) -> torch.Tensor:
        """From the first dropout on: ``forward(x) == mc_suffix(mc_prefix(x))``."""
        x = self._drop(x)
        for block in list(self)[1:]:
            x = self._drop(block(x))
        return x


def _mc_modules(model: nn.Module) -> list[_MCDropoutMixin]:
    return [m for m in model.modules() if isinstance(m, _MCDropoutMixin) and m.p > 0]


def has_mc_dropout(model: nn.Module) -> bool:
    """True when ``model`` holds at least one head with dropout probability > 0."""
    return bool(_mc_modules(model))


@contextmanager
def mc_dropout(model: nn.Module, enabled: bool = True) -> Iterator[None]:
    """Force the dropout of every dropout head of ``model`` on (or off) inside the block.

    Raises:
        ValueError: ``enabled`` and the model has no dropout head (``model.dropout`` was 0).
    """
    mods = _mc_modules(model)
    if enabled and not mods:
        raise ValueError(
            "MC dropout needs a model trained with dropout in its heads: set model.dropout > 0 "
            "(e.g. 0.25) and retrain"
        )
    before = [m.mc_forced for m in mods]
    try:
        for m in mods:
            m.mc_forced = enabled
        yield
    finally:
        for m, flag in zip(mods, before):
            m.mc_forced = flag
