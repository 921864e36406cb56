"""Compatibility and evolution rules: compare a previous and a current set of schemas.

Directions, after Confluent Schema Registry: **BACKWARD** — the new schema still
accepts old data; **FORWARD** — old readers still accept new data; **FULL** — both.
The Lexicon spec's "Lexicon Evolution" rule (old data must validate under the new
Lexicon and new data under the old one) is FULL, the default.

Each rule is one registered unit (:func:`rule`): an ID, a one-line purpose (the
handler's docstring), the directions it breaks (empty = not a data break), a
category, the severity it has when it does not break the checked direction, and a
pure handler. The walker (:class:`_Walker`) pairs elements — defs by NSID and name,
properties by name, types by position, sample schemas by name across versions — and
hands each pair to every rule registered for that target; a missing side is
``None``, so additions and deletions are findings of their own.

Semver (schema records only): the bump a change needs is MAJOR when a finding breaks
the checked direction, MINOR for any other change of the data shape, PATCH for
descriptions and metadata (semver.org § 8, 7, 6). For ``0.y.z`` a minor bump counts
as major and a patch bump as minor (semver.org § 4, as Cargo reads it). A declared
MAJOR bump allows every change (semver.org § 8: "incompatible API changes"): the
schema's breaking findings are then reported as info, next to
``SCHEMA_MAJOR_CHANGE`` and its ``atdata-gen new-lens`` suggestion.

Besides data, a change can break the *generated code*: rules registered with
``major=True`` (``FIELD_PYTHON_NAME_CHANGED``) break no data direction, but need a
MAJOR bump and are errors.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from ..diagnostics import Severity, Span
from ..ir.link import LinkedModel, walk_objects
from ..ir.model import (
    ArrayType,
    BlobType,
    BooleanType,
    BytesType,
    Def,
    DefId,
    Field,
    FloatType,
    IntegerType,
    NDArrayType,
    ObjectType,
    RecordDef,
    RefType,
    SampleSchema,
    StringType,
    SubscriptionDef,
    UnionType,
    XrpcDef,
)
from .recdiff import schema_differences

__all__ = [
    "CATEGORIES",
    "COMPAT_RULES",
    "At",
    "Bump",
    "CompatRule",
    "Direction",
    "Finding",
    "PyName",
    "compare",
    "needed_bump",
    "rule",
]


class Direction(enum.Flag):
    """Which compatibility a change breaks: BACKWARD (new schema rejects old data),
    FORWARD (old readers reject new data), FULL (both)."""

    NONE = 0
    BACKWARD = enum.auto()
    FORWARD = enum.auto()
    FULL = BACKWARD | FORWARD

    @property
    def names(self) -> list[str]:
        return [
            d.name or "" for d in (Direction.BACKWARD, Direction.FORWARD) if self & d
        ]


B, F, BOTH, NONE = Direction.BACKWARD, Direction.FORWARD, Direction.FULL, Direction.NONE


class Bump(enum.IntEnum):
    """A semver bump (semver.org): what a change needs or a version move gives."""

    NONE = 0
    PATCH = 1
    MINOR = 2
    MAJOR = 3


@dataclass(frozen=True, order=True)
class Finding:
    """One change: ``rule``, the ``current`` and ``previous`` locations, the
    ``message`` (past tense, values quoted), the directions it ``breaks`` and the
    ``subject`` (NSID or sample-schema name, for ``ignore`` globs). Ordered and
    compared by (current location, rule, message)."""

    current: Span
    rule: str
    message: str
    previous: Span = field(compare=False)
    breaks: Direction = field(compare=False, default=Direction.NONE)
    subject: str = field(compare=False, default="")
    allowed: bool = field(compare=False, default=False)
    """A break of a sample schema whose declared version is a MAJOR bump (the
    message says so): reported as INFO."""

    def severity(self, mode: Direction) -> Severity:
        """INFO when ``allowed`` by a declared MAJOR bump; else ERROR when the change
        breaks ``mode``; else the rule's own severity (WARNING for a break in the
        other direction, INFO for plain changes, ERROR for ``major`` rules)."""
        if self.allowed:
            return Severity.INFO
        if self.breaks & mode:
            return Severity.ERROR
        return COMPAT_RULES[self.rule].severity

    def needs_major(self, mode: Direction) -> bool:
        """True when the change breaks ``mode`` or its rule is a ``major`` rule
        (breaks the generated code)."""
        return bool(self.breaks & mode) or COMPAT_RULES[self.rule].major


@dataclass(frozen=True)
class At:
    """Where a pair sits: a human label (``where``), both locations, the subject,
    and — for ``semver`` rules — the bump the schema's changes need."""

    where: str
    prev: Span
    curr: Span
    subject: str
    needed: Bump = Bump.NONE
    because: tuple[str, ...] = ()
    """For ``semver`` rules: the rule IDs that decide ``needed``."""
    pinned: bool = False
    """Inside a changed ref's targets: findings stay at the ref's location."""


Handler = Callable[[Any, Any, At], Iterable[str]]


@dataclass(frozen=True)
class CompatRule:
    """A registered rule. ``target`` is what the walker hands it: ``def``
    (:class:`Def` pairs), ``xrpc`` (:class:`XrpcDef`/:class:`SubscriptionDef`),
    ``field`` (:class:`Field`), ``type`` (IR types), ``schema`` and ``semver``
    (:class:`SampleSchema`), ``names`` (:class:`PyName`, the two sides of one
    generated attribute). ``on`` restricts ``type`` handlers to pairs where both
    sides are of the same class, one of ``on``."""

    id: str
    purpose: str
    breaks: Direction
    category: str
    target: str
    severity: Severity
    handler: Handler
    on: type | tuple[type, ...] | None = None
    major: bool = False
    """The change breaks the generated code (not data): needs a MAJOR bump."""


