"""tsp-sync import: tasks carry the key and de-identified provenance; re-import adds nothing."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from tests.dicom_helpers import IDENTIFYING, write_ct
from tsp_cli.commands.importer import SliceURLError, image_url, import_images
from tsp_model.data.slices import export_slices


class FakeLS:
    """The two SDK calls the importer makes, on an in-memory project."""

    def __init__(self) -> None:
        self.tasks_data: list[dict[str, Any]] = [{"image": "/data/upload/1/old.png"}]  # a task without a key
        self.requests: list[list[dict[str, Any]]] = []
        self.tasks = SimpleNamespace(list=self._list)
        self.projects = SimpleNamespace(import_tasks=self._import)
        self.storages: list[str] = []
        self.import_storage = SimpleNamespace(local=SimpleNamespace(
            list=lambda project: [SimpleNamespace(path=p) for p in self.storages],
            create=lambda project, path, title, use_blob_urls: self.storages.append(path)))

    def _list(self, project: int):
        assert project == 5
        return iter(SimpleNamespace(id=i, data=d) for i, d in enumerate(self.tasks_data))

    def _import(self, id: int, request: list[dict[str, Any]]):
        assert id == 5
        self.requests.append(request)
        self.tasks_data.extend(t["data"] for t in request)
        return SimpleNamespace(task_count=len(request))


def test_import_twice_adds_nothing_and_keeps_no_identifying_tags(tmp_path: Path) -> None:
    root = tmp_path / "root"
    series = tmp_path / "series"
    series.mkdir()
    write_ct(series / "a.dcm", instance=1)
    write_ct(series / "b.dcm", instance=2)
    client = FakeLS()
    url = lambda r: image_url(r.image_path, root)  # noqa: E731

    records = export_slices([series], root / "imports", progress=False)
    first = import_images(client, 5, records, url, progress=False)
    assert first == {"imported": 2, "skipped": 0}
    (req,) = client.requests
    data = req[0]["data"]
    assert data["image"] == f"/data/local-files/?d=imports/{records[0].image_path.name}"
    assert data["tsp_key"] == data["SOPInstanceUID"] == records[0].key
    assert data["InstanceNumber"] == 1 and data["Modality"] == "CT"
    for tag, value in IDENTIFYING.items():
        assert tag not in data and value not in repr(data)

    again = export_slices([series], root / "imports", progress=False)
    second = import_images(client, 5, again, url, progress=False)
    assert second == {"imported": 0, "skipped": 2}
    assert len(client.requests) == 1  # no request at all the second time
    assert len(client.tasks_data) == 3


def test_url_outside_local_files_root_is_clear(tmp_path: Path) -> None:
    with pytest.raises(SliceURLError, match="not below the local-files root"):
        image_url(tmp_path / "x.png", tmp_path / "elsewhere")
    with pytest.raises(SliceURLError, match="LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT"):
        image_url(tmp_path / "x.png", None)
    assert image_url(tmp_path / "a b.png", None, "https://files.example/slices/") == \
        "https://files.example/slices/a%20b.png"


def _obj(workdir: Path, client: FakeLS) -> SimpleNamespace:
    from tests.ls_fixtures import BRUSH_CONFIG

    project = SimpleNamespace(id=5, label_config=BRUSH_CONFIG)
    return SimpleNamespace(project_settings=lambda p: SimpleNamespace(workdir=workdir),
                           connect=lambda s: (client, project, None), progress=False)


def test_import_command_end_to_end_with_fake_server(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from tsp_cli.commands.importer import import_command

    write_ct(tmp_path / "a.dcm")
    client = FakeLS()
    args = ["--project", "ich", str(tmp_path / "a.dcm"), "--window", "rgb", "--local-files-root", str(tmp_path)]
    res = CliRunner().invoke(import_command, args, obj=_obj(tmp_path / "wd", client))
    assert res.exit_code == 0, res.output
    assert "1 tasks imported, 0 already there" in res.output
    assert client.storages == [str((tmp_path / "wd" / "imports").resolve())]
    data = client.tasks_data[-1]
    assert data["image"].startswith("/data/local-files/?d=wd/imports/") and data["image"].endswith(".rgb.png")
    res = CliRunner().invoke(import_command, args, obj=_obj(tmp_path / "wd", client))
    assert "0 tasks imported, 1 already there" in res.output
    assert len(client.storages) == 1  # the existing storage covers the folder


def test_import_command_compressed_is_one_line_error(tmp_path: Path) -> None:
    from click.testing import CliRunner
    from pydicom.pixels import get_decoder
    from pydicom.uid import JPEGLosslessSV1

    from tsp_cli.commands.importer import import_command

    if get_decoder(JPEGLosslessSV1).is_available:
        pytest.skip("a JPEG Lossless decoder is installed")
    write_ct(tmp_path / "c.dcm", transfer_syntax=JPEGLosslessSV1)
    res = CliRunner().invoke(import_command, ["--project", "ich", str(tmp_path / "c.dcm"), "--local-files-root",
                                              str(tmp_path)], obj=_obj(tmp_path / "wd", FakeLS()))
    assert res.exit_code == 1
    assert res.output.startswith("Error: ") and res.output.count("\n") == 1
    assert "pylibjpeg-libjpeg" in res.output


def test_window_choices_match_the_presets() -> None:
    from tsp_cli.commands.importer import import_command
    from tsp_model.data.dicom import WINDOWS

    (opt,) = [p for p in import_command.params if p.name == "window"]
    assert set(opt.type.choices) == set(WINDOWS) | {"rgb"}


def test_url_prefix_must_be_an_allowed_image_source(monkeypatch) -> None:
    from tsp_cli.commands.importer import check_url_prefix_allowed

    monkeypatch.delenv("TSP_ALLOWED_URL_PREFIXES", raising=False)
    with pytest.raises(SliceURLError, match="TSP_ALLOWED_URL_PREFIXES") as info:
        check_url_prefix_allowed("https://slices.example/ct")
    assert len(str(info.value).splitlines()) == 1
    monkeypatch.setenv("TSP_ALLOWED_URL_PREFIXES", "https://slices.example/ct/")
    check_url_prefix_allowed("https://slices.example/ct")
    check_url_prefix_allowed("https://slices.example/ct/series1/")
    with pytest.raises(SliceURLError):
        check_url_prefix_allowed("https://slices.example/ct-old")
