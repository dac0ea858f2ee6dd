"""Label Studio regions: the one place their shape is written (masks and scores -> prediction
dicts) and read back (an annotation's regions -> COCO masks).

The backend (``tsp-backend``) and the CLI (``tsp-sync score`` pushing predictions) both call
:func:`prediction_for_task`, so a prediction served live and one pushed by the CLI are identical;
``tsp-sync pull`` reads annotations with :func:`region_to_rle`.

One small class per control tag turns one instance into that tag's region:

- :class:`BrushRegions`: ``value.format = "rle"``, ``value.rle`` from
  ``label_studio_sdk.converter.brush.mask2rle`` on a uint8 0/255 mask (Label Studio's RGBA RLE).
- :class:`PolygonRegions`: the outer contour of the mask's largest component, points in percent
  of the image width and height.

Every region carries ``score = s`` (eq. 2) and ``meta.text`` saying what that score is and showing
``c``, ``b`` and ``m``; the
prediction carries ``score = S_i``, exactly the score record's (eq. 3 over the scored instances,
``active.score_threshold``), whatever regions are shown: the queue Label Studio serves is the
queue TSP computed. Regions are the *shown* set only (``c >= active.show_threshold``): a wrong
region costs a radiologist a click to delete; every detection stays in the score file.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np


__all__ = [
    "BrushRegions",
    "LabelConfigError",
    "PolygonRegions",
    "RegionError",
    "RegionInstance",
    "TagTarget",
    "instances_from_record",
    "meta_text",
    "parse_label_config",
    "prediction_for_task",
    "region_to_rle",
]

SUPPORTED_TAGS = ("BrushLabels", "PolygonLabels")


class LabelConfigError(ValueError):
    """The project's label config cannot be served; the message names the tag or labels."""


class RegionError(ValueError):
    """A region cannot be read as a mask of its image; the message names the task and what to do."""


@dataclass(frozen=True)
class TagTarget:
    """Where predictions go: a supported control tag on an Image object tag."""

    tag: str  # "BrushLabels" or "PolygonLabels"
    from_name: str  # the control tag's name
    to_name: str  # the Image tag's name
    value_key: str  # task data key holding the image URL ("$image" -> "image")
    labels: tuple[str, ...]  # the control's label values, in config order


@dataclass
class RegionInstance:
    """One detected instance, in pixels of the original image.

    ``mask`` is a bool/uint8 array [H, W] or a COCO RLE dict ``{"size": [h, w], "counts": ...}``.
    """

    category: str
    c: float
    b: float
    m: float
    s: float
    mask: Any


def meta_text(c: float, b: float, m: float, s: float) -> str:
    """What a radiologist reads with a region: what its score (Label Studio shows it beside the
    label, e.g. ``subdural 0.62``) is, and the three scores it combines (eq. 2)::

        score 0.62 = how sure the model is of this region (1 = sure): class c 0.97 · box b 0.91 · mask m 0.85
    """
    return (f"score {s:.2f} = how sure the model is of this region (1 = sure): "
            f"class c {c:.2f} · box b {b:.2f} · mask m {m:.2f}")


def _mask_array(mask: Any, height: int, width: int) -> np.ndarray:
    """Bool [H, W] from an array or a COCO RLE dict; raises ValueError on a size mismatch."""
    if isinstance(mask, dict):
        from pycocotools import mask as mask_utils

        from tsp_model.core.rle import rle_for_pycocotools

        arr = mask_utils.decode(rle_for_pycocotools(mask))
    else:
        arr = np.asarray(mask)
    arr = arr.astype(bool)
    if arr.shape != (height, width):
        raise ValueError(f"mask shape {arr.shape} does not match the image ({height}, {width})")
    return arr


class _Regions:
    """Base: the fields every region has; subclasses fill ``value``."""

    type: str = ""

    def __init__(self, target: TagTarget, width: int, height: int) -> None:
        self.target = target
        self.width = int(width)
        self.height = int(height)

    def value(self, mask: np.ndarray, label: str) -> dict | None:
        raise NotImplementedError

    def region(self, inst: RegionInstance, region_id: str) -> dict | None:
        """One Label Studio result dict, or None when the mask has nothing to draw."""
        mask = _mask_array(inst.mask, self.height, self.width)
        value = self.value(mask, inst.category)
        if value is None:
            return None
        return {
            "id": region_id,
            "type": self.type,
            "from_name": self.target.from_name,
            "to_name": self.target.to_name,
            "original_width": self.width,
            "original_height": self.height,
            "image_rotation": 0,
            "value": value,
            "score": float(inst.s),
            "meta": {"text": [meta_text(inst.c, inst.b, inst.m, inst.s)]},
            "readonly": False,
        }


