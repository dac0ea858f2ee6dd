"""COCOeval wrapper: perfect, empty, wrong-class and half-right predictions."""

import contextlib
import io

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO

from helpers import TinyShapes, write_tiny_coco
from tsp_model.engine.evaluate import coco_from_dataset, coco_map, encode_mask, evaluate


def _gt(tmp_path) -> COCO:
    ann = write_tiny_coco(tmp_path, count=4, seed=3)
    with contextlib.redirect_stdout(io.StringIO()):
        return COCO(str(ann))


def _perfect(gt: COCO) -> list[dict]:
    res = []
    for a in gt.loadAnns(gt.getAnnIds()):
        res.append(
            {
                "image_id": a["image_id"],
                "category_id": a["category_id"],
                "score": 0.9,
                "bbox": a["bbox"],
                "segmentation": a["segmentation"],
            }
        )
    return res


def test_perfect_prediction_scores_one(tmp_path):
    gt = _gt(tmp_path)
    m = coco_map(gt, _perfect(gt))
    for key in ("segm_ap50", "segm_map", "bbox_ap50", "bbox_map"):
        assert m[key] == pytest.approx(1.0), key
    present = {gt.cats[a["category_id"]]["name"] for a in gt.loadAnns(gt.getAnnIds())}
    assert {k for k, v in m["segm_ap50_per_class"].items() if v is not None} == present
    assert all(v == pytest.approx(1.0) for v in m["segm_ap50_per_class"].values() if v is not None)


def test_empty_predictions_score_zero(tmp_path):
    m = coco_map(_gt(tmp_path), [])
    assert m["segm_ap50"] == 0.0 and m["bbox_ap50"] == 0.0 and m["num_predictions"] == 0


def test_wrong_class_scores_zero(tmp_path):
    gt = _gt(tmp_path)
    res = _perfect(gt)
    for r in res:
        r["category_id"] = 3 - r["category_id"]  # swap box <-> disk
    assert coco_map(gt, res)["segm_ap50"] == 0.0


def test_half_the_instances_give_half_recall():
    # 4 squares of one class on one image, 2 found with exact masks: precision 1 up to
    # recall 0.5, 0 beyond, so COCO's 101-point AP is 51/101 (recall points 0.00..0.50)
    gt = COCO()
    anns = []
    for j, x in enumerate((2, 20, 38, 56)):
        m = np.zeros((64, 72), np.uint8)
        m[10:20, x : x + 10] = 1
        rle = encode_mask(m)
        anns.append({"id": j + 1, "image_id": 1, "category_id": 1, "segmentation": rle,
                     "area": 100.0, "bbox": [x, 10, 10, 10], "iscrowd": 0})
    gt.dataset = {"images": [{"id": 1, "width": 72, "height": 64}], "annotations": anns,
                  "categories": [{"id": 1, "name": "sq"}]}
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
    res = [{"image_id": 1, "category_id": 1, "score": 0.9, "bbox": a["bbox"],
            "segmentation": a["segmentation"]} for a in anns[:2]]
    m = coco_map(gt, res)
    assert m["segm_ap50"] == pytest.approx(51 / 101)
    assert m["bbox_ap50"] == pytest.approx(51 / 101)
    assert m["segm_ap50_per_class"] == {"sq": pytest.approx(51 / 101)}


def test_coco_from_dataset_matches_targets():
    ds = TinyShapes(count=3, seed=1)
    gt = coco_from_dataset(ds, ds.class_names)
    assert sorted(gt.getImgIds()) == ds.ids
    assert len(gt.getAnnIds()) == sum(len(ds[i][1]["labels"]) for i in range(len(ds)))


class _Oracle(torch.nn.Module):
    """Returns each image's ground truth as its prediction (looked up by pixel content)."""

    def __init__(self, ds):
        super().__init__()
        self.ds = ds

    def forward(self, images):
        outs = []
        for im in images:
            idx = next(i for i in range(len(self.ds)) if torch.equal(self.ds[i][0], im))
            t = self.ds[idx][1]
            n = len(t["labels"])
            outs.append(
                {
                    "boxes": t["boxes"],
                    "labels": t["labels"],
                    "scores": torch.full((n,), 0.8),
                    "masks": t["masks"][:, None].float(),
                }
            )
        return outs


def test_evaluate_runs_model_over_dataset():
    ds = TinyShapes(count=3, seed=2)
    m = evaluate(_Oracle(ds), ds, batch_size=2, device="cpu", progress=False)
    assert m["segm_ap50"] == pytest.approx(1.0)
    assert m["bbox_ap50"] == pytest.approx(1.0)
    assert m["num_images"] == 3


def test_encode_masks_matches_one_at_a_time():
    import numpy as np

    from tsp_model.engine.evaluate import encode_mask, encode_masks

    rng = np.random.default_rng(0)
    masks = rng.random((5, 17, 23)) > 0.6
    assert encode_masks(masks) == [encode_mask(m) for m in masks]
    assert encode_masks(np.zeros((0, 4, 4), dtype=bool)) == []
