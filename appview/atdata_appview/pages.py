"""The AppView's web pages: server-rendered HTML (jinja2, autoescaped), no JavaScript.

``router`` (a :class:`fastapi.APIRouter`, left out of the OpenAPI document) serves:

- ``GET /``: search (``q``), facets (``tags`` repeated, ``schema``, ``storage``,
  ``license``; each facet value links to the narrowed search), ``sort``
  (``relevance`` | ``recent`` | ``size``), keyset pages (``cursor``, a "next" link).
  The parameters are those of ``science.alt.dataset.searchDatasets`` and are
  validated by its generated model (a bad value: the page with the message, 400).
- ``GET /dataset/{did}/{rkey}``: an entry: publisher, schema link, shards (at most
  :data:`MAX_SHARDS_SHOWN`), size, checksum status, tags, licence, labels, and how
  to load it (Python, ``atdata-gen pull``).
- ``GET /schema/{did}/{rkey}``: a schema version: the fields table (types, shapes,
  dtypes, constraints, from atdata-gen's own schema-record front end), the version
  history with the compatibility verdicts and findings, the version and lens graph
  (inline SVG, :mod:`atdata_appview.svg`; also ``/schema/{did}/{rkey}/graph.svg``),
  the ``atdata-gen pull`` line and the entries that use it.
- ``GET /profile/{did_or_handle}``: an account's schemas, entries and lenses.
- ``GET /lens/{did}/{rkey}``: source and target schema, getter/putter code
  references (shown as text, never fetched), verifications.
- ``GET /schemas``: every indexed schema version, newest indexed first (``cursor``).
- ``GET /static/{name}``: the stylesheet (the files of ``static/``, read at import;
  nothing else is served). The icon is ``data:,`` so a page makes no request for
  ``/favicon.ico``.

Data comes from :mod:`atdata_appview.queries` (the XRPC queries' own functions, so
a page and its query never disagree), except the list of ``lensVerification``
records of a lens page (one parameterized query here, :data:`_VERIFICATIONS_SQL`).

Every record string is hostile: it reaches HTML only through jinja2's autoescape
(and SVG only through :func:`atdata_appview.svg.xml_text`), in elements marked
``dir="auto"`` (or ``<bdi>``) so right-to-left text is isolated. Links leave the
site only for ``https`` shard URLs, with ``rel="nofollow noopener noreferrer"``.
Each response carries :data:`CSP` (no script at all, no inline style, no frames)
and ``X-Content-Type-Options: nosniff``. An unknown record is a 404 page; any other
failure is a 500 (503 when PostgreSQL is unreachable) page that names no internal
detail (the exception is logged).
"""

from __future__ import annotations

import datetime as _dt
import functools
import hashlib
import json
import logging
import shlex
import urllib.parse
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any, Final, ParamSpec

import asyncpg
import fastapi
import jinja2
import markupsafe
from atdata_gen.diagnostics import Reporter
from atdata_gen.frontend.schema_record import parse_schema_record
from atdata_gen.ir import model as ir
from atdata_gen.sources import SourceDoc
from atdata_runtime.lexicons.science.alt.dataset.search_datasets import (
    SearchDatasetsParams,
)
from fastapi.responses import HTMLResponse, Response
from pydantic import ValidationError

from . import cursors, queries, svg

__all__ = [
    "BIDI_CONTROLS",
    "CSP",
    "PAGE_SIZE",
    "FieldRow",
    "ShardRow",
    "load_snippet",
    "neutral_text",
    "pull_line",
    "render_screenshot",
    "router",
    "schema_fields",
    "shard_rows",
]

log = logging.getLogger(__name__)

CSP: Final = (
    "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'none'; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
"""Content-Security-Policy of every page (W3C CSP Level 3)."""
SVG_CSP: Final = "default-src 'none'; style-src 'none'; sandbox"
"""Content-Security-Policy of ``graph.svg`` served alone: nothing loads or runs."""

PAGE_SIZE: Final = 20
"""Entries per search page."""
MAX_SHARDS_SHOWN: Final = 50
"""Shards listed on a dataset page at most (the count says how many there are)."""
MAX_FIELDS_SHOWN: Final = 500
"""Rows of a schema's fields table at most."""
MAX_LIST: Final = 100
"""Rows of each list on a profile or schema page at most."""

_HEADERS: Final = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-cache",
}

router = fastapi.APIRouter(include_in_schema=False)

# -- templates --------------------------------------------------------------------

