"""Lens paths over the index, through the runtime's LensGraph: published lenses,
structural steps between versions of one publisher's schema (marked
``structural``), handle-form lens references, cycles, the ``max_steps`` bound, the
candidate bound, records that do not compile, and the typed errors (with the
schemas the source does reach)."""

from __future__ import annotations

import asyncio
import copy
from typing import Any

import asyncpg
import pytest
from atdata_appview import lenspath
from atdata_appview.lenspath import (
    LensPathNotFound,
    SchemaNotFound,
    Step,
    find_lens_path,
)

from .test_history import ALICE, BOB, LENS, SCHEMA, bumped, corpus, put, put_raw, run


def lens_record(name: str, source: str, target: str) -> dict[str, Any]:
    code = {
        "repository": "https://github.com/example/lenses",
        "commit": "0" * 40,
        "path": f"lenses:{name}",
    }
    return {
        "$type": LENS,
        "name": name,
        "sourceSchema": source,
        "targetSchema": target,
        "getterCode": code,
        "putterCode": code,
        "createdAt": "2026-01-01T00:00:00Z",
    }


def renamed(
    record: dict[str, Any], name: str, version: str = "1.0.0"
) -> dict[str, Any]:
    out = copy.deepcopy(record)
    out["name"], out["version"] = name, version
    return out


def kinds(steps: list[Step]) -> list[tuple[str, str, str, str | None]]:
    return [
        (s.kind, s.source_schema, s.target_schema, s.lens["uri"] if s.lens else None)
        for s in steps
    ]


@pytest.fixture
def world(appview_dsn: str) -> dict[str, str]:
    """Alice's OptionalSample 1.0.0 / 1.1.0 (adds an optional field: structural) /
    2.0.0 (a field's type changed: no structural step); her ScalarSample and
    ImageSample; a lens Optional 1.1.0 → Scalar, and Scalar → Image; Bob's
    OptionalSample 1.1.0 with Alice's 1.1.0 fields (another publisher: no
    structural step); Bob's ListSample, reached from nothing."""
    lenspath.clear_cache()
    opt = corpus("OptionalSample")
    o100 = bumped(opt, "1.0.0")
    o110 = bumped(o100, "1.1.0", add={"note": {"type": "string"}})
    o200 = bumped(o110, "2.0.0")
    o200["schema"]["properties"]["caption"] = {"type": "integer"}

    async def go(conn: asyncpg.Connection) -> dict[str, str]:
        u: dict[str, str] = {}
        u["o100"] = await put(conn, SCHEMA, ALICE, o100)
        u["o110"] = await put(conn, SCHEMA, ALICE, o110)
        u["o200"] = await put(conn, SCHEMA, ALICE, o200)
        u["scalar"] = await put(conn, SCHEMA, ALICE, corpus("ScalarSample"))
        u["image"] = await put(conn, SCHEMA, ALICE, corpus("ImageSample"))
        u["bob110"] = await put(conn, SCHEMA, BOB, o110)
        u["bobList"] = await put(conn, SCHEMA, BOB, corpus("ListSample"))
        u["l_opt_scalar"] = await put(
            conn, LENS, ALICE, lens_record("optToScalar", u["o110"], u["scalar"])
        )
        u["l_scalar_image"] = await put(
            conn, LENS, ALICE, lens_record("scalarToImage", u["scalar"], u["image"])
        )
        return u

    return run(go, appview_dsn)


def path(dsn: str, a: str, b: str, **kw: Any) -> list[Step]:
    return run(lambda c: find_lens_path(c, a, b, **kw), dsn)


def test_path_through_a_published_lens(appview_dsn: str, world: dict[str, str]) -> None:
    steps = path(appview_dsn, world["o110"], world["scalar"])
    assert kinds(steps) == [
        ("lens", world["o110"], world["scalar"], world["l_opt_scalar"])
    ]
    row = steps[0].lens
    assert row is not None
    assert (row["name"], row["did"], row["handle"]) == ("optToScalar", ALICE, None)
    assert row["record"]  # the whole row: the query layer builds the lensView


