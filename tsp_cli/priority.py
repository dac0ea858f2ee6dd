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
    "queue_version",
    "resolve_strategy",
    "snapshot_series",
    "scores_by_task",
    "split_queue_version",
]

DEFAULT_STRATEGY = "tsp"
_SEP = "+"  # "<checkpoint version>+<strategy>"; make_model_version never writes a "+"

# scoring_needs key -> the extras key each record must then hold
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
    order: list[int] = field(default_factory=list)  # task ids as Label Studio serves one annotator
    labeled: list[ImageScore] = field(default_factory=list)  # the snapshot's labeled tasks, scored
    clusters: dict[int, int] = field(default_factory=dict)  # task id -> cluster (pool and labeled)


def snapshot_series(snap: Any) -> dict[int, str]:
    """Task id -> DICOM series (``series_id`` that ``tsp-sync pull`` copies from the task data's
    SeriesInstanceUID) for every task of the snapshot that has one."""
    out = {int(t["task_id"]): str(t["series_id"]) for t in snap.pool() if t.get("series_id")}
    doc = json.loads(snap.annotations.read_text())
    out.update({int(im["id"]): str(im["series_id"]) for im in doc["images"] if im.get("series_id")})
    return out


def pool_queue(workdir: Any, snap: Any, checkpoint: Path, cfg: TSPConfig, *, gpus: int = 1,
               progress: bool = True) -> PoolQueue:
    """Score the snapshot's pool with ``checkpoint`` (with what the queue needs,
    :func:`tsp_model.al.cycle.scoring_needs`; ``gpus`` torchrun processes when > 1) and queue it
    as the replay does (:func:`tsp_model.al.cycle.queue_order`: clusters, queue scores, the
    order served). For ``tsp`` the queue holds each record's ``S_i`` and extras only; the other
    strategies rank whole records.

    Raises:
        ConfigError: unknown strategy, or the checkpoint lacks what the strategy needs.
    """
    from tsp_cli.client import SyncError
    from tsp_cli.commands.retrain import score_snapshot_pool
    from tsp_model.al.cycle import queue_order, scoring_needs
    from tsp_model.al.strategies import get_strategy
    from tsp_model.core.records import iter_jsonl, rescored, write_jsonl
    from tsp_model.engine.checkpoint import load_checkpoint

    strategy = resolve_strategy(cfg)
    check_checkpoint_supports(strategy, load_checkpoint(checkpoint), checkpoint)
    needs = scoring_needs(cfg.active)
    path, version = score_snapshot_pool(workdir, snap, checkpoint, cfg, gpus=gpus, progress=progress,
                                        embeddings=bool(needs["embeddings"]), mc_passes=int(needs["mc_passes"]))
    records = ScoreRecords(path)
    if _missing_extras(records, needs, get_strategy(strategy).needs):
        # the reused score file was written for another strategy: score again with its data
        score_pool_file(checkpoint, cfg, snap.unlabeled, snap.image_dir, path, gpus=gpus, progress=progress,
                        embeddings=bool(needs["embeddings"]), mc_passes=int(needs["mc_passes"]))
    # a reused score file keeps every detection: S_i follows the current thresholds without new
    # inference, and the file is rewritten (streamed) so that it always holds the S_i pushed
    if any(rescored(r, cfg.active) is not r for r in records):
        write_jsonl(path, (rescored(r, cfg.active) for r in iter_jsonl(path)))

    labeled: list[ImageScore] = []
    if needs["score_labeled"]:
        labeled = [rescored(r, cfg.active)
                   for r in labeled_records(workdir, snap, checkpoint, cfg, version, gpus=gpus, progress=progress)]
    pool = [_queue_entry(r) for r in records] if strategy == DEFAULT_STRATEGY else list(records)
    if cfg.active.cluster_source == "pretrained":
        from tsp_model.al.cycle import add_pretrained_embeddings

        try:
            add_pretrained_embeddings([*pool, *labeled], {r.image_id: snap.image_dir / r.file_name
                                                           for r in [*pool, *labeled]}, cfg.model.weights_backbone)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    try:
        # snapshot n's model queues what the replay's cycle n + 1 queues (M_n's pool scores)
        queue = queue_order(pool, labeled, cfg.active, seed=cfg.train.seed + snap.number + 1,
                            series=snapshot_series(snap))
    except ValueError as exc:  # a score record without the strategy's or the clusters' data (names it)
        raise SyncError(f"active.strategy = {strategy!r}: {exc}; run tsp-sync score again") from None
    return PoolQueue(strategy=strategy, model_version=version, queue_version=queue_version(version, strategy),
                     scores_path=path, records=records, priority={int(k): float(v) for k, v in queue.priority.items()},
                     order=[int(i) for i in queue.order], labeled=labeled,
                     clusters={int(k): int(v) for k, v in queue.clusters.items()})


def _queue_entry(rec: ImageScore) -> ImageScore:
    """What the ``tsp`` queue reads of a record (S_i, extras): a large pool's masks stay on disk."""
    return ImageScore(rec.image_id, rec.file_name, rec.width, rec.height, S=rec.S, extras=dict(rec.extras),
                      model_version=rec.model_version)


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
