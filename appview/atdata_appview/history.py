"""Schema history: every version of one schema name of one publisher, and the
compatibility verdict between each two consecutive versions, from atdata-gen's own
checker (the rules of ``atdata-gen check``, :mod:`atdata_gen.checks.compat`).

A verdict compares the older and the newer schema record of a pair as ``atdata-gen
check`` compares two sides: each record is compiled by the compiler's front end
(:func:`atdata_gen.frontend.schema_record.parse_schema_record`, both record forms:
atdata 0.7's flat form and atdata-lexicon 0.4's envelope), linked
(:func:`atdata_gen.ir.link.link_samples`) and the two models are compared in the
checker's default mode, FULL (:data:`atdata_gen.checks.compat.Direction.FULL`: old
data must read under the new version and new data under the old one, the Lexicon
spec's "Lexicon Evolution" rule). The verdict is the Lexicon's
``science.alt.dataset.defs#compatVerdict``:

- ``compatible``: no finding needs a larger semver bump than the one the version
  move declares (semver.org § 6-8; ``0.y.z`` as § 4, see
  :func:`atdata_gen.checks.compat.declared_bump`);
- ``breaking``: a finding needs a larger bump (or is an error of the checker, e.g.
  ``SCHEMA_VERSION_CONFLICT``: the same version published twice with different
  content);
- ``incomparable``: a side does not compile; the findings carry the compiler's rule
  IDs (``SCHEMA_*``, ``SRC_JSON_TOO_DEEP``, ``SRC_TOO_LARGE``, ...).

Records are hostile input. A record's JSON text is bounded to
:data:`MAX_RECORD_BYTES` (``SRC_TOO_LARGE``), its fields to :data:`MAX_FIELDS`
(``AV_COMPAT_TOO_MANY_FIELDS``) and its nesting to the compiler's
:data:`atdata_gen.sources.MAX_JSON_DEPTH` (checked on the text before any recursive
code runs: ``SRC_JSON_TOO_DEEP``); nothing in a record is executed or imported (the
front end only reads names and types). No input makes :func:`compare_versions` or
:func:`recompute_history` raise: an unexpected failure inside the compiler becomes
an ``incomparable`` verdict with the finding ``AV_COMPAT_INTERNAL``.

Versions are ordered by semver precedence (semver.org 2.0.0 § 11: major, minor,
patch numerically, a pre-release before its release, pre-release identifiers
compared numerically or in ASCII order; build metadata is ignored), then by version
text and AT-URI so the order is total. Verdicts are cached in-process by the pair of
record CIDs (:data:`CACHE_SIZE` entries, LRU), and rows whose AT-URIs and CIDs did
not change are left as they are, so :func:`recompute_history` only compiles the
pairs that are new.
"""

from __future__ import annotations

import itertools
import json
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import asyncpg
from atdata_gen.checks.compat import (
    Bump,
    Direction,
    compare,
    declared_bump,
    needed_bump,
)
from atdata_gen.diagnostics import Diagnostic, Reporter, Severity, Span
from atdata_gen.frontend.schema_record import parse_schema_record
from atdata_gen.ir.link import LinkedModel, link, link_samples
from atdata_gen.sources import MAX_JSON_DEPTH, load_text

__all__ = [
    "CACHE_SIZE",
    "HISTORY_RULES",
    "MAX_FIELDS",
    "MAX_FINDINGS",
    "MAX_RECORD_BYTES",
    "MAX_VERSIONS",
    "Finding",
    "Verdict",
    "clear_cache",
    "compare_texts",
    "compare_versions",
    "field_count",
    "recompute_history",
    "schema_history",
    "semver_key",
]

MODE: Final = Direction.FULL
"""The checker's mode: ``atdata-gen check``'s default (``[tool.atdata-gen.check]
mode = "full"``)."""

MAX_RECORD_BYTES: Final = 256 * 1024
"""Largest schema record compared, in bytes of its JSON text (UTF-8). A larger one
is ``incomparable`` (``SRC_TOO_LARGE``)."""

