"""The ingester end to end: the replay relay (real PDS frames) or the real local PDS
→ WebSocket → decode → buffer → COPY into a real PostgreSQL 15.

Shown: every seq stored exactly once and resumed at cursor + 1 after a clean stop;
SIGTERM flushes what was read (nothing lost); a stop while behind the relay aborts
the stream after the flush instead of waiting for a closing handshake; malformed
frames land in the dead-letter table and the stream goes on, an #info is also kept
in the cursor row; relay disconnects reconnect with no gap and no duplicate; a
database that stops writing (table locked) makes the buffer overflow, the process
exits 75 on purpose (writer connection terminated, the time to the exit logged),
and the next run resumes from the cursor with nothing lost; records published on
the real PDS arrive as typed rows (create, update, delete, #identity, #account),
dataset commits with verified signatures; replayed commits are stored with their
verdict's rule (REV_STALE); a first start with ``start=oldest`` stores what the
PDS published before, ``live`` does not.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import itertools
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, Self

import asyncpg
import cbrrr
import httpx
import orjson
import pytest
from atdata_ingest import exits
from atdata_ingest.cli import build_parser, run_overrides
from atdata_ingest.config import Settings
from atdata_ingest.ingester import Ingester, run
from atdata_ingest.testing.relay import (
    ReplayRelay,
    car_blocks,
    realistic_frames,
    split_frame,
)
from atdata_runtime.firehose.frames import decode_frame
from websockets.asyncio.client import connect as ws_connect

from ..conftest import flat_schema_record

REPO = Path(__file__).resolve().parents[2]
HANG_GUARD = 180.0  # seconds: a hung test fails instead of blocking the run


@pytest.fixture(scope="module")
def templates(net: Any) -> list[bytes]:
    """Real frames of the local PDS (accounts, commits, identity, sync)."""
    return realistic_frames(net)


def settings_for(dsn: str, url: str, **kw: Any) -> Settings:
    values: dict[str, Any] = {
        "verify": "none",
        "log_interval_seconds": 1.0,
        "reconnect_min_seconds": 0.05,
        "reconnect_max_seconds": 0.5,
        "db_retry_seconds": 30.0,
    }
    values.update(kw)
    return Settings(database_url=dsn, relay_url=url, **values)


async def ingest_until(
    settings: Settings, done: Callable[[Ingester], bool]
) -> tuple[int, Ingester]:
    """Run an ingester until ``done(ingester)`` (then a clean stop) or until it
    exits by itself; return its exit status."""
    ingester = Ingester(settings)
    task = asyncio.create_task(ingester.run())
    deadline = time.monotonic() + HANG_GUARD
    while not task.done() and not done(ingester):
        if time.monotonic() > deadline:
            ingester.stop()
            await task
            raise AssertionError(f"hang guard: {ingester.stats}")
        await asyncio.sleep(0.02)
    if not task.done():
        ingester.stop()
    return await task, ingester


def committed(n: int) -> Callable[[Ingester], bool]:
    return lambda ing: ing.stats.last_committed_seq >= n


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


def rows_per_frame(relay: ReplayRelay, seq: int) -> int:
    frame = decode_frame(relay.frame(seq))
    if frame.kind == "commit":
        return max(1, len(frame.ops))
    return 1


def assert_exactly_once(dsn: str, relay: ReplayRelay, seqs: set[int] | range) -> None:
    """Each seq of ``seqs`` is stored with exactly the rows of its frame (no
    duplicate ``(seq, idx)``), and no other seq is stored."""
    keys = [
        (r["seq"], r["idx"])
        for r in fetch(dsn, "SELECT seq, idx FROM ingest_events WHERE idx >= 0")
    ]
    dupes = [k for k, n in Counter(keys).items() if n > 1]
    assert not dupes, dupes[:10]
    per_seq = Counter(seq for seq, _ in keys)
    want = set(seqs)
    assert set(per_seq) == want, (
        sorted(want - set(per_seq))[:10],
        sorted(set(per_seq) - want)[:10],
    )
    relay_n = {s: rows_per_frame(relay, s) for s in want}
    wrong = {s: (per_seq[s], relay_n[s]) for s in want if per_seq[s] != relay_n[s]}
    assert not wrong, list(wrong.items())[:10]


# -- exactly once, resume ----------------------------------------------------------


def test_every_seq_once_and_resume_after_a_clean_stop(
    pg_dsn: str, templates: list[bytes]
) -> None:
    with ReplayRelay(templates, total=None, rate=3000) as relay:
        s = settings_for(pg_dsn, relay.url)
        rc, first = asyncio.run(ingest_until(s, committed(400)))
        assert rc == exits.OK
        row = cursor(pg_dsn)
        stop_at = row["last_seq"]
        assert stop_at >= 400
        assert row["ingester_pid"] is None and row["buffer_fill"] == 0  # stopped
        assert row["buffer_max"] == s.buffer_max and row["ingester_started_at"]
        assert first.stats.dead_letters == first.stats.duplicates == 0
        assert_exactly_once(pg_dsn, relay, range(1, stop_at + 1))

        rc, second = asyncio.run(ingest_until(s, committed(stop_at + 400)))
        assert rc == exits.OK
        conns = relay.connections()
        assert conns[-1].cursor == stop_at  # resumed at cursor + 1
        assert conns[-1].seqs[0][0] == stop_at + 1
        end = cursor(pg_dsn)["last_seq"]
        assert_exactly_once(pg_dsn, relay, range(1, end + 1))
        assert cursor(pg_dsn)["gaps"] == 0
        assert second.stats.gaps == second.stats.duplicates == 0


def test_sigterm_flushes_everything_read(pg_dsn: str, templates: list[bytes]) -> None:
    """``atdata-ingest run`` with batches that would not flush for 10 s: at SIGTERM
    nothing is committed yet; after it, everything read is, and the exit is 0."""
    with ReplayRelay(templates, total=None, rate=2000) as relay:
        env = {
            **os.environ,
            "ATDATA_INGEST_DATABASE_URL": pg_dsn,
            "ATDATA_INGEST_RELAY_URL": relay.url,
            "ATDATA_INGEST_VERIFY": "none",
            "ATDATA_INGEST_FLUSH_MS": "10000",
            "ATDATA_INGEST_BATCH_MAX": "10000",
            "ATDATA_INGEST_BUFFER_MAX": "50000",
        }
        proc = subprocess.Popen(
            [sys.executable, "-m", "atdata_ingest", "run"],
            env=env,
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            relay.wait_for(lambda: relay.frames_sent >= 1000, timeout=HANG_GUARD)
            before = cursor(pg_dsn)["last_seq"]
            proc.send_signal(signal.SIGTERM)
            out, _ = proc.communicate(timeout=HANG_GUARD)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.returncode == exits.OK, out
        assert before == 0, "the first batch flushed before SIGTERM: test is moot"
        after = cursor(pg_dsn)["last_seq"]
        assert after > 0 and "stopped cleanly" in out, out
        assert_exactly_once(pg_dsn, relay, range(1, after + 1))


# -- malformed frames ----------------------------------------------------------------


def test_malformed_frames_are_dead_lettered_and_the_stream_goes_on(
    pg_dsn: str, templates: list[bytes]
) -> None:
    total = 240
    with ReplayRelay(templates, total=total) as relay:
        relay.inject("garbage", at_seq=50)
        relay.inject("truncated", at_seq=60)
        relay.inject("bad_cid", at_seq=70)
        relay.inject("unknown_type", at_seq=80)
        relay.inject("info", at_seq=90, message="replay window passed")
        relay.inject("error_frame", at_seq=100, error="InjectedError")
        s = settings_for(pg_dsn, relay.url)
        rc, ing = asyncio.run(ingest_until(s, committed(total)))
    assert rc == exits.OK
    dead = fetch(
        pg_dsn,
        "SELECT seq, rule, reason, frame_size, length(frame) AS kept "
        "FROM ingest_dead_letters ORDER BY id",
    )
    assert [(d["seq"], d["rule"]) for d in dead] == [
        (None, "FRAME_CBOR"),  # garbage: no header decodes
        (None, "FRAME_CBOR"),  # truncated: the body does not decode
        (70, "BLOCK_CID_MISMATCH"),
    ]
    assert all(d["reason"] and d["kept"] == d["frame_size"] > 0 for d in dead)
    row = cursor(pg_dsn)
    assert row["dead_letters"] == 3 and row["last_seq"] == total
    assert row["gaps"] == 2  # the two frames whose seq could not be read
    assert ing.stats.unknown == 1 and ing.stats.error_frames == 1
    assert ing.stats.reconnects >= 1  # the relay closes after its error frame
    info = fetch(
        pg_dsn, "SELECT seq, record FROM ingest_events WHERE event_type = 'info'"
    )
    assert [r["seq"] for r in info] == [89]
    assert "replay window passed" in info[0]["record"]
    # the #info row sits at seq 89, behind a consumer already past it: the
    # cursor row keeps it too (for /health)
    last = orjson.loads(row["last_info"])
    assert {k: last[k] for k in ("name", "message", "after_seq")} == {
        "name": "OutdatedCursor",
        "message": "replay window passed",
        "after_seq": 89,
    }
    received = dt.datetime.fromisoformat(last["received_at"])
    assert received.tzinfo is not None and received <= dt.datetime.now(dt.UTC)
    assert_exactly_once(pg_dsn, relay, set(range(1, total + 1)) - {50, 60, 70, 80})


# -- relay disconnects -----------------------------------------------------------------


def test_relay_disconnects_reconnect_without_gap_or_duplicate(
    pg_dsn: str, templates: list[bytes]
) -> None:
    with ReplayRelay(templates, total=None, rate=3000) as relay:
        s = settings_for(pg_dsn, relay.url)
        kicks: list[int] = []
        marks = [0]

        def done(ing: Ingester) -> bool:
            # kick each connection once it has delivered 200 more committed seqs
            seq = ing.stats.last_committed_seq
            connected = ing.stats.connects == len(kicks) + 1
            if len(kicks) < 3 and connected and seq >= marks[-1] + 200:
                kicks.append(relay.disconnect_all())
                marks.append(seq)
            return (
                len(kicks) == 3 and ing.stats.connects == 4 and seq >= marks[-1] + 200
            )

        rc, ing = asyncio.run(ingest_until(s, done))
        assert rc == exits.OK
        assert kicks == [1, 1, 1]
        assert ing.stats.connects >= 4 and ing.stats.reconnects >= 3
        assert ing.stats.gaps == ing.stats.duplicates == 0
        conns = relay.connections()
        # each connection resumes right after the last seq the ingester read
        for prev, nxt in itertools.pairwise(conns):
            assert nxt.cursor is not None and nxt.cursor <= (prev.last_seq or 0)
            assert nxt.seqs[0][0] == nxt.cursor + 1
        end = cursor(pg_dsn)["last_seq"]
        assert_exactly_once(pg_dsn, relay, range(1, end + 1))
        assert cursor(pg_dsn)["gaps"] == 0


# -- overflow ----------------------------------------------------------------------------


def test_overflow_exits_75_and_the_restart_resumes_from_the_cursor(
    pg_dsn: str, templates: list[bytes], caplog: pytest.LogCaptureFixture
) -> None:
    """The events table is locked by another session, so COPY waits: the buffer
    fills, the reader pauses above the high watermark, then reads on, and the
    process exits 75 (by design) while the table is still locked: the writer's
    connection is terminated (the blocked batch rolls back) and the relay stream
    aborted, and the time from the overflow to the exit is logged. Nothing
    committed is lost, and the next run continues from the cursor."""
    caplog.set_level(logging.INFO, logger="atdata_ingest")
    with ReplayRelay(templates, total=None, rate=4000) as relay:
        small = settings_for(
            pg_dsn, relay.url, buffer_max=2000, batch_max=200, pause_ms=100
        )

        async def overflow() -> tuple[int, Ingester, int]:
            locker = await asyncpg.connect(pg_dsn)
            try:
                locked = False

                async def lock_when_started(ing: Ingester) -> None:
                    nonlocal locked
                    while ing.stats.last_committed_seq < 300:
                        await asyncio.sleep(0.01)
                    tx = locker.transaction()
                    await tx.start()
                    await locker.execute(
                        "LOCK TABLE ingest_events IN ACCESS EXCLUSIVE MODE"
                    )
                    locked = True

                ingester = Ingester(small)
                task = asyncio.create_task(ingester.run())
                await asyncio.wait_for(lock_when_started(ingester), HANG_GUARD)
                rc = await asyncio.wait_for(task, HANG_GUARD)  # the lock is held
                assert locked
                stored = ingester.stats.last_committed_seq
                # the blocked COPY was not committed behind our back
                assert (
                    await locker.fetchval("SELECT last_seq FROM ingest_cursor")
                    == stored
                )
            finally:
                await locker.close()  # releases the lock
            return rc, ingester, stored

        rc, ing, stored = asyncio.run(overflow())
        assert rc == exits.TEMPFAIL
        assert ing.writer.aborted and ing.writer.conn is None  # terminated
        assert ing.stats.overflow_to_exit is not None
        assert "overflow to exit: " in caplog.text
        assert "the writer task ended" not in caplog.text  # exit 75, not a bug
        assert ing.stats.events_read > 2000 > ing.stats.events_stored
        at_exit = cursor(pg_dsn)["last_seq"]
        assert at_exit == stored >= 300
        assert_exactly_once(pg_dsn, relay, range(1, at_exit + 1))

        rc, again = asyncio.run(
            ingest_until(settings_for(pg_dsn, relay.url), committed(at_exit + 600))
        )
        assert rc == exits.OK
        assert relay.connections()[-1].cursor == at_exit
        end = cursor(pg_dsn)["last_seq"]
        assert_exactly_once(pg_dsn, relay, range(1, end + 1))
        assert again.stats.gaps == 0


# -- a stop behind the relay -------------------------------------------------------------


def test_a_stop_behind_the_relay_aborts_the_stream_after_the_flush(
    pg_dsn: str, templates: list[bytes]
) -> None:
    """The relay sends as fast as the socket takes (the ingester is always
    behind): at the stop, the relay's close frame waits behind frames that will
    never be read, so the closing handshake cannot finish; the ingester flushes
    everything it read and then aborts the stream (counted) instead of waiting
    for ``websockets``' close timeout. Nothing read is lost."""
    with ReplayRelay(templates, total=None, rate=None) as relay:
        s = settings_for(pg_dsn, relay.url)
        rc, ing = asyncio.run(ingest_until(s, committed(2000)))
        assert rc == exits.OK
        assert ing.stats.aborted_streams == 1
        assert ing.stats.events_read == ing.stats.events_stored  # all flushed
        row = cursor(pg_dsn)
        assert row["ingester_pid"] is None  # the final status was written
        end = row["last_seq"]
        assert end == ing.stats.last_committed_seq >= 2000
        assert relay.frames_sent > end  # frames were left unread at the stop
        assert_exactly_once(pg_dsn, relay, range(1, end + 1))


