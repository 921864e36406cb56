"""``[tool.atdata-gen.check]``: which compatibility findings are reported and which
fail the check.

The semantics, stated once (they are also in the README):

* ``mode`` — ``backward``, ``forward`` or ``full`` (default): the direction a
  finding must break to be an error.
* ``use`` — rule IDs and/or categories to run. Empty (the default) means every
  rule. The entries are OR-ed: a rule runs when its ID *or* its category is listed.
* ``except`` — rule IDs and/or categories never to run; it wins over ``use``.
* ``ignore`` — subject globs (``fnmatch``; the subject is a finding's NSID or
  sample-schema name): findings about a matching subject are dropped, for every
  rule.
* ``ignore_only`` — ``{rule ID or category = [globs]}``: drop findings of that rule
  (or category) about matching subjects only.
* ``fail_on`` — ``error`` (default), ``warning`` or ``info``: the lowest severity
  that makes ``atdata-gen check`` exit 1.

A finding is reported when all four filters keep it; nothing else combines them.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..config import CHECK_KEYS, TomlFile, unknown_keys
from ..diagnostics import Severity
from .compat import CATEGORIES, COMPAT_RULES, Direction, Finding

__all__ = ["MODES", "CheckPolicy", "PolicyError"]

MODES = {
    "backward": Direction.BACKWARD,
    "forward": Direction.FORWARD,
    "full": Direction.FULL,
}


class PolicyError(ValueError):
    """A ``[tool.atdata-gen.check]`` value is wrong (unknown key, rule or mode)."""


@dataclass(frozen=True)
class CheckPolicy:
    """The parsed ``[tool.atdata-gen.check]`` table (see the module docstring)."""

    mode: Direction = Direction.FULL
    use: frozenset[str] = frozenset()
    except_: frozenset[str] = frozenset()
    ignore: tuple[str, ...] = ()
    ignore_only: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    fail_on: Severity = Severity.ERROR

    @classmethod
    def from_table(cls, table: Mapping[str, Any], where: str | TomlFile) -> CheckPolicy:
        """Parse a TOML table; raises :class:`PolicyError` naming ``where`` (the
        file, located at the key's line when ``where`` is a :class:`TomlFile`) and
        the key; unknown keys are ``CONFIG_UNKNOWN_KEY`` errors with a
        did-you-mean (the check :func:`atdata_gen.config.load_config` makes)."""
        file = where if isinstance(where, TomlFile) else TomlFile(where)
        where = file.path
        unknown = unknown_keys(table, CHECK_KEYS, "tool.atdata-gen.check", file)
        if unknown:
            raise PolicyError("\n".join(d.as_text() for d in unknown))
        mode = table.get("mode", "full")
        if mode not in MODES:
            raise PolicyError(f"{where}: check.mode must be one of {sorted(MODES)}")
        fail_on = table.get("fail_on", "error")
        if fail_on not in ("error", "warning", "info"):
            raise PolicyError(f"{where}: check.fail_on must be error|warning|info")
        only = table.get("ignore_only", {})
        if not isinstance(only, dict):
            raise PolicyError(f"{where}: check.ignore_only must be a table")
        return cls(
            mode=MODES[mode],
            use=frozenset(_rules(table.get("use", []), f"{where}: check.use")),
            except_=frozenset(
                _rules(table.get("except", []), f"{where}: check.except")
            ),
            ignore=tuple(_strings(table.get("ignore", []), f"{where}: check.ignore")),
            ignore_only={
                k: tuple(_strings(v, f"{where}: check.ignore_only.{k}"))
                for k in _rules(list(only), f"{where}: check.ignore_only")
                for v in [only[k]]
            },
            fail_on=Severity[fail_on.upper()],
        )

    def keeps(self, finding: Finding) -> bool:
        """True when ``finding`` passes ``use``, ``except``, ``ignore`` and
        ``ignore_only``."""
        names = {finding.rule, COMPAT_RULES[finding.rule].category}
        if self.use and not names & self.use:
            return False
        if names & self.except_:
            return False
        if _matches(finding.subject, self.ignore):
            return False
        return not any(
            _matches(finding.subject, self.ignore_only.get(n, ())) for n in names
        )

    def fails(self, finding: Finding) -> bool:
        """True when ``finding`` is at or above ``fail_on`` under ``mode``."""
        return finding.severity(self.mode) >= self.fail_on


def _matches(subject: str, globs: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(subject, g) for g in globs)


def _strings(value: Any, where: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise PolicyError(f"{where} must be a list of strings")
    return value


def _rules(value: Any, where: str) -> list[str]:
    names = _strings(value, where)
    for n in names:
        if n not in COMPAT_RULES and n not in CATEGORIES:
            raise PolicyError(
                f"{where}: {n!r} is neither a rule ID nor a category "
                f"({', '.join(CATEGORIES)}); see `atdata-gen rules`"
            )
    return names
