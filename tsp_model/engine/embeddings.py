"""Image embeddings for the core-set strategy: pooled FPN features of the trained model.

An image's embedding is the global average of each FPN map over the image's own (unpadded)
area, concatenated over the levels and L2-normalized: FloatTensor[sum of channels] (320 for
``tiny_fpn``, 1280 for the ResNet FPNs). Sener & Savarese (ICLR 2018) use the last hidden layer
of the trained model; a detector has no single such layer, so the FPN, which feeds every head,
stands in for it.

Storage: in the score record's ``extras["embedding"]`` as base64 of little-endian float16
(2 bytes per value: 3.4 kB of JSON for 1280 values, 34 MB for a 10,000-image pool, versus about
10x that as a JSON float list). One file per pool keeps scoring atomic and sharding simple;
float16 keeps 3 significant digits, enough for distances between unit vectors.
:func:`decode_embedding` also reads a plain list of floats.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["pooled_embeddings", "encode_embedding", "decode_embedding", "embedding_matrix"]


def pooled_embeddings(
    features: dict[str, Tensor], image_sizes: Sequence[tuple[int, int]], padded_size: tuple[int, int]
) -> Tensor:
    """Per-image embeddings from a batch's FPN maps.

    Args:
        features: FPN maps FloatTensor[B, C, H_l, W_l] of the padded batch.
        image_sizes: each image's (h, w) inside the padded batch (``ImageList.image_sizes``).
        padded_size: (H, W) of the padded batch tensor.

    Returns:
        FloatTensor[B, D], L2-normalized rows.
    """
    rows = []
    for i, (h, w) in enumerate(image_sizes):
        parts = []
        for fmap in features.values():
            fh, fw = fmap.shape[-2:]
            # Only the cells that cover the image: padding would pull small images toward 0.
            vh = max(1, min(fh, math.ceil(h * fh / padded_size[0])))
            vw = max(1, min(fw, math.ceil(w * fw / padded_size[1])))
            parts.append(fmap[i, :, :vh, :vw].float().mean(dim=(1, 2)))
        rows.append(torch.cat(parts))
    return F.normalize(torch.stack(rows), dim=1)


def encode_embedding(vector: Tensor | np.ndarray) -> str:
    """A 1-D vector -> base64 of little-endian float16 (JSON-friendly)."""
    arr = np.asarray(vector.detach().cpu() if isinstance(vector, Tensor) else vector, dtype="<f2")
    return base64.b64encode(arr.reshape(-1).tobytes()).decode("ascii")


def decode_embedding(value: str | Sequence[float], *, name: str = "embedding") -> np.ndarray:
    """:func:`encode_embedding`'s text, or a list of floats -> float32 ndarray[D]."""
    if isinstance(value, str):
        try:
            raw = base64.b64decode(value.encode("ascii"), validate=True)
        except ValueError:
            raise ValueError(f"{name}: not base64 float16 text") from None
        if len(raw) % 2:
            raise ValueError(f"{name}: odd byte count {len(raw)} for float16 values")
        return np.frombuffer(raw, dtype="<f2").astype(np.float32)
    return np.asarray(value, dtype=np.float32).reshape(-1)


def embedding_matrix(records: Sequence, *, what: str = "pool") -> np.ndarray:
    """``extras["embedding"]`` of every record -> float32 ndarray[N, D].

    Raises:
        ValueError: a record has no embedding, or the sizes differ (names the image).
    """
    if not records:
        return np.zeros((0, 0), dtype=np.float32)
    out: np.ndarray | None = None
    for k, rec in enumerate(records):
        value = rec.extras.get("embedding")
        if value is None:
            raise ValueError(
                f"{what} image {rec.image_id!r}: no extras['embedding']; score it with embeddings "
                "(the core_set strategy asks score_pool for them)"
            )
        vec = decode_embedding(value, name=f"{what} image {rec.image_id!r}")
        if out is None:
            out = np.empty((len(records), vec.shape[0]), dtype=np.float32)
        if vec.shape[0] != out.shape[1]:
            raise ValueError(f"{what} image {rec.image_id!r}: embedding has {vec.shape[0]} values, expected {out.shape[1]}")
        out[k] = vec
    if not np.isfinite(out).all():
        raise ValueError(f"{what}: embeddings hold NaN or infinity; rescore")
    return out