BIDI_CONTROLS: Final = (
    "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
)
"""The bidirectional formatting characters (UAX #9 § 2: ALM, LRM, RLM, the
embeddings and overrides LRE RLE PDF LRO RLO, the isolates LRI RLI FSI PDI)."""
_BIDI_MARKERS: Final = {ord(c): f"\u27e8U+{ord(c):04X}\u27e9" for c in BIDI_CONTROLS}


def neutral_text(value: object) -> object:
    """``value`` with every :data:`BIDI_CONTROLS` character replaced by a visible
    marker (``⟨U+202E⟩``), so record text cannot reorder what follows it (an
    override in a name would mirror the heading and the ``<title>``); other
    values (and :class:`markupsafe.Markup` built by this module, such as the SVG,
    whose own isolates are cleaned by :func:`atdata_appview.svg.xml_text`) as
    they are. The environment's ``finalize`` hook: applied to every ``{{ }}``
    output before autoescape. Right-to-left letters are kept (``dir="auto"`` and
    ``<bdi>`` isolate them)."""
    if isinstance(value, str) and not isinstance(value, markupsafe.Markup):
        return value.translate(_BIDI_MARKERS)
    return value


_env = jinja2.Environment(
    loader=jinja2.PackageLoader("atdata_appview", "templates"),
    autoescape=True,
    # records omit optional keys: a missing one renders as nothing
    undefined=jinja2.Undefined,
    trim_blocks=True,
    lstrip_blocks=True,
    finalize=neutral_text,
)


def _static_files() -> dict[str, tuple[bytes, str, str]]:
    """name → (bytes, media type, ETag) of every file under ``static/``."""
    types = {".css": "text/css; charset=utf-8", ".svg": "image/svg+xml"}
    out: dict[str, tuple[bytes, str, str]] = {}
    for item in resources.files("atdata_appview").joinpath("static").iterdir():
        suffix = "." + item.name.rsplit(".", 1)[-1]
        if item.is_file() and suffix in types:
            data = item.read_bytes()
            tag = '"' + hashlib.sha256(data).hexdigest()[:16] + '"'
            out[item.name] = (data, types[suffix], tag)
    return out


_STATIC: Final = _static_files()


# -- AT-URIs and links -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AtUri:
    """The parts of ``at://did/collection/rkey``."""

    did: str
    collection: str
    rkey: str


def parse_at_uri(uri: object) -> AtUri | None:
    """The parts of a record AT-URI, or ``None`` when ``uri`` is not one (any
    other shape, empty parts, over 8 KiB)."""
    if not isinstance(uri, str) or len(uri) > 8192 or not uri.startswith("at://"):
        return None
    parts = uri[5:].split("/")
    if len(parts) != 3 or not all(parts):
        return None
    return AtUri(*parts)


def _seg(text: str) -> str:
    return urllib.parse.quote(text, safe=":@")


def record_href(kind: str, uri: object) -> str | None:
    """The page of the record at ``uri`` (``kind``: dataset, schema, lens)."""
    parts = parse_at_uri(uri)
    if parts is None:
        return None
    return f"/{kind}/{_seg(parts.did)}/{_seg(parts.rkey)}"


def profile_href(did_or_handle: str) -> str:
    return f"/profile/{_seg(did_or_handle)}"


def _external_href(url: object) -> str | None:
    """``url`` when it is an ``https`` URL with a host (linked, nofollow); else
    ``None`` (shown as text only)."""
    if not isinstance(url, str) or len(url) > 2000:
        return None
    try:
        parsed = urllib.parse.urlsplit(url)
    except ValueError:
        return None
    if parsed.scheme != "https" or not parsed.hostname:
        return None
    if any(ord(c) < 0x21 or c == "\x7f" for c in url):
        return None
    return url


def _search_href(params: Mapping[str, Any], **changes: Any) -> str:
    """``/?…`` with ``params`` updated by ``changes`` (``None`` removes; a list is
    repeated); the cursor is dropped unless given."""
    merged: dict[str, Any] = {k: v for k, v in params.items() if k != "cursor"}
    merged.update(changes)
    pairs: list[tuple[str, str]] = []
    for key in ("q", "tags", "schema", "storage", "license", "sort", "cursor"):
        value = merged.get(key)
        if value is None or value == "" or value == []:
            continue
        if key == "sort" and value == "relevance":
            continue
        for item in value if isinstance(value, list) else [value]:
            pairs.append((key, str(item)))
    return "/?" + urllib.parse.urlencode(pairs) if pairs else "/"


# -- formatting ----------------------------------------------------------------------