COMPAT_RULES: dict[str, CompatRule] = {}
CATEGORIES = ("DEF", "FIELD", "CONSTRAINT", "UNION", "XRPC", "SAMPLE", "SEMVER")
"""Rule categories, usable in ``use`` / ``except`` like rule IDs."""


def rule(
    id: str,
    breaks: Direction,
    category: str,
    target: str,
    *,
    on: type | tuple[type, ...] | None = None,
    severity: Severity | None = None,
    major: bool = False,
) -> Callable[[Handler], Handler]:
    """Register the decorated handler as rule ``id``; its docstring's first paragraph
    is the purpose. ``severity`` defaults to WARNING for rules that break some
    direction (when that direction is not checked), ERROR for ``major`` rules
    (which break the generated code, not data) and INFO otherwise."""
    assert category in CATEGORIES, category

    def register(handler: Handler) -> Handler:
        assert id not in COMPAT_RULES, id
        doc = (handler.__doc__ or "").strip().split("\n\n")[0]
        purpose = " ".join(doc.split())
        default = (
            Severity.ERROR if major else Severity.WARNING if breaks else Severity.INFO
        )
        COMPAT_RULES[id] = CompatRule(
            id,
            purpose,
            breaks,
            category,
            target,
            severity or default,
            handler,
            on,
            major,
        )
        return handler

    return register


# -- defs -----------------------------------------------------------------------------


@rule("DEF_DELETED", B, "DEF", "def")
def _def_deleted(d: Def | None, e: Def | None, at: At) -> Iterator[str]:
    """A def was deleted: old data of that type no longer validates."""
    if d is not None and e is None:
        yield f"Def {str(d.id)!r} ({d.kind}) was deleted."


@rule("DEF_ADDED", NONE, "DEF", "def")
def _def_added(d: Def | None, e: Def | None, at: At) -> Iterator[str]:
    """A def was added (compatible)."""
    if d is None and e is not None:
        yield f"Def {str(e.id)!r} ({e.kind}) was added."


_SWAPPABLE = frozenset({"object", "record"})


@rule("DEF_KIND_CHANGED", BOTH, "DEF", "def")
def _def_kind(d: Def | None, e: Def | None, at: At) -> Iterator[str]:
    """A def's type changed (e.g. string → object, query → procedure)."""
    changed = d is not None and e is not None and d.kind != e.kind
    if changed and d is not None and e is not None and {d.kind, e.kind} - _SWAPPABLE:
        yield f"Def {str(d.id)!r} changed from {d.kind!r} to {e.kind!r}."


@rule("DEF_OBJECT_RECORD_SWAPPED", NONE, "DEF", "def", severity=Severity.WARNING)
def _def_swapped(d: Def | None, e: Def | None, at: At) -> Iterator[str]:
    """A def switched between object and record: the same data shape (compared
    property by property), but refs and unions to it change meaning."""
    if d is not None and e is not None and {d.kind, e.kind} == _SWAPPABLE:
        yield f"Def {str(d.id)!r} changed from {d.kind!r} to {e.kind!r}."


def _key_change(d: Def | None, e: Def | None) -> tuple[str, str] | None:
    if (
        d is not None
        and e is not None
        and isinstance(d.body, RecordDef)
        and isinstance(e.body, RecordDef)
        and d.body.key != e.body.key
    ):
        return d.body.key, e.body.key
    return None


@rule("RECORD_KEY_CHANGED", BOTH, "DEF", "def")
def _record_key(d: Def | None, e: Def | None, at: At) -> Iterator[str]:
    """A record's key type changed between disjoint kinds (``tid`` ↔ ``nsid`` ↔
    ``literal:…``): existing records sit under keys the new type rejects."""
    if (change := _key_change(d, e)) and "any" not in change:
        yield f"The record key of {at.where!r} changed from {change[0]!r} to {change[1]!r}."


@rule("RECORD_KEY_NARROWED", B, "DEF", "def")
def _record_key_narrowed(d: Def | None, e: Def | None, at: At) -> Iterator[str]:
    """A record's key type narrowed from ``any``: existing keys may not fit."""
    if (change := _key_change(d, e)) and change[0] == "any":
        yield f"The record key of {at.where!r} narrowed from 'any' to {change[1]!r}."


@rule("RECORD_KEY_WIDENED", F, "DEF", "def")
def _record_key_widened(d: Def | None, e: Def | None, at: At) -> Iterator[str]:
    """A record's key type widened to ``any``: old readers reject the new keys."""
    if (change := _key_change(d, e)) and change[1] == "any":
        yield f"The record key of {at.where!r} widened from {change[0]!r} to 'any'."


# -- XRPC and subscriptions -----------------------------------------------------------


@rule("XRPC_BODY_CHANGED", BOTH, "XRPC", "xrpc")
def _xrpc_body(a: Any, b: Any, at: At) -> Iterator[str]:
    """A query/procedure input or output was added or removed."""
    if isinstance(a, XrpcDef) and isinstance(b, XrpcDef):
        for which in ("input", "output"):
            x, y = getattr(a, which), getattr(b, which)
            if (x is None) != (y is None):
                state = "added" if x is None else "removed"
                yield f"The {which} of {at.where!r} was {state}."


@rule("XRPC_ENCODING_CHANGED", BOTH, "XRPC", "xrpc")
def _xrpc_encoding(a: Any, b: Any, at: At) -> Iterator[str]:
    """A query/procedure input or output encoding (MIME type) changed."""
    if isinstance(a, XrpcDef) and isinstance(b, XrpcDef):
        for which in ("input", "output"):
            x, y = getattr(a, which), getattr(b, which)
            if x is not None and y is not None and x.encoding != y.encoding:
                yield (
                    f"The {which} encoding of {at.where!r} changed from "
                    f"{x.encoding!r} to {y.encoding!r}."
                )


