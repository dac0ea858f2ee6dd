"""``tsp-sync score``: score the unlabeled pool with the newest model, push one prediction per task.

Each prediction is built by ``tsp_backend.regions.prediction_for_task`` (regions with ``s`` as
score and ``c``, ``b``, ``m`` in ``meta.text``; the prediction's ``score`` is ``S_i``; its
``model_version`` the checkpoint's), so it equals what the backend serves for the same task.

Replacing, safely: new predictions are pushed first (in batches, through the project's
import-predictions endpoint), and only then are this project's older TSP predictions deleted
(``model_version`` starting with ``tsp-``, any version but the new one: one request per version
through ``DELETE /api/projects/{id}/model-versions/``, else one per prediction) together with
duplicate current ones. An interruption at any point leaves each task with at least the predictions it had;
re-running skips tasks that already hold a current prediction and finishes the clean-up.
"""

from __future__ import annotations

import logging
import sys
import time
from collections import defaultdict
from typing import Any

from tqdm import tqdm

from tsp_cli.client import LSProject, SyncError, call
from tsp_cli.settings import ProjectSettings
from tsp_cli.workdir import Workdir

log = logging.getLogger(__name__)

__all__ = ["TSP_PREFIX", "delete_model_version", "list_predictions", "push_predictions", "score"]

TSP_PREFIX = "tsp-"  # make_model_version's prefix: what marks a prediction as ours


def list_predictions(client: Any, project_id: int) -> list[dict[str, Any]]:
    """``[{"id", "task", "model_version", "score"}]`` of every prediction in the project."""

    def _list() -> list[dict[str, Any]]:
        out = []
        for p in client.predictions.list(project=project_id):
            task = p.task if not isinstance(p.task, dict) else p.task.get("id")
            out.append({"id": int(p.id), "task": int(task), "model_version": str(p.model_version or ""),
                        "score": None if p.score is None else float(p.score)})
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
    have = {p["task"] for p in existing if p["model_version"] == model_version}
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

    if project.model_version.startswith(TSP_PREFIX) and project.model_version != model_version:
        # the queue follows the project's model_version: move it to the new predictions before the
        # old ones go, so Label Studio never falls back to random order in between
        call(client, f"updating project {project.id}", client.projects.update, id=project.id,
             model_version=model_version)
        project.model_version = model_version

    # only now: delete the stale TSP predictions and any duplicate current ones
    existing = list_predictions(client, project.id)
    stale = [p for p in existing if p["model_version"].startswith(TSP_PREFIX) and p["model_version"] != model_version]
    current_by_task: dict[int, list[int]] = defaultdict(list)
    for p in existing:
        if p["model_version"] == model_version:
            current_by_task[p["task"]].append(p["id"])
    dupes = [pid for ids in current_by_task.values() for pid in sorted(ids)[1:]]
    doomed = list(dupes)
    for version in sorted({p["model_version"] for p in stale}):
        if not delete_model_version(client, project.id, version):
            doomed += [p["id"] for p in stale if p["model_version"] == version]
    for pid in tqdm(doomed, desc="delete old predictions", unit="pred", disable=not progress or not doomed,
                    file=sys.stderr):
        call(client, f"deleting prediction {pid}", client.predictions.delete, id=pid)
    return {"pushed": len(todo), "already": len(predictions) - len(todo), "deleted": len(stale) + len(dupes)}


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
    """Score the latest snapshot's pool with the newest checkpoint and push the predictions."""
    from tsp_backend.regions import LabelConfigError, parse_label_config, prediction_for_task
    from tsp_cli.retrain import score_snapshot_pool
    from tsp_model.engine.checkpoint import latest_checkpoint, load_checkpoint
    from tsp_model.records import read_jsonl

    t0 = time.perf_counter()
    snap = workdir.latest_snapshot()
    checkpoint = latest_checkpoint(settings.model_dir)
    if checkpoint is None:
        raise SyncError(f"{settings.model_dir}: no model yet; run tsp-sync retrain --project {settings.name}")
    cfg = settings.train_config()
    class_names = list(load_checkpoint(checkpoint)["class_names"])
    try:
        target = parse_label_config(project.label_config, class_names=class_names)
    except LabelConfigError as exc:
        raise SyncError(f"project {project.id} ({project.title!r}): {exc}") from None
    path, version = score_snapshot_pool(workdir, snap, checkpoint, cfg, progress=progress)
    records = read_jsonl(path)
    predictions = {
        int(r.image_id): prediction_for_task(r, target, model_version=version, empty_score=cfg.active.empty_image_score)
        for r in records
    }
    pushed = push_predictions(client, project, predictions, version, batch_size=settings.push_batch, progress=progress)
    queue = sorted(((p["score"], tid) for tid, p in predictions.items()))
    summary = {
        "snapshot": snap.number,
        "model_version": version,
        "scores": str(path),
        "pool": len(snap.pool()),
        "scored": len(records),
        **pushed,
        "top": [{"task": tid, "S": s} for s, tid in queue[:10]],
        "seconds": round(time.perf_counter() - t0, 1),
    }
    workdir.update_state("last_score", summary)
    return summary
