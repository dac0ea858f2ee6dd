"""``TSPMaskRCNN``: torchvision Mask R-CNN with the two TSP IoU heads, and its builders.

The model is constructed like torchvision's ``MaskRCNN`` (``TSPMaskRCNN(backbone, num_classes,
**maskrcnn_kwargs)``) and swaps in :class:`~tsp_model.nn.rpn.TSPRegionProposalNetwork` and
:class:`~tsp_model.nn.roi_heads.TSPRoIHeads`, which add the box-IoU and mask-IoU heads, their eq. 1
losses and the pseudo-label losses of eq. 4-5.

Weights are never downloaded: ``"DEFAULT"`` loads torchvision's weights enum only when its file
is already in the torch hub cache; any other string is a local file path.
"""

from __future__ import annotations

import inspect
import logging
import os
from functools import partial
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN, mobilenet_backbone, resnet_fpn_backbone
from torchvision.models.detection.faster_rcnn import FasterRCNN, FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNN, MaskRCNNHeads, MaskRCNNPredictor
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops.misc import FrozenBatchNorm2d
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from tsp_model.core.config import ModelConfig
from tsp_model.nn.dropout_heads import DropoutMaskRCNNHeads, DropoutTwoMLPHead
from tsp_model.nn.heads import BoxIoUHead, MaskIoUHead
from tsp_model.nn.learning_loss import LossPredictionModule
from tsp_model.nn.roi_heads import TSPRoIHeads
from tsp_model.nn.rpn import TSPRegionProposalNetwork

log = logging.getLogger(__name__)


class WeightsNotFoundError(FileNotFoundError):
    """Pretrained weights were asked for but are not on this machine (they are never downloaded)."""


