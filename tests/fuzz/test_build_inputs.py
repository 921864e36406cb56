"""Hostile build inputs, end to end: random Lexicons (several per build, random valid
NSIDs, refs between them, every def kind including XRPC and permission sets),
schema records and lens records, with hostile names, texts, nested data and odd
numbers, go through the whole compiler in-process.

Every input must either build (every emitted module passes the AST whitelist of
its kind in ``generated_code.py``, no path can leave the package, and every module
imports without side effects: no output, no file written, no change to the
environment, the working directory or ``sys.path``, and ``sys.modules`` gains only
the package's own modules), or be refused with error diagnostics that carry
registered rule IDs. An exception out of the compiler is a failure. Inputs deep
enough to exhaust the interpreter's stack run in a bounded child process
(``bounded.run_bounded``).

Fixed seeds (``derandomize=True``) and bounded ``max_examples``; the file runs in
well under a minute.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import math
import os
import string
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from atdata_gen.diagnostics import Reporter
from atdata_gen.explain import all_rule_ids
from atdata_gen.pipeline import BuildOptions, BuildResult, build
from hypothesis import HealthCheck, currently_in_test_context, event, given, settings
from hypothesis import strategies as st

from .bounded import run_bounded

# -- hostile text and names ------------------------------------------------------------
from .generated_code import (
    HOSTILE_TEXT,
    check_files,
    check_paths,
)

TEXT = st.one_of(
    st.sampled_from(HOSTILE_TEXT),
    st.text(max_size=8),
    st.lists(st.sampled_from(HOSTILE_TEXT), min_size=1, max_size=3).map("".join),
)
NAME = st.one_of(
    st.sampled_from([t for t in HOSTILE_TEXT if t]),
    st.text(min_size=1, max_size=8),
    st.lists(st.sampled_from(HOSTILE_TEXT), min_size=1, max_size=3)
    .map("".join)
    .filter(bool),
)

# NSID segments (atproto.com/specs/nsid): domain segments of letters, digits and
# hyphens (not at either end; only the first must start with a letter), a name
# segment of letters and digits starting with a letter; ≤ 63 chars each, ≤ 317 in
# all. Keywords, builtins, Windows-reserved device names, the generator's own
# package names and aliases, max lengths.
_SPECIAL_SEGMENTS = [
    "class",
    "import",
    "def",
    "none",
    "true",
    "async",
    "match",
    "case",
    "type",
    "print",
    "exec",
    "eval",
    "open",
    "os",
    "sys",
    "typing",
    "pydantic",
    "json",
    "str",
    "list",
    "init",
    "main",
    "con",
    "aux",
    "nul",
    "prn",
    "com1",
    "lpt9",
    "samples",
    "lenses",
    "defs",
    "t",
    "pd",
    "lex",
    "a" * 63,
]
_LETTERS = string.ascii_lowercase
_DOMAIN_TAIL = st.one_of(
    st.sampled_from([*_SPECIAL_SEGMENTS, "2", "8lex", "0a", "x-y", "a--b", "9-9"]),
    st.from_regex(r"[a-z0-9](?:[a-z0-9-]{0,6}[a-z0-9])?", fullmatch=True),
)
_TLD = st.one_of(
    st.sampled_from(["com", "org", "class", "con", "io", "x-y", "a" * 63]),
    st.from_regex(r"[a-z](?:[a-z0-9-]{0,4}[a-z0-9])?", fullmatch=True),
)
_NAME_SEGMENT = st.one_of(
    st.sampled_from(
        [
            "class",
            "None",
            "True",
            "def",
            "import",
            "print",
            "Con",
            "AUX",
            "nul",
            "Lpt1",
            "init",
            "main",
            "self",
            "fooBar",
            "FOOBar",
            "foo",
            "Foo",
            "defs",
            "samples",
            "x" + "y" * 62,
        ]
    ),
    st.from_regex(r"[a-zA-Z][a-zA-Z0-9]{0,7}", fullmatch=True),
)


@st.composite
def nsids(draw: st.DrawFn) -> str:
    """A valid NSID (checked with the runtime's own ``is_nsid``)."""
    from atdata_runtime.lex.formats import is_nsid

    if draw(st.integers(0, 9)) == 0:
        # As long as the spec allows: 317 characters.
        middle = ".".join(["a" * 63] * 4)
        nsid = f"com.{middle}.{'b' * (317 - 5 - len(middle) - 1)}"
    else:
        tail = draw(st.lists(_DOMAIN_TAIL, min_size=1, max_size=3))
        nsid = ".".join([draw(_TLD), *tail, draw(_NAME_SEGMENT)])
    assert is_nsid(nsid), nsid
    return nsid


# -- odd numbers -----------------------------------------------------------------------
class Raw(str):
    """JSON text written verbatim (numbers ``json.dumps`` cannot write)."""


ODD_NUMBERS: list[Any] = [
    0,
    -1,
    2**53 + 1,
    -(2**63),
    2**64,
    10**40,
    1.5,
    -2.25,
    1e-300,
    Raw("1e400"),
    Raw("-1e400"),
    Raw("NaN"),
    Raw("Infinity"),
    Raw("-Infinity"),
    Raw("-0.0"),
    Raw("-0"),
    Raw("1.0"),
    Raw("1E2"),
    Raw("9" * 4301),
]
NUMBER = st.sampled_from(ODD_NUMBERS)


def sometimes_odd(normal: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly ``normal``, one time in eight an odd number (so that most builds get
    past the frontend; ``test_odd_number_matrix`` covers each odd number in each
    place)."""
    return rarely(normal, NUMBER)


def rarely(
    usual: st.SearchStrategy[Any], odd: st.SearchStrategy[Any]
) -> st.SearchStrategy[Any]:
    """``usual`` most of the time, ``odd`` about one time in ten: inputs that the
    frontend refuses stay in the mix without drowning the ones that build. (Not
    ``i == 0``: hypothesis favours the ends of a range; shrinking goes to
    ``usual``.)"""
    return st.integers(0, 9).flatmap(lambda i: odd if i == 5 else usual)


def dump(value: Any) -> str:
    """JSON text of ``value``; :class:`Raw` pieces verbatim (iterative enough for
    the depths used here)."""
    if isinstance(value, Raw):
        return str(value)
    if isinstance(value, dict):
        return (
            "{" + ",".join(f"{json.dumps(k)}:{dump(v)}" for k, v in value.items()) + "}"
        )
    if isinstance(value, list):
        return "[" + ",".join(dump(v) for v in value) + "]"
    return json.dumps(value)


def nested(depth: int, leaf: Any, kind: str = "list") -> Any:
    value = leaf
    for i in range(depth):
        value = [value] if kind == "list" else {f"k{i}": value}
    return value


JSON_LEAF = st.one_of(TEXT, st.integers(-(2**63), 2**63 - 1), st.booleans(), st.none())
JSON_VALUE = st.recursive(
    JSON_LEAF,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(TEXT, inner, max_size=3)
    ),
    max_leaves=8,
)
NESTED_VALUE = st.builds(
    nested, st.integers(1, 60), JSON_LEAF, st.sampled_from(["list", "dict"])
)
DATA = st.one_of(JSON_VALUE, NESTED_VALUE)
"""Nested JSON data (no odd numbers: ``ODD_DATA`` adds them, rarely)."""
ODD_DATA = rarely(DATA, st.builds(nested, st.integers(0, 30), NUMBER))


# -- Lexicons --------------------------------------------------------------------------
@dataclass
class _Lexicons:
    """What is being drawn: NSIDs and the names of their object-like defs, so that
    refs and unions point somewhere real (most of the time)."""

    nsids: list[str]
    objects: list[str] = field(default_factory=list)
    tokens: list[str] = field(default_factory=list)
    strings: list[str] = field(default_factory=list)


def _ref(draw: st.DrawFn, lx: _Lexicons, here: str, pool: list[str]) -> str:
    choices = pool or [f"{here}#nowhere"]
    if draw(st.integers(0, 7)) == 0:
        choices = ["com.example.missing#x", f"{here}#nowhere"]
    target = draw(st.sampled_from(choices))
    nsid, _, name = target.partition("#")
    if nsid == here and name and draw(st.booleans()):
        return f"#{name}"
    if name == "main" and draw(st.booleans()):
        return nsid
    return target


def _string(draw: st.DrawFn) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "string"}
    for key, strat in (
        ("description", TEXT),
        ("format", st.sampled_from(["did", "handle", "uri", "datetime", "nsid", "x"])),
        ("maxLength", sometimes_odd(st.integers(0, 3000))),
        ("minLength", st.integers(0, 10)),
        ("maxGraphemes", sometimes_odd(st.integers(1, 300))),
        ("knownValues", st.lists(TEXT, max_size=4)),
        ("enum", st.lists(TEXT, min_size=1, max_size=3, unique=True)),
        ("const", TEXT),
        ("default", sometimes_odd(TEXT)),
    ):
        if draw(st.integers(0, 5)) == 0:
            out[key] = draw(strat)
    return out


def _integer(draw: st.DrawFn) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "integer"}
    for key, strat in (
        ("description", TEXT),
        ("minimum", sometimes_odd(st.integers(-(2**40), 0))),
        ("maximum", sometimes_odd(st.integers(0, 2**40))),
        ("enum", st.lists(sometimes_odd(st.integers(-9, 9)), min_size=1, max_size=3)),
        ("const", sometimes_odd(st.integers(-(2**40), 2**40))),
        ("default", sometimes_odd(st.integers(-(2**40), 2**40))),
    ):
        if draw(st.integers(0, 3)) == 0:
            out[key] = draw(strat)
    return out


def _field_type(
    draw: st.DrawFn, lx: _Lexicons, here: str, depth: int, params: bool = False
) -> dict[str, Any]:
    kinds = ["string", "integer", "boolean", "array", "unknown"]
    if not params:
        kinds += ["bytes", "cid-link", "blob", "ref", "union", "null"]
        if depth < 8:
            kinds += ["object"]
    kind = draw(st.sampled_from(kinds))
    desc = {"description": draw(TEXT)} if draw(st.booleans()) else {}
    if kind == "string":
        return _string(draw)
    if kind == "integer":
        return _integer(draw)
    if kind == "boolean":
        out: dict[str, Any] = {"type": "boolean", **desc}
        choice = draw(st.sampled_from(["", "default", "const", "odd"]))
        if choice in ("default", "const"):
            out[choice] = draw(st.booleans())
        elif choice == "odd":
            out[draw(st.sampled_from(["default", "const"]))] = draw(NUMBER)
        return out
    if kind == "bytes":
        return {"type": "bytes", "maxLength": draw(sometimes_odd(st.integers(0, 99)))}
    if kind == "cid-link":
        return {"type": "cid-link", **desc}
    if kind == "blob":
        return {
            "type": "blob",
            "accept": draw(st.lists(st.sampled_from(["image/*", "*/*", "a/b", "'"]))),
            "maxSize": draw(sometimes_odd(st.integers(0, 10**9))),
        }
    if kind == "null":
        return {"type": "null"}
    if kind == "unknown":
        return {"type": "unknown", **desc}
    if kind == "array":
        items = (
            _field_type(draw, lx, here, depth + 1, params=params)
            if depth < 8
            else {"type": "string"}
        )
        if params and items.get("type") in ("array", "unknown"):
            items = {"type": "integer"}
        out = {"type": "array", "items": items, **desc}
        if draw(st.booleans()):
            out["maxLength"] = draw(sometimes_odd(st.integers(0, 50)))
        return out
    if kind == "ref":
        return {
            "type": "ref",
            "ref": _ref(
                draw,
                lx,
                here,
                lx.objects
                + lx.strings
                + (lx.tokens if draw(st.integers(0, 9)) == 5 else []),
            ),
            **desc,
        }
    if kind == "union":
        refs = [
            _ref(draw, lx, here, lx.objects) for _ in range(draw(st.integers(0, 3)))
        ]
        out = {"type": "union", "refs": refs, **desc}
        if draw(st.booleans()):
            out["closed"] = True
        return out
    return _object(draw, lx, here, depth + 1)


def _object(draw: st.DrawFn, lx: _Lexicons, here: str, depth: int) -> dict[str, Any]:
    props = {
        draw(NAME): _field_type(draw, lx, here, depth)
        for _ in range(draw(st.integers(0, 4)))
    }
    out: dict[str, Any] = {"type": "object", "properties": props}
    if draw(st.booleans()):
        out["description"] = draw(TEXT)
    if draw(st.booleans()) and props:
        out["required"] = [k for k in props if draw(st.booleans())]
    if draw(st.integers(0, 3)) == 0 and props:
        out["nullable"] = [k for k in props if draw(st.booleans())]
    return out


def _params(draw: st.DrawFn, lx: _Lexicons, here: str) -> dict[str, Any]:
    props = {
        draw(NAME): _field_type(draw, lx, here, 0, params=True)
        for _ in range(draw(st.integers(0, 3)))
    }
    out: dict[str, Any] = {"type": "params", "properties": props}
    if draw(st.booleans()) and props:
        out["required"] = [k for k in props if draw(st.booleans())]
    return out


def _body(draw: st.DrawFn, lx: _Lexicons, here: str) -> dict[str, Any]:
    encoding = draw(
        st.sampled_from(["application/json", "*/*", "text/plain", "application/x'\""])
    )
    out: dict[str, Any] = {"encoding": encoding}
    if draw(st.booleans()):
        out["description"] = draw(TEXT)
    if encoding == "application/json" or draw(st.booleans()):
        schema = draw(st.sampled_from(["object", "ref", "union"]))
        if schema == "object":
            out["schema"] = _object(draw, lx, here, 1)
        elif schema == "ref":
            out["schema"] = {"type": "ref", "ref": _ref(draw, lx, here, lx.objects)}
        else:
            out["schema"] = {
                "type": "union",
                "refs": [_ref(draw, lx, here, lx.objects) for _ in range(2)],
            }
    return out


def _errors(draw: st.DrawFn) -> list[dict[str, Any]]:
    return [
        {
            "name": draw(NAME),
            **({"description": draw(TEXT)} if draw(st.booleans()) else {}),
        }
        for _ in range(draw(st.integers(0, 3)))
    ]


def _main_def(draw: st.DrawFn, lx: _Lexicons, here: str, kind: str) -> dict[str, Any]:
    desc = {"description": draw(TEXT)} if draw(st.booleans()) else {}
    if kind == "record":
        key = draw(st.sampled_from(["tid", "nsid", "any", "literal:self", "literal:"]))
        return {
            "type": "record",
            "key": key,
            "record": _object(draw, lx, here, 1),
            **desc,
        }
    if kind in ("query", "procedure"):
        out: dict[str, Any] = {"type": kind, **desc}
        if draw(st.booleans()):
            out["parameters"] = _params(draw, lx, here)
        if kind == "procedure" and draw(st.booleans()):
            out["input"] = _body(draw, lx, here)
        if draw(st.booleans()):
            out["output"] = _body(draw, lx, here)
        if draw(st.booleans()):
            out["errors"] = _errors(draw)
        return out
    if kind == "subscription":
        out = {"type": "subscription", **desc}
        if draw(st.booleans()):
            out["parameters"] = _params(draw, lx, here)
        if draw(st.booleans()):
            out["message"] = {
                "description": draw(TEXT),
                "schema": {
                    "type": "union",
                    "refs": [_ref(draw, lx, here, lx.objects) for _ in range(2)],
                },
            }
        if draw(st.booleans()):
            out["errors"] = _errors(draw)
        return out
    if kind == "permission-set":
        perms = []
        for _ in range(draw(st.integers(0, 3))):
            resource = draw(
                st.sampled_from(
                    ["repo", "rpc", "blob", "account", "identity", "include"]
                )
            )
            perm: dict[str, Any] = {"type": "permission", "resource": resource}
            key = {
                "repo": "collection",
                "rpc": "lxm",
                "blob": "accept",
                "account": "attr",
                "identity": "attr",
                "include": "nsid",
            }[resource]
            perm[key] = draw(
                st.one_of(
                    st.lists(st.sampled_from(lx.nsids), max_size=2),
                    TEXT,
                    ODD_DATA,
                )
            )
            if resource == "rpc" and draw(st.booleans()):
                perm["aud"] = draw(st.one_of(TEXT, DATA))
                perm["inheritAud"] = draw(sometimes_odd(st.booleans()))
            perms.append(perm)
        out = {"type": "permission-set", "permissions": perms, **desc}
        for key in ("title", "detail", "title:lang", "detail:lang"):
            if draw(st.booleans()):
                out[key] = draw(TEXT) if ":" not in key else {"en": draw(TEXT)}
        return out
    if kind == "token":
        return {"type": "token", **desc}
    if kind == "string":
        return _string(draw)
    if kind == "array":
        return {"type": "array", "items": _field_type(draw, lx, here, 1), **desc}
    return _object(draw, lx, here, 1)


_MAIN_KINDS = ["record", "object", "query", "procedure", "subscription"]
_MAIN_KINDS += ["permission-set", "token", "string", "array"]


@st.composite
def lexicon_set(draw: st.DrawFn) -> list[dict[str, Any]]:
    """1-4 Lexicons with refs between them."""
    ids = draw(st.lists(nsids(), min_size=1, max_size=4, unique_by=str.lower))
    lx = _Lexicons(ids)
    plan: dict[str, list[tuple[str, str]]] = {}
    for nsid in ids:
        main = draw(st.sampled_from(_MAIN_KINDS))
        defs = [("main", main)]
        for _ in range(draw(st.integers(0, 3))):
            name = draw(NAME)
            kind = draw(st.sampled_from(["object", "token", "string", "array"]))
            defs.append((name, kind))
        plan[nsid] = defs
        for name, kind in defs:
            target = f"{nsid}#{name}"
            if kind in ("object", "record"):
                lx.objects.append(target)
            elif kind == "token":
                lx.tokens.append(target)
            elif kind == "string":
                lx.strings.append(target)
    docs = []
    for nsid, defs in plan.items():
        body = {name: _main_def(draw, lx, nsid, kind) for name, kind in defs}
        doc: dict[str, Any] = {"lexicon": 1, "id": nsid, "defs": body}
        if draw(st.booleans()):
            doc["description"] = draw(TEXT)
        if draw(st.integers(0, 9)) == 0:
            doc["revision"] = draw(sometimes_odd(st.integers(0, 9)))
        docs.append(doc)
    return docs


# -- schema records and lens records ---------------------------------------------------
_SHIM = "https://alt.science/schemas/atdata-ndarray-bytes/{v}#/$defs/ndarray"
_OTHER_SHIMS = [
    "https://alt.science/schemas/atdata-structured-bytes/1.0.0#/$defs/structured",
    "https://alt.science/schemas/atdata-sparse-bytes/1.0.0#/$defs/sparse",
    "https://json-schema.alt.science/atdata-safetensors/1.0.0#/$defs/safetensors",
    "https://alt.science/schemas/atdata-ndarray-bytes/9.9.9#/$defs/ndarray",
    "https://evil.example/x#/$defs/ndarray",
]
SCHEMA_NAMES = st.one_of(
    st.sampled_from(
        [
            "class",
            "None",
            "__init__",
            "_",
            "samples",
            "lenses",
            "con",
            "lpt1.aux",
            "a.b.c",
            "x" * 200,
            "Image",
            "image",
            "IMAGE",
            "a" + "." * 3 + "b",
            "import.os",
            "sample_fields",
        ]
    ),
    rarely(st.from_regex(r"[A-Za-z_][A-Za-z0-9_.]{0,12}", fullmatch=True), NAME),
)
VERSIONS = rarely(
    st.one_of(
        st.sampled_from(
            [
                "1.0.0",
                "1.0.0-class",
                "1.0.0+con",
                "1.0.0-rc.1+build.5",
                "0.0.0-" + "a" * 100,
                "1.0.0-a",
                "1.0.0+a",
                "1.0.0-a.b",
                "1.0.0-a-b",
                "1.0.0-A",
            ]
        ),
        st.builds(
            "{}.{}.{}".format, st.integers(0, 3), st.integers(0, 3), st.integers(0, 3)
        ),
    ),
    st.one_of(st.sampled_from(["1.0", "01.0.0", "1.0.0-" + "a" * 300]), TEXT),
)


def _json_property(draw: st.DrawFn, odd: bool, depth: int = 0) -> dict[str, Any]:
    """One JSON Schema property; ``odd`` lets in what the frontend refuses
    (odd numbers, unsupported shims and nesting)."""
    usual = ["string", "integer", "number", "boolean", "bytes", "array", "ndarray"]
    usual += ["enum", "nullable"]
    kind = draw(
        rarely(st.sampled_from(usual), st.sampled_from(["shim", "object", "odd"]))
        if odd
        else st.sampled_from(usual)
    )
    out: dict[str, Any]
    if kind == "bytes":
        out = {"type": "string", "format": "byte"}
    elif kind == "array":
        items = (
            _json_property(draw, odd, depth + 1) if depth < 6 else {"type": "integer"}
        )
        out = {"type": "array", "items": items}
    elif kind == "ndarray":
        out = {"$ref": _SHIM.format(v=draw(st.sampled_from(["1.0.0", "1.1.0"])))}
        if draw(st.booleans()):
            out["dtype"] = draw(
                st.sampled_from(["uint8", "float32", "<f4", "x", "int"])
            )
        if draw(st.booleans()):
            out["shape"] = draw(
                st.lists(
                    st.one_of(
                        st.none(),
                        sometimes_odd(st.integers(0, 2**40))
                        if odd
                        else st.integers(0, 2**40),
                    ),
                    max_size=3,
                )
            )
        if draw(st.booleans()):
            out["dimensionNames"] = draw(st.lists(TEXT, max_size=3))
    elif kind == "enum":
        out = {
            "type": "string",
            "enum": draw(st.lists(sometimes_odd(TEXT) if odd else TEXT, max_size=3)),
        }
    elif kind == "shim":
        out = {"$ref": draw(st.sampled_from(_OTHER_SHIMS))}
    elif kind == "nullable":
        out = {"type": [draw(st.sampled_from(["string", "integer", "number"])), "null"]}
    elif kind == "object":
        out = {"type": "object", "properties": {}}
    elif kind == "odd":
        out = {"type": draw(st.sampled_from(["number", "integer"]))}
        for key in ("default", "minimum", "maximum", "const", "multipleOf"):
            if draw(st.booleans()):
                out[key] = draw(NUMBER)
    else:
        out = {"type": kind}
    for key, strat in (
        ("description", TEXT),
        ("title", TEXT),
        ("default", st.one_of(TEXT, ODD_DATA if odd else DATA)),
        ("examples", st.lists(DATA, max_size=2)),
    ):
        if draw(st.integers(0, 3)) == 0:
            out[key] = draw(strat)
    return out


@st.composite
def schema_record(
    draw: st.DrawFn, name: str | None = None, version: str | None = None
) -> dict[str, Any]:
    odd = draw(st.integers(0, 4)) == 2
    props = {
        draw(NAME): _json_property(draw, odd) for _ in range(draw(st.integers(1, 5)))
    }
    body: dict[str, Any] = {
        "$type": "science.alt.dataset.schema#jsonSchemaFormat",
        "$schema": "http://json-schema.org/draft-07/schema#",
        "type": "object",
        "properties": props,
        "required": [k for k in props if draw(st.booleans())],
    }
    if draw(st.booleans()):
        body["title"] = draw(TEXT)
    if draw(st.booleans()):
        body["arrayFormatVersions"] = draw(st.dictionaries(TEXT, TEXT, max_size=2))
    value: dict[str, Any] = {
        "$type": "science.alt.dataset.schema",
        "name": name if name is not None else draw(SCHEMA_NAMES),
        "version": version if version is not None else draw(VERSIONS),
        "schemaType": "jsonSchema",
        "createdAt": "2026-11-01T00:00:00+00:00",
    }
    if draw(st.booleans()):
        value["schema"] = {"draft": "draft-07", "content": body}
        value["$atdataSchemaVersion"] = 1
    else:
        value["schema"] = body
        value["atdataSchemaVersion"] = draw(
            rarely(st.just(1), st.sampled_from([Raw("1.0"), 2, True]))
        )
    if draw(st.booleans()):
        value["description"] = draw(TEXT)
    if draw(st.booleans()):
        value["metadata"] = draw(
            st.dictionaries(TEXT, ODD_DATA if odd else DATA, max_size=3)
        )
    return value


_HEX40 = st.text("0123456789abcdef", min_size=40, max_size=40)
CODE_PATHS = st.one_of(
    st.sampled_from(
        [
            "this:x",
            "__hello__:main",
            "__phello__.spam:main",
            "__main__:s",
            "setup:get",
            "os:system",
            "class.def:import",
            "tests.conftest:x",
            "antigravity_but_not_really:fly",
        ]
    ),
    st.from_regex(
        r"[a-z_][a-z0-9_]{0,6}(\.[a-z_][a-z0-9_]{0,6}){0,2}:[a-z_][a-z0-9_]{0,6}",
        fullmatch=True,
    ),
    st.from_regex(
        r"[a-z_][a-z0-9_]{0,6}(\.[a-z_][a-z0-9_]{0,6}){0,2}:[a-z_][a-z0-9_]{0,6}",
        fullmatch=True,
    ),
    rarely(st.sampled_from(["a.b:c"]), TEXT),
)


def _code(draw: st.DrawFn) -> dict[str, Any]:
    out: dict[str, Any] = {
        "repository": draw(
            rarely(st.one_of(st.just("https://github.com/lab/lenses"), NAME), TEXT)
        ),
        "commit": draw(rarely(_HEX40, TEXT)),
        "path": draw(CODE_PATHS),
    }
    if draw(st.booleans()):
        out["branch"] = draw(TEXT)
    if draw(st.booleans()):
        out["language"] = draw(TEXT)
    return out


@st.composite
def samples_and_lenses(draw: st.DrawFn) -> list[dict[str, Any]]:
    """1-3 schema records (wrapped, with AT-URIs) and 0-2 lens records between
    them."""
    docs = []
    uris = []
    names: list[str] = []
    for i in range(draw(st.integers(1, 3))):
        # Often another version (or a case variant) of an earlier schema's name.
        reuse = draw(st.booleans()) and bool(names)
        name = draw(st.sampled_from(names)) if reuse else None
        if name is not None and draw(st.booleans()):
            name = name.swapcase()
        value = draw(schema_record(name=name))
        names.append(value["name"])
        uri = f"at://did:plc:lab{i}/science.alt.dataset.schema/s{i}"
        cid = f"bafyrei{'a' * 52}{i}"
        docs.append({"uri": uri, "cid": cid, "value": value})
        uris.append(uri)
    for j in range(draw(rarely(st.integers(1, 2), st.just(0)))):
        lens: dict[str, Any] = {
            "$type": "science.alt.dataset.lens",
            "name": draw(rarely(NAME, st.just("x" * 300))),
            "sourceSchema": draw(st.sampled_from(uris)),
            "targetSchema": draw(st.sampled_from(uris)),
            "getterCode": _code(draw),
            "putterCode": _code(draw),
            "createdAt": "2026-11-03T00:00:00+00:00",
        }
        if draw(st.booleans()):
            lens["description"] = draw(TEXT)
        for key in ("sourceSchemaVersion", "targetSchemaVersion"):
            if draw(st.booleans()):
                lens[key] = draw(
                    rarely(
                        st.sampled_from(
                            [">=0.0.0", "*", "0.x || >=1.0.0", ">=0.0.0 <99.0.0"]
                        ),
                        st.sampled_from(["^2.0.0", "nope", "", ">=1 <"]),
                    )
                )
        if draw(st.booleans()):
            docs.append(
                {
                    "uri": f"at://did:plc:lab/science.alt.dataset.lens/l{j}",
                    "cid": f"bafyrei{'b' * 52}{j}",
                    "value": lens,
                }
            )
        else:
            docs.append(lens)
    return docs


# -- the property ----------------------------------------------------------------------
_PRELOADED = (
    "atdata_runtime.lex",
    "atdata_runtime.samples",
    "atdata_runtime.lenses",
    "atdata_runtime.lenses.records",
    "numpy",
    "numpy.typing",
    "pydantic",
    "dataclasses",
)
_CANARY = Path("/tmp/atdata-gen-pwned")
_COUNTER = [0]


def _files_under(root: Path) -> set[Path]:
    return {p for p in root.rglob("*")}


def _build(case: Path, docs: list[Any], package: str) -> BuildResult:
    """Write ``docs`` as sources under ``case/src`` and build in-process; an
    exception out of the compiler fails with the inputs."""
    src = case / "src"
    src.mkdir(parents=True)
    for i, doc in enumerate(docs):
        (src / f"d{i}.json").write_text(dump(doc), encoding="utf-8")
    reporter = Reporter()
    try:
        return build(
            BuildOptions([src], package, jobs=1, workdir=case / "tmp"), reporter
        )
    except Exception as exc:
        raise AssertionError(
            f"the compiler raised {type(exc).__name__}: {exc}\ninputs:\n"
            + "\n".join(dump(d)[:2000] for d in docs)
        ) from exc


def _check_outcome(result: BuildResult, docs: list[Any]) -> bool:
    """Either emitted files, or errors with registered rule IDs. True if built."""
    if result.files is None:
        errors = result.reporter.errors
        assert errors, "nothing emitted, and no error said why"
        unknown = {d.rule for d in errors} - set(all_rule_ids())
        assert not unknown, f"unregistered rule IDs {unknown}"
        for d in errors:
            assert d.span.path, d
        return False
    assert not result.reporter.has_errors
    return True


def _import_all(
    case: Path,
    package: str,
    result: BuildResult,
    kinds: dict[str, str],
    data: st.DataObject | None = None,
) -> None:
    """Write the package under ``case/out`` and import every module, checking that
    importing has no side effect."""
    assert result.files is not None
    out = case / "out"
    root = (out / package).resolve()
    for rel, text in result.files.items():
        target = (root / rel).resolve()
        assert target.is_relative_to(root), rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
    for name in _PRELOADED:
        importlib.import_module(name)
    modules = [
        ".".join((package, *rel[:-3].split("/"))).removesuffix(".__init__")
        for rel in kinds
    ]
    env, cwd, path = dict(os.environ), os.getcwd(), list(sys.path)
    before_mods = set(sys.modules)
    before_files = _files_under(case)
    sys.path.insert(0, str(out))
    try:
        for mod in sorted(modules, key=len):
            importlib.import_module(mod)
        for rel, kind in kinds.items():
            module = sys.modules[
                ".".join((package, *rel[:-3].split("/"))).removesuffix(".__init__")
            ]
            if kind == "lexicon":
                for n in module.__all__:
                    obj = getattr(module, n)
                    if hasattr(obj, "model_rebuild"):
                        obj.model_rebuild()
                        obj.model_json_schema(by_alias=True)
                if data is not None:
                    _round_trip(result, module, data)
            elif kind == "sample":
                cls = getattr(module, module.__all__[0])
                declared = [f.name for f in dataclasses.fields(cls)]
                assert [f.name for f in cls.sample_fields] == [
                    n for n in declared if n in cls.__annotations__
                ]
                _pack_round_trip(cls)
    finally:
        sys.path.remove(str(out))
    assert sys.path == path and os.getcwd() == cwd and dict(os.environ) == env
    # Libraries already loaded may import their own submodules lazily (pydantic
    # does); a new top-level module (``this``, ``setup``, a lens's code) may not.
    roots = {m.partition(".")[0] for m in before_mods}
    gained = set(sys.modules) - before_mods
    strangers = {m for m in gained if m.partition(".")[0] not in roots | {package}}
    assert not strangers, f"importing the package imported {sorted(strangers)}"
    assert _files_under(case) - before_files <= {
        p for p in _files_under(case) if "__pycache__" in p.parts
    }, "importing wrote a file"
    for name in [m for m in sys.modules if m == package or m.startswith(package + ".")]:
        del sys.modules[name]


def _sample_value(spec: Any) -> Any:
    """A value for one ``FieldSpec`` (``Ellipsis`` where none is simple)."""
    import numpy as np

    simple = {"str": "x", "int": -3, "float": 0.5, "bool": True, "bytes": b"\x00"}
    if spec.enum:
        return spec.enum[0]
    if spec.kind in simple:
        return simple[spec.kind]
    if spec.kind == "list" and spec.items is not None:
        item = _sample_value(spec.items)
        return ... if item is ... else [item, item]
    if spec.kind == "ndarray":
        dims = spec.shape if spec.shape is not None else (2,)
        if any(d is not None and d > 64 for d in dims):
            return ...
        shape = tuple(1 if d is None else d for d in dims)
        dtype = spec.dtype or "uint8"
        try:
            return np.zeros(shape, dtype=np.dtype(dtype))
        except TypeError:
            return ...
    return ...


def _pack_round_trip(cls: Any) -> None:
    """A sample of the generated class packs and unpacks to equal values (fields
    whose kind has no simple value, e.g. library-encoded arrays, are skipped)."""
    import numpy as np

    values = {f.name: _sample_value(f) for f in cls.sample_fields}
    if any(v is ... for v in values.values()):
        return
    sample = cls(**values)
    back = cls.from_bytes(sample.pack())
    for name, value in values.items():
        got = getattr(back, name)
        if isinstance(value, np.ndarray):
            assert np.array_equal(got, value) and got.dtype == value.dtype, name
        else:
            assert got == value, (name, got, value)
    if currently_in_test_context():
        event("packed a sample")


def _round_trip(result: BuildResult, module: Any, data: st.DataObject) -> None:
    """Valid wire data for each object/record def of ``module``'s Lexicon
    (:func:`atdata_gen.testing.strategies.wire_data`) validates, and dumps back
    to data that validates to the same thing."""
    from atdata_gen.ir.model import DefId
    from atdata_gen.testing.strategies import wire_data

    model = result.model
    assert model is not None
    for d in model.defs.values():
        cls_name = model.names.objects.get((d.id, ()))
        if cls_name is None or d.kind not in ("object", "record"):
            continue
        if model.names.modules.get(d.id.nsid) is None:
            continue
        mod_path = ".".join(model.names.modules[d.id.nsid]).removesuffix(".__init__")
        if module.__name__.partition(".")[2] != mod_path:
            continue
        cls = getattr(module, cls_name)
        value = data.draw(wire_data(model, DefId(d.id.nsid, d.id.name), max_depth=2))
        first = cls.from_wire(value).to_wire()
        assert cls.from_wire(first).to_wire() == first, (d.id, value)
        if currently_in_test_context():
            event(f"round-tripped a {d.kind}")


def _property(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    docs: list[Any],
    data: st.DataObject | None = None,
) -> None:
    _CANARY.unlink(missing_ok=True)
    _COUNTER[0] += 1
    package = f"fuzzpkg{_COUNTER[0]}"
    case = tmp_path / f"case{_COUNTER[0]}"
    result = _build(case, docs, package)
    built = _check_outcome(result, docs)
    rules = sorted({d.rule for d in result.reporter.errors})
    event("built" if built else "refused: " + ",".join(rules[:3]))
    if built:
        assert result.files is not None and result.model is not None
        check_paths(result.files)
        kinds = check_files(result.model, result.files)
        event("modules: " + ",".join(sorted(set(kinds.values()) - {"package"})))
        capsys.readouterr()
        _import_all(case, package, result, kinds, data)
        captured = capsys.readouterr()
        assert captured.out == "" and captured.err == "", captured
    assert not _CANARY.exists(), "an input executed code"


_SETTINGS = settings(
    derandomize=True,
    deadline=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.function_scoped_fixture,
        HealthCheck.data_too_large,
        HealthCheck.filter_too_much,
    ],
)


@settings(_SETTINGS, max_examples=150)
@given(docs=lexicon_set(), data=st.data())
def test_hostile_lexicons_build_or_fail_cleanly(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    docs: list[dict[str, Any]],
    data: st.DataObject,
) -> None:
    """Random hostile Lexicons build or fail with rule IDs; what builds passes
    the whitelist, imports without side effects, and round-trips valid wire data
    of each object and record def."""
    _property(tmp_path, capsys, docs, data)


@settings(_SETTINGS, max_examples=200)
@given(docs=samples_and_lenses())
def test_hostile_schema_and_lens_records_build_or_fail_cleanly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], docs: list[dict[str, Any]]
) -> None:
    _property(tmp_path, capsys, docs)


# -- odd numbers, each in each place ---------------------------------------------------
_V = "@@VALUE@@"
_LEX = '{"lexicon": 1, "id": "com.example.odd", "defs": {"main": %s}}'
_REC = (
    '{"type": "record", "key": "tid", "record": {"type": "object", "properties": '
    '{"f": %s}}}'
)
_SCHEMA = (
    '{"$type": "science.alt.dataset.schema", "name": "odd.Sample", "version": '
    '"1.0.0", "schemaType": "jsonSchema", "atdataSchemaVersion": %s, "metadata": %s, '
    '"schema": {"type": "object", "properties": {"f": %s}, "required": ["f"]}}'
)
ODD_PLACES = {
    "lexicon integer default": _LEX
    % (_REC % f'{{"type": "integer", "default": {_V}}}'),
    "lexicon integer const": _LEX % (_REC % f'{{"type": "integer", "const": {_V}}}'),
    "lexicon integer minimum": _LEX
    % (_REC % f'{{"type": "integer", "minimum": {_V}}}'),
    "lexicon integer enum": _LEX % (_REC % f'{{"type": "integer", "enum": [1, {_V}]}}'),
    "lexicon string maxLength": _LEX
    % (_REC % f'{{"type": "string", "maxLength": {_V}}}'),
    "lexicon boolean default": _LEX
    % (_REC % f'{{"type": "boolean", "default": {_V}}}'),
    "lexicon blob maxSize": _LEX % (_REC % f'{{"type": "blob", "maxSize": {_V}}}'),
    "lexicon revision": '{"lexicon": 1, "id": "com.example.odd", "revision": '
    + _V
    + ', "defs": {"main": {"type": "token"}}}',
    "lexicon version": '{"lexicon": '
    + _V
    + ', "id": "com.example.odd", "defs": {"main": {"type": "token"}}}',
    "permission value": _LEX
    % (
        '{"type": "permission-set", "permissions": [{"type": "permission", '
        f'"resource": "rpc", "lxm": ["com.example.odd"], "aud": {_V}}}]}}'
    ),
    "schema property default": _SCHEMA
    % ("1", "{}", f'{{"type": "number", "default": {_V}}}'),
    "schema metadata": _SCHEMA % ("1", f'{{"x": [{_V}]}}', '{"type": "integer"}'),
    "schema ndarray shape": _SCHEMA
    % (
        "1",
        "{}",
        (
            '{"$ref": "https://alt.science/schemas/atdata-ndarray-bytes/1.1.0#/$defs/'
            f'ndarray", "shape": [2, {_V}]}}'
        ),
    ),
    "schema record version": _SCHEMA % (_V, "{}", '{"type": "integer"}'),
    "schema enum": _SCHEMA % ("1", "{}", f'{{"type": "string", "enum": ["a", {_V}]}}'),
}
ODD_TEXTS = ["1e400", "-1e400", "NaN", "-Infinity", "-0.0", "1.0", "1.5", "1E2"]
ODD_TEXTS += ["9" * 4301, str(2**64), str(-(2**63) - 1)]
IN_RANGE = ["-0", str(-(2**63)), str(2**63 - 1), str(2**53 + 1)]


@pytest.mark.parametrize("place", sorted(ODD_PLACES))
def test_odd_number_matrix(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], place: str
) -> None:
    """Each odd number in each place a number may appear: a float (NaN, ±inf,
    1e400, -0.0, 1.0, 1.5), an integer of over 4,300 digits or outside the data
    model's signed 64-bit range is a located error (never a traceback, never a
    module); an in-range integer builds or is refused with rule IDs."""
    for text in [*ODD_TEXTS, *IN_RANGE]:
        case = tmp_path / f"n{len(list(tmp_path.iterdir()))}"
        doc = Raw(ODD_PLACES[place].replace(_V, text))
        _COUNTER[0] += 1
        package = f"oddpkg{_COUNTER[0]}"
        result = _build(case, [doc], package)
        built = _check_outcome(result, [doc])
        if text in ODD_TEXTS:
            assert not built, (place, text[:20])
            assert any(d.span.line > 0 for d in result.reporter.errors), (
                place,
                text[:20],
                [str(d) for d in result.reporter.errors],
            )
        elif built:
            assert result.files is not None and result.model is not None
            kinds = check_files(result.model, result.files)
            capsys.readouterr()
            _import_all(case, package, result, kinds)
            assert capsys.readouterr().out == ""


# -- nesting ---------------------------------------------------------------------------
def _depth(value: Any) -> int:
    """JSON nesting depth (the top-level array or object is level 1); iterative."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        node, level = stack.pop()
        if isinstance(node, dict | list):
            deepest = max(deepest, level)
            children = node.values() if isinstance(node, dict) else node
            stack.extend((child, level + 1) for child in children)
    return deepest


def _json_text(value: Any) -> str:
    """``json.dumps`` without its recursion (for documents thousands deep)."""
    out: list[str] = []
    stack: list[Any] = [value]
    while stack:
        node = stack.pop()
        if isinstance(node, Raw):
            out.append(str(node))
        elif isinstance(node, dict | list):
            pairs = node.items() if isinstance(node, dict) else enumerate(node)
            seq: list[Any] = [Raw("{" if isinstance(node, dict) else "[")]
            for i, (k, v) in enumerate(pairs):
                if i:
                    seq.append(Raw(","))
                if isinstance(node, dict):
                    seq.append(Raw(json.dumps(k) + ":"))
                seq.append(v)
            seq.append(Raw("}" if isinstance(node, dict) else "]"))
            stack.extend(reversed(seq))
        else:
            out.append(json.dumps(node))
    return "".join(out)


def _lexicon(main: dict[str, Any]) -> dict[str, Any]:
    return {"lexicon": 1, "id": "com.example.deep", "defs": {"main": main}}


def _record(prop: dict[str, Any]) -> dict[str, Any]:
    return _lexicon(
        {
            "type": "record",
            "key": "tid",
            "record": {"type": "object", "properties": {"f": prop}},
        }
    )


def _sample(prop: dict[str, Any], metadata: Any = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "$type": "science.alt.dataset.schema",
        "name": "deep.Sample",
        "version": "1.0.0",
        "schemaType": "jsonSchema",
        "atdataSchemaVersion": 1,
        "schema": {"type": "object", "properties": {"f": prop}, "required": ["f"]},
    }
    if metadata is not None:
        out["metadata"] = metadata
    return out


def _objects(levels: int) -> dict[str, Any]:
    node: dict[str, Any] = {"type": "integer"}
    for _ in range(levels):
        node = {"type": "object", "properties": {"p": node}, "required": ["p"]}
    return node


def _arrays(levels: int, constrained: bool) -> dict[str, Any]:
    node: dict[str, Any] = {"type": "integer", "maximum": 3}
    for _ in range(levels):
        node = {"type": "array", "items": node}
        if constrained:
            node["maxLength"] = 4
    return node


NESTINGS: dict[str, Any] = {
    # name → levels → document; each fills the document to the asked depth.
    "lexicon nested objects": lambda n: _record(_objects(n)),
    "lexicon nested arrays": lambda n: _record(_arrays(n, constrained=False)),
    "lexicon nested constrained arrays": lambda n: _record(_arrays(n, True)),
    "permission data": lambda n: _lexicon(
        {
            "type": "permission-set",
            "permissions": [
                {
                    "type": "permission",
                    "resource": "rpc",
                    "lxm": ["com.example.deep"],
                    "aud": nested(n, "did:web:x.test", "list"),
                }
            ],
        }
    ),
    "sample nested arrays": lambda n: _sample(
        {"type": "array", "items": _arrays(n, False)["items"]}
    ),
    "sample metadata": lambda n: _sample({"type": "integer"}, nested(n, 1, "dict")),
}


def _fill(make: Any, depth: int) -> dict[str, Any]:
    """The document ``make(levels)`` of JSON depth exactly ``depth`` (or one more,
    for constructs that nest two levels at a time): past the fixed wrapper, depth
    grows linearly with ``levels``."""
    base = _depth(make(40))
    step = _depth(make(41)) - base
    levels = max(1, 40 + -(-(depth - base) // step))
    while levels > 1 and _depth(make(levels - 1)) >= depth:
        levels -= 1
    while _depth(make(levels)) < depth:
        levels += 1
    doc = make(levels)
    assert depth <= _depth(doc) <= depth + step - 1, (depth, _depth(doc))
    return doc  # type: ignore[no-any-return]


_CHILD = """
import importlib, json, sys, tempfile
from pathlib import Path
from atdata_gen.diagnostics import Reporter
from atdata_gen.pipeline import BuildOptions, build
outcomes = {{}}
for src in {sources!r}:
    try:
        reporter = Reporter()
        result = build(BuildOptions([Path(src)], "deep", jobs=1), reporter)
        out = Path(tempfile.mkdtemp(dir={tmp!r}))
        for rel, text in (result.files or {{}}).items():
            (out / "deep" / rel).parent.mkdir(parents=True, exist_ok=True)
            (out / "deep" / rel).write_text(text, encoding="utf-8")
        sys.path.insert(0, str(out))
        for rel in sorted(result.files or (), key=len):
            if rel.endswith(".py"):
                name = ".".join(("deep", *rel[:-3].split("/")))
                module = importlib.import_module(name.removesuffix(".__init__"))
                for attr in getattr(module, "__all__", ()):
                    obj = getattr(module, attr)
                    if hasattr(obj, "model_rebuild"):
                        obj.model_rebuild()
        sys.path.remove(str(out))
        for name in [m for m in sys.modules if m == "deep" or m.startswith("deep.")]:
            del sys.modules[name]
        outcomes[src] = {{
            "built": result.files is not None,
            "rules": sorted({{d.rule for d in reporter.errors}}),
        }}
    except BaseException as exc:
        outcomes[src] = {{"error": type(exc).__name__ + ": " + str(exc)[:300]}}
_result["value"] = outcomes
"""

_DEPTHS = (20, 40, 64, 65, 210, 400, 5000)


@pytest.mark.parametrize("construct", sorted(NESTINGS))
def test_deep_nesting_builds_or_is_refused_at_the_limit(
    tmp_path: Path, construct: str
) -> None:
    """Nesting up to the frontend's documented limit (``MAX_JSON_DEPTH``) builds
    into modules that pass the whitelist, import, and whose models build
    (pydantic's schema generation recurses per level), or, for Lexicon types
    nested past ``MAX_TYPE_DEPTH``, is refused as ``LEX_TYPE_TOO_DEEP`` (and
    nothing else); one level more, and far
    more (210, 400: once "too many nested parentheses" and ``RecursionError``;
    5,000), is ``SRC_JSON_TOO_DEEP``. The builds run first in a bounded child, so
    a crash of the interpreter's stack is reported, not suffered."""
    from atdata_gen.ir.depth import MAX_TYPE_DEPTH
    from atdata_gen.sources import MAX_JSON_DEPTH

    assert MAX_JSON_DEPTH in _DEPTHS and MAX_JSON_DEPTH + 1 in _DEPTHS
    docs: dict[str, tuple[int, dict[str, Any]]] = {}
    for depth in _DEPTHS:
        doc = _fill(NESTINGS[construct], depth)
        src = tmp_path / f"{construct.replace(' ', '_')}_{depth}.json"
        src.write_text(_json_text(doc), encoding="utf-8")
        docs[str(src)] = (_depth(doc), doc)
    code = _CHILD.format(sources=list(docs), tmp=str(tmp_path))
    out = run_bounded(code, address_space_mib=2048, timeout=60)
    assert out.error_type is None and not out.timed_out, (out.error, out.traceback)
    assert isinstance(out.value, dict)
    for path, (actual, doc) in docs.items():
        value = out.value[path]
        assert "error" not in value, (construct, actual, value)
        if actual > MAX_JSON_DEPTH:
            assert not value["built"], (construct, actual, value)
            assert "SRC_JSON_TOO_DEEP" in value["rules"], (construct, actual, value)
            continue
        if not value["built"]:
            # Deep enough in types, not only in JSON: the type nesting limit.
            assert value["rules"] == ["LEX_TYPE_TOO_DEEP"], (construct, actual, value)
            assert construct.startswith("lexicon"), (construct, actual, value)
            assert actual > MAX_TYPE_DEPTH, (construct, actual, value)
            continue
        # The child imported it and built every model; check the whitelist here.
        result = _build(tmp_path / f"case_{Path(path).stem}", [doc], "deep")
        assert _check_outcome(result, [doc])
        assert result.files is not None and result.model is not None
        check_paths(result.files)
        check_files(result.model, result.files)


# -- the whitelist itself, and emitter regressions -------------------------------------
_GOLDEN = Path(__file__).parent.parent / "golden"
_GOLDEN_CASES = sorted(p.name for p in _GOLDEN.iterdir() if (p / "input").is_dir())


@pytest.fixture(scope="module")
def golden_builds() -> dict[str, BuildResult]:
    out = {}
    for case in _GOLDEN_CASES:
        reporter = Reporter()
        result = build(BuildOptions([_GOLDEN / case / "input"], "golden"), reporter)
        assert result.files is not None, [str(d) for d in reporter.errors]
        out[case] = result
    return out


def test_whitelist_accepts_every_golden_module(
    golden_builds: dict[str, BuildResult],
) -> None:
    """Every module of the golden cases (all def kinds, XRPC, permission sets,
    sample records, lens records) passes the whitelist of its kind, so the
    whitelist is not looser than needed by accident of never seeing a kind."""
    seen: set[str] = set()
    for result in golden_builds.values():
        assert result.files is not None and result.model is not None
        check_paths(result.files)
        seen |= set(check_files(result.model, result.files).values())
    assert seen == {"lexicon", "sample", "sample_alias", "lens", "package"}


_INJECTIONS = {
    "lexicon": [
        "import os",
        "import typing as t",
        "from os import system as _system",
        "x: int = __import__('os')",
        "_t.cast(int, 1)",
        "def f() -> None: ...",
        "class A(_lex.LexObject):\n    def f(self) -> None: ...",
        "@_t.final\nclass B(_lex.LexObject):\n    x: int",
        "class C(object):\n    x: int",
        "y: int = _lex.String.__class__",
        "z: str = f'{1}'",
        "w: int = (lambda: 1)()",
        "v = 1",
        "if True:\n    pass",
    ],
    "sample": [
        "import os",
        "from .. import x as _x",
        "k: int = _sample.FieldSpec.__init__",
        "_sample.FieldSpec('a', 'a', 'str')",
    ],
    "sample_alias": ["import os", "from .x import A as B"],
    "lens": [
        "import os",
        "q: int = _lensref.CodeReference(repository=_t.__name__)",
        "def helper() -> None: ...",
        "del binding",
    ],
    "package": ["import os", "x: int = 1"],
}


@pytest.mark.parametrize("kind", sorted(_INJECTIONS))
def test_whitelist_rejects_injected_code(
    golden_builds: dict[str, BuildResult], kind: str
) -> None:
    """The checker can fail: each statement an emitter never writes, appended to
    a real module of that kind, is rejected (so passing means something)."""
    for result in golden_builds.values():
        assert result.files is not None and result.model is not None
        kinds = check_files(result.model, result.files)
        rel = next((r for r, k in kinds.items() if k == kind), None)
        if rel is not None:
            break
    assert rel is not None and result.files is not None and result.model is not None
    for snippet in _INJECTIONS[kind]:
        files = dict(result.files)
        files[rel] = files[rel] + "\n" + snippet + "\n"
        with pytest.raises(AssertionError):
            check_files(result.model, files)
    lens_edits = [
        ("return binding.get(source)", "return eval(source)"),
        ("def get(source: Source)", "def get(source: Source, *, x: int = 1)"),
        ('name="', 'name=_t.__name__ or "'),
    ]
    if kind == "lens":
        for old, new in lens_edits:
            files = dict(result.files)
            assert old in files[rel], old
            files[rel] = files[rel].replace(old, new, 1)
            with pytest.raises(AssertionError):
                check_files(result.model, files)
    if kind == "sample":
        files = dict(result.files)
        files[rel] = files[rel].replace(
            "@_dc.dataclass(kw_only=True, eq=False)", "@_dc.dataclass(kw_only=True)", 1
        )
        with pytest.raises(AssertionError):
            check_files(result.model, files)


def test_path_check_rejects_escapes() -> None:
    bad = ["../x.py", "/abs.py", "a/../../b.py", "a/class.py", "a\\b.py", "x.sh"]
    bad += ["a/con.py", "LPT1/x.py", "a/" + "x" * 240 + ".py", "./a.py", "a//b.py"]
    for rel in bad:
        with pytest.raises(AssertionError):
            check_paths([rel])
    with pytest.raises(AssertionError):
        check_paths(["a/B.py", "a/b.py"])


def _same(a: Any, b: Any) -> bool:
    """Equal, with float signs (``-0.0`` is not ``0.0``) and types compared."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return repr(a) == repr(b)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(map(_same, a, b))
    if isinstance(a, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    return bool(a == b)


_FLOATS = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False), st.sampled_from([-0.0, 0.0])
)
_JSON = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), _FLOATS, TEXT),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(TEXT, inner, max_size=3)
    ),
    max_leaves=10,
)


@settings(_SETTINGS, max_examples=200)
@given(value=_JSON)
def test_literal_evaluates_back_to_the_value(value: Any) -> None:
    """``emit.literal`` (through the printer) evaluates back to exactly the value:
    hostile strings, big integers, and floats with their sign (``-0.0`` was a
    ``CSTValidationError``)."""
    import ast

    import libcst as cst
    from atdata_gen.backend.emit import literal
    from atdata_gen.backend.printer import print_module

    module = cst.Module(body=[cst.SimpleStatementLine([cst.Expr(literal(value))])])
    text = print_module(module)
    assert _same(ast.literal_eval(text.strip()), value), text


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_literal_refuses_non_finite(bad: float) -> None:
    from atdata_gen.backend.emit import literal

    with pytest.raises(ValueError, match="non-finite"):
        literal(bad)


@pytest.mark.parametrize("schema_name", ["class", "con", "Lpt1", "match"])
def test_sample_alias_module_escapes_keywords_and_device_names(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], schema_name: str
) -> None:
    """The latest-version alias module of a schema named like a keyword, a soft
    keyword or a Windows device name is escaped like every other module name
    (``samples/class_.py``, ``samples/con_.py``), so ``import pkg.samples.class_``
    works and Windows can write it. It was ``samples/class.py``."""
    from atdata_gen.naming import module_stem

    doc = {
        "$type": "science.alt.dataset.schema",
        "name": schema_name,
        "version": "1.0.0",
        "schemaType": "jsonSchema",
        "atdataSchemaVersion": 1,
        "schema": {"type": "object", "properties": {"x": {"type": "integer"}}},
    }
    _COUNTER[0] += 1
    package = f"aliaspkg{_COUNTER[0]}"
    case = tmp_path / "case"
    result = _build(case, [doc], package)
    assert _check_outcome(result, [doc]) and result.files is not None
    alias = f"samples/{module_stem(schema_name)}.py"
    assert alias in result.files and alias != f"samples/{schema_name.lower()}.py"
    check_paths(result.files)
    assert result.model is not None
    kinds = check_files(result.model, result.files)
    assert kinds[alias] == "sample_alias"
    _import_all(case, package, result, kinds)


def test_null_fields_import_and_accept_null(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A ``null`` property listed in ``nullable`` was emitted ``None | None`` (the
    module raised ``TypeError`` on import), and an optional one ``Opt[None]``
    (which refused the only value it may hold). Found by the fuzz."""
    doc = {
        "lexicon": 1,
        "id": "com.example.nulls",
        "defs": {
            "main": {
                "type": "record",
                "key": "tid",
                "record": {
                    "type": "object",
                    "required": ["req", "reqNullable"],
                    "nullable": ["reqNullable", "optNullable"],
                    "properties": {
                        "req": {"type": "null"},
                        "reqNullable": {"type": "null"},
                        "optNullable": {"type": "null"},
                        "opt": {"type": "null"},
                    },
                },
            }
        },
    }
    _COUNTER[0] += 1
    package = f"nullpkg{_COUNTER[0]}"
    case = tmp_path / "case"
    result = _build(case, [doc], package)
    assert _check_outcome(result, [doc]) and result.files is not None
    assert result.model is not None
    kinds = check_files(result.model, result.files)
    assert "None | None" not in result.files["com/example/nulls.py"]
    _import_all(case, package, result, kinds)
    sys.path.insert(0, str(case / "out"))
    try:
        module = importlib.import_module(f"{package}.com.example.nulls")
        cls = module.Nulls
        full = {"$type": "com.example.nulls", "req": None, "reqNullable": None}
        full |= {"optNullable": None, "opt": None}
        assert cls.from_wire(full).to_wire() == full
        least = {"$type": "com.example.nulls", "req": None, "reqNullable": None}
        assert cls.from_wire(least).to_wire() == least
    finally:
        sys.path.remove(str(case / "out"))
        for name in [m for m in sys.modules if m.startswith(package)]:
            del sys.modules[name]


def _linked(tmp: Path, doc: dict[str, Any]) -> Any:
    from atdata_gen.pipeline import compile_sources

    src = tmp / f"{doc['id']}.json"
    src.write_text(json.dumps(doc), encoding="utf-8")
    result = compile_sources(BuildOptions([src], "x"))
    assert not result.reporter.has_errors, [str(d) for d in result.reporter]
    return result.model


@pytest.fixture(scope="module")
def strategy_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("models")

    def record(nsid: str, props: dict[str, Any], required: list[str]) -> Any:
        return _linked(
            tmp,
            {
                "lexicon": 1,
                "id": nsid,
                "defs": {
                    "main": {
                        "type": "record",
                        "key": "tid",
                        "record": {
                            "type": "object",
                            "properties": props,
                            "required": required,
                        },
                    }
                },
            },
        )

    return {
        "bytes": record(
            "com.example.bytes", {"b": {"type": "bytes", "maxLength": 0}}, ["b"]
        ),
        "cycle": record(
            "com.example.cycle", {"me": {"type": "ref", "ref": "#main"}}, ["me"]
        ),
        "tag": record(
            "com.example.tag",
            {"$type": {"type": "string"}, "x": {"type": "integer"}},
            [],
        ),
    }


@settings(_SETTINGS, max_examples=30)
@given(data=st.data())
def test_wire_data_respects_bytes_max_length_zero(
    strategy_models: dict[str, Any], data: st.DataObject
) -> None:
    """``maxLength: 0`` on bytes allows only empty bytes (``max_length or 16`` read
    0 as "no limit"; the fuzz's round trip caught it)."""
    from atdata_gen.ir.model import DefId
    from atdata_gen.testing.strategies import wire_data

    value = data.draw(wire_data(strategy_models["bytes"], DefId("com.example.bytes")))
    assert value["b"] == {"$bytes": ""}


def test_wire_data_of_a_def_that_requires_itself_draws_nothing(
    strategy_models: dict[str, Any],
) -> None:
    """A record whose required field refers to itself has no finite value: the
    strategy is empty (it was a ``RecursionError`` while building it)."""
    from atdata_gen.ir.model import DefId
    from atdata_gen.testing.strategies import wire_data
    from hypothesis.errors import Unsatisfiable

    strategy = wire_data(strategy_models["cycle"], DefId("com.example.cycle"))

    @settings(_SETTINGS, max_examples=5)
    @given(value=strategy)
    def draw(value: Any) -> None:
        raise AssertionError(f"drew {value!r}")

    with pytest.raises(Unsatisfiable):
        draw()


@settings(_SETTINGS, max_examples=20)
@given(data=st.data())
def test_wire_data_of_a_record_declaring_type_carries_the_tag(
    strategy_models: dict[str, Any], data: st.DataObject
) -> None:
    """A record that declares a ``$type`` property still gets its ``$type`` tag
    (hypothesis refused the strategy: the key was both required and optional)."""
    from atdata_gen.ir.model import DefId
    from atdata_gen.testing.strategies import wire_data

    value = data.draw(wire_data(strategy_models["tag"], DefId("com.example.tag")))
    assert value["$type"] == "com.example.tag"


def test_defs_that_recur_through_arrays_only_build(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``a = array of #a`` (and a cycle through two Lexicons' array defs) was a
    ``RecursionError`` in the emitter, which inlines non-object defs: the
    recurring level is now typed ``Any``, and said so. Found by the fuzz."""
    one = {
        "lexicon": 1,
        "id": "com.example.selfarr",
        "defs": {
            "main": {
                "type": "record",
                "key": "tid",
                "record": {
                    "type": "object",
                    "properties": {
                        "f": {"type": "ref", "ref": "#a"},
                        "g": {"type": "ref", "ref": "com.example.other#b"},
                    },
                },
            },
            "a": {"type": "array", "items": {"type": "ref", "ref": "#a"}},
        },
    }
    two = {
        "lexicon": 1,
        "id": "com.example.other",
        "defs": {
            "b": {
                "type": "array",
                "items": {"type": "ref", "ref": "com.example.selfarr#c"},
            }
        },
    }
    one["defs"]["c"] = {  # type: ignore[index]
        "type": "array",
        "items": {"type": "ref", "ref": "com.example.other#b"},
    }
    _COUNTER[0] += 1
    package = f"cyclepkg{_COUNTER[0]}"
    case = tmp_path / "case"
    result = _build(case, [one, two], package)
    assert _check_outcome(result, [one, two]) and result.files is not None
    assert result.model is not None
    kinds = check_files(result.model, result.files)
    assert "typed ``Any``" in result.files["com/example/selfarr.py"]
    _import_all(case, package, result, kinds)
    sys.path.insert(0, str(case / "out"))
    try:
        module = importlib.import_module(f"{package}.com.example.selfarr")
        value = {"$type": "com.example.selfarr", "f": [[[]], []], "g": [[], [[]]]}
        assert module.Selfarr.from_wire(value).to_wire() == value
    finally:
        sys.path.remove(str(case / "out"))
        for name in [m for m in sys.modules if m.startswith(package)]:
            del sys.modules[name]


_CLI_CASES = {
    "NaN": ("NaN", "SRC_FLOAT"),
    "-0.0": ("-0.0", "SRC_FLOAT"),
    "1e400": ("1e400", "SRC_FLOAT"),
    "4301 digits": ("9" * 4301, "SRC_INTEGER_RANGE"),
    "nesting 400": ("[" * 400 + "1" + "]" * 400, "SRC_JSON_TOO_DEEP"),
    "nesting 5000": ("[" * 5000 + "1" + "]" * 5000, "SRC_JSON_TOO_DEEP"),
}


def test_cli_exits_2_with_a_located_error_and_writes_nothing(tmp_path: Path) -> None:
    """End to end through ``atdata-gen build``: each hostile number or nesting,
    placed in a permission set's data, exits 2 (bad input) with the rule ID and a
    ``file:line:col`` location, no traceback, and nothing under ``--out``."""
    import subprocess

    for label, (text, rule) in _CLI_CASES.items():
        case = tmp_path / label.replace(" ", "_")
        src = case / "src" / "perm.json"
        src.parent.mkdir(parents=True)
        doc = ODD_PLACES["permission value"].replace(_V, text)
        src.write_text(doc, encoding="utf-8")
        out = case / "out"
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "atdata_gen.cli",
                "build",
                str(src),
                "--out",
                str(out),
            ],
            capture_output=True,
            text=True,
            timeout=120,
            stdin=subprocess.DEVNULL,
        )
        both = proc.stdout + proc.stderr
        assert proc.returncode == 2, (label, proc.returncode, both[-2000:])
        assert "Traceback" not in both, (label, both[-2000:])
        assert rule in both and f"{src.name}:1:" in both, (label, both[-2000:])
        assert not out.exists() or not any(out.rglob("*.py")), label
