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
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from .lock import Lock

from . import __version__
from .backend.manifest import MANIFEST_NAME, fingerprint, is_fresh, manifest_text
from .config import LOCK_NAME, ConfigError, load_config
from .diagnostics import Reporter, Severity, render
from .naming import package_name_problem
from .sources import discover, split_external

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
    click.echo(f"error: {message}", err=True)
    sys.exit(EXIT_ERROR)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
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
    type=click.Path(path_type=Path),
    help="Lexicons that are referenced but not emitted (repeatable).",
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
@_FORMAT
def build_cmd(
    sources: tuple[Path, ...],
    out: Path | None,
    package: str | None,
    externals: tuple[Path, ...],
    include: tuple[str, ...],
    exclude: tuple[str, ...],
    check: bool,
    quiet: bool,
    jobs: int | None,
    lock_path: Path | None,
    frozen: bool,
    fmt: str,
) -> None:
    """Compile SOURCE files and directories into OUT/PACKAGE.

    With no SOURCE, reads [tool.atdata-gen] from ./pyproject.toml. Schema records
    pinned in atdata-gen.lock (``atdata-gen pull``) are compiled too, offline.
    """
    wanted: list[str] = []
    if not sources:
        try:
            cfg = load_config(Path.cwd())
        except ConfigError as exc:
            _fail(str(exc))
            return
        sources = tuple(cfg.root / s for s in cfg.sources)
        out = out or cfg.root / cfg.out
        package = package or cfg.package
        externals = externals or tuple(cfg.root / e for e in cfg.externals)
        include = include or tuple(cfg.include)
        exclude = exclude or tuple(cfg.exclude)
        wanted = [*cfg.schemas, *cfg.lenses]
        lock_path = lock_path or cfg.root / LOCK_NAME
    lock = _load_lock(lock_path, wanted, frozen, fmt)
    if out is None:
        _fail("--out is required when SOURCE is given")
        return
    package = package or "atdata_lexicons"
    problem = package_name_problem(package)
    if problem:
        _fail(f"--package {package!r}: {problem}")
    root = out.joinpath(*package.split("."))

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
                    *(f"{r}={p}" for r, p in split),
                    "|",
                    lock.doc.sha256 if lock and lock.doc else "",
                ],
            )
        except OSError:
            print_ = None
    if print_ is not None and is_fresh(root, print_):
        if not quiet and fmt == "text":
            click.echo(f"{root}: up to date")
        sys.exit(EXIT_OK)

    from .backend.format import FormatError
    from .backend.write import apply_plan, plan_changes
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
        _fail(str(exc))
        return
    shown = [d for d in result.reporter if not quiet or d.severity >= Severity.WARNING]
    if fmt != "text" or shown:
        text = render(shown if fmt == "text" else list(result.reporter), fmt)
        if text:
            click.echo(text, err=fmt == "text")
    if result.files is None:
        if fmt == "text":
            click.echo(
                f"error: {len(result.reporter.errors)} error(s); nothing written",
                err=True,
            )
        sys.exit(EXIT_ERROR)
    files = dict(result.files)
    if print_ is not None:
        files[MANIFEST_NAME] = manifest_text(print_, files)
    plan = plan_changes(root, files)
    if check:
        if plan.stale:
            click.echo(plan.summary(), err=True)
            click.echo(
                "error: generated code is stale; run `atdata-gen build`", err=True
            )
            sys.exit(EXIT_FINDINGS)
        if not quiet and fmt == "text":
            click.echo(f"{root}: up to date ({len(plan.files)} files)")
        sys.exit(EXIT_OK)
    apply_plan(plan)
    if not quiet and fmt == "text":
        click.echo(plan.summary())
    if os.environ.get("ATDATA_GEN_TIMINGS"):
        click.echo(
            " ".join(f"{k}={v:.3f}s" for k, v in result.timings.items()), err=True
        )


