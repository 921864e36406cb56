"""Fixtures of the ingestion service's tests: a real PostgreSQL 15 cluster on
loopback (one per xdist worker and session), and a fresh, migrated database for
each test that asks for one."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator

import asyncpg
import pytest
from atdata_ingest.schema import migrate
from atdata_ingest.testing.postgres import PostgresCluster

_names = itertools.count()


@pytest.fixture(scope="session")
def pg() -> Iterator[PostgresCluster]:
    """The session's cluster (fails, never skips, when PostgreSQL is missing)."""
    with PostgresCluster() as cluster:
        yield cluster


@pytest.fixture
def pg_dsn(pg: PostgresCluster) -> str:
    """DSN of a new database with the ingestion schema already migrated."""
    dsn = pg.create_database(f"t{next(_names)}")

    async def _migrate() -> None:
        conn = await asyncpg.connect(dsn)
        try:
            await migrate(conn)
        finally:
            await conn.close()

    asyncio.run(_migrate())
    return dsn
