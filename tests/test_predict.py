"""Prediction records (c, b, m, s, S) and pool scoring to JSON lines."""

import math

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from pathlib import Path

from helpers import CLASS_NAMES, tiny_config, write_tiny_coco
from tsp_model.core.config import ActiveConfig
from tsp_model.engine.predict import PoolDataset, predict_images, score_pool
from tsp_model.nn.model import build_model
from tsp_model.core.records import read_jsonl


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
    # both detections (c 0.9 and 0.8) reach the scoring threshold 0.5
    a, b = predict_images(_Fixed(), images, CLASS_NAMES, ActiveConfig(score_threshold=0.5, empty_image_rule="constant",
                                                                      empty_image_score=0.7),
                          model_version="v", image_ids=[5, 6])
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
    rle = a.instances[0].mask
    assert rle["size"] == [16, 20] and isinstance(rle["counts"], str)
    assert mask_utils.area({"size": rle["size"], "counts": rle["counts"].encode()}) == 20
    assert mask_utils.area({"size": [16, 20], "counts": a.instances[1].mask["counts"].encode()}) == 0


def test_only_scored_instances_enter_eq3_and_every_detection_is_kept():
    images = [torch.zeros(3, 16, 20), torch.zeros(3, 16, 20)]
    # threshold 0.85: only the c = 0.9 detection is scored, S = its s; both stay in the record
    a, b = predict_images(_Fixed(), images, CLASS_NAMES, ActiveConfig(score_threshold=0.85), amp=False)
    assert a.S == pytest.approx(math.exp(-math.sqrt(0.06)) * 0.6)
    assert len(a.instances) == 2
    # no detection at all: the default "constant" rule gives empty_image_score = 1.0
    assert b.S == 1.0
    # threshold 0.95: nothing scored. "constant": 1.0; "max_c": the best candidate had c = 0.9, so 1 - 0.9
    a, _ = predict_images(_Fixed(), images, CLASS_NAMES, ActiveConfig(score_threshold=0.95), amp=False)
    assert a.S == 1.0
    a, b = predict_images(_Fixed(), images, CLASS_NAMES, ActiveConfig(score_threshold=0.95, empty_image_rule="max_c"),
                          amp=False)
    assert a.S == pytest.approx(0.1) and b.S == 1.0  # max_c without any detection: 1 - 0


def test_paste_mask_rle_matches_torchvisions_full_size_paste():
    from torchvision.models.detection.roi_heads import paste_masks_in_image

    from tsp_model.engine.predict import paste_mask_rle

    g = torch.Generator().manual_seed(0)
    h, w = 70, 90
    boxes = torch.tensor([[3.2, 4.7, 40.1, 30.9], [0.0, 0.0, 90.0, 70.0], [60.5, 50.2, 89.9, 69.8],
                          [10.0, 10.0, 11.0, 12.0], [-5.0, 30.0, 20.0, 80.0]])
    probs = torch.rand(len(boxes), 1, 28, 28, generator=g)
    full = paste_masks_in_image(probs, boxes, (h, w))[:, 0] > 0.5
    canvas = np.zeros((h, w), dtype=np.uint8, order="F")
    for k in range(len(boxes)):
        rle = paste_mask_rle(probs[k], boxes[k], h, w, canvas)
        got = mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode()}).astype(bool)
        np.testing.assert_array_equal(got, full[k].numpy(), err_msg=f"box {k}")
        assert not canvas.any()  # the shared buffer is clean for the next detection


def test_large_slice_masks_do_not_need_full_size_pastes_at_once(tmp_path):
    """A 4000 x 4000 slice with 100 detections: torchvision's postprocess would hold 100 float
    images of 64 MB (6.4 GB); RLE pastes one detection at a time stay far below 1.5 GB."""
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent("""
        import resource, sys, torch
        sys.path.insert(0, %r)
        from helpers import CLASS_NAMES
        from tsp_model.core.config import ActiveConfig, ModelConfig
        from tsp_model.engine.predict import predict_images
        from tsp_model.nn.model import build_model
        torch.manual_seed(0)
        model = build_model(ModelConfig(backbone="tiny_fpn", min_size=64, max_size=64, box_score_thresh=0.0,
                                        box_detections_per_img=100), len(CLASS_NAMES) + 1)
        with torch.no_grad():
            model.roi_heads.mask_predictor.mask_fcn_logits.bias.fill_(3.0)  # every mask fills its box
        image = torch.rand(3, 4000, 4000)
        (rec,) = predict_images(model, [image], CLASS_NAMES, ActiveConfig(), amp=False)
        print(len(rec.instances), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)
    """ % str(Path(__file__).parent))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    n, peak_mb = (int(v) for v in out.stdout.split())
    assert n == 100
    assert peak_mb < 1500, f"peak RSS {peak_mb} MB"


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
        scored = [i for i in r.instances if i.c >= cfg.active.score_threshold]
        s = np.array([i.s for i in scored])
        expected = math.exp(-s.std()) * s.mean() if len(s) else 1.0  # the "constant" rule, empty_image_score 1.0
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


@pytest.mark.parametrize("threshold, shown", [(0.3, True), (0.5, False)])
def test_masks_are_binarized_at_the_threshold_m_was_trained_with(threshold, shown):
    """Issue 23: m is the IoU of the mask binarized at model.mask_threshold, so the masks shown,
    pseudo-labeled and evaluated are binarized there too. Every mask probability is 0.4 here:
    at 0.3 each detection's mask covers its box, at 0.5 it is empty."""
    from tsp_model.core.config import ModelConfig
    from tsp_model.nn.roi_heads import mask_threshold_of

    torch.manual_seed(0)
    model = build_model(ModelConfig(backbone="tiny_fpn", min_size=64, max_size=64, box_score_thresh=0.0,
                                    mask_threshold=threshold), num_classes=3)
    with torch.no_grad():
        logits = model.roi_heads.mask_predictor.mask_fcn_logits
        logits.weight.zero_()
        logits.bias.fill_(math.log(0.4 / 0.6))  # sigmoid -> 0.4
    assert mask_threshold_of(model) == threshold
    (rec,) = predict_images(model, [torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(1))],
                            CLASS_NAMES, amp=False)
    assert rec.instances
    for inst in rec.instances:
        area = mask_utils.area({"size": inst.mask["size"], "counts": inst.mask["counts"].encode()})
        x1, y1, x2, y2 = inst.box
        if shown:
            # torchvision pastes the 28 x 28 mask on the box grown by 30/28 (one cell of padding
            # each side), rounded out to whole pixels
            assert 0 < area <= ((x2 - x1) * 30 / 28 + 2) * ((y2 - y1) * 30 / 28 + 2)
        else:
            assert area == 0
