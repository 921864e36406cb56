"""Build behaviour: this repo's lexicons match the live atdata ones structurally,
runtime/atdata_runtime/lexicons/ is fresh, output is deterministic, --check and the exit codes work."""

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


UPSTREAM_LEXICONS = ATDATA_LEXICONS.parent.parent / "atdata-lexicon" / "lexicons"

#: The AppView's query Lexicons (and their shared views, defs.json): in neither
#: atdata-lexicon 0.4 nor atdata 0.7; the methods atdata-app 0.4 serves, with its
#: names, and getSchemaHistory/getLensPath (README, "NSIDs").
APPVIEW_LEXICONS = {
    "defs.json",
    "describeService.json",
    "getEntries.json",
    "getEntry.json",
    "getLensPath.json",
    "getSchema.json",
    "getSchemaHistory.json",
    "listEntries.json",
    "listLenses.json",
    "listSchemas.json",
    "searchDatasets.json",
    "searchLenses.json",
}


def test_own_lexicons_match_upstream_atdata_lexicon_structurally() -> None:
    """Our science.alt.dataset.* follow atdata-lexicon 0.4.x, plus exactly what keeps
    atdata 0.7's flat schema records readable: its ``jsonSchemaFormat`` properties
    (as they are in atdata 0.7's lexicon) and ``atdataSchemaVersion``, beside the
    envelope's, with nothing required in ``jsonSchemaFormat``."""
    everything = sorted((ROOT / "lexicons").rglob("science/alt/dataset/*.json"))
    ours = [p for p in everything if p.name not in APPVIEW_LEXICONS]
    upstream = sorted(UPSTREAM_LEXICONS.rglob("*.json"))
    live = {p.name: p for p in ATDATA_LEXICONS.rglob("*.json")}
    assert [p.name for p in ours] == [p.name for p in upstream] == sorted(live)
    assert sorted({p.name for p in everything} - {p.name for p in ours}) == sorted(
        APPVIEW_LEXICONS
    )
    for a, b in zip(ours, upstream, strict=True):
        mine, theirs = (
            _structure(json.loads(a.read_text())),
            _structure(json.loads(b.read_text())),
        )
        if a.name == "schema.json":
            flat = _structure(json.loads(live[a.name].read_text()))["defs"]
            fmt = mine["defs"]["jsonSchemaFormat"]
            for key in ("$type", "$schema", "type", "properties"):
                assert (
                    fmt["properties"].pop(key)
                    == (flat["jsonSchemaFormat"]["properties"][key])
                )
            assert "required" not in fmt
            fmt["required"] = theirs["defs"]["jsonSchemaFormat"]["required"]
            props = mine["defs"]["main"]["record"]["properties"]
            assert (
                props.pop("atdataSchemaVersion")
                == (flat["main"]["record"]["properties"]["atdataSchemaVersion"])
            )
        assert mine == theirs, a.name


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
    found = {(d["rule"], d["line"]) for d in json.loads(proc.stdout)["diagnostics"]}
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


