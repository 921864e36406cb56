"""The indexer against a real PostgreSQL: log rows written as the ingester writes
them (:mod:`atdata_appview.testing.log`), folded by :class:`Indexer`, checked in
the AppView tables."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import orjson
import pytest
from atdata_appview import indexer as ix
from atdata_appview.indexer import (
    END_OF_SEQ,
    Indexer,
    apply_rows,
    apply_snapshot,
    begin_backfill,
    fail_backfill,
    status,
)
from atdata_appview.records import normalize
from atdata_appview.schema import RECORD_TABLES
from atdata_appview.testing.log import LogWriter, append_rows

from ..conftest import flat_schema_record

T = TypeVar("T")

A = "did:plc:ewvi7nxzyoun6zhxrhs64oiz"
B = "did:plc:44ybard66vv44zksje25o7dz"
C = "did:plc:vwzwgnygau7ed7b7wt5ux7y2"
SCHEMA = "science.alt.dataset.schema"
ENTRY = "science.alt.dataset.entry"
LENS = "science.alt.dataset.lens"
LABEL = "science.alt.dataset.label"
VERIFICATION = "science.alt.dataset.lensVerification"
CID = "bafyreie5737gdxlw5i64vzichcalba3z2v5n6icifvx5xytvske7mr3hpm"
ROOT = Path(__file__).resolve().parents[2]


# -- records ---------------------------------------------------------------------------


def schema(name: str = "CellCrop", version: str = "1.0.0", **extra: Any) -> Any:
    return flat_schema_record(
        name,
        version,
        {"image": {"type": "string"}, "label": {"type": "integer"}},
        **extra,
    )


def schema_uri(did: str = A, name: str = "CellCrop", version: str = "1.0.0") -> str:
    return f"at://{did}/{SCHEMA}/{name}:{version}"


def entry(name: str = "cell crops", **over: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "$type": ENTRY,
        "name": name,
        "schemaRef": schema_uri(),
        "storage": {
            "$type": "science.alt.dataset.storageHttp",
            "shards": [
                {
                    "url": f"https://data.example.com/cells-{i}.tar",
                    "checksum": {"algorithm": "sha256", "digest": f"{i:064x}"},
                }
                for i in range(2)
            ],
        },
        "description": "Cropped microscopy cells",
        "tags": ["microscopy", "cells"],
        "size": {"samples": 48, "bytes": 123456, "shards": 2},
        "license": "CC-BY-4.0",
        "createdAt": "2026-03-01T12:00:00.000Z",
    }
    out.update(over)
    return out


def lens(name: str = "crop to thumb", **over: Any) -> dict[str, Any]:
    code = {
        "repository": "https://github.com/example/lenses",
        "commit": "0" * 40,
        "path": "lenses.crop:getter",
    }
    out: dict[str, Any] = {
        "$type": LENS,
        "name": name,
        "sourceSchema": schema_uri(),
        "targetSchema": schema_uri(name="Thumb"),
        "getterCode": {**code, "language": "python"},
        "putterCode": dict(code, path="lenses.crop:putter"),
        "createdAt": "2026-03-01T12:00:00Z",
    }
    out.update(over)
    return out


def label(name: str = "latest", **over: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "$type": LABEL,
        "name": name,
        "datasetUri": f"at://{A}/{ENTRY}/3jzfcijpj2z2a",
        "version": "1.2.0",
        "createdAt": "2026-03-01T12:00:00Z",
    }
    out.update(over)
    return out


def verification(**over: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "$type": VERIFICATION,
        "lens": f"at://{A}/{LENS}/3jzfcijpj2z2a",
        "lensCommit": CID,
        "verificationMethod": "automatedTest",
        "createdAt": "2026-03-01T12:00:00Z",
    }
    out.update(over)
    return out


# -- harness ---------------------------------------------------------------------------


def run(dsn: str, body: Callable[[asyncpg.Pool], Awaitable[T]]) -> T:
    async def go() -> T:
        pool = await asyncpg.create_pool(dsn, min_size=1, max_size=4)
        try:
            return await body(pool)
        finally:
            await pool.close()

    return asyncio.run(go())


async def append(pool: asyncpg.Pool, rows: list[dict[str, Any]]) -> None:
    async with pool.acquire() as conn:
        await append_rows(conn, rows)


async def fold(pool: asyncpg.Pool, **kw: Any) -> Indexer:
    indexer = Indexer(pool, history=kw.pop("history", None), **kw)
    await indexer.fold_all()
    return indexer


async def rows_of(pool: asyncpg.Pool, sql: str, *args: Any) -> list[dict[str, Any]]:
    return [dict(r) for r in await pool.fetch(sql, *args)]


# -- create / update / delete ------------------------------------------------------------


def test_create_update_delete_every_record_type(appview_dsn: str) -> None:
    log = LogWriter()
    records = {
        SCHEMA: ("CellCrop:1.0.0", schema(), schema(description="v1 again")),
        ENTRY: ("3kaaaaaaaaaa2", entry(), entry(name="cells, renamed")),
        LENS: ("3kaaaaaaaaab2", lens(), lens(name="crop again")),
        LABEL: ("3kaaaaaaaaac2", label(), label(name="stable")),
        VERIFICATION: (
            "3kaaaaaaaaad2",
            verification(),
            verification(verificationMethod="codeReview"),
        ),
    }

    async def body(pool: asyncpg.Pool) -> None:
        await append(pool, [log.create(A, c, k, r) for c, (k, r, _) in records.items()])
        indexer = await fold(pool)
        assert indexer.stats.upserted == 5 and indexer.stats.dead_letters == 0
        for c, (k, r, _) in records.items():
            got = await pool.fetchrow(
                f"SELECT uri, record::text AS record, seq FROM {RECORD_TABLES[c]} "
                "WHERE did = $1 AND rkey = $2",
                A,
                k,
            )
            assert got is not None, c
            assert got["uri"] == f"at://{A}/{c}/{k}"
            assert orjson.loads(got["record"]) == r
        await append(pool, [log.update(A, c, k, u) for c, (k, _, u) in records.items()])
        await fold(pool)
        for c, (k, _, u) in records.items():
            got = await pool.fetchval(
                f"SELECT record::text FROM {RECORD_TABLES[c]} WHERE rkey = $1", k
            )
            assert orjson.loads(got) == u, c
        assert (
            await pool.fetchval("SELECT name FROM appview_entries") == "cells, renamed"
        )
        await append(pool, [log.delete(A, c, k) for c, (k, _, _) in records.items()])
        await fold(pool)
        for c in records:
            assert await pool.fetchval(f"SELECT count(*) FROM {RECORD_TABLES[c]}") == 0

    run(appview_dsn, body)


def tid(n: int) -> str:
    """The ``n``-th rev :class:`LogWriter` hands out (same alphabet and base)."""
    value = (1_700_000_000_000_000 << 10) + n
    chars = "234567abcdefghijklmnopqrstuvwxyz"
    out = ""
    for _ in range(13):
        out = chars[value & 31] + out
        value >>= 5
    return out


def test_tid_helper_matches_the_log_writer() -> None:
    log = LogWriter()
    revs = [log.create(A, ENTRY, f"k{i}", entry())["rev"] for i in range(3)]
    assert revs == [tid(1), tid(2), tid(3)]
    assert tid(1) < tid(2) < tid(40)


# -- rev ordering ------------------------------------------------------------------------


def test_stale_update_is_ignored_in_a_later_batch_and_in_the_same_batch(
    appview_dsn: str,
) -> None:
    log = LogWriter()

    async def body(pool: asyncpg.Pool) -> None:
        first = log.create(A, ENTRY, "3kaaaaaaaaaa2", entry(name="v1"))
        newer = log.update(A, ENTRY, "3kaaaaaaaaaa2", entry(name="v2"))
        await append(pool, [first, newer])
        await fold(pool)
        # a replay of the first version, later in the log, older rev
        stale = log.update(
            A, ENTRY, "3kaaaaaaaaaa2", entry(name="v1"), rev=first["rev"]
        )
        await append(pool, [stale])
        indexer = await fold(pool)
        assert indexer.stats.stale == 1 and indexer.stats.upserted == 0
        got = await pool.fetchrow("SELECT name, rev, seq FROM appview_entries")
        assert dict(got) == {"name": "v2", "rev": newer["rev"], "seq": newer["seq"]}
        # out of order within one batch: the newest rev wins, whatever the seq order
        b_new = log.create(B, ENTRY, "3kaaaaaaaaab2", entry(name="b-new"))
        b_old = log.update(B, ENTRY, "3kaaaaaaaaab2", entry(name="b-old"), rev=tid(1))
        await append(pool, [b_new, b_old])
        indexer = await fold(pool)
        assert indexer.stats.stale == 1
        assert (
            await pool.fetchval("SELECT name FROM appview_entries WHERE did = $1", B)
            == "b-new"
        )

    run(appview_dsn, body)


def test_replayed_create_after_delete_does_not_resurrect(appview_dsn: str) -> None:
    log = LogWriter()

    async def body(pool: asyncpg.Pool) -> None:
        create = log.create(A, SCHEMA, "CellCrop:1.0.0", schema())
        await append(pool, [create, log.delete(A, SCHEMA, "CellCrop:1.0.0")])
        await fold(pool)
        assert await pool.fetchval("SELECT count(*) FROM appview_schemas") == 0
        # the same commit replayed later in the log (a relay switch, say)
        replay = dict(create, seq=log.create(A, ENTRY, "x", {})["seq"])
        await append(pool, [replay])
        indexer = await fold(pool)
        assert indexer.stats.stale == 1
        assert await pool.fetchval("SELECT count(*) FROM appview_schemas") == 0
        assert await pool.fetchval(
            "SELECT rev FROM appview_accounts WHERE did = $1", A
        ) == tid(2)

    run(appview_dsn, body)


def test_replaying_the_same_rows_changes_nothing(appview_dsn: str) -> None:
    log = LogWriter()
    rows = [
        log.create(A, SCHEMA, "CellCrop:1.0.0", schema()),
        log.create(A, ENTRY, "3kaaaaaaaaaa2", entry()),
        log.create(A, ENTRY, "3kaaaaaaaaab2", entry(name=5)),  # invalid
    ]

    async def body(pool: asyncpg.Pool) -> None:
        async with pool.acquire() as conn:
            async with conn.transaction():
                first = await apply_rows(conn, rows, history=None)
            async with conn.transaction():
                again = await apply_rows(conn, rows, history=None)
        assert (first.upserted, first.rejected, first.dead_letters) == (2, 1, 1)
        assert (again.upserted, again.dead_letters) == (0, 0)
        assert again.rejected == 1  # seen again, not stored again
        assert await pool.fetchval("SELECT count(*) FROM appview_dead_letters") == 1

    run(appview_dsn, body)


# -- validation, dead letters ------------------------------------------------------------


def test_invalid_record_is_dead_lettered_and_never_indexed(appview_dsn: str) -> None:
    log = LogWriter()

    async def body(pool: asyncpg.Pool) -> None:
        good = log.create(A, ENTRY, "3kaaaaaaaaaa2", entry())
        await append(pool, [good])
        await fold(pool)
        bad_type = log.create(A, ENTRY, "3kaaaaaaaaab2", entry(name=["not", "text"]))
        bad_update = log.update(A, ENTRY, "3kaaaaaaaaaa2", entry(schemaRef="https://x"))
        await append(pool, [bad_type, bad_update])
        indexer = await fold(pool)
        assert indexer.stats.rejected == 2 and indexer.stats.dead_letters == 2
        # the invalid update removed the good version: the repo no longer holds it
        assert await pool.fetchval("SELECT count(*) FROM appview_entries") == 0
        dead = await rows_of(
            pool,
            "SELECT seq, idx, did, collection, rkey, cid, rule, pointer, message, "
            "record::text AS record FROM appview_dead_letters ORDER BY seq",
        )
        for d, row in zip(dead, (bad_type, bad_update), strict=True):
            expected = normalize(
                ENTRY, A, row["rkey"], row["cid"], row["record"], rev=row["rev"], seq=1
            )
            assert not hasattr(expected, "table")
            assert (d["rule"], d["pointer"]) == (expected.rule, expected.pointer)
            assert d["message"] == expected.message
            assert (d["seq"], d["did"], d["collection"], d["rkey"], d["cid"]) == (
                row["seq"],
                A,
                ENTRY,
                row["rkey"],
                row["cid"],
            )
            assert orjson.loads(d["record"]) == row["record"]
        assert dead[0]["pointer"] == "/name"
        st = await pool.fetchrow("SELECT dead_letters, folded FROM appview_cursor")
        assert (st["dead_letters"], st["folded"]) == (2, 3)
        # a valid version later indexes again
        await append(pool, [log.update(A, ENTRY, "3kaaaaaaaaaa2", entry(name="fixed"))])
        await fold(pool)
        assert await pool.fetchval("SELECT name FROM appview_entries") == "fixed"

    run(appview_dsn, body)


def test_dead_letter_copy_is_truncated(appview_dsn: str) -> None:
    log = LogWriter()
    big = entry(name=["x"], description="d" * 50_000)

    async def body(pool: asyncpg.Pool) -> None:
        await append(pool, [log.create(A, ENTRY, "3kaaaaaaaaaa2", big)])
        await fold(pool, max_dead_letter_bytes=1000)
        text = await pool.fetchval("SELECT record::text FROM appview_dead_letters")
        copy = orjson.loads(text)
        # the log's text of the record (jsonb's own rendering)
        full = await pool.fetchval("SELECT record::text FROM ingest_events")
        assert orjson.loads(full) == big
        assert copy["$truncated"] is True and copy["size"] == len(full)
        assert copy["head"] == full[:1000]
        assert len(text) < 1200

    run(appview_dsn, body)


def test_record_missing_from_the_log_row(appview_dsn: str) -> None:
    log = LogWriter()

    async def body(pool: asyncpg.Pool) -> None:
        row = log.create(A, ENTRY, "3kaaaaaaaaaa2", entry())
        row["record"] = None
        await append(pool, [row])
        await fold(pool)
        assert await pool.fetchval("SELECT rule FROM appview_dead_letters") == (
            "AV_NO_RECORD"
        )

    run(appview_dsn, body)


def test_a_normalizer_that_raises_dead_letters_the_record_and_goes_on(
    appview_dsn: str,
) -> None:
    log = LogWriter()

    def flaky(collection: str, did: str, rkey: str, *a: Any, **kw: Any) -> Any:
        if rkey == "3kaaaaaaaaab2":
            raise KeyError("bug")
        return normalize(collection, did, rkey, *a, **kw)

    async def body(pool: asyncpg.Pool) -> None:
        await append(
            pool,
            [
                log.create(A, ENTRY, "3kaaaaaaaaaa2", entry()),
                log.create(A, ENTRY, "3kaaaaaaaaab2", entry()),
                log.create(A, ENTRY, "3kaaaaaaaaac2", entry()),
            ],
        )
        await fold(pool, normalizer=flaky)
        assert await pool.fetchval("SELECT count(*) FROM appview_entries") == 2
        assert await pool.fetchval("SELECT rule FROM appview_dead_letters") == (
            "AV_INTERNAL"
        )

    run(appview_dsn, body)


def test_a_row_postgresql_refuses_is_isolated(appview_dsn: str) -> None:
    """A normalized row PostgreSQL cannot store (here U+0000 in text, smuggled past
    the normalizer) fails the batch; the batch is redone row by row and only that
    row is dead-lettered."""
    log = LogWriter()

    def smuggle(collection: str, did: str, rkey: str, *a: Any, **kw: Any) -> Any:
        out = normalize(collection, did, rkey, *a, **kw)
        if rkey == "3kaaaaaaaaab2":
            return dataclasses.replace(out, name="nul\x00name")  # type: ignore[type-var]
        return out

    async def body(pool: asyncpg.Pool) -> None:
        await append(
            pool,
            [
                log.create(A, ENTRY, f"3kaaaaaaaaa{c}2", entry(name=f"e{c}"))
                for c in "abc"
            ],
        )
        indexer = await fold(pool, normalizer=smuggle)
        names = [
            r["name"] for r in await pool.fetch("SELECT name FROM appview_entries")
        ]
        assert sorted(names) == ["ea", "ec"]
        dead = await pool.fetchrow(
            "SELECT rkey, rule, message FROM appview_dead_letters"
        )
        assert (dead["rkey"], dead["rule"]) == ("3kaaaaaaaaab2", "AV_WRITE_FAILED")
        assert "CharacterNotInRepertoire" in dead["message"]
        cur = await pool.fetchrow(
            "SELECT seq, folded, dead_letters FROM appview_cursor"
        )
        assert (cur["folded"], cur["dead_letters"]) == (3, 1)
        assert indexer.stats.consumed == 3

    run(appview_dsn, body)


def test_rows_of_a_malformed_did_touch_no_account(appview_dsn: str) -> None:
    log = LogWriter()
    bad = "did:PLC x"

    async def body(pool: asyncpg.Pool) -> None:
        await append(
            pool,
            [
                log.create(bad, ENTRY, "3kaaaaaaaaaa2", entry()),
                log.identity(bad, "mallory.test"),
                log.account(bad, False, "deleted"),
            ],
        )
        indexer = await fold(pool)
        assert (indexer.stats.rejected, indexer.stats.skipped) == (1, 2)
        assert await pool.fetchval("SELECT count(*) FROM appview_accounts") == 0
        assert (
            await pool.fetchval("SELECT rule FROM appview_dead_letters") == "AV_BAD_DID"
        )

    run(appview_dsn, body)


# -- signatures ---------------------------------------------------------------------------


def test_unverified_rows_are_dead_lettered_and_change_nothing(appview_dsn: str) -> None:
    log = LogWriter()

    async def body(pool: asyncpg.Pool) -> None:
        good = log.create(A, ENTRY, "3kaaaaaaaaaa2", entry(name="good"))
        await append(pool, [good])
        await fold(pool)
        forged = log.update(
            A,
            ENTRY,
            "3kaaaaaaaaaa2",
            entry(name="forged"),
            verified=False,
            verify_rule="SIG_INVALID",
        )
        forged_delete = dict(log.delete(A, ENTRY, "3kaaaaaaaaaa2"), verified=False)
        unchecked = log.create(
            A, ENTRY, "3kaaaaaaaaab2", entry(name="n"), verified=None
        )
        await append(pool, [forged, forged_delete, unchecked])
        indexer = await fold(pool)
        assert indexer.stats.unverified == 2
        names = sorted(
            r["name"] for r in await pool.fetch("SELECT name FROM appview_entries")
        )
        assert names == ["good", "n"]  # NULL verified is indexed by default
        dead = await rows_of(
            pool,
            "SELECT rule, seq, record IS NULL AS empty FROM appview_dead_letters "
            "ORDER BY seq",
        )
        assert dead == [
            {"rule": "SIG_INVALID", "seq": forged["seq"], "empty": False},
            {"rule": "AV_UNVERIFIED", "seq": forged_delete["seq"], "empty": True},
        ]
        # the forged rows did not raise the repository's rev high-water mark
        assert (
            await pool.fetchval("SELECT rev FROM appview_accounts WHERE did = $1", A)
            == unchecked["rev"]
        )

    run(appview_dsn, body)


def test_require_verified_refuses_unchecked_rows(appview_dsn: str) -> None:
    log = LogWriter()

    async def body(pool: asyncpg.Pool) -> None:
        await append(
            pool,
            [
                log.create(A, ENTRY, "3kaaaaaaaaaa2", entry(), verified=None),
                log.create(
                    A,
                    ENTRY,
                    "3kaaaaaaaaab2",
                    entry(),
                    verified=None,
                    verify_rule="IDENTITY_UNRESOLVED",
                ),
                log.create(A, ENTRY, "3kaaaaaaaaac2", entry(), verified=True),
            ],
        )
        await fold(pool, require_verified=True)
        assert (
            await pool.fetchval("SELECT rkey FROM appview_entries") == "3kaaaaaaaaac2"
        )
        rules = [
            r["rule"]
            for r in await pool.fetch(
                "SELECT rule FROM appview_dead_letters ORDER BY seq"
            )
        ]
        assert rules == ["AV_UNCHECKED", "IDENTITY_UNRESOLVED"]

    run(appview_dsn, body)


# -- identity ------------------------------------------------------------------------------


def test_identity_events_set_clear_and_move_handles(appview_dsn: str) -> None:
    log = LogWriter()

    async def handles(pool: asyncpg.Pool) -> dict[str, str | None]:
        return {
            r["did"]: r["handle"]
            for r in await pool.fetch("SELECT did, handle FROM appview_accounts")
        }

    async def body(pool: asyncpg.Pool) -> None:
        await append(pool, [log.identity(A, "Alice.Test"), log.identity(B, "bob.test")])
        await fold(pool)
        assert await handles(pool) == {A: "alice.test", B: "bob.test"}
        await append(pool, [log.identity(A, "alice2.test")])
        await fold(pool)
        assert (await handles(pool))[A] == "alice2.test"
        # no handle in the event: unchanged; handle.invalid or garbage: unknown
        await append(pool, [log.identity(A, None), log.identity(B, "handle.invalid")])
        await fold(pool)
        assert await handles(pool) == {A: "alice2.test", B: None}
        await append(pool, [log.identity(B, "not a handle!")])
        await fold(pool)
        assert (await handles(pool))[B] is None
        # a handle moving to another DID leaves the old holder (other batch)...
        await append(pool, [log.identity(C, "alice2.test")])
        await fold(pool)
        assert await handles(pool) == {A: None, B: None, C: "alice2.test"}
        # ...and within one batch, the newest claim wins
        await append(pool, [log.identity(A, "x.test"), log.identity(B, "x.test")])
        await fold(pool)
        assert await handles(pool) == {A: None, B: "x.test", C: "alice2.test"}
        assert (
            await pool.fetchval("SELECT seq FROM appview_accounts WHERE did = $1", B)
            == log.identity(A, None)["seq"] - 1
        )

    run(appview_dsn, body)


# -- accounts -------------------------------------------------------------------------------


async def _publish_everything(pool: asyncpg.Pool, log: LogWriter, did: str) -> None:
    await append(
        pool,
        [
            log.create(did, SCHEMA, "CellCrop:1.0.0", schema()),
            log.create(did, SCHEMA, "CellCrop:1.1.0", schema(version="1.1.0")),
            log.create(did, ENTRY, "3kaaaaaaaaaa2", entry()),
            log.create(did, LENS, "3kaaaaaaaaab2", lens()),
            log.create(did, LABEL, "3kaaaaaaaaac2", label()),
            log.create(did, VERIFICATION, "3kaaaaaaaaad2", verification()),
            log.create(did, ENTRY, "3kaaaaaaaaae2", entry(name=7)),  # dead letter
        ],
    )


async def _counts(pool: asyncpg.Pool, did: str) -> dict[str, int]:
    out = {}
    for t in (
        *RECORD_TABLES.values(),
        "appview_dead_letters",
        "appview_pending",
        "appview_schema_compat",
    ):
        out[t] = await pool.fetchval(f"SELECT count(*) FROM {t} WHERE did = $1", did)
    return out


@pytest.mark.parametrize("status_", ["deleted", "takendown"])
def test_account_deletion_or_takedown_purges_everything(
    appview_dsn: str, status_: str
) -> None:
    log = LogWriter()
    calls: list[tuple[str, str]] = []

    async def hook(conn: asyncpg.Connection, did: str, name: str) -> None:
        from atdata_appview.history import recompute_history

        calls.append((did, name))
        await recompute_history(conn, did, name)

    async def body(pool: asyncpg.Pool) -> None:
        await _publish_everything(pool, log, A)
        await _publish_everything(pool, log, B)
        await fold(pool, history=hook)
        before = await _counts(pool, A)
        assert (
            before["appview_schema_compat"] == 1 and before["appview_dead_letters"] == 1
        )
        assert all(before[t] >= 1 for t in RECORD_TABLES.values())
        calls.clear()
        await append(pool, [log.account(A, False, status_)])
        indexer = await fold(pool, history=hook)
        assert indexer.stats.purged == 7 - 1  # six records, the dead letter apart
        assert set((await _counts(pool, A)).values()) == {0}
        assert await _counts(pool, B) == before  # the other account untouched
        assert calls == [(A, "CellCrop")]
        acct = await pool.fetchrow(
            "SELECT active, status FROM appview_accounts WHERE did = $1", A
        )
        assert (acct["active"], acct["status"]) == (False, status_)
        # later commits of the purged account are not indexed...
        await append(pool, [log.create(A, ENTRY, "3kaaaaaaaaaf2", entry())])
        indexer = await fold(pool)
        assert indexer.stats.skipped == 1
        assert (await _counts(pool, A))["appview_entries"] == 0
        # ...until it is active again, which also queues a backfill
        await append(
            pool,
            [log.account(A, True), log.create(A, ENTRY, "3kaaaaaaaaag2", entry())],
        )
        await fold(pool)
        assert (await _counts(pool, A))["appview_entries"] == 1
        assert await pool.fetchval(
            "SELECT state FROM appview_repos WHERE did = $1", A
        ) == ("pending")

    run(appview_dsn, body)


def test_purge_within_a_batch_drops_what_came_before_it(appview_dsn: str) -> None:
    log = LogWriter()

    async def body(pool: asyncpg.Pool) -> None:
        await append(
            pool,
            [
                log.create(A, ENTRY, "3kaaaaaaaaaa2", entry()),
                log.create(A, ENTRY, "3kaaaaaaaaab2", entry(name=1)),
                log.account(A, False, "deleted"),
                log.create(A, ENTRY, "3kaaaaaaaaac2", entry()),  # skipped: gone
                log.account(A, True),
                log.create(A, ENTRY, "3kaaaaaaaaad2", entry()),
            ],
        )
        await fold(pool)
        assert [
            r["rkey"] for r in await pool.fetch("SELECT rkey FROM appview_entries")
        ] == ["3kaaaaaaaaad2"]
        assert await pool.fetchval("SELECT count(*) FROM appview_dead_letters") == 0

    run(appview_dsn, body)


def test_deactivated_account_is_hidden_not_purged(appview_dsn: str) -> None:
    log = LogWriter()

    async def body(pool: asyncpg.Pool) -> None:
        await _publish_everything(pool, log, A)
        await fold(pool)
        before = await _counts(pool, A)
        for st in ("deactivated", "suspended"):
            await append(pool, [log.account(A, False, st)])
            await fold(pool)
            acct = await pool.fetchrow(
                "SELECT active, status FROM appview_accounts WHERE did = $1", A
            )
            assert (acct["active"], acct["status"]) == (False, st)
            assert await _counts(pool, A) == before
        await append(pool, [log.account(A, True)])
        await fold(pool)
        acct = await pool.fetchrow(
            "SELECT active, status FROM appview_accounts WHERE did = $1", A
        )
        assert (acct["active"], acct["status"]) == (True, None)
        assert await pool.fetchval("SELECT count(*) FROM appview_repos") == 0

    run(appview_dsn, body)


def test_sync_event_past_the_high_water_mark_queues_a_backfill(
    appview_dsn: str,
) -> None:
    log = LogWriter()

    def sync(did: str, rev: str) -> dict[str, Any]:
        seq = log.identity(did, None)["seq"]
        return {
            "seq": seq,
            "event_type": "sync",
            "repo": did,
            "rev": rev,
            "record": {"did": did, "rev": rev},
            "valid": None,
        }

    async def body(pool: asyncpg.Pool) -> None:
        await append(pool, [log.create(A, ENTRY, "3kaaaaaaaaaa2", entry())])
        await append(pool, [sync(A, tid(1)), sync(B, tid(50))])
        indexer = await fold(pool)
        assert indexer.stats.stale == 1
        states = {
            r["did"]: r["state"]
            for r in await pool.fetch("SELECT did, state FROM appview_repos")
        }
        assert states == {B: "pending"}

    run(appview_dsn, body)


# -- backfill ---------------------------------------------------------------------------------


def snap(*items: tuple[str, str, Any]) -> list[tuple[str, str, str, Any]]:
    return [(c, k, CID, r) for c, k, r in items]


def test_snapshot_replaces_the_repository(appview_dsn: str) -> None:
    log = LogWriter()

    async def body(pool: asyncpg.Pool) -> None:
        # indexed live before: two entries and a schema
        await append(
            pool,
            [
                log.create(A, ENTRY, "3kaaaaaaaaaa2", entry(name="old a")),
                log.create(A, ENTRY, "3kaaaaaaaaab2", entry(name="old b")),
                log.create(A, SCHEMA, "CellCrop:1.0.0", schema()),
                log.create(B, ENTRY, "3kaaaaaaaaaa2", entry(name="other repo")),
            ],
        )
        await fold(pool)
        calls: list[tuple[str, str]] = []

        async def hook(conn: asyncpg.Connection, did: str, name: str) -> None:
            calls.append((did, name))

        async with pool.acquire() as conn:
            await begin_backfill(conn, A, "https://pds.example")
            assert (
                await conn.fetchval("SELECT state FROM appview_repos WHERE did = $1", A)
                == "backfilling"
            )
            result = await apply_snapshot(
                conn,
                A,
                tid(10),
                snap(
                    (ENTRY, "3kaaaaaaaaaa2", entry(name="new a")),  # updated
                    (ENTRY, "3kaaaaaaaaac2", entry(name="new c")),  # created
                    (ENTRY, "3kaaaaaaaaad2", entry(name=3)),  # refused
                    ("app.bsky.feed.post", "3kaaaaaaaaae2", {"text": "hi"}),
                ),
                "https://pds.example",
                history=hook,
            )
        assert (result.state, result.records, result.rejected, result.skipped) == (
            "synced",
            2,
            1,
            1,
        )
        assert result.removed == 2  # old b and the schema are not in the snapshot
        names = {
            r["rkey"]: (r["name"], r["rev"], r["seq"])
            for r in await pool.fetch(
                "SELECT rkey, name, rev, seq FROM appview_entries WHERE did = $1", A
            )
        }
        assert names == {
            "3kaaaaaaaaaa2": ("new a", tid(10), None),
            "3kaaaaaaaaac2": ("new c", tid(10), None),
        }
        assert await pool.fetchval("SELECT count(*) FROM appview_schemas") == 0
        assert calls == [(A, "CellCrop")]
        dead = await pool.fetchrow(
            "SELECT seq, idx, rkey, rule FROM appview_dead_letters"
        )
        assert dict(dead) == {
            "seq": None,
            "idx": None,
            "rkey": "3kaaaaaaaaad2",
            "rule": "AV_INVALID_RECORD",
        }
        repo = await pool.fetchrow("SELECT * FROM appview_repos WHERE did = $1", A)
        assert (repo["state"], repo["rev"], repo["records"], repo["attempts"]) == (
            "synced",
            tid(10),
            2,
            1,
        )
        assert await pool.fetchval(
            "SELECT rev FROM appview_accounts WHERE did = $1", A
        ) == tid(10)
        assert (
            await pool.fetchval("SELECT name FROM appview_entries WHERE did = $1", B)
            == "other repo"
        )

    run(appview_dsn, body)


def test_live_rows_are_buffered_during_a_backfill_and_drained_by_rev(
    appview_dsn: str,
) -> None:
    log = LogWriter()

    async def body(pool: asyncpg.Pool) -> None:
        async with pool.acquire() as conn:
            await begin_backfill(conn, A, "pds")
        r1 = log.create(A, ENTRY, "3kaaaaaaaaaa2", entry(name="r1"))
        r2 = log.update(A, ENTRY, "3kaaaaaaaaaa2", entry(name="r2"))
        other = log.create(B, ENTRY, "3kaaaaaaaaaa2", entry(name="b live"))
        r4 = log.create(A, ENTRY, "3kaaaaaaaaab2", entry(name="r4"))
        r5 = log.update(A, ENTRY, "3kaaaaaaaaaa2", entry(name="r5"))
        ident = log.identity(A, "alice.test")
        r7 = log.delete(A, ENTRY, "3kaaaaaaaaab2")
        r8 = log.create(A, ENTRY, "3kaaaaaaaaac2", entry(name="r8"))
        await append(pool, [r1, r2, other, r4, r5, ident, r7, r8])
        indexer = await fold(pool)
        assert indexer.stats.buffered == 6
        # nothing of A is indexed yet; B is; A's identity is applied at once
        assert (
            await pool.fetchval(
                "SELECT count(*) FROM appview_entries WHERE did = $1", A
            )
            == 0
        )
        assert await pool.fetchval(
            "SELECT name FROM appview_entries WHERE did = $1", B
        ) == ("b live")
        assert await pool.fetchval(
            "SELECT handle FROM appview_accounts WHERE did = $1", A
        ) == ("alice.test")
        pending = [
            (r["seq"], r["rev"], r["verified"])
            for r in await pool.fetch("SELECT * FROM appview_pending ORDER BY seq, idx")
        ]
        assert pending == [
            (r["seq"], r["rev"], True) for r in (r1, r2, r4, r5, r7, r8)
        ][:4] + [(r7["seq"], r7["rev"], True), (r8["seq"], r8["rev"], True)]
        # the snapshot was read at r4's commit: it holds r2's version and r4's record
        async with pool.acquire() as conn:
            result = await apply_snapshot(
                conn,
                A,
                r4["rev"],
                snap(
                    (ENTRY, "3kaaaaaaaaaa2", entry(name="r2")),
                    (ENTRY, "3kaaaaaaaaab2", entry(name="r4")),
                ),
                "pds",
                history=None,
            )
        assert result.pending.stale == 3  # r1, r2, r4
        assert result.pending.upserted == 2 and result.pending.removed == 1
        got = {
            r["rkey"]: (r["name"], r["seq"])
            for r in await pool.fetch(
                "SELECT rkey, name, seq FROM appview_entries WHERE did = $1", A
            )
        }
        assert got == {
            "3kaaaaaaaaaa2": ("r5", r5["seq"]),
            "3kaaaaaaaaac2": ("r8", r8["seq"]),
        }
        assert await pool.fetchval("SELECT count(*) FROM appview_pending") == 0
        # after the snapshot, live rows apply directly
        r9 = log.update(A, ENTRY, "3kaaaaaaaaac2", entry(name="r9"))
        await append(pool, [r9])
        indexer = await fold(pool)
        assert indexer.stats.buffered == 0
        assert (
            await pool.fetchval(
                "SELECT name FROM appview_entries WHERE rkey = '3kaaaaaaaaac2'"
            )
            == "r9"
        )

    run(appview_dsn, body)


def test_account_events_during_a_backfill_apply_in_order_after_it(
    appview_dsn: str,
) -> None:
    log = LogWriter()

    async def body(pool: asyncpg.Pool) -> None:
        async with pool.acquire() as conn:
            await begin_backfill(conn, A, "pds")
        await append(pool, [log.account(A, False, "takendown")])
        await fold(pool)
        async with pool.acquire() as conn:
            result = await apply_snapshot(
                conn,
                A,
                tid(0),
                snap((ENTRY, "3kaaaaaaaaaa2", entry())),
                "pds",
                history=None,
            )
        # the snapshot was written, then the takedown buffered after it purged it
        assert result.records == 1 and result.pending.purged == 1
        assert await pool.fetchval("SELECT count(*) FROM appview_entries") == 0
        # a snapshot of an account already gone indexes nothing
        async with pool.acquire() as conn:
            again = await apply_snapshot(
                conn,
                A,
                tid(5),
                snap((ENTRY, "3kaaaaaaaaaa2", entry())),
                "pds",
                history=None,
            )
        assert (again.state, again.records) == ("gone", 0)
        assert await pool.fetchval("SELECT count(*) FROM appview_entries") == 0

    run(appview_dsn, body)


@pytest.mark.parametrize("chunk", [1, 1000])
def test_a_takedown_and_reactivation_drained_keep_what_follows(
    appview_dsn: str, chunk: int
) -> None:
    """Buffered: a record, a takedown, a reactivation, a record. Drained one row at
    a time or all at once: the purge drops what came before it only."""
    log = LogWriter()

    async def body(pool: asyncpg.Pool) -> None:
        async with pool.acquire() as conn:
            await begin_backfill(conn, A, "pds")
        await append(
            pool,
            [
                log.create(A, ENTRY, "3kaaaaaaaaab2", entry(name="before")),
                log.account(A, False, "takendown"),
                log.account(A, True),
                log.create(A, ENTRY, "3kaaaaaaaaac2", entry(name="after")),
            ],
        )
        await fold(pool)
        async with pool.acquire() as conn:
            result = await apply_snapshot(
                conn,
                A,
                tid(0),
                snap((ENTRY, "3kaaaaaaaaaa2", entry(name="snap"))),
                "pds",
                history=None,
                chunk=chunk,
            )
        assert result.pending.consumed == 4
        names = [
            r["name"] for r in await pool.fetch("SELECT name FROM appview_entries")
        ]
        assert names == ["after"]
        assert await pool.fetchval("SELECT count(*) FROM appview_pending") == 0
        # reactivated after a purge (the snapshot's records went with it): queued
        # for another backfill
        assert result.state == "pending"
        assert await pool.fetchval("SELECT state FROM appview_repos") == "pending"

    run(appview_dsn, body)


def test_failed_backfill_applies_what_was_buffered(appview_dsn: str) -> None:
    log = LogWriter()

    async def body(pool: asyncpg.Pool) -> None:
        async with pool.acquire() as conn:
            await begin_backfill(conn, A, "pds")
        await append(
            pool,
            [
                log.create(A, ENTRY, "3kaaaaaaaaaa2", entry(name="one")),
                log.update(A, ENTRY, "3kaaaaaaaaaa2", entry(name="two")),
            ],
        )
        await fold(pool)
        async with pool.acquire() as conn:
            got = await fail_backfill(conn, A, "getRepo: HTTP 500", history=None)
        assert got.consumed == 2 and got.upserted == 1
        assert await pool.fetchval("SELECT name FROM appview_entries") == "two"
        repo = await pool.fetchrow("SELECT state, error FROM appview_repos")
        assert dict(repo) == {"state": "failed", "error": "getRepo: HTTP 500"}
        assert await pool.fetchval("SELECT count(*) FROM appview_pending") == 0

    run(appview_dsn, body)


def test_a_snapshot_older_than_the_index_is_not_applied(appview_dsn: str) -> None:
    """A validly signed but older snapshot (a lagging PDS, a replayed CAR) must
    not bring back a record deleted live since: its rev is below the rev folded
    for the DID, so nothing of it is applied, what was buffered during the read is
    applied as live rows, and the repository is queued ``pending`` again."""
    log = LogWriter()

    async def body(pool: asyncpg.Pool) -> None:
        c1 = log.create(A, ENTRY, "3kaaaaaaaaaa2", entry(name="alpha"))
        c2 = log.create(A, ENTRY, "3kaaaaaaaaab2", entry(name="beta"))
        await append(pool, [c1, c2])
        await fold(pool)
        old_rev = c2["rev"]  # the repository as of c2
        deleted = log.delete(A, ENTRY, "3kaaaaaaaaaa2")
        await append(pool, [deleted])
        await fold(pool)
        async with pool.acquire() as conn:
            await begin_backfill(conn, A, "https://pds.example")
        live = log.create(A, ENTRY, "3kaaaaaaaaac2", entry(name="during"))
        await append(pool, [live])
        assert (await fold(pool)).stats.buffered == 1
        async with pool.acquire() as conn:
            result = await apply_snapshot(
                conn,
                A,
                old_rev,
                snap(
                    (ENTRY, "3kaaaaaaaaaa2", entry(name="alpha")),
                    (ENTRY, "3kaaaaaaaaab2", entry(name="beta")),
                ),
                "https://pds.example",
                history=None,
            )
        assert result.state == "stale" and result.records == 0
        assert result.indexed_rev == deleted["rev"] > old_rev
        assert result.pending.upserted == 1
        names = {
            r["rkey"]: r["name"]
            for r in await pool.fetch("SELECT rkey, name FROM appview_entries")
        }
        assert names == {"3kaaaaaaaaab2": "beta", "3kaaaaaaaaac2": "during"}
        repo = await pool.fetchrow("SELECT state, error FROM appview_repos")
        assert repo["state"] == "pending"
        assert repo["error"].startswith("AV_STALE_SNAPSHOT: snapshot rev " + old_rev)
        assert await pool.fetchval("SELECT count(*) FROM appview_pending") == 0
        # live rows apply directly again; a snapshot at the folded rev is applied
        async with pool.acquire() as conn:
            await begin_backfill(conn, A, "https://pds.example")
            again = await apply_snapshot(
                conn,
                A,
                live["rev"],
                snap(
                    (ENTRY, "3kaaaaaaaaab2", entry(name="beta")),
                    (ENTRY, "3kaaaaaaaaac2", entry(name="during")),
                ),
                "https://pds.example",
                history=None,
            )
        assert again.state == "synced" and again.removed == 0
        assert await pool.fetchval("SELECT count(*) FROM appview_entries") == 2

    run(appview_dsn, body)


def test_snapshot_keeps_records_newer_than_itself(appview_dsn: str) -> None:
    """Without a rev high-water mark for the DID (a database indexed before it
    existed), records newer than the snapshot are kept, record by record."""
    log = LogWriter()

    async def body(pool: asyncpg.Pool) -> None:
        await append(
            pool,
            [log.create(A, ENTRY, f"3kaaaaaaaaa{c}2", entry(name=c)) for c in "ab"],
        )
        await fold(pool)  # revs tid(1), tid(2)
        await pool.execute("UPDATE appview_accounts SET rev = NULL")
        async with pool.acquire() as conn:
            result = await apply_snapshot(
                conn,
                A,
                tid(1),
                snap((ENTRY, "3kaaaaaaaaaa2", entry(name="snap"))),
                "pds",
                history=None,
            )
        assert result.kept_newer == 1 and result.removed == 0
        got = {
            r["rkey"]: r["name"]
            for r in await pool.fetch("SELECT rkey, name FROM appview_entries")
        }
        # a: the snapshot's rev is not newer than the live one (equal commit): kept
        assert got == {"3kaaaaaaaaaa2": "a", "3kaaaaaaaaab2": "b"}

    run(appview_dsn, body)


# -- dates, references by handle ---------------------------------------------------------


def test_a_backfill_of_unchanged_records_keeps_their_dates(appview_dsn: str) -> None:
    """A snapshot that holds a record at the CID already indexed advances its rev
    but does not re-date it (``indexed_at`` moves only with the CID, and
    ``first_indexed_at`` never): an old entry must not become the "newest"
    because its repository was read again."""
    log = LogWriter()

    async def dates(pool: asyncpg.Pool) -> dict[str, tuple[Any, Any, str]]:
        return {
            r["rkey"]: (r["indexed_at"], r["first_indexed_at"], r["rev"])
            for r in await pool.fetch(
                "SELECT rkey, indexed_at, first_indexed_at, rev FROM appview_entries"
            )
        }

    async def body(pool: asyncpg.Pool) -> None:
        rows = [log.create(A, ENTRY, f"3kaaaaaaaaa{c}2", entry(name=c)) for c in "ab"]
        await append(pool, rows)
        await fold(pool)
        before = await dates(pool)
        assert all(i == f for i, f, _ in before.values())
        async with pool.acquire() as conn:
            await begin_backfill(conn, A, "pds")
            result = await apply_snapshot(
                conn,
                A,
                tid(10),
                [
                    (ENTRY, "3kaaaaaaaaaa2", rows[0]["cid"], entry(name="a")),
                    (ENTRY, "3kaaaaaaaaab2", "bafyreichanged", entry(name="b2")),
                ],
                "pds",
                history=None,
            )
        assert result.state == "synced"
        after = await dates(pool)
        # a: same CID, rev advanced, dates kept
        assert after["3kaaaaaaaaaa2"] == (*before["3kaaaaaaaaaa2"][:2], tid(10))
        # b: a new version: indexed_at moves, first_indexed_at does not
        assert after["3kaaaaaaaaab2"][0] > before["3kaaaaaaaaab2"][0]
        assert after["3kaaaaaaaaab2"][1] == before["3kaaaaaaaaab2"][1]
        # a live update to the same CID does not re-date it either
        same = log.update(A, ENTRY, "3kaaaaaaaaaa2", entry(name="a"))
        await append(pool, [dict(same, cid=rows[0]["cid"])])
        await fold(pool)
        assert (await dates(pool))["3kaaaaaaaaaa2"][:2] == before["3kaaaaaaaaaa2"][:2]

    run(appview_dsn, body)


def test_first_indexed_at_is_added_to_an_older_database(appview_dsn: str) -> None:
    """Migrating a database made before ``first_indexed_at`` adds it to every
    record table, filled from ``indexed_at``, with the "recent" indexes."""
    from atdata_appview.schema import migrate

    log = LogWriter()

    async def body(pool: asyncpg.Pool) -> None:
        await append(
            pool,
            [
                log.create(A, SCHEMA, "CellCrop:1.0.0", schema()),
                log.create(A, ENTRY, "3kaaaaaaaaaa2", entry()),
                log.create(A, LENS, "3kaaaaaaaaab2", lens()),
            ],
        )
        await fold(pool)
        for table in RECORD_TABLES.values():
            await pool.execute(
                f"ALTER TABLE {table} DROP COLUMN first_indexed_at; "
                f"UPDATE {table} SET indexed_at = '2020-01-02T03:04:05Z'"
            )
        async with pool.acquire() as conn:
            await migrate(conn)
            await migrate(conn)  # idempotent: not filled again
        for table in RECORD_TABLES.values():
            rows = await pool.fetch(f"SELECT indexed_at, first_indexed_at FROM {table}")
            assert all(r["first_indexed_at"] == r["indexed_at"] for r in rows), table
        names = {
            r["indexname"]: r["indexdef"]
            for r in await pool.fetch(
                "SELECT indexname, indexdef FROM pg_indexes "
                "WHERE indexname LIKE '%first_indexed'"
            )
        }
        assert set(names) == {
            "appview_entries_first_indexed",
            "appview_schemas_first_indexed",
            "appview_lenses_first_indexed",
        }
        assert all(
            "(first_indexed_at DESC, did DESC, rkey DESC)" in d for d in names.values()
        )

    run(appview_dsn, body)


def test_references_by_handle_are_stored_in_did_form(appview_dsn: str) -> None:
    """A schemaRef (and a lens's sourceSchema/targetSchema, a label's datasetUri,
    a verification's lens) naming its target by handle is stored in DID form when
    the handle is verified for a DID, so it joins; the record keeps the text as
    published. A handle only claimed (any PDS can claim any handle in an
    #identity) is not enough: it stays in handle form (lower-cased) until the
    handle is verified, then :func:`canonicalize_refs` (the indexer's loop)
    rewrites it; a later move of the handle does not rewrite references already
    resolved."""
    log = LogWriter()
    by_handle = "at://Alice.TEST/science.alt.dataset.schema/CellCrop:1.0.0"
    thumb = "at://bob.test/science.alt.dataset.schema/Thumb:1.0.0"

    async def refs(pool: asyncpg.Pool) -> dict[str, Any]:
        row = await pool.fetchrow(
            "SELECT (SELECT schema_ref FROM appview_entries WHERE rkey = "
            "'3kaaaaaaaaaa2') AS schema_ref, (SELECT ARRAY[source_schema, "
            "target_schema] FROM appview_lenses) AS lens, (SELECT dataset_uri FROM "
            "appview_labels) AS dataset, (SELECT lens_uri FROM "
            "appview_lens_verifications) AS verified_lens"
        )
        return dict(row, lens=tuple(row["lens"]))

    async def verify(pool: asyncpg.Pool, did: str, handle: str) -> None:
        """What the handle verifier (atdata_appview.handles) writes."""
        await pool.execute(
            "INSERT INTO appview_accounts (did, verified_handle, handle_checked, "
            "handle_checked_at) VALUES ($1, $2, $2, now()) ON CONFLICT (did) DO "
            "UPDATE SET verified_handle = $2, handle_checked = $2, "
            "handle_checked_at = now()",
            did,
            handle,
        )

    async def body(pool: asyncpg.Pool) -> None:
        await verify(pool, A, "alice.test")
        await append(
            pool,
            [
                log.identity(A, "alice.test"),
                log.identity(B, "bob.test"),  # claimed, not verified
                log.create(A, SCHEMA, "CellCrop:1.0.0", schema()),
                log.create(A, ENTRY, "3kaaaaaaaaaa2", entry(schemaRef=by_handle)),
                log.create(
                    A,
                    LENS,
                    "3kaaaaaaaaab2",
                    lens(sourceSchema=by_handle, targetSchema=thumb),
                ),
                log.create(
                    A,
                    LABEL,
                    "3kaaaaaaaaac2",
                    label(datasetUri=f"at://alice.test/{ENTRY}/3kaaaaaaaaaa2"),
                ),
                log.create(
                    A,
                    VERIFICATION,
                    "3kaaaaaaaaad2",
                    verification(lens=f"at://Bob.Test/{LENS}/3kaaaaaaaaab2"),
                ),
            ],
        )
        indexer = await fold(pool)
        assert indexer.stats.dead_letters == 0
        got = await refs(pool)
        assert got["schema_ref"] == schema_uri(A)
        assert got["lens"] == (schema_uri(A), thumb)
        assert got["dataset"] == f"at://{A}/{ENTRY}/3kaaaaaaaaaa2"
        assert got["verified_lens"] == f"at://bob.test/{LENS}/3kaaaaaaaaab2"
        assert (
            await pool.fetchval(
                "SELECT s.name FROM appview_entries e JOIN appview_schemas s "
                "ON s.uri = e.schema_ref"
            )
            == "CellCrop"
        )
        published = await pool.fetchval(
            "SELECT record->>'schemaRef' FROM appview_entries"
        )
        assert published == by_handle
        # a hostile claim of alice.test by C changes nothing: not verified
        await append(
            pool,
            [
                log.identity(C, "alice.test"),
                log.create(C, ENTRY, "3kaaaaaaaaae2", entry(schemaRef=by_handle)),
            ],
        )
        await fold(pool)
        assert await pool.fetchval(
            "SELECT schema_ref FROM appview_entries WHERE did = $1", C
        ) == schema_uri(A)
        # bob.test verified: the references still in handle form follow
        async with pool.acquire() as conn:
            assert await ix.canonicalize_refs(conn) == 0
        await verify(pool, B, "bob.test")
        async with pool.acquire() as conn:
            assert await ix.canonicalize_refs(conn) == 2
            assert await ix.canonicalize_refs(conn) == 0
        got = await refs(pool)
        assert got["lens"] == (schema_uri(A), schema_uri(B, "Thumb"))
        assert got["verified_lens"] == f"at://{B}/{LENS}/3kaaaaaaaaab2"
        # alice.test verified for C now: references already resolved stay A's
        await pool.execute(
            "UPDATE appview_accounts SET verified_handle = NULL WHERE did = $1", A
        )
        await verify(pool, C, "alice.test")
        async with pool.acquire() as conn:
            assert await ix.canonicalize_refs(conn) == 0
        assert (await refs(pool))["schema_ref"] == schema_uri(A)
        # a snapshot resolves them too
        async with pool.acquire() as conn:
            await apply_snapshot(
                conn,
                B,
                tid(50),
                snap((ENTRY, "3kaaaaaaaaaz2", entry(schemaRef=thumb))),
                "pds",
                history=None,
            )
        assert await pool.fetchval(
            "SELECT schema_ref FROM appview_entries WHERE did = $1", B
        ) == schema_uri(B, "Thumb")

    run(appview_dsn, body)


def test_canonicalize_refs_reads_only_rows_in_handle_form(appview_dsn: str) -> None:
    """The re-canonicalisation of one newly verified handle reads the rows that
    name it (partial expression index), not the table: 2000 entries in DID form,
    3 in handle form."""
    log = LogWriter()

    async def body(pool: asyncpg.Pool) -> None:
        rows = [log.create(A, ENTRY, f"3kaa{i:09d}", entry()) for i in range(2000)]
        rows += [
            log.create(
                A,
                ENTRY,
                f"3kbb{i:09d}",
                entry(schemaRef=f"at://h{i}.test/{SCHEMA}/CellCrop:1.0.0"),
            )
            for i in range(3)
        ]
        await append(pool, rows)
        await fold(pool)
        await pool.execute(
            "INSERT INTO appview_accounts (did, verified_handle, handle_checked_at) "
            "VALUES ($1, 'h1.test', now())",
            B,
        )
        await pool.execute("ANALYZE appview_entries; ANALYZE appview_accounts")
        since = await pool.fetchval("SELECT now() - interval '1 minute'")
        sql = ix._RECANONICAL_SQL[("appview_entries", "schema_ref")]
        async with pool.acquire() as conn:
            explained = conn.transaction()
            await explained.start()
            raw = await conn.fetchval("EXPLAIN (ANALYZE, FORMAT JSON) " + sql, since)
            await explained.rollback()  # EXPLAIN ANALYZE ran the UPDATE
            plan = orjson.loads(raw) if isinstance(raw, str) else raw
        scans = []
        stack = [plan[0]["Plan"]]
        while stack:
            node = stack.pop()
            stack.extend(node.get("Plans", []))
            if (
                node.get("Relation Name") == "appview_entries"
                and "Scan" in (node["Node Type"])
            ):
                scans.append((node["Node Type"], node.get("Index Name")))
        assert scans and all(
            kind in ("Index Scan", "Bitmap Heap Scan") for kind, _ in scans
        ), scans
        async with pool.acquire() as conn:
            assert await ix.canonicalize_refs(conn, since=since) == 1
        assert (
            await pool.fetchval(
                "SELECT count(*) FROM appview_entries WHERE schema_ref LIKE 'at://h%'"
            )
            == 2
        )

    run(appview_dsn, body)


# -- the ingest cursor reset, log gaps --------------------------------------------------------


def test_a_new_relay_rewinds_the_cursor_and_queues_backfills(appview_dsn: str) -> None:
    """The ingester moved to another relay (its cursor reset, seqs restarting
    low): the AppView notices the source change, folds the new seq space from the
    start, skips the log rows stored before the ingester's restart (the old
    space: replaying its #identity would bring an old handle back), keeps what it
    indexed and queues every known repository for a backfill; ``status`` says so."""
    import itertools

    from atdata_appview import cli
    from atdata_appview.config import Settings

    old = LogWriter(start=1000)
    new = LogWriter(start=1)
    new._rev = itertools.count(1000)  # the repository moved on

    async def body(pool: asyncpg.Pool) -> None:
        await pool.execute("UPDATE ingest_cursor SET source = 'wss://old.example'")
        await append(
            pool,
            [
                old.create(A, ENTRY, "3kaaaaaaaaaa2", entry(name="old relay")),
                old.create(B, ENTRY, "3kaaaaaaaaaa2", entry(name="b")),
                old.identity(A, "old.test"),
            ],
        )
        await fold(pool)
        assert await pool.fetchval("SELECT seq FROM appview_cursor") == 1002
        await pool.execute(
            "UPDATE ingest_cursor SET last_seq = 0, source = 'wss://new.example', "
            "ingester_started_at = now()"
        )
        await append(
            pool,
            [
                new.create(A, ENTRY, "3kaaaaaaaaab2", entry(name="new relay")),
                dict(new.identity(A, "alice.test"), seq=1001),
                dict(new.create(A, ENTRY, "3kaaaaaaaaac2", entry(name="c")), seq=1003),
            ],
        )
        indexer = await fold(pool)
        assert indexer.stats.consumed == 3
        names = sorted(
            r["name"] for r in await pool.fetch("SELECT name FROM appview_entries")
        )
        assert names == ["b", "c", "new relay", "old relay"]
        assert (
            await pool.fetchval("SELECT handle FROM appview_accounts WHERE did = $1", A)
            == "alice.test"
        )
        states = dict(await pool.fetch("SELECT did, state FROM appview_repos"))
        assert states == {A: "pending", B: "pending"}
        async with pool.acquire() as conn:
            got = await status(conn)
        assert got["cursor"]["seq"] == 1003 and got["lag"] == 0
        assert got["ingest_source"] == "wss://new.example"
        assert got["resets"]["count"] == 1 and got["resets"]["horizon"] is not None
        assert "wss://old.example" in got["resets"]["reason"]
        async with pool.acquire() as conn:
            report = await cli.status_report(conn, Settings(dsn=appview_dsn))
        assert "RESETS      1 ingest cursor reset(s)" in cli._status_text(report)

    run(appview_dsn, body)


def test_an_ingest_cursor_set_back_is_noticed(appview_dsn: str) -> None:
    """Same relay, ``last_seq`` set below the AppView's cursor (no restart time
    known): the cursor rewinds, nothing new is skipped, stale replays are not
    applied (the rev high-water mark)."""
    import itertools

    old = LogWriter(start=1000)
    new = LogWriter(start=1)
    new._rev = itertools.count(1000)

    async def body(pool: asyncpg.Pool) -> None:
        await append(pool, [old.create(A, ENTRY, "3kaaaaaaaaaa2", entry(name="old"))])
        await fold(pool)
        await pool.execute("UPDATE ingest_cursor SET last_seq = 0")
        await append(pool, [new.create(A, ENTRY, "3kaaaaaaaaab2", entry(name="new"))])
        await fold(pool)
        names = sorted(
            r["name"] for r in await pool.fetch("SELECT name FROM appview_entries")
        )
        assert names == ["new", "old"]
        async with pool.acquire() as conn:
            got = await status(conn)
        assert got["cursor"]["seq"] == 1 and got["resets"]["count"] == 1
        assert "below the AppView cursor 1000" in got["resets"]["reason"]
        assert got["resets"]["horizon"] is None
        assert await pool.fetchval("SELECT state FROM appview_repos") == "pending"
        # the old row (seq 1000) comes round again once the new space passes it:
        # a stale commit, skipped
        await append(
            pool, [dict(new.create(B, ENTRY, "3kaaaaaaaaaa2", entry()), seq=1001)]
        )
        indexer = await fold(pool)
        assert indexer.stats.stale == 1 and indexer.stats.upserted == 1

    run(appview_dsn, body)


def test_rows_dropped_by_retention_before_folding_are_reported(
    appview_dsn: str,
) -> None:
    """The log's retention dropped rows the AppView had not folded: ``status``
    says the cursor is behind the oldest retained row (``atdata-appview status``
    too); the next batch records the gap and queues every known repository for a
    backfill."""
    from atdata_appview import cli
    from atdata_appview.config import Settings

    log = LogWriter()

    async def body(pool: asyncpg.Pool) -> None:
        await append(pool, [log.create(A, ENTRY, "3kaaaaaaaaaa2", entry())])
        await fold(pool)
        await append(
            pool,
            [
                log.create(A, ENTRY, "3kaaaaaaaaab2", entry()),
                log.create(B, ENTRY, "3kaaaaaaaaab2", entry()),
                log.create(C, ENTRY, "3kaaaaaaaaac2", entry()),
            ],
        )
        await pool.execute("DELETE FROM ingest_events WHERE seq <= 3")
        settings = Settings(dsn=appview_dsn)
        async with pool.acquire() as conn:
            before = await status(conn)
            report = await cli.status_report(conn, settings)
        assert before["behind_retention"] and before["oldest_log_seq"] == 4
        assert before["gaps"]["count"] == 0
        assert report["retention"] == {"oldest_seq": 4, "behind": True}
        assert "BEHIND      the log's oldest row is seq 4" in cli._status_text(report)
        await fold(pool)
        async with pool.acquire() as conn:
            after = await status(conn)
            report = await cli.status_report(conn, settings)
        assert report["retention"]["behind"] is False
        assert report["cursor"]["gaps"] == 1 and report["cursor"]["gap_seqs"] == [1, 4]
        text = cli._status_text(report)
        assert "GAPS        1 log gap(s)" in text and "BEHIND" not in text
        assert after["gaps"] == {"count": 1, "at": after["gaps"]["at"], "seqs": [1, 4]}
        assert after["gaps"]["at"] is not None and not after["behind_retention"]
        states = dict(await pool.fetch("SELECT did, state FROM appview_repos"))
        assert states == {A: "pending"}  # the repositories the index knows
        assert (
            await pool.fetchval(
                "SELECT count(*) FROM appview_entries WHERE did = $1", C
            )
            == 1
        )
        await fold(pool)  # reported once
        async with pool.acquire() as conn:
            assert (await status(conn))["gaps"]["count"] == 1

    run(appview_dsn, body)


# -- abandoned backfills, the drain's policy -------------------------------------------------


def test_an_abandoned_backfill_is_expired_and_its_rows_applied(
    appview_dsn: str,
) -> None:
    """A backfiller that died between ``begin_backfill`` and its snapshot leaves
    the repository ``backfilling``; past the lease its buffered rows are applied
    as live ones and it is marked failed, by :func:`expire_backfills` and by the
    indexer's loop; a backfill within its lease is left alone."""
    log = LogWriter()

    async def body(pool: asyncpg.Pool) -> None:
        async with pool.acquire() as conn:
            await begin_backfill(conn, A, "pds")
            await begin_backfill(conn, B, "pds")
        await append(
            pool,
            [
                log.create(A, ENTRY, "3kaaaaaaaaaa2", entry(name="a live")),
                log.create(B, ENTRY, "3kaaaaaaaaaa2", entry(name="b live")),
            ],
        )
        assert (await fold(pool)).stats.buffered == 2
        async with pool.acquire() as conn:
            assert await ix.expire_backfills(conn, lease_seconds=3600) == []
        await pool.execute(
            "UPDATE appview_repos SET updated_at = now() - interval '2 hours' "
            "WHERE did = $1",
            A,
        )
        async with pool.acquire() as conn:
            assert await ix.expire_backfills(conn, lease_seconds=3600) == [A]
        repo = await pool.fetchrow(
            "SELECT state, error FROM appview_repos WHERE did = $1", A
        )
        assert repo["state"] == "failed"
        assert repo["error"].startswith("AV_LEASE_EXPIRED: ")
        assert (
            await pool.fetchval("SELECT name FROM appview_entries WHERE did = $1", A)
            == "a live"
        )
        # B: the indexer's loop ends it (first thing, then every minute)
        await pool.execute(
            "UPDATE appview_repos SET updated_at = now() - interval '2 hours' "
            "WHERE did = $1",
            B,
        )
        indexer = Indexer(pool, history=None, lease_seconds=3600, listen=False)
        stop = asyncio.Event()
        task = asyncio.create_task(indexer.run(stop))
        await _until(pool, "SELECT count(*) FROM appview_pending", 0)
        stop.set()
        await task
        assert (
            await pool.fetchval("SELECT state FROM appview_repos WHERE did = $1", B)
            == "failed"
        )
        assert (
            await pool.fetchval("SELECT name FROM appview_entries WHERE did = $1", B)
            == "b live"
        )

    run(appview_dsn, body)


@pytest.mark.parametrize("live_policy", [False, True])
def test_a_drain_follows_the_live_folds_signature_policy(
    appview_dsn: str, live_policy: bool
) -> None:
    """Rows buffered during a backfill are applied after it with the policy of
    the live fold that buffered them (recorded in ``appview_cursor``), not a
    default of the backfiller's: an unchecked row is indexed exactly when it
    would have been without the backfill."""
    log = LogWriter()

    async def body(pool: asyncpg.Pool) -> None:
        first = log.create(A, ENTRY, "3kaaaaaaaaaa2", entry(name="v1"))
        await append(pool, [first])
        await fold(pool, require_verified=live_policy)
        async with pool.acquire() as conn:
            await begin_backfill(conn, A, "pds")
        unchecked = log.update(
            A, ENTRY, "3kaaaaaaaaaa2", entry(name="v2"), verified=None
        )
        await append(pool, [unchecked])
        assert (await fold(pool, require_verified=live_policy)).stats.buffered == 1
        assert (
            await pool.fetchval("SELECT require_verified FROM appview_cursor")
            is live_policy
        )
        async with pool.acquire() as conn:
            result = await apply_snapshot(
                conn,
                A,
                first["rev"],
                snap((ENTRY, "3kaaaaaaaaaa2", entry(name="v1"))),
                "pds",
                history=None,
            )
        name = await pool.fetchval("SELECT name FROM appview_entries")
        rules = [
            r["rule"] for r in await pool.fetch("SELECT rule FROM appview_dead_letters")
        ]
        if live_policy:
            assert (name, rules, result.pending.unverified) == (
                "v1",
                ["AV_UNCHECKED"],
                1,
            )
        else:
            assert (name, rules, result.pending.upserted) == ("v2", [], 1)

    run(appview_dsn, body)


# -- the race between the fold and a snapshot ------------------------------------------------


async def _wait_blocked(pool: asyncpg.Pool, pid: int) -> None:
    """Until backend ``pid`` waits for a lock (fails after 60 s: a hang)."""
    for _ in range(6000):
        state = await pool.fetchval(
            "SELECT wait_event_type FROM pg_stat_activity WHERE pid = $1", pid
        )
        if state == "Lock":
            return
        await asyncio.sleep(0.01)
    pytest.fail(f"backend {pid} never waited for a lock")


def test_race_fold_batch_first_then_snapshot(appview_dsn: str) -> None:
    """A batch buffering A's rows holds FOR SHARE on A's repo row: the snapshot
    waits for it to commit, then drains the rows it buffered."""
    log = LogWriter()

    async def body(pool: asyncpg.Pool) -> None:
        async with pool.acquire() as conn:
            await begin_backfill(conn, A, "pds")
        r1 = log.create(A, ENTRY, "3kaaaaaaaaaa2", entry(name="r1"))
        r2 = log.create(A, ENTRY, "3kaaaaaaaaab2", entry(name="r2"))
        r3 = log.update(A, ENTRY, "3kaaaaaaaaaa2", entry(name="r3"))
        await append(pool, [r1, r2, r3, log.create(B, ENTRY, "3kaaaaaaaaaa2", entry())])
        indexer = Indexer(pool, history=None)
        fold_conn = await pool.acquire()
        snap_conn = await pool.acquire()
        try:
            tx = fold_conn.transaction()
            await tx.start()
            assert await indexer.fold_in(fold_conn) == 4
            assert indexer.last.buffered == 3
            snapshot = asyncio.create_task(
                apply_snapshot(
                    snap_conn,
                    A,
                    r2["rev"],
                    snap(
                        (ENTRY, "3kaaaaaaaaaa2", entry(name="r1")),
                        (ENTRY, "3kaaaaaaaaab2", entry(name="r2")),
                    ),
                    "pds",
                    history=None,
                )
            )
            await _wait_blocked(pool, snap_conn.get_server_pid())
            assert not snapshot.done()
            await tx.commit()
            result = await snapshot
        finally:
            await pool.release(fold_conn)
            await pool.release(snap_conn)
        assert result.pending.consumed == 3 and result.pending.stale == 2
        got = {
            r["rkey"]: r["name"]
            for r in await pool.fetch(
                "SELECT rkey, name FROM appview_entries WHERE did = $1", A
            )
        }
        assert got == {"3kaaaaaaaaaa2": "r3", "3kaaaaaaaaab2": "r2"}
        assert await pool.fetchval("SELECT count(*) FROM appview_pending") == 0

    run(appview_dsn, body)


def test_race_snapshot_first_then_fold_batch(appview_dsn: str) -> None:
    """A snapshot holding FOR UPDATE on A's repo row makes the batch wait; the batch
    then sees 'synced' and applies A's row directly: not buffered after the drain
    (where it would be stuck)."""
    log = LogWriter()

    async def body(pool: asyncpg.Pool) -> None:
        async with pool.acquire() as conn:
            await begin_backfill(conn, A, "pds")
        r1 = log.create(A, ENTRY, "3kaaaaaaaaaa2", entry(name="r1"))
        await append(pool, [r1])
        await fold(pool)
        snap_conn = await pool.acquire()
        try:
            tx = snap_conn.transaction()
            await tx.start()
            await apply_snapshot(
                snap_conn,
                A,
                r1["rev"],
                snap((ENTRY, "3kaaaaaaaaaa2", entry(name="r1"))),
                "pds",
                history=None,
            )
            r2 = log.update(A, ENTRY, "3kaaaaaaaaaa2", entry(name="r2"))
            await append(pool, [r2])
            indexer = Indexer(pool, history=None)
            batch = asyncio.create_task(indexer.fold_once())
            for _ in range(6000):  # the batch's backend: the one waiting on a lock
                pid = await pool.fetchval(
                    "SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                    "AND datname = current_database()"
                )
                if pid is not None:
                    break
                await asyncio.sleep(0.01)
            else:
                pytest.fail("the batch never waited for the snapshot's lock")
            assert not batch.done()
            await tx.commit()
            assert await batch == 1
        finally:
            await pool.release(snap_conn)
        assert indexer.last.buffered == 0 and indexer.last.upserted == 1
        assert await pool.fetchval("SELECT name FROM appview_entries") == "r2"
        assert await pool.fetchval("SELECT count(*) FROM appview_pending") == 0

    run(appview_dsn, body)


def test_race_begin_backfill_waits_for_the_batch_in_flight(appview_dsn: str) -> None:
    """A repository without an appview_repos row cannot be row-locked: the batch
    that applied its rows directly must commit before the backfill begins."""
    log = LogWriter()

    async def body(pool: asyncpg.Pool) -> None:
        await append(pool, [log.create(A, ENTRY, "3kaaaaaaaaaa2", entry(name="r1"))])
        indexer = Indexer(pool, history=None)
        fold_conn = await pool.acquire()
        bf_conn = await pool.acquire()
        try:
            tx = fold_conn.transaction()
            await tx.start()
            assert await indexer.fold_in(fold_conn) == 1
            assert indexer.last.upserted == 1
            begin = asyncio.create_task(begin_backfill(bf_conn, A, "pds"))
            await _wait_blocked(pool, bf_conn.get_server_pid())
            assert not begin.done()
            await tx.commit()
            await begin
        finally:
            await pool.release(fold_conn)
            await pool.release(bf_conn)
        await append(pool, [log.update(A, ENTRY, "3kaaaaaaaaaa2", entry(name="r2"))])
        await indexer.fold_all()
        assert indexer.last.buffered == 0 or indexer.stats.buffered == 1
        assert indexer.stats.buffered == 1
        assert await pool.fetchval("SELECT name FROM appview_entries") == "r1"

    run(appview_dsn, body)


# -- restart safety ---------------------------------------------------------------------------


def test_cancel_mid_batch_applies_nothing_then_everything_once(
    appview_dsn: str,
) -> None:
    log = LogWriter()
    rows = [log.create(A, SCHEMA, "CellCrop:1.0.0", schema())] + [
        log.create(A, ENTRY, f"3kaaaaaaaa{i:03d}", entry(name=f"e{i}"))
        for i in range(50)
    ]

    async def body(pool: asyncpg.Pool) -> None:
        await append(pool, rows)
        entered = asyncio.Event()

        async def stuck(conn: asyncpg.Connection, did: str, name: str) -> None:
            # inside the batch's transaction: everything written, nothing committed
            assert await conn.fetchval("SELECT count(*) FROM appview_entries") == 50
            entered.set()
            await asyncio.Event().wait()

        indexer = Indexer(pool, history=stuck)
        task = asyncio.create_task(indexer.fold_once())
        await entered.wait()
        assert await pool.fetchval("SELECT count(*) FROM appview_entries") == 0
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        cur = await pool.fetchrow("SELECT seq, idx, folded FROM appview_cursor")
        assert (cur["seq"], cur["folded"]) == (0, 0)
        assert await pool.fetchval("SELECT count(*) FROM appview_entries") == 0
        calls: list[str] = []

        async def hook(conn: asyncpg.Connection, did: str, name: str) -> None:
            calls.append(name)

        again = Indexer(pool, history=hook)
        assert await again.fold_all() == 51
        assert calls == ["CellCrop"]
        assert await pool.fetchval("SELECT count(*) FROM appview_entries") == 50
        cur = await pool.fetchrow("SELECT seq, idx, folded FROM appview_cursor")
        assert (cur["seq"], cur["idx"], cur["folded"]) == (
            rows[-1]["seq"],
            END_OF_SEQ,
            51,
        )

    run(appview_dsn, body)


_KILLED_CHILD = textwrap.dedent(
    """
    import asyncio, sys, time
    import asyncpg
    from atdata_appview.indexer import Indexer

    async def stuck(conn, did, name):
        print("IN_TX", flush=True)
        time.sleep(600)

    async def main():
        pool = await asyncpg.create_pool(sys.argv[1], min_size=1, max_size=2)
        await Indexer(pool, batch_size=1000, history=stuck).fold_once()

    asyncio.run(main())
    """
)


def test_killed_process_mid_batch_loses_nothing_and_applies_nothing_twice(
    appview_dsn: str, tmp_path: Path
) -> None:
    log = LogWriter()
    rows = [log.create(A, SCHEMA, "CellCrop:1.0.0", schema())] + [
        log.create(B, ENTRY, f"3kaaaaaaaa{i:03d}", entry(name=f"e{i}"))
        for i in range(200)
    ]
    run(appview_dsn, lambda pool: append(pool, rows))
    script = tmp_path / "child.py"
    script.write_text(_KILLED_CHILD)
    child = subprocess.Popen(
        [sys.executable, str(script), appview_dsn],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    try:
        assert child.stdout is not None
        line = child.stdout.readline()
        assert line.strip() == "IN_TX", child.stderr.read() if child.stderr else ""
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=60)

    async def body(pool: asyncpg.Pool) -> None:
        # the killed backend's transaction is rolled back once PostgreSQL sees it go
        for _ in range(6000):
            busy = await pool.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND state LIKE 'idle in transaction%'"
            )
            if busy == 0:
                break
            await asyncio.sleep(0.01)
        cur = await pool.fetchrow("SELECT seq, folded FROM appview_cursor")
        assert (cur["seq"], cur["folded"]) == (0, 0)
        assert await pool.fetchval("SELECT count(*) FROM appview_entries") == 0
        indexer = await fold(pool, batch_size=1000)
        assert indexer.stats.consumed == 201 and indexer.stats.upserted == 201
        assert await pool.fetchval("SELECT count(*) FROM appview_entries") == 200
        assert await pool.fetchval("SELECT folded FROM appview_cursor") == 201

    run(appview_dsn, body)


# -- reading the log ---------------------------------------------------------------------------


def _post(log: LogWriter, i: int) -> dict[str, Any]:
    return log.create(
        f"did:plc:{i % 97:024d}",
        "app.bsky.feed.post",
        f"3kpost{i:07d}",
        {
            "$type": "app.bsky.feed.post",
            "text": "hello",
            "createdAt": "2026-01-01T00:00:00Z",
        },
        valid=None,
    )


def test_cursor_jumps_over_what_is_not_ours(appview_dsn: str) -> None:
    log = LogWriter()
    rows: list[dict[str, Any]] = []
    ours: list[dict[str, Any]] = []
    for i in range(6000):
        if i in (1000, 2500, 4000):
            row = log.create(A, ENTRY, f"3kaaaaaaaa{i:03d}", entry())
            ours.append(row)
        elif i == 3000:
            row = log.identity(B, "bob.test")
            ours.append(row)
        elif i == 3500:  # a science.alt.dataset collection the AppView has no table for
            row = log.create(A, "science.alt.dataset.future", "3kaaaaaaaaaa2", {})
        else:
            row = _post(log, i)
        rows.append(row)
    # a commit with several operations: rows (seq, 0..2)
    multi = [
        dict(log.create(A, LABEL, f"3klabel{k}", label()), idx=k) for k in range(3)
    ]
    for m in multi:
        m["seq"] = multi[0]["seq"]
    rows += multi
    ours += multi

    async def body(pool: asyncpg.Pool) -> None:
        await append(pool, rows)
        await pool.execute("ANALYZE ingest_events")
        indexer = Indexer(pool, batch_size=2, history=None)
        seen: list[tuple[int, int]] = []
        while True:
            n = await indexer.fold_once()
            cur = await pool.fetchrow("SELECT seq, idx FROM appview_cursor")
            seen.append((cur["seq"], cur["idx"]))
            if n < 2:
                break
        # only our rows were read, two per batch, the multi-op commit split inside it
        assert indexer.stats.consumed == len(ours)
        assert seen == [
            (ours[1]["seq"], 0),
            (ours[3]["seq"], 0),
            (multi[0]["seq"], 1),
            (multi[0]["seq"], END_OF_SEQ),
        ]
        assert await pool.fetchval("SELECT count(*) FROM appview_labels") == 3

    run(appview_dsn, body)


def _touched(plan: Any) -> list[tuple[str, str, int]]:
    """(node type, index or relation, rows read) of every scan of the log."""
    out = []
    stack = [plan[0]["Plan"]]
    while stack:
        node = stack.pop()
        stack.extend(node.get("Plans", []))
        if node.get("Relation Name", "").startswith("ingest_events"):
            read = node["Actual Rows"] + node.get("Rows Removed by Filter", 0)
            where = node.get("Index Name", node["Relation Name"])
            out.append((node["Node Type"], where, read * node["Actual Loops"]))
    return out


@pytest.mark.parametrize("horizon", [None, "2000-01-01T00:00:00+00:00"])
def test_a_batch_reads_only_its_rows_of_the_log(
    appview_dsn: str, horizon: str | None
) -> None:
    """Statistics taken when our collections were rare (6000 posts, 5 entries),
    then a burst of 3000 entries: a batch of 10 still reads a few dozen rows of the
    log (each stream's window up to the seq of its 11th row, through an index),
    whatever the cursor; never the burst's backlog beyond it (a plain ``ORDER BY
    seq, idx LIMIT`` per stream sorts the whole burst under such statistics).
    With or without a horizon (after an ingest cursor reset)."""
    import datetime as dt

    when = None if horizon is None else dt.datetime.fromisoformat(horizon)
    log = LogWriter()
    before = [_post(log, i) for i in range(6000)] + [
        log.create(A, ENTRY, f"3kbbbb{i:07d}", entry()) for i in range(5)
    ]
    burst = [log.create(A, ENTRY, f"3kaaaa{i:07d}", entry()) for i in range(3000)]

    async def body(pool: asyncpg.Pool) -> None:
        await append(pool, before)
        await pool.execute("ANALYZE ingest_events")
        await append(pool, burst)
        for cursor in (0, burst[1500]["seq"]):
            async with pool.acquire() as conn, conn.transaction():
                await conn.execute(ix._READ_SETTING)  # as the batch reads
                raw = await conn.fetchval(
                    "EXPLAIN (ANALYZE, FORMAT JSON) " + ix._READ_SQL,
                    cursor,
                    -2,
                    burst[-1]["seq"],
                    10,
                    *ix._READ_ARGS,
                    when,
                )
            plan = orjson.loads(raw) if isinstance(raw, str) else raw
            touched = [t for t in _touched(plan) if t[2]]
            total = sum(n for _, _, n in touched)
            assert 10 <= total <= 50, touched
            assert all(k in ("Index Scan", "Index Only Scan") for k, _, _ in touched)

    run(appview_dsn, body)


def test_rows_beyond_the_ingest_cursor_wait(appview_dsn: str) -> None:
    log = LogWriter()

    async def body(pool: asyncpg.Pool) -> None:
        await append(pool, [log.create(A, ENTRY, "3kaaaaaaaaaa2", entry())])
        top = await pool.fetchval("SELECT last_seq FROM ingest_cursor")
        await append(pool, [log.create(A, ENTRY, "3kaaaaaaaaab2", entry())])
        await pool.execute("UPDATE ingest_cursor SET last_seq = $1", top)
        indexer = await fold(pool)
        assert indexer.stats.consumed == 1
        assert await pool.fetchval("SELECT seq FROM appview_cursor") == top
        await pool.execute("UPDATE ingest_cursor SET last_seq = $1", top + 1)
        await indexer.fold_all()
        assert indexer.stats.consumed == 2

    run(appview_dsn, body)


def test_ten_thousand_rows_fold_in_batches(appview_dsn: str) -> None:
    log = LogWriter()
    dids = [f"did:plc:{i:024d}" for i in range(100)]
    rows = [
        log.create(dids[i % 100], ENTRY, f"3kaaaa{i:07d}", entry(name=f"e{i}"))
        for i in range(10_000)
    ]

    async def body(pool: asyncpg.Pool) -> None:
        await append(pool, rows)
        indexer = Indexer(pool, batch_size=500, history=None)
        cursors = []
        while (n := await indexer.fold_once()) == 500:
            cursors.append(await pool.fetchval("SELECT seq FROM appview_cursor"))
        assert n == 0
        assert cursors == [rows[i]["seq"] for i in range(499, 10_000, 500)]
        assert indexer.stats.upserted == 10_000 and indexer.batches == 21
        assert await pool.fetchval("SELECT count(*) FROM appview_entries") == 10_000
        assert await pool.fetchval("SELECT count(*) FROM appview_accounts") == 100
        assert (
            await pool.fetchval("SELECT count(DISTINCT name) FROM appview_entries")
            == 10_000
        )

    run(appview_dsn, body)


def test_batch_is_cut_by_bytes(appview_dsn: str) -> None:
    log = LogWriter()
    rows = [
        log.create(A, ENTRY, f"3kaaaaaaaa{i:03d}", entry(description="x" * 4000))
        for i in range(10)
    ]

    async def body(pool: asyncpg.Pool) -> None:
        await append(pool, rows)
        indexer = Indexer(pool, batch_size=500, max_batch_bytes=10_000, history=None)
        sizes = []
        while n := await indexer.fold_once():
            sizes.append(n)
        assert sizes == [3, 3, 3, 1]
        assert await pool.fetchval("SELECT count(*) FROM appview_entries") == 10

    run(appview_dsn, body)


def test_a_flood_of_one_record_costs_one_write_per_batch(appview_dsn: str) -> None:
    log = LogWriter()
    flood = [
        log.update(A, SCHEMA, "CellCrop:1.0.0", schema(description=f"v{i}"))
        for i in range(2000)
    ]
    after = log.create(B, ENTRY, "3kaaaaaaaaaa2", entry(name="after the flood"))
    calls: list[tuple[str, str]] = []

    async def hook(conn: asyncpg.Connection, did: str, name: str) -> None:
        calls.append((did, name))

    async def body(pool: asyncpg.Pool) -> None:
        await append(pool, [*flood, after])
        indexer = Indexer(pool, batch_size=500, history=hook)
        await indexer.fold_all()
        assert indexer.stats.upserted == 5  # one per batch (4 of the flood, B's)
        assert calls == [(A, "CellCrop")] * 4
        assert await pool.fetchval("SELECT description FROM appview_schemas") == "v1999"
        assert (
            await pool.fetchval("SELECT name FROM appview_entries") == "after the flood"
        )

    run(appview_dsn, body)


# -- history hook --------------------------------------------------------------------------------


def test_history_hook_runs_per_name_touched_and_failures_do_not_block(
    appview_dsn: str,
) -> None:
    log = LogWriter()
    calls: list[tuple[str, str]] = []

    async def hook(conn: asyncpg.Connection, did: str, name: str) -> None:
        assert conn.is_in_transaction()
        calls.append((did, name))
        if name == "Broken":
            await conn.execute("SELECT 1/0")

    async def body(pool: asyncpg.Pool) -> None:
        await append(
            pool,
            [
                log.create(A, SCHEMA, "CellCrop:1.0.0", schema()),
                log.create(A, SCHEMA, "CellCrop:1.1.0", schema(version="1.1.0")),
                log.create(A, SCHEMA, "3kaaaaaaaaaa2", schema("Broken")),
                log.create(B, SCHEMA, "CellCrop:1.0.0", schema()),
                log.create(A, ENTRY, "3kaaaaaaaaab2", entry()),
            ],
        )
        indexer = Indexer(pool, history=hook)
        await indexer.fold_all()
        assert sorted(calls) == sorted(
            [(A, "Broken"), (A, "CellCrop"), (B, "CellCrop")]
        )
        assert indexer.stats.history_errors == 1
        assert await pool.fetchval("SELECT count(*) FROM appview_schemas") == 4
        calls.clear()
        # same content again (a re-put): nothing to recompute; a rename: both names
        await append(
            pool,
            [
                log.update(A, SCHEMA, "CellCrop:1.0.0", schema(), cid=CID),
                log.update(A, SCHEMA, "3kaaaaaaaaaa2", schema("Renamed")),
            ],
        )
        await indexer.fold_all()
        assert sorted(calls) == [(A, "Broken"), (A, "CellCrop"), (A, "Renamed")]
        calls.clear()
        await append(pool, [log.delete(A, SCHEMA, "CellCrop:1.1.0")])
        await indexer.fold_all()
        assert calls == [(A, "CellCrop")]

    run(appview_dsn, body)


def test_default_history_hook_is_recompute_history(appview_dsn: str) -> None:
    log = LogWriter()

    async def body(pool: asyncpg.Pool) -> None:
        await append(
            pool,
            [
                log.create(A, SCHEMA, "CellCrop:1.0.0", schema()),
                log.create(A, SCHEMA, "CellCrop:1.1.0", schema(version="1.1.0")),
            ],
        )
        await Indexer(pool).fold_all()
        row = await pool.fetchrow(
            "SELECT from_version, to_version FROM appview_schema_compat"
        )
        assert dict(row) == {"from_version": "1.0.0", "to_version": "1.1.0"}
        await append(pool, [log.delete(A, SCHEMA, "CellCrop:1.1.0")])
        await Indexer(pool).fold_all()
        assert await pool.fetchval("SELECT count(*) FROM appview_schema_compat") == 0

    run(appview_dsn, body)


# -- the loop, status ---------------------------------------------------------------------------


async def _until(pool: asyncpg.Pool, sql: str, expected: Any) -> None:
    for _ in range(6000):
        if await pool.fetchval(sql) == expected:
            return
        await asyncio.sleep(0.01)
    pytest.fail(f"{sql} never gave {expected!r}")


def test_run_follows_the_log_through_notify_and_stops(appview_dsn: str) -> None:
    log = LogWriter()

    async def body(pool: asyncpg.Pool) -> None:
        # a long poll interval: only the NOTIFY can wake it in time for the test
        indexer = Indexer(pool, poll_interval=3600, history=None)
        stop = asyncio.Event()
        task = asyncio.create_task(indexer.run(stop))
        for _ in range(6000):
            if indexer.listening:
                break
            await asyncio.sleep(0.01)
        assert indexer.listening
        await append(pool, [log.create(A, ENTRY, "3kaaaaaaaaaa2", entry())])
        await _until(pool, "SELECT count(*) FROM appview_entries", 1)
        await append(pool, [log.delete(A, ENTRY, "3kaaaaaaaaaa2")])
        await _until(pool, "SELECT count(*) FROM appview_entries", 0)
        stop.set()
        await asyncio.wait_for(task, 60)
        assert not indexer.listening

    run(appview_dsn, body)


def test_run_polls_without_listen(appview_dsn: str) -> None:
    log = LogWriter()

    async def body(pool: asyncpg.Pool) -> None:
        indexer = Indexer(pool, poll_interval=0.05, history=None, listen=False)
        stop = asyncio.Event()
        task = asyncio.create_task(indexer.run(stop))
        await append(pool, [log.create(A, ENTRY, "3kaaaaaaaaaa2", entry())])
        await _until(pool, "SELECT count(*) FROM appview_entries", 1)
        assert not indexer.listening
        stop.set()
        await asyncio.wait_for(task, 60)

    run(appview_dsn, body)


def test_status(appview_dsn: str) -> None:
    log = LogWriter()

    async def body(pool: asyncpg.Pool) -> None:
        await _publish_everything(pool, log, A)
        await append(pool, [log.account(B, False, "suspended"), _post(log, 1)])
        await fold(pool)
        async with pool.acquire() as conn:
            await begin_backfill(conn, C, "pds")
        await append(
            pool, [log.create(C, ENTRY, "3kaaaaaaaaaa2", entry()), _post(log, 2)]
        )
        await fold(pool)
        await append(pool, [_post(log, 3)])
        async with pool.acquire() as conn:
            got = await status(conn)
        top = await pool.fetchval("SELECT last_seq FROM ingest_cursor")
        assert got["ingest_last_seq"] == top and got["lag"] == 1
        assert got["cursor"]["seq"] == top - 1 and got["cursor"]["idx"] == END_OF_SEQ
        assert got["folded"] == 9 and got["dead_letters"] == 1
        assert got["dead_letters_by_rule"] == {"AV_INVALID_RECORD": 1}
        assert got["records"] == {
            SCHEMA: 2,
            ENTRY: 1,
            LENS: 1,
            LABEL: 1,
            VERIFICATION: 1,
        }
        assert got["accounts"] == {"inactive": {"suspended": 1}}
        assert got["repos"] == {"backfilling": 1} and got["pending"] == 1
        orjson.dumps(got)  # JSON-serializable as it is

    run(appview_dsn, body)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="batch_size"):
        Indexer(None, batch_size=0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="poll_interval"):
        Indexer(None, poll_interval=0)  # type: ignore[arg-type]

    async def go() -> None:
        class _Conn:
            def is_in_transaction(self) -> bool:
                return False

        with pytest.raises(ValueError, match="transaction"):
            await apply_rows(_Conn(), [])  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="DID"):
            await begin_backfill(_Conn(), "not-a-did", "x")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="DID"):
            await apply_snapshot(_Conn(), "nope", "rev", [], "x")  # type: ignore[arg-type]

    asyncio.run(go())