class TSPMaskRCNN(MaskRCNN):
    """Mask R-CNN whose instances carry (c, b, m): class score, box-IoU score, mask-IoU score.

    Args:
        backbone: as for ``MaskRCNN`` (must have ``out_channels``).
        num_classes: number of classes including background.
        iou_loss_weight: lambda of eq. 1 (weight of ``loss_box_iou`` and ``loss_mask_iou``).
        semi_loss_weight: beta of eq. 5 (weight of the pseudo-label loss L_semi).
        mask_threshold: binarization threshold of predicted masks for the mask-IoU target and
            for every mask the model outputs (shown, pseudo-labeled, evaluated).
        box_iou_head, mask_iou_head: optional custom heads; defaults follow the paper.
        loss_prediction_module: optional :class:`~tsp_model.nn.learning_loss.LossPredictionModule`
            (learning loss, Yoo & Kweon 2019): adds ``loss_learning_loss`` in training and
            ``predicted_loss`` to each output at inference. None (default): no change at all.
        **kwargs: any ``MaskRCNN`` keyword argument.

    Training: ``model(images, targets)`` returns torchvision's five losses plus
    ``loss_box_iou`` and ``loss_mask_iou``, each already ``L_sup + beta * L_semi``; a target with
    ``"pseudo": True`` is a pseudo-labeled image. Inference: each output dict has torchvision's
    keys plus ``box_iou`` (b, FloatTensor[N]), ``mask_iou`` (m, FloatTensor[N]) and
    ``class_probs`` (FloatTensor[N, num_classes]), aligned with ``scores`` (c).
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int | None = None,
        *,
        iou_loss_weight: float = 1.0,
        semi_loss_weight: float = 0.01,
        mask_threshold: float = 0.3,
        box_iou_head: BoxIoUHead | None = None,
        mask_iou_head: MaskIoUHead | None = None,
        loss_prediction_module: nn.Module | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(backbone, num_classes, **kwargs)
        channels = backbone.out_channels
        # torchvision builds its RPN and RoI heads inside FasterRCNN.__init__; ours take the same
        # arguments, read from its public signature (its defaults, then the caller's values), and
        # reuse the parts it built (anchor generator, heads, predictors, RoI pools)
        args = {name: p.default for name, p in inspect.signature(FasterRCNN.__init__).parameters.items()
                if p.default is not inspect.Parameter.empty}
        args.update(kwargs)
        self.rpn = TSPRegionProposalNetwork(
            self.rpn.anchor_generator,
            self.rpn.head,
            args["rpn_fg_iou_thresh"],
            args["rpn_bg_iou_thresh"],
            args["rpn_batch_size_per_image"],
            args["rpn_positive_fraction"],
            {"training": args["rpn_pre_nms_top_n_train"], "testing": args["rpn_pre_nms_top_n_test"]},
            {"training": args["rpn_post_nms_top_n_train"], "testing": args["rpn_post_nms_top_n_test"]},
            args["rpn_nms_thresh"],
            score_thresh=args["rpn_score_thresh"],
            semi_loss_weight=semi_loss_weight,
        )
        heads = self.roi_heads
        self.roi_heads = TSPRoIHeads(
            heads.box_roi_pool,
            heads.box_head,
            heads.box_predictor,
            args["box_fg_iou_thresh"],
            args["box_bg_iou_thresh"],
            args["box_batch_size_per_image"],
            args["box_positive_fraction"],
            args["bbox_reg_weights"],
            args["box_score_thresh"],
            args["box_nms_thresh"],
            args["box_detections_per_img"],
            mask_roi_pool=heads.mask_roi_pool,
            mask_head=heads.mask_head,
            mask_predictor=heads.mask_predictor,
            box_iou_head=box_iou_head or BoxIoUHead(channels),
            mask_iou_head=mask_iou_head or MaskIoUHead(channels),
            iou_loss_weight=iou_loss_weight,
            semi_loss_weight=semi_loss_weight,
            mask_threshold=mask_threshold,
        )
        self.loss_prediction_module = loss_prediction_module

    def forward(self, images: list[torch.Tensor], targets: list[dict[str, Any]] | None = None) -> Any:
        """As ``MaskRCNN.forward``; with a loss-prediction module, see ``tsp_model.nn.learning_loss``."""
        if self.loss_prediction_module is None:
            return super().forward(images, targets)
        from tsp_model.nn.learning_loss import forward_with_loss_prediction

        return forward_with_loss_prediction(self, images, targets)

    @property
    def iou_loss_weight(self) -> float:
        return self.roi_heads.iou_loss_weight

    @property
    def semi_loss_weight(self) -> float:
        return self.roi_heads.semi_loss_weight

    def set_semi_loss_weight(self, beta: float) -> None:
        """Change beta everywhere it applies (RPN and RoI heads); the paper lowers it as D_al grows."""
        self.rpn.semi_loss_weight = beta
        self.roi_heads.semi_loss_weight = beta


# --------------------------------------------------------------------------- backbones
def resolve_norm(cfg: ModelConfig) -> str:
    """``cfg.norm`` with ``"auto"`` made concrete: ``"frozen"`` when the backbone starts from
    weights trained with BatchNorm (torchvision's weights enums, or a weights file holding
    running statistics), where frozen statistics are the usual fine-tuning choice; ``"group"``
    otherwise (from scratch, or from weights trained with GroupNorm): BatchNorm over batches of
    2 images makes each image's gradient depend on the other image of its batch."""
    if cfg.norm != "auto":
        return cfg.norm
    for spec, what in ((cfg.weights_backbone, "model.weights_backbone"), (cfg.weights, "model.weights")):
        if spec is None:
            continue
        if not _looks_like_path(spec):
            return "frozen"  # torchvision's ImageNet / COCO weights: trained with BatchNorm
        if any(k.endswith("running_mean") for k in _load_state_dict_file(spec, what)):
            return "frozen"
    return "group"


def norm_layer_for(name: str) -> Callable[[int], nn.Module]:
    """``norm`` config value (``"auto"`` resolved, :func:`resolve_norm`) -> a norm-layer factory
    taking the channel count."""
    if name == "batch":
        return nn.BatchNorm2d
    if name == "frozen":
        return FrozenBatchNorm2d
    if name == "group":
        return partial(_group_norm, groups=32)
    raise ValueError(f"model.norm: unknown norm {name!r} (use batch, group or frozen)")


