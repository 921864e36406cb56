"""The fast member index (``atdata_gen.sources._index_members``) agrees with the full
scan (``_index_positions``) on every offset it gives, covers every object member,
and refuses (``None``) the texts it cannot vouch for; spans of a loaded document
are those of the full scan, including array elements and missing pointers."""

from __future__ import annotations

import json

import pytest
from atdata_gen.diagnostics import Reporter
from atdata_gen.sources import (
    SourceDoc,
    _index_members,
    _index_positions,
    load_text,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from .conftest import OFFICIAL

_KEYS = st.one_of(
    st.sampled_from(["type", "ref", "items", "a", "$type", "x.y#z", "k-1", "@a+b"]),
    st.text(max_size=4),  # anything: quotes, slashes, '~', ':', ',', escapes
)
_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.sampled_from(['"type":', 'x": 1', "\\", '\\"a\\"', "k", "type"]),
    st.text(max_size=6),
)
_JSON = st.recursive(
    _SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(_KEYS, inner, max_size=4)
    ),
    max_leaves=25,
)


def _check(text: str) -> bool:
    value = json.loads(text)
    full = _index_positions(text)
    fast = _index_members(text, value)
    if fast is None:
        return False
    for pointer, offset in fast.items():
        assert full[pointer] == offset, (text, pointer)
    members = {p for p in full if p and not p.rsplit("/", 1)[1].isdigit()}
    # every member pointer whose last token is not an array index is indexed
    # (a digit-only key is a member too; those are checked to be there as well)
    assert members <= set(fast), (text, members - set(fast))
    return True


@settings(max_examples=400, deadline=None)
@given(_JSON, st.sampled_from([None, 1, 2]), st.booleans())
def test_fast_index_agrees_with_the_full_scan(
    value: object, indent: int | None, ascii_only: bool
) -> None:
    text = json.dumps(value, indent=indent, ensure_ascii=ascii_only)
    _check(text)


def test_fast_index_refuses_what_it_cannot_vouch_for() -> None:
    # a key spelt with an escape could be mistaken for a later key of that name
    assert _index_members('{"\\u0074ype": 1, "x": {"type": 2}}', None) is None
    text = '{",a": 1, "b": {",a": 2}}'  # a key that is not plain
    assert _index_members(text, json.loads(text)) is None
    # a value that looks like a key is skipped, not taken
    text = '{"a": ["\\"b\\": ", "b"], "b": {"c": "\\"c\\":"}, "c": 1}'
    fast = _index_members(text, json.loads(text))
    assert fast is not None
    assert fast == {p: o for p, o in _index_positions(text).items() if p in fast}, fast
    assert text[fast["/c"] :].startswith('"c": 1'), fast


def _load(text: str, path: str = "t.json") -> SourceDoc:
    doc = load_text(path, text.encode(), Reporter())
    assert doc is not None
    return doc


@pytest.mark.parametrize(
    "pointer",
    [
        "",
        "/defs/main/record/required/1",  # an array element: from the full scan
        "/defs/main/record/properties/b/items",
        "/defs/main/record/properties/missing/type",  # falls back to a parent
        "/nowhere",
    ],
)
def test_spans_of_a_loaded_document_are_those_of_the_full_scan(pointer: str) -> None:
    text = json.dumps(
        {
            "lexicon": 1,
            "id": "com.example.t",
            "defs": {
                "main": {
                    "type": "record",
                    "record": {
                        "type": "object",
                        "required": ["a", "b"],
                        "properties": {
                            "a": {"type": "string"},
                            "b": {"type": "array", "items": {"type": "integer"}},
                        },
                    },
                }
            },
        },
        indent=2,
    )
    fast = _load(text)
    slow = SourceDoc("t.json", text, json.loads(text), "")  # full scan only
    assert fast.span(pointer) == slow.span(pointer)


def test_the_official_lexicons_take_the_fast_index() -> None:
    files = sorted(OFFICIAL.rglob("*.json"))
    if not files:
        pytest.fail(f"no official corpus at {OFFICIAL}")
    assert all(_check(f.read_text()) for f in files)