def test_external_with_package_imports_its_classes(tmp_path: Path) -> None:
    """`--external DIR=PACKAGE`: refs into DIR use PACKAGE's classes, unions included."""
    base = tmp_path / "base" / "com" / "example"
    base.mkdir(parents=True)
    (base / "shape.json").write_text(
        json.dumps(
            {
                "lexicon": 1,
                "id": "com.example.shape",
                "defs": {
                    "main": {
                        "type": "object",
                        "required": ["sides"],
                        "properties": {"sides": {"type": "integer", "minimum": 3}},
                    }
                },
            }
        )
    )
    app = tmp_path / "app" / "org" / "demo"
    app.mkdir(parents=True)
    (app / "drawing.json").write_text(
        json.dumps(
            {
                "lexicon": 1,
                "id": "org.demo.drawing",
                "defs": {
                    "main": {
                        "type": "record",
                        "key": "tid",
                        "record": {
                            "type": "object",
                            "properties": {
                                "shape": {"type": "ref", "ref": "com.example.shape"},
                                "any": {"type": "union", "refs": ["com.example.shape"]},
                            },
                        },
                    }
                },
            }
        )
    )
    out = tmp_path / "out"
    for args in (
        ["build", str(tmp_path / "base"), "--out", str(out), "--package", "base_pkg"],
        [
            "build",
            str(tmp_path / "app"),
            "--out",
            str(out),
            "--package",
            "app_pkg",
            "--external",
            f"{tmp_path / 'base'}=base_pkg",
        ],
    ):
        proc = subprocess.run([*CLI, *args], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
    assert not (out / "app_pkg" / "com").exists(), "externals must not be emitted"
    code = (
        "from app_pkg.org.demo.drawing import Drawing\n"
        "from base_pkg.com.example.shape import Shape\n"
        "d = Drawing.from_wire({'$type': 'org.demo.drawing', 'shape': {'sides': 4},"
        " 'any': {'$type': 'com.example.shape', 'sides': 5}})\n"
        "assert type(d.shape) is Shape and type(d.any_) is Shape\n"
        "try:\n"
        "    Drawing.from_wire({'$type': 'org.demo.drawing', 'shape': {'sides': 2}})\n"
        "except Exception:\n"
        "    print('rejected')\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(out)),
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "rejected"


def test_config_and_github_format(tmp_path: Path) -> None:
    (tmp_path / "lex").mkdir()
    (tmp_path / "lex" / "a.json").write_text(
        json.dumps(
            {
                "lexicon": 1,
                "id": "com.ex.a",
                "defs": {
                    "main": {
                        "type": "object",
                        "properties": {"x": {"type": "ref", "ref": "#nope"}},
                    }
                },
            }
        )
    )
    (tmp_path / "pyproject.toml").write_text(
        '[tool.atdata-gen]\nsources = ["lex"]\nout = "gen"\npackage = "mypkg"\n'
    )
    proc = subprocess.run(
        [*CLI, "build", "--format", "github"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert proc.stdout.startswith("::error file=")
    assert "title=LEX_REF_UNRESOLVED" in proc.stdout
    (tmp_path / "lex" / "a.json").write_text(
        json.dumps(
            {
                "lexicon": 1,
                "id": "com.ex.a",
                "defs": {"main": {"type": "object", "properties": {}}},
            }
        )
    )
    assert subprocess.run([*CLI, "build", "-q"], cwd=tmp_path).returncode == 0
    assert (tmp_path / "gen" / "mypkg" / "com" / "ex" / "a.py").is_file()
    assert (
        subprocess.run([*CLI, "build", "--check", "-q"], cwd=tmp_path).returncode == 0
    )


def test_interrupted_swap_is_recovered(tmp_path: Path) -> None:
    """A build killed between its two renames leaves the old package beside the
    target; the next build puts it back before planning."""
    from atdata_gen.backend.write import apply_plan, plan_changes

    root = tmp_path / "pkg"
    apply_plan(plan_changes(root, {"a.py": '"""Generated by atdata-gen"""\n'}))
    backup = root.with_name(f".{root.name}.atdata-gen-old")
    root.rename(backup)  # as if killed right after the first rename
    plan = plan_changes(root, {"a.py": '"""Generated by atdata-gen"""\n'})
    assert root.is_dir() and not backup.exists()
    assert not plan.stale


def test_generated_code_needs_only_the_runtime() -> None:
    """Training code imports generated modules without the compiler's dependencies."""
    code = (
        "import sys\n"
        "import atdata_runtime.lexicons.science.alt.dataset.entry as e\n"
        "e.Entry.model_rebuild()\n"
        "heavy = {'libcst', 'jinja2', 'click', 'atdata_gen', 'hypothesis'}\n"
        "print(sorted(heavy & set(sys.modules)))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(ROOT / "runtime")),
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_include_and_exclude(tmp_path: Path) -> None:
    src = tmp_path / "lex"
    for name in ("keep", "skip"):
        (src / "com" / "ex").mkdir(parents=True, exist_ok=True)
        (src / "com" / "ex" / f"{name}.json").write_text(
            json.dumps(
                {
                    "lexicon": 1,
                    "id": f"com.ex.{name}",
                    "defs": {"main": {"type": "token"}},
                }
            )
        )
    out = tmp_path / "out"
    proc = subprocess.run(
        [
            *CLI,
            "build",
            str(src),
            "--out",
            str(out),
            "--package",
            "p",
            "--include",
            "com/ex/*.json",
            "--exclude",
            "*/skip.json",
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert (out / "p" / "com" / "ex" / "keep.py").is_file()
    assert not (out / "p" / "com" / "ex" / "skip.py").exists()
