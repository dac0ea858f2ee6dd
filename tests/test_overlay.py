"""Overlays: mask outlines in class colors, labels, hardest/easiest index page."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from tsp_model.viz.overlay import class_color, load_image_from, outline, render_overlay, write_overlay_index
from tsp_model.core.records import ImageScore, InstanceScore


def square_rle(h: int, w: int, y0: int, y1: int, x0: int, x1: int) -> dict:
    m = np.zeros((h, w), np.uint8)
    m[y0:y1, x0:x1] = 1
    rle = mask_utils.encode(np.asfortranarray(m))
    rle["counts"] = rle["counts"].decode("ascii")
    return rle


def record(image_id: int, S: float, label: int = 1, name: str = "subdural", size: int = 64) -> ImageScore:
    inst = InstanceScore(
        label=label, category=name, box=[20, 24, 40, 44], c=0.97, b=0.91, m=0.85, s=0.91,
        mask=square_rle(size, size, 24, 44, 20, 40),
    )
    return ImageScore(image_id=image_id, file_name=f"img_{image_id}.png", width=size, height=size, S=S,
                      instances=[inst], model_version="v1")


def test_outline_is_mask_minus_erosion() -> None:
    m = np.zeros((7, 7), bool)
    m[1:6, 1:6] = True
    o = outline(m)
    expected = m.copy()
    expected[2:5, 2:5] = False
    np.testing.assert_array_equal(o, expected)
    # a mask touching the image edge has its outline on the edge too
    full = np.ones((4, 4), bool)
    assert outline(full)[0].all() and not outline(full)[1:3, 1:3].any()


def test_known_outline_pixel_has_class_color(tmp_path: Path) -> None:
    image = np.full((64, 64), 90, np.uint8)
    rec = record(1, S=0.5, label=2)
    out = tmp_path / "o.png"
    arr = render_overlay(image, rec, out, thickness=1)
    png = np.asarray(Image.open(out).convert("RGB"))
    np.testing.assert_array_equal(png, arr)
    # left edge of the square (x = 20) and bottom edge (y = 43), away from the text above the box
    assert tuple(png[35, 20]) == class_color(2) == (64, 200, 255)
    assert tuple(png[43, 30]) == class_color(2)
    # interior and background keep the image value
    assert tuple(png[34, 30]) == (90, 90, 90)
    assert tuple(png[60, 60]) == (90, 90, 90)
    # the label text strip sits above the box: something non-gray drawn in rows < 24 over x >= 20
    strip = png[8:24, 20:60]
    assert (strip != 90).any()


def test_mask_size_mismatch_is_clear() -> None:
    with pytest.raises(ValueError, match=r"img_1.png: instance mask size \[64, 64\] differs"):
        render_overlay(np.zeros((32, 32), np.uint8), record(1, S=0.5))


def test_index_lists_hardest_first_and_easiest(tmp_path: Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    recs = [record(i, S=s) for i, s in enumerate([0.6, 0.1, 0.9, 0.3, 0.75])]
    for r in recs:
        Image.fromarray(np.full((64, 64), 80, np.uint8)).save(images / r.file_name)
    recs.append(ImageScore(image_id=99, file_name="missing.png", width=64, height=64, S=0.05))
    index = write_overlay_index(recs, tmp_path / "ov", load_image_from(images), top=2)
    text = index.read_text()
    files = sorted(p.name for p in (tmp_path / "ov").glob("*.png"))
    # missing.png has the lowest S: skipped, the next ones take ranks 1 and 2
    assert files == ["easiest_001_img_2.png", "easiest_002_img_4.png", "hardest_001_img_1.png",
                     "hardest_002_img_3.png"]
    # hardest section first, S ascending; then easiest, S descending
    assert (text.index("hardest_001_img_1.png") < text.index("hardest_002_img_3.png")
            < text.index("easiest_001_img_2.png") < text.index("easiest_002_img_4.png"))
    assert "Images not found" in text and "missing.png" in text
    assert "subdural: 0.97 0.91 0.85" in text
    assert not list((tmp_path / "ov").glob(".*"))  # no temp files left


def test_scale_upsamples_image_mask_and_box() -> None:
    image = np.full((64, 64), 90, np.uint8)
    arr = render_overlay(image, record(1, S=0.5, label=1), scale=2, thickness=1)
    assert arr.shape == (128, 128, 3)
    # the square spans x 20..39 -> 40..79 after scaling; its left edge column is x = 40
    assert tuple(arr[70, 40]) == class_color(1)
    assert tuple(arr[70, 41]) == (90, 90, 90)  # 1 px outline at the output resolution
    assert tuple(arr[70, 39]) == (90, 90, 90)


def _label_strips(png: np.ndarray) -> list[tuple[int, int, int, int]]:
    """Bounding boxes (x0, y0, x1, y1) of the black label strips: 4-connected black components
    (the gray test images have no black pixel of their own)."""
    black = (png == 0).all(axis=-1)
    seen = np.zeros_like(black)
    boxes = []
    for y, x in zip(*np.nonzero(black), strict=True):
        if seen[y, x]:
            continue
        stack, pts = [(y, x)], []
        seen[y, x] = True
        while stack:
            cy, cx = stack.pop()
            pts.append((cy, cx))
            for ny, nx in ((cy + 1, cx), (cy - 1, cx), (cy, cx + 1), (cy, cx - 1)):
                if 0 <= ny < black.shape[0] and 0 <= nx < black.shape[1] and black[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    stack.append((ny, nx))
        ys, xs = zip(*pts, strict=True)
        boxes.append((int(min(xs)), int(min(ys)), int(max(xs)), int(max(ys))))

    def inside(a, b):  # the black hole of an "o" lies within its strip
        return a != b and b[0] <= a[0] and b[1] <= a[1] and a[2] <= b[2] and a[3] <= b[3]

    return [a for a in boxes if not any(inside(a, b) for b in boxes)]


def test_label_touches_its_outline_not_the_box_corner(tmp_path: Path) -> None:
    # a "┘"-shaped lesion: its box's top-left corner (30, 40) is far from every mask pixel; the
    # topmost mask pixels are the vertical bar's top, x 200..214 at y = 40
    size = 256
    m = np.zeros((size, size), np.uint8)
    m[40:200, 200:215] = 1
    m[185:200, 30:215] = 1
    rle = mask_utils.encode(np.asfortranarray(m))
    rle["counts"] = rle["counts"].decode("ascii")
    inst = InstanceScore(label=2, category="subdural", box=[30, 40, 215, 200], c=0.97, b=0.91, m=0.85, s=0.91,
                         mask=rle)
    rec = ImageScore(image_id=1, file_name="l.png", width=size, height=size, S=0.91, instances=[inst])
    png = render_overlay(np.full((size, size), 90, np.uint8), rec, thickness=1)
    strips = [b for b in _label_strips(png) if b[:2] != (0, 0)]  # the S strip sits at (0, 0)
    assert len(strips) == 1
    x0, y0, x1, y1 = strips[0]
    # right above the bar's top: 2 px gap, and horizontally over the bar (not starting at x = 30)
    assert y1 == 40 - 3
    assert x0 <= 207 <= x1
    assert x0 > 30 + 60


def test_labels_of_neighbours_do_not_cover_each_other() -> None:
    # two lesions side by side with their tops on one row: "above" for both would collide
    size = 128
    insts = []
    for k, x in enumerate((40, 60)):
        m = np.zeros((size, size), np.uint8)
        m[50:70, x:x + 10] = 1
        rle = mask_utils.encode(np.asfortranarray(m))
        rle["counts"] = rle["counts"].decode("ascii")
        insts.append(InstanceScore(label=k + 1, category="subdural", box=[x, 50, x + 10, 70], c=0.9, b=0.9, m=0.9,
                                   s=0.9, mask=rle))
    rec = ImageScore(image_id=1, file_name="n.png", width=size, height=size, S=0.9, instances=insts)
    png = render_overlay(np.full((size, size), 90, np.uint8), rec, thickness=1, scale=2)
    strips = _label_strips(png)
    assert len(strips) == 3  # S and two labels, none merged into another


def test_easiest_lists_only_slices_with_detections(tmp_path: Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    recs = [record(i, S=s) for i, s in enumerate([0.6, 0.1, 0.9])]
    recs += [ImageScore(image_id=10 + i, file_name=f"empty_{i}.png", width=64, height=64, S=1.0, model_version="v1")
             for i in range(3)]
    for r in recs:
        Image.fromarray(np.full((64, 64), 80, np.uint8)).save(images / r.file_name)
    index = write_overlay_index(recs, tmp_path / "ov", load_image_from(images), top=2)
    text = index.read_text()
    easiest = text[text.index("Easiest"):]
    # S = 1.0 empty slices are the highest S, yet "easiest" shows the detected 0.9 and 0.6
    assert "easiest_001_img_2.png" in easiest and "easiest_002_img_0.png" in easiest
    assert "empty_" not in easiest
    assert 'href="no_detection.html">3 images with no detection' in text
    page = (tmp_path / "ov" / "no_detection.html").read_text()
    assert "3 of 6 scored images have no detection; the first 2 are shown" in page
    assert "nodetection_001_empty_0.png" in page and "nodetection_002_empty_1.png" in page
    assert (tmp_path / "ov" / "nodetection_001_empty_0.png").is_file()
