"""What a generated module may contain, checked on its AST, per kind of module.

The emitters (``atdata_gen.backend.emit``, ``emit_samples``, ``emit_lenses``) build
every module from checked names and ``repr`` literals. These checkers hold the
output to the shapes those emitters legitimately produce, and nothing more: a
statement, call, import, decorator, base class or name outside the list fails, so
that whatever a hostile Lexicon, schema record or lens record says, importing the
module can only define classes, constants and the two lens stub functions.

:func:`check_files` classifies every ``*.py`` of a build (Lexicon module, sample
module, sample alias module, lens stub, package ``__init__``) from the linked model
and checks each with its whitelist; :func:`check_paths` checks that no emitted path
can leave the package directory.
"""

from __future__ import annotations

import ast
import keyword
import re
from collections.abc import Iterable
from pathlib import PurePosixPath

from atdata_gen.ir.link import LinkedModel
from atdata_gen.naming import WINDOWS_RESERVED

__all__ = ["check_files", "check_lexicon_module", "check_paths", "module_kinds"]

_FORBIDDEN = (
    ast.AsyncFunctionDef,
    ast.Lambda,
    ast.Assign,
    ast.AugAssign,
    ast.Global,
    ast.Nonlocal,
    ast.Delete,
    ast.With,
    ast.AsyncWith,
    ast.For,
    ast.AsyncFor,
    ast.While,
    ast.If,
    ast.IfExp,
    ast.Try,
    ast.TryStar,
    ast.Raise,
    ast.Assert,
    ast.Await,
    ast.Yield,
    ast.YieldFrom,
    ast.NamedExpr,
    ast.ListComp,
    ast.SetComp,
    ast.DictComp,
    ast.GeneratorExp,
    ast.Starred,
    ast.JoinedStr,
    ast.Match,
)
"""Node types no emitter produces anywhere."""

_BUILTIN_NAMES = {"str", "int", "float", "bool", "bytes", "list", "dict", "tuple"}
_BUILTIN_NAMES |= {"type", "None", "True", "False"}

# -- Lexicon modules (emit.py) ---------------------------------------------------------
_LEX_CALLS = {
    ("_pd", "Field"),
    ("_lex", "StrictLiteral"),
    ("_lex", "String"),
    ("_lex", "Integer"),
    ("_lex", "Boolean"),
    ("_lex", "Bytes"),
    ("_lex", "BlobConstraint"),
    ("_lex", "union"),
}
_LEX_BASES = {"_lex.LexRecord", "_lex.LexObject", "_lex.LexParams"}
_LEX_IMPORTS = {("typing", "_t"), ("pydantic", "_pd")}

# -- sample modules (emit_samples.py) --------------------------------------------------
_SAMPLE_IMPORTS = {
    ("dataclasses", "_dc"),
    ("typing", "_t"),
    ("numpy", "_np"),
    ("numpy.typing", "_npt"),
}
_SAMPLE_DECORATOR = "_dc.dataclass(kw_only=True, eq=False)"

# -- lens stubs (emit_lenses.py) -------------------------------------------------------
_LENS_EXPORTS = ["GETTER_CODE", "PUTTER_CODE", "Source", "Target", "binding", "get"]
_LENS_EXPORTS += ["lens", "put"]
_LENS_FUNCTIONS = {
    "get": ((("source", "Source"),), "Target", "binding.get(source)"),
    "put": (
        (("view", "Target"), ("source", "Source")),
        "Source",
        "binding.put(view, source)",
    ),
}


def _fail(path: str, node: ast.AST, why: str) -> AssertionError:
    return AssertionError(
        f"{path}:{getattr(node, 'lineno', '?')}: {why}: {ast.unparse(node)[:300]}"
    )


def _docstring(node: ast.stmt) -> bool:
    return (
        isinstance(node, ast.Expr)
        and isinstance(node.value, ast.Constant)
        and isinstance(node.value.value, str)
    )


