"""The native fast paths of the string formats are sound: whatever they accept, the
exact check accepts too (property test over strings from each format's alphabet)."""

from __future__ import annotations

from atdata_runtime.lex.formats import FAST_PATTERNS, FORMAT_CHECKS
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic_core import SchemaValidator, ValidationError, core_schema

_ALPHABET = st.sampled_from(
    list("abcdefghijklmnopqrstuvwxyzABCQZ0123456789.:-_~%/#@+=T \n")
)
_SEEDS = {
    "did": "did:plc:abc",
    "handle": "a.b.co",
    "nsid": "a.b.c",
    "tid": "3kabc2xyz22aa",
    "record-key": "self",
    "cid": "bafyreib2rxk3",
    "uri": "https://x.y/z",
    "at-identifier": "did:web:x.y",
    "at-uri": "at://did:plc:abc/a.b.c/self",
    "datetime": "2024-02-29T23:59:59.123+05:30",
    "language": "en-GB",
}


def _fast(fmt: str) -> SchemaValidator:
    pattern, lo, hi = FAST_PATTERNS[fmt]
    return SchemaValidator(
        core_schema.str_schema(pattern=pattern, min_length=lo, max_length=hi)
    )


@settings(max_examples=300, deadline=None)
@given(fmt=st.sampled_from(sorted(FAST_PATTERNS)), data=st.data())
def test_fast_path_is_sound(fmt: str, data: st.DataObject) -> None:
    seed = _SEEDS[fmt]
    # Mutate a valid seed: insert, delete or replace a few characters.
    chars = list(seed)
    for _ in range(data.draw(st.integers(0, 3))):
        op = data.draw(st.sampled_from(["ins", "del", "rep"]))
        i = data.draw(st.integers(0, max(len(chars) - 1, 0)))
        if op == "ins":
            chars.insert(i, data.draw(_ALPHABET))
        elif op == "del" and chars:
            chars.pop(i)
        elif chars:
            chars[i] = data.draw(_ALPHABET)
    value = "".join(chars)
    try:
        _fast(fmt).validate_python(value)
    except ValidationError:
        return
    assert FORMAT_CHECKS[fmt](value), (fmt, value)


def test_seeds_take_the_fast_path() -> None:
    for fmt, seed in _SEEDS.items():
        assert _fast(fmt).validate_python(seed) == seed
        assert FORMAT_CHECKS[fmt](seed)
