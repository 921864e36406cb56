"""The AppView's ASGI application: XRPC queries, pages, ``did.json``, ``/health``.

:func:`create_app` builds a FastAPI app from :class:`~.config.Settings`. Its
lifespan opens the asyncpg pool (``app.state.pool``; ``app.state.settings`` holds
the settings); the pool's sessions are read-only (``default_transaction_read_only``):
the server only reads the index, never the relay. Routes:

- ``GET /xrpc/<nsid>``: the XRPC queries (:mod:`.xrpc`'s ``router``). An unknown
  method under ``/xrpc/`` is ``501 MethodNotImplemented`` (XRPC: a 404 would say
  the host serves no XRPC at all).
- the pages and ``/static/`` (:mod:`.pages`' ``router``).
- ``GET /.well-known/did.json``: the ``did:web`` document of
  :attr:`Settings.service_did` with one service, ``#atdata_appview`` of type
  ``AtdataAppView`` at the public URL: the shape atdata-app 0.4 serves, which
  atdata 0.7's client addresses as ``atproto-proxy: <did>#atdata_appview``.
- ``GET /health``: 200 ``ok`` when PostgreSQL answers and the index keeps up;
  503 ``lagging`` when the oldest ingested row not yet folded in waited longer
  than ``health_max_lag_seconds``, 503 ``unavailable`` when PostgreSQL does not
  answer within :data:`HEALTH_TIMEOUT_S` or the schema is missing. The body
  says why, with the cursor positions and counts (:func:`health_status`).

Every request passes :class:`Guard` (a plain ASGI middleware, so it costs no
task per request) before routing:

- bounds: a path over :data:`MAX_PATH_BYTES` or a query string over
  ``max_query_bytes`` is ``414``, more than :data:`MAX_HEADERS` headers or a head
  over ``max_header_bytes`` is ``431``, a body over ``max_body_bytes`` is ``413``
  (declared by ``Content-Length`` or counted as it streams);
- rate limits: a token bucket per client address (``rate_per_second`` refill,
  ``rate_burst`` deep; :class:`atdata_ingest.ratelimit.RateLimiter`, the one the
  ingester's consumer API uses), IPv6 clients counted per ``/64``. A request
  takes one token, a dear one more (:func:`request_cost`: getLensPath 10,
  facets 5). An empty bucket is ``429 RateLimitExceeded`` with ``Retry-After``
  (integer seconds).
  ``/health`` and ``/static/`` are not counted. The client is the TCP peer;
  behind a reverse proxy list it in ``trusted_proxies`` (uvicorn then takes the
  client from ``X-Forwarded-For``);
- CORS: ``/xrpc/`` and ``/.well-known/did.json`` are public and read-only, so
  their responses carry ``Access-Control-Allow-Origin: *`` (no credentials), and
  an ``OPTIONS`` preflight there is answered ``204``. atdata-app sends no CORS
  headers; a browser page elsewhere could not call it;
- security headers on every response (unless the route set them):
  ``X-Content-Type-Options: nosniff``, ``X-Frame-Options: DENY``,
  ``Referrer-Policy``, a ``Content-Security-Policy`` (:data:`PAGE_CSP` for HTML,
  :data:`API_CSP` otherwise), ``Strict-Transport-Security`` when the public URL is
  ``https``.

Errors have XRPC's shape everywhere, ``{"error": Name, "message": text}``:
``InvalidRequest`` (400, 414, 431), ``NotFound`` (404), ``MethodNotAllowed``
(405), ``PayloadTooLarge`` (413), ``RateLimitExceeded`` (429), ``Unavailable``
(503: PostgreSQL down or no connection free; ``Retry-After: 1``),
``InternalServerError`` (500: the traceback is logged, never sent).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import Any, Final

import asyncpg
import orjson
from atdata_ingest.ratelimit import RateLimiter, retry_after_header
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from . import __version__, pages, xrpc
from .config import Settings

__all__ = [
    "API_CSP",
    "FACETS_COST",
    "HEALTH_TIMEOUT_S",
    "MAX_HEADERS",
    "MAX_PATH_BYTES",
    "PAGE_CSP",
    "REQUEST_COSTS",
    "SERVICE_ID",
    "SERVICE_TYPE",
    "Guard",
    "ServerPool",
    "create_app",
    "did_document",
    "error_response",
    "health_status",
    "open_pool",
    "request_cost",
    "server_config",
]

log = logging.getLogger("atdata_appview.app")

#: The service entry of ``did.json`` (atdata-app 0.4's identity.py; atdata 0.7
#: proxies with ``atproto-proxy: <did>#atdata_appview``).
SERVICE_ID: Final = "#atdata_appview"
SERVICE_TYPE: Final = "AtdataAppView"

#: Longest request path accepted, bytes (longer: 414).
MAX_PATH_BYTES: Final = 4096
#: Most request headers accepted (more: 431).
MAX_HEADERS: Final = 100
#: Seconds ``/health`` waits for PostgreSQL before answering 503 unavailable.
HEALTH_TIMEOUT_S: Final = 2.0

#: Content-Security-Policy of HTML responses: scripts, styles, images and fonts
#: from this origin only (inline styles allowed, inline scripts not), no plugins,
#: no framing, forms post here only.
PAGE_CSP: Final = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; font-src 'self'; connect-src 'self'; object-src 'none'; "
    "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
#: Content-Security-Policy of every other response (JSON, static files).
API_CSP: Final = "default-src 'none'; frame-ancestors 'none'"

_CORS_PREFIXES: Final = ("/xrpc/", "/.well-known/")
_UNCOUNTED_PREFIXES: Final = ("/static/",)
_UNCOUNTED_PATHS: Final = frozenset({"/health"})

REQUEST_COSTS: Final = {"/xrpc/science.alt.dataset.getLensPath": 10.0}
"""Rate-limit tokens a request of these paths takes (any other: 1): a lens path
may compile records and compare versions for up to
:data:`atdata_appview.lenspath.SEARCH_BUDGET_SECONDS`."""

FACETS_COST: Final = 5.0
"""Tokens of a request that counts facets over every match: searchDatasets with
``facets=true``, and the home page (``/``, which always shows them)."""

_FACETED_PATHS: Final = frozenset({"/xrpc/science.alt.dataset.searchDatasets"})


def request_cost(path: str, query: bytes) -> float:
    """The rate-limit tokens of a request to ``path`` with query string ``query``
    (:data:`REQUEST_COSTS`, :data:`FACETS_COST`; else 1)."""
    if path == "/":
        return FACETS_COST
    if path in _FACETED_PATHS and b"facets" in query:
        pairs = urllib.parse.parse_qsl(query.decode("latin-1"), keep_blank_values=True)
        if any(k == "facets" and v == "true" for k, v in pairs):
            return FACETS_COST
    return REQUEST_COSTS.get(path, 1.0)


_HTTP_NAMES: Final = {
    400: "InvalidRequest",
    404: "NotFound",
    405: "MethodNotAllowed",
    406: "NotAcceptable",
    413: "PayloadTooLarge",
    414: "InvalidRequest",
    415: "UnsupportedMediaType",
    431: "InvalidRequest",
}

#: Exceptions that mean "PostgreSQL is not answering" (503, not 500).
_UNAVAILABLE: Final = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.InsufficientResourcesError,
    asyncpg.exceptions.InvalidCatalogNameError,
    asyncpg.exceptions.QueryCanceledError,  # statement_timeout
)


def error_response(
    status: int, error: str, message: str, headers: dict[str, str] | None = None
) -> Response:
    """An XRPC error response: ``{"error": error, "message": message}``."""
    return Response(
        orjson.dumps({"error": error, "message": message}),
        status_code=status,
        media_type="application/json",
        headers=headers,
    )


def did_document(settings: Settings) -> dict[str, Any]:
    """The ``did:web`` document of the service (W3C DID Core §5; did:web §3.2):
    ``@context``, ``id`` = :attr:`Settings.service_did`, and one ``service``
    ``{"id": "#atdata_appview", "type": "AtdataAppView", "serviceEndpoint":
    <public URL>}``: the document atdata-app 0.4 serves (without a signing key:
    this AppView signs nothing)."""
    return {
        "@context": ["https://www.w3.org/ns/did/v1"],
        "id": settings.service_did,
        "service": [
            {
                "id": SERVICE_ID,
                "type": SERVICE_TYPE,
                "serviceEndpoint": settings.base_url,
            }
        ],
    }


# --------------------------------------------------------------------------- guard

_Scope = MutableMapping[str, Any]
_Message = MutableMapping[str, Any]
_Receive = Callable[[], Awaitable[_Message]]
_Send = Callable[[_Message], Awaitable[None]]
_ASGIApp = Callable[[_Scope, _Receive, _Send], Awaitable[None]]


class _BodyTooLarge(Exception):
    pass


def _client_key(scope: _Scope) -> str:
    """The rate-limit key of the request's client: its address (IPv6: the /64).

    An IPv4-mapped IPv6 address (``::ffff:a.b.c.d``, RFC 4291 § 2.5.5.2: how a
    dual-stack listener on ``::`` sees IPv4 clients) is keyed by its IPv4 address,
    so IPv4 clients never share the one all-zero /64."""
    client = scope.get("client")
    host = str(client[0]) if client else ""
    if ":" in host:
        try:
            address = ipaddress.IPv6Address(host.split("%", 1)[0])
        except ValueError:
            return host
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return address.packed[:8].hex() + "/64"
    return host


async def _send_error(
    send: _Send,
    status: int,
    error: str,
    message: str,
    headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    body = orjson.dumps({"error": error, "message": message})
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"content-security-policy", API_CSP.encode()),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class Guard:
    """The request bounds, rate limits, CORS and security headers of the module
    doc, as a plain ASGI middleware around the app. ``limiter``: the per-client
    buckets (one per process; pass one with a fake clock in tests)."""

    def __init__(
        self, app: _ASGIApp, *, settings: Settings, limiter: RateLimiter
    ) -> None:
        self.app = app
        self.settings = settings
        self.limiter = limiter
        self.rate = settings.rate_per_second
        self.burst = settings.rate_burst
        self.max_body = settings.max_body_bytes
        self.max_query = settings.max_query_bytes
        self.max_head = settings.max_header_bytes
        self.hsts = settings.base_url.startswith("https://")

    async def __call__(self, scope: _Scope, receive: _Receive, send: _Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        cors = path.startswith(_CORS_PREFIXES)
        extra = self._common_headers(cors)
        refusal = self._refusal(scope, path)
        if refusal is not None:
            status, error, message, headers = refusal
            await _send_error(send, status, error, message, [*headers, *extra])
            return
        if cors and scope["method"] == "OPTIONS":
            await send(
                {
                    "type": "http.response.start",
                    "status": 204,
                    "headers": [
                        *extra,
                        (b"access-control-allow-methods", b"GET, HEAD, OPTIONS"),
                        (
                            b"access-control-allow-headers",
                            b"atproto-accept-labelers, atproto-proxy, content-type",
                        ),
                        (b"access-control-max-age", b"86400"),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": b""})
            return

        started = False

        async def guarded_send(message: _Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                headers = list(message.get("headers", ()))
                have = {k.lower() for k, _ in headers}
                html = any(
                    k.lower() == b"content-type" and v.startswith(b"text/html")
                    for k, v in headers
                )
                headers.extend(h for h in extra if h[0] not in have)
                if b"content-security-policy" not in have:
                    csp = PAGE_CSP if html else API_CSP
                    headers.append((b"content-security-policy", csp.encode()))
                message["headers"] = headers
            await send(message)

        seen = 0

        async def counted() -> _Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body:
                    raise _BodyTooLarge
            return message

        try:
            await self.app(scope, counted, guarded_send)
        except _BodyTooLarge:
            if started:
                raise
            await _send_error(
                send,
                413,
                "PayloadTooLarge",
                f"the request body is over {self.max_body} bytes",
                extra,
            )

    def _common_headers(self, cors: bool) -> list[tuple[bytes, bytes]]:
        headers = [
            (b"x-content-type-options", b"nosniff"),
            (b"x-frame-options", b"DENY"),
            (b"referrer-policy", b"strict-origin-when-cross-origin"),
        ]
        if self.hsts:
            headers.append((b"strict-transport-security", b"max-age=31536000"))
        if cors:
            headers += [
                (b"access-control-allow-origin", b"*"),
                (b"access-control-expose-headers", b"Retry-After"),
            ]
        return headers

    def _refusal(
        self, scope: _Scope, path: str
    ) -> tuple[int, str, str, list[tuple[bytes, bytes]]] | None:
        """Why the request is refused before routing (status, error, message,
        headers), or ``None``."""
        raw_path = scope.get("raw_path") or path.encode()
        if len(raw_path) > MAX_PATH_BYTES:
            return (
                414,
                "InvalidRequest",
                f"the path is over {MAX_PATH_BYTES} bytes",
                [],
            )
        query = scope.get("query_string", b"")
        if len(query) > self.max_query:
            return (
                414,
                "InvalidRequest",
                (
                    f"the query string is {len(query)} bytes, over the limit of "
                    f"{self.max_query}"
                ),
                [],
            )
        headers = scope.get("headers", ())
        if len(headers) > MAX_HEADERS:
            return (
                431,
                "InvalidRequest",
                f"{len(headers)} request headers, over the limit of {MAX_HEADERS}",
                [],
            )
        head = len(raw_path) + len(query)
        length = None
        for key, value in headers:
            head += len(key) + len(value) + 4
            if key == b"content-length":
                length = value
        if head > self.max_head:
            return (
                431,
                "InvalidRequest",
                f"the request head is over {self.max_head} bytes",
                [],
            )
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                return (400, "InvalidRequest", "Content-Length is not a number", [])
            if declared > self.max_body:
                return (
                    413,
                    "PayloadTooLarge",
                    (
                        f"the request body is {declared} bytes, over the limit of "
                        f"{self.max_body}"
                    ),
                    [],
                )
        if (
            self.rate > 0
            and path not in _UNCOUNTED_PATHS
            and not path.startswith(_UNCOUNTED_PREFIXES)
        ):
            cost = request_cost(path, scope.get("query_string", b""))
            wait = self.limiter.check(_client_key(scope), self.rate, self.burst, cost)
            if wait > 0:
                after = retry_after_header(wait)
                dear = f" (this request costs {cost:g})" if cost != 1 else ""
                return (
                    429,
                    "RateLimitExceeded",
                    (
                        f"rate limit of {self.rate:g} requests/s per client (burst "
                        f"{self.burst}) exceeded{dear}; retry after {after} s"
                    ),
                    [(b"retry-after", after.encode())],
                )
        return None


# --------------------------------------------------------------------------- health

_HEALTH_SQL: Final = """
SELECT a.seq AS indexed_seq, a.updated_at AS indexed_at, a.folded, a.dead_letters,
       i.last_seq AS ingested_seq, now() AS now,
       (SELECT e.indexed_at FROM ingest_events e
         WHERE (e.seq, e.idx) > (a.seq, a.idx)
         ORDER BY e.seq, e.idx LIMIT 1) AS oldest_pending
  FROM appview_cursor a CROSS JOIN ingest_cursor i
