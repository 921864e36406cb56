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

import click

from . import __version__
from .backend.manifest import MANIFEST_NAME, fingerprint, is_fresh, manifest_text
from .config import ConfigError, load_config
from .diagnostics import Reporter, Severity, render
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
    fmt: str,
) -> None:
    """Compile SOURCE files and directories into OUT/PACKAGE.

    With no SOURCE, reads [tool.atdata-gen] from ./pyproject.toml.
    """
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
    if out is None:
        _fail("--out is required when SOURCE is given")
        return
    package = package or "atdata_lexicons"
    if not (package.isascii() and package.isidentifier()):
        _fail(f"package name {package!r} is not an identifier")
    root = out / package

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
                [*include, "|", *exclude, "|", *(f"{r}={p}" for r, p in split)],
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

    options = BuildOptions(sources, package, externals, include, exclude, jobs=jobs)
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


def _materialize(spec: str, paths: tuple[Path, ...], tmp: Path) -> list[Path]:
    """``git:REV`` → the given paths as they were at REV, written under ``tmp``
    (read from history with ``git archive``, no checkout)."""
    import subprocess

    rev = spec.removeprefix("git:") or "HEAD"
    top = subprocess.run(
        ["git", "rev-parse", "--show-toplevel"],
        capture_output=True,
        text=True,
        check=False,
    )
    if top.returncode != 0:
        raise click.UsageError(f"{spec}: not inside a git repository")
    root = Path(top.stdout.strip())
    rels = [str(p.resolve().relative_to(root)) for p in paths]
    archive = subprocess.run(
        ["git", "archive", "--format=tar", rev, "--", *rels],
        cwd=root,
        capture_output=True,
        check=False,
    )
    if archive.returncode != 0:
        raise click.UsageError(f"{spec}: {archive.stderr.decode(errors='replace')}")
    import io
    import tarfile

    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(tmp, filter="data")
    return [tmp / r for r in rels]


@main.command("check")
@click.argument("sources", nargs=-1, type=click.Path(path_type=Path))
@click.option(
    "--against",
    "against",
    multiple=True,
    required=False,
    help="The previous version: files/directories, or git:REV.",
)
@click.option(
    "--external",
    "externals",
    multiple=True,
    type=click.Path(path_type=Path),
    help="Lexicons referenced but not compared (repeatable).",
)
@click.option(
    "--mode",
    type=click.Choice(["backward", "forward", "full"]),
    default="full",
    show_default=True,
    help="BACKWARD: new accepts old data; FORWARD: old readers accept new "
    "data; FULL: both (the Lexicon spec's rule).",
)
@_FORMAT
def check_cmd(
    sources: tuple[Path, ...],
    against: tuple[str, ...],
    externals: tuple[Path, ...],
    mode: str,
    fmt: str,
) -> None:
    """Compare SOURCE schemas with a previous version (--against); report every
    change with its rule ID; exit 1 when a change breaks compatibility in --mode.

    With no SOURCE, compares the [tool.atdata-gen] sources with git:HEAD.
    """
    import json as _json
    import tempfile

    from .checks.compat import Direction, compare
    from .pipeline import BuildOptions, compile_sources

    if not sources:
        try:
            cfg = load_config(Path.cwd())
        except ConfigError as exc:
            _fail(str(exc))
            return
        sources = tuple(cfg.root / s for s in cfg.sources)
        externals = externals or tuple(cfg.root / e for e in cfg.externals)
        against = against or ("git:HEAD",)
    if not against:
        _fail("--against is required when SOURCE is given")
    direction = {
        "backward": Direction.BACKWARD,
        "forward": Direction.FORWARD,
        "full": Direction.FULL,
    }[mode]
    with tempfile.TemporaryDirectory(prefix="atdata-gen-check-") as tmp:
        old_paths: list[Path] = []
        for i, spec in enumerate(against):
            if spec.startswith("git:"):
                old_paths += _materialize(spec, sources, Path(tmp) / str(i))
            else:
                old_paths.append(Path(spec))
        reporter = Reporter()
        new = compile_sources(BuildOptions(sources, externals=externals), reporter)
        old_reporter = Reporter()
        old = compile_sources(
            BuildOptions(old_paths, externals=externals), old_reporter
        )
        errors = reporter.errors + old_reporter.errors
        if errors or new.model is None or old.model is None:
            click.echo(render(errors, "text"), err=True)
            _fail("cannot compare: the schemas do not compile")
            return
        findings = compare(old.model, new.model)
    breaking = [f for f in findings if f.breaks & direction]
    if fmt == "json":
        click.echo(
            _json.dumps(
                [
                    {
                        "rule": f.rule,
                        "message": f.message,
                        "severity": f.severity(direction).label,
                        "breaks": [
                            d.name
                            for d in (Direction.BACKWARD, Direction.FORWARD)
                            if f.breaks & d
                        ],
                        "current": str(f.current),
                        "previous": str(f.previous),
                    }
                    for f in findings
                ],
                indent=2,
            )
        )
    else:
        from .diagnostics import Diagnostic

        diags = [
            Diagnostic(
                f.current,
                f.rule,
                f.severity(direction),
                f.message
                + (
                    f" (previously at {f.previous})"
                    if f.previous.path and f.previous != f.current
                    else ""
                ),
            )
            for f in findings
        ]
        text = render(diags, fmt)
        if text:
            click.echo(text)
        if fmt == "text":
            click.echo(
                f"{len(findings)} change(s), {len(breaking)} breaking "
                f"{mode.upper()} compatibility",
                err=True,
            )
    sys.exit(EXIT_FINDINGS if breaking else EXIT_OK)


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
    from .checks.compat import COMPAT_RULES, Direction

    for c in COMPAT_RULES.values():
        breaks = "/".join(
            d.name or ""
            for d in (Direction.BACKWARD, Direction.FORWARD)
            if c.breaks & d
        )
        rows.append(
            (
                c.id,
                "check",
                "error" if breaks else "info",
                f"{c.purpose} Breaks: {breaks or 'nothing'}.",
            )
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


if __name__ == "__main__":  # pragma: no cover
    main()
