"""The queue score ``tsp-sync score`` pushes: ``S_i`` for ``tsp``, a rank for every other strategy.

Label Studio's Uncertainty sampling serves the task whose prediction has the lowest ``score``.
With ``active.strategy = "tsp"`` (the default) that score is ``S_i`` (eq. 3), exactly as before.
Any other registered strategy (``tsp_instance``, ``class_entropy``, ``random``, ``mc_dropout``,
``core_set``, ``learning_loss``) ranks the scored pool and each task gets
:func:`tsp_model.al.strategies.priority_scores`: rank / N in [0, 1), the strategy's first pick 0.
The regions stay what the backend serves (``s`` as region score, ``c``, ``b``, ``m`` in
``meta.text``); ``S_i`` stays in the workdir's score file.

Such predictions carry ``model_version = "<checkpoint version>+<strategy>"`` (:func:`queue_version`),
so switching the strategy replaces them like a new model does, the backend's live predictions
(``score = S_i``, the bare version) never enter the queue, and every place that prints the
model_version (``score``, ``reorder``, ``status``, ``cycle``) also names the strategy.

What a strategy reads beyond the triplet scores comes from the pool scoring
(:func:`tsp_model.al.strategies.scoring_options`): embeddings (``core_set``, which also scores the
snapshot's labeled images into ``scores/labeled/<version>.s<n>.jsonl`` as its initial centers,
a subfolder so that tools reading ``scores/*.jsonl`` see pool scores only),
MC-dropout statistics (``mc_dropout``: a checkpoint trained with ``model.dropout > 0``) or the
predicted loss (``learning_loss``: a checkpoint trained with ``model.learning_loss = true``).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tsp_cli.launch import score_pool_file
from tsp_model.core.config import ConfigError, TSPConfig
from tsp_model.core.records import ImageScore

__all__ = [
    "DEFAULT_STRATEGY",
    "PoolQueue",
    "check_checkpoint_supports",
    "pool_queue",
    "queue_predictions",
    "queue_clusters",
    "queue_version",
    "resolve_strategy",
    "snapshot_series",
    "scores_by_task",
    "split_queue_version",
]

DEFAULT_STRATEGY = "tsp"
_SEP = "+"  # "<checkpoint version>+<strategy>"; make_model_version never writes a "+"

# scoring_options key -> the extras key each record must then hold
_EXTRAS = {"embeddings": "embedding", "mc_passes": "mc_uncertainty"}


def queue_version(model_version: str, strategy: str) -> str:
    """The ``model_version`` of the pushed predictions: the checkpoint's for ``tsp``,
    ``"<version>+<strategy>"`` for any other strategy."""
    return model_version if strategy == DEFAULT_STRATEGY else f"{model_version}{_SEP}{strategy}"


def split_queue_version(version: str) -> tuple[str, str]:
    """Inverse of :func:`queue_version`: ``(checkpoint version, strategy)``."""
    base, sep, strategy = version.partition(_SEP)
    return (base, strategy) if sep and strategy else (version, DEFAULT_STRATEGY)


def resolve_strategy(cfg: TSPConfig) -> str:
    """``active.strategy``, checked against the registry (ConfigError naming the key)."""
    from tsp_model.al.strategies import available_strategies

    name = cfg.active.strategy
    if name not in available_strategies():
        raise ConfigError(
            f"active.strategy: unknown selection strategy {name!r}; known: {', '.join(available_strategies())}"
        )
    return name


def check_checkpoint_supports(strategy: str, checkpoint_state: dict[str, Any], checkpoint: Path) -> None:
    """ConfigError (one line, naming the config key) when ``checkpoint`` lacks the model parts
    ``strategy`` needs: dropout heads for ``mc_dropout``, the loss-prediction module for
    ``learning_loss``."""
    from tsp_model.al.strategies import get_strategy

    needs = get_strategy(strategy).needs
    model = dict((checkpoint_state.get("config") or {}).get("model") or {})
    if "mc_dropout" in needs and not float(model.get("dropout") or 0.0) > 0:
        raise ConfigError(
            f"model.dropout: active.strategy = {strategy!r} needs a model trained with dropout in its heads, but "
            f"{checkpoint.name} has model.dropout = {model.get('dropout', 0.0)}; set model.dropout > 0 (e.g. 0.25) "
            "and run tsp-sync retrain, or pick another strategy"
        )
    if "predicted_loss" in needs and not model.get("learning_loss"):
        raise ConfigError(
            f"model.learning_loss: active.strategy = {strategy!r} needs the loss-prediction module, but "
            f"{checkpoint.name} was trained without it; set model.learning_loss = true and run tsp-sync retrain, "
            "or pick another strategy"
        )


def _missing_extras(records: Iterable[ImageScore], opts: dict[str, object], needs: frozenset[str]) -> bool:
    keys = [extra for opt, extra in _EXTRAS.items() if opts.get(opt)]
    if "predicted_loss" in needs:
        keys.append("predicted_loss")
    return bool(keys) and any(key not in r.extras for r in records for key in keys)


class ScoreRecords:
    """The records of a score file, read from disk on every iteration (constant memory)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def __iter__(self) -> Iterator[ImageScore]:
        from tsp_model.core.records import iter_jsonl

        return iter_jsonl(self.path)


