"""``atdata-ingest``: the command line of the ingestion service.

::

    atdata-ingest run [--relay URL] [--start live|oldest] [--plc-url URL]
                      [--database-url DSN] [--batch-max N] ...
                      [--supervise [--backoff-initial S] [--backoff-max S] ...]
    atdata-ingest serve [--host 127.0.0.1] [--port 8080]
    atdata-ingest migrate
    atdata-ingest token add NAME [--collection GLOB ...] [--event-type T ...]
                                 [--repo DID ...] [--rate R] [--burst B]
    atdata-ingest token list
    atdata-ingest token revoke NAME|ID
    atdata-ingest trim [--retention-days N] [--dry-run]
    atdata-ingest status

Every setting comes from the environment (``ATDATA_INGEST_*``,
:mod:`atdata_ingest.config`, whose table also fills each command's ``--help``);
an option given on the command line wins over its variable, and a bad value is
reported under the name it came from (``--retention-days: 0 is out of range``, or
``ATDATA_INGEST_RETENTION_DAYS: ...``). An ``ATDATA_INGEST_*`` variable that no
setting reads (a typo) draws a warning on stderr naming the closest known one,
for every command; it is not an error. ``run --supervise`` hands the options to
its child **as environment variables** (the child is ``python -m atdata_ingest
run`` without options), so a DSN's password never appears in a process listing;
prefer the variable (or an ``EnvironmentFile=``) for the DSN anyway.

Every command that reads the database connects once, with a
:data:`CONNECT_TIMEOUT_S` bound, and checks the schema before anything else
(:func:`_db`, shared by all of them; ``migrate`` creates it instead): a database
that was never migrated is a configuration error (78, "the schema is missing (run
`atdata-ingest migrate`)"), never a traceback. ``serve`` makes the same checks,
and that it can listen on its address, **before** it starts uvicorn.

Exit statuses (:mod:`atdata_ingest.exits`; ``--help`` of each command lists its
own):

{EXIT_STATUSES}

Every message and log line has its DSN passwords redacted. ``httpx``/``httpcore``
log at WARNING and above unless ``--log-level DEBUG`` (they would log one INFO line
per DID document fetched).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, TypeVar

from . import cliutil, exits
from .cliutil import redact
from .config import (
    COMMANDS,
    ENV_PREFIX,
    ConfigError,
    Settings,
    setting_labels,
    settings_help,
    unknown_variables,
)

__all__ = [
    "CONNECT_TIMEOUT_S",
    "EXIT_STATUSES",
    "EXIT_USAGE",
    "build_parser",
    "exit_statuses",
    "main",
    "redact",
    "run_overrides",
]

log = logging.getLogger("atdata_ingest.cli")

PROG: Final = "atdata-ingest"
LOG_LEVEL_ENV: Final = f"{ENV_PREFIX}LOG_LEVEL"
LOG_LEVELS: Final = cliutil.LOG_LEVELS
EXIT_USAGE: Final = 2
EXIT_NO_TOKEN: Final = 1
#: Seconds one connection attempt of a command may take (TCP, TLS, startup and
#: authentication) before the database counts as unreachable (exit 74).
CONNECT_TIMEOUT_S: Final = 10.0
#: Loggers quieted to WARNING unless --log-level DEBUG (one INFO line per request).
QUIET_LOGGERS: Final = ("httpx", "httpcore")

_T = TypeVar("_T")

#: ``(status, commands, meaning)``; a status may have several entries (a meaning
#: for every command plus one for some). The module doc and every ``--help``
#: epilog are generated from this table.
EXIT_STATUSES: Final[tuple[tuple[int, tuple[str, ...], str], ...]] = (
    (exits.OK, COMMANDS, "done"),
    (
        exits.OK,
        ("run", "serve"),
        (
            "run and serve: a clean stop (SIGTERM or SIGINT; run stops reading, "
            "flushes its batch and commits the cursor)"
        ),
    ),
    (
        EXIT_NO_TOKEN,
        ("token",),
        "token revoke: no live token has that name or id",
    ),
    (
        EXIT_USAGE,
        COMMANDS,
        (
            "bad usage (argparse's: an unknown command or option, a value of the wrong "
            "type or not among the choices)"
        ),
    ),
    (
        EXIT_USAGE,
        ("token",),
        (
            "token add: the name or scope refused (TOKEN_NAME, TOKEN_EXISTS, "
            "TOKEN_SCOPE, TOKEN_RATE)"
        ),
    ),
    (exits.SOFTWARE, COMMANDS, "a bug (the message carries its traceback)"),
    (
        exits.CANTCREAT,
        ("run",),
        "another ingester holds the advisory lock of the database",
    ),
    (
        exits.IOERR,
        COMMANDS,
        (
            "PostgreSQL unreachable (connection refused, timed out, the server "
            "starting or shutting down)"
        ),
    ),
    (
        exits.IOERR,
        ("run",),
        "run: for longer than ATDATA_INGEST_DB_RETRY_SECONDS",
    ),
    (
        exits.IOERR,
        ("serve",),
        (
            "serve: also uvicorn's failed start after the checks passed (the "
            "database went away in between; see its log)"
        ),
    ),
    (
        exits.TEMPFAIL,
        ("run",),
        (
            "the in-memory buffer overflowed (intentional: the restart resumes from "
            "the committed cursor), or the stored cursor went back below what this "
            "process committed (PostgreSQL lost acknowledged commits: the restart "
            "resumes from the stored cursor, the relay replays the gap)"
        ),
    ),
    (
        exits.CONFIG,
        COMMANDS,
        (
            "bad settings: a malformed option or variable (the message names it), "
            "a wrong password, an unknown role or database"
        ),
    ),
    (
        exits.CONFIG,
        ("serve", "token", "trim", "status"),
        (
            "the schema missing or older than this program's (run `atdata-ingest "
            "migrate`)"
        ),
    ),
    (
        exits.CONFIG,
        ("run",),
        "run: the stored cursor belongs to another relay",
    ),
    (
        exits.CONFIG,
        ("serve",),
        "serve: the address is in use, not of this host, or needs privileges",
    ),
)


def exit_statuses(command: str | None = None) -> list[tuple[int, str]]:
    """The exit statuses of ``command`` (``None``: of any command, each meaning
    prefixed by its commands when not all), ascending, meanings joined by ``; ``."""
    merged: dict[int, list[str]] = {}
    for status, commands, meaning in EXIT_STATUSES:
        if command is None:
            named = meaning.split()[0].rstrip(":") in commands
            if commands != COMMANDS and not named:
                meaning = f"{', '.join(commands)}: {meaning}"
            merged.setdefault(status, []).append(meaning)
        elif command in commands:
            merged.setdefault(status, []).append(meaning)
    return [(status, "; ".join(parts)) for status, parts in sorted(merged.items())]


def _exit_help(command: str, *, extra: str = "") -> str:
    text = cliutil.exit_help(exit_statuses(command))
    return f"{text}\n\n{extra}" if extra else text


# -- redaction and logging (shared with atdata-appview: atdata_ingest.cliutil) --------

_remember_secrets = cliutil.remember_secrets


def _setup_logging(level: str) -> None:
    """One redacting stderr handler on the root logger at ``level``; the
    :data:`QUIET_LOGGERS` at WARNING (or ``level`` when higher) unless ``level`` is
    DEBUG."""
    cliutil.setup_logging(level, QUIET_LOGGERS)


# -- settings ---------------------------------------------------------------------

#: ``run``'s command-line options that are settings: option dest -> Settings field.
RUN_SETTINGS: Final = {
    "relay": "relay_url",
    "start": "start",
    "plc_url": "plc_url",
    "database_url": "database_url",
    "batch_max": "batch_max",
    "flush_ms": "flush_ms",
    "buffer_max": "buffer_max",
    "verify": "verify",
    "validate": "validate",
    "db_retry_seconds": "db_retry_seconds",
}

#: Options of the other commands that are settings: field -> option.
_DSN_OPTION: Final = {"database_url": "--database-url"}
_SERVE_OPTIONS: Final = {**_DSN_OPTION, "api_host": "--host", "api_port": "--port"}
_TRIM_OPTIONS: Final = {**_DSN_OPTION, "retention_days": "--retention-days"}


def _option(dest: str) -> str:
    return "--" + dest.replace("_", "-")


#: ``run``'s settings options: field -> option string (``--relay``, ...).
RUN_OPTIONS: Final = {field: _option(dest) for dest, field in RUN_SETTINGS.items()}


def run_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The settings given as options of ``run`` (field -> value; options not given
    are left out)."""
    return {
        field: getattr(args, dest)
        for dest, field in RUN_SETTINGS.items()
        if getattr(args, dest, None) is not None
    }


