"""Fetch a task's image from an allowed source, then decode it with read_image.

A task's image URL comes from whoever can create tasks (or call the backend): it is untrusted.
The backend reads only what an operator allowed (:class:`ImageSources`):

- Label Studio's own files, ``/data/upload/...`` and ``/data/local-files/?d=...`` (relative, or
  absolute on the ``LABEL_STUDIO_URL`` origin): fetched with ``LABEL_STUDIO_API_KEY``. These two
  paths are the only requests that carry the token; ``/api/...`` and every other path of the
  Label Studio host are refused. A Personal Access Token (a JWT refresh token) is exchanged for
  short-lived access tokens by label-studio-sdk's client (``Authorization: Bearer ...``); a legacy
  token is sent as ``Authorization: Token ...``.
- URLs under a prefix listed in ``TSP_ALLOWED_URL_PREFIXES`` (space-separated, e.g.
  ``https://pacs-export.example/slices/``): a plain GET, never with the token.
- Files below a folder listed in ``TSP_ALLOWED_DIRS`` (``os.pathsep``-separated, like ``PATH``),
  as ``file://`` URLs or paths. Paths are resolved (symlinks, ``..``) before the check.

Everything else is refused with one line naming the setting to change, and the answer for a
refused path is the same whether the file exists or not. Redirects are not followed blindly: each
hop is checked again, and the token goes only to a hop that is itself a Label Studio file URL.

Every failure raises :class:`ImageFetchError` (a ``ValueError``) whose message names the URL and
the reason; tokens never appear in messages.
"""

from __future__ import annotations

import os
import stat
import threading
import time
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tsp_model.data.image_io import ImageError, ImageTooLargeError, read_image

__all__ = [
    "ENV_ALLOWED_DIRS",
    "ENV_ALLOWED_URL_PREFIXES",
    "ImageFetchError",
    "ImageFetcher",
    "ImageSources",
    "SourceRefusedError",
]

ENV_ALLOWED_URL_PREFIXES = "TSP_ALLOWED_URL_PREFIXES"
ENV_ALLOWED_DIRS = "TSP_ALLOWED_DIRS"
ENV_IMAGE_TIMEOUT = "TSP_IMAGE_TIMEOUT"
DEFAULT_TIMEOUT_S = 30.0
MAX_IMAGE_BYTES = 512 * 1024 * 1024
MAX_REDIRECTS = 5
LS_FILE_PATHS = ("/data/upload/", "/data/local-files/")
_DEFAULT_PORTS = {"http": 80, "https": 443}
_CHUNK = 1 << 20


class ImageFetchError(ValueError):
    """A task's image cannot be fetched or decoded; the message names the URL and why."""


class SourceRefusedError(ImageFetchError):
    """The image URL is not an allowed source; the message names the setting that allows it."""


def _env_default_timeout() -> float:
    return float(os.environ.get(ENV_IMAGE_TIMEOUT, "") or DEFAULT_TIMEOUT_S)


@dataclass(frozen=True)
class _Origin:
    scheme: str
    host: str
    port: int
    path: str  # percent-encoded path, always ending in "/"

    @classmethod
    def parse(cls, url: str, what: str) -> "_Origin":
        p = urllib.parse.urlsplit(url.strip())
        if p.scheme not in _DEFAULT_PORTS or not p.hostname:
            raise ValueError(f"{what}: {url!r} is not an http(s) URL with a host")
        if p.username is not None or p.password is not None or p.query or p.fragment:
            raise ValueError(f"{what}: {url!r} must not hold a user, password, query or fragment")
        path = p.path if p.path.endswith("/") else p.path + "/"
        return cls(p.scheme, p.hostname.lower(), p.port or _DEFAULT_PORTS[p.scheme], path)

    def holds(self, url: "_Origin") -> bool:
        return (self.scheme, self.host, self.port) == (url.scheme, url.host, url.port) and url.path.startswith(self.path)


