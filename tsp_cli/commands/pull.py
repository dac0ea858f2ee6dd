"""``tsp-sync pull``: finished Label Studio annotations -> a versioned COCO snapshot.

Rules, per task:

- *labeled*: at least one finished annotation (submitted, not cancelled). With several, a
  ground-truth one wins, else the most recently updated. Its regions of the project's
  BrushLabels/PolygonLabels tag become COCO instances (Label Studio brush RLE decoded with
  ``label_studio_sdk.converter.brush.decode_rle``; polygons from percent to pixels). An
  annotation with no such region is a real label, "no lesion": the image is kept with no instance.
  A region whose label is not one of the tag's ``<Label>`` values (Label Studio accepts such
  annotations, e.g. after a label was renamed) stops the pull with one line naming the tasks and
  labels: dropping the region would turn a drawn lesion into a "no lesion" example.
- *skipped*: only cancelled annotations. Not a label: the task stays in the unlabeled pool (and is
  counted as skipped).
- *pool*: every task without a finished annotation.

Images are fetched through Label Studio (backend ``ImageFetcher``, with its allow-list: Label
Studio's uploads and local files, plus ``TSP_ALLOWED_URL_PREFIXES`` / ``TSP_ALLOWED_DIRS``), checked
with ``read_image`` and cached in ``<workdir>/images`` once. The snapshot is built in a hidden temporary folder and
renamed into place, so an interrupted pull leaves the previous snapshot as it was. A pull whose
content equals the latest snapshot's makes no new one.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import io
import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from tsp_cli.client import LSProject, SyncError, iter_tasks
from tsp_cli.context import CliContext, project_option
from tsp_cli.errors import handle_errors
from tsp_cli.workdir import Snapshot, Workdir, atomic_write_json, default_mode, read_json
from tsp_labelstudio.regions import region_to_rle
from tsp_model.core.atomic import atomic_write_bytes
from tsp_model.core.progress import progress as tsp_progress
from tsp_model.core.rle import rle_for_pycocotools
from tsp_model.data.coco_file import write_coco
from tsp_model.data.image_io import ImageError, read_image

log = logging.getLogger(__name__)

__all__ = ["PullResult", "choose_annotation", "pull"]


@dataclass
class PullResult:
    snapshot: Snapshot
    created: bool  # False: nothing changed since the latest snapshot
    counts: dict[str, int] = field(default_factory=dict)


def _as_dict(obj: Any) -> dict[str, Any]:
    if isinstance(obj, dict):
        return obj
    if hasattr(obj, "model_dump"):
        return obj.model_dump(mode="json")
    return dict(obj)


SERIES_KEYS = ("SeriesInstanceUID", "series_id")


def choose_annotation(annotations: list[dict[str, Any]]) -> tuple[dict[str, Any] | None, bool]:
    """``(the finished annotation to use or None, skipped)`` for one task's annotations."""
    finished = [a for a in annotations if not a.get("was_cancelled")]
    if not finished:
        return None, bool(annotations)
    gt = [a for a in finished if a.get("ground_truth")]
    pick = max(gt or finished, key=lambda a: (str(a.get("updated_at") or a.get("created_at") or ""), a.get("id") or 0))
    return pick, False


def _image_ext(data: bytes) -> str:
    from PIL import Image

    try:
        fmt = (Image.open(io.BytesIO(data)).format or "").lower()
    except Exception:
        fmt = ""
    return {"jpeg": ".jpg", "png": ".png", "tiff": ".tif", "bmp": ".bmp"}.get(fmt, ".img")


class ImageCache:
    """``<workdir>/images``: one file per task, re-downloaded only when the task's URL changes.

    ``index.json`` (task -> URL, file, size) is saved every :attr:`SAVE_EVERY` seconds while
    downloading and at the end: rewriting the whole index every few downloads would cost time
    growing with the square of the project size."""

    SAVE_EVERY = 30.0  # s

    def __init__(self, workdir: Workdir, fetcher: Any) -> None:
        self.dir = workdir.images
        self.dir.mkdir(parents=True, exist_ok=True)
        self.index_path = self.dir / "index.json"
        self.index: dict[str, dict[str, Any]] = read_json(self.index_path) if self.index_path.is_file() else {}
        self.fetcher = fetcher
        self.downloaded = 0
        self._saved = time.monotonic()

    def save(self, *, force: bool = True) -> None:
        """Write ``index.json`` (atomic); with ``force=False`` only if the last save is old."""
        if force or time.monotonic() - self._saved >= self.SAVE_EVERY:
            atomic_write_json(self.index_path, self.index)
            self._saved = time.monotonic()


