"""`tsp-sync retrain` without a server: a hand-built snapshot, a tiny checkpoint, one epoch.

Covers what the Label Studio test cannot reach with an untrained model: pseudo labels from the
current model (thresholds lowered so its detections pass), fine-tuning from it, idempotent
re-runs, and a checkpoint whose classes differ from the project's.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.ls_fixtures import CLASS_NAMES, make_tiny_checkpoint
from tsp_cli.commands.retrain import retrain
from tsp_cli.settings import ProjectSettings
from tsp_cli.workdir import Workdir, atomic_write_json

pytestmark = pytest.mark.slow

OVERRIDES = {
    "model": {"backbone": "tiny_fpn", "min_size": 64, "max_size": 64, "box_score_thresh": 0.0,
              "box_detections_per_img": 3},
    "train": {"epochs": 1, "batch_size": 1, "workers": 0, "amp": False, "device": "cpu"},
    "score": {"workers": 0, "batch_size": 4, "amp": False},
    # every detection of the tiny model becomes a pseudo label
    "active": {"sigma_c": 0.0, "sigma_b": 0.0, "sigma_m": 0.0},
}


def phantom_workdir(root: Path, total: int, seed: int = 5) -> tuple[Workdir, dict]:
    """A work directory whose image cache holds ``total`` generated phantoms (file = task id),
    and their COCO document."""
    from tsp_model.synth.phantom import generate_phantoms

    src = generate_phantoms(root / "phantoms", total, size=64, seed=seed, lesion_rate=1.0, progress=False)
    coco = json.loads(src.read_text())
    wd = Workdir(root / "work")
    wd.images.mkdir(parents=True)
    for im in coco["images"]:
        shutil.copy(src.parent / im["file_name"], wd.images / f"{im['id']}.png")
        im["file_name"] = f"{im['id']}.png"
    return wd, coco


def write_snapshot(wd: Workdir, coco: dict, labeled: set[int]) -> None:
    """The next snapshot as `tsp-sync pull` writes it: the labeled images' COCO, the rest the pool."""
    from tsp_model.data.coco_file import write_coco

    number, tmp = wd.new_snapshot_dir()
    write_coco(tmp / "annotations.json", [im for im in coco["images"] if im["id"] in labeled],
               [a for a in coco["annotations"] if a["image_id"] in labeled], coco["categories"])
    pool = [{"task_id": im["id"], "file_name": im["file_name"], "width": 64, "height": 64}
            for im in coco["images"] if im["id"] not in labeled]
    atomic_write_json(tmp / "unlabeled.json", {"image_dir": "../../images", "tasks": pool})
    atomic_write_json(tmp / "manifest.json", {"class_names": CLASS_NAMES, "image_dir": "../../images",
                                              "counts": {"labeled": len(labeled), "pool": len(pool)}})
    wd.commit_snapshot(tmp, number)


def make_snapshot(root: Path, labeled: int = 3, total: int = 6) -> Workdir:
    """A snapshot of generated phantoms (image id = task id), the first ``labeled`` labeled."""
    wd, coco = phantom_workdir(root, total)
    write_snapshot(wd, coco, {im["id"] for im in coco["images"][:labeled]})
    return wd


def settings_for(wd: Workdir) -> ProjectSettings:
    return ProjectSettings(name="t", label_studio_project=1, workdir=wd.root, model_dir=wd.root / "models",
                           overrides=OVERRIDES)


def test_retrain_uses_pseudo_labels_of_the_current_model(tmp_path: Path) -> None:
    from tsp_model.engine.checkpoint import latest_checkpoint, load_checkpoint

    wd = make_snapshot(tmp_path)
    settings = settings_for(wd)
    make_tiny_checkpoint(settings.model_dir, version="tsp-test-v1", detections=3, mtime=1_000_000)

    s = retrain(settings, wd, progress=False)
    assert s["init"] == "tsp-test-v1" and s["model_version"] != "tsp-test-v1"
    assert s["labeled"] == 3 and s["pseudo_images"] >= 1 and s["pseudo_instances"] >= s["pseudo_images"]
    assert (wd.scores / "tsp-test-v1.s1.jsonl").is_file()  # the old model's pool scores
    published = settings.model_dir / f"{s['model_version']}.pt"
    assert latest_checkpoint(settings.model_dir) == published
    state = load_checkpoint(published)
    assert state["data"]["pseudo"] > 0 and state["class_names"] == CLASS_NAMES
    assert json.loads(wd.state_path.read_text())["last_retrain"]["model_version"] == s["model_version"]

    # the next cycle starts from the new model: a new run
    again = retrain(settings_for(wd), wd, progress=False)
    assert again["init"] == s["model_version"] and again["model_version"] != s["model_version"]
    assert latest_checkpoint(settings.model_dir).name == f"{again['model_version']}.pt"

    # a finished run is not repeated; published again, it becomes the current model
    first = retrain(settings, wd, from_scratch=True, progress=False)
    second = retrain(settings, wd, from_scratch=True, progress=False)
    assert first["init"] is None and second["model_version"] == first["model_version"]
    assert latest_checkpoint(settings.model_dir).name == f"{first['model_version']}.pt"


def test_retrain_from_scratch_when_classes_differ(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    wd = make_snapshot(tmp_path)
    settings = settings_for(wd)
    make_tiny_checkpoint(settings.model_dir, version="tsp-other", class_names=["tumor"], mtime=1_000_000)
    s = retrain(settings, wd, progress=False)
    assert s["init"] is None and s["pseudo_images"] == 0
    assert "training from scratch" in caplog.text
    assert (wd.runs / "s1-scratch" / "model.pt").is_file()
