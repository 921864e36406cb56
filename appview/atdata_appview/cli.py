"""``atdata-appview``: the command line of the AppView.

::

    atdata-appview migrate
    atdata-appview index [--batch-size N]
    atdata-appview serve [--host 127.0.0.1] [--port 8080]
    atdata-appview run [--host H] [--port P] [--batch-size N]
    atdata-appview backfill (--pds URL | --relay URL) [--collection NSID]
                            [--concurrency N] [--force] [--plc-url URL]
    atdata-appview status [--format text|json]
    atdata-appview rules [--format text|markdown|json]
    atdata-appview dead-letters [--rule ID] [--did DID] [--limit N]
                                [--format text|json]
    atdata-appview verify-handles [--all] [--plc-url URL] [--format text|json]

Every setting comes from the environment (``ATDATA_APPVIEW_*``,
:mod:`atdata_appview.config`, whose table also fills each command's ``--help``;
the DSN falls back to the ingester's ``ATDATA_INGEST_DATABASE_URL``); an option
given on the command line wins over its variable, and a bad value is reported
under the name it came from. An ``ATDATA_APPVIEW_*`` variable that no setting
reads (a typo) draws a warning naming the closest known one.

Every command that reads the database connects once, within
:data:`CONNECT_TIMEOUT_S`, and checks both schemas (the ingester's and the
AppView's) before anything else; ``migrate`` creates them instead. ``serve`` and
``run`` also check that they can listen on their address before uvicorn starts.
``run`` folds the log and serves in one process; SIGTERM or SIGINT stops both
cleanly (the indexer finishes its batch, the server its requests).

Exit statuses (those of :mod:`atdata_ingest.exits`, sysexits.h):

{EXIT_STATUSES}

Every message and log line has its DSN passwords redacted
(:func:`atdata_ingest.cliutil.redact`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from types import FrameType
from typing import Any, Final, Literal, TypeVar

from atdata_gen.diagnostics import printable
from atdata_ingest import cliutil, exits
from atdata_ingest.cli import QUIET_LOGGERS
from atdata_ingest.cliutil import Formatter as _Formatter
from atdata_ingest.cliutil import remember_secrets as _remember_secrets
from atdata_runtime.net import redact_url

from .config import (
    DSN_VARIABLES,
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
    "main",
    "rules_table",
]

log = logging.getLogger("atdata_appview.cli")

PROG: Final = "atdata-appview"
LOG_LEVEL_ENV: Final = f"{ENV_PREFIX}LOG_LEVEL"
LOG_LEVELS: Final = cliutil.LOG_LEVELS
EXIT_USAGE: Final = 2
#: ``backfill``: some repositories could not be read (they are listed; the
#: others were indexed).
EXIT_PARTIAL: Final = 1
#: Seconds one connection attempt may take before the database counts as
#: unreachable (exit 74).
CONNECT_TIMEOUT_S: Final = 10.0

_T = TypeVar("_T")

_ALL: Final = (
    "migrate",
    "index",
    "serve",
    "run",
    "backfill",
    "status",
    "rules",
    "dead-letters",
    "verify-handles",
)
_DB_COMMANDS: Final = tuple(c for c in _ALL if c != "rules")

#: ``(status, commands, meaning)``; the module doc and each ``--help`` come from it.
EXIT_STATUSES: Final[tuple[tuple[int, tuple[str, ...], str], ...]] = (
    (exits.OK, _ALL, "done"),
    (
        exits.OK,
        ("index", "serve", "run"),
        (
            "a clean stop (SIGTERM or SIGINT: the indexer commits its batch, the "
            "server finishes its requests)"
        ),
    ),
    (
        EXIT_PARTIAL,
        ("backfill",),
        (
            "some repositories could not be read or verified (listed on stderr with "
            "the reason; the others were indexed; run it again to retry them)"
        ),
    ),
    (
        EXIT_USAGE,
        _ALL,
        (
            "bad usage (argparse's: an unknown command or option, a value of the "
            "wrong type or not among the choices)"
        ),
    ),
    (exits.SOFTWARE, _ALL, "a bug (the message carries its traceback)"),
    (
        exits.CANTCREAT,
        ("backfill",),
        "another backfill runs on this database (BF_BUSY)",
    ),
    (
        exits.IOERR,
        _DB_COMMANDS,
        "PostgreSQL unreachable (connection refused, timed out, shutting down)",
    ),
    (
        exits.IOERR,
        ("backfill",),
        (
            "the PDS or relay could not be listed (the repositories already queued "
            "were read)"
        ),
    ),
    (
        exits.IOERR,
        ("serve", "run"),
        (
            "the server did not start although the checks passed (the database or "
            "the address changed in between; see the log)"
        ),
    ),
    (
        exits.CONFIG,
        _ALL,
        (
            "bad settings: a malformed option or variable (the message names it), a "
            "wrong password, an unknown role or database"
        ),
    ),
    (
        exits.CONFIG,
        tuple(c for c in _DB_COMMANDS if c != "migrate"),
        "a schema missing or older than this program's (run `atdata-appview migrate`)",
    ),
    (
        exits.CONFIG,
        ("serve", "run"),
        "the address is in use, not of this host, or needs privileges",
    ),
)


def exit_statuses(command: str | None = None) -> list[tuple[int, str]]:
    """The exit statuses of ``command`` (``None``: of any command, prefixed by
    the commands when not all), ascending, meanings joined by ``; ``."""
    merged: dict[int, list[str]] = {}
    for status, commands, meaning in EXIT_STATUSES:
        if command is None:
            if commands == _DB_COMMANDS:
                meaning = f"every command but rules: {meaning}"
            elif commands != _ALL:
                meaning = f"{', '.join(commands)}: {meaning}"
            merged.setdefault(status, []).append(meaning)
        elif command in commands:
            merged.setdefault(status, []).append(meaning)
    return [(status, "; ".join(parts)) for status, parts in sorted(merged.items())]


def _exit_help(command: str | None) -> str:
    return cliutil.exit_help(exit_statuses(command))


def _epilog(command: str | None, options: Mapping[str, str] | None = None) -> str:
    text = settings_help(command, options=options)
    return (
        f"{_exit_help(command)}\n\nsettings (environment; an option given wins "
        f"over its variable):\n{text}"
    )


# -- settings ---------------------------------------------------------------------


_Usage = cliutil.Usage


def _settings(
    options: Mapping[str, str], overrides: Mapping[str, Any]
) -> tuple[Settings, dict[str, str]]:
    """The command's settings and where each came from (field -> option or
    variable)."""
    env = os.environ
    _remember_secrets(overrides.get("dsn"))
    for var in DSN_VARIABLES:
        _remember_secrets(env.get(var))
    settings = Settings.from_env(env, options=options, **overrides)
    return settings, setting_labels(env, overrides=overrides, options=options)


def _overrides(args: argparse.Namespace, options: Mapping[str, str]) -> dict[str, Any]:
    return {
        field: getattr(args, field)
        for field in options
        if getattr(args, field, None) is not None
    }


# -- the database -------------------------------------------------------------------

_REQUIRED_TABLES: Final = (
    "ingest_meta",
    "ingest_cursor",
    "ingest_events",
    "appview_meta",
    "appview_cursor",
    "appview_schemas",
    "appview_entries",
    "appview_lenses",
    "appview_labels",
    "appview_lens_verifications",
    "appview_accounts",
    "appview_dead_letters",
    "appview_schema_compat",
    "appview_repos",
    "appview_pending",
)
_MIGRATE: Final = "run `atdata-appview migrate`"
_AUTH_CLASS: Final = "28"
_NO_DATABASE: Final = "3D000"
_PRIVILEGE: Final = "42501"
_UNAVAILABLE: Final = ("08", "57P")


def _missing_schema(settings: Settings, label: str, what: str) -> ConfigError:
    return ConfigError(
        f"{settings.redacted_dsn}: {what} ({_MIGRATE}; or check that {label} names "
        "the ingester's database)"
    )


async def check_schema(conn: Any, settings: Settings, label: str) -> dict[str, int]:
    """The schema versions (``{"ingest": n, "appview": m}``) of the database;
    raises :class:`ConfigError` when a table is missing or a version is older
    than this program's (a newer one is logged)."""
    from atdata_ingest.schema import SCHEMA_VERSION as INGEST_VERSION

    from .schema import SCHEMA_VERSION

    rows = await conn.fetch(
        "SELECT t, to_regclass(t) IS NOT NULL AS present FROM unnest($1::text[]) t",
        list(_REQUIRED_TABLES),
    )
    missing = [r["t"] for r in rows if not r["present"]]
    if len(missing) == len(_REQUIRED_TABLES):
        raise _missing_schema(settings, label, "the schema is missing")
    if missing:
        raise _missing_schema(
            settings, label, f"the schema is incomplete (no table {', '.join(missing)})"
        )
    versions: dict[str, int] = {}
    for name, table, expected in (
        ("ingest", "ingest_meta", INGEST_VERSION),
        ("appview", "appview_meta", SCHEMA_VERSION),
    ):
        raw = await conn.fetchval(
            f"SELECT value FROM {table} WHERE key = 'schema_version'"
        )
        try:
            version = int(raw)
        except (TypeError, ValueError):
            raise _missing_schema(
                settings, label, f"the {name} schema version {raw!r} is unknown"
            ) from None
        if version < expected:
            raise _missing_schema(
                settings,
                label,
                f"the {name} schema is version {version}, older than this "
                f"program's {expected}",
            )
        if version > expected:
            log.warning(
                "%s: the %s schema is version %d, newer than this program's %d",
                settings.redacted_dsn, name, version, expected,
            )  # fmt: skip
        versions[name] = version
    return versions


