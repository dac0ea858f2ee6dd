"""Pictures of pool scores: each instance's mask outline with ``label: c b m`` (paper, Figure 3b).

:func:`render_overlay` draws one image: every instance's mask outline (mask XOR its 3x3
erosion, thickened for large images) in its class color, the text ``"<category>: c b m"``
(e.g. ``epidural: 0.97 0.91 0.85``) on a dark strip above the box (below it when the box touches
the top edge), and ``S = <S_i>`` in the top-left corner. Instances without a stored mask get
their box drawn instead.

:func:`write_overlay_index` renders the ``top`` hardest (lowest ``S``) and easiest (highest
``S``) images of a score file and writes ``index.html``, a table of thumbnails to open in a
browser. Every file is written atomically (temp file + ``os.replace``).
"""

from __future__ import annotations

import html
import logging
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from pycocotools import mask as mask_utils

from tsp_model.records import ImageScore
from tsp_model.atomic import atomic_save, atomic_write_text

logger = logging.getLogger(__name__)

__all__ = ["CLASS_COLORS", "class_color", "outline", "render_overlay", "write_overlay_index", "load_image_from"]

# Label k (1..K) uses CLASS_COLORS[(k - 1) % len]: saturated colors that stand out on gray CT.
CLASS_COLORS: tuple[tuple[int, int, int], ...] = (
    (255, 64, 64),  # red
    (64, 200, 255),  # sky blue
    (255, 210, 0),  # yellow
    (80, 255, 80),  # green
    (255, 80, 255),  # magenta
    (255, 140, 0),  # orange
)


def class_color(label: int) -> tuple[int, int, int]:
    """RGB color of model label ``label`` (1..K)."""
    return CLASS_COLORS[(int(label) - 1) % len(CLASS_COLORS)]


def _erode(mask: np.ndarray) -> np.ndarray:
    """3x3 binary erosion; pixels outside the image count as background."""
    p = np.pad(mask, 1, constant_values=False)
    h, w = mask.shape
    out = np.ones_like(mask, dtype=bool)
    for dy in range(3):
        for dx in range(3):
            out &= p[dy : dy + h, dx : dx + w]
    return out


def outline(mask: np.ndarray, thickness: int = 1) -> np.ndarray:
    """bool [H, W] -> bool [H, W]: the mask pixels within ``thickness`` px of its border
    (``mask XOR erode^thickness(mask)``)."""
    mask = np.asarray(mask, dtype=bool)
    inner = mask
    for _ in range(max(1, thickness)):
        inner = _erode(inner)
    return mask & ~inner


def _to_rgb(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"overlay image must be uint8, got {image.dtype}")
    if image.ndim == 2:
        return np.repeat(image[..., None], 3, axis=-1)
    if image.ndim == 3 and image.shape[-1] == 3:
        return image.copy()
    if image.ndim == 3 and image.shape[-1] == 4:
        return image[..., :3].copy()
    raise ValueError(f"overlay image must be [H, W] or [H, W, 3], got shape {image.shape}")


