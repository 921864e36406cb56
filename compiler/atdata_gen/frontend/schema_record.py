"""Stages 2-3 for sample schemas: a ``science.alt.dataset.schema`` record →
:class:`~atdata_gen.ir.model.SampleSchema`.

Accepted inputs (all as JSON documents):

* the record as the network carries it, ``schemaType: "jsonSchema"``, in either
  form (``$type`` = ``science.alt.dataset.schema#jsonSchemaFormat``):

  - the envelope of atdata-lexicon 0.4.x: ``schema = {draft: "draft-07", content:
    <JSON Schema>, arrayFormatVersions}``, format version ``$atdataSchemaVersion``;
  - the flat form atdata 0.7.0b1 writes: the JSON Schema draft-07 keys in
    ``schema`` itself, optional ``arrayFormatVersions`` beside them, format version
    ``atdataSchemaVersion``;

  both compile to the same :class:`~atdata_gen.ir.model.SampleSchema` (the form is
  kept in ``record_form``, not compared);
* the record wrapped as ``com.atproto.repo.getRecord`` returns it
  (``{"uri", "cid", "value"}``): the AT-URI and CID become the provenance;
* the older field-list form of atdata's local index and the planning notes:
  ``fields: [{name, fieldType | type: {$type | kind: primitive | ndarray | array …},
  optional}]``.

Array fields ``$ref`` atdata's shims (under ``https://alt.science/schemas/`` as
atdata 0.7 writes them, or their new ``$id`` URLs under
``https://json-schema.alt.science/``), all mapped to
:class:`~atdata_gen.ir.model.NDArrayType` with their ``format``: the ndarray shim
(1.0.0, and 1.1.0 with ``dtype``, ``shape`` and ``dimensionNames`` beside the
``$ref``), the structured-array shim (``.npy`` of a compound dtype), and the
library-encoded shims (sparse, arrow tensor, safetensors, dataframe: opaque bytes,
decoded on demand). A string property with a JSON Schema ``enum`` (of strings) is a
:class:`~atdata_gen.ir.model.StringType` with that ``enum`` (typed
``typing.Literal[...]``). Unknown shims, other versions, nested objects and
non-string enums are reported as ``SCHEMA_UNSUPPORTED`` errors: never silently typed
as ``str``.

Field names are untrusted: they stay wire names here; the name table turns them
into identifiers. A field name starting with ``$`` is refused
(``SCHEMA_PROPERTY_RESERVED``): the atproto Data Model spec (§ "Data Types")
reserves such keys for the data model and protocol, and says readers should ignore
unknown ones, so the field would not survive the record. The ``$``-keys a JSON
Schema body does use (``$schema``, ``$id``, ``$defs``, ``$ref``) are keywords of
JSON Schema beside ``properties``, never property names, and stay accepted.
"""

from __future__ import annotations

import json
import re
from typing import Any

from .. import naming
from ..diagnostics import Reporter
from ..ir.model import (
    ArrayType,
    BooleanType,
    BytesType,
    Field,
    FloatType,
    IntegerType,
    NDArrayType,
    Origin,
    SampleFieldType,
    SampleSchema,
    StringType,
)
from ..sources import SourceDoc, escape_pointer

__all__ = ["is_schema_record", "parse_schema_record", "unwrap_record"]

SCHEMA_NSID = "science.alt.dataset.schema"
_SHIM_RE = re.compile(
    r"https://(?:alt\.science/schemas|json-schema\.alt\.science)"
    r"/atdata-(?P<kind>[a-z-]+)/(?P<version>\d+\.\d+\.\d+)#/\$defs/(?P<def>\w+)"
)
_NDARRAY_VERSIONS = ("1.0.0", "1.1.0")
_ENCODED_SHIMS = {
    ("sparse-bytes", "sparse"): "sparse",
    ("arrow-tensor", "tensor"): "arrow_tensor",
    ("safetensors", "safetensors"): "safetensors",
    ("dataframe", "dataframe"): "dataframe",
}
"""atdata's library-encoded array shims: (shim, def) → encoding."""
_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.]{0,199}")
_SEMVER_RE = re.compile(
    r"(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*)?(?:\+[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*)?"
)
_DTYPE_RE = re.compile(r"[<>|=]?[a-z]+[0-9]*")