def _group_norm(channels: int, groups: int) -> nn.GroupNorm:
    while channels % groups:
        groups //= 2
    return nn.GroupNorm(groups, channels)


class TinyBody(nn.Module):
    """A four-stage CNN (strides 4, 8, 16, 32) small enough to train on a laptop CPU in tests."""

    def __init__(self, widths: tuple[int, ...] = (16, 32, 64, 128), norm: Callable[[int], nn.Module] = nn.BatchNorm2d):
        super().__init__()

        def block(cin: int, cout: int, stride: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
                norm(cout),
                nn.ReLU(inplace=True),
                nn.Conv2d(cout, cout, 3, padding=1, bias=False),
                norm(cout),
                nn.ReLU(inplace=True),
            )

        self.stem = nn.Sequential(nn.Conv2d(3, widths[0], 3, stride=2, padding=1, bias=False), norm(widths[0]), nn.ReLU(inplace=True))
        self.layer1 = block(widths[0], widths[0], 2)
        self.layer2 = block(widths[0], widths[1], 2)
        self.layer3 = block(widths[1], widths[2], 2)
        self.layer4 = block(widths[2], widths[3], 2)
        self.widths = widths

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - used via IntermediateLayerGetter
        return self.layer4(self.layer3(self.layer2(self.layer1(self.stem(x)))))


def _resolve_torchvision_weights(spec: str | None, enum: Any, what: str) -> Any:
    """"DEFAULT" or an enum member name -> that enum member if its file is cached; else None."""
    if spec is None or _looks_like_path(spec):
        return None
    try:
        weights = enum[spec] if spec != "DEFAULT" else enum.DEFAULT
    except KeyError:
        choices = ", ".join(["DEFAULT", *enum.__members__])
        raise ValueError(f"{what}: unknown weights {spec!r} (use {choices}, or a local file path)") from None
    cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)
    if not cached.exists():
        raise WeightsNotFoundError(
            f"{what}: {spec} weights are not in the torch cache ({cached}); weights are never downloaded "
            f"here: copy the file there from a connected machine, or set {what} to a local file path"
        )
    return weights


def _looks_like_path(spec: str) -> bool:
    return os.sep in spec or spec.endswith((".pt", ".pth", ".bin"))


def _load_state_dict_file(path: str, what: str) -> dict[str, torch.Tensor]:
    if not Path(path).is_file():
        raise WeightsNotFoundError(f"{what}: weights file {path} not found; fix the path or set it to none")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]  # a full training checkpoint
    return state


def load_matching_weights(module: nn.Module, state: dict[str, torch.Tensor]) -> list[str]:
    """Load every tensor whose name and shape match; return the names left at initialization."""
    own = module.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    module.load_state_dict(usable, strict=False)
    return sorted(set(own) - set(usable))


