"""``tsp-sync score``: score the unlabeled pool with the newest model, push one prediction per task.

Each prediction is built by ``tsp_backend.regions.prediction_for_task`` (regions with ``s`` as
score and ``c``, ``b``, ``m`` in ``meta.text``; its ``model_version`` the checkpoint's), so it
equals what the backend serves for the same task, plus a ``cluster`` (``active.cluster_source``):
Label Studio then serves each annotator the lowest score of the cluster they labeled least in.
Labeled tasks get a prediction too, for their cluster (see :func:`tsp_cli.priority.queue_predictions`). The prediction's ``score``, which Label
Studio's Uncertainty sampling serves lowest first, follows ``active.strategy``
(:mod:`tsp_cli.priority`): ``S_i`` for ``tsp``; for any other strategy its rank / N, under
``model_version = "<version>+<strategy>"``. ``S_i`` stays in ``scores/<version>.s<n>.jsonl``.

Replacing, safely: new predictions are pushed first (in batches, through the project's
import-predictions endpoint), and only then are this project's older TSP predictions deleted
(``model_version`` starting with ``tsp-``, any version but the new one: one request per version
through ``DELETE /api/projects/{id}/model-versions/``, else one per prediction) together with
duplicate current ones and current ones whose score is no longer the task's (a rank-based
strategy on a new snapshot). An interruption at any point leaves each task with at least the
predictions it had; re-running skips tasks that already hold a current prediction with the same
score and finishes the clean-up.
"""

from __future__ import annotations

import logging
import sys
import time
from collections import defaultdict
from typing import Any

from tqdm import tqdm

from tsp_cli.client import LSProject, SyncError, call
from tsp_cli.settings import ConfigError, ProjectSettings
from tsp_cli.workdir import Workdir

log = logging.getLogger(__name__)

__all__ = ["TSP_PREFIX", "delete_model_version", "list_predictions", "push_predictions", "score", "set_clusters"]

TSP_PREFIX = "tsp-"  # make_model_version's prefix: what marks a prediction as ours
SCORE_TOLERANCE = 1e-7  # Label Studio stores scores as floats; S_i and rank / N differ by far more


def list_predictions(client: Any, project_id: int) -> list[dict[str, Any]]:
    """``[{"id", "task", "model_version", "score"}]`` of every prediction in the project."""

    def _list() -> list[dict[str, Any]]:
        out = []
        for p in client.predictions.list(project=project_id):
            task = p.task if not isinstance(p.task, dict) else p.task.get("id")
            out.append({"id": int(p.id), "task": int(task), "model_version": str(p.model_version or ""),
                        "score": None if p.score is None else float(p.score),
                        "cluster": None if getattr(p, "cluster", None) is None else int(p.cluster)})
        return out

    return call(client, f"listing the predictions of project {project_id}", _list)


def push_predictions(
    client: Any,
    project: LSProject,
    predictions: dict[int, dict[str, Any]],
    model_version: str,
    *,
    batch_size: int = 100,
    progress: bool = True,
) -> dict[str, int]:
    """Make ``predictions`` ({task id: prediction dict}) the only TSP predictions of their tasks.

    Returns ``{"pushed", "already", "deleted"}``.
    """
    existing = list_predictions(client, project.id)
    have = {p["task"] for p in existing if _is_current(p, predictions, model_version)}
    todo = [(tid, pred) for tid, pred in sorted(predictions.items()) if tid not in have]
    bar = tqdm(total=len(todo), desc="push predictions", unit="task", disable=not progress, file=sys.stderr)
    try:
        for i in range(0, len(todo), batch_size):
            chunk = todo[i : i + batch_size]
            request = [{"task": tid, "result": p["result"], "score": p["score"], "model_version": p["model_version"]}
                       for tid, p in chunk]
            call(client, f"importing predictions into project {project.id}",
                 client.projects.import_predictions, id=project.id, request=request)
            bar.update(len(chunk))
    finally:
        bar.close()

    # Label Studio's import-predictions endpoint stores result, score and model_version only: the
    # cluster goes on each current prediction through the predictions API before the queue moves
    set_clusters(client, project.id, predictions, model_version, progress=progress)

    if project.model_version.startswith(TSP_PREFIX) and project.model_version != model_version:
        # the queue follows the project's model_version: move it to the new predictions before the
        # old ones go, so Label Studio never falls back to random order in between
        call(client, f"updating project {project.id}", client.projects.update, id=project.id,
             model_version=model_version)
        project.model_version = model_version

    # only now: delete the stale TSP predictions, current ones whose score is not the task's any
    # more, and duplicates (per task, the newest matching prediction stays)
    existing = list_predictions(client, project.id)
    stale = [p for p in existing if p["model_version"].startswith(TSP_PREFIX) and p["model_version"] != model_version]
    current_by_task: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for p in existing:
        if p["model_version"] == model_version:
            current_by_task[p["task"]].append(p)
    dupes = []
    for tid, preds in current_by_task.items():
        keep = [p for p in preds if _is_current(p, predictions, model_version)]
        if tid in predictions and not keep:
            continue  # the new one did not land (should not happen): keep what the task has
        keep_id = max(p["id"] for p in keep) if keep else min(p["id"] for p in preds)
        dupes += sorted(p["id"] for p in preds if p["id"] != keep_id)
    doomed = list(dupes)
    for version in sorted({p["model_version"] for p in stale}):
        if not delete_model_version(client, project.id, version):
            doomed += [p["id"] for p in stale if p["model_version"] == version]
    for pid in tqdm(doomed, desc="delete old predictions", unit="pred", disable=not progress or not doomed,
                    file=sys.stderr):
        call(client, f"deleting prediction {pid}", client.predictions.delete, id=pid)
    return {"pushed": len(todo), "already": len(predictions) - len(todo), "deleted": len(stale) + len(dupes)}