@dataclass(frozen=True)
class _Config:
    """The settings of one command and where each value came from (field ->
    option or variable, :func:`atdata_ingest.config.setting_labels`)."""

    settings: Settings
    labels: Mapping[str, str]

    def label(self, field: str) -> str:
        return self.labels.get(field) or f"{ENV_PREFIX}{field.upper()}"


def _settings(
    options: Mapping[str, str] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    **overrides: Any,
) -> _Config:
    env = os.environ if environ is None else environ
    _remember_secrets(overrides.get("database_url"))
    _remember_secrets(env.get(f"{ENV_PREFIX}DATABASE_URL"))
    _remember_secrets(env.get("DATABASE_URL"))
    options = options or _DSN_OPTION
    settings = Settings.from_env(env, options=options, **overrides)
    labels = setting_labels(env, overrides=overrides, options=options)
    return _Config(settings, labels)


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

#: The tables :func:`atdata_ingest.schema.migrate` creates.
SCHEMA_TABLES: Final = (
    "ingest_meta",
    "ingest_cursor",
    "ingest_events",
    "ingest_dead_letters",
    "ingest_tokens",
)
_MIGRATE: Final = "run `atdata-ingest migrate`"
# SQLSTATEs: class 28 invalid authorization (wrong password, unknown role, a
# pg_hba.conf rejection), 3D000 invalid catalog name (no such database).
_AUTH_CLASS: Final = "28"
_NO_DATABASE: Final = "3D000"
_PRIVILEGE: Final = "42501"
# Connection-level failures after connecting: class 08, 57P01..57P03 (admin or
# crash shutdown, cannot connect now).
_UNAVAILABLE: Final = ("08", "57P")


