"""Decode one ``com.atproto.sync.subscribeRepos`` frame (AT Protocol "Event Stream"
and "Sync" specs) into the generated message models, then into
:mod:`~atdata_runtime.firehose.events`.

A frame is one binary WebSocket message: two concatenated DAG-CBOR objects, a
header ``{"op": 1, "t": "#commit"}`` and a body. ``op`` -1 is an error frame (body
``{"error": str, "message"?: str}``; the server closes the stream after it).
:func:`decode_frame` does, in order, and raises :class:`FrameError` with the rule of
the first failure:

``FRAME_TOO_BIG``
    the frame is over ``max_bytes`` (default :data:`MAX_FRAME_BYTES`).
``FRAME_CBOR``
    the header or the body is not one DAG-CBOR object (cbrrr's strict decoder:
    shortest heads, sorted unique map keys, tag 42 only), the body is missing, or
    bytes follow it.
``FRAME_ITEMS`` / ``FRAME_TOO_DEEP``
    the header and body hold more than :data:`MAX_ITEMS` CBOR items, or the body
    nests deeper than :data:`MAX_RECORD_DEPTH` maps/arrays (unknown fields are
    kept and would be serialized again).
``FRAME_HEADER``
    the header is not a map, ``op`` is not the integer 1 or -1, or ``op`` 1 has no
    string ``t``. (The spec says ``t`` "should not" be in an error frame's header:
    tolerated.)
``FRAME_BODY``
    the body breaks the generated models of the message union
    (:mod:`atdata_runtime.lexicons.com.atproto.sync.subscribe_repos`, ``$type``
    taken from the header's ``t``): ``location`` is the JSON pointer of the first
    pydantic error (``/body/ops/0/path``); also a body ``$type`` that disagrees
    with ``t``, a CID that is a map ``{"$link": …}`` instead of a tag-42 link, an
    error frame body without a string ``error``, and a ``time`` out of range.
``CID_UNSUPPORTED``
    the commit CID or a record CID is not CIDv1, dag-cbor (0x71), sha2-256 (the
    only CIDs of repository blocks, "Repository" spec).
``CAR_INVALID``
    the ``blocks`` CAR (CARv1: varint-prefixed header ``{version: 1, roots}``, then
    varint-prefixed ``CID ‖ block`` sections) is truncated, has a bad varint
    (unsigned-varint: at most 9 bytes, minimal), a header that is not version 1
    with at least one root, a section CID that is not CIDv1 dag-cbor sha2-256, more
    than :data:`MAX_CAR_BLOCKS` blocks, or its first root is not the frame's
    ``commit``.
``BLOCK_MISSING``
    the commit block or an operation's record block is not in the CAR.
``BLOCK_CID_MISMATCH``
    the commit block or a record block does not hash (sha2-256) to its CID.
``OP_ACTION`` / ``OP_PATH`` / ``OP_CID``
    an operation's ``action`` is not ``create``/``update``/``delete``; its
    ``path`` is not ``{collection}/{rkey}`` with an NSID and a record key (Lexicon
    "NSID" and "Record Key" specs); a create or update without a CID.
``RECORD_CBOR`` / ``RECORD_TOO_DEEP`` / ``RECORD_ITEMS``
    a record block is not one DAG-CBOR map in the JSON data model (cbrrr's
    ``atjson_mode``: no floats, no ``$link``/``$bytes`` keys), nests deeper than
    :data:`MAX_RECORD_DEPTH` maps/arrays, or the frame's records hold more than
    :data:`MAX_ITEMS` CBOR items together.

Only the blocks the events use are hashed: the commit block and the record blocks
of creates and updates (MST nodes are not read, so they are neither hashed nor
trusted). A ``tooBig`` commit (deprecated, pre-Sync 1.1: blocks left out) is not
parsed further: its event is ``Commit(too_big=True, ops=())`` (the record events
would need records it does not carry; re-fetch the repository instead).

Frames of an unknown ``t`` (a future message, or the removed ``#handle``,
``#migrate``, ``#tombstone``) are not errors (Event Stream spec: clients ignore
them): ``Frame.kind`` is ``"unknown"`` and ``message`` the union's
:class:`~atdata_runtime.lex.Unrecognized`. Error frames are not exceptions either:
``Frame.kind`` is ``"error"`` with ``error`` (``FutureCursor``,
``ConsumerTooSlow``, …) and ``error_message``; the caller decides (reconnect, give
up).

Everything is bounded: the frame by ``max_bytes``; decoded objects by
:data:`MAX_ITEMS` (cbrrr decodes without recursion and never allocates more items
than bytes present, but an item of one byte becomes a Python object of up to 130);
nesting by :data:`MAX_RECORD_DEPTH`; the CAR by :data:`MAX_CAR_BLOCKS` blocks.
Work is linear in the frame.
Cost: a commit frame of a real PDS (one record, a CAR of about six blocks) takes
about 23 µs of CPU to decode and 29 µs with its events built (Python 3.11, this
project's 2-core machine): the body's validation by the generated models is about
5 µs of it.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Literal, NamedTuple, TypeAlias

from cbrrr import _cbrrr
from pydantic import TypeAdapter, ValidationError

from ..lex import LexObject
from ..lex.formats import is_nsid, is_record_key
from ..lexicons.com.atproto.sync import subscribe_repos as _sr
from .events import (
    Account,
    Commit,
    Create,
    Delete,
    Event,
    Identity,
    Info,
    RecordEvent,
    Sync,
    Update,
)

__all__ = [
    "DATASET_PREFIX",
    "MAX_CAR_BLOCKS",
    "MAX_FRAME_BYTES",
    "MAX_ITEMS",
    "MAX_RECORD_DEPTH",
    "Frame",
    "FrameError",
    "FrameKind",
    "FrameOp",
    "decode_frame",
    "to_event",
    "to_events",
]

MAX_FRAME_BYTES: Final = 3 * 1024 * 1024
"""Default cap on one frame, bytes (3 MiB). The Lexicon caps a commit's ``blocks``
at 2,000,000 bytes and its ``ops`` at 200 (each at most ~1 KiB: an NSID of 317
characters, a record key of 512, two CIDs); the rest of the body is a few hundred
bytes."""
MAX_CAR_BLOCKS: Final = 4096
"""Cap on the blocks of one commit's CAR. A commit of 200 operations carries 200
records and their MST paths (a few nodes each): well under a thousand blocks."""
MAX_RECORD_DEPTH: Final = 128
"""Cap on nested maps/arrays in one record (the top-level map is depth 1), as
:data:`atdata_runtime.atmosphere.cid.MAX_DEPTH` for repository proofs."""
MAX_ITEMS: Final = 200_000
"""Cap on the CBOR items (every value, map key and tag counts one) of a frame's
header and body together, and again of all its records together. Decoded, an item
is a Python object of 30 to 130 bytes while it may take one byte on the wire, so
without this cap a 3 MiB frame of nested empty arrays would cost 400 MiB and a
second of CPU; with it a frame's decoded size stays under ~30 MiB. Frames over
:data:`MAX_ITEMS` bytes (and records once their bytes add up past it) are
pre-scanned item by item before cbrrr decodes them; smaller ones cannot exceed it
(an item takes at least one byte)."""
DATASET_PREFIX: Final = "science.alt.dataset."
"""NSID prefix of the atdata collections (``science.alt.dataset.schema``, …)."""

FrameKind: TypeAlias = Literal[
    "commit", "sync", "identity", "account", "info", "error", "unknown"
]

_NS: Final = "com.atproto.sync.subscribeRepos"
_MESSAGE: Final = TypeAdapter(_sr.SubscribeReposMessage)
_decode: Final[Callable[[Any, Any, bool], tuple[Any, int]]] = _cbrrr.decode_dag_cbor
"""cbrrr's decoder: ``(buffer, cid_ctor, atjson_mode) -> (value, bytes used)``."""
_CID_PREFIX: Final = b"\x01\x71\x12\x20"
"""CIDv1, dag-cbor (0x71), sha2-256 (0x12), 32-byte digest."""
_LINK_HEAD: Final = b"\xd8\x2a\x58\x25\x00"
"""CBOR tag 42, a byte string of 37 bytes, the 0x00 multibase prefix: a 36-byte
CID as a DAG-CBOR link, for cbrrr's C base32 encoder (see :func:`_link_of`)."""
_MAX_REASON: Final = 300
_NOT_CONTAINER_HEAD: Final = bytes(b for b in range(256) if not 0x80 <= b <= 0xBF)
"""Bytes that cannot start an array or map head (``bytes.translate`` deletes
them)."""