# -- the real local PDS ----------------------------------------------------------------


class _Pds:
    """XRPC writes to the local PDS as one account."""

    def __init__(self, url: str, handle: str, password: str) -> None:
        self.url = url
        self.http = httpx.Client(base_url=url, timeout=30)
        session = self._call(
            "com.atproto.server.createSession",
            {"identifier": handle, "password": password},
        )
        self.did = session["did"]
        self.http.headers["Authorization"] = f"Bearer {session['accessJwt']}"

    def _call(self, nsid: str, body: dict[str, Any]) -> dict[str, Any]:
        resp = self.http.post(f"/xrpc/{nsid}", json=body)
        assert resp.status_code == 200, resp.text
        return resp.json()  # type: ignore[no-any-return]

    def put(self, collection: str, rkey: str, record: dict[str, Any]) -> str:
        out = self._call(
            "com.atproto.repo.putRecord",
            {
                "repo": self.did,
                "collection": collection,
                "rkey": rkey,
                "record": record,
            },
        )
        return str(out["cid"])

    def create(self, collection: str, record: dict[str, Any]) -> tuple[str, str]:
        out = self._call(
            "com.atproto.repo.createRecord",
            {"repo": self.did, "collection": collection, "record": record},
        )
        return str(out["uri"]).rsplit("/", 1)[1], str(out["cid"])

    def delete(self, collection: str, rkey: str) -> None:
        self._call(
            "com.atproto.repo.deleteRecord",
            {"repo": self.did, "collection": collection, "rkey": rkey},
        )


