"""``tsp-sync cycle``: pull, retrain, score, reorder, then one summary table.

Each step is the same function as its own command, so an interrupted cycle is continued by
running ``tsp-sync cycle`` again: an unchanged pull reuses the snapshot, training resumes in its
run folder, scoring reuses a complete score file and pushes only what is missing.
"""

from __future__ import annotations

import datetime as _dt
import time
from typing import Any

import click

from tsp_cli.client import LSProject
from tsp_cli.commands.pull import pull
from tsp_cli.commands.reorder import reorder
from tsp_cli.commands.retrain import retrain
from tsp_cli.commands.score import score
from tsp_cli.context import CliContext, gpus_option, project_option
from tsp_cli.errors import handle_errors
from tsp_cli.settings import ProjectSettings, Secrets
from tsp_cli.workdir import Workdir

__all__ = ["cycle", "format_table"]


def cycle(
    client: Any,
    project: LSProject,
    settings: ProjectSettings,
    workdir: Workdir,
    secrets: Secrets,
    *,
    gpus: int = 1,
    verify: bool = True,
    verify_client: Any = None,
    progress: bool = True,
    echo: Any = print,
) -> dict[str, Any]:
    """Run the four steps (``gpus`` processes for training and pool scoring); returns the summary
    (also ``state.json:last_cycle``).

    ``verify_client``: ask ``/next`` as this client's user (one nobody labels with) when verifying.
    """
    timings: dict[str, float] = {}

    t = time.perf_counter()
    pulled = pull(client, project, workdir, secrets, progress=progress)
    timings["pull"] = time.perf_counter() - t
    echo(f"pull: snapshot {pulled.snapshot.number} ({'new' if pulled.created else 'unchanged'})")

    t = time.perf_counter()
    trained = retrain(settings, workdir, gpus=gpus, progress=progress)
    timings["retrain"] = time.perf_counter() - t
    echo(f"retrain: {trained['model_version']}")

    t = time.perf_counter()
    scored = score(client, project, settings, workdir, gpus=gpus, progress=progress)
    timings["score"] = time.perf_counter() - t
    echo(f"score: {scored['scored']} tasks scored, {scored['pushed']} predictions pushed, {scored['deleted']} old deleted")

    t = time.perf_counter()
    ordered = reorder(client, project, workdir, model_version=scored["model_version"], verify=verify,
                      verify_client=verify_client)
    timings["reorder"] = time.perf_counter() - t

    counts = pulled.snapshot.manifest.get("counts", {})
    summary = {
        "finished_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "project": project.id,
        "snapshot": pulled.snapshot.number,
        "labeled": counts.get("labeled", 0),
        "instances": counts.get("instances", 0),
        "empty": counts.get("empty", 0),
        "pool": counts.get("pool", 0),
        "pseudo_images": trained["pseudo_images"],
        "pseudo_instances": trained["pseudo_instances"],
        "model_version": scored["model_version"],
        "strategy": scored.get("strategy", "tsp"),
        "metrics": trained.get("metrics", {}),
        "holdout": trained.get("holdout", 0),
        "verify": ordered.get("verify"),
        "top": ordered.get("top", []),
        "seconds": {k: round(v, 1) for k, v in timings.items()},
    }
    workdir.update_state("last_cycle", summary)
    from tsp_cli.commands.review import record_cycle

    record_cycle(workdir.root, summary)  # one line per cycle: the learning curve of `tsp-sync report`
    return summary


def format_table(summary: dict[str, Any], top_n: int = 5) -> str:
    """The cycle's summary as an aligned two-column table."""
    metrics = summary.get("metrics") or {}
    if metrics:
        map_text = f"{metrics.get('segm_ap50', 0.0):.3f} mask AP50 on {summary.get('holdout', 0)} held-out"
    else:
        map_text = "- (set holdout_fraction)"
    verify = summary.get("verify")
    if verify is None:
        next_text = "not checked"
    elif verify.get("next_task") is None:
        next_text = "no task served to this user"
    elif verify.get("honored") is True:
        next_text = f"task {verify['next_task']} = lowest S (Uncertainty sampling honored)"
    elif verify.get("honored") is None:
        next_text = f"task {verify['next_task']} (locked earlier for this user: inconclusive)"
    else:
        next_text = f"task {verify['next_task']}, not the lowest: use the 'TSP priority' view"
    top = summary.get("top") or []
    top_text = ", ".join(f"{e['task']} ({e['S']:.3f})" for e in top[:top_n]) or "-"
    secs = summary.get("seconds", {})
    rows = [
        ("snapshot", str(summary.get("snapshot"))),
        ("labeled images", f"{summary.get('labeled', 0)} ({summary.get('instances', 0)} instances, "
                           f"{summary.get('empty', 0)} no-lesion)"),
        ("unlabeled pool", str(summary.get("pool", 0))),
        ("pseudo-labeled", f"{summary.get('pseudo_images', 0)} images, {summary.get('pseudo_instances', 0)} instances"),
        ("model_version", str(summary.get("model_version"))),
        ("queue order", str(summary.get("strategy", "tsp"))),
        ("mAP", map_text),
        ("next task (/next)", next_text),
        ("top of queue (S_i)", top_text),
        ("time (s)", ", ".join(f"{k} {v}" for k, v in secs.items()) or "-"),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)


@click.command("cycle", help="pull, retrain, score and reorder, then print one summary table.")
@project_option
@gpus_option
@click.option("--verify/--no-verify", default=False, show_default=True,
              help="Check GET /api/projects/{id}/next after reordering, as `tsp-sync reorder --verify` does "
                   "(as the user of $LABEL_STUDIO_VERIFY_API_KEY when set).")
@click.pass_obj
@handle_errors
def cycle_command(obj: CliContext, project: str, gpus: int, verify: bool) -> None:
    from tsp_cli.commands.reorder import verify_client_from_env
    from tsp_cli.workdir import Workdir

    settings = obj.project_settings(project)
    client, ls_project, secrets = obj.connect(settings)
    verifier = verify_client_from_env(client, secrets.url) if verify else None
    s = cycle(client, ls_project, settings, Workdir(settings.workdir), secrets, gpus=gpus, verify=verify,
                 verify_client=verifier[0] if verifier else None, progress=obj.progress,
                 echo=lambda m: click.echo(m, err=True))
    click.echo(format_table(s))
