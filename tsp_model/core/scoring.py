"""The paper's scoring equations (sections 3.1 and 3.2), pure functions, no modules.

Names follow the paper: ``c`` class score, ``b`` box-IoU score, ``m`` mask-IoU score of one
instance; ``s`` the instance score (eq. 2); ``S`` the image score (eq. 3). Lower scores mean
higher uncertainty.

Which instances enter eq. 3 is ours to decide (the paper uses every detection its detector
returns). :func:`scored_image_score` applies eq. 3 to the *scored* instances only, those with a
class score ``c >= score_threshold``: a weak model's many background boxes (c just above
torchvision's 0.05 output threshold) otherwise decide S, because the IoU heads, trained on
positive RoIs only, give them confident-looking b and m. An image with no scored instance gets
:func:`empty_image_score`.

Every function accepts torch tensors (and then returns tensors, differentiable where the math
is) or numpy arrays / Python floats (and then returns numpy values). The standard deviation is
the population one (ddof = 0): the std of three numbers in eq. 2 is a property of those three
numbers, not an estimate of a larger population. Note ``torch.std`` defaults to ddof = 1.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Union

import numpy as np

if TYPE_CHECKING:
    import torch

ArrayLike = Union["torch.Tensor", np.ndarray, float, Sequence[float]]

__all__ = [
    "EMPTY_IMAGE_RULES",
    "instance_score",
    "image_score",
    "empty_image_score",
    "scored_image_score",
    "pseudo_label_keep",
    "class_entropy",
    "mean_class_entropy",
]


def _tensor(x: Any) -> bool:
    # a tensor can only exist once torch is loaded: the pure maths import no torch themselves
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(x, torch.Tensor)


def _is_torch(*xs: Any) -> bool:
    return any(_tensor(x) for x in xs)


def _exp_neg_std_times_mean(x: Any) -> Any:
    """``exp(-std(x)) * mean(x)`` over the last axis, population std; the form of eq. 2 and 3."""
    if _tensor(x):
        if x.numel() == 0:  # N = 0 instances: torch.std would warn about zero elements
            return x.new_zeros(x.shape[:-1])
        return (-x.std(dim=-1, correction=0)).exp() * x.mean(dim=-1)
    x = np.asarray(x, dtype=np.float64)
    return np.exp(-x.std(axis=-1, ddof=0)) * x.mean(axis=-1)


def instance_score(c: ArrayLike, b: ArrayLike, m: ArrayLike) -> Any:
    """Eq. 2: ``s = exp(-std(c, b, m)) * mean(c, b, m)``, element-wise over N instances.

    Args:
        c: class scores, FloatTensor[N] (or numpy / float).
        b: box-IoU scores, same shape.
        m: mask-IoU scores, same shape.

    Returns:
        s, same shape as the inputs: a tensor (differentiable) if any input is a tensor,
        otherwise a numpy array / numpy float64.
    """
    if _is_torch(c, b, m):
        torch = sys.modules["torch"]
        ref = next(x for x in (c, b, m) if _tensor(x))
        dtype = ref.dtype if ref.is_floating_point() else torch.float32
        c, b, m = (torch.as_tensor(x, dtype=dtype, device=ref.device) for x in (c, b, m))
        c, b, m = torch.broadcast_tensors(c, b, m)
        return _exp_neg_std_times_mean(torch.stack((c, b, m), dim=-1))
    c, b, m = np.broadcast_arrays(*(np.asarray(x, dtype=np.float64) for x in (c, b, m)))
    return _exp_neg_std_times_mean(np.stack((c, b, m), axis=-1))


def image_score(s: ArrayLike, empty_score: float = 1.0) -> Any:
    """Eq. 3: ``S = exp(-std(s)) * mean(s)`` over the instance scores ``s`` of one image.

    A single instance has std 0, so ``S = s``.

    An image without any instance has no ``s`` to aggregate; it gets ``empty_score`` (see
    :func:`scored_image_score` and :func:`empty_image_score` for the rule the product uses).

    Args:
        s: instance scores of one image, FloatTensor[N] (or numpy / list), N >= 0.
        empty_score: S for N == 0.

    Returns:
        S: a 0-d tensor if ``s`` is a tensor, otherwise a numpy float64.
    """
    if _tensor(s):
        s = s.reshape(-1)
        if s.numel() == 0:
            dtype = s.dtype if s.is_floating_point() else sys.modules["torch"].float32
            return s.new_tensor(float(empty_score), dtype=dtype)
        return _exp_neg_std_times_mean(s)
    s = np.asarray(s, dtype=np.float64).reshape(-1)
    if s.size == 0:
        return np.float64(empty_score)
    return np.float64(_exp_neg_std_times_mean(s))


EMPTY_IMAGE_RULES = ("constant", "max_c")


def empty_image_score(max_c: float, rule: str = "max_c", constant: float = 1.0) -> float:
    """S of an image with no scored instance (no detection reached the scoring threshold).

    Such an image is the model saying "no lesion here". How sure it is of that depends on its
    strongest candidate below the threshold, ``max_c`` (0.0 when it returned nothing at all):

    * ``"max_c"``: ``S = 1 - max_c``, the model's own probability that its best candidate is
      not a lesion. A slice where it returned nothing, or only faint candidates, is certain
      (S near 1, labeled last: most head-CT slices are truly empty); a slice with a candidate
      just below the threshold, the lesion it may have missed, is as uncertain as a weak
      detection (with threshold 0.5, S just above 0.5).
    * ``"constant"``: ``S = constant`` whatever the candidates (1.0: never served first).

    Args:
        max_c: the largest class score among the image's detections, all below the threshold.
        rule: one of :data:`EMPTY_IMAGE_RULES`.
        constant: S for the ``"constant"`` rule.
    """
    if rule == "max_c":
        return float(1.0 - min(max(float(max_c), 0.0), 1.0))
    if rule == "constant":
        return float(constant)
    raise ValueError(f"unknown empty-image rule {rule!r} (use one of {', '.join(EMPTY_IMAGE_RULES)})")


def scored_image_score(
    c: ArrayLike,
    b: ArrayLike,
    m: ArrayLike,
    *,
    score_threshold: float,
    empty_rule: str = "max_c",
    empty_constant: float = 1.0,
) -> float:
    """S of one image from ALL its detections: eq. 3 over the scored ones (``c >= score_threshold``),
    :func:`empty_image_score` of the rest when none is scored.

    Args:
        c, b, m: the image's N detections' triplets (numpy / list / tensor), N >= 0.
        score_threshold: class score from which a detection enters eq. 2-3.
        empty_rule, empty_constant: see :func:`empty_image_score`.

    Returns:
        S as a Python float.
    """
    c, b, m = (np.asarray(x.detach().cpu() if _tensor(x) else x, dtype=np.float64).reshape(-1)
               for x in (c, b, m))
    scored = c >= score_threshold
    if scored.any():
        return float(image_score(instance_score(c[scored], b[scored], m[scored])))
    return empty_image_score(float(c.max()) if c.size else 0.0, empty_rule, empty_constant)


def pseudo_label_keep(
    c: ArrayLike,
    b: ArrayLike,
    m: ArrayLike,
    sigma_c: float = 0.9,
    sigma_b: float = 0.9,
    sigma_m: float = 0.8,
) -> Any:
    """Section 3.2: keep an instance as a pseudo label iff c > sigma_c AND b > sigma_b AND m > sigma_m.

    Algorithm 1, line 10 of the paper misprints the rule as removing instances whose
    "c < sigma_c and b < sigma_b and m < sigma_m" (which would keep an instance that passes
    only one threshold); the text of section 3.2 requires all three, and so do we. A score
    equal to its threshold is not kept (strictly "larger than").

    Returns:
        BoolTensor[N] if any input is a tensor, else a numpy bool array (np.bool_ for scalars).
    """
    if _is_torch(c, b, m):
        torch = sys.modules["torch"]
        ref = next(x for x in (c, b, m) if _tensor(x))
        c, b, m = (torch.as_tensor(x, device=ref.device) for x in (c, b, m))
        return (c > sigma_c) & (b > sigma_b) & (m > sigma_m)
    c, b, m = (np.asarray(x, dtype=np.float64) for x in (c, b, m))
    return (c > sigma_c) & (b > sigma_b) & (m > sigma_m)


def class_entropy(probs: ArrayLike) -> Any:
    """Shannon entropy (natural log) of each row of a probability matrix; ``0 * log 0 = 0``.

    The class-entropy baseline of section 5 ("the entropy of an image by averaging all entropy
    values from Softmax outputs corresponding to detection instances"). Pass the full softmax,
    background included, as the model's ``class_probs`` is.

    Args:
        probs: FloatTensor[N, C] (or numpy), rows summing to 1.

    Returns:
        FloatTensor[N] (or numpy float64 [N]); a uniform row over C classes gives log(C).
    """
    if _tensor(probs):
        if not probs.is_floating_point():
            probs = probs.float()
        return sys.modules["torch"].special.entr(probs).sum(dim=-1)
    p = np.asarray(probs, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, -p * np.log(np.where(p > 0, p, 1.0)), 0.0)
    return terms.sum(axis=-1)


def mean_class_entropy(probs: ArrayLike) -> float:
    """Image entropy for the class-entropy baseline: mean of :func:`class_entropy` over rows.

    An image with no detection (N == 0) has entropy 0.0 (nothing uncertain was predicted).

    Args:
        probs: FloatTensor[N, C] (or numpy).
    """
    h = class_entropy(probs)
    if _tensor(h):
        return float(h.mean()) if h.numel() else 0.0
    h = np.asarray(h)
    return float(h.mean()) if h.size else 0.0
