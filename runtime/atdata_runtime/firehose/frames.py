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
    with ``t``, a CID field (``commit``, ``prevData``, ``blobs[]``, ``ops[].cid``,
    ``ops[].prev``) that is anything but a tag-42 link (a map ``{"$link": …}`` is
    not a link in the data model: it is refused by its decoded type, whatever
    else the frame holds), an error frame body without a string ``error``, a
    ``time`` out of range, and a ``seq`` outside ``1 … 2**63-1`` (``/body/seq``;
    PostgreSQL ``bigint``, and the cursor is positive).
``CID_UNSUPPORTED``
    the commit CID, a record CID, an operation's ``prev`` or the commit's
    ``prevData`` is not CIDv1, dag-cbor (0x71), sha2-256 (the only CIDs of
    repository blocks, "Repository" spec).
``CAR_INVALID``
    the ``blocks`` CAR (CARv1: varint-prefixed header ``{version: 1, roots}``, then
    varint-prefixed ``CID ‖ block`` sections) is truncated, has a bad varint
    (unsigned-varint: at most 9 bytes, minimal), a header over
    :data:`MAX_CAR_HEADER_BYTES` or not version 1 with at least one root, a
    section CID that is not CIDv1 dag-cbor sha2-256, more than
    :data:`MAX_CAR_BLOCKS` blocks, or its first root is not the frame's
    ``commit``.
``BLOCK_MISSING``
    the commit block or an operation's record block is not in the CAR.
``BLOCK_CID_MISMATCH``
    the commit block or a record block does not hash (sha2-256) to its CID.
``COMMIT_INVALID``
    the commit block (of a commit, or the root block of a ``#sync``) is over
    :data:`MAX_COMMIT_BYTES`, not one DAG-CBOR map, not a commit object (no
    ``did``, ``version``, ``data``, ``rev`` or ``sig``), or its ``data`` is not a
    CIDv1 dag-cbor sha2-256 link (``/body/blocks``).
``COMMIT_MISMATCH``
    the commit block says another ``version`` than 3 (``/body/commit``; a
    ``#sync``: ``/body/blocks``), another
    ``did`` than the body's ``repo`` (``#sync``: ``did``) (``/body/repo``,
    ``/body/did``), or another ``rev`` than the body's (``/body/rev``) ("Sync"
    spec § Firehose Validation Best Practices). Checked for every commit, signed
    or not: the commit block is small and already hash-checked.
``OP_ACTION`` / ``OP_PATH`` / ``OP_CID`` / ``OP_DUPLICATE``
    an operation's ``action`` is not ``create``/``update``/``delete``; its
    ``path`` is not ``{collection}/{rkey}`` with an NSID and a record key (Lexicon
    "NSID" and "Record Key" specs); a create or update without a CID, or a delete
    with one (``repoOp.cid``: "for deletions, null"); two operations on one path
    in one commit (``/body/ops/<the second>/path``; the MST has one value per key).
``RECORD_CBOR`` / ``RECORD_TOO_DEEP`` / ``RECORD_ITEMS``
    a record block is not one DAG-CBOR map in the JSON data model (cbrrr's
    ``atjson_mode``: no floats, no ``$link``/``$bytes`` keys), nests deeper than
    :data:`MAX_RECORD_DEPTH` maps/arrays, or the frame's records hold more than
    :data:`MAX_ITEMS` CBOR items together.

Only the blocks the events use are hashed here: the commit block and the record
blocks of creates and updates. MST nodes are read (and each one hash-checked) only
by :func:`prove_ops`, which :mod:`.verify` calls for a commit whose signature it
checked: the signature covers the commit block only, the proof carries it down to
every operation. A ``tooBig`` commit (deprecated, pre-Sync 1.1: blocks left out) is not
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
nesting by :data:`MAX_RECORD_DEPTH`; the CAR by :data:`MAX_CAR_BLOCKS` blocks and
its header by :data:`MAX_CAR_HEADER_BYTES`; the commit block by
:data:`MAX_COMMIT_BYTES`. Work is linear in the frame.

