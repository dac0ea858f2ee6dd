"""Learning loss (Yoo & Kweon 2019): the module, its ranking loss, and its wiring into TSPMaskRCNN."""

from collections import OrderedDict

import pytest
import torch

from test_model import LOSS_KEYS, losses_of, make_images, make_target, tiny_model
from tsp_model.engine.predict import predict_images
from tsp_model.nn.learning_loss import LossPredictionModule, loss_ranking_loss, memory_ranking_loss, per_image_losses


def _features(batch=3, channels=8):
    g = torch.Generator().manual_seed(0)
    return OrderedDict(
        (name, torch.rand(batch, channels, size, size, generator=g))
        for name, size in [("0", 16), ("1", 8), ("2", 4), ("3", 2), ("pool", 1)]
    )


def test_module_shapes_and_checks():
    module = LossPredictionModule(8, 5)
    assert [tuple(fc.weight.shape) for fc in module.levels] == [(128, 8)] * 5  # GAP -> FC(128) per level
    assert tuple(module.fc.weight.shape) == (1, 5 * 128)  # concat -> FC -> scalar
    out = module(_features())
    assert out.shape == (3,)
    with pytest.raises(ValueError, match="expected 5 feature maps, got 4"):
        module(list(_features().values())[:4])


def test_ranking_loss_hand_computed():
    pred = torch.tensor([1.0, 0.2, 0.5, 0.3])
    # pairs (0, 3) and (1, 2): predicted differences 0.7 and -0.3
    # target (3, 1, 2, 4): true differences -1, -1 -> sign -1: max(0, 1 + 0.7) = 1.7, max(0, 1 - 0.3) = 0.7
    assert float(loss_ranking_loss(pred, torch.tensor([3.0, 1.0, 2.0, 4.0]))) == pytest.approx(1.2)
    # target (3, 2, 1, 4): second pair's sign +1: max(0, 1 + 0.3) = 1.3 -> mean (1.7 + 1.3) / 2
    assert float(loss_ranking_loss(pred, torch.tensor([3.0, 2.0, 1.0, 4.0]))) == pytest.approx(1.5)
    # well-ordered predictions beyond the margin cost nothing
    assert float(loss_ranking_loss(torch.tensor([5.0, 0.0]), torch.tensor([2.0, 1.0]), margin=1.0)) == 0.0
    # margin 0.5, odd batch (middle image left out): pair (0, 2) only, 0.5 - (+1)(0.2 - 0.6) = 0.9
    got = loss_ranking_loss(torch.tensor([0.2, 9.0, 0.6]), torch.tensor([4.0, 0.0, 1.0]), margin=0.5)
    assert float(got) == pytest.approx(0.9)
    one = torch.tensor([0.4], requires_grad=True)
    zero = loss_ranking_loss(one, torch.tensor([1.0]))
    assert float(zero.detach()) == 0.0
    zero.backward()  # still in the graph (DDP)
    assert one.grad is not None


def test_off_by_default_and_losses_unchanged_when_on():
    off = tiny_model(seed=0)
    assert off.loss_prediction_module is None
    targets = [make_target(), make_target(), make_target(pseudo=True)]
    base = losses_of(off, targets)
    assert base.keys() == LOSS_KEYS
    on = tiny_model(seed=0, learning_loss=True, learning_loss_weight=0.5)
    assert isinstance(on.loss_prediction_module, LossPredictionModule)
    with_ll = losses_of(on, targets)
    assert with_ll.keys() == LOSS_KEYS | {"loss_learning_loss"}
    for key in LOSS_KEYS:  # same initial weights, same sampled RoIs: the detector is untouched
        assert with_ll[key] == pytest.approx(base[key], rel=1e-6, abs=1e-7), key
    assert with_ll["loss_learning_loss"] > 0


def test_learning_loss_trains_the_module_and_reaches_the_backbone_unless_detached():
    targets = [make_target(), make_target()]
    for detach in (False, True):
        model = tiny_model(seed=0, learning_loss=True, learning_loss_detach=detach)
        model.train()
        torch.manual_seed(1)
        losses = model(make_images(2), targets)
        losses["loss_learning_loss"].backward()
        assert model.loss_prediction_module.fc.weight.grad.abs().sum() > 0
        grads = [p.grad for p in model.backbone.parameters() if p.grad is not None]
        backbone_grad = sum(float(g.abs().sum()) for g in grads)
        assert (backbone_grad == 0.0) if detach else (backbone_grad > 0), detach
        # the true per-image losses are targets only: no gradient reaches the RoI heads from them
        assert all(p.grad is None or float(p.grad.abs().sum()) == 0 for p in model.roi_heads.parameters())


