"""RoI heads with the TSP IoU heads and the semi-supervised loss (paper eq. 1, 4, 5).

``TSPRoIHeads`` extends torchvision's ``RoIHeads``:

* training, labeled images (L_sup, eq. 1): torchvision's classification, box and mask losses,
  plus ``loss_box_iou`` and ``loss_mask_iou``: l2 between the IoU heads' outputs and the IoU of
  the regressed box / of the mask binarized at ``mask_threshold`` with the matched ground truth,
  on positive RoIs (IoU > 0.5 with a ground truth), weighted by lambda. The mask target is the
  IoU with the whole ground-truth mask, including its part outside the RoI (Mask Scoring
  R-CNN's correction); both targets are computed in fp32 whatever the autocast dtype.
* training, pseudo-labeled images (``target["pseudo"]`` true; L_semi, eq. 4): classification
  summed over positive RoIs only (no background loss where unlabeled lesions may hide) and
  divided by the number of sampled RoIs as in eq. 1, box and mask losses unchanged, no IoU-head
  losses.
* each returned loss term is ``sup + beta * semi`` (eq. 5).
* inference: every result dict carries ``box_iou`` (b), ``mask_iou`` (m) and ``class_probs``
  beside torchvision's keys. Each head is read on the input it was trained on: b on the box
  features of the proposal each kept detection was regressed from (the features the box-IoU
  head learned IoU(regressed box, gt) from), m on the mask features of the final box (the RoI
  the shown mask is predicted on).
* one mask threshold (``mask_threshold``) binarizes the predicted mask for the mask-IoU target;
  the same value binarizes the masks shown, pseudo-labeled and evaluated
  (:func:`mask_threshold_of`), so m is the IoU of the mask it is shown with.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.models.detection.roi_heads import (
    RoIHeads,
    fastrcnn_loss,
    maskrcnn_inference,
    maskrcnn_loss,
    project_masks_on_boxes,
)
from torchvision.ops import boxes as box_ops

from tsp_model.nn.heads import BoxIoUHead, MaskIoUHead


def mask_threshold_of(model: torch.nn.Module, default: float = 0.5) -> float:
    """The probability at which ``model`` binarizes its masks: the ``mask_threshold`` of its
    :class:`TSPRoIHeads` (the one the mask-IoU target used; found through wrappers such as DDP),
    or torchvision's 0.5 for a plain Mask R-CNN."""
    for module in model.modules():
        if isinstance(module, TSPRoIHeads):
            return float(module.mask_threshold)
    return default


def is_pseudo(target: dict[str, Any]) -> bool:
    """True when a target dict marks a pseudo-labeled image (``"pseudo"``: bool or tensor)."""
    flag = target.get("pseudo", False)
    if isinstance(flag, Tensor):
        return bool(flag.item())
    return bool(flag)


def paired_box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """IoU of ``boxes1[i]`` with ``boxes2[i]``; both FloatTensor[N, 4] (x1, y1, x2, y2) -> [N]."""
    lt = torch.max(boxes1[:, :2], boxes2[:, :2])
    rb = torch.min(boxes1[:, 2:], boxes2[:, 2:])
    inter = (rb - lt).clamp(min=0).prod(dim=1)
    union = box_ops.box_area(boxes1) + box_ops.box_area(boxes2) - inter
    return inter / union.clamp(min=1e-6)


