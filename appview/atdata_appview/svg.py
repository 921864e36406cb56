"""The version and lens graph of a schema page, drawn as SVG on the server.

:func:`schema_graph` turns one schema name's versions, the compatibility verdicts
between consecutive versions and the lens records that touch them into an SVG
document (text):

- the versions are boxes in a row, left to right in semantic-version order
  (semver.org § 11; a version that does not parse sorts after every one that does,
  by its text), the current one drawn thicker;
- between two consecutive versions an arrow coloured by the verdict
  (``compatible`` green, ``breaking`` red, ``incomparable`` grey, no verdict
  stored: dashed grey and ``unchecked``), labelled with the verdict (a
  compatible change that needs a declared major bump: ``breaking ✓``, green;
  :func:`verdict_label`) and, when they differ, the declared and the needed bump;
- a lens from one of these versions to another schema is an arrow up to that
  schema's box (the row above); a lens from another schema is an arrow up from
  the row below; a lens between two versions of this name is an arc under the row.

The layout is a pure function of the input (sorted, no randomness, no clock): the
same input gives the same bytes. It is bounded: at most ``max_versions`` version
boxes (a window around the current version; ``+N earlier`` / ``+N later`` notes
say what was left out), at most ``max_lenses`` lens arrows (``+N more lenses``),
every label cut to a fixed width (the full text stays in a ``<title>`` tooltip, cut
at :data:`MAX_TITLE` characters), so the output is bounded whatever the records say.

Record text is hostile. It only ever enters the document as XML character data or
attribute values, through :func:`xml_text` (escapes ``& < > " '``, replaces the
characters XML 1.0 § 2.2 forbids and the bidirectional controls with U+FFFD, so a
stray isolate terminator cannot reorder what follows); labels are wrapped in
FIRST STRONG ISOLATE … POP DIRECTIONAL ISOLATE (Unicode UAX #9 § 2.7) so a
right-to-left name renders right to left without reordering the ``@version`` next
to it. The output has no ``<script>``, no ``<foreignObject>``, no event-handler
attribute, no ``style`` element or attribute (the pages' Content-Security-Policy
forbids inline styles: colours are presentation attributes), and links
(``<a href>``) only to the relative paths the caller passes (checked: they must
start with a single ``/``).
"""

from __future__ import annotations

import itertools
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final
from xml.sax.saxutils import escape as _xml_escape

import semantic_version

__all__ = [
    "MAX_LENSES",
    "MAX_TITLE",
    "MAX_VERSIONS",
    "LensLink",
    "Verdict",
    "Version",
    "schema_graph",
    "semver_key",
    "verdict_label",
    "xml_text",
]

MAX_VERSIONS: Final = 24
"""Version boxes drawn at most (default of ``max_versions``)."""
MAX_LENSES: Final = 16
"""Lens arrows drawn at most (default of ``max_lenses``)."""
MAX_TITLE: Final = 300
"""Characters of a tooltip (``<title>``) at most."""

VERDICT_COLOURS: Final = {
    "compatible": "#1b7f3b",
    "breaking": "#c0261b",
    "incomparable": "#6b6b6b",
    "unchecked": "#8a8a8a",
}
"""Stroke colour of a version arrow per verdict; an unknown verdict text is drawn
as ``incomparable``."""

_LENS_COLOUR: Final = "#3559b5"
_INK: Final = "#1d1d1f"
_FONT: Final = "system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif"

_BAD_XML = re.compile(
    "[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x84\x86-\x9f\ud800-\udfff\ufffe\uffff"
    "\u202a-\u202e\u2066-\u2069\u200e\u200f\u061c]"
)
"""Characters XML 1.0 (§ 2.2 ``Char``) forbids or discourages, and the bidi
embedding/override/isolate controls and the marks LRM, RLM, ALM (UAX #9 § 2)."""

