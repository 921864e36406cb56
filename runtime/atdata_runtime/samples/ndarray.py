"""Array bytes as atdata writes them, and ``.npy`` as it also reads them.

Compact layout (atdata 0.7 ``array_to_bytes``; the shim's text still says ``.npy``,
the code is what the network carries)::

    u8   len(dtype.str)
    ...  dtype.str, ASCII (e.g. b"<f4", b"|u1")
    u8   ndim
    i64  dims[ndim], little-endian
    ...  data, C order, exactly prod(dims) * itemsize bytes

Decoding returns a read-only view into the buffer it is given (``np.frombuffer``),
never a copy; pass ``copy=True`` for a writable array. Malformed input raises
:class:`ArrayFormatError` (a :class:`~.errors.SampleFormatError`) naming what is
wrong, with a rule ID:

- ``ARRAY_TRUNCATED``: the header or data runs past the bytes given;
- ``ARRAY_DTYPE``: an unsupported dtype: object (pickle is never involved, both
  ways), zero-size (``S0``, ``V0``, a structured dtype of no bytes), or not one of
  the simple and structured forms below;
- ``ARRAY_SHAPE``: a negative dimension, more than :data:`MAX_NDIM` dimensions, a
  dimension that is not an integer (``True`` is not), or dimensions whose product
  overflows numpy's index type or does not match the bytes present;
- ``NPY_HEADER``: a ``.npy`` header longer than :data:`MAX_NPY_HEADER_BYTES`, or not
  exactly ``{'descr': ..., 'fortran_order': bool, 'shape': (int, ...)}``.

``.npy`` headers are parsed by a small strict parser of that one dict shape, never
by ``ast.literal_eval`` (whose cost grows without bound on hostile input).
"""

from __future__ import annotations

import io
import math
import re
import struct
from typing import Any, Final

import numpy as np
from numpy.typing import NDArray

from .errors import ArrayFormatError

BufferLike = bytes | bytearray | memoryview
"""What decoding accepts and encoding returns chunks of."""

__all__ = [
    "MAX_NDIM",
    "MAX_NPY_HEADER_BYTES",
    "NPY_MAGIC",
    "ArrayFormatError",
    "BufferLike",
    "array_header",
    "decode_array",
    "encode_array",
    "encode_npy",
]

NPY_MAGIC: Final = b"\x93NUMPY"
MAX_NDIM: Final = 64
"""numpy's own limit on dimensions (``NPY_MAXDIMS`` in numpy 2)."""
MAX_NPY_HEADER_BYTES: Final = 10_000
"""The longest ``.npy`` header read, in bytes (the header dict after the length
field): numpy's own limit (``max_header_size=10000`` of
``numpy.lib.format.read_array_header_1_0``/``_2_0``, ``_MAX_HEADER_SIZE``; the
format is NEP 1, "A simple file format for NumPy arrays"). numpy's writer pads
headers to a multiple of 64 bytes and writes far less than this for any dtype a
sample field can declare."""
_MAX_ELEMENTS: Final = (1 << 63) - 1
"""numpy's index type (``intp``, 64-bit): no array has more elements or bytes."""

# Simple dtypes only: byte order, kind, item size, optional datetime unit. No object
# ("O"), no structured or sub-array dtypes: nothing numpy would need pickle or a
# parser of nested descriptions for.
_DTYPE_RE: Final = re.compile(
    r"[<>|=]?(?:[biufc]\d{1,2}|[SUV]\d{1,9}|[mM]8(?:\[\d*[a-zA-Z]{1,2}\])?)"
)


def _dtype_error(reason: str) -> ArrayFormatError:
    return ArrayFormatError(reason, rule="ARRAY_DTYPE")


def _checked_dtype(text: str) -> np.dtype[Any]:
    if not _DTYPE_RE.fullmatch(text):
        raise _dtype_error(f"unsupported dtype {text[:40]!r}")
    try:
        dtype = np.dtype(text)
    except TypeError as exc:
        raise _dtype_error(f"invalid dtype {text!r}: {exc}") from None
    if dtype.hasobject:
        raise _dtype_error("object dtype refused")
    if dtype.itemsize == 0:
        raise _dtype_error(f"zero-size dtype {text!r} refused")
    return dtype


_MAX_FIELDS: Final = 256


