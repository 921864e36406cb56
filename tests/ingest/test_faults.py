"""Exactly-once storage of every event despite faults, each fault on its own, for
real (issue 15, "Shown by"; seed 002 §14 failure scenarios).

Real parts only:

- a PRIVATE PostgreSQL 15 cluster for this module (some tests restart or crash
  it; the session cluster of ``conftest.py`` is never touched);
- the replay relay (:class:`atdata_ingest.testing.relay.ReplayRelay`) serving
  template frames recorded from the real local PDS (``net``): real commits with
  CARs and records, re-sequenced 1..N;
- the ingester as a real process tree: ``python -m atdata_ingest run --supervise``
  (the supervisor, which starts ``python -m atdata_ingest run`` as its child).

After each scenario the log is checked the same way (:func:`check_exactly_once`):
the cursor reached the relay's last seq N; no ``(seq, idx)`` is stored twice; the
stored seqs are exactly 1..N (a missing one is a gap, reported by number); each
seq has exactly as many rows as its template frame has operations (one for a
frame without operations), with ``idx`` 0..k-1; no dead letters.

No assertion is about time: waits are for a state (the cursor, a log line, a
process), each bounded by a generous failure guard.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from atdata_ingest import exits
from atdata_ingest.schema import migrate
from atdata_ingest.testing.postgres import PostgresCluster
from atdata_ingest.testing.relay import ReplayRelay, realistic_frames, split_frame

GUARD = 90.0  # seconds: the failure guard of every wait
FAST_BACKOFF = ["--backoff-initial", "0.05", "--backoff-max", "0.4"]


# -- fixtures ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster() -> Iterator[PostgresCluster]:
    """This module's own cluster: restarted and crashed by the tests."""
    with PostgresCluster() as pg:
        yield pg


@pytest.fixture(scope="module")
def templates(net: Any) -> list[bytes]:
    """Real subscribeRepos frames of a few seeded accounts on the local PDS."""
    return realistic_frames(net, 4, 40, seed=15)


@pytest.fixture
def dsn(cluster: PostgresCluster) -> str:
    """A fresh, migrated database on the module's cluster."""
    url = cluster.create_database(f"f{time.monotonic_ns()}")
    _sql(url, migrate)
    return url


@contextlib.contextmanager
def _relay(templates: list[bytes], **kw: Any) -> Iterator[ReplayRelay]:
    with ReplayRelay(templates, **kw) as relay:
        yield relay


# -- the database --------------------------------------------------------------------


def _sql(dsn: str, work: Callable[[asyncpg.Connection], Any]) -> Any:
    async def go() -> Any:
        conn = await asyncpg.connect(dsn, timeout=10)
        try:
            result = work(conn)
            if asyncio.iscoroutine(result):
                result = await result
            return result
        finally:
            await conn.close()

    return asyncio.run(go())


def cursor(dsn: str) -> int:
    """``ingest_cursor.last_seq`` (-1 while the database is unreachable)."""
    try:
        return int(
            _sql(dsn, lambda c: c.fetchval("SELECT last_seq FROM ingest_cursor"))
        )
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError):
        return -1


def expected_rows(templates: list[bytes], n: int) -> dict[int, int]:
    """seq -> rows the log must hold for it: the template's operation count (a
    frame without operations, or not a commit, gives one row)."""
    per_template = []
    for frame in templates:
        header, body, _ = split_frame(frame)
        ops = body.get("ops") if header.get("t") == "#commit" else None
        per_template.append(max(1, len(ops or ())))
    return {k: per_template[(k - 1) % len(templates)] for k in range(1, n + 1)}


