"""The backfill against the real local PDS + PLC (fixture ``net``) and a real
PostgreSQL (``appview_dsn``), with the real ingester and indexer for live events.

Shown: ``listRepos`` pages through every repository of the PDS, bounded, its
output validated; ``listReposByCollection`` through a relay index computed from
the same PDS (:class:`~atdata_appview.testing.relay_index.RelayIndex`: no relay
runs here); ``getRepo`` CARs verified against the DID document's key, keeping
only ``science.alt.dataset.*`` records, equal to what the PDS holds and to what
the firehose path stores; forged CARs (a flipped byte, a wrong signing key, the
CAR of another repository, oversize, compressed, redirected elsewhere, stalled)
refused with their rule and where; a :class:`Backfiller` run writes every
repository into the index, skips synced ones on the next run, redoes them with
``force``, marks failures with a short error and retries them; live events that
arrive for a repository while it is backfilled are buffered and applied after
the snapshot, in order, nothing lost; no request carries a credential.

Benchmark (backfill of 50 repositories × 20 records from the local PDS)::

    uv run --frozen python -m tests.appview.test_backfill [REPOS] [RECORDS]
"""

from __future__ import annotations

import asyncio
import gzip
import secrets
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit

import asyncpg
import httpx
import orjson
import pytest
from atdata_appview import backfill as bf
from atdata_appview.backfill import (
    Backfiller,
    BackfillError,
    ListedRepo,
    RepoSnapshot,
    fetch_repo,
    list_repos,
    repo_client,
)
from atdata_appview.indexer import Indexer
from atdata_appview.testing.relay_index import RelayIndex
from atdata_gen.testing.localnet import LocalNetwork
from atdata_runtime.atmosphere import IdentityResolver, RetryPolicy

from ..conftest import flat_schema_record
from ..test_verified_reads import Key

T = TypeVar("T")
SCHEMA = "science.alt.dataset.schema"
ENTRY = "science.alt.dataset.entry"
LENS = "science.alt.dataset.lens"
POST = "app.bsky.feed.post"
HANG_GUARD = 120.0


# -- records ---------------------------------------------------------------------------


def schema(name: str, version: str = "1.0.0", **extra: Any) -> dict[str, Any]:
    return flat_schema_record(
        name,
        version,
        {"image": {"type": "string"}, "label": {"type": "integer"}},
        **extra,
    )


def entry(did: str, name: str, **over: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "$type": ENTRY,
        "name": name,
        "schemaRef": f"at://{did}/{SCHEMA}/Cell:1.0.0",
        "storage": {
            "$type": "science.alt.dataset.storageHttp",
            "shards": [
                {
                    "url": f"https://data.example.com/{name.replace(' ', '-')}-{i}.tar",
                    "checksum": {"algorithm": "sha256", "digest": f"{i:064x}"},
                }
                for i in range(2)
            ],
        },
        "description": f"the {name} dataset",
        "tags": ["microscopy"],
        "license": "CC-BY-4.0",
        "createdAt": "2026-03-01T12:00:00.000Z",
    }
    out.update(over)
    return out


def post(text: str) -> dict[str, Any]:
    return {"$type": POST, "text": text, "createdAt": "2026-01-01T00:00:00.000Z"}


# -- the local PDS, as an account ---------------------------------------------------------


class Pds:
    """XRPC writes to the local PDS as one account (async, so that an ingester in
    the same event loop keeps running)."""

    def __init__(self, url: str, did: str, token: str, handle: str = "") -> None:
        self.url = url
        self.did = did
        self.handle = handle
        self.http = httpx.AsyncClient(
            base_url=url, timeout=30, headers={"Authorization": f"Bearer {token}"}
        )

    @classmethod
    async def new(cls, net: LocalNetwork, prefix: str = "bf") -> Pds:
        name = f"{prefix[:4]}{secrets.token_hex(6)}"  # handles: 18 characters at most
        account = await asyncio.to_thread(net.create_account, name)
        async with httpx.AsyncClient(base_url=net.pds_url, timeout=30) as http:
            got = await http.post(
                "/xrpc/com.atproto.server.createSession",
                json={"identifier": account.handle, "password": account.password},
            )
        assert got.status_code == 200, got.text
        return cls(net.pds_url, account.did, got.json()["accessJwt"], account.handle)

    async def _call(self, nsid: str, body: dict[str, Any]) -> dict[str, Any]:
        resp = await self.http.post(f"/xrpc/{nsid}", json=body)
        assert resp.status_code == 200, resp.text
        return resp.json()  # type: ignore[no-any-return]

    async def put(self, collection: str, rkey: str, record: dict[str, Any]) -> str:
        """putRecord; returns the commit's rev."""
        out = await self._call(
            "com.atproto.repo.putRecord",
            {
                "repo": self.did,
                "collection": collection,
                "rkey": rkey,
                "record": record,
            },
        )
        return str(out["commit"]["rev"])

    async def delete(self, collection: str, rkey: str) -> str:
        out = await self._call(
            "com.atproto.repo.deleteRecord",
            {"repo": self.did, "collection": collection, "rkey": rkey},
        )
        return str(out["commit"]["rev"])

    async def write_many(self, writes: list[tuple[str, str, dict[str, Any]]]) -> None:
        """applyWrites creates, 200 a commit."""
        for i in range(0, len(writes), 200):
            await self._call(
                "com.atproto.repo.applyWrites",
                {
                    "repo": self.did,
                    "writes": [
                        {
                            "$type": "com.atproto.repo.applyWrites#create",
                            "collection": c,
                            "rkey": r,
                            "value": v,
                        }
                        for c, r, v in writes[i : i + 200]
                    ],
                },
            )

    async def records(self, collection: str) -> dict[str, tuple[str, dict[str, Any]]]:
        """rkey → (cid, value) of the collection, as the PDS lists it."""
        out: dict[str, tuple[str, dict[str, Any]]] = {}
        cursor = None
        while True:
            params = {"repo": self.did, "collection": collection, "limit": "100"}
            if cursor:
                params["cursor"] = cursor
            got = (
                await self.http.get("/xrpc/com.atproto.repo.listRecords", params=params)
            ).json()
            for r in got["records"]:
                out[r["uri"].rsplit("/", 1)[1]] = (r["cid"], r["value"])
            cursor = got.get("cursor")
            if not cursor or not got["records"]:
                return out

    async def close(self) -> None:
        await self.http.aclose()


def run(dsn: str, body: Callable[[asyncpg.Pool], Awaitable[T]]) -> T:
    async def go() -> T:
        pool = await asyncpg.create_pool(dsn, min_size=1, max_size=8)
        try:
            return await asyncio.wait_for(body(pool), HANG_GUARD)
        finally:
            await pool.close()

    return asyncio.run(go())