@rule("XRPC_ERROR_REMOVED", F, "XRPC", "xrpc")
def _xrpc_error(a: Any, b: Any, at: At) -> Iterator[str]:
    """An error name was removed: clients matching on it no longer see it."""
    for err in sorted({n for n, _ in a.errors} - {n for n, _ in b.errors}):
        yield f"Error {err!r} of {at.where!r} was removed."


# -- properties and params ------------------------------------------------------------


@rule("FIELD_DELETED", F, "FIELD", "field")
def _field_deleted(f: Field | None, g: Field | None, at: At) -> Iterator[str]:
    """A property was deleted: a required one breaks old readers, and new writers
    may reuse the name with another type (rest.li#54)."""
    if f is not None and g is None:
        yield f"Property {f.name!r} of {at.where} was deleted."


@rule("FIELD_REQUIRED_ADDED", B, "FIELD", "field")
def _field_required_added(f: Field | None, g: Field | None, at: At) -> Iterator[str]:
    """A required property (or XRPC param) was added: old data lacks it."""
    if f is None and g is not None and g.required:
        yield f"A required property {g.name!r} was added to {at.where}."


@rule("FIELD_OPTIONAL_ADDED", NONE, "FIELD", "field")
def _field_optional_added(f: Field | None, g: Field | None, at: At) -> Iterator[str]:
    """An optional property was added (compatible)."""
    if f is None and g is not None and not g.required:
        yield f"An optional property {g.name!r} was added to {at.where}."


@rule("FIELD_MADE_REQUIRED", B, "FIELD", "field")
def _field_made_required(f: Field | None, g: Field | None, at: At) -> Iterator[str]:
    """An optional property became required: old data may lack it."""
    if f is not None and g is not None and g.required and not f.required:
        yield f"Property {f.name!r} of {at.where} became required."


@rule("FIELD_MADE_OPTIONAL", F, "FIELD", "field")
def _field_made_optional(f: Field | None, g: Field | None, at: At) -> Iterator[str]:
    """A required property became optional: old readers reject data without it."""
    if f is not None and g is not None and f.required and not g.required:
        yield f"Property {f.name!r} of {at.where} became optional."


@rule("FIELD_NULLABLE_ADDED", F, "FIELD", "field")
def _field_nullable_added(f: Field | None, g: Field | None, at: At) -> Iterator[str]:
    """A property became nullable: new data may hold null."""
    if f is not None and g is not None and g.nullable and not f.nullable:
        yield f"Property {f.name!r} of {at.where} became nullable."


@rule("FIELD_NULLABLE_REMOVED", B, "FIELD", "field")
def _field_nullable_removed(f: Field | None, g: Field | None, at: At) -> Iterator[str]:
    """A property stopped being nullable: old data may hold null."""
    if f is not None and g is not None and f.nullable and not g.nullable:
        yield f"Property {f.name!r} of {at.where} is no longer nullable."


@dataclass(frozen=True)
class PyName:
    """One side of a generated attribute: its Python name ``python``, the ``field``
    it names on this side, and the Python name the *other* side gives that field's
    wire name (``None`` when the other side has no such field)."""

    python: str
    field: Field
    elsewhere: str | None


@rule("FIELD_PYTHON_NAME_CHANGED", NONE, "FIELD", "names", major=True)
def _python_name(a: PyName, b: PyName, at: At) -> Iterator[str]:
    """A generated attribute now names another property: an error (code, not data).

    Code using the attribute silently reads a different field; the data is
    unaffected, so no direction breaks, but the change needs a MAJOR bump. Names
    come from ``naming.field_names``; issue 13 § 4."""
    if a.field.name != b.field.name:
        now = f"now {a.elsewhere!r}" if a.elsewhere else "deleted"
        yield (
            f"Python name {a.python!r} of {at.where} now names property "
            f"{b.field.name!r}; it named {a.field.name!r} ({now}): code using "
            f".{a.python} silently reads another field."
        )


# -- types ----------------------------------------------------------------------------


@rule("TYPE_CHANGED", BOTH, "FIELD", "type")
def _type_changed(a: Any, b: Any, at: At) -> Iterator[str]:
    """A value's type changed (string → integer, ref → union, …)."""
    if type(a) is not type(b):
        yield f"The type of {at.where} changed from {_kind(a)!r} to {_kind(b)!r}."


@rule("FORMAT_ADDED", B, "CONSTRAINT", "type", on=StringType)
def _format_added(a: StringType, b: StringType, at: At) -> Iterator[str]:
    """A string format was added: old data may not satisfy it."""
    if a.format is None and b.format is not None:
        yield f"Format {b.format!r} was added to {at.where}."


@rule("FORMAT_REMOVED", F, "CONSTRAINT", "type", on=StringType)
def _format_removed(a: StringType, b: StringType, at: At) -> Iterator[str]:
    """A string format was removed: new data may break old readers."""
    if a.format is not None and b.format is None:
        yield f"Format {a.format!r} was removed from {at.where}."


@rule("FORMAT_CHANGED", BOTH, "CONSTRAINT", "type", on=StringType)
def _format_changed(a: StringType, b: StringType, at: At) -> Iterator[str]:
    """A string format changed to another format."""
    if a.format is not None and b.format is not None and a.format != b.format:
        yield (f"The format of {at.where} changed from {a.format!r} to {b.format!r}.")


@rule(
    "CONST_CHANGED",
    BOTH,
    "CONSTRAINT",
    "type",
    on=(StringType, IntegerType, BooleanType),
)
def _const_changed(a: Any, b: Any, at: At) -> Iterator[str]:
    """A const value was added, removed or changed."""
    if a.const != b.const:
        yield f"The const of {at.where} changed from {a.const!r} to {b.const!r}."


@rule("ENUM_NARROWED", B, "CONSTRAINT", "type", on=(StringType, IntegerType))
def _enum_narrowed(a: Any, b: Any, at: At) -> Iterator[str]:
    """Values were removed from an enum (or an enum was added): old data may use
    them."""
    if b.enum is not None and (a.enum is None or set(a.enum) - set(b.enum)):
        removed = sorted(map(str, set(a.enum) - set(b.enum))) if a.enum else ["(any)"]
        yield f"The enum of {at.where} no longer allows {', '.join(removed)}."


