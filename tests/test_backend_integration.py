"""End to end against a real Label Studio 1.23 and a real `tsp-backend` process.

Label Studio asks the backend for predictions the way the UI does (opening a task,
GET /api/tasks/{id}) and through the Data Manager action "Retrieve predictions"; the tests then
read what Label Studio stored and compare it with the backend's own inference on the same bytes.
"""

from __future__ import annotations

import numpy as np
import pytest
import requests
from label_studio_sdk.converter.brush import decode_rle

from tests.ls_fixtures import (
    BRUSH_CONFIG,
    CHOICES_CONFIG,
    POLYGON_CONFIG,
    UNKNOWN_LABELS_CONFIG,
    png_bytes,
    write_png,
)

pytestmark = pytest.mark.integration


def _auth_headers(client) -> dict[str, str]:
    # the SDK's client holds the PAT -> access token exchange
    return {"Authorization": client._client_wrapper.get_headers()["Authorization"]}


def _upload(label_studio, client, project_id: int, name: str, data: bytes) -> None:
    r = requests.post(f"{label_studio.url}/api/projects/{project_id}/import", headers=_auth_headers(client),
                      files={"file": (name, data, "image/png")}, timeout=60)
    assert r.status_code == 201, r.text


def _local_storage(client, project_id: int, directory) -> None:
    """Label Studio serves /data/local-files/ only under a project's Local Files storage path."""
    directory.mkdir(parents=True, exist_ok=True)
    client.import_storage.local.create(project=project_id, path=str(directory), title="local files")


def _connect(client, project_id: int, backend) -> object:
    return client.ml.create(project=project_id, url=backend["url"], title="TSP", auth_method="BASIC_AUTH",
                            basic_auth_user=backend["auth"][0], basic_auth_pass=backend["auth"][1])


def _retrieve_predictions(label_studio, client, project_id: int) -> None:
    r = requests.post(f"{label_studio.url}/api/dm/actions", params={"id": "retrieve_tasks_predictions",
                      "project": project_id}, json={"selectedItems": {"all": True, "excluded": []}},
                      headers=_auth_headers(client), timeout=300)
    assert r.status_code == 200, r.text


def _local_expected(backend, image: bytes, config: str):
    """What the backend computes for these bytes: the same checkpoint, the same code path."""
    from pycocotools import mask as mask_utils

    from tsp_backend.model import CheckpointWatcher, infer_record
    from tsp_labelstudio.regions import parse_label_config, prediction_for_task
    from tsp_model.data.image_io import read_image

    loaded = CheckpointWatcher.for_dir(backend["model_dir"], device="cpu").current()
    record = infer_record(loaded, read_image(image))
    target = parse_label_config(config, loaded.class_names)
    expected = prediction_for_task(record, target, model_version=loaded.model_version,
                                   show_threshold=loaded.config.active.show_threshold)
    for inst in record.instances:  # pixel masks for comparison
        inst.mask = mask_utils.decode({"size": inst.mask["size"], "counts": inst.mask["counts"].encode()}) > 0
    return record, expected


def _predictions(client, task_id: int):
    return list(client.predictions.list(task=task_id))


def test_brush_project_uploads_and_local_files(label_studio, ls_client, tsp_backend_server):
    backend = tsp_backend_server
    project = ls_client.projects.create(title="brush", label_config=BRUSH_CONFIG)
    up_bytes = png_bytes(64, seed=1)
    _upload(label_studio, ls_client, project.id, "upload.png", up_bytes)
    local = write_png(label_studio.files_root / "brush" / "local.png", size=64, seed=2)
    _local_storage(ls_client, project.id, label_studio.files_root / "brush")
    ls_client.projects.import_tasks(project.id, request=[{"image": "/data/local-files/?d=brush/local.png"}])
    ml = _connect(ls_client, project.id, backend)
    assert ml.state == "CO", ml

    tasks = sorted(ls_client.tasks.list(project=project.id), key=lambda t: t.id)
    assert len(tasks) == 2 and tasks[0].data["image"].startswith("/data/upload/")
    # as the UI does: opening a task makes Label Studio ask the backend for its prediction
    ls_client.tasks.get(tasks[0].id)
    _retrieve_predictions(label_studio, ls_client, project.id)  # and the rest, as the Data Manager action does

    for task, data in ((tasks[0], up_bytes), (tasks[1], local.read_bytes())):
        preds = _predictions(ls_client, task.id)
        assert len(preds) == 1, f"task {task.id}: {preds}"
        pred = preds[0]
        record, expected = _local_expected(backend, data, BRUSH_CONFIG)
        assert pred.model_version == "tsp-test-v1"
        regions = pred.result
        assert len(regions) == len(expected["result"]) > 0
        assert pred.score == pytest.approx(record.S, abs=1e-6)  # the score record's S_i
        drawn = [i for i in record.instances if i.mask.any()]
        for region, inst in zip(regions, drawn):
            assert region["type"] == "brushlabels" and region["value"]["brushlabels"] == [inst.category]
            mask = decode_rle(region["value"]["rle"]).reshape(64, 64, 4)[:, :, 3] > 0
            np.testing.assert_array_equal(mask, inst.mask)
            assert region["score"] == pytest.approx(inst.s, abs=1e-6)
            assert region["meta"]["text"] == [f"score {inst.s:.2f} = how sure the model is of this region (1 = sure): "
                                              f"class c {inst.c:.2f} · box b {inst.b:.2f} · mask m {inst.m:.2f}"]


