"""The type nesting limit: ``LEX_TYPE_TOO_DEEP``.

A generated model is a tree of pydantic types, and pydantic builds (and checks) it
with Python recursion: about 18 stack frames per ``Annotated[list[...],
Field(max_length=...)]`` level, about 4 per nested model. JSON nesting alone
(``MAX_JSON_DEPTH``, 64) lets a Lexicon nest 60 arrays, which build and import but
raise ``RecursionError`` at the model's first use (``model_rebuild``,
``from_wire``). So atdata-gen bounds the nesting of *types*:

* a level is an ``object`` (a record body, an inline object, an object def), an
  ``array`` or a ``union``; ``ref`` adds no level of its own;
* levels are counted from each def's root down its type tree, and on through refs
  and union members into the defs they name (pydantic builds those inline, so
  their levels add up); a ref to a def already on the path (recursion, direct or
  mutual) stops the count there: pydantic refers to a model being built instead
  of building it again, and recursive data is bounded by the data, not the type;
* at most :data:`MAX_TYPE_DEPTH` (32) levels; the first type past it is reported
  where it is defined, with the def it was reached from.

Measured (CPython 3.12, pydantic 2, ``sys.getrecursionlimit() == 1000``): at 32
levels the deepest construct, arrays with ``maxLength`` (or a union inside them),
needs about 580 frames for ``model_rebuild`` + ``from_wire`` + ``to_wire`` of data
of full depth, leaving more than 400 frames to the caller; nested objects need
about 200. Not configurable: the limit protects the generated package, whichever
process imports it. The official Lexicons nest at most 10 levels.

The search from each root explores a def again only when it enters it deeper
than before (at most ``MAX_TYPE_DEPTH`` times). This follows pydantic's own order
(fields in order, union members in order) and is exact where refs do not recurse.
On a hostile graph of recursive refs, after :data:`_EXACT_STEPS` types walked,
roots share what was explored (the time stays linear in the input, the count may
then miss a path that only a later root would take).

Most roots never need that search. A first pass, linear in the defs and their
types, gives every def an upper bound of the levels any path from it can reach
(:func:`_upper_bounds`): exact where refs do not recurse, and for defs in a cycle
of refs the sum of the levels at which each def of the cycle refers on into it (a
path enters each at most once) plus the most the last one can add. A root whose
bound is within the limit cannot be reported, so only the others are searched,
each from a fresh state: while the search is exact (fewer than
:data:`_EXACT_STEPS` types walked, every input short of a hostile ref graph), the
reports, their locations and their order are those of searching every root. On a
hostile graph past that bound, the skipped roots have walked no steps, so the
search stays exact for more roots than it would without this pass (and may report
a path that sharing would have missed); the time stays linear.
"""

from __future__ import annotations

from collections.abc import Iterator

from ..diagnostics import Reporter, Span
from .model import (
    ArrayType,
    Def,
    DefId,
    ObjectType,
    RecordDef,
    RefType,
    SubscriptionDef,
    UnionType,
    XrpcDef,
)

__all__ = ["MAX_TYPE_DEPTH", "check_type_depth"]

MAX_TYPE_DEPTH = 32
"""Most levels of arrays, objects and unions on one path of a def's type tree,
refs followed (see the module doc; rule ``LEX_TYPE_TOO_DEEP``)."""


_EXACT_STEPS = 2_000_000
"""Types walked before the search stops forgetting, at each new root, which defs
it explored (see the module doc): bounds the time on hostile ref graphs."""


class _TooDeep(Exception):
    def __init__(self, span: Span, level: int, via: tuple[DefId, ...]) -> None:
        self.span, self.level, self.via = span, level, via


def _roots(d: Def) -> Iterator[object]:
    """The type trees of a def's body (records, XRPC params and bodies, messages)."""
    body = d.body
    if isinstance(body, RecordDef):
        yield body.object
    elif isinstance(body, XrpcDef):
        yield body.params
        for b in (body.input, body.output):
            if b is not None:
                yield b.schema
    elif isinstance(body, SubscriptionDef):
        yield body.params
        yield body.message
    else:
        yield body


class _Search:
    def __init__(self, defs: dict[DefId, Def], limit: int) -> None:
        self.defs = defs
        self.limit = limit
        self.steps = 0
        self.explored: dict[DefId, int] = {}
        """Def → the deepest entry level at which it was fully explored within
        the limit (deeper entries are explored again)."""

    def enter(self, target: DefId, level: int, stack: tuple[DefId, ...]) -> None:
        if target in stack:
            return  # recursion: a reference to a model being built
        d = self.defs.get(target)
        if d is None or self.explored.get(target, -1) >= level:
            return
        path = (*stack, target)
        for root in _roots(d):
            self.walk(root, level, d.span, path)
        self.explored[target] = level

    def walk(self, t: object, level: int, near: Span, stack: tuple[DefId, ...]) -> None:
        if isinstance(t, RefType):
            self.enter(t.target, level, stack)
            return
        if not isinstance(t, ObjectType | ArrayType | UnionType):
            return
        self.steps += 1
        level += 1
        span = t.span if t.span.path else near
        if level > self.limit:
            raise _TooDeep(span, level, stack)
        if isinstance(t, ObjectType):
            for f in t.fields:
                self.walk(f.type, level, f.span, stack)
        elif isinstance(t, ArrayType):
            self.walk(t.items, level, span, stack)
        else:
            for r in t.refs:
                self.enter(r, level, stack)


