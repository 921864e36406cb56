"""The indexer: folds the ingestion log (``ingest_events``, same database) into the
AppView's tables (:mod:`.schema`), in ``(seq, idx)`` order, one transaction per
batch.

What it reads
-------------
Only what concerns the AppView, through the log's own indexes and never row by row
over the whole stream (which is mostly ``app.bsky.*``): commit operations of the
record collections (:data:`.schema.RECORD_TABLES`, index ``(collection, seq)``), and
``#identity``, ``#account`` and ``#sync`` events (index ``(event_type, seq)``). A
batch is the first ``batch_size`` of those rows after ``appview_cursor (seq,
idx)`` and at or below ``ingest_cursor.last_seq`` (everything at or below it is
committed: the ingester advances it in the batch's transaction, and its cursor
guard keeps seqs increasing), cut short after ``max_batch_bytes`` of record JSON.
When a batch is not full, the cursor jumps to ``(last_seq, END_OF_SEQ)``: the log
between is read by nobody. ``idx`` :data:`END_OF_SEQ` means "every row of that seq".

One batch = one transaction: lock the cursor row (``FOR UPDATE``: a second indexer
waits), read, apply, advance the cursor and its ``folded`` / ``dead_letters``
counters, commit. A process killed or a task cancelled mid-batch leaves the
transaction uncommitted: nothing of the batch is applied and the next run folds it
again, once. Writes are per batch and per table: one ``INSERT ... SELECT FROM
unnest(<one array per column>) ON CONFLICT`` for the upserts, one ``DELETE ...
USING unnest(...)`` for the removals (no temporary tables: nothing to bloat), never
one round trip per row.

Semantics (per log row)
-----------------------
- **create / update**: :func:`.records.normalize` gives the table's row, upserted
  only when its ``rev`` is newer than the stored one (TIDs in C collation, so a
  replay or an out-of-order row never regresses a record). ``indexed_at`` moves
  only when the CID changes (a backfill reading the same version again, or an
  update to the same CID, advances ``rev`` but does not re-date the record);
  ``first_indexed_at`` is set once, on insert. References to other records
  (``schema_ref``, ``source_schema``/``target_schema``, ``dataset_uri``,
  ``lens_uri``) naming their target by a handle are stored in DID form when the
  handle is **verified** for a DID (``appview_accounts.verified_handle``,
  :mod:`.handles`; an ``#identity`` claim is not enough, any PDS can claim any
  handle), else kept in handle form (lower-cased) and rewritten by
  :func:`canonicalize_refs` once it is (the :class:`Indexer` loop, every
  :data:`LEASE_CHECK_SECONDS`). A reference in DID form stays bound to that DID
  when the handle later moves; the ``record`` column keeps the text as
  published. A
  :class:`.records.Rejection` goes to ``appview_dead_letters`` (rule, JSON pointer,
  message, a copy of the record bounded to ``max_dead_letter_bytes``; the same
  ``(did, collection, rkey, cid, rule)`` is kept once, so replays are counted once)
  and the record's previously indexed version is **removed**: the repository no
  longer holds it, and the index never claims a record valid that its author has
  replaced.
- **delete**: the row is removed (when its stored ``rev`` is older).
- **signatures**: ``verified = false`` rows are dead-lettered with the log's
  ``verify_rule`` (``AV_UNVERIFIED`` when it has none) and change nothing else: an
  unverified row must not remove a good record either (anyone can forge a commit
  that fails its signature). ``verified IS NULL`` (not checked) rows are applied,
  unless ``require_verified`` (then dead-lettered as the log's ``verify_rule`` or
  ``AV_UNCHECKED``).
- **repository rev high-water mark**: ``appview_accounts.rev`` is the highest commit
  rev folded for the DID; a commit row below it is stale (a replay, e.g. after a
  relay switch) and skipped, so a replayed create cannot resurrect a deleted record
  (per-record revs alone cannot see a row that is gone). Atproto revs increase per
  repository (Sync spec, "Commit Revisions").
- **#identity**: ``appview_accounts.handle`` (lower-cased; a malformed handle or
  ``handle.invalid`` stores NULL; no ``handle`` leaves it as it was). A handle
  claimed by a DID is cleared from any other DID that held it (the newest claim
  wins, as in Bluesky's AppView). Identity rows of every DID are kept, not only of
  publishers, so a first publication already has its handle.
- **#account**: ``active``/``status``/``seq`` in ``appview_accounts``. Status
  ``deleted`` or ``takendown`` **purges** the DID: every record table,
  ``appview_pending``, ``appview_schema_compat`` and ``appview_dead_letters``
  (takedown removes content, copies included); later commits of that DID are
  skipped until an ``#account`` with ``active = true`` (which also queues the
  repository for a backfill: ``appview_repos.state = 'pending'``, since its records
  are gone). Any other inactive status (``deactivated``, ``suspended``,
  ``desynchronized``, ``throttled``) only sets ``active = false``: records are kept
  and **queries hide records of accounts whose ``active`` is false**; reactivation
  shows them again.
- **#sync** (Sync 1.1: the repository jumped to a new commit): when its rev is above
  the high-water mark, the repository is queued for a backfill
  (``appview_repos.state = 'pending'``, ``attempts`` 0, unless already
  ``backfilling``). Queued repositories are read by
  :meth:`.backfill.Backfiller.run` (``atdata-appview run`` does a pass every
  minute).
- **the ingest cursor reset** (the ingester moved to another relay, or its
  ``last_seq`` was set back: ``ingest_cursor.source`` differs from the
  ``appview_cursor.ingest_source`` recorded, or ``last_seq`` is below the
  AppView's cursor): logged as an ERROR, counted (``appview_cursor.resets``,
  ``reset_at``, ``reset_reason``), the cursor rewound to the start of the new
  seq space, log rows stored before the ingester's start
  (``ingest_cursor.ingester_started_at``, the ``horizon``; none when unknown)
  never folded again (the old space: its ``#identity`` rows would bring old
  handles back), and every repository the index knows queued for a backfill
  (``pending``; its records stay indexed meanwhile).
- **log gaps**: when the oldest row the log retains is past the cursor (``seq``
  more than one above it: the ingester's retention dropped rows not yet folded),
  the batch records it (``gaps``, ``gap_at``, ``gap_seqs``: cursor seq, oldest
  seq), logs an ERROR and queues every known repository for a backfill;
  :func:`status` reports ``behind_retention`` before that. (Relay seqs are dense;
  a relay that skipped seqs exactly there would be taken for a gap: a backfill
  too many, nothing lost.)
- After a schema upsert (new or changed), removal or purge, the history hook
  (default :func:`.history.recompute_history`) runs once per ``(did, name)``
  touched, in the batch's transaction, inside a savepoint: a failing recomputation
  is logged and counted, never blocks the fold.

Backfill
--------
A repository being backfilled (``appview_repos.state = 'backfilling'``, set by
:func:`begin_backfill`) has its live commit, ``#account`` and ``#sync`` rows
buffered durably in ``appview_pending`` instead of applied. :func:`apply_snapshot`
then, in one transaction under the repository row's lock: replaces the repository's
records with the snapshot, drains its pending rows in ``(seq, idx)`` order applying
only those with ``rev`` above the snapshot's (rows without a rev, ``#account``,
always), and marks it ``synced``. :func:`fail_backfill` applies the pending rows as
live ones and marks it ``failed``. A snapshot whose rev is below
``appview_accounts.rev`` (older than what was already folded: a lagging or
hostile PDS) is not applied at all (result ``stale``): it would bring back
records deleted since; what was buffered is applied as live rows and the
repository queued ``pending`` (``error`` ``AV_STALE_SNAPSHOT``). Drains apply the
live fold's signature policy (``require_verified=None``: the
``appview_cursor.require_verified`` the :class:`Indexer` records with each
batch), so a row is indexed or refused the same with or without a backfill.
A repository ``backfilling`` for longer than the lease
(:data:`BACKFILL_LEASE_SECONDS`; its backfiller crashed or hung) is failed by
:func:`expire_backfills` (from the :class:`Indexer` loop and at the start of a
backfill run): its buffered rows are applied, ``error`` ``AV_LEASE_EXPIRED``.

Races: the fold takes ``FOR SHARE`` on the ``appview_repos`` rows of the DIDs of its
batch before deciding to apply or buffer; :func:`apply_snapshot` takes ``FOR
UPDATE``; so a batch either commits before the snapshot (its buffered rows are
drained by it) or sees ``synced`` after it (and applies directly). A repository
without a row yet cannot be locked, so :func:`begin_backfill` first takes ``FOR
SHARE`` on the cursor row, which waits for the batch in flight (it holds ``FOR
UPDATE``) to commit: no batch that read "no row" can commit after the backfill
began. **Contract for the backfiller**: call :func:`begin_backfill` (committed)
*before* fetching the repository, so every row folded directly is older than the
snapshot.

Bounds
------
Batch: ``batch_size`` rows and ``max_batch_bytes`` of record JSON (rows are read
through a server-side cursor, so memory stays near that bound; each record is at
most the log's 3 MiB). Dead-letter copies: ``max_dead_letter_bytes``. A flood of one
DID costs one batch's work per batch (operations on one record within a batch are
coalesced to the last, history runs once per ``(did, name)`` per batch), so others
wait at most the batches the flood occupies in the log; the ingester's per-DID
rate limit bounds that. A row that makes a batch fail on write (a value PostgreSQL
refuses) is isolated: the batch is redone row by row in savepoints and that row is
dead-lettered as ``AV_WRITE_FAILED``, so no record stalls the fold.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as _dt
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, Final, TypeAlias

import asyncpg
import orjson
from atdata_runtime.lex.formats import is_did, is_handle

from .history import recompute_history
from .records import IndexedRow, Rejection, dead_letter_json, normalize
from .schema import RECORD_TABLES

__all__ = [
    "BACKFILL_LEASE_SECONDS",
    "END_OF_SEQ",
    "INDEXER_RULES",
    "LEASE_CHECK_SECONDS",
    "MAX_BATCH_BYTES",
    "MAX_DEAD_LETTER_BYTES",
    "NOTIFY_CHANNEL",
    "PURGE_STATUSES",
    "ApplyResult",
    "HistoryHook",
    "Indexer",
    "Normalizer",
    "SnapshotResult",
    "apply_rows",
    "apply_snapshot",
    "begin_backfill",
    "canonicalize_refs",
    "expire_backfills",
    "fail_backfill",
    "status",
]

log = logging.getLogger(__name__)

NOTIFY_CHANNEL: Final = "ingest_events"
"""The channel the ingester NOTIFYs after each batch (payload: its last seq)."""

END_OF_SEQ: Final = 2**31 - 1
"""``appview_cursor.idx`` meaning "every row of ``seq`` is folded" (after a jump)."""

MAX_BATCH_BYTES: Final = 32 * 1024 * 1024
"""Default bound of record JSON per batch (characters of JSON text)."""

MAX_DEAD_LETTER_BYTES: Final = 16 * 1024
"""Default bound of a dead letter's record copy (characters of JSON text); a larger
record is kept as ``{"$truncated": true, "size": n, "head": "<first characters>"}``."""

BACKFILL_LEASE_SECONDS: Final = 900.0
"""Default lease of a backfill: a repository ``backfilling`` for longer is taken
to be abandoned (:func:`expire_backfills`). Far above one repository's read
(``getRepo`` is bounded to 120 s by default, identity to 20 s)."""

LEASE_CHECK_SECONDS: Final = 60.0
"""How often :meth:`Indexer.run` runs :meth:`Indexer.maintain` (backfills past
their lease, references by newly verified handles)."""

PURGE_STATUSES: Final = frozenset({"deleted", "takendown"})
"""``#account`` statuses whose records are purged (Sync spec, "Account Status")."""