class FrameError(ValueError):
    """A frame that cannot be decoded. ``rule`` (see the module docstring),
    ``reason`` (human text, never the frame's bytes), ``location`` (JSON pointer
    into the frame seen as ``{"header": …, "body": …}``, e.g. ``/body/ops/0/cid``;
    ``""`` for the whole frame), ``seq`` and ``repo`` (the DID) when the body got
    far enough to tell them, ``cid`` (the CAR block concerned, if any).
    ``str()`` is ``"seq 12 did:plc:… /body/ops/0/cid: reason [RULE]"``."""

    def __init__(
        self,
        rule: str,
        reason: str,
        *,
        location: str = "",
        seq: int | None = None,
        repo: str | None = None,
        cid: str | None = None,
    ) -> None:
        self.rule = rule
        self.reason = reason
        self.location = location
        self.seq = seq
        self.repo = repo
        self.cid = cid
        where = " ".join(
            part
            for part in (
                f"seq {seq}" if seq is not None else "",
                repo or "",
                location,
            )
            if part
        )
        super().__init__(
            f"{where}: {reason} [{rule}]" if where else f"{reason} [{rule}]"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            _rebuild_error,
            (self.rule, self.reason, self.location, self.seq, self.repo, self.cid),
        )


def _rebuild_error(
    rule: str,
    reason: str,
    location: str,
    seq: int | None,
    repo: str | None,
    cid: str | None,
) -> FrameError:
    return FrameError(rule, reason, location=location, seq=seq, repo=repo, cid=cid)