def _dotted(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return None if base is None else f"{base}.{node.attr}"
    return None


def _is_literal(node: ast.expr) -> bool:
    """A JSON-like literal: constants, -number, and lists/tuples/dicts of them."""
    if isinstance(node, ast.Constant):
        return node.value is None or isinstance(node.value, str | int | float | bool)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return isinstance(node.operand, ast.Constant) and isinstance(
            node.operand.value, int | float
        )
    if isinstance(node, ast.List | ast.Tuple):
        return all(_is_literal(e) for e in node.elts)
    if isinstance(node, ast.Dict):
        return all(
            k is not None
            and isinstance(k, ast.Constant)
            and isinstance(k.value, str)
            and _is_literal(v)
            for k, v in zip(node.keys, node.values, strict=True)
        )
    return False


def _value_ok(node: ast.expr) -> bool:
    """An assigned value: a literal, a (checked) call, a name, attribute, subscript
    or union, or a tuple/list of those (``sample_fields``)."""
    if _is_literal(node):
        return True
    if isinstance(node, ast.Tuple | ast.List):
        return all(_value_ok(e) for e in node.elts)
    return isinstance(
        node, ast.Call | ast.Name | ast.Attribute | ast.Subscript | ast.BinOp
    )


def _imported(tree: ast.Module) -> set[str]:
    return {
        (a.asname or a.name)
        for n in tree.body
        if isinstance(n, ast.Import | ast.ImportFrom)
        for a in n.names
    }


def _defined(tree: ast.Module) -> set[str]:
    out = {n.name for n in tree.body if isinstance(n, ast.ClassDef | ast.FunctionDef)}
    out |= {
        n.target.id
        for n in tree.body
        if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)
    }
    return out | _imported(tree)


def _check_common(
    tree: ast.Module,
    path: str,
    calls: set[tuple[str, str]],
    names: set[str],
) -> None:
    """Checks every node: no forbidden node type; every call is ``alias.attr(...)``
    from ``calls`` with literal (or checked-call) arguments; every loaded name is
    in ``names``; no dunder attribute; every constant is a JSON-like scalar; every
    import alias is private (``_x``) unless it is one of the module's own names."""
    for node in ast.walk(tree):
        if isinstance(node, _FORBIDDEN):
            raise _fail(path, node, f"{type(node).__name__} is never emitted")
        if isinstance(node, ast.Call):
            f = node.func
            if not (isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name)):
                raise _fail(path, node, "call of something not alias.attr")
            if (f.value.id, f.attr) not in calls:
                raise _fail(path, node, "call not on the whitelist")
            for a in [*node.args, *(k.value for k in node.keywords)]:
                ok = _is_literal(a) or isinstance(
                    a, ast.Name | ast.Call | ast.Attribute | ast.Subscript | ast.BinOp
                )
                if not ok:
                    raise _fail(path, a, "call argument of an unexpected shape")
            if any(k.arg is None for k in node.keywords):
                raise _fail(path, node, "**kwargs in a call")
        if (
            isinstance(node, ast.Name)
            and isinstance(node.ctx, ast.Load)
            and node.id not in names
        ):
            raise _fail(path, node, f"name {node.id!r} is not defined here")
        if isinstance(node, ast.Name) and not (
            node.id.isascii() and node.id.isidentifier()
        ):
            raise _fail(path, node, "non-ASCII identifier")
        if isinstance(node, ast.Attribute) and node.attr.startswith("__"):
            raise _fail(path, node, "dunder attribute")
        if isinstance(node, ast.Constant) and not (
            node.value is None
            or node.value is Ellipsis
            or isinstance(node.value, str | int | float | bool)
        ):
            raise _fail(path, node, "constant of an unexpected type")
        if isinstance(node, ast.BinOp) and not isinstance(node.op, ast.BitOr):
            raise _fail(path, node, "operator other than | (unions)")
        if isinstance(node, ast.UnaryOp) and not isinstance(node.op, ast.USub):
            raise _fail(path, node, "unary operator other than -")
        if isinstance(node, ast.alias) and not (node.asname or "_").startswith("_"):
            raise _fail(path, node, "public import alias")
        if (
            isinstance(node, ast.AnnAssign)
            and node.value is not None
            and not _value_ok(node.value)
        ):
            raise _fail(path, node, "assigned value of an unexpected shape")