MAX_FIELDS: Final = 1000
"""Most fields (properties) of a schema record compared: compiling and comparing
take about 0.1 ms per field, and a verdict is computed inside the indexer's batch.
A record with more is ``incomparable`` (``AV_COMPAT_TOO_MANY_FIELDS``)."""

MAX_FINDINGS: Final = 200
"""At most this many findings per verdict (the Lexicon's ``maxLength``); when there
are more, the most severe are kept and the last one is ``AV_COMPAT_TRUNCATED``."""

MAX_VERSIONS: Final = 1000
"""At most this many versions of one name get verdicts (the newest, in semver
order); older ones keep none."""

CACHE_SIZE: Final = 4096
"""Verdicts kept in-process, keyed by (older CID, newer CID)."""

_RULE_MAX, _POINTER_MAX, _MESSAGE_MAX, _VERSION_MAX = 100, 1000, 2000, 100

HISTORY_RULES: Final = {
    "AV_COMPAT_INTERNAL": "The compiler failed unexpectedly on a schema record; the "
    "pair is incomparable.",
    "AV_COMPAT_TRUNCATED": "A verdict had more findings than the Lexicon allows; the "
    "most severe are kept.",
    "AV_COMPAT_TOO_MANY_FIELDS": "A schema record has more fields than the AppView "
    "compiles (MAX_FIELDS); the pair is incomparable.",
}
"""Rule IDs this module adds to the compiler's (ID → summary)."""

_OLD, _NEW = "older", "newer"
"""The document paths the two sides are compiled under (never an AT-URI, so that a
verdict depends only on the two records, and can be cached by their CIDs)."""

BUMPS: Final = {b: b.name.lower() for b in Bump}


@dataclass(frozen=True, order=True)
class Finding:
    """One finding (``science.alt.dataset.defs#compatFinding``): the ``rule`` ID (an
    atdata-gen rule, or ``AV_*``), ``severity`` (``error`` | ``warning`` |
    ``info``), ``pointer`` (JSON pointer, RFC 6901, into the newer record; ``""``
    for the record itself or when the finding is about the older one) and
    ``message``."""

    pointer: str
    rule: str
    message: str
    severity: str = "error"

    def to_wire(self) -> dict[str, str]:
        """The Lexicon object (``rule``, ``severity``, ``pointer``, ``message``)."""
        return {
            "rule": self.rule,
            "severity": self.severity,
            "pointer": self.pointer,
            "message": self.message,
        }

    @classmethod
    def from_wire(cls, data: Mapping[str, Any]) -> Finding:
        """The inverse of :meth:`to_wire` (as stored in ``findings``)."""
        return cls(
            str(data.get("pointer") or ""),
            str(data.get("rule") or ""),
            str(data.get("message") or ""),
            str(data.get("severity") or "error"),
        )


@dataclass(frozen=True)
class Verdict:
    """The verdict between two versions (``science.alt.dataset.defs#compatVerdict``
    without the versions and AT-URIs): ``verdict`` (``compatible`` | ``breaking`` |
    ``incomparable``), ``declared_bump`` and ``needed_bump`` (``none`` | ``patch``
    | ``minor`` | ``major``; ``None`` when unknown: a version that is not semver,
    or a side that does not compile), ``findings`` sorted by (pointer, rule,
    message), at most :data:`MAX_FINDINGS`."""

    verdict: str
    declared_bump: str | None
    needed_bump: str | None
    findings: tuple[Finding, ...] = field(default=())

    def to_wire(
        self, *, from_version: str, to_version: str, from_uri: str, to_uri: str
    ) -> dict[str, Any]:
        """The Lexicon object ``compatVerdict`` (camelCase keys; absent bumps
        left out)."""
        out: dict[str, Any] = {
            "fromVersion": from_version,
            "toVersion": to_version,
            "fromUri": from_uri,
            "toUri": to_uri,
            "verdict": self.verdict,
            "findings": [f.to_wire() for f in self.findings],
        }
        if self.declared_bump is not None:
            out["declaredBump"] = self.declared_bump
        if self.needed_bump is not None:
            out["neededBump"] = self.needed_bump
        return out

    def findings_json(self) -> str:
        """The findings as the JSON text stored in ``appview_schema_compat``."""
        return json.dumps([f.to_wire() for f in self.findings], ensure_ascii=False)


