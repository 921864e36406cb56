"""What the settings of ``atdata-ingest`` (:mod:`atdata_ingest.config`) and
``atdata-appview`` (:mod:`atdata_appview.config`) share: the documentation of a
settings dataclass (the module-doc table, each command's ``--help`` list), the
parsing of a boolean variable and of command-line overrides, which option or
variable named a value, and the unknown-variable check.

A settings dataclass here is a frozen :func:`dataclasses.dataclass` whose fields
carry ``metadata`` with ``doc`` (the meaning, units), ``commands`` (the commands
that read it) and optionally ``shown`` (the default as the docs print it). Each
field is read from the variable ``<PREFIX><FIELD NAME IN UPPER CASE>``.
"""

from __future__ import annotations

import dataclasses
import difflib
import textwrap
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from .exits import ConfigError

__all__ = [
    "FALSE",
    "TRUE",
    "SettingInfo",
    "apply_overrides",
    "env_var",
    "extra_variables_doc",
    "field_types",
    "known_variables",
    "label_options",
    "num",
    "parse_bool",
    "setting_infos",
    "settings_help",
    "settings_table",
    "unknown_variables",
]

#: The texts a boolean variable accepts (compared in lower case).
TRUE: Final = frozenset({"1", "true", "yes", "on"})
FALSE: Final = frozenset({"0", "false", "no", "off"})

_TYPES: Final[dict[str, type]] = {"str": str, "int": int, "float": float, "bool": bool}


@dataclass(frozen=True, slots=True)
class SettingInfo:
    """One setting as the docs show it: ``field`` of the settings dataclass, its
    ``variable``, ``default`` (as text), ``meaning`` (with bounds or choices) and
    the ``commands`` that read it."""

    field: str
    variable: str
    default: str
    meaning: str
    commands: tuple[str, ...]


def env_var(prefix: str, name: str) -> str:
    """The variable of field ``name``: ``prefix`` + ``name`` in upper case."""
    return f"{prefix}{name.upper()}"


def num(x: float) -> str:
    """``x`` as the docs print it: ``10`` for ``10.0``, ``0.5`` for ``0.5``."""
    return str(int(x)) if float(x).is_integer() else str(x)


def field_types(settings_cls: type) -> dict[str, type]:
    """Field -> its type (``str``, ``int``, ``float`` or ``bool``, from the
    annotations of the dataclass ``settings_cls``, which must be strings: the
    module uses ``from __future__ import annotations``)."""
    return {f.name: _TYPES[str(f.type)] for f in dataclasses.fields(settings_cls)}


def _shown_default(f: dataclasses.Field[Any]) -> str:
    shown = f.metadata.get("shown")
    if shown:
        return str(shown)
    value = f.default
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return num(value)
    return str(value)


def setting_infos(
    settings_cls: type,
    prefix: str,
    *,
    bounds: Mapping[str, tuple[float, float]],
    choices: Mapping[str, tuple[str, ...]],
) -> Iterator[SettingInfo]:
    """Every field of the dataclass ``settings_cls``, in declaration order, as
    :class:`SettingInfo`; ``bounds`` (field -> inclusive bounds) and ``choices``
    (field -> the values allowed) are appended to the meaning."""
    for f in dataclasses.fields(settings_cls):
        meaning = str(f.metadata["doc"])
        if f.name in bounds:
            lo, hi = bounds[f.name]
            meaning += f"; {num(lo)}..{num(hi)}"
        if f.name in choices:
            meaning += f"; one of {', '.join(choices[f.name])}"
        yield SettingInfo(
            field=f.name,
            variable=env_var(prefix, f.name),
            default=_shown_default(f),
            meaning=meaning,
            commands=tuple(f.metadata["commands"]),
        )


def settings_table(
    infos: Iterable[SettingInfo],
    *,
    width: int = 48,
    all_commands: Sequence[str] | None = None,
) -> str:
    """The reStructuredText table of ``infos`` (variable, default, meaning
    wrapped to ``width`` characters, the commands that read it; ``all`` for a
    setting whose commands are ``all_commands``)."""
    head = ("variable", "default", "meaning", "read by")
    every = tuple(all_commands) if all_commands is not None else None
    rows: list[tuple[str, str, list[str], str]] = [
        (
            f"``{s.variable}``",
            s.default,
            textwrap.wrap(s.meaning, width) or [""],
            ", ".join(s.commands) if s.commands != every else "all",
        )
        for s in infos
    ]
    w_var = max(len(head[0]), *(len(r[0]) for r in rows))
    w_def = max(len(head[1]), *(len(r[1]) for r in rows))
    w_doc = max(len(head[2]), *(len(line) for r in rows for line in r[2]))
    w_cmd = max(len(head[3]), *(len(r[3]) for r in rows))
    rule = "  ".join("=" * w for w in (w_var, w_def, w_doc, w_cmd))

    def line(a: str, b: str, c: str, d: str) -> str:
        return f"{a:<{w_var}}  {b:<{w_def}}  {c:<{w_doc}}  {d}".rstrip()

    out = [rule, line(*head), rule]
    for var, default, doc, cmds in rows:
        out.append(line(var, default, doc[0], cmds))
        out.extend(line("", "", more, "") for more in doc[1:])
    out.append(rule)
    return "\n".join(out)