def _connect_error(
    exc: BaseException, settings: Settings, label: str
) -> exits.IngestExit:
    import asyncpg

    dsn = settings.redacted_dsn
    detail = f"{type(exc).__name__}: {exc}"
    state = str(getattr(exc, "sqlstate", None) or "")
    if state.startswith(_AUTH_CLASS):
        return ConfigError(f"{label}: {dsn}: authentication failed ({detail})")
    if state == _NO_DATABASE:
        return ConfigError(f"{label}: {dsn}: no such database ({detail})")
    if isinstance(exc, asyncpg.ClientConfigurationError):
        return ConfigError(f"{label}: {dsn}: {detail}")
    return exits.DatabaseUnavailable(f"cannot connect to {dsn}: {detail}")


def _query_error(
    exc: BaseException, settings: Settings, label: str
) -> exits.IngestExit | None:
    import asyncpg

    dsn = settings.redacted_dsn
    if isinstance(exc, asyncpg.UndefinedTableError | asyncpg.UndefinedColumnError):
        return _missing_schema(
            settings, label, f"the schema is missing or incomplete ({exc})"
        )
    state = str(getattr(exc, "sqlstate", None) or "")
    if state == _PRIVILEGE:
        return ConfigError(
            f"{label}: {dsn}: permission denied ({exc}; grant the role access to "
            "the ingest_* and appview_* tables)"
        )
    if state.startswith(_UNAVAILABLE) or isinstance(
        exc, (OSError | TimeoutError, asyncpg.ConnectionDoesNotExistError)
    ):
        return exits.DatabaseUnavailable(
            f"lost the connection to {dsn}: {type(exc).__name__}: {exc}"
        )
    return None


