"""Checkpoints: written atomically, read with a clear error, rebuilt into a model.

A checkpoint is a ``torch.save`` dict with the keys ``model``, ``optimizer``, ``scheduler``,
``scaler``, ``config`` (``TSPConfig.to_dict()``), ``class_names`` (WITHOUT background: model
label k is ``class_names[k - 1]``), ``epoch`` (completed epochs), ``model_version``, ``history``
(per-epoch mean losses) and ``format`` (``"tsp-checkpoint/1"``).

Writes go to a temporary file in the target's directory, are flushed to disk and renamed over
the target (``os.replace``): a reader (the backend hot-reloading the newest model) sees the old
file or the new one, never half of one.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tsp_model.core.atomic import atomic_open
from tsp_model.core.config import ConfigError, TSPConfig

FORMAT = "tsp-checkpoint/1"
REQUIRED_KEYS = ("model", "config", "class_names", "epoch", "model_version", "format")


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable or not ours; the message names the path."""


@dataclass
class LoadedModel:
    model: torch.nn.Module  # in eval mode
    config: TSPConfig
    class_names: list[str]  # without background
    model_version: str
    info: dict[str, Any]  # the checkpoint's other entries: epoch, history, config dict...


def weights_digest(state_dict: dict[str, torch.Tensor], length: int = 8) -> str:
    """Short sha1 of a state dict's names and tensor bytes (same weights -> same string)."""
    h = hashlib.sha1()
    for name in sorted(state_dict):
        t = state_dict[name]
        h.update(name.encode())
        if isinstance(t, torch.Tensor):
            t = t.detach().cpu().contiguous()
            h.update(str(t.dtype).encode())
            # view as bytes: works for every dtype incl. bfloat16, which numpy lacks
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:length]


def make_model_version(state_dict: dict[str, torch.Tensor], now: _dt.datetime | None = None) -> str:
    """``tsp-<UTC yyyymmddTHHMMSS>-<8 hex of the weights>``: sortable and content-tied."""
    now = now or _dt.datetime.now(_dt.timezone.utc)
    return f"tsp-{now.strftime('%Y%m%dT%H%M%S')}-{weights_digest(state_dict)}"


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Atomically write ``state`` to ``path`` (temp file in the same directory, fsync, rename).

    On any failure the previous file at ``path`` is left untouched and no temp file remains.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = dict(state)
    state.setdefault("format", FORMAT)
    with atomic_open(path, "wb") as fh:
        torch.save(state, fh)
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`; raise :class:`CheckpointError`."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found; check the path or train a model first")
    try:
        # weights_only: a checkpoint is data, never code to run
        state = torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"{path}: not a readable checkpoint ({reason}); delete it and re-train or restore a copy"
        ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(
            f"{path}: not a TSP checkpoint (format {found!r}, expected {FORMAT!r}); "
            "pass a file written by tsp_model training"
        )
    missing = [k for k in REQUIRED_KEYS if k not in state]
    if missing:
        raise CheckpointError(f"{path}: checkpoint lacks {', '.join(missing)}; re-train to write a complete one")
    return state


def load_model(path: str | Path, device: str | torch.device = "cpu") -> LoadedModel:
    """Rebuild the network from a checkpoint's config and weights, in eval mode on ``device``."""
    from tsp_model.nn.model import build_model  # late: keeps checkpoint I/O free of model imports

    state = load_checkpoint(path, map_location="cpu")
    try:
        config = TSPConfig.from_dict(state["config"])
    except ConfigError as exc:
        raise CheckpointError(f"{path}: stored config is invalid ({exc}); re-train with this version") from None
    class_names = list(state["class_names"])
    # The checkpoint holds every weight: rebuild without the pretrained initialization, which
    # may not exist on this machine (a backend container, a laptop).
    arch = dataclasses.replace(config.model, weights=None, weights_backbone=None)
    model = build_model(arch, len(class_names) + 1)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise CheckpointError(f"{path}: weights do not fit the stored config ({first})") from None
    model.to(device).eval()
    return LoadedModel(
        model=model,
        config=config,
        class_names=class_names,
        model_version=str(state["model_version"]),
        info={k: v for k, v in state.items() if k not in ("model", "optimizer", "scheduler", "scaler")},
    )


def latest_checkpoint(model_dir: str | Path) -> Path | None:
    """Newest ``*.pt`` in ``model_dir`` by modification time, or None (temp files never match)."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        return None
    files = [p for p in model_dir.glob("*.pt") if p.is_file() and not p.name.startswith(".")]
    if not files:
        return None
    return max(files, key=lambda p: (p.stat().st_mtime_ns, p.name))
