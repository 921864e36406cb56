"""The consumer API (atdata_ingest.api) against a real PostgreSQL and a real
uvicorn on a loopback port: filters, ordering, the limit, the byte budget of a
page, pagination that never cuts a commit, bearer tokens (hashed, scoped,
revoked), rate limits, throttled failed authentications, server-sent events
(live rows, Last-Event-ID resume, heartbeats carrying the scanned seq, poll
fallback, slow clients dropped, streams per token), pools that shed load and keep
streams apart, /health and its cache, the error shape and the OpenAPI document,
and `serve` stopping on SIGTERM with a stream open."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Self
from urllib.parse import urlsplit

import asyncpg
import httpx
import orjson
import pytest
import uvicorn
from atdata_ingest.api import (
    NOTIFY_CHANNEL,
    PAGE_BYTES,
    ApiError,
    ApiLimits,
    Filters,
    create_app,
    fetch_page,
)
from atdata_ingest.schema import EVENT_COLUMNS, migrate
from atdata_ingest.tokens import create_token, revoke_token

UTC = dt.UTC
T0 = dt.datetime(2025, 1, 1, tzinfo=UTC)

# --------------------------------------------------------------------------- helpers


@dataclasses.dataclass
class Row:
    """One ingest_events row (the columns of schema.EVENT_COLUMNS)."""

    seq: int
    idx: int = 0
    event_type: str = "commit"
    action: str | None = "create"
    repo: str = "did:plc:aaaaaaaaaaaaaaaaaaaaaaaa"
    collection: str | None = "app.bsky.feed.post"
    rkey: str | None = "3kabc"
    cid: str | None = "bafyreib2rxk3rh6kzwq"
    prev_cid: str | None = None
    rev: str | None = "3kabcrev"
    commit_cid: str | None = "bafyreicommit"
    record: dict[str, Any] | None = None
    valid: str | None = "ok"
    verified: bool | None = None
    event_time: dt.datetime | None = None
    indexed_at: dt.datetime | None = None

    verify_rule: str | None = None

    def values(self) -> tuple[Any, ...]:
        """The row in the order of EVENT_COLUMNS (whatever the schema's version)."""
        rec = self.record if self.record is not None else {"text": f"r{self.seq}"}
        special = {
            "record": orjson.dumps(rec).decode(),
            "event_time": self.event_time or T0 + dt.timedelta(seconds=self.seq),
            "indexed_at": self.indexed_at or dt.datetime.now(UTC),
        }
        return tuple(
            special[c] if c in special else getattr(self, c) for c in EVENT_COLUMNS
        )


def run(coro: Any) -> Any:
    return asyncio.run(coro)


async def _insert(dsn: str, rows: Sequence[Row], notify: bool) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        async with conn.transaction():
            await conn.copy_records_to_table(
                "ingest_events",
                records=[r.values() for r in rows],
                columns=list(EVENT_COLUMNS),
            )
            if rows:
                last = max(r.seq for r in rows)
                await conn.execute(
                    "UPDATE ingest_cursor SET last_seq = greatest(last_seq, $1), "
                    "updated_at = now()",
                    last,
                )
                if notify:
                    await conn.execute(
                        "SELECT pg_notify($1, $2)", NOTIFY_CHANNEL, str(last)
                    )
    finally:
        await conn.close()


def insert(dsn: str, rows: Sequence[Row], *, notify: bool = True) -> None:
    """COPY rows, advance the cursor and NOTIFY in one transaction, as the
    ingester does."""
    run(_insert(dsn, rows, notify))


async def _sql(dsn: str, query: str, *args: Any) -> Any:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetch(query, *args)
    finally:
        await conn.close()


def sql(dsn: str, query: str, *args: Any) -> Any:
    return run(_sql(dsn, query, *args))


async def _token(dsn: str, name: str, scope: Any, rate: float, burst: int) -> str:
    conn = await asyncpg.connect(dsn)
    try:
        return await create_token(conn, name, scope, rate, burst)
    finally:
        await conn.close()


def token(
    dsn: str,
    name: str,
    scope: Any = None,
    rate: float = 10_000.0,
    burst: int = 100_000,
) -> str:
    return str(run(_token(dsn, name, scope, rate, burst)))


def wait_until(pred: Callable[[], bool], what: str, deadline: float = 30.0) -> None:
    """Wait for a condition the server reaches on its own (a bound, not a timed
    assertion: the deadline only keeps a broken build from hanging)."""
    end = time.monotonic() + deadline
    while not pred():
        if time.monotonic() > end:
            raise AssertionError(f"never happened: {what}")
        time.sleep(0.02)


class LiveApi:
    """create_app(...) served by a real uvicorn on 127.0.0.1 in a thread."""

    def __init__(self, dsn: str, limits: ApiLimits | None = None) -> None:
        self.dsn = dsn
        self.app = create_app(dsn, limits=limits)
        self.state = self.app.state.ingest
        # proto IPPROTO_TCP: asyncio sets TCP_NODELAY on accepted sockets only
        # then (a plain socket.socket() costs 40 ms of Nagle per response).
        self._sock = socket.socket(
            socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP
        )
        self._sock.bind(("127.0.0.1", 0))
        self.port = self._sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            self.app,
            log_level="warning",
            lifespan="on",
            timeout_graceful_shutdown=1,
        )
        self.server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=lambda: asyncio.run(self.server.serve(sockets=[self._sock])),
            daemon=True,
        )

    def __enter__(self) -> Self:
        self._thread.start()
        wait_until(lambda: self.server.started, "uvicorn started")
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self._thread.join(30)
        self._sock.close()

    def client(
        self, tok: str | None = None, *, source: str | None = None, timeout: float = 30
    ) -> httpx.Client:
        """A client, from loopback address ``source`` (127.0.0.x) when given."""
        headers = {"Authorization": f"Bearer {tok}"} if tok else {}
        transport = httpx.HTTPTransport(local_address=source) if source else None
        return httpx.Client(
            base_url=self.url, headers=headers, timeout=timeout, transport=transport
        )


@pytest.fixture
def api(pg_dsn: str) -> Iterator[LiveApi]:
    with LiveApi(pg_dsn) as live:
        yield live


def key(e: dict[str, Any]) -> tuple[int, int]:
    return (e["seq"], e["idx"])


def walk(
    client: httpx.Client, params: dict[str, Any], since: int = 0
) -> tuple[list[tuple[int, int]], int]:
    """Follow cursor/more to the end; (row keys, pages)."""
    seen: list[tuple[int, int]] = []
    pages = 0
    while True:
        r = client.get("/events", params={**params, "since": since})
        assert r.status_code == 200, r.text
        body = r.json()
        pages += 1
        seqs = [e["seq"] for e in body["events"]]
        assert all(s > since for s in seqs)
        seen += [key(e) for e in body["events"]]
        if body["more"]:
            assert seqs, "more=true with an empty page would loop forever"
            assert body["cursor"] == seqs[-1]
        else:  # the scanned horizon, at least the last seq included
            assert body["cursor"] >= (seqs[-1] if seqs else since)
        since = body["cursor"]
        if not body["more"]:
            return seen, pages


# --------------------------------------------------------------------------- data

DATASET = "science.alt.dataset.entry"
COLLECTIONS = [
    "app.bsky.feed.post",
    "app.bsky.feed.like",
    DATASET,
    "science.alt.dataset.schema",
    "science.alt.datasetx.fake",  # shares a string prefix, not the NSID prefix
    "science.alt.dataset.lens.v2",
]
REPOS = [f"did:plc:{c * 24}" for c in "abcd"]


def mixed_log(seed: int, commits: int) -> list[Row]:
    """Commits of 1-7 operations over several collections and repos, with
    identity/account/sync events between them; seq increasing with gaps."""
    rnd = random.Random(seed)
    rows: list[Row] = []
    seq = 10
    for _ in range(commits):
        seq += rnd.choice((1, 1, 1, 2, 5))
        repo = rnd.choice(REPOS)
        kind = rnd.random()
        if kind < 0.08:
            rows.append(
                Row(
                    seq,
                    event_type=rnd.choice(("identity", "account", "sync")),
                    action=None,
                    repo=repo,
                    collection=None,
                    rkey=None,
                    cid=None,
                    record={"did": repo, "seq": seq},
                )
            )
            continue
        for idx in range(rnd.randint(1, 7)):
            rows.append(
                Row(
                    seq,
                    idx,
                    action=rnd.choice(("create", "create", "update", "delete")),
                    repo=repo,
                    collection=rnd.choice(COLLECTIONS),
                    rkey=f"k{seq}x{idx}",
                )
            )
    return rows


def matches(r: Row, p: dict[str, Any]) -> bool:
    c = p.get("collection")
    if c == "*":
        ok_c = r.collection is not None
    elif c is not None and c.endswith(".*"):
        ok_c = r.collection is not None and r.collection.startswith(c[:-1])
    else:
        ok_c = c is None or r.collection == c
    repo_ok = p.get("repo") in (None, r.repo)
    main = (
        ok_c
        and p.get("event_type") in (None, r.event_type)
        and repo_ok
        and p.get("action") in (None, r.action)
    )
    # include=: repository events of those types pass the other filters
    extra = r.event_type in p.get("include", "").split(",") and repo_ok
    return main or extra


def filters_of(params: dict[str, Any]) -> Filters:
    """The Filters of query parameters (include= is comma-separated)."""
    include = params.get("include")
    return Filters(
        **{k: v for k, v in params.items() if k != "include"},
        include=tuple(include.split(",")) if include else (),
    )


# --------------------------------------------------------------------------- /events


FILTERS: list[dict[str, Any]] = [
    {},
    {"event_type": "commit"},
    {"event_type": "account"},
    {"collection": DATASET},
    {"collection": "science.alt.dataset.*"},
    {"collection": "science.alt.*"},
    {"collection": "science.alt.dataset.lens.*"},
    {"collection": "*"},
    {"repo": REPOS[1]},
    {"action": "delete"},
    {"collection": "app.bsky.*", "repo": REPOS[2], "action": "create"},
    {"collection": "science.alt.dataset.*", "event_type": "commit"},
    {"collection": "no.such.thing"},
]
#: include= with every kind of main selection: a collection glob, a repo, an
#: action, an event type (a second type), commits (duplicates in the list), and
#: nothing (include is then redundant).
INCLUDE_FILTERS: list[dict[str, Any]] = [
    {"collection": "science.alt.dataset.*", "include": "account,identity,sync"},
    {"collection": DATASET, "repo": REPOS[1], "include": "account"},
    {"collection": "no.such.thing", "include": "sync"},
    {"action": "delete", "include": "sync,identity"},
    {"event_type": "account", "include": "identity"},
    {"event_type": "commit", "include": "account,sync,account"},
    {"include": "account"},
]
FILTERS += INCLUDE_FILTERS


