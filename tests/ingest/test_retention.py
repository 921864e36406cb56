"""Retention (seed 002 §13): old daily partitions of ``ingest_events`` are dropped
whole, old rows of the default partition and of the dead-letter table are deleted,
the next days' partitions are created, and nothing else is touched. On a real
PostgreSQL 15 cluster (``pg_dsn``: a fresh migrated database per test)."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import asyncpg
import pytest
from atdata_ingest.retention import (
    RetentionError,
    TrimReport,
    delete_older_than,
    trim,
)
from atdata_ingest.schema import EVENT_COLUMNS, ensure_partitions, partition_name

T = TypeVar("T")
UTC = dt.UTC
NOW = dt.datetime.now(UTC).replace(hour=12, minute=0, second=0, microsecond=0)
TODAY = NOW.date()


def run(dsn: str, body: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
    async def main() -> T:
        conn = await asyncpg.connect(dsn)
        try:
            return await body(conn)
        finally:
            await conn.close()

    return asyncio.run(main())


def day(n: int) -> dt.date:
    return TODAY + dt.timedelta(days=n)


def at(n: int, hour: int = 12) -> dt.datetime:
    """``hour``:00 UTC on day ``TODAY + n``."""
    return dt.datetime.combine(day(n), dt.time(hour), UTC)


def event_row(seq: int, indexed_at: dt.datetime) -> tuple[Any, ...]:
    values: dict[str, Any] = {
        "seq": seq,
        "idx": 0,
        "event_type": "commit",
        "action": "create",
        "repo": "did:plc:retentiontest0000000000",
        "collection": "app.bsky.feed.like",
        "rkey": f"3k{seq:011d}",
        "cid": None,
        "prev_cid": None,
        "rev": None,
        "commit_cid": None,
        "record": '{"$type": "app.bsky.feed.like"}',
        "valid": None,
        "verified": None,
        "event_time": indexed_at,
        "indexed_at": indexed_at,
    }
    return tuple(values.get(c) for c in EVENT_COLUMNS)  # later columns: NULL


async def copy_rows(
    conn: asyncpg.Connection, times: list[dt.datetime], *, first_seq: int = 1
) -> None:
    await conn.copy_records_to_table(
        "ingest_events",
        records=[event_row(first_seq + i, t) for i, t in enumerate(times)],
        columns=list(EVENT_COLUMNS),
    )


async def partitions(conn: asyncpg.Connection) -> set[str]:
    rows = await conn.fetch(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = 'ingest_events'::regclass"
    )
    return {r["relname"] for r in rows}


async def seeded(conn: asyncpg.Connection) -> list[dt.datetime]:
    """Daily partitions for TODAY-12 .. TODAY+2 (the migration made TODAY..+2 for
    the real date, which NOW shares), two rows a day (06:00 and 18:00) from
    TODAY-12 to TODAY; returns the row times."""
    await ensure_partitions(conn, today=day(-12), ahead=11)
    times = [at(n, h) for n in range(-12, 1) for h in (6, 18)]
    await copy_rows(conn, times)
    return times


def test_trim_drops_exactly_the_old_partitions(pg_dsn: str) -> None:
    async def body(conn: asyncpg.Connection) -> tuple[TrimReport, set[str], list[Any]]:
        await seeded(conn)
        report = await trim(conn, retention_days=7, now=NOW)
        left = await partitions(conn)
        times = await conn.fetch(
            "SELECT indexed_at, tableoid::regclass::text AS part "
            "FROM ingest_events ORDER BY indexed_at"
        )
        return report, left, list(times)

    report, left, rows = run(pg_dsn, body)
    # cutoff = TODAY-7 12:00: day TODAY-8 ends at TODAY-7 00:00 <= cutoff (dropped);
    # day TODAY-7 ends after the cutoff (kept whole: its 06:00 row stays).
    assert report.cutoff == NOW - dt.timedelta(days=7)
    assert [d.name for d in report.dropped] == [
        partition_name(day(n)) for n in range(-12, -7)
    ]
    assert [d.day for d in report.dropped] == [day(n) for n in range(-12, -7)]
    assert all(d.bytes > 0 for d in report.dropped)
    assert report.blocked == [] and report.skipped == [] and not report.busy
    assert left == {partition_name(day(n)) for n in range(-7, 3)} | {
        "ingest_events_default"
    }
    assert [r["indexed_at"] for r in rows] == [
        at(n, h) for n in range(-7, 1) for h in (6, 18)
    ]
    assert all(r["part"] == partition_name(r["indexed_at"].date()) for r in rows)


def test_trim_keeps_today_and_future_partitions_at_the_shortest_retention(
    pg_dsn: str,
) -> None:
    """retention_days=1 just after midnight: yesterday's partition still holds rows
    younger than the cutoff, today's and the future ones are never dropped."""
    now = dt.datetime.combine(TODAY, dt.time(0, 0, 1), UTC)

    async def body(conn: asyncpg.Connection) -> tuple[TrimReport, set[str]]:
        await seeded(conn)
        report = await trim(conn, retention_days=1, now=now)
        return report, await partitions(conn)

    report, left = run(pg_dsn, body)
    assert [d.day for d in report.dropped] == [day(n) for n in range(-12, -1)]
    assert {partition_name(day(n)) for n in range(-1, 3)} <= left


