"""What the ``atdata-ingest`` and ``atdata-appview`` command lines share: the
``--help`` formatter, DSN password redaction, logging setup, the log level and
unknown-variable checks, and the main-loop wrapper that turns exceptions into
exit statuses (:mod:`atdata_ingest.exits`, sysexits.h).

Every message a wrapper writes is ``PROG: error: ...`` (a configuration error,
exit 78, or a :class:`Usage` error, exit 2), ``PROG: failed: ...`` (any other
:class:`~atdata_ingest.exits.IngestExit`, its own status) or ``PROG: internal
error (a bug):`` with the traceback (exit 70), each redacted by :func:`redact`.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import errno
import json
import logging
import re
import socket
import sys
import textwrap
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Final
from urllib.parse import unquote, urlsplit

from atdata_runtime.net import redact_url

from . import exits
from .exits import ConfigError

__all__ = [
    "LOG_LEVELS",
    "Formatter",
    "RedactingFormatter",
    "Usage",
    "check_listen",
    "exit_help",
    "jsonable",
    "log_level",
    "print_json",
    "redact",
    "remember_secrets",
    "run_main",
    "setup_logging",
    "warn_unknown_variables",
]

#: The levels ``--log-level`` and ``*_LOG_LEVEL`` accept.
LOG_LEVELS: Final = ("DEBUG", "INFO", "WARNING", "ERROR")

# -- redaction ------------------------------------------------------------------------

_DSN_IN_TEXT: Final = re.compile(r"postgres(?:ql)?://[^\s'\"<>]+", re.IGNORECASE)
_secrets: set[str] = set()


def remember_secrets(dsn: str | None) -> None:
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


class RedactingFormatter(logging.Formatter):
    """A :class:`logging.Formatter` whose output passes through :func:`redact`."""

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


# -- logging and the environment -------------------------------------------------------


def log_level(option: str | None, environ: Mapping[str, str], variable: str) -> str:
    """``option`` (``--log-level``), else the environment ``variable``, else
    ``INFO``. Raises :class:`ConfigError` for a variable that is not one of
    :data:`LOG_LEVELS` (the option is checked by argparse)."""
    if option:
        return option
    raw = environ.get(variable)
    if raw is None or not raw.strip():
        return "INFO"
    level = raw.strip().upper()
    if level not in LOG_LEVELS:
        raise ConfigError(f"{variable}: {raw!r} is not one of {', '.join(LOG_LEVELS)}")
    return level


def setup_logging(level: str, quiet_loggers: Sequence[str]) -> None:
    """One redacting stderr handler on the root logger at ``level``; the
    ``quiet_loggers`` at WARNING (or ``level`` when higher) unless ``level`` is
    DEBUG."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        RedactingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    numeric = logging.getLevelName(level)
    quiet = logging.NOTSET if level == "DEBUG" else max(logging.WARNING, numeric)
    for name in quiet_loggers:
        logging.getLogger(name).setLevel(quiet)


def warn_unknown_variables(
    prog: str, unknown: Iterable[tuple[str, str | None]]
) -> None:
    """One ``PROG: warning:`` line on stderr per ``(variable, closest known name
    or None)`` of ``unknown`` (a variable with the prefix that nothing reads)."""
    for name, close in unknown:
        hint = f"; did you mean {close}?" if close else ""
        sys.stderr.write(
            f"{prog}: warning: {name} is not a setting of {prog} (ignored){hint}\n"
        )


# -- the parser and the main loop ------------------------------------------------------


class Usage(Exception):
    """Bad arguments found after parsing (exit 2, as argparse's own)."""


