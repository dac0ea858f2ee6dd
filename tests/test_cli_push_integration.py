"""Pushing predictions at scale against a real Label Studio 1.23: batches, interruptions, retries, --gpus.

A project of 30 small generated slices (2 labeled "no lesion", 28 in the pool) with
``push_batch = 4``, so one push is 7 import requests. Untrained tiny checkpoints stand in for
successive models (each newer file is the current model). Every test ends by reading what Label
Studio holds: each pool task must carry exactly one prediction of the current model_version.
"""

from __future__ import annotations

import http.server
import json
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest

from tests.ls_fixtures import BRUSH_CONFIG, make_tiny_checkpoint, write_png
from tests.test_cli_integration import run

pytestmark = [pytest.mark.integration, pytest.mark.slow]

N_TASKS = 30
N_LABELED = 2
PUSH_BATCH = 4

TOML = """
[projects.ich]
label_studio_project = {project_id}
workdir = "work"
push_batch = {push_batch}

[projects.ich.model]
backbone = "tiny_fpn"
min_size = 64
max_size = 64
box_score_thresh = 0.0
box_detections_per_img = 3

[projects.ich.train]
workers = 0
amp = false
device = "cpu"

[projects.ich.score]
workers = 0
batch_size = 4
amp = false

[projects.ich.active]
cluster_source = "none"  # the pool alone, so batches count pool tasks (clusters: test_cluster_queue_integration)
"""


@pytest.fixture(scope="module")
def big(label_studio, ls_client, tmp_path_factory):
    """The project, pulled once; ``pool`` = the unlabeled task ids."""
    work = tmp_path_factory.mktemp("push-at-scale")
    folder = label_studio.files_root / "push-at-scale"
    for i in range(N_TASKS):
        write_png(folder / f"{i}.png", 64, seed=100 + i)
    project = ls_client.projects.create(title="push at scale", label_config=BRUSH_CONFIG)
    ls_client.import_storage.local.create(project=project.id, path=str(folder), title="slices")
    ls_client.projects.import_tasks(project.id, request=[
        {"image": f"/data/local-files/?d=push-at-scale/{i}.png"} for i in range(N_TASKS)])
    tasks = sorted(t.id for t in ls_client.tasks.list(project=project.id))
    for tid in tasks[:N_LABELED]:
        ls_client.annotations.create(tid, result=[])  # "no lesion"
    toml = work / "tsp.toml"
    toml.write_text(TOML.format(project_id=project.id, push_batch=PUSH_BATCH))
    info = {"project_id": project.id, "work": work, "tasks": tasks, "pool": tasks[N_LABELED:],
            "models": work / "work" / "models",
            "env": {"LABEL_STUDIO_URL": label_studio.url, "LABEL_STUDIO_API_KEY": label_studio.token,
                    "TSP_CONFIG": str(toml)}}
    pulled = run(info, "pull", "--project", "ich")
    assert pulled.exit_code == 0, pulled.output
    return info


_versions_made = {"n": 0}


def new_model(info: dict, version: str) -> str:
    """A new untrained checkpoint that is the newest file in model_dir (the current model)."""
    _versions_made["n"] += 1
    make_tiny_checkpoint(info["models"], name=f"{version}.pt", version=version, seed=_versions_made["n"],
                         detections=3, mtime=time.time() + _versions_made["n"])
    return version


def versions_by_task(client, project_id: int) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {}
    for p in client.predictions.list(project=project_id):
        out.setdefault(int(p.task), []).append(p.model_version)
    return out


def last_score(info: dict) -> dict:
    return json.loads((info["work"] / "work" / "state.json").read_text())["last_score"]


def assert_one_current_each(client, info: dict, version: str) -> None:
    final = versions_by_task(client, info["project_id"])
    bad = {t: final.get(t, []) for t in info["pool"] if final.get(t, []) != [version]}
    assert not bad, f"tasks without exactly one {version} prediction: {bad}"


