"""The schema page's version and lens graph (atdata_appview.svg): deterministic,
bounded, well-formed XML whatever the records say, hostile text inert."""

from __future__ import annotations

import random
import re
import xml.etree.ElementTree as ET

import pytest
from atdata_appview.svg import (
    MAX_TITLE,
    VERDICT_COLOURS,
    LensLink,
    Verdict,
    Version,
    schema_graph,
    semver_key,
    xml_text,
)
from hypothesis import given
from hypothesis import strategies as st

NS = {"s": "http://www.w3.org/2000/svg"}
HOSTILE = [
    "<script>alert(1)</script>",
    '"><img src=x onerror=alert(2)>',
    "]]><foreignObject><body onload=alert(3)>",
    "x" * 200,
    "مرحبا بالعالم",
    "שלום עולם",
    "a\u200bb\u200dc\ufeffd",
    "\u202eevil\u2069\u2066",
    "nul\x00bell\x07esc\x1b",
    "\ud800lone surrogate",
    "&amp; &lt; &#x3c;",
]


def uri(name: str, version: str, did: str = "did:plc:a") -> str:
    return f"at://{did}/science.alt.dataset.schema/{name}:{version}"


def versions(*vs: str, name: str = "CellCrop") -> list[Version]:
    return [Version(v, uri(name, v), f"/schema/did:plc:a/{name}:{v}") for v in vs]


def parse(doc: str) -> ET.Element:
    """The document as XML (ElementTree raises on anything not well-formed)."""
    return ET.fromstring(doc)


def texts(root: ET.Element, cls: str) -> list[str]:
    return [
        "".join(t.itertext())
        for t in root.iter("{http://www.w3.org/2000/svg}text")
        if cls in (t.get("class") or "").split()
    ]


def groups(root: ET.Element, cls: str) -> list[ET.Element]:
    return [
        g
        for g in root.iter("{http://www.w3.org/2000/svg}g")
        if cls in (g.get("class") or "").split()
    ]


def strip_isolates(text: str) -> str:
    return text.replace("\u2068", "").replace("\u2069", "")


def test_versions_in_semver_order_with_verdicts_on_the_edges() -> None:
    vs = versions("2.0.0", "1.0.0", "1.10.0", "1.2.0", "1.0.0-rc.1")
    verdicts = [
        Verdict("1.0.0-rc.1", "1.0.0", "compatible", "patch", "none"),
        Verdict("1.0.0", "1.2.0", "compatible", "minor", "minor", 2),
        Verdict("1.2.0", "1.10.0", "breaking", "minor", "major", 1),
        # 1.10.0 -> 2.0.0: no verdict stored
    ]
    root = parse(schema_graph("CellCrop", vs, verdicts, current_uri=vs[0].uri))
    labels = [strip_isolates(t) for t in texts(root, "verdict")]
    assert labels == ["compatible", "compatible", "breaking", "unchecked"]
    shown = [
        strip_isolates("".join(g.find("s:a/s:text", NS).itertext()))  # type: ignore[union-attr]
        for g in groups(root, "version")
    ]
    assert shown == ["1.0.0-rc.1", "1.0.0", "1.2.0", "1.10.0", "2.0.0"]
    # the colours follow the verdicts; the breaking edge names the bump it needs
    edges = groups(root, "compat")
    strokes = [e.find("s:line", NS).get("stroke") for e in edges]  # type: ignore[union-attr]
    assert strokes == [
        VERDICT_COLOURS["compatible"],
        VERDICT_COLOURS["compatible"],
        VERDICT_COLOURS["breaking"],
        VERDICT_COLOURS["unchecked"],
    ]
    assert [strip_isolates(t) for t in texts(root, "bump")] == [
        "patch",
        "minor",
        "minor, needs major",
    ]
    current = groups(root, "current")
    assert len(current) == 1
    assert "2.0.0" in "".join(current[0].itertext())


def test_a_breaking_change_under_a_declared_major_bump_is_not_called_compatible() -> (
    None
):
    """The checker's ``compatible`` only says the declared bump covers the changes:
    a change that needs a major bump, declared as one, is drawn as breaking (and
    declared, ✓, still green); the others name the bump they need."""
    vs = versions("1.0.0", "1.1.0", "2.0.0", "2.0.1")
    verdicts = [
        Verdict("1.0.0", "1.1.0", "compatible", "minor", "minor"),
        Verdict("1.1.0", "2.0.0", "compatible", "major", "major", 3),
        Verdict("2.0.0", "2.0.1", "compatible", "patch", "none"),
    ]
    root = parse(schema_graph("CellCrop", vs, verdicts))
    assert [strip_isolates(t) for t in texts(root, "verdict")] == [
        "compatible",
        "breaking ✓",
        "compatible",
    ]
    assert [strip_isolates(t) for t in texts(root, "bump")] == [
        "minor",
        "declared major",
        "patch",
    ]
    edges = groups(root, "compat")
    assert [e.find("s:line", NS).get("stroke") for e in edges] == [  # type: ignore[union-attr]
        VERDICT_COLOURS["compatible"]
    ] * 3
    tips = [e.find("s:title", NS).text or "" for e in edges]  # type: ignore[union-attr]
    assert "breaking, declared major ✓" in tips[1]
    assert "compatible (minor)" in tips[0]
    desc = root.find("s:desc", NS)
    assert desc is not None and "1.1.0 to 2.0.0: breaking, declared major ✓" in (
        desc.text or ""
    )


