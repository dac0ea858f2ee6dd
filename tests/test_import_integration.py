"""`import_images` against a real Label Studio 1.23: tasks with provenance, re-import adds nothing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.dicom_helpers import IDENTIFYING, write_ct
from tests.ls_fixtures import BRUSH_CONFIG
from tsp_cli.commands.importer import ensure_local_storage, image_url, import_images
from tsp_model.data.slices import export_slices

pytestmark = pytest.mark.integration


def test_dicom_and_png_import_is_idempotent(label_studio, ls_client, tmp_path: Path) -> None:
    series = tmp_path / "series"
    series.mkdir()
    for i in (1, 2, 3):
        write_ct(series / f"{i}.dcm", instance=i)
    Image.fromarray(np.full((16, 16), 200, np.uint8)).save(tmp_path / "photo.png")
    project = ls_client.projects.create(title="h6 dicom import", label_config=BRUSH_CONFIG)
    root = Path(label_studio.files_root)
    out = root / "h6-imports"

    def url(r):
        return image_url(r.image_path, root)

    records = export_slices([series, tmp_path / "photo.png"], out, progress=False)
    assert ensure_local_storage(ls_client, project.id, out)
    assert not ensure_local_storage(ls_client, project.id, out)
    assert import_images(ls_client, project.id, records, url, progress=False) == {"imported": 4, "skipped": 0}
    again = export_slices([series, tmp_path / "photo.png"], out, progress=False)
    assert import_images(ls_client, project.id, again, url, progress=False) == {"imported": 0, "skipped": 4}

    tasks = list(ls_client.tasks.list(project=project.id))
    assert len(tasks) == 4
    by_key = {t.data["tsp_key"]: t.data for t in tasks}
    first = by_key[records[0].key]
    assert first["SOPInstanceUID"] == records[0].key and first["InstanceNumber"] == 1
    assert first["image"].startswith("/data/local-files/?d=h6-imports/")
    for data in by_key.values():
        for tag, value in IDENTIFYING.items():
            assert tag not in data and value not in repr(data)
    # Label Studio serves the slice it points at
    resp = ls_client._client_wrapper.httpx_client.request(
        "data/local-files/", method="GET", params={"d": first["image"].split("?d=", 1)[1]})
    assert resp.status_code == 200 and resp.content == records[0].image_path.read_bytes()