def resolver_for(plc_url: str) -> IdentityResolver:
    return IdentityResolver(plc_url=plc_url, retry=RetryPolicy(attempts=1), timeout=10)


async def indexed(pool: asyncpg.Pool, table: str, did: str) -> dict[str, Any]:
    """rkey → row of the AppView table for ``did``."""
    rows = await pool.fetch(
        f"SELECT rkey, cid, rev, seq, record FROM {table} WHERE did = $1", did
    )
    return {r["rkey"]: dict(r, record=orjson.loads(r["record"])) for r in rows}


async def repo_row(pool: asyncpg.Pool, did: str) -> dict[str, Any]:
    row = await pool.fetchrow("SELECT * FROM appview_repos WHERE did = $1", did)
    assert row is not None, did
    return dict(row)


# -- a hostile PLC + PDS in front of the real ones ----------------------------------------


class Hostile:
    """One loopback server that is both a PLC directory and a PDS: DID documents
    come from the real PLC with their PDS endpoint pointed here (then
    ``doc_hook``); ``getRepo`` CARs come from the real PDS (then ``car_hook``;
    ``mode`` may stall, gzip, drop Content-Length, redirect elsewhere); the
    listing methods answer ``listing(query)``. Every request's headers are kept."""

    def __init__(self, net: LocalNetwork) -> None:
        self.net = net
        self.doc_hook: Callable[[dict[str, Any]], dict[str, Any]] = lambda d: d
        self.car_hook: Callable[[str, bytes], bytes] = lambda did, car: car
        self.mode = ""
        self.listing: Callable[[dict[str, str]], tuple[int, Any]] | None = None
        self.requests: list[dict[str, str]] = []
        hostile = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                hostile.requests.append(dict(self.headers.items()))
                url = urlsplit(self.path)
                query = {k: v[0] for k, v in parse_qs(url.query).items()}
                if url.path.startswith("/did:"):
                    doc = httpx.get(f"{hostile.net.plc_url}{url.path}").json()
                    for service in doc.get("service", []):
                        service["serviceEndpoint"] = hostile.url
                    self.send(200, orjson.dumps(hostile.doc_hook(doc)))
                elif url.path == "/xrpc/com.atproto.sync.getRepo":
                    hostile.get_repo(self, query["did"])
                elif hostile.listing is not None:
                    status, body = hostile.listing(query)
                    self.send(
                        status, body if isinstance(body, bytes) else orjson.dumps(body)
                    )
                else:
                    self.send(404, b'{"error": "MethodNotImplemented"}')

            def send(
                self,
                status: int,
                body: bytes,
                kind: str = "application/json",
                headers: dict[str, str] | None = None,
                length: bool = True,
            ) -> None:
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", kind)
                    for k, v in (headers or {}).items():
                        self.send_header(k, v)
                    if length:
                        self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def get_repo(self, handler: Any, did: str) -> None:
        real = httpx.get(
            f"{self.net.pds_url}/xrpc/com.atproto.sync.getRepo",
            params={"did": did},
            headers={"Accept-Encoding": "identity"},
        )
        if real.status_code != 200:
            handler.send(real.status_code, real.content)
            return
        car = self.car_hook(did, real.content)
        if self.mode == "stall":
            time.sleep(3)
        if self.mode == "gzip":
            handler.send(
                200,
                gzip.compress(car),
                "application/vnd.ipld.car",
                {"Content-Encoding": "gzip"},
            )
        elif self.mode == "chunked":
            # HTTP/1.0 without Content-Length: the body ends when the socket closes
            handler.close_connection = True
            handler.send(200, car, "application/vnd.ipld.car", length=False)
        elif self.mode == "redirect":
            handler.send(
                302,
                b"",
                headers={
                    "Location": f"{self.net.pds_url}/xrpc/com.atproto.sync.getRepo?did={did}"
                },
            )
        elif self.mode == "not-found":
            handler.send(
                400, b'{"error": "RepoNotFound", "message": "secret body text"}'
            )
        else:
            handler.send(200, car, "application/vnd.ipld.car")

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hostile(net: LocalNetwork) -> Iterator[Hostile]:
    server = Hostile(net)
    try:
        yield server
    finally:
        server.close()


def no_credentials(headers: list[dict[str, str]]) -> None:
    assert headers, "no request was seen"
    for h in headers:
        names = {k.lower() for k in h}
        assert not names & {"authorization", "cookie", "proxy-authorization"}, h


# -- listing ------------------------------------------------------------------------------


def test_list_repos_pages_through_every_repository_of_the_pds(
    net: LocalNetwork,
) -> None:
    async def go() -> tuple[list[ListedRepo], list[str]]:
        made = [await Pds.new(net) for _ in range(3)]
        for p in made:
            await p.close()
        listed = [r async for r in list_repos(net.pds_url, kind="pds", page_size=1)]
        return listed, [p.did for p in made]

    listed, dids = asyncio.run(go())
    by_did = {r.did: r for r in listed}
    assert len(by_did) == len(listed)  # each DID once
    for did in dids:
        repo = by_did[did]
        assert repo.active is True and repo.rev and repo.head
    # the PDS's own listing (one big page) agrees
    page = httpx.get(
        f"{net.pds_url}/xrpc/com.atproto.sync.listRepos", params={"limit": "1000"}
    ).json()
    assert {r["did"] for r in page["repos"]} <= set(by_did)


def test_list_repos_is_bounded(net: LocalNetwork) -> None:
    async def go() -> dict[str, BackfillError]:
        for _ in range(2):
            await (await Pds.new(net)).close()
        out = {}
        bounds: dict[str, dict[str, Any]] = {
            "pages": {"page_size": 1, "max_pages": 1},
            "repos": {"max_repos": 1},
            "bytes": {"max_page_bytes": 64},
        }
        for name, kw in bounds.items():
            with pytest.raises(BackfillError) as info:
                async for _ in list_repos(net.pds_url, kind="pds", **kw):
                    pass
            out[name] = info.value
        return out

    errors = asyncio.run(go())
    for name, exc in errors.items():
        assert exc.rule == "BF_LIST_LIMIT", (name, exc)
    assert "more than 1 pages" in errors["pages"].reason
    assert "more than 1 repositories" in errors["repos"].reason
    assert "64 bytes" in errors["bytes"].reason