# -- comparing two records -------------------------------------------------------------


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _finding(pointer: str, rule: str, message: str, severity: str) -> Finding:
    return Finding(
        _clip(pointer, _POINTER_MAX),
        _clip(rule, _RULE_MAX),
        _clip(message, _MESSAGE_MAX),
        severity,
    )


def _bounded(findings: Iterable[Finding]) -> tuple[Finding, ...]:
    """At most :data:`MAX_FINDINGS`, the most severe kept, sorted."""
    every = sorted(set(findings))
    if len(every) <= MAX_FINDINGS:
        return tuple(every)
    rank = {"error": 0, "warning": 1, "info": 2}
    kept = sorted(every, key=lambda f: (rank.get(f.severity, 3), f))[: MAX_FINDINGS - 1]
    more = _finding(
        "",
        "AV_COMPAT_TRUNCATED",
        f"{len(every) - len(kept)} more findings are not shown",
        "info",
    )
    return (*sorted(kept), more)


def _compile(text: str | bytes, where: str) -> LinkedModel | list[Diagnostic]:
    """The linked model of one schema record's JSON text, or the compiler's errors
    (bounded: :data:`MAX_RECORD_BYTES`, :data:`MAX_JSON_DEPTH`)."""
    data = text.encode() if isinstance(text, str) else text
    reporter = Reporter()
    if len(data) > MAX_RECORD_BYTES:
        return [
            Diagnostic(
                Span(where),
                "SRC_TOO_LARGE",
                Severity.ERROR,
                f"the record is larger than {MAX_RECORD_BYTES} bytes "
                f"({len(data)} bytes)",
            )
        ]
    doc = load_text(where, data, reporter, max_depth=MAX_JSON_DEPTH)
    if doc is None:
        return list(reporter.errors)
    fields = field_count(doc.value)
    if fields > MAX_FIELDS:
        return [
            Diagnostic(
                Span(where),
                "AV_COMPAT_TOO_MANY_FIELDS",
                Severity.ERROR,
                f"the record has {fields} fields; the AppView compares records of "
                f"at most {MAX_FIELDS}",
            )
        ]
    schema = parse_schema_record(doc, reporter)
    if schema is None or reporter.has_errors:
        return list(reporter.errors)
    model = link_samples(link([], [], reporter), [schema], reporter)
    if reporter.has_errors:
        return list(reporter.errors)
    return model


def field_count(record: Any) -> int:
    """How many fields a schema record declares, in any form (the properties of
    its JSON Schema body, flat or in the envelope's ``content``, or its
    ``fields`` list); 0 when it has none or is not a record."""
    if not isinstance(record, dict):
        return 0
    body = record.get("schema")
    if isinstance(body, dict):
        for inner in ("content", "schemaBody"):
            if isinstance(body.get(inner), dict):
                body = body[inner]
                break
        props = body.get("properties")
        return len(props) if isinstance(props, dict) else 0
    fields = record.get("fields")
    return len(fields) if isinstance(fields, list) else 0


def _version(text: str | bytes) -> str | None:
    """The ``version`` of a record's JSON text, when it is a short string (read
    only when the record does not compile, for the declared bump)."""
    try:
        value = json.loads(text) if len(text) <= MAX_RECORD_BYTES else None
    except (ValueError, RecursionError):
        return None
    if isinstance(value, dict) and isinstance(value.get("version"), str):
        version: str = value["version"]
        return version if len(version) <= _VERSION_MAX else None
    return None


def _declared(old: str | None, new: str | None) -> str | None:
    if old is None or new is None or semver_key(old) is None or semver_key(new) is None:
        return None
    return BUMPS[declared_bump(old, new)]


def compare_texts(old_text: str | bytes, new_text: str | bytes) -> Verdict:
    """:func:`compare_versions` on the two records' JSON texts (as read from
    PostgreSQL, ``record::text``). Never raises."""
    try:
        return _compare_texts(old_text, new_text)
    except Exception as exc:  # noqa: BLE001 - never take the indexer down
        return Verdict(
            "incomparable",
            None,
            None,
            (
                _finding(
                    "",
                    "AV_COMPAT_INTERNAL",
                    f"the compiler failed on this pair: {type(exc).__name__}",
                    "error",
                ),
            ),
        )


