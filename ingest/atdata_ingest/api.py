"""The consumer API of the ingestion service (seed 002 §9-10): other apps read
events from this log, never from the relay.

Endpoints (FastAPI; the OpenAPI document is served at ``/openapi.json``):

- ``GET /events?since=&event_type=&collection=&repo=&action=&include=&limit=``:
  a page of the log in ``(seq, idx)`` order, rows with ``seq > since`` only.
  ``limit`` defaults to 100, at most 1000 (more is a 422). ``include`` (e.g.
  ``account,identity,sync``) returns the repository events of those types as
  well (of every repo, or of ``repo=``), whatever ``collection=``/``action=``
  select: those filters match commit operations only, and an indexer of
  ``science.alt.dataset.*`` must still learn that an account was deleted or
  taken down (``#account``), a handle changed (``#identity``) or a repo was
  reset (``#sync``). A page never ends in the middle of a commit: it holds
  every matching row of each ``seq`` it includes, so a consumer that resumes
  from ``cursor`` loses nothing. ``cursor`` is the highest ``seq`` included
  when ``more``; otherwise the *scanned horizon*, ``ingest_cursor.last_seq`` in
  the page query's own snapshot (at least ``since``; see
  :func:`_next_cursor` for why no event committed later can have a lower
  seq), so a filtered consumer moves over seqs that matched nothing instead of
  scanning them again. A page also holds at most
  ``page_bytes`` (8 MiB) of record JSON, the records' text as PostgreSQL prints
  it (``octet_length(record::text)``), which is what the page embeds. Both
  bounds give way only to a page's *first* commit, which always comes whole: a
  commit holds at most 200 operations and a 2,000,000-byte CAR
  (``com.atproto.sync.subscribeRepos#commit`` ``ops`` and ``blocks``
  maxLength), so a commit is bounded. ``more`` says that rows after ``cursor``
  matched already. ``trimmed`` is ``null`` unless ``since`` is older than the
  oldest seq the log still keeps (retention dropped the days after it): then
  ``{"name": "OutdatedCursor", "since", "oldest_kept", "message"}`` and the page
  is served from the oldest kept row, as a relay goes on after ``#info
  OutdatedCursor`` (decision: a 410 would stall every consumer that does not
  handle it, and the only way on is the same anyway: the oldest kept row, or a
  backfill from elsewhere, which the consumer decides with the gap in hand).
  ``since=0`` (from the oldest kept) never carries it.
- ``GET /events/stream?since=&…``: the same filters (``include`` too) as
  server-sent events (``text/event-stream``). Each row is one SSE event whose
  ``data`` is the row's JSON; the *last* row of each ``seq`` carries ``id: <seq>``, so the
  ``Last-Event-ID`` a client reconnects with never skips half a commit (the rows
  of a partly received commit come again: at-least-once). Resumes from
  ``Last-Event-ID`` (the header wins over ``since``: an ``EventSource``
  reconnects to the same URL), else ``since``, else the current cursor (live
  tail). New rows are found by ``LISTEN ingest_events`` (the ingester runs
  ``NOTIFY ingest_events, '<last seq>'`` in each batch transaction) with a poll
  of ``ingest_cursor`` every ``poll_seconds`` as the fallback. After
  ``heartbeat_seconds`` without a write the server sends ``: ping`` and, when it
  has scanned the log past the last id sent, ``id: <scanned seq>`` in the same
  message: a message with an id and no data sets the client's last event ID
  without dispatching an event (HTML Living Standard, "Server-sent events",
  dispatch), so a filtered stream that matched nothing for a while resumes from
  where the server had scanned, not from its last match. Pages are bounded like
  ``/events`` (``stream_page`` rows, ``page_bytes``); the buffer of a connection
  is one page plus the server's socket buffer: a client that does not take a
  chunk within ``send_timeout_seconds`` is dropped (it reconnects and resumes
  from the log), never buffered without limit. Two named events (not rows: an
  ``EventSource`` dispatches them to listeners of that name, never to
  ``onmessage``): ``event: info`` with ``data`` ``EventsPage.trimmed``'s object
  before the rows that follow a gap of trimmed seqs; ``event: error`` with
  ``data: {"error", "message"}`` as the stream's last message when its token is
  revoked (``InvalidToken``, ``token revoked``) or its scope no longer covers
  the stream's filters (``ScopeDenied``): an open stream re-reads its token
  (one lookup by primary key) every ``token_recheck_seconds`` (5 s), so a
  revocation ends it within that time.
- ``GET /health``: no authentication (the deployment platform probes it; it
  shows only the ingester's status), answered from a cache of
  ``health_cache_seconds`` (1 s; concurrent misses share one query). 200 with
  ``status`` ``ok`` or ``stopped`` (no ingester recorded as running: the API
  still serves the log); 503 with ``relay_unreachable`` when an ingester is
  recorded as running (``ingest_cursor.ingester_pid`` set) and its
  ``relay_state`` (schema 3; read by name, so NULL on older schemas) is
  ``failing``, or ``connecting`` for more than ``relay_connect_seconds`` (30 s;
  ``relay_error`` says why), with ``stale`` when it is running and the cursor
  row has not been updated for ``stale_after_seconds`` (0 turns this off), or
  ``unavailable`` when PostgreSQL does not answer within
  ``health_timeout_seconds``.

Query parameters not declared for an endpoint, and declared ones given twice,
are a 422 ``InvalidRequest`` naming the parameter and the closest declared one
(``colection=`` must not return an unfiltered page).

Authentication (:mod:`.tokens`): ``Authorization: Bearer atdi_<id>_<secret>`` on
``/events`` and ``/events/stream``; the request's filters must be inside the
token's scope (403 ``ScopeDenied``; a token scoped to collections may ask for
``include``d repository events, a token scoped to event types only for the
types it lists); each request, and each stream opened, takes
one from the token's bucket (:mod:`.ratelimit`; 429 with ``Retry-After``); at most
``max_streams_per_token`` streams per token are open at once (429
``TooManyStreams``). Failed authentications are throttled per client address and
for the process (:class:`~.ratelimit.AuthThrottle`: 429 ``RateLimitExceeded``
before any lookup). Every 401 carries ``WWW-Authenticate: Bearer`` (RFC 6750
§3), with ``error="invalid_token"`` for a token that was presented; a 403 carries
``error="insufficient_scope"``. The API is read-only: its connections run with
``default_transaction_read_only`` on.

Work is metered: requests take a connection from the request pool
(``pool_max``) within ``acquire_timeout_seconds`` or are answered 503
``Unavailable`` (never queued without bound); streams read from a pool of their
own (``stream_pool_max``), so open streams never starve ``/events``. Neither
pool keeps a floor of connections (asyncpg's floor keeper logs a traceback per
failed reconnection while PostgreSQL is down): connections are opened on
demand, and an outage is logged once (:class:`Outage`: one WARNING when it
starts, one INFO when PostgreSQL answers again).

Every error has one JSON shape, ``{"error": Name, "message": text}``:
401 ``AuthRequired`` / ``InvalidToken``, 403 ``ScopeDenied``, 404 ``NotFound``,
405 ``MethodNotAllowed``, 422 ``InvalidRequest``, 429 ``RateLimitExceeded`` /
``TooManyStreams``, 503 ``Unavailable`` (PostgreSQL down, no connection free in
time, or too many streams overall), 500 ``InternalServerError``.

Run it with :func:`serve` (the CLI's ``atdata-ingest serve``) or any ASGI server
on ``create_app(database_url)`` with a single worker (buckets and stream counts
are per process). :func:`serve` ends open streams at once on SIGTERM/SIGINT; under
another server they end when the app's lifespan shuts down.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as _dt
import difflib
import logging
import math
import operator
import signal
import threading
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from types import FrameType
from typing import Annotated, Any, Final, Literal, NamedTuple

import asyncpg
import orjson
from fastapi import Depends, FastAPI, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Message, Receive, Scope, Send

from . import __version__
from .ratelimit import AuthThrottle, RateLimiter, retry_after_header
from .schema import EVENT_COLUMNS
from .tokens import (
    DID_PATTERN,
    EVENT_TYPES,
    INVALID_TOKEN,
    MAX_DID_LENGTH,
    MAX_NSID_LENGTH,
    MAX_TOKEN_LENGTH,
    NSID_GLOB_PATTERN,
    AuthError,
    TokenError,
    TokenInfo,
    token_by_id,
    verify_token,
)

__all__ = [
    "MAX_LIMIT",
    "NOTIFY_CHANNEL",
    "PAGE_BYTES",
    "REPO_EVENT_TYPES",
    "ApiLimits",
    "Filters",
    "Page",
    "create_app",
    "fetch_page",
    "serve",
]

log = logging.getLogger("atdata_ingest.api")

#: The channel the ingester NOTIFYs (payload: the last committed ``seq``, decimal).
NOTIFY_CHANNEL: Final = "ingest_events"
#: ``limit`` of ``GET /events``: default and maximum (seed 002 §9).
DEFAULT_LIMIT: Final = 100
MAX_LIMIT: Final = 1000
MAX_SEQ: Final = 2**63 - 1
#: Bytes of record JSON a page holds (its first commit excepted): ``page_bytes``.
PAGE_BYTES: Final = 8 * 1024 * 1024
#: Rows of one ``seq`` a page may hold beyond ``limit`` (a commit has at most 200
#: operations; more means a bug upstream, answered with a 500, never truncated).
MAX_ROWS_PER_SEQ: Final = 10_000
_ACTIONS: Final = ("create", "update", "delete")
#: Repository events, bound to no collection, that ``include=`` adds to a
#: selection (the ``event_type`` of their rows).
REPO_EVENT_TYPES: Final = ("account", "identity", "sync")
_COLUMNS_SQL: Final = ", ".join(EVENT_COLUMNS)
_RECORD_AT: Final = EVENT_COLUMNS.index("record")


@dataclasses.dataclass(frozen=True, slots=True)
class ApiLimits:
    """Bounds and timings of the API (seconds unless named otherwise)."""

    #: rows fetched per query by a stream (its buffer)
    stream_page: int = 500
    #: bytes of record JSON per page of /events and of a stream (a page's first
    #: commit comes whole even when it is larger)
    page_bytes: int = PAGE_BYTES
    #: bytes of SSE text per write to the socket (a chunk holds whole events)
    stream_chunk_bytes: int = 64 * 1024
    #: a heartbeat (``: ping``, with ``id: <scanned seq>``) after this long
    #: without a write
    heartbeat_seconds: float = 15.0
    poll_seconds: float = 1.0
    #: a write that does not complete within this drops the client
    send_timeout_seconds: float = 15.0
    max_streams_per_token: int = 4
    max_streams: int = 256
    #: /health answers 503 "stale" after this long without a cursor update (0: off)
    stale_after_seconds: float = 60.0
    #: /health answers 503 "relay_unreachable" when a running ingester's
    #: ``relay_state`` has been ``connecting`` for longer than this (``failing``:
    #: at once)
    relay_connect_seconds: float = 30.0
    #: an open stream re-reads its token (revoked? scope?) at least this often
    token_recheck_seconds: float = 5.0
    #: the cursor poll re-reads the first seq stored today this often (it
    #: spares consumers past it the probe for trimmed seqs: _oldest_sql)
    gap_bound_seconds: float = 10.0
    #: /health answers from a cache this old at most (0: every request queries)
    health_cache_seconds: float = 1.0
    #: the request pool (/events, token lookups, /health); ``pool_min``
    #: connections are opened at start (asyncpg ``init_size``), none is kept
    #: open by force (``min_size`` 0: asyncpg's floor keeper would log a
    #: traceback per reconnection attempt while PostgreSQL is down)
    pool_min: int = 1
    pool_max: int = 8
    #: a request that gets no connection within this is answered 503 Unavailable
    acquire_timeout_seconds: float = 2.0
    #: the pool streams read from (they queue among themselves, never in front of
    #: requests) and the cursor poll
    stream_pool_max: int = 2
    statement_timeout_ms: int = 10_000
    health_timeout_seconds: float = 2.0
    #: failed authentications per client address: refill per second, bucket size
    auth_fail_per_ip_rate: float = 1.0
    auth_fail_per_ip_burst: int = 20
    #: failed authentications of the whole process (addresses that succeeded in
    #: the last ``auth_trust_seconds`` skip this bucket)
    auth_fail_rate: float = 50.0
    auth_fail_burst: int = 200
    auth_trust_seconds: float = 3600.0

    def __post_init__(self) -> None:
        if self.page_bytes < 1 or self.stream_page < 1:
            raise ValueError("page_bytes and stream_page must be >= 1")
        if self.pool_max < 1 or self.stream_pool_max < 1:
            raise ValueError("pool_max and stream_pool_max must be >= 1")
        if not self.token_recheck_seconds > 0 or not self.gap_bound_seconds > 0:
            raise ValueError("token_recheck_seconds and gap_bound_seconds must be > 0")
        if not self.relay_connect_seconds >= 0:
            raise ValueError("relay_connect_seconds must be >= 0")


# --------------------------------------------------------------------------- models


class ErrorBody(BaseModel):
    """Every error response (XRPC-like)."""

    error: str = Field(description="AuthRequired, InvalidToken, ScopeDenied, …")
    message: str


class EventRow(BaseModel):
    """One row of ``ingest_events`` (see :data:`atdata_ingest.schema.EVENT_COLUMNS`)."""

    model_config = ConfigDict(extra="forbid")

    seq: int = Field(description="the frame's seq (relay sequence number)")
    idx: int = Field(description="operation index within the commit, else 0")
    event_type: str = Field(description="commit | identity | account | sync | info")
    action: str | None = Field(description="create | update | delete (commits)")
    repo: str = Field(description="the repository's DID")
    collection: str | None = Field(description="NSID of the record's collection")
    rkey: str | None
    cid: str | None = Field(description="record CID (create, update)")
    prev_cid: str | None = Field(description="previous record CID (update, delete)")
    rev: str | None = Field(description="the commit's revision TID")
    commit_cid: str | None = Field(description="CID of the signed commit block")
    record: dict[str, Any] | None = Field(
        description="the record in the JSON data model; other events: their body"
    )
    valid: str | None = Field(description="'ok', a lexicon rule ID, or null")
    verified: bool | None = Field(description="commit signature good; null: unchecked")
    event_time: _dt.datetime | None = Field(description="the event's time field")
    indexed_at: _dt.datetime = Field(description="when this service stored it")
    verify_rule: str | None = Field(
        default=None,
        description="why a checked commit or #sync is not verified (REV_STALE, "
        "PROOF_INCOMPLETE, IDENTITY_UNRESOLVED, ...); null when verified or "
        "unchecked",
    )


_missing = set(EVENT_COLUMNS) - set(EventRow.model_fields)
assert not _missing, f"EventRow lacks the log's columns {sorted(_missing)}"


class Trimmed(BaseModel):
    """``EventsPage.trimmed``: rows after ``since`` are gone from the log."""

    name: Literal["OutdatedCursor"] = Field(
        description="as a relay's #info OutdatedCursor"
    )
    since: int = Field(description="the since= of the request")
    oldest_kept: int = Field(
        description="the oldest seq the log still holds (its horizon + 1 when it "
        "holds none): rows with since < seq < oldest_kept were trimmed by "
        "retention (or never stored here) and cannot be served"
    )
    message: str


class EventsPage(BaseModel):
    """A page of ``GET /events``."""

    events: list[EventRow]
    cursor: int = Field(
        description="pass it as since= to continue. With more: the highest seq "
        "included. Without more: the scanned horizon, the log's committed "
        "seq (ingest_cursor.last_seq) in the snapshot the page was read from "
        "(one less when the filters can match #info rows, which take the seq "
        "of the event before them), and never below since or the highest seq "
        "included: no matching row at or below it is missing from the page, "
        "and a row committed later has a higher seq, so a filtered consumer "
        "moves past seqs that matched nothing"
    )
    more: bool = Field(description="rows after cursor matched already")
    trimmed: Trimmed | None = Field(
        default=None,
        description="null, unless since is older than the oldest seq the log "
        "still keeps (retention trimmed the rows after since): the page is "
        "then served from the oldest kept row, as a relay continues after "
        "#info OutdatedCursor, and this object says which seqs are missing. "
        "A consumer that must not miss events stops or backfills from "
        "elsewhere; others log it and go on. since=0 (from the oldest kept) "
        "and a since at or past the log's committed seq never carry it",
    )


class Health(BaseModel):
    """``GET /health``. Times are seconds; null when unknown."""

    status: Literal["ok", "stopped", "stale", "relay_unreachable", "unavailable"]
    last_seq: int | None = Field(description="seq of the last committed event")
    source: str | None = Field(description="relay or PDS the seq space belongs to")
    lag_seconds: float | None = Field(description="now - newest event_time")
    staleness_seconds: float | None = Field(description="now - cursor update time")
    newest_event_time: _dt.datetime | None
    cursor_updated_at: _dt.datetime | None
    buffer_fill: float | None = Field(description="the ingester's buffer fill")
    buffer_max: int | None = Field(description="the ingester's buffer size (events)")
    dead_letters: int | None = Field(description="frames kept in ingest_dead_letters")
    gaps: int | None = Field(description="seq gaps the ingester detected")
    ingester_pid: int | None
    ingester_started_at: _dt.datetime | None
    relay_state: str | None = Field(
        description="the ingester's relay connection: connecting | connected | "
        "failing (null before schema 3)"
    )
    relay_error: str | None = Field(
        description="why the last connection attempt failed (at most 1000 characters)"
    )
    relay_state_since: _dt.datetime | None
    relay_state_seconds: float | None = Field(description="now - relay_state_since")
    last_frame_at: _dt.datetime | None = Field(
        description="when the ingester last read a frame from the relay"
    )
    last_info: dict[str, Any] | None = Field(
        description="the last #info frame the ingester read, "
        "{name, message, after_seq, received_at} (an #info has no seq of its own: "
        "a consumer past after_seq never meets its row in /events)"
    )
    streams: int = Field(description="SSE connections open on this API process")
    listening: bool = Field(description="LISTEN ingest_events connection is up")
    version: str


def _err(description: str) -> dict[str, Any]:
    return {"model": ErrorBody, "description": description}


_RETRY_AFTER: Final = {
    "Retry-After": {
        "description": "seconds to wait (integer)",
        "schema": {"type": "integer", "minimum": 1},
    }
}
_BUG: Final[dict[int | str, dict[str, Any]]] = {
    500: _err("InternalServerError: a bug (the message says nothing more)")
}
_ERRORS: Final[dict[int | str, dict[str, Any]]] = {
    401: {
        **_err(
            "AuthRequired (no bearer token) or InvalidToken (malformed, unknown, "
            "revoked)"
        ),
        "headers": {
            "WWW-Authenticate": {
                "description": 'Bearer (RFC 6750 §3); Bearer error="invalid_token" '
                "when a token was presented",
                "schema": {"type": "string"},
            }
        },
    },
    403: {
        **_err("ScopeDenied: a filter is outside the token's scope"),
        "headers": {
            "WWW-Authenticate": {
                "description": 'Bearer error="insufficient_scope" (RFC 6750 §3.1)',
                "schema": {"type": "string"},
            }
        },
    },
    422: _err(
        "InvalidRequest: a parameter is missing, malformed, out of range, "
        "unknown (the message names it and the closest known one) or given "
        "more than once"
    ),
    429: {
        **_err(
            "RateLimitExceeded (the token's rate, or too many failed "
            "authentications from this address or overall) or TooManyStreams "
            "(the token's open streams); see Retry-After"
        ),
        "headers": _RETRY_AFTER,
    },
    **_BUG,
}


def _unavailable(stream: bool) -> dict[int | str, dict[str, Any]]:
    why = (
        "Unavailable: PostgreSQL does not answer, or no database connection is "
        "free within the acquire timeout"
    )
    if stream:
        why += ", or the server has its maximum of streams open (max_streams)"
    return {503: {**_err(why + "; see Retry-After"), "headers": _RETRY_AFTER}}


# --------------------------------------------------------------------------- errors


class ApiError(Exception):
    """An error response: ``status``, ``error`` name, ``message``, extra headers."""

    def __init__(
        self,
        status: int,
        error: str,
        message: str,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(f"{status} {error}: {message}")
        self.status = status
        self.error = error
        self.message = message
        self.headers = headers or {}


def _error_response(
    status: int, error: str, message: str, headers: dict[str, str] | None = None
) -> Response:
    return Response(
        orjson.dumps({"error": error, "message": message}),
        status_code=status,
        media_type="application/json",
        headers=headers,
    )


#: Exceptions that mean "PostgreSQL is not answering" (503, not 500).
_UNAVAILABLE: Final = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.InsufficientResourcesError,  # too many connections
    asyncpg.exceptions.InvalidCatalogNameError,  # the database was dropped
)

_HTTP_NAMES: Final = {
    400: "InvalidRequest",
    404: "NotFound",
    405: "MethodNotAllowed",
    406: "NotAcceptable",
    413: "PayloadTooLarge",
    415: "UnsupportedMediaType",
}


def _install_error_handlers(app: FastAPI) -> None:
    async def on_api_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        return _error_response(exc.status, exc.error, exc.message, exc.headers)

    async def on_http(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        name = _HTTP_NAMES.get(exc.status_code, "Error")
        return _error_response(
            exc.status_code, name, str(exc.detail), dict(exc.headers or {})
        )

    async def on_validation(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        parts = []
        for e in exc.errors()[:5]:
            where = ".".join(str(p) for p in e.get("loc", ()))
            parts.append(f"{where}: {e.get('msg', 'invalid')}")
        return _error_response(422, "InvalidRequest", "; ".join(parts) or "invalid")

    async def on_unavailable(request: Request, exc: Exception) -> Response:
        _state(request).outage.failed(request.url.path, exc)
        return _error_response(
            503, "Unavailable", "the event log is unavailable", {"Retry-After": "1"}
        )

    async def on_bug(request: Request, exc: Exception) -> Response:
        return _error_response(500, "InternalServerError", "internal error")

    app.add_exception_handler(ApiError, on_api_error)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(RequestValidationError, on_validation)
    for cls in _UNAVAILABLE:
        app.add_exception_handler(cls, on_unavailable)
    app.add_exception_handler(Exception, on_bug)


# --------------------------------------------------------------------------- queries


@dataclasses.dataclass(frozen=True, slots=True)
class Filters:
    """The filters of ``/events`` and ``/events/stream`` (syntax already checked).

    ``collection`` is an NSID (exact match), ``*`` (any operation), or a prefix
    glob ``a.b.*``: collections starting with ``a.b.``, the byte range
    ``["a.b.", "a.b/")`` (``/`` follows ``.``). That range is a prefix only in
    byte order: under a ``C``/``POSIX`` column collation (``byte_order``) it is
    written plainly and uses the ``(collection, seq)`` index; under any other
    collation it is compared ``COLLATE "C"``, which is right but cannot use an
    index built in another collation (declare the column ``COLLATE "C"``).

    ``include`` (a subset of :data:`REPO_EVENT_TYPES`): repository events of
    those types are selected *as well as* the rows the other filters select,
    restricted only by ``repo`` (they belong to no collection and have no
    action). The selection is ``main OR (event_type IN include AND repo)``."""

    event_type: str | None = None
    collection: str | None = None
    repo: str | None = None
    action: str | None = None
    include: tuple[str, ...] = ()

    def extra_types(self) -> tuple[str, ...]:
        """The types of ``include`` whose rows the other filters do not select
        already (in :data:`REPO_EVENT_TYPES` order): all of them when
        ``collection`` or ``action`` narrows the selection to commit operations,
        else those other than ``event_type`` (none without ``event_type``:
        every row of every type is selected then)."""
        narrowed = self.collection is not None or self.action is not None
        return tuple(
            t
            for t in REPO_EVENT_TYPES
            if t in self.include
            and (narrowed or (self.event_type is not None and self.event_type != t))
        )

    def can_match_info(self) -> bool:
        """Whether ``#info`` rows can match (they have no collection, no action
        and no DID: ``repo`` is ``''``)."""
        return (
            self.collection is None
            and self.action is None
            and self.repo is None
            and self.event_type in (None, "info")
        )

    def branches(self, *, byte_order: bool = False) -> tuple[list[str], list[Any]]:
        """``(conditions, params)``: one condition per disjoint part of the
        selection, the rows of the filters first, then one per type of
        :meth:`extra_types`; each starts with ``seq > $1`` (``$1`` stands for
        ``since``), and filter values are only ever parameters ``$2…`` shared by
        all of them. Each part can walk an index of its own in seq order:
        ``(collection, seq)``, ``(event_type, seq)`` or ``(repo, seq)``."""
        clauses = ["seq > $1"]
        params: list[Any] = []

        def param(value: Any) -> str:
            params.append(value)
            return f"${len(params) + 1}"

        if self.event_type is not None:
            clauses.append(f"event_type = {param(self.event_type)}")
        if self.action is not None:
            clauses.append(f"action = {param(self.action)}")
        repo = None if self.repo is None else param(self.repo)
        if repo is not None:
            clauses.append(f"repo = {repo}")
        c = self.collection
        if c == "*":
            clauses.append("collection IS NOT NULL")
        elif c is not None and c.endswith(".*"):
            prefix = c[:-1]  # "a.b." ; the upper bound "a.b/" ('/' follows '.')
            col = "collection" if byte_order else 'collection COLLATE "C"'
            clauses.append(
                f"{col} >= {param(prefix)} AND {col} < {param(prefix[:-1] + '/')}"
            )
        elif c is not None:
            clauses.append(f"collection = {param(c)}")
        out = [" AND ".join(clauses)]
        for kind in self.extra_types():
            extra = ["seq > $1", f"event_type = {param(kind)}"]
            if repo is not None:
                extra.append(f"repo = {repo}")
            out.append(" AND ".join(extra))
        return out, params

    def where(self, *, byte_order: bool = False) -> tuple[str, list[Any]]:
        """``(sql, params)``: the whole selection as one condition (the
        :meth:`branches` OR-ed), ``$1`` standing for ``since``; filter values
        are only ever parameters ``$2…``. ``byte_order``: the collection
        column's collation is C or POSIX."""
        parts, params = self.branches(byte_order=byte_order)
        if len(parts) == 1:
            return parts[0], params
        return " OR ".join(f"({p})" for p in parts), params


