"""The typed subscription (atdata_runtime.firehose.subscribe) against the real local
PDS (``@atproto/pds`` on loopback: its own ``subscribeRepos``), a real PLC
directory for signature checks, and, for the ingestion service's client, a small
real HTTP server (Starlette under uvicorn) that serves the documented ``/events``
shapes. Nothing is mocked.

The PDS drops the sequenced events of a deleted account (only the ``#account``
tombstone stays), so every test subscribes *before* it writes: the events are
seen live, in order, as a consumer sees them."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from atdata_gen.testing.localnet import Account as PdsAccount
from atdata_gen.testing.localnet import LocalNetwork, free_port
from atdata_runtime.atmosphere import IdentityResolver
from atdata_runtime.firehose import (
    Account,
    Create,
    Delete,
    Event,
    Identity,
    Info,
    Sync,
)
from atdata_runtime.firehose.events import Update
from atdata_runtime.firehose.frames import decode_frame
from atdata_runtime.firehose.subscribe import (
    FileCursorStore,
    IngestService,
    Relay,
    Subscription,
    SubscriptionError,
    event_from_row,
)
from atdata_runtime.firehose.verify import CommitVerifier
from atdata_runtime.lexicons.science.alt.dataset.schema import Schema
from hypothesis import given
from hypothesis import strategies as st

from .conftest import CORPUS

SCHEMA = "science.alt.dataset.schema"
OTHER = "com.example.subscribe.item"
GUARD = 90.0  # seconds: a hang guard, never an assertion about speed

_names = iter(range(10_000))


def _record(name: str = "ImageSample") -> dict[str, Any]:
    path = CORPUS / "atdata" / "records" / f"{name}.schema.json"
    return json.loads(path.read_text())  # type: ignore[no-any-return]


class Repo:
    """One account on the local PDS, written to with plain XRPC calls."""

    def __init__(self, net: LocalNetwork, account: PdsAccount) -> None:
        self.net = net
        self.account = account
        self.did = account.did
        resp = httpx.post(
            f"{net.pds_url}/xrpc/com.atproto.server.createSession",
            json={"identifier": account.handle, "password": account.password},
        )
        resp.raise_for_status()
        self.auth = {"Authorization": f"Bearer {resp.json()['accessJwt']}"}

    def _post(self, method: str, body: dict[str, Any]) -> dict[str, Any]:
        resp = httpx.post(
            f"{self.net.pds_url}/xrpc/{method}",
            headers=self.auth,
            json=body,
            timeout=30,
        )
        assert resp.status_code == 200, resp.text
        return resp.json() if resp.content else {}

    def put(self, collection: str, rkey: str, record: dict[str, Any]) -> str:
        """putRecord (create or update); returns the record's CID."""
        out = self._post(
            "com.atproto.repo.putRecord",
            {
                "repo": self.did,
                "collection": collection,
                "rkey": rkey,
                "record": record,
                "validate": False,
            },
        )
        return str(out["cid"])

    def delete(self, collection: str, rkey: str) -> None:
        self._post(
            "com.atproto.repo.deleteRecord",
            {"repo": self.did, "collection": collection, "rkey": rkey},
        )

    def delete_account(self) -> None:
        """``com.atproto.admin.deleteAccount`` with the network's admin password
        (the user-facing ``server.deleteAccount`` needs an emailed token)."""
        resp = httpx.post(
            f"{self.net.pds_url}/xrpc/com.atproto.admin.deleteAccount",
            auth=("admin", self.net.admin_password),
            json={"did": self.did},
            timeout=30,
        )
        assert resp.status_code == 200, resp.text


def new_repo(net: LocalNetwork) -> Repo:
    return Repo(net, net.create_account(f"sub{next(_names)}-{free_port()}"))


def verifier(net: LocalNetwork) -> CommitVerifier:
    return CommitVerifier(
        IdentityResolver(plc_url=net.plc_url, handle_service=net.pds_url),
        policy="dataset",
    )


async def in_thread(fn: Callable[..., Any], *args: Any) -> Any:
    return await asyncio.to_thread(fn, *args)


async def seen(what: Callable[[], bool]) -> None:
    """Wait until ``what()`` (under the hang guard). The PDS drops the stream's
    events of an account when it deletes it, including ones it has not sent
    yet: a test deletes an account only once its earlier events were seen."""
    for _ in range(int(GUARD / 0.02)):
        if what():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("not seen in time")


async def running(sub: Subscription, body: Callable[[], Awaitable[None]]) -> None:
    """Run ``sub`` while ``body`` runs; wait for ``sub`` to stop by itself (its
    ``until`` or a handler calling stop), under the hang guard."""
    task = asyncio.create_task(sub.run())
    try:
        await body()
        await asyncio.wait_for(asyncio.shield(task), GUARD)
    finally:
        if not task.done():
            sub.stop()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, 10)
    task.result()


# --------------------------------------------------------------------------- relay


def test_relay_sees_create_update_delete_and_account_deletion(
    net: LocalNetwork, tmp_path: Path
) -> None:
    """Subscribed to one repository and the schema collection: the typed handlers
    see the schema created (validated by the generated model), an invalid record
    routed to on_invalid, the update, the delete and the account's deletion, in
    stream order; records of another collection are filtered out; the dataset
    commits' signatures were checked against the DID document's key; the cursor
    file holds the last seq."""
    repo = new_repo(net)
    store = FileCursorStore(tmp_path / "cursor")
    store.save(0)  # from the start of the PDS's stream: nothing is missed
    sub = Subscription(
        Relay(net.pds_url),
        collections=[SCHEMA],
        repos=[repo.did],
        cursor=store,
        save_interval=0,
        verify=verifier(net),
        on_invalid=lambda ev, exc: invalid.append((ev, exc)),
    )
    order: list[Event] = []
    typed: list[tuple[Create | Update, Schema]] = []
    deletes: list[Delete] = []
    invalid: list[tuple[Event, Exception]] = []

    @sub.records(Schema)
    def schema(event: Create | Update, record: Schema) -> None:
        typed.append((event, record))

    @sub.on(Delete, collection=SCHEMA)
    async def deleted(event: Delete) -> None:
        deletes.append(event)

    @sub.handler
    def everything(event: Event) -> None:
        order.append(event)
        match event:
            case Account(active=False, status="deleted"):
                sub.stop()
            case _:
                pass

    first = _record("ImageSample")
    second = {**first, "version": "1.1.0", "description": "updated"}
    broken = {k: v for k, v in _record("ScalarSample").items() if k != "name"}

    async def writes() -> None:
        cid1 = await in_thread(repo.put, SCHEMA, "s1", first)
        await in_thread(repo.put, OTHER, "x1", {"$type": OTHER, "n": 1})
        await in_thread(repo.put, SCHEMA, "bad", broken)
        cid2 = await in_thread(repo.put, SCHEMA, "s1", second)
        await in_thread(repo.delete, SCHEMA, "s1")
        await seen(lambda: bool(deletes))
        await in_thread(repo.delete_account)
        cids.extend([cid1, cid2])

    cids: list[str] = []
    asyncio.run(running(sub, writes))

    # the account's creation (#identity, #sync, #account active) comes first
    born = [
        e
        for e in order
        if isinstance(e, Identity | Sync) or getattr(e, "active", False)
    ]
    assert born and order[: len(born)] == born
    kinds = [type(e).__name__ for e in order[len(born) :]]
    assert kinds == ["Create", "Create", "Update", "Delete", "Account"], order
    assert all(getattr(e, "did", getattr(e, "repo", None)) == repo.did for e in order)
    seqs = [e.seq for e in order]  # type: ignore[union-attr]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)

    created, updated = typed
    assert isinstance(created[0], Create) and created[0].cid == cids[0]
    assert created[1].name == "ImageSample" and created[1].version == first["version"]
    assert isinstance(updated[0], Update) and updated[0].cid == cids[1]
    assert updated[1].version == "1.1.0" and updated[1].description == "updated"
    assert updated[0].uri == f"at://{repo.did}/{SCHEMA}/s1"
    # dataset commits verified against the key in the local PLC's DID document
    assert created[0].verified is True and updated[0].verified is True

    assert [getattr(ev, "rkey", None) for ev, _ in invalid] == ["bad"]
    assert "name" in str(invalid[0][1])
    assert [d.rkey for d in deletes] == ["s1"]
    account = order[-1]
    assert isinstance(account, Account) and account.did == repo.did
    assert (account.active, account.status) == (False, "deleted")

    assert sub.stats.invalid == 1 and sub.stats.filtered >= 1
    assert sub.cursor == account.seq
    assert store.load() == account.seq


