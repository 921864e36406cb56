"""The frame codec and commit verification of the firehose
(``atdata_runtime.firehose.frames`` / ``.verify``) on real frames of the real local
PDS (``@atproto/pds`` with its PLC directory on loopback): what was written
(createRecord, putRecord, deleteRecord, applyWrites) is what the decoded events say,
CIDs included; commit signatures verify against the DID document's key, each
operation is proven against the signed MST (forged records under a genuine
signature are refused), replays and future revs are not called verified, and key
refreshes a relay can force are rate-limited; the pipelined ``start`` keeps each
DID's order; and hostile frames, made from the real ones, fail with the right rule
and location."""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import hashlib
import pickle
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import cbrrr
import httpx
import pytest
import websockets
from atdata_gen.testing.localnet import Account, LocalNetwork, free_port
from atdata_runtime.atmosphere import IdentityResolver
from atdata_runtime.atmosphere.records import schema_rkey
from atdata_runtime.atmosphere.repo import signing_key
from atdata_runtime.firehose import (
    Account as AccountEvent,
)
from atdata_runtime.firehose import (
    Commit,
    Create,
    Delete,
    Identity,
    Info,
    Sync,
    Update,
)
from atdata_runtime.firehose.frames import (
    MAX_CAR_HEADER_BYTES,
    MAX_COMMIT_BYTES,
    MAX_FRAME_BYTES,
    MAX_ITEMS,
    MAX_RECORD_DEPTH,
    MAX_SEQ,
    Frame,
    FrameError,
    decode_frame,
    prove_ops,
)
from atdata_runtime.firehose.verify import CommitVerifier, Verdict, _tid_seconds
from cbrrr import CID, _cbrrr

from .conftest import flat_schema_record

# -- encoding helpers (independent of the code under test: cbrrr's encoder) --------

SHA256_CID = b"\x01\x71\x12\x20"


def split(frame: bytes) -> tuple[dict[str, Any], dict[str, Any]]:
    """(header, body) of a frame, links as ``cbrrr.CID``, bytes as bytes."""
    header, used = _cbrrr.decode_dag_cbor(frame, CID, False)
    return header, cbrrr.decode_dag_cbor(frame[used:])  # type: ignore[return-value]


def join(header: Any, body: Any) -> bytes:
    return cbrrr.encode_dag_cbor(header) + cbrrr.encode_dag_cbor(body)


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def read_car(data: bytes) -> tuple[list[CID], list[tuple[bytes, bytes]]]:
    def read_varint(pos: int) -> tuple[int, int]:
        n = shift = 0
        while True:
            b = data[pos]
            pos += 1
            n |= (b & 0x7F) << shift
            shift += 7
            if b < 0x80:
                return n, pos

    size, pos = read_varint(0)
    header = cbrrr.decode_dag_cbor(data[pos : pos + size])
    pos += size
    sections = []
    while pos < len(data):
        size, pos = read_varint(pos)
        sections.append((data[pos : pos + 36], data[pos + 36 : pos + size]))
        pos += size
    return header["roots"], sections  # type: ignore[index]


def write_car(roots: list[CID], sections: list[tuple[bytes, bytes]]) -> bytes:
    header = cbrrr.encode_dag_cbor({"version": 1, "roots": roots})
    out = [varint(len(header)), header]
    for cid, block in sections:
        out += [varint(len(cid) + len(block)), cid, block]
    return b"".join(out)


def cid_of(block: bytes) -> bytes:
    return SHA256_CID + hashlib.sha256(block).digest()


def link(raw: bytes) -> str:
    return CID(raw).encode()


# -- the real stream -----------------------------------------------------------------


@dataclass
class Stream:
    """Frames of the local PDS from cursor 0, and what the test wrote."""

    net: LocalNetwork
    alice: Account
    bob: Account
    frames: list[bytes]
    writes: dict[str, Any] = field(default_factory=dict)

    def of(self, did: str) -> list[Frame]:
        out = []
        for raw in self.frames:
            frame = decode_frame(raw)
            if frame.did == did:
                out.append(frame)
        return out

    def raw_commit(self, commit_cid: str) -> bytes:
        """The raw frame of the commit ``commit_cid``."""
        for raw in self.frames:
            _, body = split(raw)
            commit = body.get("commit")
            if isinstance(commit, CID) and commit.encode() == commit_cid:
                return raw
        raise AssertionError(f"no frame for commit {commit_cid}")


def _xrpc(
    net: LocalNetwork, account: Account, method: str, body: dict[str, Any]
) -> dict[str, Any]:
    session = httpx.post(
        f"{net.pds_url}/xrpc/com.atproto.server.createSession",
        json={"identifier": account.handle, "password": account.password},
        timeout=30,
    )
    session.raise_for_status()
    resp = httpx.post(
        f"{net.pds_url}/xrpc/{method}",
        json=body,
        headers={"Authorization": f"Bearer {session.json()['accessJwt']}"},
        timeout=30,
    )
    assert resp.status_code == 200, resp.text
    return resp.json()  # type: ignore[no-any-return]


async def _read(url: str, done: Callable[[bytes], bool]) -> list[bytes]:
    frames: list[bytes] = []
    async with asyncio.timeout(60), websockets.connect(url, max_size=None) as ws:
        async for message in ws:
            assert isinstance(message, bytes)
            frames.append(message)
            if done(message):
                break
    return frames


def read_stream(net: LocalNetwork, rev: str) -> list[bytes]:
    """Raw frames from cursor 0 until the commit of revision ``rev``."""
    url = (
        "ws"
        + net.pds_url.removeprefix("http")
        + "/xrpc/com.atproto.sync.subscribeRepos?cursor=0"
    )

    def done(frame: bytes) -> bool:
        return split(frame)[1].get("rev") == rev and b"#commit" in frame[:20]

    return asyncio.run(_read(url, done))


POST = "app.bsky.feed.post"
THING = "com.example.frames.thing"
SCHEMA = "science.alt.dataset.schema"


@pytest.fixture(scope="module")
def stream(net: LocalNetwork) -> Stream:
    tag = free_port()
    alice = net.create_account(f"frames-a{tag}")
    bob = net.create_account(f"frames-b{tag}")
    did = alice.did
    w: dict[str, Any] = {}
    w["post"] = {
        "$type": POST,
        "text": "hello firehose",
        "createdAt": "2026-01-01T00:00:00.000Z",
        "langs": ["en"],
    }
    w["post_res"] = _xrpc(
        net,
        alice,
        "com.atproto.repo.createRecord",
        {"repo": did, "collection": POST, "record": w["post"]},
    )
    w["thing"] = {
        "$type": THING,
        "data": {"$bytes": "AAEC/w"},
        "ref": {"$link": w["post_res"]["cid"]},
        "n": -42,
        "nested": [{"a": None, "b": True, "c": "é"}],
    }
    w["thing_res"] = _xrpc(
        net,
        alice,
        "com.atproto.repo.createRecord",
        {"repo": did, "collection": THING, "rkey": "thing-1", "record": w["thing"]},
    )
    # enough records for an MST of several layers under the schema's key
    w["bulk_res"] = _xrpc(
        net,
        alice,
        "com.atproto.repo.applyWrites",
        {
            "repo": did,
            "writes": [
                {
                    "$type": "com.atproto.repo.applyWrites#create",
                    "collection": THING,
                    "rkey": f"bulk-{i:02}",
                    "value": {"$type": THING, "i": i},
                }
                for i in range(40)
            ],
        },
    )
    w["schema"] = flat_schema_record(
        "FramesSample", "1.0.0", {"x": {"type": "integer"}}
    )
    w["schema_rkey"] = schema_rkey("FramesSample", "1.0.0")
    w["schema_res"] = _xrpc(
        net,
        alice,
        "com.atproto.repo.putRecord",
        {
            "repo": did,
            "collection": SCHEMA,
            "rkey": w["schema_rkey"],
            "record": w["schema"],
        },
    )
    w["post2"] = dict(w["post"], text="edited")
    w["post_rkey"] = w["post_res"]["uri"].rsplit("/", 1)[1]
    w["update_res"] = _xrpc(
        net,
        alice,
        "com.atproto.repo.putRecord",
        {
            "repo": did,
            "collection": POST,
            "rkey": w["post_rkey"],
            "record": w["post2"],
        },
    )
    w["delete_res"] = _xrpc(
        net,
        alice,
        "com.atproto.repo.deleteRecord",
        {"repo": did, "collection": THING, "rkey": "thing-1"},
    )
    w["batch"] = [
        {"$type": THING, "i": 1},
        {"$type": THING, "i": 2},
    ]
    w["batch_res"] = _xrpc(
        net,
        alice,
        "com.atproto.repo.applyWrites",
        {
            "repo": did,
            "writes": [
                {
                    "$type": "com.atproto.repo.applyWrites#create",
                    "collection": THING,
                    "rkey": f"batch-{i}",
                    "value": value,
                }
                for i, value in enumerate(w["batch"])
            ],
        },
    )
    frames = read_stream(net, w["batch_res"]["commit"]["rev"])
    return Stream(net, alice, bob, frames, w)


