"""The oracle: a fully labeled pool whose labels are reachable only through ``reveal``.

:func:`tsp_model.al.cycle.run_cycle` reads labels only through ``dataset.subset(ids)``; the oracle
records every id whose labels were read, and the replay checks after each cycle that the
revealed ids are a subset of the selected ones. Measurements that need the truth (pseudo-label
precision, pre-annotation cost) read it through :meth:`Oracle.peek_annotations`, recorded apart.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from tsp_model.data.coco import CocoInstanceDataset
from tsp_model.core.records import ImageScore, pseudo_instances
from tsp_model.core.rle import rle_for_pycocotools

__all__ = ["Oracle", "OracleLeak", "match_instances", "pseudo_label_precision", "threshold_stats"]


class OracleLeak(AssertionError):
    """Labels of an image that was never selected were read."""


class Oracle:
    """A fully labeled pool whose labels are reachable only through :meth:`reveal`.

    Offers what :func:`~tsp_model.al.cycle.run_cycle` needs: ``subset`` (= reveal), ``index_of``,
    ``image_path``, ``image_info`` (file name and size only) and ``class_names``. Every id passed
    to ``reveal`` is recorded in ``revealed``; :meth:`peek_annotations` (measurement only) in
    ``peeked``.
    """

    def __init__(self, dataset: CocoInstanceDataset) -> None:
        self._ds = dataset
        self.class_names = list(dataset.class_names)
        self.ids = list(dataset.ids)
        self.revealed: set[int] = set()
        self.peeked: set[int] = set()

    def reveal(self, image_ids: Iterable[int]) -> CocoInstanceDataset:
        ids = [int(i) for i in image_ids]
        self.revealed.update(ids)
        return self._ds.subset(ids)

    subset = reveal  # run_cycle's label-provider interface

    def index_of(self, image_id: int) -> int:
        return self._ds.index_of(image_id)

    def image_path(self, idx: int) -> Path:
        return self._ds.image_path(idx)

    def image_info(self, idx: int) -> dict[str, Any]:
        info = self._ds.image_info(idx)
        return {k: info[k] for k in ("id", "file_name", "width", "height") if k in info}

    def __len__(self) -> int:
        return len(self.ids)

    def check(self, selected: Iterable[int]) -> None:
        """Raise :class:`OracleLeak` unless every revealed id is in ``selected``."""
        leaked = self.revealed - {int(i) for i in selected}
        if leaked:
            raise OracleLeak(f"labels of unselected images were read: {sorted(leaked)[:10]}")

    def peek_annotations(self, image_id: int) -> list[tuple[str, dict[str, Any]]]:
        """Ground truth (class name, RLE with bytes counts) of ``image_id``, for measurement only."""
        self.peeked.add(int(image_id))
        return ground_truth(self._ds, int(image_id))


def ground_truth(dataset: CocoInstanceDataset, image_id: int) -> list[tuple[str, dict[str, Any]]]:
    """(class name, RLE with bytes counts) of every non-crowd instance of one image."""
    coco = dataset.coco
    cats = {c["id"]: c["name"] for c in coco.dataset["categories"]}
    info = coco.imgs[int(image_id)]
    out = []
    for ann in coco.imgToAnns.get(int(image_id), []):
        if ann.get("iscrowd", 0) or not ann.get("segmentation"):
            continue
        rle = rle_for_pycocotools(coco.annToRLE(ann))
        if list(rle.get("size", ())) != [info["height"], info["width"]]:
            continue
        out.append((cats[ann["category_id"]], rle))
    return out


def match_instances(
    predicted: Sequence[tuple[str, dict[str, Any]]], truth: Sequence[tuple[str, dict[str, Any]]], iou: float = 0.5
) -> tuple[list[bool], int]:
    """Greedy one-to-one matching of predictions (in the given order, e.g. by c descending) to
    ground truth of the same class at mask IoU >= ``iou``: ``(matched flag per prediction,
    number of ground-truth instances matched)``."""
    used: set[int] = set()
    flags = []
    for name, rle in predicted:
        best, best_j = iou, None
        cands = [(j, g) for j, (gname, g) in enumerate(truth) if gname == name and j not in used]
        if cands:
            ious = np.asarray(mask_utils.iou([rle_for_pycocotools(rle)], [g for _, g in cands], [0] * len(cands))).reshape(-1)
            for (j, _), v in zip(cands, ious):
                if v >= best:
                    best, best_j = float(v), j
        if best_j is not None:
            used.add(best_j)
        flags.append(best_j is not None)
    return flags, len(used)


def pseudo_label_precision(
    records: Sequence[ImageScore],
    selected: Iterable[Any],
    oracle: Oracle,
    *,
    sigma_c: float,
    sigma_b: float,
    sigma_m: float,
    iou: float = 0.5,
) -> dict[str, Any]:
    """Precision of one cycle's pseudo labels against the oracle.

    The kept instances are those :class:`~tsp_model.data.pseudo.PseudoLabelDataset` keeps: on
    pool images not selected this cycle, ``c > sigma_c and b > sigma_b and m > sigma_m`` with a
    stored mask. An instance is correct when a ground-truth instance of the same class has mask
    IoU >= ``iou`` with it. Returns ``{"kept", "correct", "precision" (None if none kept)}``.
    """
    chosen = set(selected)
    kept = correct = 0
    for rec in records:
        if rec.image_id in chosen:
            continue
        insts = [inst for inst in pseudo_instances(rec, sigma_c=sigma_c, sigma_b=sigma_b, sigma_m=sigma_m)
                 if inst.mask is not None]
        if not insts:
            continue
        truth = oracle.peek_annotations(int(rec.image_id))
        flags, _ = match_instances([(i.category, i.mask) for i in insts], truth, iou)
        kept += len(insts)
        correct += sum(flags)
    return {"kept": kept, "correct": correct, "precision": (correct / kept) if kept else None}


def threshold_stats(records: Sequence[ImageScore], selected: Iterable[Any], *, sigma_c: float,
                    sigma_b: float, sigma_m: float) -> dict[str, Any]:
    """How the predictions on the unselected pool images fare against each pseudo-label
    threshold: instances, how many pass c, b, m alone and all three, the largest c, b, m."""
    chosen = set(selected)
    insts = [i for r in records if r.image_id not in chosen for i in r.instances]
    c = np.array([i.c for i in insts])
    b = np.array([i.b for i in insts])
    m = np.array([i.m for i in insts])
    return {
        "instances": len(insts),
        "pass_c": int((c > sigma_c).sum()), "pass_b": int((b > sigma_b).sum()), "pass_m": int((m > sigma_m).sum()),
        "pass_all": int(((c > sigma_c) & (b > sigma_b) & (m > sigma_m)).sum()),
        "max_c": float(c.max()) if len(insts) else None, "max_b": float(b.max()) if len(insts) else None,
        "max_m": float(m.max()) if len(insts) else None,
    }