def _font(height: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    size = max(10, height // 36)
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has only the fixed bitmap font
        return ImageFont.load_default()


def _label_text(name: str, c: float, b: float, m: float) -> str:
    return f"{name}: {c:.2f} {b:.2f} {m:.2f}"


def _atomic_save(img: Image.Image, path: Path) -> None:
    atomic_save(path, lambda tmp: img.save(tmp, format="PNG"))


def render_overlay(
    image: np.ndarray,
    record: ImageScore,
    out_path: str | Path | None = None,
    class_names: Sequence[str] | None = None,
    thickness: int | None = None,
    scale: int = 1,
) -> np.ndarray:
    """Draw ``record``'s instances on ``image`` and save a PNG when ``out_path`` is given.

    Args:
        image: uint8 [H, W] (gray) or [H, W, 3] (RGB), the image the record was scored on.
        record: its :class:`~tsp_model.records.ImageScore`; instance masks are COCO RLE of
            size [H, W].
        out_path: where to write the PNG (atomically); None to only return the array.
        class_names: names WITHOUT background (label k -> class_names[k-1]); default: each
            instance's ``category``.
        thickness: outline width in px of the output; default ``max(1, min(H, W) * scale // 256)``.
        scale: integer upscaling (nearest neighbour) before drawing, so that labels on small
            slices stay readable; masks and boxes are scaled alike.

    Returns:
        uint8 [H * scale, W * scale, 3], the overlay.

    Raises:
        ValueError: wrong image layout, or a mask whose size differs from the image's.
    """
    rgb = _to_rgb(image)
    h0, w0 = rgb.shape[:2]
    scale = max(1, int(scale))
    if scale > 1:
        rgb = np.repeat(np.repeat(rgb, scale, axis=0), scale, axis=1)
    h, w = rgb.shape[:2]
    t = thickness if thickness is not None else max(1, min(h, w) // 256)
    boxes_only = []
    for inst in record.instances:
        color = np.array(class_color(inst.label), dtype=np.uint8)
        if inst.mask is None:
            boxes_only.append(inst)
            continue
        size = [int(v) for v in inst.mask["size"]]
        if size != [h0, w0]:
            raise ValueError(
                f"{record.file_name}: instance mask size {size} differs from the image's [{h0}, {w0}]"
            )
        m = mask_utils.decode(inst.mask).astype(bool)
        if scale > 1:
            m = np.repeat(np.repeat(m, scale, axis=0), scale, axis=1)
        rgb[outline(m, t)] = color

    pil = Image.fromarray(rgb)
    draw = ImageDraw.Draw(pil)
    font = _font(h)
    for inst in boxes_only:
        x1, y1, x2, y2 = (v * scale for v in inst.box)
        draw.rectangle([x1, y1, x2 - 1, y2 - 1], outline=class_color(inst.label), width=t)
    for inst in record.instances:
        name = class_names[inst.label - 1] if class_names and 0 < inst.label <= len(class_names) else inst.category
        text = _label_text(name, inst.c, inst.b, inst.m)
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        tw, th = right - left, bottom - top
        x1, y1, _, y2 = (v * scale for v in inst.box)
        x = int(min(max(0, x1), max(0, w - tw - 2)))
        y = int(y1) - th - 4
        if y < 0:  # no room above the box: write below it
            y = min(int(y2) + 2, h - th - 4)
        draw.rectangle([x, y, x + tw + 2, y + th + 3], fill=(0, 0, 0))
        draw.text((x + 1 - left, y + 1 - top), text, fill=class_color(inst.label), font=font)
    s_text = f"S = {record.S:.3f}"
    left, top, right, bottom = draw.textbbox((0, 0), s_text, font=font)
    draw.rectangle([0, 0, right - left + 4, bottom - top + 4], fill=(0, 0, 0))
    draw.text((2 - left, 2 - top), s_text, fill=(255, 255, 255), font=font)
    if out_path is not None:
        _atomic_save(pil, Path(out_path))
    return np.asarray(pil)


def load_image_from(image_dir: str | Path) -> Callable[[ImageScore], np.ndarray]:
    """An image loader for :func:`write_overlay_index`: ``image_dir / record.file_name`` as uint8."""
    root = Path(image_dir)

    def load(record: ImageScore) -> np.ndarray:
        with Image.open(root / record.file_name) as img:
            return np.asarray(img.convert("RGB") if img.mode not in ("L", "RGB") else img.copy())

    return load


def _safe_stem(record: ImageScore) -> str:
    stem = Path(record.file_name).stem or str(record.image_id)
    return re.sub(r"[^A-Za-z0-9._-]+", "_", stem)[:80]


def _atomic_text(path: Path, text: str) -> None:
    atomic_write_text(path, text)


def _section(title: str, rows: list[tuple[int, ImageScore, str]]) -> str:
    lines = [f"<h2>{html.escape(title)}</h2>", "<table>", "<tr><th>#</th><th>overlay</th><th>S</th>"
             "<th>file</th><th>instances (label: c b m)</th></tr>"]
    for rank, rec, png in rows:
        insts = "<br>".join(
            html.escape(_label_text(i.category, i.c, i.b, i.m)) for i in rec.instances
        ) or "(none)"
        href = html.escape(png, quote=True)
        lines.append(
            f'<tr><td>{rank}</td><td><a href="{href}"><img src="{href}" width="256"></a></td>'
            f"<td>{rec.S:.4f}</td><td>{html.escape(rec.file_name)}</td><td>{insts}</td></tr>"
        )
    lines.append("</table>")
    return "\n".join(lines)


def write_overlay_index(
    records: Sequence[ImageScore],
    out_dir: str | Path,
    load_image: Callable[[ImageScore], np.ndarray],
    top: int = 10,
    class_names: Sequence[str] | None = None,
    title: str = "TSP scores",
) -> Path:
    """Render the ``top`` hardest (lowest ``S`` first) and easiest (highest ``S`` first) images
    into ``out_dir`` and write ``out_dir/index.html``; returns the index path.

    Images that ``load_image`` cannot provide (it raises ``OSError``/``KeyError``) are skipped
    (the next one in order takes the rank), listed at the end of the page, and logged.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    groups = {
        "hardest": sorted(records, key=lambda r: (r.S, str(r.image_id))),
        "easiest": sorted(records, key=lambda r: (-r.S, str(r.image_id))),
    }
    sections, missing = [], []
    for kind, ordered in groups.items():
        rows: list[tuple[int, ImageScore, str]] = []
        for rec in ordered:
            if len(rows) >= top:
                break
            try:
                image = load_image(rec)
            except (OSError, KeyError) as exc:
                logger.warning("overlay: no image for %s (%s); skipped", rec.file_name, exc)
                missing.append(rec.file_name)
                continue
            rank = len(rows) + 1
            png = f"{kind}_{rank:03d}_{_safe_stem(rec)}.png"
            # small slices are upscaled (up to 4x, towards 512 px) so the labels stay legible
            scale = min(4, max(1, 512 // max(1, max(image.shape[:2]))))
            render_overlay(image, rec, out / png, class_names=class_names, scale=scale)
            rows.append((rank, rec, png))
        label = "Hardest (lowest S: most informative)" if kind == "hardest" else "Easiest (highest S)"
        sections.append(_section(f"{label}, top {top}", rows))
    versions = sorted({r.model_version for r in records if r.model_version})
    head = (
        "<!doctype html>\n<html><head><meta charset=\"utf-8\">"
        f"<title>{html.escape(title)}</title>"
        "<style>body{font-family:sans-serif;background:#111;color:#eee}"
        "table{border-collapse:collapse}td,th{border:1px solid #444;padding:4px;vertical-align:top}"
        "a{color:#8cf}</style></head><body>"
        f"<h1>{html.escape(title)}</h1>"
        f"<p>{len(records)} scored images; model version {html.escape(', '.join(versions) or '?')}. "
        "Each instance reads <code>label: c b m</code> (class, box IoU and mask IoU scores); "
        "S is the image score (eq. 3).</p>"
    )
    tail = ""
    if missing:
        items = "".join(f"<li>{html.escape(m)}</li>" for m in sorted(set(missing)))
        tail = f"<h2>Images not found</h2><ul>{items}</ul>"
    index = out / "index.html"
    _atomic_text(index, head + "\n".join(sections) + tail + "</body></html>\n")
    return index
