"""Lens paths: the shortest chain of lenses from one schema to another, found by the
runtime's :class:`atdata_runtime.lenses.LensGraph` over the part of the index that
can matter (``science.alt.dataset.getLensPath``).

Steps are of two kinds:

- ``lens``: a published ``science.alt.dataset.lens`` record (``appview_lenses``),
  from its ``sourceSchema`` to its ``targetSchema``;
- ``structural``: the lens the runtime derives between two versions of one schema
  (:func:`atdata_runtime.lenses.structural_lens`: every field of the target is a
  field of the source with the same wire name, type and optionality, or an
  optional field the source lacks). "One schema" is one publisher's name: the
  versions with the same DID and ``name`` in ``appview_schemas``.

How (bounded everywhere; nothing of a record is ever executed):

1. Candidates, breadth-first from the source, at most ``max_steps`` levels
   (:data:`MAX_STEPS`), :data:`MAX_CANDIDATES` schemas (at most
   :data:`MAX_VERSIONS_PER_NAME` of one name) and :data:`MAX_EDGES` lenses: per level one query for the lenses leaving the level's schemas and one
   for the other versions of the schema names newly met (two indexed queries per
   level, never the whole table). Lens references in handle form
   (``at://handle/...``) are matched through ``appview_accounts.verified_handle``.
2. Pruning: only schemas on some chain of at most ``max_steps`` candidate steps
   from the source to the target are kept (distance from the source plus distance
   to the target).
3. Each kept schema record is compiled to a class
   (:func:`atdata_gen.dynamic.compile_schema_record`; records bounded to
   :data:`atdata_appview.history.MAX_RECORD_BYTES`, :data:`MAX_LENS_FIELDS`
   fields and the compiler's JSON depth; classes cached by AT-URI and CID,
   :data:`CACHE_SIZE`, LRU); a record that does not compile is left out of the
   graph. The structural step between two versions of one name is
   :func:`~atdata_runtime.lenses.structural_lens`, computed once per pair of
   (AT-URI, CID) and cached (:data:`STRUCTURAL_CACHE_SIZE`). Each class is its own
   schema to the runtime's :class:`~atdata_runtime.lenses.LensGraph` (its
   ``schema_name`` is its AT-URI), which is given the lens records (as lenses
   whose getter raises: never run) and those structural steps (``origin``
   ``structural``); the graph's :meth:`~atdata_runtime.lenses.LensGraph.path`
   gives the chain.
4. Steps 3's work (compiling, structural steps, the graph search) runs in one
   worker thread (:data:`WORKERS`), never on the event loop, within
   :data:`SEARCH_BUDGET_SECONDS` of the request's start (time waiting for the
   worker counts): past it the search stops and is :class:`LensPathNotFound`
   with ``exhausted`` (what was compiled or compared is kept in the caches, so a
   retry goes further).

Errors: :class:`SchemaNotFound` (the source or target AT-URI is not indexed) and
:class:`LensPathNotFound` (with the schemas the source does reach), the Lexicon's
``SchemaNotFound`` / ``LensPathNotFound``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import time
from collections import OrderedDict, deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, NamedTuple

import asyncpg
from atdata_gen.dynamic import compile_schema_record
from atdata_gen.sources import MAX_JSON_DEPTH, json_too_deep
from atdata_runtime.lenses import Lens, LensGraph, LensNotFoundError, structural_lens
from atdata_runtime.samples import PackableSample

from .history import MAX_RECORD_BYTES, field_count

__all__ = [
    "CACHE_SIZE",
    "MAX_CANDIDATES",
    "MAX_EDGES",
    "MAX_LENS_FIELDS",
    "MAX_STEPS",
    "MAX_VERSIONS_PER_NAME",
    "SEARCH_BUDGET_SECONDS",
    "STRUCTURAL_CACHE_SIZE",
    "WORKERS",
    "LensPathError",
    "LensPathNotFound",
    "SchemaNotFound",
    "Step",
    "clear_cache",
    "find_lens_path",
]

MAX_STEPS: Final = 16
"""Longest chain searched (the Lexicon's ``maxSteps`` maximum)."""

MAX_CANDIDATES: Final = 500
"""At most this many schemas are gathered for one search."""

MAX_VERSIONS_PER_NAME: Final = 16
"""At most this many versions of one schema name are gathered (the given one and
the newest): each ordered pair of them is a candidate structural step, so the
graph's work grows with the square of this."""

MAX_LENS_FIELDS: Final = 256
"""Schema records of more fields than this are left out of lens paths (a
structural step compares every field of two versions)."""

MAX_EDGES: Final = 2000
"""At most this many lens records are gathered for one search."""

MAX_REACHABLE: Final = 100
"""At most this many reachable schemas are named by :class:`LensPathNotFound`."""

SEARCH_BUDGET_SECONDS: float = 2.0
"""Most time one search may take from its start to the end of its graph work
(compiling, structural steps, the graph search), seconds; past it the search
ends with :class:`LensPathNotFound` (``exhausted``)."""

WORKERS: Final = 1
"""Threads doing the graph work of every search of the process (one: the work
is pure Python, so more threads would only contend for the interpreter with the
event loop); searches queue for it, their budget running."""

CACHE_SIZE: Final = 8192
"""Compiled classes kept in-process, keyed by (AT-URI, CID); about 8 KB each for
atdata's corpus schemas, so at most ~64 MB. A class costs 1-2 ms to compile."""

STRUCTURAL_CACHE_SIZE: Final = 65536
"""Structural-step verdicts kept in-process, keyed by the two (AT-URI, CID)."""

SCHEMA_COLLECTION: Final = "science.alt.dataset.schema"


class Step(NamedTuple):
    """One step of a chain: ``kind`` (``lens`` | ``structural``), the AT-URIs of
    its ``source_schema`` and ``target_schema`` (as indexed: DID authority), and
    for ``lens`` the ``appview_lenses`` row (every column, plus ``handle``: the
    verified handle from ``appview_accounts``, ``None`` when none), else ``None``."""

    kind: str
    source_schema: str
    target_schema: str
    lens: asyncpg.Record | None


class LensPathError(LookupError):
    """Base of the errors of :func:`find_lens_path`."""


class SchemaNotFound(LensPathError):
    """``uri`` (an AT-URI) is not an indexed schema record (XRPC error
    ``SchemaNotFound``)."""

    def __init__(self, uri: str) -> None:
        self.uri = uri
        super().__init__(f"schema {uri!r} is not indexed")


class LensPathNotFound(LensPathError):
    """No chain of at most ``max_steps`` lenses leads from ``source`` to ``target``
    (AT-URIs; XRPC error ``LensPathNotFound``), or none was found within the
    search budget (``exhausted``: :data:`SEARCH_BUDGET_SECONDS`; the search may
    go further when asked again). ``reachable``: the schemas (AT-URIs) the source
    does reach within ``max_steps``, nearest first, at most :data:`MAX_REACHABLE`
    (empty when ``exhausted``); ``truncated``: the search hit a bound
    (:data:`MAX_CANDIDATES`, :data:`MAX_EDGES`, :data:`MAX_VERSIONS_PER_NAME`,
    the budget), so a longer search might find more; ``uncompiled``: candidate
    schemas left out because their record does not compile or has more than
    :data:`MAX_LENS_FIELDS` fields."""

    def __init__(
        self,
        source: str,
        target: str,
        reachable: Sequence[str],
        *,
        max_steps: int,
        truncated: bool = False,
        uncompiled: Sequence[str] = (),
        exhausted: bool = False,
    ) -> None:
        self.source, self.target = source, target
        self.reachable = list(reachable)[:MAX_REACHABLE]
        self.max_steps = max_steps
        self.truncated = truncated or exhausted
        self.exhausted = exhausted
        self.uncompiled = list(uncompiled)
        if exhausted:
            super().__init__(
                f"no chain from {source} to {target} found within the search "
                f"budget ({SEARCH_BUDGET_SECONDS:g} s): search budget exhausted; "
                "asking again may go further"
            )
            return
        shown = ", ".join(self.reachable[:10]) or "none"
        if len(self.reachable) > 10:
            shown += f" and {len(self.reachable) - 10} more"
        note = " (search bounded: candidates truncated)" if truncated else ""
        if target in self.uncompiled or source in self.uncompiled:
            note += (
                " (a schema record of the pair does not compile or has more than "
                f"{MAX_LENS_FIELDS} fields)"
            )
        super().__init__(
            f"no chain of at most {max_steps} lenses from {source} to {target}"
            f"{note}; the source reaches: {shown}"
        )


# -- the candidate subgraph ------------------------------------------------------------


@dataclass
class _Node:
    uri: str
    did: str
    rkey: str
    name: str
    cid: str
    handle: str | None
    depth: int


@dataclass
class _Edge:
    uri: str
    source: str
    target: str


@dataclass
class _Candidates:
    nodes: dict[str, _Node] = field(default_factory=dict)
    edges: list[_Edge] = field(default_factory=list)
    groups: dict[tuple[str, str], list[str]] = field(default_factory=dict)
    truncated: bool = False


_ACTIVE: Final = (
    "NOT EXISTS (SELECT 1 FROM appview_accounts x WHERE x.did = {t}.did "
    "AND NOT x.active)"
)
"""Records of a deactivated account are not served (as the queries do)."""

_VERSIONS: Final = """
CROSS JOIN LATERAL (
    SELECT s.uri, s.did, s.rkey, s.name, s.cid, s.major, s.minor, s.patch,
        s.uri = ANY(g.asked) AS asked
    FROM appview_schemas s
    WHERE s.did = g.did AND s.name = g.name AND $ACTIVE
    ORDER BY s.uri = ANY(g.asked) DESC, s.major DESC, s.minor DESC, s.patch DESC, s.uri
    LIMIT $VERSIONS
) v
LEFT JOIN appview_accounts a ON a.did = v.did
"""
"""The versions of each name ``g`` (``did``, ``name``, ``asked``: the AT-URIs of it
asked for): those asked for first, then the newest, at most ``$VERSIONS``."""

_NODES_SQL: Final = (
    """
SELECT v.uri, v.did, v.rkey, v.name, v.cid, v.major, v.minor, v.patch, v.asked,
    a.verified_handle AS handle
FROM (
    SELECT s.did, s.name, array_agg(s.uri) AS asked FROM appview_schemas s
    WHERE s.uri = ANY($1::text[]) GROUP BY s.did, s.name
) g"""
    + _VERSIONS.replace("$VERSIONS", "$2").replace("$ACTIVE", _ACTIVE.format(t="s"))
    + """
ORDER BY v.asked DESC
LIMIT $3
"""
)
"""Every version of the names of the schema AT-URIs ``$1`` (DID form), at most
``$2`` per name and ``$3`` in all, those asked for first."""

_LEVEL_SQL: Final = (
    """
WITH e AS MATERIALIZED (
    SELECT l.uri, l.source_schema, l.target_schema FROM appview_lenses l
    WHERE l.source_schema = ANY($1::text[])
        AND """
    + _ACTIVE.format(t="l")
    + """
    ORDER BY l.source_schema, l.target_schema, l.uri
    LIMIT $2
), g AS (
    SELECT s.did, s.name, array_agg(s.uri) AS asked
    FROM (SELECT DISTINCT target_schema FROM e) t
    JOIN appview_schemas s ON s.uri = t.target_schema
    WHERE NOT (t.target_schema = ANY($3::text[]))
    GROUP BY s.did, s.name
)
(SELECT 'lens' AS kind, e.uri, e.source_schema AS src, e.target_schema AS dst,
    NULL::text AS did, NULL::text AS rkey, NULL::text AS name, NULL::text AS cid,
    NULL::integer AS major, NULL::integer AS minor, NULL::integer AS patch,
    NULL::boolean AS asked, NULL::text AS handle
FROM e)
UNION ALL
(SELECT 'schema', v.uri, NULL, NULL, v.did, v.rkey, v.name, v.cid, v.major,
    v.minor, v.patch, v.asked, a.verified_handle AS handle
FROM g"""
    + _VERSIONS.replace("$VERSIONS", "$5").replace("$ACTIVE", _ACTIVE.format(t="s"))
    + """
ORDER BY v.asked DESC
LIMIT $4)
"""
)
"""One level of the search in one round trip: the lens records leaving the AT-URIs
``$1`` (at most ``$2``), and the versions of the schema names they lead to (DID
form) when not among the known AT-URIs ``$3`` (as :data:`_NODES_SQL`, ``$5`` per
name, ``$4`` in all)."""

_HANDLES_SQL: Final = """
SELECT h.handle, h.rkey, s.uri
FROM unnest($1::text[], $2::text[]) AS h(handle, rkey)
JOIN appview_accounts a ON a.verified_handle = h.handle
JOIN appview_schemas s ON s.did = a.did AND s.rkey = h.rkey
WHERE a.active
"""
"""Schema AT-URIs in handle form, as (handle, rkey), → their indexed AT-URIs (the
handle as ``appview_accounts.verified_handle`` has it now: verified, never a mere
claim)."""

_RECORDS_SQL: Final = (
    "SELECT uri, cid, CASE WHEN field_count <= $2 THEN record::text END AS record "
    "FROM appview_schemas WHERE uri = ANY($1::text[])"
)
"""The records of the schema AT-URIs ``$1``, their text only when they have at
most ``$2`` fields."""

_LENSES_SQL: Final = """
SELECT l.*, a.verified_handle AS handle FROM appview_lenses l
LEFT JOIN appview_accounts a ON a.did = l.did
WHERE l.uri = ANY($1::text[])
"""


def _split(uri: str) -> tuple[str, str, str] | None:
    """(authority, collection, rkey) of a record AT-URI, else ``None``."""
    if not uri.startswith("at://"):
        return None
    parts = uri[5:].split("/")
    if len(parts) != 3 or not all(parts):
        return None
    return parts[0], parts[1], parts[2]


def _handle_form(uris: Iterable[str]) -> tuple[list[str], list[str]]:
    """(handles, rkeys) of the schema AT-URIs whose authority is not a DID."""
    handles, rkeys = [], []
    for uri in uris:
        parts = _split(uri)
        if parts and not parts[0].startswith("did:") and parts[1] == SCHEMA_COLLECTION:
            handles.append(parts[0].lower())
            rkeys.append(parts[2])
    return handles, rkeys


class _Gather:
    """Breadth-first over the superset graph: lens records, and every version of a
    schema name to every other (the candidate structural steps)."""

    def __init__(self, conn: asyncpg.Connection, max_steps: int) -> None:
        self.conn = conn
        self.max_steps = max_steps
        self.c = _Candidates()
        self.by_handle: dict[tuple[str, str], str] = {}  # (handle, rkey) → AT-URI
        self.expanded: set[str] = set()

    def _room(self) -> int:
        return max(MAX_CANDIDATES - len(self.c.nodes), 0)

    def _add(self, rows: Sequence[Any], depth: int) -> None:
        """Add schema rows (``_VERSIONS`` columns) at ``depth`` (unless known):
        per name, those asked for first, then the newest, at most
        :data:`MAX_VERSIONS_PER_NAME` (the query gives one more, to tell)."""
        per: dict[tuple[str, str], list[Any]] = {}
        for r in rows:
            per.setdefault((r["did"], r["name"]), []).append(r)
        kept: list[Any] = []
        for group in per.values():
            group.sort(
                key=lambda r: (
                    not r["asked"],
                    -r["major"],
                    -r["minor"],
                    -r["patch"],
                    r["uri"],
                )
            )
            if len(group) > MAX_VERSIONS_PER_NAME:
                self.c.truncated = True
            kept.extend(group[:MAX_VERSIONS_PER_NAME])
        kept.sort(key=lambda r: not r["asked"])
        room = self._room()
        if len(kept) > room:
            self.c.truncated = True
            kept = kept[:room]
        for r in kept:
            uri = r["uri"]
            if r["handle"]:
                self.by_handle[(r["handle"].lower(), r["rkey"])] = uri
            if uri not in self.c.nodes:
                node = _Node(
                    uri, r["did"], r["rkey"], r["name"], r["cid"], r["handle"], depth
                )
                self.c.nodes[uri] = node
                self.c.groups.setdefault((node.did, node.name), []).append(uri)

    async def _nodes(self, uris: Sequence[str], depth: int) -> None:
        """Gather the names of ``uris`` (DID form) at ``depth``."""
        if not uris:
            return
        if self._room() <= 0:
            self.c.truncated = True
            return
        rows = await self.conn.fetch(
            _NODES_SQL, list(uris), MAX_VERSIONS_PER_NAME + 1, self._room() + 1
        )
        self._add(rows, depth)

    async def _dids(self, uris: Sequence[str]) -> dict[str, str]:
        """Handle-form schema AT-URIs → their indexed AT-URIs (those found)."""
        handles, rkeys = _handle_form(uris)
        if not handles:
            return {}
        rows = await self.conn.fetch(_HANDLES_SQL, handles, rkeys)
        found = {(r["handle"], r["rkey"]): r["uri"] for r in rows}
        out: dict[str, str] = {}
        for uri in uris:
            parts = _split(uri)
            if parts is not None:
                hit = found.get((parts[0].lower(), parts[2]))
                if hit is not None:
                    out[uri] = hit
        return out

    async def start(self, source: str) -> str | None:
        """Gather ``source`` (depth 0) and the other versions of its name (depth
        1); its DID-form AT-URI, or ``None`` when it is not indexed."""
        uri = source
        if not source.startswith("at://did:"):
            uri = (await self._dids([source])).get(source, "")
            if not uri:
                return None
        await self._nodes([uri], 1)
        if uri not in self.c.nodes:
            return None
        self.c.nodes[uri].depth = 0
        return uri

    def resolve(self, uri: str) -> str | None:
        """The gathered schema ``uri`` names (DID form), else ``None``."""
        if uri in self.c.nodes:
            return uri
        parts = _split(uri)
        if parts and not parts[0].startswith("did:") and parts[1] == SCHEMA_COLLECTION:
            return self.by_handle.get((parts[0].lower(), parts[2]))
        return None

    async def expand(self, depth: int) -> bool:
        """Gather the lenses leaving the schemas at ``depth`` and the schemas
        they lead to (``depth + 1``; their other versions ``depth + 2``). False
        when nothing is left to expand at any depth."""
        level = sorted(
            u
            for u, n in self.c.nodes.items()
            if n.depth == depth and u not in self.expanded
        )
        if not level:
            return any(n.depth > depth for n in self.c.nodes.values())
        self.expanded.update(level)
        froms = list(level)
        for uri in level:
            n = self.c.nodes[uri]
            if n.handle:
                froms.append(f"at://{n.handle}/{SCHEMA_COLLECTION}/{n.rkey}")
        room = MAX_EDGES - len(self.c.edges)
        if room <= 0:
            self.c.truncated = True
            return False
        rows = await self.conn.fetch(
            _LEVEL_SQL,
            froms,
            room + 1,
            list(self.c.nodes),
            self._room() + 1,
            MAX_VERSIONS_PER_NAME + 1,
        )
        lenses = [r for r in rows if r["kind"] == "lens"]
        if len(lenses) > room:
            self.c.truncated = True
            lenses = lenses[:room]
        self._add([r for r in rows if r["kind"] == "schema"], depth + 2)
        # lens targets in handle form (rare): resolved, then gathered
        other = sorted(
            {r["dst"] for r in lenses if not r["dst"].startswith("at://did:")}
        )
        if other and any(self.resolve(u) is None for u in other):
            dids = await self._dids([u for u in other if self.resolve(u) is None])
            await self._nodes(
                sorted(set(dids.values()) - self.c.nodes.keys()), depth + 2
            )
            for alias, real in dids.items():
                parts = _split(alias)
                if parts is not None and real in self.c.nodes:
                    self.by_handle[(parts[0].lower(), parts[2])] = real
        for r in lenses:
            src, dst = self.resolve(r["src"]), self.resolve(r["dst"])
            if src is not None and dst is not None:
                self.c.edges.append(_Edge(r["uri"], src, dst))
                node = self.c.nodes[dst]
                node.depth = min(node.depth, depth + 1)
        return True


def _distances(c: _Candidates, start: str, reverse: bool) -> dict[str, int]:
    """Steps from ``start`` over the candidate graph (forward or reversed)."""
    adjacent: dict[str, list[str]] = {}
    for e in c.edges:
        a, b = (e.target, e.source) if reverse else (e.source, e.target)
        adjacent.setdefault(a, []).append(b)
    group_of = {u: (n.did, n.name) for u, n in c.nodes.items()}
    dist = {start: 0}
    queue = deque([start])
    seen_groups: set[tuple[str, str]] = set()
    while queue:
        at = queue.popleft()
        nxt = list(adjacent.get(at, ()))
        g = group_of.get(at)
        if g is not None and g not in seen_groups:
            seen_groups.add(g)
            nxt += c.groups.get(g, ())
        for b in nxt:
            if b not in dist:
                dist[b] = dist[at] + 1
                queue.append(b)
    return dist


# -- classes and the graph (the worker) ----------------------------------------------

_classes: OrderedDict[tuple[str, str], type[PackableSample] | None] = OrderedDict()
"""(AT-URI, CID) → class (``None``: does not compile); read and written on the
event loop only."""

_structural: OrderedDict[tuple[tuple[str, str], tuple[str, str]], bool] = OrderedDict()
"""((AT-URI, CID) of a version, of another version of its name) → whether the
structural lens between them exists; read and written in the worker only."""

_executor: concurrent.futures.ThreadPoolExecutor | None = None


def clear_cache() -> None:
    """Forget every compiled class and structural verdict (tests, benchmarks)."""
    _classes.clear()
    _structural.clear()


def _worker() -> concurrent.futures.ThreadPoolExecutor:
    global _executor
    if _executor is None:
        _executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=WORKERS, thread_name_prefix="atdata-lenspath"
        )
    return _executor