async def _with_db(
    settings: Settings,
    label: str,
    work: Callable[[Any], Awaitable[_T]],
    *,
    schema: bool = True,
    suffix: str = "cli",
) -> _T:
    """``await work(conn)`` on one connection, after checking the schemas
    (``schema=False``: not, for ``migrate``); database errors become exits
    (74 unreachable, 78 authentication, database, schema, privileges)."""
    import asyncpg

    try:
        conn = await asyncpg.connect(
            settings.dsn,
            timeout=CONNECT_TIMEOUT_S,
            server_settings={"application_name": f"{settings.application_name} {suffix}"},
        )  # fmt: skip
    except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:  # fmt: skip
        raise _connect_error(exc, settings, label) from None
    try:
        if schema:
            await check_schema(conn, settings, label)
        return await work(conn)
    except exits.IngestExit:
        raise
    except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:  # fmt: skip
        mapped = _query_error(exc, settings, label)
        if mapped is None:
            raise
        raise mapped from None
    finally:
        try:
            await conn.close(timeout=5)
        except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
            conn.terminate()


def _db(
    settings: Settings,
    labels: Mapping[str, str],
    work: Callable[[Any], Awaitable[_T]],
    *,
    schema: bool = True,
) -> _T:
    return asyncio.run(_with_db(settings, labels["dsn"], work, schema=schema))


async def _writer_pool(settings: Settings, label: str, suffix: str) -> Any:
    """The indexer's pool (read-write), after the schema check."""
    import asyncpg

    async def nothing(conn: Any) -> None:
        return None

    await _with_db(settings, label, nothing, suffix=suffix)
    try:
        return await asyncpg.create_pool(
            settings.dsn,
            init_size=1,
            min_size=0,
            max_size=max(2, min(settings.backfill_concurrency + 1, 16)),
            timeout=CONNECT_TIMEOUT_S,
            server_settings={
                "application_name": f"{settings.application_name} {suffix}"
            },
        )
    except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:  # fmt: skip
        raise _connect_error(exc, settings, label) from None


_jsonable = cliutil.jsonable
_print_json = cliutil.print_json


def _check_listen(settings: Settings, labels: Mapping[str, str]) -> None:
    """Bind (without listening) every address ``host`` resolves to, at ``port``,
    as uvicorn will, then release them; :class:`ConfigError` naming the option
    or variable when the port is in use, the address not of this host, or the
    port privileged (:func:`atdata_ingest.cliutil.check_listen`)."""
    cliutil.check_listen(
        settings.host,
        settings.port,
        host_label=labels["host"],
        port_label=labels["port"],
        in_use_hint="stop the other process or choose another port",
        bracket_ipv6=False,
    )


# -- signals --------------------------------------------------------------------------


def _quiet_signals() -> dict[int, Any]:
    """Handlers for SIGTERM/SIGINT that do nothing (uvicorn installs its own
    while it serves; a signal arriving before or after lands here)."""

    def ignore(signum: int, frame: FrameType | None) -> None:
        return None

    return {sig: signal.signal(sig, ignore) for sig in (signal.SIGTERM, signal.SIGINT)}


def _restore_signals(previous: Mapping[int, Any]) -> None:
    for sig, handler in previous.items():
        signal.signal(sig, handler)


def _server(config: Any, on_exit: Callable[[], None]) -> Any:
    """A ``uvicorn.Server`` whose SIGTERM/SIGINT also calls ``on_exit`` and is
    not raised again after the shutdown (a clean stop is exit 0)."""
    import uvicorn

    class _Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            if self.should_exit and sig == signal.SIGINT:
                self.force_exit = True
            else:
                self.should_exit = True
            on_exit()

    return _Server(config)


def _make_indexer(pool: Any, settings: Settings) -> Any:
    from .indexer import Indexer

    return Indexer(
        pool,
        batch_size=settings.index_batch_size,
        require_verified=settings.require_verified,
    )


async def _index_until(stop: asyncio.Event, settings: Settings, label: str) -> None:
    from .handles import run_handle_verifier

    pool = await _writer_pool(settings, label, "index")
    # handle verification next to the indexer (queries resolve verified handles
    # only); either ending (stop, or a failure) ends the other
    tasks = [
        asyncio.create_task(_make_indexer(pool, settings).run(stop)),
        asyncio.create_task(run_handle_verifier(pool, settings, stop)),
    ]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        stop.set()
        await asyncio.wait(tasks)
        for task in tasks:
            exc = task.exception()
            if exc is not None:
                raise exc
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await pool.close()


PENDING_BACKFILL_INTERVAL_S: Final = 60.0
"""``run``: seconds between two passes over the repositories queued for a
backfill (:func:`backfill_pending_until`)."""
PENDING_BACKFILL_LIMIT: Final = 100
"""``run``: most queued repositories one pass reads."""
PENDING_BACKFILL_CONCURRENCY: Final = 2
"""``run``: repositories a pass reads at once (at most the configured
``backfill_concurrency``)."""
PENDING_STOP_GRACE_S: Final = 10.0
"""``run``: seconds a pass in progress gets to finish its repositories after a
stop; then it is cancelled (the repositories it held are marked failed, their
buffered rows applied)."""


