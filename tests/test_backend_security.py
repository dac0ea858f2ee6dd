"""Issue 16, tried as a security reviewer would: a real Label Studio 1.23 and real `tsp-backend`
processes on 127.0.0.1.

The module's backend runs at LOG_LEVEL=DEBUG with basic auth, Label Studio's URL and token, one
allowed folder, one allowed URL prefix (served by a recording HTTP server, so the tests see every
request the backend makes there), a 1 MiB request limit, and label-studio-ml, redis and rq made
unimportable (tests/import_guard).
"""

from __future__ import annotations

import base64
import http.server
import importlib.metadata
import io
import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from tests.ls_fixtures import BRUSH_CONFIG, BackendProcess, make_tiny_checkpoint, png_bytes, write_png

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]
AUTH = ("ls-ml", "auth-Secret-7731")
NOT_INSTALLED = "label_studio_ml,redis,rq"


class Recorder:
    """A threaded HTTP server on 127.0.0.1 answering ``routes`` and recording every request."""

    def __init__(self) -> None:
        self.routes: dict[str, tuple[int, dict[str, str], bytes]] = {}
        self.requests: list[tuple[str, dict[str, str]]] = []
        recorder = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                recorder.requests.append((self.path, dict(self.headers)))
                status, headers, body = recorder.routes.get(self.path, (404, {}, b"not here"))
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def paths(self) -> list[str]:
        return [p for p, _ in self.requests]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def places(tmp_path_factory):
    """``allowed/`` (the allowed folder) and ``outside/`` with PNGs, and symlinks leading out."""
    root = tmp_path_factory.mktemp("files")
    allowed, outside = root / "allowed", root / "outside"
    write_png(allowed / "slice.png", seed=1)
    write_png(outside / "slice.png", seed=2)
    (allowed / "sub").mkdir()
    (allowed / "link-out.png").symlink_to(outside / "slice.png")
    (allowed / "link-missing.png").symlink_to(outside / "missing.png")
    return {"root": root, "allowed": allowed, "outside": outside}


@pytest.fixture(scope="module")
def web(label_studio):
    """``files`` (its ``/allowed/`` is an allowed prefix) and ``other`` (allowed nowhere)."""
    files, other = Recorder(), Recorder()
    png = ({"Content-Type": "image/png"}, png_bytes(64, seed=3))
    files.routes.update({
        "/allowed/slice.png": (200, *png),
        "/secret/slice.png": (200, *png),
        "/allowed/to-allowed": (302, {"Location": "/allowed/slice.png"}, b""),
        "/allowed/to-secret": (302, {"Location": "/secret/slice.png"}, b""),
        "/allowed/to-ls-api": (302, {"Location": f"{label_studio.url}/api/current-user/whoami"}, b""),
        "/allowed/to-other": (302, {"Location": f"{other.url}/slice.png"}, b""),
        "/allowed/to-file": (302, {"Location": "file:///etc/passwd"}, b""),
    })
    other.routes["/slice.png"] = (200, *png)
    yield {"files": files, "other": other}
    files.close()
    other.close()


@pytest.fixture(scope="module")
def backend(tmp_path_factory, label_studio, places, web):
    model_dir = tmp_path_factory.mktemp("security-models")
    make_tiny_checkpoint(model_dir, size=64, detections=4)
    env = {
        "LABEL_STUDIO_URL": label_studio.url, "LABEL_STUDIO_API_KEY": label_studio.token,
        "BASIC_AUTH_USER": AUTH[0], "BASIC_AUTH_PASS": AUTH[1], "LOG_LEVEL": "DEBUG",
        "TSP_ALLOWED_DIRS": str(places["allowed"]), "TSP_ALLOWED_URL_PREFIXES": f"{web['files'].url}/allowed/",
        "TSP_MAX_REQUEST_MB": "1",
        "PYTHONPATH": str(ROOT / "tests" / "import_guard"), "TSP_TEST_DENY_MODULES": NOT_INSTALLED,
    }
    proc = BackendProcess(model_dir, env, model_dir.parent / "security-backend.log", auth=AUTH).start()
    yield proc
    proc.stop()


@pytest.fixture
def fresh(web):
    for server in web.values():
        server.requests.clear()
    return web


def predict(backend: BackendProcess, urls: list[str], **extra) -> list[dict]:
    tasks = [{"id": i + 1, "data": {"image": u}} for i, u in enumerate(urls)]
    r = requests.post(backend.url + "/predict", auth=AUTH, timeout=300,
                      json={"tasks": tasks, "label_config": BRUSH_CONFIG, "project": "1.1700000000", **extra})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert len(results) == len(urls)
    return results


