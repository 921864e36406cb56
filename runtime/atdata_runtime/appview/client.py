"""A typed client of an AppView's ``science.alt.dataset.*`` queries.

Each method builds its parameters with the query's generated ``…Params`` model
(so a bad argument is a ``ValueError`` before anything is sent), sends one ``GET
{url}/xrpc/{nsid}`` through :func:`atdata_runtime.net.fetch.fetch`, and validates
the answer with the generated ``…Output`` model (``from_wire``): what the caller
gets is typed and has the Lexicon's shape, whatever the server sent.

The server is not trusted with anything:

* **Size and time.** The body is capped (``max_bytes``, default 8 MiB: a page of
  100 entry views with long shard lists), and ``timeout`` seconds (default 10)
  bound the whole call, connect, headers, body and retries included (a server
  that trickles bytes is cut off at the deadline).
* **Retries.** Connection failures, 5xx and 429 are retried within the deadline
  (:class:`~atdata_runtime.net.retry.RetryPolicy`; ``Retry-After`` honoured),
  then :class:`~.errors.AppViewUnavailable`. A 501 (``MethodNotImplemented``)
  or 505, and a 404 without an XRPC error name, are final: at once
  :class:`~.errors.AppViewUnavailable` with :data:`URL_HINT` (the URL is likely
  no AppView's base). A URL ending in ``/xrpc`` is used without it (WARNING).
* **Shape.** A body that is not JSON, or not the Lexicon's output, is
  :class:`~.errors.AppViewResponseError` with the JSON pointers of the problems
  (never the values).
* **Errors** in XRPC's shape (``{"error": Name, "message": text}``; atdata-app's
  FastAPI ``{"detail": text}`` is read too) become
  :class:`~.errors.AppViewQueryError` / :class:`~.errors.AppViewNotFound` with the
  method, status, error name and a cleaned, bounded message.
* **No credentials.** Queries are public: no ``Authorization`` header, no
  session, no PDS token is ever sent to the AppView (it is a third party).

The URL is the ``url`` argument, else the environment variable
``ATDATA_APPVIEW_URL`` (read when the client is made, as the runtime reads its other
settings, e.g. ``ATDATA_LENS_PACKAGES``); with neither,
:class:`~.errors.AppViewNotConfigured` names the variable. The URL is the user's
configuration, so ``http://localhost:…`` is allowed (a URL from a record never
becomes an AppView URL).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
import urllib.parse
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, TypeVar

import pydantic

from ..lex.models import LexObject, LexParams
from ..lexicons.science.alt.dataset import (
    defs,
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
from ..net.errors import (
    ConnectionFailedError,
    DeadlineExceededError,
    HttpStatusError,
    NetworkError,
    ResponseFormatError,
    ResponseTooLargeError,
    RetryExhaustedError,
    UnsafeUrlError,
)
from ..net.fetch import Fetched, check_url, fetch
from ..net.redact import redact_url
from ..net.retry import RetryPolicy
from .errors import (
    APPVIEW_URL_ENV,
    AppViewNotConfigured,
    AppViewNotFound,
    AppViewQueryError,
    AppViewResponseError,
    AppViewUnavailable,
    clean_text,
    error_name,
)

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_TIMEOUT",
    "MAX_PAGES",
    "URL_HINT",
    "AppViewClient",
    "configured_url",
]

O = TypeVar("O", bound=LexObject)

DEFAULT_TIMEOUT = 10.0
"""Seconds: the total budget of one query, retries included."""

DEFAULT_MAX_BYTES = 8 * 1024 * 1024
"""Bytes: the largest answer read (8 MiB, as a PDS list page)."""

MAX_PAGES = 50
"""Pages followed at most by the ``iter_*`` helpers (unless told otherwise)."""

_NS = "science.alt.dataset"
log = logging.getLogger("atdata_runtime.appview")

URL_HINT = "is ATDATA_APPVIEW_URL the AppView's base URL (without /xrpc)?"
"""Said with an answer that means the URL is no AppView's base: 501
(``MethodNotImplemented``), or a 404 without an XRPC error name."""
_NOT_RETRIED = frozenset({501, 505})
"""5xx statuses that will not change on a retry (RFC 9110 § 15.6.2, § 15.6.6)."""


def _base_url(url: str) -> str:
    """``url`` without spaces, trailing ``/`` and a trailing ``/xrpc`` (the
    client adds ``/xrpc/{method}`` itself: a URL ending in ``/xrpc`` would ask
    ``/xrpc/xrpc/…``; stripped with a WARNING)."""
    base = url.strip().rstrip("/")
    if base.lower().endswith("/xrpc"):
        log.warning(
            "AppView URL %s ends in /xrpc: using %s (the base URL; the client "
            "adds /xrpc/<method>)",
            redact_url(base),
            redact_url(base[: -len("/xrpc")]),
        )
        base = base[: -len("/xrpc")].rstrip("/")
    return base


_SHOWN_PROBLEMS = 5


def configured_url(environ: Mapping[str, str] | None = None) -> str | None:
    """The AppView URL of the settings (``ATDATA_APPVIEW_URL``), stripped of
    spaces and a trailing ``/``; ``None`` when unset or empty."""
    value = (environ if environ is not None else os.environ).get(APPVIEW_URL_ENV, "")
    value = value.strip().rstrip("/")
    return value or None


def _pointer(loc: Sequence[Any]) -> str:
    return (
        "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in loc) or "/"
    )


def _problems(
    exc: pydantic.ValidationError, wire: Mapping[str, str] | None = None
) -> str:
    """The first problems of ``exc`` as ``/pointer: message`` (never the input);
    ``wire`` maps Python field names to wire names for the first step."""
    errors = exc.errors(include_input=False, include_url=False)

    def where(loc: Sequence[Any]) -> str:
        if wire and loc and str(loc[0]) in wire:
            loc = [wire[str(loc[0])], *loc[1:]]
        return _pointer(loc)

    shown = "; ".join(
        f"{where(e['loc'])}: {clean_text(str(e['msg']), 200)}"
        for e in errors[:_SHOWN_PROBLEMS]
    )
    more = len(errors) - _SHOWN_PROBLEMS
    return shown + (f" (and {more} more)" if more > 0 else "")


def _query_pairs(params: LexParams | None) -> list[tuple[str, str]]:
    """The query string pairs of ``params`` (wire names; arrays as repeated keys,
    booleans ``true``/``false``, integers in decimal)."""
    if params is None:
        return []
    pairs: list[tuple[str, str]] = []
    for key, value in params.to_wire().items():
        if key == "$type" or value is None:
            continue
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, bool):
                pairs.append((key, "true" if item else "false"))
            else:
                pairs.append((key, str(item)))
    return pairs


class AppViewClient:
    """Typed calls of an AppView's queries (module docstring).

    ``url``: base URL (``https://host[:port][/prefix]``); default the
    ``ATDATA_APPVIEW_URL`` setting, else :class:`~.errors.AppViewNotConfigured`.
    ``timeout``: seconds per call, retries included (default 10). ``max_bytes``:
    cap of one answer (default 8 MiB). ``retry``: the retry policy (default: up to
    3 attempts within ``timeout``). Raises :class:`~atdata_runtime.net.
    UnsafeUrlError` for a URL that is not http(s) with a host."""

    def __init__(
        self,
        url: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        max_bytes: int = DEFAULT_MAX_BYTES,
        retry: RetryPolicy | None = None,
    ) -> None:
        chosen = url.strip().rstrip("/") if url else configured_url()
        chosen = _base_url(chosen) if chosen else chosen
        if not chosen:
            raise AppViewNotConfigured()
        parsed = check_url(chosen, what="AppView", trusted=True)
        if parsed.query or parsed.fragment:
            raise UnsafeUrlError(
                redact_url(chosen), "AppView URL must not carry a query or fragment"
            )
        if timeout <= 0 or max_bytes <= 0:
            raise ValueError("timeout and max_bytes must be positive")
        self.url = chosen
        self.timeout = timeout
        self.max_bytes = max_bytes
        self.retry = retry or RetryPolicy(
            attempts=3, base=0.1, cap=1.0, deadline=timeout
        )

    def __repr__(self) -> str:
        return f"AppViewClient({redact_url(self.url)!r})"

    # -- transport ---------------------------------------------------------------
    def call(
        self,
        method: str,
        params: LexParams | None,
        output: type[O],
    ) -> O:
        """One query: ``GET {url}/xrpc/{method}`` with ``params`` (a ``…Params``
        model), the answer validated as ``output``. Raises
        :class:`~.errors.AppViewUnavailable`, :class:`~.errors.AppViewResponseError`,
        :class:`~.errors.AppViewQueryError` (4xx; :class:`~.errors.AppViewNotFound`
        for ``…NotFound`` and bare 404s)."""
        answer = self._get(method, _query_pairs(params))
        try:
            data = answer.json()
        except ResponseFormatError as exc:
            raise AppViewResponseError(
                self._where(method), exc.reason, method=method, status=answer.status
            ) from None
        try:
            return output.from_wire(data)
        except pydantic.ValidationError as exc:
            raise AppViewResponseError(
                self._where(method),
                f"{method} answer does not match its Lexicon output: {_problems(exc)}",
                method=method,
                status=answer.status,
            ) from None

    def _where(self, method: str) -> str:
        return redact_url(f"{self.url}/xrpc/{method}")

    def _get(self, method: str, pairs: list[tuple[str, str]]) -> Fetched:
        where = self._where(method)
        url = f"{self.url}/xrpc/{method}"
        if pairs:
            url += "?" + urllib.parse.urlencode(pairs)
        end = time.monotonic() + self.timeout
        tries = [0]

        def once() -> Fetched:
            # the first attempt has the whole budget; a retry what is left of it
            left = self.timeout if tries[0] == 0 else end - time.monotonic()
            tries[0] += 1
            if left <= 0:
                raise DeadlineExceededError(
                    where,
                    f"{method}: no answer within {self.timeout:g} s",
                    what=f"{method} answer",
                    limit=self.timeout,
                )
            got = fetch(
                url,
                what=f"{method} answer",
                max_bytes=self.max_bytes,
                deadline=left,
                headers={"Accept": "application/json"},
                trusted=True,
                retry=None,
            )
            if got.status == 429 or (
                got.status >= 500 and got.status not in _NOT_RETRIED
            ):
                raise HttpStatusError(
                    where, f"{method} answer: HTTP {got.status}", response=got
                )
            return got

        # retried here, not in fetch: a 501 is final
        policy = dataclasses.replace(
            self.retry, deadline=min(self.retry.deadline, self.timeout)
        )
        try:
            answer = policy.run(once, what=where)
        except RetryExhaustedError as exc:
            cause = exc.__cause__
            status = getattr(getattr(cause, "response", None), "status", None)
            raise AppViewUnavailable(
                where,
                f"{method}: the AppView keeps failing ({exc.reason})",
                method=method,
                status=status if isinstance(status, int) else None,
            ) from exc
        except (ConnectionFailedError, DeadlineExceededError) as exc:
            raise AppViewUnavailable(
                where, f"{method}: {exc.reason}", method=method
            ) from exc
        except (ResponseTooLargeError, ResponseFormatError) as exc:
            raise AppViewResponseError(where, exc.reason, method=method) from exc
        except HttpStatusError as exc:  # pragma: no cover - raised only inside retry
            raise AppViewUnavailable(where, exc.reason, method=method) from exc
        except NetworkError:
            raise  # a refused redirect: the server's fault, named by its rule
        if answer.status == 200:
            return answer
        name, message = self._error_body(answer)
        if answer.status in _NOT_RETRIED or (
            answer.status == 404
            and name is None
            and (message is None or message == "Not Found")
        ):
            # no AppView method answered: the URL is likely not the base
            raise AppViewUnavailable(
                where,
                f"{method}: HTTP {answer.status}, the server does not serve this "
                f"method; {URL_HINT}",
                method=method,
                status=answer.status,
            )
        if answer.status == 429 or answer.status >= 500:  # pragma: no cover - retried
            raise AppViewUnavailable(
                where,
                f"{method}: HTTP {answer.status}",
                method=method,
                status=answer.status,
            )
        cls = (
            AppViewNotFound
            if (name or "").endswith("NotFound")
            or (answer.status == 404 and name is None)
            else AppViewQueryError
        )
        raise cls(
            where, method=method, status=answer.status, error=name, message=message
        )

    @staticmethod
    def _error_body(answer: Fetched) -> tuple[str | None, str | None]:
        """``(error, message)`` of an XRPC error body; atdata-app's FastAPI
        ``{"detail": text}`` gives the message. Anything else gives ``None``s."""
        try:
            data = answer.json()
        except ResponseFormatError:
            return None, None
        if not isinstance(data, dict):
            return None, None
        name = error_name(data.get("error"))
        message = data.get("message")
        if not isinstance(message, str):
            detail = data.get("detail")
            message = detail if isinstance(detail, str) else None
        return name, clean_text(message) if message else None

    @staticmethod
    def _params(model: type[LexParams], method: str, **values: Any) -> LexParams:
        """``model`` from the given (non-``None``) values; a ``ValueError`` naming
        the method and each bad parameter's wire name."""
        try:
            return model(**{k: v for k, v in values.items() if v is not None})
        except pydantic.ValidationError as exc:
            wire = {
                name: str(f.serialization_alias or name)
                for name, f in model.model_fields.items()
            }
            raise ValueError(
                f"{method}: invalid parameters: {_problems(exc, wire)}"
            ) from None

    def _iter(
        self,
        page: Any,
        items: str,
        max_pages: int,
        method: str,
    ) -> Iterator[Any]:
        """Items of successive pages (``page(cursor) -> output``), at most
        ``max_pages`` pages; a repeated cursor ends with AppViewResponseError."""
        cursor: str | None = None
        seen: set[str] = set()
        for _ in range(max_pages):
            out = page(cursor)
            yield from getattr(out, items)
            cursor = out.cursor
            if not cursor or not getattr(out, items):
                return
            if cursor in seen:
                raise AppViewResponseError(
                    self._where(method), f"{method} repeated a cursor", method=method
                )
            seen.add(cursor)

    # -- queries -----------------------------------------------------------------
    def describe_service(self) -> describe_service.DescribeServiceOutput:
        """``describeService``: the AppView's DID, collections and counts."""
        return self.call(
            f"{_NS}.describeService", None, describe_service.DescribeServiceOutput
        )

    def get_entry(self, uri: str) -> defs.EntryView:
        """``getEntry``: one entry by AT-URI (``AppViewNotFound`` when unknown)."""
        method = f"{_NS}.getEntry"
        params = self._params(get_entry.GetEntryParams, method, uri=uri)
        return self.call(method, params, get_entry.GetEntryOutput).entry

    def get_entries(self, uris: Sequence[str]) -> list[defs.EntryView]:
        """``getEntries``: up to 25 entries by AT-URI (those found)."""
        method = f"{_NS}.getEntries"
        params = self._params(get_entries.GetEntriesParams, method, uris=list(uris))
        return self.call(method, params, get_entries.GetEntriesOutput).entries

    def get_schema(self, uri: str) -> defs.SchemaView:
        """``getSchema``: one schema record by AT-URI."""
        method = f"{_NS}.getSchema"
        params = self._params(get_schema.GetSchemaParams, method, uri=uri)
        return self.call(method, params, defs.SchemaView)

    def list_entries(
        self,
        *,
        repo: str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> list_entries.ListEntriesOutput:
        """``listEntries``: one page of entries (of ``repo``, a DID or handle)."""
        method = f"{_NS}.listEntries"
        params = self._params(
            list_entries.ListEntriesParams,
            method,
            repo=repo,
            limit=limit,
            cursor=cursor,
        )
        return self.call(method, params, list_entries.ListEntriesOutput)

    def list_schemas(
        self,
        *,
        repo: str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> list_schemas.ListSchemasOutput:
        """``listSchemas``: one page of schema records."""
        method = f"{_NS}.listSchemas"
        params = self._params(
            list_schemas.ListSchemasParams,
            method,
            repo=repo,
            limit=limit,
            cursor=cursor,
        )
        return self.call(method, params, list_schemas.ListSchemasOutput)

    def list_lenses(
        self,
        *,
        repo: str | None = None,
        source_schema: str | None = None,
        target_schema: str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> list_lenses.ListLensesOutput:
        """``listLenses``: one page of lens records, by repository and schemas."""
        method = f"{_NS}.listLenses"
        params = self._params(
            list_lenses.ListLensesParams,
            method,
            repo=repo,
            source_schema=source_schema,
            target_schema=target_schema,
            limit=limit,
            cursor=cursor,
        )
        return self.call(method, params, list_lenses.ListLensesOutput)

    def search_datasets(
        self,
        q: str | None = None,
        *,
        tags: Sequence[str] | None = None,
        schema_ref: str | None = None,
        schema: str | None = None,
        repo: str | None = None,
        storage: str | None = None,
        license: str | None = None,
        sort: str | None = None,
        facets: bool | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> search_datasets.SearchDatasetsOutput:
        """``searchDatasets``: one page of entries matching text ``q`` and the
        filters (tags all present, ``schema_ref`` AT-URI, ``schema`` name
        [``@RANGE``], ``repo``, ``storage`` kind, ``license``), ordered by
        ``sort`` (``relevance``, ``recent``, ``size``); ``facets`` asks for counts."""
        method = f"{_NS}.searchDatasets"
        params = self._params(
            search_datasets.SearchDatasetsParams,
            method,
            q=q,
            tags=list(tags) if tags else None,
            schema_ref=schema_ref,
            schema_=schema,
            repo=repo,
            storage=storage,
            license_=license,
            sort=sort,
            facets=facets,
            limit=limit,
            cursor=cursor,
        )
        return self.call(method, params, search_datasets.SearchDatasetsOutput)

    def iter_search_datasets(
        self, q: str | None = None, *, max_pages: int = MAX_PAGES, **filters: Any
    ) -> Iterator[defs.EntryView]:
        """Every entry of :meth:`search_datasets` over at most ``max_pages``
        pages (``filters`` as that method's keywords, ``cursor`` excluded)."""
        method = f"{_NS}.searchDatasets"
        return self._iter(
            lambda c: self.search_datasets(q, cursor=c, **filters),
            "entries",
            max_pages,
            method,
        )

    def iter_entries(
        self,
        *,
        repo: str | None = None,
        limit: int | None = 100,
        max_pages: int = MAX_PAGES,
    ) -> Iterator[defs.EntryView]:
        """Every entry of :meth:`list_entries`, at most ``max_pages`` pages."""
        return self._iter(
            lambda c: self.list_entries(repo=repo, limit=limit, cursor=c),
            "entries",
            max_pages,
            f"{_NS}.listEntries",
        )

    def iter_schemas(
        self,
        *,
        repo: str | None = None,
        limit: int | None = 100,
        max_pages: int = MAX_PAGES,
    ) -> Iterator[defs.SchemaView]:
        """Every schema of :meth:`list_schemas`, at most ``max_pages`` pages."""
        return self._iter(
            lambda c: self.list_schemas(repo=repo, limit=limit, cursor=c),
            "schemas",
            max_pages,
            f"{_NS}.listSchemas",
        )

    def search_lenses(
        self,
        *,
        source_schema: str | None = None,
        target_schema: str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> search_lenses.SearchLensesOutput:
        """``searchLenses``: lenses by source and target schema AT-URI."""
        method = f"{_NS}.searchLenses"
        params = self._params(
            search_lenses.SearchLensesParams,
            method,
            source_schema=source_schema,
            target_schema=target_schema,
            limit=limit,
            cursor=cursor,
        )
        return self.call(method, params, search_lenses.SearchLensesOutput)

    def get_schema_history(
        self, name: str, *, repo: str | None = None, limit: int | None = None
    ) -> get_schema_history.GetSchemaHistoryOutput:
        """``getSchemaHistory``: every version of schema ``name`` (of ``repo``,
        needed when several publishers use the name: ``AmbiguousName``), oldest
        first, with the compatibility verdicts between consecutive versions."""
        method = f"{_NS}.getSchemaHistory"
        params = self._params(
            get_schema_history.GetSchemaHistoryParams,
            method,
            name=name,
            repo=repo,
            limit=limit,
        )
        return self.call(method, params, get_schema_history.GetSchemaHistoryOutput)

    def get_lens_path(
        self, source_schema: str, target_schema: str, *, max_steps: int | None = None
    ) -> get_lens_path.GetLensPathOutput:
        """``getLensPath``: the shortest lens chain between two schema records."""
        method = f"{_NS}.getLensPath"
        params = self._params(
            get_lens_path.GetLensPathParams,
            method,
            source_schema=source_schema,
            target_schema=target_schema,
            max_steps=max_steps,
        )
        return self.call(method, params, get_lens_path.GetLensPathOutput)

    def resolve_schema(
        self, handle: str, schema_id: str, version: str | None = None
    ) -> resolve_schema.ResolveSchemaOutput:
        """``resolveSchema``: the schema record ``schema_id`` of ``handle`` (a
        handle or DID) at ``version`` (exact; latest when ``None``)."""
        method = f"{_NS}.resolveSchema"
        params = self._params(
            resolve_schema.ResolveSchemaParams,
            method,
            handle=handle,
            schema_id=schema_id,
            version=version,
        )
        return self.call(method, params, resolve_schema.ResolveSchemaOutput)

    def resolve_label(
        self, handle: str, name: str, version: str | None = None
    ) -> resolve_label.ResolveLabelOutput:
        """``resolveLabel``: the entry a label ``name`` of ``handle`` names
        (``version`` exact; newest when ``None``)."""
        method = f"{_NS}.resolveLabel"
        params = self._params(
            resolve_label.ResolveLabelParams,
            method,
            handle=handle,
            name=name,
            version=version,
        )
        return self.call(method, params, resolve_label.ResolveLabelOutput)
