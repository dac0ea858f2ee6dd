"""``tsp-sync reorder``: make Label Studio serve the lowest prediction score first.

The pushed score is ``S_i`` with ``active.strategy = "tsp"`` and the strategy's rank / N with
any other (:mod:`tsp_cli.priority`; the strategy is the ``+<strategy>`` suffix of the pushed
``model_version``), so the queue follows whichever strategy ``tsp-sync score`` used.

- ``projects.update(model_version=<newest pushed>, sampling="Uncertainty sampling")``: Label
  Studio's label stream then serves each annotator, among the tasks holding a prediction of
  that ``model_version``, the lowest prediction score of the cluster they labeled least in
  (``projects/functions/next_task.py``; every prediction carries a ``cluster``,
  :mod:`tsp_cli.priority`). Open-source 1.23 has no project teams, so each annotator gets the
  first task of their own order that nobody else holds locked.
- a Data Manager view "TSP priority" (unlabeled tasks ordered by ``tasks:predictions_score``, only
  the ID, image and prediction-score columns shown): the fallback, used with "Label Tasks As
  Displayed", on servers that ignore the sampling. ``reorder`` rewrites this tab every time.
- a check with ``GET /api/projects/{id}/next``: the served task must be the lowest-scored
  (the strategy's first pick) of its cluster. Asking ``/next`` is what opening the label stream does: Label
  Studio locks the served task for the asking user for ``TASK_LOCK_TTL`` (server default
  86400 s), and with overlap 1 nobody else is served it meanwhile. Open source 1.23 has no API to
  release a lock, but submitting an annotation releases the submitter's
  (``tasks/api.py``), so the check submits a skip and deletes it at once
  (:func:`release_next_lock`): the task is left as it was and stays first in everyone's stream.
  Ask as a user nobody labels with (``LABEL_STUDIO_VERIFY_API_KEY``): a labeling user may hold
  a lock on the task they are working on; ``/next`` then serves that task ("Task lock"), which
  says nothing about the order and is left alone (reported as inconclusive). A user that
  labels nothing holds no lock but a stale one from an interrupted check, which is released.
  ``--no-verify`` skips the check (the queue order is set either way).
"""

from __future__ import annotations

import logging
import math
import os
from typing import Any

import click

from tsp_cli.client import LSProject, SyncError, call, get_json, model_versions
from tsp_cli.commands.score import iter_task_predictions
from tsp_cli.context import CliContext, project_option
from tsp_cli.errors import handle_errors
from tsp_cli.priority import DEFAULT_STRATEGY, scores_by_task, split_queue_version
from tsp_cli.workdir import Workdir

log = logging.getLogger(__name__)

__all__ = ["VIEW_TITLE", "VERIFY_KEY_ENV", "dm_columns", "release_next_lock", "reorder", "upsert_view",
           "verify_client_from_env", "verify_next"]

VIEW_TITLE = "TSP priority"
SAMPLING = "Uncertainty sampling"
SCORE_COLUMN = "tasks:predictions_score"
VERIFY_KEY_ENV = "LABEL_STUDIO_VERIFY_API_KEY"
# the tab's visible columns besides the image ones, in Label Studio's own column order
_SHOWN_COLUMNS = ("tasks:id", SCORE_COLUMN)


def dm_columns(client: Any, project_id: int) -> list[tuple[str, str]]:
    """``(key, type)`` of the project's Data Manager columns, keyed as views store them:
    ``tasks:<id>`` and ``tasks:data.<task data key>`` (``data_manager/managers.py``)."""
    body = get_json(client, "api/dm/columns", f"listing the Data Manager columns of project {project_id}",
                    params={"project": project_id})
    columns = []
    for c in (body or {}).get("columns", []):
        if c.get("children") is not None:  # the "data" group header, not a column
            continue
        prefix = "tasks:data." if c.get("parent") == "data" else "tasks:"
        columns.append((prefix + str(c["id"]), str(c.get("type", ""))))
    return columns


