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
  ``{"$type": "blob", "ref": {"$link": …}, "mimeType": …, "size": …}``.

Nothing here reads Lexicon files: generated modules carry everything they need.
"""

from __future__ import annotations

import base64
import binascii
import fnmatch
import functools
import json
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Annotated, Any, ClassVar, Final, Literal, Self, TypeVar

from pydantic import BaseModel, ConfigDict, Field, GetCoreSchemaHandler
from pydantic_core import PydanticCustomError, core_schema

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
    "LexRecord",
    "Opt",
    "StrictLiteral",
    "String",
    "Unrecognized",
    "count_graphemes",
    "union",
]

T = TypeVar("T")

JsonObject = dict[str, Any]
"""The Python form of Lexicon ``unknown``: any JSON object (data model "unknown")."""


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


def _err(kind: str, message: str, **ctx: Any) -> PydanticCustomError:
    return PydanticCustomError(kind, message, ctx)


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


def _b64decode(text: str) -> bytes:
    # The data model allows base64 with or without padding (RFC 4648 § 4).
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise _err("bytes_base64", "$bytes is not valid base64: {e}", e=str(exc))


def _bytes_from_wire(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, Mapping) and len(value) == 1:
        text = value.get("$bytes")
        if isinstance(text, str):
            return _b64decode(text)
    raise _err("bytes_type", 'Expected {{"$bytes": <base64>}} or bytes')


def _bytes_to_wire(value: bytes) -> dict[str, str]:
    return {"$bytes": base64.b64encode(value).decode("ascii").rstrip("=")}


class Bytes:
    """A Lexicon ``bytes`` value (spec § "bytes"). Python form: ``bytes``. Wire (JSON)
    form: ``{"$bytes": "<base64, no padding>"}``. ``min_length`` / ``max_length``
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
                "Bytes are {size} long, more than {max} allowed",
                size=len(data),
                max=self.max_length,
            )
        if self.min_length is not None and len(data) < self.min_length:
            raise _err(
                "bytes_too_short",
                "Bytes are {size} long, fewer than {min} required",
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


class LexRecord(LexObject):
    """Base of models generated from a Lexicon ``record`` def. ``lex_key`` is the
    record key type (``tid``, ``nsid``, ``any`` or ``literal:<value>``)."""

    lex_key: ClassVar[str] = "any"

    def to_wire(self) -> dict[str, Any]:
        """As :meth:`LexObject.to_wire`; a record always carries ``$type`` (its NSID)."""
        out = super().to_wire()
        if "$type" not in out:
            out = {"$type": self.lex_type, **out}
        return out


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
                "Blob MIME type {mime!r} is not accepted ({accept})",
                mime=blob.mime_type,
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
            tag = member.lex_type
            choices[tag.removesuffix("#main")] = handler.generate_schema(member)
        closed = self.closed
        for tag in list(choices):
            if tag != _UNRECOGNIZED_TAG:
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
                + ", ".join(sorted(k for k in known if k != _UNRECOGNIZED_TAG))
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
