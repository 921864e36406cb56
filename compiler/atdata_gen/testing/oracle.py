"""The compatibility oracle: check the checker with data.

For a pair of Lexicon sets (previous, current) and one def, hypothesis generates
valid data under one side (:func:`~atdata_gen.testing.strategies.wire_data`, with
values at the upper bounds and undeclared properties named like deleted ones) and
validates it with the *generated models* of the other side:

* BACKWARD: data valid under the previous side must validate under the current one;
* FORWARD: data valid under the current side must validate under the previous one.

A record's key is part of its data: records carry an ``rkey`` drawn from the key
type and checked against the other side's key type (Lexicon spec § "Record Key
Type").

:meth:`Oracle.counterexample` looks for a record that breaks a direction (hypothesis
``find``, shrunk) within a bounded number of draws; ``None`` means the direction
held for every record drawn. The property tests assert: every direction the checker calls
compatible holds, and every direction a finding breaks has a counterexample.
"""

from __future__ import annotations

import importlib
import itertools
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from atdata_runtime.lex.formats import is_nsid, is_record_key, is_tid
from hypothesis import HealthCheck, Phase, find, settings
from hypothesis import strategies as st
from hypothesis.errors import NoSuchExample, Unsatisfiable
from pydantic import TypeAdapter, ValidationError

from ..backend.write import apply_plan, plan_changes
from ..checks.compat import compare
from ..diagnostics import Reporter, render
from ..ir.link import LinkedModel
from ..ir.model import ArrayType, DefId, ObjectType, RecordDef, RefType, UnionType
from ..pipeline import BuildOptions, build
from .strategies import _NSID, _RKEY, _TID, wire_data

__all__ = ["Oracle", "Side", "compile_side", "key_ok"]

_COUNTER = itertools.count()


@dataclass
class Side:
    """One compiled side: its linked ``model`` and the importable ``package`` of
    generated models."""

    model: LinkedModel
    package: str
    _classes: dict[DefId, Any] = field(default_factory=dict)

    def cls(self, did: DefId) -> Any:
        """The generated class of ``did`` (record or object def); ``None`` when the
        side has no such def."""
        if did not in self._classes:
            module = self.model.names.modules.get(did.nsid)
            name = self.model.names.defs.get(did)
            if module is None or name is None:
                return None
            mod = importlib.import_module(".".join((self.package, *module)))
            self._classes[did] = getattr(mod, name)
        return self._classes[did]

    def key_type(self, did: DefId) -> str | None:
        d = self.model.resolve(did)
        return d.body.key if d is not None and isinstance(d.body, RecordDef) else None

    def accepts(
        self, did: DefId, data: Any, rkey: str | None, as_record: bool = True
    ) -> bool:
        """True when the generated model of ``did`` validates ``data`` (and the key
        type accepts ``rkey``, for records). ``as_record=False`` validates a record
        def's data where an object def's data lives, nested in another value (no
        ``$type`` needed): the data was written for an object def."""
        cls = self.cls(did)
        if cls is None:
            return False
        key = self.key_type(did)
        if rkey is not None and key is not None and not key_ok(key, rkey):
            return False
        try:
            if hasattr(cls, "from_wire") and not as_record:
                cls.model_validate(data, by_alias=True, by_name=False)
            elif hasattr(cls, "from_wire"):
                cls.from_wire(data)
            else:  # a def that is a plain type alias (string, integer, …)
                TypeAdapter(cls).validate_python(data, strict=True)
        except (ValidationError, ValueError, TypeError):
            return False
        return True


def key_ok(key_type: str, rkey: str) -> bool:
    """Whether ``rkey`` is valid for a record key type (``tid``, ``nsid``, ``any``,
    ``literal:<value>``; Lexicon spec § "Record Key Type")."""
    if key_type == "tid":
        return is_tid(rkey)
    if key_type == "nsid":
        return is_nsid(rkey)
    if key_type.startswith("literal:"):
        return rkey == key_type.removeprefix("literal:")
    return is_record_key(rkey)


