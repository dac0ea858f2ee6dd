"""``tsp-sync simulate``: replay the active-learning loop on your own fully labeled data.

    tsp-sync simulate --coco labeled.json --images slices/ --out sim/ --seeds 0,1,2
    tsp-sync simulate --coco pool.json --test-coco test.json --arms random,tsp,tsp_diverse+pseudo,full

Answers "on data like ours, how many labels does this save?" before annotators are committed:
Algorithm 1 replayed with an oracle (:mod:`tsp_model.simulation`) for each arm and seed, written
to ``<out>/simulation.json``, ``simulation.png`` and ``simulation.txt`` (the table). A killed run
started again with the same command continues where it stopped (``--restart`` starts over).
No Label Studio is involved.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from tsp_cli.errors import handle_errors

__all__ = ["simulate_command"]


def _floats(text: str | None) -> list[float] | None:
    return [float(v) for v in text.split(",")] if text else None


@click.command("simulate", help="Replay active learning with an oracle on fully labeled images (a COCO file, or a "
                                "Label Studio project's finished tasks): mAP per cycle and arm, paired differences, "
                                "labels needed for 95% of full supervision.")
@click.option("--coco", "coco", type=click.Path(dir_okay=False, path_type=Path),
              help="COCO instances json of the fully labeled images (masks as polygons or RLE).")
@click.option("--project", "-p", help="Instead of --coco: a tsp.toml project (or Label Studio id) whose finished tasks "
                                      "are pulled and replayed (the oracle holds what your annotators labeled).")
@click.option("--offline", is_flag=True, help="With --project: replay the latest pulled snapshot, without Label Studio.")
@click.option("--images", type=click.Path(file_okay=False, path_type=Path),
              help="Folder the file_name entries are relative to (default: the json's folder).")
@click.option("--test-coco", type=click.Path(dir_okay=False, path_type=Path),
              help="A separate test set (default: split off --test-fraction of the groups).")
@click.option("--test-images", type=click.Path(file_okay=False, path_type=Path))
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Results and the resumable work folder (default ./simulation, or <workdir>/simulation with "
                   "--project).")
@click.option("--arms", default="random,class_entropy,tsp,tsp+pseudo,tsp_instance,tsp_diverse,tsp_diverse+pseudo,full",
              show_default=True, help="STRATEGY[+pseudo][+typiclust] or full, comma-separated; 'all' adds every strategy.")
@click.option("--seeds", default="0,1,2", show_default=True, help="Comma-separated seeds (paired across arms).")
@click.option("--budget", "-b", type=click.IntRange(min=1), default=10, show_default=True, help="Images labeled per cycle.")
@click.option("--cycles", type=click.IntRange(min=1), default=3, show_default=True)
@click.option("--backbone", type=click.Choice(["tiny_fpn", "resnet18_fpn", "mobilenet_v3_fpn", "resnet50_fpn"]),
              default="tiny_fpn", show_default=True)
@click.option("--image-size", type=click.IntRange(min=32), default=128, show_default=True)
@click.option("--init", type=click.Path(dir_okay=False, path_type=Path),
              help="Warm start: every cycle's model starts from this checkpoint's matching weights.")
@click.option("--image-steps", type=click.IntRange(min=1), default=400, show_default=True,
              help="Labeled images each model sees (epochs = max(--min-epochs, image_steps / labeled)).")
@click.option("--min-epochs", type=click.IntRange(min=1), default=8, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=2, show_default=True)
@click.option("--lr", type=float, default=0.02, show_default=True)
@click.option("--validation", type=click.FloatRange(0.0, 0.9), default=0.15, show_default=True,
              help="Fraction of the images (whole groups) for design choices.")
@click.option("--test-fraction", type=click.FloatRange(0.0, 0.9), default=0.2, show_default=True)
@click.option("--group-key", default="auto", show_default=True,
              help="COCO image field that groups near-duplicates (series_id, patient_id, source...); 'auto', or 'none'.")
@click.option("--pretrain", is_flag=True,
              help="Pretrain the backbone on the pool's slices first (self-supervised, labels unread; tsp-sync "
                   "pretrain's method) and start every model from it.")
@click.option("--pretrain-epochs", type=click.IntRange(min=1), help="Epochs of that pretraining (default: the config's).")
@click.option("--crowd", type=click.Choice(["auto", "instances", "ignore"]), default="auto", show_default=True,
              help="What iscrowd 1 annotations are: instances (CVAT writes every mask so), or regions to ignore "
                   "(COCO's meaning); auto: instances when every mask annotation is a crowd one, saying so.")
@click.option("--tune/--no-tune", default=True, show_default=True,
              help="Choose the scoring threshold, empty-image rule and display threshold on the validation split.")
@click.option("--score-thresholds", help="Candidates of active.score_threshold (default 0.3,0.5,0.7).")
@click.option("--design-from", type=click.Path(path_type=Path),
              help="Reuse another run's design (its --out folder or simulation.json) instead of tuning.")
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path),
              help="A TSPConfig TOML for everything else (pseudo-label thresholds...).")
@click.option("--device", default="auto", show_default=True)
@click.option("--threads", type=click.IntRange(min=1), help="torch CPU threads.")
@click.option("--restart", is_flag=True, help="Discard the finished models in --out and start over.")
@click.pass_obj
def simulate_command(obj: object, **options: Any) -> None:
    handle_errors(_run)(obj, options)


def _settings(o: dict[str, Any]) -> Any:
    """The replay's settings from the command's options (one line naming a bad one)."""
    from tsp_model.simulation import SimulationError, SimulationSettings

    try:
        seeds = [int(v) for v in o["seeds"].split(",") if v.strip()]
    except ValueError:
        raise SimulationError(f"--seeds {o['seeds']!r}: expected comma-separated integers") from None
    if o["init"] is not None and not o["init"].is_file():
        raise SimulationError(f"--init {o['init']}: checkpoint not found")
    settings = SimulationSettings(
        arms=[a.strip() for a in o["arms"].split(",") if a.strip()], seeds=seeds, budget=o["budget"],
        cycles=o["cycles"], backbone=o["backbone"], image_size=o["image_size"],
        init=str(o["init"]) if o["init"] else None, image_steps=o["image_steps"], min_epochs=o["min_epochs"],
        batch_size=o["batch_size"], lr=o["lr"], device=o["device"], threads=o["threads"],
        validation=o["validation"], test=o["test_fraction"],
        group_key=None if o["group_key"] == "none" else o["group_key"], tune=o["tune"], crowd=o["crowd"],
        design_from=str(o["design_from"]) if o["design_from"] else None, pretrain=o["pretrain"],
        pretrain_epochs=o["pretrain_epochs"],
    )
    if o["score_thresholds"]:
        settings.score_thresholds = _floats(o["score_thresholds"]) or settings.score_thresholds
    settings.check()
    return settings


def _project_source(obj: Any, o: dict[str, Any]) -> tuple[Path, Path, Path, Any]:
    """``(COCO file, image folder, default out folder, the project's training config)`` of a
    project's latest snapshot, pulled first unless ``--offline``."""
    from tsp_cli.client import SyncError
    from tsp_cli.commands.pull import pull
    from tsp_cli.workdir import Workdir

    settings = obj.project_settings(o["project"])
    workdir = Workdir(settings.workdir)
    if not o["offline"]:
        client, ls_project, secrets = obj.connect(settings)
        res = pull(client, ls_project, workdir, secrets, progress=obj.progress)
        click.echo(f"snapshot {res.snapshot.number} ({'new' if res.created else 'unchanged'}): "
                   f"{res.counts['labeled']} finished tasks to replay", err=True)
    snap = workdir.latest_snapshot(required=False)
    if snap is None:
        raise SyncError(f"project {o['project']}: no snapshot in {workdir.root}; run tsp-sync pull (or drop --offline)")
    return snap.annotations, snap.image_dir, workdir.root / "simulation", settings.train_config()


def _run(obj: Any, o: dict[str, Any]) -> None:
    from tsp_model.core.config import load_config
    from tsp_model.simulation import SimulationError, run_simulation
    from tsp_model.simulation.data import load_simulation_data
    from tsp_model.simulation.results import format_table

    if (o["coco"] is None) == (o["project"] is None):
        raise SimulationError("simulate: give --coco FILE (a labeled COCO set) or --project NAME (a Label Studio "
                              "project's finished tasks), one of them")
    if o["project"] is not None:
        coco, images, out_default, base = _project_source(obj, o)
        title = f"project {o['project']}"
    else:
        coco, images, out_default, base, title = o["coco"], o["images"], Path("simulation"), None, o["coco"].stem
    settings = _settings(o)
    base = load_config(o["config_path"]) if o["config_path"] else base
    data, _ = load_simulation_data(coco, images, settings, test_coco=o["test_coco"], test_images=o["test_images"])
    for note in data.description["notes"]:
        click.echo(note, err=True)
    out_dir = o["out_dir"] or out_default
    doc = run_simulation(data, settings, out_dir, base_config=base, title=title,
                         progress=getattr(obj, "progress", True), restart=o["restart"],
                         log_cycle=lambda m: click.echo(m, err=True))
    click.echo(format_table(doc))
    click.echo(f"wrote {out_dir / 'simulation.json'}, {out_dir / 'simulation.png'}")
    if not doc["oracle_ok"] or doc["errors"]:
        raise SimulationError(f"{len(doc['errors'])} arm(s) failed; see {out_dir / 'simulation.json'}")
