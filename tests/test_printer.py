"""The fast printer prints exactly what libcst prints (same AST) for every module the
emitter builds from the official corpus, and parallel emission equals serial."""

from __future__ import annotations

import ast

import libcst as cst
import pytest
from atdata_gen.backend import emit, printer
from atdata_gen.pipeline import BuildOptions, build, compile_sources

from .conftest import ATDATA_LEXICONS, OFFICIAL


def test_printer_matches_libcst_on_the_corpus(monkeypatch: pytest.MonkeyPatch) -> None:
    result = compile_sources(BuildOptions([OFFICIAL, ATDATA_LEXICONS], "p"))
    assert result.model is not None
    trees: list[cst.Module] = []
    monkeypatch.setattr(emit, "print_module", lambda m: trees.append(m) or "")
    emit.emit_modules(result.model, {}, range(len(result.model.schemas)))
    assert len(trees) == 417
    for tree in trees:
        ours = printer.print_module(tree)
        assert ast.dump(ast.parse(ours)) == ast.dump(ast.parse(tree.code))


def test_fallback_handles_unknown_nodes() -> None:
    module = cst.parse_module("x = [i for i in range(3)]\nif x:\n    pass\n")
    assert ast.dump(ast.parse(printer.print_module(module))) == ast.dump(
        ast.parse(module.code)
    )


def test_parallel_emission_equals_serial() -> None:
    serial = build(BuildOptions([OFFICIAL], "p", jobs=1, format=False)).files
    parallel = build(BuildOptions([OFFICIAL], "p", jobs=2, format=False)).files
    three = build(BuildOptions([OFFICIAL], "p", jobs=3, format=False)).files
    assert serial is not None and len(serial) > 400
    assert serial == parallel == three