def _missing_schema(cfg: _Config, what: str) -> ConfigError:
    return ConfigError(
        f"{cfg.settings.redacted_database_url}: {what} ({_MIGRATE}; or check that "
        f"{cfg.label('database_url')} names the service's database)"
    )


async def _check_schema(conn: Any, cfg: _Config) -> int:
    """The schema version of the database; raises :class:`ConfigError` when the
    tables are missing, some are missing, or the version is older than
    :data:`atdata_ingest.schema.SCHEMA_VERSION` (a newer one is logged: the
    columns this program reads are still there, later versions only add)."""
    from .schema import SCHEMA_VERSION

    rows = await conn.fetch(
        "SELECT t, to_regclass(t) IS NOT NULL AS present FROM unnest($1::text[]) t",
        list(SCHEMA_TABLES),
    )
    missing = [r["t"] for r in rows if not r["present"]]
    if len(missing) == len(SCHEMA_TABLES):
        raise _missing_schema(cfg, "the schema is missing")
    if missing:
        raise _missing_schema(
            cfg, f"the schema is incomplete (no table {', '.join(missing)})"
        )
    raw = await conn.fetchval(
        "SELECT value FROM ingest_meta WHERE key = 'schema_version'"
    )
    try:
        version = int(raw)
    except (TypeError, ValueError):
        raise _missing_schema(cfg, f"the schema version {raw!r} is unknown") from None
    if version < SCHEMA_VERSION:
        raise _missing_schema(
            cfg,
            f"the schema is version {version}, older than this atdata-ingest's "
            f"{SCHEMA_VERSION}",
        )
    if version > SCHEMA_VERSION:
        log.warning(
            "%s: the schema is version %d, newer than this atdata-ingest's %d "
            "(upgrade atdata-ingest)",
            cfg.settings.redacted_database_url, version, SCHEMA_VERSION,
        )  # fmt: skip
    return version


