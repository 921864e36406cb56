"""Stage 3, lower: :class:`~atdata_gen.frontend.lexicon.LexiconDoc` → :class:`Schema`.

Turns the Lexicon-shaped AST into the JSON-free IR: references become absolute
:class:`DefId` values, ``required`` / ``nullable`` lists become flags on each
:class:`Field`, JSON pointers become :class:`~atdata_gen.diagnostics.Span` values.
Names listed in ``required`` / ``nullable`` without a property are reported here
(``LEX_REQUIRED_UNDEFINED``, ``LEX_NULLABLE_UNDEFINED``), since the IR no longer holds
those lists.
"""

from __future__ import annotations

from ..diagnostics import Reporter, Severity
from ..frontend import lexicon as lx
from ..sources import SourceDoc
from .model import (
    ArrayType,
    BlobType,
    Body,
    BooleanType,
    BytesType,
    CidLinkType,
    Def,
    DefBody,
    DefId,
    Field,
    IntegerType,
    IRType,
    NullType,
    ObjectType,
    Origin,
    PermissionSetDef,
    RecordDef,
    RefType,
    Schema,
    StringType,
    SubscriptionDef,
    TokenDef,
    UnionType,
    UnknownType,
    XrpcDef,
)

__all__ = ["lower_document"]


class _Lowerer:
    def __init__(self, doc: lx.LexiconDoc, reporter: Reporter) -> None:
        self.nsid = doc.id
        self.src: SourceDoc = doc.source
        self.reporter = reporter

    def type(self, node: lx.LexNode) -> IRType:
        match node:  # the most frequent first (the classes are disjoint)
            case lx.LexString():
                return StringType(
                    node.format,
                    node.max_length,
                    node.min_length,
                    node.max_graphemes,
                    node.min_graphemes,
                    node.known_values,
                    node.enum,
                    node.default,
                    node.const,
                    node.pattern,
                )
            case lx.LexRef():
                return RefType(
                    DefId.parse(node.ref, self.nsid),
                    self.src.span(node.pointer + "/ref"),
                )
            case lx.LexObject() | lx.LexParams():
                return self.object(node)
            case lx.LexArray():
                assert node.items is not None
                return ArrayType(
                    self.type(node.items),
                    node.min_length,
                    node.max_length,
                    self.src.span(node.pointer),
                )
            case lx.LexInteger():
                return IntegerType(
                    node.minimum, node.maximum, node.enum, node.default, node.const
                )
            case lx.LexUnion():
                return UnionType(
                    tuple(DefId.parse(r, self.nsid) for r in node.refs),
                    node.closed,
                    self.src.span(node.pointer + "/refs")
                    if node.refs
                    else self.src.span(node.pointer),
                )
            case lx.LexBoolean():
                return BooleanType(node.default, node.const)
            case lx.LexUnknown():
                return UnknownType()
            case lx.LexBlob():
                return BlobType(node.accept, node.max_size)
            case lx.LexCidLink():
                return CidLinkType()
            case lx.LexBytes():
                return BytesType(node.min_length, node.max_length)
            case lx.LexNull():
                return NullType()
        raise AssertionError(f"not a field type: {type(node).__name__}")

    def object(self, node: lx.LexObject | lx.LexParams) -> ObjectType:
        names = {name for name, _ in node.properties}
        nullable = node.nullable if isinstance(node, lx.LexObject) else ()
        for key, listed in (("required", node.required), ("nullable", nullable)):
            for i, name in enumerate(listed):
                if name not in names:
                    self.reporter.report(
                        self.src.span(f"{node.pointer}/{key}/{i}"),
                        f"LEX_{key.upper()}_UNDEFINED",
                        f"{name!r} is listed in {key!r} but is not a property",
                        Severity.WARNING,
                    )
        req, nul = set(node.required), set(nullable)
        fields = tuple(
            Field(
                name,
                self.type(prop),
                name in req,
                name in nul,
                prop.description,
                self.src.span(prop.pointer),
            )
            for name, prop in node.properties
        )
        return ObjectType(fields, self.src.span(node.pointer))

    def body(self, node: lx.LexBody | None) -> Body | None:
        if node is None:
            return None
        schema = None
        if node.schema is not None:
            lowered = self.type(node.schema)
            assert isinstance(lowered, ObjectType | RefType | UnionType)
            schema = lowered
        return Body(node.encoding, schema, node.description)

    def params(self, node: lx.LexParams | None) -> ObjectType | None:
        return None if node is None else self.object(node)

    def definition(self, name: str, node: lx.LexNode) -> Def:
        body: DefBody
        kind = _KINDS[type(node)]
        match node:
            case lx.LexRecord():
                assert node.record is not None
                body = RecordDef(node.key, self.object(node.record))
            case lx.LexQuery():
                body = XrpcDef(
                    "query",
                    self.params(node.parameters),
                    None,
                    self.body(node.output),
                    _errors(node.errors),
                )
            case lx.LexProcedure():
                body = XrpcDef(
                    "procedure",
                    self.params(node.parameters),
                    self.body(node.input),
                    self.body(node.output),
                    _errors(node.errors),
                )
            case lx.LexSubscription():
                message = self.type(node.message) if node.message else None
                assert message is None or isinstance(message, UnionType)
                body = SubscriptionDef(
                    self.params(node.parameters), message, _errors(node.errors)
                )
            case lx.LexToken():
                body = TokenDef()
            case lx.LexPermissionSet():
                body = PermissionSetDef(node.title, node.detail, node.permissions)
            case _:
                body = self.type(node)
        return Def(
            DefId(self.nsid, name),
            kind,
            body,
            node.description,
            self.src.span(node.pointer),
        )


def _errors(errors: tuple[lx.LexError, ...]) -> tuple[tuple[str, str | None], ...]:
    return tuple((e.name, e.description) for e in errors)


_KINDS: dict[type, str] = {
    lx.LexNull: "null",
    lx.LexBoolean: "boolean",
    lx.LexInteger: "integer",
    lx.LexString: "string",
    lx.LexBytes: "bytes",
    lx.LexCidLink: "cid-link",
    lx.LexBlob: "blob",
    lx.LexUnknown: "unknown",
    lx.LexRef: "ref",
    lx.LexUnion: "union",
    lx.LexArray: "array",
    lx.LexObject: "object",
    lx.LexParams: "params",
    lx.LexToken: "token",
    lx.LexRecord: "record",
    lx.LexQuery: "query",
    lx.LexProcedure: "procedure",
    lx.LexSubscription: "subscription",
    lx.LexPermissionSet: "permission-set",
}


def lower_document(doc: lx.LexiconDoc, reporter: Reporter) -> Schema:
    """Lower one parsed Lexicon into a :class:`Schema` (never fails: problems found
    here are reported as warnings)."""
    low = _Lowerer(doc, reporter)
    defs = tuple(low.definition(name, node) for name, node in doc.defs)
    return Schema(
        doc.id,
        doc.description,
        doc.revision,
        defs,
        Origin(doc.source.path, doc.source.sha256),
        doc.source.span("/id"),
    )