def _view_payload(columns: list[tuple[str, str]] | None) -> dict[str, Any]:
    """The view's ``data`` in the Data Manager's own shape (what its UI saves for a tab).

    The table's column order is Label Studio's (task fields, then task data), so "first" means
    hiding the rest: every column but the ID, the image(s) and the prediction score is in
    ``hiddenColumns`` for both modes (``explore``: the table, ``labeling``: the list beside the
    labeling view). Image data columns are drawn as thumbnails (``columnsDisplayType``).
    ``columns`` None (unknown): the tab keeps the Data Manager's default columns.
    """
    payload: dict[str, Any] = {
        "title": VIEW_TITLE,
        "type": "list",
        "target": "tasks",
        "ordering": [SCORE_COLUMN],
        "filters": {
            "conjunction": "and",
            "items": [{"filter": "filter:tasks:total_annotations", "operator": "equal", "type": "Number", "value": 0}],
        },
    }
    if columns is not None:
        images = [key for key, kind in columns if kind == "Image"]
        shown = set(images) | set(_SHOWN_COLUMNS)
        hidden = [key for key, _ in columns if key not in shown]
        payload["hiddenColumns"] = {"explore": hidden, "labeling": list(hidden)}
        payload["columnsDisplayType"] = {key: "Image" for key in images}
    return payload


def upsert_view(client: Any, project_id: int) -> int:
    """Create or update the "TSP priority" view; returns its id."""
    views = call(client, f"listing the views of project {project_id}", client.views.list, project=project_id,
                 idempotent=True)
    try:
        columns: list[tuple[str, str]] | None = dm_columns(client, project_id)
    except SyncError as exc:  # the order matters more than the columns shown
        log.warning("%s; the %r tab keeps the default columns", exc, VIEW_TITLE)
        columns = None
    data = _view_payload(columns)
    for v in views:
        vdata = v.data if isinstance(v.data, dict) else (v.data.model_dump() if v.data is not None else {})
        if vdata.get("title") == VIEW_TITLE:
            call(client, f"updating view {v.id}", client.views.update, id=str(v.id), data=data, project=project_id,
                 idempotent=True)
            return int(v.id)
    view = call(client, "creating the TSP priority view", client.views.create, data=data, project=project_id)
    return int(view.id)


def verify_client_from_env(client: Any, url: str) -> tuple[Any, str] | None:
    """A client for the ``/next`` check from ``$LABEL_STUDIO_VERIFY_API_KEY`` (the PAT of a user
    nobody labels with) and that user's email; None when the variable is unset."""
    from tsp_cli.client import connect
    from tsp_cli.settings import Secrets

    key = os.environ.get(VERIFY_KEY_ENV, "").strip()
    if not key:
        return None
    try:
        verifier = connect(Secrets(url=url, api_key=key))
    except SyncError as exc:  # connect() names the main token's variable
        raise SyncError(str(exc).replace("LABEL_STUDIO_API_KEY", VERIFY_KEY_ENV)) from None
    me = call(client, "checking the token", client.users.whoami)
    them = call(verifier, f"checking {VERIFY_KEY_ENV}", verifier.users.whoami)
    if int(me.id) == int(them.id):
        raise SyncError(f"{VERIFY_KEY_ENV} is a token of the same user as LABEL_STUDIO_API_KEY ({them.email}); "
                        "set it to the Personal Access Token of a user nobody labels with")
    return verifier, str(them.email)


def release_next_lock(client: Any, task_id: int) -> None:
    """Release the lock ``/next`` put on ``task_id`` for ``client``'s user.

    Submitting an annotation is the only way open-source Label Studio releases a lock
    (``tasks/api.py``: ``task.release_lock(user)``), so a skip (``was_cancelled``, empty result) is
    submitted and deleted at once; the task's counts and labels are as before. Webhooks, if any,
    see the two events.
    """
    what = f"releasing the /next lock on task {task_id}"
    annotation = call(client, what, client.annotations.create, id=task_id, result=[], was_cancelled=True)
    call(client, what, client.annotations.delete, id=int(annotation.id))


