"""Stage 6 for sample schemas: :class:`~atdata_gen.ir.model.SampleSchema` → a module
with one typed PackableSample class.

The class is a keyword-only dataclass (any field order is valid, also an optional
field before a required one), deriving from
:class:`atdata_runtime.samples.PackableSample`, with ``sample_fields`` (the wire
schema the codec uses), class attributes naming the schema (name, version, source,
CID), annotations that say what is known (``NDArray[np.uint8]``), and per-field
docstrings with dtype, shape and dimension names. Like every emitted module it is a
libcst tree built from checked names and ``repr`` literals.
"""

from __future__ import annotations

import json
from typing import Any

import libcst as cst
from atdata_runtime.samples import FieldSpec

from .. import __version__, naming
from ..ir.link import LinkedModel
from ..ir.model import (
    ArrayType,
    BooleanType,
    BytesType,
    Field,
    FloatType,
    IntegerType,
    NDArrayType,
    SampleSchema,
    StringType,
)
from .emit import (
    _BLANK,
    _ROOTS_USED,
    _wrap,
    ann_assign,
    call,
    doc_stmt,
    dotted,
    from_import,
    import_as,
    literal,
    name,
    sub,
    union_of,
)
from .manifest import GENERATED_MARKER
from .printer import print_module

__all__ = ["emit_samples", "sample_aliases", "sample_module_path"]

_NUMPY_SCALARS = {
    "bool": "bool_",
    "int8": "int8",
    "int16": "int16",
    "int32": "int32",
    "int64": "int64",
    "uint8": "uint8",
    "uint16": "uint16",
    "uint32": "uint32",
    "uint64": "uint64",
    "float16": "float16",
    "float32": "float32",
    "float64": "float64",
    "complex64": "complex64",
    "complex128": "complex128",
}


def _numpy_scalar(dtype: str | None) -> str | None:
    if dtype is None:
        return None
    try:
        import numpy as np

        canonical = np.dtype(dtype).name
    except TypeError:
        return None
    return _NUMPY_SCALARS.get(canonical)


def _kind(t: Any) -> str:
    if isinstance(t, NDArrayType) and t.format == "structuredBytes":
        return "structured"
    if isinstance(t, NDArrayType) and t.format != "ndarrayBytes":
        return "encoded"
    return {
        BooleanType: "bool",
        IntegerType: "int",
        FloatType: "float",
        StringType: "str",
        BytesType: "bytes",
        NDArrayType: "ndarray",
        ArrayType: "list",
    }[type(t)]


def field_spec(f: Field, py: str | None, t: Any) -> FieldSpec:
    """The runtime :class:`FieldSpec` of field ``f`` (Python name ``py``; ``None`` for
    a list's item type ``t``, which has no name of its own)."""
    nd = isinstance(t, NDArrayType)
    return FieldSpec(
        py or "",
        f.name if py is not None else "",
        _kind(t),
        optional=py is not None and not f.required,
        dtype=t.dtype if nd else None,
        shape=tuple(t.shape) if nd and t.shape is not None else None,
        dims=tuple(t.dims) if nd and t.dims is not None else None,
        items=field_spec(f, None, t.items) if isinstance(t, ArrayType) else None,
        encoding=t.format if nd and _kind(t) == "encoded" else None,
        enum=t.enum if isinstance(t, StringType) else None,
    )


def _spec_cst(spec: FieldSpec) -> cst.BaseExpression:
    kwargs: dict[str, cst.BaseExpression] = {}
    if spec.optional:
        kwargs["optional"] = cst.Name("True")
    for attr in ("dtype", "shape", "dims"):
        if getattr(spec, attr) is not None:
            kwargs[attr] = literal(getattr(spec, attr))
    if spec.items is not None:
        kwargs["items"] = _spec_cst(spec.items)
    if spec.encoding is not None:
        kwargs["encoding"] = literal(spec.encoding)
    if spec.enum is not None:
        kwargs["enum"] = literal(spec.enum)
    args = [literal(spec.name), literal(spec.wire), literal(spec.kind)]
    return call("_sample.FieldSpec", *args, **kwargs)


