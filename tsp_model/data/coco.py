"""COCO instance-segmentation dataset (pycocotools) and an atomic COCO json writer.

Each item is ``(image, target)``: ``image (FloatTensor[3, H, W])`` in ``[0, 1]`` and a torchvision
target ``{"boxes": FloatTensor[N, 4] (x1, y1, x2, y2 px), "labels": Int64Tensor[N] (1..K),
"masks": UInt8Tensor[N, H, W], "image_id": int, "pseudo": False}``.

Rules:

- categories map to contiguous labels ``1..K`` ordered by category id, so ``class_names[k - 1]``
  names label ``k``; pass ``class_names=`` to force a mapping shared with a model;
- ``iscrowd`` annotations and annotations without a segmentation are skipped; boxes come from the
  annotation ``bbox`` (xywh -> xyxy, clipped to the image); boxes narrower or shorter than 1 px are
  dropped with their masks;
- an image without annotations is kept with empty targets: on a head CT "no lesion" is a label;
- images that are missing, unreadable, or whose size disagrees with the json are dropped at
  construction with a ``logging.warning`` naming the path (a DataLoader worker cannot report them
  well later). If reading still fails in ``__getitem__`` (the file changed since), the failure is
  logged and the next valid index is returned instead, so one bad file cannot stop an epoch.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pycocotools.coco import COCO

from tsp_model.data.image_io import ImageError, read_image, to_tensor, verify_image
from tsp_model.data.transforms import Compose, train_transforms

__all__ = ["CocoInstanceDataset", "collate_fn", "empty_target"]

log = logging.getLogger(__name__)


def collate_fn(batch: Sequence[tuple[torch.Tensor, dict]]) -> tuple[list[torch.Tensor], list[dict]]:
    """DataLoader collate for detection: keep images and targets as lists (sizes differ)."""
    images = [item[0] for item in batch]
    targets = [item[1] for item in batch]
    return images, targets


def empty_target(height: int, width: int, image_id: int | str, pseudo: bool = False) -> dict[str, Any]:
    """Target of an image with no instance: ``boxes Float[0, 4]``, ``labels Int64[0]``,
    ``masks UInt8[0, H, W]``."""
    return {
        "boxes": torch.zeros((0, 4), dtype=torch.float32),
        "labels": torch.zeros((0,), dtype=torch.int64),
        "masks": torch.zeros((0, height, width), dtype=torch.uint8),
        "image_id": image_id,
        "pseudo": pseudo,
    }


def _load_coco(source: str | Path | Mapping[str, Any]) -> COCO:
    """Build a pycocotools COCO index from a json path or an in-memory dict, quietly."""
    coco = COCO()
    if isinstance(source, Mapping):
        coco.dataset = copy.deepcopy(dict(source))
    else:
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: COCO annotation file not found")
        try:
            with open(path, encoding="utf-8") as f:
                coco.dataset = json.load(f)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not valid JSON ({exc})") from exc
    for key in ("images", "categories"):
        if not isinstance(coco.dataset.get(key), list):
            raise ValueError(f"{source if not isinstance(source, Mapping) else '<dict>'}: "
                             f"COCO json has no '{key}' list")
    coco.dataset.setdefault("annotations", [])
    with contextlib.redirect_stdout(io.StringIO()):  # createIndex prints progress lines
        coco.createIndex()
    return coco


class CocoInstanceDataset(torch.utils.data.Dataset):
    """Instance-segmentation dataset read from a COCO instances json.

    Args:
        ann_file: path of the COCO json (or the already-loaded dict).
        image_dir: folder that ``file_name`` is relative to; ``None`` means the json's folder.
        train: apply train transforms (random horizontal flip).
        hflip_prob: flip probability when ``train``.
        class_names: force the label mapping (label k = ``class_names[k - 1]``); a json category
            whose name is not in it raises ``ValueError`` naming the category.

    Attributes:
        class_names (list[str]): names of labels 1..K.
        ids (list[int]): COCO image ids of the valid images, in dataset index order.
    """

    def __init__(
        self,
        ann_file: str | Path | Mapping[str, Any],
        image_dir: str | Path | None = None,
        train: bool = False,
        hflip_prob: float = 0.5,
        class_names: Sequence[str] | None = None,
    ) -> None:
        self.ann_file = None if isinstance(ann_file, Mapping) else Path(ann_file)
        if image_dir is None:
            if self.ann_file is None:
                raise ValueError("image_dir is required when ann_file is a dict")
            image_dir = self.ann_file.parent
        self.image_dir = Path(image_dir)
        self.train = train
        self.hflip_prob = hflip_prob
        self.transforms: Compose | None = train_transforms(hflip_prob) if train else None
        self._coco = _load_coco(ann_file)
        self._source_name = str(self.ann_file) if self.ann_file else "<dict>"

        cats = sorted(self._coco.dataset["categories"], key=lambda c: c["id"])
        if class_names is None:
            self.class_names = [str(c["name"]) for c in cats]
        else:
            self.class_names = [str(n) for n in class_names]
            unknown = [c["name"] for c in cats if c["name"] not in self.class_names]
            if unknown:
                raise ValueError(
                    f"{self._source_name}: categories {unknown} are not in class_names "
                    f"{self.class_names}; pass a class_names list that includes them"
                )
        if len(set(self.class_names)) != len(self.class_names):
            raise ValueError(f"{self._source_name}: duplicate class names {self.class_names}")
        name_to_label = {n: i + 1 for i, n in enumerate(self.class_names)}
        self.cat_to_label: dict[int, int] = {int(c["id"]): name_to_label[c["name"]] for c in cats}

        for ann in self._coco.dataset["annotations"]:
            if ann.get("category_id") not in self.cat_to_label:
                raise ValueError(
                    f"{self._source_name}: annotation {ann.get('id')} has category_id "
                    f"{ann.get('category_id')} not listed in 'categories'"
                )

        self.ids: list[int] = []
        for img_id in sorted(self._coco.imgs):
            info = self._coco.imgs[img_id]
            path = self.image_dir / info["file_name"]
            try:
                width, height = verify_image(path)
            except ImageError as exc:
                log.warning("skipping image %s: %s", path, exc)
                continue
            if (width, height) != (info.get("width", width), info.get("height", height)):
                log.warning(
                    "skipping image %s: its size %dx%d disagrees with the json's %sx%s",
                    path, width, height, info.get("width"), info.get("height"),
                )
                continue
            info.setdefault("width", width)
            info.setdefault("height", height)
            self.ids.append(int(img_id))
        n_images = len(self._coco.imgs)
        if n_images and not self.ids:
            raise ValueError(
                f"{self._source_name}: none of its {n_images} images is readable under "
                f"{self.image_dir}; check image_dir"
            )
        self._index = {img_id: i for i, img_id in enumerate(self.ids)}

    # ------------------------------------------------------------------ accessors
    def __len__(self) -> int:
        return len(self.ids)

    def image_info(self, idx: int) -> dict[str, Any]:
        """The COCO ``images`` entry (a copy) of dataset index ``idx``."""
        return dict(self._coco.imgs[self.ids[idx]])

    def image_path(self, idx: int) -> Path:
        """File path of dataset index ``idx``."""
        return self.image_dir / self._coco.imgs[self.ids[idx]]["file_name"]

    def index_of(self, image_id: int) -> int:
        """Dataset index of COCO ``image_id`` (``KeyError`` if absent or dropped)."""
        return self._index[image_id]

    @property
    def coco(self) -> COCO:
        """The pycocotools index (ground truth for COCOeval)."""
        return self._coco

    def subset(self, image_ids: Iterable[int]) -> CocoInstanceDataset:
        """A new dataset holding only ``image_ids`` and their annotations.

        The subset is built from a filtered copy of the json, so it cannot reveal other images'
        annotations (the active-learning oracle hands out labels through it). Same class mapping,
        transforms and image folder. Unknown ids raise ``KeyError`` naming them.
        """
        wanted = list(dict.fromkeys(int(i) for i in image_ids))
        missing = [i for i in wanted if i not in self._index]
        if missing:
            raise KeyError(f"image ids not in dataset {self._source_name}: {missing[:10]}"
                           + (f" (+{len(missing) - 10} more)" if len(missing) > 10 else ""))
        keep = set(wanted)
        src = self._coco.dataset
        doc = {
            "images": [im for im in src["images"] if im["id"] in keep],
            "annotations": [a for a in src["annotations"] if a["image_id"] in keep],
            "categories": src["categories"],
        }
        sub = CocoInstanceDataset(doc, self.image_dir, train=self.train,
                                  hflip_prob=self.hflip_prob, class_names=self.class_names)
        sub.ann_file = self.ann_file
        sub._source_name = f"{self._source_name}[subset of {len(sub)}]"
        return sub

    # ------------------------------------------------------------------ items
    def load_target(self, idx: int) -> dict[str, Any]:
        """Target of dataset index ``idx`` without reading the image or applying transforms."""
        img_id = self.ids[idx]
        info = self._coco.imgs[img_id]
        height, width = int(info["height"]), int(info["width"])
        boxes, labels, masks = [], [], []
        for ann in self._coco.imgToAnns.get(img_id, []):
            if ann.get("iscrowd", 0):
                continue
            if not ann.get("segmentation"):
                continue
            x, y, w, h = (float(v) for v in ann["bbox"])
            x1, y1 = max(0.0, x), max(0.0, y)
            x2, y2 = min(float(width), x + w), min(float(height), y + h)
            if x2 - x1 < 1.0 or y2 - y1 < 1.0:
                continue
            boxes.append([x1, y1, x2, y2])
            labels.append(self.cat_to_label[int(ann["category_id"])])
            masks.append(self._coco.annToMask(ann))
        if not boxes:
            return empty_target(height, width, img_id)
        return {
            "boxes": torch.tensor(boxes, dtype=torch.float32),
            "labels": torch.tensor(labels, dtype=torch.int64),
            "masks": torch.from_numpy(np.stack(masks).astype(np.uint8)),
            "image_id": img_id,
            "pseudo": False,
        }

    def _load(self, idx: int) -> tuple[torch.Tensor, dict[str, Any]]:
        path = self.image_path(idx)
        image = to_tensor(read_image(path))
        target = self.load_target(idx)
        if tuple(image.shape[1:]) != tuple(target["masks"].shape[1:]):
            raise ImageError(f"{path}: image size {tuple(image.shape[1:])} disagrees with the "
                             f"json's {tuple(target['masks'].shape[1:])}")
        return image, target

    def __getitem__(self, idx: int) -> tuple[torch.Tensor, dict[str, Any]]:
        if not 0 <= idx < len(self.ids):
            raise IndexError(f"index {idx} out of range for {len(self.ids)} images")
        last_error: Exception | None = None
        for attempt in range(len(self.ids)):
            j = (idx + attempt) % len(self.ids)
            try:
                image, target = self._load(j)
            except ImageError as exc:
                log.warning("cannot read %s (%s); using the next image instead", self.image_path(j), exc)
                last_error = exc
                continue
            if self.transforms is not None:
                image, target = self.transforms(image, target)
            return image, target
        raise ImageError(f"{self._source_name}: no image could be read") from last_error
