"""``atdata-ingest`` (:mod:`atdata_ingest.cli`) as a user runs it: a real process of
``python -m atdata_ingest``, real PostgreSQL (the session cluster ``pg``), and the
console script the distribution declares.

Shown here: help texts give units, defaults, every setting a command reads
(generated from :class:`atdata_ingest.config.Settings`) and its exit statuses;
every bad setting exits 78 with a message naming the option or variable it came
from; a wrong password, role or database is 78 and an unreachable server 74 in
every command; a database never migrated is 78 ("run `atdata-ingest migrate`") in
every command, ``serve`` included, which checks before uvicorn starts (and that
its port is free); a misspelled ``ATDATA_INGEST_*`` variable draws a warning
naming the closest setting; options override the environment; DSN passwords never
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
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
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
                "75 the in-memory buffer overflowed",
                "78 bad settings",
                "2 bad usage",
                "73 another ingester",
                "$ATDATA_INGEST_RELAY_URL",
                "--plc-url URL",
                "ATDATA_INGEST_PLC_URL = https://plc.directory (option --plc-url)",
            ],
        ),
        (
            ("serve",),
            [
                "default 127.0.0.1",
                "default 8080",
                "ATDATA_INGEST_API_PORT = 8080 (option --port)",
                "2 bad usage",
                "74 PostgreSQL unreachable",
                "in use",
            ],
        ),
        (("trim",), ["default 7", "--dry-run", "2 bad usage", "atdata-ingest migrate"]),
        (
            ("token", "add"),
            [
                "printed on stdout once",
                "per second",
                "default 20",
                "commit, identity",
                "2 bad usage",
                "TOKEN_EXISTS",
            ],
        ),
        (("token", "revoke"), ["1 token revoke: no live token", "2 bad usage"]),
        (("migrate",), ["idempotent", "--database-url", "2 bad usage"]),
        (
            ("status",),
            ["JSON", "last_seq", "cursor_used", "ingester_pid", "lock_backend_pid"],
        ),
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


# -- settings errors: 78, naming the option or the variable ----------------------------

_DB = {"DATABASE_URL": "postgresql://h/db"}


@pytest.mark.parametrize(
    ("args", "env", "named"),
    [
        (("run", "--relay", "ws://127.0.0.1:9"), {}, "ATDATA_INGEST_DATABASE_URL"),
        (("migrate",), {}, "ATDATA_INGEST_DATABASE_URL"),
        (("status",), {}, "ATDATA_INGEST_DATABASE_URL"),
        (("run",), _DB, "ATDATA_INGEST_RELAY_URL"),
        (("run", "--supervise"), _DB, "ATDATA_INGEST_RELAY_URL"),
        (("run", "--relay", "ftp://relay.example"), _DB, "--relay"),
        (
            ("run",),
            {**_DB, "ATDATA_INGEST_RELAY_URL": "ftp://relay.example"},
            "ATDATA_INGEST_RELAY_URL",
        ),
        (("run", "--relay", "ws://r", "--batch-max", "0"), _DB, "--batch-max"),
        (
            ("run", "--relay", "ws://r"),
            {**_DB, "ATDATA_INGEST_BATCH_MAX": "0"},
            "ATDATA_INGEST_BATCH_MAX",
        ),
        (
            ("run", "--relay", "ws://r", "--supervise"),
            {**_DB, "ATDATA_INGEST_FLUSH_MS": "fast"},
            "ATDATA_INGEST_FLUSH_MS",
        ),
        (
            ("run", "--relay", "ws://r", "--buffer-max", "10", "--batch-max", "20"),
            _DB,
            "--buffer-max: 10 is smaller than --batch-max (20)",
        ),
        (
            ("run", "--relay", "ws://r", "--batch-max", "20"),
            {**_DB, "ATDATA_INGEST_BUFFER_MAX": "10"},
            "ATDATA_INGEST_BUFFER_MAX: 10 is smaller than --batch-max (20)",
        ),
        (("run", "--relay", "ws://r", "--plc-url", "ftp://plc"), _DB, "--plc-url"),
        (("trim", "--retention-days", "0"), _DB, "--retention-days: 0 is out of range"),
        (
            ("trim",),
            {**_DB, "ATDATA_INGEST_RETENTION_DAYS": "0"},
            "ATDATA_INGEST_RETENTION_DAYS: 0 is out of range",
        ),
        (("serve", "--port", "99999"), _DB, "--port: 99999 is out of range"),
        (
            ("serve",),
            {**_DB, "ATDATA_INGEST_API_PORT": "99999"},
            "ATDATA_INGEST_API_PORT: 99999 is out of range",
        ),
        (("serve", "--host", " "), _DB, "--host: empty"),
        (("migrate", "--database-url", "mysql://u@h/db"), {}, "--database-url:"),
        (
            ("migrate",),
            {"ATDATA_INGEST_DATABASE_URL": "mysql://u@h/db"},
            "ATDATA_INGEST_DATABASE_URL:",
        ),
        (("status",), {"DATABASE_URL": "mysql://u@h/db"}, "DATABASE_URL:"),
        (
            ("status",),
            {**_DB, "ATDATA_INGEST_LOG_LEVEL": "loud"},
            "ATDATA_INGEST_LOG_LEVEL",
        ),
    ],
)
def test_bad_settings_exit_78_naming_the_option_or_variable(
    args: tuple[str, ...], env: dict[str, str], named: str
) -> None:
    """The message starts with where the bad value came from: the option when one
    gave it, else the variable (``DATABASE_URL`` for the plain one)."""
    done = cli(*args, env=_env(**env))
    assert done.returncode == exits.CONFIG, done.stderr
    assert done.stderr.startswith(f"atdata-ingest: error: {named}"), done.stderr
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


# -- help generated from the settings ------------------------------------------------

#: Settings the ingester reads that the first users could not find in ``run --help``.
_INGESTER_SETTINGS = (
    "START", "PLC_URL", "BUFFER_MAX_BYTES", "SYNCHRONOUS_COMMIT", "HIGH_WATER",
    "PAUSE_MS", "RECONNECT_MIN_SECONDS", "RECONNECT_MAX_SECONDS",
    "LOG_INTERVAL_SECONDS", "MAX_FRAME_BYTES", "BATCH_MAX", "FLUSH_MS", "BUFFER_MAX",
    "VERIFY", "VALIDATE", "DB_RETRY_SECONDS", "RELAY_URL", "DATABASE_URL",
)  # fmt: skip
_HELP_LINE = re.compile(
    r"^  (ATDATA_INGEST_[A-Z_]+) = (.+?)(?:  \(option (--[a-z-]+)\))?$"
)


def _default_text(value: Any) -> str:
    """A dataclass field's default as the help prints it."""
    import dataclasses

    if value is dataclasses.MISSING:
        return "$DATABASE_URL"
    if value == "":
        return "(required)"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _help_settings(*command: str) -> dict[str, tuple[str, str | None]]:
    """The settings listed in ``command --help``: variable -> (default, option)."""
    done = cli(*command, "--help")
    assert done.returncode == 0, done.stderr
    found = {}
    for line in done.stdout.splitlines():
        m = _HELP_LINE.match(line)
        if m:
            found[m[1]] = (m[2], m[3])
    return found


