"""Compatibility and evolution rules: compare a previous and a current set of schemas.

Directions, after Confluent Schema Registry: **BACKWARD** — the new schema still
accepts old data; **FORWARD** — old readers still accept new data; **FULL** — both.
The Lexicon spec's "Lexicon Evolution" rule (old data must validate under the new
Lexicon and new data under the old one) is FULL, the default.

Each rule is one registered unit (:func:`compat_rule`): an ID, a one-line purpose,
the directions it breaks (empty = informational), and a pure handler that receives
the previous and current element and yields findings. Pairs are matched by def id
(Lexicons) and by schema name (sample schemas); additions and deletions are findings
of their own.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from ..diagnostics import Severity, Span
from ..ir.link import LinkedModel
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

__all__ = [
    "COMPAT_RULES",
    "CompatRule",
    "Direction",
    "Finding",
    "compare",
]


class Direction(enum.Flag):
    """Which compatibility a change breaks."""

    NONE = 0
    BACKWARD = enum.auto()
    FORWARD = enum.auto()
    FULL = BACKWARD | FORWARD


B, F, BOTH, INFO = Direction.BACKWARD, Direction.FORWARD, Direction.FULL, Direction.NONE


@dataclass(frozen=True, order=True)
class Finding:
    """One change: ``rule``, the ``current`` and ``previous`` locations, the
    ``message`` (past tense, values quoted) and the directions it ``breaks``."""

    current: Span
    rule: str
    message: str
    previous: Span = field(compare=False)
    breaks: Direction = field(compare=False, default=Direction.NONE)

    def severity(self, mode: Direction) -> Severity:
        return (
            Severity.ERROR
            if self.breaks & mode
            else (Severity.WARNING if self.breaks else Severity.INFO)
        )


@dataclass(frozen=True)
class CompatRule:
    """A registered rule: ``id``, ``purpose``, ``breaks``, ``target`` and handler."""

    id: str
    purpose: str
    breaks: Direction
    target: str


COMPAT_RULES: dict[str, CompatRule] = {}


def compat_rule(id: str, purpose: str, breaks: Direction, target: str) -> None:
    """Register a rule's metadata (the comparison code below emits its findings)."""
    assert id not in COMPAT_RULES, id
    COMPAT_RULES[id] = CompatRule(id, purpose, breaks, target)


for _id, _purpose, _breaks, _target in [
    ("DEF_DELETED", "A def was deleted.", BOTH, "def"),
    ("DEF_ADDED", "A def was added (compatible).", INFO, "def"),
    ("DEF_KIND_CHANGED", "A def's type changed.", BOTH, "def"),
    ("RECORD_KEY_CHANGED", "A record's key type changed.", BOTH, "def"),
    (
        "FIELD_DELETED",
        (
            "A property was deleted (new writers may reuse the name "
            "with another type; a required one breaks old readers)."
        ),
        F,
        "field",
    ),
    (
        "FIELD_REQUIRED_ADDED",
        "A required property was added: old data lacks it.",
        B,
        "field",
    ),
    (
        "FIELD_OPTIONAL_ADDED",
        "An optional property was added (compatible).",
        INFO,
        "field",
    ),
    ("FIELD_MADE_REQUIRED", "An optional property became required.", B, "field"),
    ("FIELD_MADE_OPTIONAL", "A required property became optional.", F, "field"),
    (
        "FIELD_NULLABLE_ADDED",
        "A property became nullable: new data may be null.",
        F,
        "field",
    ),
    (
        "FIELD_NULLABLE_REMOVED",
        "A property stopped being nullable: old data may hold null.",
        B,
        "field",
    ),
    ("TYPE_CHANGED", "A value's type changed.", BOTH, "type"),
    (
        "FORMAT_ADDED",
        "A string format was added: old data may not satisfy it.",
        B,
        "type",
    ),
    (
        "FORMAT_REMOVED",
        "A string format was removed: new data may break old readers.",
        F,
        "type",
    ),
    ("FORMAT_CHANGED", "A string format changed.", BOTH, "type"),
    ("CONST_CHANGED", "A const value was added, removed or changed.", BOTH, "type"),
    (
        "ENUM_NARROWED",
        "Values were removed from an enum: old data may use them.",
        B,
        "type",
    ),
    (
        "ENUM_EXTENDED",
        "Values were added to an enum: old readers reject them.",
        F,
        "type",
    ),
    (
        "KNOWN_VALUES_CHANGED",
        "knownValues changed (open set; informational).",
        INFO,
        "type",
    ),
    (
        "BOUND_NARROWED",
        "A length, size or range bound got stricter: old data may break it.",
        B,
        "type",
    ),
    (
        "BOUND_WIDENED",
        "A length, size or range bound got looser: new data may break old readers.",
        F,
        "type",
    ),
    ("BLOB_ACCEPT_NARROWED", "A blob accepts fewer MIME types.", B, "type"),
    ("BLOB_ACCEPT_WIDENED", "A blob accepts more MIME types.", F, "type"),
    (
        "UNION_CLOSED",
        "An open union was closed: old data may hold other types.",
        B,
        "type",
    ),
    (
        "UNION_OPENED",
        "A closed union was opened: new data may hold types old readers reject.",
        F,
        "type",
    ),
    ("UNION_REF_REMOVED", "A union member was removed.", B, "type"),
    (
        "UNION_REF_ADDED",
        "A closed union gained a member: old readers reject it.",
        F,
        "type",
    ),
    ("REF_TARGET_CHANGED", "A ref points at another def.", BOTH, "type"),
    ("DEFAULT_CHANGED", "A default changed (informational).", INFO, "type"),
    ("XRPC_ENCODING_CHANGED", "An input or output encoding changed.", BOTH, "def"),
    ("XRPC_BODY_CHANGED", "An input or output body was added or removed.", BOTH, "def"),
    ("XRPC_ERROR_REMOVED", "An error name was removed.", F, "def"),
    ("SAMPLE_ARRAY_DTYPE_CHANGED", "An array's dtype changed.", BOTH, "field"),
    ("SAMPLE_ARRAY_SHAPE_NARROWED", "An array's shape got stricter.", B, "field"),
    ("SAMPLE_ARRAY_SHAPE_WIDENED", "An array's shape got looser.", F, "field"),
    ("SAMPLE_ARRAY_DIMS_CHANGED", "An array's dimension names changed.", INFO, "field"),
    (
        "SAMPLE_ARRAY_FORMAT_CHANGED",
        "An array's shim or format version changed.",
        BOTH,
        "field",
    ),
    ("SCHEMA_DELETED", "A sample schema was deleted.", BOTH, "schema"),
    ("SCHEMA_ADDED", "A sample schema was added (compatible).", INFO, "schema"),
]:
    compat_rule(_id, _purpose, _breaks, _target)


