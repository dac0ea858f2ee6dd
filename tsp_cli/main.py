"""``tsp-sync``: keep a Label Studio project and the TSP model in step.

    tsp-sync pull    --project ich     # finished annotations -> COCO snapshot
    tsp-sync retrain --project ich     # pseudo labels + training -> model_dir/<version>.pt
    tsp-sync score   --project ich     # one prediction (S_i) per unlabeled task
    tsp-sync reorder --project ich     # Label Studio serves the lowest S_i first
    tsp-sync cycle   --project ich     # all four, then a summary table
    tsp-sync status  --project ich
    tsp-sync import  --project ich SERIES/...  # DICOM or PNG/JPEG slices -> tasks
    tsp-sync overlay --project ich     # hardest/easiest slices with "label: c b m"
    tsp-sync report  --project ich     # learning curve and S_i histograms
    tsp-sync simulate --coco labeled.json  # replay active learning on your own labeled data
    tsp-sync demo                      # the quickstart on generated head-CT slices

Settings: ``tsp.toml`` (or ``--config`` / ``$TSP_CONFIG``); server ``$LABEL_STUDIO_URL``, token
``$LABEL_STUDIO_API_KEY``. Every failure is one line ``Error: ...`` and exit status 1.
"""

from __future__ import annotations

import functools
import json
import logging
import sys
from pathlib import Path
from collections.abc import Callable
from typing import Any

import click

__all__ = ["cli"]

log = logging.getLogger("tsp_cli")


class _Ctx:
    def __init__(self, config_path: str | None, progress: bool) -> None:
        self.config_path = config_path
        self.progress = progress

    def project_settings(self, project: str):
        from tsp_cli.settings import find_settings_file, load_settings, select_project

        return select_project(load_settings(find_settings_file(self.config_path)), project)

    def connect(self, settings):
        from tsp_cli.client import connect, resolve_project
        from tsp_cli.settings import load_secrets

        secrets = load_secrets()
        client = connect(secrets)
        return client, resolve_project(client, settings.label_studio_project), secrets


def _expected_errors() -> tuple[type[BaseException], ...]:
    from tsp_labelstudio.regions import LabelConfigError
    from tsp_cli.client import SyncError
    from tsp_model.core.config import ConfigError
    from tsp_model.data.image_io import ImageError
    from tsp_model.engine.checkpoint import CheckpointError
    from tsp_model.engine.train import NonFiniteLossError
    from tsp_model.nn.model import WeightsNotFoundError
    from tsp_model.core.records import RecordError
    from tsp_model.simulation import SimulationError

    return (SyncError, ConfigError, CheckpointError, ImageError, LabelConfigError, RecordError, NonFiniteLossError,
            WeightsNotFoundError, SimulationError)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def _interrupted(exc: BaseException) -> bool:
    """Ctrl-C, or an error raised while a Ctrl-C was unwinding (a writer's cleanup failing)."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        if isinstance(e, KeyboardInterrupt):
            return True
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return False


def _exit_interrupted() -> None:
    import signal
    import threading

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the message short
    click.echo("Interrupted: finished files and predictions are kept; run the command again to continue.", err=True)
    sys.exit(130)


def handle_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Known errors -> ``Error: <one line>`` on stderr and exit 1; Ctrl-C -> one line and exit 130."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (SystemExit, click.exceptions.Exit, click.ClickException):
            raise
        except BaseException as exc:
            if _interrupted(exc):
                _exit_interrupted()
            if isinstance(exc, _expected_errors()):
                click.echo(f"Error: {_one_line(exc)}", err=True)
                sys.exit(1)
            raise

    return wrapper


class _Group(click.Group):
    """Ctrl-C outside a command's own handling (option parsing, the group callback): exit 130 too."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (SystemExit, click.exceptions.Exit, click.ClickException):
            raise
        except BaseException as exc:
            if _interrupted(exc):
                _exit_interrupted()
            raise


project_option = click.option(
    "--project", "-p", required=True, help="A [projects.<name>] of tsp.toml, or a Label Studio project id."
)
gpus_option = click.option(
    "--gpus", type=click.IntRange(min=1), default=1, show_default=True,
    help="Processes/GPUs; N > 1 launches torchrun itself (one process per GPU; pool scoring is sharded).")


@click.group(cls=_Group, help="Keep a Label Studio project and the TSP model in step (pull, retrain, score, reorder).")
@click.option("--config", "config_path", type=click.Path(dir_okay=False),
              help="Settings file (default: $TSP_CONFIG, else ./tsp.toml).")
@click.option("-v", "--verbose", count=True, help="More log output (-vv: debug).")
@click.option("--no-progress", is_flag=True, help="No progress bars.")
@click.pass_context
def cli(ctx: click.Context, config_path: str | None, verbose: int, no_progress: bool) -> None:
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    from tsp_labelstudio.redact import install, secrets_from_env

    install(logging.getLogger().handlers, secrets_from_env())  # no token in any log line, -vv included
    # httpx logs every request URL at INFO; keep it quiet unless debugging
    logging.getLogger("httpx").setLevel(logging.DEBUG if verbose > 1 else logging.WARNING)
    ctx.obj = _Ctx(config_path, progress=not no_progress)