async def backfill_pending_until(
    stop: asyncio.Event,
    settings: Settings,
    label: str,
    *,
    interval: float = PENDING_BACKFILL_INTERVAL_S,
    limit: int = PENDING_BACKFILL_LIMIT,
) -> None:
    """Until ``stop``: every ``interval`` seconds (the first pass at once), read
    the repositories the index queued for a backfill (``appview_repos``: a
    reactivated account, a ``#sync``, an ingest cursor reset or log gap, a
    failed read to retry, an abandoned backfill), at most ``limit`` a pass, with
    the configured PLC directory (``plc_url``) and each DID document's PDS
    (:meth:`.backfill.Backfiller.run` with ``queued_only``). Never raises but
    for cancellation: a failing pass (the database away, another backfill
    holding the lock) is logged and tried again at the next interval."""
    from .backfill import Backfiller, BackfillError

    kind: Literal["pds", "relay"] = (
        "relay" if settings.backfill_kind == "relay" else "pds"
    )
    pool: Any = None
    backfiller: Any = None
    try:
        while not stop.is_set():
            try:
                if pool is None:
                    pool = await _writer_pool(settings, label, "backfill")
                    backfiller = Backfiller(
                        pool,
                        source=settings.backfill_source,
                        kind=kind,
                        plc_url=settings.plc_url,
                        concurrency=min(
                            PENDING_BACKFILL_CONCURRENCY, settings.backfill_concurrency
                        ),
                        queued_limit=limit,
                    )
                task = asyncio.create_task(
                    backfiller.run(queued_only=True, stop=stop),
                    name="appview-pending-backfill",
                )
                stopped = asyncio.create_task(stop.wait())
                try:
                    await asyncio.wait(
                        {task, stopped}, return_when=asyncio.FIRST_COMPLETED
                    )
                    if not task.done():
                        await asyncio.wait({task}, timeout=PENDING_STOP_GRACE_S)
                    if not task.done():
                        task.cancel()
                        with contextlib.suppress(asyncio.CancelledError):
                            await task
                        return
                finally:
                    stopped.cancel()
                stats = task.result()
                if stats.queued or stats.expired:
                    log.info("queued repositories: %s", stats.summary())
            except BackfillError as exc:
                if exc.rule == "BF_BUSY":
                    log.debug("queued repositories: another backfill runs")
                else:
                    log.warning("queued repositories: %s", exc)
            except Exception as exc:  # noqa: BLE001 - tried again next interval
                log.warning(
                    "queued repositories: pass failed (%s); trying again in %g s",
                    type(exc).__name__,
                    interval,
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)
    finally:
        if pool is not None:
            await pool.close()


# -- commands -------------------------------------------------------------------------

_DSN_OPTION: Final = {"dsn": "--dsn"}
_SERVE_OPTIONS: Final = {**_DSN_OPTION, "host": "--host", "port": "--port"}
_INDEX_OPTIONS: Final = {**_DSN_OPTION, "index_batch_size": "--batch-size"}
_RUN_OPTIONS: Final = {**_SERVE_OPTIONS, **_INDEX_OPTIONS}
_VERIFY_OPTIONS: Final = {**_DSN_OPTION, "plc_url": "--plc-url"}
_BACKFILL_OPTIONS: Final = {
    **_DSN_OPTION,
    "backfill_concurrency": "--concurrency",
    "plc_url": "--plc-url",
}


def _cmd_migrate(args: argparse.Namespace) -> int:
    from atdata_ingest.schema import SCHEMA_VERSION as INGEST_VERSION
    from atdata_ingest.schema import migrate as migrate_ingest

    from .schema import SCHEMA_VERSION
    from .schema import migrate as migrate_appview

    settings, labels = _settings(_DSN_OPTION, _overrides(args, _DSN_OPTION))

    async def work(conn: Any) -> None:
        await migrate_ingest(conn)
        await migrate_appview(conn)

    _db(settings, labels, work, schema=False)
    print(
        f"migrated {settings.redacted_dsn}: ingest schema {INGEST_VERSION}, "
        f"appview schema {SCHEMA_VERSION}"
    )
    return exits.OK


def _cmd_index(args: argparse.Namespace) -> int:
    settings, labels = _settings(_INDEX_OPTIONS, _overrides(args, _INDEX_OPTIONS))

    async def go() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        log.info("indexing %s", settings.redacted_dsn)
        await _index_until(stop, settings, labels["dsn"])

    asyncio.run(go())
    return exits.OK


def _serve_checks(settings: Settings, labels: Mapping[str, str]) -> None:
    async def nothing(conn: Any) -> None:
        return None

    _check_listen(settings, labels)
    _db(settings, labels, nothing)


def _cmd_serve(args: argparse.Namespace) -> int:
    from .app import create_app, server_config

    settings, labels = _settings(_SERVE_OPTIONS, _overrides(args, _SERVE_OPTIONS))
    _serve_checks(settings, labels)
    app = create_app(settings)
    config = server_config(app, settings, log_level=args.log_level.lower())
    log.info(
        "serving %s on http://%s:%d as %s",
        settings.redacted_dsn, settings.host, settings.port, settings.service_did,
    )  # fmt: skip
    previous = _quiet_signals()
    server = _server(config, lambda: None)
    try:
        asyncio.run(_serve(server))
    finally:
        _restore_signals(previous)
    if not server.started:
        raise _StartFailed(settings)
    return exits.OK


class _StartFailed(exits.IngestExit):
    """uvicorn did not start after the checks passed (74: the database or the
    address changed in between)."""

    status = exits.IOERR

    def __init__(self, settings: Settings) -> None:
        super().__init__(
            f"the server did not start on {settings.host}:{settings.port} although "
            "the checks passed (the database or the address changed in between: "
            "see the log above)"
        )


