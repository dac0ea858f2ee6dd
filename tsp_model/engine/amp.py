"""Mixed precision as a flag: bf16 where the GPU has it (no grad scaler), fp16 + GradScaler on
older CUDA devices, full precision on the CPU."""

from __future__ import annotations

import contextlib
from typing import ContextManager

import torch


def amp_dtype(device: torch.device, enabled: bool) -> torch.dtype | None:
    """The autocast dtype for ``device``, or None when autocast is off."""
    if not enabled or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def autocast(device: torch.device, enabled: bool) -> ContextManager:
    dtype = amp_dtype(device, enabled)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def make_grad_scaler(device: torch.device, enabled: bool) -> torch.amp.GradScaler | None:
    """A GradScaler only for fp16 (bf16 has fp32's exponent range and needs none)."""
    if amp_dtype(device, enabled) is torch.float16:
        return torch.amp.GradScaler("cuda")
    return None