def _spec(f: Field, py: str | None, t: Any) -> cst.BaseExpression:
    return _spec_cst(field_spec(f, py, t))


def _annotation(t: Any) -> cst.BaseExpression:
    if isinstance(t, BooleanType):
        return dotted("bool")
    if isinstance(t, IntegerType):
        return dotted("int")
    if isinstance(t, FloatType):
        return dotted("float")
    if isinstance(t, StringType) and t.enum is not None:
        return sub("_t.Literal", *[literal(v) for v in t.enum])
    if isinstance(t, StringType):
        return dotted("str")
    if isinstance(t, BytesType):
        return dotted("bytes")
    if isinstance(t, ArrayType):
        return sub("list", _annotation(t.items))
    assert isinstance(t, NDArrayType)
    if t.format not in ("ndarrayBytes", "structuredBytes"):
        return dotted("_sample.EncodedBlob")
    if t.format == "structuredBytes":
        return sub("_npt.NDArray", dotted("_np.void"))
    scalar = _numpy_scalar(t.dtype)
    return sub("_npt.NDArray", dotted(f"_np.{scalar}") if scalar else dotted("_t.Any"))


def _field_doc(f: Field, t: Any) -> str:
    parts = [_wrap(f.description, 76)] if f.description else []
    if isinstance(t, NDArrayType) and t.format not in (
        "ndarrayBytes",
        "structuredBytes",
    ):
        parts.append(
            f"Encoded as {t.format} (atdata's {t.format} shim "
            f"{t.shim_version}); ``.decode()`` needs that library."
        )
    elif isinstance(t, NDArrayType) and t.format == "structuredBytes":
        parts.append(
            f"Structured (compound dtype) array, sent as .npy "
            f"(structured shim {t.shim_version})."
        )
    elif isinstance(t, NDArrayType):
        shape = (
            "any rank"
            if t.shape is None
            else "(" + ", ".join("*" if d is None else str(d) for d in t.shape) + ")"
        )
        line = f"ndarray, dtype {t.dtype or 'any'}, shape {shape}"
        if t.dims:
            line += ", dimensions (" + ", ".join(t.dims) + ")"
        parts.append(line + f" (ndarray shim {t.shim_version}).")
    if not f.required:
        parts.append("Optional: absent or None on the wire reads as None.")
    return "\n\n".join(parts)


def _batch_class(
    schema: SampleSchema, cls: str, py_names: tuple[str, ...]
) -> cst.ClassDef:
    body: list[cst.BaseStatement] = [
        doc_stmt(
            f"A batch of ``{cls}``: array fields stacked along a new first axis "
            "(or, when their\nsamples differ, per the ``ragged`` policy), other "
            "fields as lists (see\n``atdata_runtime.samples.SampleBatch``).",
            "    ",
        )
    ]
    body.append(
        ann_assign(
            "sample_type",
            sub("_t.ClassVar", sub("type", dotted("_sample.PackableSample"))),
            name(cls),
            blank=1,
        )
    )
    for i, (f, py) in enumerate(zip(schema.fields, py_names, strict=True)):
        spec = field_spec(f, py, f.type)
        if spec.kind in ("ndarray", "structured"):
            # SampleBatch's policy: stacked when the schema guarantees it, else
            # stacked or (ragged="list") the per-sample values.
            ann = _annotation(f.type)
            if not spec.always_stacks:
                ann = union_of(
                    [
                        ann,
                        sub("list", union_of([_annotation(f.type), cst.Name("None")])),
                    ]
                )
            if not f.required:
                ann = union_of([ann, cst.Name("None")])
        else:
            item = _annotation(f.type)
            if not f.required:
                item = union_of([item, cst.Name("None")])
            ann = sub("list", item)
        body.append(ann_assign(py, ann, blank=1 if i == 0 else 0))
    return cst.ClassDef(
        name=name(f"{cls}Batch"),
        body=cst.IndentedBlock(body),
        bases=[cst.Arg(sub("_sample.SampleBatch", name(cls)))],
        leading_lines=[_BLANK, _BLANK],
    )


def sample_module_path(model: LinkedModel, schema: SampleSchema) -> tuple[str, ...]:
    """Module path (relative to the package) of a sample schema's class."""
    return model.names.samples[(schema.name, schema.version)][0]


