"""Deterministic head-CT-like slices with intracranial hemorrhages, as PNG files + COCO json.

A stand-in for the paper's private head CT dataset, so that training, scoring, benchmarks and
demos run anywhere. Each slice is simulated in Hounsfield-like units (HU) and shown through a
brain window (center 40 HU, width 80 HU) as an 8-bit grayscale PNG:

- air (-1000 HU), a thin scalp (~35 HU) and an elliptical skull ring (bone, ~1000 HU: white);
- brain parenchyma: a cortical gray-matter band (~40 HU) over white matter (~28 HU) with
  low-frequency texture, a thin CSF rim under the skull, irregular gyri and sulci, a bright falx on the midline;
- dark CSF lateral ventricles (~5 HU), a butterfly-shaped pair near the center;
- acute hemorrhages (55-75 HU: brighter than brain, darker than bone), one instance mask each:
  ``epidural`` (short, thick biconvex lens against the inner skull), ``subdural`` (long thin
  crescent along the inner skull), ``intraparenchymal`` (irregular blob inside the brain with a
  dark edema halo);
- partial-volume blur and correlated noise (2.5-4.5 HU), then windowing.

Head size, ellipticity, position and rotation, ventricle size, noise level and lesion shapes vary
per slice. Lesions never overlap each other (masks are disjoint and not even touching), stay
inside the skull, avoid the ventricles, and cover at least ``20 * (size / 128) ** 2`` pixels
(at least 12).

Parameters of :func:`generate_phantoms` (also the CLI's options)::

    out_dir      folder to write; gets images/phantom_00000.png ... and annotations.json
    count        number of slices
    size         slice width = height in pixels (>= 32)
    seed         the whole output is a function of (seed, count, size, lesion_rate): the same
                 arguments give byte-identical files
    lesion_rate  fraction of slices with at least one lesion (exactly round(rate * count) of
                 them, chosen at random); positive slices hold 1-3 lesions, the rest none

Series (:func:`generate_series`): consecutive slices through one simulated head, lesions
growing and shrinking from slice to slice, each image tagged with its ``series_id``; the
near-duplicates of real CT, for group-aware splits and diversity measurements.

COCO layout: ``file_name`` is relative to the json's folder (``images/phantom_00000.png``), image
ids start at 1, masks are compressed RLE (``counts`` as str), ``bbox`` is xywh from the mask,
``iscrowd`` 0, categories 1..3 = epidural, subdural, intraparenchymal. Images are written first and
the json last, each atomically, so a dataset without its json was interrupted.

CLI::

    python -m tsp_model.synth.phantom OUT_DIR --count 200 --size 256 --seed 0 --lesion-rate 0.7
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import click
import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from tsp_model.core.atomic import atomic_save
from tsp_model.core.progress import progress as tsp_progress
from tsp_model.core.rle import rle_for_json
from tsp_model.data.coco_file import write_coco

__all__ = [
    "CATEGORIES",
    "CLASS_NAMES",
    "PhantomSlice",
    "generate_phantoms",
    "generate_series",
    "render_series",
    "render_slice",
    "series_levels",
    "window",
]

CLASS_NAMES = ["epidural", "subdural", "intraparenchymal"]
CATEGORIES = [{"id": i + 1, "name": n, "supercategory": "hemorrhage"} for i, n in enumerate(CLASS_NAMES)]

WINDOW_CENTER = 40.0
WINDOW_WIDTH = 80.0


@dataclass
class PhantomSlice:
    """One rendered slice: ``image`` uint8 [H, W] (brain window), ``hu`` float32 [H, W], and
    ``lesions`` as (category_id, bool mask [H, W]) pairs."""

    image: np.ndarray
    hu: np.ndarray
    lesions: list[tuple[int, np.ndarray]]


def window(hu: np.ndarray, center: float = WINDOW_CENTER, width: float = WINDOW_WIDTH) -> np.ndarray:
    """HU -> uint8 through a CT display window: ``center - width/2`` is black, ``+ width/2`` white."""
    lo = center - width / 2.0
    out = np.clip((hu - lo) / width, 0.0, 1.0) * 255.0
    return np.round(out).astype(np.uint8)


# ---------------------------------------------------------------------------- small numpy tools
def _box_blur(x: np.ndarray, radius: int = 1) -> np.ndarray:
    """Mean filter of side ``2 * radius + 1`` with edge replication (separable, via cumsum)."""
    k = 2 * radius + 1
    for axis in (0, 1):
        pad = [(0, 0), (0, 0)]
        pad[axis] = (radius + 1, radius)
        c = np.cumsum(np.pad(x, pad, mode="edge"), axis=axis, dtype=np.float64)
        hi = np.take(c, np.arange(k, c.shape[axis]), axis=axis)
        lo = np.take(c, np.arange(0, c.shape[axis] - k), axis=axis)
        x = (hi - lo) / k
    return x


def _dilate(mask: np.ndarray, steps: int = 1) -> np.ndarray:
    """Binary dilation by a 3x3 square, ``steps`` times."""
    out = mask.copy()
    for _ in range(steps):
        m = out.copy()
        m[1:, :] |= out[:-1, :]
        m[:-1, :] |= out[1:, :]
        m[:, 1:] |= out[:, :-1]
        m[:, :-1] |= out[:, 1:]
        m[1:, 1:] |= out[:-1, :-1]
        m[:-1, :-1] |= out[1:, 1:]
        m[1:, :-1] |= out[:-1, 1:]
        m[:-1, 1:] |= out[1:, :-1]
        out = m
    return out


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Low-frequency noise in about [-1, 1]: a random ``cells x cells`` grid, bilinearly upsampled."""
    grid = rng.standard_normal((cells + 1, cells + 1))
    t = np.linspace(0.0, cells, size)
    i0 = np.minimum(t.astype(int), cells - 1)
    f = t - i0
    rows = grid[i0] * (1 - f)[:, None] + grid[i0 + 1] * f[:, None]  # [size, cells+1]
    out = rows[:, i0] * (1 - f)[None, :] + rows[:, i0 + 1] * f[None, :]
    return out / 1.5