class Formatter(argparse.HelpFormatter):
    """Wraps descriptions and epilogs paragraph by paragraph (blank lines kept);
    a paragraph whose first line starts with a space is preformatted (tables)."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        out = []
        for para in text.split("\n\n"):
            if para.startswith(" ") or "\n  " in para:
                out.append("\n".join(indent + line for line in para.splitlines()))
            else:
                out.append(super()._fill_text(para, width, indent))
        return "\n\n".join(out)


def run_main(
    prog: str,
    parser: argparse.ArgumentParser,
    argv: Sequence[str] | None,
    *,
    unknown_variables: Callable[[Mapping[str, str]], Iterable[tuple[str, str | None]]],
    log_level_variable: str,
    quiet_loggers: Sequence[str],
    exit_usage: int,
    environ: Mapping[str, str],
    clean: Callable[[str], str] = lambda text: text,
) -> int:
    """Parse ``argv`` with ``parser`` and run ``args.handler(args)``; return its
    exit status.

    Before the handler: the unknown-variable warnings
    (:func:`warn_unknown_variables`), ``args.log_level`` resolved
    (:func:`log_level` with ``log_level_variable``) and logging set up
    (:func:`setup_logging`). An :class:`~atdata_ingest.exits.IngestExit` becomes
    its status (``error:`` for :data:`~atdata_ingest.exits.CONFIG`, ``failed:``
    otherwise; the message passed through ``clean`` after :func:`redact`), a
    :class:`Usage` becomes ``exit_usage``, ``KeyboardInterrupt`` exit 0, and any
    other exception :data:`~atdata_ingest.exits.SOFTWARE` with the redacted
    traceback."""
    args = parser.parse_args(argv)
    try:
        warn_unknown_variables(prog, unknown_variables(environ))
        args.log_level = log_level(args.log_level, environ, log_level_variable)
        setup_logging(args.log_level, quiet_loggers)
        status = args.handler(args)
    except exits.IngestExit as exc:
        what = "error" if exc.status == exits.CONFIG else "failed"
        sys.stderr.write(f"{prog}: {what}: {clean(redact(str(exc)))}\n")
        return exc.status
    except Usage as exc:
        sys.stderr.write(f"{prog}: error: {redact(str(exc))}\n")
        return exit_usage
    except KeyboardInterrupt:
        return exits.OK
    except Exception as exc:  # noqa: BLE001 - a bug: the traceback, redacted
        import traceback

        text = "".join(traceback.format_exception(exc))
        sys.stderr.write(f"{prog}: internal error (a bug):\n{redact(text)}")
        return exits.SOFTWARE
    return int(status)


# -- output, exit statuses and the listening address ------------------------------------


def jsonable(value: Any) -> Any:
    """``value`` with dates and datetimes as ISO 8601 text, mapping keys as text,
    tuples as lists and anything else not JSON as its ``str``."""
    if isinstance(value, _dt.datetime | _dt.date):
        return value.isoformat()
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)


def print_json(value: Any) -> None:
    """``value`` (:func:`jsonable`) on stdout as indented JSON, keys sorted."""
    sys.stdout.write(json.dumps(jsonable(value), indent=2, sort_keys=True) + "\n")


def exit_help(statuses: Iterable[tuple[int, str]]) -> str:
    """An ``exit statuses:`` block for an argparse epilog: each ``(status,
    meaning)`` wrapped to 76 columns under its number."""
    lines = ["exit statuses:"]
    for status, meaning in statuses:
        lines.extend(
            textwrap.wrap(
                meaning, 76, initial_indent=f"  {status:<4}", subsequent_indent=" " * 6
            )
        )
    return "\n".join(lines)


def check_listen(
    host: str,
    port: int,
    *,
    host_label: str,
    port_label: str,
    in_use_hint: str,
    bracket_ipv6: bool,
) -> None:
    """Bind (without listening) every address ``host`` resolves to, at ``port``,
    as uvicorn will (``SO_REUSEADDR``; IPv6 sockets v6-only, as
    :meth:`asyncio.loop.create_server`), then release them. Raises
    :class:`ConfigError` naming ``host_label`` or ``port_label`` (the option or
    variable): the port in use (the message ends with ``in_use_hint``), the
    address not of this host, a privileged port, a host that does not resolve.
    ``bracket_ipv6``: an IPv6 address is shown as ``[host]:port``."""
    try:
        infos = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        raise ConfigError(
            f"{host_label}: {host!r} does not resolve ({exc.strerror})"
        ) from None
    seen: set[tuple[int, Any]] = set()
    for family, kind, proto, _, address in infos:
        if (family, address) in seen:
            continue
        seen.add((family, address))
        with socket.socket(family, kind, proto) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind(address)
            except OSError as exc:
                v6 = bracket_ipv6 and family == socket.AF_INET6
                where = f"[{host}]:{port}" if v6 else f"{host}:{port}"
                if exc.errno == errno.EADDRINUSE:
                    raise ConfigError(
                        f"{port_label}: {where} is already in use ({in_use_hint})"
                    ) from None
                if exc.errno == errno.EADDRNOTAVAIL:
                    raise ConfigError(
                        f"{host_label}: {host!r} is not an address of this host"
                    ) from None
                if exc.errno == errno.EACCES:
                    raise ConfigError(
                        f"{port_label}: {where}: permission denied (ports below "
                        "1024 need privileges)"
                    ) from None
                raise ConfigError(
                    f"{host_label}/{port_label}: cannot listen on {where}: "
                    f"{exc.strerror}"
                ) from None
