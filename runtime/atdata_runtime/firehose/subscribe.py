"""Typed subscriptions: one consumer API over a relay (or PDS) and over the
ingestion service, at-least-once, with a cursor the consumer stores.

Two sources, one shape of events (:mod:`.events`):

* :class:`Relay` reads ``com.atproto.sync.subscribeRepos`` over WebSocket
  (``…/xrpc/com.atproto.sync.subscribeRepos?cursor=<seq>``) and decodes each frame
  (:mod:`.frames`); filters are applied here, in the client.
* :class:`IngestService` reads the ingestion service's ``GET /events`` (polling,
  ``since=<seq>``) or ``GET /events/stream`` (server-sent events), with a bearer
  token; filters are sent to the server and checked again here.

Example::

    from atdata_runtime.firehose import Account, Create, Delete, Subscription
    from atdata_runtime.firehose.subscribe import FileCursorStore, Relay
    from atdata_runtime.lexicons.science.alt.dataset.schema import Schema

    sub = Subscription(
        Relay("wss://bsky.network"),
        collections=["science.alt.dataset.*"],
        cursor=FileCursorStore("schemas.cursor"),
        concurrency=8,
    )

    @sub.records(Schema)                 # Create/Update of science.alt.dataset.schema
    def schema(event, record: Schema):   # record validated by the generated model
        print(event.uri, record.name, record.version)

    @sub.handler                         # every event that passes the filters
    async def everything(event):
        match event:
            case Delete(repo=did, collection=nsid, rkey=rkey): ...
            case Account(did=did, active=False, status="deleted"): ...

    sub.run_forever()                    # or: await sub.run() / async for ev in sub

Delivery rules:

* **At-least-once.** An event counts as finished when every matching handler
  returned (or raised: see ``on_error``). The cursor advances only over the
  consecutive prefix of finished events (:class:`~.acks.AckTracker`, the rule of
  ``@atproto/sync``'s runner) and is saved by the :class:`CursorStore` at most
  every ``save_interval`` seconds and when the subscription stops. After a crash
  the stream resumes from the saved cursor: handlers may see an event again, so
  they should be idempotent (upsert by ``uri``/``cid``).
* **Order per repo.** Events of one repository (record events by ``repo``,
  ``#identity``/``#account``/``#sync`` by ``did``) are handled one at a time in
  stream order; different repositories run in parallel, up to ``concurrency``
  handlers at once (coroutines as tasks, plain functions in a thread pool of
  that size). With ``concurrency=1`` (the default) every event is handled in
  stream order.
* **Backpressure.** At most ``max_pending`` events are handed out and not
  finished; when that many are, the source is not read (the WebSocket's TCP
  window closes; the next page is not fetched).
* **Hostile input.** Frames are capped at ``max_frame_bytes``, a server-sent
  event line at :data:`MAX_SSE_LINE_BYTES`, an ``/events`` page at
  :data:`MAX_PAGE_BYTES`; a malformed frame or row is counted, given to
  ``on_malformed`` and skipped (it never stalls the stream); an invalid record
  goes to ``on_invalid``; nothing from the network crashes the loop.
* **Reconnects.** Connection failures, 5xx, 429 and relay errors other than
  ``FutureCursor`` reconnect after exponential backoff with full jitter
  (``backoff`` base and cap in seconds), resuming after the last ``seq`` read
  whole (events of it already handed out are dropped as duplicates).
* **Signatures.** From a relay, commits are checked against the repository's
  DID-document key by :class:`~.verify.CommitVerifier` (``verify``: policy
  ``dataset`` by default, i.e. commits touching ``science.alt.dataset.*``;
  ``all``; ``none``; or a verifier of your own); a bad signature makes the frame
  malformed (``SIG_INVALID`` to ``on_malformed``), a key that cannot be
  resolved leaves ``verified`` ``None`` (counted by rule in
  ``stats.unverified``, the first logged; a private PLC directory:
  ``plc_url=``, see :class:`Relay`). A frame read again by the same
  subscription keeps the verdict it got the first time. The ingestion service
  verifies on its side; its events carry its ``verified``.

Errors are :class:`SubscriptionError` with a rule ID (``SUB_*``, ``CURSOR_*``).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as _dt
import functools
import hashlib
import inspect
import json
import logging
import os
import random
import re
import signal
import tempfile
import threading
from collections import OrderedDict, deque
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Mapping,
)
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Protocol, TypeVar, runtime_checkable
from urllib.parse import urlencode, urlsplit, urlunsplit

from ..lex.formats import is_did, is_nsid
from ..net.redact import redact_url
from . import _missing_extra
from .acks import AckTracker, Ticket
from .events import (
    Account,
    Commit,
    Create,
    Delete,
    Event,
    Identity,
    Info,
    Sync,
    Update,
)

try:
    from .frames import MAX_FRAME_BYTES, Frame, FrameError, decode_frame
except ModuleNotFoundError as _exc:  # cbrrr: the firehose extra is not installed
    _hint = _missing_extra(_exc, f"{__name__} (typed subscriptions)")
    if _hint is None:
        raise
    raise _hint from _exc

__all__ = [
    "MAX_FRAME_BYTES",
    "MAX_PAGE_BYTES",
    "MAX_PENDING",
    "MAX_SSE_LINE_BYTES",
    "CursorStore",
    "FileCursorStore",
    "IngestService",
    "Relay",
    "Subscription",
    "SubscriptionError",
    "SubscriptionStats",
    "event_from_row",
]

if TYPE_CHECKING:
    from .verify import CommitVerifier, Verdict, VerifyPolicy

log = logging.getLogger("atdata_runtime.firehose")

MAX_SSE_LINE_BYTES: Final = 4 * 1024 * 1024
"""4 MiB: one line of the service's event stream: one event row as JSON, whose
record is at most 2 MiB of JSON (indigo ``MAX_JSON_RECORD_SIZE``)."""

MAX_PAGE_BYTES: Final = 32 * 1024 * 1024
"""32 MiB: one ``GET /events`` response. A page over it is fetched again with half
the ``limit`` (down to 1)."""

MAX_PENDING: Final = 1024
"""Default bound of events handed out and not finished (``max_pending``)."""

_MAX_CURSOR_FILE = 64
_PAGE_LIMIT_MAX = 1000
_MESSAGE_TOO_BIG = 1009  # WebSocket close code (RFC 6455 § 7.4.1)
_MAX_SEQ_JUMP = 1 << 40
"""A malformed frame's seq (from an unvalidated body) moves the cursor only when
it is above the last seq read and at most this far above it."""
_DID_MAX = 2048

E = TypeVar("E")
F = TypeVar("F", bound=Callable[..., Any])
M = TypeVar("M")


class SubscriptionError(Exception):
    """A subscription cannot go on (or cannot start). ``rule`` says why:

    * ``SUB_CONFIG``: a bad argument (concurrency, URL, token, limits);
    * ``SUB_FILTER``: a collection pattern that is not an NSID or ``prefix.*``,
      or a repo that is not a DID;
    * ``SUB_MODE``: iterating a subscription that has handlers, or running it
      twice at once;
    * ``SUB_AUTH``: the service refused the token (401/403; not retried);
    * ``SUB_HTTP``: another 4xx from the service (not retried);
    * ``SUB_FUTURE_CURSOR``: the relay says the cursor is ahead of its stream
      (``FutureCursor``; a stream reset: not retried);
    * ``SUB_RECONNECTS``: ``max_reconnects`` consecutive failures;
    * ``SUB_PAGE``: an ``/events`` response that breaks its shape (not JSON, a
      cursor below its events, over :data:`MAX_PAGE_BYTES` at ``limit=1``);
    * ``SUB_SSE_LINE``: a server-sent event line over :data:`MAX_SSE_LINE_BYTES`;
    * ``SUB_ROW``: an event row that breaks its shape (given to
      ``on_malformed``, not raised);
    * ``SUB_HANDLER``: ``on_error``/``on_invalid``/``on_malformed`` raised (the
      event is not acknowledged);
    * ``CURSOR_STORE``: the cursor file does not hold a cursor;
    * ``CURSOR_SAVE``: the cursor store failed to save.

    ``location`` says where (a URL, ``seq``, a JSON pointer), when known."""

    def __init__(self, rule: str, reason: str, *, location: str | None = None) -> None:
        where = f" at {location}" if location else ""
        super().__init__(f"{rule}{where}: {reason}")
        self.rule = rule
        self.reason = reason
        self.location = location


class _Retryable(Exception):
    """A source failure worth a reconnect (5xx, 429, a relay error frame);
    ``delay`` is the server's hint in seconds, if any."""

    def __init__(self, reason: str, delay: float | None = None) -> None:
        super().__init__(reason)
        self.delay = delay


# --- cursor stores -----------------------------------------------------------


@runtime_checkable
class CursorStore(Protocol):
    """Where a consumer keeps its cursor: ``load()`` returns the last saved
    ``seq`` (``None``: never saved), ``save(seq)`` replaces it. Both are called in
    a worker thread, never concurrently, with ``seq`` never decreasing."""

    def load(self) -> int | None: ...

    def save(self, seq: int) -> None: ...


