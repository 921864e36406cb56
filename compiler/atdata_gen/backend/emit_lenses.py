"""Stage 6 for lenses: :class:`~atdata_gen.ir.link.LinkedLens` → a typed stub module.

One module per lens record under ``lenses/``::

    Source: TypeAlias = <generated class of the source schema>
    Target: TypeAlias = <generated class of the target schema>
    GETTER_CODE / PUTTER_CODE = CodeReference(repository=…, commit=…, path=…)
    binding = RecordLens(Source, Target, GETTER_CODE, PUTTER_CODE, name=…, record=…)

    def get(source: Source) -> Target: ...       # → binding.get
    def put(view: Target, source: Source) -> Source: ...   # → binding.put
    lens: Lens[Source, Target] = binding.lens()

The docstrings carry the code references and the version ranges. The stub never
contains the lens's code: :class:`atdata_runtime.lenses.records.RecordLens` binds to an
implementation installed in the user's environment whose top-level package is on the
lens allowlist (``[tool.atdata-gen] lens-packages``, read by the runtime at bind
time; the stub's docstring names the packages to allowlist), signature checked, or
raises ``NotImplementedError`` naming the repository, commit and path. The stub
carries no allowlist of its own: the user's configuration decides, so a build stays
deterministic from the sources alone. Every string from
the record enters the tree as a ``repr`` literal or an escaped docstring; every
name is a checked identifier (:mod:`atdata_gen.backend.emit`).
"""

from __future__ import annotations

import libcst as cst
from atdata_runtime.lenses.records import lens_package_problem

from .. import __version__
from ..ir.link import LinkedLens, LinkedModel
from ..ir.model import CodeRef, LensRecord, SampleSchema
from .emit import (
    _BLANK,
    _wrap,
    ann_assign,
    call,
    doc_stmt,
    dotted,
    from_import,
    import_as,
    literal,
    name,
    stmt,
    sub,
)
from .manifest import GENERATED_MARKER
from .printer import print_module

__all__ = ["emit_lenses"]


def _schema_label(s: SampleSchema) -> str:
    where = s.uri or s.origin.path
    return f"``{s.name}`` {s.version} ({where})"


def _code_doc(role: str, ref: CodeRef) -> str:
    text = f"{role}: ``{ref.path}`` in {ref.repository} at commit ``{ref.commit}``"
    if ref.branch:
        text += f" (branch ``{ref.branch}``)"
    if ref.language:
        text += f", language {ref.language}"
    return text + "."


def _allow_doc(rec: LensRecord) -> str:
    """How to allowlist the record's implementation packages (names that could
    never be allowlisted are left out: the binding refuses them anyway). The same
    on every Python version: which names are the standard library's is left to the
    binding, which refuses them at run time."""
    tops = []
    for ref in (rec.getter, rec.putter):
        top = ref.path.partition(":")[0].split(".")[0]
        if lens_package_problem(top, stdlib=False) is None and top not in tops:
            tops.append(top)
    how = (
        "``[tool.atdata-gen] lens-packages``, ``ATDATA_LENS_PACKAGES`` or "
        "``atdata_runtime.lenses.allow_lens_packages``"
    )
    if not tops:
        return (
            "The record names no package that may be allowlisted: binding raises "
            "``LensBindRefused`` (``LENS_BIND_REFUSED``)."
        )
    names = ", ".join(f"``{t}``" for t in tops)
    return (
        f"Allowlist {names} (if you trust the repository) with {how}; the "
        "standard library, the working and the script's directory are never bound, "
        "and a distribution installed from another commit is refused "
        "(``LENS_COMMIT_MISMATCH``)."
    )


def _ranges_doc(rec: LensRecord) -> str:
    return (
        f"Source versions: ``{rec.source_range or 'any'}``; "
        f"target versions: ``{rec.target_range or 'any'}``."
    )


def _code_ref(ref: CodeRef) -> cst.Call:
    kwargs: dict[str, cst.BaseExpression] = {
        "repository": literal(ref.repository),
        "commit": literal(ref.commit),
        "path": literal(ref.path),
    }
    if ref.branch is not None:
        kwargs["branch"] = literal(ref.branch)
    if ref.language is not None:
        kwargs["language"] = literal(ref.language)
    return call("_lensref.CodeReference", **kwargs)


def _param(ident: str, ann: str) -> cst.Param:
    return cst.Param(name(ident), cst.Annotation(dotted(ann)))


def _function(
    fn: str, params: list[cst.Param], returns: str, doc: str, body: cst.BaseExpression
) -> cst.FunctionDef:
    return cst.FunctionDef(
        name=name(fn),
        params=cst.Parameters(params),
        returns=cst.Annotation(dotted(returns)),
        body=cst.IndentedBlock([doc_stmt(doc, "    "), stmt(cst.Return(body))]),
        leading_lines=[_BLANK, _BLANK],
    )


def _sample_import(
    model: LinkedModel, lens: LinkedLens, schema: SampleSchema, alias: str
) -> cst.SimpleStatementLine:
    path = model.names.samples[(schema.name, schema.version)][0]
    assert len(path) == 2, path  # samples/<module> (ir.link.link_samples)
    return stmt(
        cst.ImportFrom(
            module=name(path[0]),
            names=[cst.ImportAlias(name(path[-1]), asname=cst.AsName(name(alias)))],
            relative=[cst.Dot()] * len(lens.module),
        )
    )


