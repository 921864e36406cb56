"""The compiler pipeline: an explicit, ordered list of stages.

``build()`` runs load → parse → lower → link → lint → emit → format and returns a
:class:`BuildResult`; writing (or checking) is left to the caller
(:mod:`atdata_gen.backend.write`). All diagnostics from every stage are collected;
emission only runs when no stage reported an error.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .backend.emit import emit_package
from .backend.format import format_sources
from .checks.lint import lint
from .diagnostics import Reporter
from .frontend.lexicon import parse_document
from .ir.link import LinkedModel, link
from .ir.lower import lower_document
from .ir.model import Schema
from .sources import SourceDoc, discover, load_paths

__all__ = ["BuildOptions", "BuildResult", "STAGES", "build", "compile_sources"]

STAGES = ("load", "parse", "lower", "link", "lint", "emit", "format", "write")
"""The stage names, in order (for documentation and ``--help``)."""


@dataclass(frozen=True)
class BuildOptions:
    """What to compile: ``sources`` (files/dirs), ``externals`` (resolved, not
    emitted), ``include`` / ``exclude`` globs, the ``package`` name, and whether to
    run the formatter."""

    sources: Sequence[str | Path]
    package: str = "atdata_lexicons"
    externals: Sequence[str | Path] = ()
    include: Sequence[str] = ()
    exclude: Sequence[str] = ()
    format: bool = True


@dataclass
class BuildResult:
    """Diagnostics, the linked model (``None`` if loading failed), and the emitted
    files (``None`` if any stage reported an error)."""

    reporter: Reporter
    model: LinkedModel | None = None
    files: dict[str, str] | None = None
    docs: list[SourceDoc] = field(default_factory=list)


def _front(docs: list[SourceDoc], reporter: Reporter) -> list[Schema]:
    out = []
    for doc in docs:
        parsed = parse_document(doc, reporter)
        if parsed is not None:
            out.append(lower_document(parsed, reporter))
    return out


def compile_sources(options: BuildOptions, reporter: Reporter | None = None
                    ) -> BuildResult:
    """Run load → lint; no emission."""
    reporter = Reporter() if reporter is None else reporter
    docs = load_paths(discover(options.sources, reporter, include=options.include,
                               exclude=options.exclude), reporter)
    ext_docs = load_paths(discover(options.externals, reporter), reporter)
    schemas = _front(docs, reporter)
    externals = _front(ext_docs, reporter)
    model = link(schemas, externals, reporter)
    lint(model, reporter)
    return BuildResult(reporter, model, None, docs)


def build(options: BuildOptions, reporter: Reporter | None = None) -> BuildResult:
    """Run the whole pipeline up to (not including) writing."""
    result = compile_sources(options, reporter)
    if result.reporter.has_errors or result.model is None:
        return result
    rels = {s.nsid: _rel_of(s, result.docs) for s in result.model.schemas}
    files = emit_package(result.model, options.package, rels)
    result.files = format_sources(files) if options.format else files
    return result


def _rel_of(schema: Schema, docs: list[SourceDoc]) -> str:
    for d in docs:
        if d.path == schema.origin.path:
            return d.rel
    return Path(schema.origin.path).name
