"""Fetch a task's image the way the Label Studio ecosystem does, then decode it with read_image.

Sources, by the shape of the task's image URL:

- ``/data/upload/...`` and ``/data/local-files/?d=...`` (and absolute URLs on the Label Studio
  host): fetched through the server at ``LABEL_STUDIO_URL`` with ``LABEL_STUDIO_API_KEY``. A
  Personal Access Token (a JWT refresh token) is exchanged for short-lived access tokens by
  label-studio-sdk's client (``Authorization: Bearer ...``); a legacy token is sent as
  ``Authorization: Token ...``. Without ``LABEL_STUDIO_URL``, the ``hostname`` and legacy
  ``access_token`` that Label Studio sends to ``/setup`` are used.
- other ``http(s)://`` URLs: a plain GET, never with the Label Studio token.
- ``file://`` URLs and local paths.

Every failure raises :class:`ImageFetchError` (a ``ValueError``) whose message names the URL and
the reason; tokens never appear in messages or logs.
"""

from __future__ import annotations

import os
import threading
import urllib.parse
from pathlib import Path
from typing import Any

import numpy as np

from tsp_model.data.image_io import ImageError, read_image

__all__ = ["ImageFetchError", "ImageFetcher"]

DEFAULT_TIMEOUT_S = float(os.environ.get("TSP_IMAGE_TIMEOUT", "30"))
MAX_IMAGE_BYTES = 512 * 1024 * 1024


class ImageFetchError(ValueError):
    """A task's image cannot be fetched or decoded; the message names the URL and why."""


def _is_ls_relative(url: str) -> bool:
    return url.startswith("/data/") or url.startswith("data/")


class ImageFetcher:
    """Turns a task's image URL into ``float32 [H, W, 3]`` in ``[0, 1]`` (see read_image).

    Args:
        ls_url: Label Studio's base URL (default: env ``LABEL_STUDIO_URL``, else ``hostname``).
        api_key: PAT or legacy token (default: env ``LABEL_STUDIO_API_KEY``, else
            ``access_token``, which Label Studio sends as a legacy token).
        hostname, access_token: what Label Studio sent to ``/setup``.
    """

    def __init__(
        self,
        ls_url: str | None = None,
        api_key: str | None = None,
        *,
        hostname: str = "",
        access_token: str = "",
        timeout: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        env_url = os.environ.get("LABEL_STUDIO_URL", "")
        env_key = os.environ.get("LABEL_STUDIO_API_KEY", "")
        self.ls_url = (ls_url or env_url or hostname or "").rstrip("/")
        self._api_key = api_key or env_key or access_token or ""
        self.timeout = timeout
        self._client: Any = None
        self._lock = threading.Lock()

    _shared: dict[tuple[str, str, float], "ImageFetcher"] = {}
    _shared_lock = threading.Lock()

    @classmethod
    def shared(cls, *, hostname: str = "", access_token: str = "", timeout: float = DEFAULT_TIMEOUT_S) -> "ImageFetcher":
        """A process-wide fetcher per (server, token): the PAT's access token is reused until it expires."""
        probe = cls(hostname=hostname, access_token=access_token, timeout=timeout)
        key = (probe.ls_url, probe._api_key, timeout)
        with cls._shared_lock:
            return cls._shared.setdefault(key, probe)

    # -- auth -------------------------------------------------------------------------------
    def _auth_header(self) -> dict[str, str]:
        """``Authorization`` for Label Studio; the SDK client refreshes PAT access tokens."""
        if not self._api_key:
            return {}
        with self._lock:
            try:
                if self._client is None:
                    from label_studio_sdk import LabelStudio

                    self._client = LabelStudio(base_url=self.ls_url, api_key=self._api_key)
                # The SDK exposes its auth only through the client wrapper's headers; that is
                # where the PAT -> access token exchange (and its caching) happens.
                headers = self._client._client_wrapper.get_headers()
            except Exception as exc:
                reason = getattr(exc, "body", None) or str(exc) or type(exc).__name__
                raise ImageFetchError(
                    f"Label Studio at {self.ls_url} rejected LABEL_STUDIO_API_KEY ({_short(reason)}); "
                    "set a valid Personal Access Token (Account & Settings) or legacy token"
                ) from None
        return {"Authorization": headers["Authorization"]}

    # -- fetching ---------------------------------------------------------------------------
    def resolve(self, url: str) -> tuple[str, str]:
        """``("ls" | "http" | "file", absolute URL or path)`` for a task's image URL."""
        if not isinstance(url, str) or not url.strip():
            raise ImageFetchError(f"image URL {url!r} is empty or not a string")
        url = url.strip()
        if _is_ls_relative(url):
            if not self.ls_url:
                raise ImageFetchError(
                    f"{url}: a Label Studio file, but LABEL_STUDIO_URL is not set; "
                    "set LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY for the backend"
                )
            return "ls", self.ls_url + "/" + url.lstrip("/")
        parsed = urllib.parse.urlparse(url)
        if parsed.scheme in ("http", "https"):
            if self.ls_url and url.startswith(self.ls_url + "/"):
                return "ls", url
            return "http", url
        if parsed.scheme == "file":
            return "file", urllib.parse.unquote(parsed.path)
        if parsed.scheme and len(parsed.scheme) > 1:  # "C:" style drive letters are paths
            raise ImageFetchError(
                f"{url}: unsupported URL scheme {parsed.scheme!r}; use Label Studio uploads, "
                "local files, http(s) URLs or local paths"
            )
        return "file", url

    def fetch_bytes(self, url: str) -> bytes:
        """The image file's bytes; raises :class:`ImageFetchError`."""
        kind, where = self.resolve(url)
        if kind == "file":
            path = Path(where).expanduser()
            if not path.is_file():
                raise ImageFetchError(f"{url}: local file not found")
            try:
                return path.read_bytes()
            except OSError as exc:
                raise ImageFetchError(f"{url}: cannot read local file ({exc.strerror})") from None
        import requests

        headers = self._auth_header() if kind == "ls" else {}
        try:
            resp = requests.get(where, headers=headers, timeout=self.timeout, stream=True)
        except requests.RequestException as exc:
            raise ImageFetchError(f"{url}: unreachable ({type(exc).__name__}: {_short(str(exc))})") from None
        with resp:
            if resp.status_code in (401, 403) and kind == "ls":
                raise ImageFetchError(
                    f"{url}: Label Studio answered {resp.status_code}; check LABEL_STUDIO_API_KEY "
                    "(a Personal Access Token or legacy token of a user in this project's organization)"
                )
            if resp.status_code != 200:
                raise ImageFetchError(f"{url}: HTTP {resp.status_code} {resp.reason}")
            data = resp.raw.read(MAX_IMAGE_BYTES + 1, decode_content=True)
        if len(data) > MAX_IMAGE_BYTES:
            raise ImageFetchError(f"{url}: larger than {MAX_IMAGE_BYTES >> 20} MiB")
        return data

    def read(self, url: str) -> np.ndarray:
        """Fetch and decode: ``float32 [H, W, 3]`` in ``[0, 1]``; raises :class:`ImageFetchError`."""
        data = self.fetch_bytes(url)
        try:
            return read_image(data, name=url)
        except ImageError as exc:
            raise ImageFetchError(str(exc)) from None


def _short(text: Any, limit: int = 200) -> str:
    text = str(text).strip().splitlines()[0] if str(text).strip() else ""
    return text if len(text) <= limit else text[: limit - 3] + "..."
