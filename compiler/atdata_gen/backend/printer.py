"""A fast printer for the subset of libcst nodes the emitter builds.

The emitter builds every module as a libcst tree (names checked, literals built from
values); libcst's own ``Module.code`` then spends most of a build in per-node context
managers. This printer renders the same trees, node type by node type, into code
that is token-for-token what libcst prints (whitespace aside: the formatter owns
whitespace). A node type it does not know is handed to libcst's printer, so it can
never print something different from the tree. ``tests/test_printer.py`` checks
``ast`` equality with libcst's output over the whole official corpus.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import libcst as cst

__all__ = ["print_module"]

_FALLBACK = cst.Module(body=[])


def _expr(node: cst.CSTNode) -> str:
    fn = _EXPR.get(type(node))
    if fn is None or getattr(node, "lpar", None):
        return _FALLBACK.code_for_node(node)
    return fn(node)


def _args(args: Sequence[cst.Arg]) -> str:
    parts = []
    for a in args:
        if a.star:
            parts.append(a.star + _expr(a.value))
        elif a.keyword is not None:
            parts.append(f"{a.keyword.value}={_expr(a.value)}")
        else:
            parts.append(_expr(a.value))
    return ", ".join(parts)


def _subscript(n: cst.Subscript) -> str:
    items = []
    for el in n.slice:
        if not isinstance(el.slice, cst.Index) or el.slice.star:
            return _FALLBACK.code_for_node(n)
        items.append(_expr(el.slice.value))
    return f"{_expr(n.value)}[{', '.join(items)}]"


def _binary(n: cst.BinaryOperation) -> str:
    if not isinstance(n.operator, cst.BitOr):
        return _FALLBACK.code_for_node(n)
    return f"{_expr(n.left)} | {_expr(n.right)}"


def _unary(n: cst.UnaryOperation) -> str:
    if not isinstance(n.operator, cst.Minus):
        return _FALLBACK.code_for_node(n)
    return f"-{_expr(n.expression)}"


def _elements(elements: Sequence[cst.BaseElement]) -> list[str] | None:
    out = []
    for e in elements:
        if not isinstance(e, cst.Element):
            return None
        out.append(_expr(e.value))
    return out


def _list(n: cst.List) -> str:
    items = _elements(n.elements)
    return _FALLBACK.code_for_node(n) if items is None else f"[{', '.join(items)}]"


def _tuple(n: cst.Tuple) -> str:
    items = _elements(n.elements)
    if items is None:
        return _FALLBACK.code_for_node(n)
    return f"({items[0]},)" if len(items) == 1 else f"({', '.join(items)})"


def _dict(n: cst.Dict) -> str:
    parts = []
    for e in n.elements:
        if not isinstance(e, cst.DictElement):
            return _FALLBACK.code_for_node(n)
        parts.append(f"{_expr(e.key)}: {_expr(e.value)}")
    return "{" + ", ".join(parts) + "}"


_EXPR: dict[type, Callable[[Any], str]] = {
    cst.Name: lambda n: n.value,
    cst.Attribute: lambda n: f"{_expr(n.value)}.{n.attr.value}",
    cst.Subscript: _subscript,
    cst.Call: lambda n: f"{_expr(n.func)}({_args(n.args)})",
    cst.BinaryOperation: _binary,
    cst.UnaryOperation: _unary,
    cst.SimpleString: lambda n: n.value,
    cst.Integer: lambda n: n.value,
    cst.Float: lambda n: n.value,
    cst.List: _list,
    cst.Tuple: _tuple,
    cst.Dict: _dict,
    cst.Ellipsis: lambda n: "...",
}


def _dotted(node: cst.BaseExpression) -> str:
    return _expr(node)


def _small(node: cst.BaseSmallStatement) -> str | None:
    if isinstance(node, cst.Expr):
        return _expr(node.value)
    if isinstance(node, cst.AnnAssign):
        text = f"{_expr(node.target)}: {_expr(node.annotation.annotation)}"
        return text + (f" = {_expr(node.value)}" if node.value is not None else "")
    if isinstance(node, cst.Import):
        names = [
            f"{_dotted(a.name)}" + (f" as {_expr(a.asname.name)}" if a.asname else "")
            for a in node.names
        ]
        return "import " + ", ".join(names)
    if isinstance(node, cst.ImportFrom) and isinstance(node.names, Sequence):
        dots = "." * len(node.relative)
        module = _dotted(node.module) if node.module is not None else ""
        names = [
            f"{_expr(a.name)}" + (f" as {_expr(a.asname.name)}" if a.asname else "")
            for a in node.names
        ]
        return f"from {dots}{module} import {', '.join(names)}"
    return None


def _lines(leading: Sequence[cst.EmptyLine], indent: str, out: list[str]) -> None:
    for line in leading:
        out.append(f"{indent}{line.comment.value}\n" if line.comment else "\n")


def _statement(node: cst.BaseStatement, indent: str, out: list[str]) -> None:
    if isinstance(node, cst.SimpleStatementLine):
        parts = [_small(s) for s in node.body]
        if all(p is not None for p in parts):
            _lines(node.leading_lines, indent, out)
            comment = node.trailing_whitespace.comment
            tail = f"  {comment.value}" if comment else ""
            out.append(f"{indent}{'; '.join(p for p in parts if p)}{tail}\n")
            return
    elif (
        isinstance(node, cst.ClassDef)
        and isinstance(node.body, cst.IndentedBlock)
        and not node.keywords
    ):
        _lines(node.leading_lines, indent, out)
        for decorator in node.decorators:
            out.append(f"{indent}@{_expr(decorator.decorator)}\n")
        bases = f"({_args(node.bases)})" if node.bases else ""
        out.append(f"{indent}class {node.name.value}{bases}:\n")
        inner = indent + "    "
        for stmt in node.body.body:
            _statement(stmt, inner, out)
        return
    # Anything else: libcst's printer, re-indented.
    text = _FALLBACK.code_for_node(node)
    out.extend(
        indent + line if line.strip() else line
        for line in text.splitlines(keepends=True)
    )


def print_module(module: cst.Module) -> str:
    """Python source for ``module`` (equal to ``module.code`` up to whitespace)."""
    out: list[str] = []
    for stmt in module.body:
        _statement(stmt, "", out)
    return "".join(out)