def _check_all(tree: ast.Module, path: str, exports: set[str] | None = None) -> None:
    alls = [
        n
        for n in tree.body
        if isinstance(n, ast.AnnAssign)
        and isinstance(n.target, ast.Name)
        and n.target.id == "__all__"
    ]
    if len(alls) != 1 or not isinstance(alls[0].value, ast.List):
        raise AssertionError(f"{path}: exactly one literal __all__ list expected")
    names = [e.value for e in alls[0].value.elts if isinstance(e, ast.Constant)]
    if len(names) != len(alls[0].value.elts) or not all(
        isinstance(n, str) and n.isascii() and n.isidentifier() for n in names
    ):
        raise AssertionError(f"{path}: __all__ holds a non-identifier")
    if not set(names) <= (exports if exports is not None else _defined(tree)):
        raise AssertionError(f"{path}: __all__ names something not defined")


def _class_body(cls: ast.ClassDef, path: str) -> None:
    for item in cls.body:
        if not (isinstance(item, ast.AnnAssign) or _docstring(item)):
            raise _fail(path, item, "class body holds more than annotations/docs")
        if isinstance(item, ast.AnnAssign) and not isinstance(item.target, ast.Name):
            raise _fail(path, item, "annotation target is not a plain name")


def check_lexicon_module(tree: ast.Module, path: str) -> None:
    """A Lexicon's module (``emit.py``): docstring, ``__future__``/``typing``/
    ``pydantic``/``atdata_runtime.lex`` and relative imports of other Lexicons'
    modules, classes without decorators deriving from ``_lex.Lex*`` (or nothing, for
    XRPC descriptions) whose bodies are annotations, and annotated constants."""
    for node in tree.body:
        if _docstring(node):
            continue
        if isinstance(node, ast.Import):
            got = {(a.name, a.asname) for a in node.names}
            if not got <= _LEX_IMPORTS:
                raise _fail(path, node, "import not on the whitelist")
        elif isinstance(node, ast.ImportFrom):
            if node.module == "__future__" and node.level == 0:
                if [a.name for a in node.names] != ["annotations"]:
                    raise _fail(path, node, "unexpected __future__ import")
            elif node.module == "atdata_runtime" and node.level == 0:
                if [(a.name, a.asname) for a in node.names] != [("lex", "_lex")]:
                    raise _fail(path, node, "unexpected atdata_runtime import")
            elif node.level == 0:
                raise _fail(path, node, "absolute import of another package")
        elif isinstance(node, ast.ClassDef):
            if node.decorator_list or node.keywords:
                raise _fail(path, node, "decorated class or class keywords")
            if len(node.bases) > 1 or any(
                _dotted(b) not in _LEX_BASES for b in node.bases
            ):
                raise _fail(path, node, "unexpected base class")
            _class_body(node, path)
        elif not isinstance(node, ast.AnnAssign) or not isinstance(
            node.target, ast.Name
        ):
            raise _fail(path, node, "module statement not on the whitelist")
        if isinstance(node, ast.FunctionDef | ast.Return):
            raise _fail(path, node, "function in a Lexicon module")
    for sub in ast.walk(tree):
        if isinstance(sub, ast.FunctionDef | ast.Return):
            raise _fail(path, sub, "function in a Lexicon module")
    _check_all(tree, path)
    _check_common(tree, path, _LEX_CALLS, _defined(tree) | _BUILTIN_NAMES)


