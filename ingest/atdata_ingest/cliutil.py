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
import logging
import re
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Final
from urllib.parse import unquote, urlsplit

from atdata_runtime.net import redact_url

from . import exits
from .exits import ConfigError

__all__ = [
    "LOG_LEVELS",
    "Formatter",
    "RedactingFormatter",
    "Usage",
    "log_level",
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
