"""Credentials are masked in every log record (tsp_labelstudio.redact), whatever logged them."""

from __future__ import annotations

import base64
import io
import logging

import pytest

from tsp_labelstudio.redact import MASK, RedactingFilter, install, secrets_from_env

PAT = "eyJhbGciOiJIUzI1NiJ9.eyJ0b2tlbl90eXBlIjoicmVmcmVzaCJ9.c2lnbmF0dXJl"
LEGACY = "0123456789abcdef0123456789abcdef01234567"


@pytest.mark.parametrize("text,secret", [
    ("Request headers: Host: x\r\nAuthorization: Basic bHMtbWw6bWwtc2VjcmV0\r\n", "bHMtbWw6bWwtc2VjcmV0"),
    ("{'Authorization': 'Bearer abc.def.ghi-123', 'X': 1}", "abc.def.ghi-123"),
    ("headers=[(b'Authorization', b'Token " + LEGACY + "')]", LEGACY),
    ("Request body: b'{\"project\": \"1.2\", \"access_token\": \"tok-5551234\", \"schema\": \"<View/>\"}'", "tok-5551234"),
    ("{'params': {'login': 'bob', 'password': 'hunter2!'}}", "hunter2!"),
    ("GET /data/upload/1/a.png?token=q1w2e3r4&x=1 HTTP/1.1", "q1w2e3r4"),
    ("https://bucket.s3/x.png?X-Amz-Signature=deadbeef42&X-Amz-Date=1", "deadbeef42"),
    ("[(b'Set-Cookie', b'sessionid=abcSESSION123; HttpOnly')]", "abcSESSION123"),
    ("Cookie: csrftoken=csrfXYZ789; sessionid=sess456", "sess456"),
    (f"refresh with {PAT}", PAT),
    ("sessionid=eyJ1aWQiOiJkYTVm:1xXbJm:1qjPzR3pWQxni03y", "1qjPzR3pWQxni03y"),
    (f"Token {LEGACY}", LEGACY),
])
def test_credentials_are_masked(text, secret):
    out = RedactingFilter().redact(text)
    assert secret not in out and MASK in out, out


@pytest.mark.parametrize("text", [
    "task 1: no prediction: file:///etc/passwd: not an allowed image source; ... TSP_ALLOWED_DIRS",
    "legacy token authentication has been disabled for this organization",
    "set a valid Personal Access Token (Account & Settings) or legacy token",
    "basic auth enabled",
    "Vary: Cookie",
    "task 3: /data/upload/1/a.png: Label Studio answered 401; check LABEL_STUDIO_API_KEY",
])
def test_ordinary_messages_are_left_alone(text):
    assert RedactingFilter().redact(text) == text


def test_filter_on_a_handler_covers_child_loggers_args_and_tracebacks(monkeypatch):
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", "plain-key-1234")
    monkeypatch.setenv("BASIC_AUTH_USER", "ls-ml")
    monkeypatch.setenv("BASIC_AUTH_PASS", "pw-5678")
    secrets = secrets_from_env()
    assert base64.b64encode(b"ls-ml:pw-5678").decode() in secrets
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    install([handler], secrets)
    install([handler], secrets)  # once only
    assert sum(isinstance(f, RedactingFilter) for f in handler.filters) == 1
    log = logging.getLogger("some.library.child")
    log.addHandler(handler)
    log.setLevel(logging.DEBUG)
    try:
        log.debug("key %s and %r", "plain-key-1234", {"password": "pw-5678"})
        try:
            raise ValueError("failed with key plain-key-1234")
        except ValueError:
            log.exception("boom")
    finally:
        log.removeHandler(handler)
    text = stream.getvalue()
    assert "plain-key-1234" not in text and "pw-5678" not in text and "Traceback" in text, text