:func:`prove_ops` (operations against the signed MST, Sync 1.1) raises
:class:`FrameError`:

``OP_NOT_IN_COMMIT``
    a create or update whose path is absent from the tree of the commit's ``data``
    or holds another CID there (``/body/ops/<i>/cid``, or ``…/path`` when absent),
    or a delete whose path is still in the tree (``/body/ops/<i>/path``).
``MST_INVALID``
    an MST node on the way is not DAG-CBOR or not a valid node (the checks of
    :func:`~atdata_runtime.atmosphere.repo.mst_node` and
    :func:`~atdata_runtime.atmosphere.repo.mst_find`: entry shape, key order,
    layers, depth at most :data:`~atdata_runtime.atmosphere.repo.MAX_MST_DEPTH`).
``BLOCK_CID_MISMATCH``
    an MST node block does not hash to its CID.

and returns ``False`` when a node it needs is not in the CAR (a commit of a PDS
before Sync 1.1): the operations are then not proven, neither way.
Cost: a commit frame of a real PDS (one record, a CAR of about seven blocks, an
MST of several layers) takes about 28 µs of CPU to decode and 31 µs with its
events built (Python 3.11, this project's loaded 2-core machine; min over runs):
the body's validation by the generated models is about 5 µs of it, the commit
block's checks against the body about 3 µs. :func:`prove_ops` adds about 32 µs
(three to four MST nodes decoded and checked), paid only with a signature check
(~300 µs).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Literal, NamedTuple, NoReturn, TypeAlias

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

if TYPE_CHECKING:  # the MST walk is imported when a proof runs (keeps decoding light)
    from ..atmosphere.cid import Link
    from ..atmosphere.repo import MstEntries

__all__ = [
    "DATASET_PREFIX",
    "MAX_CAR_BLOCKS",
    "MAX_CAR_HEADER_BYTES",
    "MAX_COMMIT_BYTES",
    "MAX_FRAME_BYTES",
    "MAX_ITEMS",
    "MAX_RECORD_DEPTH",
    "Frame",
    "FrameError",
    "FrameKind",
    "FrameOp",
    "decode_frame",
    "prove_ops",
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
MAX_CAR_HEADER_BYTES: Final = 1024
"""Cap on a CAR's header, bytes. ``{version: 1, roots: [CID]}`` takes 58; the cap
leaves room for a score of roots and keeps the header out of the item budget (it
is decoded apart from the body)."""
MAX_COMMIT_BYTES: Final = 8192
"""Cap on a commit block, bytes. A v3 commit is ``did`` (a DID: at most 2,048
characters), ``version``, ``data`` and ``prev`` (CIDs), ``rev`` (a TID) and a
64-byte ``sig``: under 2.3 KiB."""
MAX_SEQ: Final = 2**63 - 1
"""Largest ``seq`` (PostgreSQL ``bigint``; sequence numbers are positive)."""
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
_COMMIT_TYPE: Final = _NS + "#commit"
_COMMIT_KEYS: Final = frozenset(("did", "version", "data", "rev", "sig"))
_SEQUENCED: Final = (_sr.Commit, _sr.Sync, _sr.Identity, _sr.Account)
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

    Commits and ``#sync``: ``commit_cid`` (CID string of the signed commit),
    ``commit_block`` (its DAG-CBOR bytes, hash-checked against ``commit_cid``, for
    :mod:`.verify`), ``commit_data`` (binary CID of the commit's ``data``, the MST
    root; the commit block's ``version``, ``did`` and ``rev`` were checked against
    the body) and ``car_blocks`` (the CAR's sections, unhashed: for
    :func:`prove_ops`; slices of ``message.blocks``, so they hold no more memory);
    ``ops`` (commits only): the checked operations. A ``tooBig`` commit has
    ``commit_block``, ``commit_data`` and ``car_blocks`` ``None`` and no ``ops``.

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
    commit_data: bytes | None = None
    car_blocks: _Blocks | None = field(default=None, repr=False)

    @property
    def data_cid(self) -> str | None:
        """``commit_data`` as a CID string (``None`` without it)."""
        return None if self.commit_data is None else _link_of(self.commit_data)

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
    """A CID link in a CAR header or a commit block (told apart from a byte
    string)."""

    __slots__ = ()


_Links: TypeAlias = dict[int, bytes]
"""The tag-42 links one frame's decoding made: ``id()`` of each ``{"$link": str}``
map :func:`decode_frame`'s CID constructor returned → its binary CID. A map from
the wire that merely looks like a link (the data model does not call it one) is
another object, so not in it. (Identity, not a ``dict`` subclass: the models
validate a subclass by a slower path, ~3 µs more per commit; the maps are alive in
the decoded body while it is checked, so no ``id()`` is reused.)"""


def _pointer(loc: tuple[int | str, ...]) -> str:
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in loc)


def _clip(text: str) -> str:
    return text if len(text) <= _MAX_REASON else text[: _MAX_REASON - 1] + "…"


def _hint(body: dict[str, Any]) -> tuple[int | None, str | None]:
    """``(seq, did)`` read from an unvalidated body, for error messages (a ``seq``
    outside ``1 … MAX_SEQ`` is not given)."""
    seq = body.get("seq")
    did = body.get("repo", body.get("did"))
    return (
        seq if type(seq) is int and 0 < seq <= MAX_SEQ else None,
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
    if size > MAX_CAR_HEADER_BYTES:
        raise bad(f"CAR header of {size} bytes is over {MAX_CAR_HEADER_BYTES}")
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


_CID_FIELDS: Final = ("commit", "prevData")
_OP_CID_FIELDS: Final = ("cid", "prev")


def _raw_link(
    links: _Links, value: object, body: dict[str, Any], pointer: str
) -> bytes:
    """The binary CID of the CID field ``value`` at ``pointer`` of the decoded
    ``body``: it must be one of ``links`` (a tag-42 link, see :data:`_Links`), not
    a map ``{"$link": …}`` (which the models validate as a ``cid-link`` too).
    Every CID field of a commit (``commit``, ``prevData``, ``blobs[]``,
    ``ops[].cid``, ``ops[].prev``) goes through here, right after validation and
    before any use. Raises :class:`FrameError` (``FRAME_BODY``)."""
    raw = links.get(id(value))
    if raw is None:
        _not_a_link(body, pointer)
    return raw


def _not_a_link(body: dict[str, Any], pointer: str) -> NoReturn:
    value: Any = body
    for part in pointer.split("/")[2:]:
        value = value[int(part)] if type(value) is list else value[part]
    seq, did = _hint(body)
    raise FrameError(
        "FRAME_BODY",
        "a CID must be a DAG-CBOR link (tag 42), not "
        + ("a map" if isinstance(value, dict) else "another value"),
        location=pointer,
        seq=seq,
        repo=did,
    )


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
    m: _sr.Commit, body: dict[str, Any], links: _Links, blocks: _Blocks
) -> tuple[FrameOp, ...]:
    """The checked operations of ``m``, validated from the decoded ``body`` (whose
    operations give the binary CIDs, see :func:`_raw_link`)."""
    raw_ops = body["ops"]
    seq, did = m.seq, m.repo
    out = []
    paths: set[str] | None = set() if len(m.ops) > 1 else None
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
        path = op.path
        collection, _, rkey = path.partition("/")
        if not is_nsid(collection) or not is_record_key(rkey):
            raise FrameError(
                "OP_PATH",
                f"path {path[:120]!r} is not {{NSID}}/{{record key}}",
                location=where + "/path",
                seq=seq,
                repo=did,
            )
        if paths is not None:
            if path in paths:
                raise FrameError(
                    "OP_DUPLICATE",
                    f"a second operation on {path[:120]!r} in one commit",
                    location=where + "/path",
                    seq=seq,
                    repo=did,
                )
            paths.add(path)
        raw_op = raw_ops[i]
        prev = op.prev
        prev_cid = None
        if prev is not None:
            prev_cid = prev.link
            raw = _raw_link(links, raw_op["prev"], body, where + "/prev")
            _sha256_cid(raw, prev_cid, where + "/prev", seq, did)
        if action == "delete":
            if op.cid is not None:
                raise FrameError(
                    "OP_CID",
                    "a delete operation carries no record CID",
                    location=where + "/cid",
                    seq=seq,
                    repo=did,
                )
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
        raw = _raw_link(links, raw_op["cid"], body, where + "/cid")
        _sha256_cid(raw, link, where + "/cid", seq, did)
        block = _checked_block(blocks, raw, link, where + "/cid", seq, did)
        scan = None if items + len(block) <= MAX_ITEMS else MAX_ITEMS - items
        record, used = _record(block, link, where + "/cid", seq, did, scan)
        items += used
        out.append(FrameOp(action, collection, rkey, link, record, prev_cid))
    return tuple(out)


def _commit_object(
    block: memoryview,
    link: str,
    did: str,
    rev: str,
    seq: int,
    did_field: str,
) -> bytes:
    """Check the hash-checked commit block ``block`` (CID ``link``) against the
    body: ``version`` 3, ``did`` and ``rev`` the body's (``did_field`` names the
    body's DID field). Returns the binary CID of its ``data``. Raises
    :class:`FrameError` (``COMMIT_INVALID``, ``COMMIT_MISMATCH``)."""
    size = len(block)
    if size > MAX_COMMIT_BYTES:
        raise FrameError(
            "COMMIT_INVALID",
            f"commit block {link} of {size} bytes is over {MAX_COMMIT_BYTES}",
            location="/body/blocks",
            seq=seq,
            repo=did,
            cid=link,
        )
    try:
        commit, used = _decode(block, _CarLink, False)
    except Exception as exc:  # noqa: BLE001 - any decoder failure is one finding
        raise FrameError(
            "COMMIT_INVALID",
            f"commit block {link} is not DAG-CBOR: {_clip(str(exc))}",
            location="/body/blocks",
            seq=seq,
            repo=did,
            cid=link,
        ) from None
    if used != size or type(commit) is not dict:
        raise FrameError(
            "COMMIT_INVALID",
            f"commit block {link} is not one DAG-CBOR map",
            location="/body/blocks",
            seq=seq,
            repo=did,
            cid=link,
        )
    get = commit.get
    version, data = get("version"), get("data")
    if (
        type(version) is int
        and version == 3
        and get("did") == did
        and get("rev") == rev
        and type(data) is _CarLink
        and len(data) == 36
        and data.startswith(_CID_PREFIX)
    ):
        return bytes(data)
    if not _COMMIT_KEYS <= commit.keys():
        why, where, rule = (
            f"block {link} is not a commit object (did, version, data, rev, sig)",
            "/body/blocks",
            "COMMIT_INVALID",
        )
    elif type(version) is not int or version != 3:
        why, where, rule = (
            f"commit {link} is not a version 3 commit",
            "/body/commit" if did_field == "/body/repo" else "/body/blocks",
            "COMMIT_MISMATCH",
        )
    elif get("did") != did:
        why, where, rule = (
            f"commit {link} is for another DID than the frame's {did_field[6:]}",
            did_field,
            "COMMIT_MISMATCH",
        )
    elif get("rev") != rev:
        why, where, rule = (
            f"the commit block's rev {str(get('rev'))[:20]!r} is not {rev}",
            "/body/rev",
            "COMMIT_MISMATCH",
        )
    else:
        why, where, rule = (
            f"commit {link}: data is not a CIDv1 dag-cbor sha2-256 link",
            "/body/blocks",
            "COMMIT_INVALID",
        )
    raise FrameError(rule, why, location=where, seq=seq, repo=did, cid=link)


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
    links: _Links = {}

    def cid_ctor(raw: bytes) -> dict[str, str]:
        link = {"$link": _link_of(raw)}
        links[id(link)] = raw
        return link

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

    if isinstance(m, _SEQUENCED) and not 0 < m.seq <= MAX_SEQ:
        raise FrameError(
            "FRAME_BODY",
            f"seq {m.seq} is not in 1 … 2**63-1",
            location="/body/seq",
            repo=m.repo if isinstance(m, _sr.Commit) else m.did,
        )
    if deep_check:
        _check_extras(m, body)
    if isinstance(m, _sr.Commit):
        return _commit_frame(m, body, links, t, size, max_blocks)
    if isinstance(m, _sr.Sync):
        seq, did = m.seq, m.did
        time = _parse_time(m.time, seq, did)
        root, blocks = _parse_car(m.blocks, max_blocks, seq, did)
        root_link = _link_of(root)
        _sha256_cid(root, root_link, "/body/blocks", seq, did)
        block = _checked_block(blocks, root, root_link, "/body/blocks", seq, did)
        data_raw = _commit_object(block, root_link, did, m.rev, seq, "/body/did")
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
            commit_data=data_raw,
            car_blocks=blocks,
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
    m: _sr.Commit,
    body: dict[str, Any],
    links: _Links,
    t: str,
    size: int,
    max_blocks: int,
) -> Frame:
    """The frame of a validated commit ``m``; ``body`` is the decoded body whose
    CID fields give the binary CIDs in ``links`` (see :func:`_raw_link`)."""
    seq, did = m.seq, m.repo
    commit_link = m.commit.link
    commit_raw = _raw_link(links, body["commit"], body, "/body/commit")
    _sha256_cid(commit_raw, commit_link, "/body/commit", seq, did)
    if m.prev_data is not None:
        prev_link = m.prev_data.link
        raw_prev = _raw_link(links, body["prevData"], body, "/body/prevData")
        _sha256_cid(raw_prev, prev_link, "/body/prevData", seq, did)
    if m.blobs:
        for i, blob in enumerate(body["blobs"]):
            _raw_link(links, blob, body, f"/body/blobs/{i}")
    time = _parse_time(m.time, seq, did)
    if m.too_big:
        # its operations are not read, but their CID fields are links all the same
        for i, op in enumerate(body["ops"]):
            for name in ("cid", "prev"):
                if op.get(name) is not None:
                    _raw_link(links, op[name], body, f"/body/ops/{i}/{name}")
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
    data_raw = _commit_object(block, commit_link, did, m.rev, seq, "/body/repo")
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
        ops=_commit_ops(m, body, links, blocks),
        commit_data=data_raw,
        car_blocks=blocks,
    )