def build_backbone(cfg: ModelConfig) -> tuple[nn.Module, list[str]]:
    """The feature extractor named by ``cfg.backbone`` and the FPN level names RoI pooling uses."""
    from torchvision.models import MobileNet_V3_Large_Weights, ResNet18_Weights, ResNet50_Weights

    norm = norm_layer_for(resolve_norm(cfg))
    layers = cfg.trainable_backbone_layers
    if cfg.backbone in ("resnet50_fpn", "resnet18_fpn"):
        depth = "resnet50" if cfg.backbone == "resnet50_fpn" else "resnet18"
        enum = ResNet50_Weights if depth == "resnet50" else ResNet18_Weights
        weights = _resolve_torchvision_weights(cfg.weights_backbone, enum, "model.weights_backbone")
        backbone = resnet_fpn_backbone(
            backbone_name=depth, weights=weights, norm_layer=norm, trainable_layers=layers
        )
        levels = ["0", "1", "2", "3"]
    elif cfg.backbone == "mobilenet_v3_fpn":
        weights = _resolve_torchvision_weights(cfg.weights_backbone, MobileNet_V3_Large_Weights, "model.weights_backbone")
        backbone = mobilenet_backbone(
            backbone_name="mobilenet_v3_large",
            weights=weights,
            fpn=True,
            trainable_layers=min(layers + 1, 6),
            norm_layer=norm,
        )
        levels = ["0", "1"]
    elif cfg.backbone == "tiny_fpn":
        body = TinyBody(norm=norm)
        backbone = BackboneWithFPN(
            body,
            return_layers={"layer1": "0", "layer2": "1", "layer3": "2", "layer4": "3"},
            in_channels_list=list(body.widths),
            out_channels=64,
            extra_blocks=LastLevelMaxPool(),
        )
        levels = ["0", "1", "2", "3"]
    else:  # pragma: no cover - config validation rejects other names
        raise ValueError(f"model.backbone: unknown backbone {cfg.backbone!r}")
    if cfg.weights_backbone is not None and _looks_like_path(cfg.weights_backbone):
        state = _load_state_dict_file(cfg.weights_backbone, "model.weights_backbone")
        # a pretrained backbone with its FPN (tsp-sync pretrain: body.*, fpn.*), or a body alone
        # (a classification network's state, e.g. torchvision's ResNet file)
        target = backbone if any(k.startswith(("body.", "fpn.")) for k in state) else backbone.body
        missing = load_matching_weights(target, state)
        if missing:
            log.warning("model.weights_backbone: %d backbone tensors left at initialization", len(missing))
    return backbone, levels


def maskrcnn_kwargs(cfg: ModelConfig, backbone: nn.Module, levels: list[str], num_classes: int) -> dict[str, Any]:
    """torchvision ``MaskRCNN`` keyword arguments for ``cfg`` (shared by TSP and plain models)."""
    channels = backbone.out_channels
    kwargs: dict[str, Any] = dict(
        num_classes=num_classes,
        min_size=cfg.min_size,
        max_size=cfg.max_size,
        box_score_thresh=cfg.box_score_thresh,
        box_detections_per_img=cfg.box_detections_per_img,
        box_roi_pool=MultiScaleRoIAlign(featmap_names=levels, output_size=7, sampling_ratio=2),
        mask_roi_pool=MultiScaleRoIAlign(featmap_names=levels, output_size=14, sampling_ratio=2),
    )
    n_maps = len(levels) + 1 if cfg.backbone != "mobilenet_v3_fpn" else 3
    if cfg.anchor_sizes is not None:
        if cfg.backbone == "mobilenet_v3_fpn":
            sizes = (tuple(cfg.anchor_sizes),) * n_maps
        else:
            if len(cfg.anchor_sizes) != n_maps:
                raise ValueError(f"model.anchor_sizes: {cfg.backbone} needs {n_maps} sizes, one per FPN level")
            sizes = tuple((s,) for s in cfg.anchor_sizes)
        kwargs["rpn_anchor_generator"] = AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * len(sizes))
    elif cfg.backbone == "mobilenet_v3_fpn":
        kwargs["rpn_anchor_generator"] = AnchorGenerator(((32, 64, 128, 256, 512),) * 3, ((0.5, 1.0, 2.0),) * 3)
    elif cfg.backbone == "tiny_fpn":
        # Tiny images hold small objects: anchors a quarter of torchvision's defaults.
        kwargs["rpn_anchor_generator"] = AnchorGenerator(((8,), (16,), (32,), (64,), (128,)), ((0.5, 1.0, 2.0),) * 5)
    if cfg.backbone == "tiny_fpn":
        # Small heads and fewer proposals: a model for CPU tests and laptop demos.
        kwargs.update(
            num_classes=None,
            box_head=(
                DropoutTwoMLPHead(channels * 7 * 7, 256, p=cfg.dropout)
                if cfg.dropout > 0 else TwoMLPHead(channels * 7 * 7, 256)
            ),
            box_predictor=FastRCNNPredictor(256, num_classes),
            mask_head=(
                DropoutMaskRCNNHeads(channels, [64, 64], 1, p=cfg.dropout)
                if cfg.dropout > 0 else MaskRCNNHeads(channels, [64, 64], 1)
            ),
            mask_predictor=MaskRCNNPredictor(64, 64, num_classes),
            rpn_pre_nms_top_n_train=600,
            rpn_post_nms_top_n_train=300,
            rpn_pre_nms_top_n_test=300,
            rpn_post_nms_top_n_test=150,
            box_batch_size_per_image=128,
        )
    elif cfg.dropout > 0:
        # torchvision's default heads with dropout (MC dropout strategy, model.dropout).
        kwargs["box_head"] = DropoutTwoMLPHead(channels * 7 * 7, 1024, p=cfg.dropout)
        kwargs["mask_head"] = DropoutMaskRCNNHeads(channels, [256, 256, 256, 256], 1, p=cfg.dropout)
    # Otherwise torchvision's default heads, as in maskrcnn_resnet50_fpn: the TSP IoU heads are
    # then the only difference between TSPMaskRCNN and a plain Mask R-CNN built from this config.
    return kwargs


