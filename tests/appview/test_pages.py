"""The AppView's web pages (atdata_appview.pages) in a real browser: Debian's
chromium driven by Playwright, against the real app (create_app) served by uvicorn
on loopback, over a PostgreSQL index filled the way production fills it (log rows
written as the ingester writes them, folded in by the indexer, verdicts from the
history's checker).

Every page must load with no console error and no failed request; search, facets,
sorting and paging must give the entries the seed says; hostile record text must
render as text (no dialog, no injected element, no page wider than the window);
the schema page must draw its versions and verdicts. Screenshots are saved under
``$ATDATA_TEST_ARTIFACTS`` (default: a pytest temporary directory) and their paths
printed.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import json
import os
import threading
import urllib.parse
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from atdata_appview import pages
from atdata_appview.app import create_app
from atdata_appview.config import Settings
from atdata_appview.testing.log import LogWriter
from atdata_appview.testing.serve import fold_log, serve_appview
from atdata_ingest.testing.postgres import PostgresCluster
from atdata_runtime.atmosphere.cid import blob_cid, record_cid
from atdata_runtime.atmosphere.records import schema_rkey
from atdata_runtime.samples.schema import convert_schema_record
from playwright.sync_api import Browser, ConsoleMessage, Page, Request, sync_playwright

from ..conftest import CORPUS, require_corpus
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

SCRIPT_NAME = "<script>alert(1)</script>"
IMG_TEXT = '"><img src=x onerror=alert(2)>'
LONG_NAME = "Q" * 200
ARABIC = "مجموعة\u200b بيانات الخلايا"
HEBREW = "מערך\u200d נתונים של תאים"
LENS_HOSTILE = "<img src=x onerror=alert(7)>"
FIELD_HOSTILE = '"><svg onload=alert(6)>'
BULK = 22
NDARRAY_11 = "https://alt.science/schemas/atdata-ndarray-bytes/1.1.0#/$defs/ndarray"


def schema_uri(did: str, name: str, version: str) -> str:
    return at(did, SCHEMA, schema_rkey(name, version))


# -- the seed -----------------------------------------------------------------------


def cellcrop(version: str) -> dict[str, Any]:
    """CellCrop versions: 1.1.0 adds an optional field (compatible, minor), 1.2.0
    drops a required one with only a minor bump (breaking), 2.0.0 adds a required
    field with a major bump (compatible)."""
    props: dict[str, Any] = {
        "image": {
            "$ref": NDARRAY_11,
            "dtype": "uint8",
            "shape": [None, None, 3],
            "dimensionNames": ["y", "x", "channel"],
            "description": "RGB crop",
        },
        "label": {"type": "string", "enum": ["cell", "debris"]},
        "score": {"type": "number", "minimum": 0, "maximum": 1},
    }
    required = ["image", "label", "score"]
    if version != "1.0.0":
        props["notes"] = {"type": "string", "maxLength": 500}
    if version in ("1.2.0", "2.0.0"):
        del props["score"]
        required.remove("score")
    if version == "2.0.0":
        props["plate"] = {"type": "integer", "minimum": 1}
        required.append("plate")
    return {
        "$type": SCHEMA,
        "name": "CellCrop",
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


CELLCROP_VERSIONS = ["1.0.0", "1.1.0", "1.2.0", "2.0.0"]
EXPECTED_VERDICTS = ["compatible", "breaking", "breaking ✓"]
"""The graph's verdict lines: 2.0.0 removes what 1.2.0 had, under a declared
major bump (the checker's ``compatible``: drawn as breaking, declared, green)."""
EXPECTED_HISTORY = ["compatible (minor)", "breaking", "breaking, declared major ✓"]


@dataclass
class Seed:
    """What the index holds, by name: entry name → AT-URI, and the URIs the tests
    visit."""

    entries: dict[str, str] = field(default_factory=dict)
    schemas: dict[str, str] = field(default_factory=dict)
    lenses: dict[str, str] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)
    tags: dict[str, list[str]] = field(default_factory=dict)