def test_restart_resumes_from_the_stored_cursor(
    net: LocalNetwork, tmp_path: Path
) -> None:
    """A consumer stops after three events; a second subscription (a restart)
    with the same cursor file sees every later event exactly from there: no gap.
    Then a handler fails fatally (on_error raises): that event is not
    acknowledged and is delivered again after the next restart (at least once)."""
    repo = new_repo(net)
    store = FileCursorStore(tmp_path / "cursor")
    store.save(0)
    rkeys = [f"r{i}" for i in range(8)]

    def make(**kw: Any) -> Subscription:
        return Subscription(
            Relay(net.pds_url),
            collections=["com.example.subscribe.*"],
            repos=[repo.did],
            cursor=store,
            save_interval=0,
            verify="none",
            **kw,
        )

    async def write_all() -> None:
        for rkey in rkeys:
            await in_thread(repo.put, OTHER, rkey, {"$type": OTHER, "k": rkey})

    seen1: list[Create] = []
    sub1 = make()

    @sub1.on(Create)
    def one(event: Create) -> None:
        seen1.append(event)
        if len(seen1) == 3:
            sub1.stop()

    asyncio.run(running(sub1, write_all))
    assert [e.rkey for e in seen1] == rkeys[:3]
    assert store.load() == seen1[-1].seq  # all three finished: all acknowledged

    # restart: a handler that fails fatally on the 6th record
    seen2: list[Create] = []

    def fatal(event: Event, exc: Exception) -> None:
        raise RuntimeError("stop here")

    sub2 = make(on_error=fatal)

    @sub2.on(Create)
    def two(event: Create) -> None:
        seen2.append(event)
        if event.rkey == "r5":
            raise ValueError("handler bug")

    async def nothing() -> None:
        return None

    with pytest.raises(SubscriptionError) as err:
        asyncio.run(running(sub2, nothing))
    assert err.value.rule == "SUB_HANDLER"
    assert [e.rkey for e in seen2] == rkeys[3:6]  # from the cursor on: no gap
    assert store.load() == seen2[-2].seq  # r5 failed: not acknowledged

    seen3: list[Create] = []
    sub3 = make()

    @sub3.on(Create)
    def three(event: Create) -> None:
        seen3.append(event)
        if event.rkey == rkeys[-1]:
            sub3.stop()

    asyncio.run(running(sub3, nothing))
    assert [e.rkey for e in seen3] == rkeys[5:]  # r5 again, then the rest
    assert seen3[0].seq == seen2[-1].seq
    assert store.load() == seen3[-1].seq


def test_per_repo_order_with_concurrency(net: LocalNetwork) -> None:
    """Two repositories, concurrency 4: the slow repo's first handler (a plain
    function, in the thread pool) blocks until the fast repo's last event has
    been handled (a coroutine) — possible only if repos run in parallel. Events
    of each repo are handled one at a time, in stream order. While the slow one
    is blocked the cursor stays below its seq, though later events finished."""
    slow, fast = new_repo(net), new_repo(net)
    release = threading.Event()
    sub = Subscription(
        Relay(net.pds_url),
        collections=[OTHER],
        repos=[slow.did, fast.did],
        cursor=0,
        concurrency=4,
        verify="none",
    )
    handled: dict[str, list[str]] = {slow.did: [], fast.did: []}
    in_flight: dict[str, int] = {slow.did: 0, fast.did: 0}
    peaks: dict[str, int] = {slow.did: 0, fast.did: 0}
    lock = threading.Lock()
    blocked_seq: list[int] = []
    cursor_while_blocked: list[int | None] = []

    def enter(did: str) -> None:
        with lock:
            in_flight[did] += 1
            peaks[did] = max(peaks[did], in_flight[did])

    def leave(did: str, rkey: str) -> None:
        with lock:
            in_flight[did] -= 1
            handled[did].append(rkey)

    @sub.on(Create, repo=slow.did)
    def on_slow(event: Create) -> None:
        enter(slow.did)
        if event.rkey == "a0":
            blocked_seq.append(event.seq)
            assert release.wait(GUARD), "the fast repo never ran beside the slow one"
        leave(slow.did, event.rkey)
        if event.rkey == "a2":
            sub.stop()

    @sub.on(Create, repo=fast.did)
    async def on_fast(event: Create) -> None:
        enter(fast.did)
        await asyncio.sleep(0)
        leave(fast.did, event.rkey)
        if event.rkey == "b2":
            cursor_while_blocked.append(sub.cursor)
            release.set()

    async def writes() -> None:
        for i in range(3):
            await in_thread(slow.put, OTHER, f"a{i}", {"$type": OTHER, "i": i})
            await in_thread(fast.put, OTHER, f"b{i}", {"$type": OTHER, "i": i})

    asyncio.run(running(sub, writes))
    assert handled[slow.did] == ["a0", "a1", "a2"]
    assert handled[fast.did] == ["b0", "b1", "b2"]
    assert peaks == {slow.did: 1, fast.did: 1}
    (cursor,) = cursor_while_blocked
    assert cursor is None or cursor < blocked_seq[0]
    assert sub.cursor is not None and sub.cursor > blocked_seq[0]


def test_backpressure_bounds_events_in_flight(net: LocalNetwork) -> None:
    """max_pending 2 with both handlers blocked: at most two events are handed out
    and the source is not read further (received stays at most max_pending + 1)
    until they finish; then every event arrives, in order."""
    repo = new_repo(net)
    for i in range(6):
        repo.put(OTHER, f"p{i}", {"$type": OTHER, "i": i})
    sub = Subscription(
        Relay(net.pds_url),
        collections=[OTHER],
        repos=[repo.did],
        cursor=0,
        concurrency=2,
        max_pending=2,
        verify="none",
    )
    gate = asyncio.Event()
    seen: list[str] = []
    peak_received: list[int] = []
    others: list[Event] = []  # the account's #identity, #sync, #account (same lane)
    sub.on(Identity, Sync, Account)(others.append)

    @sub.on(Create)
    async def handler(event: Create) -> None:
        if event.rkey == "p0":
            # the reader is stuck on the second slot: p1 is queued, p2 read at most
            while sub.stats.delivered < 2:
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.2)
            read = sub.stats.received - sub.stats.filtered - len(others)
            peak_received.append(read)
            gate.set()
        await gate.wait()
        seen.append(event.rkey)
        if event.rkey == "p5":
            sub.stop()

    async def nothing() -> None:
        return None

    asyncio.run(running(sub, nothing))
    assert seen == [f"p{i}" for i in range(6)]
    assert peak_received[0] <= 3


