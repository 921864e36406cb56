"""Class → schema record: the ``science.alt.dataset.schema`` record of a sample class.

A schema record carries its JSON Schema (draft-07) in one of two forms:

* ``"envelope"``, the form of the upstream lexicons (forecast-bio/atdata-lexicon
  0.4.x) and of our pinned ``science.alt.dataset.*`` lexicons: ``schema`` is
  ``{$type: …#jsonSchemaFormat, draft: "draft-07", content: <JSON Schema>,
  arrayFormatVersions}``, the record's format version is ``$atdataSchemaVersion``,
  array shims are referenced under their new ``$id`` URLs
  (``https://json-schema.alt.science/atdata-…``);
* ``"flat"``, what atdata 0.7.0b1 writes and the only form it reads: the JSON
  Schema keys (``$schema``, ``type``, ``properties``, ``required``) beside
  ``$type`` in ``schema``, ``atdataSchemaVersion``, shims under
  ``https://alt.science/schemas/atdata-…``.

:func:`schema_record` builds, from a :class:`~atdata_runtime.samples.PackableSample`
class (generated or hand-written), the record in either form (default
:data:`DEFAULT_SCHEMA_FORM`, the pinned lexicons' form). In the flat form it is the
record atdata 0.7's ``SchemaPublisher`` builds for the same class: same keys, same
order, same JSON Schema body, same array shim references; only ``createdAt``
differs (it is the publication time). For a generated class it is, in the form of
the record the class was compiled from, that record: ``record → code → class →
record`` is a fixed point. :func:`convert_schema_record` turns a record of either
form into the other; :func:`schema_record_form` tells which form a record has.
"""

from __future__ import annotations

import datetime as _dt
import re
from collections.abc import Iterable
from typing import Any, Literal

from .codec import FieldSpec, PackableSample

__all__ = [
    "DEFAULT_SCHEMA_FORM",
    "NDARRAY_SHIM",
    "SCHEMA_FORMS",
    "STRUCTURED_SHIM",
    "SchemaForm",
    "convert_schema_record",
    "schema_record",
    "schema_record_form",
]

SchemaForm = Literal["envelope", "flat"]
"""How a schema record carries its JSON Schema (see the module docstring)."""

SCHEMA_FORMS: tuple[SchemaForm, ...] = ("envelope", "flat")

DEFAULT_SCHEMA_FORM: SchemaForm = "envelope"
"""The form ``science.alt.dataset.schema#jsonSchemaFormat`` has in the lexicons this
runtime pins (``atdata_runtime.lexicons``, following atdata-lexicon 0.4.x). atdata
0.7.0b1 reads only ``"flat"``: pass ``form="flat"`` (CLI ``--schema-form flat``)
for readers on it."""

FORMAT_TYPE = "science.alt.dataset.schema#jsonSchemaFormat"
JSON_SCHEMA_DRAFT = "http://json-schema.org/draft-07/schema#"
OLD_SHIM_BASE = "https://alt.science/schemas/"
"""Where atdata 0.7 (and the flat form) references the array shims."""
NEW_SHIM_BASE = "https://json-schema.alt.science/"
"""Where atdata-lexicon 0.4.x publishes the shims (their new ``$id`` URLs)."""

NDARRAY_SHIM = (
    "https://alt.science/schemas/atdata-ndarray-bytes/{version}#/$defs/ndarray"
)
"""The ``$ref`` of atdata's ndarray shim; ``{version}`` is 1.0.0, or 1.1.0 when the
field carries dtype/shape/dimension-name annotations."""

STRUCTURED_SHIM = (
    "https://alt.science/schemas/atdata-structured-bytes/1.0.0#/$defs/structured"
)
"""The ``$ref`` of atdata's structured-array shim."""

ENCODED_SHIMS: dict[str, str] = {
    "sparse": "https://alt.science/schemas/atdata-sparse-bytes/1.0.0#/$defs/sparse",
    "arrow_tensor": "https://alt.science/schemas/atdata-arrow-tensor/1.0.0#/$defs/tensor",
    "safetensors": "https://alt.science/schemas/atdata-safetensors/1.0.0#/$defs/safetensors",
    "dataframe": "https://alt.science/schemas/atdata-dataframe/1.0.0#/$defs/dataframe",
}
"""The ``$ref`` of atdata's library-encoded shims, by encoding."""

_PRIMITIVES: dict[str, dict[str, Any]] = {
    "str": {"type": "string"},
    "int": {"type": "integer"},
    "float": {"type": "number"},
    "bool": {"type": "boolean"},
    "bytes": {"type": "string", "format": "byte", "contentEncoding": "base64"},
}