def _wrap(angle: np.ndarray) -> np.ndarray:
    return (angle + np.pi) % (2 * np.pi) - np.pi


# ---------------------------------------------------------------------------- one slice
class _Head:
    """Per-slice geometry in a rotated, centered frame; all distances in pixels.

    ``scale`` (0..1] shrinks the skull's cross-section: slices away from the head's widest level
    cut a smaller ellipse (series, :func:`generate_series`).
    """

    def __init__(self, rng: np.random.Generator, size: int, scale: float = 1.0) -> None:
        s = float(size)
        self.size = size
        self.a = s * rng.uniform(0.33, 0.39) * scale  # half-width (left-right)
        self.b = min(self.a * rng.uniform(1.08, 1.22), s * 0.45 * scale)  # half-height (front-back)
        self.cx = s / 2 + rng.normal(0, 0.015 * s)
        self.cy = s / 2 + rng.normal(0, 0.015 * s)
        self.theta = rng.uniform(-0.25, 0.25)
        self.bone = s * rng.uniform(0.022, 0.036)
        self.scalp = s * rng.uniform(0.012, 0.02)

        yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
        dx, dy = xx - self.cx, yy - self.cy
        ct, st = np.cos(self.theta), np.sin(self.theta)
        self.u = dx * ct + dy * st  # along the head's left-right axis
        self.v = -dx * st + dy * ct  # along the head's front-back axis
        self.ai, self.bi = self.a - self.bone, self.b - self.bone  # inner skull half-axes
        self.r_in = np.hypot(self.u / self.ai, self.v / self.bi)
        self.r_out = np.hypot(self.u / self.a, self.v / self.b)
        self.r_scalp = np.hypot(self.u / (self.a + self.scalp), self.v / (self.b + self.scalp))
        # Elliptic angle and depth under the inner skull along the ray (pixels).
        self.phi = np.arctan2(self.v / self.bi, self.u / self.ai)
        ray = np.hypot(self.ai * np.cos(self.phi), self.bi * np.sin(self.phi))
        self.depth = (1.0 - self.r_in) * ray
        self.brain = self.r_in < 1.0