def _source_sql(parts: Sequence[str], n: int) -> str:
    """At most ``$n`` rows of the selection in ``(seq, idx)`` order: one ordered,
    limited scan per part (:meth:`Filters.branches`; the parts are disjoint, so
    ``UNION ALL`` neither loses nor repeats a row), merged."""
    scans = [
        f"SELECT {_COLUMNS_SQL} FROM ingest_events WHERE {p} "
        f"ORDER BY seq, idx LIMIT ${n}"
        for p in parts
    ]
    if len(scans) == 1:
        return scans[0]
    union = " UNION ALL ".join(f"({s})" for s in scans)
    return f"SELECT * FROM ({union}) u ORDER BY seq, idx LIMIT ${n}"


def _page_sql(parts: Sequence[str], n: int) -> str:
    """The page query: at most ``$n`` matching rows, each with its record as
    JSON text (``record::text``, computed once per row, after the LIMIT) when
    that text is at most ``$n+1`` bytes, else NULL, then the text's length in
    bytes (NULL for a NULL record), then ``ingest_cursor.last_seq`` (the
    horizon) read by the same statement, so in the same snapshot as the rows,
    then the oldest seq kept (:func:`_oldest_kept`; ``$n+2`` is its bound,
    :func:`_oldest_sql`).

    The cursor row is the outer side of a left join (``LIMIT 1``: the planner
    then knows it is one row), so an empty page is one row of NULLs and the
    horizon. The join has no ``ORDER BY``: one would sort the page again
    (+30% on a 1000-row page); the nested loop over one outer row keeps the
    subquery's ``(seq, idx)`` order, and :func:`fetch_page` restores that order
    whatever the plan (a sort that does nothing on ordered input)."""
    cols = ", ".join(
        f"CASE WHEN octet_length(s.t) <= ${n + 1} THEN s.t END"
        if c == "record"
        else f"s.{c}"
        for c in EVENT_COLUMNS
    )
    return (
        f"SELECT {cols}, octet_length(s.t), c.last_seq, c.oldest "
        f"FROM (SELECT last_seq, {_oldest_sql(f'${n + 2}')} AS oldest "
        f"FROM ingest_cursor LIMIT 1) c "
        f"LEFT JOIN (SELECT q.*, q.record::text AS t "
        f"FROM ({_source_sql(parts, n)}) q ORDER BY q.seq, q.idx OFFSET 0) s "
        f"ON true"
    )


