"""The batch writer: events and the cursor in ONE PostgreSQL transaction.

Each :meth:`BatchWriter.write` is one transaction (seed 002 §12, "Cursor
advancement rules"):

1. ``SELECT ... FROM ingest_cursor WHERE id FOR UPDATE``: lock the cursor row and
   read ``last_seq``, the stored ``source`` and the token of the last committed
   batch;
2. the **cursor guard**: keep only events with ``seq > last_seq`` (``#info`` rows,
   which have no seq of their own, are kept unless the batch itself already
   committed). A batch whose commit outcome was unknown (connection lost during
   COMMIT) is retried safely: whatever it stored is dropped by the guard, so a
   ``(seq, idx)`` is never stored twice;
3. binary ``COPY`` of the rows into ``ingest_events`` and of the dead letters into
   ``ingest_dead_letters`` (never one INSERT per event);
   **Regression check**: a stored ``last_seq`` *below* the last seq this writer
   committed (and the token not this batch's) means PostgreSQL lost commits it
   had acknowledged (``synchronous_commit`` off and a server crash, or a
   failover): :class:`~.exits.CursorRegressed` (exit 75, logged CRITICAL), so
   that the restart resumes from the stored cursor and the relay replays the
   gap; carrying on from memory would leave a permanent hole;
4. ``UPDATE ingest_cursor``: ``last_seq`` (the batch's highest seq, dead-lettered
   frames with a seq included), the newest event time, status (buffer fill,
   dead-letter and gap counts, pid, the last ``#info`` read: ``last_info``, the
   relay connection's state: :class:`RelayStatus`), the batch token in
   ``ingest_meta``, and
   ``pg_notify('ingest_events', '<last_seq>')``, delivered at COMMIT (the
   consumer API's stream wakes on it);
5. COMMIT.

A lost connection (PostgreSQL restart, network) is retried with backoff, the same
batch again, for up to ``db_retry_seconds`` (:class:`~.exits.DatabaseUnavailable`
after that, exit 74). A row PostgreSQL refuses (class 22 data exception, e.g. a
U+0000 in a text column; class 54 limit, e.g. an oversized index key) does not
stall the stream: the batch is written again with savepoints, halving until the
refused rows are found, and those become dead letters (rule ``ROW_REJECTED``).

:meth:`BatchWriter.abort` (exit 75) terminates the connection without a
graceful close: the batch in flight rolls back on the server and the restart
resumes from the cursor.

The single-ingester rule (seed 002 §0.4) is a session advisory lock taken on the
writer's connection (and taken again after a reconnect): another holder →
:class:`~.exits.LockHeld` (exit 73; the message names the holder's session:
application_name, client address, PostgreSQL backend pid, and the ingester pid
the cursor row names).

Partitions: :meth:`BatchWriter.open` runs :func:`.schema.migrate`; between
batches and at heartbeats the next days' partitions are created
(:func:`.schema.create_partitions`, lock timeout
:data:`PARTITION_LOCK_TIMEOUT_RUNNING` s) when due by the wall clock: every hour,
at a change of the UTC date, and a minute after a lock timeout (the partitions
are made two days ahead, so a skipped attempt costs nothing). A day whose rows
already sit in the default partition is logged and skipped.

Test-only fault hook: ``ATDATA_INGEST_TEST_KILL_AT=after-copy:<n>`` (inside the
n-th batch transaction, after COPY, before COMMIT) or ``after-commit:<n>`` makes the
process SIGKILL itself.
"""

from __future__ import annotations

import asyncio
import datetime as _dt
import logging
import os
import random
import signal
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Final

import asyncpg

from .config import Settings
from .exits import ConfigError, CursorRegressed, DatabaseUnavailable, LockHeld
from .rows import DEAD_COLUMNS, ROW_COLUMNS, DeadRow, EventRow, dead_letter_row
from .schema import SCHEMA_VERSION, PartitionReport, create_partitions, migrate

__all__ = [
    "INGESTER_LOCK_KEY",
    "KILL_ENV",
    "NOTIFY_CHANNEL",
    "PARTITION_LOCK_TIMEOUT_RUNNING",
    "RELAY_STATES",
    "Batch",
    "BatchWriter",
    "RelayStatus",
    "WriteResult",
    "WriterAborted",
    "is_connection_error",
]

log = logging.getLogger(__name__)