def test_structural_step_then_lenses(appview_dsn: str, world: dict[str, str]) -> None:
    steps = path(appview_dsn, world["o100"], world["image"])
    assert kinds(steps) == [
        ("structural", world["o100"], world["o110"], None),
        ("lens", world["o110"], world["scalar"], world["l_opt_scalar"]),
        ("lens", world["scalar"], world["image"], world["l_scalar_image"]),
    ]


def test_structural_step_alone_and_back(
    appview_dsn: str, world: dict[str, str]
) -> None:
    assert kinds(path(appview_dsn, world["o100"], world["o110"])) == [
        ("structural", world["o100"], world["o110"], None)
    ]
    # 1.1.0 → 1.0.0 drops the optional field: structural too
    assert kinds(path(appview_dsn, world["o110"], world["o100"])) == [
        ("structural", world["o110"], world["o100"], None)
    ]


def test_same_schema_is_the_empty_chain(
    appview_dsn: str, world: dict[str, str]
) -> None:
    assert path(appview_dsn, world["scalar"], world["scalar"]) == []


def test_no_structural_step_over_a_type_change(
    appview_dsn: str, world: dict[str, str]
) -> None:
    with pytest.raises(LensPathNotFound) as caught:
        path(appview_dsn, world["o100"], world["o200"])
    # what the source reaches, nearest first
    assert caught.value.reachable[:1] == [world["o110"]]
    assert set(caught.value.reachable) == {
        world["o110"],
        world["scalar"],
        world["image"],
    }
    assert not caught.value.truncated


def test_no_structural_step_to_another_publishers_schema(
    appview_dsn: str, world: dict[str, str]
) -> None:
    with pytest.raises(LensPathNotFound) as caught:
        path(appview_dsn, world["o110"], world["bob110"])
    assert world["bob110"] not in caught.value.reachable
    assert world["bob110"] in str(caught.value)


def test_other_publishers_schema_is_reached_only_through_lenses(
    appview_dsn: str, world: dict[str, str]
) -> None:
    """Bob's OptionalSample 1.1.0 has the fields of Alice's: once it is among the
    candidates (a lens leads to it), it is still not one structural step away."""

    async def go(conn: asyncpg.Connection) -> str:
        return await put(
            conn,
            LENS,
            ALICE,
            lens_record("imageToBob", world["image"], world["bob110"]),
        )

    to_bob = run(go, appview_dsn)
    steps = path(appview_dsn, world["o110"], world["bob110"])
    assert kinds(steps) == [
        ("lens", world["o110"], world["scalar"], world["l_opt_scalar"]),
        ("lens", world["scalar"], world["image"], world["l_scalar_image"]),
        ("lens", world["image"], world["bob110"], to_bob),
    ]


def test_deactivated_accounts_records_are_not_used(
    appview_dsn: str, world: dict[str, str]
) -> None:
    async def go(conn: asyncpg.Connection) -> str:
        carol = "did:plc:carolcarolcarolcarol2345"
        hop = await put(conn, SCHEMA, carol, renamed(corpus("ListSample"), "Hop"))
        await put(conn, LENS, carol, lens_record("toHop", world["o110"], hop))
        await put(conn, LENS, carol, lens_record("fromHop", hop, world["bobList"]))
        await conn.execute(
            "INSERT INTO appview_accounts (did, active, status) "
            "VALUES ($1, false, 'deactivated')",
            carol,
        )
        return hop

    hop = run(go, appview_dsn)
    with pytest.raises(LensPathNotFound) as caught:
        path(appview_dsn, world["o110"], world["bobList"])
    assert hop not in caught.value.reachable
    with pytest.raises(SchemaNotFound):
        path(appview_dsn, world["o110"], hop)
    with pytest.raises(SchemaNotFound):
        path(appview_dsn, hop, world["o110"])
    run(lambda c: c.execute("UPDATE appview_accounts SET active = true"), appview_dsn)
    assert [
        s.lens["name"]
        for s in path(appview_dsn, world["o110"], world["bobList"])
        if s.lens
    ] == [
        "toHop",
        "fromHop",
    ]