@pytest.fixture(scope="module")
def resolver(net: LocalNetwork) -> IdentityResolver:
    return IdentityResolver(plc_url=net.plc_url)


# -- real frames -------------------------------------------------------------------


def test_helpers_reencode_real_frames_byte_for_byte(stream: Stream) -> None:
    """The hostile frames below are real frames re-encoded: the helpers must give
    back the very bytes the PDS sent."""
    assert len(stream.frames) > 10
    for raw in stream.frames:
        assert join(*split(raw)) == raw
        _, body = split(raw)
        if isinstance(body.get("blocks"), bytes) and body["blocks"]:
            assert write_car(*read_car(body["blocks"])) == body["blocks"]


def test_commits_decode_to_what_was_written(stream: Stream) -> None:
    w, did = stream.writes, stream.alice.did
    commits = [f.event() for f in stream.of(did) if f.kind == "commit"]
    assert all(isinstance(c, Commit) for c in commits)
    # createAccount writes an empty commit first.
    assert commits[0].ops == ()  # type: ignore[union-attr]
    seqs = [c.seq for c in commits]  # type: ignore[union-attr]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)

    def commit_of(result: dict[str, Any]) -> Commit:
        found = [c for c in commits if c.commit_cid == result["commit"]["cid"]]  # type: ignore[union-attr]
        assert len(found) == 1, result
        commit = found[0]
        assert isinstance(commit, Commit)
        assert commit.rev == result["commit"]["rev"]
        assert commit.repo == did and not commit.too_big and commit.verified is None
        assert commit.time is not None and commit.time.utcoffset().total_seconds() == 0  # type: ignore[union-attr]
        return commit

    post = commit_of(w["post_res"]).ops
    assert post == (
        Create(
            post[0].seq,
            did,
            POST,
            w["post_rkey"],
            w["post_res"]["cid"],
            w["post"],
            w["post_res"]["commit"]["rev"],
            post[0].time,
            0,
            w["post_res"]["commit"]["cid"],
            None,
        ),
    )
    (thing,) = commit_of(w["thing_res"]).ops
    assert isinstance(thing, Create)
    assert (thing.collection, thing.rkey, thing.cid) == (
        THING,
        "thing-1",
        w["thing_res"]["cid"],
    )
    # bytes and links come back in the JSON data model, exactly as written
    assert thing.record == w["thing"]
    assert thing.uri == w["thing_res"]["uri"]

    (schema,) = commit_of(w["schema_res"]).ops
    assert isinstance(schema, Create) and schema.collection == SCHEMA
    assert schema.rkey == w["schema_rkey"] and schema.record == w["schema"]
    assert schema.cid == w["schema_res"]["cid"]

    (update,) = commit_of(w["update_res"]).ops
    assert isinstance(update, Update)
    assert (update.rkey, update.cid, update.prev_cid, update.record) == (
        w["post_rkey"],
        w["update_res"]["cid"],
        w["post_res"]["cid"],
        w["post2"],
    )

    (delete,) = commit_of(w["delete_res"]).ops
    assert isinstance(delete, Delete)
    assert (delete.collection, delete.rkey, delete.prev_cid) == (
        THING,
        "thing-1",
        w["thing_res"]["cid"],
    )

    batch = commit_of(w["batch_res"]).ops
    assert [(type(op), op.idx, op.rkey) for op in batch] == [
        (Create, 0, "batch-0"),
        (Create, 1, "batch-1"),
    ]
    assert [op.record for op in batch] == w["batch"]  # type: ignore[union-attr]
    assert [op.cid for op in batch] == [r["cid"] for r in w["batch_res"]["results"]]  # type: ignore[union-attr]
    assert len({op.seq for op in batch}) == 1


def test_events_flatten_a_commit_into_its_record_events(stream: Stream) -> None:
    frame = decode_frame(stream.raw_commit(stream.writes["batch_res"]["commit"]["cid"]))
    commit = frame.event(verified=True)
    assert isinstance(commit, Commit) and commit.verified is True
    assert frame.events(verified=True) == commit.ops
    assert all(op.verified is True for op in commit.ops)
    assert frame.collections == frozenset({THING}) and not frame.touches_datasets
    assert frame.commit_block is not None and cid_of(frame.commit_block) == (
        CID.decode(frame.commit_cid).cid_bytes  # type: ignore[arg-type]
    )
    empty = next(f for f in stream.of(stream.alice.did) if f.kind == "commit")
    assert empty.events() == () and isinstance(empty.event(), Commit)


def test_identity_account_and_sync_frames_after_create_account(stream: Stream) -> None:
    did = stream.alice.did
    frames = stream.of(did)
    kinds = [f.kind for f in frames]
    assert {"identity", "account", "sync"} <= set(kinds)
    identity = next(f for f in frames if f.kind == "identity").event()
    assert isinstance(identity, Identity)
    assert (identity.did, identity.handle) == (did, stream.alice.handle)
    account = next(f for f in frames if f.kind == "account").event()
    assert isinstance(account, AccountEvent)
    assert (account.did, account.active, account.status) == (did, True, None)
    sync_frame = next(f for f in frames if f.kind == "sync")
    sync = sync_frame.event()
    assert isinstance(sync, Sync) and sync.did == did
    first_commit = next(f for f in frames if f.kind == "commit")
    # the account's first commit is the state the #sync announces
    assert (sync.rev, sync.commit_cid) == (
        first_commit.event().rev,  # type: ignore[union-attr]
        first_commit.commit_cid,
    )
    assert sync_frame.events() == (sync,)
    for f in frames:
        assert f.seq is not None and f.time is not None and f.size > 0


def test_frame_error_carries_where_and_survives_pickling(stream: Stream) -> None:
    header, body = split(stream.raw_commit(stream.writes["post_res"]["commit"]["cid"]))
    body["seq"] = "12"
    with pytest.raises(FrameError) as info:
        decode_frame(join(header, body))
    err = info.value
    assert (err.rule, err.location, err.seq, err.repo) == (
        "FRAME_BODY",
        "/body/seq",
        None,
        stream.alice.did,
    )
    again = pickle.loads(pickle.dumps(err))
    assert (again.rule, again.reason, again.location, str(again)) == (
        err.rule,
        err.reason,
        err.location,
        str(err),
    )
    assert isinstance(err, ValueError) and "[FRAME_BODY]" in str(err)


# -- signatures --------------------------------------------------------------------


def test_dataset_commit_verifies_against_the_did_document_key(
    stream: Stream, resolver: IdentityResolver
) -> None:
    w = stream.writes
    verifier = CommitVerifier(resolver, policy="dataset")
    schema = decode_frame(stream.raw_commit(w["schema_res"]["commit"]["cid"]))
    assert schema.touches_datasets and verifier.required(schema)
    verdict = verifier.check(schema)
    assert verdict == Verdict(True, verdict.reason, None), verdict
    assert verifier.stats["lookups"] == 1
    assert verifier.last_rev(stream.alice.did) == (
        w["schema_res"]["commit"]["rev"],
        schema.data_cid,
    )
    post = decode_frame(stream.raw_commit(w["post_res"]["commit"]["cid"]))
    assert not verifier.required(post)
    assert verifier.check(post) == Verdict(None, "not required by the policy", None)
    assert verifier.stats["verified"] == 1 and verifier.stats["not_required"] == 1


