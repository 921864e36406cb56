"""``atdata-appview``'s command line, run as a process (``python -m
atdata_appview``) against the session's real PostgreSQL cluster: exit statuses,
settings from the environment, redaction, and what each command prints."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from atdata_appview.cli import EXIT_STATUSES, build_parser, rules_table
from atdata_appview.config import setting_infos
from atdata_appview.records import RULES
from atdata_appview.testing.log import LogWriter, append_rows
from atdata_ingest.testing.postgres import PostgresCluster

from ..conftest import ROOT

_ENV_DROP = re.compile(r"^(ATDATA_APPVIEW_|ATDATA_INGEST_|DATABASE_URL$)")


def cli(
    *args: str, timeout: float = 120, **env: str
) -> subprocess.CompletedProcess[str]:
    """``python -m atdata_appview ARGS`` with only ``env``'s settings (every
    ATDATA_APPVIEW_*/ATDATA_INGEST_*/DATABASE_URL of this process dropped)."""
    base = {k: v for k, v in os.environ.items() if not _ENV_DROP.match(k)}
    return subprocess.run(
        [sys.executable, "-m", "atdata_appview", *args],
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _run(coro: Any) -> Any:
    return asyncio.run(coro)


async def _fetch(dsn: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        return list(await conn.fetch(sql, *args))
    finally:
        await conn.close()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def fresh_dsn(pg: PostgresCluster) -> Iterator[str]:
    """A new, empty database (no schema)."""
    yield pg.create_database(f"avcli{_closed_port()}")


def test_migrate_creates_both_schemas_and_is_idempotent(fresh_dsn: str) -> None:
    first = cli("migrate", ATDATA_APPVIEW_DSN=fresh_dsn)
    assert first.returncode == 0, first.stderr
    assert "ingest schema" in first.stdout and "appview schema 2" in first.stdout
    tables = {
        r["tablename"]
        for r in _run(
            _fetch(
                fresh_dsn,
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public'",
            )
        )
    }
    assert {"ingest_events", "ingest_cursor", "appview_entries", "appview_cursor"} <= (
        tables
    )
    # a row survives a second migrate (nothing dropped or recreated)
    _run(_fetch(fresh_dsn, "UPDATE appview_cursor SET folded = 7 RETURNING folded"))
    again = cli("migrate", ATDATA_APPVIEW_DSN=fresh_dsn)
    assert again.returncode == 0, again.stderr
    assert again.stdout == first.stdout
    assert _run(_fetch(fresh_dsn, "SELECT folded FROM appview_cursor"))[0][0] == 7


def test_the_dsn_falls_back_to_the_ingesters_variable(fresh_dsn: str) -> None:
    done = cli("migrate", ATDATA_INGEST_DATABASE_URL=fresh_dsn)
    assert done.returncode == 0, done.stderr
    status = cli("status", "--format", "json", DATABASE_URL=fresh_dsn)
    assert status.returncode == 0, status.stderr


def test_status_json_reports_cursor_lag_counts_and_dead_letters(
    appview_dsn: str,
) -> None:
    log = LogWriter()
    rows = [
        log.create("did:plc:aaaa", "science.alt.dataset.label", f"3kaaaaaaaaa{i}2", {})
        for i in range(3)
    ]

    async def seed() -> None:
        conn = await asyncpg.connect(appview_dsn)
        try:
            await append_rows(conn, rows)
            await conn.executemany(
                "INSERT INTO appview_dead_letters (seq, idx, did, collection, rkey, "
                "rule, pointer, message) VALUES ($1, 0, 'did:plc:aaaa', "
                "'science.alt.dataset.label', $2, $3, '/name', 'bad')",
                [
                    (1, "a", "AV_INVALID_RECORD"),
                    (2, "b", "AV_INVALID_RECORD"),
                    (3, "c", "AV_BAD_REF"),
                ],
            )
            await conn.execute(
                "INSERT INTO appview_repos (did, state) VALUES ('did:plc:aaaa', "
                "'synced'), ('did:plc:bbbb', 'failed')"
            )
        finally:
            await conn.close()

    _run(seed())
    done = cli("status", "--format", "json", ATDATA_APPVIEW_DSN=appview_dsn)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["cursor"]["seq"] == 0
    assert report["ingest"]["last_seq"] == rows[-1]["seq"]
    assert report["lag"]["events"] == rows[-1]["seq"]
    assert report["lag"]["seconds"] >= 0
    assert report["counts"]["entries"] == 0 and report["counts"]["labels"] == 0
    assert report["dead_letters"] == {
        "total": 3,
        "by_rule": {"AV_INVALID_RECORD": 2, "AV_BAD_REF": 1},
    }
    assert report["repos"] == {"failed": 1, "synced": 1}
    assert report["schema_version"]["appview"] == 2
    assert report["service_did"] == "did:web:127.0.0.1%3A8080"
    text = cli("status", ATDATA_APPVIEW_DSN=appview_dsn)
    assert text.returncode == 0, text.stderr
    assert "dead letters 3" in text.stdout and "AV_INVALID_RECORD" in text.stdout


def test_dead_letters_lists_newest_first_filtered_and_escaped(
    appview_dsn: str,
) -> None:
    async def seed() -> None:
        conn = await asyncpg.connect(appview_dsn)
        try:
            await conn.executemany(
                "INSERT INTO appview_dead_letters (did, collection, rkey, rule, "
                "pointer, message) VALUES ('did:plc:aaaa', "
                "'science.alt.dataset.entry', $1, $2, $3, $4)",
                [
                    ("one", "AV_BAD_REF", "/schemaRef", "not an AT-URI"),
                    ("two", "AV_INVALID_RECORD", "/name", "evil \x1b[31mred\x1b[0m"),
                    ("three", "AV_BAD_REF", "", "whole"),
                ],
            )
        finally:
            await conn.close()

    _run(seed())
    env = {"ATDATA_APPVIEW_DSN": appview_dsn}
    out = cli("dead-letters", "--rule", "AV_BAD_REF", "--format", "json", **env)
    assert out.returncode == 0, out.stderr
    listed = json.loads(out.stdout)
    assert [d["rkey"] for d in listed] == ["three", "one"]
    assert listed[1]["uri"] == "at://did:plc:aaaa/science.alt.dataset.entry/one"
    assert listed[1]["pointer"] == "/schemaRef"
    text = cli("dead-letters", **env)
    assert text.returncode == 0, text.stderr
    assert "\x1b" not in text.stdout
    assert "entry/two#/name: evil" in text.stdout
    assert len(text.stdout.splitlines()) == 3
    assert (
        cli("dead-letters", "--limit", "1", "--format", "json", **env).stdout.count(
            '"rkey"'
        )
        == 1
    )


def test_rules_markdown_is_every_rule_registry() -> None:
    """``rules`` lists the record, fold, history and backfill rules, each once."""
    from atdata_appview.backfill import RULES as BACKFILL_RULES
    from atdata_appview.history import HISTORY_RULES
    from atdata_appview.indexer import INDEXER_RULES

    every = {**RULES, **INDEXER_RULES, **HISTORY_RULES, **BACKFILL_RULES}
    done = cli("rules", "--format", "markdown")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[:2] == ["| rule | stage | checks |", "|---|---|---|"]
    rows = [
        re.fullmatch(r"\| `((?:AV|BF)_[A-Z0-9_]+)` \| ([a-z]+) \| (.+) \|", line)
        for line in lines[2:]
    ]
    assert all(rows), lines
    ids = [m.group(1) for m in rows if m]
    assert sorted(ids) == sorted(every) and len(ids) == len(set(ids))
    stage = {m.group(1): m.group(2) for m in rows if m}
    assert stage["AV_BAD_DID"] == "record" and stage["AV_UNVERIFIED"] == "fold"
    assert stage["BF_BLOCK_CID"] == "backfill"
    assert {m.group(1): m.group(3) for m in rows if m}["AV_BAD_DID"] == RULES[
        "AV_BAD_DID"
    ]
    as_json = json.loads(cli("rules", "--format", "json").stdout)
    assert {r["id"]: r["summary"] for r in as_json} == every
    assert rules_table("text").splitlines()[0].startswith(min(RULES))


def test_an_unknown_setting_is_warned_with_the_closest_name(appview_dsn: str) -> None:
    done = cli(
        "status",
        ATDATA_APPVIEW_DSN=appview_dsn,
        ATDATA_APPVIEW_RATE_BRUST="5",
        ATDATA_APPVIEW_ZZZ="1",
    )
    assert done.returncode == 0, done.stderr
    assert (
        "atdata-appview: warning: ATDATA_APPVIEW_RATE_BRUST is not a setting of "
        "atdata-appview (ignored); did you mean ATDATA_APPVIEW_RATE_BURST?"
    ) in done.stderr
    assert "ATDATA_APPVIEW_ZZZ is not a setting of atdata-appview (ignored)\n" in (
        done.stderr
    )


def test_a_bad_value_is_named_by_where_it_came_from(appview_dsn: str) -> None:
    env = {"ATDATA_APPVIEW_DSN": appview_dsn}
    done = cli("serve", "--port", "0", **env)
    assert done.returncode == 78
    assert "--port: 0 is out of range (allowed 1..65535)" in done.stderr
    done = cli("serve", **env, ATDATA_APPVIEW_RATE_BURST="lots")
    assert done.returncode == 78
    assert "ATDATA_APPVIEW_RATE_BURST: 'lots' is not an integer" in done.stderr
    done = cli("backfill", **env)
    assert done.returncode == 2 and "--pds URL or --relay URL" in done.stderr


def test_the_dsn_password_is_never_printed(pg: PostgresCluster) -> None:
    secret = "hunter2-Sekr3t"
    wrong_db = f"postgresql://postgres:{secret}@127.0.0.1:{pg.port}/no_such_db"
    done = cli("status", ATDATA_APPVIEW_DSN=wrong_db)
    assert done.returncode == 78, done.stderr
    assert "no such database" in done.stderr
    assert secret not in done.stderr + done.stdout
    down = f"postgresql://postgres:{secret}@127.0.0.1:{_closed_port()}/x"
    done = cli("migrate", "--dsn", down)
    assert done.returncode == 74, done.stderr
    assert "cannot connect to postgresql://127.0.0.1:" in done.stderr
    assert secret not in done.stderr + done.stdout
    done = cli("status", ATDATA_APPVIEW_DSN=f"mysql://root:{secret}@h/db")
    assert done.returncode == 78
    assert "must be a postgresql://" in done.stderr and secret not in done.stderr
    # DSNs that are no URL at all (libpq's key=value form, an unparsable port)
    # are never quoted: redaction only understands URLs
    for bad in (
        f"host=127.0.0.1 user=postgres password={secret} dbname=x",
        f"postgresql://postgres:{secret}/x",  # no '@': the password is the "port"
    ):
        done = cli("status", ATDATA_APPVIEW_DSN=bad)
        assert done.returncode == 78, done.stderr
        assert "ATDATA_APPVIEW_DSN" in done.stderr and "DSN" in done.stderr
        assert secret not in done.stderr + done.stdout, done.stderr


def test_a_database_without_the_schema_is_exit_78(fresh_dsn: str) -> None:
    for command in ("status", "dead-letters", "serve", "index"):
        done = cli(command, ATDATA_APPVIEW_DSN=fresh_dsn)
        assert done.returncode == 78, (command, done.stderr)
        assert "run `atdata-appview migrate`" in done.stderr


def test_serve_refuses_a_port_in_use_before_starting(appview_dsn: str) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = cli("serve", "--port", str(port), ATDATA_APPVIEW_DSN=appview_dsn)
    assert done.returncode == 78
    assert f"--port: 127.0.0.1:{port} is already in use" in done.stderr


def test_every_setting_is_in_help() -> None:
    top = cli("--help")
    assert top.returncode == 0
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    choices: dict[str, Any] = sub.choices  # type: ignore[assignment]
    for info in setting_infos():
        assert info.variable in top.stdout, info.variable
        for command in info.commands:
            assert info.variable in choices[command].format_help(), (command, info)
    statuses = {status for status, _, _ in EXIT_STATUSES}
    assert {0, 1, 2, 70, 73, 74, 78} == statuses  # 73: backfill BF_BUSY
    for status in statuses:
        assert re.search(rf"^\s+{status}\s", top.stdout, re.MULTILINE), status


def _free_port() -> int:
    return _closed_port()


def test_run_indexes_serves_and_stops_cleanly_on_sigterm(appview_dsn: str) -> None:
    """``run``: the indexer folds a schema record from the log, the server
    answers for it, and SIGTERM ends both with exit 0."""
    record = json.loads(
        (ROOT / "scripts" / "example" / "schemas" / "CellCrop.schema.json").read_text()
    )
    did = "did:plc:runrunrunrunrunrunrunrun"
    log = LogWriter()

    async def seed() -> None:
        conn = await asyncpg.connect(appview_dsn)
        try:
            await append_rows(
                conn,
                [
                    log.create(
                        did, "science.alt.dataset.schema", "CellCrop:1.0.0", record
                    )
                ],
            )
        finally:
            await conn.close()

    _run(seed())
    port = _free_port()
    base = {k: v for k, v in os.environ.items() if not _ENV_DROP.match(k)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "atdata_appview", "run", "--port", str(port)],
        env={**base, "ATDATA_APPVIEW_DSN": appview_dsn},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    uri = f"at://{did}/science.alt.dataset.schema/CellCrop:1.0.0"
    found: dict[str, Any] | None = None
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                r = httpx.get(
                    f"http://127.0.0.1:{port}/xrpc/science.alt.dataset.getSchema",
                    params={"uri": uri},
                    timeout=5,
                )
            except httpx.HTTPError:
                r = None
            if r is not None and r.status_code == 200:
                found = r.json()
                break
            time.sleep(0.2)
        health = httpx.get(f"http://127.0.0.1:{port}/health", timeout=5)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    assert found is not None, err
    assert found["uri"] == uri
    assert health.status_code == 200 and health.json()["indexed_seq"] >= 1
    assert proc.returncode == 0, err
    assert "Traceback" not in err


def test_the_demo_indexes_the_example_and_answers_its_queries() -> None:
    """``scripts/appview --check`` (its Python, ``atdata_appview.demo``): a private
    PostgreSQL, the local PDS and PLC, the ingester and ``atdata-appview run``; the
    bundled example is published, indexed and queried, every answer checked."""
    before = set(Path(tempfile.gettempdir()).glob("atdata-appview-demo-*"))
    done = subprocess.run(
        [sys.executable, "-m", "atdata_appview.demo", "--check", "--port", "0"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    checks = [line for line in done.stdout.splitlines() if line.startswith("ok  ")]
    assert len(checks) == 10, done.stdout
    assert "ok  getLensPath 1.0.0 -> 2.0.0: a structural step, then alice's lens" in (
        checks
    )
    assert done.stdout.rstrip().endswith("all example queries answered correctly")
    # its work directory (logs, shards, sessions) is removed
    assert set(Path(tempfile.gettempdir()).glob("atdata-appview-demo-*")) <= before


def test_the_demo_refuses_a_port_in_use() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "atdata_appview.demo", "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert done.returncode == 78
    assert f"port {port} is in use" in done.stderr


def test_index_folds_the_log_and_stops_cleanly_on_sigint(appview_dsn: str) -> None:
    record = json.loads(
        (ROOT / "scripts" / "example" / "schemas" / "CellCrop.schema.json").read_text()
    )
    did = "did:plc:indexindexindexindexindex"
    log = LogWriter()
    rows = [log.create(did, "science.alt.dataset.schema", "CellCrop:1.0.0", record)]
    rows.append(log.create(did, "science.alt.dataset.schema", "CellCrop:9.9.9", record))

    async def seed() -> None:
        conn = await asyncpg.connect(appview_dsn)
        try:
            await append_rows(conn, rows)
        finally:
            await conn.close()

    _run(seed())
    base = {k: v for k, v in os.environ.items() if not _ENV_DROP.match(k)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "atdata_appview", "index", "--batch-size", "1"],
        env={**base, "ATDATA_APPVIEW_DSN": appview_dsn},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            seq = _run(_fetch(appview_dsn, "SELECT seq FROM appview_cursor"))[0][0]
            if seq >= rows[-1]["seq"]:
                break
            time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    schemas = _run(_fetch(appview_dsn, "SELECT rkey FROM appview_schemas"))
    assert [r["rkey"] for r in schemas] == ["CellCrop:1.0.0"]
    # the second record's key names another version: a dead letter, by rule
    status = json.loads(
        cli("status", "--format", "json", ATDATA_APPVIEW_DSN=appview_dsn).stdout
    )
    assert status["dead_letters"]["by_rule"] == {"AV_RKEY_MISMATCH": 1}
    assert status["counts"]["schemas"] == 1
    assert status["lag"] == {"events": 0, "seconds": 0.0}


def test_serve_answers_over_http_and_stops_cleanly_on_sigterm(appview_dsn: str) -> None:
    """``serve`` under uvicorn: did.json of the public hostname, no Server
    header, a request head over max_header_bytes refused by the server, exit 0
    on SIGTERM."""
    port = _free_port()
    base = {k: v for k, v in os.environ.items() if not _ENV_DROP.match(k)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "atdata_appview", "serve", "--port", str(port)],
        env={
            **base,
            "ATDATA_APPVIEW_DSN": appview_dsn,
            "ATDATA_APPVIEW_HOSTNAME": "appview.example.org",
            "ATDATA_APPVIEW_MAX_HEADER_BYTES": "4096",
        },
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        r = None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                r = httpx.get(f"{url}/.well-known/did.json", timeout=5)
                break
            except httpx.HTTPError:
                time.sleep(0.2)
        big = httpx.get(f"{url}/health", headers={"x-pad": "y" * 8000}, timeout=5)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    assert r is not None and r.status_code == 200, err
    assert r.json()["id"] == "did:web:appview.example.org"
    assert r.json()["service"][0]["serviceEndpoint"] == "https://appview.example.org"
    assert "server" not in r.headers
    assert r.headers["strict-transport-security"] == "max-age=31536000"
    assert big.status_code in (400, 431)
    assert proc.returncode == 0, err
    assert "Traceback" not in err
