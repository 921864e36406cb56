"""PackableSample: typed samples and their msgpack codec, wire-compatible with atdata.

A sample is one msgpack map, field name → value, in the schema's field order, packed
with msgpack's defaults, exactly as atdata 0.7.0b1 writes it (``msgpack.packb`` of
the instance's fields; ``None`` for an absent optional field; numpy arrays in the
compact layout of :mod:`atdata_runtime.samples.ndarray`; numpy scalars as Python values).
For the same sample both libraries produce byte-identical payloads.

Generated sample classes are keyword-only dataclasses deriving from
:class:`PackableSample` with a ``sample_fields`` tuple of :class:`FieldSpec` (wire
name, kind, optionality, array dtype/shape). Keyword-only fields make any field
order valid, including an optional field before a required one.

Reading is forward compatible: keys the class does not know are kept (and written
back by :meth:`PackableSample.pack`) or dropped with one warning
(``unknown="drop"``), or refused (``unknown="error"``); a missing optional field
reads as ``None``; a missing required field is an error naming it. Array dtype and
shape constraints (and string enums) are checked on write always, on read when
asked (``validate=True``).

Payloads come from strangers, so reading always checks what is cheap (see
:meth:`PackableSample.unpack`): each declared field's kind as msgpack decoded it
(a dict or an ext type in a ``str`` field is refused, ``True`` is not an ``int``),
list items, string map keys, no ext types, msgpack's ``max_*_len`` limits from the
payload size, :data:`MAX_VALUE_DEPTH` for undeclared keys, and from 64 KiB on a
decoded-size budget (:data:`DECODED_MAX_BYTES`). Every error is a
:class:`SampleFormatError` naming the shard, member and field path, with a rule
ID: ``SAMPLE_MSGPACK`` (not msgpack, ext type, declared length past the payload),
``SAMPLE_KIND``, ``SAMPLE_MISSING``, ``SAMPLE_MAP_KEY``, ``SAMPLE_DEPTH``,
``SAMPLE_TOO_LARGE``, ``SAMPLE_UNKNOWN_FIELD``, ``SAMPLE_SCHEMA`` (dtype, shape or
enum), ``SAMPLE_BATCH``, and the array rules of :mod:`.ndarray`.

Large payloads are encoded with one copy of the array data and decoded without
copying it: arrays are read-only views into the payload (``copy=True`` for
writable arrays).

Speed: on first use, a class gets ``pack`` (all fields scalars) and ``unpack``
(scalars and arrays) compiled for its fields (see :func:`_fast_pack_fn`): exact
type tests, one dict with constant keys, one msgpack call on a pooled
``msgpack.Packer`` (never shared by two calls in flight), the fields assigned as
the dataclass ``__init__`` would. Whatever they do not take as it is (a subclass
value, a numpy scalar, a missing or unknown key, a payload of 64 KiB or more, any
error) goes to the general path, so bytes, samples and errors are the same either
way (``tests/test_codec_fast.py``). A class whose MRO defines its own ``pack`` or
``unpack`` keeps it.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import itertools
import keyword
import struct
import sys
import typing
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Final, Generic, Literal, Self, TypeVar

import msgpack  # type: ignore[import-untyped]
import numpy as np
from numpy.typing import NDArray

from .errors import SampleFormatError
from .ndarray import (
    ArrayFormatError,
    BufferLike,
    array_header,
    decode_array,
    encode_npy,
)

__all__ = [
    "DECODED_FACTOR",
    "DECODED_MAX_BYTES",
    "DECODED_SLACK_BYTES",
    "ENCODINGS",
    "MAX_VALUE_DEPTH",
    "RESERVED_NAMES",
    "EncodedBlob",
    "FieldSpec",
    "PackableSample",
    "Ragged",
    "SampleBatch",
    "SampleFormatError",
    "Unknown",
    "generated_sample_classes",
]

Unknown = Literal["keep", "drop", "error"]
"""What to do with payload keys a class does not declare."""

Ragged = Literal["list", "pad", "error"]
"""How a batch holds an array field that cannot be stacked (``None`` in some samples
only, or shapes or dtypes that differ): ``"list"`` the per-sample values, ``"pad"``
a ``numpy.ma.MaskedArray`` padded to the largest shape (``None`` samples and padding
masked), ``"error"`` :class:`SampleFormatError` naming the sample."""

_LARGE: Final = 1 << 16
"""Payloads (or array totals) from this size take the zero-copy paths."""
_WIDE_MAP: Final = 64
"""A large payload's top-level map of more entries is counted against the budget."""

DECODED_FACTOR: int = 4
DECODED_SLACK_BYTES: int = 32 << 20
DECODED_MAX_BYTES: int = 256 << 20
"""The decoded-size budget of a payload of ``n >= 64 KiB`` bytes: the maps and
lists it decodes to (numpy arrays excluded: they are zero-copy views) may take at
most ``min(DECODED_MAX_BYTES, DECODED_SLACK_BYTES + DECODED_FACTOR * n)`` bytes of
Python objects, counted at CPython's size of each container (a list's pointer
array included, a dict ~48 bytes per entry) and of each string (64 bytes), bytes
(48), int and float (32) it holds, rounded up to pymalloc's blocks (a string's or
bytes' content is not counted: it is at most 4 × its payload bytes); by default
``min(256 MiB, 32 MiB + 4 × n)``. A list may also have at most budget / 72 items
and a map budget / 176 entries (refused by msgpack before it allocates them, so
decoding peaks below about twice the budget). msgpack's own per-container limits
cannot bound this: one byte (``0x80``, an empty map) decodes to a 64-byte dict,
so 15 MiB of empty maps took 1.16 GiB, and 3 bytes (``"ab"``) to a 51-byte str in
an 8-byte list slot, so 90 MiB of them took 2 GiB. Payloads under 64 KiB are not
counted (at most ~72 × 64 KiB). Over budget is a
:class:`SampleFormatError` with rule ``SAMPLE_TOO_LARGE``; samples that really
hold that many small lists can raise these module attributes
(``atdata_runtime.samples.codec.DECODED_MAX_BYTES = ...``)."""

MAX_VALUE_DEPTH: Final = 32
"""Maps and arrays nest at most this deep in a payload key the class does not
declare (a declared field nests as deep as its type says). msgpack itself reads
up to 1,024 levels; recursive consumers of kept values (``json``, ``repr``, record
hashing such as ``atmosphere.record_cid``, comparisons) hit Python's recursion limit
near 1,000. Deeper is a :class:`SampleFormatError` with rule ``SAMPLE_DEPTH``."""


@functools.lru_cache(maxsize=256)
def _np_dtype(name: str) -> np.dtype[Any]:
    return np.dtype(name)


@dataclass(frozen=True, slots=True)
class FieldSpec:
    """One field of a sample schema.

    ``name``: the Python attribute; ``wire``: the msgpack key; ``kind``: ``int``,
    ``float``, ``bool``, ``str``, ``bytes``, ``ndarray`` or ``list`` (with ``items``);
    ``optional``: absent/``None`` allowed. For ``ndarray``: ``dtype`` (numpy dtype
    name, ``None`` = any), ``shape`` (dims, ``None`` = any size; ``None`` = any rank)
    and ``dims`` (dimension names, documentation)."""

    name: str
    wire: str
    kind: str
    optional: bool = False
    dtype: str | None = None
    shape: tuple[int | None, ...] | None = None
    dims: tuple[str, ...] | None = None
    items: FieldSpec | None = None
    encoding: str | None = None
    """For ``kind="encoded"``: ``sparse``, ``arrow_tensor``, ``safetensors`` or
    ``dataframe`` (atdata's other array shims)."""
    enum: tuple[str, ...] | None = None
    """For ``kind="str"`` (or a list's ``str`` items): the values allowed (JSON
    Schema ``enum``), checked on pack and on unpack with ``validate=True``."""

    def check_enum(self, value: Any, member: str | None = None) -> None:
        """Raise :class:`SampleFormatError` unless ``value`` (a string, or for a
        list field every item) is one of the schema's ``enum`` values."""
        spec = self.items if self.kind == "list" and self.items is not None else self
        allowed = spec.enum
        if allowed is None:
            return
        for item in value if spec is not self else (value,):
            if item not in allowed:
                raise SampleFormatError(
                    f"{item!r:.60} is not one of the schema's values "
                    f"({', '.join(map(repr, allowed))})",
                    field=self.wire,
                    member=member,
                    rule="SAMPLE_SCHEMA",
                )

    @property
    def always_stacks(self) -> bool:
        """Whether a batch always stacks this field into one array (whatever the
        ``ragged`` policy): an ndarray field that is required, with a fixed dtype
        and every dimension fixed. A sample breaking that is a
        :class:`SampleFormatError` when batched."""
        return (
            self.kind == "ndarray"
            and not self.optional
            and self.dtype is not None
            and self.shape is not None
            and all(d is not None for d in self.shape)
        )

    def check_array(self, value: Any, member: str | None = None) -> None:
        """Raise :class:`SampleFormatError` unless ``value`` is an ndarray of this
        field's dtype and shape."""
        if not isinstance(value, np.ndarray):
            raise SampleFormatError(
                f"expected a numpy array, got {type(value).__name__}",
                field=self.wire,
                member=member,
                rule="SAMPLE_KIND",
            )
        if self.dtype is not None and value.dtype != _np_dtype(self.dtype):
            raise SampleFormatError(
                f"dtype {value.dtype} does not match the schema's {self.dtype}",
                field=self.wire,
                member=member,
                rule="SAMPLE_SCHEMA",
            )
        if self.shape is not None and (
            value.ndim != len(self.shape)
            or any(
                want is not None and got != want
                for got, want in zip(value.shape, self.shape, strict=True)
            )
        ):
            want_text = (
                "(" + ", ".join("*" if d is None else str(d) for d in self.shape) + ")"
            )
            raise SampleFormatError(
                f"shape {value.shape} does not match the schema's {want_text}",
                field=self.wire,
                member=member,
                rule="SAMPLE_SCHEMA",
            )