def _check_sample_module(tree: ast.Module, path: str) -> None:
    classes = [n for n in tree.body if isinstance(n, ast.ClassDef)]
    if len(classes) != 2:
        raise AssertionError(f"{path}: a sample module holds two classes")
    sample, batch = classes
    if batch.name != f"{sample.name}Batch":
        raise AssertionError(f"{path}: batch class name")
    for node in tree.body:
        if _docstring(node) or node in classes:
            continue
        if isinstance(node, ast.Import):
            if not {(a.name, a.asname) for a in node.names} <= _SAMPLE_IMPORTS:
                raise _fail(path, node, "import not on the whitelist")
        elif isinstance(node, ast.ImportFrom):
            got = (node.level, node.module, [(a.name, a.asname) for a in node.names])
            if got not in (
                (0, "__future__", [("annotations", None)]),
                (0, "atdata_runtime", [("samples", "_sample")]),
            ):
                raise _fail(path, node, "import not on the whitelist")
        elif not (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and node.target.id == "__all__"
        ):
            raise _fail(path, node, "module statement not on the whitelist")
    decorators = [ast.unparse(d) for d in sample.decorator_list]
    if decorators != [_SAMPLE_DECORATOR] or sample.keywords or batch.keywords:
        raise _fail(path, sample, "sample class decorators")
    base = ast.unparse(sample.bases[0]) if len(sample.bases) == 1 else None
    if base not in (
        f"_sample.PackableSample[{batch.name!r}]",
        f'_sample.PackableSample["{batch.name}"]',
    ):
        raise _fail(path, sample, "sample class base")
    if batch.decorator_list or [ast.unparse(b) for b in batch.bases] != [
        f"_sample.SampleBatch[{sample.name}]"
    ]:
        raise _fail(path, batch, "batch class base/decorators")
    _class_body(sample, path)
    _class_body(batch, path)
    dataclass_calls = [
        n
        for n in ast.walk(tree)
        if isinstance(n, ast.Call) and _dotted(n.func) == "_dc.dataclass"
    ]
    if dataclass_calls != [sample.decorator_list[0]]:
        raise AssertionError(f"{path}: _dc.dataclass called outside the decorator")
    _check_all(tree, path, {sample.name, batch.name})
    calls = {("_sample", "FieldSpec"), ("_dc", "dataclass")}
    _check_common(tree, path, calls, _defined(tree) | _BUILTIN_NAMES)


def _check_alias_module(tree: ast.Module, path: str) -> None:
    for node in tree.body:
        if _docstring(node):
            continue
        if isinstance(node, ast.ImportFrom) and node.module == "__future__":
            continue
        if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module:
            if any(a.asname is not None for a in node.names):
                raise _fail(path, node, "aliased re-export")
            continue
        if isinstance(node, ast.AnnAssign) and ast.unparse(node.target) == "__all__":
            continue
        raise _fail(path, node, "alias module statement not on the whitelist")
    _check_all(tree, path, _imported(tree))
    _check_common(tree, path, set(), {"str", "list"})


def _check_lens_module(tree: ast.Module, path: str) -> None:
    functions: dict[str, ast.FunctionDef] = {}
    allowed_imports = {
        (0, "__future__", (("annotations", None),)),
        (0, "atdata_runtime", (("lenses", "_lens"),)),
        (0, "atdata_runtime.lenses", (("records", "_lensref"),)),
    }
    relative: list[str | None] = []
    for node in tree.body:
        if _docstring(node):
            continue
        if isinstance(node, ast.Import):
            if [(a.name, a.asname) for a in node.names] != [("typing", "_t")]:
                raise _fail(path, node, "import not on the whitelist")
        elif isinstance(node, ast.ImportFrom):
            names = tuple((a.name, a.asname) for a in node.names)
            if node.level > 0:
                if len(names) != 1 or names[0][1] not in ("_source", "_target"):
                    raise _fail(path, node, "relative import of a non-sample")
                relative.append(names[0][1])
            elif (node.level, node.module, names) not in allowed_imports:
                raise _fail(path, node, "import not on the whitelist")
        elif isinstance(node, ast.FunctionDef):
            functions[node.name] = node
        elif not (
            isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
        ):
            raise _fail(path, node, "lens module statement not on the whitelist")
    if sorted(relative, key=str) != ["_source", "_target"]:
        raise AssertionError(f"{path}: expected the source and target imports")
    if set(functions) != set(_LENS_FUNCTIONS):
        raise AssertionError(f"{path}: functions {sorted(functions)}")
    for fn_name, fn in functions.items():
        params, returns, call = _LENS_FUNCTIONS[fn_name]
        a = fn.args
        got = tuple((p.arg, ast.unparse(p.annotation)) for p in a.args if p.annotation)
        if (
            fn.decorator_list
            or a.posonlyargs
            or a.kwonlyargs
            or a.vararg
            or a.kwarg
            or a.defaults
            or got != params
            or len(a.args) != len(params)
            or fn.returns is None
            or ast.unparse(fn.returns) != returns
            or len(fn.body) != 2
            or not _docstring(fn.body[0])
            or not isinstance(fn.body[1], ast.Return)
            or fn.body[1].value is None
            or ast.unparse(fn.body[1].value) != call
        ):
            raise _fail(path, fn, "lens stub function of an unexpected shape")
    _check_all(tree, path, set(_LENS_EXPORTS))
    for sub in ast.walk(tree):
        if (
            isinstance(sub, ast.Call)
            and _dotted(sub.func) == "_lensref.CodeReference"
            and (sub.args or not all(_is_literal(k.value) for k in sub.keywords))
        ):
            raise _fail(path, sub, "CodeReference with non-literal arguments")
        if isinstance(node, ast.Call) and _dotted(node.func) == "_lensref.RecordLens":
            args = [ast.unparse(x) for x in node.args]
            if args != ["Source", "Target", "GETTER_CODE", "PUTTER_CODE"] or not all(
                k.arg in ("name", "record") and _is_literal(k.value)
                for k in node.keywords
            ):
                raise _fail(path, node, "RecordLens of an unexpected shape")
    calls = {
        ("_lensref", "CodeReference"),
        ("_lensref", "RecordLens"),
        ("binding", "get"),
        ("binding", "put"),
        ("binding", "lens"),
    }
    _check_common(
        tree, path, calls, _defined(tree) | _BUILTIN_NAMES | {"source", "view"}
    )


