"""Every read the AppView serves: parameterized SQL over the index tables
(:mod:`atdata_appview.schema`), rows turned into views (:mod:`atdata_appview.views`).

Used by the XRPC router (:mod:`atdata_appview.xrpc`) and the web pages. Every
function takes ``db``: an asyncpg connection or pool (anything with ``fetch`` /
``fetchrow`` / ``fetchval``); SQL text is built only from constants, every value
is a ``$n`` parameter.

Rules that hold for every query here:

- records of an account whose ``appview_accounts.active`` is false (deactivated,
  suspended, …) are never returned, nor shown through another record (an entry's
  schema name, a filter by schema, a facet, a lens's verification count);
  deleted/taken-down accounts are purged by the indexer;
- lists are newest first by when each record was first indexed
  (``first_indexed_at``: an update between two pages moves nothing),
  keyset-paginated (``cursors``: opaque, bound to the query's filters; never
  ``OFFSET``); a page has a ``cursor`` only when a next page may exist; a page
  holds at most ``limit`` rows and :data:`MAX_PAGE_BYTES` of views (its first
  row always), a short page is therefore not always the last;
- a ``repo`` / ``handle`` argument is a DID or a handle; handles resolve through
  ``appview_accounts.verified_handle`` (a handle an account's events claimed and
  :mod:`.handles` verified both ways on the network; a claim alone resolves
  nothing), no network call; an unknown handle is :class:`QueryError`
  ``RepoNotFound``. Views show the verified handle only.

Errors are :class:`QueryError` with the Lexicon error name and an HTTP status (the
router serves them in XRPC's shape).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as _dt
import logging
import re
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Sequence
from typing import Any, Final

import asyncpg
import asyncpg.pool
import orjson
from atdata_runtime.lex.formats import is_did, is_handle

from . import cursors, vocabulary
from . import views as _v

__all__ = [
    "FACET_LIMIT",
    "Page",
    "Profile",
    "QueryError",
    "SearchPage",
    "SearchQuery",
    "VersionRange",
    "describe_service",
    "entries_of_schema",
    "get_entries",
    "get_entry_view",
    "get_schema_view",
    "labels_of_entry",
    "lens_path",
    "lens_view",
    "lenses_of_schemas",
    "list_entries",
    "list_lenses",
    "list_schemas",
    "list_schemas_of",
    "lookup_did",
    "parse_at_uri",
    "parse_schema_filter",
    "parse_version_range",
    "profile",
    "resolve_did",
    "resolve_label",
    "resolve_schema",
    "schema_history",
    "search_entries",
    "search_lenses",
]

Db = Any  # asyncpg.Connection | asyncpg.Pool (asyncpg is untyped)

log = logging.getLogger(__name__)

FACET_LIMIT: Final = 20
"""Values per facet (most frequent first)."""

MAX_GET_ENTRIES: Final = 25
"""Most AT-URIs of one getEntries call (its Lexicon's ``maxLength``)."""

ENTRY_NSID: Final = "science.alt.dataset.entry"
SCHEMA_NSID: Final = "science.alt.dataset.schema"
LENS_NSID: Final = "science.alt.dataset.lens"
LABEL_NSID: Final = "science.alt.dataset.label"

_INT_MAX: Final = 2**31 - 1
_EPOCH: Final = _dt.datetime(1970, 1, 1, tzinfo=_dt.UTC)

# Records of accounts not known inactive (absent from appview_accounts = active).
_ACTIVE: Final = (
    "NOT EXISTS (SELECT 1 FROM appview_accounts x WHERE x.did = {t}.did "
    "AND NOT x.active)"
)


class QueryError(Exception):
    """A query refused: ``name`` is the XRPC error name (``InvalidRequest`` or a
    Lexicon error such as ``RepoNotFound``, ``InvalidCursor``, ``EntryNotFound``),
    ``status`` the HTTP status (400, or 404 for the not-found errors, as
    atdata-app 0.4 answers them), ``message`` a text for people."""

    def __init__(self, name: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.name = name
        self.message = message
        self.status = status


@dataclasses.dataclass(frozen=True, slots=True)
class Page:
    """One page of views: ``items`` (view dicts), ``cursor`` of the next page or
    ``None`` on the last."""

    items: list[dict[str, Any]]
    cursor: str | None


@dataclasses.dataclass(frozen=True, slots=True)
class SearchPage:
    """A page of searchDatasets: ``entries`` (entry views, best first), ``cursor``
    (next page or ``None``), ``facets`` (``{"tags", "schemas", "storage",
    "licenses"}`` → ``[{"value", "count"}]``, over all matches; ``None`` unless
    asked for)."""

    entries: list[dict[str, Any]]
    cursor: str | None
    facets: dict[str, list[dict[str, Any]]] | None


@dataclasses.dataclass(frozen=True, slots=True)
class Profile:
    """A publisher: ``did``, ``handle`` (when known), ``active``/``status`` (from
    ``#account`` events; ``status`` None when active), and ``counts`` of its
    indexed records (``schemas``, ``entries``, ``lenses``, ``labels``)."""

    did: str
    handle: str | None
    active: bool
    status: str | None
    counts: dict[str, int]


@dataclasses.dataclass(frozen=True, slots=True)
class SearchQuery:
    """The parameters of searchDatasets (its Lexicon): ``q`` text; ``tags`` (all
    must match); ``schema_ref`` (AT-URI); ``schema`` (``NAME``, ``NAME@RANGE`` or
    ``@handle/NAME@RANGE``, see :func:`parse_schema_filter`); ``repo`` (DID or
    handle); ``storage`` kind; ``license``; ``sort`` ``relevance`` | ``recent`` |
    ``size``; ``facets``; ``limit`` 1-100; ``cursor``."""

    q: str | None = None
    tags: tuple[str, ...] = ()
    schema_ref: str | None = None
    schema: str | None = None
    repo: str | None = None
    storage: str | None = None
    license: str | None = None
    sort: str = "relevance"
    facets: bool = False
    limit: int = 25
    cursor: str | None = None

    @classmethod
    def from_params(cls, params: Any) -> SearchQuery:
        """From a validated ``SearchDatasetsParams``."""
        return cls(
            q=params.q,
            tags=tuple(params.tags or ()),
            schema_ref=params.schema_ref,
            schema=params.schema_,
            repo=params.repo,
            storage=params.storage,
            license=params.license_,
            sort=params.sort,
            facets=params.facets,
            limit=params.limit,
            cursor=params.cursor,
        )


# --------------------------------------------------------------------------------
# identifiers


def parse_at_uri(uri: str) -> tuple[str, str, str]:
    """``at://AUTHORITY/COLLECTION/RKEY`` → ``(authority, collection, rkey)``;
    ``QueryError`` InvalidRequest when the URI does not name a record."""
    if not uri.startswith("at://"):
        raise QueryError("InvalidRequest", "not an AT-URI (at://…)")
    parts = uri[5:].split("#", 1)[0].split("/")
    if len(parts) != 3 or not all(parts):
        raise QueryError(
            "InvalidRequest", "AT-URI must name a record: at://DID/COLLECTION/RKEY"
        )
    return parts[0], parts[1], parts[2]


async def lookup_did(db: Db, repo: str) -> str | None:
    """The DID of ``repo`` (a DID, returned as is, or a handle, looked up in
    ``appview_accounts.verified_handle``, case-insensitively: the account whose
    handle :mod:`.handles` verified, never a mere claim); ``None`` when no
    account has the handle verified or ``repo`` is neither."""
    if repo.startswith("did:"):
        return repo if is_did(repo) else None
    if not is_handle(repo):
        return None
    did: str | None = await db.fetchval(
        "SELECT did FROM appview_accounts WHERE verified_handle = $1 "
        "ORDER BY updated_at DESC LIMIT 1",
        repo.lower(),
    )
    return did


async def resolve_did(db: Db, repo: str) -> str:
    """As :func:`lookup_did`, but an unknown handle is ``QueryError``
    ``RepoNotFound`` (400, as atdata-app answers an unresolvable handle)."""
    did = await lookup_did(db, repo)
    if did is None:
        raise QueryError("RepoNotFound", f"repository not found: {repo[:253]}")
    return did


async def _record_key(db: Db, uri: str, collection: str) -> tuple[str, str] | None:
    # (did, rkey) of a record AT-URI of ``collection``; the authority may be a handle.
    authority, coll, rkey = parse_at_uri(uri)
    if coll != collection:
        return None
    did = await lookup_did(db, authority)
    if did is None:
        return None
    return did, rkey


# --------------------------------------------------------------------------------
# versions


@dataclasses.dataclass(frozen=True, slots=True)
class VersionRange:
    """Versions ``lo <= (major, minor, patch) < hi`` whose prerelease is
    ``prerelease`` (``""``: releases only, what every range but an exact
    prerelease version means, as npm's semver ranges do)."""

    lo: tuple[int, int, int]
    hi: tuple[int, int, int]
    prerelease: str = ""

    def contains(self, major: int, minor: int, patch: int, prerelease: str) -> bool:
        """Whether this range holds a version."""
        return self.lo <= (major, minor, patch) < self.hi and (
            prerelease == self.prerelease
        )


ANY_VERSION: Final = VersionRange((0, 0, 0), (_INT_MAX, 0, 0))

_NUM: Final = r"(?:0|[1-9][0-9]{0,8})"
_PARTIAL_RE: Final = re.compile(
    rf"(?P<op>\^|~|>=|<=|>|<|=)?v?(?P<major>{_NUM})(?:\.(?P<minor>{_NUM}|[xX*]))?"
    rf"(?:\.(?P<patch>{_NUM}|[xX*]))?(?:-(?P<pre>[0-9A-Za-z.-]{{1,80}}))?"
    r"(?:\+[0-9A-Za-z.-]{1,80})?"
)


def parse_version_range(text: str) -> VersionRange:
    """A semver range: ``*`` / ``x`` (any), an exact version ``1.2.3`` (or
    ``1.2.3-rc.1``), a partial version ``1`` / ``1.2`` (``1.x``), caret ``^1``,
    ``^1.2``, ``^0.2.3`` (no change of the leftmost non-zero part), tilde ``~1.2``
    (patch changes), or one comparator ``>=1.2``, ``>1.2.3``, ``<2``, ``<=1.4``.
    ``QueryError`` InvalidRequest for anything else."""
    text = text.strip()
    if text in ("", "*", "x", "X"):
        return ANY_VERSION
    m = _PARTIAL_RE.fullmatch(text)
    if m is None:
        raise QueryError("InvalidRequest", f"not a version range: {text[:40]!r}")
    op = m.group("op") or ""
    major = int(m.group("major"))
    minor_s, patch_s, pre = m.group("minor"), m.group("patch"), m.group("pre") or ""
    minor = None if minor_s is None or not minor_s.isdigit() else int(minor_s)
    patch = None if patch_s is None or not patch_s.isdigit() else int(patch_s)
    if minor is None and patch is not None:
        raise QueryError("InvalidRequest", f"not a version range: {text[:40]!r}")
    if pre and (minor is None or patch is None or op not in ("", "=")):
        raise QueryError(
            "InvalidRequest", "a prerelease is only matched exactly (1.2.3-rc.1)"
        )
    full = (major, minor or 0, patch or 0)
    if minor is None:
        nxt = (major + 1, 0, 0)
    elif patch is None:
        nxt = (major, minor + 1, 0)
    else:
        nxt = (major, minor, patch + 1)
    if op in ("", "="):
        return VersionRange(full, nxt, pre)
    if op == "^":
        if major > 0 or minor is None:
            hi = (major + 1, 0, 0)
        elif minor > 0 or patch is None:
            hi = (0, minor + 1, 0)
        else:
            hi = (0, 0, (patch or 0) + 1)
        return VersionRange(full, hi)
    if op == "~":
        hi = (major + 1, 0, 0) if minor is None else (major, minor + 1, 0)
        return VersionRange(full, hi)
    if op == ">=":
        return VersionRange(full, ANY_VERSION.hi)
    if op == ">":
        return VersionRange(nxt, ANY_VERSION.hi)
    if op == "<":
        return VersionRange((0, 0, 0), full)
    return VersionRange((0, 0, 0), nxt)  # <=


def parse_schema_filter(text: str) -> tuple[str | None, str, VersionRange]:
    """``NAME``, ``NAME@RANGE`` or ``@HANDLE/NAME[@RANGE]`` → ``(handle or DID or
    None, name, range)``."""
    publisher: str | None = None
    if text.startswith("@"):
        head, sep, text = text[1:].partition("/")
        if not sep or not head:
            raise QueryError("InvalidRequest", "schema must be @HANDLE/NAME[@RANGE]")
        publisher = head
    name, sep, spec = text.partition("@")
    if not name:
        raise QueryError("InvalidRequest", "schema name is empty")
    return publisher, name, parse_version_range(spec) if sep else ANY_VERSION


# --------------------------------------------------------------------------------
# searchDatasets

WINDOW: Final = 300
"""Relevance ranks the :data:`WINDOW` most recently (first) indexed matches (all
of them when there are fewer): ranking is per row (``ts_rank_cd`` reads every
position of every match), so a term that half the index contains would otherwise
cost a pass over half the index per page. The last relevance page is the last of
the window: a text with more matches than that pages through the newest
:data:`WINDOW` of them, best first, and ends (no ``cursor``) without saying
more exist; ``sort=recent`` with the same text reaches every match."""

MAX_PAGE_BYTES: Final = 4 * 1024 * 1024
"""Most bytes of the views of one page (counted as :data:`views.ENTRY_BYTES`
and its kin say: the large fields and a bound of the rest). A page holds at most
``limit`` rows and stops before the row that would take it past this budget (its
first row always; a record is at most 1 MiB, ``records.MAX_RECORD_BYTES``), with
the ``cursor`` at its last row: a short page is not the last, and every row is
still reached once."""

FACET_TTL_SECONDS: float = 30.0
"""Facet counts of one query (its filters) are reused for this long (seconds),
unless an account became inactive (deleted, taken down, deactivated, …) or active
again since they were counted (:data:`_ACCOUNTS_MARK_SQL`)."""

FACET_TIMEOUT_MS: int = 300
"""Longest time the facet counts of one query may take (PostgreSQL
``statement_timeout``, milliseconds): past it the page is answered without
``facets`` (the Lexicon's ``facets`` is optional), and the same query is not
counted again for :data:`FACET_TTL_SECONDS`."""

FACET_CACHE_SIZE: Final = 512

FIXES_MAX_CHARS: Final = 160
"""Longest text of the typo corrections a relevance cursor carries (the
cursor stays short): a text with more corrections than fit
is searched with those that fit, on every page alike."""

_facet_cache: OrderedDict[
    bytes, tuple[float, Any, dict[str, list[dict[str, Any]]] | None]
] = OrderedDict()
"""Query key → (when counted, accounts mark then, facets or ``None``: too slow)."""

# The page query's sort keys, all DESC: sort -> (cursor kind, key columns of the
# ranked/ordered subquery ``t``, the cursor's value types). A relevance cursor
# also carries the time its first page was asked (``asof``: the window is pinned
# to what was indexed by then); every cursor carries the first page's typo
# corrections (``fixes``, last: "" without text).
_SORTS: Final[dict[str, tuple[str, tuple[str, ...], tuple[type, ...]]]] = {
    "relevance": (
        "s.rel",
        ("score", "first_indexed_at", "did", "rkey", "asof", "fixes"),
        (float, int, str, str, int, str),
    ),
    "recent": (
        "s.rec",
        ("first_indexed_at", "did", "rkey", "fixes"),
        (int, str, str, str),
    ),
    "size": ("s.size", ("size_key", "did", "rkey", "fixes"), (int, str, str, str)),
}
_TIMES: Final = frozenset({"first_indexed_at", "asof"})
# The order of each sort over a page query's output columns.
_ORDERS: Final = {
    "relevance": "score DESC, first_indexed_at DESC, did DESC, rkey DESC",
    "recent": "first_indexed_at DESC, did DESC, rkey DESC",
    "size": "size_key DESC, did DESC, rkey DESC",
}


def _micros(value: _dt.datetime) -> int:
    delta = value - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _from_micros(value: int) -> _dt.datetime:
    try:
        return _EPOCH + _dt.timedelta(microseconds=value)
    except OverflowError:
        raise cursors.InvalidCursor("cursor timestamp out of range") from None


class _Sql:
    """A WHERE clause under construction: conditions with ``$n`` parameters."""

    def __init__(self) -> None:
        self.where: list[str] = []
        self.args: list[Any] = []

    def arg(self, value: Any) -> str:
        self.args.append(value)
        return f"${len(self.args)}"


def _bounded(text: str, order: str, size: str) -> str:
    # ``text`` (a page query whose rows come in ``order``, over its output
    # columns) cut to MAX_PAGE_BYTES: each row's bytes (``size`` over the
    # columns of ``{q}``), their running total ``_upto``. Kept: the rows within
    # the budget (the first always) and the one after them, which tells that a
    # next page exists (see _cut). ``OFFSET 0`` keeps ``text`` a subquery of its
    # own, so that its columns (the storage text) are computed once.
    return (
        f"SELECT * FROM (SELECT q.*, sum(q._bytes) OVER w AS _upto, "
        f"row_number() OVER w AS _n FROM (SELECT p.*, {size.format(q='p')} AS _bytes "
        f"FROM ({text} OFFSET 0) p) q "
        f"WINDOW w AS (ORDER BY {order} ROWS UNBOUNDED PRECEDING)) b "
        f"WHERE b._n <= 2 OR b._upto - b._bytes <= {MAX_PAGE_BYTES} ORDER BY {order}"
    )


def _cut(rows: Sequence[Any], limit: int) -> tuple[list[Any], bool]:
    # The rows of a page (at most ``limit``, within MAX_PAGE_BYTES but the first)
    # and whether a next page exists, from the rows of a _bounded query.
    out: list[Any] = []
    for row in rows:
        if len(out) >= limit or (out and row["_upto"] > MAX_PAGE_BYTES):
            return out, True
        out.append(row)
    return out, False


_ACTIVE_SCHEMA: Final = _ACTIVE.format(t="ss")


async def _search_filters(db: Db, query: SearchQuery, sql: _Sql) -> None:
    # Adds the filters of ``query`` (not the text, not the cursor) to ``sql``.
    if query.tags:
        sql.where.append(f"e.tags @> {sql.arg(list(query.tags))}::text[]")
    if query.schema_ref:
        sql.where.append(f"e.schema_ref = {sql.arg(query.schema_ref)}")
    if query.schema:
        publisher, name, rng = parse_schema_filter(query.schema)
        cond = (
            f"ss.name = {sql.arg(name)} "
            f"AND (ss.major, ss.minor, ss.patch) >= "
            f"({sql.arg(rng.lo[0])}, {sql.arg(rng.lo[1])}, {sql.arg(rng.lo[2])}) "
            f"AND (ss.major, ss.minor, ss.patch) < "
            f"({sql.arg(rng.hi[0])}, {sql.arg(rng.hi[1])}, {sql.arg(rng.hi[2])}) "
            f"AND ss.prerelease = {sql.arg(rng.prerelease)} AND {_ACTIVE_SCHEMA}"
        )
        if publisher is not None:
            cond += f" AND ss.did = {sql.arg(await resolve_did(db, publisher))}"
        sql.where.append(
            f"e.schema_ref IN (SELECT ss.uri FROM appview_schemas ss WHERE {cond})"
        )
    if query.repo:
        sql.where.append(f"e.did = {sql.arg(await resolve_did(db, query.repo))}")
    if query.storage:
        sql.where.append(f"e.storage_kind = {sql.arg(query.storage)}")
    if query.license:
        sql.where.append(f"e.license = {sql.arg(query.license)}")
    sql.where.append(_ACTIVE.format(t="e"))


def _search_fingerprint(query: SearchQuery, text: str | None, sort: str) -> bytes:
    return cursors.fingerprint(
        "searchDatasets",
        text,
        sorted(set(query.tags)),
        query.schema_ref,
        query.schema,
        query.repo,
        query.storage,
        query.license,
        sort,
    )


def _tsquery(
    sql: _Sql, text: str, expansions: Sequence[tuple[str, Sequence[str]]]
) -> str:
    # websearch_to_tsquery of the text, each unknown word OR-ed with its
    # corrections (ts_rewrite, one per word).
    expr = f"websearch_to_tsquery('english', {sql.arg(text)})"
    for word, fixes in expansions:
        target = f"plainto_tsquery('english', {sql.arg(word)})"
        alts = " || ".join(
            [target] + [f"plainto_tsquery('english', {sql.arg(f)})" for f in fixes]
        )
        expr = f"ts_rewrite({expr}, {target}, {alts})"
    return expr


Fixes = list[tuple[str, tuple[str, ...]]]

_FIX_WORD: Final = re.compile(r"[^\W_]{3,80}")  # a vocabulary word's shape


def _fixes_text(fixes: Fixes) -> str:
    # "word:fix,fix;word:fix" (words and corrections are letters and digits)
    return ";".join(f"{word}:{','.join(alts)}" for word, alts in fixes)


def _fit_fixes(fixes: Fixes) -> Fixes:
    # The corrections that fit a cursor (FIXES_MAX_CHARS), in order.
    out: Fixes = []
    for word, alts in fixes:
        kept: list[str] = []
        for alt in alts:
            if len(_fixes_text([*out, (word, (*kept, alt))])) > FIXES_MAX_CHARS:
                break
            kept.append(alt)
        if not kept:
            break
        out.append((word, tuple(kept)))
    return out


def _parse_fixes(text: str, value: str) -> Fixes:
    # A cursor's corrections, checked: each for a word of ``text``, once, with
    # 1..MAX_CORRECTIONS words of the vocabulary's shape.
    if not value:
        return []
    bad = cursors.InvalidCursor("cursor corrections are not this query's")
    if len(value) > FIXES_MAX_CHARS:
        raise bad
    words = set(vocabulary.query_words(text))
    out: Fixes = []
    for part in value.split(";"):
        word, sep, rest = part.partition(":")
        alts = tuple(rest.split(",")) if rest else ()
        if (
            not sep
            or word not in words
            or any(word == w for w, _ in out)
            or not 1 <= len(alts) <= vocabulary.MAX_CORRECTIONS
            or not all(_FIX_WORD.fullmatch(a) for a in alts)
        ):
            raise bad
        out.append((word, alts))
    return out


_INDEXABLE_SQL: Final = "SELECT querytree(websearch_to_tsquery('english', $1))"


async def _check_text(conn: Any, text: str) -> None:
    # A text whose only words are exclusions ("-word": websearch's NOT) would
    # match every entry through no index (querytree says "T": nothing
    # indexable), and its facets would count them all.
    if "-" not in text:
        return
    tree = await conn.fetchval(_INDEXABLE_SQL, text)
    if tree == "T":
        raise QueryError(
            "InvalidRequest",
            "q has only exclusions (-word): add a word to search for, or leave q "
            "out to list every entry",
        )


_CUSTOM_PLANS: Final = "SET plan_cache_mode = force_custom_plan"


@contextlib.asynccontextmanager
async def _planned(db: Db) -> AsyncIterator[Any]:
    # One connection planning every statement for its actual parameters: how
    # selective a text or tag filter is decides between the inverted index and the
    # ordered one, and a cached generic plan cannot know. On a pooled connection
    # (asyncpg resets the session when it goes back: RESET ALL) a session SET, one
    # round trip; on a caller's own connection, SET LOCAL in a transaction.
    if hasattr(db, "acquire"):
        async with db.acquire() as conn:
            await conn.execute(_CUSTOM_PLANS)
            yield conn
    elif isinstance(db, asyncpg.pool.PoolConnectionProxy):
        await db.execute(_CUSTOM_PLANS)
        yield db
    else:
        async with db.transaction(readonly=True):
            await db.execute("SET LOCAL plan_cache_mode = force_custom_plan")
            yield db


async def search_entries(db: Db, query: SearchQuery, *, pool: Any = None) -> SearchPage:
    """searchDatasets: entries matching ``query`` (see :class:`SearchQuery`).

    Matching: with text, PostgreSQL full text (``websearch_to_tsquery('english',
    q)`` over ``appview_entries.search``: name A, description B, tags C), each
    word of the text that no entry name contains OR-ed with the nearest name words
    by trigram similarity (:mod:`atdata_appview.vocabulary`), so "cel crops" finds
    "cell crops". Without text, every entry the filters keep. Only entries of
    active accounts (and schema names of active accounts' schemas).

    Order: ``relevance`` = ``ts_rank_cd`` (cover density) + pg_trgm
    ``word_similarity(q, name)``, then newest, over the :data:`WINDOW` most
    recently first-indexed matches (all of them when fewer; the last page of
    the window is the last page); without text it is ``recent``. ``recent``:
    newest first by when each entry was first indexed (``first_indexed_at``: an
    update between two pages moves nothing). ``size``: most ``size.bytes``
    first, unknown sizes last. Keyset pages of at most ``limit`` rows and
    :data:`MAX_PAGE_BYTES`. A cursor carries the first page's typo corrections
    (at most :data:`FIXES_MAX_CHARS`), so a vocabulary that changes between
    pages changes no page; a relevance cursor also pins the window to the rows
    first indexed before its first page. An entry updated between pages keeps
    its place, unless its text (so its score) or its size changed.

    ``facets``: top :data:`FACET_LIMIT` tags, schema names, storage kinds and
    licences over every match (not only the window), reused for
    :data:`FACET_TTL_SECONDS` while no account became inactive, counted within
    :data:`FACET_TIMEOUT_MS` (else ``None``: left out).

    ``pool``: where a background vocabulary reload takes its connection.

    Errors (``QueryError``): ``InvalidCursor`` (a cursor not issued for this
    query), ``RepoNotFound`` (unknown handle in ``repo`` or ``schema``),
    ``InvalidRequest`` (bad ``sort``, bad schema range, a text of exclusions
    only: ``-word``)."""
    text = (query.q or "").strip() or None
    sort = query.sort
    if sort not in _SORTS:
        raise QueryError(
            "InvalidRequest", "sort must be one of relevance, recent, size"
        )
    if sort == "relevance" and text is None:
        sort = "recent"
    kind, keys, types = _SORTS[sort]
    fp = _search_fingerprint(query, text, sort)
    key = cursors.decode(query.cursor, kind, types, fp) if query.cursor else None
    background = pool or (db if hasattr(db, "acquire") else None)
    async with _planned(db) as conn:
        sql = _Sql()
        fixes: Fixes = []
        if text is not None:
            await _check_text(conn, text)
            if key is not None:  # the first page's corrections, whatever the
                fixes = _parse_fixes(text, str(key[-1]))  # vocabulary is now
            else:
                vocab = await vocabulary.current(conn, background)
                fixes = _fit_fixes(vocab.expansions(text))
            tsq = _tsquery(sql, text, fixes)
            src = f"appview_entries e, (SELECT {tsq} AS tsq, {sql.arg(text)}::text AS q) qq"
            sql.where.append("e.search @@ qq.tsq")
        else:
            src = "appview_entries e"
        await _search_filters(conn, query, sql)
        where = " AND ".join(sql.where)
        facet_args = list(sql.args)
        rows = await conn.fetch(
            *_page_sql(sql, src, where, sort, key, query.limit, fuzzy=bool(fixes))
        )
        facets = (
            await _facets(
                conn,
                src,
                where,
                facet_args,
                fp + repr(vocabulary.database_key(conn)).encode(),
                background,
            )
            if query.facets
            else None
        )
    rows, more = _cut(rows, query.limit)
    cursor = None
    if more and rows:
        last = rows[-1]
        values: list[Any] = [
            _micros(last[k]) if k in _TIMES else last[k] for k in keys[:-1]
        ]
        cursor = cursors.encode(kind, [*values, _fixes_text(fixes)], fp)
    return SearchPage([_v.entry_view(r) for r in rows], cursor, facets)


# Relevance: cover density rank over name (A), description (B) and tags (C); when
# the text has words no name contains (typos), plus pg_trgm's word similarity of
# the text to the name, so the nearest names rank first among the corrections.
_SCORE: Final = "ts_rank_cd(w.search, w.tsq)::real"
_FUZZY_SCORE: Final = (
    "(ts_rank_cd(w.search, w.tsq) + word_similarity(w.q, w.name))::real"
)


def _page_sql(
    sql: _Sql,
    src: str,
    where: str,
    sort: str,
    key: list[Any] | None,
    limit: int,
    fuzzy: bool = False,
) -> tuple[Any, ...]:
    # The page query: candidate rows ``t`` (narrow: keys only) ordered and cut,
    # then joined to their full rows and views' joins, then cut to the page's
    # byte budget (_bounded).
    n = sql.arg(limit + 1)
    if sort == "relevance":
        asof = _from_micros(int(key[4])) if key else None
        window_where = where + (
            f" AND e.first_indexed_at <= {sql.arg(asof)}" if asof else ""
        )
        keyset = ""
        if key is not None:
            keyset = (
                f"WHERE (s.score, s.first_indexed_at, s.did, s.rkey) < ("
                f"{sql.arg(key[0])}::real, {sql.arg(_from_micros(int(key[1])))}, "
                f"{sql.arg(key[2])}, {sql.arg(key[3])})"
            )
        asof_col = sql.arg(asof) + "::timestamptz" if asof else "now()"
        t = (
            f"SELECT * FROM (SELECT w.did, w.rkey, w.first_indexed_at, "
            f"{_FUZZY_SCORE if fuzzy else _SCORE} AS score "
            f"FROM (SELECT e.did, e.rkey, e.first_indexed_at, e.search, e.name, "
            f"qq.tsq, qq.q FROM {src} WHERE {window_where} "
            f"ORDER BY e.first_indexed_at DESC, e.did DESC, e.rkey DESC "
            f"LIMIT {WINDOW}) w) s "
            f"{keyset} ORDER BY s.score DESC, s.first_indexed_at DESC, s.did DESC, "
            f"s.rkey DESC LIMIT {n}"
        )
        extra = f", t.score, {asof_col} AS asof"
    elif sort == "recent":
        keyset = ""
        if key is not None:
            keyset = (
                f" AND (e.first_indexed_at, e.did, e.rkey) < ("
                f"{sql.arg(_from_micros(int(key[0])))}, {sql.arg(key[1])}, "
                f"{sql.arg(key[2])})"
            )
        t = (
            f"SELECT e.did, e.rkey FROM {src} WHERE {where}{keyset} "
            f"ORDER BY e.first_indexed_at DESC, e.did DESC, e.rkey DESC LIMIT {n}"
        )
        extra = ""
    else:
        keyset = ""
        if key is not None:
            keyset = (
                f" AND (coalesce(e.size_bytes, -1), e.did, e.rkey) < ("
                f"{sql.arg(key[0])}::bigint, {sql.arg(key[1])}, {sql.arg(key[2])})"
            )
        t = (
            f"SELECT e.did, e.rkey, coalesce(e.size_bytes, -1) AS size_key "
            f"FROM {src} WHERE {where}{keyset} "
            f"ORDER BY coalesce(e.size_bytes, -1) DESC, e.did DESC, e.rkey DESC LIMIT {n}"
        )
        extra = ", t.size_key"
    order = _ORDERS[sort]
    text = (
        f"SELECT {_v.ENTRY_COLUMNS}{extra} FROM ({t}) t "
        f"JOIN appview_entries e ON e.did = t.did AND e.rkey = t.rkey "
        f"{_v.ENTRY_JOINS}"
    )
    return (_bounded(text, order, _v.ENTRY_BYTES), *sql.args)


_FACETS_SQL: Final = (
    "WITH m AS MATERIALIZED (SELECT e.tags, e.schema_ref, e.storage_kind, "
    "e.license FROM {src} WHERE {where}) "
    "(SELECT 'tags' AS facet, t AS value, count(*) AS n FROM m, unnest(m.tags) t "
    "GROUP BY t ORDER BY n DESC, t LIMIT {n}) "
    "UNION ALL (SELECT 'schemas', s.name, sum(r.n)::bigint AS n FROM "
    "(SELECT schema_ref, count(*) AS n FROM m GROUP BY schema_ref) r "
    "JOIN appview_schemas s ON s.uri = r.schema_ref AND {active} "
    "GROUP BY s.name ORDER BY n DESC, s.name LIMIT {n}) "
    "UNION ALL (SELECT 'storage', storage_kind, count(*) AS n FROM m "
    "GROUP BY storage_kind ORDER BY n DESC, storage_kind LIMIT {n}) "
    "UNION ALL (SELECT 'licenses', license, count(*) AS n FROM m "
    "WHERE license IS NOT NULL AND license <> '' "
    "GROUP BY license ORDER BY n DESC, license LIMIT {n})"
)

_ACCOUNTS_MARK_SQL: Final = (
    "SELECT count(*) AS n, coalesce(sum(hashtext(did)::bigint), 0) AS h "
    "FROM appview_accounts WHERE NOT active"
)
"""Which accounts are inactive, in one cheap value (an index-only scan of
``appview_accounts_inactive``): cached facets counted under another mark are not
reused, so a deleted, taken-down or deactivated account's tags and licences
leave them at once."""

FACET_STALE_SECONDS: float = 300.0
"""Facet counts older than :data:`FACET_TTL_SECONDS` but younger than this are
answered at once while a background task recounts them (when a pool is at hand
and the accounts mark has not moved)."""

_facet_refresh: dict[bytes, asyncio.Task[None]] = {}


async def _accounts_mark(db: Db) -> tuple[int, int]:
    row = await db.fetchrow(_ACCOUNTS_MARK_SQL)
    return int(row["n"]), int(row["h"])


async def _count_facets(
    db: Db, src: str, where: str, args: list[Any], key: bytes, mark: Any
) -> dict[str, list[dict[str, Any]]] | None:
    # The counts (or None: they took longer than FACET_TIMEOUT_MS), cached with
    # the accounts mark read before counting.
    sql = _FACETS_SQL.format(
        src=src, where=where, n=FACET_LIMIT, active=_ACTIVE.format(t="s")
    )
    out: dict[str, list[dict[str, Any]]] | None
    try:
        async with db.transaction(readonly=True):
            await db.execute(f"SET LOCAL statement_timeout = {int(FACET_TIMEOUT_MS)}")
            rows = await db.fetch(sql, *args)
    except asyncpg.QueryCanceledError:
        out = None
    else:
        out = {"tags": [], "schemas": [], "storage": [], "licenses": []}
        for row in rows:
            out[row["facet"]].append({"value": row["value"], "count": row["n"]})
    _facet_cache[key] = (time.monotonic(), mark, out)
    _facet_cache.move_to_end(key)
    while len(_facet_cache) > FACET_CACHE_SIZE:
        _facet_cache.popitem(last=False)
    return out


async def _refresh_facets(
    pool: Any, src: str, where: str, args: list[Any], key: bytes
) -> None:
    try:
        async with _planned(pool) as conn:
            mark = await _accounts_mark(conn)
            await _count_facets(conn, src, where, args, key, mark)
    except Exception:  # the stale counts keep answering; recounted next time
        log.warning("facet recount failed", exc_info=True)
    finally:
        _facet_refresh.pop(key, None)


async def _facets(
    db: Db, src: str, where: str, args: list[Any], key: bytes, pool: Any = None
) -> dict[str, list[dict[str, Any]]] | None:
    # Top FACET_LIMIT values of each facet over every match (one statement: the
    # matches are read once), or None when counting took too long; cached per
    # query and database for FACET_TTL_SECONDS, then answered stale while a
    # background recount runs (up to FACET_STALE_SECONDS); never reused once
    # the accounts mark moved.
    now = time.monotonic()
    mark = await _accounts_mark(db)
    hit = _facet_cache.get(key)
    if hit is not None and hit[1] == mark:
        age = now - hit[0]
        if age < FACET_TTL_SECONDS:
            _facet_cache.move_to_end(key)
            return hit[2]
        if pool is not None and age < FACET_STALE_SECONDS:
            if key not in _facet_refresh:
                _facet_refresh[key] = asyncio.create_task(
                    _refresh_facets(pool, src, where, list(args), key)
                )
            return hit[2]
    return await _count_facets(db, src, where, args, key, mark)


# --------------------------------------------------------------------------------
# entries


async def get_entry_view(db: Db, uri: str) -> dict[str, Any] | None:
    """getEntry: the entry view of ``uri`` (authority DID or known handle), or
    ``None`` when not indexed (or its account is inactive)."""
    key = await _record_key(db, uri, ENTRY_NSID)
    if key is None:
        return None
    row = await db.fetchrow(
        f"SELECT {_v.ENTRY_COLUMNS} FROM appview_entries e {_v.ENTRY_JOINS} "
        f"WHERE e.did = $1 AND e.rkey = $2 AND {_ACTIVE.format(t='e')}",
        *key,
    )
    return None if row is None else _v.entry_view(row)


async def get_entries(db: Db, uris: Sequence[str]) -> list[dict[str, Any]]:
    """getEntries: the entry views of ``uris`` (at most :data:`MAX_GET_ENTRIES`,
    else ``QueryError`` InvalidRequest) in the order asked, each once; URIs not
    indexed are left out. Views of more than :data:`MAX_PAGE_BYTES` in all are
    refused (``InvalidRequest``: ask for fewer at once); only the first of them
    is read then."""
    if len(uris) > MAX_GET_ENTRIES:
        raise QueryError(
            "InvalidRequest", f"at most {MAX_GET_ENTRIES} uris per getEntries"
        )
    dids: list[str] = []
    rkeys: list[str] = []
    order: list[tuple[str, str]] = []
    for uri in uris:
        key = await _record_key(db, uri, ENTRY_NSID)
        if key is not None and key not in order:
            order.append(key)
            dids.append(key[0])
            rkeys.append(key[1])
    if not order:
        return []
    size = _v.ENTRY_BYTES.format(q="p")
    rows = await db.fetch(
        f"SELECT * FROM (SELECT p.*, sum({size}) OVER () AS _total, "
        f"row_number() OVER () AS _n FROM (SELECT {_v.ENTRY_COLUMNS} "
        f"FROM unnest($1::text[], $2::text[]) AS k(did, rkey) "
        f"JOIN appview_entries e ON e.did = k.did AND e.rkey = k.rkey "
        f"{_v.ENTRY_JOINS} WHERE {_ACTIVE.format(t='e')} OFFSET 0) p) b "
        f"WHERE b._total <= {MAX_PAGE_BYTES} OR b._n = 1",
        dids,
        rkeys,
    )
    if rows and rows[0]["_total"] > MAX_PAGE_BYTES:
        raise QueryError(
            "InvalidRequest",
            f"the entries asked for are more than {MAX_PAGE_BYTES} bytes in all: "
            "ask for fewer at once",
        )
    found = {(r["did"], r["rkey"]): r for r in rows}
    return [_v.entry_view(found[k]) for k in order if k in found]


async def _list(
    db: Db,
    *,
    table: str,
    alias: str,
    columns: str,
    joins: str,
    view: Any,
    kind: str,
    filters: Sequence[tuple[str, Any]],
    limit: int,
    cursor: str | None,
    size: str,
) -> Page:
    # Newest first by first indexing, keyset (first_indexed_at, did, rkey) DESC
    # (an update between two pages moves nothing), pages cut to MAX_PAGE_BYTES
    # (``size``: a views.*_BYTES expression).
    sql = _Sql()
    for column, value in filters:
        sql.where.append(f"{alias}.{column} = {sql.arg(value)}")
    sql.where.append(_ACTIVE.format(t=alias))
    fp = cursors.fingerprint(kind, [v for _, v in filters], [c for c, _ in filters])
    if cursor:
        at, did, rkey = cursors.decode(cursor, kind, (int, str, str), fp)
        assert isinstance(at, int)
        sql.where.append(
            f"({alias}.first_indexed_at, {alias}.did, {alias}.rkey) < "
            f"({sql.arg(_from_micros(at))}, {sql.arg(did)}, {sql.arg(rkey)})"
        )
    text = (
        f"SELECT {columns} FROM {table} {alias} {joins} "
        f"WHERE {' AND '.join(sql.where)} "
        f"ORDER BY {alias}.first_indexed_at DESC, {alias}.did DESC, "
        f"{alias}.rkey DESC LIMIT {sql.arg(limit + 1)}"
    )
    rows = await db.fetch(_bounded(text, _ORDERS["recent"], size), *sql.args)
    rows, more = _cut(rows, limit)
    next_cursor = None
    if more and rows:
        last = rows[-1]
        next_cursor = cursors.encode(
            kind, [_micros(last["first_indexed_at"]), last["did"], last["rkey"]], fp
        )
    return Page([view(r) for r in rows], next_cursor)


async def list_entries(
    db: Db, *, repo: str | None = None, limit: int = 50, cursor: str | None = None
) -> Page:
    """listEntries: entry views, newest first (by when first indexed), of ``repo``
    (DID or handle; ``RepoNotFound``) or of everyone; pages of at most ``limit``
    and :data:`MAX_PAGE_BYTES`."""
    filters = [] if not repo else [("did", await resolve_did(db, repo))]
    return await _list(
        db,
        table="appview_entries",
        alias="e",
        columns=_v.ENTRY_COLUMNS,
        joins=_v.ENTRY_JOINS,
        view=_v.entry_view,
        kind="l.ent",
        filters=filters,
        limit=limit,
        cursor=cursor,
        size=_v.ENTRY_BYTES,
    )


async def entries_of_schema(
    db: Db, uri: str, *, limit: int = 50, cursor: str | None = None
) -> Page:
    """Entry views whose ``schemaRef`` is ``uri``, newest first (by when first
    indexed)."""
    return await _list(
        db,
        table="appview_entries",
        alias="e",
        columns=_v.ENTRY_COLUMNS,
        joins=_v.ENTRY_JOINS,
        view=_v.entry_view,
        kind="l.eos",
        filters=[("schema_ref", uri)],
        limit=limit,
        cursor=cursor,
        size=_v.ENTRY_BYTES,
    )


async def labels_of_entry(db: Db, uri: str, *, limit: int = 50) -> list[dict[str, Any]]:
    """Label views naming the entry ``uri`` (``datasetUri``), newest first."""
    rows = await db.fetch(
        f"SELECT {_v.LABEL_COLUMNS} FROM appview_labels b "
        f"LEFT JOIN appview_accounts acc ON acc.did = b.did "
        f"WHERE b.dataset_uri = $1 AND {_ACTIVE.format(t='b')} "
        f"ORDER BY b.created_at DESC NULLS LAST, b.indexed_at DESC LIMIT $2",
        uri,
        limit,
    )
    return [_v.label_view(r) for r in rows]


# --------------------------------------------------------------------------------
# schemas


async def get_schema_view(db: Db, uri: str) -> dict[str, Any] | None:
    """getSchema: the schema view of ``uri``, or ``None`` when not indexed."""
    key = await _record_key(db, uri, SCHEMA_NSID)
    if key is None:
        return None
    row = await db.fetchrow(
        f"SELECT {_v.SCHEMA_COLUMNS} FROM appview_schemas s {_v.SCHEMA_JOINS} "
        f"WHERE s.did = $1 AND s.rkey = $2 AND {_ACTIVE.format(t='s')}",
        *key,
    )
    return None if row is None else _v.schema_view(row)


async def list_schemas(
    db: Db, *, repo: str | None = None, limit: int = 50, cursor: str | None = None
) -> Page:
    """listSchemas: schema views, newest first (by when first indexed), of
    ``repo`` (DID or handle; ``RepoNotFound``) or of everyone; pages of at most
    ``limit`` and :data:`MAX_PAGE_BYTES`."""
    filters = [] if not repo else [("did", await resolve_did(db, repo))]
    return await _list(
        db,
        table="appview_schemas",
        alias="s",
        columns=_v.SCHEMA_COLUMNS,
        joins=_v.SCHEMA_JOINS,
        view=_v.schema_view,
        kind="l.sch",
        filters=filters,
        limit=limit,
        cursor=cursor,
        size=_v.SCHEMA_BYTES,
    )


async def list_schemas_of(
    db: Db, did: str, *, limit: int = 100, cursor: str | None = None
) -> Page:
    """The schema views of one publisher ``did`` (a DID or handle), newest first
    (by when first indexed)."""
    return await list_schemas(db, repo=did, limit=limit, cursor=cursor)


_PRERELEASE_KEY: Final = (
    "(SELECT array_agg(CASE WHEN p ~ '^[0-9]+$' "
    "THEN '0' || lpad(length(p)::text, 4, '0') || p ELSE '1' || p END "
    "ORDER BY i) FROM unnest(string_to_array(nullif(s.prerelease, ''), '.')) "
    'WITH ORDINALITY AS u(p, i)) COLLATE "C"'
)
"""A sortable key of ``s.prerelease`` in semver 2.0.0 § 11.4 precedence: per
dot-separated identifier, numeric ones first and by value (length, then digits:
they have no leading zeros), then alphanumeric ones in ASCII order (collation
"C"); a longer list after its own prefix (as arrays compare)."""

_LATEST: Final = (
    "ORDER BY (s.prerelease = '') DESC, s.major DESC, s.minor DESC, s.patch DESC, "
    f"{_PRERELEASE_KEY} DESC, s.indexed_at DESC"
)
"""The latest first: releases before prereleases (whatever their versions), then
semver precedence."""


async def resolve_schema(
    db: Db, handle: str, schema_id: str, version: str | None = None
) -> dict[str, Any] | None:
    """resolveSchema: ``{"uri", "cid", "record"}`` (``record`` as published) of the
    schema of publisher ``handle`` (DID or handle; ``RepoNotFound``) whose name is
    ``schema_id`` (or whose record key is ``schema_id`` or ``schema_id:VERSION``,
    atdata-gen's ``{name}:{version}``), at ``version``: an exact version, or a range (``^1``,
    ``~1.2``, ``1.x``: the highest match); the latest release (semver order; a
    prerelease only when there is no release) when absent. ``None`` when none
    matches."""
    rng = parse_version_range(version) if version else None
    sql = _Sql()
    who = _publisher(sql, handle)
    sql.where.append("s.did = d.did")
    like = schema_id.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    sql.where.append(
        f"(s.name = {sql.arg(schema_id)} OR s.rkey = {sql.arg(schema_id)} "
        f"OR s.rkey LIKE {sql.arg(like + ':%')})"
    )
    if rng is not None:
        sql.where.append(
            f"(s.major, s.minor, s.patch) >= ({sql.arg(rng.lo[0])}, "
            f"{sql.arg(rng.lo[1])}, {sql.arg(rng.lo[2])}) AND "
            f"(s.major, s.minor, s.patch) < ({sql.arg(rng.hi[0])}, "
            f"{sql.arg(rng.hi[1])}, {sql.arg(rng.hi[2])}) AND "
            f"s.prerelease = {sql.arg(rng.prerelease)}"
        )
    sql.where.append(_ACTIVE.format(t="s"))
    row = await db.fetchrow(
        f"SELECT d.did, f.uri, f.cid, f.record FROM {who} LEFT JOIN LATERAL ("
        f"SELECT s.uri, s.cid, s.record::text AS record FROM appview_schemas s "
        f"WHERE {' AND '.join(sql.where)} {_LATEST} LIMIT 1) f ON true",
        *sql.args,
    )
    _found_publisher(row, handle)
    if row["uri"] is None:
        return None
    return {"uri": row["uri"], "cid": row["cid"], "record": _json(row["record"])}


def _publisher(sql: _Sql, repo: str) -> str:
    # A one-row relation ``d(did)``: the DID of ``repo`` (a DID as is, a handle
    # through appview_accounts.verified_handle, as lookup_did), no row when the
    # handle is unknown: the caller's
    # lookup runs in the same statement (one round trip).
    if repo.startswith("did:") and is_did(repo):
        return f"(SELECT {sql.arg(repo)}::text AS did) d"
    handle = repo.lower() if is_handle(repo) else ""
    return (
        f"(SELECT did FROM appview_accounts WHERE verified_handle = {sql.arg(handle)} "
        f"ORDER BY updated_at DESC LIMIT 1) d"
    )


def _found_publisher(row: Any, repo: str) -> None:
    if row is None:
        raise QueryError("RepoNotFound", f"repository not found: {repo[:253]}")


def _json(text: str) -> Any:
    return orjson.loads(text)


async def schema_history(
    db: Db, name: str, *, repo: str | None = None, limit: int = 100
) -> dict[str, Any]:
    """getSchemaHistory: ``{"name", "did", "handle"?, "versions": [schema views,
    oldest first, the newest ``limit``], "verdicts": [compat verdicts between
    consecutive versions shown]}``: :func:`atdata_appview.history.schema_history`
    (semver 2.0.0 order, the verdicts it stored with atdata-gen's checker) as
    views.

    Errors: ``SchemaNotFound`` (404), ``AmbiguousName`` (400: several publishers
    use ``name`` and ``repo`` is absent), ``RepoNotFound``."""
    if repo:
        did = await resolve_did(db, repo)
    else:
        dids = await db.fetch(
            f"SELECT DISTINCT s.did FROM appview_schemas s WHERE s.name = $1 "
            f"AND {_ACTIVE.format(t='s')} LIMIT 2",
            name,
        )
        if not dids:
            raise QueryError("SchemaNotFound", f"no schema named {name!r}", 404)
        if len(dids) > 1:
            raise QueryError(
                "AmbiguousName",
                f"more than one publisher uses the schema name {name!r}: give repo",
            )
        did = dids[0]["did"]
    from .history import schema_history as stored_history

    # the versions in semver 2.0.0 order and the verdicts between consecutive
    # ones, as the history module orders and stores them
    ordered, verdicts = await stored_history(db, did, name, limit)
    uris = [r["uri"] for r in ordered]
    rows = await db.fetch(
        f"SELECT {_v.SCHEMA_COLUMNS} FROM appview_schemas s {_v.SCHEMA_JOINS} "
        f"WHERE s.uri = ANY($1::text[]) AND {_ACTIVE.format(t='s')}",
        uris,
    )
    found = {r["uri"]: r for r in rows}
    if not found:
        raise QueryError("SchemaNotFound", f"no schema named {name!r} in {did}", 404)
    versions = [_v.schema_view(found[u]) for u in uris if u in found]
    shown = set(found)
    verdicts = [v for v in verdicts if v["fromUri"] in shown and v["toUri"] in shown]
    out: dict[str, Any] = {"name": name, "did": did}
    if "handle" in versions[0]:
        out["handle"] = versions[0]["handle"]
    out["versions"] = versions
    out["verdicts"] = verdicts
    return out


# --------------------------------------------------------------------------------
# lenses and labels


async def lens_view(db: Db, uri: str) -> dict[str, Any] | None:
    """The lens view of ``uri``, or ``None`` when not indexed."""
    key = await _record_key(db, uri, LENS_NSID)
    if key is None:
        return None
    row = await db.fetchrow(
        f"SELECT {_v.LENS_COLUMNS} FROM appview_lenses l {_v.LENS_JOINS} "
        f"WHERE l.did = $1 AND l.rkey = $2 AND {_ACTIVE.format(t='l')}",
        *key,
    )
    return None if row is None else _v.lens_view(row)


async def list_lenses(
    db: Db,
    *,
    repo: str | None = None,
    source_schema: str | None = None,
    target_schema: str | None = None,
    limit: int = 50,
    cursor: str | None = None,
    kind: str = "l.lns",
) -> Page:
    """listLenses: lens views, newest first (by when first indexed), filtered by
    ``repo`` (DID or handle; ``RepoNotFound``), ``source_schema`` and
    ``target_schema`` (AT-URIs); pages of at most ``limit`` and
    :data:`MAX_PAGE_BYTES`."""
    filters: list[tuple[str, Any]] = []
    if repo:
        filters.append(("did", await resolve_did(db, repo)))
    if source_schema:
        filters.append(("source_schema", source_schema))
    if target_schema:
        filters.append(("target_schema", target_schema))
    return await _list(
        db,
        table="appview_lenses",
        alias="l",
        columns=_v.LENS_COLUMNS,
        joins=_v.LENS_JOINS,
        view=_v.lens_view,
        kind=kind,
        filters=filters,
        limit=limit,
        cursor=cursor,
        size=_v.LENS_BYTES,
    )


async def search_lenses(
    db: Db,
    *,
    source_schema: str | None = None,
    target_schema: str | None = None,
    limit: int = 25,
    cursor: str | None = None,
) -> Page:
    """searchLenses: lenses from ``source_schema`` and/or to ``target_schema``,
    newest first (as atdata-app 0.4 serves it; by when first indexed)."""
    return await list_lenses(
        db,
        source_schema=source_schema,
        target_schema=target_schema,
        limit=limit,
        cursor=cursor,
        kind="l.slns",
    )


async def lenses_of_schemas(
    db: Db, uris: Sequence[str], *, limit: int = 200
) -> list[dict[str, Any]]:
    """Lens views whose source or target is one of ``uris`` (for drawing a
    schema's version and lens graph), newest indexed first, at most ``limit``."""
    rows = await db.fetch(
        f"SELECT {_v.LENS_COLUMNS} FROM appview_lenses l {_v.LENS_JOINS} "
        f"WHERE (l.source_schema = ANY($1::text[]) OR l.target_schema = ANY($1::text[])) "
        f"AND {_ACTIVE.format(t='l')} "
        f"ORDER BY l.indexed_at DESC, l.did DESC, l.rkey DESC LIMIT $2",
        list(uris),
        limit,
    )
    return [_v.lens_view(r) for r in rows]


async def lens_path(
    db: Db, source_schema: str, target_schema: str, max_steps: int = 8
) -> dict[str, Any]:
    """getLensPath: ``{"sourceSchema", "targetSchema", "steps": [{"kind": "lens" |
    "structural", "sourceSchema", "targetSchema", "lens"?: lens view}]}``, the
    shortest chain from :func:`atdata_appview.lenspath.find_lens_path` (the
    runtime's ``LensGraph``); ``steps`` is empty when both are the same schema.
    Errors: ``SchemaNotFound`` (404: a schema is not indexed),
    ``LensPathNotFound`` (404), ``InvalidRequest`` (``max_steps`` out of range)."""
    from . import lenspath

    try:
        steps = await lenspath.find_lens_path(
            db, source_schema, target_schema, max_steps=max_steps
        )
    except lenspath.SchemaNotFound as exc:
        raise QueryError("SchemaNotFound", str(exc), 404) from None
    except lenspath.LensPathNotFound as exc:
        raise QueryError("LensPathNotFound", str(exc), 404) from None
    except ValueError as exc:
        raise QueryError("InvalidRequest", str(exc)) from None
    out: dict[str, Any] = {
        "sourceSchema": source_schema,
        "targetSchema": target_schema,
        "steps": [],
    }
    for step in steps:
        item: dict[str, Any] = {
            "kind": step.kind,
            "sourceSchema": step.source_schema,
            "targetSchema": step.target_schema,
        }
        if step.lens is not None:
            view = await lens_view(db, step.lens["uri"])
            if view is not None:
                item["lens"] = view
        out["steps"].append(item)
    return out


async def resolve_label(
    db: Db, handle: str, name: str, version: str | None = None
) -> dict[str, Any] | None:
    """resolveLabel: ``{"uri": the labelled entry's AT-URI (datasetUri), "cid": the
    label record's CID, "label": the label record as published}`` for the label
    ``name`` (and ``version``, when given) of publisher ``handle`` (DID or handle;
    ``RepoNotFound``), the most recently created; ``None`` when none."""
    sql = _Sql()
    who = _publisher(sql, handle)
    sql.where.append("b.did = d.did")
    sql.where.append(f"b.name = {sql.arg(name)}")
    if version is not None:
        sql.where.append(f"b.version = {sql.arg(version)}")
    sql.where.append(_ACTIVE.format(t="b"))
    row = await db.fetchrow(
        f"SELECT d.did, f.dataset_uri, f.cid, f.record FROM {who} LEFT JOIN LATERAL ("
        f"SELECT b.dataset_uri, b.cid, b.record::text AS record FROM appview_labels b "
        f"WHERE {' AND '.join(sql.where)} "
        f"ORDER BY b.created_at DESC NULLS LAST, b.indexed_at DESC LIMIT 1) f ON true",
        *sql.args,
    )
    _found_publisher(row, handle)
    if row["dataset_uri"] is None:
        return None
    return {"uri": row["dataset_uri"], "cid": row["cid"], "label": _json(row["record"])}


# --------------------------------------------------------------------------------
# publishers and the service


async def profile(db: Db, did_or_handle: str) -> Profile | None:
    """The publisher ``did_or_handle``: account state and record counts; ``None``
    when the AppView knows nothing of it (no account row, no record)."""
    did = await lookup_did(db, did_or_handle)
    if did is None:
        return None
    row = await db.fetchrow(
        "SELECT a.verified_handle AS handle, a.active, a.status, "
        "(SELECT count(*) FROM appview_schemas WHERE did = $1) AS schemas, "
        "(SELECT count(*) FROM appview_entries WHERE did = $1) AS entries, "
        "(SELECT count(*) FROM appview_lenses WHERE did = $1) AS lenses, "
        "(SELECT count(*) FROM appview_labels WHERE did = $1) AS labels "
        "FROM (SELECT 1) one LEFT JOIN appview_accounts a ON a.did = $1",
        did,
    )
    counts = {k: int(row[k]) for k in ("schemas", "entries", "lenses", "labels")}
    if row["active"] is None and not any(counts.values()):
        return None
    handle = row["handle"] if row["handle"] and is_handle(row["handle"]) else None
    active = row["active"] is not False
    return Profile(did, handle, active, None if active else row["status"], counts)


DESCRIBE_TTL_SECONDS: float = 60.0
"""describeService's counts are reused while the index has not moved (the
``appview_cursor`` position and counters are the same), for at most this long
(seconds): counting every table is a pass over each, and atdata's health check
calls describeService."""

_describe_cache: dict[str, tuple[float, tuple[Any, ...], dict[str, Any]]] = {}


async def describe_service(db: Db, service_did: str) -> dict[str, Any]:
    """describeService: ``{"did", "availableCollections", "recordCount":
    {collection NSID: count} (keyed by collection as atdata-app 0.4 serves it),
    "analytics": {"activePublishers": DIDs with an indexed entry or schema},
    "deadLetters", "cursor"}`` (see :data:`DESCRIBE_TTL_SECONDS`)."""
    from .schema import RECORD_TABLES

    now = time.monotonic()
    key = f"{service_did} {vocabulary.database_key(db)!r}"
    at = await db.fetchrow("SELECT seq, idx, folded, dead_letters FROM appview_cursor")
    position = tuple(at) if at is not None else ()
    hit = _describe_cache.get(key)
    if hit is not None and hit[1] == position and now - hit[0] < DESCRIBE_TTL_SECONDS:
        return hit[2]
    counts = ", ".join(
        f"(SELECT count(*) FROM {table}) AS c{i}"
        for i, table in enumerate(RECORD_TABLES.values())
    )
    row = await db.fetchrow(
        f"SELECT {counts}, c.seq, c.dead_letters, "
        "(SELECT count(*) FROM (SELECT did FROM appview_entries UNION "
        "SELECT did FROM appview_schemas) p) AS publishers "
        "FROM appview_cursor c"
    )
    record_count = {nsid: int(row[f"c{i}"]) for i, nsid in enumerate(RECORD_TABLES)}
    out = {
        "did": service_did,
        "availableCollections": list(RECORD_TABLES),
        "recordCount": record_count,
        "analytics": {"activePublishers": int(row["publishers"])},
        "deadLetters": int(row["dead_letters"]),
        "cursor": max(0, int(row["seq"])),
    }
    _describe_cache[key] = (now, position, out)
    return out
