"""HTTP transport shared by remote shards and the AT Protocol client: bounded
requests, the retry policy (backoff, server hints, total deadline), URL redaction
and the base error type.

- :mod:`.errors`: ``NetworkError`` and its kinds (pure Python, importable without
  extras);
- :mod:`.redact`: ``redact_url`` (pure Python): every URL in a message goes
  through it;
- :mod:`.hosts`: ``origin`` (RFC 6454 serialization), ``refuse_address``,
  ``refuse_host``, ``is_loopback_host`` (pure Python): which addresses a URL from
  the network may reach;
- :mod:`.retry`: ``RetryPolicy`` (needs ``httpx``, the ``http`` extra);
- :mod:`.fetch`: ``fetch`` (needs ``httpx``): size caps per kind, one total
  deadline per request, same-origin redirects only, SSRF checks for URLs from the
  network, and the test-only ``ATDATA_RUNTIME_INSECURE_LOOPBACK`` mode.

Imports nothing else of the runtime.
"""

from typing import TYPE_CHECKING, Any

from .errors import (
    ConnectionFailedError,
    DeadlineExceededError,
    HttpStatusError,
    NetworkError,
    RedirectRefusedError,
    ResponseFormatError,
    ResponseTooLargeError,
    RetryExhaustedError,
    UnsafeUrlError,
)
from .redact import redact_url

if TYPE_CHECKING:
    from .hosts import is_loopback_host, origin, refuse_address, refuse_host

_FROM_HOSTS = frozenset({"is_loopback_host", "origin", "refuse_address", "refuse_host"})


def __getattr__(name: str) -> Any:
    # .hosts (ipaddress, socket) loads on first use: the compiler imports this
    # package for redact_url on every CLI start.
    if name in _FROM_HOSTS:
        from . import hosts

        return getattr(hosts, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
    "is_loopback_host",
    "origin",
    "redact_url",
    "refuse_address",
    "refuse_host",
]