def _map_header(n: int) -> bytes:
    if n < 16:
        return bytes((0x80 | n,))
    if n < 1 << 16:
        return b"\xde" + struct.pack(">H", n)
    return b"\xdf" + struct.pack(">I", n)


def _bin_header(n: int) -> bytes:
    if n < 1 << 8:
        return b"\xc4" + bytes((n,))
    if n < 1 << 16:
        return b"\xc5" + struct.pack(">H", n)
    return b"\xc6" + struct.pack(">I", n)


_BIN_MARKERS: Final = {0xC4: (1, "B"), 0xC5: (2, ">H"), 0xC6: (4, ">I")}


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    return value


_KIND_TYPES: Final[dict[str, tuple[type, ...]]] = {
    "int": (int,),
    "float": (float, int),
    "bool": (bool,),
    "str": (str,),
    "bytes": (bytes,),
    "list": (list,),
    "ndarray": (bytes,),
    "structured": (bytes,),
    "encoded": (bytes,),
}
"""The Python types msgpack decodes (``raw=False``) that a field of each kind
accepts. ``bool`` is not an ``int`` here (msgpack keeps them apart); a ``float``
field takes an integer (msgpack writes ``1.0`` as a float, but a writer may send
``1``)."""

_KIND_NAMES: Final = {
    "int": "an integer",
    "float": "a number",
    "bool": "a boolean",
    "str": "a string",
    "bytes": "bytes",
    "list": "a list",
    "ndarray": "array bytes",
    "structured": "array bytes",
    "encoded": "bytes",
}


def _type_name(value: Any) -> str:
    if isinstance(value, msgpack.ExtType):
        return "an ext type"
    return {dict: "a map", list: "a list", type(None): "nil"}.get(
        type(value), type(value).__name__
    )


def _kind_error(
    spec: FieldSpec, value: Any, path: str, member: str | None
) -> SampleFormatError:
    return SampleFormatError(
        f"expected {_KIND_NAMES.get(spec.kind, spec.kind)}, got {_type_name(value)}",
        field=path,
        member=member,
        rule="SAMPLE_KIND",
    )


_PACK_TYPES: Final[dict[str, tuple[type, ...]]] = {
    **_KIND_TYPES,
    "list": (list, tuple),
}
"""What :meth:`PackableSample.pack` accepts per kind: subclasses too (a ``StrEnum``
member is a string), and tuples for lists (msgpack writes them as arrays)."""


def _packable(value: Any, kind: str) -> bool:
    return isinstance(value, _PACK_TYPES.get(kind, ())) and (
        type(value) is not bool or kind == "bool"
    )


def _check_items(
    spec: FieldSpec,
    value: list[Any],
    path: str,
    member: str | None,
    *,
    packing: bool = False,
) -> None:
    """Raise :class:`SampleFormatError` (``SAMPLE_KIND``, the item's path) unless
    every item of list field ``spec``'s ``value`` has the item kind (exactly as
    msgpack decodes it; as :func:`_packable` when ``packing``)."""
    items = spec.items
    if items is None:
        return
    allowed = _KIND_TYPES.get(items.kind, ())
    for i, item in enumerate(value):
        if type(item) not in allowed and not (packing and _packable(item, items.kind)):
            raise _kind_error(items, item, f"{path}[{i}]", member)
        if items.kind == "list":
            _check_items(items, item, f"{path}[{i}]", member, packing=packing)


_EXT_REFUSED: Final = "msgpack ext type refused (samples carry no ext types)"


def _refuse_ext(code: int, data: bytes) -> Any:
    raise ValueError(f"{_EXT_REFUSED}: type {code}")


def _msgpack_reason(exc: Exception) -> str:
    """What msgpack's error means, in the sample's terms."""
    text = str(exc)
    if "max_ext_len" in text:  # an ext of 1 byte or more (type -1 never reaches
        return _EXT_REFUSED  # the hook: msgpack decodes it as a Timestamp)
    if isinstance(exc, msgpack.StackError):  # msgpack's errors carry no text
        return text or "nested deeper than msgpack's stack limit"
    if isinstance(exc, msgpack.FormatError):
        return text or "a byte that starts no msgpack value (e.g. 0xc1)"
    return text or type(exc).__name__


_OBJECT_BYTES: Final[dict[type, int]] = {str: 64, bytes: 48, int: 32, float: 32}
"""What one decoded scalar costs in memory beyond its content (which is at most
:data:`DECODED_FACTOR` × its payload bytes): CPython's ``sys.getsizeof`` of a small
one (str 49-52, bytes 33-36, int 28, float 24) rounded up to pymalloc's 16-byte
blocks. ``None``/``True``/``False`` are singletons (0); lists and maps are counted
by their own hooks."""
_SLOT_BYTES: Final = 8
"""A list's pointer to one item."""
_ENTRY_BYTES: Final = 48
"""A dict's cost per entry (its hash index and entry table, with growth slack)."""
_ITEM_MAX_BYTES: Final = _SLOT_BYTES + max(_OBJECT_BYTES.values())
"""The most one list item costs before the list's hook runs (72 bytes): the list
item cap is the budget over this."""
_MAP_ENTRY_MAX_BYTES: Final = _ENTRY_BYTES + 2 * max(_OBJECT_BYTES.values())
"""The most one map entry costs (176 bytes): the map entry cap."""
_MAP_ITEMS_BYTES: Final = 2 * max(_OBJECT_BYTES.values())
_ZEROS: Final = itertools.repeat(0)


def _objects_bytes(values: Iterable[Any]) -> int:
    """The :data:`_OBJECT_BYTES` of ``values`` (C loops: no Python per item)."""
    return sum(map(_OBJECT_BYTES.get, map(type, values), _ZEROS))


class _Budget:
    """Counts what msgpack builds (its ``list_hook``/``object_hook``) against the
    decoded-size budget (:data:`DECODED_MAX_BYTES`): each container at CPython's
    size (a list 56 bytes + 8 per item, a dict its ``sys.getsizeof``) plus the
    scalars it holds (:data:`_OBJECT_BYTES`; a map's keys and values at 64 each)."""

    __slots__ = ("left", "limit")

    def __init__(self, payload_size: int) -> None:
        self.limit = min(
            DECODED_MAX_BYTES, DECODED_SLACK_BYTES + DECODED_FACTOR * payload_size
        )
        self.left = self.limit

    def take(self, cost: int) -> None:
        self.left -= cost
        if self.left < 0:
            raise _OverBudget(self.limit)

    def take_list(self, obj: list[Any]) -> list[Any]:
        self.left -= 56 + _SLOT_BYTES * len(obj) + _objects_bytes(obj)
        if self.left < 0:
            raise _OverBudget(self.limit)
        return obj

    def take_map(self, obj: dict[Any, Any]) -> dict[Any, Any]:
        # Its own size (exact, one C call) and a key and value at their most:
        # repeated keys are interned by msgpack, so only distinct ones cost.
        self.left -= sys.getsizeof(obj) + _MAP_ITEMS_BYTES * len(obj)
        if self.left < 0:
            raise _OverBudget(self.limit)
        return obj