def build_seed() -> tuple[list[dict[str, Any]], Seed]:
    """Log rows (identity events, then records) and what they index."""
    require_corpus()
    log = LogWriter()
    rows: list[dict[str, Any]] = [
        log.identity(ALICE, "alice.test"),
        log.identity(BOB, "bob.test"),
        log.identity(MALLORY, "mallory.test"),
    ]
    seed = Seed()
    tids = (f"3l{n:011d}".replace("0", "a") for n in itertools.count(1))

    def put(did: str, collection: str, rkey: str, rec: dict[str, Any]) -> str:
        rows.append(log.create(did, collection, rkey, rec, cid=record_cid(rec)))
        return at(did, collection, rkey)

    for v in CELLCROP_VERSIONS:
        seed.schemas[f"CellCrop@{v}"] = put(
            ALICE, SCHEMA, schema_rkey("CellCrop", v), cellcrop(v)
        )
    # atdata 0.7's own record, published in atdata-lexicon 0.4's envelope form
    image = convert_schema_record(
        json.loads((CORPUS / "atdata/records/ImageSample.schema.json").read_text()),
        "envelope",
    )
    seed.schemas["ImageSample@1.0.0"] = put(
        BOB, SCHEMA, schema_rkey("ImageSample", "1.0.0"), image
    )
    evil = cellcrop("1.0.0") | {
        "name": "Evil",
        "description": "<script>alert(5)</script> " + IMG_TEXT,
    }
    evil["schema"] = dict(evil["schema"])
    evil["schema"]["properties"] = {
        FIELD_HOSTILE: {"type": "string", "description": SCRIPT_NAME, "pattern": "<b>"}
    }
    evil["schema"]["required"] = []
    seed.schemas["Evil@1.0.0"] = put(
        MALLORY, SCHEMA, schema_rkey("Evil", "1.0.0"), evil
    )

    lens = {
        "$type": LENS,
        "name": "crop_to_image",
        "sourceSchema": seed.schemas["CellCrop@1.1.0"],
        "targetSchema": seed.schemas["ImageSample@1.0.0"],
        "getterCode": code("lenses.crop:get"),
        "putterCode": code("lenses.crop:put"),
        "language": "python",
        "description": "Drops the score, keeps the image and the label",
        "createdAt": CREATED,
    }
    seed.lenses["crop_to_image"] = put(BOB, LENS, next(tids), lens)
    hostile_lens = lens | {
        "name": LENS_HOSTILE,
        "sourceSchema": seed.schemas["Evil@1.0.0"],
        "targetSchema": seed.schemas["CellCrop@1.0.0"],
        "description": SCRIPT_NAME,
        "getterCode": code(SCRIPT_NAME),
    }
    seed.lenses["hostile"] = put(MALLORY, LENS, next(tids), hostile_lens)
    put(
        ALICE,
        VERIFY,
        next(tids),
        {
            "$type": VERIFY,
            "lens": seed.lenses["crop_to_image"],
            "lensCommit": "0123456789abcdef0123456789abcdef01234567",
            "verificationMethod": "automatedTest",
            "createdAt": CREATED,
        },
    )

    def add_entry(did: str, rec: dict[str, Any]) -> None:
        seed.entries[rec["name"]] = put(did, ENTRY, next(tids), rec)
        seed.sizes[rec["name"]] = rec.get("size", {}).get("bytes", -1)
        seed.tags[rec["name"]] = rec.get("tags", [])

    add_entry(ALICE, entry(
        "Cell crops plate 7", seed.schemas["CellCrop@1.1.0"],
        http_storage("https://data.example.org/crops-000.tar",
                     "https://data.example.org/crops-001.tar"),
        tags=["microscopy", "cells"], license="MIT", size=5_000_000,
        description="Single-cell crops from plate 7 of the screen",
    ))  # fmt: skip
    put(ALICE, LABEL, next(tids), {
        "$type": LABEL, "name": "stable", "version": "7",
        "datasetUri": seed.entries["Cell crops plate 7"],
        "description": "The release used in the paper", "createdAt": CREATED,
    })  # fmt: skip
    add_entry(ALICE, entry(
        "Cell crops second screen", seed.schemas["CellCrop@2.0.0"],
        {"$type": "science.alt.dataset.storageS3", "bucket": "crops",
         "region": "eu-west-1", "shards": [{"key": "screen2/000.tar",
                                            "checksum": checksum(9)}]},
        tags=["microscopy"], license="CC-BY-4.0", size=9_000_000,
    ))  # fmt: skip
    add_entry(ALICE, entry(
        "Debris survey", seed.schemas["CellCrop@1.0.0"],
        {"$type": "science.alt.dataset.storageBlobs", "blobs": [
            {"blob": {"$type": "blob", "ref": {"$link": blob_cid(b"shard-%d" % i)},
                      "mimeType": "application/x-tar", "size": 1000 + i},
             **({"checksum": checksum(i)} if i == 0 else {})}
            for i in range(2)]},
        tags=["imaging"], license="MIT", size=2_000,
    ))  # fmt: skip
    add_entry(BOB, entry(
        "Tiny images", seed.schemas["ImageSample@1.0.0"],
        http_storage("http://plain.example.net/tiny-000.tar",
                     "https://cdn.example.net/tiny-001.tar"),
        tags=["imaging", "benchmark"], license="Apache-2.0", size=700_000,
    ))  # fmt: skip
    for n in range(BULK):
        add_entry(BOB, entry(
            f"Bulk shard set {n:02d}", seed.schemas["ImageSample@1.0.0"],
            http_storage(f"https://cdn.example.net/bulk-{n:02d}.tar"),
            tags=["bulk"], license="MIT", size=10_000 + n,
        ))  # fmt: skip
    # hostile text
    add_entry(MALLORY, entry(
        SCRIPT_NAME, seed.schemas["Evil@1.0.0"],
        http_storage("https://evil.example/x.tar"),
        tags=["<b>bold</b>", "W" * 150], license="<i>MIT</i>",
        description=IMG_TEXT + " " + ARABIC,
    ))  # fmt: skip
    add_entry(MALLORY, entry(
        LONG_NAME, seed.schemas["Evil@1.0.0"], http_storage("https://evil.example/y.tar"),
        description="Z" * 3000,
    ))  # fmt: skip
    add_entry(MALLORY, entry(
        ARABIC, seed.schemas["Evil@1.0.0"], http_storage("https://evil.example/z.tar"),
        tags=[HEBREW], description=HEBREW + " " + ARABIC,
    ))  # fmt: skip
    return rows, seed


async def fill(dsn: str, rows: list[dict[str, Any]]) -> None:
    """Migrate, write ``rows`` into the log and fold them in with the indexer."""
    # queries resolve verified handles only: verify the seed's against a
    # stand-in of the network's identity services (its DIDs exist nowhere)
    await fold_log(
        dsn,
        rows,
        {ALICE: "alice.test", BOB: "bob.test", MALLORY: "mallory.test"},
        migrate=True,
    )