def test_every_real_commit_and_sync_verifies_with_policy_all(
    stream: Stream, resolver: IdentityResolver
) -> None:
    """Signatures, operation proofs (the local PDS sends the MST nodes of creates,
    updates and deletes: Sync 1.1) and revs, in stream order."""
    verifier = CommitVerifier(resolver, policy="all")
    checked = 0
    kinds = set()
    for frame in stream.of(stream.alice.did):
        verdict = verifier.check(frame)
        if frame.kind in ("commit", "sync"):
            assert verdict.verified is True, (frame.seq, verdict)
            checked += 1
            kinds |= {type(e).__name__ for e in frame.events()}
        else:
            assert verdict.verified is None
    assert checked >= 8 and verifier.stats["lookups"] == 1
    assert kinds >= {"Create", "Update", "Delete", "Sync"}
    assert verifier.stats["incomplete"] == verifier.stats["stale"] == 0
    none = CommitVerifier(resolver, policy="none")
    assert all(not none.required(f) for f in stream.of(stream.alice.did))
    with pytest.raises(ValueError, match="policy"):
        CommitVerifier(resolver, policy="some")  # type: ignore[arg-type]


def _recommit(raw: bytes, change: Callable[[dict[str, Any]], None]) -> bytes:
    """``raw`` with its commit block decoded, changed by ``change`` and re-encoded
    under its new CID (CAR root, section and body ``commit`` all updated): a
    consistent frame whose only fault is what ``change`` did."""
    header, body = split(raw)
    _, sections = read_car(body["blocks"])
    old = body["commit"].cid_bytes
    out = []
    new = b""
    for cid, block in sections:
        if cid == old:
            commit = cbrrr.decode_dag_cbor(block)
            change(commit)  # type: ignore[arg-type]
            block = cbrrr.encode_dag_cbor(commit)
            cid = new = cid_of(block)
        out.append((cid, block))
    body["blocks"] = write_car([CID(new)], out)
    body["commit"] = CID(new)
    return join(header, body)


def _flip_sig(commit: dict[str, Any]) -> None:
    sig = bytearray(commit["sig"])
    sig[10] ^= 0x01
    commit["sig"] = bytes(sig)


def test_a_flipped_signature_byte_is_sig_invalid(
    stream: Stream, resolver: IdentityResolver
) -> None:
    raw = stream.raw_commit(stream.writes["schema_res"]["commit"]["cid"])
    forged = decode_frame(_recommit(raw, _flip_sig))  # consistent: decodes
    verifier = CommitVerifier(resolver)
    with pytest.raises(FrameError) as info:
        verifier.check(forged)
    assert info.value.rule == "SIG_INVALID"
    assert (info.value.seq, info.value.repo) == (forged.seq, stream.alice.did)
    assert {k: v for k, v in verifier.stats.items() if v} == {
        "invalid": 1,
        "lookups": 1,
    }
    # A stale key is re-resolved once before the verdict (the key may have rotated).
    stale = CommitVerifier(resolver, refresh_after=0.0)
    with pytest.raises(FrameError, match="SIG_INVALID"):
        stale.check(forged)
    assert stale.stats["lookups"] == 2 and stale.stats["forced_lookups"] == 1
    # The original still verifies: the flip, not the re-encoding, broke it.
    assert verifier.check(decode_frame(raw)).verified is True


def test_a_commit_of_another_repo_or_rev_is_refused(
    stream: Stream, resolver: IdentityResolver
) -> None:
    """The commit block must be the body's: refused when decoding, signed or not
    (COMMIT_MISMATCH); the verifier still checks frames made otherwise."""
    raw = stream.raw_commit(stream.writes["schema_res"]["commit"]["cid"])
    verifier = CommitVerifier(resolver)

    header, body = split(raw)
    body["repo"] = stream.bob.did  # bob's key resolves; the commit says alice
    err = refused(join(header, body), "COMMIT_MISMATCH", "/body/repo")
    assert err.repo == stream.bob.did and err.cid == body["commit"].encode()
    frame = decode_frame(raw)
    with pytest.raises(FrameError) as info:
        verifier.check(dataclasses.replace(frame, did=stream.bob.did))
    assert info.value.rule == "COMMIT_REPO_MISMATCH"

    header, body = split(raw)
    body["rev"] = "2222222222222"
    refused(join(header, body), "COMMIT_MISMATCH", "/body/rev")
    message = frame.message.model_copy(update={"rev": "2222222222222"})
    with pytest.raises(FrameError) as info:
        verifier.check(dataclasses.replace(frame, message=message))
    assert (info.value.rule, info.value.location) == (
        "COMMIT_REV_MISMATCH",
        "/body/rev",
    )

    def drop_prev(commit: dict[str, Any]) -> None:
        del commit["prev"]

    with pytest.raises(FrameError) as info:
        verifier.check(decode_frame(_recommit(raw, drop_prev)))
    assert info.value.rule == "COMMIT_INVALID"


def test_commit_blocks_are_checked_against_the_body_when_decoding(
    stream: Stream,
) -> None:
    """version, did and rev of the (hash-checked) commit block, for every commit
    and #sync: no key needed."""
    raw = stream.raw_commit(stream.writes["post_res"]["commit"]["cid"])

    def setting(**changes: Any) -> Callable[[dict[str, Any]], None]:
        return lambda commit: commit.update(changes)

    refused(_recommit(raw, setting(version=2)), "COMMIT_MISMATCH", "/body/commit")
    refused(_recommit(raw, setting(version="3")), "COMMIT_MISMATCH", "/body/commit")
    refused(
        _recommit(raw, setting(did=stream.bob.did)), "COMMIT_MISMATCH", "/body/repo"
    )
    refused(
        _recommit(raw, setting(rev="2222222222222")), "COMMIT_MISMATCH", "/body/rev"
    )
    refused(
        _recommit(raw, setting(data=b"\x01" * 36)), "COMMIT_INVALID", "/body/blocks"
    )
    raw_data = CID(b"\x01\x55\x12\x20" + bytes(32))
    refused(_recommit(raw, setting(data=raw_data)), "COMMIT_INVALID", "/body/blocks")
    big = _recommit(raw, setting(pad="x" * MAX_COMMIT_BYTES))
    err = refused(big, "COMMIT_INVALID", "/body/blocks")
    assert str(MAX_COMMIT_BYTES) in err.reason

    def as_list(commit: dict[str, Any]) -> None:
        items = [list(item) for item in commit.items()]
        commit.clear()
        commit["x"] = items  # type: ignore[assignment]

    refused(_recommit(raw, as_list), "COMMIT_INVALID", "/body/blocks")
    refused(
        _recommit(raw, lambda commit: commit.pop("version")),
        "COMMIT_INVALID",
        "/body/blocks",
    )


def _sync_frame(stream: Stream) -> bytes:
    return next(
        raw
        for raw in stream.frames
        if split(raw)[0].get("t") == "#sync"
        and split(raw)[1]["did"] == stream.alice.did
    )


def test_a_sync_root_must_be_the_bodys_commit(stream: Stream) -> None:
    raw = _sync_frame(stream)
    assert decode_frame(raw).commit_data is not None
    header, body = split(raw)
    junk = cbrrr.encode_dag_cbor({"hello": 1})
    body["blocks"] = write_car([CID(cid_of(junk))], [(cid_of(junk), junk)])
    refused(join(header, body), "COMMIT_INVALID", "/body/blocks")
    # the account's first commit, as a version 2 commit
    _, sections = read_car(split(raw)[1]["blocks"])
    commit = cbrrr.decode_dag_cbor(sections[0][1])
    assert isinstance(commit, dict) and commit["version"] == 3
    old = cbrrr.encode_dag_cbor(dict(commit, version=2))
    body["blocks"] = write_car([CID(cid_of(old))], [(cid_of(old), old)])
    refused(join(header, body), "COMMIT_MISMATCH", "/body/blocks")
    header, body = split(raw)
    body["rev"] = "2222222222222"
    refused(join(header, body), "COMMIT_MISMATCH", "/body/rev")
    header, body = split(raw)
    body["did"] = stream.bob.did
    refused(join(header, body), "COMMIT_MISMATCH", "/body/did")
    header, body = split(raw)
    body["blocks"] = write_car([CID(cid_of(b"\x01"))], [(cid_of(b"\x01"), b"\x01")])
    refused(join(header, body), "COMMIT_INVALID", "/body/blocks")