_RECORD_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9.-]*")
_RECORD_VALUE = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*:[A-Za-z_]\w*", re.ASCII)


def _check_records(node: ast.stmt, path: str) -> None:
    """The top-level ``__init__``'s record registry (``emit_registry``):
    ``RECORDS: dict[str, str] = {"<nsid>": "<module>:<class>", ...}``, sorted."""
    if not (
        isinstance(node, ast.AnnAssign)
        and isinstance(node.target, ast.Name)
        and node.target.id == "RECORDS"
        and ast.unparse(node.annotation) == "dict[str, str]"
        and isinstance(node.value, ast.Dict)
    ):
        raise _fail(path, node, "not RECORDS: dict[str, str] = {...}")
    keys: list[str] = []
    for k, v in zip(node.value.keys, node.value.values, strict=True):
        if not (
            isinstance(k, ast.Constant)
            and isinstance(k.value, str)
            and _RECORD_KEY.fullmatch(k.value)
            and isinstance(v, ast.Constant)
            and isinstance(v.value, str)
            and _RECORD_VALUE.fullmatch(v.value)
            and not any(keyword.iskeyword(p) for p in re.split("[.:]", v.value))
        ):
            raise _fail(path, node, "RECORDS entry of an unexpected shape")
        keys.append(k.value)
    if keys != sorted(set(keys)):
        raise _fail(path, node, "RECORDS keys unsorted or repeated")


def _check_package_init(tree: ast.Module, path: str) -> None:
    body = tree.body
    if path == "__init__.py" and len(body) == 2 and _docstring(body[0]):
        _check_records(body[1], path)
        return
    if len(body) != 1 or not _docstring(body[0]):
        raise AssertionError(
            f"{path}: a package __init__ holds only its docstring (the top-level "
            "one also its RECORDS registry)"
        )


def module_kinds(model: LinkedModel, files: Iterable[str]) -> dict[str, str]:
    """``{relative path: kind}`` for every emitted ``*.py``: ``lexicon``,
    ``sample``, ``sample_alias``, ``lens`` or ``package``."""
    from atdata_gen.backend.emit_samples import sample_aliases

    kinds: dict[str, str] = {}
    for nsid, parts in model.names.modules.items():
        kinds["/".join(parts) + ".py"] = "lexicon"
        del nsid
    for parts, _, _ in model.names.samples.values():
        kinds["/".join(parts) + ".py"] = "sample"
    for parts in sample_aliases(model):
        kinds["/".join(parts) + ".py"] = "sample_alias"
    for lens in model.lenses:
        kinds["/".join(lens.module) + ".py"] = "lens"
    return {rel: kinds.get(rel, "package") for rel in files if rel.endswith(".py")}