class _OverBudget(Exception):
    def __init__(self, limit: int) -> None:
        super().__init__(limit)
        self.limit = limit


def _unpackb(buf: BufferLike) -> Any:
    """``msgpack.unpackb`` with every limit set from ``len(buf)``: a string, bin or
    array cannot be longer than the bytes that hold it, a map has at most half as
    many entries; ext types are refused (``max_ext_len=0`` and a refusing
    ``ext_hook``). For payloads under 64 KiB (the fast path)."""
    n = len(buf)
    return msgpack.unpackb(
        buf,
        raw=False,
        ext_hook=_refuse_ext,
        max_ext_len=0,
        max_str_len=n,
        max_bin_len=n,
        max_array_len=n,
        max_map_len=n // 2,
    )


class _ViewReader:
    """A file-like view of ``view[pos:]`` for ``msgpack.Unpacker`` (which wants
    ``bytes`` from ``read``): it copies only what the unpacker asks for."""

    __slots__ = ("pos", "view")

    def __init__(self, view: memoryview, pos: int) -> None:
        self.view, self.pos = view, pos

    def read(self, n: int) -> bytes:
        start = self.pos
        self.pos = min(start + n, len(self.view))
        return bytes(self.view[start : self.pos])


def _unpack_at(view: memoryview, pos: int, budget: _Budget) -> tuple[Any, int]:
    """The msgpack value at ``view[pos]`` and the offset after it, decoded by
    msgpack (C speed, stopping at the first limit: no walk of the value first),
    with the limits of :func:`_unpackb` from the whole payload, lists capped at
    at most budget / :data:`_ITEM_MAX_BYTES` items, maps budget /
    :data:`_MAP_ENTRY_MAX_BYTES` entries (both refused before msgpack allocates them),
    and every container counted against ``budget``."""
    n = len(view)
    items = min(n, budget.limit // _ITEM_MAX_BYTES)
    entries = min(n // 2, budget.limit // _MAP_ENTRY_MAX_BYTES)
    unpacker = msgpack.Unpacker(
        _ViewReader(view, pos),
        read_size=min(4096, n),
        max_buffer_size=n,
        raw=False,
        ext_hook=_refuse_ext,
        max_ext_len=0,
        max_str_len=n,
        max_bin_len=n,
        max_array_len=items,
        max_map_len=entries,
        list_hook=budget.take_list,
        object_hook=budget.take_map,
    )
    try:
        value = unpacker.unpack()
    except ValueError as exc:
        text = str(exc)
        if (items < n and "max_array_len" in text) or (
            entries < n // 2 and "max_map_len" in text
        ):
            raise _OverBudget(budget.limit) from None  # the budget's item cap
        raise
    return value, pos + unpacker.tell()


def _too_deep(value: Any, limit: int) -> bool:
    """Whether maps/arrays nest more than ``limit`` deep in ``value`` (iterative)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return True
        children = item.values() if type(item) is dict else item
        stack.extend((c, depth + 1) for c in children if type(c) in (list, dict))
    return False


class _Codec:
    """Pack/unpack functions of one sample class, built once from its fields."""

    def __init__(self, cls: type[PackableSample]) -> None:
        self.cls = cls
        self.fields = cls.sample_fields
        if not self.fields and dataclasses.is_dataclass(cls):
            unpacked = [
                f.name for f in dataclasses.fields(cls) if f.name != "unknown_fields"
            ]
            if unpacked:
                raise TypeError(
                    f"{cls.__module__}.{cls.__qualname__} declares no sample_fields "
                    f"but has dataclass fields ({', '.join(unpacked)}): packing it "
                    "would lose them. Derive it from PackableSample without setting "
                    "sample_fields (they come from the annotations), or list them."
                )
        self.by_wire = {f.wire: f for f in self.fields}
        self.arrays = frozenset(
            f.wire for f in self.fields if f.kind in ("ndarray", "structured")
        )
        self.enums = frozenset(
            f.wire
            for f in self.fields
            if f.enum is not None or (f.items is not None and f.items.enum is not None)
        )
        self.warned: set[frozenset[str]] = set()
        self.exact = {
            f.wire: frozenset(_KIND_TYPES.get(f.kind, ())) for f in self.fields
        }
        """Per field, the Python types pack takes as they are (not bool for int)."""
        self.readers = tuple(
            (
                f,
                _KIND_TYPES.get(f.kind, ()),
                f.kind in ("list", "encoded", "ndarray", "structured"),
            )
            for f in self.fields
        )

    # -- writing ------------------------------------------------------------------------
    def pack(self, sample: PackableSample, member: str | None = None) -> bytes:
        values: list[tuple[str, Any]] = []
        array_bytes = 0
        for f in self.fields:
            value = getattr(sample, f.name)
            if value is None:
                if not f.optional:
                    raise SampleFormatError(
                        "required field is None",
                        field=f.wire,
                        member=member,
                        rule="SAMPLE_MISSING",
                    )
            elif f.kind in ("ndarray", "structured"):
                f.check_array(value, member)
                array_bytes += value.nbytes
            elif f.kind == "encoded":
                if not isinstance(value, EncodedBlob) or value.format != f.encoding:
                    raise SampleFormatError(
                        f"expected EncodedBlob({f.encoding!r}, ...), got {value!r:.60}",
                        field=f.wire,
                        member=member,
                        rule="SAMPLE_KIND",
                    )
                value = value.data
            else:
                cls = type(value)
                if cls not in self.exact[f.wire]:  # exact types need no more checks
                    value = _plain(value)
                    if not _packable(value, f.kind):
                        raise _kind_error(f, value, f.wire, member)
                if f.kind == "list":
                    _check_items(f, value, f.wire, member, packing=True)
                if f.wire in self.enums:
                    f.check_enum(value, member)
            values.append((f.wire, value))
        extra = sample.unknown_fields
        if extra:
            values.extend((k, v) for k, v in extra.items() if k not in self.by_wire)
        if array_bytes < _LARGE:
            payload: bytes = msgpack.packb({k: self._small(k, v) for k, v in values})
            return payload
        return self._pack_large(values)

    def _small(self, wire: str, value: Any) -> Any:
        if wire in self.arrays and value is not None:
            if value.dtype.names is not None:  # structured: .npy, as atdata writes it
                return encode_npy(value)
            return array_header(value) + np.ascontiguousarray(value).tobytes()
        return value

    def _pack_large(self, values: list[tuple[str, Any]]) -> bytes:
        # The same bytes msgpack.packb would produce, with each array's data copied
        # once (by join) instead of four times.
        chunks: list[BufferLike] = [_map_header(len(values))]
        for wire, value in values:
            chunks.append(msgpack.packb(wire))
            if wire in self.arrays and value is not None and value.dtype.names:
                npy = encode_npy(value)
                chunks.append(_bin_header(len(npy)))
                chunks.append(npy)
            elif wire in self.arrays and value is not None:
                header = array_header(value)
                data = np.ascontiguousarray(value)
                chunks.append(_bin_header(len(header) + data.nbytes))
                chunks.append(header)
                chunks.append(data.data.cast("B") if data.size else b"")
            else:
                chunks.append(msgpack.packb(value))
        return b"".join(chunks)

    # -- reading ------------------------------------------------------------------------
    def unpack(
        self,
        payload: BufferLike,
        member: str | None,
        unknown: Unknown,
        validate: bool,
        copy: bool,
        shard: str | None = None,
    ) -> PackableSample:
        try:
            return self._unpack(payload, member, unknown, validate, copy)
        except SampleFormatError as exc:
            if shard is None and (member is None or exc.member):
                raise
            raise exc.located(member=member, shard=shard) from None

    def _unpack(
        self,
        payload: BufferLike,
        member: str | None,
        unknown: Unknown,
        validate: bool,
        copy: bool,
    ) -> PackableSample:
        views: dict[str, NDArray[Any]]
        if len(payload) >= _LARGE:
            data, views = self._unpack_large(payload, member, copy)
        else:
            try:
                data = _unpackb(payload)
            except (ValueError, msgpack.UnpackException) as exc:
                raise SampleFormatError(
                    f"payload is not msgpack: {_msgpack_reason(exc)}",
                    member=member,
                    rule="SAMPLE_MSGPACK",
                ) from None
            views = {}
        if type(data) is not dict:
            raise SampleFormatError(
                f"payload is not a msgpack map (it is {_type_name(data)})",
                member=member,
                rule="SAMPLE_MSGPACK",
            )
        kwargs: dict[str, Any] = {}
        for f, allowed, special in self.readers:
            value: Any
            wire = f.wire
            if wire in views:
                value = views.pop(wire)
                data.pop(wire, None)
            else:
                value = data.pop(wire, None)
                if value is not None:
                    if type(value) not in allowed:
                        raise _kind_error(f, value, wire, member)
                    if special:
                        value = self._special(f, value, member, copy)
            if value is None:
                if not f.optional:
                    raise SampleFormatError(
                        "required field is missing",
                        field=wire,
                        member=member,
                        rule="SAMPLE_MISSING",
                    )
            elif validate and f.kind in ("ndarray", "structured"):
                f.check_array(value, member)
            elif validate and wire in self.enums:
                f.check_enum(value, member)
            kwargs[f.name] = value
        sample = self.cls(**kwargs)
        if data:
            self._unknown(sample, data, unknown, member)
        return sample

    @staticmethod
    def _special(f: FieldSpec, value: Any, member: str | None, copy: bool) -> Any:
        """A list, encoded or array field's value, checked (and decoded)."""
        if f.kind == "list":
            _check_items(f, value, f.wire, member)
            return value
        if f.kind == "encoded":
            assert f.encoding is not None
            return EncodedBlob(f.encoding, value)
        try:
            return decode_array(value, copy=copy)
        except ArrayFormatError as exc:
            raise exc.located(field=f.wire, member=member) from None

    def _unknown(
        self,
        sample: PackableSample,
        data: dict[Any, Any],
        unknown: Unknown,
        member: str | None,
    ) -> None:
        for key, value in data.items():
            if type(key) is not str:
                raise SampleFormatError(
                    f"map key {key!r:.60} is not a string",
                    member=member,
                    rule="SAMPLE_MAP_KEY",
                )
            if type(value) in (list, dict) and _too_deep(value, MAX_VALUE_DEPTH):
                raise SampleFormatError(
                    f"value nests maps/arrays more than {MAX_VALUE_DEPTH} deep",
                    field=key,
                    member=member,
                    rule="SAMPLE_DEPTH",
                )
        if unknown == "keep":
            sample.unknown_fields = data
        elif unknown == "error":
            raise SampleFormatError(
                f"unknown field(s) {', '.join(map(repr, sorted(data)))}",
                member=member,
                rule="SAMPLE_UNKNOWN_FIELD",
            )
        else:
            keys = frozenset(data)
            if keys not in self.warned:
                self.warned.add(keys)
                warnings.warn(
                    f"{self.cls.__name__}: dropping field(s) not in its schema: "
                    f"{', '.join(sorted(keys))} (written by a newer schema version?)",
                    stacklevel=5,
                )

    def _unpack_large(
        self, payload: BufferLike, member: str | None, copy: bool
    ) -> tuple[dict[str, Any], dict[str, NDArray[Any]]]:
        # Walk the top-level map by hand: array fields become views of the payload at
        # their bin value's offset (no copy at all); other values are decoded by
        # msgpack from their own slice, found by skipping over headers, with every
        # container counted against the payload's decoded-size budget.
        budget: _Budget | None = None
        view = memoryview(payload).cast("B")
        try:
            if not self.arrays:
                budget = _Budget(len(view))
                value, pos = _unpack_at(view, 0, budget)
                if pos != len(view):
                    raise ValueError(f"{len(view) - pos} bytes after the map")
                return value, {}
            pos, n = _container_header(view, 0, map_=True)
            if n > len(view) // 2:
                raise ValueError(f"map of {n} entries in {len(view)} bytes")
            if n > _WIDE_MAP:  # its keys and scalar values, at their most
                budget = _Budget(len(view))
                budget.take(64 + n * _MAP_ENTRY_MAX_BYTES)
            data: dict[str, Any] = {}
            arrays: dict[str, NDArray[Any]] = {}
            for _ in range(n):
                at = pos
                marker = view[pos]
                if 0xA0 <= marker <= 0xBF:  # fixstr, as every writer's keys are
                    pos += 1 + (marker & 0x1F)
                    if pos > len(view):
                        raise ValueError(f"map key at byte {at} runs past the payload")
                    key = str(view[at + 1 : pos], "utf-8")
                else:
                    key, pos, budget = _value_at(view, pos, budget)
                if type(key) is not str:
                    raise SampleFormatError(
                        f"map key {key!r:.60} at byte {at} is not a string",
                        member=member,
                        rule="SAMPLE_MAP_KEY",
                    )
                marker = view[pos]
                if key in self.arrays and marker in _BIN_MARKERS:
                    size, fmt = _BIN_MARKERS[marker]
                    length = struct.unpack_from(fmt, view, pos + 1)[0]
                    start = pos + 1 + size
                    try:
                        arrays[key] = decode_array(view, start, length, copy=copy)
                    except ArrayFormatError as exc:
                        raise exc.located(field=key, member=member) from None
                    pos = start + length
                else:
                    data[key], pos, budget = _value_at(view, pos, budget)
            if pos != len(view):
                raise ValueError(f"{len(view) - pos} bytes after the map")
        except _OverBudget as exc:
            raise SampleFormatError(
                f"payload of {len(view)} bytes decodes to more than {exc.limit} bytes "
                "of maps and lists, its decoded-size budget (min(DECODED_MAX_BYTES, "
                "DECODED_SLACK_BYTES + DECODED_FACTOR × payload) of "
                "atdata_runtime.samples.codec)",
                member=member,
                rule="SAMPLE_TOO_LARGE",
            ) from None
        except (ValueError, IndexError, struct.error, msgpack.UnpackException) as exc:
            if isinstance(exc, SampleFormatError):
                raise
            raise SampleFormatError(
                f"payload is not valid msgpack: {_msgpack_reason(exc)}",
                member=member,
                rule="SAMPLE_MSGPACK",
            ) from None
        return data, arrays


_FIXED_SIZES: Final = {
    0xC0: 1,
    0xC2: 1,
    0xC3: 1,
    0xCA: 5,
    0xCB: 9,
    0xCC: 2,
    0xCD: 3,
    0xCE: 5,
    0xCF: 9,
    0xD0: 2,
    0xD1: 3,
    0xD2: 5,
    0xD3: 9,
    0xD4: 3,
    0xD5: 4,
    0xD6: 6,
    0xD7: 10,
    0xD8: 18,
}
_LENGTH_PREFIXED: Final = {  # marker -> (length bytes, struct format, extra type byte)
    0xC4: (1, ">B", 0),
    0xC5: (2, ">H", 0),
    0xC6: (4, ">I", 0),
    0xC7: (1, ">B", 1),
    0xC8: (2, ">H", 1),
    0xC9: (4, ">I", 1),
    0xD9: (1, ">B", 0),
    0xDA: (2, ">H", 0),
    0xDB: (4, ">I", 0),
}


def _scalar_end(view: memoryview, pos: int) -> int:
    """Offset after the msgpack value at ``pos`` when it is not a map or array (O(1),
    from its header), else -1."""
    marker = view[pos]
    if marker <= 0x7F or marker >= 0xE0 or 0xC0 <= marker <= 0xC3:
        return pos + 1
    if 0xA0 <= marker <= 0xBF:
        return pos + 1 + (marker & 0x1F)
    size = _FIXED_SIZES.get(marker)
    if size is not None:
        return pos + size
    prefixed = _LENGTH_PREFIXED.get(marker)
    if prefixed is not None:
        width, fmt, extra = prefixed
        length: int = struct.unpack_from(fmt, view, pos + 1)[0]
        return pos + 1 + width + extra + length
    return -1


def _value_at(
    view: memoryview, pos: int, budget: _Budget | None
) -> tuple[Any, int, _Budget | None]:
    """The msgpack value at ``pos``, the offset after it and the budget: scalars
    (keys, strings, numbers) by ``unpackb`` of their exact slice (no length limit
    needed: the slice is the value; ext types refused), maps and arrays by
    :func:`_unpack_at` against ``budget`` (made for the payload on first need)."""
    end = _scalar_end(view, pos)
    if end < 0:
        if budget is None:
            budget = _Budget(len(view))
        value, end = _unpack_at(view, pos, budget)
        return value, end, budget
    if end > len(view):
        raise ValueError(f"msgpack value at byte {pos} runs past the payload")
    marker = view[pos]
    if 0xA0 <= marker <= 0xBF:  # fixstr: no msgpack call (UnicodeDecodeError is a
        return str(view[pos + 1 : end], "utf-8"), end, budget  # ValueError)
    value = msgpack.unpackb(
        view[pos:end], raw=False, ext_hook=_refuse_ext, max_ext_len=0
    )
    return value, end, budget


def _container_header(view: memoryview, pos: int, *, map_: bool) -> tuple[int, int]:
    """(position after the header, entry count) of a map (or array) at ``pos``."""
    marker = view[pos]
    if map_:
        if 0x80 <= marker <= 0x8F:
            return pos + 1, marker & 0x0F
        if marker == 0xDE:
            return pos + 3, struct.unpack_from(">H", view, pos + 1)[0]
        if marker == 0xDF:
            return pos + 5, struct.unpack_from(">I", view, pos + 1)[0]
        raise ValueError(f"expected a map at byte {pos}, found 0x{marker:02x}")
    if 0x90 <= marker <= 0x9F:
        return pos + 1, marker & 0x0F
    if marker == 0xDC:
        return pos + 3, struct.unpack_from(">H", view, pos + 1)[0]
    if marker == 0xDD:
        return pos + 5, struct.unpack_from(">I", view, pos + 1)[0]
    raise ValueError(f"expected an array at byte {pos}")


ENCODINGS: Final = {
    "sparse": ("scipy", "a scipy.sparse matrix, saved with scipy.sparse.save_npz"),
    "arrow_tensor": ("pyarrow", "a pyarrow.Tensor in Arrow IPC format"),
    "safetensors": ("safetensors", "a dict of numpy arrays in safetensors format"),
    "dataframe": ("pandas", "a pandas.DataFrame in Parquet format"),
}
"""Encodings of atdata's non-ndarray array shims: format → (library, what it is)."""


@dataclass(frozen=True)
class EncodedBlob:
    """A field value in one of atdata's library-specific encodings (see
    :data:`ENCODINGS`): the exact bytes on the wire plus their ``format``. It
    round-trips unchanged without the library; :meth:`decode` / :meth:`encode`
    convert with the library when it is installed (``ImportError`` naming the
    package otherwise). Nothing here unpickles: each decoder is the library's safe
    loader."""

    format: str
    data: bytes

    def decode(self) -> Any:
        """The library object (scipy sparse matrix, pyarrow Tensor, dict of arrays,
        DataFrame)."""
        import io

        library = ENCODINGS[self.format][0]
        try:
            if self.format == "sparse":
                import scipy.sparse as sp  # type: ignore[import-not-found,import-untyped,unused-ignore]

                return sp.load_npz(io.BytesIO(self.data))
            if self.format == "arrow_tensor":
                import pyarrow as pa  # type: ignore[import-not-found,import-untyped,unused-ignore]

                return pa.ipc.read_tensor(pa.py_buffer(self.data))
            if self.format == "safetensors":
                from safetensors.numpy import (  # type: ignore[import-not-found,import-untyped,unused-ignore]
                    load,
                )

                return load(self.data)
            import pandas as pd  # type: ignore[import-not-found,import-untyped,unused-ignore]

            return pd.read_parquet(io.BytesIO(self.data))
        except ImportError as exc:
            raise ImportError(
                f"decoding {self.format!r} needs the {library!r} "
                f"package: pip install {library}"
            ) from exc

    @classmethod
    def encode(cls, value: Any, format: str) -> EncodedBlob:
        """Encode a library object as atdata does (``format`` from
        :data:`ENCODINGS`)."""
        import io

        if format == "sparse":
            import scipy.sparse as sp  # type: ignore[import-not-found,import-untyped,unused-ignore]

            buf = io.BytesIO()
            sp.save_npz(buf, value)
            return cls(format, buf.getvalue())
        if format == "arrow_tensor":
            import pyarrow as pa  # type: ignore[import-not-found,import-untyped,unused-ignore]

            sink = pa.BufferOutputStream()
            pa.ipc.write_tensor(value, sink)
            return cls(format, sink.getvalue().to_pybytes())
        if format == "safetensors":
            from safetensors.numpy import save  # type: ignore[import-not-found,import-untyped,unused-ignore]

            return cls(format, save(value))
        if format == "dataframe":
            buf = io.BytesIO()
            value.to_parquet(buf, engine="fastparquet")
            return cls(format, buf.getvalue())
        raise ValueError(f"unknown encoding {format!r}")


if TYPE_CHECKING:
    from typing_extensions import TypeVar as _TypeVarDefault

    B_co = _TypeVarDefault(
        "B_co", bound="SampleBatch[Any]", covariant=True, default="SampleBatch[Any]"
    )
else:
    B_co = TypeVar("B_co", covariant=True)


@dataclass(kw_only=True, eq=False)
class PackableSample(Generic[B_co]):
    """Base of generated (and hand-written) sample classes.

    Subclasses are keyword-only dataclasses. Generated ones set ``sample_fields``
    and ``schema_name``, ``schema_version``, ``schema_source`` (file path or AT-URI)
    and ``schema_cid``. A hand-written subclass that does not set ``sample_fields``
    gets them from its annotations when the class is defined (see
    :mod:`atdata_runtime.samples.annotations`); an annotation that cannot be packed
    raises ``TypeError`` there, naming the class, the field and why. A subclass
    that declares fields but lacks ``@dataclass`` raises ``TypeError`` saying so when
    it is first constructed, packed or unpacked (the decorator runs after the class
    statement, so the class statement itself cannot tell).
    ``unknown_fields`` holds payload keys the class does not declare (kept by
    default, written back by :meth:`pack`).

    The type parameter is the class's batch class, for type checkers only:
    ``class ImageSample(PackableSample["ImageSampleBatch"])`` makes
    ``Dataset[ImageSample].ordered(batch_size=n)`` an ``Iterator[ImageSampleBatch]``;
    a bare ``PackableSample`` base means ``SampleBatch[Any]``.
    """

    sample_fields: ClassVar[tuple[FieldSpec, ...]] = ()
    schema_name: ClassVar[str] = ""
    schema_version: ClassVar[str] = ""
    schema_source: ClassVar[str] = ""
    schema_cid: ClassVar[str | None] = None
    schema_description: ClassVar[str | None] = None
    schema_metadata: ClassVar[dict[str, Any] | None] = None
    schema_array_formats: ClassVar[dict[str, str] | None] = None

    unknown_fields: dict[str, Any] | None = dataclasses.field(
        default=None, repr=False, compare=False
    )

    if TYPE_CHECKING:

        def __init__(self, *, unknown_fields: dict[str, Any] | None = None) -> None: ...

    else:

        def __init__(self, *args, unknown_fields=None, **kwargs):
            # Reached only by a subclass without an __init__ of its own (a
            # dataclass has one): one that declares fields lacks @dataclass.
            if type(self) is not PackableSample:
                _require_dataclass(type(self))
            if args or kwargs:
                raise TypeError(
                    f"{type(self).__qualname__}() takes only keyword argument "
                    f"unknown_fields (got {', '.join(kwargs) or 'positional ones'})"
                )
            self.unknown_fields = unknown_fields

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "__eq__" not in cls.__dict__:
            # Before @dataclass runs: it keeps an __eq__ the class defines, so a
            # plain @dataclass keeps the array-aware comparison instead of its own
            # tuple comparison (which raises on arrays).
            cls.__eq__ = PackableSample.__eq__  # type: ignore[method-assign]
        if "sample_fields" in cls.__dict__:
            return  # generated (or listed by hand)
        from .annotations import derive_sample_fields

        cls.sample_fields = derive_sample_fields(
            cls, cls.sample_fields, _RESERVED, depth=1
        )

    @classmethod
    def _codec(cls) -> _Codec:
        codec: _Codec | None = cls.__dict__.get("_atdata_codec")
        if codec is None:
            _require_dataclass(cls)
            codec = _Codec(cls)
            cls._atdata_codec = codec  # type: ignore[attr-defined]
            _install_fast(cls, codec)
        return codec

    def pack(self, *, member: str | None = None) -> bytes:
        """The msgpack payload of this sample (atdata-compatible bytes). Raises
        :class:`SampleFormatError` when a required field is ``None`` or an array
        breaks the schema's dtype/shape."""
        return self._codec().pack(self, member)

    @property
    def packed(self) -> bytes:
        """Alias of :meth:`pack` (atdata's name)."""
        return self.pack()

    @classmethod
    def unpack(
        cls,
        payload: BufferLike,
        *,
        member: str | None = None,
        shard: str | None = None,
        unknown: Unknown = "keep",
        validate: bool = False,
        copy: bool = False,
    ) -> Self:
        """Decode one payload. ``member`` (the shard member name) and ``shard`` (its
        URL or path) are used in errors; ``unknown``: keep / drop (one warning per
        key set) / error; ``validate``: also check array dtypes and shapes and
        string enums against the schema; ``copy``: writable arrays instead of
        read-only views.

        Always checked, whatever ``validate`` says (cheap, and what keeps a
        hostile payload from handing a dict to a ``str`` field): the kind of
        every declared field (``int``, ``float``, ``bool``, ``str``, ``bytes``,
        list items) as msgpack decodes it; no ext types; string map keys;
        :data:`MAX_VALUE_DEPTH` for undeclared keys; msgpack's ``max_str_len``,
        ``max_bin_len``, ``max_array_len`` (the payload size), ``max_map_len``
        (half of it) and ``max_ext_len`` (0); from 64 KiB on, the decoded-size
        budget :data:`DECODED_SLACK_BYTES` + :data:`DECODED_FACTOR` × size.

        Raises :class:`SampleFormatError` (its ``rule`` says which check:
        ``SAMPLE_MSGPACK``, ``SAMPLE_KIND``, ``SAMPLE_MISSING``, ``SAMPLE_MAP_KEY``,
        ``SAMPLE_DEPTH``, ``SAMPLE_TOO_LARGE``, ``SAMPLE_UNKNOWN_FIELD``, ...) or its
        subclass :class:`~atdata_runtime.samples.ndarray.ArrayFormatError`, naming
        the shard, member and field path."""
        sample = cls._codec().unpack(payload, member, unknown, validate, copy, shard)
        assert isinstance(sample, cls)
        return sample

    @classmethod
    def from_bytes(cls, payload: BufferLike) -> Self:
        """Alias of :meth:`unpack` with defaults (atdata's name)."""
        return cls.unpack(payload)

    def as_wds(self, key: str) -> dict[str, Any]:
        """A WebDataset sample dict: ``{"__key__": key, "msgpack": payload}``. Keys
        must not contain dots (WebDataset splits member names at the first dot)."""
        if "." in key:
            raise ValueError(f"sample key {key!r} contains a dot")
        return {"__key__": key, "msgpack": self.pack(member=f"{key}.msgpack")}

    @classmethod
    def batch_class(cls) -> type[SampleBatch[Any]]:
        """The batch class of this sample class: the generated (or declared)
        ``<Name>Batch``, which registers itself, or a generic one made on first use
        (replaced by a batch class declared later)."""
        batch: type[SampleBatch[Any]] | None = cls.__dict__.get("_atdata_batch")
        if batch is None:
            batch = type(
                f"{cls.__name__}Batch",
                (SampleBatch,),
                {
                    "sample_type": cls,
                    "__module__": cls.__module__,
                    "_atdata_auto": True,
                },
            )
        return batch

    def to_dict(self) -> dict[str, Any]:
        """Field wire name → value (arrays as they are)."""
        return {f.wire: getattr(self, f.name) for f in self.sample_fields}

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        assert isinstance(other, PackableSample)
        for f in self.sample_fields:
            a, b = getattr(self, f.name), getattr(other, f.name)
            if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
                if not (
                    isinstance(a, np.ndarray)
                    and isinstance(b, np.ndarray)
                    and a.dtype == b.dtype
                    and np.array_equal(a, b)
                ):
                    return False
            elif a != b:
                return False
        return (self.unknown_fields or {}) == (other.unknown_fields or {})

    __hash__ = None  # type: ignore[assignment]


# -- per-class fast paths -------------------------------------------------------------
# A sample class whose fields are all scalars (int, float, bool, str, bytes, optional
# or not, str enums) gets a pack and an unpack compiled for it on first use (source
# text built from its FieldSpecs, names passed as constants, never spliced in): one
# attribute load and one exact-type test per field, one dict, one msgpack call. Any
# value the fast path does not take as it is (a subclass, a numpy scalar, a missing
# field, an unknown key, an error of any kind) goes to the general :class:`_Codec`
# path, which gives exactly the result it always gave (bytes, sample or error).

_FAST_KINDS: Final = {
    "int": "type({v}) is int",
    "float": "(type({v}) is float or type({v}) is int)",
    "bool": "type({v}) is bool",
    "str": "type({v}) is str",
    "bytes": "type({v}) is bytes",
}
"""The exact-type test of each scalar kind: what msgpack decodes (``raw=False``)
and what :meth:`_Codec.pack` takes without conversion (:data:`_KIND_TYPES`)."""

_PACKERS: Final[list[Any]] = []
"""Idle ``msgpack.Packer`` objects (default options: the bytes of ``msgpack.packb``).
A call pops one (or makes one) and pushes it back, so no two calls, in two threads
or nested in one (a finalizer packing during a pack), ever share a packer; list
``pop``/``append`` are atomic. Its length is bounded by the most calls in flight
at once."""


def _fast_pack_fn(codec: _Codec) -> Any:
    """The compiled pack of ``codec``'s class, or ``None`` when a field is not a
    scalar (arrays, lists, encoded blobs take the general path)."""
    fields = codec.fields
    if not fields or not all(_fast_field(f) for f in fields):
        return None
    names: dict[str, Any] = {
        "CLS": codec.cls,
        "GENERIC": codec.pack,
        "BASE": PackableSample.pack,
        "POP": _PACKERS.pop,
        "PUSH": _PACKERS.append,
        "Packer": msgpack.Packer,
    }
    loads, tests, items = [], [], []
    for i, f in enumerate(fields):
        v = f"v{i}"
        key = _literal(f.wire)
        loads.append(f"        {v} = self.{f.name}")
        test = _FAST_KINDS[f.kind].format(v=v)
        if f.enum is not None:
            names[f"E{i}"] = frozenset(f.enum)
            test = f"({test} and {v} in E{i})"
        if f.optional:
            test = f"({v} is None or {test})"
        tests.append(test)
        items.append(f"{key}: {v}")
    source = "\n".join(
        [
            "def pack(self, *, member=None):",
            "    if type(self) is not CLS:",  # a subclass: its own codec
            "        return BASE(self, member=member)",
            "    if not self.unknown_fields:",
            *loads,
            "        if " + " and ".join(tests) + ":",
            "            try:",
            "                packer = POP()",
            "            except IndexError:",
            "                packer = Packer()",
            "            try:",
            "                return packer.pack({" + ", ".join(items) + "})",
            "            finally:",
            "                PUSH(packer)",
            "    return GENERIC(self, member)",
        ]
    )
    fn = _compile(source, "pack", names, codec.cls)
    fn.__doc__ = PackableSample.pack.__doc__
    return fn


def _fast_unpack_fn(codec: _Codec) -> Any:
    """The compiled unpack of ``codec``'s class (a function to wrap in
    ``classmethod``), or ``None`` when a field is neither a scalar nor an array.
    Array fields of payloads under 64 KiB are decoded as the general path decodes
    them (:func:`~.ndarray.decode_array` of the bin value); 64 KiB and more take
    the general path's zero-copy walk."""
    fields = codec.fields
    if not fields or not all(_fast_field(f, arrays=True) for f in fields):
        return None
    names: dict[str, Any] = {
        "CLS": codec.cls,
        "GENERIC": codec.unpack,
        "BASE": PackableSample.unpack.__func__,  # type: ignore[attr-defined]
        "unpackb": msgpack.unpackb,
        "refuse": _refuse_ext,
        "LARGE": _LARGE,
        "N": len(fields),
        "CHECKS": bool(codec.enums or codec.arrays),
        "dict_": dict,
        "DECODE": decode_array,
    }
    loads, tests, kwargs, decodes = [], [], [], []
    for i, f in enumerate(fields):
        v = f"v{i}"
        key = _literal(f.wire)
        loads.append(f"            {v} = data.get({key})")
        test = _FAST_UNPACK_KINDS[f.kind].format(v=v)
        if f.kind in _ARRAY_KINDS:
            decode = f"{v} = DECODE({v}, copy=copy)"
            decodes += (
                [f"if {v} is not None:", f"    {decode}"] if f.optional else [decode]
            )
        # A required field's None fails its type test; an optional one's must be
        # there (nil), or the map's N entries hold an unknown key.
        tests.append(
            f"({test} or {v} is None and {key} in data)" if f.optional else test
        )
        kwargs.append(f"{f.name}={v}")
    order = _plain_init_order(codec.cls)
    if order is None:
        construct = ["                return cls(" + ", ".join(kwargs) + ")"]
    else:
        # What the dataclass __init__ does (``self.<f> = <f>`` in field order),
        # without the call: only for an __init__ dataclasses wrote.
        names["NEW"] = object.__new__
        value = {f.name: f"v{i}" for i, f in enumerate(fields)}
        construct = [
            "                sample = NEW(cls)",
            *(f"                sample.{a} = {value.get(a, 'None')}" for a in order),
            "                return sample",
        ]
    # Every declared key present (N distinct keys in a map of N entries: nothing
    # unknown), each of its exact kind, a required one not nil.
    source = "\n".join(
        [
            "def unpack(cls, payload, *, member=None, shard=None, unknown='keep',",
            "           validate=False, copy=False):",
            "    if cls is not CLS:",  # a subclass: its own codec
            "        return BASE(cls, payload, member=member, shard=shard,",
            "            unknown=unknown, validate=validate, copy=copy)",
            "    if not (validate and CHECKS):",
            "        try:",
            "            n = len(payload)",
            "            data = unpackb(payload, raw=False, ext_hook=refuse,",
            "                max_ext_len=0, max_str_len=n, max_bin_len=n,",
            "                max_array_len=n, max_map_len=n // 2,",
            "            ) if n < LARGE else None",
            "        except Exception:",
            "            data = None",
            "        if type(data) is dict_ and len(data) == N:",
            *loads,
            "            if " + " and ".join(tests) + ":",
            *(
                [
                    "                try:",
                    *(f"                    {line}" for line in decodes),
                    "                except Exception:",  # the general path says why
                    "                    return GENERIC(payload, member, unknown,",
                    "                        validate, copy, shard)",
                ]
                if decodes
                else []
            ),
            *construct,
            "    return GENERIC(payload, member, unknown, validate, copy, shard)",
        ]
    )
    fn = _compile(source, "unpack", names, codec.cls)
    fn.__doc__ = PackableSample.unpack.__doc__
    return fn


def _plain_init_order(cls: type[PackableSample]) -> list[str] | None:
    """The attributes ``cls.__init__`` sets, in its order, when it is the
    ``__init__`` that ``@dataclass`` wrote for ``cls`` itself and does nothing else
    (not frozen, no ``__post_init__``, every field an ``__init__`` argument,
    ``unknown_fields`` defaulting to ``None``, ``object.__new__`` and
    ``__setattr__``, a plain metaclass); else ``None`` (the fast unpack then calls
    the class)."""
    params = cls.__dict__.get("__dataclass_params__")
    init = cls.__dict__.get("__init__")
    code = getattr(init, "__code__", None)
    if (
        params is None
        or not params.init
        or params.frozen
        or code is None
        or code.co_filename != "<string>"
        or getattr(init, "__qualname__", "") != f"{cls.__qualname__}.__init__"
        or hasattr(cls, "__post_init__")
        or cls.__new__ is not object.__new__
        or cls.__setattr__ is not object.__setattr__
        or type(cls).__call__ is not type.__call__
    ):
        return None
    declared = {f.name for f in cls.sample_fields}
    order = []
    for f in dataclasses.fields(cls):
        if not f.init:
            return None
        if f.name not in declared and (
            f.name != "unknown_fields" or f.default is not None
        ):
            return None
        order.append(f.name)
    if set(order) != declared | {"unknown_fields"}:
        return None
    return order


def _literal(text: str) -> str:
    """``text`` as a Python string literal (``repr`` of an exact ``str`` is one,
    whatever it holds): a constant key lets CPython build the map with one
    ``BUILD_CONST_KEY_MAP``."""
    literal = str.__repr__(str(text))
    if ast.literal_eval(literal) != text:  # pragma: no cover - repr guarantees it
        raise ValueError(f"cannot write {text!r} as a literal")
    return literal


_ARRAY_KINDS: Final = frozenset({"ndarray", "structured"})
_FAST_UNPACK_KINDS: Final = {
    **_FAST_KINDS,
    **dict.fromkeys(_ARRAY_KINDS, "type({v}) is bytes"),
}
"""What the fast unpack takes: the scalars, and arrays as the bin value msgpack
decodes them to (:data:`_KIND_TYPES`)."""


def _fast_field(f: FieldSpec, *, arrays: bool = False) -> bool:
    return (
        (f.kind in _FAST_KINDS or (arrays and f.kind in _ARRAY_KINDS))
        and f.name.isidentifier()
        and not keyword.iskeyword(f.name)
    )


def _compile(source: str, name: str, names: dict[str, Any], cls: type) -> Any:
    namespace: dict[str, Any] = {
        "__builtins__": {
            "len": len,
            "type": type,
            "IndexError": IndexError,
            "Exception": Exception,
            **{t.__name__: t for t in (int, float, bool, str, bytes)},
        }
    }
    namespace.update(names)
    code = compile(
        source, f"<atdata_runtime fast {name} of {cls.__qualname__}>", "exec"
    )
    exec(code, namespace)  # noqa: S102 - source built above from constants only
    fn = namespace[name]
    fn.__qualname__ = f"{cls.__qualname__}.{name}"
    fn.__module__ = cls.__module__
    fn._atdata_fast = True
    return fn


def _owner(cls: type, name: str) -> type | None:
    """The class in ``cls``'s MRO whose ``__dict__`` defines ``name``."""
    return next((k for k in cls.__mro__ if name in k.__dict__), None)


def _install_fast(cls: type[PackableSample], codec: _Codec) -> None:
    """Set ``cls.pack`` / ``cls.unpack`` to the compiled fast paths, unless a class
    in its MRO defines its own (then that one keeps running, unchanged)."""
    for name, build in (("pack", _fast_pack_fn), ("unpack", _fast_unpack_fn)):
        owner = _owner(cls, name)
        current = owner.__dict__[name] if owner is not None else None
        func = getattr(current, "__func__", current)
        if owner is not PackableSample and not getattr(func, "_atdata_fast", False):
            continue
        fn = build(codec)
        if fn is not None:
            setattr(cls, name, classmethod(fn) if name == "unpack" else fn)


def _require_dataclass(cls: type[PackableSample]) -> None:
    """Raise ``TypeError`` naming the class in ``cls``'s MRO that declares sample
    fields but has no ``__init__`` taking them: ``@dataclass`` was forgotten (the
    decorator runs after the class statement, so this is checked at the first
    construction, pack or unpack, not at definition)."""
    for klass in cls.__mro__:
        if klass is PackableSample or not issubclass(klass, PackableSample):
            return
        if "__init__" in klass.__dict__:
            continue  # a dataclass, or an __init__ written by hand
        inherited = {
            f.name
            for base in klass.__bases__
            if issubclass(base, PackableSample)
            for f in base.sample_fields
        }
        init_fields = {f.name for f in dataclasses.fields(klass)}
        declared = [
            f.name
            for f in klass.__dict__.get("sample_fields", ())
            if f.name not in inherited and f.name not in init_fields
        ]
        if declared:
            raise TypeError(
                f"{klass.__qualname__} is not a dataclass: decorate it with "
                "@dataclass(kw_only=True) (without it, its fields "
                f"{', '.join(map(repr, declared))} are not constructor arguments)"
            )


def generated_sample_classes(package: str) -> list[type[PackableSample]]:
    """The sample classes ``atdata-gen build`` generated into ``package``: every
    :class:`PackableSample` subclass defined in a module of ``{package}.samples``
    (imported here), in module order. Raises ``ImportError`` when the package has
    no ``samples`` subpackage (nothing built, or not on ``sys.path``)."""
    import importlib
    import pkgutil

    samples = importlib.import_module(f"{package}.samples")
    found: list[type[PackableSample]] = []
    for info in pkgutil.iter_modules(samples.__path__, f"{samples.__name__}."):
        module = importlib.import_module(info.name)
        found += [
            value
            for value in vars(module).values()
            if isinstance(value, type)
            and issubclass(value, PackableSample)
            and value.__module__ == module.__name__
        ]
    return found


def sample_class(
    name: str, fields: Iterable[FieldSpec], *, module: str = __name__, **class_vars: Any
) -> type[PackableSample]:
    """A PackableSample subclass built at run time (for schemas that were not
    compiled ahead of time): keyword-only fields from ``fields``, optional ones
    defaulting to ``None``; ``class_vars`` sets ``schema_name`` etc."""
    specs = tuple(fields)
    annotations: list[tuple[str, Any, Any]] = []
    for f in specs:
        default = dataclasses.field(default=None) if f.optional else dataclasses.MISSING
        annotations.append((f.name, Any, default))
    namespace: dict[str, Any] = {
        "sample_fields": specs,
        "__module__": module,
        **class_vars,
    }
    cls = dataclasses.make_dataclass(
        name,
        [(n, t) if d is dataclasses.MISSING else (n, t, d) for n, t, d in annotations],
        bases=(PackableSample,),
        namespace=namespace,
        kw_only=True,
        eq=False,
    )
    return cls


S = TypeVar("S", bound=PackableSample)


class SampleBatch(Generic[S]):
    """A batch of samples of one class. Every non-array field is a list (one value
    per sample, ``None`` for an absent optional one). An array field is, in this
    order (the policy):

    1. one array of shape ``(n, *shape)`` and the samples' dtype, stacked along a
       new first axis, when every sample has it with the same shape and dtype;
    2. ``None`` when no sample has it;
    3. otherwise (``None`` in some samples only, or shapes/dtypes that differ), per
       ``ragged``: ``"list"`` (the default) the per-sample values (arrays or
       ``None``), ``"pad"`` a ``numpy.ma.MaskedArray`` of shape
       ``(n, *largest shape)`` with ``None`` samples and the padding masked (ranks
       and dtypes must agree), ``"error"`` :class:`SampleFormatError`.

    A field whose schema fixes dtype and every dimension and is required is always
    stacked (rule 1): a sample breaking that schema raises
    :class:`SampleFormatError` naming it, whatever ``ragged`` says; generated batch
    classes type it ``NDArray[...]`` and every other array field
    ``NDArray[...] | list[NDArray[...] | None]`` (``| None`` when optional).

    ``samples`` and ``keys`` keep the originals. Generated ``<Name>Batch`` classes
    declare typed attributes and set ``sample_type``; a subclass of
    ``SampleBatch[MySample]`` that does not set it gets it from the type argument.
    A subclass registers itself as its sample class's batch class. Batches pickle
    (for DataLoader workers), also the generic ones of hand-written classes.
    """

    sample_type: ClassVar[type[PackableSample]]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        sample_type: Any = cls.__dict__.get("sample_type")
        if sample_type is None:
            for base in getattr(cls, "__orig_bases__", ()):
                args = typing.get_args(base)
                if (
                    typing.get_origin(base) is SampleBatch
                    and args
                    and isinstance(args[0], type)
                    and issubclass(args[0], PackableSample)
                ):
                    sample_type = args[0]
                    cls.sample_type = sample_type
        if sample_type is not None:
            # The first named batch class wins; a generic one made on first use
            # (``batch_class()``) gives way to a class declared later.
            registered = sample_type.__dict__.get("_atdata_batch")
            if registered is None or registered.__dict__.get("_atdata_auto"):
                sample_type._atdata_batch = cls

    def __init__(self, samples: list[S], keys: list[str] | None = None) -> None:
        self.samples = samples
        self.keys = keys or [str(i) for i in range(len(samples))]

    @classmethod
    def from_samples(
        cls, samples: list[S], keys: list[str] | None = None, *, ragged: Ragged = "list"
    ) -> Self:
        """Build a batch of ``samples`` (``keys``: their shard keys, used in errors;
        default ``"0"``, ``"1"``…). Array fields follow the policy above under
        ``ragged``. Raises :class:`SampleFormatError` naming the member (key) and
        field: under ``ragged="error"`` for an array field that cannot be stacked,
        under ``"pad"`` for ranks or dtypes that differ, always for a fixed-shape
        required field that breaks its schema; ``ValueError`` for an unknown
        ``ragged``."""
        if ragged not in ("list", "pad", "error"):
            raise ValueError(f"ragged must be 'list', 'pad' or 'error', not {ragged!r}")
        batch = cls(samples, keys)
        for spec in cls.sample_type.sample_fields:
            values = [getattr(s, spec.name) for s in samples]
            if spec.kind in ("ndarray", "structured") and values:
                setattr(batch, spec.name, _stack(spec, values, batch.keys, ragged))
            else:
                setattr(batch, spec.name, values)
        return batch

    def __len__(self) -> int:
        return len(self.samples)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self)} samples)"

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_batch, (self.sample_type, self.__dict__))


