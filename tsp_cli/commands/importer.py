"""``tsp-sync import``: DICOM series and PNG/JPEG folders -> Label Studio tasks, each slice once.

    tsp-sync import --project ich scans/ series2/ --window brain
    tsp-sync import --project ich scans/ --window rgb          # brain/subdural/bone as R/G/B

Each slice is written as an image into ``<workdir>/imports/`` (:func:`tsp_model.data.slices.
export_slices`) and becomes a task::

    {"image": "/data/local-files/?d=imports/1.2.3.4.brain.png", "tsp_key": "1.2.3.4",
     "StudyInstanceUID": ..., "SeriesInstanceUID": ..., "SOPInstanceUID": ..., "InstanceNumber": 7,
     "Modality": "CT", "SliceThickness": 5.0, "PixelSpacing": [0.49, 0.49], "ImagePositionPatient": [...]}

``tsp_key`` is the SOPInstanceUID (DICOM) or the sha256 of the file (PNG/JPEG); keys already in
the project are skipped, so importing the same series twice adds nothing. Only the tags of
:data:`tsp_model.data.dicom.KEPT_TAGS` reach task data: no patient name, ID, birth date,
accession number, institution or dates.

Image URLs: Label Studio serves local files under ``LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT``
(``--local-files-root``, default that environment variable) and only below a project's Local
Files storage: the slices must be written below the root, and the output folder is connected as
a (never synced) Local Files storage unless one already covers it. Or pass ``--url-prefix`` when
another web server publishes the output folder; that prefix must be listed in
``TSP_ALLOWED_URL_PREFIXES``, or ``tsp-sync pull`` and ``tsp-backend`` would refuse the images.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

import click

from tsp_cli.client import SyncError, call
from tsp_cli.errors import handle_errors
from tsp_model.core.progress import progress as tsp_progress
from tsp_model.data.slices import SliceRecord

log = logging.getLogger(__name__)

__all__ = ["SliceURLError", "check_url_prefix_allowed", "ensure_local_storage", "existing_keys", "image_url", "import_command", "import_images", "task_data"]

KEY_FIELD = "tsp_key"


class SliceURLError(SyncError):
    """The slices cannot be given URLs Label Studio can load (no root, or outside the root)."""


def image_url(path: Path, local_files_root: Path | None = None, url_prefix: str | None = None) -> str:
    """The URL Label Studio loads ``path`` from: ``url_prefix + name`` or a local-files URL."""
    if url_prefix:
        return url_prefix.rstrip("/") + "/" + quote(path.name)
    if local_files_root is None:
        raise SliceURLError(
            "no way to serve the slices: set LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT (as Label Studio has "
            "it) or pass --local-files-root or --url-prefix"
        )
    root = Path(local_files_root).resolve()
    try:
        rel = path.resolve().relative_to(root)
    except ValueError:
        raise SliceURLError(
            f"{path}: not below the local-files root {root}; write the slices inside it (--out) or pass "
            "--url-prefix"
        ) from None
    return "/data/local-files/?d=" + quote(rel.as_posix())


def check_url_prefix_allowed(url_prefix: str) -> None:
    """Refuse a ``--url-prefix`` that ``tsp-sync pull`` and ``tsp-backend`` would not read from.

    Both fetch task images only from allowed sources (:class:`tsp_labelstudio.images.ImageSources`);
    tasks under any other prefix could be created but never pulled nor pre-annotated.
    """
    from tsp_labelstudio.images import ENV_ALLOWED_URL_PREFIXES, ImageSources, SourceRefusedError

    try:
        ImageSources.from_env().classify_url(url_prefix.rstrip("/") + "/slice.png")
    except SourceRefusedError:
        raise SliceURLError(
            f"--url-prefix {url_prefix}: not an allowed image source, so tsp-sync pull and tsp-backend would refuse "
            f"these tasks' images; add it to {ENV_ALLOWED_URL_PREFIXES} (for both) and import again"
        ) from None
    except ValueError as exc:  # a malformed TSP_ALLOWED_URL_PREFIXES entry
        raise SliceURLError(str(exc)) from None


def ensure_local_storage(client: Any, project_id: int, folder: Path) -> bool:
    """Connect ``folder`` as a Local Files storage of the project unless one already covers it.

    Label Studio serves ``/data/local-files/`` only below a project's Local Files storage path.
    The storage is never synced: tasks are created by :func:`import_images`. Returns True when
    a storage was created.
    """
    folder = Path(folder).resolve()
    storages = call(client, f"listing the local storages of project {project_id}",
                    client.import_storage.local.list, project=project_id)
    for st in storages:
        path = getattr(st, "path", None)
        if path and (folder == Path(path).resolve() or Path(path).resolve() in folder.parents):
            return False
    call(client, f"connecting {folder} as local storage of project {project_id}", client.import_storage.local.create,
         project=project_id, path=str(folder), title="tsp-sync import", use_blob_urls=False)
    return True


def task_data(record: SliceRecord, url: str, value_key: str = "image") -> dict[str, Any]:
    """One task's data: the image URL, the key, and the record's de-identified provenance."""
    data: dict[str, Any] = dict(record.provenance)
    data[value_key] = url
    data[KEY_FIELD] = record.key
    return data


def existing_keys(client: Any, project_id: int) -> set[str]:
    """The ``tsp_key`` of every task already in the project."""
    def _list() -> set[str]:
        keys = set()
        for task in client.tasks.list(project=project_id):
            data = task.get("data") if isinstance(task, dict) else getattr(task, "data", None)
            if isinstance(data, dict) and data.get(KEY_FIELD):
                keys.add(str(data[KEY_FIELD]))
        return keys

    return call(client, f"listing the tasks of project {project_id}", _list)


def import_images(
    client: Any,
    project_id: int,
    records: Sequence[SliceRecord],
    url_for: Callable[[SliceRecord], str],
    *,
    value_key: str = "image",
    batch_size: int = 200,
    progress: bool = True,
) -> dict[str, int]:
    """Create one task per record whose key the project does not hold yet.

    Returns ``{"imported", "skipped"}`` (skipped: keys already present, or repeated in
    ``records``).
    """
    have = existing_keys(client, project_id)
    todo, seen = [], set(have)
    for r in records:
        if r.key in seen:
            continue
        seen.add(r.key)
        todo.append({"data": task_data(r, url_for(r), value_key)})
    bar = tsp_progress(total=len(todo), desc="import tasks", unit="task", enabled=progress and bool(todo))
    try:
        for i in range(0, len(todo), batch_size):
            chunk = todo[i : i + batch_size]
            call(client, f"importing tasks into project {project_id}", client.projects.import_tasks,
                 id=project_id, request=chunk)
            bar.update(len(chunk))
    finally:
        bar.close()
    return {"imported": len(todo), "skipped": len(records) - len(todo)}


def _value_key(label_config: str) -> str:
    """The task data key of the project's Image tag ("image" when it cannot be told)."""
    try:
        from tsp_labelstudio.regions import parse_label_config

        return parse_label_config(label_config).value_key
    except Exception:  # no config yet, or no supported tag: the conventional name
        return "image"