def _connect_error(exc: BaseException, cfg: _Config) -> exits.IngestExit:
    """The exit for a failed connection attempt: 78 when no retry can help (the
    password, role or database name is wrong, the DSN's options are invalid), 74
    otherwise (the server is unreachable)."""
    import asyncpg

    dsn = cfg.settings.redacted_database_url
    detail = f"{type(exc).__name__}: {exc}"
    state = str(getattr(exc, "sqlstate", None) or "")
    if state.startswith(_AUTH_CLASS):
        return ConfigError(
            f"{cfg.label('database_url')}: {dsn}: authentication failed ({detail})"
        )
    if state == _NO_DATABASE:
        return ConfigError(
            f"{cfg.label('database_url')}: {dsn}: no such database ({detail})"
        )
    if isinstance(exc, asyncpg.ClientConfigurationError):
        return ConfigError(f"{cfg.label('database_url')}: {dsn}: {detail}")
    return exits.DatabaseUnavailable(f"cannot connect to {dsn}: {detail}")


def _query_error(exc: BaseException, cfg: _Config) -> exits.IngestExit | None:
    """The exit for a failure while a command works on its connection, or
    ``None`` for a bug: a missing table or column (the schema changed under us)
    is 78, a missing privilege 78, a lost connection 74."""
    import asyncpg

    dsn = cfg.settings.redacted_database_url
    if isinstance(exc, asyncpg.UndefinedTableError | asyncpg.UndefinedColumnError):
        return _missing_schema(cfg, f"the schema is missing or incomplete ({exc})")
    state = str(getattr(exc, "sqlstate", None) or "")
    if state == _PRIVILEGE:
        return ConfigError(
            f"{cfg.label('database_url')}: {dsn}: permission denied ({exc}; grant "
            "the role access to the ingest_* tables)"
        )
    if state.startswith(_UNAVAILABLE) or isinstance(
        exc, (OSError | TimeoutError, asyncpg.ConnectionDoesNotExistError)
    ):
        return exits.DatabaseUnavailable(
            f"lost the connection to {dsn}: {type(exc).__name__}: {exc}"
        )
    return None


def _db(
    cfg: _Config,
    work: Callable[[Any], Awaitable[_T]],
    *,
    schema: bool = True,
) -> _T:
    """Run ``work(conn)`` on one asyncpg connection to the configured database,
    after checking its schema (``schema=False``: not checked, for ``migrate``).
    The one place where the commands meet the database: its errors become exits
    (:func:`_connect_error`, :func:`_check_schema`, :func:`_query_error`).

    Raises :class:`exits.DatabaseUnavailable` (74) when it cannot connect within
    :data:`CONNECT_TIMEOUT_S` or loses the connection, :class:`ConfigError` (78)
    for authentication, an unknown database, a missing or old schema, a missing
    privilege; anything else propagates (a bug)."""
    import asyncpg

    settings = cfg.settings

    async def go() -> _T:
        try:
            conn = await asyncpg.connect(
                settings.database_url,
                timeout=CONNECT_TIMEOUT_S,
                server_settings={"application_name": f"{settings.application_name} cli"},
            )  # fmt: skip
        except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:  # fmt: skip
            raise _connect_error(exc, cfg) from None
        try:
            if schema:
                await _check_schema(conn, cfg)
            return await work(conn)
        except exits.IngestExit:
            raise
        except (
            TimeoutError,
            OSError,
            asyncpg.PostgresError,
            asyncpg.InterfaceError,
        ) as exc:
            mapped = _query_error(exc, cfg)
            if mapped is None:
                raise
            raise mapped from None
        finally:
            try:
                await conn.close(timeout=5)
            except (
                TimeoutError,
                OSError,
                asyncpg.PostgresError,
                asyncpg.InterfaceError,
            ):
                conn.terminate()

    return asyncio.run(go())


_jsonable = cliutil.jsonable
_print_json = cliutil.print_json


# -- commands -------------------------------------------------------------------------


def _cmd_run(args: argparse.Namespace) -> int:
    overrides = run_overrides(args)
    cfg = _settings(RUN_OPTIONS, **overrides)
    settings = cfg.settings
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

    cfg = _settings(database_url=args.database_url)
    _db(cfg, migrate, schema=False)
    print(f"migrated {cfg.settings.redacted_database_url} to schema {SCHEMA_VERSION}")
    return exits.OK


_LOCK_HOLDER_SQL: Final = """
SELECT a.pid, a.application_name, a.client_addr::text AS client_addr,
       a.backend_start
FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
  AND l.classid = (($1::bigint >> 32) & 4294967295)::oid
  AND l.objid = ($1::bigint & 4294967295)::oid
LIMIT 1
"""


