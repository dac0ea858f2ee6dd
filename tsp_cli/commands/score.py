"""``tsp-sync score``: score the unlabeled pool with the newest model, push one prediction per task.

Each prediction is built by ``tsp_labelstudio.regions.prediction_for_task`` (regions with ``s`` as
score and ``c``, ``b``, ``m`` in ``meta.text``; its ``model_version`` the checkpoint's), so it
equals what the backend serves for the same task, plus a ``cluster`` (``active.cluster_source``):
Label Studio then serves each annotator the lowest score of the cluster they labeled least in;
labeled tasks get a prediction too, for their cluster (:func:`tsp_cli.priority.queue_predictions`).
The prediction's ``score``, which Label
Studio's Uncertainty sampling serves lowest first, follows ``active.strategy``
(:mod:`tsp_cli.priority`): ``S_i`` for ``tsp``; for any other strategy its rank / N, under
``model_version = "<version>+<strategy>"``. ``S_i`` stays in ``scores/<version>.s<n>.jsonl``.
``--gpus N`` (N > 1) scores in N torchrun processes (:mod:`tsp_cli.launch`).

Streaming: records are read from the score file one at a time, each prediction is built only
when its batch is sent, and the project's existing predictions are read a page of tasks at a
time (:func:`tsp_cli.client.iter_tasks`), so memory holds one batch and a few numbers per task,
whatever the pool size.

Replacing, safely: new predictions are pushed first (``push_batch`` per request, through the
project's import-predictions endpoint), and only then are this project's older TSP predictions
deleted (``model_version`` starting with ``tsp-``, any version but the new one: one request per
version through ``DELETE /api/projects/{id}/model-versions/``, else one per prediction)
together with duplicate current ones and current ones whose score is no longer the task's (a
rank-based strategy on a new snapshot). An interruption at any point leaves each task with at
least the predictions it had; running the command again skips tasks that already hold a current
prediction with the same score and finishes the clean-up, so no task ends with zero or two.
"""

from __future__ import annotations

import dataclasses
import heapq
import logging
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import click

from tsp_cli.client import LSProject, SyncError, call, iter_tasks, model_versions, request_json
from tsp_cli.context import CliContext, gpus_option, project_option
from tsp_cli.errors import handle_errors
from tsp_cli.settings import ConfigError, ProjectSettings
from tsp_cli.workdir import Workdir
from tsp_model.core.progress import progress as tsp_progress

log = logging.getLogger(__name__)

__all__ = ["TSP_PREFIX", "CurrentPredictions", "delete_model_version", "iter_task_predictions",
           "push_predictions", "score", "set_clusters"]

TSP_PREFIX = "tsp-"  # make_model_version's prefix: what marks a prediction as ours
SCORE_TOLERANCE = 1e-7  # Label Studio stores scores as floats; S_i and rank / N differ by far more
# Deleting a model version is one request whose server time grows with its predictions (Label
# Studio deletes them one by one, ~10 ms each on SQLite here): allow 60 s + 50 ms per prediction.
DELETE_TIMEOUT_BASE = 60.0
DELETE_TIMEOUT_PER_PREDICTION = 0.05


def iter_task_predictions(client: Any, project_id: int) -> Iterator[tuple[int, list[dict[str, Any]]]]:
    """``(task id, [{"id", "model_version", "score", "cluster"}])`` for every task, a page at a
    time (region results are dropped as soon as each page is read)."""
    for task in iter_tasks(client, project_id, include="id,predictions"):
        preds = [{"id": int(p["id"]), "model_version": str(p.get("model_version") or ""),
                  "score": None if p.get("score") is None else float(p["score"]),
                  "cluster": None if p.get("cluster") is None else int(p["cluster"])}
                 for p in task.get("predictions") or []]
        yield int(task["id"]), preds


def _same_score(a: float | None, b: float) -> bool:
    return a is not None and abs(a - float(b)) <= SCORE_TOLERANCE


