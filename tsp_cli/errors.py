"""How ``tsp-sync`` fails: every known error is one line ``Error: ...`` and exit status 1; Ctrl-C is
one line and exit status 130, whatever it interrupted."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any

import click

__all__ = ["CliGroup", "handle_errors"]


# the errors a user can act on: (module, class). An exception can only be an instance of a class
# whose module is loaded, so checking needs no import (a failing `tsp-sync status` loads no torch).
_EXPECTED = (
    ("tsp_cli.client", "SyncError"),
    ("tsp_labelstudio.regions", "LabelConfigError"),
    ("tsp_labelstudio.regions", "RegionError"),
    ("tsp_model.core.config", "ConfigError"),
    ("tsp_model.core.records", "RecordError"),
    ("tsp_model.data.image_io", "ImageError"),
    ("tsp_model.engine.checkpoint", "CheckpointError"),
    ("tsp_model.engine.train", "NonFiniteLossError"),
    ("tsp_model.nn.model", "WeightsNotFoundError"),
    ("tsp_model.simulation.settings", "SimulationError"),
)


def _expected(exc: BaseException) -> bool:
    for module, name in _EXPECTED:
        loaded = sys.modules.get(module)
        if loaded is not None and isinstance(exc, getattr(loaded, name)):
            return True
    return False


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
            if _expected(exc):
                click.echo(f"Error: {_one_line(exc)}", err=True)
                sys.exit(1)
            raise

    return wrapper


class CliGroup(click.Group):
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
