"""``tsp-backend``: the label-studio-ml Flask app served by gunicorn, started by one command.

    tsp-backend --port 9090 --model-dir models/

The app is label-studio-ml's (``init_app(model_class=TSPBackend)``: ``/health``, ``/metrics``,
``/versions``...). Three of its views are replaced because label-studio-ml 1.0.9 keeps one model
per process for all projects, reports the version "INITIAL" and starts a process per webhook:

- ``/setup`` and ``/predict`` build a :class:`TSPBackend` for the request's own label config, so
  one backend serves several projects, and answer a bad label config with a 400 naming the tag or
  labels; both report the checkpoint's ``model_version`` (Label Studio uses it to skip tasks that
  already hold this version's prediction).
- ``/webhook`` calls ``process_event`` -> ``fit`` in the request, which only records the event.

Basic auth (Label Studio's ML settings offer it): set ``BASIC_AUTH_USER`` and
``BASIC_AUTH_PASS`` in the backend's environment; every endpoint then needs them.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import logging
import os
import sys
from pathlib import Path
from typing import Any

import click

logger = logging.getLogger("tsp_backend")


def _basic_auth_guard(user: str, password: str):
    from flask import Response, request

    def guard() -> Response | None:
        header = request.headers.get("Authorization", "")
        if header.startswith("Basic "):
            try:
                got_user, _, got_pass = base64.b64decode(header[6:]).decode("utf-8").partition(":")
            except (binascii.Error, UnicodeDecodeError):
                got_user, got_pass = "", ""
            ok_user = hmac.compare_digest(got_user.encode(), user.encode())
            ok_pass = hmac.compare_digest(got_pass.encode(), password.encode())
            if ok_user and ok_pass:
                return None
        return Response(
            '{"detail": "basic auth required: set the ML backend\'s basic auth user and password in Label Studio"}',
            status=401,
            mimetype="application/json",
            headers={"WWW-Authenticate": 'Basic realm="tsp-backend"'},
        )

    return guard


def create_app(model_dir: str | Path, basic_auth: tuple[str, str] | None = None) -> Any:
    """The Flask app for ``model_dir``; ``basic_auth`` defaults to BASIC_AUTH_USER/BASIC_AUTH_PASS."""
    from flask import jsonify, request
    from label_studio_ml.api import init_app
    from label_studio_ml.exceptions import answer, exception_handler

    from tsp_backend.model import TSPBackend
    from tsp_backend.regions import LabelConfigError

    model_dir = Path(model_dir).expanduser().resolve()
    model_dir.mkdir(parents=True, exist_ok=True)
    os.environ["TSP_MODEL_DIR"] = str(model_dir)
    app = init_app(model_class=TSPBackend, model_dir=str(model_dir))

    def build(label_config: str | None, data: dict) -> TSPBackend:
        return TSPBackend(
            label_config=label_config,
            hostname=data.get("hostname", "") or "",
            access_token=data.get("access_token", "") or "",
            tsp_model_dir=str(model_dir),
        )

    @exception_handler
    def setup():
        data = request.get_json(force=True, silent=True) or {}
        try:
            model = build(data.get("schema"), data)
        except LabelConfigError as exc:
            logger.error("setup for project %s refused: %s", data.get("project"), exc)
            return answer(400, str(exc))
        return jsonify({"model_version": model.model_version})

    @exception_handler
    def predict():
        data = request.get_json(force=True, silent=True) or {}
        tasks = data.get("tasks")
        if not isinstance(tasks, list):
            return answer(400, "request has no 'tasks' list")
        try:
            model = build(data.get("label_config"), data)
        except LabelConfigError as exc:
            logger.error("predict for project %s refused: %s", data.get("project"), exc)
            return answer(400, str(exc))
        params = data.get("params") or {}
        results = model.predict(tasks, **params)
        return jsonify({"results": results, "model_version": model.model_version})

    @exception_handler
    def webhook():
        data = request.get_json(force=True, silent=True) or {}
        event = data.pop("action", None)
        if not event:
            return answer(400, "webhook payload has no 'action'")
        project = data.get("project") if isinstance(data.get("project"), dict) else {}
        if event not in TSPBackend.TRAIN_EVENTS:
            return jsonify({"ignored": event}), 200
        from tsp_backend.model import record_event

        result = record_event(model_dir, event, data)
        logger.debug("webhook %s for project %s recorded", event, project.get("id"))
        return jsonify(result), 201

    # label-studio-ml registers these endpoints; replace their views (Flask's public mapping).
    app.view_functions["_setup"] = setup
    app.view_functions["_predict"] = predict
    app.view_functions["webhook"] = webhook

    if basic_auth is None:
        user, password = os.environ.get("BASIC_AUTH_USER", ""), os.environ.get("BASIC_AUTH_PASS", "")
        basic_auth = (user, password) if user and password else None
    # init_app returns label-studio-ml's one module-level app: drop a guard from an earlier call
    funcs = app.before_request_funcs.setdefault(None, [])
    funcs[:] = [f for f in funcs if not getattr(f, "tsp_guard", False)]
    if basic_auth:
        guard = _basic_auth_guard(*basic_auth)
        guard.tsp_guard = True
        funcs.insert(0, guard)
    return app


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


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Interface to bind; 0.0.0.0 to accept connections from other machines (e.g. in Docker).")
@click.option("--port", default=9090, show_default=True, type=int)
@click.option("--model-dir", envvar="TSP_MODEL_DIR", required=True,
              type=click.Path(file_okay=False, path_type=Path),
              help="Directory of *.pt checkpoints; the newest is served and reloaded when it changes.")
@click.option("--workers", default=1, show_default=True, type=int, help="gunicorn worker processes (each holds a model).")
@click.option("--threads", default=4, show_default=True, type=int, help="Threads per worker (health checks stay answered during inference).")
@click.option("--timeout", default=300, show_default=True, type=int, help="Seconds a request may take (CPU inference of a batch).")
@click.option("--log-level", default=lambda: os.environ.get("LOG_LEVEL", "INFO"), show_default="INFO")
def main(host: str, port: int, model_dir: Path, workers: int, threads: int, timeout: int, log_level: str) -> None:
    """Serve TSP predictions to Label Studio (label-studio-ml backend under gunicorn)."""
    logging.basicConfig(level=log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s [%(process)d]: %(message)s")
    if workers < 1 or threads < 1:
        raise click.BadParameter("--workers and --threads must be >= 1")
    app = create_app(model_dir)
    if any(getattr(f, "tsp_guard", False) for f in app.before_request_funcs.get(None, [])):
        logger.info("basic auth enabled for user %s", os.environ["BASIC_AUTH_USER"])
    logger.info("tsp-backend on http://%s:%d serving %s", host, port, model_dir)
    _gunicorn_application(app, {
        "bind": f"{host}:{port}",
        "workers": workers,
        "threads": threads,
        "worker_class": "gthread",
        "timeout": timeout,
        "loglevel": log_level.lower(),
        "accesslog": "-",
        # gunicorn >= 25.1 opens one control socket per user ($HOME/.gunicorn/gunicorn.ctl): two
        # backends on one host (two projects, tests) would fight over it; we do not use it
        "control_socket_disable": True,
    }).run()


if __name__ == "__main__":  # pragma: no cover
    main()
