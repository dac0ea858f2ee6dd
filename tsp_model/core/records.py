"""Pool-score records: one :class:`ImageScore` per unlabeled image, stored as JSON lines.

A scoring pass over the pool writes ``scores/<model_version>.jsonl``; selection strategies,
pseudo labeling and the Label Studio push all read it back. Each line is one image::

    {"image_id": 7, "file_name": "slice_007.png", "width": 512, "height": 512, "S": 0.41,
     "instances": [{"label": 2, "category": "subdural", "box": [x1, y1, x2, y2],
                    "c": 0.93, "b": 0.71, "m": 0.55, "s": 0.69, "entropy": 0.31,
                    "mask": {"size": [512, 512], "counts": "..."}}],
     "model_version": "cycle2-...", "extras": {}}

Floats keep full precision; NaN or infinity is refused at write time (it would not be JSON).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tsp_model.core.atomic import atomic_open
from tsp_model.core.config import ActiveConfig
from tsp_model.core.rle import rle_for_json
from tsp_model.core.scoring import pseudo_label_keep, scored_image_score

__all__ = [
    "pseudo_instances",
    "RecordError",
    "InstanceScore",
    "ImageScore",
    "iter_jsonl",
    "read_jsonl",
    "record_image_score",
    "record_line",
    "rescore",
    "rescored",
    "write_jsonl",
]


class RecordError(ValueError):
    """A score record or a score file is malformed; the message names the file and line."""


_INSTANCE_KEYS = ("label", "category", "box", "c", "b", "m", "s", "entropy", "mask")
_IMAGE_KEYS = ("image_id", "file_name", "width", "height", "S", "instances", "model_version", "extras")
_INSTANCE_REQUIRED = ("label", "category", "box", "c", "b", "m", "s")
_IMAGE_REQUIRED = ("image_id", "file_name", "width", "height", "S")


def _check_keys(kind: str, d: Any, known: tuple[str, ...], required: tuple[str, ...]) -> None:
    if not isinstance(d, dict):
        raise RecordError(f"{kind}: expected a JSON object, got {type(d).__name__}")
    missing = [k for k in required if k not in d]
    if missing:
        raise RecordError(f"{kind}: missing key(s) {', '.join(missing)}")
    unknown = [k for k in d if k not in known]
    if unknown:
        raise RecordError(f"{kind}: unknown key(s) {', '.join(unknown)} (put extra data in 'extras')")


def _plain_mask(mask: dict | None) -> dict | None:
    return None if mask is None else rle_for_json(mask)


@dataclass
class InstanceScore:
    """One detected instance of an unlabeled image.

    ``label`` is the model's class index (1..K; 0 is background), ``category`` its name,
    ``box`` (x1, y1, x2, y2) in pixels, ``c``/``b``/``m`` the triplet scores, ``s`` eq. 2,
    ``entropy`` the Shannon entropy of the instance's softmax (class-entropy baseline),
    ``mask`` COCO RLE ``{"size": [h, w], "counts": str}`` or None when masks are not stored.
    """

    label: int
    category: str
    box: list[float]
    c: float
    b: float
    m: float
    s: float
    entropy: float = 0.0
    mask: dict | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "label": int(self.label),
            "category": str(self.category),
            "box": [float(v) for v in self.box],
            "c": float(self.c),
            "b": float(self.b),
            "m": float(self.m),
            "s": float(self.s),
            "entropy": float(self.entropy),
            "mask": _plain_mask(self.mask),
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> InstanceScore:
        _check_keys("instance", d, _INSTANCE_KEYS, _INSTANCE_REQUIRED)
        box = d["box"]
        if not isinstance(box, list) or len(box) != 4:
            raise RecordError(f"instance: 'box' must be [x1, y1, x2, y2], got {box!r}")
        try:
            return cls(
                label=int(d["label"]),
                category=str(d["category"]),
                box=[float(v) for v in box],
                c=float(d["c"]),
                b=float(d["b"]),
                m=float(d["m"]),
                s=float(d["s"]),
                entropy=float(d.get("entropy", 0.0)),
                mask=d.get("mask"),
            )
        except (TypeError, ValueError) as exc:
            raise RecordError(f"instance: bad value ({exc})") from None


@dataclass
class ImageScore:
    """Scores of one pool image: ``S`` is eq. 3 over its instances' ``s``.

    ``image_id`` is the COCO image id (int) or a Label Studio task key (str); ``model_version``
    names the checkpoint that produced the scores; ``extras`` carries strategy-specific data
    (embeddings, MC-dropout statistics) and must be JSON-serializable.
    """

    image_id: int | str
    file_name: str
    width: int
    height: int
    S: float
    instances: list[InstanceScore] = field(default_factory=list)
    model_version: str = ""
    extras: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        image_id = self.image_id if isinstance(self.image_id, str) else int(self.image_id)
        return {
            "image_id": image_id,
            "file_name": str(self.file_name),
            "width": int(self.width),
            "height": int(self.height),
            "S": float(self.S),
            "instances": [inst.to_json() for inst in self.instances],
            "model_version": str(self.model_version),
            "extras": dict(self.extras),
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ImageScore:
        _check_keys("image", d, _IMAGE_KEYS, _IMAGE_REQUIRED)
        image_id = d["image_id"]
        if isinstance(image_id, bool) or not isinstance(image_id, (int, str)):
            raise RecordError(f"image: 'image_id' must be an int or a string, got {image_id!r}")
        instances = d.get("instances", [])
        if not isinstance(instances, list):
            raise RecordError(f"image {image_id!r}: 'instances' must be a list")
        extras = d.get("extras", {})
        if not isinstance(extras, dict):
            raise RecordError(f"image {image_id!r}: 'extras' must be an object")
        try:
            insts = [InstanceScore.from_json(x) for x in instances]
            return cls(
                image_id=image_id,
                file_name=str(d["file_name"]),
                width=int(d["width"]),
                height=int(d["height"]),
                S=float(d["S"]),
                instances=insts,
                model_version=str(d.get("model_version", "")),
                extras=extras,
            )
        except RecordError as exc:
            raise RecordError(f"image {image_id!r}: {exc}") from None
        except (TypeError, ValueError) as exc:
            raise RecordError(f"image {image_id!r}: bad value ({exc})") from None


def record_line(record: ImageScore) -> str:
    """One record as one line of JSON (no newline); RecordError for NaN or non-JSON extras."""
    data = record.to_json()
    try:
        # allow_nan=False: NaN is not JSON; a NaN score means a diverged model, say so now.
        return json.dumps(data, allow_nan=False, separators=(",", ":"))
    except ValueError:
        raise RecordError(
            f"image {data.get('image_id')!r}: a score is NaN or infinite; check the model "
            "(did training diverge?)"
        ) from None
    except TypeError as exc:
        raise RecordError(f"image {data.get('image_id')!r}: not JSON-serializable ({exc})") from None


def write_jsonl(path: str | Path, records: Iterable[ImageScore]) -> Path:
    """Write one JSON line per record, atomically.

    Lines go to a temporary file in the same directory, which is flushed, fsync'ed and then
    moved over ``path`` with ``os.replace``: readers see the old file or the complete new one,
    never a half-written one. On any error the temporary file is removed and ``path`` is left
    as it was. Parent directories are created.
    """
    path = Path(path)
    with atomic_open(path) as fh:
        for record in records:
            fh.write(record_line(record))
            fh.write("\n")
    return path


def iter_jsonl(path: str | Path) -> Iterator[ImageScore]:
    """The records of a file written by :func:`write_jsonl`, one at a time (blank lines skipped),
    so a pool of any size is read in constant memory.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        RecordError: a line is not JSON or not a valid record; the message names file and line.
    """
    path = Path(path)
    with path.open("r", encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                data = json.loads(line)
            except json.JSONDecodeError as exc:
                raise RecordError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
            try:
                record = ImageScore.from_json(data)
            except RecordError as exc:
                raise RecordError(f"{path}:{lineno}: {exc}") from None
            yield record


def read_jsonl(path: str | Path) -> list[ImageScore]:
    """Every record of a file written by :func:`write_jsonl` (see :func:`iter_jsonl`)."""
    return list(iter_jsonl(path))


def record_image_score(c: Any, b: Any, m: Any, active: ActiveConfig) -> float:
    """S of an image from all its detections' triplets under ``active``'s scoring threshold and
    empty-image rule (:func:`tsp_model.core.scoring.scored_image_score`)."""
    return scored_image_score(
        c, b, m, score_threshold=active.score_threshold, empty_rule=active.empty_image_rule,
        empty_constant=active.empty_image_score,
    )


def pseudo_instances(rec: ImageScore, *, sigma_c: float, sigma_b: float, sigma_m: float) -> list[InstanceScore]:
    """The instances of ``rec`` that become pseudo labels (section 3.2,
    :func:`tsp_model.core.scoring.pseudo_label_keep`: ``c > sigma_c and b > sigma_b and
    m > sigma_m``), in the record's order; one whose mask was not stored is among them (the
    caller decides: without a mask it cannot be trained on)."""
    if not rec.instances:
        return []
    keep = pseudo_label_keep([i.c for i in rec.instances], [i.b for i in rec.instances], [i.m for i in rec.instances],
                             sigma_c=sigma_c, sigma_b=sigma_b, sigma_m=sigma_m)
    return [inst for inst, k in zip(rec.instances, keep) if k]


def rescored(rec: ImageScore, active: ActiveConfig) -> ImageScore:
    """``rec`` with ``S`` recomputed from its stored instances under ``active`` (a new record if
    it changed, ``rec`` itself otherwise): no inference, the score file keeps every detection."""
    S = record_image_score([i.c for i in rec.instances], [i.b for i in rec.instances],
                           [i.m for i in rec.instances], active)
    if S == rec.S:
        return rec
    return ImageScore(rec.image_id, rec.file_name, rec.width, rec.height, S, rec.instances,
                      rec.model_version, rec.extras)


def rescore(records: Iterable[ImageScore], active: ActiveConfig) -> tuple[list[ImageScore], int]:
    """:func:`rescored` over many records: ``(records, how many S changed)``."""
    records = list(records)
    out = [rescored(rec, active) for rec in records]
    return out, sum(new is not old for new, old in zip(out, records))
