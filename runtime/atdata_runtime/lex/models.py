"""Runtime support for models generated from Lexicons (the AT Protocol's schema language).

Generated record models subclass :class:`LexObject` / :class:`LexRecord` and annotate
their fields with the constraint markers defined here (:class:`String`,
:class:`Integer`, :class:`Bytes`, :class:`BlobConstraint`, :func:`union`, …). Each
marker compiles to a pydantic-core schema, so validation runs in pydantic-core and
calls back into Python only where the spec needs it (formats, UTF-8 byte lengths,
grapheme counts).

Semantics follow the Lexicon spec (atproto.com/specs/lexicon) and the data model spec
(atproto.com/specs/data-model):

* absent, ``null`` and a value are three states. An optional non-nullable field
  rejects ``null`` (:data:`Opt`); a nullable field accepts it;
* ``maxLength``/``minLength`` on strings count UTF-8 bytes; ``maxGraphemes`` /
  ``minGraphemes`` count extended grapheme clusters (Unicode UAX #29, via ``regex``);
* unions are discriminated by ``$type``; ``nsid`` and ``nsid#main`` name the same
  def; an open union keeps an unknown ``$type`` as :class:`Unrecognized`;
* unknown fields are kept and re-serialized (the spec's rule not to clobber data);
* ``bytes`` is ``{"$bytes": base64}``, ``cid-link`` is ``{"$link": cid}``, ``blob`` is
  ``{"$type": "blob", "ref": {"$link": …}, "mimeType": …, "size": …}``;
* ``unknown`` is a plain JSON object, never one of those three (:data:`JsonObject`);
* a record validated as a record (:meth:`LexRecord.from_wire`) carries ``$type``,
  exactly its NSID; objects inside it may omit ``$type`` (unions may not);
* XRPC parameters parse query strings (:meth:`LexParams.from_query`).

Nothing here reads Lexicon files: generated modules carry everything they need.
"""

from __future__ import annotations

import base64
import binascii
import fnmatch
import functools
import json
import re
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from typing import Annotated, Any, ClassVar, Final, Literal, Self, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    ValidationError,
)
from pydantic_core import InitErrorDetails, PydanticCustomError, core_schema

from .formats import FAST_PATTERNS, FORMAT_CHECKS
from .text import count_graphemes

__all__ = [
    "WIRE_CONFIG",
    "Blob",
    "BlobConstraint",
    "Boolean",
    "Bytes",
    "CidLink",
    "Integer",
    "JsonObject",
    "LexObject",
    "LexParams",
    "LexRecord",
    "Opt",
    "StrictLiteral",
    "String",
    "Unrecognized",
    "WireBytes",
    "count_graphemes",
    "union",
]

T = TypeVar("T")


def _err(kind: str, message: str, **ctx: Any) -> PydanticCustomError:
    return PydanticCustomError(kind, message, ctx or None)


def _check_unknown(value: dict[str, Any]) -> dict[str, Any]:
    # Data model spec, "unknown" and "Special Types": an object with `$link` or
    # `$bytes`, or with `$type: "blob"`, is a cid-link, bytes or a blob, not an object
    # (indigo's atdata.Parse reads them so, and its `unknown` then rejects them).
    if "$link" in value:
        raise _err("unknown_special", "unknown must be a plain object, not a $link")
    if "$bytes" in value:
        raise _err("unknown_special", "unknown must be a plain object, not $bytes")
    if "$type" in value:
        kind = value["$type"]
        if kind == "blob":
            raise _err("unknown_special", "unknown must be a plain object, not a blob")
        if not isinstance(kind, str) or not kind:
            raise _err("unknown_type", "$type must be a non-empty string")
    return value


class _Unknown:
    """Annotation marker of :data:`JsonObject`: a dict that is no data-model special."""

    __slots__ = ()

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        return core_schema.no_info_after_validator_function(
            _check_unknown, handler(source)
        )


JsonObject = Annotated[dict[str, Any], _Unknown()]
"""The Python form of Lexicon ``unknown``: a JSON object (data model "unknown"), but
not a ``{"$link": …}``, ``{"$bytes": …}`` or ``{"$type": "blob", …}`` (those are
other data-model types; errors ``unknown_special``), and a ``$type``, if any, is a
non-empty string (``unknown_type``)."""


