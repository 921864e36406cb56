"""``atdata-ingest`` (:mod:`atdata_ingest.cli`) as a user runs it: a real process of
``python -m atdata_ingest``, real PostgreSQL (the session cluster ``pg``), and the
console script the distribution declares.

Shown here: help texts give units and defaults; every bad setting exits 78 with a
message naming its variable; options override the environment; DSN passwords never
reach stdout or stderr; ``migrate``, ``status``, ``token add/list/revoke``, ``trim``
and ``serve`` do their job against the real database. ``run`` itself is exercised
by ``test_faults.py``.
"""

from __future__ import annotations

import asyncio
import datetime as _dt
import hashlib
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from atdata_ingest import exits
from atdata_ingest.schema import SCHEMA_VERSION
from atdata_ingest.testing.postgres import PostgresCluster

GUARD = 60.0
SECRET = "pw-9f3Kq-s3cr3t"


def _env(**extra: str) -> dict[str, str]:
    """This environment without any ingest setting or DSN, plus ``extra``."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("ATDATA_INGEST_") and k != "DATABASE_URL"
    }
    env.update(extra)
    return env


def cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = GUARD
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "atdata_ingest", *args],
        env=_env() if env is None else env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _query(dsn: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    async def go() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(dsn)
        try:
            return list(await conn.fetch(sql, *args))
        finally:
            await conn.close()

    return asyncio.run(go())


@pytest.fixture
def empty_dsn(pg: PostgresCluster) -> str:
    """A new database without the ingestion schema."""
    return pg.create_database(f"cli{time.monotonic_ns()}")


# -- help -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "wanted"),
    [
        ((), ["run", "serve", "migrate", "token", "trim", "status", "ATDATA_INGEST_"]),
        (
            ("run",),
            [
                "--supervise",
                "default 500",
                "milliseconds",
                "default 50,",
                "default 20000",
                "seconds",
                "75 buffer",
                "78 bad settings",
                "$ATDATA_INGEST_RELAY_URL",
            ],
        ),
        (("serve",), ["default 127.0.0.1", "default 8080"]),
        (("trim",), ["default 7", "--dry-run"]),
        (
            ("token", "add"),
            ["printed on stdout once", "per second", "default 20", "commit, identity"],
        ),
        (("migrate",), ["idempotent", "--database-url"]),
        (("status",), ["JSON", "last_seq"]),
    ],
)
def test_help_gives_units_and_defaults(
    command: tuple[str, ...], wanted: list[str]
) -> None:
    done = cli(*command, "--help")
    assert done.returncode == 0, done.stderr
    text = " ".join(done.stdout.split())
    for word in wanted:
        assert word in text, (word, done.stdout)


def test_console_script_is_installed() -> None:
    script = Path(sys.executable).parent / "atdata-ingest"
    done = subprocess.run(
        [str(script), "--help"], capture_output=True, text=True, timeout=GUARD
    )
    assert done.returncode == 0 and "migrate" in done.stdout


# -- settings errors: 78, naming the variable -----------------------------------------


@pytest.mark.parametrize(
    ("args", "env", "variable"),
    [
        (("run", "--relay", "ws://127.0.0.1:9"), {}, "ATDATA_INGEST_DATABASE_URL"),
        (("migrate",), {}, "ATDATA_INGEST_DATABASE_URL"),
        (("status",), {}, "ATDATA_INGEST_DATABASE_URL"),
        (("run",), {"DATABASE_URL": "postgresql://h/db"}, "ATDATA_INGEST_RELAY_URL"),
        (
            ("run", "--supervise"),
            {"DATABASE_URL": "postgresql://h/db"},
            "ATDATA_INGEST_RELAY_URL",
        ),
        (
            ("run", "--relay", "ftp://relay.example"),
            {"DATABASE_URL": "postgresql://h/db"},
            "ATDATA_INGEST_RELAY_URL",
        ),
        (
            ("run", "--relay", "ws://r", "--batch-max", "0"),
            {"DATABASE_URL": "postgresql://h/db"},
            "ATDATA_INGEST_BATCH_MAX",
        ),
        (
            ("run", "--relay", "ws://r", "--supervise"),
            {"DATABASE_URL": "postgresql://h/db", "ATDATA_INGEST_FLUSH_MS": "fast"},
            "ATDATA_INGEST_FLUSH_MS",
        ),
        (
            ("run", "--relay", "ws://r", "--buffer-max", "10", "--batch-max", "20"),
            {"DATABASE_URL": "postgresql://h/db"},
            "ATDATA_INGEST_BUFFER_MAX",
        ),
        (
            ("trim", "--retention-days", "0"),
            {"DATABASE_URL": "postgresql://h/db"},
            "ATDATA_INGEST_RETENTION_DAYS",
        ),
        (
            ("migrate", "--database-url", "mysql://u@h/db"),
            {},
            "ATDATA_INGEST_DATABASE_URL",
        ),
    ],
)
def test_bad_settings_exit_78_naming_the_variable(
    args: tuple[str, ...], env: dict[str, str], variable: str
) -> None:
    done = cli(*args, env=_env(**env))
    assert done.returncode == exits.CONFIG, done.stderr
    assert done.stderr.startswith(f"atdata-ingest: error: {variable}"), done.stderr
    assert "Traceback" not in done.stderr
    assert "started child" not in done.stderr  # --supervise checks before a child


def test_usage_errors_exit_2() -> None:
    assert cli("run", "--batch-max", "many").returncode == 2
    assert cli("run", "--verify", "some").returncode == 2
    assert cli("bogus").returncode == 2
    assert cli().returncode == 2


def test_backoff_options_must_be_consistent() -> None:
    done = cli(
        "run", "--relay", "ws://r", "--supervise", "--backoff-initial", "5",
        "--backoff-max", "1", env=_env(DATABASE_URL="postgresql://h/db"),
    )  # fmt: skip
    assert done.returncode == exits.CONFIG
    assert "backoff maximum" in done.stderr


# -- redaction ------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["option", "env", "plain-env"])
@pytest.mark.parametrize("command", ["migrate", "status", "token-list", "run"])
def test_dsn_password_never_printed(how: str, command: str) -> None:
    """An unreachable database (exit 74) and a malformed DSN (exit 78): neither
    message shows the password, whichever way the DSN was given."""
    for dsn, status in (
        (f"postgresql://ingest:{SECRET}@127.0.0.1:{_closed_port()}/db", exits.IOERR),
        (f"postgresql://ingest:{SECRET}@127.0.0.1:99999/db", exits.CONFIG),
    ):
        argv = {"token-list": ["token", "list"]}.get(command, [command])
        env = _env()
        if command == "run":
            argv += ["--relay", "ws://127.0.0.1:9", "--db-retry-seconds", "0"]
        if how == "option":
            argv += ["--database-url", dsn]
        elif how == "env":
            env["ATDATA_INGEST_DATABASE_URL"] = dsn
        else:
            env["DATABASE_URL"] = dsn
        done = cli(*argv, env=env)
        out = done.stdout + done.stderr
        assert SECRET not in out, out
        assert done.returncode == status, out
        assert "ATDATA_INGEST_DATABASE_URL" in out or "127.0.0.1" in out, out


def test_redact_unit() -> None:
    from atdata_ingest.cli import _remember_secrets, redact

    _remember_secrets("postgresql://u:p%40ss-word@h/db")
    text = redact("connect postgresql://u:p%40ss-word@h/db failed: password p@ss-word")
    assert "p%40ss-word" not in text and "p@ss-word" not in text
    assert "postgresql://h/db" in text


# -- against the database --------------------------------------------------------------


def test_migrate_then_status(empty_dsn: str) -> None:
    done = cli("status", "--database-url", empty_dsn)
    assert done.returncode == exits.CONFIG and "atdata-ingest migrate" in done.stderr
    for _ in range(2):  # idempotent
        done = cli("migrate", "--database-url", empty_dsn)
        assert done.returncode == 0, done.stderr
        assert f"schema {SCHEMA_VERSION}" in done.stdout
    tables = {
        r["tablename"]
        for r in _query(
            empty_dsn, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
        )
    }
    assert {"ingest_cursor", "ingest_tokens", "ingest_dead_letters"} <= tables
    done = cli("status", env=_env(ATDATA_INGEST_DATABASE_URL=empty_dsn))
    assert done.returncode == 0, done.stderr
    status = json.loads(done.stdout)
    assert status["cursor"]["last_seq"] == 0
    assert status["health"]["last_seq"] == 0
    assert status["health"]["lag_seconds"] is None
    assert {"buffer_fill", "dead_letters", "gaps", "now"} <= set(status["health"])


def test_status_reports_the_cursor(pg_dsn: str) -> None:
    _query(
        pg_dsn,
        "UPDATE ingest_cursor SET last_seq = 4242, source = 'wss://relay.example', "
        "last_event_time = now() - interval '5 seconds', dead_letters = 3",
    )
    done = cli("status", "--database-url", pg_dsn)
    assert done.returncode == 0, done.stderr
    status = json.loads(done.stdout)
    assert status["cursor"]["source"] == "wss://relay.example"
    assert status["health"]["last_seq"] == 4242
    assert status["health"]["dead_letters"] == 3
    assert status["health"]["lag_seconds"] >= 5


def test_token_add_list_revoke(pg_dsn: str) -> None:
    env = _env(ATDATA_INGEST_DATABASE_URL=pg_dsn)
    done = cli(
        "token", "add", "discovery", "--collection", "science.alt.dataset.*",
        "--event-type", "commit", "--rate", "5", "--burst", "10", env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    token = done.stdout.strip()
    assert token.startswith("atdi_") and "\n" not in token
    assert "shown once" in done.stderr and token not in done.stderr
    (row,) = _query(pg_dsn, "SELECT * FROM ingest_tokens")
    assert bytes(row["hash"]) == hashlib.sha256(token.encode()).digest()
    assert token not in json.dumps({k: str(v) for k, v in dict(row).items()})

    done = cli("token", "list", env=env)
    assert done.returncode == 0, done.stderr
    (listed,) = json.loads(done.stdout)
    assert listed["name"] == "discovery"
    assert listed["scope"]["collections"] == ["science.alt.dataset.*"]
    assert listed["rate_per_second"] == 5 and listed["burst"] == 10
    assert listed["revoked_at"] is None
    assert "hash" not in listed and token not in done.stdout

    done = cli("token", "add", "discovery", env=env)
    assert done.returncode == 2 and "TOKEN_EXISTS" in done.stderr
    done = cli("token", "add", "other", "--collection", "not a glob", env=env)
    assert done.returncode == 2 and "TOKEN_SCOPE" in done.stderr
    done = cli("token", "add", "all-events", env=env)  # no scope: unrestricted
    assert done.returncode == 0, done.stderr

    assert cli("token", "revoke", "discovery", env=env).returncode == 0
    assert cli("token", "revoke", "discovery", env=env).returncode == 1
    listed = {t["name"]: t for t in json.loads(cli("token", "list", env=env).stdout)}
    assert listed["discovery"]["revoked_at"] is not None
    assert listed["all-events"]["revoked_at"] is None


def test_trim_option_overrides_env(pg_dsn: str) -> None:
    """ATDATA_INGEST_RETENTION_DAYS=0 is invalid, but --retention-days wins."""
    old = _dt.date.today() - _dt.timedelta(days=20)
    name = f"ingest_events_p{old:%Y%m%d}"
    lo = _dt.datetime.combine(old, _dt.time(), _dt.UTC)
    _query(
        pg_dsn,
        f"CREATE TABLE {name} PARTITION OF ingest_events FOR VALUES FROM "
        f"('{lo.isoformat()}') TO ('{(lo + _dt.timedelta(days=1)).isoformat()}')",
    )
    env = _env(ATDATA_INGEST_DATABASE_URL=pg_dsn, ATDATA_INGEST_RETENTION_DAYS="0")
    assert cli("trim", env=env).returncode == exits.CONFIG
    done = cli("trim", "--retention-days", "3", "--dry-run", env=env)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["dry_run"] is True
    assert [d["name"] for d in report["dropped"]] == [name]
    cutoff = _dt.datetime.fromisoformat(report["cutoff"])
    assert abs(
        (_dt.datetime.now(_dt.UTC) - cutoff) - _dt.timedelta(days=3)
    ) < _dt.timedelta(hours=1)
    assert _query(pg_dsn, "SELECT to_regclass($1) IS NOT NULL AS x", name)[0]["x"]
    done = cli("trim", "--retention-days", "3", env=env)
    assert done.returncode == 0, done.stderr
    assert not _query(pg_dsn, "SELECT to_regclass($1) IS NOT NULL AS x", name)[0]["x"]


def test_serve_answers_health(pg_dsn: str) -> None:
    port = _closed_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "atdata_ingest", "serve", "--port", str(port)],
        env=_env(ATDATA_INGEST_DATABASE_URL=pg_dsn),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + GUARD
        response = None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                response = httpx.get(f"http://127.0.0.1:{port}/health", timeout=5)
                break
            except httpx.TransportError:
                time.sleep(0.1)
        assert response is not None, proc.communicate(timeout=GUARD)[0]
        assert response.status_code == 200, response.text
        assert response.json()["last_seq"] == 0
        openapi = httpx.get(f"http://127.0.0.1:{port}/openapi.json", timeout=5)
        assert openapi.status_code == 200 and "/events" in openapi.json()["paths"]
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=GUARD)
    assert proc.returncode == 0, out
