"""The AppView's XRPC queries (atdata_appview.xrpc over atdata_appview.queries) on a
real PostgreSQL index filled as production fills it: log rows as the ingester
writes them (atdata_appview.testing.log), folded in by the indexer, verdicts by
the history's checker, served by the real app (create_app).

Every method of lexicons/science/alt/dataset/ is called; responses are compared
with what the seed's records say (shapes as atdata-app 0.4.0b1 serves them);
parameter errors, cursors (tampered, replayed on another query), pagination while
rows arrive between pages, fuzzy search, facets (against a count in Python),
hostile text and SQL-shaped input are covered.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import datetime as _dt
import itertools
import json
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import pytest
from atdata_appview import queries, vocabulary, xrpc
from atdata_appview.app import create_app
from atdata_appview.config import Settings
from atdata_appview.indexer import Indexer
from atdata_appview.schema import migrate as migrate_appview
from atdata_appview.testing.log import LogWriter
from atdata_appview.testing.serve import fold_log
from atdata_ingest.schema import migrate as migrate_ingest
from atdata_ingest.testing.postgres import PostgresCluster
from atdata_runtime.atmosphere.cid import blob_cid, record_cid
from atdata_runtime.atmosphere.records import schema_rkey
from atdata_runtime.lex.formats import is_datetime
from fastapi.testclient import TestClient

from ..conftest import CORPUS, ROOT, require_corpus
from .helpers import (
    ALICE,
    BOB,
    CREATED,
    ENTRY,
    LABEL,
    LENS,
    MALLORY,
    SCHEMA,
    VERIFY,
    at,
    checksum,
    code,
    entry,
    http_storage,
)

NS = "science.alt.dataset."

CAROL = "did:plc:" + "carol".ljust(24, "c")
HANDLES = {ALICE: "alice.test", BOB: "bob.test", MALLORY: "mallory.test"}

NDARRAY = "https://alt.science/schemas/atdata-ndarray-bytes/1.1.0#/$defs/ndarray"
SCRIPT = "<script>alert(1)</script>"
HOSTILE_NAME = (
    "\"'><img src=x onerror=alert(2)> \u202eRTL\u202c مجموعة; DROP TABLE x;--"
)
INJECTIONS = [
    "'; DROP TABLE appview_entries; --",
    '" OR 1=1 --',
    "x') OR ('1'='1",
    "$1 $2 %s {0} \\x00",
    "cell & | ! <-> :* ( )",
    "\u0000",
]
BULK = 30
EXPECTED_VERDICTS = ["compatible", "breaking", "compatible"]


# -- the seed -------------------------------------------------------------------------


def cellcrop(version: str, *, name: str = "CellCrop") -> dict[str, Any]:
    """CellCrop versions: 1.1.0 adds an optional field (compatible), 1.2.0 drops a
    required one with a minor bump (breaking), 2.0.0 adds a required one with a
    major bump (compatible)."""
    props: dict[str, Any] = {
        "image": {"$ref": NDARRAY, "dtype": "uint8", "shape": [None, None, 3]},
        "label": {"type": "string"},
        "score": {"type": "number"},
    }
    required = ["image", "label", "score"]
    if version != "1.0.0":
        props["notes"] = {"type": "string"}
    if version in ("1.2.0", "2.0.0"):
        del props["score"]
        required.remove("score")
    if version == "2.0.0":
        props["plate"] = {"type": "integer"}
        required.append("plate")
    return {
        "$type": SCHEMA,
        "name": name,
        "version": version,
        "schemaType": "jsonSchema",
        "schema": {
            "$type": "science.alt.dataset.schema#jsonSchemaFormat",
            "$schema": "http://json-schema.org/draft-07/schema#",
            "type": "object",
            "properties": props,
            "required": required,
            "arrayFormatVersions": {"ndarrayBytes": "1.1.0"},
        },
        "description": "A crop of one cell from a microscopy plate",
        "createdAt": CREATED,
        "atdataSchemaVersion": 1,
    }


@dataclass
class World:
    """What the index holds: records by AT-URI (with their DID and CID), and
    names → AT-URIs."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    records: dict[str, dict[str, Any]] = field(default_factory=dict)
    cids: dict[str, str] = field(default_factory=dict)
    entries: dict[str, str] = field(default_factory=dict)
    schemas: dict[str, str] = field(default_factory=dict)
    lenses: dict[str, str] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    log: LogWriter = field(default_factory=LogWriter)
    tids: Iterator[str] = field(
        default_factory=lambda: (
            f"3l{n:011d}".replace("0", "a") for n in itertools.count(1)
        )
    )

    def put(self, did: str, collection: str, rkey: str, rec: dict[str, Any]) -> str:
        cid = record_cid(rec)
        self.rows.append(self.log.create(did, collection, rkey, rec, cid=cid))
        uri = at(did, collection, rkey)
        self.records[uri] = rec
        self.cids[uri] = cid
        return uri

    def add_entry(self, did: str, rec: dict[str, Any]) -> str:
        uri = self.put(did, ENTRY, next(self.tids), rec)
        self.entries[rec["name"]] = uri
        return uri

    def entry_records(self) -> dict[str, dict[str, Any]]:
        return {u: r for u, r in self.records.items() if f"/{ENTRY}/" in u}


def build_world() -> World:
    require_corpus()
    w = World()
    for did, handle in HANDLES.items():
        w.rows.append(w.log.identity(did, handle))
    for v in ("1.0.0", "1.1.0", "1.2.0", "2.0.0"):
        w.schemas[f"CellCrop@{v}"] = w.put(
            ALICE, SCHEMA, schema_rkey("CellCrop", v), cellcrop(v)
        )
    # atdata 0.7.0b1's own record, as its SchemaPublisher built it (flat form)
    image = json.loads((CORPUS / "atdata/records/ImageSample.schema.json").read_text())
    w.schemas["ImageSample@1.0.0"] = w.put(BOB, SCHEMA, next(w.tids), image)
    # a second publisher of the name CellCrop
    w.schemas["mallory/CellCrop@1.0.0"] = w.put(
        MALLORY, SCHEMA, schema_rkey("CellCrop", "1.0.0"), cellcrop("1.0.0")
    )
    lens = {
        "$type": LENS,
        "name": "crop_to_image",
        "sourceSchema": w.schemas["CellCrop@1.1.0"],
        "targetSchema": w.schemas["ImageSample@1.0.0"],
        "getterCode": code("lenses.crop:get"),
        "putterCode": code("lenses.crop:put"),
        "language": "python",
        "description": "Drops the score, keeps the image and the label",
        "createdAt": CREATED,
    }
    w.lenses["crop_to_image"] = w.put(BOB, LENS, next(w.tids), lens)
    w.lenses["hostile"] = w.put(
        MALLORY,
        LENS,
        next(w.tids),
        lens
        | {
            "name": "hostile lens",
            "sourceSchema": w.schemas["mallory/CellCrop@1.0.0"],
            "targetSchema": w.schemas["CellCrop@1.0.0"],
            "description": SCRIPT,
        },
    )
    w.put(
        ALICE,
        VERIFY,
        next(w.tids),
        {
            "$type": VERIFY,
            "lens": w.lenses["crop_to_image"],
            "lensCommit": "0123456789abcdef0123456789abcdef01234567",
            "verificationMethod": "automatedTest",
            "createdAt": CREATED,
        },
    )
    s = w.schemas
    w.add_entry(ALICE, entry(
        "Cell crops plate 7", s["CellCrop@1.1.0"],
        http_storage("https://data.example.org/crops-000.tar",
                     "https://data.example.org/crops-001.tar"),
        tags=["microscopy", "cells"], license="MIT", size=5_000_000,
        description="Single-cell crops from plate 7 of the screen",
    ))  # fmt: skip
    w.labels["stable"] = w.put(ALICE, LABEL, next(w.tids), {
        "$type": LABEL, "name": "stable", "version": "7",
        "datasetUri": w.entries["Cell crops plate 7"],
        "description": "The release used in the paper", "createdAt": CREATED,
    })  # fmt: skip
    w.add_entry(ALICE, entry(
        "Cell crops second screen", s["CellCrop@2.0.0"],
        {"$type": "science.alt.dataset.storageS3", "bucket": "crops",
         "region": "eu-west-1",
         "shards": [{"key": "screen2/000.tar", "checksum": checksum(9)}]},
        tags=["microscopy"], license="CC-BY-4.0", size=9_000_000,
    ))  # fmt: skip
    w.add_entry(ALICE, entry(
        "Debris survey", s["CellCrop@1.0.0"],
        {"$type": "science.alt.dataset.storageBlobs", "blobs": [
            {"blob": {"$type": "blob", "ref": {"$link": blob_cid(b"shard-%d" % i)},
                      "mimeType": "application/x-tar", "size": 1000 + i}}
            for i in range(2)]},
        tags=["imaging"], license="MIT", size=2_000,
        description="Debris and dead cells, for negative controls",
    ))  # fmt: skip
    w.add_entry(ALICE, entry(
        "Nuclei segmentation masks", s["CellCrop@1.2.0"],
        {"$type": "science.alt.dataset.storageExternal",
         "urls": ["https://ext.example.org/nuclei-000.tar"]},
        tags=["microscopy", "segmentation"],
    ))  # fmt: skip
    w.add_entry(BOB, entry(
        "Tiny images", s["ImageSample@1.0.0"],
        tags=["imaging", "benchmark"], license="Apache-2.0", size=700_000,
        description="Small RGB images for smoke tests",
    ))  # fmt: skip
    w.add_entry(MALLORY, entry(
        HOSTILE_NAME, s["mallory/CellCrop@1.0.0"],
        tags=["<b>bold</b>", SCRIPT], license="<i>MIT</i>",
        description=SCRIPT + " cell crops " + INJECTIONS[0],
    ))  # fmt: skip
    for n in range(BULK):
        w.add_entry(BOB, entry(
            f"Bulk shard set {n:02d}", s["ImageSample@1.0.0"],
            tags=["bulk"] + (["even"] if n % 2 == 0 else []),
            license="MIT" if n % 3 else "CC0-1.0", size=10_000 + n if n % 5 else None,
        ))  # fmt: skip
    return w


