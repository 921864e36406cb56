"""The AppView's XRPC queries: ``GET /xrpc/<nsid>`` for every query Lexicon of
``lexicons/science/alt/dataset/`` (the method names, parameters and response
shapes atdata-app 0.4.0b1 serves, plus ours).

``router`` (a FastAPI ``APIRouter``) reads the asyncpg pool from
``request.app.state.pool`` and the service DID from
``request.app.state.settings.service_did``. For each request:

1. the query string is validated by the method's generated ``…Params.from_query``
   (``atdata_runtime.lexicons.science.alt.dataset.*``: types, bounds, formats,
   required parameters, array parameters as repeated keys); a failure is
   ``400 InvalidRequest`` naming the parameter (the value is not echoed);
2. :mod:`atdata_appview.queries` answers (one pooled connection per request);
3. the response is validated with the method's generated ``…Output`` model
   (``model_validate``: the full Lexicon constraints, formats included; in a
   worker thread when it is larger than :data:`VALIDATE_INLINE_BYTES`) and sent
   as the dict that was validated, encoded by orjson. A view that fails its own
   Lexicon is a bug: ``500 InternalServerError``, logged, never sent. Pages are
   at most :data:`atdata_appview.queries.MAX_PAGE_BYTES` of views.

Errors have XRPC's shape ``{"error": Name, "message": text}``:

========================  ======  ==========================================
error                     status  when
========================  ======  ==========================================
``InvalidRequest``        400     bad parameters (type, bounds, format, too
                                  many ``uris``, a URI that names no record)
``InvalidCursor``         400     a cursor this query did not issue
``RepoNotFound``          400     a handle that does not resolve (atdata-app:
                                  400 for an unresolvable handle)
``AmbiguousName``         400     getSchemaHistory without ``repo`` and several
                                  publishers of the name
``EntryNotFound`` …       404     ``EntryNotFound``, ``SchemaNotFound``,
                                  ``LabelNotFound``, ``LensPathNotFound``
                                  (atdata-app answers not-found with 404)
``InternalServerError``   500     anything else (the app's handler; logged)
========================  ======  ==========================================

atdata 0.7.0b1's client (``Atmosphere.xrpc_query``) raises
``AppViewUnavailableError`` on a 5xx and ``httpx.HTTPStatusError`` on a 4xx; its
``SchemaLoader.resolve`` then falls back to the publisher's PDS, as it does
against atdata-app. Unknown methods under ``/xrpc/`` are left to the app (see
:mod:`atdata_appview.app`: ``501 MethodNotImplemented``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Final

import orjson
import pydantic
from atdata_runtime.lexicons.science.alt.dataset import (
    describe_service,
    get_entries,
    get_entry,
    get_lens_path,
    get_schema,
    get_schema_history,
    list_entries,
    list_lenses,
    list_schemas,
    resolve_label,
    resolve_schema,
    search_datasets,
    search_lenses,
)
from fastapi import APIRouter, Request
from fastapi.responses import Response

from . import queries
from .cursors import InvalidCursor

__all__ = ["METHODS", "VALIDATE_INLINE_BYTES", "error_response", "router"]

log = logging.getLogger(__name__)

VALIDATE_INLINE_BYTES: Final = 256 * 1024
"""Responses larger than this (bytes of JSON) are validated in a worker thread:
validating costs about 12 ms per MiB (a page is at most
:data:`atdata_appview.queries.MAX_PAGE_BYTES`), which the event loop should
not wait through."""

router = APIRouter()
"""``GET /xrpc/science.alt.dataset.<method>`` for every method of :data:`METHODS`."""

Handler = Callable[[Any, Any, Request], Awaitable[dict[str, Any]]]


@dataclasses.dataclass(frozen=True, slots=True)
class Method:
    """One XRPC query: its NSID, generated params and output models, handler."""

    nsid: str
    params: Any  # a LexParams subclass, or None (no parameters)
    output: Any  # the output LexObject class
    handler: Handler


def error_response(status: int, name: str, message: str) -> Response:
    """An XRPC error response ``{"error": name, "message": message}``."""
    return Response(
        orjson.dumps({"error": name, "message": message[:1000]}),
        status_code=status,
        media_type="application/json",
    )


def _params_message(exc: pydantic.ValidationError) -> str:
    parts = []
    for err in exc.errors(include_url=False, include_input=False)[:5]:
        loc = ".".join(str(p) for p in err.get("loc", ())) or "parameters"
        parts.append(f"{loc}: {err.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid parameters"


def _nul_param(params: Any) -> str | None:
    # The wire name of the first parameter whose text holds U+0000, else None.
    for name, value in params.model_dump(by_alias=True).items():
        values = value if isinstance(value, list) else [value]
        if any(isinstance(v, str) and "\x00" in v for v in values):
            return str(name)
    return None


# ---------------------------------------------------------------------- handlers


async def _get_entry(db: Any, p: Any, request: Request) -> dict[str, Any]:
    view = await queries.get_entry_view(db, p.uri)
    if view is None:
        raise queries.QueryError("EntryNotFound", f"entry not found: {p.uri}", 404)
    return {"entry": view}


async def _get_entries(db: Any, p: Any, request: Request) -> dict[str, Any]:
    return {"entries": await queries.get_entries(db, p.uris)}


async def _get_schema(db: Any, p: Any, request: Request) -> dict[str, Any]:
    view = await queries.get_schema_view(db, p.uri)
    if view is None:
        raise queries.QueryError("SchemaNotFound", f"schema not found: {p.uri}", 404)
    return view


def _page(key: str, page: queries.Page) -> dict[str, Any]:
    out: dict[str, Any] = {key: page.items}
    if page.cursor is not None:
        out["cursor"] = page.cursor
    return out


async def _list_entries(db: Any, p: Any, request: Request) -> dict[str, Any]:
    page = await queries.list_entries(db, repo=p.repo, limit=p.limit, cursor=p.cursor)
    return _page("entries", page)


async def _list_schemas(db: Any, p: Any, request: Request) -> dict[str, Any]:
    page = await queries.list_schemas(db, repo=p.repo, limit=p.limit, cursor=p.cursor)
    return _page("schemas", page)


async def _list_lenses(db: Any, p: Any, request: Request) -> dict[str, Any]:
    page = await queries.list_lenses(
        db,
        repo=p.repo,
        source_schema=p.source_schema,
        target_schema=p.target_schema,
        limit=p.limit,
        cursor=p.cursor,
    )
    return _page("lenses", page)


async def _search_lenses(db: Any, p: Any, request: Request) -> dict[str, Any]:
    page = await queries.search_lenses(
        db,
        source_schema=p.source_schema,
        target_schema=p.target_schema,
        limit=p.limit,
        cursor=p.cursor,
    )
    return _page("lenses", page)


async def _search_datasets(db: Any, p: Any, request: Request) -> dict[str, Any]:
    page = await queries.search_entries(
        db, queries.SearchQuery.from_params(p), pool=request.app.state.pool
    )
    out: dict[str, Any] = {"entries": page.entries}
    if page.cursor is not None:
        out["cursor"] = page.cursor
    if page.facets is not None:
        out["facets"] = page.facets
    return out


async def _resolve_schema(db: Any, p: Any, request: Request) -> dict[str, Any]:
    found = await queries.resolve_schema(db, p.handle, p.schema_id, p.version)
    if found is None:
        what = p.schema_id + (f"@{p.version}" if p.version else "")
        raise queries.QueryError("SchemaNotFound", f"schema not found: {what}", 404)
    return found


async def _resolve_label(db: Any, p: Any, request: Request) -> dict[str, Any]:
    found = await queries.resolve_label(db, p.handle, p.name, p.version)
    if found is None:
        raise queries.QueryError("LabelNotFound", f"label not found: {p.name}", 404)
    return found


async def _describe_service(db: Any, p: Any, request: Request) -> dict[str, Any]:
    settings = request.app.state.settings
    return await queries.describe_service(db, settings.service_did)


async def _schema_history(db: Any, p: Any, request: Request) -> dict[str, Any]:
    return await queries.schema_history(db, p.name, repo=p.repo, limit=p.limit)


async def _lens_path(db: Any, p: Any, request: Request) -> dict[str, Any]:
    return await queries.lens_path(db, p.source_schema, p.target_schema, p.max_steps)


def _method(query: Any, handler: Handler) -> Method:
    return Method(query.lex_id, query.params, query.output, handler)


METHODS: Final[dict[str, Method]] = {
    m.nsid: m
    for m in (
        _method(get_entry.GetEntry, _get_entry),
        _method(get_entries.GetEntries, _get_entries),
        _method(get_schema.GetSchema, _get_schema),
        _method(list_entries.ListEntries, _list_entries),
        _method(list_schemas.ListSchemas, _list_schemas),
        _method(list_lenses.ListLenses, _list_lenses),
        _method(search_datasets.SearchDatasets, _search_datasets),
        _method(search_lenses.SearchLenses, _search_lenses),
        _method(resolve_schema.ResolveSchema, _resolve_schema),
        _method(resolve_label.ResolveLabel, _resolve_label),
        _method(describe_service.DescribeService, _describe_service),
        _method(get_schema_history.GetSchemaHistory, _schema_history),
        _method(get_lens_path.GetLensPath, _lens_path),
    )
}
"""NSID → method, every query Lexicon of ``science.alt.dataset``."""


async def _serve(method: Method, request: Request) -> Response:
    params: Any = None
    if method.params is not None:
        try:
            params = method.params.from_query(request.url.query)
        except pydantic.ValidationError as exc:
            return error_response(400, "InvalidRequest", _params_message(exc))
        nul = _nul_param(params)
        if nul is not None:
            # PostgreSQL text cannot hold U+0000: no record contains it either
            return error_response(400, "InvalidRequest", f"{nul}: contains U+0000")
    pool = request.app.state.pool
    if pool is None:
        return error_response(503, "Unavailable", "the index is unavailable")
    try:
        async with pool.acquire() as conn:
            body = await method.handler(conn, params, request)
    except queries.QueryError as exc:
        return error_response(exc.status, exc.name, exc.message)
    except InvalidCursor as exc:
        return error_response(400, "InvalidCursor", str(exc))
    data = orjson.dumps(body)
    try:
        if len(data) > VALIDATE_INLINE_BYTES:  # tens of ms: off the event loop
            await asyncio.to_thread(_validate, method.output, body)
        else:
            _validate(method.output, body)
    except pydantic.ValidationError:
        log.exception("%s: the response fails its Lexicon", method.nsid)
        return error_response(500, "InternalServerError", "internal error")
    return Response(data, media_type="application/json")


def _validate(output: Any, body: dict[str, Any]) -> None:
    output.model_validate(body, by_alias=True, by_name=False)


def _route(method: Method) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        return await _serve(method, request)

    endpoint.__name__ = method.nsid.rsplit(".", 1)[-1]
    endpoint.__doc__ = f"XRPC query {method.nsid}."
    return endpoint


for _m in METHODS.values():
    router.add_api_route(
        f"/xrpc/{_m.nsid}",
        _route(_m),
        methods=["GET"],
        response_class=Response,
        include_in_schema=True,
    )
