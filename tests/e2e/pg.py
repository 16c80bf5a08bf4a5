"""Throwaway PostgreSQL for end-to-end tests and benchmarks.

`fresh_database()` creates `test_<random>` on the server named by ROUTER_TEST_POSTGRES_URL and
drops it afterwards (pytest skips when the variable is unset). `Cluster` is a private server of
its own (initdb into a temporary directory, pg_ctl on a free port) that a test may stop and start
at will: outages are staged on it, never on the shared server.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from tests.sinks import free_port

ENV_URL = "ROUTER_TEST_POSTGRES_URL"
PG_USER = "postgres"  # initdb refuses to run as root: the cluster belongs to this user
CTL_SECONDS = 30  # pg_ctl -w waits at most this long for a start or stop


class Unavailable(Exception):
    """PostgreSQL (its server URL, or its binaries for a private cluster) is not at hand."""


def server_url() -> str:
    url = os.environ.get(ENV_URL)
    if not url:
        raise Unavailable(f"set {ENV_URL} (a server URL allowed to CREATE DATABASE)")
    return url


def database_url(url: str, name: str) -> str:
    """`url` with its database replaced by `name`."""
    return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))


async def _admin(url: str, statement: str) -> None:
    conn = await asyncpg.connect(url, timeout=10)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


@contextlib.contextmanager
def fresh_database(url: str | None = None) -> Iterator[str]:
    """Create an empty database on the server at `url` (default: ROUTER_TEST_POSTGRES_URL),
    yield its URL, drop it afterwards (connections still open are cut)."""
    admin = url or server_url()
    name = f"test_{uuid.uuid4().hex[:16]}"
    asyncio.run(_admin(admin, f'CREATE DATABASE "{name}"'))
    try:
        yield database_url(admin, name)
    finally:
        asyncio.run(_admin(admin, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def _binary(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=_version_key)
    if found:
        return found[-1]
    path = shutil.which(name)
    if path is None:
        raise Unavailable(f"{name} is not installed (Debian: apt-get install postgresql)")
    return path


def _version_key(path: str) -> tuple[int, ...]:
    version = Path(path).parents[1].name
    return tuple(int(part) for part in version.split(".") if part.isdigit())


class Cluster:
    """A private PostgreSQL server on 127.0.0.1:`port`, trust auth, user postgres.

    Use as a context manager: it is initialised and started on entry, and stopped and deleted
    on exit. `stop()` and `start()` stage outages; `url` names its `postgres` database.
    """

    def __init__(self) -> None:
        self.initdb = _binary("initdb")
        self.pg_ctl = _binary("pg_ctl")
        self.as_user: list[str] = []
        if os.geteuid() == 0:
            try:
                pwd.getpwnam(PG_USER)
            except KeyError:
                raise Unavailable(f"initdb refuses root and there is no {PG_USER} user") from None
            runuser = shutil.which("runuser")
            if runuser is None:
                raise Unavailable("runuser is needed to run initdb as postgres")
            self.as_user = [runuser, "-u", PG_USER, "--"]
        self.port = free_port()
        self.directory = Path(tempfile.mkdtemp(prefix="router-pg-"))
        self.data = self.directory / "data"
        self.url = f"postgresql://{PG_USER}@127.0.0.1:{self.port}/postgres"

    def _run(self, *argv: str) -> None:
        done = subprocess.run(
            [*self.as_user, *argv],
            capture_output=True,
            text=True,
            timeout=CTL_SECONDS + 10,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"{Path(argv[0]).name} failed:\n{done.stdout}{done.stderr}")

    def create(self) -> None:
        if self.as_user:
            shutil.chown(self.directory, PG_USER)
        self._run(
            self.initdb,
            "-D",
            str(self.data),
            "-A",
            "trust",
            "-U",
            PG_USER,
            "-E",
            "UTF8",
            "--no-sync",
            "--no-instructions",
        )

    def start(self) -> None:
        options = (
            f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1 "
            "-c fsync=off -c full_page_writes=off"
        )
        # -l: the server's output goes to a file, not to a pipe we would wait on forever.
        self._run(
            self.pg_ctl,
            "-D",
            str(self.data),
            "-l",
            str(self.directory / "server.log"),
            "-o",
            options,
            "-t",
            str(CTL_SECONDS),
            "-w",
            "start",
        )

    def stop(self, mode: str = "fast") -> None:
        self._run(
            self.pg_ctl, "-D", str(self.data), "-m", mode, "-t", str(CTL_SECONDS), "-w", "stop"
        )

    def log(self) -> str:
        path = self.directory / "server.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def __enter__(self) -> Cluster:
        try:
            self.create()
            self.start()
        except BaseException:
            shutil.rmtree(self.directory, ignore_errors=True)
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
            if (self.data / "postmaster.pid").exists():
                self.stop("immediate")
        shutil.rmtree(self.directory, ignore_errors=True)
