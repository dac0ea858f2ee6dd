"""The work directory of one project: where snapshots, cached images, scores and runs live.

::

    <workdir>/images/<task id>.<ext>        task images, downloaded once (index.json: url -> file)
    <workdir>/snapshots/<n>/                 one complete pull (never edited after its rename)
        annotations.json                     COCO: labeled tasks; image id = task id
        unlabeled.json                       the pool: tasks without a finished annotation
        manifest.json                        counts, label tag, classes, fingerprint
    <workdir>/snapshots/latest               the current snapshot's number (atomic)
    <workdir>/scores/<model_version>.s<n>.jsonl   pool scores (tsp_model.core.records)
    <workdir>/runs/s<n>-<init>/              a training run (resumable)
    <workdir>/state.json                     last step results, for `tsp-sync status`

Every file is written to a temporary name in its folder and renamed over the target.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tsp_cli.client import SyncError
from tsp_model.core.atomic import atomic_write_text, default_mode

__all__ = ["Snapshot", "Workdir", "atomic_write_json", "atomic_write_text", "default_mode"]


def atomic_write_json(path: Path, data: Any) -> Path:
    return atomic_write_text(path, json.dumps(data, indent=1, sort_keys=True, default=str) + "\n")


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SyncError(f"{path}: missing; run tsp-sync pull again") from None
    except json.JSONDecodeError as exc:
        raise SyncError(f"{path}: not valid JSON ({exc}); delete it and run tsp-sync pull again") from None


@dataclass
class Snapshot:
    number: int
    path: Path
    manifest: dict[str, Any]

    @property
    def annotations(self) -> Path:
        return self.path / "annotations.json"

    @property
    def unlabeled(self) -> Path:
        return self.path / "unlabeled.json"

    @property
    def image_dir(self) -> Path:
        return (self.path / self.manifest.get("image_dir", "../../images")).resolve()

    def pool(self) -> list[dict[str, Any]]:
        """``[{"task_id", "file_name", "width", "height"}, ...]``: the unlabeled pool."""
        return list(read_json(self.unlabeled)["tasks"])

    @property
    def class_names(self) -> list[str]:
        return list(self.manifest["class_names"])


class Workdir:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    @property
    def images(self) -> Path:
        return self.root / "images"

    @property
    def snapshots(self) -> Path:
        return self.root / "snapshots"

    @property
    def scores(self) -> Path:
        return self.root / "scores"

    @property
    def runs(self) -> Path:
        return self.root / "runs"

    @property
    def state_path(self) -> Path:
        return self.root / "state.json"

    # -- snapshots ----------------------------------------------------------------------------
    def snapshot_numbers(self) -> list[int]:
        if not self.snapshots.is_dir():
            return []
        return sorted(int(p.name) for p in self.snapshots.iterdir() if p.is_dir() and p.name.isdigit())

    def latest_snapshot(self, required: bool = True) -> Snapshot | None:
        pointer = self.snapshots / "latest"
        number: int | None = None
        if pointer.is_file():
            text = pointer.read_text().strip()
            number = int(text) if text.isdigit() else None
        if number is None or not (self.snapshots / str(number)).is_dir():
            numbers = self.snapshot_numbers()  # pointer lost: the newest complete snapshot
            number = numbers[-1] if numbers else None
        if number is None:
            if required:
                raise SyncError(f"{self.root}: no snapshot yet; run tsp-sync pull first")
            return None
        path = self.snapshots / str(number)
        return Snapshot(number=number, path=path, manifest=read_json(path / "manifest.json"))

    def new_snapshot_dir(self) -> tuple[int, Path]:
        """A fresh temporary folder for the next snapshot, and its future number."""
        self.snapshots.mkdir(parents=True, exist_ok=True)
        self.clean_temporaries()
        numbers = self.snapshot_numbers()
        number = (numbers[-1] + 1) if numbers else 1
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{number}-", dir=self.snapshots))
        default_mode(tmp, directory=True)
        return number, tmp

    def commit_snapshot(self, tmp: Path, number: int) -> Snapshot:
        """Rename ``tmp`` to ``snapshots/<number>`` and point ``latest`` at it."""
        final = self.snapshots / str(number)
        os.rename(tmp, final)  # atomic on one filesystem: the snapshot is complete or absent
        atomic_write_text(self.snapshots / "latest", f"{number}\n")
        return Snapshot(number=number, path=final, manifest=read_json(final / "manifest.json"))

    def clean_temporaries(self) -> None:
        """Remove what an interrupted pull left (hidden temp folders only)."""
        if self.snapshots.is_dir():
            for p in self.snapshots.iterdir():
                if p.is_dir() and p.name.startswith(".tmp-"):
                    shutil.rmtree(p, ignore_errors=True)

    # -- state --------------------------------------------------------------------------------
    def read_state(self) -> dict[str, Any]:
        if not self.state_path.is_file():
            return {}
        try:
            return json.loads(self.state_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            return {}

    def update_state(self, key: str, value: Any) -> None:
        state = self.read_state()
        state[key] = value
        atomic_write_json(self.state_path, state)