class _NonNull:
    """Annotation marker: the field may be absent (default ``None``) but not ``null``."""

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        schema = handler(source)
        if schema.get("type") == "nullable":
            return schema["schema"]  # type: ignore[no-any-return]
        return schema

    def __repr__(self) -> str:
        return "NON_NULL"


NON_NULL: Final = _NonNull()

Opt = Annotated[T | None, NON_NULL]
"""``Opt[T]``: an optional, non-nullable field. Absent reads as ``None``; an explicit
``null`` on the wire is rejected (Lexicon spec, "nullable" and "required")."""


class String:
    """Constraints of a Lexicon ``string`` (spec § "string").

    ``max_length`` / ``min_length`` count UTF-8 bytes; ``max_graphemes`` /
    ``min_graphemes`` count extended grapheme clusters; ``format`` is one of
    :data:`atdata_runtime.lex.formats.FORMAT_CHECKS`. ``known_values`` is documentation
    only (the set is open). Errors are pydantic ``ValidationError`` entries of types
    ``string_utf8_too_long``, ``string_utf8_too_short``, ``string_graphemes_too_long``,
    ``string_graphemes_too_short`` and ``string_format``.
    """

    __slots__ = (
        "format",
        "known_values",
        "max_graphemes",
        "max_length",
        "min_graphemes",
        "min_length",
    )

    def __init__(
        self,
        *,
        format: str | None = None,
        max_length: int | None = None,
        min_length: int | None = None,
        max_graphemes: int | None = None,
        min_graphemes: int | None = None,
        known_values: Sequence[str] = (),
    ) -> None:
        if format is not None and format not in FORMAT_CHECKS:
            raise ValueError(f"unknown string format {format!r}")
        self.format = format
        self.max_length = max_length
        self.min_length = min_length
        self.max_graphemes = max_graphemes
        self.min_graphemes = min_graphemes
        self.known_values = tuple(known_values)

    def length_validator(self) -> Callable[[str], str] | None:
        """A function checking the UTF-8 byte and grapheme bounds, or ``None`` when
        there are none (formats are checked in pydantic-core, see
        :func:`format_schema`)."""
        max_b, min_b = self.max_length, self.min_length
        max_g, min_g = self.max_graphemes, self.min_graphemes
        if max_b is None and min_b is None and max_g is None and min_g is None:
            return None

        def validate(value: str) -> str:
            n = len(value)
            # Fast paths: a code point is 1-4 UTF-8 bytes and at most one grapheme.
            if max_b is not None and n * 4 > max_b:
                size = n if value.isascii() else len(value.encode("utf-8"))
                if size > max_b:
                    raise _err(
                        "string_utf8_too_long",
                        "String is {size} UTF-8 bytes, more than {max} allowed",
                        size=size,
                        max=max_b,
                    )
            if min_b is not None and n < min_b:
                size = len(value.encode("utf-8"))
                if size < min_b:
                    raise _err(
                        "string_utf8_too_short",
                        "String is {size} UTF-8 bytes, fewer than {min} required",
                        size=size,
                        min=min_b,
                    )
            if max_g is not None and n > max_g:
                g = count_graphemes(value)
                if g > max_g:
                    raise _err(
                        "string_graphemes_too_long",
                        "String has {count} graphemes, more than {max} allowed",
                        count=g,
                        max=max_g,
                    )
            if min_g is not None:
                g = count_graphemes(value)
                if g < min_g:
                    raise _err(
                        "string_graphemes_too_short",
                        "String has {count} graphemes, fewer than {min} required",
                        count=g,
                        min=min_g,
                    )
            return value

        return validate

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        schema = handler(source)
        if self.format is not None:
            schema = core_schema.chain_schema([schema, format_schema(self.format)])
        fn = self.length_validator()
        if fn is not None:
            schema = core_schema.no_info_after_validator_function(fn, schema)
        return schema


@functools.cache
def format_schema(fmt: str) -> core_schema.CoreSchema:
    """pydantic-core schema checking the Lexicon string format ``fmt``: the native
    (Rust) fast path of :data:`~atdata_runtime.lex.formats.FAST_PATTERNS` first, the exact
    Python check only for strings the fast path does not accept. Errors have type
    ``string_format``."""
    pattern, min_len, max_len = FAST_PATTERNS[fmt]
    check = FORMAT_CHECKS[fmt]

    def exact(value: Any) -> str:
        if not isinstance(value, str) or not check(value):
            raise ValueError(fmt)
        return value

    return core_schema.union_schema(
        [
            core_schema.str_schema(
                pattern=pattern, min_length=min_len, max_length=max_len, strict=True
            ),
            core_schema.no_info_plain_validator_function(exact),
        ],
        mode="left_to_right",
        custom_error_type="string_format",
        custom_error_message=f"String is not a valid {fmt}",
    )