def _checked_descr(descr: Any, depth: int = 0) -> np.dtype[Any]:
    """A dtype from a ``.npy`` ``descr``: a simple dtype string, or (structured
    arrays) a list of ``(name, descr[, shape])`` built only from checked parts."""
    if isinstance(descr, str):
        return _checked_dtype(descr)
    if (
        not isinstance(descr, list)
        or not descr
        or len(descr) > _MAX_FIELDS
        or depth > 4
    ):
        raise _dtype_error("unsupported .npy descr")
    # As numpy.lib.format.descr_to_dtype reads it: unnamed void entries are
    # padding (aligned or offset dtypes), the others fields at running offsets.
    names: list[str] = []
    formats: list[np.dtype[Any]] = []
    offsets: list[int] = []
    offset = 0
    for entry in descr:
        if not isinstance(entry, tuple) or len(entry) not in (2, 3):
            raise _dtype_error("unsupported structured dtype entry")
        name, sub_descr = entry[0], entry[1]
        if not isinstance(name, str):
            raise _dtype_error("structured dtype field names must be strings")
        sub = _checked_descr(sub_descr, depth + 1)
        if len(entry) == 3:
            shape = entry[2]
            if (
                not isinstance(shape, tuple)
                or len(shape) > MAX_NDIM
                or not all(type(d) is int and 0 <= d < 1 << 31 for d in shape)
            ):
                raise _dtype_error("unsupported structured sub-array shape")
            try:
                sub = np.dtype((sub, shape))
            except (TypeError, ValueError, OverflowError, MemoryError) as exc:
                raise _dtype_error(f"invalid structured sub-array: {exc}") from None
        if not (name == "" and sub.type is np.void and sub.names is None):
            names.append(name)
            formats.append(sub)
            offsets.append(offset)
        offset += sub.itemsize
    try:
        dtype = np.dtype(
            {"names": names, "formats": formats, "offsets": offsets, "itemsize": offset}
        )
    except (TypeError, ValueError, OverflowError, MemoryError) as exc:
        raise _dtype_error(f"invalid structured dtype: {exc}") from None
    if dtype.hasobject:
        raise _dtype_error("object dtype refused")
    if dtype.itemsize == 0:
        raise _dtype_error("zero-size structured dtype refused")
    return dtype


def encode_npy(array: NDArray[Any]) -> bytes:
    """``.npy`` bytes of ``array`` (``np.save``, no pickle): how atdata writes
    structured (compound dtype) arrays. Raises :class:`ArrayFormatError` for object
    dtypes."""
    if array.dtype.hasobject:
        raise ArrayFormatError(f"cannot encode dtype {array.dtype}")
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def array_header(array: NDArray[Any]) -> bytes:
    """The compact header (dtype, ndim, dims) of ``array``; raises
    :class:`ArrayFormatError` for object or structured dtypes and more than
    :data:`MAX_NDIM` dimensions."""
    dtype = array.dtype
    if dtype.hasobject or dtype.names is not None or dtype.subdtype is not None:
        raise ArrayFormatError(f"cannot encode dtype {dtype}")
    if array.ndim > MAX_NDIM:
        raise ArrayFormatError(f"{array.ndim} dimensions, more than {MAX_NDIM}")
    code = dtype.str.encode("ascii")
    return (
        bytes((len(code),))
        + code
        + struct.pack(f"<B{array.ndim}q", array.ndim, *array.shape)
    )


def encode_array(array: NDArray[Any]) -> list[BufferLike]:
    """The compact encoding of ``array`` as chunks: ``[header, data]``. ``data`` is a
    zero-copy view of the array's memory when it is C-contiguous (a copy
    otherwise), so that writers can join the chunks with a single copy."""
    header = array_header(array)
    data = np.ascontiguousarray(array)
    return [header, data.data.cast("B") if data.size else b""]


_DTYPES: dict[bytes, np.dtype[Any]] = {}


def _dtype_of(code: bytes) -> np.dtype[Any]:
    dtype = _DTYPES.get(code)
    if dtype is None:
        try:
            text = code.decode("ascii")
        except UnicodeDecodeError:
            raise _dtype_error("dtype is not ASCII") from None
        dtype = _checked_dtype(text)
        if len(_DTYPES) < 256:
            _DTYPES[code] = dtype
    return dtype