class BrushRegions(_Regions):
    """BrushLabels: Label Studio's RLE of the mask as an RGBA image (0 or 255 per channel)."""

    type = "brushlabels"

    def value(self, mask: np.ndarray, label: str) -> dict | None:
        from label_studio_sdk.converter.brush import mask2rle

        if not mask.any():
            return None  # nothing a radiologist could see or edit
        rle = mask2rle(mask.astype(np.uint8) * 255)
        return {"format": "rle", "rle": [int(v) for v in rle], "brushlabels": [label]}


class PolygonRegions(_Regions):
    """PolygonLabels: outer contour of the largest connected part, points in percent.

    Only one polygon per instance (one region per detection, as with brushes); small satellite
    blobs of a mask are dropped.
    """

    type = "polygonlabels"

    def value(self, mask: np.ndarray, label: str) -> dict | None:
        import cv2

        contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        if not contours:
            return None
        contour = max(contours, key=cv2.contourArea).reshape(-1, 2)
        if len(contour) < 3:
            return None  # a 1-2 pixel speck: not a polygon Label Studio can draw
        points = [
            [round(float(x) / self.width * 100.0, 4), round(float(y) / self.height * 100.0, 4)]
            for x, y in contour
        ]
        return {"points": points, "polygonlabels": [label], "closed": True}


REGION_CLASSES: dict[str, type[_Regions]] = {"BrushLabels": BrushRegions, "PolygonLabels": PolygonRegions}


def parse_label_config(label_config: str, class_names: Sequence[str] | None = None) -> TagTarget:
    """Find the control tag predictions go to, with label-studio-sdk's ``LabelInterface``.

    Args:
        label_config: the project's XML label config.
        class_names: the checkpoint's classes (without background); when given, every label in
            the chosen tag must be one of them.

    Raises:
        LabelConfigError: no BrushLabels/PolygonLabels on an Image tag, or labels the checkpoint
            does not know.
    """
    from label_studio_sdk.label_interface import LabelInterface

    if not label_config or not label_config.strip():
        raise LabelConfigError("empty label config: add a BrushLabels or PolygonLabels tag on an Image tag")
    try:
        li = LabelInterface(label_config)
    except Exception as exc:  # the SDK raises assorted lxml/parse errors
        raise LabelConfigError(f"label config is not valid XML for Label Studio ({exc})") from None
    found = []
    for control in li.controls:
        if control.tag not in SUPPORTED_TAGS:
            continue
        for to_name in control.to_name or []:
            obj = li.get_object(to_name) if to_name in {o.name for o in li.objects} else None
            if obj is not None and obj.tag == "Image":
                found.append((control, obj))
                break
    if not found:
        tags = sorted({c.tag for c in li.controls}) or ["none"]
        raise LabelConfigError(
            f"label config has no BrushLabels or PolygonLabels tag on an Image tag (control tags: "
            f"{', '.join(tags)}); add <BrushLabels> or <PolygonLabels toName=\"<image tag>\">"
        )
    control, obj = found[0]
    labels = tuple(control.labels or [])
    if not labels:
        raise LabelConfigError(f"{control.tag} tag {control.name!r} has no <Label> values; add the lesion classes")
    if class_names is not None:
        unknown = [lb for lb in labels if lb not in set(class_names)]
        if unknown:
            raise LabelConfigError(
                f"{control.tag} tag {control.name!r} has labels the checkpoint does not know: "
                f"{', '.join(unknown)} (checkpoint classes: {', '.join(class_names)}); rename them to match "
                "or train a checkpoint with these classes"
            )
    return TagTarget(
        tag=control.tag,
        from_name=control.name,
        to_name=obj.name,
        value_key=str(obj.value).lstrip("$"),
        labels=labels,
    )


