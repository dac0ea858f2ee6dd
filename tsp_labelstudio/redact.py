"""Keep credentials out of logs: a ``logging.Filter`` that rewrites records before they are written.

Nothing in the backend logs request headers or bodies; this filter is the second line, for what
a library might log (gunicorn, urllib3, httpx, a traceback holding a URL). It replaces

- the value of an ``Authorization`` header in any rendering (``Authorization: Basic ...``,
  ``'Authorization': 'Bearer ...'``) and a ``Basic``/``Bearer``/``Token`` credential anywhere;
- the value of token-like fields in JSON, dict reprs and query strings: ``access_token``,
  ``refresh_token``, ``token``, ``api_key``, ``password``, ``secret``, signatures;
- cookie values (Django's ``sessionid`` and ``csrftoken`` included);
- any JWT (Label Studio's Personal Access Tokens and the access tokens made from them) and other
  signed base64url JSON;
- the exact secrets it is given (``LABEL_STUDIO_API_KEY``, the basic-auth password and header).

Install it on the handlers (:func:`install`), so records of every logger that reaches them are
covered, child loggers included.
"""

from __future__ import annotations

import base64
import logging
import os
import re
from collections.abc import Iterable

__all__ = ["MASK", "RedactingFilter", "install", "secrets_from_env"]

MASK = "[redacted]"

_TOKEN_KEYS = (r"access_token|refresh_token|id_token|token|api_key|apikey|api-key|password|passwd|secret"
               r"|x-amz-signature|x-goog-signature|signature|sig")
_PATTERNS: list[tuple[re.Pattern[str], str]] = [
    # Authorization header values, as "Authorization: X", "'Authorization': 'X'", "authorization=X",
    # "(b'Authorization', b'X')" (httpcore)
    (re.compile(r"(?i)(authorization['\"]?\s*[:=,]\s*\(?(?-i:b)?['\"]?)(?:(?:basic|bearer|token|jwt)\s+)?[^'\"\s,)}\]]+"),
     r"\1" + MASK),
    # cookies carry sessions: the whole Cookie / Set-Cookie value, and session cookies anywhere
    (re.compile(r"(?i)((?:set-)?cookie['\"]?\s*[:=,]\s*(?-i:b)?['\"]?)[^'\"\r\n]+"), r"\1" + MASK),
    (re.compile(r"(?i)\b(sessionid|csrftoken|csrfmiddlewaretoken)=[^;&'\"\s]+"), r"\1=" + MASK),
    # a credential after an auth scheme anywhere (needs a digit or base64 sign: not plain words)
    (re.compile(r"(?i)\b(basic|bearer|token)\s+(?=[A-Za-z0-9+/=._~-]*[0-9+/=])[A-Za-z0-9+/=._~-]{8,}"),
     r"\1 " + MASK),
    # token-like fields: quoted keys in JSON and reprs, key=value in query strings and forms
    (re.compile(r"(?i)(['\"](?:" + _TOKEN_KEYS + r")['\"]\s*:\s*(?-i:b)?['\"]?)(?!\[redacted\])[^'\"&\s,;}\]]+"),
     r"\1" + MASK),
    (re.compile(r"(?i)((?<![A-Za-z0-9_-])(?:" + _TOKEN_KEYS + r")=)(?!\[redacted\])[^&\s'\",;]+"), r"\1" + MASK),
    # JWTs and other signed base64url JSON (Django's signed session values): they start "eyJ"
    (re.compile(r"eyJ[A-Za-z0-9_-]{8,}(?:[.:][A-Za-z0-9_-]*)*"), MASK),
]


def secrets_from_env(environ: dict[str, str] | None = None) -> list[str]:
    """The secrets the backend and tsp-sync are given: API key, basic-auth password and header."""
    env = os.environ if environ is None else environ
    out = [env.get("LABEL_STUDIO_API_KEY", ""), env.get("BASIC_AUTH_PASS", "")]
    user, password = env.get("BASIC_AUTH_USER", ""), env.get("BASIC_AUTH_PASS", "")
    if user and password:
        out.append(base64.b64encode(f"{user}:{password}".encode()).decode())
    return [s for s in out if s]


class RedactingFilter(logging.Filter):
    """Rewrites each record's message (and traceback text) with credentials masked; drops nothing."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        # longest first, so a secret that contains another is masked whole
        self.secrets = sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True)

    def redact(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, MASK)
        for pattern, repl in _PATTERNS:
            text = pattern.sub(repl, text)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed format string: log it as written, still redacted
            message = str(record.msg)
        record.msg, record.args = self.redact(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        if record.stack_info:
            record.stack_info = self.redact(record.stack_info)
        return True


def install(handlers: Iterable[logging.Handler], secrets: Iterable[str] = ()) -> RedactingFilter:
    """Add one :class:`RedactingFilter` to each handler (once) and return it."""
    filt = RedactingFilter(secrets)
    for handler in handlers:
        for old in [f for f in handler.filters if isinstance(f, RedactingFilter)]:
            handler.removeFilter(old)
        handler.addFilter(filt)
    return filt
