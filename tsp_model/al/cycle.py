"""One cycle of Algorithm 1: the same code whether people label (``tsp-sync``) or an oracle does
(``tsp-sync simulate``).

The three steps of a cycle, each one function that both callers use:

1. **train** M_k on the labeled images plus the pseudo labels of the previous model's pool
   scores (eq. 4-5): :func:`tsp_model.engine.train.train_with_pseudo_labels` (``tsp-sync
   retrain``, also under torchrun; here :func:`run_cycle`), from M_{k-1}'s weights when
   ``active.finetune``;
2. **score** the pool with what the queue needs (:func:`scoring_needs`):
   :func:`tsp_model.engine.predict.score_pool`;
3. **queue** the pool (:func:`queue_order`): the clusters of pool and labeled images (one rule,
   :func:`tsp_model.al.diversity.assign_clusters`), each image's queue score (``S_i`` for
   ``tsp``, the strategy's rank otherwise) and the order in which Label Studio's Uncertainty
   sampling serves them (the lowest score of the least-labeled cluster first).

People label from the front of that queue; the replay's oracle labels its first b.
:func:`run_cycle` is cycle k of Algorithm 1 for the replay: the queue of M_{k-1}'s pool scores,
its first b images labeled, the rest pseudo-labeled from the same scores, M_k trained. Cycle 1
has no model: :func:`first_batch`.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tsp_model.core.config import ActiveConfig, TSPConfig
from tsp_model.core.records import ImageScore, read_jsonl
from tsp_model.engine import distributed as du

log = logging.getLogger(__name__)

__all__ = ["CycleResult", "QueueOrder", "add_pretrained_embeddings", "first_batch", "queue_order", "run_cycle",
           "scoring_needs"]


@dataclass
class QueueOrder:
    """The pool as Label Studio will serve it."""

    order: list[Any]  # image ids, the first served first
    priority: dict[Any, float]  # image id -> queue score pushed to Label Studio (lowest served first)
    clusters: dict[Any, int] = field(default_factory=dict)  # image id -> cluster, pool and labeled ({}: none)


def scoring_needs(active: ActiveConfig) -> dict[str, Any]:
    """What the pool records must carry for the queue: the strategy's data
    (:func:`tsp_model.al.strategies.scoring_options`) plus embeddings when clusters come from
    them; ``score_labeled``: the labeled images are scored too (core-set centers, clusters)."""
    from tsp_model.al.strategies import scoring_options

    needs = dict(scoring_options(active.strategy, active.mc_passes))
    if active.cluster_source in ("embedding", "series"):
        needs["embeddings"] = needs["score_labeled"] = True  # "series" falls back to embeddings
    elif active.cluster_source == "pretrained":
        needs["score_labeled"] = True  # the labeled images count per cluster too
    return needs


def add_pretrained_embeddings(records: Sequence[ImageScore], paths: Mapping[Any, str | Path],
                              checkpoint: str | Path | None) -> None:
    """Each record's ``extras["pretrained_embedding"]``: its slice embedded by the pretrained
    backbone ``checkpoint`` (``model.weights_backbone``), for ``cluster_source = "pretrained"``."""
    from tsp_model.engine.embeddings import encode_embedding
    from tsp_model.engine.pretrain import pretrained_embeddings

    if not checkpoint:
        raise ValueError("active.cluster_source = 'pretrained' needs model.weights_backbone = a tsp-sync pretrain "
                         "checkpoint")
    todo = [r for r in records if "pretrained_embedding" not in r.extras]
    for rec, vec in zip(todo, pretrained_embeddings(checkpoint, [paths[r.image_id] for r in todo])):
        rec.extras["pretrained_embedding"] = encode_embedding(vec)


def queue_order(pool: Sequence[ImageScore], labeled: Sequence[ImageScore], active: ActiveConfig, *, seed: int,
                series: Mapping[Any, str] | None = None) -> QueueOrder:
    """The queue of a scored pool: clusters (``active.cluster_source``), queue scores
    (``active.strategy``) and the order served, ties broken by ``seed``.

    With clusters the order is Label Studio's Uncertainty sampling for one annotator whose
    earlier labels are ``labeled`` (:func:`tsp_model.al.diversity.cluster_round_robin`); without,
    the queue scores ascending. Every record of ``pool`` and ``labeled`` gets its cluster in
    ``extras["cluster"]``, so a strategy that reads clusters (``tsp_diverse``) sees these.
    """
    from tsp_model.al.diversity import assign_clusters, cluster_round_robin
    from tsp_model.al.strategies import get_strategy, priority_scores, tie_break_ranks

    strategy = get_strategy(active.strategy, active)
    clusters = assign_clusters(pool, labeled, active.cluster_source, budget=active.budget, seed=seed, series=series)
    for rec in (*pool, *labeled):
        if rec.image_id in clusters:
            rec.extras["cluster"] = clusters[rec.image_id]
    if strategy.name == "tsp":
        priority = {r.image_id: float(r.S) for r in pool}
    else:
        # core_set ranks greedily in O(N^2 D): order the first b picks, the rest share 1.0
        budget = active.budget if strategy.name == "core_set" else None
        priority = priority_scores(pool, strategy, seed=seed, labeled=labeled, budget=budget)
    ids = [r.image_id for r in pool]
    ranks = tie_break_ranks(len(ids), seed)
    if clusters:
        order = cluster_round_robin([priority[i] for i in ids], [clusters[i] for i in ids],
                                    [clusters[r.image_id] for r in labeled], tie_break=ranks)
    else:
        order = sorted(range(len(ids)), key=lambda k: (priority[ids[k]], ranks[k]))
    return QueueOrder([ids[k] for k in order], priority, clusters)


@dataclass
class CycleResult:
    cycle_index: int
    selected_ids: list[Any]  # newly labeled this cycle
    labeled_ids: list[Any]  # D_al after this cycle
    pool_ids: list[Any]  # D_u after this cycle
    checkpoint: Path  # M_k
    model_version: str
    scores_path: Path | None  # pool scores by M_{k-1} (None in cycle 1)
    num_pseudo_images: int
    num_pseudo_instances: int


def _pool_items(dataset: Any, ids: Sequence[Any]) -> list[tuple[Any, Path, str]]:
    items = []
    for image_id in ids:
        idx = dataset.index_of(image_id)
        items.append((image_id, dataset.image_path(idx), str(dataset.image_info(idx)["file_name"])))
    return items


def first_batch(active: Any, dataset: Any, pool_ids: Sequence[Any], seed: int,
                pretrained: str | Path | None = None) -> list[Any]:
    """Algorithm 1, line 4: the b images of cycle 1, chosen without a model.

    ``active.first_batch = "random"``: b pool images uniformly at random (the paper);
    ``"typiclust"``: typical, diverse images (:func:`tsp_model.al.diversity.typiclust_first_batch`)
    of a label-free embedding, ``active.typiclust_embedding``: gray thumbnails, or the
    ``pretrained`` backbone (a ``tsp-sync pretrain`` checkpoint).
    """
    budget = min(active.budget, len(pool_ids))
    if active.first_batch == "typiclust":
        from tsp_model.al.diversity import thumbnail_embeddings, typiclust_first_batch

        paths = [dataset.image_path(dataset.index_of(i)) for i in pool_ids]
        if active.typiclust_embedding == "pretrained":
            if not pretrained:
                raise ValueError("active.typiclust_embedding = 'pretrained' needs model.weights_backbone = a tsp-sync "
                                 "pretrain checkpoint")
            from tsp_model.engine.pretrain import pretrained_embeddings

            x = pretrained_embeddings(pretrained, paths)
        else:
            x = thumbnail_embeddings(paths, seed=seed)
        picks = typiclust_first_batch(x, budget, seed=seed)
        return [pool_ids[i] for i in picks]
    return random.Random(seed).sample(list(pool_ids), budget)


def run_cycle(
    config: TSPConfig,
    *,
    labeled_ids: Sequence[Any],
    pool_ids: Sequence[Any],
    dataset: Any,
    prev_checkpoint: str | Path | None,
    out_dir: str | Path,
    cycle_index: int,
    dist: du.DistInfo | None = None,
    progress: bool = True,
    resume: bool = False,
    series: Mapping[Any, str] | None = None,
) -> CycleResult:
    """Run cycle ``cycle_index`` (1-based) of Algorithm 1 with ``dataset`` as the labeler and
    train M_k.

    Args:
        config: ``active`` sets b, the strategy, the clusters, the pseudo-label thresholds and
            whether M_k starts from M_{k-1} (``finetune``).
        labeled_ids: D_al before this cycle (image ids of ``dataset``).
        pool_ids: D_u before this cycle.
        dataset: the label provider, e.g. a :class:`~tsp_model.data.coco.CocoInstanceDataset`
            with ``train=True`` holding every image (the oracle): it must offer ``subset(ids)``,
            ``index_of(id)``, ``image_path(idx)``, ``image_info(idx)`` and ``class_names``.
        prev_checkpoint: M_{k-1}; None selects without a model (:func:`first_batch`).
        out_dir: receives ``cycle<k>.pt`` and ``scores/cycle<k>.jsonl``.
        dist: torchrun placement (default: :func:`~tsp_model.engine.distributed.init_distributed`).
        resume: continue an interrupted training of ``cycle<k>.pt`` (its ``.partial`` file).
        series: image id -> series, for ``active.cluster_source = "series"``.
    """
    from tsp_model.al.strategies import get_strategy
    from tsp_model.engine.checkpoint import load_checkpoint, load_model
    from tsp_model.engine.predict import PoolDataset, score_pool
    from tsp_model.engine.train import train_with_pseudo_labels

    a = config.active
    dist = dist or du.init_distributed(config.train.device)
    out_dir = Path(out_dir)
    labeled_ids, pool_ids = list(labeled_ids), list(pool_ids)
    overlap = set(labeled_ids) & set(pool_ids)
    if overlap:
        raise ValueError(f"image ids {sorted(overlap)[:10]} are both labeled and in the pool")
    class_names = list(dataset.class_names)
    get_strategy(a.strategy, a)  # an unknown name fails before any work
    seed = config.train.seed + cycle_index
    records: list[ImageScore] | None = None
    scores_path = None
    items = _pool_items(dataset, pool_ids)

    if prev_checkpoint is None:
        selected = first_batch(a, dataset, pool_ids, seed, config.model.weights_backbone)
    else:
        loaded = load_model(prev_checkpoint, device=dist.device)
        if loaded.class_names != class_names:
            raise ValueError(f"{prev_checkpoint}: classes {loaded.class_names} differ from the data's {class_names}")
        needs = scoring_needs(a)

        def score(what: list, name: str, embeddings: bool, mc_passes: int) -> Path:
            return score_pool(loaded.model, PoolDataset(what), class_names=class_names, config=config,
                              out_path=out_dir / "scores" / name, model_version=loaded.model_version, dist=dist,
                              progress=progress, embeddings=embeddings, mc_passes=mc_passes)

        scores_path = score(items, f"cycle{cycle_index}.jsonl", bool(needs["embeddings"]), int(needs["mc_passes"]))
        labeled_records = []
        if needs["score_labeled"] and labeled_ids:
            labeled_records = read_jsonl(score(_pool_items(dataset, labeled_ids), f"cycle{cycle_index}.labeled.jsonl",
                                               True, 0))
        del loaded
        records = read_jsonl(scores_path)
        if a.cluster_source == "pretrained":
            paths = {i: path for i, path, _ in items + _pool_items(dataset, labeled_ids)}
            add_pretrained_embeddings([*records, *labeled_records], paths, config.model.weights_backbone)
        queue = queue_order(records, labeled_records, a, seed=seed, series=series)
        selected = queue.order[: a.budget]

    chosen = set(selected)
    new_labeled = labeled_ids + list(selected)
    remaining = [i for i in pool_ids if i not in chosen]
    trained = train_with_pseudo_labels(
        config, dataset.subset(new_labeled), records, {i: path for i, path, _ in items},
        prev_checkpoint if (a.finetune and prev_checkpoint is not None) else None,
        out_path=out_dir / f"cycle{cycle_index}.pt", class_names=class_names, exclude=chosen, dist=dist,
        progress=progress, resume=resume,
    )
    if du.is_main_process():
        log.info("cycle %d: %d selected (%s), %d labeled, %d in pool, %d pseudo-labeled images", cycle_index,
                 len(selected), a.first_batch if prev_checkpoint is None else a.strategy, len(new_labeled),
                 len(remaining), trained.pseudo_images)
    return CycleResult(
        cycle_index=cycle_index,
        selected_ids=list(selected),
        labeled_ids=new_labeled,
        pool_ids=remaining,
        checkpoint=trained.checkpoint,
        model_version=str(load_checkpoint(trained.checkpoint)["model_version"]),
        scores_path=scores_path,
        num_pseudo_images=trained.pseudo_images,
        num_pseudo_instances=trained.pseudo_instances,
    )