def human_bytes(n: object) -> str:
    """``1536`` → ``1.5 KiB`` (IEC units); ``None`` → ``—``."""
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        return "—"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if size < 1024 or unit == "PiB":
            return f"{n} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"  # pragma: no cover


def human_count(n: object) -> str:
    if not isinstance(n, int) or isinstance(n, bool):
        return "—"
    return f"{n:,}"


def short_date(text: object) -> str:
    """An RFC 3339 datetime as ``YYYY-MM-DD HH:MM UTC``; other text as is (cut)."""
    if isinstance(text, _dt.datetime):
        value = text
    elif isinstance(text, str):
        try:
            value = _dt.datetime.fromisoformat(text)
        except ValueError:
            return text[:40]
    else:
        return "—"
    if value.tzinfo is not None:
        value = value.astimezone(_dt.UTC)
    return value.strftime("%Y-%m-%d %H:%M UTC")


def _json_short(value: object, limit: int = 200) -> str:
    text = json.dumps(value, ensure_ascii=False, sort_keys=True)
    return text if len(text) <= limit else text[: limit - 1] + "…"


_env.filters.update(
    bytes=human_bytes,
    count=human_count,
    date=short_date,
    jsonshort=_json_short,
)
_env.globals.update(
    record_href=record_href,
    profile_href=profile_href,
    search_href=_search_href,
    external_href=_external_href,
    verdict_label=svg.verdict_label,
)


# -- the fields table -------------------------------------------------------------

_CONSTRAINT_KEYS: Final = (
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "multipleOf",
    "minLength",
    "maxLength",
    "pattern",
    "format",
    "contentEncoding",
    "const",
    "default",
    "minItems",
    "maxItems",
    "uniqueItems",
)


@dataclass(frozen=True, slots=True)
class FieldRow:
    """One row of a schema page's fields table: wire ``name``, ``type`` (text such
    as ``ndarray``, ``list[str]``), ``dtype`` and ``shape`` of arrays (text, ``—``
    when any), ``dims`` (dimension names), ``required``/``nullable``,
    ``constraints`` (``key = JSON value`` texts from the JSON Schema property, and
    an enum's values), ``description``."""

    name: str
    type: str
    dtype: str
    shape: str
    dims: str
    required: bool
    nullable: bool
    constraints: tuple[str, ...]
    description: str


def _type_text(t: object) -> str:
    if isinstance(t, ir.NDArrayType):
        return "ndarray" if t.format == "ndarrayBytes" else f"ndarray ({t.format})"
    if isinstance(t, ir.ArrayType):
        return f"list[{_type_text(t.items)}]"
    names: dict[type, str] = {
        ir.StringType: "str",
        ir.IntegerType: "int",
        ir.FloatType: "float",
        ir.BooleanType: "bool",
        ir.BytesType: "bytes",
    }
    return names.get(type(t), type(t).__name__)


def _array_of(t: object) -> ir.NDArrayType | None:
    while isinstance(t, ir.ArrayType):
        t = t.items
    return t if isinstance(t, ir.NDArrayType) else None


def _json_body(record: Mapping[str, Any]) -> Mapping[str, Any]:
    """The JSON Schema object of a schema record in either form."""
    body = record.get("schema")
    if not isinstance(body, dict):
        return {}
    content = body.get("content")
    if isinstance(content, dict):
        return content
    return body