async def _serve(server: Any) -> None:
    """``server.serve()``; uvicorn's ``sys.exit`` on a failed bind becomes a
    return with ``server.started`` false."""
    try:
        await server.serve()
    except SystemExit as exc:
        if exc.code not in (None, 0):
            server.started = False
            return
        raise


def _cmd_run(args: argparse.Namespace) -> int:
    from .app import create_app, server_config

    settings, labels = _settings(_RUN_OPTIONS, _overrides(args, _RUN_OPTIONS))
    _serve_checks(settings, labels)
    app = create_app(settings)
    config = server_config(app, settings, log_level=args.log_level.lower())

    async def go() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()

        def on_exit() -> None:
            loop.call_soon_threadsafe(stop.set)

        server = _server(config, on_exit)
        indexer = asyncio.create_task(_index_until(stop, settings, labels["dsn"]))
        serving = asyncio.create_task(_serve(server))
        # repositories the index queued for a backfill (a reactivation, a
        # #sync, a cursor reset) are read here, so they heal without an operator
        queued = asyncio.create_task(
            backfill_pending_until(stop, settings, labels["dsn"])
        )
        log.info(
            "indexing and serving %s on http://%s:%d as %s",
            settings.redacted_dsn, settings.host, settings.port, settings.service_did,
        )  # fmt: skip
        _done, _ = await asyncio.wait(
            {indexer, serving}, return_when=asyncio.FIRST_COMPLETED
        )
        # whichever ends first (a signal, or a failure) ends the other
        stop.set()
        server.should_exit = True
        await asyncio.wait({indexer, serving, queued})
        for task in (indexer, serving, queued):
            exc = task.exception()
            if exc is not None:
                raise exc
        if not server.started:
            raise _StartFailed(settings)

    previous = _quiet_signals()
    try:
        asyncio.run(go())
    finally:
        _restore_signals(previous)
    return exits.OK


def _cmd_backfill(args: argparse.Namespace) -> int:
    overrides = _overrides(args, _BACKFILL_OPTIONS)
    source = args.pds or args.relay
    if source is not None:
        overrides["backfill_source"] = source
        overrides["backfill_kind"] = "pds" if args.pds else "relay"
    options = {
        **_BACKFILL_OPTIONS,
        "backfill_source": "--pds" if args.pds else "--relay",
        "backfill_kind": "--pds" if args.pds else "--relay",
    }
    settings, labels = _settings(options, overrides)
    if not settings.backfill_source:
        raise _Usage(
            "backfill needs --pds URL or --relay URL (or ATDATA_APPVIEW_BACKFILL_SOURCE)"
        )
    import dataclasses

    from .backfill import Backfiller, BackfillError

    kind: Literal["pds", "relay"] = (
        "relay" if settings.backfill_kind == "relay" else "pds"
    )

    async def go() -> Any:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        pool = await _writer_pool(settings, labels["dsn"], "backfill")
        try:
            backfiller = Backfiller(
                pool,
                source=settings.backfill_source,
                kind=kind,
                collection=args.collection,
                plc_url=settings.plc_url,
                concurrency=settings.backfill_concurrency,
                force=args.force,
                # the buffered live rows follow the live fold's policy (it records
                # require_verified in appview_cursor), not a default of this one's
                require_verified=None,
            )
            return await backfiller.run(stop=stop)
        except BackfillError as exc:
            if exc.rule == "BF_BUSY":
                raise exits.LockHeld(str(exc)) from None
            raise _SourceFailed(
                f"{redact_url(settings.backfill_source)}: {exc}"
            ) from None
        finally:
            await pool.close()

    stats = asyncio.run(go())
    summary = {
        **dataclasses.asdict(stats),
        "repos_per_second": stats.repos_per_second,
        "records_per_second": stats.records_per_second,
    }
    _print_json(summary)
    for did, rule, reason in stats.failures:
        sys.stderr.write(
            f"{PROG}: backfill: {printable(did)} failed: {printable(reason)} [{rule}]\n"
        )
    if stats.failed > len(stats.failures):
        sys.stderr.write(
            f"{PROG}: backfill: {stats.failed - len(stats.failures)} more failed "
            "(see the log, and appview_repos.error)\n"
        )
    return EXIT_PARTIAL if stats.failed else exits.OK


class _SourceFailed(exits.IngestExit):
    """The PDS or relay could not be listed (exit 74)."""

    status = exits.IOERR


_COUNT_TABLES: Final = {
    "schemas": "appview_schemas",
    "entries": "appview_entries",
    "lenses": "appview_lenses",
    "labels": "appview_labels",
    "lens_verifications": "appview_lens_verifications",
    "accounts": "appview_accounts",
    "schema_compat": "appview_schema_compat",
    "pending": "appview_pending",
}