def _split_url(url: str) -> _Origin | None:
    """The URL's origin and path, or None when it is not a plain http(s) URL we could fetch.

    Refused shapes: a user or password in the URL, and any ``.``/``..`` path segment (also
    percent-encoded or with backslashes), which could climb out of an allowed prefix.
    """
    p = urllib.parse.urlsplit(url)
    if p.scheme not in _DEFAULT_PORTS or not p.hostname or p.username is not None or p.password is not None:
        return None
    try:
        port = p.port or _DEFAULT_PORTS[p.scheme]
    except ValueError:  # a port that is not a number
        return None
    decoded = urllib.parse.unquote(p.path).replace("\\", "/")
    if any(seg in (".", "..") for seg in decoded.split("/")):
        return None
    return _Origin(p.scheme, p.hostname.lower(), port, p.path or "/")


class ImageSources:
    """The allow-list: Label Studio's file URLs, operator URL prefixes, operator folders.

    Args:
        ls_url: Label Studio's base URL (``LABEL_STUDIO_URL``); empty: no Label Studio files.
        url_prefixes: http(s) prefixes whose URLs may be fetched (without the token); a prefix's
            path is taken as a folder (``.../slices`` allows ``.../slices/a.png``, not
            ``.../slices-old/a.png``).
        dirs: folders whose files may be read (resolved here, symlinks included).

    Raises:
        ValueError: a prefix or ``ls_url`` is not an http(s) URL with a host.
    """

    def __init__(self, ls_url: str = "", url_prefixes: Iterable[str] = (), dirs: Iterable[str | Path] = ()) -> None:
        self.ls_url = (ls_url or "").strip().rstrip("/")
        self.url_prefixes = tuple(u.strip() for u in url_prefixes if u.strip())
        self.dirs = tuple(Path(os.path.realpath(os.path.expanduser(str(d)))) for d in dirs if str(d).strip())
        self._prefixes = tuple(_Origin.parse(u, ENV_ALLOWED_URL_PREFIXES) for u in self.url_prefixes)
        self._ls = _Origin.parse(self.ls_url, "LABEL_STUDIO_URL") if self.ls_url else None

    def __repr__(self) -> str:
        return f"ImageSources(ls_url={self.ls_url!r}, url_prefixes={self.url_prefixes!r}, dirs={self.dirs!r})"

    @classmethod
    def from_env(
        cls,
        ls_url: str | None = None,
        url_prefixes: Iterable[str] | None = None,
        dirs: Iterable[str | Path] | None = None,
    ) -> "ImageSources":
        """Arguments given win; the rest from ``LABEL_STUDIO_URL``, ``TSP_ALLOWED_URL_PREFIXES``
        (whitespace-separated) and ``TSP_ALLOWED_DIRS`` (``os.pathsep``-separated)."""
        if ls_url is None:
            ls_url = os.environ.get("LABEL_STUDIO_URL", "")
        if url_prefixes is None:
            url_prefixes = os.environ.get(ENV_ALLOWED_URL_PREFIXES, "").split()
        if dirs is None:
            dirs = [d for d in os.environ.get(ENV_ALLOWED_DIRS, "").split(os.pathsep) if d.strip()]
        return cls(ls_url, url_prefixes, dirs)

    # -- classification ---------------------------------------------------------------------
    def _ls_file_url(self, parts: _Origin) -> bool:
        ls = self._ls
        if ls is None or (ls.scheme, ls.host, ls.port) != (parts.scheme, parts.host, parts.port):
            return False
        return any(parts.path.startswith(ls.path.rstrip("/") + p) for p in LS_FILE_PATHS)

    def classify_url(self, url: str, shown: str | None = None) -> tuple[str, str]:
        """``("ls" | "http", url)`` for an absolute http(s) URL; raises :class:`SourceRefusedError`."""
        shown = shown or url
        parts = _split_url(url)
        if parts is not None and self._ls_file_url(parts):
            return "ls", url
        if parts is not None and any(p.holds(parts) for p in self._prefixes):
            return "http", url
        raise SourceRefusedError(
            f"{shown}: not an allowed image source; the backend fetches Label Studio's /data/upload/ and "
            f"/data/local-files/ through LABEL_STUDIO_URL and URLs under {ENV_ALLOWED_URL_PREFIXES} "
            "(add the URL's prefix there to allow it)"
        )

    def classify_path(self, path: str, shown: str) -> Path:
        """The resolved path of an allowed local file; raises :class:`SourceRefusedError`.

        The answer does not depend on whether the file exists (no existence oracle).
        """
        real = Path(os.path.realpath(os.path.expanduser(path)))
        if any(real == d or d in real.parents for d in self.dirs):
            return real
        raise SourceRefusedError(
            f"{shown}: not an allowed image source; local files are read only below the folders in "
            f"{ENV_ALLOWED_DIRS} (add the file's folder there to allow it)"
        )

    def resolve(self, url: str) -> tuple[str, str]:
        """``("ls" | "http" | "file", absolute URL or resolved path)``; refuses what is not allowed."""
        if not isinstance(url, str) or not url.strip():
            raise ImageFetchError(f"image URL {url!r} is empty or not a string")
        url = url.strip()
        if url.startswith("/data/") or url.startswith("data/"):
            if not self.ls_url:
                raise ImageFetchError(
                    f"{url}: a Label Studio file, but LABEL_STUDIO_URL is not set; "
                    "set LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY for the backend"
                )
            return self.classify_url(self.ls_url + "/" + url.lstrip("/"), shown=url)
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme in _DEFAULT_PORTS:
            return self.classify_url(url)
        if parsed.scheme == "file":
            if parsed.netloc not in ("", "localhost"):
                raise SourceRefusedError(f"{url}: file URLs on other hosts are not read")
            return "file", str(self.classify_path(urllib.parse.unquote(parsed.path), url))
        if parsed.scheme and len(parsed.scheme) > 1:  # "C:" style drive letters are paths
            raise SourceRefusedError(
                f"{url}: unsupported URL scheme {parsed.scheme!r}; use Label Studio uploads or local files "
                f"(LABEL_STUDIO_URL), http(s) URLs under {ENV_ALLOWED_URL_PREFIXES}, or files below {ENV_ALLOWED_DIRS}"
            )
        return "file", str(self.classify_path(url, url))