def _ventricles(rng: np.random.Generator, head: _Head, extent: float = 1.0) -> np.ndarray:
    """Two tilted ellipses (lateral ventricles), a butterfly around the midline.

    ``extent`` in [0, 1] shrinks them (0: a slice above or below the ventricles); the random
    draws are the same whatever the extent, so the slices of one series share one anatomy.
    """
    scale = rng.uniform(0.55, 1.2) * extent
    dx = head.ai * rng.uniform(0.07, 0.12)
    dy = head.bi * rng.uniform(-0.12, 0.05)
    ax = head.ai * rng.uniform(0.05, 0.08) * scale
    ay = head.bi * rng.uniform(0.16, 0.28) * scale
    tilt = rng.uniform(0.2, 0.45)
    out = np.zeros(head.u.shape, dtype=bool)
    for side in (-1.0, 1.0):
        # Tops (front, negative v) diverge from the midline: the "butterfly".
        t = -side * tilt
        u, v = head.u - side * dx, head.v - dy
        uu = u * np.cos(t) + v * np.sin(t)
        vv = -u * np.sin(t) + v * np.cos(t)
        if extent > 0:
            out |= (uu / ax) ** 2 + (vv / ay) ** 2 < 1.0
    return out & head.brain


def _epidural(rng: np.random.Generator, head: _Head, g: float = 1.0) -> np.ndarray:
    """``g`` in (0, 1]: the lesion's cross-section at this slice relative to its widest."""
    phi0 = rng.uniform(-np.pi, np.pi)
    half = rng.uniform(0.22, 0.45) * np.sqrt(g)
    thick = head.size * rng.uniform(0.04, 0.075) * g
    d = np.abs(_wrap(head.phi - phi0)) / half
    profile = thick * np.sqrt(np.clip(1.0 - d**2, 0.0, None))  # biconvex lens
    return head.brain & (d < 1.0) & (head.depth < profile)


def _subdural(rng: np.random.Generator, head: _Head, g: float = 1.0) -> np.ndarray:
    phi0 = rng.uniform(-np.pi, np.pi)
    half = rng.uniform(0.6, 1.1) * np.sqrt(g)
    thick = head.size * rng.uniform(0.025, 0.045) * np.sqrt(g)
    d = np.abs(_wrap(head.phi - phi0)) / half
    profile = thick * np.clip(1.0 - d**2, 0.0, None) ** 0.35  # long, even, tapered crescent
    return head.brain & (d < 1.0) & (head.depth < profile)


