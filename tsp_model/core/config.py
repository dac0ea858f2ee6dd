"""One typed configuration tree, loaded from TOML, with the paper's defaults in one place.

Defaults follow section 4.2 of the paper (Wang et al., "Semi-supervised Active Learning for
Instance Segmentation via Scoring Predictions"): SGD lr 0.001, momentum 0.9, weight decay 1e-4,
50 epochs with lr x0.1 at epochs 45 and 49, lambda = 1, beta = 0.01, sigma_c = 0.9,
sigma_b = 0.9, sigma_m = 0.8, b = 500 images per cycle, random horizontal flip, mask
binarization at 0.3.

A TOML file mirrors the tree::

    [model]
    backbone = "resnet18_fpn"
    [train]
    epochs = 2
    lr_steps = [0.9, 0.98]
    lr_steps_unit = "fraction"
    [active]
    budget = 20

Unknown keys and wrong types raise :class:`ConfigError` naming the dotted key.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


class ConfigError(ValueError):
    """A configuration value is unknown, mistyped or out of range; the message names the key."""


BackboneName = Literal["resnet50_fpn", "resnet18_fpn", "mobilenet_v3_fpn", "tiny_fpn"]
NormName = Literal["auto", "batch", "group", "frozen"]


@dataclass
class ModelConfig:
    """The network: torchvision Mask R-CNN plus the two TSP IoU heads."""

    backbone: BackboneName = "resnet50_fpn"
    # Normalization in the backbone. "auto": frozen BatchNorm when the backbone starts from
    # weights trained with BatchNorm (torchvision's, or a weights file holding running
    # statistics), GroupNorm otherwise (from scratch): at 2 images per batch, BatchNorm couples
    # the images of a batch, so a pseudo-labeled image would steer the labeled one's gradient
    # whatever beta says. "batch" is torchvision's maskrcnn_resnet50_fpn default; from scratch,
    # "frozen" means no normalization at all (FrozenBatchNorm2d at identity).
    norm: NormName = "auto"
    # Pretrained weights: None (train from scratch; the only option offline), "DEFAULT"
    # (torchvision's weights enum, loaded only when the file is already in the torch hub cache),
    # or a path to a local state_dict file. Never downloaded.
    weights: str | None = None
    weights_backbone: str | None = None
    trainable_backbone_layers: int = 5
    min_size: int = 512
    max_size: int = 512
    # lambda in eq. 1: weight of the box-IoU and mask-IoU l2 losses.
    iou_loss_weight: float = 1.0
    # beta in eq. 5: weight of the pseudo-label loss L_semi.
    semi_loss_weight: float = 0.01
    # One binarization threshold of predicted masks: the mask-IoU target (section 3.1: 0.3), and
    # the masks shown in Label Studio, pseudo-labeled and evaluated, so that m is the IoU of the
    # mask it is shown with.
    mask_threshold: float = 0.3
    # Anchor size per FPN level (5 for the ResNet/tiny FPNs, listed once for MobileNet's 3 maps);
    # None: torchvision's (32, 64, 128, 256, 512), or a quarter of that for tiny_fpn.
    anchor_sizes: list[int] | None = None
    box_score_thresh: float = 0.05
    box_detections_per_img: int = 100
    # Dropout probability between the box head's two FC layers and after each mask-head conv
    # (tsp_model/dropout_heads.py). 0 (default) builds torchvision's heads unchanged. The
    # mc_dropout strategy needs it > 0 (Gal & Ghahramani 2016 train with the dropout they sample;
    # e.g. 0.1 to 0.5).
    dropout: float = 0.0
    # Loss-prediction module of Yoo & Kweon (CVPR 2019) on the FPN features, trained with the
    # margin ranking loss as ``loss_learning_loss`` (tsp_model/learning_loss.py); needed by the
    # learning_loss strategy. Off: the model is unchanged.
    learning_loss: bool = False
    learning_loss_weight: float = 1.0  # lambda of the paper's L_target + lambda * L_loss
    learning_loss_margin: float = 1.0  # xi of the ranking loss
    # Stop the module's gradient into the backbone (the paper does so after epoch 120 of 200).
    learning_loss_detach: bool = False


@dataclass
class TrainConfig:
    """SGD schedule of section 4.2.

    Learning-rate scaling rule: ``lr`` is for the paper's setting of 8 GPUs x ``batch_size``
    images (total batch 8 * batch_size). With another total batch B, scale linearly:
    lr * B / (8 * batch_size). ``scale_lr = true`` applies that rule automatically from the
    world size; it is off by default so that a config means the same on any machine.
    """

    epochs: int = 50
    lr: float = 0.001
    momentum: float = 0.9
    weight_decay: float = 1e-4
    # Epochs (or fractions of the run, see lr_steps_unit) at which lr is multiplied by lr_gamma.
    lr_steps: list[float] = field(default_factory=lambda: [45.0, 49.0])
    lr_steps_unit: Literal["epoch", "fraction"] = "epoch"
    lr_gamma: float = 0.1
    warmup_iters: int = 0
    batch_size: int = 2  # images per process (per GPU)
    scale_lr: bool = False
    workers: int = 2
    hflip_prob: float = 0.5
    # Automatic mixed precision: bf16 on CUDA devices that support it, off on the CPU.
    amp: bool = True
    seed: int = 0
    # Pseudo-labeled images added to every batch of batch_size labeled ones (eq. 5 sums both
    # losses per batch). The labeled part of each batch and the number of steps are those of
    # training without pseudo labels, so pseudo labels add to a step and change nothing else.
    # None: batch_size (as many pseudo-labeled as labeled images per batch).
    pseudo_per_batch: int | None = None
    clip_grad_norm: float = 10.0  # 0 disables clipping
    # The per-epoch resume file (<out>.partial) is written when this many seconds have passed
    # since the last one (0: after every epoch). Short epochs (a few labeled images) would
    # otherwise spend more time saving than training.
    checkpoint_every_s: float = 60.0
    log_every: int = 20
    device: str = "auto"  # "auto", "cpu", "cuda", "cuda:1"...


@dataclass
class ActiveConfig:
    """Algorithm 1: selection and pseudo labeling per cycle."""

    budget: int = 500  # b, images sent for labeling per cycle
    cycles: int = 6  # K; the paper's budget B = 3000 = 6 x 500
    strategy: str = "tsp"
    # Cycle 1 has no model: "random" (Algorithm 1, line 4) or "typiclust", typical and diverse
    # images of a label-free embedding (tsp_model.al.diversity.typiclust_first_batch).
    first_batch: Literal["random", "typiclust"] = "random"
    # TypiClust's embedding: gray thumbnails + PCA, or the pretrained backbone of
    # model.weights_backbone (tsp-sync pretrain)
    typiclust_embedding: Literal["thumbnail", "pretrained"] = "thumbnail"
    pseudo_labels: bool = True
    # M_k starts from M_{k-1}'s weights (fine-tuning, what `tsp-sync retrain` does by default), or
    # from a fresh initialization (the replay's protocol: every cycle's model alike but for data).
    finetune: bool = True
    sigma_c: float = 0.9
    sigma_b: float = 0.9
    sigma_m: float = 0.8
    # Three sets of instances (DESIGN.md): every detection with c >= model.box_score_thresh is
    # kept in the score file; those with c >= score_threshold enter eq. 2-3 (S_i, the queue);
    # those with c >= show_threshold become regions in Label Studio. Changing either threshold
    # needs no new inference: S_i is recomputed from the score file.
    # score_threshold and empty_image_rule: the best mean validation mAP of the candidates
    # (0.3/0.5/0.7 with "max_c", 0.5 with "constant") on both data sets, 3 seeds each; the
    # numbers are the "design" of benchmarks/results/label_efficiency_*_cpu_scratch/simulation.json.
    score_threshold: float = 0.5
    # S_i of an image with no scored instance (tsp_model.core.scoring.empty_image_score): "constant" =
    # empty_image_score (1.0: served last, as eq. 3 treats an image without instances); "max_c" =
    # 1 - the largest c below score_threshold, so a slice whose best candidate just missed the
    # threshold is served early.
    empty_image_rule: Literal["max_c", "constant"] = "constant"
    empty_image_score: float = 1.0
    # The F1 of the shown regions against validation lesions peaked at 0.4 on the nuclei (every
    # seed); the phantom cycle-1 models found almost no lesion there (F1 <= 0.13), see the JSON.
    show_threshold: float = 0.4
    # Label Studio's Uncertainty sampling serves each annotator the lowest score of the cluster
    # they labeled least in (tsp_model.al.diversity): every pushed prediction carries a cluster.
    # "embedding": k-means of the model's FPN embeddings, k = budget; "series": the DICOM
    # series of the slice (tasks imported by tsp-sync import; others fall back to embedding);
    # "none": no clusters, the queue is the score order alone; "pretrained": k-means of the
    # embeddings of the pretrained backbone (model.weights_backbone, from tsp-sync pretrain).
    cluster_source: Literal["embedding", "series", "pretrained", "none"] = "embedding"
    # T, stochastic forward passes of the dropout heads for the mc_dropout strategy (batched:
    # one backbone/RPN pass, the heads run on T stacked copies of the RoI features).
    mc_passes: int = 10


@dataclass
class ScoreConfig:
    """Batched inference over the unlabeled pool."""

    batch_size: int = 4
    workers: int = 2
    amp: bool = True
    # Store each instance's mask as COCO RLE in the results file.
    store_masks: bool = True


@dataclass
class PretrainConfig:
    """Self-supervised pretraining of the backbone and FPN on unlabeled slices (SimSiam, Chen &
    He, CVPR 2021: two augmented views of a slice, one predicts the other's projection through a
    stop-gradient; no negatives, so it works with the small batches a department's GPU or a CPU
    holds). ``tsp-sync pretrain`` writes the checkpoint; ``model.weights_backbone`` starts from it.

    Views of a CT slice keep its intensities meaningful: a random crop of ``crop_scale`` of the
    slice resized to ``model.min_size``, a horizontal flip, and contrast and brightness changes of
    at most ``intensity`` within the display window (values stay in [0, 1]); no colour jitter, no
    grey-scale conversion (a CT window is grey already), no solarization.
    """

    epochs: int = 100
    batch_size: int = 32  # slices per process and step
    # SGD for 256 slices per step, scaled linearly to batch_size x processes (SimSiam's rule)
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 1e-4
    crop_scale: list[float] = field(default_factory=lambda: [0.3, 1.0])
    intensity: float = 0.2
    projection_dim: int = 256  # SimSiam's projector and predictor widths, smaller than its
    prediction_dim: int = 64  # 2048 / 512 for an ImageNet ResNet-50
    workers: int = 2
    amp: bool = True  # bf16 on CUDA
    seed: int = 0
    checkpoint_every_s: float = 60.0
    device: str = "auto"


@dataclass
class TSPConfig:
    """The whole tree."""

    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    active: ActiveConfig = field(default_factory=ActiveConfig)
    score: ScoreConfig = field(default_factory=ScoreConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TSPConfig:
        cfg = _build(cls, data, prefix="")
        _validate_across(cfg)
        return cfg


def _validate_across(cfg: TSPConfig) -> None:
    """Checks that span sections: a strategy's needs from the model."""
    if cfg.active.strategy == "mc_dropout" and cfg.model.dropout <= 0:
        raise ConfigError(
            "model.dropout: active.strategy = 'mc_dropout' needs dropout in the heads; set "
            "model.dropout > 0 (e.g. 0.25) and retrain, or pick another strategy"
        )
    if cfg.active.strategy == "learning_loss" and not cfg.model.learning_loss:
        raise ConfigError(
            "model.learning_loss: active.strategy = 'learning_loss' needs the loss-prediction "
            "module; set model.learning_loss = true and retrain, or pick another strategy"
        )