def test_records_published_on_the_local_pds_arrive_typed(pg_dsn: str, net: Any) -> None:
    s = settings_for(pg_dsn, net.pds_url, verify="dataset", plc_url=net.plc_url)
    published: dict[str, Any] = {}

    async def go() -> tuple[int, Ingester]:
        ingester = Ingester(s)
        task = asyncio.create_task(ingester.run())
        deadline = time.monotonic() + HANG_GUARD
        while ingester.stats.connects == 0:
            assert not task.done() and time.monotonic() < deadline
            await asyncio.sleep(0.02)

        def publish() -> None:
            account = net.create_account(
                f"ing{os.getpid() % 10000}x{time.time_ns() % 10**6}"
            )
            pds = _Pds(net.pds_url, account.handle, account.password)
            published["did"] = pds.did
            post = {
                "$type": "app.bsky.feed.post",
                "text": "ingested",
                "createdAt": "2026-01-01T00:00:00.000Z",
            }
            rkey, cid = pds.create("app.bsky.feed.post", post)
            published["post"] = (rkey, cid)
            profile = {"$type": "app.bsky.actor.profile", "displayName": "one"}
            pds.put("app.bsky.actor.profile", "self", profile)
            profile["displayName"] = "two"
            published["profile_cid"] = pds.put(
                "app.bsky.actor.profile", "self", profile
            )
            schema = flat_schema_record(
                "IngestedSample", "1.0.0", {"x": {"type": "integer"}}
            )
            published["schema_cid"] = pds.put(
                "science.alt.dataset.schema", "IngestedSample:1.0.0", schema
            )
            pds.delete("app.bsky.feed.post", rkey)

        await asyncio.to_thread(publish)
        did = published["did"]
        conn = await asyncpg.connect(pg_dsn)
        try:
            while True:
                n = await conn.fetchval(
                    "SELECT count(*) FROM ingest_events WHERE repo = $1 "
                    "AND action = 'delete'",
                    did,
                )
                if n or task.done() or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.05)
        finally:
            await conn.close()
        ingester.stop()
        return await task, ingester

    rc, ing = asyncio.run(go())
    assert rc == exits.OK
    did = published["did"]
    rows = fetch(
        pg_dsn,
        "SELECT seq, idx, event_type, action, collection, rkey, cid, prev_cid, "
        "record, valid, verified FROM ingest_events WHERE repo = $1 "
        "ORDER BY seq, idx",
        did,
    )
    kinds = [(r["event_type"], r["action"], r["collection"]) for r in rows]
    post_rkey, post_cid = published["post"]
    assert ("identity", None, None) in kinds and ("account", None, None) in kinds
    assert ("commit", None, None) in kinds  # the repository's first, empty commit
    ops = [k for k in kinds if k[0] == "commit" and k[1] is not None]
    assert ops == [
        ("commit", "create", "app.bsky.feed.post"),
        ("commit", "create", "app.bsky.actor.profile"),
        ("commit", "update", "app.bsky.actor.profile"),
        ("commit", "create", "science.alt.dataset.schema"),
        ("commit", "delete", "app.bsky.feed.post"),
    ]
    by_op = {(r["action"], r["collection"]): r for r in rows if r["action"]}
    post = by_op[("create", "app.bsky.feed.post")]
    assert (post["rkey"], post["cid"]) == (post_rkey, post_cid)
    assert '"text": "ingested"' in post["record"]
    assert post["valid"] == "ok"  # the generated app.bsky.feed.post model
    assert post["verified"] is None  # policy dataset: not a dataset commit
    update = by_op[("update", "app.bsky.actor.profile")]
    assert update["cid"] == published["profile_cid"]
    assert '"displayName": "two"' in update["record"]
    schema = by_op[("create", "science.alt.dataset.schema")]
    assert schema["cid"] == published["schema_cid"]
    assert schema["verified"] is True  # signature checked against the PLC key
    assert schema["valid"] == "ok"
    deleted = by_op[("delete", "app.bsky.feed.post")]
    assert deleted["record"] is None and deleted["rkey"] == post_rkey
    keys = [
        (r["seq"], r["idx"])
        for r in fetch(pg_dsn, "SELECT seq, idx FROM ingest_events")
    ]
    assert len(keys) == len(set(keys))
    assert ing.stats.dead_letters == 0
    assert cursor(pg_dsn)["source"] == net.pds_url.replace("http://", "ws://")


def _account(net: Any, prefix: str) -> _Pds:
    account = net.create_account(
        f"{prefix}{os.getpid() % 10000}x{time.time_ns() % 10**6}"
    )
    return _Pds(net.pds_url, account.handle, account.password)


_POST = {
    "$type": "app.bsky.feed.post",
    "text": "published before the ingester started",
    "createdAt": "2026-01-01T00:00:00.000Z",
}


async def _wait_rows(
    dsn: str, task: asyncio.Task[int], query: str, *args: Any, timeout: float
) -> int:
    """Poll ``query`` (a count) until it is positive, the run ended, or
    ``timeout`` seconds passed; return the last count."""
    conn = await asyncpg.connect(dsn)
    try:
        deadline = time.monotonic() + timeout
        while True:
            n = int(await conn.fetchval(query, *args))
            if n or task.done() or time.monotonic() > deadline:
                return n
            await asyncio.sleep(0.05)
    finally:
        await conn.close()


