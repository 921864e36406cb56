"""Index rows → the JSON views the AppView serves (``science.alt.dataset.defs``).

Each ``*_view`` function takes one asyncpg row selected with the matching column
list below (``ENTRY_COLUMNS`` …: SQL text with fixed table aliases, constants only)
and returns a ``dict`` in the JSON data model, keys in the order atdata-app 0.4.0b1
serves them (its ``row_to_entry``/``row_to_schema``/``row_to_lens``/
``row_to_label``), then the fields only we serve. Optional fields are left out when
empty, as atdata-app does. ``jsonb`` columns are selected as text (``::text``) and
decoded here with orjson, so the views do not depend on the pool's type codecs.

Shapes (wire names; ``?`` = may be absent):

- entry: ``uri, cid, did, name, schemaRef, storage, createdAt, description?,
  tags?, license?, size?{samples?, bytes?, shards?}, handle?, indexedAt,
  storageKind, shardCount, checksums, schemaName?, schemaVersion?``;
- schema: ``uri, cid, did, name, version, schemaType, schema, createdAt,
  description?, arrayFormat?, arrayFormatLabel?, dtype?, shape?, dimensionNames?,
  handle?, indexedAt, form, fieldCount``;
- lens: ``uri, cid, did, name, sourceSchema, targetSchema, getterCode,
  putterCode, createdAt, description?, language?, handle?, indexedAt,
  verifications``;
- label: ``uri, cid, did, name, datasetUri, createdAt, version?, description?,
  handle?``.

``createdAt``/``indexedAt`` are RFC 3339 UTC (``2026-01-02T03:04:05.123Z``) from
the parsed timestamps; a record whose ``createdAt`` did not parse shows its
``indexedAt``.
"""

from __future__ import annotations

import datetime as _dt
from typing import Any, Final

import orjson
from atdata_runtime.lex.formats import is_handle

__all__ = [
    "ARRAY_FORMAT_LABELS",
    "ENTRY_BYTES",
    "ENTRY_COLUMNS",
    "ENTRY_JOINS",
    "LABEL_COLUMNS",
    "LENS_BYTES",
    "LENS_COLUMNS",
    "LENS_JOINS",
    "SCHEMA_BYTES",
    "SCHEMA_COLUMNS",
    "SCHEMA_JOINS",
    "entry_view",
    "iso",
    "label_view",
    "lens_view",
    "schema_view",
]

ARRAY_FORMAT_LABELS: Final = {
    "numpyBytes": "NumPy ndarray",
    "ndarrayBytes": "NumPy ndarray",
    "parquetBytes": "Parquet",
    "sparseBytes": "Sparse matrix (CSR/CSC/COO)",
    "structuredBytes": "NumPy structured array",
    "arrowTensor": "Arrow tensor IPC",
    "safetensors": "Safetensors",
}
"""Display names of the array format tokens (atdata-lexicon's ``arrayFormat``)."""

ENTRY_COLUMNS: Final = (
    "e.did, e.rkey, e.uri, e.cid, e.name, e.description, e.tags, e.license, "
    "e.schema_ref, e.storage::text AS storage, e.storage_kind, e.shard_count, "
    "e.checksums, e.size_samples, e.size_bytes, e.size_shards, e.created_at, "
    "e.indexed_at, e.first_indexed_at, acc.verified_handle AS handle, "
    "sch.name AS schema_name, sch.version AS schema_version"
)
"""Columns of :func:`entry_view` (and ``first_indexed_at``, the key of "recent"
pages); needs ``appview_entries e`` and :data:`ENTRY_JOINS`."""

ENTRY_JOINS: Final = (
    "LEFT JOIN appview_accounts acc ON acc.did = e.did "
    "LEFT JOIN appview_schemas sch ON sch.uri = e.schema_ref AND NOT EXISTS ("
    "SELECT 1 FROM appview_accounts sa WHERE sa.did = sch.did AND NOT sa.active)"
)
"""The entry's account (its verified handle) and its schema (name and version),
unless the schema's publisher is inactive: a deactivated account's records show
through no other record."""