def _first_start(settings: Settings, last_seq: int) -> str:
    """What the next ``run`` sends the relay, in words."""
    if last_seq > 0:
        return f"resume after seq {last_seq} (?cursor={last_seq}; start is ignored)"
    if settings.start == "oldest":
        return "first start: the oldest event the relay still has (?cursor=0)"
    return "first start: the relay's live tail (no cursor sent)"


def _cmd_status(args: argparse.Namespace) -> int:
    from .writer import INGESTER_LOCK_KEY

    cfg = _settings(database_url=args.database_url)
    settings = cfg.settings

    async def work(conn: Any) -> dict[str, Any]:
        row = await conn.fetchrow("SELECT * FROM ingest_cursor")
        if row is None:
            raise ConfigError(
                f"{settings.redacted_database_url}: no ingest_cursor row ({_MIGRATE})"
            )
        cursor = dict(row)
        now = await conn.fetchval("SELECT now()")
        version = await conn.fetchval(
            "SELECT value FROM ingest_meta WHERE key = 'schema_version'"
        )
        holder = await conn.fetchrow(_LOCK_HOLDER_SQL, INGESTER_LOCK_KEY)
        newest = cursor.get("last_event_time")
        lag = (now - newest).total_seconds() if newest is not None else None
        last_seq = int(cursor["last_seq"])
        return {
            "cursor": cursor,
            "schema_version": int(version),
            "start": {
                "setting": settings.start,
                "variable": cfg.label("start"),
                "cursor_used": last_seq > 0,
                "next_run": _first_start(settings, last_seq),
            },
            "ingester": {
                "running": holder is not None,
                "ingester_pid": cursor.get("ingester_pid"),
                "ingester_started_at": cursor.get("ingester_started_at"),
                "lock_backend_pid": holder["pid"] if holder else None,
                "lock_application_name": holder["application_name"] if holder else None,
                "lock_client_addr": holder["client_addr"] if holder else None,
                "lock_backend_start": holder["backend_start"] if holder else None,
            },
            "health": {
                "last_seq": last_seq,
                "lag_seconds": lag,
                "buffer_fill": cursor.get("buffer_fill"),
                "dead_letters": cursor.get("dead_letters"),
                "gaps": cursor.get("gaps"),
                "now": now,
            },
        }

    _print_json(_db(cfg, work))
    return exits.OK


class _StartFailed(exits.IngestExit):
    """uvicorn gave up starting after :func:`_cmd_serve`'s checks passed (74)."""

    status = exits.IOERR


def _check_listen(cfg: _Config) -> None:
    """:func:`atdata_ingest.cliutil.check_listen` on ``api_host``/``api_port``."""
    cliutil.check_listen(
        cfg.settings.api_host,
        cfg.settings.api_port,
        host_label=cfg.label("api_host"),
        port_label=cfg.label("api_port"),
        in_use_hint="another process listens there: stop it or choose another port",
        bracket_ipv6=True,
    )


def _cmd_serve(args: argparse.Namespace) -> int:
    from .api import serve

    cfg = _settings(
        _SERVE_OPTIONS,
        database_url=args.database_url,
        api_host=args.host,
        api_port=args.port,
    )
    settings = cfg.settings

    async def nothing(conn: Any) -> None:
        return None

    # Before uvicorn: the address, then one connection and the schema, so that a
    # mistake is one clear line and its exit status rather than a lifespan
    # traceback and uvicorn's status 3.
    _check_listen(cfg)
    _db(cfg, nothing)
    log.info(
        "serving the consumer API of %s on http://%s:%d",
        settings.redacted_database_url, settings.api_host, settings.api_port,
    )  # fmt: skip
    # Returns on SIGTERM after a graceful shutdown that also ends open streams
    # (a clean stop, exit 0); SIGINT ends as KeyboardInterrupt, which main() turns
    # into 0 as well.
    try:
        serve(
            settings.database_url,
            host=settings.api_host,
            port=settings.api_port,
            log_level=args.log_level.lower(),
        )
    except SystemExit as exc:  # uvicorn's sys.exit(3): startup failed
        if exc.code in (None, 0):
            return exits.OK
        raise _StartFailed(
            f"the API did not start on {settings.api_host}:{settings.api_port} "
            f"although the checks passed (uvicorn's status {exc.code}; the database "
            "or the address changed in between: see the log above)"
        ) from None
    return exits.OK


