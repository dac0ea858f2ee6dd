"""Read an image file (or its bytes) into one float layout: ``float32 [H, W, 3]`` in ``[0, 1]``.

Medical images come as 8-bit PNG/JPEG, 16-bit grayscale PNG/TIFF, RGB(A) or palette files. Every
reader in the project goes through :func:`read_image` so that the model always sees the same
layout:

- 8-bit data is divided by 255;
- 16-bit, 32-bit integer and float data is rescaled by the image's own min..max (a constant
  image becomes all zeros), because raw CT/MR intensities have no fixed white point;
- grayscale is replicated to 3 channels; an alpha channel is dropped; palette images are
  expanded to RGB.

TIFF files are read with ``tifffile`` when it is installed (it handles 16-bit and float TIFFs that
Pillow does not) and with Pillow otherwise. Any failure raises :class:`ImageError`, a
``ValueError`` whose message names the file and the reason. With ``max_pixels``, an image larger
than that is refused from its header, before any pixel is decoded (decompression bombs:
a few kilobytes of PNG can expand to gigabytes).
"""

from __future__ import annotations

import io
from pathlib import Path

from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, UnidentifiedImageError

if TYPE_CHECKING:
    import torch

try:  # optional: the "dev" extra installs it
    import tifffile
except ImportError:  # pragma: no cover - depends on the environment
    tifffile = None

__all__ = ["ImageError", "ImageTooLargeError", "read_image", "to_tensor", "verify_image"]

_TIFF_SUFFIXES = {".tif", ".tiff"}
_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


class ImageError(ValueError):
    """An image cannot be read; the message names the file (or the given name) and why."""


class ImageTooLargeError(ImageError):
    """The image has more pixels than the caller allows (checked before decoding)."""


def _check_pixels(width: int, height: int, max_pixels: int | None, label: str) -> None:
    if max_pixels is not None and width * height > max_pixels:
        raise ImageTooLargeError(
            f"{label}: {width}x{height} image ({width * height / 1e6:.1f} megapixels) is above the limit of "
            f"{max_pixels / 1e6:.1f} megapixels"
        )


def _label(source: str | Path | bytes, name: str | None) -> str:
    if name is not None:
        return name
    if isinstance(source, (bytes, bytearray, memoryview)):
        return "<bytes>"
    return str(source)


def _is_tiff(source: str | Path | bytes) -> bool:
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source[:4]) in _TIFF_MAGIC
    return Path(source).suffix.lower() in _TIFF_SUFFIXES


def _normalize(arr: np.ndarray, label: str) -> np.ndarray:
    """Scale any dtype to float32 in [0, 1] and any channel layout to [H, W, 3]."""
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim == 3 and arr.shape[-1] in (2, 4):  # gray+alpha or RGBA: drop alpha
        arr = arr[..., :-1]
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] != 3):
        raise ImageError(
            f"{label}: unsupported image layout {tuple(arr.shape)}; expected a single 2-D "
            "grayscale, RGB or RGBA image (multi-page or volume files: export one slice)"
        )
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ImageError(f"{label}: image has zero size {tuple(arr.shape)}")

    if arr.dtype == np.uint8:
        out = arr.astype(np.float32) / 255.0
    elif arr.dtype == np.bool_:
        out = arr.astype(np.float32)
    elif np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating):
        out = arr.astype(np.float64)
        if not np.all(np.isfinite(out)):
            raise ImageError(f"{label}: image contains NaN or infinite values")
        lo, hi = float(out.min()), float(out.max())
        out = (out - lo) / (hi - lo) if hi > lo else np.zeros_like(out)
        out = out.astype(np.float32)
    else:
        raise ImageError(f"{label}: unsupported pixel type {arr.dtype}")

    if out.ndim == 2:
        out = np.repeat(out[:, :, None], 3, axis=2)
    return np.ascontiguousarray(out, dtype=np.float32)


def _pil_to_array(img: Image.Image) -> np.ndarray:
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    elif img.mode in ("1", "CMYK", "YCbCr", "LAB", "HSV"):
        img = img.convert("L" if img.mode == "1" else "RGB")
    elif img.mode.startswith("I;16"):
        # "I;16B"/"I;16L"/"I;16N" all arrive as native uint16 in numpy.
        return np.asarray(img).astype(np.uint16)
    return np.asarray(img)


