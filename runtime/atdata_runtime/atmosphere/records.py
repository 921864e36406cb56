"""AT-URIs, record validation with the generated models, and the schema record key
scheme.

Schema record keys (``science.alt.dataset.schema``, key type ``any``) are
``{name}:{version}``, escaped so that every (name, version) pair has exactly one key
and every key is a valid record key (AT Protocol "Record Key" spec: 1–512 of
``A-Za-z0-9 . - _ : ~``, not ``.`` or ``..``):

* in the name, every character outside ``A-Za-z0-9 . - _`` (so ``:``, ``~``, spaces
  and all non-ASCII) becomes ``~XX`` per UTF-8 byte (upper-case hex);
* in the version, semver's ``+`` (build metadata) becomes ``~2B``; semver allows no
  other character outside the set;
* the two are joined by ``:`` (which the escaped name cannot contain).

``ImageSample`` 1.2.0 → ``ImageSample:1.2.0``; ``my sample`` 1.0.0+exp.sha.5114f85 →
``my~20sample:1.0.0~2Bexp.sha.5114f85``. The planned ``{NSID}@{semver}`` form is not a
valid key (``@``). Records under any other key (atdata 0.7 writes TIDs) are read the
same way; lookups by name and version list the collection.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from ..lex.formats import is_at_uri, is_did, is_handle, is_nsid, is_record_key
from .errors import RecordValidationError

__all__ = [
    "ENTRY",
    "LENS",
    "SCHEMA",
    "AtUri",
    "parse_schema_rkey",
    "schema_rkey",
    "validate_record",
]

SCHEMA = "science.alt.dataset.schema"
ENTRY = "science.alt.dataset.entry"
LENS = "science.alt.dataset.lens"

_SEMVER = re.compile(
    r"(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-((?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?"
    r"(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?"
)
_SAFE = re.compile(r"[A-Za-z0-9._-]")


@dataclass(frozen=True)
class AtUri:
    """``at://{authority}/{collection}/{rkey}`` (AT Protocol "AT URI Scheme" spec;
    a record URI: all three parts present)."""

    authority: str
    collection: str
    rkey: str

    @classmethod
    def parse(cls, uri: str) -> AtUri:
        """Parse a record AT-URI; raises ``ValueError`` saying what is wrong."""
        if not isinstance(uri, str) or not is_at_uri(uri):
            raise ValueError(f"{uri!r} is not a valid AT-URI")
        parts = uri[len("at://") :].split("#")[0].split("?")[0].split("/")
        if len(parts) != 3 or not parts[1] or not parts[2]:
            raise ValueError(
                f"{uri!r} is not a record AT-URI (at://authority/collection/rkey)"
            )
        authority, collection, rkey = parts
        if not (is_did(authority) or is_handle(authority)):
            raise ValueError(f"{uri!r}: authority {authority!r} is not a DID or handle")
        if not is_nsid(collection):
            raise ValueError(f"{uri!r}: collection {collection!r} is not an NSID")
        if not is_record_key(rkey):
            raise ValueError(f"{uri!r}: {rkey!r} is not a valid record key")
        return cls(authority, collection, rkey)

    def with_authority(self, authority: str) -> AtUri:
        return AtUri(authority, self.collection, self.rkey)

    def __str__(self) -> str:
        return f"at://{self.authority}/{self.collection}/{self.rkey}"


def is_semver(version: str) -> bool:
    """Whether ``version`` is a semantic version (semver.org 2.0.0)."""
    return _SEMVER.fullmatch(version) is not None


def _escape(text: str) -> str:
    return "".join(
        ch if _SAFE.fullmatch(ch) else "".join(f"~{b:02X}" for b in ch.encode("utf-8"))
        for ch in text
    )


def schema_rkey(name: str, version: str) -> str:
    """The record key of schema ``name`` at ``version`` (see the module docstring).
    Raises ``ValueError`` when ``version`` is not semver 2.0.0, or the escaped key
    passes the 512-character limit."""
    if not is_semver(version):
        raise ValueError(
            f"schema version {version!r} is not a semantic version (semver 2.0.0)"
        )
    if not name:
        raise ValueError("schema name is empty")
    key = f"{_escape(name)}:{version.replace('+', '~2B')}"
    if len(key) > 512:
        raise ValueError(
            f"record key for schema {name!r} {version} is over 512 characters"
        )
    assert is_record_key(key), key
    return key


def parse_schema_rkey(rkey: str) -> tuple[str, str] | None:
    """``(name, version)`` of a key made by :func:`schema_rkey`, else ``None`` (e.g.
    a TID, as atdata writes)."""
    if ":" not in rkey:
        return None
    head, _, tail = rkey.partition(":")
    try:
        raw = bytearray()
        i = 0
        while i < len(head):
            if head[i] == "~":
                raw += bytes.fromhex(head[i + 1 : i + 3])
                i += 3
            else:
                raw += head[i].encode("ascii")
                i += 1
        name = raw.decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        return None
    version = tail.replace("~2B", "+")
    if not is_semver(version) or schema_rkey(name, version) != rkey:
        return None
    return name, version


def _models() -> dict[str, Any]:
    from atdata_runtime.lexicons.science.alt.dataset.entry import Entry
    from atdata_runtime.lexicons.science.alt.dataset.label import Label
    from atdata_runtime.lexicons.science.alt.dataset.lens import Lens
    from atdata_runtime.lexicons.science.alt.dataset.schema import Schema

    return {m.lex_type: m for m in (Schema, Entry, Lens, Label)}


_MODELS: dict[str, Any] | None = None


def _pointer(loc: tuple[Any, ...]) -> str:
    return (
        "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in loc) or "/"
    )


def validate_record(uri: str, collection: str, value: Any) -> Any:
    """Validate a record of ``collection`` with our generated models (collections of
    ``science.alt.dataset.*``; other collections only need ``$type``). Returns the
    model instance (or ``value``). Raises :class:`RecordValidationError` naming
    ``uri`` and each problem's JSON pointer."""
    global _MODELS
    if not isinstance(value, dict):
        raise RecordValidationError(uri, "record is not a JSON object")
    if value.get("$type") != collection:
        raise RecordValidationError(
            uri, f"$type is {value.get('$type')!r}, expected {collection!r}"
        )
    if _MODELS is None:
        _MODELS = _models()
    model = _MODELS.get(collection)
    if model is None:
        return value
    try:
        return model.from_wire(value)
    except ValidationError as exc:
        problems = "; ".join(
            f"{_pointer(tuple(e['loc']))}: {e['msg']}" for e in exc.errors()[:10]
        )
        raise RecordValidationError(
            uri, f"invalid {collection} record: {problems}"
        ) from None
