"""Hostile ``subscribeRepos`` frames: mutations of real frames of the real local PDS
(commits with records, links and bytes, a ``science.alt.dataset.schema``, an update,
a delete, ``#identity``, ``#account``, ``#sync``) go through
:func:`~atdata_runtime.firehose.frames.decode_frame`.

Byte-level mutants (flips, truncations, insertions, deletions, splices),
structure-aware ones (a header or body field, an operation field or a CAR section
replaced, dropped, reordered or duplicated, then re-encoded) must either decode or
be refused with a :class:`~atdata_runtime.firehose.frames.FrameError` of a known
rule with a location in the frame; anything else escaping is a failure. A frame that
decodes must keep the codec's promise: every record event's record re-encodes to
exactly the bytes its CID names; and its operation proof
(:func:`~atdata_runtime.firehose.frames.prove_ops`) gives a bool or a located
proof rule. MST mutants (the root node's entries changed, dropped, reordered,
duplicated, or the node replaced, and re-linked from the commit) test the proof
walk itself.

Inputs built to exhaust memory (3 MiB frames of nested arrays, of empty maps, of
45,000 tiny CAR blocks, of records adding up to 2 MB of one-byte items; varints and
lengths claiming 2⁶⁰ bytes) run in a bounded child process whose peak RSS is
asserted against a baseline decode of the same size (at most 32 MiB more; without
the item budget a 3 MiB frame of nested arrays takes 400 MiB).

Fixed seeds (``derandomize=True``).
"""

from __future__ import annotations

import copy
from typing import Any

import cbrrr
import pytest
from atdata_gen.testing.localnet import LocalNetwork, free_port
from atdata_runtime.firehose.frames import (
    MAX_FRAME_BYTES,
    Frame,
    FrameError,
    decode_frame,
    prove_ops,
)
from cbrrr import CID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ..test_firehose_frames import (
    POST,
    SCHEMA,
    THING,
    _xrpc,
    cid_of,
    join,
    read_car,
    read_stream,
    split,
    varint,
    write_car,
)
from .bounded import run_bounded