def mask_area_ratios(gt_masks: Tensor, boxes: Tensor, matched_idxs: Tensor) -> Tensor:
    """Share of each matched ground-truth mask's area that lies inside its RoI.

    A pixel (row r, column c) counts as inside ``(x1, y1, x2, y2)`` when its center
    ``(c + 0.5, r + 0.5)`` does, as RoIAlign samples it.

    Args:
        gt_masks (Tensor[G, H, W]): the image's ground-truth masks (0/1).
        boxes (FloatTensor[N, 4]): RoIs in the same pixel frame.
        matched_idxs (Int64Tensor[N]): the ground truth each RoI is matched to.

    Returns:
        FloatTensor[N] in [0, 1]; 0 where the ground-truth mask is empty.
    """
    if boxes.numel() == 0:
        return boxes.new_zeros(0, dtype=torch.float32)
    masks = (gt_masks > 0).to(torch.float64)
    height, width = masks.shape[-2:]
    # integral image with a zero row and column in front: S[r, c] = sum of masks[:r, :c]
    integral = F.pad(masks.cumsum(-1).cumsum(-2), (1, 0, 1, 0))
    b = boxes.detach().to(torch.float64)
    x1 = torch.ceil(b[:, 0] - 0.5).clamp(0, width).long()
    y1 = torch.ceil(b[:, 1] - 0.5).clamp(0, height).long()
    x2 = torch.ceil(b[:, 2] - 0.5).clamp(0, width).long()
    y2 = torch.ceil(b[:, 3] - 0.5).clamp(0, height).long()
    x2, y2 = torch.maximum(x2, x1), torch.maximum(y2, y1)
    idx = matched_idxs.long()
    inside = integral[idx, y2, x2] - integral[idx, y1, x2] - integral[idx, y2, x1] + integral[idx, y1, x1]
    total = integral[idx, -1, -1]
    return torch.where(total > 0, inside / total.clamp(min=1.0), torch.zeros_like(total)).float()


def mask_iou_targets(mask_probs: Tensor, gt_in_roi: Tensor, area_ratios: Tensor, threshold: float) -> Tensor:
    """IoU of each predicted mask, binarized at ``threshold``, with its WHOLE ground-truth mask.

    The prediction lives on the RoI's M x M grid, so the part of the ground truth outside the
    RoI is invisible there; as in Mask Scoring R-CNN, its area is restored from the share of the
    ground-truth area inside the RoI (:func:`mask_area_ratios`): in grid units the whole ground
    truth covers ``area(gt in RoI) / ratio``. A RoI over 60% of a lesion with a perfect in-box
    mask thus gets 0.6, not 1.0.

    Args:
        mask_probs (FloatTensor[N, M, M]): predicted mask probabilities of the target class.
        gt_in_roi (FloatTensor[N, M, M]): ground truth projected onto the same RoIs (0..1).
        area_ratios (FloatTensor[N]): share of each ground-truth mask inside its RoI.
        threshold: binarization threshold of the prediction (0.3 in the paper).

    Returns:
        FloatTensor[N]: IoU in [0, 1]; 0 where the ground truth is not inside the RoI at all.
    """
    pred = (mask_probs > threshold).float()  # as the pasted masks: torchvision binarizes with ">"
    gt = (gt_in_roi >= 0.5).float()
    inter = (pred * gt).flatten(1).sum(1)
    pred_area = pred.flatten(1).sum(1)
    ratio = area_ratios.float()
    gt_full = torch.where(ratio > 0, gt.flatten(1).sum(1) / ratio.clamp(min=1e-6), torch.zeros_like(ratio))
    union = pred_area + gt_full - inter
    iou = torch.where(union > 0, inter / union.clamp(min=1e-6), torch.zeros_like(union))
    return iou.clamp(0.0, 1.0)


def regressed_box_iou_targets(box_coder: Any, deltas: Tensor, proposals: Tensor, gt_boxes: Tensor) -> Tensor:
    """Eq. 1's box-IoU target: IoU of each regressed box with its matched ground truth, in fp32.

    Under autocast the box deltas come out in bf16/fp16, whose spacing near x = 400 is 2 px: a
    12 x 11 px lesion's IoU would be off by tens of percent. Decoding and IoU run in fp32.

    Args:
        box_coder: the RoI heads' ``BoxCoder``.
        deltas (Tensor[N, 4]): regression of each RoI for its matched class (any float dtype).
        proposals (Tensor[N, 4]), gt_boxes (Tensor[N, 4]): the RoIs and their matched boxes.

    Returns:
        FloatTensor[N] (float32), detached.
    """
    pred = box_coder.decode_single(deltas.detach().float(), proposals.detach().float())
    return paired_box_iou(pred, gt_boxes.detach().float()).detach()