def labeled_records(workdir: Any, snap: Any, checkpoint: Path, cfg: TSPConfig, version: str, *,
                    gpus: int = 1, progress: bool = True) -> list[ImageScore]:
    """The snapshot's labeled images scored by ``checkpoint`` with embeddings only (core_set's
    initial centers), in ``scores/labeled/<version>.s<n>.jsonl`` (reused when present)."""
    from tsp_model.core.records import read_jsonl

    out = workdir.scores / "labeled" / f"{version}.s{snap.number}.jsonl"
    if out.is_file():
        records = read_jsonl(out)
        if all("embedding" in r.extras for r in records):
            return records
    if not json.loads(snap.annotations.read_text())["images"]:
        return []
    score_pool_file(checkpoint, cfg, snap.annotations, snap.image_dir, out, gpus=gpus, embeddings=True, mc_passes=0,
                    progress=progress)
    return read_jsonl(out)


@dataclass
class PoolQueue:
    """One snapshot's pool scored by one checkpoint, and the score each task is queued by."""

    strategy: str
    model_version: str  # the checkpoint's
    queue_version: str  # the pushed predictions' (queue_version())
    scores_path: Path  # pool score file: S_i, c, b, m, s per task
    records: Iterable[ImageScore]  # the score file's records, read one at a time (ScoreRecords)
    priority: dict[int, float]  # task id -> pushed score (S_i for tsp; rank / N otherwise)
    labeled: list[ImageScore] = field(default_factory=list)  # the snapshot's labeled tasks, scored
    clusters: dict[int, int] = field(default_factory=dict)  # task id -> cluster (pool and labeled)


def snapshot_series(snap: Any) -> dict[int, str]:
    """Task id -> DICOM series (``series_id`` that ``tsp-sync pull`` copies from the task data's
    SeriesInstanceUID) for every task of the snapshot that has one."""
    out = {int(t["task_id"]): str(t["series_id"]) for t in snap.pool() if t.get("series_id")}
    doc = json.loads(snap.annotations.read_text())
    out.update({int(im["id"]): str(im["series_id"]) for im in doc["images"] if im.get("series_id")})
    return out


def queue_clusters(records: Iterable[ImageScore], labeled: Iterable[ImageScore], cfg: TSPConfig,
                   series: dict[int, str] | None = None) -> dict[int, int]:
    """Task id -> cluster for Label Studio's per-annotator order, over pool and labeled tasks.

    ``active.cluster_source``: ``"series"`` numbers the DICOM series (when every task has one;
    otherwise it falls back to embeddings with a warning), ``"embedding"`` runs k-means on the
    FPN embeddings with k = :func:`tsp_model.al.diversity.cluster_count` (b = ``active.budget``),
    ``"none"`` gives no clusters. The records are read once, keeping ids and embeddings only.
    """
    import logging

    import numpy as np

    from tsp_model.al.diversity import cluster_count, embedding_clusters
    from tsp_model.engine.embeddings import decode_embedding

    source = cfg.active.cluster_source
    if source == "none":
        return {}
    ids: list[int] = []
    vectors: list[np.ndarray] = []
    for rec in itertools.chain(records, labeled):
        ids.append(int(rec.image_id))
        if "embedding" in rec.extras:
            vectors.append(decode_embedding(rec.extras["embedding"], name=f"task {rec.image_id}"))
    if not ids:
        return {}
    if source == "series":
        series = series or {}
        if all(i in series for i in ids):
            names = sorted({series[i] for i in ids})
            index = {name: k for k, name in enumerate(names)}
            return {i: index[series[i]] for i in ids}
        missing = sum(i not in series for i in ids)
        logging.getLogger(__name__).warning(
            "active.cluster_source = 'series': %d of %d tasks have no DICOM series (SeriesInstanceUID); "
            "clustering embeddings instead", missing, len(ids))
    if len(vectors) != len(ids):
        raise ConfigError(f"active.cluster_source = {source!r}: {len(ids) - len(vectors)} score records have no "
                          "embedding; run tsp-sync score again")
    labels = embedding_clusters(np.stack(vectors), cluster_count(len(ids), cfg.active.budget), seed=cfg.train.seed)
    return {i: int(c) for i, c in zip(ids, labels)}


