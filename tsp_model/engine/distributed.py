"""torchrun helpers: one process per device, only rank 0 writes.

``torchrun --nproc_per_node=N -m tsp_model.engine.train ...`` sets ``RANK``, ``LOCAL_RANK`` and
``WORLD_SIZE``; without them everything runs in a single process with no process group. The
backend is NCCL when the process drives a CUDA device and gloo otherwise, so the same code runs
on N GPUs and, in tests, on 2 CPU processes.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits. ``world_size == 1`` means no process group."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resolve_device(device: str = "auto", local_rank: int = 0) -> torch.device:
    """``"auto"``: ``cuda:LOCAL_RANK`` when CUDA is available, else the CPU.

    A plain ``"cuda"`` also means ``cuda:LOCAL_RANK`` so one config serves every rank.
    """
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        return torch.device("cuda", local_rank)
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} requested but CUDA is not available; use device = \"cpu\"")
    return dev


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return default if value in (None, "") else int(value)


def init_distributed(device: str = "auto") -> DistInfo:
    """Read torchrun's environment and join the process group (once).

    Safe to call when not launched by torchrun (returns a single-process DistInfo) and when a
    group already exists (reuses it).
    """
    world_size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    dev = resolve_device(device, local_rank)
    if world_size > 1 and not dist.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size)
    return DistInfo(rank=rank, local_rank=local_rank, world_size=world_size, device=dev)


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_dist() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_dist() else 1


def is_main_process() -> bool:
    return get_rank() == 0


def barrier() -> None:
    if is_dist():
        dist.barrier()


def all_gather_object(obj: Any) -> list[Any]:
    """Every rank's ``obj`` in rank order; ``[obj]`` without a process group."""
    if not is_dist():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank."""
    if not is_dist():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def cleanup() -> None:
    if is_dist():
        dist.destroy_process_group()


def run_entry_point(run: Callable[[], Any], errors: tuple[type[BaseException], ...]) -> int:
    """The body of a torchrun entry point: ``run()``; rank 0 prints its result; every rank tears
    the process group down. An error in ``errors`` is one line on stderr and exit status 1."""
    import sys

    try:
        result = run()
    except errors as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        cleanup()
        return 1
    if is_main_process():
        print(result)
    cleanup()
    return 0