INGESTER_LOCK_KEY: Final = 0x6174_6461_696E_6731  # "atdaing1": one ingester per DB
NOTIFY_CHANNEL: Final = "ingest_events"
KILL_ENV: Final = "ATDATA_INGEST_TEST_KILL_AT"
_META_KEY: Final = "ingest_batch"
_PARTITION_EVERY: Final = 3600.0  # seconds (wall clock) between partition checks
_PARTITION_RETRY: Final = 60.0  # seconds after a lock timeout
PARTITION_LOCK_TIMEOUT_RUNNING: Final = 1.0
"""Seconds a partition's creation may wait for its locks while ingesting: every
batch queues behind the waiting ACCESS EXCLUSIVE request meanwhile, so this bounds
the stall (1 s at 10,000 events/s is half the default buffer, below its high
watermark pause; at the start, with nothing buffered, :func:`.schema.migrate`
waits up to :data:`.schema.PARTITION_LOCK_TIMEOUT`)."""
RELAY_STATES: Final = ("connecting", "connected", "failing")
"""Values of ``ingest_cursor.relay_state`` (NULL: no ingester running, after a
clean stop)."""

_SELECT_CURSOR: Final = (
    "SELECT c.last_seq, c.source, "
    f"(SELECT value FROM ingest_meta WHERE key = '{_META_KEY}') "
    "FROM ingest_cursor c WHERE c.id FOR UPDATE"
)
_UPDATE_CURSOR: Final = f"""
WITH token AS (
    INSERT INTO ingest_meta (key, value) VALUES ('{_META_KEY}', $1)
    ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value
    RETURNING 1
)
UPDATE ingest_cursor SET
    last_seq = GREATEST(last_seq, $2::bigint),
    last_event_time = COALESCE($3::timestamptz, last_event_time),
    updated_at = now(),
    buffer_fill = $4::real,
    buffer_max = $5::integer,
    dead_letters = dead_letters + $6::bigint,
    gaps = gaps + $7::bigint,
    ingester_pid = $8::integer,
    last_info = COALESCE($10::jsonb, last_info),
    relay_state = $11::text,
    relay_error = $12::text,
    relay_state_since = $13::timestamptz,
    last_frame_at = COALESCE($14::timestamptz, last_frame_at)
WHERE id
RETURNING CASE WHEN $9::boolean
    THEN pg_notify('{NOTIFY_CHANNEL}', last_seq::text) END
"""
_HEARTBEAT: Final = (
    "UPDATE ingest_cursor SET updated_at = now(), buffer_fill = $1::real, "
    "buffer_max = $2::integer, ingester_pid = $3::integer, relay_state = $4::text, "
    "relay_error = $5::text, relay_state_since = $6::timestamptz, "
    "last_frame_at = COALESCE($7::timestamptz, last_frame_at) WHERE id"
)
_LOCK_HOLDER: Final = (
    "SELECT a.pid, a.application_name, host(a.client_addr) AS client_addr, "
    "a.client_port, a.backend_start FROM pg_locks l "
    "JOIN pg_stat_activity a ON a.pid = l.pid "
    "WHERE l.locktype = 'advisory' AND l.granted "
    "AND l.database = (SELECT oid FROM pg_database "
    "WHERE datname = current_database()) "
    # pg_advisory_lock(bigint): classid = high 32 bits, objid = low 32 bits,
    # objsubid 1 (2: the (int4, int4) form)
    "AND l.classid = $1::bigint::oid AND l.objid = $2::bigint::oid "
    "AND l.objsubid = 1 LIMIT 1"
)


def _now() -> _dt.datetime:
    return _dt.datetime.now(_dt.UTC)


def _epoch(t: float | None) -> _dt.datetime | None:
    return None if t is None else _dt.datetime.fromtimestamp(t, _dt.UTC)


@dataclass(slots=True)
class RelayStatus:
    """The relay connection as ``ingest_cursor`` shows it (schema 3), kept by the
    ingester and written with every batch and heartbeat: ``state`` (one of
    :data:`RELAY_STATES`), ``error`` (short, redacted: ``HTTP 404 at
    handshake``, ``connection refused``; ``None`` when none), ``since`` (when
    ``state`` last changed; for ``failing`` the first failure of the current run
    of failures), ``last_frame_at`` (epoch seconds of the last frame received,
    ``None`` before the first). ``version`` counts changes of state or error
    (:attr:`BatchWriter.relay_pending`)."""

    state: str = "connecting"
    error: str | None = None
    since: _dt.datetime = field(default_factory=_now)
    last_frame_at: float | None = None
    version: int = 0

    def set(
        self, state: str, error: str | None, since: _dt.datetime | None = None
    ) -> bool:
        """Change state and error; ``since`` (default now) is taken when the state
        changes. Returns whether anything changed."""
        if state not in RELAY_STATES:
            raise ValueError(f"relay state {state!r}")
        if state == self.state and error == self.error:
            return False
        if state != self.state:
            self.since = since or _now()
        self.state, self.error = state, error
        self.version += 1
        return True


