"""Lint rules: the ones not pinned by a golden error case are exercised here, and
every registered rule is exercised by at least one test (so none is dead)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from atdata_gen.checks.lint import RULES
from atdata_gen.diagnostics import Reporter, Severity
from atdata_gen.pipeline import BuildOptions, compile_sources

GOLDEN_ERRORS = Path(__file__).parent / "golden" / "errors"


def _diagnose(
    tmp_path: Path, defs: dict[str, object], nsid: str = "com.example.lint"
) -> list[tuple[str, Severity]]:
    path = tmp_path / "doc.json"
    path.write_text(json.dumps({"lexicon": 1, "id": nsid, "defs": defs}, indent=1))
    reporter = Reporter()
    compile_sources(BuildOptions([path], "p"), reporter)
    return [(d.rule, d.severity) for d in reporter]


CASES: dict[str, tuple[dict[str, object], Severity]] = {
    "LEX_UNION_DUPLICATE_REF": (
        {
            "a": {"type": "object", "properties": {}},
            "main": {
                "type": "object",
                "properties": {"u": {"type": "union", "refs": ["#a", "#a"]}},
            },
        },
        Severity.WARNING,
    ),
    "LEX_KNOWN_VALUES_WITH_ENUM": (
        {"main": {"type": "string", "enum": ["a"], "knownValues": ["a", "b"]}},
        Severity.WARNING,
    ),
    "LEX_REF_TO_XRPC": (
        {
            "main": {"type": "query"},
            "o": {
                "type": "object",
                "properties": {"q": {"type": "ref", "ref": "#main"}},
            },
        },
        Severity.ERROR,
    ),
    "LEX_REQUIRED_UNDEFINED": (
        {"main": {"type": "object", "required": ["ghost"], "properties": {}}},
        Severity.WARNING,
    ),
    "LEX_NULLABLE_UNDEFINED": (
        {"main": {"type": "object", "nullable": ["ghost"], "properties": {}}},
        Severity.WARNING,
    ),
}


@pytest.mark.parametrize("rule", sorted(CASES))
def test_rule_fires(tmp_path: Path, rule: str) -> None:
    defs, severity = CASES[rule]
    assert (rule, severity) in _diagnose(tmp_path, defs)


@pytest.mark.parametrize("rule", sorted(CASES))
def test_rule_does_not_fire_on_clean_input(tmp_path: Path, rule: str) -> None:
    clean = {
        "main": {
            "type": "object",
            "required": ["a"],
            "properties": {
                "a": {"type": "string", "knownValues": ["x"]},
                "u": {"type": "union", "refs": ["#b"]},
            },
        },
        "b": {"type": "object", "properties": {}},
    }
    assert _diagnose(tmp_path, clean) == []


def test_every_rule_is_exercised() -> None:
    pinned = "".join(p.read_text() for p in GOLDEN_ERRORS.glob("*/expected.txt"))
    for rule in RULES:
        assert rule in CASES or f" {rule} " in pinned, f"{rule} has no test"


def test_every_rule_id_in_the_code_is_catalogued() -> None:
    import re

    from atdata_gen.diagnostics import STAGE_RULES

    root = Path(__file__).resolve().parent.parent / "compiler" / "atdata_gen"
    used: set[str] = set()
    for path in root.rglob("*.py"):
        used |= set(
            re.findall(
                r'"((?:LEX|SRC|SCHEMA|LENS|LOCK|OUT|NAME)_[A-Z_]+)"', path.read_text()
            )
        )
    used |= {"LEX_REQUIRED_UNDEFINED", "LEX_NULLABLE_UNDEFINED"}  # built by f-string
    # constants' names in __all__, not rules
    used -= {"LOCK_NAME", "LOCK_TIMEOUT_ENV"}
    from atdata_gen.checks.compat import COMPAT_RULES

    catalogued = set(STAGE_RULES) | set(RULES) | set(COMPAT_RULES)
    assert used <= catalogued, sorted(used - catalogued)


def test_readme_rule_table_is_the_catalogue() -> None:
    from atdata_gen.cli import rules_table

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    start, end = "<!-- rules:start -->\n", "\n<!-- rules:end -->"
    assert start in readme and end in readme
    table = readme.split(start, 1)[1].split(end, 1)[0]
    assert table == rules_table("markdown"), (
        "README rule table is stale: run ./scripts/update-golden"
    )