def decode_array(
    buffer: BufferLike,
    offset: int = 0,
    length: int | None = None,
    *,
    copy: bool = False,
) -> NDArray[Any]:
    """Decode the array stored in ``buffer[offset:offset + length]`` (compact layout
    or ``.npy``). Returns a view into ``buffer`` (read-only when ``buffer`` is) unless
    ``copy``. Raises :class:`ArrayFormatError` (rules in the module docstring) for
    truncated or inconsistent headers, more than :data:`MAX_NDIM` dimensions, a
    ``.npy`` header over :data:`MAX_NPY_HEADER_BYTES`, a size that does not match
    the data, object or zero-size dtypes. ``buffer`` must be bytes-like with
    one-byte items.
    """
    size = len(buffer)
    end = size if length is None else offset + length
    if end > size or offset < 0:
        raise ArrayFormatError(
            "array bytes run past the end of the payload", rule="ARRAY_TRUNCATED"
        )
    if end - offset < 2:
        raise ArrayFormatError(
            f"array buffer too short ({end - offset} bytes)", rule="ARRAY_TRUNCATED"
        )
    dlen = buffer[offset]
    if dlen == 0x93 and buffer[offset : offset + 6] == NPY_MAGIC:
        return _decode_npy(memoryview(buffer).cast("B"), offset, end, copy)
    pos = offset + 1
    if pos + dlen + 1 > end:
        raise ArrayFormatError(
            "array header truncated in the dtype", rule="ARRAY_TRUNCATED"
        )
    dtype = _dtype_of(bytes(buffer[pos : pos + dlen]))
    pos += dlen
    ndim = buffer[pos]
    pos += 1
    if ndim > MAX_NDIM:
        raise _shape_error(f"ndim {ndim} is more than {MAX_NDIM}")
    if pos + 8 * ndim > end:
        raise ArrayFormatError(
            f"array header truncated in the shape ({ndim} dims)",
            rule="ARRAY_TRUNCATED",
        )
    shape = struct.unpack_from(_SHAPE_FORMATS[ndim], buffer, pos)
    return _view(buffer, dtype, shape, pos + 8 * ndim, end, copy, fortran=False)


_SHAPE_FORMATS: Final = [f"<{n}q" for n in range(MAX_NDIM + 1)]


def _shape_error(reason: str) -> ArrayFormatError:
    return ArrayFormatError(reason, rule="ARRAY_SHAPE")


def _view(
    buffer: BufferLike,
    dtype: np.dtype[Any],
    shape: tuple[int, ...],
    start: int,
    end: int,
    copy: bool,
    *,
    fortran: bool,
) -> NDArray[Any]:
    count = math.prod(shape)
    if shape and min(shape) < 0:
        raise _shape_error(f"negative dimension in shape {shape}")
    if count == 0 and shape:
        # No data, but numpy still refuses dimensions whose product (zeros left
        # out) overflows its index type: say so here, located.
        count_nonzero = math.prod(d for d in shape if d)
        if count_nonzero * dtype.itemsize > _MAX_ELEMENTS:
            raise _shape_error(
                f"shape {shape} of {dtype.str} is too big for numpy (the product "
                f"of its non-zero dimensions overflows a 64-bit index)"
            )
    expected = count * dtype.itemsize
    if expected != end - start:
        raise _shape_error(
            f"shape {shape} of {dtype.str} needs {expected} bytes, found {end - start}"
        )
    try:
        flat = np.frombuffer(buffer, dtype=dtype, count=count, offset=start)
        array = flat.reshape(shape, order="F" if fortran else "C")
    except ValueError as exc:  # anything numpy still refuses, located by the caller
        raise _shape_error(f"shape {shape} of {dtype.str}: {exc}") from None
    return array.copy() if copy else array


def _npy_error(reason: str) -> ArrayFormatError:
    return ArrayFormatError(reason, rule="NPY_HEADER")


def _decode_npy(view: memoryview, offset: int, end: int, copy: bool) -> NDArray[Any]:
    # .npy (NEP 1; numpy.lib.format): magic, major, minor, header length (u16 for
    # 1.0, u32 for 2.0/3.0), then the header dict, parsed by _NpyHeader (never
    # ast.literal_eval, never pickle) after its length is checked.
    if end - offset < 10:
        raise ArrayFormatError(".npy header truncated", rule="ARRAY_TRUNCATED")
    major = view[offset + 6]
    if major == 1:
        hlen = struct.unpack_from("<H", view, offset + 8)[0]
        start = offset + 10
    elif major in (2, 3):
        if end - offset < 12:
            raise ArrayFormatError(".npy header truncated", rule="ARRAY_TRUNCATED")
        hlen = struct.unpack_from("<I", view, offset + 8)[0]
        start = offset + 12
    else:
        raise _npy_error(f"unsupported .npy version {major}")
    if hlen > MAX_NPY_HEADER_BYTES:
        raise _npy_error(
            f".npy header of {hlen} bytes is longer than the "
            f"{MAX_NPY_HEADER_BYTES} numpy reads (numpy.lib.format)"
        )
    if start + hlen > end:
        raise ArrayFormatError(".npy header truncated", rule="ARRAY_TRUNCATED")
    raw = bytes(view[start : start + hlen])
    try:
        text = raw.decode("utf-8" if major == 3 else "latin1")
    except UnicodeDecodeError:
        raise _npy_error(".npy 3.0 header is not UTF-8") from None
    descr, fortran, shape = _NpyHeader(text).parse()
    if len(shape) > MAX_NDIM:
        raise _shape_error(f"{len(shape)} dimensions, more than {MAX_NDIM}")
    return _view(
        view,
        _checked_descr(descr),
        shape,
        start + hlen,
        end,
        copy,
        fortran=fortran,
    )