def test_filters_ordering_and_pagination_walk_the_log_exactly_once(
    api: LiveApi,
) -> None:
    """Every filter returns exactly the matching rows in (seq, idx) order, and a
    walk by cursor/more at small limits (pages edges fall inside multi-op commits)
    sees each row once and never half a commit per page."""
    rows = mixed_log(seed=15, commits=120)
    random.Random(1).shuffle(rows)  # insertion order must not matter
    insert(api.dsn, rows)
    tok = token(api.dsn, "all")
    with api.client(tok) as c:
        for params in FILTERS:
            expected = sorted((r.seq, r.idx) for r in rows if matches(r, params))
            for limit in (1, 3, 7, 1000):
                seen, pages = walk(c, {**params, "limit": limit})
                assert seen == expected, (params, limit)
                if limit == 1000:
                    assert pages == 1
            # Each page holds whole commits: every (seq) of a page has all its
            # matching rows.
            by_seq: dict[int, int] = {}
            for s, _ in expected:
                by_seq[s] = by_seq.get(s, 0) + 1
            since = 0
            while True:
                body = c.get("/events", params={**params, "since": since, "limit": 4})
                page = body.json()
                counts: dict[int, int] = {}
                for e in page["events"]:
                    counts[e["seq"]] = counts.get(e["seq"], 0) + 1
                assert all(counts[s] == by_seq[s] for s in counts), params
                since = page["cursor"]
                if not page["more"]:
                    break


def test_a_commit_larger_than_the_limit_comes_whole(api: LiveApi) -> None:
    rows = [Row(5, i, rkey=f"a{i}") for i in range(7)] + [Row(6), Row(9, 0), Row(9, 1)]
    insert(api.dsn, rows)
    with api.client(token(api.dsn, "t")) as c:
        page = c.get("/events", params={"since": 0, "limit": 3}).json()
        assert [key(e) for e in page["events"]] == [(5, i) for i in range(7)]
        assert page == {**page, "cursor": 5, "more": True}
        page = c.get("/events", params={"since": 5, "limit": 2}).json()
        assert [key(e) for e in page["events"]] == [(6, 0)]  # (9, *) not cut
        assert (page["cursor"], page["more"]) == (6, True)
        page = c.get("/events", params={"since": 6, "limit": 1}).json()
        assert [key(e) for e in page["events"]] == [(9, 0), (9, 1)]
        assert (page["cursor"], page["more"]) == (9, False)
        # a big last commit: more is false when nothing follows
        page = c.get("/events", params={"since": 0, "limit": 1}).json()
        assert len(page["events"]) == 7 and page["more"] is True


def test_limit_default_cap_and_row_shape(api: LiveApi) -> None:
    insert(api.dsn, [Row(s, rkey=f"r{s}") for s in range(1, 1201)])
    with api.client(token(api.dsn, "t")) as c:
        page = c.get("/events", params={"since": 0}).json()
        assert len(page["events"]) == 100 and page["more"] is True
        assert page["cursor"] == 100
        page = c.get("/events", params={"since": 0, "limit": 1000}).json()
        assert len(page["events"]) == 1000 and page["cursor"] == 1000
        for bad in ({"limit": 1001}, {"limit": 0}, {"limit": "x"}, {"since": -1}, {}):
            r = c.get("/events", params={"since": 0, **bad} if bad else {})
            assert r.status_code == 422, bad
            assert set(r.json()) == {"error", "message"}
            assert r.json()["error"] == "InvalidRequest"
        e = c.get("/events", params={"since": 41, "limit": 1}).json()["events"][0]
        assert list(e) == list(EVENT_COLUMNS)
        assert e["record"] == {"text": "r42"}
        assert dt.datetime.fromisoformat(e["event_time"]) == T0 + dt.timedelta(
            seconds=42
        )
        # since beyond the log: empty page, cursor stays at since
        page = c.get("/events", params={"since": 5000}).json()
        assert page == {"events": [], "cursor": 5000, "more": False, "trimmed": None}


def test_hostile_parameters_are_refused_never_5xx(api: LiveApi) -> None:
    insert(api.dsn, [Row(1)])
    hostile = [
        {"collection": "app.bsky'; DROP TABLE ingest_events; --"},
        {"collection": "%"},
        {"collection": "app.%.post"},
        {"collection": "app.*.post"},
        {"collection": "*.post"},
        {"collection": "a" * 400},
        {"collection": "app.bsky.feed.post\x00"},
        {"repo": "did:plc:x' OR '1'='1"},
        {"repo": "did:" + "a" * 5000},
        {"event_type": "commit' OR 1=1"},
        {"action": "drop"},
        {"since": "9" * 40},
        {"since": "1e3"},
    ]
    with api.client(token(api.dsn, "t")) as c:
        for params in hostile:
            r = c.get("/events", params={"since": 0, **params})
            assert r.status_code == 422, (params, r.text)
            assert r.json()["error"] == "InvalidRequest"
        assert len(c.get("/events", params={"since": 0}).json()["events"]) == 1


# --------------------------------------------------------------------------- auth


def test_auth_required_invalid_and_revoked(api: LiveApi) -> None:
    insert(api.dsn, [Row(1)])
    good = token(api.dsn, "good")
    other = token(api.dsn, "other")
    tid = good.split("_")[1]
    forged = f"atdi_{tid}_{'A' * 43}"  # right id, wrong secret
    with httpx.Client(base_url=api.url) as c:
        r = c.get("/events", params={"since": 0})
        assert r.status_code == 401
        assert r.json()["error"] == "AuthRequired"
        assert r.headers["www-authenticate"] == "Bearer"
        for bad in (
            "nope",
            forged,
            "atdi_0000000000000000_" + "A" * 43,
            good + "x",
            "x" * 5000,
        ):
            r = c.get(
                "/events",
                params={"since": 0},
                headers={"Authorization": f"Bearer {bad}"},
            )
            assert r.status_code == 401, bad
            assert r.json()["error"] == "InvalidToken"
            assert bad not in r.text
        r = c.get("/events", params={"since": 0}, headers={"Authorization": good})
        assert r.status_code == 401  # no "Bearer " scheme
        auth = {"Authorization": f"Bearer {good}"}
        assert c.get("/events", params={"since": 0}, headers=auth).status_code == 200
        assert run(_revoke(api.dsn, "good")) is True
        r = c.get("/events", params={"since": 0}, headers=auth)
        assert r.status_code == 401
        assert r.json() == {"error": "InvalidToken", "message": "token revoked"}
        r = c.get("/events/stream", params={"since": 0}, headers=auth)
        assert r.status_code == 401
        other_auth = {"Authorization": f"Bearer {other}"}
        assert (
            c.get("/events", params={"since": 0}, headers=other_auth).status_code == 200
        )
        # /health needs no token
        assert c.get("/health").status_code == 200


async def _revoke(dsn: str, name: str) -> bool:
    conn = await asyncpg.connect(dsn)
    try:
        return await revoke_token(conn, name)
    finally:
        await conn.close()


def test_out_of_scope_filters_are_refused_in_scope_served(api: LiveApi) -> None:
    rows = mixed_log(seed=3, commits=80)
    rows.append(
        Row(10**6, event_type="account", action=None, repo=REPOS[0], collection=None)
    )
    insert(api.dsn, rows)
    ds = token(api.dsn, "datasets", {"collections": ["science.alt.dataset.*"]})
    one_repo = token(
        api.dsn, "repo", {"repos": [REPOS[0]], "event_types": ["commit", "account"]}
    )
    refused = {
        ds: [
            {},
            {"event_type": "commit"},
            {"collection": "app.bsky.feed.post"},
            {"collection": "science.alt.*"},
            {"collection": "*"},
            {"collection": "science.alt.datasetx.fake"},
            {"collection": "science.alt.dataset"},
            {"include": "account"},  # no collection filter
            {"collection": "app.bsky.*", "include": "account"},
        ],
        one_repo: [
            {},
            {"repo": REPOS[1]},
            {"collection": DATASET},  # no repo filter
            {"repo": REPOS[0]},  # no event type filter
            {"repo": REPOS[0], "event_type": "identity"},
            {"collection": DATASET, "include": "account"},  # no repo filter
            {"repo": REPOS[0], "collection": DATASET, "include": "identity"},
            {"repo": REPOS[0], "event_type": "commit", "include": "account,sync"},
            {"repo": REPOS[0], "include": "account"},  # no event type filter
        ],
    }
    allowed = {
        ds: [
            {"collection": DATASET},
            {"collection": "science.alt.dataset.*"},
            {"collection": "science.alt.dataset.lens.*", "repo": REPOS[1]},
            # repository events of every repo pass a collection scope
            {"collection": "science.alt.dataset.*", "include": "account,sync"},
            {"collection": DATASET, "repo": REPOS[0], "include": "account"},
        ],
        one_repo: [
            {"repo": REPOS[0], "event_type": "account"},
            {"repo": REPOS[0], "event_type": "commit"},
            {"repo": REPOS[0], "collection": "app.bsky.*"},  # implies commit
            {"repo": REPOS[0], "collection": DATASET, "include": "account"},
            {"repo": REPOS[0], "event_type": "commit", "include": "account"},
        ],
    }
    with httpx.Client(base_url=api.url) as c:
        for tok, cases in refused.items():
            auth = {"Authorization": f"Bearer {tok}"}
            for params in cases:
                for path in ("/events", "/events/stream"):
                    r = c.get(path, params={"since": 0, **params}, headers=auth)
                    assert r.status_code == 403, (path, params)
                    assert r.json()["error"] == "ScopeDenied"
        for tok, cases in allowed.items():
            auth = {"Authorization": f"Bearer {tok}"}
            for params in cases:
                seen, _ = walk(
                    httpx.Client(base_url=api.url, headers=auth), {**params, "limit": 9}
                )
                assert seen == sorted(
                    (r.seq, r.idx) for r in rows if matches(r, params)
                )
                assert seen, params  # the data set has rows for every case
                if "include" in params:  # some come only by include=
                    assert any(
                        r.event_type != "commit" and (r.seq, r.idx) in seen
                        for r in rows
                    ), params


# --------------------------------------------------------------------------- rate


def test_429_with_retry_after_under_a_burst_other_tokens_unaffected(
    api: LiveApi,
) -> None:
    insert(api.dsn, [Row(1)])
    slow = token(api.dsn, "slow", rate=0.01, burst=5)  # refills 1 per 100 s
    fast = token(api.dsn, "fast")

    async def burst(tok: str, n: int) -> list[httpx.Response]:
        async with httpx.AsyncClient(
            base_url=api.url, headers={"Authorization": f"Bearer {tok}"}, timeout=30
        ) as c:
            return list(
                await asyncio.gather(
                    *(c.get("/events", params={"since": 0}) for _ in range(n))
                )
            )

    got = run(burst(slow, 30))
    codes = sorted(r.status_code for r in got)
    assert codes == [200] * 5 + [429] * 25
    for r in got:
        if r.status_code == 429:
            assert r.json()["error"] == "RateLimitExceeded"
            assert set(r.json()) == {"error", "message"}
            retry = r.headers["retry-after"]
            assert retry.isdigit() and 1 <= int(retry) <= 100
    assert [r.status_code for r in run(burst(fast, 30))] == [200] * 30
    with api.client(slow) as c:  # still limited; a stream is refused too
        assert c.get("/events", params={"since": 0}).status_code == 429
        assert c.get("/events/stream").status_code == 429


# --------------------------------------------------------------------------- SSE


def sse_events(lines: Iterator[str]) -> Iterator[dict[str, Any]]:
    """Parse SSE: yield {"data": obj, "id": str|None} per event; comments skipped."""
    data: list[str] = []
    ev_id: str | None = None
    for line in lines:
        if line == "":
            if data:
                yield {"data": orjson.loads("\n".join(data)), "id": ev_id}
            data, ev_id = [], None
        elif line.startswith(":"):
            continue
        elif line.startswith("data: "):
            data.append(line[6:])
        elif line.startswith("id: "):
            ev_id = line[4:]


