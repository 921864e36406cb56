"""Hypothesis strategies for sample classes, generated from their ``sample_fields``.

``samples(ImageSample)`` draws valid ``ImageSample`` instances: integers in the
int64 range, finite floats (no NaN: NaN never equals itself, which would make every
equality-based property fail), text without lone surrogates (msgpack writes
UTF-8), bytes, arrays of the field's dtype and shape (unsized dimensions 0–4,
unknown rank 0–3, unknown dtype one of uint8/int32/float32/float64), lists of up to
5 items, atdata's encoded shims as opaque bytes, and ``None`` for optional fields
now and then. Needs ``hypothesis`` (``pip install atdata-gen[testing]``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from ..samples.codec import EncodedBlob, FieldSpec, PackableSample, _np_dtype

__all__ = ["field_values", "samples"]

_ANY_DTYPES = ("uint8", "int32", "float32", "float64")
_INT64 = (-(2**63), 2**63 - 1)


def _array(spec: FieldSpec) -> st.SearchStrategy[Any]:
    dtypes = (
        st.just(_np_dtype(spec.dtype))
        if spec.dtype is not None
        else st.sampled_from([np.dtype(d) for d in _ANY_DTYPES])
    )
    if spec.shape is None:
        shapes: st.SearchStrategy[tuple[int, ...]] = hnp.array_shapes(
            min_dims=0, max_dims=3, min_side=0, max_side=4
        )
    else:
        shapes = st.tuples(
            *(st.integers(0, 4) if d is None else st.just(d) for d in spec.shape)
        )

    def build(dtype: np.dtype[Any]) -> st.SearchStrategy[Any]:
        elements = (
            hnp.from_dtype(dtype, allow_nan=False)
            if dtype.kind in "fcV"
            else hnp.from_dtype(dtype)
        )
        return hnp.arrays(dtype, shapes, elements=elements)

    return dtypes.flatmap(build)


def field_values(spec: FieldSpec) -> st.SearchStrategy[Any]:
    """Values of one field (``None`` included when the field is optional)."""
    kind = spec.kind
    base: st.SearchStrategy[Any]
    if kind == "int":
        base = st.integers(*_INT64)
    elif kind == "float":
        base = st.floats(allow_nan=False)
    elif kind == "bool":
        base = st.booleans()
    elif kind == "str":
        base = st.text(st.characters(exclude_categories=["Cs"]), max_size=20)
    elif kind == "bytes":
        base = st.binary(max_size=32)
    elif kind == "ndarray":
        base = _array(spec)
    elif kind == "list":
        if spec.items is None:
            raise ValueError(f"list field {spec.wire!r} has no item spec")
        base = st.lists(field_values(spec.items), max_size=5)
    elif kind == "encoded":
        base = st.builds(
            EncodedBlob, st.just(spec.encoding or "sparse"), st.binary(max_size=32)
        )
    else:
        raise ValueError(f"field {spec.wire!r}: no strategy for kind {kind!r}")
    return st.none() | base if spec.optional else base


def samples(cls: type[PackableSample]) -> st.SearchStrategy[Any]:
    """Instances of ``cls`` with every field drawn by :func:`field_values`."""
    return st.builds(cls, **{f.name: field_values(f) for f in cls.sample_fields})