@cli.command(help="Export finished annotations into a new COCO snapshot in the work directory.")
@project_option
@click.pass_obj
@handle_errors
def pull(obj: _Ctx, project: str) -> None:
    from tsp_cli.commands.pull import pull as do_pull
    from tsp_cli.workdir import Workdir

    settings = obj.project_settings(project)
    client, ls_project, secrets = obj.connect(settings)
    res = do_pull(client, ls_project, Workdir(settings.workdir), secrets, progress=obj.progress)
    c = res.counts
    state = "new" if res.created else "unchanged, kept"
    click.echo(f"snapshot {res.snapshot.number} ({state}): {c['labeled']} labeled ({c['instances']} instances, "
               f"{c['empty']} no-lesion), {c['pool']} unlabeled, {c['skipped']} skipped; "
               f"{c['downloaded']} images downloaded -> {res.snapshot.path}")


@cli.command(help="Pseudo-label the pool with the current model, train on labeled + pseudo, publish the model.")
@project_option
@gpus_option
@click.option("--from-scratch", is_flag=True, help="Do not start from the current model's weights (no pseudo labels).")
@click.pass_obj
@handle_errors
def retrain(obj: _Ctx, project: str, gpus: int, from_scratch: bool) -> None:
    from tsp_cli.commands.retrain import retrain as do_retrain
    from tsp_cli.workdir import Workdir

    settings = obj.project_settings(project)
    s = do_retrain(settings, Workdir(settings.workdir), gpus=gpus, from_scratch=from_scratch, progress=obj.progress)
    ap = s["metrics"].get("segm_ap50")
    click.echo(f"model {s['model_version']} -> {s['checkpoint']} ({s['labeled']} labeled + {s['pseudo_images']} "
               f"pseudo-labeled images, {s['pseudo_instances']} pseudo instances"
               + (f", mask AP50 {ap:.3f} on {s['holdout']} held-out" if ap is not None else "") + ")")


@cli.command(help="Score the unlabeled pool with the newest model and push one prediction per task.")
@project_option
@gpus_option
@click.pass_obj
@handle_errors
def score(obj: _Ctx, project: str, gpus: int) -> None:
    from tsp_cli.commands.score import score as do_score
    from tsp_cli.workdir import Workdir

    settings = obj.project_settings(project)
    client, ls_project, _ = obj.connect(settings)
    s = do_score(client, ls_project, settings, Workdir(settings.workdir), gpus=gpus, progress=obj.progress)
    click.echo(f"{s['model_version']}: {s['scored']} tasks scored, {s['pushed']} predictions pushed "
               f"({s['already']} already current), {s['deleted']} old ones deleted")


@cli.command(help="Make Label Studio serve the lowest prediction score first (S_i, or the active.strategy's rank; "
                  "Uncertainty sampling + 'TSP priority' view).")
@project_option
@click.option("--verify/--no-verify", default=True, show_default=True,
              help="Check GET /api/projects/{id}/next, then release the lock it puts on the served task. Asks as "
                   "the user of $LABEL_STUDIO_VERIFY_API_KEY (a user nobody labels with) when set, else as the "
                   "token's user.")
@click.pass_obj
@handle_errors
def reorder(obj: _Ctx, project: str, verify: bool) -> None:
    from tsp_cli.commands.reorder import VIEW_TITLE, verify_client_from_env
    from tsp_cli.commands.reorder import reorder as do_reorder
    from tsp_cli.workdir import Workdir

    settings = obj.project_settings(project)
    client, ls_project, secrets = obj.connect(settings)
    verifier = verify_client_from_env(client, secrets.url) if verify else None
    s = do_reorder(client, ls_project, Workdir(settings.workdir), verify=verify,
                   verify_client=verifier[0] if verifier else None)
    click.echo(f"project {ls_project.id}: model_version {s['model_version']}, ordered by {s['strategy']}, "
               f"{s['sampling']}, view {VIEW_TITLE!r} (id {s['view_id']})")
    v = s.get("verify")
    if v:
        who = f"as {verifier[1]}" if verifier else "as the token's user"
        where = "" if v.get("next_cluster") is None else f" of its cluster {v['next_cluster']}"
        if v["honored"]:
            released = "its lock released" if v.get("released") else "its lock NOT released (see the warning)"
            click.echo(f"/next ({who}) serves task {v['next_task']} (score {v['next_score']:.4f}, "
                       f"S={v['next_S']:.4f}), the lowest-scored task{where} ({s['strategy']} order); {released}")
        elif v["next_task"] is None:
            click.echo(f"/next ({who}) serves no task (nothing left, or all skipped by this user)")
        elif v["honored"] is None:
            click.echo(f"/next ({who}) serves task {v['next_task']}, locked for this user by an earlier call: "
                       "inconclusive; set LABEL_STUDIO_VERIFY_API_KEY to the token of a user nobody labels with")
        else:
            click.echo(f"/next ({who}) serves task {v['next_task']} (rank {v['next_rank']}), not the lowest-scored "
                       f"task{where} {v['lowest_task']}: the lower ones are open in an annotator's stream (locked), or "
                       f"this server does not honor the order; then label from the {VIEW_TITLE!r} view with 'Label "
                       "Tasks As Displayed'")