def test_async_iteration_acknowledges_after_each_event(
    net: LocalNetwork, tmp_path: Path
) -> None:
    """``async for`` yields events in order; closing the generator saves the cursor
    of the events whose loop body finished (the last one, where we broke out, is
    not acknowledged)."""
    repo = new_repo(net)
    for i in range(3):
        repo.put(OTHER, f"i{i}", {"$type": OTHER, "i": i})
    store = FileCursorStore(tmp_path / "cursor")
    store.save(0)
    sub = Subscription(
        Relay(net.pds_url),
        repos=[repo.did],
        collections=[OTHER],
        cursor=store,
        verify="none",
    )

    async def main() -> list[Event]:
        got: list[Event] = []
        async with contextlib.aclosing(sub.events()) as events:
            async for event in events:
                if isinstance(event, Create):  # the account's #identity, #account pass
                    got.append(event)
                if len(got) == 3:
                    break
        return got

    got = asyncio.run(asyncio.wait_for(main(), GUARD))
    assert [e.rkey for e in got] == ["i0", "i1", "i2"]  # type: ignore[union-attr]
    assert store.load() == got[1].seq  # type: ignore[union-attr]

    with pytest.raises(SubscriptionError) as err:
        sub.handler(lambda ev: None)
        sub.events()
    assert err.value.rule == "SUB_MODE"


def _creates(
    sub: Subscription, n: int, kinds: tuple[type, ...] = (Create,)
) -> list[Event]:
    """The first ``n`` events of ``kinds`` of one run of ``sub`` (async
    iteration: the last one is handed out but not finished when the loop
    breaks, so it is not acknowledged)."""

    async def main() -> list[Event]:
        got: list[Event] = []
        async with contextlib.aclosing(sub.events()) as events:
            async for event in events:
                if isinstance(event, kinds):
                    got.append(event)
                    if len(got) == n:
                        break
        return got

    return asyncio.run(asyncio.wait_for(main(), GUARD))


def test_plc_url_verifies_the_commits_of_a_private_network(
    net: LocalNetwork, caplog: pytest.LogCaptureFixture
) -> None:
    """The local network's DIDs are in its own PLC directory, not plc.directory:
    ``Subscription(plc_url=net.plc_url)`` with the default policy verifies the
    schema commit (``verified`` True, nothing unverified). With a PLC directory
    that does not answer (a closed loopback port) the commit is not verified:
    ``verified`` None, the resolver's rule counted in ``stats.unverified`` and
    logged once with the ``plc_url=`` hint."""
    repo = new_repo(net)
    repo.put(SCHEMA, "s1", _record())

    def first_create(plc_url: str) -> tuple[Create, Subscription]:
        sub = Subscription(
            Relay(net.pds_url),
            collections=[SCHEMA],
            repos=[repo.did],
            cursor=0,
            plc_url=plc_url,
        )
        (event,) = _creates(sub, 1)
        assert isinstance(event, Create)
        return event, sub

    good, sub = first_create(net.plc_url)
    assert good.verified is True
    assert sub.stats.unverified == {}
    assert sub.verifier is not None and sub.verifier.stats["verified"] == 1
    with caplog.at_level(logging.WARNING, logger="atdata_runtime.firehose"):
        bad, sub = first_create(f"http://127.0.0.1:{free_port()}")
    assert bad.verified is None and bad.seq == good.seq
    ((rule, count),) = sub.stats.unverified.items()
    assert count == 1
    assert rule not in ("REV_STALE", "PROOF_INCOMPLETE", "COMMIT_TOO_BIG"), rule
    warned = [r.getMessage() for r in caplog.records if rule in r.getMessage()]
    assert len(warned) == 1 and "plc_url=" in warned[0], caplog.text


def test_a_redelivered_event_keeps_its_verdict(net: LocalNetwork) -> None:
    """A run breaks out of its loop at the first schema Create (handed out, not
    finished: not acknowledged); the next run of the same subscription reads
    that commit again. The verifier already holds a later rev of the DID, so a
    second check would call it REV_STALE and deliver it ``verified=None``: the
    subscription reuses the verdict it gave that frame, and each commit is
    checked once."""
    repo = new_repo(net)
    repo.put(SCHEMA, "s1", _record())
    repo.put(SCHEMA, "s2", {**_record(), "version": "2.0.0"})
    sub = Subscription(
        Relay(net.pds_url),
        collections=[SCHEMA],
        repos=[repo.did],
        cursor=0,
        verify=verifier(net),
    )
    (first,) = _creates(sub, 1)
    assert isinstance(first, Create) and first.rkey == "s1"
    assert first.verified is True
    assert sub.cursor is not None and sub.cursor < first.seq  # not acknowledged
    again = _creates(sub, 2)
    assert [getattr(e, "rkey", None) for e in again] == ["s1", "s2"]
    assert again[0] == first  # the same event, the same verdict
    assert all(getattr(e, "verified", None) is True for e in again)
    assert sub.verifier is not None
    assert sub.verifier.stats["stale"] == 0
    assert sub.verifier.stats["verified"] == 2  # s1 and s2, once each
    assert sub.stats.unverified == {}


def test_run_forever_in_a_thread_and_stop_from_another(net: LocalNetwork) -> None:
    """The sync wrapper: run_forever blocks its thread; stop() from the test's
    thread ends it cleanly (the until predicate ends the other run)."""
    repo = new_repo(net)
    repo.put(OTHER, "t0", {"$type": OTHER})
    sub = Subscription(
        Relay(net.pds_url),
        repos=[repo.did],
        collections=[OTHER],
        cursor=0,
        verify="none",
    )
    seen = threading.Event()
    sub.handler(lambda ev: seen.set())
    errors: list[BaseException] = []

    def target() -> None:
        try:
            sub.run_forever()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    thread = threading.Thread(target=target)
    thread.start()
    assert seen.wait(GUARD)
    sub.stop()
    thread.join(GUARD)
    assert not thread.is_alive() and not errors
    assert sub.cursor is not None

    got: list[Event] = []
    sub2 = Subscription(
        Relay(net.pds_url),
        repos=[repo.did],
        collections=[OTHER],
        cursor=0,
        verify="none",
    )
    sub2.handler(got.append)
    sub2.run_forever(until=lambda ev: isinstance(ev, Create) and ev.rkey == "t0")
    assert [e.rkey for e in got if isinstance(e, Create)] == ["t0"]
    assert isinstance(got[-1], Create)


def test_relay_refusals_are_final(net: LocalNetwork) -> None:
    """A cursor ahead of the PDS's stream (FutureCursor error frame) and a server
    refusing the upgrade (HTTP 403) stop the subscription with a rule; a dead
    port is retried, then given up after max_reconnects."""
    sub = Subscription(Relay(net.pds_url), cursor=10**12, verify="none")
    with pytest.raises(SubscriptionError) as err:
        asyncio.run(asyncio.wait_for(sub.run(), GUARD))
    assert err.value.rule == "SUB_FUTURE_CURSOR"

    # a server that answers the upgrade with 403 (Starlette: no WebSocket route)
    service = Service([])
    wrong = Subscription(Relay(service.url), verify="none")

    async def refused() -> None:
        async with service.serving():
            await wrong.run()

    with pytest.raises(SubscriptionError) as err:
        asyncio.run(asyncio.wait_for(refused(), GUARD))
    assert err.value.rule == "SUB_HTTP" and "403" in str(err.value)

    dead = Subscription(
        Relay(f"http://127.0.0.1:{free_port()}"),
        verify="none",
        backoff=(0.01, 0.02),
        max_reconnects=2,
    )
    with pytest.raises(SubscriptionError) as err:
        asyncio.run(asyncio.wait_for(dead.run(), GUARD))
    assert err.value.rule == "SUB_RECONNECTS"
    assert dead.stats.reconnects == 3


# ----------------------------------------------------------------- configuration


