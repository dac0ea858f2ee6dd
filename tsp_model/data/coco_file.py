"""Writing a COCO instances file (JSON only: no torch, so light commands can write snapshots)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tsp_model.core.atomic import atomic_open
from tsp_model.core.rle import rle_for_json

__all__ = ["write_coco"]


def write_coco(
    path: str | Path,
    images: Sequence[Mapping[str, Any]],
    annotations: Sequence[Mapping[str, Any]],
    categories: Sequence[Mapping[str, Any]],
    info: Mapping[str, Any] | None = None,
) -> Path:
    """Write a COCO instances json atomically (temp file in the same folder, then ``os.replace``).

    RLE ``counts`` given as bytes are decoded to str so the file is valid JSON. Returns the path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)

    def _jsonable(ann: Mapping[str, Any]) -> dict[str, Any]:
        ann = dict(ann)
        if isinstance(ann.get("segmentation"), Mapping):
            ann["segmentation"] = rle_for_json(ann["segmentation"])
        return ann

    doc: dict[str, Any] = {}
    if info is not None:
        doc["info"] = dict(info)
    doc["images"] = [dict(im) for im in images]
    doc["annotations"] = [_jsonable(a) for a in annotations]
    doc["categories"] = [dict(c) for c in categories]

    with atomic_open(path) as f:
        json.dump(doc, f, separators=(",", ":"))
    return path