def test_hostile_listings_are_refused_with_their_rule(hostile: Hostile) -> None:
    pages: dict[str, tuple[int, Any]] = {
        "bad did": (200, {"repos": [{"did": "nope", "head": "x", "rev": "y"}]}),
        "no repos": (200, {"cursor": "a"}),
        "not json": (200, b"<html>"),
        "server error": (500, {"error": "InternalServerError", "message": "body"}),
        "stuck cursor": (
            200,
            {"cursor": "same", "repos": [{"did": "did:plc:aaaaaaaaaaaaaaaaaaaaaaaa"}]},
        ),
    }
    seen: dict[str, BackfillError] = {}

    async def go() -> None:
        for name, page in pages.items():
            hostile.listing = lambda q, page=page: page
            with pytest.raises(BackfillError) as info:
                async for _ in list_repos(
                    hostile.url,
                    kind="relay",
                    cursor="same" if name == "stuck cursor" else None,
                ):
                    pass
            seen[name] = info.value

    asyncio.run(go())
    assert seen["bad did"].rule == "BF_LIST_INVALID"
    assert "/repos/0/did" in seen["bad did"].reason
    assert (
        seen["no repos"].rule == "BF_LIST_INVALID"
        and "/repos" in seen["no repos"].reason
    )
    assert seen["not json"].rule == "BF_LIST_INVALID"
    assert seen["server error"].rule == "BF_LIST_FAILED"
    assert "HTTP 500 InternalServerError" in seen["server error"].reason
    assert "body" not in str(seen["server error"])
    assert seen["stuck cursor"].rule == "BF_LIST_LIMIT"
    no_credentials(hostile.requests)


def test_the_relay_path_lists_the_publishers_of_a_collection(net: LocalNetwork) -> None:
    async def go(relay: RelayIndex) -> tuple[list[str], list[Pds]]:
        made = [await Pds.new(net) for _ in range(4)]
        first, second, entries_only, nothing = made
        await first.put(SCHEMA, "Cell:1.0.0", schema("Cell"))
        await second.put(SCHEMA, "Other:1.0.0", schema("Other"))
        await entries_only.put(ENTRY, "3kaaaaaaaaaa2", entry(entries_only.did, "e"))
        await nothing.put(POST, "3kaaaaaaaaaa2", post("hello"))
        for p in made:
            await p.close()
        listed = [
            r.did
            async for r in list_repos(
                relay.url, kind="relay", collection=SCHEMA, page_size=1
            )
        ]
        return listed, made

    with RelayIndex(net.pds_url) as relay:
        listed, (first, second, entries_only, nothing) = asyncio.run(go(relay))
        requests = [r["headers"] for r in relay.requests]
        paths = [r["path"] for r in relay.requests]
    assert first.did in listed and second.did in listed
    assert entries_only.did not in listed and nothing.did not in listed
    assert listed == sorted(listed) and len(set(listed)) == len(listed)
    assert len(paths) == len(listed) >= 2  # one DID a page, followed by cursor
    assert all("collection=science.alt.dataset.schema" in p for p in paths)
    assert all("cursor=" in p for p in paths[1:])
    no_credentials(requests)


# -- one repository -------------------------------------------------------------------------


@pytest.fixture
def publisher(net: LocalNetwork) -> dict[str, Any]:
    """An account with two schemas, two entries, a lens-less post and a record of
    another collection; returns its DID and what the PDS lists."""

    async def go() -> dict[str, Any]:
        p = await Pds.new(net)
        try:
            await p.put(SCHEMA, "Cell:1.0.0", schema("Cell"))
            await p.put(SCHEMA, "Cell:1.1.0", schema("Cell", "1.1.0"))
            await p.put(
                ENTRY, "3kaaaaaaaaaa2", entry(p.did, "cells", description="MARKER-ONE")
            )
            await p.put(ENTRY, "3kaaaaaaaaab2", entry(p.did, "more cells"))
            await p.put(POST, "3kaaaaaaaaaa2", post("not a dataset"))
            await p.put(
                "com.example.other", "self", {"$type": "com.example.other", "x": 1}
            )
            listed = {c: await p.records(c) for c in (SCHEMA, ENTRY, POST)}
        finally:
            await p.close()
        return {"did": p.did, "listed": listed}

    return asyncio.run(go())


def test_fetch_repo_reads_only_the_dataset_records_verified(
    net: LocalNetwork, publisher: dict[str, Any]
) -> None:
    did = publisher["did"]

    async def go() -> tuple[RepoSnapshot, list[ListedRepo]]:
        async with repo_client() as http:
            snap = await fetch_repo(
                did, resolver=resolver_for(net.plc_url), client=http
            )
        listed = [r async for r in list_repos(net.pds_url, kind="pds")]
        return snap, listed

    snap, listed = asyncio.run(go())
    expected = sorted(
        (c, rkey, cid, value)
        for c in (SCHEMA, ENTRY)
        for rkey, (cid, value) in publisher["listed"][c].items()
    )
    assert sorted(snap.records) == expected and len(expected) == 4
    assert [r[:2] for r in snap.records] == sorted(r[:2] for r in expected)  # key order
    head = next(r for r in listed if r.did == did)
    assert (snap.rev, snap.commit_cid) == (head.rev, head.head)
    assert snap.pds == net.pds_url and snap.car_bytes > 0 and snap.blocks > 4


