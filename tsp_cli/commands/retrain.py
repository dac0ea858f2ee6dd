"""``tsp-sync retrain``: pseudo labels from the current model, then train on labeled + pseudo.

Step 1 of a cycle (:mod:`tsp_model.al.cycle`) on the latest snapshot:

1. the newest checkpoint in ``model_dir`` (if any) scores the unlabeled pool; its confident
   instances (``c > sigma_c``, ``b > sigma_b``, ``m > sigma_m``) become pseudo labels trained
   with eq. 4 and weighted by beta in eq. 5. The first cycle has no model: labeled set alone.
2. training runs :func:`tsp_model.engine.train.train_with_pseudo_labels` (the replay's training
   step too), from the current model's weights (``active.finetune``), in
   ``<workdir>/runs/s<snapshot>-<init version>/``, and resumes there after an interruption;
   ``--gpus N`` (N > 1) launches torchrun itself.
3. the finished checkpoint is copied atomically to ``model_dir/<model_version>.pt``, where the
   backend's hot reload picks it up. A held-out labeled split (``holdout_fraction``) is never
   trained on and gives the new model's mAP.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

import click

from tsp_cli.client import SyncError
from tsp_cli.context import CliContext, gpus_option, project_option
from tsp_cli.errors import handle_errors
from tsp_cli.launch import score_pool_file, torchrun
from tsp_cli.settings import ProjectSettings
from tsp_cli.workdir import Snapshot, Workdir, atomic_write_text
from tsp_model.core.atomic import atomic_save

log = logging.getLogger(__name__)

__all__ = ["holdout_split", "pseudo_counts", "retrain", "score_snapshot_pool"]


def holdout_split(image_ids: list[int], fraction: float) -> tuple[list[int], list[int]]:
    """``(train ids, held-out ids)``: a task is held out iff a hash of its id falls under
    ``fraction``, so it stays held out in every later snapshot. Both sides stay non-empty."""
    if fraction <= 0 or len(image_ids) < 2:
        return list(image_ids), []

    def u(i: int) -> float:
        return int(hashlib.sha1(f"tsp-holdout-{i}".encode()).hexdigest()[:12], 16) / float(16**12)

    held = [i for i in image_ids if u(i) < fraction]
    if not held:
        held = [min(image_ids, key=u)]
    if len(held) == len(image_ids):
        held = held[:-1]
    keep = set(held)
    return [i for i in image_ids if i not in keep], held


def _write_split(snap: Snapshot, ids: list[int], path: Path) -> Path:
    from tsp_model.data.coco_file import write_coco

    doc = json.loads(snap.annotations.read_text())
    keep = set(ids)
    return write_coco(
        path,
        [im for im in doc["images"] if im["id"] in keep],
        [a for a in doc["annotations"] if a["image_id"] in keep],
        doc["categories"],
        info=doc.get("info"),
    )


def pseudo_counts(records: list[Any], sigma_c: float, sigma_b: float, sigma_m: float) -> tuple[int, int]:
    """``(images, instances)`` that become pseudo labels under the eq. 4 thresholds (with a mask)."""
    from tsp_model.core.records import pseudo_instances

    images = instances = 0
    for rec in records:
        k = sum(i.mask is not None for i in pseudo_instances(rec, sigma_c=sigma_c, sigma_b=sigma_b, sigma_m=sigma_m))
        images += int(k > 0)
        instances += k
    return images, instances


def score_snapshot_pool(
    workdir: Workdir, snap: Snapshot, checkpoint: Path, config: Any, *, gpus: int = 1, progress: bool = True,
    embeddings: bool | None = None, mc_passes: int | None = None,
) -> tuple[Path, str]:
    """Score the snapshot's pool with ``checkpoint`` into ``scores/<version>.s<n>.jsonl``
    (reused when present: the file is written atomically, so it is complete); ``gpus`` > 1
    shards it across torchrun processes. ``embeddings`` / ``mc_passes``: strategy data for the
    records (None: what ``active.strategy`` needs). Returns ``(path, model_version)``."""
    from tsp_model.engine.checkpoint import load_checkpoint

    version = str(load_checkpoint(checkpoint)["model_version"])
    out = workdir.scores / f"{version}.s{snap.number}.jsonl"
    if out.is_file():
        return out, version
    score_pool_file(checkpoint, config, snap.unlabeled, snap.image_dir, out, gpus=gpus, progress=progress,
                    embeddings=embeddings, mc_passes=mc_passes)
    return out, version


def _publish(checkpoint: Path, model_dir: Path, version: str) -> Path:
    """Copy to ``model_dir/<version>.pt`` atomically (temp name the backend ignores, then rename)."""
    model_dir.mkdir(parents=True, exist_ok=True)
    dest = model_dir / f"{version}.pt"
    if dest.is_file() and dest.stat().st_size == checkpoint.stat().st_size:
        os.utime(dest)  # published again: it is the current model (latest_checkpoint goes by mtime)
        return dest
    atomic_save(dest, lambda tmp: shutil.copyfile(checkpoint, tmp))
    return dest


def retrain(
    settings: ProjectSettings,
    workdir: Workdir,
    *,
    gpus: int = 1,
    from_scratch: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Train the next model; returns a summary dict (also stored as ``state.json:last_retrain``)."""
    from tsp_model.core.config import dump_toml
    from tsp_model.core.records import read_jsonl
    from tsp_model.engine.checkpoint import CheckpointError, latest_checkpoint, load_checkpoint
    from tsp_model.engine.train import train_from_files

    t0 = time.perf_counter()
    snap = workdir.latest_snapshot()
    counts = snap.manifest.get("counts", {})
    if not counts.get("labeled"):
        raise SyncError(f"snapshot {snap.number} has no labeled task; annotate in Label Studio and run tsp-sync pull")
    cfg = settings.train_config()
    class_names = snap.class_names

    current = None if from_scratch else latest_checkpoint(settings.model_dir)
    init_version = None
    if current is not None:
        state = load_checkpoint(current)  # CheckpointError: a clear message naming the file
        if list(state["class_names"]) != class_names:
            log.warning("%s has classes %s, the project %s: training from scratch without pseudo labels",
                        current, state["class_names"], class_names)
            current = None
        else:
            init_version = str(state["model_version"])

    run_dir = workdir.runs / f"s{snap.number}-{init_version or 'scratch'}"
    run_dir.mkdir(parents=True, exist_ok=True)
    doc = json.loads(snap.annotations.read_text())
    train_ids, held_ids = holdout_split([im["id"] for im in doc["images"]], settings.holdout_fraction)
    train_json = _write_split(snap, train_ids, run_dir / "train.json")
    held_json = _write_split(snap, held_ids, run_dir / "holdout.json") if held_ids else None
    config_path = run_dir / "config.toml"
    atomic_write_text(config_path, dump_toml(cfg))

    pseudo_path, n_pseudo_img, n_pseudo_inst = None, 0, 0
    if current is not None and cfg.active.pseudo_labels and counts.get("pool"):
        pseudo_path, _ = score_snapshot_pool(workdir, snap, current, cfg, gpus=gpus, progress=progress)
        a = cfg.active
        n_pseudo_img, n_pseudo_inst = pseudo_counts(read_jsonl(pseudo_path), a.sigma_c, a.sigma_b, a.sigma_m)
        if n_pseudo_img == 0:
            pseudo_path = None

    out = run_dir / "model.pt"
    init = current if cfg.active.finetune else None  # M_k from M_{k-1}'s weights, or from scratch
    args = ["--config", str(config_path), "--labeled", str(train_json), "--images", str(snap.image_dir),
            "--out", str(out), "--resume"]
    if pseudo_path is not None:
        args += ["--pseudo", str(pseudo_path), "--pseudo-images", str(snap.image_dir)]
    if init is not None:
        args += ["--init", str(init)]
    if gpus > 1:
        torchrun(gpus, "tsp_model.engine.train", args, failure=(
            "distributed training exited with code {rc} (see the log above); fix the cause and re-run "
            "tsp-sync retrain, which resumes from the last finished epoch"))
    else:
        try:
            train_from_files(
                config_path=config_path, labeled=train_json, images=snap.image_dir, out=out,
                pseudo=pseudo_path, pseudo_images=snap.image_dir if pseudo_path else None,
                init=init, resume=True, progress=progress,
            )
        except (ValueError, FileNotFoundError) as exc:
            raise SyncError(f"training on snapshot {snap.number} failed: {exc}") from None
    if not out.is_file():
        raise CheckpointError(f"{out}: training finished without writing the checkpoint; re-run tsp-sync retrain")
    version = str(load_checkpoint(out)["model_version"])
    dest = _publish(out, settings.model_dir, version)

    metrics: dict[str, Any] = {}
    if held_json is not None:
        metrics = evaluate_checkpoint(dest, held_json, snap.image_dir, cfg, progress=progress)

    summary = {
        "snapshot": snap.number,
        "model_version": version,
        "checkpoint": str(dest),
        "init": init_version,
        "labeled": len(train_ids),
        "holdout": len(held_ids),
        "pseudo_images": n_pseudo_img,
        "pseudo_instances": n_pseudo_inst,
        "gpus": gpus,
        "metrics": metrics,
        "seconds": round(time.perf_counter() - t0, 1),
    }
    workdir.update_state("last_retrain", summary)
    return summary


