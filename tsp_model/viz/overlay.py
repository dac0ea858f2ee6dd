"""Pictures of pool scores: each instance's mask outline with ``label: c b m`` (paper, Figure 3b).

:func:`render_overlay` draws one image: every instance's mask outline (mask XOR its 3x3
erosion, thickened for large images) in its class color, the text ``"<category>: c b m"``
(e.g. ``epidural: 0.97 0.91 0.85``) on a dark strip touching the outline (just above its topmost
pixel, else below its lowest, right or left of it, whichever fits the image and covers no other
label), and ``S = <S_i>`` in the top-left corner. Instances without a stored mask get their box
drawn instead, labeled the same way.

:func:`write_overlay_index` renders, from a score file, the ``top`` hardest images (lowest ``S``)
and the ``top`` easiest images that have detections (highest ``S`` among them) into
``index.html``, and the images without any detection into ``no_detection.html`` (their ``S`` is
the empty-image rule's, not the model's confidence in a finding): tables of thumbnails to open in
a browser. Every file is written atomically (temp file + ``os.replace``).
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

from tsp_model.core.records import ImageScore
from tsp_model.core.atomic import atomic_save, atomic_write_text

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


Rect = tuple[int, int, int, int]  # x0, y0, x1, y1 (inclusive)


def _overlaps(a: Rect, b: Rect) -> int:
    """Overlap area of two rectangles (0 when apart)."""
    w = min(a[2], b[2]) - max(a[0], b[0]) + 1
    h = min(a[3], b[3]) - max(a[1], b[1]) + 1
    return max(0, w) * max(0, h)


def _label_rect(region: np.ndarray | None, box: Sequence[float], size: tuple[int, int], w: int, h: int,
                taken: Sequence[Rect], gap: int = 2) -> Rect:
    """Where a ``w`` x ``h`` label of one instance goes: touching its outline.

    Candidates, in order: ``gap`` px above the region's topmost pixel, below its lowest, right of
    its rightmost, left of its leftmost (``region``: bool [H, W] mask, or None to use ``box``
    [x1, y1, x2, y2]), each slid along that edge to lie inside the ``size`` = (H, W) image. The
    first that fits without leaving its edge and covers no ``taken`` rectangle wins, else the one
    that does least of both.
    """
    height, width = size
    if region is not None and region.any():
        ys, xs = np.nonzero(region)
        top, bottom = int(ys.min()), int(ys.max())
        left, right = int(xs.min()), int(xs.max())
        top_x = int(np.median(xs[ys == top]))
        bottom_x = int(np.median(xs[ys == bottom]))
        left_y = int(np.median(ys[xs == left]))
        right_y = int(np.median(ys[xs == right]))
    else:
        left, top, right, bottom = (int(round(v)) for v in box)
        right, bottom = max(left, right - 1), max(top, bottom - 1)
        top_x = bottom_x = (left + right) // 2
        left_y = right_y = (top + bottom) // 2
    candidates = [  # (x, y, whether it keeps touching the outline: only the along-edge shift is free)
        (top_x - w // 2, top - gap - h, top - gap - h >= 0),  # above
        (bottom_x - w // 2, bottom + gap + 1, bottom + gap + h < height),  # below
        (right + gap + 1, right_y - h // 2, right + gap + w < width),  # right
        (left - gap - w, left_y - h // 2, left - gap - w >= 0),  # left
    ]
    options = []
    for order, (x, y, touching) in enumerate(candidates):
        x = min(max(0, x), max(0, width - w))
        y = min(max(0, y), max(0, height - h))
        rect = (x, y, x + w - 1, y + h - 1)
        cost = sum(_overlaps(rect, t) for t in taken) + (0 if touching else width * height)
        options.append((cost, order, rect))
    return min(options)[2]


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
        record: its :class:`~tsp_model.core.records.ImageScore`; instance masks are COCO RLE of
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
    regions: list[np.ndarray | None] = []
    for inst in record.instances:
        color = np.array(class_color(inst.label), dtype=np.uint8)
        if inst.mask is None:
            regions.append(None)
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
        regions.append(m)

    pil = Image.fromarray(rgb)
    draw = ImageDraw.Draw(pil)
    font = _font(h)
    s_text = f"S = {record.S:.3f}"
    s_left, s_top, s_right, s_bottom = draw.textbbox((0, 0), s_text, font=font)
    taken: list[Rect] = [(0, 0, s_right - s_left + 4, s_bottom - s_top + 4)]
    for inst, region in zip(record.instances, regions, strict=True):
        box = [v * scale for v in inst.box]
        if region is None:
            draw.rectangle([box[0], box[1], box[2] - 1, box[3] - 1], outline=class_color(inst.label), width=t)
        name = class_names[inst.label - 1] if class_names and 0 < inst.label <= len(class_names) else inst.category
        text = _label_text(name, inst.c, inst.b, inst.m)
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        tw, th = right - left + 3, bottom - top + 4
        x0, y0, x1, y1 = _label_rect(region, box, (h, w), tw, th, taken)
        taken.append((x0, y0, x1, y1))
        draw.rectangle([x0, y0, x1, y1], fill=(0, 0, 0))
        draw.text((x0 + 1 - left, y0 + 1 - top), text, fill=class_color(inst.label), font=font)
    draw.rectangle(list(taken[0]), fill=(0, 0, 0))
    draw.text((2 - s_left, 2 - s_top), s_text, fill=(255, 255, 255), font=font)
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


def _render_rows(kind: str, ordered: Sequence[ImageScore], out: Path, load_image: Callable[[ImageScore], np.ndarray],
                 top: int, class_names: Sequence[str] | None, missing: list[str]) -> list[tuple[int, ImageScore, str]]:
    """Render the first ``top`` records of ``ordered`` that have an image as ``<kind>_<rank>_<stem>.png``."""
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
    return rows


def _page(title: str, intro: str, body: str, missing: Sequence[str]) -> str:
    tail = ""
    if missing:
        items = "".join(f"<li>{html.escape(m)}</li>" for m in sorted(set(missing)))
        tail = f"<h2>Images not found</h2><ul>{items}</ul>"
    return (
        "<!doctype html>\n<html><head><meta charset=\"utf-8\">"
        f"<title>{html.escape(title)}</title>"
        "<style>body{font-family:sans-serif;background:#111;color:#eee}"
        "table{border-collapse:collapse}td,th{border:1px solid #444;padding:4px;vertical-align:top}"
        "a{color:#8cf}</style></head><body>"
        f"<h1>{html.escape(title)}</h1><p>{intro}</p>" + body + tail + "</body></html>\n"
    )


NO_DETECTION_PAGE = "no_detection.html"


def write_overlay_index(
    records: Sequence[ImageScore],
    out_dir: str | Path,
    load_image: Callable[[ImageScore], np.ndarray],
    top: int = 10,
    class_names: Sequence[str] | None = None,
    title: str = "TSP scores",
) -> Path:
    """Render overlays into ``out_dir`` and write two pages; returns the ``index.html`` path.

    ``index.html``: the ``top`` hardest images (lowest ``S`` first: what the queue serves), then
    the ``top`` easiest images *with detections* (highest ``S`` first: what the model is most sure
    it found). ``no_detection.html``: up to ``top`` images without any detection, with their
    count; their ``S`` comes from the empty-image rule, so they are kept apart from "easiest".

    Images that ``load_image`` cannot provide (it raises ``OSError``/``KeyError``) are skipped
    (the next one in order takes the rank), listed at the end of the page, and logged.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    detected = [r for r in records if r.instances]
    empty = sorted((r for r in records if not r.instances), key=lambda r: str(r.image_id))
    missing: list[str] = []
    hardest = _render_rows("hardest", sorted(records, key=lambda r: (r.S, str(r.image_id))), out, load_image, top,
                           class_names, missing)
    easiest = _render_rows("easiest", sorted(detected, key=lambda r: (-r.S, str(r.image_id))), out, load_image, top,
                           class_names, missing)
    missing_empty: list[str] = []
    nothing = _render_rows("nodetection", empty, out, load_image, top, class_names, missing_empty)

    versions = sorted({r.model_version for r in records if r.model_version})
    intro = (
        f"{len(records)} scored images; model version {html.escape(', '.join(versions) or '?')}. "
        "Each instance reads <code>label: c b m</code> (class, box IoU and mask IoU scores); "
        "S is the image score (eq. 3)."
    )
    link = (f'<p><a href="{NO_DETECTION_PAGE}">{len(empty)} images with no detection</a> '
            f"(their S is the empty-image rule's, so they are listed apart).</p>")
    body = "\n".join([
        _section(f"Hardest (lowest S: most informative, labeled first), top {top}", hardest),
        _section(f"Easiest with detections (highest S: the model is most sure of what it found), top {top}", easiest),
        link,
    ])
    _atomic_text(out / NO_DETECTION_PAGE, _page(
        f"{title}: no detection", f'{len(empty)} of {len(records)} scored images have no detection; the first '
        f'{len(nothing)} are shown. <a href="index.html">Back to the hardest and easiest.</a>',
        _section("No detection", nothing), missing_empty))
    index = out / "index.html"
    _atomic_text(index, _page(title, intro, body, missing))
    return index
