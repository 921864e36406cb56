"""Schema history: verdicts between versions from atdata-gen's checker, on atdata
0.7's real schema records (flat form) and their atdata-lexicon 0.4 envelope form;
records that do not compile (hostile or just unsupported) are ``incomparable``,
never an exception; ``recompute_history`` over ``appview_schemas`` orders versions
by semver precedence whatever order they arrive in, and recomputes only what
changed."""

from __future__ import annotations

import asyncio
import copy
import json
from collections.abc import Awaitable, Callable
from typing import Any, Literal, TypeVar

import asyncpg
import pytest
from atdata_appview import history
from atdata_appview.history import (
    MAX_FINDINGS,
    compare_versions,
    recompute_history,
    schema_history,
    semver_key,
)
from atdata_appview.records import Rejection, normalize
from atdata_runtime.atmosphere.cid import record_cid
from atdata_runtime.atmosphere.records import schema_rkey
from atdata_runtime.lexicons.science.alt.dataset.defs import CompatVerdict
from atdata_runtime.samples.schema import convert_schema_record

from ..conftest import CORPUS

RECORDS = CORPUS / "atdata" / "records"
ALICE = "did:plc:alicealicealicealice2345"
BOB = "did:plc:bobbobbobbobbobbobbob2345"
SCHEMA = "science.alt.dataset.schema"
LENS = "science.alt.dataset.lens"
T = TypeVar("T")
Form = Literal["flat", "envelope"]


def corpus(name: str) -> dict[str, Any]:
    """A schema record atdata 0.7.0b1 wrote (flat form)."""
    value: dict[str, Any] = json.loads((RECORDS / f"{name}.schema.json").read_text())
    return value


def bumped(record: dict[str, Any], version: str, **changes: Any) -> dict[str, Any]:
    """``record`` at ``version``; ``add={name: prop}`` adds optional properties,
    ``drop=[name]`` removes properties (and their ``required`` entries), either
    form."""
    out = copy.deepcopy(record)
    out["version"] = version
    body = out["schema"]
    body = body.get("content", body)
    for name, prop in changes.get("add", {}).items():
        body["properties"][name] = prop
    for name in changes.get("drop", ()):
        del body["properties"][name]
        if name in body.get("required", []):
            body["required"].remove(name)
    return out


def run(make: Callable[[asyncpg.Connection], Awaitable[T]], dsn: str) -> T:
    async def go() -> T:
        conn = await asyncpg.connect(dsn)
        try:
            return await make(conn)
        finally:
            await conn.close()

    return asyncio.run(go())


async def put(
    conn: asyncpg.Connection,
    collection: str,
    did: str,
    record: dict[str, Any],
    rkey: str | None = None,
) -> str:
    """Index ``record`` as the indexer would (``records.normalize`` → its row,
    upserted); returns its AT-URI."""
    if rkey is None:
        rkey = (
            schema_rkey(record["name"], record["version"])
            if collection == SCHEMA
            else record["name"]
        )
    row = normalize(
        collection, did, rkey, record_cid(record), record, rev=None, seq=None
    )
    assert not isinstance(row, Rejection), row
    cols = row.columns()
    await conn.execute(
        f"INSERT INTO {row.table} ({', '.join(cols)}) "
        f"VALUES ({', '.join(f'${i + 1}' for i in range(len(cols)))}) "
        f"ON CONFLICT (did, rkey) DO UPDATE SET "
        + ", ".join(f"{c} = EXCLUDED.{c}" for c in cols if c not in ("did", "rkey")),
        *row.values(),
    )
    return row.uri


async def put_raw(
    conn: asyncpg.Connection, did: str, name: str, version: str, record: Any
) -> str:
    """A schema row written with SQL, whatever the record holds (a row
    ``records.normalize`` would refuse: the table is not the only writer's)."""
    rkey = schema_rkey(name, version)
    uri = f"at://{did}/{SCHEMA}/{rkey}"
    major, minor, patch = (int(p) for p in version.split("-")[0].split("."))
    await conn.execute(
        "INSERT INTO appview_schemas (did, rkey, uri, cid, record, name, version, "
        "major, minor, patch, prerelease, schema_type, form, body) "
        "VALUES ($1, $2, $3, $4, $5::jsonb, $6, $7, $8, $9, $10, '', 'jsonSchema', "
        "'flat', '{}'::jsonb)",
        did,
        rkey,
        uri,
        "bafyreib" + format(abs(hash(json.dumps(record))), "x").ljust(50, "a"),
        json.dumps(record),
        name,
        version,
        major,
        minor,
        patch,
    )
    return uri


