"""Lexicons are untrusted input: hostile names, descriptions, defaults and consts can
never become code. Property test: random hostile Lexicons compile into modules that
(1) parse, (2) contain only the statement and call shapes the emitter is allowed to
produce (checked on the AST by ``tests/fuzz/generated_code.py``: so importing them
can execute nothing else), and
(3) import, validate and dump without side effects."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

from atdata_gen.diagnostics import Reporter
from atdata_gen.pipeline import BuildOptions, build
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .fuzz.generated_code import (
    HOSTILE_TEXT,
    check_files,
    check_paths,
)

TEXT = st.one_of(
    st.sampled_from(HOSTILE_TEXT),
    st.text(max_size=12),
    st.lists(st.sampled_from(HOSTILE_TEXT), min_size=1, max_size=3).map("".join),
)
NAME = TEXT.filter(lambda s: s != "")


def _field(data: st.DataObject) -> dict[str, object]:
    kind = data.draw(
        st.sampled_from(["string", "integer", "boolean", "object-ref", "array"])
    )
    desc = data.draw(TEXT)
    if kind == "string":
        field: dict[str, object] = {"type": "string", "description": desc}
        choice = data.draw(st.sampled_from(["default", "const", "enum", "known", ""]))
        if choice == "default":
            field["default"] = data.draw(TEXT)
        elif choice == "const":
            field["const"] = data.draw(TEXT)
        elif choice == "enum":
            field["enum"] = data.draw(
                st.lists(TEXT, min_size=1, max_size=3, unique=True)
            )
        elif choice == "known":
            field["knownValues"] = data.draw(st.lists(TEXT, max_size=3))
        return field
    if kind == "integer":
        return {
            "type": "integer",
            "description": desc,
            "default": data.draw(st.integers(-(2**70), 2**70)),
        }
    if kind == "boolean":
        return {
            "type": "boolean",
            "description": desc,
            "const": data.draw(st.booleans()),
        }
    if kind == "array":
        return {"type": "array", "items": {"type": "string"}, "description": desc}
    return {"type": "ref", "ref": "#other", "description": desc}


@st.composite
def hostile_lexicon(draw: st.DrawFn) -> dict[str, object]:
    data = draw(st.data())
    props = {draw(NAME): _field(data) for _ in range(draw(st.integers(1, 6)))}
    defs: dict[str, object] = {
        "main": {
            "type": "record",
            "key": "tid",
            "description": draw(TEXT),
            "record": {
                "type": "object",
                "properties": props,
                "required": [k for k in props if draw(st.booleans())],
            },
        },
        "other": {
            "type": "object",
            "description": draw(TEXT),
            "properties": {draw(NAME): {"type": "string"}},
        },
    }
    for _ in range(draw(st.integers(0, 3))):
        defs[draw(NAME)] = draw(
            st.sampled_from(
                [
                    {"type": "token", "description": draw(TEXT)},
                    {"type": "object", "properties": {draw(NAME): {"type": "integer"}}},
                    {"type": "string", "knownValues": [draw(TEXT)]},
                ]
            )
        )
    return {
        "lexicon": 1,
        "id": "com.example.hostile",
        "description": draw(TEXT),
        "defs": defs,
    }


_COUNTER = [0]


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(doc=hostile_lexicon())
def test_hostile_lexicons_cannot_inject_code(
    tmp_path: Path, doc: dict[str, object]
) -> None:
    canary = Path("/tmp/atdata-gen-pwned")
    canary.unlink(missing_ok=True)
    _COUNTER[0] += 1
    case = tmp_path / f"case{_COUNTER[0]}"
    src = case / "src" / "hostile.json"
    src.parent.mkdir(parents=True)
    src.write_text(json.dumps(doc), encoding="utf-8")
    reporter = Reporter()
    result = build(BuildOptions([src], f"hostile{_COUNTER[0]}", jobs=1), reporter)
    if result.files is None:
        # Contradictions (e.g. a const outside its enum) are reported, not emitted.
        assert reporter.errors
        return
    package = f"hostile{_COUNTER[0]}"
    assert result.model is not None
    check_paths(result.files)
    check_files(result.model, result.files)
    for rel, text in result.files.items():
        if rel.endswith(".py"):
            out = case / "out" / package / rel
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(text, encoding="utf-8")
    sys.path.insert(0, str(case / "out"))
    try:
        module = importlib.import_module(f"{package}.com.example.hostile")
        record_cls = next(
            getattr(module, n)
            for n in module.__all__
            if getattr(getattr(module, n), "lex_def", None) == "main"
        )
        record_cls.model_rebuild()
        assert record_cls.lex_type == "com.example.hostile"
    finally:
        sys.path.remove(str(case / "out"))
    assert not canary.exists(), "a Lexicon executed code"
