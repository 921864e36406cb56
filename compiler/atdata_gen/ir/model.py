"""The intermediate representation: frozen dataclasses that know nothing of JSON.

Front ends (Lexicon files, and later schema records) lower into these types; the
linker, the lint and compatibility checks and the back ends read them. No stage
mutates another stage's output: a stage that adds information builds new values.

A :class:`DefId` names a def globally: ``nsid`` plus def ``name`` (``main`` for the
primary def). Types (:data:`IRType`) are values; a :class:`RefType` points at a
:class:`DefId`, resolved by the linker into a :class:`~atdata_gen.ir.link.LinkedModel`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..diagnostics import Span

__all__ = [
    "ArrayType",
    "BlobType",
    "Body",
    "BooleanType",
    "BytesType",
    "CidLinkType",
    "Def",
    "DefId",
    "Field",
    "IRType",
    "IntegerType",
    "NullType",
    "ObjectType",
    "Origin",
    "PermissionSetDef",
    "RecordDef",
    "RefType",
    "Schema",
    "StringType",
    "SubscriptionDef",
    "TokenDef",
    "UnionType",
    "UnknownType",
    "XrpcDef",
]


@dataclass(frozen=True, order=True, slots=True)
class DefId:
    """Global name of a def: ``nsid`` and def ``name``. ``str()`` gives the ``$type``
    form: ``nsid`` for ``main``, else ``nsid#name``."""

    nsid: str
    name: str = "main"

    def __str__(self) -> str:
        return self.nsid if self.name == "main" else f"{self.nsid}#{self.name}"

    @classmethod
    def parse(cls, ref: str, base_nsid: str) -> DefId:
        """Resolve a Lexicon reference (``#def``, ``nsid#def`` or ``nsid``) written in
        the Lexicon ``base_nsid`` (spec § "References")."""
        if ref.startswith("#"):
            return cls(base_nsid, ref[1:])
        nsid, _, name = ref.partition("#")
        return cls(nsid, name or "main")


@dataclass(frozen=True, slots=True)
class BooleanType:
    default: bool | None = None
    const: bool | None = None


@dataclass(frozen=True, slots=True)
class IntegerType:
    minimum: int | None = None
    maximum: int | None = None
    enum: tuple[int, ...] | None = None
    default: int | None = None
    const: int | None = None


@dataclass(frozen=True, slots=True)
class StringType:
    """``max_bytes`` / ``min_bytes`` are the Lexicon ``maxLength`` / ``minLength``
    (UTF-8 bytes); graphemes are extended grapheme clusters."""

    format: str | None = None
    max_bytes: int | None = None
    min_bytes: int | None = None
    max_graphemes: int | None = None
    min_graphemes: int | None = None
    known_values: tuple[str, ...] | None = None
    enum: tuple[str, ...] | None = None
    default: str | None = None
    const: str | None = None
    pattern: str | None = None


@dataclass(frozen=True, slots=True)
class BytesType:
    min_length: int | None = None
    max_length: int | None = None


@dataclass(frozen=True, slots=True)
class CidLinkType:
    pass


@dataclass(frozen=True, slots=True)
class BlobType:
    """``accept``: MIME globs; ``max_size``: bytes."""

    accept: tuple[str, ...] | None = None
    max_size: int | None = None


@dataclass(frozen=True, slots=True)
class NullType:
    pass


@dataclass(frozen=True, slots=True)
class UnknownType:
    pass


@dataclass(frozen=True, slots=True)
class RefType:
    target: DefId
    span: Span = field(compare=False, default=Span(""))


@dataclass(frozen=True, slots=True)
class UnionType:
    refs: tuple[DefId, ...]
    closed: bool
    span: Span = field(compare=False, default=Span(""))


@dataclass(frozen=True, slots=True)
class ArrayType:
    """``span``: where the array is defined (its Lexicon node; empty for arrays of
    schema records), for diagnostics only."""

    items: IRType
    min_length: int | None = None
    max_length: int | None = None
    span: Span = field(compare=False, default=Span(""))


@dataclass(frozen=True, slots=True)
class Field:
    """One property of an object (or params): wire ``name``, ``type``, whether it is
    ``required`` and ``nullable`` (Lexicon spec: three states, absent / null /
    value)."""

    name: str
    type: IRType
    required: bool
    nullable: bool
    description: str | None
    span: Span = field(compare=False)


@dataclass(frozen=True, slots=True)
class ObjectType:
    fields: tuple[Field, ...]
    span: Span = field(compare=False, default=Span(""))


@dataclass(frozen=True, slots=True)
class FloatType:
    """A JSON Schema ``number``: an IEEE-754 double on the msgpack wire."""


@dataclass(frozen=True, slots=True)
class NDArrayType:
    """An n-dimensional array (atdata's ``ndarray`` shim): ``dtype`` is a numpy dtype
    name (``None``: any), ``shape`` its dims (``None`` entries are wildcards; ``None``
    shape: any rank), ``dims`` the dimension names; ``shim_version`` the version of
    the shim the schema referenced."""

    dtype: str | None = None
    shape: tuple[int | None, ...] | None = None
    dims: tuple[str, ...] | None = None
    shim_version: str = "1.0.0"
    format: str = "ndarrayBytes"
    """``ndarrayBytes`` (compact layout), ``structuredBytes`` (a structured,
    compound-dtype array as ``.npy``), or one of atdata's library encodings:
    ``sparse``, ``arrow_tensor``, ``safetensors``, ``dataframe`` (opaque bytes on
    the wire)."""


