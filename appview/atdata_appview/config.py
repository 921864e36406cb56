"""Settings of the AppView, from ``ATDATA_APPVIEW_*`` environment variables.

Every setting is a field of :class:`Settings`; its variable is
``ATDATA_APPVIEW_<FIELD>``, and its meaning, the commands that read it, its
default, its bounds and its allowed values all come from that field's
``metadata``. The table below and the ``--help`` epilog of every
``atdata-appview`` command are generated from there (:func:`settings_table`,
:func:`settings_help`), so they cannot drift apart.

{SETTINGS_TABLE}

Read outside :class:`Settings` (:data:`EXTRA_VARIABLES`):

{EXTRA_VARIABLES}

One database serves the ingester and the AppView: the DSN is read from
``ATDATA_APPVIEW_DSN``, else the ingester's ``ATDATA_INGEST_DATABASE_URL``, else
plain ``DATABASE_URL``.

The AppView's identity is a ``did:web`` (W3C did:web method §3.2): with
``ATDATA_APPVIEW_HOSTNAME`` set (``appview.example.org``, or ``host:port``) the
public URL defaults to ``https://<hostname>``; without it, to
``http://<host>:<port>``. :attr:`Settings.service_did` is derived from the public
URL as atdata 0.7's client derives it (``did:web:<host>``, a port appended as
``%3A<port>``), so ``Atmosphere(appview=<public URL>)`` proxies to
``<service_did>#atdata_appview``, the service entry of ``/.well-known/did.json``.

Every malformed value raises :class:`atdata_ingest.exits.ConfigError` (exit
status 78) naming where it came from: the command-line option when one gave it
(``--port: 0 is out of range``), else the variable. DSNs in messages go through
:func:`atdata_runtime.net.redact_url` (no password is ever printed).

A variable with the ``ATDATA_APPVIEW_`` prefix that no setting reads (a typo such
as ``ATDATA_APPVIEW_RATE_BRUST``) is not an error, so that an older binary
accepts a newer deployment's settings: :func:`unknown_variables` finds them with
the closest known name, and the command line warns about each one (the same
rule as :func:`atdata_ingest.config.unknown_variables`).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import quote, urlsplit

from atdata_ingest import settings_base
from atdata_ingest.config import ENV_PREFIX as INGEST_ENV_PREFIX
from atdata_ingest.exits import ConfigError
from atdata_ingest.settings_base import SettingInfo
from atdata_runtime.net import redact_url

__all__ = [
    "COMMANDS",
    "DSN_VARIABLES",
    "ENV_PREFIX",
    "EXTRA_VARIABLES",
    "ConfigError",
    "SettingInfo",
    "Settings",
    "did_web_for_url",
    "known_variables",
    "setting_infos",
    "settings_help",
    "settings_table",
    "unknown_variables",
]

ENV_PREFIX: Final = "ATDATA_APPVIEW_"

#: The commands of ``atdata-appview`` (a setting's ``commands`` are among them).
COMMANDS: Final = (
    "serve",
    "index",
    "run",
    "migrate",
    "backfill",
    "status",
    "rules",
    "dead-letters",
    "verify-handles",
)

#: Where the DSN is looked for, in order (the first one set wins).
DSN_VARIABLES: Final = (
    f"{ENV_PREFIX}DSN",
    f"{INGEST_ENV_PREFIX}DATABASE_URL",
    "DATABASE_URL",
)

#: Variables read outside :class:`Settings`: name without the prefix -> meaning.
EXTRA_VARIABLES: Final[dict[str, str]] = {
    "LOG_LEVEL": "log level of every command (DEBUG, INFO, WARNING, ERROR; "
    "default INFO; the option --log-level wins)",
    "URL": "the AppView URL that clients (atdata_runtime.appview, atdata-gen search "
    "and pull) query; not read by the server",
}

_DB: Final = (
    "serve",
    "index",
    "run",
    "migrate",
    "backfill",
    "status",
    "dead-letters",
    "verify-handles",
)
_SERVE: Final = ("serve", "run")
_INDEX: Final = ("index", "run", "backfill")

#: Where the value of each field came from while :meth:`Settings.from_env` builds
#: one (field -> an option such as ``--port``, or a DSN variable).
_labels: ContextVar[Mapping[str, str]] = ContextVar("atdata_appview_setting_labels")


def _env_var(name: str) -> str:
    return settings_base.env_var(ENV_PREFIX, name)


def _var(name: str) -> str:
    """How messages name setting ``name``: the option or variable its value came
    from, by default ``ATDATA_APPVIEW_<NAME>``."""
    return _labels.get({}).get(name) or _env_var(name)


def _setting(
    default: Any,
    doc: str,
    *,
    commands: Sequence[str] = _SERVE,
    bounds: tuple[float, float] | None = None,
    choices: tuple[str, ...] | None = None,
    shown: str | None = None,
) -> Any:
    """A :class:`Settings` field with its documentation: ``doc`` (meaning and
    units; ``bounds`` (inclusive) and ``choices`` are checked and appended), the
    ``commands`` that read it, and ``shown``, the default as the docs print it."""
    return field(
        default=default,
        metadata={
            "doc": doc,
            "commands": tuple(commands),
            "bounds": bounds,
            "choices": choices,
            "shown": shown,
        },
    )


def did_web_for_url(url: str) -> str:
    """The ``did:web`` of the service at ``url`` (W3C did:web §3.2: the host,
    its port percent-encoded as ``%3A<port>``; a path is not part of it), as
    atdata 0.7's ``Atmosphere(appview=url)`` derives it. ``http://127.0.0.1:8080``
    -> ``did:web:127.0.0.1%3A8080``."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    if parts.port:
        return f"did:web:{host}%3A{parts.port}"
    return f"did:web:{quote(host, safe='.')}"


