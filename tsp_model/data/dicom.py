"""Read CT slices from DICOM (pydicom) as Hounsfield units and show them through display windows.

Pipeline of one file: ``pydicom.dcmread`` -> stored pixel values -> modality LUT
(``HU = stored * RescaleSlope + RescaleIntercept``, pydicom's ``apply_modality_lut``) ->
float32 ``[H, W]`` in HU -> :func:`apply_window` -> uint8 for display and for the model.

Windows (center, width) in HU, the usual head-CT presets (:data:`WINDOWS`)::

    brain       40 /   80   default; parenchyma, acute blood is bright
    subdural    75 /  215   wider, separates a thin subdural crescent from the skull
    stroke      40 /   40   narrow, early ischemia
    bone       600 / 2800   fractures
    soft_tissue 50 /  350   scalp and soft tissue
    rgb         brain, subdural and bone stacked as the R, G and B channels (:func:`stack_windows`)

Window formula (also used by the head-CT phantom)::

    lo = center - width / 2
    value = round(clip((HU - lo) / width, 0, 1) * 255)      # NumPy rounding: ties to even

so in the brain window HU <= 0 -> 0, HU 20 -> 63.75 -> 64, HU 40 -> 127.5 -> 128, HU >= 80 -> 255.
It is the phantom generator's formula, so a phantom slice written as DICOM and imported comes
back byte-identical.

``MONOCHROME1`` (low values shown white, common in radiographs) is inverted *after* windowing
(``255 - value``); the HU array itself keeps its physical meaning.

Multi-frame files (``NumberOfFrames > 1``) are split into one :class:`DicomSlice` per frame, using
the per-frame or shared functional groups' rescale when present; ``provenance["frame"]`` is the
1-based frame number and the key gets a ``/<frame>`` suffix.

De-identification: only :data:`KEPT_TAGS` are copied into :attr:`DicomSlice.provenance` (and from
there into Label Studio task data). Patient name, ID, birth date, sex, age, accession number,
institution, physicians, and all dates and times are never read into provenance. The UIDs are
copied as they are: they are needed for provenance and for idempotent re-import; if your source
UIDs were not already pseudonymized, run an anonymizer before import.

Compressed transfer syntaxes need a pixel-data plugin; when none is installed,
:class:`DicomDecodeError` names the file, the transfer syntax and the packages to install
(``pip install 'tsp-al[dicom-compressed]'`` installs pylibjpeg with its libjpeg, openjpeg and rle
plugins).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut, get_decoder
from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

logger = logging.getLogger(__name__)

__all__ = [
    "KEPT_TAGS",
    "RGB_WINDOWS",
    "WINDOWS",
    "DicomDecodeError",
    "DicomError",
    "DicomSlice",
    "apply_window",
    "find_dicom_files",
    "read_dicom",
    "read_dicom_slice",
    "render_window",
    "stack_windows",
]

WINDOWS: dict[str, tuple[float, float]] = {
    "brain": (40.0, 80.0),
    "subdural": (75.0, 215.0),
    "stroke": (40.0, 40.0),
    "bone": (600.0, 2800.0),
    "soft_tissue": (50.0, 350.0),
}
RGB_WINDOWS: tuple[str, str, str] = ("brain", "subdural", "bone")

# The only tags copied into provenance/task data. Everything else (PatientName, PatientID,
# PatientBirthDate, AccessionNumber, InstitutionName, StudyDate, ...) stays in the file.
KEPT_TAGS: tuple[str, ...] = (
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
    "InstanceNumber",
    "Modality",
    "SliceThickness",
    "PixelSpacing",
    "ImagePositionPatient",
)

# Suffixes never holding DICOM: skipped when scanning folders (pictures are imported separately).
_NOT_DICOM = {".png", ".jpg", ".jpeg", ".txt", ".json", ".html", ".csv", ".md", ".xml", ".pdf", ".zip"}

_PLUGIN_HINT = (
    "pip install 'tsp-al[dicom-compressed]' (pylibjpeg, pylibjpeg-libjpeg, pylibjpeg-openjpeg, "
    "pylibjpeg-rle) or pip install python-gdcm"
)


class DicomError(ValueError):
    """A DICOM file cannot be used; the message names the file and the reason."""


class DicomDecodeError(DicomError):
    """The pixel data is compressed with a transfer syntax that no installed plugin decodes."""


@dataclass
class DicomSlice:
    """One 2-D slice: ``hu`` float32 [H, W] in Hounsfield units (modality LUT applied),
    ``provenance`` the :data:`KEPT_TAGS` present in the file (plus ``frame`` for multi-frame),
    ``invert`` True for MONOCHROME1, ``key`` a stable identity (SOPInstanceUID[/frame])."""

    hu: np.ndarray
    provenance: dict[str, Any] = field(default_factory=dict)
    invert: bool = False
    key: str = ""


def apply_window(hu: np.ndarray, center: float, width: float) -> np.ndarray:
    """HU float [H, W] -> uint8 [H, W]: ``center - width/2`` is 0, ``center + width/2`` is 255.

    Values are rounded to the nearest integer, ties to even, like ``tsp_model.synth.phantom.window``
    (HU 40 in the brain window 40/80 -> 127.5 -> 128).
    """
    if width <= 0:
        raise ValueError(f"window width must be > 0, got {width}")
    lo = center - width / 2.0
    scaled = np.clip((np.asarray(hu, dtype=np.float64) - lo) / width, 0.0, 1.0) * 255.0
    return np.round(scaled).astype(np.uint8)


def stack_windows(hu: np.ndarray, names: Sequence[str] = RGB_WINDOWS) -> np.ndarray:
    """HU [H, W] -> uint8 [H, W, 3]: brain, subdural and bone windows as R, G, B."""
    return np.stack([apply_window(hu, *WINDOWS[n]) for n in names], axis=-1)


def render_window(sl: DicomSlice, window: str | tuple[float, float] = "brain") -> np.ndarray:
    """A slice through a named window (uint8 [H, W]), ``"rgb"`` (uint8 [H, W, 3]) or an explicit
    ``(center, width)``; MONOCHROME1 slices are inverted after windowing."""
    if isinstance(window, str):
        if window == "rgb":
            out = stack_windows(sl.hu)
        elif window in WINDOWS:
            out = apply_window(sl.hu, *WINDOWS[window])
        else:
            raise ValueError(f"unknown window {window!r}; choose one of {', '.join([*WINDOWS, 'rgb'])}")
    else:
        center, width = window
        out = apply_window(sl.hu, float(center), float(width))
    return 255 - out if sl.invert else out


def _plain(value: Any) -> Any:
    """pydicom values (DSfloat, IS, MultiValue, UID) -> JSON-friendly Python values."""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return [_plain(v) for v in value]
    if isinstance(value, UID):
        return str(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    return str(value)


def _provenance(ds: pydicom.Dataset) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for tag in KEPT_TAGS:
        value = ds.get(tag)
        if value is None or value == "":
            continue
        out[tag] = _plain(value)
    return out


def _frame_rescale(ds: pydicom.Dataset, frame: int) -> tuple[float, float] | None:
    """(slope, intercept) of one frame of an enhanced multi-frame image, or None."""
    for groups, idx in (("PerFrameFunctionalGroupsSequence", frame), ("SharedFunctionalGroupsSequence", 0)):
        seq = ds.get(groups)
        if not seq or len(seq) <= idx:
            continue
        pvt = seq[idx].get("PixelValueTransformationSequence")
        if pvt:
            item = pvt[0]
            return float(item.get("RescaleSlope", 1.0)), float(item.get("RescaleIntercept", 0.0))
    return None


def _check_decodable(ds: pydicom.Dataset, path: Path) -> None:
    tsuid = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    if tsuid is None or not UID(tsuid).is_compressed:
        return
    tsuid = UID(tsuid)
    try:
        decoder = get_decoder(tsuid)
    except NotImplementedError:
        raise DicomDecodeError(
            f"{path}: pixel data uses transfer syntax {tsuid} ({tsuid.name}), which pydicom "
            f"cannot decode at all; convert the file (e.g. dcmdjpeg/gdcmconv --raw)"
        ) from None
    if not decoder.is_available:
        raise DicomDecodeError(
            f"{path}: pixel data is compressed as {tsuid.name} ({tsuid}) and no decoder is "
            f"installed; {_PLUGIN_HINT}"
        )


def _dcmread(path: Path, stop_before_pixels: bool = False) -> pydicom.Dataset | None:
    """A DICOM dataset, or None when ``path`` is not DICOM.

    Files without the 128-byte preamble and file meta header (older exports write bare datasets)
    are read with ``force=True`` and kept only if they hold an image with a SOPInstanceUID; their
    transfer syntax is set from the encoding pydicom detected.
    """
    try:
        return pydicom.dcmread(path, stop_before_pixels=stop_before_pixels)
    except InvalidDicomError:
        pass
    try:
        ds = pydicom.dcmread(path, force=True, stop_before_pixels=stop_before_pixels)
    except Exception:  # force-reading arbitrary bytes fails in many ways
        return None
    if "SOPInstanceUID" not in ds or "Rows" not in ds:
        return None
    if "TransferSyntaxUID" not in ds.file_meta:
        implicit, little = ds.original_encoding
        ds.file_meta.TransferSyntaxUID = (
            ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian if little else ExplicitVRBigEndian
        )
    return ds


def read_dicom(path: str | Path) -> list[DicomSlice]:
    """All 2-D slices of one DICOM file (one per frame), in HU.

    Raises:
        DicomError: not a DICOM file, no pixel data, or an unsupported layout (color images).
        DicomDecodeError: compressed pixel data without an installed decoder plugin.
    """
    path = Path(path)
    try:
        ds = _dcmread(path)
    except FileNotFoundError:
        raise DicomError(f"{path}: file not found") from None
    except (OSError, ValueError) as exc:
        raise DicomError(f"{path}: not a readable DICOM file ({exc})") from None
    if ds is None:
        raise DicomError(f"{path}: not a readable DICOM file (no DICOM header and no image dataset)")
    if "PixelData" not in ds:
        raise DicomError(f"{path}: no pixel data (not an image: SOP class {ds.get('SOPClassUID', '?')})")
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise DicomError(f"{path}: photometric interpretation {photometric} is not a grayscale CT/MR slice")
    _check_decodable(ds, path)
    try:
        pixels = ds.pixel_array
    except Exception as exc:  # pydicom raises RuntimeError/ValueError/plugin errors alike
        tsuid = ds.file_meta.get("TransferSyntaxUID", "?")
        raise DicomDecodeError(f"{path}: cannot decode pixel data (transfer syntax {tsuid}): {exc}") from None

    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    frames = pixels if n_frames > 1 else pixels[None]
    base = _provenance(ds)
    sop = str(base.get("SOPInstanceUID", "")) or f"file:{path.name}"
    invert = photometric == "MONOCHROME1"
    slices = []
    for i, frame in enumerate(frames):
        rescale = _frame_rescale(ds, i) if n_frames > 1 else None
        if rescale is not None:
            hu = frame.astype(np.float64) * rescale[0] + rescale[1]
        else:
            hu = apply_modality_lut(frame, ds)
        prov = dict(base)
        key = sop
        if n_frames > 1:
            prov["frame"] = i + 1
            key = f"{sop}/{i + 1}"
        slices.append(DicomSlice(hu=np.asarray(hu, dtype=np.float32), provenance=prov, invert=invert, key=key))
    return slices


def read_dicom_slice(path: str | Path) -> DicomSlice:
    """The single slice of a one-frame DICOM file (see :func:`read_dicom` for multi-frame)."""
    slices = read_dicom(path)
    if len(slices) != 1:
        raise DicomError(f"{path}: has {len(slices)} frames; use read_dicom() to get one slice per frame")
    return slices[0]


def _header(path: Path) -> pydicom.Dataset | None:
    try:
        return _dcmread(path, stop_before_pixels=True)
    except (OSError, ValueError):
        return None


def _sort_key(item: tuple[Path, pydicom.Dataset]) -> tuple[str, int, str]:
    path, ds = item
    try:
        number = int(ds.get("InstanceNumber", 0) or 0)
    except (TypeError, ValueError):
        number = 0
    return (str(ds.get("SeriesInstanceUID", "")), number, str(path))


def find_dicom_files(paths: Iterable[str | Path]) -> list[Path]:
    """DICOM image files among ``paths`` (files, or folders searched recursively), sorted by
    (SeriesInstanceUID, InstanceNumber, path).

    Inside folders, files that are not DICOM or hold no image (DICOMDIR, reports) are skipped
    with a log line; a file named explicitly that is not DICOM raises :class:`DicomError`.
    """
    found: list[tuple[Path, pydicom.Dataset]] = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            files = sorted(q for q in p.rglob("*") if q.is_file() and q.suffix.lower() not in _NOT_DICOM)
            for f in files:
                ds = _header(f)
                if ds is None or "Rows" not in ds:
                    logger.debug("skipping %s: not a DICOM image", f)
                    continue
                found.append((f, ds))
        elif p.is_file():
            ds = _header(p)
            if ds is None:
                raise DicomError(f"{p}: not a DICOM file")
            if "Rows" not in ds:
                raise DicomError(f"{p}: DICOM file without an image (SOP class {ds.get('SOPClassUID', '?')})")
            found.append((p, ds))
        else:
            raise DicomError(f"{p}: no such file or folder")
    return [path for path, _ in sorted(found, key=_sort_key)]