def _rebuild_batch(
    sample_type: type[PackableSample], state: dict[str, Any]
) -> SampleBatch[Any]:
    batch = object.__new__(sample_type.batch_class())
    batch.__dict__.update(state)
    return batch


def _reserved_names() -> dict[str, str]:
    """Attribute names a sample field may not take: the public API of
    :class:`PackableSample` and :class:`SampleBatch` (a field is an attribute of
    both the sample and its batch) → the class that owns it."""
    batch_api = ("samples", "keys", "sample_type", *vars(SampleBatch))
    names = {n: "SampleBatch" for n in batch_api}
    names.update({n: "PackableSample" for n in dir(PackableSample)})
    return {n: owner for n, owner in names.items() if not n.startswith("_")}


_RESERVED: Final = _reserved_names()
"""Computed once, after both classes exist; read by ``__init_subclass__``."""

RESERVED_NAMES: Final = frozenset(_RESERVED)
"""Python names a sample field cannot have (the sample and batch API: ``pack``,
``unpack``, ``keys``, ``samples``, ``from_samples``, ``sample_type``,
``batch_class``…). The compiler escapes them (``keys`` → ``keys_``); a hand-written
class using one is refused when it is defined."""


def _mismatch(spec: FieldSpec, key: str, why: str) -> SampleFormatError:
    return SampleFormatError(
        why, field=spec.wire, member=f"{key}.msgpack", rule="SAMPLE_BATCH"
    )


