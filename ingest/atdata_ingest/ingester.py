"""The ingester: relay WebSocket → decode → bounded buffer → batched COPY.

::

    relay ──ws──▶ reader task ──▶ bounded buffer ──▶ writer task ──▶ PostgreSQL
                  decode_frame     (sealed batches     COPY + cursor
                  verify (policy)   of whole frames)   in one transaction

One process, one asyncio event loop, two main tasks:

- the **reader** connects to ``<relay>/xrpc/com.atproto.sync.subscribeRepos``
  (``?cursor=<last seq read>``, none when the cursor is 0), decodes each frame
  (:func:`atdata_runtime.firehose.frames.decode_frame`), verifies commit signatures
  when the policy says (:mod:`atdata_runtime.firehose.verify`), turns the events into
  rows (:mod:`.rows`) and appends them to the buffer. A frame that cannot be decoded
  or verified becomes a dead letter (rule, reason, location, first bytes) in the
  same batch stream: it is counted, never silently dropped, and never stalls the
  stream. A signature check may wait for a DID resolution: it runs as a task, the
  reader goes on reading and decoding, and a sequencer hands results to the buffer
  strictly in read order (at most 2,000 frames / 64 MiB wait behind a check), so
  the cursor never passes a frame still being checked.
- the **writer** takes a batch when ``batch_max`` events are buffered or
  ``flush_ms`` after the oldest unflushed event was read, whichever comes first,
  and writes it with the cursor in one transaction (:class:`.writer.BatchWriter`).

Backpressure (seed 002 §12): the buffer is bounded (``buffer_max`` events,
``buffer_max_bytes``), counting batches being written until they commit. Above the
high watermark (``high_water`` × ``buffer_max``) the reader stops pulling from the
socket for up to ``pause_ms`` (``websockets`` then stops reading the socket:
``max_queue`` is small, so TCP backpressure reaches the relay). If the buffer does
not drain in that time the reader reads on; when the buffer is full the process
exits **on purpose** with status 75 (:class:`~.exits.BufferOverflow`): nothing is
lost, the supervisor restarts it and it resumes from the committed cursor. A
frame is always admitted into an *empty* buffer, so that a single frame larger
than the buffer (a commit of more rows than ``buffer_max``, or more bytes than
``buffer_max_bytes``) is written alone instead of overflowing at the same seq
after every restart. The
exit is prompt: the writer's connection is terminated, not closed (its batch may
be blocked on a lock; the server rolls it back) and the relay stream is aborted;
the time from the overflow to the exit is logged (``overflow to exit``).

Faults: a WebSocket disconnect, error frame or close is reconnected with
exponential backoff and jitter from the last seq *read* (everything read is in the
buffer), never an exit, even when the relay URL is wrong (closed port, an HTTP
server that is not a relay, a 403/404 at the handshake): the ingester keeps
trying, and says so in the cursor row (``relay_state``: ``connecting``, then
``connected`` at the handshake; ``failing`` when an attempt fails or a stream
ends without any event within 10 s, with ``relay_state_since`` the first failure
of the run; ``relay_error`` a short, redacted reason such as ``HTTP 404 at
handshake`` or ``connection refused``; ``last_frame_at``), written at every
change and every heartbeat, so that ``/health`` can tell (the API's
``relay_unreachable``). Each distinct failure is logged at WARNING at most once a
minute (with the count of repeats). A frame over ``max_frame_bytes`` (the
WebSocket closes with 1009) is a ``FRAME_TOO_BIG`` dead letter and the next
connection skips one seq after the last one read (the skip is remembered with
the seq it counts from, and void once the reader moves on; on a first ``live``
start before any seq it reconnects to the live tail, never ``?cursor=1``). A
lost database pauses the writer (the reader keeps buffering until full) and is
retried for ``db_retry_seconds`` (then exit 74); a stored cursor found *below*
what this process committed (PostgreSQL lost acknowledged commits) is exit 75
(:class:`~.exits.CursorRegressed`): the restart resumes from it and the relay
replays the gap.
SIGTERM/SIGINT: stop reading, flush and commit everything buffered, exit 0 (a
second signal, counted whenever it arrives, gives up the flush: exit 75). The
relay stream's closing handshake runs during the flush and its transport is
aborted after it: a relay whose close frame waits behind frames never to be read
(the ingester was behind) would otherwise hold the stop for ``websockets``'
``close_timeout``.

First start: with the stored cursor 0 the reader connects without a cursor
(``start`` ``live``: the relay's live tail) or with ``?cursor=0`` (``oldest``:
the oldest event the relay has; a PDS replays its whole stream); see
:meth:`.config.Settings.subscribe_url`.

Signature verdicts (:class:`~atdata_runtime.firehose.verify.Verdict`) fill
``verified`` and ``verify_rule`` (why not verified: ``REV_STALE``,
``PROOF_INCOMPLETE``, ``IDENTITY_UNRESOLVED``, ``COMMIT_TOO_BIG``, ...;
``VERIFY_ERROR`` when the check itself failed unexpectedly).

Seqs: a seq at or below the last one read is a duplicate (dropped, counted); a jump
of more than one is a gap (counted in ``ingest_cursor.gaps`` and logged, not fatal:
relay seqs need not be contiguous). ``#info`` (``OutdatedCursor``) is logged,
stored (positioned after the seq it followed, :mod:`.rows`) and kept as the
cursor row's ``last_info`` (``{name, message, after_seq, received_at}``) for
``/health``. ``#identity`` drops the verifier's cached DID document. Frames of an
unknown type are ignored (Event Stream spec: consumers ignore unknown message
types) and counted; their seq still moves the cursor. A seq read from such a
frame or from a dead-lettered one (an unvalidated body) moves the cursor only
when it is at most 1,000 above the last seq read (never before the first one):
a corrupt seq far ahead would make every later frame a dropped "duplicate".

The reader lets the event loop run at least every millisecond (a COPY that
returned is noticed at once) and before the next frame when the idle writer was
woken (a batch to take), so that the writer starts its next COPY as soon as it
can.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as _dt
import errno
import logging
import random
import signal
import socket
import ssl
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final, Literal, Protocol, TypeAlias

import websockets
from atdata_runtime.firehose.events import Info
from atdata_runtime.firehose.frames import Frame, FrameError, decode_frame
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect
from websockets.protocol import State

from . import exits
from .config import Settings
from .exits import BufferOverflow, IngestExit
from .rows import (
    DeadRow,
    EventRow,
    RecordValidator,
    dead_letter_row,
    event_rows,
    info_json,
)
from .writer import Batch, BatchWriter

__all__ = ["Ingester", "Stats", "Verifier", "main", "run"]

log = logging.getLogger("atdata_ingest.ingester")

_WS_MAX_QUEUE: Final = 8
"""Messages ``websockets`` buffers before it stops reading the socket."""
_YIELD_SECONDS: Final = 0.001
"""Longest stretch of frames the reader processes without letting the loop run
(a ready ``recv`` does not suspend), so that a COPY that returned is noticed
within about a millisecond; the reader also yields at once when the writer is
idle and was woken (a batch to take; see :meth:`Ingester._on_message`)."""
_HEARTBEAT_SECONDS: Final = 5.0
_MAX_SEQ_JUMP: Final = 1000
"""A seq read from a frame that did not decode (a dead letter) or of an unknown
type (its body is not validated) moves the cursor only when it is above the last
seq read and at most this far above it, and never before a first seq was read
from a frame that decoded: a corrupt seq far ahead would otherwise make every
later frame a "duplicate" (dropped) until the relay caught up with it."""
_RELAY_LOG_SECONDS: Final = 60.0
"""A distinct relay failure (its short reason) is logged at WARNING at most once
per this many seconds (with the number of repeats since), at DEBUG otherwise."""
_STABLE_SECONDS: Final = 10.0
"""A relay connection that ends without any event frame counts as a failure
(``relay_state`` ``failing``) unless it stayed open this long (an idle relay
or proxy closing an idle connection)."""
_RELAY_ERROR_CHARS: Final = 200
_MESSAGE_TOO_BIG: Final = 1009  # WebSocket close code (RFC 6455 § 7.4.1)
_MAX_PENDING: Final = 2000
"""Frames read while an earlier one waits for its signature check (DID
resolution); beyond it the reader waits."""
_MAX_PENDING_BYTES: Final = 64 << 20
"""The same bound in frame bytes (pending frames keep their bytes for a dead
letter)."""
_WS_CLOSE_TIMEOUT: Final = 2.0
"""Seconds a closing handshake with the relay may take when the stream ends for
another reason than a stop or an overflow (those abort the transport: a graceful
close would wait behind the frames not read, ``websockets``' default 10 s)."""
_VERIFY_ERROR: Final = "VERIFY_ERROR"
"""``verify_rule`` of a frame whose check failed with an unexpected error (no
verdict: a bug or an unconverted network error in the verifier)."""

_Finish: TypeAlias = Callable[["asyncio.Future[Any] | None"], None]


class Verifier(Protocol):
    """What the ingester needs of :class:`atdata_runtime.firehose.verify.CommitVerifier`:
    ``required`` (the policy), ``start`` (a future of a ``Verdict`` with
    ``verified`` and ``rule``, already done when the key is cached; a bad commit
    fails it with :class:`FrameError` ``SIG_INVALID``/``COMMIT_*``/...; frames of
    one DID settle in call order), ``forget`` (drop a DID's cached key on
    ``#identity``)."""

    def required(self, frame: Frame) -> bool: ...

    def start(self, frame: Frame) -> asyncio.Future[Any]: ...

    def forget(self, did: str) -> None: ...


@dataclass(slots=True)
class Stats:
    """Counters since the process started (the summary line and tests)."""

    frames: int = 0
    events_read: int = 0
    events_stored: int = 0
    batches: int = 0
    dead_letters: int = 0
    duplicates: int = 0
    gaps: int = 0
    unknown: int = 0
    connects: int = 0
    reconnects: int = 0
    error_frames: int = 0
    verified: int = 0
    not_verified: dict[str, int] = field(default_factory=dict)  # verdict rule -> n
    last_committed_seq: int = 0
    last_event_time: float | None = None  # epoch seconds of the newest committed
    #: relay streams aborted at a stop or an overflow with their closing
    #: handshake still pending (behind frames not read)
    aborted_streams: int = 0
    #: seconds from the buffer overflow to the end of :meth:`Ingester.run`
    overflow_to_exit: float | None = None


class _Buffer:
    """Sealed batches (FIFO) plus the open one. ``events``/``nbytes`` count
    everything read and not yet committed, batches being written included.

    :meth:`add` admits a frame while it fits both bounds, and **always into an
    empty buffer**: a single frame larger than the buffer (more rows than
    ``buffer_max``, more bytes than ``buffer_max_bytes``) would otherwise overflow
    at the same seq after every restart, forever. Such a frame is written alone
    (its batch is sealed at once when it reaches ``batch_max``); the bounds are
    exceeded by at most that one frame."""

    def __init__(self, settings: Settings) -> None:
        self.max_events = settings.buffer_max
        self.max_bytes = settings.buffer_max_bytes
        self.high = max(1, int(settings.buffer_max * settings.high_water))
        self.batch_max = settings.batch_max
        self.sealed: deque[Batch] = deque()
        self.open: Batch | None = None
        self.events = 0
        self.nbytes = 0
        self.stopping = False
        self.changed = asyncio.Event()  # a batch was sealed / became non-empty / stop
        self.space = asyncio.Event()  # events fell below the high watermark

    @property
    def fill(self) -> float:
        return self.events / self.max_events

    def add(
        self,
        rows: list[EventRow],
        dead: DeadRow | None,
        seq: int | None,
        event_time: Any,
        nbytes: int,
        gap: int,
        last_committed: int,
        info: str | None = None,
    ) -> None:
        n = len(rows) + (dead is not None)
        if self.events and (
            self.events + n > self.max_events or self.nbytes + nbytes > self.max_bytes
        ):
            raise BufferOverflow(
                f"buffer full ({self.events} events of {self.max_events}, "
                f"{self.nbytes} bytes of {self.max_bytes}): the database is not "
                f"keeping up. Exiting on purpose (75); the last committed seq is "
                f"{last_committed}, a restart resumes after it"
            )
        batch = self.open
        if batch is None:
            batch = self.open = Batch(first_read=time.monotonic())
            self.changed.set()
        if rows:
            batch.rows.extend(rows)
        if dead is not None:
            batch.dead.append(dead)
        if seq is not None:
            batch.add_seq(seq)
        if event_time is not None:
            batch.last_event_time = event_time
        if info is not None:
            batch.last_info = info
        batch.gaps += gap
        batch.nbytes += nbytes
        self.events += n
        self.nbytes += nbytes
        if batch.events >= self.batch_max:
            self.sealed.append(batch)
            self.open = None
            self.changed.set()

    def take(self) -> Batch | None:
        """The oldest sealed batch, else the open one (``None`` when empty)."""
        if self.sealed:
            return self.sealed.popleft()
        batch, self.open = self.open, None
        return batch if batch is not None and batch.events else None

    def release(self, batch: Batch) -> None:
        self.events -= batch.events
        self.nbytes -= batch.nbytes
        if self.events < self.high:
            self.space.set()

    def empty(self) -> bool:
        return not self.sealed and (self.open is None or not self.open.events)


def _make_verifier(settings: Settings) -> Verifier | None:
    """The policy's :class:`~atdata_runtime.firehose.verify.CommitVerifier`
    (``None`` for ``verify=none``), resolving ``did:plc`` with ``plc_url`` (5 s per
    lookup, two attempts)."""
    if settings.verify == "none":
        return None
    from atdata_runtime.atmosphere.identity import IdentityResolver
    from atdata_runtime.firehose.verify import CommitVerifier
    from atdata_runtime.net.retry import RetryPolicy

    resolver = IdentityResolver(
        plc_url=settings.plc_url,
        timeout=5.0,
        retry=RetryPolicy(attempts=2, deadline=5.0),
    )
    policy: Any = settings.verify
    return CommitVerifier(resolver, policy=policy)


class Ingester:
    """One run of the ingester (see the module doc). :meth:`run` returns the exit
    status; :meth:`stop` asks for a clean stop (flush, commit, 0)."""

    def __init__(
        self,
        settings: Settings,
        *,
        verifier: Verifier | None | Literal["settings"] = "settings",
    ) -> None:
        self.settings = settings
        self.relay = settings.require_relay()
        self.writer = BatchWriter(settings, source=self.relay)
        self.buffer: _Buffer | None = None
        self.stats = Stats()
        self.validate = RecordValidator(settings.validate)
        self._verifier_arg = verifier
        self.verifier: Verifier | None = None
        self.last_read = 0
        self._stop = asyncio.Event()
        self._stop_again = asyncio.Event()  # a second stop: give up the flush
        self._stop_count = 0
        # seqs to skip after frames too big for the WebSocket, counted from the
        # last seq read when they were met (_skip_after): a skip is void once
        # last_read moves (see _resume_cursor)
        self._skip = 0
        self._skip_after = 0
        self._yielded = 0.0  # time.monotonic() when the reader last yielded
        self._writing = False  # the writer is inside BatchWriter.write
        self._relay = self.writer.relay  # the state the cursor row shows
        self.relay_log_seconds = _RELAY_LOG_SECONDS
        self._relay_logged: dict[str, tuple[float, int]] = {}
        self._fail_since: _dt.datetime | None = None  # current run of failures
        self._conn_events = 0  # event frames on the current relay connection
        self._conn_error: str | None = None  # its last relay error frame
        self._status_tried = -1  # relay status version a heartbeat was tried for
        self._pause_until: float | None = None
        self._gap_logs = 0
        self._pending: deque[tuple[asyncio.Future[Any] | None, _Finish, int]] = deque()
        self._pending_bytes = 0
        self._pending_changed = asyncio.Event()
        self._room = asyncio.Event()
        self._ws: ClientConnection | None = None  # the relay stream being read
        self._overflow: BufferOverflow | None = None  # exit 75 under way
        self._overflow_at: float | None = None  # its time.monotonic()

    # -- control ------------------------------------------------------------------------
    def stop(self) -> None:
        """Stop reading, flush everything buffered, commit, then :meth:`run`
        returns 0. A second call (counted: whenever it comes, even before the
        flush began) gives up the flush: the writer's connection is terminated
        and :meth:`run` returns 75 (the cursor is intact: a restart re-reads
        what was buffered)."""
        self._stop_count += 1
        self._stop.set()
        if self._stop_count >= 2:
            self._stop_again.set()
        if self._stop_count == 1:
            log.info("stop requested: closing the relay stream, flushing the buffer")
        else:
            log.warning("stop requested again: exiting without flushing")

    async def run(self) -> int:
        """Ingest until stopped or a fatal condition; return the exit status (see
        :mod:`.exits`)."""
        try:
            return await self._run()
        except IngestExit as exc:
            log.error("exit %d: %s", exc.status, exc)
            return exc.status
        finally:
            await self.writer.close()
            if self._overflow_at is not None:
                took = time.monotonic() - self._overflow_at
                self.stats.overflow_to_exit = took
                log.info(
                    "overflow to exit: %.3f s (writer connection terminated, relay "
                    "stream aborted)",
                    took,
                )

    async def _run(self) -> int:
        s = self.settings
        if self.relay.startswith("ws://"):
            log.warning("relay %s is plaintext ws://", self.relay)
        arg = self._verifier_arg
        self.verifier = _make_verifier(s) if arg == "settings" else arg
        self.buffer = buffer = _Buffer(s)
        # a stop while the database is still being reached ends the run at once
        opening = asyncio.create_task(self.writer.open())
        stopped = asyncio.create_task(self._stop.wait())
        await asyncio.wait({opening, stopped}, return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        if not opening.done():
            opening.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await opening
            log.info("stopped before ingesting anything")
            return exits.OK
        last_seq = opening.result()
        self.last_read = self.stats.last_committed_seq = last_seq
        if last_seq > 0:
            where = f"resuming after seq {last_seq}"
        elif s.start == "live":
            where = "first start: live tail (no cursor)"
        else:
            where = "first start: oldest (cursor 0)"
        log.info(
            "ingesting %s into %s, %s (batch %d, flush %d ms, buffer %d, "
            "verify %s, validate %s)",
            self.relay,
            s.redacted_database_url,
            where,
            s.batch_max,
            s.flush_ms,
            s.buffer_max,
            s.verify,
            s.validate,
        )
        reader: asyncio.Task[Any] = asyncio.create_task(self._reader(), name="reader")
        writer: asyncio.Task[Any] = asyncio.create_task(self._writer(), name="writer")
        sequencer: asyncio.Task[Any] = asyncio.create_task(
            self._sequencer(), name="sequencer"
        )
        summary: asyncio.Task[Any] = asyncio.create_task(self._summary())
        stop: asyncio.Task[Any] = asyncio.create_task(self._stop.wait())
        try:
            done, _ = await asyncio.wait(
                {reader, writer, sequencer, stop}, return_when=asyncio.FIRST_COMPLETED
            )
            if self._overflow is not None:
                # the writer may end first (WriterAborted): the cause is exit 75
                raise self._overflow
            for task in (reader, writer, sequencer):
                if task in done:
                    exc = task.exception()
                    if exc is not None:
                        raise exc
                    raise RuntimeError(f"the {task.get_name()} task ended")  # a bug
            # clean stop: no more reading; flush what was read. The reader's
            # closing handshake runs meanwhile; once everything read is
            # committed the transport is aborted (the relay's close frame may
            # wait behind frames never to be read: websockets would wait 10 s)
            reader.cancel()
            # frames waiting for a signature check join the buffer first
            draining = asyncio.create_task(self._drain())
            done, _ = await asyncio.wait(
                {draining, sequencer}, return_when=asyncio.FIRST_COMPLETED
            )
            if sequencer in done:
                draining.cancel()
                exc = sequencer.exception()
                raise exc if exc is not None else RuntimeError("sequencer ended")
            buffer.stopping = True
            buffer.changed.set()
            again = asyncio.create_task(self._stop_again.wait())
            done, _ = await asyncio.wait(
                {writer, again}, return_when=asyncio.FIRST_COMPLETED
            )
            again.cancel()
            if writer not in done:
                # the batch in flight may wait on a lock: terminate, the server
                # rolls it back
                self.writer.abort()
                log.warning(
                    "stopped without flushing %d buffered events (cursor %d)",
                    buffer.events,
                    self.writer.last_seq,
                )
                return exits.TEMPFAIL
            exc = writer.exception()
            if exc is not None:
                raise exc
            self._abort_stream("stop")
            with contextlib.suppress(asyncio.CancelledError):
                await reader
            await self.writer.mark_stopped()
            log.info(
                "stopped cleanly: cursor %d, %d events stored by this run",
                self.writer.last_seq,
                self.stats.events_stored,
            )
            return exits.OK
        finally:
            self._abort_stream("exit")  # no exit waits for a closing handshake
            for task in (reader, writer, sequencer, summary, stop):
                task.cancel()
            for check, _, _ in self._pending:
                if check is not None:
                    check.cancel()
            for task in (reader, writer, sequencer, summary, stop):
                with contextlib.suppress(BaseException):
                    await task

    # -- the reader ---------------------------------------------------------------------
    def _resume_cursor(self) -> int:
        """The cursor of the next connection: the last seq read, plus the seqs
        skipped after frames too big to read when they were met right after it
        (:meth:`_too_big`; void once ``last_read`` moved). On a first ``live``
        start before any seq was read it stays 0 (the live tail again: the
        oversized frame's seq is unknown, and ``?cursor=<n>`` would ask for the
        relay's oldest events)."""
        last = self.last_read
        if last == 0 and self.settings.start == "live":
            return 0
        return last + (self._skip if self._skip_after == last else 0)

    async def _reader(self) -> None:
        s = self.settings
        attempt = 0
        while True:
            cursor = self._resume_cursor()
            url = s.subscribe_url(cursor)
            opened: float | None = None  # time.monotonic() of the handshake
            ours = False  # we ended the stream (a frame over max_frame_bytes)
            self._conn_events = 0
            self._conn_error = None
            try:
                async with ws_connect(
                    url,
                    max_size=s.max_frame_bytes,
                    max_queue=_WS_MAX_QUEUE,
                    compression=None,
                    open_timeout=10,
                    close_timeout=_WS_CLOSE_TIMEOUT,
                    user_agent_header="atdata-ingest",
                ) as ws:
                    self._ws = ws
                    opened = time.monotonic()
                    # while failing, the log says when events flow again instead
                    quiet = self._fail_since is not None
                    self._relay_state("connected", None)
                    log.log(
                        logging.DEBUG if quiet else logging.INFO, "connected to %s", url
                    )
                    self.stats.connects += 1
                    async for message in ws:
                        await self._on_message(message)
                        if self._conn_events == 1 and attempt:
                            attempt = 0  # a relay that sends events
                            if self._fail_since is not None:
                                log.info(
                                    "relay %s: events flow again (failing since %s)",
                                    url,
                                    f"{self._fail_since:%Y-%m-%d %H:%M:%S}Z",
                                )
                            self._fail_since = None
                reason = "the relay closed the stream"
                short = f"closed by the relay (code {ws.close_code})"
            except BufferOverflow:
                raise
            except websockets.ConnectionClosed as exc:
                reason = f"connection closed ({exc})"
                short = _closed_short(exc)
                sent = exc.sent
                if sent is not None and sent.code == _MESSAGE_TOO_BIG:
                    self._too_big()
                    ours = True
                    reason += "; skipping the oversized frame"
            except websockets.InvalidURI as exc:
                raise exits.ConfigError(f"ATDATA_INGEST_RELAY_URL: {exc}") from None
            except (OSError, TimeoutError, websockets.InvalidHandshake) as exc:
                reason = f"{type(exc).__name__}: {exc}"
                short = _failure_short(exc)
            finally:
                self._ws = None
            if self._conn_error is not None and not self._conn_events:
                short = self._conn_error  # the relay said why, in an error frame
            attempt += 1
            self.stats.reconnects += 1
            cap = min(
                s.reconnect_max_seconds, s.reconnect_min_seconds * 2 ** (attempt - 1)
            )
            delay = cap * (0.5 + random.random() / 2)
            stable = opened is not None and (
                ours
                or self._conn_events > 0
                or time.monotonic() - opened >= _STABLE_SECONDS
            )
            if stable:
                self._relay_state("connecting", short)
            else:
                if opened is not None:
                    short = f"{short} before any event"
                if self._fail_since is None:
                    self._fail_since = _dt.datetime.now(_dt.UTC)
                self._relay_state("failing", short, self._fail_since)
            self._log_relay_end(short, reason, delay, attempt)
            await asyncio.sleep(delay)

    def _relay_state(
        self, state: str, error: str | None, since: _dt.datetime | None = None
    ) -> None:
        """Set the relay state the cursor row shows; a change wakes the writer,
        which writes it at once when it has nothing else to write (else with the
        next batch)."""
        if error is not None:
            error = _short_text(error)
        if self._relay.set(state, error, since) and self.buffer is not None:
            self.buffer.changed.set()

    def _log_relay_end(self, short: str, reason: str, delay: float, n: int) -> None:
        """Log a relay stream's end: at WARNING once per :attr:`relay_log_seconds`
        per distinct ``short`` reason (with the repeats since), else at DEBUG."""
        now = time.monotonic()
        logged = self._relay_logged
        last, repeats = logged.get(short, (None, 0))
        if last is not None and now - last < self.relay_log_seconds:
            logged[short] = (last, repeats + 1)
            log.debug(
                "relay stream ended (%s) after seq %d; reconnecting in %.2f s",
                reason,
                self.last_read,
                delay,
            )
            return
        if len(logged) >= 100:
            logged.clear()
        logged[short] = (now, 0)
        log.warning(
            "relay %s: %s (%s) after seq %d; reconnecting in %.2f s (attempt %d%s)",
            self._relay.state,
            short,
            reason,
            self.last_read,
            delay,
            n,
            f"; {repeats} more since the last report" if repeats else "",
        )

    def _abort_stream(self, why: str) -> None:
        """Abort the relay stream's transport (no closing handshake) when it is
        still open or closing: at a stop, once everything read is committed, and
        at any exit. Nothing is lost: every frame read is in the buffer (flushed
        at a stop) or, at an overflow, after the committed cursor, which the
        restart resumes from."""
        ws, self._ws = self._ws, None
        if ws is None or ws.state is State.CLOSED:
            return
        self.stats.aborted_streams += 1
        log.info(
            "%s: aborting the relay stream (state %s; no closing handshake)",
            why,
            ws.state.name,
        )
        ws.transport.abort()

    def _overflowed(self, exc: BufferOverflow) -> None:
        """The buffer overflowed (exit 75 follows): terminate the writer's
        connection (its batch may be blocked on a lock: a graceful close would
        wait for the server; the server rolls the batch back) and abort the relay
        stream, so that the process exits at once."""
        if self._overflow is None:
            self._overflow, self._overflow_at = exc, time.monotonic()
        self.writer.abort()
        self._abort_stream("overflow")

    def _too_big(self) -> None:
        """The frame after ``last_read`` was over ``max_frame_bytes``: dead-letter it
        (no bytes: the WebSocket refused them) and skip one more seq after
        ``last_read`` at the next connection (seqs are usually contiguous; a
        non-contiguous relay costs another round). The skip counts from the
        ``last_read`` it was met at: once ``last_read`` moves (a frame read, a
        dead letter's seq) it is void (:meth:`_resume_cursor`)."""
        if self._skip_after != self.last_read:
            self._skip, self._skip_after = 0, self.last_read
        self._skip += 1
        cursor = self._resume_cursor()
        resume = (
            f"resuming at cursor {cursor}"
            if cursor or self.settings.start != "live"
            else "reconnecting to the live tail (no seq read yet)"
        )
        reason = (
            f"a frame after seq {self.last_read} is over "
            f"{self.settings.max_frame_bytes} bytes (WebSocket close 1009); {resume}"
        )
        self._emit(
            lambda _: self._dead_row(
                b"", "FRAME_TOO_BIG", reason, "", None, None, None, 0
            )
        )

    async def _backpressure(self) -> None:
        buffer = self.buffer
        assert buffer is not None
        if buffer.events < buffer.high:
            self._pause_until = None
            return
        now = time.monotonic()
        if self._pause_until is None:
            self._pause_until = now + self.settings.pause_ms / 1000
            log.info(
                "buffer above the high watermark (%d of %d events): pausing reads "
                "for up to %d ms",
                buffer.events,
                buffer.max_events,
                self.settings.pause_ms,
            )
        remaining = self._pause_until - now
        if remaining <= 0:
            return  # read on: the buffer fills, then exit 75 by design
        buffer.space.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(buffer.space.wait(), remaining)

    # -- the ordered pipeline -------------------------------------------------------------
    def _emit(
        self, finish: _Finish, task: asyncio.Future[Any] | None = None, size: int = 0
    ) -> None:
        """Hand a frame's result to the buffer in read order: ``finish(task)`` runs
        now when nothing waits before it and ``task`` (a signature check) is
        ``None`` or done, else in turn by :meth:`_sequencer` once ``task`` is
        done. Order matters: the cursor must never pass a seq whose rows are not
        stored."""
        if not self._pending and (task is None or task.done()):
            finish(task)
            return
        self._pending.append((task, finish, size))
        self._pending_bytes += size
        self._pending_changed.set()

    async def _sequencer(self) -> None:
        """Finishes pending frames in read order (see :meth:`_emit`)."""
        pending = self._pending
        while True:
            if not pending:
                self._room.set()
                self._pending_changed.clear()
                await self._pending_changed.wait()
                continue
            task, finish, size = pending[0]
            if task is not None and not task.done():
                await asyncio.wait({task})
            pending.popleft()
            self._pending_bytes -= size
            finish(task)
            if (
                len(pending) < _MAX_PENDING // 2
                and self._pending_bytes < _MAX_PENDING_BYTES // 2
            ):
                self._room.set()

    async def _drain(self) -> None:
        """Wait until every pending frame is in the buffer (a clean stop)."""
        while self._pending:
            self._room.clear()
            await self._room.wait()

    # -- one message --------------------------------------------------------------------
    async def _on_message(self, message: bytes | str) -> None:
        stats = self.stats
        stats.frames += 1
        buffer = self.buffer
        assert buffer is not None
        now = time.monotonic()
        if now - self._yielded >= _YIELD_SECONDS or (
            buffer.changed.is_set() and not self._writing
        ):
            # the idle writer was woken (a batch to take), or the loop has not
            # run for a millisecond (a COPY may have returned): let them run
            self._yielded = now
            await asyncio.sleep(0)
        self._relay.last_frame_at = time.time()
        if buffer.events >= buffer.high:
            await self._backpressure()
        else:
            self._pause_until = None
        if (
            len(self._pending) >= _MAX_PENDING
            or self._pending_bytes >= _MAX_PENDING_BYTES
        ):
            self._room.clear()
            await self._room.wait()
        data = message.encode() if isinstance(message, str) else message
        try:
            frame = decode_frame(data, max_bytes=self.settings.max_frame_bytes)
        except FrameError as exc:
            self._dead(data, exc.rule, exc.reason, exc.location, exc.seq, exc.repo)
            return
        kind = frame.kind
        if kind == "error":
            stats.error_frames += 1
            self._conn_error = f"error frame {frame.error}"
            log.warning(
                "relay error frame %s: %s",
                _short_text(str(frame.error)),
                _short_text(frame.error_message or ""),
            )
            return
        self._conn_events += 1
        if kind == "unknown":
            # ignored (Event Stream spec), but its seq is passed: no false gap
            stats.unknown += 1
            if stats.unknown <= 10:
                log.info("ignoring a frame of unknown type %r", frame.t)
            useq = frame.seq
            if useq is not None and self._plausible(useq):
                self.last_read = useq
                self._emit(lambda _: self._add([], None, useq, None, 0, 0))
            return
        if kind == "info":
            info = frame.event()
            log.warning(
                "relay #info %s: %s",
                getattr(info, "name", "?"),
                getattr(info, "message", "") or "",
            )
            after = self.last_read
            rows, nbytes = event_rows(info, self.validate, seq_hint=after)
            last_info = (
                info_json(info, after_seq=after, received_at=_dt.datetime.now(_dt.UTC))
                if isinstance(info, Info)
                else None
            )
            stats.events_read += len(rows)
            self._emit(
                lambda _: self._add(rows, None, None, None, nbytes, 0, last_info)
            )
            return
        seq = frame.seq
        assert seq is not None
        last = self.last_read
        if seq <= last:
            stats.duplicates += 1
            if stats.duplicates <= 10 or stats.duplicates % 1000 == 0:
                log.info("dropping duplicate seq %d (last read %d)", seq, last)
            return
        gap = 0
        if last and seq > last + 1:
            gap = 1
            stats.gaps += 1
            self._gap_logs += 1
            if self._gap_logs <= 20 or self._gap_logs % 1000 == 0:
                log.info(
                    "seq gap: %d follows %d (%d gaps so far)", seq, last, stats.gaps
                )
        self.last_read = seq
        task: asyncio.Future[Any] | None = None
        verifier = self.verifier
        if verifier is not None:
            if kind == "identity" and frame.did:
                verifier.forget(frame.did)
            elif verifier.required(frame):
                # DID resolution may take a while: later frames are read and
                # decoded meanwhile, and wait for this one in order
                task = verifier.start(frame)

        def finish(done: asyncio.Future[Any] | None) -> None:
            verified: bool | None = None
            rule: str | None = None
            if done is not None:
                exc = None if done.cancelled() else done.exception()
                if isinstance(exc, FrameError):  # SIG_INVALID, COMMIT_*
                    self._dead_row(
                        data,
                        exc.rule,
                        exc.reason,
                        exc.location or "/body/commit",
                        seq,
                        frame.did,
                        seq,
                        gap,
                    )
                    return
                counts = stats.not_verified
                if done.cancelled() or exc is not None:
                    reason = "cancelled" if exc is None else f"{exc!r}"
                    log.warning("seq %d: signature not checked: %s", seq, reason)
                    rule = _VERIFY_ERROR
                    counts[rule] = counts.get(rule, 0) + 1
                else:
                    verdict = done.result()
                    verified = verdict.verified
                    if verified:
                        stats.verified += 1
                    else:
                        got = getattr(verdict, "rule", None)
                        rule = None if got is None else str(got)
                        key = rule or "NOT_CHECKED"
                        if key in counts or len(counts) < 100:
                            counts[key] = counts.get(key, 0) + 1
            try:
                event = frame.event(verified=verified)
                rows, nbytes = event_rows(
                    event,
                    self.validate,
                    seq_hint=last,
                    verified=verified,
                    verify_rule=rule,
                )
            except Exception as exc:  # noqa: BLE001 - hostile input must not stop us
                self._dead_row(
                    data,
                    "ROW_ENCODE",
                    f"{type(exc).__name__}: {exc}",
                    "",
                    seq,
                    frame.did,
                    seq,
                    gap,
                )
                return
            stats.events_read += len(rows)
            self._add(rows, None, seq, frame.time, nbytes, gap)

        self._emit(finish, task, len(data))

    def _add(
        self,
        rows: list[EventRow],
        dead: DeadRow | None,
        seq: int | None,
        event_time: Any,
        nbytes: int,
        gap: int,
        info: str | None = None,
    ) -> None:
        assert self.buffer is not None
        try:
            self.buffer.add(
                rows, dead, seq, event_time, nbytes, gap, self.writer.last_seq, info
            )
        except BufferOverflow as exc:
            self._overflowed(exc)
            raise

    def _plausible(self, seq: int) -> bool:
        """Whether a seq read from an unvalidated body may move the cursor: above
        the last seq read, by at most :data:`_MAX_SEQ_JUMP`, and only once a seq
        was read (or resumed from the cursor). Otherwise the frame keeps its seq
        in its dead-letter row but the cursor stays (the next good frame moves
        it; a relay replaying from the cursor sends the bad frame again)."""
        last = self.last_read
        return 0 < last < seq <= last + _MAX_SEQ_JUMP

    def _dead(
        self,
        data: bytes,
        rule: str,
        reason: str,
        location: str | None,
        seq: int | None,
        repo: str | None,
    ) -> None:
        """A dead letter for a frame that does not decode; its seq moves the cursor
        when it is plausible (:meth:`_plausible`)."""
        cursor_seq: int | None = None
        if seq is not None and self._plausible(seq):
            cursor_seq = seq
            self.last_read = seq
        self._emit(
            lambda _: self._dead_row(
                data, rule, reason, location, seq, repo, cursor_seq, 0
            ),
            size=len(data),
        )

    def _dead_row(
        self,
        data: bytes,
        rule: str,
        reason: str,
        location: str | None,
        seq: int | None,
        repo: str | None,
        cursor_seq: int | None,
        gap: int,
    ) -> None:
        where = location or ""
        if repo:
            where = f"{repo} {where}".strip()
        row = dead_letter_row(data, rule=rule, reason=reason, location=where, seq=seq)
        self._add([], row, cursor_seq, None, len(row[4] or b""), gap)
        self.stats.dead_letters += 1
        n = self.stats.dead_letters
        if n <= 20 or n % 1000 == 0:
            log.warning(
                "dead letter %d: seq %s %s: %s [%s]", n, seq, where, reason, rule
            )

    # -- the writer ---------------------------------------------------------------------
    async def _next_batch(self) -> Batch | None:
        """The next batch to write: a sealed one, the open one once ``flush_ms``
        old (or at a stop), ``None`` when stopping with nothing left; waits
        otherwise (a heartbeat every few seconds when idle)."""
        buffer = self.buffer
        assert buffer is not None
        flush = self.settings.flush_ms / 1000
        while True:
            if buffer.sealed:
                return buffer.sealed.popleft()
            batch = buffer.open
            if batch is not None and batch.events:
                age = time.monotonic() - batch.first_read
                if buffer.stopping or age >= flush:
                    return buffer.take()
                timeout = flush - age
            elif buffer.stopping:
                return None
            else:
                timeout = _HEARTBEAT_SECONDS
                writer = self.writer
                version = writer.relay.version
                if writer.relay_pending and version != self._status_tried:
                    # the relay's state changed and nothing is buffered: write it
                    # now (once per change; a batch carries it otherwise)
                    self._status_tried = version
                    await writer.heartbeat(
                        buffer_fill=buffer.fill, buffer_max=buffer.max_events
                    )
                    continue
            buffer.changed.clear()
            try:
                await asyncio.wait_for(buffer.changed.wait(), timeout)
            except TimeoutError:
                if batch is None or not batch.events:
                    await self.writer.heartbeat(
                        buffer_fill=buffer.fill, buffer_max=buffer.max_events
                    )

    async def _writer(self) -> None:
        buffer = self.buffer
        assert buffer is not None
        stats = self.stats
        while True:
            batch = await self._next_batch()
            if batch is None:
                return
            self._writing = True
            try:
                result = await self.writer.write(
                    batch, buffer_fill=buffer.fill, buffer_max=buffer.max_events
                )
            finally:
                self._writing = False
            buffer.release(batch)
            stats.batches += 1
            stats.events_stored += result.stored
            stats.last_committed_seq = result.last_seq
            if batch.last_event_time is not None:
                stats.last_event_time = batch.last_event_time.timestamp()

    async def _summary(self) -> None:
        every = self.settings.log_interval_seconds
        stats = self.stats
        before, then = stats.events_stored, time.monotonic()
        frames = stats.frames
        while True:
            await asyncio.sleep(every)
            now = time.monotonic()
            rate = (stats.events_stored - before) / max(now - then, 1e-9)
            before, then = stats.events_stored, now
            if stats.frames == frames:
                # nothing arrived: the newest event's age is not a lag
                seen = self._relay.last_frame_at
                lag = (
                    "idle (no frame yet)"
                    if seen is None
                    else f"idle (no frame for {time.time() - seen:.0f} s)"
                )
            elif stats.last_event_time is not None:
                lag = f"lag {(time.time() - stats.last_event_time) * 1000:.0f} ms"
            else:
                lag = "lag n/a"
            frames = stats.frames
            buffer = self.buffer
            fill = buffer.fill if buffer is not None else 0.0
            unverified = (
                " (not verified: "
                + ", ".join(f"{k} {v}" for k, v in sorted(stats.not_verified.items()))
                + ")"
                if stats.not_verified
                else ""
            )
            log.info(
                "%.0f events/s, cursor %d, %s, buffer %.0f%%, %d dead letters, "
                "%d gaps, %d duplicates, %d reconnects, %d db reconnects, "
                "%d verified%s",
                rate,
                stats.last_committed_seq,
                lag,
                fill * 100,
                stats.dead_letters,
                stats.gaps,
                stats.duplicates,
                stats.reconnects,
                self.writer.reconnects,
                stats.verified,
                unverified,
            )


def _short_text(text: str) -> str:
    """``text`` for the cursor row and the log: printable characters only (a
    relay's error names and messages are hostile), at most
    :data:`_RELAY_ERROR_CHARS`."""
    clean = "".join(
        c if c.isprintable() else "?" for c in text[: _RELAY_ERROR_CHARS * 2]
    )
    return (
        clean if len(clean) <= _RELAY_ERROR_CHARS else clean[:_RELAY_ERROR_CHARS] + "…"
    )


def _failure_short(exc: BaseException) -> str:
    """The short, redacted ``relay_error`` of a failed connection attempt
    (``HTTP 404 at handshake``, ``connection refused``, ``timed out at
    handshake``, ...): no URL, no address, nothing the relay chose but an HTTP
    status."""
    if isinstance(exc, websockets.InvalidStatus):
        return f"HTTP {exc.response.status_code} at handshake"
    if isinstance(exc, websockets.InvalidMessage):
        return "not a WebSocket server (no valid HTTP response at handshake)"
    if isinstance(exc, websockets.InvalidHandshake):
        return f"handshake refused ({type(exc).__name__})"
    if isinstance(exc, ConnectionRefusedError) or (
        isinstance(exc, OSError) and f"[Errno {errno.ECONNREFUSED}]" in str(exc)
    ):
        return "connection refused"
    if isinstance(exc, socket.gaierror):
        return "DNS lookup failed"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return "TLS certificate not accepted"
    if isinstance(exc, ssl.SSLError):
        return "TLS error"
    if isinstance(exc, TimeoutError):
        return "timed out at handshake"
    if isinstance(exc, ConnectionResetError):
        return "connection reset"
    if isinstance(exc, OSError) and exc.errno:
        return f"network error ({errno.errorcode.get(exc.errno, exc.errno)})"
    return f"network error ({type(exc).__name__})"


def _closed_short(exc: websockets.ConnectionClosed) -> str:
    """The short ``relay_error`` of a stream that ended with a close (or
    without one)."""
    sent, rcvd = exc.sent, exc.rcvd
    if sent is not None and sent.code == _MESSAGE_TOO_BIG:
        return "a frame over the size limit (skipped)"
    if rcvd is not None:
        return f"closed by the relay (code {rcvd.code})"
    if sent is not None:
        return f"connection closed (code {sent.code})"
    return "connection lost (no close frame)"


async def run(settings: Settings, *, install_signals: bool = False) -> int:
    """Run the ingester until stopped; return the exit status (:mod:`.exits`).
    ``install_signals``: SIGTERM/SIGINT call :meth:`Ingester.stop`."""
    try:
        ingester = Ingester(settings)
    except IngestExit as exc:
        log.error("exit %d: %s", exc.status, exc)
        return exc.status
    loop = asyncio.get_running_loop()
    installed: list[signal.Signals] = []
    if install_signals:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, ingester.stop)
            installed.append(sig)
    try:
        return await ingester.run()
    except Exception:
        log.exception("exit %d: unexpected error", exits.SOFTWARE)
        return exits.SOFTWARE
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)


def main(settings: Settings) -> int:
    """``atdata-ingest run``: run the ingester in a new event loop with
    SIGTERM/SIGINT handlers (stop reading, flush, commit, 0); return the exit
    status."""
    return asyncio.run(run(settings, install_signals=True))
