"""COCO run-length encodings as pycocotools takes them and as JSON stores them.

pycocotools encodes and decodes masks with ``counts`` as bytes; a JSON file (COCO, a score
file, a Label Studio region's metadata) holds them as str. Everything that crosses between the two
goes through these two functions.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["rle_for_json", "rle_for_pycocotools"]


def rle_for_pycocotools(rle: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``rle`` with ``counts`` as bytes (what ``pycocotools.mask`` reads)."""
    out = dict(rle)
    if isinstance(out.get("counts"), str):
        out["counts"] = out["counts"].encode("ascii")
    return out


def rle_for_json(rle: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``rle`` with ``counts`` as str and ``size`` as ints (what JSON can hold)."""
    out = dict(rle)
    if isinstance(out.get("counts"), bytes):
        out["counts"] = out["counts"].decode("ascii")
    if "size" in out:
        out["size"] = [int(v) for v in out["size"]]
    return out