@rule("ENUM_EXTENDED", F, "CONSTRAINT", "type", on=(StringType, IntegerType))
def _enum_extended(a: Any, b: Any, at: At) -> Iterator[str]:
    """Values were added to an enum (or the enum was dropped): old readers reject
    them."""
    if a.enum is not None and (b.enum is None or set(b.enum) - set(a.enum)):
        added = sorted(map(str, set(b.enum) - set(a.enum))) if b.enum else ["(any)"]
        yield f"The enum of {at.where} now also allows {', '.join(added)}."


@rule("KNOWN_VALUES_CHANGED", NONE, "CONSTRAINT", "type", on=StringType)
def _known_values(a: StringType, b: StringType, at: At) -> Iterator[str]:
    """knownValues changed (an open set: informational)."""
    old, new = set(a.known_values or ()), set(b.known_values or ())
    if old != new:
        parts = []
        if new - old:
            parts.append(f"added {', '.join(sorted(new - old))}")
        if old - new:
            parts.append(f"removed {', '.join(sorted(old - new))}")
        yield f"The knownValues of {at.where} changed: {'; '.join(parts)}."


@rule(
    "DEFAULT_CHANGED",
    NONE,
    "CONSTRAINT",
    "type",
    on=(StringType, IntegerType, BooleanType),
)
def _default_changed(a: Any, b: Any, at: At) -> Iterator[str]:
    """A default changed (readers that fill it in now see another value)."""
    if a.default != b.default:
        yield (
            f"The default of {at.where} changed from {a.default!r} to {b.default!r}."
        )


def _bounds(a: Any, b: Any) -> Iterator[tuple[str, Any, Any, Any, Any]]:
    """(what, old min, new min, old max, new max) for each bound pair of a type."""
    if isinstance(a, StringType):
        yield "UTF-8 length", a.min_bytes, b.min_bytes, a.max_bytes, b.max_bytes
        yield (
            "grapheme count",
            a.min_graphemes,
            b.min_graphemes,
            a.max_graphemes,
            b.max_graphemes,
        )
    elif isinstance(a, IntegerType):
        yield "value", a.minimum, b.minimum, a.maximum, b.maximum
    elif isinstance(a, BytesType | ArrayType):
        yield "length", a.min_length, b.min_length, a.max_length, b.max_length
    elif isinstance(a, BlobType):
        yield "size", None, None, a.max_size, b.max_size


def _stricter_lo(x: int | None, y: int | None) -> bool:
    return y is not None and (x is None or y > x)


def _stricter_hi(x: int | None, y: int | None) -> bool:
    return y is not None and (x is None or y < x)


def _range(lo: int | None, hi: int | None) -> str:
    return f"{'-' if lo is None else lo}..{'-' if hi is None else hi}"


_BOUNDED = (StringType, IntegerType, BytesType, ArrayType, BlobType)


@rule("BOUND_NARROWED", B, "CONSTRAINT", "type", on=_BOUNDED)
def _bound_narrowed(a: Any, b: Any, at: At) -> Iterator[str]:
    """A length, grapheme, size or range bound got stricter: old data may break it."""
    for what, lo_a, lo_b, hi_a, hi_b in _bounds(a, b):
        if _stricter_lo(lo_a, lo_b) or _stricter_hi(hi_a, hi_b):
            yield (
                f"The {what} bounds of {at.where} narrowed: "
                f"{_range(lo_a, hi_a)} → {_range(lo_b, hi_b)}."
            )


@rule("BOUND_WIDENED", F, "CONSTRAINT", "type", on=_BOUNDED)
def _bound_widened(a: Any, b: Any, at: At) -> Iterator[str]:
    """A length, grapheme, size or range bound got looser: new data may break old
    readers."""
    for what, lo_a, lo_b, hi_a, hi_b in _bounds(a, b):
        if _stricter_lo(lo_b, lo_a) or _stricter_hi(hi_b, hi_a):
            yield (
                f"The {what} bounds of {at.where} widened: "
                f"{_range(lo_a, hi_a)} → {_range(lo_b, hi_b)}."
            )


def _covered(mime: str, patterns: Iterable[str]) -> bool:
    """True when one of the MIME ``patterns`` (``*/*``, ``image/*``, exact) accepts
    every type ``mime`` (itself possibly a pattern) accepts (Lexicon spec § blob)."""
    for p in patterns:
        if p in ("*/*", mime):
            return True
        if p.endswith("/*") and mime.startswith(p[:-1]) and mime != "*/*":
            return True
    return False


def _accept_gained(a: BlobType, b: BlobType) -> list[str]:
    old, new = a.accept or ("*/*",), b.accept or ("*/*",)
    return sorted({m for m in new if not _covered(m, old)})


@rule("BLOB_ACCEPT_NARROWED", B, "CONSTRAINT", "type", on=BlobType)
def _blob_narrowed(a: BlobType, b: BlobType, at: At) -> Iterator[str]:
    """A blob accepts fewer MIME types."""
    if gone := _accept_gained(b, a):
        yield f"The blob {at.where} no longer accepts {', '.join(gone)}."


@rule("BLOB_ACCEPT_WIDENED", F, "CONSTRAINT", "type", on=BlobType)
def _blob_widened(a: BlobType, b: BlobType, at: At) -> Iterator[str]:
    """A blob accepts more MIME types."""
    if new := _accept_gained(a, b):
        yield f"The blob {at.where} now accepts {', '.join(new)}."


# -- unions and refs ------------------------------------------------------------------


@rule("UNION_CLOSED", B, "UNION", "type", on=UnionType)
def _union_closed(a: UnionType, b: UnionType, at: At) -> Iterator[str]:
    """An open union was closed: old data may hold other types."""
    if b.closed and not a.closed:
        yield f"The union {at.where} was closed."


