"""Learning loss for active learning (Yoo & Kweon, CVPR 2019) on the TSP model's FPN.

The loss-prediction module reads every FPN map: per level global average pooling -> FC(128) ->
ReLU, the levels concatenated -> FC -> one scalar, the predicted loss of the image. It is trained
beside the detector with the paper's margin ranking loss over pairs of images of the batch::

    L_loss = mean over pairs (i, j) of max(0, -sign(l_i - l_j) * (l^_i - l^_j) + xi)

where the batch is split in halves and image i is paired with image B-1-i (the official
code's ``input - input.flip(0)``), ``l`` is the true loss (detached), ``l^`` the prediction and
``xi`` the margin. The model adds ``learning_loss_weight * L_loss`` as ``loss_learning_loss``.

True per-image loss ``l_i`` (our definition; torchvision averages its losses over the batch):
the sum of all the model's training losses (RPN objectness and box, RoI classification, box,
mask, and the two IoU-head losses) computed on image i alone, without gradient, on the features
already computed for the batch. This reruns the RPN and RoI heads once per labeled image (not
the backbone): about the heads' cost again per step. Pseudo-labeled images (eq. 4-5) are left
out of the pairs, since their loss is not the loss of a labeled example. A batch with one
labeled image (batch size 1, or one labeled beside pseudo-labeled ones) pairs it with the last
labeled image of an earlier step, whose prediction is detached (:func:`memory_ranking_loss`), so
the module trains at any batch size; only the very first such step has no partner (zero loss,
kept in the graph for DDP).

``detach_features`` stops the module's gradient into the backbone; the paper does so after
epoch 120 of 200 so the ranking task does not disturb the detector late in training. Here it is
one switch for the whole run (``model.learning_loss_detach``, default off).

At inference each output dict gets ``predicted_loss`` (a 0-dim FloatTensor); the
``learning_loss`` strategy labels the images with the highest predicted loss first.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models.detection.image_list import ImageList

__all__ = ["LossPredictionModule", "loss_ranking_loss", "memory_ranking_loss", "forward_with_loss_prediction", "per_image_losses"]


class LossPredictionModule(nn.Module):
    """Predicts one image's training loss from its FPN features.

    Args:
        in_channels: channels of every FPN map (the backbone's ``out_channels``).
        num_levels: number of FPN maps (5 for the ResNet and tiny FPNs: P2-P5 and pool).
        hidden: width of each level's FC layer (128 in the paper).
        weight: lambda, the weight of ``loss_learning_loss`` in the total loss.
        margin: xi of the ranking loss.
        detach_features: stop the gradient into the backbone.

    Input: the FPN ``OrderedDict`` of FloatTensor[B, C, H_l, W_l]; output FloatTensor[B].
    """

    def __init__(
        self,
        in_channels: int,
        num_levels: int,
        hidden: int = 128,
        *,
        weight: float = 1.0,
        margin: float = 1.0,
        detach_features: bool = False,
    ) -> None:
        super().__init__()
        self.levels = nn.ModuleList(nn.Linear(in_channels, hidden) for _ in range(num_levels))
        self.fc = nn.Linear(hidden * num_levels, 1)
        self.weight = float(weight)
        self.margin = float(margin)
        self.detach_features = bool(detach_features)
        # (predicted, true) loss of the last labeled image seen in training: the partner of a
        # batch's only labeled image (not saved in checkpoints; each DDP rank keeps its own)
        self.memory: tuple[Tensor, Tensor] | None = None

    def forward(self, features: dict[str, Tensor] | list[Tensor]) -> Tensor:
        maps = list(features.values()) if isinstance(features, dict) else list(features)
        if len(maps) != len(self.levels):
            raise ValueError(f"LossPredictionModule: expected {len(self.levels)} feature maps, got {len(maps)}")
        parts = []
        for fc, x in zip(self.levels, maps):
            if self.detach_features:
                x = x.detach()
            parts.append(F.relu(fc(x.float().mean(dim=(2, 3)))))
        return self.fc(torch.cat(parts, dim=1)).squeeze(1)


def memory_ranking_loss(
    pred: Tensor, target: Tensor, memory_pred: Tensor, memory_target: Tensor, margin: float = 1.0
) -> Tensor:
    """The ranking loss of each image of the batch against a remembered image of an earlier step.

    ``max(0, -sign(l_i - l_m) * (l^_i - l^_m) + xi)``, mean over i; ``l^_m`` is detached (it was
    predicted by an earlier step's weights), so the gradient reaches only the current prediction.

    Args:
        pred, target (FloatTensor[B]): predicted and true losses of the batch's labeled images.
        memory_pred, memory_target (FloatTensor[1]): the remembered image's.
    """
    diff_pred = pred - memory_pred.detach().to(pred.dtype)
    diff_true = target.detach() - memory_target.detach().to(target.dtype)
    sign = torch.where(diff_true > 0, 1.0, -1.0).to(pred.dtype)
    return torch.clamp(margin - sign * diff_pred, min=0).mean()


def loss_ranking_loss(pred: Tensor, target: Tensor, margin: float = 1.0) -> Tensor:
    """Yoo & Kweon's ranking loss: pairs (i, B-1-i) for i < B // 2, mean over pairs.

    Args:
        pred (FloatTensor[B]): predicted losses l^.
        target (FloatTensor[B]): true losses l (detached here).
        margin: xi.

    Returns a 0-dim tensor; ``pred.sum() * 0`` when B < 2 (no pair).
    """
    n = pred.shape[0] // 2
    if n == 0:
        return pred.sum() * 0
    target = target.detach()
    diff_pred = (pred - pred.flip(0))[:n]
    diff_true = (target - target.flip(0))[:n]
    sign = torch.where(diff_true > 0, 1.0, -1.0).to(pred.dtype)  # ties count as "not larger"
    return torch.clamp(margin - sign * diff_pred, min=0).mean()


@torch.no_grad()
def per_image_losses(
    model: Any, features: dict[str, Tensor], images: ImageList, targets: list[dict[str, Any]], index: list[int]
) -> Tensor:
    """The sum of the model's training losses on each image ``index[k]`` alone: FloatTensor[len(index)]."""
    out = []
    for i in index:
        feats = OrderedDict((k, v[i : i + 1]) for k, v in features.items())
        one = ImageList(images.tensors[i : i + 1], [images.image_sizes[i]])
        proposals, rpn_losses = model.rpn(one, feats, [targets[i]])
        _, roi_losses = model.roi_heads(feats, proposals, one.image_sizes, [targets[i]])
        out.append(sum(v.float() for v in {**rpn_losses, **roi_losses}.values()))
    return torch.stack(out) if out else features[next(iter(features))].new_zeros(0)


def forward_with_loss_prediction(
    model: Any, images: list[Tensor], targets: list[dict[str, Any]] | None = None
) -> Any:
    """``GeneralizedRCNN.forward`` plus the loss-prediction module (``model.loss_prediction_module``).

    Training: torchvision's loss dict plus ``loss_learning_loss``. Inference: the detections,
    each with ``predicted_loss``.
    """
    from tsp_model.nn.detector_pass import detector_pass
    from tsp_model.nn.roi_heads import is_pseudo

    module: LossPredictionModule = model.loss_prediction_module
    run = detector_pass(model, images, targets)
    predicted = module(run.features)
    if not model.training:
        detections = model.transform.postprocess(run.detections, run.image_list.image_sizes, run.original_sizes)
        for det, value in zip(detections, predicted):
            det["predicted_loss"] = value.float()
        return detections
    features, image_list, targets = run.features, run.image_list, run.targets
    losses = dict(run.losses)
    labeled = [i for i, t in enumerate(targets) if not is_pseudo(t)]
    rank = predicted.sum() * 0
    if labeled:
        true = per_image_losses(model, features, image_list, targets, labeled).to(predicted.dtype)
        pred = predicted[labeled]
        if len(labeled) >= 2:
            rank = rank + loss_ranking_loss(pred, true, module.margin)
        elif module.memory is not None:
            # one labeled image in the batch (batch size 1, or a mixed labeled/pseudo batch):
            # pair it with the last labeled image of an earlier step
            rank = rank + memory_ranking_loss(pred, true, *module.memory, margin=module.margin)
        module.memory = (pred[-1:].detach().clone(), true[-1:].detach().clone())
    losses["loss_learning_loss"] = module.weight * rank
    return losses
