"""Fixtures of the ingestion service's tests: a fresh, migrated database for each
test that asks for one, in the session's real PostgreSQL 15 cluster (``pg``,
tests/conftest.py)."""

from __future__ import annotations

import asyncio
import itertools

import asyncpg
import pytest
from atdata_ingest.schema import migrate
from atdata_ingest.testing.postgres import PostgresCluster

_names = itertools.count()


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
