"""One detector forward that keeps what it computed on the way (torchvision's
``GeneralizedRCNN.forward`` stops at the detections): the FPN features feed the learning-loss
module, the embeddings and MC dropout; the detections stay in the network's image frame until
the caller post-processes them (full-size masks, or RLE per detection)."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from torch import Tensor
from torchvision.models.detection.generalized_rcnn import GeneralizedRCNN
from torchvision.models.detection.image_list import ImageList

__all__ = ["DetectorPass", "detector_pass"]


@dataclass
class DetectorPass:
    image_list: ImageList  # the resized, batched images (``image_sizes``: each before padding)
    original_sizes: list[tuple[int, int]]  # (H, W) of each input image
    targets: list[dict[str, Any]] | None  # the targets resized with the images (training)
    features: OrderedDict[str, Tensor]  # FPN maps, FloatTensor[B, C, H_l, W_l] each
    proposals: list[Tensor]  # per image FloatTensor[P, 4]
    detections: list[dict[str, Tensor]]  # the RoI heads' output, in the resized frame (empty in training)
    losses: dict[str, Tensor]  # the RPN's and the RoI heads' (training only)


def detector_pass(model: GeneralizedRCNN, images: list[Tensor], targets: list[dict[str, Any]] | None = None
                  ) -> DetectorPass:
    """``GeneralizedRCNN.forward`` without its final post-processing, keeping the intermediates.

    Args:
        model: a torchvision detection model (``TSPMaskRCNN``), in train or eval mode.
        images: FloatTensor[3, H, W] each, in 0..1.
        targets: in training mode, torchvision's target dicts.
    """
    if model.training and targets is None:
        raise ValueError("targets should not be None in training mode")
    original_sizes = [(int(im.shape[-2]), int(im.shape[-1])) for im in images]
    image_list, targets = model.transform(images, targets)
    if targets is not None:
        for idx, t in enumerate(targets):
            boxes = t["boxes"]
            if boxes.numel() and bool((boxes[:, 2:] <= boxes[:, :2]).any()):
                raise ValueError(f"target {idx}: all boxes need positive height and width")
    features = model.backbone(image_list.tensors)
    if isinstance(features, Tensor):
        features = OrderedDict([("0", features)])
    proposals, proposal_losses = model.rpn(image_list, features, targets)
    detections, detector_losses = model.roi_heads(features, proposals, image_list.image_sizes, targets)
    return DetectorPass(image_list, original_sizes, targets, features, proposals, detections,
                        {**detector_losses, **proposal_losses})