def test_polygon_project(label_studio, ls_client, tsp_backend_server):
    backend = tsp_backend_server
    project = ls_client.projects.create(title="polygon", label_config=POLYGON_CONFIG)
    local = write_png(label_studio.files_root / "poly" / "a.png", size=64, seed=4)
    _local_storage(ls_client, project.id, label_studio.files_root / "poly")
    ls_client.projects.import_tasks(project.id, request=[{"image": "/data/local-files/?d=poly/a.png"}])
    assert _connect(ls_client, project.id, backend).state == "CO"
    (task,) = ls_client.tasks.list(project=project.id)
    ls_client.tasks.get(task.id)
    (pred,) = _predictions(ls_client, task.id)
    _, expected = _local_expected(backend, local.read_bytes(), POLYGON_CONFIG)
    assert pred.model_version == "tsp-test-v1"
    assert pred.score == pytest.approx(expected["score"], abs=1e-6)
    assert len(pred.result) == len(expected["result"]) > 0
    for got, want in zip(pred.result, expected["result"]):
        assert got["type"] == "polygonlabels"
        assert got["value"]["polygonlabels"] == want["value"]["polygonlabels"]
        np.testing.assert_allclose(got["value"]["points"], want["value"]["points"], atol=1e-3)
        assert got["score"] == pytest.approx(want["score"], abs=1e-6)