class FrameOp(NamedTuple):
    """One checked record operation of a commit: ``action`` (``create``,
    ``update`` or ``delete``), ``collection`` (an
    NSID), ``rkey``, ``cid`` (CID string; ``None`` for a delete), ``record`` (JSON
    data model; ``None`` for a delete), ``prev_cid`` (the previous record CID when
    the stream gives it)."""

    action: str
    collection: str
    rkey: str
    cid: str | None
    record: dict[str, Any] | None
    prev_cid: str | None


@dataclass(slots=True, eq=False)
class Frame:
    """One decoded frame (treat it as read-only).

    ``kind``: ``commit``, ``sync``, ``identity``, ``account``, ``info``, ``error``
    (``op`` -1) or ``unknown`` (a ``t`` this version does not know). ``t``: the
    header's type (``None`` for error frames). ``message``: the validated generated
    model (``subscribe_repos.Commit``, ``Sync``, …, ``Unrecognized``; ``None`` for
    error frames). ``seq``: the stream sequence number (``None`` for ``#info`` and
    error frames; for unknown frames the body's ``seq`` when it is an integer, not
    validated). ``did``: the repository (``repo`` of a commit,
    ``did`` of the others). ``time``: the message's ``time``, timezone-aware UTC.
    ``size``: the frame's bytes.

    Commits and ``#sync``: ``commit_cid`` (CID string of the signed commit) and
    ``commit_block`` (its DAG-CBOR bytes, hash-checked against ``commit_cid``, for
    :mod:`.verify`); ``ops`` (commits only): the checked operations. A ``tooBig``
    commit has ``commit_block`` ``None`` and no ``ops``.

    Error frames: ``error`` (the error name) and ``error_message``.
    """

    kind: FrameKind
    t: str | None
    message: Any
    seq: int | None = None
    did: str | None = None
    time: _dt.datetime | None = None
    size: int = 0
    commit_cid: str | None = None
    commit_block: bytes | None = None
    ops: tuple[FrameOp, ...] = ()
    error: str | None = None
    error_message: str | None = None

    @property
    def collections(self) -> frozenset[str]:
        """The collections (NSIDs) a commit's operations touch."""
        return frozenset(op.collection for op in self.ops)

    @property
    def touches_datasets(self) -> bool:
        """Whether any operation is in a ``science.alt.dataset.*`` collection."""
        return any(op.collection.startswith(DATASET_PREFIX) for op in self.ops)

    def event(
        self, *, verified: bool | None = None
    ) -> Commit | Identity | Account | Sync | Info | None:
        """This frame as one event: :class:`~.events.Commit` (its record events in
        ``ops``), :class:`~.events.Identity`, :class:`~.events.Account`,
        :class:`~.events.Sync` or :class:`~.events.Info`; ``None`` for error and
        unknown frames. ``verified`` (the result of :mod:`.verify`) is copied into
        the commit and each of its record events."""
        return to_event(self, verified=verified)

    def events(self, *, verified: bool | None = None) -> tuple[Event, ...]:
        """This frame as a flat tuple of :data:`~.events.Event`: a commit's
        record events (none for an empty or ``tooBig`` commit: use :meth:`event`
        to see those), else the one event, or ``()`` for error/unknown frames."""
        return to_events(self, verified=verified)


def to_event(
    frame: Frame, *, verified: bool | None = None
) -> Commit | Identity | Account | Sync | Info | None:
    """See :meth:`Frame.event`."""
    kind = frame.kind
    m = frame.message
    if kind == "commit":
        assert frame.seq is not None and frame.did is not None
        assert frame.commit_cid is not None
        seq, repo, rev, time = frame.seq, frame.did, m.rev, frame.time
        commit_cid = frame.commit_cid
        ops: list[RecordEvent] = []
        for idx, op in enumerate(frame.ops):
            if op.action == "create":
                assert op.cid is not None and op.record is not None
                ops.append(
                    Create(
                        seq,
                        repo,
                        op.collection,
                        op.rkey,
                        op.cid,
                        op.record,
                        rev,
                        time,
                        idx,
                        commit_cid,
                        verified,
                    )
                )
            elif op.action == "update":
                assert op.cid is not None and op.record is not None
                ops.append(
                    Update(
                        seq,
                        repo,
                        op.collection,
                        op.rkey,
                        op.cid,
                        op.record,
                        rev,
                        time,
                        idx,
                        commit_cid,
                        verified,
                        op.prev_cid,
                    )
                )
            else:
                ops.append(
                    Delete(
                        seq,
                        repo,
                        op.collection,
                        op.rkey,
                        rev,
                        time,
                        idx,
                        commit_cid,
                        verified,
                        op.prev_cid,
                    )
                )
        return Commit(
            seq,
            repo,
            rev,
            time,
            commit_cid,
            tuple(ops),
            m.since,
            m.too_big,
            verified,
        )
    if kind == "identity":
        assert frame.seq is not None and frame.did is not None
        return Identity(frame.seq, frame.did, frame.time, m.handle)
    if kind == "account":
        assert frame.seq is not None and frame.did is not None
        return Account(frame.seq, frame.did, frame.time, m.active, m.status)
    if kind == "sync":
        assert frame.seq is not None and frame.did is not None
        return Sync(frame.seq, frame.did, m.rev, frame.time, frame.commit_cid)
    if kind == "info":
        return Info(m.name, m.message, dict(m.__pydantic_extra__ or {}))
    return None


