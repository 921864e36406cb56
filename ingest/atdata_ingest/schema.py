"""The durable log: PostgreSQL tables of the ingestion service (seed 002 §5).

- ``ingest_cursor``: exactly one row. ``last_seq`` is the ``seq`` of the last event
  committed; it is advanced in the same transaction as the batch that stored the
  events, so the log and the cursor never disagree. ``source`` is the relay or PDS
  whose ``seq`` space the cursor counts in. The ingester also keeps its status here
  (buffer fill, dead-letter count, newest event time) for ``GET /health``, and the
  last ``#info`` frame it read (``last_info``: ``{name, message, after_seq,
  received_at}``; an ``#info`` has no seq, so a consumer paging ``/events`` past
  the seq it followed would never see its row), and the relay connection's state
  (schema 3): ``relay_state`` (``connecting`` | ``connected`` | ``failing``;
  NULL after a clean stop, and before schema 3), ``relay_error`` (a short,
  redacted reason: ``HTTP 404 at handshake``, ``connection refused``, ...; NULL
  when none), ``relay_state_since`` (when ``relay_state`` last changed; for
  ``failing``: the first failure of the current run of failures) and
  ``last_frame_at`` (when the last frame arrived from the relay). The ingester
  writes them with every batch, every heartbeat (5 s when idle) and at every
  change of state.
- ``ingest_events``: the event log, one row per record operation of a ``#commit``
  (``idx`` is the operation's index in the commit) and one row per other event
  (``#identity``, ``#account``, ``#sync``, a commit without operations: ``idx`` 0;
  ``#info``: ``idx`` -1, see :mod:`.rows`). ``verified``/``verify_rule`` carry the
  signature verdict (:class:`atdata_runtime.firehose.verify.Verdict`). Every event
  type is stored, nothing is filtered. Partitioned by day
  of ``indexed_at`` so that retention drops whole partitions (seed 002 §13).
  PostgreSQL's unique indexes on a partitioned table must include the partition
  key, so uniqueness of ``(seq, idx)`` across days is enforced by the cursor guard:
  each batch locks the cursor row and keeps only events after ``last_seq``.
- ``ingest_dead_letters``: frames that could not be decoded or verified, with the
  rule ID, the reason, where in the frame, and the frame's first bytes.
- ``ingest_tokens``: consumer tokens (SHA-256 hashes only), their filter scopes and
  rate limits.

:func:`migrate` creates all of it, idempotently (``CREATE ... IF NOT EXISTS``),
under an advisory lock so that concurrent starts do not race, and upgrades a
database of an older :data:`SCHEMA_VERSION` (columns added since); on an
up-to-date database it runs no DDL but the missing daily partitions, which
:func:`create_partitions` makes under a short lock timeout (skipped, and tried
again later by the ingester, when readers hold the log's locks).
"""

from __future__ import annotations

import asyncio
import datetime as _dt
from dataclasses import dataclass, field
from typing import Final

import asyncpg

__all__ = [
    "EVENT_COLUMNS",
    "PARTITION_LOCK_TIMEOUT",
    "SCHEMA_VERSION",
    "PartitionReport",
    "create_partitions",
    "ensure_partitions",
    "migrate",
    "partition_name",
]

SCHEMA_VERSION: Final = 3
"""1: the first schema. 2: ``ingest_events.verify_rule``, ``ingest_cursor.last_info``.
3: ``ingest_cursor.relay_state``, ``relay_error``, ``relay_state_since``,
``last_frame_at`` (:func:`migrate` adds the columns of later versions to an older
database)."""

PARTITION_LOCK_TIMEOUT: Final = 2.0
"""Seconds a partition's ``CREATE TABLE ... PARTITION OF`` (ACCESS EXCLUSIVE on
``ingest_events`` and ``ingest_events_default``) may wait for its locks
(``SET LOCAL lock_timeout``) before it is skipped, to be tried again later: a
waiting ACCESS EXCLUSIVE request queues every later reader and writer of the log
behind it, so it must never wait for long."""