_DSN_NOT_SHOWN: Final = "the value is not shown: it may hold a password"


def _check_dsn(dsn: str, var: str) -> str:
    """``dsn`` stripped, if it is a ``postgresql://`` or ``postgres://`` URL.

    A refused DSN is never quoted, not even redacted: :func:`redact_url` only
    finds the password of a URL that parses, and a libpq ``key=value`` string
    (``host=h password=...``) or a URL whose password landed in the port
    (``postgresql://user:secret/db``, no ``@``) is no such URL."""
    text = dsn.strip()
    if not text:
        raise ConfigError(f"{var}: missing (a postgresql:// DSN)")
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        raise ConfigError(
            f"{var}: not a DSN: the port is not a number ({_DSN_NOT_SHOWN})"
        ) from None
    if parts.scheme not in ("postgresql", "postgres"):
        raise ConfigError(
            f"{var}: must be a postgresql:// or postgres:// URL (libpq's key=value "
            f"form is not accepted; {_DSN_NOT_SHOWN})"
        )
    return text


def _check_http_url(value: str, var: str, *, what: str) -> str:
    text = value.strip().rstrip("/")
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018
    except ValueError as exc:
        raise ConfigError(f"{var}: {redact_url(text)!r} is not a URL ({exc})") from None
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ConfigError(
            f"{var}: {redact_url(text)!r} is not an https:// or http:// URL of {what}"
        )
    if "@" in parts.netloc or parts.query or parts.fragment:
        raise ConfigError(
            f"{var}: {redact_url(text)!r} must not carry credentials, a query or "
            "a fragment"
        )
    return text