class Integer:
    """Constraints of a Lexicon ``integer`` (spec § "integer"): a strict JSON integer
    (``true`` is not ``1``), ``minimum`` / ``maximum`` inclusive, closed ``enum``."""

    __slots__ = ("enum", "maximum", "minimum")

    def __init__(
        self,
        *,
        minimum: int | None = None,
        maximum: int | None = None,
        enum: Sequence[int] = (),
    ) -> None:
        self.minimum = minimum
        self.maximum = maximum
        self.enum = tuple(enum)

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        base = core_schema.int_schema(strict=True, ge=self.minimum, le=self.maximum)
        if self.enum:
            return core_schema.chain_schema(
                [base, core_schema.literal_schema(list(self.enum))]
            )
        if source is not int:
            # A Literal (const) annotation: check strictly first, then the value.
            return core_schema.chain_schema([base, handler(source)])
        return base


class StrictLiteral:
    """A string ``const`` or closed ``enum`` (``Literal[...]`` annotation): a strict
    JSON string first, then one of the literal values (spec § "string")."""

    __slots__ = ()

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        return core_schema.chain_schema(
            [core_schema.str_schema(strict=True), handler(source)]
        )


class Boolean:
    """A strict JSON boolean (spec § "boolean"); with ``Literal[...]`` for ``const``."""

    __slots__ = ()

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        base = core_schema.bool_schema(strict=True)
        if source is not bool:
            return core_schema.chain_schema([base, handler(source)])
        return base


class WireBytes(bytes):
    """``bytes`` read from a ``$bytes`` string that is not in canonical form; ``wire``
    is that string, written back unchanged by :meth:`LexObject.to_wire`. Compares,
    hashes and behaves as the plain ``bytes`` value."""

    wire: str

    def __new__(cls, data: bytes, wire: str) -> Self:
        inst = super().__new__(cls, data)
        inst.wire = wire
        return inst

    def __reduce__(self) -> tuple[Any, ...]:
        return (WireBytes, (bytes(self), self.wire))


def _b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii").rstrip("=")


def _b64decode(text: str) -> bytes:
    # Data model spec, "bytes": RFC 4648 § 4 base64 ("standard" alphabet), written
    # without padding. Readers are lenient as the peers are: indigo's
    # base64.RawStdEncoding accepts non-zero trailing bits ("123"), @atproto's
    # Buffer.from(…, "base64") also accepts padding ("AQ=="). A string that is not
    # the canonical encoding of its bytes is kept (WireBytes) so that
    # from_wire(x).to_wire() == x holds for every valid value; the URL-safe
    # alphabet, whitespace, partial or inner padding and a lone last character are
    # rejected.
    try:
        if "=" in text:
            data = base64.b64decode(text, validate=True)
        else:
            data = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise _err(
            "bytes_base64", "$bytes is not valid base64 ({reason})", reason=str(exc)
        ) from None
    if _b64encode(data) == text:
        return data
    return WireBytes(data, text)


_BYTES_SHAPE: Final = 'an object {"$bytes": "<base64>"}'


def _bytes_from_wire(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, Mapping) and len(value) == 1:
        text = value.get("$bytes")
        if isinstance(text, str):
            return _b64decode(text)
    raise _err("bytes_type", "Expected {shape} or bytes", shape=_BYTES_SHAPE)


def _bytes_to_wire(value: bytes) -> dict[str, str]:
    if type(value) is WireBytes:
        return {"$bytes": value.wire}
    return {"$bytes": _b64encode(value)}


