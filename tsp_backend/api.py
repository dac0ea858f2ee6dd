"""The ML backend protocol as Label Studio 1.23 calls it, on Flask 3 (served by gunicorn).

Routes (every other path answers 404; with basic auth on, every path first needs it):

========== ====== ==================================================================
``/health`` GET   ``{"status": "UP", "model_class": "TSPBackend"}`` (also ``/``)
``/setup``  POST  ``{"project", "schema", ...}`` -> ``{"model_version"}``; 400 on a bad config
``/predict`` POST ``{"tasks", "label_config", "project", "params"}`` ->
                  ``{"results": [one per task], "model_version"}``
``/webhook`` POST Label Studio's webhook payload; annotation events are recorded (201)
``/metrics`` GET  ``{}``
========== ====== ==================================================================

Why not label-studio-ml: its newest release on PyPI (1.0.9, January 2023) pins Flask 1.1.2 and
Werkzeug 2.0.2, both with published advisories, adds a ``/train`` route that writes files under
a path taken from the request, logs request headers and bodies at DEBUG, and needs redis and rq;
the maintained 2.x line is not published. The protocol is five small JSON routes, so we speak it
here, with the same class shape (``predict(tasks, context=None, **kwargs)``, ``fit(event,
data)``) and the same answers (``{"status", "detail"}`` on errors).

Nothing here logs request headers or bodies, and ``/health`` names no path.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import logging
import os
from pathlib import Path
from typing import Any

from tsp_labelstudio.images import ImageFetcher, ImageSources
from tsp_backend.limits import ENV_MAX_REQUEST_MB, Limits

logger = logging.getLogger("tsp_backend")

__all__ = ["ROUTES", "create_app"]

ROUTES = ("/health", "/setup", "/predict", "/webhook", "/metrics")


class _BadRequest(Exception):
    """A request the backend cannot use; answered as 400 with the message."""


def _answer(status: int, detail: str) -> Any:
    from flask import jsonify

    response = jsonify({"status": status, "detail": detail})
    response.status_code = status
    return response


def _json_object() -> dict[str, Any]:
    """The request body as a JSON object; raises :class:`_BadRequest` (or 413 from Werkzeug)."""
    from flask import current_app, request
    from werkzeug.exceptions import RequestEntityTooLarge

    body = request.get_data(cache=False)  # Content-Length over MAX_CONTENT_LENGTH: 413
    limit = current_app.config["MAX_CONTENT_LENGTH"]
    if request.content_length is None and limit is not None and len(body) >= limit:
        # a chunked body is cut at the limit by Werkzeug, not refused: refuse it here
        raise RequestEntityTooLarge()
    try:
        data = json.loads(body)
    except (ValueError, RecursionError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise _BadRequest(
            f"request body is not JSON ({reason}); send a JSON object with Content-Type: application/json"
        ) from None
    if not isinstance(data, dict):
        raise _BadRequest(f"request body is JSON but not an object (got {type(data).__name__}); send a JSON object")
    return data


def _basic_auth_ok(header: str, user: str, password: str) -> bool:
    if not header.startswith("Basic "):
        return False
    try:
        got_user, _, got_pass = base64.b64decode(header[6:], validate=True).decode("utf-8").partition(":")
    except (binascii.Error, UnicodeDecodeError):
        got_user, got_pass = "", ""
    ok_user = hmac.compare_digest(got_user.encode(), user.encode())
    ok_pass = hmac.compare_digest(got_pass.encode(), password.encode())
    return ok_user and ok_pass


def create_app(
    model_dir: str | Path,
    basic_auth: tuple[str, str] | None = None,
    *,
    sources: ImageSources | None = None,
    limits: Limits | None = None,
    api_key: str | None = None,
) -> Any:
    """The Flask app serving ``model_dir``.

    Args:
        model_dir: checkpoints folder (created if missing).
        basic_auth: ``(user, password)``; default ``BASIC_AUTH_USER``/``BASIC_AUTH_PASS`` when both set.
        sources: where images may come from (default :meth:`ImageSources.from_env`).
        limits: request limits (default :meth:`Limits.from_env`).
        api_key: Label Studio token (default ``LABEL_STUDIO_API_KEY``).
    """
    from flask import Flask, jsonify, request
    from werkzeug.exceptions import HTTPException, NotFound, RequestEntityTooLarge

    from tsp_backend.model import TSPBackend, record_event
    from tsp_labelstudio.regions import LabelConfigError

    model_dir = Path(model_dir).expanduser().resolve()
    model_dir.mkdir(parents=True, exist_ok=True)
    limits = limits or Limits.from_env()
    sources = sources or ImageSources.from_env()
    fetcher = ImageFetcher(sources=sources, api_key=api_key, max_pixels=limits.max_image_pixels)
    if basic_auth is None:
        user, password = os.environ.get("BASIC_AUTH_USER", ""), os.environ.get("BASIC_AUTH_PASS", "")
        basic_auth = (user, password) if user and password else None

    app = Flask("tsp_backend")
    app.config["MAX_CONTENT_LENGTH"] = limits.max_request_bytes
    app.extensions["tsp"] = {"model_dir": model_dir, "sources": sources, "limits": limits,
                             "basic_auth": basic_auth is not None}

    def build(data: dict[str, Any], config_key: str) -> TSPBackend:
        project = str(data.get("project") or "")
        config = data.get(config_key)
        return TSPBackend(project.split(".", 1)[0] or None, config if isinstance(config, str) else None,
                          model_dir=model_dir, fetcher=fetcher, limits=limits)

    if basic_auth is not None:
        @app.before_request
        def require_basic_auth() -> Any:
            if _basic_auth_ok(request.headers.get("Authorization", ""), *basic_auth):
                return None
            response = _answer(401, "basic auth required: set the ML backend's basic auth user and password "
                                    "in Label Studio")
            response.headers["WWW-Authenticate"] = 'Basic realm="tsp-backend"'
            return response

    @app.get("/")
    @app.get("/health")
    def health() -> Any:
        return jsonify({"status": "UP", "model_class": TSPBackend.__name__})

    @app.get("/metrics")
    def metrics() -> Any:
        return jsonify({})

    @app.post("/setup")
    def setup() -> Any:
        data = _json_object()
        try:
            model = build(data, "schema")
        except LabelConfigError as exc:
            logger.error("setup for project %s refused: %s", data.get("project"), exc)
            return _answer(400, str(exc))
        return jsonify({"model_version": model.model_version})

    @app.post("/predict")
    def predict() -> Any:
        data = _json_object()
        tasks = data.get("tasks")
        if not isinstance(tasks, list):
            return _answer(400, "request has no 'tasks' list")
        try:
            model = build(data, "label_config")
        except LabelConfigError as exc:
            logger.error("predict for project %s refused: %s", data.get("project"), exc)
            return _answer(400, str(exc))
        params = data.get("params") if isinstance(data.get("params"), dict) else {}
        # params also hold the project's task-data login and password: never passed on or logged
        results = model.predict(tasks, context=params.get("context"))
        return jsonify({"results": results, "model_version": model.model_version})

    @app.post("/webhook")
    def webhook() -> Any:
        data = _json_object()
        event = data.pop("action", None)
        if not event:
            return _answer(400, "webhook payload has no 'action'")
        if event not in TSPBackend.TRAIN_EVENTS:
            return jsonify({"ignored": str(event)}), 200
        result = record_event(model_dir, str(event), data)
        return jsonify(result), 201

    @app.errorhandler(_BadRequest)
    def bad_request(exc: _BadRequest) -> Any:
        return _answer(400, str(exc))

    @app.errorhandler(RequestEntityTooLarge)
    def too_large(exc: RequestEntityTooLarge) -> Any:
        return _answer(413, f"request body is larger than {limits.max_request_mb:g} MiB ({ENV_MAX_REQUEST_MB}); "
                            "send fewer tasks per request or raise the limit")

    @app.errorhandler(NotFound)
    def not_found(exc: NotFound) -> Any:
        return _answer(404, f"no such endpoint; this backend serves {', '.join(ROUTES)}")

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Any:
        return _answer(exc.code or 500, exc.description or exc.name)

    @app.errorhandler(Exception)
    def internal_error(exc: Exception) -> Any:
        logger.exception("%s %s failed", request.method, request.path)
        return _answer(500, f"internal error ({type(exc).__name__}); see the backend log")

    return app
