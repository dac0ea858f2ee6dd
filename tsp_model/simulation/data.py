"""The data of a replay: a fully labeled COCO set, checked, and split by group into pool,
validation and test (:mod:`tsp_model.simulation.splits`)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tsp_model.data.coco import CocoInstanceDataset
from tsp_model.simulation.settings import SimulationError, SimulationSettings
from tsp_model.simulation.splits import Split, group_split

__all__ = ["SimulationData", "load_simulation_data"]


@dataclass
class SimulationData:
    pool: CocoInstanceDataset  # train=True; the oracle's labels
    validation: CocoInstanceDataset | None  # train=False
    tests: dict[str, CocoInstanceDataset]  # "test" first
    groups: dict[int, str]  # pool and validation image id -> group
    description: dict[str, Any]


def _check_coco(path: Path, image_dir: Path, what: str) -> dict[str, Any]:
    """The COCO document, or SimulationError naming what is wrong (one line)."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SimulationError(f"{path}: {what} COCO file not found") from None
    except json.JSONDecodeError as exc:
        raise SimulationError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("images"), list) or not isinstance(doc.get("categories"), list):
        raise SimulationError(f"{path}: not a COCO instances file (needs 'images' and 'categories' lists)")
    anns = doc.get("annotations") or []
    if not doc["images"]:
        raise SimulationError(f"{path}: no images")
    if not anns:
        raise SimulationError(f"{path}: no annotations; simulate needs a fully labeled set with instance masks")
    cat_ids = {c.get("id") for c in doc["categories"]}
    unknown = sorted({a.get("category_id") for a in anns} - cat_ids, key=str)
    if unknown:
        raise SimulationError(f"{path}: annotations use category ids {unknown[:5]} not listed in 'categories'; "
                              "add them or fix the annotations")
    no_mask = [a.get("id") for a in anns if not a.get("segmentation")]
    if no_mask:
        raise SimulationError(f"{path}: {len(no_mask)} annotations have no segmentation (e.g. id {no_mask[0]}); "
                              "simulate needs instance masks (polygons or RLE), not boxes alone")
    image_ids = {im.get("id") for im in doc["images"]}
    orphans = [a.get("id") for a in anns if a.get("image_id") not in image_ids]
    if orphans:
        raise SimulationError(f"{path}: {len(orphans)} annotations point at image ids not in 'images' (e.g. "
                              f"annotation {orphans[0]})")
    missing = [im.get("file_name") for im in doc["images"] if not (image_dir / str(im.get("file_name"))).is_file()]
    if missing:
        raise SimulationError(f"{path}: {len(missing)} of {len(doc['images'])} images are missing under {image_dir} "
                              f"(first: {missing[0]}); pass the folder the file_name entries are relative to")
    return doc


def load_simulation_data(
    coco: str | Path,
    images: str | Path | None,
    settings: SimulationSettings,
    *,
    test_coco: str | Path | None = None,
    test_images: str | Path | None = None,
    extra_tests: dict[str, tuple[Path, Path]] | None = None,
) -> tuple[SimulationData, Split]:
    """Check the COCO set(s) and split them (a given test set is used as is)."""
    coco, image_dir = Path(coco), Path(images) if images else Path(coco).parent
    doc = _check_coco(coco, image_dir, "the labeled")
    split = group_split(doc["images"], validation=settings.validation if settings.uses_validation else 0.0,
                        test=0.0 if test_coco else settings.test, seed=settings.split_seed,
                        group_key=settings.group_key)
    try:
        full = CocoInstanceDataset(doc, image_dir, train=True)
        pool = full.subset(split.pool)
        tests: dict[str, CocoInstanceDataset] = {}
        if test_coco:
            test_coco = Path(test_coco)
            tdir = Path(test_images) if test_images else test_coco.parent
            _check_coco(test_coco, tdir, "the test")
            tests["test"] = CocoInstanceDataset(test_coco, tdir, train=False, class_names=full.class_names)
        else:
            tests["test"] = CocoInstanceDataset(doc, image_dir, train=False).subset(split.test)
        for name, (ann, idir) in (extra_tests or {}).items():
            _check_coco(ann, idir, name)
            tests[name] = CocoInstanceDataset(ann, idir, train=False, class_names=full.class_names)
        validation = (CocoInstanceDataset(doc, image_dir, train=False).subset(split.validation)
                      if split.validation else None)
    except (ValueError, KeyError) as exc:
        raise SimulationError(f"{coco}: {' '.join(str(exc).split())}") from None
    if len(pool) < settings.budget * settings.cycles:
        raise SimulationError(f"{settings.cycles} cycles x b = {settings.budget} need {settings.budget * settings.cycles} "
                              f"pool images; the pool has {len(pool)} (lower --budget or --cycles)")
    desc = {"coco": str(coco), "images": str(image_dir), "class_names": full.class_names, "split": split.describe(),
            "test_sets": {k: len(v) for k, v in tests.items()}}
    groups = {i: split.groups[i] for i in split.pool + split.validation}
    return SimulationData(pool, validation, tests, groups, desc), split