class FileCursorStore:
    """A cursor in a small text file (``<seq>\\n``), replaced atomically: written
    to a temporary file in the same directory, flushed to disk (``fsync``), then
    renamed over the old one (``os.replace``), so a crash leaves the old cursor or
    the new one, never a torn file. ``load()`` raises :class:`SubscriptionError`
    (``CURSOR_STORE``) when the file holds anything but a non-negative integer."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"FileCursorStore({str(self.path)!r})"

    def load(self) -> int | None:
        try:
            with self.path.open("rb") as fh:
                raw = fh.read(_MAX_CURSOR_FILE + 1)
        except FileNotFoundError:
            return None
        text = raw.decode("ascii", "replace").strip()
        if len(raw) > _MAX_CURSOR_FILE or not text.isdigit() or not text.isascii():
            raise SubscriptionError(
                "CURSOR_STORE",
                "the cursor file does not hold a seq (a non-negative integer)",
                location=str(self.path),
            )
        return int(text)

    def save(self, seq: int) -> None:
        if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
            raise SubscriptionError("CURSOR_SAVE", f"not a seq: {seq!r}")
        directory = self.path.parent
        directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=directory)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(f"{seq}\n".encode("ascii"))
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        with contextlib.suppress(OSError):  # the rename itself, durably
            dfd = os.open(directory, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)


# --- filters -----------------------------------------------------------------

_PREFIX_RE: Final = re.compile(r"(?:[a-zA-Z0-9-]{1,63}\.)*[a-zA-Z0-9-]{1,63}")


def _collection_matcher(patterns: Iterable[str]) -> Callable[[str], bool] | None:
    """A predicate on NSIDs for ``patterns`` (exact NSIDs, ``prefix.*`` matching
    every NSID under ``prefix.``, or ``*``); ``None`` when there are none (all
    pass). Raises :class:`SubscriptionError` (``SUB_FILTER``)."""
    exact: set[str] = set()
    prefixes: list[str] = []
    if isinstance(patterns, str):
        patterns = [patterns]
    for pattern in patterns:
        if not isinstance(pattern, str):
            raise SubscriptionError("SUB_FILTER", f"collection {pattern!r} is no str")
        if pattern == "*":
            return None
        if pattern.endswith(".*") and _PREFIX_RE.fullmatch(pattern[:-2]):
            prefixes.append(pattern[:-1])
        elif is_nsid(pattern):
            exact.add(pattern)
        else:
            raise SubscriptionError(
                "SUB_FILTER",
                f"collection {pattern!r} is neither an NSID nor 'prefix.*' "
                "(Lexicon spec, NSID syntax)",
            )
    if not exact and not prefixes:
        return None
    frozen, starts = frozenset(exact), tuple(prefixes)
    return lambda nsid: nsid in frozen or nsid.startswith(starts)


def _repo_set(repos: Iterable[str]) -> frozenset[str] | None:
    if isinstance(repos, str):
        repos = [repos]
    out = frozenset(repos)
    for did in out:
        if not isinstance(did, str) or not is_did(did):
            raise SubscriptionError(
                "SUB_FILTER", f"repo {did!r} is not a DID (DID spec syntax)"
            )
    return out or None


def _repo_of(event: Event) -> str | None:
    if isinstance(event, Create | Update | Delete):
        return event.repo
    if isinstance(event, Identity | Account | Sync):
        return event.did
    return None


@dataclass(frozen=True, slots=True)
class _Filter:
    collection: Callable[[str], bool] | None = None
    repos: frozenset[str] | None = None
    types: tuple[type, ...] = ()
    patterns: tuple[str, ...] = ()  # the collection patterns as given

    def __call__(self, event: Event) -> bool:
        if self.types and not isinstance(event, self.types):
            return False
        if self.repos is not None:
            repo = _repo_of(event)
            if repo is not None and repo not in self.repos:
                return False
        if self.collection is not None and isinstance(event, Create | Update | Delete):
            return self.collection(event.collection)
        return True


# --- items from a source -----------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Item:
    """What a source yields: an event; or ``event=None``: every event of ``seq``
    has been yielded (a frame or a page ended); or ``error``: a malformed frame or
    row (``seq`` when known)."""

    seq: int | None
    event: Event | None = None
    error: Exception | None = None


def _flatten(frame: Any) -> list[_Item]:
    """Items of one decoded frame: a commit's operations in order, then the
    commit's end; other events, then their end."""
    if isinstance(frame, Commit):
        items = [_Item(frame.seq, op) for op in frame.ops]
        items.append(_Item(frame.seq))
        return items
    if isinstance(frame, Info):
        return [_Item(None, frame)]
    if isinstance(frame, Identity | Account | Sync):
        return [_Item(frame.seq, frame), _Item(frame.seq)]
    if isinstance(frame, Create | Update | Delete):
        return [_Item(frame.seq, frame)]
    raise TypeError(f"not an event: {type(frame).__name__}")


def _ws_url(url: str) -> str:
    """``url`` as the WebSocket endpoint of ``subscribeRepos``: ``http(s)`` becomes
    ``ws(s)``; a bare origin gets ``/xrpc/com.atproto.sync.subscribeRepos``."""
    try:
        parts = urlsplit(url)
        port = parts.port  # raises for a bad port
    except ValueError as exc:
        raise SubscriptionError(
            "SUB_CONFIG", f"relay URL does not parse ({exc})", location=redact_url(url)
        ) from None
    scheme = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}.get(parts.scheme)
    if scheme is None or not parts.hostname or parts.query or parts.fragment:
        raise SubscriptionError(
            "SUB_CONFIG",
            "relay URL must be ws(s):// or http(s):// with a host, no query",
            location=redact_url(url),
        )
    del port
    path = parts.path.rstrip("/")
    if not path.endswith("/xrpc/com.atproto.sync.subscribeRepos"):
        path += "/xrpc/com.atproto.sync.subscribeRepos"
    return urlunsplit((scheme, parts.netloc, path, "", ""))


def _http_base(url: str, what: str) -> str:
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises for a bad port
    except ValueError as exc:
        raise SubscriptionError(
            "SUB_CONFIG", f"{what} URL does not parse ({exc})", location=redact_url(url)
        ) from None
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query:
        raise SubscriptionError(
            "SUB_CONFIG",
            f"{what} URL must be http(s):// with a host, no query",
            location=redact_url(url),
        )
    return urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), "", ""))


@dataclass(frozen=True)
class Relay:
    """A relay or a PDS: ``url`` is ``wss://host`` (or ``https://``, ``http://``,
    ``ws://``; a bare origin gets ``/xrpc/com.atproto.sync.subscribeRepos``).
    Every frame is decoded by :func:`.frames.decode_frame` (CAR blocks checked
    against their CIDs); frames over ``max_frame_bytes`` close the connection
    (and reconnect). ``open_timeout`` bounds the handshake (seconds); a silent
    peer is detected by WebSocket pings every ``ping_interval`` seconds.

    Commits are verified by the subscription (``Subscription(verify=...)``)
    against the key of the repository's DID document, and ``did:plc`` DIDs are
    resolved at ``https://plc.directory`` unless told otherwise. On a network
    with its own PLC directory (a local or private network, DIDs that
    ``plc.directory`` does not know) pass its URL::

        Subscription(Relay("ws://127.0.0.1:2583"), plc_url="http://127.0.0.1:2582")
        # or, to configure the resolver further:
        Subscription(relay, verify=CommitVerifier(IdentityResolver(plc_url=...)))

    (``IdentityResolver`` from :mod:`atdata_runtime.atmosphere`,
    ``CommitVerifier`` from :mod:`.verify`.) Without it every checked commit is
    unverified (``verified=None``, rule ``IDENTITY_UNRESOLVED`` or the
    resolver's other rule): the first of each rule is logged at warning and all
    are counted in :attr:`SubscriptionStats.unverified`."""

    url: str
    max_frame_bytes: int = MAX_FRAME_BYTES
    open_timeout: float = 10.0
    ping_interval: float = 20.0

    def __post_init__(self) -> None:
        _ws_url(self.url)
        if not 1024 <= self.max_frame_bytes <= 64 * 1024 * 1024:
            raise SubscriptionError(
                "SUB_CONFIG", "max_frame_bytes must be 1 KiB .. 64 MiB"
            )

    def endpoint(self, cursor: int | None) -> str:
        """The ``subscribeRepos`` URL resuming after ``cursor``."""
        url = _ws_url(self.url)
        return url if cursor is None else f"{url}?{urlencode({'cursor': cursor})}"

    async def _items(
        self,
        cursor: int | None,
        where: _Filter,
        stats: SubscriptionStats,
        checker: _Checker | None,
    ) -> AsyncIterator[_Item]:
        try:
            from websockets.asyncio.client import connect
            from websockets.exceptions import ConnectionClosed, InvalidStatus
        except ModuleNotFoundError as exc:
            hint = _missing_extra(exc, "Relay (subscribeRepos over WebSocket)")
            if hint is None:
                raise
            raise hint from exc

        url = self.endpoint(cursor)
        try:
            ws = await connect(
                url,
                max_size=self.max_frame_bytes,
                compression=None,
                open_timeout=self.open_timeout,
                ping_interval=self.ping_interval,
                ping_timeout=self.ping_interval,
                close_timeout=5,
                max_queue=16,
            )
        except InvalidStatus as exc:
            status = exc.response.status_code
            if 400 <= status < 500 and status not in (408, 429):
                raise SubscriptionError(
                    "SUB_HTTP",
                    f"the relay refused the subscription (HTTP {status})",
                    location=redact_url(url),
                ) from None
            raise _Retryable(f"HTTP {status} at the handshake") from None
        last = cursor  # the seq of the last frame read
        async with ws:
            stats.connects += 1
            try:
                async for message in ws:
                    if isinstance(message, str):
                        err = FrameError(
                            "FRAME_CBOR", "a text message (frames are binary)"
                        )
                        yield _Item(None, error=err)
                        continue
                    try:
                        frame = decode_frame(message, max_bytes=self.max_frame_bytes)
                        if frame.kind == "error":
                            _relay_error(frame, url)
                        verified = None
                        if checker is not None:
                            verified = await checker.verified(
                                frame, message, where, stats
                            )
                    except FrameError as exc:
                        seq = exc.seq
                        if (
                            seq is not None
                            and last is not None
                            and not last < seq <= last + _MAX_SEQ_JUMP
                        ):
                            seq = None  # an unvalidated seq moves nothing
                        if seq is not None:
                            last = seq
                        yield _Item(seq, error=exc)  # the whole frame is skipped
                        continue
                    if frame.seq is not None:
                        last = frame.seq
                    event = frame.event(verified=verified)
                    if event is None:  # an unknown t: ignored (Event Stream spec)
                        continue
                    for item in _flatten(event):
                        yield item
            except ConnectionClosed as exc:
                if exc.sent is None or exc.sent.code != _MESSAGE_TOO_BIG:
                    raise
                # The frame after `last` is over max_frame_bytes: reading it again
                # would loop forever. Skip its seq (seqs are usually contiguous;
                # a gap costs another round), as a malformed frame.
                skipped = None if last is None else last + 1
                err = FrameError(
                    "FRAME_TOO_BIG",
                    f"a frame after seq {last} is over {self.max_frame_bytes} bytes "
                    f"(WebSocket close 1009); skipping seq {skipped}",
                    seq=skipped,
                )
                yield _Item(skipped, error=err)
                raise _Retryable("a frame over max_frame_bytes") from None


