"""Pool scoring from the command line, one process per GPU under torchrun.

    torchrun --nproc_per_node=8 -m tsp_model.engine.score --checkpoint models/v.pt \\
        --pool work/ich/snapshots/3/unlabeled.json --images work/ich/images \\
        --out work/ich/scores/v.s3.jsonl

Each rank loads the checkpoint on its device (``cuda:LOCAL_RANK``, or the CPU with gloo) and
scores every world-th pool image (:func:`tsp_model.engine.predict.score_pool`); rank 0 merges
the ranks' shards into ``--out`` in pool order. Without torchrun it is one process. Rerun after
an interruption with the same arguments (and the same number of processes) to continue.

``--pool`` is a JSON file listing the images: a COCO file (``images: [{"id", "file_name"}]``)
or ``tsp-sync``'s ``unlabeled.json`` (``tasks: [{"task_id", "file_name"}]``); ``file_name`` is
relative to ``--images``.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

from tsp_model.core.config import TSPConfig
from tsp_model.engine import distributed as du

__all__ = ["main", "pool_items", "score_files"]


def pool_items(pool_file: str | Path, images: str | Path) -> list[tuple[int | str, Path, str]]:
    """``[(image id, path, file_name)]`` from a COCO file or an ``unlabeled.json``.

    Raises:
        ValueError: the file holds neither ``images`` nor ``tasks``.
    """
    doc = json.loads(Path(pool_file).read_text(encoding="utf-8"))
    root = Path(images)
    if isinstance(doc, dict) and isinstance(doc.get("tasks"), list):
        return [(t["task_id"], root / t["file_name"], t["file_name"]) for t in doc["tasks"]]
    if isinstance(doc, dict) and isinstance(doc.get("images"), list):
        return [(im["id"], root / im["file_name"], im["file_name"]) for im in doc["images"]]
    raise ValueError(f"{pool_file}: expected a COCO file ('images') or an unlabeled.json ('tasks')")


def score_files(
    checkpoint: str | Path,
    pool_file: str | Path,
    images: str | Path,
    out: str | Path,
    *,
    config: TSPConfig | None = None,
    embeddings: bool = False,
    mc_passes: int = 0,
    progress: bool = True,
) -> Path:
    """Load the checkpoint on this rank's device and score the pool into ``out`` (the torchrun
    entry's body; without torchrun, plain single-process scoring). ``config``: ``score.*``,
    ``active.*`` and ``train.device`` (default: the checkpoint's own config)."""
    from tsp_model.engine.checkpoint import load_model
    from tsp_model.engine.predict import score_pool

    device = config.train.device if config is not None else "auto"
    dist = du.init_distributed(device)
    loaded = load_model(checkpoint, device=dist.device)
    return score_pool(
        loaded.model, pool_items(pool_file, images), class_names=loaded.class_names,
        config=config or loaded.config, out_path=out, model_version=loaded.model_version, dist=dist,
        progress=progress, embeddings=embeddings, mc_passes=mc_passes,
    )


def main(argv: list[str] | None = None) -> int:
    import argparse

    from tsp_model.core.config import ConfigError, load_config
    from tsp_model.core.records import RecordError
    from tsp_model.engine.checkpoint import CheckpointError

    p = argparse.ArgumentParser(prog="python -m tsp_model.engine.score", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="TSP checkpoint (.pt)")
    p.add_argument("--pool", required=True, help="COCO json or tsp-sync unlabeled.json listing the images")
    p.add_argument("--images", required=True, help="folder the pool's file_name entries are relative to")
    p.add_argument("--out", required=True, help="score file to write (JSON lines)")
    p.add_argument("--config", help="TSPConfig TOML (default: the checkpoint's config)")
    p.add_argument("--embeddings", action="store_true", help="pooled FPN embeddings in extras (core_set, tsp_diverse)")
    p.add_argument("--mc-passes", type=int, default=0, help="MC-dropout passes T in extras (mc_dropout; 0: none)")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    return du.run_entry_point(
        lambda: score_files(args.checkpoint, args.pool, args.images, args.out,
                            config=load_config(args.config) if args.config else None, embeddings=args.embeddings,
                            mc_passes=args.mc_passes, progress=not args.no_progress),
        (CheckpointError, ConfigError, RecordError, ValueError, FileNotFoundError),
    )


if __name__ == "__main__":
    sys.exit(main())
