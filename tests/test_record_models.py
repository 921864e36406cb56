"""Record models: the gaps the interop vectors hide (issue 13 § 6).

``unknown`` is a plain object; a record validated as a record carries its bare NSID
as ``$type``; ``$bytes`` round-trips whatever valid form it came in; every error
message renders; XRPC params parse query strings.
"""

from __future__ import annotations

import base64
import importlib
import inspect
import json
import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from atdata_runtime.lex import models as lex_models
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from .conftest import compile_to

CID = "bafkreibme22gw2h7y2h7tg2fhqotaqjucnbc24deqo72b6mkl2egezxhvy"

LEXICONS: dict[str, dict[str, Any]] = {
    "thing": {
        "lexicon": 1,
        "id": "com.example.gaps.thing",
        "defs": {
            "main": {
                "type": "record",
                "key": "tid",
                "record": {
                    "type": "object",
                    "required": ["count"],
                    "nullable": ["maybe"],
                    "properties": {
                        "count": {"type": "integer", "minimum": 0, "maximum": 10},
                        "level": {"type": "integer", "enum": [1, 2]},
                        "flag": {"type": "boolean"},
                        "kind": {"type": "string", "enum": ["a", "b"]},
                        "title": {
                            "type": "string",
                            "maxLength": 8,
                            "minLength": 2,
                            "maxGraphemes": 4,
                            "minGraphemes": 2,
                        },
                        "when": {"type": "string", "format": "datetime"},
                        "data": {"type": "bytes", "minLength": 1, "maxLength": 4},
                        "raw": {"type": "bytes"},
                        "link": {"type": "cid-link"},
                        "pic": {
                            "type": "blob",
                            "accept": ["image/png"],
                            "maxSize": 10,
                        },
                        "extra": {"type": "unknown"},
                        "tags": {
                            "type": "array",
                            "items": {"type": "string"},
                            "maxLength": 2,
                        },
                        "maybe": {"type": "string"},
                        "nested": {"type": "ref", "ref": "#demoObject"},
                        "open": {
                            "type": "union",
                            "refs": ["#demoObject", "com.example.gaps.solo"],
                        },
                        "closed": {
                            "type": "union",
                            "refs": ["#demoObject", "com.example.gaps.solo"],
                            "closed": True,
                        },
                    },
                },
            },
            "demoObject": {
                "type": "object",
                "properties": {"n": {"type": "integer"}},
            },
        },
    },
    "solo": {
        "lexicon": 1,
        "id": "com.example.gaps.solo",
        "defs": {"main": {"type": "object", "properties": {"s": {"type": "string"}}}},
    },
    "list": {
        "lexicon": 1,
        "id": "com.example.gaps.list",
        "defs": {
            "main": {
                "type": "query",
                "parameters": {
                    "type": "params",
                    "required": ["q"],
                    "properties": {
                        "q": {"type": "string", "maxLength": 10},
                        "limit": {
                            "type": "integer",
                            "minimum": 1,
                            "maximum": 100,
                            "default": 50,
                        },
                        "reverse": {"type": "boolean"},
                        "tags": {"type": "array", "items": {"type": "string"}},
                        "ids": {"type": "array", "items": {"type": "integer"}},
                        "sort": {"type": "string", "knownValues": ["asc", "desc"]},
                        "filter": {"type": "unknown"},
                    },
                },
                "output": {"encoding": "application/json"},
            },
        },
    },
}


@pytest.fixture(scope="module")
def gaps(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, ModuleType]]:
    src = tmp_path_factory.mktemp("gaps_src")
    for name, doc in LEXICONS.items():
        (src / f"{name}.json").write_text(json.dumps(doc), encoding="utf-8")
    out = compile_to(tmp_path_factory.mktemp("gaps_out"), [src], "gaps_pkg")
    sys.path.insert(0, str(out))
    try:
        yield {
            name: importlib.import_module(f"gaps_pkg.com.example.gaps.{name}")
            for name in LEXICONS
        }
    finally:
        sys.path.remove(str(out))
        for mod in [m for m in sys.modules if m.startswith("gaps_pkg")]:
            del sys.modules[mod]