_UNKNOWN: Final = Diagnostic(
    Span(""), "SCHEMA_BODY", Severity.ERROR, "the record does not compile"
)


def _compare_texts(old_text: str | bytes, new_text: str | bytes) -> Verdict:
    old = _compile(old_text, _OLD)
    new = _compile(new_text, _NEW)
    if isinstance(old, list) or isinstance(new, list):
        found: list[Finding] = []
        for side, result in ((_OLD, old), (_NEW, new)):
            if not isinstance(result, list):
                continue
            for d in result or [_UNKNOWN]:
                if side == _NEW:
                    found.append(
                        _finding(
                            d.span.pointer,
                            d.rule,
                            f"the newer version does not compile: {d.message}",
                            "error",
                        )
                    )
                else:
                    at = f" (at {d.span.pointer})" if d.span.pointer else ""
                    found.append(
                        _finding(
                            "",
                            d.rule,
                            f"the older version does not compile{at}: {d.message}",
                            "error",
                        )
                    )
        old_v = old.samples[0].version if not isinstance(old, list) else None
        new_v = new.samples[0].version if not isinstance(new, list) else None
        return Verdict(
            "incomparable",
            _declared(old_v or _version(old_text), new_v or _version(new_text)),
            None,
            _bounded(found),
        )
    changes = compare(old, new, MODE)
    need = needed_bump(changes, MODE)
    declared = declared_bump(old.samples[0].version, new.samples[0].version)
    findings = [
        _finding(
            f.current.pointer if f.current.path == _NEW else "",
            f.rule,
            f.message,
            f.severity(MODE).label,
        )
        for f in changes
    ]
    errors = any(f.severity == "error" for f in findings)
    verdict = "breaking" if need > declared or errors else "compatible"
    return Verdict(verdict, BUMPS[declared], BUMPS[need], _bounded(findings))


def compare_versions(
    old_record: Mapping[str, Any],
    new_record: Mapping[str, Any],
    *,
    old_uri: str,
    new_uri: str,
) -> Verdict:
    """The verdict from ``old_record`` to ``new_record`` (two
    ``science.alt.dataset.schema`` records in the JSON data model, either form).
    ``old_uri``/``new_uri`` (AT-URIs) name the records; the verdict does not
    depend on them (it is cached by CID). Never raises: a side that is not a JSON
    object, is too large or too deep, or does not compile gives
    ``incomparable``."""
    del old_uri, new_uri  # the verdict depends on the records only
    texts: list[str | bytes] = []
    for side, record in ((_OLD, old_record), (_NEW, new_record)):
        try:
            texts.append(json.dumps(record, ensure_ascii=False))
        except (TypeError, ValueError, RecursionError) as exc:
            return Verdict(
                "incomparable",
                None,
                None,
                (
                    _finding(
                        "",
                        "SRC_JSON_TOO_DEEP"
                        if isinstance(exc, RecursionError)
                        else "SCHEMA_BODY",
                        f"the {side} version is not a JSON record: {type(exc).__name__}",
                        "error",
                    ),
                ),
            )
    return compare_texts(texts[0], texts[1])


# -- the verdict cache -----------------------------------------------------------------

_cache: OrderedDict[tuple[str, str], Verdict] = OrderedDict()


def _cached(old_cid: str, new_cid: str) -> Verdict | None:
    found = _cache.get((old_cid, new_cid))
    if found is not None:
        _cache.move_to_end((old_cid, new_cid))
    return found


def _remember(old_cid: str, new_cid: str, verdict: Verdict) -> None:
    _cache[(old_cid, new_cid)] = verdict
    _cache.move_to_end((old_cid, new_cid))
    while len(_cache) > CACHE_SIZE:
        _cache.popitem(last=False)


def clear_cache() -> None:
    """Forget every cached verdict (tests, benchmarks)."""
    _cache.clear()


# -- ordering --------------------------------------------------------------------------