def check_exactly_once(dsn: str, templates: list[bytes], n: int) -> None:
    """The log holds every event of seqs 1..n exactly once (see the module doc)."""

    async def read(conn: asyncpg.Connection) -> dict[str, Any]:
        return {
            "dups": await conn.fetch(
                "SELECT seq, idx, count(*) FROM ingest_events "
                "GROUP BY 1, 2 HAVING count(*) > 1 ORDER BY 1, 2 LIMIT 20"
            ),
            "per_seq": await conn.fetch(
                "SELECT seq, count(*) AS n, min(idx) AS lo, max(idx) AS hi "
                "FROM ingest_events GROUP BY seq ORDER BY seq"
            ),
            "cursor": await conn.fetchrow("SELECT * FROM ingest_cursor"),
            "dead": await conn.fetch(
                "SELECT seq, rule, reason FROM ingest_dead_letters LIMIT 5"
            ),
        }

    got = _sql(dsn, read)
    assert got["dups"] == [], f"duplicates (seq, idx, count): {got['dups']}"
    assert got["dead"] == [], f"dead letters: {got['dead']}"
    assert got["cursor"]["last_seq"] == n
    per_seq = {r["seq"]: r for r in got["per_seq"]}
    gaps = sorted(set(range(1, n + 1)) - set(per_seq))
    extra = sorted(set(per_seq) - set(range(1, n + 1)))
    assert not gaps, f"{len(gaps)} seqs missing (gaps), first {gaps[:20]}"
    assert not extra, f"seqs the relay never sent: {extra[:20]}"
    want = expected_rows(templates, n)
    wrong = [
        (seq, r["n"], want[seq])
        for seq, r in per_seq.items()
        if r["n"] != want[seq] or r["lo"] != 0 or r["hi"] != want[seq] - 1
    ]
    assert not wrong, f"(seq, rows, expected) differ: {wrong[:20]}"


# -- the ingester process ---------------------------------------------------------------


_STARTED = re.compile(r"started child pid=(\d+)")


@dataclass
class Ingest:
    """One ``atdata-ingest run --supervise`` process; its stderr goes to a file."""

    proc: subprocess.Popen[bytes]
    log_path: Path

    @classmethod
    def start(
        cls,
        tmp: Path,
        relay_url: str,
        dsn: str,
        *args: str,
        env: dict[str, str] | None = None,
        name: str = "ingest",
    ) -> Ingest:
        log_path = tmp / f"{name}-{time.monotonic_ns()}.log"
        full_env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("ATDATA_INGEST_") and k != "DATABASE_URL"
        }
        full_env.update(
            ATDATA_INGEST_DATABASE_URL=dsn,  # the DSN by variable, as documented
            ATDATA_INGEST_LOG_INTERVAL_SECONDS="1",
            **(env or {}),
        )
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                [
                    sys.executable, "-m", "atdata_ingest", "run", "--supervise",
                    "--relay", relay_url, "--verify", "none", "--stop-timeout", "30",
                    *FAST_BACKOFF, *args,
                ],
                env=full_env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )  # fmt: skip
        return cls(proc, log_path)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def children(self) -> list[int]:
        return [int(p) for p in _STARTED.findall(self.log())]

    def wait_child(self, after: int = 0) -> int:
        """The pid of a child started after the first ``after`` ones."""
        wait_until(lambda: len(self.children()) > after, "a new child", self)
        return self.children()[after]

    def stop(self, sig: int = signal.SIGTERM) -> int:
        """Send ``sig`` to the supervisor and return its exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(GUARD)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"the supervisor did not stop:\n{self.tail()}")

    def kill(self) -> None:
        for pid in [self.proc.pid, *self.children()]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(GUARD)

    def tail(self, lines: int = 60) -> str:
        return "\n".join(self.log().splitlines()[-lines:])


@contextlib.contextmanager
def ingesting(*a: Any, **kw: Any) -> Iterator[Ingest]:
    ing = Ingest.start(*a, **kw)
    try:
        yield ing
    finally:
        ing.kill()


def wait_until(
    cond: Callable[[], bool], what: str, ing: Ingest | None = None, guard: float = GUARD
) -> None:
    deadline = time.monotonic() + guard
    while not cond():
        if ing is not None and ing.proc.poll() is not None:
            pytest.fail(f"the supervisor exited {ing.proc.returncode} while waiting "
                        f"for {what}:\n{ing.tail()}")  # fmt: skip
        if time.monotonic() > deadline:
            pytest.fail(
                f"{what}: not within {guard}s" + (f"\n{ing.tail()}" if ing else "")
            )
        time.sleep(0.05)


def wait_cursor(dsn: str, seq: int, ing: Ingest) -> None:
    wait_until(lambda: cursor(dsn) >= seq, f"cursor >= {seq} (at {cursor(dsn)})", ing)


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")


def end_stream(relay: ReplayRelay, more: int = 500) -> int:
    """Make an endless relay stop after ``more`` further frames; return the last
    seq N. Streams are endless until the fault was applied, so that no scenario
    depends on the fault coming before the stream's end."""
    n = max(relay.head, relay.last_seq_sent) + more
    relay.set_total(n)
    return n


