"""The compiler pipeline: an explicit, ordered list of stages.

``build()`` runs load → parse → lower → link → lint → emit → format and returns a
:class:`BuildResult`; writing (or checking) is left to the caller
(:mod:`atdata_gen.backend.write`). All diagnostics from every stage are collected;
emission only runs when no stage reported an error. An ``OSError`` writing the
formatter's scratch files (a full disk, a size limit) is raised as
:class:`~atdata_gen.backend.write.WriteError` (rule ``OUT_WRITE``); nothing has been
written to the output then.
"""

from __future__ import annotations

import contextlib
import gc
import itertools
import os
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .checks.lint import lint
from .diagnostics import Reporter
from .frontend.lens_record import is_lens_record, parse_lens_record
from .frontend.lexicon import parse_document
from .frontend.schema_record import is_schema_record, parse_schema_record
from .ir.link import LinkedModel, link, link_lenses, link_samples
from .ir.lower import lower_document
from .ir.model import LensRecord, Origin, SampleSchema, Schema
from .sources import SourceDoc, discover, load_paths, split_external

__all__ = ["STAGES", "BuildOptions", "BuildResult", "build", "compile_sources"]

STAGES = ("load", "parse", "lower", "link", "lint", "emit", "format", "write")
"""The stage names, in order (for documentation and ``--help``)."""


@dataclass(frozen=True)
class BuildOptions:
    """What to compile: ``sources`` (files/dirs), ``externals`` (resolved, not
    emitted), ``include`` / ``exclude`` globs, the ``package`` name, and whether to
    run the formatter; ``workdir`` is where scratch files go (best: beside the
    output), ``jobs`` how many processes emit (default: CPU count)."""

    sources: Sequence[str | Path]
    package: str = "atdata_lexicons"
    externals: Sequence[str | Path] = ()
    include: Sequence[str] = ()
    exclude: Sequence[str] = ()
    format: bool = True
    workdir: Path | None = None
    jobs: int | None = None
    extra_docs: Sequence[SourceDoc] = ()
    """Already-loaded source documents (the records pinned in ``atdata-gen.lock``)."""


@dataclass
class BuildResult:
    """Diagnostics, the linked model (``None`` if loading failed), and the emitted
    files (``None`` if any stage reported an error)."""

    reporter: Reporter
    model: LinkedModel | None = None
    files: dict[str, str] | None = None
    docs: list[SourceDoc] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    """Seconds spent per stage (wall clock)."""


def _front(
    docs: list[SourceDoc],
    reporter: Reporter,
    samples: list[SampleSchema] | None = None,
    lenses: list[LensRecord] | None = None,
) -> list[Schema]:
    """Parse and lower each document: Lexicons into ``Schema``s (returned), schema
    records into ``SampleSchema``s (appended to ``samples``, when given), lens
    records into ``LensRecord``s (appended to ``lenses``, when given)."""
    out = []
    for doc in docs:
        if lenses is not None and is_lens_record(doc.value):
            lens = parse_lens_record(doc, reporter)
            if lens is not None:
                lenses.append(lens)
            continue
        if samples is not None and is_schema_record(doc.value):
            sample = parse_schema_record(doc, reporter)
            if sample is not None:
                samples.append(sample)
            continue
        parsed = parse_document(doc, reporter)
        if parsed is not None:
            out.append(lower_document(parsed, reporter))
    return out