def _cmd_token(args: argparse.Namespace) -> int:
    from . import tokens

    cfg = _settings(database_url=args.database_url)
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
            plaintext = _db(cfg, add)
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

        _print_json([_token_json(t) for t in _db(cfg, listing)])
        return exits.OK

    async def revoke(conn: Any) -> bool:
        return await tokens.revoke_token(conn, args.name)

    if not _db(cfg, revoke):
        sys.stderr.write(f"{PROG}: no live token named {args.name!r}\n")
        return EXIT_NO_TOKEN
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

    cfg = _settings(
        _TRIM_OPTIONS,
        database_url=args.database_url,
        retention_days=args.retention_days,
    )
    settings = cfg.settings

    async def work(conn: Any) -> Any:
        return await retention.trim(
            conn, retention_days=settings.retention_days, dry_run=args.dry_run
        )

    report = _db(cfg, work)
    _print_json(report.as_dict())
    if report.busy:
        sys.stderr.write(f"{PROG}: another trim is running; nothing done\n")
    elif report.blocked:
        sys.stderr.write(
            f"{PROG}: locked, left for the next trim: {', '.join(report.blocked)}\n"
        )
    return exits.OK


_Usage = cliutil.Usage
_Formatter = cliutil.Formatter


def _epilog(command: str, options: Mapping[str, str] | None = None) -> str:
    settings = settings_help(command, options=options)
    text = (
        f"settings (environment; an option given wins over its variable):\n{settings}"
    )
    return _exit_help(command, extra=text)


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


def _sub(
    sub: Any, name: str, command: str, options: Mapping[str, str] | None, **kw: Any
) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = sub.add_parser(
        name,
        epilog=_epilog(command, options),
        formatter_class=_Formatter,
        **kw,
    )
    return parser


