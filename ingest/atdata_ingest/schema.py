"""The durable log: PostgreSQL tables of the ingestion service (seed 002 §5).

- ``ingest_cursor``: exactly one row. ``last_seq`` is the ``seq`` of the last event
  committed; it is advanced in the same transaction as the batch that stored the
  events, so the log and the cursor never disagree. ``source`` is the relay or PDS
  whose ``seq`` space the cursor counts in. The ingester also keeps its status here
  (buffer fill, dead-letter count, newest event time) for ``GET /health``, and the
  last ``#info`` frame it read (``last_info``: ``{name, message, after_seq,
  received_at}``; an ``#info`` has no seq, so a consumer paging ``/events`` past
  the seq it followed would never see its row).
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
database of an older :data:`SCHEMA_VERSION` (columns added since).
"""

from __future__ import annotations

import datetime as _dt
from typing import Final

import asyncpg

__all__ = [
    "EVENT_COLUMNS",
    "SCHEMA_VERSION",
    "ensure_partitions",
    "migrate",
    "partition_name",
]

SCHEMA_VERSION: Final = 2
"""1: the first schema. 2: ``ingest_events.verify_rule``, ``ingest_cursor.last_info``
(:func:`migrate` adds both to a version-1 database)."""

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
    last_info jsonb
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
    land in ``ingest_events_default`` and are trimmed by row deletes."""
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


async def migrate(conn: asyncpg.Connection) -> None:
    """Create every table, index and today's partitions when missing, and add the
    columns of later schema versions to an older database (idempotent; safe to
    run from several processes at once). An ``ALTER TABLE`` (ACCESS EXCLUSIVE
    lock) runs only when its column is missing, so that starting on an
    up-to-date database does not wait behind readers of the log."""
    async with conn.transaction():
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
            "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
            str(SCHEMA_VERSION),
        )
        await ensure_partitions(conn)