def test_unreachable_target_names_the_reachable_set(
    appview_dsn: str, world: dict[str, str]
) -> None:
    with pytest.raises(LensPathNotFound) as caught:
        path(appview_dsn, world["scalar"], world["bobList"])
    assert caught.value.reachable == [world["image"]]
    assert (caught.value.source, caught.value.target) == (
        world["scalar"],
        world["bobList"],
    )


def test_unknown_schemas_are_schema_not_found(
    appview_dsn: str, world: dict[str, str]
) -> None:
    missing = f"at://{ALICE}/{SCHEMA}/Nope:1.0.0"
    with pytest.raises(SchemaNotFound) as caught:
        path(appview_dsn, missing, world["scalar"])
    assert caught.value.uri == missing
    with pytest.raises(SchemaNotFound) as caught:
        path(appview_dsn, world["scalar"], missing)
    assert caught.value.uri == missing
    with pytest.raises(SchemaNotFound):  # a lens is not a schema
        path(appview_dsn, world["l_opt_scalar"], world["scalar"])


def test_max_steps_out_of_range(appview_dsn: str, world: dict[str, str]) -> None:
    for bad in (0, 17):
        with pytest.raises(ValueError, match="max_steps"):
            path(appview_dsn, world["o100"], world["image"], max_steps=bad)


def test_max_steps_bounds_the_chain(appview_dsn: str, world: dict[str, str]) -> None:
    assert len(path(appview_dsn, world["o100"], world["image"], max_steps=3)) == 3
    with pytest.raises(LensPathNotFound) as caught:
        path(appview_dsn, world["o100"], world["image"], max_steps=2)
    assert caught.value.max_steps == 2
    assert set(caught.value.reachable) == {world["o110"], world["scalar"]}


def test_cycles_and_a_long_chain(appview_dsn: str) -> None:
    lenspath.clear_cache()
    base = corpus("ScalarSample")

    async def go(conn: asyncpg.Connection) -> list[str]:
        uris = [
            await put(conn, SCHEMA, ALICE, renamed(base, f"N{i}")) for i in range(8)
        ]
        for i in range(7):
            await put(conn, LENS, ALICE, lens_record(f"fwd{i}", uris[i], uris[i + 1]))
            await put(conn, LENS, ALICE, lens_record(f"back{i}", uris[i + 1], uris[i]))
        await put(conn, LENS, ALICE, lens_record("loop", uris[7], uris[0]))
        return uris

    uris = run(go, appview_dsn)
    steps = path(appview_dsn, uris[0], uris[6], max_steps=16)
    assert [s.lens["name"] for s in steps if s.lens] == [f"fwd{i}" for i in range(6)]
    # the loop 7 → 0 is shorter than going back through every node
    steps = path(appview_dsn, uris[7], uris[1])
    assert [s.lens["name"] for s in steps if s.lens] == ["loop", "fwd0"]
    with pytest.raises(LensPathNotFound) as caught:
        path(appview_dsn, uris[0], uris[7], max_steps=1)
    assert set(caught.value.reachable) == {uris[1]}  # back0 is 1 → 0, not from 0