def test_verdict_label() -> None:
    from atdata_appview.svg import verdict_label

    assert verdict_label("compatible", "major") == "breaking, declared major ✓"
    assert verdict_label("compatible", "minor") == "compatible (minor)"
    assert verdict_label("compatible", "patch") == "compatible (patch)"
    assert verdict_label("compatible", "none") == "compatible"
    assert verdict_label("compatible", None) == "compatible"
    assert verdict_label("breaking", "major") == "breaking"
    assert verdict_label("incomparable", None) == "incomparable"


def test_lenses_are_drawn_to_and_from_other_schemas_and_inside_the_name() -> None:
    vs = versions("1.0.0", "2.0.0")
    other = uri("ImageSample", "1.0.0", "did:plc:b")
    older = uri("Legacy", "0.1.0", "did:plc:c")
    lenses = [
        LensLink("to_image", vs[0].uri, other, "CellCrop@1.0.0", "ImageSample@1.0.0",
                 "/lens/did:plc:b/l1", None, "/schema/did:plc:b/ImageSample:1.0.0"),
        LensLink("from_legacy", older, vs[1].uri, "Legacy@0.1.0", "CellCrop@2.0.0",
                 "/lens/did:plc:c/l2"),
        LensLink("upgrade", vs[0].uri, vs[1].uri, "CellCrop@1.0.0", "CellCrop@2.0.0",
                 "/lens/did:plc:a/l3"),
        # touches no version of this name: left out, not counted
        LensLink("elsewhere", other, older, "ImageSample@1.0.0", "Legacy@0.1.0"),
    ]  # fmt: skip
    root = parse(schema_graph("CellCrop", vs, [], lenses))
    assert sorted(strip_isolates(t) for t in texts(root, "lens-label")) == [
        "from_legacy",
        "to_image",
        "upgrade",
    ]
    others = ["".join(g.itertext()) for g in groups(root, "other-schema")]
    assert len(others) == 2
    assert any("ImageSample@1.0.0" in o for o in others)
    assert any("Legacy@0.1.0" in o for o in others)
    hrefs = {a.get("href") for a in root.iter("{http://www.w3.org/2000/svg}a")}
    assert {"/lens/did:plc:b/l1", "/lens/did:plc:a/l3"} <= hrefs
    assert "/schema/did:plc:b/ImageSample:1.0.0" in hrefs
    assert texts(root, "graph-note") == []


def test_same_input_same_bytes_whatever_the_order() -> None:
    vs = versions("1.0.0", "1.1.0", "2.0.0", "0.9.0")
    verdicts = [Verdict("1.0.0", "1.1.0", "compatible", "minor", "minor")]
    lenses = [
        LensLink(f"lens{i}", vs[i % 4].uri, uri(f"O{i}", "1.0.0"), "a", f"O{i}@1.0.0")
        for i in range(6)
    ]
    first = schema_graph("CellCrop", vs, verdicts, lenses, current_uri=vs[1].uri)
    rng = random.Random(7)
    for _ in range(5):
        v2, l2 = vs[:], lenses[:]
        rng.shuffle(v2)
        rng.shuffle(l2)
        again = schema_graph("CellCrop", v2, verdicts, l2, current_uri=vs[1].uri)
        assert again == first


def test_bounds_version_window_lens_count_and_notes() -> None:
    vs = versions(*[f"1.{i}.0" for i in range(60)])
    current = vs[40]
    lenses = [
        LensLink(f"l{i}", current.uri, uri(f"T{i}", "1.0.0"), "x", f"T{i}@1.0.0")
        for i in range(30)
    ]
    doc = schema_graph(
        "Big", vs, [], lenses, current_uri=current.uri, max_versions=10, max_lenses=5
    )
    root = parse(doc)
    assert len(groups(root, "version")) == 10
    assert len(groups(root, "lens-edge")) == 5
    # the window holds the current version; the notes count what was left out
    assert len(groups(root, "current")) == 1
    (note,) = texts(root, "graph-note")
    assert note == "+35 earlier versions · +15 later versions · +25 more lenses"
    # the size grows with what is drawn, not with the input
    small = schema_graph(
        "Big", vs * 3, [], lenses * 10, current_uri=current.uri, max_versions=10,
        max_lenses=5,
    )  # fmt: skip
    assert small == doc


