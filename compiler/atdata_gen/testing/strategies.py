"""Hypothesis strategies from the IR: valid wire data for any def, and mutations
that make it invalid.

:func:`wire_data` returns a strategy of JSON values (``dict``/``list``/``str``/…,
as ``json.loads`` returns them) that are valid for a def under the Lexicon spec:
string lengths in UTF-8 bytes and graphemes, formats, enums and consts, integer
ranges, array lengths, blobs (``accept``/``maxSize``), ``$bytes``/``$link``,
unions with their ``$type``, and occasional unknown fields (which the spec says
readers keep). Reference cycles are cut by depth: past ``max_depth`` optional fields
are left out.

:func:`mutation_sites` lists, for one valid value, every place where a single edit
makes it invalid (a string over ``maxLength`` or ``maxGraphemes``, a bad format, a
required field removed, a closed union's ``$type`` changed, …), so property tests
can assert that each is rejected.

Used by the property tests and by the compatibility oracle.
"""

from __future__ import annotations

import base64
import copy
import string
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from atdata_runtime.lex.text import count_graphemes, utf8_length
from hypothesis import strategies as st

from ..ir.link import LinkedModel
from ..ir.model import (
    ArrayType,
    BlobType,
    BooleanType,
    BytesType,
    CidLinkType,
    DefId,
    IntegerType,
    IRType,
    NullType,
    ObjectType,
    RecordDef,
    RefType,
    StringType,
    UnionType,
    UnknownType,
)

__all__ = ["Mutation", "mutation_sites", "wire_data"]

_B32 = "abcdefghijklmnopqrstuvwxyz234567"
_CIDS = (
    "bafyreib2rxk3rybk3aobmv5cjuql3bm2twh4jo5uxgf5u3tjoqlzhxygje",
    "bafkreibme22gw2h7y2h7tg2fhqotaqjucnbc24deqo72b6mkl2egezxhvy",
    "bafyreie5737gdxlw5i64vzichcalba3z2v5n6icifvx5xytvske7mr3hpm",
)
_LABEL = st.text(string.ascii_lowercase + string.digits, min_size=1, max_size=8)
_HANDLE = st.builds(lambda a, b: f"{a}.{b}.test", _LABEL, _LABEL)
_DID = st.one_of(
    st.text(_B32, min_size=24, max_size=24).map(lambda s: f"did:plc:{s}"),
    _HANDLE.map(lambda h: f"did:web:{h}"),
)
_NSID = st.builds(
    lambda a, b, c: f"com.{a}.{b}.{c}",
    _LABEL.filter(lambda s: s[0].isalpha()),
    _LABEL.filter(lambda s: s[0].isalpha()),
    st.text(string.ascii_letters, min_size=1, max_size=10),
)
_TID = st.builds(
    lambda a, b: a + b,
    st.sampled_from("234567abcdefghij"),
    st.text(_B32, min_size=12, max_size=12),
)
_RKEY = st.one_of(
    _TID,
    st.just("self"),
    st.text(
        string.ascii_letters + string.digits + "-_.~:", min_size=1, max_size=20
    ).filter(lambda s: s not in (".", "..")),
)
_DATETIME = st.datetimes(
    min_value=__import__("datetime").datetime(1970, 1, 1),
    max_value=__import__("datetime").datetime(2100, 1, 1),
).map(lambda d: d.strftime("%Y-%m-%dT%H:%M:%S.") + f"{d.microsecond // 1000:03d}Z")
_FORMATS: dict[str, st.SearchStrategy[str]] = {
    "did": _DID,
    "handle": _HANDLE,
    "nsid": _NSID,
    "tid": _TID,
    "record-key": _RKEY,
    "cid": st.sampled_from(_CIDS),
    "uri": _LABEL.map(lambda p: f"https://example.com/{p}"),
    "at-identifier": st.one_of(_DID, _HANDLE),
    "at-uri": st.builds(lambda a, c, r: f"at://{a}/{c}/{r}", _DID, _NSID, _RKEY),
    "datetime": _DATETIME,
    "language": st.sampled_from(
        ["en", "pt-BR", "ja", "zh-Hant", "es-419", "de-CH-1901"]
    ),
}
_BAD_FORMATS = {
    "did": "did:PLC:x",
    "handle": "not a handle",
    "nsid": "no",
    "tid": "0000000000000",
    "record-key": "..",
    "cid": "Qmb",
    "uri": "no scheme",
    "at-identifier": "@bad",
    "at-uri": "https://x.y",
    "datetime": "2024-13-01T00:00:00Z",
    "language": "JA",
}
# One grapheme per code point: letters, digits, punctuation, a few multi-byte ones.
_ALPHABET = st.sampled_from(
    list(string.ascii_letters + string.digits + " .,-!?") + ["é", "ß", "€", "中", "🔬"]
)