T = "com.example.gaps.thing"


def _errors(fn: Callable[[], Any]) -> list[dict[str, Any]]:
    with pytest.raises(ValidationError) as info:
        fn()
    return info.value.errors()  # type: ignore[return-value]


def _types(fn: Callable[[], Any]) -> set[tuple[str, tuple[Any, ...]]]:
    return {(e["type"], tuple(e["loc"])) for e in _errors(fn)}


# -- unknown is a plain object ----------------------------------------------------------
@pytest.mark.parametrize(
    "value",
    [
        {"$bytes": "AQ"},
        {"$link": CID},
        {"$type": "blob", "ref": {"$link": CID}, "mimeType": "a/b", "size": 1},
        {"$link": CID, "other": 1},
    ],
)
def test_unknown_rejects_data_model_specials(
    gaps: dict[str, ModuleType], value: dict[str, Any]
) -> None:
    thing = gaps["thing"].Thing
    record = {"$type": T, "count": 1, "extra": value}
    assert _types(lambda: thing.from_wire(record)) == {("unknown_special", ("extra",))}
    assert _types(lambda: thing.from_json(json.dumps(record))) == {
        ("unknown_special", ("extra",))
    }


def test_unknown_accepts_plain_objects(gaps: dict[str, ModuleType]) -> None:
    thing = gaps["thing"].Thing
    # Specials may sit *inside* the object; a `$type` other than blob is an object's.
    extra = {"$type": "com.example.x#y", "b": {"$bytes": "AQ"}, "l": [{"$link": CID}]}
    record = {"$type": T, "count": 1, "extra": extra}
    assert thing.from_wire(record).to_wire() == record
    for bad in ({"$type": 5}, {"$type": ""}):
        assert _types(lambda b=bad: thing.from_wire(dict(record, extra=b))) == {
            ("unknown_type", ("extra",))
        }


# -- a record carries $type -------------------------------------------------------------
def test_record_requires_type(gaps: dict[str, ModuleType]) -> None:
    thing = gaps["thing"].Thing
    for parse in (thing.from_wire, lambda r: thing.from_json(json.dumps(r))):
        assert _types(lambda p=parse: p({"count": 1})) == {
            ("record_type_missing", ("$type",))
        }
        assert _types(lambda p=parse: p({"$type": f"{T}#main", "count": 1})) == {
            ("record_type_main", ("$type",))
        }
        # The $type error comes with the record's other errors.
        assert _types(lambda p=parse: p({"count": 11})) == {
            ("record_type_missing", ("$type",)),
            ("less_than_equal", ("count",)),
        }
        assert _types(
            lambda p=parse: p({"$type": "com.example.other", "count": 1})
        ) == {("literal_error", ("$type",))}
        assert parse({"$type": T, "count": 1}).to_wire() == {"$type": T, "count": 1}


def test_nested_objects_may_omit_type(gaps: dict[str, ModuleType]) -> None:
    mod = gaps["thing"]
    record = {"$type": T, "count": 1, "nested": {"n": 1}}
    assert mod.Thing.from_wire(record).to_wire() == record
    # An object def validated alone needs no $type either; `nsid#main` names a main
    # object def (Lexicon spec, union and ref resolution).
    solo = gaps["solo"].Solo
    assert solo.from_wire({"s": "x"}).to_wire() == {"s": "x"}
    assert solo.from_wire({"$type": "com.example.gaps.solo#main"}).py_type.endswith(
        "#main"
    )
    # Union members still need it.
    assert _types(lambda: mod.Thing.from_wire(dict(record, open={"n": 1}))) == {
        ("union_type", ("open",))
    }


