"""``tsp-backend``: the ML backend app (:mod:`tsp_backend.api`) served by gunicorn, one command.

    tsp-backend --port 9090 --model-dir models/

One backend serves several projects: ``/setup`` and ``/predict`` read the request's own label
config, answer a bad one with a 400 naming the tag or labels, and report the checkpoint's
``model_version`` (Label Studio uses it to skip tasks that already hold this version's
prediction). ``/webhook`` records annotation events in the request (no training, no process).

Basic auth (Label Studio's ML settings offer it): set ``BASIC_AUTH_USER`` and
``BASIC_AUTH_PASS`` in the backend's environment; every endpoint then needs them.

Logs go to stderr; every handler (ours and gunicorn's) carries a
:class:`tsp_labelstudio.redact.RedactingFilter`, so no level, DEBUG included, shows a credential.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any

import click

from tsp_backend.api import create_app
from tsp_labelstudio.images import ENV_ALLOWED_DIRS, ENV_ALLOWED_URL_PREFIXES, ImageSources
from tsp_backend.limits import (
    DEFAULT_MAX_IMAGE_PIXELS,
    DEFAULT_MAX_REQUEST_MB,
    DEFAULT_PREDICT_TIMEOUT_S,
    ENV_MAX_IMAGE_PIXELS,
    ENV_MAX_REQUEST_MB,
    ENV_PREDICT_TIMEOUT,
    Limits,
)

logger = logging.getLogger("tsp_backend")

__all__ = ["create_app", "main"]


def _gunicorn_logger_class() -> type:
    """gunicorn's logger with the redacting filter on its handlers (they do not propagate to root)."""
    from gunicorn.glogging import Logger

    from tsp_labelstudio.redact import install, secrets_from_env

    class RedactingGunicornLogger(Logger):
        def setup(self, cfg: Any) -> None:
            super().setup(cfg)
            install([*self.error_log.handlers, *self.access_log.handlers], secrets_from_env())

    return RedactingGunicornLogger


def _gunicorn_application(app: Any, options: dict[str, Any]) -> Any:
    from gunicorn.app.base import BaseApplication

    class _Standalone(BaseApplication):
        def load_config(self) -> None:
            for key, value in options.items():
                if key in self.cfg.settings and value is not None:
                    self.cfg.set(key.lower(), value)

        def load(self) -> Any:
            return app

    return _Standalone()


def setup_logging(level: str) -> None:
    """Root logging to stderr with credentials redacted (see :mod:`tsp_labelstudio.redact`)."""
    from tsp_labelstudio.redact import install, secrets_from_env

    logging.basicConfig(level=level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s [%(process)d]: %(message)s")
    install(logging.getLogger().handlers, secrets_from_env())


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Interface to bind; 0.0.0.0 to accept connections from other machines (e.g. in Docker).")
@click.option("--port", default=9090, show_default=True, type=int)
@click.option("--model-dir", envvar="TSP_MODEL_DIR", required=True,
              type=click.Path(file_okay=False, path_type=Path),
              help="Directory of *.pt checkpoints; the newest is served and reloaded when it changes.")
@click.option("--allow-url-prefix", "url_prefixes", multiple=True, envvar=ENV_ALLOWED_URL_PREFIXES,
              help=f"An http(s) URL prefix task images may come from (besides Label Studio's uploads and local "
                   f"files); repeat for more. Env: {ENV_ALLOWED_URL_PREFIXES} (space-separated).")
@click.option("--allow-dir", "dirs", multiple=True, envvar=ENV_ALLOWED_DIRS,
              type=click.Path(file_okay=False, path_type=Path),
              help=f"A folder whose files task images may name (file:// URLs or paths); repeat for more. "
                   f"Env: {ENV_ALLOWED_DIRS} ({os.pathsep}-separated).")
@click.option("--max-request-mb", envvar=ENV_MAX_REQUEST_MB, default=DEFAULT_MAX_REQUEST_MB, show_default=True,
              type=click.FloatRange(min=0, min_open=True), help=f"Largest request body (413 above). Env: {ENV_MAX_REQUEST_MB}.")
@click.option("--max-image-pixels", envvar=ENV_MAX_IMAGE_PIXELS, default=DEFAULT_MAX_IMAGE_PIXELS, show_default=True,
              type=click.IntRange(min=1), help=f"Largest image (width x height), checked before decoding. Env: {ENV_MAX_IMAGE_PIXELS}.")
@click.option("--predict-timeout", envvar=ENV_PREDICT_TIMEOUT, default=DEFAULT_PREDICT_TIMEOUT_S, show_default=True,
              type=click.FloatRange(min=0, min_open=True),
              help=f"Seconds per /predict; tasks not started by then get a per-task error. Env: {ENV_PREDICT_TIMEOUT}.")
@click.option("--workers", default=1, show_default=True, type=int, help="gunicorn worker processes (each holds a model).")
@click.option("--threads", default=4, show_default=True, type=int, help="Threads per worker (health checks stay answered during inference).")
@click.option("--timeout", default=300, show_default=True, type=int,
              help="Seconds after which gunicorn restarts a worker stuck in one request.")
@click.option("--log-level", default=lambda: os.environ.get("LOG_LEVEL", "INFO"), show_default="INFO")
def main(host: str, port: int, model_dir: Path, url_prefixes: tuple[str, ...], dirs: tuple[Path, ...],
         max_request_mb: float, max_image_pixels: int, predict_timeout: float, workers: int, threads: int,
         timeout: int, log_level: str) -> None:
    """Serve TSP predictions to Label Studio (the ML backend protocol on Flask, under gunicorn)."""
    setup_logging(log_level)
    if workers < 1 or threads < 1:
        raise click.BadParameter("--workers and --threads must be >= 1")
    try:
        sources = ImageSources.from_env(url_prefixes=url_prefixes, dirs=dirs)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    limits = Limits(max_request_mb=max_request_mb, max_image_pixels=max_image_pixels, predict_timeout_s=predict_timeout)
    app = create_app(model_dir, sources=sources, limits=limits)
    if app.extensions["tsp"]["basic_auth"]:
        logger.info("basic auth enabled")
    logger.info("image sources: Label Studio files at %s; URL prefixes: %s; folders: %s",
                sources.ls_url or "(LABEL_STUDIO_URL not set)", ", ".join(sources.url_prefixes) or "none",
                ", ".join(map(str, sources.dirs)) or "none")
    logger.info("limits: request body %g MiB, image %d pixels, /predict %g s", limits.max_request_mb,
                limits.max_image_pixels, limits.predict_timeout_s)
    logger.info("tsp-backend on http://%s:%d serving %s", host, port, model_dir)
    _gunicorn_application(app, {
        "bind": f"{host}:{port}",
        "workers": workers,
        "threads": threads,
        "worker_class": "gthread",
        "timeout": timeout,
        "loglevel": log_level.lower(),
        "accesslog": "-",
        "logger_class": _gunicorn_logger_class(),
        # gunicorn >= 25.1 opens one control socket per user ($HOME/.gunicorn/gunicorn.ctl): two
        # backends on one host (two projects, tests) would fight over it; we do not use it
        "control_socket_disable": True,
    }).run()


if __name__ == "__main__":  # pragma: no cover
    main()