RULES = {
    "FRAME_TOO_BIG",
    "FRAME_CBOR",
    "FRAME_HEADER",
    "FRAME_BODY",
    "FRAME_ITEMS",
    "FRAME_TOO_DEEP",
    "CID_UNSUPPORTED",
    "CAR_INVALID",
    "BLOCK_MISSING",
    "BLOCK_CID_MISMATCH",
    "OP_ACTION",
    "OP_PATH",
    "OP_CID",
    "OP_DUPLICATE",
    "COMMIT_INVALID",
    "COMMIT_MISMATCH",
    "RECORD_CBOR",
    "RECORD_TOO_DEEP",
    "RECORD_ITEMS",
}
PROOF_RULES = {"OP_NOT_IN_COMMIT", "MST_INVALID", "BLOCK_CID_MISMATCH"}
"""What :func:`prove_ops` may raise."""
SETTINGS = settings(
    derandomize=True,
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture(scope="module")
def frames(net: LocalNetwork) -> list[bytes]:
    """Real frames of one fresh account: every kind the PDS sends."""
    alice = net.create_account(f"fuzz-frames-{free_port()}")
    did = alice.did

    def call(method: str, body: dict[str, Any]) -> dict[str, Any]:
        return _xrpc(net, alice, method, body)

    post = call(
        "com.atproto.repo.createRecord",
        {
            "repo": did,
            "collection": POST,
            "record": {
                "$type": POST,
                "text": "fuzz",
                "createdAt": "2026-01-01T00:00:00Z",
            },
        },
    )
    call(
        "com.atproto.repo.createRecord",
        {
            "repo": did,
            "collection": THING,
            "rkey": "t",
            "record": {
                "$type": THING,
                "b": {"$bytes": "3q2+7w"},
                "l": {"$link": post["cid"]},
                "a": [1, -1, None, True, "ü", {"k": []}],
            },
        },
    )
    call(
        "com.atproto.repo.putRecord",
        {
            "repo": did,
            "collection": SCHEMA,
            "rkey": "Fuzz:1.0.0",
            "record": {"$type": SCHEMA, "name": "Fuzz", "version": "1.0.0"},
        },
    )
    call(
        "com.atproto.repo.putRecord",
        {
            "repo": did,
            "collection": THING,
            "rkey": "t",
            "record": {"$type": THING, "v": 2},
        },
    )
    last = call(
        "com.atproto.repo.deleteRecord",
        {"repo": did, "collection": THING, "rkey": "t"},
    )
    out = [
        raw
        for raw in read_stream(net, last["commit"]["rev"])
        if split(raw)[1].get("did", split(raw)[1].get("repo")) == did
    ]
    kinds = {split(raw)[0]["t"] for raw in out}
    assert {"#commit", "#identity", "#account", "#sync"} <= kinds, kinds
    return out


def check(data: bytes) -> Frame | None:
    """Decode ``data``: a frame that keeps the codec's promises, or ``None`` after a
    clean, located ``FrameError``. Anything else propagates and fails the test."""
    try:
        frame = decode_frame(data)
    except FrameError as exc:
        assert exc.rule in RULES, exc
        assert exc.location == "" or exc.location.startswith(("/header", "/body")), exc
        assert exc.reason and len(str(exc)) < 2000
        return None
    events = frame.events()
    event = frame.event()
    if frame.kind == "commit":
        assert frame.seq is not None and frame.did is not None
        assert event is not None and len(events) == len(frame.ops)
        for op in frame.ops:
            if op.record is not None:
                block = cbrrr.encode_dag_cbor(op.record, atjson_mode=True)
                assert CID(cid_of(block)).encode() == op.cid
        if frame.commit_block is not None:
            assert CID(cid_of(frame.commit_block)).encode() == frame.commit_cid
            prove(frame)
    return frame


def prove(frame: Frame) -> bool | None:
    """:func:`prove_ops` of a decoded commit: a bool, or ``None`` after a clean,
    located ``FrameError`` of a proof rule."""
    try:
        return prove_ops(frame)
    except FrameError as exc:
        assert exc.rule in PROOF_RULES, exc
        assert exc.location.startswith("/body/"), exc
        assert exc.reason and len(str(exc)) < 2000
        return None


def test_every_real_frame_decodes(frames: list[bytes]) -> None:
    for raw in frames:
        frame = check(raw)
        assert frame is not None
        if frame.kind == "commit":
            assert prove_ops(frame) is True  # the local PDS sends the MST nodes


@SETTINGS
@given(data=st.data())
def test_byte_mutants_decode_or_fail_cleanly(
    frames: list[bytes], data: st.DataObject
) -> None:
    raw = bytearray(data.draw(st.sampled_from(frames), label="frame"))
    for _ in range(data.draw(st.integers(1, 4), label="mutations")):
        kind = data.draw(
            st.sampled_from(["flip", "truncate", "insert", "delete", "splice", "set"])
        )
        pos = data.draw(st.integers(0, max(len(raw) - 1, 0)), label="pos")
        if kind == "flip" and raw:
            raw[pos] ^= 1 << data.draw(st.integers(0, 7))
        elif kind == "truncate":
            del raw[pos:]
        elif kind == "insert":
            raw[pos:pos] = data.draw(st.binary(min_size=1, max_size=16))
        elif kind == "delete":
            del raw[pos : pos + data.draw(st.integers(1, 64))]
        elif kind == "splice":
            other = data.draw(st.sampled_from(frames))
            start = data.draw(st.integers(0, len(other)))
            raw[pos:] = other[start:]
        elif raw:
            raw[pos] = data.draw(
                st.sampled_from([0x00, 0x18, 0x1B, 0x5B, 0x9B, 0xBB, 0xD8, 0xFF])
            )
    check(bytes(raw))


CIDS = st.binary(min_size=0, max_size=40).map(lambda b: CID(b"\x01\x71\x12\x20" + b))
STRINGS = st.text(max_size=40) | st.sampled_from(
    [
        "create",
        "update",
        "delete",
        "app.bsky.feed.post/3k",
        "app.bsky.feed.post",
        "app.bsky.feed.post/a/b",
        "science.alt.dataset.entry/x",
        "science.alt.dataset.entry/..",
    ]
)
VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.text(max_size=40)
    | st.binary(max_size=40)
    | CIDS
    | st.sampled_from(
        [
            "create",
            "update",
            "delete",
            "app.bsky.feed.post/3k",
            "science.alt.dataset.entry/x",
            "did:plc:aaaaaaaaaaaaaaaaaaaaaaaa",
            "2026-01-01T00:00:00Z",
            "3n3mgezcfps2z",
            "#commit",
        ]
    ),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path into ``value``'s maps and lists (not into bytes)."""
    out = [prefix]
    if isinstance(value, dict):
        for key, item in value.items():
            out += _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            out += _paths(item, (*prefix, i))
    return out


@SETTINGS
@given(data=st.data())
def test_structure_mutants_decode_or_fail_cleanly(
    frames: list[bytes], data: st.DataObject
) -> None:
    header, body = split(data.draw(st.sampled_from(frames), label="frame"))
    doc = {"header": header, "body": copy.deepcopy(body)}
    for _ in range(data.draw(st.integers(1, 3), label="mutations")):
        paths = [p for p in _paths(doc) if len(p) > 1]
        in_ops = [p for p in paths if p[:2] == ("body", "ops") and len(p) > 3]
        if in_ops and data.draw(st.booleans(), label="in ops"):
            paths = in_ops  # operations are where most checks are
        path = data.draw(st.sampled_from(paths), label="path")
        parent: Any = doc
        for key in path[:-1]:
            parent = parent[key]
        action = data.draw(st.sampled_from(["replace", "drop", "add"]), label="action")
        if action == "replace":
            # operation fields are strings: mostly strings there
            strings = path[:2] == ("body", "ops") and data.draw(st.booleans())
            parent[path[-1]] = data.draw(STRINGS if strings else VALUES, label="value")
        elif action == "drop":
            del parent[path[-1]]
        elif isinstance(parent, dict):
            parent[data.draw(st.text(max_size=8), label="key")] = data.draw(VALUES)
        else:
            parent.append(data.draw(VALUES, label="item"))
    try:
        raw = join(doc["header"], doc["body"])
    except (TypeError, ValueError, OverflowError):  # not encodable
        return
    check(raw)


@SETTINGS
@given(data=st.data())
def test_car_mutants_decode_or_fail_cleanly(
    frames: list[bytes], data: st.DataObject
) -> None:
    commits = [f for f in frames if split(f)[0]["t"] in ("#commit", "#sync")]
    header, body = split(data.draw(st.sampled_from(commits), label="frame"))
    roots, sections = read_car(body["blocks"])
    for _ in range(data.draw(st.integers(1, 3), label="mutations")):
        if not sections:
            break
        i = data.draw(st.integers(0, len(sections) - 1), label="section")
        kind = data.draw(
            st.sampled_from(["drop", "duplicate", "swap", "flip", "rehash", "recid"])
        )
        cid, block = sections[i]
        if kind == "drop":
            del sections[i]
        elif kind == "duplicate":
            sections.insert(data.draw(st.integers(0, len(sections))), (cid, block))
        elif kind == "swap":
            j = data.draw(st.integers(0, len(sections) - 1))
            sections[i], sections[j] = sections[j], sections[i]
        elif kind == "flip" and block:
            pos = data.draw(st.integers(0, len(block) - 1))
            block = block[:pos] + bytes([block[pos] ^ 0x40]) + block[pos + 1 :]
            sections[i] = (cid, block)
        elif kind == "rehash":
            # a new block under its true CID: consistent, but not what ops name
            new = cbrrr.encode_dag_cbor(data.draw(VALUES, label="block"))
            sections[i] = (cid_of(new), new)
        else:
            sections[i] = (cid[:-1] + bytes([cid[-1] ^ 1]), block)
    if data.draw(st.booleans(), label="reroot"):
        roots = data.draw(
            st.lists(
                st.sampled_from([CID(c) for c, _ in sections] or [roots[0]]), max_size=2
            )
        )
    body["blocks"] = write_car(roots, sections)
    check(join(header, body))


@SETTINGS
@given(data=st.data())
def test_record_mutants_decode_or_fail_cleanly(
    frames: list[bytes], data: st.DataObject
) -> None:
    """A commit whose first record block is replaced by another, under its true
    CID (so the CAR is consistent): any DAG-CBOR value or any bytes."""
    commits = [f for f in frames if split(f)[0]["t"] == "#commit"]
    with_ops = [f for f in commits if any(o["cid"] for o in split(f)[1]["ops"])]
    header, body = split(data.draw(st.sampled_from(with_ops), label="frame"))
    roots, sections = read_car(body["blocks"])
    if data.draw(st.booleans(), label="cbor"):
        value = data.draw(VALUES | st.dictionaries(st.text(max_size=8), VALUES))
        try:
            block = cbrrr.encode_dag_cbor(value)
        except (TypeError, ValueError, OverflowError):
            return
    else:
        block = data.draw(st.binary(min_size=1, max_size=64), label="bytes")
    cid = cid_of(block)
    sections.append((cid, block))
    op = next(o for o in body["ops"] if o["cid"])
    op["cid"] = CID(cid)
    body["blocks"] = write_car(roots, sections)
    check(join(header, body))


def _rewrite_root(raw: bytes, node: Any) -> bytes | None:
    """``raw`` (a commit) with the MST root node replaced by ``node`` (encoded
    under its true CID) and the commit block's ``data`` pointing at it (the commit
    re-encoded under its new CID: CAR root, section and body updated; the
    signature no longer holds, which :func:`prove_ops` does not need)."""
    header, body = split(raw)
    roots, sections = read_car(body["blocks"])
    old_commit = body["commit"].cid_bytes
    try:
        block = cbrrr.encode_dag_cbor(node)
    except (TypeError, ValueError, OverflowError):
        return None
    new_root = cid_of(block)
    out = []
    for cid, data in sections:
        if cid == old_commit:
            commit = cbrrr.decode_dag_cbor(data)
            assert isinstance(commit, dict)
            commit["data"] = CID(new_root)
            data = cbrrr.encode_dag_cbor(commit)
            cid = cid_of(data)
            body["commit"] = CID(cid)
            roots = [CID(cid)]
        out.append((cid, data))
    out.append((new_root, block))
    body["blocks"] = write_car(roots, out)
    return join(header, body)


@SETTINGS
@given(data=st.data())
def test_mst_mutants_prove_or_fail_cleanly(
    frames: list[bytes], data: st.DataObject
) -> None:
    """A commit whose MST root node is mutated (an entry field replaced, dropped or
    added, entries reordered or duplicated, the node replaced by any value) and
    re-linked from the commit: :func:`prove_ops` proves, finds the proof
    incomplete, or fails with a proof rule, never anything else."""
    with_ops = [
        f for f in frames if split(f)[0]["t"] == "#commit" and split(f)[1]["ops"]
    ]
    raw = data.draw(st.sampled_from(with_ops), label="frame")
    frame = decode_frame(raw)
    assert frame.commit_data is not None and frame.car_blocks is not None
    root_block = frame.car_blocks.get(frame.commit_data)
    assert root_block is not None
    node: Any = cbrrr.decode_dag_cbor(bytes(root_block))
    for _ in range(data.draw(st.integers(1, 3), label="mutations")):
        kind = data.draw(
            st.sampled_from(["field", "drop", "add", "swap", "dup", "value"]),
            label="kind",
        )
        entries = node.get("e") if isinstance(node, dict) else None
        if kind == "value" or not isinstance(entries, list) or not entries:
            node = data.draw(VALUES | st.dictionaries(st.text(max_size=2), VALUES))
            continue
        i = data.draw(st.integers(0, len(entries) - 1), label="entry")
        entry = entries[i]
        if kind == "swap" and len(entries) > 1:
            j = data.draw(st.integers(0, len(entries) - 1))
            entries[i], entries[j] = entries[j], entries[i]
        elif kind == "dup":
            entries.insert(i, copy.deepcopy(entry))
        elif isinstance(entry, dict) and entry:
            key = data.draw(st.sampled_from(sorted(entry)), label="key")
            if kind == "drop":
                del entry[key]
            elif kind == "add":
                entry[data.draw(st.text(max_size=3))] = data.draw(VALUES)
            else:
                entry[key] = data.draw(
                    VALUES
                    | st.integers(0, 64)
                    | st.binary(max_size=40)
                    | st.sampled_from([CID(c) for c in _cids(raw)])
                )
    mutant = _rewrite_root(raw, node)
    if mutant is None:
        return
    got = check(mutant)
    if got is not None and got.kind == "commit":
        prove(got)


def _cids(raw: bytes) -> list[bytes]:
    return [cid for cid, _ in read_car(split(raw)[1]["blocks"])[1]]


# -- memory and time: bounded child processes -------------------------------------

_CHILD = """
import cbrrr
from atdata_runtime.firehose.frames import decode_frame, FrameError, MAX_FRAME_BYTES
{build}
try:
    decode_frame(data)
    _result["value"] = "decoded"
except FrameError as exc:
    _result["value"] = exc.rule
"""

_PRELUDE = """
header = cbrrr.encode_dag_cbor({"op": 1, "t": "#commit"})
room = MAX_FRAME_BYTES - len(header) - 64
"""

HOSTILE = {
    # the body: one array nested three million deep
    "nested arrays": (
        _PRELUDE + 'data = header + b"\\x81" * room + b"\\x00"',
        "FRAME_TOO_DEEP",
    ),
    # an unknown body field of three million empty maps
    "empty maps": (
        _PRELUDE
        + 'data = header + b"\\xa1\\x61x\\x9a" + room.to_bytes(4, "big") + b"\\xa0" * room',
        "FRAME_ITEMS",
    ),
    # a map claiming 2**32 entries in a small frame
    "huge map head": (
        _PRELUDE + 'data = header + b"\\xba\\xff\\xff\\xff\\xff"',
        "FRAME_CBOR",
    ),
    # a byte string claiming 2**60 bytes
    "huge string head": (
        _PRELUDE + 'data = header + b"\\xa1\\x61x\\x5b" + (2**60).to_bytes(8, "big")',
        "FRAME_CBOR",
    ),
    "one byte over": (
        _PRELUDE + 'data = b"\\x00" * (MAX_FRAME_BYTES + 1)',
        "FRAME_TOO_BIG",
    ),
}


def _commit_with(records: list[bytes], frame: bytes) -> bytes:
    """``frame`` (a one-op commit) with its op repeated for each block of
    ``records`` (the Lexicon allows 200 ops) and the blocks added to its CAR."""
    header, body = split(frame)
    roots, sections = read_car(body["blocks"])
    op = body["ops"][0]
    ops = []
    for i, block in enumerate(records):
        cid = cid_of(block)
        sections.append((cid, block))
        ops.append(dict(op, cid=CID(cid), path=f"{POST}/r{i}"))
    body["ops"] = ops
    body["blocks"] = write_car(roots, sections)
    return join(header, body)


def test_hostile_sizes_stay_bounded(frames: list[bytes], tmp_path: Any) -> None:
    post = next(
        f
        for f in frames
        if split(f)[0]["t"] == "#commit"
        and [o["path"].split("/")[0] for o in split(f)[1]["ops"]] == [POST]
    )
    # 200 records of 9,800 one-byte items each: 1.97 MB of blocks, 1.96M items
    records = [cbrrr.encode_dag_cbor({"v": [0] * 9_800, "i": i}) for i in range(200)]
    items_frame = _commit_with(records, post)
    assert len(items_frame) < MAX_FRAME_BYTES
    # the same size of harmless text: the baseline
    texts = [cbrrr.encode_dag_cbor({"v": "x" * 9_800, "i": i}) for i in range(200)]
    text_frame = _commit_with(texts, post)
    # 45,000 tiny CAR blocks
    header, body = split(post)
    roots, sections = read_car(body["blocks"])
    tiny = [cbrrr.encode_dag_cbor(i) for i in range(45_000)]
    body["blocks"] = write_car(roots, sections + [(cid_of(b), b) for b in tiny])
    blocks_frame = join(header, body)
    # a CAR header of 1.9 million items (the header is decoded apart from the
    # body, so the body's item budget does not cover it: its size cap does)
    n = 1_900_000
    bomb = (
        b"\xa3\x61x\x9a"
        + n.to_bytes(4, "big")
        + b"\x80" * n
        + cbrrr.encode_dag_cbor("roots")
        + cbrrr.encode_dag_cbor(roots)
        + cbrrr.encode_dag_cbor("version")
        + b"\x01"
    )
    car = write_car(roots, sections)
    old_header = cbrrr.encode_dag_cbor({"version": 1, "roots": roots})
    rest = car[len(old_header) + 1 :]
    assert len(old_header) < 128  # one-byte varint
    body["blocks"] = varint(len(bomb)) + bomb + rest
    bomb_frame = join(header, body)
    assert len(bomb_frame) < MAX_FRAME_BYTES
    files = {
        "baseline": (text_frame, "decoded"),
        "record items": (items_frame, "RECORD_ITEMS"),
        "45k blocks": (blocks_frame, "CAR_INVALID"),
        "CAR header bomb": (bomb_frame, "CAR_INVALID"),
    }
    cases = dict(HOSTILE)
    for name, (frame, rule) in files.items():
        path = tmp_path / f"{name.replace(' ', '_')}.bin"
        path.write_bytes(frame)
        cases[name] = (f"data = open({str(path)!r}, 'rb').read()", rule)

    def run(build: str) -> Any:
        return run_bounded(
            _CHILD.format(build=build), address_space_mib=1024, timeout=60
        )

    baseline = run(cases.pop("baseline")[0])
    assert baseline.error_type is None, baseline.traceback
    assert baseline.value == "decoded"
    for name, (build, rule) in cases.items():
        out = run(build)
        assert not out.timed_out, name
        assert out.error_type is None, (name, out.error_type, out.traceback)
        assert out.value == rule, (name, out.value)
        assert out.max_rss_mib < baseline.max_rss_mib + 32, (
            name,
            out.max_rss_mib,
            baseline.max_rss_mib,
        )
