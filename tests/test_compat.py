"""`atdata-gen check`: compatibility findings between two versions (first cut of the
rule catalogue; per-rule fixture directories and the data oracle come next)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from atdata_gen.checks.compat import COMPAT_RULES, Direction, compare
from atdata_gen.pipeline import BuildOptions, compile_sources

from .conftest import ATDATA_LEXICONS, OFFICIAL

CLI = [sys.executable, "-m", "atdata_gen.cli"]


def _record(
    props: dict[str, Any],
    required: list[str] | None = None,
    key: str = "tid",
    **defs: Any,
) -> dict[str, Any]:
    return {
        "lexicon": 1,
        "id": "com.ex.doc",
        "defs": {
            "main": {
                "type": "record",
                "key": key,
                "record": {
                    "type": "object",
                    "required": required or [],
                    "properties": props,
                },
            },
            **defs,
        },
    }


def _rules(tmp_path: Path, old: dict[str, Any], new: dict[str, Any]) -> set[str]:
    for side, doc in (("old", old), ("new", new)):
        (tmp_path / side).mkdir(exist_ok=True)
        (tmp_path / side / "doc.json").write_text(json.dumps(doc, indent=1))
    a = compile_sources(BuildOptions([tmp_path / "old"]))
    b = compile_sources(BuildOptions([tmp_path / "new"]))
    assert a.model is not None and b.model is not None
    assert not a.reporter.has_errors and not b.reporter.has_errors
    return {f.rule for f in compare(a.model, b.model)}


S = {"type": "string"}
CASES: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "FIELD_DELETED": (_record({"a": S, "b": S}), _record({"a": S})),
    "FIELD_REQUIRED_ADDED": (_record({"a": S}), _record({"a": S, "b": S}, ["b"])),
    "FIELD_OPTIONAL_ADDED": (_record({"a": S}), _record({"a": S, "b": S})),
    "FIELD_MADE_REQUIRED": (_record({"a": S}), _record({"a": S}, ["a"])),
    "FIELD_MADE_OPTIONAL": (_record({"a": S}, ["a"]), _record({"a": S})),
    "RECORD_KEY_CHANGED": (_record({"a": S}), _record({"a": S}, key="nsid")),
    "TYPE_CHANGED": (_record({"a": S}), _record({"a": {"type": "integer"}})),
    "FORMAT_ADDED": (
        _record({"a": S}),
        _record({"a": {"type": "string", "format": "did"}}),
    ),
    "BOUND_NARROWED": (
        _record({"a": {"type": "string", "maxLength": 10}}),
        _record({"a": {"type": "string", "maxLength": 5}}),
    ),
    "BOUND_WIDENED": (
        _record({"a": {"type": "integer", "maximum": 5}}),
        _record({"a": {"type": "integer", "maximum": 9}}),
    ),
    "ENUM_EXTENDED": (
        _record({"a": {"type": "string", "enum": ["x"]}}),
        _record({"a": {"type": "string", "enum": ["x", "y"]}}),
    ),
    "ENUM_NARROWED": (
        _record({"a": {"type": "string", "enum": ["x", "y"]}}),
        _record({"a": {"type": "string", "enum": ["x"]}}),
    ),
    "DEF_DELETED": (_record({"a": S}, t={"type": "token"}), _record({"a": S})),
    "DEF_ADDED": (_record({"a": S}), _record({"a": S}, t={"type": "token"})),
    "UNION_CLOSED": (
        _record(
            {"u": {"type": "union", "refs": ["#o"]}},
            o={"type": "object", "properties": {}},
        ),
        _record(
            {"u": {"type": "union", "refs": ["#o"], "closed": True}},
            o={"type": "object", "properties": {}},
        ),
    ),
}


@pytest.mark.parametrize("rule", sorted(CASES))
def test_rule_fires(tmp_path: Path, rule: str) -> None:
    old, new = CASES[rule]
    assert rule in _rules(tmp_path, old, new)
    assert rule in COMPAT_RULES


@pytest.mark.parametrize("rule", sorted(CASES))
def test_rule_does_not_fire_on_identical(tmp_path: Path, rule: str) -> None:
    old, _ = CASES[rule]
    assert _rules(tmp_path, old, old) == set()


def test_directions() -> None:
    assert COMPAT_RULES["FIELD_REQUIRED_ADDED"].breaks == Direction.BACKWARD
    assert COMPAT_RULES["ENUM_EXTENDED"].breaks == Direction.FORWARD
    assert COMPAT_RULES["TYPE_CHANGED"].breaks == Direction.FULL
    assert COMPAT_RULES["FIELD_OPTIONAL_ADDED"].breaks == Direction.NONE


def test_corpus_against_itself_is_clean() -> None:
    a = compile_sources(BuildOptions([OFFICIAL, ATDATA_LEXICONS]))
    assert a.model is not None
    assert compare(a.model, a.model) == []


def test_cli_modes_and_exit_codes(tmp_path: Path) -> None:
    old, new = CASES["ENUM_EXTENDED"]
    _rules(tmp_path, old, new)
    args = [*CLI, "check", str(tmp_path / "new"), "--against", str(tmp_path / "old")]
    assert (
        subprocess.run([*args, "--mode", "forward"], capture_output=True).returncode
        == 1
    )
    assert (
        subprocess.run([*args, "--mode", "backward"], capture_output=True).returncode
        == 0
    )
    proc = subprocess.run([*args, "--format", "json"], capture_output=True, text=True)
    assert proc.returncode == 1
    (finding,) = json.loads(proc.stdout)
    assert finding["rule"] == "ENUM_EXTENDED" and finding["breaks"] == ["FORWARD"]
    assert finding["current"].startswith(str(tmp_path / "new" / "doc.json") + ":")
    assert finding["previous"].startswith(str(tmp_path / "old" / "doc.json") + ":")


def test_git_revision_as_previous(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    (repo / "lex").mkdir(parents=True)
    doc = repo / "lex" / "doc.json"
    doc.write_text(json.dumps(_record({"a": S, "b": S})))
    git = ["git", "-c", "user.email=t@example.com", "-c", "user.name=t"]
    subprocess.run([*git, "init", "-q"], cwd=repo, check=True)
    subprocess.run([*git, "add", "."], cwd=repo, check=True)
    subprocess.run([*git, "commit", "-qm", "v1"], cwd=repo, check=True)
    doc.write_text(json.dumps(_record({"a": S})))
    proc = subprocess.run(
        [*CLI, "check", "lex", "--against", "git:HEAD"],
        cwd=repo,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 1, proc.stderr
    assert "FIELD_DELETED" in proc.stdout and "'b'" in proc.stdout