def schema_fields(record: Mapping[str, Any]) -> tuple[list[FieldRow], list[str]]:
    """The fields table of a schema record (JSON data model, either form), read by
    atdata-gen's front end (:func:`atdata_gen.frontend.schema_record.
    parse_schema_record`: the same types ``atdata-gen build`` would generate; the
    record is data only, nothing is executed), and the problems it reports
    (``"/pointer: message [RULE]"``). When the record does not compile the rows
    come from the JSON Schema ``properties`` as published, typed by their
    ``type``/``$ref`` text. At most :data:`MAX_FIELDS_SHOWN` rows."""
    wrapped = {"value": dict(record)}
    text = json.dumps(wrapped, ensure_ascii=False)
    doc = SourceDoc(
        path="<record>",
        text=text,
        value=wrapped,
        sha256=hashlib.sha256(text.encode()).hexdigest(),
    )
    reporter = Reporter()
    try:
        parsed = parse_schema_record(doc, reporter)
    except (RecursionError, ValueError, TypeError):  # hostile shapes: show as raw
        parsed = None
    problems = [
        f"{d.span.pointer.removeprefix('/value') or '/'}: {d.message} [{d.rule}]"
        for d in reporter.errors
    ][:50]
    props = _json_body(record).get("properties")
    props = props if isinstance(props, dict) else {}
    required = _json_body(record).get("required")
    required = set(required) if isinstance(required, list) else set()

    def constraints(name: str, enum: Sequence[str] | None = None) -> tuple[str, ...]:
        prop = props.get(name)
        out = []
        if isinstance(prop, dict):
            for key in _CONSTRAINT_KEYS:
                if key in prop:
                    out.append(f"{key} = {_json_short(prop[key], 120)}")
            if enum is None and isinstance(prop.get("enum"), list):
                out.append(f"one of {_json_short(prop['enum'], 200)}")
        if enum is not None:
            out.append(f"one of {_json_short(list(enum), 200)}")
        return tuple(out)

    rows: list[FieldRow] = []
    if parsed is not None and not reporter.has_errors:
        for f in parsed.fields[:MAX_FIELDS_SHOWN]:
            arr = _array_of(f.type)
            enum = f.type.enum if isinstance(f.type, ir.StringType) else None
            shape = "—"
            if arr is not None and arr.shape is not None:
                shape = "(" + ", ".join("*" if d is None else str(d) for d in arr.shape)
                shape += ",)" if len(arr.shape) == 1 else ")"
            rows.append(
                FieldRow(
                    name=f.name,
                    type=_type_text(f.type),
                    dtype=(arr.dtype or "any") if arr is not None else "—",
                    shape=shape if arr is not None else "—",
                    dims=", ".join(arr.dims) if arr is not None and arr.dims else "",
                    required=f.required,
                    nullable=f.nullable,
                    constraints=constraints(f.name, enum),
                    description=f.description or "",
                )
            )
        return rows, problems
    for name, prop in list(props.items())[:MAX_FIELDS_SHOWN]:
        kind = "?"
        if isinstance(prop, dict):
            ref, typ = prop.get("$ref"), prop.get("type")
            kind = _json_short(ref if isinstance(ref, str) else typ, 80)
        desc = prop.get("description") if isinstance(prop, dict) else None
        rows.append(
            FieldRow(
                name=str(name),
                type=kind,
                dtype="—",
                shape="—",
                dims="",
                required=name in required,
                nullable=False,
                constraints=constraints(str(name)),
                description=desc if isinstance(desc, str) else "",
            )
        )
    return rows, problems


# -- storage and loading --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ShardRow:
    """One shard as the dataset page lists it: ``location`` (text), ``href`` (an
    https URL, or ``None``: text only), ``checksum`` text or ``""``."""

    location: str
    href: str | None
    checksum: str


def _checksum_text(value: object) -> str:
    if isinstance(value, dict):
        algo, digest = value.get("algorithm"), value.get("digest")
        if isinstance(algo, str) and isinstance(digest, str):
            return f"{algo}:{digest}"
    return ""


def shard_rows(storage: object) -> tuple[str, list[ShardRow], int, dict[str, str]]:
    """``(kind, rows, total, details)`` of an entry's ``storage`` (as published):
    at most :data:`MAX_SHARDS_SHOWN` rows of ``total``; ``details`` names the
    bucket, region and endpoint of S3 storage."""
    if not isinstance(storage, dict):
        return "unknown", [], 0, {}
    kind = str(storage.get("$type", "")).removeprefix("science.alt.dataset.")
    kind = kind.removeprefix("storage").lower() or "unknown"
    details: dict[str, str] = {}
    items: list[ShardRow] = []
    listed: object = []
    if kind == "http":
        listed = storage.get("shards")
        if isinstance(listed, list):
            for s in listed[:MAX_SHARDS_SHOWN]:
                if isinstance(s, dict):
                    url = s.get("url")
                    text = url if isinstance(url, str) else "?"
                    items.append(
                        ShardRow(
                            text, _external_href(url), _checksum_text(s.get("checksum"))
                        )
                    )
    elif kind == "s3":
        for key in ("bucket", "region", "endpoint"):
            if isinstance(storage.get(key), str):
                details[key] = storage[key]
        listed = storage.get("shards")
        if isinstance(listed, list):
            bucket = details.get("bucket", "?")
            for s in listed[:MAX_SHARDS_SHOWN]:
                if isinstance(s, dict):
                    obj = s.get("key")
                    text = f"s3://{bucket}/{obj if isinstance(obj, str) else '?'}"
                    items.append(
                        ShardRow(text, None, _checksum_text(s.get("checksum")))
                    )
    elif kind == "blobs":
        listed = storage.get("blobs")
        if isinstance(listed, list):
            for s in listed[:MAX_SHARDS_SHOWN]:
                if isinstance(s, dict):
                    blob = s.get("blob")
                    ref = blob.get("ref") if isinstance(blob, dict) else None
                    cid = ref.get("$link") if isinstance(ref, dict) else None
                    size = blob.get("size") if isinstance(blob, dict) else None
                    text = f"blob {cid if isinstance(cid, str) else '?'}"
                    if isinstance(size, int):
                        text += f" ({human_bytes(size)})"
                    items.append(
                        ShardRow(text, None, _checksum_text(s.get("checksum")))
                    )
    elif kind == "external":
        listed = storage.get("urls")
        if isinstance(listed, list):
            for url in listed[:MAX_SHARDS_SHOWN]:
                text = url if isinstance(url, str) else "?"
                items.append(ShardRow(text, _external_href(url), ""))
    total = len(listed) if isinstance(listed, list) else 0
    return kind, items, total, details


