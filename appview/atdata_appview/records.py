"""Record normalizer: one ``science.alt.dataset.*`` record → one row of the index
(:mod:`.schema`), or a :class:`Rejection` with a rule ID and a JSON pointer.

The indexer (live log rows) and the backfiller (repository snapshots) call
:func:`normalize` for every record; it is pure (no I/O) and never raises for a
hostile record::

    out = normalize(collection, did, rkey, cid, record, rev=rev, seq=seq)
    if isinstance(out, Rejection):
        ...  # appview_dead_letters: out.rule, out.pointer, out.message
    else:
        ...  # INSERT INTO {out.table} ({out.columns()}) VALUES (out.values())

``record`` is the record value in the atproto JSON data model (as
``ingest_events.record`` holds it: CIDs as ``{"$link": …}``, bytes as
``{"$bytes": …}``, blobs as ``{"$type": "blob", …}``), as a mapping or as its JSON
text (``str``/``bytes``; then kept as given for the ``record`` column).

Checks, in order (the first failure is the answer; rule IDs in :data:`RULES`):

1. the collection has a table (``AV_UNKNOWN_COLLECTION``), the DID, record key and
   CID are well formed (``AV_BAD_DID``, ``AV_BAD_RKEY``, ``AV_BAD_CID``; atproto
   "DID", "Record Key" and data model "Link and CID Formats" specs);
2. the record is storable: a JSON object (``AV_INVALID_RECORD``), at most
   :data:`MAX_RECORD_BYTES` of JSON (``AV_RECORD_TOO_LARGE``), nested at most
   :data:`MAX_DEPTH` deep (``AV_RECORD_TOO_DEEP``), with no U+0000 in any string
   or key (``AV_RECORD_NUL``: PostgreSQL ``text`` and ``jsonb`` cannot hold it; the
   ingestion service stores such a record with U+FFFD and ``valid = 'RECORD_NUL'``,
   which the caller passes as ``log_valid`` so both paths refuse it alike), and
   encodable as JSON (``AV_RECORD_ENCODING``: integers beyond 64 bits, lone
   surrogates);
3. ``$type`` is the collection's NSID (``AV_TYPE_MISMATCH``; data model spec,
   "``$type``");
4. the generated model of the collection (:mod:`atdata_runtime.lexicons`)
   accepts it (``AV_INVALID_RECORD``, pointer of the first problem);
5. per record type: the schema ``version`` is semver 2.0.0 with components that
   fit PostgreSQL ``integer`` (``AV_BAD_VERSION``), a schema record key that
   names a version names this one (``AV_RKEY_MISMATCH``), the schema body
   compiles with atdata-gen's front end (``AV_SCHEMA_BODY``), references are
   record AT-URIs of the right collection (``AV_BAD_REF``), the storage is one we
   know (``AV_UNKNOWN_STORAGE``), sizes fit their columns (``AV_INT_RANGE``).

Schema record keys: the Lexicon's key type is ``any``. atdata 0.7.0b1 publishes
schemas with ``createRecord`` and no key (its ``SchemaPublisher.publish``), so the
PDS assigns a TID; atdata-gen's publisher uses ``{name}:{version}``
(:func:`atdata_runtime.atmosphere.records.schema_rkey`). The ``{NSID}@{semver}``
keys that atdata-lexicon's description and atdata-app's ``resolveSchema`` assume
cannot exist: ``@`` is not a record-key character. So a key is accepted unless it
*claims* a version (``<text>:<semver>``) and is not this record's
``schema_rkey(name, version)``. Record keys of the ``tid`` collections are not
required to be TIDs (other writers choose keys; the syntax is checked).

Entries: atdata 0.7.0b1 writes ``metadata`` as a JSON object
(``DatasetMetadata.to_record``) where both Lexicons say msgpack ``bytes``; such an
object is accepted as published (the rest of the record is validated).

Hostile text is kept as data (pages escape it); only U+0000 is refused.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import logging
import operator
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, Final, TypeAlias, cast

import orjson
from atdata_gen.dynamic import SchemaCompileError, compile_schema_record
from atdata_runtime.atmosphere.records import schema_rkey
from atdata_runtime.lex import LexRecord
from atdata_runtime.lex.formats import (
    is_cid,
    is_did,
    is_handle,
    is_nsid,
    is_record_key,
)
from atdata_runtime.lex.registry import record_model
from pydantic import ValidationError

from .schema import RECORD_TABLES

__all__ = [
    "MAX_DEPTH",
    "MAX_RECORD_BYTES",
    "MAX_TAGS",
    "RULES",
    "EntryRow",
    "IndexedRow",
    "LabelRow",
    "LensRow",
    "LensVerificationRow",
    "Rejection",
    "SchemaRow",
    "dead_letter_json",
    "normalize",
    "parse_semver",
    "schema_cache_clear",
    "schema_cache_info",
]

log = logging.getLogger(__name__)

PACKAGE: Final = "atdata_runtime.lexicons"
"""The generated package holding the ``science.alt.dataset.*`` record models."""

SCHEMA: Final = "science.alt.dataset.schema"
ENTRY: Final = "science.alt.dataset.entry"
LENS: Final = "science.alt.dataset.lens"
LABEL: Final = "science.alt.dataset.label"
LENS_VERIFICATION: Final = "science.alt.dataset.lensVerification"

MAX_RECORD_BYTES: Final = 1024 * 1024
"""Largest record accepted, as UTF-8 JSON text (bytes): 1 MiB. (A PDS refuses
larger records; the firehose frame cap is 3 MiB.)"""

MAX_DEPTH: Final = 64
"""Deepest nesting of objects and arrays accepted (the record itself is depth 1).
atdata's records are at most ~8 deep; free-form fields (``contentMetadata``, the
schema body) are where depth could hide."""

MAX_TAGS: Final = 30
"""Most tags kept per entry (the Lexicon's ``maxLength`` of ``tags``)."""

MAX_MESSAGE: Final = 1000
"""Longest :attr:`Rejection.message` (characters)."""

_INT64_MAX: Final = 2**63 - 1
_INT32_MAX: Final = 2**31 - 1

RULES: Final[dict[str, str]] = {
    "AV_UNKNOWN_COLLECTION": "the collection is not a science.alt.dataset.* record "
    "type the AppView indexes",
    "AV_BAD_DID": "the repository DID is not a valid DID",
    "AV_BAD_RKEY": "the record key is not a valid record key (1-512 of "
    "A-Za-z0-9 . - _ : ~, not . or ..)",
    "AV_BAD_CID": "the record CID is not a valid CID string",
    "AV_RECORD_TOO_LARGE": f"the record is over {MAX_RECORD_BYTES} bytes of JSON",
    "AV_RECORD_TOO_DEEP": f"the record nests objects/arrays over {MAX_DEPTH} deep",
    "AV_RECORD_NUL": "a string or key holds U+0000, which PostgreSQL text and jsonb "
    "cannot store",
    "AV_RECORD_ENCODING": "the record is not representable as JSON (integer beyond "
    "64 bits, lone surrogate, non-JSON value)",
    "AV_TYPE_MISMATCH": "the record's $type is missing or is not its collection's NSID",
    "AV_INVALID_RECORD": "the record is not a JSON object or fails its generated "
    "science.alt.dataset.* model (pointer: first problem)",
    "AV_BAD_VERSION": "the schema version is not semver 2.0.0, or a component "
    "exceeds 2^31-1",
    "AV_RKEY_MISMATCH": "the schema record key names another name/version than the "
    "record ({name}:{version} keys must match; TIDs and other keys are accepted)",
    "AV_SCHEMA_BODY": "the schema body does not compile with atdata-gen's front end "
    "(the compiler's rule and pointer are in the message)",
    "AV_BAD_REF": "a reference (schemaRef, metadataSchemaRef, sourceSchema, "
    "targetSchema, datasetUri, lens) is not a record AT-URI of the right collection",
    "AV_UNKNOWN_STORAGE": "the entry's storage $type is none of storageHttp, "
    "storageS3, storageBlobs, storageExternal",
    "AV_INT_RANGE": "a size does not fit its column (bigint; shards: integer)",
}
"""Rule ID → one-line summary of every rejection :func:`normalize` can give."""


# -- rejections ---------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class Rejection:
    """A record refused by :func:`normalize`: ``rule`` (a key of :data:`RULES`),
    ``pointer`` (RFC 6901 JSON pointer into the record; ``""`` = the whole record)
    and ``message`` (why, at most :data:`MAX_MESSAGE` characters; may quote record
    text: escape it when rendering). Both are safe for a ``text`` column (no
    U+0000, no lone surrogates)."""

    rule: str
    pointer: str
    message: str


def _storable(text: str) -> str:
    """``text`` fit for a PostgreSQL ``text`` column: U+0000 → U+FFFD, lone
    surrogates → ``?`` (a pointer can quote a hostile key)."""
    if "\x00" in text:
        text = text.replace("\x00", "\ufffd")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "replace").decode("utf-8")
    return text