def test_default_partition_rows_and_dead_letters_are_deleted(pg_dsn: str) -> None:
    async def body(conn: asyncpg.Connection) -> tuple[TrimReport, list[Any], list[Any]]:
        # no daily partition for TODAY-30 or TODAY+10: those rows go to the default
        await copy_rows(conn, [at(-30, 1), at(-30, 2), at(10)], first_seq=100)
        await conn.executemany(
            "INSERT INTO ingest_dead_letters (seq, received_at, rule, reason, "
            "frame_size) VALUES ($1, $2, 'FRAME_TEST', 'test', 0)",
            [(1, at(-9)), (2, at(-8)), (3, at(-6)), (4, at(0))],
        )
        report = await trim(conn, retention_days=7, now=NOW, chunk=1)
        default = await conn.fetch(
            "SELECT seq, indexed_at FROM ingest_events_default ORDER BY seq"
        )
        dead = await conn.fetch("SELECT seq FROM ingest_dead_letters ORDER BY seq")
        return report, list(default), list(dead)

    report, default, dead = run(pg_dsn, body)
    assert report.default_rows_deleted == 2
    assert [(r["seq"], r["indexed_at"]) for r in default] == [(102, at(10))]
    assert report.dead_letters_deleted == 2
    assert [r["seq"] for r in dead] == [3, 4]


def test_dry_run_changes_nothing_and_predicts_the_trim(pg_dsn: str) -> None:
    async def snapshot(conn: asyncpg.Connection) -> tuple[Any, ...]:
        return (
            await partitions(conn),
            await conn.fetchval("SELECT count(*) FROM ingest_events"),
            await conn.fetchval("SELECT count(*) FROM ingest_dead_letters"),
        )

    async def body(
        conn: asyncpg.Connection,
    ) -> tuple[TrimReport, TrimReport, tuple[Any, ...], tuple[Any, ...]]:
        await seeded(conn)
        await copy_rows(conn, [at(-30)], first_seq=500)
        await conn.execute(
            "INSERT INTO ingest_dead_letters (received_at, rule, reason, frame_size) "
            "VALUES ($1, 'FRAME_TEST', 'test', 0)",
            at(-20),
        )
        # drop TODAY+2 so that the dry run has a partition to predict creating
        await conn.execute(f"DROP TABLE {partition_name(day(2))}")
        before = await snapshot(conn)
        dry = await trim(conn, retention_days=7, now=NOW, dry_run=True)
        after = await snapshot(conn)
        real = await trim(conn, retention_days=7, now=NOW)
        return dry, real, before, after

    dry, real, before, after = run(pg_dsn, body)
    assert before == after
    assert dry.dry_run and not real.dry_run
    assert [d.name for d in dry.dropped] == [d.name for d in real.dropped]
    assert len(dry.dropped) == 5
    assert dry.default_rows_deleted == real.default_rows_deleted == 1
    assert dry.dead_letters_deleted == real.dead_letters_deleted == 1
    assert dry.created == real.created == [partition_name(day(2))]


