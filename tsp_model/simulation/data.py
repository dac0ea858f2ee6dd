"""The data of a replay: a fully labeled COCO set, checked, and split by group into pool,
validation and test (:mod:`tsp_model.simulation.splits`)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tsp_model.data.coco import CocoInstanceDataset
from tsp_model.simulation.settings import SimulationError, SimulationSettings
from tsp_model.simulation.splits import GroupKeyError, Split, group_split

__all__ = ["CROWD_RULES", "SimulationData", "load_simulation_data", "resolve_crowd"]

CROWD_RULES = ("auto", "instances", "ignore")


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


def resolve_crowd(doc: dict[str, Any], rule: str, path: Path) -> str | None:
    """Decide, in ``doc``, what its ``iscrowd: 1`` annotations are; returns a line to print, or None.

    COCO means a crowd annotation as a region ignored in training and evaluation (``"ignore"``:
    kept so). CVAT's COCO export (Datumaro's ``convert_instance``: ``is_crowd = mask is not
    None``) marks every instance it saves as a mask ``iscrowd: 1``; ``"instances"`` makes them
    ordinary instances (``iscrowd`` set to 0 in memory). ``"auto"``: instances when every mask
    (RLE) annotation of the file is a crowd one, as CVAT writes them, saying so; a file that mixes
    crowd and ordinary masks stops with one line naming the option. "ignore" that leaves nothing
    to train on stops too: never a silent zero.
    """
    anns = doc.get("annotations") or []
    crowd = [a for a in anns if a.get("iscrowd", 0)]
    if not crowd:
        return None
    if rule == "auto":
        masks = [a for a in anns if isinstance(a.get("segmentation"), dict)]
        if not all(a.get("iscrowd", 0) for a in masks):
            raise SimulationError(
                f"{path}: {len(crowd)} of {len(anns)} annotations are iscrowd 1 beside ordinary mask annotations; pass "
                "--crowd instances (they are lesions, e.g. exported by CVAT) or --crowd ignore (COCO's regions to "
                "ignore)")
        rule = "instances"
        note = (f"{path}: {len(crowd)} mask annotations have iscrowd 1, as CVAT's COCO export writes every mask "
                "instance: trained and evaluated as instances (--crowd ignore to skip them as COCO does)")
    else:
        note = None
    if rule == "instances":
        for a in crowd:
            a["iscrowd"] = 0
        return note
    if len(crowd) == len(anns):
        raise SimulationError(f"{path}: all {len(anns)} annotations are iscrowd 1, which --crowd ignore leaves out: "
                              "nothing to train on; pass --crowd instances if they are lesions (e.g. a CVAT export)")
    return None


def load_simulation_data(
    coco: str | Path,
    images: str | Path | None,
    settings: SimulationSettings,
    *,
    test_coco: str | Path | None = None,
    test_images: str | Path | None = None,
    extra_tests: dict[str, tuple[Path, Path]] | None = None,
) -> tuple[SimulationData, Split]:
    """Check the COCO set(s), decide what their crowd annotations are (:func:`resolve_crowd`)
    and split them (a given test set is used as is)."""
    coco, image_dir = Path(coco), Path(images) if images else Path(coco).parent
    sources = {"labeled": (coco, image_dir)}
    if test_coco:
        sources["test"] = (Path(test_coco), Path(test_images) if test_images else Path(test_coco).parent)
    sources.update({name: (Path(ann), Path(idir)) for name, (ann, idir) in (extra_tests or {}).items()})
    docs, notes = {}, []
    for name, (path, folder) in sources.items():
        docs[name] = _check_coco(path, folder, f"the {name}" if name in ("labeled", "test") else name)
        note = resolve_crowd(docs[name], settings.crowd, path)
        notes += [note] if note else []
    doc = docs["labeled"]
    try:
        split = group_split(doc["images"], validation=settings.validation if settings.uses_validation else 0.0,
                            test=0.0 if test_coco else settings.test, seed=settings.split_seed,
                            group_key=settings.group_key)
    except GroupKeyError as exc:
        raise SimulationError(f"{coco}: {exc}") from None
    try:
        full = CocoInstanceDataset(doc, image_dir, train=True)
        pool = full.subset(split.pool)
        evaluation = CocoInstanceDataset(doc, image_dir, train=False)
        tests = {"test": evaluation.subset(split.test)} if not test_coco else {}
        for name, (_, folder) in sources.items():
            if name != "labeled":
                tests[name] = CocoInstanceDataset(docs[name], folder, train=False, class_names=full.class_names)
        validation = evaluation.subset(split.validation) if split.validation else None
    except (ValueError, KeyError) as exc:
        raise SimulationError(f"{coco}: {' '.join(str(exc).split())}") from None
    if len(pool) < settings.budget * settings.cycles:
        raise SimulationError(f"{settings.cycles} cycles x b = {settings.budget} need {settings.budget * settings.cycles} "
                              f"pool images; the pool has {len(pool)} (lower --budget or --cycles)")
    desc = {"coco": str(coco), "images": str(image_dir), "class_names": full.class_names, "split": split.describe(),
            "test_sets": {k: len(v) for k, v in tests.items()}, "crowd": settings.crowd, "notes": notes}
    groups = {i: split.groups[i] for i in split.pool + split.validation}
    return SimulationData(pool, validation, tests, groups, desc), split
