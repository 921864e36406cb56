"""Settings of the ingestion service, from ``ATDATA_INGEST_*`` environment variables.

=================================  ==================  =======================================
variable                           default             meaning
=================================  ==================  =======================================
``ATDATA_INGEST_RELAY_URL``        (required by run)   relay or PDS: ``wss://host``, ``ws://``
                                                       ``https://``/``http://`` (mapped to
                                                       ``wss``/``ws``); the
                                                       ``/xrpc/com.atproto.sync.subscribeRepos``
                                                       path may be given or left out
``ATDATA_INGEST_DATABASE_URL``     ``DATABASE_URL``    PostgreSQL DSN (``postgresql://``)
``ATDATA_INGEST_START``            ``live``            where a **first** run starts (the
                                                       stored cursor is 0, never used):
                                                       ``live`` connects without a cursor
                                                       (the relay's live tail), ``oldest``
                                                       with ``?cursor=0`` (the oldest
                                                       event the relay still has; a PDS
                                                       replays its whole stream). Ignored
                                                       once a seq was read
``ATDATA_INGEST_BATCH_MAX``        500                 events per COPY batch (1..10000)
``ATDATA_INGEST_FLUSH_MS``         50                  flush a batch this long after its
                                                       oldest event was read (1..10000)
``ATDATA_INGEST_BUFFER_MAX``       20000               events held in memory (read, not yet
                                                       committed); full: exit 75
``ATDATA_INGEST_BUFFER_MAX_BYTES`` 268435456           the same bound in bytes of records
``ATDATA_INGEST_HIGH_WATER``       0.5                 fill fraction above which the reader
                                                       stops reading the socket
``ATDATA_INGEST_PAUSE_MS``         250                 how long the reader waits above the
                                                       high watermark before it reads on
``ATDATA_INGEST_VERIFY``           ``dataset``         commit signatures checked: ``dataset``
                                                       (commits touching
                                                       ``science.alt.dataset.*``), ``all``,
                                                       ``none``
``ATDATA_INGEST_VALIDATE``         ``all``             records validated with generated
                                                       models (``valid`` column): ``all``
                                                       records with a known model,
                                                       ``dataset``, ``none``
``ATDATA_INGEST_PLC_URL``          ``https://plc.directory`` the PLC directory that resolves
                                                       ``did:plc`` keys for ``VERIFY``
``ATDATA_INGEST_SYNCHRONOUS_COMMIT`` ``true``          PostgreSQL ``synchronous_commit`` of
                                                       the writer's session (``false``:
                                                       faster; a *server* crash may lose
                                                       the last few hundred ms of commits,
                                                       which the relay then replays)
``ATDATA_INGEST_DB_RETRY_SECONDS`` 60                  how long a lost database is retried
                                                       before exit 74
``ATDATA_INGEST_RECONNECT_MIN_SECONDS`` 0.5            first relay reconnect delay
``ATDATA_INGEST_RECONNECT_MAX_SECONDS`` 30             reconnect delay cap (exponential,
                                                       full jitter)
``ATDATA_INGEST_MAX_FRAME_BYTES``  3145728             largest WebSocket message accepted
                                                       (the frame decoder's default: a
                                                       commit's CAR is at most 2,000,000
                                                       bytes by its Lexicon)
``ATDATA_INGEST_LOG_INTERVAL_SECONDS`` 10              period of the INFO summary line
``ATDATA_INGEST_RETENTION_DAYS``   7                   days of events kept (``trim``)
``ATDATA_INGEST_API_HOST``         ``127.0.0.1``       consumer API address (``serve``)
``ATDATA_INGEST_API_PORT``         8080                consumer API port
=================================  ==================  =======================================

Every malformed value raises :class:`ConfigError` (exit status 78, which the
supervisor does not restart) naming the variable and why. DSNs in messages go
through :func:`atdata_runtime.net.redact_url` (no password ever printed).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlsplit, urlunsplit

from atdata_runtime.net import redact_url

from .exits import ConfigError

__all__ = ["ENV_PREFIX", "ConfigError", "Settings", "normalize_relay_url"]

ENV_PREFIX: Final = "ATDATA_INGEST_"
SUBSCRIBE_PATH: Final = "/xrpc/com.atproto.sync.subscribeRepos"

_SCHEMES: Final = {"ws": "ws", "wss": "wss", "http": "ws", "https": "wss"}
_VERIFY: Final = ("dataset", "all", "none")
_START: Final = ("live", "oldest")
_VALIDATE: Final = ("all", "dataset", "none")
_TRUE: Final = frozenset({"1", "true", "yes", "on"})
_FALSE: Final = frozenset({"0", "false", "no", "off"})

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


def _var(field: str) -> str:
    return f"{ENV_PREFIX}{field.upper()}"


def normalize_relay_url(url: str, *, var: str = _var("relay_url")) -> str:
    """The relay's base WebSocket URL: ``wss://host[:port][/prefix]`` without a
    trailing slash, the ``subscribeRepos`` path, a query or a fragment
    (``http``/``https`` become ``ws``/``wss``). This canonical form is what the
    cursor's ``source`` column stores. Raises :class:`ConfigError` for another
    scheme, no host, credentials in the URL, or a query/fragment."""
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


@dataclass(frozen=True, slots=True)
class Settings:
    """The ingester's settings (see the module doc for each one). Constructing it
    validates every field; :meth:`from_env` builds it from the environment.
    ``relay_url`` may be empty for commands that do not read a relay
    (``serve``, ``trim``); :meth:`require_relay` checks it for ``run``."""

    database_url: str
    relay_url: str = ""
    start: str = "live"
    batch_max: int = 500
    flush_ms: int = 50
    buffer_max: int = 20_000
    buffer_max_bytes: int = 256 << 20
    high_water: float = 0.5
    pause_ms: int = 250
    verify: str = "dataset"
    validate: str = "all"
    plc_url: str = "https://plc.directory"
    synchronous_commit: bool = True
    db_retry_seconds: float = 60.0
    reconnect_min_seconds: float = 0.5
    reconnect_max_seconds: float = 30.0
    max_frame_bytes: int = 3 << 20  # atdata_runtime.firehose.frames.MAX_FRAME_BYTES
    log_interval_seconds: float = 10.0
    retention_days: int = 7
    api_host: str = "127.0.0.1"
    api_port: int = 8080
    application_name: str = "atdata-ingest"

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "database_url", _check_dsn(self.database_url, _var("database_url"))
        )
        if self.relay_url:
            object.__setattr__(self, "relay_url", normalize_relay_url(self.relay_url))
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
        if self.start not in _START:
            raise ConfigError(
                f"{_var('start')}: {self.start!r} is not one of {', '.join(_START)}"
            )
        if self.verify not in _VERIFY:
            raise ConfigError(
                f"{_var('verify')}: {self.verify!r} is not one of {', '.join(_VERIFY)}"
            )
        if self.validate not in _VALIDATE:
            raise ConfigError(
                f"{_var('validate')}: {self.validate!r} is not one of "
                f"{', '.join(_VALIDATE)}"
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
        cls, environ: Mapping[str, str] | None = None, **overrides: Any
    ) -> Settings:
        """Settings from ``environ`` (default ``os.environ``): ``ATDATA_INGEST_<FIELD>``
        for each field, the DSN also from plain ``DATABASE_URL``. ``overrides``
        (field names, typed values or strings, e.g. from command-line options)
        win over the environment. Raises :class:`ConfigError` naming the variable
        for a malformed or unknown value."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for name, kind in _FIELD_TYPES.items():
            raw = env.get(_var(name))
            if raw is None and name == "database_url":
                raw = env.get("DATABASE_URL")
            if raw is not None:
                values[name] = _parse(name, kind, raw)
        for name, value in overrides.items():
            if name not in _FIELD_TYPES:
                raise ConfigError(f"unknown setting {name!r}")
            if value is None:
                continue
            kind = _FIELD_TYPES[name]
            values[name] = (
                _parse(name, kind, value) if isinstance(value, str) else value
            )
        if "database_url" not in values:
            raise ConfigError(
                f"{_var('database_url')}: missing (set it or DATABASE_URL to a "
                "postgresql:// DSN)"
            )
        return cls(**values)

    def require_relay(self) -> str:
        """``relay_url``; raises :class:`ConfigError` when it is not set."""
        if not self.relay_url:
            raise ConfigError(
                f"{_var('relay_url')}: missing (the relay or PDS to consume, e.g. "
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


_FIELD_TYPES: Final[dict[str, type]] = {
    "database_url": str,
    "relay_url": str,
    "start": str,
    "batch_max": int,
    "flush_ms": int,
    "buffer_max": int,
    "buffer_max_bytes": int,
    "high_water": float,
    "pause_ms": int,
    "verify": str,
    "validate": str,
    "plc_url": str,
    "synchronous_commit": bool,
    "db_retry_seconds": float,
    "reconnect_min_seconds": float,
    "reconnect_max_seconds": float,
    "max_frame_bytes": int,
    "log_interval_seconds": float,
    "retention_days": int,
    "api_host": str,
    "api_port": int,
    "application_name": str,
}


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def _parse(name: str, kind: type, raw: str) -> Any:
    var = _var(name)
    text = raw.strip()
    if kind is str:
        return text.lower() if name in ("verify", "validate", "start") else text
    if kind is bool:
        low = text.lower()
        if low in _TRUE:
            return True
        if low in _FALSE:
            return False
        raise ConfigError(f"{var}: {raw!r} is not a boolean (true/false, 1/0, on/off)")
    try:
        return int(text, 10) if kind is int else float(text)
    except ValueError:
        what = "an integer" if kind is int else "a number"
        lo, hi = _BOUNDS[name]
        raise ConfigError(
            f"{var}: {raw!r} is not {what} (allowed {_num(lo)}..{_num(hi)})"
        ) from None