@dataclass(frozen=True, slots=True)
class Settings:
    """The AppView's settings (see the module doc for each one). Constructing it
    validates every field; :meth:`from_env` builds it from the environment.
    ``repr`` never shows the DSN's password."""

    dsn: str = field(
        metadata={
            "doc": "PostgreSQL DSN, postgresql://user[:password]@host[:port]/db, "
            "the ingester's database (also read from ATDATA_INGEST_DATABASE_URL, "
            "then DATABASE_URL; prefer a variable to the option: options show in "
            "process listings)",
            "commands": _DB,
            "bounds": None,
            "choices": None,
            "shown": "(required)",
        }
    )
    host: str = _setting("127.0.0.1", "address the server listens on")
    port: int = _setting(8080, "TCP port the server listens on", bounds=(1, 65_535))
    hostname: str = _setting(
        "",
        "public hostname of the service (appview.example.org, or host:port): "
        "names its did:web and, by default, its public URL https://<hostname>",
        shown="(none: http://<host>:<port>)",
    )
    public_url: str = _setting(
        "",
        "the URL clients reach the service at (did.json's serviceEndpoint, links "
        "in pages); default https://<hostname>, else http://<host>:<port>",
        shown="(derived)",
    )
    rate_per_second: float = _setting(
        50.0,
        "requests per second allowed per client address (token bucket refill; "
        "0 turns rate limiting off); /health and /static are not counted",
        bounds=(0, 1_000_000),
    )
    rate_burst: int = _setting(
        100, "requests a client may send at once (token bucket size)", bounds=(1, 1e6)
    )
    trusted_proxies: str = _setting(
        "",
        "comma-separated addresses of reverse proxies whose X-Forwarded-For names "
        "the client (for the rate limits); empty: the direct peer is the client",
    )
    max_query_bytes: int = _setting(
        8192,
        "longest query string accepted, bytes (longer: 414)",
        bounds=(256, 1 << 20),
    )
    max_header_bytes: int = _setting(
        16_384,
        "largest request head (request line and headers) accepted, bytes (larger: 431)",
        bounds=(1024, 1 << 20),
    )
    max_body_bytes: int = _setting(
        65_536,
        "largest request body accepted, bytes (larger: 413; every method is GET)",
        bounds=(0, 1 << 26),
    )
    max_connections: int = _setting(
        1024,
        "connections and requests the server handles at once (more: 503)",
        bounds=(1, 1_000_000),
    )
    pool_min: int = _setting(
        1, "database connections opened at start", bounds=(0, 1000)
    )
    pool_max: int = _setting(
        10, "most database connections of the server", bounds=(1, 1000)
    )
    acquire_timeout_seconds: float = _setting(
        2.0,
        "a request that gets no database connection within this is answered 503",
        bounds=(0.01, 600),
    )
    statement_timeout_ms: int = _setting(
        5000, "PostgreSQL statement_timeout of the server's queries", bounds=(1, 3.6e6)
    )
    health_max_lag_seconds: float = _setting(
        120.0,
        "/health answers 503 lagging when the oldest ingested row not yet indexed "
        "is older than this (0: never)",
        bounds=(0, 86_400 * 365),
    )
    index_batch_size: int = _setting(
        500, "log rows the indexer folds per transaction", commands=_INDEX,
        bounds=(1, 100_000),
    )  # fmt: skip
    require_verified: bool = _setting(
        True,
        "index only records whose commit signature the ingester verified "
        "(ingest_events.verified true); false also indexes unchecked ones",
        commands=_INDEX,
    )
    backfill_source: str = _setting(
        "",
        "the PDS or relay a backfill lists repositories from (https://...); the "
        "options --pds/--relay win",
        commands=("backfill",),
        shown="(none)",
    )
    backfill_kind: str = _setting(
        "pds",
        "what backfill_source is: pds (com.atproto.sync.listRepos) or relay "
        "(com.atproto.sync.listReposByCollection)",
        commands=("backfill",),
        choices=("pds", "relay"),
    )
    backfill_concurrency: int = _setting(
        8, "repositories read at once by a backfill", commands=("backfill",),
        bounds=(1, 256),
    )  # fmt: skip
    plc_url: str = _setting(
        "https://plc.directory",
        "the PLC directory resolving did:plc documents (a backfill verifies each "
        "repository's commit with its key; handle verification reads alsoKnownAs)",
        commands=("backfill", "run", "index", "verify-handles"),
    )
    handle_service: str = _setting(
        "",
        "a trusted service whose com.atproto.identity.resolveHandle resolves "
        "handles for verification (a PDS, or an AppView doing DNS TXT); empty: "
        "only https://<handle>/.well-known/atproto-did. Either way the DID "
        "document must list the handle",
        commands=("run", "index", "verify-handles"),
        shown="(none)",
    )
    application_name: str = _setting(
        "atdata-appview",
        "PostgreSQL application_name of the service's sessions (1..63 printable "
        "ASCII characters)",
        commands=_DB,
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "dsn", _check_dsn(self.dsn, _var("dsn")))
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            kind = _FIELD_TYPES[f.name]
            if kind is bool and not isinstance(value, bool):
                raise ConfigError(f"{_var(f.name)}: {value!r} is not a boolean")
            if kind in (int, float):
                if isinstance(value, bool) or not isinstance(value, int | float):
                    raise ConfigError(f"{_var(f.name)}: {value!r} is not a number")
                if kind is int and not isinstance(value, int):
                    raise ConfigError(f"{_var(f.name)}: {value!r} is not an integer")
            if kind is str and not isinstance(value, str):
                raise ConfigError(f"{_var(f.name)}: {value!r} is not text")
            bounds = f.metadata.get("bounds")
            if bounds is not None and not bounds[0] <= value <= bounds[1]:
                raise ConfigError(
                    f"{_var(f.name)}: {value!r} is out of range (allowed "
                    f"{_num(bounds[0])}..{_num(bounds[1])})"
                )
            choices = f.metadata.get("choices")
            if choices is not None and value not in choices:
                raise ConfigError(
                    f"{_var(f.name)}: {value!r} is not one of {', '.join(choices)}"
                )
        if self.pool_min > self.pool_max:
            raise ConfigError(
                f"{_var('pool_min')}: {self.pool_min} is more than "
                f"{_var('pool_max')} ({self.pool_max})"
            )
        if not self.host.strip():
            raise ConfigError(f"{_var('host')}: empty")
        if self.hostname:
            name = self.hostname.strip().lower()
            try:
                parts = urlsplit(f"//{name}")
                parts.port  # noqa: B018
            except ValueError as exc:
                raise ConfigError(
                    f"{_var('hostname')}: {self.hostname!r} is not a host[:port] "
                    f"({exc})"
                ) from None
            if not parts.hostname or parts.path or "@" in name:
                raise ConfigError(
                    f"{_var('hostname')}: {self.hostname!r} is not a host[:port] "
                    "(no scheme, path or credentials)"
                )
            object.__setattr__(self, "hostname", name)
        if self.public_url:
            object.__setattr__(
                self,
                "public_url",
                _check_http_url(
                    self.public_url, _var("public_url"), what="this service"
                ),
            )
        if self.backfill_source:
            object.__setattr__(
                self,
                "backfill_source",
                _check_http_url(
                    self.backfill_source,
                    _var("backfill_source"),
                    what="a PDS or relay",
                ),
            )
        object.__setattr__(
            self,
            "plc_url",
            _check_http_url(self.plc_url, _var("plc_url"), what="a PLC directory"),
        )
        if self.handle_service:
            object.__setattr__(
                self,
                "handle_service",
                _check_http_url(
                    self.handle_service,
                    _var("handle_service"),
                    what="a handle resolution service",
                ),
            )
        for entry in self.proxies:
            if not entry or " " in entry:
                raise ConfigError(
                    f"{_var('trusted_proxies')}: {self.trusted_proxies!r} is not a "
                    "comma-separated list of addresses"
                )
        name = self.application_name
        if not name or len(name) > 63 or not name.isascii() or not name.isprintable():
            raise ConfigError(
                f"{_var('application_name')}: {name!r} must be 1..63 printable "
                "ASCII characters"
            )

    # -- derived ----------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        """The public URL without a trailing slash: ``public_url``, else
        ``https://<hostname>``, else ``http://<host>:<port>`` (an IPv6 host in
        brackets)."""
        if self.public_url:
            return self.public_url
        if self.hostname:
            return f"https://{self.hostname}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def service_did(self) -> str:
        """This AppView's ``did:web``: from ``hostname`` when set, else from the
        public URL (:func:`did_web_for_url`)."""
        if self.hostname:
            return did_web_for_url(f"https://{self.hostname}")
        return did_web_for_url(self.base_url)

    @property
    def proxies(self) -> tuple[str, ...]:
        """``trusted_proxies`` split on commas (empty: none)."""
        return tuple(p.strip() for p in self.trusted_proxies.split(",") if p.strip())

    @property
    def redacted_dsn(self) -> str:
        """``dsn`` without its password (for messages and logs)."""
        return redact_url(self.dsn)

    def __repr__(self) -> str:
        shown = ", ".join(
            f"{f.name}={getattr(self, f.name)!r}"
            for f in dataclasses.fields(self)
            if f.name != "dsn"
        )
        return f"Settings(dsn={self.redacted_dsn!r}, {shown})"

    # -- construction ---------------------------------------------------------------
    @classmethod
    def from_env(
        cls,
        environ: Mapping[str, str] | None = None,
        *,
        options: Mapping[str, str] | None = None,
        **overrides: Any,
    ) -> Settings:
        """Settings from ``environ`` (default ``os.environ``): ``ATDATA_APPVIEW_<FIELD>``
        for each field, the DSN from the first of :data:`DSN_VARIABLES` that is
        set. ``overrides`` (field -> value; ``None`` is ignored; text is parsed as
        the variable would be) win over the environment; ``options`` (field ->
        the command-line option that gave it) names them in errors. Raises
        :class:`ConfigError`."""
        env = os.environ if environ is None else environ
        token = _labels.set(setting_labels(env, overrides=overrides, options=options))
        try:
            values: dict[str, Any] = {}
            for name, kind in _FIELD_TYPES.items():
                if name == "dsn":
                    raw = next((env[v] for v in DSN_VARIABLES if v in env), None)
                else:
                    raw = env.get(_env_var(name))
                if raw is not None:
                    values[name] = _parse(name, kind, raw)
            settings_base.apply_overrides(values, overrides, _FIELD_TYPES, _parse)
            if "dsn" not in values:
                raise ConfigError(
                    f"{_env_var('dsn')}: missing (set it, ATDATA_INGEST_DATABASE_URL "
                    "or DATABASE_URL to a postgresql:// DSN)"
                )
            return cls(**values)
        finally:
            _labels.reset(token)


#: field -> its type (from the annotations of :class:`Settings`).
_FIELD_TYPES: Final = settings_base.field_types(Settings)


def setting_labels(
    environ: Mapping[str, str],
    *,
    overrides: Mapping[str, Any] | None = None,
    options: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Where each field's value comes from, for messages: the option in
    ``options`` when ``overrides`` gives the field a value, the DSN variable the
    DSN was read from, else ``ATDATA_APPVIEW_<FIELD>``."""
    labels = {name: _env_var(name) for name in _FIELD_TYPES}
    found = next((v for v in DSN_VARIABLES if v in environ), None)
    if found is not None:
        labels["dsn"] = found
    return settings_base.label_options(labels, overrides, options)


