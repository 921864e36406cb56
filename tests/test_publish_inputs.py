"""``atdata-gen publish schema FILE`` reads its file with the checks every build
input gets (review of issue 14: it used a bare ``json.loads``, so 5,000 levels of
nesting were a RecursionError traceback and floats went through). Each case is a
located error with its rule and exit 2, before any login or network access."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from .conftest import run_cli

CASES = {
    "deep": ('{"a":' * 5000 + "1" + "}" * 5000, "SRC_JSON_TOO_DEEP", "1:321"),
    "float": (
        '{"name": "X", "version": "1.0.0", "x": 0.5}',
        "SRC_FLOAT",
        "1:35",
    ),
    "syntax": ('{"name": "X",', "SRC_JSON_SYNTAX", "1:"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_publish_schema_file_is_checked_like_a_build_input(
    tmp_path: Path, case: str
) -> None:
    text, rule, where = CASES[case]
    (tmp_path / "s.json").write_text(text)
    proc = run_cli(["publish", "schema", "s.json"], cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert rule in proc.stderr and f"s.json:{where}" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


def test_publish_schema_refuses_a_fifo_without_blocking(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "s.json")
    proc = run_cli(["publish", "schema", "s.json"], cwd=tmp_path)
    assert proc.returncode == 2 and "SRC_NOT_REGULAR" in proc.stderr, proc.stderr
