"""Retention: trim the event log to the last ``retention_days`` days (seed 002 §13).

The log ``ingest_events`` is partitioned by day of ``indexed_at`` (UTC; see
:mod:`.schema`), so trimming is mostly *dropping whole daily partitions*: a
catalog change that writes almost no WAL, leaves no dead tuples to vacuum and
returns the disk space at once. Row deletes remain for what does not sit in a daily
partition: rows that landed in ``ingest_events_default`` (no daily partition for
their day existed yet) and old rows of ``ingest_dead_letters``.

Locks (measured on PostgreSQL 15, see ``tests/ingest/test_retention.py``):

- ``DROP TABLE ingest_events_pYYYYMMDD`` takes ACCESS EXCLUSIVE on the partition,
  on the parent ``ingest_events`` and on ``ingest_events_default``;
- ``ALTER TABLE ingest_events DETACH PARTITION ...`` takes the same ACCESS
  EXCLUSIVE locks on the parent and the default partition, so DETACH then DROP
  only adds a second lock acquisition;
- ``DETACH PARTITION ... CONCURRENTLY`` (SHARE UPDATE EXCLUSIVE on the parent) is
  refused while the table has a default partition ("cannot detach partitions
  concurrently when a default partition exists"), and it cannot run in a
  transaction, so it cannot be bounded by ``SET LOCAL lock_timeout``.

So each partition is dropped directly, in its own short transaction, under
``SET LOCAL lock_timeout``: the lock itself is held for a catalog update
(milliseconds), and while it *waits* (behind a reader's open transaction, or the
ingester's batch) it queues every later reader behind it, which the timeout bounds.
A partition that is still locked after ``attempts`` tries is not dropped; it is
listed in :attr:`TrimReport.blocked` and the next trim takes it. Trim never hangs.

Safety rules (each a rule ID in :attr:`TrimReport.skipped` when it applies):

- only children of ``ingest_events`` are considered, and only those named exactly
  ``ingest_events_pYYYYMMDD`` for a real date (``RETENTION_NAME``);
- their partition bound must be exactly ``[day 00:00 UTC, day + 1 00:00 UTC)``,
  the range :func:`.schema.ensure_partitions` creates (``RETENTION_BOUND``);
- a partition is dropped only when its whole range ends at or before the cutoff
  ``now - retention_days`` and its day is before today (UTC): the current day and
  future partitions are never dropped.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as _dt
import re
from typing import Any, Final

import asyncpg

from .schema import ensure_partitions, partition_name

__all__ = [
    "DroppedPartition",
    "RetentionError",
    "SkippedTable",
    "TrimReport",
    "delete_older_than",
    "trim",
]

_PARTITION_RE: Final = re.compile(r"ingest_events_p([0-9]{8})")
_BOUND_RE: Final = re.compile(r"FOR VALUES FROM \('([^']*)'\) TO \('([^']*)'\)")
#: Serializes trims (pg_try_advisory_lock key; "atdt").
_TRIM_LOCK_KEY: Final = 0x61746474
#: Rows deleted per statement (and per transaction) by the row-delete paths.
DELETE_CHUNK: Final = 50_000
_UTC: Final = _dt.UTC


class RetentionError(ValueError):
    """A bad call of :func:`trim` or :func:`delete_older_than`. ``rule``:
    ``RETENTION_DAYS`` (not an integer >= 1), ``RETENTION_NOW`` (a naive
    datetime), ``RETENTION_ARGS`` (lock timeout, attempts or chunk out of range),
    ``RETENTION_TRANSACTION`` (called inside a transaction)."""

    def __init__(self, rule: str, reason: str) -> None:
        super().__init__(f"{rule}: {reason}")
        self.rule = rule
        self.reason = reason


@dataclasses.dataclass(frozen=True, slots=True)
class DroppedPartition:
    """A daily partition that was dropped (or, in a dry run, would be).

    ``rows_estimate`` is PostgreSQL's ``reltuples`` (exact after VACUUM/ANALYZE,
    ``None`` when the table was never analyzed: counting would scan the day);
    ``bytes`` is ``pg_total_relation_size`` (heap, indexes, TOAST) before the drop.
    """

    name: str
    day: _dt.date
    rows_estimate: int | None
    bytes: int


@dataclasses.dataclass(frozen=True, slots=True)
class SkippedTable:
    """A child of ``ingest_events`` that trim refused to touch, and why."""

    name: str
    rule: str  # RETENTION_NAME | RETENTION_BOUND
    reason: str


@dataclasses.dataclass(slots=True)
class TrimReport:
    """What :func:`trim` did (``dry_run``: what it would do; nothing changed).

    - ``cutoff``: ``now - retention_days`` (UTC); everything strictly older goes;
    - ``dropped``: daily partitions dropped, oldest first;
    - ``blocked``: partitions (or ``"ensure_partitions"``) whose lock could not be
      taken within ``lock_timeout`` on any attempt; left for the next trim;
    - ``default_rows_deleted``: rows of ``ingest_events_default`` older than the
      cutoff, deleted (dry run: counted);
    - ``dead_letters_deleted``: rows of ``ingest_dead_letters`` with
      ``received_at`` older than the cutoff, deleted (dry run: counted);
    - ``created``: daily partitions created for today and the next days (dry run:
      the ones missing);
    - ``skipped``: tables that look like partitions but are not trim's to drop
      (``RETENTION_NAME``, ``RETENTION_BOUND``), and days whose partition could
      not be created (``RETENTION_DEFAULT_ROWS``);
    - ``busy``: another trim held the trim lock; this one did nothing.
    """

    cutoff: _dt.datetime
    dry_run: bool
    dropped: list[DroppedPartition] = dataclasses.field(default_factory=list)
    blocked: list[str] = dataclasses.field(default_factory=list)
    default_rows_deleted: int = 0
    dead_letters_deleted: int = 0
    created: list[str] = dataclasses.field(default_factory=list)
    skipped: list[SkippedTable] = dataclasses.field(default_factory=list)
    busy: bool = False

    def as_dict(self) -> dict[str, Any]:
        """The report as JSON-ready data (dates in ISO 8601)."""
        return {
            "cutoff": self.cutoff.isoformat(),
            "dry_run": self.dry_run,
            "dropped": [
                {
                    "name": d.name,
                    "day": d.day.isoformat(),
                    "rows_estimate": d.rows_estimate,
                    "bytes": d.bytes,
                }
                for d in self.dropped
            ],
            "blocked": list(self.blocked),
            "default_rows_deleted": self.default_rows_deleted,
            "dead_letters_deleted": self.dead_letters_deleted,
            "created": list(self.created),
            "skipped": [dataclasses.asdict(s) for s in self.skipped],
            "busy": self.busy,
        }


@dataclasses.dataclass(frozen=True, slots=True)
class _Partition:
    schema: str
    name: str
    day: _dt.date
    rows_estimate: int | None
    bytes: int


def _ident(name: str) -> str:
    """A double-quoted SQL identifier."""
    return '"' + name.replace('"', '""') + '"'


def _day_of(name: str) -> _dt.date | None:
    """The day of a partition name ``ingest_events_pYYYYMMDD``, or ``None`` when
    ``name`` is not exactly that for a real date."""
    m = _PARTITION_RE.fullmatch(name)
    if m is None:
        return None
    try:
        day = _dt.datetime.strptime(m.group(1), "%Y%m%d").date()
    except ValueError:
        return None
    return day if partition_name(day) == name else None


def _parse_bound(text: str) -> _dt.datetime | None:
    try:
        t = _dt.datetime.fromisoformat(text)
    except ValueError:
        return None
    return t if t.tzinfo is not None else None


async def _partitions(
    conn: asyncpg.Connection, skipped: list[SkippedTable]
) -> list[_Partition]:
    """The daily partitions of ``ingest_events``, oldest first; children that do
    not pass the name and bound rules go to ``skipped``."""
    async with conn.transaction():
        # pg_get_expr prints bounds in the session's TimeZone: make it UTC.
        await conn.execute("SET LOCAL TimeZone = 'UTC'")
        rows = await conn.fetch(
            """
            SELECT n.nspname AS schema, c.relname AS name,
                   pg_get_expr(c.relpartbound, c.oid) AS bound,
                   c.reltuples::bigint AS reltuples,
                   pg_total_relation_size(c.oid) AS bytes
            FROM pg_inherits i
            JOIN pg_class c ON c.oid = i.inhrelid
            JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE i.inhparent = 'ingest_events'::regclass
            """
        )
    out: list[_Partition] = []
    for row in rows:
        name: str = row["name"]
        bound: str = row["bound"] or ""
        if bound == "DEFAULT":
            continue
        day = _day_of(name)
        if day is None:
            skipped.append(
                SkippedTable(
                    name,
                    "RETENTION_NAME",
                    "a partition of ingest_events not named "
                    "ingest_events_pYYYYMMDD for a real date",
                )
            )
            continue
        m = _BOUND_RE.fullmatch(bound)
        lo_expected = _dt.datetime.combine(day, _dt.time(), _UTC)
        hi_expected = lo_expected + _dt.timedelta(days=1)
        lo = _parse_bound(m.group(1)) if m else None
        hi = _parse_bound(m.group(2)) if m else None
        if lo != lo_expected or hi != hi_expected:
            skipped.append(
                SkippedTable(
                    name,
                    "RETENTION_BOUND",
                    f"partition bound {bound!r} is not the day "
                    f"[{lo_expected.isoformat()}, {hi_expected.isoformat()})",
                )
            )
            continue
        tuples = int(row["reltuples"])
        out.append(
            _Partition(
                row["schema"], name, day, tuples if tuples >= 0 else None, row["bytes"]
            )
        )
    out.sort(key=lambda p: p.day)
    return out


async def _with_lock_timeout(
    conn: asyncpg.Connection,
    sql: str,
    *,
    lock_timeout: float,
    attempts: int,
) -> bool:
    """Run ``sql`` in its own transaction under ``SET LOCAL lock_timeout``; retry
    up to ``attempts`` times with a short pause. ``False`` when every attempt
    timed out waiting for a lock."""
    ms = max(1, int(lock_timeout * 1000))
    for attempt in range(attempts):
        try:
            async with conn.transaction():
                await conn.execute(f"SET LOCAL lock_timeout = {ms}")
                await conn.execute(sql)
            return True
        except asyncpg.LockNotAvailableError:
            if attempt + 1 < attempts:
                await asyncio.sleep(min(lock_timeout, 1.0) * (attempt + 1))
    return False


async def _delete_chunks(
    conn: asyncpg.Connection, sql: str, cutoff: _dt.datetime, chunk: int
) -> int:
    """Run a chunked ``DELETE`` (``sql`` takes ``$1`` cutoff, ``$2`` chunk) until it
    deletes nothing; each chunk commits on its own. Returns the rows deleted."""
    total = 0
    while True:
        status = await conn.execute(sql, cutoff, chunk)
        n = int(status.split()[-1])  # "DELETE n"
        total += n
        if n < chunk:
            return total


_DELETE_DEFAULT: Final = """
DELETE FROM ingest_events_default
WHERE ctid = ANY (ARRAY(
    SELECT ctid FROM ingest_events_default WHERE indexed_at < $1 LIMIT $2
))
"""

_DELETE_DEAD: Final = """
DELETE FROM ingest_dead_letters
WHERE id = ANY (ARRAY(
    SELECT id FROM ingest_dead_letters WHERE received_at < $1 ORDER BY id LIMIT $2
))
"""


def _check_args(retention_days: int, now: _dt.datetime | None) -> _dt.datetime:
    if (
        isinstance(retention_days, bool)
        or not isinstance(retention_days, int)
        or retention_days < 1
    ):
        raise RetentionError(
            "RETENTION_DAYS",
            f"retention_days must be an integer >= 1, got {retention_days!r}",
        )
    if now is None:
        return _dt.datetime.now(_UTC)
    if now.tzinfo is None or now.utcoffset() is None:
        raise RetentionError("RETENTION_NOW", "now must be timezone-aware")
    return now.astimezone(_UTC)


async def trim(
    conn: asyncpg.Connection,
    *,
    retention_days: int = 7,
    now: _dt.datetime | None = None,
    dry_run: bool = False,
    lock_timeout: float = 1.0,
    attempts: int = 3,
    chunk: int = DELETE_CHUNK,
) -> TrimReport:
    """Trim the log to events newer than ``now - retention_days`` (seed 002 §13).

    ``conn`` must not be inside a transaction (each step commits on its own).
    ``now`` (timezone-aware; default: the current time) fixes "today" (UTC) and the
    cutoff. In order: drop every daily partition whose range ends at or before the
    cutoff (one transaction each, ``lock_timeout`` seconds per attempt,
    ``attempts`` attempts); delete older rows of ``ingest_events_default`` and of
    ``ingest_dead_letters`` in chunks of ``chunk`` rows; create today's and the
    next two days' partitions (:func:`.schema.ensure_partitions`, under the same
    lock timeout). ``dry_run`` changes nothing and reports what would be done.

    Raises :class:`RetentionError` for bad arguments and asyncpg errors other than
    lock timeouts (which are reported in :attr:`TrimReport.blocked`). When another
    trim is running, returns at once with ``busy=True``.
    """
    now = _check_args(retention_days, now)
    if conn.is_in_transaction():
        raise RetentionError(
            "RETENTION_TRANSACTION",
            "trim commits step by step: call it outside a transaction",
        )
    if lock_timeout <= 0 or attempts < 1 or chunk < 1:
        raise RetentionError(
            "RETENTION_ARGS", "lock_timeout > 0, attempts >= 1 and chunk >= 1 required"
        )
    today = now.date()
    cutoff = now - _dt.timedelta(days=retention_days)
    report = TrimReport(cutoff=cutoff, dry_run=dry_run)
    if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", _TRIM_LOCK_KEY):
        report.busy = True
        return report
    try:
        for p in await _partitions(conn, report.skipped):
            end = _dt.datetime.combine(p.day + _dt.timedelta(days=1), _dt.time(), _UTC)
            if p.day >= today or end > cutoff:
                continue
            dropped = DroppedPartition(p.name, p.day, p.rows_estimate, p.bytes)
            if dry_run:
                report.dropped.append(dropped)
                continue
            sql = f"DROP TABLE IF EXISTS {_ident(p.schema)}.{_ident(p.name)}"
            if await _with_lock_timeout(
                conn, sql, lock_timeout=lock_timeout, attempts=attempts
            ):
                report.dropped.append(dropped)
            else:
                report.blocked.append(p.name)

        if dry_run:
            report.default_rows_deleted = await conn.fetchval(
                "SELECT count(*) FROM ingest_events_default WHERE indexed_at < $1",
                cutoff,
            )
            report.dead_letters_deleted = await conn.fetchval(
                "SELECT count(*) FROM ingest_dead_letters WHERE received_at < $1",
                cutoff,
            )
            for n in range(3):
                name = partition_name(today + _dt.timedelta(days=n))
                if not await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", name):
                    report.created.append(name)
            return report

        report.default_rows_deleted = await _delete_chunks(
            conn, _DELETE_DEFAULT, cutoff, chunk
        )
        report.dead_letters_deleted = await _delete_chunks(
            conn, _DELETE_DEAD, cutoff, chunk
        )
        report.created = await _ensure_partitions(
            conn, today, lock_timeout=lock_timeout, attempts=attempts, report=report
        )
        return report
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _TRIM_LOCK_KEY)


async def _ensure_partitions(
    conn: asyncpg.Connection,
    today: _dt.date,
    *,
    lock_timeout: float,
    attempts: int,
    report: TrimReport,
) -> list[str]:
    """:func:`.schema.ensure_partitions` for today and the next two days, one day
    per transaction under ``lock_timeout`` (creating a partition takes ACCESS
    EXCLUSIVE on the parent and on the default partition). A day whose lock cannot
    be taken goes to ``report.blocked``; a day that cannot be created because
    ``ingest_events_default`` already holds rows of it goes to ``report.skipped``
    (``RETENTION_DEFAULT_ROWS``: those rows stay in the default partition and are
    trimmed by row deletes)."""
    ms = max(1, int(lock_timeout * 1000))
    created: list[str] = []
    for n in range(3):
        day = today + _dt.timedelta(days=n)
        for attempt in range(attempts):
            try:
                async with conn.transaction():
                    await conn.execute(f"SET LOCAL lock_timeout = {ms}")
                    created += await ensure_partitions(conn, today=day, ahead=0)
                break
            except asyncpg.LockNotAvailableError:
                if attempt + 1 < attempts:
                    await asyncio.sleep(min(lock_timeout, 1.0) * (attempt + 1))
                else:
                    report.blocked.append(partition_name(day))
            except asyncpg.CheckViolationError as e:
                report.skipped.append(
                    SkippedTable(partition_name(day), "RETENTION_DEFAULT_ROWS", str(e))
                )
                break
    return created


async def delete_older_than(
    conn: asyncpg.Connection, cutoff: _dt.datetime, *, chunk: int = DELETE_CHUNK
) -> int:
    """The row-delete alternative to :func:`trim`, for the benchmark only
    (``scripts/bench_ingest.py --retention``): ``DELETE`` the rows of
    ``ingest_events`` with ``indexed_at < cutoff``, ``chunk`` rows per statement
    (oldest ``seq`` first, through the ``(seq, idx)`` index), each chunk its own
    transaction, as a scheduled delete job would. Leaves the empty partitions and
    the dead tuples (for VACUUM) behind. Returns the rows deleted."""
    if cutoff.tzinfo is None:
        raise RetentionError("RETENTION_NOW", "cutoff must be timezone-aware")
    sql = """
        WITH doomed AS (
            SELECT seq, idx FROM ingest_events
            WHERE indexed_at < $1 ORDER BY seq, idx LIMIT $2
        )
        DELETE FROM ingest_events e USING doomed d
        WHERE e.seq = d.seq AND e.idx = d.idx AND e.indexed_at < $1
    """
    return await _delete_chunks(conn, sql, cutoff, chunk)
