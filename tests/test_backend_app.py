"""The backend's Flask app (tsp_backend.api.create_app) driven through Flask's test client."""

import base64
import json
import time

import numpy as np
import pytest
from label_studio_sdk.converter.brush import decode_rle

from tests.ls_fixtures import (
    BRUSH_CONFIG,
    CHOICES_CONFIG,
    POLYGON_CONFIG,
    UNKNOWN_LABELS_CONFIG,
    make_tiny_checkpoint,
    write_png,
)
from tsp_labelstudio.images import ImageSources
from tsp_backend.server import create_app


@pytest.fixture
def app_dir(tmp_path, monkeypatch):
    monkeypatch.delenv("LABEL_STUDIO_URL", raising=False)
    monkeypatch.delenv("LABEL_STUDIO_API_KEY", raising=False)
    monkeypatch.delenv("TSP_EVENTS_FILE", raising=False)
    for name in ("TSP_ALLOWED_URL_PREFIXES", "TSP_ALLOWED_DIRS", "TSP_MAX_REQUEST_MB", "TSP_MAX_IMAGE_PIXELS",
                 "TSP_PREDICT_TIMEOUT"):
        monkeypatch.delenv(name, raising=False)
    model_dir = tmp_path / "models"
    model_dir.mkdir()
    return model_dir


def _client(model_dir, url_prefixes=(), **kw):
    """The app with the test's folder (the model dir's parent, tmp_path) as the allowed image folder."""
    kw.setdefault("sources", ImageSources(dirs=[model_dir.parent], url_prefixes=url_prefixes))
    return create_app(model_dir, **kw).test_client()


def test_health_and_empty_predictions_before_any_checkpoint(app_dir, tmp_path, caplog):
    c = _client(app_dir)
    r = c.get("/health")
    assert r.status_code == 200 and r.get_json()["status"] == "UP"
    r = c.post("/setup", json={"project": "1.1", "schema": BRUSH_CONFIG})
    assert r.status_code == 200 and r.get_json()["model_version"] == "no-checkpoint"
    img = write_png(tmp_path / "a.png")
    r = c.post("/predict", json={"tasks": [{"id": 1, "data": {"image": str(img)}}], "label_config": BRUSH_CONFIG})
    assert r.status_code == 200 and r.get_json()["results"] == []
    assert "no checkpoint" in caplog.text


def test_setup_errors_name_the_tag_and_the_labels(app_dir):
    c = _client(app_dir)
    r = c.post("/setup", json={"project": "1.1", "schema": CHOICES_CONFIG})
    assert r.status_code == 400
    assert "no BrushLabels or PolygonLabels" in r.get_json()["detail"] and "Choices" in r.get_json()["detail"]
    make_tiny_checkpoint(app_dir)
    r = c.post("/setup", json={"project": "1.1", "schema": UNKNOWN_LABELS_CONFIG})
    assert r.status_code == 400 and "does not know: tumor" in r.get_json()["detail"]
    # the server keeps serving after refusing
    assert c.post("/setup", json={"project": "1.1", "schema": BRUSH_CONFIG}).get_json()["model_version"] == "tsp-test-v1"


@pytest.mark.parametrize("config", [BRUSH_CONFIG, POLYGON_CONFIG], ids=["brush", "polygon"])
def test_predict_with_tiny_checkpoint(app_dir, tmp_path, config):
    from pycocotools import mask as mask_utils

    from tsp_backend.model import CheckpointWatcher, infer_record
    from tsp_model.data.image_io import read_image

    make_tiny_checkpoint(app_dir)
    img = write_png(tmp_path / "slice.png", size=64, seed=3)
    c = _client(app_dir)
    r = c.post("/predict", json={"tasks": [{"id": 5, "data": {"image": str(img)}}], "label_config": config})
    assert r.status_code == 200, r.get_data(as_text=True)
    body = r.get_json()
    assert body["model_version"] == "tsp-test-v1"
    (pred,) = body["results"]
    assert pred["model_version"] == "tsp-test-v1"
    regions = pred["result"]
    assert regions, "box_score_thresh 0 should give regions"
    record = infer_record(CheckpointWatcher.for_dir(app_dir).current(), read_image(img))
    assert pred["score"] == pytest.approx(record.S)  # the score record's S_i, as tsp-sync pushes it
    expected = [i for i in record.instances
                if mask_utils.area({"size": i.mask["size"], "counts": i.mask["counts"].encode()}) > 0]
    for inst in expected:
        inst.mask = mask_utils.decode({"size": inst.mask["size"], "counts": inst.mask["counts"].encode()}) > 0
    if config is BRUSH_CONFIG:
        assert len(regions) == len(expected)
        for reg, inst in zip(regions, expected):
            assert reg["score"] == pytest.approx(inst.s)
            assert reg["value"]["brushlabels"] == [inst.category]
            decoded = decode_rle(reg["value"]["rle"]).reshape(64, 64, 4)[:, :, 3]
            np.testing.assert_array_equal(decoded > 0, inst.mask)
            assert reg["meta"]["text"][0].startswith(f"score {inst.s:.2f} = how sure the model is of this region")
            assert reg["meta"]["text"][0].endswith(f"class c {inst.c:.2f} · box b {inst.b:.2f} · mask m {inst.m:.2f}")
    else:
        for reg in regions:
            pts = np.asarray(reg["value"]["points"])
            assert pts.shape[1] == 2 and (pts >= 0).all() and (pts <= 100).all()