def refusal(result: dict, url: str, setting: str) -> str:
    """The refusal text with the URL taken out; fails unless the task was refused naming ``setting``."""
    assert "result" not in result, result
    error = result["error"]
    assert setting in error and "not an allowed image source" in error, error
    assert len(error.splitlines()) == 1
    return error.split(": ", 1)[1].replace(url, "<url>")


# ---- 1. local files ---------------------------------------------------------------------------
def test_local_files_outside_the_allowed_folders_are_refused_alike(backend, places):
    allowed, outside = places["allowed"], places["outside"]
    refused = [
        "file:///etc/passwd", "/etc/shadow", "/proc/self/environ",
        str(outside / "slice.png"),                                   # an image, outside
        str(outside / "missing.png"),                                 # missing, outside
        f"file://{outside / 'slice.png'}",
        f"{allowed}/../outside/slice.png",                            # traversal
        f"{allowed}/sub/../../outside/missing.png",
        str(allowed / "link-out.png"),                                # a symlink leading out
        str(allowed / "link-missing.png"),
        f"file://localhost{outside / 'slice.png'}",
    ]
    ok = [str(allowed / "slice.png"), f"file://{allowed / 'slice.png'}", f"{allowed}/sub/../slice.png"]
    results = predict(backend, refused + ok)
    answers = {refusal(r, url, "TSP_ALLOWED_DIRS") for r, url in zip(results, refused)}
    assert len(answers) == 1, answers  # existing or not, image or not: the same answer
    for r in results[len(refused):]:
        assert r.get("result"), r
    log = backend.log_path.read_text()
    assert "not a recognized image format" not in log and "local file not found" not in log


# ---- 2. other hosts and ports, Label Studio's API -----------------------------------------------
def test_urls_outside_the_allow_list_are_never_requested(backend, fresh, label_studio):
    files, other = fresh["files"], fresh["other"]
    ls_port = int(label_studio.url.rsplit(":", 1)[1])
    refused = [
        f"{other.url}/slice.png",                                     # another port of this host
        f"{files.url}/secret/slice.png",                              # the allowed host, outside the prefix
        f"{files.url}/allowed/../secret/slice.png",
        f"{files.url}/allowed/%2e%2e/secret/slice.png",
        f"{files.url}/allowed%2F..%2Fsecret/slice.png",
        f"{files.url}/allowed-old/slice.png",
        f"http://user:pw@127.0.0.1:{files.port}/allowed/slice.png",
        f"http://localhost:{files.port}/allowed/slice.png",           # not the listed spelling
        f"https://127.0.0.1:{files.port}/allowed/slice.png",
        f"http://127.0.0.1:{ls_port + 1}/data/upload/1/a.png",        # Label Studio's host, another port
        "http://169.254.169.254/latest/meta-data/",
    ]
    results = predict(backend, refused + [f"{files.url}/allowed/slice.png"])
    for r, url in zip(results, refused):
        refusal(r, url, "TSP_ALLOWED_URL_PREFIXES")
    assert results[-1].get("result"), results[-1]
    assert other.requests == []
    assert files.paths() == ["/allowed/slice.png"]
    assert all("Authorization" not in h and "authorization" not in h for _, h in files.requests)
    for scheme_url in ("gopher://127.0.0.1:6379/_INFO", "ftp://127.0.0.1/x.png", "s3://bucket/x.png"):
        (r,) = predict(backend, [scheme_url])
        assert "result" not in r and "unsupported URL scheme" in r["error"] and "TSP_ALLOWED_URL_PREFIXES" in r["error"]


def test_label_studio_api_paths_are_refused_and_uploads_still_work(backend, label_studio, ls_client):
    project = ls_client.projects.create(title="security", label_config=BRUSH_CONFIG)
    headers = {"Authorization": ls_client._client_wrapper.get_headers()["Authorization"]}
    r = requests.post(f"{label_studio.url}/api/projects/{project.id}/import", headers=headers, timeout=60,
                      files={"file": ("u.png", png_bytes(64, seed=4), "image/png")})
    assert r.status_code == 201, r.text
    (task,) = ls_client.tasks.list(project=project.id)
    upload = task.data["image"]
    assert upload.startswith("/data/upload/")
    ls = label_studio.url
    refused = [
        f"{ls}/api/projects/", f"{ls}/api/current-user/whoami", f"{ls}/api/projects/{project.id}/next",
        f"{ls}/data/upload/../../api/current-user/whoami", "/data/upload/../../api/current-user/whoami",
        "/data/upload/%2E%2E/%2E%2E/api/projects/", "/data/avatars/x.png", "/data/../api/projects/",
        f"{ls.replace('127.0.0.1', 'localhost')}{upload}",
    ]
    results = predict(backend, refused + [upload, f"{ls}{upload}"])
    for r, url in zip(results, refused):
        refusal(r, url, "TSP_ALLOWED_URL_PREFIXES")
    assert results[-2].get("result") and results[-1].get("result")  # the token still reaches uploads