def lexicon(verdict: history.Verdict, a: str = "1.0.0", b: str = "1.1.0") -> None:
    """The verdict validates as the Lexicon's compatVerdict."""
    CompatVerdict.from_wire(
        verdict.to_wire(
            from_version=a,
            to_version=b,
            from_uri=f"at://{ALICE}/{SCHEMA}/a",
            to_uri=f"at://{ALICE}/{SCHEMA}/b",
        )
    )


def rules(verdict: history.Verdict) -> list[tuple[str, str, str]]:
    return [(f.rule, f.severity, f.pointer) for f in verdict.findings]


URIS = {"old_uri": f"at://{ALICE}/{SCHEMA}/a", "new_uri": f"at://{ALICE}/{SCHEMA}/b"}


# -- compare_versions ------------------------------------------------------------------


@pytest.mark.parametrize("form", ["flat", "envelope"])
def test_added_optional_field_with_a_minor_bump_is_compatible(form: Form) -> None:
    v1 = convert_schema_record(corpus("OptionalSample"), form)
    v2 = bumped(v1, "1.1.0", add={"note": {"type": "string"}})
    verdict = compare_versions(v1, v2, **URIS)
    assert (verdict.verdict, verdict.declared_bump, verdict.needed_bump) == (
        "compatible",
        "minor",
        "minor",
    )
    base = "/schema/content" if form == "envelope" else "/schema"
    assert rules(verdict) == [
        ("FIELD_OPTIONAL_ADDED", "info", f"{base}/properties/note")
    ]
    lexicon(verdict)


def test_the_form_of_a_record_is_not_a_change() -> None:
    flat = corpus("ImageSample")
    envelope = bumped(convert_schema_record(flat, "envelope"), "1.0.1")
    verdict = compare_versions(flat, envelope, **URIS)
    assert verdict.verdict == "compatible"
    assert verdict.needed_bump == "none" and verdict.findings == ()


@pytest.mark.parametrize("form", ["flat", "envelope"])
def test_removed_field_declared_minor_is_breaking(form: Form) -> None:
    v1 = convert_schema_record(corpus("OptionalSample"), form)
    v2 = bumped(v1, "1.1.0", drop=["score"])
    verdict = compare_versions(v1, v2, **URIS)
    assert (verdict.verdict, verdict.declared_bump, verdict.needed_bump) == (
        "breaking",
        "minor",
        "major",
    )
    found = {(f.rule, f.severity) for f in verdict.findings}
    assert ("FIELD_DELETED", "error") in found
    assert ("SCHEMA_VERSION_BUMP_TOO_SMALL", "error") in found
    lexicon(verdict)


def test_removed_field_declared_major_is_compatible_and_says_so() -> None:
    v1 = corpus("ScalarSample")
    field = next(iter(v1["schema"]["properties"]))
    v2 = bumped(v1, "2.0.0", drop=[field])
    verdict = compare_versions(v1, v2, **URIS)
    assert (verdict.verdict, verdict.declared_bump, verdict.needed_bump) == (
        "compatible",
        "major",
        "major",
    )
    found = {(f.rule, f.severity) for f in verdict.findings}
    assert ("FIELD_DELETED", "info") in found  # allowed by the major version
    assert ("SCHEMA_MAJOR_CHANGE", "info") in found


def test_zero_major_minor_move_counts_as_major() -> None:
    v1 = bumped(corpus("ListSample"), "0.1.0")
    field = next(iter(v1["schema"]["properties"]))
    v2 = bumped(v1, "0.2.0", drop=[field])
    verdict = compare_versions(v1, v2, **URIS)
    assert (verdict.verdict, verdict.declared_bump) == ("compatible", "major")