def _property(spec: FieldSpec) -> dict[str, Any]:
    if spec.kind == "str" and spec.enum is not None:
        return {"type": "string", "enum": list(spec.enum)}
    if spec.kind in _PRIMITIVES:
        return dict(_PRIMITIVES[spec.kind])
    if spec.kind == "list":
        if spec.items is None:
            raise ValueError(f"list field {spec.wire!r} has no item type")
        return {"type": "array", "items": _property(spec.items)}
    if spec.kind == "structured":
        return {"$ref": STRUCTURED_SHIM}
    if spec.kind == "encoded":
        if spec.encoding not in ENCODED_SHIMS:
            raise ValueError(
                f"field {spec.wire!r} has unknown encoding {spec.encoding!r}"
            )
        return {"$ref": ENCODED_SHIMS[spec.encoding]}
    if spec.kind == "ndarray":
        annotated = (
            spec.dtype is not None or spec.shape is not None or spec.dims is not None
        )
        prop: dict[str, Any] = {
            "$ref": NDARRAY_SHIM.format(version="1.1.0" if annotated else "1.0.0")
        }
        if spec.dtype is not None:
            prop["dtype"] = spec.dtype
        if spec.shape is not None:
            prop["shape"] = list(spec.shape)
        if spec.dims is not None:
            prop["dimensionNames"] = list(spec.dims)
        return prop
    raise ValueError(f"field {spec.wire!r} has unknown kind {spec.kind!r}")


_SHIM_FORMATS: dict[str, str] = {
    "ndarray-bytes": "ndarrayBytes",
    "structured-bytes": "structuredBytes",
    "sparse-bytes": "sparseBytes",
    "arrow-tensor": "arrowTensor",
    "safetensors": "safetensors",
    "dataframe": "dataframe",
}
"""Shim name (in its ``$ref``) → its ``science.alt.dataset.arrayFormat`` value."""

_SHIM_REF = re.compile(
    re.escape(OLD_SHIM_BASE) + r"atdata-(?P<shim>[a-z-]+)/(?P<version>\d+\.\d+\.\d+)#"
)


def _array_formats(properties: Iterable[dict[str, Any]]) -> dict[str, str]:
    """``arrayFormatVersions`` for (flat-form) ``properties``: each array format
    whose shim a property references, in property order, with the highest version
    referenced. The map gives the shim versions the record uses (lexicon
    ``science.alt.dataset.schema``): ndarrayBytes ``1.1.0`` when an array with a
    dtype, shape or dimension names references ``atdata-ndarray-bytes/1.1.0``."""
    used: dict[str, str] = {}
    for prop in properties:
        while prop.get("type") == "array":
            prop = prop["items"]
        m = _SHIM_REF.match(prop.get("$ref", ""))
        if m is None:
            continue
        fmt, version = _SHIM_FORMATS[m["shim"]], m["version"]
        if fmt not in used or _semver(version) > _semver(used[fmt]):
            used[fmt] = version
    return used


