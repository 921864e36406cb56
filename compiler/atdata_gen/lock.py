"""``atdata-gen.lock``: remote schema and lens records pinned by CID.

The lock is JSON, written deterministically (keys sorted, two-space indent, entries
sorted by AT-URI, a final newline), so it diffs cleanly and two pulls of the same
records produce the same bytes::

    {
      "lockVersion": 1,
      "schemas": [
        {
          "cid": "bafyrei…",
          "did": "did:plc:…",
          "requested": "at://alice.example/science.alt.dataset.schema/ImageSample:1.0.0",
          "uri": "at://did:plc:…/science.alt.dataset.schema/ImageSample:1.0.0",
          "value": { … the record, exactly as fetched … }
        }
      ],
      "lenses": [ … lens records (science.alt.dataset.lens), same shape … ]
    }

``lenses`` is written only when a lens record is pinned (``atdata-gen pull`` of a
lens AT-URI, which also pins the lens's two schemas).

Each entry is also a schema-record source document (``uri``, ``cid``, ``value``), so
``atdata-gen build`` compiles pinned schemas offline, with diagnostics located in the
lock file itself. Before use, every entry's record is re-hashed: a record that does not
match its CID is an error (``LOCK_CID_MISMATCH``), as is a malformed lock
(``LOCK_FORMAT``). ``build --frozen`` also fails when a schema listed in
``[tool.atdata-gen] schemas`` is not pinned (``LOCK_STALE``) or the lock is missing
(``LOCK_MISSING``).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from atdata_runtime.atmosphere.cid import DataModelError, record_cid

from .config import LOCK_NAME
from .diagnostics import Reporter
from .sources import SourceDoc, load_text, read_reported

LENS = "science.alt.dataset.lens"
"""The lens record NSID (``atdata_runtime.atmosphere.records.LENS``; spelled here so
that reading the lock imports neither the front end nor pydantic; a test checks
they agree)."""

__all__ = [
    "LOCK_NAME",
    "Lock",
    "LockEntry",
    "is_lens_entry",
    "read_lock",
    "write_lock",
]

LOCK_VERSION = 1


@dataclass(frozen=True)
class LockEntry:
    """One pinned record: ``uri`` (DID authority), ``requested`` (as the user wrote
    it, maybe with a handle), ``did``, ``cid`` and the record ``value``."""

    uri: str
    requested: str
    did: str
    cid: str
    value: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {
            "cid": self.cid,
            "did": self.did,
            "requested": self.requested,
            "uri": self.uri,
            "value": self.value,
        }


@dataclass
class Lock:
    """A loaded lock: its ``entries`` and, when read from a file, the ``doc``."""

    entries: list[LockEntry]
    doc: SourceDoc | None = None

    def find(self, uri: str) -> LockEntry | None:
        """The entry pinned for ``uri`` (as requested, or by its DID form)."""
        for e in self.entries:
            if uri in (e.uri, e.requested):
                return e
        return None

    def source_docs(self) -> list[SourceDoc]:
        """One record source document per entry (schema or lens record), located
        in the lock file."""
        if self.doc is None:
            return []
        out = []
        for key, i, e in _lists(self.entries):
            value = e.to_json()
            out.append(
                SourceDoc(
                    path=self.doc.path,
                    text=self.doc.text,
                    value=value,
                    sha256=hashlib.sha256(
                        json.dumps(value, sort_keys=True).encode()
                    ).hexdigest(),
                    rel=f"{LOCK_NAME}#/{key}/{i}",
                    base=f"/{key}/{i}",
                )
            )
        return out


def is_lens_entry(entry: LockEntry) -> bool:
    """Whether ``entry`` pins a lens record (else a schema record)."""
    return entry.value.get("$type") == LENS


def _lists(entries: Sequence[LockEntry]) -> list[tuple[str, int, LockEntry]]:
    """``(list key, index, entry)`` in file order: schemas, then lenses, each
    sorted by AT-URI."""
    out = []
    for key, want in (("schemas", False), ("lenses", True)):
        chosen = sorted(
            (e for e in entries if is_lens_entry(e) is want), key=lambda e: e.uri
        )
        out += [(key, i, e) for i, e in enumerate(chosen)]
    return out


def render_lock(entries: Sequence[LockEntry]) -> str:
    """The lock file text for ``entries`` (deterministic)."""
    data: dict[str, Any] = {"lockVersion": LOCK_VERSION, "schemas": []}
    for key, _, e in _lists(entries):
        data.setdefault(key, []).append(e.to_json())
    return json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def write_lock(path: Path, entries: Sequence[LockEntry]) -> bool:
    """Write the lock atomically; returns whether the bytes changed."""
    text = render_lock(entries)
    try:
        if path.read_text(encoding="utf-8") == text:
            return False
    except OSError:
        pass
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".atdata-gen-lock-")
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(tmp, path)
    return True


def read_lock(path: Path, reporter: Reporter) -> Lock | None:
    """Read and verify ``path``: JSON syntax (``SRC_*``), shape (``LOCK_FORMAT``)
    and every record against its CID (``LOCK_CID_MISMATCH``), each reported at its
    location. Returns ``None`` when the file does not exist or has errors."""
    if not path.exists():
        return None
    raw = read_reported(path, reporter)
    if raw is None:
        return None
    doc = load_text(str(path), raw, reporter)
    if doc is None:
        return None
    data = doc.value
    errors_before = len(reporter.errors)
    if not isinstance(data, dict) or data.get("lockVersion") != LOCK_VERSION:
        reporter.report(
            doc.span("/lockVersion"),
            "LOCK_FORMAT",
            f"not an atdata-gen lock of version {LOCK_VERSION}",
        )
        return None
    entries = []
    items: list[tuple[str, Any]] = []
    for key in ("schemas", "lenses"):
        listed = data.get(key, [] if key == "lenses" else None)
        if not isinstance(listed, list):
            reporter.report(
                doc.span(f"/{key}"), "LOCK_FORMAT", f"'{key}' must be a list"
            )
            return None
        items += [(f"/{key}/{i}", item) for i, item in enumerate(listed)]
    for ptr, item in items:
        keys = ("uri", "requested", "did", "cid")
        if (
            not isinstance(item, dict)
            or not all(isinstance(item.get(k), str) for k in keys)
            or not isinstance(item.get("value"), dict)
        ):
            reporter.report(
                doc.span(ptr),
                "LOCK_FORMAT",
                "an entry needs string uri, requested, did, cid and an object value",
            )
            continue
        try:
            actual = record_cid(item["value"])
        except DataModelError as exc:
            reporter.report(doc.span(f"{ptr}/value"), "LOCK_CID_MISMATCH", str(exc))
            continue
        if actual != item["cid"]:
            reporter.report(
                doc.span(f"{ptr}/cid"),
                "LOCK_CID_MISMATCH",
                f"record of {item['uri']} hashes to {actual}, the lock says "
                f"{item['cid']} (edited by hand? run atdata-gen pull --update)",
            )
            continue
        entries.append(
            LockEntry(
                item["uri"], item["requested"], item["did"], item["cid"], item["value"]
            )
        )
    if len(reporter.errors) > errors_before:
        return None
    return Lock(entries, doc)
