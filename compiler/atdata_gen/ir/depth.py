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
    for d in emitted:
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
