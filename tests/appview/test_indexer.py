"""The indexer against a real PostgreSQL: log rows written as the ingester writes
them (:mod:`atdata_appview.testing.log`), folded by :class:`Indexer`, checked in
the AppView tables."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import orjson
from atdata_appview.indexer import (
    Indexer,
)
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