def _module(model: LinkedModel, schema: SampleSchema, rel: str) -> str:
    _ROOTS_USED.clear()
    _, cls, py_names = model.names.samples[(schema.name, schema.version)]
    source = schema.uri or rel
    doc = _wrap(schema.description) + "\n\n" if schema.description else ""
    doc += f"Sample schema ``{schema.name}`` version {schema.version}"
    doc += f" ({schema.uri}, CID {schema.cid})." if schema.uri else "."
    body: list[cst.BaseStatement] = [doc_stmt(doc, "    ")]
    class_vars: list[tuple[str, cst.BaseExpression, cst.BaseExpression]] = [
        ("schema_name", sub("_t.ClassVar", dotted("str")), literal(schema.name)),
        ("schema_version", sub("_t.ClassVar", dotted("str")), literal(schema.version)),
        ("schema_source", sub("_t.ClassVar", dotted("str")), literal(source)),
        (
            "schema_cid",
            sub("_t.ClassVar", union_of([dotted("str"), cst.Name("None")])),
            literal(schema.cid),
        ),
        (
            "schema_description",
            sub("_t.ClassVar", union_of([dotted("str"), cst.Name("None")])),
            literal(schema.description),
        ),
        (
            "schema_array_formats",
            sub(
                "_t.ClassVar",
                union_of([sub("dict", dotted("str"), dotted("str")), cst.Name("None")]),
            ),
            literal(dict(schema.array_formats) if schema.array_formats else None),
        ),
        (
            "schema_metadata",
            sub(
                "_t.ClassVar",
                union_of(
                    [sub("dict", dotted("str"), dotted("_t.Any")), cst.Name("None")]
                ),
            ),
            literal(json.loads(schema.metadata_json) if schema.metadata_json else None),
        ),
    ]
    for i, (attr, attr_ann, attr_value) in enumerate(class_vars):
        body.append(ann_assign(attr, attr_ann, attr_value, blank=1 if i == 0 else 0))
    specs = cst.Tuple(
        [
            cst.Element(_spec(f, py, f.type))
            for f, py in zip(schema.fields, py_names, strict=True)
        ]
    )
    body.append(
        ann_assign(
            "sample_fields",
            sub(
                "_t.ClassVar", sub("tuple", dotted("_sample.FieldSpec"), cst.Ellipsis())
            ),
            specs,
        )
    )
    for f, py in zip(schema.fields, py_names, strict=True):
        ann = _annotation(f.type)
        value: cst.BaseExpression | None = None
        if not f.required:
            ann = union_of([ann, cst.Name("None")])
            value = cst.Name("None")
        body.append(ann_assign(py, ann, value, blank=1))
        text = _field_doc(f, f.type)
        if py != f.name:
            text = (text + "\n\n" if text else "") + f"Wire name: ``{f.name}``."
        if text:
            body.append(doc_stmt(text, "    "))
    decorator = cst.Decorator(
        call("_dc.dataclass", kw_only=cst.Name("True"), eq=cst.Name("False"))
    )
    klass = cst.ClassDef(
        name=name(cls),
        body=cst.IndentedBlock(body),
        bases=[cst.Arg(sub("_sample.PackableSample", literal(f"{cls}Batch")))],
        decorators=[decorator],
        leading_lines=[_BLANK, _BLANK],
    )
    batch = _batch_class(schema, cls, py_names)
    provenance = (
        f"Record: ``{schema.uri}`` (CID ``{schema.cid}``).\n\n" if schema.uri else ""
    )
    header = (
        f"Sample schema ``{schema.name}`` {schema.version}.\n\n{provenance}"
        f"{GENERATED_MARKER} {__version__} from ``{rel}`` "
        f"(sha256 {schema.origin.sha256[:16]}).\n"
        "Do not edit: ``atdata-gen build`` overwrites this file."
    )
    head: list[cst.BaseStatement] = [doc_stmt(header)]
    head.append(from_import("__future__", "annotations", blank=1))
    head.append(import_as("dataclasses", "_dc", blank=1))
    head.append(import_as("typing", "_t"))
    third = []
    if "_np" in _ROOTS_USED:
        third.append(import_as("numpy", "_np"))
    if "_npt" in _ROOTS_USED:
        third.append(import_as("numpy.typing", "_npt"))
    third.append(from_import("atdata_runtime", "samples", "_sample"))
    first = third[0]
    third[0] = first.with_changes(leading_lines=[_BLANK])
    head.extend(third)
    head.append(
        ann_assign(
            "__all__",
            sub("list", dotted("str")),
            cst.List([cst.Element(literal(cls)), cst.Element(literal(f"{cls}Batch"))]),
            blank=1,
        )
    )
    return print_module(cst.Module(body=[*head, klass, batch]))  # type: ignore[list-item]