# -- the server and the browser --------------------------------------------------------


@dataclass
class Site:
    url: str
    seed: Seed
    artifacts: Path

    def page_of(self, kind: str, uri: str) -> str:
        href = pages.record_href(kind, uri)
        assert href is not None
        return self.url + href


@pytest.fixture(scope="module")
def site(
    pg: PostgresCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Site]:
    rows, seed = build_seed()
    dsn = pg.create_database("pages_browser")
    asyncio.run(fill(dsn, rows))
    with serve_appview(dsn) as url:
        where = os.environ.get("ATDATA_TEST_ARTIFACTS")
        artifacts = Path(where) if where else tmp_path_factory.mktemp("screenshots")
        artifacts.mkdir(parents=True, exist_ok=True)
        yield Site(url, seed, artifacts)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not Path(pages.CHROMIUM).exists():
        pytest.fail(
            f"chromium not found at {pages.CHROMIUM} (apt-get install chromium)"
        )
    with sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=pages.CHROMIUM, args=list(pages.CHROMIUM_ARGS)
        )
        try:
            yield b
        finally:
            b.close()


@dataclass
class Watch:
    """What a page did: console errors, failed requests, dialogs."""

    errors: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)

    def assert_clean(self) -> None:
        assert self.dialogs == [], f"a dialog fired: {self.dialogs}"
        assert self.errors == [], f"console errors: {self.errors}"
        assert self.failed == [], f"failed requests: {self.failed}"


@pytest.fixture
def page(browser: Browser) -> Iterator[tuple[Page, Watch]]:
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    p = context.new_page()
    watch = Watch()

    def on_console(m: ConsoleMessage) -> None:
        if m.type == "error":
            watch.errors.append(m.text)

    def on_failed(r: Request) -> None:
        watch.failed.append(f"{r.url}: {r.failure}")

    def on_response(r: Any) -> None:
        if r.status >= 400:
            watch.failed.append(f"{r.url}: HTTP {r.status}")

    p.on("console", on_console)
    p.on("pageerror", lambda exc: watch.errors.append(f"pageerror: {exc}"))
    p.on("requestfailed", on_failed)
    p.on("response", on_response)

    def on_dialog(d: Any) -> None:
        watch.dialogs.append(d.message)
        d.dismiss()

    p.on("dialog", on_dialog)
    try:
        yield p, watch
    finally:
        context.close()


def shot(site: Site, p: Page, name: str) -> Path:
    path = site.artifacts / f"{name}.png"
    p.screenshot(path=str(path), full_page=True)
    print(f"screenshot: {path}")
    return path


def visit(p: Page, url: str, status: int = 200) -> None:
    response = p.goto(url, wait_until="load")
    assert response is not None
    assert response.status == status, (url, response.status)


def result_names(p: Page) -> list[str]:
    return p.locator("ol.result-list li.result h3.name a").all_inner_texts()


def no_horizontal_overflow(p: Page) -> None:
    width = p.evaluate("document.documentElement.scrollWidth")
    client = p.evaluate("document.documentElement.clientWidth")
    assert width <= client, f"page is {width}px wide in a {client}px window"


# -- tests --------------------------------------------------------------------------------


def test_home_lists_everything_newest_first_with_facets_and_pages(
    site: Site, page: tuple[Page, Watch]
) -> None:
    p, watch = page
    visit(p, site.url + "/")
    first = result_names(p)
    assert len(first) == pages.PAGE_SIZE
    shot(site, p, "home")
    # facets count every match, not only this page
    tag_counts = {
        li.locator(".facet-value").inner_text(): int(li.locator(".count").inner_text())
        for li in p.locator("[data-facet=tags] li").all()
    }
    expected: dict[str, int] = {}
    for tags in site.seed.tags.values():
        for t in tags:
            expected[t] = expected.get(t, 0) + 1
    assert tag_counts == expected
    licences = p.locator("[data-facet=license] .facet-value").all_inner_texts()
    assert set(licences) == {"MIT", "CC-BY-4.0", "Apache-2.0", "<i>MIT</i>"}
    storage = p.locator("[data-facet=storage] .facet-value").all_inner_texts()
    assert set(storage) == {"http", "s3", "blobs"}
    # the next page holds the rest, no repeats
    p.locator("a.next").click()
    p.wait_for_load_state("load")
    second = result_names(p)
    assert p.locator("a.next").count() == 0
    assert set(first).isdisjoint(second)
    assert sorted(first + second) == sorted(site.seed.entries)
    watch.assert_clean()