class Bytes:
    """A Lexicon ``bytes`` value (spec § "bytes"). Python form: ``bytes``. Wire (JSON)
    form: ``{"$bytes": "<base64, no padding>"}``; ``bytes`` built in Python are
    written in that canonical form, ``bytes`` read from the wire are written back as
    they came (see :class:`WireBytes`: padding and non-zero trailing bits are
    accepted, as indigo and @atproto accept them). ``min_length`` / ``max_length``
    count bytes."""

    __slots__ = ("max_length", "min_length")

    def __init__(
        self, *, min_length: int | None = None, max_length: int | None = None
    ) -> None:
        self.min_length = min_length
        self.max_length = max_length

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        return core_schema.no_info_plain_validator_function(
            self._validate,
            serialization=core_schema.plain_serializer_function_ser_schema(
                _bytes_to_wire, when_used="json"
            ),
            json_schema_input_schema=core_schema.dict_schema(),
        )

    def _validate(self, value: Any) -> bytes:
        data = _bytes_from_wire(value)
        if self.max_length is not None and len(data) > self.max_length:
            raise _err(
                "bytes_too_long",
                "Bytes value is {size} bytes long, more than {max} allowed",
                size=len(data),
                max=self.max_length,
            )
        if self.min_length is not None and len(data) < self.min_length:
            raise _err(
                "bytes_too_short",
                "Bytes value is {size} bytes long, fewer than {min} required",
                size=len(data),
                min=self.min_length,
            )
        return data


WIRE_CONFIG: Final = ConfigDict(
    extra="allow",
    validate_by_alias=True,
    validate_by_name=True,
    serialize_by_alias=True,
    validate_assignment=False,
    arbitrary_types_allowed=False,
    protected_namespaces=(),
    defer_build=True,
)
"""pydantic config shared by every generated model: unknown fields are kept
(``extra="allow"``), wire names are aliases, Python names work in ``__init__``."""


def _reorder(value: Any, source: Any) -> Any:
    """Reorder the keys of the JSON ``value`` like those of ``source`` (recursively)."""
    if isinstance(value, dict) and isinstance(source, dict):
        out: dict[str, Any] = {}
        for key in source:
            if key in value:
                out[key] = _reorder(value[key], source[key])
        for key, item in value.items():
            if key not in out:
                out[key] = item
        return out
    if isinstance(value, list) and isinstance(source, list):
        return [
            _reorder(v, source[i]) if i < len(source) else v
            for i, v in enumerate(value)
        ]
    return value


class LexObject(BaseModel):
    """Base of every model generated from a Lexicon ``object`` def (and of records).

    Class attributes set by the generator: ``lex_id`` (NSID of the defining Lexicon),
    ``lex_def`` (def name) and ``lex_type`` (the ``$type`` string: ``nsid`` for
    ``main``, else ``nsid#def``).

    Use :meth:`from_wire` / :meth:`from_json` to validate wire data (field names are
    matched by wire name only), and :meth:`to_wire` / :meth:`to_json` to serialize. The
    round trip wire → model → wire returns the input unchanged: absent fields stay
    absent, ``null`` stays ``null``, unknown fields and key order are kept.
    """

    model_config = WIRE_CONFIG

    lex_id: ClassVar[str] = ""
    lex_def: ClassVar[str] = ""
    lex_type: ClassVar[str] = ""

    # -- validation -----------------------------------------------------------------
    @classmethod
    def from_wire(cls, data: Any) -> Self:
        """Validate decoded JSON (``dict``) as this model; raises
        ``pydantic.ValidationError`` with the JSON path of each problem."""
        inst = cls.model_validate(data, by_alias=True, by_name=False)
        object.__setattr__(inst, "__pydantic_private__", {"wire": data})
        return inst

    @classmethod
    def from_json(cls, raw: str | bytes | bytearray) -> Self:
        """Validate a JSON document as this model (see :meth:`from_wire`)."""
        inst = cls.model_validate_json(raw, by_alias=True, by_name=False)
        object.__setattr__(inst, "__pydantic_private__", {"raw": raw})
        return inst

    # -- serialization --------------------------------------------------------------
    def to_wire(self) -> dict[str, Any]:
        """The JSON form of this object (``dict``), wire names as keys, ``$bytes`` /
        ``$link`` encodings, absent fields left out, original key order kept."""
        out: dict[str, Any] = self.model_dump(
            mode="json", by_alias=True, exclude_unset=True
        )
        private = self.__pydantic_private__
        if private:
            source = private.get("wire")
            if source is None and "raw" in private:
                source = json.loads(private["raw"])
                private["wire"] = source
            if source is not None:
                out = _reorder(out, source)
        return out

    def to_json(self) -> str:
        """:meth:`to_wire` as compact JSON text (UTF-8, no ASCII escaping)."""
        return json.dumps(self.to_wire(), ensure_ascii=False, separators=(",", ":"))

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        assert isinstance(other, LexObject)
        return (
            self.__dict__ == other.__dict__
            and self.__pydantic_extra__ == other.__pydantic_extra__
        )

    __hash__ = None  # type: ignore[assignment]


