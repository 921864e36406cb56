"""atdata 0.7.0b1's OWN AppView client against our AppView: the real app
(create_app) served by uvicorn on loopback over an index the indexer folded (the
seed of test_xrpc), and atdata's client in its Python 3.12 environment
(tests/interop/atdata_appview_side.py, batch mode).

atdata's loaders fall back to the publisher's PDS when the AppView fails; the side
script makes every fallback raise and returns atdata's warnings, so each answer
checked here came from our AppView, and the test asserts that atdata warned of
nothing.
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn
from atdata_appview.app import create_app
from atdata_appview.config import Settings
from atdata_ingest.testing.postgres import PostgresCluster

from ..conftest import CORPUS, ROOT
from .test_xrpc import (
    ALICE,
    BOB,
    BULK,
    ENTRY,
    HANDLES,
    HOSTILE_NAME,
    World,
    _migrate,
    build_world,
    expected_entry,
    fold,
)

SIDE = ROOT / "tests" / "interop" / "atdata_appview_side.py"


class _Server(uvicorn.Server):
    def install_signal_handlers(self) -> None:  # not the main thread
        pass


@pytest.fixture(scope="module")
def served(pg: PostgresCluster) -> Iterator[tuple[World, str]]:
    """The seed indexed and served on a loopback port: (world, base URL)."""
    w = build_world()
    dsn = pg.create_database("atdata_client")
    asyncio.run(_migrate(dsn))
    asyncio.run(fold(dsn, w.rows))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    settings = Settings.from_env(
        {"ATDATA_APPVIEW_DSN": dsn}, rate_per_second=0, port=port
    )
    server = _Server(
        uvicorn.Config(create_app(settings), log_level="warning", lifespan="on")
    )
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, daemon=True
    )
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            pytest.fail("the AppView server did not start")
        time.sleep(0.05)
    try:
        yield w, f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def atdata(python: str, url: str, jobs: list[dict[str, Any]]) -> list[Any]:
    """Run ``jobs`` through atdata's client; each result's value (errors and
    warnings fail the test unless the job says ``"expect_error"``)."""
    proc = subprocess.run(
        [python, str(SIDE), url],
        input=json.dumps(jobs),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout)
    assert len(results) == len(jobs)
    out = []
    for job, res in zip(jobs, results, strict=True):
        if job.get("expect_error"):
            assert "error" in res, (job, res)
            out.append(res)
            continue
        assert "error" not in res, (job, res)
        assert res["warnings"] == [], (job, res["warnings"])
        out.append(res["ok"])
    return out


def test_atdata_finds_and_loads_through_our_appview(
    served: tuple[World, str], atdata_python: str
) -> None:
    w, url = served
    s = w.schemas
    cellcrops = {w.entries["Cell crops plate 7"], w.entries["Cell crops second screen"]}
    jobs: list[dict[str, Any]] = [
        {"op": "search_datasets", "q": "cell crops"},
        {"op": "search_datasets", "q": "cell crops", "tags": ["microscopy"], "limit": 100},
        {"op": "search_datasets", "q": "bulk", "schema_ref": s["ImageSample@1.0.0"],
         "repo": "bob.test", "limit": 100},
        {"op": "backend", "text": "cel crops"},
        {"op": "backend", "tags": ["microscopy"]},
        {"op": "backend", "schema_ref": s["CellCrop@1.1.0"]},
        {"op": "backend", "text": "bulk", "limit": 10},
        {"op": "backend_pages", "text": "bulk shard", "limit": 7},
        {"op": "backend_pages", "limit": 5},
        {"op": "health_check"},
        {"op": "describe_service"},
        {"op": "get_entries", "uris": [w.entries["Tiny images"],
                                       w.entries["Cell crops plate 7"]]},
        {"op": "get_entry", "uri": w.entries[HOSTILE_NAME]},
        {"op": "list_entries", "repo": BOB, "limit": 1000},
        {"op": "list_entries", "limit": 1000},
        {"op": "resolve_schema", "handle": "alice.test", "schema_id": "CellCrop",
         "version": "1.1.0", "build": False},
        {"op": "resolve_schema", "handle": ALICE, "schema_id": "CellCrop",
         "version": "1.0.0"},
        {"op": "resolve_schema", "handle": "bob.test", "schema_id": "ImageSample"},
        {"op": "list_schemas", "repo": ALICE, "limit": 100},
        {"op": "list_lenses", "limit": 100},
        {"op": "find_lenses", "source": s["CellCrop@1.1.0"]},
        {"op": "search_lenses", "target": s["ImageSample@1.0.0"]},
        {"op": "resolve_label", "handle": "alice.test", "name": "stable"},
        {"op": "xrpc", "nsid": "science.alt.dataset.getEntry",
         "params": {"uri": w.entries["Tiny images"] + "x"}, "expect_error": True},
        {"op": "xrpc", "nsid": "science.alt.dataset.searchDatasets",
         "params": {"q": "bulk", "cursor": "forged"}, "expect_error": True},
    ]  # fmt: skip
    (
        text, text_tag, filtered, typo, by_tag, by_ref, bulk_page, bulk_pages,
        all_pages, healthy, describe,
        entries, hostile, bobs, everyone, cellcrop11, cellcrop, image, alice_schemas, lenses,
        found_lenses, searched_lenses, label, missing, forged,
    ) = atdata(atdata_python, url, jobs)  # fmt: skip

    # Atmosphere.search_datasets: the entries, as records
    assert [e["name"] for e in text][:2] == [
        "Cell crops plate 7",
        "Cell crops second screen",
    ]
    assert {e["uri"] for e in text_tag} == cellcrops
    plate = next(e for e in text_tag if e["uri"] == w.entries["Cell crops plate 7"])
    want = expected_entry(w, w.entries["Cell crops plate 7"])
    assert {k: plate[k] for k in want} == want
    assert {e["uri"] for e in filtered} == {
        w.entries[f"Bulk shard set {n:02d}"] for n in range(BULK)
    }
    # AppViewSearchBackend: text (with a typo), tag, schema
    assert {i["source"] for i in typo["items"]} == {"atmosphere"}
    assert [i["name"] for i in typo["items"]][:2] == [
        "Cell crops plate 7", "Cell crops second screen"
    ]  # fmt: skip
    first = typo["items"][0]
    assert first["schema_ref"] == s["CellCrop@1.1.0"]
    assert first["tags"] == ["microscopy", "cells"]
    assert first["description"] == "Single-cell crops from plate 7 of the screen"
    assert {i["uri"] for i in by_tag["items"]} == {
        u for u, r in w.entry_records().items() if "microscopy" in r.get("tags", [])
    }
    assert [i["uri"] for i in by_ref["items"]] == [w.entries["Cell crops plate 7"]]
    assert len(bulk_page["items"]) == 10 and bulk_page["cursor"]
    # pages walked with atdata's backend and our cursors: each entry once
    assert [len(p) for p in bulk_pages] == [7, 7, 7, 7, 2]
    walked = [u for p in bulk_pages for u in p]
    assert sorted(walked) == sorted(
        w.entries[f"Bulk shard set {n:02d}"] for n in range(BULK)
    )
    every = [u for p in all_pages for u in p]
    assert len(every) == len(set(every)) and set(every) == set(w.entry_records())
    assert healthy is True
    # describeService
    assert describe["did"] == f"did:web:127.0.0.1%3A{url.rsplit(':', 1)[1]}"
    assert ENTRY in describe["availableCollections"]
    assert describe["recordCount"][ENTRY] == len(w.entry_records())
    # getEntries, DatasetLoader.get (getEntry), DatasetLoader.list_all (listEntries)
    assert [e["name"] for e in entries] == ["Tiny images", "Cell crops plate 7"]
    assert hostile["name"] == HOSTILE_NAME
    assert hostile["handle"] == HANDLES[hostile["did"]]
    assert {e["uri"] for e in bobs} == {
        u for u in w.entry_records() if u.startswith(f"at://{BOB}/")
    }
    assert len(bobs) == BULK + 1
    assert sorted(e["uri"] for e in everyone) == sorted(w.entry_records())
    # SchemaLoader.resolve (resolveSchema): the record as published, and the type
    # atdata builds from it
    # (atdata 0.7.0b1 cannot build a class from 1.1.0 itself: its optional
    # "notes" after required fields gives "non-default argument follows default")
    assert cellcrop11["record"] == w.records[s["CellCrop@1.1.0"]]
    assert cellcrop["record"] == w.records[s["CellCrop@1.0.0"]]
    assert cellcrop["class"] == "CellCrop"
    assert set(cellcrop["fields"]) == {"image", "label", "score"}
    published = json.loads(
        (CORPUS / "atdata/records/ImageSample.schema.json").read_text()
    )
    assert image["record"] == published
    assert image["class"] == "ImageSample" and set(image["fields"]) == {
        "image",
        "label",
    }
    assert [x["version"] for x in alice_schemas] == ["2.0.0", "1.2.0", "1.1.0", "1.0.0"]
    # LensLoader (listLenses, searchLenses), Atmosphere.search_lenses
    assert {x["uri"] for x in lenses} == set(w.lenses.values())
    assert [x["uri"] for x in found_lenses] == [w.lenses["crop_to_image"]]
    assert [x["uri"] for x in searched_lenses] == [w.lenses["crop_to_image"]]
    assert (
        found_lenses[0]["getterCode"]
        == w.records[w.lenses["crop_to_image"]]["getterCode"]
    )
    # LabelLoader.resolve (resolveLabel): the labelled entry's AT-URI
    assert label == w.entries["Cell crops plate 7"]
    # errors: a 4xx reaches atdata as httpx's HTTPStatusError (not "unavailable")
    assert (missing["error"], missing["status"]) == ("HTTPStatusError", 404)
    assert (forged["error"], forged["status"]) == ("HTTPStatusError", 400)