INDEXER_RULES: Final[dict[str, str]] = {
    "AV_UNVERIFIED": "the commit's signature check failed (verified = false) and "
    "the log gives no verify_rule",
    "AV_UNCHECKED": "require_verified is set and the commit's signature was not "
    "checked (verified IS NULL) and the log gives no verify_rule",
    "AV_NO_RECORD": "a create or update operation without a record in the log",
    "AV_INTERNAL": "the normalizer raised (a bug); the record is refused so that the "
    "fold goes on",
    "AV_WRITE_FAILED": "PostgreSQL refused to store the normalized row (the batch "
    "was redone row by row and this row was left out)",
    "AV_STALE_SNAPSHOT": "a backfill snapshot's rev is below the rev already "
    "folded for the repository: not applied, the repository queued for another "
    "read (appview_repos.error)",
    "AV_LEASE_EXPIRED": "a repository stayed backfilling past the lease (the "
    "backfill crashed or hung): its buffered rows were applied live, the "
    "repository marked failed (appview_repos.error)",
}
"""Rule IDs the indexer gives itself, besides :data:`.records.RULES` and the log's
``verify_rule`` values (``REV_STALE``, ``PROOF_INCOMPLETE``, ...)."""

HistoryHook: TypeAlias = Callable[[asyncpg.Connection, str, str], Awaitable[object]]
"""``await hook(conn, did, name)``: recompute a schema name's history in the
caller's transaction (:func:`.history.recompute_history`)."""

Normalizer: TypeAlias = Callable[..., "IndexedRow | Rejection"]
""":func:`.records.normalize`'s signature."""

_COLLECTIONS: Final = tuple(RECORD_TABLES)
_EVENT_TYPES: Final = ("identity", "account", "sync")
_ACTIONS: Final = frozenset({"create", "update", "delete"})
_SCHEMAS: Final = RECORD_TABLES["science.alt.dataset.schema"]
_MAX_TEXT: Final = 1000
_MAX_STATUS: Final = 64
_MAX_HANDLE: Final = 253
_MAX_DID: Final = 2048
_ROW_OVERHEAD: Final = 256

_TRANSIENT: Final = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.TransactionRollbackError,
    asyncpg.InsufficientResourcesError,
    asyncpg.OperatorInterventionError,
)
"""Errors after which a batch is simply tried again (connection, serialization,
deadlock, resources, shutdown/cancel by the server)."""

_POISON: Final = (
    asyncpg.DataError,
    asyncpg.IntegrityConstraintViolationError,
    asyncpg.ProgramLimitExceededError,
    ValueError,  # asyncpg's client-side encoding errors (its DataError) among them
    OverflowError,  # an integer beyond its column, found by the binary COPY
)
"""Errors a row's values can cause on write: the batch is redone row by row
(checked before :data:`_TRANSIENT`: asyncpg's encoding error is an
``InterfaceError`` too)."""

_LOST: Final = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.ConnectionDoesNotExistError,
    asyncpg.TransactionRollbackError,
    asyncpg.OperatorInterventionError,
)
"""Errors of a history hook that end the batch (retried) rather than being
counted: the connection or the transaction is gone."""

# -- SQL (identifiers only from the constants above) ---------------------------------

_COLS: Final = (
    "seq, idx, event_type, action, repo, collection, rkey, cid, rev, "
    "record::text AS record, valid, verified, verify_rule"
)


def _read_sql() -> str:
    # Per stream (one collection, or one event type): the rows after the cursor up
    # to the seq of the stream's (N+1)-th row (found by an index scan in seq order,
    # OFFSET N: the index is (collection, seq) / (event_type, seq), without idx), so
    # each stream gives at least N+1 rows or all it has, whole seqs only, and
    # never reads its backlog beyond them. The N smallest (seq, idx) of the union
    # are then the N next rows of the log that concern us.
    # Rows stored before the horizon (an earlier seq space: the ingest cursor was
    # reset) are not ours, in the bound too (else a stream would look short).
    subs = []
    n = 5
    h = 5 + len(_COLLECTIONS) + len(_EVENT_TYPES)
    horizon = f"(${h}::timestamptz IS NULL OR indexed_at >= ${h}::timestamptz)"
    for column, values in (("collection", _COLLECTIONS), ("event_type", _EVENT_TYPES)):
        for _ in values:
            bound = (
                f"(SELECT seq FROM ingest_events WHERE {column} = ${n} "
                "AND seq >= $1 AND seq <= $3 AND (seq, idx) > ($1, $2) "
                f"AND {horizon} ORDER BY seq OFFSET $4 LIMIT 1)"
            )
            subs.append(
                f"(SELECT {_COLS} FROM ingest_events WHERE {column} = ${n} "
                f"AND seq >= $1 AND seq <= least($3, {bound}) "
                f"AND (seq, idx) > ($1, $2) AND {horizon})"
            )
            n += 1
    return (
        "SELECT * FROM (" + " UNION ALL ".join(subs) + ") u ORDER BY seq, idx LIMIT $4"
    )


_READ_SQL: Final = _read_sql()
_READ_ARGS: Final = (*_COLLECTIONS, *_EVENT_TYPES)
_READ_SETTING: Final = (
    "SET LOCAL enable_sort = off; SET LOCAL jit = off; "
    "SET LOCAL plan_cache_mode = force_custom_plan"
)
"""Run before :data:`_READ_SQL` in the batch's transaction (and undone after):
explicit sorts off, so that each stream is read in index order whatever the
statistics (see :func:`_read_sql`); JIT off, since the disabled sort's cost would
otherwise make PostgreSQL JIT-compile the query (seconds); custom plans, since the
generic plan PostgreSQL switches the prepared statement to after five executions
cannot use the parameters' values (measured: 43 ms a read instead of 3)."""
_READ_SAVE: Final = (
    "SELECT current_setting('enable_sort'), current_setting('jit'), "
    "current_setting('plan_cache_mode')"
)
_READ_RESTORE: Final = (
    "SELECT set_config('enable_sort', $1, true), set_config('jit', $2, true), "
    "set_config('plan_cache_mode', $3, true)"
)

_PENDING_INSERT: Final = """
INSERT INTO appview_pending (did, seq, idx, event_type, action, collection, rkey,
    cid, rev, record, verified, valid, verify_rule)
SELECT * FROM unnest($1::text[], $2::bigint[], $3::int[], $4::text[], $5::text[],
    $6::text[], $7::text[], $8::text[], $9::text[], $10::jsonb[], $11::bool[],
    $12::text[], $13::text[])
ON CONFLICT (did, seq, idx) DO NOTHING
"""

_PENDING_READ: Final = """
SELECT did AS repo, seq, idx, event_type, action, collection, rkey, cid, rev,
    record::text AS record, valid, verified, verify_rule
FROM appview_pending WHERE did = $1 AND (seq, idx) > ($2, $3)
ORDER BY seq, idx LIMIT $4
"""

_DEAD_INSERT: Final = """
INSERT INTO appview_dead_letters (seq, idx, did, collection, rkey, cid, rule,
    pointer, message, record)
SELECT d.* FROM unnest($1::bigint[], $2::int[], $3::text[], $4::text[], $5::text[],
    $6::text[], $7::text[], $8::text[], $9::text[], $10::jsonb[])
    AS d(seq, idx, did, collection, rkey, cid, rule, pointer, message, record)
WHERE NOT EXISTS (
    SELECT 1 FROM appview_dead_letters x
    WHERE x.did = d.did AND x.collection = d.collection AND x.rkey = d.rkey
      AND x.cid IS NOT DISTINCT FROM d.cid AND x.rule = d.rule)
"""

_ACCOUNTS_LOAD: Final = (
    "SELECT did, handle, active, status, rev FROM appview_accounts "
    "WHERE did = ANY($1::text[])"
)
_REPOS_LOCK: Final = (
    "SELECT did, state FROM appview_repos WHERE did = ANY($1::text[]) "
    "ORDER BY did FOR SHARE"
)
_HANDLES_CLEAR: Final = """
UPDATE appview_accounts SET handle = NULL, updated_at = now()
WHERE handle = ANY($1::text[]) AND NOT (did = ANY($2::text[]))
"""
_ACCOUNTS_INSERT: Final = """
INSERT INTO appview_accounts (did, handle, active, status, seq, rev)
SELECT * FROM unnest($1::text[], $2::text[], $3::bool[], $4::text[], $5::bigint[],
    $6::text[])
ON CONFLICT (did) DO NOTHING
RETURNING did
"""
_ACCOUNTS_UPDATE: Final = """
UPDATE appview_accounts AS a SET
    handle = CASE WHEN n.set_handle THEN n.handle ELSE a.handle END,
    active = CASE WHEN n.set_status THEN n.active ELSE a.active END,
    status = CASE WHEN n.set_status THEN n.status ELSE a.status END,
    seq = CASE WHEN n.set_handle OR n.set_status THEN n.seq ELSE a.seq END,
    rev = CASE WHEN a.rev IS NULL OR n.rev COLLATE "C" > a.rev COLLATE "C"
        THEN coalesce(n.rev, a.rev) ELSE a.rev END,
    updated_at = now()
FROM unnest($1::text[], $2::text[], $3::bool[], $4::text[], $5::bigint[],
    $6::text[], $7::bool[], $8::bool[])
    AS n(did, handle, active, status, seq, rev, set_handle, set_status)
WHERE a.did = n.did
"""
_RESYNC: Final = """
INSERT INTO appview_repos (did, state, updated_at)
SELECT unnest($1::text[]), 'pending', now()
ON CONFLICT (did) DO UPDATE SET state = 'pending', attempts = 0, updated_at = now()
WHERE appview_repos.state <> 'backfilling'
"""
_QUEUE_ALL: Final = (
    "INSERT INTO appview_repos (did, state, updated_at) SELECT d.did, 'pending', "
    "now() FROM ("
    + " UNION ".join(f"SELECT DISTINCT did FROM {t}" for t in RECORD_TABLES.values())
    + " UNION SELECT did FROM appview_repos) d "
    "ON CONFLICT (did) DO UPDATE SET state = 'pending', attempts = 0, "
    "updated_at = now() WHERE appview_repos.state <> 'backfilling'"
)
"""Queue every repository the index knows (records, or a backfill row) for a
backfill: after the ingest cursor was reset, or the log lost rows not folded."""