def test_lens_in_handle_form_is_followed(appview_dsn: str) -> None:
    lenspath.clear_cache()

    async def go(conn: asyncpg.Connection) -> tuple[str, str, str]:
        await conn.execute(
            "INSERT INTO appview_accounts (did, handle, verified_handle) "
            "VALUES ($1, 'alice.test', 'alice.test')",
            ALICE,
        )
        a = await put(conn, SCHEMA, ALICE, corpus("ScalarSample"))
        b = await put(conn, SCHEMA, ALICE, corpus("ImageSample"))
        by_handle = a.replace(ALICE, "alice.test"), b.replace(ALICE, "Alice.Test")
        lens = await put(conn, LENS, ALICE, lens_record("h", *by_handle))
        return a, b, lens

    a, b, lens = run(go, appview_dsn)
    steps = path(appview_dsn, a, b)
    assert kinds(steps) == [("lens", a, b, lens)]
    assert steps[0].lens is not None and steps[0].lens["handle"] == "alice.test"
    # the query may name the schemas by handle too; the steps use the DIDs
    steps = path(appview_dsn, a.replace(ALICE, "alice.test"), b)
    assert kinds(steps) == [("lens", a, b, lens)]


def test_schema_that_does_not_compile_is_left_out(appview_dsn: str) -> None:
    lenspath.clear_cache()
    base = corpus("ScalarSample")

    async def go(conn: asyncpg.Connection) -> tuple[str, str, str, str]:
        a = await put(conn, SCHEMA, ALICE, renamed(base, "A"))
        bad = await put_raw(
            conn,
            ALICE,
            "Bad",
            "1.0.0",
            {"name": "Bad", "version": "1.0.0", "schema": 1},
        )
        c = await put(conn, SCHEMA, ALICE, renamed(base, "C"))
        d = await put(conn, SCHEMA, ALICE, renamed(base, "D"))
        await put(conn, LENS, ALICE, lens_record("a-bad", a, bad))
        await put(conn, LENS, ALICE, lens_record("bad-c", bad, c))
        await put(conn, LENS, ALICE, lens_record("a-d", a, d))
        await put(conn, LENS, ALICE, lens_record("d-c", d, c))
        return a, bad, c, d

    a, bad, c, d = run(go, appview_dsn)
    steps = path(appview_dsn, a, c)  # around the record that does not compile
    assert [(s.source_schema, s.target_schema) for s in steps] == [(a, d), (d, c)]
    with pytest.raises(LensPathNotFound) as caught:
        path(appview_dsn, a, bad)
    assert bad in caught.value.uncompiled
    assert "does not compile" in str(caught.value)


def test_versions_of_one_name_are_bounded(appview_dsn: str) -> None:
    """A publisher with more versions of one name than the search gathers: the
    search ends, says it was bounded, and still finds the version a lens names."""
    lenspath.clear_cache()
    base = corpus("ScalarSample")
    n = lenspath.MAX_VERSIONS_PER_NAME + 20

    async def go(conn: asyncpg.Connection) -> tuple[str, str, str]:
        src = await put(conn, SCHEMA, ALICE, renamed(base, "Src"))
        many = [
            await put(conn, SCHEMA, BOB, renamed(base, "Many", f"1.{i}.0"))
            for i in range(n)
        ]
        await put(conn, LENS, ALICE, lens_record("src-many", src, many[3]))
        return src, many[3], many[-1]

    src, old, newest = run(go, appview_dsn)
    assert kinds(path(appview_dsn, src, old)) == [
        ("lens", src, old, f"at://{ALICE}/{LENS}/src-many")
    ]
    # old → newest is one structural step (same fields): within the gathered set
    steps = path(appview_dsn, src, newest)
    assert [s.kind for s in steps] == ["lens", "structural"]
    with pytest.raises(LensPathNotFound) as caught:
        path(appview_dsn, src, f"at://{BOB}/{SCHEMA}/Many:1.5.0")
    assert caught.value.truncated  # 1.5.0 was not gathered: the search says so
    assert len(caught.value.reachable) == lenspath.MAX_VERSIONS_PER_NAME