def _oldest_sql(bound: str) -> str:
    """The oldest seq the log keeps, when it matters (see :func:`_oldest_kept`):
    NULL unless ``0 < since < bound - 1`` and ``since < last_seq``; ``bound``
    (a parameter) is a seq still kept whatever retention did since it was
    read (:meth:`SeqNotifier.gap_bound`; :data:`MAX_SEQ` when none is known),
    so ``since + 1 >= bound`` cannot be behind a gap. The probe of every
    partition's first seq costs about 0.3 ms to *plan* (the API plans each
    page for its values, ``force_custom_plan``); with the values at hand a
    false ``0 < since < bound - 1`` folds the CASE away before planning, so a
    consumer at the live tail never pays for it, and a true one reads it as an
    InitPlan in the page's own snapshot. (``::bigint``: the first use of a
    parameter in the statement fixes its type.)"""
    return (
        f"CASE WHEN $1::bigint > 0 AND $1::bigint < {bound}::bigint - 1 "
        f"AND $1::bigint < last_seq THEN coalesce("
        f"(SELECT min(seq) FROM ingest_events), last_seq + 1) END"
    )


_FILL_SQL: Final = """
SELECT e.seq, e.idx, e.record::text
  FROM ingest_events e
  JOIN unnest($1::bigint[], $2::integer[]) AS k(seq, idx)
    ON e.seq = k.seq AND e.idx = k.idx
 WHERE e.seq >= $3 AND e.seq <= $4
"""