def load_snippet(entry_uri: str) -> str:
    """The two lines of Python that load the entry at ``entry_uri`` with
    atdata-runtime (``Dataset.from_atproto``, the ``atproto`` extra)."""
    return (
        "from atdata_runtime.shards import Dataset\n"
        f"ds = Dataset.from_atproto({json.dumps(entry_uri)})"
    )


def pull_line(schema_uri: str) -> str:
    """The ``atdata-gen pull`` command that pins the schema at ``schema_uri``."""
    return f"atdata-gen pull {shlex.quote(schema_uri)}"


def pull_name_line(handle: str | None, name: str, version: str) -> str | None:
    """``atdata-gen pull @handle/Name@version`` when the handle is known."""
    if not handle:
        return None
    return f"atdata-gen pull {shlex.quote(f'@{handle}/{name}@{version}')}"


# -- responses ----------------------------------------------------------------------


def _render(name: str, status: int = 200, **context: Any) -> HTMLResponse:
    html = _env.get_template(name).render(**context)
    return HTMLResponse(html, status_code=status, headers=_HEADERS)


class _NotFound(Exception):
    def __init__(self, what: str) -> None:
        self.what = what


class _BadRequest(Exception):
    def __init__(self, message: str) -> None:
        self.message = message


P = ParamSpec("P")

_UNAVAILABLE: Final = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.InsufficientResourcesError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.QueryCanceledError,
)
"""Failures that mean PostgreSQL is not answering (or too slow: statement
timeout): a 503 page."""


_UNENCODABLE: Final = (
    asyncpg.exceptions.CharacterNotInRepertoireError,
    asyncpg.exceptions.UntranslatableCharacterError,
)
"""PostgreSQL refusing a parameter's text (U+0000 above all): a bad request."""


def _refuse_nul(request: object) -> Response | None:
    """A 404 page when a path part of ``request`` holds U+0000 (no record can be
    named so), a 400 page when a query parameter does (PostgreSQL ``text`` cannot
    hold it; XRPC refuses it the same way), else ``None``."""
    if not isinstance(request, fastapi.Request):
        return None
    if any("\x00" in str(v) for v in request.path_params.values()):
        return _render("error.html", 404, title="Not found", message="No such record.")
    if any("\x00" in k + v for k, v in request.query_params.multi_items()):
        return _render(
            "error.html",
            400,
            title="Bad request",
            message="A parameter holds U+0000 (NUL), which no value may contain.",
        )
    return None


def _guarded(
    handler: Callable[P, Awaitable[Response]],
) -> Callable[P, Awaitable[Response]]:
    """Turn the handler's failures into pages: unknown record 404, bad parameter
    400, PostgreSQL unreachable 503, anything else 500; no internal detail shown."""

    @functools.wraps(handler)
    async def wrapped(*args: P.args, **kwargs: P.kwargs) -> Response:
        refused = _refuse_nul(kwargs.get("request"))
        if refused is not None:
            return refused
        try:
            return await handler(*args, **kwargs)
        except _NotFound as exc:
            return _render("error.html", 404, title="Not found", message=exc.what)
        except _BadRequest as exc:
            return _render("error.html", 400, title="Bad request", message=exc.message)
        except _UNENCODABLE as exc:  # text PostgreSQL cannot hold: the client's
            log.info("page %s: refused text: %s", handler.__name__, exc.sqlstate)
            return _render(
                "error.html",
                400,
                title="Bad request",
                message="The address holds a character the index cannot store.",
            )
        except _UNAVAILABLE:
            log.exception("page %s: database unavailable", handler.__name__)
            return _render(
                "error.html",
                503,
                title="Unavailable",
                message="The index is unavailable; try again in a moment.",
            )
        except Exception:
            log.exception("page %s failed", handler.__name__)
            return _render(
                "error.html",
                500,
                title="Something went wrong",
                message="This page could not be built. The error was logged.",
            )

    return wrapped