def _local(d: Def) -> tuple[int, list[tuple[DefId, int]]]:
    """The deepest level of ``d``'s own type trees (refs not followed), and each
    ref out of them with the level it is entered at (as :meth:`_Search.walk`
    counts: a ref adds no level, a union's members are entered below it)."""
    top = 0
    exits: list[tuple[DefId, int]] = []
    todo: list[tuple[object, int]] = [(root, 0) for root in _roots(d)]
    while todo:
        t, level = todo.pop()
        if isinstance(t, RefType):
            exits.append((t.target, level))
            continue
        if not isinstance(t, ObjectType | ArrayType | UnionType):
            continue
        level += 1
        top = max(top, level)
        if isinstance(t, ObjectType):
            todo.extend((f.type, level) for f in t.fields)
        elif isinstance(t, ArrayType):
            todo.append((t.items, level))
        else:
            exits.extend((r, level) for r in t.refs)
    return top, exits


def _upper_bounds(defs: dict[DefId, Def], cap: int) -> dict[DefId, int]:
    """Def → an upper bound (capped at ``cap``) of the levels :class:`_Search`
    can reach from entering it at level 0.

    Strongly connected components of the ref graph (Tarjan's algorithm, iterative:
    a hostile chain of refs does not recurse), in reverse topological order. A def
    in no cycle gets the exact depth: the deepest of its own levels and of each
    ref's level plus its target's bound. A path through a cycle enters each of its defs
    at most once and leaves all but the last by a ref to another def of the cycle,
    so the cycle's defs all get the sum of their deepest such refs' levels plus
    the most the last def can add (its own deepest level, or a way out of the
    cycle), less its share of that sum."""
    local: dict[DefId, tuple[int, list[tuple[DefId, int]]]] = {}
    for key, d in defs.items():
        local[key] = _local(d)
    index: dict[DefId, int] = {}
    low: dict[DefId, int] = {}
    on_stack: set[DefId] = set()
    stack: list[DefId] = []
    bound: dict[DefId, int] = {}
    counter = 0
    for start in local:
        if start in index:
            continue
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        work: list[tuple[DefId, int]] = [(start, 0)]
        while work:
            v, i = work[-1]
            exits = local[v][1]
            if i < len(exits):
                work[-1] = (v, i + 1)
                w = exits[i][0]
                if w not in local:
                    continue
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, 0))
                elif w in on_stack and index[w] < low[v]:
                    low[v] = index[w]
                continue
            work.pop()
            if work:
                u = work[-1][0]
                low[u] = min(low[u], low[v])
            if low[v] != index[v]:
                continue
            comp: list[DefId] = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            members = set(comp)
            if len(comp) == 1:
                top, exits = local[v]
                best = top
                for target, level in exits:
                    if target in bound:
                        here = level + bound[target]
                        best = max(best, here)
                bound[v] = min(best, cap)
                continue
            # A path through the cycle enters distinct defs d1 … dk: each but the
            # last is left by a ref to another def of the cycle (at most at its
            # deepest such ref, `inner`); the last one ends in its own levels or
            # leaves the cycle (`last`).
            total = 0
            extra = 0
            for w in comp:
                top, exits = local[w]
                inner = 0
                last = top
                for target, level in exits:
                    if target in members:
                        if target != w and level > inner:
                            inner = level
                    elif target in bound and level + bound[target] > last:
                        last = level + bound[target]
                total += inner
                extra = max(extra, last - inner)
            for w in comp:
                bound[w] = min(total + extra, cap)
    return bound


def check_type_depth(
    emitted: list[Def],
    defs: dict[DefId, Def],
    reporter: Reporter,
    limit: int = MAX_TYPE_DEPTH,
) -> None:
    """Report ``LEX_TYPE_TOO_DEEP`` (an error) for each def of ``emitted`` whose
    type tree, refs followed into ``defs``, nests more than ``limit`` levels (see
    the module doc), at the first type past the limit; one report per location."""
    search = _Search(defs, limit)
    seen: set[Span] = set()
    bounds = _upper_bounds(defs, limit + 1)
    for d in emitted:
        if bounds.get(d.id, limit + 1) <= limit:
            continue  # no path from this root can pass the limit
        if search.steps < _EXACT_STEPS:
            search.explored.clear()
        try:
            search.enter(d.id, 0, ())
        except _TooDeep as exc:
            if exc.span in seen:
                continue
            seen.add(exc.span)
            via = " → ".join(str(i) for i in exc.via)
            reporter.report(
                exc.span,
                "LEX_TYPE_TOO_DEEP",
                f"this type is nested {exc.level} levels deep (arrays, objects "
                f"and unions, counted from {str(d.id)!r}"
                + (f" through {via}" if len(exc.via) > 1 else "")
                + f"); atdata-gen's limit is {limit}, so that the generated "
                "model validates within Python's default recursion limit",
            )
