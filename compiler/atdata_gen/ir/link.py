"""Stage 4, link: schemas → :class:`LinkedModel` (refs resolved, names assigned).

* Indexes every def by :class:`DefId` (emitted schemas and ``--external`` ones).
* Reports duplicate NSIDs (``LEX_NSID_DUPLICATE``) and unresolvable references
  (``LEX_REF_UNRESOLVED``, both for ``ref`` and union members).
* Builds the name table, once: the module of each NSID, the Python name of each def
  and of each inline object, and the Python name of each field. Names come from
  :mod:`atdata_gen.naming`; collisions are settled in source order.

Reference cycles (``app.bsky.feed.defs#threadViewPost`` → itself,
``app.bsky.embed.record`` ↔ ``app.bsky.embed.recordWithMedia``) are legal and need
nothing here: references stay symbolic, and the back end emits them lazily.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace

from .. import naming
from ..diagnostics import Reporter, closest
from .depth import check_type_depth
from .model import (
    ArrayType,
    Def,
    DefId,
    IRType,
    LensRecord,
    ObjectType,
    RecordDef,
    RefType,
    SampleSchema,
    Schema,
    SubscriptionDef,
    UnionType,
    XrpcDef,
)

__all__ = [
    "LinkedLens",
    "LinkedModel",
    "NameTable",
    "ObjectPath",
    "link",
    "link_lenses",
    "link_samples",
    "walk_objects",
]

ObjectPath = tuple[DefId, tuple[str, ...]]
"""Address of an object type: its def and the path inside it (``()`` for the def
itself, ``("input",)``, ``("properties", "foo", "items")``, …)."""


@dataclass(frozen=True, slots=True)
class NameTable:
    """Python names, assigned once. ``modules``: NSID → module path parts (relative
    to the package); ``defs``: def → name (class, alias or constant; for queries,
    procedures and subscriptions the base name of their classes); ``objects``:
    object path → class name; ``fields``: object path → field names, in field
    order."""

    modules: Mapping[str, tuple[str, ...]]
    defs: Mapping[DefId, str]
    objects: Mapping[ObjectPath, str]
    fields: Mapping[ObjectPath, tuple[str, ...]]
    external_modules: Mapping[str, tuple[str, tuple[str, ...]]]
    """NSID → (package, module path) for externals given with ``DIR=PACKAGE``."""
    samples: Mapping[tuple[str, str], tuple[tuple[str, ...], str, tuple[str, ...]]] = (
        field(default_factory=dict)
    )
    """(schema name, version) → (module path, class name, field names)."""


@dataclass(frozen=True, slots=True)
class LinkedLens:
    """A lens record with its two schemas resolved: ``source`` and ``target`` are
    sample schemas of the model; ``module`` the stub's module path (relative to the
    package)."""

    record: LensRecord
    source: SampleSchema
    target: SampleSchema
    module: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class LinkedModel:
    """Everything the back ends need: the ``schemas`` to emit (sorted by NSID), the
    ``externals`` that are only referenced, every def by id, and the names."""

    schemas: tuple[Schema, ...]
    externals: tuple[Schema, ...]
    defs: Mapping[DefId, Def]
    names: NameTable
    samples: tuple[SampleSchema, ...] = ()
    lenses: tuple[LinkedLens, ...] = ()

    def owner_is_emitted(self, ref: DefId) -> bool:
        """True when the Lexicon defining ``ref`` is emitted (not external)."""
        return ref.nsid in self.names.modules

    def has_class(self, ref: DefId) -> bool:
        """True when ``ref``'s class can be imported: emitted here, or external with a
        package."""
        return ref.nsid in self.names.modules or ref.nsid in self.names.external_modules

    def resolve(self, ref: DefId) -> Def | None:
        return self.defs.get(ref)


def walk_objects(d: Def) -> Iterator[tuple[tuple[str, ...], ObjectType]]:
    """Every object type inside a def, with its path, parents before children."""

    def walk(
        t: IRType | None, path: tuple[str, ...]
    ) -> Iterator[tuple[tuple[str, ...], ObjectType]]:
        if isinstance(t, ObjectType):
            yield path, t
            for f in t.fields:
                yield from walk(f.type, (*path, "properties", f.name))
        elif isinstance(t, ArrayType):
            yield from walk(t.items, (*path, "items"))

    body = d.body
    if isinstance(body, RecordDef):
        yield from walk(body.object, ())
    elif isinstance(body, XrpcDef):
        yield from walk(body.params, ("params",))
        if body.input is not None and isinstance(body.input.schema, ObjectType):
            yield from walk(body.input.schema, ("input",))
        if body.output is not None and isinstance(body.output.schema, ObjectType):
            yield from walk(body.output.schema, ("output",))
    elif isinstance(body, SubscriptionDef):
        yield from walk(body.params, ("params",))
    elif isinstance(body, ObjectType | ArrayType):
        yield from walk(body, ())


def _refs_in(d: Def) -> Iterator[tuple[DefId, RefType | UnionType]]:
    def walk(t: object) -> Iterator[tuple[DefId, RefType | UnionType]]:
        if isinstance(t, RefType):
            yield t.target, t
        elif isinstance(t, UnionType):
            for r in t.refs:
                yield r, t
        elif isinstance(t, ArrayType):
            yield from walk(t.items)
        elif isinstance(t, ObjectType):
            for f in t.fields:
                yield from walk(f.type)

    body = d.body
    if isinstance(body, RecordDef):
        yield from walk(body.object)
    elif isinstance(body, XrpcDef):
        yield from walk(body.params)
        for b in (body.input, body.output):
            if b is not None:
                yield from walk(b.schema)
    elif isinstance(body, SubscriptionDef):
        yield from walk(body.params)
        yield from walk(body.message)
    else:
        yield from walk(body)


def _module_paths(nsids: list[str]) -> dict[str, tuple[str, ...]]:
    """NSID → module path. An NSID whose module path is also a package (because a
    longer NSID lives below it) becomes that package's ``__init__``."""
    paths: dict[str, tuple[str, ...]] = {}
    taken: set[tuple[str, ...]] = set()
    for nsid in sorted(nsids):
        parts = tuple(naming.module_name(s) for s in nsid.split("."))
        candidate, n = parts, 1
        while candidate in taken:
            n += 1
            candidate = (*parts[:-1], f"{parts[-1]}_{n}")
        taken.add(candidate)
        paths[nsid] = candidate
    packages = {p[:i] for p in paths.values() for i in range(1, len(p))}
    return {nsid: (*p, "__init__") if p in packages else p for nsid, p in paths.items()}


