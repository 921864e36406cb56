"""Handle verification (:mod:`atdata_appview.handles`): a handle resolves, and is
shown, only once the network confirms it both ways.

- On the **local network** (``net``: a real PDS and PLC): mallory's ``#identity``
  claims alice's handle; before verification nobody has it, after it alice does
  (handle → DID on the PDS's ``resolveHandle``, the DID document from the PLC
  listing ``at://alice...``) and mallory never. A real handle change on the PDS
  (``com.atproto.identity.updateHandle``) moves it.
- Against :class:`~atdata_appview.testing.identity.IdentityDirectory` (a stand-in
  for the internet's PLC and handle resolution, for DIDs that exist nowhere):
  refutations, re-checks, a handle passing from one account to another (cleared
  from the first in the same statement), unreachable services (a handle verified
  before is kept, a new one is not), the runner loop and ``atdata-appview
  index`` doing it.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import httpx
import pytest
from atdata_appview import queries
from atdata_appview.app import create_app
from atdata_appview.config import ConfigError, Settings
from atdata_appview.handles import (
    RECHECK_SECONDS,
    RETRY_SECONDS,
    VerifyStats,
    make_resolver,
    run_handle_verifier,
    verify_handles,
)
from atdata_appview.indexer import Indexer
from atdata_appview.testing.identity import IdentityDirectory, verify_all
from atdata_appview.testing.log import LogWriter, append_rows
from atdata_gen.testing.localnet import LocalNetwork
from atdata_runtime.atmosphere.cid import record_cid
from atdata_runtime.atmosphere.records import schema_rkey
from fastapi.testclient import TestClient

from .test_xrpc import cellcrop

SCHEMA = "science.alt.dataset.schema"
A = "did:plc:" + "a" * 24
B = "did:plc:" + "b" * 24
C = "did:plc:" + "c" * 24

T = TypeVar("T")


def run(dsn: str, work: Callable[[Any], Awaitable[T]]) -> T:
    async def go() -> T:
        async with asyncpg.create_pool(dsn, min_size=1, max_size=3) as pool:
            return await work(pool)

    return asyncio.run(go())


async def fold(pool: Any, rows: list[dict[str, Any]]) -> None:
    async with pool.acquire() as conn:
        await append_rows(conn, rows)
    indexer = Indexer(pool, listen=False)
    while await indexer.fold_once():
        pass


async def accounts(pool: Any) -> dict[str, tuple[str | None, str | None]]:
    """DID → (claimed handle, verified handle)."""
    async with pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT did, handle, verified_handle FROM appview_accounts"
        )
    return {r["did"]: (r["handle"], r["verified_handle"]) for r in rows}


def client(dsn: str) -> TestClient:
    settings = Settings.from_env({"ATDATA_APPVIEW_DSN": dsn}, rate_per_second=0)
    return TestClient(create_app(settings))


# -- the local network ------------------------------------------------------------------


def test_a_rival_claim_never_takes_a_handle(
    net: LocalNetwork, appview_dsn: str
) -> None:
    """The review's reproduction with real accounts: mallory's PDS claims alice's
    handle after alice's own event (the indexer then clears alice's claim)."""
    alice = net.create_account(f"hja{os.getpid() % 10000}")
    mallory = net.create_account(f"hjm{os.getpid() % 10000}")
    log = LogWriter()
    good = cellcrop("1.0.0")
    evil = cellcrop("1.0.0") | {"description": "MALLORY'S RECORD"}
    rkey = schema_rkey("CellCrop", "1.0.0")
    rows = [
        log.identity(alice.did, alice.handle),
        log.create(alice.did, SCHEMA, rkey, good, cid=record_cid(good)),
        log.create(mallory.did, SCHEMA, rkey, evil, cid=record_cid(evil)),
        log.identity(mallory.did, alice.handle),
    ]
    params = {"handle": alice.handle, "schemaId": "CellCrop"}
    run(appview_dsn, lambda pool: fold(pool, rows))
    with client(appview_dsn) as c:
        # claims alone resolve nothing, and show nothing
        r = c.get("/xrpc/science.alt.dataset.resolveSchema", params=params)
        assert (r.status_code, r.json()["error"]) == (400, "RepoNotFound"), r.text
        evil_uri = f"at://{mallory.did}/{SCHEMA}/{rkey}"
        view = c.get("/xrpc/science.alt.dataset.getSchema", params={"uri": evil_uri})
        assert view.status_code == 200 and "handle" not in view.json()

    resolver = make_resolver(net.plc_url, net.pds_url)
    stats = run(appview_dsn, lambda pool: verify_all(pool, resolver))
    assert (stats.verified, stats.refuted, stats.adopted) == (0, 1, 1), stats
    assert alice.handle in stats.reasons[mallory.did]  # "... resolves to alice"
    assert run(appview_dsn, accounts) == {
        alice.did: (None, alice.handle),  # her claim was cleared; the network wins
        mallory.did: (alice.handle, None),
    }
    with client(appview_dsn) as c:
        r = c.get("/xrpc/science.alt.dataset.resolveSchema", params=params)
        assert (
            r.status_code == 200
            and r.json()["uri"] == f"at://{alice.did}/{SCHEMA}/{rkey}"
        )
        view = c.get("/xrpc/science.alt.dataset.getSchema", params={"uri": evil_uri})
        assert "handle" not in view.json()
        page = c.get(f"/profile/{alice.handle}")
        assert page.status_code == 200
        assert alice.did in page.text and mallory.did not in page.text
    did = run(appview_dsn, lambda pool: queries.lookup_did(pool, alice.handle.upper()))
    assert did == alice.did
    # nothing changed, nothing to do
    assert run(appview_dsn, lambda pool: verify_handles(pool, resolver)).checked == 0


def test_a_real_handle_change_moves_the_handle(
    net: LocalNetwork, appview_dsn: str
) -> None:
    """alice changes her handle on the PDS (which updates her PLC document): the
    re-check drops the old handle, her new claim verifies."""
    alice = net.create_account(f"hmv{os.getpid() % 10000}")
    moved = alice.handle.replace(".test", "-moved.test")
    resolver = make_resolver(net.plc_url, net.pds_url)
    log = LogWriter()
    run(appview_dsn, lambda pool: fold(pool, [log.identity(alice.did, alice.handle)]))
    assert run(appview_dsn, lambda pool: verify_all(pool, resolver)).verified == 1
    session = httpx.post(
        f"{net.pds_url}/xrpc/com.atproto.server.createSession",
        json={"identifier": alice.handle, "password": alice.password},
        timeout=30,
    ).json()
    done = httpx.post(
        f"{net.pds_url}/xrpc/com.atproto.identity.updateHandle",
        json={"handle": moved},
        headers={"Authorization": f"Bearer {session['accessJwt']}"},
        timeout=30,
    )
    assert done.status_code == 200, done.text
    # no event yet: the periodic re-check (due at once here) refutes the old one
    stats = run(
        appview_dsn, lambda pool: verify_handles(pool, resolver, recheck_seconds=0)
    )
    assert (stats.checked, stats.refuted, stats.inconclusive) == (1, 1, 0), stats
    assert run(appview_dsn, accounts)[alice.did] == (alice.handle, None)
    run(appview_dsn, lambda pool: fold(pool, [log.identity(alice.did, moved)]))
    assert run(appview_dsn, lambda pool: verify_all(pool, resolver)).verified == 1
    assert run(appview_dsn, accounts)[alice.did] == (moved, moved)


# -- the stand-in directory ------------------------------------------------------------


def test_outcomes_follow_what_the_network_says(appview_dsn: str) -> None:
    log = LogWriter()
    with IdentityDirectory({A: "a.test", B: "other.test"}) as net:
        resolver = net.resolver()

        async def go(pool: Any) -> None:
            await fold(pool, [log.identity(A, "a.test"), log.identity(B, "b.test")])
            s = await verify_all(pool, resolver)
            assert (s.verified, s.refuted, s.lookups) == (1, 1, 2), s
            assert "did not resolve" in s.reasons[B], s.reasons
            assert await accounts(pool) == {
                A: ("a.test", "a.test"),
                B: ("b.test", None),  # other.test is B's; b.test is nobody's
            }
            assert await queries.lookup_did(pool, "a.test") == A
            assert await queries.lookup_did(pool, "b.test") is None

            # the network moves a.test to C (A's document no longer lists it),
            # C claims it: C has it, and A loses it in the same statement
            net.set(A, "a-new.test")
            net.set(C, "a.test")
            await fold(pool, [log.identity(C, "a.test")])
            s = await verify_handles(pool, resolver)
            assert (s.checked, s.verified, s.cleared) == (1, 1, 1), s
            assert (await accounts(pool))[A] == (None, None)
            assert await queries.lookup_did(pool, "a.test") == C
            # A has nothing left to check: recorded without a lookup
            s = await verify_handles(pool, resolver)
            assert (s.checked, s.unset, s.lookups) == (1, 1, 0), s

            # re-checks: nothing is due before the interval, everything after
            assert (await verify_handles(pool, resolver)).checked == 0
            s = await verify_handles(pool, resolver, recheck_seconds=0, retry_seconds=0)
            assert s.checked == 2 and s.verified == 1, s  # C still; B still not

            # a claim of a handle no document lists stays unverified
            await fold(pool, [log.identity(B, "x.test")])
            s = await verify_handles(pool, resolver)
            assert (s.checked, s.refuted) == (1, 1), s
            assert (await accounts(pool))[B] == ("x.test", None)

        run(appview_dsn, go)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_unreachable_services_keep_what_was_verified(appview_dsn: str) -> None:
    """No answer proves nothing: a handle verified before stays (re-checked soon),
    a new claim stays unverified; once the services answer, the truth wins."""
    log = LogWriter()
    dead = f"http://127.0.0.1:{_closed_port()}"
    down = make_resolver(dead, dead, timeout=2)
    with IdentityDirectory({A: "a.test", B: "b.test"}) as net:

        async def go(pool: Any) -> None:
            await fold(pool, [log.identity(A, "a.test")])
            assert (await verify_all(pool, net.resolver())).verified == 1
            await fold(pool, [log.identity(B, "b.test")])
            async with pool.acquire() as conn:  # A's re-check is due
                await conn.execute(
                    "UPDATE appview_accounts SET handle_checked_at = now() - "
                    "interval '2 days' WHERE did = $1",
                    A,
                )
            s = await verify_handles(pool, down)
            assert (s.checked, s.inconclusive, s.refuted) == (2, 1, 1), s
            assert "kept" in s.reasons[A]
            assert await accounts(pool) == {
                A: ("a.test", "a.test"),
                B: ("b.test", None),
            }
            assert await queries.lookup_did(pool, "a.test") == A
            # the kept one is due again after RETRY_SECONDS, not RECHECK_SECONDS
            async with pool.acquire() as conn:
                age = await conn.fetchval(
                    "SELECT extract(epoch FROM now() - handle_checked_at) "
                    "FROM appview_accounts WHERE did = $1",
                    A,
                )
            assert RECHECK_SECONDS - RETRY_SECONDS - 60 <= float(age) < RECHECK_SECONDS
            assert (await verify_handles(pool, down)).checked == 0  # nothing due
            # the services answer again: B verifies at its retry
            s = await verify_handles(pool, net.resolver(), retry_seconds=0)
            assert (s.checked, s.verified) == (1, 1), s
            assert await queries.lookup_did(pool, "b.test") == B

        run(appview_dsn, go)


def test_the_runner_verifies_new_claims(appview_dsn: str) -> None:
    log = LogWriter()
    with IdentityDirectory({A: "a.test"}) as net:
        settings = Settings.from_env(
            {
                "ATDATA_APPVIEW_DSN": appview_dsn,
                "ATDATA_APPVIEW_PLC_URL": net.url,
                "ATDATA_APPVIEW_HANDLE_SERVICE": net.url,
            }
        )
        assert (settings.plc_url, settings.handle_service) == (net.url, net.url)

        async def go(pool: Any) -> list[VerifyStats]:
            await fold(pool, [log.identity(A, "a.test")])
            stop = asyncio.Event()
            rounds: list[VerifyStats] = []

            def seen(stats: VerifyStats) -> None:
                rounds.append(stats)
                if stats.verified or len(rounds) > 20:
                    stop.set()

            await asyncio.wait_for(
                run_handle_verifier(
                    pool, settings, stop, on_round=seen, idle_seconds=0.05
                ),
                120,
            )
            return rounds

        rounds = run(appview_dsn, go)
        assert rounds[-1].verified == 1 and net.requests >= 2
        assert run(appview_dsn, accounts)[A] == ("a.test", "a.test")


def test_handle_service_setting_is_checked(appview_dsn: str) -> None:
    env = {"ATDATA_APPVIEW_DSN": appview_dsn}
    assert Settings.from_env(env).handle_service == ""
    ok = Settings.from_env(
        env | {"ATDATA_APPVIEW_HANDLE_SERVICE": "https://bsky.social/"}
    )
    assert ok.handle_service == "https://bsky.social"
    with pytest.raises(ConfigError, match="ATDATA_APPVIEW_HANDLE_SERVICE"):
        Settings.from_env(env | {"ATDATA_APPVIEW_HANDLE_SERVICE": "ftp://x"})


def test_atdata_appview_index_verifies_handles(
    appview_dsn: str, tmp_path: Path
) -> None:
    """The command verifies handles next to the indexer; SIGTERM ends both."""
    log = LogWriter()
    run(appview_dsn, lambda pool: fold(pool, [log.identity(A, "a.test")]))
    with IdentityDirectory({A: "a.test"}) as net:
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("ATDATA_")},
            "ATDATA_APPVIEW_DSN": appview_dsn,
            "ATDATA_APPVIEW_PLC_URL": net.url,
            "ATDATA_APPVIEW_HANDLE_SERVICE": net.url,
        }
        out = tmp_path / "index.log"
        with out.open("wb") as sink:
            proc = subprocess.Popen(
                [sys.executable, "-m", "atdata_appview", "index"],
                env=env,
                stdout=sink,
                stderr=subprocess.STDOUT,
            )
        try:

            async def verified(pool: Any) -> str | None:
                for _ in range(600):
                    if (await accounts(pool))[A][
                        1
                    ] is not None or proc.poll() is not None:
                        break
                    await asyncio.sleep(0.1)
                return (await accounts(pool))[A][1]

            assert run(appview_dsn, verified) == "a.test", out.read_text()
        finally:
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(60)
        assert code == 0, out.read_text()


def test_a_user_who_fixes_their_handle_heals_without_sql(
    appview_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A refuted handle is not checked again before :data:`RETRY_SECONDS`;
    ``atdata-appview verify-handles`` checks it now. ``status`` counts verified,
    refuted and pending handles; each refutation's reason is logged at INFO."""
    from atdata_appview.handles import handle_counts, log_reasons

    log = LogWriter()
    with IdentityDirectory({A: "a.test", B: "elsewhere.test"}) as net:
        resolver = net.resolver()

        async def before(pool: Any) -> tuple[dict[str, int], dict[str, int]]:
            await fold(pool, [log.identity(A, "a.test"), log.identity(B, "b.test")])
            async with pool.acquire() as conn:
                pending = await handle_counts(conn)
            stats = await verify_all(pool, resolver)
            assert (stats.verified, stats.refuted) == (1, 1), stats
            caplog.set_level("INFO", logger="atdata_appview.handles")
            log_reasons(stats)
            async with pool.acquire() as conn:
                return pending, await handle_counts(conn)

        pending, after = run(appview_dsn, before)
        assert pending == {"verified": 0, "refuted": 0, "pending": 2, "none": 0}
        assert after == {"verified": 1, "refuted": 1, "pending": 0, "none": 0}
        said = [
            r.getMessage()
            for r in caplog.records
            if r.name == "atdata_appview.handles" and r.levelname == "INFO"
        ]
        assert any(B in m and "b.test" in m and "not verified" in m for m in said), said
        assert all(len(m) <= 400 for m in said)

        # B fixes its handle on the network: the backoff would wait an hour
        net.set(B, "b.test")
        assert (
            run(appview_dsn, lambda pool: verify_handles(pool, resolver)).checked == 0
        )
        env = {
            "ATDATA_APPVIEW_DSN": appview_dsn,
            "ATDATA_APPVIEW_PLC_URL": net.url,
            "ATDATA_APPVIEW_HANDLE_SERVICE": net.url,
        }
        done = _cli("verify-handles", env=env)
        assert done.returncode == 0, done.stderr
        assert "1 checked" in done.stdout and "1 verified" in done.stdout, done.stdout
        assert run(appview_dsn, accounts)[B] == ("b.test", "b.test")
        # --all checks the verified ones too
        done = _cli("verify-handles", "--all", env=env)
        assert done.returncode == 0, done.stderr
        assert "2 checked" in done.stdout and "2 verified" in done.stdout, done.stdout
        status = _cli("status", "--format", "json", env=env)
        assert status.returncode == 0, status.stderr
        import json

        assert json.loads(status.stdout)["handles"] == {
            "verified": 2, "refuted": 0, "pending": 0, "none": 0
        }  # fmt: skip
        text = _cli("status", env=env)
        assert "handles     2 verified, 0 refuted, 0 pending" in text.stdout


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    full = {
        **{k: v for k, v in os.environ.items() if not k.startswith("ATDATA_")},
        **env,
    }
    return subprocess.run(
        [sys.executable, "-m", "atdata_appview", *args],
        env=full,
        capture_output=True,
        text=True,
        timeout=120,
    )