# layout (user units; 1 unit = 1 CSS px at scale 1)
_VW, _VH = 120, 44  # version box
_XW, _XH = 172, 44  # other-schema box
_GAP = 136  # between version boxes (room for a verdict and a bump label)
_XGAP = 24  # between other-schema boxes
_MARGIN = 24
_TITLE_H = 34
_ROW_GAP = 92  # between the version row and a lens row
_ARC_ROOM = 64  # under the row, for lenses inside this name
_NOTE_H = 22


@dataclass(frozen=True, slots=True)
class Version:
    """One version of the schema: ``version`` (semver text), the record's ``uri``
    (AT-URI) and ``href`` (a path on this site, or ``None``: not a link)."""

    version: str
    uri: str
    href: str | None = None


@dataclass(frozen=True, slots=True)
class Verdict:
    """The verdict between two consecutive versions (``appview_schema_compat``):
    ``verdict`` is ``compatible`` | ``breaking`` | ``incomparable``; bumps are
    ``none`` | ``patch`` | ``minor`` | ``major`` or ``None``; ``findings`` counts
    the checker's findings."""

    from_version: str
    to_version: str
    verdict: str
    declared_bump: str | None = None
    needed_bump: str | None = None
    findings: int = 0


@dataclass(frozen=True, slots=True)
class LensLink:
    """A lens record with at least one end among the versions: ``name``, both ends'
    AT-URIs and display labels (``name@version``, or the AT-URI when the schema is
    not indexed), and paths on this site (``href`` of the lens page, and of each
    end's schema page) or ``None``."""

    name: str
    source_uri: str
    target_uri: str
    source_label: str
    target_label: str
    href: str | None = None
    source_href: str | None = None
    target_href: str | None = None


def xml_text(text: str) -> str:
    """``text`` safe as XML character data and as a quoted attribute value:
    forbidden characters and bidi controls → U+FFFD, then ``& < > " '`` escaped."""
    clean = _BAD_XML.sub("\ufffd", text)
    return _xml_escape(clean, {'"': "&quot;", "'": "&apos;"})


def _width(ch: str) -> int:
    """Display width of one code point in half-em units: wide and full-width
    characters (East Asian Width W/F) count 2, combining marks 0, others 1."""
    if unicodedata.combining(ch):
        return 0
    return 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1


def _cut(text: str, units: int) -> str:
    """``text`` cut to at most ``units`` display units, an ellipsis marking a cut."""
    total = 0
    for i, ch in enumerate(text):
        total += _width(ch)
        if total > units:
            # room for the ellipsis
            out, used = [], 0
            for c in text[:i]:
                w = _width(c)
                if used + w > units - 1:
                    break
                out.append(c)
                used += w
            return "".join(out) + "\u2026"
    return text


def _label(text: str, units: int) -> str:
    """A cut, escaped, direction-isolated label."""
    return "\u2068" + xml_text(_cut(text, units)) + "\u2069"


def _title(text: str) -> str:
    return xml_text(text if len(text) <= MAX_TITLE else text[: MAX_TITLE - 1] + "…")


def semver_key(version: str) -> tuple[int, object, str]:
    """Sort key of a version text in semantic-version precedence (semver.org § 11;
    build metadata ignored, then the text breaks ties); versions that do not parse
    sort after all that do, by their text."""
    try:
        parsed = semantic_version.Version(version)
    except ValueError:
        return (1, (), version)
    return (0, parsed.precedence_key[:4], version)


def _safe_href(href: str | None) -> str | None:
    """``href`` when it is a path on this site (one leading ``/``, no scheme, no
    backslash, no control character), else ``None``."""
    if href is None or not href.startswith("/") or href.startswith("//"):
        return None
    if "\\" in href or any(ord(c) < 0x21 or c == "\x7f" for c in href):
        return None
    return href


def _link(href: str | None, inner: str) -> str:
    safe = _safe_href(href)
    if safe is None:
        return inner
    return f'<a href="{xml_text(safe)}">{inner}</a>'