def to_events(frame: Frame, *, verified: bool | None = None) -> tuple[Event, ...]:
    """See :meth:`Frame.events`."""
    event = to_event(frame, verified=verified)
    if event is None:
        return ()
    if isinstance(event, Commit):
        return event.ops
    return (event,)


# -- decoding ------------------------------------------------------------------------


def _link_of(raw: bytes) -> str:
    """The base32 multibase string of a binary CID (cbrrr's C encoder)."""
    if len(raw) == 36:
        value = _decode(_LINK_HEAD + raw, None, True)[0]
    else:
        n = len(raw) + 1
        head = (
            bytes((0xD8, 0x2A, 0x40 | n))
            if n < 24
            else bytes((0xD8, 0x2A, 0x58, n))
            if n < 256
            else b"\xd8\x2a\x59" + n.to_bytes(2, "big")
            if n < 65536
            else b"\xd8\x2a\x5a" + n.to_bytes(4, "big")
        )
        value = _decode(head + b"\x00" + raw, None, True)[0]
    return value["$link"]  # type: ignore[no-any-return]


class _CarLink(bytes):
    """A CID link in a CAR header (told apart from a byte string)."""

    __slots__ = ()


def _pointer(loc: tuple[int | str, ...]) -> str:
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in loc)


def _clip(text: str) -> str:
    return text if len(text) <= _MAX_REASON else text[: _MAX_REASON - 1] + "…"


def _hint(body: dict[str, Any]) -> tuple[int | None, str | None]:
    """``(seq, did)`` read from an unvalidated body, for error messages."""
    seq = body.get("seq")
    did = body.get("repo", body.get("did"))
    return (
        seq if type(seq) is int else None,
        did if type(did) is str and len(did) <= 2048 else None,
    )


def _parse_time(text: str, seq: int | None, did: str | None) -> _dt.datetime:
    try:
        value = _dt.datetime.fromisoformat(text)
        if value.tzinfo is not _dt.UTC:
            value = value.astimezone(_dt.UTC)
    except (ValueError, OverflowError) as exc:
        raise FrameError(
            "FRAME_BODY",
            f"time {text[:64]!r} is not a representable datetime ({exc})",
            location="/body/time",
            seq=seq,
            repo=did,
        ) from None
    return value


def _varint(data: bytes, pos: int, end: int) -> tuple[int, int]:
    """Unsigned varint at ``data[pos]`` (multiformats unsigned-varint: at most 9
    bytes, minimal). Raises ``ValueError`` with the reason."""
    if pos >= end:
        raise ValueError(f"truncated varint at byte {pos}")
    b = data[pos]
    if b < 0x80:
        return b, pos + 1
    n = b & 0x7F
    shift = 7
    for i in range(1, 9):
        if pos + i >= end:
            raise ValueError(f"truncated varint at byte {pos}")
        b = data[pos + i]
        n |= (b & 0x7F) << shift
        shift += 7
        if b < 0x80:
            if b == 0:
                raise ValueError(f"varint at byte {pos} is not minimally encoded")
            return n, pos + i + 1
    raise ValueError(f"varint at byte {pos} is longer than 9 bytes")


def _parse_car(
    data: bytes, max_blocks: int, seq: int | None, did: str | None
) -> tuple[bytes, _Blocks]:
    """``(first root, blocks by binary CID)`` of a CARv1 file; blocks are not
    hashed here (see :func:`_checked_block`). Raises :class:`FrameError`
    (``CAR_INVALID``) at ``/body/blocks``."""

    def bad(why: str) -> FrameError:
        return FrameError(
            "CAR_INVALID", why, location="/body/blocks", seq=seq, repo=did
        )

    end = len(data)
    view = memoryview(data)
    try:
        size, pos = _varint(data, 0, end)
    except ValueError as exc:
        raise bad(f"CAR header length: {exc}") from None
    if size == 0 or size > end - pos:
        raise bad(f"CAR header of {size} bytes does not fit in {end - pos}")
    try:
        header, used = _decode(view[pos : pos + size], _CarLink, False)
    except Exception as exc:  # noqa: BLE001 - any decoder failure is one finding
        raise bad(f"CAR header is not DAG-CBOR: {_clip(str(exc))}") from None
    if used != size:
        raise bad("CAR header is followed by bytes inside its section")
    roots = header.get("roots") if type(header) is dict else None
    if (
        type(header) is not dict
        or type(header.get("version")) is not int
        or header["version"] != 1
        or type(roots) is not list
        or not roots
        or not all(type(r) is _CarLink for r in roots)
    ):
        raise bad("CAR header is not {version: 1, roots: [CID, …]}")
    pos += size
    # Hot loop: one CAR section per iteration; offsets only (blocks are sliced
    # when used), one- and two-byte varints inline.
    blocks: dict[bytes, tuple[int, int]] = {}
    startswith = data.startswith
    for _ in range(max_blocks):
        if pos >= end:
            break
        b = data[pos]
        if b < 0x80:
            size = b
            pos += 1
        elif pos + 1 < end and 0 < data[pos + 1] < 0x80:
            size = (b & 0x7F) | (data[pos + 1] << 7)
            pos += 2
        else:
            try:
                size, pos = _varint(data, pos, end)
            except ValueError as exc:
                raise bad(f"CAR section length: {exc}") from None
        if size < 37 or size > end - pos or not startswith(_CID_PREFIX, pos):
            raise bad(_section_problem(data, pos, size, end))
        blocks[data[pos : pos + 36]] = (pos + 36, pos + size)
        pos += size
    else:
        if pos < end:
            raise bad(f"CAR has more than {max_blocks} blocks")
    return bytes(roots[0]), _Blocks(view, blocks)


