"""Benchmark of the ingestion service (issue 15, "Shown by"); not a test. Prints
medians of ``--runs`` runs on this machine, the peer measured in the same run.

Sections (``--only`` picks some; all by default):

* ``retention``: trimming ``--retention-rows`` events spread over 5 old days down
  to the newest 3 days, by dropping daily partitions (``atdata_ingest.retention
  .trim``) vs by chunked ``DELETE`` (``retention.delete_older_than``) + VACUUM:
  seconds, WAL bytes (``pg_current_wal_lsn()`` difference) and table size before,
  after, and after VACUUM.

Every section runs against a private PostgreSQL 15 cluster with durable settings
(``PostgresCluster(fast=False)``: fsync and full-page writes on).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

from atdata_ingest.testing.postgres import PostgresCluster

SECTIONS = ("retention",)


def median_of(runs: list[dict[str, float]]) -> dict[str, float]:
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


def mib(n: float) -> str:
    return f"{n / 2**20:,.1f} MiB"


# -- retention: DROP partitions vs DELETE rows -----------------------------------------

#: Realistic-sized rows (a like/post/follow/repost with a subject and createdAt),
#: made by the server: rows $1..$2, indexed_at evenly from $3 over $4.
_FILL = """
INSERT INTO ingest_events (seq, idx, event_type, action, repo, collection, rkey,
                           cid, rev, commit_cid, record, valid, event_time, indexed_at)