def _intraparenchymal(rng: np.random.Generator, head: _Head, g: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Irregular blob well inside the brain; returns (mask, edema halo)."""
    r = rng.uniform(0.2, 0.7)
    ang = rng.uniform(-np.pi, np.pi)
    cu, cv = r * head.ai * np.cos(ang), r * head.bi * np.sin(ang)
    radius = head.size * rng.uniform(0.03, 0.07) * g
    du, dv = head.u - cu, head.v - cv
    alpha = np.arctan2(dv, du)
    wobble = np.ones_like(alpha)
    for k in (2, 3, 4):
        wobble += rng.uniform(0.0, 0.14) * np.cos(k * alpha + rng.uniform(0, 2 * np.pi))
    rho = np.hypot(du, dv) / (radius * wobble)
    halo = head.brain & (rho >= 1.0) & (rho < 1.0 + rng.uniform(0.25, 0.6))
    return head.brain & (rho < 1.0), halo


def _brain_hu(rng: np.random.Generator, head: _Head, ventricles: np.ndarray) -> np.ndarray:
    size = head.size
    hu = np.full((size, size), -1000.0)
    hu[head.r_scalp < 1.0] = rng.uniform(25, 45)
    skull = (head.r_out < 1.0) & ~head.brain
    hu[skull] = 1000.0 + 300.0 * _smooth_noise(rng, size, 6)[skull]

    gm, wm = rng.uniform(36, 41), rng.uniform(26, 31)
    cortex = head.size * rng.uniform(0.045, 0.07)
    # Gyri: the cortical band's thickness wanders irregularly with the angle.
    wander = np.zeros_like(head.phi)
    for k in range(3, 12):
        wander += rng.normal(0, 1.0 / k**0.5) * np.cos(k * head.phi + rng.uniform(0, 2 * np.pi))
    band = cortex * np.clip(1.0 + 0.25 * wander, 0.5, 1.5)
    brain_hu = np.where(head.depth < band, gm, wm) + 2.0 * _smooth_noise(rng, size, 5)
    # Sulci: thin CSF clefts entering from the surface at random angles and depths.
    ray = head.depth / np.maximum(1.0 - head.r_in, 1e-6)  # distance center -> inner skull
    width = max(0.8, head.size * 0.004)
    for phi_k in rng.uniform(-np.pi, np.pi, rng.integers(14, 24)):
        reach = band.max() * rng.uniform(0.6, 1.4)
        bend = rng.uniform(-0.04, 0.04) * head.depth / max(reach, 1.0)  # slightly curved
        cleft = (np.abs(_wrap(head.phi - phi_k - bend)) * ray < width) & (head.depth < reach)
        brain_hu = np.where(cleft, 0.4 * brain_hu + 0.6 * 8.0, brain_hu)
    # Thin CSF rim between skull and brain.
    rim = head.depth < max(1.0, head.size * 0.006)
    brain_hu = np.where(rim, 12.0, brain_hu)
    # Falx: bright dural fold on the midline, front and back.
    falx = (np.abs(head.u) < max(0.6, head.size * 0.003)) & (np.abs(head.v) > head.bi * 0.45)
    brain_hu = np.where(falx, 50.0, brain_hu)
    brain_hu = np.where(ventricles, rng.uniform(2, 9), brain_hu)
    hu[head.brain] = brain_hu[head.brain]
    return hu


_LESIONS = {1: _epidural, 2: _subdural}


def _lesion_mask(rng: np.random.Generator, head: _Head, cat: int, g: float = 1.0) -> tuple[np.ndarray, np.ndarray | None]:
    if cat == 3:
        return _intraparenchymal(rng, head, g)
    return _LESIONS[cat](rng, head, g), None


def _min_area(size: int) -> int:
    return max(12, int(round(20 * (size / 128) ** 2)))


def _finish(rng: np.random.Generator, head: _Head, hu: np.ndarray, lesions: list[tuple[int, np.ndarray]],
            halos: np.ndarray, taken: np.ndarray) -> PhantomSlice:
    """Blood, edema, partial-volume blur and acquisition noise (drawn from ``rng``), then the window."""
    size = head.size
    halos = halos & ~taken
    hu = np.where(halos, 0.5 * hu + 0.5 * 18.0, hu)  # vasogenic edema: darker than brain
    for _, mask in lesions:
        blood = rng.uniform(55, 75) + 3.0 * _smooth_noise(rng, size, 8)
        hu = np.where(mask, blood, hu)

    hu = _box_blur(hu, 1)  # partial volume at edges
    sigma = rng.uniform(2.5, 4.5)
    # A 3x3 mean divides white-noise std by 3; draw 3x larger for the target std.
    noise = _box_blur(rng.normal(0.0, 3.0 * sigma, (size, size)), 1)
    hu = np.where(head.r_scalp < 1.0, hu + noise, hu).astype(np.float32)
    return PhantomSlice(image=window(hu), hu=hu, lesions=lesions)


def render_slice(rng: np.random.Generator, size: int, n_lesions: int) -> PhantomSlice:
    """Render one slice with up to ``n_lesions`` hemorrhages (0 = a normal slice).

    A lesion that cannot be placed (overlap, too small) is redrawn up to 50 times in all; a
    positive slice (``n_lesions >= 1``) always gets at least one lesion.
    """
    if size < 32:
        raise ValueError(f"phantom size must be >= 32 pixels, got {size}")
    head = _Head(rng, size)
    ventricles = _ventricles(rng, head)
    hu = _brain_hu(rng, head, ventricles)

    min_area = _min_area(size)
    taken = _dilate(ventricles, 1)
    lesions: list[tuple[int, np.ndarray]] = []
    halos = np.zeros((size, size), dtype=bool)
    attempts = 0
    while len(lesions) < n_lesions and attempts < 50:
        attempts += 1
        cat = int(rng.integers(1, 4))
        mask, halo = _lesion_mask(rng, head, cat)
        if mask.sum() < min_area or (mask & taken).any():
            continue
        lesions.append((cat, mask))
        # One pixel of clearance keeps instances apart (masks neither overlap nor touch).
        taken |= _dilate(mask, 1)
        if halo is not None:
            halos |= halo
    if n_lesions and not lesions:
        raise RuntimeError(f"could not place a lesion on a {size}px slice; use a larger size")
    return _finish(rng, head, hu, lesions, halos, taken)


# ---------------------------------------------------------------------------- series
@dataclass
class _LesionPlan:
    """One hemorrhage through a series: its class, the level ``z0`` where it is widest and its
    half-extent ``h`` (both on the series' z axis, -1..1), and the seed of its shape."""

    cat: int
    z0: float
    h: float
    seed: int


def series_levels(slices: int) -> np.ndarray:
    """The z of each slice of a series, evenly spaced over [-0.9, 0.9] (top to bottom)."""
    return np.linspace(-0.9, 0.9, slices) if slices > 1 else np.zeros(1)


def render_series(seed: int | list[int], size: int, slices: int, n_lesions: int) -> list[PhantomSlice]:
    """Consecutive slices through one simulated head: the near-duplicates real CT has.

    Every slice redraws the head's anatomy from the same anatomy stream, so skull, texture,
    sulci and falx agree from slice to slice; the skull's cross-section shrinks away from the
    middle (``sqrt(1 - (0.6 z)^2)``) and the ventricles appear in the central slices only. Each
    of the ``n_lesions`` hemorrhages is a 3-D blob: widest at its level ``z0``, shrinking as
    ``sqrt(1 - ((z - z0) / h)^2)`` and gone beyond ``h`` (h spans about 2-6 slices of 12), so a
    lesion grows and shrinks across neighbouring slices; where it is smaller than the minimum
    area, or would touch an earlier lesion, it is left out of that slice. Acquisition noise is
    drawn per slice.

    Args:
        seed: the series' seed (an int or a list of ints for ``numpy.random.default_rng``).
        size: slice side in pixels (>= 32).
        slices: number of slices.
        n_lesions: hemorrhages planned in the series (0: a normal head).
    """
    if size < 32:
        raise ValueError(f"phantom size must be >= 32 pixels, got {size}")
    base = list(seed) if isinstance(seed, (list, tuple)) else [int(seed)]
    plan_rng = np.random.default_rng(base + [0])
    plans = []
    for k in range(n_lesions):
        z0 = float(plan_rng.uniform(-0.6, 0.6))
        plans.append(_LesionPlan(cat=int(plan_rng.integers(1, 4)), z0=z0, h=float(plan_rng.uniform(0.2, 0.5)),
                                 seed=int(plan_rng.integers(2**31))))
    min_area = _min_area(size)
    out = []
    for k, z in enumerate(series_levels(slices)):
        anatomy = np.random.default_rng(base + [1])  # the same draws on every slice
        head = _Head(anatomy, size, scale=float(np.sqrt(1.0 - (0.6 * z) ** 2)))
        ventricles = _ventricles(anatomy, head, extent=float(np.clip(1.0 - (z / 0.55) ** 2, 0.0, 1.0)))
        hu = _brain_hu(anatomy, head, ventricles)
        taken = _dilate(ventricles, 1)
        lesions: list[tuple[int, np.ndarray]] = []
        halos = np.zeros((size, size), dtype=bool)
        for plan in plans:
            d = (z - plan.z0) / plan.h
            if abs(d) >= 1.0:
                continue
            mask, halo = _lesion_mask(np.random.default_rng(plan.seed), head, plan.cat, float(np.sqrt(1.0 - d * d)))
            if mask.sum() < min_area or (mask & taken).any():
                continue
            lesions.append((plan.cat, mask))
            taken |= _dilate(mask, 1)
            if halo is not None:
                halos |= halo
        out.append(_finish(np.random.default_rng(base + [2, k]), head, hu, lesions, halos, taken))
    return out


# ---------------------------------------------------------------------------- dataset writing
def _save_png(image: np.ndarray, path: Path) -> None:
    atomic_save(path, lambda tmp: Image.fromarray(image).save(tmp, format="PNG"))


def generate_phantoms(
    out_dir: str | Path,
    count: int,
    size: int = 256,
    seed: int = 0,
    lesion_rate: float = 0.7,
    progress: bool = True,
) -> Path:
    """Write ``count`` phantom slices and their COCO json under ``out_dir``; return the json path.

    See the module docstring for the parameters and the layout. Same arguments -> byte-identical
    files (slice ``i`` draws from ``numpy.random.default_rng([seed, i])``).
    """
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    if not 0.0 <= lesion_rate <= 1.0:
        raise ValueError(f"lesion_rate must be in [0, 1], got {lesion_rate}")
    if size < 32:
        raise ValueError(f"size must be >= 32 pixels, got {size}")
    out_dir = Path(out_dir)
    img_dir = out_dir / "images"
    img_dir.mkdir(parents=True, exist_ok=True)

    n_pos = int(round(lesion_rate * count))
    positive = np.zeros(count, dtype=bool)
    positive[np.random.default_rng(seed).permutation(count)[:n_pos]] = True

    images: list[dict] = []
    annotations: list[dict] = []
    for i in tsp_progress(range(count), desc="phantoms", unit="slice", enabled=progress):
        rng = np.random.default_rng([seed, i])
        n_lesions = int(rng.choice([1, 2, 3], p=[0.55, 0.3, 0.15])) if positive[i] else 0
        sl = render_slice(rng, size, n_lesions)
        images.append(_write_slice(out_dir, f"images/phantom_{i:05d}.png", sl, i + 1, size, annotations))
    info = {
        "description": "tsp-al synthetic head CT phantoms (brain window 40/80)",
        "generator": "tsp_model.synth.phantom",
        "count": count,
        "size": size,
        "seed": seed,
        "lesion_rate": lesion_rate,
    }
    return write_coco(out_dir / "annotations.json", images, annotations, CATEGORIES, info=info)


def _write_slice(out_dir: Path, file_name: str, sl: PhantomSlice, image_id: int, size: int,
                 annotations: list[dict], **fields: object) -> dict:
    _save_png(sl.image, out_dir / file_name)
    for cat, mask in sl.lesions:
        rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
        annotations.append({
            "id": len(annotations) + 1,
            "image_id": image_id,
            "category_id": cat,
            "segmentation": rle_for_json(rle),
            "area": float(mask_utils.area(rle)),
            "bbox": [float(v) for v in mask_utils.toBbox(rle)],
            "iscrowd": 0,
        })
    return {"id": image_id, "file_name": file_name, "width": size, "height": size, **fields}


def generate_series(
    out_dir: str | Path,
    series: int,
    slices: int = 12,
    size: int = 256,
    seed: int = 0,
    lesion_rate: float = 0.75,
    first_series: int = 0,
    progress: bool = True,
) -> Path:
    """Write ``series`` heads of ``slices`` consecutive slices each (:func:`render_series`) and
    their COCO json under ``out_dir``; return the json path.

    Each image carries ``series_id`` ("series_00007"), ``slice_index`` (0-based, top to bottom)
    and ``instance_number`` (1-based, as DICOM numbers slices), so that splits can keep a
    series on one side (``tsp_model.simulate.group_split``). A fraction ``lesion_rate`` of the
    series (exactly ``round(lesion_rate * series)``) plan 1-3 hemorrhages; the others are
    normal heads. Series ``j`` draws from ``default_rng([seed, first_series + j, ...])``: the
    same arguments give byte-identical files, and ``first_series`` offsets the numbering so
    that pool and test sets can come from one seed without sharing a head.
    """
    if series < 0 or slices < 1:
        raise ValueError(f"need series >= 0 and slices >= 1, got {series} and {slices}")
    if not 0.0 <= lesion_rate <= 1.0:
        raise ValueError(f"lesion_rate must be in [0, 1], got {lesion_rate}")
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    n_pos = int(round(lesion_rate * series))
    positive = np.zeros(series, dtype=bool)
    positive[np.random.default_rng([seed, first_series]).permutation(series)[:n_pos]] = True
    images: list[dict] = []
    annotations: list[dict] = []
    bar = tsp_progress(total=series * slices, desc="phantom series", unit="slice", enabled=progress)
    for j in range(series):
        sid = first_series + j
        count_rng = np.random.default_rng([seed, sid, 9])
        n_lesions = int(count_rng.choice([1, 2, 3], p=[0.5, 0.35, 0.15])) if positive[j] else 0
        for k, sl in enumerate(render_series([seed, sid], size, slices, n_lesions)):
            image_id = len(images) + 1
            images.append(_write_slice(out_dir, f"images/series_{sid:05d}_{k:03d}.png", sl, image_id, size,
                                       annotations, series_id=f"series_{sid:05d}", slice_index=k,
                                       instance_number=k + 1))
            bar.update(1)
    bar.close()
    info = {
        "description": "tsp-al synthetic head CT series (brain window 40/80)",
        "generator": "tsp_model.synth.phantom.generate_series",
        "series": series, "slices": slices, "size": size, "seed": seed, "lesion_rate": lesion_rate,
        "first_series": first_series,
    }
    return write_coco(out_dir / "annotations.json", images, annotations, CATEGORIES, info=info)


@click.command()
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--count", default=100, show_default=True, type=click.IntRange(min=0),
              help="Number of slices (independent slices), or of series with --series-slices.")
@click.option("--size", default=256, show_default=True, type=click.IntRange(min=32), help="Slice side in pixels.")
@click.option("--seed", default=0, show_default=True, type=int, help="Random seed (same seed, same files).")
@click.option("--lesion-rate", default=0.7, show_default=True, type=click.FloatRange(0.0, 1.0),
              help="Fraction of slices (or series) with at least one hemorrhage.")
@click.option("--series-slices", type=click.IntRange(min=1), default=None,
              help="Write COUNT series of this many consecutive slices through one head each.")
def main(out_dir: Path, count: int, size: int, seed: int, lesion_rate: float, series_slices: int | None) -> None:
    """Write synthetic head-CT slices with hemorrhage masks to OUT_DIR (PNG + COCO json)."""
    if series_slices:
        path = generate_series(out_dir, count, slices=series_slices, size=size, seed=seed, lesion_rate=lesion_rate)
    else:
        path = generate_phantoms(out_dir, count, size=size, seed=seed, lesion_rate=lesion_rate)
    click.echo(str(path))


if __name__ == "__main__":
    main()