def semver_key(version: str) -> tuple[Any, ...] | None:
    """The semver 2.0.0 § 11 precedence key of ``version`` (major, minor, patch,
    pre-release identifiers; build metadata ignored), or ``None`` when it is not a
    semantic version. Keys of valid versions compare as § 11 says."""
    import semantic_version

    if len(version) > _VERSION_MAX:
        return None
    try:
        key: tuple[Any, ...] = semantic_version.Version(version).precedence_key[:4]
    except ValueError:
        return None
    return key


@dataclass(frozen=True)
class _Version:
    rkey: str
    uri: str
    cid: str
    version: str
    fallback: tuple[int, int, int]

    def order(self) -> tuple[Any, ...]:
        key = semver_key(self.version)
        # a version that is not semver (never indexed by records.py, but the table
        # is not ours) sorts by its numeric columns, before any valid one of them
        return (
            (*self.fallback, 0, (), self.version, self.uri)
            if key is None
            else (*key[:3], 1, key[3], self.version, self.uri)
        )


def _version_of(row: Any) -> _Version:
    return _Version(
        row["rkey"],
        row["uri"],
        row["cid"],
        row["version"],
        (row["major"], row["minor"], row["patch"]),
    )


def _ordered(rows: Sequence[Any]) -> list[_Version]:
    versions = [_version_of(r) for r in rows]
    versions.sort(key=_Version.order)
    return versions[-MAX_VERSIONS:]


# -- the table -------------------------------------------------------------------------

_VERSIONS_SQL: Final = (
    "SELECT rkey, uri, cid, version, major, minor, patch FROM appview_schemas "
    "WHERE did = $1 AND name = $2"
)
_EXISTING_SQL: Final = (
    "SELECT from_version, to_version, from_uri, to_uri, from_cid, to_cid "
    "FROM appview_schema_compat WHERE did = $1 AND name = $2"
)
_RECORDS_SQL: Final = (
    "SELECT rkey, record::text AS record FROM appview_schemas "
    "WHERE did = $1 AND rkey = ANY($2::text[])"
)
_DELETE_SQL: Final = (
    "DELETE FROM appview_schema_compat WHERE did = $1 AND name = $2 "
    "AND (from_version, to_version) NOT IN "
    "(SELECT * FROM unnest($3::text[], $4::text[]))"
)
_UPSERT_SQL: Final = """
INSERT INTO appview_schema_compat (
    did, name, from_version, to_version, from_uri, to_uri, from_cid, to_cid,
    verdict, declared_bump, needed_bump, findings, computed_at)
SELECT $1, $2, fv, tv, fu, tu, fc, tc, v, db, nb, f::jsonb, now()
FROM unnest($3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::text[],
            $9::text[], $10::text[], $11::text[], $12::text[])
    AS t(fv, tv, fu, tu, fc, tc, v, db, nb, f)
ON CONFLICT (did, name, from_version, to_version) DO UPDATE SET
    from_uri = EXCLUDED.from_uri, to_uri = EXCLUDED.to_uri,
    from_cid = EXCLUDED.from_cid, to_cid = EXCLUDED.to_cid,
    verdict = EXCLUDED.verdict, declared_bump = EXCLUDED.declared_bump,
    needed_bump = EXCLUDED.needed_bump, findings = EXCLUDED.findings,
    computed_at = EXCLUDED.computed_at
"""


