"""Events → row tuples for binary COPY into ``ingest_events`` and
``ingest_dead_letters``.

A row of :data:`ROW_COLUMNS` (``schema.EVENT_COLUMNS`` without ``indexed_at``,
which PostgreSQL fills with the batch transaction's ``now()``: ``seq`` ..
``event_time``, then ``verify_rule``), in that order:

- a ``#commit`` gives one row per record operation (``idx`` = the operation's index,
  ``action`` create/update/delete, ``record`` the record in the JSON data model for
  create/update, NULL for delete), or one row ``event_type='commit'`` without
  ``action`` when it has no operations (``record``: the commit's body without its
  CAR);
- ``#identity``, ``#account``, ``#sync`` give one row (``idx`` 0, ``record``: the
  event's body as JSON, never the CAR bytes);
- ``#info`` has no ``seq`` (Sync spec, "Firehose"): its row is **positioned after
  the seq it followed**: it takes the ``seq`` of the last event read before it (0
  when none was) and ``idx`` -1, so that it never collides with that seq's own
  rows (``idx`` >= 0; in ``(seq, idx)`` order it sorts just before them, although
  it arrived after them). A consumer that already read past that seq (``GET
  /events?since=<that seq>`` is exclusive) never sees the row; so the ingester also
  keeps the last ``#info`` in ``ingest_cursor.last_info`` (:func:`info_json`),
  which ``/health`` can show.

``record`` is JSON text (asyncpg's binary ``jsonb`` codec takes ``str``). PostgreSQL's
``jsonb`` cannot hold U+0000 (a valid DAG-CBOR string character): such a record is
stored with U+0000 replaced by U+FFFD and ``valid`` set to ``RECORD_NUL``.

``valid`` (create/update only): ``'ok'`` when the record validates against its
generated model (:func:`.records.validate_record`: the generated packages' record
registries), else a short text ``"<RULE> <JSON pointer>"`` of the first problem;
NULL when no model is known or the validation policy skips the collection.

``verified`` / ``verify_rule`` (commits and ``#sync``): the signature verdict
(:class:`atdata_runtime.firehose.verify.Verdict`): ``True`` / NULL when
signature, operation proofs and rev were all good; NULL / NULL when the policy
did not ask for a check; NULL / the verdict's rule (``REV_STALE``,
``PROOF_INCOMPLETE``, ``IDENTITY_UNRESOLVED``, ``COMMIT_TOO_BIG``, ...) when the
check could not call it verified (a bad commit is a dead letter, not a row).

A dead-letter row (:data:`DEAD_COLUMNS`) keeps a frame that could not be decoded or
verified: ``(seq, rule, reason, location, frame[:64 KiB], frame size)``.
"""

from __future__ import annotations

import datetime as _dt
import logging
from collections.abc import Callable
from typing import Any, Final, TypeAlias

import orjson
from atdata_runtime.firehose.events import (
    Account,
    Commit,
    Create,
    Delete,
    Identity,
    Info,
    Sync,
    Update,
)

from .schema import EVENT_COLUMNS

__all__ = [
    "DEAD_COLUMNS",
    "DEAD_FRAME_BYTES",
    "ROW_COLUMNS",
    "DeadRow",
    "EventRow",
    "RecordValidator",
    "dead_letter_row",
    "event_rows",
    "info_json",
]

log = logging.getLogger(__name__)

ROW_COLUMNS: Final = tuple(c for c in EVENT_COLUMNS if c != "indexed_at")
"""The columns a row tuple fills, in order (``indexed_at`` is left to its default)."""
assert ROW_COLUMNS[-2:] == ("event_time", "verify_rule")

DEAD_COLUMNS: Final = ("seq", "rule", "reason", "location", "frame", "frame_size")
DEAD_FRAME_BYTES: Final = 64 * 1024
"""How much of a dead-lettered frame is kept."""
_TEXT_MAX: Final = 2000  # reason / location characters kept

EventRow: TypeAlias = tuple[Any, ...]
DeadRow: TypeAlias = tuple[
    int | None, str, str, str | None, bytes | None, int
]  # DEAD_COLUMNS

_ROW_OVERHEAD: Final = 160
"""Bytes counted per row besides its record text, for the buffer's byte bound."""

# -- record validation --------------------------------------------------------------