class _Comparer:
    def __init__(self, prev: LinkedModel, curr: LinkedModel) -> None:
        self.prev, self.curr = prev, curr
        self.out: list[Finding] = []

    def add(self, rule: str, message: str, prev: Span, curr: Span) -> None:
        self.out.append(Finding(curr, rule, message, prev, COMPAT_RULES[rule].breaks))

    # -- types ------------------------------------------------------------------------
    def types(self, a: Any, b: Any, where: str, sa: Span, sb: Span) -> None:
        if type(a) is not type(b):
            self.add(
                "TYPE_CHANGED",
                f"The type of {where} changed from {_kind(a)!r} to {_kind(b)!r}.",
                sa,
                sb,
            )
            return
        if isinstance(a, StringType):
            self.string(a, b, where, sa, sb)
        elif isinstance(a, IntegerType):
            self.integer(a, b, where, sa, sb)
        elif isinstance(a, BooleanType):
            self.consts(a.const, b.const, where, sa, sb)
            self.defaults(a.default, b.default, where, sa, sb)
        elif isinstance(a, BytesType | ArrayType):
            self.bounds(
                "length",
                a.min_length,
                b.min_length,
                a.max_length,
                b.max_length,
                where,
                sa,
                sb,
            )
            if isinstance(a, ArrayType):
                self.types(a.items, b.items, f"the items of {where}", sa, sb)
        elif isinstance(a, BlobType):
            self.bounds("size", None, None, a.max_size, b.max_size, where, sa, sb)
            old, new = set(a.accept or ("*/*",)), set(b.accept or ("*/*",))
            if old - new:
                self.add(
                    "BLOB_ACCEPT_NARROWED",
                    f"{where} no longer accepts {', '.join(sorted(old - new))}.",
                    sa,
                    sb,
                )
            if new - old:
                self.add(
                    "BLOB_ACCEPT_WIDENED",
                    f"{where} now accepts {', '.join(sorted(new - old))}.",
                    sa,
                    sb,
                )
        elif isinstance(a, RefType):
            if a.target != b.target:
                self.add(
                    "REF_TARGET_CHANGED",
                    f"The ref of {where} changed from "
                    f"{str(a.target)!r} to {str(b.target)!r}.",
                    a.span,
                    b.span,
                )
        elif isinstance(a, UnionType):
            self.union(a, b, where)
        elif isinstance(a, ObjectType):
            self.fields(a.fields, b.fields, where, b.span)
        elif isinstance(a, NDArrayType):
            self.ndarray(a, b, where, sa, sb)

    def string(
        self, a: StringType, b: StringType, where: str, sa: Span, sb: Span
    ) -> None:
        if a.format != b.format:
            if a.format is None:
                self.add(
                    "FORMAT_ADDED", f"Format {b.format!r} was added to {where}.", sa, sb
                )
            elif b.format is None:
                self.add(
                    "FORMAT_REMOVED",
                    f"Format {a.format!r} was removed from {where}.",
                    sa,
                    sb,
                )
            else:
                self.add(
                    "FORMAT_CHANGED",
                    f"The format of {where} changed from {a.format!r} to {b.format!r}.",
                    sa,
                    sb,
                )
        self.consts(a.const, b.const, where, sa, sb)
        self.enums(a.enum, b.enum, where, sa, sb)
        if (a.known_values or ()) != (b.known_values or ()):
            self.add(
                "KNOWN_VALUES_CHANGED", f"The knownValues of {where} changed.", sa, sb
            )
        self.bounds(
            "UTF-8 length",
            a.min_bytes,
            b.min_bytes,
            a.max_bytes,
            b.max_bytes,
            where,
            sa,
            sb,
        )
        self.bounds(
            "grapheme count",
            a.min_graphemes,
            b.min_graphemes,
            a.max_graphemes,
            b.max_graphemes,
            where,
            sa,
            sb,
        )
        self.defaults(a.default, b.default, where, sa, sb)

    def integer(
        self, a: IntegerType, b: IntegerType, where: str, sa: Span, sb: Span
    ) -> None:
        self.consts(a.const, b.const, where, sa, sb)
        self.enums(a.enum, b.enum, where, sa, sb)
        self.bounds("value", a.minimum, b.minimum, a.maximum, b.maximum, where, sa, sb)
        self.defaults(a.default, b.default, where, sa, sb)

    def consts(self, a: Any, b: Any, where: str, sa: Span, sb: Span) -> None:
        if a != b:
            self.add(
                "CONST_CHANGED",
                f"The const of {where} changed from {a!r} to {b!r}.",
                sa,
                sb,
            )

    def defaults(self, a: Any, b: Any, where: str, sa: Span, sb: Span) -> None:
        if a != b:
            self.add(
                "DEFAULT_CHANGED",
                f"The default of {where} changed from {a!r} to {b!r}.",
                sa,
                sb,
            )

    def enums(self, a: Any, b: Any, where: str, sa: Span, sb: Span) -> None:
        if a == b:
            return
        if b is not None and (a is None or set(a) - set(b)):
            removed = sorted(map(str, set(a) - set(b))) if a is not None else ["(any)"]
            self.add(
                "ENUM_NARROWED",
                f"The enum of {where} no longer allows {', '.join(removed)}.",
                sa,
                sb,
            )
        if a is not None and (b is None or set(b) - set(a)):
            added = sorted(map(str, set(b) - set(a))) if b is not None else ["(any)"]
            self.add(
                "ENUM_EXTENDED",
                f"The enum of {where} now also allows {', '.join(added)}.",
                sa,
                sb,
            )

    def bounds(
        self,
        what: str,
        lo_a: int | None,
        lo_b: int | None,
        hi_a: int | None,
        hi_b: int | None,
        where: str,
        sa: Span,
        sb: Span,
    ) -> None:
        def stricter_lo(x: int | None, y: int | None) -> bool:
            return y is not None and (x is None or y > x)

        def stricter_hi(x: int | None, y: int | None) -> bool:
            return y is not None and (x is None or y < x)

        def show(lo: int | None, hi: int | None) -> str:
            return f"{'-' if lo is None else lo}..{'-' if hi is None else hi}"

        change = f"{show(lo_a, hi_a)} → {show(lo_b, hi_b)}"
        if stricter_lo(lo_a, lo_b) or stricter_hi(hi_a, hi_b):
            self.add(
                "BOUND_NARROWED",
                f"The {what} bounds of {where} narrowed: {change}.",
                sa,
                sb,
            )
        if stricter_lo(lo_b, lo_a) or stricter_hi(hi_b, hi_a):
            self.add(
                "BOUND_WIDENED",
                f"The {what} bounds of {where} widened: {change}.",
                sa,
                sb,
            )

    def union(self, a: UnionType, b: UnionType, where: str) -> None:
        if a.closed != b.closed:
            rule = "UNION_CLOSED" if b.closed else "UNION_OPENED"
            state = "closed" if b.closed else "opened"
            self.add(rule, f"The union {where} was {state}.", a.span, b.span)
        old, new = {str(r) for r in a.refs}, {str(r) for r in b.refs}
        for ref in sorted(old - new):
            self.add(
                "UNION_REF_REMOVED",
                f"Member {ref!r} was removed from the union {where}.",
                a.span,
                b.span,
            )
        if b.closed:
            for ref in sorted(new - old):
                self.add(
                    "UNION_REF_ADDED",
                    f"Member {ref!r} was added to the closed union {where}.",
                    a.span,
                    b.span,
                )

    def fields(
        self,
        a: tuple[Field, ...],
        b: tuple[Field, ...],
        where: str,
        container: Span | None = None,
    ) -> None:
        old = {f.name: f for f in a}
        new = {f.name: f for f in b}
        for name, f in old.items():
            g = new.get(name)
            label = f"property {name!r} of {where}"
            if g is None:
                self.add(
                    "FIELD_DELETED",
                    f"Property {name!r} of {where} was deleted.",
                    f.span,
                    container or f.span,
                )
                continue
            if f.required and not g.required:
                self.add(
                    "FIELD_MADE_OPTIONAL",
                    f"Property {name!r} of {where} became optional.",
                    f.span,
                    g.span,
                )
            if g.required and not f.required:
                self.add(
                    "FIELD_MADE_REQUIRED",
                    f"Property {name!r} of {where} became required.",
                    f.span,
                    g.span,
                )
            if g.nullable and not f.nullable:
                self.add(
                    "FIELD_NULLABLE_ADDED",
                    f"Property {name!r} of {where} became nullable.",
                    f.span,
                    g.span,
                )
            if f.nullable and not g.nullable:
                self.add(
                    "FIELD_NULLABLE_REMOVED",
                    f"Property {name!r} of {where} is no longer nullable.",
                    f.span,
                    g.span,
                )
            self.types(f.type, g.type, label, f.span, g.span)
        for name, g in new.items():
            if name in old:
                continue
            rule = "FIELD_REQUIRED_ADDED" if g.required else "FIELD_OPTIONAL_ADDED"
            kind = "required" if g.required else "optional"
            self.add(
                rule,
                f"A {kind} property {name!r} was added to {where}.",
                _NOWHERE,
                g.span,
            )

    def ndarray(
        self, a: NDArrayType, b: NDArrayType, where: str, sa: Span, sb: Span
    ) -> None:
        if (a.format, a.shim_version) != (b.format, b.shim_version):
            self.add(
                "SAMPLE_ARRAY_FORMAT_CHANGED",
                f"The array format of {where} "
                f"changed from {a.format} {a.shim_version} to {b.format} "
                f"{b.shim_version}.",
                sa,
                sb,
            )
        if a.dtype != b.dtype:
            self.add(
                "SAMPLE_ARRAY_DTYPE_CHANGED",
                f"The dtype of {where} changed from "
                f"{a.dtype or 'any'!r} to {b.dtype or 'any'!r}.",
                sa,
                sb,
            )
        if a.shape != b.shape:
            narrowed = _shape_narrower(b.shape, a.shape)
            widened = _shape_narrower(a.shape, b.shape)
            if narrowed or not widened:
                self.add(
                    "SAMPLE_ARRAY_SHAPE_NARROWED",
                    f"The shape of {where} changed "
                    f"from {_shape(a.shape)} to {_shape(b.shape)}.",
                    sa,
                    sb,
                )
            if widened or not narrowed:
                self.add(
                    "SAMPLE_ARRAY_SHAPE_WIDENED",
                    f"The shape of {where} changed "
                    f"from {_shape(a.shape)} to {_shape(b.shape)}.",
                    sa,
                    sb,
                )
        if a.dims != b.dims:
            self.add(
                "SAMPLE_ARRAY_DIMS_CHANGED",
                f"The dimension names of {where} changed from {a.dims} to {b.dims}.",
                sa,
                sb,
            )

    # -- defs -------------------------------------------------------------------------
    def defs(self) -> None:
        prev = {d.id: d for s in self.prev.schemas for d in s.defs}
        curr = {d.id: d for s in self.curr.schemas for d in s.defs}
        for did, d in sorted(prev.items()):
            e = curr.get(did)
            if e is None:
                self.add(
                    "DEF_DELETED",
                    f"Def {str(did)!r} ({d.kind}) was deleted.",
                    d.span,
                    _file_span(self.curr, did, d.span),
                )
            else:
                self.definition(d, e)
        for did, e in sorted(curr.items()):
            if did not in prev:
                self.add(
                    "DEF_ADDED",
                    f"Def {str(did)!r} ({e.kind}) was added.",
                    _NOWHERE,
                    e.span,
                )

    def definition(self, d: Def, e: Def) -> None:
        name = str(d.id)
        if d.kind != e.kind:
            self.add(
                "DEF_KIND_CHANGED",
                f"Def {name!r} changed from {d.kind!r} to {e.kind!r}.",
                d.span,
                e.span,
            )
            return
        a, b = d.body, e.body
        if isinstance(a, RecordDef) and isinstance(b, RecordDef):
            if a.key != b.key:
                self.add(
                    "RECORD_KEY_CHANGED",
                    f"The record key of {name!r} changed from {a.key!r} to {b.key!r}.",
                    d.span,
                    e.span,
                )
            self.fields(a.object.fields, b.object.fields, name, b.object.span)
        elif isinstance(a, XrpcDef) and isinstance(b, XrpcDef):
            self.fields(
                a.params.fields if a.params else (),
                b.params.fields if b.params else (),
                f"the params of {name}",
            )
            for which, x, y in (
                ("input", a.input, b.input),
                ("output", a.output, b.output),
            ):
                if (x is None) != (y is None):
                    state = "added" if x is None else "removed"
                    self.add(
                        "XRPC_BODY_CHANGED",
                        f"The {which} of {name!r} was {state}.",
                        d.span,
                        e.span,
                    )
                elif x is not None and y is not None:
                    if x.encoding != y.encoding:
                        self.add(
                            "XRPC_ENCODING_CHANGED",
                            f"The {which} encoding of "
                            f"{name!r} changed from {x.encoding!r} to "
                            f"{y.encoding!r}.",
                            d.span,
                            e.span,
                        )
                    if x.schema is not None and y.schema is not None:
                        self.types(
                            x.schema, y.schema, f"the {which} of {name}", d.span, e.span
                        )
            self.errors(a.errors, b.errors, name, d.span, e.span)
        elif isinstance(a, SubscriptionDef) and isinstance(b, SubscriptionDef):
            self.fields(
                a.params.fields if a.params else (),
                b.params.fields if b.params else (),
                f"the params of {name}",
            )
            if a.message is not None and b.message is not None:
                self.union(a.message, b.message, f"the messages of {name}")
            self.errors(a.errors, b.errors, name, d.span, e.span)
        elif not isinstance(a, tuple) and _is_type(a) and _is_type(b):
            self.types(a, b, name, d.span, e.span)

    def errors(
        self,
        a: tuple[tuple[str, str | None], ...],
        b: tuple[tuple[str, str | None], ...],
        name: str,
        sa: Span,
        sb: Span,
    ) -> None:
        for err in sorted({n for n, _ in a} - {n for n, _ in b}):
            self.add(
                "XRPC_ERROR_REMOVED", f"Error {err!r} of {name!r} was removed.", sa, sb
            )

    # -- sample schemas ---------------------------------------------------------------
    def samples(self) -> None:
        prev = _latest(self.prev.samples)
        curr = _latest(self.curr.samples)
        for name, s in sorted(prev.items()):
            t = curr.get(name)
            if t is None:
                self.add(
                    "SCHEMA_DELETED",
                    f"Sample schema {name!r} was deleted.",
                    s.span,
                    s.span,
                )
                continue
            self.fields(
                s.fields, t.fields, f"sample schema {name} ({s.version} → {t.version})"
            )
        for name, t in sorted(curr.items()):
            if name not in prev:
                self.add(
                    "SCHEMA_ADDED",
                    f"Sample schema {name!r} was added.",
                    _NOWHERE,
                    t.span,
                )


_NOWHERE = Span("")
"""The previous location of something that did not exist before."""


def _latest(samples: tuple[SampleSchema, ...]) -> dict[str, SampleSchema]:
    out: dict[str, SampleSchema] = {}
    for s in samples:
        if s.name not in out or _semver(s.version) > _semver(out[s.name].version):
            out[s.name] = s
    return out


def _semver(version: str) -> tuple[int, ...]:
    core = version.split("+", 1)[0].split("-", 1)[0]
    return tuple(int(p) for p in core.split(".") if p.isdigit())


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
    return names.get(type(t), type(t).__name__)


def _file_span(model: LinkedModel, did: DefId, fallback: Span) -> Span:
    for s in model.schemas:
        if s.nsid == did.nsid:
            return s.span
    return fallback


def compare(previous: LinkedModel, current: LinkedModel) -> list[Finding]:
    """Every change between two linked models, sorted and de-duplicated."""
    c = _Comparer(previous, current)
    c.defs()
    c.samples()
    return sorted(set(c.out))