def _keys(key_type: str | None) -> st.SearchStrategy[str | None]:
    if key_type is None:
        return st.none()
    if key_type == "tid":
        return _TID
    if key_type == "nsid":
        return _NSID
    if key_type.startswith("literal:"):
        return st.just(key_type.removeprefix("literal:"))
    return st.one_of(_RKEY, _TID, st.just("self"))


def compile_side(
    sources: Sequence[Path],
    root: Path,
    label: str = "side",
    externals: Sequence[str] = (),
) -> Side:
    """Build ``sources`` (with ``externals``, ``DIR=PACKAGE`` entries as in
    ``build``) into a fresh package under ``root`` and make it importable. Raises
    ``AssertionError`` with the diagnostics when the build fails."""
    package = f"oracle_{label}_{next(_COUNTER)}"
    reporter = Reporter()
    options = BuildOptions(sources, package, externals, format=False, jobs=1)
    result = build(options, reporter)
    if result.files is None or result.model is None:
        raise AssertionError("oracle build failed:\n" + render(reporter.errors, "text"))
    out = root / package
    apply_plan(plan_changes(out / package, result.files))
    sys.path.insert(0, str(out))
    importlib.invalidate_caches()
    return Side(result.model, package)


_SETTINGS = settings(
    database=None,
    deadline=None,
    phases=(Phase.generate, Phase.shrink),
    suppress_health_check=list(HealthCheck),
)


@dataclass
class Oracle:
    """Validate data across two compiled sides. ``records`` counts the records
    drawn so far (for reporting)."""

    previous: Side
    current: Side
    unknown_names: tuple[str, ...] = ()
    records: int = 0

    def _sides(self, direction: str) -> tuple[Side, Side]:
        """(writer, reader) for ``BACKWARD`` or ``FORWARD``."""
        if direction == "BACKWARD":
            return self.previous, self.current
        return self.current, self.previous

    def _strategy(self, writer: Side, did: DefId) -> st.SearchStrategy[Any]:
        return st.tuples(
            wire_data(writer.model, did, edges=True, unknown_names=self.unknown_names),
            _keys(writer.key_type(did)),
        )

    def _breaks(self, writer: Side, reader: Side, did: DefId) -> Any:
        as_record = writer.key_type(did) is not None

        def check(example: tuple[Any, str | None]) -> bool:
            self.records += 1
            data, rkey = example
            return not reader.accepts(did, data, rkey, as_record)

        return check

    def counterexample(
        self, did: DefId, direction: str, max_examples: int = 300
    ) -> tuple[Any, str | None] | None:
        """A minimal (data, rkey) written under one side that the other side rejects
        in ``direction`` (``BACKWARD``/``FORWARD``), or ``None`` if none was found in
        ``max_examples`` draws. ``did`` must exist on the writing side."""
        writer, reader = self._sides(direction)
        if writer.model.resolve(did) is None:
            return None
        if reader.model.resolve(did) is None:
            # The def is gone on the reading side: any record written is a witness.
            example = find(
                self._strategy(writer, did), lambda _: True, settings=_SETTINGS
            )
            self.records += 1
            return example  # type: ignore[no-any-return]
        try:
            return find(  # type: ignore[no-any-return]
                self._strategy(writer, did),
                self._breaks(writer, reader, did),
                settings=settings(_SETTINGS, max_examples=max_examples),
            )
        except (NoSuchExample, Unsatisfiable):
            # Unsatisfiable: the writing side admits (almost) no values here.
            return None


def directions(names: Sequence[str]) -> list[str]:
    """``["BACKWARD", "FORWARD"]`` filtered to ``names`` (stable order)."""
    return [d for d in ("BACKWARD", "FORWARD") if d in names]


# -- mutations of real Lexicons -------------------------------------------------------

_FORMATS = ("did", "handle", "datetime", "uri", "at-uri", "language")


@dataclass(frozen=True)
class Mutation:
    """One edit to a Lexicon document: a ``description`` and the ``def`` it edits."""

    description: str
    def_name: str
    doc: dict[str, Any]


