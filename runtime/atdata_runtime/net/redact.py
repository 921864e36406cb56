"""Credential-free URLs for messages and logs: :func:`redact_url`.

Every error of the runtime, and every diagnostic of the compiler, that names a URL
names it through this module, so that a password, token or signature never reaches
a message, a log line, a CI annotation or a traceback. Pure Python, importable
without extras.
"""

from __future__ import annotations

from urllib.parse import unquote_plus, urlsplit, urlunsplit

__all__ = ["REDACTED", "is_secret_param", "redact_url"]

REDACTED = "REDACTED"
"""What replaces a credential-like query value."""

_SECRET_NAMES = frozenset(
    {
        "access_token",
        "api-key",
        "api_key",
        "apikey",
        "auth",
        "authorization",
        "client_secret",
        "code",
        "id_token",
        "jwt",
        "key",
        "passwd",
        "password",
        "private_token",
        "pwd",
        "refresh_token",
        "secret",
        "session",
        "sessionid",
        "sig",
        "signature",
        "token",
    }
)
_SECRET_PARTS = ("token", "secret", "password", "signature", "credential")
_SECRET_PREFIXES = ("x-amz-", "x-goog-")


def is_secret_param(name: str) -> bool:
    """Whether a URL query (or fragment) parameter ``name`` carries a credential
    (compared case-insensitively, after percent-decoding): OAuth 2.0 bearer tokens
    (RFC 6750 § 2.3 ``access_token``), ``token``, ``private_token``, ``sig`` (Azure
    SAS), ``signature``, ``key``, ``api_key``, ``code``, any ``X-Amz-*`` or
    ``X-Goog-*`` (pre-signed S3 and GCS URLs: the signature, the credential and the
    session token), and any name containing ``token``, ``secret``, ``password``,
    ``signature`` or ``credential``."""
    low = unquote_plus(name).strip().lower()
    return (
        low in _SECRET_NAMES
        or low.startswith(_SECRET_PREFIXES)
        or any(part in low for part in _SECRET_PARTS)
    )


def _redact_params(text: str, drop: bool) -> tuple[str, bool]:
    out, changed = [], False
    for item in text.split("&"):
        name, eq, _ = item.partition("=")
        if name and is_secret_param(name):
            changed = True
            if not drop:
                out.append(f"{name}={REDACTED}" if eq else name)
        else:
            out.append(item)
    return "&".join(out), changed


def redact_url(url: str, *, drop: bool = False) -> str:
    """``url`` without credentials: the userinfo (``user:pass@``, RFC 3986
    § 3.2.1) removed, and the value of every credential-like query or fragment
    parameter (:func:`is_secret_param`) replaced by ``REDACTED`` (with ``drop``,
    the parameter removed). A URL written without its scheme but with a password
    (``user:secret@host/x``) loses its userinfo too; scp-like ``git@host:path``
    addresses are kept (the user there is the SSH account, not a secret), and so
    is text that is not a URL. A string that does not parse as a URL is returned
    as ``"<unparsable URL>"`` (it might hold a secret)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    if not parts.netloc:
        head, slash, rest = url.partition("/")
        userinfo, at, host = head.rpartition("@")
        if at and ":" in userinfo:
            return redact_url("//" + host + slash + rest, drop=drop)[2:]
        if "?" in url and not any(c.isspace() for c in url):
            # "host/path?token=…" written without a scheme: its query still counts
            path, _, query = url.partition("?")
            query, frag_sep, fragment = query.partition("#")
            redacted, changed = _redact_params(query, drop)
            if changed:
                return f"{path}?{redacted}{frag_sep}{fragment}"
        return url
    netloc = parts.netloc.rpartition("@")[2]
    query, q_changed = _redact_params(parts.query, drop)
    fragment, f_changed = (
        _redact_params(parts.fragment, drop) if "=" in parts.fragment else ("", False)
    )
    if netloc == parts.netloc and not q_changed and not f_changed:
        return url
    return urlunsplit(
        parts._replace(
            netloc=netloc,
            query=query,
            fragment=fragment if f_changed else parts.fragment,
        )
    )