# -- documentation of the settings ----------------------------------------------------


_num = settings_base.num


def setting_infos() -> Iterator[SettingInfo]:
    """Every field of :class:`Settings`, in declaration order."""
    fields = dataclasses.fields(Settings)
    return settings_base.setting_infos(
        Settings,
        ENV_PREFIX,
        bounds={
            f.name: f.metadata["bounds"]
            for f in fields
            if f.metadata.get("bounds") is not None
        },
        choices={
            f.name: f.metadata["choices"]
            for f in fields
            if f.metadata.get("choices") is not None
        },
    )


def _selected(command: str | None) -> list[SettingInfo]:
    return [s for s in setting_infos() if command is None or command in s.commands]


def settings_table(*, width: int = 48) -> str:
    """The reStructuredText table of every setting (variable, default, meaning
    wrapped to ``width`` characters, the commands that read it)."""
    return settings_base.settings_table(_selected(None), width=width)


def settings_help(
    command: str | None, *, options: Mapping[str, str] | None = None, width: int = 76
) -> str:
    """The settings ``command`` reads (``None``: every setting), as an indented
    plain-text list for an argparse epilog::

      ATDATA_APPVIEW_PORT = 8080  (option --port)
          TCP port the server listens on; 1..65535

    ``options``: field -> the command's option for it, shown after the default."""
    return settings_base.settings_help(_selected(command), options=options, width=width)


