"""The events of a repository event stream, as ``match``-friendly classes.

One ``com.atproto.sync.subscribeRepos`` frame (Sync spec, "Firehose") becomes:

- a ``#commit``: one :class:`Create`, :class:`Update` or :class:`Delete` per record
  operation, in the commit's order (all share the commit's ``seq``; ``idx`` is the
  operation's index), wrapped in a :class:`Commit`;
- an ``#identity``: :class:`Identity` (the DID's handle or key may have changed:
  drop cached DID documents);
- an ``#account``: :class:`Account` (``active`` false with a ``status`` such as
  ``deleted``, ``takendown``, ``suspended``, ``deactivated``);
- a ``#sync`` (Sync 1.1): :class:`Sync` (the repository's state was reset to
  ``rev``);
- an ``#info``: :class:`Info` (``OutdatedCursor`` and the like; no ``seq``).

``record`` is the record in the JSON data model (``{"$link": ...}`` for CID links,
``{"$bytes": ...}`` for bytes), as stored and served by the ingestion service;
:meth:`Create.model` validates it with a generated record model::

    match event:
        case Create(collection="science.alt.dataset.entry") as ev:
            entry = ev.model(Entry)      # generated LexRecord subclass
        case Delete(repo=did, rkey=rkey): ...
        case Account(active=False, status="deleted"): ...

Times are timezone-aware UTC :class:`datetime.datetime`; ``seq`` is the stream's
sequence number (an int, increasing, not necessarily contiguous).
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field
from typing import Any, TypeAlias, TypeVar

__all__ = [
    "Account",
    "Commit",
    "Create",
    "Delete",
    "Event",
    "Identity",
    "Info",
    "RecordEvent",
    "Sync",
    "Update",
]

_M = TypeVar("_M")


def _model(cls: type[_M], record: dict[str, Any]) -> _M:
    from_wire = getattr(cls, "from_wire", None)
    if from_wire is not None:
        return from_wire(record)  # type: ignore[no-any-return]
    validate = getattr(cls, "model_validate", None)
    if validate is None:
        raise TypeError(f"{cls!r} is not a generated record model")
    return validate(record)  # type: ignore[no-any-return]


@dataclass(frozen=True, slots=True)
class Create:
    """A record was created: ``at://{repo}/{collection}/{rkey}`` now holds
    ``record`` (CID ``cid``)."""

    seq: int
    repo: str
    collection: str
    rkey: str
    cid: str
    record: dict[str, Any]
    rev: str
    time: _dt.datetime | None
    idx: int = 0
    commit_cid: str | None = None
    verified: bool | None = None

    @property
    def uri(self) -> str:
        return f"at://{self.repo}/{self.collection}/{self.rkey}"

    def model(self, cls: type[_M]) -> _M:
        """``record`` validated by the generated record model ``cls``. Raises
        ``pydantic.ValidationError`` when the record breaks its Lexicon."""
        return _model(cls, self.record)


@dataclass(frozen=True, slots=True)
class Update:
    """A record was replaced: ``cid`` is the new CID, ``prev_cid`` the old one
    (Sync 1.1 commits carry it; ``None`` from older streams)."""

    seq: int
    repo: str
    collection: str
    rkey: str
    cid: str
    record: dict[str, Any]
    rev: str
    time: _dt.datetime | None
    idx: int = 0
    commit_cid: str | None = None
    verified: bool | None = None
    prev_cid: str | None = None

    @property
    def uri(self) -> str:
        return f"at://{self.repo}/{self.collection}/{self.rkey}"

    def model(self, cls: type[_M]) -> _M:
        """``record`` validated by the generated record model ``cls``."""
        return _model(cls, self.record)


@dataclass(frozen=True, slots=True)
class Delete:
    """A record was deleted (``prev_cid``: its last CID, when the stream says)."""

    seq: int
    repo: str
    collection: str
    rkey: str
    rev: str
    time: _dt.datetime | None
    idx: int = 0
    commit_cid: str | None = None
    verified: bool | None = None
    prev_cid: str | None = None

    @property
    def uri(self) -> str:
        return f"at://{self.repo}/{self.collection}/{self.rkey}"


RecordEvent: TypeAlias = Create | Update | Delete


@dataclass(frozen=True, slots=True)
class Commit:
    """A ``#commit`` frame: its record operations in order. ``too_big`` is the
    deprecated flag of commits whose blocks were left out (pre-Sync 1.1)."""

    seq: int
    repo: str
    rev: str
    time: _dt.datetime | None
    commit_cid: str
    ops: tuple[RecordEvent, ...] = ()
    since: str | None = None
    too_big: bool = False
    verified: bool | None = None


@dataclass(frozen=True, slots=True)
class Identity:
    """An ``#identity`` event: re-resolve ``did`` (handle or signing key may have
    changed). ``handle`` is the stream's hint, not verified."""

    seq: int
    did: str
    time: _dt.datetime | None
    handle: str | None = None


@dataclass(frozen=True, slots=True)
class Account:
    """An ``#account`` event: hosting status of ``did`` changed. ``active`` false
    with ``status`` ``deleted`` means every record of the account is gone."""

    seq: int
    did: str
    time: _dt.datetime | None
    active: bool
    status: str | None = None


@dataclass(frozen=True, slots=True)
class Sync:
    """A ``#sync`` event (Sync 1.1): the repository is now at ``rev``, whatever
    came before; consumers that mirror it should re-fetch it."""

    seq: int
    did: str
    rev: str
    time: _dt.datetime | None
    commit_cid: str | None = None


@dataclass(frozen=True, slots=True)
class Info:
    """An ``#info`` frame (``name`` such as ``OutdatedCursor``). It has no
    ``seq``."""

    name: str
    message: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


Event: TypeAlias = Create | Update | Delete | Identity | Account | Sync | Info