def test_run_help_lists_every_setting_the_ingester_reads() -> None:
    """``run --help`` lists, with its default, every Settings field that ``run``
    reads, and every field the ingester's modules actually read is one of them
    (so a new setting cannot be forgotten in the help)."""
    import dataclasses

    from atdata_ingest.config import Settings, setting_infos

    listed = _help_settings("run")
    for name in _INGESTER_SETTINGS:
        assert f"ATDATA_INGEST_{name}" in listed, (name, sorted(listed))
    infos = {s.field: s for s in setting_infos()}
    fields = {f.name: f for f in dataclasses.fields(Settings)}
    assert set(infos) == set(fields)
    run_fields = {n for n, s in infos.items() if "run" in s.commands}
    assert set(listed) == {infos[n].variable for n in run_fields}
    for name in run_fields:
        default, _ = listed[infos[name].variable]
        assert default.split()[0] == _default_text(fields[name].default), name
    # every option of run that is a setting is shown next to its variable
    from atdata_ingest.cli import RUN_OPTIONS

    for field, option in RUN_OPTIONS.items():
        assert listed[infos[field].variable][1] == option
    # the fields the ingester's modules read are all listed
    src = Path(__file__).resolve().parents[2] / "ingest" / "atdata_ingest"
    read: set[str] = set()
    for module in ("ingester.py", "writer.py"):
        text = (src / module).read_text()
        read |= set(re.findall(r"\b(?:settings|s)\.([a-z_]+)\b", text)) & set(fields)
    assert read and read <= run_fields, read - run_fields