async def fold(
    dsn: str, rows: list[dict[str, Any]], handles: Mapping[str, str] = HANDLES
) -> None:
    """Write ``rows`` into the log and fold them in with the indexer (no dead
    letters allowed), then verify the handles claimed against a stand-in of the
    network's identity services telling ``handles`` (DID → handle; the seed's
    DIDs exist nowhere): queries resolve verified handles only."""
    await fold_log(dsn, rows, handles)


async def _migrate(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await migrate_ingest(conn)
        await migrate_appview(conn)
    finally:
        await conn.close()


def make_client(dsn: str) -> TestClient:
    settings = Settings.from_env({"ATDATA_APPVIEW_DSN": dsn}, rate_per_second=0)
    return TestClient(create_app(settings))


@pytest.fixture(autouse=True)
def _fresh_caches(monkeypatch: pytest.MonkeyPatch) -> None:
    # every request sees the index as it is now (no cached vocabulary or facets)
    monkeypatch.setattr(vocabulary, "CHECK_SECONDS", 0.0)
    monkeypatch.setattr(queries, "FACET_TTL_SECONDS", 0.0)
    monkeypatch.setattr(queries, "FACET_STALE_SECONDS", 0.0)
    monkeypatch.setattr(queries, "DESCRIBE_TTL_SECONDS", 0.0)
    queries._facet_cache.clear()
    vocabulary.reset()


@pytest.fixture(scope="module")
def world(pg: PostgresCluster) -> Iterator[tuple[World, str]]:
    w = build_world()
    dsn = pg.create_database("xrpc_world")
    asyncio.run(_migrate(dsn))
    asyncio.run(fold(dsn, w.rows))
    yield w, dsn


@pytest.fixture
def api(world: tuple[World, str]) -> Iterator[TestClient]:
    with make_client(world[1]) as c:
        yield c


def by_key_desc(uris: Any) -> list[str]:
    """AT-URIs ordered by (DID, record key), descending."""
    return sorted(uris, key=lambda u: (u.split("/")[2], u.split("/")[4]), reverse=True)


def get(c: TestClient, method: str, params: Any = None, status: int = 200) -> Any:
    r = c.get(f"/xrpc/{NS}{method}", params=params)
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/json")
    return r.json()


def error(c: TestClient, method: str, params: Any, status: int, name: str) -> str:
    body = get(c, method, params, status)
    assert set(body) == {"error", "message"}, body
    assert body["error"] == name, body
    assert isinstance(body["message"], str) and body["message"]
    return str(body["message"])


def search_all(c: TestClient, params: dict[str, Any], limit: int = 7) -> list[Any]:
    """Every entry of a searchDatasets walked page by page (no page repeats a URI)."""
    out: list[Any] = []
    cursor = None
    for _ in range(100):
        p = dict(params, limit=limit) | ({"cursor": cursor} if cursor else {})
        body = get(c, "searchDatasets", p)
        assert len(body["entries"]) <= limit
        out.extend(body["entries"])
        cursor = body.get("cursor")
        if cursor is None:
            break
    uris = [e["uri"] for e in out]
    assert len(uris) == len(set(uris)), "a URI came back twice"
    return out


# -- the method table -----------------------------------------------------------------


def test_every_query_lexicon_is_served() -> None:
    lexdir = ROOT / "lexicons" / "science" / "alt" / "dataset"
    declared = set()
    for path in lexdir.glob("*.json"):
        doc = json.loads(path.read_text())
        if doc["defs"].get("main", {}).get("type") == "query":
            declared.add(doc["id"])
    assert declared == set(xrpc.METHODS)
    assert len(declared) == 13
    paths = {r.path for r in xrpc.router.routes}  # type: ignore[attr-defined]
    assert paths == {f"/xrpc/{nsid}" for nsid in declared}


def test_unknown_method_and_wrong_http_method(api: TestClient) -> None:
    body = get(api, "getNothing", None, 501)
    assert body["error"] == "MethodNotImplemented"
    r = api.post(f"/xrpc/{NS}getEntry", json={})
    assert r.status_code == 405
    assert r.json()["error"] == "MethodNotAllowed"


# -- entries --------------------------------------------------------------------------


def expected_entry(w: World, uri: str) -> dict[str, Any]:
    """The entry view the seed's record should give (atdata-app's fields, then
    ours)."""
    rec = w.records[uri]
    did = uri.split("/")[2]
    view: dict[str, Any] = {
        "uri": uri,
        "cid": w.cids[uri],
        "did": did,
        "name": rec["name"],
        "schemaRef": rec["schemaRef"],
        "storage": rec["storage"],
        "createdAt": "2026-01-01T00:00:00Z",
    }
    for key in ("description", "tags", "license", "size"):
        if rec.get(key):
            view[key] = rec[key]
    if did in HANDLES:
        view["handle"] = HANDLES[did]
    return view


def test_get_entry_is_the_record_as_atdata_app_serves_it(
    api: TestClient, world: tuple[World, str]
) -> None:
    w, _ = world
    for name in ("Cell crops plate 7", "Debris survey", HOSTILE_NAME):
        uri = w.entries[name]
        got = get(api, "getEntry", {"uri": uri})
        assert list(got) == ["entry"]
        view = got["entry"]
        want = expected_entry(w, uri)
        assert {k: view[k] for k in want} == want
        assert list(view)[:7] == [
            "uri", "cid", "did", "name", "schemaRef", "storage", "createdAt"
        ]  # fmt: skip
        schema = w.records[w.records[uri]["schemaRef"]]
        assert view["schemaName"] == schema["name"]
        assert view["schemaVersion"] == schema["version"]
        assert is_datetime(view["indexedAt"])
    plate = get(api, "getEntry", {"uri": w.entries["Cell crops plate 7"]})["entry"]
    assert (plate["storageKind"], plate["shardCount"], plate["checksums"]) == (
        "http", 2, "all"
    )  # fmt: skip
    debris = get(api, "getEntry", {"uri": w.entries["Debris survey"]})["entry"]
    assert (debris["storageKind"], debris["shardCount"], debris["checksums"]) == (
        "blobs", 2, "none"
    )  # fmt: skip
    # hostile text comes back byte for byte (pages escape it; the API does not)
    hostile = get(api, "getEntry", {"uri": w.entries[HOSTILE_NAME]})["entry"]
    assert hostile["name"] == HOSTILE_NAME
    assert hostile["tags"] == ["<b>bold</b>", SCRIPT]


def test_get_entry_by_handle_authority_and_not_found(
    api: TestClient, world: tuple[World, str]
) -> None:
    w, _ = world
    uri = w.entries["Tiny images"]
    by_handle = uri.replace(BOB, "bob.test")
    assert get(api, "getEntry", {"uri": by_handle})["entry"]["uri"] == uri
    missing = uri[:-3] + "zzz"
    assert "not found" in error(api, "getEntry", {"uri": missing}, 404, "EntryNotFound")
    # a schema's URI is no entry
    error(api, "getEntry", {"uri": w.schemas["CellCrop@1.0.0"]}, 404, "EntryNotFound")
    error(
        api,
        "getEntry",
        {"uri": "at://nobody.test/" + ENTRY + "/x"},
        404,
        "EntryNotFound",
    )
    msg = error(
        api, "getEntry", {"uri": "https://example.org/x"}, 400, "InvalidRequest"
    )
    assert "uri" in msg
    assert "uri" in error(api, "getEntry", None, 400, "InvalidRequest")
    error(api, "getEntry", {"uri": f"at://{ALICE}"}, 400, "InvalidRequest")
    error(api, "getEntry", [("uri", uri), ("uri", uri)], 400, "InvalidRequest")


def test_get_entries_in_the_order_asked(
    api: TestClient, world: tuple[World, str]
) -> None:
    w, _ = world
    names = ["Tiny images", "Cell crops plate 7", "Bulk shard set 03"]
    uris = [w.entries[n] for n in names]
    ask = [uris[0], uris[1] + "nope", uris[1], uris[2], uris[0]]
    got = get(api, "getEntries", [("uris", u) for u in ask])["entries"]
    assert [e["uri"] for e in got] == uris
    assert [e["name"] for e in got] == names
    assert got[1] == get(api, "getEntry", {"uri": uris[1]})["entry"]
    many = [("uris", w.entries[f"Bulk shard set {n:02d}"]) for n in range(26)]
    assert "uris" in error(api, "getEntries", many, 400, "InvalidRequest")
    assert len(get(api, "getEntries", many[:25])["entries"]) == 25
    error(api, "getEntries", None, 400, "InvalidRequest")
    error(api, "getEntries", [("uris", "not a uri")], 400, "InvalidRequest")


def test_list_entries_pages_cover_everything_once(
    api: TestClient, world: tuple[World, str]
) -> None:
    w, _ = world
    seen: list[str] = []
    cursor = None
    while True:
        body = get(
            api, "listEntries", {"limit": 4} | ({"cursor": cursor} if cursor else {})
        )
        seen += [e["uri"] for e in body["entries"]]
        cursor = body.get("cursor")
        if not cursor:
            break
    assert sorted(seen) == sorted(w.entry_records())
    assert len(seen) == len(set(seen))
    # newest indexed first; one batch folded them all (one indexed_at), so by
    # (did, rkey), descending
    assert seen == by_key_desc(w.entry_records())
    alice = get(api, "listEntries", {"repo": "alice.test"})["entries"]
    assert {e["uri"] for e in alice} == {
        u for u in w.entry_records() if u.startswith(f"at://{ALICE}/")
    }
    assert get(api, "listEntries", {"repo": ALICE})["entries"] == alice
    error(api, "listEntries", {"repo": "nobody.test"}, 400, "RepoNotFound")
    error(api, "listEntries", {"limit": 101}, 400, "InvalidRequest")
    error(api, "listEntries", {"limit": 0}, 400, "InvalidRequest")
    error(api, "listEntries", {"limit": "ten"}, 400, "InvalidRequest")


# -- schemas --------------------------------------------------------------------------


def test_get_schema_is_the_view_itself(
    api: TestClient, world: tuple[World, str]
) -> None:
    w, _ = world
    for key in ("CellCrop@1.1.0", "ImageSample@1.0.0"):
        uri = w.schemas[key]
        rec = w.records[uri]
        view = get(api, "getSchema", {"uri": uri})
        assert list(view)[:8] == [
            "uri", "cid", "did", "name", "version", "schemaType", "schema", "createdAt"
        ]  # fmt: skip
        assert view["uri"] == uri and view["cid"] == w.cids[uri]
        assert (view["name"], view["version"], view["schemaType"]) == (
            rec["name"], rec["version"], rec["schemaType"]
        )  # fmt: skip
        assert view["schema"] == rec["schema"]
        assert view["description"] == rec["description"]
        assert view["form"] == "flat"
        assert view["fieldCount"] == len(rec["schema"]["properties"])
    error(
        api,
        "getSchema",
        {"uri": w.schemas["CellCrop@1.1.0"] + "x"},
        404,
        "SchemaNotFound",
    )


def test_list_schemas(api: TestClient, world: tuple[World, str]) -> None:
    w, _ = world
    alice = get(api, "listSchemas", {"repo": "alice.test", "limit": 3})
    assert [s["version"] for s in alice["schemas"]] == ["2.0.0", "1.2.0", "1.1.0"]
    rest = get(api, "listSchemas", {"repo": "alice.test", "cursor": alice["cursor"]})
    assert [s["version"] for s in rest["schemas"]] == ["1.0.0"]
    assert "cursor" not in rest
    everyone = get(api, "listSchemas", {})["schemas"]
    assert {s["uri"] for s in everyone} == set(w.schemas.values())
    # a cursor of alice's listing is not one of everyone's
    error(api, "listSchemas", {"cursor": alice["cursor"]}, 400, "InvalidCursor")


def test_resolve_schema(api: TestClient, world: tuple[World, str]) -> None:
    w, _ = world
    latest = get(api, "resolveSchema", {"handle": "alice.test", "schemaId": "CellCrop"})
    uri = w.schemas["CellCrop@2.0.0"]
    assert latest == {"uri": uri, "cid": w.cids[uri], "record": w.records[uri]}
    for version, key in (("1.1.0", "CellCrop@1.1.0"), ("^1", "CellCrop@1.2.0"),
                         ("~1.1", "CellCrop@1.1.0"), ("1.0", "CellCrop@1.0.0")):  # fmt: skip
        got = get(api, "resolveSchema", {"handle": ALICE, "schemaId": "CellCrop",
                                         "version": version})  # fmt: skip
        assert got["uri"] == w.schemas[key], version
    # by record key (atdata-gen's {name}:{version})
    got = get(api, "resolveSchema", {"handle": ALICE, "schemaId": "CellCrop:1.1.0"})
    assert got["uri"] == w.schemas["CellCrop@1.1.0"]
    image = get(api, "resolveSchema", {"handle": "bob.test", "schemaId": "ImageSample"})
    assert image["record"] == json.loads(
        (CORPUS / "atdata/records/ImageSample.schema.json").read_text()
    )
    error(api, "resolveSchema", {"handle": "alice.test", "schemaId": "CellCrop",
                                 "version": "3.0.0"}, 404, "SchemaNotFound")  # fmt: skip
    error(api, "resolveSchema", {"handle": "alice.test", "schemaId": "Nope"}, 404,
          "SchemaNotFound")  # fmt: skip
    error(api, "resolveSchema", {"handle": "nobody.test", "schemaId": "CellCrop"}, 400,
          "RepoNotFound")  # fmt: skip
    error(api, "resolveSchema", {"handle": "alice.test"}, 400, "InvalidRequest")
    error(api, "resolveSchema", {"handle": "alice.test", "schemaId": "CellCrop",
                                 "version": "not-a-range"}, 400, "InvalidRequest")  # fmt: skip


def test_schema_history(api: TestClient, world: tuple[World, str]) -> None:
    w, _ = world
    h = get(api, "getSchemaHistory", {"name": "CellCrop", "repo": "alice.test"})
    assert (h["name"], h["did"], h["handle"]) == ("CellCrop", ALICE, "alice.test")
    assert [v["version"] for v in h["versions"]] == ["1.0.0", "1.1.0", "1.2.0", "2.0.0"]
    assert [v["verdict"] for v in h["verdicts"]] == EXPECTED_VERDICTS
    assert [(v["fromVersion"], v["toVersion"]) for v in h["verdicts"]] == [
        ("1.0.0", "1.1.0"), ("1.1.0", "1.2.0"), ("1.2.0", "2.0.0")
    ]  # fmt: skip
    assert h["verdicts"][1]["findings"], "a breaking verdict names its findings"
    assert h["versions"][0] == get(
        api, "getSchema", {"uri": w.schemas["CellCrop@1.0.0"]}
    )
    newest = get(
        api, "getSchemaHistory", {"name": "CellCrop", "repo": ALICE, "limit": 2}
    )
    assert [v["version"] for v in newest["versions"]] == ["1.2.0", "2.0.0"]
    assert [v["verdict"] for v in newest["verdicts"]] == EXPECTED_VERDICTS[2:]
    error(api, "getSchemaHistory", {"name": "CellCrop"}, 400, "AmbiguousName")
    one = get(api, "getSchemaHistory", {"name": "ImageSample"})
    assert one["did"] == BOB and one["verdicts"] == []
    error(api, "getSchemaHistory", {"name": "Nope"}, 404, "SchemaNotFound")
    error(api, "getSchemaHistory", {"name": "CellCrop", "repo": "x.test"}, 400,
          "RepoNotFound")  # fmt: skip


# -- lenses and labels ----------------------------------------------------------------


def test_lenses(api: TestClient, world: tuple[World, str]) -> None:
    w, _ = world
    uri = w.lenses["crop_to_image"]
    rec = w.records[uri]
    lenses = get(api, "listLenses", {})["lenses"]
    assert {x["uri"] for x in lenses} == set(w.lenses.values())
    view = next(x for x in lenses if x["uri"] == uri)
    assert list(view)[:9] == [
        "uri", "cid", "did", "name", "sourceSchema", "targetSchema", "getterCode",
        "putterCode", "createdAt",
    ]  # fmt: skip
    assert view["getterCode"] == rec["getterCode"]
    assert view["putterCode"] == rec["putterCode"]
    assert (view["language"], view["description"]) == ("python", rec["description"])
    assert view["verifications"] == 1 and view["handle"] == "bob.test"
    by_source = get(api, "searchLenses", {"sourceSchema": rec["sourceSchema"]})
    assert [x["uri"] for x in by_source["lenses"]] == [uri]
    by_target = get(api, "listLenses", {"targetSchema": w.schemas["CellCrop@1.0.0"]})
    assert [x["uri"] for x in by_target["lenses"]] == [w.lenses["hostile"]]
    assert get(api, "listLenses", {"repo": "alice.test"})["lenses"] == []
    page = get(api, "searchLenses", {"limit": 1})
    rest = get(api, "searchLenses", {"limit": 1, "cursor": page["cursor"]})
    assert {page["lenses"][0]["uri"], rest["lenses"][0]["uri"]} == set(
        w.lenses.values()
    )
    assert "cursor" not in get(api, "searchLenses", {"limit": 2})
    error(api, "searchLenses", {"sourceSchema": "nope"}, 400, "InvalidRequest")


def test_lens_path(api: TestClient, world: tuple[World, str]) -> None:
    w, _ = world
    s = w.schemas
    direct = get(api, "getLensPath", {"sourceSchema": s["CellCrop@1.1.0"],
                                      "targetSchema": s["ImageSample@1.0.0"]})  # fmt: skip
    assert [st["kind"] for st in direct["steps"]] == ["lens"]
    assert direct["steps"][0]["lens"]["uri"] == w.lenses["crop_to_image"]
    same = get(api, "getLensPath", {"sourceSchema": s["CellCrop@1.1.0"],
                                    "targetSchema": s["CellCrop@1.1.0"]})  # fmt: skip
    assert same["steps"] == []
    # 1.0.0 -> 1.1.0 only adds an optional field: a structural step, then the lens
    two = get(api, "getLensPath", {"sourceSchema": s["CellCrop@1.0.0"],
                                   "targetSchema": s["ImageSample@1.0.0"]})  # fmt: skip
    assert [st["kind"] for st in two["steps"]] == ["structural", "lens"]
    assert two["steps"][0]["sourceSchema"] == s["CellCrop@1.0.0"]
    assert two["steps"][-1]["targetSchema"] == s["ImageSample@1.0.0"]
    error(api, "getLensPath", {"sourceSchema": s["ImageSample@1.0.0"],
                               "targetSchema": s["CellCrop@2.0.0"]}, 404,
          "LensPathNotFound")  # fmt: skip
    error(api, "getLensPath", {"sourceSchema": s["CellCrop@1.0.0"] + "x",
                               "targetSchema": s["CellCrop@2.0.0"]}, 404,
          "SchemaNotFound")  # fmt: skip
    error(api, "getLensPath", {"sourceSchema": s["CellCrop@1.0.0"],
                               "targetSchema": s["CellCrop@2.0.0"], "maxSteps": 17},
          400, "InvalidRequest")  # fmt: skip


def test_resolve_label(api: TestClient, world: tuple[World, str]) -> None:
    w, _ = world
    label = w.labels["stable"]
    got = get(api, "resolveLabel", {"handle": "alice.test", "name": "stable"})
    assert got == {
        "uri": w.entries["Cell crops plate 7"],
        "cid": w.cids[label],
        "label": w.records[label],
    }
    assert (
        get(api, "resolveLabel", {"handle": ALICE, "name": "stable", "version": "7"})
        == got
    )
    error(api, "resolveLabel", {"handle": ALICE, "name": "stable", "version": "8"}, 404,
          "LabelNotFound")  # fmt: skip
    error(
        api,
        "resolveLabel",
        {"handle": "bob.test", "name": "stable"},
        404,
        "LabelNotFound",
    )
    error(
        api,
        "resolveLabel",
        {"handle": "zed.test", "name": "stable"},
        400,
        "RepoNotFound",
    )


def test_describe_service(api: TestClient, world: tuple[World, str]) -> None:
    w, _ = world
    body = get(api, "describeService")
    assert body["did"] == "did:web:127.0.0.1%3A8080"
    assert body["availableCollections"] == [SCHEMA, ENTRY, LENS, LABEL, VERIFY]
    counts = collections.Counter(u.split("/")[3] for u in w.records)
    assert body["recordCount"] == {c: counts[c] for c in body["availableCollections"]}
    assert body["deadLetters"] == 0
    assert body["cursor"] == max(r["seq"] for r in w.rows)
    assert body["analytics"] == {"activePublishers": 3}


# -- search ---------------------------------------------------------------------------


def names(entries: list[Any]) -> list[str]:
    return [e["name"] for e in entries]


def test_search_text_ranks_name_matches_first(api: TestClient) -> None:
    got = get(api, "searchDatasets", {"q": "cell crops"})["entries"]
    assert names(got)[:2] == ["Cell crops plate 7", "Cell crops second screen"]
    # the hostile entry says "cell crops" in its description only: after both
    assert names(got)[2] == HOSTILE_NAME
    assert "Tiny images" not in names(got)
    # websearch syntax: a quoted phrase, a negation
    assert names(get(api, "searchDatasets", {"q": '"second screen"'})["entries"]) == [
        "Cell crops second screen"
    ]
    minus = names(get(api, "searchDatasets", {"q": "cell crops -plate"})["entries"])
    assert "Cell crops plate 7" not in minus and "Cell crops second screen" in minus


def test_search_is_typo_tolerant(api: TestClient) -> None:
    for typo in ("cel crops", "cell crosp", "Nucle segmentation", "debirs"):
        got = names(get(api, "searchDatasets", {"q": typo})["entries"])
        assert got, typo
    assert names(get(api, "searchDatasets", {"q": "cel crops"})["entries"])[:2] == [
        "Cell crops plate 7", "Cell crops second screen"
    ]  # fmt: skip
    assert names(get(api, "searchDatasets", {"q": "debirs"})["entries"]) == [
        "Debris survey"
    ]
    assert get(api, "searchDatasets", {"q": "zzyzx qwrtp"})["entries"] == []


def test_search_filters(api: TestClient, world: tuple[World, str]) -> None:
    w, _ = world
    recs = w.entry_records()

    def expect(pred: Any) -> set[str]:
        return {u for u, r in recs.items() if pred(u, r)}

    def got(params: dict[str, Any]) -> set[str]:
        return {e["uri"] for e in search_all(api, params)}

    micro = expect(lambda u, r: "microscopy" in r.get("tags", []))
    assert got({"tags": "microscopy"}) == micro and len(micro) == 3
    assert got({"tags": ["bulk", "even"]}) == expect(
        lambda u, r: {"bulk", "even"} <= set(r.get("tags", []))
    )
    ref = w.schemas["CellCrop@1.1.0"]
    assert got({"schemaRef": ref}) == expect(lambda u, r: r["schemaRef"] == ref)
    cellcrop_any = expect(lambda u, r: w.records[r["schemaRef"]]["name"] == "CellCrop")
    assert got({"schema": "CellCrop"}) == cellcrop_any and len(cellcrop_any) == 5
    assert got({"schema": "CellCrop@^1"}) == expect(
        lambda u, r: (
            w.records[r["schemaRef"]]["name"] == "CellCrop"
            and w.records[r["schemaRef"]]["version"].startswith("1.")
        )
    )
    assert got({"schema": "CellCrop@2"}) == {w.entries["Cell crops second screen"]}
    assert got({"schema": "@alice.test/CellCrop@^1"}) == {
        w.entries[n] for n in ("Cell crops plate 7", "Debris survey",
                               "Nuclei segmentation masks")
    }  # fmt: skip
    assert got({"repo": "bob.test"}) == expect(
        lambda u, r: u.startswith(f"at://{BOB}/")
    )
    assert got({"repo": BOB}) == got({"repo": "bob.test"})
    assert got({"storage": "s3"}) == {w.entries["Cell crops second screen"]}
    assert got({"storage": "external"}) == {w.entries["Nuclei segmentation masks"]}
    assert got({"license": "CC0-1.0"}) == expect(
        lambda u, r: r.get("license") == "CC0-1.0"
    )
    assert got({"q": "crops", "tags": "microscopy", "repo": "alice.test"}) == {
        w.entries["Cell crops plate 7"], w.entries["Cell crops second screen"]
    }  # fmt: skip
    assert got({}) == set(recs)
    error(api, "searchDatasets", {"repo": "nobody.test"}, 400, "RepoNotFound")
    error(
        api, "searchDatasets", {"schema": "@nobody.test/CellCrop"}, 400, "RepoNotFound"
    )
    error(api, "searchDatasets", {"schema": "CellCrop@^x"}, 400, "InvalidRequest")


def test_search_sorts(api: TestClient, world: tuple[World, str]) -> None:
    w, _ = world
    recs = w.entry_records()
    by_size = search_all(api, {"sort": "size"}, limit=6)
    sizes = [e.get("size", {}).get("bytes", -1) for e in by_size]
    assert sizes == sorted(sizes, reverse=True)
    assert len(by_size) == len(recs)
    assert by_size[0]["name"] == "Cell crops second screen"
    recent = search_all(api, {"sort": "recent"}, limit=5)
    assert [e["uri"] for e in recent] == by_key_desc(recs)
    # no text: relevance is recency
    assert search_all(api, {}, limit=5) == recent
    bulk = search_all(api, {"q": "bulk shard", "sort": "size"}, limit=4)
    assert len(bulk) == BULK
    bulk_sizes = [e.get("size", {}).get("bytes", -1) for e in bulk]
    assert bulk_sizes == sorted(bulk_sizes, reverse=True)
    assert error(api, "searchDatasets", {"sort": "name"}, 400, "InvalidRequest")


def test_search_pages_of_relevance(api: TestClient) -> None:
    whole = get(api, "searchDatasets", {"q": "bulk shard set", "limit": 100})["entries"]
    assert len(whole) == BULK
    paged = search_all(api, {"q": "bulk shard set"}, limit=7)
    assert [e["uri"] for e in paged] == [e["uri"] for e in whole]


def facet_counts(w: World, uris: set[str]) -> dict[str, list[dict[str, Any]]]:
    tags: collections.Counter[str] = collections.Counter()
    schemas: collections.Counter[str] = collections.Counter()
    storage: collections.Counter[str] = collections.Counter()
    licenses: collections.Counter[str] = collections.Counter()
    for u in uris:
        r = w.records[u]
        tags.update(set(r.get("tags", [])))
        schemas[w.records[r["schemaRef"]]["name"]] += 1
        storage[r["storage"]["$type"].removeprefix(NS + "storage").lower()] += 1
        if r.get("license"):
            licenses[r["license"]] += 1

    def top(c: collections.Counter[str]) -> list[dict[str, Any]]:
        ordered = sorted(c.items(), key=lambda kv: (-kv[1], kv[0]))[:20]
        return [{"value": k, "count": n} for k, n in ordered]

    return {
        "tags": top(tags),
        "schemas": top(schemas),
        "storage": top(storage),
        "licenses": top(licenses),
    }


def test_facets_count_every_match(api: TestClient, world: tuple[World, str]) -> None:
    w, _ = world
    recs = w.entry_records()
    for params, pred in (
        ({}, lambda r: True),
        ({"tags": "bulk"}, lambda r: "bulk" in r.get("tags", [])),
        ({"q": "cell crops"}, None),
        ({"license": "MIT"}, lambda r: r.get("license") == "MIT"),
    ):
        body = get(api, "searchDatasets", params | {"facets": "true", "limit": 2})
        assert len(body["entries"]) == 2
        if pred is None:
            match = {e["uri"] for e in search_all(api, params)}
        else:
            match = {u for u, r in recs.items() if pred(r)}
        assert body["facets"] == facet_counts(w, match), params
    assert "facets" not in get(api, "searchDatasets", {"q": "cell"})
    error(api, "searchDatasets", {"facets": "yes"}, 400, "InvalidRequest")


def test_search_parameter_errors(api: TestClient) -> None:
    for params, word in (
        ({"limit": "abc"}, "limit"),
        ({"limit": 101}, "limit"),
        ({"limit": 0}, "limit"),
        ({"q": "x" * 501}, "q"),
        ({"tags": [f"t{i}" for i in range(11)]}, "tags"),
        ({"schemaRef": "not-an-at-uri"}, "schemaRef"),
        ({"cursor": "c" * 4097}, "cursor"),
        ([("q", "a"), ("q", "b")], "q"),
    ):
        msg = error(api, "searchDatasets", params, 400, "InvalidRequest")
        assert word in msg, (params, msg)
        assert "x" * 100 not in msg  # values are not echoed


def test_cursors_are_opaque_and_checked(api: TestClient) -> None:
    first = get(api, "searchDatasets", {"q": "bulk", "limit": 3})
    cursor = first["cursor"]
    assert "bulk" not in cursor and "did:" not in cursor
    ok = get(api, "searchDatasets", {"q": "bulk", "limit": 3, "cursor": cursor})
    assert ok["entries"] and ok["entries"][0]["uri"] not in {
        e["uri"] for e in first["entries"]
    }
    raw = bytearray(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    for i in (0, 3, len(raw) - 2):
        bad = bytearray(raw)
        bad[i] ^= 0x01
        forged = base64.urlsafe_b64encode(bytes(bad)).rstrip(b"=").decode()
        error(api, "searchDatasets", {"q": "bulk", "limit": 3, "cursor": forged}, 400,
              "InvalidCursor")  # fmt: skip
    # replayed on another query, another sort, another method
    error(api, "searchDatasets", {"q": "cell", "limit": 3, "cursor": cursor}, 400,
          "InvalidCursor")  # fmt: skip
    error(api, "searchDatasets", {"q": "bulk", "sort": "size", "cursor": cursor}, 400,
          "InvalidCursor")  # fmt: skip
    error(api, "listEntries", {"cursor": cursor}, 400, "InvalidCursor")
    for junk in (
        "",
        "!!!",
        "AAAA",
        "x" * 200,
        base64.urlsafe_b64encode(b"\x01" * 40).decode(),
    ):
        if junk:
            error(
                api,
                "searchDatasets",
                {"q": "bulk", "cursor": junk},
                400,
                "InvalidCursor",
            )


def test_sql_shaped_input_is_inert(api: TestClient, world: tuple[World, str]) -> None:
    w, _ = world
    total = len(w.entry_records())
    for text in INJECTIONS:
        if "\u0000" in text:
            continue
        body = get(api, "searchDatasets", {"q": text, "facets": "true"})
        assert isinstance(body["entries"], list)
        get(api, "searchDatasets", {"tags": text})
        get(api, "searchDatasets", {"license": text, "storage": text})
        assert (
            get(api, "searchDatasets", {"schema": text.replace("@", "")})["entries"]
            == []
        )
        error(api, "searchDatasets", {"repo": text}, 400, "RepoNotFound")
        error(
            api,
            "resolveSchema",
            {"handle": ALICE, "schemaId": text},
            404,
            "SchemaNotFound",
        )
    # the injection in the hostile entry's description is found as text
    hit = get(api, "searchDatasets", {"q": "DROP TABLE appview_entries"})["entries"]
    assert HOSTILE_NAME in names(hit)
    # a NUL byte in text is refused or matches nothing, never a 500
    r = api.get(f"/xrpc/{NS}searchDatasets", params={"q": "a\u0000b"})
    assert r.status_code in (200, 400), r.text
    assert len(search_all(api, {}, limit=50)) == total


def test_a_view_that_fails_its_lexicon_is_a_500_without_internals(
    api: TestClient, world: tuple[World, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    w, _ = world

    async def broken(db: Any, uri: str) -> dict[str, Any]:
        return {"uri": uri, "cid": "not a cid", "secret": "postgres://u:pw@db"}

    monkeypatch.setattr(queries, "get_entry_view", broken)
    body = get(api, "getEntry", {"uri": w.entries["Tiny images"]}, 500)
    assert body == {"error": "InternalServerError", "message": "internal error"}


# -- a changing index -----------------------------------------------------------------


@pytest.fixture
def live(appview_dsn: str) -> Iterator[tuple[World, str, TestClient]]:
    w = build_world()
    asyncio.run(fold(appview_dsn, w.rows))
    w.rows = []
    with make_client(appview_dsn) as c:
        yield w, appview_dsn, c


def test_pages_stay_complete_while_entries_arrive(
    live: tuple[World, str, TestClient],
) -> None:
    w, dsn, api = live
    before = set(w.entry_records())
    ref = w.schemas["ImageSample@1.0.0"]
    queries_ = [
        ("listEntries", {"limit": 4}),
        ("searchDatasets", {"limit": 4}),
        ("searchDatasets", {"q": "bulk shard set", "limit": 4}),
        ("searchDatasets", {"q": "bulk", "sort": "size", "limit": 4}),
        ("searchDatasets", {"tags": "bulk", "sort": "recent", "limit": 4}),
    ]
    n = itertools.count()
    for method, params in queries_:
        seen: list[str] = []
        cursor = None
        while True:
            body = get(api, method, params | ({"cursor": cursor} if cursor else {}))
            seen += [e["uri"] for e in body["entries"]]
            # new entries between pages, some sorting before the cursor, some after
            for size in (99_000_000, 1):
                k = next(n)
                w.rows = []
                w.add_entry(BOB, entry(f"Bulk shard set new {k}", ref, tags=["bulk"],
                                       size=size))  # fmt: skip
                asyncio.run(fold(dsn, w.rows))
            cursor = body.get("cursor")
            if not cursor:
                break
        assert len(seen) == len(set(seen)), (method, params)
        if "q" in params or "tags" in params:
            wanted = {u for u in before if "bulk" in w.records[u].get("tags", [])}
        else:
            wanted = before
        assert wanted <= set(seen), (method, params, wanted - set(seen))


def test_inactive_accounts_are_hidden(live: tuple[World, str, TestClient]) -> None:
    w, dsn, api = live
    uri = w.entries["Tiny images"]
    assert get(api, "getEntry", {"uri": uri})
    w.rows = [w.log.account(BOB, False, "deactivated")]
    asyncio.run(fold(dsn, w.rows))
    error(api, "getEntry", {"uri": uri}, 404, "EntryNotFound")
    assert get(api, "getEntries", {"uris": uri})["entries"] == []
    hits = search_all(api, {})
    assert hits and not any(e["did"] == BOB for e in hits)
    assert get(api, "listEntries", {"repo": BOB})["entries"] == []
    assert get(api, "listLenses", {"repo": BOB})["lenses"] == []
    error(api, "resolveSchema", {"handle": BOB, "schemaId": "ImageSample"}, 404,
          "SchemaNotFound")  # fmt: skip
    w.rows = [w.log.account(BOB, True)]
    asyncio.run(fold(dsn, w.rows))
    assert get(api, "getEntry", {"uri": uri})["entry"]["uri"] == uri


def test_handles_follow_identity_events(live: tuple[World, str, TestClient]) -> None:
    w, dsn, api = live
    w.rows = [w.log.identity(ALICE, "alice2.test")]
    asyncio.run(fold(dsn, w.rows, {**HANDLES, ALICE: "alice2.test"}))
    got = get(api, "resolveSchema", {"handle": "alice2.test", "schemaId": "CellCrop"})
    assert got["uri"] == w.schemas["CellCrop@2.0.0"]
    entry_ = get(api, "getEntry", {"uri": w.entries["Debris survey"]})["entry"]
    assert entry_["handle"] == "alice2.test"


def test_typo_vocabulary_follows_new_names(live: tuple[World, str, TestClient]) -> None:
    w, dsn, api = live
    assert get(api, "searchDatasets", {"q": "zebrafsh"})["entries"] == []
    w.rows = []
    uri = w.add_entry(ALICE, entry("Zebrafish embryos", w.schemas["CellCrop@2.0.0"]))
    asyncio.run(fold(dsn, w.rows))
    assert [
        e["uri"] for e in get(api, "searchDatasets", {"q": "zebrafsh"})["entries"]
    ] == [uri]


def test_version_ranges() -> None:
    r = queries.parse_version_range
    assert r("^1") == queries.VersionRange((1, 0, 0), (2, 0, 0))
    assert r("^1.2") == queries.VersionRange((1, 2, 0), (2, 0, 0))
    assert r("^0.2.3") == queries.VersionRange((0, 2, 3), (0, 3, 0))
    assert r("^0.0.3") == queries.VersionRange((0, 0, 3), (0, 0, 4))
    assert r("~1.2") == queries.VersionRange((1, 2, 0), (1, 3, 0))
    assert r("1.2.3") == queries.VersionRange((1, 2, 3), (1, 2, 4))
    assert r("1.2.3-rc.1") == queries.VersionRange((1, 2, 3), (1, 2, 4), "rc.1")
    assert r("1.x") == queries.VersionRange((1, 0, 0), (2, 0, 0))
    assert r(">=1.4").lo == (1, 4, 0) and r("<2").hi == (2, 0, 0)
    assert r("*") == queries.ANY_VERSION
    for bad in ("^", "1.2.3.4", "latest", "^1.2.3-rc", "01.2", "1..2"):
        with pytest.raises(queries.QueryError):
            r(bad)


def test_created_at_is_utc(world: tuple[World, str]) -> None:
    from atdata_appview.views import iso

    t = _dt.datetime(
        2026, 1, 2, 3, 4, 5, 120000, tzinfo=_dt.timezone(_dt.timedelta(hours=2))
    )
    assert iso(t) == "2026-01-02T01:04:05.120Z"
    assert iso(t.replace(microsecond=5)) == "2026-01-02T01:04:05.000005Z"
    assert iso(t.replace(microsecond=0)) == "2026-01-02T01:04:05Z"


def test_facets_answer_stale_while_recounted(
    live: tuple[World, str, TestClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    w, dsn, api = live
    monkeypatch.setattr(queries, "FACET_STALE_SECONDS", 300.0)

    def bulk_count() -> int:
        body = get(api, "searchDatasets", {"tags": "bulk", "facets": "true"})
        tags = {f["value"]: f["count"] for f in body["facets"]["tags"]}
        return tags["bulk"]

    before = bulk_count()
    assert before == BULK
    w.rows = []
    w.add_entry(BOB, entry("Bulk late", w.schemas["ImageSample@1.0.0"], tags=["bulk"]))
    asyncio.run(fold(dsn, w.rows))
    # the next answer is the cached count, and it starts a recount
    assert bulk_count() == before
    deadline = time.monotonic() + 30
    while bulk_count() != before + 1:
        assert time.monotonic() < deadline, "the facets were never recounted"
        time.sleep(0.05)


def test_describe_service_follows_the_indexer_at_once(
    live: tuple[World, str, TestClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    w, dsn, api = live
    monkeypatch.setattr(queries, "DESCRIBE_TTL_SECONDS", 60.0)
    first = get(api, "describeService")
    assert get(api, "describeService") == first
    w.rows = []
    w.add_entry(ALICE, entry("One more", w.schemas["CellCrop@2.0.0"]))
    asyncio.run(fold(dsn, w.rows))
    after = get(api, "describeService")
    assert after["recordCount"][ENTRY] == first["recordCount"][ENTRY] + 1
    assert after["cursor"] > first["cursor"]


def test_vocabulary_corrections() -> None:
    v = vocabulary.Vocabulary(
        [("cell", 50), ("celery", 1), ("crops", 20), ("debris", 3), ("nuclei", 2)]
    )
    assert v.corrections("cel") == ("cell", "celery")  # trigram similarity
    assert v.corrections("debirs") == ("debris",)  # a transposition
    assert v.corrections("crosp") == ("crops",)
    assert v.corrections("zebra") == ()
    # words no name contains, with their corrections ("and" has none: left out)
    assert v.expansions("Cel crops, DEBIRS 1234 and x") == [
        ("cel", ("cell", "celery")),
        ("debirs", ("debris",)),
    ]
    assert vocabulary.query_words("a ab abc ABC 123 x_y café") == ["abc", "café"]
    assert vocabulary.osa_distance("abcd", "badc", 2) == 2
    assert vocabulary.osa_distance("abcd", "wxyz", 2) == 3
    # pg_trgm's trigrams: two spaces before, one after
    assert vocabulary.trigrams("Cel") == {"  c", " ce", "cel", "el "}


# -- review fixes: paging, versions, inactive accounts, cost bounds --------------------


def update_entry(w: World, uri: str, **changes: Any) -> None:
    """Append an update of the entry ``uri`` (a new version, a new CID) to
    ``w.rows``."""
    did, _, rkey = uri[5:].split("/")
    rec = w.records[uri] | changes
    cid = record_cid(rec)
    w.rows.append(w.log.update(did, ENTRY, rkey, rec, cid=cid))
    w.records[uri] = rec
    w.cids[uri] = cid


def walk(
    api: TestClient, method: str, params: dict[str, Any], between: Any = None
) -> list[str]:
    """The AT-URIs of every page of ``method`` (``between(seen)`` runs after the
    first page)."""
    seen: list[str] = []
    cursor = None
    for n in range(100):
        body = get(api, method, params | ({"cursor": cursor} if cursor else {}))
        key = "entries" if "entries" in body else next(iter(body))
        seen += [e["uri"] for e in body[key]]
        if n == 0 and between is not None:
            between(seen)
        cursor = body.get("cursor")
        if not cursor:
            return seen
    raise AssertionError("no last page")


def test_an_update_between_pages_moves_no_entry(
    live: tuple[World, str, TestClient],
) -> None:
    """Pages are keyed on when a record was first indexed: an entry updated (a
    new CID, so a new indexedAt) between two pages is still returned once."""
    w, dsn, api = live
    for method, params in (
        ("listEntries", {"limit": 4}),
        ("searchDatasets", {"sort": "recent", "limit": 4}),
        ("searchDatasets", {"tags": "bulk", "sort": "recent", "limit": 4}),
        ("searchDatasets", {"q": "bulk shard set", "limit": 4}),
    ):

        def edit(seen: list[str]) -> None:
            w.rows = []
            for uri in w.entry_records():
                if uri not in seen and "bulk" in w.records[uri].get("tags", []):
                    update_entry(w, uri, createdAt="2026-02-02T00:00:00Z")
                    break
            asyncio.run(fold(dsn, w.rows))

        seen = walk(api, method, params, edit)
        assert len(seen) == len(set(seen)), (method, params)
        if "q" in params or "tags" in params:
            want = {u for u, r in w.entry_records().items() if "bulk" in r["tags"]}
        else:
            want = set(w.entry_records())
        assert set(seen) == want, (method, params, want - set(seen))


def test_relevance_pages_keep_the_first_pages_corrections(
    live: tuple[World, str, TestClient],
) -> None:
    """The typo corrections of a relevance search travel in its cursor: a name
    that makes the typo a known word between two pages changes nothing."""
    w, dsn, api = live

    def teach(seen: list[str]) -> None:
        w.rows = []
        w.add_entry(ALICE, entry("Shrd cleaner", w.schemas["CellCrop@2.0.0"]))
        asyncio.run(fold(dsn, w.rows))

    bulk = {u for u, r in w.entry_records().items() if "bulk" in r.get("tags", [])}
    seen = walk(api, "searchDatasets", {"q": "bulk shrd", "limit": 4}, teach)
    assert len(seen) == len(set(seen))
    assert set(seen) == bulk
    # a new search sees the new word (no correction now: only that entry)
    assert get(api, "searchDatasets", {"q": "shrd"})["entries"][0]["name"] == (
        "Shrd cleaner"
    )


def test_a_cursor_that_carries_corrections_is_checked(api: TestClient) -> None:
    cursor = get(api, "searchDatasets", {"q": "bulk shrd", "limit": 2})["cursor"]
    fp = queries._search_fingerprint(
        queries.SearchQuery(q="bulk shrd"), "bulk shrd", "relevance"
    )
    for fixes in (
        "zzz:drop",  # a word the text does not have
        "shrd:" + ",".join(f"w{i:03d}" for i in range(9)),  # too many corrections
        "shrd:a b",  # not a word
        "shrd:shard;shrd:shard",  # a word twice
    ):
        forged = reminted(cursor, fp, v5=fixes)
        error(api, "searchDatasets", {"q": "bulk shrd", "cursor": forged}, 400,
              "InvalidCursor")  # fmt: skip
    assert get(api, "searchDatasets", {"q": "bulk shrd", "cursor": cursor})["entries"]


def reminted(cursor: str, fp: bytes, **values: Any) -> str:
    """``cursor`` with its key values at the given positions (``v0``, ``v1`` …)
    replaced, tagged again: anyone can do this (the tag's key is in the source)."""
    raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
    kind, *key = json.loads(raw[9:])
    for name, value in values.items():
        key[int(name[1:])] = value
    return queries.cursors.encode(kind, key, fp)


def test_a_cursor_value_out_of_range_is_an_invalid_cursor(api: TestClient) -> None:
    """A minted cursor's values are checked as parameters are, so an absurd
    score is a 400, never a 5xx."""
    cursor = get(api, "searchDatasets", {"q": "cell", "limit": 1})["cursor"]
    fp = queries._search_fingerprint(queries.SearchQuery(q="cell"), "cell", "relevance")
    assert get(api, "searchDatasets", {"q": "cell", "cursor": reminted(cursor, fp)})
    for score in (1e300, -1e39, 3.5e38):
        forged = reminted(cursor, fp, v0=score)
        error(api, "searchDatasets", {"q": "cell", "cursor": forged}, 400,
              "InvalidCursor")  # fmt: skip
    cursor = get(api, "searchDatasets", {"sort": "recent", "limit": 1})["cursor"]
    fp = queries._search_fingerprint(queries.SearchQuery(), None, "recent")
    forged = reminted(cursor, fp, v0=2**62)
    error(api, "searchDatasets", {"sort": "recent", "cursor": forged}, 400,
          "InvalidCursor")  # fmt: skip


def test_resolve_schema_latest_is_semver_precedence(appview_dsn: str) -> None:
    """Without a version: the highest release; with none, the highest prerelease
    by semver 2.0.0 § 11 (beta.11 after beta.2, numeric before alphanumeric)."""
    w = World()
    w.rows.append(w.log.identity(ALICE, "alice.test"))
    for v in ("1.0.0-beta.2", "1.0.0-beta.11", "1.0.0-beta", "1.0.0-alpha.x"):
        w.schemas[v] = w.put(
            ALICE, SCHEMA, schema_rkey("Proto", v), cellcrop(v) | {"name": "Proto"}
        )
    asyncio.run(fold(appview_dsn, w.rows))
    with make_client(appview_dsn) as api:
        ask = {"handle": "alice.test", "schemaId": "Proto"}
        assert get(api, "resolveSchema", ask)["uri"] == w.schemas["1.0.0-beta.11"]
        w.rows = []
        w.schemas["0.9.0"] = w.put(ALICE, SCHEMA, schema_rkey("Proto", "0.9.0"),
                                   cellcrop("0.9.0") | {"name": "Proto"})  # fmt: skip
        asyncio.run(fold(appview_dsn, w.rows))
        # a release wins over any prerelease, even of a higher version
        assert get(api, "resolveSchema", ask)["uri"] == w.schemas["0.9.0"]
        got = get(api, "resolveSchema", ask | {"version": "1.0.0-beta.2"})
        assert got["uri"] == w.schemas["1.0.0-beta.2"]


def test_a_deactivated_publishers_schema_shows_through_no_other_record(
    appview_dsn: str,
) -> None:
    """Bob's entry names Alice's schema, Alice's lens has Bob's and Carol's
    verifications; Alice, then Carol, deactivate: no view, filter or facet shows
    Alice's schema, no count counts Carol's verification."""
    w = World()
    w.rows.append(w.log.identity(ALICE, "alice.test"))
    s = w.put(
        ALICE,
        SCHEMA,
        schema_rkey("Secret", "1.0.0"),
        cellcrop("1.0.0") | {"name": "Secret"},
    )
    img = w.put(
        BOB, SCHEMA, schema_rkey("Img", "1.0.0"), cellcrop("1.0.0") | {"name": "Img"}
    )
    uri = w.add_entry(BOB, entry("Bob's data", s, tags=["x"]))
    lens = w.put(BOB, LENS, "lens1", {
        "$type": LENS, "name": "l", "sourceSchema": img, "targetSchema": img,
        "getterCode": code("a:b"), "putterCode": code("a:c"), "createdAt": CREATED,
    })  # fmt: skip
    for did, rkey in ((BOB, "v1"), (CAROL, "v2")):
        w.put(did, VERIFY, rkey, {
            "$type": VERIFY, "lens": lens, "createdAt": CREATED,
            "lensCommit": "0123456789abcdef0123456789abcdef01234567",
            "verificationMethod": "automatedTest",
        })  # fmt: skip
    asyncio.run(fold(appview_dsn, w.rows))
    with make_client(appview_dsn) as api:
        view = get(api, "getEntry", {"uri": uri})["entry"]
        assert view["schemaName"] == "Secret"
        assert get(api, "listLenses", {})["lenses"][0]["verifications"] == 2
        w.rows = [w.log.account(ALICE, False, "deactivated"),
                  w.log.account(CAROL, False, "deactivated")]  # fmt: skip
        asyncio.run(fold(appview_dsn, w.rows))
        error(api, "getSchema", {"uri": s}, 404, "SchemaNotFound")
        view = get(api, "getEntry", {"uri": uri})["entry"]
        assert "schemaName" not in view and "schemaVersion" not in view
        assert get(api, "searchDatasets", {"schema": "Secret"})["entries"] == []
        body = get(api, "searchDatasets", {"facets": "true"})
        assert [e["uri"] for e in body["entries"]] == [uri]
        assert body["facets"]["schemas"] == []
        assert get(api, "listLenses", {})["lenses"][0]["verifications"] == 1


def test_cached_facets_forget_a_deleted_account_at_once(
    live: tuple[World, str, TestClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the facet cache on (as served): a deleted (or deactivated) account's
    tags and licences leave the facets with its entries, not a TTL later."""
    w, dsn, api = live
    monkeypatch.setattr(queries, "FACET_TTL_SECONDS", 3600.0)
    monkeypatch.setattr(queries, "FACET_STALE_SECONDS", 7200.0)
    queries._facet_cache.clear()
    for did, status, tag, licence in (
        (MALLORY, "deleted", SCRIPT, "<i>MIT</i>"),
        (BOB, "deactivated", "benchmark", "Apache-2.0"),
    ):
        before = get(api, "searchDatasets", {"facets": "true"})["facets"]
        assert tag in {f["value"] for f in before["tags"]}
        assert get(api, "searchDatasets", {"facets": "true"})["facets"] == before
        w.rows = [w.log.account(did, False, status)]
        asyncio.run(fold(dsn, w.rows))
        after = get(api, "searchDatasets", {"facets": "true"})["facets"]
        assert tag not in {f["value"] for f in after["tags"]}, status
        assert licence not in {f["value"] for f in after["licenses"]}, status


def test_a_text_of_exclusions_only_is_refused(api: TestClient) -> None:
    """``-word`` alone would match every entry through no index (and facets would
    count them all): refused, with what to do."""
    for q in ("-zzz", "-zzz -yyy", '-"cell crops"', "-cell or -bulk"):
        msg = error(api, "searchDatasets", {"q": q, "facets": "true"}, 400,
                    "InvalidRequest")  # fmt: skip
        assert "exclu" in msg, msg
    # with a word to find, exclusions narrow as usual
    hits = names(get(api, "searchDatasets", {"q": "cell -debris"})["entries"])
    assert hits and "Debris survey" not in hits
    assert names(get(api, "searchDatasets", {"q": "single-cell"})["entries"])


def test_facets_that_take_too_long_are_left_out(
    api: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Facet counts are bounded by a statement timeout: past it the page is
    served without ``facets`` (and the next identical query does not retry at
    once)."""
    slow = queries._FACETS_SQL.replace(
        "FROM {src} WHERE {where})",
        "FROM {src} WHERE {where} AND pg_sleep(0.05) IS NOT NULL)",
    )
    assert slow != queries._FACETS_SQL
    monkeypatch.setattr(queries, "_FACETS_SQL", slow)
    monkeypatch.setattr(queries, "FACET_TIMEOUT_MS", 50)
    monkeypatch.setattr(queries, "FACET_TTL_SECONDS", 3600.0)
    calls = 0
    real = queries._count_facets

    async def counting(*a: Any, **kw: Any) -> Any:
        nonlocal calls
        calls += 1
        return await real(*a, **kw)

    monkeypatch.setattr(queries, "_count_facets", counting)
    for _ in range(2):
        body = get(
            api, "searchDatasets", {"tags": "bulk", "facets": "true", "limit": 2}
        )
        assert len(body["entries"]) == 2 and "cursor" in body
        assert "facets" not in body
    assert calls == 1


def test_pages_are_bounded_in_bytes(
    appview_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Entries of ~0.6 MB each (many shards): a page stops before the byte budget
    (at most ``limit`` rows and ~4 MiB), its cursor at its last row, and every
    entry is reached once in every order; such a page is validated off the event
    loop; getEntries refuses more than the budget."""
    where: list[str] = []
    real = getattr(xrpc, "_validate", None)

    def spy(output: Any, body: Any) -> None:
        try:
            asyncio.get_running_loop()
            where.append("loop")
        except RuntimeError:
            where.append("worker")
        assert real is not None
        real(output, body)

    monkeypatch.setattr(xrpc, "_validate", spy, raising=False)
    w = World()
    w.rows.append(w.log.identity(ALICE, "alice.test"))
    s = w.put(ALICE, SCHEMA, schema_rkey("CellCrop", "1.0.0"), cellcrop("1.0.0"))
    urls = [f"https://data.example.org/{i:05d}/" + "a" * 160 for i in range(2600)]
    big = [
        w.add_entry(
            ALICE,
            entry(
                f"Big plate {i}", s, http_storage(*urls), tags=["big"], size=1000 + i
            ),
        )
        for i in range(12)
    ]
    asyncio.run(fold(appview_dsn, w.rows))
    with make_client(appview_dsn) as api:
        one = api.get(f"/xrpc/{NS}getEntry", params={"uri": big[0]}).content
        assert 500_000 < len(one) < 1_000_000
        for method, params in (
            ("listEntries", {"limit": 100}),
            ("listEntries", {"repo": "alice.test", "limit": 100}),
            ("searchDatasets", {"limit": 100}),
            ("searchDatasets", {"q": "big plate", "limit": 100}),
            ("searchDatasets", {"tags": "big", "sort": "size", "limit": 100}),
        ):
            r = api.get(f"/xrpc/{NS}{method}", params=params)
            assert r.status_code == 200, r.text
            assert len(r.content) <= 4 * 2**20, (method, len(r.content))
            body = r.json()
            assert 1 < len(body["entries"]) < 12 and body["cursor"], method
            assert where[-1:] == ["worker"], method
            assert sorted(walk(api, method, params)) == sorted(big), method
        msg = error(api, "getEntries", [("uris", u) for u in big], 400,
                    "InvalidRequest")  # fmt: skip
        assert "fewer" in msg
        assert (
            len(get(api, "getEntries", [("uris", u) for u in big[:3]])["entries"]) == 3
        )


def test_pages_cut_by_bytes_stay_exact(
    api: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a budget of about two views a page, every order walks the same rows,
    in the same order, as with whole pages."""
    cases = (
        ("listEntries", {}),
        ("listSchemas", {}),
        ("listLenses", {}),
        ("searchDatasets", {}),
        ("searchDatasets", {"q": "bulk shard set"}),
        ("searchDatasets", {"q": "bulk", "sort": "size"}),
    )
    whole = {m + repr(p): walk(api, m, p | {"limit": 100}) for m, p in cases}
    monkeypatch.setattr(queries, "MAX_PAGE_BYTES", 5000, raising=False)
    for method, params in cases:
        key = method + repr(params)
        assert len(whole[key]) > 1
        pages = []
        cursor = None
        while True:
            q = params | {"limit": 10} | ({"cursor": cursor} if cursor else {})
            body = get(api, method, q)
            pages.append(len(body[next(k for k in body if k != "cursor")]))
            cursor = body.get("cursor")
            if not cursor:
                break
        assert max(pages) <= 2 < len(whole[key]) or len(pages) == 1, (key, pages)
        assert walk(api, method, params | {"limit": 10}) == whole[key], key


def test_dear_requests_take_more_of_the_rate_limit(
    world: tuple[World, str],
) -> None:
    """getLensPath takes 10 tokens, facets (searchDatasets facets=true, the home
    page) 5, anything else 1: a bucket of 10 (time frozen) serves one lens path,
    two faceted searches, or ten plain ones."""
    from atdata_ingest.ratelimit import RateLimiter

    w, dsn = world
    settings = Settings.from_env(
        {"ATDATA_APPVIEW_DSN": dsn}, rate_per_second=1, rate_burst=10
    )
    lens = {"sourceSchema": w.schemas["CellCrop@1.1.0"],
            "targetSchema": w.schemas["ImageSample@1.0.0"]}  # fmt: skip

    def statuses(requests: list[tuple[str, Any]]) -> list[int]:
        app = create_app(settings, limiter=RateLimiter(clock=lambda: 0.0))
        with TestClient(app) as c:
            return [c.get(path, params=p).status_code for path, p in requests]

    x = f"/xrpc/{NS}"
    assert statuses([(x + "getLensPath", lens)] * 2) == [200, 429]
    assert statuses([(x + "searchDatasets", {"facets": "true"})] * 3) == [200, 200, 429]
    # a percent-encoded "true" is facets all the same
    assert statuses([(x + "searchDatasets?facets=%74rue", None)] * 3)[2] == 429
    assert statuses([("/", None)] * 3) == [200, 200, 429]
    plain = statuses([(x + "searchDatasets", {"facets": "false"})] * 11)
    assert plain == [200] * 10 + [429]


def test_a_schema_named_by_handle_is_joined_once_the_handle_is_verified(
    appview_dsn: str,
) -> None:
    """An entry whose schemaRef names the schema by its publisher's handle: once
    the handle is verified (and the indexer has put the reference in DID form),
    the entry shows the schema's name and version, and a schema filter and the
    facets find it."""
    w = World()
    w.rows.append(w.log.identity(ALICE, "alice.test"))
    s = w.put(ALICE, SCHEMA, schema_rkey("CellCrop", "1.0.0"), cellcrop("1.0.0"))
    by_did = w.add_entry(ALICE, entry("By DID", s))
    by_handle = w.add_entry(ALICE, entry("By handle", s.replace(ALICE, "alice.test")))
    asyncio.run(fold(appview_dsn, w.rows))

    async def maintain() -> None:
        async with asyncpg.create_pool(appview_dsn, min_size=1, max_size=2) as pool:
            await Indexer(pool).maintain()

    asyncio.run(maintain())
    with make_client(appview_dsn) as api:
        for uri in (by_did, by_handle):
            view = get(api, "getEntry", {"uri": uri})["entry"]
            assert (view["schemaRef"], view["schemaName"]) == (s, "CellCrop"), view
        body = get(api, "searchDatasets", {"schema": "CellCrop@1", "facets": "true"})
        assert {e["uri"] for e in body["entries"]} == {by_did, by_handle}
        assert body["facets"]["schemas"] == [{"value": "CellCrop", "count": 2}]


def test_records_with_the_longest_record_keys_page(appview_dsn: str) -> None:
    """Record keys of 512 characters (the atproto spec's maximum) still give
    cursors within the Lexicons' maxLength: every order pages through them."""
    w = World()
    w.rows.append(w.log.identity(ALICE, "alice.test"))
    s = w.put(ALICE, SCHEMA, schema_rkey("CellCrop", "1.0.0"), cellcrop("1.0.0"))
    uris = [
        w.put(
            ALICE,
            ENTRY,
            f"{i:03d}" + "k" * 509,
            entry(f"Long key {i}", s, http_storage("https://data.example.org/a.tar")),
        )
        for i in range(5)
    ]
    asyncio.run(fold(appview_dsn, w.rows))
    with make_client(appview_dsn) as api:
        for method, params in (
            ("listEntries", {"limit": 2}),
            ("searchDatasets", {"q": "long key", "limit": 2}),
            ("searchDatasets", {"sort": "recent", "limit": 2}),
        ):
            assert sorted(walk(api, method, params)) == sorted(uris), method
