"""`tsp-sync` end to end against a real Label Studio 1.23 (the session's `label_studio` fixture).

A project of 12 generated head-CT phantoms (64 px): 5 tasks annotated through the API as brush
RLE from the generator's ground truth (negative slices give an empty annotation: "no lesion"),
1 task skipped (a cancelled annotation), the rest unlabeled. `tsp-sync cycle` runs with a tiny_fpn
model for one epoch; the tests then read what Label Studio holds.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from pycocotools import mask as mask_utils

from tests.ls_fixtures import BRUSH_CONFIG, CHOICES_CONFIG, POLYGON_CONFIG

pytestmark = [pytest.mark.integration, pytest.mark.slow]

N_IMAGES = 12
N_ANNOTATED = 5
SKIPPED_INDEX = 5  # task index that gets a cancelled annotation
SIZE = 64

TSP_TOML = """
[projects.ich]
label_studio_project = {project_id}
workdir = "work"
holdout_fraction = 0.25
push_batch = 3

[projects.ich.model]
backbone = "tiny_fpn"
min_size = 64
max_size = 64
box_score_thresh = 0.0
box_detections_per_img = 5

[projects.ich.train]
epochs = 1
batch_size = 2
workers = 0
amp = false
device = "cpu"
lr = 0.001

[projects.ich.score]
workers = 0
batch_size = 4
amp = false

[projects.ich.active]
show_threshold = 0.0  # a 1-epoch model's c is low: show every detection, so regions can be checked
"""


def brush_results(coco: dict, image_id: int, from_name: str = "lesion", to_name: str = "image") -> list[dict]:
    """Label Studio brush regions for one generated image's ground-truth masks."""
    from label_studio_sdk.converter.brush import mask2rle

    names = {c["id"]: c["name"] for c in coco["categories"]}
    out = []
    for k, ann in enumerate(a for a in coco["annotations"] if a["image_id"] == image_id):
        seg = dict(ann["segmentation"])
        seg["counts"] = seg["counts"].encode("ascii")
        mask = mask_utils.decode(seg).astype(np.uint8) * 255
        out.append({
            "id": f"gt{k}", "type": "brushlabels", "from_name": from_name, "to_name": to_name,
            "original_width": SIZE, "original_height": SIZE, "image_rotation": 0,
            "value": {"format": "rle", "rle": [int(v) for v in mask2rle(mask)], "brushlabels": [names[ann["category_id"]]]},
        })
    return out


def build_project(client, files_root: Path, work: Path, title: str = "ICH sync") -> dict:
    """Generate phantoms, serve them as local files, create and partly annotate the project."""
    from tsp_model.synth.phantom import generate_phantoms

    src = generate_phantoms(work / "phantoms", N_IMAGES, size=SIZE, seed=11, lesion_rate=0.7, progress=False)
    coco = json.loads(src.read_text())
    folder = files_root / title.replace(" ", "_")
    shutil.copytree(src.parent / "images", folder)
    project = client.projects.create(title=title, label_config=BRUSH_CONFIG)
    client.import_storage.local.create(project=project.id, path=str(folder), title="phantoms")
    rel = folder.relative_to(files_root)
    client.projects.import_tasks(project.id, request=[
        {"image": f"/data/local-files/?d={rel}/{Path(im['file_name']).name}", "phantom_id": im["id"]}
        for im in coco["images"]
    ])
    tasks = sorted(client.tasks.list(project=project.id), key=lambda t: t.id)
    assert len(tasks) == N_IMAGES
    by_phantom = {t.data["phantom_id"]: t.id for t in tasks}
    labeled = {}
    for im in coco["images"][:N_ANNOTATED]:
        result = brush_results(coco, im["id"])
        client.annotations.create(by_phantom[im["id"]], result=result)
        labeled[by_phantom[im["id"]]] = len(result)
    skipped = by_phantom[coco["images"][SKIPPED_INDEX]["id"]]
    client.annotations.create(skipped, result=[], was_cancelled=True)
    return {"project_id": project.id, "coco": coco, "labeled": labeled, "skipped": skipped,
            "pool": sorted(set(by_phantom.values()) - set(labeled)), "by_phantom": by_phantom}


def current_predictions(client, project_id: int) -> dict[int, list]:
    out: dict[int, list] = {}
    for p in client.predictions.list(project=project_id):
        out.setdefault(int(p.task), []).append(p)
    return out


