"""Build behaviour: this repo's lexicons match the live atdata ones structurally,
generated/ is fresh, output is deterministic, --check and the exit codes work."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from .conftest import ATDATA_LEXICONS, OFFICIAL, ROOT

CLI = [sys.executable, "-m", "atdata_gen.cli"]


def _structure(node: Any) -> Any:
    """Everything but descriptions (and the non-standard 'pattern')."""
    if isinstance(node, dict):
        return {
            k: _structure(v)
            for k, v in node.items()
            if k not in ("description", "pattern")
        }
    if isinstance(node, list):
        return [_structure(v) for v in node]
    return node


def test_own_lexicons_match_live_atdata_structurally() -> None:
    ours = sorted((ROOT / "lexicons").rglob("science/alt/dataset/*.json"))
    theirs = sorted(ATDATA_LEXICONS.rglob("*.json"))
    assert [p.name for p in ours] == [p.name for p in theirs]
    for a, b in zip(ours, theirs, strict=True):
        assert _structure(json.loads(a.read_text())) == _structure(
            json.loads(b.read_text())
        ), a.name


def test_generated_is_fresh() -> None:
    proc = subprocess.run(
        [*CLI, "build", "--check"], cwd=ROOT, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr + "\nrun: uv run atdata-gen build"


def _build(out: Path, seed: str) -> dict[str, bytes]:
    env = dict(os.environ, PYTHONHASHSEED=seed)
    proc = subprocess.run(
        [
            *CLI,
            "build",
            str(OFFICIAL),
            str(ATDATA_LEXICONS),
            "--out",
            str(out),
            "--package",
            "det",
            "-q",
        ],
        capture_output=True,
        text=True,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    return {
        p.relative_to(out).as_posix(): p.read_bytes()
        for p in sorted(out.rglob("*"))
        if p.is_file()
    }


def test_output_is_byte_identical_across_runs_and_hash_seeds(tmp_path: Path) -> None:
    a = _build(tmp_path / "a", "0")
    b = _build(tmp_path / "b", "1")
    assert len(a) > 400
    assert a == b


def test_check_reports_stale_and_build_fixes_it(tmp_path: Path) -> None:
    src = tmp_path / "lex"
    (src / "com" / "example").mkdir(parents=True)
    doc = {
        "lexicon": 1,
        "id": "com.example.thing",
        "defs": {
            "main": {
                "type": "record",
                "key": "tid",
                "record": {"type": "object", "properties": {"n": {"type": "integer"}}},
            }
        },
    }
    (src / "com" / "example" / "thing.json").write_text(json.dumps(doc))
    out = tmp_path / "out"
    args = [*CLI, "build", str(src), "--out", str(out), "--package", "pkg"]
    assert subprocess.run([*args, "--check"], capture_output=True).returncode == 1
    assert subprocess.run(args, capture_output=True).returncode == 0
    assert subprocess.run([*args, "--check"], capture_output=True).returncode == 0
    user_file = out / "pkg" / "mine.py"
    user_file.write_text("X = 1\n")
    (src / "com" / "example" / "thing.json").unlink()
    (src / "com" / "example" / "other.json").write_text(
        json.dumps(dict(doc, id="com.example.other"))
    )
    assert subprocess.run(args, capture_output=True).returncode == 0
    assert not (out / "pkg" / "com" / "example" / "thing.py").exists()
    assert (out / "pkg" / "com" / "example" / "other.py").exists()
    assert user_file.read_text() == "X = 1\n", "a file we did not write was lost"


def test_errors_exit_2_with_locations_and_write_nothing(tmp_path: Path) -> None:
    src = tmp_path / "bad.json"
    src.write_text(
        '{\n  "lexicon": 1,\n  "id": "com.example.bad",\n  "defs": {\n'
        '    "main": {"type": "object", "properties": {\n'
        '      "x": {"type": "ref", "ref": "#missing"},\n'
        '      "y": {"type": "strnig"}}}}}\n'
    )
    out = tmp_path / "out"
    proc = subprocess.run(
        [*CLI, "build", str(src), "--out", str(out), "--format", "json"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    found = {(d["rule"], d["line"]) for d in json.loads(proc.stdout)}
    assert ("LEX_REF_UNRESOLVED", 6) in found
    assert ("LEX_TYPE_UNKNOWN", 7) in found
    assert "Traceback" not in proc.stderr
    assert not out.exists()


def test_json_syntax_error_is_located(tmp_path: Path) -> None:
    src = tmp_path / "broken.json"
    src.write_text('{"lexicon": 1,\n "id": "a.b.c",\n "defs": {,}}')
    proc = subprocess.run(
        [*CLI, "build", str(src), "--out", str(tmp_path / "o")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert f"{src}:3:" in proc.stderr and "SRC_JSON_SYNTAX" in proc.stderr
