"""Credential-free URLs for messages and logs: :func:`redact_url`.

Every error of the runtime that names a URL names it through this function, so
that a password, token or signature never reaches a message, a log line or a
traceback. Pure Python, importable without extras.
"""

from __future__ import annotations

from urllib.parse import unquote, urlsplit, urlunsplit

__all__ = ["REDACTED", "SENSITIVE_QUERY_KEYS", "redact_url"]

REDACTED = "REDACTED"
"""What replaces a credential-like query value."""

SENSITIVE_QUERY_KEYS = frozenset(
    {
        "access_token",
        "refresh_token",
        "id_token",
        "token",
        "auth",
        "authorization",
        "password",
        "passwd",
        "secret",
        "client_secret",
        "api_key",
        "apikey",
        "key",
        "sig",
        "signature",
        "x-amz-signature",
        "x-amz-credential",
        "x-amz-security-token",
        "x-goog-signature",
        "x-goog-credential",
    }
)
"""Query parameter names (compared case-insensitively, after percent-decoding)
whose values are replaced by :data:`REDACTED`: OAuth 2.0 bearer tokens in a query
(RFC 6750 § 2.3 ``access_token``), AWS SigV4 presigned URLs (``X-Amz-Signature``,
``X-Amz-Credential``, ``X-Amz-Security-Token``), Google Cloud Storage signed URLs
(``X-Goog-*``), Azure SAS (``sig``) and common API-key names."""


def redact_url(url: str) -> str:
    """``url`` without credentials: the userinfo (``user:pass@``, RFC 3986 § 3.2.1)
    is removed and the values of :data:`SENSITIVE_QUERY_KEYS` are replaced by
    ``REDACTED``; everything else is kept as written. A string that does not parse
    as a URL is returned as ``"<unparsable URL>"`` (it might hold a secret)."""
    try:
        parts = urlsplit(url)
        netloc = parts.netloc.rpartition("@")[2]
    except ValueError:
        return "<unparsable URL>"
    if not parts.netloc:
        # "user:secret@host/x" parses as scheme "user": the userinfo of a URL
        # written without its scheme is still userinfo.
        head, slash, rest = url.partition("/")
        if "@" in head:
            return redact_url("//" + head.rpartition("@")[2] + slash + rest)[2:]
    query = parts.query
    if query:
        pieces = []
        for piece in query.split("&"):
            name, sep, _value = piece.partition("=")
            if sep and unquote(name).strip().lower() in SENSITIVE_QUERY_KEYS:
                piece = f"{name}={REDACTED}"
            pieces.append(piece)
        query = "&".join(pieces)
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
