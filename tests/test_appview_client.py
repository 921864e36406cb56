"""``atdata_runtime.appview``: the AppView client and name resolution.

- Against the **real AppView** (``atdata_appview.app.create_app`` on uvicorn, its
  index filled as production fills it: log rows as the ingester writes them,
  folded by the indexer): every query, its typed output compared with the seed,
  XRPC errors as typed exceptions, names resolved to the records the seed holds.
- Against a **hostile peer** of our own (a tiny HTTP server answering whatever a
  test tells it): oversize bodies, bodies that are not JSON or not the Lexicon's
  shape, trickling and failing servers, hostile error messages, redirects, and
  what the client sends (no credentials).
- The setting: ``ATDATA_APPVIEW_URL``, and the error without it.

- On the **local network** (fixture ``net``: a real PDS and PLC): records
  published with the runtime, backfilled (verified ``getRepo``) into a real
  AppView; names loaded with ``Dataset.from_atproto`` and pinned with
  ``atdata-gen pull``, through the AppView, through the PDS when the AppView is
  down or not configured, and refused when a hostile AppView points a name at
  another repository's record.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from atdata_appview.backfill import Backfiller
from atdata_appview.handles import make_resolver
from atdata_appview.indexer import Indexer
from atdata_appview.schema import migrate as migrate_appview
from atdata_appview.testing.identity import verify_all
from atdata_appview.testing.log import LogWriter, append_rows
from atdata_appview.testing.serve import fold_log, serve_appview
from atdata_gen.dynamic import compile_schema_record
from atdata_ingest.schema import migrate as migrate_ingest
from atdata_ingest.testing.postgres import PostgresCluster
from atdata_runtime.appview import (
    APPVIEW_URL_ENV,
    AmbiguousNameError,
    AppViewClient,
    AppViewNotConfigured,
    AppViewNotFound,
    AppViewQueryError,
    AppViewResponseError,
    AppViewUnavailable,
    NameMismatchError,
    NameNotFoundError,
    NameResolver,
)
from atdata_runtime.atmosphere import AtmosphereClient, IdentityResolver
from atdata_runtime.atmosphere.cid import record_cid
from atdata_runtime.atmosphere.publish import (
    BlobStorage,
    new_tid,
    publish_entry,
    publish_schemas,
)
from atdata_runtime.atmosphere.records import schema_rkey
from atdata_runtime.lexicons.science.alt.dataset import defs
from atdata_runtime.net import RedirectRefusedError, UnsafeUrlError
from atdata_runtime.shards import Dataset, write_samples

from .conftest import run_cli

SCHEMA = "science.alt.dataset.schema"
ENTRY = "science.alt.dataset.entry"
LENS = "science.alt.dataset.lens"
LABEL = "science.alt.dataset.label"
NS = "science.alt.dataset."

ALICE = "did:plc:" + "alice".ljust(24, "a")
BOB = "did:plc:" + "bob".ljust(24, "b")
MALLORY = "did:plc:" + "mallory".ljust(24, "m")
HANDLES = {ALICE: "alice.test", BOB: "bob.test", MALLORY: "mallory.test"}

HOSTILE = "\x1b[2J\x1b[31mred\u202eevil\u2066 <script>alert(1)</script>\r\nX"


def at(did: str, collection: str, rkey: str) -> str:
    return f"at://{did}/{collection}/{rkey}"


def schema_record(name: str, version: str, created: str) -> dict[str, Any]:
    """A schema record in atdata-lexicon 0.4's envelope form; 2.x adds a field."""
    props: dict[str, Any] = {"label": {"type": "string"}, "score": {"type": "number"}}
    if version.startswith("2."):
        props["plate"] = {"type": "integer"}
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
            "required": sorted(props),
        },
        "description": f"{name} {version}",
        "createdAt": created,
    }


def entry_record(
    name: str,
    schema: str,
    created: str,
    *,
    tags: list[str] | None = None,
    size: int | None = None,
    description: str | None = None,
) -> dict[str, Any]:
    rec: dict[str, Any] = {
        "$type": ENTRY,
        "name": name,
        "schemaRef": schema,
        "storage": {
            "$type": "science.alt.dataset.storageHttp",
            "shards": [
                {
                    "url": f"https://data.example.org/{len(name)}.tar",
                    "checksum": {"algorithm": "sha256", "digest": "ab" * 32},
                }
            ],
        },
        "createdAt": created,
    }
    if tags:
        rec["tags"] = tags
    if size is not None:
        rec["size"] = {"samples": 10, "bytes": size, "shards": 1}
    if description:
        rec["description"] = description
    return rec


