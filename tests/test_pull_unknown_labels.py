"""`tsp-sync pull` against a real Label Studio 1.23 when an annotation uses a label the config lacks.

Label Studio stores such annotations (a label renamed or removed after drawing, an import); the
pull must stop, naming the task and the label, instead of training that image as "no lesion".
"""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
from click.testing import CliRunner

from tests.ls_fixtures import BRUSH_CONFIG, write_png

pytestmark = pytest.mark.integration


def _brush_region(label: str, size: int = 64) -> dict:
    from label_studio_sdk.converter.brush import mask2rle

    mask = np.zeros((size, size), np.uint8)
    mask[20:40, 24:44] = 255
    return {"id": f"r-{label}", "type": "brushlabels", "from_name": "lesion", "to_name": "image",
            "original_width": size, "original_height": size, "image_rotation": 0,
            "value": {"format": "rle", "rle": [int(v) for v in mask2rle(mask)], "brushlabels": [label]}}


def test_pull_stops_on_labels_outside_the_config(label_studio, ls_client, tmp_path):
    from tsp_cli.main import cli

    folder = label_studio.files_root / "unknown_labels"
    for name in ("a.png", "b.png", "c.png"):
        write_png(folder / name, seed=len(name) + ord(name[0]))
    project = ls_client.projects.create(title="unknown labels", label_config=BRUSH_CONFIG)
    ls_client.import_storage.local.create(project=project.id, path=str(folder), title="slices")
    ls_client.projects.import_tasks(project.id, request=[
        {"image": f"/data/local-files/?d=unknown_labels/{n}"} for n in ("a.png", "b.png", "c.png")])
    a, b, c = sorted(ls_client.tasks.list(project=project.id), key=lambda t: t.id)
    ls_client.annotations.create(a.id, result=[_brush_region("tumor")])            # not in the config
    ls_client.annotations.create(b.id, result=[_brush_region("epidural"), _brush_region("cyst")])
    ls_client.annotations.create(c.id, result=[_brush_region("subdural")])         # fine
    # Label Studio accepted them
    assert [r["value"]["brushlabels"] for r in ls_client.tasks.get(a.id).annotations[0]["result"]] == [["tumor"]]

    (tmp_path / "tsp.toml").write_text(f'[projects.p]\nlabel_studio_project = {project.id}\nworkdir = "work"\n')
    env = {"LABEL_STUDIO_URL": label_studio.url, "LABEL_STUDIO_API_KEY": label_studio.token,
           "TSP_CONFIG": str(tmp_path / "tsp.toml")}
    with contextlib.chdir(tmp_path):
        r = CliRunner().invoke(cli, ["--no-progress", "pull", "--project", "p"], env=env, catch_exceptions=False)
    assert r.exit_code == 1, r.output
    assert r.output.startswith("Error: ") and len(r.output.splitlines()) == 1, r.output
    assert f"task {a.id} (tumor)" in r.output and f"task {b.id} (cyst)" in r.output, r.output
    assert f"task {c.id}" not in r.output and "<Label>" in r.output
    assert not (tmp_path / "work" / "snapshots").exists() or not any((tmp_path / "work" / "snapshots").iterdir())