def _name_defs(
    schema: Schema,
    defs: dict[DefId, str],
    objects: dict[ObjectPath, str],
    fields: dict[ObjectPath, tuple[str, ...]],
) -> None:
    scope = naming.Scope()
    last = schema.nsid.rsplit(".", 1)[-1]
    # Primary names first, so that `main` gets the NSID's name.
    ordered = sorted(schema.defs, key=lambda d: d.id.name != "main")
    for d in ordered:
        base = last if d.id.name == "main" else d.id.name
        if d.kind == "token":
            defs[d.id] = scope.claim(naming.constant_name(base))
        elif d.kind == "permission-set":
            defs[d.id] = scope.claim("PERMISSION_SET")
        elif d.kind in ("query", "procedure", "subscription"):
            pascal = naming.pascal_case(base)
            defs[d.id] = scope.claim(pascal)
            for suffix in ("Params", "Input", "Output", "Message"):
                scope.claim(pascal + suffix)
        else:
            defs[d.id] = scope.claim(naming.pascal_case(base))
    for d in schema.defs:
        for path, obj in walk_objects(d):
            key = (d.id, path)
            if not path:
                objects[key] = defs[d.id]
            elif path[0] in ("params", "input", "output") and len(path) == 1:
                objects[key] = defs[d.id] + path[0].capitalize()
            else:
                parent = objects.get((d.id, path[:-2])) or defs[d.id]
                words = [p for p in path[-2:] if p not in ("properties",)]
                wanted = parent + "".join(naming.pascal_case(w) for w in words)
                objects[key] = scope.claim(wanted)
            fields[key] = naming.field_names([f.name for f in obj.fields])


def _ref_hint(target: DefId, defs: Mapping[DefId, Def]) -> str:
    """A did-you-mean for an unresolved ref: the closest def name of the same
    NSID, else the closest NSID (with the same def name when it has one)."""
    names = [d.name for d in defs if d.nsid == target.nsid]
    if names:
        name = closest(target.name, names)
        return f"; did you mean {str(DefId(target.nsid, name))!r}?" if name else ""
    # NSIDs share long prefixes (com.example.…): only a near-identical one is a typo.
    nsid = closest(target.nsid, {d.nsid for d in defs}, cutoff=0.9)
    if nsid is None:
        return ""
    wanted = DefId(nsid, target.name)
    return f"; did you mean {str(wanted if wanted in defs else DefId(nsid))!r}?"


