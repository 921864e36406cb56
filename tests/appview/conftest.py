"""Fixtures of the AppView's tests: a fresh database with both the ingestion
schema and the AppView schema migrated, in the session's PostgreSQL cluster
(``pg``, tests/conftest.py)."""

from __future__ import annotations

import asyncio
import itertools

import asyncpg
import pytest
from atdata_appview.schema import migrate as migrate_appview
from atdata_ingest.schema import migrate as migrate_ingest
from atdata_ingest.testing.postgres import PostgresCluster

_names = itertools.count()


@pytest.fixture
def appview_dsn(pg: PostgresCluster) -> str:
    """DSN of a new database with ``ingest_*`` and ``appview_*`` tables."""
    dsn = pg.create_database(f"av{next(_names)}")

    async def _migrate() -> None:
        conn = await asyncpg.connect(dsn)
        try:
            await migrate_ingest(conn)
            await migrate_appview(conn)
        finally:
            await conn.close()

    asyncio.run(_migrate())
    return dsn