ENTRY_BYTES: Final = (
    "octet_length({q}.storage) + coalesce(octet_length({q}.description), 0) + 2048"
)
"""About the bytes of one entry view, from the :data:`ENTRY_COLUMNS` of a
subquery ``{q}`` (the storage and description, which may be large, and a bound of
the rest: name, tags, URIs): what a page's byte budget counts."""

SCHEMA_COLUMNS: Final = (
    "s.did, s.rkey, s.uri, s.cid, s.name, s.version, s.schema_type, "
    "(s.record->'schema')::text AS schema_body, s.description, s.created_at, "
    "s.indexed_at, s.first_indexed_at, s.form, s.field_count, "
    "acc.verified_handle AS handle"
)
"""Columns of :func:`schema_view` (and ``first_indexed_at``); needs
``appview_schemas s`` and :data:`SCHEMA_JOINS`."""

SCHEMA_BYTES: Final = (
    "coalesce(octet_length({q}.schema_body), 0) "
    "+ coalesce(octet_length({q}.description), 0) + 2048"
)
"""About the bytes of one schema view (as :data:`ENTRY_BYTES`)."""

SCHEMA_JOINS: Final = "LEFT JOIN appview_accounts acc ON acc.did = s.did"

LENS_COLUMNS: Final = (
    "l.did, l.rkey, l.uri, l.cid, l.name, l.source_schema, l.target_schema, "
    "(l.record->'getterCode')::text AS getter_code, "
    "(l.record->'putterCode')::text AS putter_code, l.description, l.language, "
    "l.created_at, l.indexed_at, l.first_indexed_at, acc.verified_handle AS handle, "
    "(SELECT count(*) FROM appview_lens_verifications v WHERE v.lens_uri = l.uri "
    "AND NOT EXISTS (SELECT 1 FROM appview_accounts va WHERE va.did = v.did "
    "AND NOT va.active)) AS verifications"
)
"""Columns of :func:`lens_view` (and ``first_indexed_at``; ``verifications``
counts those of active accounts); needs ``appview_lenses l`` and
:data:`LENS_JOINS`."""

LENS_BYTES: Final = (
    "coalesce(octet_length({q}.getter_code), 0) "
    "+ coalesce(octet_length({q}.putter_code), 0) "
    "+ coalesce(octet_length({q}.description), 0) + 2048"
)
"""About the bytes of one lens view (as :data:`ENTRY_BYTES`)."""

LENS_JOINS: Final = "LEFT JOIN appview_accounts acc ON acc.did = l.did"

LABEL_COLUMNS: Final = (
    "b.did, b.rkey, b.uri, b.cid, b.name, b.dataset_uri, b.version, b.description, "
    "b.created_at, b.indexed_at, acc.verified_handle AS handle"
)
"""Columns of :func:`label_view`; needs ``appview_labels b`` and
``LEFT JOIN appview_accounts acc ON acc.did = b.did``."""


def iso(value: _dt.datetime) -> str:
    """RFC 3339 UTC text of a timestamp: ``YYYY-MM-DDTHH:MM:SS[.fff|.ffffff]Z``
    (milliseconds when the microseconds are whole milliseconds)."""
    if value.tzinfo is not None:
        value = value.astimezone(_dt.UTC)
    text = value.strftime("%Y-%m-%dT%H:%M:%S")
    us = value.microsecond
    if us:
        text += f".{us // 1000:03d}" if us % 1000 == 0 else f".{us:06d}"
    return text + "Z"


def _created(row: Any) -> str:
    created = row["created_at"]
    return iso(created if created is not None else row["indexed_at"])


def _handle(view: dict[str, Any], handle: str | None) -> None:
    # A handle from an #identity event that is not a valid handle is not shown.
    if handle and is_handle(handle):
        view["handle"] = handle