async def status_report(conn: Any, settings: Settings) -> dict[str, Any]:
    """What ``status`` prints: ``schema_version`` (ingest, appview), ``cursor``
    (the ``appview_cursor`` row), ``ingest`` (``last_seq``, ``source``, whether
    an ingester is recorded as running), ``lag`` (``events``: ingested seq minus
    indexed seq; ``seconds``: how long the oldest row not yet folded has
    waited), ``counts`` per table, ``repos`` per backfill state,
    ``dead_letters`` (``total`` and ``by_rule``), ``handles`` (accounts by
    handle verification: ``verified``, ``refuted``, ``pending``, ``none``;
    :func:`.handles.handle_counts`), ``service_did``, ``retention``
    (``oldest_seq`` of the log, ``behind``: the cursor is behind it, rows were
    dropped unfolded). ``cursor`` includes the ingest cursor resets and log
    gaps the indexer saw (``resets``, ``reset_at``, ``reset_reason``, ``gaps``,
    ``gap_at``, ``gap_seqs``)."""
    from .app import _HEALTH_SQL

    versions = await check_schema(conn, settings, "dsn")
    cursor = dict(await conn.fetchrow("SELECT * FROM appview_cursor"))
    cursor.pop("id", None)
    ingest = await conn.fetchrow(
        "SELECT last_seq, source, ingester_pid, updated_at FROM ingest_cursor"
    )
    health = await conn.fetchrow(_HEALTH_SQL)
    pending = health["oldest_pending"]
    lag_seconds = (
        max(0.0, (health["now"] - pending).total_seconds()) if pending else 0.0
    )
    counts = {}
    for name, table in _COUNT_TABLES.items():
        counts[name] = int(await conn.fetchval(f"SELECT count(*) FROM {table}"))
    repos = {
        r["state"]: int(r["n"])
        for r in await conn.fetch(
            "SELECT state, count(*) AS n FROM appview_repos GROUP BY state ORDER BY 1"
        )
    }
    by_rule = {
        r["rule"]: int(r["n"])
        for r in await conn.fetch(
            "SELECT rule, count(*) AS n FROM appview_dead_letters GROUP BY rule "
            "ORDER BY 2 DESC, 1"
        )
    }
    from .handles import handle_counts

    handles = await handle_counts(conn)
    oldest = await conn.fetchval(
        "SELECT seq FROM ingest_events ORDER BY seq, idx LIMIT 1"
    )
    seq = int(cursor.get("seq") or 0)
    return {
        "schema_version": versions,
        "service_did": settings.service_did,
        "cursor": cursor,
        "ingest": {
            "last_seq": ingest["last_seq"] if ingest else None,
            "source": ingest["source"] if ingest else None,
            "ingester_running": bool(ingest and ingest["ingester_pid"] is not None),
            "updated_at": ingest["updated_at"] if ingest else None,
        },
        "lag": {
            "events": max(0, int(health["ingested_seq"]) - int(health["indexed_seq"])),
            "seconds": lag_seconds,
        },
        "counts": counts,
        "repos": repos,
        "dead_letters": {"total": sum(by_rule.values()), "by_rule": by_rule},
        "handles": handles,
        # the log's retention dropped rows not folded yet (the next batch
        # records it in cursor.gaps and queues the known repositories)
        "retention": {
            "oldest_seq": None if oldest is None else int(oldest),
            "behind": oldest is not None and seq > 0 and int(oldest) > seq + 1,
        },
    }


def _status_text(report: Mapping[str, Any]) -> str:
    cursor, lag = report["cursor"], report["lag"]
    ingest = report["ingest"]
    lines = [
        f"service     {report['service_did']}",
        (
            f"schemas     ingest {report['schema_version']['ingest']}, appview "
            f"{report['schema_version']['appview']}"
        ),
        (
            f"indexed     seq {cursor.get('seq')} (ingested {ingest['last_seq']}; "
            f"ingester {'running' if ingest['ingester_running'] else 'stopped'})"
        ),
        f"lag         {lag['events']} seqs, {lag['seconds']:.1f} s",
        "counts      " + ", ".join(f"{k} {v}" for k, v in report["counts"].items()),
        "repos       "
        + (", ".join(f"{k} {v}" for k, v in report["repos"].items()) or "none"),
        f"dead letters {report['dead_letters']['total']}",
        (
            f"handles     {report['handles']['verified']} verified, "
            f"{report['handles']['refuted']} refuted, "
            f"{report['handles']['pending']} pending"
        ),
    ]
    if cursor.get("resets"):
        lines.append(
            f"RESETS      {cursor['resets']} ingest cursor reset(s), last "
            f"{cursor.get('reset_at')}: {printable(str(cursor.get('reset_reason')))}"
        )
    if cursor.get("gaps"):
        lines.append(
            f"GAPS        {cursor['gaps']} log gap(s), last {cursor.get('gap_at')} "
            f"(seqs {cursor.get('gap_seqs')}): repositories queued for a backfill"
        )
    if report["retention"]["behind"]:
        lines.append(
            f"BEHIND      the log's oldest row is seq "
            f"{report['retention']['oldest_seq']}: rows after the cursor were "
            "dropped before they were indexed"
        )
    for rule, n in report["dead_letters"]["by_rule"].items():
        lines.append(f"  {printable(rule):12} {n}")
    return "\n".join(lines)


def _cmd_status(args: argparse.Namespace) -> int:
    settings, labels = _settings(_DSN_OPTION, _overrides(args, _DSN_OPTION))

    async def work(conn: Any) -> dict[str, Any]:
        return await status_report(conn, settings)

    report = _db(settings, labels, work)
    if args.format == "json":
        _print_json(report)
    else:
        print(_status_text(report))
    return exits.OK


def _cmd_verify_handles(args: argparse.Namespace) -> int:
    import dataclasses

    from .handles import make_resolver, recheck_handles

    settings, labels = _settings(_VERIFY_OPTIONS, _overrides(args, _VERIFY_OPTIONS))

    async def go() -> Any:
        pool = await _writer_pool(settings, labels["dsn"], "verify-handles")
        try:
            return await recheck_handles(
                pool,
                make_resolver(settings.plc_url, settings.handle_service),
                everyone=args.all,
            )
        finally:
            await pool.close()

    stats = asyncio.run(go())
    if args.format == "json":
        _print_json(dataclasses.asdict(stats))
    else:
        print(
            f"handles: {stats.checked} checked, {stats.verified} verified, "
            f"{stats.refuted} refuted, {stats.inconclusive} inconclusive"
        )
        for did, why in stats.reasons.items():
            print(f"  {printable(did)}: {printable(why)[:300]}")
    return exits.OK


