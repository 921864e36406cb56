"""Sample schemas (issue 13 § 7): JSON Schema ``enum`` on string fields becomes a
``typing.Literal`` checked by the codec (other enums are located
``SCHEMA_UNSUPPORTED`` errors, never dropped); every schema name gets an alias
module ``samples/<name>.py`` re-exporting its highest version."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack  # type: ignore[import-untyped]
import pytest
from atdata_gen.diagnostics import Reporter
from atdata_gen.frontend.schema_record import parse_schema_record
from atdata_gen.sources import load_text
from atdata_runtime.samples import SampleFormatError, generated_sample_classes
from atdata_runtime.samples.schema import convert_schema_record, schema_record

from .conftest import ROOT, compile_to, flat_schema_record


def _record(name: str, version: str, props: dict[str, Any]) -> dict[str, Any]:
    return flat_schema_record(name, version, props)


PET = _record(
    "Pet",
    "1.0.0",
    {
        "kind": {"type": "string", "enum": ["cat", "dog"]},
        "tags": {"type": "array", "items": {"type": "string", "enum": ["a", "b"]}},
        "name": {"type": "string"},
    },
)


def _build(tmp: Path, records: list[dict[str, Any]], package: str) -> Path:
    src = tmp / "src"
    src.mkdir(parents=True, exist_ok=True)
    for i, r in enumerate(records):
        (src / f"r{i}.json").write_text(json.dumps(r))
    return compile_to(tmp / "out", [src], package)


@pytest.fixture(scope="module")
def pets(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    tmp = tmp_path_factory.mktemp("pets")
    out = _build(tmp, [PET], "pets_pkg")
    sys.path.insert(0, str(out))
    try:
        yield out
    finally:
        sys.path.remove(str(out))


def _errors(record: dict[str, Any]) -> list[tuple[str, str | None]]:
    reporter = Reporter()
    doc = load_text("r.json", json.dumps(record, indent=1).encode(), reporter)
    assert doc is not None
    assert parse_schema_record(doc, reporter) is None
    return [(d.rule, d.span.pointer) for d in reporter.errors]


# -- enum ---------------------------------------------------------------------------


def test_string_enum_is_a_literal(pets: Path) -> None:
    source = (pets / "pets_pkg" / "samples" / "pet_v1_0_0.py").read_text()
    assert 'kind: _t.Literal["cat", "dog"]' in source
    assert 'tags: list[_t.Literal["a", "b"]]' in source
    assert "name: str" in source
    cls = importlib.import_module("pets_pkg.samples.pet_v1_0_0").Pet
    (kind,) = [f for f in cls.sample_fields if f.wire == "kind"]
    assert kind.enum == ("cat", "dog")
    assert typing.get_type_hints(cls)["kind"] == typing.Literal["cat", "dog"]


def test_codec_checks_the_enum(pets: Path) -> None:
    cls = importlib.import_module("pets_pkg.samples.pet_v1_0_0").Pet
    ok = cls(kind="cat", tags=["a"], name="x")
    assert cls.unpack(ok.pack(), validate=True) == ok
    with pytest.raises(SampleFormatError, match=r"'kind': 'cow' is not one of"):
        cls(kind="cow", tags=[], name="x").pack()
    with pytest.raises(SampleFormatError, match=r"'tags': 'c' is not one of"):
        cls(kind="dog", tags=["a", "c"], name="x").pack()
    payload = msgpack.packb({"kind": "cow", "tags": ["a"], "name": "x"})
    assert cls.unpack(payload).kind == "cow"  # like dtype/shape: checked on demand
    with pytest.raises(SampleFormatError, match="kind") as info:
        cls.unpack(payload, member="k.msgpack", validate=True)
    assert "k.msgpack" in str(info.value)


def test_schema_record_keeps_the_enum(pets: Path) -> None:
    cls = importlib.import_module("pets_pkg.samples.pet_v1_0_0").Pet
    again = schema_record(cls, form="flat", created_at=PET["createdAt"])
    assert json.dumps(again) == json.dumps(PET)
    envelope = schema_record(cls, created_at=PET["createdAt"])
    assert envelope == convert_schema_record(PET, "envelope")


def test_enum_module_is_mypy_strict_clean_and_typed(pets: Path, tmp_path: Path) -> None:
    use = tmp_path / "use_pet.py"
    use.write_text(
        "from typing import Literal, assert_type\n"
        "from pets_pkg.samples.pet import Pet\n"
        "p = Pet(kind='cat', tags=['b'], name='n')\n"
        "assert_type(p.kind, Literal['cat', 'dog'])\n"
        "bad = Pet(kind='cow', tags=[], name='n')\n"
    )
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--config-file",
            str(ROOT / "pyproject.toml"),
            str(use),
        ],
        cwd=pets,
        capture_output=True,
        text=True,
        env={**__import__("os").environ, "MYPYPATH": str(pets)},
    )
    lines = [x for x in proc.stdout.splitlines() if ": error:" in x]
    assert len(lines) == 1 and "use_pet.py:5:" in lines[0] and "kind" in lines[0], (
        proc.stdout
    )


@pytest.mark.parametrize(
    ("prop", "rule", "where"),
    [
        ({"type": "integer", "enum": [1, 2]}, "SCHEMA_UNSUPPORTED", "/enum"),
        ({"type": "string", "enum": "cat"}, "SCHEMA_UNSUPPORTED", "/enum"),
        ({"type": "string", "enum": []}, "SCHEMA_UNSUPPORTED", "/enum"),
        ({"type": "string", "enum": ["a", 1]}, "SCHEMA_UNSUPPORTED", "/enum"),
        ({"type": "string", "enum": ["a", "a"]}, "SCHEMA_FIELD", "/enum"),
        (
            {"type": "string", "format": "byte", "enum": ["AA=="]},
            "SCHEMA_UNSUPPORTED",
            "/enum",
        ),
    ],
)
def test_other_enums_are_refused_where_they_are(
    prop: dict[str, Any], rule: str, where: str
) -> None:
    record = _record("E", "1.0.0", {"x": prop})
    assert _errors(record) == [(rule, "/schema/properties/x" + where)]
    envelope = convert_schema_record(record, "envelope")
    assert _errors(envelope) == [(rule, "/schema/content/properties/x" + where)]


def test_check_sees_enum_changes(tmp_path: Path) -> None:
    from atdata_gen.checks.runner import run_check

    v2 = json.loads(json.dumps(PET))
    v2["version"] = "1.1.0"
    v2["schema"]["properties"]["kind"]["enum"] = ["cat", "dog", "eel"]
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "p.json").write_text(json.dumps(PET))
    (tmp_path / "b" / "p.json").write_text(json.dumps(v2))
    result = run_check([tmp_path / "b"], [str(tmp_path / "a")])
    assert "ENUM_EXTENDED" in {f.rule for f in result.findings}


# -- alias modules -------------------------------------------------------------------


def _thing(version: str, extra: str | None = None) -> dict[str, Any]:
    props: dict[str, Any] = {"x": {"type": "integer"}}
    if extra:
        props[extra] = {"type": "string"}
    return _record("Thing", version, props)


def test_alias_module_follows_the_highest_version(tmp_path: Path) -> None:
    records = [
        _thing("1.0.0"),
        _thing("1.10.0", "b"),
        _thing("2.0.0-rc.1", "c"),
        _thing("1.9.0", "a"),
        _record("thing_v1_0_0", "3.0.0", {"y": {"type": "boolean"}}),
    ]
    out = _build(tmp_path / "one", records, "alias_pkg")
    samples = out / "alias_pkg" / "samples"
    names = sorted(p.name for p in samples.glob("*.py"))
    assert names == [
        "__init__.py",
        "thing.py",
        "thing_v1_0_0.py",
        "thing_v1_0_0_2.py",  # alias of schema 'thing_v1_0_0': the name is taken
        "thing_v1_0_0_v3_0_0.py",
        "thing_v1_10_0.py",
        "thing_v1_9_0.py",
        "thing_v2_0_0_rc_1.py",
    ]
    text = (samples / "thing.py").read_text()
    assert "from .thing_v2_0_0_rc_1 import Thing, ThingBatch" in text
    sys.path.insert(0, str(out))
    try:
        alias = importlib.import_module("alias_pkg.samples.thing")
        pinned = importlib.import_module("alias_pkg.samples.thing_v2_0_0_rc_1")
        assert alias.Thing is pinned.Thing and alias.ThingBatch is pinned.ThingBatch
        assert alias.__all__ == ["Thing", "ThingBatch"]
        other = importlib.import_module("alias_pkg.samples.thing_v1_0_0_2")
        assert other.ThingV100.schema_version == "3.0.0"
        classes = generated_sample_classes("alias_pkg")
        assert len(classes) == 5  # aliases re-export, they define nothing
    finally:
        sys.path.remove(str(out))
    # the release outranks its pre-release; the output is the same for any order
    again = _build(
        tmp_path / "two", [_thing("2.0.0", "d"), *reversed(records)], "alias_pkg"
    )
    text = (again / "alias_pkg" / "samples" / "thing.py").read_text()
    assert "from .thing_v2_0_0 import Thing, ThingBatch" in text
    third = _build(tmp_path / "three", [*records, _thing("2.0.0", "d")], "alias_pkg")
    assert (third / "alias_pkg" / "samples" / "thing.py").read_text() == text
