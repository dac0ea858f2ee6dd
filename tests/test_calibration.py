"""Calibration of the triplet scores: the truth of each detection and Spearman correlations,
checked against values worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from tsp_model.core.records import ImageScore, InstanceScore
from tsp_model.simulation.calibration import calibration, detection_truth, spearman

H = W = 20


def _rle(y0: int, y1: int, x0: int, x1: int) -> dict:
    m = np.zeros((H, W), dtype=np.uint8)
    m[y0:y1, x0:x1] = 1
    return mask_utils.encode(np.asfortranarray(m))


def _inst(category: str, c: float, b: float, rows: tuple[int, int], cols: tuple[int, int]) -> InstanceScore:
    rle = _rle(*rows, *cols)
    box = [float(cols[0]), float(rows[0]), float(cols[1]), float(rows[1])]
    return InstanceScore(label=1, category=category, box=box, c=c, b=b, m=b, s=c, mask=rle)


# one ground-truth lesion "a": rows 0-10, columns 0-10 (100 px)
TRUTH = [("a", _rle(0, 10, 0, 10))]
RECORD = ImageScore(1, "x.png", W, H, S=0.5, instances=[
    _inst("a", 0.9, 0.95, (0, 10), (0, 10)),  # the lesion itself: IoU 1
    _inst("a", 0.6, 0.50, (0, 10), (0, 5)),  # its left half: 50 / 100 = 0.5 (masks and boxes)
    _inst("a", 0.3, 0.10, (10, 20), (10, 20)),  # elsewhere: 0
    _inst("b", 0.8, 0.05, (0, 10), (0, 10)),  # the right place, but no lesion of class "b": 0
])


def test_detection_truth_by_hand():
    rows = detection_truth(RECORD, TRUTH)
    assert [r["mask_iou"] for r in rows] == pytest.approx([1.0, 0.5, 0.0, 0.0])
    assert [r["box_iou"] for r in rows] == pytest.approx([1.0, 0.5, 0.0, 0.0])


def test_spearman_by_hand():
    # c = (0.9, 0.6, 0.3, 0.8) has ranks (4, 2, 1, 3); the truth (1, 0.5, 0, 0) has ranks
    # (4, 3, 1.5, 1.5). Deviations from 2.5: (1.5, -0.5, -1.5, 0.5) and (1.5, 0.5, -1, -1):
    # covariance 3, variances 5 and 4.5 -> 3 / sqrt(22.5)
    assert spearman([0.9, 0.6, 0.3, 0.8], [1.0, 0.5, 0.0, 0.0]) == pytest.approx(3 / math.sqrt(22.5))
    # b = (0.95, 0.5, 0.1, 0.05): ranks (4, 3, 2, 1), deviations (1.5, 0.5, -0.5, -1.5):
    # covariance 2.25 + 0.25 + 0.5 + 1.5 = 4.5 -> 4.5 / sqrt(22.5)
    assert spearman([0.95, 0.5, 0.1, 0.05], [1.0, 0.5, 0.0, 0.0]) == pytest.approx(4.5 / math.sqrt(22.5))
    assert spearman([1, 2], [1, 2]) is None  # too few pairs
    assert spearman([0.5, 0.5, 0.5], [0.1, 0.2, 0.3]) is None  # a constant score ranks nothing


def test_calibration_over_detected_and_scored_instances():
    doc = calibration([RECORD], lambda image_id: TRUTH, score_threshold=0.5)
    det = doc["detected"]
    assert det["detections"] == 4 and det["mean_mask_iou"] == pytest.approx(1.5 / 4)
    assert det["spearman_mask_iou"]["c"] == pytest.approx(3 / math.sqrt(22.5))
    assert det["spearman_mask_iou"]["b"] == pytest.approx(4.5 / math.sqrt(22.5))
    assert det["spearman_box_iou"]["b"] == pytest.approx(4.5 / math.sqrt(22.5))
    # scored: c >= 0.5 keeps 0.9, 0.6, 0.8 with truths 1, 0.5, 0: c ranks (3, 1, 2), truth
    # ranks (3, 2, 1): deviations (1, -1, 0) and (1, 0, -1): covariance 1, variances 2 -> 0.5
    assert doc["scored"]["detections"] == 3
    assert doc["scored"]["spearman_mask_iou"]["c"] == pytest.approx(0.5)