@rule("UNION_OPENED", F, "UNION", "type", on=UnionType)
def _union_opened(a: UnionType, b: UnionType, at: At) -> Iterator[str]:
    """A closed union was opened: new data may hold types old readers reject."""
    if a.closed and not b.closed:
        yield f"The union {at.where} was opened."


@rule("UNION_REF_REMOVED", B, "UNION", "type", on=UnionType)
def _union_ref_removed(a: UnionType, b: UnionType, at: At) -> Iterator[str]:
    """A member was removed from a closed union: old data may hold it."""
    if b.closed:
        for ref in sorted({str(r) for r in a.refs} - {str(r) for r in b.refs}):
            yield f"Member {ref!r} was removed from the closed union {at.where}."


@rule("OPEN_UNION_REF_REMOVED", NONE, "UNION", "type", on=UnionType)
def _open_union_ref_removed(a: UnionType, b: UnionType, at: At) -> Iterator[str]:
    """A member was removed from an open union: old data still validates, but new
    readers no longer type it (it becomes an unknown member)."""
    if not b.closed:
        for ref in sorted({str(r) for r in a.refs} - {str(r) for r in b.refs}):
            yield f"Member {ref!r} was removed from the open union {at.where}."


@rule("UNION_REF_ADDED", F, "UNION", "type", on=UnionType)
def _union_ref_added(a: UnionType, b: UnionType, at: At) -> Iterator[str]:
    """A closed union gained a member: old readers reject it."""
    if b.closed:
        for ref in sorted({str(r) for r in b.refs} - {str(r) for r in a.refs}):
            yield f"Member {ref!r} was added to the closed union {at.where}."


@rule("REF_TARGET_CHANGED", BOTH, "UNION", "type", on=RefType)
def _ref_target(a: RefType, b: RefType, at: At) -> Iterator[str]:
    """A ref points at another def: data carrying the old target's ``$type`` is
    rejected (the two targets are also compared property by property)."""
    if a.target != b.target:
        yield (
            f"The ref of {at.where} changed from "
            f"{str(a.target)!r} to {str(b.target)!r}."
        )


# -- sample schemas -------------------------------------------------------------------


@rule("SAMPLE_ARRAY_DTYPE_CHANGED", BOTH, "SAMPLE", "type", on=NDArrayType)
def _dtype(a: NDArrayType, b: NDArrayType, at: At) -> Iterator[str]:
    """An array's dtype changed."""
    if a.dtype != b.dtype:
        yield (
            f"The dtype of {at.where} changed from "
            f"{a.dtype or 'any'!r} to {b.dtype or 'any'!r}."
        )


def _shape_change(a: NDArrayType, b: NDArrayType) -> tuple[bool, bool]:
    """(narrowed, widened): a shape change that is neither strictly narrower nor
    strictly wider (e.g. ``(3, *)`` → ``(*, 4)``) is both."""
    if a.shape == b.shape:
        return False, False
    narrowed = _shape_narrower(b.shape, a.shape)
    widened = _shape_narrower(a.shape, b.shape)
    return narrowed or not widened, widened or not narrowed


@rule("SAMPLE_ARRAY_SHAPE_NARROWED", B, "SAMPLE", "type", on=NDArrayType)
def _shape_narrowed(a: NDArrayType, b: NDArrayType, at: At) -> Iterator[str]:
    """An array's shape got stricter: old arrays may not fit."""
    if _shape_change(a, b)[0]:
        yield (
            f"The shape of {at.where} narrowed from "
            f"{_shape(a.shape)} to {_shape(b.shape)}."
        )


@rule("SAMPLE_ARRAY_SHAPE_WIDENED", F, "SAMPLE", "type", on=NDArrayType)
def _shape_widened(a: NDArrayType, b: NDArrayType, at: At) -> Iterator[str]:
    """An array's shape got looser: new arrays may not fit old readers."""
    if _shape_change(a, b)[1]:
        yield (
            f"The shape of {at.where} widened from "
            f"{_shape(a.shape)} to {_shape(b.shape)}."
        )


@rule("SAMPLE_ARRAY_DIMS_CHANGED", NONE, "SAMPLE", "type", on=NDArrayType)
def _dims(a: NDArrayType, b: NDArrayType, at: At) -> Iterator[str]:
    """An array's dimension names changed (same bytes, new meaning: review it)."""
    if a.dims != b.dims:
        yield (
            f"The dimension names of {at.where} changed from "
            f"{list(a.dims or ())} to {list(b.dims or ())}."
        )


@rule("SAMPLE_ARRAY_FORMAT_CHANGED", BOTH, "SAMPLE", "type", on=NDArrayType)
def _array_format(a: NDArrayType, b: NDArrayType, at: At) -> Iterator[str]:
    """An array's shim or array-format version changed: the bytes differ."""
    if (a.format, a.shim_version) != (b.format, b.shim_version):
        yield (
            f"The array format of {at.where} changed from "
            f"{a.format} {a.shim_version} to {b.format} {b.shim_version}."
        )


@rule("SCHEMA_DELETED", B, "SAMPLE", "schema")
def _schema_deleted(
    s: SampleSchema | None, t: SampleSchema | None, at: At
) -> Iterator[str]:
    """A sample schema was deleted: its datasets lose their type."""
    if s is not None and t is None:
        yield f"Sample schema {s.name!r} ({s.version}) was deleted."


@rule("SCHEMA_ADDED", NONE, "SAMPLE", "schema")
def _schema_added(
    s: SampleSchema | None, t: SampleSchema | None, at: At
) -> Iterator[str]:
    """A sample schema was added (compatible)."""
    if s is None and t is not None:
        yield f"Sample schema {t.name!r} ({t.version}) was added."