def _resolve_settings(ctx: click.Context, project: str) -> Any:
    obj = ctx.obj
    if obj is not None and hasattr(obj, "project_settings"):
        return obj.project_settings(project)
    from tsp_cli.settings import find_settings_file, load_settings, select_project

    return select_project(load_settings(find_settings_file(None)), project)


def _connect(ctx: click.Context, settings: Any) -> tuple[Any, Any]:
    obj = ctx.obj
    if obj is not None and hasattr(obj, "connect"):
        client, ls_project, _ = obj.connect(settings)
        return client, ls_project
    from tsp_cli.client import connect, resolve_project
    from tsp_cli.settings import load_secrets

    client = connect(load_secrets())
    return client, resolve_project(client, settings.label_studio_project)




@click.command("import", help="Import DICOM series or PNG/JPEG folders as tasks (each slice once, de-identified).")
@click.option("--project", "-p", required=True, help="A [projects.<name>] of tsp.toml, or a Label Studio project id.")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--window", default="brain", show_default=True,
              type=click.Choice(["brain", "subdural", "stroke", "bone", "soft_tissue", "rgb"]),
              help="CT display window for DICOM (center/width: brain 40/80, subdural 75/215, stroke 40/40, "
                   "bone 600/2800, soft_tissue 50/350; rgb = brain, subdural, bone as R, G, B).")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Where slice images are written (default <workdir>/imports).")
@click.option("--local-files-root", type=click.Path(file_okay=False, path_type=Path),
              default=lambda: os.environ.get("LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT") or None,
              help="Label Studio's LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT (default: that variable).")
@click.option("--url-prefix", help="Serve slices from this URL prefix instead of local files.")
@click.pass_context
def import_command(
    ctx: click.Context, project: str, paths: tuple[Path, ...], window: str, out_dir: Path | None,
    local_files_root: Path | None, url_prefix: str | None,
) -> None:
    handle_errors(_run_import)(ctx, project, paths, window, out_dir, local_files_root, url_prefix)


def _run_import(
    ctx: click.Context, project: str, paths: Iterable[Path], window: str, out_dir: Path | None,
    local_files_root: Path | None, url_prefix: str | None,
) -> None:
    from tsp_model.data.dicom import DicomError
    from tsp_model.data.slices import export_slices

    progress = getattr(ctx.obj, "progress", True)
    settings = _resolve_settings(ctx, project)
    out = out_dir or (Path(settings.workdir) / "imports")
    root = Path(local_files_root) if local_files_root else None
    if not url_prefix:  # fail before writing or connecting
        image_url(out / "probe.png", root, None)
    else:
        check_url_prefix_allowed(url_prefix)
    client, ls_project = _connect(ctx, settings)
    try:
        records = export_slices(list(paths), out, window=window, progress=progress)
    except DicomError as exc:  # the CLI's error handler knows SyncError: one line, exit 1
        raise SyncError(str(exc)) from None
    if not url_prefix:
        ensure_local_storage(client, ls_project.id, out)
    res = import_images(client, ls_project.id, records, lambda r: image_url(r.image_path, root, url_prefix),
                        value_key=_value_key(ls_project.label_config), progress=progress)
    n_dicom = sum(r.kind == "dicom" for r in records)
    click.echo(f"project {ls_project.id}: {res['imported']} tasks imported, {res['skipped']} already there "
               f"({n_dicom} DICOM slices, {len(records) - n_dicom} images; window {window}) -> {out}")