def test_interrupted_push_of_several_batches_resumes(big, ls_client, monkeypatch):
    from label_studio_sdk.projects.client import ProjectsClient

    v1 = new_model(big, "tsp-push-v1")
    assert run(big, "score", "--project", "ich").exit_code == 0
    assert_one_current_each(ls_client, big, v1)

    v2 = new_model(big, "tsp-push-v2")
    real = ProjectsClient.import_predictions
    calls = {"n": 0}

    def third_answer_lost(self, *args, **kwargs):
        calls["n"] += 1
        answer = real(self, *args, **kwargs)  # Label Studio creates the batch ...
        if calls["n"] == 3:
            raise KeyboardInterrupt  # ... and the client is stopped before it hears so
        return answer

    monkeypatch.setattr(ProjectsClient, "import_predictions", third_answer_lost)
    assert run(big, "score", "--project", "ich").exit_code == 130
    monkeypatch.setattr(ProjectsClient, "import_predictions", real)

    mid = versions_by_task(ls_client, big["project_id"])
    for task in big["pool"]:
        assert mid[task].count(v1) == 1, task  # nothing old deleted before every new one exists
        assert mid[task].count(v2) <= 1, task
    assert sum(v2 in mid[t] for t in big["pool"]) == 3 * PUSH_BATCH  # the three batches sent, answered or not

    again = run(big, "score", "--project", "ich")
    assert again.exit_code == 0, again.output
    pool = len(big["pool"])
    assert f"{pool - 3 * PUSH_BATCH} predictions pushed ({3 * PUSH_BATCH} already current)" in again.output
    assert_one_current_each(ls_client, big, v2)


def test_interrupted_clean_up_and_stray_duplicates_are_finished_by_a_rerun(big, ls_client, monkeypatch):
    import tsp_cli.commands.score as score_mod
    from tsp_model.core.records import read_jsonl

    v3 = new_model(big, "tsp-push-v3")

    def stop(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(score_mod, "delete_model_version", stop)
    assert run(big, "score", "--project", "ich").exit_code == 130
    monkeypatch.undo()
    mid = versions_by_task(ls_client, big["project_id"])
    assert all(sorted(mid[t]) == ["tsp-push-v2", v3] for t in big["pool"])  # pushed, not yet cleaned

    # strays another client left: a copy of a current prediction, and one with a wrong score
    S = {int(r.image_id): r.S for r in read_jsonl(big["work"] / "work" / "scores" / f"{v3}.s1.jsonl")}
    a, b = big["pool"][:2]
    ls_client.projects.import_predictions(id=big["project_id"], request=[
        {"task": a, "result": [], "score": S[a], "model_version": v3},
        {"task": b, "result": [], "score": S[b] + 0.25, "model_version": v3}])

    again = run(big, "score", "--project", "ich")
    assert again.exit_code == 0, again.output
    assert "0 predictions pushed" in again.output
    assert_one_current_each(ls_client, big, v3)
    scores = {int(p.task): p.score for p in ls_client.predictions.list(project=big["project_id"])}
    assert scores[b] == pytest.approx(S[b], abs=1e-6)  # the stray with the wrong score went


def test_score_with_two_gloo_processes_writes_the_same_S_as_one(big, ls_client):
    from tsp_model.core.records import read_jsonl

    version = new_model(big, "tsp-push-gpus")
    two = run(big, "score", "--project", "ich", "--gpus", "2")
    assert two.exit_code == 0, two.output
    path = Path(last_score(big)["scores"])
    by_two = {int(r.image_id): r.S for r in read_jsonl(path)}
    assert [r.image_id for r in read_jsonl(path)] == big["pool"]  # pool order, every task once
    assert not list(path.parent.glob(f".{path.name}*"))  # shards and config merged away

    shutil.move(path, path.with_suffix(".two"))
    one = run(big, "score", "--project", "ich")
    assert one.exit_code == 0, one.output
    assert "0 predictions pushed" in one.output  # one process scored exactly what two had pushed
    by_one = {int(r.image_id): r.S for r in read_jsonl(path)}
    assert by_two.keys() == by_one.keys()
    assert by_two == pytest.approx(by_one, abs=1e-6)
    assert_one_current_each(ls_client, big, version)


# ------------------------------------------------------------------ retries through a flaky link
class FlakyLink(http.server.ThreadingHTTPServer):
    """Forwards HTTP to Label Studio, but answers the next requests whose path contains
    ``target`` with ``faults``: "503" answers 503, "reset" closes the connection unanswered,
    "lost" forwards the request and then closes the connection (the answer is lost)."""

    daemon_threads = True

    def __init__(self, upstream: str) -> None:
        super().__init__(("127.0.0.1", 0), _Forward)
        self.upstream = upstream
        self.target = ""
        self.faults: list[str] = []
        self.seen: list[tuple[str, str]] = []
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Forward(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # quiet
        pass

    def _any(self) -> None:
        import requests

        link: FlakyLink = self.server  # type: ignore[assignment]
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        with link.lock:
            link.seen.append((self.command, self.path))
            fault = link.faults.pop(0) if link.target and link.target in self.path and link.faults else None
        if fault == "reset":
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
            return
        if fault == "503":
            self.send_response(503)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
        r = requests.request(self.command, link.upstream + self.path, headers=headers, data=body, timeout=120)
        if fault == "lost":
            self.connection.shutdown(socket.SHUT_RDWR)
            self.close_connection = True
            return
        self.send_response(r.status_code)
        for k, v in r.headers.items():
            if k.lower() not in ("content-length", "content-encoding", "transfer-encoding", "connection"):
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(r.content)))
        self.end_headers()
        self.wfile.write(r.content)

    do_GET = do_POST = do_PATCH = do_DELETE = do_PUT = _any


