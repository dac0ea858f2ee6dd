"""What every ``tsp-sync`` command shares: the group's options (``ctx.obj``) and the common options."""

from __future__ import annotations

import click

__all__ = ["CliContext", "gpus_option", "project_option"]


class CliContext:
    """The group's options: the settings file and whether to draw progress bars."""

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


project_option = click.option(
    "--project", "-p", required=True, help="A [projects.<name>] of tsp.toml, or a Label Studio project id."
)
gpus_option = click.option(
    "--gpus", type=click.IntRange(min=1), default=1, show_default=True,
    help="Processes/GPUs; N > 1 launches torchrun itself (one process per GPU; pool scoring is sharded).")
