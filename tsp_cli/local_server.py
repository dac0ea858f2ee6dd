"""Start and stop a local Label Studio for tests and the quickstart (local development only).

    with LocalLabelStudio(data_dir, port=8080, username="me@example.com", password="...") as ls:
        client = label_studio_sdk.LabelStudio(base_url=ls.url, api_key=ls.token)

It runs ``label-studio start`` on SQLite in ``data_dir`` with local-file serving on, and with
Label Studio's SSRF protection OFF (``ML_BLOCK_LOCAL_IP=false``, ``SSRF_PROTECTION_ENABLED=false``)
so that an ML backend on 127.0.0.1 can be connected. Never run a shared server that way.

Where it listens: Label Studio binds ``--internal-host`` (its default is 0.0.0.0, every
interface), 127.0.0.1 here unless ``host`` says otherwise. Its ``--host`` is not the bind address
but the public URL it writes into links (ignored unless it starts with ``http``); it is left
unset, so task and storage URLs stay relative as before. The login goes in the environment,
``LABEL_STUDIO_USERNAME`` / ``LABEL_STUDIO_PASSWORD`` (Label Studio's ``server.py`` reads them
when ``--username``/``--password`` are absent), so the password never shows in ``ps``.

The API token is a Personal Access Token obtained through the login flow (Label Studio 1.23 has
legacy tokens off). A user has one PAT, and Label Studio shows it only once, so the first one is
stored in ``<data_dir>/tsp-pat`` (mode 0600) and reused on later starts. If a PAT exists but that
file does not (it was created in the UI), paste the token into that file, or revoke it under
Account & Settings and start again.

:meth:`LocalLabelStudio.queue_check_token` makes a second user in the same organization, one that
labels nothing, for checking the label stream (``GET /api/projects/{id}/next``, see
:mod:`tsp_cli.commands.reorder`, which also releases the lock each check takes); its PAT is kept in
``<data_dir>/tsp-verify-pat``.

On a new ``data_dir`` the ``SECRET_KEY`` (it signs the PATs) is written to ``<data_dir>/.env``
before the first start. Label Studio would generate one itself, but reads it back with
django-environ, which takes a value starting with ``$`` for a reference to another variable: such
a key (about 1 in 50) is replaced on every start, and every stored PAT stops working.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

logger = logging.getLogger(__name__)

__all__ = [
    "stop_process_group","LabelStudioStartError", "LocalLabelStudio", "default_ls_bin", "free_port", "port_free", "write_secret"]

PAT_FILE = "tsp-pat"
VERIFY_PAT_FILE = "tsp-verify-pat"
VERIFY_USER = "queue-check@tsp.local"


class LabelStudioStartError(RuntimeError):
    """The local Label Studio did not come up or refused the login; the message says why."""


def default_ls_bin() -> str:
    """``$TSP_LS_BIN``, else ``<repo>/.venv-ls/bin/label-studio``, else ``label-studio`` on PATH."""
    env = os.environ.get("TSP_LS_BIN")
    if env:
        return env
    repo_bin = Path(__file__).resolve().parent.parent / ".venv-ls" / "bin" / "label-studio"
    if repo_bin.exists():
        return str(repo_bin)
    return shutil.which("label-studio") or str(repo_bin)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a server could listen on ``host:port`` now.

    Binds with ``SO_REUSEADDR``, as Label Studio's and gunicorn's servers do: connections closed in
    the last minute or so (TIME-WAIT) then do not count, only a socket that really listens does.
    """
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def write_secret(path: Path, text: str) -> None:
    """``text`` into ``path`` with mode 0600, atomically (the file is never readable by others)."""
    from tsp_model.core.atomic import atomic_path

    with atomic_path(path) as tmp:
        os.chmod(tmp, 0o600)
        tmp.write_text(text)


def stop_process_group(proc: subprocess.Popen | None, timeout: float = 20.0) -> None:
    """SIGTERM to the process group of ``proc`` (started with ``start_new_session=True``), SIGKILL
    after ``timeout`` seconds; nothing when it is gone already."""
    if proc is None or proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=timeout)
    except ProcessLookupError:
        pass