@dataclasses.dataclass
class CurrentPredictions:
    """The predictions of one ``model_version`` already in the project, ``{task: [(id, score)]}``
    (a few numbers per task; read only when the version has predictions at all), and what the
    push decided about them: :meth:`claim` per task, :meth:`surplus` at the end."""

    model_version: str
    by_task: dict[int, list[tuple[int, float | None]]]
    keep: dict[int, int | None] = dataclasses.field(default_factory=dict)  # task -> id kept, None: new one

    @classmethod
    def read(cls, client: Any, project_id: int, model_version: str) -> CurrentPredictions:
        by_task: dict[int, list[tuple[int, float | None]]] = {}
        if model_versions(client, project_id).get(model_version):
            for tid, preds in iter_task_predictions(client, project_id):
                mine = [(p["id"], p["score"]) for p in preds if p["model_version"] == model_version]
                if mine:
                    by_task[tid] = mine
        return cls(model_version=model_version, by_task=by_task)

    def holds(self, task: int, score: float) -> bool:
        """``task`` already holds a prediction of this version with ``score``."""
        return any(_same_score(s, score) for _, s in self.by_task.get(task, ()))

    def claim(self, task: int, score: float) -> bool:
        """True when ``task`` needs a new prediction with ``score``; False when it holds one (the
        newest such is kept). The last claim of a task decides what :meth:`surplus` removes."""
        matching = [pid for pid, s in self.by_task.get(task, ()) if _same_score(s, score)]
        self.keep[task] = max(matching) if matching else None
        return self.keep[task] is None

    def surplus(self) -> list[int]:
        """Ids to delete once the push is complete: on a claimed task every prediction but the
        kept one (all of them when a new one was pushed); on a task not claimed (labeled since
        the pull) all but the newest."""
        out = []
        for task, preds in self.by_task.items():
            keep = self.keep[task] if task in self.keep else max(pid for pid, _ in preds)
            out += [pid for pid, _ in preds if pid != keep]
        return sorted(out)

    def expected(self) -> int:
        """Predictions of this version once the push and clean-up are complete: one per task."""
        return len(self.keep.keys() | self.by_task.keys())


def push_predictions(
    client: Any,
    project: LSProject,
    predictions: Iterable[tuple[int, dict[str, Any]]] | Mapping[int, dict[str, Any]],
    model_version: str,
    *,
    current: CurrentPredictions | None = None,
    clusters: Mapping[int, int] | None = None,
    batch_size: int = 100,
    total: int | None = None,
    progress: bool = True,
) -> dict[str, int]:
    """Make ``predictions`` (``(task id, prediction dict)`` pairs, e.g. a generator that builds each
    one when it is needed, or a ``{task id: prediction}`` mapping) the only TSP predictions of
    their tasks, ``batch_size`` per import request.

    ``current``: this version's predictions already in the project (read here when None); a task
    holding one with the same score is skipped (a caller may skip it before building its
    prediction, through ``current.claim``). ``clusters``: task id -> cluster, set on each task's
    current prediction (:func:`set_clusters`) before the project's queue moves to this version.
    Returns ``{"pushed", "already", "deleted"}``.
    """
    if isinstance(predictions, Mapping):
        total = len(predictions) if total is None else total
        predictions = sorted(predictions.items())
    if current is None:
        current = CurrentPredictions.read(client, project.id, model_version)
    pushed = already = 0
    batch: list[dict[str, Any]] = []
    bar = tsp_progress(total=total, desc="push predictions", unit="task", enabled=progress)

    def send() -> None:
        answer = call(client, f"importing predictions into project {project.id}", client.projects.import_predictions,
                      id=project.id, request=batch)
        created = getattr(answer, "created", None)
        if created is not None and int(created) != len(batch):
            raise SyncError(f"Label Studio created {created} of {len(batch)} predictions in project {project.id}; "
                            "run tsp-sync score again (it pushes only what is missing)")
        bar.update(len(batch))
        batch.clear()

    try:
        for tid, pred in predictions:
            if not current.claim(tid, pred["score"]):
                already += 1
                bar.update(1)
                continue
            batch.append({"task": tid, "result": pred["result"], "score": pred["score"],
                          "model_version": pred["model_version"]})
            pushed += 1
            if len(batch) >= batch_size:
                send()
        if batch:
            send()
    finally:
        bar.close()

    if clusters:
        set_clusters(client, project.id, clusters, model_version, progress=progress)

    if project.model_version.startswith(TSP_PREFIX) and project.model_version != model_version:
        # the queue follows the project's model_version: move it to the new predictions before the
        # old ones go, so Label Studio never falls back to random order in between
        call(client, f"updating project {project.id}", client.projects.update, id=project.id,
             model_version=model_version, idempotent=True)
        project.model_version = model_version

    # only now: the stale TSP versions, then replaced and duplicate current predictions
    deleted = 0
    for version, count in sorted(model_versions(client, project.id).items()):
        if not version.startswith(TSP_PREFIX) or version == model_version or not count:
            continue
        if delete_model_version(client, project.id, version, count=count):
            deleted += count
        else:  # a server without the endpoint: one request per prediction
            ids = [p["id"] for _, preds in iter_task_predictions(client, project.id) for p in preds
                   if p["model_version"] == version]
            deleted += _delete_predictions(client, ids, progress)
    deleted += _delete_predictions(client, current.surplus(), progress)

    have = model_versions(client, project.id).get(model_version, 0)
    if have != current.expected():
        # another writer, or an import whose answer was lost: keep each task's newest prediction
        log.warning("project %s holds %d predictions of %s for %d tasks; removing duplicates", project.id, have,
                    model_version, current.expected())
        again = CurrentPredictions.read(client, project.id, model_version)
        deleted += _delete_predictions(client, again.surplus(), progress)
    return {"pushed": pushed, "already": already, "deleted": deleted}