def unwrap_record(value: Any) -> tuple[Any, str, str | None, str | None]:
    """``(record, JSON pointer of the record, AT-URI, CID)`` of a decoded document:
    a record wrapped as ``com.atproto.repo.getRecord`` returns it (``{"uri",
    "cid", "value"}``, also how the lock pins it), or a bare record (pointer
    ``""``, no AT-URI or CID)."""
    if isinstance(value, dict) and isinstance(value.get("value"), dict):
        uri, cid = value.get("uri"), value.get("cid")
        return (
            value["value"],
            "/value",
            uri if isinstance(uri, str) else None,
            cid if isinstance(cid, str) else None,
        )
    return value, "", None, None


def is_schema_record(value: Any) -> bool:
    """True when a decoded JSON document looks like a schema record (any form)."""
    value = unwrap_record(value)[0]
    if not isinstance(value, dict):
        return False
    return (
        value.get("$type") == SCHEMA_NSID
        or "schemaType" in value
        or ("fields" in value and "name" in value and "lexicon" not in value)
    )


class _Parser:
    def __init__(self, doc: SourceDoc, reporter: Reporter) -> None:
        self.doc, self.reporter = doc, reporter
        self.ok = True

    def error(self, pointer: str, rule: str, message: str) -> None:
        self.ok = False
        self.reporter.report(self.doc.span(pointer), rule, message)

    # -- JSON Schema form -----------------------------------------------------------
    def json_type(self, prop: Any, ptr: str) -> SampleFieldType | None:
        if not isinstance(prop, dict):
            self.error(ptr, "SCHEMA_FIELD", "a property must be a JSON object")
            return None
        ref = prop.get("$ref")
        if isinstance(ref, str):
            return self.shim(ref, prop, ptr)
        kind = prop.get("type")
        if isinstance(kind, list):
            kinds = [k for k in kind if k != "null"]
            kind = kinds[0] if len(kinds) == 1 else kind
        if "enum" in prop:
            return self.enum(prop, kind, ptr)
        if kind == "string":
            if prop.get("format") == "byte" or prop.get("contentEncoding") == "base64":
                return BytesType()
            return StringType()
        if kind == "integer":
            return IntegerType()
        if kind == "number":
            return FloatType()
        if kind == "boolean":
            return BooleanType()
        if kind == "array":
            items = prop.get("items")
            if items is None:
                self.error(ptr, "SCHEMA_FIELD", "an array property needs 'items'")
                return None
            inner = self.json_type(items, f"{ptr}/items")
            if inner is None:
                return None
            if isinstance(inner, NDArrayType):
                self.error(
                    f"{ptr}/items",
                    "SCHEMA_UNSUPPORTED",
                    "arrays of ndarrays are not supported (atdata cannot pack "
                    "them either); use one ndarray with an extra dimension",
                )
                return None
            return ArrayType(inner)
        if kind == "object":
            self.error(
                ptr,
                "SCHEMA_UNSUPPORTED",
                "nested object fields are not supported: publish the nested "
                "type as its own schema",
            )
            return None
        self.error(
            f"{ptr}/type" if "type" in prop else ptr,
            "SCHEMA_FIELD",
            f"unsupported JSON Schema type {kind!r}",
        )
        return None

    def enum(self, prop: dict[str, Any], kind: Any, ptr: str) -> StringType | None:
        """A JSON Schema ``enum``: a list of distinct strings on a ``string``
        property (or one without ``type``) is a string restricted to them; any
        other enum is refused where it is (never dropped)."""
        values = prop["enum"]
        if kind not in ("string", None):
            self.error(
                f"{ptr}/enum",
                "SCHEMA_UNSUPPORTED",
                f"'enum' is supported on string properties only, not on {kind!r}",
            )
            return None
        if (
            not isinstance(values, list)
            or not values
            or not all(isinstance(v, str) for v in values)
        ):
            self.error(
                f"{ptr}/enum",
                "SCHEMA_UNSUPPORTED",
                "'enum' must be a non-empty list of strings (other enum values "
                "are not supported)",
            )
            return None
        if len(set(values)) != len(values):
            self.error(f"{ptr}/enum", "SCHEMA_FIELD", "'enum' lists a value twice")
            return None
        if prop.get("format") == "byte" or prop.get("contentEncoding") == "base64":
            self.error(
                f"{ptr}/enum",
                "SCHEMA_UNSUPPORTED",
                "'enum' on a bytes (base64) property is not supported",
            )
            return None
        return StringType(enum=tuple(values))

    def shim(self, ref: str, prop: dict[str, Any], ptr: str) -> NDArrayType | None:
        m = _SHIM_RE.fullmatch(ref)
        if m is None:
            self.error(
                f"{ptr}/$ref", "SCHEMA_REF", f"$ref {ref!r} is not an atdata array shim"
            )
            return None
        kind, version = m["kind"], m["version"]
        encoded = _ENCODED_SHIMS.get((kind, m["def"]))
        if encoded is not None:
            if version != "1.0.0":
                self.error(
                    f"{ptr}/$ref",
                    "SCHEMA_UNSUPPORTED",
                    f"{kind} shim version {version} is not supported "
                    "(supported: 1.0.0)",
                )
                return None
            return NDArrayType(shim_version=version, format=encoded)
        if kind == "structured-bytes" and m["def"] == "structured":
            if version != "1.0.0":
                self.error(
                    f"{ptr}/$ref",
                    "SCHEMA_UNSUPPORTED",
                    f"structured shim version {version} is not supported "
                    "(supported: 1.0.0)",
                )
                return None
            return NDArrayType(shim_version=version, format="structuredBytes")
        if kind != "ndarray-bytes" or m["def"] != "ndarray":
            self.error(
                f"{ptr}/$ref",
                "SCHEMA_UNSUPPORTED",
                f"array shim {kind!r} ({version}) is not supported yet "
                "(supported: ndarray-bytes 1.0.0 and 1.1.0, structured-bytes 1.0.0)",
            )
            return None
        if version not in _NDARRAY_VERSIONS:
            self.error(
                f"{ptr}/$ref",
                "SCHEMA_UNSUPPORTED",
                f"ndarray shim version {version} is not supported "
                f"(supported: {', '.join(_NDARRAY_VERSIONS)})",
            )
            return None
        return self.ndarray_annotations(prop, ptr, version)

    def ndarray_annotations(
        self, prop: dict[str, Any], ptr: str, version: str
    ) -> NDArrayType | None:
        dtype = prop.get("dtype")
        if dtype is not None and not (
            isinstance(dtype, str) and _DTYPE_RE.fullmatch(dtype)
        ):
            self.error(
                f"{ptr}/dtype",
                "SCHEMA_FIELD",
                f"dtype must be a numpy dtype name, not {dtype!r}",
            )
            return None
        shape = prop.get("shape")
        if shape is not None:
            if not isinstance(shape, list) or not all(
                d is None or (isinstance(d, int) and not isinstance(d, bool) and d >= 0)
                for d in shape
            ):
                self.error(
                    f"{ptr}/shape",
                    "SCHEMA_FIELD",
                    "shape must be a list of non-negative integers or null",
                )
                return None
            shape = tuple(shape)
        dims = prop.get("dimensionNames")
        if dims is not None:
            if not isinstance(dims, list) or not all(isinstance(d, str) for d in dims):
                self.error(
                    f"{ptr}/dimensionNames",
                    "SCHEMA_FIELD",
                    "dimensionNames must be a list of strings",
                )
                return None
            if shape is not None and len(dims) != len(shape):
                self.error(
                    f"{ptr}/dimensionNames",
                    "SCHEMA_FIELD",
                    f"{len(dims)} dimension names for {len(shape)} dimensions",
                )
                return None
            dims = tuple(dims)
        return NDArrayType(dtype, shape, dims, version)

    def json_schema_fields(self, body: dict[str, Any], ptr: str) -> list[Field]:
        props = body.get("properties")
        if not isinstance(props, dict):
            self.error(ptr, "SCHEMA_BODY", "the JSON Schema body needs 'properties'")
            return []
        required = body.get("required", [])
        if not isinstance(required, list) or not all(
            isinstance(r, str) for r in required
        ):
            self.error(
                f"{ptr}/required", "SCHEMA_BODY", "'required' must be a list of strings"
            )
            required = []
        for i, name in enumerate(required):
            if name not in props:
                self.error(
                    f"{ptr}/required/{i}",
                    "SCHEMA_BODY",
                    f"required field {name!r} is not a property",
                )
        fields = []
        for name, prop in props.items():
            fptr = f"{ptr}/properties/{escape_pointer(name)}"
            if name.startswith("$"):
                self.error(
                    fptr,
                    "SCHEMA_PROPERTY_RESERVED",
                    f"property name {name!r} starts with '$': in a record, keys "
                    "starting with '$' are reserved for the data model and "
                    'protocol (atproto Data Model spec, "Data Types"), and '
                    "readers may ignore them",
                )
                continue
            t = self.json_type(prop, fptr)
            if t is not None:
                desc = prop.get("description") if isinstance(prop, dict) else None
                # "type": [T, "null"] (JSON Schema draft-07 § 6.1.1): the value may be
                # None, so the field is typed `T | None` like an optional one (the
                # sample codec has one None state).
                kinds = prop.get("type") if isinstance(prop, dict) else None
                nullable = isinstance(kinds, list) and "null" in kinds
                fields.append(
                    Field(
                        name,
                        t,
                        name in required and not nullable,
                        nullable,
                        desc if isinstance(desc, str) else None,
                        self.doc.span(fptr),
                    )
                )
        return fields

    # -- field-list form ------------------------------------------------------------
    def list_type(self, ft: Any, ptr: str) -> SampleFieldType | None:
        if not isinstance(ft, dict):
            self.error(ptr, "SCHEMA_FIELD", "a field type must be a JSON object")
            return None
        tag = ft.get("$type") or ft.get("kind") or ""
        kind = tag.rsplit("#", 1)[-1] if isinstance(tag, str) else ""
        if kind == "primitive":
            prim = ft.get("primitive")
            mapping: dict[str, SampleFieldType] = {
                "str": StringType(),
                "int": IntegerType(),
                "float": FloatType(),
                "bool": BooleanType(),
                "bytes": BytesType(),
            }
            if prim not in mapping:
                self.error(
                    f"{ptr}/primitive", "SCHEMA_FIELD", f"unknown primitive {prim!r}"
                )
                return None
            return mapping[prim]
        if kind == "ndarray":
            return self.ndarray_annotations(
                ft,
                ptr,
                "1.1.0"
                if any(k in ft for k in ("shape", "dimensionNames"))
                else "1.0.0",
            )
        if kind == "array":
            inner = self.list_type(ft.get("items"), f"{ptr}/items")
            return ArrayType(inner) if inner is not None else None
        if kind == "structured":
            return NDArrayType(format="structuredBytes")
        if kind in ("sparse", "arrow_tensor", "safetensors", "dataframe"):
            return NDArrayType(format=kind)
        if kind == "ref":
            self.error(
                ptr, "SCHEMA_UNSUPPORTED", f"field type {kind!r} is not supported yet"
            )
            return None
        self.error(ptr, "SCHEMA_FIELD", f"unknown field type {tag!r}")
        return None

    def list_fields(self, fields: Any, ptr: str) -> list[Field]:
        if not isinstance(fields, list):
            self.error(ptr, "SCHEMA_BODY", "'fields' must be a list")
            return []
        out = []
        for i, f in enumerate(fields):
            fptr = f"{ptr}/{i}"
            if not isinstance(f, dict) or not isinstance(f.get("name"), str):
                self.error(fptr, "SCHEMA_FIELD", "a field needs a string 'name'")
                continue
            if f["name"].startswith("$"):
                self.error(
                    f"{fptr}/name",
                    "SCHEMA_PROPERTY_RESERVED",
                    f"field name {f['name']!r} starts with '$': keys starting with "
                    "'$' are reserved for the data model and protocol (atproto "
                    'Data Model spec, "Data Types")',
                )
                continue
            key = "fieldType" if "fieldType" in f else "type"
            t = self.list_type(f.get(key), f"{fptr}/{key}")
            if t is not None:
                desc = f.get("description")
                out.append(
                    Field(
                        f["name"],
                        t,
                        not f.get("optional", False),
                        False,
                        desc if isinstance(desc, str) else None,
                        self.doc.span(fptr),
                    )
                )
        return out


