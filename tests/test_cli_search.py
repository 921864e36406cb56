"""``atdata-gen search``: the real AppView (create_app on uvicorn, an index filled
by the indexer from log rows; the seed of tests/test_appview_client.py) asked
through the command line, as a user runs it (``python -m atdata_gen.cli``)."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from atdata_ingest.testing.postgres import PostgresCluster

from .conftest import run_cli
from .test_appview_client import (
    ALICE,
    HOSTILE,
    World,
    _fill,
    build_world,
    closed_port,
    serve_appview,
)


@pytest.fixture(scope="module")
def appview(pg: PostgresCluster) -> Iterator[tuple[str, World]]:
    world = build_world()
    dsn = pg.create_database("avclisearch")
    asyncio.run(_fill(dsn, world.rows))
    with serve_appview(dsn) as url:
        yield url, world


def search(
    tmp_path: Path, url: str | None, *args: str, env_url: str = ""
) -> tuple[int, str, str]:
    argv = ["search", *args] + (["--appview", url] if url else [])
    proc = run_cli(argv, tmp_path, ATDATA_APPVIEW_URL=env_url)
    return proc.returncode, proc.stdout, proc.stderr


def rows(stdout: str) -> list[list[str]]:
    lines = stdout.rstrip("\n").split("\n")
    assert lines[0].split() == ["NAME", "PUBLISHER", "SCHEMA", "SIZE", "TAGS", "AT-URI"]
    return [re.split(r"\s{2,}", line.rstrip()) for line in lines[1:]]


def test_the_table(tmp_path: Path, appview: tuple[str, World]) -> None:
    url, w = appview
    code, out, err = search(
        tmp_path, url, "cell crops", "--tag", "microscopy", "--repo", "alice.test",
        "--sort", "recent",
    )  # fmt: skip
    assert code == 0, err
    got = rows(out)
    assert got == [
        ["cell-crops", "alice.test", f"CellCrop@{v}", size, "microscopy, cells",
         w.uris[f"alice cell-crops {v}"]]
        for v, size in (("2.0.0", "3.9 KiB"), ("1.1.0", "2.9 KiB"), ("1.0.0", "2.0 KiB"))
    ]  # fmt: skip
    # the AT-URI column is never cut: it is what one copies into from_atproto
    assert all(
        r[-1].startswith(f"at://{ALICE}/science.alt.dataset.entry/") for r in got
    )


def test_filters_reach_the_appview(tmp_path: Path, appview: tuple[str, World]) -> None:
    url, w = appview
    code, out, err = search(tmp_path, url, "--schema", "CellCrop@~1.1", "--repo", ALICE)
    assert code == 0, err
    assert sorted(r[-1] for r in rows(out)) == sorted(
        [w.uris["alice cell-crops 1.1.0"], w.uris["alice plate-7"]]
    )
    code, out, err = search(
        tmp_path, url, "--schema", w.uris["alice CellCrop 1.0.0"]
    )  # an AT-URI is a schemaRef
    assert code == 0, err
    assert [r[-1] for r in rows(out)] == [w.uris["alice cell-crops 1.0.0"]]
    code, out, err = search(tmp_path, url, "--storage", "http", "--repo", "bob.test")
    assert code == 0, err
    assert sorted(r[-1] for r in rows(out)) == sorted(
        [w.uris["bob tiny 0.1.0"], w.uris["bob tiny 0.1.0-beta.1"]]
    )
    for option, value in (("--storage", "s3"), ("--license", "MIT")):
        code, out, err = search(tmp_path, url, option, value)
        assert (code, out) == (0, ""), err  # the seed has neither
    code, out, err = search(tmp_path, url, "--sort", "size", "--limit", "1")
    assert code == 0, err
    assert [r[0] for r in rows(out)] == ["plate-7"]
    assert rows(out)[0][3] == "4.8 MiB"
    assert "more: --cursor " in err


def test_json(tmp_path: Path, appview: tuple[str, World]) -> None:
    url, w = appview
    code, out, err = search(
        tmp_path, url, "--tag", "microscopy", "--format", "json", "--limit", "100"
    )
    assert code == 0, err
    assert out.isascii()
    doc = json.loads(out)
    assert set(doc) <= {"entries", "cursor", "facets"}
    uris = {e["uri"] for e in doc["entries"]}
    assert uris == {
        w.uris[r]
        for r in (
            "alice cell-crops 1.0.0", "alice cell-crops 1.1.0", "alice cell-crops 2.0.0",
            "alice plate-7", "mallory cell-crops", "mallory hostile",
        )
    }  # fmt: skip
    hostile = next(e for e in doc["entries"] if e["uri"] == w.uris["mallory hostile"])
    assert hostile["description"] == HOSTILE  # JSON keeps the data exactly


def test_hostile_text_is_inert_in_the_table(
    tmp_path: Path, appview: tuple[str, World]
) -> None:
    url, w = appview
    code, out, err = search(tmp_path, url, "hostile", "--repo", "mallory.test")
    assert code == 0, err
    for bad in ("\x1b", "\u202e", "\u2066", "\r"):
        assert bad not in out
    (row,) = [r for r in rows(out) if r[-1] == w.uris["mallory hostile"]]
    assert row[0] == "hostile \\u001b[2J\\u001b[31mred…"  # cut, never inside an escape
    assert row[0].endswith("…")  # cut to its column
    assert "\\u202etag" in row[4]
    assert len(out.splitlines()) == 2  # one line per entry, whatever the text held


def test_no_result_is_not_an_error(tmp_path: Path, appview: tuple[str, World]) -> None:
    code, out, err = search(tmp_path, appview[0], "--tag", "nothing-has-this")
    assert (code, out) == (0, "")
    assert "no datasets match" in err


def test_the_setting_and_its_absence(
    tmp_path: Path, appview: tuple[str, World]
) -> None:
    code, out, err = search(tmp_path, None, "cell", env_url=appview[0])
    assert code == 0, err
    assert "cell-crops" in out
    code, out, err = search(tmp_path, None, "cell")
    assert code == 2 and out == ""
    assert "ATDATA_APPVIEW_URL" in err and "APPVIEW_NOT_CONFIGURED" in err
    # --appview wins over the setting
    code, out, err = search(tmp_path, appview[0], "cell", env_url="ftp://nowhere")
    assert code == 0, err


def test_errors_exit_2_with_the_reason(
    tmp_path: Path, appview: tuple[str, World]
) -> None:
    code, _out, err = search(tmp_path, f"http://127.0.0.1:{closed_port()}", "cell")
    assert code == 2 and "APPVIEW_UNAVAILABLE" in err
    code, _out, err = search(
        tmp_path, appview[0], *[a for i in range(11) for a in ("--tag", f"t{i}")]
    )
    assert code == 2 and "/tags" in err
    code, _out, err = search(tmp_path, appview[0], "--limit", "0")
    assert code == 2 and "--limit" in err
    code, _out, err = search(tmp_path, "https://user:secret@127.0.0.1:1", "cell")
    assert code == 2 and "secret" not in err
