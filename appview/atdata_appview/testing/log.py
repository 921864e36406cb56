"""Write rows into the ingestion log (``ingest_events``) directly, as the ingester
would, for tests and benchmarks of the indexer: no relay, no PDS.

Each row is a mapping with the :data:`atdata_ingest.schema.EVENT_COLUMNS` names;
missing columns take defaults (``idx`` 0, ``verified`` true, ``valid`` ``'ok'``,
``indexed_at`` now). ``record`` is a JSON-data-model dict (encoded here).
"""

from __future__ import annotations

import datetime as _dt
import itertools
from collections.abc import Iterable, Mapping
from typing import Any

import asyncpg
import orjson
from atdata_ingest.schema import EVENT_COLUMNS

__all__ = ["LogWriter", "append_rows"]


async def append_rows(
    conn: asyncpg.Connection, rows: Iterable[Mapping[str, Any]]
) -> int:
    """Insert ``rows`` into ``ingest_events`` (binary COPY) and advance
    ``ingest_cursor.last_seq`` to the highest ``seq``; return the count."""
    now = _dt.datetime.now(_dt.UTC)
    records: list[tuple[Any, ...]] = []
    top = 0
    for row in rows:
        values = {
            "idx": 0,
            "verified": True,
            "valid": "ok",
            "indexed_at": now,
            "event_time": now,
            **row,
        }
        if values.get("record") is not None and not isinstance(values["record"], str):
            values["record"] = orjson.dumps(values["record"]).decode()
        top = max(top, int(values["seq"]))
        records.append(tuple(values.get(c) for c in EVENT_COLUMNS))
    async with conn.transaction():
        await conn.copy_records_to_table(
            "ingest_events", records=records, columns=list(EVENT_COLUMNS)
        )
        await conn.execute(
            "UPDATE ingest_cursor SET last_seq = greatest(last_seq, $1)", top
        )
        await conn.execute("SELECT pg_notify('ingest_events', $1)", str(top))
    return len(records)


class LogWriter:
    """Builds log rows with increasing ``seq`` and TID-like ``rev``s per repo.

    >>> log = LogWriter()
    >>> rows = [log.create("did:plc:a", "science.alt.dataset.schema", "X@1.0.0", rec)]
    >>> await append_rows(conn, rows)
    """

    def __init__(self, start: int = 1) -> None:
        self._seq = itertools.count(start)
        self._rev = itertools.count(1)

    def _rev_tid(self) -> str:
        # 13 base32-sortable characters, increasing: a valid TID shape
        n = (1_700_000_000_000_000 << 10) + next(self._rev)
        chars = "234567abcdefghijklmnopqrstuvwxyz"
        out = ""
        for _ in range(13):
            out = chars[n & 31] + out
            n >>= 5
        return out

    def create(
        self,
        did: str,
        collection: str,
        rkey: str,
        record: Mapping[str, Any],
        *,
        cid: str | None = None,
        action: str = "create",
        **extra: Any,
    ) -> dict[str, Any]:
        """A commit operation row (``action`` create or update)."""
        seq = next(self._seq)
        return {
            "seq": seq,
            "idx": 0,
            "event_type": "commit",
            "action": action,
            "repo": did,
            "collection": collection,
            "rkey": rkey,
            "cid": cid or f"bafyreifake{seq:020d}",
            "rev": self._rev_tid(),
            "commit_cid": f"bafyreicommit{seq:020d}",
            "record": dict(record),
            **extra,
        }

    def update(
        self,
        did: str,
        collection: str,
        rkey: str,
        record: Mapping[str, Any],
        **extra: Any,
    ) -> dict[str, Any]:
        """An update operation row."""
        return self.create(did, collection, rkey, record, action="update", **extra)

    def delete(self, did: str, collection: str, rkey: str) -> dict[str, Any]:
        """A delete operation row."""
        seq = next(self._seq)
        return {
            "seq": seq,
            "idx": 0,
            "event_type": "commit",
            "action": "delete",
            "repo": did,
            "collection": collection,
            "rkey": rkey,
            "rev": self._rev_tid(),
            "commit_cid": f"bafyreicommit{seq:020d}",
            "valid": None,
        }

    def identity(self, did: str, handle: str | None) -> dict[str, Any]:
        """An ``#identity`` row."""
        seq = next(self._seq)
        body: dict[str, Any] = {"seq": seq, "did": did, "time": "2026-01-01T00:00:00Z"}
        if handle is not None:
            body["handle"] = handle
        return {
            "seq": seq,
            "event_type": "identity",
            "repo": did,
            "record": body,
            "valid": None,
            "verified": None,
        }

    def account(
        self, did: str, active: bool, status: str | None = None
    ) -> dict[str, Any]:
        """An ``#account`` row (``status``: deleted, takendown, suspended, deactivated)."""
        seq = next(self._seq)
        body: dict[str, Any] = {
            "seq": seq,
            "did": did,
            "active": active,
            "time": "2026-01-01T00:00:00Z",
        }
        if status is not None:
            body["status"] = status
        return {
            "seq": seq,
            "event_type": "account",
            "repo": did,
            "record": body,
            "valid": None,
            "verified": None,
        }