def test_search_text_and_facets_narrow(site: Site, page: tuple[Page, Watch]) -> None:
    p, watch = page
    visit(p, site.url + "/")
    p.fill(".big-search input[name=q]", "cell crops")
    p.locator(".big-search button").click()
    p.wait_for_load_state("load")
    assert set(result_names(p)) == {"Cell crops plate 7", "Cell crops second screen"}
    # the facet narrows the text search
    p.locator("[data-facet=license] a", has_text="CC-BY-4.0").click()
    p.wait_for_load_state("load")
    assert result_names(p) == ["Cell crops second screen"]
    assert "license" in p.locator(".active-filters").inner_text()
    shot(site, p, "search-narrowed")
    # removing the chip widens again
    p.locator(".active-filters a.chip").click()
    p.wait_for_load_state("load")
    assert set(result_names(p)) == {"Cell crops plate 7", "Cell crops second screen"}
    # two tags: entries with both
    visit(p, site.url + "/?tags=imaging")
    assert set(result_names(p)) == {"Debris survey", "Tiny images"}
    p.locator("[data-facet=tags] a", has_text="benchmark").click()
    p.wait_for_load_state("load")
    assert result_names(p) == ["Tiny images"]
    # schema and storage facets
    visit(p, site.url + "/?schema=CellCrop")
    assert set(result_names(p)) == {
        "Cell crops plate 7",
        "Cell crops second screen",
        "Debris survey",
    }
    p.locator("[data-facet=storage] a", has_text="s3").click()
    p.wait_for_load_state("load")
    assert result_names(p) == ["Cell crops second screen"]
    watch.assert_clean()


def test_sort_by_size(site: Site, page: tuple[Page, Watch]) -> None:
    p, watch = page
    visit(p, site.url + "/?sort=size&tags=microscopy")
    assert result_names(p) == ["Cell crops second screen", "Cell crops plate 7"]
    visit(p, site.url + "/?sort=size")
    names = result_names(p)
    sizes = [site.seed.sizes[n] for n in names]
    assert sizes == sorted(sizes, reverse=True)
    assert names[0] == "Cell crops second screen"
    watch.assert_clean()


def test_bad_search_parameters_are_a_400_page_not_a_crash(
    site: Site, page: tuple[Page, Watch]
) -> None:
    p, watch = page
    visit(p, site.url + "/?sort=sideways", status=400)
    assert "sort" in p.locator(".error-message").inner_text()
    visit(p, site.url + "/?cursor=bogus", status=400)
    assert "cursor" in p.locator(".error-message").inner_text().lower()
    # the only console messages are chromium's notes of the 400 statuses
    assert watch.dialogs == []
    assert (
        watch.errors
        == [
            (
                "Failed to load resource: the server responded with a status of 400 "
                "(Bad Request)"
            )
        ]
        * 2
    )


def test_dataset_page(site: Site, page: tuple[Page, Watch]) -> None:
    p, watch = page
    uri = site.seed.entries["Cell crops plate 7"]
    visit(p, site.page_of("dataset", uri))
    assert p.locator("h1.name").inner_text() == "Cell crops plate 7"
    assert p.locator("a.who").first.inner_text() == "@alice.test"
    assert p.locator("a.schema-ref").inner_text() == "CellCrop@1.1.0"
    assert p.locator(".checksums").inner_text() == "every shard has a checksum"
    assert "4.8 MiB" in p.locator("dd.size").inner_text()
    code = p.locator("pre.python").inner_text()
    assert code == (
        f'from atdata_runtime.shards import Dataset\nds = Dataset.from_atproto("{uri}")'
    )
    assert p.locator("pre.shell").inner_text() == (
        f"atdata-gen pull {site.seed.schemas['CellCrop@1.1.0']}"
    )
    links = p.locator("td.location a")
    assert links.count() == 2
    for i in range(2):
        assert links.nth(i).get_attribute("rel") == "nofollow noopener noreferrer"
    labels = p.locator("ul.labels li")
    assert labels.count() == 1
    assert labels.inner_text() == (
        "stable version 7 by @alice.test · The release used in the paper"
    )
    shot(site, p, "dataset")
    watch.assert_clean()
    # a plain-http shard is text, not a link; blobs without checksums say "some"
    visit(p, site.page_of("dataset", site.seed.entries["Tiny images"]))
    assert p.locator("td.location a").all_inner_texts() == [
        "https://cdn.example.net/tiny-001.tar"
    ]
    assert "http://plain.example.net/tiny-000.tar" in p.locator("table").inner_text()
    visit(p, site.page_of("dataset", site.seed.entries["Debris survey"]))
    assert p.locator(".checksums").inner_text() == "some shards have no checksum"
    assert p.locator("td.location a").count() == 0
    watch.assert_clean()


def test_schema_page_fields_history_and_graph(
    site: Site, page: tuple[Page, Watch]
) -> None:
    p, watch = page
    uri = site.seed.schemas["CellCrop@1.1.0"]
    visit(p, site.page_of("schema", uri))
    # fields, typed by atdata-gen's front end
    rows = p.locator("table.fields-table tbody tr")
    table = {
        rows.nth(i).locator("td").nth(0).inner_text(): [
            rows.nth(i).locator("td").nth(j).inner_text() for j in range(1, 6)
        ]
        for i in range(rows.count())
    }
    assert table["image"][:4] == ["ndarray", "uint8", "(*, *, 3)\ny, x, channel", "yes"]
    assert table["label"][0] == "str"
    assert 'one of ["cell", "debris"]' in table["label"][4]
    assert table["score"][4] == "minimum = 0\nmaximum = 1"
    assert table["notes"][3] == "optional"
    # the graph: one box per version, the verdicts on the edges, the lens
    svg = p.locator(".graph-wrap svg")
    assert svg.count() == 1
    assert svg.locator("g.version").count() == len(CELLCROP_VERSIONS)
    verdicts = [
        t.strip("\u2068\u2069") for t in svg.locator("text.verdict").all_text_contents()
    ]
    assert verdicts == EXPECTED_VERDICTS
    current = svg.locator("g.current text").text_content() or ""
    assert current.strip("\u2068\u2069") == "1.1.0"
    lens_labels = [
        t.strip("\u2068\u2069")
        for t in svg.locator("text.lens-label").all_text_contents()
    ]
    # labels are cut to 22 characters (the full text is the edge's tooltip)
    assert sorted(lens_labels) == sorted(["crop_to_image", LENS_HOSTILE[:21] + "…"])
    # the history lists the same verdicts
    assert [
        t for t in p.locator("ol.versions .verdict").all_inner_texts()
    ] == EXPECTED_HISTORY
    # a declared major change is still drawn green (it is what the bump says)
    assert p.locator("ol.versions .verdict").nth(2).get_attribute("class") == (
        "verdict verdict-compatible"
    )
    assert p.locator("section.pull pre").first.inner_text() == f"atdata-gen pull {uri}"
    assert (
        "atdata-gen pull @alice.test/CellCrop@1.1.0"
        in p.locator("section.pull").inner_text()
    )
    assert result_names(p) == ["Cell crops plate 7"]
    shot(site, p, "schema")
    watch.assert_clean()
    # a version box links to that version's page
    svg.locator("g.version a").nth(2).click()
    p.wait_for_load_state("load")
    assert p.locator("h1.name").inner_text() == "CellCrop@1.2.0"
    watch.assert_clean()


