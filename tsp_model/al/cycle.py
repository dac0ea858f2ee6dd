"""One cycle of Algorithm 1 (semi-supervised active learning via triplet scoring predictions).

Cycle 1 (no previous model): ``b`` pool images are labeled (random, or typical and diverse with
``active.first_batch = "typiclust"``) and a model is trained on them.
Later cycles: the previous model scores every pool image (eq. 2, eq. 3), the strategy picks the
``b`` images to label, the confident instances of the rest (``c > sigma_c`` and ``b > sigma_b``
and ``m > sigma_m``) become pseudo labels, and a model is trained on labeled + pseudo (eq. 5).

Labels are revealed only through ``dataset.subset(labeled ids)``: the pool is read as images
alone. With an oracle data set (the benchmark) this replays the paper; with Label Studio the
CLI does the same steps with people as the oracle.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tsp_model.core.config import TSPConfig
from tsp_model.engine import distributed as du
from tsp_model.engine.checkpoint import load_checkpoint, load_model
from tsp_model.engine.predict import PoolDataset, score_pool
from tsp_model.engine.train import train
from tsp_model.core.records import read_jsonl
from tsp_model.al.strategies import get_strategy, scoring_options

log = logging.getLogger(__name__)


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


def first_batch(active: Any, dataset: Any, pool_ids: Sequence[Any], seed: int) -> list[Any]:
    """Algorithm 1, line 4: the b images of cycle 1, chosen without a model.

    ``active.first_batch = "random"``: b pool images uniformly at random (the paper);
    ``"typiclust"``: typical, diverse images of a label-free thumbnail embedding
    (:func:`tsp_model.al.diversity.typiclust_first_batch`).
    """
    budget = min(active.budget, len(pool_ids))
    if active.first_batch == "typiclust":
        from tsp_model.al.diversity import thumbnail_embeddings, typiclust_first_batch

        paths = [dataset.image_path(dataset.index_of(i)) for i in pool_ids]
        picks = typiclust_first_batch(thumbnail_embeddings(paths, seed=seed), budget, seed=seed)
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
    finetune: bool = False,
    dist: du.DistInfo | None = None,
    progress: bool = True,
    resume: bool = False,
    clusters: Mapping[Any, int] | None = None,
) -> CycleResult:
    """Run cycle ``cycle_index`` (1-based) of Algorithm 1 and train M_k.

    Args:
        config: ``active`` sets b, the strategy and the pseudo-label thresholds.
        labeled_ids: D_al before this cycle (image ids of ``dataset``).
        pool_ids: D_u before this cycle.
        dataset: the label provider, e.g. a :class:`~tsp_model.data.coco.CocoInstanceDataset`
            with ``train=True`` holding every image (the oracle): it must offer ``subset(ids)``,
            ``index_of(id)``, ``image_path(idx)``, ``image_info(idx)`` and ``class_names``.
        prev_checkpoint: M_{k-1}; None selects at random (Algorithm 1, line 4).
        out_dir: receives ``cycle<k>.pt`` and ``scores/cycle<k>.jsonl``.
        finetune: start M_k from M_{k-1}'s weights instead of from scratch (the paper trains
            each cycle's model with the full schedule; default from scratch).
        dist: torchrun placement (default: :func:`~tsp_model.engine.distributed.init_distributed`).
        resume: continue an interrupted training of ``cycle<k>.pt`` (its ``.partial`` file).
        clusters: image id -> cluster, given to the strategy as ``extras["cluster"]`` (e.g. the
            series of each slice for ``tsp_diverse``); None: the strategy's own clustering.
    """
    a = config.active
    dist = dist or du.init_distributed(config.train.device)
    out_dir = Path(out_dir)
    labeled_ids, pool_ids = list(labeled_ids), list(pool_ids)
    overlap = set(labeled_ids) & set(pool_ids)
    if overlap:
        raise ValueError(f"image ids {sorted(overlap)[:10]} are both labeled and in the pool")
    class_names = list(dataset.class_names)
    strategy = get_strategy(a.strategy, a)  # an unknown name fails before any work
    seed = config.train.seed + cycle_index
    pseudo = None
    scores_path = None

    if prev_checkpoint is None:
        selected = first_batch(a, dataset, pool_ids, seed)
    else:
        loaded = load_model(prev_checkpoint, device=dist.device)
        if loaded.class_names != class_names:
            raise ValueError(f"{prev_checkpoint}: classes {loaded.class_names} differ from the data's {class_names}")
        items = _pool_items(dataset, pool_ids)
        needs = scoring_options(strategy, a.mc_passes)
        scores_path = score_pool(
            loaded.model, PoolDataset(items), class_names=class_names, config=config,
            out_path=out_dir / "scores" / f"cycle{cycle_index}.jsonl",
            model_version=loaded.model_version, dist=dist, progress=progress,
            embeddings=bool(needs["embeddings"]), mc_passes=int(needs["mc_passes"]),
        )
        labeled_records = []
        if needs["score_labeled"] and labeled_ids:
            # core_set: the labeled set's embeddings are the initial centers (no MC passes).
            labeled_path = score_pool(
                loaded.model, PoolDataset(_pool_items(dataset, labeled_ids)), class_names=class_names,
                config=config, out_path=out_dir / "scores" / f"cycle{cycle_index}.labeled.jsonl",
                model_version=loaded.model_version, dist=dist, progress=progress,
                embeddings=True, mc_passes=0,
            )
            labeled_records = read_jsonl(labeled_path)
        del loaded
        records = read_jsonl(scores_path)
        if clusters is not None:
            # the caller's grouping (e.g. the series of each slice) for tsp_diverse
            for rec in [*records, *labeled_records]:
                rec.extras["cluster"] = int(clusters[rec.image_id])
        selected = strategy.select(records, a.budget, seed=seed, labeled=labeled_records)
        if a.pseudo_labels:
            from tsp_model.data.pseudo import PseudoLabelDataset

            chosen = set(selected)
            paths = {image_id: path for image_id, path, _ in items}
            pseudo = PseudoLabelDataset(
                [r for r in records if r.image_id not in chosen], paths, class_names,
                sigma_c=a.sigma_c, sigma_b=a.sigma_b, sigma_m=a.sigma_m,
                train=True, hflip_prob=config.train.hflip_prob,
            )

    chosen = set(selected)
    new_labeled = labeled_ids + list(selected)
    remaining = [i for i in pool_ids if i not in chosen]
    if du.is_main_process():
        log.info(
            "cycle %d: %d selected (%s), %d labeled, %d in pool, %d pseudo-labeled images",
            cycle_index, len(selected), a.first_batch if prev_checkpoint is None else a.strategy,
            len(new_labeled), len(remaining), len(pseudo) if pseudo is not None else 0,
        )
    checkpoint = train(
        config,
        dataset.subset(new_labeled),
        pseudo,
        prev_checkpoint if (finetune and prev_checkpoint is not None) else None,
        out_path=out_dir / f"cycle{cycle_index}.pt",
        class_names=class_names,
        dist=dist,
        progress=progress,
        resume=resume,
    )
    version = str(load_checkpoint(checkpoint)["model_version"])
    return CycleResult(
        cycle_index=cycle_index,
        selected_ids=list(selected),
        labeled_ids=new_labeled,
        pool_ids=remaining,
        checkpoint=checkpoint,
        model_version=version,
        scores_path=scores_path,
        num_pseudo_images=len(pseudo) if pseudo is not None else 0,
        num_pseudo_instances=pseudo.num_instances if pseudo is not None else 0,
    )
