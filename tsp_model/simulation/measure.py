"""What a replay measures on a trained model: mAP on the test sets, what a radiologist would be
shown (pre-annotation cost), how the triplet scores rank detections (calibration), and what the
labeled set holds."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from pycocotools import mask as mask_utils

from tsp_model.core.config import ActiveConfig
from tsp_model.data.coco import CocoInstanceDataset
from tsp_model.engine.checkpoint import load_model
from tsp_model.engine.evaluate import evaluate
from tsp_model.engine.predict import PoolDataset, predict_images
from tsp_model.core.records import ImageScore
from tsp_model.core.rle import rle_for_pycocotools
from tsp_model.simulation.calibration import calibration
from tsp_model.simulation.oracle import ground_truth, match_instances

__all__ = ["calibration_of", "label_stats", "pool_items", "preannotation_cost", "predict_dataset", "test_metrics"]


def pool_items(ds: CocoInstanceDataset, ids: Sequence[int]) -> list[tuple[int, Path, str]]:
    """``(image_id, path, file_name)`` of ``ids``: what :class:`PoolDataset` reads."""
    return [(i, ds.image_path(ds.index_of(i)), str(ds.image_info(ds.index_of(i))["file_name"])) for i in ids]


def test_metrics(checkpoint: Path, tests: dict[str, CocoInstanceDataset], device: torch.device, batch_size: int,
                 amp: bool) -> dict[str, Any]:
    """mAP (masks and boxes, @0.5 and @[.5:.95]) of ``checkpoint`` on each named data set."""
    model = load_model(checkpoint, device=str(device)).model
    out = {}
    for name, ds in tests.items():
        r = evaluate(model, ds, batch_size=batch_size, device=device, amp=amp, progress=False)
        out[name] = {k: r[k] for k in ("segm_ap50", "bbox_ap50", "segm_map", "bbox_map", "num_predictions")}
    return out


def predict_dataset(checkpoint: Path, dataset: CocoInstanceDataset, device: torch.device, amp: bool,
                    active: ActiveConfig | None = None) -> list[ImageScore]:
    """Score records of every image of ``dataset`` (its labels unread) under ``active``
    (default: the checkpoint's own ``[active]``), as the pool scoring writes them."""
    loaded = load_model(checkpoint, device=str(device))
    items = PoolDataset(pool_items(dataset, dataset.ids))
    records: list[ImageScore] = []
    for k in range(0, len(items), 8):
        batch = [b for b in (items[j] for j in range(k, min(k + 8, len(items)))) if b is not None]
        records += predict_images(loaded.model, [b[0] for b in batch], loaded.class_names,
                                  active or loaded.config.active, image_ids=[b[1] for b in batch], amp=amp)
    return records


def preannotation_cost(checkpoint: Path, dataset: CocoInstanceDataset, thresholds: Sequence[float],
                       device: torch.device, amp: bool) -> dict[str, dict[str, float]]:
    """What a radiologist would be shown on ``dataset``'s images at each display threshold t
    (regions: detections with c >= t and a non-empty mask): regions per slice, false regions
    per slice (no same-class ground truth at mask IoU >= 0.5, greedy by c), and recall (the
    share of ground-truth lesions pre-drawn)."""
    records = predict_dataset(checkpoint, dataset, device, amp)
    truth = {r.image_id: ground_truth(dataset, int(r.image_id)) for r in records}
    n_gt = sum(len(t) for t in truth.values())
    out = {}
    for t in thresholds:
        shown = total_false = matched = 0
        for r in records:
            insts = sorted((i for i in r.instances if i.c >= t and i.mask is not None
                            and mask_utils.area(rle_for_pycocotools(i.mask)) > 0),
                           key=lambda i: -i.c)
            flags, hit = match_instances([(i.category, i.mask) for i in insts], truth[r.image_id])
            shown += len(insts)
            total_false += len(flags) - sum(flags)
            matched += hit
        n = max(len(records), 1)
        precision = (shown - total_false) / shown if shown else None
        recall = matched / n_gt if n_gt else None
        f1 = (2 * precision * recall / (precision + recall)) if precision and recall else 0.0
        out[f"{t:g}"] = {"regions_per_slice": shown / n, "false_regions_per_slice": total_false / n,
                         "recall": recall, "precision": precision, "f1": f1}
    return out


def calibration_of(checkpoint: Path, dataset: CocoInstanceDataset, device: torch.device, amp: bool,
                   active: ActiveConfig) -> dict[str, Any]:
    """Spearman correlations of c, b, m, s with the truth of each detection on ``dataset``
    (:func:`tsp_model.simulation.calibration.calibration`; "scored": c >= the score threshold)."""
    records = predict_dataset(checkpoint, dataset, device, amp, active)
    return calibration(records, lambda i: ground_truth(dataset, int(i)), active.score_threshold)


def label_stats(pool: CocoInstanceDataset, labeled: Iterable[int], groups: dict[int, str]) -> dict[str, Any]:
    """Instances per class, lesion-free images and groups among the labeled images."""
    coco = pool.coco
    cats = {c["id"]: c["name"] for c in coco.dataset["categories"]}
    per_class = {n: 0 for n in cats.values()}
    empty = 0
    labeled = list(labeled)
    for i in labeled:
        # as training reads them: a crowd annotation left as such is a region to ignore, no lesion
        anns = [a for a in coco.imgToAnns.get(int(i), []) if not a.get("iscrowd", 0)]
        empty += not anns
        for a in anns:
            per_class[cats[a["category_id"]]] += 1
    return {"labeled_instances": sum(per_class.values()), "labeled_empty_images": empty,
            "labeled_instances_per_class": per_class, "labeled_groups": len({groups[i] for i in labeled})}
