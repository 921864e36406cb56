"""schemathesis against the consumer API's own OpenAPI document, served by a real
uvicorn over a real PostgreSQL holding a mixed log: no 5xx, and every response
(status code, content type, headers, body) conforms to the document.

The document comes from ``create_app(...).openapi()`` (no database needed to
build it); the served ``/openapi.json`` is the same (tests/ingest/test_api.py).
``/events/stream`` never ends by design, so it is left out here and tested in
test_api.py. Bounded and derandomized: 50 examples per operation and token.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator

import asyncpg
import pytest
import schemathesis
from atdata_ingest.api import create_app
from atdata_ingest.schema import migrate
from atdata_ingest.testing.postgres import PostgresCluster
from hypothesis import HealthCheck, settings

from tests.ingest.test_api import LiveApi, Row, insert, mixed_log, token

schema = schemathesis.openapi.from_dict(
    create_app("postgresql://unused@127.0.0.1:9/unused").openapi()
).exclude(path="/events/stream")


class Fuzzed:
    def __init__(self, live: LiveApi, tokens: dict[str, str]) -> None:
        self.live = live
        self.tokens = tokens


@pytest.fixture(scope="module")
def fuzzed(pg: PostgresCluster) -> Iterator[Fuzzed]:
    dsn = pg.create_database(f"fuzzapi{os.getpid()}")

    async def _migrate() -> None:
        conn = await asyncpg.connect(dsn)
        try:
            await migrate(conn)
        finally:
            await conn.close()

    asyncio.run(_migrate())
    rows = mixed_log(seed=4, commits=200)
    rows.append(Row(10**7, record={"nested": {"a": [1, 2.5, None, "x"]}}))
    insert(dsn, rows)
    tokens = {
        "all": token(dsn, "all"),
        "datasets": token(dsn, "datasets", {"collections": ["science.alt.dataset.*"]}),
        "limited": token(dsn, "limited", rate=5.0, burst=5),
    }
    with LiveApi(dsn) as live:
        yield Fuzzed(live, tokens)


@pytest.mark.parametrize("who", ["all", "datasets", "limited"])
@schema.parametrize()
@settings(
    max_examples=50,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
def test_api_conforms_to_its_openapi_document(
    case: schemathesis.Case, fuzzed: Fuzzed, who: str
) -> None:
    case.call_and_validate(
        base_url=fuzzed.live.url,
        headers={"Authorization": f"Bearer {fuzzed.tokens[who]}"},
    )


@schema.parametrize()
@settings(max_examples=20, derandomize=True, deadline=None)
def test_api_without_a_token_conforms(case: schemathesis.Case, fuzzed: Fuzzed) -> None:
    case.headers = {
        k: v for k, v in (case.headers or {}).items() if k != "Authorization"
    }
    case.call_and_validate(base_url=fuzzed.live.url)