class LocalLabelStudio:
    """Context manager running ``label-studio start`` in its own process group.

    Attributes after ``start()``: ``url`` (``http://127.0.0.1:<port>``), ``token`` (the PAT),
    ``files_root`` (LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT; tasks may point at
    ``/data/local-files/?d=<path relative to it>``), ``log_path``.
    """

    def __init__(
        self,
        data_dir: str | Path,
        port: int | None = None,
        username: str = "tsp@example.com",
        password: str = "tsp-local-password",
        ls_bin: str | None = None,
        files_root: str | Path | None = None,
        start_timeout: float = 300.0,
        extra_env: dict[str, str] | None = None,
        host: str = "127.0.0.1",
    ) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.host = host
        self.port = port or free_port(host)
        self.username = username
        self.password = password
        self.ls_bin = ls_bin or default_ls_bin()
        self.files_root = Path(files_root).resolve() if files_root else self.data_dir / "files"
        self.start_timeout = start_timeout
        self.extra_env = extra_env or {}
        # what clients use; a server bound to 0.0.0.0 answers on loopback too
        self.url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '') else host}:{self.port}"
        self.token: str | None = None
        self.log_path = self.data_dir / "label-studio.log"
        self._proc: subprocess.Popen | None = None
        self._log = None

    # -- process ----------------------------------------------------------------------------
    def start(self) -> "LocalLabelStudio":
        if not Path(self.ls_bin).exists() and shutil.which(self.ls_bin) is None:
            raise LabelStudioStartError(
                f"{self.ls_bin}: label-studio not found; install it apart from the project: "
                "python3 -m venv .venv-ls && .venv-ls/bin/pip install label-studio==1.23.2 (or set TSP_LS_BIN)"
            )
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.files_root.mkdir(parents=True, exist_ok=True)
        self._ensure_secret_key()
        env = dict(os.environ)
        env.update(
            LABEL_STUDIO_BASE_DATA_DIR=str(self.data_dir),
            LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED="true",
            LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT=str(self.files_root),
            # local development and tests only: lets Label Studio call a backend on 127.0.0.1
            ML_BLOCK_LOCAL_IP="false",
            SSRF_PROTECTION_ENABLED="false",
            # new users only through the organization's invite link (queue_check_token uses it)
            LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK="true",
            PYTHONUNBUFFERED="1",
        )
        env.update(self.extra_env)
        # the login from the environment, not argv: a password on a command line shows in `ps`
        env.update(LABEL_STUDIO_USERNAME=self.username, LABEL_STUDIO_PASSWORD=self.password)
        cmd = [
            self.ls_bin, "start", "--no-browser", "--internal-host", self.host, "--port", str(self.port),
        ]
        self._log = open(self.log_path, "ab")
        logger.info("starting Label Studio on %s (data %s, log %s)", self.url, self.data_dir, self.log_path)
        self._proc = subprocess.Popen(
            cmd, env=env, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,  # own process group: stop() ends label-studio and its children
        )
        try:
            self._wait_healthy()
            self.token = self._obtain_token()
        except BaseException:
            self.stop()
            raise
        return self

    def _ensure_secret_key(self) -> None:
        """Write a SECRET_KEY that django-environ reads back (see the module docstring) into a new
        data folder's ``.env``; an existing ``.env`` is Label Studio's and is left alone."""
        env_file = self.data_dir / ".env"
        if not env_file.exists():
            write_secret(env_file, f"SECRET_KEY={secrets.token_urlsafe(48)}\n")

    def _wait_healthy(self) -> None:
        import requests

        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                raise LabelStudioStartError(
                    f"label-studio exited with code {self._proc.returncode} before answering /health; "
                    f"see {self.log_path}:\n{self.log_tail()}"
                )
            try:
                r = requests.get(self.url + "/health", timeout=2)
                if r.status_code == 200 and r.json().get("status") == "UP":
                    return
            except (requests.RequestException, ValueError):
                pass
            time.sleep(1.0)
        raise LabelStudioStartError(f"Label Studio at {self.url} not UP after {self.start_timeout:.0f} s; see {self.log_path}")

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout: float = 20.0) -> None:
        proc, self._proc = self._proc, None
        stop_process_group(proc, timeout)
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> "LocalLabelStudio":
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    # -- token ------------------------------------------------------------------------------
    @property
    def pat_path(self) -> Path:
        return self.data_dir / PAT_FILE

    @property
    def verify_pat_path(self) -> Path:
        return self.data_dir / VERIFY_PAT_FILE

    def login_session(self, username: str | None = None, password: str | None = None, signup_token: str = ""):
        """A ``requests.Session`` logged in through the web form (cookies + CSRF token).

        Default: the server's own user. With ``signup_token`` (the organization's invite token) it
        signs the user up first, as a person following an invite link does.
        """
        import requests

        username = username or self.username
        password = password or self.password
        page = "/user/signup/" if signup_token else "/user/login/"
        s = requests.Session()
        r = s.get(self.url + page, timeout=30)
        r.raise_for_status()
        csrf = s.cookies.get("csrftoken")
        if not csrf:
            raise LabelStudioStartError(f"{self.url}{page} set no csrftoken cookie")
        r = s.post(
            self.url + page,
            params={"token": signup_token} if signup_token else None,
            data={"email": username, "password": password, "csrfmiddlewaretoken": csrf},
            headers={"Referer": self.url + page},
            timeout=30,
            allow_redirects=False,
        )
        if r.status_code not in (200, 302) or "sessionid" not in s.cookies:
            what = "sign-up" if signup_token else "login"
            raise LabelStudioStartError(
                f"{what} to {self.url} as {username} failed (HTTP {r.status_code}); check the username and password"
            )
        s.headers["X-CSRFToken"] = s.cookies.get("csrftoken", csrf)
        s.headers["Referer"] = self.url + "/"
        return s

    def _new_pat(self, session, username: str, path: Path) -> str:
        """Create the logged-in user's PAT and store it in ``path`` (0600)."""
        r = session.post(self.url + "/api/token/", json={}, timeout=30)
        if r.status_code == 409:
            raise LabelStudioStartError(
                f"{username} already has a Personal Access Token that was not stored in {path}; "
                "paste it into that file (chmod 600) or revoke it in Account & Settings and start again"
            )
        if r.status_code not in (200, 201) or "token" not in r.json():
            raise LabelStudioStartError(f"POST {self.url}/api/token/ answered HTTP {r.status_code}; cannot get a token")
        token = r.json()["token"]
        write_secret(path, token + "\n")
        return token

    def _obtain_token(self) -> str:
        """The user's PAT: from ``<data_dir>/tsp-pat`` if stored, else created and stored (0600)."""
        if self.pat_path.is_file():
            return self.pat_path.read_text().strip()
        return self._new_pat(self.login_session(), self.username, self.pat_path)

    def add_user(self, email: str, password: str, pat_path: Path) -> str:
        """Sign ``email`` up in the server user's organization through its invite link (as a
        person following it does) and return their new Personal Access Token, stored in
        ``pat_path`` (0600)."""
        admin = self.login_session()
        r = admin.get(self.url + "/api/invite", timeout=30)
        if r.status_code != 200 or "token" not in r.json():
            raise LabelStudioStartError(f"GET {self.url}/api/invite answered HTTP {r.status_code}; cannot add a user")
        session = self.login_session(email, password, signup_token=r.json()["token"])
        return self._new_pat(session, email, pat_path)

    def queue_check_token(self) -> str:
        """The PAT of :data:`VERIFY_USER`, a member of the server user's organization that labels
        nothing: asking ``/next`` as it shows the order without locking a task for a labeling user.

        Made once (:meth:`add_user` with a random password that is not kept) and stored in
        ``<data_dir>/tsp-verify-pat`` (0600).
        """
        if self.verify_pat_path.is_file():
            return self.verify_pat_path.read_text().strip()
        try:
            return self.add_user(VERIFY_USER, secrets.token_urlsafe(18), self.verify_pat_path)
        except LabelStudioStartError as exc:
            if "invite" in str(exc):
                raise
            raise LabelStudioStartError(
                f"cannot sign up {VERIFY_USER} at {self.url} (it may exist without its token in "
                f"{self.verify_pat_path}); delete that user in Organization, or start on a new data folder"
            ) from None


def main() -> None:  # pragma: no cover - manual use: python -m tsp_cli.local_server DATA_DIR [PORT]
    logging.basicConfig(level=logging.INFO)
    data_dir = sys.argv[1] if len(sys.argv) > 1 else "ls-data"
    port = int(sys.argv[2]) if len(sys.argv) > 2 else 8080
    with LocalLabelStudio(data_dir, port=port) as ls:
        print(f"Label Studio at {ls.url}; token stored in {ls.pat_path}; Ctrl-C to stop", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":  # pragma: no cover
    main()