def test_bad_arguments_have_rules(tmp_path: Path) -> None:
    relay = Relay("wss://relay.example")
    cases: list[tuple[Callable[[], Any], str]] = [
        (lambda: Subscription(relay, collections=["not an nsid"]), "SUB_FILTER"),
        (lambda: Subscription(relay, collections=["a..b.*"]), "SUB_FILTER"),
        (lambda: Subscription(relay, repos=["alice.test"]), "SUB_FILTER"),
        (lambda: Subscription(relay, concurrency=0), "SUB_CONFIG"),
        (lambda: Subscription(relay, concurrency=4, max_pending=2), "SUB_CONFIG"),
        (lambda: Subscription(relay, cursor=-1), "SUB_CONFIG"),
        (lambda: Subscription(relay, verify="some"), "SUB_CONFIG"),  # type: ignore[arg-type]
        (lambda: Subscription(relay, plc_url="ftp://plc.example"), "SUB_CONFIG"),
        (lambda: Subscription(relay, plc_url="https://plc.example/?x"), "SUB_CONFIG"),
        (
            lambda: Subscription(
                relay, verify=CommitVerifier(), plc_url="https://plc.example"
            ),
            "SUB_CONFIG",
        ),
        (lambda: Relay("ftp://relay.example"), "SUB_CONFIG"),
        (lambda: Relay("wss://relay.example/?cursor=5"), "SUB_CONFIG"),
        (lambda: Relay("wss://relay.example:99999"), "SUB_CONFIG"),
        (lambda: IngestService("http://svc.example", ""), "SUB_CONFIG"),
        (lambda: IngestService("http://svc.example", "a\nb"), "SUB_CONFIG"),
        (lambda: IngestService("http://svc.example", "t", limit=1001), "SUB_CONFIG"),
    ]
    for make, rule in cases:
        with pytest.raises(SubscriptionError) as err:
            make()
        assert err.value.rule == rule, make
    sub = Subscription(relay)
    with pytest.raises(SubscriptionError, match="SUB_CONFIG"):
        sub.on(Account, collection=SCHEMA)
    (tmp_path / "cursor").write_text("12x\n")
    with pytest.raises(SubscriptionError) as err:
        FileCursorStore(tmp_path / "cursor").load()
    assert err.value.rule == "CURSOR_STORE"


def test_relay_endpoint() -> None:
    assert Relay("https://bsky.network").endpoint(None) == (
        "wss://bsky.network/xrpc/com.atproto.sync.subscribeRepos"
    )
    assert Relay("http://localhost:2583/").endpoint(7) == (
        "ws://localhost:2583/xrpc/com.atproto.sync.subscribeRepos?cursor=7"
    )
    url = "wss://relay.example/xrpc/com.atproto.sync.subscribeRepos"
    assert Relay(url).endpoint(0) == url + "?cursor=0"


def test_file_cursor_store_is_atomic(tmp_path: Path) -> None:
    """save() replaces the file in one rename (no temporary file is left behind);
    load() of a missing file is None."""
    store = FileCursorStore(tmp_path / "sub" / "cursor")
    assert store.load() is None
    for seq in (0, 5, 10**15):
        store.save(seq)
        assert store.load() == seq
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["cursor"]
    with pytest.raises(SubscriptionError, match="CURSOR_SAVE"):
        store.save(-1)
    (tmp_path / "sub" / "cursor").write_bytes(b"9" * 100)
    with pytest.raises(SubscriptionError, match="CURSOR_STORE"):
        store.load()


# ------------------------------------------------------------ service rows


def _row(**over: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "seq": 10,
        "idx": 0,
        "event_type": "commit",
        "action": "create",
        "repo": "did:plc:abc",
        "collection": SCHEMA,
        "rkey": "s1",
        "cid": "bafyreidqb44epkqh27qwjrf63lobmdni7ct72llwcowzbncz3synvitdry",
        "prev_cid": None,
        "rev": "3n3mguuq27k2c",
        "commit_cid": "bafyreicd4xz6ncptolrofoawhcj7a3ftwcem6osc2m4zczaer4wzllqewy",
        "record": _record(),
        "valid": "ok",
        "verified": True,
        "event_time": "2026-01-01T00:00:00Z",
        "indexed_at": "2026-01-01T00:00:01+00:00",
    }
    row.update(over)
    return row


def test_rows_become_events() -> None:
    ev = event_from_row(_row())
    assert isinstance(ev, Create) and ev.verified is True and ev.idx == 0
    assert ev.model(Schema).name == "ImageSample"
    assert ev.time is not None and ev.time.tzinfo is not None
    upd = event_from_row(_row(action="update", prev_cid="bafyold"))
    assert isinstance(upd, Update) and upd.prev_cid == "bafyold"
    dele = event_from_row(_row(action="delete", cid=None, record=None))
    assert isinstance(dele, Delete)
    acc = event_from_row(
        _row(
            event_type="account",
            action=None,
            collection=None,
            rkey=None,
            record={"active": False, "status": "deleted", "did": "did:plc:abc"},
        )
    )
    assert acc == Account(10, "did:plc:abc", acc.time, False, "deleted")  # type: ignore[union-attr]
    ident = event_from_row(
        _row(event_type="identity", action=None, record={"handle": "a.test"})
    )
    assert isinstance(ident, Identity) and ident.handle == "a.test"
    assert event_from_row(_row(action=None, record={"ops": []})) is None  # empty commit


@pytest.mark.parametrize(
    ("over", "pointer"),
    [
        ({"seq": -1}, "/seq"),
        ({"seq": True}, "/seq"),
        ({"event_type": "bogus"}, "/event_type"),
        ({"action": "replace"}, "/action"),
        ({"repo": "not-a-did"}, "/repo"),
        ({"collection": "x"}, "/collection"),
        ({"record": []}, "/record"),
        ({"record": None}, "/record"),
        ({"verified": "yes"}, "/verified"),
        ({"event_time": "yesterday"}, "/event_time"),
        ({"rkey": "k" * 600}, "/rkey"),
        ({"event_type": "account", "record": {"active": "no"}}, "/record/active"),
    ],
)
def test_hostile_rows_are_refused_with_a_pointer(
    over: dict[str, Any], pointer: str
) -> None:
    with pytest.raises(SubscriptionError) as err:
        event_from_row(_row(**over), "/events/3")
    assert err.value.rule == "SUB_ROW"
    assert err.value.location == "/events/3" + pointer


# ------------------------------------------------------ service client, real HTTP


