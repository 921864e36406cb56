"""The replay relay (``atdata_ingest.testing.relay``) against the real local PDS: the
recorded frames are real and varied, and replaying them rewrites ``seq`` and
``time`` only (CARs and signed commits intact), honours cursors, injects malformed
frames where asked, drops clients on demand and drops slow consumers like a real
relay. Read back with a plain ``websockets`` client; blocks are checked against
their CIDs here, independently of the ingestion code."""

from __future__ import annotations

import asyncio
import datetime as _dt
import hashlib
import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cbrrr
import httpx
import pytest
from atdata_gen.testing.localnet import LocalNetwork
from atdata_ingest.testing.relay import (
    JETSTREAM_PATH,
    REPOS_PATH,
    RelayError,
    ReplayRelay,
    info_frame,
    load_frames,
    realistic_frames,
    record_frames,
    save_frames,
)
from atdata_runtime.atmosphere.repo import parse_car, signing_key, verify_commit
from atdata_runtime.lexicons.science.alt.dataset.entry import Entry
from atdata_runtime.lexicons.science.alt.dataset.schema import Schema
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

# ------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def frames(net: LocalNetwork) -> list[bytes]:
    """The shared set of real frames (8 accounts x 60 records, cached per session)."""
    return realistic_frames(net)


def decode(frame: bytes | str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Header and body of a frame, with cbrrr directly."""
    assert isinstance(frame, bytes)
    header, n = cbrrr._cbrrr.decode_dag_cbor(frame, cbrrr.CID, False)
    body: Any = cbrrr.decode_dag_cbor(frame[n:])
    return header, body


def varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        b = data[pos]
        value |= (b & 0x7F) << shift
        pos += 1
        if not b & 0x80:
            return value, pos
        shift += 7


def blocks_of(car: bytes) -> dict[bytes, bytes]:
    """CID bytes -> block bytes of a CAR v1, asserting that every block hashes to
    its CID (CIDv1, sha2-256: the last 32 bytes of the 36-byte CID)."""
    size, pos = varint(car, 0)
    header = cbrrr.decode_dag_cbor(car[pos : pos + size])
    assert isinstance(header, dict) and header["version"] == 1
    pos += size
    out = {}
    while pos < len(car):
        size, pos = varint(car, pos)
        cid, block = car[pos : pos + 36], car[pos + 36 : pos + size]
        assert cid[:4] == b"\x01\x71\x12\x20", cid.hex()
        assert hashlib.sha256(block).digest() == cid[4:], cid.hex()
        out[cid] = block
        pos += size
    return out


def check_commit(body: dict[str, Any]) -> None:
    """The commit's CAR is intact and holds every created or updated record."""
    blocks = blocks_of(body["blocks"])
    assert bytes(body["commit"]) in blocks
    for op in body["ops"]:
        if op["action"] in ("create", "update"):
            assert bytes(op["cid"]) in blocks, op


Received = list[bytes | str]


async def _read(
    url: str, count: int | None = None, idle: float | None = None, timeout: float = 60
) -> tuple[Received, ConnectionClosed | None]:
    """Messages from ``url`` until ``count`` arrived, the connection closed (its
    exception returned), or none came for ``idle`` seconds. Then the client aborts
    the TCP connection: a graceful close would wait for the relay's close frame
    behind the frames still in flight, which this client no longer reads."""
    got: Received = []
    async with asyncio.timeout(timeout):
        async with connect(url, max_size=2**23, compression=None) as ws:
            try:
                while count is None or len(got) < count:
                    try:
                        async with asyncio.timeout(idle):
                            got.append(await ws.recv())
                    except TimeoutError:
                        break
            except ConnectionClosed as exc:
                return got, exc
            ws.transport.abort()
    return got, None


def read(
    url: str, count: int | None = None, idle: float | None = None
) -> tuple[Received, ConnectionClosed | None]:
    return asyncio.run(_read(url, count, idle))


def seqs(messages: Received) -> list[int]:
    return [decode(m)[1]["seq"] for m in messages if isinstance(m, bytes)]


@pytest.fixture
def relay(frames: list[bytes]) -> Iterator[ReplayRelay]:
    with ReplayRelay(frames, close_at_end=True) as r:
        yield r


# ----------------------------------------------------------- recorded frames


def test_recorded_frames_are_real_varied_and_intact(
    net: LocalNetwork, frames: list[bytes]
) -> None:
    kinds: Counter[str] = Counter()
    ops: Counter[tuple[str, str]] = Counter()
    sizes: Counter[int] = Counter()
    for frame in frames:
        header, body = decode(frame)
        assert header["op"] == 1
        kinds[header["t"]] += 1
        if header["t"] != "#commit":
            continue
        check_commit(body)
        sizes[min(len(body["ops"]), 2)] += 1
        blocks = blocks_of(body["blocks"])
        for op in body["ops"]:
            collection = op["path"].partition("/")[0]
            ops[(op["action"], collection)] += 1
            if op["action"] == "delete":
                continue
            record: Any = cbrrr.decode_dag_cbor(
                blocks[bytes(op["cid"])], atjson_mode=True
            )
            assert record["$type"] == collection
            if collection == "science.alt.dataset.entry":
                Entry.from_wire(record)
            elif collection == "science.alt.dataset.schema":
                Schema.from_wire(record)
    assert {"#commit", "#identity", "#account", "#sync"} <= set(kinds)
    assert sizes[1] > sizes[2] > 0  # mostly single-operation commits, some multi
    collections = {c for _, c in ops}
    assert {
        "app.bsky.feed.post",
        "app.bsky.feed.like",
        "app.bsky.feed.repost",
        "app.bsky.graph.follow",
        "app.bsky.actor.profile",
        "science.alt.dataset.schema",
        "science.alt.dataset.entry",
    } <= collections
    assert {a for a, _ in ops} == {"create", "update", "delete"}
    dataset = sum(
        n for (_, c), n in ops.items() if c.startswith("science.alt.dataset.")
    )
    assert 0.05 <= dataset / sum(ops.values()) <= 0.2
    # exactly the bytes the PDS sends: a second reading from a cursor is identical
    first = decode(frames[10])[1]["seq"]
    again = record_frames(net.pds_url, cursor=first - 1, until_seq=first + 4)
    by_seq = {decode(f)[1]["seq"]: f for f in frames}
    assert [f for f in again if decode(f)[1]["seq"] in by_seq] == [
        by_seq[s] for s in sorted(by_seq) if first <= s <= first + 4
    ]


# ------------------------------------------------------------------ replaying


def test_replay_rewrites_seq_and_time_only(frames: list[bytes]) -> None:
    n = len(frames)
    with ReplayRelay(frames, total=2 * n, close_at_end=True) as relay:
        before = _dt.datetime.now(_dt.UTC).replace(microsecond=0)
        got, closed = read(relay.repos_url + "?cursor=0")
        after = _dt.datetime.now(_dt.UTC)
    assert closed is not None and closed.rcvd is not None and closed.rcvd.code == 1000
    assert seqs(got) == list(range(1, 2 * n + 1))
    for k, frame in enumerate(got, start=1):
        assert isinstance(frame, bytes)
        header, body = decode(frame)
        t_header, t_body = decode(frames[(k - 1) % n])
        assert header == t_header
        sent = _dt.datetime.fromisoformat(body["time"])
        assert before <= sent <= after and body["time"].endswith("Z")
        assert len(body["time"]) == 24  # milliseconds
        assert body == dict(t_body, seq=k, time=body["time"])
        # the spliced bytes are the canonical DAG-CBOR encoding
        head_len = cbrrr._cbrrr.decode_dag_cbor(frame, cbrrr.CID, False)[1]
        assert frame[head_len:] == cbrrr.encode_dag_cbor(body)
        if header["t"] == "#commit":
            assert body["blocks"] == t_body["blocks"]
            check_commit(body)


def test_replayed_commits_keep_valid_signatures(
    net: LocalNetwork, frames: list[bytes]
) -> None:
    with ReplayRelay(frames, close_at_end=True) as relay:
        got, _ = read(relay.repos_url)
    commits = [decode(m)[1] for m in got if isinstance(m, bytes)]
    commits = [b for b in commits if b.get("ops")][:20]
    keys: dict[str, str] = {}
    for body in commits:
        did = body["repo"]
        if did not in keys:
            doc = httpx.get(f"{net.plc_url}/{did}").json()
            keys[did] = signing_key(doc, did)
        commit = verify_commit(parse_car(body["blocks"]), did, keys[did])
        assert commit["rev"] == body["rev"]
    assert len(keys) > 1


def test_cursor_resumes_after_it(relay: ReplayRelay) -> None:
    got, _ = read(relay.repos_url + "?cursor=40", count=5)
    assert seqs(got) == [41, 42, 43, 44, 45]
    got, _ = read(relay.repos_url + "?cursor=0", count=2)
    assert seqs(got) == [1, 2]
    got, _ = read(relay.repos_url, count=2)
    assert seqs(got) == [1, 2]
    assert relay.connections_accepted == 3
    assert [c.seqs[0][0] for c in relay.connections()] == [41, 1, 1]


def test_future_and_bad_cursors_get_an_error_frame(relay: ReplayRelay) -> None:
    for cursor, error in (
        ((relay.total or 0) + 1, "FutureCursor"),
        ("x", "InvalidRequest"),
    ):
        got, closed = read(f"{relay.repos_url}?cursor={cursor}")
        assert len(got) == 1 and isinstance(got[0], bytes)
        header, body = decode(got[0])
        assert header == {"op": -1} and body["error"] == error
        assert closed is not None and closed.rcvd is not None
        assert closed.rcvd.code == 1008


def test_end_of_stream_stays_open_idle(frames: list[bytes]) -> None:
    with ReplayRelay(frames[:10]) as relay:
        got, closed = read(relay.repos_url, idle=0.5)
        assert seqs(got) == list(range(1, 11)) and closed is None
        relay.wait_for(lambda: relay.connections()[0].closed is not None)
        (conn,) = relay.connections()
        assert conn.closed == "client" and conn.frames_sent == 10


def test_unknown_path_is_404(relay: ReplayRelay) -> None:
    with pytest.raises(InvalidStatus) as info:
        read(relay.url + "/xrpc/com.atproto.sync.subscribeLabels")
    assert info.value.response.status_code == 404


def test_bad_templates_are_refused(frames: list[bytes]) -> None:
    with pytest.raises(RelayError) as info:
        ReplayRelay([frames[0], info_frame("OutdatedCursor")])
    assert info.value.rule == "RELAY_TEMPLATE_NO_SEQ" and "template 1" in str(
        info.value
    )
    with pytest.raises(RelayError) as info:
        ReplayRelay([b"\xff\x00"])
    assert info.value.rule == "FRAME_UNDECODABLE"
    with pytest.raises(RelayError):
        ReplayRelay([])
    with pytest.raises(ValueError):
        ReplayRelay(frames, bursts=[(1, 10, 100.0)])  # bursts need a base rate


def test_frames_file_round_trip_and_template_of(
    frames: list[bytes], tmp_path: Path
) -> None:
    path = str(tmp_path / "frames.bin")
    assert save_frames(path, frames) == len(frames)
    assert load_frames(path) == frames
    (tmp_path / "bad.bin").write_bytes(b"not frames")
    with pytest.raises(RelayError) as info:
        load_frames(str(tmp_path / "bad.bin"))
    assert info.value.rule == "RELAY_FILE_INVALID"
    Path(path).write_bytes(Path(path).read_bytes()[:-1])
    with pytest.raises(RelayError, match="truncated"):
        load_frames(path)
    relay = ReplayRelay(frames)
    n = relay.templates
    assert n == len(frames)
    assert relay.template_of(n + 3) == decode(frames[2])
    assert decode(relay.frame(n + 3))[1]["seq"] == n + 3


# ---------------------------------------------------------------- controls


def test_disconnect_all_drops_every_client_abruptly(frames: list[bytes]) -> None:
    with ReplayRelay(frames, total=None, rate=2000) as relay:
        relay.wait_for(lambda: relay.head > 150)

        async def two_clients() -> list[tuple[Received, ConnectionClosed | None]]:
            tasks = [
                asyncio.create_task(_read(relay.repos_url + f"?cursor={c}"))
                for c in (0, 100)
            ]
            await asyncio.to_thread(
                relay.wait_for,
                lambda: sum(1 for c in relay.connections() if c.frames_sent) == 2,
            )
            assert relay.disconnect_all() == 2
            return list(await asyncio.gather(*tasks))

        results = asyncio.run(two_clients())
        for (got, closed), start in zip(results, (1, 101), strict=True):
            assert closed is not None and closed.rcvd is None  # no close frame
            assert seqs(got) == list(range(start, start + len(got)))
        assert {c.closed for c in relay.connections()} == {"disconnect_all"}
        last = seqs(results[0][0])[-1]
        again, _ = read(relay.repos_url + f"?cursor={last}", count=3)
        assert seqs(again) == [last + 1, last + 2, last + 3]


def test_pause_and_resume_keep_the_stream_contiguous(frames: list[bytes]) -> None:
    with ReplayRelay(frames, total=None) as relay:

        async def run() -> tuple[list[int], list[int]]:
            async with connect(relay.repos_url, max_size=2**23) as ws:
                first = [decode(await ws.recv())[1]["seq"] for _ in range(50)]
                await asyncio.to_thread(relay.pause)
                with pytest.raises(TimeoutError):  # drain what was in flight
                    while True:
                        async with asyncio.timeout(0.5):
                            first.append(decode(await ws.recv())[1]["seq"])
                await asyncio.to_thread(relay.resume)
                then = [decode(await ws.recv())[1]["seq"] for _ in range(50)]
                ws.transport.abort()
            return first, then

        first, then = asyncio.run(run())
    assert first + then == list(range(1, len(first) + len(then) + 1))


def test_burst_then_base_rate(frames: list[bytes]) -> None:
    with ReplayRelay(frames, total=None, rate=100, bursts=[(21, 300, 20_000)]) as relay:
        got, _ = read(relay.repos_url, count=330)
        start = relay.burst(200, 20_000)
        assert start > 320
        more, _ = read(relay.repos_url + f"?cursor={start - 1}", count=200)
    assert seqs(got) == list(range(1, 331))
    assert seqs(more) == list(range(start, start + 200))


def test_injected_frames_appear_at_their_seq(relay: ReplayRelay) -> None:
    relay.inject("garbage", 3)
    relay.inject("truncated", 5)
    relay.inject("bad_cid", 7)
    relay.inject("unknown_type", 9)
    relay.inject("info", 11, message="cursor too old")
    relay.inject("error_frame", 14, error="InjectedError")
    got, closed = read(relay.repos_url)
    assert closed is not None and closed.rcvd is not None and closed.rcvd.code == 1011
    assert len(got) == 13 + 2  # frames 1..13, the #info, the error frame
    frames = [m for m in got if isinstance(m, bytes)]
    with pytest.raises(ValueError):
        decode(frames[2])  # garbage: not even a header
    header, n = cbrrr._cbrrr.decode_dag_cbor(frames[4], cbrrr.CID, False)
    assert header["op"] == 1
    with pytest.raises(ValueError):
        cbrrr.decode_dag_cbor(frames[4][n:])  # truncated body
    header, body = decode(frames[6])
    assert header["t"] == "#commit" and body["seq"] == 7
    with pytest.raises(AssertionError):
        blocks_of(body["blocks"])  # a block no longer matches its CID
    assert decode(frames[8]) == (
        {"op": 1, "t": "#futureThing"},
        {"seq": 9, "time": decode(frames[8])[1]["time"], "thing": "from the future"},
    )
    assert decode(frames[10]) == (
        {"op": 1, "t": "#info"},
        {"name": "OutdatedCursor", "message": "cursor too old"},
    )
    assert decode(frames[11])[1]["seq"] == 11
    assert decode(frames[-1]) == (
        {"op": -1},
        {"error": "InjectedError", "message": "injected before seq 14"},
    )
    good = [
        decode(f)[1]["seq"] for i, f in enumerate(frames) if i not in (2, 4, 10, 14)
    ]
    assert good == [1, 2, 4, 6, 7, 8, 9, 10, 11, 12, 13]
    assert relay.sent_seqs() == list(range(1, 14))
    # replacements stay (they are the frame at that seq); insertions were once
    again, closed = read(relay.repos_url + "?cursor=2", count=13)
    assert len(again) == 13 and closed is None
    with pytest.raises(ValueError):
        decode(again[0])  # garbage again at seq 3
    assert [decode(f)[1].get("seq") for f in again[-3:]] == [13, 14, 15]


def test_slow_consumer_gets_consumer_too_slow(frames: list[bytes]) -> None:
    with ReplayRelay(frames, total=None, rate=3000, max_queue=300) as relay:

        async def run() -> tuple[Received, ConnectionClosed | None, list[int]]:
            fast = asyncio.create_task(_read(relay.repos_url, count=4000))
            async with connect(relay.repos_url + "?cursor=0", max_size=2**23) as ws:
                # this client reads nothing until the relay has given up on it
                await asyncio.to_thread(
                    relay.wait_for, lambda: relay.too_slow_drops > 0
                )
                got: Received = []
                closed = None
                try:
                    while True:
                        got.append(await ws.recv())
                except ConnectionClosed as exc:
                    closed = exc
            fast_got, _ = await fast
            return got, closed, seqs(fast_got)

        got, closed, fast = asyncio.run(run())
    assert closed is not None and closed.rcvd is not None
    assert (closed.rcvd.code, closed.rcvd.reason) == (1008, "ConsumerTooSlow")
    *data, last = got
    assert isinstance(last, bytes)
    assert decode(last) == (
        {"op": -1},
        {"error": "ConsumerTooSlow", "message": "consumer too slow"},
    )
    assert seqs(data) == list(range(1, len(data) + 1))
    assert fast == list(range(1, 4001))  # a reading client is not dropped
    assert relay.too_slow_drops == 1
    assert sorted(str(c.closed) for c in relay.connections()) == [
        "ConsumerTooSlow",
        "client",
    ]


# ----------------------------------------------------------------- jetstream


def test_jetstream_mode_translates_and_filters(frames: list[bytes]) -> None:
    expected: list[tuple[str, str | None]] = []
    for frame in frames:
        header, body = decode(frame)
        if header["t"] == "#commit":
            expected += [("commit", op["path"].partition("/")[0]) for op in body["ops"]]
        elif header["t"] in ("#identity", "#account"):
            expected.append((header["t"][1:], None))
    with ReplayRelay(frames, close_at_end=True) as relay:
        url = relay.url + JETSTREAM_PATH
        got, _ = read(url + "?wantedCollections=science.alt.dataset.*")
        events = [json.loads(m) for m in got]
        want = [
            e
            for e in expected
            if e[1] is None or e[1].startswith("science.alt.dataset.")
        ]
        assert [
            (e["kind"], e.get("commit", {}).get("collection")) for e in events
        ] == want
        times = [e["time_us"] for e in events]
        assert times == sorted(set(times))
        for e in events:
            assert e["did"].startswith("did:plc:")
            if e["kind"] == "commit":
                c = e["commit"]
                assert set(c) >= {"rev", "operation", "collection", "rkey"}
                if c["operation"] != "delete":
                    assert c["record"]["$type"] == c["collection"]
                    assert c["cid"].startswith("bafyrei")
            else:
                inner = e[e["kind"]]
                assert inner["did"] == e["did"] and isinstance(inner["seq"], int)
        # resume from a time_us cursor: inclusive, as Jetstream replays
        cursor = events[5]["time_us"]
        again, _ = read(
            url + f"?wantedCollections=science.alt.dataset.*&cursor={cursor}"
        )
        resumed = [json.loads(m) for m in again]
        assert [(e["time_us"], e["kind"], e["did"]) for e in resumed] == [
            (e["time_us"], e["kind"], e["did"]) for e in events[5:]
        ]
        posts, _ = read(url + "?wantedCollections=app.bsky.feed.post")
        kinds = Counter(
            json.loads(m).get("commit", {}).get("collection", "-") for m in posts
        )
        assert kinds["app.bsky.feed.post"] == sum(
            1 for e in expected if e[1] == "app.bsky.feed.post"
        )
        assert set(kinds) == {"app.bsky.feed.post", "-"}
    assert REPOS_PATH.endswith("subscribeRepos")