def object_defs(doc: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(def name, object JSON) for every record and object def of a Lexicon
    document, by name."""
    out = []
    for name, d in sorted(doc.get("defs", {}).items()):
        if d.get("type") == "record" and isinstance(d.get("record"), dict):
            out.append((name, d["record"]))
        elif d.get("type") == "object":
            out.append((name, d))
    return [(n, o) for n, o in out if isinstance(o.get("properties"), dict)]


def mutate(doc: dict[str, Any], rng: Any) -> Mutation | None:
    """One random realistic edit of ``doc`` (a copy; ``rng`` is a
    :class:`random.Random`): a property deleted, added, made (non-)required or
    (non-)nullable, retyped; a format, bound, enum, knownValues or default changed; a
    union opened/closed or a member removed/added; a ref retargeted; a blob's
    ``accept``/``maxSize`` changed; a record key changed. ``None`` when nothing
    applies."""
    doc = json.loads(json.dumps(doc))
    objects = object_defs(doc)
    if not objects:
        return None
    name, obj = rng.choice(objects)
    props: dict[str, Any] = obj["properties"]
    required: list[str] = obj.setdefault("required", [])
    nullable: list[str] = obj.setdefault("nullable", [])
    others = [f"#{n}" for n, _ in objects if n != name and n != "main"]
    ops: list[tuple[str, Any]] = []
    for p, t in sorted(props.items()):
        kind = t.get("type")
        ops += [
            (f"delete property {p!r}", lambda p=p: props.pop(p)),
            (
                f"toggle required {p!r}",
                lambda p=p: required.remove(p) if p in required else required.append(p),
            ),
            (
                f"toggle nullable {p!r}",
                lambda p=p: nullable.remove(p) if p in nullable else nullable.append(p),
            ),
            (
                f"retype {p!r}",
                lambda p=p, k=kind: props.__setitem__(
                    p, {"type": "integer" if k == "string" else "string"}
                ),
            ),
        ]
        if kind == "string" and not ({"enum", "const"} & t.keys()):
            fmt = t.get("format")
            if fmt is None:
                ops.append(
                    (
                        f"add format to {p!r}",
                        lambda t=t: t.__setitem__("format", rng.choice(_FORMATS)),
                    )
                )
            else:
                ops.append((f"remove format of {p!r}", lambda t=t: t.pop("format")))
            for bound in ("maxLength", "maxGraphemes"):
                if bound in t:
                    ops.append(
                        (
                            f"halve {bound} of {p!r}",
                            lambda t=t, b=bound: t.__setitem__(b, max(1, t[b] // 2)),
                        )
                    )
                    ops.append(
                        (
                            f"double {bound} of {p!r}",
                            lambda t=t, b=bound: t.__setitem__(b, t[b] * 2),
                        )
                    )
            if fmt is None:
                ops.append(
                    (
                        f"add maxLength 8 to {p!r}",
                        lambda t=t: t.__setitem__("maxLength", 8),
                    )
                )
            ops.append(
                (
                    f"add a knownValue to {p!r}",
                    lambda t=t: t.__setitem__(
                        "knownValues", [*t.get("knownValues", []), "zz-new"]
                    ),
                )
            )
        if kind == "integer":
            ops.append(
                (
                    f"raise minimum of {p!r}",
                    lambda t=t: t.__setitem__("minimum", t.get("minimum", 0) + 1),
                )
            )
            ops.append(
                (
                    f"lower maximum of {p!r}",
                    lambda t=t: t.__setitem__("maximum", t.get("maximum", 100) - 1),
                )
            )
            ops.append(
                (f"change default of {p!r}", lambda t=t: t.__setitem__("default", 7))
            )
        if kind == "array" and "maxLength" in t:
            ops.append(
                (
                    f"halve maxLength of {p!r}",
                    lambda t=t: t.__setitem__("maxLength", max(1, t["maxLength"] // 2)),
                )
            )
        if kind == "union":
            ops.append(
                (
                    f"toggle closed of union {p!r}",
                    lambda t=t: t.__setitem__("closed", not t.get("closed", False)),
                )
            )
            if len(t.get("refs", [])) > 1:
                ops.append(
                    (f"remove a member of union {p!r}", lambda t=t: t["refs"].pop())
                )
            extra = [o for o in others if o not in t.get("refs", [])]
            if extra:
                ops.append(
                    (
                        f"add member {extra[0]} to union {p!r}",
                        lambda t=t, e=extra[0]: t["refs"].append(e),
                    )
                )
        if kind == "ref" and others:
            target = rng.choice(others)
            if target != t.get("ref"):
                ops.append(
                    (
                        f"retarget ref {p!r} to {target}",
                        lambda t=t, g=target: t.__setitem__("ref", g),
                    )
                )
        if kind == "blob":
            ops.append(
                (
                    f"narrow accept of {p!r}",
                    lambda t=t: t.__setitem__("accept", ["image/png"]),
                )
            )
            ops.append(
                (
                    f"widen accept of {p!r}",
                    lambda t=t: t.__setitem__(
                        "accept", [*t.get("accept", ["image/png"]), "video/mp4"]
                    ),
                )
            )
            if "maxSize" in t:
                ops.append(
                    (
                        f"halve maxSize of {p!r}",
                        lambda t=t: t.__setitem__("maxSize", t["maxSize"] // 2),
                    )
                )
        ops.append(
            (f"redescribe {p!r}", lambda t=t: t.__setitem__("description", "Edited."))
        )

    def add(required_too: bool) -> None:
        props["zzAdded"] = {"type": "string"}
        if required_too:
            required.append("zzAdded")

    ops += [
        ("add optional property 'zzAdded'", lambda: add(False)),
        ("add required property 'zzAdded'", lambda: add(True)),
    ]
    if name == "main" and doc["defs"]["main"].get("type") == "record":
        main = doc["defs"]["main"]
        for key in ("tid", "any", "nsid", "literal:self"):
            if key != main.get("key"):
                ops.append(
                    (
                        f"change record key to {key!r}",
                        lambda k=key: main.__setitem__("key", k),
                    )
                )
    label, apply = rng.choice(ops)
    apply()
    obj["required"] = [r for r in required if r in props]
    obj["nullable"] = [n for n in nullable if n in props]
    return Mutation(f"{doc['id']}#{name}: {label}", name, doc)


# -- running the oracle on pairs ------------------------------------------------------


@dataclass
class Report:
    """What an oracle run did: ``pairs`` compared, ``records`` validated,
    directions ``witnessed`` (a breaking finding with its counterexample) and
    ``held`` (a compatible direction with no counterexample), ``skipped`` mutations
    (the edit made an invalid Lexicon), and ``failures`` (the checker was wrong)."""

    pairs: int = 0
    records: int = 0
    witnessed: int = 0
    held: int = 0
    skipped: int = 0
    failures: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"{self.pairs} pairs, {self.records} records validated, "
            f"{self.witnessed} breaking directions witnessed, {self.held} compatible "
            f"directions held, {self.skipped} invalid mutations skipped, "
            f"{len(self.failures)} failures"
        )


def _refs(t: Any) -> list[DefId]:
    if isinstance(t, RefType):
        return [t.target]
    if isinstance(t, UnionType):
        return list(t.refs)
    if isinstance(t, ArrayType):
        return _refs(t.items)
    if isinstance(t, ObjectType):
        return [r for f in t.fields for r in _refs(f.type)]
    if isinstance(t, RecordDef):
        return _refs(t.object)
    return []


def deleted_properties(old: dict[str, Any], new: dict[str, Any]) -> tuple[str, ...]:
    """Names of properties of record/object defs in Lexicon document ``old`` that
    the same def in ``new`` no longer declares (sorted, unique)."""
    after = dict(object_defs(new))
    return tuple(
        sorted(
            {
                p
                for name, obj in object_defs(old)
                for p in obj["properties"]
                if p not in after.get(name, {}).get("properties", {})
            }
        )
    )


def reach(model: LinkedModel, did: DefId) -> set[DefId]:
    """``did`` and every def its data can contain (refs and union members,
    transitively)."""
    seen: set[DefId] = set()
    todo = [did]
    while todo:
        d = todo.pop()
        if d in seen:
            continue
        seen.add(d)
        found = model.resolve(d)
        if found is not None:
            todo += _refs(found.body)
    return seen


def finding_def(f: Any) -> DefId | None:
    """The def a finding is about, from its JSON pointer (``/defs/<name>/…``)."""
    for span in (f.current, f.previous):
        parts = span.pointer.split("/")
        if len(parts) > 2 and parts[1] == "defs" and f.subject:
            return DefId(f.subject, parts[2].replace("~1", "/").replace("~0", "~"))
    return None


def check_pair(
    previous: Side,
    corpus: Path,
    original: dict[str, Any],
    mutation: Mutation,
    root: Path,
    report: Report,
    *,
    witness_examples: int = 300,
    hold_examples: int = 60,
) -> None:
    """Build the mutated document alone, its refs resolved into ``previous`` (the
    compiled ``corpus``), compare the two sides and let the oracle judge every
    verdict about the edited document; failures go to ``report``."""

    path = root / f"mutant_{next(_COUNTER)}" / f"{mutation.doc['id']}.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(mutation.doc), encoding="utf-8")
    try:
        current = compile_side([path], root, "curr", [f"{corpus}={previous.package}"])
    except AssertionError:
        report.skipped += 1
        return
    gone = deleted_properties(original, mutation.doc)
    nsid = mutation.doc["id"]
    judge(
        previous,
        current,
        {DefId(nsid, n) for n, _ in object_defs(mutation.doc)},
        {DefId(nsid, mutation.def_name), DefId(nsid, "main")},
        gone,
        report,
        mutation.description,
        only=nsid,
        witness_examples=witness_examples,
        hold_examples=hold_examples,
    )


def judge(
    previous: Side,
    current: Side,
    data_defs: set[DefId],
    checked: set[DefId],
    gone: tuple[str, ...],
    report: Report,
    label: str,
    *,
    only: str | None = None,
    witness_examples: int = 300,
    hold_examples: int = 60,
) -> None:
    """Compare two compiled sides (restricted to the Lexicon ``only`` when given)
    and judge the verdicts: every direction a
    finding on one of ``data_defs`` breaks needs a counterexample; every direction
    the findings leave compatible must hold for the ``checked`` defs (present on
    both sides). ``gone`` names deleted properties (drawn as undeclared ones)."""
    report.pairs += 1
    a, b = previous.model, current.model
    if only is not None:
        a = replace(a, schemas=tuple(s for s in a.schemas if s.nsid == only))
        b = replace(b, schemas=tuple(s for s in b.schemas if s.nsid == only))
    findings = compare(a, b)
    oracle = Oracle(previous, current, unknown_names=gone)
    by_def: dict[DefId, set[str]] = {}
    for f in findings:
        did = finding_def(f)
        if did is not None:
            by_def.setdefault(did, set()).update(f.breaks.names)
    # Every direction a finding breaks must have a counterexample.
    for did, names in sorted(by_def.items()):
        # Witness on the def itself, or on the data defs whose data contains it.
        hosts = [did] if did in data_defs else []
        hosts += [
            x
            for x in sorted(data_defs)
            if x != did and did in reach(previous.model, x) | reach(current.model, x)
        ]
        if not hosts:
            continue
        for direction in directions(sorted(names)):
            found = None
            for host in hosts:
                found = oracle.counterexample(host, direction, witness_examples)
                if found is not None:
                    break
            if found is None:
                report.failures.append(
                    f"{label}: {did} is reported to break "
                    f"{direction}, but no counterexample was found"
                )
            else:
                report.witnessed += 1
    # Every direction the checker calls compatible must hold.
    for did in sorted(checked & data_defs):
        if previous.model.resolve(did) is None or current.model.resolve(did) is None:
            continue
        claimed: set[str] = set()
        for other in reach(previous.model, did) | reach(current.model, did):
            claimed |= by_def.get(other, set())
        for direction in ("BACKWARD", "FORWARD"):
            if direction in claimed:
                continue
            bad = oracle.counterexample(did, direction, hold_examples)
            if bad is None:
                report.held += 1
            else:
                report.failures.append(
                    f"{label}: {did} is called {direction}-compatible "
                    f"(findings: {[f.rule for f in findings]}), but this record "
                    f"breaks it: {json.dumps(bad, default=str)[:400]}"
                )
    report.records += oracle.records