def set_clusters(client: Any, project_id: int, clusters: Mapping[int, int], model_version: str, *,
                 progress: bool = True) -> int:
    """Give each task's newest prediction of ``model_version`` its cluster from ``clusters``: one
    ``PATCH /api/predictions/{id}/`` per prediction whose cluster differs (Label Studio's
    import-predictions endpoint stores result, score and model_version only). Idempotent: a
    resumed push patches what is left. Returns how many were changed."""
    todo: list[tuple[int, int]] = []
    for tid, preds in iter_task_predictions(client, project_id):
        if tid not in clusters:
            continue
        mine = [p for p in preds if p["model_version"] == model_version]
        if mine:
            newest = max(mine, key=lambda p: p["id"])
            if newest["cluster"] != clusters[tid]:
                todo.append((newest["id"], int(clusters[tid])))
    for pid, cluster in tsp_progress(todo, desc="set clusters", unit="pred", enabled=progress and bool(todo)):
        request_json(client, "PATCH", f"api/predictions/{pid}/", f"setting the cluster of prediction {pid}",
                     json_body={"cluster": cluster}, idempotent=True)
    return len(todo)


def _delete_predictions(client: Any, ids: list[int], progress: bool) -> int:
    """Delete predictions by id, one request each (a retried delete of one already gone is done)."""
    for pid in tsp_progress(ids, desc="delete old predictions", unit="pred", enabled=progress and bool(ids)):
        request_json(client, "DELETE", f"api/predictions/{pid}/", f"deleting prediction {pid}", none_on=(404,))
    return len(ids)


def delete_model_version(client: Any, project_id: int, model_version: str, *, count: int = 0) -> bool:
    """Delete every prediction of one ``model_version`` in the project with one request
    (``DELETE /api/projects/{id}/model-versions/``; ``count``, its number of predictions, sizes
    the timeout). False when the server lacks that endpoint."""
    if not model_version:  # without a version the endpoint deletes ALL predictions of the project
        raise ValueError("model_version must not be empty")
    answer = request_json(
        client, "DELETE", f"api/projects/{project_id}/model-versions/", f"deleting predictions of {model_version}",
        json_body={"model_version": model_version}, none_on=(404, 405),
        timeout=DELETE_TIMEOUT_BASE + DELETE_TIMEOUT_PER_PREDICTION * count,
    )
    return answer is not None