def finish(ing: Ingest, dsn: str, templates: list[bytes], n: int) -> str:
    """Wait for the whole stream, stop cleanly (exit 0), check exactly-once;
    return the supervisor's log."""
    wait_cursor(dsn, n, ing)
    status = ing.stop()
    log = ing.log()
    assert status == 0, log
    check_exactly_once(dsn, templates, n)
    for pid in ing.children():
        assert not alive(pid), f"child {pid} still running after the stop"
    return log


# -- 1. SIGKILL of the ingester mid-batch -------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    ("point", "n"), [("after-copy:4", 1500), ("after-commit:2", 1000)]
)
def test_sigkill_mid_batch_by_the_kill_hook(
    tmp_path: Path, dsn: str, templates: list[bytes], point: str, n: int
) -> None:
    """Every child SIGKILLs itself inside its 4th batch transaction after the COPY
    (or right after its 2nd COMMIT): several kills, each restarted by the
    supervisor from the committed cursor."""
    with (
        _relay(templates, total=n) as relay,
        ingesting(
            tmp_path,
            relay.url,
            dsn,
            "--batch-max",
            "100",
            "--buffer-max",
            "5000",
            env={"ATDATA_INGEST_TEST_KILL_AT": point},
        ) as ing,  # fmt: skip
    ):
        log = finish(ing, dsn, templates, n)
    kills = log.count("killed by SIGKILL")
    assert kills >= 3, log
    assert log.count(f"ATDATA_INGEST_TEST_KILL_AT={point}: SIGKILL now") == kills
    # the last kill may come after the last commit: then the stop can meet the
    # supervisor in its backoff, before a new child
    assert kills <= len(ing.children()) <= kills + 1


@pytest.mark.slow
def test_external_sigkill_at_random_moments(
    tmp_path: Path, dsn: str, templates: list[bytes]
) -> None:
    """The relay streams at a steady rate; the child is SIGKILLed from outside 4
    times at random moments; the supervisor restarts it each time."""
    rate = 1000.0
    rng = random.Random(1505)
    with (
        _relay(
            templates, total=None, rate=rate
        ) as relay,  # endless until the kills end
        ingesting(tmp_path, relay.url, dsn, "--batch-max", "200") as ing,
    ):
        killed: list[int] = []
        for i in range(4):
            pid = ing.wait_child(after=i)
            wait_cursor(dsn, cursor(dsn) + rng.randint(1, 300), ing)
            time.sleep(rng.uniform(0.0, 0.3))  # a random moment, not an assertion
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
        n = relay.head + 500
        relay.set_total(n)
        log = finish(ing, dsn, templates, n)
    assert log.count("killed by SIGKILL") == 4, log
    assert ing.children()[:4] == killed and len(ing.children()) == 5


# -- 2. PostgreSQL restart and crash ----------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("how", ["restart", "crash"])
def test_postgres_restart_pauses_then_resumes(
    tmp_path: Path,
    dsn: str,
    templates: list[bytes],
    cluster: PostgresCluster,
    how: str,
) -> None:
    """While the relay streams, PostgreSQL restarts (down 2 s) or is SIGKILLed:
    the ingester keeps buffering, retries the batch, and resumes; it does not
    even need a restart (one child for the whole run)."""
    with (
        _relay(templates, total=None, rate=1000.0) as relay,
        ingesting(tmp_path, relay.url, dsn, "--batch-max", "200") as ing,
    ):
        wait_cursor(dsn, 1000, ing)
        if how == "restart":
            cluster.restart(down_for=2)
        else:
            cluster.crash()
        n = end_stream(relay, 2000)
        log = finish(ing, dsn, templates, n)
    assert len(ing.children()) == 1, log
    assert "database connection failed" in log and "database reconnected" in log


