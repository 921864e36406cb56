"""Hand-written sample classes: ``sample_fields`` derived from a class's annotations.

A code-first class (atdata's habit)::

    @dataclass(kw_only=True)
    class MySample(PackableSample):
        image: NDArray[np.uint8]           # ndarray, dtype uint8 (1.1.0 shim)
        mask: NDArray | None = None        # ndarray, any dtype (1.0.0 shim), optional
        label: str
        tokens: list[int]
        raw: bytes | None = None

gets, when the class statement runs (before ``@dataclass`` sees it), the
``sample_fields`` a generated class declares: one :class:`FieldSpec` per annotated
field, in dataclass field order (inherited fields first). Annotations may be strings
(``from __future__ import annotations``): they are resolved in the class's module and
the scope that defines it.

Supported annotations: ``int``, ``float``, ``str``, ``bool``, ``bytes``; numpy arrays
(``NDArray[np.uint8]`` / ``np.ndarray[Any, np.dtype[np.float32]]`` fix the dtype;
bare ``NDArray``, ``np.ndarray``, ``NDArray[Any]`` or an abstract scalar type such as
``np.floating`` accept any dtype; ``NDArray[np.void]`` is a structured array);
``Literal["a", "b"]`` (a string restricted to those values: the schema record's
``enum``, as a generated class declares it, checked on pack); ``EncodedBlob`` with
``field(metadata={"encoding": "sparse"})`` (see
:data:`~atdata_runtime.samples.codec.ENCODINGS`); ``list[X]`` of any of these but
arrays, nested; ``X | None`` / ``Optional[X]`` (optional: ``None`` on the wire).
``Annotated[X, ...]`` is read as ``X``. ``dataclasses.field(metadata=...)`` may set
``wire`` (the msgpack key, default the attribute name), ``dtype`` (a numpy dtype
name), ``shape`` (a tuple of ints or ``None``), ``dims`` (dimension names) and
``encoding``.

Anything else raises ``TypeError`` naming the class, the field and the reason, when
the class is defined: other unions, ``Literal`` values that are not strings,
``dict``, nested dataclasses, object arrays,
lists of arrays or of optional items, bare ``list``, ``init=False`` fields,
``InitVar``, and attribute names the sample or batch API uses (``pack``, ``keys``,
``samples``…: rename the attribute and keep the wire name with
``field(metadata={"wire": "keys"})``).
"""

from __future__ import annotations

import dataclasses
import inspect
import sys
import types
import typing
from typing import Any, ClassVar, get_args, get_origin

import numpy as np

from .codec import ENCODINGS, EncodedBlob, FieldSpec

__all__ = ["derive_sample_fields"]

_PRIMITIVES: dict[Any, str] = {
    bool: "bool",
    int: "int",
    float: "float",
    str: "str",
    bytes: "bytes",
}


class _Refused(Exception):
    """Internal: why an annotation cannot be packed (becomes the TypeError)."""


def _array_dtype(hint: Any) -> tuple[str, str | None]:
    """(kind, dtype) of an ndarray annotation."""
    args = get_args(hint)
    if len(args) != 2:
        return "ndarray", None
    dtype_args = get_args(args[1])
    if not dtype_args:
        return "ndarray", None
    scalar = dtype_args[0]
    scalar = get_origin(scalar) or scalar
    if not (isinstance(scalar, type) and issubclass(scalar, np.generic)):
        return "ndarray", None  # Any, a TypeVar: any dtype
    if scalar is np.void:
        return "structured", None
    if scalar is np.object_:
        raise _Refused(
            "object arrays cannot be packed (atdata's array layout has no object dtype)"
        )
    try:
        dtype = np.dtype(scalar)
    except TypeError:
        return "ndarray", None  # abstract (np.floating, np.number): any dtype
    if dtype.itemsize == 0:
        return "ndarray", None  # flexible (np.str_, np.bytes_): any length
    return "ndarray", dtype.name


