"""The replay relay: a loopback WebSocket server of real ``subscribeRepos`` frames,
for the ingestion service's tests and benchmarks.

Three parts:

- :func:`seed_pds` writes a realistic mix of records to a real PDS (the local one of
  ``atdata_gen.testing.localnet``): mostly ``app.bsky.*`` posts, likes, follows,
  reposts and profiles, some updates and deletes, multi-operation commits
  (``com.atproto.repo.applyWrites``), about 10 % ``science.alt.dataset.schema`` /
  ``science.alt.dataset.entry`` records, and ``#account`` / ``#identity`` events.
- :func:`record_frames` reads that PDS's ``com.atproto.sync.subscribeRepos`` from a
  cursor and returns every binary WebSocket message exactly as sent (DAG-CBOR
  header + body). :func:`realistic_frames` does both in one call, once per PDS and
  parameters.
- :class:`ReplayRelay` serves those frames as templates, without end or up to
  ``total``: frame number ``k`` (1, 2, 3, ...) is template ``(k - 1) % len`` with
  its body's ``seq`` rewritten to ``k`` and its ``time`` to the moment it is sent
  (ISO 8601 UTC, milliseconds, ``Z``), so that lag can be measured. The CAR and
  the signed commit in it are untouched: signatures and record CIDs stay valid.
  It paces frames (``rate``, bursts), honours ``?cursor=``, drops slow consumers
  (``ConsumerTooSlow``, like a real relay), injects malformed frames at a chosen
  ``seq``, disconnects every client on demand, and also speaks Jetstream's JSON
  (``/subscribe``) for the peer benchmark.

Wire formats: the AT Protocol Event Stream spec (https://atproto.com/specs/event-stream:
frame = header ``{op, t}`` + body; ``op`` -1 is an error frame ``{error, message}``)
and ``com.atproto.sync.subscribeRepos`` (Sync spec); the CAR v1 format
(https://ipld.io/specs/transport/car/carv1/); Jetstream's JSON events
(https://github.com/bluesky-social/jetstream, README "Consuming Jetstream").

    frames = realistic_frames(net)       # ~320 real frames, ~480 record operations
    with ReplayRelay(frames, total=100_000, rate=20_000) as relay:
        relay.url                # ws://127.0.0.1:PORT (append /xrpc/...?cursor=N)
        relay.burst(50_000, 200_000)
        relay.inject("garbage", at_seq=70_000)
        relay.disconnect_all()
        relay.wait_sent(100_000)

Cycling through the templates repeats commits (same ``rev``, same CIDs) under new
``seq`` numbers: fine for a log keyed by ``seq``, not for a consumer that checks
``rev`` order per repository. ``python -m atdata_ingest.testing.relay`` records
frames to a file, serves a file in its own process (controlled over stdin), and
measures the relay's throughput (:func:`main`).

A consumer that stops reading and then closes gracefully waits for the relay's
close frame behind the frames still in flight; ``websockets`` then waits out its
``close_timeout`` (10 s by default): abort the transport, or lower it.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import datetime as _dt
import hashlib
import http
import itertools
import random
import secrets
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Final, Literal, Protocol, Self
from urllib.parse import parse_qs, urlsplit

import cbrrr
import httpx
import orjson
from websockets.asyncio.client import connect
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.protocol import State

__all__ = [
    "JETSTREAM_PATH",
    "REPOS_PATH",
    "ConnectionStats",
    "InjectKind",
    "RelayError",
    "ReplayRelay",
    "SeedResult",
    "car_blocks",
    "realistic_frames",
    "record_frames",
    "seed_pds",
    "split_frame",
]

REPOS_PATH: Final = "/xrpc/com.atproto.sync.subscribeRepos"
"""The path of the ``subscribeRepos`` stream (``?cursor=<seq>``)."""

JETSTREAM_PATH: Final = "/subscribe"
"""The path of the Jetstream JSON stream (``?wantedCollections=&wantedDids=&cursor=``,
``cursor`` in microseconds: Jetstream's ``time_us``)."""

MAX_FRAME_BYTES: Final = 5 * 1024 * 1024
"""Largest frame accepted as a template or read from a PDS (the PDS's own limit on a
commit's CAR is 2 MB; ``tooBig`` commits carry none)."""

MAX_CAR_BLOCKS: Final = 100_000

InjectKind = Literal[
    "garbage", "truncated", "bad_cid", "error_frame", "info", "unknown_type"
]
"""What :meth:`ReplayRelay.inject` can put into the stream."""

_REPLACING: Final = frozenset({"garbage", "truncated", "bad_cid", "unknown_type"})
_INSERTING: Final = frozenset({"error_frame", "info"})


class RelayError(ValueError):
    """A template frame, a CAR or a seeding request is unusable. ``rule`` is the
    rule ID (UPPER_SNAKE), ``where`` says which frame, block or request."""

    def __init__(self, rule: str, reason: str, where: str = "") -> None:
        self.rule = rule
        self.reason = reason
        self.where = where
        super().__init__(f"{rule}: {reason}" + (f" (at {where})" if where else ""))


# --------------------------------------------------------------------------- frames


def split_frame(frame: bytes) -> tuple[dict[str, Any], dict[str, Any], int]:
    """Decode one event-stream frame into ``(header, body, header_length)``: two
    DAG-CBOR maps back to back (Event Stream spec, "Framing"); CIDs become
    :class:`cbrrr.CID`. Raises :class:`RelayError` ``FRAME_UNDECODABLE`` when
    either is not DAG-CBOR or not a map, or bytes follow the body."""
    try:
        header, hlen = cbrrr._cbrrr.decode_dag_cbor(frame, cbrrr.CID, False)
        body = cbrrr.decode_dag_cbor(frame[hlen:])
    except (ValueError, TypeError, EOFError) as exc:
        raise RelayError("FRAME_UNDECODABLE", str(exc)) from exc
    if not isinstance(header, dict) or not isinstance(body, dict):
        raise RelayError("FRAME_UNDECODABLE", "header or body is not a map")
    return header, body, hlen


def _varint(data: bytes, pos: int, where: str) -> tuple[int, int]:
    """An unsigned LEB128 varint (multiformats unsigned-varint, at most 9 bytes) at
    ``pos``: ``(value, next_pos)``."""
    value = shift = 0
    for i in range(pos, min(pos + 9, len(data))):
        b = data[i]
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, i + 1
        shift += 7
    raise RelayError("CAR_VARINT", f"bad varint at byte {pos}", where)


def car_blocks(car: bytes) -> dict[bytes, tuple[int, int]]:
    """The blocks of a CAR v1 (carv1 spec: varint-prefixed header, then sections of
    varint length + CID + block): raw CID bytes -> ``(offset, length)`` of the
    block's bytes in ``car``. Only CIDv1 with a sha2-256 multihash is accepted
    (what atproto repositories use). Raises :class:`RelayError` (``CAR_*``) on a
    malformed CAR or more than :data:`MAX_CAR_BLOCKS` blocks."""
    hlen, pos = _varint(car, 0, "CAR header")
    pos += hlen
    if pos > len(car):
        raise RelayError("CAR_TRUNCATED", "header runs past the end", "CAR header")
    out: dict[bytes, tuple[int, int]] = {}
    while pos < len(car):
        if len(out) >= MAX_CAR_BLOCKS:
            raise RelayError("CAR_TOO_MANY_BLOCKS", f"over {MAX_CAR_BLOCKS} blocks")
        where = f"CAR byte {pos}"
        size, start = _varint(car, pos, where)
        end = start + size
        if end > len(car):
            raise RelayError("CAR_TRUNCATED", "section runs past the end", where)
        version, p = _varint(car, start, where)
        _codec, p = _varint(car, p, where)
        mh_code, p = _varint(car, p, where)
        mh_len, p = _varint(car, p, where)
        if version != 1 or mh_code != 0x12 or mh_len != 32 or p + 32 > end:
            raise RelayError("CAR_CID_UNSUPPORTED", "not a CIDv1 sha2-256", where)
        out[car[start : p + 32]] = (p + 32, end - p - 32)
        pos = end
    return out


def _cbor_uint(n: int) -> bytes:
    """The shortest DAG-CBOR encoding of the unsigned integer ``n`` (RFC 8949 §4.2.1,
    as DAG-CBOR requires)."""
    if n < 24:
        return bytes((n,))
    if n < 0x100:
        return bytes((0x18, n))
    if n < 0x10000:
        return b"\x19" + n.to_bytes(2, "big")
    if n < 0x100000000:
        return b"\x1a" + n.to_bytes(4, "big")
    return b"\x1b" + n.to_bytes(8, "big")


_SEQ_SENTINEL: Final = 0x5EED_C0DE_5EED_C0DE
_TIME_SENTINEL: Final = "@@@@@ReplayRelayTime@@@@"  # 24 chars, like the time
_TIME_LEN: Final = 24  # "YYYY-MM-DDTHH:MM:SS.mmmZ"


class _Clock:
    """The send time as 24 ASCII bytes, ``YYYY-MM-DDTHH:MM:SS.mmmZ`` (UTC), cached
    per millisecond."""

    __slots__ = ("_ms", "_prefix", "_second", "_value")

    def __init__(self) -> None:
        self._ms = -1
        self._second = -1
        self._prefix = b""
        self._value = b""

    def now(self) -> bytes:
        ms = time.time_ns() // 1_000_000
        if ms != self._ms:
            second = ms // 1000
            if second != self._second:
                stamp = _dt.datetime.fromtimestamp(second, _dt.UTC)
                self._prefix = stamp.strftime("%Y-%m-%dT%H:%M:%S.").encode()
                self._second = second
            self._value = self._prefix + b"%03dZ" % (ms % 1000)
            self._ms = ms
        return self._value


@dataclass(frozen=True, slots=True)
class _Template:
    """One template frame, pre-encoded: the frame for seq ``k`` at time ``t`` is
    ``pre + uint(k) + mid + t + post`` (DAG-CBOR orders map keys by length, then
    bytes, so ``seq`` precedes ``time`` whatever their values)."""

    index: int
    t: str
    header: dict[str, Any]
    body: dict[str, Any]
    pre: bytes
    mid: bytes
    post: bytes

    def frame(self, seq: int, now: bytes) -> bytes:
        return b"".join((self.pre, _cbor_uint(seq), self.mid, now, self.post))


def _split_sentinels(head: bytes, encoded: bytes, where: str) -> tuple[bytes, ...]:
    seq_pat = _cbor_uint(_SEQ_SENTINEL)
    time_pat = b"\x78\x18" + _TIME_SENTINEL.encode()
    i, j = encoded.find(seq_pat), encoded.find(time_pat)
    if i < 0 or j < i or encoded.count(seq_pat) != 1 or encoded.count(time_pat) != 1:
        raise RelayError("RELAY_TEMPLATE_SPLICE", "cannot place seq/time", where)
    return (
        head + encoded[:i],
        encoded[i + len(seq_pat) : j + 2],
        encoded[j + len(time_pat) :],
    )


def _template(index: int, frame: bytes) -> _Template:
    where = f"template {index}"
    if len(frame) > MAX_FRAME_BYTES:
        raise RelayError("RELAY_TEMPLATE_TOO_BIG", f"{len(frame)} bytes", where)
    try:
        header, body, hlen = split_frame(frame)
    except RelayError as exc:
        raise RelayError(exc.rule, exc.reason, where) from exc
    t = header.get("t")
    if header.get("op") != 1 or not isinstance(t, str):
        raise RelayError("RELAY_TEMPLATE_NOT_MESSAGE", f"header {header!r}", where)
    if not isinstance(body.get("seq"), int):
        raise RelayError("RELAY_TEMPLATE_NO_SEQ", f"{t} has no seq", where)
    marked = dict(body, seq=_SEQ_SENTINEL, time=_TIME_SENTINEL)
    pre, mid, post = _split_sentinels(
        frame[:hlen], cbrrr.encode_dag_cbor(marked), where
    )
    return _Template(index, t, header, body, pre, mid, post)


def _header(op: int, t: str | None = None) -> bytes:
    return cbrrr.encode_dag_cbor({"op": op} if t is None else {"op": op, "t": t})


def error_frame(error: str, message: str = "") -> bytes:
    """An error frame: header ``{op: -1}``, body ``{error, message}`` (Event Stream
    spec, "Framing"); the relay closes the connection after it."""
    body: dict[str, Any] = {"error": error}
    if message:
        body["message"] = message
    return _header(-1) + cbrrr.encode_dag_cbor(body)


def info_frame(name: str, message: str = "") -> bytes:
    """A ``#info`` frame (``com.atproto.sync.subscribeRepos#info``), which has no
    ``seq``."""
    body: dict[str, Any] = {"name": name}
    if message:
        body["message"] = message
    return _header(1, "#info") + cbrrr.encode_dag_cbor(body)


def _corrupt_block(tpl: _Template) -> _Template | None:
    """``tpl`` with one byte of a record block in its CAR flipped, so the block no
    longer hashes to its CID (the op's ``cid``); ``None`` when the frame carries no
    record block. The flipped byte is the block's last ASCII letter or digit, so
    the block usually still decodes."""
    blocks = tpl.body.get("blocks")
    ops = tpl.body.get("ops")
    if tpl.t != "#commit" or not isinstance(blocks, bytes) or not isinstance(ops, list):
        return None
    index = car_blocks(blocks)
    for op in ops:
        cid = op.get("cid") if isinstance(op, dict) else None
        if not isinstance(cid, cbrrr.CID) or bytes(cid) not in index:
            continue
        off, size = index[bytes(cid)]
        car = bytearray(blocks)
        for pos in range(off + size - 1, off - 1, -1):
            c = car[pos]
            if 0x30 <= c <= 0x39 or 0x41 <= c <= 0x5A or 0x61 <= c <= 0x7A:
                car[pos] = c ^ 0x01 if (c ^ 0x01) != 0x40 else c ^ 0x02
                break
        else:
            car[off + size - 1] ^= 0x01
        body = dict(tpl.body, blocks=bytes(car))
        frame = _header(1, "#commit") + cbrrr.encode_dag_cbor(body)
        return _template(tpl.index, frame)
    return None


# ----------------------------------------------------------------------- jetstream


@dataclass(frozen=True, slots=True)
class _JetMessage:
    """One Jetstream event of a template frame: for commits, the static JSON
    around ``time_us`` (``head + str(time_us) + tail``); identity and account
    events carry ``seq`` and ``time`` and are encoded when sent."""

    kind: str
    did: str
    collection: str | None
    head: bytes = b""
    tail: bytes = b""
    body: dict[str, Any] | None = None


def _jetstream_messages(tpl: _Template) -> list[_JetMessage]:
    """The Jetstream events of one subscribeRepos frame (Jetstream README, "Example
    events"): one ``commit`` event per record operation (``record`` in the JSON
    data model, as ``cbrrr.decode_dag_cbor(block, atjson_mode=True)`` gives it),
    ``identity``, ``account``; ``#sync`` and unknown types have none."""
    body = tpl.body
    if tpl.t == "#commit":
        repo = str(body.get("repo", ""))
        blocks = body.get("blocks") or b""
        index = car_blocks(blocks) if isinstance(blocks, bytes) and blocks else {}
        out: list[_JetMessage] = []
        for op in body.get("ops") or []:
            collection, _, rkey = str(op.get("path", "")).partition("/")
            commit: dict[str, Any] = {
                "rev": body.get("rev"),
                "operation": op.get("action"),
                "collection": collection,
                "rkey": rkey,
            }
            cid = op.get("cid")
            if op.get("action") in ("create", "update") and isinstance(cid, cbrrr.CID):
                span = index.get(bytes(cid))
                if span is None:
                    continue  # tooBig commit: Jetstream fetches; we skip it
                off, size = span
                record = cbrrr.decode_dag_cbor(blocks[off : off + size], True)
                commit["record"] = record
                commit["cid"] = cid.encode()
            msg = orjson.dumps(
                {"did": repo, "time_us": 0, "kind": "commit", "commit": commit}
            )
            cut = msg.index(b'"time_us":0') + len(b'"time_us":')
            out.append(
                _JetMessage("commit", repo, collection, msg[:cut], msg[cut + 1 :])
            )
        return out
    if tpl.t in ("#identity", "#account"):
        kind = tpl.t[1:]
        did = str(body.get("did", ""))
        keep = ("did", "handle") if kind == "identity" else ("active", "did", "status")
        inner = {k: body[k] for k in keep if k in body}
        return [_JetMessage(kind, did, None, body=inner)]
    return []


def _wants(
    msg: _JetMessage,
    collections: frozenset[str],
    prefixes: tuple[str, ...],
    dids: frozenset[str],
) -> bool:
    """Jetstream's filters: ``wantedDids`` applies to every event; ``wantedCollections``
    (exact NSIDs or ``prefix.*``) only to commits — identity and account events
    reach every subscriber (Jetstream README, "wantedCollections")."""
    if dids and msg.did not in dids:
        return False
    if msg.collection is None or not (collections or prefixes):
        return True
    return msg.collection in collections or msg.collection.startswith(prefixes)


# ------------------------------------------------------------------------ the relay


@dataclass(frozen=True)
class ConnectionStats:
    """One client connection: ``kind`` ``repos`` or ``jetstream``; ``cursor`` as
    asked (None: none); ``frames_sent`` counts every message handed to the socket
    (injected ones too), ``seqs`` the ranges ``(first, last)`` of frame numbers
    sent; ``closed`` why it ended (``client``, ``disconnect_all``,
    ``ConsumerTooSlow``, ``error_frame``, ``end``, ``FutureCursor``, ``stop``) or
    None while open."""

    id: int
    kind: str
    path: str
    cursor: int | None
    frames_sent: int
    bytes_sent: int
    seqs: tuple[tuple[int, int], ...]
    closed: str | None

    @property
    def last_seq(self) -> int | None:
        return self.seqs[-1][1] if self.seqs else None


@dataclass(eq=False)
class _Conn:
    id: int
    kind: str
    path: str
    cursor: int | None
    ws: ServerConnection
    frames_sent: int = 0
    bytes_sent: int = 0
    ranges: list[list[int]] = field(default_factory=list)
    closed: str | None = None
    killed: bool = False

    def record(self, seq: int) -> None:
        if self.ranges and self.ranges[-1][1] == seq - 1:
            self.ranges[-1][1] = seq
        else:
            self.ranges.append([seq, seq])

    def stats(self) -> ConnectionStats:
        return ConnectionStats(
            self.id,
            self.kind,
            self.path,
            self.cursor,
            self.frames_sent,
            self.bytes_sent,
            tuple((a, b) for a, b in self.ranges),
            self.closed,
        )


_BATCH: Final = 128  # frames written per turn of a connection's loop
_CHECK_S: Final = 0.02  # slow-consumer check period while the socket is full


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class ReplayRelay:
    """A loopback relay serving real frames (see the module docstring).

    - ``templates``: raw subscribeRepos frames, each with a ``seq`` (``#commit``,
      ``#sync``, ``#identity``, ``#account``; ``#info`` is refused:
      :class:`RelayError` ``RELAY_TEMPLATE_NO_SEQ``).
    - ``total``: how many frames exist (None: endless; default: one pass over the
      templates). After the last one the connection stays open and idle, like a
      live relay with no new events, or is closed (code 1000) with
      ``close_at_end``.
    - ``rate``: frames per second produced by the relay's clock, shared by every
      connection (None: all exist at once and each connection is sent as fast as it
      reads). ``bursts``: ``(at_seq, count, rate)``: frames ``at_seq`` ..
      ``at_seq + count - 1`` are produced at ``rate`` instead.
    - ``max_queue``: the outbound queue bound per connection, in frames: when the
      frames produced since the client subscribed but not yet handed to its
      socket exceed it, the client gets an error frame ``ConsumerTooSlow`` and is
      closed (code 1008), as real relays do. Size it in seconds of ``rate``: on
      a loaded 2-core machine a reader can stall for a few hundred milliseconds.
      A connection replaying old frames (a cursor behind the head) is sent them
      with backpressure and is not counted as slow for them; with ``rate=None``
      nobody is ever too slow.
    - ``drop_grace``: seconds a dropped client is given to read its buffered
      frames, the error frame and the close frame before the TCP connection is
      aborted.

    ``?cursor=N`` resumes at ``N + 1`` (absent or 0: from 1); ``N`` past the
    produced head is refused with an error frame ``FutureCursor``. Controls are
    thread-safe and take effect on return. Run it in another process than a
    consumer whose speed is measured (they would share the GIL).
    """

    def __init__(
        self,
        templates: Sequence[bytes],
        *,
        total: int | None | Literal["templates"] = "templates",
        rate: float | None = None,
        bursts: Iterable[tuple[int, int, float]] = (),
        max_queue: int = 50_000,
        close_at_end: bool = False,
        drop_grace: float = 5.0,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        if not templates:
            raise RelayError("RELAY_NO_TEMPLATES", "at least one template frame")
        self._templates = [_template(i, f) for i, f in enumerate(templates)]
        self._n = len(self._templates)
        self._total: int | None = self._n if total == "templates" else total
        if self._total is not None and self._total < 0:
            raise ValueError("total must be >= 0")
        self._check_rate(rate)
        self._rate = rate
        self._bursts: deque[list[float]] = deque()
        for at_seq, count, brate in sorted(bursts):
            self._add_burst(at_seq, count, brate)
        if max_queue < 1:
            raise ValueError("max_queue must be >= 1")
        self.max_queue = max_queue
        self.close_at_end = close_at_end
        self.drop_grace = drop_grace
        self._host = host
        self._port = port
        # the clock (loop thread only once started)
        self._head = 0
        self._credit = 0.0
        self._t = time.monotonic()
        self._paused = False
        self._advance()
        # injections
        self._lock = threading.Lock()
        self._replace: dict[int, tuple[str, dict[str, Any]]] = {}
        self._insert: dict[int, list[tuple[str, dict[str, Any]]]] = {}
        self._corrupt: dict[int, _Template | None] = {}
        # Jetstream (built on first use)
        self._jet: list[list[_JetMessage]] | None = None
        self._jet_cum: list[int] = []
        self._jet_t0 = time.time_ns() // 1000
        # connections and counters
        self._ids = itertools.count(1)
        self._conns: dict[int, _Conn] = {}
        self._done: list[ConnectionStats] = []
        self.connections_accepted = 0
        self.too_slow_drops = 0
        self.last_seq_sent = 0
        self._clock = _Clock()
        # the server thread
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._stop_fut: asyncio.Future[None] | None = None
        self._changed: asyncio.Future[None] | None = None
        self._error: BaseException | None = None

    # ------------------------------------------------------------------ lifecycle

    @property
    def url(self) -> str:
        """``ws://127.0.0.1:<port>`` (clients append :data:`REPOS_PATH` or
        :data:`JETSTREAM_PATH` and the query)."""
        if not self._ready.is_set():
            raise RuntimeError("the relay is not started")
        return f"ws://{self._host}:{self._port}"

    @property
    def repos_url(self) -> str:
        """The full ``subscribeRepos`` URL, without a cursor."""
        return self.url + REPOS_PATH

    @property
    def jetstream_url(self) -> str:
        """The full Jetstream URL (``/subscribe``), without a query."""
        return self.url + JETSTREAM_PATH

    def start(self, timeout: float = 10.0) -> Self:
        """Start serving in a background thread; returns when it listens."""
        if self._thread is not None:
            raise RuntimeError("already started")
        self._thread = threading.Thread(
            target=self._run, name="replay-relay", daemon=True
        )
        self._thread.start()
        if not self._ready.wait(timeout) or self._error is not None:
            raise RuntimeError(f"the relay did not start: {self._error!r}")
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Close every connection (code 1001) and stop the server thread."""
        loop, fut = self._loop, self._stop_fut
        if loop is not None and fut is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(_resolve, fut)
        if self._thread is not None:
            self._thread.join(timeout)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._main())
        except BaseException as exc:  # noqa: BLE001 - reported by start()
            self._error = exc
            self._ready.set()
        finally:
            loop.close()

    async def _main(self) -> None:
        loop = asyncio.get_running_loop()
        self._stop_fut = loop.create_future()
        self._changed = loop.create_future()
        self._t = time.monotonic()
        server: Server
        async with serve(
            self._handler,
            self._host,
            self._port,
            process_request=self._route,
            compression=None,
            max_size=64 * 1024,
            max_queue=4,
            write_limit=256 * 1024,
            close_timeout=2,
        ) as server:
            self._port = next(iter(server.sockets)).getsockname()[1]
            self._ready.set()
            await self._stop_fut
            for conn in list(self._conns.values()):
                conn.closed = conn.closed or "stop"
            self._wake()
            server.close()
            try:
                async with asyncio.timeout(3):
                    await server.wait_closed()
            except TimeoutError:
                for conn in list(self._conns.values()):
                    conn.ws.transport.abort()

    def _call(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` in the relay's loop and return its result (directly when the
        relay is not running)."""
        loop = self._loop
        if loop is None or not self._ready.is_set() or loop.is_closed():
            return fn()
        if threading.current_thread() is self._thread:
            return fn()

        async def run() -> Any:
            return fn()

        return asyncio.run_coroutine_threadsafe(run(), loop).result(10)

    def _wake(self) -> None:
        """Wake every connection loop (a control changed)."""
        fut = self._changed
        if fut is not None and not fut.done():
            fut.set_result(None)
        if self._loop is not None and self._stop_fut is not None:
            self._changed = self._loop.create_future()

    async def _idle(self, seconds: float) -> None:
        fut = self._changed
        if fut is None:
            await asyncio.sleep(seconds)
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await asyncio.shield(fut)

    # ---------------------------------------------------------------------- clock

    @staticmethod
    def _check_rate(rate: float | None) -> None:
        if rate is not None and not rate > 0:
            raise ValueError("rate must be > 0 frames/s or None")

    def _add_burst(self, at_seq: int, count: int, rate: float) -> None:
        self._check_rate(rate)
        if self._rate is None:
            raise ValueError("bursts need a base rate (rate=None sends all at once)")
        if count < 1 or at_seq < 1:
            raise ValueError("a burst needs at_seq >= 1 and count >= 1")
        if self._bursts:
            last_start, last_count, _ = self._bursts[-1]
            if at_seq < last_start + last_count:
                raise ValueError("bursts must not overlap")
        self._bursts.append([at_seq, count, rate])

    def _limit(self) -> float:
        return float("inf") if self._total is None else float(self._total)

    def _advance(self) -> None:
        """Move the head (frames produced) to now: ``rate`` frames per second, or
        a burst's rate over its frames; nothing while paused."""
        now = time.monotonic()
        dt, self._t = now - self._t, now
        if self._paused:
            return
        limit = self._limit()
        if self._rate is None:
            self._head = int(min(limit, sys.maxsize))
            return
        while dt > 0 and self._head < limit:
            while (
                self._bursts
                and self._bursts[0][0] + self._bursts[0][1] <= self._head + 1
            ):
                self._bursts.popleft()
            rate = self._rate
            seg_end = limit
            if self._bursts:
                start, count, brate = self._bursts[0]
                if start <= self._head + 1:
                    rate, seg_end = brate, min(limit, start + count - 1)
                else:
                    seg_end = min(limit, start - 1)
            avail = self._credit + dt * rate
            if self._head + avail >= seg_end:
                dt -= (seg_end - self._head - self._credit) / rate
                self._head = int(seg_end)
                self._credit = 0.0
            else:
                whole = int(avail)
                self._head += whole
                self._credit = avail - whole
                dt = 0
        if self._head >= limit:
            self._credit = 0.0

    def _next_due(self) -> float:
        """Seconds until the next frame is produced (bounded to [1 ms, 250 ms])."""
        if self._rate is None or self._paused:
            return 0.25
        rate = self._rate
        if self._bursts and self._bursts[0][0] <= self._head + 1:
            rate = self._bursts[0][2]
        return min(0.25, max(0.001, (1.0 - self._credit) / rate))

    @property
    def head(self) -> int:
        """Frames produced so far (the newest frame number that exists)."""

        def get() -> int:
            self._advance()
            return min(self._head, sys.maxsize)

        return int(self._call(get))

    @property
    def total(self) -> int | None:
        return self._total

    # ------------------------------------------------------------------- controls

    def pause(self) -> None:
        """Stop producing and sending frames (connections stay open, idle)."""

        def do() -> None:
            self._advance()
            self._paused = True

        self._call(do)

    def resume(self) -> None:
        """Produce and send again, at the current rate, from where it paused."""

        def do() -> None:
            self._t = time.monotonic()
            self._paused = False
            self._wake()

        self._call(do)

    def set_rate(self, rate: float | None) -> None:
        """Change the base rate (frames/s; None: everything now)."""
        self._check_rate(rate)

        def do() -> None:
            self._advance()
            if rate is None:
                self._bursts.clear()
            self._rate = rate
            self._wake()

        self._call(do)

    def set_total(self, total: int | None) -> None:
        """Change how many frames exist (None: endless)."""

        def do() -> None:
            self._advance()
            self._total = total
            self._head = min(self._head, total) if total is not None else self._head
            self._wake()

        self._call(do)

    def burst(self, count: int, rate: float) -> int:
        """Produce the next ``count`` frames at ``rate`` frames/s (after any burst
        already pending), then go back to the base rate. Returns the burst's first
        frame number."""

        def do() -> int:
            self._advance()
            start = self._head + 1
            if self._bursts:
                start = max(start, int(self._bursts[-1][0] + self._bursts[-1][1]))
            self._add_burst(start, count, rate)
            self._wake()
            return start

        return int(self._call(do))

    def disconnect_all(self) -> int:
        """Abort every client's TCP connection at once (no close frame), as a
        crashing relay would. Returns how many were dropped."""

        def do() -> int:
            n = 0
            for conn in list(self._conns.values()):
                if not conn.killed:
                    conn.killed = True
                    conn.closed = "disconnect_all"
                    conn.ws.transport.abort()
                    n += 1
            self._wake()
            return n

        return int(self._call(do))

    def inject(self, kind: InjectKind, at_seq: int, **options: Any) -> None:
        """Put a malformed or special frame into the stream at frame number
        ``at_seq``:

        - ``garbage`` (``0xff`` + random bytes, deterministic per seq; no header
          decodes), ``truncated`` (the real frame cut in the middle of its body),
          ``bad_cid`` (a record block's byte flipped in the CAR: its CID no longer
          matches; the frame is otherwise valid, seq and time rewritten; taken from
          the next template with a record block if this one has none),
          ``unknown_type`` (header ``t`` ``#futureThing``, body with ``seq`` and
          ``time``) *replace* frame ``at_seq``: they occupy its seq, every time it
          is sent;
        - ``info`` (``#info`` ``OutdatedCursor``; options ``name``, ``message``)
          and ``error_frame`` (``op`` -1, options ``error`` (default
          ``InjectedError``) and ``message``; the relay then closes with code 1011)
          are sent *before* frame ``at_seq``, once (to the first connection that
          gets there), and occupy no seq.
        """
        if at_seq < 1:
            raise ValueError("at_seq must be >= 1")
        if kind in _REPLACING:
            if kind == "bad_cid":
                self._bad_cid_template(at_seq)  # fail now if there is none
            with self._lock:
                self._replace[at_seq] = (kind, options)
        elif kind in _INSERTING:
            with self._lock:
                self._insert.setdefault(at_seq, []).append((kind, options))
        else:
            raise ValueError(f"unknown injection {kind!r}")

    def _bad_cid_template(self, seq: int) -> _Template:
        base = (seq - 1) % self._n
        for step in range(self._n):
            i = (base + step) % self._n
            if i not in self._corrupt:
                self._corrupt[i] = _corrupt_block(self._templates[i])
            tpl = self._corrupt[i]
            if tpl is not None:
                return tpl
        raise RelayError("RELAY_NO_RECORD_BLOCK", "no template has a record block")

    # ------------------------------------------------------------------ the frames

    def frame(self, seq: int, now: bytes | None = None) -> bytes:
        """The frame sent as number ``seq`` (injections that replace it applied),
        with ``time`` ``now`` (24 ASCII bytes; default: now)."""
        t = self._clock.now() if now is None else now
        repl = self._replace.get(seq)
        if repl is not None:
            return self._replacement(seq, repl[0], t)
        return self._templates[(seq - 1) % self._n].frame(seq, t)

    def template_of(self, seq: int) -> tuple[dict[str, Any], dict[str, Any]]:
        """Header and body (decoded, with the template's own ``seq`` and ``time``)
        of the template that frame ``seq`` is made from, to compute what a
        consumer should have stored for it (injections not applied)."""
        tpl = self._templates[(seq - 1) % self._n]
        return dict(tpl.header), dict(tpl.body)

    @property
    def templates(self) -> int:
        """How many template frames there are (frame ``k`` is template
        ``(k - 1) % templates``)."""
        return self._n

    def _replacement(self, seq: int, kind: str, now: bytes) -> bytes:
        if kind == "garbage":
            rnd = random.Random(seq)
            return b"\xff" + rnd.randbytes(rnd.randrange(8, 512))
        if kind == "truncated":
            good = self._templates[(seq - 1) % self._n].frame(seq, now)
            _, hlen = cbrrr._cbrrr.decode_dag_cbor(good, cbrrr.CID, False)
            return good[: hlen + max(1, (len(good) - hlen) // 2)]
        if kind == "bad_cid":
            return self._bad_cid_template(seq).frame(seq, now)
        if kind == "unknown_type":
            body: dict[str, Any] = {
                "seq": seq,
                "time": now.decode(),
                "thing": "from the future",
            }
            return _header(1, "#futureThing") + cbrrr.encode_dag_cbor(body)
        raise AssertionError(kind)

    def _inserted(self, seq: int) -> list[tuple[str, bytes]]:
        with self._lock:
            items = self._insert.pop(seq, None)
        out: list[tuple[str, bytes]] = []
        for kind, opt in items or ():
            if kind == "info":
                name = str(opt.get("name", "OutdatedCursor"))
                out.append((kind, info_frame(name, str(opt.get("message", "")))))
            else:
                error = str(opt.get("error", "InjectedError"))
                message = str(opt.get("message", f"injected before seq {seq}"))
                out.append((kind, error_frame(error, message)))
        return out

    # ---------------------------------------------------------------- the server

    def _route(self, conn: ServerConnection, request: Request) -> Response | None:
        path = urlsplit(request.path).path
        if path in (REPOS_PATH, JETSTREAM_PATH):
            return None
        return conn.respond(http.HTTPStatus.NOT_FOUND, f"no route {path}\n")

    async def _handler(self, ws: ServerConnection) -> None:
        parts = urlsplit(ws.request.path if ws.request else "")
        query = parse_qs(parts.query)
        kind = "jetstream" if parts.path == JETSTREAM_PATH else "repos"
        raw_cursor = (query.get("cursor") or [""])[-1]
        cursor: int | None = None
        conn = _Conn(
            next(self._ids), kind, ws.request.path if ws.request else "", None, ws
        )
        self.connections_accepted += 1
        self._conns[conn.id] = conn
        try:
            if raw_cursor:
                try:
                    cursor = int(raw_cursor)
                    if cursor < 0:
                        raise ValueError
                except ValueError:
                    await self._refuse(
                        conn, "InvalidRequest", f"bad cursor {raw_cursor!r}"
                    )
                    return
            conn.cursor = cursor
            if kind == "repos":
                await self._serve_repos(conn, cursor or 0)
            else:
                await self._serve_jetstream(conn, cursor, query)
        except ConnectionClosed:
            pass
        finally:
            conn.closed = conn.closed or "client"
            del self._conns[conn.id]
            self._done.append(conn.stats())

    async def _refuse(self, conn: _Conn, error: str, message: str) -> None:
        conn.closed = error
        if conn.kind == "repos":
            await conn.ws.send(error_frame(error, message))
        await conn.ws.close(1008, error)

    def _flush(self, conn: _Conn) -> None:
        transport = conn.ws.transport
        for data in conn.ws.protocol.data_to_send():
            if transport.is_closing():  # the peer is gone: connection_lost is due
                return
            if data:
                transport.write(data)
                conn.bytes_sent += len(data)

    async def _drain(self, conn: _Conn, backlog: Callable[[], int]) -> bool:
        """Wait until the socket takes more; every :data:`_CHECK_S` while it does
        not, check the slow-consumer bound. False when the connection ended."""
        ws = conn.ws
        while True:
            if conn.killed or ws.protocol.state is not State.OPEN:
                return False
            try:
                async with asyncio.timeout(_CHECK_S):
                    await ws.drain()
                return True
            except TimeoutError:  # (an OSError: before the clause below)
                self._advance()
                if backlog() > self.max_queue:
                    await self._too_slow(conn)
                    return False
            except OSError:  # reset by the peer while waiting
                return False

    async def _too_slow(self, conn: _Conn) -> None:
        """Drop a slow consumer: the frames not yet written are discarded; the
        error frame ``ConsumerTooSlow`` and a close frame (1008) go after what is
        already buffered; after ``drop_grace`` seconds the TCP connection is
        aborted if the client has not read them."""
        self.too_slow_drops += 1
        conn.closed = "ConsumerTooSlow"
        ws = conn.ws
        if ws.protocol.state is not State.OPEN:
            return
        if conn.kind == "repos":  # Jetstream has no error frames: only the close
            ws.protocol.send_binary(error_frame("ConsumerTooSlow", "consumer too slow"))
            conn.frames_sent += 1
        ws.protocol.send_close(1008, "ConsumerTooSlow")
        self._flush(conn)
        try:
            async with asyncio.timeout(self.drop_grace):
                await asyncio.shield(ws.wait_closed())
        except TimeoutError:
            ws.transport.abort()

    def _note_sent(self, seq: int) -> None:
        self.last_seq_sent = max(self.last_seq_sent, seq)

    async def _pump(
        self,
        conn: _Conn,
        first: int,
        emit: Callable[[_Conn, int, bytes], bool],
    ) -> None:
        """Send frames ``first``, ``first + 1``, ... as the clock produces them;
        ``emit(conn, k, now)`` writes frame ``k`` through the protocol and returns
        True when the connection must end after it (an injected error frame)."""
        ws = conn.ws
        self._advance()
        if first - 1 > self._head:
            await self._refuse(conn, "FutureCursor", f"cursor is past seq {self._head}")
            return
        live_from = self._head  # frames after this were produced while subscribed
        k = first

        def backlog() -> int:
            if self._rate is None:
                return 0
            return self._head - max(k - 1, live_from)

        while True:
            if conn.killed or ws.protocol.state is not State.OPEN:
                return
            if ws.transport.is_closing():
                await asyncio.sleep(0)  # let connection_lost run
                continue
            self._advance()
            if self._paused or k > self._head:
                if (
                    not self._paused
                    and self._total is not None
                    and k > self._total
                    and self.close_at_end
                ):
                    conn.closed = "end"
                    await ws.close(1000, "end of stream")
                    return
                await self._idle(self._next_due())
                continue
            if backlog() > self.max_queue:
                await self._too_slow(conn)
                return
            stop = min(self._head, k + _BATCH - 1)
            now = self._clock.now()
            ending = False
            while k <= stop:
                ending = emit(conn, k, now)
                if ending:
                    break
                conn.record(k)
                k += 1
            self._flush(conn)
            self._note_sent(k - 1)
            if ending:
                conn.closed = "error_frame"
                await ws.close(1011, "error frame")
                return
            if not await self._drain(conn, backlog):
                return
            await asyncio.sleep(0)

    async def _serve_repos(self, conn: _Conn, cursor: int) -> None:
        replace, templates, n = self._replace, self._templates, self._n

        def emit(conn: _Conn, k: int, now: bytes) -> bool:
            proto = conn.ws.protocol
            if k in self._insert:
                for kind, data in self._inserted(k):
                    proto.send_binary(data)
                    conn.frames_sent += 1
                    if kind == "error_frame":
                        return True
            if replace and k in replace:
                data = self._replacement(k, replace[k][0], now)
            else:
                data = templates[(k - 1) % n].frame(k, now)
            proto.send_binary(data)
            conn.frames_sent += 1
            return False

        await self._pump(conn, cursor + 1, emit)

    # ------------------------------------------------------------------ jetstream

    def _jetstream(self) -> tuple[list[list[_JetMessage]], list[int]]:
        if self._jet is None:
            jet = [_jetstream_messages(t) for t in self._templates]
            self._jet_cum = [0, *itertools.accumulate(len(m) for m in jet)]
            self._jet = jet
        return self._jet, self._jet_cum

    def jetstream_time_us(self, seq: int, idx: int = 0) -> int:
        """Jetstream ``time_us`` of the ``idx``-th event of frame ``seq``: the
        relay's start time in microseconds plus the event's 1-based position in the
        Jetstream stream (unique, increasing)."""
        _, cum = self._jetstream()
        c, r = divmod(seq - 1, self._n)
        return self._jet_t0 + c * cum[-1] + cum[r] + idx + 1

    def _jet_position(self, cursor: int) -> tuple[int, int]:
        """Frame number and event index of the first event with ``time_us >=
        cursor`` (Jetstream replays from the cursor, inclusive)."""
        _, cum = self._jetstream()
        per_cycle = cum[-1]
        j = cursor - self._jet_t0  # 1-based position wanted
        if j <= 1 or per_cycle == 0:
            return 1, 0
        c, within = divmod(j - 1, per_cycle)
        r = bisect.bisect_right(cum, within) - 1
        return c * self._n + r + 1, within - cum[r]

    async def _serve_jetstream(
        self, conn: _Conn, cursor: int | None, query: dict[str, list[str]]
    ) -> None:
        jet, cum = self._jetstream()
        wanted = [
            c for v in query.get("wantedCollections", []) for c in v.split(",") if c
        ]
        exact = frozenset(c for c in wanted if not c.endswith(".*"))
        prefixes = tuple(c[:-1] for c in wanted if c.endswith(".*"))
        dids = frozenset(
            d for v in query.get("wantedDids", []) for d in v.split(",") if d
        )
        first, skip = (1, 0) if not cursor else self._jet_position(cursor)
        if first - 1 > self._head:
            first, skip = self._head + 1, 0  # a cursor in the future: live tail
        t0, per_cycle, n = self._jet_t0, cum[-1], self._n

        def emit(conn: _Conn, k: int, now: bytes) -> bool:
            c, r = divmod(k - 1, n)
            base = t0 + c * per_cycle + cum[r] + 1
            proto = conn.ws.protocol
            nonlocal skip
            for i, msg in enumerate(jet[r]):
                if skip:
                    skip -= 1
                    continue
                if not _wants(msg, exact, prefixes, dids):
                    continue
                if msg.body is None:
                    data = msg.head + str(base + i).encode() + msg.tail
                else:
                    inner = dict(msg.body, seq=k, time=now.decode())
                    data = orjson.dumps(
                        {
                            "did": msg.did,
                            "time_us": base + i,
                            "kind": msg.kind,
                            msg.kind: inner,
                        }
                    )
                proto.send_text(data)
                conn.frames_sent += 1
            return False

        await self._pump(conn, first, emit)

    # ------------------------------------------------------------------ counters

    def connections(self) -> list[ConnectionStats]:
        """Every connection so far, closed ones first, in order of opening."""

        def get() -> list[ConnectionStats]:
            open_ = [c.stats() for c in self._conns.values()]
            return sorted([*self._done, *open_], key=lambda s: s.id)

        return list(self._call(get))

    def sent_seqs(self, connection: int | None = None) -> list[int]:
        """The frame numbers sent, in order: to connection ``connection`` (an id of
        :meth:`connections`), or to the last connection opened."""
        conns = self.connections()
        if not conns:
            return []
        stats = (
            conns[-1]
            if connection is None
            else next(s for s in conns if s.id == connection)
        )
        return [k for a, b in stats.seqs for k in range(a, b + 1)]

    @property
    def frames_sent(self) -> int:
        """Messages handed to sockets over all connections."""
        return sum(s.frames_sent for s in self.connections())

    def wait_sent(self, seq: int, timeout: float = 60.0) -> None:
        """Block until some connection was sent frame ``seq``; ``TimeoutError``
        after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while self.last_seq_sent < seq:
            if time.monotonic() > deadline:
                raise TimeoutError(f"frame {seq} not sent (last {self.last_seq_sent})")
            time.sleep(0.01)

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 30.0) -> None:
        """Block until ``predicate()`` is true (polled every 10 ms);
        ``TimeoutError`` after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise TimeoutError("condition not reached")
            time.sleep(0.01)


# ----------------------------------------------------------------- seeding a PDS


class AccountLike(Protocol):
    """An account on the PDS (``atdata_gen.testing.localnet.Account``)."""

    @property
    def handle(self) -> str: ...
    @property
    def did(self) -> str: ...
    @property
    def password(self) -> str: ...


class NetworkLike(Protocol):
    """The local network (``atdata_gen.testing.localnet.LocalNetwork``)."""

    @property
    def pds_url(self) -> str: ...
    def create_account(self, name: str, password: str | None = None) -> Any: ...


@dataclass(frozen=True)
class SeedResult:
    """What :func:`seed_pds` wrote: ``commits`` (``applyWrites`` calls),
    ``ops`` per ``"<action> <collection>"``, ``latest_rev`` (DID -> ``rev`` of its
    last commit: :func:`record_frames` reads up to these), and ``account_events``
    (deactivate/activate cycles, each an ``#account`` pair)."""

    commits: int
    ops: Mapping[str, int]
    latest_rev: Mapping[str, str]
    account_events: int

    @property
    def records(self) -> int:
        return sum(self.ops.values())


_WORD_TEXT: Final = (
    "the a dataset model sample shard firehose relay atproto lexicon schema "
    "science open data weights benchmark training eval image text audio "
    "graph protein genome climate ocean city river forest night morning "
    "coffee code python rust release paper review tuesday finally works "
    "broken fixed shipped tiny huge fast slow new old beta alpha thread "
    "notes idea question answer"
)
_WORDS: Final = tuple(_WORD_TEXT.split())
_FLAVOURS: Final = ("", "", "", " 🚀", " ✨", " — ça marche", " データ", " 🧬🔬")
_LANGS: Final = (["en"], ["en"], ["en"], ["de"], ["ja"], ["es", "en"], ["fr"])
_FIELDS: Final = ("integer", "number", "string", "boolean")


def _now_iso() -> str:
    return (
        _dt.datetime.now(_dt.UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


def _sentence(rng: random.Random, lo: int, hi: int) -> str:
    text = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(lo, hi)))
    return text[:1].upper() + text[1:] + rng.choice(_FLAVOURS)


class _Seeder:
    """The writes of one account: a deterministic sequence of commits (kinds,
    sizes and contents from ``rng``) against the real PDS. References to other
    accounts' posts depend on what they have written so far."""

    def __init__(
        self,
        pds_url: str,
        account: AccountLike,
        peers: Sequence[str],
        shared_posts: list[dict[str, str]],
        lock: threading.Lock,
        rng: random.Random,
        dataset_share: float,
    ) -> None:
        self.url = pds_url.rstrip("/")
        self.account = account
        self.peers = [p for p in peers if p != account.did]
        self.shared = shared_posts
        self.lock = lock
        self.rng = rng
        self.dataset_share = dataset_share
        self.http = httpx.Client(timeout=60)
        self.token = ""
        self.posts: list[tuple[dict[str, str], dict[str, str]]] = []  # (ref, root)
        self.deletable: list[tuple[str, str]] = []  # (collection, rkey)
        self.schemas: list[str] = []  # AT-URIs
        self.entries: list[tuple[str, dict[str, Any]]] = []  # (rkey, record)
        self.followed: set[str] = set()
        self.ops: Counter[str] = Counter()
        self.commits = 0
        self.latest_rev = ""
        self.account_events = 0

    def _xrpc(self, nsid: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        resp = self.http.post(f"{self.url}/xrpc/{nsid}", json=body, headers=headers)
        if resp.status_code != 200:
            raise RelayError(
                "SEED_REQUEST_FAILED",
                f"HTTP {resp.status_code}: {resp.text[:500]}",
                f"{nsid} for {self.account.did}",
            )
        out = resp.json() if resp.content else {}
        return out if isinstance(out, dict) else {}

    def login(self) -> None:
        session = self._xrpc(
            "com.atproto.server.createSession",
            {"identifier": self.account.handle, "password": self.account.password},
        )
        self.token = str(session["accessJwt"])

    # records ------------------------------------------------------------------

    def _post(self) -> dict[str, Any]:
        rng = self.rng
        # at most 200 characters (so at most 200 graphemes): with a link or a tag
        # appended the post stays within app.bsky.feed.post's 300 graphemes
        text = _sentence(rng, 3, 40)[:200]
        record: dict[str, Any] = {
            "$type": "app.bsky.feed.post",
            "text": text,
            "createdAt": _now_iso(),
            "langs": rng.choice(_LANGS),
        }
        roll = rng.random()
        if roll < 0.15:
            url = f"https://example.org/{rng.choice(_WORDS)}/{rng.randrange(10**6)}"
            prefix = record["text"] + " "
            start = len(prefix.encode())
            record["text"] = prefix + url
            record["facets"] = [
                {
                    "index": {"byteStart": start, "byteEnd": start + len(url.encode())},
                    "features": [{"$type": "app.bsky.richtext.facet#link", "uri": url}],
                }
            ]
        elif roll < 0.22:
            tag = rng.choice(_WORDS)
            prefix = record["text"] + " "
            start = len(prefix.encode())
            record["text"] = prefix + "#" + tag
            record["facets"] = [
                {
                    "index": {"byteStart": start, "byteEnd": start + 1 + len(tag)},
                    "features": [{"$type": "app.bsky.richtext.facet#tag", "tag": tag}],
                }
            ]
        pool = self._post_pool()
        if pool and rng.random() < 0.25:
            parent, root = rng.choice(pool)
            record["reply"] = {"root": root, "parent": parent}
        elif pool and rng.random() < 0.08:
            ref, _ = rng.choice(pool)
            record["embed"] = {"$type": "app.bsky.embed.record", "record": ref}
        return record

    def _post_pool(self) -> list[tuple[dict[str, str], dict[str, str]]]:
        with self.lock:
            others = [(p, p) for p in self.shared[-50:]]
        return self.posts[-50:] + others

    def _write(self, kind: str) -> dict[str, Any] | None:
        """One write of ``applyWrites`` for ``kind``, or None when it is not
        possible yet (nothing to like, delete, ...)."""
        rng = self.rng
        create = "com.atproto.repo.applyWrites#create"
        pool = self._post_pool()
        if kind == "post":
            return {
                "$type": create,
                "collection": "app.bsky.feed.post",
                "value": self._post(),
            }
        if kind in ("like", "repost") and pool:
            ref, _ = rng.choice(pool)
            collection = f"app.bsky.feed.{kind}"
            value = {"$type": collection, "subject": ref, "createdAt": _now_iso()}
            return {"$type": create, "collection": collection, "value": value}
        if kind == "follow":
            fresh = [p for p in self.peers if p not in self.followed]
            if not fresh:
                return None
            did = rng.choice(fresh)
            self.followed.add(did)
            value = {
                "$type": "app.bsky.graph.follow",
                "subject": did,
                "createdAt": _now_iso(),
            }
            return {
                "$type": create,
                "collection": "app.bsky.graph.follow",
                "value": value,
            }
        if kind == "profile":
            value = {
                "$type": "app.bsky.actor.profile",
                "displayName": _sentence(rng, 1, 3)[:64],
                "description": _sentence(rng, 5, 25),
            }
            return {
                "$type": "com.atproto.repo.applyWrites#update",
                "collection": "app.bsky.actor.profile",
                "rkey": "self",
                "value": value,
            }
        if kind == "delete" and self.deletable:
            collection, rkey = self.deletable.pop(rng.randrange(len(self.deletable)))
            return {
                "$type": "com.atproto.repo.applyWrites#delete",
                "collection": collection,
                "rkey": rkey,
            }
        if kind == "schema":
            return self._schema_write()
        if kind == "entry" and self.schemas:
            return self._entry_write()
        if kind == "entry_update" and self.entries:
            rkey, record = rng.choice(self.entries)
            record = dict(record, description=_sentence(rng, 4, 20))
            return {
                "$type": "com.atproto.repo.applyWrites#update",
                "collection": "science.alt.dataset.entry",
                "rkey": rkey,
                "value": record,
            }
        return None

    def _schema_write(self) -> dict[str, Any]:
        rng = self.rng
        n = len(self.schemas)
        name = f"{rng.choice(_WORDS).capitalize()}Sample{n}"
        version = f"1.{rng.randrange(5)}.{n}"
        fields = {
            f"f{i}_{rng.choice(_WORDS)}": {"type": rng.choice(_FIELDS)}
            for i in range(rng.randint(1, 8))
        }
        record = {
            "$type": "science.alt.dataset.schema",
            "name": name,
            "version": version,
            "schemaType": "jsonSchema",
            "schema": {
                "$type": "science.alt.dataset.schema#jsonSchemaFormat",
                "$schema": "http://json-schema.org/draft-07/schema#",
                "type": "object",
                "properties": fields,
                "required": list(fields),
            },
            "createdAt": _now_iso(),
            "atdataSchemaVersion": 1,
            "description": _sentence(rng, 3, 12),
        }
        rkey = f"{name}:{version}"
        self.schemas.append(
            f"at://{self.account.did}/science.alt.dataset.schema/{rkey}"
        )
        return {
            "$type": "com.atproto.repo.applyWrites#create",
            "collection": "science.alt.dataset.schema",
            "rkey": rkey,
            "value": record,
        }

    def _entry_write(self) -> dict[str, Any]:
        rng = self.rng
        name = f"{rng.choice(_WORDS)}-{rng.choice(_WORDS)}-{len(self.entries)}"
        shards = rng.randint(1, 4)
        record: dict[str, Any] = {
            "$type": "science.alt.dataset.entry",
            "name": name,
            "schemaRef": rng.choice(self.schemas),
            "storage": {
                "$type": "science.alt.dataset.storageHttp",
                "shards": [
                    {
                        "url": f"https://data.example.org/{name}/shard-{i:06d}.tar",
                        "checksum": {
                            "algorithm": "sha256",
                            "digest": hashlib.sha256(f"{name}{i}".encode()).hexdigest(),
                        },
                    }
                    for i in range(shards)
                ],
            },
            "size": {
                "samples": rng.randrange(1, 10**6),
                "bytes": rng.randrange(10**3, 10**10),
                "shards": shards,
            },
            "tags": rng.sample(_WORDS, rng.randint(0, 4)),
            "license": rng.choice(("MIT", "CC-BY-4.0", "Apache-2.0")),
            "createdAt": _now_iso(),
        }
        rkey = _tid(rng)
        self.entries.append((rkey, record))
        return {
            "$type": "com.atproto.repo.applyWrites#create",
            "collection": "science.alt.dataset.entry",
            "rkey": rkey,
            "value": record,
        }

    # commits ------------------------------------------------------------------

    def _kind(self) -> str:
        rng = self.rng
        if rng.random() < self.dataset_share:
            return rng.choices(("schema", "entry", "entry_update"), (3, 5, 2))[0]
        return rng.choices(
            ("post", "like", "follow", "repost", "profile", "delete"),
            (44, 28, 9, 7, 3, 9),
        )[0]

    def _commit(self, writes: list[dict[str, Any]]) -> None:
        resp = self._xrpc(
            "com.atproto.repo.applyWrites", {"repo": self.account.did, "writes": writes}
        )
        self.commits += 1
        self.latest_rev = str(resp["commit"]["rev"])
        for write, result in zip(writes, resp.get("results", []), strict=False):
            action = write["$type"].rpartition("#")[2]
            collection = write["collection"]
            self.ops[f"{action} {collection}"] += 1
            if action != "create":
                continue
            uri = str(result["uri"])
            rkey = uri.rpartition("/")[2]
            if collection == "app.bsky.feed.post":
                ref = {"uri": uri, "cid": str(result["cid"])}
                reply = write["value"].get("reply")
                self.posts.append((ref, reply["root"] if reply else ref))
                with self.lock:
                    self.shared.append(ref)
            if collection in (
                "app.bsky.feed.post",
                "app.bsky.feed.like",
                "app.bsky.feed.repost",
                "app.bsky.graph.follow",
            ):
                self.deletable.append((collection, rkey))

    def run(self, records: int, account_events: bool) -> None:
        self.login()
        profile = self._write("profile")
        assert profile is not None
        profile["$type"] = "com.atproto.repo.applyWrites#create"
        self._commit([profile])
        done = 1
        cycle_at = records // 2 if account_events else -1
        while done < records:
            if cycle_at >= 0 and done >= cycle_at:
                self._deactivate_activate()
                cycle_at = -1
            size = 1 if self.rng.random() < 0.7 else self.rng.randint(2, 8)
            size = min(size, records - done)
            writes: list[dict[str, Any]] = []
            seen: set[tuple[str, str]] = set()
            while len(writes) < size:
                kind = self._kind()
                write = self._write(kind)
                if write is None and kind.startswith("entry"):
                    write = self._write("entry") or self._write("schema")
                write = write or self._write("post")
                assert write is not None
                key = (write["collection"], str(write.get("rkey", id(write))))
                if key in seen:  # one operation per record and commit
                    continue
                seen.add(key)
                writes.append(write)
            self._commit(writes)
            done += len(writes)

    def _deactivate_activate(self) -> None:
        """``#account`` events (active false ``deactivated``, then active true)."""
        self._xrpc("com.atproto.server.deactivateAccount", {})
        self._xrpc("com.atproto.server.activateAccount")
        self.account_events += 1


_TID_CHARS: Final = "234567abcdefghijklmnopqrstuvwxyz"


def _tid(rng: random.Random) -> str:
    """A TID record key (Record Key spec, "TID"): microseconds now, a random
    10-bit clock id."""
    n = (time.time_ns() // 1000 & ((1 << 53) - 1)) << 10 | rng.randrange(1024)
    return "".join(_TID_CHARS[(n >> (60 - 5 * i)) & 31] for i in range(13))


def seed_pds(
    pds_url: str,
    accounts: Sequence[AccountLike],
    *,
    records_per_account: int = 60,
    dataset_share: float = 0.1,
    seed: int = 0,
    account_events: bool = True,
    workers: int = 4,
) -> SeedResult:
    """Write about ``records_per_account`` record operations per account to the
    real PDS at ``pds_url`` with ``com.atproto.repo.applyWrites`` (accounts in
    parallel, ``workers`` threads): a profile first, then 70 % single-operation
    commits and 30 % of 2-8 operations, drawing each operation as a post (with
    link or tag facets, replies, quotes; several languages and scripts), like,
    follow, repost, profile update or delete, or with probability
    ``dataset_share`` a ``science.alt.dataset.schema`` (flat JSON Schema form,
    rkey ``Name:version``), ``science.alt.dataset.entry`` (HTTP storage,
    checksums, sizes) or an update of an entry. Records of ``app.bsky.*`` are
    validated by the PDS; ``science.alt.*`` ones are unknown to it and stored
    unvalidated (``validationStatus`` ``unknown``). With ``account_events`` each
    account is deactivated and re-activated half-way (two ``#account`` events).
    Contents are deterministic per ``seed`` and account index, except which
    other accounts' posts get liked or replied to. Raises :class:`RelayError`
    ``SEED_REQUEST_FAILED`` with the PDS's answer."""
    if not 0 <= dataset_share <= 1:
        raise ValueError("dataset_share must be within [0, 1]")
    shared: list[dict[str, str]] = []
    lock = threading.Lock()
    peers = [a.did for a in accounts]
    seeders = [
        _Seeder(
            pds_url,
            account,
            peers,
            shared,
            lock,
            random.Random(f"{seed}:{i}"),
            dataset_share,
        )
        for i, account in enumerate(accounts)
    ]
    try:
        with ThreadPoolExecutor(max(1, min(workers, len(seeders)))) as pool:
            for future in [
                pool.submit(s.run, records_per_account, account_events) for s in seeders
            ]:
                future.result()
    finally:
        for s in seeders:
            s.http.close()
    ops: Counter[str] = Counter()
    for s in seeders:
        ops.update(s.ops)
    return SeedResult(
        commits=sum(s.commits for s in seeders),
        ops=dict(ops),
        latest_rev={s.account.did: s.latest_rev for s in seeders},
        account_events=sum(s.account_events for s in seeders),
    )


# ------------------------------------------------------------- recording frames


def _frame_repo(frame: bytes) -> tuple[str | None, int | None, str | None]:
    """``(DID, seq, rev)`` of a frame (``repo`` of commits, ``did`` otherwise);
    Nones for what it does not have or cannot be decoded."""
    try:
        header, body, _ = split_frame(frame)
    except RelayError:
        return None, None, None
    did = body.get("repo", body.get("did"))
    seq, rev = body.get("seq"), body.get("rev")
    return (
        did if isinstance(did, str) else None,
        seq if isinstance(seq, int) else None,
        rev if isinstance(rev, str) and header.get("t") == "#commit" else None,
    )


async def arecord_frames(
    pds_url: str,
    *,
    cursor: int = 0,
    until_seq: int | None = None,
    until_rev: Mapping[str, str] | None = None,
    idle: float = 1.0,
    timeout: float = 120.0,
    max_frames: int = 1_000_000,
) -> list[bytes]:
    """:func:`record_frames`, in the running event loop."""
    ws_url = "ws" + pds_url.rstrip("/").removeprefix("http") + REPOS_PATH
    waiting = dict(until_rev or {})
    frames: list[bytes] = []
    deadline = asyncio.get_running_loop().time() + timeout
    async with connect(
        f"{ws_url}?cursor={cursor}", max_size=MAX_FRAME_BYTES, compression=None
    ) as ws:
        while len(frames) < max_frames:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                raise TimeoutError(
                    f"subscribeRepos of {pds_url}: {len(frames)} frames in {timeout} s, "
                    f"still waiting for seq {until_seq} / revs of {sorted(waiting)}"
                )
            wait = left if (until_seq is not None or waiting) else min(idle, left)
            try:
                async with asyncio.timeout(wait):
                    message = await ws.recv()
            except TimeoutError:
                if until_seq is None and not waiting:
                    break  # idle: caught up with the PDS
                continue
            if isinstance(message, str):
                raise RelayError(
                    "FRAME_NOT_BINARY", "a text message", f"frame {len(frames)}"
                )
            frames.append(message)
            did, seq, rev = _frame_repo(message)
            if did in waiting and rev is not None and rev >= waiting[did]:
                del waiting[did]
            if until_seq is not None and seq is not None and seq >= until_seq:
                until_seq = None
                if not waiting:
                    break
            elif until_seq is None and until_rev and not waiting:
                break
        # Not a graceful close: the PDS's close frame would come behind the
        # frames still in flight, which are no longer read (websockets' close
        # then waits out its close_timeout).
        ws.transport.abort()
    return frames


def record_frames(
    pds_url: str,
    *,
    cursor: int = 0,
    until_seq: int | None = None,
    until_rev: Mapping[str, str] | None = None,
    idle: float = 1.0,
    timeout: float = 120.0,
    max_frames: int = 1_000_000,
) -> list[bytes]:
    """The binary messages of ``com.atproto.sync.subscribeRepos`` on the PDS at
    ``pds_url`` (``http://`` -> ``ws://``) from ``?cursor=``, exactly as sent
    (header + body), in order. Reads until a frame with ``seq >= until_seq``,
    and/or until every DID of ``until_rev`` has sent a commit of at least that
    ``rev`` (TIDs sort by time); with neither, until no frame arrives for
    ``idle`` seconds (caught up). At most ``max_frames`` frames, each at most
    :data:`MAX_FRAME_BYTES`. Raises ``TimeoutError`` after ``timeout`` seconds
    without reaching the target, :class:`RelayError` ``FRAME_NOT_BINARY``.
    Runs its own event loop (use :func:`arecord_frames` inside one)."""
    coro = arecord_frames(
        pds_url,
        cursor=cursor,
        until_seq=until_seq,
        until_rev=until_rev,
        idle=idle,
        timeout=timeout,
        max_frames=max_frames,
    )
    return asyncio.run(coro)


_CACHE: dict[tuple[Any, ...], tuple[bytes, ...]] = {}
_CACHE_LOCK = threading.Lock()


def realistic_frames(
    net: NetworkLike,
    n_accounts: int = 8,
    records_per_account: int = 60,
    *,
    dataset_share: float = 0.1,
    seed: int = 0,
) -> list[bytes]:
    """Template frames for :class:`ReplayRelay` in one call: ``n_accounts`` new
    accounts on ``net``'s PDS, seeded with :func:`seed_pds`, and the frames of
    exactly those accounts recorded with :func:`record_frames` (``#identity``,
    ``#account`` and ``#sync`` of account creation, the commits, the account
    cycles). Cached per PDS and parameters for the life of the process (the
    frames' DIDs live on that network's PLC, so signature verification works
    against it). The default, 8 x 60, gives about 400 frames with about 500
    record operations."""
    key = (net.pds_url, n_accounts, records_per_account, dataset_share, seed)
    with _CACHE_LOCK:
        cached = _CACHE.get(key)
        if cached is None:
            tag = secrets.token_hex(3)
            accounts = [
                net.create_account(f"r{seed % 100}{tag}{i}") for i in range(n_accounts)
            ]
            result = seed_pds(
                net.pds_url,
                accounts,
                records_per_account=records_per_account,
                dataset_share=dataset_share,
                seed=seed,
            )
            dids = {a.did for a in accounts}
            frames = record_frames(net.pds_url, until_rev=result.latest_rev)
            cached = tuple(f for f in frames if _frame_repo(f)[0] in dids)
            _CACHE[key] = cached
    return list(cached)


# --------------------------------------------------------- files and the CLI

_MAGIC: Final = b"ATDATA-REPLAY-FRAMES 1\n"


def save_frames(path: str, frames: Iterable[bytes]) -> int:
    """Write ``frames`` to ``path`` (a magic line, then per frame a 4-byte
    big-endian length and the bytes); returns how many."""
    n = 0
    with open(path, "wb") as fh:
        fh.write(_MAGIC)
        for frame in frames:
            if len(frame) > MAX_FRAME_BYTES:
                raise RelayError(
                    "RELAY_TEMPLATE_TOO_BIG", f"{len(frame)} bytes", f"frame {n}"
                )
            fh.write(len(frame).to_bytes(4, "big"))
            fh.write(frame)
            n += 1
    return n


def load_frames(path: str, max_frames: int = 1_000_000) -> list[bytes]:
    """The frames of a :func:`save_frames` file. Raises :class:`RelayError`
    ``RELAY_FILE_INVALID`` on a wrong magic line, a truncated file, a frame over
    :data:`MAX_FRAME_BYTES` or more than ``max_frames`` frames."""
    frames: list[bytes] = []
    with open(path, "rb") as fh:
        if fh.read(len(_MAGIC)) != _MAGIC:
            raise RelayError("RELAY_FILE_INVALID", "not a frames file", path)
        while head := fh.read(4):
            size = int.from_bytes(head, "big")
            if len(head) != 4 or size > MAX_FRAME_BYTES or len(frames) >= max_frames:
                raise RelayError(
                    "RELAY_FILE_INVALID",
                    "bad frame length",
                    f"{path} frame {len(frames)}",
                )
            frame = fh.read(size)
            if len(frame) != size:
                raise RelayError(
                    "RELAY_FILE_INVALID", "truncated", f"{path} frame {len(frames)}"
                )
            frames.append(frame)
    return frames


def _command(relay: ReplayRelay, line: str) -> str:
    """One control line of ``serve`` (see :func:`main`); returns the JSON answer."""
    words = line.split()
    if not words:
        return ""
    cmd, args = words[0], words[1:]
    out: Any = "ok"
    if cmd == "pause":
        relay.pause()
    elif cmd == "resume":
        relay.resume()
    elif cmd == "rate":
        relay.set_rate(None if args[0] == "none" else float(args[0]))
    elif cmd == "total":
        relay.set_total(None if args[0] == "none" else int(args[0]))
    elif cmd == "burst":
        out = {"start": relay.burst(int(args[0]), float(args[1]))}
    elif cmd == "disconnect":
        out = {"dropped": relay.disconnect_all()}
    elif cmd == "inject":
        relay.inject(args[0], int(args[1]))  # type: ignore[arg-type]
    elif cmd == "stats":
        out = {
            "head": relay.head,
            "last_seq_sent": relay.last_seq_sent,
            "connections_accepted": relay.connections_accepted,
            "too_slow_drops": relay.too_slow_drops,
            "connections": [
                {
                    "id": c.id,
                    "kind": c.kind,
                    "cursor": c.cursor,
                    "frames_sent": c.frames_sent,
                    "bytes_sent": c.bytes_sent,
                    "last_seq": c.last_seq,
                    "closed": c.closed,
                }
                for c in relay.connections()
            ],
        }
    else:
        raise ValueError(f"unknown command {cmd!r}")
    return orjson.dumps(out).decode()


def _read_main(url: str, count: int, raw: bool) -> int:
    """``read``: count ``count`` messages from ``url``; prints ``frames/s``
    (timed from the first message). ``raw`` parses only WebSocket frame headers
    over a plain socket (no per-message Python objects), to measure the relay
    rather than the reader."""
    if raw:
        import base64
        import os
        import socket

        u = urlsplit(url)
        sock = socket.create_connection((u.hostname or "127.0.0.1", u.port or 80))
        key = base64.b64encode(os.urandom(16)).decode()
        sock.sendall(
            (
                f"GET {u.path}?{u.query} HTTP/1.1\r\nHost: {u.hostname}:{u.port}\r\n"
                "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        buf = bytearray()
        while b"\r\n\r\n" not in buf:
            buf += sock.recv(65536)
        del buf[: buf.index(b"\r\n\r\n") + 4]
        got, pos, t0 = 0, 0, 0.0
        while got < count:
            data = sock.recv(1 << 20)
            if not data:
                break
            if not t0:
                t0 = time.perf_counter()
            buf += data
            while len(buf) - pos >= 2:
                ln, hl = buf[pos + 1] & 0x7F, 2
                if ln == 126:
                    ln, hl = int.from_bytes(buf[pos + 2 : pos + 4], "big"), 4
                elif ln == 127:
                    ln, hl = int.from_bytes(buf[pos + 2 : pos + 10], "big"), 10
                if len(buf) - pos < hl + ln:
                    break
                pos += hl + ln
                got += 1
            del buf[:pos]
            pos = 0
        sock.close()
    else:

        async def run() -> tuple[int, float]:
            async with connect(url, max_size=MAX_FRAME_BYTES, compression=None) as ws:
                n, start = 0, 0.0
                async for _ in ws:
                    start = start or time.perf_counter()
                    n += 1
                    if n >= count:
                        break
                ws.transport.abort()
            return n, start

        got, t0 = asyncio.run(run())
    dt = time.perf_counter() - t0
    print(f"{got} {dt:.3f} {got / dt:.0f}")
    return 0


def _bench(frames: list[bytes], count: int, runs: int) -> None:
    """Throughput of the relay (frames/s, median of ``runs``) to a reader in
    another process: the raw reader, then a ``websockets`` client."""
    import statistics
    import subprocess

    for raw in (True, False):
        rates = []
        for _ in range(runs):
            with ReplayRelay(frames, total=None) as relay:
                argv = [sys.executable, "-m", __spec__.name if __spec__ else __name__]
                argv += ["read", relay.repos_url + "?cursor=0", str(count)]
                proc = subprocess.run(
                    argv + (["--raw"] if raw else []),
                    capture_output=True,
                    text=True,
                    check=True,
                )
                rates.append(float(proc.stdout.split()[-1]))
        reader = "raw socket reader" if raw else "websockets client"
        print(
            f"relay -> {reader}: median {statistics.median(rates):,.0f} frames/s "
            f"(runs: {', '.join(f'{r:,.0f}' for r in rates)}; {count:,} frames each, "
            f"{sum(map(len, frames)) / len(frames):,.0f} bytes/frame on average)"
        )


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m atdata_ingest.testing.relay``:

    - ``record OUT [--accounts 8 --records 60]``: start a local network
      (``atdata_gen.testing.localnet``), seed it, save the frames to ``OUT``
      (their DIDs resolve only on that network's PLC: signatures can be
      verified only while it runs);
    - ``serve FRAMES [--total N|none] [--rate R] [--max-queue Q] [--port P]
      [--close-at-end]``: serve a frames file; prints ``ready ws://...`` and then
      takes control lines on stdin (``pause``, ``resume``, ``rate R|none``,
      ``total N|none``, ``burst COUNT RATE``, ``disconnect``, ``inject KIND SEQ``,
      ``stats``), answering each with one JSON line; ends at EOF or SIGTERM;
    - ``read URL COUNT [--raw]``: read and time ``COUNT`` messages;
    - ``bench [--frames FILE] [--count 200000] [--runs 3]``: relay throughput.
    """
    parser = argparse.ArgumentParser(prog="python -m atdata_ingest.testing.relay")
    sub = parser.add_subparsers(dest="cmd", required=True)
    rec = sub.add_parser("record")
    rec.add_argument("out")
    rec.add_argument("--accounts", type=int, default=8)
    rec.add_argument("--records", type=int, default=60)
    srv = sub.add_parser("serve")
    srv.add_argument("frames")
    srv.add_argument("--total", default="templates")
    srv.add_argument("--rate", type=float, default=None)
    srv.add_argument("--max-queue", type=int, default=50_000)
    srv.add_argument("--port", type=int, default=0)
    srv.add_argument("--close-at-end", action="store_true")
    rd = sub.add_parser("read")
    rd.add_argument("url")
    rd.add_argument("count", type=int)
    rd.add_argument("--raw", action="store_true")
    bn = sub.add_parser("bench")
    bn.add_argument("--frames")
    bn.add_argument("--count", type=int, default=200_000)
    bn.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)

    if args.cmd == "read":
        return _read_main(args.url, args.count, args.raw)
    if args.cmd == "serve":
        total: Any = args.total
        if total != "templates":
            total = None if total == "none" else int(total)
        relay = ReplayRelay(
            load_frames(args.frames),
            total=total,
            rate=args.rate,
            max_queue=args.max_queue,
            port=args.port,
            close_at_end=args.close_at_end,
        )
        import signal

        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        with relay:
            print(f"ready {relay.url}", flush=True)
            for line in sys.stdin:
                try:
                    answer = _command(relay, line)
                except (ValueError, IndexError, RelayError) as exc:
                    answer = orjson.dumps({"error": str(exc)}).decode()
                if answer:
                    print(answer, flush=True)
        return 0
    if args.cmd in ("record", "bench") and not (args.cmd == "bench" and args.frames):
        from atdata_gen.testing.localnet import LocalNetwork

        with LocalNetwork.start() as net:
            t0 = time.perf_counter()
            accounts = getattr(args, "accounts", 8)
            records = getattr(args, "records", 60)
            frames = realistic_frames(net, accounts, records)
            print(
                f"realistic_frames({accounts} accounts x {records} records): "
                f"{len(frames)} frames in {time.perf_counter() - t0:.1f} s",
                flush=True,
            )
            if args.cmd == "record":
                save_frames(args.out, frames)
                return 0
            _bench(frames, args.count, args.runs)
        return 0
    _bench(load_frames(args.frames), args.count, args.runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