def _compile(uri: str, cid: str, did: str, text: str) -> type[PackableSample] | None:
    """The class of one schema record's JSON text, or ``None`` when it does not
    compile (or is too large, too deep, or has more than :data:`MAX_LENS_FIELDS`
    fields). Its ``schema_name`` is its AT-URI: to the graph, each record is a
    schema of its own, the structural steps are given to it (:func:`_work`)."""
    if len(text) > MAX_RECORD_BYTES or json_too_deep(text, MAX_JSON_DEPTH):
        return None
    try:
        record = json.loads(text)
        if not isinstance(record, dict) or field_count(record) > MAX_LENS_FIELDS:
            return None
        cls = compile_schema_record(record, uri=uri, cid=cid)
    except Exception:  # noqa: BLE001 - a hostile record must not fail the query
        return None
    cls.schema_name = uri
    return cls


def _never(*_: Any) -> Any:
    raise RuntimeError("a lens record's code is never run by the AppView")


@dataclass
class _Job:
    """The graph work of one search step, done in the worker: ``nodes`` (the
    candidates to use), ``found`` (their cached classes), ``todo`` (records to
    compile: AT-URI, CID, DID, JSON text), the lens ``edges``, the ``source``
    and ``target`` (``None``: what the source reaches), ``bound`` (steps) and the
    ``deadline`` (``time.monotonic()``)."""

    nodes: list[_Node]
    found: dict[str, type[PackableSample]]
    todo: list[tuple[str, str, str, str]]
    edges: list[_Edge]
    source: str
    target: str | None
    bound: int
    deadline: float