IRType = (
    FloatType
    | NDArrayType
    | BooleanType
    | IntegerType
    | StringType
    | BytesType
    | CidLinkType
    | BlobType
    | NullType
    | UnknownType
    | RefType
    | UnionType
    | ArrayType
    | ObjectType
)


@dataclass(frozen=True, slots=True)
class RecordDef:
    """A record: ``key`` is the record key type (``tid``, ``nsid``, ``any``,
    ``literal:<value>``) and ``object`` its body."""

    key: str
    object: ObjectType


@dataclass(frozen=True, slots=True)
class Body:
    """Input or output of an XRPC method: ``encoding`` (MIME) and optional schema
    (an :class:`ObjectType`, :class:`RefType` or :class:`UnionType`)."""

    encoding: str
    schema: ObjectType | RefType | UnionType | None
    description: str | None


@dataclass(frozen=True, slots=True)
class XrpcDef:
    """A query or procedure (``kind``): params, input, output and error names."""

    kind: str
    params: ObjectType | None
    input: Body | None
    output: Body | None
    errors: tuple[tuple[str, str | None], ...]


@dataclass(frozen=True, slots=True)
class SubscriptionDef:
    params: ObjectType | None
    message: UnionType | None
    errors: tuple[tuple[str, str | None], ...]


@dataclass(frozen=True, slots=True)
class TokenDef:
    pass


@dataclass(frozen=True, slots=True)
class PermissionSetDef:
    """Kept as data (spec § "permission-set"): title, detail and the permission
    objects as plain JSON values."""

    title: str | None
    detail: str | None
    permissions: tuple[Any, ...]


DefBody = IRType | RecordDef | XrpcDef | SubscriptionDef | TokenDef | PermissionSetDef


@dataclass(frozen=True, slots=True)
class Def:
    """A named def: its ``id``, the Lexicon ``kind`` it was written as (``record``,
    ``object``, ``string``, ``query``, …), the ``body`` and where it came from."""

    id: DefId
    kind: str
    body: DefBody
    description: str | None
    span: Span = field(compare=False)


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a schema came from: ``path`` (file) or AT-URI, and the sha256 of its
    bytes."""

    path: str
    sha256: str


@dataclass(frozen=True, slots=True)
class Schema:
    """One Lexicon (one NSID): description, revision and defs in source order."""

    nsid: str
    description: str | None
    revision: int | None
    defs: tuple[Def, ...]
    origin: Origin
    span: Span = field(compare=False)


# -- sample schemas (atdata schema records) --------------------------------------------


SampleFieldType = (
    BooleanType
    | IntegerType
    | FloatType
    | StringType
    | BytesType
    | NDArrayType
    | ArrayType
)


@dataclass(frozen=True, slots=True)
class SampleSchema:
    """A sample type from a ``science.alt.dataset.schema`` record: ``name`` and
    ``version`` (semver), the ``fields`` in wire order (``required`` = not
    optional), ``array_formats`` (format name → version) and provenance: the source
    ``origin`` (file), and the record's AT-URI and CID when known."""

    name: str
    version: str
    description: str | None
    fields: tuple[Field, ...]
    array_formats: tuple[tuple[str, str], ...]
    origin: Origin
    uri: str | None
    cid: str | None
    span: Span = field(compare=False)
    metadata_json: str | None = None
    """The record's free-form ``metadata`` (licence, tags, …) as JSON text, kept
    opaque."""
    record_json: str | None = field(default=None, compare=False)
    """The whole record as read (JSON text): not compared (``createdAt`` differs
    between copies of one version), only quoted when two copies conflict
    (``SCHEMA_VERSION_CONFLICT`` names the JSON pointers that differ)."""
    record_form: str = field(default="flat", compare=False)
    """How the record carried its JSON Schema: ``envelope`` (atdata-lexicon 0.4.x),
    ``flat`` (atdata 0.7) or ``fields`` (the older field list). Not compared: the
    same schema in either form is the same schema."""


# -- lens records (science.alt.dataset.lens) --------------------------------------------


@dataclass(frozen=True, slots=True)
class CodeRef:
    """A ``codeReference`` of a lens record: code at a fixed ``commit`` of a
    ``repository``, ``path`` = ``module:function`` (checked to be dotted Python
    identifiers), ``branch`` and ``language`` informational."""

    repository: str
    commit: str
    path: str
    branch: str | None = None
    language: str | None = None


@dataclass(frozen=True, slots=True)
class LensRecord:
    """A lens record: ``name``, the ``source`` and ``target`` schema AT-URIs, the
    ``getter`` (source → target) and ``putter`` (target, source → source) code
    references, the optional semver ranges (npm syntax) of the two schemas, and
    provenance (``origin`` file, record AT-URI and CID when known). ``source_span``
    / ``target_span`` locate the two AT-URIs (for resolution errors)."""

    name: str
    description: str | None
    source: str
    target: str
    getter: CodeRef
    putter: CodeRef
    source_range: str | None
    target_range: str | None
    origin: Origin
    uri: str | None
    cid: str | None
    span: Span = field(compare=False)
    source_span: Span = field(compare=False)
    target_span: Span = field(compare=False)
    source_range_span: Span = field(compare=False)
    target_range_span: Span = field(compare=False)