def test_first_start_oldest_stores_what_the_pds_published_before(
    pg_dsn: str, net: Any
) -> None:
    """``start=oldest`` with a never-used cursor connects with ``?cursor=0``:
    the local PDS replays its whole stream, so an account and a post made (and
    emitted to live subscribers) before the ingester started are stored (the
    account's #identity/#account and its commits, exactly once)."""
    pds = _account(net, "old")
    rkey, cid = pds.create("app.bsky.feed.post", _POST)
    asyncio.run(_until_emitted(net, pds))  # a live tail would not see it
    s = settings_for(pg_dsn, net.pds_url, start="oldest")
    assert s.subscribe_url(0).endswith("subscribeRepos?cursor=0")

    async def go() -> tuple[int, Ingester, int]:
        ingester = Ingester(s)
        task = asyncio.create_task(ingester.run())
        n = await _wait_rows(
            pg_dsn,
            task,
            "SELECT count(*) FROM ingest_events WHERE repo = $1 AND rkey = $2",
            pds.did,
            rkey,
            timeout=HANG_GUARD,
        )
        ingester.stop()
        return await task, ingester, n

    rc, ing, n = asyncio.run(go())
    assert rc == exits.OK and n == 1
    rows = fetch(
        pg_dsn,
        "SELECT seq, idx, event_type, action, rkey, cid FROM ingest_events "
        "WHERE repo = $1 ORDER BY seq, idx",
        pds.did,
    )
    kinds = {(r["event_type"], r["action"]) for r in rows}
    assert {("identity", None), ("account", None), ("commit", "create")} <= kinds
    assert [r["cid"] for r in rows if r["rkey"] == rkey] == [cid]
    keys = [
        (r["seq"], r["idx"])
        for r in fetch(pg_dsn, "SELECT seq, idx FROM ingest_events")
    ]
    assert len(keys) == len(set(keys))
    assert min(k[0] for k in keys) <= rows[0]["seq"]
    assert ing.stats.connects >= 1 and ing.stats.dead_letters == 0


async def _until_emitted(net: Any, pds: _Pds) -> None:
    """Return once the PDS has sent live subscribers everything ``pds``
    published so far. Its sequencer emits stored events by polling, a little
    after the write returned: on a live subscription of our own, publish marker
    posts until one arrives (events are emitted in seq order)."""
    url = (
        net.pds_url.replace("http://", "ws://")
        + "/xrpc/com.atproto.sync.subscribeRepos"
    )
    deadline = time.monotonic() + HANG_GUARD
    async with ws_connect(url, max_size=8 << 20) as ws:
        while time.monotonic() < deadline:
            rkey, _ = await asyncio.to_thread(
                pds.create, "app.bsky.feed.post", {**_POST, "text": "marker"}
            )
            wait_until = time.monotonic() + 2.0
            while (left := wait_until - time.monotonic()) > 0:
                try:
                    message = await asyncio.wait_for(ws.recv(), left)
                except TimeoutError:
                    break
                frame = decode_frame(message if isinstance(message, bytes) else b"")
                if frame.did == pds.did and any(op.rkey == rkey for op in frame.ops):
                    return
    raise AssertionError("the PDS never emitted a marker post")


def test_first_start_live_begins_at_the_live_tail(pg_dsn: str, net: Any) -> None:
    """``start=live`` (the default) connects without a cursor: what the PDS
    published (and emitted) before is not replayed (no row of an account made
    before the start), what it publishes after the connection is stored."""
    before = _account(net, "pre")
    before.create("app.bsky.feed.post", _POST)
    asyncio.run(_until_emitted(net, before))
    s = settings_for(pg_dsn, net.pds_url)
    assert s.start == "live" and "cursor" not in s.subscribe_url(0)

    async def go() -> tuple[int, int]:
        ingester = Ingester(s)
        task = asyncio.create_task(ingester.run())
        deadline = time.monotonic() + HANG_GUARD
        while ingester.stats.connects == 0:
            assert not task.done() and time.monotonic() < deadline
            await asyncio.sleep(0.02)
        after = await asyncio.to_thread(_account, net, "post")
        n = 0
        while not n and not task.done() and time.monotonic() < deadline:
            # the PDS subscribes the stream just after the handshake: publish
            # until a post arrives
            rkey, _ = await asyncio.to_thread(
                after.create, "app.bsky.feed.post", {**_POST, "text": "live"}
            )
            n = await _wait_rows(
                pg_dsn,
                task,
                "SELECT count(*) FROM ingest_events WHERE repo = $1 AND rkey = $2",
                after.did,
                rkey,
                timeout=2.0,
            )
        ingester.stop()
        return await task, n

    rc, n = asyncio.run(go())
    assert rc == exits.OK and n == 1
    old = fetch(
        pg_dsn, "SELECT count(*) AS n FROM ingest_events WHERE repo = $1", before.did
    )
    assert old[0]["n"] == 0


def test_start_oldest_asks_the_relay_for_cursor_0_only_when_never_used(
    pg_dsn: str, templates: list[bytes], caplog: pytest.LogCaptureFixture
) -> None:
    """The first start asks for cursor 0 and says "first start: oldest (cursor
    0)"; the next one resumes from the stored cursor and says "resuming after
    seq N"."""
    caplog.set_level(logging.INFO, logger="atdata_ingest")
    with ReplayRelay(templates, total=None, rate=3000) as relay:
        s = settings_for(pg_dsn, relay.url, start="oldest")
        rc, _ = asyncio.run(ingest_until(s, committed(100)))
        assert rc == exits.OK
        assert "first start: oldest (cursor 0)" in caplog.text
        end = cursor(pg_dsn)["last_seq"]
        rc, _ = asyncio.run(ingest_until(s, committed(end + 100)))
        assert rc == exits.OK
        assert f"resuming after seq {end} (" in caplog.text
    conns = relay.connections()
    assert [c.cursor for c in conns] == [0, end]  # then the stored cursor
    assert conns[0].seqs[0][0] == 1


# -- exit statuses ------------------------------------------------------------------------


def test_unreachable_database_exits_74_after_the_retry_window() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens there once closed
    settings = settings_for(
        f"postgresql://postgres:secret-pw@127.0.0.1:{port}/nowhere",
        "ws://127.0.0.1:1",
        db_retry_seconds=0.5,
    )
    assert asyncio.run(run(settings)) == exits.IOERR