def test_trim_is_idempotent(pg_dsn: str) -> None:
    async def body(conn: asyncpg.Connection) -> tuple[TrimReport, TrimReport, int]:
        await seeded(conn)
        first = await trim(conn, retention_days=7, now=NOW)
        second = await trim(conn, retention_days=7, now=NOW)
        return first, second, await conn.fetchval("SELECT count(*) FROM ingest_events")

    first, second, rows = run(pg_dsn, body)
    assert len(first.dropped) == 5
    assert second.as_dict() | {"cutoff": None} == {
        "cutoff": None,
        "dry_run": False,
        "dropped": [],
        "blocked": [],
        "default_rows_deleted": 0,
        "dead_letters_deleted": 0,
        "created": [],
        "skipped": [],
        "busy": False,
    }
    assert rows == 16  # TODAY-7 .. TODAY, two a day


def test_tables_that_are_not_ours_are_never_touched(pg_dsn: str) -> None:
    """Old-range partitions with a foreign name or a bound other than one UTC day,
    and a plain table with a partition's name, all survive with their rows."""
    lo, hi = at(-40, 0), at(-39, 0)

    async def body(conn: asyncpg.Connection) -> tuple[TrimReport, set[str], int]:
        await conn.execute(
            "CREATE TABLE ingest_events_archive PARTITION OF ingest_events "
            f"FOR VALUES FROM ('{lo.isoformat()}') TO ('{hi.isoformat()}')"
        )
        two_days = partition_name(day(-50))
        await conn.execute(
            f"CREATE TABLE {two_days} PARTITION OF ingest_events FOR VALUES FROM "
            f"('{at(-50, 0).isoformat()}') TO ('{at(-48, 0).isoformat()}')"
        )
        await conn.execute(
            "CREATE TABLE ingest_events_p20000230 PARTITION OF ingest_events FOR "
            f"VALUES FROM ('{at(-60, 0).isoformat()}') TO ('{at(-59, 0).isoformat()}')"
        )
        await conn.execute(
            f"CREATE TABLE {partition_name(day(-70))} (x int); "
            f"INSERT INTO {partition_name(day(-70))} VALUES (1)"
        )
        await copy_rows(conn, [at(-40), at(-50), at(-49), at(-60)])
        report = await trim(conn, retention_days=7, now=NOW)
        plain = await conn.fetchval(f"SELECT count(*) FROM {partition_name(day(-70))}")
        return report, await partitions(conn), plain

    report, left, plain = run(pg_dsn, body)
    assert report.dropped == []
    assert {(s.name, s.rule) for s in report.skipped} == {
        ("ingest_events_archive", "RETENTION_NAME"),
        ("ingest_events_p20000230", "RETENTION_NAME"),
        (partition_name(day(-50)), "RETENTION_BOUND"),
    }
    assert {
        "ingest_events_archive",
        "ingest_events_p20000230",
        partition_name(day(-50)),
    } <= left
    assert plain == 1


def test_a_reader_holding_a_transaction_makes_trim_give_up_not_hang(
    pg_dsn: str,
) -> None:
    """DROP needs ACCESS EXCLUSIVE on the parent: an open reader transaction blocks
    it. Trim waits at most lock_timeout per attempt, reports the partitions as
    blocked, and a reader arriving meanwhile is served once trim gives up. The
    next trim, after the reader commits, drops them."""

    async def main() -> tuple[TrimReport, int, TrimReport, set[str]]:
        setup = await asyncpg.connect(pg_dsn)
        reader = await asyncpg.connect(pg_dsn)
        late = await asyncpg.connect(pg_dsn)
        trimmer = await asyncpg.connect(pg_dsn)
        try:
            await seeded(setup)
            tx = reader.transaction()
            await tx.start()
            await reader.fetchval("SELECT count(*) FROM ingest_events")
            task = asyncio.create_task(
                trim(trimmer, retention_days=7, now=NOW, lock_timeout=0.3, attempts=2)
            )
            await asyncio.sleep(0.1)
            # queued behind the trimmer's lock request, served when it gives up
            late_count = await late.fetchval("SELECT count(*) FROM ingest_events")
            blocked = await task
            await tx.commit()
            again = await trim(trimmer, retention_days=7, now=NOW)
            return blocked, late_count, again, await partitions(setup)
        finally:
            for c in (setup, reader, late, trimmer):
                await c.close()

    blocked, late_count, again, left = asyncio.run(main())
    old = [partition_name(day(n)) for n in range(-12, -7)]
    assert blocked.dropped == []
    assert blocked.blocked == old
    assert late_count == 26
    assert [d.name for d in again.dropped] == old
    assert again.blocked == []
    assert not set(old) & left