@rule("SCHEMA_DOC_CHANGED", NONE, "SAMPLE", "schema")
def _schema_doc(
    s: SampleSchema | None, t: SampleSchema | None, at: At
) -> Iterator[str]:
    """A sample schema's description, metadata or a field description changed
    (a PATCH change)."""
    if s is None or t is None:
        return
    what = []
    if s.description != t.description:
        what.append("description")
    if s.metadata_json != t.metadata_json:
        what.append("metadata")
    new = {f.name: f.description for f in t.fields}
    changed = [
        f.name for f in s.fields if f.name in new and new[f.name] != f.description
    ]
    what += [f"the description of field {n!r}" for n in changed]
    if what:
        listed = ", ".join(what[:-1]) + " and " + what[-1] if len(what) > 1 else what[0]
        yield f"The {listed} of sample schema {s.name!r} changed."


@rule("SCHEMA_VERSION_CONFLICT", NONE, "SEMVER", "semver", severity=Severity.ERROR)
def _version_conflict(s: SampleSchema, t: SampleSchema, at: At) -> Iterator[str]:
    """Two schema records share a name and version but differ (versions are
    immutable once published). The message names the first JSON pointers that
    differ (``createdAt`` aside), previous value first."""
    if s.version == t.version and _content(s) != _content(t):
        where = ""
        if s.record_json is not None and t.record_json is not None:
            found = schema_differences(
                json.loads(s.record_json), json.loads(t.record_json)
            )
            where = f" ({found})" if found else ""
        yield (
            f"Sample schema {s.name!r} version {s.version} differs from the "
            f"published one with the same version{where}; bump the version."
        )


@rule(
    "SCHEMA_VERSION_BUMP_TOO_SMALL", NONE, "SEMVER", "semver", severity=Severity.ERROR
)
def _bump(s: SampleSchema, t: SampleSchema, at: At) -> Iterator[str]:
    """The declared version moved less than the change needs (MAJOR for breaking
    changes, MINOR for compatible additions, PATCH for documentation)."""
    if s.version == t.version:
        return
    declared = declared_bump(s.version, t.version)
    if declared < at.needed:
        hint = ""
        if at.needed is Bump.MAJOR:
            hint = (
                f" Declare a new major version, and offer a migration lens "
                f"(atdata-gen new-lens {s.name}@{s.version} {t.name}@{t.version})."
            )
        yield (
            f"Sample schema {s.name!r} moved {s.version} → {t.version} "
            f"({declared.name}), but its changes ({', '.join(at.because)}) need a "
            f"{at.needed.name} bump.{hint}"
        )


@rule("SCHEMA_MAJOR_CHANGE", NONE, "SEMVER", "semver")
def _major(s: SampleSchema, t: SampleSchema, at: At) -> Iterator[str]:
    """A new major version of a sample schema: data of the old version reads as
    the new one through a migration lens."""
    if at.needed is Bump.MAJOR and declared_bump(s.version, t.version) is Bump.MAJOR:
        yield (
            f"Sample schema {s.name!r} {s.version} → {t.version} is a MAJOR change "
            f"({', '.join(at.because)}); migrate data of {s.version} with a lens: "
            f"atdata-gen new-lens {s.name}@{s.version} {t.name}@{t.version}"
        )


# -- the walker -----------------------------------------------------------------------


def _content(s: SampleSchema) -> tuple[Any, ...]:
    return (s.fields, s.description, s.metadata_json, s.array_formats)


def _semver(version: str) -> tuple[int, int, int]:
    core = version.split("+", 1)[0].split("-", 1)[0]
    major, minor, patch = (
        [int(p) if p.isdigit() else 0 for p in core.split(".")] + [0, 0, 0]
    )[:3]
    return major, minor, patch


def declared_bump(old: str, new: str) -> Bump:
    """The bump a version move declares (semver.org § 6–8; for ``0.y.z`` a minor
    move counts as MAJOR and a patch move as MINOR, semver.org § 4). A move
    backwards or none declares NONE."""
    a, b = _semver(old), _semver(new)
    if b <= a:
        return Bump.NONE
    if b[0] != a[0]:
        return Bump.MAJOR
    if b[1] != a[1]:
        return Bump.MAJOR if a[0] == 0 else Bump.MINOR
    return Bump.MINOR if a[0] == 0 else Bump.PATCH


def needed_bump(findings: Iterable[Finding], mode: Direction) -> Bump:
    """The bump ``findings`` (of one schema pair) need under ``mode``: MAJOR when one
    breaks ``mode`` or the generated code (:meth:`Finding.needs_major`), PATCH when
    all are documentation, MINOR otherwise."""
    need = Bump.NONE
    for f in findings:
        if f.needs_major(mode):
            return Bump.MAJOR
        if COMPAT_RULES[f.rule].category != "SEMVER":
            doc = f.rule == "SCHEMA_DOC_CHANGED"
            need = max(need, Bump.PATCH if doc else Bump.MINOR)
    return need


_BY_TARGET: dict[str, list[CompatRule]] = {}


def _rules_for(target: str) -> list[CompatRule]:
    if not _BY_TARGET:
        for r in COMPAT_RULES.values():
            _BY_TARGET.setdefault(r.target, []).append(r)
    return _BY_TARGET.get(target, [])


_APPLICABLE: dict[tuple[str, type, type], list[CompatRule]] = {}
"""The rules :meth:`_Walker.emit` runs, by target and the classes of the pair (which
rules apply depends only on them)."""

_AT_FIELDS = frozenset(At.__dataclass_fields__)


def _at(at: At, **changes: Any) -> At:
    """``dataclasses.replace(at, **changes)`` without its per-call field walk (the
    walker makes one per pair: ~15,000 for the official corpus). ``At`` is a plain
    frozen dataclass with no ``__post_init__``, so a copy of its ``__dict__`` is
    the same value."""
    assert changes.keys() <= _AT_FIELDS, changes.keys() - _AT_FIELDS
    new = object.__new__(At)
    new.__dict__.update(at.__dict__)
    new.__dict__.update(changes)
    return new