_CHECKERS = {
    "lexicon": check_lexicon_module,
    "sample": _check_sample_module,
    "sample_alias": _check_alias_module,
    "lens": _check_lens_module,
    "package": _check_package_init,
}


def check_files(model: LinkedModel, files: dict[str, str]) -> dict[str, str]:
    """Parse and check every emitted ``*.py`` of ``files`` with the whitelist of
    its kind; returns the kinds (:func:`module_kinds`)."""
    kinds = module_kinds(model, files)
    for rel, kind in kinds.items():
        text = files[rel]
        tree = ast.parse(text, filename=rel)
        compile(text, rel, "exec", dont_inherit=True)
        _CHECKERS[kind](tree, rel)
    return kinds


_ALLOWED_LEAVES = {"py.typed"}
_NAME_MAX = 255
"""Longest file name (bytes) on Linux, macOS and NTFS."""
_PYC_SUFFIX = ".cpython-399.opt-2.pyc"
"""The longest suffix the byte-code cache adds to a module's name."""


def check_paths(files: Iterable[str]) -> None:
    """Every emitted path is relative, made of plain ASCII identifier segments that
    are not keywords nor Windows device names and leave room for the byte-code
    cache's suffix within 255 bytes (the last one a ``.py`` module, or
    ``py.typed``), so it can never leave the package directory, be unwritable, or
    collide case-insensitively."""
    seen: dict[str, str] = {}
    for rel in files:
        p = PurePosixPath(rel)
        if p.is_absolute() or "\\" in rel or rel != str(p):
            raise AssertionError(f"path {rel!r} is not a plain relative path")
        *dirs, leaf = p.parts
        stem = leaf[:-3] if leaf.endswith(".py") else None
        if stem is None and leaf not in _ALLOWED_LEAVES:
            raise AssertionError(f"unexpected file {rel!r}")
        for seg in [*dirs, *([stem] if stem is not None else [])]:
            if not (seg.isascii() and seg.isidentifier()) or keyword.iskeyword(seg):
                raise AssertionError(f"path {rel!r}: segment {seg!r}")
            if seg.lower() in WINDOWS_RESERVED:
                raise AssertionError(f"path {rel!r}: Windows device name {seg!r}")
            if len(seg) + len(_PYC_SUFFIX) > _NAME_MAX:
                raise AssertionError(f"path {rel!r}: segment too long for a .pyc")
        folded = rel.lower()
        if folded in seen and seen[folded] != rel:
            raise AssertionError(f"paths {rel!r} and {seen[folded]!r} differ by case")
        seen[folded] = rel


HOSTILE_TEXT = [  # names and text that must never become code
    '"""',
    "'''",
    "\\",
    '\\"""',
    "\n",
    "\r",
    "\r\n",
    "\x00",
    "\x1b[31m",
    "\u2028",
    "\u2029",
    "\ufeff",
    "\u202e",
    "__import__('os').system('touch /tmp/atdata-gen-pwned')",
    '"); import os; os.system("touch /tmp/atdata-gen-pwned"); ("',
    '"""\nimport os\nos.system(\'touch /tmp/atdata-gen-pwned\')\n"""',
    "::error file=x::pwned",
    "%0A",
    "class",
    "None",
    "True",
    "def",
    "lambda",
    "import",
    "match",
    "type",
    "_",
    "__init__",
    "__class__",
    "__builtins__",
    "model_config",
    "model_dump",
    "py_type",
    "lex_id",
    "sample_fields",
    "schema_name",
    "binding",
    "_t",
    "_lex",
    "_sample",
    "con",
    "NUL",
    "lpt1",
    "ｆｏｏ",
    "fоо",
    "foo",
    "Foo",
    "foo_bar",
    "fooBar",
    "FOO_BAR",
    "1st",
    "-",
    "$type",
    "$bytes",
    "#",
    "é",
    "👩‍👩‍👧",
    "a b",
    "",
    "{x}",
    "%s",
    "\t",
    "../../etc/passwd",
    "/abs",
    "\ud800",
    "schema",
    "json",
    "dict",
    "_private",
    "__dunder__",
]
