"""Dropout heads and batched MC-dropout passes (timing: benchmarks/mc_dropout_cost.py, not asserted)."""

from collections import OrderedDict

import numpy as np
import pytest
import torch
from torchvision.models.detection.faster_rcnn import TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads

from test_model import make_images, tiny_model
from tsp_model.nn.dropout_heads import DropoutMaskRCNNHeads, DropoutTwoMLPHead, has_mc_dropout, mc_dropout
from tsp_model.engine.embeddings import decode_embedding
from tsp_model.engine.predict import predict_images
from tsp_model.engine.mc_dropout import mc_head_passes

NAMES = ["a", "b", "c"]


def _eval_outputs(model, images):
    model.eval()
    with torch.no_grad():
        return model(images)


def test_default_model_has_torchvision_heads_and_refuses_mc():
    model = tiny_model()
    assert type(model.roi_heads.box_head) is TwoMLPHead
    assert type(model.roi_heads.mask_head) is MaskRCNNHeads
    assert not has_mc_dropout(model)
    with pytest.raises(ValueError, match="model.dropout > 0"):
        with mc_dropout(model):
            pass


def test_dropout_heads_keep_parameter_names():
    plain, dropped = tiny_model(seed=0), tiny_model(seed=0, dropout=0.3)
    assert isinstance(dropped.roi_heads.box_head, DropoutTwoMLPHead)
    assert isinstance(dropped.roi_heads.mask_head, DropoutMaskRCNNHeads)
    a, b = plain.state_dict(), dropped.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)  # same initial weights: dropout has no parameters


def test_eval_is_deterministic_and_forced_passes_differ():
    model = tiny_model(seed=0, dropout=0.3, box_score_thresh=0.0)
    images = make_images(1)
    first, second = _eval_outputs(model, images)[0], _eval_outputs(model, images)[0]
    assert torch.equal(first["scores"], second["scores"]) and torch.equal(first["masks"], second["masks"])
    with mc_dropout(model):
        third = _eval_outputs(model, images)[0]
    assert not model.roi_heads.box_head.mc_forced  # restored on exit
    assert third["scores"].shape != first["scores"].shape or not torch.equal(third["scores"], first["scores"])


def _fixed_detections(model):
    model.eval()
    images, _ = model.transform(make_images(2))
    feats = model.backbone(images.tensors)
    boxes = [torch.tensor([[10.0, 8.0, 40.0, 30.0], [30.0, 36.0, 58.0, 60.0]]), torch.tensor([[4.0, 4.0, 20.0, 20.0]])]
    labels = [torch.tensor([1, 2]), torch.tensor([2])]
    return feats, boxes, labels, images.image_sizes


@torch.no_grad()
def test_batched_passes_match_separate_passes_in_shape_and_distribution():
    model = tiny_model(seed=0, dropout=0.3)
    feats, boxes, labels, sizes = _fixed_detections(model)
    torch.manual_seed(0)
    probs_b, masks_b = mc_head_passes(model.roi_heads, feats, boxes, labels, sizes, 300, max_rois=128)
    torch.manual_seed(1)
    probs_s, masks_s = mc_head_passes(model.roi_heads, feats, boxes, labels, sizes, 300, batched=False)
    assert probs_b.shape == probs_s.shape == (300, 3, 3)
    assert masks_b.shape == masks_s.shape == (300, 3, 28, 28)
    assert torch.allclose(probs_b.sum(-1), torch.ones(300, 3), atol=1e-5)
    # passes differ from each other ...
    assert probs_b.std(0).max() > 1e-3 and masks_b.std(0).max() > 1e-3
    # ... and both modes sample the same distribution: means agree within a few standard errors
    se = probs_s.std(0) / 300**0.5
    assert bool(((probs_b.mean(0) - probs_s.mean(0)).abs() <= 5 * se + 1e-6).all())
    mse = masks_s.std(0) / 300**0.5
    assert float(((masks_b.mean(0) - masks_s.mean(0)).abs() <= 5 * mse + 1e-6).float().mean()) > 0.99
    assert probs_b.std(0).mean() == pytest.approx(float(probs_s.std(0).mean()), rel=0.15)
    # dropout probability 0: nothing to sample, a clear error instead of T equal passes
    model.roi_heads.box_head.p = model.roi_heads.mask_head.p = 0.0
    with pytest.raises(ValueError, match="model.dropout"):
        mc_head_passes(model.roi_heads, feats, boxes, labels, sizes, 3)


def test_predict_with_mc_passes_and_embeddings_keeps_the_detections():
    model = tiny_model(seed=0, dropout=0.3, box_score_thresh=0.0, box_detections_per_img=6)
    images = make_images(2)
    plain = predict_images(model, images, NAMES, amp=False)
    torch.manual_seed(0)
    extra = predict_images(model, images, NAMES, amp=False, mc_passes=4, embeddings=True)
    for a, b in zip(plain, extra):
        assert [i.to_json() for i in a.instances] == [i.to_json() for i in b.instances]
        assert a.S == b.S
        assert b.extras["mc_passes"] == 4
        assert len(b.extras["mc_instance_uncertainty"]) == len(b.instances) > 0
        assert b.extras["mc_uncertainty"] == pytest.approx(np.mean(b.extras["mc_instance_uncertainty"]))
        assert b.extras["mc_uncertainty"] > 0
        emb = decode_embedding(b.extras["embedding"])
        assert emb.shape == (5 * 64,) and np.linalg.norm(emb) == pytest.approx(1.0, abs=2e-3)
    with pytest.raises(ValueError, match="model.dropout > 0"):
        predict_images(tiny_model(seed=0), images, NAMES, amp=False, mc_passes=4)


def test_embedding_ignores_padding():
    from tsp_model.engine.embeddings import pooled_embeddings

    fmap = torch.zeros(2, 1, 4, 4)
    fmap[:, :, :2, :2] = 1.0  # image 1 covers the top-left quarter of the padded batch
    fmap[0] = 1.0
    emb = pooled_embeddings(OrderedDict([("0", fmap), ("1", fmap * 2)]), [(64, 64), (32, 32)], (64, 64))
    # both images see constant maps over their own area: the same direction (1, 2) / sqrt(5)
    assert torch.allclose(emb[0], emb[1]) and torch.allclose(emb[0], torch.tensor([1.0, 2.0]) / 5**0.5)