def _only_in_unused(
    target: DefId, unused: list[Schema], used: Mapping[str, Schema]
) -> str:
    """Says so when ``target`` is defined only in a copy of its NSID that was not
    used (a rejected duplicate, or an external shadowed by a source)."""
    for s in unused:
        if s.nsid == target.nsid and any(d.id == target for d in s.defs):
            kept = used[s.nsid].origin.path
            return (
                f": it is defined only in {s.origin.path}, a copy of NSID "
                f"{s.nsid!r} that is not used (the copy in {kept} is kept)"
            )
    return ""


def link(
    schemas: list[Schema],
    externals: list[Schema],
    reporter: Reporter,
    external_packages: Mapping[str, str] | None = None,
) -> LinkedModel:
    """Index, check references, and assign names. Problems are reported; the model
    is always returned so that later stages can report more in the same run."""
    by_nsid: dict[str, Schema] = {}
    sources = {id(s) for s in schemas}
    unused: list[Schema] = []  # the copies of a duplicate NSID that are not used
    for s in [*schemas, *externals]:
        first = by_nsid.get(s.nsid)
        if first is not None:
            unused.append(s)
            # A source shadows an external with the same NSID (checking or building
            # one changed file against its whole directory given as --external).
            shadowed = id(first) in sources and id(s) not in sources
            if not shadowed and (
                first.origin.sha256 != s.origin.sha256 or id(s) in sources
            ):
                reporter.report(
                    s.span,
                    "LEX_NSID_DUPLICATE",
                    f"NSID {s.nsid!r} is defined twice: this copy "
                    f"({s.origin.path}) is rejected, the copy in "
                    f"{first.origin.path} is kept",
                )
            continue
        by_nsid[s.nsid] = s
    emitted = sorted(
        (s for s in schemas if by_nsid.get(s.nsid) is s), key=lambda s: s.nsid
    )
    ext = sorted(
        (s for s in externals if by_nsid.get(s.nsid) is s), key=lambda s: s.nsid
    )
    defs: dict[DefId, Def] = {}
    for s in [*emitted, *ext]:
        for d in s.defs:
            defs[d.id] = d
    for s in emitted:
        for d in s.defs:
            for target, where in _refs_in(d):
                if target not in defs:
                    what = "union member" if isinstance(where, UnionType) else "ref"
                    reporter.report(
                        where.span,
                        "LEX_REF_UNRESOLVED",
                        f"{what} {str(target)!r} does not resolve to any def"
                        + (
                            _only_in_unused(target, unused, by_nsid)
                            or _ref_hint(target, defs)
                            or " (add its Lexicon to the sources or to --external)"
                        ),
                    )
    def_names: dict[DefId, str] = {}
    objects: dict[ObjectPath, str] = {}
    fields: dict[ObjectPath, tuple[str, ...]] = {}
    for s in [*emitted, *ext]:
        _name_defs(s, def_names, objects, fields)
    groups: dict[str, list[str]] = {}
    emitted_nsids = {s.nsid for s in emitted}
    for s in ext:
        package = (external_packages or {}).get(s.nsid)
        if package is not None and s.nsid not in emitted_nsids:
            groups.setdefault(package, []).append(s.nsid)
    external_modules = {
        nsid: (package, path)
        for package, nsids in sorted(groups.items())
        for nsid, path in _module_paths(nsids).items()
    }
    names = NameTable(
        _module_paths([s.nsid for s in emitted]),
        def_names,
        objects,
        fields,
        external_modules,
    )
    check_type_depth([d for s in emitted for d in s.defs], defs, reporter)
    return LinkedModel(tuple(emitted), tuple(ext), defs, names)


