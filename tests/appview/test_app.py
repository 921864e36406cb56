"""The AppView's ASGI app (atdata_appview.app) on a real PostgreSQL database:
did.json, /health, per-client rate limits, request bounds, security headers, CORS,
the XRPC error shape, and no traceback in a 500."""

from __future__ import annotations

import asyncio
import datetime as _dt
import json
import subprocess
from collections.abc import Iterator
from typing import Any

import asyncpg
import httpx
import pytest
from atdata_appview.app import API_CSP, Guard, _client_key, create_app, did_document
from atdata_appview.config import Settings
from atdata_appview.testing.log import LogWriter, append_rows
from atdata_ingest.ratelimit import RateLimiter
from atdata_ingest.testing.postgres import PostgresCluster
from fastapi import Request
from fastapi.testclient import TestClient


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def settings(dsn: str, **kw: Any) -> Settings:
    return Settings.from_env({"ATDATA_APPVIEW_DSN": dsn}, **kw)


@pytest.fixture
def client(appview_dsn: str) -> Iterator[TestClient]:
    with TestClient(create_app(settings(appview_dsn, rate_per_second=0))) as c:
        yield c


def test_did_json_is_the_did_web_document_atdata_proxies_to(
    appview_dsn: str, atdata_python: str
) -> None:
    with TestClient(create_app(settings(appview_dsn))) as c:
        r = c.get("/.well-known/did.json")
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    assert r.headers["access-control-allow-origin"] == "*"
    assert r.json() == {
        "@context": ["https://www.w3.org/ns/did/v1"],
        "id": "did:web:127.0.0.1%3A8080",
        "service": [
            {
                "id": "#atdata_appview",
                "type": "AtdataAppView",
                "serviceEndpoint": "http://127.0.0.1:8080",
            }
        ],
    }
    # atdata 0.7's own client derives the DID it proxies to from the URL it is
    # given: the same DID as the document's id.
    code = (
        "from atdata.atmosphere.client import _url_to_did_web as f\n"
        "print(f('http://127.0.0.1:8080'), f('https://appview.example.org'))"
    )
    theirs = subprocess.run(
        [atdata_python, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    public = settings(appview_dsn, hostname="AppView.Example.org")
    assert theirs == [r.json()["id"], did_document(public)["id"]]
    assert did_document(public)["service"][0]["serviceEndpoint"] == (
        "https://appview.example.org"
    )


def test_health_is_ok_on_a_caught_up_index(client: TestClient) -> None:
    r = client.get("/health")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "ok"
    assert body["lag_seconds"] == 0.0 and body["lag_events"] == 0
    assert body["service_did"] == "did:web:127.0.0.1%3A8080"
    assert r.headers["cache-control"] == "no-store"


def test_health_is_503_lagging_when_rows_wait_unindexed(appview_dsn: str) -> None:
    log = LogWriter()
    old = _dt.datetime.now(_dt.UTC) - _dt.timedelta(minutes=10)
    row = log.create(
        "did:plc:aaaa", "science.alt.dataset.label", "3kaaaaaaaaaa2", {"x": 1}
    )

    async def seed() -> None:
        conn = await asyncpg.connect(appview_dsn)
        try:
            await append_rows(conn, [{**row, "indexed_at": old}])
        finally:
            await conn.close()

    asyncio.run(seed())
    app = create_app(settings(appview_dsn, health_max_lag_seconds=60))
    with TestClient(app) as c:
        r = c.get("/health")
    assert r.status_code == 503
    body = r.json()
    assert body["status"] == "lagging"
    assert body["lag_events"] == row["seq"]
    assert 590 < body["lag_seconds"] < 3600
    assert "atdata-appview index" in body["message"]
    assert r.headers["retry-after"] == "5"
    # the same lag under a looser limit is healthy
    with TestClient(create_app(settings(appview_dsn, health_max_lag_seconds=0))) as c:
        assert c.get("/health").json()["status"] == "ok"


def test_health_is_503_unavailable_without_the_schema(pg: PostgresCluster) -> None:
    dsn = pg.create_database("av_noschema")
    with TestClient(create_app(settings(dsn))) as c:
        r = c.get("/health")
    assert r.status_code == 503
    assert r.json()["status"] == "unavailable"
    assert "atdata-appview migrate" in r.json()["message"]


def test_rate_limit_is_429_after_the_burst_with_retry_after(appview_dsn: str) -> None:
    clock = Clock()
    app = create_app(
        settings(appview_dsn, rate_per_second=0.5, rate_burst=3),
        limiter=RateLimiter(clock=clock),
    )
    with TestClient(app) as c:
        for _ in range(3):
            assert c.get("/.well-known/did.json").status_code == 200
        r = c.get("/xrpc/science.alt.dataset.describeService")
        assert r.status_code == 429
        assert r.json() == {
            "error": "RateLimitExceeded",
            "message": "rate limit of 0.5 requests/s per client (burst 3) exceeded; "
            "retry after 2 s",
        }
        assert r.headers["retry-after"] == "2"
        # a browser page elsewhere can read the refusal
        assert r.headers["access-control-allow-origin"] == "*"
        # probes are not counted
        assert c.get("/health").status_code == 200
        clock.now += 2.0  # one request back
        assert c.get("/.well-known/did.json").status_code == 200
        assert c.get("/.well-known/did.json").status_code == 429


def test_each_client_address_has_its_own_bucket(appview_dsn: str) -> None:
    """Buckets are per address; IPv6 clients share one per /64."""
    clock = Clock()
    app = create_app(
        settings(appview_dsn, rate_per_second=1, rate_burst=1),
        limiter=RateLimiter(clock=clock),
    )

    async def go() -> list[int]:
        codes = []
        for who in ("10.0.0.1", "10.0.0.2", "10.0.0.1", "2001:db8::1", "2001:db8::2"):
            transport = httpx.ASGITransport(app=app, client=(who, 1234))
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
                codes.append((await c.get("/.well-known/did.json")).status_code)
        return codes

    assert asyncio.run(go()) == [200, 200, 429, 200, 429]


def test_ipv4_mapped_clients_are_keyed_by_their_ipv4_address() -> None:
    """On a dual-stack listener (host ``::``) IPv4 clients arrive as
    ``::ffff:a.b.c.d``: each is its own IPv4 bucket, not one shared all-zero /64."""
    keys = {
        who: _client_key({"client": (who, 1)})
        for who in ("::ffff:1.2.3.4", "::ffff:9.9.9.9", "1.2.3.4", "2001:db8::1")
    }
    assert keys["::ffff:1.2.3.4"] == keys["1.2.3.4"] == "1.2.3.4"
    assert keys["::ffff:9.9.9.9"] == "9.9.9.9"
    assert keys["2001:db8::1"] == "20010db800000000/64"


def test_request_bounds(appview_dsn: str) -> None:
    app = create_app(
        settings(
            appview_dsn,
            rate_per_second=0,
            max_query_bytes=300,
            max_body_bytes=100,
            max_header_bytes=2000,
        )
    )

    @app.post("/xrpc/test.read")
    async def read(request: Request) -> int:
        return len(await request.body())

    with TestClient(app) as c:
        r = c.get("/xrpc/science.alt.dataset.searchDatasets", params={"q": "x" * 400})
        assert r.status_code == 414
        assert r.json()["error"] == "InvalidRequest"
        assert "over the limit of 300" in r.json()["message"]
        r = c.get("/.well-known/did.json", headers={"x-pad": "y" * 2100})
        assert r.status_code == 431
        r = c.get("/.well-known/did.json", headers={f"x-h{i}": "1" for i in range(120)})
        assert r.status_code == 431
        assert "over the limit of 100" in r.json()["message"]
        r = c.request("GET", "/.well-known/did.json", content=b"z" * 101)
        assert r.status_code == 413
        assert r.json()["error"] == "PayloadTooLarge"
        # a streamed body without Content-Length is counted as it arrives
        r = c.post("/xrpc/test.read", content=iter([b"z" * 60, b"z" * 60]))
        assert r.status_code == 413
        assert r.json()["error"] == "PayloadTooLarge"
        assert c.post("/xrpc/test.read", content=iter([b"z" * 60])).json() == 60
        r = c.request("GET", "/.well-known/did.json", content=b"z" * 100)
        assert r.status_code == 200


def test_security_headers_cors_and_xrpc_errors(client: TestClient) -> None:
    r = client.get("/.well-known/did.json")
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["x-frame-options"] == "DENY"
    assert r.headers["content-security-policy"] == API_CSP
    assert "server" not in r.headers
    r = client.get("/xrpc/science.alt.dataset.noSuchMethod")
    assert r.status_code == 501
    assert r.json()["error"] == "MethodNotImplemented"
    assert r.headers["access-control-allow-origin"] == "*"
    r = client.options(
        "/xrpc/science.alt.dataset.searchDatasets",
        headers={"Origin": "https://x.example", "Access-Control-Request-Method": "GET"},
    )
    assert r.status_code == 204
    assert r.headers["access-control-allow-origin"] == "*"
    assert "GET" in r.headers["access-control-allow-methods"]
    r = client.get("/no/such/page/at/all")
    assert r.status_code == 404
    assert "access-control-allow-origin" not in r.headers
    r = client.post("/health")
    assert r.status_code == 405
    assert r.json()["error"] == "MethodNotAllowed"


def test_a_bug_is_a_500_without_its_traceback(appview_dsn: str) -> None:
    app = create_app(settings(appview_dsn, rate_per_second=0))

    @app.get("/xrpc/test.boom")
    async def boom() -> None:
        raise RuntimeError("secret detail of the server")

    with TestClient(app, raise_server_exceptions=False) as c:
        r = c.get("/xrpc/test.boom")
    assert r.status_code == 500
    assert r.json() == {"error": "InternalServerError", "message": "internal error"}
    assert "secret" not in r.text and "Traceback" not in r.text


def test_the_pool_is_read_only(appview_dsn: str) -> None:
    """The server only reads the index: its sessions refuse writes."""
    app = create_app(settings(appview_dsn, rate_per_second=0))
    with TestClient(app) as c:

        async def write() -> None:
            await c.app.state.pool.execute(  # type: ignore[attr-defined]
                "UPDATE appview_cursor SET folded = folded + 1"
            )

        with pytest.raises(asyncpg.ReadOnlySQLTransactionError):
            c.portal.call(write)  # type: ignore[union-attr]
        assert c.app.state.settings.dsn == appview_dsn  # type: ignore[attr-defined]


def test_guard_is_the_outermost_app_middleware(appview_dsn: str) -> None:
    app = create_app(settings(appview_dsn))
    assert [m.cls for m in app.user_middleware] == [Guard]
    assert json.loads(json.dumps(did_document(settings(appview_dsn))))["id"]


def test_a_request_that_gets_no_connection_in_time_is_503(appview_dsn: str) -> None:
    """The pool never queues a request longer than acquire_timeout_seconds."""
    app = create_app(
        settings(
            appview_dsn, rate_per_second=0, pool_max=1, acquire_timeout_seconds=0.2
        )
    )
    with TestClient(app) as c:
        pool = c.app.state.pool  # type: ignore[attr-defined]
        portal = c.portal
        assert portal is not None
        held = portal.call(pool.acquire)  # the only connection
        try:
            r = c.get("/xrpc/science.alt.dataset.describeService")
            assert r.status_code == 503
            assert r.json() == {
                "error": "Unavailable",
                "message": "the index is unavailable",
            }
            assert r.headers["retry-after"] == "1"
            assert c.get("/health").json()["status"] == "unavailable"
        finally:
            portal.call(pool.release, held)
        assert c.get("/xrpc/science.alt.dataset.describeService").status_code == 200
