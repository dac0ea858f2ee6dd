"""The quickstart's own code path (`tsp-sync demo`), smaller, against the real Label Studio.

Two runs on the session's Label Studio, as a person would do them: the first labels a random
batch and runs cycle 1; the second labels the b tasks the queue serves and runs cycle 2.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from tsp_cli.commands.demo import DemoOptions, format_queue, label_config, run_demo
from tsp_cli.local_server import VERIFY_USER, free_port

pytestmark = pytest.mark.integration

FIRST, B = 6, 4  # first batch, then b labeled from the queue


def _options(label_studio) -> DemoOptions:
    return DemoOptions(
        root=Path(label_studio.files_root) / "quickstart",
        count=16, size=96, first_batch=FIRST, batch=B, epochs=1, serve=False, progress=False,
        backend_port=free_port(),
    )


@pytest.fixture(scope="module")
def demo_run(label_studio):
    lines: list[str] = []
    opts = _options(label_studio)
    result = run_demo(opts, echo=lines.append, label_studio=label_studio)
    return opts, result, "\n".join(lines)


def _queue_scores(ls_client, project_id: int) -> tuple[str, dict[int, float]]:
    """The project's model_version and, per task, the score of its prediction of that version:
    what Uncertainty sampling orders by (S_i under the default strategy), read from Label Studio."""
    version, scores, _ = _queue(ls_client, project_id)
    return version, scores


def _queue(ls_client, project_id: int) -> tuple[str, dict[int, float], dict[int, object]]:
    """As :func:`_queue_scores`, plus each prediction's ``cluster`` (None when not clustered)."""
    version = ls_client.projects.get(id=project_id).model_version
    scores, clusters = {}, {}
    for p in ls_client.predictions.list(project=project_id):
        if p.model_version == version:
            task = int(p.task if not isinstance(p.task, dict) else p.task["id"])
            scores[task], clusters[task] = float(p.score), getattr(p, "cluster", None)
    return version, scores, clusters


def _lowest_of_its_cluster(task: int, candidates: set[int], scores: dict[int, float], clusters: dict) -> bool:
    """Whether ``task`` has the lowest score among ``candidates`` of its prediction's cluster
    (all of them when predictions carry no cluster): Uncertainty sampling's choice for a user
    (``projects/functions/next_task.py``: the least-labeled cluster first, then the lowest score)."""
    same = [t for t in candidates if clusters.get(t) == clusters.get(task)]
    return scores[task] <= min(scores[t] for t in same) + 1e-9


def _unlabeled(ls_client, project_id: int) -> set[int]:
    return {int(t.id) for t in ls_client.tasks.list(project=project_id, fields="all") if not t.total_annotations}


def _served_to_printed_login(label_studio, text: str, project_id: int) -> dict:
    """``/next`` as a person logged in with the login the demo printed (browser session)."""
    user, password = re.search(r"login (\S+) / (\S+)", text).groups()
    session = label_studio.login_session(user, password)
    r = session.get(f"{label_studio.url}/api/projects/{project_id}/next", timeout=60)
    assert r.status_code == 200, r.text
    return r.json()


def _fresh_shell(command: str) -> subprocess.CompletedProcess:
    """Run a printed line as pasted into a new terminal: bash, no virtualenv on PATH, no token
    in the environment, another working directory."""
    env = {"PATH": "/usr/bin:/bin", "HOME": os.environ.get("HOME", "/tmp"), "LANG": "C.UTF-8"}
    return subprocess.run(["bash", "-c", command], env=env, cwd="/", capture_output=True, text=True, timeout=600)


def test_printed_commands_work_when_pasted(demo_run, label_studio):
    # runs before any test asks /next as the printed login: a lock of theirs on the lowest task
    # would (rightly) make the check report another task
    opts, result, text = demo_run
    for name in ("status", "check"):
        assert result["commands"][name] in text  # printed verbatim
    # an interrupted check would leave the queue-check user holding a lock: the check releases it
    from label_studio_sdk import LabelStudio

    checker = LabelStudio(base_url=label_studio.url, api_key=label_studio.queue_check_token())
    stale = checker._client_wrapper.httpx_client.request(f"api/projects/{result['project_id']}/next", method="GET")
    assert stale.status_code == 200
    status = _fresh_shell(result["commands"]["status"])
    assert status.returncode == 0, status.stderr
    assert result["summary"]["model_version"] in status.stdout
    check = _fresh_shell(result["commands"]["check"])
    assert check.returncode == 0, check.stderr
    assert f"/next (as {VERIFY_USER}) serves task" in check.stdout and "its lock released" in check.stdout
    # no secret on the printed lines themselves: tokens are read from their files
    assert label_studio.token not in result["commands"]["check"]
    assert label_studio.password not in result["commands"]["check"]