def test_candidates_are_bounded(appview_dsn: str) -> None:
    """More schemas within reach than the search gathers: it ends, bounded."""
    lenspath.clear_cache()
    base = corpus("ScalarSample")
    names = lenspath.MAX_CANDIDATES // 40 + 2

    async def go(conn: asyncpg.Connection) -> tuple[str, str]:
        src = await put(conn, SCHEMA, ALICE, renamed(base, "Src"))
        for k in range(names):
            first = ""
            for i in range(40):
                uri = await put(conn, SCHEMA, BOB, renamed(base, f"M{k}", f"1.{i}.0"))
                first = first or uri
            await put(conn, LENS, ALICE, lens_record(f"src-m{k}", src, first))
        far = await put(conn, SCHEMA, ALICE, renamed(base, "Far"))
        return src, far

    src, far = run(go, appview_dsn)
    with pytest.raises(LensPathNotFound) as caught:
        path(appview_dsn, src, far)
    assert caught.value.truncated
    assert len(caught.value.reachable) == lenspath.MAX_REACHABLE


def test_path_over_records_indexed_from_the_log(appview_dsn: str) -> None:
    """Schemas and a lens written to the ingestion log, folded by the indexer,
    then searched; deleting the lens removes the chain."""
    from atdata_appview.indexer import Indexer
    from atdata_appview.testing.log import LogWriter, append_rows
    from atdata_runtime.atmosphere.cid import record_cid
    from atdata_runtime.atmosphere.records import schema_rkey

    lenspath.clear_cache()
    log = LogWriter()
    o100 = corpus("OptionalSample")
    o110 = bumped(o100, "1.1.0", add={"note": {"type": "string"}})
    scalar = corpus("ScalarSample")
    uri = {
        r["version"] + r["name"]: f"at://{ALICE}/{SCHEMA}/"
        + schema_rkey(r["name"], r["version"])
        for r in (o100, o110, scalar)
    }
    a, b, c = (
        uri["1.0.0OptionalSample"],
        uri["1.1.0OptionalSample"],
        uri["1.0.0ScalarSample"],
    )
    lens = lens_record("optToScalar", b, c)

    def row(collection: str, r: dict[str, Any], rkey: str) -> dict[str, Any]:
        return log.create(ALICE, collection, rkey, r, cid=record_cid(r))

    async def go() -> tuple[list[Step], str]:
        async with asyncpg.create_pool(appview_dsn, min_size=1, max_size=2) as pool:
            indexer = Indexer(pool, listen=False)
            async with pool.acquire() as conn:
                await append_rows(
                    conn,
                    [row(LENS, lens, "optToScalar")]
                    + [
                        row(SCHEMA, r, schema_rkey(r["name"], r["version"]))
                        for r in (scalar, o110, o100)
                    ],
                )
            while await indexer.fold_once():
                pass
            async with pool.acquire() as conn:
                steps = await find_lens_path(conn, a, c)
                await append_rows(conn, [log.delete(ALICE, LENS, "optToScalar")])
            while await indexer.fold_once():
                pass
            async with pool.acquire() as conn:
                try:
                    await find_lens_path(conn, a, c)
                except LensPathNotFound as exc:
                    return steps, str(exc)
            raise AssertionError("the deleted lens is still a path")

    steps, after = asyncio.run(go())
    assert kinds(steps) == [
        ("structural", a, b, None),
        ("lens", b, c, f"at://{ALICE}/{LENS}/optToScalar"),
    ]
    assert "no chain" in after


# -- bounded work (review R1-2) -----------------------------------------------------


def _where_called(calls: list[str]) -> Any:
    """A wrapper recording, for each call, whether it ran on an event loop's
    thread ("loop") or in a thread without one ("worker")."""

    def wrap(fn: Any) -> Any:
        def spy(*a: Any, **kw: Any) -> Any:
            try:
                asyncio.get_running_loop()
                calls.append("loop")
            except RuntimeError:
                calls.append("worker")
            return fn(*a, **kw)

        return spy

    return wrap