@dataclass
class _Outcome:
    """What the worker did: ``made`` (compiled: (AT-URI, CID) → class or
    ``None``), ``chain`` (``(kind, source, target, lens AT-URI or None)`` steps, or
    ``None``), ``reachable`` (AT-URIs, nearest first), ``over`` (the deadline
    passed: the rest is not to be trusted)."""

    made: dict[tuple[str, str], type[PackableSample] | None]
    chain: list[tuple[str, str, str, str | None]] | None = None
    reachable: list[str] = field(default_factory=list)
    over: bool = False


def _structural_pairs(
    nodes: Sequence[_Node], classes: dict[str, type[PackableSample]], deadline: float
) -> tuple[list[tuple[str, str]], bool]:
    """The structural steps (source, target AT-URIs) between the versions of each
    name among ``nodes`` with a class, from the cache or
    :func:`~atdata_runtime.lenses.structural_lens`; and whether the deadline
    passed before all were known."""
    groups: dict[tuple[str, str], list[_Node]] = {}
    for n in nodes:
        if n.uri in classes:
            groups.setdefault((n.did, n.name), []).append(n)
    out: list[tuple[str, str]] = []
    computed = 0
    for members in groups.values():
        for a in members:
            for b in members:
                if a is b:
                    continue
                key = ((a.uri, a.cid), (b.uri, b.cid))
                hit = _structural.get(key)
                if hit is None:
                    if time.monotonic() > deadline:
                        return out, True
                    made = structural_lens(
                        classes[a.uri], classes[b.uri], same_schema=False
                    )
                    hit = _structural[key] = made is not None
                    computed += 1
                    if computed % 16 == 0:
                        time.sleep(0)  # let the event loop run meanwhile
                    while len(_structural) > STRUCTURAL_CACHE_SIZE:
                        _structural.popitem(last=False)
                else:
                    _structural.move_to_end(key)
                if hit:
                    out.append((a.uri, b.uri))
    return out, False