def test_graph_svg_alone_is_sandboxed_xml(site: Site) -> None:
    url = site.page_of("schema", site.seed.schemas["CellCrop@1.0.0"]) + "/graph.svg"
    r = httpx.get(url)
    assert r.status_code == 200
    assert r.headers["content-type"] == "image/svg+xml"
    assert "sandbox" in r.headers["content-security-policy"]
    assert r.headers["x-content-type-options"] == "nosniff"
    root = ET.fromstring(r.content)
    ns = "{http://www.w3.org/2000/svg}"
    versions = [g for g in root.iter(f"{ns}g") if "version" in g.get("class", "")]
    assert len(versions) == len(CELLCROP_VERSIONS)
    assert LENS_HOSTILE in r.text.replace("&lt;", "<").replace("&gt;", ">")
    assert "<img" not in r.text


def test_lens_and_profile_pages(site: Site, page: tuple[Page, Watch]) -> None:
    p, watch = page
    visit(p, site.page_of("lens", site.seed.lenses["crop_to_image"]))
    assert p.locator("h1.name").inner_text() == "crop_to_image"
    assert p.locator(".lens-ends .source").inner_text() == "CellCrop@1.1.0"
    assert p.locator(".lens-ends .target").inner_text() == "ImageSample@1.0.0"
    code_text = p.locator("section.code").inner_text()
    assert "lenses.crop:get" in code_text and "lenses.crop:put" in code_text
    assert "0123456789abcdef0123456789abcdef01234567" in code_text
    # code references are text, never links
    assert p.locator("section.code a").count() == 0
    assert p.locator("section.verifications tbody tr").count() == 1
    assert "automatedTest" in p.locator("section.verifications").inner_text()
    shot(site, p, "lens")
    watch.assert_clean()
    for who in ("alice.test", ALICE):
        visit(p, site.url + "/profile/" + urllib.parse.quote(who))
        assert p.locator("h1.name").inner_text() == "@alice.test"
        schemas = p.locator("section.schemas li a").all_inner_texts()
        assert sorted(schemas) == sorted(f"CellCrop@{v}" for v in CELLCROP_VERSIONS)
        assert set(result_names(p)) == {
            "Cell crops plate 7",
            "Cell crops second screen",
            "Debris survey",
        }
    shot(site, p, "profile")
    watch.assert_clean()


def test_hostile_text_renders_inert(site: Site, page: tuple[Page, Watch]) -> None:
    p, watch = page
    visit(p, site.url + "/?q=" + urllib.parse.quote("script alert"))
    visit(p, site.url + "/?tags=" + urllib.parse.quote("<b>bold</b>"))
    assert result_names(p) == [SCRIPT_NAME]
    visit(p, site.url + "/profile/mallory.test")
    assert set(result_names(p)) == {SCRIPT_NAME, LONG_NAME, ARABIC}
    no_horizontal_overflow(p)
    shot(site, p, "hostile-profile")
    for name in (SCRIPT_NAME, LONG_NAME, ARABIC):
        visit(p, site.page_of("dataset", site.seed.entries[name]))
        assert p.locator("h1.name").inner_text() == name
        no_horizontal_overflow(p)
    visit(p, site.page_of("dataset", site.seed.entries[SCRIPT_NAME]))
    body = p.locator("main").inner_text()
    assert IMG_TEXT in body and "<b>bold</b>" in body and "<i>MIT</i>" in body
    shot(site, p, "hostile-dataset")
    visit(p, site.page_of("dataset", site.seed.entries[ARABIC]))
    # right-to-left text is isolated and laid out right to left
    h1 = p.locator("h1.name")
    assert h1.get_attribute("dir") == "auto"
    assert h1.evaluate("e => getComputedStyle(e).direction") == "rtl"
    assert p.locator("a.who").first.inner_text() == "@mallory.test"
    shot(site, p, "hostile-rtl")
    visit(p, site.page_of("schema", site.seed.schemas["Evil@1.0.0"]))
    assert p.locator("td.field-name").inner_text() == FIELD_HOSTILE
    assert "<script>alert(5)</script>" in p.locator(".description").inner_text()
    visit(p, site.page_of("schema", site.seed.schemas["CellCrop@1.0.0"]))
    shot(site, p, "hostile-graph")
    visit(p, site.page_of("lens", site.seed.lenses["hostile"]))
    assert p.locator("h1.name").inner_text() == LENS_HOSTILE
    assert SCRIPT_NAME in p.locator("section.code").inner_text()
    # nothing injected anywhere: no element a record could have named
    for url in (
        site.url + "/?q=" + urllib.parse.quote(SCRIPT_NAME),
        site.page_of("dataset", site.seed.entries[SCRIPT_NAME]),
        site.page_of("schema", site.seed.schemas["Evil@1.0.0"]),
        site.page_of("schema", site.seed.schemas["CellCrop@1.0.0"]),
        site.page_of("lens", site.seed.lenses["hostile"]),
    ):
        visit(p, url)
        assert p.locator("script").count() == 0
        assert p.locator("img").count() == 0
        assert p.locator("svg").count() <= 1
        assert p.locator("[onerror], [onload]").count() == 0
        assert p.locator("a[href^='javascript:']").count() == 0
    watch.assert_clean()