Row = tuple[Any, ...]
"""One ``ingest_events`` row: the values of :data:`EVENT_COLUMNS` in order, the
record as JSON text (or None)."""
_SEQ_IDX: Final = operator.itemgetter(0, 1)  # a row's (seq, idx)


def _commit_start(rows: Sequence[Any], i: int) -> int:
    """Index of the first row of the ``seq`` of ``rows[i]`` (rows in seq order)."""
    seq = rows[i][0]
    while i > 0 and rows[i - 1][0] == seq:
        i -= 1
    return i


class Page(NamedTuple):
    """What :func:`fetch_page` returns."""

    #: the matching rows (:data:`Row` tuples), whole commits, ``(seq, idx)`` order
    rows: list[Row]
    #: rows after ``cursor`` matched already (fetch again at once)
    more: bool
    #: the ``since`` of the next page: the last seq of ``rows`` when ``more``,
    #: else the scanned horizon (:func:`_next_cursor`), never below ``since``
    cursor: int
    #: ``ingest_cursor.last_seq`` in the page query's snapshot (0 when the
    #: cursor row is missing): every seq up to it was committed and visible
    horizon: int
    #: the oldest seq the log keeps when rows after ``since`` were trimmed (a
    #: gap: ``since < seq < oldest_kept`` is missing), else ``None``
    #: (:func:`_oldest_kept`)
    oldest_kept: int | None = None


def _oldest_kept(since: int, oldest: int | None) -> int | None:
    """``oldest`` (the page query's ``min(seq)`` of the log, or its horizon + 1
    when it holds no row) when rows after ``since`` are missing, else ``None``.

    Missing means ``since + 1 < oldest``: the seqs in between were committed
    (``since`` is below the horizon, every seq up to which was committed) and
    are gone; retention trims whole days of the oldest rows (seed 002 §13). The
    query computes ``oldest`` only for ``0 < since < horizon`` and ``since + 1``
    below a seq known to be kept (:func:`_oldest_sql`): ``since=0`` asks for
    everything kept (a consumer without a cursor: nothing to miss), and
    nothing at or after the horizon or a kept seq can have been trimmed. Read in the
    page's snapshot, so it agrees with the rows (a partition dropped meanwhile
    waits for the statement: DROP takes ACCESS EXCLUSIVE). Seqs a relay
    skipped, or frames kept only as dead letters, right after ``since`` can
    make it report a gap of rows that never were in the log; it never misses
    a trimmed one."""
    if oldest is None or oldest <= since + 1:
        return None
    return int(oldest)


def _next_cursor(f: Filters, since: int, rows: Sequence[Row], horizon: int) -> int:
    """The cursor of a page that says ``more: false``: the scanned horizon.

    ``horizon`` is ``ingest_cursor.last_seq`` read by the same statement as the
    rows (one statement, one snapshot under READ COMMITTED). The ingester
    advances ``last_seq`` in the transaction that stores the batch, and its
    cursor guard stores only seqs above the ``last_seq`` it locked (one
    ingester at a time: the advisory lock), so every event with a seq up to
    ``horizon`` was committed before that snapshot and the query saw it: when
    fewer rows than the limit matched, no matching row with seq <= horizon was
    left out, and any row committed later has a seq above ``horizon``. The
    cursor may then move to ``horizon`` even when nothing matched, so a
    filtered consumer does not scan the same seqs again. Reading ``last_seq``
    *after* the page (another snapshot) would not be safe: a batch committed in
    between would be skipped.

    One exception: an ``#info`` row takes the seq of the event read before it
    (:mod:`.rows`) and may be committed in a later batch at a seq equal to
    ``horizon``. When the filters can match ``#info`` rows the cursor stops one
    short of ``horizon`` (the next page rescans that one seq). A seq space
    restarted on purpose (``ingest_cursor`` reset to 0 for a new source) is
    not covered: every consumer cursor is void then."""
    last = int(rows[-1][0]) if rows else since
    safe = horizon - 1 if f.can_match_info() else horizon
    return max(since, last, safe)