def _relay_error(frame: Frame, url: str) -> None:
    """An error frame (``op: -1``, Event Stream spec): ``FutureCursor`` is final,
    the rest (``ConsumerTooSlow``, ``OutdatedCursor``…) reconnect."""
    name = (frame.error or "")[:100]
    text = (frame.error_message or "")[:200]
    if name == "FutureCursor":
        raise SubscriptionError(
            "SUB_FUTURE_CURSOR",
            "the relay's stream is behind our cursor (reset, or another relay); "
            f"start with a lower cursor ({text})",
            location=redact_url(url),
        )
    raise _Retryable(f"relay error frame {name}: {text}")


# --- the ingestion service ---------------------------------------------------

_EVENT_TYPES: Final = ("commit", "identity", "account", "sync", "info")


def _ptr(where: str, key: str) -> str:
    return f"{where}/{key}"


def _int(
    row: Mapping[str, Any], key: str, where: str, *, optional: bool = False
) -> Any:
    value = row.get(key)
    if value is None and optional:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise SubscriptionError(
            "SUB_ROW",
            f"{key} must be a non-negative integer",
            location=_ptr(where, key),
        )
    return value


def _str(
    row: Mapping[str, Any],
    key: str,
    where: str,
    *,
    optional: bool = False,
    limit: int = 8192,
    check: Callable[[str], bool] | None = None,
) -> Any:
    value = row.get(key)
    if value is None and optional:
        return None
    if not isinstance(value, str) or len(value) > limit or (check and not check(value)):
        raise SubscriptionError(
            "SUB_ROW", f"{key} is not a valid string", location=_ptr(where, key)
        )
    return value


def _time(row: Mapping[str, Any], key: str, where: str) -> _dt.datetime | None:
    value = row.get(key)
    if value is None:
        return None
    try:
        if not isinstance(value, str) or len(value) > 64:
            raise ValueError
        when = _dt.datetime.fromisoformat(value)  # 3.11: "Z" too
    except ValueError:
        raise SubscriptionError(
            "SUB_ROW", f"{key} is not an ISO 8601 time", location=_ptr(where, key)
        ) from None
    return when if when.tzinfo else when.replace(tzinfo=_dt.UTC)


def _body_of(row: Mapping[str, Any], where: str) -> Mapping[str, Any]:
    body = row.get("record")
    if not isinstance(body, dict):
        raise SubscriptionError(
            "SUB_ROW",
            "this event's body (record) must be an object",
            location=f"{where}/record",
        )
    return body


def event_from_row(row: Any, where: str = "") -> Event | None:
    """One row of the service's ``GET /events`` (``{seq, idx, event_type, action,
    repo, collection, rkey, cid, prev_cid, rev, commit_cid, record, valid,
    verified, event_time, indexed_at}``, as ``atdata_ingest.rows`` writes them)
    as an event: a commit operation (``action`` create/update/delete) is a
    :class:`Create`/:class:`Update`/:class:`Delete`; ``identity``, ``account``
    and ``sync`` rows carry their body in ``record`` (``handle``; ``active``,
    ``status``; ``rev``); an ``info`` row is an :class:`Info` (no ``seq``). A
    commit without operations (no ``action``) is ``None``: it has no event,
    only its ``seq``. ``where`` is the row's JSON pointer, for errors. Raises
    :class:`SubscriptionError` (``SUB_ROW``) naming the field."""
    if not isinstance(row, dict):
        raise SubscriptionError(
            "SUB_ROW", "an event row must be an object", location=where
        )
    kind = row.get("event_type")
    if kind not in _EVENT_TYPES:
        raise SubscriptionError(
            "SUB_ROW",
            f"unknown event_type {str(kind)[:40]!r}",
            location=f"{where}/event_type",
        )
    if kind == "info":
        body = _body_of(row, where)
        return Info(
            name=_str(body, "name", f"{where}/record", limit=256),
            message=_str(body, "message", f"{where}/record", optional=True),
        )
    seq = _int(row, "seq", where)
    time = _time(row, "event_time", where)
    repo = _str(row, "repo", where, limit=_DID_MAX, check=is_did)
    if kind == "identity":
        body = _body_of(row, where)
        handle = _str(body, "handle", f"{where}/record", optional=True, limit=253)
        return Identity(seq, repo, time, handle)
    if kind == "account":
        body = _body_of(row, where)
        active = body.get("active")
        if not isinstance(active, bool):
            raise SubscriptionError(
                "SUB_ROW",
                "an account event carries active (boolean)",
                location=f"{where}/record/active",
            )
        status = _str(body, "status", f"{where}/record", optional=True, limit=64)
        return Account(seq, repo, time, active, status)
    commit_cid = _str(row, "commit_cid", where, optional=True, limit=256)
    if kind == "sync":
        return Sync(seq, repo, _str(row, "rev", where, limit=64), time, commit_cid)
    action = row.get("action")
    if action is None:
        return None  # a commit without operations
    if action not in ("create", "update", "delete"):
        raise SubscriptionError(
            "SUB_ROW",
            f"unknown action {str(action)[:40]!r}",
            location=f"{where}/action",
        )
    collection = _str(row, "collection", where, limit=317, check=is_nsid)
    rkey = _str(row, "rkey", where, limit=512)
    rev = _str(row, "rev", where, optional=True, limit=64) or ""
    idx = _int(row, "idx", where)
    verified = row.get("verified")
    if verified is not None and not isinstance(verified, bool):
        raise SubscriptionError(
            "SUB_ROW",
            "verified must be a boolean or null",
            location=f"{where}/verified",
        )
    prev = _str(row, "prev_cid", where, optional=True, limit=256)
    if action == "delete":
        return Delete(
            seq, repo, collection, rkey, rev, time, idx, commit_cid, verified, prev
        )
    cid = _str(row, "cid", where, limit=256)
    record = row.get("record")
    if not isinstance(record, dict):
        raise SubscriptionError(
            "SUB_ROW",
            f"a {action} carries its record (an object)",
            location=f"{where}/record",
        )
    if action == "create":
        return Create(
            seq,
            repo,
            collection,
            rkey,
            cid,
            record,
            rev,
            time,
            idx,
            commit_cid,
            verified,
        )
    return Update(
        seq,
        repo,
        collection,
        rkey,
        cid,
        record,
        rev,
        time,
        idx,
        commit_cid,
        verified,
        prev,
    )


def _retry_after(headers: Mapping[str, str]) -> float | None:
    value = headers.get("retry-after", "").strip()
    return float(value) if value.isdigit() else None


