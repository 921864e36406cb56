"""``atdata-ingest``: the command line of the ingestion service.

::

    atdata-ingest run [--relay URL] [--database-url DSN] [--batch-max N] ...
                      [--supervise [--backoff-initial S] [--backoff-max S] ...]
    atdata-ingest serve [--host 127.0.0.1] [--port 8080]
    atdata-ingest migrate
    atdata-ingest token add NAME [--collection GLOB ...] [--event-type T ...]
                                 [--repo DID ...] [--rate R] [--burst B]
    atdata-ingest token list
    atdata-ingest token revoke NAME
    atdata-ingest trim [--retention-days N] [--dry-run]
    atdata-ingest status

Every setting comes from the environment (``ATDATA_INGEST_*``,
:mod:`atdata_ingest.config`); an option given on the command line wins over its
variable. ``run --supervise`` hands the options to its child **as environment
variables** (the child is ``python -m atdata_ingest run`` without options), so a
DSN's password never appears in a process listing; prefer the variable (or an
``EnvironmentFile=``) for the DSN anyway.

Exit statuses (:mod:`atdata_ingest.exits`): 0 done or clean stop (SIGTERM and
SIGINT included, for ``serve`` too); 78 bad settings (the message names the
variable); 74 the database is unavailable; 75 buffer overflow and 73 another
ingester holds the lock (``run``); 70 a bug (with its traceback); 2 bad usage
(argparse's, and a token name or scope refused); 1 ``token revoke`` of no live
token. Every message and log line has its DSN passwords redacted.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as _dt
import json
import logging
import os
import re
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Final, TypeVar
from urllib.parse import unquote, urlsplit

from atdata_runtime.net import redact_url

from . import exits
from .config import ENV_PREFIX, ConfigError, Settings

__all__ = ["main", "redact", "run_overrides"]

log = logging.getLogger("atdata_ingest.cli")

PROG: Final = "atdata-ingest"
LOG_LEVEL_ENV: Final = f"{ENV_PREFIX}LOG_LEVEL"
EXIT_USAGE: Final = 2

_T = TypeVar("_T")

# -- redaction ------------------------------------------------------------------------

_DSN_IN_TEXT: Final = re.compile(r"postgres(?:ql)?://[^\s'\"<>]+", re.IGNORECASE)
_secrets: set[str] = set()


def _remember_secrets(dsn: str | None) -> None:
    """Record the password (raw and percent-decoded) of ``dsn`` so :func:`redact`
    removes it even where it appears outside a URL (a driver's message)."""
    if not dsn:
        return
    try:
        password = urlsplit(dsn).password
    except ValueError:
        return
    if password:
        _secrets.update({password, unquote(password)})


def redact(text: str) -> str:
    """``text`` with every ``postgres[ql]://`` URL's userinfo removed
    (:func:`atdata_runtime.net.redact_url`) and every password seen in a DSN of
    this process replaced by ``REDACTED``."""
    text = _DSN_IN_TEXT.sub(lambda m: redact_url(m.group(0)), text)
    for secret in sorted(_secrets, key=len, reverse=True):
        if len(secret) >= 3:
            text = text.replace(secret, "REDACTED")
    return text


class _RedactingFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


def _setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        _RedactingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


# -- settings ---------------------------------------------------------------------

#: ``run``'s command-line options that are settings: option dest -> Settings field.
RUN_SETTINGS: Final = {
    "relay": "relay_url",
    "start": "start",
    "database_url": "database_url",
    "batch_max": "batch_max",
    "flush_ms": "flush_ms",
    "buffer_max": "buffer_max",
    "verify": "verify",
    "validate": "validate",
    "db_retry_seconds": "db_retry_seconds",
}


def run_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The settings given as options of ``run`` (field -> value; options not given
    are left out)."""
    return {
        field: getattr(args, dest)
        for dest, field in RUN_SETTINGS.items()
        if getattr(args, dest, None) is not None
    }


def _settings(environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
    env = os.environ if environ is None else environ
    _remember_secrets(overrides.get("database_url"))
    _remember_secrets(env.get(f"{ENV_PREFIX}DATABASE_URL"))
    _remember_secrets(env.get("DATABASE_URL"))
    return Settings.from_env(env, **overrides)


def _child_env(overrides: Mapping[str, Any]) -> dict[str, str]:
    """This process's environment with ``overrides`` written as their
    ``ATDATA_INGEST_*`` variables (what the supervised child reads)."""
    env = dict(os.environ)
    for field, value in overrides.items():
        if isinstance(value, bool):
            value = "true" if value else "false"
        env[f"{ENV_PREFIX}{field.upper()}"] = str(value)
    return env


# -- the database -------------------------------------------------------------------


def _db(settings: Settings, work: Callable[[Any], Awaitable[_T]]) -> _T:
    """Run ``work(conn)`` on one asyncpg connection to the configured database.
    Raises :class:`exits.DatabaseUnavailable` when it cannot connect."""
    import asyncpg

    async def go() -> _T:
        try:
            conn = await asyncpg.connect(
                settings.database_url, timeout=10, server_settings={
                    "application_name": f"{settings.application_name} cli"
                },
            )  # fmt: skip
        except (TimeoutError, OSError, asyncpg.PostgresError) as exc:
            raise exits.DatabaseUnavailable(
                f"cannot connect to {settings.redacted_database_url}: "
                f"{type(exc).__name__}: {exc}"
            ) from None
        try:
            return await work(conn)
        finally:
            await conn.close()

    return asyncio.run(go())


def _jsonable(value: Any) -> Any:
    if isinstance(value, _dt.datetime | _dt.date):
        return value.isoformat()
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)


def _print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(_jsonable(value), indent=2, sort_keys=True) + "\n")


# -- commands -------------------------------------------------------------------------


def _cmd_run(args: argparse.Namespace) -> int:
    overrides = run_overrides(args)
    settings = _settings(**overrides)
    settings.require_relay()
    if args.supervise:
        from .supervise import Backoff, child_command, supervise

        try:
            backoff = Backoff(
                initial=args.backoff_initial,
                maximum=args.backoff_max,
                reset_after=args.backoff_reset,
            )
        except ValueError as exc:
            raise ConfigError(f"--backoff-*: {exc}") from None
        env = _child_env(overrides)
        env[LOG_LEVEL_ENV] = args.log_level
        log.info(
            "supervising: relay=%s database=%s",
            settings.relay_url, settings.redacted_database_url,
        )  # fmt: skip
        return supervise(
            child_command([]), env=env, backoff=backoff, stop_timeout=args.stop_timeout
        )
    from .ingester import main as ingest

    return ingest(settings)


def _cmd_migrate(args: argparse.Namespace) -> int:
    from .schema import SCHEMA_VERSION, migrate

    settings = _settings(database_url=args.database_url)
    _db(settings, migrate)
    print(f"migrated {settings.redacted_database_url} to schema {SCHEMA_VERSION}")
    return exits.OK


def _cmd_status(args: argparse.Namespace) -> int:
    settings = _settings(database_url=args.database_url)

    async def work(conn: Any) -> dict[str, Any]:
        row = await conn.fetchrow("SELECT * FROM ingest_cursor")
        if row is None:
            raise ConfigError(
                f"{settings.redacted_database_url}: no ingest_cursor row "
                "(run `atdata-ingest migrate`)"
            )
        cursor = dict(row)
        now = await conn.fetchval("SELECT now()")
        newest = cursor.get("last_event_time")
        lag = (now - newest).total_seconds() if newest is not None else None
        return {
            "cursor": cursor,
            "health": {
                "last_seq": cursor["last_seq"],
                "lag_seconds": lag,
                "buffer_fill": cursor.get("buffer_fill"),
                "dead_letters": cursor.get("dead_letters"),
                "gaps": cursor.get("gaps"),
                "now": now,
            },
        }

    import asyncpg

    try:
        status = _db(settings, work)
    except asyncpg.UndefinedTableError:
        raise ConfigError(
            f"{settings.redacted_database_url}: the schema is missing "
            "(run `atdata-ingest migrate`)"
        ) from None
    _print_json(status)
    return exits.OK


def _cmd_serve(args: argparse.Namespace) -> int:
    from .api import serve

    overrides: dict[str, Any] = {"database_url": args.database_url}
    if args.host is not None:
        overrides["api_host"] = args.host
    if args.port is not None:
        overrides["api_port"] = args.port
    settings = _settings(**overrides)
    # Returns on SIGTERM after a graceful shutdown that also ends open streams
    # (a clean stop, exit 0); SIGINT ends as KeyboardInterrupt, which main() turns
    # into 0 as well.
    serve(
        settings.database_url,
        host=settings.api_host,
        port=settings.api_port,
        log_level=args.log_level.lower(),
    )
    return exits.OK


def _cmd_token(args: argparse.Namespace) -> int:
    from . import tokens

    settings = _settings(database_url=args.database_url)
    if args.token_command == "add":
        scope: dict[str, list[str]] = {}
        for key, given in (
            ("collections", args.collection),
            ("event_types", args.event_type),
            ("repos", args.repo),
        ):
            if given:
                scope[key] = list(given)
        limits: dict[str, Any] = {}
        if args.rate is not None:
            limits["rate"] = args.rate
        if args.burst is not None:
            limits["burst"] = args.burst

        async def add(conn: Any) -> str:
            return await tokens.create_token(conn, args.name, scope=scope, **limits)

        try:
            plaintext = _db(settings, add)
        except tokens.TokenError as exc:
            raise _Usage(str(exc)) from None
        sys.stderr.write(
            f"token {args.name!r} created; it is shown once (only its SHA-256 is "
            "stored): keep it now\n"
        )
        sys.stdout.write(f"{plaintext}\n")
        return exits.OK
    if args.token_command == "list":

        async def listing(conn: Any) -> list[Any]:
            return await tokens.list_tokens(conn)

        _print_json([_token_json(t) for t in _db(settings, listing)])
        return exits.OK

    async def revoke(conn: Any) -> bool:
        return await tokens.revoke_token(conn, args.name)

    if not _db(settings, revoke):
        sys.stderr.write(f"{PROG}: no live token named {args.name!r}\n")
        return 1
    print(f"token {args.name!r} revoked")
    return exits.OK


def _token_json(token: Any) -> dict[str, Any]:
    """A :class:`tokens.TokenInfo` as JSON-ready data (it has no hash)."""
    return {
        "id": token.id,
        "name": token.name,
        "scope": token.scope.to_json(),
        "rate_per_second": token.rate_per_second,
        "burst": token.burst,
        "created_at": token.created_at,
        "revoked_at": token.revoked_at,
    }


def _cmd_trim(args: argparse.Namespace) -> int:
    from . import retention

    overrides: dict[str, Any] = {"database_url": args.database_url}
    if args.retention_days is not None:
        overrides["retention_days"] = args.retention_days
    settings = _settings(**overrides)

    async def work(conn: Any) -> Any:
        return await retention.trim(
            conn, retention_days=settings.retention_days, dry_run=args.dry_run
        )

    report = _db(settings, work)
    _print_json(report.as_dict())
    if report.busy:
        sys.stderr.write(f"{PROG}: another trim is running; nothing done\n")
    elif report.blocked:
        sys.stderr.write(
            f"{PROG}: locked, left for the next trim: {', '.join(report.blocked)}\n"
        )
    return exits.OK


class _Usage(Exception):
    """Bad arguments found after parsing (exit 2, as argparse's own)."""


# -- the parser -----------------------------------------------------------------------


class _Formatter(argparse.HelpFormatter):
    """Wraps descriptions; shows no ``{choices}`` noise twice."""


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be > 0")
    return value


def _dsn_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--database-url",
        metavar="DSN",
        help="PostgreSQL DSN, postgresql://user@host:port/db (default: "
        "$ATDATA_INGEST_DATABASE_URL, else $DATABASE_URL). Prefer the variable: "
        "options are visible in process listings.",
    )


def build_parser() -> argparse.ArgumentParser:
    """The ``atdata-ingest`` argument parser."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="The firehose ingestion service of the atdata federation: "
        "consumes com.atproto.sync.subscribeRepos into a durable PostgreSQL log "
        "with an exact cursor, and serves typed, filtered events. Settings come "
        "from ATDATA_INGEST_* variables; options override them.",
        formatter_class=_Formatter,
    )
    parser.add_argument(
        "--log-level",
        default=os.environ.get(LOG_LEVEL_ENV, "INFO").upper(),
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        type=str.upper,
        help=f"log level on stderr (default: ${LOG_LEVEL_ENV}, else INFO)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser(
        "run",
        help="ingest from the relay into PostgreSQL (until SIGTERM/SIGINT)",
        description="Consume subscribeRepos from the relay, resuming at the "
        "stored cursor, and store every event in batches; the cursor advances "
        "in the batch's transaction. Exit statuses: 0 clean stop, 75 buffer "
        "overflow, 74 database unavailable, 73 another ingester holds the lock, "
        "78 bad settings, 70 a bug.",
        formatter_class=_Formatter,
    )
    run.add_argument(
        "--relay",
        metavar="URL",
        help="relay or PDS, wss://host (or ws://, https://, http://); "
        "default $ATDATA_INGEST_RELAY_URL",
    )
    run.add_argument(
        "--start",
        choices=["live", "oldest"],
        type=str.lower,
        help="first run only (stored cursor 0): live = the relay's live tail "
        "(default, $ATDATA_INGEST_START), oldest = ?cursor=0, the oldest event "
        "the relay has (a PDS replays its whole stream)",
    )
    _dsn_option(run)
    run.add_argument(
        "--batch-max",
        type=int,
        metavar="N",
        help="events per COPY batch, 1..10000 (default 500, $ATDATA_INGEST_BATCH_MAX)",
    )
    run.add_argument(
        "--flush-ms",
        type=int,
        metavar="MS",
        help="milliseconds after a batch's first event before it is flushed, "
        "1..10000 (default 50, $ATDATA_INGEST_FLUSH_MS)",
    )
    run.add_argument(
        "--buffer-max",
        type=int,
        metavar="N",
        help="events held in memory before exiting 75 (default 20000, "
        "$ATDATA_INGEST_BUFFER_MAX)",
    )
    run.add_argument(
        "--verify",
        choices=["dataset", "all", "none"],
        type=str.lower,
        help="commit signatures checked: dataset = commits touching "
        "science.alt.dataset.* (default, $ATDATA_INGEST_VERIFY), all, none",
    )
    run.add_argument(
        "--validate",
        choices=["all", "dataset", "none"],
        type=str.lower,
        help="records validated with the generated models (default all, "
        "$ATDATA_INGEST_VALIDATE)",
    )
    run.add_argument(
        "--db-retry-seconds",
        type=float,
        metavar="S",
        help="seconds a lost database is retried before exiting 74 (default 60, "
        "$ATDATA_INGEST_DB_RETRY_SECONDS)",
    )
    sup = run.add_argument_group(
        "supervision",
        "--supervise runs the ingester as a child process and restarts it: "
        "after exit 0 the supervisor exits 0, after 78 it exits 78 (no restart), "
        "after anything else it restarts with exponential backoff. SIGTERM/SIGINT "
        "are forwarded to the child. Under systemd, do not use it: the unit "
        "restarts the process (scripts/atdata-ingest.service).",
    )
    sup.add_argument(
        "--supervise",
        action="store_true",
        help="run and restart the ingester as a child process",
    )
    sup.add_argument(
        "--backoff-initial",
        type=_positive_float,
        default=0.5,
        metavar="S",
        help="first restart delay in seconds (default 0.5); doubles per restart",
    )
    sup.add_argument(
        "--backoff-max",
        type=_positive_float,
        default=30.0,
        metavar="S",
        help="restart delay cap in seconds (default 30); ±20%% jitter on top",
    )
    sup.add_argument(
        "--backoff-reset",
        type=_positive_float,
        default=60.0,
        metavar="S",
        help="a child up this many seconds resets the backoff (default 60)",
    )
    sup.add_argument(
        "--stop-timeout",
        type=_positive_float,
        default=25.0,
        metavar="S",
        help="seconds the child gets to stop cleanly after SIGTERM/SIGINT "
        "before SIGKILL (default 25)",
    )
    run.set_defaults(handler=_cmd_run)

    serve = sub.add_parser(
        "serve",
        help="serve the consumer API (GET /events, /health, streaming)",
        description="Serve the consumer API with uvicorn.",
    )
    serve.add_argument(
        "--host",
        help="address to listen on (default 127.0.0.1, $ATDATA_INGEST_API_HOST)",
    )
    serve.add_argument(
        "--port",
        type=int,
        help="TCP port (default 8080, $ATDATA_INGEST_API_PORT)",
    )
    _dsn_option(serve)
    serve.set_defaults(handler=_cmd_serve)

    mig = sub.add_parser(
        "migrate",
        help="create the tables and today's partitions (idempotent)",
        description="Create every table, index and the daily partitions of "
        "today and the next two days when missing (idempotent: safe to run again, "
        "and from several processes at once).",
    )
    _dsn_option(mig)
    mig.set_defaults(handler=_cmd_migrate)

    tok = sub.add_parser(
        "token",
        help="consumer tokens: add, list, revoke",
        description="Bearer tokens of consumer apps (stored hashed; read-only; "
        "scoped to filters; rate-limited).",
    )
    tsub = tok.add_subparsers(dest="token_command", required=True, metavar="ACTION")
    add = tsub.add_parser(
        "add",
        help="create a token and print it once",
        description="Create a token named NAME; the plaintext token is printed "
        "on stdout once and never stored. Without scope options it may read "
        "every event.",
    )
    add.add_argument("name", metavar="NAME", help="the consumer app's name (unique)")
    add.add_argument(
        "--collection",
        action="append",
        default=[],
        metavar="GLOB",
        help="allowed collection NSID or glob (app.bsky.feed.*); repeatable",
    )
    add.add_argument(
        "--event-type",
        action="append",
        default=[],
        metavar="T",
        choices=["commit", "identity", "account", "sync", "info"],
        help="allowed event type: commit, identity, account, sync, info; repeatable",
    )
    add.add_argument(
        "--repo", action="append", default=[], metavar="DID",
        help="allowed repository DID; repeatable",
    )  # fmt: skip
    add.add_argument(
        "--rate",
        type=_positive_float,
        metavar="R",
        help="requests per second allowed (token bucket refill; default 20)",
    )
    add.add_argument(
        "--burst",
        type=int,
        metavar="B",
        help="token bucket size in requests (default 40)",
    )
    _dsn_option(add)
    lst = tsub.add_parser("list", help="list tokens (names, scopes, never hashes)")
    _dsn_option(lst)
    rev = tsub.add_parser("revoke", help="revoke a token by name")
    rev.add_argument("name", metavar="NAME")
    _dsn_option(rev)
    tok.set_defaults(handler=_cmd_token)

    trim = sub.add_parser(
        "trim",
        help="drop events older than the retention window",
        description="Drop the daily partitions older than the retention window "
        "(whole partitions; rows of the default partition are deleted).",
    )
    trim.add_argument(
        "--retention-days",
        type=int,
        metavar="N",
        help="days of events kept, 1..3650 (default 7, $ATDATA_INGEST_RETENTION_DAYS)",
    )
    trim.add_argument(
        "--dry-run", action="store_true", help="print what would be dropped"
    )
    _dsn_option(trim)
    trim.set_defaults(handler=_cmd_trim)

    st = sub.add_parser(
        "status",
        help="print the cursor row and health as JSON",
        description="Print, as JSON, the cursor row (last_seq, source, buffer "
        "fill, dead-letter count, ...) and the health: lag_seconds between now and "
        "the newest stored event time.",
    )
    _dsn_option(st)
    st.set_defaults(handler=_cmd_status)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status (see the module doc)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(args.log_level)
    try:
        status = args.handler(args)
    except exits.IngestExit as exc:
        what = "error" if exc.status == exits.CONFIG else "failed"
        sys.stderr.write(f"{PROG}: {what}: {redact(str(exc))}\n")
        return exc.status
    except _Usage as exc:
        sys.stderr.write(f"{PROG}: error: {redact(str(exc))}\n")
        return EXIT_USAGE
    except KeyboardInterrupt:
        return exits.OK
    except Exception as exc:  # noqa: BLE001 - a bug: the traceback, redacted
        import traceback

        text = "".join(traceback.format_exception(exc))
        sys.stderr.write(f"{PROG}: internal error (a bug):\n{redact(text)}")
        return exits.SOFTWARE
    return int(status)