async def fetch_page(
    conn: Any,
    filters: Filters,
    since: int,
    limit: int,
    *,
    byte_order: bool = False,
    max_bytes: int = PAGE_BYTES,
    gap_bound: int | None = None,
) -> Page:
    """A :class:`Page` of the matching rows with ``seq > since`` in ``(seq, idx)``
    order (:data:`Row` tuples), whole commits only, at most ``limit`` rows and
    ``max_bytes`` bytes of record JSON, except that the first commit comes whole
    however large (see the module docstring); ``more`` when matching rows remain
    after the last ``seq`` returned; ``cursor`` where the next page starts.
    ``conn``: an asyncpg connection (or pool); ``byte_order``: see
    :meth:`Filters.where`; ``gap_bound``: a seq known to be still kept
    (:meth:`SeqNotifier.gap_bound`), which spares consumers at or past it the
    probe for trimmed seqs (``None``: probe whenever ``0 < since <
    horizon``).

    Memory: the first query carries a record inline only when its text is at
    most ``max_bytes // (limit + 1)`` bytes, so it transfers at most
    ``max_bytes`` of records however large they are; the larger records of the
    rows kept are fetched by a second query (at most ``max_bytes`` plus the first
    commit). Raises :class:`ApiError` 503 when rows vanish between the two
    (retention dropped their partition), 500 ``SEQ_TOO_LARGE`` for a seq of more
    than :data:`MAX_ROWS_PER_SEQ` rows. ``oldest_kept``: see
    :func:`_oldest_kept` (rows after ``since`` were trimmed)."""
    if limit < 1 or max_bytes < 1:
        raise ValueError("limit and max_bytes must be >= 1")
    parts, params = filters.branches(byte_order=byte_order)
    n = len(params) + 2
    inline = max(1, max_bytes // (limit + 1))
    bound = MAX_SEQ if gap_bound is None else gap_bound
    got = await conn.fetch(
        _page_sql(parts, n), since, *params, limit + 1, inline, bound
    )
    # got: asyncpg records of EVENT_COLUMNS + the record's size + the horizon +
    # the oldest seq kept; an empty page is one row of NULLs with the horizon
    # (none: no cursor row)
    horizon = int(got[0][-2]) if got and got[0][-2] is not None else 0
    oldest = _oldest_kept(since, got[0][-1]) if got else None
    if not got or got[0][0] is None:
        cursor = _next_cursor(filters, since, (), horizon)
        return Page([], False, cursor, horizon, oldest)
    if len(got) > 1:
        got.sort(key=_SEQ_IDX)  # see _page_sql: already ordered, in practice
    end = len(got) if len(got) <= limit else _commit_start(got, limit)
    if end == 0:
        # One commit has more matching rows than limit: return it whole.
        whole, more = await _whole_commit(conn, filters, byte_order, since, got[0][0])
        cursor = whole[-1][0] if more else _next_cursor(filters, since, whole, horizon)
        return Page(whole, more, int(cursor), horizon, oldest)
    # Keep whole commits while the record bytes fit (the first one always).
    cut = end
    if sum(r[-3] or 0 for r in got[:end]) > max_bytes:
        total, i = 0, 0
        while i < end:
            j, size, seq = i, 0, got[i][0]
            while j < end and got[j][0] == seq:
                size += got[j][-3] or 0
                j += 1
            if i > 0 and total + size > max_bytes:
                cut = i
                break
            total += size
            i = j
    page: list[Row] = [r[:-3] for r in got[:cut]]
    more = cut < len(got)
    withheld = [
        k for k in range(cut) if got[k][_RECORD_AT] is None and got[k][-3] is not None
    ]
    if withheld:
        filled = {
            (f[0], f[1]): f[2]
            for f in await conn.fetch(
                _FILL_SQL,
                [page[k][0] for k in withheld],
                [page[k][1] for k in withheld],
                page[0][0],
                page[-1][0],
            )
        }
        for k in withheld:
            r = page[k]
            text = filled.get((r[0], r[1]))
            if text is None:
                raise ApiError(
                    503,
                    "Unavailable",
                    f"seq {r[0]} was trimmed while its page was read; retry",
                    {"Retry-After": "1"},
                )
            page[k] = (*r[:_RECORD_AT], text, *r[_RECORD_AT + 1 :])
    cursor = int(page[-1][0]) if more else _next_cursor(filters, since, page, horizon)
    return Page(page, more, cursor, horizon, oldest)


async def _whole_commit(
    conn: Any, filters: Filters, byte_order: bool, since: int, seq: int
) -> tuple[list[Row], bool]:
    """Every matching row of ``seq`` (a commit with more rows than the page's
    limit), and whether rows after it match (one ``EXISTS`` per part of the
    selection, each on its own index)."""
    parts, params = filters.branches(byte_order=byte_order)
    where = " OR ".join(f"({p})" for p in parts)
    n = len(params) + 2
    whole = [
        tuple(r)
        for r in await conn.fetch(
            f"SELECT {_COLUMNS_SQL} FROM ingest_events WHERE ({where}) "
            f"AND seq = ${n} ORDER BY idx LIMIT ${n + 1}",
            since,
            *params,
            seq,
            MAX_ROWS_PER_SEQ + 1,
        )
    ]
    if len(whole) > MAX_ROWS_PER_SEQ:
        raise ApiError(
            500,
            "InternalServerError",
            f"seq {seq} has more than {MAX_ROWS_PER_SEQ} rows (SEQ_TOO_LARGE)",
        )
    exists = " OR ".join(
        f"EXISTS (SELECT 1 FROM ingest_events WHERE {p})" for p in parts
    )
    more = await conn.fetchval(f"SELECT {exists}", seq, *params)
    return whole, bool(more)


def _row_dict(row: Any) -> dict[str, Any]:
    d = dict(zip(EVENT_COLUMNS, row, strict=True))
    rec = row[_RECORD_AT]
    if rec is not None:
        d["record"] = orjson.Fragment(rec)  # jsonb text, embedded as is
    return d


def _trimmed(since: int, oldest_kept: int) -> dict[str, Any]:
    """``EventsPage.trimmed`` (and the data of a stream's ``info`` event)."""
    return {
        "name": "OutdatedCursor",
        "since": since,
        "oldest_kept": oldest_kept,
        "message": f"events after seq {since} and before seq {oldest_kept} are "
        "no longer kept (trimmed by retention); continuing from the oldest kept",
    }


def _page_body(
    rows: Sequence[Any], cursor: int, more: bool, trimmed: dict[str, Any] | None
) -> bytes:
    return orjson.dumps(
        {
            "events": [_row_dict(r) for r in rows],
            "cursor": cursor,
            "more": more,
            "trimmed": trimmed,
        }
    )


def _sse_chunks(rows: Sequence[Any], chunk_bytes: int) -> Iterator[bytes]:
    """SSE text of ``rows`` (whole commits), in chunks of about ``chunk_bytes``
    that hold whole events. The last row of each ``seq`` carries ``id: <seq>``."""
    parts: list[bytes] = []
    size = 0
    for i, row in enumerate(rows):
        seq = row[0]
        data = orjson.dumps(_row_dict(row))
        last_of_seq = i + 1 == len(rows) or rows[i + 1][0] != seq
        event = b"data: " + data + (b"\nid: %d\n\n" % seq if last_of_seq else b"\n\n")
        parts.append(event)
        size += len(event)
        if size >= chunk_bytes:
            yield b"".join(parts)
            parts, size = [], 0
    if parts:
        yield b"".join(parts)


# --------------------------------------------------------------------------- notifier


def _on_close(closed: asyncio.Event) -> Any:
    def callback(conn: Any) -> None:
        closed.set()

    return callback


#: :meth:`SeqNotifier.gap_bound`: the first seq stored today (UTC) and the
#: seconds until the next midnight (UTC), both by the database's clock. The
#: condition prunes the older days' partitions at executor start; the first
#: index entry of today's qualifies at once (the default partition, which holds
#: rows only of days without a partition of their own, is walked in seq order
#: until a row of today).
_GAP_BOUND_SQL: Final = """
SELECT (SELECT min(seq) FROM ingest_events
         WHERE indexed_at >= date_trunc('day', now(), 'UTC')),
       extract(epoch FROM date_trunc('day', now(), 'UTC') + interval '1 day'
               - now())::float8
"""


class Outage:
    """Whether PostgreSQL answers, as this process last saw it: one WARNING when
    it stops answering (the first failure of a request, a stream, /health or
    the cursor poll), DEBUG for every further failure, one INFO when it answers
    again (the poll runs every ``poll_seconds``, so that is seen within about
    one poll). Never a traceback: an outage is an expected state.
    ``failures``: failures seen in all; ``outages``: outages begun."""

    def __init__(self) -> None:
        self.down_since: float | None = None
        self.failures = 0
        self.outages = 0
        self._first = ""

    def failed(self, where: str, exc: BaseException) -> None:
        """Count a failure to reach PostgreSQL at ``where`` (a path, or
        ``cursor poll``)."""
        self.failures += 1
        why = f"{type(exc).__name__}: {exc}"[:300]
        if self.down_since is None:
            self.down_since = time.monotonic()
            self.outages += 1
            self._first = why
            log.warning(
                "PostgreSQL unavailable (%s: %s); answering 503 until it is back",
                where,
                why,
            )
        else:
            log.debug("PostgreSQL still unavailable (%s: %s)", where, why)

    def ok(self) -> None:
        """PostgreSQL answered a query."""
        if self.down_since is not None:
            log.info(
                "PostgreSQL available again after %.1fs (%s)",
                time.monotonic() - self.down_since,
                self._first,
            )
            self.down_since = None


class SeqNotifier:
    """The newest committed ``seq`` known to this process, and a broadcast wake-up
    for streams. Fed by ``LISTEN ingest_events`` (payload: the seq) on a dedicated
    connection that is re-opened with backoff when it drops, and by a poll of
    ``ingest_cursor.last_seq`` every ``poll_seconds`` (the fallback), which also
    tells ``outage`` whether PostgreSQL answers."""

    def __init__(
        self,
        dsn: str,
        pool: Any,
        poll_seconds: float,
        outage: Outage | None = None,
        *,
        gap_bound_seconds: float = 10.0,
    ) -> None:
        self._dsn = dsn
        self._pool = pool
        self._poll_seconds = poll_seconds
        self._outage = outage or Outage()
        self.latest = 0
        self._bound: int | None = None
        self._bound_expires = 0.0
        self._bound_every = gap_bound_seconds
        self._bound_read_at = -math.inf
        self.listening = False
        self._changed = asyncio.Event()
        self._poke = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def bump(self, seq: int) -> None:
        """Record that ``seq`` is committed; wake every waiter when it is news."""
        if seq > self.latest:
            self.latest = seq
            changed, self._changed = self._changed, asyncio.Event()
            changed.set()

    async def wait_beyond(self, seq: int) -> None:
        """Return once :attr:`latest` > ``seq`` (callers bound it with a timeout)."""
        while self.latest <= seq:
            await self._changed.wait()

    def _on_notify(self, conn: Any, pid: int, channel: str, payload: str) -> None:
        if len(payload) <= 20 and payload.isdigit():
            self.bump(int(payload))
        else:
            self._poke.set()  # unknown payload: ask the table

    async def poll_once(self) -> None:
        value = await self._pool.fetchval(
            "SELECT last_seq FROM ingest_cursor", timeout=self._poll_seconds + 5
        )
        if value is not None:
            self.bump(int(value))
        now = time.monotonic()
        if now >= self._bound_read_at + self._bound_every:
            row = await self._pool.fetchrow(
                _GAP_BOUND_SQL, timeout=self._poll_seconds + 5
            )
            self._bound_read_at = now
            self._bound = None
            if row is not None and row[0] is not None:
                self._bound = int(row[0])
                self._bound_expires = now + max(0.0, float(row[1]) - 1.0)

    def gap_bound(self) -> int | None:
        """A seq the log keeps whatever retention does before the next
        midnight (UTC): the first seq of the rows stored today, read by the
        poll every ``gap_bound_seconds``. Retention never removes a row
        younger than a day nor the current day's partition (:mod:`.retention`),
        so a consumer whose ``since + 1`` reaches it cannot be behind trimmed
        seqs (:func:`_oldest_sql`). ``None`` when unknown (no row stored
        today, not read yet, or past the midnight it was valid until)."""
        if self._bound is None or time.monotonic() >= self._bound_expires:
            return None
        return self._bound

    async def _poll_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._poke.wait(), self._poll_seconds)
            self._poke.clear()
            try:
                await self.poll_once()
            except _UNAVAILABLE as exc:
                self._outage.failed("cursor poll", exc)
            except Exception as exc:  # noqa: BLE001 - the poll must survive anything
                log.debug("cursor poll failed: %s", exc)
            else:
                self._outage.ok()

    async def _listen_loop(self) -> None:
        backoff = 0.1
        while True:
            conn = None
            try:
                conn = await asyncpg.connect(self._dsn, timeout=10)
                closed = asyncio.Event()
                conn.add_termination_listener(_on_close(closed))
                await conn.add_listener(NOTIFY_CHANNEL, self._on_notify)
                self.listening = True
                backoff = 0.1
                self._poke.set()  # catch up on what was committed while away
                while not closed.is_set():
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(closed.wait(), 10.0)
                    if not closed.is_set():
                        await conn.execute("SELECT 1", timeout=10)  # liveness
            except Exception as exc:  # noqa: BLE001 - reconnect whatever happened
                log.debug("LISTEN connection lost: %s", exc)
            finally:
                self.listening = False
                if conn is not None and not conn.is_closed():
                    conn.terminate()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)

    async def start(self) -> None:
        with contextlib.suppress(*_UNAVAILABLE):
            await self.poll_once()
        self._tasks = [
            asyncio.create_task(self._listen_loop(), name="api-listen"),
            asyncio.create_task(self._poll_loop(), name="api-poll"),
        ]

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t


# --------------------------------------------------------------------------- state


@dataclasses.dataclass
class _State:
    dsn: str
    limits: ApiLimits
    limiter: RateLimiter
    throttle: AuthThrottle
    pool: Any = None
    stream_pool: Any = None
    notifier: SeqNotifier | None = None
    streams: dict[str, int] = dataclasses.field(default_factory=dict)
    streams_total: int = 0
    dropped_slow: int = 0
    byte_order: bool = False
    outage: Outage = dataclasses.field(default_factory=Outage)
    #: the query parameters of each endpoint (:func:`_query_names`)
    known_params: dict[str, frozenset[str]] = dataclasses.field(default_factory=dict)
    #: token re-reads by open streams (:attr:`ApiLimits.token_recheck_seconds`)
    token_rechecks: int = 0
    closing: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    loop: asyncio.AbstractEventLoop | None = None
    #: /health: the last body, when it expires (monotonic), the query in flight
    health_body: dict[str, Any] | None = None
    health_expires: float = 0.0
    health_task: asyncio.Task[dict[str, Any]] | None = None
    health_queries: int = 0

    def request_close(self) -> None:
        """End every open stream now (thread- and signal-safe)."""
        loop = self.loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self.closing.set)


def _state(request: Request) -> _State:
    st = request.app.state.ingest
    assert isinstance(st, _State)
    return st