@cli.command(help="pull, retrain, score and reorder, then print one summary table.")
@project_option
@gpus_option
@click.option("--verify/--no-verify", default=False, show_default=True,
              help="Check GET /api/projects/{id}/next after reordering, as `tsp-sync reorder --verify` does "
                   "(as the user of $LABEL_STUDIO_VERIFY_API_KEY when set).")
@click.pass_obj
@handle_errors
def cycle(obj: _Ctx, project: str, gpus: int, verify: bool) -> None:
    from tsp_cli.commands.cycle import cycle as do_cycle
    from tsp_cli.commands.cycle import format_table
    from tsp_cli.commands.reorder import verify_client_from_env
    from tsp_cli.workdir import Workdir

    settings = obj.project_settings(project)
    client, ls_project, secrets = obj.connect(settings)
    verifier = verify_client_from_env(client, secrets.url) if verify else None
    s = do_cycle(client, ls_project, settings, Workdir(settings.workdir), secrets, gpus=gpus, verify=verify,
                 verify_client=verifier[0] if verifier else None, progress=obj.progress,
                 echo=lambda m: click.echo(m, err=True))
    click.echo(format_table(s))


@cli.command(help="Counts, model versions, last cycle's metrics and the top of the queue.")
@project_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
@handle_errors
def status(obj: _Ctx, project: str, as_json: bool) -> None:
    from tsp_cli.commands.status import format_status
    from tsp_cli.commands.status import status as do_status
    from tsp_cli.workdir import Workdir

    settings = obj.project_settings(project)
    info = do_status(settings, Workdir(settings.workdir))
    click.echo(json.dumps(info, indent=1, default=str) if as_json else format_status(info))


@cli.command(help="The quickstart: a local Label Studio with generated head-CT slices, the backend "
                  "connected, one active-learning cycle per run, the reordered queue. Ctrl-C stops it all.")
@click.option("--root", type=click.Path(file_okay=False, path_type=Path), default=Path("demo"), show_default=True,
              help="Folder for the slices, Label Studio's database, the work directory and tsp.toml.")
@click.option("--count", type=click.IntRange(min=4), default=60, show_default=True, help="Generated slices.")
@click.option("--size", type=click.IntRange(min=64), default=256, show_default=True, help="Slice size in pixels.")
@click.option("--first-batch", type=click.IntRange(min=2), default=20, show_default=True,
              help="Slices annotated from the ground truth before the first cycle (Algorithm 1, line 4).")
@click.option("--batch", "-b", type=click.IntRange(min=1), default=10, show_default=True,
              help="b: on later runs, slices labeled from the queue (/next) before the cycle.")
@click.option("--epochs", type=click.IntRange(min=1), default=150, show_default=True,
              help="Training epochs of the tiny CPU model per cycle (minutes on an idle 2-core CPU; see README).")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Interface Label Studio listens on (0.0.0.0: every interface, reachable from other machines).")
@click.option("--port", type=int, default=8080, show_default=True, help="Label Studio port.")
@click.option("--backend-port", type=int, default=9090, show_default=True)
@click.option("--serve/--no-serve", default=True, show_default=True,
              help="Keep Label Studio and the backend running until Ctrl-C.")
@click.pass_obj
@handle_errors
def demo(obj: _Ctx, root: Path, count: int, size: int, first_batch: int, batch: int, epochs: int, host: str,
         port: int, backend_port: int, serve: bool) -> None:
    from tsp_cli.commands.demo import DemoOptions, run_demo

    if first_batch >= count:
        raise click.BadParameter("--first-batch must be smaller than --count (the rest is the pool)")
    run_demo(DemoOptions(root=root, count=count, size=size, first_batch=first_batch, batch=batch, epochs=epochs,
                         host=host, port=port, backend_port=backend_port, serve=serve, progress=obj.progress),
             echo=click.echo)


def _register_review_commands() -> None:
    from tsp_cli.commands.importer import import_command
    from tsp_cli.commands.review import overlay_command, report_command
    from tsp_cli.commands.simulate import simulate_command

    for command in (import_command, overlay_command, report_command, simulate_command):
        cli.add_command(command)


_register_review_commands()

if __name__ == "__main__":  # pragma: no cover
    cli()