def _section_problem(data: bytes, pos: int, size: int, end: int) -> str:
    """Why the CAR section whose CID starts at ``pos`` (``size`` bytes) is bad."""
    if size < 37 or size > end - pos:
        return (
            f"CAR section at byte {pos} of {size} bytes is truncated or too short "
            "for a CID and a block"
        )
    return f"CAR section at byte {pos}: CID is not CIDv1 dag-cbor sha2-256"


class _Blocks:
    """The sections of a parsed CAR: binary CID → block, sliced on demand."""

    __slots__ = ("offsets", "view")

    def __init__(self, view: memoryview, offsets: dict[bytes, tuple[int, int]]) -> None:
        self.view = view
        self.offsets = offsets

    def get(self, raw: bytes) -> memoryview | None:
        span = self.offsets.get(raw)
        return None if span is None else self.view[span[0] : span[1]]


def _checked_block(
    blocks: _Blocks,
    raw: bytes,
    link: str,
    location: str,
    seq: int | None,
    did: str | None,
) -> memoryview:
    block = blocks.get(raw)
    if block is None:
        raise FrameError(
            "BLOCK_MISSING",
            f"the CAR has no block {link}",
            location=location,
            seq=seq,
            repo=did,
            cid=link,
        )
    if hashlib.sha256(block).digest() != raw[4:]:
        raise FrameError(
            "BLOCK_CID_MISMATCH",
            f"block {link} does not hash (sha2-256) to its CID",
            location="/body/blocks",
            seq=seq,
            repo=did,
            cid=link,
        )
    return block


class _ScanError(ValueError):
    """:func:`_scan` found too many items (``rule`` ``…_ITEMS``), too deep a
    nesting (``…_TOO_DEEP``) or malformed CBOR (``…_CBOR``)."""

    def __init__(self, kind: str, why: str) -> None:
        super().__init__(why)
        self.kind = kind


def _scan(
    data: bytes | memoryview, pos: int, end: int, budget: int, max_depth: int
) -> tuple[int, int]:
    """``(items, offset after)`` of the one CBOR value at ``data[pos:end]``,
    counting items without building them: at most ``budget`` items and
    ``max_depth`` nested arrays/maps (an empty one counts). Lengths are skipped,
    never trusted past ``end``. Raises :class:`_ScanError`. Not a validator:
    cbrrr checks the encoding afterwards."""
    items = 0
    depth = 0
    remaining = 1
    stack: list[int] = []
    while True:
        if remaining == 0:
            if not stack:
                return items, pos
            remaining = stack.pop()
            depth -= 1
            continue
        remaining -= 1
        if pos >= end:
            raise _ScanError("CBOR", f"truncated at byte {pos}")
        b = data[pos]
        pos += 1
        items += 1
        if items > budget:
            raise _ScanError("ITEMS", f"more than {budget} CBOR items")
        major, n = b >> 5, b & 0x1F
        if n >= 24:
            if n > 27:
                raise _ScanError("CBOR", f"indefinite length at byte {pos - 1}")
            width = 1 << (n - 24)
            if pos + width > end:
                raise _ScanError("CBOR", f"truncated at byte {pos}")
            n = int.from_bytes(data[pos : pos + width], "big")
            pos += width
        if major == 2 or major == 3:
            if n > end - pos:
                raise _ScanError("CBOR", f"string at byte {pos} runs past the end")
            pos += n
        elif major == 4 or major == 5:
            if depth >= max_depth:
                raise _ScanError(
                    "TOO_DEEP", f"nested deeper than {max_depth} maps/arrays"
                )
            if n:
                n = n * 2 if major == 5 else n
                if n > end - pos:
                    raise _ScanError(
                        "CBOR", f"{n} items at byte {pos} cannot fit in the bytes left"
                    )
                stack.append(remaining)
                remaining = n
                depth += 1
        elif major == 6:
            remaining += 1