def _pool(request: fastapi.Request) -> Any:
    """The app's asyncpg pool (``app.state.pool``); 503 while there is none."""
    pool = request.app.state.pool
    if pool is None:
        raise ConnectionError("no database pool")
    return pool


# -- data -------------------------------------------------------------------------

MAX_LENS_ENDS: Final = 32
"""Other schemas whose ``name@version`` a schema page looks up at most (beyond:
shown by AT-URI)."""

_VERIFICATIONS_SQL: Final = (
    "SELECT v.uri, v.did, v.method, v.lens_commit, v.created_at, "
    "acc.verified_handle AS handle "
    "FROM appview_lens_verifications v "
    "LEFT JOIN appview_accounts acc ON acc.did = v.did "
    "WHERE v.lens_uri = $1 AND NOT EXISTS (SELECT 1 FROM appview_accounts x "
    "WHERE x.did = v.did AND NOT x.active) "
    "ORDER BY v.created_at DESC NULLS LAST, v.indexed_at DESC, v.did, v.rkey "
    "LIMIT $2"
)


async def _verifications(db: Any, lens_uri: str) -> list[dict[str, Any]]:
    """The lensVerification records naming ``lens_uri`` (newest first, at most
    :data:`MAX_LIST`): ``{uri, did, handle?, method, lensCommit, createdAt?}``."""
    rows = await db.fetch(_VERIFICATIONS_SQL, lens_uri, MAX_LIST)
    return [
        {
            "uri": r["uri"],
            "did": r["did"],
            "handle": r["handle"],
            "method": r["method"],
            "lensCommit": r["lens_commit"],
            "createdAt": r["created_at"],
        }
        for r in rows
    ]


async def _schema_labels(db: Any, uris: Iterable[str]) -> dict[str, tuple[str, str]]:
    """``uri → (name, version)`` of the indexed schemas among ``uris`` (the first
    :data:`MAX_LENS_ENDS` distinct ones, in sorted order)."""
    out: dict[str, tuple[str, str]] = {}
    for uri in sorted(set(uris))[:MAX_LENS_ENDS]:
        if parse_at_uri(uri) is None:
            continue
        view = await queries.get_schema_view(db, uri)
        if view is not None:
            out[uri] = (view["name"], view["version"])
    return out


def _record_of(view: Mapping[str, Any]) -> dict[str, Any]:
    """The parts of a schema record that the fields table reads, from its view."""
    return {
        "$type": "science.alt.dataset.schema",
        "name": view.get("name"),
        "version": view.get("version"),
        "schemaType": view.get("schemaType"),
        "schema": view.get("schema"),
    }


# -- pages --------------------------------------------------------------------------

_SEARCH_KEYS: Final = ("q", "tags", "schema", "storage", "license", "sort", "cursor")


def _uri(did: str, collection: str, rkey: str) -> str:
    if len(did) > 2048 or len(rkey) > 512 or "/" in did or "/" in rkey:
        raise _NotFound("No such record.")
    return f"at://{did}/science.alt.dataset.{collection}/{rkey}"


def _problems(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
    )[:500]


@router.get("/", response_class=HTMLResponse)
@_guarded
async def home(request: fastapi.Request) -> Response:
    """The search page (parameters: those of searchDatasets, ``tags`` repeated)."""
    raw: dict[str, list[str]] = {}
    for key, value in request.query_params.multi_items():
        if key in _SEARCH_KEYS and value != "":
            raw.setdefault(key, []).append(value)
    shown: dict[str, Any] = {k: (v if k == "tags" else v[-1]) for k, v in raw.items()}

    def failed(message: str) -> Response:
        return _render(
            "home.html", 400, params=shown, result=None, error=message, title="Search"
        )

    try:
        params = SearchDatasetsParams.from_query(
            {**raw, "facets": "true", "limit": str(PAGE_SIZE)}
        )
    except ValidationError as exc:
        return failed(f"Invalid search: {_problems(exc)}")
    try:
        result = await queries.search_entries(
            _pool(request), queries.SearchQuery.from_params(params)
        )
    except (queries.QueryError, cursors.InvalidCursor) as exc:
        return failed(f"Invalid search: {exc}"[:500])
    return _render(
        "home.html",
        params=shown,
        result=result,
        error=None,
        title=f"Search: {params.q}" if params.q else "Search",
    )


