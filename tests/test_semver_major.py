"""Issue 13 § 5: a declared MAJOR bump of a sample schema lets its breaking
findings pass (reported as info, with the ``atdata-gen new-lens`` command), as
semver.org § 8 intends; a smaller bump still fails."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from atdata_gen.checks.compat import Direction
from atdata_gen.checks.policy import CheckPolicy
from atdata_gen.checks.runner import run_check
from atdata_gen.diagnostics import Severity

from .conftest import flat_schema_record, run_cli

I, S = {"type": "integer"}, {"type": "string"}


def _schema(version: str, props: dict[str, Any], required: list[str]) -> Any:
    return flat_schema_record(
        "Frame", version, props, required, array_formats={"ndarrayBytes": "1.1.0"}
    )


def _sides(tmp_path: Path, new_version: str, props: dict[str, Any]) -> None:
    for side, doc in (
        ("previous", _schema("1.0.0", {"a": S, "b": I}, ["a", "b"])),
        ("current", _schema(new_version, props, ["a"])),
    ):
        (tmp_path / side).mkdir()
        (tmp_path / side / "frame.json").write_text(json.dumps(doc, indent=1))


def test_field_deleted_passes_under_a_major_bump(tmp_path: Path) -> None:
    _sides(tmp_path, "2.0.0", {"a": S})
    proc = run_cli(["check", "current", "--against", "previous"], tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    deleted = [line for line in proc.stdout.splitlines() if " FIELD_DELETED " in line]
    assert len(deleted) == 1 and ": info FIELD_DELETED " in deleted[0]
    assert "Allowed by the MAJOR version 2.0.0" in deleted[0]
    assert "atdata-gen new-lens Frame@1.0.0 Frame@2.0.0" in deleted[0]
    assert "info SCHEMA_MAJOR_CHANGE" in proc.stdout


@pytest.mark.parametrize("version", ["1.1.0", "1.0.1"])
def test_field_deleted_fails_under_a_smaller_bump(tmp_path: Path, version: str) -> None:
    _sides(tmp_path, version, {"a": S})
    proc = run_cli(["check", "current", "--against", "previous"], tmp_path)
    assert proc.returncode == 1
    assert ": error FIELD_DELETED " in proc.stdout
    assert "error SCHEMA_VERSION_BUMP_TOO_SMALL" in proc.stdout


@pytest.mark.parametrize(
    "mode", [Direction.BACKWARD, Direction.FORWARD, Direction.FULL]
)
def test_every_break_is_info_under_a_major_bump(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: Direction
) -> None:
    """A deletion and a type change (breaking BACKWARD, FORWARD or both): info in
    every mode; nothing fails."""
    _sides(tmp_path, "2.0.0", {"a": I, "c": S})
    monkeypatch.chdir(tmp_path)
    result = run_check([Path("current")], ["previous"], policy=CheckPolicy(mode=mode))
    rules = {f.rule for f in result.findings}
    assert {"FIELD_DELETED", "TYPE_CHANGED", "SCHEMA_MAJOR_CHANGE"} <= rules
    assert all(f.severity(mode) is Severity.INFO for f in result.findings)
    assert not any(CheckPolicy(mode=mode).fails(f) for f in result.findings)


def test_major_bump_of_zero_versions(tmp_path: Path) -> None:
    """0.1.0 → 0.2.0 declares MAJOR (semver.org § 4, as Cargo reads it)."""
    for side, version, props in (
        ("previous", "0.1.0", {"a": S, "b": I}),
        ("current", "0.2.0", {"a": S}),
    ):
        (tmp_path / side).mkdir()
        doc = _schema(version, props, [])
        (tmp_path / side / "frame.json").write_text(json.dumps(doc))
    proc = run_cli(["check", "current", "--against", "previous"], tmp_path)
    assert proc.returncode == 0, proc.stdout
    assert ": info FIELD_DELETED " in proc.stdout
