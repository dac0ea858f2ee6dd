"""mAP with pycocotools COCOeval: the paper's metric is mAP@0.5 on masks.

:func:`evaluate` runs a model over a dataset and returns::

    {"segm_ap50", "segm_map", "bbox_ap50", "bbox_map",   # map = mAP@[.5:.95]
     "segm_ap50_per_class": {class name: AP50 or None (no ground truth)},
     "num_images", "num_predictions"}

:func:`coco_map` does the scoring alone, from a ground-truth ``COCO`` and COCO-format results.
"""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torch.utils.data import DataLoader, Dataset

from tsp_model.core.progress import progress as tsp_progress
from tsp_model.core.rle import rle_for_json
from tsp_model.engine.amp import autocast

# probability -> binary mask for a model without its own ``mask_threshold`` (torchvision's
# convention); a TSP model's masks are binarized at the threshold its mask-IoU head learned with
MASK_THRESHOLD = 0.5


def encode_mask(mask: np.ndarray) -> dict[str, Any]:
    """Binary mask bool/uint8[H, W] -> COCO RLE with ``counts`` as str (JSON-ready)."""
    return rle_for_json(mask_utils.encode(np.asfortranarray(mask.astype(np.uint8))))


def encode_masks(masks: np.ndarray) -> list[dict[str, Any]]:
    """Binary masks bool/uint8[N, H, W] -> N COCO RLEs in one pycocotools call (JSON-ready)."""
    if len(masks) == 0:
        return []
    return [rle_for_json(r) for r in mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))]


def _summarize(gt: COCO, results: list[dict], iou_type: str, img_ids: Sequence[int]) -> COCOeval:
    with contextlib.redirect_stdout(io.StringIO()):  # COCOeval prints tables; we return numbers
        dt = gt.loadRes(results)
        ev = COCOeval(gt, dt, iouType=iou_type)
        ev.params.imgIds = list(img_ids)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev


def _clean(v: float) -> float:
    # COCOeval reports -1 where nothing can be measured (no ground truth)
    return 0.0 if v is None or v < 0 or math.isnan(v) else float(v)


def _per_class_ap50(ev: COCOeval) -> dict[int, float | None]:
    # precision: [T IoU thresholds, R recall points, K categories, A areas, M maxDets]
    prec = ev.eval["precision"]
    t50 = int(np.argmin(np.abs(ev.params.iouThrs - 0.5)))
    out: dict[int, float | None] = {}
    for k, cat_id in enumerate(ev.params.catIds):
        p = prec[t50, :, k, 0, -1]
        p = p[p > -1]
        out[cat_id] = float(p.mean()) if p.size else None
    return out


def coco_map(
    gt: COCO,
    results: Iterable[dict[str, Any]],
    img_ids: Sequence[int] | None = None,
) -> dict[str, Any]:
    """Score COCO-format results against ``gt``.

    Each result holds ``image_id``, ``category_id``, ``score`` and a ``segmentation`` (RLE)
    and/or a ``bbox`` ([x, y, w, h]); masks are scored as "segm", boxes as "bbox". Per-class AP50
    (masks) is keyed by category name; None marks a category without ground truth. No results
    gives zeros, not an error.
    """
    results = list(results)
    img_ids = list(img_ids) if img_ids is not None else sorted(gt.getImgIds())
    cats = {c["id"]: c["name"] for c in gt.loadCats(gt.getCatIds())}
    out: dict[str, Any] = {"num_images": len(img_ids), "num_predictions": len(results)}
    per_class: dict[str, float | None] = {}
    for iou_type, key in (("segm", "segmentation"), ("bbox", "bbox")):
        # loadRes treats a result with a "bbox" as a box result: keep one key per evaluation
        other = "bbox" if key == "segmentation" else "segmentation"
        own = [{k: v for k, v in r.items() if k != other} for r in results if key in r]
        if not own or not gt.getAnnIds(imgIds=img_ids):
            out[f"{iou_type}_ap50"] = 0.0
            out[f"{iou_type}_map"] = 0.0
            if iou_type == "segm":
                has_gt = {c: bool(gt.getAnnIds(imgIds=img_ids, catIds=[c])) for c in cats}
                per_class = {cats[c]: (0.0 if has_gt[c] else None) for c in cats}
            continue
        ev = _summarize(gt, own, iou_type, img_ids)
        out[f"{iou_type}_map"] = _clean(ev.stats[0])
        out[f"{iou_type}_ap50"] = _clean(ev.stats[1])
        if iou_type == "segm":
            per_class = {cats[c]: ap for c, ap in _per_class_ap50(ev).items()}
    out["segm_ap50_per_class"] = per_class
    return out