async def recompute_history(conn: asyncpg.Connection, did: str, name: str) -> None:
    """Rewrite the ``appview_schema_compat`` rows of publisher ``did`` (a DID) and
    schema ``name``: one row per two consecutive versions in ``appview_schemas``
    (semver order, see the module docstring; at most the newest
    :data:`MAX_VERSIONS`), each with its verdict and findings; rows of pairs that
    no longer exist are deleted; rows whose AT-URIs and CIDs did not change are kept
    without recomputing. Runs in the caller's transaction (the indexer's batch),
    takes no lock of its own beyond the rows it writes. Never raises for record
    content (a record that does not compile gives ``incomparable``); database
    errors (``asyncpg.PostgresError``) propagate."""
    versions = _ordered(await conn.fetch(_VERSIONS_SQL, did, name))
    pairs: list[tuple[_Version, _Version]] = []
    keys: set[tuple[str, str]] = set()
    for old, new in itertools.pairwise(versions):
        key = (old.version, new.version)
        if key not in keys:  # the same version twice under two rkeys: once
            keys.add(key)
            pairs.append((old, new))
    existing = {
        (r["from_version"], r["to_version"]): (
            r["from_uri"],
            r["to_uri"],
            r["from_cid"],
            r["to_cid"],
        )
        for r in await conn.fetch(_EXISTING_SQL, did, name)
    }
    if existing.keys() - keys:
        await conn.execute(
            _DELETE_SQL, did, name, [k[0] for k in keys], [k[1] for k in keys]
        )
    todo = [
        (old, new)
        for old, new in pairs
        if existing.get((old.version, new.version))
        != (old.uri, new.uri, old.cid, new.cid)
    ]
    if not todo:
        return
    verdicts: dict[tuple[str, str], Verdict] = {}
    missing: set[str] = set()
    for old, new in todo:
        hit = _cached(old.cid, new.cid)
        if hit is not None:
            verdicts[(old.cid, new.cid)] = hit
        else:
            missing.update((old.rkey, new.rkey))
    texts: dict[str, str] = {}
    if missing:
        texts = {
            r["rkey"]: r["record"]
            for r in await conn.fetch(_RECORDS_SQL, did, sorted(missing))
        }
    for old, new in todo:
        if (old.cid, new.cid) in verdicts:
            continue
        verdict = compare_texts(
            texts.get(old.rkey, "null"), texts.get(new.rkey, "null")
        )
        verdicts[(old.cid, new.cid)] = verdict
        _remember(old.cid, new.cid, verdict)
    cols: list[list[str | None]] = [[] for _ in range(10)]
    for old, new in todo:
        v = verdicts[(old.cid, new.cid)]
        for col, value in zip(
            cols,
            (
                old.version,
                new.version,
                old.uri,
                new.uri,
                old.cid,
                new.cid,
                v.verdict,
                v.declared_bump,
                v.needed_bump,
                v.findings_json(),
            ),
            strict=True,
        ):
            col.append(value)
    await conn.execute(_UPSERT_SQL, did, name, *cols)


_HISTORY_VERSIONS_SQL: Final = (
    "SELECT * FROM appview_schemas WHERE did = $1 AND name = $2"
)
_HISTORY_VERDICTS_SQL: Final = (
    "SELECT from_version, to_version, from_uri, to_uri, from_cid, to_cid, verdict, "
    "declared_bump, needed_bump, findings::text AS findings, computed_at "
    "FROM appview_schema_compat WHERE did = $1 AND name = $2"
)


async def schema_history(
    conn: asyncpg.Connection, did: str, name: str, limit: int = 100
) -> tuple[list[asyncpg.Record], list[dict[str, Any]]]:
    """For ``getSchemaHistory``: the newest ``limit`` versions of ``did``'s schema
    ``name`` (``appview_schemas`` rows, every column; oldest first, semver order)
    and the verdicts between each two consecutive of them, as Lexicon
    ``compatVerdict`` objects (camelCase, ``findings`` decoded), in the same
    order. Both lists are empty when nothing of that name is indexed. ``limit`` is
    clamped to 1..500 (the Lexicon's bounds)."""
    limit = max(1, min(500, limit))
    rows = list(await conn.fetch(_HISTORY_VERSIONS_SQL, did, name))
    rows.sort(key=lambda r: _version_of(r).order())
    rows = rows[-limit:]
    stored = {
        (r["from_uri"], r["to_uri"]): r
        for r in await conn.fetch(_HISTORY_VERDICTS_SQL, did, name)
    }
    verdicts: list[dict[str, Any]] = []
    for old, new in itertools.pairwise(rows):
        r = stored.get((old["uri"], new["uri"]))
        if r is None:
            continue
        verdicts.append(
            Verdict(
                r["verdict"],
                r["declared_bump"],
                r["needed_bump"],
                tuple(Finding.from_wire(f) for f in json.loads(r["findings"])),
            ).to_wire(
                from_version=r["from_version"],
                to_version=r["to_version"],
                from_uri=r["from_uri"],
                to_uri=r["to_uri"],
            )
        )
    return rows, verdicts