def test_printed_login_is_served_the_lowest_S_i(demo_run, label_studio, ls_client):
    opts, result, text = demo_run
    version, S, clusters = _queue(ls_client, result["project_id"])
    assert version == result["summary"]["model_version"]
    pool = _unlabeled(ls_client, result["project_id"])
    lowest = min(S[t] for t in pool)
    # the demo checked /next as the queue-check user and released that lock ...
    assert result["verify"]["honored"] is True and result["verify"]["released"] is True
    assert f"/next check    asked as {VERIFY_USER}: task {result['next_task']}" in text
    assert "the lowest S_i; its lock released" in text
    # ... so the radiologist's own stream starts at the lowest S_i of the current model
    served = _served_to_printed_login(label_studio, text, result["project_id"])
    assert "lock" not in served["queue"].lower(), served["queue"]  # not a task held since the demo's check
    assert _lowest_of_its_cluster(served["id"], pool, S, clusters), (served["id"], S, clusters)
    # the printed queue is sorted by S_i, one row per unlabeled task up to ten
    scores = [e["score"] for e in result["queue"]]
    assert scores == sorted(scores) and scores[0] == pytest.approx(lowest, abs=1e-9)
    assert len(result["queue"]) == min(10, opts.count - opts.first_batch)


def test_priority_view_shows_id_image_and_score_only(demo_run, ls_client, label_studio):
    _, result, _ = demo_run
    from tsp_cli.client import get_json

    views = [v for v in ls_client.views.list(project=result["project_id"]) if v.data.get("title") == "TSP priority"]
    assert len(views) == 1
    data = views[0].data
    assert data["ordering"] == ["tasks:predictions_score"] and data["type"] == "list"
    columns = get_json(ls_client, "api/dm/columns", "columns", params={"project": result["project_id"]})["columns"]
    keys = {("tasks:data." if c.get("parent") == "data" else "tasks:") + c["id"]
            for c in columns if c.get("children") is None}
    for mode in ("explore", "labeling"):
        assert keys - set(data["hiddenColumns"][mode]) == {"tasks:id", "tasks:data.image", "tasks:predictions_score"}
    assert data["columnsDisplayType"] == {"tasks:data.image": "Image"}


def test_second_run_labels_what_the_queue_serves_then_learns(demo_run, label_studio, ls_client):
    opts, first, _ = demo_run
    _, S1, clusters1 = _queue(ls_client, first["project_id"])
    pool1 = _unlabeled(ls_client, first["project_id"])
    lines: list[str] = []
    opts2 = DemoOptions(**{**opts.__dict__, "backend_port": free_port()})
    second = run_demo(opts2, echo=lines.append, label_studio=label_studio)
    text = "\n".join(lines)
    assert second["project_id"] == first["project_id"]
    assert "reusing" in text and "0 tasks imported, 16 already there" in text
    assert f"cycle 2: the radiologist labels the {B} slices the queue serves" in text
    assert second["labeled"] == (FIRST, FIRST + B) and f"labeled slices: {FIRST} -> {FIRST + B}" in text
    # each of the b labeled tasks was, when served, the lowest S_i of the first model among the
    # tasks still unlabeled (of its cluster, if the predictions are clustered)
    served = second["served"]
    assert len(served) == B
    rest = _unlabeled(ls_client, first["project_id"])
    assert not set(served) & rest and set(served) <= pool1
    remaining = set(pool1)
    for task in served:
        assert _lowest_of_its_cluster(task, remaining, S1, clusters1), (task, served, S1)
        remaining.discard(task)
    # a second point on the learning curve
    from tsp_cli.commands.review import read_cycles

    assert [c["labeled"] for c in read_cycles(opts.root / "work")] == [FIRST, FIRST + B]
    assert second["summary"]["labeled"] == FIRST + B
    assert all(Path(p).is_file() for p in second["plots"])
    # and no lock left on the new lowest task for the printed login
    version, S2, clusters2 = _queue(ls_client, first["project_id"])
    assert version == second["summary"]["model_version"] != first["summary"]["model_version"]
    served_next = _served_to_printed_login(label_studio, text, first["project_id"])
    assert "lock" not in served_next["queue"].lower(), served_next["queue"]
    assert _lowest_of_its_cluster(served_next["id"], rest, S2, clusters2), (served_next["id"], S2)


def test_check_as_a_labeling_user_leaves_their_lock_alone(demo_run, ls_client):
    # the token's user (the printed login) holds a lock since the last test: a task open in their
    # stream; a check as that user must not take it from them
    from tsp_cli.client import get_json
    from tsp_cli.commands.reorder import verify_next

    _, result, _ = demo_run
    pid = result["project_id"]
    _, scores = _queue_scores(ls_client, pid)
    held = get_json(ls_client, f"api/projects/{pid}/next", "next")
    check = verify_next(ls_client, pid, scores)
    assert check["honored"] is None and check["released"] is False and check["next_task"] == held["id"]
    again = get_json(ls_client, f"api/projects/{pid}/next", "next")
    assert again["id"] == held["id"] and "Task lock" in again["queue"]


def test_label_config_and_queue_formatting():
    cfg = label_config(["epidural", "subdural"])
    assert '<BrushLabels name="lesion" toName="image">' in cfg and 'value="subdural"' in cfg
    out = format_queue([{"task": 7, "S": 0.25}, {"task": 3, "S": 0.5}], {7: "a.png"})
    assert out.splitlines()[0].split() == ["1.", "task", "7", "S_i", "=", "0.2500", "a.png"]