def _graph(
    edges: Sequence[_Edge],
    classes: dict[str, type[PackableSample]],
    pairs: Sequence[tuple[str, str]],
) -> LensGraph:
    """The runtime's graph over ``classes``: each lens record between two of them
    as a lens whose getter raises (of several between the same two schemas, the
    one with the smallest AT-URI), then the structural steps ``pairs`` where no
    lens record is (a published lens wins over a structural step; the graph
    tries each schema's lens records before its structural steps)."""
    graph = LensGraph()
    graph.add_class(*classes.values())
    linked: set[tuple[str, str]] = set()
    for e in sorted(edges, key=lambda e: e.uri, reverse=True):
        a, b = classes.get(e.source), classes.get(e.target)
        if a is None or b is None or a is b:
            continue
        graph.register(Lens(a, b, _never, name=e.uri, where=e.uri))
        linked.add((e.source, e.target))
    for src, dst in pairs:
        if (src, dst) not in linked:
            graph.register(
                Lens(
                    classes[src],
                    classes[dst],
                    _never,
                    name=f"structural {src} -> {dst}",
                    origin="structural",
                )
            )
    return graph


def _work(job: _Job) -> _Outcome:
    """One search step in the worker (see :class:`_Job`)."""
    made: dict[tuple[str, str], type[PackableSample] | None] = {}
    for uri, cid, did, text in job.todo:
        if time.monotonic() > job.deadline:
            return _Outcome(made, over=True)
        made[(uri, cid)] = _compile(uri, cid, did, text)
        time.sleep(0)  # hand the interpreter to the event loop between records
    classes = dict(job.found)
    classes.update({uri: cls for (uri, _), cls in made.items() if cls is not None})
    if job.source not in classes or (
        job.target is not None and job.target not in classes
    ):
        return _Outcome(made)
    pairs, over = _structural_pairs(job.nodes, classes, job.deadline)
    if over:
        return _Outcome(made, over=True)
    graph = _graph(job.edges, classes, pairs)
    uri_of = {cls: u for u, cls in classes.items()}
    if job.target is None:
        found = graph.reachable(classes[job.source], max_steps=job.bound)
        return _Outcome(made, reachable=[uri_of[k] for k in found if k in uri_of])
    try:
        chain = graph.path(
            classes[job.source], classes[job.target], max_steps=job.bound
        )
    except LensNotFoundError:
        return _Outcome(made)
    steps = [
        (
            "structural" if s.origin == "structural" else "lens",
            uri_of[s.source],
            uri_of[s.target],
            None if s.origin == "structural" else s.where,
        )
        for s in chain
    ]
    return _Outcome(made, chain=steps)