ServerFilters = dict[str, str]
#: The service's repository event types (``include=`` of ``GET /events``).
_REPO_EVENT_TYPES: Final = ("account", "identity", "sync")
_REFUSAL_BYTES: Final = 4096  # of a 401/403 body, for its message


@dataclass(frozen=True)
class IngestService:
    """The ingestion service (``atdata-ingest serve``): ``url`` is its base URL,
    ``token`` a consumer's bearer token (``atdi_<id>_<secret>``). Both modes
    read from the subscription's cursor (``since=<seq>``); without one, from
    the service's oldest event still kept (``since=0``: ``/events/stream``
    would otherwise start at the service's current cursor, the live tail).

    ``stream=False`` polls ``GET /events`` with ``since=<cursor>`` (``limit``
    rows a page, at most 1,000; the service never cuts a commit across pages),
    waiting ``poll_interval`` seconds after a page that says ``more: false``;
    ``stream=True`` reads ``GET /events/stream`` (server-sent events; the last
    row of each ``seq`` carries ``id: <seq>``). ``timeout`` bounds each request
    (seconds; for the stream, the silence between two chunks: the service sends
    ``: ping`` heartbeats).

    ``server_filters``: send the subscription's filters to the service (one
    ``collection`` pattern, one ``repo``), as a token scoped to them requires.
    The service's ``collection=`` selects record operations only, so with a
    collection filter the client also sends ``include=`` with the repository
    event types of ``include`` (default ``account``, ``identity``, ``sync``:
    every repo's, or the one ``repo``'s), and a subscription to
    ``collections=["science.alt.dataset.*"]`` still sees ``Account(active=False,
    status="deleted")``, handle changes and repo resets, as it would from a
    relay (they pass the subscription's collection filter; handlers that do
    not take them never see them). A token scoped to event types that lacks
    one of them is refused (``SUB_AUTH``): pass ``include=()`` or the types it
    allows. Filters are always checked again in the client. Pages without
    ``more`` carry the service's scanned horizon as their cursor, so a
    filtered subscription's cursor moves over seqs that matched nothing.
    Signatures are the service's business (its ``VERIFY`` setting): the
    events carry its ``verified``."""

    url: str
    token: str = field(repr=False)
    stream: bool = False
    limit: int = _PAGE_LIMIT_MAX
    poll_interval: float = 1.0
    timeout: float = 30.0
    server_filters: bool = True
    include: tuple[str, ...] = _REPO_EVENT_TYPES

    def __post_init__(self) -> None:
        _http_base(self.url, "ingestion service")
        if (
            not isinstance(self.token, str)
            or not self.token
            or not self.token.isascii()
            or not self.token.isprintable()
            or len(self.token) > 512
        ):
            raise SubscriptionError(
                "SUB_CONFIG", "token must be printable ASCII, 1 .. 512 characters"
            )
        if not 1 <= self.limit <= _PAGE_LIMIT_MAX:
            raise SubscriptionError("SUB_CONFIG", "limit must be 1 .. 1000")
        if not self.poll_interval >= 0 or not self.timeout > 0:
            raise SubscriptionError("SUB_CONFIG", "poll_interval/timeout out of range")
        if isinstance(self.include, str) or any(
            kind not in _REPO_EVENT_TYPES for kind in self.include
        ):
            raise SubscriptionError(
                "SUB_CONFIG",
                f"include must be a tuple of {', '.join(_REPO_EVENT_TYPES)}",
            )

    def _client(self) -> Any:
        try:
            import httpx
        except ModuleNotFoundError as exc:
            hint = _missing_extra(exc, "IngestService (the ingestion service's API)")
            if hint is None:
                raise
            raise hint from exc

        return httpx.AsyncClient(
            headers={
                "Authorization": f"Bearer {self.token}",
                "Accept-Encoding": "identity",
                "User-Agent": "atdata-runtime-subscription",
            },
            timeout=httpx.Timeout(self.timeout),
            follow_redirects=False,
            trust_env=False,
        )

    @staticmethod
    async def _check(resp: Any, url: str) -> None:
        """Raise for a response that is not 200 (:meth:`_status`), with the
        service's ``message`` for a 401/403 (at most 4 KiB of body read)."""
        if resp.status_code in (401, 403):
            body = bytearray()
            async for chunk in resp.aiter_raw():
                body += chunk
                if len(body) > _REFUSAL_BYTES:
                    break
            IngestService._status(resp.status_code, resp.headers, url, bytes(body))
        IngestService._status(resp.status_code, resp.headers, url)

    @staticmethod
    def _status(
        status: int, headers: Mapping[str, str], url: str, body: bytes = b""
    ) -> None:
        if status == 200:
            return
        if status in (401, 403):
            import orjson

            why = ""
            with contextlib.suppress(orjson.JSONDecodeError, AttributeError):
                message = orjson.loads(body[:_REFUSAL_BYTES]).get("message")
                if isinstance(message, str) and message.isprintable():
                    why = f": {message[:300]}"
            raise SubscriptionError(
                "SUB_AUTH",
                f"the service refused the token or its scope (HTTP {status}){why}",
                location=redact_url(url),
            )
        if status == 429 or status >= 500:
            raise _Retryable(f"HTTP {status}", _retry_after(headers))
        raise SubscriptionError("SUB_HTTP", f"HTTP {status}", location=redact_url(url))

    def _filters(self, where: _Filter) -> ServerFilters:
        out: ServerFilters = {}
        if not self.server_filters:
            return out
        if len(where.patterns) == 1:
            out["collection"] = where.patterns[0]
            # the collection filter selects commit operations only: ask for the
            # repository events too (they pass the subscription's filter)
            kinds = [k for k in _REPO_EVENT_TYPES if k in self.include]
            if kinds:
                out["include"] = ",".join(kinds)
        if where.repos is not None and len(where.repos) == 1:
            (out["repo"],) = where.repos
        return out

    async def _items(
        self,
        cursor: int | None,
        where: _Filter,
        stats: SubscriptionStats,
        checker: _Checker | None,
    ) -> AsyncIterator[_Item]:
        del checker  # the service verifies on its side
        gen = self._sse if self.stream else self._poll
        async for item in gen(cursor, self._filters(where), stats):
            yield item

    async def _poll(
        self, cursor: int | None, exact: ServerFilters, stats: SubscriptionStats
    ) -> AsyncIterator[_Item]:
        import orjson

        base = _http_base(self.url, "ingestion service") + "/events"
        since = 0 if cursor is None else cursor
        limit = self.limit
        async with self._client() as client:
            stats.connects += 1
            while True:
                params = {"since": str(since), "limit": str(limit), **exact}
                body = bytearray()
                async with (  # one deadline for the whole page
                    asyncio.timeout(self.timeout),
                    client.stream("GET", base, params=params) as resp,
                ):
                    await self._check(resp, base)
                    async for chunk in resp.aiter_raw():
                        body += chunk
                        if len(body) > MAX_PAGE_BYTES:
                            break
                if len(body) > MAX_PAGE_BYTES:
                    if limit == 1:
                        raise SubscriptionError(
                            "SUB_PAGE",
                            f"one event is over {MAX_PAGE_BYTES} bytes",
                            location=f"{redact_url(base)}?since={since}",
                        )
                    limit = max(1, limit // 2)
                    continue
                limit = self.limit
                try:
                    page = orjson.loads(body)
                except orjson.JSONDecodeError:
                    raise SubscriptionError(
                        "SUB_PAGE",
                        "the response is not JSON",
                        location=redact_url(base),
                    ) from None
                rows, page_cursor, more = _page_shape(page, base)
                last: int | None = None
                for i, row in enumerate(rows):
                    where = f"/events/{i}"
                    if isinstance(row, dict):
                        seq = row.get("seq")
                        if isinstance(seq, int) and not isinstance(seq, bool):
                            if seq <= since or (last is not None and seq < last):
                                raise SubscriptionError(
                                    "SUB_PAGE",
                                    f"seq {seq} out of order (since={since})",
                                    location=f"{where}/seq",
                                )
                            last = seq
                    try:
                        event = event_from_row(row, where)
                    except SubscriptionError as exc:
                        yield _Item(None, error=exc)  # the page's cursor covers it
                        continue
                    if event is not None:
                        yield _Item(getattr(event, "seq", None), event)
                if page_cursor is None:
                    page_cursor = since if last is None else last
                if last is not None and page_cursor < last:
                    raise SubscriptionError(
                        "SUB_PAGE", "cursor below the page's events", location="/cursor"
                    )
                if page_cursor > since:
                    yield _Item(page_cursor)  # every row up to it was in a page
                    since = page_cursor
                elif more:
                    raise SubscriptionError(
                        "SUB_PAGE",
                        "more: true without a cursor past since (the next page "
                        "would be the same)",
                        location="/cursor",
                    )
                if not more:
                    await asyncio.sleep(self.poll_interval)

    async def _sse(
        self, cursor: int | None, exact: ServerFilters, stats: SubscriptionStats
    ) -> AsyncIterator[_Item]:
        import orjson

        base = _http_base(self.url, "ingestion service") + "/events/stream"
        # since=0 for no cursor: the oldest event, as /events; without since the
        # service would start at its current cursor (the live tail)
        params = {"since": str(0 if cursor is None else cursor), **exact}
        headers = {"Accept": "text/event-stream"}
        async with (
            self._client() as client,
            client.stream("GET", base, params=params, headers=headers) as resp,
        ):
            await self._check(resp, base)
            stats.connects += 1
            async for ident, text in _sse_messages(resp.aiter_raw(), base):
                seq = int(ident) if ident is not None and ident.isdigit() else None
                if text is not None:
                    try:
                        event = event_from_row(orjson.loads(text), f"id {ident}")
                    except orjson.JSONDecodeError:
                        err = SubscriptionError(
                            "SUB_ROW",
                            "an event that is not JSON",
                            location=f"id {ident}",
                        )
                        yield _Item(None, error=err)
                    except SubscriptionError as exc:
                        yield _Item(None, error=exc)
                    else:
                        if event is not None:
                            yield _Item(getattr(event, "seq", None), event)
                if seq is not None:
                    yield _Item(seq)  # id: is on the last row of its seq


def _page_shape(page: Any, base: str) -> tuple[list[Any], int | None, bool]:
    if not isinstance(page, dict) or not isinstance(page.get("events"), list):
        raise SubscriptionError(
            "SUB_PAGE",
            "expected {events: [...], cursor, more}",
            location=redact_url(base),
        )
    cursor = page.get("cursor")
    if cursor is not None and (
        not isinstance(cursor, int) or isinstance(cursor, bool) or cursor < 0
    ):
        raise SubscriptionError("SUB_PAGE", "cursor is not a seq", location="/cursor")
    more = page.get("more", False)
    if not isinstance(more, bool):
        raise SubscriptionError("SUB_PAGE", "more is not a boolean", location="/more")
    if len(page["events"]) > _PAGE_LIMIT_MAX:
        raise SubscriptionError("SUB_PAGE", "more than 1000 events", location="/events")
    return page["events"], cursor, more


_EOL: Final = re.compile(rb"\r\n|\r|\n")


async def _lines(chunks: AsyncIterator[bytes], base: str) -> AsyncIterator[str]:
    """Lines of a server-sent event stream (ends CRLF, LF or CR: HTML Living
    Standard, "Server-sent events", parsing), each at most
    :data:`MAX_SSE_LINE_BYTES` (``SUB_SSE_LINE``)."""
    buf = bytearray()
    scanned = 0  # bytes of buf known to hold no line end
    async for chunk in chunks:
        buf += chunk
        start = 0
        while True:
            m = _EOL.search(buf, max(start, scanned))
            if m is None or (m.group() == b"\r" and m.end() == len(buf)):
                # no line end yet (or a CR that may be half of a CRLF)
                scanned = len(buf) - 1 if m is not None else len(buf)
                break
            yield buf[start : m.start()].decode("utf-8", "replace")
            start = m.end()
        del buf[:start]
        scanned = max(0, scanned - start)
        if len(buf) > MAX_SSE_LINE_BYTES:
            raise SubscriptionError(
                "SUB_SSE_LINE",
                f"a line over {MAX_SSE_LINE_BYTES} bytes",
                location=redact_url(base),
            )


def _sse_error_message(text: str) -> str:
    """The message of an ``event: error`` body ``{"error", "message"}``."""
    try:
        body = json.loads(text)
    except ValueError:
        return text
    if isinstance(body, dict):
        return f"{body.get('error')}: {body.get('message')}"
    return text


async def _sse_messages(
    chunks: AsyncIterator[bytes], base: str
) -> AsyncIterator[tuple[str | None, str | None]]:
    """``(id, data)`` of each server-sent event (HTML Living Standard,
    "Server-sent events", event stream interpretation: ``data`` lines joined by
    newlines, a blank line dispatches, ``:`` lines are comments); ``data`` is
    ``None`` for a message with an ``id`` and no data. A message's data is at
    most :data:`MAX_SSE_LINE_BYTES` (``SUB_SSE_LINE``)."""
    data: list[str] = []
    size = 0
    ident: str | None = None
    event: str | None = None
    async for line in _lines(chunks, base):
        if not line:
            if event == "error":
                # the service ends the stream: a revoked token, a scope that no
                # longer covers the filters (final: a reconnect would be refused)
                raise SubscriptionError(
                    "SUB_AUTH",
                    _sse_error_message("\n".join(data))[:500],
                    location=redact_url(base),
                )
            if event not in (None, "message"):
                # named notices (``event: info``, e.g. OutdatedCursor after
                # retention) are not rows: logged, never parsed as events
                log.warning(
                    "%s: %s %s", redact_url(base), event[:40], "\n".join(data)[:500]
                )
            elif data or ident is not None:
                yield ident, ("\n".join(data) if data else None)
            data, size, ident, event = [], 0, None, None
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            event = value
        elif name == "data":
            data.append(value)
            size += len(value) + 1
            if size > MAX_SSE_LINE_BYTES:
                raise SubscriptionError(
                    "SUB_SSE_LINE",
                    f"an event over {MAX_SSE_LINE_BYTES} bytes",
                    location=redact_url(base),
                )
        elif name == "id" and "\x00" not in value:
            ident = value


# --- the subscription --------------------------------------------------------


@dataclass
class SubscriptionStats:
    """Counters of one subscription (since it was made): ``received`` events
    read from the source, ``delivered`` to handlers (or the iterator),
    ``filtered`` out, ``duplicates`` dropped (a ``seq`` at or below one already
    read), ``malformed`` frames or rows skipped, ``invalid`` records (failed
    their model), ``handler_errors``, ``connects`` and ``reconnects``, cursor
    ``saves``; ``cursor`` is the acknowledged cursor. ``unverified``: frames of
    a :class:`Relay` that the ``verify`` policy asked to check and that were
    not verified (their events carry ``verified=None``), by the verdict's rule
    (:class:`~.verify.Verdict`: ``IDENTITY_UNRESOLVED`` and the resolver's
    other rules when the DID's key could not be resolved, ``REV_STALE``,
    ``PROOF_INCOMPLETE``, …), each frame counted once."""

    received: int = 0
    delivered: int = 0
    filtered: int = 0
    duplicates: int = 0
    malformed: int = 0
    invalid: int = 0
    handler_errors: int = 0
    connects: int = 0
    reconnects: int = 0
    saves: int = 0
    cursor: int | None = None
    unverified: dict[str, int] = field(default_factory=dict)


Source = Relay | IngestService


def _verifier(
    source: Source, verify: VerifyPolicy | CommitVerifier, plc_url: str | None
) -> CommitVerifier | None:
    """The commit verifier of a :class:`Relay` source (``None``: none needed),
    resolving DIDs at ``plc_url`` (``None``: the resolver's default,
    ``https://plc.directory``). Raises :class:`SubscriptionError` (``SUB_CONFIG``)
    for an unknown policy, a ``plc_url`` that is not ``http(s)://host``, or a
    ``plc_url`` next to a verifier of one's own (whose resolver decides)."""
    if plc_url is not None:
        if not isinstance(plc_url, str):
            raise SubscriptionError("SUB_CONFIG", f"plc_url {plc_url!r} is no str")
        _http_base(plc_url, "PLC directory")
    if isinstance(verify, str):
        if verify not in ("dataset", "all", "none"):
            raise SubscriptionError(
                "SUB_CONFIG",
                f"verify must be dataset, all, none or a CommitVerifier, "
                f"not {verify!r}",
            )
        if verify == "none" or not isinstance(source, Relay):
            return None  # nothing to import: the service verifies itself
    try:
        from .verify import CommitVerifier
    except ModuleNotFoundError as exc:  # httpx, for the identity resolver
        hint = _missing_extra(exc, "commit verification (Subscription(verify=))")
        if hint is None:
            raise
        raise hint from exc

    if isinstance(verify, CommitVerifier):
        if plc_url is not None:
            raise SubscriptionError(
                "SUB_CONFIG",
                "plc_url= and a CommitVerifier: give the verifier an "
                "IdentityResolver(plc_url=...) instead",
            )
        return verify if isinstance(source, Relay) else None
    if not isinstance(verify, str):
        raise SubscriptionError(
            "SUB_CONFIG",
            f"verify must be dataset, all, none or a CommitVerifier, not {verify!r}",
        )
    if plc_url is None:
        return CommitVerifier(policy=verify)
    from ..atmosphere.identity import IdentityResolver
    from ..net.retry import RetryPolicy

    # the verifier's own default resolver, at another PLC directory
    resolver = IdentityResolver(
        plc_url=plc_url, timeout=5.0, retry=RetryPolicy(attempts=2, deadline=5.0)
    )
    return CommitVerifier(resolver, policy=verify)


_MEMO_MIN: Final = 1024
_MEMO_MAX: Final = 65536
_VERIFIER_RULES: Final = frozenset(
    {"COMMIT_TOO_BIG", "PROOF_INCOMPLETE", "REV_STALE", "REV_FUTURE"}
    | {"KEY_REFRESH_LIMITED"}
)
"""Rules of :class:`~.verify.Verdict` that are not the resolver's."""


class _Checker:
    """The commit verifier of a :class:`Relay` subscription, remembering the
    verdicts it gave.

    The verifier keeps the last verified ``rev`` of each DID (replay
    protection), so a frame read a second time by the same subscription — the
    next run resuming from the acknowledged cursor (events handed out and not
    finished come again), a reconnect inside a partly handed-out ``seq``, a
    relay sending a frame again — would now be ``REV_STALE``, and its
    redelivered events ``verified=None`` where they were ``True``. So the
    verdict of every frame checked is kept, keyed by ``(seq, sha-256 of the
    frame's bytes)``: the same bytes get the same verdict without a second
    check; a different frame under a ``seq`` already seen is checked afresh
    (and its rev is stale). At most ``size`` verdicts (LRU); one forgotten is
    checked again. ``stats.unverified`` counts the rules of verdicts that are
    not ``True``, and the first of each rule is logged at warning (with the
    ``plc_url=`` hint when the key could not be resolved)."""

    def __init__(self, verifier: CommitVerifier, size: int) -> None:
        self.verifier = verifier
        self.size = size
        self._memo: OrderedDict[tuple[int, bytes], Verdict] = OrderedDict()
        self._warned: set[str] = set()

    async def verified(
        self,
        frame: Frame,
        message: bytes,
        where: _Filter,
        stats: SubscriptionStats,
    ) -> bool | None:
        """``verified`` for the events of ``frame`` (``message``: its bytes).
        A frame none of whose events pass the subscription's filter ``where``
        (another repo; a commit of other collections only) is not checked: its
        events are dropped anyway. Raises :class:`~.frames.FrameError` for a
        bad commit (``SIG_INVALID``…: never remembered, checked again if read
        again)."""
        verifier = self.verifier
        if frame.kind == "identity":
            verifier.forget(frame.did or "")  # its key may have changed
            return None
        if frame.kind not in ("commit", "sync"):
            return None
        if where.repos is not None and frame.did not in where.repos:
            return None
        if (
            frame.kind == "commit"
            and where.collection is not None
            and not any(map(where.collection, frame.collections))
        ):
            return None
        if not verifier.required(frame):
            return (await verifier.acheck(frame)).verified  # the policy's None
        key = (-1 if frame.seq is None else frame.seq, hashlib.sha256(message).digest())
        verdict = self._memo.get(key)
        if verdict is not None:
            self._memo.move_to_end(key)
            return verdict.verified
        verdict = await verifier.acheck(frame)
        self._memo[key] = verdict
        while len(self._memo) > self.size:
            self._memo.popitem(last=False)
        if verdict.verified is None and verdict.rule is not None:
            rule = verdict.rule
            stats.unverified[rule] = stats.unverified.get(rule, 0) + 1
            if rule not in self._warned and len(self._warned) < 64:
                self._warned.add(rule)
                hint = (
                    ""
                    if rule in _VERIFIER_RULES
                    else "; on a network with its own PLC directory, pass "
                    "Subscription(plc_url=...)"
                )
                log.warning(
                    "subscription: seq %s of %s not verified [%s]: %s%s "
                    "(further ones counted in stats.unverified)",
                    frame.seq,
                    (frame.did or "")[:200],
                    rule,
                    verdict.reason[:300],
                    hint,
                )
        return verdict.verified


def _is_async(fn: Callable[..., Any]) -> bool:
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
        getattr(fn, "__call__", None)  # noqa: B004 - an object with async __call__
    )


