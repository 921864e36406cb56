"""Opaque keyset cursors of the AppView's paginated queries.

A cursor names the last row of a page by its sort key (never an offset: pages stay
complete and free of duplicates while rows are inserted between requests). On the
wire it is base64url (RFC 4648 § 5, no padding) of::

    version (1 byte, 0x01) | tag (8 bytes) | payload (JSON array, UTF-8)

``payload`` is ``[kind, *key]``: ``kind`` names the query and its order (e.g.
``"s.rel"``: searchDatasets by relevance), ``key`` the sort-key values of the last
row (integers, floats, strings) and whatever else the next page must reuse (a
relevance search's typo corrections). ``tag`` is the first 8 bytes of a keyed
BLAKE2b over the query's *fingerprint* (its filters) and the payload.

The tag is no secret and no authentication: its key is in this source, so anyone
can mint a cursor for any query. It only binds a cursor to the query that issued
it against mistakes (a cursor replayed on another query or another sort, a
truncated or mangled one: :class:`InvalidCursor`, served as the Lexicon error
``InvalidCursor``, HTTP 400). What a cursor carries is therefore checked as a
parameter is, before it reaches SQL (which takes it as ``$n`` parameters only):
each value's type and length, integers within 64 bits, floats finite and within
IEEE 754 single precision (the relevance score is a PostgreSQL ``real``); the
queries check the rest (timestamps within range; corrections: a few words for
words of the text). A minted cursor asks for nothing that the query's own
parameters could not (``q`` may OR any words).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Sequence
from typing import Any, Final

import orjson

__all__ = ["MAX_CURSOR", "InvalidCursor", "decode", "encode", "fingerprint"]

MAX_CURSOR: Final = 4096
"""Largest cursor accepted, in characters (the Lexicons' ``cursor`` maxLength): room
for a DID of 2,048 characters and a record key of 512 (the atproto spec's bounds) in
base64url, so that no published record can make its page's cursor too long."""

_VERSION: Final = 1
_TAG: Final = 8
_KEY: Final = b"atdata-appview cursor v1"
_MAX_TEXT: Final = 2048  # a key string (DID: 2,048 at most; record key: 512) longer than this never came from us
_FLOAT32_MAX: Final = 3.4028234663852886e38  # a PostgreSQL real's largest value

Key = int | float | str | None


class InvalidCursor(ValueError):
    """The cursor is not one this query issued (bad base64, wrong version, tag,
    kind, arity or value types)."""


def fingerprint(*parts: object) -> bytes:
    """A stable digest of the query's filters (``parts`` in a fixed order, JSON
    encodable: ``None``, str, int, bool, lists of str) binding a cursor to them."""
    return hashlib.blake2b(
        orjson.dumps(parts, option=orjson.OPT_NON_STR_KEYS), digest_size=16
    ).digest()


def _tag(fp: bytes, payload: bytes) -> bytes:
    return hmac.new(_KEY, fp + payload, hashlib.blake2b).digest()[:_TAG]


def encode(kind: str, key: Sequence[Key], fp: bytes = b"") -> str:
    """The cursor of the row whose sort key is ``key`` in query ``kind`` with
    filters digest ``fp`` (:func:`fingerprint`)."""
    payload = orjson.dumps([kind, *key])
    raw = bytes([_VERSION]) + _tag(fp, payload) + payload
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _key(value: Any) -> Key:
    return value  # type: ignore[no-any-return]


def decode(
    cursor: str, kind: str, types: Sequence[type | tuple[type, ...]], fp: bytes = b""
) -> list[Key]:
    """The sort key in ``cursor``, checked: issued for ``kind`` and ``fp``, with one
    value per entry of ``types`` (each an ``isinstance`` type; ``float`` accepts an
    ``int``), strings of at most 400 characters, integers within 64 bits, floats
    finite and within single precision. Raises :class:`InvalidCursor` naming what
    is wrong."""
    if len(cursor) > MAX_CURSOR:
        raise InvalidCursor(f"cursor is longer than {MAX_CURSOR} characters")
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
    except (binascii.Error, ValueError):
        raise InvalidCursor("cursor is not base64url") from None
    if len(raw) < 1 + _TAG + 2 or raw[0] != _VERSION:
        raise InvalidCursor("cursor is not one this service issued")
    tag, payload = raw[1 : 1 + _TAG], raw[1 + _TAG :]
    if not hmac.compare_digest(tag, _tag(fp, payload)):
        raise InvalidCursor("cursor was not issued for this query")
    try:
        values = orjson.loads(payload)
    except orjson.JSONDecodeError:
        raise InvalidCursor("cursor payload is not JSON") from None
    if not isinstance(values, list) or not values or values[0] != kind:
        raise InvalidCursor("cursor belongs to another query")
    key: list[Any] = values[1:]
    if len(key) != len(types):
        raise InvalidCursor("cursor has the wrong number of values")
    out: list[Key] = []
    for value, want in zip(key, types, strict=True):
        if isinstance(value, bool):
            raise InvalidCursor("cursor value has the wrong type")
        if want is float and isinstance(value, int):
            value = float(value)
        if value is not None and not isinstance(value, want):
            raise InvalidCursor("cursor value has the wrong type")
        if value is None and not (isinstance(want, tuple) and type(None) in want):
            raise InvalidCursor("cursor value is missing")
        if isinstance(value, str) and len(value) > _MAX_TEXT:
            raise InvalidCursor("cursor value is too long")
        if isinstance(value, int) and not -(2**63) <= value < 2**63:
            raise InvalidCursor("cursor value is out of range")
        if isinstance(value, float) and not abs(value) <= _FLOAT32_MAX:
            raise InvalidCursor("cursor value is out of range")  # inf, nan too
        out.append(_key(value))
    return out
