"""Benchmark of the ingestion service (issue 15, "Shown by"); not a test. Prints
medians of ``--runs`` runs on this machine, with the peer, forecast-bio/atdata-app
0.4.0b1's Jetstream ingestion loop, measured in the same runs on the same events.

Setup: the real local network (``atdata_gen.testing.localnet``: PDS and PLC) is
started and seeded by ``atdata_ingest.testing.relay.realistic_frames``; the frames
recorded from its ``subscribeRepos`` are the replay relay's templates. Two streams:

* ``mixed``: the realistic mix (mostly ``app.bsky.*`` posts, likes, follows,
  reposts, profiles; about 10 % ``science.alt.dataset.*`` operations; ``#identity``,
  ``#account``, ``#sync`` events), ``dataset_share=0.1``;
* ``dataset``: the same accounts' kind of activity with ``dataset_share=1.0``
  (every operation but the first profile is a ``science.alt.dataset.*`` record):
  the stream on which the peer writes one row for every event.

The relay runs in this process (a thread; it serves 70,000+ frames/s to a
``websockets`` reader, far above either consumer). Each consumer runs as its own
process against its own database on one private PostgreSQL 15 cluster with durable
settings (``PostgresCluster(fast=False)``: fsync and full-page writes on;
``track_commit_timestamp`` on for the lag).

"Events" are the same unit for both: one per record operation of a commit plus one
per ``#identity``/``#account`` event, which is exactly one Jetstream event each.
Our log also keeps ``#sync`` events (one row each; the peer never sees them): our
events/s below do not count them, ``rows/s`` does.

Sections (``--only`` picks some; all by default):

* ``throughput``: events/s sustained from the relay (sending as fast as the
  consumer reads, TCP backpressure) into PostgreSQL, through the real ingester
  process (``python -m atdata_ingest run``), with ``--verify none``, ``dataset``
  (the default) and ``all``; progress is ``ingest_cursor.last_seq`` polled every
  50 ms, the rate is taken from 10 % of the stream to its end; every run then
  checks that the log holds exactly the expected rows;
* ``peer``: atdata-app's ``jetstream_consumer`` (its own venv, built by
  ``scripts/atdata-app-env``, with its own migrations, on its own database) reading
  the relay's Jetstream endpoint (``/subscribe``): unfiltered on the mixed stream
  (every event reaches it; it writes the dataset ones), with its own default filter
  ``wantedCollections=science.alt.dataset.*`` on the mixed stream (the relay drops
  the rest for it, as Jetstream does: it receives about 1 event in 10), and on the
  dataset stream. Its progress is its own cursor (``cursor_state``, Jetstream
  ``time_us``; the relay's ``time_us`` is its start time plus the event's position
  in the stream, so the cursor says how many stream events are behind it), from
  10 % of the stream to its last commit event;
* ``lag``: p50/p99 from frame sent to row committed, at fixed relay rates: ``time``
  of each frame is rewritten by the relay to its send time (milliseconds, so a
  lag is over-stated by up to 1 ms), the commit time is
  ``pg_xact_commit_timestamp(xmin)`` of the row (``track_commit_timestamp``),
  i.e. when the batch's transaction committed, not ``indexed_at`` (which is taken
  before the COPY); the first 10 % of frames are left out (connection start-up);
* ``overload``: ``run --supervise`` (``--verify none`` by default: with
  verification inline the reader is slower than PostgreSQL and a burst waits in
  TCP and the relay, not in our buffer) at 25 % of the measured rate, with a burst
  at 10 times that rate: the ingester child's RSS (``/proc/<pid>/status``
  ``VmRSS``, every 20 ms) before and during the burst, the child's exits with 75
  (buffer overflow) and restarts, and the exactly-once check at the end; once with
  the default settings (backpressure: the reader waits up to ``PAUSE_MS`` above
  the high watermark) and once with ``PAUSE_MS=0`` (the reader reads on, the
  buffer fills, the child exits 75 on purpose and the supervisor restarts it from
  the cursor);
* ``api``: ``GET /events?since=&limit=1000`` reads/s by one client (keep-alive,
  following ``cursor``) against ``atdata-ingest serve`` (uvicorn), on the log a
  throughput run left, unfiltered and with a ``collection`` filter;
* ``retention``: trimming ``--retention-rows`` events spread over 5 old days down
  to the newest 3 days, by dropping daily partitions (``atdata_ingest.retention
  .trim``) vs by chunked ``DELETE`` (``retention.delete_older_than``) + VACUUM:
  seconds, WAL bytes (``pg_current_wal_lsn()`` difference) and table size before,
  after, and after VACUUM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import itertools
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import orjson
from atdata_gen.testing.localnet import LocalNetwork
from atdata_ingest.retention import delete_older_than, trim
from atdata_ingest.schema import ensure_partitions, migrate
from atdata_ingest.testing.postgres import PostgresCluster
from atdata_ingest.testing.relay import ReplayRelay, realistic_frames, split_frame

ROOT = Path(__file__).resolve().parent.parent

SECTIONS = ("throughput", "peer", "lag", "overload", "api", "retention")
VERIFY_MODES = ("none", "dataset", "all")
PEER_DEFAULT_FILTER = "science.alt.dataset.*"
POLL = 0.05
#: Every run's figures, by section, for ``--raw-json`` (``scripts/bench_all.py``
#: turns them into the ingest part of ``bench/results.json``).
RAW: dict[str, Any] = {}


def median_of(runs: list[dict[str, float]]) -> dict[str, float]:
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


def mib(n: float) -> str:
    return f"{n / 2**20:,.1f} MiB"


def _sql(dsn: str, query: str, *args: Any) -> Any:
    async def go() -> Any:
        conn = await asyncpg.connect(dsn)
        try:
            return await conn.fetchval(query, *args)
        finally:
            await conn.close()

    return asyncio.run(go())


def _fresh_db(pg: PostgresCluster, name: str, *, ours: bool) -> str:
    dsn = pg.create_database(name)
    if ours:

        async def go() -> None:
            conn = await asyncpg.connect(dsn)
            try:
                await migrate(conn)
            finally:
                await conn.close()

        asyncio.run(go())
    return dsn


_names = itertools.count(1)


def _drop(pg: PostgresCluster, dsn: str) -> None:
    """Drop the database of ``dsn`` (benchmark logs are large)."""
    name = dsn.rsplit("/", 1)[1]
    asyncio.run(_drop_database(pg.dsn, name))


def _db_name(prefix: str) -> str:
    return f"{prefix}_{next(_names)}"


# -- the streams ------------------------------------------------------------------------


@dataclass
class Stream:
    """Template frames and, per template, what it becomes: ``rows`` in our log
    (a commit's operations, else 1), ``events`` (Jetstream events: a commit's
    operations, 1 for ``#identity``/``#account``, 0 for ``#sync``) and the
    collections of its commit events (for the peer's filter)."""

    name: str
    frames: list[bytes]
    rows: list[int]
    events: list[int]
    commit_collections: list[list[str]]

    @classmethod
    def of(cls, name: str, frames: list[bytes]) -> Stream:
        rows, events, colls = [], [], []
        for frame in frames:
            header, body, _ = split_frame(frame)
            t = header.get("t")
            ops = (body.get("ops") or []) if t == "#commit" else []
            rows.append(max(1, len(ops)))
            events.append(
                len(ops) if t == "#commit" else int(t in ("#identity", "#account"))
            )
            colls.append([str(op["path"]).partition("/")[0] for op in ops])
        return cls(name, frames, rows, events, colls)

    def cumulative(self, per: list[int], seq: int) -> int:
        """Sum of ``per`` over frames 1..seq (templates repeat)."""
        cycles, rest = divmod(seq, len(self.frames))
        return cycles * sum(per) + sum(per[:rest])

    def last_wanted_position(self, n: int, wanted: str) -> int:
        """Stream position (1-based, over every Jetstream event of frames 1..n) of
        the last commit event a subscriber with ``wantedCollections=wanted``
        receives (its final cursor)."""
        prefixes = tuple(w[:-1] for w in wanted.split(",") if w.endswith(".*"))
        exact = {w for w in wanted.split(",") if w and not w.endswith(".*")}
        for k in range(n, 0, -1):
            r = (k - 1) % len(self.frames)
            colls = self.commit_collections[r]
            for i in range(len(colls) - 1, -1, -1):
                c = colls[i]
                if not wanted or c in exact or c.startswith(prefixes):
                    # events of frame k before it, plus its own 1-based index
                    return self.cumulative(self.events, k - 1) + i + 1
        return 0

    def describe(self) -> str:
        n = len(self.frames)
        ops = [c for cs in self.commit_collections for c in cs]
        ds = sum(c.startswith("science.alt.dataset.") for c in ops)
        return (
            f"{self.name}: {n} template frames, {sum(self.events)} events "
            f"({len(ops)} record operations, {ds} of them science.alt.dataset.*), "
            f"{sum(self.rows)} log rows, "
            f"{sum(map(len, self.frames)) / n:,.0f} bytes/frame"
        )


def _rate(
    samples: list[tuple[float, int]], final: int, start_fraction: float = 0.1
) -> float:
    """Units/s between the first sample at or past ``start_fraction`` of ``final``
    and the first at ``final``."""
    t0 = p0 = t1 = p1 = None
    for t, p in samples:
        if t0 is None and p >= final * start_fraction:
            t0, p0 = t, p
        if p >= final:
            t1, p1 = t, p
            break
    if t0 is None or t1 is None or p0 is None or p1 is None or t1 <= t0:
        raise RuntimeError(f"progress never reached {final}: {samples[-3:]}")
    return (p1 - p0) / (t1 - t0)


# -- our ingester ------------------------------------------------------------------------


def _clean_env(**extra: str) -> dict[str, str]:
    """This environment without ``ATDATA_INGEST_*`` settings, plus ``extra``; a
    first start reads the relay from its oldest frame (``START=oldest``)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("ATDATA_INGEST_") and k != "DATABASE_URL"
    }
    env["ATDATA_INGEST_START"] = "oldest"
    env.update(extra)
    return env


@contextlib.contextmanager
def _process(
    argv: Sequence[str], env: dict[str, str], log: Path, *, pipe: bool = False
) -> Iterator[subprocess.Popen[str]]:
    """A child process (stderr, and stdout unless ``pipe``, appended to ``log``),
    stopped by its pid on exit: SIGTERM, then SIGKILL after 60 s."""
    with log.open("a") as out:
        proc = subprocess.Popen(
            list(argv),
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if pipe else out,
            stderr=out,
            text=True,
        )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()


def _ingester_argv(relay_url: str, verify: str, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "atdata_ingest", "run", "--relay", relay_url,
        "--verify", verify, *extra,
    ]  # fmt: skip


def _poll_cursor(
    dsn: str,
    until: int,
    proc: subprocess.Popen[Any],
    timeout: float,
    query: str = "SELECT last_seq FROM ingest_cursor",
) -> list[tuple[float, int]]:
    """``(perf_counter, value of query)`` every :data:`POLL` s until it reaches
    ``until``; raises when the process exits first or after ``timeout`` s."""

    async def go() -> list[tuple[float, int]]:
        conn = await asyncpg.connect(dsn)
        samples: list[tuple[float, int]] = []
        deadline = time.monotonic() + timeout
        try:
            while True:
                value = int(await conn.fetchval(query) or 0)
                samples.append((time.perf_counter(), value))
                if value >= until:
                    return samples
                if proc.poll() is not None:
                    raise RuntimeError(
                        f"the consumer exited {proc.returncode} at {value}"
                    )
                if time.monotonic() > deadline:
                    raise RuntimeError(f"stuck at {value} of {until} after {timeout} s")
                await asyncio.sleep(POLL)
        finally:
            await conn.close()

    return asyncio.run(go())


def _check_log(dsn: str, stream: Stream, n: int) -> None:
    """Exactly the expected rows (count, no duplicate (seq, idx), every seq) and
    no dead letter."""

    async def go() -> tuple[int, int, int, int]:
        conn = await asyncpg.connect(dsn)
        try:
            return (
                await conn.fetchval("SELECT count(*) FROM ingest_events"),
                await conn.fetchval(
                    "SELECT count(*) FROM (SELECT 1 FROM ingest_events "
                    "GROUP BY seq, idx HAVING count(*) > 1) d"
                ),
                await conn.fetchval("SELECT count(DISTINCT seq) FROM ingest_events"),
                await conn.fetchval("SELECT count(*) FROM ingest_dead_letters"),
            )
        finally:
            await conn.close()

    rows, dups, seqs, dead = asyncio.run(go())
    want = stream.cumulative(stream.rows, n)
    if (rows, dups, seqs, dead) != (want, 0, n, 0):
        raise RuntimeError(
            f"log check failed: {rows} rows (want {want}), {dups} duplicates, "
            f"{seqs} seqs (want {n}), {dead} dead letters"
        )


_PLC_GET = re.compile(r"HTTP Request: GET \S+/did:plc:")


def _plc_lookups(log: Path) -> int:
    """DID documents the ingester fetched from the PLC (httpx logs each request)."""
    return len(_PLC_GET.findall(log.read_text(errors="replace")))


def ours_throughput(
    pg: PostgresCluster,
    net: LocalNetwork,
    stream: Stream,
    n: int,
    verify: str,
    work: Path,
) -> tuple[dict[str, float], str]:
    """One run of the real ingester over ``n`` frames sent as fast as it reads;
    returns the figures and the database's DSN (the caller drops it)."""
    dsn = _fresh_db(pg, _db_name("ours"), ours=True)
    log = work / f"ingest-{stream.name}-{verify}-{next(_names)}.log"
    env = _clean_env(ATDATA_INGEST_DATABASE_URL=dsn, ATDATA_INGEST_PLC_URL=net.plc_url)
    with (
        ReplayRelay(stream.frames, total=n) as relay,
        _process(_ingester_argv(relay.url, verify), env, log) as proc,
    ):
        t = time.perf_counter()
        samples = _poll_cursor(dsn, n, proc, timeout=600)
        wall = time.perf_counter() - t
    _check_log(dsn, stream, n)
    ev = [(t, stream.cumulative(stream.events, s)) for t, s in samples]
    rows = [(t, stream.cumulative(stream.rows, s)) for t, s in samples]
    out = {
        "events_s": _rate(ev, stream.cumulative(stream.events, n)),
        "rows_s": _rate(rows, stream.cumulative(stream.rows, n)),
        "frames_s": _rate(samples, n),
        "wall_s": wall,
        "plc_lookups": float(_plc_lookups(log)),
    }
    return out, dsn


# -- the peer: atdata-app 0.4.0b1 -------------------------------------------------------

#: Run in the peer's own venv (``python -c ADAPTER DSN URL COLLECTIONS``): what its
#: FastAPI lifespan (``atdata_app.main.lifespan``) does for ingestion, without the
#: HTTP app and without the backfill task (which reads a real relay's listRepos):
#: its ChangeStream, its pool and migrations, then its ``jetstream_consumer`` loop,
#: unchanged, pointed at our relay and database by its own settings.
PEER_ADAPTER = r"""
import asyncio, logging, sys
from types import SimpleNamespace

from atdata_app import database as db
from atdata_app.changestream import ChangeStream
from atdata_app.config import AppConfig
from atdata_app.ingestion.jetstream import jetstream_consumer


async def main(dsn, url, collections):
    config = AppConfig(
        database_url=dsn, jetstream_url=url, jetstream_collections=collections
    )
    state = SimpleNamespace(config=config, change_stream=ChangeStream())
    state.db_pool = await db.create_pool(config.database_url)
    await db.run_migrations(state.db_pool)
    print("ready", flush=True)
    await jetstream_consumer(SimpleNamespace(state=state))


logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
asyncio.run(main(*sys.argv[1:4]))
"""

PEER_TABLES = ("schemas", "entries", "labels", "lenses", "index_providers")


def peer_env() -> tuple[str, str]:
    """The peer's python and source directory (``scripts/atdata-app-env``)."""
    out = subprocess.run(
        [str(ROOT / "scripts" / "atdata-app-env")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\n")
    return out[0].strip(), out[1].strip()


def peer_throughput(
    pg: PostgresCluster,
    peer_python: str,
    stream: Stream,
    n: int,
    wanted: str,
    work: Path,
) -> dict[str, float]:
    """One run of atdata-app's Jetstream loop over ``n`` frames (as Jetstream
    events) sent as fast as it reads, ``wantedCollections=wanted``."""
    dsn = _fresh_db(pg, _db_name("peer"), ours=False)
    log = work / f"peer-{stream.name}-{wanted or 'all'}-{next(_names)}.log"
    final = stream.last_wanted_position(n, wanted)
    env = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/")}
    with ReplayRelay(stream.frames, total=n, close_at_end=True) as relay:
        t0 = relay.jetstream_time_us(1, 0) - 1  # time_us = t0 + stream position
        argv = [peer_python, "-c", PEER_ADAPTER, dsn, relay.jetstream_url, wanted]
        with _process(argv, env, log, pipe=True) as proc:
            assert proc.stdout is not None
            if proc.stdout.readline().strip() != "ready":
                raise RuntimeError(f"the peer did not start: {log.read_text()[-2000:]}")
            t = time.perf_counter()
            samples = _poll_cursor(
                dsn,
                t0 + final,
                proc,
                timeout=900,
                query="SELECT coalesce(max(cursor), 0) FROM cursor_state "
                "WHERE service = 'jetstream'",
            )
            wall = time.perf_counter() - t
    positions = [(t, max(0, c - t0)) for t, c in samples]
    stored = sum(
        int(_sql(dsn, f"SELECT count(*) FROM {table}")) for table in PEER_TABLES
    )
    failed = log.read_text(errors="replace").count("Failed to upsert")
    _drop(pg, dsn)
    return {
        "events_s": _rate(positions, final),
        "wall_s": wall,
        "stored": float(stored),
        "failed": float(failed),
    }


# -- lag ---------------------------------------------------------------------------------

_LAG = """
SELECT percentile_cont(ARRAY[0.5, 0.99]) WITHIN GROUP (ORDER BY lag) AS q,
       max(lag) AS worst, count(*) AS n
FROM (SELECT extract(epoch FROM pg_xact_commit_timestamp(xmin) - event_time)
             ::float8 AS lag
      FROM ingest_events WHERE idx = 0 AND seq > $1) l
"""


def ours_lag(
    pg: PostgresCluster,
    net: LocalNetwork,
    stream: Stream,
    rate: float,
    seconds: float,
    verify: str,
    work: Path,
) -> dict[str, float]:
    n = int(rate * seconds)
    log = work / f"lag-{verify}-{next(_names)}.log"
    dsn = _fresh_db(pg, _db_name("lag"), ours=True)
    env = _clean_env(ATDATA_INGEST_DATABASE_URL=dsn, ATDATA_INGEST_PLC_URL=net.plc_url)
    with (
        ReplayRelay(stream.frames, total=n, rate=rate) as relay,
        _process(_ingester_argv(relay.url, verify), env, log) as proc,
    ):
        _poll_cursor(dsn, n, proc, timeout=seconds * 10 + 120)
    _check_log(dsn, stream, n)

    async def go() -> Any:
        conn = await asyncpg.connect(dsn)
        try:
            return await conn.fetchrow(_LAG, n // 10)
        finally:
            await conn.close()

    row = asyncio.run(go())
    _drop(pg, dsn)
    return {
        "p50_ms": row["q"][0] * 1000,
        "p99_ms": row["q"][1] * 1000,
        "max_ms": row["worst"] * 1000,
        "frames": float(row["n"]),
        "plc_lookups": float(_plc_lookups(log)),
    }


# -- overload ----------------------------------------------------------------------------

_STARTED = re.compile(rb"started child pid=(\d+)")


def _rss_kib(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def ours_overload(
    pg: PostgresCluster,
    net: LocalNetwork,
    stream: Stream,
    steady: float,
    steady_seconds: float,
    burst_seconds: float,
    verify: str,
    work: Path,
    settings: dict[str, str] | None = None,
) -> dict[str, float]:
    """``run --supervise --verify VERIFY`` (plus ``settings``, environment
    variables) with the relay at ``steady`` frames/s, a burst of
    ``10 * steady`` frames/s for ``burst_seconds`` after ``steady_seconds``, then
    steady again for ``steady_seconds``."""
    before = int(steady * steady_seconds)
    burst = int(10 * steady * burst_seconds)
    n = before + burst + before
    dsn = _fresh_db(pg, _db_name("overload"), ours=True)
    log = work / f"overload-{time.monotonic_ns()}.log"
    env = _clean_env(
        ATDATA_INGEST_DATABASE_URL=dsn,
        ATDATA_INGEST_PLC_URL=net.plc_url,
        ATDATA_INGEST_LOG_INTERVAL_SECONDS="1",
        **(settings or {}),
    )
    argv = _ingester_argv(
        "", verify, "--supervise", "--backoff-initial", "0.2", "--backoff-max", "2"
    )
    rss: list[tuple[int, int, int]] = []  # (last seq sent, child pid, KiB)
    stop = threading.Event()
    with ReplayRelay(
        stream.frames, total=n, rate=steady, bursts=[(before + 1, burst, 10 * steady)]
    ) as relay:
        argv[argv.index("--relay") + 1] = relay.url

        def sample() -> None:
            while not stop.is_set():
                pids = [int(p) for p in _STARTED.findall(log.read_bytes())]
                if pids:
                    kib = _rss_kib(pids[-1])
                    if kib is not None:
                        rss.append((relay.last_seq_sent, pids[-1], kib))
                stop.wait(0.02)

        with _process(argv, env, log) as proc:
            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            try:
                _poll_cursor(dsn, n, proc, timeout=(n / steady) * 10 + 300)
            finally:
                stop.set()
                sampler.join()
        drops = relay.too_slow_drops
    _check_log(dsn, stream, n)
    _drop(pg, dsn)
    text = log.read_text(errors="replace")
    steady_rss = [k for s, _, k in rss if s <= before]
    burst_rss = [k for s, _, k in rss if s > before]
    return {
        "rss_steady_mib": max(steady_rss) / 1024 if steady_rss else 0.0,
        "rss_peak_mib": max(k for _, _, k in rss) / 1024,
        "rss_burst_median_mib": statistics.median(burst_rss) / 1024
        if burst_rss
        else 0.0,
        "exits_75": float(text.count("75 EX_TEMPFAIL")),
        "children": float(len(_STARTED.findall(text.encode()))),
        "relay_drops": float(drops),
        "frames": float(n),
    }


# -- /events -----------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def api_reads(
    dsn: str, seconds: float, runs: int, work: Path
) -> dict[str, dict[str, float]]:
    """``GET /events?limit=1000`` by one keep-alive client for ``seconds`` per run,
    following ``cursor`` (back to 0 at the end of the log)."""
    env = _clean_env(ATDATA_INGEST_DATABASE_URL=dsn)
    token = subprocess.run(
        [sys.executable, "-m", "atdata_ingest", "token", "add", f"bench{time.time_ns()}",
         "--rate", "10000", "--burst", "100000"],
        env=env, capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    port = _free_port()
    argv = [sys.executable, "-m", "atdata_ingest", "serve", "--port", str(port)]
    results: dict[str, dict[str, float]] = {}
    with _process(argv, env, work / "serve.log"):
        base = f"http://127.0.0.1:{port}"
        with httpx.Client(
            base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=30
        ) as client:
            deadline = time.monotonic() + 60
            while True:
                with contextlib.suppress(httpx.HTTPError):
                    if client.get("/health").status_code in (200, 503):
                        break
                if time.monotonic() > deadline:
                    raise RuntimeError("the API did not start")
                time.sleep(0.1)
            variants: dict[str, dict[str, str]] = {
                "all events": {},
                "collection=app.bsky.feed.like": {"collection": "app.bsky.feed.like"},
            }
            per_run: dict[str, list[dict[str, float]]] = {k: [] for k in variants}
            for _ in range(runs):  # variants interleaved: both see the same load
                for label, params in variants.items():
                    since, reads, events, nbytes = 0, 0, 0, 0
                    t0 = time.perf_counter()
                    while (elapsed := time.perf_counter() - t0) < seconds:
                        r = client.get(
                            "/events", params={"since": since, "limit": 1000, **params}
                        )
                        if r.status_code != 200:
                            raise RuntimeError(
                                f"/events {r.status_code}: {r.text[:300]}"
                            )
                        page = orjson.loads(r.content)
                        reads += 1
                        events += len(page["events"])
                        nbytes += len(r.content)
                        since = page["cursor"] if page["more"] else 0
                    per_run[label].append(
                        {
                            "reads_s": reads / elapsed,
                            "events_s": events / elapsed,
                            "kib_per_read": nbytes / reads / 1024,
                        }
                    )
            results = {k: median_of(v) for k, v in per_run.items()}
            RAW["api"] = per_run
    return results


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
    RAW["retention"] = {"rows": rows, "gone": rows * 2 // LOADED_DAYS, **results}
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
        ratio = f"{b / a:,.1f}x" if a > 0 else "-"
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
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


# -- the report --------------------------------------------------------------------------


def _fmt(x: float) -> str:
    return f"{x:,.0f}"


def report_throughput(
    ours: dict[tuple[str, str], list[dict[str, float]]],
    peer: dict[tuple[str, str], list[dict[str, float]]],
    runs: int,
) -> None:
    print(f"\nthroughput, events/s (median of {runs}; ours: frames/s, rows/s)")
    print(f"{'':52}{'atdata-ingest':>14}{'atdata-app':>12}{'ours/peer':>11}")
    m_ours = {k: median_of(v) for k, v in ours.items() if v}
    m_peer = {k: median_of(v) for k, v in peer.items() if v}

    def line(
        label: str, o: dict[str, float] | None, p: dict[str, float] | None
    ) -> None:
        left = _fmt(o["events_s"]) if o else ""
        right = _fmt(p["events_s"]) if p else ""
        ratio = f"{o['events_s'] / p['events_s']:.1f}x" if o and p else ""
        print(f"{label:52}{left:>14}{right:>12}{ratio:>11}")
        if o:
            print(
                f"{'':8}(ours: {_fmt(o['frames_s'])} frames/s, "
                f"{_fmt(o['rows_s'])} rows/s)"
            )

    peer_all = m_peer.get(("mixed", ""))
    print("mixed stream (peer: unfiltered, every event reaches it)")
    for verify in VERIFY_MODES:
        tag = " (default)" if verify == "dataset" else ""
        line(f"  --verify {verify}{tag}", m_ours.get(("mixed", verify)), peer_all)
    own = m_peer.get(("mixed", PEER_DEFAULT_FILTER))
    if own:
        line(f"  peer with wantedCollections={PEER_DEFAULT_FILTER}", None, own)
    print("dataset stream (the peer upserts a row for every event)")
    peer_ds = m_peer.get(("dataset", ""))
    for verify in ("none", "dataset"):
        line(f"  --verify {verify}", m_ours.get(("dataset", verify)), peer_ds)
    lookups = [
        f"{name}/{verify}: {o['plc_lookups']:.0f}"
        for (name, verify), o in sorted(m_ours.items())
        if verify != "none"
    ]
    if lookups:
        print(
            "  ours: DID documents fetched from the PLC per run (stream/verify): "
            + ", ".join(lookups)
        )
    if m_peer:
        notes = []
        for (name, wanted), p in sorted(m_peer.items()):
            notes.append(
                f"{name}/{wanted or 'unfiltered'}: {p['stored']:.0f} rows upserted "
                f"(distinct keys), {p['failed']:.0f} upserts failed"
            )
        print("  peer: " + "; ".join(notes))
        if own:
            print(
                "  with its own filter the peer is sent only the science.alt.dataset.* "
                "commits and the identity/account events (the relay filters, as "
                "Jetstream does); its rate counts the stream events it passed over, "
                "not ones it received"
            )


def _auto_rates(
    ours: dict[tuple[str, str], list[dict[str, float]]],
    fractions: Sequence[float],
    verify: str = "dataset",
) -> list[float]:
    """``fractions`` of the measured mixed-stream frames/s with ``verify``
    (rounded to 100), else of 2,000 frames/s."""
    runs = ours.get(("mixed", verify))
    if not runs:
        return [max(100.0, round(2000 * f / 100) * 100) for f in fractions]
    top = median_of(runs)["frames_s"]
    return [max(100.0, round(top * f / 100) * 100) for f in fractions]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument(
        "--only", action="append", choices=SECTIONS, help="run only these sections"
    )
    ap.add_argument("--frames", type=int, default=50_000, help="ours, mixed stream")
    ap.add_argument(
        "--dataset-frames", type=int, default=30_000, help="ours, dataset stream"
    )
    ap.add_argument("--peer-frames", type=int, default=20_000, help="peer, mixed")
    ap.add_argument(
        "--peer-dataset-frames", type=int, default=3_000, help="peer, dataset stream"
    )
    ap.add_argument("--accounts", type=int, default=8)
    ap.add_argument("--records", type=int, default=60, help="per account")
    ap.add_argument(
        "--lag-rates",
        default="",
        help="frames/s, comma-separated (default: 50%% and 80%% of the measured "
        "mixed --verify dataset rate, else 1000,1600)",
    )
    ap.add_argument("--lag-seconds", type=float, default=20.0)
    ap.add_argument(
        "--steady-rate",
        type=float,
        default=0.0,
        help="overload: steady frames/s (default: 25%% of the measured rate with "
        "--overload-verify, else 500); the burst is 10 times it",
    )
    ap.add_argument(
        "--overload-verify",
        choices=VERIFY_MODES,
        default="none",
        help="overload: the ingester's --verify (default none: the reader then "
        "outruns PostgreSQL, so a burst fills our buffer; with verification inline "
        "the reader is the slower side and a burst queues in TCP and the relay)",
    )
    ap.add_argument("--steady-seconds", type=float, default=10.0)
    ap.add_argument("--burst-seconds", type=float, default=5.0)
    ap.add_argument("--api-seconds", type=float, default=8.0)
    ap.add_argument("--retention-rows", type=int, default=1_000_000)
    ap.add_argument(
        "--raw-json",
        type=Path,
        default=None,
        help="write every run's figures here (scripts/bench_all.py reads them)",
    )
    args = ap.parse_args()
    RAW.update(
        settings={k: v for k, v in vars(args).items() if k != "raw_json"},
        load_before=list(os.getloadavg()),
        started=time.time(),
        date=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    )
    only = set(args.only or SECTIONS)
    runs = args.runs
    work = Path(tempfile.mkdtemp(prefix="atdata-bench-ingest-"))
    load = os.getloadavg()
    print(
        f"bench_ingest: {os.cpu_count()} CPUs, load average {load[0]:.1f} "
        f"{load[1]:.1f} {load[2]:.1f} at start; logs in {work}"
    )
    net_needed = bool(only - {"retention"})
    with (
        PostgresCluster(fast=False, settings={"track_commit_timestamp": "on"}) as pg,
        LocalNetwork.start() if net_needed else contextlib.nullcontext() as net,
    ):
        print(f"PostgreSQL: {_sql(pg.dsn, 'SELECT version()').split(',')[0]}")
        ours: dict[tuple[str, str], list[dict[str, float]]] = {}
        peer: dict[tuple[str, str], list[dict[str, float]]] = {}
        api_dsn: str | None = None
        if net_needed:
            t = time.perf_counter()
            mixed = Stream.of(
                "mixed", realistic_frames(net, args.accounts, args.records)
            )
            dataset = Stream.of(
                "dataset",
                realistic_frames(net, args.accounts, args.records, dataset_share=1.0),
            )
            print(
                f"templates recorded from the local PDS in {time.perf_counter() - t:.0f} s"
            )
            for stream in (mixed, dataset):
                print("  " + stream.describe())
            RAW["streams"] = {
                s.name: {"frames": len(s.frames), "events": sum(s.events)}
                for s in (mixed, dataset)
            }
            peer_python = peer_env()[0] if "peer" in only else ""
            for run in range(runs):
                print(f"run {run + 1}/{runs} ...", flush=True)
                if "throughput" in only or (
                    "api" in only and run == 0 and api_dsn is None
                ):
                    modes = VERIFY_MODES if "throughput" in only else ("dataset",)
                    for verify in modes:
                        r, dsn = ours_throughput(
                            pg, net, mixed, args.frames, verify, work
                        )
                        ours.setdefault(("mixed", verify), []).append(r)
                        if verify == "dataset" and api_dsn is None and "api" in only:
                            api_dsn = dsn
                        else:
                            _drop(pg, dsn)
                    if "throughput" in only:
                        for verify in ("none", "dataset"):
                            r, dsn = ours_throughput(
                                pg, net, dataset, args.dataset_frames, verify, work
                            )
                            ours.setdefault(("dataset", verify), []).append(r)
                            _drop(pg, dsn)
                if "peer" in only:
                    for stream, n, wanted in (
                        (mixed, args.peer_frames, ""),
                        (mixed, args.peer_frames, PEER_DEFAULT_FILTER),
                        (dataset, args.peer_dataset_frames, ""),
                    ):
                        r = peer_throughput(pg, peer_python, stream, n, wanted, work)
                        peer.setdefault((stream.name, wanted), []).append(r)
            RAW["ours"] = {"/".join(k): v for k, v in ours.items()}
            RAW["peer"] = {"/".join(k): v for k, v in peer.items()}
            if ours or peer:
                report_throughput(
                    {k: v for k, v in ours.items() if "throughput" in only}, peer, runs
                )

            if "lag" in only:
                rates = [
                    (r, v)
                    for r in (
                        [float(x) for x in args.lag_rates.split(",")]
                        if args.lag_rates
                        else _auto_rates(ours, (0.5, 0.8))
                    )
                    for v in ("none", "dataset")
                ]
                if not args.lag_rates and ours.get(("mixed", "none")):
                    top = median_of(ours[("mixed", "none")])["frames_s"]
                    rates.append((max(100.0, round(top * 0.6 / 100) * 100), "none"))
                print(
                    f"\ncommit lag, frame sent -> batch committed "
                    f"(pg_xact_commit_timestamp), mixed stream, "
                    f"{args.lag_seconds:.0f} s at each rate, median of {runs}"
                )
                for rate, verify in rates:
                    lag_runs = [
                        ours_lag(pg, net, mixed, rate, args.lag_seconds, verify, work)
                        for _ in range(runs)
                    ]
                    m = median_of(lag_runs)
                    ev = rate * sum(mixed.events) / len(mixed.frames)
                    RAW.setdefault("lag", []).append(
                        {"rate": rate, "events_s": ev, "verify": verify,
                         "runs": lag_runs}
                    )  # fmt: skip
                    print(
                        f"  {rate:>7,.0f} frames/s ({ev:>6,.0f} events/s), --verify "
                        f"{verify:7}: p50 {m['p50_ms']:>5.0f} ms, p99 "
                        f"{m['p99_ms']:>5.0f} ms, max {m['max_ms']:>5.0f} ms"
                        + (
                            f" ({m['plc_lookups']:.0f} PLC lookups)"
                            if verify != "none"
                            else ""
                        )
                    )

            if "overload" in only:
                ov = args.overload_verify
                steady = args.steady_rate or _auto_rates(ours, (0.25,), ov)[0]
                print(
                    f"\noverload: run --supervise --verify {ov}, relay {steady:,.0f} "
                    f"frames/s for {args.steady_seconds:.0f} s, then "
                    f"{10 * steady:,.0f} frames/s for {args.burst_seconds:.0f} s, then "
                    f"{steady:,.0f} frames/s again (mixed); median of {runs}"
                )
                for label, extra in (
                    ("default settings", {}),
                    ("PAUSE_MS=0 (no wait above the watermark)", {
                        "ATDATA_INGEST_PAUSE_MS": "0"
                    }),
                ):  # fmt: skip
                    ov_runs = [
                        ours_overload(
                            pg,
                            net,
                            mixed,
                            steady,
                            args.steady_seconds,
                            args.burst_seconds,
                            ov,
                            work,
                            extra,
                        )
                        for _ in range(runs)
                    ]
                    m = median_of(ov_runs)
                    RAW.setdefault("overload", []).append(
                        {"label": label, "steady": steady, "verify": ov,
                         "runs": ov_runs}
                    )  # fmt: skip
                    print(
                        f"  {label}: ingester RSS peak {m['rss_steady_mib']:.0f} MiB "
                        f"before the burst, {m['rss_peak_mib']:.0f} MiB overall "
                        f"(median {m['rss_burst_median_mib']:.0f} MiB from the burst "
                        f"on); exits with 75: {m['exits_75']:.0f}, children started: "
                        f"{m['children']:.0f}, relay ConsumerTooSlow drops: "
                        f"{m['relay_drops']:.0f}; all {m['frames']:,.0f} frames stored "
                        "exactly once"
                    )

            if "api" in only and api_dsn is not None:
                rows = _sql(api_dsn, "SELECT count(*) FROM ingest_events")
                print(
                    f"\nGET /events?limit=1000, one keep-alive client, {rows:,} rows in "
                    f"the log, {args.api_seconds:.0f} s per run, median of {runs}"
                )
                for label, m in api_reads(
                    api_dsn, args.api_seconds, runs, work
                ).items():
                    print(
                        f"  {label:32} {m['reads_s']:>7,.0f} reads/s "
                        f"{m['events_s']:>10,.0f} events/s "
                        f"({m['kib_per_read']:,.0f} KiB/read)"
                    )
                _drop(pg, api_dsn)

        if "retention" in only:
            bench_retention(pg, args.retention_rows, runs)
    sys.stdout.flush()
    if args.raw_json is not None:
        RAW["load_after"] = list(os.getloadavg())
        RAW["wall_s"] = time.time() - RAW.pop("started")
        args.raw_json.parent.mkdir(parents=True, exist_ok=True)
        args.raw_json.write_text(orjson.dumps(RAW, option=orjson.OPT_INDENT_2).decode())


if __name__ == "__main__":
    main()