def test_same_version_with_other_content_is_breaking() -> None:
    v1 = corpus("OptionalSample")
    v2 = bumped(v1, "1.0.0", add={"note": {"type": "string"}})
    verdict = compare_versions(v1, v2, **URIS)
    assert verdict.verdict == "breaking" and verdict.declared_bump == "none"
    assert "SCHEMA_VERSION_CONFLICT" in {f.rule for f in verdict.findings}


@pytest.mark.parametrize("form", ["flat", "envelope"])
def test_newer_body_that_does_not_compile_is_incomparable(form: Form) -> None:
    v1 = convert_schema_record(corpus("OptionalSample"), form)
    v2 = bumped(v1, "1.1.0", add={"nested": {"type": "object", "properties": {}}})
    verdict = compare_versions(v1, v2, **URIS)
    base = "/schema/content" if form == "envelope" else "/schema"
    assert verdict.verdict == "incomparable"
    assert verdict.declared_bump == "minor" and verdict.needed_bump is None
    assert rules(verdict) == [
        ("SCHEMA_UNSUPPORTED", "error", f"{base}/properties/nested")
    ]
    assert "newer version does not compile" in verdict.findings[0].message
    lexicon(verdict)


def test_older_body_that_does_not_compile_is_incomparable_with_its_pointer_in_the_message() -> (
    None
):
    v2 = corpus("OptionalSample")
    v1 = bumped(v2, "0.9.0")
    v1["schema"]["properties"]["score"] = {"type": "bogus"}
    verdict = compare_versions(v1, v2, **URIS)
    assert verdict.verdict == "incomparable"
    assert rules(verdict) == [("SCHEMA_FIELD", "error", "")]
    assert "older version does not compile" in verdict.findings[0].message
    assert "/schema/properties/score/type" in verdict.findings[0].message


def _deep(levels: int) -> dict[str, Any]:
    value: dict[str, Any] = {"type": "string"}
    for _ in range(levels):
        value = {"type": "array", "items": value}
    return value


@pytest.mark.parametrize(
    ("hostile", "rule"),
    [
        (
            lambda r: r["schema"]["properties"].update(deep=_deep(80)),
            "SRC_JSON_TOO_DEEP",
        ),
        (
            lambda r: r["schema"]["properties"].update(deep=_deep(5000)),
            "SRC_JSON_TOO_DEEP",
        ),
        (lambda r: r.update(description="x" * (2 * 1024 * 1024)), "SRC_TOO_LARGE"),
        (
            lambda r: r["schema"]["properties"].update(
                {f"f{i}": {"type": "string"} for i in range(history.MAX_FIELDS)}
            ),
            "AV_COMPAT_TOO_MANY_FIELDS",
        ),
        (lambda r: r.update(schema=["not", "an", "object"]), "SCHEMA_BODY"),
        (lambda r: r.update(name="bad name; import os"), "SCHEMA_NAME"),
        (lambda r: r.update(version="one"), "SCHEMA_VERSION"),
        (
            lambda r: r["schema"]["properties"].update(f={"type": "number", "x": 1.5}),
            "SRC_FLOAT",
        ),
        (
            lambda r: r["schema"]["properties"].update(
                x={"$ref": "file:///etc/passwd"}
            ),
            "SCHEMA_REF",
        ),
    ],
)
def test_hostile_newer_record_is_incomparable_never_an_exception(
    hostile: Callable[[dict[str, Any]], None], rule: str
) -> None:
    v1 = corpus("OptionalSample")
    v2 = bumped(v1, "1.1.0")
    hostile(v2)
    verdict = compare_versions(v1, v2, **URIS)
    assert verdict.verdict == "incomparable"
    assert rule in {f.rule for f in verdict.findings}, rules(verdict)
    lexicon(verdict)


def test_record_that_is_not_json_is_incomparable() -> None:
    v1 = corpus("OptionalSample")
    loop: dict[str, Any] = bumped(v1, "1.1.0")
    loop["metadata"] = {"self": loop}  # not a tree: cannot be a record
    verdict = compare_versions(v1, loop, **URIS)
    assert verdict.verdict == "incomparable" and len(verdict.findings) == 1


