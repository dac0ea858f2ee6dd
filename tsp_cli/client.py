"""The Label Studio client (label-studio-sdk) and one-line errors for everything that can go wrong.

Every SDK call goes through :func:`call`, which turns transport and HTTP errors into
:class:`SyncError` with a message that names the problem and the fix. The token never appears in a
message: only the URL and Label Studio's ``detail`` text do.

Retries: the SDK's own retries are off (it would resend any request, an import of predictions
too, and duplicate them). :func:`call` retries with exponential backoff (:data:`RETRY_DELAYS`)
on transient errors (timeouts, refused or reset connections, HTTP 408, 429, 500, 502, 503, 504)
only for requests marked ``idempotent=True``: GETs (listing tasks, model versions, views,
projects), PATCHes that set the same values again (project settings, the view), DELETEs (a
retried delete of something already gone counts as done). Never retried: POSTs (importing
predictions, creating a view): a push that fails is resumed by running the command again,
which skips what landed (:mod:`tsp_cli.commands.score`).

Large projects: :func:`iter_tasks` pages through ``/api/tasks`` by task id (a cursor, so tasks
added or deleted meanwhile shift nothing), :data:`TASK_PAGE` tasks per request, so memory holds
one page.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from tsp_cli.settings import Secrets

__all__ = ["LSProject", "SyncError", "call", "connect", "get_json", "iter_tasks", "model_versions",
           "resolve_project"]

log = logging.getLogger(__name__)

T = TypeVar("T")

RETRY_DELAYS = (1.0, 2.0, 4.0, 8.0, 16.0)  # seconds before retry 1..5 (x 0.5-1.5 jitter): ~30 s in all
TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})
TASK_PAGE = 500  # tasks per /api/tasks request: a few MB of JSON with predictions or annotations


class SyncError(RuntimeError):
    """A sync step cannot go on; the message is one line naming the problem and the fix."""


def _detail(exc: Any) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        text = body.get("detail") or body.get("validation_errors") or body
    else:
        text = body or str(exc) or type(exc).__name__
    text = " ".join(str(text).split())
    return text if len(text) <= 200 else text[:197] + "..."


def _map_error(exc: Exception, url: str, what: str) -> SyncError | None:
    import httpx
    from label_studio_sdk.core.api_error import ApiError

    if isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout)):
        return SyncError(
            f"Label Studio at {url} is unreachable ({_detail(exc)}); start it or fix LABEL_STUDIO_URL"
        )
    if isinstance(exc, httpx.TimeoutException):
        return SyncError(f"Label Studio at {url} timed out while {what}; check the server's load and retry")
    if isinstance(exc, httpx.HTTPError):
        return SyncError(f"Label Studio at {url}: {type(exc).__name__} while {what} ({_detail(exc)}); retry")
    if isinstance(exc, ApiError):
        code = exc.status_code
        if code == 401:
            return SyncError(
                f"Label Studio at {url} rejected LABEL_STUDIO_API_KEY ({_detail(exc)}); export a valid "
                "Personal Access Token from Account & Settings"
            )
        if code == 403:
            return SyncError(
                f"Label Studio at {url} refused {what} (403: {_detail(exc)}); use a token of a user "
                "with access to this project"
            )
        return SyncError(f"Label Studio at {url} answered {code} while {what}: {_detail(exc)}")
    return None


def is_transient(exc: BaseException) -> bool:
    """A timeout, a refused or reset connection, or a 408/429/5xx answer: worth another try."""
    import httpx
    from label_studio_sdk.core.api_error import ApiError

    if isinstance(exc, (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)):
        return True
    return isinstance(exc, ApiError) and exc.status_code in TRANSIENT_STATUS


def _retrying(client: Any, what: str, fn: Callable[[], T]) -> T:
    """``fn()``, retried after transient errors with exponential backoff and jitter."""
    for attempt in range(len(RETRY_DELAYS) + 1):
        try:
            return fn()
        except Exception as exc:
            if attempt == len(RETRY_DELAYS) or not is_transient(exc):
                raise
            delay = RETRY_DELAYS[attempt] * random.uniform(0.5, 1.5)
            log.warning("Label Studio at %s: %s while %s; retry %d of %d in %.1f s", getattr(client, "tsp_url", "?"),
                        _detail(exc), what, attempt + 1, len(RETRY_DELAYS), delay)
            time.sleep(delay)
    raise AssertionError("unreachable")


def call(client: Any, what: str, fn: Callable[..., T], *args: Any, idempotent: bool = False, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)`` with SDK/HTTP errors turned into :class:`SyncError` naming ``what``;
    ``idempotent=True`` retries transient errors first (see the module docstring)."""
    try:
        if idempotent:
            return _retrying(client, what, lambda: fn(*args, **kwargs))
        return fn(*args, **kwargs)
    except SyncError:
        raise
    except Exception as exc:
        err = _map_error(exc, getattr(client, "tsp_url", "?"), what)
        if err is None:
            raise
        raise err from None


def connect(secrets: Secrets) -> Any:
    """A ``label_studio_sdk.LabelStudio`` client, checked with ``users.whoami()``."""
    from label_studio_sdk import LabelStudio

    try:
        # max_retries=0: the SDK would resend POSTs too; call() retries idempotent requests only
        client = LabelStudio(base_url=secrets.url, api_key=secrets.api_key, timeout=60, max_retries=0)
    except Exception as exc:  # the PAT is exchanged lazily, but be safe with older SDKs
        err = _map_error(exc, secrets.url, "connecting")
        if err is None:
            raise
        raise err from None
    client.tsp_url = secrets.url
    call(client, "checking the token", client.users.whoami)
    return client