def _fetch_image(cache: ImageCache, task_id: int, url: str) -> dict[str, Any]:
    entry = cache.index.get(str(task_id))
    if entry and entry.get("url") == url and (cache.dir / entry["file_name"]).is_file():
        return entry
    from tsp_labelstudio.images import ImageFetchError, SourceRefusedError

    try:
        data = cache.fetcher.fetch_bytes(url)
    except ImageFetchError as exc:
        if isinstance(exc, SourceRefusedError) or "LABEL_STUDIO_API_KEY" in str(exc) or "unreachable" in str(exc):
            raise SyncError(f"task {task_id}: {exc}") from None
        raise ImageError(f"task {task_id}: {exc}; fix the image or delete the task in Label Studio") from None
    try:
        arr = read_image(data, name=url)
    except ImageError as exc:
        raise ImageError(f"task {task_id}: {exc}; replace the image or delete the task in Label Studio") from None
    height, width = int(arr.shape[0]), int(arr.shape[1])
    file_name = f"{task_id}{_image_ext(data)}"
    _atomic_write_bytes(cache.dir / file_name, data)
    entry = {"url": url, "file_name": file_name, "width": width, "height": height}
    cache.index[str(task_id)] = entry
    cache.downloaded += 1
    cache.save(force=False)
    return entry


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    atomic_write_bytes(path, data)


def _unknown_labels_message(unknown: dict[int, set[str]], target: Any, shown: int = 10) -> str:
    """One line naming the tasks and labels; a region's label is never dropped or remapped, because
    its image would then train as "no lesion" (or as a class the radiologist did not draw)."""
    items = [f"task {tid} ({', '.join(sorted(labels))})" for tid, labels in sorted(unknown.items())]
    more = f" and {len(items) - shown} more task(s)" if len(items) > shown else ""
    labels = sorted(set().union(*unknown.values()))
    return (
        f"annotations use labels that are not in the {target.tag} tag {target.from_name!r} of the label config: "
        f"{'; '.join(items[:shown])}{more}; add {', '.join(labels)} as <Label> values or relabel those regions "
        "in Label Studio, then pull again (no snapshot was written)"
    )


def fetch_tasks(client: Any, project: LSProject, value_key: str) -> tuple[list[dict[str, Any]], dict[int, Any], int]:
    """``(tasks, chosen, skipped)``: every task as ``{"id", "data": {value_key: url}}``, the
    annotation :func:`choose_annotation` picks per task id (None: unlabeled), and the number of
    skipped tasks. Read a page at a time (:func:`tsp_cli.client.iter_tasks`, predictions left
    out); of each task only its image URL and chosen annotation are kept."""
    tasks: list[dict[str, Any]] = []
    chosen: dict[int, dict[str, Any] | None] = {}
    skipped = 0
    for t in iter_tasks(client, project.id, omit="predictions,drafts"):
        tid = int(t["id"])
        ann, was_skipped = choose_annotation([_as_dict(a) for a in (t.get("annotations") or [])])
        data = t.get("data") or {}
        # the image URL, and the DICOM series of a slice imported by tsp-sync import
        # (active.cluster_source = "series")
        keep = {k: data.get(k) for k in (value_key, *SERIES_KEYS) if data.get(k) is not None}
        tasks.append({"id": tid, "data": keep})
        chosen[tid] = ann
        skipped += int(was_skipped)
    return tasks, chosen, skipped