class _Walker:
    """Pairs elements of two linked models and runs the registered rules."""

    def __init__(self, prev: LinkedModel, curr: LinkedModel, mode: Direction) -> None:
        self.prev, self.curr, self.mode = prev, curr, mode
        self.out: list[Finding] = []
        self.seen: set[tuple[DefId, DefId]] = set()

    def emit(self, target: str, a: Any, b: Any, at: At) -> None:
        key = (target, type(a), type(b))
        rules = _APPLICABLE.get(key)
        if rules is None:  # the rules for this target and pair of classes
            rules = _APPLICABLE[key] = [
                r
                for r in _rules_for(target)
                if r.on is None or (type(a) is type(b) and isinstance(a, r.on))
            ]
        for r in rules:
            for message in r.handler(a, b, at):
                self.out.append(
                    Finding(at.curr, r.id, message, at.prev, r.breaks, at.subject)
                )

    # Lexicons ------------------------------------------------------------------------
    def defs(self) -> None:
        prev = {d.id: d for s in self.prev.schemas for d in s.defs}
        curr = {d.id: d for s in self.curr.schemas for d in s.defs}
        same_model = self.prev is self.curr
        for did in sorted(prev.keys() | curr.keys()):
            d, e = prev.get(did), curr.get(did)
            if same_model and d is e:
                # One model on both sides (the runner reuses it for identical
                # files): a def paired with itself, with the same Python names,
                # has no change for any rule to report. Sample schemas are still
                # walked (``transitive`` compares their versions with each other).
                continue
            at = At(
                str(did),
                d.span if d else _NOWHERE,
                e.span if e else _file_span(self.curr, did, d.span if d else _NOWHERE),
                did.nsid,
            )
            self.emit("def", d, e, at)
            if d is not None and e is not None:
                self.lexicon_names(d, e, at)
                if d.kind == e.kind:
                    self.body(d.body, e.body, at)
                elif {d.kind, e.kind} == _SWAPPABLE:
                    self.types(_object_of(d.body), _object_of(e.body), at)

    def lexicon_names(self, d: Def, e: Def, at: At) -> None:
        """The Python field names of each object both defs hold at the same path."""
        old = dict(walk_objects(d))
        for path, obj in walk_objects(e):
            prev = old.get(path)
            a = self.prev.names.fields.get((d.id, path))
            b = self.curr.names.fields.get((e.id, path))
            if prev is None or a is None or b is None:
                continue
            label = "/".join((str(e.id), *path)) if path else str(e.id)
            self.names(
                dict(zip(a, prev.fields, strict=True)),
                dict(zip(b, obj.fields, strict=True)),
                _at(at, where=label),
            )

    def names(self, a: dict[str, Field], b: dict[str, Field], at: At) -> None:
        """Pair the Python names (name → field) of one object on both sides."""
        a_of = {f.name: py for py, f in a.items()}
        b_of = {f.name: py for py, f in b.items()}
        for py in sorted(a.keys() & b.keys()):
            f, g = a[py], b[py]
            self.emit(
                "names",
                PyName(py, f, b_of.get(f.name)),
                PyName(py, g, a_of.get(g.name)),
                _at(at, prev=f.span, curr=g.span),
            )

    def body(self, a: Any, b: Any, at: At) -> None:
        if isinstance(a, RecordDef) and isinstance(b, RecordDef):
            self.fields(
                a.object.fields,
                b.object.fields,
                _at(at, curr=b.object.span or at.curr),
            )
        elif isinstance(a, XrpcDef | SubscriptionDef) and isinstance(
            b, XrpcDef | SubscriptionDef
        ):
            self.emit("xrpc", a, b, at)
            self.fields(
                a.params.fields if a.params else (),
                b.params.fields if b.params else (),
                _at(at, where=f"the params of {at.where}"),
            )
            pairs: list[tuple[Any, Any, str]] = []
            if isinstance(a, XrpcDef) and isinstance(b, XrpcDef):
                pairs = [
                    (getattr(x, "schema", None), getattr(y, "schema", None), which)
                    for which, x, y in (
                        ("input", a.input, b.input),
                        ("output", a.output, b.output),
                    )
                ]
            elif isinstance(a, SubscriptionDef) and isinstance(b, SubscriptionDef):
                pairs = [(a.message, b.message, "messages")]
            for x, y, which in pairs:
                if x is not None and y is not None:
                    self.types(x, y, _at(at, where=f"the {which} of {at.where}"))
        elif _is_type(a) and _is_type(b):
            self.types(a, b, at)

    def fields(self, a: tuple[Field, ...], b: tuple[Field, ...], at: At) -> None:
        old = {f.name: f for f in a}
        new = {f.name: f for f in b}
        for name in [*old, *(n for n in new if n not in old)]:
            f, g = old.get(name), new.get(name)
            here = at
            if not at.pinned:
                here = _at(
                    at,
                    prev=f.span if f else _NOWHERE,
                    curr=g.span if g else at.curr,
                )
            self.emit("field", f, g, here)
            if f is not None and g is not None:
                self.types(
                    f.type,
                    g.type,
                    _at(here, where=f"property {name!r} of {at.where}"),
                )

    def types(self, a: Any, b: Any, at: At) -> None:
        if not at.pinned:
            at = _at(
                at,
                prev=getattr(a, "span", None) or at.prev,
                curr=getattr(b, "span", None) or at.curr,
            )
        self.emit("type", a, b, at)
        if type(a) is not type(b):
            return
        if isinstance(a, RefType) and a.target != b.target:
            key = (a.target, b.target)
            d, e = self.prev.resolve(a.target), self.curr.resolve(b.target)
            if key not in self.seen and d is not None and e is not None:
                self.seen.add(key)
                inner = _at(at, where=f"the ref target of {at.where}", pinned=True)
                if d.kind != e.kind:
                    self.emit("type", d.body, e.body, inner)
                else:
                    self.body(d.body, e.body, inner)
        elif isinstance(a, ArrayType):
            self.types(a.items, b.items, _at(at, where=f"the items of {at.where}"))
        elif isinstance(a, ObjectType):
            self.fields(a.fields, b.fields, at)

    # Sample schemas ------------------------------------------------------------------
    def samples(self, transitive: bool) -> None:
        prev_all = {(s.name, s.version): s for s in self.prev.samples}
        curr_all = {(s.name, s.version): s for s in self.curr.samples}
        prev, curr = _latest(self.prev.samples), _latest(self.curr.samples)
        every = sorted({**prev_all, **curr_all}.items())
        for name in sorted(prev.keys() | curr.keys()):
            s, t = prev.get(name), curr.get(name)
            at = At(
                f"sample schema {name}",
                s.span if s else _NOWHERE,
                t.span if t else (s.span if s else _NOWHERE),
                name,
            )
            if s is None or t is None:
                self.emit("schema", s, t, at)
                continue
            earlier = [s]
            if transitive:
                earlier = [
                    x
                    for k, x in every
                    if k[0] == name and _semver(x.version) < _semver(t.version)
                ] or [s]
            for old in earlier:
                self.schema_pair(old, t, at)
        for key in sorted(prev_all.keys() & curr_all.keys()):
            s, t = prev_all[key], curr_all[key]
            if (s, t) != (prev.get(key[0]), curr.get(key[0])):
                self.emit(
                    "semver",
                    s,
                    t,
                    At(f"sample schema {key[0]}", s.span, t.span, key[0]),
                )

    def schema_pair(self, s: SampleSchema, t: SampleSchema, at: At) -> None:
        where = f"sample schema {s.name} ({s.version} → {t.version})"
        start = len(self.out)
        self.emit("schema", s, t, _at(at, prev=s.span, curr=t.span))
        self.fields(s.fields, t.fields, _at(at, where=where, prev=s.span, curr=t.span))
        self.names(
            _py_names(self.prev.names.samples, s),
            _py_names(self.curr.names.samples, t),
            _at(at, where=f"sample schema {s.name} ({s.version} → {t.version})"),
        )
        changes = self.out[start:]
        need = needed_bump(changes, self.mode)
        because = sorted(
            {
                f.rule
                for f in changes
                if need is not Bump.MAJOR or f.needs_major(self.mode)
            }
        )
        if declared_bump(s.version, t.version) is Bump.MAJOR:
            # semver.org § 8: a MAJOR version may make incompatible changes. The
            # breaks are still reported (as info), with the migration command.
            note = (
                f" Allowed by the MAJOR version {t.version}; migrate data of "
                f"{s.version} with a lens (atdata-gen new-lens {s.name}@{s.version} "
                f"{t.name}@{t.version})."
            )
            self.out[start:] = [
                replace(f, message=f.message + note, allowed=True)
                if f.breaks or COMPAT_RULES[f.rule].major
                else f
                for f in changes
            ]
        self.emit(
            "semver",
            s,
            t,
            _at(at, prev=s.span, curr=t.span, needed=need, because=tuple(because)),
        )