def test_record_built_in_python_writes_type(gaps: dict[str, ModuleType]) -> None:
    mod = gaps["thing"]
    built = mod.Thing(count=2, nested=mod.DemoObject(n=1))
    wire = built.to_wire()
    assert wire == {"$type": T, "count": 2, "nested": {"n": 1}}
    assert mod.Thing.from_wire(wire) == mod.Thing.from_wire(wire)
    assert mod.Thing.from_json(built.to_json()).to_wire() == wire


def test_validate_record_goes_through_the_record_path() -> None:
    from atdata_runtime.atmosphere.records import RecordValidationError, validate_record

    label = {
        "$type": "science.alt.dataset.label",
        "name": "x",
        "datasetUri": "at://did:plc:abc/science.alt.dataset.entry/3kabc2xyz22",
        "createdAt": "2026-01-01T00:00:00Z",
    }
    uri = "at://did:plc:abc/science.alt.dataset.label/3kabc2xyz22"
    assert validate_record(uri, "science.alt.dataset.label", label).to_wire() == label
    with pytest.raises(RecordValidationError, match=r"\$type"):
        validate_record(
            uri, "science.alt.dataset.label", dict(label, **{"$type": "x.y.z"})
        )


# -- $bytes round trip ------------------------------------------------------------------
@pytest.mark.parametrize("text", ["123", "AQ==", "AR", "AQ", "AAEC", "", "AAE=", "/+8"])
def test_bytes_round_trip_non_canonical(gaps: dict[str, ModuleType], text: str) -> None:
    thing = gaps["thing"].Thing
    record = {"$type": T, "count": 1, "raw": {"$bytes": text}}
    parsed = thing.from_wire(record)
    assert parsed.to_wire() == record
    assert json.loads(thing.from_json(json.dumps(record)).to_json()) == record
    padded = text + "=" * (-len(text) % 4)
    assert parsed.raw == base64.b64decode(padded)


def test_bytes_built_in_python_are_canonical(gaps: dict[str, ModuleType]) -> None:
    mod = gaps["thing"]
    assert mod.Thing(count=1, raw=b"\xd7m").to_wire()["raw"] == {"$bytes": "120"}
    parsed = mod.Thing.from_wire({"$type": T, "count": 1, "raw": {"$bytes": "123"}})
    assert parsed.raw == b"\xd7m" and bytes(parsed.raw) == b"\xd7m"
    assert mod.Thing(count=1, raw=bytes(parsed.raw)).to_wire()["raw"] == {
        "$bytes": "120"
    }


@given(
    st.binary(max_size=40),
    st.booleans(),
    st.integers(min_value=0, max_value=15),
)
def test_bytes_round_trip_every_valid_value(data: bytes, pad: bool, bits: int) -> None:
    text = base64.b64encode(data).decode().rstrip("=")
    if text and len(text) % 4:
        # Non-zero trailing bits: the last character's unused low bits.
        alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
        unused = 4 if len(text) % 4 == 2 else 2
        last = alphabet.index(text[-1]) | (bits % (1 << unused))
        text = text[:-1] + alphabet[last]
    if pad:
        text += "=" * (-len(text) % 4)
    bytes_type = lex_models.Bytes()
    value = bytes_type._validate({"$bytes": text})
    assert value == data
    assert lex_models._bytes_to_wire(value) == {"$bytes": text}


@pytest.mark.parametrize(
    "text", ["A", "AQ=", "AQ==AQ==", "a-_b", " AQ", "AQ\n", "===="]
)
def test_bytes_invalid_base64_rejected(gaps: dict[str, ModuleType], text: str) -> None:
    thing = gaps["thing"].Thing
    record = {"$type": T, "count": 1, "raw": {"$bytes": text}}
    assert _types(lambda: thing.from_wire(record)) == {("bytes_base64", ("raw",))}