_REF_COLUMNS: Final[dict[str, tuple[str, ...]]] = {
    "appview_entries": ("schema_ref",),
    "appview_lenses": ("source_schema", "target_schema"),
    "appview_labels": ("dataset_uri",),
    "appview_lens_verifications": ("lens_uri",),
}
"""Per record table, the columns holding an AT-URI of another record: stored in
DID form when the record names its target by a known handle."""


def _recanonical_sql(table: str, column: str) -> str:
    # rows in handle form only, found by the partial expression index on the
    # handle (schema.py, "*_handle"), joined to the accounts whose handle is
    # verified (all of them, or those checked since $1)
    return (
        f"UPDATE {table} AS t SET {column} = 'at://' || a.did || "
        f"substr(t.{column}, length(a.verified_handle) + 6) "
        "FROM appview_accounts AS a "
        f"WHERE t.{column} NOT LIKE 'at://did:%' "
        f"AND split_part(t.{column}, '/', 3) = a.verified_handle "
        "AND ($1::timestamptz IS NULL OR a.handle_checked_at >= $1::timestamptz)"
    )


_RECANONICAL_SQL: Final = {
    (t, c): _recanonical_sql(t, c) for t, cols in _REF_COLUMNS.items() for c in cols
}


_TYPES: Final = frozenset(
    {
        "text",
        "integer",
        "bigint",
        "smallint",
        "boolean",
        "double precision",
        "jsonb",
        "timestamp with time zone",
        "text[]",
    }
)
"""Column types the upserts pass as ``unnest`` arrays (from the catalog, checked
against this list before they are written into SQL)."""

_COLUMN_TYPES: dict[str, dict[str, str]] = {}
"""Record table → column → type (``format_type``), read once per process."""


async def _column_types(conn: asyncpg.Connection, table: str) -> dict[str, str]:
    got = _COLUMN_TYPES.get(table)
    if got is None:
        rows = await conn.fetch(
            "SELECT attname, format_type(atttypid, atttypmod) AS type "
            "FROM pg_attribute WHERE attrelid = $1::regclass AND attnum > 0 "
            "AND NOT attisdropped",
            table,
        )
        got = {r["attname"]: r["type"] for r in rows}
        _COLUMN_TYPES[table] = got
    return got


def _upsert_sql(table: str, columns: Sequence[str], types: Mapping[str, str]) -> str:
    """One statement per table and batch: the rows as one array per column
    (``unnest``; a ``text[]`` column as the JSON text of each row's array, since
    ``unnest`` would flatten an array of arrays), inserted or updated when the
    stored rev is older; returns each row written with its previous CID/name."""
    params = []
    exprs = []
    for i, c in enumerate(columns, 1):
        kind = types[c]
        if kind not in _TYPES:
            raise TypeError(f"{table}.{c}: column type {kind!r} not supported")
        if kind.endswith("[]"):
            params.append(f"${i}::text[]")
            exprs.append(
                f"ARRAY(SELECT jsonb_array_elements_text(n.{c}::jsonb)) AS {c}"
            )
        else:
            params.append(f"${i}::{kind}[]")
            exprs.append(f"n.{c}")
    cols = ", ".join(columns)
    sets = ", ".join(f"{c} = EXCLUDED.{c}" for c in columns if c not in ("did", "rkey"))
    name = "t.name" if table == _SCHEMAS else "NULL::text"
    return (
        f"WITH n AS (SELECT * FROM unnest({', '.join(params)}) AS n({cols})), "
        f"o AS (SELECT t.did, t.rkey, t.cid, {name} AS name FROM {table} t "
        "JOIN n ON t.did = n.did AND t.rkey = n.rkey), "
        f"up AS (INSERT INTO {table} AS t ({cols}) SELECT {', '.join(exprs)} FROM n "
        f"ON CONFLICT (did, rkey) DO UPDATE SET {sets}, indexed_at = CASE "
        "WHEN t.cid = EXCLUDED.cid THEN t.indexed_at ELSE now() END "
        'WHERE t.rev IS NULL OR t.rev COLLATE "C" < EXCLUDED.rev COLLATE "C" '
        f"RETURNING t.did, t.rkey, t.cid, {name} AS name) "
        "SELECT up.did, up.rkey, up.cid, up.name, o.cid AS old_cid, "
        "o.name AS old_name FROM up LEFT JOIN o ON o.did = up.did AND o.rkey = up.rkey"
    )


def _remove_sql(table: str) -> str:
    name = "t.name" if table == _SCHEMAS else "NULL::text"
    return (
        f"DELETE FROM {table} AS t USING unnest($1::text[], $2::text[], $3::text[]) "
        "AS d(did, rkey, rev) WHERE t.did = d.did AND t.rkey = d.rkey "
        'AND (t.rev IS NULL OR t.rev COLLATE "C" < d.rev COLLATE "C") '
        f"RETURNING t.did, {name} AS name"
    )


def _purge_sql(table: str) -> str:
    name = "name" if table == _SCHEMAS else "NULL::text"
    return f"DELETE FROM {table} WHERE did = ANY($1::text[]) RETURNING did, {name}"


_UPSERT_SQL: dict[tuple[str, tuple[str, ...]], str] = {}
_REMOVE_SQL: Final = {t: _remove_sql(t) for t in RECORD_TABLES.values()}
_PURGE_SQL: Final = {t: _purge_sql(t) for t in RECORD_TABLES.values()}


# -- results ------------------------------------------------------------------------


@dataclasses.dataclass(slots=True)
class ApplyResult:
    """Counts of one application of log rows (a batch, a drain).

    ``consumed``: rows read (everything, skipped ones included); ``upserted``:
    record rows inserted or updated; ``removed``: record rows deleted by delete
    operations or rejected updates; ``rejected``: records refused by the
    normalizer; ``unverified``: rows refused for their signature verdict;
    ``dead_letters``: dead-letter rows written (replays of one already stored are
    not written again); ``stale``: rows at or below a rev already folded;
    ``skipped``: rows with nothing to do (no table, commits of a deleted account);
    ``buffered``: rows put in ``appview_pending``; ``purged``: record rows removed
    by account purges; ``accounts``: ``#identity``/``#account`` rows applied;
    ``resync``: DIDs queued for a backfill; ``history``: history-hook calls;
    ``history_errors``: hook calls that raised (logged)."""

    consumed: int = 0
    upserted: int = 0
    removed: int = 0
    rejected: int = 0
    unverified: int = 0
    dead_letters: int = 0
    stale: int = 0
    skipped: int = 0
    buffered: int = 0
    purged: int = 0
    accounts: int = 0
    resync: int = 0
    history: int = 0
    history_errors: int = 0

    def add(self, other: ApplyResult) -> None:
        """Add ``other``'s counts to these."""
        for f in dataclasses.fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))


@dataclasses.dataclass(slots=True)
class SnapshotResult:
    """What :func:`apply_snapshot` did for repository ``did`` at ``rev``.

    ``state``: the repository's state after it (``synced``; ``pending`` when a
    drained ``#sync`` asks for another backfill; ``gone`` when the account is
    deleted or taken down, so nothing was indexed; ``stale`` when the snapshot's
    rev is below the rev already folded for the DID, ``indexed_rev``: nothing of
    it was applied, what was buffered was applied as live rows and the
    repository is queued ``pending`` for another read); ``records``: snapshot records
    indexed; ``rejected``: refused by the normalizer (dead-lettered); ``skipped``:
    records of collections the AppView does not index; ``removed``: indexed records
    absent from the snapshot (or refused), deleted; ``kept_newer``: indexed records
    whose rev is above the snapshot's, left as they are; ``pending``: the drain's
    counts (:class:`ApplyResult`; ``stale`` = pending rows at or below ``rev``)."""

    did: str
    rev: str
    state: str
    records: int = 0
    rejected: int = 0
    skipped: int = 0
    removed: int = 0
    kept_newer: int = 0
    indexed_rev: str | None = None
    pending: ApplyResult = dataclasses.field(default_factory=ApplyResult)


# -- rows ---------------------------------------------------------------------------


@dataclasses.dataclass(slots=True)
class _LogRow:
    seq: int
    idx: int
    event_type: str
    action: str | None
    did: str
    collection: str | None
    rkey: str | None
    cid: str | None
    rev: str | None
    record: str | None
    valid: str | None
    verified: bool | None
    verify_rule: str | None

    @classmethod
    def of(cls, row: Mapping[str, Any]) -> _LogRow:
        record = row.get("record")
        if record is not None and not isinstance(record, str):
            record = orjson.dumps(record).decode()
        return cls(
            seq=int(row["seq"]),
            idx=int(row.get("idx") or 0),
            event_type=str(row["event_type"]),
            action=row.get("action"),
            did=str(row["repo"] if "repo" in row else row["did"]),
            collection=row.get("collection"),
            rkey=row.get("rkey"),
            cid=row.get("cid"),
            rev=row.get("rev"),
            record=record,
            valid=row.get("valid"),
            verified=row.get("verified"),
            verify_rule=row.get("verify_rule"),
        )


@dataclasses.dataclass(slots=True)
class _Removal:
    rev: str | None


@dataclasses.dataclass(slots=True)
class _Account:
    did: str
    exists: bool
    handle: str | None = None
    active: bool = True
    status: str | None = None
    rev: str | None = None
    seq: int | None = None
    set_handle: bool = False
    set_status: bool = False
    rev_dirty: bool = False

    @property
    def gone(self) -> bool:
        return self.status in PURGE_STATUSES

    @property
    def dirty(self) -> bool:
        return self.set_handle or self.set_status or self.rev_dirty or not self.exists


def _body(text: str | None) -> dict[str, Any]:
    if text is None:
        return {}
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        return {}
    return value if isinstance(value, dict) else {}


def _clip(text: str, limit: int = _MAX_TEXT) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _dead_copy(text: str | None, limit: int) -> str | None:
    """The dead letter's ``record`` (jsonb text): the record, or a truncation
    marker with its head when it is over ``limit`` characters."""
    if text is None:
        return None
    if len(text) > limit:
        return orjson.dumps(
            {"$truncated": True, "size": len(text), "head": text[:limit]}
        ).decode()
    return dead_letter_json(text)


# -- the fold of one set of rows ----------------------------------------------------