def test_forged_cars_are_refused_with_the_rule_and_where(
    net: LocalNetwork, publisher: dict[str, Any], hostile: Hostile
) -> None:
    did = publisher["did"]
    other = asyncio.run(Pds.new(net))
    asyncio.run(other.close())
    marker_cid = publisher["listed"][ENTRY]["3kaaaaaaaaaa2"][0]

    def flip(_did: str, car: bytes) -> bytes:
        data = bytearray(car)
        data[data.index(b"MARKER-ONE")] ^= 0x01
        return bytes(data)

    def other_key(doc: dict[str, Any]) -> dict[str, Any]:
        doc["verificationMethod"] = [
            {
                "id": f"{did}#atproto",
                "type": "Multikey",
                "controller": did,
                "publicKeyMultibase": Key(seed=77).multikey,
            }
        ]
        return doc

    def another_repo(_did: str, _car: bytes) -> bytes:
        return httpx.get(
            f"{net.pds_url}/xrpc/com.atproto.sync.getRepo",
            params={"did": other.did},
            headers={"Accept-Encoding": "identity"},
        ).content

    cases: dict[str, dict[str, Any]] = {
        "flipped byte": {"car": flip},
        "wrong key": {"doc": other_key},
        "no key": {"doc": lambda d: {**d, "verificationMethod": []}},
        "another repo": {"car": another_repo},
        "oversize": {"opts": {"max_car_bytes": 200}},
        "oversize, no length": {"mode": "chunked", "opts": {"max_car_bytes": 200}},
        "gzip": {"mode": "gzip"},
        "redirect elsewhere": {"mode": "redirect"},
        "not found": {"mode": "not-found"},
        "stalled": {"mode": "stall", "opts": {"timeout": 0.5}},
        "too many records": {"opts": {"max_records": 3}},
        "honest": {},
    }
    seen: dict[str, BackfillError | RepoSnapshot] = {}

    async def go() -> None:
        async with repo_client() as http:
            for name, case in cases.items():
                hostile.car_hook = case.get("car", lambda d, c: c)
                hostile.doc_hook = case.get("doc", lambda d: d)
                hostile.mode = case.get("mode", "")
                try:
                    seen[name] = await fetch_repo(
                        did,
                        resolver=resolver_for(hostile.url),
                        client=http,
                        **case.get("opts", {}),
                    )
                except BackfillError as exc:
                    seen[name] = exc

    asyncio.run(go())
    rules = {
        n: e.rule if isinstance(e, BackfillError) else "ok" for n, e in seen.items()
    }
    assert rules == {
        "flipped byte": "BF_BLOCK_CID",
        "wrong key": "BF_BAD_SIGNATURE",
        "no key": "BF_SIGNING_KEY",
        "another repo": "BF_DID_MISMATCH",
        "oversize": "BF_CAR_TOO_BIG",
        "oversize, no length": "BF_CAR_TOO_BIG",
        "gzip": "BF_FETCH_FAILED",
        "redirect elsewhere": "BF_FETCH_FAILED",
        "not found": "BF_REPO_UNAVAILABLE",
        "stalled": "BF_FETCH_FAILED",
        "too many records": "BF_REPO_LIMIT",
        "honest": "ok",
    }
    flipped = seen["flipped byte"]
    assert isinstance(flipped, BackfillError)
    assert (flipped.did, flipped.key, flipped.cid) == (
        did,
        f"{ENTRY}/3kaaaaaaaaaa2",
        marker_cid,
    )
    assert did in str(flipped) and marker_cid in str(flipped)
    wrong = seen["wrong key"]
    assert isinstance(wrong, BackfillError) and wrong.cause_rule == "REPO_BAD_SIGNATURE"
    assert "Content-Length" in seen["oversize"].reason  # type: ignore[union-attr]
    assert "received" in seen["oversize, no length"].reason  # type: ignore[union-attr]
    assert seen["redirect elsewhere"].cause_rule == "REDIRECT_CROSS_ORIGIN"  # type: ignore[union-attr]
    assert seen["stalled"].cause_rule == "DEADLINE_EXCEEDED"  # type: ignore[union-attr]
    assert "RepoNotFound" in str(seen["not found"])
    assert "secret body" not in str(seen["not found"])
    honest = seen["honest"]
    assert isinstance(honest, RepoSnapshot) and len(honest.records) == 4
    assert honest.pds == hostile.url
    no_credentials(hostile.requests)


def test_a_rotated_key_is_picked_up_by_resolving_again(
    net: LocalNetwork, publisher: dict[str, Any], hostile: Hostile
) -> None:
    """The resolver's cached document has an old key: the signature check fails,
    the DID is resolved again (cache bypassed), and the new key verifies."""
    did = publisher["did"]
    resolver = resolver_for(hostile.url)
    hostile.doc_hook = lambda doc: {
        **doc,
        "verificationMethod": [
            {
                "id": "#atproto",
                "type": "Multikey",
                "controller": did,
                "publicKeyMultibase": Key(seed=78).multikey,
            }
        ],
    }
    resolver.did_document(did)  # cached with the stale key
    hostile.doc_hook = lambda doc: doc

    async def go() -> RepoSnapshot:
        async with repo_client() as http:
            return await fetch_repo(did, resolver=resolver, client=http)

    assert len(asyncio.run(go()).records) == 4
    assert resolver.lookups == 2


def test_a_did_document_naming_a_private_pds_is_refused(
    publisher: dict[str, Any], hostile: Hostile
) -> None:
    did = publisher["did"]

    def private(doc: dict[str, Any]) -> dict[str, Any]:
        for service in doc["service"]:
            service["serviceEndpoint"] = "https://10.1.2.3"
        return doc

    hostile.doc_hook = private

    async def go() -> BackfillError:
        async with repo_client() as http:
            with pytest.raises(BackfillError) as info:
                await fetch_repo(did, resolver=resolver_for(hostile.url), client=http)
            return info.value

    exc = asyncio.run(go())
    assert exc.rule == "BF_IDENTITY" and exc.cause_rule == "PDS_ENDPOINT_REFUSED"


class _Stream:
    def __init__(self, addr: Any) -> None:
        self.addr = addr
        self.closed = False

    def get_extra_info(self, name: str) -> Any:
        return self.addr if name == "server_addr" else None

    async def aclose(self) -> None:
        self.closed = True


@pytest.mark.parametrize(
    ("addr", "loopback_mode", "rule"),
    [
        (("127.0.0.1", 443), "", "URL_REFUSED"),
        (("::1", 443, 0, 0), "", "URL_REFUSED"),
        (("10.0.0.7", 443), "1", "URL_REFUSED"),
        (("169.254.169.254", 80), "1", "URL_REFUSED"),
        (("::ffff:192.168.1.1", 443, 0, 0), "1", "URL_REFUSED"),
        (None, "1", "PEER_UNVERIFIED"),
        (("93.184.216.34", 443), "", None),
        (("127.0.0.1", 443), "1", None),
    ],
)
def test_each_new_connection_of_a_repo_download_has_its_peer_checked(
    monkeypatch: pytest.MonkeyPatch, addr: Any, loopback_mode: str, rule: str | None
) -> None:
    """A PDS name from a DID document that resolves to a loopback, private or
    link-local address is refused when connected, before anything is sent (the
    fetches above pass the same check with real connections)."""
    from atdata_runtime.net.errors import UnsafeUrlError

    monkeypatch.setenv("ATDATA_RUNTIME_INSECURE_LOOPBACK", loopback_mode)
    trace = bf._peer_check("https://pds.example.com/xrpc/com.atproto.sync.getRepo")
    stream = _Stream(addr)

    async def go() -> None:
        await trace("connection.connect_tcp.started", {})
        await trace("connection.connect_tcp.complete", {"return_value": stream})

    if rule is None:
        asyncio.run(go())
        assert not stream.closed
    else:
        with pytest.raises(UnsafeUrlError) as info:
            asyncio.run(go())
        assert info.value.rule == rule and stream.closed
        assert "nothing was sent" in str(info.value)


# -- the Backfiller -------------------------------------------------------------------------