_NPY_KEYS: Final = frozenset({"descr", "fortran_order", "shape"})
_NPY_DEPTH: Final = 8
"""Nesting allowed in a header: descr list → field tuple → sub-descr list → …
(:func:`_checked_descr` allows 4 levels of structured dtypes)."""
_NPY_TOKEN: Final = re.compile(
    r"""\s*(?:(?P<punct>[{}\[\]():,])|'(?P<sq>[^'\\\n]*)'|"(?P<dq>[^"\\\n]*)"|"""
    r"(?P<int>[0-9]{1,20})(?![0-9A-Za-z_])|(?P<name>True|False)(?![0-9A-Za-z_]))"
)


class _NpyHeader:
    """A strict parser of the one dict a ``.npy`` header holds (NEP 1): string
    keys ``descr``, ``fortran_order``, ``shape``, each exactly once; values made
    of strings without escapes, non-negative integers, ``True``/``False``, lists
    and tuples, nested at most :data:`_NPY_DEPTH` deep. Trailing spaces and the
    newline numpy pads with are allowed; anything else is ``NPY_HEADER``."""

    def __init__(self, text: str) -> None:
        self.text, self.pos = text, 0

    def fail(self, what: str) -> ArrayFormatError:
        return _npy_error(f"malformed .npy header at character {self.pos}: {what}")

    def token(self) -> tuple[str, str]:
        m = _NPY_TOKEN.match(self.text, self.pos)
        if m is None:
            raise self.fail(f"unexpected {self.text[self.pos : self.pos + 10]!r}")
        self.pos = m.end()
        kind = m.lastgroup
        assert kind is not None
        value = m.group(kind)
        return ("str" if kind in ("sq", "dq") else kind), value

    def parse(self) -> tuple[Any, bool, tuple[int, ...]]:
        kind, value = self.token()
        if (kind, value) != ("punct", "{"):
            raise self.fail("expected '{'")
        header: dict[str, Any] = {}
        while True:
            kind, value = self.token()
            if (kind, value) == ("punct", "}"):
                break
            if kind != "str" or value not in _NPY_KEYS:
                raise self.fail(
                    "expected one of the keys 'descr', 'fortran_order', 'shape'"
                )
            if value in header:
                raise self.fail(f"key {value!r} given twice")
            if self.token() != ("punct", ":"):
                raise self.fail("expected ':'")
            key = value
            kind, value = self.token()
            header[key] = self.value(kind, value, 1)
            kind, value = self.token()
            if (kind, value) == ("punct", "}"):
                break
            if (kind, value) != ("punct", ","):
                raise self.fail("expected ',' or '}'")
        if self.text[self.pos :].strip(" \n\t\r\0"):
            raise self.fail("text after the header dict")
        if set(header) != _NPY_KEYS:
            missing = ", ".join(sorted(_NPY_KEYS - set(header)))
            raise self.fail(f"missing key(s) {missing}")
        fortran, shape = header["fortran_order"], header["shape"]
        if type(fortran) is not bool:
            raise self.fail("'fortran_order' must be True or False")
        if type(shape) is not tuple or not all(type(d) is int for d in shape):
            # bool is not int here: shape (True,) is refused.
            raise _shape_error(
                f".npy 'shape' must be a tuple of integers: {shape!r:.80}"
            )
        return header["descr"], fortran, shape

    def value(self, kind: str, value: str, depth: int) -> Any:
        if kind == "str":
            return value
        if kind == "int":
            return int(value)
        if kind == "name":
            return value == "True"
        if depth >= _NPY_DEPTH:
            raise self.fail(f"nested more than {_NPY_DEPTH} deep")
        if value not in ("[", "("):
            raise self.fail(f"unexpected {value!r}")
        close = "]" if value == "[" else ")"
        items: list[Any] = []
        commas = 0
        while True:
            kind, value = self.token()
            if (kind, value) == ("punct", close):
                break
            items.append(self.value(kind, value, depth + 1))
            kind, value = self.token()
            if (kind, value) == ("punct", close):
                break
            if (kind, value) != ("punct", ","):
                raise self.fail(f"expected ',' or {close!r}")
            commas += 1
        if close == "]":
            return items
        if len(items) == 1 and commas == 0:
            return items[0]  # (x) is x, as in Python
        return tuple(items)