def _cell(text: str) -> str:
    """``text`` fit for one Markdown table cell (pipes escaped, one line)."""
    return " ".join(text.split()).replace("|", "\\|")


def rule_catalogue() -> list[tuple[str, str, str]]:
    """Every rule ID the AppView reports, ``(id, stage, summary)`` sorted by stage
    then ID: record validation (:data:`atdata_appview.records.RULES`), the fold
    (:data:`atdata_appview.indexer.INDEXER_RULES`), schema history
    (:data:`atdata_appview.history.HISTORY_RULES`) and backfill
    (:data:`atdata_appview.backfill.RULES`)."""
    from .backfill import RULES as BACKFILL_RULES
    from .history import HISTORY_RULES
    from .indexer import INDEXER_RULES
    from .records import RULES

    stages = (
        ("record", RULES),
        ("fold", INDEXER_RULES),
        ("history", HISTORY_RULES),
        ("backfill", BACKFILL_RULES),
    )
    return [
        (str(k), stage, str(v))
        for stage, table in stages
        for k, v in sorted(table.items())
    ]


def rules_table(fmt: str) -> str:
    """The AppView's rules (:func:`rule_catalogue`) as ``text``, ``markdown`` (the
    README's table, as ``atdata-gen rules --format markdown``) or ``json``."""
    rows = rule_catalogue()
    if fmt == "json":
        return json.dumps(
            [{"id": i, "stage": st, "summary": s} for i, st, s in rows], indent=2
        )
    if fmt == "markdown":
        lines = ["| rule | stage | checks |", "|---|---|---|"]
        lines += [f"| `{i}` | {st} | {_cell(s)} |" for i, st, s in rows]
        return "\n".join(lines)
    width = max((len(i) for i, _, _ in rows), default=0)
    return "\n".join(f"{i:<{width}}  {st:<8}  {s}" for i, st, s in rows)


def _cmd_rules(args: argparse.Namespace) -> int:
    print(rules_table(args.format))
    return exits.OK


_DEAD_SQL: Final = """
SELECT id, seq, idx, did, collection, rkey, cid, rule, pointer, message, created_at
  FROM appview_dead_letters
 WHERE ($1::text IS NULL OR rule = $1) AND ($2::text IS NULL OR did = $2)
 ORDER BY id DESC
 LIMIT $3
"""


def _cmd_dead_letters(args: argparse.Namespace) -> int:
    settings, labels = _settings(_DSN_OPTION, _overrides(args, _DSN_OPTION))

    async def work(conn: Any) -> list[dict[str, Any]]:
        rows = await conn.fetch(_DEAD_SQL, args.rule, args.did, args.limit)
        return [
            {**dict(r), "uri": f"at://{r['did']}/{r['collection']}/{r['rkey']}"}
            for r in rows
        ]

    rows = _db(settings, labels, work)
    if args.format == "json":
        _print_json(rows)
        return exits.OK
    for r in rows:
        where = f"{r['uri']}{'#' + r['pointer'] if r['pointer'] else ''}"
        print(
            printable(
                f"{r['created_at']:%Y-%m-%d %H:%M:%S} {r['rule']} {where}: "
                f"{r['message']}"
            )
        )
    if not rows:
        sys.stderr.write("no dead letters\n")
    return exits.OK


# -- the parser -----------------------------------------------------------------------


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be >= 1")
    return value


def _dsn_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--dsn",
        metavar="DSN",
        help="PostgreSQL DSN (default: $ATDATA_APPVIEW_DSN, else "
        "$ATDATA_INGEST_DATABASE_URL, else $DATABASE_URL). Prefer a variable: "
        "options are visible in process listings.",
    )


def _serve_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--host", help="address to listen on (default 127.0.0.1, $ATDATA_APPVIEW_HOST)"
    )
    p.add_argument(
        "--port", type=int, help="TCP port (default 8080, $ATDATA_APPVIEW_PORT)"
    )