def next_task(label_studio, client, project_id: int) -> dict:
    import requests

    headers = {"Authorization": client._client_wrapper.get_headers()["Authorization"]}
    r = requests.get(f"{label_studio.url}/api/projects/{project_id}/next", headers=headers, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()


def tree_digest(folder: Path) -> str:
    h = hashlib.sha1()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(folder)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def configured_project(label_studio, ls_client, work: Path, toml_template: str, **kwargs) -> dict:
    """build_project + its tsp.toml + the environment `tsp-sync` runs with."""
    info = build_project(ls_client, label_studio.files_root, work, **kwargs)
    toml = work / "tsp.toml"
    toml.write_text(toml_template.format(project_id=info["project_id"]))
    info.update(work=work, toml=toml,
                env={"LABEL_STUDIO_URL": label_studio.url, "LABEL_STUDIO_API_KEY": label_studio.token,
                     "TSP_CONFIG": str(toml)})
    return info


@pytest.fixture(scope="module")
def ich(label_studio, ls_client, tmp_path_factory):
    return configured_project(label_studio, ls_client, tmp_path_factory.mktemp("tsp-sync"), TSP_TOML)


def run(ich, *args, env=None):
    """``tsp-sync ARGS`` in-process, from the test's work folder (``--project <id>`` defaults there)."""
    from tsp_cli.main import cli

    with contextlib.chdir(ich["work"]):
        return CliRunner().invoke(cli, ["--no-progress", *args], env=env or ich["env"], catch_exceptions=False)


@pytest.fixture(scope="module")
def cycled(ich):
    result = run(ich, "cycle", "--project", "ich")
    assert result.exit_code == 0, result.output
    return result


def test_cycle_pushes_one_current_prediction_per_unlabeled_task(ich, cycled, ls_client):
    state = json.loads((ich["work"] / "work" / "state.json").read_text())
    version = state["last_cycle"]["model_version"]
    assert version.startswith("tsp-")
    assert (ich["work"] / "work" / "models" / f"{version}.pt").is_file()
    snap = state["last_cycle"]
    assert snap["labeled"] == N_ANNOTATED and snap["pool"] == N_IMAGES - N_ANNOTATED
    assert "model_version" in cycled.output and "top of queue" in cycled.output

    from tsp_model.core.records import read_jsonl

    S = {int(r.image_id): r.S for r in read_jsonl(state["last_score"]["scores"])}
    preds = current_predictions(ls_client, ich["project_id"])
    for task in ich["pool"]:  # the skipped task is in the pool too
        assert len(preds.get(task, [])) == 1, f"task {task}: {preds.get(task)}"
        (p,) = preds[task]
        assert p.model_version == version
        # the queue Label Studio serves is exactly the score file's S_i
        assert p.score == pytest.approx(S[task], abs=1e-9)
    for task in ich["labeled"]:  # a prediction for its cluster: Label Studio counts labeled tasks per cluster
        assert [p.model_version for p in preds[task]] == [version]
    clusters = {t: ps[0].cluster for t, ps in preds.items()}
    assert all(c is not None for c in clusters.values())
    assert state["last_score"]["clusters"] == len(set(clusters.values())) >= 2
    project = ls_client.projects.get(id=ich["project_id"])
    assert project.model_version == version and project.sampling == "Uncertainty sampling"
    views = [v for v in ls_client.views.list(project=ich["project_id"]) if (v.data or {}).get("title") == "TSP priority"]
    assert len(views) == 1 and views[0].data["ordering"] == ["tasks:predictions_score"]


def test_next_serves_lowest_score_of_the_least_labeled_cluster(ich, cycled, label_studio, ls_client):
    """The token's user labeled the first batch: Label Studio serves them the lowest S_i among the
    clusters where they labeled fewest (tsp_model.al.diversity.cluster_round_robin's first pick)."""
    from collections import Counter

    preds = current_predictions(ls_client, ich["project_id"])
    pool = [t for t in ich["pool"] if t != ich["skipped"]]  # a skipped task is not served again
    # Label Studio counts the tasks this user finished, skipped ones included
    mine = Counter(preds[t][0].cluster for t in [*ich["labeled"], ich["skipped"]])
    least = min(mine.get(preds[t][0].cluster, 0) for t in pool)
    candidates = {t: preds[t][0].score for t in pool if mine.get(preds[t][0].cluster, 0) == least}
    nxt = next_task(label_studio, ls_client, ich["project_id"])
    assert nxt["id"] in candidates and candidates[nxt["id"]] == pytest.approx(min(candidates.values()), abs=1e-9), \
        (nxt["id"], candidates)


def test_second_score_replaces_rather_than_duplicates(ich, cycled, ls_client):
    again = run(ich, "score", "--project", "ich")
    assert again.exit_code == 0, again.output
    assert "0 predictions pushed" in again.output
    first = json.loads((ich["work"] / "work" / "state.json").read_text())["last_cycle"]["model_version"]
    # a new model: the next score must replace every old prediction, not add to it
    retrained = run(ich, "retrain", "--project", "ich")
    assert retrained.exit_code == 0, retrained.output
    scored = run(ich, "score", "--project", "ich")
    assert scored.exit_code == 0, scored.output
    second = json.loads((ich["work"] / "work" / "state.json").read_text())["last_score"]["model_version"]
    assert second != first
    preds = current_predictions(ls_client, ich["project_id"])
    for task in ich["pool"]:
        assert [p.model_version for p in preds.get(task, [])] == [second], task
    status = run(ich, "status", "--project", "ich")
    assert status.exit_code == 0 and second in status.output


def test_interrupted_push_keeps_old_predictions_and_resumes(ich, cycled, ls_client, monkeypatch):
    from label_studio_sdk.projects.client import ProjectsClient

    assert run(ich, "retrain", "--project", "ich").exit_code == 0
    old = {t: [p.model_version for p in ps] for t, ps in current_predictions(ls_client, ich["project_id"]).items()}
    real = ProjectsClient.import_predictions
    calls = {"n": 0}

    def interrupt_second_batch(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(self, *args, **kwargs)

    monkeypatch.setattr(ProjectsClient, "import_predictions", interrupt_second_batch)
    assert run(ich, "score", "--project", "ich").exit_code == 130
    monkeypatch.setattr(ProjectsClient, "import_predictions", real)
    mid = current_predictions(ls_client, ich["project_id"])
    for task in ich["pool"]:
        versions = [p.model_version for p in mid.get(task, [])]
        assert set(old[task]) <= set(versions), task  # nothing old deleted before all new ones exist
    every = ich["pool"] + list(ich["labeled"])  # labeled tasks get a prediction too (their cluster)
    assert sum(len(mid.get(t, [])) == 2 for t in every) == 3  # exactly the first batch of 3 landed

    again = run(ich, "score", "--project", "ich")
    assert again.exit_code == 0, again.output
    assert f"{len(every) - 3} predictions pushed (3 already current)" in again.output
    version = json.loads((ich["work"] / "work" / "state.json").read_text())["last_score"]["model_version"]
    final = current_predictions(ls_client, ich["project_id"])
    for task in every:  # one current prediction each, and its cluster set although the push was cut
        assert [p.model_version for p in final[task]] == [version]
        assert final[task][0].cluster is not None


def test_interrupted_pull_keeps_previous_snapshot(ich, cycled, ls_client, monkeypatch):
    import tsp_cli.commands.pull as pull_mod

    work = ich["work"] / "work"
    before_latest = (work / "snapshots" / "latest").read_text()
    n = int(before_latest)
    before = tree_digest(work / "snapshots" / str(n))
    # a new finished annotation, so the next pull has something new to write
    task = ich["pool"][0]
    ls_client.annotations.create(task, result=[])

    calls = {"n": 0}
    real = pull_mod.atomic_write_json

    def interrupt_on_manifest(path, data):
        if Path(path).name == "manifest.json":
            raise KeyboardInterrupt
        return real(path, data)

    monkeypatch.setattr(pull_mod, "atomic_write_json", interrupt_on_manifest)
    result = run(ich, "pull", "--project", "ich")
    assert result.exit_code == 130
    assert (work / "snapshots" / "latest").read_text() == before_latest
    assert tree_digest(work / "snapshots" / str(n)) == before
    assert not (work / "snapshots" / str(n + 1)).exists()
    assert not [p for p in (work / "snapshots").iterdir() if p.name.startswith(".tmp")]

    monkeypatch.setattr(pull_mod, "atomic_write_json", real)
    real_fetch = pull_mod._fetch_image

    def interrupt_fetch(cache, task_id, url):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real_fetch(cache, task_id, url)

    monkeypatch.setattr(pull_mod, "_fetch_image", interrupt_fetch)
    assert run(ich, "pull", "--project", "ich").exit_code == 130
    assert tree_digest(work / "snapshots" / str(n)) == before

    monkeypatch.setattr(pull_mod, "_fetch_image", real_fetch)
    result = run(ich, "pull", "--project", "ich")
    assert result.exit_code == 0, result.output
    assert (work / "snapshots" / "latest").read_text().strip() == str(n + 1)
    manifest = json.loads((work / "snapshots" / str(n + 1) / "manifest.json").read_text())
    assert manifest["counts"]["labeled"] == N_ANNOTATED + 1 and manifest["counts"]["downloaded"] == 0
    assert tree_digest(work / "snapshots" / str(n)) == before


# ------------------------------------------------------------------ bad input: one line, exit 1
def test_bad_token(ich):
    env = dict(ich["env"], LABEL_STUDIO_API_KEY="not-a-token")
    r = run(ich, "pull", "--project", "ich", env=env)
    assert r.exit_code == 1
    assert r.output.startswith("Error: ") and "LABEL_STUDIO_API_KEY" in r.output and len(r.output.splitlines()) == 1
    assert "not-a-token" not in r.output


def test_unreachable_server(ich):
    from tsp_cli.local_server import free_port

    env = dict(ich["env"], LABEL_STUDIO_URL=f"http://127.0.0.1:{free_port()}")
    r = run(ich, "pull", "--project", "ich", env=env)
    assert r.exit_code == 1 and "unreachable" in r.output and len(r.output.splitlines()) == 1


def test_unknown_project(ich):
    r = run(ich, "pull", "--project", "987654")
    assert r.exit_code == 1 and "no project with id 987654" in r.output


def test_project_without_brush_or_polygon(ich, ls_client, tmp_path):
    p = ls_client.projects.create(title="choices only", label_config=CHOICES_CONFIG)
    r = run(ich, "pull", "--project", str(p.id))
    assert r.exit_code == 1 and "BrushLabels or PolygonLabels" in r.output
    assert not (ich["work"] / "tsp-work" / str(p.id) / "snapshots").exists()


def test_empty_project_and_no_annotations(ich, ls_client):
    p = ls_client.projects.create(title="empty", label_config=BRUSH_CONFIG)
    r = run(ich, "pull", "--project", str(p.id))
    assert r.exit_code == 1 and "has no tasks" in r.output
    ls_client.projects.import_tasks(p.id, request=[{"image": "/data/local-files/?d=none.png"}])
    r = run(ich, "pull", "--project", str(p.id))
    assert r.exit_code == 1 and "no finished annotations yet" in r.output


def _tiny_project(ls_client, files_root: Path, name: str, config: str, content: bytes) -> tuple[int, int]:
    folder = files_root / name
    folder.mkdir(parents=True)
    (folder / "img.png").write_bytes(content)
    p = ls_client.projects.create(title=name, label_config=config)
    ls_client.import_storage.local.create(project=p.id, path=str(folder), title=name)
    ls_client.projects.import_tasks(p.id, request=[{"image": f"/data/local-files/?d={name}/img.png"}])
    (task,) = ls_client.tasks.list(project=p.id)
    return p.id, task.id


def test_corrupt_image_is_named(ich, label_studio, ls_client):
    pid, tid = _tiny_project(ls_client, label_studio.files_root, "corrupt", BRUSH_CONFIG, b"\x89PNG\r\n\x1a\n broken")
    ls_client.annotations.create(tid, result=[])
    r = run(ich, "pull", "--project", str(pid))
    assert r.exit_code == 1 and len(r.output.splitlines()) == 1, r.output
    assert r.output.startswith(f"Error: task {tid}: ") and "delete the task" in r.output
    assert not (ich["work"] / "tsp-work" / str(pid) / "snapshots").exists()


def test_polygon_annotations_become_coco_masks(ich, label_studio, ls_client):
    from tests.ls_fixtures import png_bytes

    pid, tid = _tiny_project(ls_client, label_studio.files_root, "poly-sync", POLYGON_CONFIG, png_bytes(64, seed=5))
    region = {"id": "p1", "type": "polygonlabels", "from_name": "outline", "to_name": "image",
              "original_width": 64, "original_height": 64,
              "value": {"points": [[25, 25], [75, 25], [75, 50], [25, 50]], "polygonlabels": ["subdural"]}}
    ls_client.annotations.create(tid, result=[region])
    r = run(ich, "pull", "--project", str(pid))
    assert r.exit_code == 0, r.output
    coco = json.loads((ich["work"] / "tsp-work" / str(pid) / "snapshots" / "1" / "annotations.json").read_text())
    (ann,) = coco["annotations"]
    assert coco["categories"][ann["category_id"] - 1]["name"] == "subdural"
    assert ann["bbox"] == [16.0, 16.0, 32.0, 16.0] and ann["area"] == 32 * 16
