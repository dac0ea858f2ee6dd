"""The department configuration without containers: a throwaway PostgreSQL cluster from the
distribution's packages, and Label Studio's database settings read from docker-compose.yml, so
the compose file and what the tests (and benchmarks/scaling.py) run cannot drift apart.

No container runtime runs on these machines (docs/label-studio.md); the compose file's
``label-studio`` service is reproduced natively: its ``environment`` as written, with only what a
container network decides replaced (the database host and port: the local cluster on
127.0.0.1; the password: generated, in the environment, never on a command line).
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import yaml

from tsp_cli.local_server import free_port

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
# set by a container network or the operator, not by the file: the rest is taken as written
_PER_HOST = ("POSTGRE_HOST", "POSTGRE_PORT", "POSTGRE_PASSWORD", "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT")


def _pg_bin(name: str) -> str:
    """A PostgreSQL server program: on PATH, else Debian's /usr/lib/postgresql/<version>/bin."""
    found = shutil.which(name)
    if found:
        return found
    versions = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))
    if not versions:
        raise FileNotFoundError(f"{name} not found: install the distribution's postgresql package "
                                "(scripts/setup_env.sh does on Debian)")
    return str(versions[-1])


class LocalPostgres:
    """A PostgreSQL cluster in a temporary folder, listening on 127.0.0.1 only; as root (which
    PostgreSQL refuses to run as) it runs as the ``postgres`` system user."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        # not below pytest's 0700 folders: the postgres user must reach it
        self.root = Path(tempfile.mkdtemp(prefix="tsp-pg-"))
        self.data, self.log = self.root / "data", self.root / "postgres.log"
        self._as = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self._as:
            entry = pwd.getpwnam("postgres")
            os.chown(self.root, entry.pw_uid, entry.pw_gid)

    def _run(self, args: list[str], stdin: str | None = None) -> str:
        proc = subprocess.run(self._as + args, input=stdin, capture_output=True, text=True, timeout=180)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(args[:2])} failed ({proc.returncode}): {proc.stderr.strip()[-800:]}")
        return proc.stdout

    def start(self) -> LocalPostgres:
        self._run([_pg_bin("initdb"), "-D", str(self.data), "-U", "postgres", "--auth-local=trust",
                   "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C"])
        options = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.root}"
        self._run([_pg_bin("pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "start"])
        return self

    def create_database(self, name: str, user: str, password: str) -> None:
        """A login role with ``password`` owning a new database (SQL on stdin, not in argv)."""
        sql = (f"CREATE ROLE \"{user}\" LOGIN PASSWORD '{password}';\n"
               f"CREATE DATABASE \"{name}\" OWNER \"{user}\";\n")
        self._run(["psql", "-v", "ON_ERROR_STOP=1", "-q", "-h", str(self.root), "-p", str(self.port), "-U", "postgres",
                   "-d", "postgres"], stdin=sql)

    def version(self) -> str:
        """The server's version, e.g. ``15.18``."""
        return self._run(["psql", "-h", str(self.root), "-p", str(self.port), "-U", "postgres", "-d", "postgres",
                          "-tAc", "SHOW server_version"]).split()[0]

    def stop(self) -> None:
        if self.data.is_dir():
            subprocess.run(self._as + [_pg_bin("pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop"],
                           capture_output=True, timeout=120)
        shutil.rmtree(self.root, ignore_errors=True)


def compose_label_studio_env(pg: LocalPostgres, password: str | None = None) -> dict[str, str]:
    """The compose file's ``label-studio`` environment for a native Label Studio on ``pg``: its
    database and user created there, host, port and a fresh password put in."""
    services: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())["services"]
    env = {k: str(v) for k, v in services["label-studio"]["environment"].items() if k not in _PER_HOST}
    password = password or secrets.token_urlsafe(18)
    pg.create_database(env["POSTGRE_NAME"], env["POSTGRE_USER"], password)
    env.update(POSTGRE_HOST="127.0.0.1", POSTGRE_PORT=str(pg.port), POSTGRE_PASSWORD=password)
    return env