@pytest.fixture
def flaky(label_studio, monkeypatch):
    import tsp_cli.client as client_mod

    monkeypatch.setattr(client_mod, "RETRY_DELAYS", (0.05, 0.05, 0.05))
    link = FlakyLink(label_studio.url)
    thread = threading.Thread(target=link.serve_forever, daemon=True)
    thread.start()
    yield link
    link.shutdown()
    link.server_close()


def _client_through(link: FlakyLink, token: str):
    from tsp_cli.client import connect
    from tsp_cli.settings import Secrets

    return connect(Secrets(url=link.url, api_key=token))


def test_listing_retries_503_and_reset_connections(big, flaky, label_studio):
    from tsp_cli.client import iter_tasks

    client = _client_through(flaky, label_studio.token)
    flaky.target, flaky.faults = "api/tasks", ["503", "reset", "503"]
    ids = [t["id"] for t in iter_tasks(client, big["project_id"], include="id", page_size=8)]
    assert ids == big["tasks"]
    assert flaky.faults == []  # all three faults were met, and retried past
    pages = [p for m, p in flaky.seen if m == "GET" and "api/tasks" in p]
    assert len(pages) == 3 + 4  # 30 tasks in pages of 8, plus one retry per fault


def test_import_is_not_retried_and_a_rerun_completes_it(big, flaky, label_studio, ls_client):
    from tsp_cli.client import LSProject, SyncError
    from tsp_cli.commands.score import push_predictions

    client = _client_through(flaky, label_studio.token)
    project = ls_client.projects.create(title="flaky push", label_config=BRUSH_CONFIG)
    ls_client.projects.import_tasks(project.id, request=[{"image": f"/data/local-files/?d=x/{i}.png"}
                                                         for i in range(5)])
    tasks = sorted(t.id for t in ls_client.tasks.list(project=project.id))
    lsp = LSProject(id=project.id, title="flaky push", label_config=BRUSH_CONFIG, model_version="", sampling="")
    preds = {t: {"result": [], "score": 0.1 * k, "model_version": "tsp-flaky"} for k, t in enumerate(tasks)}

    # the first batch of 2 reaches Label Studio, its answer does not
    flaky.target, flaky.faults = "import/predictions", ["lost"]
    with pytest.raises(SyncError, match="importing predictions"):
        push_predictions(client, lsp, preds, "tsp-flaky", batch_size=2, progress=False)
    assert sum(1 for m, p in flaky.seen if m == "POST" and "import/predictions" in p) == 1  # not resent
    assert sorted(versions_by_task(ls_client, project.id)) == tasks[:2]

    got = push_predictions(client, lsp, preds, "tsp-flaky", batch_size=2, progress=False)
    assert got == {"pushed": 3, "already": 2, "deleted": 0}
    assert versions_by_task(ls_client, project.id) == {t: ["tsp-flaky"] for t in tasks}