def _batch_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--batch-size",
        dest="index_batch_size",
        type=int,
        metavar="N",
        help="log rows folded per transaction (default 500, "
        "$ATDATA_APPVIEW_INDEX_BATCH_SIZE)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The ``atdata-appview`` argument parser."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="The AppView of the atdata federation: folds "
        "science.alt.dataset.* records from the ingestion log into a validated "
        "PostgreSQL index and serves atdata-compatible XRPC queries and pages. "
        "Settings come from ATDATA_APPVIEW_* variables (each command's --help "
        "lists those it reads; all are listed below); options override them.",
        epilog=_epilog(None),
        formatter_class=_Formatter,
    )
    parser.add_argument(
        "--log-level",
        default=None,
        choices=list(LOG_LEVELS),
        type=str.upper,
        help=f"log level on stderr (default: ${LOG_LEVEL_ENV}, else INFO)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(
        name: str, options: Mapping[str, str] | None, **kw: Any
    ) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = sub.add_parser(
            name, epilog=_epilog(name, options), formatter_class=_Formatter, **kw
        )
        return p

    mig = add(
        "migrate",
        _DSN_OPTION,
        help="create the ingester's and the AppView's tables (idempotent)",
        description="Create or upgrade both schemas in the one database: the "
        "ingestion log's (atdata-ingest migrate) and the AppView's index. Safe to "
        "run again, and from several processes at once.",
    )
    _dsn_option(mig)
    mig.set_defaults(handler=_cmd_migrate)

    idx = add(
        "index",
        _INDEX_OPTIONS,
        help="fold the ingestion log into the index (until SIGTERM/SIGINT)",
        description="Fold ingest_events into the appview_* tables from the "
        "stored cursor on, in batches (each batch and the cursor in one "
        "transaction), woken by the ingester's NOTIFY.",
    )
    _batch_option(idx)
    _dsn_option(idx)
    idx.set_defaults(handler=_cmd_index)

    srv = add(
        "serve",
        _SERVE_OPTIONS,
        help="serve the XRPC queries, pages, did.json and /health",
        description="Serve the AppView with uvicorn (one worker). The address, "
        "the database and both schemas are checked before it starts.",
    )
    _serve_options(srv)
    _dsn_option(srv)
    srv.set_defaults(handler=_cmd_serve)

    run = add(
        "run",
        _RUN_OPTIONS,
        help="index and serve in one process (until SIGTERM/SIGINT)",
        description="index and serve together; a signal stops both cleanly, and "
        "either one failing stops the other.",
    )
    _serve_options(run)
    _batch_option(run)
    _dsn_option(run)
    run.set_defaults(handler=_cmd_run)

    bf = add(
        "backfill",
        _BACKFILL_OPTIONS,
        help="read whole repositories from a PDS or relay into the index",
        description="List the repositories of a PDS (com.atproto.sync.listRepos) "
        "or those a relay holds records of (com.atproto.sync."
        "listReposByCollection), read each with com.atproto.sync.getRepo (a CAR "
        "verified against its DID document's key), and index their "
        "science.alt.dataset.* records; live rows of a repository are held while "
        "it is read and applied after it. Repositories already synced are "
        "skipped unless --force.",
    )
    src = bf.add_mutually_exclusive_group()
    src.add_argument("--pds", metavar="URL", help="a PDS: https://host")
    src.add_argument("--relay", metavar="URL", help="a relay: https://host")
    bf.add_argument(
        "--collection",
        metavar="NSID",
        help="with --relay: the one collection to list repositories by "
        "(listReposByCollection; default: each science.alt.dataset.* record "
        "collection, deduplicated)",
    )
    bf.add_argument(
        "--concurrency",
        dest="backfill_concurrency",
        type=_positive_int,
        metavar="N",
        help="repositories read at once (default 8, "
        "$ATDATA_APPVIEW_BACKFILL_CONCURRENCY)",
    )
    bf.add_argument(
        "--plc-url",
        dest="plc_url",
        metavar="URL",
        help="PLC directory (default https://plc.directory, $ATDATA_APPVIEW_PLC_URL)",
    )
    bf.add_argument(
        "--force", action="store_true", help="read repositories already synced again"
    )
    _dsn_option(bf)
    bf.set_defaults(handler=_cmd_backfill)

    st = add(
        "status",
        _DSN_OPTION,
        help="the index's cursor, lag, counts and dead letters",
        description="Print the index cursor (appview_cursor), the ingester's "
        "last seq, the lag (seqs, and seconds the oldest unfolded row waited), "
        "row counts per table, backfill states and dead letters by rule.",
    )
    st.add_argument("--format", choices=["text", "json"], default="text")
    _dsn_option(st)
    st.set_defaults(handler=_cmd_status)

    vh = add(
        "verify-handles",
        _VERIFY_OPTIONS,
        help="check the accounts' handles now (after fixing PLC or handle "
        "service settings)",
        description="Check now, ignoring the re-check intervals, every account "
        "whose handle is not verified (--all: every account with a handle), "
        "against the PLC directory ($ATDATA_APPVIEW_PLC_URL) and the handle "
        "service ($ATDATA_APPVIEW_HANDLE_SERVICE), both ways; print the counts "
        "and why each account was not verified.",
    )
    vh.add_argument("--all", action="store_true", help="re-check verified handles too")
    vh.add_argument(
        "--plc-url",
        dest="plc_url",
        metavar="URL",
        help="PLC directory (default https://plc.directory, $ATDATA_APPVIEW_PLC_URL)",
    )
    vh.add_argument("--format", choices=["text", "json"], default="text")
    _dsn_option(vh)
    vh.set_defaults(handler=_cmd_verify_handles)

    rl = add(
        "rules",
        None,
        help="the validation rules (AV...) records are refused by",
        description="List the rule IDs a record can be dead-lettered under.",
    )
    rl.add_argument("--format", choices=["text", "markdown", "json"], default="text")
    rl.set_defaults(handler=_cmd_rules)

    dl = add(
        "dead-letters",
        _DSN_OPTION,
        help="records refused by validation, newest first",
        description="List recent dead letters: rule, AT-URI and JSON pointer, "
        "and why (text is printed with control characters escaped).",
    )
    dl.add_argument("--rule", metavar="ID", help="only this rule")
    dl.add_argument("--did", metavar="DID", help="only this repository")
    dl.add_argument(
        "--limit", type=_positive_int, default=50, metavar="N", help="at most N"
    )
    dl.add_argument("--format", choices=["text", "json"], default="text")
    _dsn_option(dl)
    dl.set_defaults(handler=_cmd_dead_letters)
    return parser


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
        clean=printable,
    )


def _statuses_rst() -> str:
    return "\n".join(
        f"- **{status}**: {meaning}" for status, meaning in exit_statuses()
    )


__doc__ = (__doc__ or "").replace("{EXIT_STATUSES}", _statuses_rst())
