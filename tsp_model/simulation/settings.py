"""What a replay runs: its settings (all written to the result JSON) and its arms."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from tsp_model.core.config import TSPConfig
from tsp_model.core.scoring import EMPTY_IMAGE_RULES
from tsp_model.simulation.results import FULL
from tsp_model.al.strategies import available_strategies, get_strategy

__all__ = [
    "Arm",
    "CLUSTER_SOURCES",
    "TYPICLUST_EMBEDDINGS",
    "DEFAULT_ARMS",
    "MODEL_DESIGN_KEYS",
    "SimulationError",
    "SimulationSettings",
    "model_overrides",
    "parse_arms",
    "queue_clusters",
    "variant_tag",
]

DEFAULT_ARMS = ["random", "class_entropy", "tsp", "tsp+pseudo", "tsp_instance", "tsp_diverse",
                "tsp_diverse+pseudo", FULL]
CLUSTER_SOURCES = ("embedding", "group", "pretrained")
TYPICLUST_EMBEDDINGS = ("thumbnail", "pretrained")
# settings a model-design candidate may set (each changes the network, so it needs its own M_1)
MODEL_DESIGN_KEYS = ("norm", "mask_threshold")


class SimulationError(ValueError):
    """The data or the settings cannot be replayed; the message is one line naming the problem."""


@dataclass
class SimulationSettings:
    """One replay's settings (all of it is written to the result JSON)."""

    arms: list[str] = field(default_factory=lambda: list(DEFAULT_ARMS))
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    budget: int = 10  # b, images labeled per cycle
    cycles: int = 3  # K
    backbone: str = "tiny_fpn"
    norm: str = "auto"  # model.norm: GroupNorm from scratch, frozen BatchNorm from BatchNorm-trained weights
    mask_threshold: float | None = None  # model.mask_threshold; None: the config's
    image_size: int = 128
    init: str | None = None  # warm start: a checkpoint whose matching weights start every model
    weights_backbone: str | None = None
    image_steps: int = 400  # labeled images seen per model
    min_epochs: int = 8
    batch_size: int = 2
    lr: float = 0.02
    warmup_iters: int = 50
    amp: bool = False
    workers: int = 0
    device: str = "auto"
    threads: int | None = None  # torch CPU threads (None: torch's choice)
    validation: float = 0.15  # fraction of the images (whole groups) for design choices
    test: float = 0.2  # fraction for the test set when none is given
    split_seed: int = 0
    group_key: str | None = "auto"
    # what iscrowd 1 annotations are: "auto" (CVAT-style: every mask a crowd one -> instances,
    # saying so), "instances", "ignore" (COCO's regions ignored in training and evaluation)
    crowd: str = "auto"
    tune: bool = True
    # model-design candidates (dicts over MODEL_DESIGN_KEYS), each with its own M_1; None: no
    # model design, the settings' norm and mask_threshold hold
    model_candidates: list[dict[str, Any]] | None = None
    score_thresholds: list[float] = field(default_factory=lambda: [0.3, 0.5, 0.7])
    empty_rules: list[str] = field(default_factory=lambda: ["max_c", "constant"])
    # explicit (score_threshold, empty_rule) candidates instead of the full grid of the two above
    tune_candidates: list[list[Any]] | None = None
    show_thresholds: list[float] = field(default_factory=lambda: [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9])
    cluster_sources: list[str] = field(default_factory=lambda: ["embedding"])
    # without tuning (or a value never tuned): these hold
    score_threshold: float | None = None
    empty_image_rule: str | None = None
    show_threshold: float | None = None
    cluster_source: str = "embedding"
    # another run's design (its folder or simulation.json): used as chosen there; nothing is
    # tuned, whatever ``tune`` says
    design_from: str | None = None
    # self-supervised pretraining (tsp_model.engine.pretrain) on the pool's slices, labels unread;
    # every model then starts from it (model.weights_backbone); None: the config's [pretrain]
    pretrain: bool = False
    pretrain_epochs: int | None = None
    # TypiClust's embedding for +typiclust arms (thumbnail; pretrained needs pretrain); candidates
    # are chosen on the validation split when pretraining
    typiclust_embedding: str = "thumbnail"
    typiclust_embeddings: list[str] = field(default_factory=lambda: ["thumbnail", "pretrained"])
    keep_checkpoints: bool = False

    @property
    def uses_validation(self) -> bool:
        """Whether a validation split is held out (design choices, calibration)."""
        return self.tune or self.design_from is not None

    def config(self, seed: int, base: TSPConfig | None = None, model_overrides: dict[str, Any] | None = None) -> TSPConfig:
        """The TSPConfig of one model: ``base`` (or the defaults) with this replay's settings.

        Pseudo-labeled batches follow the config (``train.pseudo_per_batch``) as in the product:
        the labeled part of every batch and the number of steps are those of the arm without
        pseudo labels.
        """
        cfg = TSPConfig.from_dict(base.to_dict()) if base is not None else TSPConfig()
        m, t, a, s = cfg.model, cfg.train, cfg.active, cfg.score
        m.backbone, m.norm, m.weights_backbone = self.backbone, self.norm, self.weights_backbone  # type: ignore[assignment]
        if self.mask_threshold is not None:
            m.mask_threshold = self.mask_threshold
        m.min_size = m.max_size = self.image_size
        if self.init:
            m.weights = self.init  # every model starts from the source checkpoint's matching tensors
        t.batch_size, t.lr, t.warmup_iters, t.amp = self.batch_size, self.lr, self.warmup_iters, self.amp
        t.lr_steps, t.lr_steps_unit = [0.9, 0.98], "fraction"  # the paper's 45/50 and 49/50
        t.workers, t.device, t.seed, t.log_every = self.workers, self.device, seed, 50
        a.budget = self.budget
        a.typiclust_embedding = self.typiclust_embedding  # type: ignore[assignment]
        a.finetune = False  # every cycle's model from the same initialization: only the data differ
        a.cluster_source = "none"  # an arm that queues with clusters says so (queue_clusters)
        if self.score_threshold is not None:
            a.score_threshold = self.score_threshold
        if self.empty_image_rule is not None:
            a.empty_image_rule = self.empty_image_rule  # type: ignore[assignment]
        if self.show_threshold is not None:
            a.show_threshold = self.show_threshold
        for key, value in (model_overrides or {}).items():
            setattr(m, key, value)
        s.batch_size, s.workers, s.amp = max(self.batch_size, 4), self.workers, self.amp
        return cfg

    def epochs_for(self, labeled: int) -> int:
        return max(self.min_epochs, math.ceil(self.image_steps / max(labeled, 1)))

    def check(self) -> None:
        if self.budget < 1 or self.cycles < 1 or not self.seeds:
            raise SimulationError("simulate: budget and cycles must be >= 1 and at least one seed given")
        for rule in [*self.empty_rules, *(r for _, r in (self.tune_candidates or []))]:
            if rule not in EMPTY_IMAGE_RULES:
                raise SimulationError(f"simulate: unknown empty-image rule {rule!r} (use {', '.join(EMPTY_IMAGE_RULES)})")
        for src in [*self.cluster_sources, self.cluster_source]:
            if src not in CLUSTER_SOURCES:
                raise SimulationError(f"simulate: unknown cluster source {src!r} (use {', '.join(CLUSTER_SOURCES)})")
            if src == "pretrained" and not self.pretrain:
                raise SimulationError("simulate: cluster source 'pretrained' needs --pretrain")
        for emb in [*self.typiclust_embeddings, self.typiclust_embedding]:
            if emb not in TYPICLUST_EMBEDDINGS:
                raise SimulationError(f"simulate: unknown TypiClust embedding {emb!r} (use thumbnail or pretrained)")
        if self.crowd not in ("auto", "instances", "ignore"):
            raise SimulationError(f"simulate: --crowd {self.crowd!r}: use auto, instances or ignore")
        for cand in self.model_candidates or []:
            bad = sorted(set(cand) - set(MODEL_DESIGN_KEYS))
            if bad or not cand:
                raise SimulationError(f"simulate: model candidate {cand!r}: set some of {', '.join(MODEL_DESIGN_KEYS)}")
        parse_arms(self.arms)


