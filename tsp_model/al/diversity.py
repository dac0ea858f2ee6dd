"""Diversity for the queue: clusters of similar images, the per-cluster order Label Studio serves,
and a typical, diverse first batch before any model exists.

Uncertainty alone picks near-duplicates: neighbouring slices through one bleed look alike and
score alike, so they would all sit at the front of the queue. Three tools:

- :func:`embedding_clusters`: k-means (scikit-learn) of image embeddings; the number of clusters
  follows :func:`cluster_count` (b, the batch size: one batch can then visit every cluster once).
- :func:`cluster_round_robin`: the order Label Studio's *Uncertainty sampling* serves one
  annotator when each prediction carries a ``cluster`` (``projects/functions/next_task.py``,
  ``_try_uncertainty_sampling``, 1.23): the tasks of the clusters where this annotator has
  labeled the fewest tasks first, lowest score first within them, and that count grows with
  every task served. The ``tsp_diverse`` strategy selects with it, so Algorithm 1 replays what
  Label Studio will serve.
- :func:`typiclust_first_batch`: TypiClust (Hacohen et al., ICML 2022) for cycle 1, which has no
  model: k-means of a label-free embedding into b clusters, and from each the most *typical*
  image (the highest density, 1 / mean distance to its nearest neighbours).
  :func:`thumbnail_embeddings` is that label-free embedding: each image shrunk to 32 x 32 gray
  levels, centered, then PCA (scikit-learn) to at most 32 dimensions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

__all__ = [
    "assign_clusters",
    "cluster_count",
    "cluster_round_robin",
    "embedding_clusters",
    "thumbnail_embeddings",
    "typicality",
    "typiclust_first_batch",
]


def cluster_count(n_images: int, budget: int) -> int:
    """The documented rule for k: b clusters (one batch can cover each once), at least 2 and at
    most half the images (a cluster should hold more than one image)."""
    if n_images < 2:
        return 1
    return int(max(2, min(budget, n_images // 2)))


def assign_clusters(
    pool: Sequence, labeled: Sequence, source: str, *, budget: int, seed: int,
    series: Mapping[object, str] | None = None,
) -> dict[object, int]:
    """Image id -> cluster for the pool and the labeled images together: the one rule behind the
    clusters Label Studio gets and the clusters ``tsp_diverse`` selects with.

    ``source``: ``"none"`` gives ``{}``; ``"series"`` numbers the series (``series``: image id ->
    series, in sorted order) when every image has one, and otherwise falls back to embeddings
    with a warning; ``"embedding"`` is k-means (``seed``) of the records' ``extras["embedding"]``
    (the detector's FPN) with k = :func:`cluster_count` (b = ``budget``); ``"pretrained"`` the
    same of ``extras["pretrained_embedding"]`` (the self-supervised backbone's,
    :func:`tsp_model.al.cycle.add_pretrained_embeddings`).

    Raises:
        ValueError: embeddings are needed and a record has none (naming how many).
    """
    import logging

    from tsp_model.engine.embeddings import decode_embedding

    if source == "none":
        return {}
    records = [*pool, *labeled]
    ids = [r.image_id for r in records]
    if not ids:
        return {}
    if source == "series":
        series = series or {}
        if all(i in series for i in ids):
            index = {name: k for k, name in enumerate(sorted({series[i] for i in ids}))}
            return {i: index[series[i]] for i in ids}
        logging.getLogger(__name__).warning(
            "active.cluster_source = 'series': %d of %d images have no DICOM series (SeriesInstanceUID); "
            "clustering embeddings instead", sum(i not in series for i in ids), len(ids))
    key = "pretrained_embedding" if source == "pretrained" else "embedding"
    missing = sum(key not in r.extras for r in records)
    if missing:
        raise ValueError(f"active.cluster_source = {source!r}: {missing} score records have no {key}; score "
                         "the pool with embeddings")
    x = np.stack([decode_embedding(r.extras[key], name=f"image {r.image_id}") for r in records])
    labels = embedding_clusters(x, cluster_count(len(ids), budget), seed=seed)
    return {i: int(c) for i, c in zip(ids, labels)}


def embedding_clusters(x: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """k-means labels (Int64[N]) of the rows of ``x`` (float[N, D]); k is clipped to N."""
    from sklearn.cluster import KMeans

    x = np.asarray(x, dtype=np.float64)
    n = x.shape[0]
    k = max(1, min(int(k), n))
    if k == 1:
        return np.zeros(n, dtype=np.int64)
    km = KMeans(n_clusters=k, n_init=4, random_state=seed)
    return km.fit_predict(x).astype(np.int64)


def cluster_round_robin(
    scores: Sequence[float], clusters: Sequence[int], labeled_clusters: Sequence[int] = (), budget: int | None = None,
    tie_break: Sequence[int] | None = None,
) -> list[int]:
    """Indices in the order Label Studio's Uncertainty sampling serves one annotator.

    At each step the next task is the lowest-scored one among the clusters where the annotator
    has labeled the fewest tasks so far (``labeled_clusters``: the cluster of every task they
    labeled before); the served task then counts as labeled in its cluster. Equal scores (within
    a cluster, and between the heads of equally labeled clusters) go by ``tie_break`` (lowest
    first; a seeded random permutation in the strategies), else by index.

    Args:
        scores: the queue score of each pool task (S_i: lowest first).
        clusters: each pool task's cluster.
        labeled_clusters: the cluster of each task already labeled.
        budget: stop after this many (default: order the whole pool).
        tie_break: a rank per pool task for ties (default: the index).
    """
    import heapq

    n = len(scores)
    if len(clusters) != n:
        raise ValueError(f"{n} scores but {len(clusters)} clusters")
    count: dict[int, int] = {}
    for c in labeled_clusters:
        count[int(c)] = count.get(int(c), 0) + 1
    ranks = list(range(n)) if tie_break is None else [int(t) for t in tie_break]
    if len(ranks) != n:
        raise ValueError(f"{n} scores but {len(ranks)} tie-break ranks")
    queues: dict[int, list[tuple[float, int, int]]] = {}
    for i, (s, c) in enumerate(zip(scores, clusters)):
        queues.setdefault(int(c), []).append((float(s), ranks[i], i))
    for q in queues.values():
        q.sort()
    heads = {c: 0 for c in queues}
    # one heap entry per cluster with tasks left: (labeled count, its next task's (score, rank), cluster)
    heap = [(count.get(c, 0), q[0][0], q[0][1], c) for c, q in queues.items()]
    heapq.heapify(heap)
    order: list[int] = []
    limit = n if budget is None else min(int(budget), n)
    while heap and len(order) < limit:
        cnt, _, _, c = heapq.heappop(heap)
        order.append(queues[c][heads[c]][2])
        heads[c] += 1
        if heads[c] < len(queues[c]):
            nxt = queues[c][heads[c]]
            heapq.heappush(heap, (cnt + 1, nxt[0], nxt[1], c))
    return order


def typicality(x: np.ndarray, neighbours: int = 20) -> np.ndarray:
    """TypiClust's typicality of each row: 1 / (mean Euclidean distance to its ``neighbours``
    nearest other rows); float[N]. A single row gets 1."""
    from sklearn.neighbors import NearestNeighbors

    x = np.asarray(x, dtype=np.float64)
    n = x.shape[0]
    if n < 2:
        return np.ones(n)
    k = min(neighbours, n - 1)
    dist, _ = NearestNeighbors(n_neighbors=k + 1).fit(x).kneighbors(x)
    return 1.0 / (dist[:, 1:].mean(axis=1) + 1e-12)


def typiclust_first_batch(x: np.ndarray, budget: int, seed: int = 0, neighbours: int = 20) -> list[int]:
    """TypiClust without labels: k-means into ``budget`` clusters, the most typical row of each.

    Clusters are visited largest first (TypiClust's order), so a smaller budget than the
    cluster count still takes the densest regions. Typicality is measured within the cluster,
    as TypiClust does. Returns ``budget`` row indices (all rows when fewer).
    """
    x = np.asarray(x, dtype=np.float64)
    n = x.shape[0]
    budget = min(int(budget), n)
    if budget <= 0:
        return []
    labels = embedding_clusters(x, budget, seed=seed)
    sizes = np.bincount(labels, minlength=budget)
    picks: list[int] = []
    for c in sorted(range(len(sizes)), key=lambda c: (-sizes[c], c)):
        members = np.flatnonzero(labels == c)
        if not len(members):
            continue
        typ = typicality(x[members], neighbours)
        picks.append(int(members[int(np.argmax(typ))]))
        if len(picks) == budget:
            break
    return picks


def thumbnail_embeddings(paths: Sequence[str | Path], side: int = 32, dims: int = 32, seed: int = 0) -> np.ndarray:
    """A label-free, model-free embedding: gray ``side`` x ``side`` thumbnails, centered, PCA to
    at most ``dims`` dimensions (scikit-learn); float[N, d]."""
    from PIL import Image
    from sklearn.decomposition import PCA

    from tsp_model.data.image_io import read_image

    rows = []
    for p in paths:
        img = read_image(p)  # float32 [H, W, 3] in 0..1
        gray = Image.fromarray((img.mean(axis=2) * 255).astype(np.uint8)).resize((side, side), Image.BILINEAR)
        rows.append(np.asarray(gray, dtype=np.float64).reshape(-1) / 255.0)
    x = np.stack(rows) if rows else np.zeros((0, side * side))
    x = x - x.mean(axis=0, keepdims=True)
    d = int(min(dims, max(1, x.shape[0] - 1), x.shape[1]))
    if x.shape[0] < 3:
        return x
    return PCA(n_components=d, random_state=seed).fit_transform(x)