def build_parser() -> argparse.ArgumentParser:
    """The ``atdata-ingest`` argument parser."""
    statuses = "\n".join(
        f"  {status:<4}{meaning}" for status, meaning in _short_statuses()
    )
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="The firehose ingestion service of the atdata federation: "
        "consumes com.atproto.sync.subscribeRepos into a durable PostgreSQL log "
        "with an exact cursor, and serves typed, filtered events. Settings come "
        "from ATDATA_INGEST_* variables (each command's --help lists those it "
        "reads); options override them.",
        epilog=f"exit statuses (each command's --help gives details):\n{statuses}",
        formatter_class=_Formatter,
    )
    parser.add_argument(
        "--log-level",
        default=None,
        choices=list(LOG_LEVELS),
        type=str.upper,
        help=f"log level on stderr (default: ${LOG_LEVEL_ENV}, else INFO); httpx "
        "request lines only at DEBUG",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = _sub(
        sub,
        "run",
        "run",
        RUN_OPTIONS,
        help="ingest from the relay into PostgreSQL (until SIGTERM/SIGINT)",
        description="Consume subscribeRepos from the relay, resuming at the "
        "stored cursor, and store every event in batches; the cursor advances "
        "in the batch's transaction. The schema is created or upgraded at start. "
        "Exit statuses and every setting the ingester reads are listed below.",
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
    run.add_argument(
        "--plc-url",
        metavar="URL",
        help="the PLC directory resolving did:plc keys for signature checks "
        "(default https://plc.directory, $ATDATA_INGEST_PLC_URL)",
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
        "after exit 0 the supervisor exits 0, after 78 or 2 it exits with that "
        "status (no restart), after anything else it restarts with exponential "
        "backoff. SIGTERM/SIGINT are forwarded to the child. Under systemd, do "
        "not use it: the unit restarts the process (scripts/atdata-ingest.service).",
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

    serve = _sub(
        sub,
        "serve",
        "serve",
        _SERVE_OPTIONS,
        help="serve the consumer API (GET /events, /health, streaming)",
        description="Serve the consumer API with uvicorn. Before starting it, "
        "serve checks that it can listen on the address, connects to the "
        f"database once (at most {CONNECT_TIMEOUT_S:g} s) and checks the schema; "
        "a failure is one line and an exit status (below).",
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

    mig = _sub(
        sub,
        "migrate",
        "migrate",
        _DSN_OPTION,
        help="create the tables and today's partitions (idempotent)",
        description="Create every table, index and the daily partitions of "
        "today and the next two days when missing, and upgrade an older schema "
        "(idempotent: safe to run again, and from several processes at once).",
    )
    _dsn_option(mig)
    mig.set_defaults(handler=_cmd_migrate)

    tok = _sub(
        sub,
        "token",
        "token",
        _DSN_OPTION,
        help="consumer tokens: add, list, revoke",
        description="Bearer tokens of consumer apps (stored hashed; read-only; "
        "scoped to filters; rate-limited).",
    )
    tsub = tok.add_subparsers(dest="token_command", required=True, metavar="ACTION")
    add = _sub(
        tsub,
        "add",
        "token",
        _DSN_OPTION,
        help="create a token and print it once",
        description="Create a token named NAME; the plaintext token is printed "
        "on stdout once and never stored. Without scope options it may read "
        "every event.",
    )
    add.add_argument(
        "name",
        metavar="NAME",
        help="the consumer app's name (unique; 1-64 of A-Z a-z 0-9 . _ -)",
    )
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
    lst = _sub(
        tsub,
        "list",
        "token",
        _DSN_OPTION,
        help="list tokens (names, scopes, never hashes)",
        description="Print every token (revoked too) as JSON: id, name, scope, "
        "rate, burst, created_at, revoked_at; never a hash.",
    )
    _dsn_option(lst)
    rev = _sub(
        tsub,
        "revoke",
        "token",
        _DSN_OPTION,
        help="revoke a token by name or id",
        description="Revoke the live token named NAME (or whose 16-hex id is "
        "NAME); exit 1 when there is none.",
    )
    rev.add_argument("name", metavar="NAME")
    _dsn_option(rev)
    tok.set_defaults(handler=_cmd_token)

    trim = _sub(
        sub,
        "trim",
        "trim",
        _TRIM_OPTIONS,
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

    st = _sub(
        sub,
        "status",
        "status",
        _DSN_OPTION,
        help="print the cursor row and health as JSON",
        description="Print, as JSON: cursor (the ingest_cursor row: last_seq, "
        "source, buffer fill, dead-letter count, ...); schema_version; start "
        "(setting: ATDATA_INGEST_START; cursor_used: whether a seq was ever "
        "stored, after which start is ignored; next_run: what the next run asks "
        "the relay for); ingester (running: whether an ingester holds the "
        "database's advisory lock; ingester_pid: the process id of the last "
        "ingester ON ITS HOST, NULL after a clean stop; lock_backend_pid: the "
        "PostgreSQL server process of the session holding the lock, not the "
        "ingester's pid); health (lag_seconds between now and the newest stored "
        "event time, last_seq, ...).",
    )
    _dsn_option(st)
    st.set_defaults(handler=_cmd_status)
    return parser


def _short_statuses() -> list[tuple[int, str]]:
    """One short phrase per status, for the top-level ``--help``."""
    short = {
        exits.OK: "done, or a clean stop",
        EXIT_NO_TOKEN: "token revoke: no such live token",
        EXIT_USAGE: "bad usage (argparse's; token add: a name or scope refused)",
        exits.SOFTWARE: "a bug",
        exits.CANTCREAT: "run: another ingester holds the lock",
        exits.IOERR: "PostgreSQL unreachable",
        exits.TEMPFAIL: "run: buffer overflow or cursor regression (restart "
        "resumes from the stored cursor)",
        exits.CONFIG: "bad settings, authentication, or the schema missing",
    }
    return [(status, short[status]) for status, _ in exit_statuses()]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status (see the module doc)."""
    return cliutil.run_main(
        PROG,
        build_parser(),
        argv,
        unknown_variables=unknown_variables,
        log_level_variable=LOG_LEVEL_ENV,
        quiet_loggers=QUIET_LOGGERS,
        exit_usage=EXIT_USAGE,
        environ=os.environ,
    )


def _statuses_rst() -> str:
    lines = []
    for status, meaning in exit_statuses():
        lines.append(f"- **{status}**: {meaning}")
    return "\n".join(lines)


__doc__ = (__doc__ or "").replace("{EXIT_STATUSES}", _statuses_rst())