def test_a_backfill_indexes_every_repository_and_resumes(
    net: LocalNetwork, appview_dsn: str
) -> None:
    async def go(pool: asyncpg.Pool) -> dict[str, Any]:
        pubs = [await Pds.new(net) for _ in range(3)]
        for i, p in enumerate(pubs):
            await p.put(SCHEMA, f"Cell:1.{i}.0", schema("Cell", f"1.{i}.0"))
            for j in range(i + 1):
                await p.put(ENTRY, f"3kaaaaaaaaa{j}2", entry(p.did, f"cells {i} {j}"))
            await p.put(POST, "3kaaaaaaaaaa2", post("not indexed"))
        listed = {c: [await p.records(c) for p in pubs] for c in (SCHEMA, ENTRY)}
        for p in pubs:
            await p.close()
        dids = [p.did for p in pubs]
        handles = {p.did: p.handle for p in pubs}
        first = await Backfiller(
            pool, source=net.pds_url, kind="pds", plc_url=net.plc_url
        ).run()
        async with pool.acquire() as conn:
            accounts = {
                r["did"]: (r["handle"], r["verified_handle"])
                for r in await conn.fetch(
                    "SELECT did, handle, verified_handle FROM appview_accounts "
                    "WHERE did = ANY($1::text[])",
                    dids,
                )
            }
        tables = {
            did: (
                await indexed(pool, "appview_schemas", did),
                await indexed(pool, "appview_entries", did),
                await repo_row(pool, did),
            )
            for did in dids
        }
        second = await Backfiller(
            pool, source=net.pds_url, kind="pds", plc_url=net.plc_url
        ).run(dids=dids)
        forced = await Backfiller(
            pool, source=net.pds_url, kind="pds", plc_url=net.plc_url, force=True
        ).run(dids=dids)
        after = {did: await repo_row(pool, did) for did in dids}
        return {
            "dids": dids,
            "listed": listed,
            "first": first,
            "tables": tables,
            "second": second,
            "forced": forced,
            "after": after,
            "handles": handles,
            "accounts": accounts,
        }

    got = run(appview_dsn, go)
    first = got["first"]
    # each DID document's handle claim (alsoKnownAs) is recorded, unverified: the
    # handle verifier (atdata_appview.handles) checks it both ways
    assert got["accounts"] == {
        did: (handle.lower(), None) for did, handle in got["handles"].items()
    }
    assert first.listed >= 3 and first.synced >= 3
    assert first.records >= 3 + 6 and first.records_per_second > 0
    for i, did in enumerate(got["dids"]):
        schemas, entries, repo = got["tables"][did]
        want_schemas = got["listed"][SCHEMA][i]
        want_entries = got["listed"][ENTRY][i]
        assert {k: (r["cid"], r["record"]) for k, r in schemas.items()} == want_schemas
        assert {k: (r["cid"], r["record"]) for k, r in entries.items()} == want_entries
        assert all(r["seq"] is None for r in (*schemas.values(), *entries.values()))
        assert repo["state"] == "synced" and repo["records"] == 2 + i
        assert repo["attempts"] == 1 and repo["error"] is None
        assert repo["source"] == net.pds_url
    second, forced = got["second"], got["forced"]
    assert (second.synced, second.skipped) == (0, 3)
    assert (forced.synced, forced.skipped, forced.records) == (3, 0, 9)
    # attempts count the reads since the repository was last synced
    assert all(got["after"][d]["attempts"] == 1 for d in got["dids"])


def test_failures_are_marked_redacted_and_retried(
    net: LocalNetwork, appview_dsn: str, hostile: Hostile
) -> None:
    async def go(pool: asyncpg.Pool) -> dict[str, Any]:
        p = await Pds.new(net)
        await p.put(SCHEMA, "Cell:1.0.0", schema("Cell"))
        await p.close()

        def flip(_did: str, car: bytes) -> bytes:
            data = bytearray(car)
            data[data.index(b"draft-07")] ^= 0x01
            return bytes(data)

        hostile.car_hook = flip
        resolver = resolver_for(hostile.url)
        out: dict[str, Any] = {"did": p.did}
        for n in range(2):
            stats = await Backfiller(
                pool,
                source=hostile.url + "/?token=hunter2",
                kind="pds",
                resolver=resolver,
                max_attempts=2,
            ).run(dids=[p.did])
            out[f"failed{n}"] = (stats, await repo_row(pool, p.did))
        out["skipped"] = await Backfiller(
            pool, source=hostile.url, kind="pds", resolver=resolver, max_attempts=2
        ).run(dids=[p.did])
        hostile.car_hook = lambda d, c: c
        out["healed"] = await Backfiller(
            pool, source=hostile.url, kind="pds", resolver=resolver, force=True
        ).run(dids=[p.did])
        out["row"] = await repo_row(pool, p.did)
        out["schemas"] = await indexed(pool, "appview_schemas", p.did)
        return out

    got = run(appview_dsn, go)
    stats0, row0 = got["failed0"]
    assert (stats0.failed, stats0.synced) == (1, 0)
    # each failure carries its short reason (redacted, bounded)
    ((did0, rule0, reason0),) = stats0.failures
    assert (did0, rule0) == (got["did"], "BF_BLOCK_CID")
    assert reason0 and len(reason0) <= 200 and "hunter2" not in reason0
    assert row0["state"] == "failed" and row0["attempts"] == 1
    assert row0["error"].startswith("BF_BLOCK_CID: ") and len(row0["error"]) <= 300
    assert "hunter2" not in row0["source"] and "hunter2" not in row0["error"]
    _, row1 = got["failed1"]
    assert row1["state"] == "failed" and row1["attempts"] == 2
    assert got["skipped"].skipped == 1 and got["skipped"].failed == 0  # max_attempts
    assert got["healed"].synced == 1
    assert got["row"]["state"] == "synced" and got["row"]["error"] is None
    assert list(got["schemas"]) == ["Cell:1.0.0"]


def test_only_one_backfill_runs_per_database(
    net: LocalNetwork, appview_dsn: str
) -> None:
    async def go(pool: asyncpg.Pool) -> BackfillError:
        async with pool.acquire() as conn:
            await conn.execute("SELECT pg_advisory_lock($1)", bf.BACKFILL_LOCK)
            try:
                with pytest.raises(BackfillError) as info:
                    await Backfiller(pool, source=net.pds_url, kind="pds").run(dids=[])
            finally:
                await conn.execute("SELECT pg_advisory_unlock($1)", bf.BACKFILL_LOCK)
        return info.value

    assert run(appview_dsn, go).rule == "BF_BUSY"