def _too_deep(value: Any, limit: int) -> bool:
    """Whether ``value`` nests more than ``limit`` maps/arrays (level by level,
    no recursion)."""
    level = [value]
    depth = 1
    while level:
        if depth > limit:
            return True
        below = []
        for item in level:
            for child in item.values() if type(item) is dict else item:
                kind = type(child)
                if kind is dict or kind is list:
                    below.append(child)
        level = below
        depth += 1
    return False


def _record(
    block: memoryview,
    link: str,
    location: str,
    seq: int,
    did: str,
    scan: int | None,
) -> tuple[dict[str, Any], int]:
    """``(record in the JSON data model, its items)`` of ``block``; the items are
    counted when ``scan`` is an item budget (a pre-scan, see :data:`MAX_ITEMS`),
    else (``None``) bounded by the block's bytes."""
    scanned = False
    items = len(block)
    if scan is not None:
        try:
            items, _ = _scan(block, 0, len(block), scan, MAX_RECORD_DEPTH)
        except _ScanError as exc:
            rule = "RECORD_TOO_DEEP" if exc.kind == "TOO_DEEP" else f"RECORD_{exc.kind}"
            raise FrameError(
                rule,
                f"the records of this frame hold more than {MAX_ITEMS} CBOR items "
                f"(at record {link})"
                if exc.kind == "ITEMS"
                else f"record {link}: {exc}",
                location=location,
                seq=seq,
                repo=did,
                cid=link,
            ) from None
        scanned = True
    try:
        value, used = _decode(block, None, True)
    except Exception as exc:  # noqa: BLE001 - any decoder failure is one finding
        raise FrameError(
            "RECORD_CBOR",
            f"record {link} is not DAG-CBOR in the data model: {_clip(str(exc))}",
            location=location,
            seq=seq,
            repo=did,
            cid=link,
        ) from None
    if used != len(block) or type(value) is not dict:
        raise FrameError(
            "RECORD_CBOR",
            f"record {link} is not one DAG-CBOR map"
            + (" (trailing bytes)" if used != len(block) else ""),
            location=location,
            seq=seq,
            repo=did,
            cid=link,
        )
    if (
        not scanned
        and len(block) > MAX_RECORD_DEPTH
        # every array/map head is one byte in 0x80-0xbf: fewer such bytes than the
        # limit, fewer containers, so no deeper nesting (most records stop here)
        and len(bytes(block).translate(None, _NOT_CONTAINER_HEAD)) > MAX_RECORD_DEPTH
        and _too_deep(value, MAX_RECORD_DEPTH)
    ):
        raise FrameError(
            "RECORD_TOO_DEEP",
            f"record {link} nests deeper than {MAX_RECORD_DEPTH} maps/arrays",
            location=location,
            seq=seq,
            repo=did,
            cid=link,
        )
    return value, items


def _real_link(
    link: Any, links: dict[str, bytes], location: str, seq: int, did: str
) -> bytes:
    """The binary CID of a validated ``CidLink`` that was a tag-42 link on the
    wire (not a map ``{"$link": …}``, which the data model does not call a
    link)."""
    raw = links.get(link.link)
    if raw is None:
        raise FrameError(
            "FRAME_BODY",
            "a CID must be a DAG-CBOR link (tag 42), not a map",
            location=location,
            seq=seq,
            repo=did,
        )
    return raw


def _sha256_cid(raw: bytes, link: str, location: str, seq: int, did: str) -> None:
    if len(raw) != 36 or raw[:4] != _CID_PREFIX:
        raise FrameError(
            "CID_UNSUPPORTED",
            f"CID {link[:80]} is not CIDv1 dag-cbor sha2-256",
            location=location,
            seq=seq,
            repo=did,
            cid=link[:80],
        )


def _commit_ops(
    m: _sr.Commit, links: dict[str, bytes], blocks: _Blocks
) -> tuple[FrameOp, ...]:
    seq, did = m.seq, m.repo
    out = []
    # Items of the records so far: exact for scanned ones, their bytes for the
    # others (an upper bound); a record that could pass MAX_ITEMS is scanned.
    items = 0
    for i, op in enumerate(m.ops):
        where = f"/body/ops/{i}"
        action = op.action
        if action not in ("create", "update", "delete"):
            raise FrameError(
                "OP_ACTION",
                f"action {action[:40]!r} is not create, update or delete",
                location=where + "/action",
                seq=seq,
                repo=did,
            )
        collection, _, rkey = op.path.partition("/")
        if not is_nsid(collection) or not is_record_key(rkey):
            raise FrameError(
                "OP_PATH",
                f"path {op.path[:120]!r} is not {{NSID}}/{{record key}}",
                location=where + "/path",
                seq=seq,
                repo=did,
            )
        prev = op.prev
        prev_cid = None
        if prev is not None:
            _real_link(prev, links, where + "/prev", seq, did)
            prev_cid = prev.link
        if action == "delete":
            out.append(FrameOp("delete", collection, rkey, None, None, prev_cid))
            continue
        if op.cid is None:
            raise FrameError(
                "OP_CID",
                f"a {action} operation needs the record's CID",
                location=where + "/cid",
                seq=seq,
                repo=did,
            )
        link = op.cid.link
        raw = _real_link(op.cid, links, where + "/cid", seq, did)
        _sha256_cid(raw, link, where + "/cid", seq, did)
        block = _checked_block(blocks, raw, link, where + "/cid", seq, did)
        scan = None if items + len(block) <= MAX_ITEMS else MAX_ITEMS - items
        record, used = _record(block, link, where + "/cid", seq, did, scan)
        items += used
        out.append(FrameOp(action, collection, rkey, link, record, prev_cid))
    return tuple(out)