class _Fold:
    """Applies log rows in order inside the caller's transaction: rows are fed one
    by one (deciding in memory), then :meth:`write` issues the batch's statements."""

    def __init__(
        self,
        conn: asyncpg.Connection,
        *,
        require_verified: bool,
        max_dead_letter_bytes: int,
        history: HistoryHook | None,
        normalizer: Normalizer,
        floor: str | None = None,
        draining: str | None = None,
        collect: set[tuple[str, str]] | None = None,
    ) -> None:
        self.conn = conn
        self.collect = collect
        self.require_verified = require_verified
        self.max_dead = max_dead_letter_bytes
        self.hook = history
        self.normalize = normalizer
        self.floor = floor
        self.draining = draining
        self.result = ApplyResult()
        self.ops: dict[tuple[str, str, str], IndexedRow | _Removal] = {}
        self.dead: dict[tuple[str, str, str, str | None, str], tuple[Any, ...]] = {}
        self.pending: list[_LogRow] = []
        self.purges: dict[str, tuple[int, int]] = {}  # did -> (seq, idx) of its purge
        self.resync: set[str] = set()
        self.accounts: dict[str, _Account] = {}
        self.states: dict[str, str] = {}
        self.history: set[tuple[str, str]] = set()

    async def load(self, rows: Sequence[_LogRow]) -> None:
        locked = sorted({r.did for r in rows if r.event_type != "identity"})
        if locked:
            for r in await self.conn.fetch(_REPOS_LOCK, locked):
                self.states[r["did"]] = r["state"]
        if self.draining is not None:
            self.states[self.draining] = "synced"
        dids = sorted({r.did for r in rows})
        if dids:
            for r in await self.conn.fetch(_ACCOUNTS_LOAD, dids):
                self.accounts[r["did"]] = _Account(
                    r["did"], True, r["handle"], r["active"], r["status"], r["rev"]
                )

    def _account(self, did: str) -> _Account:
        acct = self.accounts.get(did)
        if acct is None:
            acct = self.accounts[did] = _Account(did, False)
        return acct

    # -- feeding ---------------------------------------------------------------------

    def feed(self, row: _LogRow) -> None:
        self.result.consumed += 1
        kind = row.event_type
        if len(row.did) > _MAX_DID or not is_did(row.did):
            # nothing keyed by a malformed DID: no account row, no pending row
            if kind == "commit" and row.collection in RECORD_TABLES and row.rkey:
                self.result.rejected += 1
                did = row.did[:_MAX_DID]
                self.dead_at(
                    row.seq,
                    row.idx,
                    did,
                    row.collection,
                    row.rkey[:_MAX_TEXT],
                    row.cid,
                    "AV_BAD_DID",
                    "",
                    f"repository {did[:200]!r} is not a DID",
                    row.record,
                )
            else:
                self.result.skipped += 1
            return
        if kind == "identity":
            self._identity(row)
        elif self.states.get(row.did) == "backfilling":
            self.pending.append(row)
            self.result.buffered += 1
        elif kind == "account":
            self._account_event(row)
        elif kind == "sync":
            self._sync(row)
        elif (
            kind == "commit"
            and row.collection in RECORD_TABLES
            and row.action in _ACTIONS
            and row.rkey
        ):
            self._op(row)
        else:
            self.result.skipped += 1

    def _unverified_rule(self, row: _LogRow) -> str | None:
        if row.verified is False:
            return row.verify_rule or "AV_UNVERIFIED"
        if self.require_verified and row.verified is not True:
            return row.verify_rule or "AV_UNCHECKED"
        return None

    def _op(self, row: _LogRow) -> None:
        assert row.collection is not None and row.rkey is not None
        acct = self._account(row.did)
        if acct.gone:
            self.result.skipped += 1
            return
        if self.floor is not None and row.rev is not None and row.rev <= self.floor:
            self.result.stale += 1
            return
        rule = self._unverified_rule(row)
        if rule is not None:
            self.result.unverified += 1
            why = "not verified" if row.verified is False else "not checked"
            self._dead(row, rule, "", f"commit signature {why} ({rule})", row.record)
            return
        if row.rev is not None and acct.rev is not None and row.rev < acct.rev:
            self.result.stale += 1
            return
        if row.rev is not None and (acct.rev is None or row.rev > acct.rev):
            acct.rev = row.rev
            acct.rev_dirty = True
        key = (RECORD_TABLES[row.collection], row.did, row.rkey)
        if row.action == "delete":
            self.ops[key] = _Removal(row.rev)
            return
        if row.record is None:
            out: IndexedRow | Rejection = Rejection(
                "AV_NO_RECORD", "", f"{row.action} without a record in the log"
            )
        else:
            try:
                out = self.normalize(
                    row.collection,
                    row.did,
                    row.rkey,
                    row.cid or "",
                    row.record,
                    rev=row.rev,
                    seq=row.seq,
                    log_valid=row.valid,
                )
            except Exception as exc:  # a bug must not stall the fold
                log.exception("normalize raised on seq %d idx %d", row.seq, row.idx)
                out = Rejection(
                    "AV_INTERNAL", "", f"normalize raised {type(exc).__name__}"
                )
        if isinstance(out, Rejection):
            self.result.rejected += 1
            self._dead(row, out.rule, out.pointer, out.message, row.record)
            self.ops[key] = _Removal(row.rev)
        else:
            self.ops[key] = out

    def _dead(
        self, row: _LogRow, rule: str, pointer: str, message: str, text: str | None
    ) -> None:
        self.dead_at(
            row.seq,
            row.idx,
            row.did,
            row.collection or "",
            row.rkey or "",
            row.cid,
            rule,
            pointer,
            message,
            text,
        )

    def dead_at(
        self,
        seq: int | None,
        idx: int | None,
        did: str,
        collection: str,
        rkey: str,
        cid: str | None,
        rule: str,
        pointer: str,
        message: str,
        text: str | None,
    ) -> None:
        """Queue a dead letter (one per ``(did, collection, rkey, cid, rule)``)."""
        self.dead[(did, collection, rkey, cid, rule)] = (
            seq,
            idx,
            did,
            collection,
            rkey,
            cid,
            _clip(rule, 64),
            _clip(pointer, 512),
            _clip(message),
            _dead_copy(text, self.max_dead),
        )

    def _identity(self, row: _LogRow) -> None:
        self.result.accounts += 1
        body = _body(row.record)
        if "handle" not in body:
            return
        raw = body.get("handle")
        handle: str | None = None
        if isinstance(raw, str) and len(raw) <= _MAX_HANDLE:
            low = raw.lower()
            if low != "handle.invalid" and is_handle(low):
                handle = low
        acct = self._account(row.did)
        if handle is not None:
            for other in self.accounts.values():
                if other.did != row.did and other.handle == handle:
                    other.handle = None
                    other.set_handle = True
                    other.seq = row.seq
        acct.handle = handle
        acct.set_handle = True
        acct.seq = row.seq

    def _account_event(self, row: _LogRow) -> None:
        self.result.accounts += 1
        body = _body(row.record)
        raw_status = body.get("status")
        status = raw_status[:_MAX_STATUS] if isinstance(raw_status, str) else None
        active = body.get("active")
        if not isinstance(active, bool):
            active = status is None
        acct = self._account(row.did)
        was_gone = acct.gone
        acct.set_status = True
        acct.seq = row.seq
        if status in PURGE_STATUSES:
            acct.active = False
            acct.status = status
            self._purge(row.did, (row.seq, row.idx))
        elif active:
            acct.active = True
            acct.status = None
            if was_gone:
                self.resync.add(row.did)
        else:
            acct.active = False
            acct.status = status

    def _purge(self, did: str, at: tuple[int, int]) -> None:
        self.ops = {k: v for k, v in self.ops.items() if k[1] != did}
        self.dead = {k: v for k, v in self.dead.items() if k[0] != did}
        self.resync.discard(did)
        self.purges[did] = at

    def _sync(self, row: _LogRow) -> None:
        acct = self._account(row.did)
        if acct.gone or row.rev is None:
            self.result.skipped += 1
            return
        if self._unverified_rule(row) is not None:
            self.result.unverified += 1
            return
        if (self.floor is not None and row.rev <= self.floor) or (
            acct.rev is not None and row.rev <= acct.rev
        ):
            self.result.stale += 1
            return
        self.resync.add(row.did)

    # -- writing ---------------------------------------------------------------------

    async def write(self) -> None:
        conn = self.conn
        if self.pending:
            await self._write_pending()
        if self.purges:
            await self._write_purges()
        by_table: dict[str, tuple[list[IndexedRow], list[tuple[str, str, str | None]]]]
        by_table = {}
        for (table, did, rkey), op in self.ops.items():
            ups, rms = by_table.setdefault(table, ([], []))
            if isinstance(op, _Removal):
                rms.append((did, rkey, op.rev))
            else:
                ups.append(op)
        for table, (ups, rms) in by_table.items():
            if ups:
                await self._write_upserts(table, ups)
            if rms:
                rows = await conn.fetch(
                    _REMOVE_SQL[table],
                    [r[0] for r in rms],
                    [r[1] for r in rms],
                    [r[2] for r in rms],
                )
                self.result.removed += len(rows)
                for r in rows:
                    if r["name"] is not None:
                        self.history.add((r["did"], r["name"]))
        if self.dead:
            await self._write_dead()
        if any(a.dirty for a in self.accounts.values()):
            await self._write_accounts()
        resync = sorted(self.resync - {self.draining} if self.draining else self.resync)
        if resync:
            await conn.execute(_RESYNC, resync)
            self.result.resync += len(resync)
        await self._run_history()

    async def _write_pending(self) -> None:
        cols: list[list[Any]] = [[] for _ in range(13)]
        for p in self.pending:
            values = (
                p.did,
                p.seq,
                p.idx,
                p.event_type,
                p.action,
                p.collection,
                p.rkey,
                p.cid,
                p.rev,
                p.record,
                p.verified,
                p.valid,
                p.verify_rule,
            )
            for col, v in zip(cols, values, strict=True):
                col.append(v)
        await self.conn.execute(_PENDING_INSERT, *cols)

    async def _write_purges(self) -> None:
        conn = self.conn
        dids = sorted(self.purges)
        for table in RECORD_TABLES.values():
            rows = await conn.fetch(_PURGE_SQL[table], dids)
            self.result.purged += len(rows)
            if table == _SCHEMAS:
                for r in rows:
                    self.history.add((r["did"], r["name"]))
        # buffered rows up to the purging event only: a drain goes on after it
        await conn.execute(
            "DELETE FROM appview_pending p USING unnest($1::text[], $2::bigint[], "
            "$3::int[]) AS g(did, seq, idx) WHERE p.did = g.did "
            "AND (p.seq, p.idx) <= (g.seq, g.idx)",
            dids,
            [self.purges[d][0] for d in dids],
            [self.purges[d][1] for d in dids],
        )
        await conn.execute(
            "DELETE FROM appview_schema_compat WHERE did = ANY($1::text[])", dids
        )
        await conn.execute(
            "DELETE FROM appview_dead_letters WHERE did = ANY($1::text[])", dids
        )

    async def _write_upserts(self, table: str, rows: Sequence[IndexedRow]) -> None:
        conn = self.conn
        rows = await _canonical_refs(conn, table, rows)
        columns = type(rows[0]).columns()
        sql = _UPSERT_SQL.get((table, columns))
        types = await _column_types(conn, table)
        if sql is None:
            sql = _UPSERT_SQL[(table, columns)] = _upsert_sql(table, columns, types)
        arrays: list[list[Any]] = [[] for _ in columns]
        for r in rows:
            for col, v in zip(arrays, r.values(), strict=True):
                col.append(v)
        for i, c in enumerate(columns):
            if types[c].endswith("[]"):
                arrays[i] = [
                    None if v is None else orjson.dumps(list(v)).decode()
                    for v in arrays[i]
                ]
        written = await conn.fetch(sql, *arrays)
        self.result.upserted += len(written)
        if table == _SCHEMAS:
            for r in written:
                if r["old_cid"] != r["cid"] or r["old_name"] != r["name"]:
                    self.history.add((r["did"], r["name"]))
                    if r["old_name"] is not None and r["old_name"] != r["name"]:
                        self.history.add((r["did"], r["old_name"]))

    async def _write_dead(self) -> None:
        cols: list[list[Any]] = [[] for _ in range(10)]
        for values in self.dead.values():
            for col, v in zip(cols, values, strict=True):
                col.append(v)
        done = await self.conn.execute(_DEAD_INSERT, *cols)
        self.result.dead_letters += int(done.rsplit(" ", 1)[-1])

    async def _write_accounts(self) -> None:
        conn = self.conn
        dirty = [a for a in self.accounts.values() if a.dirty]
        claimed = sorted({a.handle for a in dirty if a.set_handle and a.handle})
        if claimed:
            await conn.execute(_HANDLES_CLEAR, claimed, sorted(self.accounts))
        new = [a for a in dirty if not a.exists]
        inserted: set[str] = set()
        if new:
            rows = await conn.fetch(
                _ACCOUNTS_INSERT,
                [a.did for a in new],
                [a.handle for a in new],
                [a.active for a in new],
                [a.status for a in new],
                [a.seq for a in new],
                [a.rev for a in new],
            )
            inserted = {r["did"] for r in rows}
        rest = [a for a in dirty if a.did not in inserted]
        if rest:
            await conn.execute(
                _ACCOUNTS_UPDATE,
                [a.did for a in rest],
                [a.handle for a in rest],
                [a.active for a in rest],
                [a.status for a in rest],
                [a.seq for a in rest],
                [a.rev for a in rest],
                [a.set_handle for a in rest],
                [a.set_status for a in rest],
            )

    async def _run_history(self) -> None:
        if self.collect is not None:
            self.collect |= self.history
            return
        calls, errors = await _run_hook(self.conn, self.hook, self.history)
        self.result.history += calls
        self.result.history_errors += errors