def _precedence(version: str) -> tuple[Any, ...]:
    """semver.org § 11 precedence (a pre-release below its release; build metadata
    ignored), then the text itself, so that the order is total."""
    import semantic_version

    return (semantic_version.Version(version).precedence_key[:4], version)


def sample_aliases(model: LinkedModel) -> dict[tuple[str, ...], SampleSchema]:
    """Alias module path → the schema it re-exports: for each schema name, one
    module ``samples/<snake name>.py`` for its highest version (semver precedence),
    so ``from pkg.samples.image_sample import ImageSample`` survives version bumps.
    A name that a versioned module (or an earlier alias, names in code-point order)
    already holds gets the first free ``_2``, ``_3``, …"""
    latest: dict[str, SampleSchema] = {}
    for schema in model.samples:
        have = latest.get(schema.name)
        if have is None or _precedence(schema.version) > _precedence(have.version):
            latest[schema.name] = schema
    scopes: dict[str, naming.Scope] = {}
    taken: dict[str, set[str]] = {}
    for path, _, _ in model.names.samples.values():
        taken.setdefault(path[0], set()).add(path[-1])
    out: dict[tuple[str, ...], SampleSchema] = {}
    for schema_name in sorted(latest):
        schema = latest[schema_name]
        package = model.names.samples[(schema.name, schema.version)][0][0]
        scope = scopes.setdefault(package, naming.Scope(taken.get(package, set())))
        out[(package, scope.claim(naming.module_stem(schema.name)))] = schema
    return out


def _alias_module(model: LinkedModel, schema: SampleSchema) -> str:
    path, cls, _ = model.names.samples[(schema.name, schema.version)]
    header = _wrap(
        f"Sample schema ``{schema.name}`` at its latest version, {schema.version} "
        f"(module ``{path[-1]}``).\n\n"
        "Import from here to follow the newest version this package was built "
        "with; import the versioned module to pin one."
    ) + (
        f"\n\n{GENERATED_MARKER} {__version__}.\n"
        "Do not edit: ``atdata-gen build`` overwrites this file."
    )
    names = [cls, f"{cls}Batch"]
    body: list[cst.SimpleStatementLine] = [
        doc_stmt(header),
        from_import("__future__", "annotations", blank=1),
        cst.SimpleStatementLine(
            [
                cst.ImportFrom(
                    module=cst.Name(path[-1]),
                    names=[cst.ImportAlias(name(n)) for n in names],
                    relative=[cst.Dot()],
                )
            ],
            leading_lines=[_BLANK],
        ),
        ann_assign(
            "__all__",
            sub("list", dotted("str")),
            cst.List([cst.Element(literal(n)) for n in names]),
            blank=1,
        ),
    ]
    return print_module(cst.Module(body=body))


def emit_samples(
    model: LinkedModel, rels: dict[tuple[str, str], str]
) -> dict[str, str]:
    """``{relative path: source}`` of the sample modules of ``model`` (before
    formatting), and of the alias module of each schema name's latest version
    (:func:`sample_aliases`). ``rels`` maps (name, version) → the source path
    cited."""
    out = {}
    for schema in model.samples:
        key = (schema.name, schema.version)
        path = model.names.samples[key][0]
        out["/".join(path) + ".py"] = _module(
            model, schema, rels.get(key, schema.origin.path)
        )
    for path, schema in sample_aliases(model).items():
        out["/".join(path) + ".py"] = _alias_module(model, schema)
    return out