# ------------------------------------------------------------------ strategy changes and moved ranks
def test_push_replaces_on_strategy_change_and_rank_moves(label_studio, ls_client):
    """The same model under another strategy, and the same strategy on a new snapshot whose ranks
    moved: every task ends with exactly the new score."""
    from tsp_cli.client import LSProject, connect
    from tsp_cli.commands.score import push_predictions
    from tsp_cli.settings import Secrets

    project = ls_client.projects.create(title="strategy switch", label_config=BRUSH_CONFIG)
    ls_client.projects.import_tasks(project.id, request=[{"image": f"/data/local-files/?d=x/{i}.png"}
                                                         for i in range(3)])
    t10, t11, t12 = sorted(t.id for t in ls_client.tasks.list(project=project.id))
    client = connect(Secrets(url=label_studio.url, api_key=label_studio.token))
    lsp = LSProject(id=project.id, title="strategy switch", label_config=BRUSH_CONFIG, model_version="", sampling="")
    version = "tsp-test-v1"

    def preds(v: str, scores: dict[int, float]) -> dict[int, dict]:
        return {t: {"result": [], "score": s, "model_version": v} for t, s in scores.items()}

    def held() -> dict[int, list[tuple[str, float]]]:
        out: dict[int, list] = {}
        for p in ls_client.predictions.list(project=project.id):
            out.setdefault(int(p.task), []).append((p.model_version, pytest.approx(p.score, abs=1e-6)))
        return out

    S = {t10: 0.7, t11: 0.2, t12: 0.5}
    assert push_predictions(client, lsp, preds(version, S), version, progress=False) == \
        {"pushed": 3, "already": 0, "deleted": 0}
    assert push_predictions(client, lsp, preds(version, S), version, progress=False)["pushed"] == 0

    lsp.model_version = version
    ce = f"{version}+class_entropy"
    ranks = {t10: 0.0, t11: 2 / 3, t12: 1 / 3}
    assert push_predictions(client, lsp, preds(ce, ranks), ce, batch_size=2, progress=False) == \
        {"pushed": 3, "already": 0, "deleted": 3}
    assert held() == {t: [(ce, r)] for t, r in ranks.items()} and lsp.model_version == ce
    assert push_predictions(client, lsp, preds(ce, ranks), ce, progress=False)["pushed"] == 0  # idempotent

    # same model and strategy, a new snapshot: t12 was labeled, the others' ranks moved
    moved = {t10: 0.5, t11: 0.0}
    assert push_predictions(client, lsp, preds(ce, moved), ce, progress=False) == \
        {"pushed": 2, "already": 0, "deleted": 2}
    assert held() == {t10: [(ce, 0.5)], t11: [(ce, 0.0)], t12: [(ce, 1 / 3)]}

    # back to tsp: the bare version again, the ranked ones go
    assert push_predictions(client, lsp, preds(version, S), version, progress=False)["deleted"] == 3
    assert held() == {t: [(version, s)] for t, s in S.items()}