MAX_NAME_LENGTH = 100
"""Longest schema name and version, in characters: the ``maxLength`` of ``name``
and ``version`` in the Lexicon ``science.alt.dataset.schema`` (this repository's
``lexicons/``; both are ASCII here, so characters are bytes). A longer one is
``NAME_TOO_LONG``."""


def _names_fit(p: _Parser, base: str, name: str, version: str) -> bool:
    """Report ``NAME_TOO_LONG`` when ``name`` or ``version`` is longer than
    :data:`MAX_NAME_LENGTH`, or the module name they make
    (:func:`~atdata_gen.naming.sample_module_stem`) is longer than
    :data:`~atdata_gen.naming.MAX_MODULE_NAME` (it becomes a file name: 255 bytes
    at most)."""
    for key, text in (("name", name), ("version", version)):
        if len(text) > MAX_NAME_LENGTH:
            p.error(
                f"{base}/{key}",
                "NAME_TOO_LONG",
                f"schema {key} is {len(text)} characters long; the Lexicon "
                f"science.alt.dataset.schema allows at most {MAX_NAME_LENGTH}",
            )
            return False
    stem = naming.sample_module_stem(name, version)
    if len(stem) > naming.MAX_MODULE_NAME:
        p.error(
            f"{base}/version",
            "NAME_TOO_LONG",
            f"the module name of this schema version ({stem[:24]}…) would be "
            f"{len(stem)} characters long, more than the {naming.MAX_MODULE_NAME} "
            "a file name leaves room for; shorten the name or the version",
        )
        return False
    return True