def _authority(uri: str) -> str | None:
    """The authority of an ``at://`` URI (DID or handle), else ``None``."""
    if not uri.startswith("at://"):
        return None
    end = uri.find("/", 5)
    return uri[5:] if end < 0 else uri[5:end]


async def _canonical_refs(
    conn: asyncpg.Connection, table: str, rows: Sequence[IndexedRow]
) -> Sequence[IndexedRow]:
    """``rows`` with their reference columns (:data:`_REF_COLUMNS`) in DID form
    where they name their target by a handle verified for a DID
    (``appview_accounts.verified_handle``, :mod:`.handles`; a claim in an
    ``#identity`` is not enough: any PDS can claim any handle), one query per
    table and batch; any other handle is kept, lower-cased, for
    :func:`canonicalize_refs`. The ``record`` column is left as published."""
    cols = _REF_COLUMNS.get(table)
    if not cols:
        return rows
    handles: set[str] = set()
    for r in rows:
        for c in cols:
            auth = _authority(getattr(r, c))
            if auth is not None and not auth.startswith("did:"):
                handles.add(auth.lower())
    if not handles:
        return rows
    known = {
        r["handle"]: r["did"]
        for r in await conn.fetch(
            "SELECT DISTINCT ON (verified_handle) verified_handle AS handle, did "
            "FROM appview_accounts WHERE verified_handle = ANY($1::text[]) "
            "ORDER BY verified_handle, handle_checked_at DESC NULLS LAST, did",
            sorted(handles),
        )
    }
    out: list[IndexedRow] = []
    for r in rows:
        changes: dict[str, str] = {}
        for c in cols:
            value: str = getattr(r, c)
            auth = _authority(value)
            if auth is not None and not auth.startswith("did:"):
                low = auth.lower()
                changes[c] = "at://" + known.get(low, low) + value[5 + len(auth) :]
        out.append(dataclasses.replace(r, **changes) if changes else r)  # type: ignore[arg-type]
    return out


async def canonicalize_refs(
    conn: asyncpg.Connection, *, since: _dt.datetime | None = None
) -> int:
    """Rewrite in DID form the reference columns (``schema_ref``,
    ``source_schema``, ``target_schema``, ``dataset_uri``, ``lens_uri``) still
    naming their target by a handle that is now verified for a DID
    (``appview_accounts.verified_handle``); with ``since``, only handles checked
    at or after it (``handle_checked_at``). Reads only the rows in handle form
    (partial expression indexes on the handle) and the accounts; a reference
    already in DID form is never rewritten (bound to the DID the handle had when
    it was resolved). In its own transaction or the caller's. Returns the rows
    rewritten. :meth:`Indexer.run` calls it every :data:`LEASE_CHECK_SECONDS`."""
    total = 0
    async with conn.transaction():
        for sql in _RECANONICAL_SQL.values():
            done = await conn.execute(sql, since)
            total += int(done.rsplit(" ", 1)[-1])
    return total


async def _reset(conn: asyncpg.Connection, cseq: int, why: str, horizon: Any) -> None:
    """The ingest cursor was reset (a new seq space): rewind the AppView cursor
    to the start, ignore the log rows stored before ``horizon`` (the old space;
    ``None``: none known, every row is read again and the rev high-water mark
    skips stale commits), queue every known repository for a backfill (records
    stay indexed meanwhile). In the fold's transaction."""
    log.error(
        "INGEST CURSOR RESET: %s; the AppView cursor (seq %d) is rewound to 0 for "
        "the new seq space%s, and every known repository is queued for a backfill",
        why,
        cseq,
        f" (log rows stored before {horizon.isoformat()} are skipped)"
        if horizon is not None
        else "",
    )
    await conn.execute(
        "UPDATE appview_cursor SET seq = 0, idx = -2, horizon = $1, "
        "resets = resets + 1, reset_at = now(), reset_reason = $2 WHERE id",
        horizon,
        _clip(why),
    )
    await conn.execute(_QUEUE_ALL)


async def _gap(conn: asyncpg.Connection, cseq: int, oldest: int) -> None:
    """The log's retention dropped rows the AppView had not folded (the oldest
    row retained is past the cursor): recorded in ``appview_cursor`` (``gaps``,
    ``gap_at``, ``gap_seqs``) and every known repository queued for a backfill."""
    log.error(
        "INGEST LOG GAP: the oldest log row retained is seq %d, the AppView cursor "
        "is at seq %d: rows between were dropped (retention) before they were "
        "folded; every known repository is queued for a backfill",
        oldest,
        cseq,
    )
    await conn.execute(
        "UPDATE appview_cursor SET gaps = gaps + 1, gap_at = now(), "
        "gap_seqs = ARRAY[$1::bigint, $2::bigint] WHERE id",
        cseq,
        oldest,
    )
    await conn.execute(_QUEUE_ALL)


async def _run_hook(
    conn: asyncpg.Connection,
    hook: HistoryHook | None,
    names: Iterable[tuple[str, str]],
) -> tuple[int, int]:
    """Call ``hook`` once per ``(did, name)``, each in a savepoint; a hook that
    raises (other than a lost connection) is logged and counted. Returns (calls,
    errors)."""
    if hook is None:
        return 0, 0
    calls = errors = 0
    for did, name in sorted(set(names)):
        calls += 1
        try:
            async with conn.transaction():
                await hook(conn, did, name)
        except _LOST:
            raise
        except Exception:  # history must not stall the index
            errors += 1
            log.exception("history of %s %r failed", did, name[:200])
    return calls, errors


async def _fold_rows(
    conn: asyncpg.Connection,
    rows: Sequence[_LogRow],
    *,
    require_verified: bool,
    max_dead_letter_bytes: int,
    history: HistoryHook | None,
    normalizer: Normalizer,
    floor: str | None = None,
    draining: str | None = None,
    resync: set[str] | None = None,
    collect: set[tuple[str, str]] | None = None,
) -> ApplyResult:
    fold = _Fold(
        conn,
        require_verified=require_verified,
        max_dead_letter_bytes=max_dead_letter_bytes,
        history=history,
        normalizer=normalizer,
        floor=floor,
        draining=draining,
        collect=collect,
    )
    await fold.load(rows)
    for row in rows:
        fold.feed(row)
    await fold.write()
    if resync is not None and draining is not None and draining in fold.resync:
        resync.add(draining)
    return fold.result


async def _fold_isolated(
    conn: asyncpg.Connection,
    rows: Sequence[_LogRow],
    *,
    require_verified: bool,
    max_dead_letter_bytes: int,
    history: HistoryHook | None,
    normalizer: Normalizer,
) -> ApplyResult:
    """The rows one by one, each in a savepoint; a row PostgreSQL refuses to store
    is dead-lettered as ``AV_WRITE_FAILED``."""
    total = ApplyResult()
    for row in rows:
        try:
            async with conn.transaction():
                got = await _fold_rows(
                    conn,
                    [row],
                    require_verified=require_verified,
                    max_dead_letter_bytes=max_dead_letter_bytes,
                    history=history,
                    normalizer=normalizer,
                )
        except _POISON as exc:
            log.warning(
                "seq %d idx %d: row refused by PostgreSQL (%s), dead-lettered",
                row.seq,
                row.idx,
                type(exc).__name__,
                exc_info=True,
            )
            got = ApplyResult(consumed=1, rejected=1)
            if row.collection and row.rkey:
                fold = _Fold(
                    conn,
                    require_verified=require_verified,
                    max_dead_letter_bytes=max_dead_letter_bytes,
                    history=None,
                    normalizer=normalizer,
                )
                fold._dead(
                    row,
                    "AV_WRITE_FAILED",
                    "",
                    f"PostgreSQL refused the row: {type(exc).__name__} "
                    f"(SQLSTATE {getattr(exc, 'sqlstate', '?')})",
                    row.record,
                )
                await fold._write_dead()
                got.dead_letters = fold.result.dead_letters
        total.add(got)
    return total


# -- public functions -----------------------------------------------------------------


async def apply_rows(
    conn: asyncpg.Connection,
    rows: Iterable[Mapping[str, Any]],
    *,
    require_verified: bool = False,
    max_dead_letter_bytes: int = MAX_DEAD_LETTER_BYTES,
    history: HistoryHook | None = recompute_history,
    normalizer: Normalizer = normalize,
) -> ApplyResult:
    """Apply log rows (mappings with :data:`atdata_ingest.schema.EVENT_COLUMNS`
    names; ``record`` as JSON text or a JSON-data-model mapping) in the given order,
    in the caller's transaction (``conn`` must be in one: ``ValueError``), with the
    semantics of the module docstring; the cursor is not touched. For tests, replays
    and tools; the fold loop uses it batch by batch. Raises ``asyncpg.PostgresError``
    when the database refuses a write (the transaction is then the caller's to roll
    back)."""
    if not conn.is_in_transaction():
        raise ValueError("apply_rows runs in the caller's transaction: open one")
    return await _fold_rows(
        conn,
        [_LogRow.of(r) for r in rows],
        require_verified=require_verified,
        max_dead_letter_bytes=max_dead_letter_bytes,
        history=history,
        normalizer=normalizer,
    )


