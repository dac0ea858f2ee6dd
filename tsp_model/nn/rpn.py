"""Region proposal network with the pseudo-label rule of eq. 4 for the objectness loss.

For a pseudo-labeled image (``target["pseudo"]`` true) the RPN classification loss counts
positive anchors only (summed, then divided by the number of sampled anchors as in eq. 1): instances the model was not confident about were dropped from the pseudo
labels, so "background" there may hide a lesion. Box regression is unchanged. Each loss term is
``sup + beta * semi`` (eq. 5).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.rpn import RegionProposalNetwork, concat_box_prediction_layers

from tsp_model.nn.roi_heads import is_pseudo


class TSPRegionProposalNetwork(RegionProposalNetwork):
    """torchvision ``RegionProposalNetwork`` whose loss honors ``target["pseudo"]``.

    Args:
        *args, **kwargs: as for ``RegionProposalNetwork``.
        semi_loss_weight: beta in eq. 5.
    """

    def __init__(self, *args: Any, semi_loss_weight: float = 0.01, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.semi_loss_weight = semi_loss_weight

    def semi_loss(
        self, objectness: Tensor, pred_bbox_deltas: Tensor, labels: list[Tensor], regression_targets: list[Tensor]
    ) -> tuple[Tensor, Tensor]:
        """Eq. 4 for the RPN: ``(1 / N_cls) * sum_i p_i^* L_cls`` (objectness BCE summed over the
        sampled positive anchors, divided by all sampled anchors, as eq. 1 normalizes); box loss
        as usual.

        Args:
            objectness (FloatTensor[A_total, 1]), pred_bbox_deltas (FloatTensor[A_total, 4]):
                predictions for the pseudo images' anchors, image-major.
            labels (list[FloatTensor[A]]): 1 positive, 0 negative, -1 ignored.
            regression_targets (list[FloatTensor[A, 4]]).
        """
        sampled_pos, sampled_neg = self.fg_bg_sampler(labels)
        pos = torch.where(torch.cat(sampled_pos, dim=0))[0]
        num_sampled = pos.numel() + int(torch.cat(sampled_neg, dim=0).sum())
        objectness = objectness.flatten()
        regression_targets = torch.cat(regression_targets, dim=0)
        if pos.numel() == 0:
            zero = objectness.sum() * 0 + pred_bbox_deltas.sum() * 0
            return zero, zero
        box_loss = F.smooth_l1_loss(
            pred_bbox_deltas[pos], regression_targets[pos], beta=1 / 9, reduction="sum"
        ) / max(num_sampled, 1)
        # eq. 4: p_i^* L_cls summed over the positives, divided by all sampled anchors (N_cls)
        objectness_loss = F.binary_cross_entropy_with_logits(
            objectness[pos], torch.ones_like(objectness[pos]), reduction="sum"
        ) / max(num_sampled, 1)
        return objectness_loss, box_loss

    def forward(
        self,
        images: ImageList,
        features: dict[str, Tensor],
        targets: list[dict[str, Tensor]] | None = None,
    ) -> tuple[list[Tensor], dict[str, Tensor]]:
        """Same contract as ``RegionProposalNetwork.forward``."""
        feats = list(features.values())
        objectness, pred_bbox_deltas = self.head(feats)
        anchors = self.anchor_generator(images, feats)
        num_images = len(anchors)
        num_anchors_per_level = [o[0].shape[0] * o[0].shape[1] * o[0].shape[2] for o in objectness]
        objectness, pred_bbox_deltas = concat_box_prediction_layers(objectness, pred_bbox_deltas)
        # Deltas are detached: Faster R-CNN does not backpropagate through the proposals.
        proposals = self.box_coder.decode(pred_bbox_deltas.detach(), anchors).view(num_images, -1, 4)
        boxes, _scores = self.filter_proposals(proposals, objectness, images.image_sizes, num_anchors_per_level)

        losses: dict[str, Tensor] = {}
        if self.training:
            if targets is None:
                raise ValueError("targets should not be None in training mode")
            labels, matched_gt_boxes = self.assign_targets_to_anchors(anchors, targets)
            regression_targets = self.box_coder.encode(matched_gt_boxes, anchors)
            pseudo = [is_pseudo(t) for t in targets]
            obj_i = objectness.view(num_images, -1, 1)
            deltas_i = pred_bbox_deltas.view(num_images, -1, 4)
            sup = [i for i in range(num_images) if not pseudo[i]]
            semi = [i for i in range(num_images) if pseudo[i]]
            zero = objectness.sum() * 0 + pred_bbox_deltas.sum() * 0
            obj_sup = box_sup = obj_semi = box_semi = zero
            if sup:
                obj_sup, box_sup = self.compute_loss(
                    obj_i[sup].reshape(-1, 1),
                    deltas_i[sup].reshape(-1, 4),
                    [labels[i] for i in sup],
                    [regression_targets[i] for i in sup],
                )
            if semi:
                obj_semi, box_semi = self.semi_loss(
                    obj_i[semi].reshape(-1, 1),
                    deltas_i[semi].reshape(-1, 4),
                    [labels[i] for i in semi],
                    [regression_targets[i] for i in semi],
                )
            beta = self.semi_loss_weight
            losses = {
                "loss_objectness": obj_sup + beta * obj_semi,
                "loss_rpn_box_reg": box_sup + beta * box_semi,
            }
        return boxes, losses
