"""Turn DICOM series and PNG/JPEG folders into one display image per slice, ready to import.

:func:`export_slices` writes each slice once into ``out_dir`` (atomically) and returns a
:class:`SliceRecord` per slice with a stable ``key``:

- DICOM: the SOPInstanceUID (``SOP/<frame>`` for multi-frame files); the image is
  ``<SOPInstanceUID>.<window>.png``, so a second window never overwrites the first;
- PNG/JPEG: the sha256 of the file bytes; the file is copied as ``<sha256[:20]><suffix>``.

Exporting the same inputs again rewrites nothing and returns the same records, so the importer
can skip keys that a project already holds (re-import adds nothing twice). ``provenance`` holds
only :data:`tsp_model.data.dicom.KEPT_TAGS` (DICOM) or ``source_name`` (the original file name,
PNG/JPEG).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from tsp_model.core.atomic import atomic_save, atomic_write_bytes
from tsp_model.core.progress import progress as tsp_progress
from tsp_model.data.dicom import DicomError, find_dicom_files, read_dicom, render_window
from tsp_model.data.image_io import verify_image

logger = logging.getLogger(__name__)

__all__ = ["IMAGE_SUFFIXES", "SliceRecord", "export_slices", "atomic_write_bytes", "save_png"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


@dataclass
class SliceRecord:
    """One exported slice: ``image_path`` (written PNG/JPEG), ``key`` (SOPInstanceUID or sha256),
    ``provenance`` (JSON-friendly, de-identified), ``kind`` ``"dicom"`` or ``"image"``."""

    image_path: Path
    key: str
    provenance: dict[str, Any] = field(default_factory=dict)
    kind: str = "dicom"


def save_png(path: Path, image: np.ndarray) -> None:
    """uint8 [H, W] or [H, W, 3] -> PNG at ``path``, atomically."""
    atomic_save(path, lambda tmp: Image.fromarray(np.ascontiguousarray(image)).save(tmp, format="PNG"))


def _split_inputs(paths: Iterable[str | Path]) -> tuple[list[Path], list[Path]]:
    """(DICOM candidates, PNG/JPEG files); folders are searched recursively."""
    dicom_inputs: list[Path] = []
    images: list[Path] = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            files = sorted(q for q in p.rglob("*") if q.is_file() and not q.name.startswith("."))
            images.extend(q for q in files if q.suffix.lower() in IMAGE_SUFFIXES)
            if any(q.suffix.lower() not in IMAGE_SUFFIXES for q in files):
                dicom_inputs.append(p)
        elif p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES:
            images.append(p)
        else:
            dicom_inputs.append(p)  # find_dicom_files reports missing or non-DICOM files
    return dicom_inputs, images


def _window_tag(window: str | tuple[float, float]) -> str:
    if isinstance(window, str):
        return window
    return f"c{float(window[0]):g}w{float(window[1]):g}"


def export_slices(
    paths: Sequence[str | Path],
    out_dir: str | Path,
    window: str | tuple[float, float] = "brain",
    progress: bool = True,
) -> list[SliceRecord]:
    """Write one image per slice of ``paths`` into ``out_dir`` and describe each.

    Args:
        paths: DICOM files, PNG/JPEG files, or folders of either (searched recursively).
        out_dir: output folder (created).
        window: a name of :data:`tsp_model.data.dicom.WINDOWS`, ``"rgb"``, or ``(center, width)``.
        progress: show progress (:func:`tsp_model.core.progress.progress`).

    Returns:
        DICOM slices sorted by (SeriesInstanceUID, InstanceNumber), then PNG/JPEG files; a key
        appears once even if its file was given twice.

    Raises:
        DicomError / DicomDecodeError: a DICOM file cannot be read or decoded (named in the message).
        tsp_model.data.image_io.ImageError: a PNG/JPEG file is unreadable.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dicom_inputs, image_files = _split_inputs(paths)
    dicom_files = find_dicom_files(dicom_inputs) if dicom_inputs else []
    tag = _window_tag(window)
    records: list[SliceRecord] = []
    seen: set[str] = set()
    for f in tsp_progress(dicom_files, desc="DICOM slices", unit="file", enabled=progress):
        for sl in read_dicom(f):
            if sl.key in seen:
                continue
            seen.add(sl.key)
            name = sl.key.replace("/", "_f").replace(":", "_")
            target = out / f"{name}.{tag}.png"
            if not target.exists():  # a complete file (writes are atomic) from an earlier run
                save_png(target, render_window(sl, window))
            records.append(SliceRecord(image_path=target, key=sl.key, provenance=sl.provenance, kind="dicom"))
    for f in tsp_progress(image_files, desc="images", unit="file", enabled=progress):
        verify_image(f)
        data = f.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        if digest in seen:
            continue
        seen.add(digest)
        suffix = ".jpg" if f.suffix.lower() == ".jpeg" else f.suffix.lower()
        target = out / f"{digest[:20]}{suffix}"
        if not target.exists():
            atomic_write_bytes(target, data)
        records.append(SliceRecord(image_path=target, key=digest, provenance={"source_name": f.name}, kind="image"))
    if not records:
        raise DicomError(f"no DICOM, PNG or JPEG slices found in {', '.join(str(p) for p in paths)}")
    return records
