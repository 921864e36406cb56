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

The decoder (:func:`decode_dag_cbor`) is also our own and strict, for blocks from
untrusted servers (repository proofs, :mod:`.repo`): libipld's decoder returns a link
and a byte string as the same ``bytes`` (so ``$link`` and ``$bytes`` could not be told
apart) and accepts non-shortest integer heads. Ours refuses anything that is not the
one DAG-CBOR encoding of an AT Protocol data-model value: indefinite lengths,
non-shortest heads, floats, tags other than 42, simple values other than
``false``/``true``/``null``, non-string or unsorted or duplicate map keys, invalid
UTF-8, malformed CIDs and trailing bytes. Nesting is bounded (``max_depth``, default
:data:`MAX_DEPTH` = 128 arrays/maps) and no length is trusted beyond the bytes
present, so decoding costs at most linear time and memory in the input.
"""

from __future__ import annotations

import base64
import hashlib
from typing import Any

__all__ = [
    "MAX_DEPTH",
    "DataModelError",
    "Link",
    "blob_cid",
    "cid_to_bytes",
    "cid_to_str",
    "dag_cbor",
    "decode_dag_cbor",
    "from_json",
    "read_varint",
    "record_cid",
    "to_json",
]

MAX_DEPTH = 128
"""Default bound on array/map nesting accepted by :func:`decode_dag_cbor`."""

_B32 = "abcdefghijklmnopqrstuvwxyz234567"


class DataModelError(ValueError):
    """A value is not in the AT Protocol data model (float, non-string map key,
    malformed ``$link`` / ``$bytes``, nesting deeper than :data:`MAX_DEPTH`); the
    message names the JSON pointer. ``rule``: ``DATA_MODEL_INVALID``, or
    ``DATA_MODEL_TOO_DEEP`` for nesting."""

    def __init__(self, message: str, rule: str = "DATA_MODEL_INVALID") -> None:
        super().__init__(message)
        self.rule = rule


def _too_deep(pointer: str) -> DataModelError:
    return DataModelError(
        f"{(pointer or '/')[:200]}: nested deeper than {MAX_DEPTH} arrays/maps",
        rule="DATA_MODEL_TOO_DEEP",
    )


class Link:
    """A CID link of the data model (CBOR tag 42); ``raw`` is the binary CID."""

    __slots__ = ("raw",)

    def __init__(self, raw: bytes) -> None:
        self.raw = raw

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Link) and other.raw == self.raw

    def __hash__(self) -> int:
        return hash(self.raw)

    def __repr__(self) -> str:
        return f"Link({cid_to_str(self.raw)})"


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


def cid_to_str(raw: bytes) -> str:
    """Base32 multibase string (``b…``) of a binary CIDv1."""
    return _b32encode(raw)


def _cid(codec: int, data: bytes) -> str:
    return _b32encode(bytes((1, codec, 0x12, 0x20)) + hashlib.sha256(data).digest())


def blob_cid(data: bytes) -> str:
    """CID of blob bytes: CIDv1, raw codec (0x55), sha2-256, base32."""
    return _cid(0x55, data)


def from_json(value: Any, pointer: str = "", _depth: int = 0) -> Any:
    """The data-model value of decoded JSON: ``$link`` objects become links,
    ``$bytes`` objects bytes. Raises :class:`DataModelError` naming the pointer
    (also for nesting deeper than :data:`MAX_DEPTH`)."""
    if isinstance(value, (dict, list)) and _depth >= MAX_DEPTH:
        raise _too_deep(pointer)
    if isinstance(value, dict):
        if "$link" in value:
            link = value["$link"]
            if len(value) != 1 or not isinstance(link, str):
                raise DataModelError(f"{pointer or '/'}: malformed $link object")
            return Link(cid_to_bytes(link))
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
            k: from_json(
                v, f"{pointer}/{k.replace('~', '~0').replace('/', '~1')}", _depth + 1
            )
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [from_json(v, f"{pointer}/{i}", _depth + 1) for i, v in enumerate(value)]
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


def _encode(value: Any, out: bytearray, pointer: str, depth: int = 0) -> None:
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
    elif isinstance(value, Link):
        out += b"\xd8\x2a"
        _head(2, len(value.raw) + 1, out)
        out.append(0)
        out += value.raw
    elif isinstance(value, list):
        if depth >= MAX_DEPTH:
            raise _too_deep(pointer)
        _head(4, len(value), out)
        for i, item in enumerate(value):
            _encode(item, out, f"{pointer}/{i}", depth + 1)
    elif isinstance(value, dict):
        if depth >= MAX_DEPTH:
            raise _too_deep(pointer)
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
            _encode(value[k], out, f"{pointer}/{k}", depth + 1)
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


def to_json(value: Any, _depth: int = 0) -> Any:
    """The JSON form of a data-model value (inverse of :func:`from_json`): links
    become ``{"$link": cid}``, byte strings ``{"$bytes": base64}`` (standard
    alphabet, no padding, AT Protocol "Data Model" spec § JSON). Raises
    :class:`DataModelError` for nesting deeper than :data:`MAX_DEPTH`."""
    if isinstance(value, (dict, list)) and _depth >= MAX_DEPTH:
        raise _too_deep("")
    if isinstance(value, Link):
        return {"$link": cid_to_str(value.raw)}
    if isinstance(value, bytes):
        return {"$bytes": base64.b64encode(value).decode("ascii").rstrip("=")}
    if isinstance(value, dict):
        return {k: to_json(v, _depth + 1) for k, v in value.items()}
    if isinstance(value, list):
        return [to_json(v, _depth + 1) for v in value]
    return value


def read_varint(data: bytes, pos: int, end: int | None = None) -> tuple[int, int]:
    """``(value, offset after it)`` of the unsigned varint at ``data[pos]``, not
    reading past ``end`` (default ``len(data)``): unsigned LEB128 as the
    multiformats unsigned-varint spec has it (at most 9 bytes, minimally encoded).
    Raises :class:`DataModelError` for a truncated, longer or non-minimal one (the
    CID and CAR readers both use it)."""
    if end is None:
        end = len(data)
    n = shift = 0
    for i in range(9):
        if pos + i >= end:
            raise DataModelError("truncated varint")
        b = data[pos + i]
        n |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            if b == 0 and i > 0:
                raise DataModelError("varint is not minimally encoded")
            return n, pos + i + 1
    raise DataModelError("varint longer than 9 bytes")


def check_cid(raw: bytes) -> None:
    """Check that ``raw`` is a well-formed binary CIDv1 (version, codec, multihash
    code, digest length matching the digest). Raises :class:`DataModelError`."""
    if not raw or raw[0] != 1:
        raise DataModelError("link is not a CIDv1")
    _, pos = read_varint(raw, 1, len(raw))
    _, pos = read_varint(raw, pos, len(raw))
    size, pos = read_varint(raw, pos, len(raw))
    if len(raw) - pos != size:
        raise DataModelError("CID digest length does not match its multihash")


class _Decoder:
    __slots__ = ("data", "max_depth", "pos")

    def __init__(self, data: bytes, max_depth: int) -> None:
        self.data = data
        self.pos = 0
        self.max_depth = max_depth

    def fail(self, why: str) -> DataModelError:
        return DataModelError(f"byte {self.pos}: {why}")

    def head(self) -> tuple[int, int, int]:
        data, pos = self.data, self.pos
        if pos >= len(data):
            raise self.fail("truncated")
        first = data[pos]
        major, info = first >> 5, first & 0x1F
        if info < 24:
            self.pos = pos + 1
            return major, info, info
        if info > 27:
            raise self.fail("indefinite length or reserved value")
        width = 1 << (info - 24)
        if pos + 1 + width > len(data):
            raise self.fail("truncated")
        n = int.from_bytes(data[pos + 1 : pos + 1 + width], "big")
        if major != 7 and n < (24 if width == 1 else 1 << (4 * width)):
            raise self.fail("integer or length not in its shortest form")
        self.pos = pos + 1 + width
        return major, info, n

    def take(self, n: int) -> bytes:
        if n > len(self.data) - self.pos:
            raise self.fail(f"length {n} runs past the end")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def value(self, depth: int) -> Any:
        major, info, n = self.head()
        if major == 0:
            return n
        if major == 1:
            return -1 - n
        if major == 2:
            return self.take(n)
        if major == 3:
            try:
                return self.take(n).decode("utf-8")
            except UnicodeDecodeError:
                raise self.fail("text is not valid UTF-8") from None
        if major in (4, 5):
            if depth >= self.max_depth:
                raise self.fail(f"nesting deeper than {self.max_depth}")
            if n > len(self.data) - self.pos:
                raise self.fail(f"{n} items cannot fit in the bytes left")
            if major == 4:
                return [self.value(depth + 1) for _ in range(n)]
            out: dict[str, Any] = {}
            last: bytes | None = None
            for _ in range(n):
                kmajor, _, klen = self.head()
                if kmajor != 3:
                    raise self.fail("map key is not a string")
                raw = self.take(klen)
                if last is not None and (len(last), last) >= (len(raw), raw):
                    raise self.fail("map keys are not sorted or not unique")
                last = raw
                try:
                    key = raw.decode("utf-8")
                except UnicodeDecodeError:
                    raise self.fail("map key is not valid UTF-8") from None
                out[key] = self.value(depth + 1)
            return out
        if major == 6:
            if n != 42:
                raise self.fail(f"tag {n} is not allowed (only 42, a CID link)")
            bmajor, _, blen = self.head()
            if bmajor != 2:
                raise self.fail("tag 42 does not hold a byte string")
            raw = self.take(blen)
            if not raw or raw[0] != 0:
                raise self.fail("CID link lacks the 0x00 multibase prefix")
            try:
                check_cid(raw[1:])
            except DataModelError as exc:
                raise self.fail(f"malformed CID link: {exc}") from None
            return Link(raw[1:])
        if info == 20:
            return False
        if info == 21:
            return True
        if info == 22:
            return None
        if info in (25, 26, 27):
            raise self.fail("floats are not in the AT Protocol data model")
        raise self.fail(f"simple value {n} is not allowed")


def decode_dag_cbor(data: bytes, *, max_depth: int = MAX_DEPTH) -> Any:
    """Decode one DAG-CBOR value strictly (see the module docstring): links are
    :class:`Link`, byte strings ``bytes``. Arrays/maps may nest ``max_depth`` deep
    (default :data:`MAX_DEPTH`). Raises :class:`DataModelError` naming the byte
    offset of the first problem; never anything else for any input."""
    dec = _Decoder(bytes(data), max_depth)
    value = dec.value(0)
    if dec.pos != len(dec.data):
        raise dec.fail("trailing bytes after the value")
    return value
