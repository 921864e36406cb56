"""Settings of the ingestion service, from ``ATDATA_INGEST_*`` environment variables.

Every setting is a field of :class:`Settings`; its variable is
``ATDATA_INGEST_<FIELD>`` and its meaning, the commands that read it, its default
and its allowed values all come from that field (its ``metadata``, its default,
:data:`_BOUNDS` and the choice tuples). The table below, the ``--help`` epilog of
``atdata-ingest run`` and the other commands' epilogs are generated from there
(:func:`settings_table`, :func:`settings_help`), so they cannot drift apart.

{SETTINGS_TABLE}

Read outside :class:`Settings` (:data:`EXTRA_VARIABLES`):

{EXTRA_VARIABLES}

Every malformed value raises :class:`ConfigError` (exit status 78, which the
supervisor does not restart) naming where the value came from: the command-line
option when an option gave it (``--retention-days: 0 is out of range``), else the
variable (``ATDATA_INGEST_RETENTION_DAYS: ...``, or ``DATABASE_URL`` for the plain
DSN variable). DSNs in messages go through :func:`atdata_runtime.net.redact_url`
(no password ever printed).

A variable with the ``ATDATA_INGEST_`` prefix that no setting reads (a typo such as
``ATDATA_INGEST_BACH_MAX``) is not an error, so that an older binary accepts a newer
deployment's settings: :func:`unknown_variables` finds them, with the closest known
name, and the command line warns about each one.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import urlsplit, urlunsplit

from atdata_runtime.net import redact_url

from . import settings_base
from .exits import ConfigError
from .settings_base import SettingInfo

__all__ = [
    "COMMANDS",
    "ENV_PREFIX",
    "EXTRA_VARIABLES",
    "ConfigError",
    "SettingInfo",
    "Settings",
    "known_variables",
    "normalize_relay_url",
    "setting_infos",
    "setting_labels",
    "settings_help",
    "settings_table",
    "unknown_variables",
]

ENV_PREFIX: Final = "ATDATA_INGEST_"
SUBSCRIBE_PATH: Final = "/xrpc/com.atproto.sync.subscribeRepos"

#: The commands of ``atdata-ingest`` (a setting's ``commands`` are among them).
COMMANDS: Final = ("run", "serve", "migrate", "token", "trim", "status")

#: Variables read outside :class:`Settings`: name without the prefix -> meaning.
#: They are known names for :func:`unknown_variables`.
EXTRA_VARIABLES: Final[dict[str, str]] = {
    "LOG_LEVEL": "log level of every command (DEBUG, INFO, WARNING, ERROR; "
    "default INFO; the option --log-level wins)",
    "TEST_KILL_AT": "tests only: the ingester SIGKILLs itself at "
    "after-copy:<n> or after-commit:<n> (atdata_ingest.writer)",
}

_SCHEMES: Final = {"ws": "ws", "wss": "wss", "http": "ws", "https": "wss"}
_VERIFY: Final = ("dataset", "all", "none")
_START: Final = ("live", "oldest")
_VALIDATE: Final = ("all", "dataset", "none")

#: field -> the values allowed (string settings with a fixed set of values).
_CHOICES: Final[dict[str, tuple[str, ...]]] = {
    "start": _START,
    "verify": _VERIFY,
    "validate": _VALIDATE,
}

#: field -> (inclusive bounds) of the numeric settings.
_BOUNDS: Final[dict[str, tuple[float, float]]] = {
    "batch_max": (1, 10_000),
    "flush_ms": (1, 10_000),
    "buffer_max": (1, 10_000_000),
    "buffer_max_bytes": (1 << 16, 1 << 36),
    "high_water": (0.01, 1.0),
    "pause_ms": (0, 600_000),
    "db_retry_seconds": (0, 86_400),
    "reconnect_min_seconds": (0.001, 3600),
    "reconnect_max_seconds": (0.001, 3600),
    "max_frame_bytes": (1 << 10, 1 << 28),
    "log_interval_seconds": (0.1, 86_400),
    "retention_days": (1, 3650),
    "api_port": (1, 65_535),
}

#: Where the value of each field came from while :meth:`Settings.from_env` builds
#: one (field -> an option such as ``--batch-max``, or ``DATABASE_URL``); fields
#: not in it are named by their ``ATDATA_INGEST_*`` variable.
_labels: ContextVar[Mapping[str, str]] = ContextVar("atdata_ingest_setting_labels")


def _env_var(name: str) -> str:
    return settings_base.env_var(ENV_PREFIX, name)


def _var(name: str) -> str:
    """How messages name setting ``name``: the option or variable its value came
    from (see :data:`_labels`), by default ``ATDATA_INGEST_<NAME>``."""
    return _labels.get({}).get(name) or _env_var(name)


def _setting(
    default: Any,
    doc: str,
    *,
    commands: Sequence[str] = ("run",),
    shown: str | None = None,
) -> Any:
    """A :class:`Settings` field with its documentation: ``doc`` (what it means,
    units; bounds and choices are appended from :data:`_BOUNDS`/:data:`_CHOICES`),
    the ``commands`` that read it, and ``shown``, the default as the docs print it
    (else the default's own text)."""
    return field(
        default=default,
        metadata={"doc": doc, "commands": tuple(commands), "shown": shown},
    )


def normalize_relay_url(url: str, *, var: str = _env_var("relay_url")) -> str:
    """The relay's base WebSocket URL: ``wss://host[:port][/prefix]`` without a
    trailing slash, the ``subscribeRepos`` path, a query or a fragment
    (``http``/``https`` become ``ws``/``wss``). This canonical form is what the
    cursor's ``source`` column stores. Raises :class:`ConfigError` (naming
    ``var``) for another scheme, no host, credentials in the URL, or a
    query/fragment."""
    text = url.strip()
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError as exc:
        raise ConfigError(f"{var}: {redact_url(text)!r} is not a URL ({exc})") from None
    scheme = _SCHEMES.get(parts.scheme.lower())
    if scheme is None:
        raise ConfigError(
            f"{var}: {redact_url(text)!r} must be a wss://, ws://, https:// or "
            "http:// URL of a relay or PDS"
        )
    if not parts.hostname:
        raise ConfigError(f"{var}: {redact_url(text)!r} has no host")
    if "@" in parts.netloc:
        raise ConfigError(
            f"{var}: {redact_url(text)!r} carries credentials in the URL "
            "(subscribeRepos is public; remove the user:password@ part)"
        )
    if parts.query or parts.fragment:
        raise ConfigError(
            f"{var}: {redact_url(text)!r} has a query or fragment (the ingester "
            "adds ?cursor= itself)"
        )
    path = parts.path.rstrip("/")
    path = path.removesuffix(SUBSCRIBE_PATH)
    return urlunsplit((scheme, parts.netloc.lower(), path, "", ""))


def _check_dsn(dsn: str, var: str) -> str:
    text = dsn.strip()
    if not text:
        raise ConfigError(f"{var}: missing (a postgresql:// DSN)")
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018
    except ValueError as exc:
        raise ConfigError(f"{var}: {redact_url(text)!r} is not a DSN ({exc})") from None
    if parts.scheme not in ("postgresql", "postgres"):
        raise ConfigError(
            f"{var}: {redact_url(text)!r} must be a postgresql:// or postgres:// URL"
        )
    return text


_ALL: Final = COMMANDS


@dataclass(frozen=True, slots=True)
class Settings:
    """The ingester's settings (see the module doc for each one). Constructing it
    validates every field; :meth:`from_env` builds it from the environment.
    ``relay_url`` may be empty for commands that do not read a relay
    (``serve``, ``trim``); :meth:`require_relay` checks it for ``run``."""

    database_url: str = field(
        metadata={
            "doc": "PostgreSQL DSN, postgresql://user[:password]@host[:port]/db "
            "(also read from plain DATABASE_URL; prefer a variable or an "
            "EnvironmentFile= to an option: options show in process listings)",
            "commands": _ALL,
            "shown": "$DATABASE_URL",
        }
    )
    relay_url: str = _setting(
        "",
        "relay or PDS: wss://host, ws://, https:// or http:// (mapped to wss/ws); "
        "the /xrpc/com.atproto.sync.subscribeRepos path may be given or left out",
        shown="(required)",
    )
    start: str = _setting(
        "live",
        "where a FIRST run starts (the stored cursor is 0: never used): live "
        "connects without a cursor (the relay's live tail), oldest with ?cursor=0 "
        "(the oldest event the relay still has; a PDS replays its whole stream); "
        "ignored once a seq was stored",
        commands=("run", "status"),
    )
    batch_max: int = _setting(500, "events per COPY batch")
    flush_ms: int = _setting(
        50, "milliseconds after a batch's oldest event was read before it is flushed"
    )
    buffer_max: int = _setting(
        20_000, "events held in memory (read, not yet committed); full: exit 75"
    )
    buffer_max_bytes: int = _setting(
        256 << 20,
        "the same bound in bytes of record data; full: exit 75",
        shown="268435456 (256 MiB)",
    )
    high_water: float = _setting(
        0.5, "buffer fill fraction above which the reader stops reading the socket"
    )
    pause_ms: int = _setting(
        250,
        "milliseconds the reader waits above the high watermark before it reads on",
    )
    verify: str = _setting(
        "dataset",
        "which commits' signatures are checked against the DID document's key "
        "(dataset: the commits touching science.alt.dataset.*)",
    )
    validate: str = _setting(
        "all",
        "which records are validated with the generated models (the valid "
        "column; all: every record with a known model)",
    )
    plc_url: str = _setting(
        "https://plc.directory",
        "the PLC directory that resolves did:plc signing keys for VERIFY",
    )
    synchronous_commit: bool = _setting(
        True,
        "PostgreSQL synchronous_commit of the writer's session (true/false; false "
        "is faster, and a SERVER crash may lose the last few hundred ms of "
        "commits, which the relay then replays)",
    )
    db_retry_seconds: float = _setting(
        60.0, "seconds a lost database is retried before exit 74"
    )
    reconnect_min_seconds: float = _setting(0.5, "first relay reconnect delay, seconds")
    reconnect_max_seconds: float = _setting(
        30.0, "relay reconnect delay cap, seconds (exponential, full jitter)"
    )
    # atdata_runtime.firehose.frames.MAX_FRAME_BYTES
    max_frame_bytes: int = _setting(
        3 << 20,
        "largest WebSocket message accepted, bytes (the frame decoder's default: a "
        "commit's CAR is at most 2,000,000 bytes by its Lexicon)",
        shown="3145728 (3 MiB)",
    )
    log_interval_seconds: float = _setting(
        10.0, "period of the INFO summary line, seconds"
    )
    retention_days: int = _setting(7, "days of events kept", commands=("trim",))
    api_host: str = _setting(
        "127.0.0.1", "consumer API address to listen on", commands=("serve",)
    )
    api_port: int = _setting(8080, "consumer API TCP port", commands=("serve",))
    application_name: str = _setting(
        "atdata-ingest",
        "PostgreSQL application_name of the service's sessions (pg_stat_activity; "
        "1..63 printable ASCII characters)",
        commands=_ALL,
    )

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "database_url", _check_dsn(self.database_url, _var("database_url"))
        )
        if self.relay_url:
            object.__setattr__(
                self,
                "relay_url",
                normalize_relay_url(self.relay_url, var=_var("relay_url")),
            )
        for name, (lo, hi) in _BOUNDS.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ConfigError(f"{_var(name)}: {value!r} is not a number")
            if _FIELD_TYPES[name] is int and not isinstance(value, int):
                raise ConfigError(f"{_var(name)}: {value!r} is not an integer")
            if not lo <= value <= hi:
                raise ConfigError(
                    f"{_var(name)}: {value!r} is out of range "
                    f"(allowed {_num(lo)}..{_num(hi)})"
                )
        if self.buffer_max < self.batch_max:
            raise ConfigError(
                f"{_var('buffer_max')}: {self.buffer_max} is smaller than "
                f"{_var('batch_max')} ({self.batch_max}); a batch must fit the buffer"
            )
        if self.reconnect_max_seconds < self.reconnect_min_seconds:
            raise ConfigError(
                f"{_var('reconnect_max_seconds')}: {self.reconnect_max_seconds} is "
                f"smaller than {_var('reconnect_min_seconds')} "
                f"({self.reconnect_min_seconds})"
            )
        for name, allowed in _CHOICES.items():
            value = getattr(self, name)
            if value not in allowed:
                raise ConfigError(
                    f"{_var(name)}: {value!r} is not one of {', '.join(allowed)}"
                )
        plc = urlsplit(self.plc_url)
        if plc.scheme not in ("https", "http") or not plc.hostname or plc.query:
            raise ConfigError(
                f"{_var('plc_url')}: {redact_url(self.plc_url)!r} is not an https:// "
                "URL of a PLC directory"
            )
        if not isinstance(self.synchronous_commit, bool):
            raise ConfigError(
                f"{_var('synchronous_commit')}: {self.synchronous_commit!r} is not "
                "a boolean"
            )
        if not self.api_host.strip():
            raise ConfigError(f"{_var('api_host')}: empty")
        name = self.application_name
        if not name or len(name) > 63 or not name.isascii() or not name.isprintable():
            raise ConfigError(
                f"{_var('application_name')}: {name!r} must be 1..63 printable "
                "ASCII characters"
            )

    # -- construction ---------------------------------------------------------------
    @classmethod
    def from_env(
        cls,
        environ: Mapping[str, str] | None = None,
        *,
        options: Mapping[str, str] | None = None,
        **overrides: Any,
    ) -> Settings:
        """Settings from ``environ`` (default ``os.environ``): ``ATDATA_INGEST_<FIELD>``
        for each field, the DSN also from plain ``DATABASE_URL``. ``overrides``
        (field names, typed values or strings, e.g. from command-line options;
        ``None`` = not given) win over the environment. ``options`` maps a field
        to the command-line option that gave its override (``{"retention_days":
        "--retention-days"}``): a bad value is then reported under the option's
        name instead of the variable's (:func:`setting_labels`).

        Raises :class:`ConfigError` naming the option or variable for a malformed
        value, and for an unknown field in ``overrides``."""
        env = os.environ if environ is None else environ
        token = _labels.set(setting_labels(env, overrides=overrides, options=options))
        try:
            values: dict[str, Any] = {}
            for name, kind in _FIELD_TYPES.items():
                raw = env.get(_env_var(name))
                if raw is None and name == "database_url":
                    raw = env.get("DATABASE_URL")
                if raw is not None:
                    values[name] = _parse(name, kind, raw)
            settings_base.apply_overrides(values, overrides, _FIELD_TYPES, _parse)
            if "database_url" not in values:
                raise ConfigError(
                    f"{_env_var('database_url')}: missing (set it or DATABASE_URL "
                    "to a postgresql:// DSN)"
                )
            return cls(**values)
        finally:
            _labels.reset(token)

    def require_relay(self) -> str:
        """``relay_url``; raises :class:`ConfigError` when it is not set."""
        if not self.relay_url:
            raise ConfigError(
                f"{_env_var('relay_url')}: missing (the relay or PDS to consume, e.g. "
                "wss://bsky.network)"
            )
        return self.relay_url

    @property
    def redacted_database_url(self) -> str:
        """``database_url`` without its password (for messages and logs)."""
        return redact_url(self.database_url)

    def subscribe_url(self, cursor: int) -> str:
        """``<relay>/xrpc/com.atproto.sync.subscribeRepos[?cursor=<cursor>]``.
        ``cursor`` 0 means nothing was ever read (a first start): with ``start``
        ``live`` no cursor is sent (the relay's live tail), with ``oldest``
        ``?cursor=0`` (Sync spec, "Firehose": a cursor older than the relay's
        window starts at its oldest event, after an ``#info`` ``OutdatedCursor``).
        Raises :class:`ConfigError` when ``relay_url`` is not set."""
        base = self.require_relay() + SUBSCRIBE_PATH
        if cursor > 0 or self.start == "oldest":
            return f"{base}?cursor={max(cursor, 0)}"
        return base

    def __repr__(self) -> str:
        shown = ", ".join(
            f"{f.name}={getattr(self, f.name)!r}"
            for f in dataclasses.fields(self)
            if f.name != "database_url"
        )
        return f"Settings(database_url={self.redacted_database_url!r}, {shown})"