# -- 3. relay disconnects ------------------------------------------------------------------


@pytest.mark.slow
def test_relay_disconnects_reconnect_from_the_right_cursor(
    tmp_path: Path, dsn: str, templates: list[bytes]
) -> None:
    """The relay drops every connection 3 times mid-stream (TCP abort, no close
    frame). The ingester reconnects in-process each time, asking for a cursor at
    or after what it had committed and at or before what it had been sent."""
    with (
        _relay(templates, total=None, rate=1000.0) as relay,
        ingesting(tmp_path, relay.url, dsn, "--batch-max", "200") as ing,
    ):
        committed: list[int] = []
        for i in range(3):
            wait_cursor(dsn, 1000 * (i + 1), ing)
            wait_until(lambda: any(c.closed is None for c in relay.connections()),
                       "a connected ingester", ing)  # fmt: skip
            committed.append(cursor(dsn))
            assert relay.disconnect_all() == 1
        n = end_stream(relay, 1000)
        log = finish(ing, dsn, templates, n)
        conns = [c for c in relay.connections() if c.kind == "repos"]
    assert len(ing.children()) == 1, log
    assert len(conns) == 4, conns
    assert conns[0].cursor is None  # a fresh database starts at the relay's start
    for before, after, floor in zip(conns[:-1], conns[1:], committed, strict=True):
        assert before.closed == "disconnect_all"
        assert after.cursor is not None and after.last_seq is not None
        assert floor <= after.cursor <= (before.last_seq or 0), (floor, before, after)


# -- 4. buffer overflow -----------------------------------------------------------------------


@pytest.mark.slow
def test_buffer_overflow_exits_75_and_resumes(
    tmp_path: Path, dsn: str, templates: list[bytes]
) -> None:
    """Another session holds ACCESS EXCLUSIVE on ingest_events: COPY waits, the
    small buffer (600 events) fills from a fast relay, the child exits 75 on
    purpose; the supervisor names it and restarts it; once the lock is gone the
    ingester resumes from the cursor and loses nothing."""
    n, rate = 6000, None  # None: as fast as the ingester reads
    release = threading.Event()
    locked = threading.Event()

    def hold_lock() -> None:
        async def go() -> None:
            conn = await asyncpg.connect(dsn)
            try:
                async with conn.transaction():
                    await conn.execute(
                        "LOCK TABLE ingest_events IN ACCESS EXCLUSIVE MODE"
                    )
                    locked.set()
                    await asyncio.get_running_loop().run_in_executor(
                        None, release.wait, GUARD
                    )
            finally:
                await conn.close()

        asyncio.run(go())

    with (
        _relay(templates, total=n, rate=rate) as relay,
        ingesting(
            tmp_path,
            relay.url,
            dsn,
            "--batch-max",
            "200",
            "--buffer-max",
            "600",
            "--flush-ms",
            "20",
        ) as ing,  # fmt: skip
    ):
        wait_cursor(dsn, 600, ing)
        holder = threading.Thread(target=hold_lock, daemon=True)
        holder.start()
        try:
            assert locked.wait(GUARD)
            wait_until(lambda: "75 EX_TEMPFAIL (buffer overflow)" in ing.log(),
                       "an exit 75 named in the supervisor's log", ing)  # fmt: skip
            assert cursor(dsn) < n, "the stream ended before the overflow"
        finally:
            release.set()
            holder.join(GUARD)
        log = finish(ing, dsn, templates, n)
    assert len(ing.children()) >= 2, log
    assert re.search(r"ended: 75 EX_TEMPFAIL \(buffer overflow\).*restart_in=", log), (
        log
    )


# -- 5. a deployment ----------------------------------------------------------------------------