def _try_release(client: Any, task_id: int) -> bool:
    try:
        release_next_lock(client, task_id)
    except SyncError as exc:  # e.g. a server where the task cannot be skipped
        log.warning("%s; the lock on task %s lasts until Label Studio's TASK_LOCK_TTL (24 h by default) expires",
                    exc, task_id)
        return False
    return True


def _ask_next(client: Any, project_id: int) -> tuple[int | None, str]:
    # 404: nothing left to serve this user (all labeled, or skipped by them)
    answer = get_json(client, f"api/projects/{project_id}/next", f"asking project {project_id} for its next task",
                      none_on=(404,))
    next_id = int(answer["id"]) if isinstance(answer, dict) and answer.get("id") is not None else None
    return next_id, str(answer.get("queue", "")) if isinstance(answer, dict) else ""


def verify_next(
    client: Any,
    project_id: int,
    scores: dict[int, float],
    image_scores: dict[int, float] | None = None,
    clusters: dict[int, int | None] | None = None,
    *,
    dedicated: bool = False,
) -> dict[str, Any]:
    """Ask ``/next`` as ``client``'s user, compare with the lowest pushed score among the given
    tasks, and release the lock the question put on the served task.

    ``scores``: task id -> pushed prediction score; ``image_scores``: task id -> ``S_i`` (default:
    the pushed scores, which are ``S_i`` under the ``tsp`` strategy); ``clusters``: task id ->
    cluster of its prediction. With clusters, Label Studio serves the lowest score of the cluster
    this user labeled least in; which clusters those are depends on the user's own labels (none
    for a user nobody labels with), so the check is that the served task is the lowest-scored of
    its cluster. ``dedicated``: the user labels nothing, so a lock it already holds is a leftover
    of an interrupted check and is released before asking; otherwise such a lock may be a
    person's work in progress and the answer is reported as inconclusive.

    Returns ``{"next_task", "next_score", "next_S", "next_cluster", "next_rank", "lowest_task",
    "lowest_score", "lowest_S", "honored", "queue", "released"}``; ``lowest_*`` is the lowest of
    the served task's cluster (with clusters) or of all; ``next_rank``: 1 + the number of those
    tasks scored lower than the served one (> 1 also when those are open in a person's label
    stream: locked); ``honored`` is None when the answer is inconclusive.
    """
    image_scores = scores if image_scores is None else image_scores
    next_id, queue = _ask_next(client, project_id)
    if dedicated and next_id is not None and "lock" in queue.lower() and _try_release(client, next_id):
        next_id, queue = _ask_next(client, project_id)
    cluster = (clusters or {}).get(next_id) if next_id is not None else None
    among = scores if cluster is None else {t: sc for t, sc in scores.items() if (clusters or {}).get(t) == cluster}
    lowest_task, lowest = (min(among.items(), key=lambda kv: (kv[1], kv[0])) if among else (None, None))
    next_score = scores.get(next_id) if next_id is not None else None
    rank = None if next_score is None else 1 + sum(1 for v in among.values() if v < next_score - 1e-9)
    released = False
    if next_id is None or "lock" in queue.lower():
        honored = None  # the user's earlier lock is served first; says nothing about the order
    else:
        honored = next_score is not None and lowest is not None and abs(next_score - lowest) <= 1e-9
        released = _try_release(client, next_id)  # this question's lock: leave the task to the annotators
    return {"next_task": next_id, "next_score": next_score, "next_S": _s_of(image_scores, next_id),
            "next_cluster": cluster, "next_rank": rank, "lowest_task": lowest_task, "lowest_score": lowest,
            "lowest_S": _s_of(image_scores, lowest_task), "honored": honored, "queue": queue, "released": released}


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
    verify_client: Any = None,
) -> dict[str, Any]:
    """Point the project's queue at ``model_version`` (default: the last ``score``'s).

    ``verify_client``: ask ``/next`` as this client's user, one that labels nothing (see the
    module docstring); default ``client``.
    """
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
        check = verify_next(verify_client or client, project.id, scores, image_scores,
                            clusters if any(c is not None for c in clusters.values()) else None,
                            dedicated=verify_client is not None)
        summary["verify"] = check
        if check["honored"] is False:
            log.warning(
                "Label Studio served task %s (score %s, rank %s in its cluster %s) but task %s has the lowest score %s "
                "(%s order): either the lower-scored tasks are open in an annotator's label stream (locked), or this "
                "server does not honor Uncertainty sampling; then label from the Data Manager view %r with 'Label "
                "Tasks As Displayed'",
                check["next_task"], check["next_score"], check["next_rank"], check["next_cluster"],
                check["lowest_task"], check["lowest_score"], strategy, VIEW_TITLE,
            )
        elif check["honored"] is None and check["next_task"] is not None:
            log.warning("task %s is locked for this token's user by an earlier /next (a task they are "
                        "labeling?); the check is inconclusive: set LABEL_STUDIO_VERIFY_API_KEY to the token of a "
                        "user nobody labels with", check["next_task"])
    top = sorted(scores.items(), key=lambda kv: (kv[1], kv[0]))[:10]
    # "score": what the queue is ordered by; "S": S_i (NaN when the score file is gone); "cluster":
    # Label Studio serves each annotator the lowest score of the cluster they labeled least in
    summary["top"] = [{"task": t, "score": sc, "S": image_scores.get(t, math.nan), "cluster": clusters.get(t)}
                      for t, sc in top]
    workdir.update_state("last_reorder", summary)
    return summary