def positive_only_classification_loss(class_logits: Tensor, labels: Tensor) -> Tensor:
    """Eq. 4's RoI classification term: ``(1 / N_cls) * sum_i p_i^* L_cls``.

    Cross entropy summed over the positive RoIs only (no background loss where unlabeled lesions
    may hide) and divided by the number of sampled RoIs N_cls, positives and negatives alike, as
    in eq. 1: beta then weighs a pseudo image as the paper means, not by 1 / (positive share).

    Args:
        class_logits (FloatTensor[R, C]), labels (Int64Tensor[R]): sampled RoIs, 0 = background.
    """
    pos = labels > 0
    if labels.numel() == 0 or not bool(pos.any()):
        return class_logits.sum() * 0
    return F.cross_entropy(class_logits[pos], labels[pos], reduction="sum") / labels.numel()


def iou_head_loss(pred: Tensor, target: Tensor) -> Tensor:
    """l2 loss of eq. 1 for one IoU head: mean squared error over positive RoIs."""
    return F.mse_loss(pred.float(), target.float())


def _cat(tensors: list[Tensor], index: list[int]) -> Tensor:
    return torch.cat([tensors[i] for i in index], dim=0)


class TSPRoIHeads(RoIHeads):
    """torchvision ``RoIHeads`` plus box-IoU and mask-IoU heads and the eq. 4-5 losses.

    Args:
        *args, **kwargs: as for ``RoIHeads``.
        box_iou_head: predicts b from box-branch RoI features.
        mask_iou_head: predicts m from mask-branch RoI features.
        iou_loss_weight: lambda in eq. 1.
        semi_loss_weight: beta in eq. 5.
        mask_threshold: binarization threshold for the mask-IoU target.
    """

    def __init__(
        self,
        *args: Any,
        box_iou_head: BoxIoUHead,
        mask_iou_head: MaskIoUHead,
        iou_loss_weight: float = 1.0,
        semi_loss_weight: float = 0.01,
        mask_threshold: float = 0.3,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.box_iou_head = box_iou_head
        self.mask_iou_head = mask_iou_head
        self.iou_loss_weight = iou_loss_weight
        self.semi_loss_weight = semi_loss_weight
        self.mask_threshold = mask_threshold

    # ------------------------------------------------------------------ training
    def _training_forward(
        self,
        features: dict[str, Tensor],
        proposals: list[Tensor],
        image_shapes: list[tuple[int, int]],
        targets: list[dict[str, Tensor]],
    ) -> dict[str, Tensor]:
        proposals, matched_idxs, labels, regression_targets = self.select_training_samples(proposals, targets)
        n_img = len(proposals)
        pseudo = [is_pseudo(t) for t in targets]
        sup = [i for i in range(n_img) if not pseudo[i]]
        semi = [i for i in range(n_img) if pseudo[i]]
        beta = self.semi_loss_weight
        lam = self.iou_loss_weight

        box_roi = self.box_roi_pool(features, proposals, image_shapes)
        class_logits, box_regression = self.box_predictor(self.box_head(box_roi))
        counts = [p.shape[0] for p in proposals]
        logits_i = list(class_logits.split(counts))
        reg_i = list(box_regression.split(counts))
        roi_i = list(box_roi.split(counts))
        zero = class_logits.sum() * 0 + box_regression.sum() * 0

        # Classification and box regression: eq. 1 on labeled images, eq. 4 on pseudo ones.
        cls_sup = box_sup = cls_semi = box_semi = zero
        if sup:
            cls_sup, box_sup = fastrcnn_loss(
                _cat(logits_i, sup), _cat(reg_i, sup), [labels[i] for i in sup], [regression_targets[i] for i in sup]
            )
        if semi:
            semi_logits, semi_labels = _cat(logits_i, semi), _cat(labels, semi)
            cls_semi = positive_only_classification_loss(semi_logits, semi_labels)
            _, box_semi = fastrcnn_loss(
                semi_logits, _cat(reg_i, semi), [labels[i] for i in semi], [regression_targets[i] for i in semi]
            )
        losses = {
            "loss_classifier": cls_sup + beta * cls_semi,
            "loss_box_reg": box_sup + beta * box_semi,
        }

        # Box-IoU head (labeled images only): target = IoU(regressed box, matched gt box).
        pos_sup = [torch.where(labels[i] > 0)[0] for i in sup]
        n_cls = class_logits.shape[1]
        if sup and sum(int(p.numel()) for p in pos_sup) > 0:
            feats, targets_b = [], []
            for i, pos in zip(sup, pos_sup):
                lbl = labels[i][pos]
                deltas = reg_i[i][pos].reshape(-1, n_cls, 4)[torch.arange(pos.numel()), lbl]
                gt = targets[i]["boxes"][matched_idxs[i][pos]]
                targets_b.append(regressed_box_iou_targets(self.box_coder, deltas, proposals[i][pos], gt))
                feats.append(roi_i[i][pos])
            target_b = torch.cat(targets_b)
            loss_box_iou = iou_head_loss(self.box_iou_head(torch.cat(feats)), target_b)
        else:
            loss_box_iou = self.box_iou_head(box_roi[:1]).sum() * 0
        losses["loss_box_iou"] = lam * loss_box_iou

        # Mask branch on positive RoIs of every image, as torchvision does.
        mask_proposals, pos_matched = [], []
        for i in range(n_img):
            pos = torch.where(labels[i] > 0)[0]
            mask_proposals.append(proposals[i][pos])
            pos_matched.append(matched_idxs[i][pos])
        mask_roi = self.mask_roi_pool(features, mask_proposals, image_shapes)
        mask_logits = self.mask_predictor(self.mask_head(mask_roi))
        m_counts = [p.shape[0] for p in mask_proposals]
        mlog_i = list(mask_logits.split(m_counts))
        mroi_i = list(mask_roi.split(m_counts))
        gt_masks = [t["masks"] for t in targets]
        gt_labels = [t["labels"] for t in targets]

        def mask_loss(index: list[int]) -> Tensor:
            if not index:
                return mask_logits.sum() * 0
            return maskrcnn_loss(
                _cat(mlog_i, index),
                [mask_proposals[i] for i in index],
                [gt_masks[i] for i in index],
                [gt_labels[i] for i in index],
                [pos_matched[i] for i in index],
            )

        losses["loss_mask"] = mask_loss(sup) + beta * mask_loss(semi)

        # Mask-IoU head (labeled images only): target = IoU(mask > threshold, gt mask).
        sup_with_pos = [i for i in sup if m_counts[i] > 0]
        if sup_with_pos:
            size = mask_logits.shape[-1]
            probs, gts, ratios = [], [], []
            for i in sup_with_pos:
                lbl = gt_labels[i][pos_matched[i]]
                probs.append(mlog_i[i][torch.arange(lbl.numel()), lbl].float().sigmoid())
                gts.append(project_masks_on_boxes(gt_masks[i], mask_proposals[i], pos_matched[i], size).float())
                ratios.append(mask_area_ratios(gt_masks[i], mask_proposals[i], pos_matched[i]))
            target_m = mask_iou_targets(
                torch.cat(probs).detach(), torch.cat(gts), torch.cat(ratios), self.mask_threshold
            ).detach()
            loss_mask_iou = iou_head_loss(self.mask_iou_head(_cat(mroi_i, sup_with_pos)), target_m)
        else:
            # No positive labeled RoI: keep every parameter in the graph (DDP), contribute zero.
            dummy = mask_roi.new_zeros((1, *mask_roi.shape[1:]))
            loss_mask_iou = self.mask_iou_head(dummy).sum() * 0
        losses["loss_mask_iou"] = lam * loss_mask_iou
        return losses

    # ----------------------------------------------------------------- inference
    def postprocess_with_probs(
        self,
        class_logits: Tensor,
        box_regression: Tensor,
        proposals: list[Tensor],
        image_shapes: list[tuple[int, int]],
    ) -> tuple[list[Tensor], list[Tensor], list[Tensor], list[Tensor], list[Tensor]]:
        """``RoIHeads.postprocess_detections`` that also returns, per detection, the proposal it
        was regressed from and that proposal's softmax vector.

        Returns per image: boxes FloatTensor[N, 4], scores FloatTensor[N], labels Int64Tensor[N],
        class_probs FloatTensor[N, num_classes], source Int64Tensor[N] (index of the proposal
        within the image's proposals).
        """
        num_classes = class_logits.shape[-1]
        counts = [p.shape[0] for p in proposals]
        pred_boxes = self.box_coder.decode(box_regression, proposals).split(counts, 0)
        pred_probs = F.softmax(class_logits, -1).split(counts, 0)
        out_boxes, out_scores, out_labels, out_probs, out_source = [], [], [], [], []
        for boxes, probs, shape in zip(pred_boxes, pred_probs, image_shapes):
            boxes = box_ops.clip_boxes_to_image(boxes, shape)
            n = probs.shape[0]
            labels = torch.arange(num_classes, device=probs.device).view(1, -1).expand(n, -1)
            source = torch.arange(n, device=probs.device).view(-1, 1).expand(n, num_classes)
            # One candidate per (proposal, foreground class), as torchvision does.
            boxes = boxes[:, 1:].reshape(-1, 4)
            scores = probs[:, 1:].reshape(-1)
            labels = labels[:, 1:].reshape(-1)
            source = source[:, 1:].reshape(-1)
            keep = torch.where(scores > self.score_thresh)[0]
            keep = keep[box_ops.remove_small_boxes(boxes[keep], min_size=1e-2)]
            keep = keep[box_ops.batched_nms(boxes[keep], scores[keep], labels[keep], self.nms_thresh)]
            keep = keep[: self.detections_per_img]
            out_boxes.append(boxes[keep])
            out_scores.append(scores[keep])
            out_labels.append(labels[keep])
            out_probs.append(probs[source[keep]])
            out_source.append(source[keep])
        return out_boxes, out_scores, out_labels, out_probs, out_source

    def _inference_forward(
        self,
        features: dict[str, Tensor],
        proposals: list[Tensor],
        image_shapes: list[tuple[int, int]],
    ) -> list[dict[str, Tensor]]:
        box_roi = self.box_roi_pool(features, proposals, image_shapes)
        class_logits, box_regression = self.box_predictor(self.box_head(box_roi))
        boxes, scores, labels, probs, source = self.postprocess_with_probs(
            class_logits, box_regression, proposals, image_shapes
        )
        counts = [b.shape[0] for b in boxes]

        # b: the box-IoU head learned IoU(box regressed from a proposal, gt) from that proposal's
        # features; read it on the same features, those of the proposal each detection came from.
        roi_i = box_roi.split([p.shape[0] for p in proposals])
        box_iou = self.box_iou_head(torch.cat([r[i] for r, i in zip(roi_i, source)])).split(counts)
        mask_roi = self.mask_roi_pool(features, boxes, image_shapes)
        mask_logits = self.mask_predictor(self.mask_head(mask_roi))
        masks = maskrcnn_inference(mask_logits, labels)
        mask_iou = self.mask_iou_head(mask_roi).split(counts)

        return [
            {
                "boxes": boxes[i],
                "labels": labels[i],
                "scores": scores[i],
                "masks": masks[i],
                "box_iou": box_iou[i].float(),
                "mask_iou": mask_iou[i].float(),
                "class_probs": probs[i],
            }
            for i in range(len(boxes))
        ]

    def forward(
        self,
        features: dict[str, Tensor],
        proposals: list[Tensor],
        image_shapes: list[tuple[int, int]],
        targets: list[dict[str, Tensor]] | None = None,
    ) -> tuple[list[dict[str, Tensor]], dict[str, Tensor]]:
        """Same contract as ``RoIHeads.forward``; see the module docstring for what is added."""
        if not self.has_mask():
            raise ValueError("TSPRoIHeads needs the mask branch (mask_roi_pool, mask_head, mask_predictor)")
        if self.training:
            if targets is None:
                raise ValueError("targets should not be None in training mode")
            for t in targets:
                if t["boxes"].dtype not in (torch.float, torch.double, torch.half, torch.bfloat16):
                    raise TypeError(f"target boxes must be of float type, got {t['boxes'].dtype}")
                if t["labels"].dtype != torch.int64:
                    raise TypeError(f"target labels must be of int64 type, got {t['labels'].dtype}")
            return [], self._training_forward(features, proposals, image_shapes, targets)
        return self._inference_forward(features, proposals, image_shapes), {}