def _load_lock(
    path: Path | None, wanted: list[str], frozen: bool, fmt: str
) -> Lock | None:
    """Read and verify the lock; with ``frozen``, require it to pin ``wanted``.
    Exits 2 on a broken lock, 1 on a missing or stale one."""
    if path is None:
        if frozen:
            _fail("--frozen needs a lock file: give --lock or use [tool.atdata-gen]")
        return None
    lock = None
    if path.exists():  # the lock module (and the CID code) only when there is one
        from .lock import read_lock

        reporter = Reporter()
        lock = read_lock(path, reporter)
        if reporter.has_errors:
            click.echo(render(list(reporter), fmt), err=fmt == "text")
            sys.exit(EXIT_ERROR)
    if frozen:
        if lock is None and wanted:
            click.echo(
                f"{path}: error: no lock file, but [tool.atdata-gen] schemas lists "
                f"{len(wanted)} schema(s); run `atdata-gen pull` [LOCK_MISSING]",
                err=True,
            )
            sys.exit(EXIT_FINDINGS)
        missing = [u for u in wanted if lock is None or lock.find(u) is None]
        if missing:
            for uri in missing:
                click.echo(
                    f"{path}: error: {uri} is not pinned; run `atdata-gen pull` "
                    "[LOCK_STALE]",
                    err=True,
                )
            sys.exit(EXIT_FINDINGS)
    return lock


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
    """
    from dataclasses import replace

    from .checks.policy import MODES, CheckPolicy, PolicyError
    from .checks.runner import CheckError, run_check

    table: dict[str, object] = {}
    try:
        cfg = load_config(Path.cwd())
        table = cfg.check
        if not sources:
            sources = tuple(cfg.root / s for s in cfg.sources)
            externals = externals or tuple(cfg.root / e for e in cfg.externals)
    except ConfigError as exc:
        if not sources:
            _fail(str(exc))
    try:
        policy = CheckPolicy.from_table(table, "pyproject.toml")
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
            click.echo(render(exc.diagnostics, "text"), err=True)
        _fail(str(exc))
        return
    findings = result.findings
    failing = [f for f in findings if policy.fails(f)]
    click.echo(render_findings(findings, policy, fmt), nl=False)
    if fmt == "text":
        mode_name = (policy.mode.name or "").upper()
        click.echo(
            f"{len(findings)} change(s), {len(failing)} failing {mode_name} "
            f"compatibility (compared with {', '.join(result.compared)})",
            err=True,
        )
    sys.exit(EXIT_FINDINGS if failing else EXIT_OK)


def render_findings(findings: list[Any], policy: Any, fmt: str) -> str:
    """Findings as ``text`` (``path:line:col: severity RULE message (previously at
    …)``), ``json`` or ``github`` workflow commands; ends with a newline unless
    empty."""
    import json as _json

    from .checks.compat import COMPAT_RULES
    from .checks.runner import locate
    from .diagnostics import Diagnostic

    if fmt == "json":
        return (
            _json.dumps(
                [
                    {
                        "rule": f.rule,
                        "category": COMPAT_RULES[f.rule].category,
                        "message": f.message,
                        "severity": f.severity(policy.mode).label,
                        "breaks": f.breaks.names,
                        "subject": f.subject,
                        "current": str(f.current) if f.current.path else None,
                        "previous": str(f.previous) if f.previous.path else None,
                    }
                    for f in findings
                ],
                indent=2,
            )
            + "\n"
        )
    diags = [
        Diagnostic(
            locate(f),
            f.rule,
            f.severity(policy.mode),
            f.message
            + (
                f" (previously at {f.previous})"
                if f.previous.path and f.previous != f.current and f.current.path
                else ""
            ),
        )
        for f in findings
    ]
    text = render(diags, fmt)
    return text + "\n" if text else ""


@main.command("rules")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["text", "markdown", "json"]),
    default="text",
    show_default=True,
)
def rules_cmd(fmt: str) -> None:
    """List the rule catalogue (ID, severity, purpose)."""
    click.echo(rules_table(fmt))


def rules_table(fmt: str) -> str:
    """The lint rule catalogue as ``text``, ``markdown`` (the README's table) or
    ``json``."""
    import json

    from .checks.lint import RULES
    from .diagnostics import STAGE_RULES

    rows = [
        (rid, stage, "error", purpose) for rid, (stage, purpose) in STAGE_RULES.items()
    ]
    rows += [(r.id, "lint", r.severity.label, r.purpose) for r in RULES.values()]
    from .checks.compat import COMPAT_RULES

    for c in COMPAT_RULES.values():
        breaks = "/".join(c.breaks.names) or "nothing"
        severity = "error" if c.breaks else c.severity.label
        rows.append(
            (c.id, "check", severity, f"{c.purpose} [{c.category}; breaks {breaks}]")
        )
    order = {"load": 0, "parse": 1, "lower": 2, "link": 3, "lint": 4, "check": 5}
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
        _fail(str(exc))
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


def _register_network_commands() -> None:
    from .remote import publish_group, pull_cmd

    main.add_command(pull_cmd)
    main.add_command(publish_group)


_register_network_commands()


if __name__ == "__main__":  # pragma: no cover
    main()