def entry_view(row: Any) -> dict[str, Any]:
    """The ``defs#entryView`` of an ``appview_entries`` row (:data:`ENTRY_COLUMNS`)."""
    view: dict[str, Any] = {
        "uri": row["uri"],
        "cid": row["cid"],
        "did": row["did"],
        "name": row["name"],
        "schemaRef": row["schema_ref"],
        "storage": orjson.loads(row["storage"]),
        "createdAt": _created(row),
    }
    if row["description"]:
        view["description"] = row["description"]
    tags = row["tags"]
    if tags:
        view["tags"] = list(tags)
    if row["license"]:
        view["license"] = row["license"]
    size: dict[str, int] = {}
    if row["size_samples"] is not None:
        size["samples"] = row["size_samples"]
    if row["size_bytes"] is not None:
        size["bytes"] = row["size_bytes"]
    if row["size_shards"] is not None:
        size["shards"] = row["size_shards"]
    if size:
        view["size"] = size
    _handle(view, row["handle"])
    view["indexedAt"] = iso(row["indexed_at"])
    view["storageKind"] = row["storage_kind"]
    view["shardCount"] = row["shard_count"]
    view["checksums"] = row["checksums"]
    if row["schema_name"] is not None:
        view["schemaName"] = row["schema_name"]
        view["schemaVersion"] = row["schema_version"]
    return view


def schema_view(row: Any) -> dict[str, Any]:
    """The ``defs#schemaView`` of an ``appview_schemas`` row (:data:`SCHEMA_COLUMNS`):
    ``schema`` is the record's ``schema`` as published (either form)."""
    body = orjson.loads(row["schema_body"]) if row["schema_body"] else {}
    if not isinstance(body, dict):
        body = {}
    view: dict[str, Any] = {
        "uri": row["uri"],
        "cid": row["cid"],
        "did": row["did"],
        "name": row["name"],
        "version": row["version"],
        "schemaType": row["schema_type"],
        "schema": body,
        "createdAt": _created(row),
    }
    if row["description"]:
        view["description"] = row["description"]
    fmt = body.get("arrayFormat")
    if isinstance(fmt, str) and fmt and len(fmt) <= 100:
        view["arrayFormat"] = fmt
        view["arrayFormatLabel"] = ARRAY_FORMAT_LABELS.get(fmt, fmt)
    for key in ("dtype", "shape", "dimensionNames"):
        value = body.get(key)
        if value:
            view[key] = value
    _handle(view, row["handle"])
    view["indexedAt"] = iso(row["indexed_at"])
    view["form"] = row["form"]
    view["fieldCount"] = row["field_count"]
    return view


def lens_view(row: Any) -> dict[str, Any]:
    """The ``defs#lensView`` of an ``appview_lenses`` row (:data:`LENS_COLUMNS`)."""
    view: dict[str, Any] = {
        "uri": row["uri"],
        "cid": row["cid"],
        "did": row["did"],
        "name": row["name"],
        "sourceSchema": row["source_schema"],
        "targetSchema": row["target_schema"],
        "getterCode": orjson.loads(row["getter_code"] or "{}"),
        "putterCode": orjson.loads(row["putter_code"] or "{}"),
        "createdAt": _created(row),
    }
    if row["description"]:
        view["description"] = row["description"]
    if row["language"]:
        view["language"] = row["language"]
    _handle(view, row["handle"])
    view["indexedAt"] = iso(row["indexed_at"])
    view["verifications"] = row["verifications"]
    return view


def label_view(row: Any) -> dict[str, Any]:
    """The ``defs#labelView`` of an ``appview_labels`` row (:data:`LABEL_COLUMNS`)."""
    view: dict[str, Any] = {
        "uri": row["uri"],
        "cid": row["cid"],
        "did": row["did"],
        "name": row["name"],
        "datasetUri": row["dataset_uri"],
        "createdAt": _created(row),
    }
    if row["version"]:
        view["version"] = row["version"]
    if row["description"]:
        view["description"] = row["description"]
    _handle(view, row["handle"])
    return view
