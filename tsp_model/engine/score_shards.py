"""Score shards: pool scoring writes records as it produces them, resumes, and merges in pool order.

Each rank appends every batch's records to its own hidden shard ``.<score file>.rank<r>`` and
flushes it, so no process holds more than one batch of records. The shard's first line is a
header naming what is being scored (model version, a digest of the pool, world size, rank and
the scoring options); every further line is ``<pool index>\\t<record JSON>``. A run that finds a
shard with the same header continues after its last complete line (an interrupted scoring of a
large pool loses at most one batch); a shard with any other header is started over.

When every rank is done, rank 0 merges the shards into the score file in pool order, atomically
(:mod:`tsp_model.core.atomic`: readers see no file or the complete one), holding only one
``(pool index, shard, offset)`` triple per image, and removes the shards.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import IO, Any

from tsp_model.core.atomic import atomic_open
from tsp_model.core.records import ImageScore, record_line

__all__ = ["ScoreShard", "merge_shards", "pool_digest", "shard_path"]

_HEADER = "#tsp-score-shard "


def shard_path(out_path: str | Path, rank: int) -> Path:
    out_path = Path(out_path)
    return out_path.with_name(f".{out_path.name}.rank{rank}")


def pool_digest(items: Iterable[tuple]) -> str:
    """sha1 over the pool's ``(image_id, file_name)`` in order: a changed pool restarts the shards."""
    h = hashlib.sha1()
    for item in items:
        h.update(f"{item[0]!r}\0{item[-1]}\n".encode())
    return h.hexdigest()


class ScoreShard:
    """One rank's append-only shard; ``with ScoreShard(...) as shard: shard.done`` is the set of
    pool indices an interrupted run already scored."""

    def __init__(self, out_path: str | Path, rank: int, header: dict[str, Any]) -> None:
        self.path = shard_path(out_path, rank)
        self.header = _HEADER + json.dumps(header, sort_keys=True, separators=(",", ":"))
        self.done: set[int] = set()
        self._fh: IO[str] | None = None

    def __enter__(self) -> ScoreShard:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        keep = self._resumable_bytes()
        if keep is None:
            self.done = set()
            self._fh = open(self.path, "w", encoding="utf-8")
            self._fh.write(self.header + "\n")
            self._fh.flush()
        else:
            with open(self.path, "r+b") as fh:  # drop a line cut short by the interruption
                fh.truncate(keep)
            self._fh = open(self.path, "a", encoding="utf-8")
        return self

    def _resumable_bytes(self) -> int | None:
        """Length of the shard's complete part when its header matches (``done`` filled), else None."""
        if not self.path.is_file():
            return None
        done: set[int] = set()
        with open(self.path, "rb") as fh:
            first = fh.readline()
            if first.rstrip(b"\n").decode("utf-8", "replace") != self.header or not first.endswith(b"\n"):
                return None
            keep = fh.tell()
            for line in fh:
                if not line.endswith(b"\n"):
                    break
                index, tab, _ = line.partition(b"\t")
                if not tab or not index.isdigit():
                    break
                done.add(int(index))
                keep += len(line)
        self.done = done
        return keep

    def append(self, records: Sequence[tuple[int, ImageScore]]) -> None:
        """Write one batch ``[(pool index, record)]`` and flush it to the OS."""
        assert self._fh is not None, "use ScoreShard as a context manager"
        self._fh.write("".join(f"{index}\t{record_line(rec)}\n" for index, rec in records))
        self._fh.flush()

    def __exit__(self, *exc: object) -> None:
        if self._fh is not None:
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._fh.close()
            self._fh = None


def merge_shards(out_path: str | Path, world_size: int) -> Path:
    """Merge the shards of ``world_size`` ranks into ``out_path`` in pool order (atomic), then
    remove them. A pool index in two shards (impossible unless the shards were tampered with)
    is written once."""
    out_path = Path(out_path)
    paths = [shard_path(out_path, r) for r in range(world_size)]
    index: list[tuple[int, int, int]] = []  # (pool index, shard, byte offset of the record)
    for s, path in enumerate(paths):
        with open(path, "rb") as fh:
            offset = len(fh.readline())
            for line in fh:
                pos, tab, _ = line.partition(b"\t")
                if tab and line.endswith(b"\n"):
                    index.append((int(pos), s, offset + len(pos) + 1))
                offset += len(line)
    index.sort()
    handles = [open(p, "rb") for p in paths]
    try:
        with atomic_open(out_path, "wb") as out:
            last = None
            for pos, s, offset in index:
                if pos == last:
                    continue
                last = pos
                fh = handles[s]
                fh.seek(offset)
                out.write(fh.readline())
    finally:
        for fh in handles:
            fh.close()
    for path in paths:
        path.unlink(missing_ok=True)
    return out_path