def _reject(rule: str, pointer: str, message: str) -> Rejection:
    if len(message) > MAX_MESSAGE:
        message = message[: MAX_MESSAGE - 1] + "…"
    return Rejection(rule, _storable(pointer), _storable(message))


# -- rows ---------------------------------------------------------------------------

_ATTRS: dict[type[Any], tuple[tuple[str, ...], Callable[[Any], tuple[Any, ...]]]] = {}


@dataclasses.dataclass(frozen=True, slots=True)
class _Row:
    """Columns every record table has (:mod:`.schema`, ``_COMMON``), in table
    order, without ``indexed_at`` (defaulted by PostgreSQL).

    ``uri``: ``at://{did}/{collection}/{rkey}``; ``rev``: the commit revision
    (TID), ``None`` when unknown; ``seq``: the ingestion-log seq, ``None`` for a
    backfill; ``record``: the record value as JSON text (``str``, for ``jsonb``);
    ``created_at``: ``createdAt`` parsed, timezone-aware UTC, ``None`` when
    unparsable or out of range."""

    table: ClassVar[str] = ""
    collection: ClassVar[str] = ""

    did: str
    rkey: str
    uri: str
    cid: str
    rev: str | None
    seq: int | None
    record: str
    created_at: _dt.datetime | None

    @classmethod
    def columns(cls) -> tuple[str, ...]:
        """The table's column names this row fills, in the order of
        :meth:`values` (every column but ``indexed_at`` and the generated
        ``search``)."""
        return _attrs(cls)[0]

    def values(self) -> tuple[Any, ...]:
        """The column values in :meth:`columns` order, ready for asyncpg (``str``
        JSON text for ``jsonb``, ``list[str]`` for ``text[]``, aware
        ``datetime`` for ``timestamptz``)."""
        return _attrs(type(self))[1](self)


