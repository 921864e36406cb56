"""``atdata-gen new-lens A B``: a starter lens module between two generated sample
classes.

The classes are found in the project's generated package (``[tool.atdata-gen]``
``out``/``package``; run ``atdata-gen build`` first) by ``schema_name`` and
``schema_version`` (``Name@1.2.0``; ``Name`` alone takes the highest version).
Fields with the same wire name, type and optionality — or a required source field
feeding an optional target field — are mapped; every other target field gets
``TODO("…")``, an instance of a class that is no field type, so ``mypy`` reports
each one, and that raises ``NotImplementedError`` if the lens runs unfinished. The
putter writes the mapped fields back with ``dataclasses.replace`` and keeps the rest
of the source.

The module's docstring says how a lens record naming it gets bound
(:mod:`atdata_runtime.lenses.records`): its top-level package must be on the
consumer's lens allowlist (``[tool.atdata-gen] lens-packages``) and live in an
installed package, not in the working or script directory.

The module is built as a libcst tree with the compiler's safe node builders
(identifiers checked, strings from ``repr``), then formatted with ruff: schema
names, versions and field names from records never become code.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path

import libcst as cst
from atdata_runtime.lenses import same_field_type
from atdata_runtime.samples import FieldSpec, PackableSample, generated_sample_classes

from .backend.emit import call, docstring_literal, dotted, literal, name
from .backend.format import format_sources

__all__ = ["LensGenError", "find_sample_class", "starter_lens"]


class LensGenError(LookupError):
    """A schema reference names no generated class (or is malformed)."""


def _semver(version: str) -> tuple[int, ...]:
    core = re.split(r"[-+]", version, maxsplit=1)[0]
    return tuple(int(p) if p.isdigit() else 0 for p in core.split("."))


def find_sample_class(out: Path, package: str, ref: str) -> type[PackableSample]:
    """The generated class for ``ref`` (``Name@version`` or ``Name``) in the
    package ``package`` under ``out``. Raises :class:`LensGenError` listing the
    versions that exist."""
    schema, _, version = ref.partition("@")
    if str(out) not in sys.path:
        sys.path.insert(0, str(out))
    try:
        classes = generated_sample_classes(package)
    except ImportError as exc:
        raise LensGenError(
            f"no generated samples package {package}.samples under {out} "
            "(run atdata-gen build first)"
        ) from exc
    found = [c for c in classes if c.schema_name == schema]
    if not found:
        raise LensGenError(f"no generated sample class for schema {schema!r}")
    if not version:
        return max(found, key=lambda c: _semver(c.schema_version))
    for cls in found:
        if cls.schema_version == version:
            return cls
    have = ", ".join(sorted(c.schema_version for c in found))
    raise LensGenError(f"schema {schema!r} has no version {version} (have: {have})")


@dataclass(frozen=True)
class _Plan:
    mapped: list[tuple[str, str]]  # (source attribute, target attribute)
    todo: list[FieldSpec]


def _type_text(spec: FieldSpec) -> str:
    if spec.kind == "ndarray":
        text = f"ndarray[{spec.dtype or 'any'}]"
    elif spec.kind == "list" and spec.items is not None:
        text = f"list[{_type_text(spec.items)}]"
    else:
        text = spec.kind
    return f"{text} | None" if spec.optional else text


def _same(a: FieldSpec, b: FieldSpec) -> bool:
    return same_field_type(a, b) and (b.optional or not a.optional)


def _plan(source: type[PackableSample], target: type[PackableSample]) -> _Plan:
    have = {f.wire: f for f in source.sample_fields}
    mapped, todo = [], []
    for spec in target.sample_fields:
        match = have.get(spec.wire)
        if match is not None and _same(match, spec):
            mapped.append((match.name, spec.name))
        else:
            todo.append(spec)
    return _Plan(mapped, todo)


def _label(cls: type[PackableSample]) -> str:
    return f"{cls.schema_name}@{cls.schema_version}"


_NON_WORD = re.compile(r"\W+")


def _ident(text: str) -> str:
    out = _NON_WORD.sub("_", text.lower()).strip("_")
    return out if out and not out[0].isdigit() else f"v_{out}"


def starter_lens(source: type[PackableSample], target: type[PackableSample]) -> str:
    """The formatted text of a starter lens module from ``source`` to ``target``
    (see the module docstring)."""
    plan = _plan(source, target)
    src_alias, dst_alias = source.__name__, target.__name__
    if src_alias == dst_alias:
        src_alias = f"{source.__name__}_{_NON_WORD.sub('_', source.schema_version)}"
        dst_alias = f"{target.__name__}_{_NON_WORD.sub('_', target.schema_version)}"
    name(src_alias), name(dst_alias)  # refuse anything but identifiers
    fn = _ident(
        f"{source.schema_name}_{source.schema_version}_to_{target.schema_version}"
        if source.schema_name == target.schema_name
        else f"{source.schema_name}_to_{target.schema_name}"
    )

    def imp(cls: type[PackableSample], alias: str) -> cst.SimpleStatementLine:
        return cst.SimpleStatementLine(
            [
                cst.ImportFrom(
                    module=dotted(cls.__module__),  # type: ignore[arg-type]
                    names=[
                        cst.ImportAlias(
                            name(cls.__name__),
                            asname=None
                            if alias == cls.__name__
                            else cst.AsName(name(alias)),
                        )
                    ],
                )
            ]
        )

    def todo(spec: FieldSpec, side: type[PackableSample]) -> cst.BaseExpression:
        return call(
            "TODO",
            literal(
                f"{spec.name}: {_type_text(spec)} (no field {spec.wire!r} of this "
                f"type in {_label(side)})"
            ),
        )

    get_args = [
        cst.Arg(dotted(f"source.{s}"), keyword=name(t)) for s, t in plan.mapped
    ] + [cst.Arg(todo(spec, source), keyword=name(spec.name)) for spec in plan.todo]
    put_args = [cst.Arg(name("source"))] + [
        cst.Arg(dotted(f"view.{t}"), keyword=name(s)) for s, t in plan.mapped
    ]
    todo_names = ", ".join(s.name for s in plan.todo) or "none"
    module_doc = (
        f"Lens {_label(source)} → {_label(target)}: a starter written by "
        "`atdata-gen new-lens`.\n\n"
        f"Mapped: {', '.join(t for _, t in plan.mapped) or 'none'}. "
        f"To write (each TODO is a type error until done): {todo_names}.\n"
        "Check the laws once finished: "
        "atdata_runtime.lenses.check_lens_laws(<lens>).\n\n"
        "Imported, the lens registers itself. Published as a lens record (atdata-gen "
        "publish lens), generated stubs bind to it only where its top-level package "
        "is on the lens allowlist ([tool.atdata-gen] lens-packages) and is not "
        "found in the working or the script's directory: keep it in an installed "
        "package (src/ layout, or pip install)."
    )
    text = "\n".join(
        [
            cst.Module(
                [cst.SimpleStatementLine([cst.Expr(docstring_literal(module_doc))])]
            ).code,
            "from __future__ import annotations",
            "",
            "import dataclasses",
            "",
            "from atdata_runtime.lenses import lens",
            cst.Module([imp(source, src_alias), imp(target, dst_alias)]).code,
            "",
            "class TODO:",
            (
                '    """A value still to write: no field type, so mypy flags each '
                'use; running an unfinished lens raises."""'
            ),
            "",
            "    def __init__(self, what: str) -> None:",
            '        raise NotImplementedError(f"lens not finished: {what}")',
            "",
            "",
            "@lens",
            f"def {name(fn).value}(source: {src_alias}) -> {dst_alias}:",
            "    "
            + cst.Module([]).code_for_node(
                docstring_literal(f"View {_label(source)} as {_label(target)}.")
            ),
            "    return "
            + cst.Module([]).code_for_node(call(dst_alias).with_changes(args=get_args)),
            "",
            "",
            f"@{fn}.putter",
            f"def {fn}_put(view: {dst_alias}, source: {src_alias}) -> {src_alias}:",
            "    "
            + cst.Module([]).code_for_node(
                docstring_literal(
                    f"Write a changed {_label(target)} view back into its source; "
                    "fields the view lacks keep their source values."
                )
            ),
            "    return "
            + cst.Module([]).code_for_node(
                call("dataclasses.replace").with_changes(args=put_args)
            ),
            "",
        ]
    )
    cst.parse_module(text)  # always valid Python
    return format_sources({"lens.py": text})["lens.py"]