def _check_depth(
    value: Any, limit: int, location: str, seq: int | None, did: str | None
) -> None:
    if _too_deep(value, limit):
        raise FrameError(
            "FRAME_TOO_DEEP",
            f"body nests deeper than {MAX_RECORD_DEPTH} maps/arrays",
            location=location,
            seq=seq,
            repo=did,
        )


def _check_extras(m: Any, body: dict[str, Any]) -> None:
    """Refuse unknown fields nested deeper than :data:`MAX_RECORD_DEPTH` (counting
    from the body): the body's own, and a commit's operations'."""
    if not isinstance(m, LexObject):  # Unrecognized: all of it is unknown
        seq, did = _hint(body)
        _check_depth(body, MAX_RECORD_DEPTH, "/body", seq, did)
        return
    extra = m.__pydantic_extra__
    if extra:
        seq, did = _hint(body)
        _check_depth(extra, MAX_RECORD_DEPTH, "/body", seq, did)
    if isinstance(m, _sr.Commit):
        for i, op in enumerate(m.ops):
            extra = op.__pydantic_extra__
            if extra:
                _check_depth(
                    extra, MAX_RECORD_DEPTH - 2, f"/body/ops/{i}", m.seq, m.repo
                )


def decode_frame(
    data: bytes | bytearray | memoryview,
    *,
    max_bytes: int = MAX_FRAME_BYTES,
    max_blocks: int = MAX_CAR_BLOCKS,
) -> Frame:
    """Decode one binary ``subscribeRepos`` frame: header and body (DAG-CBOR, cbrrr),
    the body validated by the generated message union (``$type`` from ``t``), a
    commit's CAR parsed and its record blocks hash-checked and decoded to the JSON
    data model.

    ``max_bytes``: cap on the frame (default :data:`MAX_FRAME_BYTES`);
    ``max_blocks``: cap on a CAR's blocks (default :data:`MAX_CAR_BLOCKS`). Returns a
    :class:`Frame`; raises :class:`FrameError` (rules in the module docstring) and
    nothing else, whatever the bytes."""
    if not isinstance(data, bytes):
        if not isinstance(data, (bytearray, memoryview)):
            raise FrameError(
                "FRAME_CBOR", f"a frame is binary, not {type(data).__name__}"
            )
        data = bytes(data)
    size = len(data)
    if size > max_bytes:
        raise FrameError("FRAME_TOO_BIG", f"frame of {size} bytes is over {max_bytes}")
    if size > MAX_ITEMS:
        try:
            items, end = _scan(data, 0, size, MAX_ITEMS, MAX_RECORD_DEPTH)
            if end < size:
                _scan(data, end, size, MAX_ITEMS - items, MAX_RECORD_DEPTH)
        except _ScanError as exc:
            why = (
                f"more than {MAX_ITEMS} CBOR items in the header and body"
                if exc.kind == "ITEMS"
                else str(exc)
            )
            raise FrameError(f"FRAME_{exc.kind}", f"frame: {why}") from None
    links: dict[str, bytes] = {}

    def cid_ctor(raw: bytes) -> dict[str, str]:
        link = _link_of(raw)
        links[link] = raw
        return {"$link": link}

    try:
        header, used = _decode(data, cid_ctor, False)
    except Exception as exc:  # noqa: BLE001 - any decoder failure is one finding
        raise FrameError(
            "FRAME_CBOR",
            f"header is not DAG-CBOR: {_clip(str(exc))}",
            location="/header",
        ) from None
    if type(header) is not dict:
        raise FrameError("FRAME_HEADER", "header is not a map", location="/header")
    op = header.get("op")
    if type(op) is not int or op not in (1, -1):
        raise FrameError(
            "FRAME_HEADER", "op must be the integer 1 or -1", location="/header/op"
        )
    t = header.get("t")
    if op == 1 and type(t) is not str:
        raise FrameError(
            "FRAME_HEADER",
            "a message frame (op 1) needs a string t",
            location="/header/t",
        )
    if used == size:
        raise FrameError("FRAME_CBOR", "frame has no body", location="/body")
    try:
        body, body_used = _decode(memoryview(data)[used:], cid_ctor, False)
    except Exception as exc:  # noqa: BLE001 - any decoder failure is one finding
        raise FrameError(
            "FRAME_CBOR",
            f"body is not DAG-CBOR: {_clip(str(exc))}",
            location="/body",
        ) from None
    if used + body_used != size:
        raise FrameError(
            "FRAME_CBOR",
            f"{size - used - body_used} bytes follow the body",
            location="/body",
        )
    if type(body) is not dict:
        raise FrameError("FRAME_BODY", "body is not a map", location="/body")
    # Nesting: a frame over MAX_ITEMS bytes was pre-scanned, depth included; one of
    # at most MAX_RECORD_DEPTH bytes cannot nest deeper. Otherwise the models'
    # fixed fields are shallow and validated, but unknown fields are kept (and
    # would be serialized again): those are checked, see _check_extras.
    deep_check = MAX_RECORD_DEPTH < size <= MAX_ITEMS

    if op == -1:
        if deep_check:
            _check_depth(body, MAX_RECORD_DEPTH, "/body", None, None)
        error, message = body.get("error"), body.get("message")
        if type(error) is not str or not (message is None or type(message) is str):
            raise FrameError(
                "FRAME_BODY",
                "an error frame's body is {error: string, message?: string}",
                location="/body/error" if type(error) is not str else "/body/message",
            )
        return Frame("error", None, None, size=size, error=error, error_message=message)

    assert isinstance(t, str)
    short = t.removeprefix(_NS)
    full = _NS + short if short.startswith("#") else t
    given = body.get("$type")
    if given is not None and given != full:
        seq, did = _hint(body)
        raise FrameError(
            "FRAME_BODY",
            f"body $type disagrees with the header's t {t[:80]!r}",
            location="/body/$type",
            seq=seq,
            repo=did,
        )
    body["$type"] = full
    try:
        # Wire names only, as LexObject.from_wire: "too_big" is not "tooBig".
        m = _MESSAGE.validate_python(body, by_alias=True, by_name=False)
    except ValidationError as exc:
        first = exc.errors(
            include_url=False, include_input=False, include_context=False
        )[0]
        loc = tuple(first["loc"])
        if loc and loc[0] == full:
            loc = loc[1:]
        seq, did = _hint(body)
        raise FrameError(
            "FRAME_BODY",
            _clip(
                f"{first['msg']} ({exc.error_count()} error"
                f"{'s' if exc.error_count() != 1 else ''} against {_NS}{short})"
            ),
            location="/body" + _pointer(loc),
            seq=seq,
            repo=did,
        ) from None

    if deep_check:
        _check_extras(m, body)
    if isinstance(m, _sr.Commit):
        return _commit_frame(m, t, size, links, max_blocks)
    if isinstance(m, _sr.Sync):
        seq, did = m.seq, m.did
        time = _parse_time(m.time, seq, did)
        root, blocks = _parse_car(m.blocks, max_blocks, seq, did)
        root_link = _link_of(root)
        _sha256_cid(root, root_link, "/body/blocks", seq, did)
        block = _checked_block(blocks, root, root_link, "/body/blocks", seq, did)
        return Frame(
            "sync",
            t,
            m,
            seq=seq,
            did=did,
            time=time,
            size=size,
            commit_cid=root_link,
            commit_block=bytes(block),
        )
    if isinstance(m, (_sr.Identity, _sr.Account)):
        time = _parse_time(m.time, m.seq, m.did)
        kind: FrameKind = "identity" if isinstance(m, _sr.Identity) else "account"
        return Frame(kind, t, m, seq=m.seq, did=m.did, time=time, size=size)
    if isinstance(m, _sr.Info):
        return Frame("info", t, m, size=size)
    seq, did = _hint(body)
    return Frame("unknown", t, m, seq=seq, did=did, size=size)