def _read_with_pillow(source: str | Path | bytes, label: str, max_pixels: int | None = None) -> np.ndarray:
    fp = io.BytesIO(bytes(source)) if isinstance(source, (bytes, bytearray, memoryview)) else source
    try:
        with Image.open(fp) as img:  # reads the header only
            _check_pixels(img.width, img.height, max_pixels, label)
            img.load()  # Pillow decodes lazily; force it so truncation shows up here
            return _pil_to_array(img)
    except ImageTooLargeError:
        raise
    except Image.DecompressionBombError as exc:  # Pillow's own ceiling, when ours is higher or None
        raise ImageTooLargeError(f"{label}: {exc}") from exc
    except FileNotFoundError as exc:
        raise ImageError(f"{label}: file not found") from exc
    except UnidentifiedImageError as exc:
        raise ImageError(f"{label}: not a recognized image format") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise ImageError(f"{label}: cannot decode image ({exc}); the file may be truncated or corrupt") from exc


def _read_with_tifffile(source: str | Path | bytes, label: str, max_pixels: int | None = None) -> np.ndarray:
    fp = io.BytesIO(bytes(source)) if isinstance(source, (bytes, bytearray, memoryview)) else source
    with tifffile.TiffFile(fp) as tif:
        page = tif.pages[0]
        _check_pixels(int(page.imagewidth), int(page.imagelength), max_pixels, label)
        return np.asarray(page.asarray())


def read_image(source: str | Path | bytes, name: str | None = None, max_pixels: int | None = None) -> np.ndarray:
    """Read an image into ``float32 [H, W, 3]`` in ``[0, 1]``.

    Args:
        source: a file path, or the encoded file's bytes.
        name: how to call the image in error messages (defaults to the path, or ``<bytes>``).
        max_pixels: refuse images with more pixels (width x height), from the header, before
            decoding; None: no limit of ours (Pillow's decompression-bomb ceiling still applies).

    Raises:
        ImageTooLargeError: more than ``max_pixels`` pixels.
        ImageError: the file is missing, unreadable, truncated, or has an unsupported layout.
    """
    label = _label(source, name)
    if not isinstance(source, (bytes, bytearray, memoryview)) and not Path(source).is_file():
        raise ImageError(f"{label}: file not found")
    if tifffile is not None and _is_tiff(source):
        try:
            arr = _read_with_tifffile(source, label, max_pixels)
        except ImageTooLargeError:
            raise
        except Exception:
            # Some TIFF flavours (old JPEG compression, odd tags) only Pillow reads; if it also
            # fails, its error is the one reported.
            arr = _read_with_pillow(source, label, max_pixels)
    else:
        arr = _read_with_pillow(source, label, max_pixels)
    return _normalize(arr, label)


def verify_image(path: str | Path) -> tuple[int, int]:
    """Cheaply check that ``path`` is a readable image and return its ``(width, height)``.

    Reads only headers (and, for PNG, the chunk checksums), so datasets can drop bad files at
    construction instead of failing inside a DataLoader worker.

    Raises:
        ImageError: the file is missing or not a readable image.
    """
    p = Path(path)
    if not p.is_file():
        raise ImageError(f"{p}: file not found")
    if tifffile is not None and _is_tiff(p):
        try:
            with tifffile.TiffFile(p) as tif:
                shape = tif.pages[0].shape
            return int(shape[1]), int(shape[0])
        except Exception:
            pass  # fall through to Pillow, which reports its own reason
    try:
        with Image.open(p) as img:
            size = img.size
            img.verify()
        return int(size[0]), int(size[1])
    except UnidentifiedImageError as exc:
        raise ImageError(f"{p}: not a recognized image format") from exc
    except Exception as exc:  # verify() raises assorted exception types on corrupt data
        raise ImageError(f"{p}: corrupt image header or data ({exc})") from exc


def to_tensor(arr: np.ndarray) -> torch.Tensor:
    """``float32 [H, W, 3]`` array -> ``FloatTensor[3, H, W]`` (a copy, contiguous)."""
    import torch  # late: reading an image must not load torch (tsp-sync pull, status)

    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"to_tensor expects an [H, W, 3] array, got shape {tuple(arr.shape)}")
    return torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32)).permute(2, 0, 1).contiguous()