#: The columns of ``ingest_events`` in the order the ingester COPYs them.
EVENT_COLUMNS: Final = (
    "seq",  # bigint: the frame's seq
    "idx",  # integer: operation index within the commit, else 0
    "event_type",  # text: commit | identity | account | sync | info
    "action",  # text: create | update | delete for commit operations, else NULL
    "repo",  # text: the DID
    "collection",  # text: NSID of the record's collection (operations only)
    "rkey",  # text: record key (operations only)
    "cid",  # text: record CID (create, update)
    "prev_cid",  # text: previous record CID (update, delete; Sync 1.1)
    "rev",  # text: the commit's (or #sync's) revision TID
    "commit_cid",  # text: CID of the signed commit block
    "record",  # jsonb: the record in the JSON data model; other events: their body
    "valid",  # text: 'ok', the rule ID of a lexicon violation, or NULL (no model)
    "verified",  # boolean: commit signature checked and good; NULL: not checked
    "event_time",  # timestamptz: the event's "time" field
    "indexed_at",  # timestamptz: when this service stored it
    "verify_rule",  # text: why a checked commit/#sync is not verified (the
    # Verdict's rule: REV_STALE, PROOF_INCOMPLETE, IDENTITY_UNRESOLVED,
    # COMMIT_TOO_BIG, ...); NULL when verified or not required by the policy
)

_DDL: Final = """
CREATE TABLE IF NOT EXISTS ingest_meta (
    key text PRIMARY KEY,
    value text NOT NULL
);

CREATE TABLE IF NOT EXISTS ingest_cursor (
    id boolean PRIMARY KEY DEFAULT true CHECK (id),
    source text NOT NULL DEFAULT '',
    last_seq bigint NOT NULL DEFAULT 0,
    last_event_time timestamptz,
    updated_at timestamptz NOT NULL DEFAULT now(),
    buffer_fill real NOT NULL DEFAULT 0,
    buffer_max integer NOT NULL DEFAULT 0,
    dead_letters bigint NOT NULL DEFAULT 0,
    gaps bigint NOT NULL DEFAULT 0,
    ingester_pid integer,
    ingester_started_at timestamptz,
    last_info jsonb,
    relay_state text,
    relay_error text,
    relay_state_since timestamptz,
    last_frame_at timestamptz
);
INSERT INTO ingest_cursor (id) VALUES (true) ON CONFLICT DO NOTHING;

CREATE TABLE IF NOT EXISTS ingest_events (
    seq bigint NOT NULL,
    idx integer NOT NULL,
    event_type text NOT NULL,
    action text,
    repo text NOT NULL,
    collection text COLLATE "C",  -- NSIDs are ASCII: prefix globs use the index
    rkey text,
    cid text,
    prev_cid text,
    rev text,
    commit_cid text,
    record jsonb,
    valid text,
    verified boolean,
    event_time timestamptz,
    indexed_at timestamptz NOT NULL DEFAULT now(),
    verify_rule text
) PARTITION BY RANGE (indexed_at);

CREATE TABLE IF NOT EXISTS ingest_events_default
    PARTITION OF ingest_events DEFAULT;

CREATE INDEX IF NOT EXISTS ingest_events_seq ON ingest_events (seq, idx);
CREATE INDEX IF NOT EXISTS ingest_events_collection
    ON ingest_events (collection, seq) WHERE collection IS NOT NULL;
CREATE INDEX IF NOT EXISTS ingest_events_repo ON ingest_events (repo, seq);
CREATE INDEX IF NOT EXISTS ingest_events_type ON ingest_events (event_type, seq);

CREATE TABLE IF NOT EXISTS ingest_dead_letters (
    id bigserial PRIMARY KEY,
    seq bigint,
    received_at timestamptz NOT NULL DEFAULT now(),
    rule text NOT NULL,
    reason text NOT NULL,
    location text,
    frame bytea,
    frame_size integer NOT NULL
);
CREATE INDEX IF NOT EXISTS ingest_dead_letters_received
    ON ingest_dead_letters (received_at);

CREATE TABLE IF NOT EXISTS ingest_tokens (
    id text PRIMARY KEY,
    name text NOT NULL UNIQUE,
    hash bytea NOT NULL,
    scope jsonb NOT NULL DEFAULT '{}'::jsonb,
    rate_per_second real NOT NULL DEFAULT 20,
    burst integer NOT NULL DEFAULT 40,
    created_at timestamptz NOT NULL DEFAULT now(),
    revoked_at timestamptz
);
"""