@dataclass(frozen=True, slots=True)
class _Handler:
    fn: Callable[..., Any]
    where: _Filter
    model: Any
    is_async: bool


_STOP: Final = object()
_EVENT_CLASSES: Final = (Create, Update, Delete, Identity, Account, Sync, Info)


class Subscription:
    """Typed, filtered, at-least-once events from ``source`` (:class:`Relay` or
    :class:`IngestService`); see the module doc for the delivery rules.

    ``collections``: NSIDs or ``prefix.*`` patterns; record events of other
    collections are dropped (``#identity``, ``#account``, ``#sync``, ``#info``
    always pass). ``repos``: DIDs; events of other repositories are dropped.
    ``cursor``: ``None`` (the source's default: a relay's live tail; the
    ingestion service's oldest event still kept, whether polled or streamed:
    ``since=0``), a ``seq`` to resume after, or a :class:`CursorStore`
    (loaded at start, saved as events finish; one that never saved is
    ``None``).
    ``concurrency``: handlers running at once (1 .. 1024). ``max_pending``:
    events handed out and not finished (backpressure). ``save_interval``:
    seconds between cursor saves (0: on every advance). ``backoff``: base and cap
    of the reconnect delay (seconds); ``max_reconnects``: consecutive failures
    before :class:`SubscriptionError` (``SUB_RECONNECTS``; ``None``: forever).
    ``verify``: the commit signature policy of a :class:`Relay` source
    (``dataset``, ``all``, ``none``) or a configured
    :class:`~.verify.CommitVerifier` (its resolver, its caches); ignored for
    the ingestion service, which verifies itself. ``plc_url``: the PLC
    directory that resolves the ``did:plc`` DIDs of a policy's verifier
    (default ``https://plc.directory``; a local or private network has its own:
    see :class:`Relay`); not with a verifier of one's own. The verdicts of
    frames this subscription checked are kept (keyed by ``seq`` and the
    frame's SHA-256; at most ``2 * max_pending``, 1,024 .. 65,536), so an event
    delivered again (the next run from the acknowledged cursor, a reconnect)
    keeps its ``verified`` instead of becoming ``REV_STALE``. Frames whose
    events ``collections``/``repos`` drop all are not checked (no DID lookups
    for repositories one does not follow).

    Callbacks (plain functions or coroutines; if one raises, the subscription
    stops with :class:`SubscriptionError` ``SUB_HANDLER`` and the event is not
    acknowledged, so it comes again after a restart):

    * ``on_error(event, exc)``: a handler raised (default: log; the event counts
      as finished);
    * ``on_invalid(event, exc)``: a record failed its model in a
      :meth:`records` handler (default: log at warning);
    * ``on_malformed(exc)``: a frame or row could not be decoded
      (:class:`.frames.FrameError` or ``SUB_ROW``; default: log at warning).

    Raises :class:`SubscriptionError` (``SUB_CONFIG``, ``SUB_FILTER``) for bad
    arguments.
    """

    def __init__(
        self,
        source: Source,
        *,
        collections: Iterable[str] = (),
        repos: Iterable[str] = (),
        cursor: int | CursorStore | None = None,
        concurrency: int = 1,
        max_pending: int = MAX_PENDING,
        save_interval: float = 1.0,
        backoff: tuple[float, float] = (0.5, 30.0),
        max_reconnects: int | None = None,
        on_error: Callable[[Event, Exception], Any] | None = None,
        on_invalid: Callable[[Event, Exception], Any] | None = None,
        on_malformed: Callable[[Exception], Any] | None = None,
        verify: VerifyPolicy | CommitVerifier = "dataset",
        plc_url: str | None = None,
    ) -> None:
        if not isinstance(source, Relay | IngestService):
            raise SubscriptionError(
                "SUB_CONFIG", "source must be a Relay or IngestService"
            )
        if not isinstance(concurrency, int) or not 1 <= concurrency <= 1024:
            raise SubscriptionError("SUB_CONFIG", "concurrency must be 1 .. 1024")
        if (
            not isinstance(max_pending, int)
            or not concurrency <= max_pending <= 1_000_000
        ):
            raise SubscriptionError(
                "SUB_CONFIG", "max_pending must be concurrency .. 1,000,000"
            )
        if not save_interval >= 0 or not 0 < backoff[0] <= backoff[1]:
            raise SubscriptionError("SUB_CONFIG", "save_interval/backoff out of range")
        if max_reconnects is not None and (
            not isinstance(max_reconnects, int) or max_reconnects < 0
        ):
            raise SubscriptionError("SUB_CONFIG", "max_reconnects must be >= 0 or None")
        if isinstance(cursor, bool) or not (
            cursor is None
            or (isinstance(cursor, int) and cursor >= 0)
            or isinstance(cursor, CursorStore)
        ):
            raise SubscriptionError(
                "SUB_CONFIG", "cursor must be None, a seq (int >= 0) or a CursorStore"
            )
        self.source = source
        patterns = (
            (collections,) if isinstance(collections, str) else tuple(collections)
        )
        matcher = _collection_matcher(patterns)
        self.where = _Filter(
            matcher, _repo_set(repos), (), patterns if matcher is not None else ()
        )
        self.verifier = _verifier(source, verify, plc_url)
        self._checker = (
            None
            if self.verifier is None
            else _Checker(
                self.verifier, min(max(2 * max_pending, _MEMO_MIN), _MEMO_MAX)
            )
        )
        self.store = cursor if isinstance(cursor, CursorStore) else None
        self._cursor: int | None = cursor if isinstance(cursor, int) else None
        self.concurrency = concurrency
        self.max_pending = max_pending
        self.save_interval = float(save_interval)
        self.backoff = (float(backoff[0]), float(backoff[1]))
        self.max_reconnects = max_reconnects
        self.on_error = on_error
        self.on_invalid = on_invalid
        self.on_malformed = on_malformed
        self.stats = SubscriptionStats(cursor=self._cursor)
        self._handlers: list[_Handler] = []
        self._running = False
        self._stop_requested = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None
        self._tracker: AckTracker | None = None

    def __repr__(self) -> str:
        return (
            f"Subscription({self.source!r}, cursor={self.cursor}, "
            f"handlers={len(self._handlers)}, concurrency={self.concurrency})"
        )

    @property
    def cursor(self) -> int | None:
        """The acknowledged cursor: every event up to it has finished."""
        tracker = self._tracker
        return tracker.cursor if tracker is not None else self._cursor

    # --- handler registration ---

    def on(
        self,
        *types: type,
        collection: str | Iterable[str] | None = None,
        repo: str | Iterable[str] | None = None,
    ) -> Callable[[F], F]:
        """Register a handler (decorator) for events of the classes ``types``
        (none: every class), of ``collection`` (NSIDs or ``prefix.*``: only
        record events match) and ``repo`` (DIDs). The handler gets the event::

            @sub.on(Create, Update, collection="science.alt.dataset.entry")
            def entry(event: Create | Update) -> None: ...
        """
        for kind in types:
            if not isinstance(kind, type) or kind not in _EVENT_CLASSES:
                raise SubscriptionError("SUB_CONFIG", f"{kind!r} is not an event class")
        coll = None if collection is None else _collection_matcher(collection)
        kinds = tuple(types)
        if coll is not None:  # only record events have a collection
            if any(k not in (Create, Update, Delete) for k in kinds):
                raise SubscriptionError(
                    "SUB_CONFIG", "collection= selects Create, Update or Delete only"
                )
            kinds = kinds or (Create, Update, Delete)
        where = _Filter(coll, None if repo is None else _repo_set(repo), kinds)

        def register(fn: F) -> F:
            self._handlers.append(_Handler(fn, where, None, _is_async(fn)))
            return fn

        return register

    def handler(self, fn: F) -> F:
        """Register ``fn(event)`` for every event that passes the subscription's
        filters (decorator); ``match event:`` on the event classes."""
        return self.on()(fn)

    def records(
        self, model: type[M], *, collection: str | Iterable[str] | None = None
    ) -> Callable[[F], F]:
        """Register ``fn(event, record)`` (decorator) for the :class:`Create` and
        :class:`Update` events of ``model``'s collection (``model.lex_type``, or
        ``collection``), with ``record`` validated by the generated ``model``
        (``model.from_wire``). A record that fails goes to ``on_invalid``, never
        to ``fn``. Deletions carry no record: register them with
        ``on(Delete, collection=...)``."""
        nsid = (
            collection if collection is not None else getattr(model, "lex_type", None)
        )
        if nsid is None:
            raise SubscriptionError(
                "SUB_CONFIG", f"{model!r} has no lex_type: pass collection="
            )
        if not callable(getattr(model, "from_wire", None)) and not callable(
            getattr(model, "model_validate", None)
        ):
            raise SubscriptionError("SUB_CONFIG", f"{model!r} is not a record model")
        where = _Filter(_collection_matcher(nsid), None, (Create, Update))

        def register(fn: F) -> F:
            self._handlers.append(_Handler(fn, where, model, _is_async(fn)))
            return fn

        return register

    # --- running ---

    def stop(self) -> None:
        """Stop: the source is no longer read, handlers already running finish,
        events not started are left unacknowledged (they come again next time),
        the cursor is saved, and :meth:`run` returns. Safe from any thread,
        handler or signal handler; idempotent. Called before :meth:`run`, it
        makes that run return at once."""
        self._stop_requested = True
        loop, event = self._loop, self._stop_event
        if loop is None or event is None or loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            event.set()
        else:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(event.set)

    def run_forever(self, *, until: Callable[[Event], bool] | None = None) -> None:
        """Run in a new event loop until :meth:`stop` (SIGINT and SIGTERM call it
        when run in the main thread), a fatal error, or an event for which
        ``until(event)`` is true has been handled. Raises what :meth:`run`
        raises."""

        async def main() -> None:
            loop = asyncio.get_running_loop()
            installed: list[signal.Signals] = []
            if threading.current_thread() is threading.main_thread():
                for sig in (signal.SIGINT, signal.SIGTERM):
                    with contextlib.suppress(NotImplementedError, RuntimeError):
                        loop.add_signal_handler(sig, self.stop)
                        installed.append(sig)
            try:
                await self.run(until=until)
            finally:
                for sig in installed:
                    loop.remove_signal_handler(sig)

        asyncio.run(main())

    async def run(self, *, until: Callable[[Event], bool] | None = None) -> None:
        """Read the source and call the handlers until :meth:`stop`, a fatal
        error (:class:`SubscriptionError`, re-raised after the cursor is saved),
        or ``until(event)`` is true for a handled event."""
        async with self._session() as session:
            await session.pump(session.dispatch, until)

    def __aiter__(self) -> AsyncIterator[Event]:
        """``async for event in sub``: :meth:`events`."""
        return self.events()

    def events(self) -> AsyncGenerator[Event, None]:
        """Events in stream order, one at a time (an async generator). An event
        is acknowledged when the loop asks for the next one; ``break`` leaves the
        last one unacknowledged (it comes again next time). Handlers are not
        called: a subscription with handlers cannot be iterated (``SUB_MODE``).
        Close the generator to stop at once and save the cursor::

            async with contextlib.aclosing(sub.events()) as events:
                async for event in events:
                    ...
        """
        if self._handlers:
            raise SubscriptionError(
                "SUB_MODE", "this subscription has handlers: use run(), not async for"
            )
        return self._iterate()

    async def _iterate(self) -> AsyncGenerator[Event, None]:
        async with self._session() as session:
            queue: asyncio.Queue[Any] = asyncio.Queue()

            async def deliver(event: Event, ticket: Ticket | None) -> None:
                queue.put_nowait((event, ticket))

            async def pump() -> None:
                try:
                    await session.pump(deliver, None)
                finally:
                    queue.put_nowait(_STOP)

            task = asyncio.create_task(pump())
            try:
                while True:
                    item = await queue.get()
                    if item is _STOP:
                        break
                    event, ticket = item
                    yield event
                    session.finish(ticket)
            finally:
                self.stop()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            if task.done() and not task.cancelled() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]

    @contextlib.asynccontextmanager
    async def _session(self) -> AsyncIterator[_Session]:
        if self._running:
            raise SubscriptionError("SUB_MODE", "this subscription is running already")
        self._running = True
        self._loop = asyncio.get_running_loop()
        self._stop_event = asyncio.Event()
        if self._stop_requested:
            self._stop_event.set()
        try:
            start = self._cursor
            if self.store is not None:
                start = await asyncio.to_thread(self.store.load)
                if start is not None and (
                    not isinstance(start, int) or isinstance(start, bool) or start < 0
                ):
                    raise SubscriptionError(
                        "CURSOR_STORE", f"load() returned {start!r}, not a seq"
                    )
            session = _Session(self, start)
            self._tracker = session.tracker
            try:
                yield session
            finally:
                await session.close()
                self._cursor = session.tracker.cursor
                self.stats.cursor = self._cursor
                self._tracker = None
        finally:
            self._running = False
            self._stop_requested = False
            self._loop = None
            self._stop_event = None


