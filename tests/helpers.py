"""Small shared fixtures: a generated "bright shapes" data set, on disk (COCO) or in memory.

Class 1 ("box") is a filled rectangle, class 2 ("disk") a filled ellipse, on a dark noisy
background: learnable in a few steps, and independent of the phantom generator.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from tsp_model.core.config import TSPConfig

CLASS_NAMES = ["box", "disk"]


def make_shapes(rng: np.random.Generator, size: int = 64, max_shapes: int = 2) -> tuple[np.ndarray, list[tuple[int, np.ndarray]]]:
    """One image uint8[H, W, 3] and its instances [(label 1..2, bool mask[H, W])]."""
    img = rng.normal(30, 8, (size, size)).clip(0, 255)
    yy, xx = np.mgrid[:size, :size]
    instances: list[tuple[int, np.ndarray]] = []
    occupied = np.zeros((size, size), bool)
    for _ in range(int(rng.integers(1, max_shapes + 1))):
        for _attempt in range(10):
            label = int(rng.integers(1, 3))
            h, w = (int(v) for v in rng.integers(size // 6, size // 3, 2))
            y0, x0 = int(rng.integers(1, size - h - 1)), int(rng.integers(1, size - w - 1))
            if label == 1:
                m = (yy >= y0) & (yy < y0 + h) & (xx >= x0) & (xx < x0 + w)
            else:
                cy, cx = y0 + h / 2, x0 + w / 2
                m = ((yy + 0.5 - cy) / (h / 2)) ** 2 + ((xx + 0.5 - cx) / (w / 2)) ** 2 <= 1.0
            if not (m & occupied).any() and m.sum() > 4:
                break
        else:
            continue
        occupied |= m
        img[m] = rng.normal(200 if label == 1 else 150, 5, int(m.sum())).clip(0, 255)
        instances.append((label, m))
    rgb = np.repeat(img.astype(np.uint8)[..., None], 3, axis=2)
    return rgb, instances


def to_target(instances: list[tuple[int, np.ndarray]], image_id: int, size: int) -> dict[str, Any]:
    """torchvision-style target for ``instances``."""
    if instances:
        masks = torch.from_numpy(np.stack([m for _, m in instances]).astype(np.uint8))
        boxes = []
        for _, m in instances:
            ys, xs = np.nonzero(m)
            boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
        boxes_t = torch.tensor(boxes, dtype=torch.float32)
        labels = torch.tensor([lab for lab, _ in instances], dtype=torch.int64)
    else:
        masks = torch.zeros((0, size, size), dtype=torch.uint8)
        boxes_t = torch.zeros((0, 4), dtype=torch.float32)
        labels = torch.zeros((0,), dtype=torch.int64)
    return {"boxes": boxes_t, "labels": labels, "masks": masks, "image_id": image_id, "pseudo": False}


class TinyShapes(torch.utils.data.Dataset):
    """In-memory generated data set: items ``(FloatTensor[3, H, W] in 0..1, target)``."""

    class_names = CLASS_NAMES

    def __init__(self, count: int = 4, size: int = 64, seed: int = 0, first_id: int = 1, pseudo: bool = False):
        rng = np.random.default_rng(seed)
        self.size = size
        self.items = [make_shapes(rng, size) for _ in range(count)]
        self.ids = list(range(first_id, first_id + count))
        self.pseudo = pseudo

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, idx: int):
        rgb, inst = self.items[idx]
        image = torch.from_numpy(rgb).permute(2, 0, 1).float() / 255.0
        target = to_target(inst, self.ids[idx], self.size)
        target["pseudo"] = self.pseudo
        return image, target


def write_tiny_coco(out_dir: str | Path, count: int = 4, size: int = 64, seed: int = 0) -> Path:
    """Write ``count`` PNGs plus ``annotations.json`` (polygon segmentations) under ``out_dir``."""
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    images, anns = [], []
    for i in range(count):
        rgb, inst = make_shapes(rng, size)
        name = f"img_{i:03d}.png"
        Image.fromarray(rgb).save(out_dir / "images" / name)
        images.append({"id": i + 1, "file_name": name, "width": size, "height": size})
        for label, m in inst:
            rle = mask_utils.encode(np.asfortranarray(m.astype(np.uint8)))
            rle["counts"] = rle["counts"].decode("ascii")
            x, y, w, h = (float(v) for v in mask_utils.toBbox(rle))
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": i + 1,
                    "category_id": label,
                    "segmentation": rle,
                    "area": float(m.sum()),
                    "bbox": [x, y, w, h],
                    "iscrowd": 0,
                }
            )
    data = {
        "images": images,
        "annotations": anns,
        "categories": [{"id": k + 1, "name": n} for k, n in enumerate(CLASS_NAMES)],
    }
    path = out_dir / "annotations.json"
    path.write_text(json.dumps(data))
    return path


def tiny_config(**train: Any) -> TSPConfig:
    """A config for CPU tests: tiny backbone, 64 px, 1 epoch, batch 2, no workers, no AMP."""
    cfg = TSPConfig()
    cfg.model.backbone = "tiny_fpn"
    cfg.model.min_size = 64
    cfg.model.max_size = 64
    cfg.train.epochs = 1
    cfg.train.batch_size = 2
    cfg.train.workers = 0
    cfg.train.lr = 0.01
    cfg.train.lr_steps = [1.0]
    cfg.train.lr_steps_unit = "fraction"
    cfg.train.amp = False
    cfg.train.log_every = 1
    cfg.score.batch_size = 2
    cfg.score.workers = 0
    for k, v in train.items():
        setattr(cfg.train, k, v)
    return cfg