@contextlib.asynccontextmanager
async def _connection(st: _State) -> AsyncIterator[Any]:
    """A connection of the request pool, within ``acquire_timeout_seconds``, else
    :class:`ApiError` 503 ``Unavailable`` (a busy server sheds load rather than
    queueing requests without bound)."""
    timeout = st.limits.acquire_timeout_seconds
    try:
        conn = await st.pool.acquire(timeout=timeout)
    except TimeoutError:
        raise ApiError(
            503,
            "Unavailable",
            f"no database connection free within {timeout:g}s",
            {"Retry-After": "1"},
        ) from None
    try:
        yield conn
    finally:
        await st.pool.release(conn)


# --------------------------------------------------------------------------- SSE


class _SlowClient(Exception):
    pass


class EventStreamResponse(Response):
    """One SSE connection (see the module docstring). Releases its stream slot when
    it ends, however it ends."""

    media_type = "text/event-stream"

    def __init__(
        self, state: _State, token: TokenInfo, filters: Filters, start: int
    ) -> None:
        super().__init__(status_code=200, media_type=self.media_type)
        self._st = state
        self._token = token
        self._token_id = token.id
        self._filters = filters
        self._start = start

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        stop = asyncio.Event()
        watcher = asyncio.create_task(self._watch(receive, stop))
        closing = asyncio.create_task(self._st.closing.wait())
        try:
            await self._send(
                send,
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [
                        (b"content-type", b"text/event-stream; charset=utf-8"),
                        (b"cache-control", b"no-cache"),
                        (b"x-accel-buffering", b"no"),
                    ],
                },
            )
            await self._run(send, stop, closing)
            await self._send(
                send, {"type": "http.response.body", "body": b"", "more_body": False}
            )
        except _SlowClient:
            self._st.dropped_slow += 1
            log.warning(
                "stream of token %s dropped: the client did not read for %.1fs",
                self._token_id,
                self._st.limits.send_timeout_seconds,
            )
        finally:
            watcher.cancel()
            closing.cancel()
            self._release()

    def _release(self) -> None:
        st = self._st
        st.streams_total -= 1
        n = st.streams.get(self._token_id, 1) - 1
        if n <= 0:
            st.streams.pop(self._token_id, None)
        else:
            st.streams[self._token_id] = n

    @staticmethod
    async def _watch(receive: Receive, stop: asyncio.Event) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                stop.set()
                return

    async def _send(self, send: Send, message: Message) -> None:
        try:
            await asyncio.wait_for(send(message), self._st.limits.send_timeout_seconds)
        except TimeoutError:
            raise _SlowClient from None

    async def _body(self, send: Send, data: bytes) -> None:
        await self._send(
            send, {"type": "http.response.body", "body": data, "more_body": True}
        )

    async def _token_refusal(self, conn: Any) -> tuple[str, str] | None:
        """``(error, message)`` when the stream's token no longer allows it:
        revoked or gone (``InvalidToken``), or its scope changed and no longer
        covers the stream's filters (``ScopeDenied``); ``None`` while it does.
        One lookup by primary key."""
        self._st.token_rechecks += 1
        try:
            now = await token_by_id(conn, self._token_id)
        except TokenError:
            return ("ScopeDenied", "the token's stored scope is not valid")
        if now is None or now.revoked_at is not None:
            return ("InvalidToken", "token revoked")
        if now.scope != self._token.scope:
            reason = _scope_denial(now, self._filters)
            if reason is not None:
                return ("ScopeDenied", reason)
            self._token = now
        return None

    async def _run(self, send: Send, stop: asyncio.Event, closing: Any) -> None:
        st, lim = self._st, self._st.limits
        notifier = st.notifier
        assert notifier is not None
        loop = asyncio.get_running_loop()
        # cursor: last seq sent; scanned: every matching row <= it was sent;
        # last_id: the last id: the client holds; known: the newest committed
        # seq seen (what a wake-up must go beyond); checked: when the token was
        # last read (verified when the stream opened); fetch: a page is due.
        cursor = scanned = last_id = known = self._start
        await self._body(send, b"retry: 2000\n: from seq %d\n\n" % cursor)
        written = checked = loop.time()
        fetch = True
        while not stop.is_set():
            latest = notifier.latest
            if latest > known:
                fetch = True  # news that came after the last wait ended
                known = latest
            recheck = loop.time() - checked >= lim.token_recheck_seconds
            page = None
            try:
                if recheck or fetch:
                    async with st.stream_pool.acquire() as conn:
                        refusal = await self._token_refusal(conn) if recheck else None
                        if refusal is None and fetch:
                            page = await fetch_page(
                                conn,
                                self._filters,
                                max(cursor, scanned),
                                lim.stream_page,
                                byte_order=st.byte_order,
                                max_bytes=lim.page_bytes,
                                gap_bound=notifier.gap_bound(),
                            )
                    if recheck:
                        checked = loop.time()
                    if refusal is not None:
                        error, message = refusal
                        log.info("stream of token %s ends: %s", self._token_id, message)
                        await self._body(
                            send,
                            b"event: error\ndata: %s\n\n"
                            % orjson.dumps({"error": error, "message": message}),
                        )
                        return
            except (*_UNAVAILABLE, ApiError) as exc:
                if isinstance(exc, ApiError):
                    log.warning("stream ends: %s", exc)
                else:
                    st.outage.failed("/events/stream", exc)
                await self._body(send, b": unavailable\n\n")
                return
            if stop.is_set() or closing.done():
                return
            if page is not None:
                if page.oldest_kept is not None:
                    # rows after the stream's position were trimmed: say so
                    # before the rows, as a relay sends #info OutdatedCursor
                    info = _trimmed(max(cursor, scanned), page.oldest_kept)
                    await self._body(
                        send, b"event: info\ndata: %s\n\n" % orjson.dumps(info)
                    )
                rows = page.rows
                if rows:
                    for chunk in _sse_chunks(rows, lim.stream_chunk_bytes):
                        await self._body(send, chunk)
                    cursor = max(cursor, int(rows[-1][0]))
                    last_id = max(last_id, cursor)
                    written = loop.time()
                if page.more:
                    continue
                # the page's cursor: the horizon of its snapshot (_next_cursor)
                scanned = max(scanned, cursor, page.cursor)
                known = max(known, page.horizon, scanned)
            idle = loop.time() - written
            if idle >= lim.heartbeat_seconds:
                if scanned > last_id:
                    # id without data: moves Last-Event-ID, dispatches nothing
                    await self._body(send, b": ping\nid: %d\n\n" % scanned)
                    last_id = scanned
                else:
                    await self._body(send, b": ping\n\n")
                written = loop.time()
                idle = 0.0
            due = min(
                lim.heartbeat_seconds - idle,
                lim.token_recheck_seconds - (loop.time() - checked),
            )
            news = asyncio.create_task(notifier.wait_beyond(known))
            stopped = asyncio.create_task(stop.wait())
            try:
                done, _ = await asyncio.wait(
                    {news, stopped, closing},
                    timeout=max(0.0, due),
                    return_when=asyncio.FIRST_COMPLETED,
                )
            finally:
                news.cancel()
                stopped.cancel()
            if stopped in done or closing in done:
                return
            # a page when something was committed, or before a heartbeat (it
            # carries the scanned seq); a wake-up for the token alone reads
            # only the token
            fetch = news in done or loop.time() - written >= lim.heartbeat_seconds


# --------------------------------------------------------------------------- app


_bearer = HTTPBearer(
    auto_error=False,
    bearerFormat="atdi_<id>_<secret>",
    description="A consumer token from `atdata-ingest token add`.",
)

_NSID_GLOB_RE: Final = f"^(?:{NSID_GLOB_PATTERN})$"
_DID_RE: Final = f"^(?:{DID_PATTERN})$"

_Since = Annotated[
    int, Query(ge=0, le=MAX_SEQ, description="return rows with seq > since")
]
_EventType = Annotated[
    Literal["commit", "identity", "account", "sync", "info"] | None,
    Query(description="event type"),
]
_Collection = Annotated[
    str | None,
    Query(
        max_length=MAX_NSID_LENGTH + 2,
        pattern=_NSID_GLOB_RE,
        description="an NSID, an NSID prefix + '.*' (science.alt.dataset.*), or '*'",
    ),
]
_Repo = Annotated[
    str | None,
    Query(max_length=MAX_DID_LENGTH, pattern=_DID_RE, description="a DID"),
]
_Action = Annotated[
    Literal["create", "update", "delete"] | None,
    Query(description="operation action (commits)"),
]
_Limit = Annotated[
    int, Query(ge=1, le=MAX_LIMIT, description=f"rows per page, at most {MAX_LIMIT}")
]
_INCLUDE_ITEM: Final = "|".join(REPO_EVENT_TYPES)
#: 1 to 3 of the repository event types, comma-separated
_INCLUDE_RE: Final = (
    f"^(?:{_INCLUDE_ITEM})(?:,(?:{_INCLUDE_ITEM})){{0,{len(REPO_EVENT_TYPES) - 1}}}$"
)
_Include = Annotated[
    str | None,
    Query(
        max_length=64,
        pattern=_INCLUDE_RE,
        description=(
            "repository events to return as well, comma-separated: "
            "account, identity, sync. Their rows (of every repo, or of repo= "
            "when given) pass the other filters: with collection= or action= "
            "(which select commit operations only) a consumer still learns "
            "that an account was deleted or taken down (#account), a handle "
            "changed (#identity) or a repo was reset (#sync). A token scoped "
            "to collections may ask for them (public repository metadata, "
            "bound to no collection); a token scoped to event_types must list "
            "each type asked for. Example: "
            "collection=science.alt.dataset.*&include=account,identity,sync"
        ),
        examples=["account,identity,sync"],
    ),
]


#: Characters of an unknown parameter's name echoed in the 422 message.
_ECHO_NAME: Final = 40


