"""Issue 17: what a stage does not need, it does not import. An up-to-date
``build --check`` imports neither the emitter (libcst) nor the record models
(pydantic), the array stack (numpy) or the network client (httpx,
``atdata_runtime.atmosphere``); neither does ``import atdata_gen.pipeline`` nor a
``check`` of Lexicons. And ``check`` reusing one model for two identical sides
finds exactly what compiling each side finds."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from atdata_gen import pipeline
from atdata_gen.checks import runner
from atdata_gen.checks.runner import run_check

from .conftest import ROOT, flat_schema_record

HEAVY = ("libcst", "pydantic", "numpy", "httpx", "atdata_runtime.atmosphere.client")
"""Modules a stage that does not need them must not import (the package
``atdata_runtime.atmosphere`` itself is empty until a name is used; its CID code,
which the lock reader verifies with, is small)."""

# Runs the CLI in-process with ARGV, then writes the sorted module names to OUT.
_PROBE = """
import json, runpy, sys
out, argv = sys.argv[1], sys.argv[2:]
sys.argv = ["atdata-gen", *argv]
code = 0
try:
    runpy.run_module("atdata_gen.cli", run_name="__main__")
except SystemExit as exc:
    code = exc.code
with open(out, "w") as fh:
    json.dump({"code": code, "modules": sorted(sys.modules)}, fh)