def test_help_and_module_doc_cover_every_setting() -> None:
    """Each command's --help lists the settings its fields say it reads; the
    config module doc's table has every variable with the same default; together
    the commands list every field."""
    from atdata_ingest import config

    infos = list(config.setting_infos())
    seen: set[str] = set()
    for command in (("run",), ("serve",), ("migrate",), ("token", "add"), ("trim",),
                    ("status",)):  # fmt: skip
        listed = _help_settings(*command)
        wanted = {s.variable for s in infos if command[0] in s.commands}
        assert set(listed) == wanted, command
        seen |= set(listed)
    assert seen == {s.variable for s in infos}
    doc = config.__doc__ or ""
    assert "{SETTINGS_TABLE}" not in doc
    for s in infos:
        (row,) = [line for line in doc.splitlines() if f"``{s.variable}``" in line]
        assert row.split()[1] == s.default.split()[0], row
    assert "ATDATA_INGEST_LOG_LEVEL" in doc


def test_exit_statuses_documented_in_module_doc_and_help() -> None:
    """2 (usage) and 1 (token revoke) are documented with the others, in the module
    doc and the top-level --help epilog; each status the commands can return has
    a line."""
    import atdata_ingest.cli as cli_module

    doc = cli_module.__doc__ or ""
    assert "{EXIT_STATUSES}" not in doc
    for status in (0, 1, 2, 70, 73, 74, 75, 78):
        assert f"- **{status}**: " in doc, status
    top = " ".join(cli("--help").stdout.split())
    for phrase in ("2 bad usage", "1 token revoke", "78 bad settings", "74 PostgreSQL"):
        assert phrase in top, phrase
    assert cli_module.EXIT_USAGE == 2


# -- unknown variables ----------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ("run",),
        ("serve",),
        ("migrate",),
        ("token", "list"),
        ("trim",),
        ("status",),
    ],
)
def test_misspelled_variable_warns_with_the_closest_name(argv: tuple[str, ...]) -> None:
    """For every command: a warning per unknown ATDATA_INGEST_* variable (with the
    closest setting when one is close), none for known ones; the command goes on
    (here it stops at the missing DSN, 78)."""
    env = _env(
        ATDATA_INGEST_BACH_MAX="100",
        ATDATA_INGEST_QQQZZZ="x",
        ATDATA_INGEST_LOG_LEVEL="INFO",
        ATDATA_INGEST_VERIFY="none",
    )
    done = cli(*argv, env=env)
    assert done.returncode == exits.CONFIG, done.stderr
    lines = done.stderr.splitlines()
    assert (
        "atdata-ingest: warning: ATDATA_INGEST_BACH_MAX is not a setting of "
        "atdata-ingest (ignored); did you mean ATDATA_INGEST_BATCH_MAX?"
    ) in lines, done.stderr
    (other,) = [line for line in lines if "ATDATA_INGEST_QQQZZZ" in line]
    assert "did you mean" not in other
    assert sum("warning:" in line for line in lines) == 2, done.stderr
    assert "ATDATA_INGEST_DATABASE_URL: missing" in done.stderr


