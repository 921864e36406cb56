"""Errors of the AppView client and of name resolution.

Every error is a :class:`~atdata_runtime.net.NetworkError` (so ``except
AtmosphereError`` catches them all) with a stable ``rule``, the URL or name it
concerns (``uri``) and a reason. None of them ever contains a response body
beyond the XRPC ``error`` name and a bounded, control-character-free
``message``; URLs go through :func:`~atdata_runtime.net.redact.redact_url`.

Rules:

- ``APPVIEW_NOT_CONFIGURED``: no AppView URL (argument or ``ATDATA_APPVIEW_URL``);
- ``APPVIEW_UNAVAILABLE``: the AppView could not be reached, did not answer within
  its deadline, or answered 5xx/429 until the retry budget ran out;
- ``APPVIEW_RESPONSE_INVALID``: the answer is too large, not JSON, or does not
  validate against the query's generated output model (JSON pointers given);
- ``XRPC_<status>`` via :class:`AppViewQueryError`: the AppView refused the query
  (4xx, XRPC error shape ``{"error": Name, "message": text}``);
- ``NAME_INVALID``, ``NAME_NOT_FOUND``, ``NAME_AMBIGUOUS``, ``NAME_MISMATCH``:
  name parsing and resolution (:mod:`.names`).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence

from ..net.errors import NetworkError

__all__ = [
    "APPVIEW_URL_ENV",
    "AmbiguousNameError",
    "AppViewError",
    "AppViewNotConfigured",
    "AppViewNotFound",
    "AppViewQueryError",
    "AppViewResponseError",
    "AppViewUnavailable",
    "NameMismatchError",
    "NameNotFoundError",
    "NameResolutionError",
    "NameSyntaxError",
    "clean_text",
]

APPVIEW_URL_ENV = "ATDATA_APPVIEW_URL"
"""The environment variable naming the AppView's base URL (``https://host``)."""

_ERROR_NAME = re.compile(r"[A-Za-z][A-Za-z0-9]{0,63}")
MAX_MESSAGE = 500
"""Characters of a server's error message kept (the rest is cut with ``…``)."""


def clean_text(text: str, limit: int = MAX_MESSAGE) -> str:
    """``text`` safe to show on one line of a terminal: control, format (bidi
    overrides and isolates, zero-width characters), separator-line and surrogate
    or unassigned characters (Unicode categories Cc, Cf, Zl, Zp, Cs, Co, Cn)
    replaced by ``\\uXXXX`` escapes, then cut to ``limit`` characters."""
    out: list[str] = []
    for ch in text[: limit + 1]:
        if unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn"):
            out.append(
                f"\\u{ord(ch):04x}" if ord(ch) <= 0xFFFF else f"\\U{ord(ch):08x}"
            )
        else:
            out.append(ch)
    shown = "".join(out)
    return shown if len(text) <= limit else shown[:limit] + "…"


def error_name(value: object) -> str | None:
    """An XRPC ``error`` name (an ASCII identifier of at most 64 characters),
    else ``None``."""
    if isinstance(value, str) and _ERROR_NAME.fullmatch(value):
        return value
    return None


class AppViewError(NetworkError):
    """Base of the AppView client's errors: ``method`` (the XRPC method NSID, may
    be empty) and, where the server answered, ``status``."""

    rule = "APPVIEW_ERROR"

    def __init__(
        self,
        uri: str,
        reason: str,
        *,
        method: str = "",
        status: int | None = None,
        rule: str | None = None,
    ) -> None:
        self.method = method
        self.status = status
        super().__init__(uri, reason, rule=rule)


class AppViewNotConfigured(AppViewError):
    """No AppView URL was given and ``ATDATA_APPVIEW_URL`` is not set."""

    rule = "APPVIEW_NOT_CONFIGURED"

    def __init__(self, reason: str | None = None) -> None:
        super().__init__(
            "",
            reason
            or (
                f"no AppView configured: set {APPVIEW_URL_ENV} (e.g. "
                f"{APPVIEW_URL_ENV}=https://appview.example) or pass the URL"
            ),
        )


class AppViewUnavailable(AppViewError):
    """The AppView did not answer usefully: connection refused or reset, the total
    deadline passed (``timeout`` seconds, a trickling server included), or 5xx/429
    until the retry budget ran out (``status`` is then the last status, if any)."""

    rule = "APPVIEW_UNAVAILABLE"


class AppViewResponseError(AppViewError):
    """The AppView's answer is unusable: larger than the client's cap, not JSON,
    or not the shape the query's Lexicon defines (the reason lists JSON pointers
    and the problem at each, never the values)."""

    rule = "APPVIEW_RESPONSE_INVALID"


class AppViewQueryError(AppViewError):
    """The AppView refused a query (HTTP 4xx): ``status``, ``error`` (the XRPC
    error name, e.g. ``InvalidRequest``, ``SchemaNotFound``; ``None`` when the
    body has none) and ``message`` (the server's text, cleaned and bounded).
    ``rule`` is ``XRPC_<status>``."""

    def __init__(
        self,
        uri: str,
        *,
        method: str,
        status: int,
        error: str | None,
        message: str | None,
    ) -> None:
        self.error = error
        self.message = message
        reason = f"{method} answered HTTP {status}"
        if error:
            reason += f" {error}"
        if message:
            reason += f": {message}"
        super().__init__(
            uri, reason, method=method, status=status, rule=f"XRPC_{status}"
        )


class AppViewNotFound(AppViewQueryError):
    """A ``…NotFound`` answer (``SchemaNotFound``, ``EntryNotFound``,
    ``LabelNotFound``, ``LensPathNotFound``, ``RepoNotFound``), or a 404 without an
    error name (a method the AppView does not serve answers 404 too: check
    ``error``)."""


class NameResolutionError(NetworkError):
    """Base of name errors: ``uri`` is the name as written."""

    rule = "NAME_ERROR"


class NameSyntaxError(NameResolutionError, ValueError):
    """A name does not parse (``NAME_INVALID``): the reason says which part and
    what the grammar is (see :mod:`.names`)."""

    rule = "NAME_INVALID"


class NameNotFoundError(NameResolutionError):
    """No record matches the name (``NAME_NOT_FOUND``); ``tried`` lists each
    source asked and what it said."""

    rule = "NAME_NOT_FOUND"

    def __init__(self, name: str, reason: str, *, tried: Sequence[str] = ()) -> None:
        self.tried = tuple(tried)
        if self.tried:
            reason += "; tried " + "; ".join(self.tried)
        super().__init__(name, reason)


class AmbiguousNameError(NameResolutionError):
    """A name without ``@publisher`` matches records of more than one publisher
    (``NAME_AMBIGUOUS``); ``candidates`` are the qualified names to choose from
    (``@handle/NAME@VERSION``)."""

    rule = "NAME_AMBIGUOUS"

    def __init__(
        self, name: str, candidates: Sequence[str], *, more: bool = False
    ) -> None:
        self.candidates = tuple(candidates)
        listed = ", ".join(self.candidates) + (", …" if more else "")
        super().__init__(
            name,
            f"ambiguous: more than one publisher has it; qualify the name with "
            f"@publisher/, one of: {listed}",
        )


class NameMismatchError(NameResolutionError):
    """The record a name resolved to, read and verified from its owner's
    repository, is not what the name asks for (``NAME_MISMATCH``): another
    repository, another name, or a version outside the range. The index that
    pointed at it is wrong or hostile; nothing is loaded."""

    rule = "NAME_MISMATCH"