def test_an_unresolvable_did_is_not_verified_and_is_cached(
    stream: Stream, resolver: IdentityResolver
) -> None:
    raw = stream.raw_commit(stream.writes["schema_res"]["commit"]["cid"])
    nobody = "did:plc:" + "".join(
        secrets.choice("abcdefghijklmnopqrstuvwxyz234567") for _ in range(24)
    )
    header, body = split(_recommit(raw, lambda commit: commit.update(did=nobody)))
    body["repo"] = nobody
    frame = decode_frame(join(header, body))
    verifier = CommitVerifier(resolver, negative_ttl=3600)
    verdict = verifier.check(frame)
    assert verdict.verified is None and verdict.rule == "IDENTITY_UNRESOLVED"
    assert nobody in verdict.reason
    assert verifier.check(frame) == verdict
    assert verifier.stats["lookups"] == 1 and verifier.stats["unresolved"] == 2
    verifier.forget(nobody)
    verifier.check(frame)
    assert verifier.stats["lookups"] == 2
    # a second forget within refresh_interval is deferred: no lookup per #identity
    for _ in range(3):
        verifier.forget(nobody)
        assert verifier.check(frame).rule == "IDENTITY_UNRESOLVED"
    assert verifier.stats["lookups"] == 2


def test_an_identity_frame_drops_the_cached_key_once_per_interval(
    stream: Stream, resolver: IdentityResolver
) -> None:
    frames = stream.of(stream.alice.did)
    schema = decode_frame(
        stream.raw_commit(stream.writes["schema_res"]["commit"]["cid"])
    )
    verifier = CommitVerifier(resolver)
    assert verifier.check(schema).verified is True
    identity = next(f for f in frames if f.kind == "identity")
    assert verifier.check(identity).verified is None
    # the key was dropped and fetched again (the rev is now a replay)
    assert verifier.check(schema).rule == "REV_STALE"
    assert verifier.stats["lookups"] == 2
    # a relay interleaving #identity frames gets no further lookups
    for _ in range(5):
        verifier.check(identity)
        verifier.check(schema)
    assert verifier.stats["lookups"] == 2
    # ... and a bad signature with the suspect key is no verdict either way
    forged = decode_frame(
        _recommit(stream.raw_commit(schema.commit_cid or ""), _flip_sig)
    )
    verdict = verifier.check(forged)
    assert (verdict.verified, verdict.rule) == (None, "KEY_REFRESH_LIMITED")
    assert verifier.stats["lookups"] == 2 and verifier.stats["limited"] == 1
    # once the interval has passed, the deferred refresh happens
    short = CommitVerifier(resolver, refresh_interval=0.2)
    short.check(schema)
    short.forget(stream.alice.did)
    short.check(schema)
    short.forget(stream.alice.did)  # deferred
    time.sleep(0.3)
    short.check(schema)
    assert short.stats["lookups"] == 3


def test_forged_signatures_force_one_refresh_per_interval(
    stream: Stream, resolver: IdentityResolver
) -> None:
    raw = stream.raw_commit(stream.writes["schema_res"]["commit"]["cid"])
    forged = decode_frame(_recommit(raw, _flip_sig))
    verifier = CommitVerifier(resolver, refresh_after=0.0, refresh_interval=3600)
    for _ in range(5):
        with pytest.raises(FrameError, match="SIG_INVALID"):
            verifier.check(forged)
    assert verifier.stats["lookups"] == 2 and verifier.stats["forced_lookups"] == 1

    async def main() -> None:
        for _ in range(3):
            with pytest.raises(FrameError, match="SIG_INVALID"):
                await verifier.acheck(forged)

    asyncio.run(main())
    assert verifier.stats["lookups"] == 2 and verifier.stats["invalid"] == 8


def test_async_checks_share_one_lookup_per_did(
    stream: Stream, resolver: IdentityResolver
) -> None:
    schema = decode_frame(
        stream.raw_commit(stream.writes["schema_res"]["commit"]["cid"])
    )
    post = decode_frame(stream.raw_commit(stream.writes["post_res"]["commit"]["cid"]))
    verifier = CommitVerifier(resolver)

    async def main() -> list[Verdict]:
        return list(
            await asyncio.gather(
                *(verifier.acheck(schema) for _ in range(8)), verifier.acheck(post)
            )
        )

    verdicts = asyncio.run(main())
    # one lookup; the first check in call order wins, the others are replays
    assert [v.verified for v in verdicts] == [True] + [None] * 8
    assert [v.rule for v in verdicts[1:8]] == ["REV_STALE"] * 7
    assert verifier.stats["lookups"] == 1
    # a second event loop works with the same verifier (cached key)
    assert asyncio.run(verifier.acheck(schema)).rule == "REV_STALE"


def test_start_pipelines_lookups_and_keeps_each_dids_order(
    stream: Stream, resolver: IdentityResolver
) -> None:
    alice = [f for f in stream.of(stream.alice.did) if f.kind in ("commit", "sync")]
    bob = [f for f in stream.of(stream.bob.did) if f.kind in ("commit", "sync")]
    assert len(alice) >= 8 and bob

    async def main() -> None:
        verifier = CommitVerifier(resolver, policy="all")
        # bob's key first, so his frames need no lookup below
        assert (await verifier.start(bob[0])).verified is True
        futures = [verifier.start(f) for f in alice]
        # nothing awaited yet: alice's frames wait for one lookup, in order
        assert not any(f.done() for f in futures)
        assert verifier.pending == len(alice)
        later = verifier.start(bob[-1])
        # another DID with a cached key does not wait behind alice's lookup
        assert later.done() and later.result().verified is True
        verdicts = [await f for f in futures]  # the caller awaits in stream order
        assert [v.verified for v in verdicts] == [True] * len(alice), verdicts
        assert verifier.pending == 0 and verifier.stats["lookups"] == 2
        # a cached key: the future is done at once
        assert verifier.start(alice[-1]).done()

        # the order is start()'s: newest first makes the older ones replays
        fresh = CommitVerifier(resolver, policy="all")
        backwards = [fresh.start(f) for f in reversed(alice[-3:])]
        rules = [(await f).rule for f in backwards]
        assert rules == [None, "REV_STALE", "REV_STALE"]

        # a bad commit's future raises, and the DID's later frames still run
        raw = stream.raw_commit(stream.writes["schema_res"]["commit"]["cid"])
        forged = decode_frame(_recommit(raw, _flip_sig))
        other = CommitVerifier(resolver, policy="all")
        bad, good = other.start(forged), other.start(alice[-1])
        with pytest.raises(FrameError, match="SIG_INVALID"):
            await bad
        assert (await good).verified is True

    asyncio.run(main())


def test_check_with_key_agrees_with_the_did_document(
    stream: Stream, resolver: IdentityResolver
) -> None:
    did = stream.alice.did
    key = signing_key(resolver.did_document(did).doc, did)
    verifier = CommitVerifier(resolver, policy="all")
    bob_key = signing_key(resolver.did_document(stream.bob.did).doc, stream.bob.did)
    for frame in stream.of(did):
        if frame.commit_block is None:
            continue
        verifier.check_with_key(frame, key)
        with pytest.raises(FrameError, match="SIG_INVALID"):
            verifier.check_with_key(frame, bob_key)


# -- revs: replays and clocks ------------------------------------------------------