def test_findings_are_bounded_most_severe_kept() -> None:
    v1 = corpus("OptionalSample")
    v2 = bumped(
        v1,
        "1.1.0",
        add={f"f{i:03}": {"type": "string"} for i in range(300)},
        drop=["score"],
    )
    verdict = compare_versions(v1, v2, **URIS)
    assert len(verdict.findings) == MAX_FINDINGS
    assert verdict.findings[-1].rule == "AV_COMPAT_TRUNCATED"
    assert "103 more" in verdict.findings[-1].message  # 302 found, 199 kept
    kept = {f.rule for f in verdict.findings}
    assert {"FIELD_DELETED", "SCHEMA_VERSION_BUMP_TOO_SMALL"} <= kept
    assert list(verdict.findings[:-1]) == sorted(verdict.findings[:-1])
    lexicon(verdict)


def test_semver_key_is_semver_precedence() -> None:
    ordered = [
        "0.9.0",
        "1.0.0-alpha",
        "1.0.0-alpha.1",
        "1.0.0-alpha.beta",
        "1.0.0-beta",
        "1.0.0-beta.2",
        "1.0.0-beta.11",
        "1.0.0-rc.1",
        "1.0.0",
        "1.2.0",
        "1.10.0",
        "2.0.0",
    ]
    shuffled = ordered[5:] + ordered[:5]
    assert sorted(shuffled, key=lambda v: semver_key(v) or ()) == ordered
    assert semver_key("1.0.0+build.5") == semver_key("1.0.0")
    assert semver_key("1.0") is None and semver_key("x" * 500) is None


# -- recompute_history -----------------------------------------------------------------


async def _verdicts(conn: asyncpg.Connection, did: str, name: str) -> list[Any]:
    return list(
        await conn.fetch(
            "SELECT from_version, to_version, verdict, declared_bump, needed_bump, "
            "findings::text AS findings, from_cid, to_cid, computed_at "
            "FROM appview_schema_compat WHERE did = $1 AND name = $2 "
            "ORDER BY from_version, to_version",
            did,
            name,
        )
    )


def test_history_out_of_order_arrival_is_ordered_by_semver(appview_dsn: str) -> None:
    history.clear_cache()
    base = corpus("OptionalSample")
    v100 = bumped(base, "1.0.0")
    v110 = bumped(v100, "1.1.0", add={"note": {"type": "string"}})
    v120 = bumped(v110, "1.2.0", drop=["score"])  # breaking, declared minor
    v200 = bumped(v120, "2.0.0", drop=["caption"])  # allowed by the major
    rc = bumped(v100, "1.0.0-rc.1", drop=["mask"])
    envelope110 = convert_schema_record(v110, "envelope")

    async def go(conn: asyncpg.Connection) -> tuple[list[Any], Any]:
        for record in (v200, v110, rc, v100, v120):  # not in version order
            async with conn.transaction():
                await put(conn, SCHEMA, ALICE, record)
                await recompute_history(conn, ALICE, "OptionalSample")
        # another publisher's schema of the same name is another history
        async with conn.transaction():
            await put(conn, SCHEMA, BOB, envelope110)
            await recompute_history(conn, BOB, "OptionalSample")
        return await _verdicts(conn, ALICE, "OptionalSample"), await schema_history(
            conn, ALICE, "OptionalSample"
        )

    rows, (versions, verdicts) = run(go, appview_dsn)
    got = {
        (r["from_version"], r["to_version"]): (
            r["verdict"],
            r["declared_bump"],
            r["needed_bump"],
        )
        for r in rows
    }
    assert got == {
        ("1.0.0-rc.1", "1.0.0"): ("breaking", "none", "minor"),  # adds 'mask'
        ("1.0.0", "1.1.0"): ("compatible", "minor", "minor"),
        ("1.1.0", "1.2.0"): ("breaking", "minor", "major"),
        ("1.2.0", "2.0.0"): ("compatible", "major", "major"),
    }
    assert [v["version"] for v in versions] == [
        "1.0.0-rc.1",
        "1.0.0",
        "1.1.0",
        "1.2.0",
        "2.0.0",
    ]
    assert {v["did"] for v in versions} == {ALICE}
    assert [(v["fromVersion"], v["toVersion"]) for v in verdicts] == [
        ("1.0.0-rc.1", "1.0.0"),
        ("1.0.0", "1.1.0"),
        ("1.1.0", "1.2.0"),
        ("1.2.0", "2.0.0"),
    ]
    for v in verdicts:
        CompatVerdict.from_wire(v)
    assert verdicts[1]["findings"] == [
        {
            "rule": "FIELD_OPTIONAL_ADDED",
            "severity": "info",
            "pointer": "/schema/properties/note",
            "message": "An optional property 'note' was added to sample schema "
            "OptionalSample (1.0.0 → 1.1.0).",
        }
    ]
    assert verdicts[0]["fromUri"] == versions[0]["uri"]
    assert verdicts[3]["toUri"] == versions[4]["uri"]
    # limit: the newest versions, and only the verdicts between them
    versions2, verdicts2 = run(
        lambda c: schema_history(c, ALICE, "OptionalSample", 2), appview_dsn
    )
    assert [v["version"] for v in versions2] == ["1.2.0", "2.0.0"]
    assert [(v["fromVersion"], v["toVersion"]) for v in verdicts2] == [
        ("1.2.0", "2.0.0")
    ]


