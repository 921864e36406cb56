"""A private PostgreSQL 15 cluster on loopback, for tests, demos and benchmarks.

The cluster lives in a temporary directory owned by the ``postgres`` user (the
Debian package creates it): PostgreSQL refuses to run as root, so when this process
is root every server command runs through ``runuser -u postgres``. It listens on
127.0.0.1 only, on a free port, with its socket in the cluster directory, and
trusts local connections (there is nothing else on the cluster).

    with PostgresCluster() as pg:
        dsn = pg.dsn            # postgresql://postgres@127.0.0.1:PORT/postgres
        pg.restart()            # a real restart: connections drop, data stays
        pg.crash()              # SIGKILL of the postmaster, then start again

Binaries come from ``ATDATA_PG_BINDIR``, else ``/usr/lib/postgresql/15/bin``
(``scripts/setup`` installs Debian's ``postgresql-15`` when it is missing).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Self

__all__ = ["PostgresCluster", "PostgresUnavailable", "bindir"]


class PostgresUnavailable(RuntimeError):
    """PostgreSQL 15's server binaries are not installed (run ``scripts/setup``)."""


def bindir() -> Path:
    """The directory of ``initdb``, ``pg_ctl`` and ``postgres``. Raises
    :class:`PostgresUnavailable` when they are missing."""
    path = Path(os.environ.get("ATDATA_PG_BINDIR", "/usr/lib/postgresql/15/bin"))
    if not (path / "postgres").is_file():
        raise PostgresUnavailable(
            f"PostgreSQL server binaries not found in {path} "
            "(install Debian's postgresql-15: ./scripts/setup)"
        )
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PostgresCluster:
    """One private cluster. ``fast=True`` (tests) turns off ``fsync`` and
    ``full_page_writes``: a crash of the *machine* could corrupt it, a crash or
    restart of the server cannot. Benchmarks pass ``fast=False``."""

    def __init__(
        self,
        *,
        fast: bool = True,
        settings: dict[str, str] | None = None,
        root: str | os.PathLike[str] | None = None,
    ) -> None:
        self._bin = bindir()
        self._own_root = root is None
        self.root = Path(root or tempfile.mkdtemp(prefix="atdata-pg-"))
        self.data = self.root / "data"
        self.port = _free_port()
        self.log = self.root / "server.log"
        self._settings = {
            "listen_addresses": "127.0.0.1",
            "port": str(self.port),
            "unix_socket_directories": str(self.root),
            "max_connections": "100",
            "shared_buffers": "128MB",
            **({"fsync": "off", "full_page_writes": "off"} if fast else {}),
            **(settings or {}),
        }
        self._as_postgres = os.geteuid() == 0
        self._initdb()

    # -- commands -----------------------------------------------------------------
    def _run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        cmd = list(argv)
        if self._as_postgres:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        return subprocess.run(
            cmd, check=check, capture_output=True, text=True, timeout=120
        )

    def _initdb(self) -> None:
        if self._as_postgres:
            shutil.chown(self.root, "postgres", "postgres")
        os.chmod(self.root, 0o755)
        self._run(
            str(self._bin / "initdb"),
            "-D", str(self.data), "-U", "postgres", "-A", "trust",
            "-E", "UTF8", "--locale=C", "--no-sync",
        )  # fmt: skip
        conf = "".join(f"{k} = '{v}'\n" for k, v in self._settings.items())
        with (self.data / "postgresql.auto.conf").open("a") as f:
            f.write(conf)

    @property
    def dsn(self) -> str:
        """``postgresql://postgres@127.0.0.1:PORT/postgres``."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def dsn_for(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """Create database ``name`` and return its DSN."""
        self._run(
            str(self._bin / "createdb"), "-h", "127.0.0.1", "-p", str(self.port),
            "-U", "postgres", name,
        )  # fmt: skip
        return self.dsn_for(name)

    def start(self, *, timeout: float = 60.0) -> None:
        self._run(
            str(self._bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.log),
            "-w", "-t", str(int(timeout)), "start",
        )  # fmt: skip
        self.wait_ready(timeout)

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            done = self._run(
                str(self._bin / "pg_isready"), "-h", "127.0.0.1", "-p",
                str(self.port), "-q", check=False,
            )  # fmt: skip
            if done.returncode == 0:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"PostgreSQL not ready after {timeout}s: {self.log}")
            time.sleep(0.05)

    def stop(self, mode: str = "fast") -> None:
        """``pg_ctl stop -m MODE`` (``smart``, ``fast`` or ``immediate``)."""
        self._run(
            str(self._bin / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w",
            "stop", check=False,
        )  # fmt: skip

    def restart(self, *, down_for: float = 0.0) -> None:
        """Stop (fast: every connection is terminated), wait ``down_for`` seconds,
        start again."""
        self.stop("fast")
        if down_for:
            time.sleep(down_for)
        self.start()

    def postmaster_pid(self) -> int | None:
        pid_file = self.data / "postmaster.pid"
        with contextlib.suppress(OSError, ValueError, IndexError):
            return int(pid_file.read_text().splitlines()[0])
        return None

    def crash(self) -> None:
        """SIGKILL the postmaster (its backends die with it), then start again:
        crash recovery replays the WAL."""
        pid = self.postmaster_pid()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.05)
            # backends notice the dead postmaster and exit; wait for the shared
            # memory to be released before starting again
            time.sleep(0.5)
        self.start()

    def close(self) -> None:
        self.stop("immediate")
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