def score(
    client: Any,
    project: LSProject,
    settings: ProjectSettings,
    workdir: Workdir,
    *,
    gpus: int = 1,
    progress: bool = True,
) -> dict[str, Any]:
    """Score the latest snapshot's pool with the newest checkpoint (``gpus`` torchrun processes
    when > 1) and push the predictions, scored for ``active.strategy`` (see
    :mod:`tsp_cli.priority`)."""
    from tsp_cli.priority import pool_queue, queue_predictions, resolve_strategy
    from tsp_labelstudio.regions import LabelConfigError, parse_label_config
    from tsp_model.engine.checkpoint import latest_checkpoint, load_checkpoint

    t0 = time.perf_counter()
    cfg = settings.train_config()
    try:
        resolve_strategy(cfg)  # a bad name fails before any work
    except ConfigError as exc:
        raise ConfigError(f"project {settings.name!r}: {exc}") from None
    snap = workdir.latest_snapshot()
    checkpoint = latest_checkpoint(settings.model_dir)
    if checkpoint is None:
        raise SyncError(f"{settings.model_dir}: no model yet; run tsp-sync retrain --project {settings.name}")
    class_names = list(load_checkpoint(checkpoint)["class_names"])
    try:
        target = parse_label_config(project.label_config, class_names=class_names)
    except LabelConfigError as exc:
        raise SyncError(f"project {project.id} ({project.title!r}): {exc}") from None
    try:
        queue = pool_queue(workdir, snap, checkpoint, cfg, gpus=gpus, progress=progress)
    except ConfigError as exc:
        raise ConfigError(f"project {settings.name!r}: {exc}") from None
    version = queue.queue_version
    current = CurrentPredictions.read(client, project.id, version)
    skipped = 0
    top = heapq.nsmallest(10, ((sc, tid) for tid, sc in queue.priority.items()))
    wanted = {tid for _, tid in top}
    S: dict[int, float] = {}  # the top tasks' S_i, picked up as the push streams the score file

    def needed(rec: Any) -> bool:  # decided before the record's regions are built
        nonlocal skipped
        tid = int(rec.image_id)
        if tid in wanted:
            S[tid] = float(rec.S)
        if current.claim(tid, queue.priority[tid]):
            return True
        skipped += 1
        return False

    todo = dataclasses.replace(queue, records=(r for r in queue.records if needed(r)))
    to_push = sum(not current.holds(t, sc) for t, sc in queue.priority.items())
    if queue.clusters:  # labeled tasks follow the pool, for their cluster
        to_push += sum(not current.holds(int(r.image_id), r.S) for r in queue.labeled)
    pushed = push_predictions(
        client, project, queue_predictions(todo, target, show_threshold=cfg.active.show_threshold), version,
        current=current, clusters=queue.clusters, batch_size=settings.push_batch, total=to_push, progress=progress,
    )
    pushed["already"] += skipped
    summary = {
        "snapshot": snap.number,
        "model_version": version,  # what Label Studio holds: "<checkpoint version>[+<strategy>]"
        "checkpoint_version": queue.model_version,
        "strategy": queue.strategy,
        "scores": str(queue.scores_path),
        "pool": len(snap.pool()),
        "scored": len(queue.priority),
        **pushed,
        "clusters": len(set(queue.clusters.values())),
        "cluster_source": cfg.active.cluster_source if queue.clusters else "none",
        "top": [{"task": tid, "score": sc, "S": S[tid], "cluster": queue.clusters.get(tid)} for sc, tid in top],
        "seconds": round(time.perf_counter() - t0, 1),
    }
    workdir.update_state("last_score", summary)
    return summary


@click.command("score", help="Score the unlabeled pool with the newest model and push one prediction per task.")
@project_option
@gpus_option
@click.pass_obj
@handle_errors
def score_command(obj: CliContext, project: str, gpus: int) -> None:
    from tsp_cli.workdir import Workdir

    settings = obj.project_settings(project)
    client, ls_project, _ = obj.connect(settings)
    s = score(client, ls_project, settings, Workdir(settings.workdir), gpus=gpus, progress=obj.progress)
    click.echo(f"{s['model_version']}: {s['scored']} tasks scored, {s['pushed']} predictions pushed "
               f"({s['already']} already current), {s['deleted']} old ones deleted")