def test_each_redirect_hop_is_checked(backend, fresh):
    files, other = fresh["files"], fresh["other"]
    refused = {"to-secret": "TSP_ALLOWED_URL_PREFIXES", "to-ls-api": "TSP_ALLOWED_URL_PREFIXES",
               "to-other": "TSP_ALLOWED_URL_PREFIXES", "to-file": "TSP_ALLOWED_URL_PREFIXES"}
    urls = [f"{files.url}/allowed/{name}" for name in refused] + [f"{files.url}/allowed/to-allowed"]
    results = predict(backend, urls)
    for r, url, setting in zip(results, urls, refused.values()):
        assert "result" not in r and "redirected to" in r["error"] and setting in r["error"], r
    assert results[-1].get("result"), results[-1]
    assert other.requests == [] and "/secret/slice.png" not in files.paths()
    assert all("Authorization" not in h for _, h in files.requests)


# ---- 3. routes ----------------------------------------------------------------------------------
def test_no_train_route_and_unknown_routes_answer_404(backend, tmp_path):
    escape = "../" * 12 + str(tmp_path).lstrip("/") + "/rel"
    for project in (escape, str(tmp_path / "abs")):
        body = {"project": project, "annotations": [{"data": {"image": "x"}}], "label_config": BRUSH_CONFIG}
        for method in ("POST", "GET"):
            r = requests.request(method, backend.url + "/train", json=body, auth=AUTH, timeout=30)
            assert r.status_code == 404 and "/predict" in r.json()["detail"], r.text
    for method, path in [("GET", "/versions"), ("POST", "/job_status"), ("POST", "/duplicate_model"),
                         ("POST", "/delete"), ("GET", "/static/app.js"), ("GET", "/health/../train")]:
        r = requests.request(method, backend.url + path, json={}, auth=AUTH, timeout=30)
        assert r.status_code == 404, (path, r.status_code, r.text)
    assert requests.post(backend.url + "/train", json={}, timeout=30).status_code == 401  # auth first
    assert list(tmp_path.rglob("*")) == []
    assert sorted(p.name for p in backend.model_dir.iterdir() if p.name != "label_events.jsonl") == ["tiny.pt"]
    health = requests.get(backend.url + "/health", auth=AUTH, timeout=10)
    assert health.json()["status"] == "UP"
    assert str(backend.model_dir) not in health.text and backend.model_dir.name not in health.text


# ---- 4. the web stack ---------------------------------------------------------------------------
def test_backend_runs_on_a_maintained_stack_without_label_studio_ml(backend):
    from packaging.version import Version

    # the first releases without published advisories (Flask CVE-2023-30861, CVE-2026-27205;
    # Werkzeug CVE-2023-25577, CVE-2023-46136, CVE-2024-49766/49767, CVE-2025-66221,
    # CVE-2026-21860, CVE-2026-27199; Jinja2 CVE-2025-27516; gunicorn CVE-2024-1135, CVE-2024-6827)
    floors = {"flask": "3.1.3", "werkzeug": "3.1.6", "jinja2": "3.1.6", "gunicorn": "23.0.0"}
    for name, floor in floors.items():
        assert Version(importlib.metadata.version(name)) >= Version(floor), name
    requires = importlib.metadata.requires("tsp-al") or []
    assert not [r for r in requires if r.lower().startswith(("label-studio-ml", "redis", "rq"))], requires
    # this backend cannot import label-studio-ml, redis or rq, and serves
    assert backend.env["TSP_TEST_DENY_MODULES"] == NOT_INSTALLED
    r = requests.post(backend.url + "/setup", auth=AUTH, timeout=60, json={"project": "1.1", "schema": BRUSH_CONFIG})
    assert r.status_code == 200 and r.json()["model_version"] == "tsp-test-v1"


# ---- 5. secrets in DEBUG logs -------------------------------------------------------------------
def test_debug_log_holds_no_credential(backend, places, label_studio):
    setup_token, predict_token, task_password = "setupTok-9f8e7d6c5b4a", "predictTok-1a2b3c4d5e6f", "taskPw-77aa88bb"
    basic = base64.b64encode(f"{AUTH[0]}:{AUTH[1]}".encode()).decode()
    wrong = ("ls-ml", "wrongPw-31337xyz")
    requests.get(backend.url + "/health", auth=AUTH, timeout=10).raise_for_status()
    assert requests.get(backend.url + "/health", auth=wrong, timeout=10).status_code == 401
    r = requests.post(backend.url + "/setup", auth=AUTH, timeout=60, json={
        "project": "1.1700000000", "schema": BRUSH_CONFIG, "hostname": label_studio.url,
        "access_token": setup_token, "extra_params": None})
    assert r.status_code == 200
    results = predict(backend, [str(places["allowed"] / "slice.png"), "/data/upload/999/missing.png"],
                      access_token=predict_token,
                      params={"login": "radiologist", "password": task_password, "context": None})
    # the second went to Label Studio with an access token made from the PAT (it has no such file)
    assert results[0].get("result") and "missing.png: HTTP " in results[1]["error"], results[1]
    log = backend.log_path.read_text()
    assert " DEBUG " in log  # the level was on
    for secret in (AUTH[1], basic, wrong[1], setup_token, predict_token, task_password, label_studio.token):
        assert secret not in log, f"{secret[:6]}... found in the backend log"
    assert "eyJ" not in log  # no JWT: neither the PAT nor an access token made from it