def test_unknown_records_are_404_pages(site: Site, page: tuple[Page, Watch]) -> None:
    p, watch = page
    for path in (
        f"/dataset/{ALICE}/3lnothinghere",
        f"/schema/{ALICE}/Nope:1.0.0",
        f"/lens/{BOB}/3lnothinghere",
        "/profile/nobody.test",
        "/profile/did:plc:" + "z" * 24,
    ):
        visit(p, site.url + path, status=404)
        assert p.locator("h1").inner_text() == "Not found"
        # the page itself loaded its stylesheet
        assert p.evaluate("document.styleSheets.length") == 1
    assert watch.dialogs == [] and watch.errors == [r for r in watch.errors]


def test_pages_carry_a_strict_content_security_policy(site: Site) -> None:
    for path in ("/", pages.record_href("dataset", site.seed.entries["Debris survey"])):
        r = httpx.get(site.url + str(path))
        assert r.status_code == 200
        assert r.headers["content-security-policy"] == pages.CSP
        assert "script-src 'none'" in pages.CSP and "'unsafe-inline'" not in pages.CSP
        assert r.headers["x-content-type-options"] == "nosniff"
    css = httpx.get(site.url + "/static/style.css")
    assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
    assert httpx.get(site.url + "/static/../pages.py").status_code == 404