#: Columns added after schema 1: (table, column, type), in the order added. Each is
#: added by :func:`migrate` to an older database (``ALTER TABLE ... ADD COLUMN IF
#: NOT EXISTS``: a column with a NULL default is added without a table rewrite,
#: and a partitioned table's new column reaches every partition). The DDL above
#: ends each table with them, so old and new databases have the same column order.
_ADDED_COLUMNS: Final = (
    ("ingest_events", "verify_rule", "text"),  # schema 2
    ("ingest_cursor", "last_info", "jsonb"),  # schema 2
    ("ingest_cursor", "relay_state", "text"),  # schema 3
    ("ingest_cursor", "relay_error", "text"),  # schema 3
    ("ingest_cursor", "relay_state_since", "timestamptz"),  # schema 3
    ("ingest_cursor", "last_frame_at", "timestamptz"),  # schema 3
)
_HAS_COLUMN: Final = (
    "SELECT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = $1::regclass "
    "AND attname = $2 AND NOT attisdropped)"
)

_LOCK_KEY: Final = 0x61746461  # "atda": serializes migrations


def partition_name(day: _dt.date) -> str:
    """``ingest_events_pYYYYMMDD``: the partition holding ``indexed_at`` on ``day``
    (UTC)."""
    return f"ingest_events_p{day:%Y%m%d}"


async def ensure_partitions(
    conn: asyncpg.Connection, *, today: _dt.date | None = None, ahead: int = 2
) -> list[str]:
    """Create the daily partitions for ``today`` and ``ahead`` more days (UTC) when
    missing; return the names created. Rows that fall outside every daily partition
    land in ``ingest_events_default`` and are trimmed by row deletes.

    Raw: it waits for its locks as long as the session's ``lock_timeout`` says
    (none by default) and raises ``CheckViolationError`` when the default
    partition already holds rows of a day; the service uses
    :func:`create_partitions`."""
    day = today or _dt.datetime.now(_dt.UTC).date()
    created: list[str] = []
    for n in range(ahead + 1):
        d = day + _dt.timedelta(days=n)
        name = partition_name(d)
        exists = await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", name)
        if exists:
            continue
        lo = _dt.datetime.combine(d, _dt.time(), _dt.UTC)
        hi = lo + _dt.timedelta(days=1)
        # Identifiers and bounds are made here from a date, never from input.
        await conn.execute(
            f"CREATE TABLE IF NOT EXISTS {name} PARTITION OF ingest_events "
            f"FOR VALUES FROM ('{lo.isoformat()}') TO ('{hi.isoformat()}')"
        )
        created.append(name)
    return created


@dataclass(slots=True)
class PartitionReport:
    """What :func:`create_partitions` (and :func:`migrate`) did with the daily
    partitions: ``created``; ``locked``: not created because the locks could not
    be taken within the lock timeout (readers or writers of the log held them; to
    be tried again later: the partitions are made two days ahead); ``conflicting``:
    not created because ``ingest_events_default`` already holds rows of that day
    (``CheckViolationError``: those rows stay in the default partition, where
    :mod:`.retention` trims them by row deletes, and later rows of that day join
    them). Each list holds partition names (:func:`partition_name`)."""

    created: list[str] = field(default_factory=list)
    locked: list[str] = field(default_factory=list)
    conflicting: list[str] = field(default_factory=list)


async def create_partitions(
    conn: asyncpg.Connection,
    *,
    today: _dt.date | None = None,
    ahead: int = 2,
    lock_timeout: float = PARTITION_LOCK_TIMEOUT,
    attempts: int = 1,
) -> PartitionReport:
    """:func:`ensure_partitions` that never waits long and never fails on what a
    running service meets: each missing partition of ``today`` (UTC; default: the
    wall clock's date) and ``ahead`` more days is created in its own transaction
    under ``SET LOCAL lock_timeout`` (``lock_timeout`` seconds, ``attempts``
    attempts with a short pause between them) and the migration advisory lock;
    a lock timeout (``LockNotAvailableError``, SQLSTATE 55P03) puts the partition
    in ``locked``, rows of that day already in the default partition
    (``CheckViolationError``, 23514) put it in ``conflicting``; other errors
    propagate. ``conn`` must not be inside a transaction (``ValueError``)."""
    if conn.is_in_transaction():
        raise ValueError("create_partitions commits per partition: no transaction")
    day = today or _dt.datetime.now(_dt.UTC).date()
    ms = max(1, int(lock_timeout * 1000))
    report = PartitionReport()
    for n in range(ahead + 1):
        d = day + _dt.timedelta(days=n)
        name = partition_name(d)
        if await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", name):
            continue
        for attempt in range(attempts):
            try:
                async with conn.transaction():
                    await conn.execute(f"SET LOCAL lock_timeout = {ms}")
                    await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK_KEY)
                    report.created += await ensure_partitions(conn, today=d, ahead=0)
                break
            except asyncpg.LockNotAvailableError:
                if attempt + 1 >= attempts:
                    report.locked.append(name)
                else:
                    await asyncio.sleep(min(lock_timeout, 1.0) * (attempt + 1))
            except asyncpg.CheckViolationError:
                report.conflicting.append(name)
                break
    return report