@pytest.mark.slow
def test_deployment_sigterm_then_a_new_supervisor(
    tmp_path: Path, dsn: str, templates: list[bytes]
) -> None:
    """SIGTERM to the supervisor mid-stream: it is forwarded, the child flushes and
    exits 0, the supervisor exits 0 and every seq up to the cursor is stored. A
    new supervisor resumes from exactly that cursor; nothing is lost."""
    with _relay(templates, total=None, rate=1000.0) as relay:
        with ingesting(
            tmp_path, relay.url, dsn, "--batch-max", "200", name="old"
        ) as old:
            wait_cursor(dsn, 1500, old)
            assert old.stop() == 0, old.log()
        log = old.log()
        assert "received SIGTERM, forwarding" in log
        assert "ended: 0 EX_OK (clean stop)" in log, log
        stopped_at = cursor(dsn)
        n = end_stream(relay, 1500)
        check_exactly_once(dsn, templates, stopped_at)
        with ingesting(
            tmp_path, relay.url, dsn, "--batch-max", "200", name="new"
        ) as new:
            finish(new, dsn, templates, n)
        conns = relay.connections()
    assert [c.cursor for c in conns] == [None, stopped_at], conns


@pytest.mark.slow
def test_deployment_overlap_waits_for_the_lock(
    tmp_path: Path, dsn: str, templates: list[bytes]
) -> None:
    """A new ingester started before the old one stops finds the advisory lock
    held: its child exits 73, named and retried with backoff, until the old one
    stops cleanly; then it takes over from the old one's last cursor. One writer
    at a time, nothing lost."""
    with (
        _relay(templates, total=None, rate=1000.0) as relay,
        ingesting(tmp_path, relay.url, dsn, name="old") as old,
    ):
        wait_cursor(dsn, 500, old)
        # the new one gives up on the held lock after 1 s instead of 5 s
        with ingesting(
            tmp_path, relay.url, dsn, "--db-retry-seconds", "1", name="new"
        ) as new:
            wait_until(lambda: "73 EX_CANTCREAT" in new.log(),
                       "the new ingester refused (lock held)", new)  # fmt: skip
            assert old.stop() == 0, old.log()
            handed_over = cursor(dsn)
            n = end_stream(relay, 1500)
            log = finish(new, dsn, templates, n)
            conns = relay.connections()
    assert "another ingester holds the lock" in log
    assert len(new.children()) >= 2
    # the refused children never connected; the one that took over asked for
    # exactly the old one's last cursor
    assert [c.cursor for c in conns] == [None, handed_over], conns


# -- 6. the supervisor with the real ingester ---------------------------------------------


def test_config_error_of_the_child_is_not_restarted(
    tmp_path: Path, dsn: str, templates: list[bytes]
) -> None:
    """The stored cursor counts another relay's seqs: the child refuses (exit 78,
    bad settings), and the supervisor exits 78 without a restart."""

    async def other_source(conn: asyncpg.Connection) -> None:
        await conn.execute(
            "UPDATE ingest_cursor SET source = 'wss://relay.elsewhere.example', "
            "last_seq = 77"
        )

    _sql(dsn, other_source)
    with _relay(templates) as relay, ingesting(tmp_path, relay.url, dsn) as ing:
        status = ing.proc.wait(GUARD)
        log = ing.log()
    assert status == exits.CONFIG, log
    assert len(ing.children()) == 1
    assert "78 EX_CONFIG (bad settings)" in log and "not restarting" in log
    assert cursor(dsn) == 77


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_database_unavailable_backoff_grows(tmp_path: Path) -> None:
    """No database at all: each child exits 74 (database unavailable) and the
    logged restart delays double (0.05, 0.1, 0.2, 0.4 s bases, ±20 % jitter)."""
    dead = f"postgresql://ingest@127.0.0.1:{_closed_port()}/none"
    with ingesting(
        tmp_path, "ws://127.0.0.1:9", dead, "--db-retry-seconds", "0"
    ) as ing:
        wait_until(lambda: ing.log().count("restart_in=") >= 4, "4 restarts", ing)
        assert ing.stop() == 0
        log = ing.log()
    got = re.findall(
        r"ended: 74 EX_IOERR \(database unavailable\) uptime=[0-9.]+s; restart=(\d+) "
        r"backoff=([0-9.]+)s restart_in=([0-9.]+)s",
        log,
    )
    assert len(got) >= 4, log
    assert [int(r) for r, _, _ in got[:4]] == [1, 2, 3, 4]
    assert [float(b) for _, b, _ in got[:4]] == [0.05, 0.1, 0.2, 0.4]
    delays = [float(d) for _, _, d in got[:4]]
    assert delays == sorted(delays) and len(set(delays)) == 4