async def _solve(
    conn: asyncpg.Connection,
    c: _Candidates,
    nodes: Sequence[_Node],
    source: str,
    target: str | None,
    bound: int,
    deadline: float,
) -> tuple[_Outcome, list[str]]:
    """The worker's :func:`_work` over ``nodes``: their classes from the cache,
    the records of the others read here (their text only when they have at
    most :data:`MAX_LENS_FIELDS` fields); with the AT-URIs that do not
    compile."""
    found: dict[str, type[PackableSample]] = {}
    failed: list[str] = []
    missing: list[_Node] = []
    for n in nodes:
        key = (n.uri, n.cid)
        if key in _classes:
            _classes.move_to_end(key)
            cls = _classes[key]
            if cls is None:
                failed.append(n.uri)
            else:
                found[n.uri] = cls
        else:
            missing.append(n)
    todo: list[tuple[str, str, str, str]] = []
    if missing:
        did_of = {n.uri: n.did for n in missing}
        rows = await conn.fetch(_RECORDS_SQL, [n.uri for n in missing], MAX_LENS_FIELDS)
        for r in rows:
            if r["record"] is None:  # too many fields: never compiled
                _classes[(r["uri"], r["cid"])] = None
                failed.append(r["uri"])
            else:
                todo.append((r["uri"], r["cid"], did_of[r["uri"]], r["record"]))
    job = _Job(list(nodes), found, todo, list(c.edges), source, target, bound, deadline)
    out = await asyncio.get_running_loop().run_in_executor(_worker(), _work, job)
    for key, cls in out.made.items():
        _classes[key] = cls
        if cls is None:
            failed.append(key[0])
    while len(_classes) > CACHE_SIZE:
        _classes.popitem(last=False)
    return out, failed