def _spec(hint: Any, metadata: typing.Mapping[str, Any], *, item: bool) -> FieldSpec:
    """The FieldSpec (name and wire left empty) of one annotation."""
    if get_origin(hint) is typing.Annotated:
        hint = get_args(hint)[0]
    optional = False
    if get_origin(hint) is typing.Union or isinstance(hint, types.UnionType):
        args = get_args(hint)
        rest = [a for a in args if a is not type(None)]
        if len(rest) != 1:
            raise _Refused(
                f"the union {hint} cannot be packed: only one type or `X | None`"
            )
        if item:
            raise _Refused(
                "list items cannot be optional (the schema record has no "
                "nullable items)"
            )
        optional, hint = True, rest[0]
        if get_origin(hint) is typing.Annotated:
            hint = get_args(hint)[0]
    origin = get_origin(hint)
    if origin is typing.Literal:
        return _literal(hint, optional=optional, item=item)
    if hint in _PRIMITIVES:
        return FieldSpec("", "", _PRIMITIVES[hint], optional=optional)
    if hint is np.ndarray or origin is np.ndarray:
        if item:
            raise _Refused(
                "lists of arrays cannot be packed; use one array with a leading "
                "axis (or one field per array)"
            )
        kind, dtype = _array_dtype(hint)
        dtype = metadata.get("dtype", dtype)
        shape = metadata.get("shape")
        dims = metadata.get("dims")
        return FieldSpec(
            "",
            "",
            kind,
            optional=optional,
            dtype=dtype if kind == "ndarray" else None,
            shape=None if shape is None else tuple(shape),
            dims=None if dims is None else tuple(dims),
        )
    if hint is EncodedBlob:
        if item:
            raise _Refused("lists of EncodedBlob cannot be packed")
        encoding = metadata.get("encoding")
        if encoding not in ENCODINGS:
            raise _Refused(
                "an EncodedBlob field needs field(metadata={'encoding': E}) with E "
                f"one of {', '.join(sorted(ENCODINGS))}"
            )
        return FieldSpec("", "", "encoded", optional=optional, encoding=encoding)
    if origin is list or hint is list:
        args = get_args(hint)
        if not args:
            raise _Refused("a list needs its item type: list[int], list[str], …")
        inner = _spec(args[0], {}, item=True)
        return FieldSpec("", "", "list", optional=optional, items=inner)
    if isinstance(hint, type) and issubclass(hint, np.generic):
        raise _Refused(
            f"numpy scalar {hint.__name__} is not a field type: annotate it as "
            "int, float or bool (msgpack carries Python values)"
        )
    if dataclasses.is_dataclass(hint):
        raise _Refused(
            "nested dataclasses cannot be packed (atdata 0.7 has no nested "
            "objects in sample schemas); flatten the fields"
        )
    raise _Refused(
        f"{hint!r} cannot be packed: use int, float, str, bool, bytes, "
        "Literal['a', ...], an NDArray, EncodedBlob, list[...] of these, or X | None"
    )


def _literal(hint: Any, *, optional: bool, item: bool) -> FieldSpec:
    """The FieldSpec of ``Literal["a", "b"]``: a string field with those values as
    its ``enum`` (what a generated class declares for a JSON Schema string enum).
    ``None`` among the values makes the field optional."""
    values = get_args(hint)
    if None in values:
        if item:
            raise _Refused(
                "list items cannot be optional (the schema record has no "
                "nullable items)"
            )
        optional, values = True, tuple(v for v in values if v is not None)
    others = [v for v in values if not isinstance(v, str)]
    if others or not values:
        raise _Refused(
            f"{hint} cannot be packed: only string literals (a JSON Schema string "
            f"enum), not {', '.join(f'{v!r} ({type(v).__name__})' for v in others)}"
            if others
            else f"{hint} has no values"
        )
    return FieldSpec("", "", "str", optional=optional, enum=tuple(values))