# -- unknown variables -------------------------------------------------------------


def known_variables() -> frozenset[str]:
    """Every ``ATDATA_APPVIEW_*`` name something of this service reads."""
    return settings_base.known_variables(ENV_PREFIX, _FIELD_TYPES, EXTRA_VARIABLES)


def unknown_variables(environ: Mapping[str, str]) -> list[tuple[str, str | None]]:
    """The ``ATDATA_APPVIEW_*`` variables of ``environ`` that nothing reads,
    sorted, each with the closest known name (:func:`difflib.get_close_matches`
    on the part after the prefix, cutoff 0.6) or ``None``. They are reported,
    never refused (forward compatibility)."""
    return settings_base.unknown_variables(environ, ENV_PREFIX, known_variables())


# -- parsing ------------------------------------------------------------------------


def _parse(name: str, kind: type, raw: str) -> Any:
    var = _var(name)
    text = raw.strip()
    if kind is str:
        choices = Settings.__dataclass_fields__[name].metadata.get("choices")
        return text.lower() if choices else text
    if kind is bool:
        return settings_base.parse_bool(var, raw)
    try:
        return int(text, 10) if kind is int else float(text)
    except ValueError:
        what = "an integer" if kind is int else "a number"
        raise ConfigError(f"{var}: {raw!r} is not {what}") from None


__doc__ = (
    (__doc__ or "")
    .replace("{SETTINGS_TABLE}", settings_table())
    .replace(
        "{EXTRA_VARIABLES}",
        settings_base.extra_variables_doc(ENV_PREFIX, EXTRA_VARIABLES),
    )
)