def build_model(cfg: ModelConfig, num_classes: int) -> TSPMaskRCNN:
    """Build the TSP model described by ``cfg``.

    Args:
        cfg: the ``[model]`` config section.
        num_classes: number of classes INCLUDING background.
    """
    backbone, levels = build_backbone(cfg)
    channels = backbone.out_channels
    kwargs = maskrcnn_kwargs(cfg, backbone, levels, num_classes)
    if cfg.backbone == "tiny_fpn":
        kwargs.update(box_iou_head=BoxIoUHead(channels, 64), mask_iou_head=MaskIoUHead(channels, 64))
    model = TSPMaskRCNN(
        backbone,
        iou_loss_weight=cfg.iou_loss_weight,
        semi_loss_weight=cfg.semi_loss_weight,
        mask_threshold=cfg.mask_threshold,
        **kwargs,
    )
    if cfg.learning_loss:
        # Built last, so the rest of the model draws the same initial weights as without it.
        n_maps = len(levels) + 1 if cfg.backbone != "mobilenet_v3_fpn" else 3
        model.loss_prediction_module = LossPredictionModule(
            channels, n_maps, weight=cfg.learning_loss_weight, margin=cfg.learning_loss_margin,
            detach_features=cfg.learning_loss_detach,
        )
    _load_full_weights(model, cfg)
    return model


def build_plain_maskrcnn(cfg: ModelConfig, num_classes: int) -> MaskRCNN:
    """A torchvision ``MaskRCNN`` with the same backbone, heads and settings, without TSP heads.

    The baseline for speed comparisons (benchmarks/speed.py).
    """
    backbone, levels = build_backbone(cfg)
    return MaskRCNN(backbone, **maskrcnn_kwargs(cfg, backbone, levels, num_classes))


def _load_full_weights(model: TSPMaskRCNN, cfg: ModelConfig) -> None:
    """Initialize from torchvision's COCO Mask R-CNN (cached) or a local file, where asked."""
    if cfg.weights is None:
        return
    if _looks_like_path(cfg.weights):
        state = _load_state_dict_file(cfg.weights, "model.weights")
    else:
        from torchvision.models.detection import MaskRCNN_ResNet50_FPN_Weights

        if cfg.backbone != "resnet50_fpn":
            raise ValueError("model.weights: torchvision's Mask R-CNN weights exist for resnet50_fpn only")
        weights = _resolve_torchvision_weights(cfg.weights, MaskRCNN_ResNet50_FPN_Weights, "model.weights")
        state = weights.get_state_dict(progress=False, check_hash=False)
    missing = load_matching_weights(model, state)
    # The IoU heads and class-specific predictors are expected to stay new.
    log.info("model.weights: %d tensors left at initialization (heads, predictors)", len(missing))


def count_parameters(model: nn.Module) -> int:
    """Number of parameters (trainable or not)."""
    return sum(p.numel() for p in model.parameters())


__all__ = [
    "TSPMaskRCNN",
    "TinyBody",
    "WeightsNotFoundError",
    "build_backbone",
    "build_model",
    "build_plain_maskrcnn",
    "maskrcnn_kwargs",
    "count_parameters",
    "load_matching_weights",
    "norm_layer_for",
    "resolve_norm",
]