class ImageFetcher:
    """Turns a task's image URL into ``float32 [H, W, 3]`` in ``[0, 1]`` (see read_image).

    Args:
        ls_url: Label Studio's base URL (default: env ``LABEL_STUDIO_URL``).
        api_key: PAT or legacy token (default: env ``LABEL_STUDIO_API_KEY``).
        sources: the allow-list (default: :meth:`ImageSources.from_env` with ``ls_url``).
        timeout: seconds per connect/read of one request (default ``TSP_IMAGE_TIMEOUT`` or 30).
        max_pixels: images with more pixels are refused before decoding (None: no limit).
        max_bytes: image files larger than this are refused.
    """

    def __init__(
        self,
        ls_url: str | None = None,
        api_key: str | None = None,
        *,
        sources: ImageSources | None = None,
        timeout: float | None = None,
        max_pixels: int | None = None,
        max_bytes: int = MAX_IMAGE_BYTES,
    ) -> None:
        if sources is None:
            sources = ImageSources.from_env(ls_url=ls_url)
        elif ls_url is not None and ls_url.rstrip("/") != sources.ls_url:
            raise ValueError("ls_url and sources.ls_url differ")
        self.sources = sources
        self.ls_url = sources.ls_url
        self._api_key = api_key if api_key is not None else os.environ.get("LABEL_STUDIO_API_KEY", "")
        self.timeout = _env_default_timeout() if timeout is None else timeout
        self.max_pixels = max_pixels
        self.max_bytes = max_bytes
        self._client: Any = None
        self._lock = threading.Lock()

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
        """``("ls" | "http" | "file", absolute URL or path)``; raises :class:`ImageFetchError`."""
        return self.sources.resolve(url)

    def fetch_bytes(self, url: str, deadline: float | None = None) -> bytes:
        """The image file's bytes; raises :class:`ImageFetchError`.

        Args:
            deadline: ``time.monotonic()`` value after which the fetch gives up.
        """
        kind, where = self.resolve(url)
        if kind == "file":
            return self._read_file(url, where)
        import requests

        for _hop in range(MAX_REDIRECTS + 1):
            headers = self._auth_header() if kind == "ls" else {}
            try:
                resp = requests.get(where, headers=headers, timeout=self._timeout(url, deadline), stream=True,
                                    allow_redirects=False)
            except requests.RequestException as exc:
                raise ImageFetchError(f"{url}: unreachable ({type(exc).__name__}: {_short(str(exc))})") from None
            with resp:
                if resp.is_redirect:
                    target = urllib.parse.urljoin(where, resp.headers.get("Location", ""))
                    try:
                        kind, where = self.sources.classify_url(target)
                    except SourceRefusedError as exc:
                        raise SourceRefusedError(f"{url}: redirected to {exc}") from None
                    continue
                if resp.status_code in (401, 403) and kind == "ls":
                    raise ImageFetchError(
                        f"{url}: Label Studio answered {resp.status_code}; check LABEL_STUDIO_API_KEY "
                        "(a Personal Access Token or legacy token of a user in this project's organization)"
                    )
                if resp.status_code != 200:
                    raise ImageFetchError(f"{url}: HTTP {resp.status_code} {resp.reason}")
                return self._read_body(url, resp, deadline)
        raise ImageFetchError(f"{url}: more than {MAX_REDIRECTS} redirects")

    def _timeout(self, url: str, deadline: float | None) -> float:
        if deadline is None:
            return self.timeout
        left = deadline - time.monotonic()
        if left <= 0:
            raise ImageFetchError(f"{url}: the request's time limit (TSP_PREDICT_TIMEOUT) ran out before the image was fetched")
        return min(self.timeout, left)

    def _read_body(self, url: str, resp: Any, deadline: float | None) -> bytes:
        chunks, size = [], 0
        while True:
            chunk = resp.raw.read(_CHUNK, decode_content=True)
            if not chunk:
                return b"".join(chunks)
            size += len(chunk)
            if size > self.max_bytes:
                raise ImageFetchError(f"{url}: larger than {self.max_bytes >> 20} MiB")
            if deadline is not None and time.monotonic() > deadline:
                raise ImageFetchError(f"{url}: the request's time limit (TSP_PREDICT_TIMEOUT) ran out while the image was downloading")
            chunks.append(chunk)

    def _read_file(self, url: str, path: str) -> bytes:
        # O_NOFOLLOW: the checked path has no symlink left; one swapped in since is not followed
        flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
        try:
            fd = os.open(path, flags)
        except FileNotFoundError:
            raise ImageFetchError(f"{url}: local file not found") from None
        except OSError as exc:
            raise ImageFetchError(f"{url}: cannot read local file ({exc.strerror})") from None
        with os.fdopen(fd, "rb") as fh:
            st = os.fstat(fh.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise ImageFetchError(f"{url}: not a regular file")
            if st.st_size > self.max_bytes:
                raise ImageFetchError(f"{url}: larger than {self.max_bytes >> 20} MiB")
            return fh.read(self.max_bytes + 1)

    def read(self, url: str, deadline: float | None = None) -> np.ndarray:
        """Fetch and decode: ``float32 [H, W, 3]`` in ``[0, 1]``; raises :class:`ImageFetchError`."""
        data = self.fetch_bytes(url, deadline)
        try:
            return read_image(data, name=url, max_pixels=self.max_pixels)
        except ImageTooLargeError as exc:
            raise ImageFetchError(f"{exc} (TSP_MAX_IMAGE_PIXELS); downscale the image or raise the limit") from None
        except ImageError as exc:
            raise ImageFetchError(str(exc)) from None


def _short(text: Any, limit: int = 200) -> str:
    text = str(text).strip().splitlines()[0] if str(text).strip() else ""
    return text if len(text) <= limit else text[: limit - 3] + "..."