SELECT g, 0, 'commit', 'create',
       'did:plc:' || substr(md5((g % 5000)::text), 1, 24),
       c.nsid, lpad(to_hex(g), 13, '3'),
       'bafyrei' || md5(g::text) || substr(md5((g + 1)::text), 1, 20),
       lpad(to_hex(g), 13, '3'),
       'bafyrei' || md5((g + 2)::text) || substr(md5((g + 5)::text), 1, 20),
       jsonb_build_object(
           '$type', c.nsid,
           'subject', jsonb_build_object(
               'uri', 'at://did:plc:' || substr(md5((g % 777)::text), 1, 24)
                      || '/app.bsky.feed.post/' || lpad(to_hex(g), 13, '3'),
               'cid', 'bafyrei' || md5((g + 3)::text) || md5((g + 4)::text)),
           'createdAt', to_char(t.ts, 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')),
       'ok', t.ts, t.ts
FROM generate_series($1::bigint, $2::bigint) AS g,
     LATERAL (SELECT (ARRAY['app.bsky.feed.like', 'app.bsky.feed.post',
                            'app.bsky.graph.follow', 'app.bsky.feed.repost'])
                     [1 + (g % 4)::int] AS nsid) AS c,
     LATERAL (SELECT $3::timestamptz
                     + $4::interval * ((g - $1)::float8 / ($2 - $1 + 1))) AS t(ts)
"""

_SIZE = """
SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0)::bigint
FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
WHERE i.inhparent = 'ingest_events'::regclass
"""

LOADED_DAYS = 5  # days TODAY-5 .. TODAY-1
KEPT_DAYS = 3  # TODAY-3 .. TODAY-1 stay; TODAY-5 and TODAY-4 go


async def _retention_run(dsn: str, rows: int, *, drop: bool) -> dict[str, float]:
    """One run on a fresh database: ``rows`` events evenly over days TODAY-5 ..
    TODAY-1 (one daily partition each), checkpoint, then remove days TODAY-5 and
    TODAY-4: ``drop`` by ``trim(retention_days=3, now=TODAY 12:00)``, else by
    ``delete_older_than(TODAY-3 00:00)`` (the same rows), then VACUUM."""
    import asyncpg
    from atdata_ingest.retention import delete_older_than, trim
    from atdata_ingest.schema import ensure_partitions, migrate

    conn = await asyncpg.connect(dsn)
    try:
        await migrate(conn)
        today = dt.datetime.now(dt.UTC).date()
        first = today - dt.timedelta(days=LOADED_DAYS)
        await ensure_partitions(conn, today=first, ahead=LOADED_DAYS - 1)
        start = dt.datetime.combine(first, dt.time(), dt.UTC)
        whole = dt.timedelta(days=LOADED_DAYS)
        chunk = 100_000
        for lo in range(1, rows + 1, chunk):
            hi = min(rows, lo + chunk - 1)
            t0 = start + whole * ((lo - 1) / rows)
            await conn.execute(_FILL, lo, hi, t0, whole * ((hi - lo + 1) / rows))
        await conn.execute("VACUUM (ANALYZE) ingest_events")
        await conn.execute("CHECKPOINT")
        before = await conn.fetchval(_SIZE)
        lsn0 = await conn.fetchval("SELECT pg_current_wal_lsn()")
        t = time.perf_counter()
        if drop:
            now = dt.datetime.combine(today, dt.time(12), dt.UTC)
            report = await trim(conn, retention_days=KEPT_DAYS, now=now)
            assert len(report.dropped) == LOADED_DAYS - KEPT_DAYS, report
        else:
            cutoff = dt.datetime.combine(
                today - dt.timedelta(days=KEPT_DAYS), dt.time(), dt.UTC
            )
            await delete_older_than(conn, cutoff)
        seconds = time.perf_counter() - t
        lsn1 = await conn.fetchval("SELECT pg_current_wal_lsn()")
        after = await conn.fetchval(_SIZE)
        t = time.perf_counter()
        await conn.execute("VACUUM ingest_events")
        vacuum_seconds = time.perf_counter() - t
        lsn2 = await conn.fetchval("SELECT pg_current_wal_lsn()")
        after_vacuum = await conn.fetchval(_SIZE)
        left = await conn.fetchval("SELECT count(*) FROM ingest_events")
        diff = "SELECT pg_wal_lsn_diff($1, $2)::bigint"
        return {
            "seconds": seconds,
            "wal": float(await conn.fetchval(diff, lsn1, lsn0)),
            "vacuum_seconds": vacuum_seconds,
            "vacuum_wal": float(await conn.fetchval(diff, lsn2, lsn1)),
            "before": float(before),
            "after": float(after),
            "after_vacuum": float(after_vacuum),
            "left": float(left),
        }
    finally:
        await conn.close()


def bench_retention(pg: PostgresCluster, rows: int, runs: int) -> None:
    results: dict[str, list[dict[str, float]]] = {"drop": [], "delete": []}
    n = 0
    for _ in range(runs):
        for method, done in results.items():
            n += 1
            name = f"bench_retention_{n}"
            dsn = pg.create_database(name)
            try:
                done.append(
                    asyncio.run(_retention_run(dsn, rows, drop=method == "drop"))
                )
            finally:
                asyncio.run(_drop_database(pg.dsn, name))
    drop, delete = median_of(results["drop"]), median_of(results["delete"])
    assert drop["left"] == delete["left"], (drop, delete)
    gone = rows * (LOADED_DAYS - KEPT_DAYS) // LOADED_DAYS
    print(
        f"\nretention: {rows:,} events over {LOADED_DAYS} days, the oldest "
        f"{LOADED_DAYS - KEPT_DAYS} days ({gone:,} events) trimmed; median of {runs}"
    )
    print(f"{'':28}{'DROP partitions':>18}{'DELETE rows':>18}{'ratio':>9}")

    def row(label: str, key: str, fmt: Callable[[float], str]) -> None:
        a, b = drop[key], delete[key]
        ratio = f"{b / a:,.0f}x" if a > 0 else "-"
        print(f"{label:28}{fmt(a):>18}{fmt(b):>18}{ratio:>9}")

    row("time", "seconds", lambda s: f"{s * 1000:,.1f} ms")
    row("WAL written", "wal", mib)
    row("then VACUUM time", "vacuum_seconds", lambda s: f"{s * 1000:,.1f} ms")
    row("then VACUUM WAL", "vacuum_wal", mib)
    print(
        f"{'table size before':28}{mib(drop['before']):>18}{mib(delete['before']):>18}"
    )
    print(f"{'table size after':28}{mib(drop['after']):>18}{mib(delete['after']):>18}")
    print(
        f"{'table size after VACUUM':28}{mib(drop['after_vacuum']):>18}"
        f"{mib(delete['after_vacuum']):>18}"
    )
    print(f"  events left: {int(drop['left']):,} (both)")


async def _drop_database(dsn: str, name: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
    finally:
        await conn.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument(
        "--only", action="append", choices=SECTIONS, help="run only these sections"
    )
    ap.add_argument("--retention-rows", type=int, default=1_000_000)
    args = ap.parse_args()
    only = set(args.only or SECTIONS)
    with PostgresCluster(fast=False) as pg:
        if "retention" in only:
            bench_retention(pg, args.retention_rows, args.runs)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