def test_a_relay_backfill_reads_the_repositories_it_names(
    net: LocalNetwork, appview_dsn: str
) -> None:
    """Every record collection is asked about (one listing each, DIDs once): a
    publisher of only entries (of someone else's schema) or only lenses is read
    too, one with both a schema and entries once."""

    async def go(pool: asyncpg.Pool, relay: RelayIndex) -> tuple[Any, ...]:
        with_schema, without = await Pds.new(net), await Pds.new(net)
        entries_only, lens_only = await Pds.new(net), await Pds.new(net)
        await with_schema.put(SCHEMA, "Relayed:1.0.0", schema("Relayed"))
        await with_schema.put(ENTRY, "3kaaaaaaaaaa2", entry(with_schema.did, "own"))
        await without.put(POST, "3kaaaaaaaaaa2", post("no datasets"))
        await entries_only.put(
            ENTRY,
            "3kaaaaaaaaaa2",
            entry(
                entries_only.did,
                "borrowed",
                schemaRef=f"at://{with_schema.did}/{SCHEMA}/Relayed:1.0.0",
            ),
        )
        ref = f"at://{with_schema.did}/{SCHEMA}/Relayed:1.0.0"
        code = {"repository": "https://example.com/l", "commit": "0" * 40}
        await lens_only.put(
            LENS,
            "3kaaaaaaaaaa2",
            {
                "$type": LENS,
                "name": "relayed lens",
                "sourceSchema": ref,
                "targetSchema": ref,
                "getterCode": {**code, "path": "m:get", "language": "python"},
                "putterCode": {**code, "path": "m:put"},
                "createdAt": "2026-03-01T12:00:00Z",
            },
        )
        for p in (with_schema, without, entries_only, lens_only):
            await p.close()
        stats = await Backfiller(
            pool, source=relay.url, kind="relay", plc_url=net.plc_url
        ).run()
        rows = await pool.fetch("SELECT did, state, records FROM appview_repos")
        return (
            stats,
            (with_schema.did, entries_only.did, lens_only.did),
            without.did,
            {r["did"]: (r["state"], r["records"]) for r in rows},
        )

    with RelayIndex(net.pds_url) as relay:
        stats, yes, no, states = run(appview_dsn, lambda pool: go(pool, relay))
        headers = [r["headers"] for r in relay.requests]
        paths = [r["path"] for r in relay.requests]
    assert [states[d] for d in yes] == [("synced", 2), ("synced", 1), ("synced", 1)]
    assert no not in states
    assert stats.failed == 0 and stats.synced == len(states) == stats.listed
    for collection in bf.RELAY_COLLECTIONS:
        assert any(f"collection={collection}" in p for p in paths), collection
    no_credentials(headers)


# -- live events during a backfill ----------------------------------------------------------


def test_live_events_during_a_backfill_are_buffered_then_applied_in_order(
    net: LocalNetwork, appview_dsn: str
) -> None:
    """The real ingester follows the PDS's firehose into ``ingest_events``; the
    real indexer folds it. While the repository is backfilling, its events (some
    older than the snapshot, some newer) are buffered, not applied; after the
    snapshot the newer ones are applied in log order (an entry updated twice ends
    at its last value; one deleted and created again exists), the older ones
    skipped; afterwards events are applied live again."""
    from atdata_ingest.config import Settings
    from atdata_ingest.ingester import Ingester

    settings = Settings(
        database_url=appview_dsn,
        relay_url=net.pds_url,
        verify="dataset",
        plc_url=net.plc_url,
        log_interval_seconds=1.0,
        reconnect_min_seconds=0.05,
        reconnect_max_seconds=0.5,
    )

    async def go(pool: asyncpg.Pool) -> dict[str, Any]:
        ingester = Ingester(settings)
        task = asyncio.create_task(ingester.run())
        while ingester.stats.connects == 0:
            assert not task.done()
            await asyncio.sleep(0.02)
        indexer = Indexer(pool, history=None, require_verified=True, listen=False)
        seen: dict[str, Any] = {}
        p = await Pds.new(net)
        did = p.did

        async def logged(rev: str) -> None:
            """Wait until the ingester stored the commit ``rev`` of ``did``."""
            deadline = time.monotonic() + 60
            while not await pool.fetchval(
                "SELECT count(*) FROM ingest_events e, ingest_cursor c "
                "WHERE e.repo = $1 AND e.rev = $2 AND e.seq <= c.last_seq",
                did,
                rev,
            ):
                assert time.monotonic() < deadline and not task.done()
                await asyncio.sleep(0.05)

        async def tables() -> dict[str, Any]:
            return {
                rkey: r["record"]["name"]
                for rkey, r in (await indexed(pool, "appview_entries", did)).items()
            }

        try:
            await p.put(SCHEMA, "Cell:1.0.0", schema("Cell"))
            await p.put(ENTRY, "e1", entry(did, "one"))
            await logged(await p.put(ENTRY, "e2", entry(did, "two")))
            await indexer.fold_all()
            seen["live before"] = await tables()

            class Interleaved(Backfiller):
                async def fetch(self, did: str) -> RepoSnapshot:
                    # begin_backfill has committed: the repository is backfilling
                    await p.put(ENTRY, "e1", entry(did, "one, v2"))
                    await logged(await p.put(ENTRY, "e3", entry(did, "three")))
                    await indexer.fold_all()
                    seen["pending, before the snapshot"] = await pool.fetchval(
                        "SELECT count(*) FROM appview_pending WHERE did = $1", did
                    )
                    seen["during, before the snapshot"] = await tables()
                    snapshot = await super().fetch(did)
                    seen["snapshot"] = sorted(r[1] for r in snapshot.records)
                    await p.put(ENTRY, "e1", entry(did, "one, v3"))
                    await p.put(ENTRY, "e1", entry(did, "one, v4"))
                    await p.delete(ENTRY, "e2")
                    await p.put(ENTRY, "e2", entry(did, "two, reborn"))
                    await p.delete(ENTRY, "e3")
                    await logged(await p.put(ENTRY, "e4", entry(did, "four")))
                    await indexer.fold_all()
                    seen["pending, after the snapshot"] = await pool.fetchval(
                        "SELECT count(*) FROM appview_pending WHERE did = $1", did
                    )
                    seen["during, after the snapshot"] = await tables()
                    return snapshot

            seen["stats"] = await Interleaved(
                pool, source=net.pds_url, kind="pds", plc_url=net.plc_url
            ).run(dids=[did])
            seen["after the backfill"] = await tables()
            seen["pending after"] = await pool.fetchval(
                "SELECT count(*) FROM appview_pending WHERE did = $1", did
            )
            seen["repo"] = await repo_row(pool, did)
            await logged(await p.put(ENTRY, "e4", entry(did, "four, live")))
            await indexer.fold_all()
            seen["live after"] = await tables()
            seen["pds"] = {
                k: v["name"] for k, (_, v) in (await p.records(ENTRY)).items()
            }
            seen["records"] = await indexed(pool, "appview_entries", did)
            seen["pds records"] = await p.records(ENTRY)
        finally:
            await p.close()
            ingester.stop()
            await task
        return seen

    seen = run(appview_dsn, go)
    assert seen["live before"] == {"e1": "one", "e2": "two"}
    assert seen["pending, before the snapshot"] == 2
    assert seen["during, before the snapshot"] == {"e1": "one", "e2": "two"}
    assert seen["snapshot"] == ["Cell:1.0.0", "e1", "e2", "e3"]
    assert seen["pending, after the snapshot"] == 8
    assert seen["during, after the snapshot"] == {"e1": "one", "e2": "two"}
    assert seen["stats"].synced == 1 and seen["stats"].failed == 0
    assert seen["after the backfill"] == {
        "e1": "one, v4",
        "e2": "two, reborn",
        "e4": "four",
    }
    assert seen["pending after"] == 0
    assert seen["repo"]["state"] == "synced"
    assert (
        seen["live after"]
        == seen["pds"]
        == {
            "e1": "one, v4",
            "e2": "two, reborn",
            "e4": "four, live",
        }
    )
    # backfilled and live-folded records alike are the PDS's exact records
    assert {k: (r["cid"], r["record"]) for k, r in seen["records"].items()} == seen[
        "pds records"
    ]


