"""Calibration of the triplet scores: does each of c, b, m and s order detections by how right
they are?

For every detection of a model on labeled images, the truth it predicts is measured against the
ground truth of its image: its *mask IoU* (the largest mask IoU with a ground-truth instance of
its class) and its *box IoU* (the same with boxes). Spearman's rank correlation of each score with
that truth says how well the score ranks detections; that ranking is all that eq. 2-3 and the
pseudo-label thresholds use. A detection of a lesion that does not exist has truth 0.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from tsp_model.core.records import ImageScore
from tsp_model.core.rle import rle_for_pycocotools

__all__ = ["calibration", "detection_truth", "spearman"]

GroundTruth = Sequence[tuple[str, dict[str, Any]]]  # (class name, RLE with bytes counts)


def detection_truth(record: ImageScore, truth: GroundTruth) -> list[dict[str, float]]:
    """``{"c", "b", "m", "s", "mask_iou", "box_iou"}`` for each detection of ``record`` that has
    a mask; IoUs are the largest over ground-truth instances of the same class (0 if none)."""
    out = []
    for inst in record.instances:
        if inst.mask is None:
            continue
        same = [rle_for_pycocotools(g) for name, g in truth if name == inst.category]
        mask_iou = box_iou = 0.0
        if same:
            pred = rle_for_pycocotools(inst.mask)
            crowd = [0] * len(same)
            mask_iou = float(np.max(mask_utils.iou([pred], same, crowd)))
            x1, y1, x2, y2 = inst.box
            gt_boxes = mask_utils.toBbox(same).tolist()
            box_iou = float(np.max(mask_utils.iou([[x1, y1, x2 - x1, y2 - y1]], gt_boxes, crowd)))
        out.append({"c": inst.c, "b": inst.b, "m": inst.m, "s": inst.s, "mask_iou": mask_iou, "box_iou": box_iou})
    return out


def spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Spearman's rank correlation (ties get their average rank); None when fewer than 3 pairs
    or either side is constant."""
    from scipy.stats import spearmanr

    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if len(x) < 3 or np.all(x == x[0]) or np.all(y == y[0]):
        return None
    return float(spearmanr(x, y).statistic)


def calibration(records: Sequence[ImageScore], truth_of: Callable[[Any], GroundTruth],
                score_threshold: float) -> dict[str, Any]:
    """Spearman correlations of c, b, m, s with the true mask IoU, and of b and c with the true
    box IoU, over every detection ("detected") and over those with ``c >= score_threshold``
    ("scored": the instances eq. 3 averages)."""
    rows = [row for rec in records for row in detection_truth(rec, truth_of(rec.image_id))]

    def block(sel: list[dict[str, float]]) -> dict[str, Any]:
        col = {k: [r[k] for r in sel] for k in ("c", "b", "m", "s", "mask_iou", "box_iou")}
        return {
            "detections": len(sel),
            "mean_mask_iou": float(np.mean(col["mask_iou"])) if sel else None,
            "spearman_mask_iou": {k: spearman(col[k], col["mask_iou"]) for k in ("c", "b", "m", "s")},
            "spearman_box_iou": {k: spearman(col[k], col["box_iou"]) for k in ("c", "b")},
        }

    return {"detected": block(rows), "scored": block([r for r in rows if r["c"] >= score_threshold]),
            "score_threshold": score_threshold,
            "truth": "largest mask (box) IoU with a ground-truth instance of the detection's class; 0 if none"}