def test_unknown_variables_unit() -> None:
    from atdata_ingest.config import known_variables, unknown_variables

    env = {
        "ATDATA_INGEST_RETENTION_DAY": "3",
        "ATDATA_INGEST_RELAY_URL": "wss://r",
        "ATDATA_INGEST_TEST_KILL_AT": "after-copy:1",
        "OTHER": "1",
    }
    assert unknown_variables(env) == [
        ("ATDATA_INGEST_RETENTION_DAY", "ATDATA_INGEST_RETENTION_DAYS")
    ]
    assert {"ATDATA_INGEST_LOG_LEVEL", "ATDATA_INGEST_PLC_URL"} <= known_variables()


# -- logging --------------------------------------------------------------------------

_HTTPX_PROBE = """
import http.server, logging, sys, threading
import httpx
from atdata_ingest.cli import _setup_logging

class Quiet(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.send_header("Content-Length", "0")
        self.end_headers()
    def log_message(self, *args):
        pass

_setup_logging(sys.argv[1])
srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
threading.Thread(target=srv.serve_forever, daemon=True).start()
assert httpx.get(f"http://127.0.0.1:{srv.server_port}/did:plc:x").status_code == 200
logging.getLogger("atdata_ingest.probe").warning("probe done")
"""


@pytest.mark.parametrize(("level", "logged"), [("INFO", False), ("DEBUG", True)])
def test_httpx_request_lines_only_at_debug(level: str, logged: bool) -> None:
    done = subprocess.run(
        [sys.executable, "-c", _HTTPX_PROBE, level],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=GUARD,
    )
    assert done.returncode == 0, done.stderr
    assert "probe done" in done.stderr
    assert ("HTTP Request: GET" in done.stderr) is logged, done.stderr


# -- the database: errors are exits, never tracebacks -----------------------------------

_PASSWORD = "right-pw-4b7Q"


@pytest.fixture(scope="module")
def scram_pg() -> Iterator[PostgresCluster]:
    """A private cluster where role ``ingest`` must give its password (SCRAM);
    every other role is trusted, as in the session cluster."""
    cluster = PostgresCluster()
    hba = cluster.data / "pg_hba.conf"
    hba.write_text(
        "host all ingest 127.0.0.1/32 scram-sha-256\n"
        "host all all 127.0.0.1/32 trust\n"
        "local all all trust\n"
    )
    cluster.start()
    try:
        _query(
            cluster.dsn,
            f"CREATE ROLE ingest LOGIN PASSWORD '{_PASSWORD}' CREATEDB",
        )
        _query(cluster.dsn, "CREATE DATABASE ingest OWNER ingest")
        yield cluster
    finally:
        cluster.close()


_COMMANDS: dict[str, tuple[str, ...]] = {
    "migrate": ("migrate",),
    "status": ("status",),
    "token-add": ("token", "add", "app"),
    "token-list": ("token", "list"),
    "token-revoke": ("token", "revoke", "app"),
    "trim": ("trim", "--dry-run"),
    "serve": ("serve",),
    "run": ("run", "--relay", "ws://127.0.0.1:9", "--db-retry-seconds", "0"),
}


def _argv(command: str) -> list[str]:
    argv = list(_COMMANDS[command])
    if command == "serve":
        argv += ["--port", str(_closed_port())]
    return argv


def _no_traceback(done: subprocess.CompletedProcess[str]) -> None:
    out = done.stdout + done.stderr
    for bad in ("Traceback", "internal error", "Started server process",
                "Future exception"):  # fmt: skip
        assert bad not in out, out


