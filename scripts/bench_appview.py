"""Benchmark of the AppView (issue 16, "Shown by"); not a test. Prints medians of
``--runs`` runs on this machine, with the peer, forecast-bio/atdata-app 0.4.0b1,
served in the same runs on the same records in the same PostgreSQL, and writes
them to ``bench/appview.json``.

Setup: one private PostgreSQL 15 cluster (``PostgresCluster(fast=False)``: fsync
and full-page writes on; ``shared_buffers`` 512 MB, so that both databases stay
in memory), two databases:

* ``ours``: the ingestion and AppView schemas migrated; the seed
  (:mod:`atdata_appview.testing.seed`: 100,000 entries, 10,000 schemas, 2,000
  lenses and 3,333 labels by 300 publishers, each with an ``#identity`` row for
  its handle) written into ``ingest_events`` as the ingester writes it
  (:func:`atdata_appview.testing.log.append_rows`, binary COPY) and folded by our
  indexer (:class:`atdata_appview.indexer.Indexer`, its default batch of 500, the
  schema-history hook on, ``require_verified``) collection by collection, each
  timed: the fold rate, records/s. The seed's handles are then recorded as
  verified (``appview_accounts.verified_handle``, what the handle verifier writes
  for a handle that resolves both ways; these invented handles resolve nowhere);
* ``peer``: atdata-app's own migrations (``run_migrations``: its
  ``sql/schema.sql``), then the same records as Jetstream commit events through
  its own ingestion function (``atdata_app.ingestion.processor.process_commit``,
  which calls its ``upsert_*``), 8 at a time on its pool, in its own venv
  (``scripts/atdata-app-env``). One difference, on purpose: its copy of each
  schema is keyed ``{name}@{version}``, the key its ``resolveSchema`` looks up
  (``sql/schema.sql``: "rkey format: {NSID}@{semver}"). With the records' real
  keys (``{name}:{version}`` or TIDs; ``@`` is not a record-key character, so no
  real record has its kind of key) it answers 404 to every resolveSchema.

Both are then ``VACUUM ANALYZE``-d.

Serving: ours is ``python -m atdata_appview serve`` after ``migrate`` (the
checkout's code as it is when the server starts; ``create_app`` under uvicorn,
one worker; rate limits off: ``ATDATA_APPVIEW_RATE_PER_SECOND=0``; the rest
default: a pool of 10 connections); the peer is ``uvicorn atdata_app.main:app``
(its ``create_app``, one worker, its pool of 10; access log off for both), its
Jetstream consumer and backfill pointed at a closed loopback port (each fails at
once; the consumer then backs off up to 60 s, the backfill ends: the idle CPU of
each server is measured and printed). Its environment has uvloop and httptools
(``uvicorn[standard]``, as its Dockerfile runs it); ours has neither (plain
asyncio and h11): ``--peer-stack same`` runs the peer on asyncio and h11 too.
One server at a time, so they never share the two cores while measured; in each
run ours then the peer, each started afresh.

Load: ``scripts/bench_appview_load.py``, a separate process, ``--concurrency``
keep-alive connections (16), per method ``--warmup`` s unrecorded then
``--duration`` s measured; then the same at ``--latency-concurrency`` (1): the
latency of one client alone. Queries (:meth:`Seed.workload`, the same for both):

* ``searchDatasets``: 40 % one word, 25 % two words, 15 % a word and ``tags``,
  10 % a word and ``schemaRef``, 10 % a word followed by its second page
  (``cursor``); words Zipf-distributed within their domain, as in the records;
* ``getEntry``: random entries;
* ``resolveSchema``: a random publisher's schema by DID (``handle=did:…``; the
  peer resolves a handle through DNS/HTTP, a network call), name, and 70 % an
  exact version, else the latest;
* ``getLensPath`` (ours only; the peer has none: "—"): pairs joined by a chain of
  1-4 lenses and structural steps;
* ours only, also ``resolveSchema`` by handle.

Backfill: the real local PDS and PLC (:class:`atdata_gen.testing.localnet.
LocalNetwork`), ``--repos`` accounts (created and written 8 at a time:
``createAccount``, then one ``applyWrites`` of ``--records-per-repo`` records:
a schema, entries of it and, from 4, a label; timed), then per run a fresh
database and :class:`atdata_appview.backfill.Backfiller` over the PDS's
``listRepos`` (concurrency ``--backfill-concurrency``), every repository read
with ``getRepo`` and verified (block hashes, the commit's signature by the DID
document's key, the MST): records/s and repos/s of the run, and a check that
every record was indexed. Then ``--big-repos`` more repositories (100) of
``--big-records`` records (30) are published and the whole PDS is backfilled
again per run (fresh databases): a backfill's cost is mostly per repository.

Goals (printed met/missed): searchDatasets p99 < 20 ms; at least 2x atdata-app's
requests/s at equal or better p99 (per method both serve); backfill >= 500
records/s verified.

    scripts/bench_appview                # the full run (about 15-20 minutes)
    scripts/bench_appview --quick        # small sizes, one run: a smoke run
    scripts/bench_appview --repos 100    # a smaller backfill
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import orjson
from atdata_appview.backfill import Backfiller
from atdata_appview.indexer import Indexer
from atdata_appview.schema import migrate as migrate_appview
from atdata_appview.testing.log import LogWriter, append_rows
from atdata_appview.testing.seed import Seed, SeedRecord, generate, repo_records
from atdata_gen.testing.localnet import LocalNetwork
from atdata_ingest.schema import migrate as migrate_ingest
from atdata_ingest.testing.postgres import PostgresCluster

ROOT = Path(__file__).resolve().parent.parent
LOAD = ROOT / "scripts" / "bench_appview_load.py"
OUT = ROOT / "bench" / "appview.json"

SECTIONS = ("queries", "backfill")
METHODS = ("searchDatasets", "getEntry", "resolveSchema", "getLensPath")
PEER_METHODS = ("searchDatasets", "getEntry", "resolveSchema")
EXTRA = "resolveSchemaByHandle"
CHUNK = 10_000
SEARCH_P99_GOAL_MS = 20.0
RPS_RATIO_GOAL = 2.0
BACKFILL_GOAL = 500.0


# -- small helpers ---------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _spread(values: Sequence[float]) -> dict[str, Any]:
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "runs": list(values),
    }


def _git(*args: str) -> str:
    try:
        return subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.rstrip("\n")
    except (OSError, subprocess.CalledProcessError):
        return ""


def _cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` (and its reaped children), seconds."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


async def _execute(dsn: str, *statements: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        for s in statements:
            await conn.execute(s)
    finally:
        await conn.close()


async def _fetchval(dsn: str, query: str, *args: Any) -> Any:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetchval(query, *args)
    finally:
        await conn.close()


def peer_env() -> tuple[str, str]:
    """The peer's python and source directory (``scripts/atdata-app-env``)."""
    out = subprocess.run(
        [str(ROOT / "scripts" / "atdata-app-env")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\n")
    return out[0].strip(), out[1].strip()


@contextlib.contextmanager
def _process(
    argv: Sequence[str], env: dict[str, str], log: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """A child process (stdout and stderr appended to ``log``), stopped by its pid
    on exit: SIGTERM, then SIGKILL after 30 s."""
    with log.open("ab") as out:
        proc = subprocess.Popen(
            list(argv), env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=out
        )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


def _base_env() -> dict[str, str]:
    """This environment without the services' settings."""
    drop = ("ATDATA_APPVIEW_", "ATDATA_INGEST_")
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(drop) and k != "DATABASE_URL"
    }


# -- seeding -----------------------------------------------------------------------------


async def seed_ours(dsn: str, seed: Seed, batch_size: int) -> dict[str, Any]:
    """Migrate, write the seed into the log and fold it, collection by collection
    (identities with the schemas); returns the timings."""
    conn = await asyncpg.connect(dsn)
    try:
        await migrate_ingest(conn)
        await migrate_appview(conn)
    finally:
        await conn.close()
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=3)
    writer = LogWriter()
    phases: dict[str, dict[str, float]] = {}
    try:
        indexer = Indexer(
            pool, batch_size=batch_size, require_verified=True, listen=False
        )
        groups: list[tuple[str, Sequence[SeedRecord], bool]] = [
            ("schemas", seed.schemas, True),
            ("lenses", seed.lenses, False),
            ("entries", seed.entries, False),
            ("labels", seed.labels, False),
        ]
        for label, records, identities in groups:
            rows = list(seed.log_rows(records, writer=writer, identities=identities))
            t = time.perf_counter()
            async with pool.acquire() as c:
                for i in range(0, len(rows), CHUNK):
                    await append_rows(c, rows[i : i + CHUNK])
            append_s = time.perf_counter() - t
            t = time.perf_counter()
            folded = 0
            while True:
                n = await indexer.fold_once()
                folded += n
                if n == 0:
                    break
            fold_s = time.perf_counter() - t
            phases[label] = {
                "rows": float(len(rows)),
                "records": float(len(records)),
                "append_s": append_s,
                "fold_s": fold_s,
                "fold_records_s": len(records) / fold_s if fold_s > 0 else 0.0,
            }
        stats = indexer.stats
        counts = {}
        async with pool.acquire() as c:
            for table in (
                "appview_schemas", "appview_entries", "appview_lenses",
                "appview_labels", "appview_dead_letters", "appview_schema_compat",
                "appview_accounts",
            ):  # fmt: skip
                counts[table] = int(await c.fetchval(f"SELECT count(*) FROM {table}"))
            verdicts = {
                r["verdict"]: int(r["n"])
                for r in await c.fetch(
                    "SELECT verdict, count(*) AS n FROM appview_schema_compat GROUP BY 1"
                )
            }
        verified = await _mark_handles_verified(pool)
    finally:
        await pool.close()
    await _execute(dsn, "VACUUM ANALYZE")
    total_records = sum(p["records"] for p in phases.values())
    total_fold = sum(p["fold_s"] for p in phases.values())
    return {
        "phases": phases,
        "records": total_records,
        "fold_s": total_fold,
        "fold_records_s": total_records / total_fold if total_fold > 0 else 0.0,
        "append_rows_s": sum(p["rows"] for p in phases.values())
        / max(1e-9, sum(p["append_s"] for p in phases.values())),
        "counts": counts,
        "verdicts": verdicts,
        "history_recomputed": stats.history,
        "history_errors": stats.history_errors,
        "dead_letters": stats.dead_letters,
        "handles_marked_verified": verified,
    }


async def _mark_handles_verified(pool: asyncpg.Pool) -> int:
    """Record every claimed handle as verified, as
    :func:`atdata_appview.handles.verify_handles` does for a handle that resolves
    to its DID both ways: the seed's handles are invented, so nothing on the
    network can verify them, and queries resolve only verified handles. Returns
    the accounts marked (0 when this schema has no ``verified_handle``)."""
    cols = {
        r["column_name"]
        for r in await pool.fetch(
            "SELECT column_name FROM information_schema.columns "
            "WHERE table_name = 'appview_accounts'"
        )
    }
    if "verified_handle" not in cols:
        return 0
    sets = ["verified_handle = handle"]
    if "handle_checked" in cols:
        sets.append("handle_checked = handle")
    if "handle_checked_at" in cols:
        sets.append("handle_checked_at = now()")
    done = await pool.execute(
        f"UPDATE appview_accounts SET {', '.join(sets)} WHERE handle IS NOT NULL"
    )
    return int(done.split()[-1])


#: Run in the peer's venv (``python -c PEER_SEED DSN EVENTS_JSONL CONCURRENCY``):
#: its migrations, then every event through its own ``process_commit`` (which
#: swallows and logs a failed upsert: they are counted from its log records).
PEER_SEED = r"""
import asyncio, json, logging, sys, time

from atdata_app import database as db
from atdata_app.ingestion.processor import process_commit

failed = 0

class Count(logging.Handler):
    def emit(self, record):
        global failed
        if record.levelno >= logging.ERROR:
            failed += 1

logging.getLogger("atdata_app").addHandler(Count())


async def main(dsn, path, concurrency):
    pool = await db.create_pool(dsn)
    await db.run_migrations(pool)
    with open(path, encoding="utf-8") as f:
        events = [json.loads(line) for line in f]
    sem = asyncio.Semaphore(concurrency)

    async def one(event):
        async with sem:
            await process_commit(pool, event)

    t = time.perf_counter()
    for i in range(0, len(events), 5000):
        await asyncio.gather(*(one(e) for e in events[i : i + 5000]))
    seconds = time.perf_counter() - t
    await pool.close()
    print(json.dumps({"events": len(events), "seconds": seconds, "failed": failed}))


asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
"""


def peer_rkey(record: SeedRecord) -> str:
    """The peer's key of a record: ``{name}@{version}`` for a schema (see the
    module doc), else the record's own."""
    if record.collection == "science.alt.dataset.schema":
        return f"{record.record['name']}@{record.record['version']}"
    return record.rkey


def seed_peer(
    dsn: str, seed: Seed, peer_python: str, work: Path, concurrency: int = 8
) -> dict[str, Any]:
    """The seed through the peer's own ingestion, in its venv; returns timings and
    table counts."""
    events = work / "peer-events.jsonl"
    t0 = 1_760_000_000_000_000
    with events.open("wb") as f:
        for n, r in enumerate(seed.records()):
            event = {
                "did": r.did,
                "time_us": t0 + n,
                "kind": "commit",
                "commit": {
                    "rev": "",
                    "operation": "create",
                    "collection": r.collection,
                    "rkey": peer_rkey(r),
                    "record": r.record,
                    "cid": r.cid,
                },
            }
            f.write(orjson.dumps(event) + b"\n")
    env = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/")}
    out = subprocess.run(
        [peer_python, "-c", PEER_SEED, dsn, str(events), str(concurrency)],
        check=False,
        env=env,
        capture_output=True,
        text=True,
        timeout=3600,
    )
    if out.returncode != 0:
        raise RuntimeError(f"the peer's seeding failed: {out.stderr[-3000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    events.unlink()

    async def counts() -> dict[str, int]:
        conn = await asyncpg.connect(dsn)
        try:
            return {
                t: int(await conn.fetchval(f"SELECT count(*) FROM {t}"))
                for t in ("schemas", "entries", "lenses", "labels")
            }
        finally:
            await conn.close()

    got = asyncio.run(counts())
    asyncio.run(_execute(dsn, "VACUUM ANALYZE"))
    return {
        "events": result["events"],
        "seconds": result["seconds"],
        "events_s": result["events"] / result["seconds"],
        "failed": result["failed"],
        "counts": got,
    }


# -- serving -----------------------------------------------------------------------------


def _wait_http(
    url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2).status_code < 600:
                return
        if proc.poll() is not None:
            raise RuntimeError(
                f"the server exited {proc.returncode}: {log.read_text(errors='replace')[-3000:]}"
            )
        if time.monotonic() > deadline:
            raise RuntimeError(f"the server did not answer {url} within {timeout} s")
        time.sleep(0.2)


@contextlib.contextmanager
def serve_ours(dsn: str, work: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    port = _free_port()
    env = _base_env()
    env.update(
        ATDATA_APPVIEW_DSN=dsn,
        ATDATA_APPVIEW_HOST="127.0.0.1",
        ATDATA_APPVIEW_PORT=str(port),
        ATDATA_APPVIEW_RATE_PER_SECOND="0",
        ATDATA_APPVIEW_LOG_LEVEL="WARNING",
    )
    log = work / "serve-ours.log"
    # the schema as this checkout's code has it now (idempotent; the code may have
    # moved since this process imported it: a shared checkout)
    with log.open("ab") as out:
        subprocess.run(
            [sys.executable, "-m", "atdata_appview", "migrate"],
            env=env, stdout=out, stderr=out, check=True, timeout=600,
        )  # fmt: skip
    with _process([sys.executable, "-m", "atdata_appview", "serve"], env, log) as proc:
        url = f"http://127.0.0.1:{port}"
        _wait_http(f"{url}/health", proc, log, 120)
        yield url, proc


@contextlib.contextmanager
def serve_peer(
    dsn: str, peer_python: str, work: Path, stack: str
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    port = _free_port()
    dead = _free_port()  # nothing listens there: its Jetstream and relay calls fail
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": os.environ.get("HOME", "/"),
        "ATDATA_DATABASE_URL": dsn,
        "ATDATA_HOSTNAME": "127.0.0.1",
        "ATDATA_PORT": str(port),
        "ATDATA_JETSTREAM_URL": f"ws://127.0.0.1:{dead}/subscribe",
        "ATDATA_RELAY_HOST": f"http://127.0.0.1:{dead}",
    }
    argv = [
        peer_python, "-m", "uvicorn", "atdata_app.main:app", "--host", "127.0.0.1",
        "--port", str(port), "--workers", "1", "--no-access-log",
        "--log-level", "warning",
    ]  # fmt: skip
    if stack == "same":
        argv += ["--loop", "asyncio", "--http", "h11"]
    log = work / "serve-peer.log"
    with _process(argv, env, log) as proc:
        url = f"http://127.0.0.1:{port}"
        _wait_http(f"{url}/health", proc, log, 120)
        yield url, proc


def run_load(
    url: str,
    workload: Path,
    methods: Sequence[str],
    *,
    concurrency: int,
    duration: float,
    warmup: float,
    seed: int,
) -> dict[str, Any]:
    argv = [
        sys.executable, str(LOAD), "--url", url, "--workload", str(workload),
        "--concurrency", str(concurrency), "--duration", str(duration),
        "--warmup", str(warmup), "--seed", str(seed),
    ]  # fmt: skip
    for m in methods:
        argv += ["--method", m]
    timeout = (duration + warmup) * len(methods) * 4 + 120
    out = subprocess.run(
        argv, check=False, capture_output=True, text=True, timeout=timeout
    )
    if out.returncode != 0:
        raise RuntimeError(f"the load generator failed: {out.stderr[-3000:]}")
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def _cluster_cpu(pg: PostgresCluster) -> dict[int, float]:
    """CPU seconds of every process of the cluster (the postmaster's children:
    backends, WAL writer, checkpointer, autovacuum), by pid."""
    try:
        master = int((pg.data / "postmaster.pid").read_text().split("\n", 1)[0])
    except (OSError, ValueError):
        return {}
    out: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(stat[1]) == master:
            ticks = os.sysconf("SC_CLK_TCK")
            out[int(entry.name)] = (int(stat[11]) + int(stat[12])) / ticks
    return out


def _cluster_spent(before: dict[int, float], after: dict[int, float]) -> float:
    # processes that started meanwhile count whole; those that ended are lost
    return sum(v - before.get(pid, 0.0) for pid, v in after.items())


def measure_server(
    url: str,
    proc: subprocess.Popen[bytes],
    workload: Path,
    methods: Sequence[str],
    args: argparse.Namespace,
    seed: int,
    pg: PostgresCluster,
) -> dict[str, Any]:
    """Idle CPU, then the load at ``--concurrency`` and ``--latency-concurrency``
    (at the first: CPU milliseconds per request of the server process and of the
    PostgreSQL cluster, warm-up requests included)."""
    c0, t0 = _cpu_seconds(proc.pid), time.perf_counter()
    time.sleep(args.idle_seconds)
    idle = (_cpu_seconds(proc.pid) - c0) / (time.perf_counter() - t0)
    out: dict[str, Any] = {"idle_cpu": idle, "load": {}, "latency": {}}
    for m in methods:
        c0, p0 = _cpu_seconds(proc.pid), _cluster_cpu(pg)
        r = run_load(
            url, workload, [m], concurrency=args.concurrency,
            duration=args.duration, warmup=args.warmup, seed=seed,
        )[m]  # fmt: skip
        spent = _cpu_seconds(proc.pid) - c0
        pg_spent = _cluster_spent(p0, _cluster_cpu(pg))
        total = r.get("requests", 0) + r.get("warmup_requests", 0)
        r["server_cpu_ms_per_request"] = spent / total * 1000 if total else 0.0
        r["pg_cpu_ms_per_request"] = pg_spent / total * 1000 if total else 0.0
        out["load"][m] = r
    if args.latency_concurrency > 0:
        out["latency"] = run_load(
            url, workload, methods, concurrency=args.latency_concurrency,
            duration=args.latency_duration, warmup=min(args.warmup, 1.0), seed=seed,
        )  # fmt: skip
    return out


# -- backfill ------------------------------------------------------------------------------


async def publish_repos(
    net: LocalNetwork, repos: int, per_repo: int, concurrency: int, tag: str
) -> dict[str, Any]:
    """``repos`` accounts on the PDS, each with ``per_repo`` records (one
    ``applyWrites``), ``concurrency`` at a time; returns the timings."""
    sem = asyncio.Semaphore(concurrency)
    accounts_s: list[float] = []
    writes_s: list[float] = []
    dids: list[str] = []
    async with httpx.AsyncClient(base_url=net.pds_url, timeout=120) as http:

        async def one(i: int) -> None:
            async with sem:
                name = f"{tag}{i:05d}"
                t = time.perf_counter()
                got = await http.post(
                    "/xrpc/com.atproto.server.createAccount",
                    json={
                        "handle": f"{name}.test",
                        "email": f"{name}@example.test",
                        "password": f"pw-{name}-benchmark",
                    },
                )
                if got.status_code != 200:
                    raise RuntimeError(f"createAccount {name}: {got.text[:300]}")
                body = got.json()
                accounts_s.append(time.perf_counter() - t)
                did, jwt = body["did"], body["accessJwt"]
                writes = [
                    {
                        "$type": "com.atproto.repo.applyWrites#create",
                        "collection": c,
                        "rkey": k,
                        "value": v,
                    }
                    for c, k, v in repo_records(f"{name}.test", did, per_repo)
                ]
                t = time.perf_counter()
                got = await http.post(
                    "/xrpc/com.atproto.repo.applyWrites",
                    json={"repo": did, "writes": writes},
                    headers={"Authorization": f"Bearer {jwt}"},
                )
                if got.status_code != 200:
                    raise RuntimeError(f"applyWrites {name}: {got.text[:300]}")
                writes_s.append(time.perf_counter() - t)
                dids.append(did)

        t = time.perf_counter()
        await asyncio.gather(*(one(i) for i in range(repos)))
        wall = time.perf_counter() - t
    return {
        "repos": repos,
        "records": repos * per_repo,
        "seconds": wall,
        "repos_s": repos / wall,
        "account_ms_median": statistics.median(accounts_s) * 1000,
        "write_ms_median": statistics.median(writes_s) * 1000,
        "dids": dids,
    }


async def backfill_once(
    dsn: str, net: LocalNetwork, concurrency: int, expect: int
) -> dict[str, Any]:
    conn = await asyncpg.connect(dsn)
    try:
        await migrate_ingest(conn)
        await migrate_appview(conn)
    finally:
        await conn.close()
    pool = await asyncpg.create_pool(dsn, min_size=2, max_size=concurrency + 2)
    try:
        backfiller = Backfiller(
            pool,
            source=net.pds_url,
            kind="pds",
            plc_url=net.plc_url,
            concurrency=concurrency,
        )
        stats = await backfiller.run()
        indexed = 0
        for table in ("appview_schemas", "appview_entries", "appview_labels"):
            indexed += int(await pool.fetchval(f"SELECT count(*) FROM {table}"))
    finally:
        await pool.close()
    if stats.failed or indexed != expect or stats.records != expect:
        raise RuntimeError(
            f"backfill incomplete: {stats.summary()}; {indexed} indexed of {expect}; "
            f"failures {stats.failures[:5]}"
        )
    return {
        "seconds": stats.seconds,
        "records": float(stats.records),
        "repos": float(stats.synced),
        "records_s": stats.records_per_second,
        "repos_s": stats.repos_per_second,
        "car_bytes": float(stats.car_bytes),
        "rejected": float(stats.rejected),
    }


# -- the report ------------------------------------------------------------------------


def _med(
    runs: list[dict[str, Any]], target: str, kind: str, method: str, key: str
) -> list[float]:
    return [
        float(r[target][kind][method][key])
        for r in runs
        if method in r.get(target, {}).get(kind, {}) and key in r[target][kind][method]
    ]


def summarize(
    runs: list[dict[str, Any]], kind: str, methods: Sequence[str]
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for target in ("ours", "peer"):
        per: dict[str, Any] = {}
        for m in methods:
            vals = {
                k: _med(runs, target, kind, m, k)
                for k in ("rps", "p50_ms", "p99_ms", "p90_ms", "errors", "requests",
                          "server_cpu_ms_per_request", "pg_cpu_ms_per_request",
                          "client_cpu_ms_per_request",
                          "warmup_errors")
            }  # fmt: skip
            if vals["rps"]:
                per[m] = {k: _spread(v) for k, v in vals.items() if v}
                per[m]["errors_total"] = int(sum(vals["errors"]))
        out[target] = per
    return out


def _cell(summary: dict[str, Any], target: str, method: str) -> tuple[str, ...]:
    s = summary.get(target, {}).get(method)
    if not s:
        return ("—",) * 6

    def sp(x: dict[str, Any], fmt: str) -> str:
        if len(x["runs"]) == 1:
            return format(x["median"], fmt)
        lo, hi = format(x["min"], fmt), format(x["max"], fmt)
        return f"{format(x['median'], fmt)} ({lo}-{hi})"

    cpu = s.get("server_cpu_ms_per_request")
    pgc = s.get("pg_cpu_ms_per_request")
    return (
        sp(s["rps"], ",.0f"),
        sp(s["p50_ms"], ".1f"),
        sp(s["p99_ms"], ".1f"),
        str(s["errors_total"]),
        format(cpu["median"], ".2f") if cpu else "",
        format(pgc["median"], ".2f") if pgc else "",
    )


def print_table(
    title: str, summary: dict[str, Any], methods: Sequence[str], *, cpu: bool = True
) -> None:
    """One line per method and server: requests/s, p50, p99 (median (min-max)
    of the runs), errors (all runs), and CPU milliseconds per request (medians)
    of the server process and of the PostgreSQL cluster."""
    print(f"\n{title}")
    head = (
        f"{'method':22}{'':5}{'requests/s':>22}{'p50 ms':>21}{'p99 ms':>23}"
        f"{'errors':>8}" + (f"{'srv ms/req':>11}{'pg ms/req':>10}" if cpu else "")
    )
    print(head)
    print("-" * len(head))
    for m in methods:
        for target in ("ours", "peer"):
            rps, p50, p99, err, c, pgc = _cell(summary, target, m)
            name = m if target == "ours" else ""
            print(
                f"{name:22}{target:5}{rps:>22}{p50:>21}{p99:>23}{err:>8}"
                + (f"{c:>11}{pgc:>10}" if cpu else "")
            )
        o = summary.get("ours", {}).get(m)
        p = summary.get("peer", {}).get(m)
        if o and p and p["rps"]["median"] > 0:
            ratio = o["rps"]["median"] / p["rps"]["median"]
            p99 = o["p99_ms"]["median"] / max(p["p99_ms"]["median"], 1e-9)
            print(f"{'':22}{'o/p':5}{ratio:>21.2f}x{'':>21}{p99:>22.2f}x")


def goals(
    load: dict[str, Any], latency: dict[str, Any], backfill: dict[str, Any] | None
) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for label, summary in (("load", load), ("latency", latency)):
        s = summary.get("ours", {}).get("searchDatasets")
        if s:
            p99 = s["p99_ms"]["median"]
            out.append({
                "goal": f"searchDatasets p99 < {SEARCH_P99_GOAL_MS:.0f} ms ({label})",
                "value": p99, "met": p99 < SEARCH_P99_GOAL_MS,
            })  # fmt: skip
    for m in PEER_METHODS:
        o, p = load.get("ours", {}).get(m), load.get("peer", {}).get(m)
        if not (o and p):
            continue
        ratio = o["rps"]["median"] / max(p["rps"]["median"], 1e-9)
        p99_ok = o["p99_ms"]["median"] <= p["p99_ms"]["median"]
        errors_ok = o["errors_total"] == 0
        out.append({
            "goal": f"{m}: >= {RPS_RATIO_GOAL:.0f}x atdata-app's requests/s at equal or "
            "better p99",
            "value": ratio, "ours_p99_ms": o["p99_ms"]["median"],
            "peer_p99_ms": p["p99_ms"]["median"], "peer_errors": p["errors_total"],
            "met": ratio >= RPS_RATIO_GOAL and p99_ok and errors_ok,
        })  # fmt: skip
    if backfill:
        v = backfill["records_s"]["median"]
        out.append({
            "goal": f"backfill >= {BACKFILL_GOAL:.0f} records/s, verified",
            "value": v, "met": v >= BACKFILL_GOAL,
        })  # fmt: skip
    return out


# -- main ----------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes, one run")
    ap.add_argument("--only", action="append", choices=SECTIONS)
    ap.add_argument("--runs", type=int, default=None, help="default 3 (quick: 1)")
    ap.add_argument("--entries", type=int, default=None, help="default 100,000")
    ap.add_argument("--schemas", type=int, default=None, help="default 10,000")
    ap.add_argument("--lenses", type=int, default=None, help="default 2,000")
    ap.add_argument("--labels", type=int, default=None, help="default entries/30")
    ap.add_argument("--publishers", type=int, default=None, help="default 300")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=500, help="indexer batch")
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--latency-concurrency", type=int, default=1, help="0: skip")
    ap.add_argument("--duration", type=float, default=None, help="s, default 8")
    ap.add_argument("--latency-duration", type=float, default=None, help="default 4")
    ap.add_argument("--warmup", type=float, default=None, help="s, default 2")
    ap.add_argument("--idle-seconds", type=float, default=1.0)
    ap.add_argument("--workload-size", type=int, default=3000)
    ap.add_argument(
        "--peer-stack", choices=("own", "same"), default="own",
        help="own: the peer on its uvloop+httptools; same: on asyncio+h11 as ours",
    )  # fmt: skip
    ap.add_argument("--repos", type=int, default=None, help="default 1,000")
    ap.add_argument("--records-per-repo", type=int, default=3)
    ap.add_argument(
        "--big-repos",
        type=int,
        default=None,
        help="then this many repos more (default 100, quick 5) of --big-records "
        "records, and the whole PDS backfilled again (0: skip)",
    )
    ap.add_argument("--big-records", type=int, default=30)
    ap.add_argument("--publish-concurrency", type=int, default=8)
    ap.add_argument("--backfill-concurrency", type=int, default=8)
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    args = ap.parse_args()
    q = args.quick
    args.runs = args.runs or (1 if q else 3)
    args.entries = (
        args.entries if args.entries is not None else (2000 if q else 100_000)
    )
    args.schemas = args.schemas if args.schemas is not None else (200 if q else 10_000)
    args.lenses = args.lenses if args.lenses is not None else (40 if q else 2_000)
    args.publishers = args.publishers or (20 if q else 300)
    args.duration = args.duration or (2.0 if q else 8.0)
    args.latency_duration = args.latency_duration or (1.0 if q else 4.0)
    args.warmup = args.warmup if args.warmup is not None else (0.5 if q else 2.0)
    args.repos = args.repos if args.repos is not None else (20 if q else 1000)
    args.big_repos = args.big_repos if args.big_repos is not None else (5 if q else 100)
    only = set(args.only or SECTIONS)

    work = Path(tempfile.mkdtemp(prefix="atdata-bench-appview-"))
    load_before = os.getloadavg()
    started = time.perf_counter()
    print(
        f"bench_appview: {os.cpu_count()} CPUs, load average {load_before[0]:.1f} "
        f"{load_before[1]:.1f} {load_before[2]:.1f} at start; logs in {work}",
        flush=True,
    )
    result: dict[str, Any] = {
        "benchmark": "appview",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "commit": _git("rev-parse", "HEAD"),
        "dirty_files": [
            line[3:]
            for line in _git("status", "--porcelain", "--untracked-files=no").split(
                "\n"
            )
            if line.strip()
        ],
        "machine": {
            "nproc": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "load_before": list(load_before),
        },
        "settings": {
            k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
        },
    }
    backfill_summary: dict[str, Any] | None = None
    load_summary: dict[str, Any] = {}
    latency_summary: dict[str, Any] = {}
    with PostgresCluster(fast=False, settings={"shared_buffers": "512MB"}) as pg:
        version = asyncio.run(_fetchval(pg.dsn, "SELECT version()"))
        result["machine"]["postgres"] = version.split(",")[0]
        print(f"PostgreSQL: {result['machine']['postgres']}", flush=True)

        if "queries" in only:
            peer_python, peer_src = peer_env()
            t = time.perf_counter()
            seed = generate(
                entries=args.entries, schemas=args.schemas, lenses=args.lenses,
                labels=args.labels, publishers=args.publishers, seed=args.seed,
            )  # fmt: skip
            gen_s = time.perf_counter() - t
            counts = seed.counts()
            print(
                f"seed: {counts['science.alt.dataset.entry']:,} entries, "
                f"{counts['science.alt.dataset.schema']:,} schemas, "
                f"{counts['science.alt.dataset.lens']:,} lenses, "
                f"{counts['science.alt.dataset.label']:,} labels by "
                f"{counts['publishers']} publishers, {len(seed.lens_pairs):,} lens-path "
                f"pairs; generated in {gen_s:.0f} s",
                flush=True,
            )
            workload = seed.workload(size=args.workload_size)
            wfile = work / "workload.json"
            wfile.write_text(json.dumps(workload))
            result["seed"] = {"counts": counts, "lens_pairs": len(seed.lens_pairs),
                              "generate_s": gen_s}  # fmt: skip

            ours_dsn = pg.create_database("ours")
            print("ours: writing the log and folding it ...", flush=True)
            ours_seed = asyncio.run(seed_ours(ours_dsn, seed, args.batch_size))
            result["fold"] = ours_seed
            for label, ph in ours_seed["phases"].items():
                print(
                    f"  {label:8} {ph['records']:>8,.0f} records: log write "
                    f"{ph['append_s']:.1f} s, fold {ph['fold_s']:.1f} s "
                    f"({ph['fold_records_s']:,.0f} records/s)"
                )
            print(
                f"  fold: {ours_seed['records']:,.0f} records in {ours_seed['fold_s']:.1f} s "
                f"= {ours_seed['fold_records_s']:,.0f} records/s (batch {args.batch_size}, "
                f"history hook on); dead letters {ours_seed['counts']['appview_dead_letters']}, "
                f"verdicts {ours_seed['verdicts']}",
                flush=True,
            )
            peer_dsn = pg.create_database("peer")
            print("peer: its migrations and its process_commit ...", flush=True)
            peer_seed = seed_peer(peer_dsn, seed, peer_python, work)
            result["peer_seed"] = peer_seed
            print(
                f"  {peer_seed['events']:,} events in {peer_seed['seconds']:.1f} s "
                f"({peer_seed['events_s']:,.0f}/s, 8 at a time), {peer_seed['failed']} "
                f"failed; tables {peer_seed['counts']}",
                flush=True,
            )
            want = {
                "schemas": counts["science.alt.dataset.schema"],
                "entries": counts["science.alt.dataset.entry"],
                "lenses": counts["science.alt.dataset.lens"],
                "labels": counts["science.alt.dataset.label"],
            }
            if peer_seed["counts"] != want:
                raise RuntimeError(
                    f"the peer stored {peer_seed['counts']}, want {want}"
                )
            sizes = {
                "ours_db_bytes": asyncio.run(
                    _fetchval(ours_dsn, "SELECT pg_database_size(current_database())")
                ),
                "peer_db_bytes": asyncio.run(
                    _fetchval(peer_dsn, "SELECT pg_database_size(current_database())")
                ),
            }
            result["db_sizes"] = sizes
            print(
                f"  database sizes: ours {sizes['ours_db_bytes'] / 2**20:,.0f} MiB "
                f"(log included), peer {sizes['peer_db_bytes'] / 2**20:,.0f} MiB"
            )

            runs: list[dict[str, Any]] = []
            ours_methods = [*METHODS, EXTRA]
            for run in range(args.runs):
                print(f"run {run + 1}/{args.runs} ...", flush=True)
                one: dict[str, Any] = {}
                with serve_ours(ours_dsn, work) as (url, proc):
                    one["ours"] = measure_server(
                        url, proc, wfile, ours_methods, args, run + 1, pg
                    )
                with serve_peer(peer_dsn, peer_python, work, args.peer_stack) as (
                    url,
                    proc,
                ):
                    one["peer"] = measure_server(
                        url, proc, wfile, PEER_METHODS, args, run + 1, pg
                    )
                for target in ("ours", "peer"):
                    bits = [
                        f"{m} {r['rps']:,.0f}/s p99 {r['p99_ms']:.1f} ms"
                        + (f" ({r['errors']} errors)" if r["errors"] else "")
                        for m, r in one[target]["load"].items()
                    ]
                    print(
                        f"  {target}: idle CPU {one[target]['idle_cpu'] * 100:.1f} %; "
                        + "; ".join(bits),
                        flush=True,
                    )
                    for m, r in one[target]["load"].items():
                        if r.get("warmup_errors"):
                            first = (r.get("warmup_error_samples") or [""])[0]
                            print(
                                f"    {target} {m}: {r['warmup_errors']} errors in the "
                                f"unmeasured warm-up, first: {first[:200]}"
                            )
                runs.append(one)
            result["runs"] = runs
            load_summary = summarize(runs, "load", ours_methods)
            latency_summary = summarize(runs, "latency", ours_methods)
            result["load"] = load_summary
            result["latency"] = latency_summary
            result["peer"] = {"source": peer_src, "stack": args.peer_stack}

        if "backfill" in only:
            with LocalNetwork.start() as net:
                print(
                    f"backfill: publishing {args.repos} repositories x "
                    f"{args.records_per_repo} records on the local PDS ...",
                    flush=True,
                )
                pub = asyncio.run(
                    publish_repos(
                        net, args.repos, args.records_per_repo,
                        args.publish_concurrency, f"bf{os.getpid() % 1000}",
                    )
                )  # fmt: skip
                pub.pop("dids")
                print(
                    f"  published in {pub['seconds']:.1f} s ({pub['repos_s']:.1f} repos/s; "
                    f"createAccount median {pub['account_ms_median']:.0f} ms, "
                    f"applyWrites {pub['write_ms_median']:.0f} ms, "
                    f"{args.publish_concurrency} at a time)",
                    flush=True,
                )
                bruns = []
                for run in range(args.runs):
                    dsn = pg.create_database(f"backfill_{run}")
                    r = asyncio.run(
                        backfill_once(
                            dsn, net, args.backfill_concurrency,
                            args.repos * args.records_per_repo,
                        )
                    )  # fmt: skip
                    print(
                        f"  run {run + 1}: {r['records']:,.0f} records of {r['repos']:,.0f} "
                        f"repos in {r['seconds']:.1f} s: {r['records_s']:,.0f} records/s, "
                        f"{r['repos_s']:,.0f} repos/s",
                        flush=True,
                    )
                    bruns.append(r)
                backfill_summary = {
                    k: _spread([r[k] for r in bruns])
                    for k in ("records_s", "repos_s", "seconds")
                }
                result["backfill"] = {
                    "publish": pub,
                    "runs": bruns,
                    **backfill_summary,
                    "repos": args.repos,
                    "records_per_repo": args.records_per_repo,
                    "concurrency": args.backfill_concurrency,
                    "verified": True,
                }
                if args.big_repos > 0:
                    big = asyncio.run(
                        publish_repos(
                            net, args.big_repos, args.big_records,
                            args.publish_concurrency, f"bg{os.getpid() % 1000}",
                        )
                    )  # fmt: skip
                    big.pop("dids")
                    big_runs = []
                    for run in range(args.runs):
                        dsn = pg.create_database(f"backfill_big_{run}")
                        total = args.repos * args.records_per_repo
                        total += args.big_repos * args.big_records
                        big_runs.append(
                            asyncio.run(
                                backfill_once(
                                    dsn, net, args.backfill_concurrency, total
                                )
                            )
                        )
                    result["backfill_all"] = {
                        "repos": args.repos + args.big_repos,
                        "runs": big_runs,
                        **{
                            k: _spread([r[k] for r in big_runs])
                            for k in ("records_s", "repos_s", "seconds")
                        },
                    }
                    r0 = result["backfill_all"]
                    print(
                        f"  then {args.big_repos} more repos x {args.big_records} "
                        f"records: the whole PDS ({r0['repos']} repos, "
                        f"{big_runs[0]['records']:,.0f} records): "
                        f"{r0['records_s']['median']:,.0f} records/s, "
                        f"{r0['repos_s']['median']:,.0f} repos/s (median of {args.runs})",
                        flush=True,
                    )

    load_after = os.getloadavg()
    result["machine"]["load_after"] = list(load_after)
    result["wall_s"] = time.perf_counter() - started

    if "queries" in only:
        print_table(
            f"under load: {args.concurrency} connections, {args.duration:.0f} s per "
            f"method per run, median (min-max) of {args.runs} run(s)",
            load_summary,
            [*METHODS, EXTRA],
        )
        if args.latency_concurrency > 0:
            print_table(
                f"latency: {args.latency_concurrency} connection(s), "
                f"{args.latency_duration:.0f} s per method per run",
                latency_summary,
                [*METHODS, EXTRA],
                cpu=False,
            )
        print(
            "  (peer: atdata-app 0.4.0b1 on "
            + ("uvloop + httptools, as it deploys" if args.peer_stack == "own"
               else "asyncio + h11, as ours")
            + "; ours: asyncio + h11; "
            f"{EXTRA}: ours by handle, the peer would resolve it over the network)"
        )  # fmt: skip
    if "backfill" in only and backfill_summary:
        b = backfill_summary
        print(
            f"\nbackfill: {args.repos} repos x {args.records_per_repo} records, "
            f"verified, concurrency {args.backfill_concurrency}: "
            f"{b['records_s']['median']:,.0f} records/s "
            f"({b['records_s']['min']:,.0f}-{b['records_s']['max']:,.0f}), "
            f"{b['repos_s']['median']:,.0f} repos/s"
        )
        if "backfill_all" in result:
            a = result["backfill_all"]
            print(
                f"  with {args.big_repos} repos x {args.big_records} records more: "
                f"{a['records_s']['median']:,.0f} records/s "
                f"({a['records_s']['min']:,.0f}-{a['records_s']['max']:,.0f}), "
                f"{a['repos_s']['median']:,.0f} repos/s"
            )
    if "queries" in only:
        f = result["fold"]
        print(
            f"fold: {f['fold_records_s']:,.0f} records/s ({f['records']:,.0f} records)"
        )
    result["goals"] = goals(load_summary, latency_summary, backfill_summary)
    print("\ngoals:")
    for g in result["goals"]:
        extra = ""
        if "ours_p99_ms" in g:
            extra = (
                f" (p99 ours {g['ours_p99_ms']:.1f} ms vs peer {g['peer_p99_ms']:.1f} ms"
                + (f", peer errors {g['peer_errors']}" if g["peer_errors"] else "")
                + ")"
            )
        value = f"{g['value']:,.1f}"
        print(f"  {'met   ' if g['met'] else 'MISSED'} {g['goal']}: {value}{extra}")
    print(
        f"\nload average {load_before[0]:.1f} {load_before[1]:.1f} {load_before[2]:.1f} "
        f"before, {load_after[0]:.1f} {load_after[1]:.1f} {load_after[2]:.1f} after; "
        f"{result['wall_s'] / 60:.1f} min"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
    print(f"results: {args.out}")
    if not args.keep:
        import shutil

        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