"""


async def health_status(
    pool: asyncpg.Pool, settings: Settings, *, timeout: float = HEALTH_TIMEOUT_S
) -> dict[str, Any]:
    """The body of ``/health``: ``status`` (``ok`` | ``lagging`` |
    ``unavailable``), ``ingested_seq`` (``ingest_cursor.last_seq``),
    ``indexed_seq`` (``appview_cursor.seq``), ``lag_events`` (their difference:
    seqs, some of which hold nothing the index folds), ``lag_seconds`` (how
    long the oldest row after the index's cursor has waited since the ingester
    stored it; 0 when none waits), ``indexed_at`` (the index cursor's last
    move), ``folded``/``dead_letters`` (counters), ``service_did``,
    ``version``, and ``message`` when not ok. Never raises for a database
    failure (that is ``unavailable``)."""
    body: dict[str, Any] = {
        "status": "unavailable",
        "ingested_seq": None,
        "indexed_seq": None,
        "lag_events": None,
        "lag_seconds": None,
        "indexed_at": None,
        "folded": None,
        "dead_letters": None,
        "service_did": settings.service_did,
        "version": __version__,
    }
    try:
        row = await asyncio.wait_for(pool.fetchrow(_HEALTH_SQL), timeout)
    except asyncpg.UndefinedTableError:
        body["message"] = "the schema is missing (run `atdata-appview migrate`)"
        return body
    except (*_UNAVAILABLE, asyncpg.PostgresError) as exc:
        log.warning("/health: PostgreSQL unavailable: %s", type(exc).__name__)
        body["message"] = "PostgreSQL does not answer"
        return body
    if row is None:
        body["message"] = "no cursor row (run `atdata-appview migrate`)"
        return body
    pending = row["oldest_pending"]
    lag = max(0.0, (row["now"] - pending).total_seconds()) if pending else 0.0
    body.update(
        ingested_seq=row["ingested_seq"],
        indexed_seq=row["indexed_seq"],
        lag_events=max(0, int(row["ingested_seq"]) - int(row["indexed_seq"])),
        lag_seconds=lag,
        indexed_at=row["indexed_at"].isoformat(),
        folded=row["folded"],
        dead_letters=row["dead_letters"],
    )
    limit = settings.health_max_lag_seconds
    if limit > 0 and lag > limit:
        body["status"] = "lagging"
        body["message"] = (
            f"the oldest row not yet indexed waited {lag:.0f} s (limit {limit:g} s): "
            "is `atdata-appview index` running?"
        )
    else:
        body["status"] = "ok"
    return body


# --------------------------------------------------------------------------- app


def _install_error_handlers(app: FastAPI) -> None:
    async def on_http(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        if exc.status_code == 404 and request.url.path.startswith("/xrpc/"):
            method = request.url.path.removeprefix("/xrpc/")[:200]
            return error_response(
                501, "MethodNotImplemented", f"method {method!r} is not implemented"
            )
        name = _HTTP_NAMES.get(exc.status_code, "Error")
        return error_response(
            exc.status_code, name, str(exc.detail), dict(exc.headers or {})
        )

    async def on_validation(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        parts = []
        for e in exc.errors()[:5]:
            where = ".".join(str(p) for p in e.get("loc", ()))
            parts.append(f"{where}: {e.get('msg', 'invalid')}")
        return error_response(400, "InvalidRequest", "; ".join(parts) or "invalid")

    async def on_unavailable(request: Request, exc: Exception) -> Response:
        log.warning(
            "%s: PostgreSQL unavailable: %s: %s",
            request.url.path[:200], type(exc).__name__, exc,
        )  # fmt: skip
        return error_response(
            503, "Unavailable", "the index is unavailable", {"Retry-After": "1"}
        )

    async def on_bug(request: Request, exc: Exception) -> Response:
        log.error("%s: internal error", request.url.path[:200], exc_info=exc)
        return error_response(500, "InternalServerError", "internal error")

    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(RequestValidationError, on_validation)
    for cls in _UNAVAILABLE:
        app.add_exception_handler(cls, on_unavailable)
    app.add_exception_handler(Exception, on_bug)


def _server_settings(settings: Settings) -> dict[str, str]:
    return {
        "application_name": f"{settings.application_name} serve",
        "default_transaction_read_only": "on",
        "statement_timeout": str(settings.statement_timeout_ms),
        # every query is bounded (LIMIT): JIT would add milliseconds, save nothing
        "jit": "off",
    }


class ServerPool(asyncpg.pool.Pool):  # type: ignore[misc]  # asyncpg is untyped
    """An asyncpg pool whose :meth:`acquire` waits at most ``acquire_timeout``
    seconds by default (``Pool.fetch``/``fetchrow``/... acquire through it too),
    then raises :class:`TimeoutError`, which the app answers ``503 Unavailable``:
    a busy server sheds load rather than queueing requests without bound."""

    acquire_timeout: float = 2.0

    def acquire(self, *, timeout: float | None = None) -> Any:
        wait = self.acquire_timeout if timeout is None else timeout
        return super().acquire(timeout=wait)


async def open_pool(settings: Settings) -> ServerPool:
    """The server's pool (what :func:`asyncpg.create_pool` builds, as a
    :class:`ServerPool`): no connection floor (asyncpg's floor keeper logs a
    traceback per failed reconnection while PostgreSQL is down), ``pool_min``
    connections opened at start, at most ``pool_max``; sessions read-only with
    ``statement_timeout`` and JIT off; acquiring waits at most
    ``acquire_timeout_seconds``."""
    pool = ServerPool(
        settings.dsn,
        connection_class=asyncpg.Connection,
        record_class=asyncpg.Record,
        init_size=settings.pool_min,
        min_size=0,
        max_size=settings.pool_max,
        max_queries=50_000,
        loop=None,
        connect=None,
        setup=None,
        init=None,
        reset=None,
        max_inactive_connection_lifetime=300.0,
        command_timeout=settings.statement_timeout_ms / 1000 + 5,
        server_settings=_server_settings(settings),
    )
    pool.acquire_timeout = settings.acquire_timeout_seconds
    await pool
    return pool


def create_app(settings: Settings, *, limiter: RateLimiter | None = None) -> FastAPI:
    """The AppView over the database of ``settings.dsn`` (see the module doc).
    The pool opens in the app's lifespan, so building the app (for its OpenAPI
    document, say) needs no database. ``limiter``: the per-client buckets
    (default: a new :class:`RateLimiter`)."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        pool = await open_pool(settings)
        app.state.pool = pool
        try:
            yield
        finally:
            app.state.pool = None
            await pool.close()

    app = FastAPI(
        title="atdata AppView",
        version=__version__,
        description=(
            "Discovery of science.alt.dataset.* records: XRPC queries "
            "(GET /xrpc/<nsid>), pages, did:web. Errors are {error, message}."
        ),
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.pool = None
    _install_error_handlers(app)

    did_body = orjson.dumps(did_document(settings))

    @app.get("/.well-known/did.json", include_in_schema=False)
    async def did_json() -> Response:
        return Response(did_body, media_type="application/json")

    @app.get("/health", include_in_schema=False)
    async def health(request: Request) -> Response:
        pool = request.app.state.pool
        if pool is None:
            body: dict[str, Any] = {"status": "unavailable", "message": "starting"}
        else:
            body = await health_status(pool, settings)
        code = 200 if body["status"] == "ok" else 503
        headers = {"Cache-Control": "no-store"}
        if code == 503:
            headers["Retry-After"] = "5"
        return Response(
            orjson.dumps(body),
            status_code=code,
            media_type="application/json",
            headers=headers,
        )

    app.include_router(xrpc.router)
    app.include_router(pages.router)
    app.add_middleware(
        Guard,
        settings=settings,
        # not `limiter or ...`: an empty RateLimiter is falsy (it has __len__)
        limiter=RateLimiter() if limiter is None else limiter,
    )
    return app


def server_config(app: FastAPI, settings: Settings, *, log_level: str = "info") -> Any:
    """The ``uvicorn.Config`` that serves ``app`` on ``host:port``: one worker
    (the rate limits live in the process), no ``Server`` header, no access log,
    the request head bounded by ``max_header_bytes`` (h11), at most
    ``max_connections`` at once (uvicorn answers 503 beyond), proxy headers
    trusted only from ``trusted_proxies``, 5 s for requests in flight at
    shutdown."""
    import uvicorn

    proxies = list(settings.proxies)
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=log_level,
        lifespan="on",
        proxy_headers=bool(proxies),
        forwarded_allow_ips=proxies or None,
        server_header=False,
        access_log=False,
        # h11, chosen explicitly: its bound on the request head is the one set here
        # (httptools, which "auto" would pick when installed, has none to set)
        http="h11",
        h11_max_incomplete_event_size=settings.max_header_bytes,
        limit_concurrency=settings.max_connections,
        timeout_graceful_shutdown=5,
    )