@click.command("reorder", help="Make Label Studio serve the lowest prediction score first (S_i, or the active.strategy's rank; "
                  "Uncertainty sampling + 'TSP priority' view).")
@project_option
@click.option("--verify/--no-verify", default=True, show_default=True,
              help="Check GET /api/projects/{id}/next, then release the lock it puts on the served task. Asks as "
                   "the user of $LABEL_STUDIO_VERIFY_API_KEY (a user nobody labels with) when set, else as the "
                   "token's user.")
@click.pass_obj
@handle_errors
def reorder_command(obj: CliContext, project: str, verify: bool) -> None:
    from tsp_cli.workdir import Workdir

    settings = obj.project_settings(project)
    client, ls_project, secrets = obj.connect(settings)
    verifier = verify_client_from_env(client, secrets.url) if verify else None
    s = reorder(client, ls_project, Workdir(settings.workdir), verify=verify,
                   verify_client=verifier[0] if verifier else None)
    click.echo(f"project {ls_project.id}: model_version {s['model_version']}, ordered by {s['strategy']}, "
               f"{s['sampling']}, view {VIEW_TITLE!r} (id {s['view_id']})")
    v = s.get("verify")
    if v:
        who = f"as {verifier[1]}" if verifier else "as the token's user"
        where = "" if v.get("next_cluster") is None else f" of its cluster {v['next_cluster']}"
        if v["honored"]:
            released = "its lock released" if v.get("released") else "its lock NOT released (see the warning)"
            click.echo(f"/next ({who}) serves task {v['next_task']} (score {v['next_score']:.4f}, "
                       f"S={v['next_S']:.4f}), the lowest-scored task{where} ({s['strategy']} order); {released}")
        elif v["next_task"] is None:
            click.echo(f"/next ({who}) serves no task (nothing left, or all skipped by this user)")
        elif v["honored"] is None:
            click.echo(f"/next ({who}) serves task {v['next_task']}, locked for this user by an earlier call: "
                       "inconclusive; set LABEL_STUDIO_VERIFY_API_KEY to the token of a user nobody labels with")
        else:
            click.echo(f"/next ({who}) serves task {v['next_task']} (rank {v['next_rank']}), not the lowest-scored "
                       f"task{where} {v['lowest_task']}: the lower ones are open in an annotator's stream (locked), or "
                       f"this server does not honor the order; then label from the {VIEW_TITLE!r} view with 'Label "
                       "Tasks As Displayed'")