def _module(model: LinkedModel, lens: LinkedLens, rel: str) -> str:
    rec, src, dst = lens.record, lens.source, lens.target
    src_cls = model.names.samples[(src.name, src.version)][1]
    dst_cls = model.names.samples[(dst.name, dst.version)][1]
    record = rec.uri or rel
    title = (
        f"Lens {rec.name!r}: ``{src.name}`` {src.version} → ``{dst.name}`` "
        f"{dst.version}."
    )
    provenance = f"Record: ``{rec.uri}`` (CID ``{rec.cid}``).\n\n" if rec.uri else ""
    description = _wrap(rec.description) + "\n\n" if rec.description else ""
    header = (
        f"{title}\n\n{description}{provenance}"
        f"{_code_doc('Getter', rec.getter)}\n{_code_doc('Putter', rec.putter)}\n"
        f"{_ranges_doc(rec)}\n\n"
        "The code is never part of the record: ``get``/``put`` bind to the "
        "implementation when its top-level package is on the lens allowlist and it "
        "is installed here (signature checked), else raise "
        "``NotImplementedError`` saying what to install.\n\n"
        f"{_allow_doc(rec)}\n\n"
        f"{GENERATED_MARKER} {__version__} from ``{rel}`` "
        f"(sha256 {rec.origin.sha256[:16]}).\n"
        "Do not edit: ``atdata-gen build`` overwrites this file."
    )
    body: list[cst.BaseStatement] = [doc_stmt(header)]
    body.append(from_import("__future__", "annotations", blank=1))
    body.append(import_as("typing", "_t", blank=1))
    body.append(from_import("atdata_runtime", "lenses", "_lens", blank=1))
    body.append(from_import("atdata_runtime.lenses", "records", "_lensref"))
    first = _sample_import(model, lens, src, "_source")
    body.append(first.with_changes(leading_lines=[_BLANK]))
    body.append(_sample_import(model, lens, dst, "_target"))
    exports = ["GETTER_CODE", "PUTTER_CODE", "Source", "Target", "binding", "get"]
    exports += ["lens", "put"]
    body.append(
        ann_assign(
            "__all__",
            sub("list", dotted("str")),
            cst.List([cst.Element(literal(e)) for e in exports]),
            blank=1,
        )
    )
    for alias, module, cls, schema, what in (
        ("Source", "_source", src_cls, src, "source"),
        ("Target", "_target", dst_cls, dst, "target"),
    ):
        body.append(
            ann_assign(alias, dotted("_t.TypeAlias"), dotted(f"{module}.{cls}"), 1)
        )
        body.append(doc_stmt(f"The {what} sample class: {_schema_label(schema)}."))
    for const, role, ref in (
        ("GETTER_CODE", "Getter", rec.getter),
        ("PUTTER_CODE", "Putter", rec.putter),
    ):
        body.append(
            ann_assign(
                const,
                sub("_t.Final", dotted("_lensref.CodeReference")),
                _code_ref(ref),
                1,
            )
        )
        body.append(doc_stmt(_code_doc(role, ref)))
    body.append(
        ann_assign(
            "binding",
            sub(
                "_t.Final",
                sub("_lensref.RecordLens", dotted("Source"), dotted("Target")),
            ),
            call(
                "_lensref.RecordLens",
                dotted("Source"),
                dotted("Target"),
                dotted("GETTER_CODE"),
                dotted("PUTTER_CODE"),
                name=literal(rec.name),
                record=literal(record),
            ),
            1,
        )
    )
    body.append(
        doc_stmt(
            "Binds ``get``/``put`` to the installed implementation on first use; "
            "``binding.where`` says where it came from."
        )
    )
    raises = (
        "Raises ``NotImplementedError`` when the implementation is not installed "
        "here, ``atdata_runtime.lenses.records.LensBindingError`` when it does not fit "
        "this signature or may not be bound (``LENS_BIND_REFUSED``: off the lens "
        "allowlist, or refused by name or place)."
    )
    body.append(
        _function(
            "get",
            [_param("source", "Source")],
            "Target",
            f"The view of ``source`` as {_schema_label(dst)}.\n\n"
            f"{_code_doc('Getter', rec.getter)}\n\n{raises}",
            call("binding.get", dotted("source")),
        )
    )
    body.append(
        _function(
            "put",
            [_param("view", "Target"), _param("source", "Source")],
            "Source",
            f"``source`` updated with ``view`` ({_schema_label(src)}).\n\n"
            f"{_code_doc('Putter', rec.putter)}\n\n{raises}",
            call("binding.put", dotted("view"), dotted("source")),
        )
    )
    body.append(
        ann_assign(
            "lens",
            sub("_t.Final", sub("_lens.Lens", dotted("Source"), dotted("Target"))),
            call("binding.lens"),
            2,
        )
    )
    body.append(
        doc_stmt(
            "The lens as a ``Lens`` (register it: "
            "``atdata_runtime.lenses.lenses.register(lens)``). It claims no law until "
            "``check_lens_laws`` has checked it."
        )
    )
    return print_module(cst.Module(body=body))  # type: ignore[arg-type]


def emit_lenses(model: LinkedModel, rels: dict[tuple[str, ...], str]) -> dict[str, str]:
    """``{relative path: source}`` of the lens stub modules of ``model`` (before
    formatting). ``rels`` maps a stub's module path → the source path it cites."""
    return {
        "/".join(lens.module) + ".py": _module(
            model, lens, rels.get(lens.module, lens.record.origin.path)
        )
        for lens in model.lenses
    }