class Service:
    """A real HTTP server (uvicorn) with the documented ``/events`` and
    ``/events/stream`` shapes over a list of rows; records the requests."""

    def __init__(self, rows: list[dict[str, Any]], token: str = "atdi_test") -> None:
        from starlette.applications import Starlette
        from starlette.requests import Request
        from starlette.responses import JSONResponse, Response, StreamingResponse
        from starlette.routing import Route

        self.rows = rows
        self.requests: list[dict[str, str]] = []
        self.fail_next: list[int] = []
        self.raw_stream: bytes | None = None
        self.ignore_filters = False
        self.drop_after: list[int] = []  # end a stream after this many rows, once
        #: the log's committed seq: a page without more carries it as its cursor
        #: (the scanned horizon) when it is beyond the page's rows
        self.horizon: int | None = None

        def allowed(request: Request) -> Response | None:
            self.requests.append(dict(request.query_params))
            if request.headers.get("authorization") != f"Bearer {token}":
                return JSONResponse(
                    {"error": "InvalidToken", "message": "unknown token"}, 401
                )
            if self.fail_next:
                status = self.fail_next.pop(0)
                return JSONResponse(
                    {"error": "Busy", "message": "later"}, status, {"Retry-After": "0"}
                )
            return None

        def matching(request: Request) -> list[dict[str, Any]]:
            since = int(request.query_params.get("since", "0"))
            repo = None if self.ignore_filters else request.query_params.get("repo")
            return [
                r for r in self.rows if r["seq"] > since and repo in (None, r["repo"])
            ]

        async def events(request: Request) -> Response:
            refused = allowed(request)
            if refused is not None:
                return refused
            limit = int(request.query_params.get("limit", "100"))
            rows = matching(request)
            page = rows[:limit]
            while (
                len(page) < len(rows)
                and page
                and rows[len(page)]["seq"] == page[-1]["seq"]
            ):
                page = page[:-1]  # never cut a commit
            since = int(request.query_params.get("since", "0"))
            cursor = page[-1]["seq"] if page else since
            more = len(page) < len(rows)
            if not more and self.horizon is not None:
                cursor = max(cursor, self.horizon)
            return JSONResponse({"events": page, "cursor": cursor, "more": more})

        async def stream(request: Request) -> Response:
            refused = allowed(request)
            if refused is not None:
                return refused
            rows = matching(request)
            raw = self.raw_stream
            drop = self.drop_after.pop(0) if self.drop_after else None

            async def body() -> AsyncIterator[bytes]:
                if raw is not None:
                    yield raw
                    return
                yield b"retry: 2000\r\n: hello\r\n\r\n"
                for i, row in enumerate(rows):
                    if i == drop:
                        return  # the connection ends in the middle of a commit
                    last = i + 1 == len(rows) or rows[i + 1]["seq"] != row["seq"]
                    text = b"data: " + json.dumps(row).encode()
                    text += b"\nid: %d\n\n" % row["seq"] if last else b"\n\n"
                    for k in range(0, len(text), 7):  # split lines across chunks
                        yield text[k : k + 7]
                while True:
                    await asyncio.sleep(0.05)
                    yield b": ping\n\n"

            return StreamingResponse(body(), media_type="text/event-stream")

        self.app = Starlette(
            routes=[Route("/events", events), Route("/events/stream", stream)]
        )
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"

    @contextlib.asynccontextmanager
    async def serving(self) -> AsyncIterator[None]:
        import uvicorn

        config = uvicorn.Config(
            self.app,
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            lifespan="off",
        )
        server = uvicorn.Server(config)
        task = asyncio.create_task(server.serve())
        while not server.started:
            await asyncio.sleep(0.01)
        try:
            yield
        finally:
            server.should_exit = True
            await task


def _commit_rows() -> list[dict[str, Any]]:
    """seq 11: two operations of one commit; seq 12: an account deletion of
    another repo; seq 13: an empty commit; seq 14: a create; seq 15: a malformed
    row."""
    a, b = "did:plc:aaaa", "did:plc:bbbb"
    return [
        _row(seq=11, idx=0, repo=a, rkey="s1"),
        _row(seq=11, idx=1, repo=a, rkey="s2", action="update"),
        _row(
            seq=12,
            idx=0,
            repo=b,
            event_type="account",
            action=None,
            collection=None,
            rkey=None,
            cid=None,
            record={"active": False, "status": "deleted"},
        ),
        _row(seq=13, idx=0, repo=a, action=None, collection=None, rkey=None, record={}),
        _row(seq=14, idx=0, repo=a, rkey="s3"),
        _row(seq=15, idx=0, repo=a, rkey="s4", cid=None),  # a create without CID
    ]


@pytest.mark.parametrize("stream", [False, True], ids=["poll", "sse"])
def test_service_client_over_real_http(stream: bool, tmp_path: Path) -> None:
    """Polling (two rows a page, a 503 and a 429 retried after Retry-After) and
    the event stream (lines split across chunks, CRLF, comments, heartbeats):
    the same events, in order, typed; the malformed row goes to on_malformed;
    the cursor reaches the last seq; a restart from the stored cursor
    asks the service for ``since=<cursor>`` and sees nothing twice."""
    service = Service(_commit_rows())
    if not stream:
        service.fail_next = [503, 429]
    store = FileCursorStore(tmp_path / "cursor")
    malformed: list[Exception] = []
    seen: list[Event] = []

    def make() -> Subscription:
        sub = Subscription(
            IngestService(
                service.url, "atdi_test", stream=stream, limit=2, poll_interval=0.05
            ),
            cursor=store,
            save_interval=0,
            backoff=(0.01, 0.05),
            on_malformed=malformed.append,
        )

        @sub.handler
        def handler(event: Event) -> None:
            seen.append(event)

        return sub

    sub = make()

    async def main(sub: Subscription) -> None:
        async with service.serving():
            task = asyncio.create_task(sub.run())
            while sub.cursor != 15:
                await asyncio.sleep(0.02)
                if task.done():
                    task.result()
            sub.stop()
            await task

    asyncio.run(asyncio.wait_for(main(sub), GUARD))
    assert [(type(e).__name__, getattr(e, "rkey", None)) for e in seen] == [
        ("Create", "s1"),
        ("Update", "s2"),
        ("Account", None),
        ("Create", "s3"),
    ]
    assert len(malformed) == 1 and "SUB_ROW" in str(malformed[0])
    assert store.load() == 15
    if not stream:
        assert sub.stats.reconnects == 2
        assert all(r["limit"] == "2" for r in service.requests)

    service.rows.append(_row(seq=16, idx=0, repo="did:plc:aaaa", rkey="s5"))
    service.requests.clear()
    seen.clear()
    sub2 = make()

    async def again() -> None:
        async with service.serving():
            task = asyncio.create_task(sub2.run())
            while sub2.cursor != 16:
                await asyncio.sleep(0.02)
                if task.done():
                    task.result()
            sub2.stop()
            await task

    asyncio.run(asyncio.wait_for(again(), GUARD))
    assert service.requests[0]["since"] == "15"
    assert [getattr(e, "rkey", None) for e in seen] == ["s5"]


def test_service_stream_cut_inside_a_commit_loses_nothing() -> None:
    """The stream ends after the first of the two rows of seq 11 (one commit):
    the client resumes after the last *whole* seq, so the second row arrives,
    and the first is not handled twice."""
    service = Service(_commit_rows())
    service.drop_after = [1, 3]
    seen: list[Event] = []
    sub = Subscription(
        IngestService(service.url, "atdi_test", stream=True),
        backoff=(0.01, 0.02),
    )
    sub.handler(seen.append)

    async def main() -> None:
        async with service.serving():
            task = asyncio.create_task(sub.run())
            while sub.cursor != 15:
                await asyncio.sleep(0.02)
                if task.done():
                    task.result()
            sub.stop()
            await task

    asyncio.run(asyncio.wait_for(main(), GUARD))
    assert [(getattr(e, "seq", None), getattr(e, "idx", 0)) for e in seen] == [
        (11, 0),
        (11, 1),
        (12, 0),
        (14, 0),
    ]
    assert sub.stats.duplicates >= 1 and sub.stats.reconnects == 2
    # nothing was whole at the first cut (seq 11 half read): resume from the start
    # (since=0, the oldest event: the service alone would start at its live tail)
    assert service.requests[0]["since"] == service.requests[1]["since"] == "0"
    assert service.requests[2]["since"] == "12"  # the second cut: after seq 12