@pytest.mark.parametrize("command", list(_COMMANDS))
@pytest.mark.parametrize("fault", ["password", "role", "database", "unreachable"])
def test_database_errors_have_one_status_in_every_command(
    command: str, fault: str, scram_pg: PostgresCluster
) -> None:
    """A wrong password, an unknown role or an unknown database is a configuration
    error (78) naming the DSN's variable; an unreachable server is 74: the same in
    every command, serve and run included, and never with the password."""
    port = scram_pg.port
    dsn = {
        "password": f"postgresql://ingest:wrong-{SECRET}@127.0.0.1:{port}/ingest",
        "role": f"postgresql://nobody:{SECRET}@127.0.0.1:{port}/postgres",
        "database": f"postgresql://postgres:{SECRET}@127.0.0.1:{port}/nosuchdb",
        "unreachable": f"postgresql://ingest:{SECRET}@127.0.0.1:{_closed_port()}/x",
    }[fault]
    done = cli(*_argv(command), env=_env(ATDATA_INGEST_DATABASE_URL=dsn))
    _no_traceback(done)
    assert SECRET not in done.stdout + done.stderr
    # run's ingester logs its own exit line ("exit 78: ..."), the others print one
    if fault == "unreachable":
        assert done.returncode == exits.IOERR, done.stderr
        assert "atdata-ingest: failed:" in done.stderr or command == "run"
    else:
        assert done.returncode == exits.CONFIG, done.stderr
        assert "ATDATA_INGEST_DATABASE_URL: postgresql://" in done.stderr
        assert "atdata-ingest: error: " in done.stderr or command == "run"


def test_right_password_reaches_the_schema_check(scram_pg: PostgresCluster) -> None:
    """The control of the test above: the same role with its password gets past
    authentication (to the missing schema), and migrate then works."""
    dsn = f"postgresql://ingest:{_PASSWORD}@127.0.0.1:{scram_pg.port}/ingest"
    env = _env(DATABASE_URL=dsn)
    done = cli("status", env=env)
    assert done.returncode == exits.CONFIG and "schema is missing" in done.stderr
    assert "DATABASE_URL names the service's database" in done.stderr
    assert _PASSWORD not in done.stderr
    assert cli("migrate", env=env).returncode == 0
    assert cli("status", env=env).returncode == 0


@pytest.mark.parametrize(
    "command", [c for c in _COMMANDS if c not in ("migrate", "run")]
)
def test_unmigrated_database_is_78_in_every_command(
    command: str, empty_dsn: str
) -> None:
    """A database never migrated: 78 and the same hint in every command that needs
    the schema (serve before uvicorn starts); nothing is created by them."""
    done = cli(*_argv(command), env=_env(ATDATA_INGEST_DATABASE_URL=empty_dsn))
    _no_traceback(done)
    assert done.returncode == exits.CONFIG, done.stderr
    assert "the schema is missing (run `atdata-ingest migrate`" in done.stderr
    tables = _query(
        empty_dsn, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
    )
    assert tables == []


def test_incomplete_or_old_schema_is_78(pg_dsn: str) -> None:
    env = _env(ATDATA_INGEST_DATABASE_URL=pg_dsn)
    _query(pg_dsn, "UPDATE ingest_meta SET value = '1' WHERE key = 'schema_version'")
    done = cli("token", "list", env=env)
    assert done.returncode == exits.CONFIG, done.stderr
    assert f"version 1, older than this atdata-ingest's {SCHEMA_VERSION}" in done.stderr
    assert cli("migrate", env=env).returncode == 0
    assert cli("token", "list", env=env).returncode == 0
    _query(pg_dsn, "DROP TABLE ingest_tokens")
    done = cli("token", "list", env=env)
    assert done.returncode == exits.CONFIG, done.stderr
    assert "incomplete (no table ingest_tokens)" in done.stderr
    _no_traceback(done)