_MISSING: Final = object()


def _located(
    title: str, problems: Sequence[InitErrorDetails], after: ValidationError | None
) -> ValidationError:
    """A ``ValidationError`` of ``problems``, then the errors of ``after`` (their
    messages as rendered, their locations and inputs kept)."""
    details = list(problems)
    for e in after.errors() if after is not None else ():
        details.append(
            InitErrorDetails(
                type=PydanticCustomError(e["type"], e["msg"]),
                loc=tuple(e["loc"]),
                input=e["input"],
            )
        )
    return ValidationError.from_exception_data(title, details)


class LexRecord(LexObject):
    """Base of models generated from a Lexicon ``record`` def. ``lex_key`` is the
    record key type (``tid``, ``nsid``, ``any`` or ``literal:<value>``).

    :meth:`from_wire` / :meth:`from_json` validate a *record* (data model spec,
    "``$type``": a record carries it, and it is the bare NSID): a missing ``$type``
    (``record_type_missing``) and ``nsid#main`` (``record_type_main``) are errors
    located at ``$type``, as in ``@atproto/lexicon``'s ``assertValidRecord``.
    Objects nested in the record may omit ``$type`` (union members may not). A
    record built in Python (``Post(text=…)``) needs no ``$type``: :meth:`to_wire`
    writes it."""

    lex_key: ClassVar[str] = "any"

    @classmethod
    def _record_problem(cls, data: Any) -> InitErrorDetails | None:
        if not isinstance(data, dict):
            return None  # pydantic reports the wrong type
        kind = data.get("$type", _MISSING)
        if kind is _MISSING:
            return InitErrorDetails(
                type=_err(
                    "record_type_missing",
                    "A record must have $type ({expected})",
                    expected=repr(cls.lex_type),
                ),
                loc=("$type",),
                input=data,
            )
        if kind == f"{cls.lex_type}#main":
            return InitErrorDetails(
                type=_err(
                    "record_type_main",
                    "A record's $type is its bare NSID {expected}, not {actual}",
                    expected=repr(cls.lex_type),
                    actual=repr(kind),
                ),
                loc=("$type",),
                input=kind,
            )
        return None

    @classmethod
    def from_wire(cls, data: Any) -> Self:
        """Validate decoded JSON as a record of this type (see the class doc)."""
        problem = cls._record_problem(data)
        try:
            inst = super().from_wire(data)
        except ValidationError as exc:
            if problem is None:
                raise
            raise _located(cls.__name__, [problem], exc) from None
        if problem is not None:
            raise _located(cls.__name__, [problem], None)
        return inst

    @classmethod
    def from_json(cls, raw: str | bytes | bytearray) -> Self:
        """Validate a JSON document as a record of this type (see the class doc)."""
        try:
            inst = super().from_json(raw)
        except ValidationError as exc:
            try:
                data = json.loads(raw)
            except ValueError:
                raise exc from None
            problem = cls._record_problem(data)
            if problem is None:
                raise
            raise _located(cls.__name__, [problem], exc) from None
        if (
            "py_type" in inst.model_fields_set
            and inst.__dict__.get("py_type") == cls.lex_type
        ):
            return inst  # fast path: the validated `$type` field says all
        problem = cls._record_problem(json.loads(raw))
        if problem is not None:
            raise _located(cls.__name__, [problem], None)
        return inst

    def to_wire(self) -> dict[str, Any]:
        """As :meth:`LexObject.to_wire`; a record always carries ``$type`` (its NSID)."""
        out = super().to_wire()
        if "$type" not in out:
            out = {"$type": self.lex_type, **out}
        return out


def _query_integer(text: str) -> int:
    if _INTEGER_RE.fullmatch(text) is None:
        raise _err(
            "query_integer",
            "Query parameter must be a decimal integer, not {value}",
            value=repr(text),
        )
    return int(text)


def _query_boolean(text: str) -> bool:
    if text == "true":
        return True
    if text == "false":
        return False
    raise _err(
        "query_boolean",
        "Query parameter must be true or false, not {value}",
        value=repr(text),
    )