async def begin_backfill(conn: asyncpg.Connection, did: str, source: str) -> None:
    """Mark repository ``did`` (a DID) ``backfilling`` (``appview_repos``:
    ``source`` is where it is read from, ``attempts`` + 1 (reads since it was
    last ``synced`` or queued by the fold), ``error`` cleared), in
    its own transaction or the caller's. From its commit on, the fold buffers the
    repository's live rows in ``appview_pending`` until :func:`apply_snapshot` or
    :func:`fail_backfill`. Waits for the fold's batch in flight (cursor row ``FOR
    SHARE``). Call it, and let it commit, **before** fetching the repository.
    ``ValueError`` for a malformed DID."""
    if not is_did(did):
        raise ValueError(f"not a DID: {did[:200]!r}")
    async with conn.transaction():
        await conn.execute("SELECT 1 FROM appview_cursor FOR SHARE")
        await conn.execute(
            "INSERT INTO appview_repos (did, state, source, attempts, updated_at) "
            "VALUES ($1, 'backfilling', $2, 1, now()) ON CONFLICT (did) DO UPDATE "
            "SET state = 'backfilling', source = EXCLUDED.source, error = NULL, "
            "attempts = CASE WHEN appview_repos.state = 'synced' THEN 1 "
            "ELSE appview_repos.attempts + 1 END, updated_at = now()",
            did,
            _clip(source),
        )


async def _lock_repo(conn: asyncpg.Connection, did: str, source: str | None) -> str:
    state = await conn.fetchval(
        "SELECT state FROM appview_repos WHERE did = $1 FOR UPDATE", did
    )
    if state is None:
        await conn.execute("SELECT 1 FROM appview_cursor FOR SHARE")
        await conn.execute(
            "INSERT INTO appview_repos (did, state, source) VALUES ($1, 'pending', $2) "
            "ON CONFLICT (did) DO NOTHING",
            did,
            None if source is None else _clip(source),
        )
        state = await conn.fetchval(
            "SELECT state FROM appview_repos WHERE did = $1 FOR UPDATE", did
        )
    return str(state)


async def _drain(
    conn: asyncpg.Connection,
    did: str,
    *,
    floor: str | None,
    chunk: int,
    require_verified: bool,
    max_dead_letter_bytes: int,
    history: HistoryHook | None,
    normalizer: Normalizer,
    resync: set[str],
    collect: set[tuple[str, str]],
) -> ApplyResult:
    total = ApplyResult()
    seq, idx = -1, -(2**31)
    while True:
        rows = await conn.fetch(_PENDING_READ, did, seq, idx, chunk)
        if not rows:
            break
        got = await _fold_rows(
            conn,
            [_LogRow.of(r) for r in rows],
            require_verified=require_verified,
            max_dead_letter_bytes=max_dead_letter_bytes,
            history=history,
            normalizer=normalizer,
            floor=floor,
            draining=did,
            resync=resync,
            collect=collect,
        )
        total.add(got)
        seq, idx = rows[-1]["seq"], rows[-1]["idx"]
        if len(rows) < chunk:
            break
    await conn.execute("DELETE FROM appview_pending WHERE did = $1", did)
    return total


async def _policy(conn: asyncpg.Connection, require_verified: bool | None) -> bool:
    """``require_verified``, or when ``None`` the live fold's policy as the
    :class:`Indexer` records it in ``appview_cursor.require_verified`` (false
    when no fold has run: then nothing was buffered either)."""
    if require_verified is not None:
        return require_verified
    got = await conn.fetchval("SELECT require_verified FROM appview_cursor")
    return bool(got)


async def _refuse_stale(
    conn: asyncpg.Connection,
    did: str,
    rev: str,
    indexed_rev: str,
    *,
    chunk: int,
    require_verified: bool,
    max_dead_letter_bytes: int,
    history: HistoryHook | None,
    normalizer: Normalizer,
) -> SnapshotResult:
    """A snapshot older than what the index already folded (its rev below
    ``appview_accounts.rev``): not applied (it would bring back what was deleted
    since). What was buffered is applied as live rows; the repository is queued
    ``pending`` for another read, with the reason in ``error``."""
    log.warning(
        "backfill %s: snapshot rev %s is older than the indexed rev %s; not applied",
        did,
        rev[:64],
        indexed_rev[:64],
    )
    names: set[tuple[str, str]] = set()
    drained = await _drain(
        conn,
        did,
        floor=None,
        chunk=chunk,
        require_verified=require_verified,
        max_dead_letter_bytes=max_dead_letter_bytes,
        history=history,
        normalizer=normalizer,
        resync=set(),
        collect=names,
    )
    await conn.execute(
        "UPDATE appview_repos SET state = 'pending', error = $2, updated_at = now() "
        "WHERE did = $1",
        did,
        _clip(
            f"AV_STALE_SNAPSHOT: snapshot rev {rev[:64]} is older than the indexed "
            f"rev {indexed_rev[:64]}"
        ),
    )
    calls, errors = await _run_hook(conn, history, names)
    drained.history += calls
    drained.history_errors += errors
    return SnapshotResult(did, rev, "stale", indexed_rev=indexed_rev, pending=drained)


async def expire_backfills(
    conn: asyncpg.Connection,
    *,
    lease_seconds: float = BACKFILL_LEASE_SECONDS,
    limit: int = 100,
    require_verified: bool | None = None,
    max_dead_letter_bytes: int = MAX_DEAD_LETTER_BYTES,
    history: HistoryHook | None = recompute_history,
    normalizer: Normalizer = normalize,
) -> list[str]:
    """End the backfills whose lease expired: repositories ``backfilling`` since
    more than ``lease_seconds`` (``appview_repos.updated_at``, set by
    :func:`begin_backfill`; a backfiller that crashed, was killed or hung never
    ends its own) are failed as :func:`fail_backfill` does (their buffered rows
    applied as live ones, state ``failed``, error ``AV_LEASE_EXPIRED``), at most
    ``limit`` of them, each in its own transaction. Returns their DIDs. A backfill
    still running past its lease finds its repository ``failed``; its snapshot is
    still applied if it is not older than what was folded since
    (:func:`apply_snapshot`)."""
    if lease_seconds <= 0 or limit < 1:
        raise ValueError("lease_seconds > 0 and limit >= 1")
    rows = await conn.fetch(
        "SELECT did FROM appview_repos WHERE state = 'backfilling' "
        "AND updated_at < now() - make_interval(secs => $1) "
        "ORDER BY updated_at LIMIT $2",
        float(lease_seconds),
        limit,
    )
    done: list[str] = []
    for r in rows:
        got = await _fail(
            conn,
            r["did"],
            f"AV_LEASE_EXPIRED: backfilling for more than {lease_seconds:g} s "
            "(the backfill was interrupted)",
            lease_seconds=lease_seconds,
            require_verified=require_verified,
            max_dead_letter_bytes=max_dead_letter_bytes,
            history=history,
            normalizer=normalizer,
            chunk=1000,
        )
        if got is not None:
            log.warning("backfill of %s: lease expired, marked failed", r["did"])
            done.append(r["did"])
    return done


async def apply_snapshot(
    conn: asyncpg.Connection,
    did: str,
    rev: str,
    records: Sequence[tuple[str, str, str, Mapping[str, Any] | str | bytes]],
    source: str,
    *,
    require_verified: bool | None = None,
    max_dead_letter_bytes: int = MAX_DEAD_LETTER_BYTES,
    history: HistoryHook | None = recompute_history,
    normalizer: Normalizer = normalize,
    chunk: int = 1000,
) -> SnapshotResult:
    """Replace repository ``did``'s indexed records with a snapshot read at commit
    ``rev`` (a TID), then apply what was buffered while it was read.

    ``records``: ``(collection, rkey, cid, record)`` (record as a JSON-data-model
    mapping or JSON text; collections the AppView does not index are skipped),
    each normalized with ``rev`` and no seq; refusals are dead-lettered (seq
    NULL). Indexed records of the DID absent from the snapshot (or refused) are
    deleted, unless their rev is above ``rev`` (newer than the snapshot: kept, as
    are newer versions of snapshot records). Then the repository's
    ``appview_pending`` rows are applied in ``(seq, idx)`` order, those with a rev
    at or below ``rev`` skipped (counted ``stale``), and ``appview_repos`` becomes
    ``synced`` (``rev``, ``records``, ``source``; ``error`` NULL), or ``pending``
    when a drained ``#sync`` moved the repository past the snapshot;
    ``appview_accounts.rev`` is raised to at least ``rev``. For an account deleted
    or taken down nothing is indexed (result state ``gone``; the row says
    ``synced``, 0 records). The history hook runs once per schema name touched.

    All in one transaction (its own, or a savepoint of the caller's) under ``FOR
    UPDATE`` on the repository's ``appview_repos`` row (created when missing,
    waiting for the fold's batch in flight as :func:`begin_backfill` does).
    ``ValueError`` for a malformed DID or rev; database errors propagate with
    nothing written."""
    if not is_did(did):
        raise ValueError(f"not a DID: {did[:200]!r}")
    if not rev or len(rev) > 64:
        raise ValueError("rev must be the snapshot commit's TID")
    async with conn.transaction():
        await _lock_repo(conn, did, source)
        require_verified = await _policy(conn, require_verified)
        acct = await conn.fetchrow(
            "SELECT status, rev FROM appview_accounts WHERE did = $1", did
        )
        gone = acct is not None and acct["status"] in PURGE_STATUSES
        indexed_rev = None if acct is None else acct["rev"]
        if not gone and indexed_rev is not None and rev < indexed_rev:
            return await _refuse_stale(
                conn,
                did,
                rev,
                indexed_rev,
                chunk=chunk,
                require_verified=require_verified,
                max_dead_letter_bytes=max_dead_letter_bytes,
                history=history,
                normalizer=normalizer,
            )
        result = SnapshotResult(did, rev, "gone" if gone else "synced")
        fold = _Fold(
            conn,
            require_verified=require_verified,
            max_dead_letter_bytes=max_dead_letter_bytes,
            history=None,
            normalizer=normalizer,
        )
        keep: dict[str, list[str]] = {t: [] for t in RECORD_TABLES.values()}
        rows: dict[tuple[str, str], IndexedRow] = {}
        for collection, rkey, cid, record in () if gone else records:
            table = RECORD_TABLES.get(collection)
            if table is None:
                result.skipped += 1
                continue
            try:
                out = normalizer(collection, did, rkey, cid, record, rev=rev, seq=None)
            except Exception as exc:  # a bug must not stop a backfill
                log.exception("normalize raised on %s/%s/%s", did, collection, rkey)
                out = Rejection(
                    "AV_INTERNAL", "", f"normalize raised {type(exc).__name__}"
                )
            if isinstance(out, Rejection):
                result.rejected += 1
                fold.dead_at(
                    None,
                    None,
                    did,
                    collection,
                    rkey,
                    cid,
                    out.rule,
                    out.pointer,
                    out.message,
                    record if isinstance(record, str) else dead_letter_json(record),
                )
                continue
            rows[(table, rkey)] = out
        for table, rkey in rows:
            keep[table].append(rkey)
        names: set[tuple[str, str]] = set()
        for table, kept in keep.items():
            name = "name" if table == _SCHEMAS else "NULL::text"
            removed = await conn.fetch(
                f"DELETE FROM {table} WHERE did = $1 AND NOT (rkey = ANY($2::text[])) "
                'AND (rev IS NULL OR rev COLLATE "C" <= $3 COLLATE "C") '
                f"RETURNING {name} AS name",
                did,
                kept,
                rev,
            )
            result.removed += len(removed)
            names.update((did, r["name"]) for r in removed if r["name"] is not None)
            result.kept_newer += await conn.fetchval(
                f"SELECT count(*) FROM {table} WHERE did = $1 "
                'AND rev COLLATE "C" > $2 COLLATE "C"',
                did,
                rev,
            )
        by_table: dict[str, list[IndexedRow]] = {}
        for (table, _rkey), row in rows.items():
            by_table.setdefault(table, []).append(row)
        for table, ups in by_table.items():
            await fold._write_upserts(table, ups)
        result.records = len(rows)
        names |= fold.history
        if fold.dead:
            await fold._write_dead()
        await conn.execute(
            "INSERT INTO appview_accounts (did, rev) VALUES ($1, $2) "
            "ON CONFLICT (did) DO UPDATE SET rev = CASE WHEN appview_accounts.rev "
            'IS NULL OR appview_accounts.rev COLLATE "C" < EXCLUDED.rev COLLATE "C" '
            "THEN EXCLUDED.rev ELSE appview_accounts.rev END, updated_at = now()",
            did,
            rev,
        )
        resync: set[str] = set()
        result.pending = await _drain(
            conn,
            did,
            floor=rev,
            chunk=chunk,
            require_verified=require_verified,
            max_dead_letter_bytes=max_dead_letter_bytes,
            history=history,
            normalizer=normalizer,
            resync=resync,
            collect=names,
        )
        result.pending.dead_letters += fold.result.dead_letters
        state = "pending" if did in resync else "synced"
        if not gone:
            result.state = state
        await conn.execute(
            "UPDATE appview_repos SET state = $2, rev = $3, records = $4, "
            "source = $5, error = NULL, updated_at = now() WHERE did = $1",
            did,
            state,
            rev,
            result.records,
            _clip(source),
        )
        calls, errors = await _run_hook(conn, history, names)
        result.pending.history += calls
        result.pending.history_errors += errors
    return result


