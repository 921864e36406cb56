"""The AppView for tests: an index filled from log rows as production fills it
(:func:`fold_log`), and the real app served by uvicorn on a loopback port
(:func:`serve_appview`).

Nothing here is a stand-in: the rows go through the ingestion log
(:func:`atdata_appview.testing.log.append_rows`) and the real
:class:`~atdata_appview.indexer.Indexer`; the server is
:func:`~atdata_appview.app.create_app` under :class:`uvicorn.Server`.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import asyncpg
import uvicorn
from atdata_ingest.schema import migrate as migrate_ingest

from ..app import create_app
from ..config import Settings
from ..indexer import Indexer
from ..schema import migrate as migrate_appview
from .identity import IdentityDirectory, verify_all
from .log import append_rows

__all__ = ["START_TIMEOUT_S", "fold_log", "serve_appview"]

#: Seconds :func:`serve_appview` waits for uvicorn to start.
START_TIMEOUT_S = 30.0


async def fold_log(
    dsn: str,
    rows: Sequence[Mapping[str, Any]],
    handles: Mapping[str, str],
    *,
    migrate: bool = False,
) -> None:
    """Write ``rows`` (``ingest_events`` rows, as :class:`~atdata_appview.testing.
    log.LogWriter` makes them) into the log of the database ``dsn`` and fold them
    in with the indexer until nothing is left, then verify the handles claimed
    against a stand-in of the network's identity services telling ``handles``
    (DID → handle; queries resolve verified handles only).

    ``migrate``: first create the ingest and AppView schemas. Raises
    :class:`AssertionError` listing the dead letters when any record was refused.
    """
    conn = await asyncpg.connect(dsn)
    try:
        if migrate:
            await migrate_ingest(conn)
            await migrate_appview(conn)
        await append_rows(conn, rows)
    finally:
        await conn.close()
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
    try:
        indexer = Indexer(pool)
        while await indexer.fold_once():
            pass
        with IdentityDirectory(handles) as network:
            await verify_all(pool, network.resolver())
        async with pool.acquire() as c:
            dead = await c.fetch(
                "SELECT rule, pointer, message FROM appview_dead_letters"
            )
        assert not dead, [dict(d) for d in dead]
    finally:
        await pool.close()


class _Server(uvicorn.Server):
    def install_signal_handlers(self) -> None:  # not the main thread
        pass


@contextmanager
def serve_appview(dsn: str, **overrides: Any) -> Iterator[str]:
    """The real AppView (``create_app``) on uvicorn on a free loopback port, in a
    thread; yields its base URL (``http://127.0.0.1:<port>``) and stops it on
    exit. Settings: the DSN, no rate limit, a pool of at most 4, then
    ``overrides`` (:meth:`Settings.from_env` fields). Raises
    :class:`RuntimeError` when the server has not started within
    :data:`START_TIMEOUT_S` seconds."""
    kw: dict[str, Any] = {"rate_per_second": 0, "pool_max": 4, **overrides}
    app = create_app(Settings.from_env({"ATDATA_APPVIEW_DSN": dsn}, **kw))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = _Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, daemon=True
    )
    thread.start()
    deadline = time.monotonic() + START_TIMEOUT_S
    try:
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the AppView server did not start")
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()