def take(it: Iterator[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    return [next(it) for _ in range(n)]


FAST = ApiLimits(heartbeat_seconds=0.2, poll_seconds=0.2, send_timeout_seconds=1.0)


def test_sse_live_events_ids_and_last_event_id_resume(pg_dsn: str) -> None:
    insert(pg_dsn, [Row(1), Row(2, 0), Row(2, 1)])
    tok = token(pg_dsn, "t")
    with LiveApi(pg_dsn, FAST) as live, live.client(tok) as c:
        with c.stream("GET", "/events/stream", params={"since": 1}) as r:
            assert r.status_code == 200
            assert r.headers["content-type"].startswith("text/event-stream")
            events = sse_events(r.iter_lines())
            got = take(events, 2)  # the backlog after since=1
            assert [(e["data"]["seq"], e["data"]["idx"], e["id"]) for e in got] == [
                (2, 0, None),  # no id inside a commit ...
                (2, 1, "2"),  # ... the last row of the seq carries it
            ]
            # committed after connect, announced by NOTIFY as the ingester does
            insert(pg_dsn, [Row(5, i) for i in range(3)] + [Row(6)])
            got = take(events, 4)
            assert [(e["data"]["seq"], e["data"]["idx"]) for e in got] == [
                (5, 0),
                (5, 1),
                (5, 2),
                (6, 0),
            ]
            assert [e["id"] for e in got] == [None, None, "5", "6"]
            assert got[0]["data"]["record"] == {"text": "r5"}
        # reconnect as an EventSource does: same URL, Last-Event-ID header
        insert(pg_dsn, [Row(8), Row(9, 0), Row(9, 1)])
        with c.stream(
            "GET", "/events/stream", params={"since": 1}, headers={"Last-Event-ID": "6"}
        ) as r:
            got = take(sse_events(r.iter_lines()), 3)
            assert [(e["data"]["seq"], e["data"]["idx"]) for e in got] == [
                (8, 0),
                (9, 0),
                (9, 1),
            ]
        # no since, no Last-Event-ID: live tail from the current cursor
        with c.stream("GET", "/events/stream") as r:
            events = sse_events(r.iter_lines())
            wait_until(lambda: live.state.streams_total == 1, "stream open")
            insert(pg_dsn, [Row(12, collection=DATASET)])
            assert next(events)["data"]["seq"] == 12
        # filters apply to the stream; rows committed without NOTIFY arrive by
        # the poll of ingest_cursor
        with c.stream(
            "GET", "/events/stream", params={"since": 12, "collection": DATASET}
        ) as r:
            events = sse_events(r.iter_lines())
            insert(
                pg_dsn,
                [Row(13), Row(14, collection=DATASET), Row(15)],
                notify=False,
            )
            e = next(events)
            assert (e["data"]["seq"], e["id"]) == (14, "14")
        r = c.get("/events/stream", headers={"Last-Event-ID": "12; drop"})
        assert r.status_code == 422


def test_sse_heartbeats_and_streams_per_token(pg_dsn: str) -> None:
    tok = token(pg_dsn, "t")
    other = token(pg_dsn, "o")
    limits = dataclasses.replace(FAST, max_streams_per_token=2)
    with LiveApi(pg_dsn, limits) as live, live.client(tok) as c:
        with (
            c.stream("GET", "/events/stream", params={"since": 0}) as s1,
            c.stream("GET", "/events/stream", params={"since": 0}) as s2,
        ):
            assert s1.status_code == s2.status_code == 200
            lines = s1.iter_lines()
            comments = [next(lines) for _ in range(6)]
            assert ": ping" in comments  # idle: heartbeats
            r = c.get("/events/stream", params={"since": 0})
            assert r.status_code == 429
            assert r.json()["error"] == "TooManyStreams"
            assert int(r.headers["retry-after"]) >= 1
            with live.client(other).stream("GET", "/events/stream") as s3:
                assert s3.status_code == 200  # other tokens unaffected
        # closed streams give their slots back
        wait_until(lambda: live.state.streams_total == 0, "streams released")
        with c.stream("GET", "/events/stream") as s4:
            assert s4.status_code == 200


def test_sse_slow_client_is_dropped_not_buffered(pg_dsn: str) -> None:
    """A client that stops reading is disconnected once a write blocks for
    send_timeout_seconds; the server holds one page, not the backlog."""
    big = {"text": "x" * 20_000}
    insert(pg_dsn, [Row(s, record=big) for s in range(1, 1501)])  # ~30 MB of SSE
    tok = token(pg_dsn, "t")
    limits = dataclasses.replace(FAST, stream_page=50, send_timeout_seconds=0.5)
    with LiveApi(pg_dsn, limits) as live:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.connect(("127.0.0.1", live.port))
        s.sendall(
            f"GET /events/stream?since=0 HTTP/1.1\r\nHost: x\r\n"
            f"Authorization: Bearer {tok}\r\n\r\n".encode()
        )
        try:
            wait_until(lambda: live.state.dropped_slow == 1, "slow client dropped")
            wait_until(lambda: live.state.streams_total == 0, "slot released")
            # the server is still serving others
            with live.client(tok) as c, c.stream("GET", "/events/stream") as r:
                assert r.status_code == 200
        finally:
            s.close()


# --------------------------------------------------------------------------- health


def test_health_ok_stopped_stale_and_unavailable(pg: Any, pg_dsn: str) -> None:
    insert(pg_dsn, [Row(7, event_time=dt.datetime.now(UTC) - dt.timedelta(hours=1))])
    limits = dataclasses.replace(FAST, stale_after_seconds=60, health_cache_seconds=0)
    with LiveApi(pg_dsn, limits) as live, httpx.Client(base_url=live.url) as c:
        h = c.get("/health")
        assert h.status_code == 200
        body = h.json()
        assert body["status"] == "stopped"  # no ingester recorded as running
        assert body["last_seq"] == 7
        assert 3500 < body["lag_seconds"] < 3700 + 600
        assert body["staleness_seconds"] >= 0
        sql(
            pg_dsn,
            "UPDATE ingest_cursor SET ingester_pid = 4242, buffer_fill = 0.25, "
            "buffer_max = 20000, dead_letters = 3, updated_at = now()",
        )
        body = c.get("/health").json()
        assert body["status"] == "ok"
        assert body["last_info"] is None
        info = {"name": "OutdatedCursor", "message": "m", "after_seq": 7}
        sql(
            pg_dsn, "ALTER TABLE ingest_cursor ADD COLUMN IF NOT EXISTS last_info jsonb"
        )
        sql(
            pg_dsn,
            "UPDATE ingest_cursor SET last_info = $1::jsonb",
            orjson.dumps(info).decode(),
        )
        body = c.get("/health").json()
        assert body["last_info"] == info
        assert (body["ingester_pid"], body["buffer_fill"], body["dead_letters"]) == (
            4242,
            0.25,
            3,
        )
        sql(pg_dsn, "UPDATE ingest_cursor SET updated_at = now() - interval '5 min'")
        h = c.get("/health")
        assert h.status_code == 503 and h.json()["status"] == "stale"
        # the database disappears: 503 unavailable, /events 503 Unavailable
        tok = token(pg_dsn, "t")
        name = urlsplit(pg_dsn).path.lstrip("/")
        sql(pg.dsn, f'DROP DATABASE "{name}" WITH (FORCE)')
        h = c.get("/health")
        assert h.status_code == 503 and h.json()["status"] == "unavailable"
        r = c.get(
            "/events", params={"since": 0}, headers={"Authorization": f"Bearer {tok}"}
        )
        assert r.status_code == 503
        assert r.json()["error"] == "Unavailable"


# --------------------------------------------------------------------------- misc


def test_openapi_document_and_error_shape(api: LiveApi) -> None:
    with httpx.Client(base_url=api.url) as c:
        doc = c.get("/openapi.json").json()
        assert doc == api.app.openapi()
        for path in ("/events", "/events/stream"):
            responses = doc["paths"][path]["get"]["responses"]
            assert {"200", "401", "403", "422", "429", "500", "503"} <= set(responses)
            assert doc["paths"][path]["get"]["security"] == [{"HTTPBearer": []}]
            for code in ("429", "503"):
                assert "Retry-After" in responses[code]["headers"]
            assert "WWW-Authenticate" in responses["401"]["headers"]
            assert "acquire timeout" in responses["503"]["description"]
        stream = doc["paths"]["/events/stream"]["get"]["responses"]
        assert "max_streams" in stream["503"]["description"]
        assert (
            "max_streams"
            not in (doc["paths"]["/events"]["get"]["responses"]["503"]["description"])
        )
        assert list(stream["200"]["content"]) == ["text/event-stream"]
        assert "id: <seq scanned>" in stream["200"]["description"]
        assert doc["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
        health = doc["paths"]["/health"]["get"]["responses"]
        assert {"200", "500", "503"} <= set(health)
        r = c.get("/nope")
        assert r.status_code == 404 and r.json()["error"] == "NotFound"
        r = c.post("/events")
        assert r.status_code == 405 and r.json()["error"] == "MethodNotAllowed"


def test_prefix_globs_are_byte_prefixes_under_any_collation(pg_dsn: str) -> None:
    """Under a non-C collation (ICU en here) a plain range is not a prefix test:
    'App.bsky.feed.post' sorts between 'app.bsky.' and 'app.bsky/'. The API sees
    the collation and compares COLLATE "C" instead."""
    sql(
        pg_dsn,
        'ALTER TABLE ingest_events ALTER COLUMN collection TYPE text COLLATE "en-x-icu"',
    )
    rows = [
        Row(1, collection="app.bsky.feed.post"),
        Row(2, collection="App.bsky.feed.post"),
        Row(3, collection="app.bskyx.feed.post"),
        Row(4, collection="app.bsky.graph.follow"),
    ]
    insert(pg_dsn, rows)
    params = {"collection": "app.bsky.*"}
    expected = [(r.seq, r.idx) for r in rows if matches(r, params)]
    assert expected == [(1, 0), (4, 0)]
    with LiveApi(pg_dsn) as live, live.client(token(pg_dsn, "t")) as c:
        assert live.state.byte_order is False
        assert walk(c, params)[0] == expected

    async def plain_range() -> list[int]:
        conn = await asyncpg.connect(pg_dsn)
        try:
            got = await fetch_page(
                conn, Filters(collection="app.bsky.*"), 0, 10, byte_order=True
            )
            return [r[0] for r in got.rows]
        finally:
            await conn.close()

    assert run(plain_range()) == [1, 2, 4]  # why the C comparison is needed


def test_c_collation_is_detected(api: LiveApi) -> None:
    assert api.state.byte_order is True  # the test cluster is initdb --locale=C


def test_the_api_listens_on_the_channel_the_writer_notifies() -> None:
    from atdata_ingest import writer

    assert writer.NOTIFY_CHANNEL == NOTIFY_CHANNEL


# --------------------------------------------------------------------------- bytes


def _sizes(dsn: str) -> tuple[dict[tuple[int, int], int], dict[tuple[int, int], Any]]:
    """(record JSON bytes, record text) by (seq, idx), as PostgreSQL prints it."""
    got = sql(dsn, "SELECT seq, idx, record::text AS t FROM ingest_events")
    sizes = {(r["seq"], r["idx"]): len(r["t"].encode()) if r["t"] else 0 for r in got}
    return sizes, {(r["seq"], r["idx"]): r["t"] for r in got}


def test_fetch_page_bounds_rows_and_record_bytes_and_cuts_only_at_commits(
    pg_dsn: str,
) -> None:
    """Walking the log by fetch_page at many (limit, budget) pairs: every page
    continues the walk exactly, holds whole commits, at most limit rows and
    max_bytes of record JSON unless it is one commit, is cut only when the next
    commit would break a bound, says more exactly when rows remain, and carries
    every record as stored (large ones come from the second query)."""
    rnd = random.Random(5)
    rows = mixed_log(seed=21, commits=150)
    for r in rows:  # 2-byte characters: the budget counts bytes, not characters
        r.record = {"text": "é" * rnd.choice((0, 10, 300, 2000, 9000))}
    rows += [
        Row(10**6, i, rkey=f"big{i}", record={"b": "y" * 30_000}) for i in range(9)
    ]
    insert(pg_dsn, rows)
    sql(pg_dsn, "UPDATE ingest_events SET record = NULL WHERE seq % 7 = 0")
    sizes, texts = _sizes(pg_dsn)
    cases = [(1000, 20_000), (7, 5_000), (1000, 1), (3, 10**9), (50, 60_000)]

    async def go() -> int:
        conn = await asyncpg.connect(pg_dsn)
        pages = 0
        try:
            for params in FILTERS[:8] + INCLUDE_FILTERS:
                expected = sorted((r.seq, r.idx) for r in rows if matches(r, params))
                by_seq: dict[int, list[tuple[int, int]]] = {}
                for k in expected:
                    by_seq.setdefault(k[0], []).append(k)
                f = filters_of(params)
                for limit, budget in cases:
                    since, pos = 0, 0
                    while True:
                        page, more, cursor, horizon, _ = await fetch_page(
                            conn, f, since, limit, byte_order=True, max_bytes=budget
                        )
                        assert horizon == 10**6  # the cursor row's last_seq
                        pages += 1
                        keys = [(r[0], r[1]) for r in page]
                        where = (params, limit, budget, since)
                        assert keys == expected[pos : pos + len(keys)], where
                        assert all(len(r) == len(EVENT_COLUMNS) for r in page)
                        seqs = list(dict.fromkeys(k[0] for k in keys))
                        assert all(
                            len(by_seq[q]) == keys.count(q) or True for q in seqs
                        )
                        for q in seqs:  # whole commits
                            assert [k for k in keys if k[0] == q] == by_seq[q], where
                        nbytes = sum(sizes[k] for k in keys)
                        if len(seqs) > 1:
                            assert len(keys) <= limit and nbytes <= budget, where
                        for r in page:  # records as stored, never withheld
                            assert r[EVENT_COLUMNS.index("record")] == texts[r[:2]]
                        pos += len(keys)
                        assert more == (pos < len(expected)), where
                        if not more:  # the scanned horizon: the whole log
                            assert cursor == 10**6, where
                            break
                        assert cursor == keys[-1][0], where
                        nxt = by_seq[expected[pos][0]]
                        nxt_bytes = sum(sizes[k] for k in nxt)
                        assert (
                            len(keys) + len(nxt) > limit or nbytes + nxt_bytes > budget
                        ), where  # cut only when needed
                        since = keys[-1][0]
                    assert pos == len(expected)
        finally:
            await conn.close()
        return pages

    assert run(go()) > 100


def test_events_pages_stop_at_8_mib_of_records_a_bigger_commit_comes_whole(
    api: LiveApi,
) -> None:
    """The default budget against the reviewer's probe: 1 MB records; the old
    API answered the whole log in one response."""
    mb = {"blob": "x" * 1_000_000}
    rows = [Row(s, record=mb, rkey=f"r{s}") for s in range(1, 13)]
    rows += [Row(20, i, record=mb, rkey=f"c{i}") for i in range(9)]  # 9 MB commit
    insert(api.dsn, rows)
    with api.client(token(api.dsn, "t")) as c:
        r = c.get("/events", params={"since": 0, "limit": 1000})
        page = r.json()
        assert [e["seq"] for e in page["events"]] == list(range(1, 9))
        assert (page["cursor"], page["more"]) == (8, True)
        assert len(r.content) < PAGE_BYTES + 64 * 1024
        page = c.get("/events", params={"since": 8}).json()
        assert [e["seq"] for e in page["events"]] == [9, 10, 11, 12]
        assert page["more"] is True  # 4 MB + the 9 MB commit would not fit
        r = c.get("/events", params={"since": 12})
        page = r.json()
        assert [key(e) for e in page["events"]] == [(20, i) for i in range(9)]
        assert page["more"] is False and len(r.content) > PAGE_BYTES
        assert all(e["record"] == mb for e in page["events"])
    assert ApiLimits().page_bytes == PAGE_BYTES == 8 * 1024 * 1024


def test_rows_trimmed_between_the_page_queries_are_a_503(pg_dsn: str) -> None:
    """Large records come by a second query; when retention removed their rows
    in between, the page is refused (retry) rather than sent without them."""
    insert(pg_dsn, [Row(s, record={"t": "z" * 5000}) for s in range(1, 6)])

    class TrimmedInBetween:
        """A real connection; the log is trimmed right after the first query."""

        def __init__(self, conn: Any, other: Any) -> None:
            self.conn, self.other, self.calls = conn, other, 0

        async def fetch(self, query: str, *args: Any) -> Any:
            got = await self.conn.fetch(query, *args)
            self.calls += 1
            if self.calls == 1:
                await self.other.execute("DELETE FROM ingest_events")
            return got

    async def go() -> ApiError:
        conn = await asyncpg.connect(pg_dsn)
        other = await asyncpg.connect(pg_dsn)
        try:
            with pytest.raises(ApiError) as e:
                await fetch_page(
                    TrimmedInBetween(conn, other), Filters(), 0, 100, max_bytes=100_000
                )
            return e.value
        finally:
            await conn.close()
            await other.close()

    err = run(go())
    assert (err.status, err.error) == (503, "Unavailable")
    assert "trimmed" in err.message and err.headers["Retry-After"] == "1"


def test_sse_pages_are_bounded_by_bytes_and_every_row_arrives(pg_dsn: str) -> None:
    """A stream whose pages hold 30 KB of records (every record withheld from the
    first query and fetched by the second), with a commit larger than that:
    every row arrives once, in order, ids on the last row of each seq."""
    rnd = random.Random(8)
    rows: list[Row] = []
    for seq in range(1, 40):
        rows += [
            Row(seq, i, rkey=f"k{seq}x{i}", record={"t": "q" * rnd.randint(1, 12_000)})
            for i in range(rnd.randint(1, 4))
        ]
    rows += [Row(50, i, rkey=f"big{i}", record={"t": "w" * 12_000}) for i in range(6)]
    insert(pg_dsn, rows)
    _, texts = _sizes(pg_dsn)
    limits = dataclasses.replace(FAST, page_bytes=30_000)
    with (
        LiveApi(pg_dsn, limits) as live,
        live.client(token(pg_dsn, "t")) as c,
        c.stream("GET", "/events/stream", params={"since": 0}) as r,
    ):
        got = take(sse_events(r.iter_lines()), len(rows))
    assert [key(e["data"]) for e in got] == [(x.seq, x.idx) for x in rows]
    for i, e in enumerate(got):
        last = i + 1 == len(got) or got[i + 1]["data"]["seq"] != e["data"]["seq"]
        assert e["id"] == (str(e["data"]["seq"]) if last else None)
        assert e["data"]["record"] == orjson.loads(texts[key(e["data"])])


# --------------------------------------------------------------------------- SSE ids


def sse_messages(lines: Iterator[str]) -> Iterator[tuple[str | None, Any]]:
    """Every SSE message with an id or data: (id, parsed data or None)."""
    data: list[str] = []
    ev_id: str | None = None
    for line in lines:
        if line == "":
            if data or ev_id is not None:
                yield ev_id, (orjson.loads("\n".join(data)) if data else None)
            data, ev_id = [], None
        elif line.startswith("data: "):
            data.append(line[6:])
        elif line.startswith("id: "):
            ev_id = line[4:]


def test_sse_heartbeat_carries_the_scanned_seq_of_a_filtered_stream(
    pg_dsn: str,
) -> None:
    """A filtered stream over a busy log that matches nothing: while NOTIFYs
    wake it more often than the heartbeat interval, it still sends heartbeats
    (timed from the last write), and they carry id: <seq scanned> with no data,
    so a reconnect resumes there, not from the last match."""
    insert(pg_dsn, [Row(1, collection=DATASET)])
    tok = token(pg_dsn, "t")
    limits = dataclasses.replace(FAST, heartbeat_seconds=0.3)
    stop = threading.Event()
    inserted: list[int] = []

    def flood() -> None:  # non-matching commits, each NOTIFYed, every ~20 ms
        seq = 100
        while not stop.is_set():
            insert(pg_dsn, [Row(seq)])
            inserted.append(seq)
            seq += 1
            time.sleep(0.02)

    with LiveApi(pg_dsn, limits) as live, live.client(tok, timeout=10) as c:
        params = {"since": 0, "collection": DATASET}
        with c.stream("GET", "/events/stream", params=params) as r:
            messages = sse_messages(r.iter_lines())
            ident, data = next(messages)
            assert (ident, data["seq"]) == ("1", 1)
            flooder = threading.Thread(target=flood)
            flooder.start()
            try:
                ids: list[int] = []
                for _ in range(500):
                    ident, data = next(messages)
                    assert data is None  # nothing else matches
                    assert ident is not None
                    ids.append(int(ident))
                    if ids[-1] >= 110:
                        break
                assert ids == sorted(set(ids)) and ids[-1] >= 110
            finally:
                stop.set()
                flooder.join()
        scanned = ids[-1]
        assert scanned <= max(inserted)  # never beyond what was committed
        nxt = max(inserted) + 1
        insert(pg_dsn, [Row(nxt, collection=DATASET)])
        with c.stream(
            "GET",
            "/events/stream",
            params=params,
            headers={"Last-Event-ID": str(scanned)},
        ) as r:
            assert next(sse_events(r.iter_lines()))["data"]["seq"] == nxt


# --------------------------------------------------------------------------- metering


def test_failed_authentications_are_throttled_per_address_and_globally(
    pg_dsn: str,
) -> None:
    insert(pg_dsn, [Row(1)])
    good = token(pg_dsn, "good")
    unknown = "atdi_" + "0" * 16 + "_" + "A" * 43  # well formed: costs a lookup
    limits = dataclasses.replace(
        FAST,
        auth_fail_per_ip_burst=3,
        auth_fail_per_ip_rate=0.001,
        auth_fail_burst=5,
        auth_fail_rate=0.001,
    )
    q = {"since": 0}

    def get(source: str, tok: str) -> httpx.Response:
        with live.client(tok, source=source) as c:
            return c.get("/events", params=q)

    with LiveApi(pg_dsn, limits) as live:
        assert get("127.0.0.1", good).status_code == 200  # a consumer at work
        assert [get("127.0.0.2", unknown).status_code for _ in range(3)] == [401] * 3
        r = get("127.0.0.2", unknown)
        assert r.status_code == 429 and r.json()["error"] == "RateLimitExceeded"
        assert int(r.headers["retry-after"]) >= 100  # 1 per 1000 s refill
        assert get("127.0.0.2", good).status_code == 429  # no lookup at all
        # another address has its own bucket, until the global one is empty
        assert [get("127.0.0.3", unknown).status_code for _ in range(2)] == [401] * 2
        assert live.state.throttle.failures == 5
        assert get("127.0.0.4", unknown).status_code == 429
        assert get("127.0.0.4", good).status_code == 429  # unknown address: shed
        # the address that authenticated before skips the global bucket
        assert get("127.0.0.1", good).status_code == 200
        assert get("127.0.0.1", unknown).status_code == 401
        # no credentials: nothing to look up, nothing throttled
        with live.client(source="127.0.0.4") as c:
            r = c.get("/events", params=q)
            assert r.status_code == 401 and r.json()["error"] == "AuthRequired"


def test_every_401_and_403_carries_www_authenticate(api: LiveApi) -> None:
    """RFC 6750 §3: Bearer, with error="invalid_token" for a presented token
    (the over-length one too) and error="insufficient_scope" on a 403."""
    insert(api.dsn, [Row(1)])
    good = token(api.dsn, "good")
    scoped = token(api.dsn, "scoped", {"collections": [DATASET]})
    revoked = token(api.dsn, "gone")
    assert run(_revoke(api.dsn, "gone")) is True
    invalid = 'Bearer error="invalid_token"'
    cases = [
        ({}, "Bearer"),
        ({"Authorization": good}, "Bearer"),  # no scheme: no credentials
        ({"Authorization": "Basic Zm9vOmJhcg=="}, "Bearer"),
        ({"Authorization": "Bearer " + "a" * 200}, invalid),  # over-length
        ({"Authorization": "Bearer " + "x" * 5000}, invalid),
        ({"Authorization": "Bearer nope"}, invalid),
        ({"Authorization": f"Bearer {revoked}"}, invalid),
        ({"Authorization": f"Bearer {good}x"}, invalid),
    ]
    with httpx.Client(base_url=api.url, timeout=30) as c:
        for path in ("/events", "/events/stream"):
            for headers, expected in cases:
                r = c.get(path, params={"since": 0}, headers=headers)
                assert r.status_code == 401, (path, headers)
                assert r.headers["www-authenticate"] == expected, (path, headers)
            r = c.get(
                path, params={"since": 0}, headers={"Authorization": f"Bearer {scoped}"}
            )
            assert r.status_code == 403
            assert r.headers["www-authenticate"] == 'Bearer error="insufficient_scope"'


def test_too_many_streams_overall_is_a_503(pg_dsn: str) -> None:
    a, b = token(pg_dsn, "a"), token(pg_dsn, "b")
    limits = dataclasses.replace(FAST, max_streams=1)
    with (
        LiveApi(pg_dsn, limits) as live,
        live.client(a) as ca,
        live.client(b) as cb,
        ca.stream("GET", "/events/stream") as s1,
    ):
        assert s1.status_code == 200
        r = cb.get("/events/stream")
        assert r.status_code == 503 and r.json()["error"] == "Unavailable"
        assert "too many streams" in r.json()["message"]
        assert int(r.headers["retry-after"]) >= 1


def test_health_is_cached_and_concurrent_misses_share_one_query(
    pg_dsn: str,
) -> None:
    insert(pg_dsn, [Row(7)])
    limits = dataclasses.replace(FAST, health_cache_seconds=3600)

    async def burst(url: str, n: int) -> list[dict[str, Any]]:
        async with httpx.AsyncClient(base_url=url, timeout=30) as c:
            got = await asyncio.gather(*(c.get("/health") for _ in range(n)))
        return [r.json() for r in got]

    with LiveApi(pg_dsn, limits) as live:
        st = live.state
        assert {b["last_seq"] for b in run(burst(live.url, 30))} == {7}
        assert st.health_queries == 1
        insert(pg_dsn, [Row(9)])
        assert {b["last_seq"] for b in run(burst(live.url, 30))} == {7}  # cached
        assert st.health_queries == 1
        st.health_expires = 0.0  # expire it: one query serves the next burst
        assert {b["last_seq"] for b in run(burst(live.url, 30))} == {9}
        assert st.health_queries == 2
        with live.client(token(pg_dsn, "t")) as c, c.stream("GET", "/events/stream"):
            wait_until(lambda: st.streams_total == 1, "stream open")
            body = httpx.get(f"{live.url}/health").json()
            assert body["streams"] == 1 and body["last_seq"] == 9  # live field
        assert st.health_queries == 2


_WAITERS = (
    "SELECT count(*) FROM pg_stat_activity "
    "WHERE application_name = $1 AND wait_event_type = 'Lock'"
)


async def waiting_on_lock(conn: Any, application: str, deadline: float = 30) -> None:
    """Return once a backend of ``application`` waits on a lock (the deadline
    only keeps a broken build from hanging)."""
    end = time.monotonic() + deadline
    while await conn.fetchval(_WAITERS, application) == 0:
        if time.monotonic() > end:
            raise AssertionError(f"no backend of {application} waits on a lock")
        await asyncio.sleep(0.02)


def test_a_request_that_gets_no_connection_in_time_is_a_503(pg_dsn: str) -> None:
    """With the request pool's only connection stuck (a token lookup waiting on
    a lock), the next request is answered 503 Unavailable after the acquire
    timeout instead of queueing behind it."""
    insert(pg_dsn, [Row(1)])
    tok = token(pg_dsn, "t")
    limits = dataclasses.replace(
        FAST, pool_min=1, pool_max=1, acquire_timeout_seconds=0.3
    )

    async def go(live: LiveApi) -> None:
        lock = await asyncpg.connect(pg_dsn)
        tr = lock.transaction()
        await tr.start()
        await lock.execute("LOCK TABLE ingest_tokens IN ACCESS EXCLUSIVE MODE")
        headers = {"Authorization": f"Bearer {tok}"}
        async with httpx.AsyncClient(
            base_url=live.url, headers=headers, timeout=30
        ) as c:
            stuck = asyncio.create_task(c.get("/events", params={"since": 0}))
            await waiting_on_lock(lock, "atdata-ingest-api")
            r = await c.get("/events", params={"since": 0})
            assert r.status_code == 503, r.text
            assert r.json()["error"] == "Unavailable"
            assert "no database connection free" in r.json()["message"]
            assert r.headers["retry-after"] == "1"
            await tr.rollback()
            assert (await stuck).status_code == 200
        await lock.close()

    with LiveApi(pg_dsn, limits) as live:
        run(go(live))


def test_open_streams_never_starve_requests(pg_dsn: str) -> None:
    """Streams read from their own pool: a stream stuck in its query (a lock on
    the log) holds no connection of the request pool, whose only connection
    still serves token lookups."""
    insert(pg_dsn, [Row(1), Row(2)])
    tok = token(pg_dsn, "t")
    limits = dataclasses.replace(FAST, pool_min=1, pool_max=1, stream_pool_max=1)

    async def go(live: LiveApi) -> None:
        lock = await asyncpg.connect(pg_dsn)
        tr = lock.transaction()
        await tr.start()
        await lock.execute("LOCK TABLE ingest_events IN ACCESS EXCLUSIVE MODE")
        async with (
            httpx.AsyncClient(
                base_url=live.url,
                headers={"Authorization": f"Bearer {tok}"},
                timeout=30,
            ) as c,
            c.stream("GET", "/events/stream", params={"since": 0}) as s,
        ):
            assert s.status_code == 200
            await waiting_on_lock(lock, "atdata-ingest-api-streams")
            unknown = "atdi_" + "0" * 16 + "_" + "A" * 43
            r = await c.get(
                "/events",
                params={"since": 0},
                headers={"Authorization": f"Bearer {unknown}"},
            )
            assert r.status_code == 401  # looked up on the free request pool
            await tr.rollback()
            lines = s.aiter_lines()
            got = []
            async for line in lines:
                if line.startswith("data: "):
                    got.append(orjson.loads(line[6:])["seq"])
                    if len(got) == 2:
                        break
            assert got == [1, 2]
        await lock.close()

    with LiveApi(pg_dsn, limits) as live:
        run(go(live))


# --------------------------------------------------------------------------- serve


def test_serve_ends_open_streams_and_exits_0_on_sigterm(pg_dsn: str) -> None:
    """A real `api.serve` process with a stream open: SIGTERM ends the stream
    with a clean end of body (no cancelled task, no cut connection) and the
    process exits 0."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code = (
        "import sys; from atdata_ingest.api import serve; "
        "serve(sys.argv[1], port=int(sys.argv[2]), log_level='warning')"
    )
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-c", code, pg_dsn, str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    url = f"http://127.0.0.1:{port}"
    try:

        def up() -> bool:
            assert proc.poll() is None, proc.communicate()[0]
            try:
                return httpx.get(f"{url}/health", timeout=5).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(up, "serve answers /health", deadline=60)
        assert "server" not in httpx.get(f"{url}/health").headers
        tok = token(pg_dsn, "t")
        headers = {"Authorization": f"Bearer {tok}"}
        with httpx.stream(
            "GET", f"{url}/events/stream", headers=headers, timeout=30
        ) as r:
            assert r.status_code == 200
            lines = r.iter_lines()
            assert next(lines) == "retry: 2000"
            proc.send_signal(signal.SIGTERM)
            rest = list(lines)  # raises if the body is cut instead of ended
        assert all(not x.startswith("data:") for x in rest)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, out
    assert "Traceback" not in out and "Cancel" not in out, out


# --------------------------------------------------------------------------- collation


def test_a_c_collated_column_gets_the_indexed_byte_range_under_an_icu_database(
    pg: Any,
) -> None:
    """The schema declares collection COLLATE "C": in a database whose default
    collation is ICU (where a plain range is *not* a prefix test), the API
    detects byte order from the column, writes the plain range, the planner
    uses the (collection, seq) index for it, and the answers are right."""
    name = f"icu{uuid.uuid4().hex[:12]}"
    sql(
        pg.dsn,
        f'CREATE DATABASE "{name}" TEMPLATE template0 ENCODING UTF8 '
        "LOCALE_PROVIDER icu ICU_LOCALE 'en' LOCALE 'C'",
    )
    dsn = pg.dsn_for(name)

    async def setup() -> None:
        conn = await asyncpg.connect(dsn)
        try:
            await migrate(conn)
        finally:
            await conn.close()

    run(setup())
    # the database's own collation would put App.* inside the range
    assert sql(dsn, "SELECT 'App.b' >= 'app.' AND 'App.b' < 'app/' AS x")[0]["x"]
    rows = [
        Row(1, collection="app.bsky.feed.post"),
        Row(2, collection="App.bsky.feed.post"),
        Row(3, collection="app.bskyx.feed.post"),
        Row(4, collection="app.bsky.graph.follow"),
    ]
    insert(dsn, rows)
    with LiveApi(dsn) as live, live.client(token(dsn, "t")) as c:
        assert live.state.byte_order is True
        assert walk(c, {"collection": "app.bsky.*"})[0] == [(1, 0), (4, 0)]
    where, params = Filters(collection="app.bsky.*").where(byte_order=True)
    assert 'COLLATE "C"' not in where

    async def plan() -> str:
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute("SET enable_seqscan = off")
            got = await conn.fetch(
                f"EXPLAIN SELECT seq FROM ingest_events WHERE {where}", 0, *params
            )
            return "\n".join(r[0] for r in got)
        finally:
            await conn.close()

    text = run(plan())
    assert "ingest_events_collection" in text or "collection_seq_idx" in text, text
    assert "Index Cond: ((collection >= " in text, text


# --------------------------------------------------------------------------- include=


def repo_event(seq: int, kind: str, repo: str, **body: Any) -> Row:
    """An #account/#identity/#sync row as the ingester writes it (idx 0, body in
    record, no collection)."""
    return Row(
        seq,
        event_type=kind,
        action=None,
        repo=repo,
        collection=None,
        rkey=None,
        cid=None,
        record={"did": repo, "seq": seq, **body},
    )


def test_include_adds_repository_events_to_a_collection_filter_on_page_and_stream(
    pg_dsn: str,
) -> None:
    """collection= alone selects commit operations only; with include= the
    #account/#identity/#sync rows of every repo come too (of repo= only when
    given), in seq order, the other collections still left out; a stream with
    the same filters delivers the same rows; include= is checked like any
    parameter and documented in the OpenAPI document."""
    a, b = REPOS[0], REPOS[1]
    rows = [
        Row(1, collection=DATASET, repo=a),
        Row(2, repo=a),  # app.bsky.feed.post: never
        repo_event(3, "identity", b, handle="b.test"),
        Row(4, 0, collection=DATASET, repo=b),
        Row(4, 1, repo=b),
        repo_event(5, "sync", a, rev="3krev"),
        repo_event(6, "account", b, active=False, status="deleted"),
        Row(7, repo=b),
    ]
    insert(pg_dsn, rows)
    ds = token(pg_dsn, "ds", {"collections": ["science.alt.dataset.*"]})
    accounts = token(
        pg_dsn,
        "acc",
        {
            "collections": ["science.alt.dataset.*"],
            "event_types": ["commit", "account"],
        },
    )
    with LiveApi(pg_dsn, FAST) as live, live.client(ds) as c:
        q = {"since": 0, "collection": "science.alt.dataset.*"}
        page = c.get("/events", params=q).json()
        assert [key(e) for e in page["events"]] == [(1, 0), (4, 0)]
        page = c.get("/events", params={**q, "include": "account,identity,sync"})
        assert page.status_code == 200, page.text
        got = [(e["seq"], e["event_type"]) for e in page.json()["events"]]
        assert got == [
            (1, "commit"),
            (3, "identity"),
            (4, "commit"),
            (5, "sync"),
            (6, "account"),
        ]
        assert page.json()["events"][3]["record"]["rev"] == "3krev"
        page = c.get("/events", params={**q, "include": "account", "repo": a}).json()
        assert [key(e) for e in page["events"]] == [(1, 0)]  # b's account: no
        page = c.get("/events", params={**q, "include": "account", "repo": b}).json()
        assert [key(e) for e in page["events"]] == [(4, 0), (6, 0)]
        # pages of one row walk the same selection
        seen, pages = walk(c, {**q, "include": "sync,account,identity", "limit": 1})
        assert seen == [(1, 0), (3, 0), (4, 0), (5, 0), (6, 0)] and pages == 5
        # the stream: the same rows, the id on each
        params = {**q, "include": "account,identity,sync"}
        with c.stream("GET", "/events/stream", params=params) as r:
            assert r.status_code == 200
            got = [
                (e["data"]["seq"], e["data"]["event_type"], e["id"])
                for e in take(sse_events(r.iter_lines()), 5)
            ]
        assert got == [
            (1, "commit", "1"),
            (3, "identity", "3"),
            (4, "commit", "4"),
            (5, "sync", "5"),
            (6, "account", "6"),
        ]
        for bad in ("", "commit", "info", "account,", "account;sync", "a" * 100):
            r = c.get("/events", params={**q, "include": bad})
            assert r.status_code == 422, bad
            assert r.json()["error"] == "InvalidRequest"
        # an event_types scope lists every type asked for
        with live.client(accounts) as ca:
            page = ca.get("/events", params={**q, "include": "account"}).json()
            assert [key(e) for e in page["events"]] == [(1, 0), (4, 0), (6, 0)]
            for path in ("/events", "/events/stream"):
                r = ca.get(path, params={**q, "include": "account,identity"})
                assert r.status_code == 403, path
                assert "include 'identity'" in r.json()["message"]
        doc = live.app.openapi()
        for path in ("/events", "/events/stream"):
            (param,) = [
                p
                for p in doc["paths"][path]["get"]["parameters"]
                if p["name"] == "include"
            ]
            assert "account, identity, sync" in param["description"]
            assert "collections may ask" in param["description"]


def test_include_walks_its_own_index(pg_dsn: str) -> None:
    """The include= part of a page is its own ordered scan of the
    (event_type, seq) index, next to the (collection, seq) one (no scan of the
    whole log for a rare collection)."""
    insert(pg_dsn, mixed_log(seed=2, commits=50))
    f = Filters(collection=DATASET, include=("account", "identity"))
    parts, params = f.branches(byte_order=True)
    assert len(parts) == 3

    async def plan() -> str:
        conn = await asyncpg.connect(pg_dsn)
        try:
            await conn.execute("SET enable_seqscan = off")
            await conn.execute("SET enable_bitmapscan = off")
            from atdata_ingest.api import _page_sql

            n = len(params) + 2
            got = await conn.fetch(
                "EXPLAIN " + _page_sql(parts, n), 0, *params, 101, 1000, 2**63 - 1
            )
            return "\n".join(r[0] for r in got)
        finally:
            await conn.close()

    text = run(plan())
    assert "collection_seq_idx" in text or "ingest_events_collection" in text, text
    assert "event_type_seq_idx" in text or "ingest_events_type" in text, text


# --------------------------------------------------------------------------- horizon


def test_a_page_without_more_carries_the_scanned_horizon(api: LiveApi) -> None:
    """A filtered page that says more: false has the log's committed cursor as
    its cursor (the consumer moves over seqs that matched nothing); with more:
    true the last seq included; never below since; one short of it when the
    filters can match #info rows (an #info row takes the seq of the event
    before it and may come in a later batch)."""
    insert(api.dsn, [Row(1, collection=DATASET)] + [Row(s) for s in range(2, 40)])
    with api.client(token(api.dsn, "t")) as c:

        def page(**params: Any) -> dict[str, Any]:
            r = c.get("/events", params=params)
            assert r.status_code == 200, r.text
            body: dict[str, Any] = r.json()
            return body

        p = page(since=0, collection=DATASET)
        assert ([key(e) for e in p["events"]], p["cursor"], p["more"]) == (
            [(1, 0)],
            39,
            False,
        )
        assert page(since=1, collection=DATASET) == {
            "events": [],
            "cursor": 39,
            "more": False,
            "trimmed": None,
        }
        assert page(since=39, collection=DATASET)["cursor"] == 39
        insert(api.dsn, [Row(s, collection=DATASET) for s in range(40, 46)])
        p = page(since=39, collection=DATASET, limit=2)
        assert ([e["seq"] for e in p["events"]], p["cursor"], p["more"]) == (
            [40, 41],
            41,
            True,
        )
        p = page(since=41, collection=DATASET)
        assert ([e["seq"] for e in p["events"]], p["cursor"]) == ([42, 43, 44, 45], 45)
        assert page(since=100, collection=DATASET)["cursor"] == 100  # ahead: stays
        # a page whose one commit is larger than the limit: more=false -> horizon
        insert(api.dsn, [Row(46, i, collection=DATASET) for i in range(3)] + [Row(47)])
        p = page(since=45, collection=DATASET, limit=1)
        assert (len(p["events"]), p["cursor"], p["more"]) == (3, 47, False)
        # #info rows: the cursor stops one short of the horizon
        assert page(since=0, event_type="info")["cursor"] == 46
        info = Row(
            47,
            -1,
            event_type="info",
            action=None,
            repo="",
            collection=None,
            rkey=None,
            cid=None,
            record={"name": "OutdatedCursor", "message": None},
        )
        insert(api.dsn, [info])  # a later batch, the seq of the event before it
        p = page(since=46, event_type="info")
        assert [key(e) for e in p["events"]] == [(47, -1)]
        assert page(since=0)["cursor"] == 47  # the last row is at the horizon


def test_the_horizon_never_passes_a_batch_being_committed(pg_dsn: str) -> None:
    """A batch that is stored and has moved ingest_cursor but is not committed
    yet is not in the horizon: the page's cursor stays below it, and the batch's
    matching row comes on the next page once committed. (Had the cursor been
    read after the page, by another statement, the consumer would pass seq 6
    without having seen it.)"""
    insert(pg_dsn, [Row(s) for s in range(1, 6)])
    f = Filters(collection=DATASET)

    async def go() -> None:
        writer = await asyncpg.connect(pg_dsn)
        reader = await asyncpg.connect(pg_dsn)
        try:
            tr = writer.transaction()
            await tr.start()
            await writer.copy_records_to_table(
                "ingest_events",
                records=[Row(6, collection=DATASET).values()],
                columns=list(EVENT_COLUMNS),
            )
            await writer.execute("UPDATE ingest_cursor SET last_seq = 6")
            page = await fetch_page(reader, f, 0, 100, byte_order=True)
            assert (page.rows, page.more, page.cursor, page.horizon) == (
                [],
                False,
                5,
                5,
            )
            await tr.commit()
            # what a second statement would read now: past the unseen row
            assert await reader.fetchval("SELECT last_seq FROM ingest_cursor") == 6
            page = await fetch_page(reader, f, page.cursor, 100, byte_order=True)
            assert [r[0] for r in page.rows] == [6] and page.cursor == 6
        finally:
            await writer.close()
            await reader.close()

    run(go())


def test_filtered_walks_under_concurrent_batches_see_every_row_once(
    pg_dsn: str,
) -> None:
    """Batches committed one after another (as the single ingester does, the
    cursor in the same transaction) while filtered readers follow the page
    cursors: each reader sees every matching row exactly once, in order, and
    ends at the last committed seq."""
    rnd = random.Random(11)
    batches: list[list[Row]] = []
    seq = 0
    for _ in range(120):
        batch = []
        for _ in range(rnd.randint(1, 6)):
            seq += rnd.choice((1, 1, 2))
            if rnd.random() < 0.1:
                batch.append(repo_event(seq, "account", rnd.choice(REPOS), active=True))
            else:
                batch.append(Row(seq, collection=rnd.choice(COLLECTIONS)))
        batches.append(batch)
    last = seq
    cases: list[dict[str, Any]] = [
        {"collection": DATASET},
        {"collection": "science.alt.*", "include": "account"},
        {"event_type": "account"},
        {},
    ]

    async def write() -> None:
        conn = await asyncpg.connect(pg_dsn)
        try:
            for batch in batches:
                async with conn.transaction():
                    await conn.copy_records_to_table(
                        "ingest_events",
                        records=[r.values() for r in batch],
                        columns=list(EVENT_COLUMNS),
                    )
                    await conn.execute(
                        "UPDATE ingest_cursor SET last_seq = $1", batch[-1].seq
                    )
                await asyncio.sleep(0)
        finally:
            await conn.close()

    async def follow(params: dict[str, Any], done: asyncio.Event) -> list[Any]:
        conn = await asyncpg.connect(pg_dsn)
        f = filters_of(params)
        seen: list[Any] = []
        since = 0
        try:
            while True:
                finished = done.is_set()  # before the page: all committed then
                page = await fetch_page(conn, f, since, 7, byte_order=True)
                assert page.cursor >= since
                seen += [(r[0], r[1]) for r in page.rows]
                since = page.cursor
                if finished and not page.more:
                    return [seen, since]
        finally:
            await conn.close()

    async def go() -> list[list[Any]]:
        done = asyncio.Event()
        readers = [asyncio.create_task(follow(p, done)) for p in cases]
        await write()
        done.set()
        return list(await asyncio.gather(*readers))

    results = run(go())
    rows = [r for b in batches for r in b]
    for params, (seen, cursor) in zip(cases, results, strict=True):
        assert seen == [(r.seq, r.idx) for r in rows if matches(r, params)], params
        # every case but {} ends at the last seq; {} can match #info rows, so it
        # stops one short unless its last row is the last seq (it is: every row)
        assert cursor == last, params


def test_verify_rule_is_served(api: LiveApi) -> None:
    """ingest_events.verify_rule (schema 2) is a field of every row served."""
    assert "verify_rule" in EVENT_COLUMNS
    insert(api.dsn, [Row(1, verify_rule="REV_STALE"), Row(2, verified=True)])
    with api.client(token(api.dsn, "t")) as c:
        events = c.get("/events", params={"since": 0}).json()["events"]
        assert [(e["verified"], e["verify_rule"]) for e in events] == [
            (None, "REV_STALE"),
            (True, None),
        ]
        with c.stream("GET", "/events/stream", params={"since": 0}) as r:
            got = take(sse_events(r.iter_lines()), 2)
        assert [e["data"]["verify_rule"] for e in got] == ["REV_STALE", None]


# --------------------------------------------------------------------------- SSE
# named events, the relay's state, unknown parameters, trimmed seqs, outages


def sse_all(lines: Iterator[str], deadline: float = 30.0) -> Iterator[dict[str, Any]]:
    """Every SSE message with an event name, an id or data: {"event", "id",
    "data"} (data parsed; None when absent); comments skipped. Raises
    AssertionError once ``deadline`` seconds have passed (checked at every line:
    heartbeats keep lines coming; it only bounds a broken build)."""
    data: list[str] = []
    ev_id: str | None = None
    name: str | None = None
    end = time.monotonic() + deadline
    for line in lines:
        if time.monotonic() > end:
            raise AssertionError(f"no end of the stream within {deadline}s")
        if line == "":
            if data or ev_id is not None or name is not None:
                parsed = orjson.loads("\n".join(data)) if data else None
                yield {"event": name, "id": ev_id, "data": parsed}
            data, ev_id, name = [], None, None
        elif line.startswith("data: "):
            data.append(line[6:])
        elif line.startswith("id: "):
            ev_id = line[4:]
        elif line.startswith("event: "):
            name = line[7:]


def until_closed(messages: Iterator[dict[str, Any]]) -> list[dict[str, Any]]:
    """The messages until the server closes the stream (bounded by the
    deadline of :func:`sse_all`)."""
    return list(messages)


def until_row(messages: Iterator[dict[str, Any]], seq: int) -> list[dict[str, Any]]:
    """The messages up to the row of ``seq`` (bounded by :func:`sse_all`)."""
    out: list[dict[str, Any]] = []
    for m in messages:
        out.append(m)
        if m["event"] is None and m["data"] and m["data"].get("seq") == seq:
            return out
    raise AssertionError(f"the stream ended before seq {seq}: {out[-5:]}")


async def _set_scope(dsn: str, name: str, scope: dict[str, Any]) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            "UPDATE ingest_tokens SET scope = $2::jsonb WHERE name = $1",
            name,
            orjson.dumps(scope).decode(),
        )
    finally:
        await conn.close()


def test_revoking_a_token_ends_its_open_streams(pg_dsn: str) -> None:
    """A stream re-reads its token every token_recheck_seconds: once revoked it
    ends with `event: error` {"error": "InvalidToken", "message": "token
    revoked"} as its last message, while another token's stream goes on."""
    insert(pg_dsn, [Row(1)])
    tok = token(pg_dsn, "doomed")
    other = token(pg_dsn, "other")
    limits = dataclasses.replace(FAST, token_recheck_seconds=0.2)
    with (
        LiveApi(pg_dsn, limits) as live,
        live.client(tok) as c,
        live.client(other) as o,
        c.stream("GET", "/events/stream", params={"since": 0}) as r,
        o.stream("GET", "/events/stream", params={"since": 0}) as r2,
    ):
        mine, theirs = sse_all(r.iter_lines()), sse_all(r2.iter_lines())
        until_row(mine, 1)
        until_row(theirs, 1)
        assert run(_revoke(pg_dsn, "doomed")) is True
        insert(pg_dsn, [Row(2)])
        rest = until_closed(mine)
        assert rest[-1] == {
            "event": "error",
            "id": None,
            "data": {"error": "InvalidToken", "message": "token revoked"},
        }
        assert all(m["event"] is None for m in rest[:-1])
        until_row(theirs, 2)
        insert(pg_dsn, [Row(3)])
        until_row(theirs, 3)  # the other token's stream is untouched
        wait_until(lambda: live.state.streams_total == 1, "the revoked one released")
    # a reconnect with the revoked token is refused
    with LiveApi(pg_dsn, limits) as live, live.client(tok) as c:
        assert c.get("/events/stream", params={"since": 0}).status_code == 401


def test_a_scope_change_ends_the_streams_it_no_longer_covers(pg_dsn: str) -> None:
    """A wider scope keeps the stream; a scope that no longer covers its
    filters ends it with `event: error` ScopeDenied."""
    insert(pg_dsn, [Row(1)])
    tok = token(pg_dsn, "feeds", {"collections": ["app.bsky.feed.*"]})
    limits = dataclasses.replace(FAST, token_recheck_seconds=0.2)
    with (
        LiveApi(pg_dsn, limits) as live,
        live.client(tok) as c,
        c.stream(
            "GET",
            "/events/stream",
            params={"since": 0, "collection": "app.bsky.feed.post"},
        ) as r,
    ):
        messages = sse_all(r.iter_lines())
        until_row(messages, 1)
        run(_set_scope(pg_dsn, "feeds", {"collections": ["app.bsky.*"]}))
        seen = live.state.token_rechecks
        wait_until(lambda: live.state.token_rechecks >= seen + 2, "two re-reads")
        insert(pg_dsn, [Row(2)])
        until_row(messages, 2)  # still covered: the stream goes on
        run(_set_scope(pg_dsn, "feeds", {"collections": [DATASET]}))
        rest = until_closed(messages)
        assert rest[-1]["event"] == "error"
        assert rest[-1]["data"]["error"] == "ScopeDenied"
        assert "outside the token's scope" in rest[-1]["data"]["message"]


RELAY_COLUMNS = (
    ("relay_state", "text"),
    ("relay_error", "text"),
    ("relay_state_since", "timestamptz"),
    ("last_frame_at", "timestamptz"),
)


def test_health_is_503_relay_unreachable_while_the_ingester_cannot_reach_it(
    pg_dsn: str,
) -> None:
    """The cursor row's relay columns (schema 3, read by name: absent columns
    read as null) make /health 503 relay_unreachable when the relay state is
    failing, or connecting for longer than relay_connect_seconds, and are shown
    in the body."""
    insert(pg_dsn, [Row(7)])
    limits = dataclasses.replace(FAST, health_cache_seconds=0, relay_connect_seconds=30)
    # an older schema first: none of the columns
    for column, _ in RELAY_COLUMNS:
        sql(pg_dsn, f"ALTER TABLE ingest_cursor DROP COLUMN IF EXISTS {column}")
    sql(pg_dsn, "UPDATE ingest_cursor SET ingester_pid = 4242, updated_at = now()")
    with LiveApi(pg_dsn, limits) as live, httpx.Client(base_url=live.url) as c:

        def health(code: int) -> dict[str, Any]:
            h = c.get("/health")
            assert h.status_code == code, h.text
            body: dict[str, Any] = h.json()
            return body

        body = health(200)
        assert body["status"] == "ok"
        assert [body[k] for k, _ in RELAY_COLUMNS] == [None] * 4
        for column, kind in RELAY_COLUMNS:
            sql(
                pg_dsn,
                f"ALTER TABLE ingest_cursor ADD COLUMN IF NOT EXISTS {column} {kind}",
            )

        def relay(state: str | None, age: float, error: str | None = None) -> None:
            sql(
                pg_dsn,
                "UPDATE ingest_cursor SET relay_state = $1, relay_error = $2, "
                "relay_state_since = now() - make_interval(secs => $3), "
                "last_frame_at = now() - interval '1 minute', updated_at = now()",
                state,
                error,
                age,
            )

        relay("connected", 3600)
        body = health(200)
        assert (body["status"], body["relay_state"], body["relay_error"]) == (
            "ok",
            "connected",
            None,
        )
        assert 3590 < body["relay_state_seconds"] < 3600 + 600
        assert body["relay_state_since"] is not None
        assert body["last_frame_at"] is not None
        relay("connecting", 5)
        assert health(200)["status"] == "ok"  # a reconnect takes a moment
        relay("connecting", 31, "ConnectionRefusedError: [Errno 111]")
        body = health(503)
        assert body["status"] == "relay_unreachable"
        assert body["relay_error"] == "ConnectionRefusedError: [Errno 111]"
        relay("failing", 0, "HTTP 502 from wss://relay.example")
        body = health(503)
        assert (body["status"], body["relay_state"], body["relay_error"]) == (
            "relay_unreachable",
            "failing",
            "HTTP 502 from wss://relay.example",
        )
        # no batch commits while the relay is unreachable: the row ages, and
        # the answer still says why
        sql(pg_dsn, "UPDATE ingest_cursor SET updated_at = now() - interval '5 min'")
        assert health(503)["status"] == "relay_unreachable"
        relay("connected", 1)
        sql(pg_dsn, "UPDATE ingest_cursor SET updated_at = now() - interval '5 min'")
        assert health(503)["status"] == "stale"
        relay("failing", 0, "x" * 5000)
        assert len(health(503)["relay_error"]) == 1000  # bounded
        # no ingester running: its last relay state is history, not an outage
        sql(pg_dsn, "UPDATE ingest_cursor SET ingester_pid = NULL")
        body = health(200)
        assert (body["status"], body["relay_state"]) == ("stopped", "failing")
        # a state whose start is unknown counts from the ingester's start
        sql(
            pg_dsn,
            "UPDATE ingest_cursor SET ingester_pid = 1, relay_state = 'connecting', "
            "relay_state_since = NULL, updated_at = now(), "
            "ingester_started_at = now() - interval '2 min'",
        )
        assert health(503)["status"] == "relay_unreachable"


def test_unknown_or_repeated_parameters_are_refused_with_the_closest_name(
    api: LiveApi,
) -> None:
    insert(api.dsn, [Row(1), Row(2, collection="app.bsky.feed.like")])
    tok = token(api.dsn, "t")
    with api.client(tok) as c:
        for path in ("/events", "/events/stream"):
            r = c.get(
                path, params=[("since", "0"), ("colection", "app.bsky.feed.post")]
            )
            assert r.status_code == 422, r.text
            body = r.json()
            assert body["error"] == "InvalidRequest"
            assert "unknown parameter 'colection'" in body["message"]
            assert "did you mean 'collection'?" in body["message"]
            r = c.get(path, params=[("since", "0"), ("limt", "5")])
            assert r.status_code == 422
            assert "did you mean 'limit'?" in r.json()["message"] or path.endswith(
                "stream"
            )
            r = c.get(
                path,
                params=[
                    ("since", "0"),
                    ("collection", "app.bsky.feed.post"),
                    ("collection", "app.bsky.feed.like"),
                ],
            )
            assert r.status_code == 422
            assert "'collection' given 2 times" in r.json()["message"]
        # the stream takes no limit: a limit= there is unknown, not ignored
        r = c.get("/events/stream", params={"since": 0, "limit": 5})
        assert r.status_code == 422 and "'limit'" in r.json()["message"]
        # hostile names: refused, echoed bounded and escaped, never a 5xx
        for name in ("x" * 5000, "\x00", "é\u202e", "", "since[]", "SINCE", "'; --"):
            r = c.get("/events", params=[("since", "0"), (name, "1")])
            assert r.status_code == 422, (name, r.text)
            assert r.json()["error"] == "InvalidRequest"
            assert len(r.json()["message"]) < 300
            assert "\x00" not in r.json()["message"]
        r = c.get(
            "/events", params=[("since", "0")] + [(f"p{i}", "1") for i in range(500)]
        )
        assert r.status_code == 422
        # declared parameters still work
        r = c.get("/events", params={"since": 0, "collection": "app.bsky.feed.post"})
        assert [e["seq"] for e in r.json()["events"]] == [1]
    # refused before authentication: no token needed to learn of a typo
    with httpx.Client(base_url=api.url) as anon:
        r = anon.get("/events", params={"since": 0, "colection": "x"})
        assert r.status_code == 422


def test_bad_tokens_say_invalid_token_whether_or_not_the_id_exists(
    api: LiveApi,
) -> None:
    good = token(api.dsn, "good")
    tid = good.split("_")[1]
    with httpx.Client(base_url=api.url) as c:
        answers = []
        for bad in (
            f"atdi_{tid}_wrong",  # the real id, a malformed secret
            "atdi_0123456789abcdef_wrong",  # no such id
            f"atdi_{tid}_{'A' * 43}",  # the real id, a wrong secret
            f"atdi_0123456789abcdef_{'A' * 43}",
            "nope",
            "x" * 5000,
        ):
            r = c.get(
                "/events",
                params={"since": 0},
                headers={"Authorization": f"Bearer {bad}"},
            )
            assert r.status_code == 401
            answers.append((r.text, r.headers["www-authenticate"]))
        assert set(answers) == {
            (
                '{"error":"InvalidToken","message":"invalid token"}',
                'Bearer error="invalid_token"',
            )
        }


def _trimmed_log(dsn: str) -> None:
    """Seqs 1-20 stored 10 days ago, 21-30 9 days ago, 31-50 now, each day in
    its own partition; then retention (7 days) drops the two old days."""
    from atdata_ingest.retention import trim
    from atdata_ingest.schema import ensure_partitions

    now = dt.datetime.now(UTC)
    ago10, ago9 = now - dt.timedelta(days=10), now - dt.timedelta(days=9)

    async def go() -> None:
        conn = await asyncpg.connect(dsn)
        try:
            for day in (ago10, ago9):
                await ensure_partitions(conn, today=day.date(), ahead=0)
        finally:
            await conn.close()

    run(go())
    insert(dsn, [Row(s, indexed_at=ago10) for s in range(1, 21)])
    insert(dsn, [Row(s, indexed_at=ago9) for s in range(21, 31)])
    insert(dsn, [Row(s) for s in range(31, 51)])

    async def drop() -> list[str]:
        conn = await asyncpg.connect(dsn)
        try:
            report = await trim(conn, retention_days=7)
            return [d.name for d in report.dropped]
        finally:
            await conn.close()

    assert len(run(drop())) == 2
    assert sql(dsn, "SELECT min(seq) FROM ingest_events")[0][0] == 31


def test_a_since_older_than_the_oldest_kept_seq_says_what_was_trimmed(
    api: LiveApi,
) -> None:
    _trimmed_log(api.dsn)
    with api.client(token(api.dsn, "t")) as c:

        def page(**params: Any) -> dict[str, Any]:
            r = c.get("/events", params=params)
            assert r.status_code == 200, r.text
            body: dict[str, Any] = r.json()
            return body

        p = page(since=10, limit=5)
        assert p["trimmed"] == {
            "name": "OutdatedCursor",
            "since": 10,
            "oldest_kept": 31,
            "message": "events after seq 10 and before seq 31 are no longer kept "
            "(trimmed by retention); continuing from the oldest kept",
        }
        assert [e["seq"] for e in p["events"]] == [31, 32, 33, 34, 35]  # served on
        assert page(since=p["cursor"])["trimmed"] is None  # once past the gap
        assert page(since=29)["trimmed"]["oldest_kept"] == 31  # seq 30 is gone
        assert page(since=30)["trimmed"] is None  # nothing after 30 is missing
        assert page(since=0)["trimmed"] is None  # from the oldest kept: no gap
        assert page(since=50)["trimmed"] is None  # at the horizon
        assert page(since=2**63 - 2)["trimmed"] is None  # a bigint, not int4
        # a filter that matches nothing still learns of the gap
        p = page(since=10, collection=DATASET)
        assert (p["events"], p["cursor"], p["trimmed"]["oldest_kept"]) == ([], 50, 31)
        # the stream says it first, as an `event: info`, then the rows
        with c.stream("GET", "/events/stream", params={"since": 10}) as r:
            got = until_row(sse_all(r.iter_lines()), 31)
        assert got[0]["event"] == "info"
        assert got[0]["data"] == {**page(since=10)["trimmed"]}
        assert [m["event"] for m in got[1:]] == [None]
    # everything trimmed: the oldest kept is the horizon + 1
    sql(api.dsn, "DELETE FROM ingest_events")
    with api.client(token(api.dsn, "t2")) as c:
        p = c.get("/events", params={"since": 40}).json()
        assert (p["events"], p["trimmed"]["oldest_kept"]) == ([], 51)


def test_the_oldest_seq_is_probed_only_for_a_consumer_behind_the_horizon(
    pg_dsn: str,
) -> None:
    """The min(seq) probe of every partition costs its planning: it is folded
    away before planning unless 0 < since < bound - 1 (bound: a seq known to
    be kept), and executed (an InitPlan) only when since is also below the
    horizon."""
    from atdata_ingest.api import MAX_SEQ, _page_sql

    insert(pg_dsn, [Row(s) for s in range(1, 11)])
    parts, params = Filters().branches()
    query = _page_sql(parts, len(params) + 2)

    async def plan(since: int, bound: int) -> str:
        conn = await asyncpg.connect(pg_dsn, server_settings=SETTINGS)
        try:
            rows = await conn.fetch(
                f"EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF) {query}",
                since,
                100,
                10**6,
                bound,
            )
            return "\n".join(r[0] for r in rows)
        finally:
            await conn.close()

    def probe(since: int, bound: int = MAX_SEQ) -> str:
        lines = run(plan(since, bound)).splitlines()
        at = [i for i, ln in enumerate(lines) if "InitPlan" in ln]
        if not at:
            return "folded"
        return "skipped" if "never executed" in lines[at[0] + 1] else "ran"

    assert probe(5) == "ran"  # behind the horizon, nothing known kept
    assert probe(10) == "skipped"  # at the horizon
    assert probe(0) == "folded"  # from the oldest kept
    assert probe(5, bound=6) == "folded"  # since + 1 reaches a kept seq
    assert probe(5, bound=7) == "ran"


SETTINGS = {"plan_cache_mode": "force_custom_plan", "jit": "off"}


def test_the_gap_bound_is_the_first_seq_stored_today(pg_dsn: str) -> None:
    """The poll reads the first seq of the rows stored today (retention keeps
    them until the next midnight at least), and pages behind a gap still say
    so when the bound spares the others the probe."""
    _trimmed_log(pg_dsn)
    limits = dataclasses.replace(FAST, gap_bound_seconds=0.1)
    with LiveApi(pg_dsn, limits) as live, live.client(token(pg_dsn, "t")) as c:
        notifier = live.state.notifier
        wait_until(lambda: notifier.gap_bound() == 31, "the bound read")
        for since, oldest in ((10, 31), (29, 31), (30, None), (45, None)):
            p = c.get("/events", params={"since": since}).json()
            got = p["trimmed"]["oldest_kept"] if p["trimmed"] else None
            assert got == oldest, since
    # nothing stored today: no bound (every page behind the horizon probes)
    sql(pg_dsn, "DELETE FROM ingest_events WHERE indexed_at >= now() - interval '1 h'")
    with LiveApi(pg_dsn, limits) as live:
        notifier = live.state.notifier
        wait_until(lambda: notifier._bound_read_at > 0, "the bound read")
        assert notifier.gap_bound() is None


def test_a_postgresql_outage_logs_one_warning_not_a_traceback_per_attempt(
    pg: Any, pg_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    """While PostgreSQL is down the API answers 503 and logs one WARNING per
    outage (and one INFO when it is back), never asyncpg's "Failed to restore
    the pool connection floor" traceback per reconnection attempt."""
    import logging

    insert(pg_dsn, [Row(1)])
    tok = token(pg_dsn, "t")
    limits = dataclasses.replace(
        FAST, poll_seconds=0.1, health_cache_seconds=0, acquire_timeout_seconds=1
    )
    caplog.set_level(logging.DEBUG, logger="asyncpg")
    caplog.set_level(logging.INFO)
    with LiveApi(pg_dsn, limits) as live, live.client(tok) as c:
        assert c.get("/events", params={"since": 0}).status_code == 200
        outage = live.state.outage
        caplog.clear()
        try:
            for n in (1, 2):
                pg.stop("fast")
                seen = outage.failures
                for _ in range(3):
                    r = c.get("/events", params={"since": 0})
                    assert r.status_code == 503, r.text
                    assert r.json()["error"] == "Unavailable"
                    h = c.get("/health")
                    assert (h.status_code, h.json()["status"]) == (503, "unavailable")
                # the cursor poll fails every 0.1 s; asyncpg's floor keeper
                # would have retried (and logged) by now
                wait_until(lambda s=seen: outage.failures >= s + 20, "polls failing")
                assert outage.outages == n
                pg.start()
                wait_until(lambda: outage.down_since is None, "seen back")
                r = c.get("/events", params={"since": 0})
                assert r.status_code == 200, r.text
        finally:
            if pg.postmaster_pid() is None:
                pg.start()
    records = [r for r in caplog.records if r.name.startswith(("asyncpg", "atdata"))]
    assert [r for r in records if r.name.startswith("asyncpg")] == []
    assert [r for r in records if r.exc_info] == []
    warnings = [r.getMessage() for r in records if r.levelno >= logging.WARNING]
    assert len(warnings) == 2, warnings
    assert all(w.startswith("PostgreSQL unavailable (") for w in warnings)
    back = [r.getMessage() for r in records if r.levelno == logging.INFO]
    assert len([m for m in back if m.startswith("PostgreSQL available again")]) == 2