class _Lane:
    __slots__ = ("queue", "task")

    def __init__(self) -> None:
        self.queue: deque[tuple[Event, Ticket | None]] = deque()
        self.task: asyncio.Task[None] | None = None


class _Session:
    """One run of a subscription: the tracker, the lanes (one per repo), the
    cursor saver, the thread pool."""

    def __init__(self, sub: Subscription, start: int | None) -> None:
        self.sub = sub
        self.tracker = AckTracker(start)
        self.stats = sub.stats
        self.stats.cursor = start
        self.saved = start
        assert sub._stop_event is not None
        self.stop_event: asyncio.Event = sub._stop_event
        self.slots = asyncio.Semaphore(sub.max_pending)
        self.running = asyncio.Semaphore(sub.concurrency)
        self.lanes: dict[str, _Lane] = {}
        self.pool: ThreadPoolExecutor | None = None
        self.last_key: tuple[int, int] | None = None
        self.failure: BaseException | None = None
        self.moved = asyncio.Event()
        self.closing = False
        self.saver = asyncio.create_task(self._save_loop())
        self.until: Callable[[Event], bool] | None = None

    # --- cursor ---

    def _advanced(self) -> None:
        self.stats.cursor = self.tracker.cursor
        if self.sub.store is not None:
            self.moved.set()

    async def _save(self) -> None:
        store, cursor = self.sub.store, self.tracker.cursor
        if store is None or cursor is None or cursor == self.saved:
            return
        try:
            await asyncio.to_thread(store.save, cursor)
        except Exception as exc:
            raise SubscriptionError(
                "CURSOR_SAVE", f"{store!r}.save({cursor}) failed: {exc}"
            ) from exc
        self.saved = cursor
        self.stats.saves += 1

    async def _save_loop(self) -> None:
        try:
            while not self.closing:
                await self.moved.wait()
                self.moved.clear()
                if self.closing:
                    break
                await self._save()
                if self.sub.save_interval:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(
                            self.stop_event.wait(), self.sub.save_interval
                        )
        except SubscriptionError as exc:
            self.fail(exc)

    def finish(self, ticket: Ticket | None) -> None:
        """An event handed out by :meth:`_feed` finished: acknowledge it and free
        its slot."""
        if ticket is not None and self.tracker.done(ticket) is not None:
            self._advanced()
        self.slots.release()

    def fail(self, exc: BaseException) -> None:
        if self.failure is None:
            self.failure = exc
        self.sub.stop()

    # --- reading ---

    async def pump(
        self,
        deliver: Callable[[Event, Ticket | None], Awaitable[None]],
        until: Callable[[Event], bool] | None,
    ) -> None:
        """Read the source (reconnecting) until stopped; raise a fatal error."""
        self.until = until
        stop = self.stop_event
        reader = asyncio.create_task(self._read(deliver))
        stopper = asyncio.create_task(stop.wait())
        try:
            await asyncio.wait({reader, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopper.cancel()
            if not reader.done():
                reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader  # re-raises the reader's fatal error

    async def _read(
        self, deliver: Callable[[Event, Ticket | None], Awaitable[None]]
    ) -> None:
        sub = self.sub
        failures = 0
        while True:
            # after the last seq read whole: the rest of a partly read one comes
            # again (its events already handed out are dropped as duplicates)
            resume = self.tracker.closed_seq
            try:
                items = sub.source._items(resume, sub.where, self.stats, sub._checker)
                async for item in items:
                    failures = 0
                    await self._feed(item, deliver)
                reason, hint = "the source closed the stream", None
            except SubscriptionError:
                raise
            except _Retryable as exc:
                reason, hint = str(exc), exc.delay
            except (OSError, TimeoutError, asyncio.IncompleteReadError) as exc:
                reason, hint = f"{type(exc).__name__}: {exc}", None
            except Exception as exc:
                if not _is_transport_error(exc):
                    raise
                reason, hint = f"{type(exc).__name__}: {exc}", None
            failures += 1
            self.stats.reconnects += 1
            if sub.max_reconnects is not None and failures > sub.max_reconnects:
                raise SubscriptionError(
                    "SUB_RECONNECTS",
                    f"{failures - 1} reconnects failed; last: {reason[:300]}",
                )
            base, cap = sub.backoff
            delay = random.uniform(0, min(cap, base * 2 ** min(failures, 30)))
            if hint is not None:
                delay = max(delay, min(hint, 3600.0))
            log.warning(
                "subscription: %s; reconnecting in %.2fs (after seq %s)",
                reason[:300],
                delay,
                self.tracker.closed_seq,
            )
            await asyncio.sleep(delay)

    async def _feed(
        self,
        item: _Item,
        deliver: Callable[[Event, Ticket | None], Awaitable[None]],
    ) -> None:
        tracker = self.tracker
        if item.error is not None:
            self.stats.malformed += 1
            await self._callback(
                self.sub.on_malformed, item.error, default=self._log_malformed
            )
            # a whole frame of this seq was malformed: nothing more will come
            if item.seq is not None and tracker.close(item.seq) is not None:
                self._advanced()
            return
        event = item.event
        if event is None:
            if item.seq is not None and tracker.close(item.seq) is not None:
                self._advanced()
            return
        self.stats.received += 1
        seq = item.seq
        if seq is not None:
            key = (seq, getattr(event, "idx", 0))
            if not tracker.accepts(seq) or (
                self.last_key is not None and key <= self.last_key
            ):
                self.stats.duplicates += 1
                return
            self.last_key = key
        if not self.sub.where(event):
            self.stats.filtered += 1
            return
        await self.slots.acquire()
        ticket = None
        if seq is not None:
            last = tracker.cursor
            ticket = tracker.add(seq)
            if tracker.cursor != last:
                self._advanced()
        self.stats.delivered += 1
        await deliver(event, ticket)

    # --- handling ---

    async def dispatch(self, event: Event, ticket: Ticket | None) -> None:
        # one lane per repo; with concurrency 1, one lane: the stream's order
        key = (_repo_of(event) or "") if self.sub.concurrency > 1 else ""
        lane = self.lanes.get(key)
        if lane is None:
            lane = self.lanes[key] = _Lane()
            lane.queue.append((event, ticket))
            lane.task = asyncio.create_task(self._drain(key, lane))
        else:
            lane.queue.append((event, ticket))

    async def _drain(self, key: str, lane: _Lane) -> None:
        stop = self.stop_event
        try:
            while lane.queue and not stop.is_set():
                event, ticket = lane.queue[0]
                async with self.running:
                    if stop.is_set():
                        break
                    try:
                        await self._handle(event)
                    except Exception as exc:  # noqa: BLE001 - a callback raised: fatal
                        self.fail(exc)
                        break
                lane.queue.popleft()
                self.finish(ticket)
                if self.until is not None:
                    try:
                        done = self.until(event)
                    except Exception as exc:  # noqa: BLE001 - user code: fatal
                        self.fail(
                            SubscriptionError("SUB_HANDLER", f"until raised {exc!r}")
                        )
                        break
                    if done:
                        self.sub.stop()
        except Exception as exc:  # noqa: BLE001 - a bug here must stop the run loudly
            self.fail(exc)
        finally:
            if self.lanes.get(key) is lane:
                del self.lanes[key]

    async def _handle(self, event: Event) -> None:
        for h in self.sub._handlers:
            if not h.where(event):
                continue
            args: tuple[Any, ...] = (event,)
            if h.model is not None:
                try:
                    record = event.model(h.model)  # type: ignore[union-attr]
                except Exception as exc:  # noqa: BLE001 - any model error: on_invalid
                    self.stats.invalid += 1
                    await self._callback(
                        self.sub.on_invalid, event, exc, default=self._log_invalid
                    )
                    continue
                args = (event, record)
            try:
                await self._call(h.fn, h.is_async, *args)
            except Exception as exc:  # noqa: BLE001 - handlers may raise anything
                self.stats.handler_errors += 1
                await self._callback(
                    self.sub.on_error, event, exc, default=self._log_error
                )

    async def _call(self, fn: Callable[..., Any], is_async: bool, *args: Any) -> Any:
        if is_async:
            return await fn(*args)
        if self.pool is None:
            self.pool = ThreadPoolExecutor(
                max_workers=self.sub.concurrency, thread_name_prefix="atdata-sub"
            )
        loop = asyncio.get_running_loop()
        result = await loop.run_in_executor(self.pool, functools.partial(fn, *args))
        if inspect.isawaitable(result):
            result = await result
        return result

    async def _callback(
        self, fn: Callable[..., Any] | None, *args: Any, default: Callable[..., None]
    ) -> None:
        if fn is None:
            default(*args)
            return
        try:
            await self._call(fn, _is_async(fn), *args)
        except Exception as exc:
            raise SubscriptionError(
                "SUB_HANDLER", f"{getattr(fn, '__name__', fn)!s} raised {exc!r}"
            ) from exc

    @staticmethod
    def _log_error(event: Event, exc: Exception) -> None:
        log.error(
            "subscription: handler failed on %s: %r",
            _describe(event),
            exc,
            exc_info=exc,
        )

    @staticmethod
    def _log_invalid(event: Event, exc: Exception) -> None:
        log.warning("subscription: invalid record %s: %s", _describe(event), exc)

    @staticmethod
    def _log_malformed(exc: Exception) -> None:
        log.warning("subscription: malformed input skipped: %s", exc)

    # --- shutdown ---

    async def close(self) -> None:
        """Let running handlers finish, stop the saver, save the cursor."""
        stop = self.stop_event
        stop.set()
        tasks = [lane.task for lane in self.lanes.values() if lane.task is not None]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        self.closing = True
        self.moved.set()
        with contextlib.suppress(asyncio.CancelledError):
            await self.saver
        if self.pool is not None:
            await asyncio.to_thread(self.pool.shutdown, wait=True)
        try:
            await self._save()
        except SubscriptionError as exc:
            if self.failure is None:
                self.failure = exc
        self.stats.cursor = self.tracker.cursor
        if self.failure is not None:
            failure, self.failure = self.failure, None
            raise failure


def _describe(event: Event) -> str:
    if isinstance(event, Create | Update | Delete):
        return f"{type(event).__name__} {event.uri} (seq {event.seq})"
    if isinstance(event, Info):
        return f"Info {event.name}"
    return f"{type(event).__name__} {event.did} (seq {event.seq})"


def _is_transport_error(exc: BaseException) -> bool:
    """httpx transport errors and websockets errors: worth a reconnect."""
    module = type(exc).__module__
    if module.startswith("websockets"):
        return True
    if module.startswith("httpx"):
        import httpx

        return isinstance(exc, httpx.TransportError | httpx.StreamError)
    return False
