"""Fuzz and limits of source loading (``atdata_gen.sources``): whatever bytes a
source file holds, loading never raises, every problem is a diagnostic with a
registered rule ID, the depth pre-scan agrees with the real nesting depth, and
hostile files (``/dev/zero``, a FIFO, a huge file) cost bounded time and memory.

Fixed seeds (``derandomize=True``); the file runs in a few seconds.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from atdata_gen.diagnostics import Reporter, Severity
from atdata_gen.explain import all_rule_ids
from atdata_gen.sources import MAX_JSON_DEPTH, json_too_deep, load_text
from hypothesis import given, settings
from hypothesis import strategies as st

from .bounded import run_bounded

RULES = set(all_rule_ids())

_NUMBERS = st.sampled_from(
    [
        "0",
        "-0",
        "-0.0",
        "1.5",
        "1e400",
        "-1e400",
        "NaN",
        "Infinity",
        "-Infinity",
        str(2**63 - 1),
        str(2**63),
        str(-(2**63)),
        str(-(2**63) - 1),
        "1" * 4301,
        "12",
    ]
)
_PIECES = st.one_of(
    _NUMBERS,
    st.sampled_from(
        ['"', "\\", '"a"', '"[{"', "[", "]", "{", "}", ",", ":", " ", "\n"]
    ),
    st.sampled_from(['"\\ud800"', '"k": ', "true", "null", '"\\u0000"', "\ufeff"]),
)


def _depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    return 0


def _check(text: str | bytes) -> Reporter:
    reporter = Reporter()
    data = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text
    load_text("fuzz.json", data, reporter)
    for d in reporter:
        assert d.rule in RULES, d
        assert d.span.path == "fuzz.json"
    return reporter


@settings(derandomize=True, max_examples=400, deadline=None)
@given(st.lists(_PIECES, max_size=60).map("".join))
def test_token_soup_never_raises(text: str) -> None:
    _check(text)


@settings(derandomize=True, max_examples=100, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_never_raise(data: bytes) -> None:
    _check(data)


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.text(max_size=3), inner, max_size=3)
    ),
    max_leaves=80,
)


@settings(derandomize=True, max_examples=200, deadline=None)
@given(_JSON, st.integers(1, 8))
def test_depth_prescan_agrees_with_the_parsed_depth(value: Any, limit: int) -> None:
    text = json.dumps(value)
    found = json_too_deep(text, limit)
    assert (found is not None) == (_depth(value) > limit)
    if found is not None:
        offset, pointer = found
        assert text[offset] in "[{"
        # the pointer names a container that exists in the value
        node = value
        for token in pointer.split("/")[1:]:
            token = token.replace("~1", "/").replace("~0", "~")
            node = node[int(token)] if isinstance(node, list) else node[token]
        assert isinstance(node, dict | list)


@settings(derandomize=True, max_examples=100, deadline=None)
@given(_JSON)
def test_in_model_json_loads_clean(value: Any) -> None:
    reporter = _check(json.dumps(value, ensure_ascii=False))
    if _depth(value) <= MAX_JSON_DEPTH:
        assert not [
            d
            for d in reporter
            if d.severity is Severity.ERROR and d.rule != "SRC_INVALID_UNICODE"
        ], list(reporter)


def test_dev_zero_and_fifo_cost_bounded_memory(tmp_path: Path) -> None:
    """A directory with a link to /dev/zero, a FIFO and an 8 MiB + 1 sparse file:
    discovery and loading finish quickly in a small address space."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "zero.json").symlink_to("/dev/zero")
    (src / "urandom.json").symlink_to("/dev/urandom")
    import os

    os.mkfifo(src / "pipe.json")
    with open(src / "huge.json", "wb") as f:
        f.truncate(8 * 1024 * 1024 + 1)
    (src / "ok.json").write_text(
        json.dumps({"lexicon": 1, "id": "a.b.c", "defs": {}}), encoding="utf-8"
    )
    code = f"""
    from atdata_gen.diagnostics import Reporter
    from atdata_gen.sources import discover, load_paths
    r = Reporter()
    docs = load_paths(discover([{str(src)!r}], r), r)
    _result["value"] = [len(docs), sorted((d.rule, d.span.path.rsplit("/", 1)[-1]) for d in r)]
    """
    outcome = run_bounded(code, address_space_mib=1024, timeout=60)
    assert not outcome.timed_out and outcome.error is None, outcome.traceback
    assert outcome.value == [
        1,
        [
            ["SRC_NOT_REGULAR", "pipe.json"],
            ["SRC_NOT_REGULAR", "urandom.json"],
            ["SRC_NOT_REGULAR", "zero.json"],
            ["SRC_TOO_LARGE", "huge.json"],
        ],
    ]
    assert outcome.max_rss_mib < 200, outcome.max_rss_mib


def test_largest_allowed_file_of_brackets_is_bounded() -> None:
    """8 MiB of '[' (the size cap): refused as too deep, no RecursionError, bounded
    memory."""
    code = """
    from atdata_gen.diagnostics import Reporter
    from atdata_gen.sources import load_text
    r = Reporter()
    assert load_text("b.json", b"[" * (8 * 1024 * 1024), r) is None
    _result["value"] = [d.rule for d in r]
    """
    outcome = run_bounded(code, address_space_mib=1024, timeout=60)
    assert not outcome.timed_out and outcome.error is None, outcome.traceback
    assert outcome.value == ["SRC_JSON_TOO_DEEP"]
    assert outcome.max_rss_mib < 300, outcome.max_rss_mib


def test_depth_prescan_is_linear_on_unclosed_escaped_strings() -> None:
    """Review of issue 14: an unclosed string full of ``\\"`` made the string regex
    retry from every quote (quadratic: 36 s for 64 KiB, days for 8 MiB). Now 8 MiB
    of it, past the depth limit, is scanned at once; the child is killed after 60 s
    (a regression hangs nothing)."""
    out = run_bounded(
        """
        import time
        from atdata_gen.sources import json_too_deep
        text = "[" * 70 + '"' + '\\\\"' * (4 * 1024 * 1024)
        t0 = time.perf_counter()
        where = json_too_deep(text)
        _result["value"] = [where[0] if where else None, time.perf_counter() - t0]
        """,
        timeout=60,
    )
    assert not out.timed_out and out.error_type is None, out.traceback
    offset, seconds = out.value  # type: ignore[misc]
    assert offset == 64
    assert seconds < 30, seconds