def test_concurrent_trims_do_not_race(pg_dsn: str) -> None:
    async def main() -> TrimReport:
        holder = await asyncpg.connect(pg_dsn)
        conn = await asyncpg.connect(pg_dsn)
        try:
            await seeded(holder)
            await holder.execute("SELECT pg_advisory_lock($1)", 0x61746474)
            return await trim(conn, retention_days=7, now=NOW)
        finally:
            await holder.close()
            await conn.close()

    report = asyncio.run(main())
    assert report.busy and report.dropped == []


def test_partition_locks_are_what_the_module_documents(pg_dsn: str) -> None:
    """PostgreSQL 15: DROP of a partition and plain DETACH both take ACCESS
    EXCLUSIVE on the parent and the default partition; DETACH CONCURRENTLY is
    refused while a default partition exists. (The reason trim drops directly.)"""

    async def locks(conn: asyncpg.Connection, sql: str) -> set[tuple[str, str]]:
        async with conn.transaction():
            await conn.execute(sql)
            rows = await conn.fetch(
                "SELECT relation::regclass::text AS rel, mode FROM pg_locks "
                "WHERE pid = pg_backend_pid() AND locktype = 'relation' "
                "AND relation::regclass::text IN "
                "('ingest_events', 'ingest_events_default')"
            )
        return {(r["rel"], r["mode"]) for r in rows}

    async def body(conn: asyncpg.Connection) -> tuple[Any, Any, str]:
        await ensure_partitions(conn, today=day(-20), ahead=2)
        drop = await locks(conn, f"DROP TABLE {partition_name(day(-20))}")
        detach = await locks(
            conn,
            f"ALTER TABLE ingest_events DETACH PARTITION {partition_name(day(-19))}",
        )
        with pytest.raises(asyncpg.ObjectNotInPrerequisiteStateError) as e:
            await conn.execute(
                "ALTER TABLE ingest_events DETACH PARTITION "
                f"{partition_name(day(-18))} CONCURRENTLY"
            )
        return drop, detach, str(e.value)

    drop, detach, refusal = run(pg_dsn, body)
    expected = {
        ("ingest_events", "AccessExclusiveLock"),
        ("ingest_events_default", "AccessExclusiveLock"),
    }
    assert drop == expected
    assert detach == expected
    assert "default partition" in refusal


def test_delete_older_than_deletes_exactly_the_old_rows(pg_dsn: str) -> None:
    async def body(conn: asyncpg.Connection) -> tuple[int, list[Any], set[str]]:
        times = await seeded(conn)
        n = await delete_older_than(conn, NOW - dt.timedelta(days=7), chunk=3)
        rows = await conn.fetch("SELECT indexed_at FROM ingest_events ORDER BY 1")
        assert len(times) == 26
        return n, [r["indexed_at"] for r in rows], await partitions(conn)

    n, rows, left = run(pg_dsn, body)
    cutoff = NOW - dt.timedelta(days=7)
    expected = [at(k, h) for k in range(-12, 1) for h in (6, 18)]
    assert n == sum(1 for t in expected if t < cutoff) == 11
    assert rows == [t for t in expected if t >= cutoff]
    assert partition_name(day(-12)) in left  # row deletes leave partitions behind


@pytest.mark.parametrize("days", [0, -1, 1.5, True, "7"])
def test_bad_retention_days_are_refused(pg_dsn: str, days: Any) -> None:
    async def body(conn: asyncpg.Connection) -> None:
        with pytest.raises(RetentionError) as e:
            await trim(conn, retention_days=days)
        assert e.value.rule == "RETENTION_DAYS"

    run(pg_dsn, body)


def test_naive_now_and_open_transactions_are_refused(pg_dsn: str) -> None:
    async def body(conn: asyncpg.Connection) -> None:
        with pytest.raises(RetentionError) as e:
            await trim(conn, now=dt.datetime(2030, 1, 1))
        assert e.value.rule == "RETENTION_NOW"
        async with conn.transaction():
            with pytest.raises(RetentionError) as e:
                await trim(conn, now=NOW)
            assert e.value.rule == "RETENTION_TRANSACTION"

    run(pg_dsn, body)
