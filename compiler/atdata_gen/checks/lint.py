"""Stage 5, lint: spec-validity rules over the linked IR.

Each rule is one small registered unit: an ID, a one-line purpose, a default
severity, what it looks at (``schema``, ``def`` or ``type``), and a pure handler that
yields ``(span, message)`` pairs. ``atdata-gen rules`` lists them. The source of each
rule is the Lexicon spec (atproto.com/specs/lexicon) unless its purpose says
otherwise.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from ..diagnostics import Diagnostic, Reporter, Severity, Span
from ..frontend.lexicon import PRIMARY_TYPES
from ..ir.link import LinkedModel
from ..ir.model import (
    ArrayType,
    BlobType,
    BooleanType,
    BytesType,
    CidLinkType,
    Def,
    IntegerType,
    IRType,
    NullType,
    ObjectType,
    RecordDef,
    RefType,
    Schema,
    StringType,
    SubscriptionDef,
    UnionType,
    UnknownType,
    XrpcDef,
)

__all__ = ["RULES", "LintRule", "lint"]

Finding = tuple[Span, str]


@dataclass(frozen=True, slots=True)
class LintRule:
    """A lint rule: ``id``, ``purpose``, ``severity``, ``target`` (``schema`` |
    ``def`` | ``type``) and its ``handler``."""

    id: str
    purpose: str
    severity: Severity
    target: str
    handler: Callable[..., Iterator[Finding]]


RULES: dict[str, LintRule] = {}


def rule(
    id: str, purpose: str, target: str, severity: Severity = Severity.ERROR
) -> Callable[[Callable[..., Iterator[Finding]]], Callable[..., Iterator[Finding]]]:
    """Register a lint rule (decorator)."""

    def register(
        fn: Callable[..., Iterator[Finding]],
    ) -> Callable[..., Iterator[Finding]]:
        assert id not in RULES, id
        RULES[id] = LintRule(id, purpose, severity, target, fn)
        return fn

    return register


# -- schema rules ----------------------------------------------------------------------
@rule("LEX_NSID_INVALID", "The Lexicon id must be a valid NSID (spec: NSID).", "schema")
def _nsid_invalid(model: LinkedModel, schema: Schema) -> Iterator[Finding]:
    from atdata_runtime.lex.formats import is_nsid

    if not is_nsid(schema.nsid):
        yield schema.span, f"{schema.nsid!r} is not a valid NSID"


# -- def rules -------------------------------------------------------------------------
@rule(
    "LEX_PRIMARY_NOT_MAIN",
    "record, query, procedure, subscription and permission-set defs must be named "
    "'main' (spec: Primary Types).",
    "def",
)
def _primary_not_main(model: LinkedModel, d: Def) -> Iterator[Finding]:
    if d.kind in PRIMARY_TYPES and d.id.name != "main":
        yield d.span, f"{d.kind} def {d.id.name!r} must be named 'main'"


@rule(
    "LEX_PARAMS_NOT_PRIMITIVE",
    "params properties are boolean, integer, string, unknown, or arrays of "
    "boolean/integer/string (spec: params).",
    "def",
)
def _params_primitive(model: LinkedModel, d: Def) -> Iterator[Finding]:
    body = d.body
    params = body.params if isinstance(body, XrpcDef | SubscriptionDef) else None
    for f in params.fields if params else ():
        if isinstance(f.type, ArrayType) and not isinstance(
            f.type.items, BooleanType | IntegerType | StringType
        ):
            yield (
                f.span,
                f"params array {f.name!r} must hold booleans, integers or strings",
            )


# -- type rules ------------------------------------------------------------------------
@rule(
    "LEX_REF_TO_TOKEN",
    "A ref must not point at a token (tokens are values, not "
    "types; use a string with knownValues).",
    "type",
)
def _ref_to_token(model: LinkedModel, t: IRType, span: Span) -> Iterator[Finding]:
    if isinstance(t, RefType):
        target = model.resolve(t.target)
        if target is not None and target.kind == "token":
            yield t.span, f"ref {str(t.target)!r} points at a token"


@rule(
    "LEX_REF_TO_XRPC",
    "A ref must point at a data type, not a query, procedure, "
    "subscription or permission-set.",
    "type",
)
def _ref_to_xrpc(model: LinkedModel, t: IRType, span: Span) -> Iterator[Finding]:
    if isinstance(t, RefType):
        target = model.resolve(t.target)
        if target is not None and target.kind in (
            "query",
            "procedure",
            "subscription",
            "permission-set",
        ):
            yield t.span, f"ref {str(t.target)!r} points at a {target.kind}"


@rule(
    "LEX_UNION_MEMBER_NOT_OBJECT",
    "Union members must be object or record defs (spec: union).",
    "type",
)
def _union_member_kind(model: LinkedModel, t: IRType, span: Span) -> Iterator[Finding]:
    if isinstance(t, UnionType):
        for r in t.refs:
            target = model.resolve(r)
            if target is not None and target.kind not in ("object", "record"):
                yield (
                    t.span,
                    f"union member {str(r)!r} is a {target.kind}, not an object",
                )


@rule(
    "LEX_UNION_EMPTY_CLOSED", "A closed union with no refs can hold no value.", "type"
)
def _union_empty_closed(model: LinkedModel, t: IRType, span: Span) -> Iterator[Finding]:
    if isinstance(t, UnionType) and t.closed and not t.refs:
        yield t.span, "closed union has no refs, so no value is valid"


@rule(
    "LEX_UNION_DUPLICATE_REF",
    "A union lists each member once.",
    "type",
    Severity.WARNING,
)
def _union_duplicate(model: LinkedModel, t: IRType, span: Span) -> Iterator[Finding]:
    if isinstance(t, UnionType):
        seen: set[str] = set()
        for r in t.refs:
            if str(r) in seen:
                yield t.span, f"union member {str(r)!r} is listed twice"
            seen.add(str(r))


@rule(
    "LEX_CONST_WITH_DEFAULT",
    "const and default are exclusive (spec: string, integer, boolean).",
    "type",
)
def _const_default(model: LinkedModel, t: IRType, span: Span) -> Iterator[Finding]:
    if (
        isinstance(t, StringType | IntegerType | BooleanType)
        and t.const is not None
        and t.default is not None
    ):
        yield span, "has both 'const' and 'default'"


@rule("LEX_RANGE_INVERTED", "Lower bounds must not exceed upper bounds.", "type")
def _range_inverted(model: LinkedModel, t: IRType, span: Span) -> Iterator[Finding]:
    pairs: list[tuple[str, int | None, int | None]] = []
    if isinstance(t, IntegerType):
        pairs.append(("minimum/maximum", t.minimum, t.maximum))
    elif isinstance(t, StringType):
        pairs += [
            ("minLength/maxLength", t.min_bytes, t.max_bytes),
            ("minGraphemes/maxGraphemes", t.min_graphemes, t.max_graphemes),
        ]
    elif isinstance(t, ArrayType):
        pairs.append(("minLength/maxLength", t.min_length, t.max_length))
    for what, lo, hi in pairs:
        if lo is not None and hi is not None and lo > hi:
            yield span, f"{what} is inverted ({lo} > {hi}): no value is valid"


def _string_violation(t: StringType, value: str) -> str | None:
    size = len(value.encode("utf-8"))
    if t.max_bytes is not None and size > t.max_bytes:
        return f"is {size} UTF-8 bytes, over maxLength {t.max_bytes}"
    if t.min_bytes is not None and size < t.min_bytes:
        return f"is {size} UTF-8 bytes, under minLength {t.min_bytes}"
    if t.max_graphemes is not None or t.min_graphemes is not None:
        # the UAX #29 counter (and the `regex` module) only when a bound needs it
        from atdata_runtime.lex.text import count_graphemes

        g = count_graphemes(value)
        if t.max_graphemes is not None and g > t.max_graphemes:
            return f"has {g} graphemes, over maxGraphemes {t.max_graphemes}"
        if t.min_graphemes is not None and g < t.min_graphemes:
            return f"has {g} graphemes, under minGraphemes {t.min_graphemes}"
    if t.enum is not None and value not in t.enum:
        return "is not in enum"
    if t.format is not None:
        from atdata_runtime.lex.formats import FORMAT_CHECKS

        if not FORMAT_CHECKS[t.format](value):
            return f"is not a valid {t.format}"
    return None


def _integer_violation(t: IntegerType, value: int) -> str | None:
    if t.minimum is not None and value < t.minimum:
        return f"is under minimum {t.minimum}"
    if t.maximum is not None and value > t.maximum:
        return f"is over maximum {t.maximum}"
    if t.enum is not None and value not in t.enum:
        return "is not in enum"
    return None


@rule(
    "LEX_DEFAULT_INVALID", "A default must satisfy its own type's constraints.", "type"
)
def _default_invalid(model: LinkedModel, t: IRType, span: Span) -> Iterator[Finding]:
    for key in ("default", "const"):
        value: Any = getattr(t, key, None)
        if value is None:
            continue
        problem = None
        if isinstance(t, StringType):
            problem = _string_violation(t, value)
        elif isinstance(t, IntegerType):
            problem = _integer_violation(t, value)
        if problem:
            yield span, f"{key} {value!r} {problem}"


@rule(
    "LEX_KNOWN_VALUES_WITH_ENUM",
    "knownValues is redundant next to a closed enum.",
    "type",
    Severity.WARNING,
)
def _known_with_enum(model: LinkedModel, t: IRType, span: Span) -> Iterator[Finding]:
    if isinstance(t, StringType) and t.enum is not None and t.known_values is not None:
        yield span, "has both 'enum' (closed) and 'knownValues' (open)"


# -- driver ----------------------------------------------------------------------------
def _types_of(d: Def) -> Iterator[tuple[IRType, Span]]:
    def walk(t: IRType | None, span: Span) -> Iterator[tuple[IRType, Span]]:
        if t is None:
            return
        yield t, span
        if isinstance(t, ArrayType):
            yield from walk(t.items, span)
        elif isinstance(t, ObjectType):
            for f in t.fields:
                yield from walk(f.type, f.span)

    body = d.body
    if isinstance(body, RecordDef):
        yield from walk(body.object, d.span)
    elif isinstance(body, XrpcDef):
        yield from walk(body.params, d.span)
        for b in (body.input, body.output):
            if b is not None:
                yield from walk(b.schema, d.span)
    elif isinstance(body, SubscriptionDef):
        yield from walk(body.params, d.span)
        yield from walk(body.message, d.span)
    elif isinstance(body, _IR_TYPES):
        yield from walk(body, d.span)


_IR_TYPES = (
    BooleanType,
    IntegerType,
    StringType,
    ArrayType,
    ObjectType,
    RefType,
    UnionType,
    BytesType,
    CidLinkType,
    BlobType,
    NullType,
    UnknownType,
)


def lint(model: LinkedModel, reporter: Reporter) -> None:
    """Run every registered rule over the emitted schemas."""
    by_target: dict[str, list[LintRule]] = {}
    for r in RULES.values():
        by_target.setdefault(r.target, []).append(r)
    for schema in model.schemas:
        for r in by_target.get("schema", ()):
            for span, msg in r.handler(model, schema):
                reporter.add(Diagnostic(span, r.id, r.severity, msg))
        for d in schema.defs:
            for r in by_target.get("def", ()):
                for span, msg in r.handler(model, d):
                    reporter.add(Diagnostic(span, r.id, r.severity, msg))
            for t, span in _types_of(d):
                for r in by_target.get("type", ()):
                    for s, msg in r.handler(model, t, span):
                        reporter.add(Diagnostic(s, r.id, r.severity, msg))