def settings_help(
    infos: Iterable[SettingInfo],
    *,
    options: Mapping[str, str] | None = None,
    width: int = 76,
) -> str:
    """``infos`` as an indented plain-text list for an argparse epilog (lines
    start with a space: :class:`atdata_ingest.cliutil.Formatter` keeps them as
    they are)::

      ATDATA_INGEST_BATCH_MAX = 500  (option --batch-max)
          events per COPY batch; 1..10000

    ``options``: field -> the command's option for it, shown after the default."""
    lines: list[str] = []
    for s in infos:
        option = (options or {}).get(s.field)
        head = f"  {s.variable} = {s.default}"
        if option:
            head += f"  (option {option})"
        lines.append(head)
        lines.extend(
            textwrap.wrap(
                s.meaning, width, initial_indent=" " * 6, subsequent_indent=" " * 6
            )
        )
    return "\n".join(lines)


def extra_variables_doc(prefix: str, extra: Mapping[str, str]) -> str:
    """A reStructuredText list of the variables read outside the settings
    dataclass (``extra``: name without ``prefix`` -> meaning)."""
    return "\n".join(
        f"- ``{env_var(prefix, name)}``: {meaning}" for name, meaning in extra.items()
    )


# -- values -----------------------------------------------------------------------------


def parse_bool(var: str, raw: str) -> bool:
    """``raw`` (of variable or option ``var``) as a boolean (:data:`TRUE`,
    :data:`FALSE`, any case, surrounding space ignored). Raises
    :class:`ConfigError` naming ``var`` for any other text."""
    low = raw.strip().lower()
    if low in TRUE:
        return True
    if low in FALSE:
        return False
    raise ConfigError(f"{var}: {raw!r} is not a boolean (true/false, 1/0, on/off)")


def apply_overrides(
    values: dict[str, Any],
    overrides: Mapping[str, Any],
    types: Mapping[str, type],
    parse: Callable[[str, type, str], Any],
) -> None:
    """Put ``overrides`` (field -> value; ``None`` = not given; text is parsed by
    ``parse(field, type, text)`` as the variable would be) into ``values``.
    Raises :class:`ConfigError` for a field not in ``types``."""
    for name, value in overrides.items():
        if name not in types:
            raise ConfigError(f"unknown setting {name!r}")
        if value is None:
            continue
        kind = types[name]
        values[name] = parse(name, kind, value) if isinstance(value, str) else value


def label_options(
    labels: dict[str, str],
    overrides: Mapping[str, Any] | None,
    options: Mapping[str, str] | None,
) -> dict[str, str]:
    """``labels`` (field -> variable) with the option in ``options`` for every
    field that ``overrides`` gives a value (not ``None``); returns ``labels``."""
    for name, value in (overrides or {}).items():
        if value is not None and options and name in options:
            labels[name] = options[name]
    return labels


# -- unknown variables -------------------------------------------------------------------


def known_variables(
    prefix: str, fields: Iterable[str], extra: Iterable[str]
) -> frozenset[str]:
    """Every ``<prefix>*`` name a service reads: one per settings field and one
    per name of ``extra`` (names without the prefix)."""
    return frozenset(
        [*(env_var(prefix, n) for n in fields), *(env_var(prefix, n) for n in extra)]
    )


def unknown_variables(
    environ: Mapping[str, str], prefix: str, known: frozenset[str]
) -> list[tuple[str, str | None]]:
    """The ``<prefix>*`` variables of ``environ`` not in ``known``, sorted, each
    with the closest known name (:func:`difflib.get_close_matches` on the part
    after the prefix, cutoff 0.6) or ``None``. Forward compatibility: they are
    reported, never refused."""
    suffixes = {name.removeprefix(prefix): name for name in known}
    found: list[tuple[str, str | None]] = []
    for name in sorted(environ):
        if not name.startswith(prefix) or name in known:
            continue
        close = difflib.get_close_matches(
            name.removeprefix(prefix).upper(), list(suffixes), n=1, cutoff=0.6
        )
        found.append((name, suffixes[close[0]] if close else None))
    return found