"""

LEXICON = {
    "lexicon": 1,
    "id": "com.example.lazy.thing",
    "defs": {
        "main": {
            "type": "record",
            "key": "tid",
            "record": {
                "type": "object",
                "required": ["name"],
                "properties": {
                    "name": {"type": "string", "maxLength": 64},
                    "size": {"type": "integer", "minimum": 0},
                },
            },
        }
    },
}


def _env() -> dict[str, str]:
    path = os.pathsep.join(str(ROOT / p) for p in ("compiler", "runtime"))
    return {**os.environ, "PYTHONPATH": path}


def _modules(args: list[str], cwd: Path) -> tuple[int, set[str]]:
    """Exit code and ``sys.modules`` of one in-process CLI run, in a fresh
    interpreter."""
    out = cwd / "modules.json"
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE, str(out), *args],
        cwd=cwd,
        env=_env(),
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.exists(), proc.stdout + proc.stderr
    data = json.loads(out.read_text())
    return data["code"], set(data["modules"])


def _heavy(modules: set[str]) -> list[str]:
    return sorted(
        m for m in modules if any(m == h or m.startswith(h + ".") for h in HEAVY)
    )


def _lexicons(tmp_path: Path) -> Path:
    lex = tmp_path / "lex"
    lex.mkdir()
    (lex / "thing.json").write_text(json.dumps(LEXICON, indent=1))
    return lex


def test_up_to_date_build_check_imports_no_heavy_module(tmp_path: Path) -> None:
    lex = _lexicons(tmp_path)
    args = [str(lex), "--out", str(tmp_path / "out"), "--package", "lazy_pkg"]
    built = subprocess.run(
        [sys.executable, "-m", "atdata_gen.cli", "build", *args],
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        check=False,
    )
    assert built.returncode == 0, built.stderr
    code, modules = _modules(["build", *args, "--check"], tmp_path)
    assert code == 0
    assert "atdata_gen.backend.manifest" in modules  # the probe did run the CLI
    assert _heavy(modules) == []
    assert "atdata_gen.pipeline" not in modules  # recognised from the manifest


def test_up_to_date_build_with_a_lock_imports_no_heavy_module(tmp_path: Path) -> None:
    """Reading (and verifying) ``atdata-gen.lock`` does not import the network
    client or pydantic either."""
    from atdata_gen.lock import LockEntry, write_lock
    from atdata_runtime.atmosphere.cid import record_cid

    lex = _lexicons(tmp_path)
    value = flat_schema_record("Frame", "1.0.0", {"a": {"type": "string"}})
    did = "did:plc:abcdefghijklmnopqrstuvwx"
    uri = f"at://{did}/science.alt.dataset.schema/frame@1.0.0"
    lock = tmp_path / "atdata-gen.lock"
    write_lock(lock, [LockEntry(uri, uri, did, record_cid(value), value)])
    args = [str(lex), "--out", str(tmp_path / "out"), "--package", "lazy_pkg"]
    args += ["--lock", str(lock)]
    built = subprocess.run(
        [sys.executable, "-m", "atdata_gen.cli", "build", *args],
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        check=False,
    )
    assert built.returncode == 0, built.stderr
    assert list((tmp_path / "out").rglob("frame*.py"))  # the pinned record built
    code, modules = _modules(["build", *args, "--check"], tmp_path)
    assert code == 0
    assert "atdata_gen.lock" in modules  # the lock was read
    assert _heavy(modules) == []


def test_stale_build_check_does_import_the_emitter(tmp_path: Path) -> None:
    """The probe can fail: a build with work to do imports libcst."""
    lex = _lexicons(tmp_path)
    args = [str(lex), "--out", str(tmp_path / "out"), "--package", "lazy_pkg"]
    code, modules = _modules(["build", *args, "--check"], tmp_path)
    assert code == 1  # nothing written yet: stale
    assert "libcst" in modules


def test_importing_the_pipeline_imports_no_heavy_module() -> None:
    code = (
        "import json, sys; import atdata_gen.pipeline; "
        "print(json.dumps(sorted(sys.modules)))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        env=_env(),
        capture_output=True,
        text=True,
        check=True,
    )
    assert _heavy(set(json.loads(proc.stdout))) == []


def test_check_of_lexicons_imports_no_heavy_module(tmp_path: Path) -> None:
    lex = _lexicons(tmp_path)
    code, modules = _modules(["check", str(lex), "--against", str(lex)], tmp_path)
    assert code == 0
    assert "atdata_gen.checks.compat" in modules
    assert _heavy(modules) == []


def test_nsids_spelled_in_the_compiler_are_the_runtimes() -> None:
    from atdata_gen import lock
    from atdata_gen.frontend import lens_record
    from atdata_runtime.atmosphere import records

    assert lens_record.LENS == records.LENS == lock.LENS
    assert lens_record.SCHEMA == records.SCHEMA


def test_lex_models_load_on_first_use() -> None:
    code = (
        "import sys, atdata_runtime.lex as lex; a = 'pydantic' in sys.modules; "
        "from atdata_runtime.lex import *; "
        "print(a, 'pydantic' in sys.modules, LexRecord is lex.LexRecord, "
        "sorted(lex.__all__) == sorted(lex.models.__all__))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        env=_env(),
        capture_output=True,
        text=True,
        check=True,
    )
    assert proc.stdout.split() == ["False", "True", "True", "True"]


def _frames(where: Path) -> None:
    """Two versions of one sample schema in one directory: 1.1.0 deletes 'b', a
    break under a minor bump (found only when versions are compared)."""
    i, s = {"type": "integer"}, {"type": "string"}
    where.mkdir()
    for version, props in (("1.0.0", {"a": s, "b": i}), ("1.1.0", {"a": s})):
        doc: Any = flat_schema_record(
            "Frame", version, props, array_formats={"ndarrayBytes": "1.1.0"}
        )
        (where / f"frame-{version}.json").write_text(json.dumps(doc, indent=1))


@pytest.mark.parametrize("transitive", [False, True])
def test_reused_model_finds_what_two_compiles_find(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, transitive: bool
) -> None:
    """The same directory on both sides: the runner compiles it once. Its
    findings equal those of compiling each side (the reuse turned off)."""
    src = tmp_path / "schemas"
    _frames(src)
    lex = _lexicons(tmp_path)
    monkeypatch.setenv("ATDATA_GEN_CACHE", "0")  # count real compiles
    compiles = 0
    real = pipeline.compile_sources

    def counting(*args: Any, **kwargs: Any) -> Any:
        nonlocal compiles
        compiles += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(pipeline, "compile_sources", counting)
    reused = run_check([src, lex], [str(src), str(lex)], transitive=transitive)
    assert compiles == 1
    monkeypatch.setattr(runner, "_identity", lambda paths: None)
    twice = run_check([src, lex], [str(src), str(lex)], transitive=transitive)
    assert compiles == 3
    assert reused.findings == twice.findings
    assert reused.compared == twice.compared
    if transitive:  # the versions of one side are compared with each other
        assert any(f.rule == "FIELD_DELETED" for f in reused.findings)


def test_an_edited_side_is_compiled(tmp_path: Path) -> None:
    """Different bytes on the previous side: compiled, and the change is found."""
    lex = _lexicons(tmp_path)
    old = tmp_path / "old"
    old.mkdir()
    doc = json.loads(json.dumps(LEXICON))
    doc["defs"]["main"]["record"]["properties"]["gone"] = {"type": "integer"}
    (old / "thing.json").write_text(json.dumps(doc, indent=1))
    found = run_check([lex], [str(old)]).findings
    assert [f.rule for f in found] == ["FIELD_DELETED"]