def test_render_screenshot(site: Site) -> None:
    """The lead's helper, run as a script would (its own Playwright, in a thread:
    this one already runs the module's)."""
    path = site.artifacts / "render_screenshot.png"
    url = site.page_of("schema", site.seed.schemas["CellCrop@2.0.0"])
    results: dict[str, Any] = {}

    def run() -> None:
        results["out"] = pages.render_screenshot(url, str(path))
        try:
            pages.render_screenshot(site.url + "/schema/x/y", str(path) + ".404")
        except RuntimeError as exc:
            results["error"] = str(exc)

    worker = threading.Thread(target=run)
    worker.start()
    worker.join(120)
    assert results.get("out") == str(path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    print(f"screenshot: {path}")
    assert "HTTP 404" in results["error"]
    assert not Path(str(path) + ".404").exists()


def test_envelope_schema_and_schema_list(site: Site, page: tuple[Page, Watch]) -> None:
    p, watch = page
    visit(p, site.page_of("schema", site.seed.schemas["ImageSample@1.0.0"]))
    assert "envelope form" in p.locator("p.meta").inner_text()
    rows = p.locator("table.fields-table tbody tr td.field-name").all_inner_texts()
    assert rows == ["image", "label"]
    assert (
        p.locator("table.fields-table tbody tr").first.locator("td").nth(1).inner_text()
        == "ndarray"
    )
    # the lens arrives from CellCrop@1.1.0, drawn in the row below
    svg = p.locator(".graph-wrap svg")
    assert svg.locator("g.version").count() == 1
    other = (svg.locator("g.other-schema text").text_content() or "").strip(
        "\u2068\u2069"
    )
    assert other == "CellCrop@1.1.0"
    watch.assert_clean()
    visit(p, site.url + "/schemas")
    listed = p.locator("ol.result-list a.schema-ref").all_inner_texts()
    assert sorted(listed) == sorted(site.seed.schemas)
    watch.assert_clean()


@pytest.mark.parametrize("width", [360, 768])
def test_narrow_windows_do_not_scroll_sideways(
    site: Site, browser: Browser, width: int
) -> None:
    context = browser.new_context(viewport={"width": width, "height": 800})
    try:
        p = context.new_page()
        errors: list[str] = []
        p.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        for name, url in (
            ("home", site.url + "/"),
            ("dataset", site.page_of("dataset", site.seed.entries[LONG_NAME])),
            ("schema", site.page_of("schema", site.seed.schemas["CellCrop@1.1.0"])),
            ("lens", site.page_of("lens", site.seed.lenses["hostile"])),
        ):
            visit(p, url)
            no_horizontal_overflow(p)
            if name == "schema":
                # the graph scrolls inside its frame, the page does not
                frame = p.locator(".graph-wrap")
                assert frame.evaluate("e => e.scrollWidth > e.clientWidth")
                shot(site, p, f"schema-{width}px")
        assert errors == []
    finally:
        context.close()


# -- without a browser: the error pages and the helpers -------------------------------


def test_error_pages_name_no_internals(
    site: Site, monkeypatch: pytest.MonkeyPatch, pg: PostgresCluster
) -> None:
    """A failing query is a 500 page without the exception's text; no pool is a
    503 page. (The failure is injected: nothing in a good index makes these
    pages fail.)"""
    from fastapi.testclient import TestClient

    secret = "postgresql://appview:hunter2@db.internal/index"

    async def boom(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(f"cannot reach {secret}")

    dsn = pg.dsn_for("pages_browser")
    app = create_app(Settings.from_env({"ATDATA_APPVIEW_DSN": dsn}, rate_per_second=0))
    with TestClient(app) as client:
        monkeypatch.setattr(pages.queries, "get_entry_view", boom)
        r = client.get(f"/dataset/{ALICE}/3laaaaaaaaaa2")
        assert r.status_code == 500
        assert "Something went wrong" in r.text
        assert "hunter2" not in r.text and "RuntimeError" not in r.text
        assert r.headers["content-security-policy"] == pages.CSP
        pool, app.state.pool = app.state.pool, None
        try:
            r = client.get("/schemas")
            assert r.status_code == 503
            assert "unavailable" in r.text
        finally:
            app.state.pool = pool


def record(name: str) -> dict[str, Any]:
    value: dict[str, Any] = json.loads(
        (CORPUS / "atdata" / "records" / f"{name}.schema.json").read_text()
    )
    return value


@pytest.mark.parametrize("form", ["flat", "envelope"])
def test_schema_fields_of_atdata_records(form: str) -> None:
    require_corpus()
    types = {}
    for name in ("ImageSample", "ListSample", "OptionalSample", "ScalarSample"):
        rows, problems = pages.schema_fields(convert_schema_record(record(name), form))
        assert problems == []
        types[name] = {r.name: (r.type, r.required) for r in rows}
    assert types == {
        "ImageSample": {"image": ("ndarray", True), "label": ("str", True)},
        "ListSample": {
            "words": ("list[str]", True),
            "values": ("list[float]", True),
            "embedding": ("ndarray", True),
        },
        "OptionalSample": {
            "tokens": ("list[int]", True),
            "caption": ("str", True),
            "score": ("float", False),
            "mask": ("ndarray", False),
        },
        "ScalarSample": {
            "x": ("int", True),
            "y": ("float", True),
            "name": ("str", True),
            "flag": ("bool", True),
            "blob": ("bytes", True),
        },
    }


def test_schema_fields_shapes_constraints_and_records_that_do_not_compile() -> None:
    rows, problems = pages.schema_fields(cellcrop("1.0.0"))
    assert problems == []
    by = {r.name: r for r in rows}
    assert (by["image"].dtype, by["image"].shape, by["image"].dims) == (
        "uint8",
        "(*, *, 3)",
        "y, x, channel",
    )
    assert by["image"].description == "RGB crop"
    assert by["label"].constraints == ('one of ["cell", "debris"]',)
    assert by["score"].constraints == ("minimum = 0", "maximum = 1")
    broken = cellcrop("1.0.0")
    broken["schema"]["properties"]["nested"] = {"type": "object"}
    rows, problems = pages.schema_fields(broken)
    assert [r.name for r in rows] == ["image", "label", "score", "nested"]
    assert rows[3].type == '"object"'
    assert len(problems) == 1 and problems[0].startswith("/schema/properties/nested:")
    assert "[SCHEMA_UNSUPPORTED]" in problems[0]
    many = cellcrop("1.0.0")
    many["schema"]["properties"] = {f"f{i}": {"type": "string"} for i in range(900)}
    many["schema"]["required"] = []
    rows, _ = pages.schema_fields(many)
    assert len(rows) == pages.MAX_FIELDS_SHOWN


def test_shard_rows_link_only_https() -> None:
    kind, rows, total, _ = pages.shard_rows(
        http_storage(
            "https://a.example/0.tar",
            "http://b.example/1.tar",
            "javascript:alert(1)",
            "https://user:pw@c.example/\x01.tar",
        )
    )
    assert (kind, total) == ("http", 4)
    assert [r.href for r in rows] == ["https://a.example/0.tar", None, None, None]
    assert rows[0].checksum == "sha256:" + "0" * 64
    kind, rows, total, details = pages.shard_rows(
        {"$type": "science.alt.dataset.storageS3", "bucket": "b", "endpoint": "https://s3",
         "shards": [{"key": f"k{i}", "checksum": checksum(i)} for i in range(80)]}
    )  # fmt: skip
    assert (kind, total, len(rows)) == ("s3", 80, pages.MAX_SHARDS_SHOWN)
    assert rows[0].location == "s3://b/k0" and rows[0].href is None
    assert details == {"bucket": "b", "endpoint": "https://s3"}
    assert pages.shard_rows("nonsense") == ("unknown", [], 0, {})


def test_links_and_commands_are_built_from_parts() -> None:
    uri = at(ALICE, SCHEMA, "CellCrop:1.0.0")
    assert pages.record_href("schema", uri) == f"/schema/{ALICE}/CellCrop:1.0.0"
    assert pages.record_href("schema", "at://did:web:x%3A8/c/r?x") == (
        "/schema/did:web:x%253A8/r%3Fx"
    )
    assert pages.record_href("schema", "https://evil/x/y") is None
    assert pages.record_href("schema", "at://a/b") is None
    assert pages.pull_line("at://x/y/it's") == "atdata-gen pull 'at://x/y/it'\"'\"'s'"
    assert pages.load_snippet('at://x/y/"z') == (
        "from atdata_runtime.shards import Dataset\n"
        'ds = Dataset.from_atproto("at://x/y/\\"z")'
    )


# -- hostile addresses: a NUL byte (PostgreSQL text cannot hold U+0000) -------------


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/?q=%00", 400),
        ("/?q=cells%00x", 400),
        ("/?tags=%00", 400),
        ("/?schema=%00", 400),
        ("/?license=%00", 400),
        ("/?storage=%00", 400),
        ("/?cursor=%00", 400),
        ("/schemas?cursor=%00", 400),
        (f"/schema/{ALICE}/%00", 404),
        (f"/schema/{ALICE}/%00/graph.svg", 404),
        (f"/dataset/{ALICE}/%00", 404),
        (f"/lens/{ALICE}/%00", 404),
        ("/dataset/did:plc:x%00/3laaaaaaaaaa2", 404),
        ("/profile/%00", 404),
        ("/profile/alice%00.test", 404),
    ],
)
def test_nul_bytes_are_a_client_error_page_not_a_500(
    site: Site, caplog: pytest.LogCaptureFixture, path: str, status: int
) -> None:
    caplog.set_level("INFO")
    r = httpx.get(site.url + path)
    assert r.status_code == status, r.text[:300]
    assert r.headers["content-security-policy"] == pages.CSP
    assert "\x00" not in r.text
    assert [
        rec.getMessage() for rec in caplog.records if rec.exc_info is not None
    ] == []