# -- interrupted backfills, the drain's policy, queued repositories ------------------------


def test_a_cancelled_backfill_is_marked_failed_and_its_rows_applied(
    appview_dsn: str,
) -> None:
    """A backfill cancelled while it reads (shutdown, an outer timeout) is not
    left ``backfilling``: it is marked failed (``BF_INTERRUPTED``), what was
    buffered meanwhile is applied, later live rows apply directly, and the
    cancellation goes on up."""
    from atdata_appview.testing.log import LogWriter, append_rows

    did = "did:plc:ewvi7nxzyoun6zhxrhs64oiz"
    log = LogWriter()

    async def go(pool: asyncpg.Pool) -> dict[str, Any]:
        async def append(rows: list[dict[str, Any]]) -> None:
            async with pool.acquire() as conn:
                await append_rows(conn, rows)

        await append([log.create(did, ENTRY, "e1", entry(did, "before"))])
        await Indexer(pool, history=None).fold_all()
        reading = asyncio.Event()

        class Hanging(Backfiller):
            async def fetch(self, did: str) -> RepoSnapshot:
                await append([log.update(did, ENTRY, "e1", entry(did, "during"))])
                await Indexer(pool, history=None).fold_all()
                reading.set()
                await asyncio.Event().wait()  # a read that never ends
                raise AssertionError("unreachable")

        task = asyncio.create_task(
            Hanging(pool, source="https://pds.example", kind="pds").backfill_repo(did)
        )
        await reading.wait()
        buffered = await pool.fetchval("SELECT count(*) FROM appview_pending")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        row = await repo_row(pool, did)
        await append([log.create(did, ENTRY, "e2", entry(did, "after"))])
        await Indexer(pool, history=None).fold_all()
        names = {
            r["rkey"]: r["name"]
            for r in await pool.fetch("SELECT rkey, name FROM appview_entries")
        }
        return {
            "buffered": buffered,
            "row": row,
            "names": names,
            "pending": await pool.fetchval("SELECT count(*) FROM appview_pending"),
        }

    got = run(appview_dsn, go)
    assert got["buffered"] == 1
    assert got["row"]["state"] == "failed"
    assert got["row"]["error"] == "BF_INTERRUPTED: CancelledError"
    assert got["names"] == {"e1": "during", "e2": "after"} and got["pending"] == 0


def test_the_drain_after_a_backfill_follows_the_live_policy(appview_dsn: str) -> None:
    """The live indexer runs with ``require_verified`` off: an unchecked update
    that arrives while the repository is read is applied after the snapshot,
    as it would have been without the backfill (the Backfiller's own default
    follows the live fold's recorded policy)."""
    from atdata_appview.testing.log import LogWriter, append_rows

    did = "did:plc:ewvi7nxzyoun6zhxrhs64oiz"
    log = LogWriter()

    async def go(pool: asyncpg.Pool) -> tuple[Any, Any]:
        async def append(rows: list[dict[str, Any]]) -> None:
            async with pool.acquire() as conn:
                await append_rows(conn, rows)

        first = log.create(did, ENTRY, "e1", entry(did, "v1"), verified=None)
        await append([first])
        live = Indexer(pool, history=None, require_verified=False)
        await live.fold_all()
        snap_rev = first["rev"]

        class During(Backfiller):
            async def fetch(self, did: str) -> RepoSnapshot:
                await append(
                    [log.update(did, ENTRY, "e1", entry(did, "v2"), verified=None)]
                )
                await live.fold_all()
                return RepoSnapshot(
                    did=did,
                    rev=snap_rev,
                    commit_cid="bafyx",
                    records=[(ENTRY, "e1", first["cid"], entry(did, "v1"))],
                    pds="https://pds.example",
                    car_bytes=0,
                    blocks=0,
                    seconds=0.0,
                )

        await During(pool, source="https://pds.example", kind="pds").backfill_repo(did)
        return (
            await pool.fetchval("SELECT name FROM appview_entries"),
            await pool.fetchval("SELECT count(*) FROM appview_dead_letters"),
        )

    assert run(appview_dsn, go) == ("v2", 0)


