"""``<out>/ledger.jsonl``: what a replay has finished, so a killed run repeats nothing."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

__all__ = ["Ledger"]


class Ledger:
    """``<out>/ledger.jsonl``: one JSON line per finished unit of work (appended, fsync'ed)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.entries: dict[str, dict[str, Any]] = {}
        if path.is_file():
            for line in path.read_text(encoding="utf-8").splitlines():
                if line.strip():
                    try:
                        entry = json.loads(line)
                    except json.JSONDecodeError:
                        continue  # a line cut by a kill: that unit is simply redone
                    self.entries[entry["key"]] = entry

    def get(self, key: str) -> dict[str, Any] | None:
        return self.entries.get(key)

    def add(self, key: str, **data: Any) -> dict[str, Any]:
        entry = {"key": key, **data}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(entry) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        self.entries[key] = entry
        return entry