# -- bidi controls in record text ------------------------------------------------------

RLO_NAME = "\u202eevil.exe gpj"
BIDI_TEXTS = {
    "description": "before \u2066isolated\u2069 \u202bembedded\u202c \u200fmark\u200e end",
    "tag": "\u061ctag\u202d",
}


def test_bidi_controls_are_shown_as_markers_on_every_page(
    pg: PostgresCluster,
) -> None:
    """A record naming itself with U+202E (RIGHT-TO-LEFT OVERRIDE) must not mirror
    the page's heading or ``<title>``: every bidi control of record text is
    shown as a visible ``⟨U+XXXX⟩`` marker (UAX #9 § 2: embeddings, overrides,
    isolates, marks); genuine right-to-left text keeps its letters."""
    from fastapi.testclient import TestClient

    log = LogWriter()
    schema = cellcrop("1.0.0") | {"description": "\u2067schema text"}
    s_uri = at(MALLORY, SCHEMA, schema_rkey("CellCrop", "1.0.0"))
    rec = entry(
        RLO_NAME,
        s_uri,
        http_storage("https://evil.example/bidi.tar"),
        tags=[BIDI_TEXTS["tag"], HEBREW],
        description=BIDI_TEXTS["description"] + " " + ARABIC,
    )
    rows = [
        log.identity(MALLORY, "mallory.test"),
        log.create(MALLORY, SCHEMA, schema_rkey("CellCrop", "1.0.0"), schema,
                   cid=record_cid(schema)),
        log.create(MALLORY, ENTRY, "3lbidiaaaaaa2", rec, cid=record_cid(rec)),
    ]  # fmt: skip
    dsn = pg.create_database("pages_bidi")
    # in a thread: Playwright's sync API may hold this thread's event loop
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, fill(dsn, rows)).result(120)
    app = create_app(Settings.from_env({"ATDATA_APPVIEW_DSN": dsn}, rate_per_second=0))
    controls = (
        "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
    )
    with TestClient(app) as client:
        r = client.get(f"/dataset/{MALLORY}/3lbidiaaaaaa2")
        assert r.status_code == 200
        text = r.text
        assert not any(c in text for c in controls), [
            f"U+{ord(c):04X}" for c in controls if c in text
        ]
        title = text.split("<title>", 1)[1].split("</title>", 1)[0]
        assert title.startswith("⟨U+202E⟩evil.exe gpj")
        assert '<h1 class="name" dir="auto">⟨U+202E⟩evil.exe gpj</h1>' in text
        for marker in ("2066", "2069", "202B", "202C", "200F", "200E", "061C", "202D"):
            assert f"⟨U+{marker}⟩" in text, marker
        # right-to-left letters are untouched (and still isolated by dir="auto")
        assert ARABIC in text and HEBREW in text
        for path in ("/", "/?q=gpj", "/profile/mallory.test"):
            page = client.get(path)
            assert page.status_code == 200
            assert "\u202e" not in page.text and "⟨U+202E⟩evil" in page.text, path
        page = client.get("/schema/" + MALLORY + "/" + schema_rkey("CellCrop", "1.0.0"))
        assert page.status_code == 200
        # the SVG's own isolates (U+2068/U+2069 around each label) are the only ones
        body = page.text.replace(
            page.text[page.text.index("<svg") : page.text.index("</svg>")], ""
        )
        assert "\u2067" not in page.text and "⟨U+2067⟩schema text" in body


def test_neutral_text_filter() -> None:
    assert pages.neutral_text("a\u202eb") == "a⟨U+202E⟩b"
    assert pages.neutral_text(ARABIC) == ARABIC
    assert pages.neutral_text(7) == 7
    html = pages._env.from_string('<p title="{{ x }}">{{ x }}</p>').render(
        x="\u202e<b>"
    )
    assert html == '<p title="⟨U+202E⟩&lt;b&gt;">⟨U+202E⟩&lt;b&gt;</p>'