#: field -> its type (from the annotations of :class:`Settings`).
_FIELD_TYPES: Final = settings_base.field_types(Settings)


def setting_labels(
    environ: Mapping[str, str],
    *,
    overrides: Mapping[str, Any] | None = None,
    options: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Where each field's value comes from, for messages: the option in
    ``options`` when ``overrides`` gives the field a value (not ``None``),
    ``DATABASE_URL`` when the DSN comes from that plain variable, else
    ``ATDATA_INGEST_<FIELD>`` (also for a field left at its default)."""
    labels = {name: _env_var(name) for name in _FIELD_TYPES}
    if _env_var("database_url") not in environ and "DATABASE_URL" in environ:
        labels["database_url"] = "DATABASE_URL"
    return settings_base.label_options(labels, overrides, options)


# -- documentation of the settings ----------------------------------------------------


def setting_infos() -> Iterator[SettingInfo]:
    """Every field of :class:`Settings`, in declaration order, as
    :class:`SettingInfo` (defaults read from the dataclass itself)."""
    return settings_base.setting_infos(
        Settings, ENV_PREFIX, bounds=_BOUNDS, choices=_CHOICES
    )


def _selected(command: str | None) -> list[SettingInfo]:
    return [s for s in setting_infos() if command is None or command in s.commands]


def settings_table(*, width: int = 48) -> str:
    """The reStructuredText table of every setting (variable, default, meaning
    wrapped to ``width`` characters, the commands that read it) that the module
    doc shows."""
    return settings_base.settings_table(_selected(None), width=width, all_commands=_ALL)


def settings_help(
    command: str, *, options: Mapping[str, str] | None = None, width: int = 76
) -> str:
    """The settings ``command`` reads, as an indented plain-text list for an
    argparse epilog (lines start with a space: the CLI's formatter keeps them as
    they are)::

      ATDATA_INGEST_BATCH_MAX = 500  (option --batch-max)
          events per COPY batch; 1..10000

    ``options``: field -> the command's option for it, shown after the default."""
    return settings_base.settings_help(_selected(command), options=options, width=width)


# -- unknown variables -------------------------------------------------------------


def known_variables() -> frozenset[str]:
    """Every ``ATDATA_INGEST_*`` name something of this service reads: one per
    :class:`Settings` field and :data:`EXTRA_VARIABLES`."""
    return settings_base.known_variables(ENV_PREFIX, _FIELD_TYPES, EXTRA_VARIABLES)


def unknown_variables(environ: Mapping[str, str]) -> list[tuple[str, str | None]]:
    """The ``ATDATA_INGEST_*`` variables of ``environ`` that nothing reads, sorted,
    each with the closest known name (:func:`difflib.get_close_matches` on the
    part after the prefix, cutoff 0.6) or ``None``. Forward compatibility: they
    are reported, never refused."""
    return settings_base.unknown_variables(environ, ENV_PREFIX, known_variables())


# -- parsing ------------------------------------------------------------------------


_num = settings_base.num


def _parse(name: str, kind: type, raw: str) -> Any:
    var = _var(name)
    text = raw.strip()
    if kind is str:
        return text.lower() if name in _CHOICES else text
    if kind is bool:
        return settings_base.parse_bool(var, raw)
    try:
        return int(text, 10) if kind is int else float(text)
    except ValueError:
        what = "an integer" if kind is int else "a number"
        lo, hi = _BOUNDS[name]
        raise ConfigError(
            f"{var}: {raw!r} is not {what} (allowed {_num(lo)}..{_num(hi)})"
        ) from None


__doc__ = (
    (__doc__ or "")
    .replace("{SETTINGS_TABLE}", settings_table())
    .replace(
        "{EXTRA_VARIABLES}",
        settings_base.extra_variables_doc(ENV_PREFIX, EXTRA_VARIABLES),
    )
)