def test_queued_repositories_are_backfilled(
    net: LocalNetwork, appview_dsn: str
) -> None:
    """Repositories the index queued — an account taken down then reactivated
    (its records purged), a ``#sync`` past the high-water mark — and one left
    ``backfilling`` by a backfiller that died, and one failed long enough ago,
    are read by a queued pass (no listing), each once; a failed one within its
    backoff waits; ``atdata-appview run``'s loop does the same on its own."""
    from atdata_appview import cli
    from atdata_appview.config import Settings
    from atdata_appview.indexer import begin_backfill
    from atdata_appview.testing.log import LogWriter, append_rows

    log = LogWriter()

    async def go(pool: asyncpg.Pool) -> dict[str, Any]:
        async def append(rows: list[dict[str, Any]]) -> None:
            async with pool.acquire() as conn:
                await append_rows(conn, rows)

        pubs = [await Pds.new(net) for _ in range(6)]
        revived, synced, abandoned, retried, waiting, by_loop = pubs
        for i, p in enumerate(pubs):
            await p.put(ENTRY, "3kaaaaaaaaaa2", entry(p.did, f"one {i}"))
            await p.put(ENTRY, "3kaaaaaaaaab2", entry(p.did, f"two {i}"))
            await p.close()
        fold = Indexer(pool, history=None)
        # the index saw revived's records, then its takedown and reactivation
        await append(
            [
                log.create(
                    revived.did, ENTRY, "3kaaaaaaaaaa2", entry(revived.did, "x")
                ),
                log.account(revived.did, False, "takendown"),
                log.account(revived.did, True),
                {
                    "seq": log.identity(synced.did, None)["seq"],
                    "event_type": "sync",
                    "repo": synced.did,
                    "rev": "3zzzzzzzzzzz2",
                    "record": {"did": synced.did},
                },
            ]
        )
        await fold.fold_all()
        before = await pool.fetchval("SELECT count(*) FROM appview_entries")
        async with pool.acquire() as conn:
            await begin_backfill(conn, abandoned.did, "crashed backfiller")
        await pool.execute(
            "INSERT INTO appview_repos (did, state, attempts, updated_at) VALUES "
            "($1, 'failed', 1, now() - interval '1 day'), ($2, 'failed', 1, now())",
            retried.did,
            waiting.did,
        )
        await pool.execute(
            "UPDATE appview_repos SET updated_at = now() - interval '1 day' "
            "WHERE did = $1",
            abandoned.did,
        )
        states = dict(await pool.fetch("SELECT did, state FROM appview_repos"))
        stats = await Backfiller(pool, source="", kind="pds", plc_url=net.plc_url).run(
            queued_only=True
        )
        after = dict(await pool.fetch("SELECT did, state FROM appview_repos"))
        names = {
            (r["did"], r["name"])
            for r in await pool.fetch("SELECT did, name FROM appview_entries")
        }
        # the loop of `atdata-appview run`
        await append([log.account(by_loop.did, False, "takendown")])
        await append([log.account(by_loop.did, True)])
        await fold.fold_all()
        settings = Settings(dsn=appview_dsn, plc_url=net.plc_url)
        stop = asyncio.Event()
        loop = asyncio.create_task(
            cli.backfill_pending_until(stop, settings, "dsn", interval=0.2)
        )
        deadline = time.monotonic() + 60
        while (
            await pool.fetchval(
                "SELECT state FROM appview_repos WHERE did = $1", by_loop.did
            )
            != "synced"
        ):
            assert time.monotonic() < deadline and not loop.done()
            await asyncio.sleep(0.1)
        stop.set()
        await loop
        loop_names = await pool.fetchval(
            "SELECT count(*) FROM appview_entries WHERE did = $1", by_loop.did
        )
        return {
            "dids": [p.did for p in pubs],
            "before": before,
            "states": states,
            "stats": stats,
            "after": after,
            "names": names,
            "loop": loop_names,
        }

    got = run(appview_dsn, go)
    revived, synced, abandoned, retried, waiting, _ = got["dids"]
    assert got["before"] == 0  # purged
    assert got["states"] == {
        revived: "pending",
        synced: "pending",
        abandoned: "backfilling",
        retried: "failed",
        waiting: "failed",
    }
    stats = got["stats"]
    assert (stats.listed, stats.queued, stats.expired) == (0, 4, 1)
    assert (stats.synced, stats.failed) == (4, 0)
    assert got["after"] == {
        revived: "synced",
        synced: "synced",
        abandoned: "synced",
        retried: "synced",
        waiting: "failed",
    }
    for i, did in enumerate((revived, synced, abandoned, retried)):
        assert {(did, f"one {i}"), (did, f"two {i}")} <= got["names"]
    assert not any(d == waiting for d, _ in got["names"])
    assert got["loop"] == 2


# -- benchmark ---------------------------------------------------------------------------------


async def _bench(net: LocalNetwork, dsn: str, repos: int, per_repo: int) -> None:
    t0 = time.perf_counter()
    pubs = await asyncio.gather(*(Pds.new(net, "bench") for _ in range(repos)))
    for n, p in enumerate(pubs):
        writes = [(SCHEMA, "Cell:1.0.0", schema("Cell"))]
        writes += [
            (ENTRY, f"3kbench{n:04d}{i:04d}", entry(p.did, f"cells {n} {i}"))
            for i in range(per_repo - 1)
        ]
        await p.write_many(writes)
        await p.close()
    print(f"published {repos} x {per_repo} records in {time.perf_counter() - t0:.1f} s")
    pool = await asyncpg.create_pool(dsn, min_size=2, max_size=12)
    try:
        for concurrency in (4, 8):
            await pool.execute(
                "TRUNCATE appview_repos, appview_schemas, appview_entries"
            )
            stats = await Backfiller(
                pool,
                source=net.pds_url,
                kind="pds",
                plc_url=net.plc_url,
                concurrency=concurrency,
            ).run(dids=[p.did for p in pubs])
            print(f"concurrency {concurrency}: {stats.summary()}")
    finally:
        await pool.close()


def main(argv: list[str]) -> None:
    from atdata_appview.schema import migrate as migrate_appview
    from atdata_ingest.schema import migrate as migrate_ingest
    from atdata_ingest.testing.postgres import PostgresCluster

    repos = int(argv[0]) if argv else 50
    per_repo = int(argv[1]) if len(argv) > 1 else 20
    with LocalNetwork.start() as net, PostgresCluster() as pg:
        dsn = pg.create_database("bench_backfill")

        async def migrate() -> None:
            conn = await asyncpg.connect(dsn)
            try:
                await migrate_ingest(conn)
                await migrate_appview(conn)
            finally:
                await conn.close()

        asyncio.run(migrate())
        asyncio.run(_bench(net, dsn, repos, per_repo))


if __name__ == "__main__":
    main(sys.argv[1:])


def test_handle_claim_is_the_first_valid_at_alias() -> None:
    from atdata_appview.backfill import handle_claim

    assert handle_claim(["not a handle", "Alice.Example.COM", "bob.test"]) == (
        "alice.example.com"
    )
    assert handle_claim([]) is None
    assert handle_claim(["x" * 300 + ".test", "-bad-.test"]) is None


def test_a_pass_with_nothing_to_do_logs_at_debug(
    appview_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The periodic pass over queued repositories (``run``) finds nothing most
    of the time: its summary is not an INFO line every minute."""

    async def go(pool: asyncpg.Pool) -> Any:
        return await Backfiller(pool, source="", kind="pds").run(queued_only=True)

    caplog.set_level("DEBUG", logger="atdata_appview.backfill")
    stats = run(appview_dsn, go)
    assert (stats.listed, stats.queued, stats.synced, stats.failed) == (0, 0, 0, 0)
    said = [
        (r.levelname, r.getMessage())
        for r in caplog.records
        if r.name == "atdata_appview.backfill" and "synced" in r.getMessage()
    ]
    assert said and all(level == "DEBUG" for level, _ in said), said