# -- every error message renders --------------------------------------------------------
def _mutations(mod: ModuleType) -> list[tuple[str, Callable[[], Any]]]:
    thing, demo = mod.Thing, mod.DemoObject
    base: dict[str, Any] = {"$type": T, "count": 1}
    blob = {"$type": "blob", "ref": {"$link": CID}, "mimeType": "image/png", "size": 1}

    def rec(**kw: Any) -> Callable[[], Any]:
        return lambda: thing.from_wire({**base, **kw})

    return [
        ("utf8 long", rec(title="ééééé")),
        ("utf8 short", rec(title="a")),
        ("graphemes long", rec(title="abcde")),
        ("graphemes short", rec(title="é")),
        ("format", rec(when="yesterday")),
        ("base64", rec(raw={"$bytes": "A"})),
        ("bytes type", rec(raw="AQ")),
        ("bytes long", rec(data={"$bytes": "AAAAAAA"})),
        ("bytes short", rec(data={"$bytes": ""})),
        ("blob large", rec(pic=dict(blob, size=11))),
        ("blob mime", rec(pic=dict(blob, mimeType="text/plain"))),
        ("unknown special", rec(extra={"$bytes": "AQ"})),
        ("unknown type", rec(extra={"$type": 1})),
        ("open union no type", rec(open={"n": 1})),
        ("closed union", rec(closed={"$type": "com.example.nope"})),
        ("closed union member", rec(closed={"$type": f"{T}#demoObject", "n": "x"})),
        ("record type missing", lambda: thing.from_wire({"count": 1})),
        ("record type main", rec(**{"$type": f"{T}#main"})),
        ("record type wrong", rec(**{"$type": "com.example.nope"})),
        ("object type wrong", lambda: demo.from_wire({"$type": f"{T}#main"})),
        ("int range", rec(count=11)),
        ("int strict", rec(count=True)),
        ("int enum", rec(level=3)),
        ("bool strict", rec(flag=1)),
        ("str enum", rec(kind="c")),
        ("array long", rec(tags=["a", "b", "c"])),
        ("array type", rec(tags="a")),
        ("not nullable", rec(title=None)),
        ("required", lambda: thing.from_wire({"$type": T})),
        ("cid link", rec(link={"$link": "x"})),
        ("cid link extra", rec(link={"$link": CID, "x": 1})),
        ("not an object", lambda: thing.from_wire([])),
        ("query integer", lambda: mod.params.from_query({"q": "x", "limit": "2x"})),
        ("query boolean", lambda: mod.params.from_query({"q": "x", "reverse": "yes"})),
        ("query repeated", lambda: mod.params.from_query("q=x&limit=1&limit=2")),
        ("query json", lambda: mod.params.from_query({"q": "x", "filter": "{"})),
        ("query text", lambda: mod.params.from_query({"q": "x", "ids": [1]})),
    ]


_PLACEHOLDER = re.compile(r"\{\w+(?:![rsa])?(?::[^}]*)?\}")


def test_every_error_message_renders(gaps: dict[str, ModuleType]) -> None:
    mod = ModuleType("m")
    mod.Thing = gaps["thing"].Thing  # type: ignore[attr-defined]
    mod.DemoObject = gaps["thing"].DemoObject  # type: ignore[attr-defined]
    mod.params = gaps["list"].ListParams  # type: ignore[attr-defined]
    seen: dict[str, str] = {}
    for what, fn in _mutations(mod):
        errors = _errors(fn)
        for e in errors:
            msg = e["msg"]
            seen[e["type"]] = msg
            assert not _PLACEHOLDER.search(msg), (what, msg)
            assert "{{" not in msg and "}}" not in msg, (what, msg)
            assert not re.search(r"#\w+#main", msg), (what, msg)
            assert "#main" not in msg or what.startswith(("record", "object")), (
                what,
                msg,
            )
    # Every error kind the runtime defines was rendered at least once.
    source = inspect.getsource(lex_models)
    kinds = set(re.findall(r'_err\(\s*"(\w+)"', source)) | set(
        re.findall(r'custom_error_type="(\w+)"', source)
    )
    assert kinds, "no error kinds found in the runtime source"
    assert kinds <= set(seen), sorted(kinds - set(seen))
    assert "'text/plain'" in seen["blob_mime_type"]
    assert seen["union_type"].endswith(
        "com.example.gaps.solo, com.example.gaps.thing#demoObject"
    ), seen["union_type"]