class WriterAborted(RuntimeError):
    """:meth:`BatchWriter.abort` was called: the writer takes no more batches (the
    one in flight was rolled back by the server)."""


@dataclass(slots=True)
class Batch:
    """Rows of whole frames (a commit's operations are never split across
    batches: the cursor guard compares seqs). ``min_seq``/``max_seq`` span the
    rows and dead letters that have a seq (``None``: none has); ``gaps`` counts
    seq jumps seen while reading them; ``events`` is rows + dead letters;
    ``nbytes`` what they hold (the buffer's byte bound)."""

    rows: list[EventRow] = field(default_factory=list)
    dead: list[DeadRow] = field(default_factory=list)
    min_seq: int | None = None
    max_seq: int | None = None
    last_event_time: _dt.datetime | None = None
    gaps: int = 0
    nbytes: int = 0
    first_read: float = 0.0  # time.monotonic() of the oldest frame in the batch
    token: str = field(default_factory=lambda: uuid.uuid4().hex)
    #: ``ingest_cursor.last_info`` (JSON text, :func:`.rows.info_json`) of the last
    #: ``#info`` in the batch; ``None`` keeps the stored one
    last_info: str | None = None

    @property
    def events(self) -> int:
        return len(self.rows) + len(self.dead)

    def add_seq(self, seq: int) -> None:
        if self.min_seq is None or seq < self.min_seq:
            self.min_seq = seq
        if self.max_seq is None or seq > self.max_seq:
            self.max_seq = seq


@dataclass(frozen=True, slots=True)
class WriteResult:
    """What one :meth:`BatchWriter.write` did: rows and dead letters stored, rows
    dropped by the cursor guard, the cursor after it, and how many attempts it
    took (1 without a retry)."""

    stored: int
    dead_letters: int
    dropped: int
    last_seq: int
    attempts: int
    already_committed: bool = False


def is_connection_error(exc: BaseException) -> bool:
    """Whether ``exc`` means the connection (or the server) went away or cannot
    take work right now, so that the same batch is worth retrying on a new
    connection: socket errors, timeouts, asyncpg's closed-connection and
    protocol-state errors,
    SQLSTATE classes 08 (connection), 57 (operator intervention: shutdown,
    recovery), 53 (insufficient resources) and 40 (serialization/deadlock)."""
    if isinstance(
        exc,
        OSError | TimeoutError | asyncpg.InterfaceError | asyncpg.InternalClientError,
    ):
        # InternalClientError: asyncpg's protocol state after the server ended the
        # session (pg_terminate_backend, shutdown) while idle
        return True
    if isinstance(exc, asyncpg.PostgresError):
        state = getattr(exc, "sqlstate", None) or ""
        return state[:2] in ("08", "57", "53", "40")
    return False


def _is_row_error(exc: BaseException) -> bool:
    if isinstance(exc, asyncpg.PostgresError):
        state = getattr(exc, "sqlstate", None) or ""
        return state[:2] in ("22", "23", "54")
    return False


def _config_error(exc: BaseException, dsn: str) -> ConfigError | None:
    """Errors no retry can fix: authentication (class 28), a missing database
    (3D000)."""
    if isinstance(exc, asyncpg.PostgresError):
        state = getattr(exc, "sqlstate", None) or ""
        if state[:2] == "28" or state == "3D000":
            return ConfigError(f"ATDATA_INGEST_DATABASE_URL: {dsn}: {exc}")
    return None


