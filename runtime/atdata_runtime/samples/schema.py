"""Class → schema record: the ``science.alt.dataset.schema`` record of a sample class.

:func:`schema_record` builds, from a :class:`~atdata_runtime.samples.PackableSample`
class (generated or hand-written), the record atdata 0.7's ``SchemaPublisher``
builds for the same class: same keys, same order, same JSON Schema body, same array
shim references; only ``createdAt`` differs (it is the publication time). For a
generated class it is the record the class was compiled from, so
``record → code → class → record`` is a fixed point.
"""

from __future__ import annotations

import datetime as _dt
from typing import Any

from .codec import FieldSpec, PackableSample

__all__ = ["NDARRAY_SHIM", "STRUCTURED_SHIM", "schema_record"]

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


def schema_record(
    cls: type[PackableSample],
    *,
    name: str | None = None,
    version: str | None = None,
    description: str | None = None,
    metadata: dict[str, Any] | None = None,
    created_at: str | None = None,
) -> dict[str, Any]:
    """The schema record of ``cls`` (a JSON-ready dict). ``name`` / ``version`` /
    ``description`` / ``metadata`` default to the class's ``schema_*`` attributes
    (generated classes) or the class name, ``"1.0.0"`` and nothing. ``created_at``
    defaults to now, in atdata's form (ISO 8601 with ``+00:00``). Raises
    ``ValueError`` for a field kind the record format cannot express."""
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
    arrays = [spec for spec in specs if spec.kind in ("ndarray", "structured")]
    formats = getattr(cls, "schema_array_formats", None)
    if formats:
        body["arrayFormatVersions"] = dict(formats)
    elif arrays:
        body["arrayFormatVersions"] = {"ndarrayBytes": "1.0.0"}
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
    return record
