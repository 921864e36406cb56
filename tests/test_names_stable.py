"""Issue 13 § 4: a field's Python name depends on its own wire name and the set of
its siblings' names, never on their order; exact snake-case wire names keep their
name; ``atdata-gen check`` reports a Python name that changes meaning
(``FIELD_PYTHON_NAME_CHANGED``)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from atdata_gen.checks.compat import compare
from atdata_gen.ir.link import LinkedModel
from atdata_gen.naming import field_names, sample_field_name
from atdata_gen.pipeline import BuildOptions, compile_sources
from hypothesis import given
from hypothesis import strategies as st

from .conftest import flat_schema_record

CLI = [sys.executable, "-m", "atdata_gen.cli"]
I, S = {"type": "integer"}, {"type": "string"}


def _schema(version: str, props: dict[str, Any]) -> dict[str, Any]:
    return flat_schema_record(
        "Frame", version, props, [], array_formats={"ndarrayBytes": "1.1.0"}
    )


def _lexicon(props: dict[str, Any]) -> dict[str, Any]:
    record = {"type": "object", "properties": props}
    return {
        "lexicon": 1,
        "id": "com.ex.doc",
        "defs": {
            "main": {"type": "record", "key": "tid", "record": record},
            "view": {"type": "object", "properties": props},
        },
    }


def _compile(path: Path, doc: dict[str, Any]) -> LinkedModel:
    path.mkdir(parents=True)
    (path / "doc.json").write_text(json.dumps(doc, indent=1))
    result = compile_sources(BuildOptions([path]))
    assert result.model is not None and not result.reporter.has_errors
    return result.model


def _sample_names(model: LinkedModel) -> dict[str, str]:
    """Python name → wire name of the one sample schema."""
    (s,) = model.samples
    _, _, py = model.names.samples[(s.name, s.version)]
    return dict(zip(py, (f.name for f in s.fields), strict=True))


def _model_names(model: LinkedModel, obj: str) -> dict[str, str]:
    """Python name → wire name of the def ``obj``'s top-level object."""
    for d in model.schemas[0].defs:
        if d.id.name == obj:
            body: Any = d.body
            fields = (body.object if obj == "main" else body).fields
            py = model.names.fields[(d.id, ())]
            return dict(zip(py, (f.name for f in fields), strict=True))
    raise AssertionError(obj)


def test_issue_example_sample_schema_keeps_foo_bar(tmp_path: Path) -> None:
    """v1 has ``foo_bar``; v2 adds ``fooBar`` before it: ``foo_bar`` still names
    the integer field and the check reports no name change."""
    v1 = _compile(tmp_path / "v1", _schema("1.0.0", {"foo_bar": I}))
    v2 = _compile(tmp_path / "v2", _schema("1.1.0", {"fooBar": S, "foo_bar": I}))
    assert _sample_names(v1) == {"foo_bar": "foo_bar"}
    assert _sample_names(v2) == {"foo_bar": "foo_bar", "foo_bar_2": "fooBar"}
    rules = {f.rule for f in compare(v1, v2)}
    assert rules == {"FIELD_OPTIONAL_ADDED"}


def test_issue_example_record_models_keep_foo_bar(tmp_path: Path) -> None:
    """The same for Lexicon record models and plain objects."""
    v1 = _compile(tmp_path / "v1", _lexicon({"foo_bar": I}))
    v2 = _compile(tmp_path / "v2", _lexicon({"fooBar": S, "foo_bar": I}))
    for obj in ("main", "view"):
        assert _model_names(v1, obj) == {"foo_bar": "foo_bar"}
        assert _model_names(v2, obj) == {"foo_bar": "foo_bar", "foo_bar_2": "fooBar"}
    assert "FIELD_PYTHON_NAME_CHANGED" not in {f.rule for f in compare(v1, v2)}


