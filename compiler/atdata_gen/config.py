"""``[tool.atdata-gen]`` in ``pyproject.toml``: defaults for the CLI.

Keys: ``sources`` (list of paths), ``out`` (directory that receives the package),
``package`` (import name), ``externals``, ``include``, ``exclude``, ``schemas`` and ``lenses`` (AT-URIs
to pin), and the
``check`` sub-table (``[tool.atdata-gen.check]``, see :mod:`atdata_gen.checks.policy`). Paths are relative
to the directory holding ``pyproject.toml``.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Config", "ConfigError", "load_config"]


LOCK_NAME = "atdata-gen.lock"
"""File name of the lock of pinned remote schema records (beside pyproject.toml)."""


class ConfigError(ValueError):
    """``pyproject.toml`` is missing, unreadable, or has a wrong ``[tool.atdata-gen]``."""


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
    check: dict[str, Any] = field(default_factory=dict)
    """The raw ``[tool.atdata-gen.check]`` table (parsed by
    :class:`atdata_gen.checks.policy.CheckPolicy`)."""
    extra: dict[str, Any] = field(default_factory=dict)


def _strings(table: dict[str, Any], key: str, where: str) -> list[str]:
    value = table.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where}: [tool.atdata-gen] {key} must be a list of strings")
    return value


def _table(table: dict[str, Any], key: str, where: str) -> dict[str, Any]:
    value = table.get(key, {})
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: [tool.atdata-gen.{key}] must be a table")
    return value


def load_config(directory: Path) -> Config:
    """Read ``directory/pyproject.toml``; raises :class:`ConfigError`."""
    path = directory / "pyproject.toml"
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(
            f"{path}: not found (give SOURCE arguments, or run where "
            "pyproject.toml has [tool.atdata-gen])"
        ) from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    table = data.get("tool", {}).get("atdata-gen")
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: no [tool.atdata-gen] table")
    where = str(path)
    for key in ("out", "package"):
        if key in table and not isinstance(table[key], str):
            raise ConfigError(f"{where}: [tool.atdata-gen] {key} must be a string")
    known = {
        "sources",
        "out",
        "package",
        "externals",
        "include",
        "exclude",
        "check",
        "schemas",
        "lenses",
    }
    return Config(
        root=directory,
        sources=_strings(table, "sources", where),
        out=table.get("out", "generated"),
        package=table.get("package", "atdata_lexicons"),
        externals=_strings(table, "externals", where),
        include=_strings(table, "include", where),
        exclude=_strings(table, "exclude", where),
        schemas=_strings(table, "schemas", where),
        lenses=_strings(table, "lenses", where),
        check=_table(table, "check", where),
        extra={k: v for k, v in table.items() if k not in known},
    )
