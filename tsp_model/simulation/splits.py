"""Group-aware splits: near-duplicates (slices of one series, tiles of one source image) never
straddle pool, validation and test.

The rule (documented, deterministic): every image belongs to a group, its value of the group key:
the key given, or the first of :data:`GROUP_KEYS` (``series_id``, ``SeriesInstanceUID``,
``patient_id``, ``PatientID``, ``source``, ``group``) that the images hold. The key must be on
every image: one image without it would make its own group, and a whole series could straddle
the splits unnoticed, so that is an error naming the key and the count (:class:`GroupKeyError`;
``group_key=None`` splits image by image). Images holding none of the keys are split one by one.
Groups are ordered by a hash of ``(seed, group)``; the first groups go to the test set until it
holds at least ``test`` of the images, the next to the validation set until it holds at least
``validation``, the rest is the pool. Whole groups move, so a split may overshoot its fraction by
less than one group.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["GROUP_KEYS", "GroupKeyError", "Split", "group_of", "group_split"]

GROUP_KEYS = ("series_id", "SeriesInstanceUID", "patient_id", "PatientID", "source", "group")


class GroupKeyError(ValueError):
    """The group key is missing from some images; the message names it and how many."""


def group_of(image: Mapping[str, Any], key: str | None = None) -> str:
    """The group of one COCO image entry: ``image[key]`` if ``key`` is given (and present), else
    the first of :data:`GROUP_KEYS` it holds, else its own id."""
    keys = (key,) if key else GROUP_KEYS
    for k in keys:
        value = image.get(k)
        if value not in (None, ""):
            return f"{k}={value}"
    return f"image={image['id']}"


@dataclass
class Split:
    pool: list[int]
    validation: list[int]
    test: list[int]
    group_key: str | None  # the key the groups came from (None: every image is its own group)
    groups: dict[int, str] = field(default_factory=dict)  # image id -> group

    def describe(self) -> dict[str, Any]:
        def n_groups(ids: Sequence[int]) -> int:
            return len({self.groups[i] for i in ids})

        return {
            "rule": "whole groups ordered by sha1(seed, group): test first, then validation, then pool",
            "group_key": self.group_key,
            "images": {"pool": len(self.pool), "validation": len(self.validation), "test": len(self.test)},
            "groups": {"pool": n_groups(self.pool), "validation": n_groups(self.validation),
                       "test": n_groups(self.test)},
        }


def _has(image: Mapping[str, Any], key: str) -> bool:
    return image.get(key) not in (None, "")


def _group_key(images: Sequence[Mapping[str, Any]], group_key: str | None) -> str | None:
    """The key the groups come from: ``group_key``, or for ``"auto"`` the first of
    :data:`GROUP_KEYS` any image holds (None: none does); GroupKeyError when an image lacks it."""
    if group_key is None:
        return None
    key = group_key if group_key != "auto" else next((k for k in GROUP_KEYS if any(_has(im, k) for im in images)),
                                                     None)
    if key is None:
        return None
    missing = sum(not _has(im, key) for im in images)
    if missing:
        how = "" if group_key != "auto" else " (found on the other images)"
        raise GroupKeyError(
            f"group key {key!r}{how}: {missing} of {len(images)} images have none, so their series would be split "
            f"across pool, validation and test; give every image a {key!r}, or pass --group-key none to split "
            "image by image")
    return key


def group_split(
    images: Sequence[Mapping[str, Any]],
    *,
    validation: float,
    test: float,
    seed: int = 0,
    group_key: str | None = "auto",
) -> Split:
    """Split COCO image entries into pool, validation and test by whole groups (module docstring).

    Args:
        images: COCO ``images`` entries (``id`` and optional group fields).
        validation, test: fractions of the images, each in [0, 1).
        seed: the split's seed (the same for every replay seed, so all arms share the sets).
        group_key: a field name, ``"auto"`` (the first of :data:`GROUP_KEYS` the images hold) or
            None (each image its own group).

    Raises:
        GroupKeyError: an image lacks the group key.
    """
    if not (0.0 <= validation < 1.0 and 0.0 <= test < 1.0 and validation + test < 1.0):
        raise ValueError(f"validation ({validation}) and test ({test}) fractions must be in [0, 1) and sum below 1")
    key = _group_key(images, group_key)
    groups = {int(im["id"]): group_of(im, key) if key else f"image={im['id']}" for im in images}
    members: dict[str, list[int]] = {}
    for image_id, g in groups.items():
        members.setdefault(g, []).append(image_id)
    order = sorted(members, key=lambda g: hashlib.sha1(f"{seed}:{g}".encode()).hexdigest())
    n = len(groups)
    want_test, want_val = test * n, validation * n
    test_ids: list[int] = []
    val_ids: list[int] = []
    pool_ids: list[int] = []
    for g in order:
        if len(test_ids) < want_test:
            test_ids += members[g]
        elif len(val_ids) < want_val:
            val_ids += members[g]
        else:
            pool_ids += members[g]
    return Split(sorted(pool_ids), sorted(val_ids), sorted(test_ids), key, groups)
