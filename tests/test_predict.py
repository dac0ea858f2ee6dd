"""Prediction records (c, b, m, s, S) and pool scoring to JSON lines."""

import math

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from helpers import CLASS_NAMES, tiny_config, write_tiny_coco
from tsp_model.engine.predict import PoolDataset, predict_images, score_pool
from tsp_model.model import build_model
from tsp_model.records import read_jsonl


class _Fixed(torch.nn.Module):
    """Returns two instances on image 0 and none on image 1."""

    def __init__(self):
        super().__init__()
        self.p = torch.nn.Parameter(torch.zeros(1))

    def forward(self, images):
        h, w = images[0].shape[-2:]
        masks = torch.zeros(2, 1, h, w)
        masks[0, 0, 2:6, 3:8] = 0.9  # 4 x 5 = 20 px above 0.5
        masks[1, 0, 10:12, 10:12] = 0.4  # below 0.5: empty binary mask
        full = {
            "boxes": torch.tensor([[3.0, 2.0, 8.0, 6.0], [10.0, 10.0, 12.0, 12.0]]),
            "labels": torch.tensor([1, 2]),
            "scores": torch.tensor([0.9, 0.8]),
            "box_iou": torch.tensor([0.6, 0.8]),
            "mask_iou": torch.tensor([0.3, 0.8]),
            "class_probs": torch.tensor([[0.1, 0.9, 0.0], [0.2, 0.0, 0.8]]),
            "masks": masks,
        }
        empty = {k: v[:0] for k, v in full.items()}
        return [full, empty]


def test_predict_images_scores_by_hand():
    images = [torch.zeros(3, 16, 20), torch.zeros(3, 16, 20)]
    recs, masks = predict_images(_Fixed(), images, CLASS_NAMES, empty_image_score=0.7, model_version="v", image_ids=[5, 6])
    a, b = recs
    # eq. 2: (0.9, 0.6, 0.3) has mean 0.6 and population std sqrt(0.06); (0.8, 0.8, 0.8) gives 0.8
    s1 = math.exp(-math.sqrt(0.06)) * 0.6
    assert [i.s for i in a.instances] == pytest.approx([s1, 0.8])
    # eq. 3 over (s1, 0.8)
    mean, std = (s1 + 0.8) / 2, abs(0.8 - s1) / 2
    assert a.S == pytest.approx(math.exp(-std) * mean)
    assert b.S == 0.7 and b.instances == []
    assert [i.category for i in a.instances] == ["box", "disk"]
    assert a.instances[0].entropy == pytest.approx(-(0.1 * math.log(0.1) + 0.9 * math.log(0.9)))
    assert (a.width, a.height, a.image_id, a.model_version) == (20, 16, 5, "v")
    assert masks[0].shape == (2, 16, 20) and masks[0][0].sum() == 20 and masks[0][1].sum() == 0
    rle = a.instances[0].mask
    assert rle["size"] == [16, 20] and isinstance(rle["counts"], str)
    assert mask_utils.area({"size": rle["size"], "counts": rle["counts"].encode()}) == 20


def test_score_pool_writes_one_record_per_readable_image(tmp_path, caplog):
    write_tiny_coco(tmp_path / "data", count=3, seed=0)
    img_dir = tmp_path / "data" / "images"
    (img_dir / "broken.png").write_bytes(b"not a png")
    pool = PoolDataset.from_folder(img_dir)
    assert [it[0] for it in pool.items] == ["broken.png", "img_000.png", "img_001.png", "img_002.png"]

    cfg = tiny_config()
    torch.manual_seed(0)
    model = build_model(cfg.model, len(CLASS_NAMES) + 1)
    out = score_pool(model, pool, class_names=CLASS_NAMES, config=cfg, out_path=tmp_path / "scores.jsonl", model_version="m1", progress=False)

    recs = read_jsonl(out)
    assert [r.image_id for r in recs] == ["img_000.png", "img_001.png", "img_002.png"]
    assert "broken.png" in caplog.text
    for r in recs:
        assert r.model_version == "m1" and (r.width, r.height) == (64, 64)
        s = np.array([i.s for i in r.instances])
        expected = math.exp(-s.std()) * s.mean() if len(s) else cfg.active.empty_image_score
        assert r.S == pytest.approx(expected)
        for inst in r.instances:
            cbm = np.array([inst.c, inst.b, inst.m])
            assert inst.s == pytest.approx(math.exp(-cbm.std()) * cbm.mean(), rel=1e-5)
    assert [p.name for p in tmp_path.iterdir() if p.is_file()] == ["scores.jsonl"]


def test_pool_from_pairs_keeps_given_ids(tmp_path):
    write_tiny_coco(tmp_path, count=2)
    pool = PoolDataset([(7, tmp_path / "images" / "img_001.png", "img_001.png")])
    image, image_id, name = pool[0]
    assert image.shape == (3, 64, 64) and image_id == 7 and name == "img_001.png"