def parse_schema_record(doc: SourceDoc, reporter: Reporter) -> SampleSchema | None:
    """Parse one schema record document; report problems (rules ``SCHEMA_*``) and
    return ``None`` when the record cannot be compiled."""
    p = _Parser(doc, reporter)
    value, base, uri, cid = unwrap_record(doc.value)
    if not isinstance(value, dict):
        p.error(base, "SCHEMA_BODY", "a schema record must be a JSON object")
        return None
    name, version = value.get("name"), value.get("version", "1.0.0")
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        p.error(
            f"{base}/name" if "name" in value else base,
            "SCHEMA_NAME",
            f"schema name must be an identifier (dots allowed), not {name!r}",
        )
        return None
    if not isinstance(version, str) or not _SEMVER_RE.fullmatch(version):
        p.error(
            f"{base}/version",
            "SCHEMA_VERSION",
            f"version {version!r} is not a semantic version (semver.org)",
        )
        return None
    if not _names_fit(p, base, name, version):
        return None
    for key in ("$atdataSchemaVersion", "atdataSchemaVersion"):
        schema_version = value.get(key, 1)
        if schema_version != 1 or isinstance(schema_version, bool):
            p.error(
                f"{base}/{escape_pointer(key)}",
                "SCHEMA_RECORD_VERSION",
                f"schema record format version {schema_version!r} is not supported "
                "(this compiler reads version 1)",
            )
            return None
    formats: tuple[tuple[str, str], ...] = ()
    form = "flat"
    if "schema" in value:
        body = value["schema"]
        if not isinstance(body, dict):
            p.error(f"{base}/schema", "SCHEMA_BODY", "'schema' must be an object")
            return None
        if value.get("schemaType", "jsonSchema") != "jsonSchema":
            p.error(
                f"{base}/schemaType",
                "SCHEMA_UNSUPPORTED",
                f"schemaType {value.get('schemaType')!r} is not supported",
            )
            return None
        if "content" in body or "draft" in body:  # atdata-lexicon 0.4.x envelope
            form = "envelope"
            draft = body.get("draft")
            if draft != "draft-07":
                p.error(
                    f"{base}/schema/draft" if "draft" in body else f"{base}/schema",
                    "SCHEMA_UNSUPPORTED",
                    f"JSON Schema draft {draft!r} is not supported (the envelope's "
                    "'draft' must be 'draft-07')",
                )
                return None
            content = body.get("content")
            if not isinstance(content, dict):
                p.error(
                    f"{base}/schema/content" if "content" in body else f"{base}/schema",
                    "SCHEMA_BODY",
                    "the envelope's 'content' must be a JSON Schema object",
                )
                return None
            fields = p.json_schema_fields(content, f"{base}/schema/content")
        elif isinstance(body.get("schemaBody"), dict):  # older nested form
            fields = p.json_schema_fields(
                body["schemaBody"], f"{base}/schema/schemaBody"
            )
        else:
            fields = p.json_schema_fields(body, f"{base}/schema")
        afv = body.get("arrayFormatVersions", {})
        if isinstance(afv, dict):
            formats = tuple(
                (k, v)
                for k, v in afv.items()
                if isinstance(k, str) and isinstance(v, str)
            )
    elif "fields" in value:
        form = "fields"
        fields = p.list_fields(value["fields"], f"{base}/fields")
    else:
        p.error(base, "SCHEMA_BODY", "a schema record needs 'schema' or 'fields'")
        return None
    if not p.ok:
        return None
    if not fields:
        p.error(base, "SCHEMA_BODY", "a sample schema needs at least one field")
        return None
    desc = value.get("description")
    metadata = value.get("metadata")
    return SampleSchema(
        name,
        version,
        desc if isinstance(desc, str) else None,
        tuple(fields),
        formats,
        Origin(doc.path, doc.sha256),
        uri,
        cid,
        doc.span(f"{base}/name"),
        json.dumps(metadata, ensure_ascii=False)
        if isinstance(metadata, dict)
        else None,
        json.dumps(value, ensure_ascii=False),
        form,
    )
