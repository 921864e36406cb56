"""CIDs of records and blobs, computed locally (AT Protocol "Data Model" spec).

A record's CID is CIDv1, codec ``dag-cbor`` (0x71), hash sha2-256, of the record's
DAG-CBOR encoding; a blob's CID is CIDv1, codec ``raw`` (0x55), sha2-256 of its bytes.
Both print as multibase base32 (lower case, no padding, prefix ``b``).

The JSON form of a record is converted to the data model first: ``{"$link": cid}`` is
a link (CBOR tag 42), ``{"$bytes": base64}`` is a byte string. The DAG-CBOR encoder is
our own (not libipld's, whose encoder turns any byte string that happens to parse as a
CID into a link): definite lengths, shortest integer heads, map keys ordered by
length then bytes (RFC 7049 § 3.9 canonical order, as DAG-CBOR requires), no floats
(the AT Protocol data model has none). It is checked against the official interop
vectors (``interop/data-model``).
"""

from __future__ import annotations

import base64
import hashlib
from typing import Any

__all__ = [
    "DataModelError",
    "blob_cid",
    "cid_to_bytes",
    "dag_cbor",
    "from_json",
    "record_cid",
]

_B32 = "abcdefghijklmnopqrstuvwxyz234567"


class DataModelError(ValueError):
    """A value is not in the AT Protocol data model (float, non-string map key,
    malformed ``$link`` / ``$bytes``); the message names the JSON pointer."""


class _Link:
    __slots__ = ("raw",)

    def __init__(self, raw: bytes) -> None:
        self.raw = raw


def _b32encode(data: bytes) -> str:
    return "b" + base64.b32encode(data).decode("ascii").lower().rstrip("=")


def cid_to_bytes(cid: str) -> bytes:
    """Binary form of a base32 CIDv1 string (``b…``). Raises :class:`DataModelError`
    for anything else (CIDv0 ``Qm…`` is not allowed in the data model)."""
    if not cid.startswith("b") or len(cid) < 8:
        raise DataModelError(f"not a base32 CIDv1: {cid!r}")
    body = cid[1:].upper()
    try:
        raw = base64.b32decode(body + "=" * (-len(body) % 8))
    except ValueError as exc:
        raise DataModelError(f"not a base32 CIDv1: {cid!r}") from exc
    if raw[0] != 1:
        raise DataModelError(f"not a CIDv1: {cid!r}")
    return raw


def _cid(codec: int, data: bytes) -> str:
    return _b32encode(bytes((1, codec, 0x12, 0x20)) + hashlib.sha256(data).digest())


def blob_cid(data: bytes) -> str:
    """CID of blob bytes: CIDv1, raw codec (0x55), sha2-256, base32."""
    return _cid(0x55, data)


def from_json(value: Any, pointer: str = "") -> Any:
    """The data-model value of decoded JSON: ``$link`` objects become links,
    ``$bytes`` objects bytes. Raises :class:`DataModelError` naming the pointer."""
    if isinstance(value, dict):
        if "$link" in value:
            link = value["$link"]
            if len(value) != 1 or not isinstance(link, str):
                raise DataModelError(f"{pointer or '/'}: malformed $link object")
            return _Link(cid_to_bytes(link))
        if "$bytes" in value:
            data = value["$bytes"]
            if len(value) != 1 or not isinstance(data, str):
                raise DataModelError(f"{pointer or '/'}: malformed $bytes object")
            try:
                return base64.b64decode(data + "=" * (-len(data) % 4), validate=True)
            except ValueError as exc:
                raise DataModelError(
                    f"{pointer or '/'}: invalid base64 in $bytes"
                ) from exc
        return {
            k: from_json(v, f"{pointer}/{k.replace('~', '~0').replace('/', '~1')}")
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [from_json(v, f"{pointer}/{i}") for i, v in enumerate(value)]
    return value


def _head(major: int, n: int, out: bytearray) -> None:
    if n < 24:
        out.append(major << 5 | n)
    elif n < 0x100:
        out += bytes((major << 5 | 24, n))
    elif n < 0x10000:
        out.append(major << 5 | 25)
        out += n.to_bytes(2, "big")
    elif n < 0x100000000:
        out.append(major << 5 | 26)
        out += n.to_bytes(4, "big")
    elif n < 0x10000000000000000:
        out.append(major << 5 | 27)
        out += n.to_bytes(8, "big")
    else:
        raise DataModelError(f"integer {n} does not fit in 64 bits")


def _encode(value: Any, out: bytearray, pointer: str) -> None:
    if value is None:
        out.append(0xF6)
    elif value is True:
        out.append(0xF5)
    elif value is False:
        out.append(0xF4)
    elif isinstance(value, int):
        if value >= 0:
            _head(0, value, out)
        else:
            _head(1, -1 - value, out)
    elif isinstance(value, str):
        data = value.encode("utf-8")
        _head(3, len(data), out)
        out += data
    elif isinstance(value, (bytes, bytearray, memoryview)):
        _head(2, len(value), out)
        out += value
    elif isinstance(value, _Link):
        out += b"\xd8\x2a"
        _head(2, len(value.raw) + 1, out)
        out.append(0)
        out += value.raw
    elif isinstance(value, list):
        _head(4, len(value), out)
        for i, item in enumerate(value):
            _encode(item, out, f"{pointer}/{i}")
    elif isinstance(value, dict):
        keys = []
        for k in value:
            if not isinstance(k, str):
                raise DataModelError(f"{pointer or '/'}: map key {k!r} is not a string")
            keys.append((k.encode("utf-8"), k))
        keys.sort(key=lambda kv: (len(kv[0]), kv[0]))
        _head(5, len(keys), out)
        for raw, k in keys:
            _head(3, len(raw), out)
            out += raw
            _encode(value[k], out, f"{pointer}/{k}")
    elif isinstance(value, float) and value.is_integer() and abs(value) < 2**63:
        # JSON has one number type: "123.0" is the integer 123 (interop vectors).
        _encode(int(value), out, pointer)
    elif isinstance(value, float):
        raise DataModelError(
            f"{pointer or '/'}: float {value!r} is not in the AT Protocol data model"
        )
    else:
        raise DataModelError(
            f"{pointer or '/'}: {type(value).__name__} is not encodable"
        )


def dag_cbor(value: Any) -> bytes:
    """DAG-CBOR bytes of a data-model value (see :func:`from_json`)."""
    out = bytearray()
    _encode(value, out, "")
    return bytes(out)


def record_cid(record_json: Any) -> str:
    """CID of a record given in its JSON form (CIDv1, dag-cbor, sha2-256, base32).
    Raises :class:`DataModelError` for values outside the data model."""
    return _cid(0x71, dag_cbor(from_json(record_json)))