def test_replayed_and_reordered_commits_are_not_verified(
    stream: Stream, resolver: IdentityResolver
) -> None:
    frames = [f for f in stream.of(stream.alice.did) if f.kind == "commit" and f.ops]
    first, last = frames[0], frames[-1]
    verifier = CommitVerifier(resolver, policy="all")
    assert verifier.check(first).verified is True
    replay = verifier.check(first)
    assert (replay.verified, replay.rule) == (None, "REV_STALE")
    assert first.message.rev in replay.reason
    assert verifier.check(last).verified is True
    assert verifier.check(frames[1]).rule == "REV_STALE"  # older than the last
    assert verifier.stats["stale"] == 2 and verifier.stats["verified"] == 2
    # the signature is checked first: a forged replay is still a bad commit
    forged = decode_frame(
        _recommit(stream.raw_commit(first.commit_cid or ""), _flip_sig)
    )
    with pytest.raises(FrameError, match="SIG_INVALID"):
        verifier.check(forged)
    # a #sync may repeat the rev of the commit it announces, not go back
    sync = decode_frame(_sync_frame(stream))
    assert verifier.check(sync).rule == "REV_STALE"
    fresh = CommitVerifier(resolver, policy="all")
    first_commit = next(f for f in stream.of(stream.alice.did) if f.kind == "commit")
    assert (first_commit.message.rev, first_commit.commit_cid) == (
        sync.message.rev,
        sync.commit_cid,
    )
    assert fresh.check(first_commit).verified is True
    assert fresh.check(sync).verified is True
    # and a commit may follow the #sync that announced it
    other = CommitVerifier(resolver, policy="all")
    assert other.check(sync).verified is True
    assert other.check(first_commit).verified is True
    assert other.check(first_commit).rule == "REV_STALE"


def test_a_rev_from_the_future_is_not_verified(
    stream: Stream, resolver: IdentityResolver
) -> None:
    frame = decode_frame(
        stream.raw_commit(stream.writes["schema_res"]["commit"]["cid"])
    )
    written = _tid_seconds(frame.message.rev)
    # a clock 6 minutes behind the rev's timestamp
    early = CommitVerifier(resolver, clock=lambda: written - 360)
    verdict = early.check(frame)
    assert (verdict.verified, verdict.rule) == (None, "REV_FUTURE")
    assert early.last_rev(stream.alice.did) is None  # not kept
    assert early.stats["future"] == 1
    # within the allowed 5 minutes it verifies
    assert CommitVerifier(resolver, clock=lambda: written - 240).verify(frame) is True


# -- operations against the signed tree --------------------------------------------


def _forge_op(
    raw: bytes, *, path: str | None = None, action: str | None = None
) -> bytes:
    """``raw`` (a real one-op commit) with its record swapped for a forged one
    (added to the CAR under its true CID), the path optionally changed too: the
    commit block and its signature untouched (the reviewer's forge)."""
    header, body = split(raw)
    roots, sections = read_car(body["blocks"])
    forged = cbrrr.encode_dag_cbor({"$type": SCHEMA, "name": "FORGED by the relay"})
    sections.append((cid_of(forged), forged))
    body["blocks"] = write_car(roots, sections)
    op = body["ops"][0]
    op["cid"] = CID(cid_of(forged))
    if path is not None:
        op["path"] = path
    if action == "delete":
        op.update(action="delete", cid=None)
    return join(header, body)


def test_forged_operations_under_a_genuine_signature_are_refused(
    stream: Stream, resolver: IdentityResolver
) -> None:
    raw = stream.raw_commit(stream.writes["schema_res"]["commit"]["cid"])
    verifier = CommitVerifier(resolver, policy="dataset")
    rkey = stream.writes["schema_rkey"]
    cases = [
        # the reviewer's forge: another record at an attacker-chosen path
        (_forge_op(raw, path=f"{SCHEMA}/attacker-chosen-rkey"), "/body/ops/0/path"),
        # another record at the real path
        (_forge_op(raw), "/body/ops/0/cid"),
        # a delete of a record the signed tree holds
        (_forge_op(raw, action="delete"), "/body/ops/0/path"),
    ]
    for data, location in cases:
        frame = decode_frame(data)  # consistent: it decodes
        assert frame.touches_datasets
        with pytest.raises(FrameError) as info:
            verifier.check(frame)
        assert (info.value.rule, info.value.location) == ("OP_NOT_IN_COMMIT", location)
        assert info.value.seq == frame.seq and info.value.repo == stream.alice.did
    assert verifier.stats["invalid"] == 3 and verifier.stats["verified"] == 0
    # a delete of a record absent from the tree: the path is free, so the
    # proof holds (the signed tree is all a commit promises)
    absent = _forge_op(raw, path=f"{SCHEMA}/never-written", action="delete")
    assert prove_ops(decode_frame(absent)) is True
    assert rkey and verifier.check(decode_frame(raw)).verified is True


def _mst_nodes(raw: bytes) -> list[bytes]:
    """CIDs of the MST nodes in a commit's CAR (every block but the commit and the
    records its operations name)."""
    _, body = split(raw)
    named = {body["commit"].cid_bytes}
    named |= {op["cid"].cid_bytes for op in body["ops"] if op["cid"] is not None}
    return [cid for cid, _ in read_car(body["blocks"])[1] if cid not in named]


def test_operation_proofs_walk_real_multi_layer_trees(stream: Stream) -> None:
    """After 40 more records, the schema's commit proves its key through several
    MST nodes: dropping any node of the path leaves the proof incomplete."""
    raw = stream.raw_commit(stream.writes["schema_res"]["commit"]["cid"])
    frame = decode_frame(raw)
    assert prove_ops(frame) is True
    nodes = _mst_nodes(raw)
    data = frame.commit_data
    assert data in nodes

    def without(target: bytes) -> Frame:
        def drop(roots: list[CID], sections: list[tuple[bytes, bytes]]) -> None:
            sections[:] = [x for x in sections if x[0] != target]

        return decode_frame(_with_blocks(raw, drop))

    needed = [node for node in nodes if prove_ops(without(node)) is False]
    assert data in needed and len(needed) >= 2, (len(needed), len(nodes))
    # the walk is bounded
    with pytest.raises(FrameError) as info:
        prove_ops(frame, max_depth=1)
    assert info.value.rule == "MST_INVALID" and "deeper than 1" in info.value.reason
    assert info.value.location == "/body/ops/0/path"
    # a node that is not an MST node
    header, body = split(raw)
    junk = cbrrr.encode_dag_cbor({"e": [], "l": None, "x": 1})
    forged = _recommit(
        _with_blocks(raw, lambda roots, s: s.append((cid_of(junk), junk))),
        lambda commit: commit.update(data=CID(cid_of(junk))),
    )
    with pytest.raises(FrameError) as info:
        prove_ops(decode_frame(forged))
    assert (info.value.rule, info.value.cid) == ("MST_INVALID", link(cid_of(junk)))
    # a tooBig commit has nothing to prove with
    too_big = decode_frame(join(header, dict(body, tooBig=True, blocks=b"")))
    with pytest.raises(ValueError, match="CAR blocks"):
        prove_ops(too_big)


def test_missing_mst_nodes_are_no_verdict_and_bad_ones_are_errors(
    stream: Stream, resolver: IdentityResolver
) -> None:
    raw = stream.raw_commit(stream.writes["schema_res"]["commit"]["cid"])
    data = decode_frame(raw).commit_data
    assert data is not None

    def drop(roots: list[CID], sections: list[tuple[bytes, bytes]]) -> None:
        sections[:] = [s for s in sections if s[0] != data]

    verifier = CommitVerifier(resolver)
    verdict = verifier.check(decode_frame(_with_blocks(raw, drop)))
    assert (verdict.verified, verdict.rule) == (None, "PROOF_INCOMPLETE")
    assert verifier.stats["incomplete"] == 1
    # the signature was good: its rev is kept, so the full frame is now a replay
    assert verifier.check(decode_frame(raw)).rule == "REV_STALE"

    def tamper(roots: list[CID], sections: list[tuple[bytes, bytes]]) -> None:
        for i, (cid, block) in enumerate(sections):
            if cid == data:
                sections[i] = (cid, block[:-1] + bytes([block[-1] ^ 1]))

    with pytest.raises(FrameError) as info:
        CommitVerifier(resolver).check(decode_frame(_with_blocks(raw, tamper)))
    assert (info.value.rule, info.value.cid) == ("BLOCK_CID_MISMATCH", link(data))