def test_sigkill_of_the_supervisor_leaves_no_ingester(
    tmp_path: Path, dsn: str, templates: list[bytes]
) -> None:
    """A SIGKILLed supervisor takes its running ingester with it (PDEATHSIG);
    what was committed is consistent, the advisory lock is free again, and the
    next ingester stores the rest exactly once."""
    with (
        _relay(templates, total=None, rate=1000.0) as relay,
        ingesting(tmp_path, relay.url, dsn) as ing,
    ):
        pid = ing.wait_child()
        wait_cursor(dsn, 200, ing)
        assert alive(pid)
        ing.proc.kill()
        ing.proc.wait(GUARD)
        wait_until(lambda: not alive(pid), f"the child {pid} to die")
        at = cursor(dsn)
        check_exactly_once(dsn, templates, at)
        n = end_stream(relay, 1000)
        with ingesting(tmp_path, relay.url, dsn, name="next") as nxt:
            finish(nxt, dsn, templates, n)
    assert "EX_CANTCREAT" not in nxt.log(), nxt.log()
    assert len(nxt.children()) == 1


# -- the check itself can fail ------------------------------------------------------------

_ROW = (
    "INSERT INTO ingest_events (seq, idx, event_type, repo) VALUES ({}, {}, 'c', 'd')"
)


def test_the_check_finds_duplicates_gaps_and_wrong_counts(
    dsn: str, templates: list[bytes]
) -> None:
    """:func:`check_exactly_once` on a log written by hand: right, then with a
    duplicate (seq, idx), a missing seq, a missing operation row, a dead letter."""
    n = len(templates)
    want = expected_rows(templates, n)
    multi = next(seq for seq, k in want.items() if k > 1)

    async def write(conn: asyncpg.Connection) -> None:
        await conn.executemany(
            "INSERT INTO ingest_events (seq, idx, event_type, repo) "
            "VALUES ($1, $2, 'commit', 'did:plc:x')",
            [(seq, idx) for seq, k in want.items() for idx in range(k)],
        )
        await conn.execute("UPDATE ingest_cursor SET last_seq = $1", n)

    _sql(dsn, write)
    check_exactly_once(dsn, templates, n)
    dead = "INSERT INTO ingest_dead_letters (seq, rule, reason, frame_size) VALUES "
    faults = [
        (_ROW.format(5, 0), "DELETE FROM ingest_events WHERE seq = 5 AND idx = 0",
         "duplicates"),
        ("UPDATE ingest_events SET seq = -seq WHERE seq = 7",
         "UPDATE ingest_events SET seq = 7 WHERE seq = -7", "missing (gaps)"),
        (f"DELETE FROM ingest_events WHERE seq = {multi} AND idx = 1",
         _ROW.format(multi, 1), "differ"),
        (_ROW.format(n + 1, 0), f"DELETE FROM ingest_events WHERE seq = {n + 1}",
         "never sent"),
        (dead + "(3, 'X', 'y', 0)", "DELETE FROM ingest_dead_letters", "dead letters"),
    ]  # fmt: skip
    for break_it, repair, message in faults:
        _sql(dsn, lambda c, q=break_it: c.execute(q))
        with pytest.raises(AssertionError, match=re.escape(message)):
            check_exactly_once(dsn, templates, n)
        _sql(dsn, lambda c, q=repair: c.execute(q))
        if message == "duplicates":  # both copies went: put one back
            _sql(dsn, lambda c: c.execute(_ROW.format(5, 0)))
        check_exactly_once(dsn, templates, n)