def pool_queue(workdir: Any, snap: Any, checkpoint: Path, cfg: TSPConfig, *, gpus: int = 1,
               progress: bool = True) -> PoolQueue:
    """Score the snapshot's pool with ``checkpoint`` (with what ``active.strategy`` and the
    clusters need; ``gpus`` torchrun processes when > 1) and compute every task's queue score and
    cluster. ``tsp`` reads the score file one record at a time; the other strategies rank the
    whole pool, so they hold its records while ranking.

    Raises:
        ConfigError: unknown strategy, or the checkpoint lacks what the strategy needs.
    """
    from tsp_cli.commands.retrain import score_snapshot_pool
    from tsp_model.al.strategies import get_strategy, priority_scores, scoring_options
    from tsp_model.core.records import iter_jsonl, rescored, write_jsonl
    from tsp_model.engine.checkpoint import load_checkpoint

    strategy = resolve_strategy(cfg)
    check_checkpoint_supports(strategy, load_checkpoint(checkpoint), checkpoint)
    strat = get_strategy(strategy, cfg.active)
    opts = dict(scoring_options(strat, cfg.active.mc_passes))
    clustered = cfg.active.cluster_source != "none"
    if clustered:
        opts["embeddings"] = True  # the embedding clusters (and the fallback of "series")
    path, version = score_snapshot_pool(workdir, snap, checkpoint, cfg, gpus=gpus, progress=progress,
                                        embeddings=bool(opts["embeddings"]), mc_passes=int(opts["mc_passes"]))
    records = ScoreRecords(path)
    if _missing_extras(records, opts, strat.needs):
        # the reused score file was written for another strategy: score again with its data
        score_pool_file(checkpoint, cfg, snap.unlabeled, snap.image_dir, path, gpus=gpus, progress=progress,
                        embeddings=bool(opts["embeddings"]), mc_passes=int(opts["mc_passes"]))
    # a reused score file keeps every detection: S_i follows the current thresholds without new
    # inference, and the file is rewritten (streamed) so that it always holds the S_i pushed
    if any(rescored(r, cfg.active) is not r for r in records):
        write_jsonl(path, (rescored(r, cfg.active) for r in iter_jsonl(path)))

    labeled: list[ImageScore] = []
    if opts["score_labeled"] or clustered:
        labeled = [rescored(r, cfg.active)
                   for r in labeled_records(workdir, snap, checkpoint, cfg, version, gpus=gpus, progress=progress)]
    clusters = queue_clusters(records, labeled, cfg, snapshot_series(snap)) if clustered else {}
    for rec in labeled:
        if int(rec.image_id) in clusters:
            rec.extras["cluster"] = clusters[int(rec.image_id)]

    if strategy == DEFAULT_STRATEGY:
        priority = {int(r.image_id): float(r.S) for r in records}
    else:
        pool = list(records)
        for rec in pool:  # the strategy (tsp_diverse) uses the same clusters as the queue
            if int(rec.image_id) in clusters:
                rec.extras["cluster"] = clusters[int(rec.image_id)]
        # core_set ranks greedily in O(N^2 D): order the first active.budget picks, the rest share 1.0
        budget = cfg.active.budget if strategy == "core_set" else None
        try:
            ranks = priority_scores(pool, strat, seed=cfg.train.seed + snap.number, labeled=labeled, budget=budget)
        except ValueError as exc:  # a score record without the strategy's data (names the image)
            from tsp_cli.client import SyncError

            raise SyncError(f"active.strategy = {strategy!r}: {exc}") from None
        priority = {int(k): float(v) for k, v in ranks.items()}
    return PoolQueue(strategy=strategy, model_version=version, queue_version=queue_version(version, strategy),
                     scores_path=path, records=records, priority=priority, labeled=labeled, clusters=clusters)


def queue_predictions(queue: PoolQueue, target: Any, show_threshold: float) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(task id, prediction)`` per record of ``queue.records``, each built when it is asked for:
    the backend's regions (``tsp_labelstudio.regions.prediction_for_task``: the shown set,
    ``c >= show_threshold``) under ``queue.queue_version``, with the task's cluster. The
    ``score`` is the record's ``S_i`` exactly for ``tsp``, the task's priority for any other
    strategy.

    With clusters, the labeled tasks follow (their own S_i and cluster): Label Studio counts an
    annotator's finished tasks per cluster from the predictions those tasks hold, so each
    re-score must give them a prediction with their cluster under the new clustering (never
    served: they are done).
    """
    from tsp_labelstudio.regions import prediction_for_task

    for rec in queue.records:
        tid = int(rec.image_id)
        score = None if queue.strategy == DEFAULT_STRATEGY else queue.priority[tid]
        yield tid, prediction_for_task(rec, target, model_version=queue.queue_version, show_threshold=show_threshold,
                                       score=score, cluster=queue.clusters.get(tid))
    if queue.clusters:
        for rec in queue.labeled:
            tid = int(rec.image_id)
            yield tid, prediction_for_task(rec, target, model_version=queue.queue_version,
                                           show_threshold=show_threshold, cluster=queue.clusters.get(tid))


def scores_by_task(path: str | Path | None) -> dict[int, float]:
    """``{task id: S_i}`` from a pool score file; ``{}`` when it is gone."""
    from tsp_model.core.records import iter_jsonl

    if not path or not Path(path).is_file():
        return {}
    return {int(r.image_id): float(r.S) for r in iter_jsonl(path)}