# -- hostile frames ----------------------------------------------------------------


@pytest.fixture
def post_frame(stream: Stream) -> bytes:
    return stream.raw_commit(stream.writes["post_res"]["commit"]["cid"])


def refused(data: bytes | Any, rule: str, location: str | None = None) -> FrameError:
    with pytest.raises(FrameError) as info:
        decode_frame(data)
    err = info.value
    assert err.rule == rule, str(err)
    if location is not None:
        assert err.location == location, str(err)
    return err


def test_truncated_frames_and_trailing_bytes(post_frame: bytes) -> None:
    header_len = _cbrrr.decode_dag_cbor(post_frame, CID, False)[1]
    refused(b"", "FRAME_CBOR", "/header")
    refused(post_frame[:3], "FRAME_CBOR", "/header")
    refused(post_frame[:header_len], "FRAME_CBOR", "/body")
    for cut in (header_len + 1, len(post_frame) // 2, len(post_frame) - 1):
        refused(post_frame[:cut], "FRAME_CBOR", "/body")
    err = refused(post_frame + b"\x00", "FRAME_CBOR", "/body")
    assert "1 bytes follow the body" in err.reason
    refused(post_frame + post_frame, "FRAME_CBOR", "/body")
    refused("text", "FRAME_CBOR", "")
    assert decode_frame(bytearray(post_frame)).kind == "commit"


def test_wrong_headers(post_frame: bytes) -> None:
    _, body = split(post_frame)
    refused(join([1, "#commit"], body), "FRAME_HEADER", "/header")
    for op in ("1", True, 2, 0, None, -2):
        refused(join({"op": op, "t": "#commit"}, body), "FRAME_HEADER", "/header/op")
    refused(join({"op": 1}, body), "FRAME_HEADER", "/header/t")
    refused(join({"op": 1, "t": 7}, body), "FRAME_HEADER", "/header/t")
    refused(join({"op": 1, "t": b"#commit"}, body), "FRAME_HEADER", "/header/t")


def test_header_type_and_body_disagree(post_frame: bytes, stream: Stream) -> None:
    _, body = split(post_frame)
    err = refused(join({"op": 1, "t": "#identity"}, body), "FRAME_BODY", "/body/did")
    assert err.seq == body["seq"]
    identity = next(
        raw for raw in stream.frames if split(raw)[0].get("t") == "#identity"
    )
    _, ibody = split(identity)
    refused(join({"op": 1, "t": "#commit"}, ibody), "FRAME_BODY", "/body/rebase")
    refused(join({"op": 1, "t": "#account"}, ibody), "FRAME_BODY", "/body/active")
    # a body $type that is not the header's
    body["$type"] = "com.atproto.sync.subscribeRepos#identity"
    refused(join({"op": 1, "t": "#commit"}, body), "FRAME_BODY", "/body/$type")
    # the long form of t names the same message
    del body["$type"]
    long_t = {"op": 1, "t": "com.atproto.sync.subscribeRepos#commit"}
    assert decode_frame(join(long_t, body)).kind == "commit"


def test_error_frames_and_unknown_types_are_frames_not_errors() -> None:
    frame = decode_frame(
        join({"op": -1}, {"error": "FutureCursor", "message": "cursor in the future"})
    )
    assert (frame.kind, frame.error, frame.error_message, frame.seq) == (
        "error",
        "FutureCursor",
        "cursor in the future",
        None,
    )
    assert frame.event() is None and frame.events() == ()
    assert decode_frame(join({"op": -1}, {"error": "ConsumerTooSlow"})).error == (
        "ConsumerTooSlow"
    )
    refused(join({"op": -1}, {"message": "x"}), "FRAME_BODY", "/body/error")
    refused(
        join({"op": -1}, {"error": "X", "message": 5}), "FRAME_BODY", "/body/message"
    )
    refused(join({"op": -1}, ["error"]), "FRAME_BODY", "/body")
    unknown = decode_frame(
        join({"op": 1, "t": "#future"}, {"seq": 7, "did": "did:web:x.test"})
    )
    assert (unknown.kind, unknown.t, unknown.seq, unknown.did) == (
        "unknown",
        "#future",
        7,
        "did:web:x.test",
    )
    assert unknown.events() == () and unknown.message.py_type.endswith("#future")
    handle = decode_frame(
        join({"op": 1, "t": "#handle"}, {"seq": 8, "handle": "a.test"})
    )
    assert handle.kind == "unknown"
    info = decode_frame(
        join(
            {"op": 1, "t": "#info"}, {"name": "OutdatedCursor", "message": "m", "x": 1}
        )
    )
    assert info.event() == Info("OutdatedCursor", "m", {"x": 1})
    refused(join({"op": 1, "t": "#info"}, {"message": "m"}), "FRAME_BODY", "/body/name")


def test_body_fields_are_validated_by_the_generated_models(post_frame: bytes) -> None:
    header, body = split(post_frame)

    def with_(**changes: Any) -> bytes:
        return join(header, {**copy.deepcopy(body), **changes})

    refused(with_(seq=True), "FRAME_BODY", "/body/seq")
    # wire names only: the Python name of a field is an unknown field
    renamed = copy.deepcopy(body)
    renamed["too_big"] = renamed.pop("tooBig")
    refused(join(header, renamed), "FRAME_BODY", "/body/tooBig")
    refused(with_(repo="alice"), "FRAME_BODY", "/body/repo")
    refused(with_(rev="not-a-tid"), "FRAME_BODY", "/body/rev")
    refused(with_(time="2026-13-01T00:00:00Z"), "FRAME_BODY", "/body/time")
    refused(with_(blocks="text"), "FRAME_BODY", "/body/blocks")
    refused(with_(ops=[{"action": "create"}]), "FRAME_BODY", "/body/ops/0/path")
    too_many = [copy.deepcopy(body["ops"][0]) for _ in range(201)]
    refused(with_(ops=too_many), "FRAME_BODY", "/body/ops")
    refused(with_(blocks=b"\x00" * 2_000_001), "FRAME_BODY", "/body/blocks")
    # a map that looks like a link is not a link (data model: tag 42)
    refused(
        with_(commit={"$link": body["commit"].encode()}), "FRAME_BODY", "/body/commit"
    )
    ops = copy.deepcopy(body["ops"])
    ops[0]["cid"] = {"$link": ops[0]["cid"].encode()}
    refused(with_(ops=ops), "FRAME_BODY", "/body/ops/0/cid")
    # the year 1 at +01:00 is a valid Lexicon datetime but no UTC datetime
    err = refused(with_(time="0001-01-01T00:00:00+01:00"), "FRAME_BODY", "/body/time")
    assert "representable" in err.reason
    big = decode_frame(with_(time="2026-01-01T12:00:00.123456789+02:00"))
    assert big.time is not None and big.time.isoformat() == (
        "2026-01-01T10:00:00.123456+00:00"
    )


def test_operations_are_checked(post_frame: bytes) -> None:
    header, body = split(post_frame)

    def with_op(**changes: Any) -> bytes:
        ops = copy.deepcopy(body["ops"])
        ops[0].update(changes)
        return join(header, dict(body, ops=ops))

    for path in ("app.bsky.feed.post", "nope/abc", "app.bsky.feed.post/a/b", "a.b.c/"):
        refused(with_op(path=path), "OP_PATH", "/body/ops/0/path")
    refused(with_op(path="app.bsky.feed.post/.."), "OP_PATH", "/body/ops/0/path")
    refused(with_op(action="move"), "OP_ACTION", "/body/ops/0/action")
    refused(with_op(cid=None), "OP_CID", "/body/ops/0/cid")
    raw_cid = CID(b"\x01\x55\x12\x20" + body["ops"][0]["cid"].cid_bytes[4:])
    refused(with_op(cid=raw_cid), "CID_UNSUPPORTED", "/body/ops/0/cid")
    refused(join(header, dict(body, commit=raw_cid)), "CID_UNSUPPORTED", "/body/commit")
    # an op whose CID is not in the CAR
    other = CID(cid_of(b"\xa0"))
    err = refused(with_op(cid=other), "BLOCK_MISSING", "/body/ops/0/cid")
    assert err.cid == other.encode()
    # a delete needs no block
    frame = decode_frame(with_op(action="delete", cid=None))
    assert isinstance(frame.events()[0], Delete)


def test_seq_is_a_positive_bigint(post_frame: bytes, stream: Stream) -> None:
    header, body = split(post_frame)
    for seq in (0, -1, MAX_SEQ + 1, 2**64 - 1):
        err = refused(join(header, dict(body, seq=seq)), "FRAME_BODY", "/body/seq")
        assert err.seq is None and err.repo == stream.alice.did
    assert decode_frame(join(header, dict(body, seq=MAX_SEQ))).seq == MAX_SEQ
    identity = next(raw for raw in stream.frames if split(raw)[0]["t"] == "#identity")
    ih, ib = split(identity)
    refused(join(ih, dict(ib, seq=0)), "FRAME_BODY", "/body/seq")
    # a seq read from an unvalidated body (errors, unknown frames) is bounded too
    err = refused(join(header, dict(body, seq=-5, rev="x")), "FRAME_BODY", "/body/rev")
    assert err.seq is None
    err = refused(join(header, dict(body, seq=5, rev="x")), "FRAME_BODY", "/body/rev")
    assert err.seq == 5
    unknown = decode_frame(join({"op": 1, "t": "#future"}, {"seq": MAX_SEQ + 1}))
    assert unknown.kind == "unknown" and unknown.seq is None
    assert decode_frame(join({"op": 1, "t": "#future"}, {"seq": 3})).seq == 3


def test_a_link_shaped_map_is_never_a_link(post_frame: bytes) -> None:
    """Whatever tag-42 links the frame holds elsewhere: the reviewer's aliasing
    (the same CID string as a real link in blobs, or anywhere) does not help."""
    header, body = split(post_frame)
    real = body["ops"][0]["cid"]
    fake = {"$link": real.encode()}

    def with_(**changes: Any) -> bytes:
        return join(header, {**copy.deepcopy(body), **changes})

    ops = copy.deepcopy(body["ops"])
    ops[0]["cid"] = fake
    refused(with_(ops=ops, blobs=[real]), "FRAME_BODY", "/body/ops/0/cid")
    refused(with_(ops=ops, junk=[real]), "FRAME_BODY", "/body/ops/0/cid")
    ops = copy.deepcopy(body["ops"])
    ops[0]["prev"] = fake
    refused(with_(ops=ops), "FRAME_BODY", "/body/ops/0/prev")
    refused(with_(prevData=fake, junk=real), "FRAME_BODY", "/body/prevData")
    refused(with_(blobs=[real, fake]), "FRAME_BODY", "/body/blobs/1")
    err = refused(with_(commit=fake, junk=body["commit"]), "FRAME_BODY", "/body/commit")
    assert "map" in err.reason
    # a tooBig commit's operations are not read, but are checked all the same
    ops = copy.deepcopy(body["ops"])
    ops[0]["cid"] = fake
    refused(with_(tooBig=True, blocks=b"", ops=ops), "FRAME_BODY", "/body/ops/0/cid")
    # real links everywhere are fine
    assert decode_frame(with_(blobs=[real], prevData=real)).kind == "commit"


def test_prev_cids_deletes_and_duplicate_paths(post_frame: bytes) -> None:
    header, body = split(post_frame)
    raw_codec = CID(b"\x01\x55\x12\x20" + bytes(32))

    def with_(**changes: Any) -> bytes:
        return join(header, {**copy.deepcopy(body), **changes})

    refused(with_(prevData=raw_codec), "CID_UNSUPPORTED", "/body/prevData")
    ops = copy.deepcopy(body["ops"])
    ops[0].update(action="update", prev=raw_codec)
    refused(with_(ops=ops), "CID_UNSUPPORTED", "/body/ops/0/prev")
    ops = copy.deepcopy(body["ops"])
    ops[0]["action"] = "delete"  # keeping its cid
    refused(with_(ops=ops), "OP_CID", "/body/ops/0/cid")
    ops = copy.deepcopy(body["ops"])
    again = copy.deepcopy(ops[0])
    other = dict(again, path=POST + "/other")
    refused(with_(ops=[ops[0], other, again]), "OP_DUPLICATE", "/body/ops/2/path")
    assert len(decode_frame(with_(ops=[ops[0], other])).ops) == 2


def _with_blocks(
    raw: bytes, change: Callable[[list[CID], list[tuple[bytes, bytes]]], Any]
) -> bytes:
    header, body = split(raw)
    roots, sections = read_car(body["blocks"])
    result = change(roots, sections)
    if isinstance(result, bytes):
        body["blocks"] = result
    else:
        body["blocks"] = write_car(roots, sections)
    return join(header, body)


def _record_block(raw: bytes) -> bytes:
    return split(raw)[1]["ops"][0]["cid"].cid_bytes  # type: ignore[no-any-return]


def test_car_blocks_are_checked_against_their_cids(post_frame: bytes) -> None:
    record_cid = _record_block(post_frame)
    commit_cid = split(post_frame)[1]["commit"].cid_bytes

    def tamper(target: bytes) -> Callable[[list[CID], list[tuple[bytes, bytes]]], None]:
        def change(roots: list[CID], sections: list[tuple[bytes, bytes]]) -> None:
            for i, (cid, block) in enumerate(sections):
                if cid == target:
                    sections[i] = (cid, block[:-1] + bytes([block[-1] ^ 1]))

        return change

    err = refused(_with_blocks(post_frame, tamper(record_cid)), "BLOCK_CID_MISMATCH")
    assert err.cid == link(record_cid) and err.location == "/body/blocks"
    err = refused(_with_blocks(post_frame, tamper(commit_cid)), "BLOCK_CID_MISMATCH")
    assert err.cid == link(commit_cid)

    def drop(target: bytes) -> Callable[[list[CID], list[tuple[bytes, bytes]]], None]:
        def change(roots: list[CID], sections: list[tuple[bytes, bytes]]) -> None:
            sections[:] = [s for s in sections if s[0] != target]

        return change

    refused(
        _with_blocks(post_frame, drop(record_cid)), "BLOCK_MISSING", "/body/ops/0/cid"
    )
    refused(_with_blocks(post_frame, drop(commit_cid)), "BLOCK_MISSING", "/body/commit")
    # an MST node is read (and hashed) only by the operation proofs
    mst = decode_frame(post_frame).commit_data
    assert mst is not None
    frame = decode_frame(_with_blocks(post_frame, tamper(mst)))
    with pytest.raises(FrameError) as info:
        prove_ops(frame)
    assert (info.value.rule, info.value.cid) == ("BLOCK_CID_MISMATCH", link(mst))


def test_car_framing_is_checked(post_frame: bytes) -> None:
    car = split(post_frame)[1]["blocks"]
    roots, sections = read_car(car)

    def frame_with(data: bytes) -> bytes:
        return _with_blocks(post_frame, lambda r, s: data)

    def bad(data: bytes, why: str) -> None:
        err = refused(frame_with(data), "CAR_INVALID", "/body/blocks")
        assert why in err.reason, err.reason

    bad(b"", "truncated varint")
    bad(b"\xff" * 10, "longer than 9 bytes")
    bad(b"\x80\x00", "not minimally encoded")
    bad(b"\xff\xff\xff\xff\xff\xff\xff\xff\x7f" + car, "does not fit")
    bad(varint(3) + b"\xa0", "does not fit")
    header = cbrrr.encode_dag_cbor({"version": 1, "roots": roots})
    body = car[len(varint(len(header))) + len(header) :]
    bad(varint(len(header) + 1) + header + b"\x00" + body, "followed by bytes")
    for wrong in (
        {"version": 2, "roots": roots},
        {"version": 1, "roots": []},
        {"version": 1, "roots": [bytes(roots[0].cid_bytes)]},
        {"roots": roots},
        [1, roots],
    ):
        h = cbrrr.encode_dag_cbor(wrong)
        bad(varint(len(h)) + h + body, "CAR header is not")
    h = b"\xa1\x61"  # a map whose key runs past its section
    bad(varint(len(h)) + h + body, "not DAG-CBOR")
    # the header is capped before it is decoded: many roots, or an item bomb
    many_roots = cbrrr.encode_dag_cbor({"version": 1, "roots": roots * 30})
    assert len(many_roots) > MAX_CAR_HEADER_BYTES
    bad(varint(len(many_roots)) + many_roots + body, f"over {MAX_CAR_HEADER_BYTES}")
    n = 1_000_000
    bomb = (
        b"\xa3\x61x\x9a"
        + n.to_bytes(4, "big")
        + b"\x80" * n
        + cbrrr.encode_dag_cbor("roots")
        + cbrrr.encode_dag_cbor(roots)
        + cbrrr.encode_dag_cbor("version")
        + b"\x01"
    )
    bad(varint(len(bomb)) + bomb + body, f"over {MAX_CAR_HEADER_BYTES}")
    fits = cbrrr.encode_dag_cbor({"version": 1, "roots": roots * 20})
    assert len(fits) <= MAX_CAR_HEADER_BYTES
    assert decode_frame(frame_with(varint(len(fits)) + fits + body)).kind == "commit"
    # a section announcing far more bytes than there are
    bad(varint(len(header)) + header + varint(2**60) + body, "is truncated")
    bad(varint(len(header)) + header + varint(36) + sections[0][0], "too short")
    raw_codec = b"\x01\x55\x12\x20" + sections[0][0][4:]
    bad(write_car(roots, [(raw_codec, sections[0][1]), *sections[1:]]), "not CIDv1")
    # the first root must be the frame's commit
    other_root = CID(sections[-1][0])
    if other_root.cid_bytes == roots[0].cid_bytes:
        other_root = CID(sections[0][0])
    bad(write_car([other_root], sections), "first root is not the commit")
    # a second root is allowed (the spec speaks of the first)
    assert decode_frame(frame_with(write_car([roots[0], other_root], sections)))
    # too many blocks
    fillers = [cbrrr.encode_dag_cbor(f"filler {i}") for i in range(40)]
    many = sections + [(cid_of(block), block) for block in fillers]
    with pytest.raises(FrameError, match="more than 10 blocks"):
        decode_frame(frame_with(write_car(roots, many)), max_blocks=10)


def _with_record(raw: bytes, block: bytes, *, cid: bytes | None = None) -> bytes:
    """``raw`` (a one-op commit) with its record block replaced by ``block`` under
    ``cid`` (default: the block's true CID)."""
    header, body = split(raw)
    roots, sections = read_car(body["blocks"])
    old = body["ops"][0]["cid"].cid_bytes
    new = cid or cid_of(block)
    sections = [(c, b) for c, b in sections if c != old] + [(new, block)]
    body["blocks"] = write_car(roots, sections)
    body["ops"][0]["cid"] = CID(new)
    return join(header, body)


def nested(depth: int) -> dict[str, Any]:
    """A record nesting ``depth`` maps/arrays, the record map included."""
    value: Any = 0
    for _ in range(depth - 1):
        value = [value]
    return {"$type": POST, "v": value}


def test_records_are_checked(post_frame: bytes) -> None:
    ok = decode_frame(_with_record(post_frame, cbrrr.encode_dag_cbor({"a": 1})))
    assert ok.ops[0].record == {"a": 1}
    loc = "/body/ops/0/cid"
    refused(_with_record(post_frame, cbrrr.encode_dag_cbor([1, 2])), "RECORD_CBOR", loc)
    refused(
        _with_record(post_frame, b"\xa1\x61a\xfb" + b"\x00" * 8), "RECORD_CBOR", loc
    )
    refused(_with_record(post_frame, b"\xa1\x61a\x01\x00"), "RECORD_CBOR", loc)
    refused(_with_record(post_frame, b"\xa2\x61b\x01\x61a\x02"), "RECORD_CBOR", loc)
    refused(_with_record(post_frame, b"\xa1\x61a\x18\x01"), "RECORD_CBOR", loc)
    link_key = b"\xa1\x65$link\x61x"
    refused(_with_record(post_frame, link_key), "RECORD_CBOR", loc)
    refused(_with_record(post_frame, b"\xa1\x61a\x9f\xff"), "RECORD_CBOR", loc)


def test_record_nesting_is_bounded(post_frame: bytes) -> None:
    at_limit = decode_frame(
        _with_record(post_frame, cbrrr.encode_dag_cbor(nested(MAX_RECORD_DEPTH)))
    )
    assert at_limit.ops[0].record == nested(MAX_RECORD_DEPTH)
    err = refused(
        _with_record(post_frame, cbrrr.encode_dag_cbor(nested(MAX_RECORD_DEPTH + 1))),
        "RECORD_TOO_DEEP",
        "/body/ops/0/cid",
    )
    assert err.seq == split(post_frame)[1]["seq"]
    # a big deep record is caught by the pre-scan, before it is built
    deep = cbrrr.encode_dag_cbor({"a": "x" * MAX_ITEMS, "b": nested(10_000)["v"]})
    refused(_with_record(post_frame, deep), "RECORD_TOO_DEEP", "/body/ops/0/cid")
    # an empty array counts as a level too
    value: Any = []
    for _ in range(MAX_RECORD_DEPTH - 1):
        value = [value]
    refused(
        _with_record(post_frame, cbrrr.encode_dag_cbor({"v": value})),
        "RECORD_TOO_DEEP",
    )


def test_items_are_bounded(post_frame: bytes) -> None:
    header, body = split(post_frame)
    # a big record with few items is fine
    big = {"$type": POST, "text": "x" * (MAX_ITEMS + 10)}
    frame = decode_frame(_with_record(post_frame, cbrrr.encode_dag_cbor(big)))
    assert frame.ops[0].record == big
    many = cbrrr.encode_dag_cbor({"v": [0] * (MAX_ITEMS + 1)})
    err = refused(_with_record(post_frame, many), "RECORD_ITEMS", "/body/ops/0/cid")
    assert str(MAX_ITEMS) in err.reason
    # an unknown body field of many small items
    refused(join(header, dict(body, junk=[{}] * MAX_ITEMS)), "FRAME_ITEMS", "")
    refused(
        join(
            header, dict(body, junk=nested(MAX_RECORD_DEPTH + 1), pad="x" * MAX_ITEMS)
        ),
        "FRAME_TOO_DEEP",
        "",
    )
    # smaller frames are not pre-scanned, their body depth is checked after decoding
    refused(
        join(header, dict(body, junk=nested(MAX_RECORD_DEPTH))),
        "FRAME_TOO_DEEP",
        "/body",
    )
    assert decode_frame(join(header, dict(body, junk=nested(MAX_RECORD_DEPTH - 1))))


def test_frame_size_is_bounded(post_frame: bytes) -> None:
    refused(b"\x00" * (MAX_FRAME_BYTES + 1), "FRAME_TOO_BIG", "")
    with pytest.raises(FrameError, match="over 100"):
        decode_frame(post_frame, max_bytes=100)
    assert decode_frame(post_frame, max_bytes=len(post_frame)).kind == "commit"


def test_too_big_commits_have_no_record_events(post_frame: bytes) -> None:
    header, body = split(post_frame)
    frame = decode_frame(join(header, dict(body, tooBig=True, blocks=b"")))
    commit = frame.event()
    assert isinstance(commit, Commit)
    assert commit.too_big and commit.ops == () and frame.commit_block is None
    assert commit.commit_cid == body["commit"].encode()
    assert frame.events() == ()
    assert CommitVerifier(policy="all").check(frame).verified is None
