"""MC dropout uncertainty of a model's detections (baseline of the paper's Figure 2).

Definition. The deterministic model (dropout off) detects N instances. Each detection's box is
pooled once and the dropout box and mask heads (``tsp_model.nn.dropout_heads``) run T times on it
with dropout on, so pass t gives a class distribution p_t (FloatTensor[K]) and a mask
probability map q_t (FloatTensor[M, M], the detected class's channel). The passes are matched
by construction: they all see the same detection. Per instance::

    u = MI + V
    MI = H(mean_t p_t) - mean_t H(p_t)       (mutual information / BALD: disagreement of the
                                               passes about the class; Houlsby et al. 2011,
                                               Gal, Islam & Ghahramani, ICML 2017)
    V  = mean over mask pixels of Var_t q_t  (spread of the mask across passes, as in
                                               Morrison et al. 2019, "Uncertainty-aware
                                               instance segmentation using dropout sampling")

and the image's ``mc_uncertainty`` is the mean u over its instances (0 without detections),
averaged like the class-entropy baseline. MI is 0 when all passes agree, however uncertain each
pass is; it is large only when the passes disagree.

Batched passes: the backbone, the RPN and the deterministic RoI heads run once; each head's
part before its first dropout (``mc_prefix``: fc6 of the box head, the first conv block of the
mask head) runs once on the N RoIs, since it is the same in every pass; the result is stacked T
times (``repeat``) and the rest of the head (``mc_suffix``) and the predictor run on the stack,
at most ``max_rois`` rows per call to bound memory. T full forward passes would instead rerun
the backbone, the RPN, the proposals' box head and the IoU heads T times.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from tsp_model.nn.dropout_heads import mc_dropout

__all__ = ["mc_head_passes", "mc_instance_uncertainty", "mc_image_stats"]


def _over_passes(fn, x: Tensor, passes: int, max_rows: int) -> Tensor:
    """``fn`` on ``x`` stacked ``passes`` times, a few whole passes per call (<= max_rows rows)."""
    per_call = max(1, max_rows // max(1, x.shape[0]))
    reps = (1,) * (x.dim() - 1)
    out = []
    for start in range(0, passes, per_call):
        k = min(per_call, passes - start)
        out.append(fn(x.repeat(k, *reps), k))
    return torch.cat(out, dim=0)


def mc_head_passes(
    roi_heads: torch.nn.Module,
    features: dict[str, Tensor],
    boxes: list[Tensor],
    labels: list[Tensor],
    image_sizes: list[tuple[int, int]],
    passes: int,
    *,
    batched: bool = True,
    max_rois: int = 512,
) -> tuple[Tensor, Tensor]:
    """T dropout passes of the box and mask heads on fixed detections.

    Args:
        roi_heads: the model's ``TSPRoIHeads`` (its box/mask heads must have dropout).
        features: FPN maps of the batch.
        boxes: per image FloatTensor[N_i, 4], detections in the transformed image's coordinates.
        labels: per image Int64Tensor[N_i], the detected classes.
        image_sizes: the transformed images' sizes.
        passes: T.
        batched: stack the T copies in one call (default) or loop T times (the reference).
        max_rois: most RoIs per head call in the batched mode.

    Returns:
        ``(class_probs FloatTensor[T, N, K], mask_probs FloatTensor[T, N, M, M])`` with
        N = sum N_i in image order.
    """
    n = sum(int(b.shape[0]) for b in boxes)
    box_roi = roi_heads.box_roi_pool(features, boxes, image_sizes)  # [N, C, 7, 7]
    mask_roi = roi_heads.mask_roi_pool(features, boxes, image_sizes)  # [N, C, 14, 14]
    label = torch.cat(labels) if labels else torch.zeros(0, dtype=torch.int64)

    box_head, mask_head = roi_heads.box_head, roi_heads.mask_head

    def box_pass(x: Tensor, head=box_head) -> Tensor:
        logits, _ = roi_heads.box_predictor(head(x))
        return F.softmax(logits.float(), -1)

    def mask_pass(x: Tensor, lbl: Tensor, head=mask_head) -> Tensor:
        logits = roi_heads.mask_predictor(head(x))
        return logits[torch.arange(x.shape[0], device=x.device), lbl].float().sigmoid()

    with mc_dropout(roi_heads):
        if batched:
            # Pass t of RoI i sits at row t * N + i. Heads without mc_prefix run whole T times.
            box_pre = box_head.mc_prefix(box_roi) if hasattr(box_head, "mc_prefix") else box_roi
            box_post = box_head.mc_suffix if hasattr(box_head, "mc_suffix") else box_head
            mask_pre = mask_head.mc_prefix(mask_roi) if hasattr(mask_head, "mc_prefix") else mask_roi
            mask_post = mask_head.mc_suffix if hasattr(mask_head, "mc_suffix") else mask_head
            probs = _over_passes(lambda x, k: box_pass(x, box_post), box_pre, passes, max_rois)
            masks = _over_passes(lambda x, k: mask_pass(x, label.repeat(k), mask_post), mask_pre, passes, max_rois)
        else:
            probs = torch.cat([box_pass(box_roi) for _ in range(passes)], 0)
            masks = torch.cat([mask_pass(mask_roi, label) for _ in range(passes)], 0)
    k = probs.shape[-1]
    size = masks.shape[-1] if masks.dim() == 3 else 0
    return probs.reshape(passes, n, k), masks.reshape(passes, n, size, size)


def _entropy(p: Tensor) -> Tensor:
    return -(p * p.clamp_min(1e-12).log()).sum(-1)


def mc_instance_uncertainty(class_probs: Tensor, mask_probs: Tensor) -> dict[str, Tensor]:
    """Per-instance MC statistics (see the module docstring).

    Args:
        class_probs (FloatTensor[T, N, K]): softmax of each pass.
        mask_probs (FloatTensor[T, N, M, M]): mask probabilities of each pass.

    Returns:
        dict of FloatTensor[N]: ``mi`` (mutual information, nats), ``mask_var`` (mean pixel
        variance, population), ``entropy`` (entropy of the mean distribution) and
        ``uncertainty`` = mi + mask_var.
    """
    mean = class_probs.mean(0)
    h_mean = _entropy(mean)
    mi = (h_mean - _entropy(class_probs).mean(0)).clamp_min(0)
    mask_var = mask_probs.var(0, unbiased=False).flatten(1).mean(1) if mask_probs.numel() else mi * 0
    return {"mi": mi, "mask_var": mask_var, "entropy": h_mean, "uncertainty": mi + mask_var}


def mc_image_stats(class_probs: Tensor, mask_probs: Tensor, passes: int) -> dict:
    """One image's ``extras`` entries from its instances' passes (FloatTensor[T, N_i, ...])."""
    stats = mc_instance_uncertainty(class_probs, mask_probs)
    n = int(class_probs.shape[1])

    def mean(key: str) -> float:
        return float(stats[key].double().mean()) if n else 0.0

    return {
        "mc_uncertainty": mean("uncertainty"),
        "mc_class_mi": mean("mi"),
        "mc_mask_var": mean("mask_var"),
        "mc_passes": int(passes),
        "mc_instance_uncertainty": [float(v) for v in stats["uncertainty"].double().tolist()],
    }