def _stack(spec: FieldSpec, values: list[Any], keys: list[str], ragged: Ragged) -> Any:
    present = [(k, v) for k, v in zip(keys, values, strict=True) if v is not None]
    if not present:
        return None
    first = present[0][1]
    odd = next(
        (
            (k, v)
            for k, v in present
            if v.shape != first.shape or v.dtype != first.dtype
        ),
        None,
    )
    if odd is None and len(present) == len(values):
        return np.stack(values)
    if spec.always_stacks or ragged == "error":
        # ragged= helps only a field whose schema does not fix its shape.
        hint = "" if spec.always_stacks else " (ragged='list' or 'pad' batches it)"
        if odd is None:
            key = next(k for k, v in zip(keys, values, strict=True) if v is None)
            raise _mismatch(
                spec,
                key,
                "is None in some samples of the batch but not in others; cannot "
                "stack" + hint,
            )
        raise _mismatch(
            spec,
            odd[0],
            f"shape {odd[1].shape} {odd[1].dtype} differs from the batch's first "
            f"sample ({first.shape} {first.dtype}); cannot stack" + hint,
        )
    if ragged == "list":
        return list(values)
    for key, value in present:
        if value.ndim != first.ndim or value.dtype != first.dtype:
            raise _mismatch(
                spec,
                key,
                f"shape {value.shape} {value.dtype} cannot be padded to the batch's "
                f"first sample ({first.shape} {first.dtype}): rank or dtype differs",
            )
    shape = tuple(max(v.shape[d] for _, v in present) for d in range(first.ndim))
    data = np.zeros((len(values), *shape), first.dtype)
    mask = np.ones(data.shape, bool)
    for i, value in enumerate(values):
        if value is not None:
            region: tuple[int | slice, ...] = (i, *(slice(0, n) for n in value.shape))
            data[region] = value
            mask[region] = False
    return np.ma.MaskedArray(data, mask)