def test_unreachable_database_message_has_no_password(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    settings = settings_for(
        f"postgresql://postgres:secret-pw@127.0.0.1:{port}/nowhere",
        "ws://127.0.0.1:1",
        db_retry_seconds=0.2,
    )
    assert asyncio.run(run(settings)) == exits.IOERR
    assert "unavailable" in caplog.text
    assert "secret-pw" not in caplog.text and "secret-pw" not in repr(settings)


def test_a_stop_while_the_database_is_unreachable_exits_0() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    settings = settings_for(
        f"postgresql://postgres@127.0.0.1:{port}/nowhere",
        "ws://127.0.0.1:1",
        db_retry_seconds=3600,
    )

    async def go() -> int:
        ingester = Ingester(settings)
        task = asyncio.create_task(ingester.run())
        await asyncio.sleep(0.3)  # retrying the connection by now
        assert not task.done()
        ingester.stop()
        return await asyncio.wait_for(task, HANG_GUARD)

    assert asyncio.run(go()) == exits.OK


def test_another_ingester_holding_the_lock_exits_73(
    pg_dsn: str, templates: list[bytes]
) -> None:
    with ReplayRelay(templates, total=None, rate=500) as relay:
        s = settings_for(pg_dsn, relay.url, db_retry_seconds=0.5)

        async def go() -> int:
            first = Ingester(s)
            task = asyncio.create_task(first.run())
            while first.stats.connects == 0:
                assert not task.done()
                await asyncio.sleep(0.02)
            try:
                return await run(s)
            finally:
                first.stop()
                assert await task == exits.OK

        assert asyncio.run(go()) == exits.CANTCREAT


def test_a_cursor_of_another_relay_exits_78(
    pg_dsn: str, templates: list[bytes]
) -> None:
    with ReplayRelay(templates, total=50) as relay:
        rc, _ = asyncio.run(
            ingest_until(settings_for(pg_dsn, relay.url), committed(50))
        )
        assert rc == exits.OK
    other = settings_for(pg_dsn, "wss://relay.example.com")
    assert asyncio.run(run(other)) == exits.CONFIG
    assert cursor(pg_dsn)["last_seq"] == 50


# -- signatures -----------------------------------------------------------------------------


def _uvarint(n: int) -> bytes:
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def forged_signature(frame: bytes) -> bytes:
    """``frame`` (a commit) with one bit of the commit's signature flipped, and the
    commit block's CID, the CAR root and the frame's ``commit`` recomputed: every
    hash checks, only the signature is wrong."""
    header, body, _ = split_frame(frame)
    car = body["blocks"]
    blocks = car_blocks(car)
    old = body["commit"].cid_bytes
    off, n = blocks[old]
    commit = cbrrr.decode_dag_cbor(car[off : off + n])
    sig = bytearray(commit["sig"])
    sig[10] ^= 1
    commit["sig"] = bytes(sig)
    block = cbrrr.encode_dag_cbor(commit)
    cid = cbrrr.CID.cidv1_dag_cbor_sha256_32_from(block)
    sections = [(cid.cid_bytes, block)]
    sections += [(c, car[o : o + k]) for c, (o, k) in blocks.items() if c != old]
    head = cbrrr.encode_dag_cbor({"version": 1, "roots": [cid]})
    body["blocks"] = (
        _uvarint(len(head))
        + head
        + b"".join(_uvarint(len(c) + len(b)) + c + b for c, b in sections)
    )
    body["commit"] = cid
    return cbrrr.encode_dag_cbor(header) + cbrrr.encode_dag_cbor(body)


def test_bad_signature_is_dead_lettered_in_order_with_verification_on(
    pg_dsn: str, templates: list[bytes], net: Any
) -> None:
    """verify=dataset against the local PLC: dataset commits are verified
    (``verified`` true), a commit with a forged signature is a SIG_INVALID dead
    letter, and every other frame, read while DID keys were being resolved, is
    stored exactly once (the cursor never passed a frame still being checked)."""
    dataset = [
        i
        for i, t in enumerate(templates)
        if decode_frame(t).kind == "commit" and decode_frame(t).touches_datasets
    ]
    bad = dataset[len(dataset) // 2]
    frames = list(templates)
    frames[bad] = forged_signature(templates[bad])
    with ReplayRelay(frames, total=len(frames)) as relay:
        s = settings_for(pg_dsn, relay.url, verify="dataset", plc_url=net.plc_url)
        rc, ing = asyncio.run(ingest_until(s, committed(len(frames))))
    assert rc == exits.OK
    dead = fetch(pg_dsn, "SELECT seq, rule, reason FROM ingest_dead_letters")
    assert [(d["seq"], d["rule"]) for d in dead] == [(bad + 1, "SIG_INVALID")]
    assert "not signed by" in dead[0]["reason"]
    assert_exactly_once(pg_dsn, relay, set(range(1, len(frames) + 1)) - {bad + 1})
    flags = fetch(
        pg_dsn,
        "SELECT DISTINCT seq, verified FROM ingest_events "
        "WHERE event_type = 'commit' AND seq = ANY($1::bigint[])",
        [i + 1 for i in dataset if i != bad],
    )
    assert {f["verified"] for f in flags} == {True}
    assert len(flags) == len(dataset) - 1
    others = fetch(
        pg_dsn,
        "SELECT count(*) AS n FROM ingest_events WHERE verified IS NOT NULL "
        "AND NOT (seq = ANY($1::bigint[]))",
        [i + 1 for i in dataset],
    )
    assert others[0]["n"] == 0  # policy dataset: nothing else is checked
    assert ing.stats.verified == len(dataset) - 1


def test_replayed_commits_keep_their_verdicts_rule(
    pg_dsn: str, templates: list[bytes], net: Any
) -> None:
    """The templates twice (the second time the same commits, same revs, under
    new seqs), verify=dataset against the local PLC: the first pass of dataset
    commits is verified (``verify_rule`` NULL), the replay is not (a rev not
    after the DID's last: ``REV_STALE``) and says so on every operation row;
    commits the policy does not check have neither."""
    n = len(templates)
    dataset = {
        i + 1
        for i, t in enumerate(templates)
        if decode_frame(t).kind == "commit" and decode_frame(t).touches_datasets
    }
    assert dataset
    with ReplayRelay(templates, total=2 * n) as relay:
        s = settings_for(pg_dsn, relay.url, verify="dataset", plc_url=net.plc_url)
        rc, ing = asyncio.run(ingest_until(s, committed(2 * n)))
    assert rc == exits.OK
    got = fetch(
        pg_dsn,
        "SELECT seq, verified, verify_rule FROM ingest_events "
        "WHERE event_type = 'commit'",
    )
    flags: dict[int, set[tuple[Any, Any]]] = {}
    for r in got:
        flags.setdefault(r["seq"], set()).add((r["verified"], r["verify_rule"]))
    for seq, seen in flags.items():
        k = (seq - 1) % n + 1
        if k not in dataset:
            assert seen == {(None, None)}, (seq, seen)
        elif seq <= n:
            assert seen == {(True, None)}, (seq, seen)
        else:
            assert seen == {(None, "REV_STALE")}, (seq, seen)
    assert {q for q in flags if q > n and (q - 1) % n + 1 in dataset}
    assert ing.stats.not_verified == {"REV_STALE": len(dataset)}
    assert ing.stats.verified == len(dataset)
    other = fetch(
        pg_dsn,
        "SELECT count(*) AS n FROM ingest_events "
        "WHERE event_type <> 'commit' AND verify_rule IS NOT NULL",
    )
    assert other[0]["n"] == 0


# -- settings ------------------------------------------------------------------------------


def test_settings_from_the_environment_name_the_bad_variable() -> None:
    env = {
        "DATABASE_URL": "postgresql://u:pw@db/x",
        "ATDATA_INGEST_RELAY_URL": "https://relay.example/xrpc/com.atproto.sync.subscribeRepos/",
        "ATDATA_INGEST_BATCH_MAX": "800",
        "ATDATA_INGEST_SYNCHRONOUS_COMMIT": "off",
    }
    s = Settings.from_env(env, flush_ms="75")
    assert s.relay_url == "wss://relay.example"
    assert (
        s.subscribe_url(0) == "wss://relay.example/xrpc/com.atproto.sync.subscribeRepos"
    )
    assert s.subscribe_url(42).endswith("subscribeRepos?cursor=42")
    assert s.start == "live"
    oldest = Settings.from_env({**env, "ATDATA_INGEST_START": " Oldest "})
    assert oldest.start == "oldest"
    assert oldest.subscribe_url(0).endswith("subscribeRepos?cursor=0")
    assert oldest.subscribe_url(42).endswith("subscribeRepos?cursor=42")
    args = build_parser().parse_args(["run", "--start", "OLDEST"])
    assert run_overrides(args) == {"start": "oldest"}
    assert Settings.from_env(env, **run_overrides(args)).start == "oldest"
    assert (s.batch_max, s.flush_ms, s.synchronous_commit) == (800, 75, False)
    assert "pw" not in repr(s) and "pw" not in s.redacted_database_url
    bad = {
        "ATDATA_INGEST_BATCH_MAX": "0",
        "ATDATA_INGEST_FLUSH_MS": "fast",
        "ATDATA_INGEST_VERIFY": "some",
        "ATDATA_INGEST_SYNCHRONOUS_COMMIT": "maybe",
        "ATDATA_INGEST_RELAY_URL": "ftp://relay.example",
        "ATDATA_INGEST_BUFFER_MAX": "100",  # smaller than a batch
        "ATDATA_INGEST_START": "newest",
    }
    for var, value in bad.items():
        with pytest.raises(exits.ConfigError, match=var) as info:
            Settings.from_env({**env, var: value})
        assert info.value.status == exits.CONFIG
        assert "pw" not in str(info.value)
    with pytest.raises(exits.ConfigError, match="ATDATA_INGEST_DATABASE_URL"):
        Settings.from_env({})
    with pytest.raises(exits.ConfigError, match="credentials"):
        Settings.from_env({**env, "ATDATA_INGEST_RELAY_URL": "wss://u:p@relay.example"})


def test_verify_all_checks_every_commit_and_sync(
    pg_dsn: str, templates: list[bytes], net: Any
) -> None:
    with ReplayRelay(templates, total=len(templates)) as relay:
        s = settings_for(pg_dsn, relay.url, verify="all", plc_url=net.plc_url)
        rc, ing = asyncio.run(ingest_until(s, committed(len(templates))))
    assert rc == exits.OK
    flags = fetch(
        pg_dsn,
        "SELECT event_type, verified, count(*) AS n FROM ingest_events "
        "GROUP BY 1, 2 ORDER BY 1, 2",
    )
    by_type = {(f["event_type"], f["verified"]): f["n"] for f in flags}
    assert by_type.get(("commit", True)) and by_type.get(("sync", True))
    assert ("commit", None) not in by_type and ("sync", None) not in by_type
    assert all(v is None for t, v in by_type if t in ("identity", "account"))
    assert ing.stats.dead_letters == 0
    assert_exactly_once(pg_dsn, relay, range(1, len(templates) + 1))


# -- scripted relays: exact frames, exact cursors --------------------------------------

_DID = "did:plc:aaaaaaaaaaaaaaaaaaaaaaaa"
_IDENTITY_HEADER = cbrrr.encode_dag_cbor({"op": 1, "t": "#identity"})


def identity_frame(seq: int, *, big: bool = False, bad: bool = False) -> bytes:
    """A real ``#identity`` frame of ``seq``: ``big`` (over 3,000 bytes: past a
    1 KiB ``max_frame_bytes``), ``bad`` (its ``time`` is not a datetime: a
    FRAME_BODY dead letter whose seq is still read)."""
    body = {
        "seq": seq,
        "did": _DID,
        "time": "garbage" if bad else "2026-12-01T00:00:00.000Z",
        "handle": ("a" * 3000 + ".test") if big else "ok.test",
    }
    return _IDENTITY_HEADER + cbrrr.encode_dag_cbor(body)


class ScriptedRelay:
    """A real loopback ``subscribeRepos`` WebSocket server in the test's event
    loop. ``script(n, cursor)`` gives the frames of the n-th connection (from 1)
    asked with ``cursor`` (``None``: none asked); they are sent, then the
    connection stays open (idle). ``cursors`` records what was asked."""

    def __init__(
        self,
        script: Callable[[int, int | None], list[bytes]],
        port: int = 0,
    ) -> None:
        self.script = script
        self.port = port
        self.cursors: list[int | None] = []
        self._server: Any = None

    @classmethod
    def ordered(cls, frames: list[tuple[int, bytes]], port: int = 0) -> ScriptedRelay:
        """A relay of ``(position, frame)``: a connection asked with cursor ``c``
        gets the frames whose position is above ``c`` (all without a cursor or
        with cursor 0)."""
        return cls(
            lambda _n, cur: [f for pos, f in frames if not cur or pos > cur], port
        )

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    async def __aenter__(self) -> Self:
        from websockets.asyncio.server import serve

        self._server = await serve(self._handler, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._server.close()
        await self._server.wait_closed()

    async def _handler(self, ws: Any) -> None:
        from urllib.parse import parse_qs, urlsplit

        query = parse_qs(urlsplit(ws.request.path).query)
        raw = query.get("cursor")
        cursor = int(raw[0]) if raw else None
        self.cursors.append(cursor)
        for frame in self.script(len(self.cursors), cursor):
            await ws.send(frame)
        await ws.wait_closed()  # idle until the client or the server closes


async def run_until(
    settings: Settings, done: Callable[[Ingester], bool]
) -> tuple[int, Ingester]:
    """:func:`ingest_until` inside a running loop."""
    ingester = Ingester(settings)
    task = asyncio.create_task(ingester.run())
    deadline = time.monotonic() + HANG_GUARD
    while not task.done() and not done(ingester):
        if time.monotonic() > deadline:
            ingester.stop()
            await task
            raise AssertionError(f"hang guard: {ingester.stats}")
        await asyncio.sleep(0.02)
    if not task.done():
        ingester.stop()
    return await asyncio.wait_for(task, HANG_GUARD), ingester


def stored_seqs(dsn: str) -> list[int]:
    return [r["seq"] for r in fetch(dsn, "SELECT seq FROM ingest_events ORDER BY seq")]


def dead_letters(dsn: str) -> list[tuple[Any, str, str]]:
    return [
        (r["seq"], r["rule"], r["reason"])
        for r in fetch(
            dsn, "SELECT seq, rule, reason FROM ingest_dead_letters ORDER BY id"
        )
    ]


def test_oversized_frames_never_skip_a_seq_that_was_not_read(
    pg_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    """seq 4 is too big, 5 does not decode (its seq is read: the cursor moves
    to 5), 6 is too big: the skip after 4 counted from seq 3 is void once the
    reader moved to 5, so the reconnect after 6 asks for cursor 6 (not 7, which
    would lose seq 7, never read). Closing a stream over an oversized frame is
    the ingester's doing, not a failing relay."""
    caplog.set_level(logging.INFO, logger="atdata_ingest")
    frames = {k: identity_frame(k) for k in (1, 2, 3, 7, 8, 9)}
    frames |= {
        4: identity_frame(4, big=True),
        5: identity_frame(5, bad=True),
        6: identity_frame(6, big=True),
    }

    async def go() -> tuple[int, list[int | None]]:
        async with ScriptedRelay.ordered(sorted(frames.items())) as relay:
            s = settings_for(
                pg_dsn, relay.url, max_frame_bytes=1024, start="oldest",
                validate="none",
            )  # fmt: skip
            rc, _ = await run_until(s, committed(9))
            return rc, relay.cursors

    rc, cursors = asyncio.run(go())
    assert rc == exits.OK
    assert cursors == [0, 4, 6]
    assert "relay failing" not in caplog.text
    assert stored_seqs(pg_dsn) == [1, 2, 3, 7, 8, 9]
    assert [(d[0], d[1]) for d in dead_letters(pg_dsn)] == [
        (None, "FRAME_TOO_BIG"),
        (5, "FRAME_BODY"),
        (None, "FRAME_TOO_BIG"),
    ]
    assert cursor(pg_dsn)["last_seq"] == 9


def test_a_too_big_first_frame_on_a_live_start_reconnects_to_the_live_tail(
    pg_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    """start=live, nothing read yet, the first frame is over the size limit: its
    seq is unknown, so the reconnect asks for the live tail again (no cursor),
    never ``?cursor=1`` (the relay's oldest events). The start says so."""
    caplog.set_level(logging.INFO, logger="atdata_ingest")

    def script(n: int, _cursor: int | None) -> list[bytes]:
        if n == 1:
            return [identity_frame(100, big=True)]
        return [identity_frame(k) for k in (101, 102, 103)]

    async def go() -> tuple[int, list[int | None]]:
        async with ScriptedRelay(script) as relay:
            s = settings_for(pg_dsn, relay.url, max_frame_bytes=1024, validate="none")
            assert s.start == "live"
            rc, _ = await run_until(s, committed(103))
            return rc, relay.cursors

    rc, cursors = asyncio.run(go())
    assert rc == exits.OK
    assert cursors == [None, None]
    assert stored_seqs(pg_dsn) == [101, 102, 103]
    (dead,) = dead_letters(pg_dsn)
    assert dead[1] == "FRAME_TOO_BIG" and "live tail" in dead[2]
    assert "first start: live tail (no cursor)" in caplog.text
    assert "from cursor 0" not in caplog.text


def test_a_far_seq_of_an_undecodable_frame_does_not_move_the_cursor(
    pg_dsn: str,
) -> None:
    """Dead letters whose (unvalidated) seq is far ahead of the last seq read,
    or that come before any seq was read, keep their seq in the dead-letter row
    but do not move the cursor: the frames after them are stored, not dropped
    as duplicates."""
    frames = [
        (0, identity_frame(10**12, bad=True)),  # before any seq was read
        *[(k, identity_frame(k)) for k in (1, 2, 3)],
        (3, identity_frame(5000, bad=True)),  # 4,997 ahead of seq 3
        *[(k, identity_frame(k)) for k in (4, 5, 6)],
    ]

    async def go() -> tuple[int, Ingester]:
        async with ScriptedRelay.ordered(frames) as relay:
            s = settings_for(pg_dsn, relay.url, start="oldest", validate="none")
            return await run_until(s, committed(6))

    rc, ing = asyncio.run(go())
    assert rc == exits.OK
    assert stored_seqs(pg_dsn) == [1, 2, 3, 4, 5, 6]
    assert [(d[0], d[1]) for d in dead_letters(pg_dsn)] == [
        (10**12, "FRAME_BODY"),
        (5000, "FRAME_BODY"),
    ]
    assert ing.stats.duplicates == 0
    assert cursor(pg_dsn)["last_seq"] == 6


# -- relay health in the cursor row ----------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.asynccontextmanager
async def _not_a_relay(kind: str) -> Any:
    """A server at a wrong relay URL: ``closed-port`` (nothing listens),
    ``http-<status>`` (an HTTP server answering the upgrade with that status),
    ``ws-closes`` (a WebSocket server that closes at once)."""
    if kind == "closed-port":
        yield f"ws://127.0.0.1:{_free_port()}"
        return
    if kind == "ws-closes":
        from websockets.asyncio.server import serve

        async def close(ws: Any) -> None:
            return None

        async with serve(close, "127.0.0.1", 0) as server:
            yield f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        return
    status = int(kind.removeprefix("http-"))

    async def answer(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        with contextlib.suppress(Exception):
            await reader.readuntil(b"\r\n\r\n")
            writer.write(
                f"HTTP/1.1 {status} Whatever\r\nContent-Type: text/html\r\n"
                "Content-Length: 5\r\nConnection: close\r\n\r\nhello".encode()
            )
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    try:
        yield f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()
        await server.wait_closed()


async def _relay_row(dsn: str) -> asyncpg.Record:
    return (
        await _fetch(
            dsn,
            "SELECT relay_state, relay_error, relay_state_since, last_frame_at, "
            "ingester_pid FROM ingest_cursor",
        )
    )[0]


async def _until_row(
    dsn: str, task: asyncio.Task[int], ok: Callable[[asyncpg.Record], bool]
) -> asyncpg.Record:
    deadline = time.monotonic() + HANG_GUARD
    while True:
        row = await _relay_row(dsn)
        if ok(row):
            return row
        assert not task.done() and time.monotonic() < deadline, dict(row)
        await asyncio.sleep(0.05)


@pytest.mark.parametrize(
    ("kind", "error"),
    [
        ("closed-port", "connection refused"),
        ("http-404", "HTTP 404 at handshake"),
        ("http-403", "HTTP 403 at handshake"),
        ("http-200", "HTTP 200 at handshake"),
        ("ws-closes", "closed by the relay (code 1000) before any event"),
    ],
)
def test_a_wrong_relay_url_is_retried_and_shown_failing(
    pg_dsn: str, caplog: pytest.LogCaptureFixture, kind: str, error: str
) -> None:
    """A wrong relay URL is retried for ever (by design) and the cursor row says
    so: relay_state 'failing' with a short relay_error, relay_state_since at the
    first failure (kept across retries); the failure is logged at WARNING once
    (per minute; here the interval is made long), not on every retry. A clean
    stop clears relay_state (nobody ingests) and keeps the error."""
    caplog.set_level(logging.INFO, logger="atdata_ingest")

    async def go() -> tuple[int, Ingester, asyncpg.Record, asyncpg.Record]:
        async with _not_a_relay(kind) as url:
            s = settings_for(
                pg_dsn, url, reconnect_min_seconds=0.01, reconnect_max_seconds=0.05
            )
            ingester = Ingester(s)
            ingester.relay_log_seconds = 1e9
            task = asyncio.create_task(ingester.run())
            first = await _until_row(
                pg_dsn, task, lambda r: r["relay_state"] == "failing"
            )
            while ingester.stats.reconnects < 6:
                assert not task.done()
                await asyncio.sleep(0.02)
            later = await _until_row(
                pg_dsn,
                task,
                lambda r: (
                    r["relay_state"] == "failing" and ingester.stats.reconnects >= 6
                ),
            )
            ingester.stop()
            return await asyncio.wait_for(task, HANG_GUARD), ingester, first, later

    rc, ing, first, later = asyncio.run(go())
    assert rc == exits.OK
    assert first["relay_error"] == later["relay_error"] == error
    assert first["relay_state_since"] == later["relay_state_since"]
    assert first["relay_state_since"] <= dt.datetime.now(dt.UTC)
    assert first["last_frame_at"] is None
    warnings = [
        r
        for r in caplog.records
        if r.levelno == logging.WARNING
        and r.name == "atdata_ingest.ingester"
        and error in r.getMessage()
    ]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert ing.stats.reconnects >= 6
    stopped = fetch(pg_dsn, "SELECT relay_state, relay_error FROM ingest_cursor")[0]
    assert stopped["relay_state"] is None and stopped["relay_error"] == error


def test_relay_state_turns_connected_when_the_relay_comes_up(pg_dsn: str) -> None:
    """Failing (nothing listens), then a relay starts on that port: the row says
    'connected', without an error, with the time of the last frame."""
    port = _free_port()

    async def go() -> tuple[asyncpg.Record, asyncpg.Record]:
        s = settings_for(
            pg_dsn, f"ws://127.0.0.1:{port}", reconnect_min_seconds=0.01,
            reconnect_max_seconds=0.1, start="oldest", validate="none",
        )  # fmt: skip
        ingester = Ingester(s)
        task = asyncio.create_task(ingester.run())
        failing = await _until_row(
            pg_dsn, task, lambda r: r["relay_state"] == "failing"
        )
        frames = [(k, identity_frame(k)) for k in (1, 2, 3)]
        async with ScriptedRelay.ordered(frames, port=port):
            up = await _until_row(
                pg_dsn,
                task,
                lambda r: r["relay_state"] == "connected" and r["last_frame_at"],
            )
            while ingester.stats.last_committed_seq < 3:
                assert not task.done()
                await asyncio.sleep(0.02)
            ingester.stop()
            assert await asyncio.wait_for(task, HANG_GUARD) == exits.OK
        return failing, up

    failing, up = asyncio.run(go())
    assert failing["relay_error"] == "connection refused"
    assert up["relay_error"] is None
    assert up["relay_state_since"] > failing["relay_state_since"]
    assert up["last_frame_at"] >= up["relay_state_since"]
    assert stored_seqs(pg_dsn) == [1, 2, 3]


def test_the_summary_line_says_idle_when_no_frame_arrived(
    pg_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    """After the relay went quiet the summary line says "idle" instead of a lag
    that keeps growing."""
    caplog.set_level(logging.INFO, logger="atdata_ingest")

    def idle_summary() -> bool:
        return any("idle (no frame for" in r.getMessage() for r in caplog.records)

    async def go() -> int:
        frames = [(k, identity_frame(k)) for k in (1, 2, 3)]
        async with ScriptedRelay.ordered(frames) as relay:
            s = settings_for(
                pg_dsn, relay.url, start="oldest", validate="none",
                log_interval_seconds=0.1,
            )  # fmt: skip
            rc, _ = await run_until(
                s, lambda ing: ing.stats.last_committed_seq >= 3 and idle_summary()
            )
            return rc

    assert asyncio.run(go()) == exits.OK
    line = next(
        r.getMessage() for r in caplog.records if "idle (no frame" in r.getMessage()
    )
    assert "events/s, cursor 3, idle (no frame for" in line and " lag " not in line


# -- stops, lost commits, large frames ---------------------------------------------------


def test_a_second_stop_gives_up_the_flush_even_before_the_flush_began(
    pg_dsn: str, templates: list[bytes]
) -> None:
    """Two stops in a row (the second before the flush even started): the flush,
    blocked on a locked table, is given up (exit 75, the writer's connection
    terminated) instead of waiting for the lock; the cursor is intact."""
    with ReplayRelay(templates, total=None, rate=3000) as relay:
        s = settings_for(pg_dsn, relay.url)

        async def go() -> tuple[int, Ingester, int]:
            locker = await asyncpg.connect(pg_dsn)
            ingester = Ingester(s)
            task = asyncio.create_task(ingester.run())
            try:
                while ingester.stats.last_committed_seq < 200:
                    assert not task.done()
                    await asyncio.sleep(0.01)
                tx = locker.transaction()
                await tx.start()
                await locker.execute(
                    "LOCK TABLE ingest_events IN ACCESS EXCLUSIVE MODE"
                )
                while ingester.stats.events_read < ingester.stats.events_stored + 100:
                    assert not task.done()
                    await asyncio.sleep(0.01)
                ingester.stop()
                ingester.stop()
                rc = await asyncio.wait_for(task, HANG_GUARD)  # the lock is held
                stored = await locker.fetchval("SELECT last_seq FROM ingest_cursor")
                return rc, ingester, stored
            finally:
                await locker.close()

        rc, ing, stored = asyncio.run(go())
    assert rc == exits.TEMPFAIL
    assert ing.writer.aborted
    assert stored == ing.stats.last_committed_seq >= 200
    assert_exactly_once(pg_dsn, relay, range(1, stored + 1))


def test_lost_commits_exit_75_and_the_restart_replays_the_gap(
    pg_dsn: str, templates: list[bytes]
) -> None:
    """PostgreSQL loses acknowledged commits while the ingester runs (the tail
    after seq 100 removed, cursor row first): the ingester exits 75 at its next
    batch instead of writing on over the hole; the restart resumes from the
    stored cursor and the relay replays the lost seqs, so the log is complete."""
    with ReplayRelay(templates, total=None, rate=3000) as relay:
        s = settings_for(pg_dsn, relay.url)

        async def regress() -> tuple[int, Ingester]:
            ingester = Ingester(s)
            task = asyncio.create_task(ingester.run())
            while ingester.stats.last_committed_seq < 300:
                assert not task.done()
                await asyncio.sleep(0.01)
            conn = await asyncpg.connect(pg_dsn)
            try:
                async with conn.transaction():
                    await conn.execute("UPDATE ingest_cursor SET last_seq = 100")
                    await conn.execute("DELETE FROM ingest_events WHERE seq > 100")
            finally:
                await conn.close()
            return await asyncio.wait_for(task, HANG_GUARD), ingester

        rc, first = asyncio.run(regress())
        assert rc == exits.TEMPFAIL
        assert cursor(pg_dsn)["last_seq"] == 100
        end_before = first.stats.last_committed_seq
        rc, _ = asyncio.run(ingest_until(s, committed(end_before + 200)))
        assert rc == exits.OK
        assert relay.connections()[-1].cursor == 100
        end = cursor(pg_dsn)["last_seq"]
        assert_exactly_once(pg_dsn, relay, range(1, end + 1))


def test_a_frame_larger_than_the_buffer_is_admitted_alone(
    pg_dsn: str, templates: list[bytes]
) -> None:
    """buffer_max 1 event: commits of several operations are larger than the
    whole buffer. Each is admitted into the empty buffer and written alone
    (otherwise it would overflow at the same seq after every restart)."""
    total = 120
    with ReplayRelay(templates, total=total) as relay:
        assert max(rows_per_frame(relay, k) for k in range(1, total + 1)) >= 2
        s = settings_for(pg_dsn, relay.url, buffer_max=1, batch_max=1, pause_ms=600_000)
        rc, ing = asyncio.run(ingest_until(s, committed(total)))
        assert rc == exits.OK
        assert ing.stats.overflow_to_exit is None
        assert_exactly_once(pg_dsn, relay, range(1, total + 1))


def test_the_buffer_admits_any_frame_when_empty_and_bounds_the_rest() -> None:
    """The byte bound too: a frame of more bytes than ``buffer_max_bytes`` enters
    an empty buffer; the next frame overflows (exit 75) until it is written."""
    from atdata_ingest.exits import BufferOverflow
    from atdata_ingest.ingester import _Buffer

    s = Settings(
        database_url="postgresql://x@127.0.0.1/x", buffer_max=10, batch_max=5,
        buffer_max_bytes=1 << 16,
    )  # fmt: skip
    buffer = _Buffer(s)
    row = (1, 0, "identity")
    buffer.add([row] * 12, None, 1, None, 1 << 20, 0, 0)  # 12 rows, 1 MiB
    assert buffer.events == 12 and buffer.nbytes == 1 << 20
    with pytest.raises(BufferOverflow):
        buffer.add([row], None, 2, None, 10, 0, 0)
    batch = buffer.take()
    assert batch is not None and batch.events == 12
    buffer.release(batch)
    buffer.add([row], None, 2, None, 10, 0, 0)  # room again
    assert buffer.events == 1