_DATASET_PREFIX: Final = "science.alt.dataset."
RecordCheck: TypeAlias = Callable[[str, Any], "str | None"]


class RecordValidator:
    """Computes the ``valid`` column under a policy: ``all`` (every record whose
    NSID has a generated model: :func:`.records.validate_record`), ``dataset``
    (``science.alt.dataset.*`` only) or ``none``. ``check`` replaces
    :func:`.records.validate_record` (tests)."""

    def __init__(self, policy: str, check: RecordCheck | None = None) -> None:
        if policy not in ("all", "dataset", "none"):
            raise ValueError(f"validate policy {policy!r}")
        self.policy = policy
        if check is None:
            from .records import validate_record

            check = validate_record
        self._check = check
        self._broken: set[str] = set()

    def __call__(self, collection: str, record: dict[str, Any]) -> str | None:
        """``'ok'``, the first problem (``"<RULE> <JSON pointer>"``), or ``None``
        (no model, skipped by the policy, or a broken registry entry: logged once
        per NSID)."""
        if self.policy == "none" or (
            self.policy == "dataset" and not collection.startswith(_DATASET_PREFIX)
        ):
            return None
        try:
            return self._check(collection, record)
        except LookupError as exc:  # RecordRegistryError: a stale generated package
            if collection not in self._broken and len(self._broken) < 1000:
                self._broken.add(collection)
                log.error("record model of %s unusable: %s", collection, exc)
            return None


# -- rows ---------------------------------------------------------------------------