def _commit_frame(
    m: _sr.Commit, t: str, size: int, links: dict[str, bytes], max_blocks: int
) -> Frame:
    seq, did = m.seq, m.repo
    commit_link = m.commit.link
    commit_raw = _real_link(m.commit, links, "/body/commit", seq, did)
    _sha256_cid(commit_raw, commit_link, "/body/commit", seq, did)
    for i, blob in enumerate(m.blobs):
        _real_link(blob, links, f"/body/blobs/{i}", seq, did)
    if m.prev_data is not None:
        _real_link(m.prev_data, links, "/body/prevData", seq, did)
    time = _parse_time(m.time, seq, did)
    if m.too_big:
        return Frame(
            "commit",
            t,
            m,
            seq=seq,
            did=did,
            time=time,
            size=size,
            commit_cid=commit_link,
        )
    root, blocks = _parse_car(m.blocks, max_blocks, seq, did)
    if root != commit_raw:
        raise FrameError(
            "CAR_INVALID",
            f"the CAR's first root is not the commit {commit_link}",
            location="/body/blocks",
            seq=seq,
            repo=did,
        )
    block = _checked_block(blocks, commit_raw, commit_link, "/body/commit", seq, did)
    return Frame(
        "commit",
        t,
        m,
        seq=seq,
        did=did,
        time=time,
        size=size,
        commit_cid=commit_link,
        commit_block=bytes(block),
        ops=_commit_ops(m, links, blocks),
    )