def instances_from_record(record: Any) -> list[RegionInstance]:
    """``ImageScore`` record (tsp_model.core.records) -> instances, masks kept as COCO RLE dicts."""
    return [
        RegionInstance(category=i.category, c=i.c, b=i.b, m=i.m, s=i.s, mask=i.mask)
        for i in record.instances
        if i.mask is not None
    ]


def prediction_for_task(
    record: Any,
    target: TagTarget,
    *,
    model_version: str,
    show_threshold: float,
    score: float | None = None,
    cluster: int | None = None,
) -> dict[str, Any]:
    """One task's prediction: ``{"result": [...], "score": S_i, "model_version": v[, "cluster": k]}``.

    Args:
        record: the image's :class:`~tsp_model.core.records.ImageScore` (every detection, masks as
            COCO RLE, ``S`` the image score).
        target: from :func:`parse_label_config`.
        model_version: the version string the prediction is stored under.
        show_threshold: a detection becomes a region when ``c >= show_threshold``
            (``active.show_threshold``): the shown set, what a radiologist is asked to correct.
            Every detection stays in the score file whatever is shown.
        score: the prediction's score; default the record's ``S`` exactly (another strategy
            passes its queue value). Never recomputed from the shown regions.
        cluster: Label Studio's per-annotator grouping for Uncertainty sampling (omitted: none).

    A shown instance whose category is not among the config's labels, or whose mask has
    nothing to draw, gets no region.
    """
    shaper = REGION_CLASSES[target.tag](target, record.width, record.height)
    wanted = set(target.labels)
    result: list[dict] = []
    for inst in instances_from_record(record):
        if inst.c < show_threshold or inst.category not in wanted:
            continue
        region = shaper.region(inst, region_id=f"tsp{len(result)}")
        if region is not None:
            result.append(region)
    value = float(record.S if score is None else score)
    if not math.isfinite(value):
        raise ValueError(f"image {record.image_id!r}: prediction score {value} is not finite; rescore the pool")
    pred: dict[str, Any] = {"result": result, "score": value, "model_version": model_version}
    if cluster is not None:
        pred["cluster"] = int(cluster)
    return pred


def region_to_rle(region: dict[str, Any], width: int, height: int, where: str) -> tuple[str, dict] | None:
    """One Label Studio region (brush RLE or polygon in percent) read back -> ``(label, COCO RLE
    with str counts)``, or None for an empty drawing: the inverse of the regions written below.

    Raises RegionError (naming ``where``) when the region cannot be a mask of this image.
    """
    from pycocotools import mask as mask_utils

    from tsp_model.core.rle import rle_for_json

    value = region.get("value") or {}
    rtype = str(region.get("type", "")).lower()
    ow, oh = region.get("original_width"), region.get("original_height")
    if ow and oh and (int(ow), int(oh)) != (width, height):
        raise RegionError(
            f"{where}: region drawn on a {ow}x{oh} image but the task image is {width}x{height}; "
            "re-annotate the task or restore its original image"
        )
    if rtype == "brushlabels" or "rle" in value:
        from label_studio_sdk.converter.brush import decode_rle

        labels = value.get("brushlabels") or []
        rle = value.get("rle")
        if value.get("format", "rle") != "rle" or not rle:
            raise RegionError(f"{where}: brush region without RLE data; re-draw it in Label Studio")
        flat = decode_rle(rle)
        if flat.size != width * height * 4:
            raise RegionError(
                f"{where}: brush RLE holds {flat.size // 4} pixels, the image {width * height}; re-draw the region"
            )
        mask = flat.reshape(height, width, 4)[:, :, 3] > 0
    elif rtype == "polygonlabels" or "points" in value:
        labels = value.get("polygonlabels") or []
        points = value.get("points") or []
        if len(points) < 3:
            return None
        flat_pts = [coord for x, y in points for coord in (x / 100.0 * width, y / 100.0 * height)]
        mask = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects([flat_pts], height, width))) > 0
    else:
        return None
    if not labels:
        raise RegionError(f"{where}: region without a label; pick a label for it in Label Studio")
    if not mask.any():
        return None
    return str(labels[0]), rle_for_json(mask_utils.encode(np.asfortranarray(mask.astype(np.uint8))))