# -- the query -------------------------------------------------------------------------


async def find_lens_path(
    conn: asyncpg.Connection,
    source_uri: str,
    target_uri: str,
    *,
    max_steps: int = 8,
) -> list[Step]:
    """The shortest chain of lenses from schema ``source_uri`` to ``target_uri``
    (AT-URIs of schema records, DID or handle authority), at most ``max_steps``
    (1..:data:`MAX_STEPS`) steps, source first; ``[]`` when both name the same
    schema record. Ties: a published lens wins over a structural step between the
    same two schemas; otherwise the runtime's breadth-first order. The graph work
    runs in the worker thread, within :data:`SEARCH_BUDGET_SECONDS` of the call.
    Raises :class:`SchemaNotFound`, :class:`LensPathNotFound` (``exhausted`` when
    the budget ran out), ``ValueError`` for a ``max_steps`` out of range;
    database errors propagate."""
    if not 1 <= max_steps <= MAX_STEPS:
        raise ValueError(f"max_steps must be 1..{MAX_STEPS}, not {max_steps}")
    deadline = time.monotonic() + SEARCH_BUDGET_SECONDS
    gather = _Gather(conn, max_steps)
    source = await gather.start(source_uri)
    if source is None:
        raise SchemaNotFound(source_uri)
    target = gather.resolve(target_uri)
    if target == source:
        return []
    c = gather.c
    failed: list[str] = []
    for depth in range(max_steps):
        more = await gather.expand(depth)
        target = target or gather.resolve(target_uri)
        if target is None:
            if not more:
                break
            continue
        # Every schema within depth + 1 steps is gathered now, with every lens
        # leaving those within depth: a chain of at most depth + 1 steps found in
        # them is a shortest one. When the search is exhausted, any chain is.
        bound = depth + 1 if more and depth + 1 < max_steps else max_steps
        steps, not_compiled, over = await _chain(
            conn, c, source, target, bound, deadline
        )
        failed.extend(not_compiled)
        if over:
            raise LensPathNotFound(
                source, target, [], max_steps=max_steps, exhausted=True
            )
        if steps is not None:
            return steps
        if not more:
            break
    if target is None:
        target = await _indexed(conn, target_uri)
        if target is None:
            raise SchemaNotFound(target_uri)
        if target == source:
            return []
    raise await _not_found(conn, c, source, target, max_steps, failed, deadline)