def _echo(name: str) -> str:
    """``name`` for an error message: quoted, escaped, at most ``_ECHO_NAME``
    characters."""
    return repr(name[:_ECHO_NAME]) + ("..." if len(name) > _ECHO_NAME else "")


def _query_names(app: FastAPI, path: str) -> frozenset[str]:
    """The query parameters the OpenAPI document declares for ``GET path``
    (built once per app: the document is cached)."""
    st: _State = app.state.ingest
    known = st.known_params.get(path)
    if known is None:
        params = app.openapi()["paths"][path]["get"].get("parameters", [])
        known = frozenset(p["name"] for p in params if p.get("in") == "query")
        st.known_params[path] = known
    return known


def _only_known_params(path: str) -> Any:
    """A dependency refusing, with 422 ``InvalidRequest``, a query parameter
    ``GET path`` does not declare (naming it, and the closest declared one by
    :func:`difflib.get_close_matches`) or one given more than once: a typo
    such as ``colection=`` must not return an unfiltered page. It runs before
    authentication (it needs no token and costs no lookup)."""

    def check(request: Request) -> None:
        known = _query_names(request.app, path)
        seen: dict[str, int] = {}
        for name, _ in request.query_params.multi_items():
            seen[name] = seen.get(name, 0) + 1
        for name, n in seen.items():
            if name not in known:
                close = difflib.get_close_matches(
                    name[:_ECHO_NAME].lower(), sorted(known), n=1, cutoff=0.6
                )
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ApiError(
                    422,
                    "InvalidRequest",
                    f"unknown parameter {_echo(name)}{hint}; {path} takes "
                    + ", ".join(sorted(known)),
                )
            if n > 1:
                raise ApiError(
                    422,
                    "InvalidRequest",
                    f"parameter {name!r} given {n} times; give it once",
                )

    return check


def _include_types(value: str | None) -> tuple[str, ...]:
    """The types of ``include=`` (syntax already checked), in
    :data:`REPO_EVENT_TYPES` order, each once."""
    if not value:
        return ()
    wanted = set(value.split(","))
    return tuple(t for t in REPO_EVENT_TYPES if t in wanted)


assert set(EVENT_TYPES) == {"commit", "identity", "account", "sync", "info"}


_INVALID_TOKEN: Final = {"WWW-Authenticate": 'Bearer error="invalid_token"'}


def _client_address(request: Request) -> str:
    """The peer's address (the direct peer: proxy headers are not trusted)."""
    return request.client.host if request.client is not None else ""


