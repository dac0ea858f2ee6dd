"""``tsp-sync pretrain``: a backbone that has seen the project's slices before the first label.

Self-supervised pretraining (:mod:`tsp_model.engine.pretrain`, SimSiam) of the detector's backbone
and FPN on every slice of the latest snapshot, labeled or not (labels are never read), into
``<workdir>/pretrain/backbone-<digest>.pt``; ``--gpus N`` runs N torchrun processes. Interrupted,
the same command continues from the last saved epoch. Training starts from it once the project's
config says so: ``[projects.<name>.model] weights_backbone = "<that path>"`` (then
``active.typiclust_embedding`` and ``active.cluster_source = "pretrained"`` can use it too).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import click

from tsp_cli.context import CliContext, gpus_option, project_option
from tsp_cli.errors import handle_errors
from tsp_cli.launch import torchrun
from tsp_cli.settings import ProjectSettings
from tsp_cli.workdir import Workdir, atomic_write_text

__all__ = ["pretrain", "pretrain_command"]


def snapshot_images(workdir: Workdir) -> list[Path]:
    """Every slice of the latest snapshot, labeled and unlabeled, as cached image files."""
    snap = workdir.latest_snapshot()
    labeled = json.loads(snap.annotations.read_text())["images"]
    names = [im["file_name"] for im in labeled] + [t["file_name"] for t in snap.pool()]
    return [snap.image_dir / name for name in dict.fromkeys(names)]


def pretrain(settings: ProjectSettings, workdir: Workdir, *, gpus: int = 1, progress: bool = True) -> dict[str, Any]:
    """Pretrain on the snapshot's slices; returns a summary (also ``state.json:last_pretrain``)."""
    from tsp_model.core.config import dump_toml
    from tsp_model.engine.checkpoint import load_checkpoint
    from tsp_model.engine.pretrain import images_digest
    from tsp_model.engine.pretrain import pretrain as run_pretrain

    t0 = time.perf_counter()
    paths = snapshot_images(workdir)
    cfg = settings.train_config()
    out = workdir.root / "pretrain" / f"backbone-{images_digest(paths)}.pt"
    out.parent.mkdir(parents=True, exist_ok=True)
    if gpus > 1:
        listing, config = out.with_suffix(".images.json"), out.with_suffix(".config.toml")
        atomic_write_text(listing, json.dumps([str(p) for p in paths]))
        atomic_write_text(config, dump_toml(cfg))
        torchrun(gpus, "tsp_model.engine.pretrain", ["--config", str(config), "--images", str(listing), "--out", str(out)]
                 + ([] if progress else ["--no-progress"]),
                 failure="distributed pretraining exited with code {rc} (see the log above); run tsp-sync pretrain "
                         "again, which continues from the last saved epoch")
    else:
        run_pretrain(cfg, paths, out, progress=progress)
    state = load_checkpoint(out)
    summary = {"checkpoint": str(out), "slices": state["data"]["images"], "digest": state["data"]["digest"],
               "epochs": state["epoch"], "method": state["pretrain"]["method"], "cost": state.get("cost", {}),
               "loss": state["history"][-1]["loss"] if state.get("history") else None,
               "seconds": round(time.perf_counter() - t0, 1)}
    workdir.update_state("last_pretrain", summary)
    return summary


@click.command("pretrain", help="Self-supervised pretraining of the backbone on the project's slices (no labels), "
                                "for model.weights_backbone.")
@project_option
@gpus_option
@click.pass_obj
@handle_errors
def pretrain_command(obj: CliContext, project: str, gpus: int) -> None:
    settings = obj.project_settings(project)
    s = pretrain(settings, Workdir(settings.workdir), gpus=gpus, progress=obj.progress)
    cost = s["cost"]
    click.echo(f"pretrained backbone ({s['method']}) -> {s['checkpoint']}: {s['slices']} slices, {s['epochs']} epochs, "
               f"{cost.get('seconds', s['seconds'])} s, {cost.get('views_per_second', '-')} views/s on "
               f"{cost.get('device', '?')}")
    click.echo(f'to train from it: [projects.{settings.name}.model] weights_backbone = "{s["checkpoint"]}"')
