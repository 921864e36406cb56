"""Errors of the HTTP transport, the base of every network error of the runtime.

Each carries a rule ID (``rule``) and, where one exists, the URL or AT-URI it
concerns (``uri``), so that a message always says where and why. None of them ever
contains a password, token, session string or a response body: URLs in messages go
through :func:`atdata_runtime.net.redact.redact_url` (``user:pass@`` removed,
credential-like query values replaced).
"""

from __future__ import annotations

__all__ = [
    "ConnectionFailedError",
    "DeadlineExceededError",
    "HttpStatusError",
    "NetworkError",
    "RedirectRefusedError",
    "ResponseFormatError",
    "ResponseTooLargeError",
    "RetryExhaustedError",
    "UnsafeUrlError",
]


class NetworkError(Exception):
    """Base: ``rule`` (stable ID), ``uri`` (AT-URI or URL concerned, may be empty),
    ``reason`` (human text). ``str()`` is ``"<uri>: <reason> [<rule>]"``."""

    rule = "NETWORK_ERROR"

    def __init__(self, uri: str, reason: str, *, rule: str | None = None) -> None:
        self.uri = uri
        self.reason = reason
        if rule is not None:
            self.rule = rule
        super().__init__(
            f"{uri}: {reason} [{self.rule}]" if uri else f"{reason} [{self.rule}]"
        )


class RetryExhaustedError(NetworkError):
    """A request kept failing with retryable errors until the retry budget (attempts
    or total time) ran out; ``__cause__`` is the last error."""

    rule = "RETRY_EXHAUSTED"


class ResponseTooLargeError(NetworkError):
    """A response body is larger than the cap for its kind (``what``, ``limit`` in
    bytes): announced by ``Content-Length`` or counted while streaming. The body is
    never read past the cap."""

    rule = "RESPONSE_TOO_LARGE"

    def __init__(self, uri: str, reason: str, *, what: str, limit: int) -> None:
        self.what = what
        self.limit = limit
        super().__init__(uri, reason)


class DeadlineExceededError(NetworkError):
    """A request (connect, headers and body together) or a shard stream's progress
    window took longer than its wall-clock budget (``what``, ``limit`` in seconds).
    Unlike a socket read timeout, this is not reset by a server that trickles bytes."""

    rule = "DEADLINE_EXCEEDED"

    def __init__(self, uri: str, reason: str, *, what: str, limit: float) -> None:
        self.what = what
        self.limit = limit
        super().__init__(uri, reason)


class UnsafeUrlError(NetworkError):
    """A URL that came from the network (a record, a DID document) is refused before
    or right after connecting (``URL_REFUSED``): it does not parse (a bad port, an
    invalid IDNA host), is not ``https``, carries credentials, or its host is (or
    resolves to) a loopback, private, link-local, unspecified, multicast or reserved
    address, embedded in IPv6 or spelled as a non-canonical IPv4 number; or
    (``PEER_UNVERIFIED``) the connection exposes no socket whose peer address
    could be checked. See :mod:`atdata_runtime.net.hosts`."""

    rule = "URL_REFUSED"


class RedirectRefusedError(NetworkError):
    """A redirect leaves the origin (scheme, host, port) of the request
    (``REDIRECT_CROSS_ORIGIN``), or there were too many (``TOO_MANY_REDIRECTS``), or
    it had no usable ``Location``. Headers are never sent to another origin."""

    rule = "REDIRECT_CROSS_ORIGIN"


class HttpStatusError(NetworkError):
    """A retryable status (5xx, 429) seen while retrying; ``response`` carries
    ``status_code`` and ``headers`` (for the retry policy's server hints), never
    the body in the message."""

    rule = "HTTP_STATUS"

    def __init__(self, uri: str, reason: str, *, response: object) -> None:
        self.response = response
        super().__init__(uri, reason)


class ConnectionFailedError(NetworkError):
    """The connection failed (refused, reset, TLS error, protocol error). Retryable
    (``retryable = True``: :func:`~.retry.classify` retries it)."""

    rule = "CONNECTION_FAILED"
    retryable = True


class ResponseFormatError(NetworkError):
    """A body is not what its kind requires (not JSON, or compressed when identity
    was asked for). The message names the URL and kind, never the body."""

    rule = "RESPONSE_MALFORMED"