async def fail_backfill(
    conn: asyncpg.Connection,
    did: str,
    error: str,
    *,
    require_verified: bool | None = None,
    max_dead_letter_bytes: int = MAX_DEAD_LETTER_BYTES,
    history: HistoryHook | None = recompute_history,
    normalizer: Normalizer = normalize,
    chunk: int = 1000,
) -> ApplyResult:
    """End a backfill of ``did`` that could not produce a snapshot: its buffered
    rows are applied as live ones (in ``(seq, idx)`` order, no rev floor), and
    ``appview_repos`` becomes ``failed`` with ``error`` (clipped to 1000
    characters), so nothing buffered is lost and later rows are applied directly.
    One transaction under the repository row's lock; returns the drain's counts.
    ``ValueError`` for a malformed DID."""
    if not is_did(did):
        raise ValueError(f"not a DID: {did[:200]!r}")
    got = await _fail(
        conn,
        did,
        error,
        lease_seconds=None,
        require_verified=require_verified,
        max_dead_letter_bytes=max_dead_letter_bytes,
        history=history,
        normalizer=normalizer,
        chunk=chunk,
    )
    assert got is not None
    return got


async def _fail(
    conn: asyncpg.Connection,
    did: str,
    error: str,
    *,
    lease_seconds: float | None,
    require_verified: bool | None,
    max_dead_letter_bytes: int,
    history: HistoryHook | None,
    normalizer: Normalizer,
    chunk: int,
) -> ApplyResult | None:
    """:func:`fail_backfill`; with ``lease_seconds``, only when the repository is
    still ``backfilling`` since more than that (else ``None``, nothing done)."""
    async with conn.transaction():
        state = await _lock_repo(conn, did, None)
        if lease_seconds is not None:
            expired = await conn.fetchval(
                "SELECT updated_at < now() - make_interval(secs => $2) "
                "FROM appview_repos WHERE did = $1",
                did,
                float(lease_seconds),
            )
            if state != "backfilling" or not expired:
                return None
        require_verified = await _policy(conn, require_verified)
        names: set[tuple[str, str]] = set()
        got = await _drain(
            conn,
            did,
            floor=None,
            chunk=chunk,
            require_verified=require_verified,
            max_dead_letter_bytes=max_dead_letter_bytes,
            history=history,
            normalizer=normalizer,
            resync=set(),
            collect=names,
        )
        await conn.execute(
            "UPDATE appview_repos SET state = 'failed', error = $2, updated_at = now() "
            "WHERE did = $1",
            did,
            _clip(error),
        )
        calls, errors = await _run_hook(conn, history, names)
        got.history += calls
        got.history_errors += errors
    return got


async def status(conn: asyncpg.Connection) -> dict[str, Any]:
    """The indexer's state for the CLI and ``describeService``:

    ``{"cursor": {"seq", "idx", "updated_at"}, "ingest_last_seq", "lag" (seqs the
    ingestion log holds beyond the cursor, >= 0), "folded" (rows consumed, ever),
    "dead_letters" (dead letters written, ever), "dead_letters_by_rule": {rule:
    rows now stored}, "records": {collection NSID: rows}, "accounts": {"inactive":
    {status: n}}, "repos": {state: n}, "pending": rows buffered,
    "ingest_source" (the seq space the cursor counts in), "require_verified" (the
    live fold's recorded policy), "resets": {"count", "at", "reason", "horizon"}
    (ingest cursor resets seen), "gaps": {"count", "at", "seqs"} (retention
    dropped rows not folded: ``[cursor seq, oldest retained seq]``),
    "oldest_log_seq", "behind_retention" (the cursor is now behind the oldest
    retained log row: rows were lost before the next batch notices)}``.
    Timestamps are ISO 8601 strings. Counts are exact (``count(*)``) except accounts, whose total is
    not given (``#identity`` rows of the whole network are kept)."""
    cur = await conn.fetchrow(
        "SELECT seq, idx, updated_at, folded, dead_letters, ingest_source, "
        "require_verified, horizon, resets, reset_at, reset_reason, gaps, gap_at, "
        "gap_seqs FROM appview_cursor"
    )
    last = await conn.fetchval("SELECT last_seq FROM ingest_cursor")
    oldest = await conn.fetchval(
        "SELECT seq FROM ingest_events ORDER BY seq, idx LIMIT 1"
    )
    counts = await conn.fetchrow(
        "SELECT "
        + ", ".join(
            f"(SELECT count(*) FROM {t}) AS c{i}"
            for i, t in enumerate(RECORD_TABLES.values())
        )
        + ", (SELECT count(*) FROM appview_pending) AS pending"
    )
    by_rule = await conn.fetch(
        "SELECT rule, count(*) AS n FROM appview_dead_letters GROUP BY rule "
        "ORDER BY n DESC, rule"
    )
    inactive = await conn.fetch(
        "SELECT coalesce(status, '') AS status, count(*) AS n FROM appview_accounts "
        "WHERE NOT active GROUP BY 1 ORDER BY 1"
    )
    repos = await conn.fetch(
        "SELECT state, count(*) AS n FROM appview_repos GROUP BY state ORDER BY state"
    )
    seq = int(cur["seq"]) if cur else 0

    def when(value: Any) -> str | None:
        return None if value is None else str(value.isoformat())

    behind = oldest is not None and seq > 0 and int(oldest) > seq + 1
    return {
        "cursor": {
            "seq": seq,
            "idx": int(cur["idx"]) if cur else 0,
            "updated_at": cur["updated_at"].isoformat() if cur else None,
        },
        "ingest_last_seq": int(last or 0),
        "lag": max(0, int(last or 0) - seq),
        "folded": int(cur["folded"]) if cur else 0,
        "dead_letters": int(cur["dead_letters"]) if cur else 0,
        "dead_letters_by_rule": {r["rule"]: int(r["n"]) for r in by_rule},
        "records": {c: int(counts[f"c{i}"]) for i, c in enumerate(RECORD_TABLES)},
        "accounts": {"inactive": {r["status"]: int(r["n"]) for r in inactive}},
        "repos": {r["state"]: int(r["n"]) for r in repos},
        "pending": int(counts["pending"]),
        "ingest_source": cur["ingest_source"] if cur else None,
        "require_verified": cur["require_verified"] if cur else None,
        "resets": {
            "count": int(cur["resets"]) if cur else 0,
            "at": when(cur["reset_at"]) if cur else None,
            "reason": cur["reset_reason"] if cur else None,
            "horizon": when(cur["horizon"]) if cur else None,
        },
        "gaps": {
            "count": int(cur["gaps"]) if cur else 0,
            "at": when(cur["gap_at"]) if cur else None,
            "seqs": list(cur["gap_seqs"]) if cur and cur["gap_seqs"] else None,
        },
        "oldest_log_seq": None if oldest is None else int(oldest),
        "behind_retention": behind,
    }


def _setter(event: asyncio.Event) -> Callable[..., None]:
    return lambda *_: event.set()


# -- the indexer ----------------------------------------------------------------------