def test_generated_attribute_follows_the_wire_name(tmp_path: Path) -> None:
    """The generated sample class reads ``foo_bar`` from the ``foo_bar`` key."""
    src = tmp_path / "src"
    src.mkdir()
    doc = _schema("1.1.0", {"fooBar": S, "foo_bar": I})
    (src / "frame.json").write_text(json.dumps(doc))
    out = tmp_path / "out"
    subprocess.run(
        [*CLI, "build", str(src), "--out", str(out), "--package", "names_pkg", "-q"],
        check=True,
    )
    code = (out / "names_pkg" / "samples" / "frame_v1_1_0.py").read_text()
    assert '_sample.FieldSpec("foo_bar", "foo_bar", "int", optional=True)' in code
    assert '_sample.FieldSpec("foo_bar_2", "fooBar", "str", optional=True)' in code
    assert "    foo_bar: int | None = None\n" in code


def test_name_change_is_reported_for_samples_and_models(tmp_path: Path) -> None:
    """An added exact name takes the name a converted one had: reported as an
    error for both kinds of schema, at the field that now holds the name."""
    a = _compile(tmp_path / "s1", _schema("1.0.0", {"fooBar": I}))
    b = _compile(tmp_path / "s2", _schema("1.1.0", {"foo_bar": S, "fooBar": I}))
    found = [f for f in compare(a, b) if f.rule == "FIELD_PYTHON_NAME_CHANGED"]
    assert len(found) == 1
    assert found[0].current.pointer == "/schema/properties/foo_bar"
    assert "now names property 'foo_bar'" in found[0].message
    assert "it named 'fooBar' (now 'foo_bar_2')" in found[0].message
    rules = {f.rule for f in compare(a, b)}
    assert "SCHEMA_VERSION_BUMP_TOO_SMALL" in rules  # a generated-API break: MAJOR

    c = _compile(tmp_path / "l1", _lexicon({"fooBar": I}))
    d = _compile(tmp_path / "l2", _lexicon({"foo_bar": S, "fooBar": I}))
    found = [f for f in compare(c, d) if f.rule == "FIELD_PYTHON_NAME_CHANGED"]
    assert sorted(f.message.split(" of ")[1].split(" ")[0] for f in found) == [
        "com.ex.doc",
        "com.ex.doc#view",
    ]


@pytest.mark.parametrize(
    ("wires", "names"),
    [
        (["foo_bar", "fooBar"], ["foo_bar", "foo_bar_2"]),
        (["fooBar", "foo_bar"], ["foo_bar_2", "foo_bar"]),
        # converted names that collide: code-point order of the wire names decides
        (["fooBar", "FooBar", "foo-bar"], ["foo_bar_3", "foo_bar", "foo_bar_2"]),
        # a suffix never takes an exact name
        (["fooBar", "foo_bar", "foo_bar_2"], ["foo_bar_3", "foo_bar", "foo_bar_2"]),
        # escaped names are converted names: ``class_`` keeps its name
        (["class", "class_"], ["class__2", "class_"]),
    ],
)
def test_collision_rule(wires: list[str], names: list[str]) -> None:
    assert list(field_names(wires)) == names


_WIRE = st.sampled_from(
    ["foo_bar", "fooBar", "FooBar", "foo-bar", "foo_bar_2", "fooBar2", "class",
     "class_", "type", "$type", "1st", "f_1st", "a", "A", "keys", "pack"]
)  # fmt: skip


@given(st.lists(_WIRE, unique=True, min_size=1), st.randoms())
def test_names_do_not_depend_on_order(wires: list[str], rnd: Any) -> None:
    for base in (None, sample_field_name):
        kw = {} if base is None else {"base": base}
        names = dict(zip(wires, field_names(wires, **kw), strict=True))
        shuffled = list(wires)
        rnd.shuffle(shuffled)
        again = dict(zip(shuffled, field_names(shuffled, **kw), strict=True))
        assert names == again
        assert len(set(names.values())) == len(wires)
        assert all(n.isidentifier() for n in names.values())


@given(st.lists(_WIRE, unique=True, min_size=1), _WIRE)
def test_adding_a_sibling_keeps_exact_names(wires: list[str], extra: Any) -> None:
    if extra in wires:
        return
    before = dict(zip(wires, field_names(wires), strict=True))
    after = dict(zip([*wires, extra], field_names([*wires, extra]), strict=True))
    for w, name in before.items():
        if w == name:  # an exact snake-case name never moves
            assert after[w] == name
