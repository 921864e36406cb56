"""``[tool.atdata-gen]`` in ``pyproject.toml``: defaults for the CLI.

Keys: ``sources`` (list of paths), ``out`` (directory that receives the package),
``package`` (import name), ``externals``, ``include``, ``exclude``, ``schemas`` and
``lenses`` (AT-URIs to pin), ``lens-packages`` (the top-level packages lens records
may bind to; read by the runtime too, :mod:`atdata_runtime.lenses.records`), and the
``check`` sub-table
(``[tool.atdata-gen.check]``, see :mod:`atdata_gen.checks.policy`).

Discovery (as ruff and pytest do it): the nearest ``pyproject.toml`` in the current
directory or one of its parents is *the* project file; when it has no
``[tool.atdata-gen]`` table, that is reported (``CONFIG_NO_TABLE``), no further
parent is tried. Paths are relative to the directory holding that file.

Every key of every ``[tool.atdata-gen…]`` table is checked: an unknown one is an
error (``CONFIG_UNKNOWN_KEY``) located at its line, with a did-you-mean
(:func:`unknown_keys`, shared with the check policy).
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .diagnostics import Diagnostic, Severity, Span, did_you_mean
from .naming import package_name_problem

__all__ = [
    "CHECK_KEYS",
    "CONFIG_KEYS",
    "Config",
    "ConfigError",
    "TomlFile",
    "find_pyproject",
    "load_config",
    "shown_path",
    "unknown_keys",
]


LOCK_NAME = "atdata-gen.lock"
"""File name of the lock of pinned remote schema records (beside pyproject.toml)."""

CONFIG_KEYS = (
    "sources",
    "out",
    "package",
    "externals",
    "include",
    "exclude",
    "schemas",
    "lenses",
    "lens-packages",
    "check",
)
"""The keys of ``[tool.atdata-gen]``."""

CHECK_KEYS = ("mode", "use", "except", "ignore", "ignore_only", "fail_on")
"""The keys of ``[tool.atdata-gen.check]``."""


class ConfigError(ValueError):
    """``pyproject.toml`` is missing, unreadable, or has a wrong ``[tool.atdata-gen]``.

    ``diagnostics`` holds the located problems (rules ``CONFIG_*``; all of them, not
    only the first); ``missing`` is true when there is simply no configuration (no
    ``pyproject.toml``, or no ``[tool.atdata-gen]`` table in the nearest one), which
    a command given explicit arguments may ignore."""

    def __init__(
        self, diagnostics: Iterable[Diagnostic], *, missing: bool = False
    ) -> None:
        self.diagnostics = sorted(diagnostics)
        self.missing = missing
        super().__init__("\n".join(d.as_text() for d in self.diagnostics))


@dataclass(frozen=True)
class TomlFile:
    """A TOML file for messages: its ``path`` as shown and its ``text`` (searched
    for key lines; tomllib keeps no positions)."""

    path: str
    text: str = ""

    def line_of(self, table: str, key: str) -> int:
        """1-based line of ``key = …`` (or ``key.… =``, or a ``[table.key]`` header)
        inside ``[table]``; 0 when not found."""
        lines = self.text.splitlines()
        header = re.compile(r"\s*\[\[?\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
        assign = re.compile(rf"\s*[\"']?{re.escape(key)}[\"']?\s*[=.]")

        def norm(name: str) -> str:
            return re.sub(r"[\s\"']", "", name)

        current = ""
        for i, line in enumerate(lines, 1):
            m = header.match(line)
            if m:
                current = norm(m.group(1))
                if current == f"{table}.{key}" or current.startswith(f"{table}.{key}."):
                    return i
                continue
            if current == table and assign.match(line):
                return i
        return 0

    def span(self, table: str = "", key: str = "") -> Span:
        line = self.line_of(table, key) if key else 0
        column = 0
        if line:
            text = self.text.splitlines()[line - 1]
            column = len(text) - len(text.lstrip()) + 1
        return Span(self.path, line, column)


def unknown_keys(
    table: Mapping[str, Any], known: Iterable[str], name: str, file: TomlFile
) -> list[Diagnostic]:
    """One ``CONFIG_UNKNOWN_KEY`` error per key of ``table`` (the TOML table
    ``[name]``) that is not in ``known``, located in ``file`` and with a
    did-you-mean when a known key is close."""
    known = tuple(known)
    return [
        Diagnostic(
            file.span(name, key),
            "CONFIG_UNKNOWN_KEY",
            Severity.ERROR,
            f"unknown key {key!r} in [{name}]"
            + (did_you_mean(key, known) or f" (known: {', '.join(sorted(known))})"),
        )
        for key in table
        if key not in known
    ]


@dataclass(frozen=True)
class Config:
    root: Path
    sources: list[str] = field(default_factory=list)
    out: str = "generated"
    package: str = "atdata_lexicons"
    externals: list[str] = field(default_factory=list)
    include: list[str] = field(default_factory=list)
    exclude: list[str] = field(default_factory=list)
    schemas: list[str] = field(default_factory=list)
    """Remote schema records (AT-URIs) to pin in ``atdata-gen.lock``."""
    lenses: list[str] = field(default_factory=list)
    """Remote lens records (AT-URIs) to pin (with their schemas) and emit stubs for."""
    lens_packages: list[str] = field(default_factory=list)
    """``lens-packages``: the lens allowlist, top-level package names that generated
    lens stubs may bind lens records to (each an identifier, no dot, no dunder, not a
    standard-library name); the runtime reads the same key."""
    check: dict[str, Any] = field(default_factory=dict)
    """The raw ``[tool.atdata-gen.check]`` table (parsed by
    :class:`atdata_gen.checks.policy.CheckPolicy`; its keys are already checked)."""
    file: TomlFile = field(default_factory=lambda: TomlFile("pyproject.toml"))
    """The ``pyproject.toml`` it was read from (for located messages)."""


def _lens_packages(names: list[str], value: Any) -> list[str]:
    """``lens-packages`` checked by the runtime's own rule
    (:func:`atdata_runtime.lenses.records.lens_package_problem`: an identifier, no
    dot, no dunder, no standard-library or tool name); each bad entry is reported
    through ``value`` (a located ``CONFIG_VALUE``); the valid ones are kept,
    deduplicated, in order. The runtime is imported only when the key is set."""
    if not names:
        return []
    from atdata_runtime.lenses.records import lens_package_problem

    kept: list[str] = []
    for n in names:
        problem = lens_package_problem(n)
        if problem:
            value("lens-packages", f"entry {n!r} {problem}")
        elif n not in kept:
            kept.append(n)
    return kept


def find_pyproject(start: Path) -> Path | None:
    """The nearest ``pyproject.toml`` in ``start`` or one of its parents."""
    start = start.resolve()
    for directory in (start, *start.parents):
        candidate = directory / "pyproject.toml"
        if candidate.is_file():
            return candidate
    return None


def shown_path(path: Path | str) -> str:
    """``path`` as messages show it: relative to the current directory when it is
    below it, else absolute."""
    full = os.path.abspath(path)
    try:
        rel = os.path.relpath(full)
    except ValueError:  # another drive (Windows)
        return full
    return full if rel.split(os.sep)[0] == os.pardir else rel


def load_config(directory: Path) -> Config:
    """Read ``[tool.atdata-gen]`` from the nearest ``pyproject.toml`` at or above
    ``directory``. Raises :class:`ConfigError` (rules ``CONFIG_NOT_FOUND``,
    ``CONFIG_NO_TABLE`` — both with ``missing`` set —, ``CONFIG_SYNTAX``,
    ``CONFIG_VALUE``, ``CONFIG_UNKNOWN_KEY``)."""
    path = find_pyproject(directory)
    if path is None:
        raise ConfigError(
            [
                Diagnostic(
                    Span(shown_path(directory / "pyproject.toml")),
                    "CONFIG_NOT_FOUND",
                    Severity.ERROR,
                    "no pyproject.toml here or in any parent directory (give SOURCE "
                    "arguments, or add [tool.atdata-gen] to a pyproject.toml)",
                )
            ],
            missing=True,
        )
    file = TomlFile(shown_path(path))
    try:
        file = TomlFile(file.path, path.read_text(encoding="utf-8"))
        data = tomllib.loads(file.text)
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(
            [Diagnostic(Span(file.path), "CONFIG_SYNTAX", Severity.ERROR, str(exc))]
        ) from exc
    tool = data.get("tool", {})
    table = tool.get("atdata-gen") if isinstance(tool, dict) else None
    if not isinstance(table, dict):
        raise ConfigError(
            [
                Diagnostic(
                    Span(file.path),
                    "CONFIG_NO_TABLE",
                    Severity.ERROR,
                    "the nearest pyproject.toml has no [tool.atdata-gen] table "
                    "(configuration is not searched for further up)",
                )
            ],
            missing=True,
        )
    name = "tool.atdata-gen"
    problems = unknown_keys(table, CONFIG_KEYS, name, file)

    def value(key: str, problem: str) -> None:
        problems.append(
            Diagnostic(
                file.span(name, key),
                "CONFIG_VALUE",
                Severity.ERROR,
                f"[{name}] {key} {problem}",
            )
        )

    def strings(key: str) -> list[str]:
        v = table.get(key, [])
        if not isinstance(v, list) or not all(isinstance(s, str) for s in v):
            value(key, "must be a list of strings")
            return []
        return v

    def string(key: str, default: str) -> str:
        v = table.get(key, default)
        if not isinstance(v, str):
            value(key, "must be a string")
            return default
        return v

    check = table.get("check", {})
    if not isinstance(check, dict):
        value("check", "must be a table ([tool.atdata-gen.check])")
        check = {}
    problems += unknown_keys(check, CHECK_KEYS, f"{name}.check", file)
    config = Config(
        root=path.parent,
        sources=strings("sources"),
        out=string("out", "generated"),
        package=string("package", "atdata_lexicons"),
        externals=strings("externals"),
        include=strings("include"),
        exclude=strings("exclude"),
        schemas=strings("schemas"),
        lenses=strings("lenses"),
        lens_packages=_lens_packages(strings("lens-packages"), value),
        check=check,
        file=file,
    )
    if "package" in table and isinstance(table["package"], str):
        problem = package_name_problem(table["package"])
        if problem:
            value("package", f"{table['package']!r}: {problem}")
    if problems:
        raise ConfigError(problems)
    return config