class Indexer:
    """Folds the ingestion log into the AppView tables (see the module docstring).

    ``pool``: an asyncpg pool on the database holding both schemas (migrated);
    ``batch_size``: most log rows per batch/transaction (1..100000);
    ``poll_interval``: seconds between polls when no NOTIFY arrives; ``listen``:
    LISTEN on :data:`NOTIFY_CHANNEL` (holds one pool connection; off when the pool
    has fewer than 2); ``require_verified``: refuse commits whose signature was not
    checked; ``max_batch_bytes`` / ``max_dead_letter_bytes``: see the module
    docstring; ``history``: the schema-history hook (``None``: none);
    ``normalizer``: :func:`.records.normalize` or a stand-in;
    ``lease_seconds``: :meth:`run` ends backfills ``backfilling`` for longer
    (:func:`expire_backfills`, checked every :data:`LEASE_CHECK_SECONDS`).

    ``stats`` accumulates the :class:`ApplyResult` of every batch :meth:`fold_once`
    committed; ``batches`` counts them (a batch that only moved the cursor over
    rows not ours counts, with 0 rows); ``last`` is the last batch's result;
    ``listening``: whether :meth:`run`'s LISTEN connection is up."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        batch_size: int = 500,
        poll_interval: float = 1.0,
        require_verified: bool = False,
        max_batch_bytes: int = MAX_BATCH_BYTES,
        max_dead_letter_bytes: int = MAX_DEAD_LETTER_BYTES,
        history: HistoryHook | None = recompute_history,
        normalizer: Normalizer = normalize,
        listen: bool = True,
        lease_seconds: float = BACKFILL_LEASE_SECONDS,
    ) -> None:
        if not 1 <= batch_size <= 100_000:
            raise ValueError("batch_size must be in 1..100000")
        if poll_interval <= 0:
            raise ValueError("poll_interval must be > 0 seconds")
        if max_batch_bytes < 1 or max_dead_letter_bytes < 64:
            raise ValueError("max_batch_bytes >= 1, max_dead_letter_bytes >= 64")
        self.pool = pool
        self.batch_size = batch_size
        self.poll_interval = poll_interval
        self.require_verified = require_verified
        self.max_batch_bytes = max_batch_bytes
        self.max_dead_letter_bytes = max_dead_letter_bytes
        self.history = history
        self.normalizer = normalizer
        self.listen = listen
        if lease_seconds <= 0:
            raise ValueError("lease_seconds must be > 0")
        self.lease_seconds = lease_seconds
        self._canonical_since: _dt.datetime | None = None
        self.stats = ApplyResult()
        self.batches = 0
        self.last = ApplyResult()
        self.listening = False
        self._full = False
        self._wrote = False
        self._wake = asyncio.Event()

    # -- one batch -------------------------------------------------------------------

    async def fold_once(self) -> int:
        """Fold one batch in its own transaction; return the log rows consumed
        (skipped ones included; 0 when caught up). A batch refused by PostgreSQL
        for a row's values is redone row by row (``AV_WRITE_FAILED``). Database
        errors propagate with nothing committed."""
        async with self.pool.acquire() as conn:
            try:
                async with conn.transaction():
                    n = await self.fold_in(conn)
            except _POISON:
                log.warning("batch refused by PostgreSQL; redoing it row by row")
                async with conn.transaction():
                    n = await self.fold_in(conn, isolate=True)
        if self._wrote:
            self.stats.add(self.last)
            self.batches += 1
        return n

    async def fold_in(self, conn: asyncpg.Connection, *, isolate: bool = False) -> int:
        """:meth:`fold_once` in the caller's transaction (for tests that interleave
        it with other transactions): lock the cursor, read a batch, apply it,
        advance the cursor. ``isolate``: apply row by row in savepoints. Sets
        :attr:`last`; :attr:`stats` and :attr:`batches` count what
        :meth:`fold_once` committed."""
        if not conn.is_in_transaction():
            raise ValueError("fold_in runs in the caller's transaction: open one")
        cur = await conn.fetchrow(
            "SELECT seq, idx, ingest_source, horizon FROM appview_cursor "
            "WHERE id FOR UPDATE"
        )
        if cur is None:
            raise RuntimeError("appview_cursor has no row: run the AppView migration")
        cseq, cidx = int(cur["seq"]), int(cur["idx"])
        ingest = await conn.fetchrow(
            "SELECT last_seq, source, ingester_started_at FROM ingest_cursor"
        )
        top = int(ingest["last_seq"] or 0) if ingest else 0
        source = str(ingest["source"] or "") if ingest else ""
        stored = cur["ingest_source"]
        horizon = cur["horizon"]
        changed = bool(stored) and bool(source) and source != stored
        if changed or top < cseq:
            why = (
                f"the ingest source changed from {_clip(str(stored), 200)!r} to "
                f"{_clip(source, 200)!r}"
                if changed
                else f"ingest_cursor.last_seq {top} is below the AppView cursor {cseq}"
            )
            horizon = ingest["ingester_started_at"] if ingest else None
            await _reset(conn, cseq, why, horizon)
            cseq, cidx = 0, -2
        elif cseq > 0 and (top, END_OF_SEQ) > (cseq, cidx):
            oldest = await conn.fetchval(
                "SELECT seq FROM ingest_events ORDER BY seq, idx LIMIT 1"
            )
            if oldest is not None and int(oldest) > cseq + 1:
                await _gap(conn, cseq, int(oldest))
        if source and source != stored:
            await conn.execute(
                "UPDATE appview_cursor SET ingest_source = $1 WHERE id", source
            )
        rows: list[_LogRow] = []
        cut = False
        if (top, END_OF_SEQ) > (cseq, cidx):
            size = 0
            prefetch = max(1, min(self.batch_size, 100))
            # Read each stream in index order whatever the statistics say: with
            # statistics from before a burst, the planner sorts every row of the
            # burst instead (see _read_sql); restored right after the read.
            saved = await conn.fetchrow(_READ_SAVE)
            await conn.execute(_READ_SETTING)
            async for rec in conn.cursor(
                _READ_SQL,
                cseq,
                cidx,
                top,
                self.batch_size,
                *_READ_ARGS,
                horizon,
                prefetch=prefetch,
            ):
                row = _LogRow.of(rec)
                rows.append(row)
                size += len(row.record or "") + _ROW_OVERHEAD
                if size >= self.max_batch_bytes and len(rows) < self.batch_size:
                    cut = True
                    break
            await conn.execute(_READ_RESTORE, *saved)
        self._full = cut or len(rows) >= self.batch_size
        if self._full:
            nseq, nidx = rows[-1].seq, rows[-1].idx
        else:
            nseq, nidx = max((top, END_OF_SEQ), (cseq, cidx))
        self._wrote = False
        if not rows and (nseq, nidx) == (cseq, cidx):
            self.last = ApplyResult()
            return 0
        options: dict[str, Any] = {
            "require_verified": self.require_verified,
            "max_dead_letter_bytes": self.max_dead_letter_bytes,
            "history": self.history,
            "normalizer": self.normalizer,
        }
        if isolate:
            result = await _fold_isolated(conn, rows, **options)
        else:
            result = await _fold_rows(conn, rows, **options)
        await conn.execute(
            "UPDATE appview_cursor SET seq = $1, idx = $2, updated_at = now(), "
            "folded = folded + $3, dead_letters = dead_letters + $4, "
            "require_verified = $5 WHERE id",
            nseq,
            nidx,
            result.consumed,
            result.dead_letters,
            self.require_verified,
        )
        self.last = result
        self._wrote = True
        return result.consumed

    async def fold_all(self, *, max_batches: int | None = None) -> int:
        """Fold batches until caught up (a batch that is not full) or
        ``max_batches``; return the rows consumed."""
        total = 0
        n = 0
        while max_batches is None or n < max_batches:
            total += await self.fold_once()
            n += 1
            if not self._full:
                break
        return total

    # -- backfill, status --------------------------------------------------------------

    async def apply_snapshot(
        self,
        did: str,
        rev: str,
        records: Sequence[tuple[str, str, str, Mapping[str, Any] | str | bytes]],
        source: str,
    ) -> SnapshotResult:
        """:func:`apply_snapshot` on a pool connection with this indexer's
        settings."""
        async with self.pool.acquire() as conn:
            return await apply_snapshot(
                conn,
                did,
                rev,
                records,
                source,
                require_verified=self.require_verified,
                max_dead_letter_bytes=self.max_dead_letter_bytes,
                history=self.history,
                normalizer=self.normalizer,
            )

    async def expire_backfills(self) -> list[str]:
        """:func:`expire_backfills` on a pool connection with this indexer's
        settings and lease."""
        async with self.pool.acquire() as conn:
            return await expire_backfills(
                conn,
                lease_seconds=self.lease_seconds,
                require_verified=self.require_verified,
                max_dead_letter_bytes=self.max_dead_letter_bytes,
                history=self.history,
                normalizer=self.normalizer,
            )

    async def maintain(self) -> None:
        """What :meth:`run` does every :data:`LEASE_CHECK_SECONDS`: end the
        backfills past their lease (:meth:`expire_backfills`) and put in DID form
        the references whose handle was verified since the last time
        (:func:`canonicalize_refs`; all of them the first time)."""
        await self.expire_backfills()
        async with self.pool.acquire() as conn:
            started = await conn.fetchval("SELECT now()")
            since = self._canonical_since
            if since is not None:
                since -= _dt.timedelta(seconds=LEASE_CHECK_SECONDS)  # late commits
            n = await canonicalize_refs(conn, since=since)
            self._canonical_since = started
        if n:
            log.info("%d references by handle put in DID form", n)

    async def status(self) -> dict[str, Any]:
        """:func:`status` on a pool connection."""
        async with self.pool.acquire() as conn:
            return await status(conn)

    # -- the loop --------------------------------------------------------------------

    def _on_notify(self, *_args: object) -> None:
        self._wake.set()

    async def _listen(self, stop: asyncio.Event) -> None:
        backoff = 0.1
        while not stop.is_set():
            try:
                async with self.pool.acquire() as conn:
                    closed = asyncio.Event()
                    conn.add_termination_listener(_setter(closed))
                    await conn.add_listener(NOTIFY_CHANNEL, self._on_notify)
                    self.listening = True
                    backoff = 0.1
                    self._wake.set()  # catch up on what was committed meanwhile
                    try:
                        while not stop.is_set() and not closed.is_set():
                            with contextlib.suppress(TimeoutError):
                                await asyncio.wait_for(closed.wait(), 30.0)
                            if not closed.is_set() and not stop.is_set():
                                await conn.execute("SELECT 1", timeout=10)
                    finally:
                        self.listening = False
                        if not conn.is_closed():
                            with contextlib.suppress(*_TRANSIENT):
                                await conn.remove_listener(
                                    NOTIFY_CHANNEL, self._on_notify
                                )
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - reconnect whatever happened
                log.debug("LISTEN connection lost: %s", exc)
            if not stop.is_set():
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    async def run(self, stop: asyncio.Event) -> None:
        """Fold until ``stop`` is set: a batch after another while batches are full,
        then wait for a NOTIFY on :data:`NOTIFY_CHANNEL` or ``poll_interval``.
        Every :data:`LEASE_CHECK_SECONDS` (and first thing), :meth:`maintain`:
        backfills past their lease are ended (so a crashed backfiller never
        leaves a repository's live rows buffered for good) and references by a
        handle verified since are put in DID form.
        Transient database errors (connection lost, serialization, server
        shutdown) are logged (a WARNING at most once a minute) and retried with a
        backoff up to 30 s; other errors propagate (after the batch rolled back).
        The batch in flight when ``stop`` is set completes."""
        listener: asyncio.Task[None] | None = None
        if self.listen and self.pool.get_max_size() >= 2:
            listener = asyncio.create_task(self._listen(stop), name="appview-listen")
        stopper = asyncio.create_task(stop.wait(), name="appview-stop")
        stopper.add_done_callback(lambda _: self._wake.set())
        backoff = 0.0
        warned = 0.0
        leases = 0.0
        try:
            while not stop.is_set():
                self._wake.clear()
                try:
                    if time.monotonic() - leases >= LEASE_CHECK_SECONDS:
                        try:
                            await self.maintain()
                        except _TRANSIENT:
                            raise
                        except Exception:  # maintenance never stops the fold
                            log.exception("indexer maintenance failed; folding on")
                        leases = time.monotonic()
                    await self.fold_once()
                except _TRANSIENT as exc:
                    now = time.monotonic()
                    if now - warned >= 60:
                        log.warning("indexer: database unavailable (%s); retrying", exc)
                        warned = now
                    backoff = min(max(backoff * 2, 0.1), 30.0)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), backoff)
                    continue
                backoff = 0.0
                if self._full:
                    await asyncio.sleep(0)
                    continue
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.poll_interval)
        finally:
            stopper.cancel()
            if listener is not None:
                listener.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await listener
            with contextlib.suppress(asyncio.CancelledError):
                await stopper
