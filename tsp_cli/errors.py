"""How ``tsp-sync`` fails: every known error is one line ``Error: ...`` and exit status 1; Ctrl-C is
one line and exit status 130, whatever it interrupted."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any

import click

__all__ = ["CliGroup", "handle_errors"]


def _expected_errors() -> tuple[type[BaseException], ...]:
    from tsp_cli.client import SyncError
    from tsp_labelstudio.regions import LabelConfigError
    from tsp_model.core.config import ConfigError
    from tsp_model.core.records import RecordError
    from tsp_model.data.image_io import ImageError
    from tsp_model.engine.checkpoint import CheckpointError
    from tsp_model.engine.train import NonFiniteLossError
    from tsp_model.nn.model import WeightsNotFoundError
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
