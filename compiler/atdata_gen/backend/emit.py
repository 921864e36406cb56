"""Stage 6, emit: :class:`~atdata_gen.ir.link.LinkedModel` → Python modules (text).

Modules are built as libcst trees, node by node. Nothing from a Lexicon is ever
pasted into code as text: names come from the name table (checked to be plain ASCII
identifiers), every string from the input becomes a string literal through
``repr()`` (or an escaped docstring), every number an integer literal. A Lexicon can
therefore not inject code, whatever its names, descriptions, defaults or consts.

One module per NSID, mirroring the NSID path. Each module starts with a docstring
naming the source NSID, its file and the sha256 of the file, and says that it is
generated. There are no timestamps: output is a pure function of the input.
"""

from __future__ import annotations

import contextlib
import functools
import keyword
import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import libcst as cst

from .. import __version__
from ..ir.link import LinkedModel, walk_objects
from ..ir.model import (
    ArrayType,
    BlobType,
    Body,
    BooleanType,
    BytesType,
    CidLinkType,
    Def,
    DefId,
    IntegerType,
    IRType,
    NullType,
    ObjectType,
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
from .manifest import GENERATED_MARKER
from .printer import print_module

__all__ = ["emit_modules"]


# Nodes are immutable, so one node of each default (whitespace, brackets, line end)
# is shared by every node built here: passing them saves constructing and
# validating a fresh, equal default node for each field of each node (over half of
# the nodes of a build). The trees, and so the code, are the same.
_NO_WS = cst.SimpleWhitespace("")
_SP = cst.SimpleWhitespace(" ")
_BLANK = cst.EmptyLine(whitespace=_NO_WS, newline=cst.Newline())
_EQ = cst.AssignEqual(whitespace_before=_NO_WS, whitespace_after=_NO_WS)
_TRAIL = cst.TrailingWhitespace(whitespace=_NO_WS, newline=cst.Newline())
_LSQB = cst.LeftSquareBracket(whitespace_after=_NO_WS)
_RSQB = cst.RightSquareBracket(whitespace_before=_NO_WS)
_BITOR = cst.BitOr(whitespace_before=_SP, whitespace_after=_SP)
_EMPTY = cst.Module(body=[])


def _as(alias: str) -> cst.AsName:
    return cst.AsName(name(alias), whitespace_before_as=_SP, whitespace_after_as=_SP)


# -- safe node builders ----------------------------------------------------------------
@functools.cache
def name(ident: str) -> cst.Name:
    """A Name node; refuses anything but a plain ASCII identifier. (Nodes are
    immutable, so one node is shared by every use of a name.)"""
    if not (ident.isascii() and ident.isidentifier()) or keyword.iskeyword(ident):
        raise ValueError(f"refusing to emit non-identifier {ident!r}")
    return cst.Name(ident)


_ROOTS_USED: set[str] = set()
"""Module-import roots (``_t``, ``_pd``, ``_lex``) referenced while building the
current module; reset by :meth:`_ModuleEmitter.module` (emission is sequential)."""


def dotted(path: str) -> cst.BaseExpression:
    root, dot, _ = path.partition(".")
    if dot:
        _ROOTS_USED.add(root)
    return _dotted(path)


@functools.cache
def _dotted(path: str) -> cst.BaseExpression:
    parts = path.split(".")
    node: cst.BaseExpression = name(parts[0])
    for p in parts[1:]:
        node = cst.Attribute(value=node, attr=name(p))
    return node


def literal(value: Any) -> cst.BaseExpression:
    """A literal for a JSON value (str, int, bool, None, float, list, dict) — built
    from ``repr``/``str`` of the value, so it always evaluates back to the value
    (``-0.0`` included: its sign is kept). Raises ``ValueError`` for a NaN or an
    infinity (no literal evaluates to them; the frontend refuses every float in
    its input, ``SRC_FLOAT``), ``TypeError`` for anything else."""
    if value is None or isinstance(value, bool):
        return cst.Name(repr(value))
    if isinstance(value, int):
        if value < 0:
            return cst.UnaryOperation(cst.Minus(), cst.Integer(str(-value)))
        return cst.Integer(str(value))
    if isinstance(value, float):
        text = repr(value)
        if text in ("inf", "-inf", "nan"):
            raise ValueError("non-finite number")
        if math.copysign(1.0, value) < 0:  # also -0.0, which is not < 0
            return cst.UnaryOperation(cst.Minus(), cst.Float(repr(-value)))
        return cst.Float(text)
    if isinstance(value, str):
        return cst.SimpleString(_quote(value))
    if isinstance(value, list | tuple):
        elems = [cst.Element(literal(v)) for v in value]
        if isinstance(value, list):
            return cst.List(elems, lbracket=_LSQB, rbracket=_RSQB)
        return cst.Tuple(elems)
    if isinstance(value, dict):
        return cst.Dict(
            [cst.DictElement(literal(str(k)), literal(v)) for k, v in value.items()]
        )
    raise TypeError(f"not a JSON value: {type(value).__name__}")


def _quote(text: str) -> str:
    """A double-quoted Python literal for ``text`` (repr, preferring double quotes)."""
    r = repr(text)
    if r.startswith("'") and '"' not in text:
        r = '"' + r[1:-1].replace("\\'", "'") + '"'
    return r


_DOC_UNSAFE = re.compile(
    r'[\\"\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\ufeff\ud800-\udfff]'
)
"""Characters a docstring cannot carry verbatim: backslash, quote, control
characters (but tab and newline), Unicode line separators, BOM, lone surrogates."""


def _doc_escape(m: re.Match[str]) -> str:
    ch = m.group()
    if ch == "\\":
        return "\\\\"
    if ch == '"':
        return '\\"'
    return f"\\x{ord(ch):02x}" if ord(ch) <= 0xFF else f"\\u{ord(ch):04x}"


def docstring_literal(text: str, indent: str = "") -> cst.SimpleString:
    """A triple-quoted docstring for untrusted ``text``: backslashes, quotes and
    control characters are escaped, so it parses to exactly ``text``."""
    body = _DOC_UNSAFE.sub(_doc_escape, text)
    if "\n" in body:
        body = (
            "\n".join(
                [body.split("\n", 1)[0]]
                + [indent + line if line else line for line in body.split("\n")[1:]]
            )
            + "\n"
            + indent
        )
    return cst.SimpleString(f'"""{body}"""')


def _wrap(text: str, width: int = 80) -> str:
    """``text``'s paragraphs (split at blank lines), each with its whitespace
    collapsed and filled to ``width`` (:func:`_fill`), joined by blank lines."""
    paragraphs = [p.strip() for p in text.strip().split("\n\n")]
    return "\n\n".join(_fill(p.split(), width) for p in paragraphs if p)


def _fill(words: list[str], width: int) -> str:
    """Greedy fill of ``words`` (no whitespace in any) into lines of at most
    ``width`` characters; a longer word gets a line of its own. Exactly
    ``textwrap.fill(" ".join(words), width, break_long_words=False,
    break_on_hyphens=False)`` (``tests/test_printer.py`` checks it), five times
    faster."""
    lines: list[str] = []
    line: list[str] = []
    used = 0
    for word in words:
        if line and used + 1 + len(word) > width:
            lines.append(" ".join(line))
            line, used = [word], len(word)
        elif line:
            line.append(word)
            used += 1 + len(word)
        else:
            line, used = [word], len(word)
    if line:
        lines.append(" ".join(line))
    return "\n".join(lines)


def sub(base: str | cst.BaseExpression, *args: cst.BaseExpression) -> cst.Subscript:
    value = dotted(base) if isinstance(base, str) else base
    return cst.Subscript(
        value=value,
        slice=[cst.SubscriptElement(cst.Index(a)) for a in args],
        lbracket=_LSQB,
        rbracket=_RSQB,
        whitespace_after_value=_NO_WS,
    )


def call(
    func: str, *args: cst.BaseExpression, **kwargs: cst.BaseExpression
) -> cst.Call:
    arglist = [_arg(a) for a in args]
    arglist += [_arg(v, name(k)) for k, v in kwargs.items()]
    return cst.Call(
        dotted(func),
        arglist,
        whitespace_after_func=_NO_WS,
        whitespace_before_args=_NO_WS,
    )


def _arg(value: cst.BaseExpression, keyword: cst.Name | None = None) -> cst.Arg:
    return cst.Arg(
        value,
        keyword=keyword,
        equal=_EQ if keyword is not None else cst.MaybeSentinel.DEFAULT,
        whitespace_after_star=_NO_WS,
        whitespace_after_arg=_NO_WS,
    )


def union_of(items: Sequence[cst.BaseExpression]) -> cst.BaseExpression:
    node = items[0]
    for item in items[1:]:
        node = cst.BinaryOperation(node, _BITOR, item)
    return node


def stmt(node: cst.BaseSmallStatement, blank: int = 0) -> cst.SimpleStatementLine:
    return cst.SimpleStatementLine(
        [node], leading_lines=[_BLANK] * blank, trailing_whitespace=_TRAIL
    )


def ann_assign(
    target: str,
    annotation: cst.BaseExpression,
    value: cst.BaseExpression | None = None,
    blank: int = 0,
) -> cst.SimpleStatementLine:
    return stmt(
        cst.AnnAssign(
            name(target),
            cst.Annotation(annotation, whitespace_after_indicator=_SP),
            value,
        ),
        blank,
    )


def import_as(module: str, alias: str, blank: int = 0) -> cst.SimpleStatementLine:
    """``import module as alias`` (``module`` may be dotted)."""
    return stmt(
        cst.Import([cst.ImportAlias(_dotted(module), asname=_as(alias))]),  # type: ignore[arg-type]
        blank,
    )


def from_import(
    module: str, item: str, alias: str | None = None, blank: int = 0
) -> cst.SimpleStatementLine:
    """``from module import item [as alias]`` (``module`` may be dotted)."""
    asname = None if alias is None else _as(alias)
    return stmt(
        cst.ImportFrom(
            module=_dotted(module),  # type: ignore[arg-type]
            names=[cst.ImportAlias(name(item), asname=asname)],
        ),
        blank,
    )


def doc_stmt(text: str, indent: str = "", blank: int = 0) -> cst.SimpleStatementLine:
    return stmt(cst.Expr(docstring_literal(text, indent)), blank)


def _natural(text: str) -> tuple[tuple[int, int | str], ...]:
    return tuple(
        (0, int(part)) if part.isdigit() else (1, part)
        for part in re.split(r"(\d+)", text)
        if part
    )


def _export_order(item: str) -> tuple[int, tuple[tuple[int, int | str], ...]]:
    """``__all__`` order as ruff's RUF022 ("isort-style") wants it: CONSTANTS, then
    Classes, then the rest, each in natural order."""
    if len(item) > 1 and item.isupper():
        kind = 0
    elif item[:1].isupper():
        kind = 1
    else:
        kind = 2
    return kind, _natural(item)


def _import_order(node: cst.ImportFrom, alias: str) -> tuple[int, str, str]:
    """Relative-import order of isort (ruff I001): furthest first, then by module
    path, then by imported name (case-insensitive)."""
    module = _EMPTY.code_for_node(node.module) if node.module else ""
    names = node.names
    assert isinstance(names, Sequence)
    imported = _EMPTY.code_for_node(names[0].name)
    return -len(node.relative), module.lower(), imported.lower()


_LEAF_TYPES = (
    BooleanType,
    IntegerType,
    StringType,
    BytesType,
    CidLinkType,
    BlobType,
    NullType,
    UnknownType,
)
_LEAF_CACHE: dict[IRType, tuple[cst.BaseExpression, frozenset[str]]] = {}


# -- per-module emitter ----------------------------------------------------------------
@dataclass
class _ModuleEmitter:
    model: LinkedModel
    schema: Schema
    path: tuple[str, ...]
    imports: dict[tuple[str, ...], str] = field(default_factory=dict)
    abs_imports: dict[str, str] = field(default_factory=dict)
    body: list[cst.BaseStatement] = field(default_factory=list)
    late: list[cst.BaseStatement] = field(default_factory=list)
    exports: list[str] = field(default_factory=list)
    uses_any: bool = False
    expanding: set[DefId] = field(default_factory=set)
    """Non-object defs whose annotation is being inlined (cycle detection)."""
    cut: bool = False
    """Set when an annotation met a def inside its own expansion."""

    # .. references ....................................................................
    def module_alias(self, nsid: str) -> str | None:
        """Alias of the module of ``nsid`` (None when it is this module)."""
        external = self.model.names.external_modules.get(nsid)
        if external is not None and nsid not in self.model.names.modules:
            package, parts = external
            mod = ".".join((package, *(p for p in parts if p != "__init__")))
            alias = "_" + mod.replace(".", "_")
            self.abs_imports[mod] = alias
            return alias
        target = self.model.names.modules[nsid]
        if target == self.path:
            return None
        alias = "_" + "_".join(p for p in target if p != "__init__")
        self.imports[target] = alias
        return alias

    def class_ref(
        self, target: DefId, path: tuple[str, ...] = ()
    ) -> cst.BaseExpression:
        cls = self.model.names.objects[(target, path)]
        alias = self.module_alias(target.nsid)
        return name(cls) if alias is None else dotted(f"{alias}.{cls}")

    # .. annotations ...................................................................
    def ann(self, t: IRType, owner: DefId, path: tuple[str, ...]) -> cst.BaseExpression:
        """The annotation for ``t``. Annotations of self-contained types (no ref,
        union or object inside) are shared between modules: nodes are immutable."""
        if isinstance(t, _LEAF_TYPES):
            hit = _LEAF_CACHE.get(t)
            if hit is None:
                saved = set(_ROOTS_USED)
                _ROOTS_USED.clear()
                node = self._ann(t, owner, path)
                hit = _LEAF_CACHE[t] = (node, frozenset(_ROOTS_USED))
                _ROOTS_USED.update(saved)
            _ROOTS_USED.update(hit[1])
            return hit[0]
        return self._ann(t, owner, path)

    def _ann(
        self, t: IRType, owner: DefId, path: tuple[str, ...]
    ) -> cst.BaseExpression:
        match t:
            case BooleanType():
                if t.const is not None:
                    return sub(
                        "_t.Annotated",
                        sub("_t.Literal", literal(t.const)),
                        call("_lex.Boolean"),
                    )
                return dotted("_pd.StrictBool")
            case IntegerType():
                kw: dict[str, cst.BaseExpression] = {}
                if t.minimum is not None:
                    kw["minimum"] = literal(t.minimum)
                if t.maximum is not None:
                    kw["maximum"] = literal(t.maximum)
                if t.const is not None:
                    return sub(
                        "_t.Annotated",
                        sub("_t.Literal", literal(t.const)),
                        call("_lex.Integer", **kw),
                    )
                if t.enum:
                    kw["enum"] = literal(tuple(t.enum))
                    return sub(
                        "_t.Annotated",
                        sub("_t.Literal", *[literal(v) for v in t.enum]),
                        call("_lex.Integer", **kw),
                    )
                if not kw:
                    return dotted("_pd.StrictInt")
                return sub("_t.Annotated", dotted("int"), call("_lex.Integer", **kw))
            case StringType():
                kw = {}
                for attr, key in (
                    ("format", "format"),
                    ("max_bytes", "max_length"),
                    ("min_bytes", "min_length"),
                    ("max_graphemes", "max_graphemes"),
                    ("min_graphemes", "min_graphemes"),
                ):
                    value = getattr(t, attr)
                    if value is not None:
                        kw[key] = literal(value)
                if t.const is not None or t.enum:
                    values = [t.const] if t.const is not None else list(t.enum or ())
                    return sub(
                        "_t.Annotated",
                        sub("_t.Literal", *[literal(v) for v in values]),
                        call("_lex.StrictLiteral"),
                    )
                if not kw:
                    return dotted("_pd.StrictStr")
                return sub(
                    "_t.Annotated", dotted("_pd.StrictStr"), call("_lex.String", **kw)
                )
            case BytesType():
                kw = {}
                if t.min_length is not None:
                    kw["min_length"] = literal(t.min_length)
                if t.max_length is not None:
                    kw["max_length"] = literal(t.max_length)
                return sub("_t.Annotated", dotted("bytes"), call("_lex.Bytes", **kw))
            case CidLinkType():
                return dotted("_lex.CidLink")
            case BlobType():
                kw = {}
                if t.accept:
                    kw["accept"] = literal(tuple(t.accept))
                if t.max_size is not None:
                    kw["max_size"] = literal(t.max_size)
                if not kw:
                    return dotted("_lex.Blob")
                return sub(
                    "_t.Annotated",
                    dotted("_lex.Blob"),
                    call("_lex.BlobConstraint", **kw),
                )
            case NullType():
                return cst.Name("None")
            case UnknownType():
                return dotted("_lex.JsonObject")
            case ArrayType():
                items = self.ann(t.items, owner, (*path, "items"))
                kw = {}
                if t.min_length is not None:
                    kw["min_length"] = literal(t.min_length)
                if t.max_length is not None:
                    kw["max_length"] = literal(t.max_length)
                lst = sub("list", items)
                return sub("_t.Annotated", lst, call("_pd.Field", **kw)) if kw else lst
            case ObjectType():
                return self.class_ref(owner, path)
            case RefType():
                return self.ref_ann(t.target)
            case UnionType():
                return self.union_ann(t)
        raise AssertionError(f"unhandled IR type {t!r}")

    def ref_ann(self, target: DefId) -> cst.BaseExpression:
        d = self.model.resolve(target)
        if d is None:
            return dotted("_lex.JsonObject")
        if d.kind in ("object", "record"):
            if not self.model.has_class(target):
                return dotted("_lex.JsonObject")
            return self.class_ref(target)
        if d.kind == "token":
            return dotted("_pd.StrictStr")
        body = d.body
        assert not isinstance(
            body, RecordDef | XrpcDef | SubscriptionDef | TokenDef | PermissionSetDef
        )
        if target in self.expanding:
            # A def that refers to itself through arrays and refs only (no object
            # in between: `a = array of #a`) cannot be inlined; the inner level
            # is typed Any (it recursed until RecursionError).
            self.cut = True
            return dotted("_t.Any")
        self.expanding.add(target)
        try:
            return self.ann(body, target, ())
        finally:
            self.expanding.discard(target)

    def union_ann(self, t: UnionType) -> cst.BaseExpression:
        members: list[cst.BaseExpression] = []
        seen: set[DefId] = set()
        unrecognized = not t.closed
        for ref in t.refs:
            if ref in seen:
                continue
            seen.add(ref)
            d = self.model.resolve(ref)
            if (
                d is None
                or d.kind not in ("object", "record")
                or not self.model.has_class(ref)
            ):
                unrecognized = True
                continue
            members.append(self.class_ref(ref))
        if unrecognized:
            members.append(dotted("_lex.Unrecognized"))
        closed = cst.Name("True" if t.closed else "False")
        return sub("_t.Annotated", union_of(members), call("_lex.union", closed=closed))

    # .. defs ..........................................................................
    def field_lines(
        self, obj: ObjectType, owner: DefId, path: tuple[str, ...]
    ) -> list[cst.BaseStatement]:
        lines: list[cst.BaseStatement] = []
        py_names = self.model.names.fields[(owner, path)]
        for f, py in zip(obj.fields, py_names, strict=True):
            t = self.ann(f.type, owner, (*path, "properties", f.name))
            default = getattr(f.type, "default", None)
            kw: dict[str, cst.BaseExpression] = {}
            # A `null` field already is `None`: `None | None` fails at import
            # (TypeError), and `Opt[None]` would refuse the one value it may hold.
            is_null = isinstance(f.type, NullType)
            if f.required:
                nullable = f.nullable and not is_null
                annotation = union_of([t, cst.Name("None")]) if nullable else t
            elif f.nullable or is_null:
                annotation = t if is_null else union_of([t, cst.Name("None")])
                kw["default"] = cst.Name("None")
            elif default is not None:
                annotation = t
                kw["default"] = literal(default)
            else:
                annotation = sub("_lex.Opt", t)
                kw["default"] = cst.Name("None")
            if py != f.name:
                kw["validation_alias"] = literal(f.name)
                kw["serialization_alias"] = literal(f.name)
            value: cst.BaseExpression | None
            if set(kw) == {"default"}:
                value = kw["default"]
            elif kw:
                value = call("_pd.Field", **kw)
            else:
                value = None
            lines.append(ann_assign(py, annotation, value, blank=1 if lines else 0))
            doc = _wrap(f.description, 76) if f.description else ""
            known = self.known_values(f.type)
            if known:
                doc += ("\n\n" if doc else "") + _wrap(
                    "Known values (open set): " + ", ".join(f"``{v}``" for v in known),
                    76,
                )
            if doc:
                lines.append(doc_stmt(doc, "    "))
        return lines

    def known_values(self, t: IRType) -> tuple[str, ...]:
        """``knownValues`` of a string field, also through a ref to a string def."""
        if isinstance(t, RefType):
            d = self.model.resolve(t.target)
            if d is not None and isinstance(d.body, StringType):
                t = d.body
        if isinstance(t, StringType) and t.known_values:
            return t.known_values
        return ()

    def object_class(
        self,
        d: Def,
        obj: ObjectType,
        path: tuple[str, ...],
        description: str | None,
        record_key: str | None = None,
        params: bool = False,
    ) -> None:
        cls = self.model.names.objects[(d.id, path)]
        is_def = not path
        where = str(d.id) + (
            "" if is_def else " › " + ".".join(p for p in path if p != "properties")
        )
        kind = (
            "record"
            if record_key is not None
            else ("object" if is_def else "inline object")
        )
        doc = _wrap(description) + "\n\n" if description else ""
        doc += f"Lexicon: ``{where}`` ({kind}"
        doc += f", record key ``{record_key}``)." if record_key else ")."
        body: list[cst.BaseStatement] = [doc_stmt(doc, "    ")]
        body.append(
            ann_assign(
                "lex_id", sub("_t.ClassVar", dotted("str")), literal(d.id.nsid), blank=1
            )
        )
        body.append(
            ann_assign(
                "lex_def",
                sub("_t.ClassVar", dotted("str")),
                literal(d.id.name if is_def else ""),
            )
        )
        body.append(
            ann_assign(
                "lex_type",
                sub("_t.ClassVar", dotted("str")),
                literal(str(d.id) if is_def else ""),
            )
        )
        if record_key is not None:
            body.append(
                ann_assign(
                    "lex_key", sub("_t.ClassVar", dotted("str")), literal(record_key)
                )
            )
        if is_def and not any(f.name == "$type" for f in obj.fields):
            type_values = [str(d.id)]
            if d.id.name == "main":
                type_values.append(f"{d.id.nsid}#main")
            body.append(
                ann_assign(
                    "py_type",
                    sub("_t.Literal", *[literal(v) for v in type_values]),
                    call(
                        "_pd.Field",
                        default=literal(str(d.id)),
                        validation_alias=literal("$type"),
                        serialization_alias=literal("$type"),
                    ),
                    blank=1,
                )
            )
        if params:
            kinds = {f.name: self.param_kind(f.type) for f in obj.fields}
            body.append(
                ann_assign(
                    "lex_params",
                    sub("_t.ClassVar", sub("dict", dotted("str"), dotted("str"))),
                    literal({k: v for k, v in kinds.items() if v is not None}),
                )
            )
        fields = self.field_lines(obj, d.id, path)
        if fields:
            first = fields[0]
            assert isinstance(first, cst.SimpleStatementLine)
            fields[0] = first.with_changes(leading_lines=[_BLANK])
        body.extend(fields)
        if record_key is not None:
            base = "_lex.LexRecord"
        else:
            base = "_lex.LexParams" if params else "_lex.LexObject"
        self.add_class(cls, base, body)

    def param_kind(self, t: IRType) -> str | None:
        """The Lexicon type of an XRPC parameter, as :meth:`LexParams.from_query`
        reads it (``integer``, ``boolean``, ``string``, ``unknown``, ``…[]``);
        ``None`` for a type params cannot hold (a parse or lint error)."""
        if isinstance(t, ArrayType):
            item = self.param_kind(t.items)
            return None if item is None or item.endswith("[]") else item + "[]"
        if isinstance(t, BooleanType):
            return "boolean"
        if isinstance(t, IntegerType):
            return "integer"
        if isinstance(t, StringType):
            return "string"
        if isinstance(t, UnknownType):
            return "unknown"
        return None

    def add_class(
        self, cls: str, base: str, body: list[cst.BaseStatement], late: bool = False
    ) -> None:
        (self.late if late else self.body).append(
            cst.ClassDef(
                name=name(cls),
                body=cst.IndentedBlock(body, header=_TRAIL),
                bases=[_arg(dotted(base))] if base else [],
                leading_lines=[_BLANK, _BLANK],
                whitespace_after_class=_SP,
                whitespace_after_name=_NO_WS,
                whitespace_before_colon=_NO_WS,
                whitespace_after_type_parameters=_NO_WS,
            )
        )
        self.exports.append(cls)

    def alias(self, alias: str, value: cst.BaseExpression, doc: str) -> None:
        self.late.append(ann_assign(alias, dotted("_t.TypeAlias"), value, blank=2))
        self.late.append(doc_stmt(doc))
        self.exports.append(alias)

    def inline_objects(self, d: Def, skip_root: bool) -> None:
        for path, obj in walk_objects(d):
            if skip_root and path in ((), ("params",), ("input",), ("output",)):
                continue
            desc = None
            self.object_class(d, obj, path, desc)

    def body_alias(self, d: Def, which: str, body: Body | None) -> cst.BaseExpression:
        base = self.model.names.defs[d.id]
        if body is None:
            return cst.Name("None")
        if body.schema is None or not body.encoding.startswith("application/json"):
            self.alias(
                f"{base}{which}",
                dotted("bytes"),
                f"{which} body of ``{d.id}``: raw bytes ({body.encoding}).",
            )
            return name(f"{base}{which}")
        schema = body.schema
        if isinstance(schema, ObjectType):
            self.object_class(d, schema, (which.lower(),), body.description)
            return name(self.model.names.objects[(d.id, (which.lower(),))])
        assert schema is not None
        self.alias(
            f"{base}{which}",
            self.ann(schema, d.id, (which.lower(),)),
            f"{which} body of ``{d.id}`` ({body.encoding}).",
        )
        return name(f"{base}{which}")

    def xrpc(self, d: Def, body: XrpcDef | SubscriptionDef) -> None:
        base = self.model.names.defs[d.id]
        members: list[cst.BaseStatement] = []
        params: cst.BaseExpression = cst.Name("None")
        if body.params is not None:
            self.object_class(
                d, body.params, ("params",), "Query parameters.", params=True
            )
            params = name(self.model.names.objects[(d.id, ("params",))])
        self.inline_objects(d, skip_root=True)
        kind = "subscription" if isinstance(body, SubscriptionDef) else body.kind
        doc = _wrap(d.description) + "\n\n" if d.description else ""
        doc += f"Lexicon: ``{d.id}`` ({kind})."
        members.append(doc_stmt(doc, "    "))
        members.append(
            ann_assign("lex_id", dotted("_t.Final"), literal(d.id.nsid), blank=1)
        )
        members.append(ann_assign("kind", dotted("_t.Final"), literal(kind)))
        members.append(ann_assign("params", dotted("_t.Final"), params))
        if isinstance(body, XrpcDef):
            inp = self.body_alias(d, "Input", body.input)
            out = self.body_alias(d, "Output", body.output)
            members.append(ann_assign("input", dotted("_t.Final"), inp))
            members.append(
                ann_assign(
                    "input_encoding",
                    dotted("_t.Final"),
                    literal(body.input.encoding if body.input else None),
                )
            )
            members.append(ann_assign("output", dotted("_t.Final"), out))
            members.append(
                ann_assign(
                    "output_encoding",
                    dotted("_t.Final"),
                    literal(body.output.encoding if body.output else None),
                )
            )
        else:
            if body.message is not None:
                self.alias(
                    f"{base}Message",
                    self.ann(body.message, d.id, ("message",)),
                    f"Messages of ``{d.id}``.",
                )
                members.append(
                    ann_assign("message", dotted("_t.Final"), name(f"{base}Message"))
                )
        members.append(
            ann_assign(
                "errors", dotted("_t.Final"), literal(tuple(n for n, _ in body.errors))
            )
        )
        self.add_class(base, "", members, late=True)

    def definition(self, d: Def) -> None:
        body = d.body
        py = self.model.names.defs[d.id]
        if isinstance(body, RecordDef):
            self.object_class(d, body.object, (), d.description, record_key=body.key)
            self.inline_objects(d, skip_root=True)
        elif isinstance(body, ObjectType):
            self.object_class(d, body, (), d.description)
            self.inline_objects(d, skip_root=True)
        elif isinstance(body, XrpcDef | SubscriptionDef):
            self.xrpc(d, body)
        elif isinstance(body, TokenDef):
            self.body.append(
                ann_assign(py, dotted("_t.Final"), literal(str(d.id)), blank=2)
            )
            doc = _wrap(d.description) + "\n\n" if d.description else ""
            self.body.append(doc_stmt(doc + f"Token ``{d.id}``."))
            self.exports.append(py)
        elif isinstance(body, PermissionSetDef):
            data = {
                "title": body.title,
                "detail": body.detail,
                "permissions": list(body.permissions),
            }
            self.uses_any = True
            self.body.append(
                ann_assign(
                    py,
                    sub("_t.Final", sub("dict", dotted("str"), dotted("_t.Any"))),
                    literal(data),
                    blank=2,
                )
            )
            self.body.append(doc_stmt(f"Permission set ``{d.id}``, kept as data."))
            self.exports.append(py)
        else:
            self.inline_objects(d, skip_root=False)
            doc = _wrap(d.description) + "\n\n" if d.description else ""
            self.expanding.add(d.id)
            self.cut = False
            try:
                annotation = self.ann(body, d.id, ())
            finally:
                self.expanding.discard(d.id)
            doc += f"Lexicon: ``{d.id}`` ({d.kind})."
            if self.cut:
                doc += (
                    "\n\nIt refers to itself through arrays or refs only: where it "
                    "recurs, values are typed ``Any`` (not checked further)."
                )
            self.alias(py, annotation, doc)

    # .. module ........................................................................
    def module(self) -> str:
        return print_module(self.tree())

    def tree(self) -> cst.Module:
        _ROOTS_USED.clear()
        for d in self.schema.defs:
            self.definition(d)
        s = self.schema
        doc = f"Lexicon ``{s.nsid}``"
        doc += ": " + _wrap(s.description, 70) if s.description else "."
        doc += (
            f"\n\n{GENERATED_MARKER} {__version__} from ``{self.schema_rel()}`` "
            f"(sha256 {s.origin.sha256[:16]}).\nDo not edit: "
            "``atdata-gen build`` overwrites this file."
        )
        head: list[cst.BaseStatement] = [doc_stmt(doc)]
        head.append(
            stmt(
                cst.ImportFrom(
                    module=name("__future__"),
                    names=[cst.ImportAlias(name("annotations"))],
                ),
                blank=1,
            )
        )
        used = _ROOTS_USED
        if "_t" in used:
            head.append(
                stmt(
                    cst.Import([cst.ImportAlias(name("typing"), asname=_as("_t"))]),
                    blank=1,
                )
            )
        if "_pd" in used:
            head.append(
                stmt(
                    cst.Import([cst.ImportAlias(name("pydantic"), asname=_as("_pd"))]),
                    blank=1,
                )
            )
        # Third-party section (isort): `from` imports sorted by module name.
        from_imports: list[tuple[str, str, str]] = []
        if "_lex" in used:
            from_imports.append(("atdata_runtime", "lex", "_lex"))
        for mod, alias in self.abs_imports.items():
            parent, _, leaf = mod.rpartition(".")
            from_imports.append((parent, leaf, alias))
        from_imports.sort(key=lambda item: (item[0].lower(), item[1].lower()))
        for n, (mod, leaf, alias) in enumerate(from_imports):
            mod_node = _dotted(mod)
            assert isinstance(mod_node, cst.Name | cst.Attribute)
            node = cst.ImportFrom(
                module=mod_node,
                names=[cst.ImportAlias(name(leaf), asname=_as(alias))],
            )
            head.append(stmt(node, blank=1 if n == 0 and "_pd" not in used else 0))
        head.append(
            ann_assign(
                "__all__",
                sub("list", dotted("str")),
                cst.List(
                    [
                        cst.Element(literal(e))
                        for e in sorted(self.exports, key=_export_order)
                    ]
                ),
                blank=1,
            )
        )
        tail: list[cst.BaseStatement] = []
        imports = [
            (self.relative_import(target, alias), target, alias)
            for target, alias in self.imports.items()
        ]
        imports.sort(key=lambda item: _import_order(item[0], item[2]))
        for node, _, _ in imports:
            line = stmt(node, blank=2 if not tail else 0)
            if not tail:
                line = line.with_changes(
                    leading_lines=[
                        _BLANK,
                        _BLANK,
                        cst.EmptyLine(
                            comment=cst.Comment(
                                "# Other Lexicons' modules are imported last, so that reference "
                                "cycles"
                            )
                        ),
                        cst.EmptyLine(
                            comment=cst.Comment(
                                "# between Lexicons import cleanly; pydantic resolves the "
                                "annotations on first use."
                            )
                        ),
                    ]
                )
            tail.append(line)
        late = list(self.late)
        if late and tail:
            first = late[0]
            assert isinstance(first, cst.SimpleStatementLine | cst.ClassDef)
            # isort's spacing after an import block: 2 blank lines before a class,
            # 1 before anything else.
            blanks = 2 if isinstance(first, cst.ClassDef) else 1
            late[0] = first.with_changes(leading_lines=[_BLANK] * blanks)
        return cst.Module(body=[*head, *self.body, *tail, *late])  # type: ignore[list-item]

    def schema_rel(self) -> str:
        return self.model_rel.get(self.schema.nsid, self.schema.origin.path)

    model_rel: dict[str, str] = field(default_factory=dict)

    def relative_import(self, target: tuple[str, ...], alias: str) -> cst.ImportFrom:
        mod = [p for p in target if p != "__init__"]
        cur_pkg = list(self.path[:-1])
        common = 0
        while (
            common < len(cur_pkg)
            and common < len(mod) - 1
            and cur_pkg[common] == mod[common]
        ):
            common += 1
        level = len(cur_pkg) - common + 1
        rest = mod[common:-1]
        module_node = dotted(".".join(rest)) if rest else None
        return cst.ImportFrom(
            module=module_node,  # type: ignore[arg-type]
            names=[cst.ImportAlias(name(mod[-1]), asname=_as(alias))],
            relative=[cst.Dot()] * level,
        )


def _no_check(self: cst.CSTNode) -> None:
    pass


@contextlib.contextmanager
def unvalidated() -> Iterator[None]:
    """Within this block, libcst nodes are built without libcst's per-node
    ``_validate`` (run by ``CSTNode.__post_init__``; ≈18 % of emission): the nodes
    are the same, equal objects, only unchecked. Safe for the emitter's own
    construction, which only builds checked names (:func:`name`), literals from
    ``repr`` of values (:func:`literal`) and fixed shapes;
    ``tests/test_printer.py`` checks that over the whole official corpus the trees
    equal validated ones (``deep_equals``). Not thread-safe: it patches the class
    for the whole process while it lasts, so nothing else may build libcst nodes
    meanwhile; only the emitter's single-threaded worker processes use it."""
    base = cst.CSTNode
    saved = base.__dict__["__post_init__"]
    base.__post_init__ = _no_check  # type: ignore[method-assign]
    try:
        yield
    finally:
        base.__post_init__ = saved  # type: ignore[method-assign]


def module_trees(
    model: LinkedModel,
    rels: dict[str, str],
    indices: Sequence[int],
    validate: bool = True,
) -> list[cst.Module]:
    """The libcst trees :func:`emit_modules` prints (``validate=False``: built
    :func:`unvalidated`)."""
    with contextlib.nullcontext() if validate else unvalidated():
        return [_emitter(model, rels, i).tree() for i in indices]


def _emitter(model: LinkedModel, rels: dict[str, str], index: int) -> _ModuleEmitter:
    schema = model.schemas[index]
    path = model.names.modules[schema.nsid]
    return _ModuleEmitter(model, schema, path, model_rel=rels)


def emit_modules(
    model: LinkedModel, rels: dict[str, str], indices: Sequence[int]
) -> list[str]:
    """Source text (before formatting) of the modules of ``model.schemas[i]`` for
    each ``i`` in ``indices``; ``rels`` maps NSID → source path cited in headers.
    The emitter's worker processes (:mod:`.parallel`, single-threaded) call this
    inside :func:`unvalidated`; in the caller's own process the trees are validated,
    since another thread may be building libcst nodes there."""
    return [_emitter(model, rels, i).module() for i in indices]