def test_failing_handlers_and_invalid_records_never_stop_the_loop(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """With the default callbacks, a handler that raises is logged and its event
    acknowledged; a record that fails its model is logged and skipped by the
    typed handler (the plain handler still sees the event); the run goes on to
    the last seq."""
    rows = _commit_rows()
    rows[1]["record"] = {k: v for k, v in _record().items() if k != "name"}
    service = Service(rows)
    typed: list[str] = []
    plain: list[str] = []
    sub = Subscription(
        IngestService(service.url, "atdi_test", poll_interval=0.05),
        cursor=0,
        concurrency=3,
    )

    @sub.records(Schema)
    async def typed_handler(event: Create | Update, record: Schema) -> None:
        typed.append(event.rkey)

    @sub.on(Create, Update)
    def plain_handler(event: Create | Update) -> None:
        plain.append(event.rkey)
        if event.rkey == "s3":
            raise RuntimeError("handler bug")

    async def main() -> None:
        async with service.serving():
            task = asyncio.create_task(sub.run())
            await seen(lambda: sub.cursor == 15 or task.done())
            sub.stop()
            await task

    asyncio.run(asyncio.wait_for(main(), GUARD))
    assert typed == ["s1", "s3"] and plain == ["s1", "s2", "s3"]
    assert (sub.stats.invalid, sub.stats.handler_errors) == (1, 1)
    assert sub.cursor == 15
    assert "handler bug" in caplog.text and "invalid record" in caplog.text


def test_service_filters_go_to_the_server_and_are_checked_again() -> None:
    """One repo filter is sent as repo=; a server that ignores it still cannot
    deliver another repo's events; a refused token is final (SUB_AUTH)."""
    service = Service(_commit_rows())
    service.ignore_filters = True
    seen: list[Event] = []
    sub = Subscription(
        IngestService(service.url, "atdi_test", poll_interval=0.05),
        repos=["did:plc:bbbb"],
        cursor=0,
    )
    sub.handler(seen.append)

    async def main() -> None:
        async with service.serving():
            task = asyncio.create_task(sub.run())
            while sub.cursor != 15:
                await asyncio.sleep(0.02)
                if task.done():
                    task.result()
            sub.stop()
            await task
            bad = Subscription(IngestService(service.url, "wrong"), cursor=0)
            with pytest.raises(SubscriptionError) as err:
                await bad.run()
            assert err.value.rule == "SUB_AUTH"
            assert "unknown token" in str(err.value)  # the service's message

    asyncio.run(asyncio.wait_for(main(), GUARD))
    assert service.requests[0]["repo"] == "did:plc:bbbb"
    assert [type(e) for e in seen] == [Account]


@pytest.mark.parametrize("stream", [False, True], ids=["poll", "sse"])
def test_a_collection_subscription_asks_for_repository_events(stream: bool) -> None:
    """One collection pattern goes to the service as collection= with
    include=account,identity,sync (the service's collection filter selects
    commit operations only), so an account deletion of any repo reaches a
    Subscription(collections=[...]) as it does from a relay; include=() asks
    for none (a token scoped to commits); a bad include is SUB_CONFIG."""
    rows = _commit_rows()
    rows.insert(0, _row(seq=10, rkey="o1", collection=OTHER))  # not delivered
    got: list[Event] = []

    async def main(service: Service, sub: Subscription) -> None:
        async with service.serving():
            task = asyncio.create_task(sub.run())
            await seen_or_done(lambda: sub.cursor == 15, task)
            sub.stop()
            await task

    service = Service(rows)
    sub = Subscription(
        IngestService(service.url, "atdi_test", stream=stream, poll_interval=0.05),
        collections=["science.alt.dataset.*"],
        cursor=0,
    )
    sub.handler(got.append)
    asyncio.run(asyncio.wait_for(main(service, sub), GUARD))
    assert {(r["collection"], r["include"]) for r in service.requests} == {
        ("science.alt.dataset.*", "account,identity,sync")
    }
    assert [(type(e).__name__, getattr(e, "seq", None)) for e in got] == [
        ("Create", 11),
        ("Update", 11),
        ("Account", 12),
        ("Create", 14),
    ]
    deleted = got[2]
    assert isinstance(deleted, Account)
    assert (deleted.active, deleted.status) == (False, "deleted")

    service = Service(rows)
    sub = Subscription(
        IngestService(
            service.url, "atdi_test", stream=stream, poll_interval=0.05, include=()
        ),
        collections=[SCHEMA],
        cursor=0,
    )
    asyncio.run(asyncio.wait_for(main(service, sub), GUARD))
    assert all("include" not in r for r in service.requests)
    assert service.requests[0]["collection"] == SCHEMA
    for bad in (("commit",), "account", ("account", "info")):
        with pytest.raises(SubscriptionError) as err:
            IngestService(service.url, "atdi_test", include=bad)  # type: ignore[arg-type]
        assert err.value.rule == "SUB_CONFIG"


async def seen_or_done(what: Callable[[], bool], task: asyncio.Task[None]) -> None:
    """Wait until ``what()``; re-raise ``task``'s error when it ended first."""
    await seen(lambda: what() or task.done())
    if task.done():
        task.result()


def test_a_page_cursor_past_its_events_moves_the_subscription(
    tmp_path: Path,
) -> None:
    """A page without more whose cursor is beyond its last event (the service's
    scanned horizon: seqs that matched nothing) is taken as is: the stored
    cursor reaches it, and the next request starts there."""
    service = Service(_commit_rows())
    service.horizon = 40
    store = FileCursorStore(tmp_path / "cursor")
    sub = Subscription(
        IngestService(service.url, "atdi_test", poll_interval=0.05),
        cursor=store,
        save_interval=0,
    )
    got: list[Event] = []
    sub.handler(got.append)

    async def main() -> None:
        async with service.serving():
            task = asyncio.create_task(sub.run())
            await seen_or_done(lambda: sub.cursor == 40, task)
            await seen(lambda: len(service.requests) >= 2)
            sub.stop()
            await task

    asyncio.run(asyncio.wait_for(main(), GUARD))
    assert len(got) == 4 and store.load() == 40
    assert service.requests[1]["since"] == "40"


@given(st.lists(st.integers(1, 40), min_size=1, max_size=30))
def test_sse_parsing_does_not_depend_on_chunking(cuts: list[int]) -> None:
    """The same server-sent event text, cut into chunks anywhere (also between
    CR and LF), gives the same messages."""
    from atdata_runtime.firehose.subscribe import _sse_messages

    text = (
        b"retry: 2000\r\n: comment\r\n\r\n"
        b"data: one\r\nid: 5\r\n\r\n"
        b"data: two\ndata: lines\n\n"
        b"data:three\rid: 6\r\r"
        b"id: 7\n\n"
        b": ping\n\n"
    )
    chunks, pos = [], 0
    for n in cuts:
        chunks.append(text[pos : pos + n])
        pos += n
    chunks.append(text[pos:])

    async def collect() -> list[tuple[str | None, str | None]]:
        async def gen() -> AsyncIterator[bytes]:
            for c in chunks:
                yield c

        return [m async for m in _sse_messages(gen(), "http://x")]

    assert asyncio.run(collect()) == [
        ("5", "one"),
        (None, "two\nlines"),
        ("6", "three"),
        ("7", None),
    ]


def test_service_stream_line_cap() -> None:
    """A server-sent event line over the cap ends the subscription (SUB_SSE_LINE)
    instead of growing the buffer."""
    from atdata_runtime.firehose import subscribe

    service = Service([])
    service.raw_stream = b"data: " + b"x" * (subscribe.MAX_SSE_LINE_BYTES + 10)
    sub = Subscription(IngestService(service.url, "atdi_test", stream=True), cursor=0)

    async def main() -> None:
        async with service.serving():
            await sub.run()

    with pytest.raises(SubscriptionError) as err:
        asyncio.run(asyncio.wait_for(main(), GUARD))
    assert err.value.rule == "SUB_SSE_LINE"


# --------------------------------------- the whole chain: PDS → ingester → API


class Chain:
    """The ingestion service for real: a private PostgreSQL 15 cluster, the
    ingester (``python -m atdata_ingest run``, reading the local PDS, verifying
    dataset commits against the local PLC) and the API (``... serve``), as
    child processes."""

    def __init__(self, net: LocalNetwork, tmp: Path) -> None:
        import os
        import subprocess
        import sys

        import asyncpg  # type: ignore[import-untyped,unused-ignore]
        from atdata_ingest.schema import migrate
        from atdata_ingest.testing.postgres import PostgresCluster

        self.pg = PostgresCluster()
        self.pg.__enter__()
        self.procs: list[subprocess.Popen[bytes]] = []
        try:
            self.dsn = self.pg.create_database("chain")

            async def setup() -> None:
                conn = await asyncpg.connect(self.dsn)
                try:
                    await migrate(conn)
                    # resume after seq 1 (not 0: 0 is the live tail), so the
                    # ingester reads the PDS's stream from its start
                    await conn.execute("UPDATE ingest_cursor SET last_seq = 1")
                finally:
                    await conn.close()

            asyncio.run(setup())
            env = {
                **os.environ,
                "ATDATA_INGEST_DATABASE_URL": self.dsn,
                "ATDATA_INGEST_RELAY_URL": net.pds_url,
                "ATDATA_INGEST_PLC_URL": net.plc_url,
                "ATDATA_INGEST_VERIFY": "dataset",
                "ATDATA_INGEST_RECONNECT_MIN_SECONDS": "0.1",
                "ATDATA_INGEST_RECONNECT_MAX_SECONDS": "1",
            }
            self.port = free_port()
            self.url = f"http://127.0.0.1:{self.port}"
            for argv, name in (
                (["run"], "ingester"),
                (["serve", "--port", str(self.port)], "api"),
            ):
                log = (tmp / f"{name}.log").open("wb")
                self.procs.append(
                    subprocess.Popen(
                        [sys.executable, "-m", "atdata_ingest", *argv],
                        env=env,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                    )
                )
            self.logs = tmp
            for _ in range(int(GUARD / 0.1)):
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(f"{self.url}/health", timeout=2).status_code < 600:
                        break
                for proc in self.procs:
                    assert proc.poll() is None, self.tail()
                threading.Event().wait(0.1)
        except BaseException:
            self.close()
            raise

    def token(self, name: str, scope: dict[str, Any]) -> str:
        import asyncpg
        from atdata_ingest.tokens import create_token

        async def make() -> str:
            conn = await asyncpg.connect(self.dsn)
            try:
                return await create_token(conn, name, scope, rate=1000, burst=1000)
            finally:
                await conn.close()

        return asyncio.run(make())

    def tail(self) -> str:
        return "\n".join(
            p.read_text(errors="replace")[-3000:]
            for p in sorted(self.logs.glob("*.log"))
        )

    def close(self) -> None:
        import signal

        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(20)
            except Exception:  # noqa: BLE001 - last resort, our own child
                proc.kill()
                proc.wait(10)
        self.pg.__exit__(None, None, None)


@pytest.fixture(scope="module")
def chain(
    net: LocalNetwork, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Chain] | Any:
    c = Chain(net, tmp_path_factory.mktemp("chain"))
    try:
        yield c
    finally:
        c.close()


@pytest.mark.parametrize("stream", [False, True], ids=["poll", "sse"])
def test_whole_chain_pds_ingester_postgres_api_subscription(
    net: LocalNetwork, chain: Chain, stream: bool, tmp_path: Path
) -> None:
    """Writes on the local PDS, ingested into PostgreSQL by the real ingester,
    read through the real API with a token scoped to the repository: the typed
    subscription sees the schema created (validated by the generated model,
    signature verified by the ingester), updated and deleted, and the account's
    deletion, in order; a restart from the stored cursor asks for exactly what
    comes after it."""
    repo = new_repo(net)
    token = chain.token(f"consumer-{next(_names)}", {"repos": [repo.did]})
    store = FileCursorStore(tmp_path / "cursor")
    service = IngestService(chain.url, token, stream=stream, poll_interval=0.1)
    sub = Subscription(service, repos=[repo.did], cursor=store, save_interval=0)
    order: list[Event] = []
    typed: list[tuple[Create | Update, Schema]] = []

    @sub.records(Schema)
    def schema(event: Create | Update, record: Schema) -> None:
        typed.append((event, record))

    @sub.handler
    def everything(event: Event) -> None:
        order.append(event)
        if isinstance(event, Account) and not event.active:
            sub.stop()

    first = _record("ImageSample")
    second = {**first, "version": "2.0.0"}

    async def writes() -> None:
        await in_thread(repo.put, SCHEMA, "s1", first)
        await in_thread(repo.put, OTHER, "x1", {"$type": OTHER})
        await in_thread(repo.put, SCHEMA, "s1", second)
        await in_thread(repo.delete, SCHEMA, "s1")
        await seen(lambda: any(isinstance(e, Delete) for e in order))
        await in_thread(repo.delete_account)

    try:
        asyncio.run(running(sub, writes))
    except BaseException:
        print(chain.tail())
        raise
    born = [
        e
        for e in order
        if isinstance(e, Identity | Sync) or getattr(e, "active", False)
    ]
    assert order[: len(born)] == born
    got = [
        (type(e).__name__, getattr(e, "collection", None)) for e in order[len(born) :]
    ]
    assert got == [
        ("Create", SCHEMA),
        ("Create", OTHER),
        ("Update", SCHEMA),
        ("Delete", SCHEMA),
        ("Account", None),
    ]
    account = order[-1]
    assert isinstance(account, Account) and account.status == "deleted"
    (c, created), (u, updated) = typed
    assert created.name == "ImageSample" and updated.version == "2.0.0"
    assert c.verified is True and u.verified is True  # by the ingester, PLC key
    assert store.load() == account.seq


def chain_last_seq(chain: Chain) -> int:
    """The log's committed seq (ingest_cursor.last_seq; /health is cached)."""
    import asyncpg

    async def read() -> int:
        conn = await asyncpg.connect(chain.dsn)
        try:
            return int(await conn.fetchval("SELECT last_seq FROM ingest_cursor"))
        finally:
            await conn.close()

    return asyncio.run(read())


@pytest.mark.parametrize("stream", [False, True], ids=["poll", "sse"])
def test_whole_chain_collection_subscription_sees_the_account_deletion(
    net: LocalNetwork, chain: Chain, stream: bool
) -> None:
    """The AppView case: a token scoped to ``science.alt.dataset.*`` and
    ``Subscription(collections=["science.alt.dataset.*"])`` over the real chain.
    The schema's create, update and delete arrive, the other collection's
    record does not, and the account's deletion (an ``#account`` event, bound
    to no collection) arrives too: the client asks for it with include=. A
    subscription whose collection matches nothing moves its cursor to the
    log's horizon (the page cursor) without a single event."""
    start = chain_last_seq(chain)
    repo = new_repo(net)
    token = chain.token(
        f"datasets-{next(_names)}", {"collections": ["science.alt.dataset.*"]}
    )
    service = IngestService(chain.url, token, stream=stream, poll_interval=0.1)
    sub = Subscription(service, collections=["science.alt.dataset.*"], cursor=start)
    mine: list[Event] = []

    @sub.handler
    def everything(event: Event) -> None:
        if repo.did in (getattr(event, "repo", None), getattr(event, "did", None)):
            mine.append(event)
            if isinstance(event, Account) and not event.active:
                sub.stop()

    async def writes() -> None:
        await in_thread(repo.put, SCHEMA, "s1", _record("ImageSample"))
        await in_thread(repo.put, OTHER, "x1", {"$type": OTHER})
        await in_thread(repo.put, SCHEMA, "s1", {**_record(), "version": "2.0.0"})
        await in_thread(repo.delete, SCHEMA, "s1")
        await seen(lambda: any(isinstance(e, Delete) for e in mine))
        await in_thread(repo.delete_account)

    try:
        asyncio.run(running(sub, writes))
    except BaseException:
        print(chain.tail())
        raise
    born = [
        e for e in mine if isinstance(e, Identity | Sync) or getattr(e, "active", False)
    ]
    assert mine[: len(born)] == born
    got = [
        (type(e).__name__, getattr(e, "collection", None)) for e in mine[len(born) :]
    ]
    assert got == [
        ("Create", SCHEMA),
        ("Update", SCHEMA),
        ("Delete", SCHEMA),
        ("Account", None),
    ]
    account = mine[-1]
    assert isinstance(account, Account)
    assert (account.active, account.status) == (False, "deleted")
    assert sub.cursor == account.seq
    if stream:
        return  # a stream's horizon comes with heartbeats (tests/ingest/test_api.py)
    horizon = chain_last_seq(chain)
    assert horizon >= account.seq
    nothing = Subscription(
        IngestService(chain.url, token, poll_interval=0.1, include=()),
        collections=["science.alt.dataset.nothing.*"],
        cursor=start,
    )
    events: list[Event] = []
    nothing.handler(events.append)

    async def idle() -> None:
        await seen(lambda: (nothing.cursor or 0) >= horizon)
        nothing.stop()

    asyncio.run(running(nothing, idle))
    assert events == [] and (nothing.cursor or 0) >= horizon


def chain_oldest_seq(chain: Chain, did: str) -> int | None:
    """The lowest seq of ``did``'s rows in the log (``None``: none yet)."""
    import asyncpg

    async def read() -> int | None:
        conn = await asyncpg.connect(chain.dsn)
        try:
            seq = await conn.fetchval(
                "SELECT min(seq) FROM ingest_events WHERE repo = $1", did
            )
            return None if seq is None else int(seq)
        finally:
            await conn.close()

    return asyncio.run(read())


@pytest.mark.parametrize("stream", [False, True], ids=["poll", "sse"])
def test_a_service_subscription_without_a_cursor_starts_at_the_oldest_event(
    net: LocalNetwork, chain: Chain, stream: bool
) -> None:
    """``cursor=None`` reads the ingestion service from its oldest event, polled
    or streamed alike (the stream is asked ``since=0``: without it,
    ``/events/stream`` starts at the service's current cursor). The account's
    creation is in the log before the subscription starts, a record is written
    after it: the first event delivered is the account's oldest row, not the
    record."""
    repo = new_repo(net)
    for _ in range(int(GUARD / 0.1)):
        oldest = chain_oldest_seq(chain, repo.did)
        if oldest is not None:
            break
        threading.Event().wait(0.1)
    else:
        raise AssertionError(f"the account never reached the log\n{chain.tail()}")
    token = chain.token(f"oldest-{next(_names)}", {"repos": [repo.did]})
    service = IngestService(chain.url, token, stream=stream, poll_interval=0.1)
    sub = Subscription(service, repos=[repo.did])
    got: list[Event] = []

    @sub.handler
    def first(event: Event) -> None:
        got.append(event)
        sub.stop()

    async def writes() -> None:
        await seen(lambda: sub.stats.connects > 0)
        await in_thread(repo.put, OTHER, "late", {"$type": OTHER})

    try:
        asyncio.run(running(sub, writes))
    except BaseException:
        print(chain.tail())
        raise
    assert got, "no event"
    assert not isinstance(got[0], Create), got[0]  # not the record written after
    assert getattr(got[0], "seq", None) == oldest, got[0]


# ------------------------------------------- the replay relay: faults at scale


def test_replay_relay_faults_lose_nothing_and_duplicate_nothing(
    net: LocalNetwork,
) -> None:
    """Real frames of the local PDS replayed by the replay relay, with three
    malformed frames (garbage, truncated, a record block that does not match its
    CID), an ``#info`` frame, frames over ``max_frame_bytes`` (each closes the
    connection with 1009: skipped, not retried forever) and a relay crash
    (every TCP connection aborted, then more frames): every other frame's events
    arrive exactly once, in order, and the cursor reaches the last seq."""
    from atdata_ingest.testing.relay import ReplayRelay, realistic_frames

    templates = realistic_frames(net, n_accounts=2, records_per_account=15)
    n = len(templates)
    total = 2 * n + 3
    sizes = sorted({len(t) for t in templates})
    # a cap in a gap of the sizes (seq rewriting changes a size by <= 4 bytes)
    gaps = [(b - a, a) for a, b in itertools.pairwise(sizes) if a >= 1100]
    _, below = max(g for g in gaps if g[0] > 8)
    cap = below + 4
    big = {k for k in range(1, total + 1) if len(templates[(k - 1) % n]) > cap}
    assert big and len(big) < total // 4
    injected = {7: "garbage", 13: "truncated", 21: "bad_cid"}
    half = total // 2
    assert half not in injected
    with ReplayRelay(templates, total=half) as relay:  # the rest after the crash
        for seq, kind in injected.items():
            relay.inject(kind, at_seq=seq)  # type: ignore[arg-type]
        # sent once, before frame 2 (frames 1-2: the first account's #identity,
        # #account: small), so no oversized frame closes the connection first
        assert not {1, 2} & big
        relay.inject("info", at_seq=2)
        expected: list[tuple[int, int]] = []
        for k in range(1, total + 1):
            if k in injected or k in big:
                continue
            for ev in decode_frame(relay.frame(k)).events():
                expected.append((k, getattr(ev, "idx", 0)))
        malformed: list[Exception] = []
        got: list[tuple[int, int]] = []
        infos: list[Info] = []
        crashed: list[int] = []
        sub = Subscription(
            Relay(relay.url, max_frame_bytes=cap),
            cursor=0,
            verify="none",
            backoff=(0.01, 0.05),
            on_malformed=malformed.append,
        )

        @sub.handler
        def handler(event: Event) -> None:
            if isinstance(event, Info):
                infos.append(event)
                return
            got.append((event.seq, getattr(event, "idx", 0)))

        async def main() -> None:
            task = asyncio.create_task(sub.run())
            await seen(lambda: sub.cursor == half or task.done())
            # the relay crashes while the connection is idle, then has more frames:
            # only a new connection can get them
            crashed.append(await in_thread(relay.disconnect_all))
            await in_thread(relay.set_total, total)
            await seen(lambda: sub.cursor == total or task.done())
            sub.stop()
            await task

        asyncio.run(asyncio.wait_for(main(), GUARD))
    assert got == expected
    assert [i.name for i in infos] == ["OutdatedCursor"]
    rules = sorted(getattr(e, "rule", "") for e in malformed)
    assert rules.count("FRAME_TOO_BIG") == len(big)
    too_big = {getattr(e, "seq", 0) for e in malformed if "FRAME_TOO_BIG" in str(e)}
    assert too_big == big
    assert "BLOCK_CID_MISMATCH" in rules and len(malformed) == len(big) + 3
    assert crashed[0] >= 1 and sub.stats.reconnects == len(big) + 1
    assert sub.cursor == total


def test_named_sse_events_are_not_rows_and_error_ends_the_stream() -> None:
    """``event: info`` notices (e.g. OutdatedCursor after retention) are logged,
    never parsed as rows; ``event: error`` (a revoked token) ends the stream with
    SUB_AUTH instead of being retried as a malformed row."""
    from atdata_runtime.firehose.subscribe import _sse_messages

    async def chunks(text: str) -> AsyncIterator[bytes]:
        yield text.encode()

    async def collect(text: str) -> list[tuple[str | None, str | None]]:
        return [m async for m in _sse_messages(chunks(text), "http://svc")]

    info = (
        'event: info\ndata: {"name": "OutdatedCursor"}\n\nid: 5\ndata: {"seq": 5}\n\n'
    )
    assert asyncio.run(collect(info)) == [("5", '{"seq": 5}')]
    error = (
        'event: error\ndata: {"error": "InvalidToken", "message": "token revoked"}\n\n'
    )
    with pytest.raises(SubscriptionError) as caught:
        asyncio.run(collect(error))
    assert caught.value.rule == "SUB_AUTH"
    assert "token revoked" in str(caught.value)