def link_samples(
    model: LinkedModel, samples: list[SampleSchema], reporter: Reporter
) -> LinkedModel:
    """Add sample schemas to ``model``: one module per (name, version) under
    ``samples/``, class named after the schema (its last dotted segment), field names
    from the name table. The same name and version twice with different fields is
    an error (``SCHEMA_DUPLICATE``); identical duplicates are merged."""
    by_key: dict[tuple[str, str], SampleSchema] = {}
    for s in samples:
        first = by_key.get((s.name, s.version))
        if first is None:
            by_key[(s.name, s.version)] = s
        elif first.fields != s.fields:
            reporter.report(
                s.span,
                "SCHEMA_DUPLICATE",
                f"schema {s.name!r} version {s.version} is defined again with "
                f"different fields (first in {first.origin.path}); bump the version",
            )
    ordered = [by_key[k] for k in sorted(by_key)]
    taken = {p[0] for p in model.names.modules.values() if p}
    module_scope = naming.Scope()
    names: dict[tuple[str, str], tuple[tuple[str, ...], str, tuple[str, ...]]] = {}
    for s in ordered:
        module = module_scope.claim(naming.sample_module_stem(s.name, s.version))
        package = "samples" if "samples" not in taken else "samples_"
        fields = naming.field_names(
            [f.name for f in s.fields], naming.sample_field_name
        )
        cls = naming.pascal_case(s.name.rsplit(".", 1)[-1])
        names[(s.name, s.version)] = ((package, module), cls, fields)
    return replace(
        model, names=replace(model.names, samples=names), samples=tuple(ordered)
    )


def _resolve_schema(uri: str, samples: tuple[SampleSchema, ...]) -> SampleSchema | None:
    """The sample schema ``uri`` names: the one published under exactly that
    AT-URI; else, for a ``{name}:{version}`` record key (atdata-gen's keys), the
    one of that name and version whose AT-URI has the same authority, or that has
    no AT-URI (a local schema file)."""
    from atdata_runtime.atmosphere.records import AtUri, parse_schema_rkey

    for s in samples:
        if s.uri == uri:
            return s
    at = AtUri.parse(uri)
    key = parse_schema_rkey(at.rkey)
    if key is None:
        return None
    for s in samples:
        if (s.name, s.version) == key and (
            s.uri is None or AtUri.parse(s.uri).authority == at.authority
        ):
            return s
    return None


def link_lenses(
    model: LinkedModel, lenses: list[LensRecord], reporter: Reporter
) -> LinkedModel:
    """Add lens records to ``model``: resolve their source and target schema
    AT-URIs among the model's sample schemas (the sources and the lock), check the
    resolved versions against the records' version ranges, and name one stub
    module per lens under ``lenses/`` (snake case of the lens name, in order of
    name, then source). Reports ``LENS_SCHEMA_UNRESOLVED`` (an AT-URI names no
    compiled schema: pull it, or add its record to the sources) and
    ``LENS_VERSION_RANGE`` (the resolved version is outside the declared range);
    such a lens is left out."""
    from ..frontend.lens_record import in_range

    linked: list[tuple[LensRecord, SampleSchema, SampleSchema]] = []
    for rec in sorted(lenses, key=lambda r: (r.name, r.source, r.target, r.uri or "")):
        ends = []
        for uri, span, range_, range_span, side in (
            (
                rec.source,
                rec.source_span,
                rec.source_range,
                rec.source_range_span,
                "source",
            ),
            (
                rec.target,
                rec.target_span,
                rec.target_range,
                rec.target_range_span,
                "target",
            ),
        ):
            schema = _resolve_schema(uri, model.samples)
            if schema is None:
                reporter.report(
                    span,
                    "LENS_SCHEMA_UNRESOLVED",
                    f"lens {rec.name!r}: {side} schema {uri} is not among the "
                    "compiled schema records (run `atdata-gen pull " + uri + "`, "
                    "or add the record's JSON to the sources)",
                )
                continue
            if range_ is not None and not in_range(range_, schema.version):
                reporter.report(
                    range_span,
                    "LENS_VERSION_RANGE",
                    f"lens {rec.name!r}: {side} schema {uri} has version "
                    f"{schema.version}, outside the declared range {range_!r}",
                )
                continue
            ends.append(schema)
        if len(ends) == 2:
            linked.append((rec, ends[0], ends[1]))
    taken = {p[0] for p in model.names.modules.values() if p}
    package = "lenses" if "lenses" not in taken else "lenses_"
    scope = naming.Scope({"__init__"})
    out = []
    for rec, src, dst in linked:
        module = naming.module_stem(rec.name)
        out.append(LinkedLens(rec, src, dst, (package, scope.claim(module))))
    return replace(model, lenses=tuple(out))