def _attrs(cls: type[Any]) -> tuple[tuple[str, ...], Callable[[Any], tuple[Any, ...]]]:
    got = _ATTRS.get(cls)
    if got is None:
        names = tuple(f.name for f in dataclasses.fields(cls))
        getter = operator.attrgetter(*names)
        got = (names, cast("Callable[[Any], tuple[Any, ...]]", getter))
        _ATTRS[cls] = got
    return got


@dataclasses.dataclass(frozen=True, slots=True)
class SchemaRow(_Row):
    """A row of ``appview_schemas``. ``version`` as published; ``major``/
    ``minor``/``patch`` its numbers, ``prerelease`` its pre-release ('' when none;
    build metadata is not kept apart); ``form``: ``flat`` (atdata 0.7) or
    ``envelope`` (atdata-lexicon 0.4); ``body``: the JSON Schema object as JSON
    text (the envelope's ``content``; for the flat form the ``schema`` object
    without ``$type`` and ``arrayFormatVersions``); ``field_count``: the sample
    fields the compiler found."""

    table: ClassVar[str] = "appview_schemas"
    collection: ClassVar[str] = SCHEMA

    name: str
    version: str
    major: int
    minor: int
    patch: int
    prerelease: str
    schema_type: str
    form: str
    body: str
    description: str | None
    field_count: int


@dataclasses.dataclass(frozen=True, slots=True)
class EntryRow(_Row):
    """A row of ``appview_entries``. ``tags``: de-duplicated in order, empty
    ones dropped, at most :data:`MAX_TAGS`; ``storage``: the storage object as
    published (JSON text); ``storage_kind``: ``http`` | ``s3`` | ``blobs`` |
    ``external``; ``shard_count``: shards (URLs, keys, blobs) listed;
    ``checksums``: ``all`` | ``some`` | ``none`` of them carry a real checksum
    (not atdata's ``{"algorithm": "none", "digest": ""}`` placeholder; external
    URLs never do);
    ``size_*``: the record's ``size`` (``None`` when absent)."""

    table: ClassVar[str] = "appview_entries"
    collection: ClassVar[str] = ENTRY

    name: str
    description: str | None
    tags: list[str]
    license: str | None
    schema_ref: str
    storage: str
    storage_kind: str
    shard_count: int
    checksums: str
    size_samples: int | None
    size_bytes: int | None
    size_shards: int | None


@dataclasses.dataclass(frozen=True, slots=True)
class LensRow(_Row):
    """A row of ``appview_lenses``. ``language``: the record's (deprecated)
    top-level ``language``, else the getter's ``codeReference.language``."""

    table: ClassVar[str] = "appview_lenses"
    collection: ClassVar[str] = LENS

    name: str
    source_schema: str
    target_schema: str
    language: str | None
    description: str | None


@dataclasses.dataclass(frozen=True, slots=True)
class LabelRow(_Row):
    """A row of ``appview_labels``."""

    table: ClassVar[str] = "appview_labels"
    collection: ClassVar[str] = LABEL

    name: str
    dataset_uri: str
    version: str | None
    description: str | None


@dataclasses.dataclass(frozen=True, slots=True)
class LensVerificationRow(_Row):
    """A row of ``appview_lens_verifications``. ``method``: the
    ``verificationMethod`` as published (its Lexicon's known values are the short
    names ``codeReview``, ``formalProof``, ``signedHash``, ``automatedTest``, as
    atdata 0.7 writes them)."""

    table: ClassVar[str] = "appview_lens_verifications"
    collection: ClassVar[str] = LENS_VERIFICATION

    lens_uri: str
    lens_commit: str
    method: str


IndexedRow: TypeAlias = SchemaRow | EntryRow | LensRow | LabelRow | LensVerificationRow
"""A row of one of the record tables (:data:`.schema.RECORD_TABLES`)."""

for _cls in (SchemaRow, EntryRow, LensRow, LabelRow, LensVerificationRow):
    assert RECORD_TABLES[_cls.collection] == _cls.table, _cls


# -- helpers ------------------------------------------------------------------------


def _escape(part: str) -> str:
    return part.replace("~", "~0").replace("/", "~1")


def _join(path: Sequence[str | int]) -> str:
    return "".join("/" + _escape(str(p)) for p in path)


_dumps = orjson.dumps
_loads = orjson.loads


def _json_text(value: Any) -> str:
    return _dumps(value).decode()


def _depth_within(value: Any, limit: int) -> bool:
    """Whether no container in ``value`` is nested deeper than ``limit``."""
    if not isinstance(value, dict | list):
        return True
    stack: list[tuple[Any, int]] = [(value, 1)]
    pop, push = stack.pop, stack.append
    while stack:
        node, depth = pop()
        if depth > limit:
            return False
        children = node.values() if isinstance(node, dict) else node
        for v in children:
            if isinstance(v, dict | list):
                push((v, depth + 1))
    return True