def _window(count: int, current: int | None, size: int) -> tuple[int, int]:
    """``[start, end)`` of at most ``size`` items out of ``count``: around
    ``current`` when given, else the latest ones."""
    if count <= size:
        return 0, count
    if current is None:
        return count - size, count
    start = max(0, min(current - size // 2, count - size))
    return start, start + size


_BUMPS: Final = ("none", "patch", "minor", "major")


def verdict_label(verdict: str, needed_bump: str | None) -> str:
    """The verdict as a reader takes it: the checker's ``compatible`` only says
    the declared bump covers the changes, so a change that needs a ``major`` bump
    (and declares one) is ``breaking, declared major ✓``; other compatible
    changes name the bump they need (``compatible (minor)``, ``compatible
    (patch)``; ``compatible`` when none); any other verdict as stored. The XRPC
    verdict values are not changed (Lexicon ``defs#compatVerdict``)."""
    if verdict != "compatible":
        return verdict
    if needed_bump == "major":
        return "breaking, declared major \u2713"
    if needed_bump in ("minor", "patch"):
        return f"compatible ({needed_bump})"
    return "compatible"


def _short_verdict(v: Verdict) -> str:
    """The verdict line of an edge (at most 16 units): ``breaking ✓`` for a
    declared major change, else the stored verdict."""
    if v.verdict == "compatible" and v.needed_bump == "major":
        return "breaking \u2713"
    return v.verdict


def _bump_text(v: Verdict) -> str:
    """The declared bump, and the needed one when it is larger (semver order);
    ``declared major`` under a :func:`_short_verdict` of ``breaking ✓``."""
    if v.verdict == "compatible" and v.needed_bump == "major":
        return "declared major"
    d, n = v.declared_bump, v.needed_bump
    if d in _BUMPS and n in _BUMPS and _BUMPS.index(n) > _BUMPS.index(d):
        return f"{d}, needs {n}"
    if v.declared_bump:
        return v.declared_bump
    return ""


def schema_graph(
    name: str,
    versions: Sequence[Version],
    verdicts: Sequence[Verdict],
    lenses: Sequence[LensLink] = (),
    *,
    current_uri: str | None = None,
    max_versions: int = MAX_VERSIONS,
    max_lenses: int = MAX_LENSES,
) -> str:
    """The graph as an SVG document (text, UTF-8 safe, no XML declaration: it can be
    inlined in HTML as is or served as ``image/svg+xml``).

    ``versions`` in any order (duplicates by ``version`` text: the first kept);
    ``verdicts`` are looked up by ``(from_version, to_version)`` of each two boxes
    side by side; ``lenses`` not touching a drawn version are left out (and
    counted in the ``+N more lenses`` note; equal ones are drawn once). ``max_versions`` and ``max_lenses``
    must be at least 1 (``ValueError``)."""
    if max_versions < 1 or max_lenses < 1:
        raise ValueError("max_versions and max_lenses must be at least 1")
    seen: set[str] = set()
    ordered: list[Version] = []
    for v in sorted(versions, key=lambda v: semver_key(v.version)):
        if v.version not in seen:
            seen.add(v.version)
            ordered.append(v)
    cur_index = next((i for i, v in enumerate(ordered) if v.uri == current_uri), None)
    start, end = _window(len(ordered), cur_index, max_versions)
    shown = ordered[start:end]
    by_pair = {(v.from_version, v.to_version): v for v in verdicts}
    uris = {v.uri: i for i, v in enumerate(shown)}

    # lenses: each with its end(s) among the shown versions
    up: list[tuple[int, LensLink]] = []  # this version -> other schema (row above)
    down: list[tuple[int, LensLink]] = []  # other schema -> this version (row below)
    inner: list[tuple[int, int, LensLink]] = []  # between two shown versions
    touching = 0
    distinct = sorted(
        set(lenses),
        key=lambda x: (x.name, x.source_uri, x.target_uri, x.href or "", repr(x)),
    )
    for lens in distinct:
        s, t = uris.get(lens.source_uri), uris.get(lens.target_uri)
        if s is None and t is None:
            continue
        touching += 1
        if len(up) + len(down) + len(inner) >= max_lenses:
            continue
        if s is not None and t is not None:
            inner.append((s, t, lens))
        elif s is not None:
            up.append((s, lens))
        elif t is not None:
            down.append((t, lens))
    hidden = {v.uri for v in ordered} - uris.keys()
    hidden_only = sum(
        1
        for lens in distinct
        if lens.source_uri not in uris
        and lens.target_uri not in uris
        and (lens.source_uri in hidden or lens.target_uri in hidden)
    )
    left_out = touching - (len(up) + len(down) + len(inner)) + hidden_only

    def other_nodes(
        links: list[tuple[int, LensLink]], uri_of: str, label_of: str, href_of: str
    ) -> list[tuple[float, str, str, str | None, list[int]]]:
        """Other-schema boxes of a row: (desired centre x, uri, label, href,
        attached version indexes), deduplicated by uri, in x then label order."""
        nodes: dict[str, tuple[str, str | None, list[int]]] = {}
        for i, lens in links:
            uri = getattr(lens, uri_of)
            label, href = getattr(lens, label_of), getattr(lens, href_of)
            if uri not in nodes:
                nodes[uri] = (label, href, [])
            nodes[uri][2].append(i)
        out = []
        for uri, (label, href, idx) in nodes.items():
            centre = sum(_vx(i) + _VW / 2 for i in idx) / len(idx)
            out.append((centre, uri, label, href, sorted(set(idx))))
        out.sort(key=lambda n: (n[0], n[2], n[1]))
        return out

    def _vx(i: int) -> float:
        return _MARGIN + i * (_VW + _GAP)

    tops = other_nodes(up, "target_uri", "target_label", "target_href")
    bottoms = other_nodes(down, "source_uri", "source_label", "source_href")

    def place(
        nodes: list[tuple[float, str, str, str | None, list[int]]],
    ) -> list[float]:
        xs: list[float] = []
        right = float(_MARGIN) - _XGAP
        for centre, *_ in nodes:
            x = max(centre - _XW / 2, right + _XGAP, float(_MARGIN))
            xs.append(x)
            right = x + _XW
        return xs

    top_xs, bottom_xs = place(tops), place(bottoms)
    row_w = _vx(len(shown)) - _GAP + _MARGIN if shown else 2 * _MARGIN + _VW
    width = max(
        row_w,
        (top_xs[-1] + _XW + _MARGIN) if top_xs else 0,
        (bottom_xs[-1] + _XW + _MARGIN) if bottom_xs else 0,
        2 * _MARGIN + 360,
    )
    y = float(_TITLE_H + _MARGIN)
    top_y = y
    if tops:
        y += _XH + _ROW_GAP
    row_y = y
    y += _VH
    if inner:
        y += _ARC_ROOM
    bottom_y = y + _ROW_GAP
    if bottoms:
        y = bottom_y + _XH
    notes: list[str] = []
    if start:
        notes.append(f"+{start} earlier version{'s' if start != 1 else ''}")
    if len(ordered) - end:
        n = len(ordered) - end
        notes.append(f"+{n} later version{'s' if n != 1 else ''}")
    if left_out:
        notes.append(f"+{left_out} more lens{'es' if left_out != 1 else ''}")
    height = y + _MARGIN + (_NOTE_H if notes else 0)

    w, h = round(width), round(height)
    summary = _describe(name, shown, by_pair, up, down, inner)
    out: list[str] = [
        (
            '<svg xmlns="http://www.w3.org/2000/svg" class="schema-graph" '
            f'width="{w}" height="{h}" viewBox="0 0 {w} {h}" role="img" '
            'aria-labelledby="graph-title graph-desc" '
            f'font-family="{xml_text(_FONT)}" font-size="13" fill="{_INK}">'
        ),
        f'<title id="graph-title">{_title(f"Versions and lenses of {name}")}</title>',
        f'<desc id="graph-desc">{_title(summary)}</desc>',
        "<defs>",
    ]
    for key, colour in [*VERDICT_COLOURS.items(), ("lens", _LENS_COLOUR)]:
        out.append(
            f'<marker id="arrow-{key}" viewBox="0 0 10 10" refX="9" refY="5" '
            f'markerWidth="7" markerHeight="7" orient="auto-start-reverse">'
            f'<path d="M0,0 L10,5 L0,10 z" fill="{colour}"/></marker>'
        )
    out.append("</defs>")
    out.append(
        f'<text class="graph-title" x="{_MARGIN}" y="{_MARGIN + 6}" font-size="15" '
        f'font-weight="600">{_label(name, 60)}</text>'
    )

    # version edges
    for i in range(len(shown) - 1):
        a, b = shown[i], shown[i + 1]
        vd = by_pair.get((a.version, b.version))
        verdict = vd.verdict if vd is not None else "unchecked"
        key = verdict if verdict in VERDICT_COLOURS else "incomparable"
        colour = VERDICT_COLOURS[key]
        x1, x2 = _vx(i) + _VW, _vx(i + 1)
        cy = row_y + _VH / 2
        dash = ' stroke-dasharray="5 4"' if vd is None else ""
        shown_verdict = _short_verdict(vd) if vd is not None else verdict
        long_verdict = (
            verdict_label(vd.verdict, vd.needed_bump) if vd is not None else verdict
        )
        tip = f"{a.version} → {b.version}: {long_verdict}"
        if vd is not None:
            tip += f" ({vd.findings} finding{'s' if vd.findings != 1 else ''})"
            bump = _bump_text(vd)
            if bump:
                tip += f"; bump {bump}"
        out.append(
            f'<g class="compat compat-{key}"><title>{_title(tip)}</title>'
            f'<line x1="{x1 + 2:g}" y1="{cy:g}" x2="{x2 - 3:g}" y2="{cy:g}" '
            f'stroke="{colour}" stroke-width="2.5"{dash} '
            f'marker-end="url(#arrow-{key})"/>'
            f'<text class="verdict" x="{(x1 + x2) / 2:g}" y="{cy - 8:g}" '
            f'text-anchor="middle" font-size="12" font-weight="600" '
            f'fill="{colour}">{_label(shown_verdict, 16)}</text>'
        )
        if vd is not None and _bump_text(vd):
            out.append(
                f'<text class="bump" x="{(x1 + x2) / 2:g}" y="{cy + 17:g}" '
                f'text-anchor="middle" font-size="11" fill="{colour}">'
                f"{_label(_bump_text(vd), 18)}</text>"
            )
        out.append("</g>")

    # lens edges (drawn under the boxes)
    def lens_edge(x1: float, y1: float, x2: float, y2: float, lens: LensLink) -> str:
        mx, my = (x1 + x2) / 2, (y1 + y2) / 2
        tip = f"lens {lens.name}: {lens.source_label} → {lens.target_label}"
        body = (
            f"<title>{_title(tip)}</title>"
            f'<line x1="{x1:g}" y1="{y1:g}" x2="{x2:g}" y2="{y2:g}" '
            f'stroke="{_LENS_COLOUR}" stroke-width="1.8" '
            f'marker-end="url(#arrow-lens)"/>'
            f'<text class="lens-label" x="{mx + 6:g}" y="{my:g}" font-size="11" '
            f'fill="{_LENS_COLOUR}">{_label(lens.name, 22)}</text>'
        )
        return f'<g class="lens-edge">{_link(lens.href, body)}</g>'

    for (_, uri, _, _, _), x in zip(tops, top_xs, strict=True):
        for i, lens in up:
            if lens.target_uri == uri:
                out.append(
                    lens_edge(
                        _vx(i) + _VW / 2, row_y - 2, x + _XW / 2, top_y + _XH + 3, lens
                    )
                )
    for (_, uri, _, _, _), x in zip(bottoms, bottom_xs, strict=True):
        for i, lens in down:
            if lens.source_uri == uri:
                out.append(
                    lens_edge(
                        x + _XW / 2,
                        bottom_y - 2,
                        _vx(i) + _VW / 2,
                        row_y + _VH + 3,
                        lens,
                    )
                )
    for k, (s, t, lens) in enumerate(inner):
        x1, x2 = _vx(s) + _VW / 2, _vx(t) + _VW / 2
        base = row_y + _VH + 3
        depth = _ARC_ROOM - 14 - 6 * (k % 3)
        tip = f"lens {lens.name}: {lens.source_label} → {lens.target_label}"
        body = (
            f"<title>{_title(tip)}</title>"
            f'<path d="M{x1:g},{base:g} C{x1:g},{base + depth:g} {x2:g},'
            f'{base + depth:g} {x2:g},{base:g}" fill="none" stroke="{_LENS_COLOUR}" '
            f'stroke-width="1.8" marker-end="url(#arrow-lens)"/>'
            f'<text class="lens-label" x="{(x1 + x2) / 2:g}" '
            f'y="{base + depth * 0.75 + 15:g}" text-anchor="middle" font-size="11" '
            f'fill="{_LENS_COLOUR}">{_label(lens.name, 22)}</text>'
        )
        out.append(f'<g class="lens-edge">{_link(lens.href, body)}</g>')

    # version boxes
    for i, v in enumerate(shown):
        current = v.uri == current_uri
        x = _vx(i)
        body = (
            f"<title>{_title(f'{name}@{v.version} ({v.uri})')}</title>"
            f'<rect x="{x:g}" y="{row_y:g}" width="{_VW}" height="{_VH}" rx="8" '
            f'fill="{"#eef3ff" if current else "#ffffff"}" stroke="{_INK}" '
            f'stroke-width="{2.5 if current else 1.2}"/>'
            f'<text x="{x + _VW / 2:g}" y="{row_y + _VH / 2 + 5:g}" '
            f'text-anchor="middle" font-weight="{700 if current else 500}">'
            f"{_label(v.version, 16)}</text>"
        )
        cls = "version current" if current else "version"
        out.append(f'<g class="{cls}">{_link(v.href, body)}</g>')

    # other-schema boxes
    for nodes, xs, ny in ((tops, top_xs, top_y), (bottoms, bottom_xs, bottom_y)):
        for (_, uri, label, href, _), x in zip(nodes, xs, strict=True):
            body = (
                f"<title>{_title(f'{label} ({uri})')}</title>"
                f'<rect x="{x:g}" y="{ny:g}" width="{_XW}" height="{_XH}" rx="8" '
                f'fill="#f6f6f8" stroke="{_LENS_COLOUR}" stroke-width="1.2" '
                f'stroke-dasharray="4 3"/>'
                f'<text x="{x + _XW / 2:g}" y="{ny + _XH / 2 + 5:g}" '
                f'text-anchor="middle">{_label(label, 24)}</text>'
            )
            out.append(f'<g class="other-schema">{_link(href, body)}</g>')

    if notes:
        out.append(
            f'<text class="graph-note" x="{_MARGIN}" y="{h - _MARGIN + 4:g}" '
            f'font-size="12" fill="#555">{xml_text(" · ".join(notes))}</text>'
        )
    out.append("</svg>")
    return "".join(out)


def _describe(
    name: str,
    shown: Sequence[Version],
    by_pair: dict[tuple[str, str], Verdict],
    up: Sequence[tuple[int, LensLink]],
    down: Sequence[tuple[int, LensLink]],
    inner: Sequence[tuple[int, int, LensLink]],
) -> str:
    """A plain-text summary of the drawing (for ``<desc>``, screen readers)."""
    parts = [f"{len(shown)} version{'s' if len(shown) != 1 else ''} of {name}"]
    for a, b in itertools.pairwise(shown):
        v = by_pair.get((a.version, b.version))
        said = verdict_label(v.verdict, v.needed_bump) if v else "unchecked"
        parts.append(f"{a.version} to {b.version}: {said}")
    n = len(up) + len(down) + len(inner)
    if n:
        parts.append(f"{n} lens{'es' if n != 1 else ''}")
    return "; ".join(parts)