def _semver(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


def schema_record(
    cls: type[PackableSample],
    *,
    form: SchemaForm = DEFAULT_SCHEMA_FORM,
    name: str | None = None,
    version: str | None = None,
    description: str | None = None,
    metadata: dict[str, Any] | None = None,
    created_at: str | None = None,
) -> dict[str, Any]:
    """The schema record of ``cls`` (a JSON-ready dict). ``name`` / ``version`` /
    ``description`` / ``metadata`` default to the class's ``schema_*`` attributes
    (generated classes) or the class name, ``"1.0.0"`` and nothing. ``created_at``
    defaults to now, in atdata's form (ISO 8601 with ``+00:00``). ``form``:
    ``"envelope"`` or ``"flat"`` (module docstring). ``arrayFormatVersions`` is a
    generated class's ``schema_array_formats`` as it is; for a hand-written class,
    the array formats of its fields' shims (``ndarrayBytes``, ``structuredBytes``,
    ``sparseBytes``…), each with the highest shim version its fields reference
    (ndarrayBytes ``1.1.0`` when an array field has a dtype, shape or dimension
    names). Raises ``ValueError`` for a field kind the record format cannot
    express, or an unknown form."""
    if form not in SCHEMA_FORMS:
        raise ValueError(f"schema record form {form!r} is not one of {SCHEMA_FORMS}")
    specs = cls.sample_fields
    if not specs:
        raise ValueError(f"{cls.__name__} declares no sample_fields")
    properties = {spec.wire: _property(spec) for spec in specs}
    body: dict[str, Any] = {
        "$type": "science.alt.dataset.schema#jsonSchemaFormat",
        "$schema": "http://json-schema.org/draft-07/schema#",
        "type": "object",
        "properties": properties,
    }
    required = [spec.wire for spec in specs if not spec.optional]
    if required:
        body["required"] = required
    if "schema_array_formats" in cls.__dict__:  # generated: the record's, as is
        formats = cls.__dict__["schema_array_formats"]
    else:  # hand-written: the shims its fields reference
        formats = _array_formats(properties.values())
    if formats:
        body["arrayFormatVersions"] = dict(formats)
    record: dict[str, Any] = {
        "$type": "science.alt.dataset.schema",
        "name": name or cls.schema_name or cls.__name__,
        "version": version or cls.schema_version or "1.0.0",
        "schemaType": "jsonSchema",
        "schema": body,
        "createdAt": created_at or _dt.datetime.now(_dt.UTC).isoformat(),
        "atdataSchemaVersion": 1,
    }
    description = (
        description
        if description is not None
        else getattr(cls, "schema_description", None)
    )
    if description is not None:
        record["description"] = description
    metadata = (
        metadata if metadata is not None else getattr(cls, "schema_metadata", None)
    )
    if metadata is not None:
        record["metadata"] = metadata
    return record if form == "flat" else convert_schema_record(record, "envelope")


def schema_record_form(record: dict[str, Any]) -> SchemaForm | None:
    """``"envelope"`` when ``record["schema"]`` has ``content`` or ``draft``,
    ``"flat"`` when it has JSON Schema keys (``properties``, ``schemaBody``), else
    ``None`` (no JSON Schema body: the older ``fields`` list, or not a record)."""
    body = record.get("schema") if isinstance(record, dict) else None
    if not isinstance(body, dict):
        return None
    if "content" in body or "draft" in body:
        return "envelope"
    if "properties" in body or "schemaBody" in body:
        return "flat"
    return None


def _rehost(node: Any, old: str, new: str) -> Any:
    """``node`` with every shim ``$ref`` under ``old`` moved under ``new``."""
    if isinstance(node, dict):
        out = {}
        for k, v in node.items():
            if k == "$ref" and isinstance(v, str) and v.startswith(old + "atdata-"):
                v = new + v[len(old) :]
            out[k] = _rehost(v, old, new)
        return out
    if isinstance(node, list):
        return [_rehost(v, old, new) for v in node]
    return node


def convert_schema_record(record: dict[str, Any], form: SchemaForm) -> dict[str, Any]:
    """``record`` (either form, a JSON dict) in ``form``: the JSON Schema moved into
    or out of the envelope, the format-version key renamed, shim ``$ref`` URLs
    re-hosted; every other key kept, in place. A record already in ``form``, or
    without a JSON Schema body, is returned as a copy. Raises ``ValueError`` for an
    unknown form or an envelope whose ``content`` is not an object."""
    if form not in SCHEMA_FORMS:
        raise ValueError(f"schema record form {form!r} is not one of {SCHEMA_FORMS}")
    have = schema_record_form(record)
    if have is None or have == form:
        return dict(record)
    body: dict[str, Any] = record["schema"]
    out: dict[str, Any] = {}
    if form == "envelope":
        flat = body.get("schemaBody", body)
        envelope_content = {
            k: v
            for k, v in flat.items()
            if k not in ("$type", "arrayFormatVersions", "schemaBody")
        }
        envelope: dict[str, Any] = {
            "$type": FORMAT_TYPE,
            "draft": "draft-07",
            "content": _rehost(envelope_content, OLD_SHIM_BASE, NEW_SHIM_BASE),
        }
        afv = body.get("arrayFormatVersions", flat.get("arrayFormatVersions"))
        if afv is not None:
            envelope["arrayFormatVersions"] = afv
        for k, v in record.items():
            if k == "schema":
                out[k] = envelope
            elif k == "atdataSchemaVersion":
                out["$atdataSchemaVersion"] = v
            else:
                out[k] = v
        return out
    content = body.get("content")
    if not isinstance(content, dict):
        raise ValueError(  # noqa: TRY004 (a malformed record, as elsewhere)
            "the envelope's 'content' is not a JSON Schema object"
        )
    flat = {"$type": FORMAT_TYPE}
    flat.update(_rehost(content, NEW_SHIM_BASE, OLD_SHIM_BASE))
    flat.setdefault("$schema", JSON_SCHEMA_DRAFT)
    if "arrayFormatVersions" in body:
        flat["arrayFormatVersions"] = body["arrayFormatVersions"]
    for k, v in record.items():
        if k == "schema":
            out[k] = flat
        elif k == "$atdataSchemaVersion":
            out["atdataSchemaVersion"] = v
        else:
            out[k] = v
    return out