def _too_deep(value: Any, limit: int) -> list[str | int] | None:
    """The path of the first container nested deeper than ``limit`` (the value
    itself is depth 1), else ``None``. Iterative; paths are built only once a
    too-deep container is known to exist."""
    if _depth_within(value, limit):
        return None
    stack: list[tuple[Any, int, tuple[str | int, ...]]] = [(value, 1, ())]
    while stack:
        node, depth, path = stack.pop()
        if depth > limit:
            return list(path)
        if isinstance(node, dict):
            for k, v in node.items():
                if isinstance(v, dict | list):
                    stack.append((v, depth + 1, (*path, k)))
        elif isinstance(node, list):
            for i, v in enumerate(node):
                if isinstance(v, dict | list):
                    stack.append((v, depth + 1, (*path, i)))
    return None


def _too_deep_rejection(path: list[str | int]) -> Rejection:
    return _reject(
        "AV_RECORD_TOO_DEEP",
        _join(path),
        f"record nests objects/arrays over {MAX_DEPTH} deep",
    )


def _find(
    value: Any, bad: Callable[[Any], bool], bad_key: Callable[[Any], bool] | None = None
) -> list[str | int] | None:
    """Path of the first key (``bad_key``, default ``bad``) or leaf (``bad``) that
    is bad (depth-first, in order; a bad key's path ends at that key)."""
    key_check = bad if bad_key is None else bad_key
    stack: list[tuple[Any, tuple[str | int, ...]]] = [(value, ())]
    while stack:
        node, path = stack.pop()
        if isinstance(node, dict):
            items = list(node.items())
            for k, _ in items:
                if key_check(k):
                    return [*path, str(k)]
            stack.extend((v, (*path, k)) for k, v in reversed(items))
        elif isinstance(node, list):
            stack.extend((v, (*path, i)) for i, v in reversed(list(enumerate(node))))
        elif bad(node):
            return list(path)
    return None


def _has_nul(x: Any) -> bool:
    return isinstance(x, str) and "\x00" in x


def _unencodable(x: Any) -> bool:
    if isinstance(x, str):
        try:
            x.encode("utf-8")
        except UnicodeEncodeError:
            return True
        return False
    if isinstance(x, bool) or x is None or isinstance(x, float):
        return False
    if isinstance(x, int):
        return not -(2**63) <= x <= 2**64 - 1
    return True