def test_bad_images_fail_alone_and_server_keeps_serving(label_studio, ls_client, tsp_backend_server):
    backend = tsp_backend_server
    project = ls_client.projects.create(title="bad images", label_config=BRUSH_CONFIG)
    write_png(label_studio.files_root / "bad" / "good.png", seed=5)
    (label_studio.files_root / "bad" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\ntruncated")
    _local_storage(ls_client, project.id, label_studio.files_root / "bad")
    ls_client.projects.import_tasks(project.id, request=[
        {"image": "/data/local-files/?d=bad/corrupt.png"},
        {"image": "/data/local-files/?d=bad/good.png"},
        {"image": "http://127.0.0.1:9/unreachable.png"},
        {"image": "/data/local-files/?d=bad/missing.png"},
    ])
    assert _connect(ls_client, project.id, backend).state == "CO"
    _retrieve_predictions(label_studio, ls_client, project.id)
    tasks = sorted(ls_client.tasks.list(project=project.id), key=lambda t: t.id)
    counts = [len(_predictions(ls_client, t.id)) for t in tasks]
    assert counts == [0, 1, 0, 0]
    log = backend["log"].read_text()
    assert "corrupt.png" in log and "unreachable" in log and "HTTP 404" in log
    assert requests.get(backend["url"] + "/health", auth=backend["auth"], timeout=5).json()["status"] == "UP"


@pytest.mark.parametrize("config,needle", [(CHOICES_CONFIG, "no BrushLabels or PolygonLabels"),
                                           (UNKNOWN_LABELS_CONFIG, "does not know: tumor")],
                         ids=["no-tag", "unknown-labels"])
def test_wrong_label_config(label_studio, ls_client, tsp_backend_server, config, needle):
    from label_studio_sdk.core.api_error import ApiError

    backend = tsp_backend_server
    project = ls_client.projects.create(title="wrong config", label_config=config)
    # Label Studio validates the connection with /setup and refuses it, pointing to the backend log
    with pytest.raises(ApiError) as info:
        _connect(ls_client, project.id, backend)
    assert info.value.status_code == 400 and "valid ML backend" in str(info.value.body)
    r = requests.post(backend["url"] + "/setup", json={"project": f"{project.id}.0", "schema": config},
                      auth=backend["auth"], timeout=30)
    assert r.status_code == 400 and needle in r.json()["detail"]
    assert requests.get(backend["url"] + "/health", auth=backend["auth"], timeout=5).status_code == 200


def test_bad_token_is_a_clear_error(label_studio, ls_client):
    from tsp_labelstudio.images import ImageFetcher, ImageFetchError

    project = ls_client.projects.create(title="token", label_config=BRUSH_CONFIG)
    _upload(label_studio, ls_client, project.id, "t.png", png_bytes(64, seed=6))
    (task,) = ls_client.tasks.list(project=project.id)
    url = task.data["image"]
    assert ImageFetcher(label_studio.url, label_studio.token).read(url).shape == (64, 64, 3)
    with pytest.raises(ImageFetchError, match="answered 401.*LABEL_STUDIO_API_KEY"):
        ImageFetcher(label_studio.url, "not-a-real-token").read(url)
    forged = label_studio.token[:-4] + ("AAAA" if not label_studio.token.endswith("AAAA") else "BBBB")
    with pytest.raises(ImageFetchError, match="LABEL_STUDIO_API_KEY"):
        ImageFetcher(label_studio.url, forged).read(url)


def test_backend_with_bad_token_answers_per_task_error(label_studio, ls_client, tmp_path, monkeypatch):
    from tests.ls_fixtures import make_tiny_checkpoint
    from tsp_backend.server import create_app

    project = ls_client.projects.create(title="bad token backend", label_config=BRUSH_CONFIG)
    _upload(label_studio, ls_client, project.id, "t.png", png_bytes(64, seed=7))
    (task,) = ls_client.tasks.list(project=project.id)
    make_tiny_checkpoint(tmp_path)
    monkeypatch.setenv("LABEL_STUDIO_URL", label_studio.url)
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", "not-a-real-token")
    monkeypatch.delenv("BASIC_AUTH_USER", raising=False)
    client = create_app(tmp_path).test_client()
    body = {"tasks": [{"id": task.id, "data": task.data}], "label_config": BRUSH_CONFIG}
    (res,) = client.post("/predict", json=body).get_json()["results"]
    assert "result" not in res and "answered 401" in res["error"] and "LABEL_STUDIO_API_KEY" in res["error"]
    assert client.get("/health").status_code == 200


def test_webhook_is_recorded(label_studio, tsp_backend_server):
    backend = tsp_backend_server
    r = requests.post(backend["url"] + "/webhook", auth=backend["auth"], timeout=10,
                      json={"action": "ANNOTATION_CREATED", "project": {"id": 424242}, "task": {"id": 2},
                            "annotation": {"id": 3}})
    assert r.status_code == 201 and r.elapsed.total_seconds() < 2
    assert '"event": "ANNOTATION_CREATED"' in (backend["model_dir"] / "label_events.jsonl").read_text()


def test_annotation_webhook_from_label_studio_is_recorded(label_studio, ls_client, tsp_backend_server):
    """Label Studio creates a webhook to <backend>/webhook on connect; with basic auth on, the
    webhook needs the Authorization header added (as docs/backend.md says)."""
    import base64

    from tests.ls_fixtures import wait_for

    backend = tsp_backend_server
    project = ls_client.projects.create(title="webhook", label_config=BRUSH_CONFIG)
    ls_client.projects.import_tasks(project.id, request=[{"image": "http://127.0.0.1:9/none.png"}])
    assert _connect(ls_client, project.id, backend).state == "CO"
    hooks = [h for h in ls_client.webhooks.list(project=str(project.id)) if h.url.endswith("/webhook")]
    assert len(hooks) == 1, hooks
    basic = base64.b64encode(":".join(backend["auth"]).encode()).decode()
    ls_client.webhooks.update(hooks[0].id, url=hooks[0].url, headers={"Authorization": f"Basic {basic}"})
    (task,) = ls_client.tasks.list(project=project.id)
    ls_client.annotations.create(task.id, result=[], project=project.id)
    events = backend["model_dir"] / "label_events.jsonl"

    def recorded():
        if not events.exists():
            return False
        return any(f'"project": {project.id}' in line and "ANNOTATION_CREATED" in line
                   for line in events.read_text().splitlines())

    wait_for(recorded, timeout=30)
