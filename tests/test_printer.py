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


def test_unvalidated_trees_equal_validated_ones_on_the_corpus() -> None:
    result = compile_sources(BuildOptions([OFFICIAL, ATDATA_LEXICONS], "p"))
    assert result.model is not None
    model, every = result.model, range(len(result.model.schemas))
    emit.name.cache_clear()  # shared name nodes: built validated here
    emit._dotted.cache_clear()
    checked = emit.module_trees(model, {}, every, validate=True)
    fast = emit.module_trees(model, {}, every, validate=False)
    assert len(checked) == len(fast) == 417
    for a, b in zip(checked, fast, strict=True):
        assert a is not b and a.deep_equals(b)
    # And the printed code is what emit_modules returns.
    assert [printer.print_module(t) for t in checked] == emit.emit_modules(
        model, {}, every
    )


def test_unvalidated_skips_validation_only_inside_the_block() -> None:
    with pytest.raises(cst.CSTValidationError):
        cst.SimpleString("not quoted")
    with emit.unvalidated():
        assert cst.SimpleString("not quoted").value == "not quoted"
    with pytest.raises(cst.CSTValidationError):
        cst.SimpleString("not quoted")
    with pytest.raises(ValueError, match="boom"), emit.unvalidated():
        raise ValueError("boom")
    with pytest.raises(cst.CSTValidationError):
        cst.SimpleString("not quoted")


def test_emission_in_the_callers_process_stays_validated(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Only the single-threaded worker processes skip libcst's validation: in the
    caller's process (small builds, compile_schema_record in a user's threads) a
    node built during emit_modules is still checked."""

    class Broken:
        def module(self) -> str:
            return cst.SimpleString("not quoted").value

    monkeypatch.setattr(emit, "_emitter", lambda *_: Broken())
    result = compile_sources(BuildOptions([OFFICIAL], "p"))
    assert result.model is not None
    with pytest.raises(cst.CSTValidationError):
        emit.emit_modules(result.model, {}, [0])


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


def _descriptions(value: object) -> list[str]:
    if isinstance(value, dict):
        found = [
            v for k, v in value.items() if k == "description" and isinstance(v, str)
        ]
        return found + [d for v in value.values() for d in _descriptions(v)]
    if isinstance(value, list):
        return [d for v in value for d in _descriptions(v)]
    return []


def test_fill_equals_textwrap_on_every_corpus_description_and_edge_cases() -> None:
    import json
    import random
    import textwrap

    texts = [
        d
        for path in sorted(OFFICIAL.rglob("*.json"))
        for d in _descriptions(json.loads(path.read_text(encoding="utf-8")))
    ]
    assert len(texts) > 1000
    rng = random.Random(17)
    alphabet = ["a", "bb", "-", "é", "\u00a0", "\u3000", "\t", " ", "\n", "x" * 90]
    texts += ["", " ", "word", "x" * 200, "a " * 100 + "y" * 100 + " z"]
    texts += [
        "".join(rng.choices(alphabet, k=rng.randint(0, 120))) for _ in range(3000)
    ]
    for text in texts:
        for width in (70, 76, 80, 10, 1):
            for para in (p.strip() for p in text.strip().split("\n\n")):
                want = textwrap.fill(
                    " ".join(para.split()),
                    width=width,
                    break_long_words=False,
                    break_on_hyphens=False,
                )
                assert emit._fill(para.split(), width) == want, (para, width)