class _KillHook:
    """``ATDATA_INGEST_TEST_KILL_AT=<point>:<n>``: SIGKILL at the n-th ``point``."""

    def __init__(self, spec: str | None) -> None:
        self.point: str | None = None
        self.at = 0
        self.counts: dict[str, int] = {}
        if not spec:
            return
        point, _, n = spec.partition(":")
        if point not in ("after-copy", "after-commit") or not n.isdigit():
            raise ConfigError(
                f"{KILL_ENV}: {spec!r} is not after-copy:<n> or after-commit:<n>"
            )
        self.point, self.at = point, int(n)

    def __call__(self, point: str) -> None:
        if self.point != point:
            return
        self.counts[point] = self.counts.get(point, 0) + 1
        if self.counts[point] == self.at:
            log.warning("%s=%s:%d: SIGKILL now", KILL_ENV, point, self.at)
            for handler in logging.getLogger().handlers:
                handler.flush()
            os.kill(os.getpid(), signal.SIGKILL)


class BatchWriter:
    """One asyncpg connection that writes batches (see the module doc).

    ``source`` is the canonical relay URL whose seq space the cursor counts in
    (``Settings.relay_url``); :meth:`open` stores it in a fresh cursor and refuses
    (:class:`ConfigError`) a cursor of another source. ``status`` is called at
    each write for ``(buffer_fill, buffer_max)``."""

    def __init__(self, settings: Settings, *, source: str) -> None:
        self.settings = settings
        self.source = source
        self.conn: asyncpg.Connection | None = None
        self.last_seq = 0
        self.pid = os.getpid()
        self.kill = _KillHook(os.environ.get(KILL_ENV))
        self.reconnects = 0
        self.aborted = False
        self.relay = RelayStatus()
        #: :attr:`RelayStatus.version` last written to the cursor row
        self.relay_written = -1
        #: wall-clock time (epoch s) when the partitions are due next, and the UTC
        #: date they were last checked for
        self.partitions_due = 0.0
        self._partitions_day: _dt.date | None = None
        self._conflicts_logged: set[str] = set()

    # -- connection -------------------------------------------------------------------
    async def _connect_once(self) -> asyncpg.Connection:
        s = self.settings
        conn = await asyncpg.connect(
            s.database_url,
            timeout=10,
            server_settings={
                "application_name": s.application_name,
                "synchronous_commit": "on" if s.synchronous_commit else "off",
                # the server notices a vanished ingester (and frees its lock)
                "tcp_keepalives_idle": "30",
                "tcp_keepalives_interval": "10",
                "tcp_keepalives_count": "3",
                # a backend waiting on a lock for a vanished ingester ends (and
                # frees the advisory lock) within a second (PostgreSQL 14+)
                "client_connection_check_interval": "1000",
            },
        )
        try:
            locked = await conn.fetchval(
                "SELECT pg_try_advisory_lock($1)", INGESTER_LOCK_KEY
            )
            if not locked:
                raise LockHeld(
                    f"another ingester holds the advisory lock of "
                    f"{self.settings.redacted_database_url} "
                    f"({await _lock_holder(conn)}); only one ingester may write "
                    "a database"
                )
        except BaseException:
            await conn.close(timeout=2)
            raise
        return conn

    async def connect(
        self, *, window: float | None = None, lock_grace: float = 0.0
    ) -> asyncpg.Connection:
        """(Re)connect with exponential backoff for up to ``window`` seconds
        (default ``db_retry_seconds``; then :class:`DatabaseUnavailable`), take the
        advisory lock
        (:class:`LockHeld` when another session holds it after ``lock_grace``
        seconds of retrying: a reconnecting ingester waits for the server to drop
        its own previous session)."""
        limit = self.settings.db_retry_seconds if window is None else window
        started = time.monotonic()
        delay = 0.05
        attempt = 0
        while True:
            attempt += 1
            if self.aborted:
                raise WriterAborted("the writer was aborted")
            try:
                self.conn = await self._connect_once()
                if self.aborted:  # aborted while connecting
                    self.conn.terminate()
                    self.conn = None
                    raise WriterAborted("the writer was aborted")
                if attempt > 1:
                    log.info(
                        "database reconnected after %d attempts (%.1f s)",
                        attempt,
                        time.monotonic() - started,
                    )
                return self.conn
            except LockHeld:
                if time.monotonic() - started >= lock_grace:
                    raise
            except Exception as exc:
                fatal = _config_error(exc, self.settings.redacted_database_url)
                if fatal is not None:
                    raise fatal from None
                if not is_connection_error(exc):
                    raise
                elapsed = time.monotonic() - started
                if elapsed >= limit:
                    raise DatabaseUnavailable(
                        f"PostgreSQL at {self.settings.redacted_database_url} "
                        f"unavailable for {elapsed:.1f} s "
                        f"({type(exc).__name__}: {exc})"
                    ) from None
                if attempt == 1 or attempt % 10 == 0:
                    log.warning(
                        "database connection failed (attempt %d, retrying for "
                        "%.0f s more): %s: %s",
                        attempt,
                        limit - elapsed,
                        type(exc).__name__,
                        exc,
                    )
            await asyncio.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 2.0)

    async def open(self) -> int:
        """Connect, migrate the schema, create today's partitions, check or claim
        the cursor's source; return the committed cursor (``last_seq``)."""
        # a grace for the lock: the backend of a previous ingester that just died
        # may still be finishing (client_connection_check_interval)
        conn = await self.connect(lock_grace=min(5.0, self.settings.db_retry_seconds))
        try:
            report = await migrate(conn)
        except asyncpg.LockNotAvailableError as exc:
            raise DatabaseUnavailable(
                f"{self.settings.redacted_database_url}: the migration to schema "
                f"{SCHEMA_VERSION} could not take its locks (sessions reading or "
                f"writing the log hold them; {exc}); a restart tries again"
            ) from None
        self._partitions_done(report)
        async with conn.transaction():
            row = await conn.fetchrow(
                "SELECT last_seq, source FROM ingest_cursor WHERE id FOR UPDATE"
            )
            assert row is not None  # migrate inserts the row
            last_seq, stored = int(row["last_seq"]), str(row["source"])
            if stored and stored != self.source and last_seq > 0:
                raise ConfigError(self._source_message(stored, last_seq))
            relay = self.relay
            await conn.execute(
                "UPDATE ingest_cursor SET source = $1, ingester_pid = $2, "
                "ingester_started_at = now(), updated_at = now(), buffer_max = $3, "
                "relay_state = $4, relay_error = $5, relay_state_since = $6 "
                "WHERE id",
                self.source,
                self.pid,
                0,
                relay.state,
                relay.error,
                relay.since,
            )
            self.relay_written = relay.version
        self.last_seq = last_seq
        return last_seq

    def _source_message(self, stored: str, last_seq: int) -> str:
        return (
            f"ATDATA_INGEST_RELAY_URL: {self.source!r} is not the source of the "
            f"stored cursor ({stored!r}, last_seq {last_seq}): seq numbers of "
            "different relays are unrelated. Use the stored relay, or another "
            "database, or reset ingest_cursor (last_seq 0) to start over."
        )

    def abort(self) -> None:
        """Terminate the connection at once, without a graceful close (the exit
        75 path: a batch may be blocked on a lock or a slow server, and a
        graceful close or a cancelled query would wait for the server). The
        server rolls back the transaction in flight when it notices the closed
        socket (within ``client_connection_check_interval``, 1 s, even while the
        backend waits on a lock) and frees the advisory lock; nothing of that
        batch is stored and the cursor stays where the last commit left it, so
        the restart resumes from there. Later :meth:`write` calls (and the one in
        flight, once it wakes) raise :class:`WriterAborted`; idempotent."""
        self.aborted = True
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.terminate()

    async def close(self) -> None:
        """Close the connection (releases the advisory lock)."""
        conn, self.conn = self.conn, None
        if conn is not None:
            try:
                await conn.close(timeout=5)
            except (
                OSError,
                TimeoutError,
                asyncpg.PostgresError,
                asyncpg.InterfaceError,
            ):
                conn.terminate()

    # -- writing ----------------------------------------------------------------------
    async def write(
        self, batch: Batch, *, buffer_fill: float = 0.0, buffer_max: int = 0
    ) -> WriteResult:
        """Store ``batch`` and advance the cursor in one transaction (see the module
        doc); retried on a lost connection for up to ``db_retry_seconds``. Raises
        :class:`DatabaseUnavailable`, :class:`LockHeld`, :class:`ConfigError`
        (the cursor's source changed under us), or the database's error for a
        bug (a missing table: exit 70)."""
        started = time.monotonic()
        attempt = 0
        isolate = False
        while True:
            attempt += 1
            if self.aborted:
                raise WriterAborted(
                    f"batch seq {batch.min_seq}..{batch.max_seq} not written: the "
                    f"writer was aborted (cursor {self.last_seq})"
                )
            try:
                if self.conn is None or self.conn.is_closed():
                    remaining = self.settings.db_retry_seconds - (
                        time.monotonic() - started
                    )
                    await self._reconnect(max(remaining, 0.0))
                result = await self._write_once(
                    batch, buffer_fill, buffer_max, attempt, isolate
                )
                await self._partitions_between_batches()
                return result
            except (ConfigError, LockHeld, DatabaseUnavailable, WriterAborted):
                raise
            except Exception as exc:
                if self.aborted:  # the connection was terminated under us
                    raise WriterAborted(
                        f"batch seq {batch.min_seq}..{batch.max_seq} rolled back: "
                        f"the writer was aborted (cursor {self.last_seq})"
                    ) from None
                if _is_row_error(exc) and not isolate:
                    log.warning(
                        "batch seq %s..%s refused (%s: %s); finding the refused rows",
                        batch.min_seq,
                        batch.max_seq,
                        type(exc).__name__,
                        exc,
                    )
                    isolate = True
                    continue
                if not is_connection_error(exc):
                    raise
                elapsed = time.monotonic() - started
                log.warning(
                    "batch seq %s..%s: database connection lost (%s: %s); "
                    "retrying (attempt %d, %.1f s so far)",
                    batch.min_seq,
                    batch.max_seq,
                    type(exc).__name__,
                    exc,
                    attempt,
                    elapsed,
                )
                await self._drop_connection()
                if elapsed >= self.settings.db_retry_seconds:
                    raise DatabaseUnavailable(
                        f"PostgreSQL at {self.settings.redacted_database_url} "
                        f"unavailable for {elapsed:.1f} s; last committed seq "
                        f"{self.last_seq}"
                    ) from None
                await asyncio.sleep(min(0.05 * 2**attempt, 2.0) * random.random())

    async def _reconnect(self, window: float) -> None:
        # the retry window left for this batch bounds the reconnect attempts
        await self.connect(window=window, lock_grace=min(window, 30.0))
        self.reconnects += 1

    async def _drop_connection(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.terminate()

    async def _write_once(
        self,
        batch: Batch,
        buffer_fill: float,
        buffer_max: int,
        attempt: int,
        isolate: bool,
    ) -> WriteResult:
        conn = self.conn
        assert conn is not None
        async with conn.transaction():
            row = await conn.fetchrow(_SELECT_CURSOR)
            assert row is not None
            last_seq, stored, token = int(row[0]), str(row[1]), row[2]
            if stored != self.source and last_seq > 0:
                raise ConfigError(self._source_message(stored, last_seq))
            if token == batch.token:
                # the previous attempt committed; its outcome was unknown to us
                self.last_seq = last_seq
                return WriteResult(0, 0, batch.events, last_seq, attempt, True)
            if last_seq < self.last_seq:
                raise self._regressed(last_seq, batch)
            rows, dead = batch.rows, batch.dead
            dropped = 0
            if batch.min_seq is not None and batch.min_seq <= last_seq:
                rows = [r for r in rows if r[0] > last_seq or r[1] == -1]
                dead = [d for d in dead if d[0] is None or d[0] > last_seq]
                dropped = batch.events - len(rows) - len(dead)
                log.info(
                    "cursor guard: %d of %d events of seq %s..%s already stored "
                    "(cursor %d)",
                    dropped,
                    batch.events,
                    batch.min_seq,
                    batch.max_seq,
                    last_seq,
                )
            if isolate:
                rows, refused = await self._copy_isolating(conn, rows)
                dead = [*dead, *refused]
            elif rows:
                await conn.copy_records_to_table(
                    "ingest_events", records=rows, columns=ROW_COLUMNS
                )
            if dead:
                await conn.copy_records_to_table(
                    "ingest_dead_letters", records=dead, columns=DEAD_COLUMNS
                )
            self.kill("after-copy")
            new_seq = max(last_seq, batch.max_seq or 0)
            relay = self.relay
            version = relay.version
            await conn.fetchval(
                _UPDATE_CURSOR,
                batch.token,
                new_seq,
                batch.last_event_time,
                float(buffer_fill),
                int(buffer_max),
                len(dead),
                batch.gaps,
                self.pid,
                bool(rows) or new_seq > last_seq,
                batch.last_info,
                relay.state,
                relay.error,
                relay.since,
                _epoch(relay.last_frame_at),
            )
        self.last_seq = new_seq
        self.relay_written = max(self.relay_written, version)
        self.kill("after-commit")
        return WriteResult(len(rows), len(dead), dropped, new_seq, attempt)

    async def _copy_isolating(
        self, conn: asyncpg.Connection, rows: list[EventRow]
    ) -> tuple[list[EventRow], list[DeadRow]]:
        """COPY ``rows`` in savepoints, halving a refused chunk until the refused
        rows are single; return the rows stored and a dead letter per refused
        row."""
        stored: list[EventRow] = []
        refused: list[DeadRow] = []
        stack = [rows]
        while stack:
            chunk = stack.pop()
            if not chunk:
                continue
            try:
                async with conn.transaction():  # a savepoint
                    await conn.copy_records_to_table(
                        "ingest_events", records=chunk, columns=ROW_COLUMNS
                    )
                stored.extend(chunk)
            except Exception as exc:
                if not _is_row_error(exc):
                    raise
                if len(chunk) == 1:
                    refused.append(_refused(chunk[0], exc))
                else:
                    mid = len(chunk) // 2
                    stack.append(chunk[mid:])
                    stack.append(chunk[:mid])
        if refused:
            log.warning("%d rows refused by PostgreSQL, dead-lettered", len(refused))
        return stored, refused

    @property
    def relay_pending(self) -> bool:
        """Whether :attr:`relay` changed since it was last written (the ingester
        then asks for a :meth:`heartbeat` without waiting for the next one)."""
        return self.relay.version != self.relay_written

    async def heartbeat(self, *, buffer_fill: float, buffer_max: int) -> None:
        """Status only (no events): ``updated_at``, buffer fill, pid, the relay's
        state (:attr:`relay`); creates the next partitions when due. Connection
        errors are logged, not raised (the next batch retries the
        connection)."""
        conn = self.conn
        if conn is None or conn.is_closed():
            return
        try:
            relay = self.relay
            version = relay.version
            await conn.execute(
                _HEARTBEAT,
                float(buffer_fill),
                buffer_max,
                self.pid,
                relay.state,
                relay.error,
                relay.since,
                _epoch(relay.last_frame_at),
            )
            self.relay_written = max(self.relay_written, version)
            await self._maybe_partitions()
        except Exception as exc:
            if not is_connection_error(exc):
                raise
            log.warning("heartbeat: %s: %s", type(exc).__name__, exc)
            await self._drop_connection()

    async def mark_stopped(self) -> None:
        """After a clean stop: ``buffer_fill`` 0, ``ingester_pid`` NULL and
        ``relay_state`` NULL (nobody is ingesting; ``relay_error`` and
        ``last_frame_at`` are kept). Best effort: errors are logged."""
        conn = self.conn
        if conn is None or conn.is_closed():
            return
        try:
            await conn.execute(
                "UPDATE ingest_cursor SET updated_at = now(), buffer_fill = 0, "
                "ingester_pid = NULL, relay_state = NULL, relay_state_since = now(), "
                "last_frame_at = COALESCE($2::timestamptz, last_frame_at) "
                "WHERE id AND ingester_pid = $1",
                self.pid,
                _epoch(self.relay.last_frame_at),
            )
        except Exception as exc:
            if not is_connection_error(exc):
                raise
            log.warning("final status: %s: %s", type(exc).__name__, exc)

    async def _partitions_between_batches(self) -> None:
        """:meth:`_maybe_partitions` after a committed batch: a lost connection
        here is logged (the next batch reconnects), never a retry of the batch."""
        try:
            await self._maybe_partitions()
        except Exception as exc:
            if not is_connection_error(exc):
                raise
            log.warning("partitions: %s: %s", type(exc).__name__, exc)
            await self._drop_connection()

    async def _maybe_partitions(self) -> None:
        """Create the next days' partitions when due (wall clock: hourly, at a new
        UTC date, a minute after a lock timeout; see the module doc)."""
        now = time.time()
        day = _dt.datetime.fromtimestamp(now, _dt.UTC).date()
        if now < self.partitions_due and day == self._partitions_day:
            return
        conn = self.conn
        assert conn is not None
        # due again in a minute should this raise (a lost connection)
        self.partitions_due = now + _PARTITION_RETRY
        report = await create_partitions(
            conn, today=day, lock_timeout=PARTITION_LOCK_TIMEOUT_RUNNING
        )
        self._partitions_done(report, day)

    def _partitions_done(
        self, report: PartitionReport, day: _dt.date | None = None
    ) -> None:
        """Log ``report`` and schedule the next check (wall clock)."""
        now = time.time()
        self._partitions_day = day or _dt.datetime.fromtimestamp(now, _dt.UTC).date()
        if report.created:
            log.info("created partitions %s", ", ".join(report.created))
        for name in report.conflicting:
            if name not in self._conflicts_logged and len(self._conflicts_logged) < 64:
                self._conflicts_logged.add(name)
                log.warning(
                    "partition %s not created: ingest_events_default already holds "
                    "rows of that day (they stay there; trim deletes them by rows)",
                    name,
                )
        if report.locked:
            log.warning(
                "partitions %s not created: their locks were busy (sessions reading "
                "or writing the log); trying again in %.0f s",
                ", ".join(report.locked),
                _PARTITION_RETRY,
            )
            self.partitions_due = now + _PARTITION_RETRY
        else:
            self.partitions_due = now + _PARTITION_EVERY

    def _regressed(self, stored: int, batch: Batch) -> CursorRegressed:
        """The exit for a stored cursor below what this writer committed (logged
        CRITICAL: acknowledged commits were lost)."""
        mine = self.last_seq
        log.critical(
            "CURSOR REGRESSED: ingest_cursor.last_seq is %d, below seq %d that this "
            "writer committed and PostgreSQL acknowledged: the server lost "
            "acknowledged commits (synchronous_commit off and a crash, or a "
            "failover to a standby that was behind). Exiting (75) instead of "
            "writing seq %s..%s over a hole: the restart resumes after seq %d and "
            "the relay replays seqs %d..%d",
            stored,
            mine,
            batch.min_seq,
            batch.max_seq,
            stored,
            stored + 1,
            mine,
        )
        return CursorRegressed(
            f"cursor regressed: the stored cursor is {stored}, below seq {mine} "
            f"committed by this writer (PostgreSQL lost acknowledged commits); "
            f"restart to resume after seq {stored} (the relay replays the rest)"
        )


async def _lock_holder(conn: asyncpg.Connection) -> str:
    """Who holds the ingester's advisory lock, for the exit-73 message: the
    holding session (``application_name``, client address, PostgreSQL backend
    pid, labelled as such) and the ingester pid the cursor row names (a process
    id on the ingester's host, not the backend's). Best effort: a lookup error
    gives a shorter text."""
    parts: list[str] = []
    try:
        row = await conn.fetchrow(
            _LOCK_HOLDER,
            (INGESTER_LOCK_KEY >> 32) & 0xFFFFFFFF,
            INGESTER_LOCK_KEY & 0xFFFFFFFF,
        )
        if row is None:
            parts.append("holder not visible in pg_locks")
        else:
            app = row["application_name"]
            addr = row["client_addr"]
            client = (
                "a local socket"
                if addr is None
                else f"{addr}:{row['client_port']}"
                if row["client_port"] is not None
                else str(addr)
            )
            started = row["backend_start"]
            parts.append(
                f"held by the session application_name={app!r} from {client}, "
                f"PostgreSQL backend pid {row['pid']}"
                + (
                    f", connected since {started:%Y-%m-%d %H:%M:%S%z}"
                    if started
                    else ""
                )
            )
        if await conn.fetchval("SELECT to_regclass('ingest_cursor') IS NOT NULL"):
            cur = await conn.fetchrow(
                "SELECT ingester_pid, ingester_started_at FROM ingest_cursor WHERE id"
            )
            if cur is not None and cur["ingester_pid"] is not None:
                at = cur["ingester_started_at"]
                parts.append(
                    f"the cursor row names ingester pid {cur['ingester_pid']} (on "
                    "its own host)"
                    + (f", started {at:%Y-%m-%d %H:%M:%S%z}" if at else "")
                )
    except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
        parts.append(f"holder lookup failed: {type(exc).__name__}")
    return "; ".join(parts)


def _refused(row: EventRow, exc: BaseException) -> DeadRow:
    record = row[11]
    frame = record.encode("utf-8", "replace") if isinstance(record, str) else b""
    return dead_letter_row(
        frame,
        rule="ROW_REJECTED",
        reason=f"PostgreSQL refused the row: {type(exc).__name__}: {exc}",
        location=f"seq {row[0]} idx {row[1]} {_short(row[4])} {_short(row[5])} "
        f"{_short(row[6])}",
        seq=row[0],
    )


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 300 else text[:300] + "…"
