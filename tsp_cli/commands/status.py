"""``tsp-sync status``: what the work directory knows, without touching Label Studio.

The queue lines name the selection strategy that ordered it (``active.strategy`` at the last
``score``): ``tsp`` orders by ``S_i``; any other by its rank / N, with ``S_i`` shown beside.
"""

from __future__ import annotations

import datetime as _dt
import json
from typing import Any

import click

from tsp_cli.context import CliContext, project_option
from tsp_cli.errors import handle_errors
from tsp_cli.priority import DEFAULT_STRATEGY, split_queue_version
from tsp_cli.settings import ProjectSettings
from tsp_cli.workdir import Workdir

__all__ = ["status", "format_status"]


def status(settings: ProjectSettings, workdir: Workdir) -> dict[str, Any]:
    """Counts of the latest snapshot, checkpoints in ``model_dir``, last step results."""
    snap = workdir.latest_snapshot(required=False)
    models = []
    if settings.model_dir.is_dir():
        files = [p for p in settings.model_dir.glob("*.pt") if p.is_file() and not p.name.startswith(".")]
        for p in sorted(files, key=lambda p: (p.stat().st_mtime_ns, p.name), reverse=True):
            when = _dt.datetime.fromtimestamp(p.stat().st_mtime, _dt.timezone.utc).isoformat(timespec="seconds")
            models.append({"file": p.name, "modified": when})
    state = workdir.read_state()
    return {
        "project": settings.name,
        "workdir": str(workdir.root),
        "snapshot": snap.number if snap else None,
        "counts": snap.manifest.get("counts", {}) if snap else {},
        "models": models,
        "last_retrain": state.get("last_retrain"),
        "last_score": state.get("last_score"),
        "last_reorder": state.get("last_reorder"),
        "last_cycle": state.get("last_cycle"),
    }


def format_status(info: dict[str, Any], top_n: int = 10) -> str:
    lines = [f"project {info['project']}  (workdir {info['workdir']})"]
    if info["snapshot"] is None:
        lines.append("snapshot: none yet (run tsp-sync pull)")
    else:
        c = info["counts"]
        lines.append(
            f"snapshot {info['snapshot']}: {c.get('tasks', 0)} tasks, {c.get('labeled', 0)} labeled "
            f"({c.get('instances', 0)} instances, {c.get('empty', 0)} no-lesion), {c.get('pool', 0)} unlabeled, "
            f"{c.get('skipped', 0)} skipped"
        )
    if info["models"]:
        lines.append("models (newest first):")
        lines += [f"  {m['file']}  {m['modified']}" for m in info["models"][:5]]
    else:
        lines.append("models: none yet (run tsp-sync retrain)")
    rt = info.get("last_retrain")
    if rt:
        m = rt.get("metrics") or {}
        ap = f", mask AP50 {m['segm_ap50']:.3f} on {rt.get('holdout', 0)} held-out" if "segm_ap50" in m else ""
        lines.append(f"last retrain: {rt['model_version']} on snapshot {rt['snapshot']}, {rt['labeled']} labeled + "
                     f"{rt['pseudo_images']} pseudo-labeled images ({rt['pseudo_instances']} instances){ap}, "
                     f"{rt['seconds']} s")
    sc = info.get("last_score")
    if sc:
        lines.append(f"last score: {sc.get('scored', 0)} tasks of snapshot {sc.get('snapshot')} scored, predictions "
                     f"{sc['model_version']} ordered by {_strategy_of(sc)}")
    ro = info.get("last_reorder")
    if ro:
        v = ro.get("verify") or {}
        if not v:
            check = "/next not checked"
        elif v.get("next_task") is None:
            check = "/next served no task to this user"
        elif v.get("honored") is None:
            check = f"/next inconclusive (task {v.get('next_task')} locked for this user earlier)"
        elif v["honored"]:
            check = f"/next serves task {v['next_task']}, the lowest score"
        else:
            check = "/next ignores the order: label from the 'TSP priority' view"
        lines.append(f"queue: model_version {ro['model_version']}, ordered by {_strategy_of(ro)}, {ro['sampling']}, "
                     f"view {ro['view_id']}; {check}")
    latest = ro or info.get("last_score") or {}
    top = latest.get("top") or []
    if top:
        strategy = _strategy_of(latest)
        clustered = any(e.get("cluster") is not None for e in top)
        order = "lowest S_i first" if strategy == DEFAULT_STRATEGY else "lowest score = rank / N first"
        lines.append(f"top of the queue by score ({strategy}: {order})" + (
            "; each annotator is served the lowest of the cluster they labeled least in" if clustered else "") + ":")
        for e in top[:top_n]:
            score = "" if strategy == DEFAULT_STRATEGY else f"  score = {e.get('score', 0.0):.4f}"
            cluster = f"  cluster {e['cluster']}" if e.get("cluster") is not None else ""
            lines.append(f"  task {e['task']:>6}{score}  S = {e['S']:.4f}{cluster}")
    return "\n".join(lines)


def _strategy_of(step: dict[str, Any]) -> str:
    """The strategy a score/reorder summary ordered the queue by (older summaries: from the version)."""
    return str(step.get("strategy") or split_queue_version(str(step.get("model_version") or ""))[1])


@click.command("status", help="Counts, model versions, last cycle's metrics and the top of the queue.")
@project_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
@handle_errors
def status_command(obj: CliContext, project: str, as_json: bool) -> None:
    from tsp_cli.workdir import Workdir

    settings = obj.project_settings(project)
    info = status(settings, Workdir(settings.workdir))
    click.echo(json.dumps(info, indent=1, default=str) if as_json else format_status(info))
