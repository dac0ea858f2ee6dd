"""Selection strategies for Algorithm 1, line 9: which pool images go to the annotators next.

A small registry by name, in the manner of detectron2's registries::

    @register_strategy("my_rule")
    class MyRule(SelectionStrategy):
        def rank(self, pool, *, seed=0):
            return sorted(range(len(pool)), key=lambda i: ...)

    get_strategy("my_rule").select(pool, budget=500)  # -> list of image_id

A strategy ranks the whole scored pool (most informative first) and ``select`` takes the first
``budget``. Ties (equal S_i, e.g. 1.0 for every slice without a scored instance) are broken by a
seeded random permutation (:func:`tie_break_ranks`), never by pool order: the lowest image ids
would otherwise fill a batch whenever the model finds nothing. The same ``seed`` gives the same
ranking.

What a strategy reads beyond the triplet scores is declared in ``needs`` and produced by the
pool scoring (:func:`scoring_options`, used by ``score_pool``): ``"embedding"`` (pooled FPN
features in ``extras``), ``"labeled_embedding"`` (the labeled set scored too, passed as
``select(..., labeled=records)``), ``"mc_dropout"`` (T dropout passes, ``active.mc_passes``),
``"predicted_loss"`` (a model trained with ``model.learning_loss``).

The paper's Figure 2 baselines: ``random``, ``class_entropy``, ``mc_dropout``, ``core_set``,
``learning_loss``; TSP itself: ``tsp`` and ``tsp_instance``; TSP with diversity (the order Label
Studio serves with clusters): ``tsp_diverse``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import ClassVar, TypeVar

import numpy as np

from tsp_model.core.config import ActiveConfig
from tsp_model.core.records import ImageScore

__all__ = [
    "SelectionStrategy",
    "register_strategy",
    "get_strategy",
    "available_strategies",
    "TSPStrategy",
    "TSPInstanceStrategy",
    "ClassEntropyStrategy",
    "RandomStrategy",
    "MCDropoutStrategy",
    "CoreSetStrategy",
    "LearningLossStrategy",
    "TSPDiverseStrategy",
    "scoring_options",
    "priority_scores",
    "tie_break_ranks",
]

_REGISTRY: dict[str, type[SelectionStrategy]] = {}

T = TypeVar("T", bound="type[SelectionStrategy]")


class SelectionStrategy:
    """Ranks a scored pool; ``select`` returns the ``budget`` most informative image ids."""

    name: ClassVar[str] = ""
    # What the pool scoring must add to each record for this strategy (see the module docstring).
    needs: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, active: ActiveConfig | None = None) -> None:
        # thresholds (active.score_threshold...) and b for strategies that need them
        self.active = active or ActiveConfig()

    def rank(self, pool: Sequence[ImageScore], *, seed: int = 0) -> list[int]:
        """Indices into ``pool``, most informative first (a permutation of range(len(pool)))."""
        raise NotImplementedError

    def select(
        self,
        pool: Sequence[ImageScore],
        budget: int,
        *,
        seed: int = 0,
        labeled: Sequence[ImageScore] = (),
    ) -> list[int | str]:
        """The ``image_id`` of the first ``budget`` images of :meth:`rank`.

        ``budget >= len(pool)`` returns every image (in rank order); ``budget <= 0`` returns [].
        ``labeled``: score records of the labeled set, for strategies that need them
        (``core_set``); the others ignore it.
        """
        _check_unique_ids(pool)
        if budget <= 0 or not pool:
            return []
        order = self.rank(pool, seed=seed)
        return [pool[i].image_id for i in order[:budget]]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


def register_strategy(name: str) -> Callable[[T], T]:
    """Class decorator adding a :class:`SelectionStrategy` subclass to the registry as ``name``."""

    def deco(cls: T) -> T:
        if name in _REGISTRY:
            raise ValueError(f"selection strategy {name!r} is already registered ({_REGISTRY[name]})")
        if not (isinstance(cls, type) and issubclass(cls, SelectionStrategy)):
            raise TypeError(f"@register_strategy({name!r}) needs a SelectionStrategy subclass")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return deco


def available_strategies() -> list[str]:
    """Registered names, sorted."""
    return sorted(_REGISTRY)


def get_strategy(name: str, active: ActiveConfig | None = None) -> SelectionStrategy:
    """A new instance of the strategy registered as ``name`` (``active``: the ``[active]`` config
    whose thresholds it uses; default ``ActiveConfig()``)."""
    try:
        cls = _REGISTRY[name]
    except KeyError:
        known = ", ".join(available_strategies())
        raise ValueError(
            f"unknown selection strategy {name!r}; known: {known} (set active.strategy)"
        ) from None
    return cls(active)


def _check_unique_ids(pool: Sequence[ImageScore]) -> None:
    seen: set[int | str] = set()
    for rec in pool:
        if rec.image_id in seen:
            raise ValueError(f"image_id {rec.image_id!r} appears twice in the pool")
        seen.add(rec.image_id)


def _finite(value: float, rec: ImageScore, what: str) -> float:
    if not math.isfinite(value):
        raise ValueError(f"image {rec.image_id!r}: {what} is {value}; rescore the pool")
    return value


def tie_break_ranks(n: int, seed: int) -> np.ndarray:
    """Int64[n]: a seeded random rank for each of ``n`` pool indices; among equal keys the lower
    rank goes first. Every strategy breaks ties with it (sorts, the cluster round robin, the
    k-center argmax)."""
    return np.random.default_rng(seed).permutation(n)


def _ascending(pool: Sequence[ImageScore], key: Callable[[ImageScore], float], seed: int) -> list[int]:
    keys = np.array([key(rec) for rec in pool], dtype=np.float64)
    # lexsort: the last key is the primary one; equal keys fall back to the random ranks
    return [int(i) for i in np.lexsort((tie_break_ranks(len(pool), seed), keys))]


@register_strategy("tsp")
class TSPStrategy(SelectionStrategy):
    """Eq. 3 / Algorithm 1 line 9: the lowest image score S first ("the lower the triplet
    scoring, the higher the uncertainty", section 3.1). ``S`` is the record's: eq. 3 over the
    scored instances (``active.score_threshold``), the empty-image rule without any
    (:func:`tsp_model.core.scoring.scored_image_score`, applied when the pool is scored)."""

    def rank(self, pool: Sequence[ImageScore], *, seed: int = 0) -> list[int]:
        return _ascending(pool, lambda r: _finite(r.S, r, "S"), seed)


@register_strategy("tsp_instance")
class TSPInstanceStrategy(SelectionStrategy):
    """Instance-level TSP: the lowest instance score s (eq. 2) among the scored instances first.

    Section 5 observes that "instance-level sampling is a more reasonable way than image-level
    sampling"; an image is as uncertain as its most uncertain instance, so one doubtful lesion
    is not averaged away by confident ones. An image with no scored instance ranks by its S (the
    empty-image rule).
    """

    def rank(self, pool: Sequence[ImageScore], *, seed: int = 0) -> list[int]:
        threshold = self.active.score_threshold

        def key(r: ImageScore) -> float:
            scored = [i.s for i in r.instances if i.c >= threshold]
            if not scored:
                return _finite(r.S, r, "S")
            return min(_finite(s, r, "an instance score s") for s in scored)

        return _ascending(pool, key, seed)


@register_strategy("class_entropy")
class ClassEntropyStrategy(SelectionStrategy):
    """Class-entropy baseline (section 5): the highest mean softmax entropy first.

    "We compute the entropy of an image by averaging all entropy values from Softmax outputs
    corresponding to detection instances" (``InstanceScore.entropy``); an image with no
    detection has entropy 0.
    """

    def rank(self, pool: Sequence[ImageScore], *, seed: int = 0) -> list[int]:
        def neg_entropy(r: ImageScore) -> float:
            if not r.instances:
                return 0.0
            h = sum(_finite(i.entropy, r, "an instance entropy") for i in r.instances)
            return -h / len(r.instances)

        return _ascending(pool, neg_entropy, seed)


@register_strategy("random")
class RandomStrategy(SelectionStrategy):
    """Random baseline (section 5): b images uniformly without replacement; the same ``seed``
    gives the same choice (numpy Generator), scores are ignored."""

    def rank(self, pool: Sequence[ImageScore], *, seed: int = 0) -> list[int]:
        return [int(i) for i in np.random.default_rng(seed).permutation(len(pool))]


def _extra(rec: ImageScore, key: str, hint: str) -> float:
    if key not in rec.extras:
        raise ValueError(f"image {rec.image_id!r}: no extras[{key!r}] in its score record; {hint}")
    try:
        value = float(rec.extras[key])
    except (TypeError, ValueError):
        raise ValueError(f"image {rec.image_id!r}: extras[{key!r}] is {rec.extras[key]!r}, not a number") from None
    return _finite(value, rec, f"extras[{key!r}]")


@register_strategy("mc_dropout")
class MCDropoutStrategy(SelectionStrategy):
    """MC dropout baseline (Gal et al. 2017): the highest ``extras["mc_uncertainty"]`` first.

    ``mc_uncertainty`` is the mean over the image's detections of the mutual information of the
    T dropout passes' class distributions plus the mean pixel variance of their masks
    (:mod:`tsp_model.engine.mc_dropout`); 0 for an image without detections. Needs a model built with
    ``model.dropout > 0``; ``active.mc_passes`` sets T (default 10).
    """

    needs = frozenset({"mc_dropout"})

    def rank(self, pool: Sequence[ImageScore], *, seed: int = 0) -> list[int]:
        hint = "score the pool with MC dropout (model.dropout > 0, active.strategy = 'mc_dropout')"
        return _ascending(pool, lambda r: -_extra(r, "mc_uncertainty", hint), seed)


@register_strategy("learning_loss")
class LearningLossStrategy(SelectionStrategy):
    """Learning-loss baseline (Yoo & Kweon, CVPR 2019): the highest predicted loss first.

    ``extras["predicted_loss"]`` comes from the loss-prediction module
    (:mod:`tsp_model.nn.learning_loss`) of a model trained with ``model.learning_loss = true``.
    """

    needs = frozenset({"predicted_loss"})

    def rank(self, pool: Sequence[ImageScore], *, seed: int = 0) -> list[int]:
        hint = "the model needs model.learning_loss = true (retrain with it)"
        return _ascending(pool, lambda r: -_extra(r, "predicted_loss", hint), seed)


class LabeledAwareStrategy(SelectionStrategy):
    """Base of the strategies that also read the labeled set's records (``select(...,
    labeled=records)``): subclasses implement :meth:`order`, the first ``budget`` picks."""

    needs = frozenset({"embedding", "labeled_embedding"})

    def order(self, pool: Sequence[ImageScore], budget: int | None, labeled: Sequence[ImageScore],
              seed: int) -> list[int]:
        """Indices into ``pool``: the first ``budget`` picks in order (None: the whole pool)."""
        raise NotImplementedError

    def rank(
        self, pool: Sequence[ImageScore], *, seed: int = 0, labeled: Sequence[ImageScore] = ()
    ) -> list[int]:
        return self.order(pool, None, labeled, seed)

    def select(
        self,
        pool: Sequence[ImageScore],
        budget: int,
        *,
        seed: int = 0,
        labeled: Sequence[ImageScore] = (),
    ) -> list[int | str]:
        _check_unique_ids(pool)
        if budget <= 0 or not pool:
            return []
        return [pool[i].image_id for i in self.order(pool, budget, labeled, seed)]


def _embeddings(pool: Sequence[ImageScore], labeled: Sequence[ImageScore]) -> tuple[np.ndarray, np.ndarray | None]:
    """The pool's and the labeled set's embedding matrices (same width, or ValueError)."""
    from tsp_model.engine.embeddings import embedding_matrix

    x = embedding_matrix(pool, what="pool")
    lab = embedding_matrix(labeled, what="labeled") if labeled else None
    if lab is not None and lab.shape[1] != x.shape[1]:
        raise ValueError(
            f"labeled embeddings have {lab.shape[1]} values, the pool's {x.shape[1]}: score both with the same model"
        )
    return x, lab


@register_strategy("core_set")
class CoreSetStrategy(LabeledAwareStrategy):
    """Core-set baseline (Sener & Savarese, ICLR 2018): k-center greedy over image embeddings.

    Embeddings are the trained model's pooled FPN features (:mod:`tsp_model.engine.embeddings`,
    ``extras["embedding"]``). The labeled set's embeddings are the initial centers; each pick is
    the pool image farthest from every center so far (:func:`tsp_model.al.coreset.k_center_greedy`,
    memory O(N), no N x N matrix). Without labeled records the first pick is the image farthest
    from the pool's mean. ``rank`` orders the whole pool greedily (O(N^2 D) time: use ``select``,
    which stops after ``budget`` picks, on large pools).
    """

    def order(self, pool: Sequence[ImageScore], budget: int | None, labeled: Sequence[ImageScore],
              seed: int) -> list[int]:
        from tsp_model.al.coreset import k_center_greedy

        x, lab = _embeddings(pool, labeled)
        return k_center_greedy(x, lab, len(pool) if budget is None else budget,
                               tie_break=tie_break_ranks(len(pool), seed))


@register_strategy("tsp_diverse")
class TSPDiverseStrategy(LabeledAwareStrategy):
    """TSP with diversity: the order Label Studio's Uncertainty sampling serves when every
    prediction carries a cluster (:func:`tsp_model.al.diversity.cluster_round_robin`): the lowest
    S_i of the clusters with the fewest labeled images first, so near-duplicate slices do not
    fill a batch.

    Clusters: ``extras["cluster"]`` when every record has one (the queue's clusters, e.g. the
    series of a slice); otherwise :func:`tsp_model.al.diversity.assign_clusters` of the FPN
    embeddings of pool and labeled images together, k = b (``active.budget``).
    """

    def clusters(
        self, pool: Sequence[ImageScore], labeled: Sequence[ImageScore] = (), seed: int = 0
    ) -> tuple[list[int], list[int]]:
        """``(pool clusters, labeled clusters)``, aligned with the records: ``extras["cluster"]``
        when every record has one (the queue's, :func:`tsp_model.al.cycle.queue_order`), else
        :func:`tsp_model.al.diversity.assign_clusters` of the embeddings, the queue's rule."""
        from tsp_model.al.diversity import assign_clusters

        every = list(pool) + list(labeled)
        if every and all("cluster" in r.extras for r in every):
            ids = [int(r.extras["cluster"]) for r in every]
        else:
            clusters = assign_clusters(pool, labeled, "embedding", budget=self.active.budget, seed=seed)
            ids = [clusters[r.image_id] for r in every]
        return ids[: len(pool)], ids[len(pool):]

    def order(self, pool: Sequence[ImageScore], budget: int | None, labeled: Sequence[ImageScore],
              seed: int) -> list[int]:
        from tsp_model.al.diversity import cluster_round_robin

        pool_c, lab_c = self.clusters(pool, labeled, seed)
        scores = [_finite(r.S, r, "S") for r in pool]
        return cluster_round_robin(scores, pool_c, lab_c, budget, tie_break=tie_break_ranks(len(pool), seed))


def scoring_options(strategy: str | SelectionStrategy, mc_passes: int = 10) -> dict[str, object]:
    """Keyword arguments for ``predict_images`` / ``score_pool`` that ``strategy`` needs.

    Returns ``{"embeddings": bool, "mc_passes": int (0 = off), "score_labeled": bool}``.
    """
    strat = get_strategy(strategy) if isinstance(strategy, str) else strategy
    needs = strat.needs
    return {
        "embeddings": "embedding" in needs,
        "mc_passes": int(mc_passes) if "mc_dropout" in needs else 0,
        "score_labeled": "labeled_embedding" in needs,
    }


def priority_scores(
    pool: Sequence[ImageScore],
    strategy: str | SelectionStrategy,
    *,
    seed: int = 0,
    labeled: Sequence[ImageScore] = (),
    budget: int | None = None,
) -> dict[int | str, float]:
    """A queue score per image for tools that serve the lowest score first (Label Studio's
    uncertainty sampling): rank position / N in [0, 1), the strategy's first pick 0.

    ``budget`` (core_set on large pools): only the first ``budget`` picks are ordered; the rest
    share the score 1.0.
    """
    strat = get_strategy(strategy) if isinstance(strategy, str) else strategy
    n = len(pool)
    if budget is None or budget >= n:
        ids = strat.select(pool, n, seed=seed, labeled=labeled)
    else:
        ids = strat.select(pool, budget, seed=seed, labeled=labeled)
    out = {image_id: k / max(n, 1) for k, image_id in enumerate(ids)}
    for rec in pool:
        out.setdefault(rec.image_id, 1.0)
    return out
