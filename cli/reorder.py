"""``tsp-sync reorder``: make Label Studio serve the lowest prediction score first.

The pushed score is ``S_i`` with ``active.strategy = "tsp"`` and the strategy's rank / N with
any other (:mod:`tsp_cli.priority`; the strategy is the ``+<strategy>`` suffix of the pushed
``model_version``), so the queue follows whichever strategy ``tsp-sync score`` used.

- ``projects.update(model_version=<newest pushed>, sampling="Uncertainty sampling")``: Label
  Studio's label stream then orders tasks holding a prediction of that ``model_version`` by
  ascending prediction score (``projects/functions/next_task.py``). With several annotators it
  picks at random among the few lowest, so two people do not collide on one task.
- a Data Manager view "TSP priority" (unlabeled tasks ordered by ``tasks:predictions_score``):
  the fallback, used with "Label Tasks As Displayed", on servers that ignore the sampling.
- a check with ``GET /api/projects/{id}/next``: the served task must be the lowest-scored
  (the strategy's first pick).
  Side effect, as when a person opens the task: Label Studio locks the served task for the
  token's user for ``TASK_LOCK_TTL`` (server default 86400 s) and, with overlap 1, no one else is
  served it meanwhile; open source 1.23 has no API to release a lock. While that lock lasts, later
  checks get the same task back ("Task lock") and are reported as inconclusive. ``--no-verify``
  skips the check (the queue order is set either way).
"""

from __future__ import annotations

import logging
import math
from typing import Any

from tsp_cli.client import LSProject, SyncError, call, get_json, model_versions
from tsp_cli.priority import DEFAULT_STRATEGY, scores_by_task, split_queue_version
from tsp_cli.score import iter_task_predictions
from tsp_cli.workdir import Workdir

log = logging.getLogger(__name__)

__all__ = ["VIEW_TITLE", "reorder", "upsert_view", "verify_next"]

VIEW_TITLE = "TSP priority"
SAMPLING = "Uncertainty sampling"


def _view_payload() -> dict[str, Any]:
    return {
        "title": VIEW_TITLE,
        "ordering": ["tasks:predictions_score"],
        "filters": {
            "conjunction": "and",
            "items": [{"filter": "filter:tasks:total_annotations", "operator": "equal", "type": "Number", "value": 0}],
        },
    }


def upsert_view(client: Any, project_id: int) -> int:
    """Create or update the "TSP priority" view; returns its id."""
    views = call(client, f"listing the views of project {project_id}", client.views.list, project=project_id,
                 idempotent=True)
    data = _view_payload()
    for v in views:
        vdata = v.data if isinstance(v.data, dict) else (v.data.model_dump() if v.data is not None else {})
        if vdata.get("title") == VIEW_TITLE:
            call(client, f"updating view {v.id}", client.views.update, id=str(v.id), data=data, project=project_id,
                 idempotent=True)
            return int(v.id)
    view = call(client, "creating the TSP priority view", client.views.create, data=data, project=project_id)
    return int(view.id)


def verify_next(
    client: Any, project_id: int, scores: dict[int, float], image_scores: dict[int, float] | None = None,
    clusters: dict[int, int | None] | None = None,
) -> dict[str, Any]:
    """Ask ``/next`` and compare with the lowest pushed score among the given tasks.

    ``scores``: task id -> pushed prediction score; ``image_scores``: task id -> ``S_i`` (default:
    the pushed scores, which are ``S_i`` under the ``tsp`` strategy); ``clusters``: task id ->
    cluster of its prediction. With clusters, Label Studio serves the lowest score of the cluster
    this user labeled least in; which clusters those are depends on the user's own labels, so the
    check is that the served task is the lowest-scored of its cluster (a server ignoring the order
    would rarely serve exactly that).

    Returns ``{"next_task", "next_score", "next_S", "next_cluster", "lowest_task", "lowest_score",
    "lowest_S", "honored", "queue"}``; ``lowest_*`` is the lowest of the served task's cluster
    (with clusters) or of all; ``honored`` is None when the answer is inconclusive (a task lock
    held by this user).
    """
    image_scores = scores if image_scores is None else image_scores
    # 404: nothing left to serve this user (all labeled, or skipped by them)
    answer = get_json(client, f"api/projects/{project_id}/next", f"asking project {project_id} for its next task",
                      none_on=(404,))
    next_id = int(answer["id"]) if isinstance(answer, dict) and answer.get("id") is not None else None
    queue = str(answer.get("queue", "")) if isinstance(answer, dict) else ""
    cluster = (clusters or {}).get(next_id) if next_id is not None else None
    among = scores if cluster is None else {t: sc for t, sc in scores.items() if (clusters or {}).get(t) == cluster}
    lowest_task, lowest = (min(among.items(), key=lambda kv: (kv[1], kv[0])) if among else (None, None))
    next_score = scores.get(next_id) if next_id is not None else None
    if next_id is None or "lock" in queue.lower():
        honored = None  # the user's earlier lock is served first; says nothing about the order
    else:
        honored = next_score is not None and lowest is not None and abs(next_score - lowest) <= 1e-9
    return {"next_task": next_id, "next_score": next_score, "next_S": _s_of(image_scores, next_id),
            "next_cluster": cluster, "lowest_task": lowest_task, "lowest_score": lowest,
            "lowest_S": _s_of(image_scores, lowest_task), "honored": honored, "queue": queue}