def request_json(
    client: Any, method: str, path: str, what: str, *, params: dict[str, Any] | None = None,
    json_body: Any = None, none_on: tuple[int, ...] = (), idempotent: bool | None = None,
    timeout: float | None = None,
) -> Any:
    """An authenticated request to an API path the SDK has no method for; the decoded JSON
    answer. Statuses in ``none_on`` give None instead of an error. ``idempotent`` defaults to
    True for GET and DELETE; ``timeout`` (s) overrides the client's for slow server-side work."""
    from label_studio_sdk.core.api_error import ApiError

    options = {"timeout_in_seconds": timeout} if timeout is not None else None

    def _send() -> Any:
        resp = client._client_wrapper.httpx_client.request(
            path.lstrip("/"), method=method, params=params, json=json_body, request_options=options
        )
        if resp.status_code in none_on:
            return None
        if resp.status_code >= 400:
            try:
                body = resp.json()
            except ValueError:
                body = resp.text
            raise ApiError(status_code=resp.status_code, body=body)
        return resp.json() if resp.content else None

    if idempotent is None:
        idempotent = method.upper() in ("GET", "DELETE")
    return call(client, what, _send, idempotent=idempotent)


def get_json(
    client: Any, path: str, what: str, params: dict[str, Any] | None = None, none_on: tuple[int, ...] = ()
) -> Any:
    """GET an API path the SDK has no method for (e.g. ``api/projects/1/next``), authenticated,
    retried on transient errors. Statuses in ``none_on`` give None instead of an error."""
    return request_json(client, "GET", path, what, params=params, none_on=none_on)


def iter_tasks(
    client: Any, project_id: int, *, include: str | None = None, omit: str | None = None, page_size: int = TASK_PAGE
) -> Iterator[dict[str, Any]]:
    """Every task of the project (``fields=all``) as a dict, in id order, one page of
    ``page_size`` tasks in memory at a time. ``include`` keeps only the named top-level fields
    (``"id,predictions"``; it also cuts nested ones: ``annotations`` would keep only their ids),
    ``omit`` drops the named ones (``"predictions"``).

    Pages are chosen by id (``id > last id seen``) rather than by number, so tasks created or
    deleted during the listing do not shift the rest."""
    last = 0
    while True:
        query = {"filters": {"conjunction": "and", "items": [
            {"filter": "filter:tasks:id", "operator": "greater", "type": "Number", "value": last}]},
            "ordering": ["tasks:id"]}
        params = {"project": project_id, "page": 1, "page_size": page_size, "fields": "all", "query": json.dumps(query)}
        params.update({k: v for k, v in (("include", include), ("omit", omit)) if v})
        page = get_json(client, "api/tasks/", f"listing the tasks of project {project_id}", params=params,
                        none_on=(404,))
        tasks = (page or {}).get("tasks") or []
        if not tasks:
            return
        for task in tasks:
            yield task
        if len(tasks) < page_size:
            return
        last = max(int(t["id"]) for t in tasks)


def model_versions(client: Any, project_id: int) -> dict[str, int]:
    """``{model_version: number of predictions}`` of the project (one cheap request)."""
    data = get_json(client, f"api/projects/{project_id}/model-versions/",
                    f"reading the model versions of project {project_id}")
    return {str(k): int(v) for k, v in (data or {}).items()} if isinstance(data, dict) else {}


@dataclass
class LSProject:
    id: int
    title: str
    label_config: str
    model_version: str
    sampling: str


def resolve_project(client: Any, ref: int | str) -> LSProject:
    """The Label Studio project with this id or exact title; SyncError if none or ambiguous."""
    from label_studio_sdk.core.api_error import ApiError

    url = getattr(client, "tsp_url", "?")
    if isinstance(ref, int):
        try:
            p = _retrying(client, f"reading project {ref}", lambda: client.projects.get(id=ref))
        except ApiError as exc:
            if exc.status_code == 404:
                raise SyncError(
                    f"Label Studio at {url} has no project with id {ref}; check --project or "
                    "label_studio_project in tsp.toml"
                ) from None
            raise _map_error(exc, url, f"reading project {ref}") from None
        except Exception as exc:
            err = _map_error(exc, url, f"reading project {ref}")
            if err is None:
                raise
            raise err from None
    else:
        found = [p for p in call(client, "listing projects", lambda: list(client.projects.list(title=ref)),
                                 idempotent=True) if p.title == ref]
        if not found:
            raise SyncError(
                f"Label Studio at {url} has no project titled {ref!r}; check label_studio_project in "
                "tsp.toml (titles are exact; an id works too)"
            )
        if len(found) > 1:
            ids = ", ".join(str(p.id) for p in found)
            raise SyncError(f"several projects are titled {ref!r} (ids {ids}); set label_studio_project to the id")
        p = call(client, f"reading project {found[0].id}", client.projects.get, id=found[0].id, idempotent=True)
    return LSProject(
        id=int(p.id),
        title=str(p.title or ""),
        label_config=str(p.label_config or ""),
        model_version=str(getattr(p, "model_version", "") or ""),
        sampling=str(getattr(p, "sampling", "") or ""),
    )