async def _up_to_date(conn: asyncpg.Connection) -> bool:
    """Whether a migration of :data:`SCHEMA_VERSION` or later has committed (and
    the cursor row is there): then :func:`migrate` runs no DDL at all."""
    if not await conn.fetchval(
        "SELECT to_regclass('ingest_meta') IS NOT NULL "
        "AND to_regclass('ingest_cursor') IS NOT NULL"
    ):
        return False
    raw = await conn.fetchval(
        "SELECT value FROM ingest_meta WHERE key = 'schema_version'"
    )
    if raw is None or not str(raw).isdigit() or int(raw) < SCHEMA_VERSION:
        return False
    return bool(await conn.fetchval("SELECT EXISTS (SELECT 1 FROM ingest_cursor)"))


async def migrate(
    conn: asyncpg.Connection,
    *,
    lock_timeout: float = PARTITION_LOCK_TIMEOUT,
    attempts: int = 3,
) -> PartitionReport:
    """Create every table, index and today's partitions when missing, and add the
    columns of later schema versions to an older database (idempotent; safe to
    run from several processes at once); return what was done with the
    partitions (:class:`PartitionReport`).

    Locks: on a database already at :data:`SCHEMA_VERSION` (or later) no DDL runs
    (no ``CREATE INDEX IF NOT EXISTS`` SHARE lock, no ``ALTER TABLE``), only the
    missing partitions are created (:func:`create_partitions`: a lock timeout
    skips a partition rather than failing the start or queueing the log's readers
    behind it; today's partition gets ``attempts`` attempts, later ones one).
    Otherwise the DDL runs in one transaction under ``SET LOCAL lock_timeout``
    (``lock_timeout`` seconds) and the migration advisory lock, for up to
    ``attempts`` attempts; after that ``LockNotAvailableError`` propagates (an
    upgrade cannot be skipped). The stored ``schema_version`` never goes down
    (an older program migrating leaves a newer version in place). ``conn`` must
    not be inside a transaction (``ValueError``)."""
    if conn.is_in_transaction():
        raise ValueError("migrate commits step by step: call it outside a transaction")
    ms = max(1, int(lock_timeout * 1000))
    if not await _up_to_date(conn):
        for attempt in range(attempts):
            try:
                async with conn.transaction():
                    await conn.execute(f"SET LOCAL lock_timeout = {ms}")
                    await _migrate_ddl(conn)
                break
            except asyncpg.LockNotAvailableError:
                if attempt + 1 >= attempts:
                    raise
                await asyncio.sleep(min(lock_timeout, 1.0) * (attempt + 1))
    report = await create_partitions(conn, lock_timeout=lock_timeout)
    today = partition_name(_dt.datetime.now(_dt.UTC).date())
    if today in report.locked and attempts > 1:
        report.locked.remove(today)
        again = await create_partitions(
            conn, ahead=0, lock_timeout=lock_timeout, attempts=attempts - 1
        )
        report.created += again.created
        report.locked += again.locked
        report.conflicting += again.conflicting
    return report


async def _migrate_ddl(conn: asyncpg.Connection) -> None:
    await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK_KEY)
    await conn.execute(_DDL)
    for table, column, kind in _ADDED_COLUMNS:
        if not await conn.fetchval(_HAS_COLUMN, table, column):
            # identifiers from the constant above, never from input
            await conn.execute(
                f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {column} {kind}"
            )
    await conn.execute(
        "INSERT INTO ingest_meta (key, value) VALUES ('schema_version', $1) "
        "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value "
        "WHERE CASE WHEN ingest_meta.value ~ '^[0-9]{1,9}$' "
        "THEN ingest_meta.value::integer < EXCLUDED.value::integer ELSE true END",
        str(SCHEMA_VERSION),
    )