# -- operation proofs -----------------------------------------------------------------


class _NodeMissing(Exception):
    """An MST node :func:`prove_ops` needs is not in the CAR."""


def prove_ops(frame: Frame, *, max_depth: int | None = None) -> bool:
    """Prove each operation of a commit frame against the Merkle Search Tree of its
    commit's ``data`` ("Repository" spec § MST Structure; "Sync" spec § Commit
    Validation: since Sync 1.1 a commit's CAR carries the MST nodes on the path to
    each operation's key, for creates, updates and deletes alike).

    A create or update must find its ``{collection}/{rkey}`` → ``cid`` in the
    tree; a delete must find its path absent. Nodes are read from
    ``frame.car_blocks``, each hash-checked (sha2-256) before it is decoded
    (cbrrr, links as :class:`~atdata_runtime.atmosphere.cid.Link`; decoded once per
    frame, items bounded by :data:`MAX_ITEMS` together) and walked by
    :func:`~atdata_runtime.atmosphere.repo.mst_find` (at most ``max_depth`` nodes
    per key; default :data:`~atdata_runtime.atmosphere.repo.MAX_MST_DEPTH`).

    Only meaningful once the commit block is known to be signed (:mod:`.verify`):
    ``commit_data`` comes from it. Returns ``True`` when every operation is proven
    (an empty commit trivially), ``False`` when a node the proof needs is absent
    from the CAR (nothing proven or disproven, e.g. a PDS before Sync 1.1); raises
    :class:`FrameError` ``OP_NOT_IN_COMMIT``, ``MST_INVALID`` or
    ``BLOCK_CID_MISMATCH`` (see the module docstring) for the first operation
    disproven, even after an incomplete one. ``ValueError`` for a frame that is
    not a commit with its blocks (``tooBig``)."""
    from ..atmosphere.cid import Link
    from ..atmosphere.errors import RecordVerificationError
    from ..atmosphere.repo import MAX_MST_DEPTH, mst_find, mst_node

    depth = MAX_MST_DEPTH if max_depth is None else max_depth

    data, blocks = frame.commit_data, frame.car_blocks
    if frame.kind != "commit" or data is None or blocks is None:
        raise ValueError("prove_ops needs a commit frame with its CAR blocks")
    if not frame.ops:
        return True
    seq, did = frame.seq, frame.did
    nodes: dict[bytes, tuple[MstEntries, Link | None]] = {}
    spent = 0  # items of the nodes decoded so far (bytes: an upper bound), scanned
    where = ""

    def node_at(raw: bytes) -> tuple[MstEntries, Link | None]:
        nonlocal spent
        got = nodes.get(raw)
        if got is not None:
            return got
        block = blocks.get(raw)
        if block is None:
            raise _NodeMissing
        if hashlib.sha256(block).digest() != raw[4:]:
            link = _link_of(raw)
            raise FrameError(
                "BLOCK_CID_MISMATCH",
                f"MST node {link} does not hash (sha2-256) to its CID",
                location="/body/blocks",
                seq=seq,
                repo=did,
                cid=link,
            )

        def bad(why: str) -> FrameError:
            link = _link_of(raw)
            return FrameError(
                "MST_INVALID",
                f"MST node {link}: {why}",
                location=where,
                seq=seq,
                repo=did,
                cid=link,
            )

        size = len(block)
        if spent + size > MAX_ITEMS:
            try:
                items, _ = _scan(block, 0, size, MAX_ITEMS - spent, 4)
            except _ScanError as exc:
                raise bad(str(exc)) from None
            spent += items
        else:
            spent += size
        try:
            value, used = _decode(block, Link, False)
        except Exception as exc:  # noqa: BLE001 - any decoder failure is one finding
            raise bad(f"not DAG-CBOR: {_clip(str(exc))}") from None
        if used != size:
            raise bad("not one DAG-CBOR value")
        try:
            got = mst_node(value, raw)
        except RecordVerificationError as exc:
            raise FrameError(
                "MST_INVALID",
                _clip(exc.reason),
                location=where,
                seq=seq,
                repo=did,
                cid=_link_of(raw),
            ) from None
        nodes[raw] = got
        return got

    complete = True
    for i, op in enumerate(frame.ops):
        where = f"/body/ops/{i}/path"
        path = f"{op.collection}/{op.rkey}"
        try:
            found = mst_find(node_at, data, path.encode(), max_depth=depth)
        except _NodeMissing:
            complete = False
            continue
        except RecordVerificationError as exc:
            raise FrameError(
                "MST_INVALID",
                _clip(f"the MST path to {path[:120]!r}: {exc.reason}"),
                location=where,
                seq=seq,
                repo=did,
            ) from None
        if op.action == "delete":
            if found is not None:
                raise FrameError(
                    "OP_NOT_IN_COMMIT",
                    f"deleted {path[:120]!r} is still in the signed tree",
                    location=where,
                    seq=seq,
                    repo=did,
                )
        elif found is None:
            raise FrameError(
                "OP_NOT_IN_COMMIT",
                f"the signed tree has no record at {path[:120]!r}",
                location=where,
                seq=seq,
                repo=did,
                cid=op.cid,
            )
        elif (held := _link_of(found.raw)) != op.cid:
            raise FrameError(
                "OP_NOT_IN_COMMIT",
                f"the signed tree has {held[:80]} at {path[:120]!r}, not {op.cid}",
                location=f"/body/ops/{i}/cid",
                seq=seq,
                repo=did,
                cid=op.cid,
            )
    return complete
