"""Pseudo-labeled dataset built from pool-score records (section 3.2, Algorithm 1 step 4).

An instance predicted on an unlabeled image becomes a pseudo label iff ``c > sigma_c`` and
``b > sigma_b`` and ``m > sigma_m`` (:func:`tsp_model.core.scoring.pseudo_label_keep`). Its mask comes
from the record's COCO RLE, its box from the record's box.

Images with no kept instance are dropped: under eq. 4 a pseudo-labeled image contributes only
through positive RoIs (the classification terms are multiplied by ``p*``), so an image without a
pseudo instance would add zero loss and only cost compute.

Items are ``(image FloatTensor[3, H, W], target)`` with the same target keys as
:class:`tsp_model.data.coco.CocoInstanceDataset` and ``target["pseudo"] = True``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pycocotools import mask as mask_utils

from tsp_model.data.image_io import ImageError, read_image, to_tensor, verify_image
from tsp_model.data.transforms import Compose, train_transforms
from tsp_model.core.records import ImageScore, InstanceScore, pseudo_instances
from tsp_model.core.rle import rle_for_pycocotools

__all__ = ["PseudoLabelDataset"]

log = logging.getLogger(__name__)


def _checked_rle(inst: InstanceScore, height: int, width: int, where: str) -> dict[str, Any]:
    """The instance's COCO RLE with ``counts`` as bytes, after checking its size."""
    rle = rle_for_pycocotools(inst.mask)
    size = [int(v) for v in rle.get("size", ())]
    if size != [height, width] or "counts" not in rle:
        raise ValueError(f"{where}: mask RLE size {size} disagrees with image size {[height, width]}")
    return rle


class PseudoLabelDataset(torch.utils.data.Dataset):
    """Images of the unlabeled pool with their confident predictions as targets.

    Args:
        records: pool-score records, one per image (:class:`tsp_model.core.records.ImageScore`).
        image_paths: image_id -> image file path, for every record that may keep an instance.
        class_names: label k of the target is ``class_names[k - 1]``; instances are mapped by
            their ``category`` name (``ValueError`` naming it if unknown).
        sigma_c, sigma_b, sigma_m: thresholds of :func:`pseudo_label_keep`.
        train: apply train transforms (random horizontal flip).
        hflip_prob: flip probability when ``train``.

    Attributes:
        image_ids (list): ids of the kept images, in dataset index order.
        num_instances (int): number of pseudo instances over all kept images.
    """

    def __init__(
        self,
        records: Sequence[ImageScore],
        image_paths: Mapping[Any, str | Path],
        class_names: Sequence[str],
        sigma_c: float = 0.9,
        sigma_b: float = 0.9,
        sigma_m: float = 0.8,
        train: bool = True,
        hflip_prob: float = 0.5,
    ) -> None:
        self.class_names = [str(n) for n in class_names]
        self.train = train
        self.transforms: Compose | None = train_transforms(hflip_prob) if train else None
        name_to_label = {n: i + 1 for i, n in enumerate(self.class_names)}

        self.image_ids: list[Any] = []
        self._paths: list[Path] = []
        self._targets: list[dict[str, Any]] = []
        for rec in records:
            kept = pseudo_instances(rec, sigma_c=sigma_c, sigma_b=sigma_b, sigma_m=sigma_m)
            where = f"image {rec.image_id!r} ({rec.file_name})"
            boxes, labels, masks = [], [], []
            for inst in kept:
                if inst.mask is None:
                    log.warning("%s: kept instance has no stored mask; skipped (score with masks)", where)
                    continue
                if inst.category not in name_to_label:
                    raise ValueError(f"{where}: category {inst.category!r} is not in class_names "
                                     f"{self.class_names}")
                x1, y1, x2, y2 = (float(v) for v in inst.box)
                x1, y1 = max(0.0, x1), max(0.0, y1)
                x2, y2 = min(float(rec.width), x2), min(float(rec.height), y2)
                if x2 - x1 < 1.0 or y2 - y1 < 1.0:
                    continue
                boxes.append([x1, y1, x2, y2])
                labels.append(name_to_label[inst.category])
                # Masks stay RLE until __getitem__: a pool holds thousands of instances.
                masks.append(_checked_rle(inst, rec.height, rec.width, where))
            if not boxes:
                continue
            if rec.image_id not in image_paths:
                raise ValueError(f"{where}: no entry in image_paths; pass the path of every pool image")
            path = Path(image_paths[rec.image_id])
            try:
                width, height = verify_image(path)
            except ImageError as exc:
                log.warning("skipping pseudo-labeled image %s: %s", path, exc)
                continue
            if (width, height) != (rec.width, rec.height):
                log.warning("skipping pseudo-labeled image %s: size %dx%d disagrees with its score "
                            "record's %dx%d", path, width, height, rec.width, rec.height)
                continue
            self.image_ids.append(rec.image_id)
            self._paths.append(path)
            self._targets.append({
                "boxes": torch.tensor(boxes, dtype=torch.float32),
                "labels": torch.tensor(labels, dtype=torch.int64),
                "rles": masks,
                "image_id": rec.image_id,
                "pseudo": True,
            })
        self.num_instances = sum(len(t["labels"]) for t in self._targets)

    def load_target(self, idx: int) -> dict[str, Any]:
        """Target of dataset index ``idx`` (masks decoded), without the image or transforms."""
        stored = self._targets[idx]
        target = {k: (v.clone() if torch.is_tensor(v) else v) for k, v in stored.items() if k != "rles"}
        masks = mask_utils.decode(stored["rles"])  # uint8 [H, W, N]
        target["masks"] = torch.from_numpy(np.ascontiguousarray(masks.transpose(2, 0, 1)))
        return target

    def __len__(self) -> int:
        return len(self.image_ids)

    def image_path(self, idx: int) -> Path:
        return self._paths[idx]

    def __getitem__(self, idx: int) -> tuple[torch.Tensor, dict[str, Any]]:
        if not 0 <= idx < len(self.image_ids):
            raise IndexError(f"index {idx} out of range for {len(self.image_ids)} images")
        last_error: Exception | None = None
        for attempt in range(len(self.image_ids)):
            j = (idx + attempt) % len(self.image_ids)
            try:
                image = to_tensor(read_image(self._paths[j]))
            except ImageError as exc:
                # Same policy as CocoInstanceDataset: a file broken since construction costs one
                # sample, not the epoch.
                log.warning("cannot read %s (%s); using the next image instead", self._paths[j], exc)
                last_error = exc
                continue
            target = self.load_target(j)
            if self.transforms is not None:
                image, target = self.transforms(image, target)
            return image, target
        raise ImageError("no pseudo-labeled image could be read") from last_error