def _text(t: StringType) -> st.SearchStrategy[str]:
    max_g = t.max_graphemes if t.max_graphemes is not None else 40
    max_chars = min(max_g, 40, (t.max_bytes // 4 if t.max_bytes is not None else 40))
    min_chars = max(t.min_graphemes or 0, t.min_bytes or 0)
    max_chars = max(max_chars, min_chars)
    return st.text(_ALPHABET, min_size=min_chars, max_size=max_chars).filter(
        lambda s: _string_ok(t, s)
    )


def _string_ok(t: StringType, value: str) -> bool:
    size = utf8_length(value)
    g = count_graphemes(value)
    return not (
        (t.max_bytes is not None and size > t.max_bytes)
        or (t.min_bytes is not None and size < t.min_bytes)
        or (t.max_graphemes is not None and g > t.max_graphemes)
        or (t.min_graphemes is not None and g < t.min_graphemes)
    )


def _mimes(pattern: str) -> list[str]:
    """Concrete MIME types a pattern accepts (several, so that a narrowed
    ``accept`` can be witnessed)."""
    if pattern == "*/*":
        return ["application/octet-stream", "image/png", "video/mp4"]
    if pattern.endswith("/*"):
        return [pattern[:-1] + sub for sub in ("png", "jpeg", "webp")]
    return [pattern]


def _edge_text(t: StringType) -> st.SearchStrategy[str]:
    """Strings at the upper bounds: as many graphemes as allowed, and as many UTF-8
    bytes as allowed within that grapheme count (combining marks make a grapheme
    longer)."""
    g = t.max_graphemes if t.max_graphemes is not None else 5000
    b = t.max_bytes if t.max_bytes is not None else 20000
    n = min(g, b, 5000)
    out = ["a" * n]
    if t.max_bytes is not None and t.max_graphemes is not None and g < b:
        per = b // g  # bytes per grapheme: "e" + combining acute (2 bytes) each
        cluster = "e" + "\u0301" * ((per - 1) // 2)
        out.append(cluster * g)
    return st.sampled_from([s for s in out if _string_ok(t, s)] or [""])


_REQUIRED_DEPTH = 8
"""How far past ``max_depth`` required fields are still followed before a
strategy gives up (:func:`hypothesis.strategies.nothing`): beyond it, a cycle of
required refs cannot end."""


@dataclass
class _Gen:
    model: LinkedModel
    max_depth: int
    unknown_fields: bool
    edges: bool = False
    unknown_names: tuple[str, ...] = ()

    def of(self, t: IRType, depth: int) -> st.SearchStrategy[Any]:
        match t:
            case BooleanType():
                return st.just(t.const) if t.const is not None else st.booleans()
            case IntegerType():
                if t.const is not None:
                    return st.just(t.const)
                if t.enum:
                    return st.sampled_from(t.enum)
                lo = t.minimum if t.minimum is not None else -(2**31)
                hi = t.maximum if t.maximum is not None else 2**31
                return st.integers(lo, hi)
            case StringType():
                if t.const is not None:
                    return st.just(t.const)
                if t.enum:
                    return st.sampled_from(t.enum)
                if t.format is not None:
                    values = _FORMATS[t.format].filter(lambda s: _string_ok(t, s))
                    if self.edges and t.format == "uri" and t.max_bytes is not None:
                        # A URI as long as allowed (the path pads it).
                        n = min(t.max_bytes, t.max_graphemes or t.max_bytes)
                        long = "https://example.com/" + "a" * max(0, n - 20)
                        if _string_ok(t, long):
                            values = st.one_of(values, st.just(long))
                    return values
                if t.known_values:
                    known = [v for v in t.known_values if _string_ok(t, v)]
                    if known:
                        return st.one_of(st.sampled_from(known), _text(t))
                if self.edges and (t.max_bytes, t.max_graphemes) != (None, None):
                    return st.one_of(_text(t), _edge_text(t))
                return _text(t)
            case BytesType():
                lo = t.min_length or 0
                hi = max(lo, 16 if t.max_length is None else min(t.max_length, 16))
                return st.binary(min_size=lo, max_size=hi).map(
                    lambda b: {"$bytes": base64.b64encode(b).decode().rstrip("=")}
                )
            case CidLinkType():
                return st.sampled_from(_CIDS).map(lambda c: {"$link": c})
            case BlobType():
                mimes = [m for a in (t.accept or ("*/*",)) for m in _mimes(a)]
                return st.builds(
                    lambda cid, mime, size: {
                        "$type": "blob",
                        "ref": {"$link": cid},
                        "mimeType": mime,
                        "size": size,
                    },
                    st.sampled_from(_CIDS),
                    st.sampled_from(mimes),
                    st.integers(0, t.max_size if t.max_size is not None else 10**9),
                )
            case NullType():
                return st.none()
            case UnknownType():
                return st.fixed_dictionaries(
                    {}, optional={"note": st.text(max_size=5), "n": st.integers(0, 9)}
                )
            case ArrayType():
                lo = t.min_length or 0
                hi = max(lo, min(t.max_length if t.max_length is not None else 3, 3))
                if depth >= self.max_depth:
                    hi = lo
                items = st.lists(self.of(t.items, depth + 1), min_size=lo, max_size=hi)
                if self.edges and t.max_length is not None and 3 < t.max_length:
                    n = min(t.max_length, 5000)
                    edge = self.of(t.items, depth + 1).map(lambda x: [x] * n)
                    return st.one_of(items, edge)
                return items
            case ObjectType():
                return self.obj(t, depth, type_tag=None)
            case RefType():
                return self.ref(t.target, depth, tagged=False)
            case UnionType():
                members = [
                    self.ref(r, depth, tagged=True)
                    for r in t.refs
                    if self._is_object(r)
                ]
                if not t.closed:
                    members.append(
                        st.just(
                            {"$type": "com.example.unknown#thing", "kept": [1, "two"]}
                        )
                    )
                return st.one_of(members) if members else st.nothing()
        raise AssertionError(t)

    def _is_object(self, ref: DefId) -> bool:
        d = self.model.resolve(ref)
        return d is not None and d.kind in ("object", "record")

    def ref(self, target: DefId, depth: int, tagged: bool) -> st.SearchStrategy[Any]:
        if depth > self.max_depth + _REQUIRED_DEPTH:
            # Only required fields are left this deep: a def that requires itself
            # (directly or through others) has no finite value at all.
            return st.nothing()
        d = self.model.resolve(target)
        assert d is not None, target
        body = d.body
        if isinstance(body, RecordDef):
            return self.obj(body.object, depth + 1, type_tag=str(target))
        if isinstance(body, ObjectType):
            tag: st.SearchStrategy[str | None] = (
                st.just(str(target)) if tagged else st.sampled_from([None, str(target)])
            )
            return tag.flatmap(lambda tg: self.obj(body, depth + 1, type_tag=tg))
        assert not isinstance(body, tuple)
        return self.of(body, depth)  # type: ignore[arg-type]

    def obj(
        self, t: ObjectType, depth: int, type_tag: str | None
    ) -> st.SearchStrategy[dict[str, Any]]:
        required: dict[str, st.SearchStrategy[Any]] = {}
        optional: dict[str, st.SearchStrategy[Any]] = {}
        for f in t.fields:
            value = st.deferred(lambda f=f: self.of(f.type, depth + 1))  # type: ignore[misc]
            if f.nullable:
                value = st.one_of(st.none(), value)
            if f.required:
                required[f.name] = value
            elif depth < self.max_depth:
                optional[f.name] = value
        if type_tag is not None:
            # The tag wins over a property that a Lexicon names `$type` itself.
            optional.pop("$type", None)
            required = {"$type": st.just(type_tag), **required}
        if self.unknown_fields and depth < self.max_depth:
            optional["zzUnknownField"] = st.just({"kept": True})
        declared = {f.name for f in t.fields}
        for name in self.unknown_names:
            if name not in declared:
                optional[name] = st.sampled_from([{"kept": True}, 12345, "text", None])
        return st.fixed_dictionaries(required, optional=optional)


def wire_data(
    model: LinkedModel,
    target: DefId,
    *,
    max_depth: int = 4,
    unknown_fields: bool = True,
    edges: bool = False,
    unknown_names: tuple[str, ...] = (),
) -> st.SearchStrategy[Any]:
    """Valid wire data (decoded JSON) for the def ``target`` of ``model``: a record
    carries its ``$type``.

    ``edges`` also draws values at the upper bounds (strings of the maximum grapheme
    count and UTF-8 length, arrays of the maximum length); ``unknown_names`` are
    extra undeclared property names added to objects with assorted values (the
    compatibility oracle uses them to witness a deleted property reused by new
    writers). A def whose required fields refer back to it has no finite value:
    its strategy draws nothing (hypothesis then rejects the example)."""
    gen = _Gen(model, max_depth, unknown_fields, edges, tuple(unknown_names))
    return gen.ref(target, 0, tagged=False)


@dataclass(frozen=True)
class Mutation:
    """One invalidating edit: ``kind`` (e.g. ``utf8_too_long``), the JSON ``path``
    to the edited value, and ``apply`` returning the edited copy of the data."""

    kind: str
    path: tuple[str | int, ...]
    apply: Callable[[Any], Any]


def _set(
    path: tuple[str | int, ...], value: Any, *, delete: bool = False
) -> Callable[[Any], Any]:
    def edit(data: Any) -> Any:
        out = copy.deepcopy(data)
        node = out
        for key in path[:-1]:
            node = node[key]
        if delete:
            del node[path[-1]]
        else:
            node[path[-1]] = value
        return out

    return edit


def mutation_sites(model: LinkedModel, target: DefId, data: Any) -> list[Mutation]:
    """Every single edit of ``data`` (valid for ``target``) that makes it invalid."""
    out: list[Mutation] = []

    def walk(t: IRType, value: Any, path: tuple[str | int, ...]) -> None:
        match t:
            case StringType() if isinstance(value, str) and path:
                if t.max_bytes is not None and t.const is None and not t.enum:
                    out.append(
                        Mutation(
                            "utf8_too_long",
                            path,
                            _set(path, "é" * (t.max_bytes // 2 + 1)),
                        )
                    )
                if t.max_graphemes is not None and t.const is None and not t.enum:
                    out.append(
                        Mutation(
                            "graphemes_too_long",
                            path,
                            _set(path, "a\u0301" * (t.max_graphemes + 1)),
                        )
                    )
                if t.format is not None:
                    out.append(
                        Mutation("bad_format", path, _set(path, _BAD_FORMATS[t.format]))
                    )
                if t.enum:
                    out.append(Mutation("not_in_enum", path, _set(path, "\x00nope")))
            case IntegerType() if isinstance(value, int) and path:
                if t.maximum is not None:
                    out.append(Mutation("too_large", path, _set(path, t.maximum + 1)))
                out.append(Mutation("wrong_type", path, _set(path, str(value))))
            case ArrayType() if isinstance(value, list):
                if t.max_length is not None and value:
                    out.append(
                        Mutation(
                            "array_too_long",
                            path,
                            _set(path, value * (t.max_length + 1)),
                        )
                    )
                for i, item in enumerate(value):
                    walk(t.items, item, (*path, i))
            case ObjectType() if isinstance(value, dict):
                for f in t.fields:
                    if f.name in value:
                        if f.required:
                            out.append(
                                Mutation(
                                    "required_missing",
                                    (*path, f.name),
                                    _set((*path, f.name), None, delete=True),
                                )
                            )
                        if value[f.name] is not None:
                            if not f.nullable:
                                out.append(
                                    Mutation(
                                        "null_not_allowed",
                                        (*path, f.name),
                                        _set((*path, f.name), None),
                                    )
                                )
                            walk(f.type, value[f.name], (*path, f.name))
            case RefType():
                d = model.resolve(t.target)
                if d is not None:
                    body = d.body.object if isinstance(d.body, RecordDef) else d.body
                    walk(body, value, path)  # type: ignore[arg-type]
            case UnionType() if isinstance(value, dict):
                tag = value.get("$type")
                refs = {str(r) for r in t.refs}
                if tag in refs or (isinstance(tag, str) and f"{tag}#main" in refs):
                    if t.closed:
                        out.append(
                            Mutation(
                                "closed_union_unknown_type",
                                path,
                                _set((*path, "$type"), "com.example.nope#x"),
                            )
                        )
                    out.append(
                        Mutation(
                            "union_type_missing",
                            path,
                            _set((*path, "$type"), None, delete=True),
                        )
                    )
                    ref = DefId.parse(tag, "") if "#" in tag else DefId(tag)
                    walk(RefType(ref), value, path)
            case _:
                pass

    d = model.resolve(target)
    assert d is not None
    body = d.body.object if isinstance(d.body, RecordDef) else d.body
    walk(body, data, ())  # type: ignore[arg-type]
    return out