def test_bad_images_fail_their_task_only(app_dir, tmp_path):
    make_tiny_checkpoint(app_dir)
    good = write_png(tmp_path / "good.png")
    bad = tmp_path / "corrupt.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    tasks = [
        {"id": 1, "data": {"image": str(bad)}},
        {"id": 2, "data": {"image": str(good)}},
        {"id": 3, "data": {"image": "http://127.0.0.1:9/unreachable.png"}},
        {"id": 4, "data": {"image": "/data/upload/1/x.png"}},  # LS file but no LABEL_STUDIO_URL
    ]
    # port 9 is allowed here so that the fetch is tried and fails as unreachable
    r = _client(app_dir, url_prefixes=["http://127.0.0.1:9/"]).post(
        "/predict", json={"tasks": tasks, "label_config": BRUSH_CONFIG})
    assert r.status_code == 200
    res = r.get_json()["results"]
    assert len(res) == 4
    assert "result" not in res[0] and "corrupt.png" in res[0]["error"]
    assert "result" in res[1] and res[1]["model_version"] == "tsp-test-v1"
    assert "result" not in res[2] and "unreachable" in res[2]["error"]
    assert "result" not in res[3] and "LABEL_STUDIO_URL" in res[3]["error"]


def test_reloads_newer_checkpoint(app_dir):
    make_tiny_checkpoint(app_dir, name="a.pt", version="v-old", mtime=time.time() - 100)
    c = _client(app_dir)
    assert c.post("/setup", json={"schema": BRUSH_CONFIG}).get_json()["model_version"] == "v-old"
    make_tiny_checkpoint(app_dir, name="b.pt", version="v-new", seed=1)
    time.sleep(1.1)  # the watcher looks at the directory at most once a second
    assert c.post("/setup", json={"schema": BRUSH_CONFIG}).get_json()["model_version"] == "v-new"


def test_webhook_records_event_and_returns_at_once(app_dir):
    c = _client(app_dir)
    t = time.perf_counter()
    r = c.post("/webhook", json={"action": "ANNOTATION_CREATED", "project": {"id": 3},
                                 "task": {"id": 7}, "annotation": {"id": 9}})
    elapsed = time.perf_counter() - t
    assert r.status_code == 201 and elapsed < 1.0
    lines = (app_dir / "label_events.jsonl").read_text().splitlines()
    entry = json.loads(lines[-1])
    assert (entry["event"], entry["project"], entry["task"], entry["annotation"]) == ("ANNOTATION_CREATED", 3, 7, 9)
    assert c.post("/webhook", json={"action": "PROJECT_CREATED"}).status_code == 200
    assert len((app_dir / "label_events.jsonl").read_text().splitlines()) == 1


def test_basic_auth(app_dir, monkeypatch):
    monkeypatch.delenv("BASIC_AUTH_USER", raising=False)
    c = _client(app_dir, basic_auth=("ls", "s3cret"))
    assert c.get("/health").status_code == 401
    bad = base64.b64encode(b"ls:wrong").decode()
    assert c.get("/health", headers={"Authorization": f"Basic {bad}"}).status_code == 401
    good = base64.b64encode(b"ls:s3cret").decode()
    assert c.get("/health", headers={"Authorization": f"Basic {good}"}).status_code == 200
    # without credentials configured, the guard is gone again
    assert _client(app_dir).get("/health").status_code == 200
    monkeypatch.setenv("BASIC_AUTH_USER", "ls")
    monkeypatch.setenv("BASIC_AUTH_PASS", "s3cret")
    assert _client(app_dir).get("/health").status_code == 401


def test_image_fetcher_sends_a_legacy_token_as_token_header(tmp_path, monkeypatch):
    from tsp_labelstudio.images import ImageFetcher

    monkeypatch.delenv("LABEL_STUDIO_URL", raising=False)
    monkeypatch.delenv("LABEL_STUDIO_API_KEY", raising=False)
    f = ImageFetcher("http://ls:8080/", "legacy-key-123")
    assert f.resolve("/data/upload/1/a.png") == ("ls", "http://ls:8080/data/upload/1/a.png")
    # a non-JWT key is a legacy token: "Token <key>" (no network involved)
    assert f._auth_header() == {"Authorization": "Token legacy-key-123"}
    img = write_png(tmp_path / "p.png", size=32)
    arr = ImageFetcher(sources=ImageSources(dirs=[tmp_path])).read(str(img))
    assert arr.shape == (32, 32, 3) and arr.dtype == np.float32


def test_setup_and_predict_speak_label_studio_shapes(app_dir):
    """What Label Studio 1.23 reads: /setup's model_version, /predict's results list, /health's status."""
    c = _client(app_dir)
    assert c.get("/").get_json()["status"] == "UP" and c.get("/metrics").get_json() == {}
    make_tiny_checkpoint(app_dir)
    setup = {"project": "3.1700000000", "schema": BRUSH_CONFIG, "hostname": "http://localhost:8080",
             "access_token": "x" * 40, "extra_params": None}
    assert c.post("/setup", json=setup).get_json() == {"model_version": "tsp-test-v1"}
    r = c.post("/predict", json={"tasks": [], "project": "3.1700000000", "label_config": BRUSH_CONFIG,
                                 "params": {"login": None, "password": None, "context": None}})
    assert r.status_code == 200 and r.get_json() == {"results": [], "model_version": "tsp-test-v1"}