def test_bounds_must_be_positive() -> None:
    with pytest.raises(ValueError):
        schema_graph("X", versions("1.0.0"), [], max_versions=0)


@pytest.mark.parametrize("text", HOSTILE)
def test_hostile_text_is_escaped_everywhere(text: str) -> None:
    vs = [Version(text, f"at://did:plc:a/science.alt.dataset.schema/{text}", None)]
    vs += versions("1.0.0")
    lenses = [
        LensLink(text, vs[1].uri, text, text, text, href=text, target_href=text),
    ]
    doc = schema_graph(text, vs, [Verdict("1.0.0", text, text, text, text)], lenses)
    root = parse(doc)  # well-formed
    # no element or attribute that can run or embed anything
    tags = {el.tag.split("}")[-1] for el in root.iter()}
    assert tags <= {
        "svg", "title", "desc", "defs", "marker", "path", "text", "g", "line",
        "rect", "a",
    }  # fmt: skip
    for el in root.iter():
        for name, value in el.attrib.items():
            assert not name.lower().startswith("on"), name
            assert name != "style"
            if name == "href":
                assert value.startswith("/") and not value.startswith("//")
    assert "<script" not in doc and "<img" not in doc and "<foreignObject" not in doc
    # hostile links were dropped (not relative paths), not escaped into an href
    assert all(
        a.get("href", "").startswith("/schema/")
        for a in root.iter("{http://www.w3.org/2000/svg}a")
    )
    # bidi controls cannot escape the label isolates
    for t in root.iter("{http://www.w3.org/2000/svg}text"):
        inner = "".join(t.itertext())
        if inner.startswith("\u2068"):
            assert inner.endswith("\u2069")
            assert not re.search("[\u202a-\u202e\u2066-\u2069]", inner[1:-1])


def test_long_labels_are_cut_and_tooltips_bounded() -> None:
    name = "N" * 5000
    vs = [Version("1.0.0", uri("N", "1.0.0"))]
    root = parse(schema_graph(name, vs, []))
    (title,) = texts(root, "graph-title")
    assert len(strip_isolates(title)) == 60 and title.endswith("…\u2069")
    for t in root.iter("{http://www.w3.org/2000/svg}title"):
        assert len(t.text or "") <= MAX_TITLE


def test_wide_characters_count_double() -> None:
    vs = [Version("1.0.0", uri("N", "1.0.0"))]
    root = parse(schema_graph("数据集" * 40, vs, []))
    (title,) = texts(root, "graph-title")
    # 60 units: 29 wide characters and the ellipsis
    assert strip_isolates(title) == ("数据集" * 40)[:29] + "…"


def test_xml_text() -> None:
    assert xml_text("<a href=\"x\">'&'</a>") == (
        "&lt;a href=&quot;x&quot;&gt;&apos;&amp;&apos;&lt;/a&gt;"
    )
    assert xml_text("a\x00b\x1fc\ufffe\u202e") == "a\ufffdb\ufffdc\ufffd\ufffd"
    assert xml_text("tab\tnl\ncr\r") == "tab\tnl\ncr\r"
    # the bidi marks too (LRM, RLM, ALM): the same as the pages' markers
    assert xml_text("\u200ea\u200f\u061c") == "\ufffda\ufffd\ufffd"


def test_semver_key_orders_by_precedence() -> None:
    given_order = ["1.0.0", "1.0.0-alpha", "not-a-version", "0.9.10", "1.0.0-alpha.1",
                   "1.0.0-beta.11", "1.0.0-beta.2", "0.9.9", "10.0.0", "2.0.0+build.1"]  # fmt: skip
    assert sorted(given_order, key=semver_key) == [
        "0.9.9", "0.9.10", "1.0.0-alpha", "1.0.0-alpha.1", "1.0.0-beta.2",
        "1.0.0-beta.11", "1.0.0", "2.0.0+build.1", "10.0.0", "not-a-version",
    ]  # fmt: skip


@given(
    st.lists(st.text(max_size=40), min_size=1, max_size=8),
    st.lists(st.text(max_size=40), max_size=6),
)
def test_any_text_gives_well_formed_bounded_svg(
    names: list[str], lens_names: list[str]
) -> None:
    vs = [Version(n, f"at://did:plc:a/science.alt.dataset.schema/{i}") for i, n in
          enumerate(names)]  # fmt: skip
    lenses = [
        LensLink(n, vs[i % len(vs)].uri, f"at://x/{n}", n, n, href=n)
        for i, n in enumerate(lens_names)
    ]
    doc = schema_graph(names[0], vs, [], lenses)
    root = parse(doc)
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    assert len(doc) < 40_000
