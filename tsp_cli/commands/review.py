"""``tsp-sync overlay`` and ``tsp-sync report``: pictures a person looks at between cycles.

    tsp-sync overlay --project ich --top 12      # <workdir>/overlays/<model_version>/index.html
    tsp-sync report  --project ich               # <workdir>/report/learning_curve.png, score_histograms.png

Both read only the work directory (no Label Studio connection):

- scores: ``<workdir>/scores/<model_version>*.jsonl`` (:mod:`tsp_model.core.records`); ``overlay``
  takes the newest file unless ``--scores`` or ``--model-version`` says otherwise;
- images: the latest snapshot's image folder (``<workdir>/images``), or ``--images``;
- cycles: ``<workdir>/cycles.jsonl``, one object per cycle with ``cycle, model_version, labeled,
  pseudo_images, pseudo_instances, map50 (or null), finished_at`` (:func:`record_cycle` appends
  one). Without it, ``report`` uses the last cycle in ``state.json`` and every score file.

``--workdir DIR`` replaces ``--project`` when there is no tsp.toml.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import click

from tsp_cli.client import SyncError
from tsp_cli.errors import handle_errors

log = logging.getLogger(__name__)

__all__ = [
    "CYCLES_FILE",
    "find_score_file",
    "overlay_command",
    "read_cycles",
    "record_cycle",
    "report_command",
]

CYCLES_FILE = "cycles.jsonl"


def record_cycle(workdir: str | Path, summary: Mapping[str, Any]) -> dict[str, Any]:
    """Append one cycle line to ``<workdir>/cycles.jsonl`` (atomic rewrite) and return it.

    ``summary`` is ``tsp_cli.commands.cycle.cycle``'s result (``metrics.segm_ap50`` becomes ``map50``) or
    already a cycle row. ``cycle`` defaults to the number of earlier lines + 1.
    """
    from tsp_cli.workdir import atomic_write_text

    path = Path(workdir) / CYCLES_FILE
    rows = read_cycles(workdir) if path.is_file() else []
    metrics = summary.get("metrics") or {}
    map50 = summary.get("map50", metrics.get("segm_ap50"))
    row = {
        "cycle": int(summary.get("cycle", len(rows) + 1)),
        "model_version": str(summary.get("model_version", "")),
        "labeled": int(summary.get("labeled", 0)),
        "pseudo_images": int(summary.get("pseudo_images", 0)),
        "pseudo_instances": int(summary.get("pseudo_instances", 0)),
        "map50": None if map50 is None else float(map50),
        "finished_at": summary.get("finished_at"),
    }
    text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in [*rows, row])
    atomic_write_text(path, text)
    return row


def read_cycles(workdir: str | Path) -> list[dict[str, Any]]:
    """The rows of ``<workdir>/cycles.jsonl`` ([] when absent); SyncError naming a bad line."""
    path = Path(workdir) / CYCLES_FILE
    if not path.is_file():
        return []
    rows = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise SyncError(f"{path}:{lineno}: not valid JSON ({exc.msg}); fix or delete the line") from None
        if not isinstance(row, dict) or "labeled" not in row:
            raise SyncError(f"{path}:{lineno}: expected an object with 'labeled'; fix or delete the line")
        rows.append(row)
    return rows


def _score_files(workdir: Path) -> list[Path]:
    d = workdir / "scores"
    if not d.is_dir():
        return []
    return sorted((p for p in d.glob("*.jsonl") if not p.name.startswith(".")), key=lambda p: p.stat().st_mtime)


def find_score_file(workdir: str | Path, model_version: str | None = None) -> Path:
    """The newest ``scores/*.jsonl``, or the newest one of ``model_version``."""
    workdir = Path(workdir)
    files = _score_files(workdir)
    if model_version:
        model_version = model_version.partition("+")[0]  # "<version>+<strategy>": tsp_cli.priority
        files = [p for p in files if p.name == f"{model_version}.jsonl" or p.name.startswith(f"{model_version}.")]
    if not files:
        what = f"for model version {model_version!r} " if model_version else ""
        raise SyncError(f"{workdir / 'scores'}: no score file {what}yet; run tsp-sync score first")
    return files[-1]


def _image_dir(workdir: Path) -> Path:
    try:
        from tsp_cli.workdir import Workdir

        snap = Workdir(workdir).latest_snapshot(required=False)
        if snap is not None:
            return snap.image_dir
    except SyncError:
        pass
    return workdir / "images"


def _workdir(ctx: click.Context, project: str | None, workdir: Path | None) -> Path:
    if workdir is not None:
        return workdir
    if project is None:
        raise click.UsageError("pass --project (a tsp.toml project or Label Studio id) or --workdir")
    obj = ctx.obj
    if obj is not None and hasattr(obj, "project_settings"):
        return Path(obj.project_settings(project).workdir)
    from tsp_cli.settings import find_settings_file, load_settings, select_project

    return Path(select_project(load_settings(find_settings_file(None)), project).workdir)




_project = click.option("--project", "-p", help="A [projects.<name>] of tsp.toml, or a Label Studio project id.")
_workdir_opt = click.option("--workdir", type=click.Path(file_okay=False, path_type=Path),
                            help="The project's work directory (instead of --project).")


@click.command("overlay", help="PNG overlays of the hardest and easiest slices (label: c b m) and an index.html.")
@_project
@_workdir_opt
@click.option("--top", "-k", type=click.IntRange(min=1), default=10, show_default=True,
              help="How many hardest (lowest S_i) and easiest (highest S_i) images.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Output folder (default <workdir>/overlays/<model_version>).")
@click.option("--scores", "scores_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="A score file (default: the newest in <workdir>/scores).")
@click.option("--model-version", help="Use the newest score file of this model version.")
@click.option("--images", "image_dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="Folder of the scored images (default: the latest snapshot's).")
@click.pass_context
def overlay_command(ctx: click.Context, project: str | None, workdir: Path | None, top: int, out_dir: Path | None,
                    scores_file: Path | None, model_version: str | None, image_dir: Path | None) -> None:
    handle_errors(_run_overlay)(ctx, project, workdir, top, out_dir, scores_file, model_version, image_dir)


def _run_overlay(ctx: click.Context, project: str | None, workdir: Path | None, top: int, out_dir: Path | None,
                 scores_file: Path | None, model_version: str | None, image_dir: Path | None) -> None:
    wd = _workdir(ctx, project, workdir)
    index, n, scored, path = write_overlays(wd, top=top, out_dir=out_dir, scores_file=scores_file,
                                            model_version=model_version, image_dir=image_dir)
    click.echo(f"{n} overlays of {scored} scored images ({path.name}) -> {index}")


def write_overlays(wd: Path, *, top: int = 10, out_dir: Path | None = None, scores_file: Path | None = None,
                   model_version: str | None = None, image_dir: Path | None = None) -> tuple[Path, int, int, Path]:
    """Hardest/easiest overlays + index.html of a work directory's newest (or given) score file.

    Returns ``(index_html, overlays_written, images_scored, score_file)``.
    """
    from tsp_model.core.records import read_jsonl
    from tsp_model.viz.overlay import load_image_from, write_overlay_index

    path = scores_file or find_score_file(wd, model_version)
    records = read_jsonl(path)
    if not records:
        raise SyncError(f"{path}: no scored images; run tsp-sync score on a non-empty pool")
    version = records[0].model_version or path.stem
    out = out_dir or (wd / "overlays" / version)
    index = write_overlay_index(records, out, load_image_from(image_dir or _image_dir(wd)), top=top,
                                title=f"TSP scores: {version}")
    return index, len(list(out.glob("*.png"))), len(records), path


@click.command("report", help="Learning curve (mAP50, labeled count) and S_i histograms per cycle, as PNG.")
@_project
@_workdir_opt
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Output folder (default <workdir>/report).")
@click.pass_context
def report_command(ctx: click.Context, project: str | None, workdir: Path | None, out_dir: Path | None) -> None:
    handle_errors(_run_report)(ctx, project, workdir, out_dir)


def _cycles_or_state(wd: Path) -> list[dict[str, Any]]:
    rows = read_cycles(wd)
    if rows:
        return rows
    from tsp_cli.workdir import Workdir

    last = Workdir(wd).read_state().get("last_cycle")
    if not last:
        return []
    log.warning("%s missing: the learning curve shows the last cycle only", wd / CYCLES_FILE)
    metrics = last.get("metrics") or {}
    return [{"cycle": 1, "model_version": last.get("model_version", ""), "labeled": last.get("labeled", 0),
             "pseudo_images": last.get("pseudo_images", 0), "map50": metrics.get("segm_ap50")}]


def _run_report(ctx: click.Context, project: str | None, workdir: Path | None, out_dir: Path | None) -> None:
    wd = _workdir(ctx, project, workdir)
    title = f"project {project}" if project and workdir is None else None
    click.echo("\n".join(str(p) for p in write_report(wd, out_dir, title=title)))


def curve_title(name: str, cycles: list[dict[str, Any]]) -> str:
    """"<name>: N cycles, 20 -> 30 labeled images" (the learning curve's heading)."""
    counts = [int(c.get("labeled", 0)) for c in sorted(cycles, key=lambda r: int(r.get("cycle", 0)))]
    n = len(counts)
    span = f"{counts[0]} -> {counts[-1]}" if counts and counts[0] != counts[-1] else str(counts[0] if counts else 0)
    return f"{name}: {n} cycle{'s' if n != 1 else ''}, {span} labeled images"


def write_report(wd: Path, out_dir: Path | None = None, title: str | None = None) -> list[Path]:
    """Learning curve and S_i histograms of a work directory; returns the PNGs written.

    ``title``: what the curve's heading names (default: the work directory's path).
    """
    from tsp_model.core.records import read_jsonl
    from tsp_model.viz.report import plot_learning_curve, plot_score_histograms

    out = out_dir or (wd / "report")
    cycles = _cycles_or_state(wd)
    written = []
    if cycles:
        heading = curve_title(title or str(wd), cycles)
        written.append(plot_learning_curve(cycles, out / "learning_curve.png", title=heading))
    per_cycle: dict[str, list[float]] = {}
    if cycles:
        for row in sorted(cycles, key=lambda r: int(r.get("cycle", 0))):
            version = str(row.get("model_version") or "")
            try:
                path = find_score_file(wd, version) if version else None
            except SyncError:
                path = None
            if path is not None:
                per_cycle[f"cycle {row.get('cycle')} ({version})"] = [r.S for r in read_jsonl(path)]
    else:
        for path in _score_files(wd):
            per_cycle[path.stem] = [r.S for r in read_jsonl(path)]
    if per_cycle:
        written.append(plot_score_histograms(per_cycle, out / "score_histograms.png"))
    if not written:
        raise SyncError(f"{wd}: no cycles and no score files yet; run tsp-sync cycle first")
    return written