@router.get("/static/{name}")
async def static(name: str, request: fastapi.Request) -> Response:
    """A file of ``static/`` (fixed list, read at import)."""
    found = _STATIC.get(name)
    if found is None:
        return Response("not found", status_code=404, media_type="text/plain")
    data, media, tag = found
    headers = {
        "ETag": tag,
        "Cache-Control": "public, max-age=3600",
        "X-Content-Type-Options": "nosniff",
    }
    if request.headers.get("if-none-match") == tag:
        return Response(status_code=304, headers=headers)
    return Response(data, media_type=media, headers=headers)


@router.get("/dataset/{did}/{rkey}", response_class=HTMLResponse)
@_guarded
async def dataset(request: fastapi.Request, did: str, rkey: str) -> Response:
    """An entry's page."""
    uri = _uri(did, "entry", rkey)
    entry = await queries.get_entry_view(_pool(request), uri)
    if entry is None:
        raise _NotFound("No dataset entry is indexed at this address.")
    kind, shards, total, details = shard_rows(entry["storage"])
    schema_ref = entry["schemaRef"]
    labels = await queries.labels_of_entry(_pool(request), uri, limit=MAX_LIST)
    return _render(
        "dataset.html",
        title=entry["name"],
        entry=entry,
        labels=labels,
        storage_kind=entry.get("storageKind") or kind,
        shards=shards,
        shard_total=total,
        storage_details=details,
        load=load_snippet(uri),
        pull=pull_line(schema_ref) if parse_at_uri(schema_ref) else None,
    )


@router.get("/schemas", response_class=HTMLResponse)
@_guarded
async def schemas(request: fastapi.Request) -> Response:
    """Every indexed schema version, newest indexed first (``cursor`` pages)."""
    cursor = request.query_params.get("cursor") or None
    if cursor is not None and len(cursor) > cursors.MAX_CURSOR:
        raise _BadRequest("Invalid cursor.")
    try:
        page = await queries.list_schemas(
            _pool(request), limit=PAGE_SIZE, cursor=cursor
        )
    except (queries.QueryError, cursors.InvalidCursor):
        raise _BadRequest("Invalid cursor: it was not issued by this page.") from None
    return _render(
        "schemas.html",
        title="Schemas",
        schemas=page.items,
        cursor=page.cursor,
        paged=cursor is not None,
    )


async def _schema_page_data(
    request: fastapi.Request, did: str, rkey: str
) -> dict[str, Any]:
    uri = _uri(did, "schema", rkey)
    db = _pool(request)
    schema = await queries.get_schema_view(db, uri)
    if schema is None:
        raise _NotFound("No schema is indexed at this address.")
    try:
        history = await queries.schema_history(
            db, schema["name"], repo=schema["did"], limit=svg.MAX_VERSIONS * 4
        )
    except queries.QueryError:  # deleted between the two reads
        history = {"versions": [schema], "verdicts": []}
    version_uris = [v["uri"] for v in history["versions"]]
    if uri not in version_uris:
        version_uris.append(uri)
    lenses = await queries.lenses_of_schemas(db, version_uris, limit=MAX_LIST)
    ends = {e for ln in lenses for e in (ln["sourceSchema"], ln["targetSchema"])}
    labels = await _schema_labels(db, ends - set(version_uris))
    for v in history["versions"]:
        labels[v["uri"]] = (v["name"], v["version"])
    entries = await queries.entries_of_schema(db, uri, limit=MAX_LIST)
    return {
        "uri": uri,
        "schema": schema,
        "history": history,
        "lenses": lenses,
        "labels": labels,
        "entries": entries.items,
    }


def _graph(data: Mapping[str, Any]) -> str:
    schema, history = data["schema"], data["history"]
    labels: Mapping[str, tuple[str, str]] = data["labels"]

    def label(uri: str) -> str:
        found = labels.get(uri)
        return f"{found[0]}@{found[1]}" if found else uri

    versions = [
        svg.Version(v["version"], v["uri"], record_href("schema", v["uri"]))
        for v in history["versions"]
    ]
    if not any(v.uri == data["uri"] for v in versions):
        versions.append(svg.Version(schema["version"], data["uri"], None))
    verdicts = [
        svg.Verdict(
            v["fromVersion"],
            v["toVersion"],
            v["verdict"],
            v.get("declaredBump"),
            v.get("neededBump"),
            len(v.get("findings") or []),
        )
        for v in history["verdicts"]
    ]
    lenses = [
        svg.LensLink(
            name=ln["name"],
            source_uri=ln["sourceSchema"],
            target_uri=ln["targetSchema"],
            source_label=label(ln["sourceSchema"]),
            target_label=label(ln["targetSchema"]),
            href=record_href("lens", ln["uri"]),
            source_href=record_href("schema", ln["sourceSchema"]),
            target_href=record_href("schema", ln["targetSchema"]),
        )
        for ln in data["lenses"]
    ]
    return svg.schema_graph(
        schema["name"], versions, verdicts, lenses, current_uri=data["uri"]
    )