def _nul_free(value: Any) -> Any:
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, dict):
        return {_nul_free(k): _nul_free(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_nul_free(v) for v in value]
    return value


def dead_letter_json(record: Any) -> str | None:
    """JSON text of a refused ``record`` fit for ``appview_dead_letters.record``
    (``jsonb``): U+0000 replaced by U+FFFD; ``None`` when it is over
    :data:`MAX_RECORD_BYTES`, too deep, or not encodable (keep the rule and
    pointer only). ``record`` as for :func:`normalize`."""
    if isinstance(record, bytes | bytearray | memoryview):
        record = bytes(record)
        if len(record) > MAX_RECORD_BYTES:
            return None
        try:
            record = _loads(record)
        except (orjson.JSONDecodeError, RecursionError):
            return None
    elif isinstance(record, str):
        if len(record) > MAX_RECORD_BYTES:
            return None
        try:
            record = _loads(record)
        except (orjson.JSONDecodeError, RecursionError):
            return None
    try:
        if _too_deep(record, MAX_DEPTH) is not None:
            return None
        text = _json_text(record)
        if "\\u0000" in text:
            text = _json_text(_nul_free(record))
    except (TypeError, RecursionError):  # orjson.JSONEncodeError is a TypeError
        return None
    return None if len(text) > MAX_RECORD_BYTES else text


def _created_at(value: Any) -> _dt.datetime | None:
    if not isinstance(value, str):
        return None
    try:
        t = _dt.datetime.fromisoformat(value)
        if t.tzinfo is None:
            return None
        return t.astimezone(_dt.UTC)
    except (ValueError, OverflowError):
        return None


_SEMVER: Final = re.compile(
    r"(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-((?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)"
    r"(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?"
    r"(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?",
    re.ASCII,
)
"""semver.org 2.0.0's regular expression (§ "Is there a suggested regular
expression"), ASCII digits only."""


def parse_semver(version: str) -> tuple[int, int, int, str] | None:
    """``(major, minor, patch, prerelease)`` of a semver 2.0.0 ``version``
    (prerelease ``''`` when absent; build metadata dropped), or ``None`` when it is
    not one or a number exceeds 2^31-1 (PostgreSQL ``integer``)."""
    m = _SEMVER.fullmatch(version)
    if m is None:
        return None
    parts = m.group(1, 2, 3)
    if any(len(p) > 10 for p in parts):
        return None
    major, minor, patch = (int(p) for p in parts)
    if max(major, minor, patch) > _INT32_MAX:
        return None
    return major, minor, patch, m.group(4) or ""


def _ref_problem(value: str, collection: str) -> str | None:
    """Why ``value`` is not ``at://{DID or handle}/{collection}/{rkey}`` (no query
    or fragment), else ``None``."""
    if not value.startswith("at://"):
        return "is not an AT-URI (at://…)"
    parts = value[5:].split("/")
    if len(parts) != 3:
        return "is not a record AT-URI (at://authority/collection/rkey)"
    authority, coll, rkey = parts
    if not (is_did(authority) or is_handle(authority)):
        return "has an authority that is neither a DID nor a handle"
    if coll != collection:
        if not is_nsid(coll):
            return "has a collection that is not an NSID"
        return f"names a {coll} record, not a {collection} record"
    if not is_record_key(rkey):
        return "has an invalid record key"
    return None


# -- validation with the generated models -------------------------------------------

_MODELS: dict[str, type[LexRecord]] = {}


def _model(collection: str) -> type[LexRecord]:
    model = _MODELS.get(collection)
    if model is None:
        found = record_model(PACKAGE, collection)
        if found is None:  # pragma: no cover - the package is generated with them
            raise LookupError(f"{PACKAGE} has no record model for {collection}")
        model = _MODELS[collection] = found
    return model


def _loc_pointer(loc: Sequence[int | str], data: Any) -> str:
    """JSON pointer of a pydantic error ``loc`` in ``data``: elements that are
    neither a key of the current object nor an index of the current list are
    validator labels (a union member's tag) and are skipped, unless last (the
    name of a missing field)."""
    out: list[str] = []
    node: Any = data
    last = len(loc) - 1
    for i, part in enumerate(loc):
        if isinstance(node, dict) and isinstance(part, str) and part in node:
            out.append(_escape(part))
            node = node[part]
            continue
        if isinstance(node, list) and type(part) is int and 0 <= part < len(node):
            out.append(str(part))
            node = node[part]
            continue
        if i == last:
            out.append(_escape(str(part)))
    return "".join("/" + p for p in out)


def _invalid(exc: ValidationError, data: Any, base: str = "") -> Rejection:
    errors = exc.errors(include_url=False, include_context=False, include_input=False)
    if not errors:  # pragma: no cover - pydantic always lists one
        return _reject("AV_INVALID_RECORD", base, "invalid record")
    first = errors[0]
    pointer = base + _loc_pointer(first["loc"], data)
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return _reject(
        "AV_INVALID_RECORD",
        pointer,
        f"{pointer or '/'}: {first['msg']} [{first['type']}]{more}",
    )


# -- schema bodies: compiled once per body, bounded LRU -----------------------------

SCHEMA_CACHE_SIZE: Final = 4096
"""Schema bodies whose compile result is kept (LRU; key: BLAKE2b of the fields
the compiler reads)."""

_COMPILE_KEYS: Final = (
    "$type",
    "schemaType",
    "schema",
    "$atdataSchemaVersion",
    "atdataSchemaVersion",
)
"""The record fields the body check hands the compiler. ``name`` and ``version``
are replaced by placeholders (:data:`_PLACEHOLDER`): a schema's name is a display
name (atdata-lexicon: "Human-readable display name"; atdata 0.7's
``SchemaPublisher.publish(name=…)`` takes any text), which the compiler's stricter
identifier rule (``SCHEMA_NAME``) would refuse; the version is checked here
(``AV_BAD_VERSION``). So the cache is keyed by the body alone."""
_PLACEHOLDER: Final = {"name": "Sample", "version": "1.0.0"}
_cache: OrderedDict[bytes, int | tuple[str, str]] = OrderedDict()
_cache_lock = threading.Lock()
_cache_stats = {"hits": 0, "misses": 0}


def schema_cache_info() -> dict[str, int]:
    """``{"hits", "misses", "size", "maxsize"}`` of the schema-body compile cache."""
    with _cache_lock:
        return {**_cache_stats, "size": len(_cache), "maxsize": SCHEMA_CACHE_SIZE}


def schema_cache_clear() -> None:
    """Empty the schema-body compile cache and zero its counters."""
    with _cache_lock:
        _cache.clear()
        _cache_stats.update(hits=0, misses=0)


def _compile(record: Mapping[str, Any]) -> int | tuple[str, str]:
    """The field count of the schema record's sample type, or ``(pointer,
    message)`` of the first compiler diagnostic (:func:`compile_schema_record`:
    the front end, naming and the codec specs our loader would build)."""
    subset = {k: record[k] for k in _COMPILE_KEYS if k in record}
    key = hashlib.blake2b(_dumps(subset), digest_size=16).digest()
    subset.update(_PLACEHOLDER)
    with _cache_lock:
        got = _cache.get(key)
        if got is not None:
            _cache.move_to_end(key)
            _cache_stats["hits"] += 1
            return got
        _cache_stats["misses"] += 1
    result: int | tuple[str, str]
    try:
        cls = compile_schema_record(subset)
        result = len(cls.sample_fields)
    except SchemaCompileError as exc:
        if exc.diagnostics:
            d = exc.diagnostics[0]
            pointer = d.span.pointer or ""
            pointer = pointer.removeprefix("/value")
            result = (pointer, f"{d.rule} at {pointer or '/'}: {d.message}")
        else:  # pragma: no cover - the error always carries diagnostics
            result = ("", str(exc))
    except Exception as exc:  # noqa: BLE001 - a hostile body must not stop the fold
        # The compiler's later stages (names, codec specs) refusing a record the
        # front end let through: still a body we cannot compile.
        log.warning("schema body compile failed: %r", exc)
        result = ("/schema", f"compiler error: {type(exc).__name__}: {exc}")
    with _cache_lock:
        _cache[key] = result
        _cache.move_to_end(key)
        while len(_cache) > SCHEMA_CACHE_SIZE:
            _cache.popitem(last=False)
    return result


# -- per-collection rows -------------------------------------------------------------

_Common: TypeAlias = tuple[
    str, str, str, str, str | None, int | None, str, _dt.datetime | None
]
"""The common columns' values, in :class:`_Row` field order."""

_STORAGE_KINDS: Final = {
    "science.alt.dataset.storageHttp": "http",
    "science.alt.dataset.storageS3": "s3",
    "science.alt.dataset.storageBlobs": "blobs",
    "science.alt.dataset.storageExternal": "external",
}


def _common(
    collection: str,
    did: str,
    rkey: str,
    cid: str,
    rev: str | None,
    seq: int | None,
    text: str,
    rec: Mapping[str, Any],
) -> _Common:
    return (
        did,
        rkey,
        f"at://{did}/{collection}/{rkey}",
        cid,
        rev,
        seq,
        text,
        _created_at(rec.get("createdAt")),
    )


def _opt_str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _schema_row(
    common: _Common, rkey: str, rec: Mapping[str, Any]
) -> SchemaRow | Rejection:
    name: str = rec["name"]
    version: str = rec["version"]
    parsed = parse_semver(version)
    if parsed is None:
        return _reject(
            "AV_BAD_VERSION",
            "/version",
            f"version {version!r} is not a semantic version (semver 2.0.0) with "
            "numbers below 2^31",
        )
    if ":" in rkey:
        head, _, tail = rkey.partition(":")
        if head and _SEMVER.fullmatch(tail.replace("~2B", "+")):
            expected = schema_rkey(name, version)
            if rkey != expected:
                return _reject(
                    "AV_RKEY_MISMATCH",
                    "",
                    f"record key {rkey!r} names a schema version, but the record is "
                    f"{name!r} {version}, whose key is {expected!r}",
                )
    compiled = _compile(rec)
    if not isinstance(compiled, int):
        pointer, message = compiled
        return _reject("AV_SCHEMA_BODY", pointer, message)
    body: dict[str, Any] = rec["schema"]
    if "content" in body or "draft" in body:
        form = "envelope"
        content = body["content"]
    else:
        form = "flat"
        inner = body.get("schemaBody")
        source = inner if isinstance(inner, dict) else body
        content = {
            k: v
            for k, v in source.items()
            if k not in ("$type", "arrayFormatVersions", "schemaBody")
        }
    major, minor, patch, pre = parsed
    return SchemaRow(
        *common,
        name=name,
        version=version,
        major=major,
        minor=minor,
        patch=patch,
        prerelease=pre,
        schema_type=rec["schemaType"],
        form=form,
        body=_json_text(content),
        description=_opt_str(rec.get("description")),
        field_count=compiled,
    )


def _tags(value: Any) -> list[str]:
    if not isinstance(value, list):
        return []
    seen: dict[str, None] = {}
    for t in value:
        if isinstance(t, str) and t.strip() and t not in seen:
            seen[t] = None
            if len(seen) >= MAX_TAGS:
                break
    return list(seen)


DIGEST_HEX_LENGTHS: Final = {"sha256": 64, "sha384": 96, "sha512": 128, "blake3": 64}
"""Checksum algorithms whose digest the index counts, and the length of their
hex digest (FIPS 180-4 for SHA-2; BLAKE3's default 256-bit output). A shard
checksum under another algorithm, or with a digest of another shape, counts as
no checksum (the record is kept: the field is free text in the Lexicon)."""


def _real_checksum(shard: Mapping[str, Any]) -> bool:
    """Whether a shard entry carries a checksum one could verify: its
    ``algorithm`` (case and surrounding space ignored) one of
    :data:`DIGEST_HEX_LENGTHS` and its ``digest`` hex of that algorithm's
    length. (atdata 0.7 writes ``{"algorithm": "none", "digest": ""}`` for HTTP
    shards it did not hash; ``{"algorithm": "sha256", "digest": "00"}`` checks
    nothing either.)"""
    checksum = shard.get("checksum")
    if not isinstance(checksum, dict):
        return False
    algorithm, digest = checksum.get("algorithm"), checksum.get("digest")
    if not isinstance(algorithm, str) or not isinstance(digest, str):
        return False
    length = DIGEST_HEX_LENGTHS.get(algorithm.strip().lower())
    return (
        length is not None
        and len(digest) == length
        and all(c in "0123456789abcdefABCDEF" for c in digest)
    )


def _storage(
    storage: Mapping[str, Any],
) -> tuple[str, int, str] | Rejection:
    """``(kind, shard count, checksums)`` of a validated storage union member."""
    kind_type = storage.get("$type")
    kind_nsid = kind_type.removesuffix("#main") if isinstance(kind_type, str) else ""
    kind = _STORAGE_KINDS.get(kind_nsid)
    if kind is None:
        return _reject(
            "AV_UNKNOWN_STORAGE",
            "/storage/$type",
            f"storage $type {kind_type!r} is not one the AppView can describe "
            f"({', '.join(_STORAGE_KINDS)})",
        )
    if kind == "external":
        from atdata_runtime.lexicons.science.alt.dataset.storage_external import (
            StorageExternal,
        )

        try:
            StorageExternal.from_wire(storage)
        except ValidationError as exc:
            return _invalid(exc, storage, "/storage")
        return kind, len(storage["urls"]), "none"
    items: list[Any] = storage["blobs" if kind == "blobs" else "shards"]
    with_sum = sum(1 for s in items if isinstance(s, dict) and _real_checksum(s))
    checksums = "none" if with_sum == 0 else "all" if with_sum == len(items) else "some"
    return kind, len(items), checksums


def _entry_row(common: _Common, rec: Mapping[str, Any]) -> EntryRow | Rejection:
    schema_ref: str = rec["schemaRef"]
    for key in ("schemaRef", "metadataSchemaRef"):
        ref = rec.get(key)
        if isinstance(ref, str):
            why = _ref_problem(ref, SCHEMA)
            if why is not None:
                return _reject("AV_BAD_REF", f"/{key}", f"{key} {ref!r} {why}")
    storage: dict[str, Any] = rec["storage"]
    got = _storage(storage)
    if isinstance(got, Rejection):
        return got
    kind, shard_count, checksums = got
    size = rec.get("size")
    samples = nbytes = shards = None
    if isinstance(size, dict):
        samples, nbytes, shards = (
            size.get("samples"),
            size.get("bytes"),
            size.get("shards"),
        )
        for key, value, top in (
            ("samples", samples, _INT64_MAX),
            ("bytes", nbytes, _INT64_MAX),
            ("shards", shards, _INT32_MAX),
        ):
            if isinstance(value, int) and value > top:
                return _reject(
                    "AV_INT_RANGE",
                    f"/size/{key}",
                    f"size.{key} {value} is over {top}, the largest the index stores",
                )
    return EntryRow(
        *common,
        name=rec["name"],
        description=_opt_str(rec.get("description")),
        tags=_tags(rec.get("tags")),
        license=_opt_str(rec.get("license")),
        schema_ref=schema_ref,
        storage=_json_text(storage),
        storage_kind=kind,
        shard_count=shard_count,
        checksums=checksums,
        size_samples=samples,
        size_bytes=nbytes,
        size_shards=shards,
    )


def _lens_row(common: _Common, rec: Mapping[str, Any]) -> LensRow | Rejection:
    for key in ("sourceSchema", "targetSchema"):
        ref = rec[key]
        why = _ref_problem(ref, SCHEMA)
        if why is not None:
            return _reject("AV_BAD_REF", f"/{key}", f"{key} {ref!r} {why}")
    language = _opt_str(rec.get("language"))
    if language is None:
        getter = rec.get("getterCode")
        if isinstance(getter, dict):
            language = _opt_str(getter.get("language"))
    return LensRow(
        *common,
        name=rec["name"],
        source_schema=rec["sourceSchema"],
        target_schema=rec["targetSchema"],
        language=language,
        description=_opt_str(rec.get("description")),
    )


def _label_row(common: _Common, rec: Mapping[str, Any]) -> LabelRow | Rejection:
    ref: str = rec["datasetUri"]
    why = _ref_problem(ref, ENTRY)
    if why is not None:
        return _reject("AV_BAD_REF", "/datasetUri", f"datasetUri {ref!r} {why}")
    return LabelRow(
        *common,
        name=rec["name"],
        dataset_uri=ref,
        version=_opt_str(rec.get("version")),
        description=_opt_str(rec.get("description")),
    )


def _verification_row(
    common: _Common, rec: Mapping[str, Any]
) -> LensVerificationRow | Rejection:
    ref: str = rec["lens"]
    why = _ref_problem(ref, LENS)
    if why is not None:
        return _reject("AV_BAD_REF", "/lens", f"lens {ref!r} {why}")
    return LensVerificationRow(
        *common,
        lens_uri=ref,
        lens_commit=rec["lensCommit"],
        method=rec["verificationMethod"],
    )


# -- normalize ----------------------------------------------------------------------


def normalize(
    collection: str,
    did: str,
    rkey: str,
    cid: str,
    record: Mapping[str, Any] | str | bytes,
    *,
    rev: str | None,
    seq: int | None,
    log_valid: str | None = None,
) -> IndexedRow | Rejection:
    """The index row of one record, or why it is refused (see the module doc for
    the checks and :data:`RULES` for the rule IDs).

    ``collection``: the record's NSID; ``did``: the repository; ``rkey``: its
    record key; ``cid``: the CID of the record version; ``record``: the value in
    the JSON data model (mapping, or JSON text); ``rev``: the commit revision that
    wrote it (``None`` if unknown); ``seq``: the ingestion-log seq (``None`` for a
    backfill); ``log_valid``: the ``ingest_events.valid`` of the log row, if the
    record comes from the log (``'RECORD_NUL'``: the ingester replaced U+0000, so
    the record is refused as ``AV_RECORD_NUL``; other values are not trusted, the
    record is validated here anyway).

    Pure and thread-safe; never raises for any record (``TypeError`` only for
    arguments of the wrong Python type, a caller bug)."""
    if collection not in RECORD_TABLES:
        return _reject(
            "AV_UNKNOWN_COLLECTION",
            "",
            f"collection {collection[:200]!r} is not indexed "
            f"({', '.join(RECORD_TABLES)})",
        )
    if not is_did(did):
        return _reject("AV_BAD_DID", "", f"repository {did[:200]!r} is not a DID")
    if not is_record_key(rkey):
        return _reject(
            "AV_BAD_RKEY", "", f"record key {rkey[:200]!r} is not a valid record key"
        )
    if not is_cid(cid):
        return _reject("AV_BAD_CID", "", f"CID {cid[:200]!r} is not a valid CID")

    # -- storable ------------------------------------------------------------------
    text: str | None = None
    if isinstance(record, str | bytes | bytearray | memoryview):
        raw = record if isinstance(record, str) else bytes(record)
        size = len(raw)
        if size > MAX_RECORD_BYTES or (
            isinstance(raw, str)
            and size * 4 > MAX_RECORD_BYTES
            and len(raw.encode("utf-8", "surrogatepass")) > MAX_RECORD_BYTES
        ):
            return _reject(
                "AV_RECORD_TOO_LARGE",
                "",
                f"record is over {MAX_RECORD_BYTES} bytes of JSON",
            )
        try:
            rec_any: Any = _loads(raw)
        except orjson.JSONDecodeError as exc:
            why = str(exc).lower()
            if "depth" in why or "recursion" in why:
                return _reject(
                    "AV_RECORD_TOO_DEEP", "", f"record nests over {MAX_DEPTH} deep"
                )
            return _reject("AV_INVALID_RECORD", "", f"record is not JSON: {exc}")
        text = raw if isinstance(raw, str) else raw.decode("utf-8")
    else:
        rec_any = record
    if not isinstance(rec_any, dict):
        if isinstance(rec_any, Mapping):
            rec_any = dict(rec_any)
        else:
            return _reject(
                "AV_INVALID_RECORD",
                "",
                f"record is a {type(rec_any).__name__}, not a JSON object",
            )
    rec = cast("dict[str, Any]", rec_any)
    if text is None:
        try:
            text = _json_text(rec)
        except TypeError:  # orjson.JSONEncodeError (also: nested over 254 deep)
            deep = _too_deep(rec, MAX_DEPTH)
            if deep is not None:
                return _too_deep_rejection(deep)
            path = _find(
                rec, _unencodable, lambda k: not isinstance(k, str) or _unencodable(k)
            )
            pointer = _join(path) if path is not None else ""
            return _reject(
                "AV_RECORD_ENCODING",
                pointer,
                f"{pointer or '/'}: value is not representable as JSON (an "
                "integer beyond 64 bits, a lone surrogate, or a non-JSON type)",
            )
        if len(text) > MAX_RECORD_BYTES // 4 and (
            len(text.encode()) > MAX_RECORD_BYTES
        ):
            return _reject(
                "AV_RECORD_TOO_LARGE",
                "",
                f"record is over {MAX_RECORD_BYTES} bytes of JSON",
            )
    # Nesting needs as many containers, each one `{` or `[` in the text (more
    # when strings hold them): with fewer than MAX_DEPTH, no walk is needed.
    if text.count("{") + text.count("[") > MAX_DEPTH:
        deep = _too_deep(rec, MAX_DEPTH)
        if deep is not None:
            return _too_deep_rejection(deep)
    if "\\u0000" in text or log_valid == "RECORD_NUL":
        path = _find(rec, _has_nul)
        if path is None and log_valid == "RECORD_NUL":
            path = _find(rec, lambda x: isinstance(x, str) and "\ufffd" in x)
        if path is not None or log_valid == "RECORD_NUL":
            pointer = _join(path) if path is not None else ""
            return _reject(
                "AV_RECORD_NUL",
                pointer,
                f"{pointer or '/'}: U+0000 in a string; PostgreSQL text and jsonb "
                "cannot hold it",
            )

    # -- $type and the generated model ---------------------------------------------
    kind = rec.get("$type")
    if kind != collection:
        return _reject(
            "AV_TYPE_MISMATCH",
            "/$type",
            "record has no $type"
            if "$type" not in rec
            else f"$type {str(kind)[:200]!r} is not the collection {collection!r}",
        )
    checked = rec
    if collection == ENTRY:
        meta = rec.get("metadata")
        if isinstance(meta, dict) and "$bytes" not in meta:
            # atdata 0.7.0b1 writes `metadata` as a JSON object (its
            # DatasetMetadata.to_record); both Lexicons say msgpack bytes. Accepted
            # as published (a plain object, bounded with the record).
            checked = {k: v for k, v in rec.items() if k != "metadata"}
    try:
        _model(collection).from_wire(checked)
    except ValidationError as exc:
        return _invalid(exc, checked)
    except RecursionError:
        return _reject("AV_RECORD_TOO_DEEP", "", "record nests too deep to validate")

    common = _common(collection, did, rkey, cid, rev, seq, text, rec)
    if collection == ENTRY:
        return _entry_row(common, rec)
    if collection == SCHEMA:
        return _schema_row(common, rkey, rec)
    if collection == LENS:
        return _lens_row(common, rec)
    if collection == LABEL:
        return _label_row(common, rec)
    return _verification_row(common, rec)