# --------------------------------------------------------------------------- arms
@dataclass(frozen=True)
class Arm:
    """One line of the comparison: a strategy (None: the fully supervised ceiling), with or
    without pseudo labels, and how cycle 1 picks its batch. ``pseudo_weight``: beta for the
    pseudo-labeled images (None: the config's; 0 for ``+pseudo0``, the control arm whose batches
    hold the pseudo images but whose loss ignores them)."""

    name: str
    strategy: str | None
    pseudo_labels: bool
    first_batch: str = "random"
    pseudo_weight: float | None = None


# What a strategy's model needs (strategies declare ``needs``).
MODEL_NEEDS = {"mc_dropout": {"dropout": 0.25}, "predicted_loss": {"learning_loss": True}}


def model_overrides(strategy: str) -> dict[str, Any]:
    """ModelConfig fields an arm's models need (dropout heads for mc_dropout, the loss-prediction
    module for learning_loss); {} for the others."""
    out: dict[str, Any] = {}
    for need in sorted(get_strategy(strategy).needs):
        out.update(MODEL_NEEDS.get(need, {}))
    return out


def parse_arms(names: Sequence[str]) -> list[Arm]:
    """``STRATEGY[+pseudo|+pseudo0][+typiclust]`` / ``full`` / ``all`` -> arms; unknown names
    fail early.

    ``+pseudo`` adds the paper's pseudo labels (eq. 4-5); ``+pseudo0`` the same pseudo-labeled
    images in every batch with beta = 0 (it separates what the images do to a batch from what
    their labels teach); ``+typiclust`` picks cycle 1's batch with TypiClust instead of at
    random. ``all`` is the default arms plus every other registered strategy.
    """
    known = available_strategies()
    expanded: list[str] = []
    for name in names:
        expanded += (DEFAULT_ARMS + [s for s in known if s not in DEFAULT_ARMS]) if name == "all" else [name]
    arms: list[Arm] = []
    for name in dict.fromkeys(expanded):
        if name == FULL:
            arms.append(Arm(FULL, None, False))
            continue
        strategy, *flags = name.split("+")
        bad = [f for f in flags if f not in ("pseudo", "pseudo0", "typiclust")]
        if bad or len(set(flags)) != len(flags) or {"pseudo", "pseudo0"} <= set(flags):
            raise SimulationError(f"--arms: {name!r}: write STRATEGY, STRATEGY+pseudo, STRATEGY+pseudo0 (beta = 0), "
                                  "STRATEGY+typiclust or STRATEGY+pseudo+typiclust")
        if strategy not in known:
            raise SimulationError(f"--arms: unknown strategy {strategy!r}; registered: {', '.join(known)}")
        pseudo = "pseudo" in flags or "pseudo0" in flags
        arms.append(Arm(name, strategy, pseudo, "typiclust" if "typiclust" in flags else "random",
                        0.0 if "pseudo0" in flags else None))
    return arms


def variant_tag(settings: SimulationSettings, base_config: TSPConfig | None = None) -> str:
    """The model variant of ``settings`` as a key fragment, e.g. ``group_mt0.3``."""
    m = settings.config(0, base_config).model
    return f"{m.norm}_mt{m.mask_threshold:g}"


def queue_clusters(settings: SimulationSettings, strategy: str) -> str:
    """``active.cluster_source`` of an arm's queue: the replay's clusters (``cluster_source``:
    ``"embedding"``, or ``"group"`` = each image's group, passed as its series) for
    ``tsp_diverse``, the order Label Studio serves with clusters; none for the other strategies,
    whose arms measure their own order."""
    if strategy != "tsp_diverse":
        return "none"
    return {"group": "series", "pretrained": "pretrained"}.get(settings.cluster_source, "embedding")