async def _chain(
    conn: asyncpg.Connection,
    c: _Candidates,
    source: str,
    target: str,
    bound: int,
    deadline: float,
) -> tuple[list[Step] | None, list[str], bool]:
    """The shortest chain of at most ``bound`` steps among the candidates (only
    those on a candidate chain that short are compiled), or ``None``; with the
    AT-URIs that did not compile and whether the budget ran out."""
    from_source = _distances(c, source, reverse=False)
    to_target = _distances(c, target, reverse=True)
    far = MAX_STEPS + 1
    on_path = [
        n
        for u, n in c.nodes.items()
        if from_source.get(u, far) + to_target.get(u, far) <= bound
    ]
    if not on_path:
        return None, [], False
    out, failed = await _solve(conn, c, on_path, source, target, bound, deadline)
    if out.over or out.chain is None:
        return None, failed, out.over
    wanted = [lens for *_, lens in out.chain if lens is not None]
    lens_rows = (
        {r["uri"]: r for r in await conn.fetch(_LENSES_SQL, wanted)} if wanted else {}
    )
    steps = [
        Step(kind, a, b, None if lens is None else lens_rows.get(lens))
        for kind, a, b, lens in out.chain
    ]
    return steps, failed, False


async def _indexed(conn: asyncpg.Connection, uri: str) -> str | None:
    """The indexed AT-URI (DID form) of ``uri`` (DID or handle form), else
    ``None``."""
    if uri.startswith("at://did:"):
        found: str | None = await conn.fetchval(
            "SELECT s.uri FROM appview_schemas s WHERE s.uri = $1 AND "
            + _ACTIVE.format(t="s"),
            uri,
        )
        return found
    handles, rkeys = _handle_form([uri])
    if not handles:
        return None
    row = await conn.fetchrow(_HANDLES_SQL, handles, rkeys)
    return None if row is None else str(row["uri"])


async def _not_found(
    conn: asyncpg.Connection,
    c: _Candidates,
    source: str,
    target: str,
    max_steps: int,
    failed: list[str],
    deadline: float,
) -> LensPathNotFound:
    """The error, with what the source does reach: the runtime's graph over the
    whole forward candidate set (``exhausted`` when the budget ran out)."""
    from_source = _distances(c, source, reverse=False)
    near = [n for u, n in c.nodes.items() if u in from_source]
    out, more_failed = await _solve(conn, c, near, source, None, max_steps, deadline)
    if out.over:
        return LensPathNotFound(source, target, [], max_steps=max_steps, exhausted=True)
    return LensPathNotFound(
        source,
        target,
        out.reachable,
        max_steps=max_steps,
        truncated=c.truncated,
        uncompiled=sorted({*failed, *more_failed}),
    )
