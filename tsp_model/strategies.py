"""Selection strategies for Algorithm 1, line 9: which pool images go to the annotators next.

A small registry by name, in the manner of detectron2's registries::

    @register_strategy("my_rule")
    class MyRule(SelectionStrategy):
        def rank(self, pool, *, seed=0):
            return sorted(range(len(pool)), key=lambda i: ...)

    get_strategy("my_rule").select(pool, budget=500)  # -> list of image_id

A strategy ranks the whole scored pool (most informative first) and ``select`` takes the first
``budget``. Ties keep the pool's order, so every ranking is deterministic.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import ClassVar, TypeVar

import numpy as np

from tsp_model.records import ImageScore

__all__ = [
    "SelectionStrategy",
    "register_strategy",
    "get_strategy",
    "available_strategies",
    "TSPStrategy",
    "TSPInstanceStrategy",
    "ClassEntropyStrategy",
    "RandomStrategy",
]

_REGISTRY: dict[str, type[SelectionStrategy]] = {}

T = TypeVar("T", bound="type[SelectionStrategy]")


class SelectionStrategy:
    """Ranks a scored pool; ``select`` returns the ``budget`` most informative image ids."""

    name: ClassVar[str] = ""

    def rank(self, pool: Sequence[ImageScore], *, seed: int = 0) -> list[int]:
        """Indices into ``pool``, most informative first (a permutation of range(len(pool)))."""
        raise NotImplementedError

    def select(self, pool: Sequence[ImageScore], budget: int, *, seed: int = 0) -> list[int | str]:
        """The ``image_id`` of the first ``budget`` images of :meth:`rank`.

        ``budget >= len(pool)`` returns every image (in rank order); ``budget <= 0`` returns [].
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


def get_strategy(name: str) -> SelectionStrategy:
    """A new instance of the strategy registered as ``name``."""
    try:
        cls = _REGISTRY[name]
    except KeyError:
        known = ", ".join(available_strategies())
        raise ValueError(
            f"unknown selection strategy {name!r}; known: {known} (set active.strategy)"
        ) from None
    return cls()


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


def _ascending(pool: Sequence[ImageScore], key: Callable[[ImageScore], float]) -> list[int]:
    # sorted() is stable: equal keys keep pool order.
    keys = [key(rec) for rec in pool]
    return sorted(range(len(pool)), key=keys.__getitem__)


@register_strategy("tsp")
class TSPStrategy(SelectionStrategy):
    """Eq. 3 / Algorithm 1 line 9: the lowest image score S first ("the lower the triplet
    scoring, the higher the uncertainty", section 3.1)."""

    def rank(self, pool: Sequence[ImageScore], *, seed: int = 0) -> list[int]:
        return _ascending(pool, lambda r: _finite(r.S, r, "S"))


@register_strategy("tsp_instance")
class TSPInstanceStrategy(SelectionStrategy):
    """Instance-level TSP: the lowest minimum instance score s (eq. 2) first.

    Section 5 observes that "instance-level sampling is a more reasonable way than image-level
    sampling"; an image is as uncertain as its most uncertain instance, so one doubtful lesion
    is not averaged away by confident ones. An image with no instance ranks by its S (the
    empty-image score).
    """

    def rank(self, pool: Sequence[ImageScore], *, seed: int = 0) -> list[int]:
        def key(r: ImageScore) -> float:
            if not r.instances:
                return _finite(r.S, r, "S")
            return min(_finite(i.s, r, "an instance score s") for i in r.instances)

        return _ascending(pool, key)


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

        return _ascending(pool, neg_entropy)


@register_strategy("random")
class RandomStrategy(SelectionStrategy):
    """Random baseline (section 5): b images uniformly without replacement; the same ``seed``
    gives the same choice (numpy Generator), scores are ignored."""

    def rank(self, pool: Sequence[ImageScore], *, seed: int = 0) -> list[int]:
        return [int(i) for i in np.random.default_rng(seed).permutation(len(pool))]