def _py_names(
    table: Mapping[tuple[str, str], tuple[Any, str, tuple[str, ...]]],
    s: SampleSchema,
) -> dict[str, Field]:
    entry = table.get((s.name, s.version))
    return dict(zip(entry[2], s.fields, strict=True)) if entry else {}


def _object_of(body: Any) -> Any:
    return body.object if isinstance(body, RecordDef) else body


_NOWHERE = Span("")
"""The previous location of something that did not exist before."""


def _latest(samples: tuple[SampleSchema, ...]) -> dict[str, SampleSchema]:
    out: dict[str, SampleSchema] = {}
    for s in samples:
        if s.name not in out or _semver(s.version) > _semver(out[s.name].version):
            out[s.name] = s
    return out


def _shape(shape: tuple[int | None, ...] | None) -> str:
    if shape is None:
        return "(any rank)"
    return "(" + ", ".join("*" if d is None else str(d) for d in shape) + ")"


def _shape_narrower(
    a: tuple[int | None, ...] | None, b: tuple[int | None, ...] | None
) -> bool:
    """True when every array valid for shape ``a`` is valid for ``b`` and not the
    converse (``a`` is strictly narrower)."""
    if a == b or a is None:
        return False
    if b is None:
        return True
    if len(a) != len(b):
        return False
    return all(y is None or x == y for x, y in zip(a, b, strict=True))


def _is_type(body: Any) -> bool:
    return isinstance(
        body,
        StringType
        | IntegerType
        | BooleanType
        | BytesType
        | ArrayType
        | BlobType
        | ObjectType
        | RefType
        | UnionType
        | FloatType
        | NDArrayType,
    )


def _kind(t: Any) -> str:
    names = {
        StringType: "string",
        IntegerType: "integer",
        BooleanType: "boolean",
        BytesType: "bytes",
        ArrayType: "array",
        BlobType: "blob",
        ObjectType: "object",
        RefType: "ref",
        UnionType: "union",
        FloatType: "number",
        NDArrayType: "ndarray",
    }
    return names.get(type(t), type(t).__name__.removesuffix("Type").lower())


def _file_span(model: LinkedModel, did: DefId, fallback: Span) -> Span:
    for s in model.schemas:
        if s.nsid == did.nsid:
            return s.span
    return fallback


def compare(
    previous: LinkedModel,
    current: LinkedModel,
    mode: Direction = Direction.FULL,
    *,
    transitive: bool = False,
) -> list[Finding]:
    """Every change from ``previous`` to ``current``, sorted and de-duplicated.

    ``mode`` only decides which bump sample-schema changes need (semver rules); the
    directions each finding breaks are on the finding. With ``transitive``, the
    latest version of each sample schema is also compared with every earlier version
    present on either side."""
    w = _Walker(previous, current, mode)
    w.defs()
    w.samples(transitive)
    return sorted(set(w.out))