def _nul_free(value: Any) -> Any:
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, dict):
        return {_nul_free(k): _nul_free(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_nul_free(v) for v in value]
    return value


_dumps = orjson.dumps


def _record_json(record: Any) -> tuple[str, bool]:
    """JSON text of ``record`` for ``jsonb``, and whether U+0000 had to be
    replaced."""
    text = _dumps(record).decode()
    if "\\u0000" in text:
        fixed = _dumps(_nul_free(record)).decode()
        return fixed, fixed != text
    return text, False


def _iso(t: _dt.datetime | None) -> str | None:
    return None if t is None else t.isoformat().replace("+00:00", "Z")


def _body(obj: dict[str, Any]) -> str:
    return _dumps({k: v for k, v in obj.items() if v is not None}).decode()


def event_rows(
    event: Any,
    validate: RecordValidator,
    *,
    seq_hint: int = 0,
    verified: bool | None = None,
    verify_rule: str | None = None,
) -> tuple[list[EventRow], int]:
    """The rows of one decoded frame (``Commit``, ``Identity``, ``Account``,
    ``Sync``, ``Info``; a bare ``Create``/``Update``/``Delete`` gives its own row),
    and the bytes they hold (for the buffer's byte bound). ``seq_hint`` is the seq
    an ``#info`` row takes (the last seq read before it); ``verified`` the
    signature verdict of a ``#sync`` (commits carry their own); ``verify_rule``
    the verdict's rule for a commit or ``#sync`` not verified (ignored when the
    event is verified; at most 64 characters kept). Raises ``TypeError`` for
    anything else."""
    rule = None if verify_rule is None else _clean(verify_rule)[:64] or None
    if isinstance(event, Commit):
        if event.verified:
            rule = None
        if not event.ops:
            body = _body(
                {
                    "seq": event.seq,
                    "repo": event.repo,
                    "rev": event.rev,
                    "since": event.since,
                    "commit": {"$link": event.commit_cid},
                    "tooBig": event.too_big or None,
                    "time": _iso(event.time),
                }
            )
            row = (
                event.seq,
                0,
                "commit",
                None,
                event.repo,
                None,
                None,
                None,
                None,
                event.rev,
                event.commit_cid,
                body,
                None,
                event.verified,
                event.time,
                rule,
            )
            return [row], len(body) + _ROW_OVERHEAD
        rows: list[EventRow] = []
        size = 0
        for op in event.ops:
            row, n = _op_row(op, validate, event.verified, rule)
            rows.append(row)
            size += n
        return rows, size
    if isinstance(event, Create | Update | Delete):
        row, n = _op_row(event, validate, event.verified, rule)
        return [row], n
    if isinstance(event, Identity):
        body = _body(
            {
                "seq": event.seq,
                "did": event.did,
                "handle": event.handle,
                "time": _iso(event.time),
            }
        )
        head = (event.seq, 0, "identity", None, event.did, None, None, None, None)
        return [(*head, None, None, body, None, None, event.time, None)], len(
            body
        ) + _ROW_OVERHEAD
    if isinstance(event, Account):
        body = _body(
            {
                "seq": event.seq,
                "did": event.did,
                "active": event.active,
                "status": event.status,
                "time": _iso(event.time),
            }
        )
        head = (event.seq, 0, "account", None, event.did, None, None, None, None)
        return [(*head, None, None, body, None, None, event.time, None)], len(
            body
        ) + _ROW_OVERHEAD
    if isinstance(event, Sync):
        body = _body(
            {
                "seq": event.seq,
                "did": event.did,
                "rev": event.rev,
                "commit": {"$link": event.commit_cid} if event.commit_cid else None,
                "time": _iso(event.time),
            }
        )
        head = (event.seq, 0, "sync", None, event.did, None, None, None, None)
        rule = None if verified else rule
        return [
            (*head, event.rev, event.commit_cid, body, None, verified, event.time, rule)
        ], len(body) + _ROW_OVERHEAD
    if isinstance(event, Info):
        text, _ = _record_json(
            {"name": event.name, "message": event.message, **event.extra}
        )
        head = (seq_hint, -1, "info", None, "", None, None, None, None)
        return [(*head, None, None, text, None, None, None, None)], len(
            text
        ) + _ROW_OVERHEAD
    raise TypeError(f"not a firehose event: {type(event).__name__}")


def info_json(info: Info, *, after_seq: int, received_at: _dt.datetime) -> str:
    """``ingest_cursor.last_info`` of an ``#info`` frame, as JSON text:
    ``{"name", "message", "after_seq", "received_at"}`` (``after_seq``: the seq
    its row is positioned at, the last one read before it, 0 when none was;
    ``received_at``: ISO 8601 UTC). ``name``/``message`` are cut to 256 / 2000
    characters (they come from the relay) and U+0000 is replaced."""
    text, _ = _record_json(
        {
            "name": info.name[:256],
            "message": None if info.message is None else info.message[:_TEXT_MAX],
            "after_seq": after_seq,
            "received_at": _iso(received_at.astimezone(_dt.UTC)),
        }
    )
    return text


def _op_row(
    op: Create | Update | Delete,
    validate: RecordValidator,
    verified: bool | None,
    rule: str | None,
) -> tuple[EventRow, int]:
    row: EventRow
    flag = op.verified if op.verified is not None else verified
    if flag:
        rule = None
    if isinstance(op, Delete):
        row = (
            op.seq,
            op.idx,
            "commit",
            "delete",
            op.repo,
            op.collection,
            op.rkey,
            None,
            op.prev_cid,
            op.rev,
            op.commit_cid,
            None,
            None,
            flag,
            op.time,
            rule,
        )
        return row, _ROW_OVERHEAD
    text, replaced = _record_json(op.record)
    valid = "RECORD_NUL" if replaced else validate(op.collection, op.record)
    row = (
        op.seq,
        op.idx,
        "commit",
        "create" if isinstance(op, Create) else "update",
        op.repo,
        op.collection,
        op.rkey,
        op.cid,
        op.prev_cid if isinstance(op, Update) else None,
        op.rev,
        op.commit_cid,
        text,
        valid,
        flag,
        op.time,
        rule,
    )
    return row, len(text) + _ROW_OVERHEAD


def dead_letter_row(
    frame: bytes,
    *,
    rule: str,
    reason: str,
    location: str | None = None,
    seq: int | None = None,
) -> DeadRow:
    """A row of :data:`DEAD_COLUMNS`: the first :data:`DEAD_FRAME_BYTES` of
    ``frame`` and its size; ``reason``/``location`` cut to 2000 characters (and
    U+0000 removed: PostgreSQL text cannot hold it)."""
    return (
        seq,
        _clean(rule)[:64] or "UNKNOWN",
        _clean(reason)[:_TEXT_MAX],
        None if location is None else _clean(location)[:_TEXT_MAX],
        bytes(frame[:DEAD_FRAME_BYTES]),
        len(frame),
    )


def _clean(text: str) -> str:
    return str(text).replace("\x00", "\ufffd")