def test_memory_ranking_loss_hand_computed():
    pred = torch.tensor([0.5, 2.0], requires_grad=True)
    # remembered image: predicted 1.0, true loss 3.0; batch true losses 4.0 (larger) and 1.0 (smaller)
    # image 0: sign +1, 1 - (0.5 - 1.0) = 1.5; image 1: sign -1, 1 + (2.0 - 1.0) = 2.0 -> mean 1.75
    got = memory_ranking_loss(pred, torch.tensor([4.0, 1.0]), torch.tensor([1.0]), torch.tensor([3.0]))
    assert float(got) == pytest.approx(1.75)
    got.backward()
    assert torch.allclose(pred.grad, torch.tensor([-0.5, 0.5]))  # d/dpred of mean: -sign / 2


def test_pseudo_images_are_left_out_of_the_pairs():
    model = tiny_model(seed=0, learning_loss=True)
    losses = losses_of(model, [make_target(), make_target(pseudo=True)])
    assert losses["loss_learning_loss"] == 0.0  # one labeled image and nothing remembered yet: no pair
    assert model.loss_prediction_module.memory is not None  # the pseudo image was not remembered
    assert model.loss_prediction_module.memory[0].shape == (1,)


def test_trains_at_batch_size_one():
    """Batch size 1 (the CPU benchmark's setting): from the second step on, the one labeled image
    is ranked against the previous step's, and the module gets a gradient."""
    model = tiny_model(seed=0, learning_loss=True)
    model.train()
    module = model.loss_prediction_module
    torch.manual_seed(0)
    first = model(make_images(1, seed=1), [make_target()])
    assert float(first["loss_learning_loss"]) == 0.0
    remembered_pred, remembered_true = module.memory
    torch.manual_seed(0)
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64),
             "masks": torch.zeros(0, 64, 64, dtype=torch.uint8)}
    second = model(make_images(1, seed=2), [empty])
    loss = second["loss_learning_loss"]
    assert float(loss) > 0
    # the value is the memory rule applied to this step's prediction and true loss
    pred_now, true_now = module.memory
    expected = max(0.0, 1.0 - (1.0 if float(true_now) > float(remembered_true) else -1.0)
                   * (float(pred_now) - float(remembered_pred)))
    assert float(loss) == pytest.approx(expected, rel=1e-5)
    loss.backward()
    assert float(module.fc.weight.grad.abs().sum()) > 0


def test_per_image_losses_are_each_images_own_loss():
    model = tiny_model(seed=0, learning_loss=True)
    model.train()
    images, _ = model.transform(make_images(2), [make_target(), make_target()])
    feats = model.backbone(images.tensors)
    t_hard, t_easy = make_target(), make_target()
    t_easy = {**t_easy, "boxes": t_easy["boxes"][:0], "labels": t_easy["labels"][:0], "masks": t_easy["masks"][:0]}
    _, targets = model.transform(make_images(2), [t_hard, t_easy])
    torch.manual_seed(0)
    losses = per_image_losses(model, feats, images, targets, [0, 1])
    assert losses.shape == (2,) and not losses.requires_grad
    assert bool(torch.isfinite(losses).all()) and float(losses.min()) > 0


def test_inference_reports_predicted_loss_and_predict_stores_it():
    model = tiny_model(seed=0, learning_loss=True, box_score_thresh=0.0)
    model.eval()
    with torch.no_grad():
        outs = model(make_images(2))
    assert all(o["predicted_loss"].dim() == 0 for o in outs)
    assert {"boxes", "scores", "box_iou", "mask_iou", "class_probs"} <= outs[0].keys()
    records = predict_images(model, make_images(2), ["a", "b", "c"], amp=False)
    for rec, out in zip(records, outs):
        assert rec.extras["predicted_loss"] == pytest.approx(float(out["predicted_loss"]), rel=1e-6)
    plain = predict_images(tiny_model(seed=0), make_images(2), ["a", "b", "c"], amp=False)
    assert plain[0].extras == {}
