"""Run a ``tsp_model`` engine in this process, or under torchrun for ``--gpus N`` (N > 1).

``tsp-sync retrain --gpus N`` and ``tsp-sync score --gpus N`` launch
``python -m torch.distributed.run --standalone --nproc_per_node=N -m <engine> ...``: one process
per GPU (NCCL; gloo on the CPU), only rank 0 writes the result. The engines
(``tsp_model.engine.train``, ``tsp_model.engine.score``) are the same modules a multi-node run
starts with ``torchrun --nnodes ...`` (docs/gpu.md).
"""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

from tsp_cli.client import SyncError
from tsp_model.core.atomic import atomic_write_text
from tsp_model.core.config import TSPConfig, dump_toml

log = logging.getLogger(__name__)

__all__ = ["score_pool_file", "torchrun"]


def torchrun(gpus: int, module: str, args: list[str], *, failure: str) -> None:
    """``python -m <module> ARGS`` in ``gpus`` processes on this machine; SyncError(``failure``
    with ``{rc}`` filled in) when it exits non-zero. Ctrl-C reaches the workers (torchrun
    forwards it) and is re-raised once they have stopped."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={gpus}",
           "-m", module, *args]
    log.info("launching %s", " ".join(cmd))
    proc = subprocess.Popen(cmd)
    try:
        rc = proc.wait()
    except KeyboardInterrupt:
        proc.wait()  # what the workers finished stays (checkpoint, score shards)
        raise
    if rc != 0:
        raise SyncError(failure.format(rc=rc))


def score_pool_file(
    checkpoint: Path,
    config: TSPConfig,
    pool_file: Path,
    image_dir: Path,
    out: Path,
    *,
    gpus: int = 1,
    embeddings: bool | None = None,
    mc_passes: int | None = None,
    progress: bool = True,
) -> Path:
    """Score the images a pool file lists (a snapshot's ``unlabeled.json`` or COCO
    ``annotations.json``) with ``checkpoint`` into ``out``: in this process, or in ``gpus``
    torchrun processes that shard the pool (rank 0 merges). Rerunning after an interruption
    continues the shards. ``embeddings`` / ``mc_passes``: None = what ``active.strategy`` needs."""
    from tsp_model.al.strategies import scoring_options
    from tsp_model.engine.score import score_files

    needs = scoring_options(config.active.strategy, config.active.mc_passes)
    embeddings = bool(needs["embeddings"]) if embeddings is None else embeddings
    mc_passes = int(needs["mc_passes"]) if mc_passes is None else mc_passes

    if gpus <= 1:
        return score_files(checkpoint, pool_file, image_dir, out, config=config, embeddings=embeddings,
                           mc_passes=mc_passes, progress=progress)
    config_path = out.with_name(f".{out.name}.config.toml")  # hidden: score globs never match it
    atomic_write_text(config_path, dump_toml(config))
    args = ["--checkpoint", str(checkpoint), "--pool", str(pool_file), "--images", str(image_dir),
            "--out", str(out), "--config", str(config_path)]
    if embeddings:
        args.append("--embeddings")
    if mc_passes:
        args += ["--mc-passes", str(mc_passes)]
    if not progress:
        args.append("--no-progress")
    try:
        torchrun(gpus, "tsp_model.engine.score", args, failure=(
            "distributed scoring exited with code {rc} (see the log above); fix the cause and run the command "
            "again, which continues the scoring"))
    finally:
        config_path.unlink(missing_ok=True)
    if not out.is_file():
        raise SyncError(f"{out}: distributed scoring finished without writing the score file; run the command again")
    return out
