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
   :data:`atdata_appview.history.MAX_RECORD_BYTES`, ``MAX_FIELDS`` fields and the
   compiler's JSON depth;
   classes cached by AT-URI and CID, :data:`CACHE_SIZE`, LRU); a record that does
   not compile is left out of the graph. Each lens record becomes a
   :class:`~atdata_runtime.lenses.Lens` whose getter raises (it is never run);
   the graph's :meth:`~atdata_runtime.lenses.LensGraph.path` gives the chain.

Errors: :class:`SchemaNotFound` (the source or target AT-URI is not indexed) and
:class:`LensPathNotFound` (with the schemas the source does reach), the Lexicon's
``SchemaNotFound`` / ``LensPathNotFound``.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import OrderedDict, deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, NamedTuple

import asyncpg
from atdata_gen.dynamic import compile_schema_record
from atdata_gen.sources import MAX_JSON_DEPTH, json_too_deep
from atdata_runtime.lenses import Lens, LensGraph, LensNotFoundError
from atdata_runtime.samples import PackableSample

from .history import MAX_FIELDS, MAX_RECORD_BYTES, field_count

__all__ = [
    "CACHE_SIZE",
    "COMPILE_BUDGET_SECONDS",
    "MAX_CANDIDATES",
    "MAX_EDGES",
    "MAX_STEPS",
    "MAX_VERSIONS_PER_NAME",
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

MAX_VERSIONS_PER_NAME: Final = 64
"""At most this many versions of one schema name are gathered (the given one and
the newest): each pair of them is a candidate structural step, so the graph's work
grows with the square of this."""

MAX_EDGES: Final = 2000
"""At most this many lens records are gathered for one search."""

MAX_REACHABLE: Final = 100
"""At most this many reachable schemas are named by :class:`LensPathNotFound`."""

COMPILE_BUDGET_SECONDS: Final = 2.0
"""Compiling stops after this much time in one search; the schemas not compiled by
then are left out (and the search says so, ``truncated``)."""

CACHE_SIZE: Final = 8192
"""Compiled classes kept in-process, keyed by (AT-URI, CID); about 8 KB each for
atdata's corpus schemas, so at most ~64 MB. A class costs 1-2 ms to compile."""

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
    (AT-URIs; XRPC error ``LensPathNotFound``). ``reachable``: the schemas (AT-URIs)
    the source does reach within ``max_steps``, nearest first, at most
    :data:`MAX_REACHABLE`; ``truncated``: the search hit a bound
    (:data:`MAX_CANDIDATES`, :data:`MAX_EDGES`, the compile budget), so a longer
    search might find more; ``uncompiled``: candidate schemas left out because
    their record does not compile."""

    def __init__(
        self,
        source: str,
        target: str,
        reachable: Sequence[str],
        *,
        max_steps: int,
        truncated: bool = False,
        uncompiled: Sequence[str] = (),
    ) -> None:
        self.source, self.target = source, target
        self.reachable = list(reachable)[:MAX_REACHABLE]
        self.max_steps = max_steps
        self.truncated = truncated
        self.uncompiled = list(uncompiled)
        shown = ", ".join(self.reachable[:10]) or "none"
        if len(self.reachable) > 10:
            shown += f" and {len(self.reachable) - 10} more"
        note = " (search bounded: candidates truncated)" if truncated else ""
        if target in self.uncompiled or source in self.uncompiled:
            note += " (a schema record of the pair does not compile)"
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
    "SELECT uri, cid, record::text AS record FROM appview_schemas "
    "WHERE uri = ANY($1::text[])"
)

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


# -- classes ---------------------------------------------------------------------------

_classes: OrderedDict[tuple[str, str], type[PackableSample] | None] = OrderedDict()


def clear_cache() -> None:
    """Forget every compiled class (tests, benchmarks)."""
    _classes.clear()


def _compile(uri: str, cid: str, did: str, text: str) -> type[PackableSample] | None:
    """The class of one schema record's JSON text, or ``None`` when it does not
    compile (or is too large or too deep). Its ``schema_name`` is made unique per
    publisher (``did name``), so that structural lenses join only the versions of
    one publisher's schema."""
    if len(text) > MAX_RECORD_BYTES or json_too_deep(text, MAX_JSON_DEPTH):
        return None
    try:
        record = json.loads(text)
        if not isinstance(record, dict) or field_count(record) > MAX_FIELDS:
            return None
        cls = compile_schema_record(record, uri=uri, cid=cid)
    except Exception:  # noqa: BLE001 - a hostile record must not fail the query
        return None
    cls.schema_name = f"{did} {cls.schema_name}"
    return cls


def _compile_all(
    todo: list[tuple[str, str, str, str]], deadline: float
) -> dict[tuple[str, str], type[PackableSample] | None]:
    out: dict[tuple[str, str], type[PackableSample] | None] = {}
    for uri, cid, did, text in todo:
        if time.monotonic() > deadline:
            break
        out[(uri, cid)] = _compile(uri, cid, did, text)
    return out


async def _classes_for(
    conn: asyncpg.Connection, nodes: Sequence[_Node]
) -> tuple[dict[str, type[PackableSample]], list[str], bool]:
    """(AT-URI → class, AT-URIs that do not compile, budget exceeded)."""
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
    over = False
    if missing:
        did_of = {n.uri: n.did for n in missing}
        rows = await conn.fetch(_RECORDS_SQL, [n.uri for n in missing])
        todo = [(r["uri"], r["cid"], did_of[r["uri"]], r["record"]) for r in rows]
        deadline = time.monotonic() + COMPILE_BUDGET_SECONDS
        if len(todo) > 8:  # let the event loop serve other requests meanwhile
            made = await asyncio.to_thread(_compile_all, todo, deadline)
        else:
            made = _compile_all(todo, deadline)
        over = len(made) < len(todo)
        for (uri, _cid), cls in made.items():
            _classes[(uri, _cid)] = cls
            if cls is None:
                failed.append(uri)
            else:
                found[uri] = cls
        while len(_classes) > CACHE_SIZE:
            _classes.popitem(last=False)
    return found, failed, over


def _never(*_: Any) -> Any:
    raise RuntimeError("a lens record's code is never run by the AppView")


def _graph(
    c: _Candidates, classes: dict[str, type[PackableSample]]
) -> tuple[LensGraph, dict[Lens[Any, Any], str]]:
    """The runtime's graph over ``classes``: each lens record between two of them
    as a lens whose getter raises. Of several records between the same two
    schemas, the one with the smallest AT-URI is kept."""
    graph = LensGraph()
    graph.add_class(*classes.values())
    lens_uri: dict[Lens[Any, Any], str] = {}
    for e in sorted(c.edges, key=lambda e: e.uri, reverse=True):
        a, b = classes.get(e.source), classes.get(e.target)
        if a is None or b is None or a is b:
            continue
        made: Lens[Any, Any] = Lens(a, b, _never, name=e.uri, where=e.uri)
        graph.register(made)  # a later (smaller) AT-URI replaces an earlier one
        lens_uri[made] = e.uri
    return graph, lens_uri


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
    same two schemas; otherwise the runtime's breadth-first order. Raises
    :class:`SchemaNotFound`, :class:`LensPathNotFound`, ``ValueError`` for a
    ``max_steps`` out of range; database errors propagate."""
    if not 1 <= max_steps <= MAX_STEPS:
        raise ValueError(f"max_steps must be 1..{MAX_STEPS}, not {max_steps}")
    gather = _Gather(conn, max_steps)
    source = await gather.start(source_uri)
    if source is None:
        raise SchemaNotFound(source_uri)
    target = gather.resolve(target_uri)
    if target == source:
        return []
    c = gather.c
    failed: list[str] = []
    over = False
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
        found = await _chain(conn, c, source, target, bound)
        failed.extend(found[1])
        over = over or found[2]
        if found[0] is not None:
            return found[0]
        if not more:
            break
    if target is None:
        target = await _indexed(conn, target_uri)
        if target is None:
            raise SchemaNotFound(target_uri)
        if target == source:
            return []
    raise await _not_found(conn, c, source, target, max_steps, failed, over)


async def _chain(
    conn: asyncpg.Connection, c: _Candidates, source: str, target: str, bound: int
) -> tuple[list[Step] | None, list[str], bool]:
    """The shortest chain of at most ``bound`` steps among the candidates (only
    those on a candidate chain that short are compiled), or ``None``; with the
    AT-URIs that did not compile and whether the compile budget ran out."""
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
    classes, failed, over = await _classes_for(conn, on_path)
    if source not in classes or target not in classes:
        return None, failed, over
    graph, lens_uri = _graph(c, classes)
    try:
        chain = graph.path(classes[source], classes[target], max_steps=bound)
    except LensNotFoundError:
        return None, failed, over
    uri_of = {cls: u for u, cls in classes.items()}
    wanted = [lens_uri[s] for s in chain if s in lens_uri]
    lens_rows = (
        {r["uri"]: r for r in await conn.fetch(_LENSES_SQL, wanted)} if wanted else {}
    )
    steps: list[Step] = []
    for s in chain:
        a, b = uri_of[s.source], uri_of[s.target]
        if s.origin == "structural":
            steps.append(Step("structural", a, b, None))
        else:
            steps.append(Step("lens", a, b, lens_rows.get(lens_uri[s])))
    return steps, failed, over


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
    over: bool,
) -> LensPathNotFound:
    """The error, with what the source does reach: the runtime's graph over the
    whole forward candidate set."""
    from_source = _distances(c, source, reverse=False)
    near = [n for u, n in c.nodes.items() if u in from_source]
    classes, more_failed, more_over = await _classes_for(conn, near)
    reachable: list[str] = []
    if source in classes:
        graph, _ = _graph(c, classes)
        uri_of = {cls: u for u, cls in classes.items()}
        found = graph.reachable(classes[source], max_steps=max_steps)
        reachable = [uri_of[k] for k in found if k in uri_of]
    return LensPathNotFound(
        source,
        target,
        reachable,
        max_steps=max_steps,
        truncated=c.truncated or over or more_over,
        uncompiled=sorted({*failed, *more_failed}),
    )
