"""Stage 2, parse: a :class:`~atdata_gen.sources.SourceDoc` → :class:`LexiconDoc`.

The Lexicon language (atproto.com/specs/lexicon) as typed, frozen models. Every node
keeps the JSON pointer it came from. The parser checks the *shape* of each definition
(types of every key, where each def type may appear) and reports problems with rule
IDs (``LEX_*``) instead of raising; a def that cannot be understood is left out of the
result, after its error is reported. Unknown keys are reported as warnings, never
dropped silently.

Def types (spec § "Type-Specific Fields"): record (key ``tid`` | ``nsid`` | ``any`` |
``literal:<value>``), query, procedure, subscription, permission-set, object, params,
array, token, string, integer, boolean, bytes, cid-link, blob, null, ref, union
(open/closed), unknown.

Property names starting with ``$``: the atproto Data Model spec (§ "Data Types")
reserves "data field names starting with ``$``" for the data model and protocol
(``$type``, ``$link``, ``$bytes``), and says implementations should ignore unknown
ones. In ``object``, ``params`` and record-body properties:

* ``$link`` and ``$bytes`` are errors (``LEX_PROPERTY_RESERVED``): an object
  holding them reads as a CID link or bytes in JSON;
* ``$type`` is an error (``LEX_PROPERTY_RESERVED``) unless it is declared on a
  def's own object (an object def or a record's body) as a ``string`` whose
  ``const``, if any, is that def's ``$type``: typed otherwise, the def could not
  hold its own tagged values;
* any other ``$`` name is a warning (``LEX_PROPERTY_DOLLAR``) and is kept: atdata's
  own Lexicons declare ``$atdataSchemaVersion`` and ``$schema``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..diagnostics import Reporter, Severity, did_you_mean
from ..sources import SourceDoc, escape_pointer

__all__ = [
    "FIELD_TYPES",
    "PRIMARY_TYPES",
    "LexArray",
    "LexBlob",
    "LexBody",
    "LexBoolean",
    "LexBytes",
    "LexCidLink",
    "LexError",
    "LexInteger",
    "LexNode",
    "LexNull",
    "LexObject",
    "LexParams",
    "LexPermissionSet",
    "LexProcedure",
    "LexQuery",
    "LexRecord",
    "LexRef",
    "LexString",
    "LexSubscription",
    "LexToken",
    "LexUnion",
    "LexUnknown",
    "LexiconDoc",
    "parse_document",
]

PRIMARY_TYPES = frozenset(
    {"record", "query", "procedure", "subscription", "permission-set"}
)
"""Def types that may only be the ``main`` def of a Lexicon (spec § "Primary Types")."""

TOP_LEVEL_TYPES = PRIMARY_TYPES | {
    "object",
    "array",
    "token",
    "string",
    "integer",
    "boolean",
    "bytes",
    "cid-link",
    "blob",
}
"""Def types allowed directly under ``defs`` (not ``ref``, ``union``, ``unknown``,
``params``: spec § "Lexicon Files"; interop vectors "defined ref/unknown")."""

FIELD_TYPES = frozenset(
    {
        "null",
        "boolean",
        "integer",
        "string",
        "bytes",
        "cid-link",
        "blob",
        "array",
        "object",
        "ref",
        "union",
        "unknown",
    }
)
"""Types allowed for object properties and array items."""

PARAM_TYPES = frozenset({"boolean", "integer", "string", "array", "unknown"})
"""Types allowed for ``params`` properties (arrays only of boolean/integer/string)."""


@dataclass(frozen=True, slots=True)
class LexNode:
    """Common part of every node: its JSON ``pointer`` and optional ``description``."""

    pointer: str
    description: str | None


@dataclass(frozen=True, slots=True)
class LexNull(LexNode):
    pass


@dataclass(frozen=True, slots=True)
class LexBoolean(LexNode):
    default: bool | None = None
    const: bool | None = None


@dataclass(frozen=True, slots=True)
class LexInteger(LexNode):
    minimum: int | None = None
    maximum: int | None = None
    enum: tuple[int, ...] | None = None
    default: int | None = None
    const: int | None = None


@dataclass(frozen=True, slots=True)
class LexString(LexNode):
    format: str | None = None
    max_length: int | None = None
    min_length: int | None = None
    max_graphemes: int | None = None
    min_graphemes: int | None = None
    known_values: tuple[str, ...] | None = None
    enum: tuple[str, ...] | None = None
    default: str | None = None
    const: str | None = None
    pattern: str | None = None


@dataclass(frozen=True, slots=True)
class LexBytes(LexNode):
    min_length: int | None = None
    max_length: int | None = None


@dataclass(frozen=True, slots=True)
class LexCidLink(LexNode):
    pass


@dataclass(frozen=True, slots=True)
class LexBlob(LexNode):
    accept: tuple[str, ...] | None = None
    max_size: int | None = None


@dataclass(frozen=True, slots=True)
class LexUnknown(LexNode):
    pass


@dataclass(frozen=True, slots=True)
class LexRef(LexNode):
    ref: str = ""


@dataclass(frozen=True, slots=True)
class LexUnion(LexNode):
    refs: tuple[str, ...] = ()
    closed: bool = False


@dataclass(frozen=True, slots=True)
class LexArray(LexNode):
    items: LexNode | None = None
    min_length: int | None = None
    max_length: int | None = None


@dataclass(frozen=True, slots=True)
class LexObject(LexNode):
    properties: tuple[tuple[str, LexNode], ...] = ()
    required: tuple[str, ...] = ()
    nullable: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class LexParams(LexNode):
    properties: tuple[tuple[str, LexNode], ...] = ()
    required: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class LexToken(LexNode):
    pass


@dataclass(frozen=True, slots=True)
class LexBody(LexNode):
    encoding: str = ""
    schema: LexNode | None = None


@dataclass(frozen=True, slots=True)
class LexError(LexNode):
    name: str = ""


@dataclass(frozen=True, slots=True)
class LexRecord(LexNode):
    key: str = "any"
    record: LexObject | None = None


@dataclass(frozen=True, slots=True)
class LexQuery(LexNode):
    parameters: LexParams | None = None
    output: LexBody | None = None
    errors: tuple[LexError, ...] = ()


@dataclass(frozen=True, slots=True)
class LexProcedure(LexNode):
    parameters: LexParams | None = None
    input: LexBody | None = None
    output: LexBody | None = None
    errors: tuple[LexError, ...] = ()


@dataclass(frozen=True, slots=True)
class LexSubscription(LexNode):
    parameters: LexParams | None = None
    message: LexUnion | None = None
    errors: tuple[LexError, ...] = ()


@dataclass(frozen=True, slots=True)
class LexPermissionSet(LexNode):
    """Kept as data: ``permissions`` is the list of permission objects as JSON."""

    title: str | None = None
    detail: str | None = None
    permissions: tuple[dict[str, Any], ...] = ()


@dataclass(frozen=True, slots=True)
class LexiconDoc:
    """A parsed Lexicon file: ``id`` (NSID), ``revision``, ``description`` and its
    ``defs`` in file order, with the :class:`SourceDoc` it came from."""

    id: str
    revision: int | None
    description: str | None
    defs: tuple[tuple[str, LexNode], ...]
    source: SourceDoc


# --------------------------------------------------------------------------------------


class _Parser:
    def __init__(self, doc: SourceDoc, reporter: Reporter) -> None:
        self.doc = doc
        self.reporter = reporter

    # -- reporting ------------------------------------------------------------------
    def error(self, pointer: str, rule: str, message: str) -> None:
        self.reporter.report(self.doc.span(pointer), rule, message)

    def warn(self, pointer: str, rule: str, message: str) -> None:
        self.reporter.report(self.doc.span(pointer), rule, message, Severity.WARNING)

    # -- typed getters --------------------------------------------------------------
    def _get(
        self,
        obj: dict[str, Any],
        key: str,
        ptr: str,
        kinds: tuple[type, ...],
        what: str,
    ) -> Any:
        if key not in obj:
            return None
        value = obj[key]
        ok = isinstance(value, kinds) and not (
            isinstance(value, bool) and bool not in kinds
        )
        if not ok:
            self.error(
                f"{ptr}/{escape_pointer(key)}",
                "LEX_FIELD_TYPE",
                f"{key!r} must be {what}, not {_json_kind(value)}",
            )
            return None
        return value

    # Each getter returns a well-typed value at once; anything else (absent, null,
    # the wrong type, out of range) takes the checked path of `_get`.
    def str_(self, obj: dict[str, Any], key: str, ptr: str) -> str | None:
        value = obj.get(key)
        if type(value) is str:
            return value
        return self._get(obj, key, ptr, (str,), "a string")  # type: ignore[no-any-return]

    def int_(
        self, obj: dict[str, Any], key: str, ptr: str, *, minimum: int | None = None
    ) -> int | None:
        value = obj.get(key)
        if type(value) is int and (minimum is None or value >= minimum):
            return value
        value = self._get(obj, key, ptr, (int,), "an integer")
        if value is not None and minimum is not None and value < minimum:
            self.error(
                f"{ptr}/{escape_pointer(key)}",
                "LEX_FIELD_RANGE",
                f"{key!r} must be at least {minimum}, not {value}",
            )
            return None
        return value  # type: ignore[no-any-return]

    def bool_(self, obj: dict[str, Any], key: str, ptr: str) -> bool | None:
        value = obj.get(key)
        if type(value) is bool:
            return value
        return self._get(obj, key, ptr, (bool,), "a boolean")  # type: ignore[no-any-return]

    def list_(
        self, obj: dict[str, Any], key: str, ptr: str, item: type, what: str
    ) -> tuple[Any, ...] | None:
        value = self._get(obj, key, ptr, (list,), f"an array of {what}")
        if value is None:
            return None
        out = []
        for i, v in enumerate(value):
            if not isinstance(v, item) or (isinstance(v, bool) and item is not bool):
                self.error(
                    f"{ptr}/{escape_pointer(key)}/{i}",
                    "LEX_FIELD_TYPE",
                    f"items of {key!r} must be {what}, not {_json_kind(v)}",
                )
                return None
            out.append(v)
        return tuple(out)

    def check_keys(
        self, obj: dict[str, Any], ptr: str, allowed: frozenset[str], type_name: str
    ) -> None:
        for key in obj:
            if key in allowed or key == "description" or key == "type":
                continue
            if key == "pattern" and type_name == "string":
                continue
            self.warn(
                f"{ptr}/{escape_pointer(key)}",
                "LEX_UNKNOWN_KEY",
                f"unknown key {key!r} in a {type_name!r} definition (ignored)"
                + did_you_mean(key, [*allowed, "description"]),
            )

    # -- nodes ----------------------------------------------------------------------
    def node(
        self, value: Any, ptr: str, allowed: frozenset[str], where: str
    ) -> LexNode | None:
        if not isinstance(value, dict):
            self.error(
                ptr,
                "LEX_NOT_OBJECT",
                f"a {where} must be a JSON object, not {_json_kind(value)}",
            )
            return None
        kind = value.get("type")
        if not isinstance(kind, str):
            self.error(ptr, "LEX_TYPE_MISSING", f"a {where} needs a string 'type'")
            return None
        if kind not in _BUILDERS:
            self.error(
                f"{ptr}/type",
                "LEX_TYPE_UNKNOWN",
                f"unknown type {kind!r}"
                + (did_you_mean(kind, allowed) or did_you_mean(kind, _BUILDERS)),
            )
            return None
        if kind not in allowed:
            self.error(
                f"{ptr}/type",
                "LEX_TYPE_NOT_ALLOWED",
                f"type {kind!r} is not allowed as a {where} "
                f"(allowed: {', '.join(sorted(allowed))})",
            )
            return None
        description = self.str_(value, "description", ptr)
        node: LexNode | None = _BUILDERS[kind](self, value, ptr, description)
        return node

    def null(self, v: dict[str, Any], p: str, d: str | None) -> LexNode:
        self.check_keys(v, p, frozenset(), "null")
        return LexNull(p, d)

    def boolean(self, v: dict[str, Any], p: str, d: str | None) -> LexNode:
        self.check_keys(v, p, _BOOLEAN_KEYS, "boolean")
        return LexBoolean(p, d, self.bool_(v, "default", p), self.bool_(v, "const", p))

    def integer(self, v: dict[str, Any], p: str, d: str | None) -> LexNode:
        self.check_keys(v, p, _INTEGER_KEYS, "integer")
        return LexInteger(
            p,
            d,
            minimum=self.int_(v, "minimum", p),
            maximum=self.int_(v, "maximum", p),
            enum=self.list_(v, "enum", p, int, "integers"),
            default=self.int_(v, "default", p),
            const=self.int_(v, "const", p),
        )

    def string(self, v: dict[str, Any], p: str, d: str | None) -> LexNode:
        self.check_keys(v, p, _STRING_KEYS, "string")
        fmt = self.str_(v, "format", p)
        if fmt is not None and fmt not in _FORMATS:
            self.error(
                f"{p}/format",
                "LEX_STRING_FORMAT_UNKNOWN",
                f"unknown string format {fmt!r} (known: {', '.join(sorted(_FORMATS))})",
            )
            fmt = None
        pattern = self.str_(v, "pattern", p)
        if pattern is not None:
            self.reporter.report(
                self.doc.span(f"{p}/pattern"),
                "LEX_NONSTANDARD_KEY",
                "'pattern' is not part of the Lexicon spec; it is kept as "
                "documentation and not enforced",
                Severity.INFO,
            )
        return LexString(
            p,
            d,
            format=fmt,
            max_length=self.int_(v, "maxLength", p, minimum=0),
            min_length=self.int_(v, "minLength", p, minimum=0),
            max_graphemes=self.int_(v, "maxGraphemes", p, minimum=0),
            min_graphemes=self.int_(v, "minGraphemes", p, minimum=0),
            known_values=self.list_(v, "knownValues", p, str, "strings"),
            enum=self.list_(v, "enum", p, str, "strings"),
            default=self.str_(v, "default", p),
            const=self.str_(v, "const", p),
            pattern=pattern,
        )

    def bytes_(self, v: dict[str, Any], p: str, d: str | None) -> LexNode:
        self.check_keys(v, p, frozenset({"minLength", "maxLength"}), "bytes")
        return LexBytes(
            p,
            d,
            self.int_(v, "minLength", p, minimum=0),
            self.int_(v, "maxLength", p, minimum=0),
        )

    def cid_link(self, v: dict[str, Any], p: str, d: str | None) -> LexNode:
        self.check_keys(v, p, frozenset(), "cid-link")
        return LexCidLink(p, d)

    def blob(self, v: dict[str, Any], p: str, d: str | None) -> LexNode:
        self.check_keys(v, p, frozenset({"accept", "maxSize"}), "blob")
        return LexBlob(
            p,
            d,
            self.list_(v, "accept", p, str, "strings"),
            self.int_(v, "maxSize", p, minimum=0),
        )

    def unknown(self, v: dict[str, Any], p: str, d: str | None) -> LexNode:
        self.check_keys(v, p, frozenset(), "unknown")
        return LexUnknown(p, d)

    def ref(self, v: dict[str, Any], p: str, d: str | None) -> LexNode | None:
        self.check_keys(v, p, _REF_KEYS, "ref")
        target = self.str_(v, "ref", p)
        if target is None:
            if "ref" not in v:
                self.error(p, "LEX_FIELD_MISSING", "a 'ref' needs a 'ref' string")
            return None
        return LexRef(p, d, target)

    def union(self, v: dict[str, Any], p: str, d: str | None) -> LexNode | None:
        self.check_keys(v, p, _UNION_KEYS, "union")
        refs = self.list_(v, "refs", p, str, "strings")
        if refs is None:
            if "refs" not in v:
                self.error(p, "LEX_FIELD_MISSING", "a 'union' needs 'refs'")
            return None
        return LexUnion(p, d, refs, bool(self.bool_(v, "closed", p)))

    def array(self, v: dict[str, Any], p: str, d: str | None) -> LexNode | None:
        self.check_keys(v, p, _ARRAY_KEYS, "array")
        if "items" not in v:
            self.error(p, "LEX_FIELD_MISSING", "an 'array' needs 'items'")
            return None
        items = self.node(v["items"], f"{p}/items", FIELD_TYPES, "array item")
        if items is None:
            return None
        return LexArray(
            p,
            d,
            items,
            self.int_(v, "minLength", p, minimum=0),
            self.int_(v, "maxLength", p, minimum=0),
        )

    def _properties(
        self, v: dict[str, Any], p: str, allowed: frozenset[str], where: str
    ) -> tuple[tuple[str, LexNode], ...]:
        props = self._get(v, "properties", p, (dict,), "an object")
        out: list[tuple[str, LexNode]] = []
        for name, value in (props or {}).items():
            ptr = f"{p}/properties/{escape_pointer(name)}"
            if name.startswith("$") and not self._dollar_property(name, value, p):
                continue
            node = self.node(value, ptr, allowed, where)
            if node is not None:
                out.append((name, node))
        return tuple(out)

    def _dollar_property(self, name: str, value: Any, p: str) -> bool:
        """Judge a property ``name`` starting with ``$`` of the object at ``p``
        (see the module doc); report it, and return whether it is kept."""
        ptr = f"{p}/properties/{escape_pointer(name)}"
        spec = '(atproto Data Model spec, "Data Types")'
        if name == "$type":
            tags = self._own_tags(p)
            ok = (
                tags is not None
                and isinstance(value, dict)
                and value.get("type") == "string"
                and value.get("const", next(iter(tags))) in tags
            )
            if ok:
                return True
            self.error(
                ptr,
                "LEX_PROPERTY_RESERVED",
                "a property named '$type' is the data model's type tag: it may "
                "only be declared on a def's own object, as a string whose "
                f"'const' (if any) is that def's $type {spec}",
            )
            return False
        if name in ("$link", "$bytes"):
            self.error(
                ptr,
                "LEX_PROPERTY_RESERVED",
                f"a property named {name!r} would make the object read as a "
                f"{'CID link' if name == '$link' else 'bytes value'} in JSON: "
                f"'$' names are reserved for the data model and protocol {spec}",
            )
            return False
        self.warn(
            ptr,
            "LEX_PROPERTY_DOLLAR",
            f"property name {name!r} starts with '$': such names are reserved for "
            f"the data model and protocol, and readers may ignore them {spec}",
        )
        return True

    def _own_tags(self, p: str) -> frozenset[str] | None:
        """The ``$type`` values of the def whose root object is at ``p`` (an
        object def, or a record's body), or ``None`` for any other object."""
        parts = p.split("/")
        nsid = self.doc.value.get("id") if isinstance(self.doc.value, dict) else None
        if not isinstance(nsid, str) or len(parts) not in (3, 4) or parts[1] != "defs":
            return None
        if len(parts) == 4 and parts[3] != "record":
            return None
        name = parts[2].replace("~1", "/").replace("~0", "~")
        if name == "main":
            return frozenset({nsid, f"{nsid}#main"})
        return frozenset({f"{nsid}#{name}"})

    def object_(self, v: dict[str, Any], p: str, d: str | None) -> LexNode:
        self.check_keys(v, p, _OBJECT_KEYS, "object")
        return LexObject(
            p,
            d,
            properties=self._properties(v, p, FIELD_TYPES, "property"),
            required=self.list_(v, "required", p, str, "strings") or (),
            nullable=self.list_(v, "nullable", p, str, "strings") or (),
        )

    def params(self, v: dict[str, Any], p: str, d: str | None) -> LexNode:
        self.check_keys(v, p, frozenset({"properties", "required"}), "params")
        return LexParams(
            p,
            d,
            properties=self._properties(v, p, PARAM_TYPES, "params property"),
            required=self.list_(v, "required", p, str, "strings") or (),
        )

    def token(self, v: dict[str, Any], p: str, d: str | None) -> LexNode:
        self.check_keys(v, p, frozenset(), "token")
        return LexToken(p, d)

    def body(self, value: Any, p: str) -> LexBody | None:
        if not isinstance(value, dict):
            self.error(p, "LEX_NOT_OBJECT", "a body must be a JSON object")
            return None
        for key in value:
            if key not in ("encoding", "schema", "description"):
                self.warn(
                    f"{p}/{escape_pointer(key)}",
                    "LEX_UNKNOWN_KEY",
                    f"unknown key {key!r} in a body (ignored)"
                    + did_you_mean(key, ("encoding", "schema", "description")),
                )
        encoding = self.str_(value, "encoding", p)
        if encoding is None:
            self.error(p, "LEX_FIELD_MISSING", "a body needs an 'encoding' string")
            return None
        schema = None
        if "schema" in value:
            schema = self.node(
                value["schema"],
                f"{p}/schema",
                frozenset({"object", "ref", "union"}),
                "body schema",
            )
        return LexBody(p, self.str_(value, "description", p), encoding, schema)

    def errors(self, v: dict[str, Any], p: str) -> tuple[LexError, ...]:
        items = self._get(v, "errors", p, (list,), "an array of error objects")
        out: list[LexError] = []
        for i, e in enumerate(items or ()):
            ep = f"{p}/errors/{i}"
            if not isinstance(e, dict) or not isinstance(e.get("name"), str):
                self.error(ep, "LEX_FIELD_TYPE", "an error needs a string 'name'")
                continue
            out.append(LexError(ep, self.str_(e, "description", ep), e["name"]))
        return tuple(out)

    def _params_of(self, v: dict[str, Any], p: str) -> LexParams | None:
        if "parameters" not in v:
            return None
        node = self.node(
            v["parameters"], f"{p}/parameters", frozenset({"params"}), "parameters"
        )
        return node if isinstance(node, LexParams) else None

    def _body_of(self, v: dict[str, Any], key: str, p: str) -> LexBody | None:
        return self.body(v[key], f"{p}/{key}") if key in v else None

    def record(self, v: dict[str, Any], p: str, d: str | None) -> LexNode | None:
        self.check_keys(v, p, frozenset({"key", "record"}), "record")
        key = self.str_(v, "key", p)
        if key is None:
            if "key" not in v:
                self.warn(
                    p,
                    "LEX_RECORD_KEY_MISSING",
                    "a record should name its record key type; 'any' assumed",
                )
            key = "any"
        elif key not in ("tid", "nsid", "any") and not (
            key.startswith("literal:") and len(key) > len("literal:")
        ):
            self.error(
                f"{p}/key",
                "LEX_RECORD_KEY",
                f"record key type {key!r} is not tid, nsid, any or literal:…",
            )
        if "record" not in v:
            self.error(p, "LEX_FIELD_MISSING", "a 'record' needs a 'record' object")
            return None
        body = v["record"]
        if not isinstance(body, dict) or body.get("type") != "object":
            self.error(
                f"{p}/record",
                "LEX_RECORD_NOT_OBJECT",
                "a record's 'record' must be a definition of type 'object'",
            )
            return None
        obj = self.node(body, f"{p}/record", frozenset({"object"}), "record body")
        if not isinstance(obj, LexObject):
            return None
        return LexRecord(p, d, key, obj)

    def query(self, v: dict[str, Any], p: str, d: str | None) -> LexNode:
        self.check_keys(v, p, frozenset({"parameters", "output", "errors"}), "query")
        return LexQuery(
            p,
            d,
            self._params_of(v, p),
            self._body_of(v, "output", p),
            self.errors(v, p),
        )

    def procedure(self, v: dict[str, Any], p: str, d: str | None) -> LexNode:
        self.check_keys(
            v, p, frozenset({"parameters", "input", "output", "errors"}), "procedure"
        )
        return LexProcedure(
            p,
            d,
            self._params_of(v, p),
            self._body_of(v, "input", p),
            self._body_of(v, "output", p),
            self.errors(v, p),
        )

    def subscription(self, v: dict[str, Any], p: str, d: str | None) -> LexNode:
        self.check_keys(
            v, p, frozenset({"parameters", "message", "errors"}), "subscription"
        )
        message = None
        if "message" in v:
            m, mp = v["message"], f"{p}/message"
            if not isinstance(m, dict):
                self.error(mp, "LEX_NOT_OBJECT", "'message' must be a JSON object")
            elif "schema" in m:
                node = self.node(
                    m["schema"], f"{mp}/schema", frozenset({"union"}), "message schema"
                )
                if isinstance(node, LexUnion):
                    message = node
        return LexSubscription(p, d, self._params_of(v, p), message, self.errors(v, p))

    def permission_set(self, v: dict[str, Any], p: str, d: str | None) -> LexNode:
        self.check_keys(v, p, _PERMISSION_SET_KEYS, "permission-set")
        perms = self._get(v, "permissions", p, (list,), "an array of permissions")
        out: list[dict[str, Any]] = []
        for i, perm in enumerate(perms or ()):
            pp = f"{p}/permissions/{i}"
            if not isinstance(perm, dict):
                self.error(pp, "LEX_NOT_OBJECT", "a permission must be a JSON object")
                continue
            if perm.get("type") != "permission":
                self.warn(
                    pp,
                    "LEX_PERMISSION_TYPE",
                    "a permission should have type 'permission'",
                )
            resource = perm.get("resource")
            allowed = (
                _PERMISSION_KEYS.get(resource) if isinstance(resource, str) else None
            )
            self.check_keys(
                perm,
                pp,
                _PERMISSION_COMMON | (allowed or _PERMISSION_ANY),
                f"{resource} permission" if allowed else "permission",
            )
            if not isinstance(perm.get("resource"), str):
                self.error(
                    pp, "LEX_FIELD_MISSING", "a permission needs a string 'resource'"
                )
                continue
            out.append(perm)
        return LexPermissionSet(
            p, d, self.str_(v, "title", p), self.str_(v, "detail", p), tuple(out)
        )


# The keys each type allows besides 'type' and 'description' (see check_keys).
_BOOLEAN_KEYS = frozenset({"default", "const"})
_REF_KEYS = frozenset({"ref"})
_UNION_KEYS = frozenset({"refs", "closed"})
_ARRAY_KEYS = frozenset({"items", "minLength", "maxLength"})
_OBJECT_KEYS = frozenset({"properties", "required", "nullable"})
_INTEGER_KEYS = frozenset({"minimum", "maximum", "enum", "default", "const"})
_STRING_KEYS = frozenset(
    {
        "format",
        "maxLength",
        "minLength",
        "maxGraphemes",
        "minGraphemes",
        "knownValues",
        "enum",
        "default",
        "const",
    }
)
_PERMISSION_SET_KEYS = frozenset(
    {"title", "title:lang", "detail", "detail:lang", "permissions"}
)
"""Keys of a permission-set def besides ``type`` and ``description`` (Lexicon spec
§ "permission-set")."""
_PERMISSION_COMMON = frozenset({"resource"})
_PERMISSION_KEYS: dict[str, frozenset[str]] = {
    "repo": frozenset({"collection", "action"}),
    "rpc": frozenset({"lxm", "aud", "inheritAud"}),
    "blob": frozenset({"accept"}),
    "account": frozenset({"attr", "action"}),
    "identity": frozenset({"attr"}),
    "include": frozenset({"nsid", "aud"}),
}
"""Parameters of a permission per resource (Permissions spec, "Resource Types")."""
_PERMISSION_ANY = frozenset().union(*_PERMISSION_KEYS.values())

_FORMATS = frozenset(
    {
        "at-identifier",
        "at-uri",
        "cid",
        "datetime",
        "did",
        "handle",
        "language",
        "nsid",
        "record-key",
        "tid",
        "uri",
    }
)

_BUILDERS: dict[str, Any] = {
    "null": _Parser.null,
    "boolean": _Parser.boolean,
    "integer": _Parser.integer,
    "string": _Parser.string,
    "bytes": _Parser.bytes_,
    "cid-link": _Parser.cid_link,
    "blob": _Parser.blob,
    "unknown": _Parser.unknown,
    "ref": _Parser.ref,
    "union": _Parser.union,
    "array": _Parser.array,
    "object": _Parser.object_,
    "params": _Parser.params,
    "token": _Parser.token,
    "record": _Parser.record,
    "query": _Parser.query,
    "procedure": _Parser.procedure,
    "subscription": _Parser.subscription,
    "permission-set": _Parser.permission_set,
}


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def parse_document(doc: SourceDoc, reporter: Reporter) -> LexiconDoc | None:
    """Parse one Lexicon file. Returns ``None`` (after reporting) when the document
    is not a Lexicon at all: not an object, ``lexicon`` is not ``1``, ``id`` is not a
    string, or ``defs`` is not an object. Individual bad defs are reported and left
    out; the rest of the document is still returned."""
    p = _Parser(doc, reporter)
    v = doc.value
    if not isinstance(v, dict):
        p.error("", "LEX_NOT_OBJECT", "a Lexicon document must be a JSON object")
        return None
    ok = True
    if v.get("lexicon") != 1 or isinstance(v.get("lexicon"), bool):
        p.error(
            "/lexicon" if "lexicon" in v else "",
            "LEX_VERSION",
            f"'lexicon' must be the integer 1, not {v.get('lexicon')!r}",
        )
        ok = False
    nsid = v.get("id")
    if not isinstance(nsid, str):
        p.error("/id" if "id" in v else "", "LEX_ID", "'id' must be a string NSID")
        ok = False
    defs = v.get("defs")
    if not isinstance(defs, dict):
        p.error(
            "/defs" if "defs" in v else "", "LEX_DEFS", "'defs' must be a JSON object"
        )
        ok = False
    for key in v:
        top = ("lexicon", "id", "revision", "description", "defs", "$type")
        if key not in top:
            p.warn(
                f"/{escape_pointer(key)}",
                "LEX_UNKNOWN_KEY",
                f"unknown top-level key {key!r} (ignored)" + did_you_mean(key, top),
            )
    if not ok:
        return None
    assert isinstance(nsid, str) and isinstance(defs, dict)
    revision = p.int_(v, "revision", "", minimum=0)
    description = p.str_(v, "description", "")
    parsed: list[tuple[str, LexNode]] = []
    for name, value in defs.items():
        node = p.node(value, f"/defs/{escape_pointer(name)}", TOP_LEVEL_TYPES, "def")
        if node is not None:
            parsed.append((name, node))
    return LexiconDoc(nsid, revision, description, tuple(parsed), doc)