async def _authorize(
    request: Request,
    creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> TokenInfo:
    """The request's live token, with one request taken from its bucket. Failed
    authentications are counted per address and for the process; while either
    bucket is empty a presented token is refused (429) before any lookup."""
    st = _state(request)
    if creds is None:
        raise ApiError(
            401,
            "AuthRequired",
            "Authorization: Bearer <token> required",
            {"WWW-Authenticate": "Bearer"},
        )
    address = _client_address(request)
    wait = st.throttle.check(address)
    if wait > 0:
        raise ApiError(
            429,
            "RateLimitExceeded",
            "too many failed authentications; retry later",
            {"Retry-After": retry_after_header(wait)},
        )
    if len(creds.credentials) > MAX_TOKEN_LENGTH:
        st.throttle.failed(address)
        raise ApiError(401, "InvalidToken", INVALID_TOKEN, _INVALID_TOKEN)
    try:
        async with _connection(st) as conn:
            token = await verify_token(conn, creds.credentials)
    except AuthError as exc:
        st.throttle.failed(address)
        raise ApiError(401, "InvalidToken", exc.reason, _INVALID_TOKEN) from None
    st.throttle.succeeded(address)
    wait = st.limiter.check(token.id, token.rate_per_second, token.burst)
    if wait > 0:
        raise ApiError(
            429,
            "RateLimitExceeded",
            f"rate limit of {token.rate_per_second:g}/s (burst {token.burst}) exceeded",
            {"Retry-After": retry_after_header(wait)},
        )
    return token


def _scope_denial(token: TokenInfo, f: Filters) -> str | None:
    """Why ``token``'s scope does not cover ``f``, or ``None``."""
    return token.scope.denies(
        collection=f.collection,
        event_type=f.event_type,
        repo=f.repo,
        action=f.action,
        include=f.include,
    )


def _check_scope(token: TokenInfo, f: Filters) -> None:
    reason = _scope_denial(token, f)
    if reason is not None:
        raise ApiError(
            403,
            "ScopeDenied",
            reason,
            {"WWW-Authenticate": 'Bearer error="insufficient_scope"'},
        )


def create_app(
    database_url: str,
    *,
    limits: ApiLimits | None = None,
    limiter: RateLimiter | None = None,
    throttle: AuthThrottle | None = None,
) -> FastAPI:
    """The consumer API over the log in ``database_url`` (a PostgreSQL DSN). The
    asyncpg pools and the LISTEN connection open in the app's lifespan (so
    building the app, e.g. for its OpenAPI document, needs no database).
    ``limiter``/``throttle`` default to ones built from ``limits``."""
    lim = limits or ApiLimits()
    st = _State(
        dsn=database_url,
        limits=lim,
        limiter=limiter or RateLimiter(),
        throttle=throttle
        or AuthThrottle(
            per_ip_rate=lim.auth_fail_per_ip_rate,
            per_ip_burst=lim.auth_fail_per_ip_burst,
            global_rate=lim.auth_fail_rate,
            global_burst=lim.auth_fail_burst,
            trust_seconds=lim.auth_trust_seconds,
        ),
    )
    server_settings = {
        "application_name": "atdata-ingest-api",
        "default_transaction_read_only": "on",
        "statement_timeout": str(lim.statement_timeout_ms),
        # Plans for the values at hand: a generic plan cannot tell a rare
        # collection from a common one and scans the whole seq index.
        "plan_cache_mode": "force_custom_plan",
        # Every query here is bounded (LIMIT); JIT compilation, set off by a
        # misestimated cost, would add milliseconds to each and save nothing.
        "jit": "off",
    }

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        st.closing = asyncio.Event()
        st.loop = asyncio.get_running_loop()
        # min_size=0: no connection floor. asyncpg keeps a floor by reconnecting
        # in the background and logs a WARNING with a traceback for each failed
        # attempt while PostgreSQL is down; connections are made on demand
        # instead, and Outage logs once per outage.
        st.pool = await asyncpg.create_pool(
            database_url,
            init_size=min(lim.pool_min, lim.pool_max),
            min_size=0,
            max_size=lim.pool_max,
            command_timeout=lim.statement_timeout_ms / 1000 + 5,
            server_settings=server_settings,
        )
        try:
            st.stream_pool = await asyncpg.create_pool(
                database_url,
                init_size=min(lim.pool_min, lim.stream_pool_max),
                min_size=0,
                max_size=lim.stream_pool_max,
                command_timeout=lim.statement_timeout_ms / 1000 + 5,
                server_settings={
                    **server_settings,
                    "application_name": "atdata-ingest-api-streams",
                },
            )
        except BaseException:
            await st.pool.close()
            raise
        try:
            st.byte_order = bool(await st.pool.fetchval(_BYTE_ORDER_SQL))
            if not st.byte_order:
                log.warning(
                    "ingest_events.collection does not use the C collation: "
                    "collection=prefix.* filters cannot use the (collection, seq) "
                    "index"
                )
            st.notifier = SeqNotifier(
                database_url,
                st.stream_pool,
                lim.poll_seconds,
                st.outage,
                gap_bound_seconds=lim.gap_bound_seconds,
            )
            await st.notifier.start()
            yield
        finally:
            st.closing.set()
            if st.notifier is not None:
                await st.notifier.stop()
            await st.stream_pool.close()
            await st.pool.close()

    app = FastAPI(
        title="atdata-ingest consumer API",
        version=__version__,
        description=(
            "Filtered, ordered events of the atdata firehose log (seed 002 §9). "
            "Errors are {error, message}."
        ),
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.state.ingest = st
    _install_error_handlers(app)

    @app.get(
        "/events",
        dependencies=[Depends(_only_known_params("/events"))],
        response_model=EventsPage,
        responses={**_ERRORS, **_unavailable(stream=False)},
        summary="A page of events after since",
    )
    async def get_events(
        token: Annotated[TokenInfo, Depends(_authorize)],
        since: _Since,
        event_type: _EventType = None,
        collection: _Collection = None,
        repo: _Repo = None,
        action: _Action = None,
        include: _Include = None,
        limit: _Limit = DEFAULT_LIMIT,
    ) -> Response:
        f = Filters(event_type, collection, repo, action, _include_types(include))
        _check_scope(token, f)
        async with _connection(st) as conn:
            page = await fetch_page(
                conn,
                f,
                since,
                limit,
                byte_order=st.byte_order,
                max_bytes=lim.page_bytes,
                gap_bound=st.notifier.gap_bound() if st.notifier else None,
            )
        trimmed = None
        if page.oldest_kept is not None:
            trimmed = _trimmed(since, page.oldest_kept)
        return Response(
            _page_body(page.rows, page.cursor, page.more, trimmed),
            media_type="application/json",
        )

    @app.get(
        "/events/stream",
        dependencies=[Depends(_only_known_params("/events/stream"))],
        responses={
            200: {
                "description": (
                    "Server-sent events (text/event-stream), never ending. Each "
                    "matching row is one message `data: <EventRow JSON>`; the last "
                    "row of each seq also carries `id: <seq>` (reconnect with "
                    "Last-Event-ID). After heartbeat_seconds without a write: "
                    "`: ping`, with `id: <seq scanned>` when the server has "
                    "scanned past the last id sent (an id without data moves "
                    "Last-Event-ID and dispatches no event). `retry: 2000` first; "
                    "`: unavailable` before the server ends a stream it cannot "
                    "feed. Named events (not rows): `event: info` with data "
                    '`{"name": "OutdatedCursor", "since", "oldest_kept", '
                    '"message"}` before the rows after a gap of trimmed seqs '
                    "(see /events trimmed); `event: error` with data "
                    '`{"error": "InvalidToken" | "ScopeDenied", "message"}`, '
                    "the last message of a stream whose token was revoked (or "
                    "whose scope no longer covers its filters; re-read every "
                    "token_recheck_seconds, 5 s)."
                ),
                "content": {
                    "text/event-stream": {
                        "schema": {"type": "string"},
                        "example": 'retry: 2000\n: from seq 41\n\ndata: {"seq": '
                        '42, "idx": 0, ...}\nid: 42\n\n: ping\nid: 57\n\n',
                    }
                },
            },
            **_ERRORS,
            **_unavailable(stream=True),
        },
        response_class=Response,
        summary="Events after since, then live, as server-sent events",
    )
    async def stream_events(
        token: Annotated[TokenInfo, Depends(_authorize)],
        since: Annotated[
            int | None,
            Query(
                ge=0,
                le=MAX_SEQ,
                description="start after this seq (default: the current cursor)",
            ),
        ] = None,
        event_type: _EventType = None,
        collection: _Collection = None,
        repo: _Repo = None,
        action: _Action = None,
        include: _Include = None,
        last_event_id: Annotated[
            str | None,
            Header(
                alias="Last-Event-ID",
                max_length=19,
                pattern=r"^[0-9]{1,19}$",
                description="resume after this seq (wins over since)",
            ),
        ] = None,
    ) -> Response:
        f = Filters(event_type, collection, repo, action, _include_types(include))
        _check_scope(token, f)
        if last_event_id is not None:
            start = int(last_event_id)
            if start > MAX_SEQ:
                raise ApiError(422, "InvalidRequest", "Last-Event-ID out of range")
        elif since is not None:
            start = since
        else:
            async with _connection(st) as conn:
                start = int(await conn.fetchval("SELECT last_seq FROM ingest_cursor"))
        if st.streams_total >= lim.max_streams:
            raise ApiError(
                503,
                "Unavailable",
                f"too many streams open ({lim.max_streams})",
                {"Retry-After": "5"},
            )
        if st.streams.get(token.id, 0) >= lim.max_streams_per_token:
            raise ApiError(
                429,
                "TooManyStreams",
                f"at most {lim.max_streams_per_token} streams per token",
                {"Retry-After": "5"},
            )
        st.streams[token.id] = st.streams.get(token.id, 0) + 1
        st.streams_total += 1
        return EventStreamResponse(st, token, f, start)

    @app.get(
        "/health",
        response_model=Health,
        responses={
            503: {
                "model": Health,
                "description": "stale, relay_unreachable or unavailable",
            },
            **_BUG,
        },
        summary="The ingester's progress (no authentication)",
    )
    async def health() -> Response:
        body = await _cached_health(st)
        code = 503 if body["status"] in _HEALTH_FAILING else 200
        return Response(
            orjson.dumps(body), status_code=code, media_type="application/json"
        )

    return app


#: Whether ``ingest_events.collection`` compares in byte order (C/POSIX): its
#: own collation, else the database's (libc provider).
_BYTE_ORDER_SQL: Final = """
SELECT CASE WHEN co.collname <> 'default' THEN co.collname IN ('C', 'POSIX')
            ELSE d.datlocprovider = 'c' AND d.datcollate IN ('C', 'POSIX') END
  FROM pg_attribute a
  JOIN pg_collation co ON co.oid = a.attcollation
  CROSS JOIN pg_database d
 WHERE a.attrelid = 'ingest_events'::regclass AND a.attname = 'collection'
   AND d.datname = current_database()
"""

#: the /health statuses answered with 503
_HEALTH_FAILING: Final = ("stale", "relay_unreachable", "unavailable")

_HEALTH_SQL: Final = """
SELECT c.source, c.last_seq, c.updated_at, c.buffer_fill, c.buffer_max,
       c.dead_letters, c.gaps, c.ingester_pid, c.ingester_started_at,
       coalesce(c.last_event_time,
                (SELECT max(e.event_time) FROM ingest_events e
                  WHERE e.seq = c.last_seq)) AS newest_event_time,
       j.v -> 'last_info' AS last_info,  -- NULL before schema 2
       -- the relay connection's state: NULL before schema 3
       j.v ->> 'relay_state' AS relay_state,
       left(j.v ->> 'relay_error', 1000) AS relay_error,
       (j.v ->> 'relay_state_since')::timestamptz AS relay_state_since,
       (j.v ->> 'last_frame_at')::timestamptz AS last_frame_at,
       now() AS now
  FROM ingest_cursor c CROSS JOIN LATERAL (SELECT to_jsonb(c) AS v) j
"""


async def _cached_health(st: _State) -> dict[str, Any]:
    """:func:`_health`, at most ``health_cache_seconds`` old; concurrent misses
    wait for one query. ``streams`` and ``listening`` are always current."""
    if st.health_body is None or time.monotonic() >= st.health_expires:
        task = st.health_task
        if task is None:
            task = asyncio.create_task(_health(st))
            st.health_task = task
            st.health_queries += 1
        try:
            body = await asyncio.shield(task)
        finally:
            if task.done() and st.health_task is task:
                st.health_task = None
        if st.health_task is None or st.health_body is None:
            st.health_body = body
            st.health_expires = time.monotonic() + st.limits.health_cache_seconds
    notifier = st.notifier
    return {
        **st.health_body,
        "streams": st.streams_total,
        "listening": bool(notifier and notifier.listening),
    }


async def _health(st: _State) -> dict[str, Any]:
    notifier = st.notifier
    body: dict[str, Any] = {
        "status": "unavailable",
        "last_seq": None,
        "source": None,
        "lag_seconds": None,
        "staleness_seconds": None,
        "newest_event_time": None,
        "cursor_updated_at": None,
        "buffer_fill": None,
        "buffer_max": None,
        "dead_letters": None,
        "gaps": None,
        "ingester_pid": None,
        "ingester_started_at": None,
        "relay_state": None,
        "relay_error": None,
        "relay_state_since": None,
        "relay_state_seconds": None,
        "last_frame_at": None,
        "last_info": None,
        "streams": st.streams_total,
        "listening": bool(notifier and notifier.listening),
        "version": __version__,
    }
    timeout = st.limits.health_timeout_seconds
    try:
        row = await asyncio.wait_for(st.pool.fetchrow(_HEALTH_SQL), timeout)
    except (*_UNAVAILABLE, asyncpg.PostgresError) as exc:
        st.outage.failed("/health", exc)
        return body
    st.outage.ok()
    if row is None:
        return body
    now: _dt.datetime = row["now"]
    newest = row["newest_event_time"]
    staleness = (now - row["updated_at"]).total_seconds()
    body.update(
        last_seq=row["last_seq"],
        source=row["source"],
        lag_seconds=(now - newest).total_seconds() if newest is not None else None,
        staleness_seconds=staleness,
        newest_event_time=newest,
        cursor_updated_at=row["updated_at"],
        buffer_fill=row["buffer_fill"],
        buffer_max=row["buffer_max"],
        dead_letters=row["dead_letters"],
        gaps=row["gaps"],
        ingester_pid=row["ingester_pid"],
        ingester_started_at=row["ingester_started_at"],
        last_info=(
            orjson.Fragment(row["last_info"]) if row["last_info"] is not None else None
        ),
    )
    relay_state = row["relay_state"]
    relay_since = row["relay_state_since"] or row["ingester_started_at"]
    relay_seconds = (now - relay_since).total_seconds() if relay_since else None
    body.update(
        relay_state=relay_state,
        relay_error=row["relay_error"],
        relay_state_since=row["relay_state_since"],
        relay_state_seconds=relay_seconds,
        last_frame_at=row["last_frame_at"],
    )
    running = row["ingester_pid"] is not None
    stale_after = st.limits.stale_after_seconds
    if not running:
        body["status"] = "stopped"
    elif relay_state == "failing" or (
        relay_state == "connecting"
        and relay_seconds is not None
        and relay_seconds > st.limits.relay_connect_seconds
    ):
        # before "stale": an ingester that cannot reach its relay commits no
        # batch, so its row ages too, and this says why
        body["status"] = "relay_unreachable"
    elif stale_after > 0 and staleness > stale_after:
        body["status"] = "stale"
    else:
        body["status"] = "ok"
    return body


def serve(
    database_url: str,
    *,
    host: str = "127.0.0.1",
    port: int = 8765,
    limits: ApiLimits | None = None,
    log_level: str = "info",
) -> None:
    """Run the API with uvicorn (one worker) until SIGTERM or SIGINT, then return.
    ``atdata-ingest serve`` calls this.

    At the signal the server stops accepting connections and every open stream
    ends at once (its last write is a clean end of the chunked body, so an
    ``EventSource`` reconnects elsewhere); other requests get up to 5 s to finish
    (``timeout_graceful_shutdown``), then are cancelled. SIGTERM returns
    normally (a clean stop); SIGINT raises :class:`KeyboardInterrupt` after the
    same shutdown, as Python does. No ``Server`` header and no access log
    (tokens never reach a log; the API logs its own warnings)."""
    import uvicorn

    app = create_app(database_url, limits=limits)
    st: _State = app.state.ingest

    class _Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            super().handle_exit(sig, frame)
            st.request_close()  # streams would hold the shutdown until cancelled

    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        lifespan="on",
        proxy_headers=False,
        server_header=False,
        timeout_graceful_shutdown=5,
        access_log=False,
    )
    server = _Server(config)
    main = threading.current_thread() is threading.main_thread()
    # uvicorn restores the handler it found, then raises the signal it caught
    # again: a SIGTERM then lands here instead of killing the process.
    previous = signal.signal(signal.SIGTERM, _stopped) if main else None
    try:
        server.run()
    finally:
        if main:
            signal.signal(signal.SIGTERM, previous)


def _stopped(signum: int, frame: FrameType | None) -> None:
    """SIGTERM after uvicorn's graceful shutdown: nothing more to do."""
