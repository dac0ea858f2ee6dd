"""Diversity: Label Studio's per-cluster order, the tsp_diverse strategy, TypiClust's first batch."""

from __future__ import annotations

import numpy as np
import pytest

from tsp_model.core.config import ActiveConfig
from tsp_model.al.diversity import cluster_count, cluster_round_robin, typicality, typiclust_first_batch
from tsp_model.core.records import ImageScore
from tsp_model.al.strategies import get_strategy


def test_cluster_round_robin_serves_the_least_labeled_cluster_lowest_score_first():
    # tasks:    0     1     2     3     4     5
    scores = [0.10, 0.20, 0.15, 0.50, 0.05, 0.30]
    clusters = [0, 0, 1, 1, 2, 2]
    # nothing labeled: every cluster count 0 -> the lowest score overall first (task 4, cluster 2);
    # then cluster 2 has 1 and the lowest of clusters 0 and 1 follows (task 0, 0.10), then
    # cluster 1 (task 2, 0.15); all at count 1: the lowest left (task 1, 0.20), task 5, task 3
    assert cluster_round_robin(scores, clusters) == [4, 0, 2, 1, 5, 3]
    # the annotator labeled two tasks in cluster 0 and one in cluster 2 before (counts 2, 0, 1):
    # cluster 1's best (task 2), then the count-1 clusters by their best score: task 4 (cluster 2,
    # 0.05) before task 3 (cluster 1, 0.50); then count 2: task 0 (0.10) before task 5 (0.30); task 1
    assert cluster_round_robin(scores, clusters, labeled_clusters=[0, 0, 2]) == [2, 4, 3, 0, 5, 1]
    assert cluster_round_robin(scores, clusters, budget=2) == [4, 0]
    with pytest.raises(ValueError, match="6 scores but 5 clusters"):
        cluster_round_robin(scores, clusters[:5])


def test_cluster_count_rule():
    assert cluster_count(1000, 50) == 50  # b clusters
    assert cluster_count(10, 50) == 5  # at most half the images
    assert cluster_count(100, 1) == 2 and cluster_count(1, 5) == 1


def test_tsp_diverse_uses_given_clusters_and_the_labeled_counts():
    def rec(i, S, cluster):
        return ImageScore(i, f"{i}.png", 4, 4, S=S, extras={"cluster": cluster})

    pool = [rec("a", 0.1, 0), rec("b", 0.2, 0), rec("c", 0.3, 1), rec("d", 0.4, 2)]
    labeled = [rec("x", 0.9, 1)]
    strat = get_strategy("tsp_diverse", ActiveConfig(budget=3))
    # cluster 1 already has a labeled image: clusters 0 and 2 first (a: 0.1, then d: 0.4); then
    # every cluster has one, and the lowest left wins (b: 0.2 before c: 0.3)
    assert strat.select(pool, 3, labeled=labeled) == ["a", "d", "b"]
    assert strat.select(pool, 2, labeled=labeled) == ["a", "d"]
    # plain tsp takes the two near-duplicates of cluster 0 first
    assert get_strategy("tsp").select(pool, 2) == ["a", "b"]


def test_typicality_and_typiclust_pick_the_densest_point_of_each_cluster():
    rng = np.random.default_rng(0)
    blob_a = rng.normal([0, 0], 0.1, (30, 2))
    blob_b = rng.normal([10, 10], 0.1, (20, 2))
    outlier = np.array([[5.0, 5.0]])
    x = np.concatenate([blob_a, blob_b, outlier])
    typ = typicality(x, neighbours=5)
    assert typ[-1] < typ[:-1].min()  # the outlier is the least typical
    picks = typiclust_first_batch(x, 2, seed=0, neighbours=5)
    assert len(picks) == 2 and {int(p < 30) for p in picks} == {0, 1}  # one from each blob
    assert picks[0] < 30  # the larger blob first (TypiClust visits clusters by size)
    centre_a = int(np.argmax(typicality(blob_a, 5)))
    assert picks[0] == centre_a  # within a cluster, the densest point


def test_thumbnail_embeddings_need_no_labels(tmp_path):
    from tsp_model.synth.phantom import generate_series
    from tsp_model.al.diversity import thumbnail_embeddings

    ann = generate_series(tmp_path, 3, slices=4, size=48, seed=2, progress=False)
    paths = sorted((tmp_path / "images").glob("*.png"))
    x = thumbnail_embeddings(paths, dims=8)
    assert x.shape == (12, 8) and np.isfinite(x).all()
    assert ann.is_file()
