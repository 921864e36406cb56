"""The batch writer against a real PostgreSQL 15 with rows of real PDS frames.

Frames come from the real local PDS (``realistic_frames``), renumbered by the replay
relay's templates (frame ``k`` has seq ``k``). What is checked: events and the
cursor commit together (a SIGKILL between COPY and COMMIT leaves neither), the
cursor guard drops stored seqs, a retried committed batch is a no-op, dead letters
are stored and counted, a refused row does not stall the batch, one ingester per
database, the relay recorded in the cursor, a lost connection is retried, and
writes are COPYs, never one INSERT per event (``pg_stat_statements``).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest
from atdata_ingest import exits
from atdata_ingest.config import Settings
from atdata_ingest.exits import ConfigError, CursorRegressed, LockHeld
from atdata_ingest.rows import RecordValidator, dead_letter_row, event_rows, info_json
from atdata_ingest.schema import (
    EVENT_COLUMNS,
    SCHEMA_VERSION,
    ensure_partitions,
    migrate,
    partition_name,
)
from atdata_ingest.testing.postgres import PostgresCluster
from atdata_ingest.testing.relay import ReplayRelay, realistic_frames
from atdata_ingest.writer import (
    INGESTER_LOCK_KEY,
    KILL_ENV,
    NOTIFY_CHANNEL,
    Batch,
    BatchWriter,
    WriterAborted,
)
from atdata_runtime.firehose.events import Create, Info
from atdata_runtime.firehose.frames import FrameError, decode_frame

SOURCE = "ws://127.0.0.1:1"
REPO = Path(__file__).resolve().parents[2]
HANG_GUARD = 120.0  # seconds: a hung test fails instead of blocking the run


@pytest.fixture(scope="module")
def templates(net: Any) -> list[bytes]:
    """Real frames of the local PDS (accounts, commits, identity, sync)."""
    return realistic_frames(net)


@pytest.fixture
def relay_frames(templates: list[bytes]) -> ReplayRelay:
    """An unstarted relay over real PDS frames: ``.frame(k)`` is frame ``k``."""
    return ReplayRelay(templates)


def _settings(dsn: str, **kw: Any) -> Settings:
    return Settings(database_url=dsn, relay_url=SOURCE, **kw)


def make_batch(relay: ReplayRelay, seqs: range | list[int]) -> Batch:
    """The batch the ingester would build from frames ``seqs``."""
    validate = RecordValidator("all")
    batch = Batch()
    for k in seqs:
        frame = decode_frame(relay.frame(k))
        rows, nbytes = event_rows(frame.event(), validate, seq_hint=k - 1)
        batch.rows.extend(rows)
        batch.nbytes += nbytes
        assert frame.seq == k
        batch.add_seq(k)
        batch.last_event_time = frame.time
    return batch


def expected_rows(relay: ReplayRelay, seqs: range) -> int:
    return len(make_batch(relay, seqs).rows)


async def _fetch(dsn: str, query: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        return list(await conn.fetch(query, *args))
    finally:
        await conn.close()


def fetch(dsn: str, query: str, *args: Any) -> list[asyncpg.Record]:
    return asyncio.run(_fetch(dsn, query, *args))


def cursor(dsn: str) -> asyncpg.Record:
    return fetch(dsn, "SELECT * FROM ingest_cursor")[0]


def stored_keys(dsn: str) -> list[tuple[int, int]]:
    return [
        (r["seq"], r["idx"])
        for r in fetch(dsn, "SELECT seq, idx FROM ingest_events ORDER BY seq, idx")
    ]


# -- one transaction ---------------------------------------------------------------


def test_batch_and_cursor_commit_together_and_notify(
    pg_dsn: str, relay_frames: ReplayRelay
) -> None:
    batch = make_batch(relay_frames, range(1, 61))

    async def go() -> tuple[Any, list[str]]:
        listener = await asyncpg.connect(pg_dsn)
        heard: list[str] = []
        await listener.add_listener(NOTIFY_CHANNEL, lambda *a: heard.append(a[3]))
        writer = BatchWriter(_settings(pg_dsn), source=SOURCE)
        try:
            assert await writer.open() == 0
            result = await writer.write(batch, buffer_fill=0.25, buffer_max=4000)
            for _ in range(100):
                if heard:
                    break
                await asyncio.sleep(0.02)
        finally:
            await writer.close()
            await listener.close()
        return result, heard

    result, heard = asyncio.run(go())
    assert result.stored == len(batch.rows) > 60  # commits carry several ops
    assert result.last_seq == 60
    assert heard == ["60"]
    row = cursor(pg_dsn)
    assert row["last_seq"] == 60
    assert row["source"] == SOURCE
    assert row["buffer_fill"] == pytest.approx(0.25)
    assert row["buffer_max"] == 4000
    assert row["last_event_time"] == batch.last_event_time
    assert row["ingester_pid"] == os.getpid()
    keys = stored_keys(pg_dsn)
    assert len(keys) == len(set(keys)) == len(batch.rows)
    assert {k[0] for k in keys} == set(range(1, 61))
    # records are the JSON data model; every row type is there
    kinds = fetch(
        pg_dsn,
        "SELECT event_type, action, count(*) AS n, count(record) AS r "
        "FROM ingest_events GROUP BY 1, 2",
    )
    seen = {(k["event_type"], k["action"]) for k in kinds}
    assert ("commit", "create") in seen and ("identity", None) in seen
    for k in kinds:
        if k["action"] == "delete":
            assert k["r"] == 0
        else:
            assert k["r"] == k["n"]


def test_cursor_guard_drops_already_stored_seqs(
    pg_dsn: str, relay_frames: ReplayRelay
) -> None:
    async def go() -> tuple[Any, Any]:
        writer = BatchWriter(_settings(pg_dsn), source=SOURCE)
        try:
            await writer.open()
            first = await writer.write(make_batch(relay_frames, range(1, 41)))
            # a relay replaying 21..60 after a reconnect, as one batch
            second = await writer.write(make_batch(relay_frames, range(21, 61)))
        finally:
            await writer.close()
        return first, second

    first, second = asyncio.run(go())
    assert second.dropped == expected_rows(relay_frames, range(21, 41)) > 0
    assert second.stored == expected_rows(relay_frames, range(41, 61))
    keys = stored_keys(pg_dsn)
    assert len(keys) == len(set(keys)) == first.stored + second.stored
    assert cursor(pg_dsn)["last_seq"] == 60


def test_retried_committed_batch_is_a_no_op(
    pg_dsn: str, relay_frames: ReplayRelay
) -> None:
    """A batch whose COMMIT outcome was unknown is written again: nothing is
    stored twice, not even rows without a seq of their own (#info)."""
    batch = make_batch(relay_frames, range(1, 11))
    rows, _ = event_rows(
        Info("OutdatedCursor", "too old"), RecordValidator("all"), seq_hint=10
    )
    batch.rows.extend(rows)

    async def go() -> tuple[Any, Any]:
        writer = BatchWriter(_settings(pg_dsn), source=SOURCE)
        try:
            await writer.open()
            return await writer.write(batch), await writer.write(batch)
        finally:
            await writer.close()

    first, again = asyncio.run(go())
    assert first.stored == len(batch.rows)
    assert again.already_committed and again.stored == 0
    infos = fetch(pg_dsn, "SELECT seq, idx, record FROM ingest_events WHERE idx = -1")
    assert [(r["seq"], r["idx"]) for r in infos] == [(10, -1)]
    assert len(stored_keys(pg_dsn)) == len(batch.rows)


def test_dead_letters_stored_counted_and_move_the_cursor(
    pg_dsn: str, relay_frames: ReplayRelay
) -> None:
    batch = make_batch(relay_frames, range(1, 6))
    relay = relay_frames
    relay.inject("bad_cid", at_seq=6)
    relay.inject("garbage", at_seq=7)
    for k in (6, 7):
        data = relay.frame(k)
        with pytest.raises(FrameError) as info:
            decode_frame(data)
        err = info.value
        batch.dead.append(
            dead_letter_row(
                data, rule=err.rule, reason=err.reason, location=err.location,
                seq=err.seq,
            )
        )  # fmt: skip
        if err.seq is not None:
            batch.add_seq(err.seq)

    async def go() -> None:
        writer = BatchWriter(_settings(pg_dsn), source=SOURCE)
        try:
            await writer.open()
            await writer.write(batch)
        finally:
            await writer.close()

    asyncio.run(go())
    dead = fetch(
        pg_dsn,
        "SELECT seq, rule, reason, location, frame, frame_size "
        "FROM ingest_dead_letters ORDER BY id",
    )
    assert [(d["seq"], d["rule"]) for d in dead] == [
        (6, "BLOCK_CID_MISMATCH"),
        (None, "FRAME_CBOR"),
    ]
    assert all(d["reason"] and d["frame"] for d in dead)
    assert dead[1]["frame"] == relay.frame(7) and dead[1]["frame_size"] == len(
        relay.frame(7)
    )
    row = cursor(pg_dsn)
    assert row["dead_letters"] == 2
    assert row["last_seq"] == 6  # the bad-CID frame's seq is passed


def test_refused_row_is_dead_lettered_and_the_rest_stored(
    pg_dsn: str, relay_frames: ReplayRelay
) -> None:
    """PostgreSQL refuses U+0000 in text: that one row becomes a dead letter
    (ROW_REJECTED), the batch's other rows and the cursor commit."""
    batch = make_batch(relay_frames, range(1, 31))
    bad = Create(
        seq=31,
        repo="did:plc:aaaaaaaaaaaaaaaaaaaaaaaa",
        collection="app.bsky.feed.post",
        rkey="bad\x00key",
        cid="bafyreib2rxk3rh6kzwq",
        record={"$type": "app.bsky.feed.post", "text": "nul \x00 inside"},
        rev="3kabcdefghijk",
        time=batch.last_event_time,
    )
    rows, _ = event_rows(bad, RecordValidator("all"))
    assert rows[0][12] == "RECORD_NUL"  # jsonb cannot hold U+0000 either
    batch.rows.extend(rows)
    batch.add_seq(31)

    async def go() -> Any:
        writer = BatchWriter(_settings(pg_dsn), source=SOURCE)
        try:
            await writer.open()
            return await writer.write(batch)
        finally:
            await writer.close()

    result = asyncio.run(go())
    assert result.stored == len(batch.rows) - 1
    assert result.dead_letters == 1
    dead = fetch(pg_dsn, "SELECT seq, rule, reason FROM ingest_dead_letters")
    assert [(d["seq"], d["rule"]) for d in dead] == [(31, "ROW_REJECTED")]
    assert "0x00" in dead[0]["reason"]
    assert cursor(pg_dsn)["last_seq"] == 31
    assert len(stored_keys(pg_dsn)) == len(batch.rows) - 1


# -- single ingester, one relay ----------------------------------------------------


def test_second_writer_is_refused_by_the_advisory_lock(pg_dsn: str) -> None:
    async def go() -> None:
        first = BatchWriter(_settings(pg_dsn, db_retry_seconds=0), source=SOURCE)
        second = BatchWriter(_settings(pg_dsn, db_retry_seconds=0), source=SOURCE)
        try:
            await first.open()
            with pytest.raises(LockHeld, match="another ingester"):
                await second.open()
            await first.close()
            await second.open()  # free again
        finally:
            await first.close()
            await second.close()

    asyncio.run(go())


def test_cursor_of_another_relay_is_a_config_error(
    pg_dsn: str, relay_frames: ReplayRelay
) -> None:
    async def go() -> None:
        writer = BatchWriter(_settings(pg_dsn), source=SOURCE)
        try:
            await writer.open()
            await writer.write(make_batch(relay_frames, range(1, 4)))
        finally:
            await writer.close()
        other = BatchWriter(_settings(pg_dsn), source="wss://relay.example")
        try:
            with pytest.raises(ConfigError, match="not the source of the stored"):
                await other.open()
        finally:
            await other.close()

    asyncio.run(go())
    assert cursor(pg_dsn)["source"] == SOURCE


def test_empty_cursor_takes_the_new_relay(pg_dsn: str) -> None:
    async def go() -> None:
        for source in (SOURCE, "wss://relay.example"):
            writer = BatchWriter(_settings(pg_dsn), source=source)
            try:
                assert await writer.open() == 0
            finally:
                await writer.close()

    asyncio.run(go())
    assert cursor(pg_dsn)["source"] == "wss://relay.example"


# -- a lost connection --------------------------------------------------------------


def test_lost_connection_is_retried_with_the_same_batch(
    pg_dsn: str, relay_frames: ReplayRelay
) -> None:
    """The writer's backend is terminated while its batch transaction is under
    way (deterministically: it waits for the cursor row, locked by another
    session, when it is terminated): the first attempt fails, the same batch is
    written again on a new connection, nothing twice."""

    async def go() -> Any:
        writer = BatchWriter(_settings(pg_dsn), source=SOURCE)
        admin = await asyncpg.connect(pg_dsn)
        locker = await asyncpg.connect(pg_dsn)
        try:
            await writer.open()
            await writer.write(make_batch(relay_frames, range(1, 11)))
            assert writer.conn is not None
            pid = writer.conn.get_server_pid()
            tx = locker.transaction()
            await tx.start()
            await locker.execute("SELECT 1 FROM ingest_cursor WHERE id FOR UPDATE")
            task = asyncio.create_task(
                writer.write(make_batch(relay_frames, range(11, 21)))
            )
            while not await admin.fetchval(
                "SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = $1",
                pid,
            ):
                assert not task.done()
                await asyncio.sleep(0.02)
            assert await admin.fetchval("SELECT pg_terminate_backend($1)", pid)
            await tx.rollback()
            result = await asyncio.wait_for(task, HANG_GUARD)
            assert writer.reconnects == 1
            return result
        finally:
            await writer.close()
            await locker.close()
            await admin.close()

    result = asyncio.run(go())
    assert result.attempts == 2
    assert cursor(pg_dsn)["last_seq"] == 20
    keys = stored_keys(pg_dsn)
    assert len(keys) == len(set(keys)) == expected_rows(relay_frames, range(1, 21))


# -- SIGKILL inside the transaction ---------------------------------------------------

_KILL_SCRIPT = textwrap.dedent(
    """
    import asyncio, pickle, sys
    from atdata_ingest.config import Settings
    from atdata_ingest.writer import BatchWriter

    dsn, source, path = sys.argv[1:4]
    batches = pickle.load(open(path, "rb"))

    async def go():
        writer = BatchWriter(Settings(database_url=dsn, relay_url=source), source=source)
        await writer.open()
        for batch in batches:
            await writer.write(batch)
            print("committed", batch.max_seq, flush=True)
        await writer.close()

    asyncio.run(go())
    """
)


@pytest.mark.parametrize(
    ("point", "committed"), [("after-copy", 20), ("after-commit", 40)]
)
def test_sigkill_inside_the_batch_transaction(
    pg_dsn: str, relay_frames: ReplayRelay, tmp_path: Path, point: str, committed: int
) -> None:
    """SIGKILL after the second batch's COPY, before its COMMIT: neither its rows
    nor the cursor advance; after its COMMIT: both did."""
    batches = [make_batch(relay_frames, range(1, 21))]
    batches.append(make_batch(relay_frames, range(21, 41)))
    batches.append(make_batch(relay_frames, range(41, 61)))
    path = tmp_path / "batches.pkl"
    path.write_bytes(pickle.dumps(batches))
    env = {**os.environ, KILL_ENV: f"{point}:2"}
    done = subprocess.run(
        [sys.executable, "-c", _KILL_SCRIPT, pg_dsn, SOURCE, str(path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
    )
    assert done.returncode == -signal.SIGKILL, done.stderr
    # the kill comes before the second batch is reported, in both cases
    assert done.stdout.split() == ["committed", "20"]
    assert cursor(pg_dsn)["last_seq"] == committed
    keys = stored_keys(pg_dsn)
    assert (
        len(keys)
        == len(set(keys))
        == expected_rows(relay_frames, range(1, committed + 1))
    )
    assert {k[0] for k in keys} == set(range(1, committed + 1))


# -- COPY, never one INSERT per event -------------------------------------------------


@pytest.fixture(scope="module")
def pg_statements() -> Iterator[PostgresCluster]:
    """A cluster with ``pg_stat_statements`` loaded (statements counted)."""
    with PostgresCluster(
        settings={
            "shared_preload_libraries": "pg_stat_statements",
            "pg_stat_statements.track_utility": "on",
        }
    ) as cluster:
        yield cluster


def test_batches_are_copies_not_inserts_per_event(
    pg_statements: PostgresCluster, relay_frames: ReplayRelay
) -> None:
    dsn = pg_statements.create_database("copies")

    async def go() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(dsn)
        try:
            await migrate(conn)
            await conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
            await conn.execute("SELECT pg_stat_statements_reset()")
        finally:
            await conn.close()
        writer = BatchWriter(_settings(dsn), source=SOURCE)
        try:
            await writer.open()
            for lo in range(1, 301, 100):
                await writer.write(make_batch(relay_frames, range(lo, lo + 100)))
        finally:
            await writer.close()
        conn = await asyncpg.connect(dsn)
        try:
            return list(
                await conn.fetch(
                    "SELECT query, calls, rows FROM pg_stat_statements s "
                    "JOIN pg_database d ON d.oid = s.dbid "
                    "WHERE d.datname = 'copies' AND query ILIKE '%ingest_events%'"
                )
            )
        finally:
            await conn.close()

    stats = asyncio.run(go())
    total = expected_rows(relay_frames, range(1, 301))
    inserts = [s for s in stats if s["query"].lstrip().upper().startswith("INSERT")]
    copies = [s for s in stats if s["query"].lstrip().upper().startswith("COPY")]
    assert not inserts, inserts
    assert sum(s["calls"] for s in copies) == 3  # one COPY per batch
    assert sum(s["rows"] for s in copies) == total > 300


# -- verify_rule, last_info ------------------------------------------------------------


def _first(relay: ReplayRelay, kind: str) -> int:
    """The first frame number whose frame is of ``kind`` (commits: with ops)."""
    for k in range(1, relay.templates + 1):
        frame = decode_frame(relay.frame(k))
        if frame.kind == kind and (kind != "commit" or frame.ops):
            return k
    raise AssertionError(f"no {kind} frame among the templates")


def test_verify_rule_and_last_info_are_stored(
    pg_dsn: str, relay_frames: ReplayRelay
) -> None:
    """A commit not verified keeps its verdict's rule on every operation row; a
    verified one has none whatever rule is passed; a #sync carries its own; an
    #info is kept in the cursor row (last_info) and a later batch without one
    leaves it there."""
    validate = RecordValidator("all")
    k_commit = _first(relay_frames, "commit")
    k_sync = _first(relay_frames, "sync")
    stale = decode_frame(relay_frames.frame(k_commit)).event()
    good = decode_frame(relay_frames.frame(k_commit)).event(verified=True)
    sync = decode_frame(relay_frames.frame(k_sync)).event()
    rows_stale, _ = event_rows(stale, validate, verify_rule="REV_STALE")
    rows_good, _ = event_rows(good, validate, verify_rule="REV_STALE")
    rows_sync, _ = event_rows(
        sync, validate, verified=None, verify_rule="IDENTITY_UNRESOLVED"
    )
    info = Info("OutdatedCursor", "cursor \x00 too old")
    rows_info, _ = event_rows(info, validate, seq_hint=k_sync)
    # the good commit stored under a later seq (the log is keyed by seq)
    top = max(k_commit, k_sync) + 1
    rows_good = [(top, *r[1:]) for r in rows_good]
    at = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    first = Batch(rows=[*rows_stale, *rows_sync, *rows_info])
    first.add_seq(max(k_commit, k_sync))
    first.last_info = info_json(info, after_seq=k_sync, received_at=at)
    second = Batch(rows=rows_good)
    second.add_seq(top)

    async def go() -> list[Any]:
        writer = BatchWriter(_settings(pg_dsn), source=SOURCE)
        try:
            await writer.open()
            query = "SELECT last_info FROM ingest_cursor"
            await writer.write(first)
            after_first = (await _fetch(pg_dsn, query))[0][0]
            await writer.write(second)
            return [after_first, (await _fetch(pg_dsn, query))[0][0]]
        finally:
            await writer.close()

    after_first, after_second = asyncio.run(go())
    got = fetch(
        pg_dsn,
        "SELECT seq, idx, event_type, verified, verify_rule FROM ingest_events "
        "ORDER BY seq, idx",
    )
    by_seq: dict[int, set[tuple[Any, ...]]] = {}
    for r in got:
        by_seq.setdefault(r["seq"], set()).add(
            (r["event_type"], r["verified"], r["verify_rule"])
        )
    assert by_seq[k_commit] == {("commit", None, "REV_STALE")}
    assert len([r for r in got if r["seq"] == k_commit]) == len(rows_stale) >= 1
    assert by_seq[k_sync] == {
        ("sync", None, "IDENTITY_UNRESOLVED"),
        ("info", None, None),
    }
    assert by_seq[top] == {("commit", True, None)}
    last = orjson.loads(after_first)
    assert last == {
        "name": "OutdatedCursor",
        "message": "cursor \ufffd too old",  # jsonb cannot hold U+0000
        "after_seq": k_sync,
        "received_at": "2026-01-02T03:04:05Z",
    }
    assert orjson.loads(after_second) == last  # no #info in the second batch


# -- migrations ---------------------------------------------------------------------------

#: ingest_meta, ingest_cursor and ingest_events exactly as schema version 1
#: created them (before verify_rule and last_info).
_SCHEMA_1 = """
CREATE TABLE ingest_meta (key text PRIMARY KEY, value text NOT NULL);
INSERT INTO ingest_meta VALUES ('schema_version', '1');
CREATE TABLE ingest_cursor (
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
    ingester_started_at timestamptz
);
INSERT INTO ingest_cursor (id, source, last_seq) VALUES (true, 'ws://127.0.0.1:1', 7);
CREATE TABLE ingest_events (
    seq bigint NOT NULL,
    idx integer NOT NULL,
    event_type text NOT NULL,
    action text,
    repo text NOT NULL,
    collection text COLLATE "C",
    rkey text,
    cid text,
    prev_cid text,
    rev text,
    commit_cid text,
    record jsonb,
    valid text,
    verified boolean,
    event_time timestamptz,
    indexed_at timestamptz NOT NULL DEFAULT now()
) PARTITION BY RANGE (indexed_at);
CREATE TABLE ingest_events_default PARTITION OF ingest_events DEFAULT;
"""
_SCHEMA_1_ROWS = """
INSERT INTO ingest_events (seq, idx, event_type, repo, indexed_at)
    VALUES (7, 0, 'identity', 'did:plc:old', now()),
           (6, 0, 'identity', 'did:plc:old', '1999-01-01');
"""


def test_migrate_upgrades_a_schema_1_database(
    pg: PostgresCluster, relay_frames: ReplayRelay
) -> None:
    """A database made by schema 1 (with a daily partition and rows) gets
    ``verify_rule`` on ingest_events and every partition, ``last_info`` on the
    cursor, the relay state columns (schema 3), schema_version 3; the old rows
    and the cursor are kept; the writer
    then stores rule and #info there. A second migrate on the up-to-date
    database takes no ACCESS EXCLUSIVE lock (it does not wait behind a reader of
    the log)."""
    dsn = pg.create_database("schema1")

    async def go() -> dict[str, Any]:
        conn = await asyncpg.connect(dsn)
        reader = await asyncpg.connect(dsn)
        try:
            await conn.execute(_SCHEMA_1)
            await ensure_partitions(conn)  # today's partitions, as schema 1 made
            await conn.execute(_SCHEMA_1_ROWS)  # a daily partition and the default
            await migrate(conn)
            out: dict[str, Any] = {}
            out["tables"] = [
                r["relname"]
                for r in await conn.fetch(
                    "SELECT c.relname FROM pg_attribute a JOIN pg_class c "
                    "ON c.oid = a.attrelid WHERE a.attname = 'verify_rule' "
                    "AND NOT a.attisdropped ORDER BY 1"
                )
            ]
            out["partitions"] = [
                r[0]
                for r in await conn.fetch(
                    "SELECT inhrelid::regclass::text FROM pg_inherits "
                    "WHERE inhparent = 'ingest_events'::regclass ORDER BY 1"
                )
            ]
            out["version"] = await conn.fetchval(
                "SELECT value FROM ingest_meta WHERE key = 'schema_version'"
            )
            out["old"] = list(
                await conn.fetch(
                    "SELECT seq, verify_rule FROM ingest_events ORDER BY seq"
                )
            )
            out["cursor"] = await conn.fetchrow(
                "SELECT last_seq, source, last_info FROM ingest_cursor"
            )
            # up to date: migrate again while a reader holds ACCESS SHARE
            async with reader.transaction():
                await reader.fetch("SELECT 1 FROM ingest_events LIMIT 1")
                await conn.execute("SET lock_timeout = '10s'")
                await migrate(conn)  # LockNotAvailableError if it ALTERed
                await conn.execute("RESET lock_timeout")
            return out
        finally:
            await reader.close()
            await conn.close()

    out = asyncio.run(go())
    assert out["version"] == str(SCHEMA_VERSION) == "3"
    assert set(out["tables"]) == {"ingest_events", *out["partitions"]}
    assert "ingest_events_default" in out["partitions"] and len(out["partitions"]) > 1
    assert [(r["seq"], r["verify_rule"]) for r in out["old"]] == [(6, None), (7, None)]
    assert tuple(out["cursor"]) == (7, SOURCE, None)
    relay_columns = fetch(
        dsn,
        "SELECT relay_state, relay_error, relay_state_since, last_frame_at "
        "FROM ingest_cursor",
    )
    assert tuple(relay_columns[0]) == (None, None, None, None)  # schema 3, added
    # the upgraded database takes rows with the new column, in EVENT_COLUMNS order
    names = fetch(
        dsn,
        "SELECT attname FROM pg_attribute WHERE attrelid = 'ingest_events'::regclass "
        "AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
    )
    assert tuple(r["attname"] for r in names) == EVENT_COLUMNS
    k = _first(relay_frames, "commit")
    rows, _ = event_rows(
        decode_frame(relay_frames.frame(k)).event(),
        RecordValidator("all"),
        verify_rule="PROOF_INCOMPLETE",
    )
    rows = [(k + 7, *r[1:]) for r in rows]
    batch = Batch(rows=rows)
    batch.add_seq(k + 7)
    batch.last_info = info_json(
        Info("OutdatedCursor"), after_seq=7, received_at=dt.datetime.now(dt.UTC)
    )

    async def write() -> None:
        writer = BatchWriter(_settings(dsn), source=SOURCE)
        try:
            assert await writer.open() == 7
            await writer.write(batch)
        finally:
            await writer.close()

    asyncio.run(write())
    new = fetch(dsn, "SELECT DISTINCT verify_rule FROM ingest_events WHERE seq > 7")
    assert [r["verify_rule"] for r in new] == ["PROOF_INCOMPLETE"]
    info = orjson.loads(cursor(dsn)["last_info"])
    assert (info["name"], info["message"], info["after_seq"]) == (
        "OutdatedCursor",
        None,
        7,
    )


# -- abort (exit 75) ----------------------------------------------------------------------


def test_abort_ends_a_write_blocked_by_a_lock_and_rolls_it_back(
    pg_dsn: str, relay_frames: ReplayRelay
) -> None:
    """A batch waits on a locked table; :meth:`BatchWriter.abort` terminates the
    connection: the write ends (WriterAborted) while the lock is still held,
    the server ends the waiting backend (freeing the advisory lock) without
    committing anything of the batch, and a new writer resumes from the cursor
    the last commit left."""
    first = make_batch(relay_frames, range(1, 21))
    blocked = make_batch(relay_frames, range(21, 41))

    async def go() -> tuple[int, int]:
        writer = BatchWriter(_settings(pg_dsn), source=SOURCE)
        locker = await asyncpg.connect(pg_dsn)
        # outside the locker's transaction: pg_stat_activity is a snapshot per
        # transaction
        admin = await asyncpg.connect(pg_dsn)
        try:
            await writer.open()
            await writer.write(first)
            assert writer.conn is not None
            pid = writer.conn.get_server_pid()
            tx = locker.transaction()
            await tx.start()
            await locker.execute("LOCK TABLE ingest_events IN ACCESS EXCLUSIVE MODE")
            task = asyncio.create_task(writer.write(blocked))
            while not await admin.fetchval(
                "SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = $1",
                pid,
            ):
                assert not task.done()
                await asyncio.sleep(0.02)
            writer.abort()
            with pytest.raises(WriterAborted):
                await asyncio.wait_for(task, HANG_GUARD)  # lock still held here
            with pytest.raises(WriterAborted):
                await writer.write(blocked)  # an aborted writer takes no more
            # the server notices the closed socket while waiting on the lock
            while await admin.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = $1", pid
            ):
                await asyncio.sleep(0.05)
            await tx.rollback()
        finally:
            await admin.close()
            await locker.close()
            await writer.close()
        again = BatchWriter(_settings(pg_dsn, db_retry_seconds=0), source=SOURCE)
        try:
            resumed = await again.open()  # the advisory lock is free
            return resumed, (await again.write(blocked)).stored
        finally:
            await again.close()

    resumed, stored = asyncio.run(asyncio.wait_for(go(), HANG_GUARD * 2))
    assert resumed == 20
    assert stored == len(blocked.rows)
    keys = stored_keys(pg_dsn)
    assert len(keys) == len(set(keys)) == expected_rows(relay_frames, range(1, 41))
    assert cursor(pg_dsn)["last_seq"] == 40


# -- lost commits (cursor regressed) ------------------------------------------------------


def test_a_stored_cursor_below_what_was_committed_exits_75(
    pg_dsn: str, relay_frames: ReplayRelay, caplog: pytest.LogCaptureFixture
) -> None:
    """PostgreSQL loses acknowledged commits (``synchronous_commit`` off and a
    crash, or a failover; here the lost tail is removed by hand, cursor row
    first so that no batch slips in between): the next batch finds the stored
    cursor below what this writer committed and exits 75 (CursorRegressed,
    logged CRITICAL) without writing over the hole; a new writer resumes from
    the stored cursor."""

    async def go() -> tuple[CursorRegressed, int, int]:
        writer = BatchWriter(_settings(pg_dsn), source=SOURCE)
        other = await asyncpg.connect(pg_dsn)
        try:
            await writer.open()
            await writer.write(make_batch(relay_frames, range(1, 11)))
            async with other.transaction():
                await other.execute("UPDATE ingest_cursor SET last_seq = 5")
                await other.execute("DELETE FROM ingest_events WHERE seq > 5")
            with pytest.raises(CursorRegressed) as info:
                await writer.write(make_batch(relay_frames, range(11, 21)))
        finally:
            await other.close()
            await writer.close()
        again = BatchWriter(_settings(pg_dsn), source=SOURCE)
        try:
            resumed = await again.open()
            # the relay replays 6..20 from the stored cursor
            stored = (await again.write(make_batch(relay_frames, range(6, 21)))).stored
        finally:
            await again.close()
        return info.value, resumed, stored

    err, resumed, stored = asyncio.run(go())
    assert err.status == exits.TEMPFAIL == 75
    assert "cursor regressed" in str(err) and "5" in str(err)
    assert any(
        r.levelno == logging.CRITICAL and "CURSOR REGRESSED" in r.getMessage()
        for r in caplog.records
    )
    assert resumed == 5
    assert stored == expected_rows(relay_frames, range(6, 21))
    keys = stored_keys(pg_dsn)
    assert len(keys) == len(set(keys)) == expected_rows(relay_frames, range(1, 21))
    assert {k[0] for k in keys} == set(range(1, 21))  # no hole


# -- partitions: lock timeouts, rows in the default partition ---------------------------


def _day(n: int) -> dt.date:
    return dt.datetime.now(dt.UTC).date() + dt.timedelta(days=n)


def test_partition_creation_skips_busy_locks_and_retries_later(
    pg_dsn: str, relay_frames: ReplayRelay, caplog: pytest.LogCaptureFixture
) -> None:
    """A reader holds ACCESS SHARE on ingest_events while the day-after-tomorrow
    partition is due: its creation gives up after the lock timeout (the batch is
    written, new readers are not queued behind a waiting ACCESS EXCLUSIVE), is
    logged, retried within a minute rather than an hour, and done once the
    reader is gone. Without a lock timeout the write waits as long as the
    reader (here: for ever)."""
    name = partition_name(_day(2))

    async def go() -> tuple[bool, bool, float, bool]:
        writer = BatchWriter(_settings(pg_dsn), source=SOURCE)
        admin = await asyncpg.connect(pg_dsn)
        reader = await asyncpg.connect(pg_dsn)
        try:
            await writer.open()
            await admin.execute(f"DROP TABLE {name}")
            tx = reader.transaction()
            await tx.start()
            await reader.fetchval("SELECT count(*) FROM ingest_events")
            writer.partitions_due = 0.0  # due now
            await asyncio.wait_for(
                writer.write(make_batch(relay_frames, range(1, 11))), HANG_GUARD
            )
            exists_while_read = await admin.fetchval(
                "SELECT to_regclass($1) IS NOT NULL", name
            )
            # a new reader is not queued behind a waiting DDL
            await asyncio.wait_for(
                admin.fetchval("SELECT count(*) FROM ingest_events"), HANG_GUARD
            )
            still_reading = reader.is_in_transaction()
            retry_in = writer.partitions_due - time.time()
            await tx.rollback()
            writer.partitions_due = 0.0  # the retry is due
            await writer.heartbeat(buffer_fill=0.0, buffer_max=0)
            exists_after = await admin.fetchval(
                "SELECT to_regclass($1) IS NOT NULL", name
            )
            return exists_while_read, still_reading, retry_in, exists_after
        finally:
            await reader.close()
            await admin.close()
            await writer.close()

    exists_while_read, still_reading, retry_in, exists_after = asyncio.run(go())
    assert not exists_while_read and still_reading
    assert 0 < retry_in <= 60  # a minute, not the hourly check
    assert exists_after
    assert f"partitions {name} not created: their locks were busy" in caplog.text
    assert cursor(pg_dsn)["last_seq"] == 10


def test_open_does_not_wait_for_partitions_behind_a_reader(pg_dsn: str) -> None:
    """At the start, today's partitions exist and a later one is missing while a
    reader holds ACCESS SHARE: ``open`` (``migrate``) does not wait for it and
    schedules a retry; the start does not fail."""
    name = partition_name(_day(2))

    async def go() -> tuple[int, float, bool]:
        admin = await asyncpg.connect(pg_dsn)
        reader = await asyncpg.connect(pg_dsn)
        writer = BatchWriter(_settings(pg_dsn), source=SOURCE)
        try:
            await admin.execute(f"DROP TABLE {name}")
            async with reader.transaction():
                await reader.fetchval("SELECT count(*) FROM ingest_events")
                opened = await asyncio.wait_for(writer.open(), HANG_GUARD)
                exists = await admin.fetchval(
                    "SELECT to_regclass($1) IS NOT NULL", name
                )
            return opened, writer.partitions_due - time.time(), exists
        finally:
            await writer.close()
            await reader.close()
            await admin.close()

    opened, retry_in, exists = asyncio.run(go())
    assert opened == 0 and not exists
    assert 0 < retry_in <= 60


def test_an_upgrade_behind_a_reader_gives_up_instead_of_queueing(pg_dsn: str) -> None:
    """An upgrade (a schema-3 column missing: ALTER TABLE, ACCESS EXCLUSIVE) while
    a reader holds the cursor table: ``migrate`` tries ``attempts`` times under
    its lock timeout, then raises LockNotAvailableError (the writer's start
    turns it into exit 74) instead of queueing every reader behind it; once the
    reader is gone it upgrades."""

    async def go() -> tuple[type[BaseException], str, bool]:
        conn = await asyncpg.connect(pg_dsn)
        reader = await asyncpg.connect(pg_dsn)
        try:
            await conn.execute("ALTER TABLE ingest_cursor DROP COLUMN last_frame_at")
            await conn.execute(
                "UPDATE ingest_meta SET value = '2' WHERE key = 'schema_version'"
            )
            async with reader.transaction():
                await reader.fetchval("SELECT last_seq FROM ingest_cursor")
                with pytest.raises(asyncpg.LockNotAvailableError) as info:
                    await asyncio.wait_for(
                        migrate(conn, lock_timeout=0.2, attempts=2), HANG_GUARD
                    )
                writer = BatchWriter(_settings(pg_dsn), source=SOURCE)
                try:
                    with pytest.raises(exits.DatabaseUnavailable) as refused:
                        await asyncio.wait_for(writer.open(), HANG_GUARD)
                finally:
                    await writer.close()
            await migrate(conn)
            has = await conn.fetchval(
                "SELECT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = "
                "'ingest_cursor'::regclass AND attname = 'last_frame_at' "
                "AND NOT attisdropped)"
            )
            return info.type, str(refused.value), bool(has)
        finally:
            await reader.close()
            await conn.close()

    kind, message, has = asyncio.run(go())
    assert kind is asyncpg.LockNotAvailableError
    assert "could not take its locks" in message and "schema 3" in message
    assert has
    assert fetch(pg_dsn, "SELECT value FROM ingest_meta WHERE key = 'schema_version'")[
        0
    ]["value"] == str(SCHEMA_VERSION)


def test_rows_of_a_day_in_the_default_partition_do_not_stop_the_writer(
    pg_dsn: str, relay_frames: ReplayRelay, caplog: pytest.LogCaptureFixture
) -> None:
    """Rows of a future day already sit in ``ingest_events_default`` (its daily
    partition was missing when they were written): creating that partition
    raises CheckViolationError; the start and the periodic check log it and go
    on (the rows stay in the default partition), and a new UTC date makes the
    check due at once (wall clock)."""
    name = partition_name(_day(2))
    at = dt.datetime.combine(_day(2), dt.time(1), dt.UTC)

    async def go() -> tuple[int, bool, int]:
        admin = await asyncpg.connect(pg_dsn)
        writer = BatchWriter(_settings(pg_dsn), source=SOURCE)
        try:
            await admin.execute(f"DROP TABLE {name}")
            await admin.execute(
                "INSERT INTO ingest_events (seq, idx, event_type, repo, indexed_at) "
                "VALUES (999999, 0, 'identity', 'did:plc:future', $1)",
                at,
            )
            await writer.open()
            await writer.write(make_batch(relay_frames, range(1, 11)))
            checked_before = caplog.text.count(f"partition {name} not created")
            # a new UTC date: due now, whatever the hourly schedule says
            writer.partitions_due = time.time() + 3600
            writer._partitions_day = _day(-1)
            await admin.execute(
                "DROP TABLE " + partition_name(_day(1))
            )  # to see the check run
            await writer.heartbeat(buffer_fill=0.0, buffer_max=0)
            recreated = await admin.fetchval(
                "SELECT to_regclass($1) IS NOT NULL", partition_name(_day(1))
            )
            in_default = await admin.fetchval(
                "SELECT count(*) FROM ingest_events_default WHERE seq = 999999"
            )
            return checked_before, recreated, in_default
        finally:
            await writer.close()
            await admin.close()

    logged, recreated, in_default = asyncio.run(go())
    assert logged == 1  # once, at the start; not repeated at each check
    assert "already holds rows of that day" in caplog.text
    assert recreated and in_default == 1
    assert cursor(pg_dsn)["last_seq"] == 10


# -- the lock holder ---------------------------------------------------------------------------


def test_lock_held_names_the_holders_session_not_a_decoy(pg_dsn: str) -> None:
    """Exit 73's message names the session holding the ingester's advisory lock
    (application_name, PostgreSQL backend pid, labelled as such), matched by
    classid, objid and objsubid: sessions holding advisory locks with the same
    low 32 bits, or the same two halves as two int4 keys, are not it."""
    low = INGESTER_LOCK_KEY & 0xFFFFFFFF
    high = (INGESTER_LOCK_KEY >> 32) & 0xFFFFFFFF

    async def go() -> tuple[str, int]:
        decoys = [
            await asyncpg.connect(
                pg_dsn, server_settings={"application_name": f"decoy{i}"}
            )
            for i in range(2)
        ]
        holder = await asyncpg.connect(
            pg_dsn, server_settings={"application_name": "the-holder"}
        )
        try:
            await decoys[0].execute("SELECT pg_advisory_lock($1)", (7 << 32) | low)
            await decoys[1].execute("SELECT pg_advisory_lock($1, $2)", high, low)
            await holder.execute("SELECT pg_advisory_lock($1)", INGESTER_LOCK_KEY)
            writer = BatchWriter(_settings(pg_dsn, db_retry_seconds=0), source=SOURCE)
            try:
                with pytest.raises(LockHeld) as info:
                    await writer.open()
            finally:
                await writer.close()
            return str(info.value), holder.get_server_pid()
        finally:
            for conn in (*decoys, holder):
                await conn.close()

    message, pid = asyncio.run(go())
    assert "application_name='the-holder'" in message
    assert f"PostgreSQL backend pid {pid}" in message
    assert "decoy" not in message
    assert "server pid" not in message