def pull(client: Any, project: LSProject, workdir: Workdir, secrets: Any, *, progress: bool = True) -> PullResult:
    """Export finished annotations of ``project`` into a new snapshot of ``workdir``."""
    from pycocotools import mask as mask_utils

    from tsp_labelstudio.images import ImageFetcher
    from tsp_labelstudio.regions import LabelConfigError, parse_label_config

    try:
        target = parse_label_config(project.label_config)
    except LabelConfigError as exc:
        raise SyncError(f"project {project.id} ({project.title!r}): {exc}") from None
    tasks, chosen, skipped = fetch_tasks(client, project, target.value_key)
    if not tasks:
        raise SyncError(
            f"project {project.id} ({project.title!r}) has no tasks; import images into it in Label Studio first"
        )
    if not any(a is not None for a in chosen.values()):
        raise SyncError(
            f"project {project.id} ({project.title!r}) has no finished annotations yet ({len(tasks)} tasks, "
            f"{skipped} skipped); submit at least one annotation (an empty one means 'no lesion') and pull again"
        )

    cache = ImageCache(workdir, ImageFetcher(ls_url=secrets.url, api_key=secrets.api_key))
    categories = [{"id": i + 1, "name": name, "supercategory": "lesion"} for i, name in enumerate(target.labels)]
    cat_id = {c["name"]: c["id"] for c in categories}
    images, annotations, pool = [], [], []
    fingerprint_items = []
    n_empty = 0
    unknown_labels: dict[int, set[str]] = {}  # task id -> labels the config does not have
    bar = tsp_progress(tasks, desc="pull", unit="task", enabled=progress)
    try:
        for t in bar:
            tid = int(t["id"])
            url = (t.get("data") or {}).get(target.value_key)
            if not url:
                raise SyncError(
                    f"task {tid} has no data.{target.value_key} (the Image tag's value); fix the task in Label Studio"
                )
            entry = _fetch_image(cache, tid, str(url))
            w, h = int(entry["width"]), int(entry["height"])
            ann = chosen[tid]
            # the DICOM series of a slice imported by tsp-sync import (active.cluster_source = "series")
            series = next((t["data"][k] for k in SERIES_KEYS if t["data"].get(k)), None)
            extra = {"series_id": str(series)} if series else {}
            if ann is None:
                pool.append({"task_id": tid, "file_name": entry["file_name"], "width": w, "height": h, **extra})
                fingerprint_items.append(("pool", tid, entry["file_name"]))
                continue
            images.append({"id": tid, "file_name": entry["file_name"], "width": w, "height": h,
                           "ls_annotation_id": ann.get("id"), **extra})
            fingerprint_items.append(("labeled", tid, entry["file_name"], ann.get("id"), str(ann.get("updated_at"))))
            n_before = len(annotations)
            for k, region in enumerate(ann.get("result") or []):
                if region.get("from_name") != target.from_name:
                    continue
                where = f"task {tid} annotation {ann.get('id')} region {region.get('id', k)}"
                got = region_to_rle(region, w, h, where)
                if got is None:
                    continue
                label, rle = got
                if label not in cat_id:
                    unknown_labels.setdefault(tid, set()).add(label)
                    continue
                annotations.append({
                    "id": len(annotations) + 1,
                    "image_id": tid,
                    "category_id": cat_id[label],
                    "segmentation": rle,
                    "area": float(mask_utils.area(rle_for_pycocotools(rle))),
                    "bbox": [float(v) for v in mask_utils.toBbox(rle_for_pycocotools(rle))],
                    "iscrowd": 0,
                })
            n_empty += int(len(annotations) == n_before)
    finally:
        bar.close()
        cache.save()  # downloaded files stay cached on Ctrl-C
    if unknown_labels:
        raise SyncError(_unknown_labels_message(unknown_labels, target))

    counts = {
        "tasks": len(tasks), "labeled": len(images), "empty": n_empty, "instances": len(annotations),
        "skipped": skipped, "pool": len(pool), "downloaded": cache.downloaded,
    }
    fingerprint = hashlib.sha1(
        json.dumps([project.id, target.tag, target.from_name, list(target.labels), sorted(map(str, fingerprint_items))]).encode()
    ).hexdigest()
    latest = workdir.latest_snapshot(required=False)
    if latest is not None and latest.manifest.get("fingerprint") == fingerprint:
        return PullResult(snapshot=latest, created=False, counts=counts)

    number, tmp = workdir.new_snapshot_dir()
    try:
        write_coco(tmp / "annotations.json", images, annotations, categories,
                   info={"description": f"Label Studio project {project.id} ({project.title})", "snapshot": number})
        default_mode(tmp / "annotations.json")
        atomic_write_json(tmp / "unlabeled.json", {"image_dir": "../../images", "tasks": pool})
        manifest = {
            "snapshot": number,
            "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "project_id": project.id,
            "project_title": project.title,
            "tag": target.tag,
            "from_name": target.from_name,
            "to_name": target.to_name,
            "value_key": target.value_key,
            "class_names": list(target.labels),
            "image_dir": "../../images",
            "counts": counts,
            "fingerprint": fingerprint,
        }
        atomic_write_json(tmp / "manifest.json", manifest)
        snap = workdir.commit_snapshot(tmp, number)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return PullResult(snapshot=snap, created=True, counts=counts)


@click.command("pull", help="Export finished annotations into a new COCO snapshot in the work directory.")
@project_option
@click.pass_obj
@handle_errors
def pull_command(obj: CliContext, project: str) -> None:
    from tsp_cli.workdir import Workdir

    settings = obj.project_settings(project)
    client, ls_project, secrets = obj.connect(settings)
    res = pull(client, ls_project, Workdir(settings.workdir), secrets, progress=obj.progress)
    c = res.counts
    state = "new" if res.created else "unchanged, kept"
    click.echo(f"snapshot {res.snapshot.number} ({state}): {c['labeled']} labeled ({c['instances']} instances, "
               f"{c['empty']} no-lesion), {c['pool']} unlabeled, {c['skipped']} skipped; "
               f"{c['downloaded']} images downloaded -> {res.snapshot.path}")