def test_history_recomputes_only_what_changed(appview_dsn: str) -> None:
    history.clear_cache()
    v1 = corpus("ScalarSample")
    v2 = bumped(v1, "1.1.0", add={"note": {"type": "string"}})
    v3 = bumped(v2, "1.2.0", add={"other": {"type": "integer"}})

    async def go(conn: asyncpg.Connection) -> tuple[list[Any], ...]:
        for r in (v1, v2, v3):
            await put(conn, SCHEMA, ALICE, r)
        await recompute_history(conn, ALICE, "ScalarSample")
        first = await _verdicts(conn, ALICE, "ScalarSample")
        await recompute_history(conn, ALICE, "ScalarSample")  # nothing changed
        same = await _verdicts(conn, ALICE, "ScalarSample")
        # 1.2.0 is republished with other content (a new CID): only its pair
        await put(conn, SCHEMA, ALICE, bumped(v3, "1.2.0", drop=["note"]))
        await recompute_history(conn, ALICE, "ScalarSample")
        changed = await _verdicts(conn, ALICE, "ScalarSample")
        # 1.1.0 is deleted: its two pairs become one
        await conn.execute(
            "DELETE FROM appview_schemas WHERE did = $1 AND version = '1.1.0'", ALICE
        )
        await recompute_history(conn, ALICE, "ScalarSample")
        deleted = await _verdicts(conn, ALICE, "ScalarSample")
        # every version gone: no history left
        await conn.execute("DELETE FROM appview_schemas WHERE did = $1", ALICE)
        await recompute_history(conn, ALICE, "ScalarSample")
        return (
            first,
            same,
            changed,
            deleted,
            await _verdicts(conn, ALICE, "ScalarSample"),
        )

    first, same, changed, deleted, gone = run(go, appview_dsn)
    assert [r["computed_at"] for r in same] == [r["computed_at"] for r in first]
    assert [(r["from_version"], r["to_version"]) for r in changed] == [
        ("1.0.0", "1.1.0"),
        ("1.1.0", "1.2.0"),
    ]
    assert changed[0]["computed_at"] == first[0]["computed_at"]
    assert changed[1]["computed_at"] > first[1]["computed_at"]
    assert changed[1]["to_cid"] != first[1]["to_cid"]
    assert (changed[1]["verdict"], changed[1]["needed_bump"]) == ("breaking", "major")
    assert [(r["from_version"], r["to_version"], r["verdict"]) for r in deleted] == [
        ("1.0.0", "1.2.0", "compatible")
    ]
    assert gone == []


