"""``atdata-gen``: the command line. Exit codes: 0 ok · 1 stale (``--check``) or
findings · 2 error (bad input, bad usage, internal failure). No traceback is shown
for a user error.

Heavy modules (libcst, pydantic) are imported only when a build has work to do: an
up-to-date package is recognised from its manifest
(:mod:`atdata_gen.backend.manifest`) without them.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import click

if TYPE_CHECKING:
    from .lock import Lock

from . import __version__
from .checks.report import render_findings, unlabel
from .config import LOCK_NAME, ConfigError, load_config, shown_path
from .diagnostics import (
    Diagnostic,
    Reporter,
    Severity,
    Span,
    github_base,
    redact_urls,
    render,
    safe_text,
)
from .naming import package_name_problem
from .sources import discover, external_problems, split_external

EXIT_OK, EXIT_FINDINGS, EXIT_ERROR = 0, 1, 2

_FORMAT = click.option(
    "--format",
    "fmt",
    type=click.Choice(["text", "json", "github"]),
    default="text",
    show_default=True,
    help="How to print diagnostics.",
)


def _fail(message: str) -> None:
    click.echo(f"error: {safe_text(message)}", err=True)
    sys.exit(EXIT_ERROR)


def _fail_with(diagnostics: Iterable[Diagnostic], fmt: str) -> None:
    """Print located errors in ``fmt`` and exit 2."""
    items = list(diagnostics)
    if fmt == "text":
        click.echo(render(items, "text"), err=True)
    else:
        click.echo(render(items, fmt, base=github_base() if fmt == "github" else None))
    sys.exit(EXIT_ERROR)


class _Commands(click.Group):
    """The command group; the network commands (``pull``, ``publish``, ``search``)
    are imported from :mod:`atdata_gen.remote` only when one is looked up (a build
    never needs them)."""

    LAZY: ClassVar[dict[str, str]] = {
        "pull": "pull_cmd",
        "publish": "publish_group",
        "search": "search_cmd",
    }

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.LAZY})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        found = super().get_command(ctx, cmd_name)
        if found is None and cmd_name in self.LAZY:
            from . import remote

            found = getattr(remote, self.LAZY[cmd_name])
            assert isinstance(found, click.Command)
            self.add_command(found, cmd_name)
        return found


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="atdata-gen")
def main() -> None:
    """Compile Lexicons (and atdata schema records) into typed Python packages."""


@main.command("build")
@click.argument("sources", nargs=-1, type=click.Path(path_type=Path))
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    help="Directory that receives the package directory NAME/.",
)
@click.option("--package", help="Import name of the generated package.")
@click.option(
    "--external",
    "externals",
    multiple=True,
    metavar="DIR[=PACKAGE]",
    help="Lexicons in DIR are referenced but not emitted (repeatable). With "
    "=PACKAGE, DIR was compiled into the importable PACKAGE and refs use its "
    "classes; otherwise they are typed as plain JSON objects.",
)
@click.option("--include", multiple=True, help="Glob of source files to take.")
@click.option("--exclude", multiple=True, help="Glob of source files to skip.")
@click.option(
    "--check", is_flag=True, help="Write nothing; exit 1 when the output is stale."
)
@click.option("--quiet", "-q", is_flag=True, help="Print only errors and warnings.")
@click.option(
    "--jobs",
    "-j",
    type=click.IntRange(min=1),
    default=None,
    help="Worker processes for emission (default: CPU count).",
)
@click.option(
    "--lock",
    "lock_path",
    type=click.Path(path_type=Path),
    default=None,
    help="Lock file of pinned remote schemas (default: atdata-gen.lock beside "
    "pyproject.toml).",
)
@click.option(
    "--frozen",
    is_flag=True,
    help="Fail when the lock is missing or does not pin every schema listed in "
    "[tool.atdata-gen] schemas (CI: never fetch, never guess).",
)
@click.option(
    "--fail-on",
    type=click.Choice(["error", "warning", "info"]),
    default=None,
    help="Exit 1 when a diagnostic at or above this severity is reported (also "
    "when replayed by an up-to-date build). Errors always exit 2.",
)
@_FORMAT
def build_cmd(
    sources: tuple[Path, ...],
    out: Path | None,
    package: str | None,
    externals: tuple[str, ...],
    include: tuple[str, ...],
    exclude: tuple[str, ...],
    check: bool,
    quiet: bool,
    jobs: int | None,
    lock_path: Path | None,
    frozen: bool,
    fail_on: str | None,
    fmt: str,
) -> None:
    """Compile SOURCE files and directories into OUT/PACKAGE.

    With no SOURCE, reads [tool.atdata-gen] from the nearest pyproject.toml (this
    directory or a parent). Schema records pinned in atdata-gen.lock (``atdata-gen
    pull``) are compiled too, offline. An up-to-date build replays the warnings of
    the build that wrote the output. With --format json, prints one JSON object:
    status (up-to-date, written, stale, error), the package path, the changed files
    and every diagnostic.
    """
    from .backend.manifest import (
        MANIFEST_NAME,
        fingerprint,
        is_fresh,
        manifest_text,
        replay,
    )

    report = _BuildReport(fmt, quiet, fail_on)
    wanted: list[str] = []
    if not sources:
        try:
            cfg = load_config(Path.cwd())
        except ConfigError as exc:
            report.finish("error", EXIT_ERROR, exc.diagnostics)
            return
        sources = tuple(Path(shown_path(cfg.root / s)) for s in cfg.sources)
        out = out or Path(shown_path(cfg.root / cfg.out))
        package = package or cfg.package
        externals = externals or tuple(shown_path(cfg.root / e) for e in cfg.externals)
        include = include or tuple(cfg.include)
        exclude = exclude or tuple(cfg.exclude)
        wanted = [*cfg.schemas, *cfg.lenses]
        lock_path = lock_path or cfg.root / LOCK_NAME
    if out is None:
        raise click.UsageError("--out is required when SOURCE is given")
    package = package or "atdata_lexicons"
    problem = package_name_problem(package)
    if problem:
        report.finish(
            "error",
            EXIT_ERROR,
            [
                Diagnostic(
                    Span(str(out)),
                    "PACKAGE_NAME",
                    Severity.ERROR,
                    f"package {package!r}: {problem}",
                )
            ],
        )
    root = out.joinpath(*package.split("."))
    report.root = root
    overlap = _source_overlap(root, sources)
    if overlap is not None:
        report.finish("error", EXIT_ERROR, [overlap])
    from .backend.write import OutputPathError, package_dir

    # Before the fast path: an up-to-date answer must not skip the writer's checks.
    try:
        package_dir(root, out)
    except OutputPathError as exc:
        report.finish("error", EXIT_ERROR, [_out_diagnostic(exc, out)])
    live = external_problems(externals, out)
    if any(d.severity is Severity.ERROR for d in live):
        report.finish("error", EXIT_ERROR, live)
    lock, lock_diags, lock_exit = _load_lock(lock_path, wanted, frozen)
    if lock_exit:
        status = "error" if lock_exit == EXIT_ERROR else "stale"
        report.finish(status, lock_exit, lock_diags)

    # Fast path: nothing changed since the manifest was written.
    probe = Reporter()
    found = discover(sources, probe, include=include, exclude=exclude)
    split = [split_external(e) for e in externals]
    found_ext = discover([root_ for root_, _ in split], probe)
    print_ = None
    if not probe.has_errors:
        try:
            print_ = fingerprint(
                found,
                found_ext,
                package,
                [
                    *include,
                    "|",
                    *exclude,
                    "|",
                    # relative to the package: the same from any directory
                    *(
                        f"{Path(os.path.relpath(r, root)).as_posix()}={p}"
                        for r, p in split
                    ),
                    "|",
                    lock.doc.sha256 if lock and lock.doc else "",
                ],
            )
        except OSError:
            print_ = None
    if print_ is not None and is_fresh(root, print_):
        if _left_by_a_kill(root):
            from .backend.write import tidy

            tidy(root, out)
        report.finish("up-to-date", EXIT_OK, [*replay(root), *live])

    from .backend.format import FormatError
    from .backend.write import (
        OutputClashError,
        OutputLockedError,
        WriteError,
        write_package,
    )
    from .pipeline import BuildOptions, build

    options = BuildOptions(
        sources,
        package,
        externals,
        include,
        exclude,
        jobs=jobs,
        extra_docs=lock.source_docs() if lock else (),
    )
    try:
        result = build(options)
    except FormatError as exc:
        report.fail(str(exc))
        return
    except WriteError as exc:  # the formatter's scratch files (a full disk)
        report.finish("error", EXIT_ERROR, [_write_diagnostic(exc, out)])
        return
    diagnostics = [*result.reporter, *live]
    if result.files is None:
        report.finish("error", EXIT_ERROR, diagnostics)
        return
    files = dict(result.files)
    kept = [d for d in result.reporter if d.severity < Severity.ERROR]
    # Always written: its `files` is what later builds may delete (ownership).
    files[MANIFEST_NAME] = manifest_text(print_ or "", files, kept, root)
    try:
        plan = write_package(root, files, out, check=check)
    except OutputClashError as exc:
        clashes = [
            Diagnostic(Span(str(path)), "OUT_CLASH", Severity.ERROR, why)
            for path, why in exc.clashes
        ]
        report.finish("error", EXIT_ERROR, [*diagnostics, *clashes])
        return
    except (OutputPathError, OutputLockedError, OSError) as exc:
        report.finish("error", EXIT_ERROR, [*diagnostics, _write_diagnostic(exc, out)])
        return
    report.plan = plan
    diagnostics += [
        Diagnostic(
            Span(str(root / MANIFEST_NAME)),
            "OUT_MANIFEST",
            Severity.WARNING,
            f"{note} (the previous manifest says which files atdata-gen wrote: "
            "without it nothing is deleted; this build writes a new one)",
        )
        for note in plan.notes
    ]
    if check:
        if plan.stale:
            report.finish("stale", EXIT_FINDINGS, diagnostics)
        report.finish("up-to-date", EXIT_OK, diagnostics)
    if os.environ.get("ATDATA_GEN_TIMINGS"):
        click.echo(
            " ".join(f"{k}={v:.3f}s" for k, v in result.timings.items()), err=True
        )
    report.finish("written" if plan.stale else "up-to-date", EXIT_OK, diagnostics)


def _left_by_a_kill(root: Path) -> bool:
    """Whether a killed build left its lock or scratch trees
    (``.PACKAGE.atdata-gen.lock``, ``.PACKAGE.atdata-gen-*``) beside the package (one
    directory listing; the writer is imported only then)."""
    real = root.resolve()
    try:
        names = os.listdir(real.parent)
    except OSError:
        return False
    return any(n.startswith(f".{real.name}.atdata-gen") for n in names)


def _source_overlap(root: Path, sources: Iterable[Path]) -> Diagnostic | None:
    """``OUT_OVERLAPS_SOURCE`` when the package directory ``root`` is a source
    directory or contains one. (A package *inside* a source directory is fine:
    discovery skips directories holding a generated manifest.)"""
    package = root.resolve()
    for source in sources:
        src = Path(source).resolve()
        if src == package or src.is_relative_to(package):
            return Diagnostic(
                Span(str(root)),
                "OUT_OVERLAPS_SOURCE",
                Severity.ERROR,
                f"the package directory is, or holds, the source {source}; the "
                "generator owns its package directory (stale files are deleted), so "
                "choose an --out or package outside your sources",
            )
    return None


def _out_diagnostic(exc: Any, out: Path) -> Diagnostic:
    """``OUT_NOT_DIRECTORY`` for an :class:`~atdata_gen.backend.write.OutputPathError`."""
    what = "--out" if Path(exc.path) == out else "the package path OUT/PACKAGE"
    reason = getattr(exc, "reason", "") or "is not a directory"
    return Diagnostic(
        Span(str(exc.path)),
        "OUT_NOT_DIRECTORY",
        Severity.ERROR,
        f"{what} {reason}; atdata-gen writes the package directory there and never "
        "renames or deletes your file (move it, or choose another --out or --package)",
    )


def _write_diagnostic(exc: BaseException, out: Path) -> Diagnostic:
    """The located error for a failed write stage: ``OUT_NOT_DIRECTORY``,
    ``OUT_LOCKED`` (another build held the lock too long) or ``OUT_WRITE`` (an
    ``OSError``: the path and the errno, e.g. ``ENOSPC``, ``EROFS``)."""
    from .backend.write import OutputLockedError, OutputPathError, WriteError

    if isinstance(exc, OutputPathError):
        return _out_diagnostic(exc, out)
    if isinstance(exc, OutputLockedError):
        return Diagnostic(Span(str(exc.path)), "OUT_LOCKED", Severity.ERROR, exc.reason)
    if not isinstance(exc, WriteError):
        assert isinstance(exc, OSError)
        exc = WriteError(exc.filename or out, exc)
    assert isinstance(exc, WriteError)
    return Diagnostic(
        Span(str(exc.path)),
        "OUT_WRITE",
        Severity.ERROR,
        f"{exc.doing}: {exc.reason}; {exc.outcome}",
    )


class _BuildReport:
    """How ``build`` ends: prints the diagnostics and the outcome in ``fmt`` and
    exits. ``text``: diagnostics on stderr, the summary on stdout; ``json``: exactly
    one JSON object on stdout; ``github``: workflow commands with repository-relative
    paths."""

    def __init__(self, fmt: str, quiet: bool, fail_on: str | None) -> None:
        self.fmt, self.quiet = fmt, quiet
        self.fail_on = Severity[fail_on.upper()] if fail_on else None
        self.root: Path | None = None
        self.plan: Any = None

    def fail(self, message: str) -> None:
        """An error without a location (bad option value): exit 2."""
        if self.fmt == "json":
            self._json("error", EXIT_ERROR, [], redact_urls(message))
            sys.exit(EXIT_ERROR)
        _fail(message)

    def _json(
        self, status: str, code: int, diagnostics: list[Diagnostic], error: str = ""
    ) -> None:
        import json

        plan = self.plan
        doc: dict[str, Any] = {
            "status": status,
            "exit_code": code,
            "package": str(self.root) if self.root else None,
            "added": list(plan.added) if plan else [],
            "modified": list(plan.modified) if plan else [],
            "deleted": list(plan.deleted) if plan else [],
            "kept": [rel for rel, _ in plan.kept] if plan else [],
            "diagnostics": [d.as_json() for d in sorted(diagnostics)],
        }
        if error:
            doc["error"] = error
        click.echo(json.dumps(doc, indent=2, ensure_ascii=False))

    def finish(self, status: str, code: int, diagnostics: Iterable[Diagnostic]) -> None:
        diagnostics = sorted(set(diagnostics))
        failing = [
            d
            for d in diagnostics
            if self.fail_on is not None and d.severity >= self.fail_on
        ]
        if code == EXIT_OK and failing:
            code = EXIT_FINDINGS
        if self.fmt == "json":
            self._json(status, code, diagnostics)
            sys.exit(code)
        if self.fmt == "github":
            text = render(diagnostics, "github", base=github_base())
            if text:
                click.echo(text)
            sys.exit(code)
        shown = [
            d for d in diagnostics if not self.quiet or d.severity >= Severity.WARNING
        ]
        if shown:
            click.echo(render(shown, "text"), err=True)
        errors = sum(d.severity is Severity.ERROR for d in diagnostics)
        plan = self.plan
        if status == "error":
            click.echo(f"error: {errors} error(s); nothing written", err=True)
        elif status == "stale":
            if plan is not None:
                click.echo(plan.summary(), err=True)
                click.echo(
                    "error: generated code is stale; run `atdata-gen build`", err=True
                )
        elif not self.quiet:
            if status == "written" and plan is not None:
                click.echo(plan.summary())
            elif plan is not None:
                click.echo(f"{self.root}: up to date ({len(plan.files)} files)")
            else:
                click.echo(f"{self.root}: up to date")
        if failing and status != "error":
            assert self.fail_on is not None
            click.echo(
                f"error: {len(failing)} diagnostic(s) at or above --fail-on "
                f"{self.fail_on.label}",
                err=True,
            )
        sys.exit(code)


def _load_lock(
    path: Path | None, wanted: list[str], frozen: bool
) -> tuple[Lock | None, list[Diagnostic], int]:
    """Read and verify the lock; with ``frozen``, require it to pin ``wanted``.
    Returns the lock, its diagnostics and the exit code to stop with (2 on a broken
    lock, 1 on a missing or stale one, 0 to go on)."""
    if path is None:
        if frozen:
            return (
                None,
                [
                    Diagnostic(
                        Span("--lock"),
                        "LOCK_MISSING",
                        Severity.ERROR,
                        "--frozen needs a lock file: give --lock or use "
                        "[tool.atdata-gen]",
                    )
                ],
                EXIT_ERROR,
            )
        return None, [], EXIT_OK
    lock = None
    if path.exists():  # the lock module (and the CID code) only when there is one
        from .lock import read_lock

        reporter = Reporter()
        lock = read_lock(path, reporter)
        if reporter.has_errors:
            return None, list(reporter), EXIT_ERROR
    if frozen:
        where = Span(shown_path(path))
        if lock is None and wanted:
            return (
                None,
                [
                    Diagnostic(
                        where,
                        "LOCK_MISSING",
                        Severity.ERROR,
                        f"no lock file, but [tool.atdata-gen] schemas lists "
                        f"{len(wanted)} schema(s); run `atdata-gen pull`",
                    )
                ],
                EXIT_FINDINGS,
            )
        missing = [u for u in wanted if lock is None or lock.find(u) is None]
        if missing:
            return (
                lock,
                [
                    Diagnostic(
                        where,
                        "LOCK_STALE",
                        Severity.ERROR,
                        f"{uri} is not pinned; run `atdata-gen pull`",
                    )
                    for uri in missing
                ],
                EXIT_FINDINGS,
            )
    return lock, [], EXIT_OK


@main.command("check")
@click.argument("sources", nargs=-1, type=click.Path(path_type=Path))
@click.option(
    "--against",
    "against",
    multiple=True,
    help="The previous version: files/directories and/or git:REV (repeatable; "
    "together they form the previous side). Default: git:HEAD.",
)
@click.option(
    "--external",
    "externals",
    multiple=True,
    type=click.Path(path_type=Path),
    help="Lexicons referenced but not compared (repeatable); a SOURCE shadows the "
    "external Lexicon with the same NSID.",
)
@click.option(
    "--mode",
    type=click.Choice(["backward", "forward", "full"]),
    default=None,
    help="BACKWARD: new accepts old data; FORWARD: old readers accept new "
    "data; FULL: both (the Lexicon spec's rule; default, or check.mode).",
)
@click.option(
    "--transitive",
    is_flag=True,
    help="Check against every earlier version: each git revision that changed "
    "the sources, and every earlier version of each sample schema.",
)
@click.option(
    "--fail-on",
    type=click.Choice(["error", "warning", "info"]),
    default=None,
    help="Lowest severity that exits 1 (default: error, or check.fail_on).",
)
@_FORMAT
def check_cmd(
    sources: tuple[Path, ...],
    against: tuple[str, ...],
    externals: tuple[Path, ...],
    mode: str | None,
    transitive: bool,
    fail_on: str | None,
    fmt: str,
) -> None:
    """Compare SOURCE schemas (Lexicons and schema records) with a previous
    version; report every change with its rule ID; exit 1 when one breaks
    compatibility in --mode (0 clean, 2 error).

    With no SOURCE, compares the [tool.atdata-gen] sources with git:HEAD and reads
    [tool.atdata-gen.check] (mode, use, except, ignore, ignore_only, fail_on).
    A side whose files were compiled before by the same atdata-gen is read from
    the IR cache ($XDG_CACHE_HOME/atdata-gen/ir; ATDATA_GEN_CACHE=0 turns it off).
    """
    from dataclasses import replace

    from .checks.policy import MODES, CheckPolicy, PolicyError
    from .checks.runner import CheckError, run_check

    table: dict[str, object] = {}
    file: Any = "pyproject.toml"
    try:
        cfg = load_config(Path.cwd())
        table, file = cfg.check, cfg.file
        if not sources:
            sources = tuple(Path(shown_path(cfg.root / s)) for s in cfg.sources)
            externals = externals or tuple(
                Path(shown_path(cfg.root / e)) for e in cfg.externals
            )
    except ConfigError as exc:
        # With SOURCE arguments a missing configuration is fine; a broken one
        # (an unknown key, a wrong value) is an error either way.
        if not sources or not exc.missing:
            _fail_with(exc.diagnostics, fmt)
    try:
        policy = CheckPolicy.from_table(table, file)
    except PolicyError as exc:
        _fail(str(exc))
        return
    if mode is not None:
        policy = replace(policy, mode=MODES[mode])
    if fail_on is not None:
        policy = replace(policy, fail_on=Severity[fail_on.upper()])
    try:
        result = run_check(
            sources,
            against or ("git:HEAD",),
            externals=externals,
            policy=policy,
            transitive=transitive,
        )
    except CheckError as exc:
        if exc.diagnostics:
            if fmt == "github":
                revs = tuple(a.removeprefix("git:") + ":" for a in against)
                base = github_base()
                located = [
                    replace(
                        d, span=replace(d.span, path=unlabel(d.span.path, revs, base))
                    )
                    for d in exc.diagnostics
                ]
                click.echo(render(located, fmt, base=base))
            else:
                click.echo(render(exc.diagnostics, "text"), err=True)
        _fail(str(exc))
        return
    findings = result.findings
    failing = [f for f in findings if policy.fails(f)]
    labels = [c.removeprefix("git:") + ":" for c in result.compared]
    click.echo(render_findings(findings, policy, fmt, labels), nl=False)
    for note in result.notes:
        click.echo(f"info: {note}", err=True)
    if fmt == "text":
        mode_name = (policy.mode.name or "").upper()
        click.echo(
            f"{len(findings)} change(s), {len(failing)} failing {mode_name} "
            f"compatibility (compared with {', '.join(result.compared) or 'nothing'})",
            err=True,
        )
    sys.exit(EXIT_FINDINGS if failing else EXIT_OK)


@main.command("rules")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["text", "markdown", "json"]),
    default="text",
    show_default=True,
)
@click.argument("rule_id", required=False)
def rules_cmd(fmt: str, rule_id: str | None) -> None:
    """List the rule catalogue (ID, severity, purpose), or explain RULE_ID with an
    example (run, so the output is what atdata-gen really reports)."""
    if rule_id is None:
        click.echo(rules_table(fmt))
        return
    from .explain import RuleNotFound, explain

    try:
        click.echo(explain(rule_id))
    except RuleNotFound as exc:
        _fail(str(exc))


def rules_table(fmt: str) -> str:
    """The lint rule catalogue as ``text``, ``markdown`` (the README's table) or
    ``json``."""
    import json

    from .explain import catalogue

    rows = [
        (
            rid,
            r.stage,
            r.severity,
            f"{r.purpose} [{r.category}; breaks {r.breaks}]"
            if r.category
            else r.purpose,
        )
        for rid, r in catalogue().items()
    ]
    order = {
        "config": 0,
        "load": 1,
        "parse": 2,
        "lower": 3,
        "link": 4,
        "lint": 5,
        "check": 6,
        "write": 7,
    }
    rows.sort(key=lambda row: (order[row[1]], row[0]))
    if fmt == "json":
        return json.dumps(
            [
                {"id": i, "stage": st, "severity": sev, "purpose": p}
                for i, st, sev, p in rows
            ],
            indent=2,
        )
    if fmt == "markdown":
        lines = ["| rule | stage | checks |", "|---|---|---|"]
        lines += [f"| `{i}` | {st} | {p} |" for i, st, _, p in rows]
        return "\n".join(lines)
    return "\n".join(f"{i:30} {st:6} {p}" for i, st, _, p in rows)


@main.command("new-lens")
@click.argument("source")
@click.argument("target")
@click.option(
    "-o",
    "--out",
    "out_file",
    type=click.Path(path_type=Path),
    default=None,
    help="Write the module here (refuses to overwrite); default: print it.",
)
def new_lens_cmd(source: str, target: str, out_file: Path | None) -> None:
    """Write a starter lens module from schema SOURCE to TARGET (``Name@version``,
    or ``Name`` for the highest version), between the classes `atdata-gen build`
    generated. Same-named fields of the same type are mapped; the rest are TODOs
    that mypy flags."""
    from .lensgen import LensGenError, find_sample_class, starter_lens

    try:
        cfg = load_config(Path.cwd())
    except ConfigError as exc:
        _fail_with(exc.diagnostics, "text")
        return
    out = cfg.root / cfg.out
    try:
        text = starter_lens(
            find_sample_class(out, cfg.package, source),
            find_sample_class(out, cfg.package, target),
        )
    except LensGenError as exc:
        _fail(f"{exc} [LENS_SCHEMA_UNRESOLVED]")
        return
    if out_file is None:
        click.echo(text, nl=False)
        return
    try:
        with open(out_file, "x", encoding="utf-8") as fh:
            fh.write(text)
    except FileExistsError:
        _fail(f"{out_file} exists; not overwriting it")
    click.echo(f"wrote {out_file}", err=True)


if __name__ == "__main__":  # pragma: no cover
    main()