@dataclass
class World:
    """The seed: log rows, and AT-URIs by role."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    uris: dict[str, str] = field(default_factory=dict)
    records: dict[str, dict[str, Any]] = field(default_factory=dict)
    log: LogWriter = field(default_factory=LogWriter)
    tids: Iterator[str] = field(
        default_factory=lambda: (
            f"3l{n:011d}".replace("0", "a") for n in itertools.count(1)
        )
    )

    def put(
        self, role: str, did: str, collection: str, rec: dict[str, Any], rkey: str = ""
    ) -> str:
        rkey = rkey or next(self.tids)
        self.rows.append(
            self.log.create(did, collection, rkey, rec, cid=record_cid(rec))
        )
        uri = at(did, collection, rkey)
        self.uris[role] = uri
        self.records[uri] = rec
        return uri


def build_world() -> World:
    """alice: CellCrop 1.0.0, 1.1.0, 2.0.0; three entries named cell-crops (one
    per schema version, newer each), plate-7 and the label stable on it. mallory:
    CellCrop 1.0.0, a cell-crops entry, an entry of hostile text. bob: Tiny
    0.1.0-beta.1 and 0.1.0, an entry of each."""
    w = World()
    for did, handle in HANDLES.items():
        w.rows.append(w.log.identity(did, handle))
    for i, v in enumerate(("1.0.0", "1.1.0", "2.0.0")):
        w.put(
            f"alice CellCrop {v}",
            ALICE,
            SCHEMA,
            schema_record("CellCrop", v, f"2026-01-0{i + 1}T00:00:00Z"),
            schema_rkey("CellCrop", v),
        )
    w.put(
        "mallory CellCrop 1.0.0",
        MALLORY,
        SCHEMA,
        schema_record("CellCrop", "1.0.0", "2026-01-05T00:00:00Z"),
        schema_rkey("CellCrop", "1.0.0"),
    )
    for v in ("0.1.0-beta.1", "0.1.0"):
        w.put(
            f"bob Tiny {v}",
            BOB,
            SCHEMA,
            schema_record("Tiny", v, "2026-01-06T00:00:00Z"),
            schema_rkey("Tiny", v),
        )
    u = w.uris
    for month, v in ((2, "1.0.0"), (3, "1.1.0"), (4, "2.0.0")):
        w.put(
            f"alice cell-crops {v}",
            ALICE,
            ENTRY,
            entry_record(
                "cell-crops",
                u[f"alice CellCrop {v}"],
                f"2026-0{month}-01T00:00:00Z",
                tags=["microscopy", "cells"],
                size=1000 * month,
                description="Single-cell crops of a microscopy screen",
            ),
        )
    plate = w.put(
        "alice plate-7",
        ALICE,
        ENTRY,
        entry_record(
            "plate-7",
            u["alice CellCrop 1.1.0"],
            "2026-02-15T00:00:00Z",
            tags=["microscopy"],
            size=5_000_000,
        ),
    )
    w.put(
        "alice label stable",
        ALICE,
        LABEL,
        {
            "$type": LABEL,
            "name": "stable",
            "version": "1.0.0",
            "datasetUri": plate,
            "createdAt": "2026-02-16T00:00:00Z",
        },
    )
    w.put(
        "mallory cell-crops",
        MALLORY,
        ENTRY,
        entry_record(
            "cell-crops",
            u["mallory CellCrop 1.0.0"],
            "2026-05-01T00:00:00Z",
            tags=["microscopy"],
        ),
    )
    w.put(
        "mallory hostile",
        MALLORY,
        ENTRY,
        entry_record(
            "hostile " + HOSTILE,
            u["mallory CellCrop 1.0.0"],
            "2026-05-02T00:00:00Z",
            tags=["microscopy", "\u202etag"],
            description=HOSTILE,
        ),
    )
    for v in ("0.1.0-beta.1", "0.1.0"):
        w.put(
            f"bob tiny {v}",
            BOB,
            ENTRY,
            entry_record("tiny", u[f"bob Tiny {v}"], "2026-06-01T00:00:00Z"),
        )
    lens = {
        "$type": LENS,
        "name": "crop_v1_to_v2",
        "sourceSchema": u["alice CellCrop 1.1.0"],
        "targetSchema": u["alice CellCrop 2.0.0"],
        "getterCode": {
            "repository": "https://github.com/example/lenses",
            "commit": "0123456789abcdef0123456789abcdef01234567",
            "path": "lenses.crop:get",
        },
        "putterCode": {
            "repository": "https://github.com/example/lenses",
            "commit": "0123456789abcdef0123456789abcdef01234567",
            "path": "lenses.crop:put",
        },
        "language": "python",
        "createdAt": "2026-01-10T00:00:00Z",
    }
    w.put("alice lens", ALICE, LENS, lens)
    return w


async def _fill(dsn: str, rows: list[dict[str, Any]]) -> None:
    # queries resolve verified handles only (the seed's DIDs exist nowhere:
    # a stand-in of the network's identity services tells HANDLES)
    await fold_log(dsn, rows, HANDLES, migrate=True)


@dataclass
class Served:
    url: str
    world: World

    def client(self, **kw: Any) -> AppViewClient:
        return AppViewClient(self.url, **kw)


_dbs = itertools.count()


@pytest.fixture(scope="module")
def served(pg: PostgresCluster) -> Iterator[Served]:
    world = build_world()
    dsn = pg.create_database(f"avclient{next(_dbs)}")
    asyncio.run(_fill(dsn, world.rows))
    with serve_appview(dsn) as url:
        yield Served(url, world)


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- the real AppView: every query ----------------------------------------------------


def test_describe_service(served: Served) -> None:
    out = served.client().describe_service()
    assert out.did.startswith("did:web:")
    assert {SCHEMA, ENTRY, LENS, LABEL} <= set(out.available_collections)
    assert out.record_count[SCHEMA] == 6
    assert out.record_count[ENTRY] == 8


def test_get_entry_and_entries(served: Served) -> None:
    u = served.world.uris
    c = served.client()
    e = c.get_entry(u["alice plate-7"])
    assert isinstance(e, defs.EntryView)
    assert (e.uri, e.did, e.handle, e.name) == (
        u["alice plate-7"],
        ALICE,
        "alice.test",
        "plate-7",
    )
    assert e.schema_ref == u["alice CellCrop 1.1.0"]
    assert (e.schema_name, e.schema_version) == ("CellCrop", "1.1.0")
    assert e.size is not None and e.size.bytes_ == 5_000_000
    got = c.get_entries([u["alice plate-7"], u["bob tiny 0.1.0"]])
    assert sorted(x.uri for x in got) == sorted(
        [u["alice plate-7"], u["bob tiny 0.1.0"]]
    )
    with pytest.raises(AppViewNotFound) as info:
        c.get_entry(at(ALICE, ENTRY, "3lnothinghere"))
    exc = info.value
    assert (exc.method, exc.status, exc.error) == (
        NS + "getEntry",
        404,
        "EntryNotFound",
    )
    assert exc.rule == "XRPC_404" and served.url in exc.uri


def test_get_schema_and_resolve_schema(served: Served) -> None:
    u = served.world.uris
    c = served.client()
    s = c.get_schema(u["alice CellCrop 1.1.0"])
    assert (s.name, s.version, s.did) == ("CellCrop", "1.1.0", ALICE)
    assert s.schema_ == served.world.records[u["alice CellCrop 1.1.0"]]["schema"]
    r = c.resolve_schema("alice.test", "CellCrop", "1.0.0")
    assert r.uri == u["alice CellCrop 1.0.0"]
    assert r.record.version == "1.0.0" and r.cid == record_cid(
        served.world.records[r.uri]
    )
    with pytest.raises(AppViewNotFound) as info:
        c.resolve_schema(ALICE, "CellCrop", "9.9.9")
    assert info.value.error == "SchemaNotFound"


def test_lists_page_through_everything(served: Served) -> None:
    c = served.client()
    w = served.world
    entries = {e.uri for e in c.iter_entries(limit=3)}
    assert entries == {u for u in w.records if f"/{ENTRY}/" in u}
    alice = {s.uri for s in c.iter_schemas(repo="alice.test", limit=2)}
    assert alice == {w.uris[f"alice CellCrop {v}"] for v in ("1.0.0", "1.1.0", "2.0.0")}
    page = c.list_entries(repo=BOB, limit=1)
    assert len(page.entries) == 1 and page.cursor
    lenses = c.list_lenses(source_schema=w.uris["alice CellCrop 1.1.0"])
    assert [x.uri for x in lenses.lenses] == [w.uris["alice lens"]]
    found = c.search_lenses(target_schema=w.uris["alice CellCrop 2.0.0"])
    assert [x.name for x in found.lenses] == ["crop_v1_to_v2"]


def test_search_datasets_with_filters_and_facets(served: Served) -> None:
    c = served.client()
    u = served.world.uris
    out = c.search_datasets("cell crops", tags=["microscopy"], repo="alice.test")
    assert {e.uri for e in out.entries} == {
        u[f"alice cell-crops {v}"] for v in ("1.0.0", "1.1.0", "2.0.0")
    }
    by_schema = c.search_datasets(schema="CellCrop@^1", repo=ALICE, limit=100)
    assert {e.uri for e in by_schema.entries} == {
        u["alice cell-crops 1.0.0"],
        u["alice cell-crops 1.1.0"],
        u["alice plate-7"],
    }
    big = c.search_datasets(sort="size", limit=1, facets=True)
    assert big.entries[0].uri == u["alice plate-7"]
    assert big.facets is not None
    tags = {f.value: f.count for f in big.facets.tags}
    assert tags["microscopy"] == 6
    every = list(c.iter_search_datasets(None, limit=2))
    assert len(every) == 8 and len({e.uri for e in every}) == 8


def test_history_and_lens_path(served: Served) -> None:
    c = served.client()
    u = served.world.uris
    h = c.get_schema_history("CellCrop", repo="alice.test")
    assert [v.version for v in h.versions] == ["1.0.0", "1.1.0", "2.0.0"]
    assert [(v.from_version, v.to_version) for v in h.verdicts] == [
        ("1.0.0", "1.1.0"),
        ("1.1.0", "2.0.0"),
    ]
    with pytest.raises(AppViewQueryError) as info:
        c.get_schema_history("CellCrop")  # alice and mallory both publish it
    assert info.value.error == "AmbiguousName" and info.value.status == 400
    path = c.get_lens_path(u["alice CellCrop 1.1.0"], u["alice CellCrop 2.0.0"])
    assert [s.kind for s in path.steps] == ["lens"]
    assert path.steps[0].lens is not None and path.steps[0].lens.uri == u["alice lens"]


def test_resolve_label(served: Served) -> None:
    out = served.client().resolve_label("alice.test", "stable")
    assert out.uri == served.world.uris["alice plate-7"]
    assert out.label.version == "1.0.0"
    with pytest.raises(AppViewNotFound) as info:
        served.client().resolve_label(ALICE, "nothing")
    assert info.value.error == "LabelNotFound"


def test_bad_parameters_are_refused_before_sending() -> None:
    """A ValueError naming the parameter; nothing is sent (the URL points at a
    closed port, so a request would be AppViewUnavailable)."""
    c = AppViewClient(f"http://127.0.0.1:{closed_port()}")
    for call, where in [
        (lambda: c.search_datasets(limit=1000), "/limit"),
        (lambda: c.search_datasets(tags=["x"] * 11), "/tags"),
        (lambda: c.get_entry("not an at-uri"), "/uri"),
        (lambda: c.get_entries([]), "/uris"),
        (
            lambda: c.get_lens_path("at://a/b/c", "at://a/b/c", max_steps=99),
            "/maxSteps",
        ),
    ]:
        with pytest.raises(ValueError) as info:
            call()
        assert not isinstance(info.value, AppViewUnavailable)
        assert where in str(info.value), str(info.value)
    with pytest.raises(AppViewUnavailable) as down:
        c.describe_service()
    assert down.value.rule == "APPVIEW_UNAVAILABLE"
    assert down.value.method == NS + "describeService"


# -- the real AppView: names -----------------------------------------------------------


def _names(served: Served, **kw: Any) -> NameResolver:
    # a resolver whose PLC lookups fail at once (the seed's DIDs exist nowhere)
    dead = IdentityResolver(plc_url=f"http://127.0.0.1:{closed_port()}", timeout=2)
    return NameResolver(served.client(), resolver=dead, **kw)


@pytest.mark.parametrize(
    ("name", "role", "version"),
    [
        (f"@{ALICE}/CellCrop@^1", "alice CellCrop 1.1.0", "1.1.0"),
        (f"@{ALICE}/CellCrop@1.0.0", "alice CellCrop 1.0.0", "1.0.0"),
        (f"@{ALICE}/CellCrop@~1.0", "alice CellCrop 1.0.0", "1.0.0"),
        (f"@{ALICE}/CellCrop", "alice CellCrop 2.0.0", "2.0.0"),
        (f"@{ALICE}/CellCrop@>=1.0,<2", "alice CellCrop 1.1.0", "1.1.0"),
        ("CellCrop@^2", "alice CellCrop 2.0.0", "2.0.0"),  # only alice has 2.x
        ("CellCrop@2.0.0", "alice CellCrop 2.0.0", "2.0.0"),
        ("Tiny", "bob Tiny 0.1.0", "0.1.0"),
        ("Tiny@0.1.0-beta.1", "bob Tiny 0.1.0-beta.1", "0.1.0-beta.1"),
        ("Tiny@>=0.1.0-beta <0.1.0", "bob Tiny 0.1.0-beta.1", "0.1.0-beta.1"),
    ],
)
def test_schema_names_resolve_through_the_appview(
    served: Served, name: str, role: str, version: str
) -> None:
    got = _names(served).resolve_schema(name)
    assert (got.uri, got.version, got.via, got.kind) == (
        served.world.uris[role],
        version,
        "appview",
        "schema",
    )
    got.check_schema(got.uri, served.world.records[got.uri])


def test_an_ambiguous_schema_name_lists_the_publishers(served: Served) -> None:
    with pytest.raises(AmbiguousNameError) as info:
        _names(served).resolve_schema("CellCrop@^1")
    assert info.value.rule == "NAME_AMBIGUOUS"
    assert info.value.candidates == (
        "@alice.test/CellCrop@1.1.0",
        "@mallory.test/CellCrop@1.0.0",
    )
    assert "qualify the name with @publisher/" in str(info.value)


@pytest.mark.parametrize(
    ("name", "role", "kind", "match"),
    [
        (f"@{ALICE}/cell-crops@^1", "alice cell-crops 1.1.0", "entry", "name"),
        (f"@{ALICE}/cell-crops@1.0.0", "alice cell-crops 1.0.0", "entry", "name"),
        (f"@{ALICE}/cell-crops", "alice cell-crops 2.0.0", "entry", "name"),
        (f"@{ALICE}/CellCrop@~1.1", "alice cell-crops 1.1.0", "entry", "schema"),
        (f"@{ALICE}/CellCrop@2", "alice cell-crops 2.0.0", "entry", "schema"),
        ("plate-7", "alice plate-7", "entry", "name"),
        ("cell-crops@2", "alice cell-crops 2.0.0", "entry", "name"),
        ("tiny", "bob tiny 0.1.0", "entry", "name"),
    ],
)
def test_dataset_names_resolve_through_the_appview(
    served: Served, name: str, role: str, kind: str, match: str
) -> None:
    got = _names(served).resolve_dataset(name)
    assert (got.uri, got.kind, got.match, got.via) == (
        served.world.uris[role],
        kind,
        match,
        "appview",
    )
    rec = served.world.records[got.uri]
    schema = served.world.records[rec["schemaRef"]]
    got.check_entry(got.uri, rec, rec["schemaRef"], schema)


@pytest.mark.parametrize("name", [f"@{ALICE}/stable", f"@{ALICE}/stable@^1"])
def test_a_label_no_repository_proves_is_refused(served: Served, name: str) -> None:
    """The AppView knows the label, but the label record cannot be read, verified,
    from the publisher's repository (the seed's DIDs exist nowhere): refused,
    never used on the index's word (labels that verify: the local network's
    tests below)."""
    with pytest.raises(NameMismatchError) as info:
        _names(served, fallback=False).resolve_dataset(name)
    text = str(info.value)
    assert "not a label record of " + ALICE in text, text
    assert f"PDS of {ALICE} (unresolved" in text, text


def test_an_ambiguous_dataset_name_lists_the_publishers(served: Served) -> None:
    u = served.world.uris
    with pytest.raises(AmbiguousNameError) as info:
        _names(served).resolve_dataset("cell-crops@^1")
    assert info.value.candidates == (
        f"@alice.test/cell-crops@^1 ({u['alice cell-crops 1.1.0']})",
        f"@mallory.test/cell-crops@^1 ({u['mallory cell-crops']})",
    )


def test_not_found_names_say_what_was_tried(served: Served) -> None:
    with pytest.raises(NameNotFoundError) as info:
        _names(served).resolve_schema(f"@{ALICE}/CellCrop@^3")
    text = str(info.value)
    assert info.value.rule == "NAME_NOT_FOUND"
    assert f"AppView {served.url} (not found)" in text
    assert f"PDS of {ALICE} (unresolved" in text
    with pytest.raises(NameNotFoundError) as info:
        _names(served, fallback=False).resolve_dataset(f"@{ALICE}/nothing")
    assert "PDS" not in str(info.value) and "no label or dataset entry" in str(
        info.value
    )
    with pytest.raises(NameNotFoundError):
        _names(served).resolve_schema("Nothing@^1")


def test_hostile_names_in_results_come_back_inert(served: Served) -> None:
    e = served.client().get_entry(served.world.uris["mallory hostile"])
    assert e.name == "hostile " + HOSTILE  # the data is the data...
    with pytest.raises(NameNotFoundError) as info:  # ...but messages are inert
        _names(served, fallback=False).resolve_dataset("x" + HOSTILE[5:9])
    assert "\x1b" not in str(info.value)


# -- the setting ----------------------------------------------------------------------


def test_missing_setting_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(APPVIEW_URL_ENV, raising=False)
    with pytest.raises(AppViewNotConfigured) as info:
        AppViewClient()
    assert "ATDATA_APPVIEW_URL" in str(info.value)
    assert info.value.rule == "APPVIEW_NOT_CONFIGURED"
    with pytest.raises(AppViewNotConfigured) as names:
        NameResolver().resolve_dataset("cell-crops@^1")
    assert "ATDATA_APPVIEW_URL" in str(names.value)
    assert "@handle/cell-crops" in str(names.value)


def test_the_setting_is_read(monkeypatch: pytest.MonkeyPatch, served: Served) -> None:
    monkeypatch.setenv(APPVIEW_URL_ENV, served.url + "/ ")
    c = AppViewClient()
    assert c.url == served.url
    assert c.describe_service().did.startswith("did:web:")
    monkeypatch.setenv(APPVIEW_URL_ENV, "ftp://appview.example")
    with pytest.raises(UnsafeUrlError):
        AppViewClient()
    assert AppViewClient(served.url + "/").url == served.url  # argument wins


# -- a hostile peer ---------------------------------------------------------------------

Reply = Callable[[BaseHTTPRequestHandler], None]


class Hostile:
    """A tiny HTTP server whose every answer is the current ``reply``; it records
    each request's path and headers."""

    def __init__(self) -> None:
        self.reply: Reply = lambda h: _json(h, 200, {})
        self.requests: list[tuple[str, dict[str, str]]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.requests.append(
                    (self.path, {k.lower(): v for k, v in self.headers.items()})
                )
                try:
                    outer.reply(self)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _json(h: BaseHTTPRequestHandler, status: int, body: Any) -> None:
    data = json.dumps(body).encode()
    h.send_response(status)
    h.send_header("Content-Type", "application/json")
    h.send_header("Content-Length", str(len(data)))
    h.end_headers()
    h.wfile.write(data)


@pytest.fixture
def hostile() -> Iterator[Hostile]:
    server = Hostile()
    yield server
    server.close()


def _view(uri: str = f"at://{ALICE}/{ENTRY}/3labc") -> dict[str, Any]:
    return {
        "uri": uri,
        "cid": record_cid({"a": 1}),
        "did": ALICE,
        "name": "ok",
        "schemaRef": f"at://{ALICE}/{SCHEMA}/CellCrop:1.0.0",
        "storage": {
            "$type": "science.alt.dataset.storageExternal",
            "urls": ["https://data.example.org/a.tar"],
        },
        "createdAt": "2026-01-01T00:00:00Z",
    }


def test_a_good_answer_from_our_peer_parses(hostile: Hostile) -> None:
    """The control: the peer's well-formed answer is accepted, so the failures
    below are the hostility, not the harness."""
    hostile.reply = lambda h: _json(h, 200, {"entries": [_view()]})
    out = AppViewClient(hostile.url).search_datasets("x", tags=["a", "b"], facets=True)
    assert [e.name for e in out.entries] == ["ok"]
    path, _headers = hostile.requests[-1]
    assert path == f"/xrpc/{NS}searchDatasets?q=x&tags=a&tags=b&facets=true"


def test_an_oversize_answer_is_refused(hostile: Hostile) -> None:
    def announced(h: BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        h.send_header("Content-Length", str(10**9))
        h.end_headers()
        h.wfile.write(b"{" * 1000)

    def streamed(h: BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        h.end_headers()  # no length: read until close
        for _ in range(200):
            h.wfile.write(b" " * 8192)

    for reply in (announced, streamed):
        hostile.reply = reply
        with pytest.raises(AppViewResponseError) as info:
            AppViewClient(hostile.url, max_bytes=64 * 1024).describe_service()
        assert "larger than its limit of 65536 bytes" in str(info.value)
        assert info.value.rule == "APPVIEW_RESPONSE_INVALID"


@pytest.mark.parametrize(
    ("body", "where"),
    [
        (b"<html>not json</html>", "not valid JSON"),
        (b"[" * 100_000 + b"]" * 100_000, "not valid JSON"),
        (json.dumps({"cursor": "x"}).encode(), "/entries: Field required"),
        (json.dumps({"entries": {"a": 1}}).encode(), "/entries"),
        (
            json.dumps({"entries": [_view("javascript:alert(1)")]}).encode(),
            "/entries/0/uri",
        ),
        (
            json.dumps({"entries": [_view() | {"name": "x" * 201}]}).encode(),
            "/entries/0/name",
        ),
        (json.dumps({"entries": [_view() | {"did": None}]}).encode(), "/entries/0/did"),
        (
            json.dumps({"entries": [_view() | {"createdAt": 7}]}).encode(),
            "/entries/0/createdAt",
        ),
        (json.dumps({"entries": [], "cursor": "c" * 4097}).encode(), "/cursor"),
    ],
)
def test_answers_of_the_wrong_shape_are_refused(
    hostile: Hostile, body: bytes, where: str
) -> None:
    def reply(h: BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)

    hostile.reply = reply
    with pytest.raises(AppViewResponseError) as info:
        AppViewClient(hostile.url).search_datasets("x")
    assert where in str(info.value), str(info.value)
    assert "alert(1)" not in str(info.value) and "x" * 201 not in str(info.value)
    assert info.value.method == NS + "searchDatasets"


def test_a_trickling_answer_hits_the_deadline(hostile: Hostile) -> None:
    def trickle(h: BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        h.send_header("Content-Length", "100000")
        h.end_headers()
        for _ in range(100000):
            h.wfile.write(b" ")
            h.wfile.flush()
            time.sleep(0.05)

    hostile.reply = trickle
    with pytest.raises(AppViewUnavailable) as info:
        AppViewClient(hostile.url, timeout=0.6).describe_service()
    assert "deadline of 0.6 s" in str(info.value)


def test_failing_servers_are_retried_then_unavailable(hostile: Hostile) -> None:
    hostile.reply = lambda h: _json(h, 503, {"error": "Unavailable", "message": "x"})
    with pytest.raises(AppViewUnavailable) as info:
        AppViewClient(hostile.url, timeout=5).describe_service()
    assert info.value.status == 503
    assert len(hostile.requests) == 3  # the default policy's attempts
    with pytest.raises(AppViewUnavailable):
        AppViewClient(f"http://127.0.0.1:{closed_port()}").list_entries()


def test_error_answers_are_typed_and_inert(hostile: Hostile) -> None:
    hostile.reply = lambda h: _json(
        h, 400, {"error": "InvalidRequest", "message": HOSTILE + "y" * 10_000}
    )
    with pytest.raises(AppViewQueryError) as info:
        AppViewClient(hostile.url).list_schemas()
    exc = info.value
    assert (exc.status, exc.error, exc.rule) == (400, "InvalidRequest", "XRPC_400")
    assert exc.message is not None and len(exc.message) <= 501
    for bad in ("\x1b", "\u202e", "\u2066", "\r", "\n"):
        assert bad not in str(exc)
    assert "\\u001b" in str(exc) and "\\u202e" in str(exc)
    # atdata-app 0.4 answers FastAPI's {"detail": …}
    hostile.reply = lambda h: _json(h, 404, {"detail": "Schema not found"})
    with pytest.raises(AppViewNotFound) as nf:
        AppViewClient(hostile.url).get_schema(f"at://{ALICE}/{SCHEMA}/x")
    assert (nf.value.error, nf.value.message) == (None, "Schema not found")
    # a name that is no identifier is dropped
    hostile.reply = lambda h: _json(h, 400, {"error": "<b>x</b>", "message": 5})
    with pytest.raises(AppViewQueryError) as odd:
        AppViewClient(hostile.url).list_schemas()
    assert (odd.value.error, odd.value.message) == (None, None)


def test_a_cross_origin_redirect_is_refused(hostile: Hostile) -> None:
    def redirect(h: BaseHTTPRequestHandler) -> None:
        h.send_response(302)
        h.send_header("Location", "http://elsewhere.example/xrpc/x")
        h.send_header("Content-Length", "0")
        h.end_headers()

    hostile.reply = redirect
    with pytest.raises(RedirectRefusedError):
        AppViewClient(hostile.url).describe_service()


def test_a_repeated_cursor_ends_the_walk(hostile: Hostile) -> None:
    hostile.reply = lambda h: _json(h, 200, {"entries": [_view()], "cursor": "same"})
    c = AppViewClient(hostile.url)
    with pytest.raises(AppViewResponseError, match="repeated a cursor"):
        list(c.iter_entries())
    assert len(hostile.requests) == 2


def test_no_credentials_reach_the_appview(
    hostile: Hostile, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ATDATA_PASSWORD", "hunter2-app-password")
    monkeypatch.setenv("ATDATA_HANDLE", "alice.test")
    hostile.reply = lambda h: _json(
        h, 200, {"versions": [], "verdicts": [], "name": "CellCrop", "did": ALICE}
    )
    resolver = IdentityResolver(plc_url=f"http://127.0.0.1:{closed_port()}", timeout=1)
    with pytest.raises(NameNotFoundError):
        NameResolver(hostile.url, resolver=resolver).resolve_schema(
            f"@{ALICE}/CellCrop"
        )
    assert hostile.requests
    for _path, headers in hostile.requests:
        assert not {"authorization", "cookie", "x-pds-auth", "atproto-proxy"} & set(
            headers
        )
        assert "hunter2" not in json.dumps(headers)


# -- a real local network: the AppView fed by a verified backfill, and the PDS -----


@dataclass
class Published:
    """alice (Crop 1.0.0, 1.1.0, 2.0.0; entries "crops" on each, newer each;
    the label "stable" on the 1.0.0 one) and bob (his own Crop 1.0.0, an entry
    "crops" of it) on the local PDS, backfilled into a real AppView."""

    net: Any
    url: str
    alice: Any
    bob: Any
    uris: dict[str, str]
    work: Path

    def resolver(self) -> IdentityResolver:
        return IdentityResolver(
            plc_url=self.net.plc_url, handle_service=self.net.pds_url
        )

    def reader(self) -> AtmosphereClient:
        return AtmosphereClient(resolver=self.resolver())

    def env(self) -> dict[str, str]:
        return {
            "ATDATA_PLC_URL": self.net.plc_url,
            "ATDATA_HANDLE_SERVICE": self.net.pds_url,
            "ATDATA_APPVIEW_URL": "",
        }


def _labels(version: str, n: int = 3) -> list[str]:
    return [f"{version}-{i}" for i in range(n)]


def _publish_entry(
    client: AtmosphereClient, record: dict[str, Any], uri: str, name: str, work: Path
) -> str:
    cls = compile_schema_record(record, uri=uri)
    values: dict[str, Any] = {"score": 0.5}
    if "plate" in record["schema"]["properties"]:
        values["plate"] = 7
    samples = [cls(label=label, **values) for label in _labels(record["version"])]
    out = work / "shards" / f"{name}-{record['version']}-{client.did[-6:]}"
    out.mkdir(parents=True)
    shards = write_samples(samples, f"{out}/s-%06d.tar", maxcount=2, progress=False)
    return publish_entry(
        client,
        shards,
        schema_uri=uri,
        name=name,
        storage=BlobStorage(),
        tags=["microscopy"],
        journal_dir=work / "journal",
    ).uri


async def _backfill(dsn: str, net: Any, accounts: list[Any]) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await migrate_ingest(conn)
        await migrate_appview(conn)
        log = LogWriter()
        # the identity events the ingester would have logged for the accounts
        await append_rows(conn, [log.identity(a.did, a.handle) for a in accounts])
    finally:
        await conn.close()
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=4)
    try:
        stats = await Backfiller(
            pool, source=net.pds_url, kind="pds", plc_url=net.plc_url, force=True
        ).run(dids=[a.did for a in accounts])
        assert stats.failed == 0, stats.summary()
        indexer = Indexer(pool)
        while await indexer.fold_once():
            pass
        # the handles, verified on the local network (PDS resolveHandle + PLC)
        verified = await verify_all(pool, make_resolver(net.plc_url, net.pds_url))
        assert verified.verified == len(accounts), verified
    finally:
        await pool.close()


@pytest.fixture(scope="module")
def published(
    net: Any, pg: PostgresCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Published]:
    work = tmp_path_factory.mktemp("names")
    tag = f"{next(_dbs)}{int(time.time()) % 100000}"
    alice, bob = net.create_account(f"nma{tag}"), net.create_account(f"nmb{tag}")
    resolver = IdentityResolver(plc_url=net.plc_url, handle_service=net.pds_url)

    def login(account: Any) -> AtmosphereClient:
        return AtmosphereClient.login(
            account.handle,
            account.password,
            pds_url=net.pds_url,
            resolver=resolver,
            session_file=work / f"{account.handle}.session",
        )

    a, b = login(alice), login(bob)
    uris: dict[str, str] = {}
    records = [
        schema_record("Crop", v, "2026-01-01T00:00:00Z")
        for v in ("1.0.0", "1.1.0", "2.0.0")
    ]
    for rec, pub in zip(records, publish_schemas(a, records), strict=True):
        uris[f"alice Crop {rec['version']}"] = pub.write.uri
    bob_rec = schema_record("Crop", "1.0.0", "2026-01-01T00:00:00Z")
    uris["bob Crop 1.0.0"] = publish_schemas(b, [bob_rec])[0].write.uri
    for rec in records:
        v = rec["version"]
        uris[f"alice crops {v}"] = _publish_entry(
            a, rec, uris[f"alice Crop {v}"], "crops", work
        )
    uris["bob crops"] = _publish_entry(
        b, bob_rec, uris["bob Crop 1.0.0"], "crops", work
    )
    uris["alice label"] = a.create_record(
        LABEL,
        new_tid(),
        {
            "$type": LABEL,
            "name": "stable",
            "version": "1.0.0",
            "datasetUri": uris["alice crops 1.0.0"],
            "createdAt": "2026-02-01T00:00:00Z",
        },
    ).uri
    dsn = pg.create_database(f"avnames{next(_dbs)}")
    asyncio.run(_backfill(dsn, net, [alice, bob]))
    with serve_appview(dsn) as url:
        yield Published(net, url, alice, bob, uris, work)


def _values(ds: Any) -> list[str]:
    return sorted(s.label for s in ds.ordered())


def test_from_atproto_loads_a_name_through_the_appview(published: Published) -> None:
    p = published
    a = p.alice.handle  # fallback=False: the AppView answers, or the test fails
    ds = Dataset.from_atproto(
        f"@{a}/crops@^1",
        client=p.reader(),
        appview=p.url,
        fallback=False,
        progress=False,
    )
    assert _values(ds) == _labels("1.1.0")
    assert ds.entry == p.uris["alice crops 1.1.0"]
    newest = Dataset.from_atproto(
        f"@{a}/crops", client=p.reader(), appview=p.url, fallback=False
    )
    assert _values(newest) == _labels("2.0.0")
    labelled = Dataset.from_atproto(
        f"@{a}/stable", client=p.reader(), appview=p.url, fallback=False
    )
    assert _values(labelled) == _labels("1.0.0")
    by_schema = Dataset.from_atproto(
        f"@{a}/Crop@~1.0", client=p.reader(), appview=p.url, fallback=False
    )
    assert _values(by_schema) == _labels("1.0.0")
    # an AT-URI needs no AppView, and refuses one
    direct = Dataset.from_atproto(p.uris["alice crops 2.0.0"], client=p.reader())
    assert _values(direct) == _labels("2.0.0")
    with pytest.raises(TypeError):
        Dataset.from_atproto(p.uris["alice crops 2.0.0"], appview=p.url)


def test_names_resolve_through_the_appview_with_handles(published: Published) -> None:
    p = published
    names = NameResolver(p.url, resolver=p.resolver())
    got = names.resolve_schema(f"@{p.alice.handle}/Crop@^1")
    assert (got.uri, got.via, got.did) == (
        p.uris["alice Crop 1.1.0"],
        "appview",
        p.alice.did,
    )
    with pytest.raises(AmbiguousNameError) as info:
        names.resolve_dataset("crops@1.0.0")
    assert len(info.value.candidates) == 2
    only_alice = names.resolve_dataset("crops@2")
    assert only_alice.uri == p.uris["alice crops 2.0.0"]


@pytest.mark.parametrize("down", ["unavailable", "unconfigured"])
def test_the_pds_answers_when_the_appview_cannot(
    published: Published, monkeypatch: pytest.MonkeyPatch, down: str
) -> None:
    p = published
    monkeypatch.delenv(APPVIEW_URL_ENV, raising=False)
    appview = f"http://127.0.0.1:{closed_port()}" if down == "unavailable" else None
    names = NameResolver(appview, resolver=p.resolver())
    cases = {
        f"@{p.alice.handle}/crops@^1": ("alice crops 1.1.0", "entry"),
        f"@{p.alice.handle}/crops": ("alice crops 2.0.0", "entry"),
        f"@{p.alice.handle}/stable": ("alice crops 1.0.0", "label"),
        f"@{p.alice.did}/Crop@2": ("alice crops 2.0.0", "entry"),
        f"@{p.bob.handle}/crops": ("bob crops", "entry"),
    }
    for name, (role, kind) in cases.items():
        got = names.resolve_dataset(name)
        assert (got.uri, got.kind, got.via) == (p.uris[role], kind, "pds"), name
        note = got.tried[0]
        assert (
            "APPVIEW_UNAVAILABLE" in note
            if down == "unavailable"
            else "not configured: ATDATA_APPVIEW_URL unset" in note
        ), note
    schema = names.resolve_schema(f"@{p.alice.handle}/Crop@>=1.0.0, <2")
    assert (schema.uri, schema.via) == (p.uris["alice Crop 1.1.0"], "pds")
    ds = Dataset.from_atproto(
        f"@{p.alice.handle}/crops@^1", client=p.reader(), appview=appview
    )
    assert _values(ds) == _labels("1.1.0")
    with pytest.raises(NameNotFoundError) as info:
        names.resolve_dataset(f"@{p.alice.handle}/crops@^3")
    text = str(info.value)
    assert "listRecords science.alt.dataset.entry" in text
    assert "listRecords science.alt.dataset.label" in text
    if down == "unconfigured":
        with pytest.raises(AppViewNotConfigured, match="ATDATA_APPVIEW_URL"):
            names.resolve_dataset("crops@^1")
    else:
        with pytest.raises(AppViewUnavailable):
            names.resolve_dataset("crops@^1")  # no publisher: nobody else to ask


def _lock(path: Path) -> dict[str, Any]:
    doc = json.loads((path / "atdata-gen.lock").read_text())
    return {e["requested"]: e for e in doc["schemas"]}


def test_pull_pins_a_name(published: Published, tmp_path: Path) -> None:
    p = published
    name = f"@{p.alice.handle}/Crop@^1"
    proc = run_cli(["pull", name, "--appview", p.url], tmp_path, **p.env())
    assert proc.returncode == 0, proc.stderr
    assert f"pinned {name} -> {p.uris['alice Crop 1.1.0']}" in proc.stdout
    pinned = _lock(tmp_path)[name]
    assert (pinned["uri"], pinned["did"]) == (p.uris["alice Crop 1.1.0"], p.alice.did)
    assert pinned["value"]["version"] == "1.1.0"
    # the AppView down: the name resolves on the PDS
    down = f"http://127.0.0.1:{closed_port()}"
    second = f"@{p.alice.handle}/Crop@2"
    proc = run_cli(["pull", second, "--appview", down], tmp_path, **p.env())
    assert proc.returncode == 0, proc.stderr
    assert _lock(tmp_path)[second]["uri"] == p.uris["alice Crop 2.0.0"]
    assert _lock(tmp_path)[name]["uri"] == p.uris["alice Crop 1.1.0"]  # kept
    # a newer version in range: --update re-resolves the name (here on the PDS)
    a = AtmosphereClient.login(
        p.alice.handle,
        p.alice.password,
        pds_url=p.net.pds_url,
        resolver=p.resolver(),
        session_file=p.work / "alice-again.session",
    )
    newer = publish_schemas(a, [schema_record("Crop", "1.2.0", "2026-03-01T00:00:00Z")])
    proc = run_cli(["pull", "--update", "--appview", down], tmp_path, **p.env())
    assert proc.returncode == 0, proc.stderr
    assert (
        f"changed {name} -> {p.uris['alice Crop 1.1.0']} -> {newer[0].write.uri}"
        in (proc.stdout)
    )
    assert _lock(tmp_path)[name]["uri"] == newer[0].write.uri


def test_pull_without_an_appview_or_publisher_says_so(
    published: Published, tmp_path: Path
) -> None:
    proc = run_cli(["pull", "Crop@^1"], tmp_path, **published.env())
    assert proc.returncode == 2
    assert "ATDATA_APPVIEW_URL" in proc.stderr and "@handle/Crop" in proc.stderr
    assert not (tmp_path / "atdata-gen.lock").exists()


def _hostile_appview(answers: dict[str, tuple[int, Any]]) -> Hostile:
    server = Hostile()

    def reply(h: BaseHTTPRequestHandler) -> None:
        method = h.path.split("?")[0].rsplit(".", 1)[-1]
        status, body = answers.get(method, (404, {"error": "MethodNotImplemented"}))
        _json(h, status, body)

    server.reply = reply
    return server


def test_a_hostile_appview_cannot_substitute_a_record(
    published: Published, tmp_path: Path
) -> None:
    """The index says alice's name is bob's record (a real, verified record of
    another repository): pull and from_atproto read it verified, see whose it
    is, and refuse it; nothing is pinned or loaded."""
    p = published
    honest = AppViewClient(p.url)
    bob_schema = honest.get_schema(p.uris["bob Crop 1.0.0"]).to_wire()
    bob_entry = honest.get_entry(p.uris["bob crops"]).to_wire()
    lie = bob_schema | {"did": p.alice.did}
    server = _hostile_appview(
        {
            "resolveSchema": (200, {"uri": bob_schema["uri"], "cid": bob_schema["cid"],
                                    "record": {"$type": SCHEMA} | {
                                        k: v for k, v in bob_schema.items()
                                        if k in ("name", "version", "schemaType",
                                                 "schema", "createdAt")}}),
            "getSchemaHistory": (200, {"name": "Crop", "did": p.alice.did,
                                       "versions": [lie], "verdicts": []}),
            "resolveLabel": (404, {"error": "LabelNotFound", "message": "none"}),
            "searchDatasets": (200, {"entries": [bob_entry | {"did": p.alice.did,
                                                              "name": "crops"}]}),
        }
    )  # fmt: skip
    try:
        for name in (f"@{p.alice.handle}/Crop@^1", f"@{p.alice.handle}/Crop@1.0.0"):
            proc = run_cli(["pull", name, "--appview", server.url], tmp_path, **p.env())
            assert proc.returncode == 2, proc.stdout
            assert "NAME_MISMATCH" in proc.stderr
            assert f"not in {p.alice.did}" in proc.stderr
            assert not (tmp_path / "atdata-gen.lock").exists()
        with pytest.raises(NameMismatchError, match=f"not in {p.alice.did}"):
            Dataset.from_atproto(
                f"@{p.alice.handle}/crops", client=p.reader(), appview=server.url
            )
    finally:
        server.close()


def test_a_hostile_appview_cannot_substitute_a_labelled_entry(
    published: Published,
) -> None:
    """The review's reproduction on the local network: the index says alice's
    label "stable" names her crops 2.0.0 (a real, verified entry of her own
    repository; the label really names crops 1.0.0), or a label version she never
    published. The label record is looked up in her repository (listRecords),
    read verified (sync.getRecord) and found to say otherwise: refused, nothing
    is loaded. The honest AppView's label resolves to the verified label."""
    p = published
    a = p.alice.handle
    honest = AppViewClient(p.url).resolve_label(p.alice.did, "stable").to_wire()
    assert honest["uri"] == p.uris["alice crops 1.0.0"]
    other = p.uris["alice crops 2.0.0"]
    lies = {
        "another entry": honest
        | {"uri": other, "label": honest["label"] | {"datasetUri": other}},
        "another version": honest | {"label": honest["label"] | {"version": "1.0.1"}},
    }
    for what, lie in lies.items():
        server = _hostile_appview({"resolveLabel": (200, lie)})
        try:
            names = NameResolver(server.url, resolver=p.resolver())
            with pytest.raises(NameMismatchError, match="not a label record") as info:
                names.resolve_dataset(f"@{a}/stable")
            assert info.value.rule == "NAME_MISMATCH", what
            with pytest.raises(NameMismatchError, match="not a label record"):
                Dataset.from_atproto(
                    f"@{a}/stable", client=p.reader(), appview=server.url
                )
        finally:
            server.close()
    got = NameResolver(p.url, resolver=p.resolver(), fallback=False).resolve_dataset(
        f"@{a}/stable"
    )
    assert (got.kind, got.uri, got.label_uri) == (
        "label",
        p.uris["alice crops 1.0.0"],
        p.uris["alice label"],
    )


HINT = "is ATDATA_APPVIEW_URL the AppView's base URL (without /xrpc)?"


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (501, {"error": "MethodNotImplemented", "message": "Method Not Implemented"}),
        (501, None),
        (404, None),
        (404, {"detail": "Not Found"}),  # FastAPI's answer for a path it has not
    ],
)
def test_a_method_the_server_does_not_serve_fails_at_once_with_a_hint(
    hostile: Hostile, status: int, body: Any
) -> None:
    """A URL that is not an AppView's base (a PDS, the AppView's /xrpc itself)
    answers 501 or a bare 404: no retry, and the error says what to check."""

    def reply(h: BaseHTTPRequestHandler) -> None:
        if body is None:
            h.send_response(status)
            h.send_header("Content-Type", "text/html")
            h.send_header("Content-Length", "9")
            h.end_headers()
            h.wfile.write(b"<p>no</p>")
        else:
            _json(h, status, body)

    hostile.reply = reply
    with pytest.raises(AppViewUnavailable) as info:
        AppViewClient(hostile.url, timeout=5).get_entry(f"at://{ALICE}/{ENTRY}/3labc")
    assert len(hostile.requests) == 1
    assert info.value.status == status
    assert HINT in str(info.value)
    assert "keeps failing" not in str(info.value)


def test_a_named_not_found_is_still_not_found(hostile: Hostile) -> None:
    hostile.reply = lambda h: _json(
        h, 404, {"error": "EntryNotFound", "message": "no such entry"}
    )
    with pytest.raises(AppViewNotFound):
        AppViewClient(hostile.url).get_entry(f"at://{ALICE}/{ENTRY}/3labc")
    assert len(hostile.requests) == 1


def test_a_url_ending_in_xrpc_is_its_base(
    hostile: Hostile, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    hostile.reply = lambda h: _json(h, 200, {"entries": [_view()]})
    caplog.set_level("WARNING")
    for given in (hostile.url + "/xrpc", hostile.url + "/xrpc/"):
        client = AppViewClient(given)
        assert client.url == hostile.url
        client.search_datasets("x")
        assert hostile.requests[-1][0].startswith(f"/xrpc/{NS}searchDatasets?")
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warned) == 2 and all("/xrpc" in w for w in warned)
    monkeypatch.setenv("ATDATA_APPVIEW_URL", hostile.url + "/xrpc")
    assert AppViewClient().url == hostile.url