@router.get("/schema/{did}/{rkey}", response_class=HTMLResponse)
@_guarded
async def schema(request: fastapi.Request, did: str, rkey: str) -> Response:
    """A schema version's page."""
    data = await _schema_page_data(request, did, rkey)
    s = data["schema"]
    fields, problems = schema_fields(_record_of(s))
    return _render(
        "schema.html",
        title=f"{s['name']}@{s['version']}",
        graph=markupsafe.Markup(_graph(data)),
        fields=fields,
        problems=problems,
        pull=pull_line(data["uri"]),
        pull_name=pull_name_line(s.get("handle"), s["name"], s["version"]),
        **data,
    )


@router.get("/schema/{did}/{rkey}/graph.svg")
@_guarded
async def schema_graph_svg(request: fastapi.Request, did: str, rkey: str) -> Response:
    """The version and lens graph alone (``image/svg+xml``, sandboxed by CSP)."""
    data = await _schema_page_data(request, did, rkey)
    return Response(
        '<?xml version="1.0" encoding="UTF-8"?>\n' + _graph(data),
        media_type="image/svg+xml",
        headers={
            "Content-Security-Policy": SVG_CSP,
            "X-Content-Type-Options": "nosniff",
            "Cache-Control": "no-cache",
        },
    )


@router.get("/profile/{who}", response_class=HTMLResponse)
@_guarded
async def profile(request: fastapi.Request, who: str) -> Response:
    """A publisher's page (by DID or handle)."""
    if len(who) > 2048:
        raise _NotFound("No such account.")
    db = _pool(request)
    try:
        found = await queries.profile(db, who)
    except queries.QueryError:
        found = None
    if found is None:
        raise _NotFound("The index knows no publisher by this name.")
    schemas = await queries.list_schemas(db, repo=found.did, limit=MAX_LIST)
    entries = await queries.list_entries(db, repo=found.did, limit=MAX_LIST)
    lenses = await queries.list_lenses(db, repo=found.did, limit=MAX_LIST)
    return _render(
        "profile.html",
        title=found.handle or found.did,
        p=found,
        schemas=schemas.items,
        entries=entries.items,
        lenses=lenses.items,
    )


@router.get("/lens/{did}/{rkey}", response_class=HTMLResponse)
@_guarded
async def lens(request: fastapi.Request, did: str, rkey: str) -> Response:
    """A lens's page."""
    uri = _uri(did, "lens", rkey)
    db = _pool(request)
    found = await queries.lens_view(db, uri)
    if found is None:
        raise _NotFound("No lens is indexed at this address.")
    labels = await _schema_labels(db, [found["sourceSchema"], found["targetSchema"]])
    return _render(
        "lens.html",
        title=found["name"],
        lens=found,
        labels=labels,
        verifications=await _verifications(db, uri),
    )


# -- screenshots ----------------------------------------------------------------------

CHROMIUM: Final = "/usr/bin/chromium"
CHROMIUM_ARGS: Final = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


def render_screenshot(
    url: str, path: str, *, width: int = 1280, height: int = 900, full_page: bool = True
) -> str:
    """Open ``url`` in Debian's chromium (Playwright, headless), save a PNG
    screenshot at ``path`` and return ``path``. Raises ``RuntimeError`` when the
    page answers with an error status or logs a console error."""
    from playwright.sync_api import sync_playwright

    errors: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=list(CHROMIUM_ARGS))
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.on(
                "console",
                lambda m: errors.append(m.text) if m.type == "error" else None,
            )
            response = page.goto(url, wait_until="load")
            if response is None or response.status >= 400:
                status = response.status if response else "no response"
                raise RuntimeError(f"{url}: HTTP {status}")
            if errors:
                raise RuntimeError(f"{url}: console errors: {errors}")
            page.screenshot(path=path, full_page=full_page)
        finally:
            browser.close()
    return path