# ---- 6. limits ----------------------------------------------------------------------------------
def test_oversized_request_bodies_get_413(backend):
    body = json.dumps({"tasks": [{"id": 1, "data": {"image": "x" * (2 << 20)}}]}).encode()
    r = requests.post(backend.url + "/predict", data=body, auth=AUTH, timeout=60,
                      headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and "TSP_MAX_REQUEST_MB" in r.json()["detail"], r.text

    def chunks():  # no Content-Length: the limit holds while reading
        for i in range(0, len(body), 1 << 16):
            yield body[i:i + (1 << 16)]

    r = requests.post(backend.url + "/predict", data=chunks(), auth=AUTH, timeout=60,
                      headers={"Content-Type": "application/json"})
    assert r.status_code == 413, r.text
    assert requests.get(backend.url + "/health", auth=AUTH, timeout=10).status_code == 200


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def test_decompression_bomb_is_refused_from_its_header(backend, places):
    bomb = places["allowed"] / "bomb.png"
    buf = io.BytesIO()
    Image.fromarray(np.zeros((8000, 8000), np.uint8)).save(buf, format="PNG")
    bomb.write_bytes(buf.getvalue())
    assert bomb.stat().st_size < 1 << 20  # 64 megapixels in under a megabyte
    (worker,) = backend.worker_pids()
    predict(backend, [str(places["allowed"] / "slice.png")])  # the model is loaded and has run once
    before = _peak_rss_mb(worker)
    (r,) = predict(backend, [str(bomb)])
    assert "result" not in r and "8000x8000" in r["error"] and "TSP_MAX_IMAGE_PIXELS" in r["error"], r
    # decoding would have taken >= 64 MB (uint8) and 768 MB (float32 RGB); the header costs nothing
    assert _peak_rss_mb(worker) - before < 48, (before, _peak_rss_mb(worker))


def test_predict_stops_at_its_time_limit_and_answers_every_task(tmp_path, places):
    make_tiny_checkpoint(tmp_path / "models", size=64, detections=4)
    env = {"TSP_ALLOWED_DIRS": str(places["allowed"]), "TSP_PREDICT_TIMEOUT": "2"}
    proc = BackendProcess(tmp_path / "models", env, tmp_path / "backend.log").start()
    try:
        r = requests.post(proc.url + "/setup", json={"schema": BRUSH_CONFIG}, timeout=60)  # loads the model
        assert r.status_code == 200
        n = 300
        tasks = [{"id": i, "data": {"image": str(places["allowed"] / "slice.png")}} for i in range(n)]
        t0 = time.monotonic()
        r = requests.post(proc.url + "/predict", json={"tasks": tasks, "label_config": BRUSH_CONFIG}, timeout=300)
        elapsed = time.monotonic() - t0
    finally:
        proc.stop()
    results = r.json()["results"]
    assert len(results) == n
    done = sum("result" in x for x in results)
    assert 0 < done < n, done
    assert all("result" in x for x in results[:done])  # the late ones form the tail
    for x in results[done:]:
        assert "TSP_PREDICT_TIMEOUT" in x["error"] and "time limit" in x["error"], x
    assert elapsed < 2 + 20, elapsed


# ---- 8. invalid JSON ----------------------------------------------------------------------------
@pytest.mark.parametrize("path", ["/predict", "/setup", "/webhook"])
def test_invalid_json_is_a_400_saying_so(backend, path):
    for body, ctype in ((b'{"tasks": [', "application/json"), (b"tasks=1", "application/x-www-form-urlencoded"),
                        (b"\xff\xfe", "application/json")):
        r = requests.post(backend.url + path, data=body, auth=AUTH, timeout=30, headers={"Content-Type": ctype})
        assert r.status_code == 400 and "not JSON" in r.json()["detail"], (path, body, r.text)
    r = requests.post(backend.url + path, json=[1, 2], auth=AUTH, timeout=30)
    assert r.status_code == 400 and "not an object" in r.json()["detail"]