def predictions_to_coco(
    output: dict[str, torch.Tensor],
    image_id: int,
    label_to_cat: dict[int, int],
    mask_threshold: float = MASK_THRESHOLD,
) -> list[dict[str, Any]]:
    """One model output (torchvision eval dict) -> COCO results, scores = c."""
    boxes = output["boxes"].detach().float().cpu().numpy()
    scores = output["scores"].detach().float().cpu().numpy()
    labels = output["labels"].detach().cpu().numpy()
    masks = None
    if "masks" in output:
        masks = (output["masks"].detach().float().cpu()[:, 0] > mask_threshold).numpy()
    res = []
    for i in range(len(scores)):
        x1, y1, x2, y2 = (float(v) for v in boxes[i])
        r: dict[str, Any] = {
            "image_id": int(image_id),
            "category_id": int(label_to_cat[int(labels[i])]),
            "score": float(scores[i]),
            "bbox": [x1, y1, x2 - x1, y2 - y1],
        }
        if masks is not None:
            r["segmentation"] = encode_mask(masks[i])
        res.append(r)
    return res


def coco_from_dataset(dataset: Dataset, class_names: Sequence[str]) -> COCO:
    """Ground truth as a ``COCO`` object built from a dataset's targets (label k -> category k).

    Used when the dataset has no ``coco`` attribute (e.g. generated data, subsets).
    """
    images, anns = [], []
    for idx in range(len(dataset)):
        image, target = dataset[idx]
        h, w = int(image.shape[-2]), int(image.shape[-1])
        img_id = int(target["image_id"])
        images.append({"id": img_id, "width": w, "height": h, "file_name": str(img_id)})
        masks = target["masks"].cpu().numpy().astype(bool)
        for j in range(len(target["labels"])):
            rle = encode_mask(masks[j])
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": img_id,
                    "category_id": int(target["labels"][j]),
                    "segmentation": rle,
                    "area": float(mask_utils.area(rle)),
                    "bbox": [float(v) for v in mask_utils.toBbox(rle)],
                    "iscrowd": 0,
                }
            )
    gt = COCO()
    gt.dataset = {
        "images": images,
        "annotations": anns,
        "categories": [{"id": k + 1, "name": n} for k, n in enumerate(class_names)],
    }
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
    return gt


def _gt_and_mapping(dataset: Dataset, class_names: Sequence[str]) -> tuple[COCO, dict[int, int]]:
    gt = getattr(dataset, "coco", None)
    if gt is None:
        return coco_from_dataset(dataset, class_names), {k + 1: k + 1 for k in range(len(class_names))}
    by_name = {c["name"]: c["id"] for c in gt.loadCats(gt.getCatIds())}
    missing = [n for n in class_names if n not in by_name]
    if missing:
        raise ValueError(f"evaluation data set lacks the model's categories {missing}; use a matching annotation file")
    return gt, {k + 1: by_name[n] for k, n in enumerate(class_names)}


def _collate(batch: list) -> tuple:
    return tuple(zip(*batch))


@torch.inference_mode()
def evaluate(
    model: torch.nn.Module,
    dataset: Dataset,
    *,
    batch_size: int = 2,
    device: str | torch.device = "cpu",
    class_names: Sequence[str] | None = None,
    workers: int = 0,
    amp: bool = True,
    progress: bool = True,
) -> dict[str, Any]:
    """mAP of ``model`` on ``dataset`` (items ``(image, target)`` with ``target["image_id"]``).

    Ground truth is ``dataset.coco`` when present (categories matched by name), else built from
    the targets. ``class_names`` defaults to ``dataset.class_names``. Masks are binarized at the
    model's ``mask_threshold`` (:func:`tsp_model.nn.roi_heads.mask_threshold_of`), as they are shown.
    """
    from tsp_model.nn.roi_heads import mask_threshold_of

    device = torch.device(device)
    class_names = list(class_names if class_names is not None else dataset.class_names)
    gt, label_to_cat = _gt_and_mapping(dataset, class_names)
    was_training = model.training
    model.eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers, collate_fn=_collate)
    results: list[dict[str, Any]] = []
    img_ids: list[int] = []
    try:
        for images, targets in tsp_progress(loader, desc="evaluate", unit="batch", enabled=progress, leave=False):
            with autocast(device, amp):
                outputs = model([im.to(device) for im in images])
            for out, tgt in zip(outputs, targets):
                img_id = int(tgt["image_id"])
                img_ids.append(img_id)
                results.extend(predictions_to_coco(out, img_id, label_to_cat, mask_threshold_of(model)))
    finally:
        model.train(was_training)
    return coco_map(gt, results, img_ids=img_ids)