@contextlib.contextmanager
def _no_cyclic_gc() -> Iterator[None]:
    """Cyclic garbage collection off for the block (restored after it, if it was
    on). A build allocates hundreds of thousands of tracked objects that all stay
    alive until the end (documents, IR, model), so the collector's passes find
    almost nothing — about 13,000 objects in cycles for the 402 official Lexicons,
    freed by the next collection after the block — but scan the growing heap
    again and again (≈5 % of the front end, more while pickling the model)."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def compile_sources(
    options: BuildOptions, reporter: Reporter | None = None
) -> BuildResult:
    """Run load → lint; no emission."""
    with _no_cyclic_gc():
        return _compile_sources(options, reporter)


def _compile_sources(options: BuildOptions, reporter: Reporter | None) -> BuildResult:
    reporter = Reporter() if reporter is None else reporter
    t = [time.perf_counter()]
    docs = load_paths(
        discover(
            options.sources, reporter, include=options.include, exclude=options.exclude
        ),
        reporter,
    )
    docs = [*docs, *options.extra_docs]
    ext_docs: list[SourceDoc] = []
    ext_packages: dict[str, str] = {}
    for entry in options.externals:
        root, package = split_external(entry)
        docs_here = load_paths(discover([root], reporter), reporter)
        ext_docs += docs_here
        if package is not None:
            for d in docs_here:
                ext_packages[d.path] = package
    t.append(time.perf_counter())
    samples: list[SampleSchema] = []
    lens_records: list[LensRecord] = []
    schemas = _front(docs, reporter, samples, lens_records)
    externals = _front(ext_docs, reporter)
    packages_by_nsid = {
        s.nsid: ext_packages[s.origin.path]
        for s in externals
        if s.origin.path in ext_packages
    }
    t.append(time.perf_counter())
    model = link(schemas, externals, reporter, packages_by_nsid)
    model = link_samples(model, samples, reporter)
    model = link_lenses(model, lens_records, reporter)
    t.append(time.perf_counter())
    lint(model, reporter)
    t.append(time.perf_counter())
    timings = dict(
        zip(
            ("load", "parse+lower", "link", "lint"),
            (b - a for a, b in itertools.pairwise(t)),
            strict=True,
        )
    )
    return BuildResult(reporter, model, None, docs, timings)


_PARALLEL_MIN_FILES = 64
"""Below this many source files, emission runs in-process (forking costs more)."""


def build(options: BuildOptions, reporter: Reporter | None = None) -> BuildResult:
    """Run the whole pipeline up to (not including) writing."""
    with _no_cyclic_gc():
        return _build(options, reporter)


def _build(options: BuildOptions, reporter: Reporter | None) -> BuildResult:
    # The back end is imported here, not at module level: `check` and an
    # up-to-date build never emit (lazy imports, issue 17).
    from .backend.format import format_sources, start_format
    from .backend.package import assemble_package
    from .backend.parallel import EmitPool, take_prestarted

    jobs = options.jobs if options.jobs is not None else (os.cpu_count() or 1)
    pool = take_prestarted(jobs)  # forked by the CLI (`prestart`), if it did
    if pool is None and (
        jobs > 1
        and EmitPool.available()
        and _count_json(options.sources) >= (_PARALLEL_MIN_FILES)
    ):
        pool = EmitPool(jobs)
    try:
        result = compile_sources(options, reporter)
        if result.reporter.has_errors or result.model is None:
            return result
        model = result.model
        rels = {s.nsid: _rel_of(s, result.docs) for s in model.schemas}
        t0 = time.perf_counter()
        fmt = options.format
        if pool is not None:
            # The workers emit their shares and, with `fmt`, run ruff on them.
            pool.submit(model, rels, fmt, options.workdir)
        else:
            from .backend.emit import emit_modules

            codes = emit_modules(model, rels, range(len(model.schemas)))
        extra: dict[str, str] | None = None
        if model.samples:
            from .backend.emit_samples import emit_samples

            sample_rels = {
                (s.name, s.version): _rel_of_origin(s.origin, result.docs)
                for s in model.samples
            }
            extra = emit_samples(model, sample_rels)
            if model.lenses:
                from .backend.emit_lenses import emit_lenses

                lens_rels = {
                    lens.module: _rel_of_origin(lens.record.origin, result.docs)
                    for lens in model.lenses
                }
                extra.update(emit_lenses(model, lens_rels))
        own = None
        try:
            if pool is not None and fmt:
                # What the parent emits (package __init__s, samples, lenses) is
                # formatted by its own ruff run while the workers work.
                modules = {
                    "/".join(model.names.modules[s.nsid]) + ".py" for s in model.schemas
                }
                skeleton = assemble_package(
                    model, options.package, [""] * len(model.schemas), extra
                )
                own = start_format(
                    {
                        k: v
                        for k, v in skeleton.items()
                        if k not in modules or k in (extra or {})
                    },
                    options.workdir,
                )
            if pool is not None:
                codes = pool.collect()
            files = assemble_package(model, options.package, codes, extra)
            t1 = time.perf_counter()
            if own is not None:
                files.update(own.result())  # same keys: the order is kept
                own = None
            elif fmt:
                files = format_sources(files, options.workdir)
            result.files = files
        except OSError as exc:  # the formatter's scratch files: full disk, limits
            from .backend.write import WriteError

            where = exc.filename or options.workdir or _format_scratch()
            doing = "cannot write the formatter's scratch files (before any output)"
            raise WriteError(where, exc, doing) from exc
        finally:
            if own is not None:
                own.close()
        # With workers, "emit" includes their ruff runs (and "format" is the
        # parent's own files).
        result.timings["emit"] = t1 - t0
        result.timings["format"] = time.perf_counter() - t1
        return result
    finally:
        if pool is not None:
            pool.close()


def _format_scratch() -> str:
    """Where :func:`format_sources` puts its scratch tree without a ``workdir``."""
    return "/dev/shm" if os.access("/dev/shm", os.W_OK) else tempfile.gettempdir()


def _count_json(roots: Sequence[str | Path]) -> int:
    n = 0
    for root in roots:
        path = Path(root)
        if path.is_file():
            n += 1
        elif path.is_dir():
            for _ in path.rglob("*.json"):
                n += 1
                if n >= _PARALLEL_MIN_FILES:
                    return n
    return n


def _rel_of_path(path: str, docs: list[SourceDoc]) -> str:
    for d in docs:
        if d.path == path:
            return d.rel
    return Path(path).name


def _rel_of_origin(origin: Origin, docs: list[SourceDoc]) -> str:
    """The path to cite for a record: its document's ``rel`` (for a record pinned
    in the lock, ``atdata-gen.lock#/schemas/i``)."""
    for d in docs:
        if d.path == origin.path and d.sha256 == origin.sha256:
            return d.rel
    return _rel_of_path(origin.path, docs)


def _rel_of(schema: Schema, docs: list[SourceDoc]) -> str:
    return _rel_of_path(schema.origin.path, docs)
