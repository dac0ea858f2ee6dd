"""Selection strategies on a hand-made scored pool."""

from collections import Counter

import pytest

import tsp_model.al.strategies as strategies
from tsp_model.core.config import ActiveConfig
from tsp_model.core.records import ImageScore, InstanceScore
from tsp_model.al.strategies import (
    SelectionStrategy,
    available_strategies,
    get_strategy,
    register_strategy,
)


def _img(image_id, S, insts=()):
    """insts: (s, entropy) pairs."""
    instances = [
        InstanceScore(label=1, category="epidural", box=[0, 0, 1, 1], c=s, b=s, m=s, s=s, entropy=h)
        for s, h in insts
    ]
    return ImageScore(image_id, f"{image_id}.png", 8, 8, S=S, instances=instances)


# id   S     instance s      entropies   min s  mean entropy
# A    0.50  0.70, 0.30      0.2, 0.4    0.30   0.3
# B    0.40  0.40            0.1         0.40   0.1
# C    1.00  (none)          -           1.00*  0.0   (*no instance: ranks by S)
# D    0.45  0.45, 0.45      0.9, 0.7    0.45   0.8
# E    0.40  0.40            0.1         0.40   0.1   (ties B everywhere: a seeded coin decides)
# F    0.20  (none)          -           0.20*  0.0
POOL = [
    _img("A", 0.50, [(0.70, 0.2), (0.30, 0.4)]),
    _img("B", 0.40, [(0.40, 0.1)]),
    _img("C", 1.00),
    _img("D", 0.45, [(0.45, 0.9), (0.45, 0.7)]),
    _img("E", 0.40, [(0.40, 0.1)]),
    _img("F", 0.20),
]


def test_registry_names():
    assert available_strategies() == [
        "class_entropy", "core_set", "learning_loss", "mc_dropout", "random", "tsp", "tsp_diverse", "tsp_instance",
    ]
    for name in available_strategies():
        s = get_strategy(name)
        assert isinstance(s, SelectionStrategy) and s.name == name


def test_unknown_name_lists_known():
    with pytest.raises(ValueError, match=r"'tps'.*class_entropy, core_set, learning_loss, mc_dropout, random, tsp, tsp_diverse, tsp_instance"):
        get_strategy("tps")


def _orders(name, active=None, seeds=range(20)):
    return {tuple(get_strategy(name, active).select(POOL, 6, seed=seed)) for seed in seeds}


def test_tsp_lowest_image_score_first():
    # ascending S: F 0.20, {B, E} 0.40 (tied: seeded order), D 0.45, A 0.50, C 1.00
    assert _orders("tsp") == {("F", "B", "E", "D", "A", "C"), ("F", "E", "B", "D", "A", "C")}
    assert get_strategy("tsp").select(POOL, 1, seed=3) == ["F"]


def test_tsp_instance_lowest_min_instance_score_first():
    every = ActiveConfig(score_threshold=0.0)  # every instance is scored
    # min s: F 0.20*, A 0.30, {B, E} 0.40, D 0.45, C 1.00*
    assert _orders("tsp_instance", every) == {("F", "A", "B", "E", "D", "C"), ("F", "A", "E", "B", "D", "C")}
    assert get_strategy("tsp_instance", every).select(POOL, 2, seed=5) == ["F", "A"]


def test_tsp_instance_uses_scored_instances_only():
    # c = s here. With score_threshold 0.5 only A's 0.70 instance is scored; B, D, E then rank by
    # their S (the empty-image rule was applied when they were scored): F 0.20, {B, E} 0.40,
    # D 0.45, A 0.70, C 1.00
    assert _orders("tsp_instance", ActiveConfig(score_threshold=0.5)) == {
        ("F", "B", "E", "D", "A", "C"), ("F", "E", "B", "D", "A", "C")}


def test_class_entropy_highest_mean_entropy_first():
    # mean entropy: D 0.8, A 0.3, {B, E} 0.1, {C, F} 0
    orders = _orders("class_entropy")
    assert {o[:2] for o in orders} == {("D", "A")}
    assert {frozenset(o[2:4]) for o in orders} == {frozenset("BE")}
    assert {frozenset(o[4:]) for o in orders} == {frozenset("CF")}
    assert len(orders) == 4  # both ties are broken either way over 20 seeds


@pytest.mark.parametrize("name", ["tsp", "tsp_instance", "class_entropy"])
def test_ties_are_broken_by_a_seeded_random_permutation_not_by_pool_order(name):
    """Equal keys (a pool the model found nothing in: S = 1.0 everywhere) must not hand the batch
    to the lowest image ids: the first of 4 tied images is each image about equally often."""
    tied = [_img(i, 1.0) for i in range(4)]
    strat = get_strategy(name)
    firsts = Counter(strat.select(tied, 1, seed=s)[0] for s in range(2000))
    # each expected 500 times, binomial sd ~19.4
    assert set(firsts) == {0, 1, 2, 3} and all(400 < n < 600 for n in firsts.values()), firsts
    assert strat.select(tied, 4, seed=7) == strat.select(tied, 4, seed=7)  # the same seed, the same order


@pytest.mark.parametrize("name", ["tsp", "tsp_instance", "class_entropy", "random"])
def test_budget_edges(name):
    strat = get_strategy(name)
    assert strat.select(POOL, 0) == []
    assert strat.select(POOL, -3) == []
    assert strat.select([], 5) == []
    everything = strat.select(POOL, 100)
    assert sorted(everything) == ["A", "B", "C", "D", "E", "F"]


def test_random_reproducible_and_seed_dependent():
    pool = [_img(i, 0.5) for i in range(20)]
    rnd = get_strategy("random")
    a = rnd.select(pool, 5, seed=1)
    assert a == rnd.select(pool, 5, seed=1)
    assert len(set(a)) == 5 and set(a) <= set(range(20))
    assert a != rnd.select(pool, 5, seed=2)
    # the scores play no part: the same seed picks the same positions whatever S is
    rescored = [_img(i, 1.0 - i / 20) for i in range(20)]
    assert rnd.select(rescored, 5, seed=1) == a


def test_random_is_uniform():
    # 2000 draws of 1 out of 4: each image expected 500 times, binomial sd ~19.4
    counts = Counter(get_strategy("random").select(POOL[:4], 1, seed=s)[0] for s in range(2000))
    assert set(counts) == {"A", "B", "C", "D"}
    assert all(400 < n < 600 for n in counts.values()), counts


def test_bad_pools_are_refused():
    with pytest.raises(ValueError, match="'B' appears twice"):
        get_strategy("tsp").select([*POOL, _img("B", 0.1)], 2)
    with pytest.raises(ValueError, match="image 'X': S is nan"):
        get_strategy("tsp").select([*POOL, _img("X", float("nan"))], 2)


def test_register_custom_strategy(monkeypatch):
    monkeypatch.setattr(strategies, "_REGISTRY", dict(strategies._REGISTRY))

    @register_strategy("highest_S")
    class Highest(SelectionStrategy):
        def rank(self, pool, *, seed=0):
            return sorted(range(len(pool)), key=lambda i: -pool[i].S)

    assert "highest_S" in available_strategies()
    assert get_strategy("highest_S").select(POOL, 2) == ["C", "A"]
    with pytest.raises(ValueError, match="already registered"):
        register_strategy("tsp")(Highest)