def set_clusters(client: Any, project_id: int, predictions: dict[int, dict[str, Any]], model_version: str, *,
                 progress: bool = True) -> int:
    """Give each task's current prediction (the newest of ``model_version`` with the task's score)
    the ``cluster`` of ``predictions[task]``: one PATCH /api/predictions/{id}/ per prediction whose
    cluster differs. Returns how many were changed. Idempotent: a resumed push patches the rest."""
    from label_studio_sdk.core.api_error import ApiError

    wanted = {tid: p["cluster"] for tid, p in predictions.items() if p.get("cluster") is not None}
    if not wanted:
        return 0
    newest: dict[int, dict[str, Any]] = {}
    for p in list_predictions(client, project_id):
        if p["task"] in wanted and _is_current(p, predictions, model_version):
            if p["task"] not in newest or p["id"] > newest[p["task"]]["id"]:
                newest[p["task"]] = p
    todo = [(p["id"], wanted[t]) for t, p in sorted(newest.items()) if p.get("cluster") != wanted[t]]

    def _patch(pid: int, cluster: int) -> None:
        resp = client._client_wrapper.httpx_client.request(f"api/predictions/{pid}/", method="PATCH",
                                                           json={"cluster": int(cluster)})
        if resp.status_code >= 400:
            raise ApiError(status_code=resp.status_code, body=resp.text)

    for pid, cluster in tqdm(todo, desc="set clusters", unit="pred", disable=not progress or not todo, file=sys.stderr):
        call(client, f"setting the cluster of prediction {pid}", _patch, pid, cluster)
    return len(todo)


def _is_current(existing: dict[str, Any], predictions: dict[int, dict[str, Any]], model_version: str) -> bool:
    """An existing prediction is current: the new ``model_version`` and, for a task being pushed,
    the same ``score`` (rank-based scores move when the pool changes under the same model); its
    cluster is set afterwards (:func:`set_clusters`)."""
    if existing["model_version"] != model_version:
        return False
    new = predictions.get(existing["task"])
    if new is None:
        return True
    return existing["score"] is not None and abs(existing["score"] - float(new["score"])) <= SCORE_TOLERANCE


def delete_model_version(client: Any, project_id: int, model_version: str) -> bool:
    """Delete every prediction of one ``model_version`` in the project with one request
    (``DELETE /api/projects/{id}/model-versions/``). False when the server lacks that endpoint."""
    from label_studio_sdk.core.api_error import ApiError

    if not model_version:  # without a version the endpoint deletes ALL predictions of the project
        raise ValueError("model_version must not be empty")

    def _delete() -> bool:
        resp = client._client_wrapper.httpx_client.request(
            f"api/projects/{project_id}/model-versions/", method="DELETE", json={"model_version": model_version}
        )
        if resp.status_code in (404, 405):
            return False
        if resp.status_code >= 400:
            raise ApiError(status_code=resp.status_code, body=resp.text)
        return True

    return call(client, f"deleting predictions of {model_version}", _delete)


def score(
    client: Any,
    project: LSProject,
    settings: ProjectSettings,
    workdir: Workdir,
    *,
    progress: bool = True,
) -> dict[str, Any]:
    """Score the latest snapshot's pool with the newest checkpoint and push the predictions,
    scored for ``active.strategy`` (see :mod:`tsp_cli.priority`)."""
    from tsp_backend.regions import LabelConfigError, parse_label_config
    from tsp_cli.priority import pool_queue, queue_predictions, resolve_strategy
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
        queue = pool_queue(workdir, snap, checkpoint, cfg, progress=progress)
    except ConfigError as exc:
        raise ConfigError(f"project {settings.name!r}: {exc}") from None
    predictions = queue_predictions(queue, target, show_threshold=cfg.active.show_threshold)
    version = queue.queue_version
    pushed = push_predictions(client, project, predictions, version, batch_size=settings.push_batch, progress=progress)
    S = {int(r.image_id): float(r.S) for r in queue.records}
    # the queue is the pool's; labeled tasks hold a prediction for their cluster only
    order = sorted((p["score"], tid) for tid, p in predictions.items() if tid in S)
    summary = {
        "snapshot": snap.number,
        "model_version": version,  # what Label Studio holds: "<checkpoint version>[+<strategy>]"
        "checkpoint_version": queue.model_version,
        "strategy": queue.strategy,
        "scores": str(queue.scores_path),
        "pool": len(snap.pool()),
        "scored": len(queue.records),
        **pushed,
        "clusters": len(set(queue.clusters.values())),
        "cluster_source": cfg.active.cluster_source if queue.clusters else "none",
        "top": [{"task": tid, "score": sc, "S": S[tid], "cluster": queue.clusters.get(tid)} for sc, tid in order[:10]],
        "seconds": round(time.perf_counter() - t0, 1),
    }
    workdir.update_state("last_score", summary)
    return summary
