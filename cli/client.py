"""The Label Studio client (label-studio-sdk) and one-line errors for everything that can go wrong.

Every SDK call goes through :func:`call`, which turns transport and HTTP errors into
:class:`SyncError` with a message that names the problem and the fix. The token never appears in a
message: only the URL and Label Studio's ``detail`` text do.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from tsp_cli.settings import Secrets

__all__ = ["LSProject", "SyncError", "call", "connect", "get_json", "resolve_project"]

T = TypeVar("T")


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


def call(client: Any, what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)`` with SDK/HTTP errors turned into :class:`SyncError` naming ``what``."""
    try:
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
        client = LabelStudio(base_url=secrets.url, api_key=secrets.api_key, timeout=60)
    except Exception as exc:  # the PAT is exchanged lazily, but be safe with older SDKs
        err = _map_error(exc, secrets.url, "connecting")
        if err is None:
            raise
        raise err from None
    client.tsp_url = secrets.url
    call(client, "checking the token", client.users.whoami)
    return client


def get_json(
    client: Any, path: str, what: str, params: dict[str, Any] | None = None, none_on: tuple[int, ...] = ()
) -> Any:
    """GET an API path the SDK has no method for (e.g. ``api/projects/1/next``), authenticated.
    Statuses in ``none_on`` give None instead of an error."""
    from label_studio_sdk.core.api_error import ApiError

    def _get() -> Any:
        resp = client._client_wrapper.httpx_client.request(path.lstrip("/"), method="GET", params=params)
        if resp.status_code in none_on:
            return None
        if resp.status_code >= 400:
            try:
                body = resp.json()
            except ValueError:
                body = resp.text
            raise ApiError(status_code=resp.status_code, body=body)
        return resp.json() if resp.content else None

    return call(client, what, _get)


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
            p = client.projects.get(id=ref)
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
        found = [p for p in call(client, "listing projects", lambda: list(client.projects.list(title=ref)))
                 if p.title == ref]
        if not found:
            raise SyncError(
                f"Label Studio at {url} has no project titled {ref!r}; check label_studio_project in "
                "tsp.toml (titles are exact; an id works too)"
            )
        if len(found) > 1:
            ids = ", ".join(str(p.id) for p in found)
            raise SyncError(f"several projects are titled {ref!r} (ids {ids}); set label_studio_project to the id")
        p = call(client, f"reading project {found[0].id}", client.projects.get, id=found[0].id)
    return LSProject(
        id=int(p.id),
        title=str(p.title or ""),
        label_config=str(p.label_config or ""),
        model_version=str(getattr(p, "model_version", "") or ""),
        sampling=str(getattr(p, "sampling", "") or ""),
    )
