"""The diverse queue inside Label Studio: every prediction carries a cluster, and /next serves each
annotator the lowest-S_i task of the cluster they labeled least, across a re-score, for one
annotator and for two (a real Label Studio 1.23 and tsp-sync cycle)."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from tests.ls_fixtures import add_user
from tests.test_cli_integration import TSP_TOML, configured_project
from tests.test_cli_integration import run as run_cli

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# clusters of the 12 tasks: k = active.budget = 4, so one batch of 4 can visit each cluster once
CLUSTER_TOML = TSP_TOML + """budget = 4
"""


def _cycled_project(label_studio, ls_client, tmp_path_factory, title: str) -> dict:
    info = configured_project(label_studio, ls_client, tmp_path_factory.mktemp("tsp-sync-clusters"), CLUSTER_TOML,
                              title=title)
    res = run_cli(info, "cycle", "--project", "ich")
    assert res.exit_code == 0, res.output
    return info


@pytest.fixture(scope="module")
def project(label_studio, ls_client, tmp_path_factory):
    return _cycled_project(label_studio, ls_client, tmp_path_factory, "ICH clusters")


@pytest.fixture(scope="module")
def project2(label_studio, ls_client, tmp_path_factory):
    """A second project (7 open tasks): two annotators label 2 tasks each."""
    return _cycled_project(label_studio, ls_client, tmp_path_factory, "ICH clusters, two annotators")


def _queue(ls_client, project_id: int) -> dict[int, tuple[float, int]]:
    """task -> (score, cluster) of its current prediction (the project's model_version)."""
    version = ls_client.projects.get(id=project_id).model_version
    out = {}
    for task in ls_client.tasks.list(project=project_id, fields="all"):
        preds = [p for p in (task.predictions or []) if (p.get("model_version") if isinstance(p, dict)
                                                          else p.model_version) == version]
        if preds:
            p = preds[-1] if isinstance(preds[-1], dict) else preds[-1].model_dump()
            out[int(task.id)] = (float(p["score"]), p["cluster"])
    return out


def _finished(ls_client, project_id: int) -> tuple[dict[int, set[int]], set[int]]:
    """(user id -> tasks they finished or skipped, tasks anybody finished)."""
    by_user: dict[int, set[int]] = {}
    done: set[int] = set()
    for task in ls_client.tasks.list(project=project_id, fields="all"):
        for a in task.annotations or []:
            a = a if isinstance(a, dict) else a.model_dump()
            by_user.setdefault(int(a["completed_by"]), set()).add(int(task.id))
            if not a.get("was_cancelled"):
                done.add(int(task.id))
    return by_user, done


def _order(queue: dict[int, tuple[float, int]], mine: set[int], done: set[int]) -> list[int]:
    """The order Label Studio's Uncertainty sampling serves this user: open tasks by (tasks this
    user finished in the task's cluster, score)."""
    count = Counter(queue[t][1] for t in mine if t in queue)
    open_tasks = [t for t in queue if t not in done and t not in mine]
    return sorted(open_tasks, key=lambda t: (count.get(queue[t][1], 0), queue[t][0], t))


def _ask(label_studio, token: str, project_id: int) -> int:
    import requests
    from label_studio_sdk import LabelStudio

    auth = {"Authorization": LabelStudio(base_url=label_studio.url, api_key=token)._client_wrapper.get_headers()["Authorization"]}
    r = requests.get(f"{label_studio.url}/api/projects/{project_id}/next", headers=auth, timeout=60)
    assert r.status_code == 200, r.text
    return int(r.json()["id"])


def _submit(label_studio, token: str, task: int) -> None:
    from label_studio_sdk import LabelStudio

    LabelStudio(base_url=label_studio.url, api_key=token).annotations.create(task, result=[])  # "no lesion"


def _me(label_studio, token: str) -> int:
    from label_studio_sdk import LabelStudio

    return int(LabelStudio(base_url=label_studio.url, api_key=token).users.whoami().id)


def test_every_prediction_carries_a_cluster_and_labeled_tasks_keep_theirs(project, ls_client):
    queue = _queue(ls_client, project["project_id"])
    assert sorted(queue) == sorted(project["pool"] + list(project["labeled"]))
    assert all(c is not None for _, c in queue.values())
    assert 2 <= len({c for _, c in queue.values()}) <= 4  # k = b = 4


def test_one_annotator_gets_the_lowest_of_the_least_labeled_cluster_across_a_rescore(project, label_studio, ls_client):
    pid, token = project["project_id"], label_studio.token
    me = _me(label_studio, token)
    versions = set()
    for round_ in range(2):
        if round_:  # a new model version: pull the new labels, retrain, score, reorder
            res = run_cli(project, "cycle", "--project", "ich")
            assert res.exit_code == 0, res.output
        queue = _queue(ls_client, pid)
        versions.add(ls_client.projects.get(id=pid).model_version)
        for _ in range(3):
            by_user, done = _finished(ls_client, pid)
            expected = _order(queue, by_user.get(me, set()), done)
            served = _ask(label_studio, token, pid)
            assert served == expected[0], (served, expected[:4], queue)
            _submit(label_studio, token, served)
    assert len(versions) == 2
    state = json.loads((project["work"] / "work" / "state.json").read_text())
    # the counts survived the re-score: the tasks labeled before it carry clusters of the new version
    queue = _queue(ls_client, pid)
    by_user, _ = _finished(ls_client, pid)
    assert all(t in queue for t in by_user[me])
    assert state["last_score"]["clusters"] >= 2


def test_two_annotators_each_get_a_fresh_cluster_first(project2, label_studio, ls_client):
    """Label Studio 1.23 open source has no project teams (``project.annotators()`` is empty), so
    each annotator is served the first task of their own order that no one else holds locked:
    one of the first (annotators + 1) of that order, and never a second task of a cluster while
    a fresh cluster is still open to them."""
    pid = project2["project_id"]
    tokens = [add_user(label_studio, f"annotator{k}@tsp.local", "a-long-test-password-1") for k in (1, 2)]
    ids = [_me(label_studio, t) for t in tokens]
    queue = _queue(ls_client, pid)
    seen: dict[int, list[int]] = {u: [] for u in ids}
    for _ in range(2):
        served: dict[int, int] = {}
        for token, uid in zip(tokens, ids):
            by_user, done = _finished(ls_client, pid)
            order = [t for t in _order(queue, by_user.get(uid, set()), done) if t not in served.values()]
            task = _ask(label_studio, token, pid)
            assert task in order[: len(tokens) + 1], (task, order[:4])
            assert task == order[0], (task, order[:4])
            cluster = queue[task][1]
            fresh = {queue[t][1] for t in order} - set(seen[uid])
            assert cluster not in seen[uid] or not fresh, (uid, cluster, seen[uid], fresh)
            seen[uid].append(cluster)
            served[uid] = task
        assert len(set(served.values())) == len(tokens)  # the lock keeps them apart
        for token, uid in zip(tokens, ids):
            _submit(label_studio, token, served[uid])
    assert all(len(set(c)) == len(c) for c in seen.values())  # a fresh cluster each time
