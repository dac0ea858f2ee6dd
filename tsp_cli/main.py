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
    tsp-sync pretrain --project ich    # self-supervised backbone on the project's slices
    tsp-sync demo                      # the quickstart on generated head-CT slices

Settings: ``tsp.toml`` (or ``--config`` / ``$TSP_CONFIG``); server ``$LABEL_STUDIO_URL``, token
``$LABEL_STUDIO_API_KEY``. Every failure is one line ``Error: ...`` and exit status 1.
"""

from __future__ import annotations

import logging

import click

from tsp_cli.commands.cycle import cycle_command
from tsp_cli.commands.demo import demo_command
from tsp_cli.commands.importer import import_command
from tsp_cli.commands.pretrain import pretrain_command
from tsp_cli.commands.pull import pull_command
from tsp_cli.commands.reorder import reorder_command
from tsp_cli.commands.retrain import retrain_command
from tsp_cli.commands.review import overlay_command, report_command
from tsp_cli.commands.score import score_command
from tsp_cli.commands.simulate import simulate_command
from tsp_cli.commands.status import status_command
from tsp_cli.context import CliContext
from tsp_cli.errors import CliGroup

__all__ = ["cli"]

log = logging.getLogger("tsp_cli")


@click.group(cls=CliGroup, help="Keep a Label Studio project and the TSP model in step (pull, retrain, score, reorder).")
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
    ctx.obj = CliContext(config_path, progress=not no_progress)



for command in (pull_command, retrain_command, score_command, reorder_command, cycle_command, status_command,
                demo_command, import_command, overlay_command, report_command, simulate_command, pretrain_command):
    cli.add_command(command)

if __name__ == "__main__":  # pragma: no cover
    cli()