def test_hostile_row_in_the_table_never_fails_recompute(appview_dsn: str) -> None:
    history.clear_cache()
    good = corpus("ListSample")
    hostile = {"name": "ListSample", "version": "1.1.0", "schema": _deep(300)}

    async def go(conn: asyncpg.Connection) -> list[Any]:
        await put(conn, SCHEMA, ALICE, good)
        await put_raw(conn, ALICE, "ListSample", "1.1.0", hostile)
        await put_raw(conn, ALICE, "ListSample", "1.2.0", ["not", "a", "record"])
        await recompute_history(conn, ALICE, "ListSample")
        return await _verdicts(conn, ALICE, "ListSample")

    rows = run(go, appview_dsn)
    assert [(r["from_version"], r["to_version"], r["verdict"]) for r in rows] == [
        ("1.0.0", "1.1.0", "incomparable"),
        ("1.1.0", "1.2.0", "incomparable"),
    ]
    assert json.loads(rows[0]["findings"])[0]["rule"] == "SRC_JSON_TOO_DEEP"
    assert json.loads(rows[1]["findings"])[0]["rule"] == "SCHEMA_BODY"


def test_cached_verdicts_are_reused_by_cid(appview_dsn: str) -> None:
    history.clear_cache()
    v1 = corpus("ImageSample")
    v2 = bumped(v1, "1.0.1")
    sentinel = history.Verdict("compatible", "patch", "none", ())
    history._remember(record_cid(v1), record_cid(v2), sentinel)

    async def go(conn: asyncpg.Connection) -> list[Any]:
        await put(conn, SCHEMA, ALICE, v1)
        await put(conn, SCHEMA, ALICE, v2)
        # the cache answers: the records are not read (deleting them is not seen)
        await conn.execute("UPDATE appview_schemas SET record = 'null'::jsonb")
        await recompute_history(conn, ALICE, "ImageSample")
        return await _verdicts(conn, ALICE, "ImageSample")

    rows = run(go, appview_dsn)
    assert [(r["verdict"], r["declared_bump"], r["needed_bump"]) for r in rows] == [
        ("compatible", "patch", "none")
    ]
    history.clear_cache()


# -- through the log and the indexer ---------------------------------------------------


def test_indexer_keeps_history_from_the_log(appview_dsn: str) -> None:
    """Schema records written to the ingestion log (out of version order, over
    several batches, then a delete) reach ``appview_schema_compat`` through the
    indexer's history hook."""
    from atdata_appview.indexer import Indexer
    from atdata_appview.testing.log import LogWriter, append_rows

    history.clear_cache()
    v1 = corpus("OptionalSample")
    v2 = bumped(v1, "1.1.0", add={"note": {"type": "string"}})
    v3 = bumped(v2, "1.2.0", drop=["score"])
    log = LogWriter()

    def row(r: dict[str, Any]) -> dict[str, Any]:
        rkey = schema_rkey(r["name"], r["version"])
        return log.create(ALICE, SCHEMA, rkey, r, cid=record_cid(r))

    async def fold(pool: asyncpg.Pool) -> None:
        indexer = Indexer(pool, batch_size=2, listen=False)
        while await indexer.fold_once():
            pass

    async def go() -> tuple[list[Any], list[Any]]:
        async with asyncpg.create_pool(appview_dsn, min_size=1, max_size=2) as pool:
            async with pool.acquire() as conn:
                await append_rows(conn, [row(v3), row(v1), row(v2)])
            await fold(pool)
            async with pool.acquire() as conn:
                before = await _verdicts(conn, ALICE, "OptionalSample")
                rkey = schema_rkey("OptionalSample", "1.1.0")
                await append_rows(conn, [log.delete(ALICE, SCHEMA, rkey)])
            await fold(pool)
            async with pool.acquire() as conn:
                return before, await _verdicts(conn, ALICE, "OptionalSample")

    before, after = asyncio.run(go())
    assert [
        (r["from_version"], r["to_version"], r["verdict"], r["needed_bump"])
        for r in before
    ] == [
        ("1.0.0", "1.1.0", "compatible", "minor"),
        ("1.1.0", "1.2.0", "breaking", "major"),
    ]
    assert [(r["from_version"], r["to_version"], r["verdict"]) for r in after] == [
        ("1.0.0", "1.2.0", "breaking")  # score deleted between them, declared minor
    ]