@pytest.mark.parametrize("how", ["option", "env"])
def test_serve_port_in_use_is_78_before_uvicorn(pg_dsn: str, how: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = _env(ATDATA_INGEST_DATABASE_URL=pg_dsn)
        argv = ["serve"]
        if how == "option":
            argv += ["--port", str(port)]
        else:
            env["ATDATA_INGEST_API_PORT"] = str(port)
        done = cli(*argv, env=env)
    _no_traceback(done)
    assert done.returncode == exits.CONFIG, done.stderr
    named = "--port" if how == "option" else "ATDATA_INGEST_API_PORT"
    assert done.stderr.startswith(
        f"atdata-ingest: error: {named}: 127.0.0.1:{port} is already in use"
    ), done.stderr


def test_serve_host_not_of_this_machine_is_78(pg_dsn: str) -> None:
    done = cli(
        "serve", "--host", "192.0.2.1", "--port", str(_closed_port()),
        env=_env(ATDATA_INGEST_DATABASE_URL=pg_dsn),
    )  # fmt: skip
    _no_traceback(done)
    assert done.returncode == exits.CONFIG, done.stderr
    assert "--host: '192.0.2.1' is not an address of this host" in done.stderr


# -- status: start, cursor use, the ingester's pid ----------------------------------------


def test_status_shows_start_and_whether_the_cursor_was_used(pg_dsn: str) -> None:
    env = _env(ATDATA_INGEST_DATABASE_URL=pg_dsn)
    status = json.loads(cli("status", env=env).stdout)
    assert status["start"] == {
        "setting": "live",
        "variable": "ATDATA_INGEST_START",
        "cursor_used": False,
        "next_run": "first start: the relay's live tail (no cursor sent)",
    }
    assert status["schema_version"] == SCHEMA_VERSION
    done = cli("status", env={**env, "ATDATA_INGEST_START": "oldest"})
    assert json.loads(done.stdout)["start"]["next_run"].endswith("(?cursor=0)")
    _query(pg_dsn, "UPDATE ingest_cursor SET last_seq = 77")
    start = json.loads(
        cli("status", env={**env, "ATDATA_INGEST_START": "oldest"}).stdout
    )["start"]
    assert start["cursor_used"] is True and start["setting"] == "oldest"
    assert start["next_run"].startswith("resume after seq 77 (?cursor=77")


def test_status_tells_the_ingester_pid_from_the_backend_pid(pg_dsn: str) -> None:
    """While a session holds the ingester's advisory lock, status shows it running,
    the ingester's own pid (from ingest_cursor) and, separately labelled, the
    PostgreSQL backend pid of the lock's session."""
    from atdata_ingest.writer import INGESTER_LOCK_KEY

    env = _env(ATDATA_INGEST_DATABASE_URL=pg_dsn)
    ingester = json.loads(cli("status", env=env).stdout)["ingester"]
    assert ingester["running"] is False and ingester["lock_backend_pid"] is None

    async def holding() -> tuple[int, dict[str, Any]]:
        conn = await asyncpg.connect(
            pg_dsn, server_settings={"application_name": "fake"}
        )
        try:
            assert await conn.fetchval(
                "SELECT pg_try_advisory_lock($1)", INGESTER_LOCK_KEY
            )
            await conn.execute(
                "UPDATE ingest_cursor SET ingester_pid = 424242, "
                "ingester_started_at = now()"
            )
            done = await asyncio.to_thread(cli, "status", env=env)
            assert done.returncode == 0, done.stderr
            return conn.get_server_pid(), json.loads(done.stdout)["ingester"]
        finally:
            await conn.close()

    backend, ingester = asyncio.run(holding())
    assert ingester["running"] is True
    assert ingester["ingester_pid"] == 424242
    assert ingester["lock_backend_pid"] == backend != 424242
    assert ingester["lock_application_name"] == "fake"
    ingester = json.loads(cli("status", env=env).stdout)["ingester"]
    assert ingester["running"] is False and ingester["ingester_pid"] == 424242