def evaluate_checkpoint(checkpoint: Path, ann_file: Path, image_dir: Path, cfg: Any, *, progress: bool = True) -> dict:
    """``{"segm_ap50", "segm_map", "bbox_ap50", "num_images"}`` of a checkpoint on a COCO split."""
    from tsp_model.data.coco import CocoInstanceDataset
    from tsp_model.engine.checkpoint import load_model
    from tsp_model.engine.distributed import resolve_device
    from tsp_model.engine.evaluate import evaluate

    device = resolve_device(cfg.train.device)
    loaded = load_model(checkpoint, device=device)
    ds = CocoInstanceDataset(ann_file, image_dir, class_names=loaded.class_names)
    res = evaluate(loaded.model, ds, device=device, class_names=loaded.class_names, progress=progress,
                   amp=cfg.score.amp, batch_size=cfg.score.batch_size)
    return {k: res[k] for k in ("segm_ap50", "segm_map", "bbox_ap50", "num_images") if k in res}


@click.command("retrain", help="Pseudo-label the pool with the current model, train on labeled + pseudo, publish the model.")
@project_option
@gpus_option
@click.option("--from-scratch", is_flag=True, help="Do not start from the current model's weights (no pseudo labels).")
@click.pass_obj
@handle_errors
def retrain_command(obj: CliContext, project: str, gpus: int, from_scratch: bool) -> None:
    from tsp_cli.workdir import Workdir

    settings = obj.project_settings(project)
    s = retrain(settings, Workdir(settings.workdir), gpus=gpus, from_scratch=from_scratch, progress=obj.progress)
    ap = s["metrics"].get("segm_ap50")
    click.echo(f"model {s['model_version']} -> {s['checkpoint']} ({s['labeled']} labeled + {s['pseudo_images']} "
               f"pseudo-labeled images, {s['pseudo_instances']} pseudo instances"
               + (f", mask AP50 {ap:.3f} on {s['holdout']} held-out" if ap is not None else "") + ")")