def _query_unknown(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        raise _err(
            "query_json", "Query parameter of type unknown must be JSON text"
        ) from None


_INTEGER_RE: Final = re.compile(r"-?[0-9]+")
_QUERY_PARSERS: Final[dict[str, Callable[[str], Any]]] = {
    "integer": _query_integer,
    "boolean": _query_boolean,
    "string": str,
    "unknown": _query_unknown,
}


class LexParams(LexObject):
    """Base of the ``…Params`` models of queries, procedures and subscriptions
    (Lexicon spec § "params"). ``lex_params`` (set by the generator) maps each
    parameter's wire name to its Lexicon type: ``boolean``, ``integer``, ``string``
    or ``unknown``, with ``[]`` for an array of them."""

    lex_params: ClassVar[Mapping[str, str]] = {}

    @classmethod
    def from_query(cls, query: str | Mapping[str, str | Sequence[str]]) -> Self:
        """Validate HTTP query parameters (XRPC spec, "Lexicon HTTP Endpoints"): a
        query string (``"limit=20&tag=a&tag=b"``, a leading ``?`` allowed) or a
        mapping of name → value or list of values. Values are text, read per the
        Lexicon type: integers in decimal (``-?[0-9]+``), booleans ``true`` /
        ``false``, strings as they are, ``unknown`` as JSON text; an array is the
        repeated key (``tag=a&tag=b``). A parameter that is not an array given more
        than once, and unparsable text, are errors located at the name (and index).
        Then the values are validated as :meth:`from_wire` does (constraints,
        formats, required). Unknown parameters are kept as strings."""
        if isinstance(query, str):
            pairs = urllib.parse.parse_qsl(
                query.removeprefix("?"), keep_blank_values=True, strict_parsing=False
            )
            items: dict[str, list[str]] = {}
            for key, value in pairs:
                items.setdefault(key, []).append(value)
        else:
            items = {
                key: [value] if isinstance(value, str) else list(value)
                for key, value in query.items()
            }
        data: dict[str, Any] = {}
        problems: list[InitErrorDetails] = []
        for key, values in items.items():
            kind = cls.lex_params.get(key)
            if kind is None:
                data[key] = values[0] if len(values) == 1 else values
                continue
            is_array = kind.endswith("[]")
            parse = _QUERY_PARSERS[kind.removesuffix("[]")]
            if not is_array and len(values) != 1:
                problems.append(
                    InitErrorDetails(
                        type=_err(
                            "query_repeated",
                            "Query parameter is not an array but is given {count} "
                            "times",
                            count=len(values),
                        ),
                        loc=(key,),
                        input=values,
                    )
                )
                continue
            out = []
            for i, text in enumerate(values):
                try:
                    if not isinstance(text, str):
                        raise _err(
                            "query_text",
                            "Query parameter values are text, not {given}",
                            given=type(text).__name__,
                        )
                    out.append(parse(text))
                except PydanticCustomError as exc:
                    problems.append(
                        InitErrorDetails(
                            type=exc, loc=(key, i) if is_array else (key,), input=text
                        )
                    )
            data[key] = out if is_array else out[0] if out else None
        if problems:
            raise _located(cls.__name__, problems, None)
        return cls.from_wire(data)


class Unrecognized(BaseModel):
    """A union member whose ``$type`` is not among the union's refs (open unions only),
    or whose Lexicon was not compiled (``--external``). Keeps ``py_type`` (the
    ``$type``) and every other field unchanged, so it re-serializes as it came."""

    model_config = ConfigDict(extra="allow", frozen=False, defer_build=True)

    py_type: str = Field(alias="$type")

    def to_wire(self) -> dict[str, Any]:
        """The JSON form, unchanged from the input."""
        return self.model_dump(mode="json", by_alias=True, exclude_unset=True)


class CidLink(BaseModel):
    """A Lexicon ``cid-link``: wire form ``{"$link": "<cid>"}`` (data model spec,
    "Link and CID Formats"). ``link`` is the CID string."""

    model_config = ConfigDict(
        extra="forbid", validate_by_alias=True, validate_by_name=True, frozen=True
    )

    link: Annotated[str, String(format="cid")] = Field(alias="$link", strict=True)


class Blob(BaseModel):
    """A Lexicon ``blob`` reference (data model spec, "Blob Type"):
    ``{"$type": "blob", "ref": {"$link": cid}, "mimeType": str, "size": int}`` with
    ``size`` in bytes."""

    model_config = ConfigDict(
        extra="allow", validate_by_alias=True, validate_by_name=True, frozen=True
    )

    py_type: Literal["blob"] = Field(default="blob", alias="$type")
    ref: CidLink
    mime_type: str = Field(alias="mimeType", strict=True)
    size: Annotated[int, Integer(minimum=0)]


class BlobConstraint:
    """Constraints of a Lexicon ``blob`` field (spec § "blob"): ``accept`` is a list of
    MIME types with ``*`` globs (``image/*``, ``*/*``); ``max_size`` is in bytes."""

    __slots__ = ("_accept_re", "accept", "max_size")

    def __init__(
        self, *, accept: Sequence[str] = (), max_size: int | None = None
    ) -> None:
        self.accept = tuple(accept)
        self.max_size = max_size
        self._accept_re = (
            re.compile("|".join(fnmatch.translate(p) for p in self.accept))
            if self.accept and "*/*" not in self.accept
            else None
        )

    def _check(self, blob: Blob) -> Blob:
        if self.max_size is not None and blob.size > self.max_size:
            raise _err(
                "blob_too_large",
                "Blob is {size} bytes, more than {max} allowed",
                size=blob.size,
                max=self.max_size,
            )
        if self._accept_re is not None and not self._accept_re.match(blob.mime_type):
            raise _err(
                "blob_mime_type",
                "Blob MIME type {mime} is not accepted ({accept})",
                mime=repr(blob.mime_type),
                accept=", ".join(self.accept),
            )
        return blob

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        return core_schema.no_info_after_validator_function(
            self._check, handler(source)
        )


_UNRECOGNIZED_TAG: Final = "\x00unrecognized"


def _with_type(value: Any, handler: core_schema.SerializerFunctionWrapHandler) -> Any:
    """Serialize a union member with ``$type`` first, as the spec requires of union
    values, also when the object was built in Python without one."""
    out = handler(value)
    if isinstance(out, dict) and "$type" not in out and isinstance(value, LexObject):
        return {"$type": value.lex_type, **out}
    return out


class _Union:
    __slots__ = ("closed",)

    def __init__(self, closed: bool) -> None:
        self.closed = closed

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        members = getattr(source, "__args__", (source,))
        choices: dict[str, core_schema.CoreSchema] = {}
        for member in members:
            if member is type(None):
                continue
            if member is Unrecognized:
                choices[_UNRECOGNIZED_TAG] = handler.generate_schema(member)
                continue
            tag = member.lex_type.removesuffix("#main")
            choices[tag] = handler.generate_schema(member)
        closed = self.closed
        listed = sorted(k for k in choices if k != _UNRECOGNIZED_TAG)
        for tag in listed:
            if "#" not in tag:  # a main def: `nsid#main` names it too
                choices.setdefault(f"{tag}#main", choices[tag])
        known = frozenset(choices)
        unrecognized = _UNRECOGNIZED_TAG

        def discriminate(value: Any) -> str | None:
            # Hot path: one call per union value. Dicts come from the wire; models
            # from Python code. `nsid` and `nsid#main` are both keys of `choices`.
            if type(value) is dict:
                tag = value.get("$type")
                if type(tag) is not str:
                    return None
            elif isinstance(value, LexObject):
                return value.lex_type
            elif isinstance(value, Unrecognized):
                tag = value.py_type
            else:
                return None
            if tag in known or closed:
                return tag
            return unrecognized

        schema = core_schema.tagged_union_schema(
            choices,
            discriminate,
            custom_error_type="union_type",
            custom_error_message=(
                "Union value must be an object whose $type is one of: "
                + ", ".join(listed)
            ),
        )
        schema["serialization"] = core_schema.wrap_serializer_function_ser_schema(
            _with_type, schema=core_schema.any_schema()
        )
        return schema


def union(*, closed: bool) -> Any:
    """Annotation marker for a Lexicon ``union`` (spec § "union"): members are
    discriminated by ``$type`` (``nsid`` ≡ ``nsid#main``). Closed unions reject other
    ``$type`` values; open unions keep them as :class:`Unrecognized`. A member without
    ``$type`` is an error in both."""
    return _Union(closed)