def _s_of(image_scores: dict[int, float], task: int | None) -> float | None:
    if task is None:
        return None
    # NaN, not None, when the score file is gone: callers format it as a number
    return image_scores.get(task, math.nan)


def _image_scores(workdir: Workdir, version: str, state: dict[str, Any]) -> dict[int, float]:
    """``S_i`` per task from the pool score file behind ``version`` (``{}`` when it is gone)."""
    last = state.get("last_score") or {}
    if last.get("model_version") == version and last.get("scores"):
        found = scores_by_task(last["scores"])
        if found:
            return found
    base, _ = split_queue_version(version)
    snap = workdir.latest_snapshot(required=False)
    return scores_by_task(workdir.scores / f"{base}.s{snap.number}.jsonl") if snap is not None else {}


def reorder(
    client: Any,
    project: LSProject,
    workdir: Workdir,
    *,
    model_version: str | None = None,
    verify: bool = True,
) -> dict[str, Any]:
    """Point the project's queue at ``model_version`` (default: the last ``score``'s)."""
    state = workdir.read_state()
    version = model_version or (state.get("last_score") or {}).get("model_version")
    if not version:
        raise SyncError(f"{workdir.root}: nothing scored yet; run tsp-sync score first")
    strategy = split_queue_version(version)[1]
    n_preds = model_versions(client, project.id).get(version, 0)
    if not n_preds:
        raise SyncError(
            f"project {project.id} holds no prediction of model_version {version}; run tsp-sync score first"
        )
    call(client, f"updating project {project.id}", client.projects.update,
         id=project.id, model_version=version, sampling=SAMPLING, idempotent=True)
    view_id = upsert_view(client, project.id)

    # the unfinished tasks: the latest pull's pool (tasks labeled since are not served anyway);
    # the project's predictions are read a page of tasks at a time
    snap = workdir.latest_snapshot(required=False)
    pool = {t["task_id"] for t in snap.pool()} if snap is not None else None
    scores: dict[int, float] = {}
    clusters: dict[int, int | None] = {}
    for tid, preds in iter_task_predictions(client, project.id):
        if pool is not None and tid not in pool:
            continue
        for p in preds:
            if p["model_version"] == version and p["score"] is not None:
                scores[tid], clusters[tid] = p["score"], p["cluster"]
    image_scores = scores if strategy == DEFAULT_STRATEGY else _image_scores(workdir, version, state)
    summary: dict[str, Any] = {"model_version": version, "strategy": strategy, "sampling": SAMPLING,
                               "view_id": view_id, "predictions": n_preds}
    if verify:
        check = verify_next(client, project.id, scores, image_scores,
                            clusters if any(c is not None for c in clusters.values()) else None)
        summary["verify"] = check
        if check["honored"] is False:
            log.warning(
                "Label Studio served task %s (score %s) but task %s has the lowest score %s (%s order): this server "
                "does not honor Uncertainty sampling; label from the Data Manager view %r with 'Label Tasks As "
                "Displayed'",
                check["next_task"], check["next_score"], check["lowest_task"], check["lowest_score"], strategy,
                VIEW_TITLE,
            )
        elif check["honored"] is None and check["next_task"] is not None:
            log.warning("task %s is locked for this token's user by an earlier /next; the check is inconclusive "
                        "until the lock expires", check["next_task"])
    top = sorted(scores.items(), key=lambda kv: (kv[1], kv[0]))[:10]
    # "score": what the queue is ordered by; "S": S_i (NaN when the score file is gone); "cluster":
    # Label Studio serves each annotator the lowest score of the cluster they labeled least in
    summary["top"] = [{"task": t, "score": sc, "S": image_scores.get(t, math.nan), "cluster": clusters.get(t)}
                      for t, sc in top]
    workdir.update_state("last_reorder", summary)
    return summary
