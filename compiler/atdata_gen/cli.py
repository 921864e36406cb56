"""``atdata-gen``: the command line. Exit codes: 0 ok · 1 stale (``--check``) or
findings · 2 error (bad input, bad usage, internal failure). No traceback is shown
for a user error."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from . import __version__
from .backend.format import FormatError
from .backend.write import apply_plan, plan_changes
from .checks.lint import RULES
from .config import ConfigError, load_config
from .diagnostics import Severity, render
from .pipeline import BuildOptions, build

EXIT_OK, EXIT_FINDINGS, EXIT_ERROR = 0, 1, 2

_FORMAT = click.option("--format", "fmt", type=click.Choice(["text", "json", "github"]),
                       default="text", show_default=True,
                       help="How to print diagnostics.")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="atdata-gen")
def main() -> None:
    """Compile Lexicons (and atdata schema records) into typed Python packages."""


@main.command("build")
@click.argument("sources", nargs=-1, type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path),
              help="Directory that receives the package directory NAME/.")
@click.option("--package", help="Import name of the generated package.")
@click.option("--external", "externals", multiple=True, type=click.Path(path_type=Path),
              help="Lexicons that are referenced but not emitted (repeatable).")
@click.option("--include", multiple=True, help="Glob of source files to take.")
@click.option("--exclude", multiple=True, help="Glob of source files to skip.")
@click.option("--check", is_flag=True,
              help="Write nothing; exit 1 when the output is stale.")
@click.option("--quiet", "-q", is_flag=True, help="Print only errors and warnings.")
@_FORMAT
def build_cmd(sources: tuple[Path, ...], out: Path | None, package: str | None,
              externals: tuple[Path, ...], include: tuple[str, ...],
              exclude: tuple[str, ...], check: bool, quiet: bool, fmt: str) -> None:
    """Compile SOURCE files and directories into OUT/PACKAGE.

    With no SOURCE, reads [tool.atdata-gen] from ./pyproject.toml.
    """
    root = Path.cwd()
    if not sources:
        try:
            cfg = load_config(root)
        except ConfigError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(EXIT_ERROR)
        sources = tuple(cfg.root / s for s in cfg.sources)
        out = out or cfg.root / cfg.out
        package = package or cfg.package
        externals = externals or tuple(cfg.root / e for e in cfg.externals)
        include = include or tuple(cfg.include)
        exclude = exclude or tuple(cfg.exclude)
    if out is None:
        click.echo("error: --out is required when SOURCE is given", err=True)
        sys.exit(EXIT_ERROR)
    package = package or "atdata_lexicons"
    if not package.isidentifier():
        click.echo(f"error: package name {package!r} is not an identifier", err=True)
        sys.exit(EXIT_ERROR)
    options = BuildOptions(sources, package, externals, include, exclude)
    try:
        result = build(options)
    except FormatError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EXIT_ERROR)
    shown = [d for d in result.reporter
             if not quiet or d.severity >= Severity.WARNING]
    if fmt != "text" or shown:
        text = render(shown if fmt == "text" else list(result.reporter), fmt)
        if text:
            click.echo(text, err=fmt == "text")
    if result.files is None:
        n = len(result.reporter.errors)
        if fmt == "text":
            click.echo(f"error: {n} error(s); nothing written", err=True)
        sys.exit(EXIT_ERROR)
    plan = plan_changes(out / package, result.files)
    if check:
        if plan.stale:
            click.echo(plan.summary(), err=True)
            click.echo("error: generated code is stale; run `atdata-gen build`",
                       err=True)
            sys.exit(EXIT_FINDINGS)
        if not quiet and fmt == "text":
            click.echo(f"{plan.root}: up to date ({len(plan.files)} files)")
        sys.exit(EXIT_OK)
    apply_plan(plan)
    if not quiet and fmt == "text":
        click.echo(plan.summary())


@main.command("rules")
def rules_cmd() -> None:
    """List the lint rules (ID, severity, purpose)."""
    for r in sorted(RULES.values(), key=lambda r: r.id):
        click.echo(f"{r.id:32} {r.severity.label:8} {r.purpose}")


if __name__ == "__main__":  # pragma: no cover
    main()