# -- XRPC params from query strings -----------------------------------------------------
def test_params_from_query_mapping(gaps: dict[str, ModuleType]) -> None:
    params = gaps["list"].ListParams
    p = params.from_query(
        {
            "q": "hi",
            "limit": "20",
            "reverse": "true",
            "tags": ["a", "b"],
            "ids": ["1", "-2"],
            "sort": "asc",
            "filter": '{"x": 1}',
        }
    )
    assert (p.q, p.limit, p.reverse, p.tags, p.ids) == (
        "hi",
        20,
        True,
        ["a", "b"],
        [1, -2],
    )
    assert p.sort == "asc" and p.filter_ == {"x": 1}
    assert params.from_query({"q": "hi"}).limit == 50
    assert params.from_query({"q": "hi", "reverse": "false"}).reverse is False
    # One value of an array parameter is a one-element array.
    assert params.from_query({"q": "hi", "tags": "a"}).tags == ["a"]


def test_params_from_query_string(gaps: dict[str, ModuleType]) -> None:
    params = gaps["list"].ListParams
    p = params.from_query("?q=h%C3%A9+x&limit=20&tags=a&tags=b&ids=3&other=k")
    assert (p.q, p.limit, p.tags, p.ids) == ("hé x", 20, ["a", "b"], [3])
    assert p.to_wire()["other"] == "k"  # unknown parameters are kept as text


def test_params_from_query_errors_are_located(gaps: dict[str, ModuleType]) -> None:
    params = gaps["list"].ListParams
    assert _types(
        lambda: params.from_query("q=x&limit=20.5&ids=1&ids=x&reverse=1")
    ) == {
        ("query_integer", ("limit",)),
        ("query_integer", ("ids", 1)),
        ("query_boolean", ("reverse",)),
    }
    assert _types(lambda: params.from_query("q=x&limit=0")) == {
        ("greater_than_equal", ("limit",))
    }
    assert _types(lambda: params.from_query("limit=5")) == {("missing", ("q",))}
    assert _types(lambda: params.from_query("q=x&q=y")) == {("query_repeated", ("q",))}
    # JSON from_wire stays strict: "20" is no integer there.
    assert _types(lambda: params.from_wire({"q": "x", "limit": "20"})) == {
        ("int_type", ("limit",))
    }


def test_params_metadata_comes_from_the_emitter(gaps: dict[str, ModuleType]) -> None:
    params = gaps["list"].ListParams
    assert params.lex_params == {
        "q": "string",
        "limit": "integer",
        "reverse": "boolean",
        "tags": "string[]",
        "ids": "integer[]",
        "sort": "string",
        "filter": "unknown",
    }


# -- README: "What the generated models do" ---------------------------------------------
README = Path(__file__).parents[1] / "README.md"


def _readme_block(heading: str) -> str:
    text = README.read_text(encoding="utf-8")
    section = text.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    m = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert m, f"no python block under {heading!r}"
    return m.group(1)


def test_readme_models_example_runs(
    corpus_package: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The README's example, run as written against the official Lexicons compiled
    as ``my_lexicons``."""
    code = _readme_block("What the generated models do")
    importlib.import_module(f"{corpus_package}.app.bsky.feed.post")
    for name in [m for m in sys.modules if m.split(".")[0] == corpus_package]:
        alias = "my_lexicons" + name[len(corpus_package) :]
        monkeypatch.setitem(sys.modules, alias, sys.modules[name])
    exec(compile(code, "README.md", "exec"), {})  # noqa: S102 (our own README)
