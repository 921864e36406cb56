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
:class:`ArrayFormatError` naming what is wrong; object dtypes are refused both ways
(pickle is never involved).
"""

from __future__ import annotations

import ast
import io
import math
import re
import struct
from typing import Any, Final

import numpy as np
from numpy.typing import NDArray

BufferLike = bytes | bytearray | memoryview
"""What decoding accepts and encoding returns chunks of."""

__all__ = [
    "MAX_NDIM",
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

# Simple dtypes only: byte order, kind, item size, optional datetime unit. No object
# ("O"), no structured or sub-array dtypes: nothing numpy would need pickle or a
# parser of nested descriptions for.
_DTYPE_RE: Final = re.compile(
    r"[<>|=]?(?:[biufc]\d{1,2}|[SUV]\d{1,9}|[mM]8(?:\[\d*[a-zA-Z]{1,2}\])?)"
)


class ArrayFormatError(ValueError):
    """Array bytes that cannot be decoded: says why, and where when known (the field
    and shard member are filled in by the sample codec)."""

    def __init__(
        self, reason: str, *, field: str | None = None, member: str | None = None
    ) -> None:
        self.reason = reason
        self.field = field
        self.member = member
        super().__init__(self._text())

    def _text(self) -> str:
        where = []
        if self.member:
            where.append(f"member {self.member!r}")
        if self.field:
            where.append(f"field {self.field!r}")
        prefix = (", ".join(where) + ": ") if where else ""
        return f"{prefix}{self.reason}"

    def located(
        self, *, field: str | None = None, member: str | None = None
    ) -> ArrayFormatError:
        """A copy with the location filled in."""
        return ArrayFormatError(
            self.reason, field=field or self.field, member=member or self.member
        )


def _checked_dtype(text: str) -> np.dtype[Any]:
    if not _DTYPE_RE.fullmatch(text):
        raise ArrayFormatError(f"unsupported dtype {text!r}")
    try:
        dtype = np.dtype(text)
    except TypeError as exc:
        raise ArrayFormatError(f"invalid dtype {text!r}: {exc}") from None
    if dtype.hasobject:
        raise ArrayFormatError("object dtype refused")
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
        raise ArrayFormatError("unsupported .npy descr")
    fields: list[Any] = []
    for entry in descr:
        if not isinstance(entry, tuple) or len(entry) not in (2, 3):
            raise ArrayFormatError("unsupported structured dtype entry")
        name, sub_descr = entry[0], entry[1]
        if not isinstance(name, str):
            raise ArrayFormatError("structured dtype field names must be strings")
        item: list[Any] = [name, _checked_descr(sub_descr, depth + 1)]
        if len(entry) == 3:
            shape = entry[2]
            if (
                not isinstance(shape, tuple)
                or len(shape) > MAX_NDIM
                or not all(isinstance(d, int) and 0 <= d < 1 << 31 for d in shape)
            ):
                raise ArrayFormatError("unsupported structured sub-array shape")
            item.append(shape)
        fields.append(tuple(item))
    try:
        dtype = np.dtype(fields)
    except (TypeError, ValueError) as exc:
        raise ArrayFormatError(f"invalid structured dtype: {exc}") from None
    if dtype.hasobject:
        raise ArrayFormatError("object dtype refused")
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
            raise ArrayFormatError("dtype is not ASCII") from None
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
    ``copy``. Raises :class:`ArrayFormatError` for truncated or inconsistent
    headers, absurd ``ndim``, a size that does not match the data, or object dtypes.
    ``buffer`` must be bytes-like with one-byte items.
    """
    size = len(buffer)
    end = size if length is None else offset + length
    if end > size or offset < 0:
        raise ArrayFormatError("array bytes run past the end of the payload")
    if end - offset < 2:
        raise ArrayFormatError(f"array buffer too short ({end - offset} bytes)")
    dlen = buffer[offset]
    if dlen == 0x93 and buffer[offset : offset + 6] == NPY_MAGIC:
        return _decode_npy(memoryview(buffer).cast("B"), offset, end, copy)
    pos = offset + 1
    if pos + dlen + 1 > end:
        raise ArrayFormatError("array header truncated in the dtype")
    dtype = _dtype_of(bytes(buffer[pos : pos + dlen]))
    pos += dlen
    ndim = buffer[pos]
    pos += 1
    if ndim > MAX_NDIM:
        raise ArrayFormatError(f"ndim {ndim} is more than {MAX_NDIM}")
    if pos + 8 * ndim > end:
        raise ArrayFormatError(f"array header truncated in the shape ({ndim} dims)")
    shape = struct.unpack_from(_SHAPE_FORMATS[ndim], buffer, pos)
    return _view(buffer, dtype, shape, pos + 8 * ndim, end, copy, fortran=False)


_SHAPE_FORMATS: Final = [f"<{n}q" for n in range(MAX_NDIM + 1)]


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
        raise ArrayFormatError(f"negative dimension in shape {shape}")
    expected = count * dtype.itemsize
    if expected != end - start:
        raise ArrayFormatError(
            f"shape {shape} of {dtype.str} needs {expected} bytes, found {end - start}"
        )
    flat = np.frombuffer(buffer, dtype=dtype, count=count, offset=start)
    array = flat.reshape(shape, order="F" if fortran else "C")
    return array.copy() if copy else array


def _decode_npy(view: memoryview, offset: int, end: int, copy: bool) -> NDArray[Any]:
    # .npy (NEP 1): magic, major, minor, header length (u16 for 1.0, u32 for 2.0/3.0),
    # then a Python-literal dict; parsed with ast.literal_eval, never pickle.
    if end - offset < 10:
        raise ArrayFormatError(".npy header truncated")
    major = view[offset + 6]
    if major == 1:
        hlen = struct.unpack_from("<H", view, offset + 8)[0]
        start = offset + 10
    elif major in (2, 3):
        if end - offset < 12:
            raise ArrayFormatError(".npy header truncated")
        hlen = struct.unpack_from("<I", view, offset + 8)[0]
        start = offset + 12
    else:
        raise ArrayFormatError(f"unsupported .npy version {major}")
    if start + hlen > end:
        raise ArrayFormatError(".npy header truncated")
    try:
        header = ast.literal_eval(bytes(view[start : start + hlen]).decode("latin1"))
        descr, fortran, shape = (
            header["descr"],
            header["fortran_order"],
            header["shape"],
        )
    except (ValueError, SyntaxError, KeyError, TypeError, MemoryError, RecursionError):
        raise ArrayFormatError("malformed .npy header") from None
    if (
        not isinstance(shape, tuple)
        or not all(isinstance(d, int) for d in shape)
        or len(shape) > MAX_NDIM
    ):
        raise ArrayFormatError("unsupported .npy header (shape)")
    return _view(
        view,
        _checked_descr(descr),
        shape,
        start + hlen,
        end,
        copy,
        fortran=bool(fortran),
    )