def _check_value(key: str, tp: Any, value: Any) -> Any:
    """Return ``value`` converted to ``tp`` or raise ConfigError naming ``key``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Union or origin is types.UnionType:
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _check_value(key, arg, value)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{key}: invalid value {value!r}")
    if origin is Literal:
        if value not in args:
            choices = ", ".join(repr(a) for a in args)
            raise ConfigError(f"{key}: {value!r} is not one of {choices}")
        return value
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {type(value).__name__} {value!r}")
        return [_check_value(f"{key}[{i}]", args[0], v) for i, v in enumerate(value)]
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a table, got {value!r}")
        return _build(tp, value, prefix=f"{key}.")
    raise ConfigError(f"{key}: unsupported type {tp!r}")  # pragma: no cover


def _build(cls: type, data: dict[str, Any], prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in names:
            known = ", ".join(sorted(names))
            raise ConfigError(f"{prefix}{key}: unknown key (known: {known})")
    kwargs = {k: _check_value(f"{prefix}{k}", hints[k], v) for k, v in data.items()}
    obj = cls(**kwargs)
    _validate(obj, prefix)
    return obj


def _validate(obj: Any, prefix: str) -> None:
    """Range checks that types alone cannot express."""

    def need(cond: bool, key: str, msg: str) -> None:
        if not cond:
            raise ConfigError(f"{prefix}{key}: {msg}")

    if isinstance(obj, ModelConfig):
        need(0.0 < obj.mask_threshold < 1.0, "mask_threshold", "must be in (0, 1)")
        need(obj.iou_loss_weight >= 0, "iou_loss_weight", "must be >= 0")
        need(obj.semi_loss_weight >= 0, "semi_loss_weight", "must be >= 0")
        need(obj.min_size > 0 and obj.max_size >= obj.min_size, "max_size", "must be >= min_size > 0")
        need(0 <= obj.trainable_backbone_layers <= 5, "trainable_backbone_layers", "must be 0..5")
        need(0.0 <= obj.dropout < 1.0, "dropout", "must be in [0, 1)")
        need(obj.learning_loss_weight >= 0, "learning_loss_weight", "must be >= 0")
        need(obj.learning_loss_margin >= 0, "learning_loss_margin", "must be >= 0")
    elif isinstance(obj, TrainConfig):
        need(obj.epochs >= 1, "epochs", "must be >= 1")
        need(obj.lr > 0, "lr", "must be > 0")
        need(obj.batch_size >= 1, "batch_size", "must be >= 1")
        need(obj.workers >= 0, "workers", "must be >= 0")
        need(0.0 <= obj.hflip_prob <= 1.0, "hflip_prob", "must be in [0, 1]")
        need(obj.clip_grad_norm >= 0, "clip_grad_norm", "must be >= 0 (0 disables clipping)")
        need(obj.checkpoint_every_s >= 0, "checkpoint_every_s", "must be >= 0 (0: after every epoch)")
        if obj.lr_steps_unit == "epoch":
            need(all(float(s).is_integer() and s >= 1 for s in obj.lr_steps), "lr_steps", "epochs must be whole numbers >= 1")
        if obj.lr_steps_unit == "fraction":
            need(all(0.0 < s <= 1.0 for s in obj.lr_steps), "lr_steps", "fractions must be in (0, 1]")
        need(obj.pseudo_per_batch is None or obj.pseudo_per_batch >= 1, "pseudo_per_batch", "must be >= 1")
    elif isinstance(obj, ActiveConfig):
        need(obj.budget >= 1, "budget", "must be >= 1")
        need(obj.cycles >= 1, "cycles", "must be >= 1")
        for name in ("sigma_c", "sigma_b", "sigma_m", "empty_image_score", "score_threshold", "show_threshold"):
            need(0.0 <= getattr(obj, name) <= 1.0, name, "must be in [0, 1]")
        need(obj.mc_passes >= 2, "mc_passes", "must be >= 2 (MC dropout compares passes)")
    elif isinstance(obj, ScoreConfig):
        need(obj.batch_size >= 1, "batch_size", "must be >= 1")
    elif isinstance(obj, PretrainConfig):
        need(obj.epochs >= 1, "epochs", "must be >= 1")
        need(obj.batch_size >= 2, "batch_size", "must be >= 2 (the projector normalizes over the batch)")
        need(obj.lr > 0, "lr", "must be > 0")
        need(len(obj.crop_scale) == 2 and 0.0 < obj.crop_scale[0] <= obj.crop_scale[1] <= 1.0, "crop_scale",
             "must be [min, max] with 0 < min <= max <= 1")
        need(0.0 <= obj.intensity < 1.0, "intensity", "must be in [0, 1)")


def read_toml(path: str | Path, what: str = "TOML file") -> dict[str, Any]:
    """A TOML file as a dict; ConfigError naming the file when it is missing or not TOML."""
    path = Path(path)
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"{path}: {what} not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> TSPConfig:
    """Read a TOML file (or nothing: all defaults), then apply nested ``overrides``."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        data = read_toml(path, "config file")
    if overrides:
        data = merge_dicts(data, overrides)
    try:
        return TSPConfig.from_dict(data)
    except ConfigError as exc:
        where = f"{path}: " if path is not None else ""
        raise ConfigError(f"{where}{exc}") from None


def merge_dicts(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """Recursive dict merge; ``extra`` wins."""
    out = dict(base)
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge_dicts(out[k], v)
        else:
            out[k] = v
    return out


def dump_toml(config: TSPConfig) -> str:
    """Serialize to TOML text that :func:`load_config` reads back to an equal config."""
    lines: list[str] = []
    for section, values in config.to_dict().items():
        lines.append(f"[{section}]")
        for key, value in values.items():
            if value is None:
                continue  # TOML has no null: an absent key means the default (None)
            lines.append(f"{key} = {_toml_value(value)}")
        lines.append("")
    return "\n".join(lines)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        # JSON string escapes are valid TOML basic strings (ensure_ascii=False: no surrogates).
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")  # pragma: no cover


def lr_milestones(train: TrainConfig) -> list[int]:
    """Epoch indices at which the lr decays, whichever unit the config used."""
    if train.lr_steps_unit == "fraction":
        return sorted({max(1, math.floor(s * train.epochs + 0.5)) for s in train.lr_steps})
    return sorted({int(s) for s in train.lr_steps})