def test_graph_work_runs_off_the_event_loop_and_is_cached(
    appview_dsn: str, world: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Compiling records, structural steps and the graph search run in the
    worker thread, never on the event loop; a second search of the same schemas
    compiles nothing and compares no two versions again."""
    from atdata_runtime.lenses import core

    calls: list[str] = []
    wrap = _where_called(calls)
    compiles: list[str] = []
    structural: list[str] = []
    real_compile, real_structural = lenspath.compile_schema_record, core.structural_lens
    monkeypatch.setattr(
        lenspath, "compile_schema_record", _where_called(compiles)(real_compile)
    )
    monkeypatch.setattr(
        core, "structural_lens", _where_called(structural)(real_structural)
    )
    monkeypatch.setattr(
        lenspath, "structural_lens", _where_called(structural)(real_structural),
        raising=False,
    )  # fmt: skip
    monkeypatch.setattr(core.LensGraph, "path", wrap(core.LensGraph.path))
    monkeypatch.setattr(core.LensGraph, "reachable", wrap(core.LensGraph.reachable))
    lenspath.clear_cache()
    steps = path(appview_dsn, world["o100"], world["image"])
    assert [s.kind for s in steps] == ["structural", "lens", "lens"]
    with pytest.raises(LensPathNotFound):
        path(appview_dsn, world["o100"], world["bobList"])
    assert compiles and structural and calls
    assert set(compiles) == set(structural) == set(calls) == {"worker"}
    compiles.clear()
    structural.clear()
    again = path(appview_dsn, world["o100"], world["image"])
    assert kinds(again) == kinds(steps)
    assert compiles == [] and structural == []


def test_a_search_past_its_budget_ends_and_says_so(
    appview_dsn: str, world: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Out of budget: LensPathNotFound ``exhausted`` ("search budget exhausted"),
    and the work done is kept: asked again with a budget, the search ends."""
    lenspath.clear_cache()
    monkeypatch.setattr(lenspath, "SEARCH_BUDGET_SECONDS", 0.0, raising=False)
    with pytest.raises(LensPathNotFound) as caught:
        path(appview_dsn, world["o100"], world["image"])
    assert caught.value.exhausted and caught.value.truncated
    assert "search budget exhausted" in str(caught.value)
    monkeypatch.setattr(lenspath, "SEARCH_BUDGET_SECONDS", 2.0)
    assert [s.kind for s in path(appview_dsn, world["o100"], world["image"])] == [
        "structural", "lens", "lens"
    ]  # fmt: skip


def test_records_of_too_many_fields_are_left_out(appview_dsn: str) -> None:
    """A schema of more than MAX_LENS_FIELDS fields takes no part in a lens path
    (each structural step compares every field); one of exactly that many does."""
    lenspath.clear_cache()
    base = corpus("ScalarSample")
    cap = getattr(lenspath, "MAX_LENS_FIELDS", 256)

    def wide(name: str, n: int) -> dict[str, Any]:
        out = renamed(base, name)
        props = {f"f{i:04d}": {"type": "string"} for i in range(n)}
        out["schema"]["properties"] = props
        out["schema"]["required"] = []
        return out

    async def go(conn: asyncpg.Connection) -> tuple[str, str, str]:
        a = await put(conn, SCHEMA, ALICE, renamed(base, "A"))
        ok = await put(conn, SCHEMA, ALICE, wide("Wide", cap))
        too = await put(conn, SCHEMA, ALICE, wide("Wider", cap + 1))
        await put(conn, LENS, ALICE, lens_record("a-ok", a, ok))
        await put(conn, LENS, ALICE, lens_record("a-too", a, too))
        return a, ok, too

    a, ok, too = run(go, appview_dsn)
    assert [s.kind for s in path(appview_dsn, a, ok)] == ["lens"]
    with pytest.raises(LensPathNotFound) as caught:
        path(appview_dsn, a, too)
    assert too in caught.value.uncompiled
    assert "fields" in str(caught.value)