def _defining_namespace(cls: type, depth: int) -> dict[str, Any]:
    """Local names of the function whose ``class`` statement is running, so that
    string annotations naming its locals resolve: the frame (at or above ``depth``)
    whose code is the scope named by ``cls.__qualname__`` (``f.<locals>.S`` → ``f``),
    in ``cls``'s module. Matching the qualified name, not just the module, skips
    intermediate frames such as a base class's ``__init_subclass__``. A class
    defined at module level needs nothing here (its globals are used)."""
    parent = cls.__qualname__.rpartition(".")[0]
    if not parent.endswith("<locals>"):
        return {}
    parent = parent.removesuffix(".<locals>")
    module = sys.modules.get(cls.__module__)
    try:
        frame = sys._getframe(depth + 1)
    except ValueError:  # pragma: no cover - shallow stack
        return {}
    while frame is not None:
        if (
            frame.f_code.co_qualname == parent
            and module is not None
            and frame.f_globals is vars(module)
        ):
            return dict(frame.f_locals)
        frame = frame.f_back  # type: ignore[assignment]
    return {}


def _where(cls: type, name: str) -> str:
    return f"{cls.__module__}.{cls.__qualname__}.{name}"


def derive_sample_fields(
    cls: type,
    inherited: tuple[FieldSpec, ...],
    reserved: typing.Mapping[str, str],
    *,
    depth: int = 1,
) -> tuple[FieldSpec, ...]:
    """``sample_fields`` of a hand-written class from its own annotations, after the
    ``inherited`` fields (an annotation that re-declares one replaces it in place).
    ``reserved`` maps API names to the class that owns them. ``depth``: stack
    frames between the caller and the class statement. Raises ``TypeError``
    naming the class and field."""
    own: dict[str, Any] = dict(inspect.get_annotations(cls))
    if not own:
        return inherited
    module = sys.modules.get(cls.__module__)
    globalns = dict(vars(module)) if module is not None else {}
    localns = {**_defining_namespace(cls, depth), cls.__name__: cls}
    specs = {f.name: f for f in inherited}
    for name, annotation in own.items():
        if annotation is dataclasses.KW_ONLY or annotation == "KW_ONLY":
            continue
        try:
            holder = type("_", (), {"__annotations__": {name: annotation}})
            hint = typing.get_type_hints(
                holder, globalns, localns, include_extras=True
            )[name]
        except Exception as exc:  # noqa: BLE001 - whatever evaluating it raised
            raise TypeError(
                f"{_where(cls, name)}: cannot resolve the annotation "
                f"{annotation!r} ({type(exc).__name__}: {exc}); import the names it "
                "uses at module level"
            ) from None
        if hint is dataclasses.KW_ONLY:
            continue
        if get_origin(hint) is ClassVar or hint is ClassVar:
            continue
        if isinstance(hint, dataclasses.InitVar):
            raise TypeError(
                f"{_where(cls, name)}: InitVar fields are not stored, so they cannot "
                "be packed"
            )
        default = cls.__dict__.get(name)
        metadata: typing.Mapping[str, Any] = {}
        if isinstance(default, dataclasses.Field):
            if not default.init:
                raise TypeError(
                    f"{_where(cls, name)}: init=False fields cannot be unpacked "
                    "(unpack passes every field to the constructor)"
                )
            metadata = default.metadata
        wire = metadata.get("wire", name)
        if name in reserved:
            raise TypeError(
                f"{_where(cls, name)}: the name {name!r} is {reserved[name]}'s API; "
                f"rename the attribute (e.g. {name}_) and keep the wire name with "
                f"field(metadata={{'wire': {wire!r}}})"
            )
        if not isinstance(wire, str) or not wire:
            raise TypeError(f"{_where(cls, name)}: metadata 'wire' must be a string")
        try:
            spec = _spec(hint, metadata, item=False)
        except _Refused as exc:
            raise TypeError(f"{_where(cls, name)}: {exc}") from None
        specs[name] = dataclasses.replace(spec, name=name, wire=wire)
    seen: dict[str, str] = {}
    for spec in specs.values():
        if spec.wire in seen:
            raise TypeError(
                f"{_where(cls, spec.name)}: wire name {spec.wire!r} is also the wire "
                f"name of {seen[spec.wire]!r}"
            )
        seen[spec.wire] = spec.name
    return tuple(specs.values())
